"""CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019) read from the release layout.

Layout (docs/algorithms.md §5): ``<root>/<corruption>.npy`` holds N x H x W x 3 uint8 images, the five
severities stacked in blocks of N/5 (severity s = rows (s-1)*N/5 .. s*N/5-1), and
``<root>/labels.npy`` holds the N labels. N is 50000 in the release; any N divisible by 5 works.
Files are memory-mapped, so a domain costs only its label array until rows are read.

A folder that ``tta corrupt --severities`` wrote with fewer than five severities is read too: it
holds ``subset_labels.npy`` (so that other readers of the release layout stop instead of misreading
it) and ``manifest.json``, whose ``severities`` list says which severity each block of rows holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from tta._errors import TTAError, TTAFileNotFoundError
from tta.data.arrays import load_npy, user_path
from tta.data.domain import Domain, check_labels
from tta.data.names import (
    ALL_CORRUPTIONS,
    check_corruptions,
    check_severities,
    domain_name,
    present_in,
)

CIFARC_LAYOUT = """expected layout (the CIFAR-10-C / CIFAR-100-C release):
  <root>/labels.npy            N labels (integers), the test labels tiled five times
  <root>/<corruption>.npy      N x H x W x 3 uint8 (32 x 32 in the release), severities 1..5
                               stacked in blocks of N/5 rows (N = 50000 in the release)
or, as tta corrupt --severities writes a subset: subset_labels.npy and manifest.json (whose
"severities" lists the severity of each block) instead of labels.npy"""


class CIFARCDomain(Domain):
    """One corruption at one severity: a row block of a memory-mapped ``<corruption>.npy``."""

    def __init__(self, path: str, corruption: str, severity: int, start: int, labels: np.ndarray):
        super().__init__(domain_name(corruption, severity), corruption, severity)
        self.path = path
        self.start = start
        self._labels = labels
        self._mm: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def images(self) -> np.ndarray:
        """This domain's uint8 (n, H, W, 3) rows as a memory-mapped view (nothing is read)."""
        if self._mm is None:
            self._mm = np.load(self.path, mmap_mode="r")
        return self._mm[self.start : self.start + len(self._labels)]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.images()[rows])

    def __getstate__(self) -> dict[str, Any]:
        # Pickle the path, not the mapped data, so worker processes re-map the file themselves.
        state = self.__dict__.copy()
        state["_mm"] = None
        return state


def CIFARC(
    root: str | os.PathLike[str],
    corruptions: Iterable[str] | str | None = None,
    severities: Iterable[int] | int = (5,),
) -> list[CIFARCDomain]:
    """One domain per (corruption, severity), corruption-major in benchmark order as requested.

    ``corruptions=None`` means the 15 benchmark corruptions; ``severities`` defaults to (5,).
    """
    names = check_corruptions(corruptions)
    sevs = check_severities(severities)
    root = os.fspath(user_path(root))
    if not os.path.isdir(root):
        raise TTAFileNotFoundError(f"CIFAR-C folder {root!r} does not exist.\n{CIFARC_LAYOUT}")
    label_path, held = labels_file(root)
    all_labels = check_labels(load_npy(label_path, mmap=True), None, f"{label_path!r}")
    n = len(all_labels)
    if n == 0 or n % len(held):
        raise TTAError(
            f"{label_path!r} holds {n} labels; the files stack {len(held)} severities, so N must "
            f"be a positive multiple of {len(held)}."
        )
    missing = [s for s in sevs if s not in held]
    if missing:
        raise TTAError(
            f"{root!r} holds severities {', '.join(map(str, held))} only (a subset written by tta "
            f"corrupt --severities, see its manifest.json); asked for {', '.join(map(str, missing))}."
        )
    block = n // len(held)
    domains: list[CIFARCDomain] = []
    for corruption in names:
        path = os.path.join(root, f"{corruption}.npy")
        if not os.path.isfile(path):
            present = present_in(
                ALL_CORRUPTIONS,
                (
                    f[:-4]
                    for f in os.listdir(root)
                    if f.endswith(".npy") and f not in ("labels.npy", "subset_labels.npy")
                ),
            )
            raise TTAFileNotFoundError(
                f"{path!r} is missing; corruptions present in {root!r}: "
                f"{', '.join(present) if present else 'none'}.\n{CIFARC_LAYOUT}"
            )
        _check_images_file(path, n, os.path.basename(label_path))
        for s in sevs:
            start = held.index(s) * block
            labels = all_labels[start : start + block].copy()
            labels.setflags(write=False)
            domains.append(CIFARCDomain(path, corruption, s, start, labels))
    return domains


def labels_file(root: str) -> tuple[str, list[int]]:
    """The labels file of a CIFAR-C folder (``labels.npy``, or ``subset_labels.npy`` for a subset
    of severities) and the severities its blocks hold, in order."""
    label_path = os.path.join(root, "labels.npy")
    if os.path.isfile(label_path):
        return label_path, [1, 2, 3, 4, 5]
    subset_path = os.path.join(root, "subset_labels.npy")
    manifest_path = os.path.join(root, "manifest.json")
    if not os.path.isfile(subset_path):
        raise TTAFileNotFoundError(f"{label_path!r} is missing.\n{CIFARC_LAYOUT}")
    try:
        with open(manifest_path) as f:
            held = json.load(f)["severities"]
        valid = (
            isinstance(held, list)
            and held
            and all(isinstance(s, int) and 1 <= s <= 5 for s in held)
            and held == sorted(set(held))
        )
    except (OSError, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise TTAError(
            f"{root!r} holds subset_labels.npy (a subset of severities written by tta corrupt) "
            f"but {manifest_path!r} is missing or names no valid severities; write the folder "
            f"again.\n{CIFARC_LAYOUT}"
        )
    return subset_path, held


def _check_images_file(path: str, n: int, label_name: str = "labels.npy") -> None:
    """Check a corruption file's dtype and shape from its header (no image data is read)."""
    mm = load_npy(path, mmap=True)
    if mm.dtype != np.uint8 or mm.ndim != 4 or mm.shape[3] != 3:
        raise TTAError(
            f"{path!r} holds {mm.dtype} data of shape {mm.shape}; expected uint8 (N, H, W, 3)."
        )
    if mm.shape[0] != n:
        raise TTAError(
            f"{path!r} holds {mm.shape[0]} images but {label_name} holds {n} labels; they must "
            "match."
        )
