"""Running a sweep: which cells are finished, stale or still to run; the checks before any
work; progress, retries and failures.json; and the merged tables at the end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Optional, Union

from tta import _runs
from tta._errors import TTAError, unknown
from tta._io import folder_lock, read_json, remove_temp_files, write_json
from tta.sweep.collect import collect
from tta.sweep.executors import Progress, import_ray, run_local, run_ray
from tta.sweep.plan import Cell, PathLike, Sweep, build_sweep, load_sweep


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
    """``run_sweep`` once its checks passed and it holds the sweep folder's lock."""
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

    def record(
        cell: Cell,
        secs: Optional[float],
        errors: list[str],
        attempt: int,
        trace: Optional[str],
        final: bool,
    ) -> None:
        """One attempt's outcome from an executor: done (``secs``), retrying, or failed for good
        (``final``, written to failures.json at once)."""
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
        run_local(todo, retries, threads, force, record)
    else:
        run_ray(
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
