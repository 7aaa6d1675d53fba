"""Online scoring: each batch is predicted, then the method adapts; counts stay on the device."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from tta._errors import TTAError, TTATypeError
from tta.config import PRECISIONS
from tta.data import Batch, Domain, Segment, Stream
from tta.data.arrays import input_channels, match_channels
from tta.data.loader import read_batches
from tta.evaluation.device import autocast, check_precision, resolve_device


def _describe_output(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {list(out)[:5]}"
    if isinstance(out, (tuple, list)):
        kinds = ", ".join(type(o).__name__ for o in out[:5])
        return f"a {type(out).__name__} of {len(out)} items ({kinds})"
    return f"a {type(out).__module__}.{type(out).__name__}"


def check_model(model: torch.nn.Module, domains: list[Domain]) -> Optional[int]:
    """One forward of a single image: the model must return logits of shape (1, classes), and
    every domain's labels must be valid class indices. Returns the number of classes."""
    first = next((d for d in domains if len(d)), None)
    if first is None:
        return None
    x, _ = first.get(np.arange(1))
    x = match_channels(x, input_channels(model))  # as every batch will be
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    x = x.to(tensor.device) if tensor is not None else x
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as err:
        text = (str(err).strip().splitlines() or [""])[0]
        raise TTAError(
            f"the model fails on one image of domain {first.name!r} (a float tensor of shape "
            f"{tuple(x.shape)}, values in [0, 1]): {type(err).__name__}: {text}"
        ) from err
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(out, torch.Tensor):
        raise TTATypeError(
            f"the model returned {_describe_output(out)} for a batch of 1 image; its forward "
            "must return the logits as one tensor of shape (batch, classes) (wrap the model to "
            "return only the logits)"
        )
    if out.ndim != 2 or out.shape[0] != 1:
        raise TTAError(
            f"the model returned a tensor of shape {tuple(out.shape)} for a batch of 1 image; "
            "its forward must return logits of shape (batch, classes)"
        )
    classes = int(out.shape[1])
    for d in domains:
        labels = d.labels
        if not len(labels):
            continue
        bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
        if bad >= classes or bad < 0:
            raise TTAError(
                f"domain {d.name!r} has label {bad} but the model has {classes} outputs (valid "
                f"labels: 0..{classes - 1}); check model.num_classes and the data"
            )
    return classes


class _Timer:
    """Time spent in one method. On the CPU a wall clock; on CUDA a pair of events around each
    call, read once the segment is done, so timing adds no host sync to the loop."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._pairs: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pairs.append((self._start, end))
            # Fold in the pairs the device has finished (a query, not a wait), so that a long
            # segment does not hold one event pair per batch.
            while len(self._pairs) > 1 and self._pairs[0][1].query():
                a, b = self._pairs.pop(0)
                self.seconds += a.elapsed_time(b) / 1000.0
        else:
            self.seconds += time.perf_counter() - self._start

    def total(self) -> float:
        """Seconds so far (on CUDA this waits for the last recorded event)."""
        if self._pairs:
            self._pairs[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self._pairs) / 1000.0
            self._pairs = []
        return self.seconds


class _Scorer:
    """One method's online counts per domain, kept on the device: errors, samples, and samples
    whose logits are not all finite (they count as errors too)."""

    def __init__(self, adapted: torch.nn.Module, num_domains: int, device: torch.device):
        self.adapted = adapted
        self.wrong = torch.zeros(num_domains, dtype=torch.float64, device=device)
        self.seen = torch.zeros(num_domains, dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros(num_domains, dtype=torch.float64, device=device)
        self.timer = _Timer(device)
        # Set once the method has written into its input: from then on it gets its own copy.
        self.copies_input = False
        # Grey batches go to a 3-channel model repeated to RGB, RGB to a 1-channel one as luma.
        self.channels = input_channels(adapted)

    def step(self, x: torch.Tensor, y: torch.Tensor, dom: torch.Tensor, precision: str) -> None:
        self.timer.start()
        x = match_channels(x, self.channels)
        with autocast(x.device, precision):
            logits = self.adapted(x.clone() if self.copies_input else x)
        bad = ~torch.isfinite(logits).all(1)
        miss = ((logits.argmax(1) != y) | bad).double()
        self.wrong.index_add_(0, dom, miss)
        self.seen.index_add_(0, dom, torch.ones_like(miss))
        self.nonfinite.index_add_(0, dom, bad.double())
        self.timer.stop()

    def set_context(self, x: torch.Tensor, precision: str) -> None:
        """Give the method its domain's context images (``context-bn``); timed as its own."""
        self.timer.start()
        with autocast(x.device, precision):
            self.adapted.set_context(match_channels(x, self.channels))
        self.timer.stop()

    def result(self) -> dict[str, Any]:
        return {
            "wrong": self.wrong.cpu().tolist(),
            "seen": self.seen.cpu().tolist(),
            "nonfinite": self.nonfinite.cpu().tolist(),
            "seconds": self.timer.total(),
        }


class _Progress:
    """A progress bar whose error figures are read without stalling the device: the counts are
    copied to host memory in the background and shown once the copy has landed."""

    def __init__(self, total: int, desc: str, scorers: Mapping[str, _Scorer], device):
        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
        self.scorers = scorers
        self.cuda = device.type == "cuda"
        self._host: Optional[torch.Tensor] = None
        self._landed: Any = None

    def update(self, b: int) -> None:
        self.bar.update()
        if self.bar.disable or (b % 10 != 9 and b != self.bar.total - 1):
            return
        if self._landed is not None and not self._landed.query():
            return  # the last copy is still on its way
        if self.cuda and self._host is not None:
            self._show(self._host)
        scorers = list(self.scorers.values())
        counts = torch.stack(
            [
                torch.stack([sc.wrong.sum() for sc in scorers]),
                torch.stack([sc.seen.sum() for sc in scorers]),
            ]
        )
        if not self.cuda:
            self._show(counts)
            return
        if self._host is None:
            self._host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
        self._host.copy_(counts, non_blocking=True)
        self._landed = torch.cuda.Event()
        self._landed.record()

    def _show(self, counts: torch.Tensor) -> None:
        errors = [100 * float(w) / max(float(c), 1.0) for w, c in zip(counts[0], counts[1])]
        if len(errors) == 1:
            self.bar.set_postfix(error=f"{errors[0]:.1f}%")
        else:
            self.bar.set_postfix({k: f"{e:.1f}%" for k, e in zip(self.scorers, errors)})

    def close(self) -> None:
        self.bar.close()


def _feed(
    scorers: Mapping[str, _Scorer],
    segment: Segment,
    batches: Iterable[Batch],
    device: torch.device,
    precision: str,
    progress: Optional[_Progress],
    contexts: Optional[Sequence[Domain]] = None,
) -> None:
    """Move each batch to the device once and give it to every method in turn.

    ``contexts``: per stream domain, its held-out context samples; when the stream enters a
    domain, the methods that use context get them first.
    """
    pin = device.type == "cuda"
    users = [sc for sc in scorers.values() if getattr(sc.adapted, "uses_context", False)]
    entered = None
    for b, batch in enumerate(itertools.islice(batches, len(segment))):
        x = batch.x.to(device, non_blocking=True)
        y = batch.y.to(device, non_blocking=True)
        dom = batch.domains.to(device, non_blocking=True)
        if contexts is not None and users and int(batch.domains[0]) != entered:
            entered = int(batch.domains[0])  # batch.domains is a host tensor: no device sync
            context = contexts[entered]
            cx = context.get(np.arange(len(context)))[0].to(device)
            for scorer in users:
                scorer.set_context(cx, precision)
        version = x._version
        for scorer in scorers.values():
            scorer.step(x, y, dom, precision)
            if x._version != version:  # the method wrote into the shared batch: read it again
                scorer.copies_input = True
                fresh = segment.batch(b).x
                x = (fresh.pin_memory() if pin else fresh).to(device, non_blocking=True)
                version = x._version
        if progress is not None:
            progress.update(b)


def run_segment(
    adapted: Mapping[str, torch.nn.Module],
    segment: Segment,
    num_domains: int,
    device: torch.device,
    desc: str,
    batches: Optional[Iterable[Batch]] = None,
    precision: str = "fp32",
    contexts: Optional[Sequence[Domain]] = None,
) -> dict[str, dict[str, Any]]:
    """Stream one segment once through several freshly wrapped methods (label -> model).

    Each batch is read and moved to the device once, then given to every method in turn, so
    each method sees exactly the stream it would see alone. Returns per label the online error
    counts per domain (``wrong``, ``seen``, ``nonfinite``; they stay on the device until the
    segment ends) and ``seconds``, the time spent in that method (reading the data, shared by
    all, is not in it). ``batches``: the segment's batches when a reader already holds them
    (see ``tta.data.loader.read_batches``); by default they are read here, in-process.
    ``contexts``: per stream domain, its context samples (``data.context_per_domain``).
    """
    scorers = {label: _Scorer(m, num_domains, device) for label, m in adapted.items()}
    if batches is None:
        with read_batches([segment], 0, device.type == "cuda") as own:
            _feed_with_progress(scorers, segment, own, device, precision, desc, contexts)
    else:
        _feed_with_progress(scorers, segment, batches, device, precision, desc, contexts)
    return {label: sc.result() for label, sc in scorers.items()}


def _feed_with_progress(
    scorers: Mapping[str, _Scorer],
    segment: Segment,
    batches: Iterable[Batch],
    device: torch.device,
    precision: str,
    desc: str,
    contexts: Optional[Sequence[Domain]] = None,
) -> None:
    """``_feed`` under a progress bar named ``desc``."""
    progress = _Progress(len(segment), desc, scorers, device)
    try:
        _feed(scorers, segment, batches, device, precision, progress, contexts)
    finally:
        progress.close()


def run_unit(
    adapted: torch.nn.Module,
    segment: Segment,
    num_domains: int,
    device: torch.device,
    desc: str,
    batches: Optional[Iterable[Batch]] = None,
    precision: str = "fp32",
    contexts: Optional[Sequence[Domain]] = None,
) -> dict[str, Any]:
    """``run_segment`` for one method: its online error counts on one segment."""
    results = run_segment(
        {desc: adapted}, segment, num_domains, device, desc, batches, precision, contexts
    )
    return results[desc]


def score(
    adapted: torch.nn.Module,
    stream: Union[Stream, Segment],
    device: Union[str, torch.device, None] = None,
    precision: str = "fp32",
    workers: Optional[int] = 0,
) -> dict[str, float]:
    """Online error (%) per domain of an adapted model on a stream: each batch is predicted,
    then the model adapts, as in a run (the same counting code). Returns ``{domain: error}``
    for the domains that had samples.

    A ``Reset`` in the stream (before each domain of ``reset_each_shift``) calls
    ``adapted.reset()``; a continual stream goes on from the model's current state.
    ``device``: where to run (default: where the model's parameters are). ``precision``:
    ``fp32``, ``bf16`` or ``fp16`` (see ``check_precision``). ``workers``: processes decoding
    image files ahead of the model (0: in-process, None: min(8, CPU cores - 1)).
    """
    if not isinstance(adapted, torch.nn.Module):
        raise TTATypeError(
            f"score needs the adapted model (a torch.nn.Module, e.g. from tta.adapt), got "
            f"{type(adapted).__module__}.{type(adapted).__name__}"
        )
    if isinstance(stream, Stream):
        segments = stream.segments()
    elif isinstance(stream, Segment):
        segments = [stream]
    else:
        raise TTATypeError(
            f"score needs a tta.data.Stream (from make_stream) or one of its segments, got "
            f"{type(stream).__module__}.{type(stream).__name__}"
        )
    if precision not in PRECISIONS:
        raise TTAError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if device is None:
        tensor = next(iter([*adapted.parameters(), *adapted.buffers()]), None)
        device = tensor.device if tensor is not None else torch.device("cpu")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    check_precision(precision, device)
    names = segments[0].domain_names
    scorer = _Scorer(adapted, len(names), device)
    with read_batches(segments, workers, device.type == "cuda") as batches:
        for segment in segments:
            if segment.reset_before and hasattr(adapted, "reset"):
                adapted.reset()
            _feed_with_progress({"": scorer}, segment, batches, device, precision, segment.name)
    counts = scorer.result()
    return {n: 100.0 * w / c for n, w, c in zip(names, counts["wrong"], counts["seen"]) if c > 0}
