"""``tta run CONFIG [key=value ...]``: score every method against the source baseline."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="evaluate methods on a stream described by a YAML config",
        description=(
            "Run every method of CONFIG, and the source baseline, on the identical stream; write "
            "results.json, results.csv, summary.md and errors.png to the output folder. Finished "
            "(method, segment) units are kept, so rerunning resumes."
        ),
    )
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. stream.batch_size=32",
    )
    parser.add_argument("--force", action="store_true", help="discard finished units, start over")
    parser.intermixed = True  # options anywhere: tta CMD FILE --force key=value
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tta.config import load_config
    from tta.evaluation import evaluate
    from tta.report import summary_markdown

    config = load_config(args.config, args.overrides)
    results = evaluate(config, force=args.force)
    print(summary_markdown(results))
    print(f"Results in {config['output']}/ (results.json, results.csv, summary.md, errors.png)")
    return 0
