"""Corruption names in the Hendrycks & Dietterich (ICLR 2019) benchmark order, and checks on them.

Defined here (not imported from the ``corruptions`` package) so that reading released data never
depends on the generator code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tta._errors import TTAError, TTATypeError, unknown

#: The 15 benchmark corruptions, in the order results are reported (docs/algorithms.md §5).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

#: The four held-out extras shipped with the release.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

#: Every corruption name the readers accept.
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def check_corruption_names(
    names: Any, where: str = "data.corruptions", groups: Iterable[str] = ()
) -> list[str]:
    """Validate a list of corruption names given by a user; return it as a list of str.

    Refuses a value that is not a list of strings, a non-string entry (``data.corruptions: [1]``),
    an unknown name (with the closest valid one), a repeated name and an empty list. ``where``
    names the setting in messages (``data.corruptions``, ``--corruptions``); ``groups`` are extra
    names accepted besides the corruption names (e.g. ``tta corrupt``'s ``noise``, ``all``).
    """
    groups = list(groups)
    valid = [*groups, *ALL_CORRUPTIONS]
    kind = "option" if where.startswith("-") else "key"
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TTATypeError(
            f"{where} must be a list of corruption names, got {type(names).__name__} {names!r}; "
            f"valid names: {', '.join(valid)}."
        )
    if not names:
        raise TTAError(f"{where} is empty; omit the {kind} for the default set")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TTATypeError(
                f"{where}[{i}] is {name!r} ({type(name).__name__}); expected a corruption name "
                f"(a string) such as {ALL_CORRUPTIONS[0]!r}. Valid: {', '.join(valid)}."
            )
        if name not in valid:
            kind_name = "corruption or group" if groups else "corruption"
            raise TTAError(f"{where}[{i}]: " + unknown(kind_name, name, valid))
    repeated = sorted({n for n in names if names.count(n) > 1}, key=list(names).index)
    if repeated:
        raise TTAError(
            f"{where} lists {', '.join(map(repr, repeated))} more than once: {list(names)}."
        )
    return list(names)


def check_corruptions(corruptions: Iterable[str] | str | None) -> list[str]:
    """Return the requested corruption names (default: the 15 benchmark ones), each validated."""
    if corruptions is None:
        return list(CORRUPTIONS)
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    names = list(corruptions)
    if not names:
        raise TTAError("corruptions is empty; pass None for the 15 benchmark corruptions.")
    return check_corruption_names(names, where="corruptions")


def check_severities(severities: Iterable[int] | int) -> list[int]:
    """Return the requested severities, each an int in 1..5."""
    if isinstance(severities, (int, np.integer)) and not isinstance(severities, bool):
        severities = [severities]
    values = list(severities)
    if not values:
        raise TTAError("severities is empty; valid severities are 1, 2, 3, 4, 5.")
    for s in values:
        is_int = isinstance(s, (int, np.integer)) and not isinstance(s, bool)
        if not is_int or int(s) not in SEVERITIES:
            raise TTAError(f"severity {s!r} is outside 1..5; valid severities are 1, 2, 3, 4, 5.")
    if len(set(values)) != len(values):
        raise TTAError(f"severities lists a value more than once: {values}.")
    return [int(s) for s in values]


def domain_name(corruption: str, severity: int) -> str:
    """Name of one corruption at one severity, e.g. ``"gaussian_noise-5"``."""
    return f"{corruption}-{severity}"


def present_in(order: Sequence[str], found: Iterable[str]) -> list[str]:
    """The names in ``found`` sorted by benchmark order (unknown names last, alphabetically)."""
    found = set(found)
    known = [n for n in order if n in found]
    return known + sorted(found - set(order))
