"""Streams: domains in a schedule, each ordered (i.i.d., sorted or Dirichlet), cut into batches.

A stream is a list of segments; a method is reset before a segment when ``segment.reset_before``
(iterating the stream yields a ``Reset()`` marker there). Schedules (docs/algorithms.md §4):

- ``reset_each_shift``: one segment per domain, each preceded by a Reset (the first one too).
- ``continual``: one segment, the domains back to back, no Reset.
- ``mixed``: every domain's samples pooled and ordered as one sequence; one segment, no Reset.
- ``gradual``: for each corruption (in order of first appearance) its severities
  1, 2, 3, 4, 5, 4, 3, 2, 1 back to back; one segment, no Reset. Needs all five severities.

Batches never span two domain visits (the last batch of a visit may be smaller), except in
``mixed`` where batches are cut from the pooled order. Each domain visit is ordered by its own
generator seeded from (seed, crc32(domain name), visit number), so a domain's order does not depend
on which other domains are in the stream, and reset_each_shift and continual visit every domain in
the same order. Only index arrays are held; images are read one batch at a time.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np
import torch

from tta._errors import TTAError, TTATypeError, unknown
from tta.data.domain import Domain, Raw, to_float
from tta.data.ordering import ORDERS, check_delta, label_stats, order_indices

SCHEDULES = ("reset_each_shift", "continual", "mixed", "gradual")
GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)


class Batch(NamedTuple):
    """One batch: images (B, 3, H, W) float in [0, 1], labels (B,), and where they came from.

    ``domain`` is the domain name when all samples share one domain, else ``"mixed"``;
    ``domains`` holds each sample's index into ``Stream.domain_names``.
    """

    x: torch.Tensor
    y: torch.Tensor
    domain: str
    domains: torch.Tensor


class RawBatch:
    """A batch whose images are still in their stored form: uint8 (B, H, W, 3) or float
    (B, 3, H, W), as torch tensors (they travel between processes through shared memory).

    ``to_batch`` converts them (``to_float``, the same arithmetic on every path); with
    ``pin=True`` straight into page-locked memory. ``pin_memory()`` is the hook a
    ``DataLoader`` calls in its pinning thread, so the conversion happens there, off the main
    thread.
    """

    __slots__ = ("x", "y", "domain", "domains")

    def __init__(self, x: torch.Tensor, y: torch.Tensor, domain: str, domains: torch.Tensor):
        self.x, self.y, self.domain, self.domains = x, y, domain, domains

    def to_batch(self, pin: bool = False) -> Batch:
        if self.x.dtype == torch.uint8:
            b, h, w, c = self.x.shape
            out = torch.empty((b, c, h, w), dtype=torch.float32, pin_memory=pin)
            x = to_float(self.x.numpy(), out)
        else:
            x = to_float(self.x)
            x = x.pin_memory() if pin else x
        y, domains = (
            (self.y.pin_memory(), self.domains.pin_memory()) if pin else (self.y, self.domains)
        )
        return Batch(x, y, self.domain, domains)

    def pin_memory(self, device: object = None) -> Batch:
        return self.to_batch(pin=True)


@dataclass(frozen=True)
class Reset:
    """Marker: the method must reset to its source state before the next batch."""


Item = Union[Batch, Reset]


class Segment:
    """The batches between two resets; iterable on its own, any number of times, identically."""

    def __init__(
        self,
        name: str,
        domains: Sequence[Domain],
        dom: np.ndarray,
        rows: np.ndarray,
        bounds: np.ndarray,
        reset_before: bool,
    ):
        self.name = name
        self.reset_before = reset_before
        self._domains = domains
        self.dom = dom
        self.rows = rows
        self.bounds = bounds
        # Labels in stream order, gathered from the domains' label arrays (no image is read).
        self.labels = np.empty(len(dom), dtype=np.int64)
        for d in np.unique(dom):
            mask = dom == d
            self.labels[mask] = domains[d].labels[rows[mask]]

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @property
    def num_samples(self) -> int:
        return len(self.dom)

    @property
    def domain_names(self) -> list[str]:
        """Names of the stream's domains; ``Batch.domains`` indexes into this list."""
        return [d.name for d in self._domains]

    def domains_in_use(self) -> list[Domain]:
        """The domains this segment draws samples from, in stream order."""
        return [self._domains[int(i)] for i in np.unique(self.dom)]

    def __iter__(self) -> Iterator[Batch]:
        for b in range(len(self)):
            yield self.batch(b)

    def batch(self, b: int) -> Batch:
        """The ``b``-th batch of this segment (images are read now)."""
        return self.raw_batch(b).to_batch()

    def raw_batch(self, b: int) -> RawBatch:
        """The ``b``-th batch with its images as stored (uint8 images stay uint8: a quarter of
        the bytes to hand from a reading process to the one that runs the model)."""
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} is out of range for segment {self.name!r} of {len(self)}.")
        s, e = int(self.bounds[b]), int(self.bounds[b + 1])
        dom, rows = self.dom[s:e], self.rows[s:e]
        ids = np.unique(dom)
        if len(ids) == 1:
            domain = self._domains[ids[0]]
            raw = domain._read(rows)
            name = domain.name
        else:
            raw = _gather_mixed([self._domains[d] for d in ids], ids, dom, rows)
            name = "mixed"
        y = torch.from_numpy(self.labels[s:e].copy())
        if isinstance(raw, np.ndarray):  # a writable, contiguous array torch can take over
            writable = raw.flags.writeable and raw.flags.c_contiguous
            x = torch.from_numpy(raw if writable else np.array(raw, order="C"))
        else:
            x = raw
        return RawBatch(x, y, name, torch.from_numpy(dom.copy()))

    def label_stats(self) -> dict[str, float]:
        """How label-correlated this segment is (see ``label_stats``)."""
        return label_stats([self.labels], [self.bounds])

    def __repr__(self) -> str:
        return (
            f"Segment(name={self.name!r}, batches={len(self)}, samples={self.num_samples}, "
            f"reset_before={self.reset_before})"
        )


def _gather_mixed(domains: list[Domain], ids: np.ndarray, dom: np.ndarray, rows: np.ndarray) -> Raw:
    """Read a batch drawn from several domains, one read per domain, into one uint8 array (when
    every part is uint8 of one size) or one float tensor."""
    masks = [dom == d for d in ids]
    raws = [domain._read(rows[m]) for domain, m in zip(domains, masks)]
    if all(isinstance(r, np.ndarray) for r in raws):
        shapes = {r.shape[1:] for r in raws}
        if len(shapes) == 1:
            buf = np.empty((len(dom),) + raws[0].shape[1:], dtype=np.uint8)
            for m, r in zip(masks, raws):
                buf[m] = r
            return buf
    parts = [to_float(r) for r in raws]
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        names = [d.name for d in domains]
        raise TTAError(
            f"a mixed batch draws from domains {names} whose images differ in size "
            f"{sorted(shapes)}; give every domain the same image size."
        )
    out = torch.empty((len(dom),) + parts[0].shape[1:], dtype=torch.float32)
    for m, p in zip(masks, parts):
        out[torch.from_numpy(m)] = p
    return out


class Stream:
    """An ordered, batched schedule over domains; iterate for ``Batch`` and ``Reset`` items.

    Attributes:
        domains: the ``Domain`` objects, in the order given to ``make_stream``.
        domain_names: their names; a ``Batch``'s ``domains`` holds indices into this list, and
            results are reported under these names.
        config: the settings the stream was built with (order, delta, schedule, batch size,
            seed).

    ``segments()`` gives the parts between resets (one per domain for ``reset_each_shift``, one
    for the other schedules); ``num_batches``, ``num_samples`` and ``label_stats()`` describe it.
    """

    def __init__(self, domains: list[Domain], segments: list[Segment], config: dict[str, object]):
        self.domains = domains
        self.domain_names = [d.name for d in domains]
        self._segments = segments
        self.config = config

    def segments(self) -> list[Segment]:
        """The segments in order (one per domain for reset_each_shift, else one)."""
        return list(self._segments)

    def __iter__(self) -> Iterator[Item]:
        for seg in self._segments:
            if seg.reset_before:
                yield Reset()
            yield from seg

    def __len__(self) -> int:
        """Number of batches (Reset markers not counted)."""
        return self.num_batches

    @property
    def num_batches(self) -> int:
        return sum(len(s) for s in self._segments)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self._segments)

    def label_stats(self) -> dict[str, float]:
        """Label correlation of the whole stream, from the label order only (no image is read)."""
        return label_stats([s.labels for s in self._segments], [s.bounds for s in self._segments])

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"Stream({cfg}, domains={len(self.domains)}, batches={self.num_batches})"


def domain_rng(seed: int, name: str, visit: int = 0) -> np.random.Generator:
    """The generator that orders ``visit`` (0, 1, ...) of the domain called ``name``."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), visit]))


def make_stream(
    domains: Domain | Iterable[Domain],
    order: str = "iid",
    delta: float = 0.1,
    schedule: str = "reset_each_shift",
    batch_size: int = 64,
    seed: int = 0,
) -> Stream:
    """Build a stream over ``domains`` (see the module docstring for orders and schedules).

    ``order``: "iid", "dirichlet" (with ``delta``; 0 sorts by label) or "sorted".
    """
    domains = _check_domains(domains)
    if order not in ORDERS:
        raise TTAError(unknown("order", order, ORDERS))
    if schedule not in SCHEDULES:
        raise TTAError(unknown("schedule", schedule, SCHEDULES))
    delta = check_delta(delta)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise TTAError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TTAError(f"seed must be an integer >= 0, got {seed!r}.")
    seed, batch_size = int(seed), int(batch_size)

    def visit(i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        d = domains[i]
        try:
            rows = order_indices(d.labels, order, delta, domain_rng(seed, d.name, k))
        except (ValueError, RuntimeError) as e:
            raise type(e)(f"ordering domain {d.name!r}: {e}") from e
        return np.full(len(rows), i, dtype=np.int64), rows

    config = dict(order=order, delta=delta, schedule=schedule, batch_size=batch_size, seed=seed)
    if schedule == "reset_each_shift":
        segments = [
            _segment(d.name, domains, [visit(i, 0)], batch_size, True)
            for i, d in enumerate(domains)
        ]
    elif schedule == "continual":
        legs = [visit(i, 0) for i in range(len(domains))]
        segments = [_segment("continual", domains, legs, batch_size, False)]
    elif schedule == "gradual":
        seen: dict[int, int] = {}
        legs = []
        for i in _gradual_plan(domains):
            legs.append(visit(i, seen.get(i, 0)))
            seen[i] = seen.get(i, 0) + 1
        segments = [_segment("gradual", domains, legs, batch_size, False)]
    else:  # mixed: pool every domain, then order the pool as one sequence
        sizes = [len(d) for d in domains]
        dom = np.repeat(np.arange(len(domains), dtype=np.int64), sizes)
        rows = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
        pooled = np.concatenate([d.labels for d in domains])
        perm = order_indices(pooled, order, delta, domain_rng(seed, "mixed", 0))
        segments = [_segment("mixed", domains, [(dom[perm], rows[perm])], batch_size, False)]
    return Stream(domains, segments, config)


def _segment(
    name: str,
    domains: list[Domain],
    legs: list[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    reset_before: bool,
) -> Segment:
    """Join legs (domain visits) into a segment whose batches never cross a leg boundary."""
    starts = []
    offset = 0
    for dom, _ in legs:
        starts.append(np.arange(0, len(dom), batch_size, dtype=np.int64) + offset)
        offset += len(dom)
    bounds = np.concatenate(starts + [np.array([offset], dtype=np.int64)])
    dom = np.concatenate([leg[0] for leg in legs])
    rows = np.concatenate([leg[1] for leg in legs])
    return Segment(name, domains, dom, rows, bounds, reset_before)


def _check_domains(domains: Domain | Iterable[Domain]) -> list[Domain]:
    """A non-empty list of non-empty domains with distinct names."""
    if isinstance(domains, Domain):
        domains = [domains]
    out = list(domains)
    if not out:
        raise TTAError("make_stream needs at least one domain, got none.")
    for d in out:
        if not isinstance(d, Domain):
            raise TTATypeError(
                f"make_stream takes Domain objects (ArrayDomain, CIFARC(...), ImageNetC(...), "
                f"TorchvisionDomain), got {type(d).__name__}."
            )
        if len(d) == 0:
            raise TTAError(f"domain {d.name!r} is empty.")
    names = [d.name for d in out]
    if "mixed" in names:
        raise TTAError(
            "a domain is named 'mixed', which Batch.domain reserves for batches drawn from several "
            "domains; rename it."
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TTAError(f"domain names must be distinct, repeated: {dupes}.")
    return out


def _gradual_plan(domains: list[Domain]) -> list[int]:
    """Domain positions visited by the gradual schedule: per corruption, severities 1..5..1."""
    by_corruption: dict[str, dict[int, int]] = {}
    for i, d in enumerate(domains):
        if d.corruption is None or d.severity is None:
            raise TTAError(
                f"schedule 'gradual' needs domains with a corruption and severity; {d.name!r} has "
                "none. Use CIFARC/ImageNetC(..., severities=(1, 2, 3, 4, 5)) or set them."
            )
        by_corruption.setdefault(d.corruption, {})[int(d.severity)] = i
    plan = []
    for corruption, sevs in by_corruption.items():
        missing = sorted(set(GRADUAL_SEVERITIES) - set(sevs))
        if missing:
            raise TTAError(
                f"schedule 'gradual' visits severities 1,2,3,4,5,4,3,2,1 of every corruption, but "
                f"{corruption!r} lacks severities {missing}; load severities=(1, 2, 3, 4, 5)."
            )
        plan.extend(sevs[s] for s in GRADUAL_SEVERITIES)
    return plan
