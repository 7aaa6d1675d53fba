"""Reading a stream's batches, in order, with a pool of decoding processes when that pays.

Image-file domains (``ImageNetC``, ``TorchvisionDomain``) decode one image at a time in Python,
so a run on them is bound by Pillow unless several processes decode ahead of the model. Here a
``torch.utils.data.DataLoader`` walks the batches of the given segments in stream order: each
worker builds whole batches with ``Segment.batch`` (the same call the in-process path makes), and
the loader hands them back in their original order, so the batches are identical for any number
of workers. Workers send the images as stored (uint8: a quarter of the bytes of float32 through
shared memory); they are converted to float (``to_float``, as in-process) in the loader's pinning
thread on CUDA, straight into pinned memory ready for ``.to(device, non_blocking=True)``, and
in the main process otherwise.

In-memory and memory-mapped domains (``ArrayDomain``, CIFAR-C) are read in-process: gathering
their rows is a memory copy, faster than shipping the batch from another process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch

from tta._errors import TTAError
from tta.data.stream import Batch, RawBatch, Segment

#: Batches each worker prepares ahead of the model.
PREFETCH_BATCHES = 2


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """``min(8, cores - 1)``: one core stays with the process that runs the model."""
    return max(0, min(8, cpu_cores() - 1))


def check_workers(workers: Optional[int]) -> int:
    """``None`` means the default; otherwise an integer >= 0 (0 reads in-process)."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise TTAError(
            f"workers must be an integer >= 0 (0 reads in-process) or None for the default "
            f"min(8, CPU cores - 1) = {default_workers()}, got {workers!r}"
        )
    return workers


def wants_workers(segments: Sequence[Segment]) -> bool:
    """Whether any domain of these segments decodes files (``Domain.parallel_read``)."""
    return any(getattr(d, "parallel_read", False) for seg in segments for d in seg.domains_in_use())


class _SegmentBatches(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th batch of the segments laid end to end, images as stored."""

    def __init__(self, segments: Sequence[Segment]):
        self.segments = list(segments)
        self.index = [(s, b) for s, seg in enumerate(self.segments) for b in range(len(seg))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> RawBatch:
        s, b = self.index[i]
        return self.segments[s].raw_batch(b)


def _as_is(batch: RawBatch) -> RawBatch:
    """The loader's collate step: a worker already returns a whole batch."""
    return batch


def _in_process(segments: Sequence[Segment], pin: bool) -> Iterator[Batch]:
    for seg in segments:
        for b in range(len(seg)):
            yield seg.raw_batch(b).to_batch(pin)


def _converted(batches: Iterator[Any]) -> Iterator[Batch]:
    """Batches from the workers: already converted by the pinning thread, else converted here."""
    for item in batches:
        yield item if isinstance(item, Batch) else item.to_batch()


@contextmanager
def read_batches(
    segments: Sequence[Segment], workers: Optional[int] = None, pin_memory: bool = False
) -> Iterator[Iterator[Batch]]:
    """The batches of ``segments`` in stream order (segment after segment), as an iterator.

    ``workers``: decoding processes for image-file domains (None: ``default_workers()``, 0:
    in-process); other domains are always read in-process. ``pin_memory``: return page-locked
    tensors (for non-blocking copies to a CUDA device). Leaving the ``with`` block stops the
    workers, also when the consumer stops early.
    """
    workers = check_workers(workers)
    if workers == 0 or not wants_workers(segments):
        yield _in_process(segments, pin_memory)
        return
    dataset = _SegmentBatches(segments)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, max(1, len(dataset))),
        collate_fn=_as_is,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH_BATCHES,
        persistent_workers=False,
    )
    it = iter(loader)
    try:
        yield _converted(it)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
