"""Part of a domain: a seeded random subset of rows (``data.num_samples``), or a fixed range
(the held-out context of ``data.context_per_domain``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tta import _runs
from tta.data.domain import Domain


class SubsetDomain(Domain):
    """The rows ``rows`` of a domain (for quick runs on part of a dataset)."""

    def __init__(self, domain: Domain, rows: np.ndarray):
        super().__init__(domain.name, domain.corruption, domain.severity)
        self.inner, self.rows = domain, rows
        self.parallel_read = domain.parallel_read

    def fingerprint(self) -> dict[str, Any]:
        return {
            "rows_sha256": _runs.sha256_arrays(self.rows),
            "of": self.inner.fingerprint(),
        }

    @property
    def labels(self) -> np.ndarray:
        return self.inner.labels[self.rows]

    def _read(self, rows: np.ndarray):
        return self.inner._read(self.rows[rows])


def subset_rows(n_total: int, n: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``n`` row indices, in increasing order (the same for every domain
    of a run, so each corruption shows the same images; releases are often sorted by label, so
    the first n rows would not do)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))
