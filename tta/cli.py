"""The ``tta`` command line: one sub-command per module in ``tta.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# Each module listed here defines ``register(subparsers)``, which adds its sub-command and sets
# ``func`` (a callable taking the parsed arguments and returning an exit code) as a default.
COMMANDS = [
    "tta.commands.methods",
    "tta.commands.run",
    "tta.commands.demo",
    "tta.commands.train",
    "tta.commands.sweep",
    "tta.commands.corrupt",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tta", description="Test-time adaptation of image classifiers."
    )
    from tta import __version__

    parser.add_argument("--version", action="version", version=f"tta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as err:
        print(f"tta {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
