"""Sweeps: a grid of evaluation runs ("cells"), run one after another or as Ray tasks, merged into
one table with the spread over seeds.

A sweep file is a run config (the ``tta run`` schema) plus two keys:

- ``grid``: dotted config keys mapped to lists of values; the cells are their product.
- ``exclude`` (optional): partial combinations, e.g. ``[{stream.schedule: mixed, seed: 3}]``; a cell
  that matches every key of one entry is left out.

``output`` names the sweep folder (default ``sweeps/<name>``). Cell ``<id>`` is an ordinary run
whose output is ``<output>/cells/<id>``, the id being the cell's grid values as ``key=value`` pairs.
The sweep folder also holds ``sweep.json`` (the plan), ``sweep.csv``, ``sweep.md``, ``sweep.png``
and, when cells failed, ``failures.json``.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import re
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from tta import _runs
from tta._errors import TTAError, TTAFileNotFoundError, TTATypeError, did_you_mean, unknown
from tta._io import (
    LOCK_NAME,
    atomic_write,
    folder_lock,
    read_json,
    remove_temp_files,
    write_json,
    write_text,
)
from tta.config import SCHEMA, apply_overrides, parse_value, read_yaml, resolve_config
from tta.evaluation import evaluate
from tta.plugin_table import plugin_table

PathLike = Union[str, Path]
Progress = Optional[Callable[[str], None]]

RAY_INSTALL = 'pip install "tta[ray]"'
SWEEP_KEYS = ("grid", "exclude")
# Keys the sweep sets for every cell itself.
RESERVED = ("name", "output")
# The finished-run files of a cell, in the order the Ray executor copies them back (results.json
# last: its presence marks a finished cell).
RESULT_FILES = ("config.json", "results.csv", "summary.md", "errors.png", "results.json")


def schema_keys(schema: Mapping[str, Any] = SCHEMA, prefix: str = "") -> list[str]:
    """Every settable config key in dotted form (``stream.batch_size``, ``seed``, ...)."""
    keys = []
    for key, spec in schema.items():
        name = f"{prefix}{key}"
        keys += schema_keys(spec, name + ".") if isinstance(spec, dict) else [name]
    return keys


def get_key(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def value_text(value: Any) -> str:
    """A grid value as people write it: ``0.1``, ``continual``, ``tbn+tent`` for a method list."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "+".join(value_text(v) for v in value)
    if isinstance(value, Mapping):
        return str(value["name"]) if "name" in value else _canonical(value)
    return json.dumps(value)  # numbers, true/false/null


def _id_part(text: str, limit: int = 40) -> str:
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
        return {
            "name": self.name,
            "grid": self.grid,
            "exclude": self.exclude,
            "base": self.base,
            "cells": [{"id": c.id, "values": c.values} for c in self.cells],
        }


def _check_grid(grid: Any) -> dict[str, list[Any]]:
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
        seen = [_canonical(v) for v in values]
        dups = sorted({s for s in seen if seen.count(s) > 1})
        if dups:
            raise TTAError(f"grid key {key!r} lists the value {dups[0]} more than once")
        out[key] = list(values)
    return out


def _check_exclude(exclude: Any, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
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
            if _canonical(value) not in {_canonical(v) for v in grid[key]}:
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
            ids[i] = f"{cid}-{hashlib.sha1(_canonical(combos[i]).encode()).hexdigest()[:8]}"
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
        if not any(all(_canonical(c[k]) == _canonical(v) for k, v in e.items()) for e in exclude)
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
    # Grid keys contain dots, so overrides of ``grid.<dotted key>`` are split by hand.
    raw = dict(raw)
    rest = []
    for text in overrides:
        if text.startswith("grid.") and "=" in text:
            key, _, value = text[len("grid.") :].partition("=")
            value = parse_value(value, f"override {text!r}")
            grid = raw.get("grid") or {}
            if not isinstance(grid, Mapping):
                raise TTATypeError(
                    f"sweep file {str(path)!r}: 'grid' must be a mapping of dotted config keys to "
                    f"lists of values, got {grid!r}"
                )
            raw["grid"] = {**grid, key.strip(): value}
        else:
            rest.append(text)
    return build_sweep(apply_overrides(raw, rest))


# ----------------------------------------------------------------------------------------------
# Running cells


def is_finished(cell: Cell) -> bool:
    """results.json is present, was produced by exactly this cell's config, and the recorded
    input files (checkpoint, data) and tta version are unchanged."""
    path = cell.output / "results.json"
    if not path.is_file():
        return False
    try:
        saved = read_json(path)
    except (OSError, ValueError):
        return False
    return (
        isinstance(saved, Mapping)
        and saved.get("config") == cell.config
        and not _runs.stale_files(cell.output)
    )


def stale_reason(cell: Cell) -> Optional[str]:
    """Why a cell folder holds results that are not this cell's (None when they are, or when
    it holds none): another config, a damaged config.json, or changed input files."""
    saved = cell.output / "config.json"
    if not saved.is_file():
        return None
    try:
        old = read_json(saved)
    except (OSError, ValueError):
        return "config.json is damaged"
    if old != cell.config:
        if not isinstance(old, Mapping):
            return "config.json is damaged"
        diff = sorted(k for k in set(old) | set(cell.config) if old.get(k) != cell.config.get(k))
        return f"differs in {', '.join(diff)}"
    changed = _runs.stale_files(cell.output)
    return "; ".join(changed) if changed else None


def _stale(cell: Cell) -> bool:
    return stale_reason(cell) is not None


def _evaluate_cell(config: dict[str, Any], threads: Optional[int], force: bool) -> float:
    """Run one cell in this process with ``threads`` torch threads; return its seconds."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        evaluate(config, force=force)
    finally:
        torch.set_num_threads(before)
    return time.perf_counter() - start


def _cell_files(out: Path) -> dict[str, bytes]:
    names = [
        p
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp") and p.name != LOCK_NAME
    ]
    rel = [p.relative_to(out).as_posix() for p in names]
    order = sorted(
        range(len(rel)), key=lambda i: (rel[i] in RESULT_FILES, rel[i] == "results.json")
    )
    return {rel[i]: names[i].read_bytes() for i in order}


def ray_cell_task(
    config: dict[str, Any], cwd: str, threads: Optional[int], force: bool
) -> dict[str, Any]:
    """Body of a Ray task: run the cell where the task landed and send its files back, so the
    sweep folder is complete even when the worker's disk is not the driver's."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    seconds = _evaluate_cell(config, threads, force)
    files = _cell_files(Path(config["output"]))
    return {"seconds": seconds, "files": files, "host": socket.gethostname(), "pid": os.getpid()}


def _store_files(out: Path, files: dict[str, bytes]) -> None:
    """Write files sent back by a worker (results.json last), holding the cell's lock; identical
    files are left alone."""
    with folder_lock(out, "cell folder"):
        for rel, data in files.items():
            path = out / rel
            if path.is_file() and path.read_bytes() == data:
                continue
            atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _run_local(
    cells: list[Cell],
    retries: int,
    threads: Optional[int],
    force: bool,
    record: Callable[..., None],
) -> None:
    for cell in cells:
        errors: list[str] = []
        for attempt in range(1, retries + 2):
            try:
                seconds = _evaluate_cell(cell.config, threads, force and attempt == 1)
            except TTAError as err:  # a config, data or model error: a retry cannot succeed
                errors.append(_describe(err))
                record(cell, None, errors, attempt, traceback.format_exc(), final=True)
                break
            except Exception as err:  # noqa: BLE001  (any failure of a cell is recorded)
                errors.append(_describe(err))
                record(cell, None, errors, attempt, traceback.format_exc(), final=attempt > retries)
            else:
                record(cell, seconds, errors, attempt, None, final=True)
                break


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise TTAError(
            f"the ray executor needs Ray, which is not installed; install it with: {RAY_INSTALL}"
        ) from err
    return ray


def _run_ray(
    cells: list[Cell],
    retries: int,
    threads: Optional[int],
    force: bool,
    record: Callable[..., None],
    address: Optional[str],
    cpus_per_run: float,
    gpus_per_run: float,
    progress: Progress,
) -> None:
    ray = import_ray()
    from ray.exceptions import RayError, RayTaskError

    started = False
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()
        started = True
    try:
        available = ray.cluster_resources()
        for res, want in (("CPU", cpus_per_run), ("GPU", gpus_per_run)):
            have = available.get(res, 0)
            if want and have < want:
                msg = (
                    f"each cell asks for {want:g} {res} but the Ray cluster has {have:g} "
                    f"(CPU {available.get('CPU', 0):g}, GPU {available.get('GPU', 0):g})"
                )
                if address is None:
                    raise TTAError(msg + "; lower --cpus-per-run/--gpus-per-run")
                if progress:  # an autoscaling cluster may still add nodes
                    progress(f"warning: {msg}; cells wait until such a node joins")
        # Ray's own retries (max_retries) cover lost workers and out-of-memory kills; exceptions
        # raised by the cell are retried below, a bounded number of times.
        task = ray.remote(
            num_cpus=cpus_per_run,
            num_gpus=gpus_per_run,
            max_retries=retries,
            retry_exceptions=False,
        )(ray_cell_task)
        cwd = os.getcwd()
        pending: dict[Any, tuple[Cell, int]] = {}
        errors: dict[str, list[str]] = {c.id: [] for c in cells}

        def submit(cell: Cell, attempt: int) -> None:
            ref = task.remote(cell.config, cwd, threads, force and attempt == 1)
            pending[ref] = (cell, attempt)

        for cell in cells:
            submit(cell, 1)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell, attempt = pending.pop(ref)
            try:
                out = ray.get(ref)
            except RayTaskError as err:
                cause = getattr(err, "cause", None)
                errors[cell.id].append(_describe(cause) if cause is not None else _describe(err))
                # A config, data or model error (TTAError) cannot succeed on a retry.
                final = attempt > retries or isinstance(cause, TTAError)
                record(cell, None, errors[cell.id], attempt, str(err), final=final)
                if not final:
                    submit(cell, attempt + 1)
            except RayError as err:  # worker or node lost beyond Ray's retries, OOM kill, ...
                errors[cell.id].append(_describe(err))
                record(cell, None, errors[cell.id], attempt, str(err), final=True)
            else:
                _store_files(cell.output, out["files"])
                record(cell, out["seconds"], errors[cell.id], attempt, None, final=True)
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    sweep: Union[Sweep, Mapping[str, Any], PathLike],
    executor: str = "local",
    *,
    address: Optional[str] = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    retries: int = 1,
    threads: Optional[int] = None,
    force: bool = False,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run every unfinished cell, then merge all finished cells (see ``collect``).

    executor: ``local`` (one cell after another in this process) or ``ray`` (one Ray task per
        cell, ``num_cpus=cpus_per_run``, ``num_gpus=gpus_per_run``; ``ray.init(address)`` when an
        address is given, else a Ray instance on this machine unless one is already initialised).
    retries: how many times a failing cell is run again before it is reported as failed.
    threads: torch threads inside each cell (default: torch's own for ``local``,
        ``cpus_per_run`` for ``ray``).
    force: rerun every cell from scratch; otherwise finished cells are skipped, half-finished ones
        resume, and a cell folder holding another config's results is an error.

    Returns ``{"ran", "skipped", "failed", "seconds", "wall_seconds", "summary"}``.
    """
    if not isinstance(sweep, Sweep):
        sweep = build_sweep(sweep) if isinstance(sweep, Mapping) else load_sweep(sweep)
    if executor not in ("local", "ray"):
        raise TTAError(unknown("executor", executor, ["local", "ray"]))
    if executor == "local" and (address is not None or gpus_per_run):
        raise TTAError("--address and --gpus-per-run need --executor ray")
    if retries < 0:
        raise TTAError(f"--retries must be >= 0, got {retries}")
    if threads is not None and threads < 1:
        raise TTAError(f"--threads must be >= 1, got {threads}")
    if executor == "ray":
        import_ray()  # fail before any work when Ray is missing
        if threads is None:
            threads = max(1, int(cpus_per_run))
    if not force:
        stale = [(c.id, why) for c in sweep.cells if (why := stale_reason(c))]
        if stale:
            shown = ", ".join(f"{cid} ({why})" for cid, why in stale)
            raise TTAError(
                f"cell folder(s) {shown} under {str(sweep.output / 'cells')!r} hold results of a "
                "different config or other inputs (the sweep file, model or data changed); rerun "
                "with --force to recompute them, or set another output"
            )
    _runs.check_output_path(sweep.output)
    if not _runs.writable(sweep.output):
        raise TTAError(
            f"sweep folder {str(sweep.output)!r} is not writable; make it writable or set another "
            "output"
        )
    with folder_lock(sweep.output, "sweep folder"):
        return _run_cells(
            sweep, executor, address, cpus_per_run, gpus_per_run, retries, threads, force, progress
        )


def _run_cells(
    sweep: Sweep,
    executor: str,
    address: Optional[str],
    cpus_per_run: float,
    gpus_per_run: float,
    retries: int,
    threads: Optional[int],
    force: bool,
    progress: Progress,
) -> dict[str, Any]:
    remove_temp_files(sweep.output, recursive=False)  # left by a killed sweep
    write_json(sweep.output / "sweep.json", sweep.plan())
    todo = sweep.cells if force else [c for c in sweep.cells if not is_finished(c)]
    skipped = [c.id for c in sweep.cells if c not in todo]
    say = progress or (lambda _msg: None)
    say(
        f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(skipped)} already finished, "
        f"{len(todo)} to run ({executor})"
    )
    ran: list[str] = []
    seconds: dict[str, float] = {}
    failed: dict[str, dict[str, Any]] = {}
    failures_path = sweep.output / "failures.json"

    def record(cell, secs, errors, attempt, trace, final) -> None:
        done = len(ran) + len(failed) + (1 if final else 0)
        if secs is not None:
            ran.append(cell.id)
            seconds[cell.id] = secs
            say(f"[{done}/{len(todo)}] {cell.id}: done in {secs:.1f} s")
        elif not final:
            say(f"{cell.id}: attempt {attempt} failed ({errors[-1]}); retrying")
        else:
            failed[cell.id] = {
                "values": cell.values,
                "attempts": attempt,
                "errors": list(errors),
                "traceback": trace,
            }
            write_json(failures_path, failed)
            say(f"[{done}/{len(todo)}] {cell.id}: FAILED after {attempt} attempt(s): {errors[-1]}")

    start = time.perf_counter()
    if executor == "local":
        _run_local(todo, retries, threads, force, record)
    else:
        _run_ray(
            todo, retries, threads, force, record, address, cpus_per_run, gpus_per_run, progress
        )
    wall = time.perf_counter() - start
    if not failed:
        failures_path.unlink(missing_ok=True)
    summary = collect(sweep.output)
    return {
        "output": str(sweep.output),
        "ran": ran,
        "skipped": skipped,
        "failed": failed,
        "seconds": seconds,
        "wall_seconds": wall,
        "summary": summary,
    }


# ----------------------------------------------------------------------------------------------
# Merging finished cells


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and key != "methods":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _canonical(value)
    return out


def _csv_value(value: Any) -> Any:
    return (
        value
        if isinstance(value, (str, int, float)) and not isinstance(value, bool)
        else (_canonical(value))
    )


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


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

    rows = []
    for cid, res in results.items():
        for run in _seed_runs(res):
            source = run["methods"][0]["errors"]
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
                std=_std(entry["errors"]),
                delta_mean=float(np.mean(entry["deltas"])),
                delta_std=_std(entry["deltas"]),
            )
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
    write_text(root / "sweep.csv", _sweep_csv(rows, csv_keys))
    write_text(root / "sweep.md", sweep_markdown(merged, results, plan))
    plot_sweep(merged, root / "sweep.png")
    return merged


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    """A config's value for a dotted key; None where it has none (``seed`` of a ``seeds`` run)."""
    try:
        return get_key(config, dotted)
    except (KeyError, TypeError):
        return None


def _seed_runs(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A cell's runs, one per seed: the ``per_seed`` entries of a ``seeds`` run, else the run."""
    return list(res["per_seed"]) if "per_seed" in res else [res]


def _sweep_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    head = ["cell", *keys, "method", "domain", "error", "source_error", "delta_vs_source"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*head, "samples"])
    for r in rows:
        writer.writerow(
            [
                *(
                    f"{r[h]:.4f}" if isinstance(r[h], float) and h not in keys else r[h]
                    for h in head
                ),
                r["samples"],
            ]
        )
    return buf.getvalue()


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def sweep_markdown(
    merged: dict[str, Any], results: dict[str, Any], plan: Optional[dict[str, Any]]
) -> str:
    """Methods × settings table (mean ± std over seeds, Δ vs source), cells, failures."""
    settings, methods = merged["settings"], merged["methods"]
    seeded = merged.get("seeded", "seed" in merged["grid_keys"])
    lines = [f"# {merged['name']}: sweep of {len(results) + len(merged['failed'])} cells", ""]
    if plan:
        grid = "; ".join(
            f"{k} ∈ {{{', '.join(value_text(v) for v in vs)}}}" for k, vs in plan["grid"].items()
        )
        lines += [
            f"Grid: {_md(grid)}."
            + (f" Excluded: {_md(_canonical(plan['exclude']))}." if plan["exclude"] else ""),
            "",
        ]
    lines += [
        f"Cells: {len(results)} finished, {len(merged['failed'])} failed, "
        f"{len(merged['missing'])} not run.",
        "",
        "## Mean online error (%) over domains" + (": mean ± std over seeds" if seeded else ""),
        "",
        "Each entry: the method's error averaged over the domains"
        + (
            ", then mean ± sample standard deviation (n − 1) over the seeds of the setting"
            if seeded
            else ""
        )
        + "; in brackets the difference to `source` on the identical streams (negative = "
        "adaptation helps).",
        "",
    ]
    if settings:
        head = ["method"]
        for label, group in settings.items():
            n = group.get("seeds", len(group["cells"]))
            head.append(_md(label) + (f" ({n} seed{'s' if n != 1 else ''})" if seeded else ""))
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in methods:
            row = [_md(method)]
            for group in settings.values():
                e = group["methods"].get(method)
                if e is None:
                    row.append("-")
                    continue
                text = f"{e['mean']:.1f}" + (f" ± {e['std']:.1f}" if e["n"] > 1 else "")
                if method != "source":
                    text += f" ({e['delta_mean']:+.1f})"
                if e["n"] < group.get("seeds", len(group["cells"])):
                    text += f" [n={e['n']}]"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    tables = {label: plugin_table(g.get("runs", [])) for label, g in settings.items()}
    if any(tables.values()):
        lines += [
            "## Plug-in table: each method with its own norm and with another norm underneath",
            "",
            "The layout of the UnMix-TNS paper: mean online error (%) over domains, mean ± std "
            "over seeds; Δ = (other norm − own norm), paired by seed (negative = the other norm "
            "helps).",
            "",
        ]
        for label, table in tables.items():
            if table:
                lines += [f"### {_md(label)}", "", table, ""]
    lines += ["## Cells", "", "| cell | status | " + " | ".join(_md(m) for m in methods) + " |"]
    lines.append("|" + "---|" * (len(methods) + 2))
    for cid, res in results.items():
        errs = {
            m["label"]: f"{m['mean_error']:.1f}"
            + (f" ± {m['mean_error_std']:.1f}" if "per_seed" in res else "")
            for m in res["methods"]
        }
        lines.append(
            f"| {cid} | done ({res['wall_seconds']:.1f} s) | "
            + " | ".join(errs.get(m, "-") for m in methods)
            + " |"
        )
    for cid in merged["failed"]:
        lines.append(f"| {cid} | FAILED | " + " | ".join("-" for _ in methods) + " |")
    for cid in merged["missing"]:
        lines.append(f"| {cid} | not run | " + " | ".join("-" for _ in methods) + " |")
    lines.append("")
    if merged["failed"]:
        lines += [
            "## Failed cells",
            "",
            "Each was tried the number of times shown and left without results; rerun the sweep "
            "to try again (finished cells are kept). Details: failures.json.",
            "",
            "| cell | attempts | last error |",
            "|---|---|---|",
        ]
        for cid, f in merged["failed"].items():
            lines.append(f"| {cid} | {f['attempts']} | {_md(f['errors'][-1])} |")
        lines.append("")
    return "\n".join(lines)


def plot_sweep(merged: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per setting, one bar per method (mean error, std over seeds as
    error bars); the ``source`` bar is hatched grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, methods = merged["settings"], merged["methods"]
    labels = list(settings)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.2 * len(labels) * max(1, len(methods)) ** 0.5 + 3), 4.5)
    )
    for j, method in enumerate(methods):
        xs, ys, es = [], [], []
        for i, label in enumerate(labels):
            e = settings[label]["methods"].get(method)
            if e is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(e["mean"])
                es.append(e["std"])
        style = {"color": "0.7", "hatch": "//", "edgecolor": "0.3"} if method == "source" else {}
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=method, **style)
    ax.set_xticks(range(len(labels)), [lab.replace(", ", "\n") for lab in labels], fontsize=7)
    ax.set_ylabel("mean online error (%)")
    ax.set_title(f"{merged['name']}: error per setting (bars: std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    if methods:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
