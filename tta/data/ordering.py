"""Sample orders for a stream: i.i.d. shuffle, label-sorted, and Dirichlet label-correlated.

The Dirichlet procedure is the one of NOTE (Gong et al., NeurIPS 2022), reused by UnMix-TNS
(Tomar et al., ICLR 2024) and common TTA benchmark code; docs/algorithms.md §4 gives it exactly.
Every draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tta._errors import TTAError, unknown

ORDERS = ("iid", "dirichlet", "sorted")

#: Default minimum number of samples in every Dirichlet chunk (the reference code's value).
MIN_CHUNK = 10
#: Default number of Dirichlet tries before giving up.
MAX_TRIES = 1000


def check_delta(delta: float) -> float:
    """``delta`` as a float, or a ValueError when it is negative or not finite."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise TTAError(f"delta must be a number >= 0, got {delta!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise TTAError(
            f"delta must be a finite number >= 0 (0 sorts by label, small values are strongly "
            f"label-correlated, large values approach i.i.d.), got {delta!r}."
        )
    return value


def _check_label_array(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TTAError(
            f"labels must be a 1-D integer array, got dtype {arr.dtype} and shape {arr.shape}."
        )
    return arr


def iid_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)``."""
    return rng.permutation(int(n)).astype(np.int64)


def sorted_order(labels: np.ndarray) -> np.ndarray:
    """Indices sorted by label; ties keep their original order (delta = 0 in docs/algorithms.md §4)."""
    return np.argsort(_check_label_array(labels), kind="stable").astype(np.int64)


def dirichlet_order(
    labels: np.ndarray,
    delta: float,
    rng: np.random.Generator,
    min_chunk: int = MIN_CHUNK,
    max_tries: int = MAX_TRIES,
) -> np.ndarray:
    """A label-correlated permutation of ``range(len(labels))`` (docs/algorithms.md §4).

    With N samples and K distinct classes, K chunks are filled class by class: the class's indices
    are shuffled, p ~ Dirichlet(delta * 1_K) is drawn, p_j is zeroed for every chunk already holding
    >= N/K samples, p is renormalised and the shuffled indices are cut at floor(cumsum(p) * n_class)
    with piece j appended to chunk j. This is repeated until every chunk holds at least
    ``min_chunk`` samples (at most ``max_tries`` times, then a RuntimeError). The output lists the
    chunks in order; inside each chunk the classes come in a random order, each class contiguous.
    ``delta = 0`` returns the label-sorted order.
    """
    labels = _check_label_array(labels)
    delta = check_delta(delta)
    if delta == 0:
        return sorted_order(labels)
    n = len(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    k = len(classes)
    if n < min_chunk * k:
        raise TTAError(
            f"a Dirichlet order of {n} samples in {k} classes cannot give each of the {k} chunks "
            f"at least {min_chunk} samples (needs >= {min_chunk * k}); use more samples, "
            "order='iid' or order='sorted'."
        )
    by_label = np.argsort(inverse, kind="stable")
    class_start = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=k))))
    cap = n / k
    alpha = np.full(k, delta)
    for _ in range(max_tries):
        split = _try_split(by_label, class_start, alpha, cap, rng)
        if split is not None and split[2].min() >= min_chunk:
            break
    else:
        raise RuntimeError(
            f"the Dirichlet split (delta={delta}, {k} classes, {n} samples) left a chunk with "
            f"fewer than {min_chunk} samples in all {max_tries} tries; raise delta or max_tries, "
            "or use order='sorted' for the fully label-sorted stream."
        )
    shuffled, chunk_of, _ = split
    # Inside every chunk the classes come in a random order: rank[j, c] is class c's place in j.
    rank = np.empty((k, k), dtype=np.int64)
    for j in range(k):
        rank[j, rng.permutation(k)] = np.arange(k)
    class_of = inverse[shuffled]
    position = np.arange(n)  # keeps each piece's shuffled order within its (chunk, class) run
    order = np.lexsort((position, rank[chunk_of, class_of], chunk_of))
    return shuffled[order].astype(np.int64)


def _try_split(
    by_label: np.ndarray,
    class_start: np.ndarray,
    alpha: np.ndarray,
    cap: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One pass over the classes; returns (shuffled indices, chunk of each, chunk sizes).

    Returns None when every open chunk got zero mass (p underflows at tiny delta), which the
    caller counts as a failed try.
    """
    k = len(alpha)
    sizes = np.zeros(k, dtype=np.int64)
    shuffled = np.empty_like(by_label)
    chunk_of = np.empty(len(by_label), dtype=np.int64)
    for c in range(k):
        lo, hi = class_start[c], class_start[c + 1]
        shuffled[lo:hi] = rng.permutation(by_label[lo:hi])
        p = rng.dirichlet(alpha)
        p = p * (sizes < cap)
        total = p.sum()
        if not total > 0:
            return None
        cuts = (np.cumsum(p / total) * (hi - lo)).astype(np.int64)[:-1]
        # Sample i of this class goes to the chunk whose cut range holds i.
        chunk_of[lo:hi] = np.searchsorted(cuts, np.arange(hi - lo), side="right")
        sizes += np.bincount(chunk_of[lo:hi], minlength=k)
    return shuffled, chunk_of, sizes


def order_indices(
    labels: np.ndarray, order: str, delta: float, rng: np.random.Generator
) -> np.ndarray:
    """Dispatch to the ordering named ``order`` (one of ``ORDERS``)."""
    if order == "iid":
        return iid_order(len(labels), rng)
    if order == "sorted":
        return sorted_order(labels)
    if order == "dirichlet":
        return dirichlet_order(labels, delta, rng)
    raise TTAError(unknown("order", order, ORDERS))


def label_stats(labels: Sequence[np.ndarray], bounds: Sequence[np.ndarray]) -> dict[str, float]:
    """Label correlation of segments given their labels in order and batch boundaries.

    ``mean_distinct_labels_per_batch``: distinct labels in a batch, averaged over batches.
    ``consecutive_same_label_fraction``: of all pairs of consecutive samples inside a segment, the
    fraction with the same label (about 1/K for i.i.d. over K balanced classes, near 1 when sorted).
    """
    distinct = 0
    batches = 0
    same = 0
    pairs = 0
    for lab, bnd in zip(labels, bounds):
        nb = len(bnd) - 1
        if nb <= 0:
            continue
        batch_id = np.repeat(np.arange(nb), np.diff(bnd))
        distinct += len(np.unique(batch_id * (int(lab.max()) + 1) + lab))
        batches += nb
        same += int(np.count_nonzero(lab[1:] == lab[:-1]))
        pairs += max(len(lab) - 1, 0)
    all_labels = np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)
    n = len(all_labels)
    return {
        "num_batches": batches,
        "num_samples": n,
        "num_classes": len(np.unique(all_labels)),
        "mean_batch_size": n / batches if batches else 0.0,
        "mean_distinct_labels_per_batch": distinct / batches if batches else 0.0,
        "consecutive_same_label_fraction": same / pairs if pairs else 0.0,
    }
