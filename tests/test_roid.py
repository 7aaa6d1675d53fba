"""ROID (Marsden et al., WACV 2024) against its formulas written out in numpy float64."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tta
import tta.methods.roid  # noqa: F401  (registers "roid")
from tta._errors import TTAError
from tta.methods.roid import (
    ROID,
    prior_correction,
    roid_weights,
    soft_likelihood_ratio,
    symmetric_cross_entropy,
)

sys.path.insert(0, str(Path(__file__).parent))
from _nets import make_net  # noqa: E402

T = 1 / 3


def stream(n: int, b: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(n)]


def identity(self: ROID, x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.fixture
def no_aug(monkeypatch):
    monkeypatch.setattr(ROID, "augment", identity)


def adapt(seed: int = 0, batch_size: int = 16, **options):
    ctx = tta.RunContext(seed=seed, batch_size=batch_size)
    return tta.adapt(make_net(), "roid", context=ctx, **options)


# -- numpy reference of the paper's / authors' formulas ------------------------------------------
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_minmax(v: np.ndarray) -> np.ndarray:
    return (v - v.min()) / (v.max() - v.min())


def np_weights(z: np.ndarray, pbar: np.ndarray, temp: float) -> tuple[np.ndarray, np.ndarray]:
    p = np_softmax(z)
    cos = p @ pbar / (np.linalg.norm(p, axis=1) * np.linalg.norm(pbar))
    div = np_minmax(1 - cos)
    dropped = div < div.mean()
    cert = np_minmax((p * np.log(p)).sum(1))  # −entropy
    w = np.exp(div * cert / temp)
    w[dropped] = 0.0
    return w, dropped


def np_slr(z: np.ndarray) -> np.ndarray:
    p = np.minimum(np_softmax(z), 0.99)
    return -(p * np.log(p / (1 - p) + 1e-5)).sum(1)


def np_sce(z: np.ndarray, z_ref: np.ndarray) -> np.ndarray:
    p, q = np_softmax(z), np_softmax(z_ref)
    return -0.5 * (q * np.log(p)).sum(1) - 0.5 * (p * np.log(q)).sum(1)


def fixed_logits(b: int = 12, c: int = 5, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.5 * torch.randn(b, c, generator=g, dtype=torch.float64)


# -- the mechanisms on fixed inputs --------------------------------------------------------------
def test_weights_and_losses_match_formulas():
    z = fixed_logits()
    pbar = torch.tensor([0.4, 0.1, 0.2, 0.2, 0.1], dtype=torch.float64)
    w, dropped = roid_weights(z, pbar, T)
    w_ref, dropped_ref = np_weights(z.numpy(), pbar.numpy(), T)
    assert dropped.tolist() == dropped_ref.tolist()
    assert 0 < int(dropped.sum()) < len(z)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(soft_likelihood_ratio(z).numpy(), np_slr(z.numpy()), rtol=1e-12)
    z2 = fixed_logits(seed=4)
    np.testing.assert_allclose(
        symmetric_cross_entropy(z2, z).numpy(), np_sce(z2.numpy(), z.numpy()), rtol=1e-12
    )
    # a batch whose scores are all equal: zeros, not NaN (every sample kept, weight 1)
    w, dropped = roid_weights(torch.zeros(4, 5, dtype=torch.float64), pbar, T)
    assert w.tolist() == [1.0] * 4 and not dropped.any()


def test_prior_correction_matches_formula():
    z = fixed_logits(b=6, c=5)
    p = np_softmax(z.numpy())
    prior = p.mean(0)
    smooth = max(1 / 6, 1 / 5) / prior.max()
    ref = z.numpy() * (prior + smooth) / (1 + smooth * 5)
    np.testing.assert_allclose(prior_correction(z).numpy(), ref, rtol=1e-13)


def test_loss_of_the_method_matches_formulas(no_aug):
    """The full loss on a batch: weighted SLR over the kept samples plus the weighted consistency
    (identity view: the kept samples forwarded on their own), both over the stream's batch size."""
    x = stream(1)[0]
    adapted = adapt(batch_size=20)  # the stream's batch size, larger than this batch
    method = adapted.method
    with torch.no_grad():
        z = adapted.model(x)
        pbar = np.full(5, 0.2)
        w, dropped = np_weights(z.numpy(), pbar, T)
        kept = torch.from_numpy(~dropped)
        z_aug = adapted.model(x[kept]).numpy()
        loss = method.loss(z, x)
    k = ~dropped
    ref = (np_slr(z.numpy()) * w)[k].sum() / 20 + (np_sce(z_aug, z.numpy()[k]) * w[k]).sum() / 20
    assert float(loss) == pytest.approx(ref, rel=1e-12)
    # the class-probability average moved once: 0.9·uniform + 0.1·mean p
    ref_pbar = 0.9 * pbar + 0.1 * np_softmax(z.numpy()).mean(0)
    np.testing.assert_allclose(method.class_probs.numpy(), ref_pbar, rtol=1e-13)


def test_probability_average_over_batches(no_aug):
    adapted = adapt(use_prior_correction=False)
    pbar = np.full(5, 0.2)
    for x in stream(3):
        z = adapted(x).numpy()  # the raw logits of the batch's forward
        pbar = 0.9 * pbar + 0.1 * np_softmax(z).mean(0)
    np.testing.assert_allclose(adapted.method.class_probs.numpy(), pbar, rtol=1e-12)


def test_parts_turned_off_reduce_to_simpler_losses(no_aug):
    x = stream(1)[0]
    for consistency in (False, True):
        adapted = adapt(use_weighting=False, use_consistency=consistency)
        with torch.no_grad():
            z = adapted.model(x)
            z_aug = adapted.model(x).numpy()
            loss = float(adapted.method.loss(z, x))
        ref = np_slr(z.numpy()).sum() / 16
        if consistency:
            ref += np_sce(z_aug, z.numpy()).sum() / 16
        assert loss == pytest.approx(ref, rel=1e-12)
        assert adapted.method.class_probs.tolist() == [0.2] * 5  # no weighting: average unused
    # no prior correction: the prediction is the network's output before the update (tbn's own
    # forward runs without gradients, a different kernel: equal up to rounding)
    x = stream(1)[0]
    plain = tta.adapt(make_net(), "tbn")(x)
    raw = adapt(use_prior_correction=False)(x)
    torch.testing.assert_close(raw, plain, rtol=1e-13, atol=1e-13)
    assert torch.equal(adapt()(x), prior_correction(raw))


def test_weight_ensembling_after_one_step(no_aug):
    """θ₁ = m·(θ₀ − Adam's first step) + (1 − m)·θ₀, Adam's first step lr·g/(|g| + ε)."""
    adapted = adapt(momentum_src=0.9, lr=1e-2)
    method = adapted.method
    params = method.trained_parameters()
    start = [p.detach().clone() for p in params]
    grads: list[torch.Tensor] = []
    step = method.optimizer.step

    def logged_step(*a, **k):
        grads.extend(p.grad.detach().clone() for p in params)
        return step(*a, **k)

    method.optimizer.step = logged_step
    adapted(stream(1)[0])
    for p, p0, g in zip(params, start, grads):
        adam = p0 - 1e-2 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), 0.9 * adam + 0.1 * p0, rtol=1e-12, atol=1e-12)
    for i, p0 in enumerate(start):  # the source copy stays the source
        assert torch.equal(getattr(method, f"source_{i}"), p0)
    assert any(not torch.equal(p, p0) for p, p0 in zip(params, start))


def test_trained_parameters_include_layer_and_group_norms():
    net = make_net()
    net.gn = nn.GroupNorm(2, 6).double()
    adapted = tta.adapt(net, "roid")
    names = adapted.method.trainable_names()
    assert names == ["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias", "gn.weight", "gn.bias"]


# -- state ---------------------------------------------------------------------------------------
def test_reset_is_bit_exact():
    xs = stream(4)
    adapted = adapt(seed=3)
    first = [adapted(x) for x in xs]
    adapted.reset()
    again = [adapted(x) for x in xs]
    fresh = adapt(seed=3)
    for a, b, c in zip(first, again, [fresh(x) for x in xs]):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_state_round_trip():
    xs = stream(5)
    a = adapt(seed=1)
    for x in xs[:2]:
        a(x)
    b = adapt(seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.method.class_probs, b.method.class_probs)
    for x in xs[2:]:
        assert torch.equal(a(x), b(x))
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n


def test_seed_determinism():
    xs = stream(3)
    outs = [[m(x) for x in xs] for m in (adapt(seed=5), adapt(seed=5), adapt(seed=6))]
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(outs[0], outs[2]))


@pytest.mark.parametrize("norm", ["unmix-tns", "rbn"])
def test_stateful_norms_run_and_adapt(norm):
    extra = {"num_components": 4} if norm == "unmix-tns" else {}
    adapted = adapt(norm=norm, **extra)
    before = [p.detach().clone() for p in adapted.method.trained_parameters()]
    state = adapted.method.norm_state()
    outs = [adapted(x) for x in stream(3)]
    assert all(torch.isfinite(o).all() for o in outs)
    params = adapted.method.trained_parameters()
    assert any(not torch.equal(p, q) for p, q in zip(params, before))
    assert any(not torch.equal(s, t) for s, t in zip(state, adapted.method.norm_state()))


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0.0}, {"momentum_src": 1.5}, {"momentum_probs": -0.1}, {"use_weighting": 1}],
)
def test_bad_options(options):
    with pytest.raises(TTAError, match=next(iter(options))):
        tta.adapt(make_net(), "roid", **options)
