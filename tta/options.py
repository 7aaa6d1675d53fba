"""Typed options with defaults, validated once, shared by methods, configs and the CLI."""

from __future__ import annotations

import copy
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


def non_negative(v: Any) -> Optional[str]:
    return None if v >= 0 else "must be >= 0"


def at_least_one(v: Any) -> Optional[str]:
    return None if v >= 1 else "must be >= 1"


@dataclass(frozen=True)
class Style:
    """How one family of values is checked and its errors are worded.

    ``OPTIONS`` (method and norm options, written in Python) and ``CONFIG`` (run config keys,
    written in YAML or on the command line) differ only in these fields.
    """

    null: str = "None"  # the word for a missing value: "must be float or None"
    show_doc: bool = False  # type errors quote the option's doc: "must be int (test batch size)"
    scalar_to_list: bool = False  # a list-typed value may be one item or a tuple
    sort_valid: bool = True  # unknown-key errors list the valid keys sorted, else in schema order
    unknown_error: type[TTAError] = TTATypeError
    copy_defaults: bool = False  # defaults are deep-copied into the result


OPTIONS = Style()
CONFIG = Style(
    null="null",
    show_doc=True,
    scalar_to_list=True,
    sort_valid=False,
    unknown_error=TTAError,
    copy_defaults=True,
)


def check_value(what: str, opt: Option, value: Any, style: Style = OPTIONS) -> Any:
    """``value`` checked against ``opt`` (type, None, choices, ``check``, finiteness) and
    returned, coerced where allowed: int → float, list → tuple, and with
    ``style.scalar_to_list`` one item or a tuple → list. ``what`` names the value in errors:
    "option 'lr' of method 'tent'", "config key 'stream.delta'"."""
    if value is None and opt.nullable:
        return None
    want = opt.type
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is tuple and isinstance(value, list):
        value = tuple(value)
    if (
        style.scalar_to_list
        and want is list
        and isinstance(value, (tuple, str, int, float))
        and not isinstance(value, bool)
    ):
        value = list(value) if isinstance(value, tuple) else [value]
    if not isinstance(value, want) or (want in (int, float) and isinstance(value, bool)):
        kind = want.__name__ + (f" or {style.null}" if opt.nullable else "")
        doc = f" ({opt.doc})" if style.show_doc else ""
        raise TTATypeError(f"{what} must be {kind}{doc}, got {value!r} ({type(value).__name__})")
    if opt.choices is not None and value not in opt.choices:
        raise TTAError(
            f"{what} must be one of {list(opt.choices)}, got {value!r}."
            f"{did_you_mean(value, opt.choices)}"
        )
    if opt.check is not None and (problem := opt.check(value)):
        raise TTAError(f"{what} {problem}, got {value!r}")
    if want is float and not math.isfinite(value):
        raise TTAError(f"{what} must be a finite number, got {value!r}")
    return value


def check_section(
    schema: Mapping[str, Any],
    given: Mapping[str, Any],
    what: Callable[[str], str],
    unknown: Callable[[str], str],
    valid: str,
    style: Style = OPTIONS,
    section: Optional[Callable[[str, Mapping[str, Any], Any], Any]] = None,
) -> dict[str, Any]:
    """Every key of ``schema`` with its checked value from ``given`` or its default.

    A key ``given`` that is not in the schema is an error, worded "{unknown(key)}. Did you mean
    ...? {valid}: <the valid keys>.". ``what(key)`` names a value in errors. A schema entry that
    is itself a mapping (a config section) is resolved by ``section(key, entry, given value)``.
    """
    for key in given:
        if key not in schema:
            names = ", ".join(sorted(schema) if style.sort_valid else schema) or "(none)"
            raise style.unknown_error(
                f"{unknown(key)}.{did_you_mean(key, schema)} {valid}: {names}."
            )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if isinstance(spec, Mapping):
            assert section is not None, f"{key!r} is a section; pass section="
            out[key] = section(key, spec, given.get(key))
        elif key in given:
            out[key] = check_value(what(key), spec, given[key], style)
        else:
            out[key] = copy.deepcopy(spec.default) if style.copy_defaults else spec.default
    return out


def resolve(owner: str, schema: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against ``schema``; return every option with defaults filled in."""
    return check_section(
        schema,
        given,
        what=lambda key: f"option {key!r} of {owner}",
        unknown=lambda key: f"unknown option {key!r} for {owner}",
        valid="Valid options",
    )
