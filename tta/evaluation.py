"""Evaluation runs: every method, and the ``source`` baseline, on the identical stream (docs/algorithms.md §7).

The stream is read once per run: a segment (the batches between two resets: one per domain for
``reset_each_shift``, the whole stream for continual, mixed and gradual schedules) is read batch
by batch, each batch is moved to the device once and given to every method's own adapted copy
in turn, so every method sees exactly the stream it would see alone. Image-file domains are
decoded by worker processes ahead of the model (``data.workers``, see ``tta.data.loader``).
Results are kept per unit, (method, segment): when a segment ends, each method's unit is written
atomically to ``<output>/units/``. A rerun skips finished units and rebuilds identical final
files from them; a segment is read again only for the methods that lack it, so a methods list
that grows runs only the new methods. A config with ``seeds`` runs every unit once per seed,
under ``<output>/units/seed-<s>/`` (see ``aggregate_seeds``). A unit's ``seconds`` is the time
spent in its method (forward, adaptation, counting), not the shared reading.

Before any work the run checks its config, model and data: the model must return logits of shape
(batch, classes) and every domain's labels must lie below the number of classes. Only then does it
claim its output folder (``config.json`` and the ``.tta-run`` marker with the fingerprints of its
inputs, see ``tta._runs``), holding ``.tta-lock`` while it writes there. A rerun resumes only when
the fingerprints match and the config is the same up to its methods list (a label kept must keep
its method and options; each unit records them) and ``data.workers``.

Unit folders are named after the method label and segment name: unchanged when the name is
plain (lower-case letters, digits, ``._+-``), else a readable slug plus ``~`` and a hash of the
exact name, so two distinct labels never share a folder (not even on a case-insensitive disk).

Samples whose logits are not all finite (NaN or inf) count as errors; how many there were is
reported per method and domain (``nonfinite`` in results.json, a warning in summary.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

import tta
from tta import _runs
from tta._errors import TTAError, TTATypeError
from tta._io import folder_lock, json_text, read_json, remove_temp_files, write_json
from tta._runs import MARKER, Input
from tta.config import DEVICES, PRECISIONS, SCHEMA, method_entries, resolve_config, run_seeds
from tta.data import CIFARC, ArrayDomain, Batch, Domain, ImageNetC, Segment, Stream, make_stream
from tta.data.arrays import input_channels, match_channels
from tta.data.loader import read_batches
from tta.methods.base import RunContext


class SubsetDomain(Domain):
    """The rows ``rows`` of a domain (for quick runs on part of a dataset)."""

    def __init__(self, domain: Domain, rows: np.ndarray):
        super().__init__(domain.name, domain.corruption, domain.severity)
        self.inner, self.rows = domain, rows
        self.parallel_read = domain.parallel_read

    def fingerprint(self) -> dict[str, Any]:
        return {
            "rows_sha256": _runs.sha256_arrays(self.rows),
            "of": self.inner.fingerprint(),
        }

    @property
    def labels(self) -> np.ndarray:
        return self.inner.labels[self.rows]

    def _read(self, rows: np.ndarray):
        return self.inner._read(self.rows[rows])


def subset_rows(n_total: int, n: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``n`` row indices, in increasing order (the same for every domain
    of a run, so each corruption shows the same images; releases are often sorted by label, so
    the first n rows would not do)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def corrupted_domains(
    images: np.ndarray, labels: np.ndarray, names: list[str], severities: list[int], seed: int
) -> list[Domain]:
    """Corrupt a clean uint8 NHWC set once per (corruption, severity), each with its own seeded
    generator (the same images ``tta corrupt --seed`` writes), and wrap them as in-memory domains."""
    import corruptions

    domains = []
    for name in names:
        for severity in severities:
            gen = torch.Generator().manual_seed(corruptions.seed_for(seed, name, severity))
            out = corruptions.corrupt(images, name, severity, generator=gen)
            domains.append(ArrayDomain(out, labels, f"{name}-{severity}", name, severity))
    return domains


def build_domains(data: Mapping[str, Any], seed: int) -> list[Domain]:
    """The domains a config's ``data`` section names: the corruptions in the order given (the
    standard order when none are named), each at every listed severity."""
    return _build_domains(data, seed)[0]


def _build_domains(data: Mapping[str, Any], seed: int) -> tuple[list[Domain], dict[str, Input]]:
    """The domains, and the data inputs to fingerprint (see ``tta._runs``)."""
    source, names, sev = data["source"], data["corruptions"], list(data["severities"])
    n = data["num_samples"]
    inputs: dict[str, Input] = {}
    if source in ("cifar-c", "imagenet-c"):
        if not data["root"]:
            raise TTAError(
                f"data.source {source!r} needs data.root (the dataset folder); set data.root, "
                "or data.source: corrupt with data.clean"
            )
        reader = CIFARC if source == "cifar-c" else ImageNetC
        domains = reader(data["root"], corruptions=names, severities=sev)
        inputs = _data_inputs(source, data["root"], domains)
        _warn_short(domains, n, "")
        if n:
            domains = [SubsetDomain(d, subset_rows(len(d), n, seed)) for d in domains]
        return domains, inputs
    if not data["clean"]:
        raise TTAError(
            "data.source 'corrupt' needs data.clean: 'mnist5k', 'cifar10:<folder>', "
            "'cifar100:<folder>' or an .npz file"
        )
    import corruptions
    from tta.models.data import load_test_split

    images, labels = load_test_split(data["clean"])
    inputs["data:clean"] = ("value", {"sha256": _runs.sha256_arrays(images, labels)})
    names = names or corruptions.names("benchmark")
    if n and n > len(labels):
        short = [f"{name}-{s}" for name in names for s in sev]
        _warn(short, len(labels), n, f" (the held-out images of data.clean {data['clean']!r})")
    if n:
        rows = subset_rows(len(labels), n, seed)
        images, labels = images[rows], labels[rows]
    return corrupted_domains(images, labels, names, sev, seed), inputs


def _warn(names: list[str], size: int, n: int, where: str) -> None:
    shown = ", ".join(repr(x) for x in names[:5]) + (", ..." if len(names) > 5 else "")
    warnings.warn(
        f"data.num_samples={n} is larger than domain {shown} ({size} samples{where}); the whole "
        "domain is used",
        stacklevel=3,
    )


def _warn_short(domains: list[Domain], n: Optional[int], where: str) -> None:
    if not n:
        return
    by_size: dict[int, list[str]] = {}
    for d in domains:
        if len(d) < n:
            by_size.setdefault(len(d), []).append(d.name)
    for size, names in by_size.items():
        _warn(names, size, n, where)


def _data_inputs(source: str, root: str, domains: list[Domain]) -> dict[str, Input]:
    """Fingerprinted data: the files of a CIFAR-C folder; the image file names of each
    ImageNet-C domain (anything else: its labels)."""
    inputs: dict[str, Input] = {}
    if source == "cifar-c":
        from tta.data.cifarc import labels_file

        inputs["data:labels.npy"] = ("file", labels_file(root)[0])
    for d in domains:
        path, files = getattr(d, "path", None), getattr(d, "files", None)
        if isinstance(path, str):
            inputs[f"data:{os.path.basename(path)}"] = ("file", path)
        elif files is not None:
            rel = [os.path.relpath(f, root) for f in files]
            inputs[f"data:{d.name}"] = (
                "value",
                {"images": len(rel), "names_sha256": _runs.sha256_names(rel)},
            )
        else:
            inputs[f"data:{d.name}"] = ("value", {"labels_sha256": _runs.sha256_arrays(d.labels)})
    return inputs


#: The data keys that say where domains come from; ``evaluate(..., domains=)`` replaces them.
DOMAIN_KEYS = ("source", "root", "clean", "corruptions", "severities")


def _user_domains(config: Mapping[str, Any], domains: Any) -> list[Domain]:
    """Check the domains given to ``evaluate`` and that the config does not also name data."""
    from tta.data.stream import _check_domains

    if isinstance(domains, (str, bytes)) or not isinstance(domains, (Sequence, Domain)):
        raise TTATypeError(
            f"domains must be a list of tta.data.Domain objects (e.g. ArrayDomain), got "
            f"{type(domains).__module__}.{type(domains).__name__}"
        )
    checked = _check_domains(domains)
    data = config.get("data") if isinstance(config, Mapping) else None
    if isinstance(data, Mapping):
        named = [k for k in DOMAIN_KEYS if data.get(k) is not None]
        if named:
            raise TTAError(
                f"config key{'s' if len(named) > 1 else ''} "
                f"{', '.join(f'data.{k}' for k in named)} name domains, but domains= were "
                "given; remove them (with domains=, data takes only num_samples, source_data "
                "and workers)"
            )
    return checked


def _subset(domains: list[Domain], n: Optional[int], seed: int) -> list[Domain]:
    """``data.num_samples`` applied to given domains: the same seeded subset rule as for
    domains the config describes."""
    if not n:
        return list(domains)
    _warn_short(domains, n, "")
    return [SubsetDomain(d, subset_rows(len(d), n, seed)) for d in domains]


def _hold_out_context(domains: list[Domain], n: int) -> tuple[list[Domain], list[Domain]]:
    """Split every domain into its first ``n`` samples (its context) and the rest (streamed)."""
    streamed, contexts = [], []
    for d in domains:
        if len(d) <= n:
            raise TTAError(
                f"domain {d.name!r} has {len(d)} samples and data.context_per_domain is {n}: "
                "holding out the context leaves nothing to stream; lower data.context_per_domain"
            )
        contexts.append(SubsetDomain(d, np.arange(n)))
        streamed.append(SubsetDomain(d, np.arange(n, len(d))))
    return streamed, contexts


def _domain_inputs(domains: list[Domain]) -> dict[str, Input]:
    """Fingerprinted inputs of given domains: each one's ``fingerprint()``, and the file it maps
    when it has one (CIFAR-C), checked like a checkpoint."""
    inputs: dict[str, Input] = {}
    for d in domains:
        try:
            record = json.loads(json_text(d.fingerprint()))
        except (TypeError, ValueError) as err:
            raise TTAError(
                f"domain {d.name!r}: fingerprint() must return a JSON-able mapping ({err})"
            ) from err
        inputs[f"data:{d.name}"] = ("value", record)
        path = getattr(d, "path", None)
        if isinstance(path, str) and os.path.isfile(path):
            inputs[f"data:{d.name}:file"] = ("file", path)
    return inputs


def source_images(
    data: Mapping[str, Any], entries: list[dict[str, Any]], seed: int
) -> Optional[torch.Tensor]:
    """Clean source images for the methods that ask for them (EATA's Fisher), or None.

    A seeded subset of the training split of ``data.source_data`` (``data.clean`` by default for
    ``data.source: corrupt``), as many as the most demanding method wants.
    """
    from tta.models.data import load_dataset
    from tta.wrapper import resolve_method

    wanted = {}
    for e in entries:
        cls, _, _, options = resolve_method(e["name"], e["options"])
        if cls is not None and cls.source_images_wanted(options) > 0:
            wanted[e["label"]] = cls.source_images_wanted(options)
    if not wanted:
        return None
    name = data["source_data"] or (data["clean"] if data["source"] == "corrupt" else None)
    if name is None:
        raise TTAError(
            f"method {', '.join(map(repr, wanted))} needs clean source images: set "
            "data.source_data ('cifar10:<folder>', 'cifar100:<folder>', 'mnist5k' or an .npz "
            "file; its training split is used)"
        )
    train_x, train_y, _, _ = load_dataset(name)
    if len(train_x) == 0:
        raise TTAError(
            f"data.source_data {name!r} has no training split to take source images from"
        )
    rows = subset_rows(len(train_x), max(wanted.values()), seed)
    source = ArrayDomain(train_x[rows], train_y[rows], "source")
    return source.get(np.arange(len(rows)))[0]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a
    device this machine lacks is a TTAError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", name):
        raise TTAError(f"device must be {DEVICES}, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TTAError(
                f"device {name!r} asked for, but torch sees no CUDA GPU; use device: auto or cpu"
            )
        if (device.index or 0) >= count:
            raise TTAError(
                f"device {name!r} asked for, but torch sees {count} CUDA GPU(s): "
                f"{', '.join(f'cuda:{i}' for i in range(count))}"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TTAError("device 'mps' asked for, but MPS is not available here; use auto or cpu")
    return device


def unit_name(name: str) -> str:
    """A file name for a method label or segment name, distinct for distinct names: the name
    itself when plain (lower-case letters, digits, ``._+-``, not starting with a dot, at most
    100 characters), else a slug of it, ``~`` and 10 hex digits of its SHA-1 (``~`` is never
    in a plain name, so the two kinds cannot meet)."""
    if re.fullmatch(r"[a-z0-9_+-][a-z0-9._+-]{0,99}", name):
        return name
    slug = re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:60].lstrip(".") or "_"
    return f"{slug}~{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def unit_path(out: Path, label: str, segment: str, seed: Optional[int] = None) -> Path:
    """``units/<label>/<segment>.json``; in a run with ``seeds``, ``units/seed-<s>/...``."""
    units = out / "units" if seed is None else out / "units" / f"seed-{seed}"
    return units / unit_name(label) / f"{unit_name(segment)}.json"


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


def autocast(device: torch.device, precision: str) -> Any:
    """The context the network runs in: nothing for fp32, else ``torch.autocast``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """fp32 anywhere; bf16 on CUDA and the CPU; fp16 on CUDA only (the CPU's float16 kernels
    are slow and incomplete, so a run would be slower than fp32, not faster)."""
    valid = {"cuda": PRECISIONS, "cpu": ("fp32", "bf16")}.get(device.type, ("fp32",))
    if precision not in valid:
        raise TTAError(
            f"precision {precision!r} is not available on device {str(device)!r}; valid there: "
            f"{', '.join(valid)} (fp16 needs CUDA)"
        )


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
    progress = _Progress(len(segment), desc, scorers, device)
    try:
        if batches is None:
            with read_batches([segment], 0, device.type == "cuda") as own:
                _feed(scorers, segment, own, device, precision, progress, contexts)
        else:
            _feed(scorers, segment, batches, device, precision, progress, contexts)
    finally:
        progress.close()
    return {label: sc.result() for label, sc in scorers.items()}


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
            progress = _Progress(len(segment), segment.name, {"": scorer}, device)
            try:
                _feed({"": scorer}, segment, batches, device, precision, progress)
            finally:
                progress.close()
    counts = scorer.result()
    return {n: 100.0 * w / c for n, w, c in zip(names, counts["wrong"], counts["seen"]) if c > 0}


def _versions() -> dict[str, str]:
    return {
        "tta": tta.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _read_unit(
    path: Path, entry: Mapping[str, Any], segment: str, num_domains: int
) -> dict[str, Any]:
    """A finished unit, checked to be the one asked for (a damaged file is a TTAError). Units
    record the method's name and options (older ones only its label, checked via config.json)."""
    label = entry["label"]
    unit = read_json(path)
    ok = (
        isinstance(unit, dict)
        and unit.get("method") == label
        and unit.get("segment") == segment
        and all(len(unit.get(k) or []) == num_domains for k in ("wrong", "seen"))
        and isinstance(unit.get("seconds"), (int, float))
    )
    if not ok:
        raise TTAError(
            f"{str(path)!r} is damaged or belongs to another unit (expected method {label!r}, "
            f"segment {segment!r}, {num_domains} domains); {_runs.FORCE_HINT}"
        )
    recorded = unit.get("entry")
    wanted = {"name": entry["name"], "options": entry["options"]}
    if recorded is not None and json.loads(json_text(wanted)) != recorded:
        raise TTAError(
            f"{str(path)!r} holds method {label!r} as {recorded}, but the config now asks "
            f"for {wanted}; give the changed method another label, or {_runs.FORCE_HINT}"
        )
    return unit


def _with_defaults(config: Mapping[str, Any], schema: Mapping[str, Any] = SCHEMA) -> dict:
    """``config`` with the keys it lacks taken from the schema's defaults: a config.json written
    before a key existed lacks it, and means what the default means."""
    out = dict(config)
    for key, spec in schema.items():
        if isinstance(spec, dict):
            sub = out.get(key, {})
            out[key] = _with_defaults(sub, spec) if isinstance(sub, Mapping) else sub
        elif key not in out and key not in ("seed", "seeds"):  # a config holds one of the two
            out[key] = spec.default
    return out


def _config_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys in which a saved config and a new one differ for the numbers already computed.

    ``data.workers`` only changes how the data is read. ``methods`` may gain or lose entries,
    since every unit belongs to one method label, but a label in both must keep its method and
    options.
    """
    a, b = _with_defaults(old), _with_defaults(new)
    for c in (a, b):
        c.pop("methods", None)
        if isinstance(c.get("data"), Mapping):
            c["data"] = {k: v for k, v in c["data"].items() if k != "workers"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    try:
        before = {e["label"]: e for e in method_entries(list(old.get("methods") or []))}
    except (TTAError, TypeError, ValueError):
        return diff + ["methods"]
    now = {e["label"]: e for e in method_entries(list(new.get("methods") or []))}
    plain = lambda e: json.loads(json_text([e["name"], e["options"]]))  # noqa: E731
    changed = [k for k in before if k in now and plain(before[k]) != plain(now[k])]
    if changed:
        diff.append(
            f"methods ({', '.join(map(repr, changed))} changed; give a changed method a new label)"
        )
    return diff


def _refuse_other_config(out: Path, config: Mapping[str, Any]) -> None:
    """A folder holding another config's results is refused, naming the keys that differ; a
    config that only adds or drops methods (or changes ``data.workers``) resumes."""
    old = _runs.saved_config(out)
    if old is None or old == config:
        return
    if not isinstance(old, Mapping):
        raise TTAError(
            f"{str(out / 'config.json')!r} is damaged (not a config); {_runs.FORCE_HINT}"
        )
    diff = _config_difference(old, config)
    if diff:
        raise TTAError(
            f"output folder {str(out)!r} holds results of a different config (differs in "
            f"{', '.join(diff)}); {_runs.FORCE_HINT}"
        )


@dataclass
class SeedRun:
    """What one seed of a run streams: its seed (None in the unit paths of a ``seed`` run), the
    stream, the clean source images for the methods that want them, and each stream domain's
    held-out context samples (``data.context_per_domain``)."""

    seed: int
    unit_seed: Optional[int]
    stream: Any
    images: Optional[torch.Tensor]
    contexts: Optional[list[Domain]] = None


def _summarise_read_only(
    out: Path,
    config: dict[str, Any],
    inputs: dict[str, Input],
    force: bool,
    entries: list[dict[str, Any]],
    runs: list[SeedRun],
) -> dict[str, Any]:
    """A finished run in a folder this process cannot write: check it as a resume would and
    return its results, writing nothing (and taking no lock: no run can write there)."""
    before = _runs.saved_config(out)
    if force or not isinstance(before, Mapping) or _config_difference(before, config):
        raise _runs.not_writable(out)
    _runs.check_inputs(out, inputs)
    per_seed = []
    for run in runs:
        names = run.stream.domain_names
        units: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            units[entry["label"]] = []
            for segment in run.stream.segments():
                path = unit_path(out, entry["label"], segment.name, run.unit_seed)
                if not path.is_file():
                    where = "" if run.unit_seed is None else f" | seed {run.seed}"
                    raise TTAError(
                        f"output folder {str(out)!r} is not writable and the run is not finished "
                        f"({entry['label']} | {segment.name}{where} is missing); make it writable "
                        "or set another output"
                    )
                units[entry["label"]].append(_read_unit(path, entry, segment.name, len(names)))
        per_seed.append((run, units))
    results = _results(config, entries, per_seed)
    saved = out / "results.json"
    if not saved.is_file() or read_json(saved) != json.loads(json_text(results)):
        raise TTAError(
            f"output folder {str(out)!r} is not writable and its results.json is missing or "
            "out of date; make it writable or set another output"
        )
    return results


def _run_pending(
    out: Path,
    model: torch.nn.Module,
    entries: list[dict[str, Any]],
    run: SeedRun,
    context: RunContext,
    device: torch.device,
    config: dict[str, Any],
) -> None:
    """Run every unfinished unit of one seed: segment after segment, one pass over the data
    each, feeding every method whose unit is missing; write each unit when its segment ends."""
    names = run.stream.domain_names
    todo = []
    for segment in run.stream.segments():
        missing = [
            e
            for e in entries
            if not unit_path(out, e["label"], segment.name, run.unit_seed).exists()
        ]
        if missing:
            todo.append((segment, missing))
    if not todo:
        return
    where = "" if run.unit_seed is None else f" | seed {run.seed}"
    workers, pin = config["data"]["workers"], device.type == "cuda"
    with read_batches([seg for seg, _ in todo], workers, pin) as batches:
        for segment, missing in todo:
            # The run context gives every method the seed and the stream's batch size (so
            # UnMix-TNS's λ does not change on a domain's last, shorter batch).
            adapted = {
                e["label"]: tta.adapt(model, e["name"], context, **e["options"]).to(device)
                for e in missing
            }
            if len(missing) == 1:
                label = missing[0]["label"]
                desc = f"{label} | {segment.name}{where}"
                results = {
                    label: run_unit(
                        adapted[label],
                        segment,
                        len(names),
                        device,
                        desc,
                        batches=batches,
                        precision=config["precision"],
                        contexts=run.contexts,
                    )
                }
            else:
                desc = f"{len(missing)} methods | {segment.name}{where}"
                results = run_segment(
                    adapted,
                    segment,
                    len(names),
                    device,
                    desc,
                    batches,
                    config["precision"],
                    run.contexts,
                )
            del adapted
            for e in missing:
                unit = {
                    "method": e["label"],
                    "segment": segment.name,
                    "entry": {"name": e["name"], "options": e["options"]},
                    **results[e["label"]],
                }
                write_json(unit_path(out, e["label"], segment.name, run.unit_seed), unit)


def evaluate(
    config: Mapping[str, Any],
    force: bool = False,
    model: Optional[torch.nn.Module] = None,
    domains: Optional[Sequence[Domain]] = None,
) -> dict[str, Any]:
    """Run a config (a mapping in the YAML schema); return the results and write the output folder.

    ``model``: use this network instead of building ``config["model"]`` (it must take [0, 1]
    images, as ``tta.load_model`` returns). Its fingerprint is the hash of its class and
    ``state_dict``, so a resume with other weights is refused (see ``tta._runs``).
    ``domains``: run on these ``Domain`` objects (e.g. ``tta.data.ArrayDomain`` of your own
    arrays) instead of the ones ``config["data"]`` describes; the data keys that say where
    domains come from (``source``, ``root``, ``clean``, ``corruptions``, ``severities``) must
    then be left out, while ``num_samples``, ``source_data`` and ``workers`` still apply. Each
    domain's ``fingerprint()`` is recorded, so a resume on other data is refused.
    ``force``: clear what tta wrote in the output folder and start over; a non-empty folder tta
    did not make is refused.

    Every segment of the stream is read once: each batch goes to every method in turn, and the
    units of that segment (one per method) are written when it ends. A rerun skips finished
    units, also when the methods list has grown since.

    With ``seeds``, every seed is a run of its own as ``seed: <s>`` would make it (data subset,
    corruption noise, stream order, methods' draws), kept in ``units/seed-<s>/``; the results
    hold each seed's numbers and their mean ± std (see ``aggregate_seeds``).
    """
    from tta.report import write_reports

    given = _user_domains(config, domains) if domains is not None else None
    config = resolve_config(config)
    out = Path(config["output"])
    _runs.check_output_path(out)
    if force:
        _runs.check_can_force(out)
    else:
        _refuse_other_config(out, config)  # before the (slow) model and data
    seeds, device = run_seeds(config), resolve_device(config["device"])
    check_precision(config["precision"], device)
    multi = "seeds" in config
    entries = method_entries(config["methods"])
    inputs: dict[str, Input] = {"tta": ("value", {"version": tta.__version__})}
    if model is None:
        m = config["model"]
        model = tta.load_model(
            m["spec"],
            m["checkpoint"],
            num_classes=m["num_classes"],
            mean=m["mean"],
            std=m["std"],
            weights=m["weights"],
            pretrained=m["pretrained"],
            pretrained_tag=m["pretrained_tag"],
            model_dir=m["model_dir"],
            **m["kwargs"],
        )
        library_weights = (
            m["weights"]
            or m["pretrained"]
            or m["pretrained_tag"]
            or "robustbench:" in (m["spec"] or "")
        )
        if not m["checkpoint"] and not library_weights:
            warnings.warn(
                f"model {model.spec!r} has no checkpoint and no pretrained weights, so it runs "
                "with the weights its builder gives (random initialisation for the built-in, timm "
                "and torchvision specs); set model.checkpoint (or weights / pretrained)",
                stacklevel=2,
            )
        if m["checkpoint"]:
            inputs["checkpoint"] = ("file", m["checkpoint"])
        library = {k: m[k] for k in ("spec", "weights", "pretrained", "pretrained_tag")}
        if library_weights:  # weights a library keeps in its own cache: named by what was asked for
            inputs["library_weights"] = ("value", library)
    else:
        if not isinstance(model, torch.nn.Module):
            raise TTATypeError(
                f"model must be a torch.nn.Module, got {type(model).__module__}."
                f"{type(model).__name__}"
            )
        inputs["model"] = ("value", _runs.model_fingerprint(model))
    s = config["stream"]
    runs: list[SeedRun] = []
    num_classes = None
    data, held = config["data"], config["data"]["context_per_domain"]
    if held and s["schedule"] == "mixed":
        raise TTAError(
            f"data.context_per_domain ({held}) gives each domain's context to the model before "
            "the stream enters that domain, but schedule 'mixed' mixes the domains inside every "
            "batch; use reset_each_shift, continual or gradual, or drop data.context_per_domain"
        )
    for i, seed in enumerate(seeds):
        contexts = None
        if given is None:
            # With context, the subset (num_samples) is drawn after the context is held out.
            domains, data_inputs = _build_domains(
                {**data, "num_samples": None} if held else data, seed
            )
        else:
            domains, data_inputs = given, (_domain_inputs(given) if i == 0 else {})
        if held:
            domains, contexts = _hold_out_context(domains, held)
        if held or given is not None:
            domains = _subset(domains, data["num_samples"], seed)
        if i == 0:  # the fingerprinted inputs (files, clean images) do not depend on the seed
            inputs.update(data_inputs)
            num_classes = check_model(model, domains)
        images = source_images(config["data"], entries, seed)
        stream = make_stream(domains, s["order"], s["delta"], s["schedule"], s["batch_size"], seed)
        runs.append(SeedRun(seed, seed if multi else None, stream, images, contexts))

    if not _runs.writable(out):
        return _summarise_read_only(out, config, inputs, force, entries, runs)
    with folder_lock(out):
        remove_temp_files(out)
        if force:
            _runs.clear_run_folder(out)
        else:
            _refuse_other_config(out, config)
        if (out / "config.json").is_file():
            kept = _runs.check_inputs(out, inputs)
        elif (out / "units").is_dir() and any((out / "units").iterdir()):
            raise TTAError(
                f"output folder {str(out)!r} holds finished units but no config.json saying "
                f"what they came from; {_runs.FORCE_HINT}"
            )
        else:
            kept = _runs.record(inputs)
        # Claim the folder: the marker first, so a config.json never lacks its fingerprints.
        _runs.write_if_changed(out / MARKER, _runs.marker_text(kept))
        _runs.write_if_changed(out / "config.json", json_text(config))
        per_seed = []
        for run in runs:
            context = RunContext(
                seed=run.seed,
                batch_size=s["batch_size"],
                device=device,
                num_classes=num_classes,
                source_images=run.images,
            )
            _run_pending(out, model, entries, run, context, device, config)
            units = {
                e["label"]: [
                    _read_unit(
                        unit_path(out, e["label"], seg.name, run.unit_seed),
                        e,
                        seg.name,
                        len(run.stream.domain_names),
                    )
                    for seg in run.stream.segments()
                ]
                for e in entries
            }
            per_seed.append((run, units))
        results = _results(config, entries, per_seed)
        write_reports(out, results)
    return results


def _results(
    config: dict[str, Any],
    entries: list[dict[str, Any]],
    per_seed: list[tuple[SeedRun, dict[str, list[dict[str, Any]]]]],
) -> dict[str, Any]:
    if "seeds" not in config:
        run, units = per_seed[0]
        return aggregate(config, entries, units, run.stream.domain_names, run.stream)
    runs = [
        {"seed": run.seed, **_aggregate_one(entries, units, run.stream.domain_names, run.stream)}
        for run, units in per_seed
    ]
    return aggregate_seeds(config, runs)


def aggregate(
    config: dict[str, Any],
    entries: list[dict[str, Any]],
    units: dict[str, list[dict[str, Any]]],
    names: list[str],
    stream,
) -> dict[str, Any]:
    """Per-domain online error (%) of every method, its mean, and differences to ``source``."""
    one = _aggregate_one(entries, units, names, stream)
    return {
        "name": config["name"],
        "seed": config["seed"],
        "config": config,
        "versions": _versions(),
        **one,
    }


def _aggregate_one(
    entries: list[dict[str, Any]],
    units: dict[str, list[dict[str, Any]]],
    names: list[str],
    stream,
) -> dict[str, Any]:
    """``stream``, ``methods`` and ``wall_seconds`` of one seed's run."""
    methods = []
    for entry in entries:
        wrong = np.sum([u["wrong"] for u in units[entry["label"]]], axis=0)
        seen = np.sum([u["seen"] for u in units[entry["label"]]], axis=0)
        nonfinite = np.sum(
            [u.get("nonfinite") or [0] * len(names) for u in units[entry["label"]]], axis=0
        )
        seconds = float(sum(u["seconds"] for u in units[entry["label"]]))
        errors = {n: 100.0 * w / c for n, w, c in zip(names, wrong, seen) if c > 0}
        methods.append(
            {
                "label": entry["label"],
                "name": entry["name"],
                "options": entry["options"],
                "errors": errors,
                "samples": {n: int(c) for n, c in zip(names, seen) if c > 0},
                "nonfinite": {n: int(b) for n, b, c in zip(names, nonfinite, seen) if c > 0},
                "nonfinite_total": int(nonfinite.sum()),
                "mean_error": float(np.mean(list(errors.values()))),
                "seconds": seconds,
                "images": int(seen.sum()),
                "images_per_second": float(seen.sum() / seconds) if seconds > 0 else None,
            }
        )
    source = methods[0]
    for m in methods:
        m["delta_vs_source"] = m["mean_error"] - source["mean_error"]
        m["delta_per_domain"] = {n: e - source["errors"][n] for n, e in m["errors"].items()}
    return {
        "stream": {
            "domains": names,
            "num_batches": stream.num_batches,
            "num_samples": stream.num_samples,
            "label_stats": stream.label_stats(),
        },
        "methods": methods,
        "wall_seconds": float(sum(m["seconds"] for m in methods)),
    }


def _std(values: list[float]) -> float:
    """Sample standard deviation (ddof = 1); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate_seeds(config: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of a run with ``seeds``: ``per_seed`` holds each seed's ``stream``,
    ``methods`` and ``wall_seconds`` exactly as a ``seed`` run reports them; the top-level
    ``methods`` hold, per method, the mean over seeds of each number and its sample standard
    deviation (ddof = 1) in ``*_std`` keys: ``errors``/``errors_std`` per domain,
    ``mean_error``/``mean_error_std``, ``delta_vs_source``/``delta_vs_source_std`` (the Δ is
    taken per seed, on that seed's identical stream, then averaged); ``samples`` and the
    stream's sizes are per seed (equal for every seed), non-finite counts, seconds and images are
    summed over seeds; label statistics are averaged."""
    names = runs[0]["stream"]["domains"]
    methods = []
    for i, first in enumerate(runs[0]["methods"]):
        per = [r["methods"][i] for r in runs]
        doms = [d for d in names if all(d in m["errors"] for m in per)]
        seconds = float(sum(m["seconds"] for m in per))
        images = int(sum(m["images"] for m in per))
        nonfinite = {d: int(sum(m["nonfinite"].get(d, 0) for m in per)) for d in doms}
        methods.append(
            {
                "label": first["label"],
                "name": first["name"],
                "options": first["options"],
                "errors": {d: float(np.mean([m["errors"][d] for m in per])) for d in doms},
                "errors_std": {d: _std([m["errors"][d] for m in per]) for d in doms},
                "samples": {d: first["samples"][d] for d in doms},  # per seed
                "nonfinite": nonfinite,
                "nonfinite_total": int(sum(m["nonfinite_total"] for m in per)),
                "mean_error": float(np.mean([m["mean_error"] for m in per])),
                "mean_error_std": _std([m["mean_error"] for m in per]),
                "mean_error_per_seed": [m["mean_error"] for m in per],
                "delta_vs_source": float(np.mean([m["delta_vs_source"] for m in per])),
                "delta_vs_source_std": _std([m["delta_vs_source"] for m in per]),
                "delta_per_domain": {
                    d: float(np.mean([m["delta_per_domain"][d] for m in per])) for d in doms
                },
                "delta_per_domain_std": {
                    d: _std([m["delta_per_domain"][d] for m in per]) for d in doms
                },
                "seconds": seconds,
                "images": images,
                "images_per_second": images / seconds if seconds > 0 else None,
            }
        )
    stats = [r["stream"]["label_stats"] for r in runs]
    return {
        "name": config["name"],
        "seeds": [r["seed"] for r in runs],
        "config": config,
        "versions": _versions(),
        "stream": {
            "domains": names,
            "num_batches": runs[0]["stream"]["num_batches"],  # per seed (equal for every seed)
            "num_samples": runs[0]["stream"]["num_samples"],
            "label_stats": {
                k: float(np.mean([st[k] for st in stats]))
                for k in stats[0]
                if all(isinstance(st.get(k), (int, float)) for st in stats)
            },
        },
        "methods": methods,
        "per_seed": runs,
        "wall_seconds": float(sum(r["wall_seconds"] for r in runs)),
    }
