"""``tta run CONFIG [key=value ...]``: score every method against the source baseline."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, Mapping


def schema_help(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One entry per config key of the schema: its dotted name, default and meaning."""
    lines = []
    for key, spec in schema.items():
        name = f"{prefix}{key}"
        if isinstance(spec, Mapping):
            lines += schema_help(spec, name + ".")
            continue
        default = "null" if spec.default is None else repr(spec.default)
        if spec.choices:
            doc = f"{spec.doc} (one of: {', '.join(map(str, spec.choices))})"
        else:
            doc = spec.doc
        text = f"{name} (default {default}): {doc}"
        lines.append(textwrap.fill(text, width=96, initial_indent="  ", subsequent_indent="      "))
    return lines


def register(subparsers: Any) -> None:
    from tta.config import SCHEMA

    parser = subparsers.add_parser(
        "run",
        help="evaluate methods on a stream described by a YAML config",
        description=(
            "Run every method of CONFIG, and the source baseline, on the identical stream; write "
            "results.json, results.csv, summary.md and errors.png to the output folder. Finished "
            "(method, segment) units are kept, so rerunning resumes."
        ),
        epilog=textwrap.fill(
            "config keys (in the YAML file, as key=value overrides, or as a mapping for "
            "tta.evaluate; the methods' own options are listed by `tta methods`):",
            width=96,
        )
        + "\n"
        + "\n".join(schema_help(SCHEMA)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. stream.batch_size=32",
    )
    parser.add_argument("--force", action="store_true", help="discard finished units, start over")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 is fastest on a busy machine",
    )
    parser.intermixed = True  # options anywhere: tta CMD FILE --force key=value
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from tta._errors import TTAError
    from tta.config import load_run_config
    from tta.evaluation import evaluate
    from tta.report import summary_markdown

    if args.threads is not None:
        if args.threads < 1:
            raise TTAError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = load_run_config(args.config, args.overrides)
    results = evaluate(config, force=args.force)
    print(summary_markdown(results))
    print(f"Results in {config.output}/ (results.json, results.csv, summary.md, errors.png)")
    return 0
