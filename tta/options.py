"""Typed options with defaults, validated once, shared by methods, configs and the CLI."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tta._errors import TTAError, TTATypeError, did_you_mean


@dataclass(frozen=True)
class Option:
    """One named option: its default, expected type, a range check and a one-line doc.

    ``check`` returns an error text ("must be in [0, 1]") or None when the value is fine.
    """

    default: Any
    type: type
    doc: str
    check: Optional[Callable[[Any], Optional[str]]] = None
    nullable: bool = False
    choices: Optional[tuple] = None


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """A check accepting lo <= v <= hi (with open ends where asked)."""

    def check(v: Any) -> Optional[str]:
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if ok_lo and ok_hi:
            return None
        return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    return check


def positive(v: Any) -> Optional[str]:
    return None if v > 0 else "must be > 0"


def at_least_one(v: Any) -> Optional[str]:
    return None if v >= 1 else "must be >= 1"


def _coerce(owner: str, key: str, opt: Option, value: Any) -> Any:
    if value is None and opt.nullable:
        return None
    want = opt.type
    ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if want is tuple and isinstance(value, list):
        value, ok = tuple(value), True
    if not ok:
        kind = want.__name__ + (" or None" if opt.nullable else "")
        raise TTATypeError(
            f"option {key!r} of {owner} must be {kind}, got {value!r} ({type(value).__name__})"
        )
    if opt.choices is not None and value not in opt.choices:
        raise TTAError(
            f"option {key!r} of {owner} must be one of {list(opt.choices)}, got {value!r}."
            f"{did_you_mean(value, opt.choices)}"
        )
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            raise TTAError(f"option {key!r} of {owner} {problem}, got {value!r}")
    if want is float and not math.isfinite(value):
        raise TTAError(f"option {key!r} of {owner} must be a finite number, got {value!r}")
    return value


def resolve(owner: str, schema: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against ``schema``; return every option with defaults filled in."""
    unknown = [k for k in given if k not in schema]
    if unknown:
        key = unknown[0]
        valid = ", ".join(sorted(schema)) or "(none)"
        raise TTATypeError(
            f"unknown option {key!r} for {owner}.{did_you_mean(key, schema)} Valid options: {valid}."
        )
    return {
        key: _coerce(owner, key, opt, given[key]) if key in given else opt.default
        for key, opt in schema.items()
    }
