"""TENT and Core (docs/algorithms.md §2) against a hand-written functional reference of a small network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta
from tta.methods.core import class_confusion_loss
from tta.methods.tent import entropy_loss


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Net(nn.Module):
    def __init__(self, affine_second: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6, affine=affine_second, eps=1e-3)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def make_net(seed: int = 0, affine_second: bool = True) -> Net:
    g = gen(seed)
    net = Net(affine_second)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for bn in (net.bn1, net.bn2):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if bn.affine:
                bn.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=g))
                bn.bias.copy_(0.3 * torch.randn(c, generator=g))
    return net.eval()


def batches(n: int, b: int = 8, seed: int = 20) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(b, 3, 5, 5, generator=g) * (1.0 + 0.5 * i) + 0.3 for i in range(n)]


# --------------------------------------------------------------------------------------------
# the hand-written reference
# --------------------------------------------------------------------------------------------


def ref_bn(h, bn, gamma, beta, norm, alpha=0.9, momentum=None):
    """The norm layer written out: 'tbn' / 'alpha-bn' / 'rbn' (one batch) / 'instance'."""
    view = (1, -1, 1, 1)
    if norm == "instance":  # unmix-tns with K = 1
        mean = h.mean((2, 3), keepdim=True)
        var = ((h - mean) ** 2).mean((2, 3), keepdim=True)
    else:
        mean = h.mean((0, 2, 3))
        var = ((h - mean.view(view)) ** 2).mean((0, 2, 3))
        if norm == "alpha-bn":
            mean = alpha * bn.running_mean + (1 - alpha) * mean
            var = alpha * bn.running_var + (1 - alpha) * var
        elif norm == "rbn":
            mean = (1 - momentum) * bn.running_mean + momentum * mean
            var = (1 - momentum) * bn.running_var + momentum * var
        mean, var = mean.view(view), var.view(view)
    y = (h - mean) / torch.sqrt(var + bn.eps)
    if gamma is not None:
        y = y * gamma.view(view) + beta.view(view)
    return y


def ref_forward(net, params, x, norm="tbn", **kw):
    g1, b1, g2, b2 = params
    h = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
    h = torch.relu(ref_bn(h, net.bn1, g1, b1, norm, **kw))
    h = F.conv2d(h, net.conv2.weight, net.conv2.bias, padding=1)
    h = torch.relu(ref_bn(h, net.bn2, g2, b2, norm, **kw))
    return F.linear(h.mean((2, 3)), net.fc.weight, net.fc.bias)


def ref_entropy(logits):
    p = torch.softmax(logits, dim=1)
    return -(p * torch.log(p)).sum(1).mean()


def ref_mcc(logits, temperature=2.5, weighting=True):
    """docs/algorithms.md §2: P = softmax(z/T); w = 1 + exp(−H) scaled to sum B; R = PᵀWP, rows to 1."""
    p = torch.softmax(logits / temperature, dim=1)
    b, k = p.shape
    if weighting:
        h = -(p * torch.log(p)).sum(1).detach()
        w = 1 + torch.exp(-h)
        w = b * w / w.sum()
    else:
        w = torch.ones(b, dtype=p.dtype)
    r = torch.zeros(k, k, dtype=p.dtype)
    for i in range(b):
        r = r + w[i] * torch.outer(p[i], p[i])
    r = r / r.sum(1, keepdim=True)
    return (r.sum() - torch.diagonal(r).sum()) / k


def start_params(net):
    out = []
    for bn in (net.bn1, net.bn2):
        for t in (bn.weight, bn.bias):
            out.append(None if t is None else t.detach().clone().requires_grad_(True))
    return out


class HandAdam:
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
            p.grad = None


class HandSGD:
    def __init__(self, params, lr, momentum, weight_decay=0.0):
        self.params, self.lr, self.mu, self.wd = params, lr, momentum, weight_decay
        self.buf = [None] * len(params)

    @torch.no_grad()
    def step(self):
        for i, p in enumerate(self.params):
            g = p.grad + self.wd * p
            self.buf[i] = g.clone() if self.buf[i] is None else self.mu * self.buf[i] + g
            p.sub_(self.lr * self.buf[i])
            p.grad = None


def ref_step(net, params, opt, x, loss_fn, **kw):
    logits = ref_forward(net, [p for p in params], x, **kw)
    loss_fn(logits).backward()
    opt.step()
    return logits.detach()


def adapted_params(adapted):
    m = adapted.model
    return [m.bn1.weight, m.bn1.bias, m.bn2.weight, m.bn2.bias]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# TENT
# --------------------------------------------------------------------------------------------


def test_entropy_loss_formula():
    logits = torch.randn(7, 5, generator=gen(1)) * 3
    close(entropy_loss(logits), ref_entropy(logits))
    assert entropy_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_tent_one_step_equals_hand_reference(lr):
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "tent", lr=lr)
    y = adapted(x)
    params = start_params(net)
    ref_logits = ref_step(net, params, HandAdam(params, lr), x, ref_entropy)
    close(y, ref_logits)  # the returned logits are the pre-update ones
    for got, want, before in zip(adapted_params(adapted), params, start_params(net)):
        close(got.detach(), want.detach(), tol=1e-6)
        assert not torch.allclose(got.detach(), before, atol=lr / 10)  # a real step was taken


def test_tent_three_batches_equal_hand_reference():
    net = make_net(seed=3)
    adapted = tta.adapt(net, "tent", lr=5e-3, betas=(0.8, 0.99))
    params = start_params(net)
    opt = HandAdam(params, 5e-3, betas=(0.8, 0.99))
    for x in batches(3):
        close(adapted(x), ref_step(net, params, opt, x, ref_entropy), tol=2e-5)
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-5)


def test_tent_returned_logits_are_plain_tbn_before_the_step():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "tent", lr=1e-2)
    close(adapted(x), tta.adapt(net, "tbn")(x), tol=1e-6)
    # the second call sees the updated γ, β: no longer the tbn output
    assert not torch.allclose(adapted(x), tta.adapt(net, "tbn")(x), atol=1e-4)


def test_tent_two_steps_per_batch():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "tent", lr=1e-2, steps=2)
    y = adapted(x)
    params = start_params(net)
    opt = HandAdam(params, 1e-2)
    first = ref_step(net, params, opt, x, ref_entropy)
    ref_step(net, params, opt, x, ref_entropy)
    close(y, first)
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-6)
    assert adapted.optimizer.state_dict()["state"][0]["step"].item() == 2


def test_tent_sgd_momentum_and_weight_decay():
    net = make_net()
    adapted = tta.adapt(net, "tent", optimizer="sgd", lr=0.05, momentum=0.5, weight_decay=0.01)
    params = start_params(net)
    opt = HandSGD(params, 0.05, 0.5, 0.01)
    for x in batches(2):
        close(adapted(x), ref_step(net, params, opt, x, ref_entropy))
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-6)


def test_tent_trains_only_gamma_beta():
    net = make_net()
    adapted = tta.adapt(net, "tent", lr=1e-2)
    frozen = {
        n: t.detach().clone()
        for n, t in list(adapted.named_parameters()) + list(adapted.named_buffers())
        if not n.endswith((".weight", ".bias")) or not n.startswith(("model.bn1", "model.bn2"))
    }
    assert "model.conv1.weight" in frozen and "model.bn1.source_mean" in frozen
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {f"model.bn{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
    opt_params = {id(p) for g in adapted.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in adapted_params(adapted)}
    for x in batches(3):
        adapted(x)
    for n, t in list(adapted.named_parameters()) + list(adapted.named_buffers()):
        if n in frozen:
            assert torch.equal(t, frozen[n]), n
            if isinstance(t, nn.Parameter):
                assert t.grad is None, n
    # the source statistics the swapped-in layers keep are the original ones
    assert torch.equal(adapted.model.bn1.source_mean, net.bn1.running_mean)
    assert torch.equal(adapted.model.bn2.source_var, net.bn2.running_var)


def test_tent_layer_without_affine_stays_untrained():
    net = make_net(affine_second=False)
    adapted = tta.adapt(net, "tent", lr=1e-2)
    x = batches(1)[0]
    y = adapted(x)
    params = start_params(net)
    assert params[2] is None and params[3] is None
    trainable = [params[0], params[1]]
    opt = HandAdam(trainable, 1e-2)
    close(y, ref_step(net, params, opt, x, ref_entropy))
    close(adapted.model.bn1.weight.detach(), params[0].detach(), tol=1e-6)
    close(adapted.model.bn1.bias.detach(), params[1].detach(), tol=1e-6)


def test_tent_episodic_leaves_no_trace():
    net = make_net()
    xs = batches(3)
    episodic = tta.adapt(net, "tent", lr=1e-2, episodic=True)
    for x in xs:
        fresh = tta.adapt(net, "tent", lr=1e-2)
        assert torch.equal(episodic(x), fresh(x))
        for a, b in zip(adapted_params(episodic), adapted_params(fresh)):
            assert torch.equal(a, b)
        assert episodic.optimizer.state_dict()["state"][0]["step"].item() == 1


def test_tent_episodic_over_rbn_resets_statistics():
    net = make_net()
    xs = batches(2)
    episodic = tta.adapt(net, "tent", norm="rbn", norm_momentum=0.3, episodic=True)
    episodic(xs[0])
    fresh = tta.adapt(net, "tent", norm="rbn", norm_momentum=0.3)
    assert torch.equal(episodic(xs[1]), fresh(xs[1]))
    assert torch.equal(episodic.model.bn2.running_mean, fresh.model.bn2.running_mean)


def test_tent_default_norm_is_tbn():
    net = make_net()
    adapted = tta.adapt(net, "tent")
    assert adapted.options["norm"] == "tbn"
    assert adapted.optimizer.param_groups[0]["lr"] == 1e-3
    assert isinstance(adapted.optimizer, torch.optim.Adam)
    assert adapted.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert adapted.optimizer.param_groups[0]["weight_decay"] == 0.0


def test_tent_over_unmix_k1_equals_instance_norm_reference():
    """Gradients flow through the instance statistics."""
    net = make_net()
    adapted = tta.adapt(net, "tent", norm="unmix-tns", num_components=1, lr=1e-2)
    params = start_params(net)
    opt = HandAdam(params, 1e-2)
    for x in batches(2):
        close(adapted(x), ref_step(net, params, opt, x, ref_entropy, norm="instance"), tol=2e-5)
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-5)


def test_tent_over_unmix_updates_components_and_affine():
    net = make_net()
    adapted = tta.adapt(net, "tent", norm="unmix-tns", num_components=4)
    assert adapted.options["num_components"] == 4 and adapted.options["norm"] == "unmix-tns"
    layers = [adapted.model.bn1, adapted.model.bn2]
    comps = [(m.component_mean.clone(), m.component_var.clone()) for m in layers]
    assert all(m.component_mean.shape == (4, m.num_features) for m in layers)
    affine = [p.detach().clone() for p in adapted_params(adapted)]
    for x in batches(2):
        y = adapted(x)
        assert torch.isfinite(y).all()
    for m, (mu, var) in zip(layers, comps):
        assert not torch.allclose(m.component_mean, mu)
        assert not torch.allclose(m.component_var, var)
        assert m.component_mean.grad_fn is None and not m.component_mean.requires_grad
    for p, before in zip(adapted_params(adapted), affine):
        assert not torch.allclose(p.detach(), before)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {f"model.bn{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}


def test_rbn_momentum_and_sgd_momentum_are_kept_apart():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "tent", norm="rbn", norm_momentum=0.2, optimizer="sgd", momentum=0.5)
    assert adapted.optimizer.param_groups[0]["momentum"] == 0.5
    assert adapted.model.bn1.momentum == 0.2
    y = adapted(x)
    params = start_params(net)
    close(y, ref_forward(net, params, x, norm="rbn", momentum=0.2).detach())
    h = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
    close(adapted.model.bn1.running_mean, 0.8 * net.bn1.running_mean + 0.2 * h.mean((0, 2, 3)))
    # momentum alone goes to the optimiser; rbn keeps its default
    other = tta.adapt(net, "tent", norm="rbn", optimizer="sgd", momentum=0.7)
    assert other.optimizer.param_groups[0]["momentum"] == 0.7
    assert other.model.bn1.momentum == 0.05


# --------------------------------------------------------------------------------------------
# Core
# --------------------------------------------------------------------------------------------

# a fixed probability matrix: 6 samples, 4 classes
P = torch.tensor(
    [
        [0.70, 0.10, 0.10, 0.10],
        [0.05, 0.80, 0.10, 0.05],
        [0.25, 0.25, 0.25, 0.25],
        [0.40, 0.40, 0.10, 0.10],
        [0.10, 0.20, 0.30, 0.40],
        [0.01, 0.01, 0.01, 0.97],
    ],
    dtype=torch.float64,
)


def spec_loss_on_probabilities(p, weighting):
    """docs/algorithms.md §2 on a probability matrix, written out entry by entry."""
    b, k = p.shape
    w = [1.0] * b
    if weighting:
        h = [-sum(p[i, j] * math.log(p[i, j]) for j in range(k)) for i in range(b)]
        raw = [1 + math.exp(-hi) for hi in h]
        w = [b * r / sum(raw) for r in raw]
    r = [[sum(w[n] * p[n, i] * p[n, j] for n in range(b)) for j in range(k)] for i in range(k)]
    r = [[r[i][j] / sum(r[i]) for j in range(k)] for i in range(k)]
    return sum(r[i][j] for i in range(k) for j in range(k) if i != j) / k


@pytest.mark.parametrize("temperature", [2.5, 1.0])
@pytest.mark.parametrize("weighting", [True, False])
def test_core_loss_on_fixed_probabilities(weighting, temperature):
    logits = temperature * torch.log(P)  # softmax(logits / T) = P
    # a plain float: pytest.approx cannot take a 0-d tensor (pytest >= 9.2 iterates over it)
    expected = float(spec_loss_on_probabilities(P, weighting))
    got = class_confusion_loss(logits, temperature=temperature, entropy_weighting=weighting)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    # float32 as well
    got32 = class_confusion_loss(logits.float(), temperature, weighting)
    assert got32.item() == pytest.approx(expected, rel=1e-4)


def test_core_default_temperature_is_2_5():
    logits = torch.randn(6, 4, generator=gen(4), dtype=torch.float64) * 3
    got = class_confusion_loss(logits)
    assert got.item() == pytest.approx(ref_mcc(logits, 2.5, True).item(), rel=1e-4)
    assert got.item() != pytest.approx(ref_mcc(logits, 1.0, True).item(), rel=1e-3)


@pytest.mark.parametrize("weighting", [True, False])
def test_core_one_hot_predictions_give_zero(weighting):
    # every class predicted by someone
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    logits = F.one_hot(labels, 4).double() * 500.0
    loss = class_confusion_loss(logits, entropy_weighting=weighting)
    assert loss.item() == 0.0


@pytest.mark.parametrize("weighting", [True, False])
def test_core_one_hot_predictions_of_some_classes_give_zero(weighting):
    """Confident predictions that miss a class must not turn the loss (and then γ, β) into NaN."""
    labels = torch.tensor([0, 1, 1, 0])
    logits = F.one_hot(labels, 4).float() * 500.0
    loss = class_confusion_loss(logits, entropy_weighting=weighting)
    assert torch.isfinite(loss) and loss.item() == 0.0


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("weighting", [True, False])
def test_core_uniform_predictions_give_k_minus_one_over_k(k, weighting):
    loss = class_confusion_loss(torch.zeros(7, k), entropy_weighting=weighting)
    assert loss.item() == pytest.approx((k - 1) / k, rel=1e-6)


@pytest.mark.parametrize("weighting", [True, False])
def test_core_gradient_step_lowers_the_loss(weighting):
    logits = torch.randn(8, 5, generator=gen(7), dtype=torch.float64, requires_grad=True)
    loss = class_confusion_loss(logits, entropy_weighting=weighting)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        stepped = class_confusion_loss(logits - 0.1 * grad, entropy_weighting=weighting)
    assert stepped < loss
    # the gradient is the formula's (entropy weights are constants)
    ref_logits = logits.detach().clone().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(ref_mcc(ref_logits, 2.5, weighting), ref_logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-6)


def test_core_default_norm_is_alpha_bn_0_9():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "core")
    assert adapted.options["norm"] == "alpha-bn"
    y = adapted(x)
    close(y, ref_forward(net, start_params(net), x, norm="alpha-bn", alpha=0.9).detach())
    close(y, tta.adapt(net, "alpha-bn")(x), tol=1e-6)
    assert isinstance(adapted.optimizer, torch.optim.Adam)
    assert adapted.optimizer.param_groups[0]["lr"] == 1e-3


def test_core_one_step_adam_without_weighting_equals_reference():
    net = make_net()
    x = batches(1, b=10)[0]
    adapted = tta.adapt(net, "core", lr=1e-2, entropy_weighting=False, temperature=2.0)
    params = start_params(net)
    opt = HandAdam(params, 1e-2)
    ref = ref_step(
        net, params, opt, x, lambda z: ref_mcc(z, 2.0, False), norm="alpha-bn", alpha=0.9
    )
    close(adapted(x), ref)
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-6)


def test_core_sgd_steps_with_weighting_equal_reference():
    net = make_net()
    adapted = tta.adapt(net, "core", optimizer="sgd", lr=0.5, momentum=0.9, alpha=0.6)
    params = start_params(net)
    opt = HandSGD(params, 0.5, 0.9)
    for x in batches(2, b=10):
        ref = ref_step(net, params, opt, x, ref_mcc, norm="alpha-bn", alpha=0.6)
        close(adapted(x), ref)
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-5)
    assert not torch.allclose(params[0].detach(), net.bn1.weight, atol=1e-4)


def test_core_over_tbn():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "core", norm="tbn", lr=1e-2)
    params = start_params(net)
    ref = ref_step(net, params, HandAdam(params, 1e-2), x, ref_mcc)
    close(adapted(x), ref)
    for got, want in zip(adapted_params(adapted), params):
        close(got.detach(), want.detach(), tol=1e-5)
