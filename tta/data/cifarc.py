"""CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019) read from the release layout.

Layout (SPEC section 5): ``<root>/<corruption>.npy`` holds N x H x W x 3 uint8 images, the five
severities stacked in blocks of N/5 (severity s = rows (s-1)*N/5 .. s*N/5-1), and
``<root>/labels.npy`` holds the N labels. N is 50000 in the release; any N divisible by 5 works.
Files are memory-mapped, so a domain costs only its label array until rows are read.
"""

from __future__ import annotations

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
                               stacked in blocks of N/5 rows (N = 50000 in the release)"""


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
    label_path = os.path.join(root, "labels.npy")
    if not os.path.isfile(label_path):
        raise TTAFileNotFoundError(f"{label_path!r} is missing.\n{CIFARC_LAYOUT}")
    all_labels = check_labels(load_npy(label_path, mmap=True), None, f"{label_path!r}")
    n = len(all_labels)
    if n == 0 or n % 5:
        raise TTAError(
            f"{label_path!r} holds {n} labels; CIFAR-C files stack five severities, so N must be "
            "a positive multiple of 5."
        )
    block = n // 5
    domains: list[CIFARCDomain] = []
    for corruption in names:
        path = os.path.join(root, f"{corruption}.npy")
        if not os.path.isfile(path):
            present = present_in(
                ALL_CORRUPTIONS,
                (f[:-4] for f in os.listdir(root) if f.endswith(".npy") and f != "labels.npy"),
            )
            raise TTAFileNotFoundError(
                f"{path!r} is missing; corruptions present in {root!r}: "
                f"{', '.join(present) if present else 'none'}.\n{CIFARC_LAYOUT}"
            )
        _check_images_file(path, n)
        for s in sevs:
            start = (s - 1) * block
            labels = all_labels[start : start + block].copy()
            labels.setflags(write=False)
            domains.append(CIFARCDomain(path, corruption, s, start, labels))
    return domains


def _check_images_file(path: str, n: int) -> None:
    """Check a corruption file's dtype and shape from its header (no image data is read)."""
    mm = load_npy(path, mmap=True)
    if mm.dtype != np.uint8 or mm.ndim != 4 or mm.shape[3] != 3:
        raise TTAError(
            f"{path!r} holds {mm.dtype} data of shape {mm.shape}; expected uint8 (N, H, W, 3)."
        )
    if mm.shape[0] != n:
        raise TTAError(
            f"{path!r} holds {mm.shape[0]} images but labels.npy holds {n} labels; they must match."
        )
