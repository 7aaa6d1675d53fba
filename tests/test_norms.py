"""The five norm methods against the formulas of docs/algorithms.md §1, computed naively here in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import tta

# (BatchNorm dimensionality, input shape): BN1d on (B, C) and (B, C, L), BN2d, BN3d.
SHAPES = [
    (1, (8, 5)),
    (1, (4, 5, 7)),
    (2, (4, 5, 6, 3)),
    (3, (3, 5, 2, 3, 4)),
]
SPATIAL_SHAPES = [s for s in SHAPES if len(s[1]) > 2]
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_bn(dim, c, affine=True, g=None, momentum=0.1, eps=1e-5, **kw):
    """A BatchNorm with non-trivial running statistics and affine parameters."""
    g = g or gen(1)
    bn = BN[dim](c, affine=affine, momentum=momentum, eps=eps, **kw)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        if affine:
            bn.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return bn.eval()


def make_input(shape, seed=2):
    """Channels shifted and scaled away from the source statistics."""
    g = gen(seed)
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    scale = (torch.rand(c, generator=g) * 2 + 0.5).view(view)
    shift = torch.randn(c, generator=g).view(view)
    return torch.randn(shape, generator=g) * scale + shift


def bcast(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) or per-sample (B, C) statistics reshaped to broadcast over x."""
    lead = stat.shape if stat.dim() == 2 else (1, stat.shape[0])
    return stat.reshape(lead + (1,) * (x.dim() - 2))


def ref_normalize(x, mean, var, bn):
    """y = γ·(x − μ)/sqrt(σ² + ε) + β in float64."""
    x64 = x.double()
    y = (x64 - bcast(mean.double(), x)) / torch.sqrt(bcast(var.double(), x) + bn.eps)
    if bn.affine:
        y = y * bcast(bn.weight.detach().double(), x) + bcast(bn.bias.detach().double(), x)
    return y


def ref_batch_stats(x):
    """Mean and biased variance per channel over batch and spatial positions."""
    c = x.shape[1]
    flat = x.double().transpose(0, 1).reshape(c, -1)
    mean = flat.mean(1)
    return mean, ((flat - mean[:, None]) ** 2).mean(1)


def ref_instance_stats(x):
    b, c = x.shape[:2]
    flat = x.double().reshape(b, c, -1)
    mean = flat.mean(2)
    return mean, ((flat - mean[..., None]) ** 2).mean(2)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


def wrap(bn, method, **options):
    return tta.adapt(nn.Sequential(bn), method, **options)


# --------------------------------------------------------------------------------------------
# source, tbn, alpha-bn, rbn: output against the formula
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SHAPES)
def test_source_equals_batchnorm_eval_exactly(dim, shape, affine):
    bn = make_bn(dim, shape[1], affine)
    x = make_input(shape)
    y = wrap(bn, "source")(x)
    assert torch.equal(y, bn(x))
    close(y, ref_normalize(x, bn.running_mean, bn.running_var, bn))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SHAPES)
def test_tbn_uses_biased_batch_statistics(dim, shape, affine):
    bn = make_bn(dim, shape[1], affine, eps=1e-3)
    x = make_input(shape)
    adapted = wrap(bn, "tbn")
    before = {k: v.clone() for k, v in adapted.state_dict().items() if torch.is_tensor(v)}
    mean, var = ref_batch_stats(x)
    close(adapted(x), ref_normalize(x, mean, var, bn))
    # tbn changes no state: the source statistics stay untouched
    for k, v in adapted.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("alpha", [0.3, 0.9])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SHAPES)
def test_alpha_bn_is_convex_mix_weighted_on_source(dim, shape, affine, alpha):
    bn = make_bn(dim, shape[1], affine)
    x = make_input(shape)
    mean_t, var_t = ref_batch_stats(x)
    mean = alpha * bn.running_mean.double() + (1 - alpha) * mean_t
    var = alpha * bn.running_var.double() + (1 - alpha) * var_t
    adapted = wrap(bn, "alpha-bn", alpha=alpha)
    close(adapted(x), ref_normalize(x, mean, var, bn))
    close(adapted(x), ref_normalize(x, mean, var, bn))  # no state change between calls


def test_alpha_bn_default_is_0_9_on_source():
    bn = make_bn(2, 5)
    x = make_input((4, 5, 3, 3))
    mean_t, var_t = ref_batch_stats(x)
    mean = 0.9 * bn.running_mean.double() + 0.1 * mean_t
    var = 0.9 * bn.running_var.double() + 0.1 * var_t
    close(wrap(bn, "alpha-bn")(x), ref_normalize(x, mean, var, bn))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SHAPES)
def test_alpha_one_is_source_and_alpha_zero_is_tbn(dim, shape, affine):
    bn = make_bn(dim, shape[1], affine)
    x = make_input(shape)
    assert torch.equal(wrap(bn, "alpha-bn", alpha=1.0)(x), wrap(bn, "source")(x))
    assert torch.equal(wrap(bn, "alpha-bn", alpha=1)(x), bn(x))
    close(wrap(bn, "alpha-bn", alpha=0.0)(x), wrap(bn, "tbn")(x))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SHAPES)
def test_rbn_two_batches_follow_the_recurrence(dim, shape, affine):
    a = 0.2
    bn = make_bn(dim, shape[1], affine)
    x1, x2 = make_input(shape, seed=3), make_input(shape, seed=4) * 1.5 + 0.5
    adapted = wrap(bn, "rbn", momentum=a)
    layer = adapted.model[0]
    mean, var = bn.running_mean.double(), bn.running_var.double()
    for x in (x1, x2):
        mean_t, var_t = ref_batch_stats(x)
        mean = (1 - a) * mean + a * mean_t
        var = (1 - a) * var + a * var_t
        # the output uses the statistics updated with this very batch
        close(adapted(x), ref_normalize(x, mean, var, bn))
        close(layer.running_mean, mean)
        close(layer.running_var, var)
    # the source statistics are kept untouched
    assert torch.equal(layer.source_mean, bn.running_mean)
    assert torch.equal(layer.source_var, bn.running_var)


def test_rbn_default_momentum_is_0_05():
    bn = make_bn(2, 5)
    x = make_input((4, 5, 3, 3))
    mean_t, var_t = ref_batch_stats(x)
    mean = 0.95 * bn.running_mean.double() + 0.05 * mean_t
    var = 0.95 * bn.running_var.double() + 0.05 * var_t
    close(wrap(bn, "rbn")(x), ref_normalize(x, mean, var, bn))


def test_rbn_state_is_detached():
    bn = make_bn(2, 5)
    adapted = wrap(bn, "rbn")
    adapted(make_input((4, 5, 3, 3)))
    layer = adapted.model[0]
    assert not layer.running_mean.requires_grad and layer.running_mean.grad_fn is None
    assert not layer.running_var.requires_grad and layer.running_var.grad_fn is None


# --------------------------------------------------------------------------------------------
# batch size 1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["source", "alpha-bn", "unmix-tns", "tbn", "rbn"])
def test_batch_size_one_spatial(method):
    bn = make_bn(2, 5)
    x = make_input((1, 5, 4, 4))
    y = wrap(bn, method)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_tbn_batch_size_one_is_per_image_statistics():
    bn = make_bn(2, 5)
    x = make_input((1, 5, 4, 4))
    mean, var = ref_instance_stats(x)
    close(wrap(bn, "tbn")(x), ref_normalize(x, mean, var, bn))


def test_tbn_single_value_per_channel_is_a_clear_error():
    with pytest.raises(ValueError, match="more than one value per channel"):
        wrap(make_bn(1, 5), "tbn")(make_input((1, 5)))


# --------------------------------------------------------------------------------------------
# UnMix-TNS
# --------------------------------------------------------------------------------------------


def naive_unmix(x, mu_k, var_k, temperature):
    """docs/algorithms.md §1 steps 1–4 with explicit (B, K, C) tensors: p, μ_b, σ²_b in float64."""
    inst_mean, inst_var = ref_instance_stats(x)
    mu_k, var_k = mu_k.double(), var_k.double()
    dots = (inst_mean[:, None, :] * mu_k[None, :, :]).sum(-1)
    norms = inst_mean.norm(dim=1)[:, None] * mu_k.norm(dim=1)[None, :]
    sim = dots / norms
    p = torch.softmax(sim / temperature, dim=1)  # (B, K)
    pk = p[..., None]  # (B, K, 1)
    mu_hat = (1 - pk) * mu_k[None] + pk * inst_mean[:, None, :]  # (B, K, C)
    var_hat = (1 - pk) * var_k[None] + pk * inst_var[:, None, :]
    mean_b = mu_hat.mean(1)
    var_b = var_hat.mean(1) + (mu_hat**2).mean(1) - mean_b**2
    return p, mean_b, var_b, inst_mean, inst_var


def unmix_layer(adapted):
    return adapted.model[0]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SPATIAL_SHAPES)
def test_unmix_k1_is_instance_norm_plus_affine(dim, shape, affine):
    bn = make_bn(dim, shape[1], affine)
    x = make_input(shape)
    adapted = wrap(bn, "unmix-tns", num_components=1)
    mean, var = ref_instance_stats(x)
    for _ in range(2):  # also after the component has moved
        close(adapted(x), ref_normalize(x, mean, var, bn), tol=2e-5)


@pytest.mark.parametrize("temperature", [0.07, 1.0])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dim,shape", SPATIAL_SHAPES)
def test_unmix_output_equals_naive_mixture(dim, shape, affine, temperature):
    bn = make_bn(dim, shape[1], affine)
    adapted = wrap(bn, "unmix-tns", num_components=3, temperature=temperature, seed=5)
    layer = unmix_layer(adapted)
    for seed in (6, 7):  # second batch: normalised with the components updated by the first
        x = make_input(shape, seed=seed)
        mu_k, var_k = layer.component_mean.clone(), layer.component_var.clone()
        _, mean_b, var_b, _, _ = naive_unmix(x, mu_k, var_k, temperature)
        close(adapted(x), ref_normalize(x, mean_b, var_b, bn), tol=2e-5)


@pytest.mark.parametrize("dim,shape", SPATIAL_SHAPES)
def test_unmix_statistics_recovered_from_output_match_spec(dim, shape):
    """Read μ_b, σ²_b back from a non-affine output and compare with docs/algorithms.md §1 steps 3–4 and with the
    identity μ_b = (μ̃_b + Σ_k (1−p_bk)·μ_k)/K."""
    bn = make_bn(dim, shape[1], affine=False, eps=1e-4)
    k = 4
    adapted = wrap(bn, "unmix-tns", num_components=k, temperature=0.5, seed=3)
    layer = unmix_layer(adapted)
    x = make_input(shape, seed=8)
    mu_k, var_k = layer.component_mean.clone(), layer.component_var.clone()
    y = adapted(x)
    p, mean_b, var_b, inst_mean, inst_var = naive_unmix(x, mu_k, var_k, 0.5)
    # y = (x − μ_b)/s per sample and channel: mean_L(y) = (μ̃ − μ_b)/s, var_L(y) = σ̃²/s²
    y_mean, y_var = ref_instance_stats(y)
    s = torch.sqrt(inst_var / y_var)
    got_mean = inst_mean - s * y_mean
    got_var = s**2 - bn.eps
    close(got_mean, mean_b, tol=1e-4)
    close(got_var, var_b, tol=1e-4)
    identity = (inst_mean + (1 - p) @ mu_k.double()) / k
    close(got_mean, identity, tol=1e-4)
    # p is far from one-hot here, so the identity is a real check
    assert p.max() < 0.9


@pytest.mark.parametrize("dim,shape", SPATIAL_SHAPES)
def test_unmix_sample_independent_of_batch_mates(dim, shape):
    bn = make_bn(dim, shape[1])
    adapted = wrap(bn, "unmix-tns", num_components=4, temperature=0.3)
    adapted(make_input(shape, seed=11))  # a non-initial state
    alone = copy.deepcopy(adapted)
    x = make_input(shape, seed=12)
    y_batch = adapted(x)
    for i in range(shape[0]):
        y_alone = copy.deepcopy(alone)(x[i : i + 1])
        close(y_alone[0], y_batch[i], tol=1e-5)
    # and in a different batch: other batch-mates, same output
    other = make_input(shape, seed=13)
    other[1] = x[1]
    close(copy.deepcopy(alone)(other)[1], y_batch[1], tol=1e-5)


@pytest.mark.parametrize("batch_size_option", [None, 12])
@pytest.mark.parametrize("bn_momentum", [0.3, None])
def test_unmix_component_update_is_spec_step_5(bn_momentum, batch_size_option):
    b, c, k, b_max = 6, 5, 3, 16
    bn = make_bn(2, c, momentum=bn_momentum)
    options = dict(num_components=k, temperature=0.5, max_batch_size=b_max)
    if batch_size_option is not None:
        options["batch_size"] = batch_size_option
    adapted = wrap(bn, "unmix-tns", **options)
    layer = unmix_layer(adapted)
    x = make_input((b, c, 4, 3), seed=14)
    mu_k, var_k = layer.component_mean.clone().double(), layer.component_var.clone().double()
    p, _, _, inst_mean, inst_var = naive_unmix(x, mu_k, var_k, 0.5)
    m = 0.1 if bn_momentum is None else bn_momentum
    stream_b = batch_size_option or b
    lam = 1 - (1 - m) ** (stream_b / b_max)
    new_mu = mu_k.clone()
    new_var = var_k.clone()
    for j in range(k):
        new_mu[j] += lam * sum(p[i, j] * (inst_mean[i] - mu_k[j]) for i in range(b)) / b
        new_var[j] += lam * sum(p[i, j] * (inst_var[i] - var_k[j]) for i in range(b)) / b
    adapted(x)
    close(layer.component_mean, new_mu)
    close(layer.component_var, new_var)
    assert not torch.allclose(layer.component_mean.double(), mu_k)  # it did move


def test_unmix_components_are_detached():
    bn = make_bn(2, 5)
    adapted = wrap(bn, "unmix-tns", num_components=3)
    adapted(make_input((4, 5, 3, 3)))
    layer = unmix_layer(adapted)
    assert layer.component_mean.grad_fn is None and not layer.component_mean.requires_grad
    assert layer.component_var.grad_fn is None and not layer.component_var.requires_grad


def test_unmix_default_has_16_components():
    adapted = wrap(make_bn(2, 5), "unmix-tns")
    assert unmix_layer(adapted).component_mean.shape == (16, 5)
    assert unmix_layer(adapted).component_var.shape == (16, 5)


def test_unmix_initial_components_k1_are_source():
    bn = make_bn(2, 5)
    layer = unmix_layer(wrap(bn, "unmix-tns", num_components=1))
    assert torch.equal(layer.component_mean[0], bn.running_mean)
    assert torch.equal(layer.component_var[0], bn.running_var)


@pytest.mark.parametrize("spread", [0.5, 0.2])
def test_unmix_initial_components_formula(spread):
    """μ_k = μ_s + sqrt(a0·K/(K−1))·σ_s·ε_k with ε ~ N(0, 1); σ²_k = (1−a0)·σ²_s."""
    c, k = 4000, 2
    bn = make_bn(1, c)
    layer = unmix_layer(wrap(bn, "unmix-tns", num_components=k, init_spread=spread, seed=2))
    mu_s, var_s = bn.running_mean.double(), bn.running_var.double()
    close(layer.component_var, ((1 - spread) * var_s).expand(k, -1))
    eps = (layer.component_mean.double() - mu_s) / (math.sqrt(spread * k / (k - 1)) * var_s.sqrt())
    assert abs(eps.mean().item()) < 0.05
    assert abs(eps.std().item() - 1.0) < 0.05
    # noise is independent across components and channels
    assert abs(torch.corrcoef(eps)[0, 1].item()) < 0.05


@pytest.mark.parametrize("k", [2, 4, 256])
def test_unmix_initial_mixture_reproduces_source_on_average(k):
    """The equal-weight mixture of the initial components has mean μ_s and variance σ²_s in
    expectation: averaged over many channels the ratios are 1 (K/(K−1) makes it unbiased)."""
    c = 4000 if k < 256 else 200
    bn = make_bn(1, c)
    layer = unmix_layer(wrap(bn, "unmix-tns", num_components=k, seed=1))
    mu_s, var_s = bn.running_mean.double(), bn.running_var.double()
    mu_k, var_k = layer.component_mean.double(), layer.component_var.double()
    mix_mean = mu_k.mean(0)
    mix_var = var_k.mean(0) + (mu_k**2).mean(0) - mix_mean**2
    z = (mix_mean - mu_s) / var_s.sqrt()
    assert abs(z.mean().item()) < 0.05
    assert abs((mix_var / var_s).mean().item() - 1.0) < 0.05
    if k == 256:  # with many components each channel's mixture is already close
        close(mix_var / var_s, torch.ones_like(var_s), tol=0.35)
        assert (z.abs() < 0.3).all()


@pytest.mark.parametrize("spread", [0.5, 0.2])
@pytest.mark.parametrize("k", [2, 4, 16])
def test_unmix_centered_init_has_exactly_the_source_moments(k, spread):
    """init="centered": per channel Σ_k ε_k = 0 and Σ_k ε_k² = K − 1, so the equal-weight
    mixture has mean_k μ_k = μ_s and (1/K)Σ_k σ²_k + (1/K)Σ_k (μ_k − μ_s)² = σ²_s exactly (checked
    in float64 to 1e-12)."""
    from tta.norms.unmix_tns import initial_components

    g = gen(7)
    mu_s = torch.randn(64, generator=g, dtype=torch.float64)
    var_s = 0.1 + torch.rand(64, generator=g, dtype=torch.float64) * 3
    mu_k, var_k = initial_components(mu_s, var_s, k, spread, gen(3), init="centered")
    assert mu_k.dtype == torch.float64 and mu_k.shape == (k, 64)
    mix_mean = mu_k.mean(0)
    mix_var = var_k.mean(0) + ((mu_k - mix_mean) ** 2).mean(0)
    assert torch.allclose(mix_mean, mu_s, rtol=0, atol=1e-12)
    assert torch.allclose(mix_var, var_s, rtol=1e-12, atol=1e-12)
    close(var_k, ((1 - spread) * var_s).expand(k, -1), tol=1e-15)
    # the noise is the random draw re-centred and rescaled: same signs of deviations' ordering
    rand_k, _ = initial_components(mu_s, var_s, k, spread, gen(3), init="random")
    eps_r, eps_c = rand_k - mu_s, mu_k - mu_s
    assert torch.equal(eps_r.argsort(0), eps_c.argsort(0))


def test_unmix_init_option_in_a_model():
    """Through tta.adapt, in float32: the mixture moments hold to float32 precision in every
    layer; K = 1 gives the source statistics for both inits; an unknown init is refused."""
    bn = make_bn(2, 6)
    net = nn.Sequential(bn, copy.deepcopy(bn))
    a = tta.adapt(net, "unmix-tns", num_components=8, init="centered", seed=3)
    for i in range(2):
        layer = a.model[i]
        mu_k, var_k = layer.component_mean.double(), layer.component_var.double()
        mu_s, var_s = layer.source_mean.double(), layer.source_var.double()
        mix_var = var_k.mean(0) + ((mu_k - mu_k.mean(0)) ** 2).mean(0)
        close(mu_k.mean(0), mu_s, tol=1e-5)
        close(mix_var / var_s, torch.ones_like(var_s), tol=1e-5)
    assert not torch.equal(a.model[0].component_mean, a.model[1].component_mean)
    default = tta.adapt(net, "unmix-tns", num_components=8, seed=3)
    explicit = tta.adapt(net, "unmix-tns", num_components=8, init="random", seed=3)
    assert torch.equal(default.model[0].components, explicit.model[0].components)
    for init in ("random", "centered"):
        one = tta.adapt(net, "unmix-tns", num_components=1, init=init).model[0]
        assert torch.equal(one.component_mean[0], bn.running_mean)
        assert torch.equal(one.component_var[0], bn.running_var)
    with pytest.raises(ValueError, match="'init'.*'random', 'centered'"):
        tta.adapt(net, "unmix-tns", init="centred")


def test_unmix_same_seed_same_components_different_seed_different():
    bn = make_bn(2, 6)
    net = nn.Sequential(bn, copy.deepcopy(bn))
    a = tta.adapt(net, "unmix-tns", num_components=5, seed=3)
    b = tta.adapt(net, "unmix-tns", num_components=5, seed=3)
    c = tta.adapt(net, "unmix-tns", num_components=5, seed=4)
    for i in range(2):
        assert torch.equal(a.model[i].component_mean, b.model[i].component_mean)
        assert torch.equal(a.model[i].component_var, b.model[i].component_var)
        assert not torch.equal(a.model[i].component_mean, c.model[i].component_mean)
    # two layers with identical source statistics still get independent noise
    assert not torch.equal(a.model[0].component_mean, a.model[1].component_mean)
    # the global RNG plays no part
    torch.manual_seed(123)
    d = tta.adapt(net, "unmix-tns", num_components=5, seed=3)
    assert torch.equal(a.model[0].component_mean, d.model[0].component_mean)


@pytest.mark.parametrize("affine", [True, False])
def test_unmix_bn1d_without_length_uses_source_statistics(affine):
    bn = make_bn(1, 5, affine)
    x = make_input((6, 5))
    adapted = wrap(bn, "unmix-tns", num_components=3)
    layer = unmix_layer(adapted)
    before = layer.component_mean.clone(), layer.component_var.clone()
    y = adapted(x)
    assert torch.equal(y, bn(x))
    assert torch.equal(layer.component_mean, before[0])
    assert torch.equal(layer.component_var, before[1])


def test_unmix_bn1d_with_length_adapts():
    bn = make_bn(1, 5)
    x = make_input((4, 5, 9))
    adapted = wrap(bn, "unmix-tns", num_components=1)
    mean, var = ref_instance_stats(x)
    close(adapted(x), ref_normalize(x, mean, var, bn), tol=2e-5)
    assert not torch.allclose(adapted(x), bn(x), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_are_summed_in_float32(dtype):
    from tta.norms.base import batch_stats

    x = 3.0 + torch.randn(64, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    mean, var = batch_stats(x.to(dtype))
    assert mean.dtype == torch.float32 and var.dtype == torch.float32  # kept in float32
    ref_var, ref_mean = torch.var_mean(x.to(dtype).double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", ["unmix-tns", "tbn", "rbn", "iabn"])
def test_a_half_network_runs_every_norm(method):
    """A network converted with .half() keeps half statistics state (UnMix-TNS's components):
    the float32 batch statistics meet it in its dtype, close to the float32 network's output."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    x = torch.rand(8, 3, 12, 12)
    options = {"seed": 0} if method == "unmix-tns" else {}
    full = tta.adapt(net, method, **options)
    half = tta.adapt(copy.deepcopy(net).half(), method, **options)
    for _ in range(2):
        out = half(x.half())
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.float(), full(x), rtol=0, atol=5e-3)
