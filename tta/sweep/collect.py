"""Merging a sweep: the finished cells of a sweep folder grouped into settings (cells that differ
only in the seed), with the mean ± std over seeds of every method, then written as sweep.csv,
sweep.md and sweep.png (see ``render``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tta._errors import TTAFileNotFoundError
from tta._io import read_json, write_text
from tta._render import sample_std
from tta.run_config import baseline
from tta.sweep.plan import RESERVED, PathLike, canonical, get_key, short_names, value_text
from tta.sweep.render import plot_sweep, sweep_csv, sweep_markdown


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as dotted key → canonical value text (the method list kept whole)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and key != "methods":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = canonical(value)
    return out


def _csv_value(value: Any) -> Any:
    """A grid value as a CSV cell: numbers and text as they are, anything else as JSON."""
    return (
        value
        if isinstance(value, (str, int, float)) and not isinstance(value, bool)
        else (canonical(value))
    )


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    """A config's value for a dotted key; None where it has none (``seed`` of a ``seeds`` run)."""
    try:
        return get_key(config, dotted)
    except (KeyError, TypeError):
        return None


def _seed_runs(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A cell's runs, one per seed: the ``per_seed`` entries of a ``seeds`` run, else the run."""
    return list(res["per_seed"]) if "per_seed" in res else [res]


def collect(directory: PathLike) -> dict[str, Any]:
    """Merge the finished cells of a sweep folder (cells with results.json) into sweep.csv,
    sweep.md and sweep.png; return the merged numbers.

    Grid keys come from sweep.json when present, else from the config keys that differ between
    cells. Cells that differ only in ``seed`` (or ``seeds``) form one setting: its mean ± sample
    std (n − 1) over seeds of each method's mean error, and of its difference to ``source``. A
    cell run with ``seeds`` counts as one run per seed, so ``seeds: [1, 2, 3]`` in the sweep file
    and ``grid: {seed: [1, 2, 3]}`` give the same table.
    """
    root = Path(directory)
    cells_dir = root / "cells"
    if not root.is_dir():
        raise TTAFileNotFoundError(f"sweep folder {str(root)!r} does not exist")
    hint = "delete it (--collect then merges the finished cells it finds), or rerun the sweep"
    plan = read_json(root / "sweep.json", hint) if (root / "sweep.json").is_file() else None
    failures = read_json(root / "failures.json", hint) if (root / "failures.json").is_file() else {}
    planned = [c["id"] for c in plan["cells"]] if plan else None
    found = sorted(p.parent.name for p in cells_dir.glob("*/results.json"))
    ids = [i for i in planned if i in found] if planned is not None else found
    cell_hint = "rerun the sweep with --force, or delete that cell folder"
    results = {i: read_json(cells_dir / i / "results.json", cell_hint) for i in ids}
    if not results and not failures:
        raise TTAFileNotFoundError(
            f"no finished cell (cells/<id>/results.json) in sweep folder {str(root)!r}"
        )
    if plan:
        keys = list(plan["grid"])
    else:
        flats = [_flat(r["config"]) for r in results.values()]
        keys = [
            k
            for k in (flats[0] if flats else {})
            if k not in RESERVED and len({f.get(k) for f in flats}) > 1
        ]
    name = plan["name"] if plan else root.name
    values = {i: {k: _get(r["config"], k) for k in keys} for i, r in results.items()}
    # A cell run with ``seeds`` stands for one run per seed, exactly like cells of a grid over
    # ``seed``: its per-seed results are merged as such (a ``seed`` column in sweep.csv).
    multi = any("per_seed" in r for r in results.values())
    seed_column = multi and "seed" not in keys
    csv_keys = [*keys, "seed"] if seed_column else keys
    rows = _csv_rows(results, values, keys, seed_column)
    settings, methods = _settings(results, values, keys)
    failed = {i: f for i, f in failures.items() if i not in results}
    missing = [i for i in planned if i not in results and i not in failed] if planned else []
    merged = {
        "name": name,
        "grid_keys": keys,
        "seeded": "seed" in keys or "seeds" in keys or multi,
        "cells": ids,
        "settings": settings,
        "methods": methods,
        "failed": failed,
        "missing": missing,
    }
    write_text(root / "sweep.csv", sweep_csv(rows, csv_keys))
    write_text(root / "sweep.md", sweep_markdown(merged, results, plan))
    plot_sweep(merged, root / "sweep.png")
    return merged


def _csv_rows(
    results: dict[str, Any],
    values: dict[str, dict[str, Any]],
    keys: list[str],
    seed_column: bool,
) -> list[dict[str, Any]]:
    """sweep.csv's rows: one per cell × seed × method × domain."""
    rows = []
    for cid, res in results.items():
        for run in _seed_runs(res):
            source = baseline(run["methods"])["errors"]
            seed = {"seed": run["seed"]} if seed_column else {}
            for m in run["methods"]:
                for domain, err in m["errors"].items():
                    rows.append(
                        {
                            "cell": cid,
                            **{k: _csv_value(values[cid][k]) for k in keys},
                            **seed,
                            "method": m["label"],
                            "domain": domain,
                            "error": err,
                            "source_error": source[domain],
                            "delta_vs_source": err - source[domain],
                            "samples": m["samples"][domain],
                        }
                    )
    return rows


def _settings(
    results: dict[str, Any], values: dict[str, dict[str, Any]], keys: list[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The cells grouped by their grid values other than the seed (label → setting, each with
    every method's mean and std over the seeds), and the method labels in order of appearance."""
    setting_keys = [k for k in keys if k not in ("seed", "seeds")]
    short = short_names(keys)
    settings: dict[str, dict[str, Any]] = {}
    for cid, res in results.items():
        label = ", ".join(f"{short[k]}={value_text(values[cid][k])}" for k in setting_keys)
        label = label or "all cells"
        group = settings.setdefault(label, {"values": {}, "cells": [], "seeds": 0, "methods": {}})
        group["values"] = {k: values[cid][k] for k in setting_keys}
        group["cells"].append(cid)
        for run in _seed_runs(res):
            group["seeds"] += 1
            group.setdefault("runs", []).append(
                [
                    {k: m[k] for k in ("label", "name", "options", "mean_error")}
                    for m in run["methods"]
                ]
            )
            for m in run["methods"]:
                entry = group["methods"].setdefault(m["label"], {"errors": [], "deltas": []})
                entry["errors"].append(m["mean_error"])
                entry["deltas"].append(m["delta_vs_source"])
    methods: list[str] = []
    for group in settings.values():
        for label, entry in group["methods"].items():
            if label not in methods:
                methods.append(label)
            entry.update(
                n=len(entry["errors"]),
                mean=float(np.mean(entry["errors"])),
                std=sample_std(entry["errors"]),
                delta_mean=float(np.mean(entry["deltas"])),
                delta_std=sample_std(entry["deltas"]),
            )
    return settings, methods
