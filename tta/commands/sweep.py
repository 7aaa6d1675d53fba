"""``tta sweep SWEEP.yaml``: run a grid of evaluation runs locally or on Ray, merge the results."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of evaluation runs (locally or on a Ray cluster) and merge them",
        description=(
            "Run every cell of a sweep file (a run config plus 'grid:' and optional 'exclude:') "
            "as an ordinary run in <output>/cells/<cell id>, then merge the finished cells into "
            "sweep.csv, sweep.md (mean ± std over seeds, Δ vs source) and sweep.png. Finished "
            "cells are skipped on rerun; failing cells are retried, then listed in failures.json."
        ),
    )
    parser.add_argument(
        "sweep", nargs="?", help="sweep YAML file (see configs/sweeps/example.yaml)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override keys of the sweep file, e.g. stream.batch_size=32 or grid.seed=[1,2]",
    )
    parser.add_argument(
        "--collect",
        metavar="DIR",
        help="only rebuild sweep.csv/md/png of sweep folder DIR from its finished cells",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one cell after another in this process (default); ray: one Ray task per cell",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: 'auto' (a cluster started with `ray start` on this machine) or "
        "'ray://HOST:10001'; default: start Ray on this machine",
    )
    parser.add_argument(
        "--cpus-per-run", type=float, default=1, help="CPUs Ray reserves per cell (default 1)"
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        default=0,
        help="GPUs Ray reserves per cell (default 0; fractions share a GPU)",
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="reruns of a failing cell before it is reported"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per cell (default: torch's choice locally, --cpus-per-run on Ray)",
    )
    parser.add_argument(
        "--force", action="store_true", help="recompute every cell, discarding finished ones"
    )
    parser.intermixed = True  # options anywhere: tta CMD FILE --force key=value
    parser.set_defaults(func=run)


def _print_summary(merged: dict[str, Any], output: str) -> None:
    print(
        f"{len(merged['cells'])} finished, {len(merged['failed'])} failed, "
        f"{len(merged['missing'])} not run. Merged results in {output}/ "
        "(sweep.csv, sweep.md, sweep.png)"
    )


def run(args: argparse.Namespace) -> int:
    from tta._errors import TTAError
    from tta.sweep import collect, load_sweep, run_sweep

    if args.collect:
        if args.sweep:
            raise TTAError("give either a sweep file or --collect DIR, not both")
        merged = collect(args.collect)
        _print_summary(merged, args.collect)
        return 0
    if not args.sweep:
        raise TTAError("give a sweep file (tta sweep SWEEP.yaml) or --collect DIR")
    sweep = load_sweep(args.sweep, args.overrides)
    report = run_sweep(
        sweep,
        args.executor,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        retries=args.retries,
        threads=args.threads,
        force=args.force,
        progress=lambda msg: print(msg, flush=True),
    )
    _print_summary(report["summary"], report["output"])
    if report["failed"]:
        print(f"{len(report['failed'])} cell(s) failed; see {report['output']}/failures.json")
        return 1
    return 0
