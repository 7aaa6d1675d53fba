"""``tta methods``: every adaptation method with its options and defaults."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("methods", help="list the adaptation methods and their options")
    parser.set_defaults(func=run)


def describe_methods() -> str:
    """One block per method: name, description, then ``option = default  (doc)`` lines."""
    from tta.registry import METHODS, NORMS

    blocks = []
    for method in [*NORMS.values(), *METHODS.values()]:
        lines = [f"{method.name}: {method.description}"]
        if hasattr(method, "default_norm"):
            lines.append(f"    norm = {method.default_norm!r}  (any norm method above)")
        for key, opt in method.options.items():
            lines.append(f"    {key} = {opt.default!r}  ({opt.doc})")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run(args: argparse.Namespace) -> int:
    print(describe_methods())
    return 0
