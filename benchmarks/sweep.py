"""Wall time of a sweep on local Ray (2 workers) versus the local executor (one cell at a time).

The grid is 4 equal, CPU-bound cells (the same tiny CIFAR-C-layout data and a randomly initialised
CIFAR ResNet, differing only in ``seed``). Every cell uses ONE torch thread under both executors,
so the comparison measures the parallelism Ray adds and its cost, not thread scheduling inside
torch. Ray's start-up (``ray.init``) is measured separately: it is paid once per sweep, not per
cell. Before the timed Ray sweep, each worker imports torch and tta once (a warm pool), unless
``--cold`` is given. Ray starts its workers at niceness 15 (they yield the CPU to every
ordinary process), which on a shared machine slows the Ray side alone; the benchmark starts them
at niceness 0, like the local executor's process (``--niceness 15`` for Ray's default).

Reported per repeat: local wall time, Ray wall time, their ratio (target >= 1.7 on 2 cores), and
the scheduling overhead per cell: the slot-seconds not spent inside cells,
(wall x workers - sum of in-cell seconds) / cells, plus the round trip of an empty Ray task.

As a control, the same cells also run on a plain pool of worker processes (no Ray): its ratio is
the parallel speed-up the machine allows at that moment. When other programs keep the CPUs busy,
both ratios fall together; Ray's own cost is the gap between them.

    python benchmarks/sweep.py                    # 3 repeats, 4 cells, 2 workers
    python benchmarks/sweep.py --repeats 5 --images 600
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tta.sweep import run_sweep

CORRUPTIONS = ["gaussian_noise", "fog"]


def write_data(root: Path, n: int) -> str:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "labels.npy", np.tile(np.arange(n) % 10, 5).astype(np.uint8))
    for name in CORRUPTIONS:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    return str(root)


def spec(out: Path, root: str, cells: int, model: str) -> dict[str, Any]:
    return {
        "name": "bench",
        "output": str(out),
        "device": "cpu",
        "model": {"spec": model, "num_classes": 10},
        "data": {"source": "cifar-c", "root": root, "corruptions": CORRUPTIONS},
        "stream": {"order": "iid", "batch_size": 50},
        "methods": ["tbn"],
        "grid": {"seed": list(range(cells))},
    }


def _warm(_: Any = None) -> int:
    import os

    import tta.evaluation  # noqa: F401  (imports torch and tta in the worker)

    return os.getpid()


def _noop() -> None:
    return None


def _plain_cell(config: dict[str, Any]) -> float:
    """One cell in a plain worker process (the control), one torch thread."""
    from tta.sweep import _evaluate_cell, build_sweep

    (cell,) = build_sweep(config).cells
    return _evaluate_cell(cell.config, 1, False)


def run_plain(specs: list[dict[str, Any]], pool: Any) -> float:
    start = time.perf_counter()
    list(pool.map(_plain_cell, specs))
    return time.perf_counter() - start


def overhead(wall: float, seconds: dict[str, float], workers: int) -> float:
    return (wall * workers - sum(seconds.values())) / len(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=500, help="images per domain (2 domains)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--cold", action="store_true", help="do not warm the Ray workers up")
    parser.add_argument("--niceness", type=int, default=0, help="Ray worker niceness (Ray: 15)")
    args = parser.parse_args()
    os.environ["RAY_worker_niceness"] = str(args.niceness)  # read by ray.init's raylet

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="tta-sweep-bench-"))
    try:
        root = write_data(tmp / "data", args.images)
        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - start
        warm, noop = ray.remote(num_cpus=1)(_warm), ray.remote(num_cpus=1)(_noop)
        start = time.perf_counter()
        pids = set(ray.get([warm.remote() for _ in range(4 * args.workers)]))
        warm_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(20):
            ray.get(noop.remote())
        roundtrip = (time.perf_counter() - start) / 20
        print(
            f"ray.init: {init_s:.1f} s; worker warm-up (import torch+tta in {len(pids)} "
            f"workers): {warm_s:.1f} s; empty-task round trip: {1e3 * roundtrip:.1f} ms"
        )
        if args.cold:
            ray.shutdown()
        rows = []
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(args.workers, mp_context=ctx)
        list(pool.map(_warm, range(args.workers)))  # import torch and tta in every process
        for r in range(args.repeats):
            out = tmp / f"local{r}"
            t = time.perf_counter()
            loc = run_sweep(spec(out, root, args.cells, args.model), "local", threads=1)
            local_wall = time.perf_counter() - t
            if args.cold and ray.is_initialized():
                ray.shutdown()
            if args.cold:
                ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            out = tmp / f"ray{r}"
            t = time.perf_counter()
            rem = run_sweep(spec(out, root, args.cells, args.model), "ray", threads=1)
            ray_wall = time.perf_counter() - t
            assert not loc["failed"] and not rem["failed"]
            one = spec(tmp / f"plain{r}", root, args.cells, args.model)
            per_cell = [{**one, "grid": {"seed": [seed]}} for seed in one["grid"]["seed"]]
            plain_wall = run_plain(per_cell, pool)
            rows.append(
                {
                    "local": local_wall,
                    "ray": ray_wall,
                    "ratio": local_wall / ray_wall,
                    "plain_ratio": local_wall / plain_wall,
                    "cell_s": statistics.mean(loc["seconds"].values()),
                    "ray_cell_s": statistics.mean(rem["seconds"].values()),
                    "local_overhead": overhead(local_wall, loc["seconds"], 1),
                    "ray_overhead": overhead(ray_wall, rem["seconds"], args.workers),
                }
            )
            row = rows[-1]
            print(
                f"repeat {r + 1}: local {row['local']:.1f} s (cell {row['cell_s']:.2f} s), "
                f"ray {row['ray']:.1f} s (cell {row['ray_cell_s']:.2f} s), ratio "
                f"{row['ratio']:.2f}x (plain processes: {row['plain_ratio']:.2f}x); overhead per "
                f"cell: local {row['local_overhead']:.2f} s, ray {row['ray_overhead']:.2f} s",
                flush=True,
            )
        ratios = [r["ratio"] for r in rows]
        plain = [r["plain_ratio"] for r in rows]
        over = [r["ray_overhead"] for r in rows]
        print(
            f"\n{args.cells} cells, {args.workers} Ray workers, 1 torch thread per cell, "
            f"{'cold' if args.cold else 'warm'} workers at niceness {args.niceness}:\n"
            f"  wall-time ratio local/ray: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 1.7)\n"
            f"  control, plain process pool: median {statistics.median(plain):.2f}x "
            f"(min {min(plain):.2f}, max {max(plain):.2f})\n"
            f"  ray scheduling overhead per cell: median {statistics.median(over):.2f} s "
            f"(min {min(over):.2f}, max {max(over):.2f})"
        )
        pool.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
