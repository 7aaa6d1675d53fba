"""Orderings (i.i.d., sorted, Dirichlet per docs/algorithms.md §4) and stream schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tta.data import (
    ArrayDomain,
    Batch,
    Reset,
    dirichlet_order,
    iid_order,
    label_stats,
    make_stream,
    sorted_order,
)

# ---------------------------------------------------------------- Dirichlet, reference transcription


def _reference_dirichlet(labels, delta, rng, min_chunk=10):
    """docs/algorithms.md §4 written out literally with Python lists, making the same draws in order."""
    n = len(labels)
    classes = sorted(set(labels.tolist()))
    k = len(classes)
    while True:
        chunks = [[] for _ in range(k)]
        pieces = [[None] * k for _ in range(k)]  # pieces[chunk][class]
        for ci, c in enumerate(classes):
            idx = rng.permutation(np.where(labels == c)[0])
            p = rng.dirichlet([delta] * k)
            p = np.array([pj if len(chunks[j]) < n / k else 0.0 for j, pj in enumerate(p)])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for j, piece in enumerate(np.split(idx, cuts)):
                chunks[j].extend(piece.tolist())
                pieces[j][ci] = piece.tolist()
        if min(len(ch) for ch in chunks) >= min_chunk:
            break
    out = []
    for j in range(k):
        for ci in rng.permutation(k):
            out.extend(pieces[j][ci])
    return np.array(out), [len(ch) for ch in chunks]


def _labels(k=5, per=60, seed=3):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k) * 2 + 1, per))


@pytest.mark.parametrize("delta, seed", [(0.1, 0), (0.1, 1), (1.0, 2), (0.01, 3)])
def test_dirichlet_matches_reference_transcription(delta, seed):
    labels = _labels()
    ours = dirichlet_order(labels, delta, np.random.default_rng(seed))
    ref, _ = _reference_dirichlet(labels, delta, np.random.default_rng(seed))
    np.testing.assert_array_equal(ours, ref)


def test_dirichlet_invariants():
    labels = _labels(k=6, per=50)
    order = dirichlet_order(labels, 0.1, np.random.default_rng(7))
    _, sizes = _reference_dirichlet(labels, 0.1, np.random.default_rng(7))
    assert sorted(order.tolist()) == list(range(len(labels)))  # every sample exactly once
    assert min(sizes) >= 10 and sum(sizes) == len(labels)
    # Inside a chunk each class is one contiguous run, so each chunk has at most K label runs.
    ends = np.cumsum(sizes)
    for start, end in zip(np.concatenate(([0], ends[:-1])), ends):
        seq = labels[order[start:end]]
        runs = 1 + np.count_nonzero(seq[1:] != seq[:-1])
        assert runs == len(np.unique(seq))


def test_dirichlet_large_delta_gives_balanced_chunks():
    k, per = 5, 100
    labels = _labels(k=k, per=per)
    order = dirichlet_order(labels, 1e6, np.random.default_rng(0))
    _, sizes = _reference_dirichlet(labels, 1e6, np.random.default_rng(0))
    # p is nearly uniform, so every class is split into K near-equal pieces (up to rounding).
    assert max(sizes) - min(sizes) <= k
    ends = np.cumsum(sizes)
    for start, end in zip(np.concatenate(([0], ends[:-1])), ends):
        counts = np.unique(labels[order[start:end]], return_counts=True)[1]
        assert len(counts) == k and counts.min() >= per // k - 1 and counts.max() <= per // k + 1


def test_delta_zero_sorts_by_label():
    labels = _labels()
    order = dirichlet_order(labels, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(order, sorted_order(labels))
    assert np.all(np.diff(labels[order]) >= 0)
    assert np.all(np.diff(order[labels[order] == labels[order][0]]) > 0)  # stable inside a class


def test_iid_order_is_a_seeded_permutation():
    a = iid_order(50, np.random.default_rng(1))
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, iid_order(50, np.random.default_rng(1)))
    assert not np.array_equal(a, iid_order(50, np.random.default_rng(2)))


def test_dirichlet_errors():
    with pytest.raises(ValueError, match="delta must be a finite number >= 0.*got -0.5"):
        dirichlet_order(_labels(), -0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs >= 50"):
        dirichlet_order(np.repeat(np.arange(5), 4), 0.1, np.random.default_rng(0))
    # 100 classes of 100 at delta 0.01 needs many tries (the first fails for this seed).
    labels = np.repeat(np.arange(100), 100)
    with pytest.raises(RuntimeError, match="fewer than 10 samples in all 2 tries"):
        dirichlet_order(labels, 0.01, np.random.default_rng(0), max_tries=2)


# ---------------------------------------------------------------- streams


def _domain(name, n=200, k=10, tag=0, corruption=None, severity=None, seed=0):
    """uint8 images whose first pixel encodes (row % 256, row // 256, tag)."""
    x = np.zeros((n, 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    x[:, 0, 0, 2] = tag
    labels = np.random.default_rng(seed).permutation(np.arange(n) % k)
    return ArrayDomain(x, labels, name, corruption, severity)


def _decode(batch):
    px = np.rint(batch.x[:, :, 0, 0].numpy() * 255).astype(int)
    return px[:, 0] + 256 * px[:, 1], px[:, 2]  # rows, tags


def _items(stream):
    return [("R" if isinstance(it, Reset) else it.domain) for it in stream]


def test_batches_carry_the_right_images_labels_and_domains():
    doms = [_domain("a", tag=0, seed=1), _domain("b", n=150, tag=1, seed=2)]
    for schedule in ("reset_each_shift", "continual", "mixed"):
        stream = make_stream(doms, "dirichlet", 0.5, schedule, batch_size=32, seed=4)
        seen = {0: [], 1: []}
        for item in stream:
            if isinstance(item, Reset):
                continue
            rows, tags = _decode(item)
            np.testing.assert_array_equal(tags, item.domains.numpy())
            for t in (0, 1):
                m = tags == t
                np.testing.assert_array_equal(item.y.numpy()[m], doms[t].labels[rows[m]])
                seen[t].extend(rows[m].tolist())
            names = {stream.domain_names[t] for t in tags}
            assert item.domain == (names.pop() if len(names) == 1 else "mixed")
            assert item.x.dtype == torch.float32 and item.y.dtype == torch.int64
        assert sorted(seen[0]) == list(range(200)) and sorted(seen[1]) == list(range(150))


def test_reset_each_shift_emits_a_reset_before_every_domain():
    doms = [_domain("a", n=100), _domain("b", n=70), _domain("c", n=64)]
    stream = make_stream(doms, "iid", schedule="reset_each_shift", batch_size=32)
    assert _items(stream) == ["R", "a", "a", "a", "a", "R", "b", "b", "b", "R", "c", "c"]
    segs = stream.segments()
    assert [s.name for s in segs] == ["a", "b", "c"] and all(s.reset_before for s in segs)
    assert [len(s) for s in segs] == [4, 3, 2] and len(stream) == stream.num_batches == 9
    assert [b.x.shape[0] for b in segs[1]] == [32, 32, 6]


def test_continual_has_no_reset_and_batches_do_not_span_domains():
    doms = [_domain("a", n=100), _domain("b", n=70)]
    stream = make_stream(doms, "iid", schedule="continual", batch_size=32)
    assert _items(stream) == ["a"] * 4 + ["b"] * 3
    (seg,) = stream.segments()
    assert seg.name == "continual" and not seg.reset_before


def test_continual_and_reset_each_shift_share_each_domains_order():
    doms = [_domain("a", seed=5), _domain("b", seed=6)]
    cont = [b for b in make_stream(doms, "dirichlet", 0.1, "continual", 16, seed=2)]
    shift = [b for b in make_stream(doms, "dirichlet", 0.1, "reset_each_shift", 16, seed=2)]
    shift = [b for b in shift if isinstance(b, Batch)]
    assert len(cont) == len(shift)
    for p, q in zip(cont, shift):
        torch.testing.assert_close(p.x, q.x, rtol=0, atol=0)
    # A domain's order does not depend on the other domains present.
    alone = list(make_stream([doms[1]], "dirichlet", 0.1, "continual", 16, seed=2))
    torch.testing.assert_close(alone[0].x, cont[len(cont) - len(alone)].x, rtol=0, atol=0)


def test_mixed_pools_every_domain_into_one_segment():
    doms = [_domain(f"d{i}", n=100, tag=i, seed=i) for i in range(4)]
    stream = make_stream(doms, "iid", schedule="mixed", batch_size=64, seed=0)
    (seg,) = stream.segments()
    assert seg.name == "mixed" and not seg.reset_before and len(seg) == 7
    items = list(stream)
    assert not any(isinstance(it, Reset) for it in items)
    assert items[0].domain == "mixed" and len(np.unique(items[0].domains.numpy())) == 4


def test_mixed_dirichlet_orders_the_pooled_labels():
    doms = [_domain(f"d{i}", n=300, tag=i, seed=i) for i in range(3)]
    stream = make_stream(doms, "dirichlet", 0.0, schedule="mixed", batch_size=50)
    labels = stream.segments()[0].labels
    assert np.all(np.diff(labels) >= 0) and len(labels) == 900


def test_gradual_visits_severities_up_and_down_per_corruption():
    doms = [
        _domain(f"{c}-{s}", n=40, tag=10 * i + s, corruption=c, severity=s, seed=s)
        for i, c in enumerate(["fog", "snow"])
        for s in (5, 3, 1, 2, 4)
    ]
    stream = make_stream(doms, "iid", schedule="gradual", batch_size=20, seed=1)
    (seg,) = stream.segments()
    assert seg.name == "gradual" and not seg.reset_before
    names = [b.domain for b in stream][::2]  # two batches per visit
    expected = [f"{c}-{s}" for c in ("fog", "snow") for s in (1, 2, 3, 4, 5, 4, 3, 2, 1)]
    assert names == expected
    batches = list(seg)
    # The two visits of fog-1 cover the same images in different orders.
    first, second = _decode(batches[0])[0], _decode(batches[16])[0]
    assert batches[16].domain == "fog-1" and not np.array_equal(first, second)
    both = np.concatenate([_decode(b)[0] for b in batches[16:18]])
    assert sorted(both.tolist()) == list(range(40))


def test_gradual_needs_all_five_severities():
    doms = [_domain(f"fog-{s}", corruption="fog", severity=s) for s in (1, 2, 3, 5)]
    with pytest.raises(ValueError, match=r"'fog' lacks severities \[4\]"):
        make_stream(doms, schedule="gradual")
    with pytest.raises(ValueError, match="needs domains with a corruption and severity; 'plain'"):
        make_stream([_domain("plain")], schedule="gradual")


def test_segments_are_reiterable_and_independent():
    doms = [_domain("a"), _domain("b", tag=1)]
    stream = make_stream(doms, "dirichlet", 0.1, "reset_each_shift", batch_size=16, seed=9)
    later = stream.segments()[1]
    first_pass = [b.x for b in later]  # without iterating segment 0
    second_pass = [b.x for b in later]
    full = [it.x for it in stream if isinstance(it, Batch)][len(stream.segments()[0]) :]
    for p, q, r in zip(first_pass, second_pass, full):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        torch.testing.assert_close(p, r, rtol=0, atol=0)


def test_same_seed_same_stream_different_seed_different():
    doms = [_domain("a"), _domain("b", tag=1)]

    def rows(seed):
        stream = make_stream(doms, "dirichlet", 0.1, "mixed", batch_size=25, seed=seed)
        return np.concatenate([_decode(b)[0] * 2 + _decode(b)[1] for b in stream])

    np.testing.assert_array_equal(rows(3), rows(3))
    assert not np.array_equal(rows(3), rows(4))


def test_label_stats_exact_on_a_small_stream():
    d = ArrayDomain(np.zeros((6, 2, 2, 3), np.uint8), [2, 0, 1, 0, 1, 0], "s")
    stats = make_stream(d, "sorted", batch_size=4).label_stats()
    # order: labels 0,0,0,1 | 1,2 -> distinct 2 and 2; equal neighbours (0,0),(0,0),(1,1) of 5
    assert stats["mean_distinct_labels_per_batch"] == 2.0
    assert stats["consecutive_same_label_fraction"] == pytest.approx(3 / 5)
    assert (stats["num_batches"], stats["num_samples"], stats["num_classes"]) == (2, 6, 3)
    direct = label_stats([np.array([0, 0, 0, 1, 1, 2])], [np.array([0, 4, 6])])
    assert direct == stats


def test_iid_batches_cover_most_classes_dirichlet_few():
    doms = [_domain("a", n=2000, k=10, seed=1)]
    iid = make_stream(doms, "iid", batch_size=64, seed=0).label_stats()
    nid = make_stream(doms, "dirichlet", 0.1, batch_size=64, seed=0).label_stats()
    srt = make_stream(doms, "sorted", batch_size=64, seed=0).label_stats()
    assert iid["mean_distinct_labels_per_batch"] > 9.5
    assert nid["mean_distinct_labels_per_batch"] < 4
    assert srt["mean_distinct_labels_per_batch"] < 1.5
    assert (
        iid["consecutive_same_label_fraction"] < 0.15 < 0.8 < nid["consecutive_same_label_fraction"]
    )


def test_mixed_batch_of_uint8_and_float_domains():
    a = _domain("a", n=20, tag=0)
    b = ArrayDomain(torch.full((20, 3, 2, 2), 0.5), np.arange(20) % 10, "b")
    stream = make_stream([a, b], "iid", schedule="mixed", batch_size=40)
    (batch,) = list(stream)
    from_b = batch.domains.numpy() == 1
    assert torch.all(batch.x[torch.from_numpy(from_b)] == 0.5)
    assert torch.all(batch.x[torch.from_numpy(~from_b)][:, :, 1, 1] == 0)
    c = ArrayDomain(np.zeros((20, 3, 3, 3), np.uint8), np.arange(20) % 10, "c")
    with pytest.raises(ValueError, match="differ in size"):
        list(make_stream([a, c], "iid", schedule="mixed", batch_size=40))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1, got 0"),
        (dict(delta=-1), ValueError, "delta must be a finite number >= 0"),
        (dict(order="diriclet"), ValueError, "unknown order 'diriclet'. Did you mean 'dirichlet'"),
        (dict(schedule="continous"), ValueError, "Did you mean 'continual'"),
        (dict(seed=-1), ValueError, "seed must be an integer >= 0"),
        (dict(order="dirichlet"), ValueError, "ordering domain 'a': .*needs >= 100"),
    ],
)
def test_make_stream_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_stream([_domain("a", n=50)], **kwargs)


def test_make_stream_rejects_bad_domain_lists():
    with pytest.raises(ValueError, match="at least one domain"):
        make_stream([])
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        make_stream([_domain("a"), _domain("a")])
    with pytest.raises(ValueError, match="named 'mixed'.*rename it"):
        make_stream([_domain("mixed")])
    with pytest.raises(TypeError, match="takes Domain objects.*got ndarray"):
        make_stream([np.zeros(3)])
