"""Evaluation runs: every method, and the ``source`` baseline, on the identical stream (SPEC §7).

The work is split into units, (method, segment), where a segment is the batches between two
resets: one per domain for ``reset_each_shift``, the whole stream for continual, mixed and gradual
schedules. Each finished unit is written atomically to ``<output>/units/``; a rerun of the same
config skips finished units and rebuilds identical final files from them.
"""

from __future__ import annotations

import platform
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

import tta
from tta._io import read_json, write_json
from tta.config import method_entries, resolve_config
from tta.data import CIFARC, ArrayDomain, Domain, ImageNetC, Segment, make_stream
from tta.methods.base import RunContext


class SubsetDomain(Domain):
    """The rows ``rows`` of a domain (for quick runs on part of a dataset)."""

    def __init__(self, domain: Domain, rows: np.ndarray):
        super().__init__(domain.name, domain.corruption, domain.severity)
        self.inner, self.rows = domain, rows

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
    source, names, sev = data["source"], data["corruptions"], list(data["severities"])
    if source in ("cifar-c", "imagenet-c"):
        if not data["root"]:
            raise ValueError(f"data.source {source!r} needs data.root (the dataset folder)")
        reader = CIFARC if source == "cifar-c" else ImageNetC
        domains = reader(data["root"], corruptions=names, severities=sev)
    else:
        if not data["clean"]:
            raise ValueError(
                "data.source 'corrupt' needs data.clean: 'mnist5k', 'cifar10:<folder>', "
                "'cifar100:<folder>' or an .npz file"
            )
        import corruptions
        from tta.models.data import load_dataset

        _, _, images, labels = load_dataset(data["clean"])
        if data["num_samples"]:
            rows = subset_rows(len(labels), data["num_samples"], seed)
            images, labels = images[rows], labels[rows]
        names = names or corruptions.names("benchmark")
        return corrupted_domains(images, labels, names, sev, seed)
    if data["num_samples"]:
        domains = [SubsetDomain(d, subset_rows(len(d), data["num_samples"], seed)) for d in domains]
    return domains


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def run_unit(
    adapted: torch.nn.Module,
    segment: Segment,
    num_domains: int,
    device: torch.device,
    desc: str,
) -> dict[str, Any]:
    """Stream one segment through a freshly wrapped method; count online errors per domain.

    Counts stay on the device; the host reads them every few batches for the progress bar only.
    """
    wrong = torch.zeros(num_domains, dtype=torch.float64, device=device)
    seen = torch.zeros(num_domains, dtype=torch.float64, device=device)
    start = time.perf_counter()
    with tqdm(total=len(segment), desc=desc, leave=False, dynamic_ncols=True, disable=None) as bar:
        for b, batch in enumerate(segment):
            x = batch.x.to(device, non_blocking=True)
            dom = batch.domains.to(device, non_blocking=True)
            miss = (adapted(x).argmax(1) != batch.y.to(device, non_blocking=True)).double()
            wrong.index_add_(0, dom, miss)
            seen.index_add_(0, dom, torch.ones_like(miss))
            if not bar.disable and (b % 10 == 9 or b == len(segment) - 1):
                bar.set_postfix(error=f"{100 * wrong.sum().item() / seen.sum().item():.1f}%")
            bar.update()
    seconds = time.perf_counter() - start
    return {"wrong": wrong.cpu().tolist(), "seen": seen.cpu().tolist(), "seconds": seconds}


def _versions() -> dict[str, str]:
    return {
        "tta": tta.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _check_output(out: Path, config: dict[str, Any], force: bool) -> None:
    saved = out / "config.json"
    if force and out.exists():
        shutil.rmtree(out / "units", ignore_errors=True)
        for name in ("results.json", "results.csv", "summary.md", "errors.png", "config.json"):
            (out / name).unlink(missing_ok=True)
    elif saved.exists() and read_json(saved) != config:
        old = read_json(saved)
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise ValueError(
            f"output folder {str(out)!r} holds results of a different config (differs in "
            f"{', '.join(diff)}); rerun with --force to start over, or set another output"
        )
    write_json(saved, config)


def evaluate(
    config: Mapping[str, Any], force: bool = False, model: Optional[torch.nn.Module] = None
) -> dict[str, Any]:
    """Run a config (a mapping in the YAML schema); return the results and write the output folder.

    ``model``: use this network instead of building ``config["model"]`` (it must take [0, 1]
    images, as ``tta.load_model`` returns).
    """
    from tta.report import write_reports

    config = resolve_config(config)
    out = Path(config["output"])
    _check_output(out, config, force)
    seed, device = config["seed"], resolve_device(config["device"])
    entries = method_entries(config["methods"])
    if model is None:
        m = config["model"]
        model = tta.load_model(
            m["spec"], m["checkpoint"], num_classes=m["num_classes"], mean=m["mean"], std=m["std"]
        )
    domains = build_domains(config["data"], seed)
    s = config["stream"]
    stream = make_stream(domains, s["order"], s["delta"], s["schedule"], s["batch_size"], seed)
    names = stream.domain_names
    units: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        # The run context gives every method the run's seed and the stream's batch size (so
        # UnMix-TNS's λ does not change on a domain's last, shorter batch).
        context = RunContext(seed=seed, batch_size=s["batch_size"], device=device)
        units[entry["label"]] = []
        for segment in stream.segments():
            path = out / "units" / _safe(entry["label"]) / f"{_safe(segment.name)}.json"
            if not path.exists():
                options = entry["options"]
                adapted = tta.adapt(model, entry["name"], context, **options).to(device)
                result = run_unit(
                    adapted, segment, len(names), device, f"{entry['label']} | {segment.name}"
                )
                write_json(path, {"method": entry["label"], "segment": segment.name, **result})
            units[entry["label"]].append(read_json(path))
    results = aggregate(config, entries, units, names, stream)
    write_reports(out, results)
    return results


def aggregate(
    config: dict[str, Any],
    entries: list[dict[str, Any]],
    units: dict[str, list[dict[str, Any]]],
    names: list[str],
    stream,
) -> dict[str, Any]:
    """Per-domain online error (%) of every method, its mean, and differences to ``source``."""
    methods = []
    for entry in entries:
        wrong = np.sum([u["wrong"] for u in units[entry["label"]]], axis=0)
        seen = np.sum([u["seen"] for u in units[entry["label"]]], axis=0)
        seconds = float(sum(u["seconds"] for u in units[entry["label"]]))
        errors = {n: 100.0 * w / c for n, w, c in zip(names, wrong, seen) if c > 0}
        methods.append(
            {
                "label": entry["label"],
                "name": entry["name"],
                "options": entry["options"],
                "errors": errors,
                "samples": {n: int(c) for n, c in zip(names, seen) if c > 0},
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
        "name": config["name"],
        "seed": config["seed"],
        "config": config,
        "versions": _versions(),
        "stream": {
            "domains": names,
            "num_batches": stream.num_batches,
            "num_samples": stream.num_samples,
            "label_stats": stream.label_stats(),
        },
        "methods": methods,
        "wall_seconds": float(sum(m["seconds"] for m in methods)),
    }
