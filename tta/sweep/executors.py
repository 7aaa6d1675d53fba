"""Sweep executors: how the cells of a sweep run, one after another in this process (local) or
as one Ray task per cell, with bounded retries.

Both report each attempt through a ``record`` callback (see ``runner``), so progress, retries
and failures.json are handled in one place whatever the executor.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from tta._errors import TTAError
from tta._io import LOCK_NAME, atomic_write, folder_lock
from tta.sweep.plan import Cell

Progress = Optional[Callable[[str], None]]

RAY_INSTALL = 'pip install "tta[ray]"'
# The finished-run files of a cell, in the order the Ray executor copies them back (results.json
# last: its presence marks a finished cell).
RESULT_FILES = ("config.json", "results.csv", "summary.md", "errors.png", "results.json")


def _evaluate_cell(config: dict[str, Any], threads: Optional[int], force: bool) -> float:
    """Run one cell in this process with ``threads`` torch threads; return its seconds."""
    # ``evaluate`` is looked up on the package at call time: ``tta.sweep.evaluate`` is the one
    # name callers (and tests) replace to run cells their own way.
    import tta.sweep

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        tta.sweep.evaluate(config, force=force)
    finally:
        torch.set_num_threads(before)
    return time.perf_counter() - start


def _cell_files(out: Path) -> dict[str, bytes]:
    """A cell folder's files (no temp files or lock), results.json last."""
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
    """An error in one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_local(
    cells: list[Cell],
    retries: int,
    threads: Optional[int],
    force: bool,
    record: Callable[..., None],
) -> None:
    """Run the cells one after another in this process; a failing cell is retried ``retries``
    times unless its error is a TTAError (a config, data or model problem)."""
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
    """The ``ray`` module, or a TTAError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise TTAError(
            f"the ray executor needs Ray, which is not installed; install it with: {RAY_INSTALL}"
        ) from err
    return ray


def run_ray(
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
    """Run each cell as a Ray task (``cpus_per_run``/``gpus_per_run`` reserved) and store the
    files it sends back; ``ray.init(address)`` unless Ray is already initialised."""
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
