"""Corruption names in the Hendrycks & Dietterich (ICLR 2019) benchmark order, and checks on them.

Defined here (not imported from the ``corruptions`` package) so that reading released data never
depends on the generator code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from tta._errors import unknown

#: The 15 benchmark corruptions, in the order results are reported (SPEC section 5).
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


def check_corruptions(corruptions: Iterable[str] | str | None) -> list[str]:
    """Return the requested corruption names (default: the 15 benchmark ones), each validated."""
    if corruptions is None:
        return list(CORRUPTIONS)
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    names = list(corruptions)
    if not names:
        raise ValueError("corruptions is empty; pass None for the 15 benchmark corruptions.")
    for name in names:
        if name not in ALL_CORRUPTIONS:
            raise ValueError(unknown("corruption", name, ALL_CORRUPTIONS))
    if len(set(names)) != len(names):
        raise ValueError(f"corruptions lists a name more than once: {names}.")
    return names


def check_severities(severities: Iterable[int] | int) -> list[int]:
    """Return the requested severities, each an int in 1..5."""
    if isinstance(severities, (int, np.integer)) and not isinstance(severities, bool):
        severities = [severities]
    values = list(severities)
    if not values:
        raise ValueError("severities is empty; valid severities are 1, 2, 3, 4, 5.")
    for s in values:
        is_int = isinstance(s, (int, np.integer)) and not isinstance(s, bool)
        if not is_int or int(s) not in SEVERITIES:
            raise ValueError(f"severity {s!r} is outside 1..5; valid severities are 1, 2, 3, 4, 5.")
    if len(set(values)) != len(values):
        raise ValueError(f"severities lists a value more than once: {values}.")
    return [int(s) for s in values]


def domain_name(corruption: str, severity: int) -> str:
    """Name of one corruption at one severity, e.g. ``"gaussian_noise-5"``."""
    return f"{corruption}-{severity}"


def present_in(order: Sequence[str], found: Iterable[str]) -> list[str]:
    """The names in ``found`` sorted by benchmark order (unknown names last, alphabetically)."""
    found = set(found)
    known = [n for n in order if n in found]
    return known + sorted(found - set(order))
