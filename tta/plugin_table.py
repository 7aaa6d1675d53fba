"""The plug-in table of the UnMix-TNS paper (Tomar et al., ICLR 2024): every method with its own
norm layer and with another norm layer put underneath it (``norm: unmix-tns``), side by side.

A *pair* is two method entries of one run with the same method name and the same method options:
one without ``norm`` (or with the method's default norm), one with ``norm: <X>``. For each pair
the table gives the error with the method's own norm, with X, and the difference X − own, each as
mean ± sample std (ddof = 1) over the seeds; the difference is paired by seed (same stream, same
corruption noise), so its std is that of the per-seed differences, not a combination of the two
columns' stds. ``tta sweep`` adds this table to sweep.md for every setting that has pairs and
``tta demo --plugin-table`` prints one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tta._render import md_table, number, sample_std
from tta.run_config import SOURCE


@dataclass(frozen=True)
class Pair:
    method: str  # the method's name (the table's row)
    own: str  # label of the entry with the method's own norm
    plugged: str  # label of the entry with ``norm`` = ``norm``
    norm: str
    own_norm: str  # the method's own norm ("own" when the method is not registered here)


def _method_options(entry: Mapping[str, Any]) -> str:
    """The entry's method options (norm options and ``norm`` left out), canonical text."""
    from tta.registry import METHODS

    options = dict(entry.get("options") or {})
    options.pop("norm", None)
    cls = METHODS.get(entry["name"])
    if cls is not None:
        options = {k: v for k, v in options.items() if k in cls.options}
    return json.dumps(options, sort_keys=True, default=str)


def _norm_of(entry: Mapping[str, Any]) -> Optional[str]:
    """The norm the entry names, None for the method's own (not given, or its default)."""
    from tta.registry import METHODS

    norm = (entry.get("options") or {}).get("norm")
    cls = METHODS.get(entry["name"])
    if norm is None or (cls is not None and norm == cls.default_norm):
        return None
    return norm


def find_pairs(methods: Sequence[Mapping[str, Any]]) -> list[Pair]:
    """The (own norm, other norm) pairs among a run's method entries, in listing order."""
    from tta.registry import METHODS

    pairs = []
    for own in methods:
        if own["label"] == SOURCE or _norm_of(own) is not None:
            continue
        key = _method_options(own)
        for other in methods:
            norm = _norm_of(other)
            if other["name"] == own["name"] and norm is not None and _method_options(other) == key:
                cls = METHODS.get(own["name"])
                own_norm = cls.default_norm if cls is not None else "own"
                pairs.append(Pair(own["name"], own["label"], other["label"], norm, own_norm))
    return pairs


def _pm(values: Sequence[float], signed: bool = False) -> str:
    """mean ± sample std over seeds (the mean alone for one seed), as the other tables show it."""
    std = sample_std(values) if len(values) > 1 else None
    return number(float(np.mean(values)), std, signed=signed)


def plugin_table(runs: Sequence[Sequence[Mapping[str, Any]]]) -> Optional[str]:
    """Markdown table from the method lists of one setting's runs (one list per seed; each
    entry has ``label``, ``name``, ``options``, ``mean_error``); None when there is no pair."""
    if not runs:
        return None
    pairs = find_pairs(runs[0])
    if not pairs:
        return None
    norms = list(dict.fromkeys(p.norm for p in pairs))
    head = ["method", "own norm"]
    for norm in norms:
        head += [f"+ {norm}", "Δ"]
    rows: dict[str, dict[str, str]] = {}
    errors = [{m["label"]: float(m["mean_error"]) for m in run} for run in runs]
    for p in pairs:
        both = [r for r in errors if p.own in r and p.plugged in r]
        if not both:
            continue
        own, plugged = [r[p.own] for r in both], [r[p.plugged] for r in both]
        row = rows.setdefault(f"{p.method} ({p.own_norm})", {"own": _pm(own)})
        row[p.norm] = _pm(plugged)
        row[p.norm + " Δ"] = _pm(np.subtract(plugged, own).tolist(), signed=True)
    cells = []
    for method, row in rows.items():
        cells.append([method, row["own"]])
        for norm in norms:
            cells[-1] += [row.get(norm, "-"), row.get(norm + " Δ", "-")]
    return "\n".join(md_table(head, cells))
