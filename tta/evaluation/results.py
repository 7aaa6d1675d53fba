"""Results of a run: per-domain online error of every method and its difference to ``source``."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch

import tta
from tta.evaluation.domains import SeedRun


def _versions() -> dict[str, str]:
    return {
        "tta": tta.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def run_results(
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
