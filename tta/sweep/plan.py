"""Sweep plans: a sweep file's grid and exclusions checked, and expanded into cells whose
configs are resolved (and so validated) before anything runs.

Also the small helpers the rest of the package shares: dotted config keys, and how grid values
are written in cell ids, labels and tables.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tta._errors import TTAError, TTATypeError, did_you_mean, unknown
from tta.config import SCHEMA, apply_overrides, resolve_config
from tta.overrides import parse_value, read_yaml, split_override

PathLike = Union[str, Path]

SWEEP_KEYS = ("grid", "exclude")
# Keys the sweep sets for every cell itself.
RESERVED = ("name", "output")


def schema_keys(schema: Mapping[str, Any] = SCHEMA, prefix: str = "") -> list[str]:
    """Every settable config key in dotted form (``stream.batch_size``, ``seed``, ...)."""
    keys = []
    for key, spec in schema.items():
        name = f"{prefix}{key}"
        keys += schema_keys(spec, name + ".") if isinstance(spec, dict) else [name]
    return keys


def get_key(config: Mapping[str, Any], dotted: str) -> Any:
    """A config's value for a dotted key (``stream.batch_size``); KeyError where it has none."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key in a nested config (a copy of ``value``), creating sections on the way."""
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def canonical(value: Any) -> str:
    """One JSON text per value, so equal values compare (and hash) equal whatever their order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def value_text(value: Any) -> str:
    """A grid value as people write it: ``0.1``, ``continual``, ``tbn+tent`` for a method list."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "+".join(value_text(v) for v in value)
    if isinstance(value, Mapping):
        return str(value["name"]) if "name" in value else canonical(value)
    return json.dumps(value)  # numbers, true/false/null


def _id_part(text: str, limit: int = 40) -> str:
    """Text safe in a folder name, at most ``limit`` characters plus a hash."""
    if "/" in text.rstrip("/"):  # a path: its last part tells cells apart (clashes get a hash)
        text = text.rstrip("/").rsplit("/", 1)[-1]
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", text)
    if len(safe) > limit:
        safe = safe[:limit] + "~" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return safe


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: its id, grid values (dotted key → value) and resolved config."""

    id: str
    values: dict[str, Any]
    config: dict[str, Any]

    @property
    def output(self) -> Path:
        """The cell's run folder (``<sweep output>/cells/<id>``)."""
        return Path(self.config["output"])


@dataclass
class Sweep:
    """A validated sweep: the base config, the grid, the exclusions and the cells they give."""

    name: str
    output: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    exclude: list[dict[str, Any]]
    cells: list[Cell] = field(default_factory=list)

    def plan(self) -> dict[str, Any]:
        """What sweep.json records: enough for ``collect`` to rebuild the tables later."""
        return {
            "name": self.name,
            "grid": self.grid,
            "exclude": self.exclude,
            "base": self.base,
            "cells": [{"id": c.id, "values": c.values} for c in self.cells],
        }


def _check_grid(grid: Any) -> dict[str, list[Any]]:
    """The grid as a plain dict; an error for unknown or reserved keys, empty or repeated values."""
    valid = schema_keys()
    if not isinstance(grid, Mapping) or not grid:
        raise TTAError(
            "a sweep file needs 'grid': a mapping of dotted config keys to lists of values, e.g. "
            "grid: {stream.schedule: [reset_each_shift, continual], seed: [1, 2, 3]}"
        )
    out = {}
    for key, values in grid.items():
        key = str(key)
        if key in RESERVED:
            raise TTAError(
                f"grid key {key!r} cannot be swept: the sweep sets each cell's name and output "
                "itself (cells/<cell id> inside the sweep's output folder)"
            )
        if key not in valid:
            raise TTAError(unknown("grid key", key, [k for k in valid if k not in RESERVED]))
        if not isinstance(values, list):
            raise TTATypeError(
                f"grid key {key!r} must map to a list of values, got {values!r}; "
                f"write e.g. {key}: [{value_text(values)}]"
            )
        if not values:
            raise TTAError(f"grid key {key!r} has an empty list of values; give at least one")
        seen = [canonical(v) for v in values]
        dups = sorted({s for s in seen if seen.count(s) > 1})
        if dups:
            raise TTAError(f"grid key {key!r} lists the value {dups[0]} more than once")
        out[key] = list(values)
    return out


def _check_exclude(exclude: Any, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The exclusions as a list; each must name grid keys and values the grid has."""
    if exclude is None:
        return []
    if not isinstance(exclude, list):
        raise TTATypeError(
            f"'exclude' must be a list of partial combinations, got {type(exclude).__name__}"
        )
    out = []
    for i, combo in enumerate(exclude):
        if not isinstance(combo, Mapping) or not combo:
            raise TTATypeError(
                f"exclude[{i}] must be a non-empty mapping of grid keys to values, got {combo!r}"
            )
        for key, value in combo.items():
            if key not in grid:
                raise TTAError(
                    f"exclude[{i}] names {key!r}, which is not a grid key.{did_you_mean(key, grid)}"
                    f" Grid keys: {', '.join(grid)}."
                )
            if canonical(value) not in {canonical(v) for v in grid[key]}:
                raise TTAError(
                    f"exclude[{i}] gives {key}={value!r}, which is not among that grid key's "
                    f"values {grid[key]!r}" + did_you_mean(str(value), [str(v) for v in grid[key]])
                )
        out.append({str(k): v for k, v in combo.items()})
    return out


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part, unless two keys share it."""
    leaf = {k: k.rsplit(".", 1)[-1] for k in keys}
    return {k: (leaf[k] if list(leaf.values()).count(leaf[k]) == 1 else k) for k in keys}


def _cell_ids(grid: dict[str, list[Any]], combos: list[dict[str, Any]]) -> list[str]:
    """``key=value`` pairs joined by commas, keys by their short names. Ids that would clash
    after sanitising get a short hash."""
    names = short_names(list(grid))
    ids = [
        ",".join(f"{_id_part(names[k])}={_id_part(value_text(c[k]))}" for k in grid) for c in combos
    ]
    for i, cid in enumerate(list(ids)):
        if ids.count(cid) > 1:
            ids[i] = f"{cid}-{hashlib.sha1(canonical(combos[i]).encode()).hexdigest()[:8]}"
    return ids


def build_sweep(spec: Mapping[str, Any]) -> Sweep:
    """Validate a sweep (the mapping a sweep file holds) and resolve every cell's config.

    Every cell is checked against the run schema here, before anything runs.
    """
    if not isinstance(spec, Mapping):
        raise TTATypeError(
            f"a sweep must be a mapping (a run config plus 'grid'), got {type(spec).__name__}"
        )
    grid = _check_grid(spec.get("grid"))
    exclude = _check_exclude(spec.get("exclude"), grid)
    base = {k: copy.deepcopy(v) for k, v in spec.items() if k not in SWEEP_KEYS}
    name = str(base.get("name") or "sweep")
    if base.get("output") is not None and (
        not isinstance(base["output"], str) or not base["output"].strip()
    ):
        raise TTAError(
            f"config key 'output' must be a folder path (or null for sweeps/<name>), got "
            f"{base['output']!r}"
        )
    output = Path(os.path.expanduser(base.get("output") or Path("sweeps") / name))
    combos = [{}]
    for key, values in grid.items():
        combos = [{**c, key: v} for c in combos for v in values]
    combos = [
        c
        for c in combos
        if not any(all(canonical(c[k]) == canonical(v) for k, v in e.items()) for e in exclude)
    ]
    if not combos:
        raise TTAError("'exclude' leaves no cell of the grid to run")
    cells = []
    for cid, combo in zip(_cell_ids(grid, combos), combos):
        raw = copy.deepcopy(base)
        for key, value in combo.items():
            set_key(raw, key, value)
        raw["name"], raw["output"] = f"{name}:{cid}", str(output / "cells" / cid)
        try:
            config = resolve_config(raw)
        except (ValueError, TypeError) as err:
            raise type(err)(f"sweep cell {cid!r}: {err}") from err
        cells.append(Cell(cid, combo, config))
    return Sweep(name, output, base, grid, exclude, cells)


def load_sweep(path: PathLike, overrides: tuple[str, ...] | list[str] = ()) -> Sweep:
    """Read a sweep YAML file, apply ``key=value`` overrides (``grid.seed=[1,2]`` works too)."""
    raw = read_yaml(path, "sweep")
    if not isinstance(raw, Mapping):
        raise TTATypeError(
            f"sweep file {str(path)!r} must hold a mapping (a run config plus 'grid'), got a "
            f"{'list' if isinstance(raw, list) else 'single value'}: {raw!r}"
        )
    # Grid keys contain dots, so in ``grid.<dotted key>=value`` the key after "grid." is whole.
    raw = dict(raw)
    rest = []
    for text in overrides:
        if text.startswith("grid.") and "=" in text:
            key, value = split_override(text)
            key = key[len("grid.") :].strip()
            value = parse_value(value, f"override {text!r}")
            grid = raw.get("grid") or {}
            if not isinstance(grid, Mapping):
                raise TTATypeError(
                    f"sweep file {str(path)!r}: 'grid' must be a mapping of dotted config keys to "
                    f"lists of values, got {grid!r}"
                )
            raw["grid"] = {**grid, key: value}
        else:
            rest.append(text)
    return build_sweep(apply_overrides(raw, rest))
