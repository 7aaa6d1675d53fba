"""The ``tta`` command line: one sub-command per module in ``tta.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose sub-commands may let options and positionals interleave
    (``tta run cfg.yaml --force key=value``): set ``intermixed = True`` on a sub-parser."""

    intermixed = False
    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self.intermixed or self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tta", description="Test-time adaptation of image classifiers.")
    from tta import __version__

    parser.add_argument("--version", action="version", version=f"tta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a sub-command. A user error (``tta.TTAError``: bad config, file, path, model or data)
    is printed as one line ``tta <command>: error: <message>`` with exit status 1, a warning as
    one line ``tta <command>: warning: <message>``; any other exception is a bug and keeps its
    traceback."""
    from tta._errors import TTAError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"tta {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # warnings as one line each, like errors
            warnings.showwarning = show
            return int(args.func(args) or 0)
    except TTAError as err:
        print(f"tta {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
