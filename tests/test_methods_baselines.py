"""ETA/EATA, SAR, DeYO and LAME against references written out here from the papers' formulas.

Everything runs in float64 on a tiny BatchNorm CNN, so the references are compared at ~1e-12. The
reference forward is functional (``ref_forward``): the norm layers are written out, the trained
γ, β are leaf tensors, and the optimiser step is ``torch.optim`` on those leaves.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta
from tta._errors import TTAError
from tta.methods.features import classifier_of
from tta.methods.lame import affinity, laplacian_optimization

DT = torch.float64
C = 5  # classes
B = 16  # batch size
BN_NAMES = ("bn1", "bn2", "layer4.1")
BELOW_TOP = ("bn1", "bn2")  # what SAR and DeYO train (``layer4`` is frozen by the authors' rule)


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one intra-op thread is many times faster than several on a
    loaded machine. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6, eps=1e-3)
        self.layer4 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, C)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        h = torch.relu(self.layer4(h))
        return self.fc(h.mean((2, 3)))


def make_net(seed: int = 0, fc_scale: float = 40.0) -> Net:
    """Random weights; fc scaled up (confident predictions) and centred (varied classes)."""
    g = gen(seed)
    net = Net().to(DT)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)
        for name in BN_NAMES:
            bn = net.get_submodule(name)
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g, dtype=DT) * 0.3)
            bn.running_var.copy_(torch.rand(c, generator=g, dtype=DT) + 0.5)
            bn.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=g, dtype=DT))
            bn.bias.copy_(0.3 * torch.randn(c, generator=g, dtype=DT))
        net.fc.weight.mul_(fc_scale)
        calib = torch.randn(64, 3, 8, 8, generator=gen(99), dtype=DT)
        feats = ref_features(net, start_params(net), calib)
        net.fc.bias.copy_(-net.fc.weight @ feats.mean(0))
    return net.eval()


def batches(n: int, b: int = B, seed: int = 20, size: int = 8) -> list[torch.Tensor]:
    g = gen(seed)
    return [
        torch.randn(b, 3, size, size, generator=g, dtype=DT) * (1.0 + 0.5 * i) + 0.3
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------
# the reference network and losses
# --------------------------------------------------------------------------------------------


def ref_bn(h, bn, gamma, beta, norm):
    view = (1, -1, 1, 1)
    if norm == "tbn":  # the batch's mean and biased variance
        mean = h.mean((0, 2, 3))
        var = ((h - mean.view(view)) ** 2).mean((0, 2, 3))
    else:  # "source"
        mean, var = bn.running_mean, bn.running_var
    y = (h - mean.view(view)) / torch.sqrt(var.view(view) + bn.eps)
    return y * gamma.view(view) + beta.view(view)


def ref_features(net, params, x, norm="tbn"):
    h = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
    h = torch.relu(ref_bn(h, net.bn1, *params["bn1"], norm))
    h = F.conv2d(h, net.conv2.weight, net.conv2.bias, padding=1)
    h = torch.relu(ref_bn(h, net.bn2, *params["bn2"], norm))
    conv, bn = net.layer4
    h = F.conv2d(h, conv.weight, conv.bias, padding=1)
    h = torch.relu(ref_bn(h, bn, *params["layer4.1"], norm))
    return h.mean((2, 3))


def ref_forward(net, params, x, norm="tbn"):
    return F.linear(ref_features(net, params, x, norm), net.fc.weight, net.fc.bias)


def start_params(net, trained=BN_NAMES):
    """{layer: [γ, β]}: leaves with requires_grad for the trained layers, constants otherwise."""
    out = {}
    for name in BN_NAMES:
        bn = net.get_submodule(name)
        out[name] = [
            t.detach().clone().requires_grad_(name in trained) for t in (bn.weight, bn.bias)
        ]
    return out


def leaves(params, trained):
    return [t for name in trained for t in params[name]]


def adapted_params(adapted, names=BN_NAMES):
    return {
        n: [adapted.model.get_submodule(n).weight, adapted.model.get_submodule(n).bias]
        for n in names
    }


def assert_params(adapted, params, names=BN_NAMES, tol=1e-12):
    got = adapted_params(adapted, names)
    for n in names:
        for g, w in zip(got[n], params[n]):
            close(g.detach(), w.detach(), tol)


def row_entropy(logits):
    p = torch.softmax(logits, 1)
    return -(p * torch.log(p)).sum(1)


def ref_cos(p, q):
    """|cos| between each row of p and the vector q, written out."""
    return (p * q).sum(1) / (torch.sqrt((p * p).sum(1)) * torch.sqrt((q * q).sum()))


def assert_same(a, b, path="state"):
    """Bit-exact equality of nested states (tensors, dicts, lists, numbers, None)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def differs(a, b) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# ETA / EATA
# --------------------------------------------------------------------------------------------


class RefETA:
    """EATA's Algorithm 1 written out: reliable (E < E0), non-redundant (|cos(p̄, p)| < d0),
    weights 1/exp(E − E0), loss mean (+ α Σ F (θ − θ0)²), Adam; p̄ the 0.9-EMA of the mean
    probabilities of the kept samples."""

    def __init__(self, net, lr, e_margin=0.4, d_margin=0.05, fisher=None, alpha=0.0):
        self.net, self.e_margin, self.d_margin = net, e_margin, d_margin
        self.params = start_params(net)
        self.leaves = leaves(self.params, BN_NAMES)
        self.anchors = [t.detach().clone() for t in self.leaves]
        self.fisher, self.alpha = fisher, alpha
        self.opt = torch.optim.Adam(self.leaves, lr=lr)
        self.mean_probs = None
        self.num_used = self.num_reliable = 0
        self.history = []  # (reliable mask, kept mask) per batch

    def loss(self, x):
        logits = ref_forward(self.net, self.params, x)
        e0 = self.e_margin * math.log(C)
        ent = row_entropy(logits)
        p = torch.softmax(logits, 1).detach()
        reliable = ent < e0
        kept = reliable.clone()
        if self.mean_probs is not None:
            kept = reliable & (ref_cos(p, self.mean_probs).abs() < self.d_margin)
        self.history.append((reliable, kept))
        self.num_reliable += int(reliable.sum())
        self.num_used += int(kept.sum())
        if kept.any():
            m = p[kept].mean(0)
            self.mean_probs = m if self.mean_probs is None else 0.9 * self.mean_probs + 0.1 * m
        if not kept.any():
            return logits, None
        weight = torch.exp(-(ent[kept].detach() - e0))
        loss = (ent[kept] * weight).mean()
        if self.fisher is not None:
            loss = loss + self.regulariser()
        return logits, loss

    def regulariser(self):
        return self.alpha * sum(
            (f * (t - a) ** 2).sum() for f, t, a in zip(self.fisher, self.leaves, self.anchors)
        )

    def step(self, x):
        logits, loss = self.loss(x)
        if loss is not None:
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return logits.detach()


def test_net_filters_keep_a_strict_subset():
    """The fixture is not vacuous: the entropy filters keep some but not all samples."""
    net = make_net()
    for x in batches(3):
        ent = row_entropy(ref_forward(net, start_params(net), x))
        for margin in (0.4, 0.5):
            kept = int((ent < margin * math.log(C)).sum())
            assert 0 < kept < B, (margin, kept)
        assert len(set(ref_forward(net, start_params(net), x).argmax(1).tolist())) >= 3


def test_eta_two_steps_equal_reference():
    net = make_net()
    xs = batches(2)
    lr, d0 = 5e-3, 0.5
    adapted = tta.adapt(net, "eta", lr=lr, d_margin=d0)
    assert adapted.options["norm"] == "tbn"
    assert set(adapted.method.trainable_names()) == {
        f"{n}.{w}" for n in BN_NAMES for w in ("weight", "bias")
    }
    ref = RefETA(net, lr, d_margin=d0)
    before = {n: [t.detach().clone() for t in ts] for n, ts in start_params(net).items()}

    # batch 1: entropy filter only
    close(adapted(xs[0]), ref.step(xs[0]))
    reliable, kept = ref.history[0]
    assert 0 < int(kept.sum()) < B and torch.equal(reliable, kept)
    assert adapted.method.num_used == ref.num_used == int(kept.sum())
    assert adapted.method.num_reliable == ref.num_reliable
    close(adapted.method.mean_probs, ref.mean_probs)
    assert_params(adapted, ref.params)
    for n in BN_NAMES:  # a real step was taken
        assert not torch.allclose(adapted_params(adapted)[n][0].detach(), before[n][0], atol=1e-4)

    # batch 2: the redundancy filter removes some, not all, reliable samples
    close(adapted(xs[1]), ref.step(xs[1]))
    reliable, kept = ref.history[1]
    assert 0 < int(kept.sum()) < int(reliable.sum()), (int(kept.sum()), int(reliable.sum()))
    assert adapted.method.num_used == ref.num_used
    assert adapted.method.num_reliable == ref.num_reliable
    close(adapted.method.mean_probs, ref.mean_probs)
    assert_params(adapted, ref.params)
    assert adapted.optimizer.state_dict()["state"][0]["step"].item() == 2


def test_eta_nothing_reliable_changes_nothing():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "eta", lr=1e-2, entropy_margin=0.01)
    start = copy.deepcopy(adapted.state_dict())
    y = adapted(x)
    close(y, ref_forward(net, start_params(net), x).detach())
    for n, (g, b) in adapted_params(adapted).items():
        assert torch.equal(g, net.get_submodule(n).weight)
        assert torch.equal(b, net.get_submodule(n).bias)
        assert g.grad is None and b.grad is None
    assert len(adapted.optimizer.state) == 0
    assert adapted.method.mean_probs is None
    assert adapted.method.num_used == 0 and adapted.method.num_reliable == 0
    assert_same(adapted.state_dict(), start)


def test_eta_all_redundant_skips_the_update():
    net = make_net()
    xs = batches(2)
    adapted = tta.adapt(net, "eta", lr=1e-2, d_margin=1e-9)
    adapted(xs[0])
    after_first = {n: [t.detach().clone() for t in ts] for n, ts in adapted_params(adapted).items()}
    mean_probs = adapted.method.mean_probs.clone()
    used = adapted.method.num_used
    adapted(xs[1])
    assert adapted.method.num_used == used
    assert adapted.method.num_reliable > used  # batch 2 had reliable samples, all redundant
    assert torch.equal(adapted.method.mean_probs, mean_probs)
    for n, ts in adapted_params(adapted).items():
        for t, want in zip(ts, after_first[n]):
            assert torch.equal(t, want)
    assert adapted.optimizer.state_dict()["state"][0]["step"].item() == 1


def ref_fisher(net, images, batch_size):
    """Mean over batches of squared gradients of CE to the argmax prediction (tbn forward)."""
    params = start_params(net)
    ls = leaves(params, BN_NAMES)
    sums = [torch.zeros_like(t) for t in ls]
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    for xb in chunks:
        logits = ref_forward(net, params, xb)
        target = logits.argmax(1)
        ce = -logits.log_softmax(1)[torch.arange(len(xb)), target].mean()
        for s, g in zip(sums, torch.autograd.grad(ce, ls)):
            s += g**2
    return [s / len(chunks) for s in sums]


def source_images(n=10, seed=5):
    return torch.rand(n, 3, 8, 8, generator=gen(seed), dtype=DT)


@pytest.mark.parametrize("fisher_samples", [2000, 7])
def test_eata_fisher_buffers(fisher_samples):
    net = make_net()
    src = source_images(10)
    ctx = tta.RunContext(seed=0, batch_size=4, source_images=src)
    adapted = tta.adapt(net, "eata", context=ctx, fisher_samples=fisher_samples)
    fisher = ref_fisher(net, src[:fisher_samples], 4)  # batches 4, 4, 2 or 4, 3
    opt_params = [p for g in adapted.optimizer.param_groups for p in g["params"]]
    name_of = {id(p): n for n, p in adapted.model.named_parameters()}
    order = [f"{n}.{w}" for n in BN_NAMES for w in ("weight", "bias")]
    assert [name_of[id(p)] for p in opt_params] == order
    buffers = dict(adapted.method.named_buffers())
    assert set(buffers) == {f"{k}_{i}" for k in ("fisher", "anchor") for i in range(6)}
    for i, (p, f) in enumerate(zip(opt_params, fisher)):
        close(buffers[f"fisher_{i}"], f)
        assert torch.equal(buffers[f"anchor_{i}"], p.detach())
        assert f.abs().sum() > 0
    assert "method.fisher_0" in adapted.state_dict()
    # a different batch size gives a different Fisher (means over other batches)
    other = ref_fisher(net, src[:fisher_samples], 3)
    assert not torch.allclose(buffers["fisher_0"], other[0], rtol=1e-6, atol=0)


def test_eata_regulariser_enters_the_loss():
    net = make_net()
    xs = batches(2)
    src = source_images(10)
    lr, d0, alpha = 5e-3, 0.5, 500.0
    ctx = tta.RunContext(seed=0, batch_size=4, source_images=src)
    eata = tta.adapt(net, "eata", context=ctx, lr=lr, d_margin=d0, fisher_alpha=alpha)
    eta = tta.adapt(net, "eta", lr=lr, d_margin=d0)
    fisher = ref_fisher(net, src, 4)
    ref = RefETA(net, lr, d_margin=d0, fisher=fisher, alpha=alpha)
    ref_eta = RefETA(net, lr, d_margin=d0)

    # step 1: θ = θ0, the regulariser and its gradient vanish: EATA's step is ETA's
    close(eata(xs[0]), ref.step(xs[0]))
    eta(xs[0])
    ref_eta.step(xs[0])
    assert_params(eata, ref.params)
    assert_params(eata, ref_eta.params)
    for t, u in zip(leaves(adapted_params(eata), BN_NAMES), leaves(adapted_params(eta), BN_NAMES)):
        close(t.detach(), u.detach())

    # step 2: the gradient is ETA's plus 2 α F (θ − θ0)
    theta1 = [t.detach().clone() for t in ref.leaves]
    probe = RefETA(net, lr, d_margin=d0)
    probe.params = {
        n: [t.detach().clone().requires_grad_(True) for t in ts] for n, ts in ref.params.items()
    }
    probe.leaves = leaves(probe.params, BN_NAMES)
    probe.mean_probs = ref.mean_probs.clone()
    _, loss_eta = probe.loss(xs[1])
    g_eta = torch.autograd.grad(loss_eta, probe.leaves)
    g_reg = [2 * alpha * f * (t - a) for f, t, a in zip(fisher, theta1, ref.anchors)]
    assert sum(float(g.abs().sum()) for g in g_reg) > 1e-3 * sum(
        float(g.abs().sum()) for g in g_eta
    )
    close(eata(xs[1]), ref.step(xs[1]))
    got_grads = [t.grad for t in leaves(adapted_params(eata), BN_NAMES)]
    for got, ge, gr in zip(got_grads, g_eta, g_reg):
        close(got, ge + gr)
    assert_params(eata, ref.params)
    # and it differs from ETA's second step
    eta(xs[1])
    moved = [
        (t.detach() - u.detach()).abs().max().item()
        for t, u in zip(
            leaves(adapted_params(eata), BN_NAMES), leaves(adapted_params(eta), BN_NAMES)
        )
    ]
    assert max(moved) > 1e-8


@pytest.mark.parametrize("images", [None, "empty"])
def test_eata_without_source_images_raises(images):
    net = make_net()
    src = None if images is None else torch.zeros(0, 3, 8, 8, dtype=DT)
    with pytest.raises(TTAError) as info:
        tta.adapt(net, "eata", context=tta.RunContext(source_images=src))
    msg = str(info.value)
    assert "'eta'" in msg and "source images" in msg


# --------------------------------------------------------------------------------------------
# SAR
# --------------------------------------------------------------------------------------------


class RefSAR:
    """SAM on the entropy of reliable samples, written out; SGD with momentum from θ."""

    def __init__(self, net, lr, momentum, rho, e_margin=0.4):
        self.net, self.rho, self.e_margin = net, rho, e_margin
        self.params = start_params(net, trained=BELOW_TOP)
        self.leaves = leaves(self.params, BELOW_TOP)
        self.opt = torch.optim.SGD(self.leaves, lr=lr, momentum=momentum)
        self.ema = None
        self.history = []
        self.losses = []

    def step(self, x):
        e0 = self.e_margin * math.log(C)
        logits = ref_forward(self.net, self.params, x)
        ent = row_entropy(logits)
        reliable = ent < e0
        g = torch.autograd.grad(ent[reliable].mean(), self.leaves)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        perturbed = {n: [t.detach() for t in ts] for n, ts in self.params.items()}
        for n in BELOW_TOP:
            perturbed[n] = [
                (t + self.rho * gi / (norm + 1e-12)).detach().requires_grad_(True)
                for t, gi in zip(self.params[n], g[2 * BELOW_TOP.index(n) :][:2])
            ]
        ent2 = row_entropy(ref_forward(self.net, perturbed, x))
        both = reliable & (ent2 < e0)
        loss2 = ent2[both].mean()
        g2 = torch.autograd.grad(loss2, leaves(perturbed, BELOW_TOP))
        for t, gi in zip(self.leaves, g2):
            t.grad = gi
        self.opt.step()
        self.ema = loss2.item() if self.ema is None else 0.9 * self.ema + 0.1 * loss2.item()
        self.history.append((reliable, both))
        self.losses.append(loss2.item())
        return logits.detach()


SAR_OPTS = dict(lr=0.05, momentum=0.8, rho=0.5, reset_threshold=0.0)


def test_sar_two_steps_equal_sam_reference():
    net = make_net()
    xs = batches(2)
    adapted = tta.adapt(net, "sar", **SAR_OPTS)
    assert isinstance(adapted.optimizer, torch.optim.SGD)
    assert sorted(adapted.method.trainable_names()) == sorted(
        f"{n}.{w}" for n in BELOW_TOP for w in ("weight", "bias")
    )
    ref = RefSAR(net, SAR_OPTS["lr"], SAR_OPTS["momentum"], SAR_OPTS["rho"])
    for x in xs:
        close(adapted(x), ref.step(x))
        assert_params(adapted, ref.params)
        assert adapted.method.loss_ema == pytest.approx(ref.ema, rel=1e-12, abs=0)
    # the second pass dropped some reliable samples (the two-pass filter is exercised)
    assert any(0 < int(both.sum()) < int(rel.sum()) for rel, both in ref.history), [
        (int(r.sum()), int(b.sum())) for r, b in ref.history
    ]
    # layer4 is frozen (authors' rule), and its γ, β did not move
    frozen = adapted.model.layer4[1]
    assert not frozen.weight.requires_grad
    assert torch.equal(frozen.weight, net.layer4[1].weight)
    assert torch.equal(frozen.bias, net.layer4[1].bias)
    # the loss EMA: the first second-pass loss, then 0.9·EMA + 0.1·loss
    l1, l2 = ref.losses
    assert abs(l1 - l2) > 1e-6
    assert adapted.method.loss_ema == pytest.approx(0.9 * l1 + 0.1 * l2, rel=1e-12, abs=0)


def test_sar_model_recovery_resets_to_the_initial_state():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "sar", lr=0.05, reset_threshold=100.0)
    start = copy.deepcopy(adapted.state_dict())
    y = adapted(x)
    close(y, ref_forward(net, start_params(net), x).detach())
    assert adapted.method.loss_ema is None
    assert not adapted.method.wants_reset
    for n, (g, b) in adapted_params(adapted).items():
        assert torch.equal(g, net.get_submodule(n).weight)
        assert torch.equal(b, net.get_submodule(n).bias)
    # As in the authors' code (and MDTTA), the base SGD keeps its momentum through a recovery
    # (benchmarks/reference_check.py matches MDTTA to 1e-13 across resets); everything else is
    # back at the start, and a reset asked for by the user clears the momentum too.
    momentum = [st["momentum_buffer"] for st in adapted.optimizer.state.values()]
    assert len(momentum) == 4 and all(m.abs().sum() > 0 for m in momentum)
    saved = adapted.state_dict()
    assert_same(
        {k: v for k, v in saved.items() if k != "method._extra_state"},
        {k: v for k, v in start.items() if k != "method._extra_state"},
    )
    assert saved["method._extra_state"]["vars"] == start["method._extra_state"]["vars"]
    adapted.reset()
    assert len(adapted.optimizer.state) == 0
    assert_same(adapted.state_dict(), start)
    # without the reset the same batch would have moved γ, β
    kept = tta.adapt(net, "sar", lr=0.05, reset_threshold=0.0)
    kept(x)
    assert not torch.equal(kept.model.bn1.weight, net.bn1.weight)
    assert kept.method.loss_ema is not None


def test_sar_nothing_reliable_leaves_parameters_finite_and_unchanged():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "sar", lr=0.05, entropy_margin=0.001)
    y = adapted(x)
    assert torch.isfinite(y).all()
    assert adapted.method.loss_ema is None
    for n, (g, b) in adapted_params(adapted).items():
        assert torch.equal(g, net.get_submodule(n).weight), n
        assert torch.equal(b, net.get_submodule(n).bias), n


def test_sar_steps_option_is_honoured_or_refused():
    net = make_net()
    x = batches(1)[0]
    try:
        two = tta.adapt(net, "sar", lr=0.05, reset_threshold=0.0, steps=2)
    except TTAError as err:
        assert "steps" in str(err)
        return
    one = tta.adapt(net, "sar", lr=0.05, reset_threshold=0.0)
    one(x)
    two(x)
    assert not torch.equal(one.model.bn1.weight, two.model.bn1.weight)


# --------------------------------------------------------------------------------------------
# DeYO
# --------------------------------------------------------------------------------------------


def deyo(seed=0, **opts):
    return tta.adapt(make_net(), "deyo", context=tta.RunContext(seed=seed), **opts)


def split_patches(img, n):
    """(C, H, W) -> list of the n×n patches (C, H/n, W/n), row-major."""
    c, h, w = img.shape
    ph, pw = h // n, w // n
    return [
        img[:, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] for i in range(n) for j in range(n)
    ]


@pytest.mark.parametrize("patch_len", [4, 2])
def test_deyo_patch_shuffle_is_a_permutation_of_patches(patch_len):
    x = torch.rand(6, 3, 8, 8, generator=gen(1), dtype=DT)
    x_in = x.clone()
    method = deyo(patch_len=patch_len).method
    xp = method.destroy(x)
    assert torch.equal(x, x_in)  # the input is not modified
    assert xp.shape == x.shape
    perms = []
    for b in range(len(x)):
        src, out = split_patches(x[b], patch_len), split_patches(xp[b], patch_len)
        perm = []
        for patch in out:
            matches = [i for i, s in enumerate(src) if torch.equal(s, patch)]
            assert len(matches) == 1
            perm.append(matches[0])
        assert sorted(perm) == list(range(patch_len**2))  # each input patch used once
        perms.append(perm)
    assert any(p != sorted(p) for p in perms)  # not the identity
    assert len({tuple(p) for p in perms}) > 1  # a permutation per image
    # a side that patch_len does not divide: resized to a multiple and back, same shape
    odd = torch.rand(2, 3, 10, 10, generator=gen(2), dtype=DT)
    assert method.destroy(odd).shape == odd.shape


def test_deyo_destroy_is_reproducible_from_the_seed():
    x = torch.rand(4, 3, 8, 8, generator=gen(1), dtype=DT)
    a, b, c = deyo(seed=5).method, deyo(seed=5).method, deyo(seed=6).method
    state = a.rng_state.clone()
    xa = a.destroy(x)
    assert torch.equal(xa, b.destroy(x))
    assert not torch.equal(xa, c.destroy(x))
    # the generator state moves on: the next draw differs; restoring it repeats the draw
    assert not torch.equal(a.destroy(x), xa)
    a.rng_state = state
    assert torch.equal(a.destroy(x), xa)


def test_deyo_pixel_shuffle_is_one_permutation_of_pixels():
    x = torch.rand(4, 3, 8, 8, generator=gen(2), dtype=DT)
    xp = deyo(augmentation="pixel").method.destroy(x)
    src = x.reshape(4 * 3, 64)
    out = xp.reshape(4 * 3, 64)
    perm = []
    for k in range(64):  # each output position holds one input position, for every image/channel
        matches = [j for j in range(64) if torch.equal(out[:, k], src[:, j])]
        assert len(matches) == 1
        perm.append(matches[0])
    assert sorted(perm) == list(range(64)) and perm != list(range(64))


def test_deyo_occlusion_fills_the_square_with_the_image_mean():
    x = torch.rand(2, 3, 8, 8, generator=gen(3), dtype=DT)
    xp = deyo(augmentation="occ", occlusion_size=3, occlusion_start=2).method.destroy(x)
    mean = x.mean((2, 3))
    close(xp[:, :, 2:5, 2:5], mean[:, :, None, None].expand(2, 3, 3, 3))
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:5, 2:5] = False
    assert torch.equal(xp[:, :, mask], x[:, :, mask])


DEYO_OPTS = dict(lr=5e-3, plpd_threshold=0.05)


def test_deyo_one_step_equals_plpd_reference():
    net = make_net()
    x = batches(1)[0]
    adapted = tta.adapt(net, "deyo", context=tta.RunContext(seed=3), **DEYO_OPTS)
    method = adapted.method
    state0 = method.rng_state.clone()
    y = adapted(x)
    state1 = method.rng_state.clone()
    assert not torch.equal(state0, state1)

    params = start_params(net, trained=BELOW_TOP)
    ls = leaves(params, BELOW_TOP)
    logits = ref_forward(net, params, x)
    close(y, logits.detach())
    ent = row_entropy(logits)
    keep = ent < 0.5 * math.log(C)
    assert 0 < int(keep.sum()) < B
    # x' from the saved generator state: exactly one draw was made for the step
    method.rng_state = state0
    x_prime = method.destroy(x[keep])
    assert torch.equal(method.rng_state, state1)
    with torch.no_grad():
        logits_prime = ref_forward(net, params, x_prime)  # tbn: the kept x' batch's statistics
    p = torch.softmax(logits[keep], 1).detach()
    cls = p.argmax(1)
    rows = torch.arange(len(cls))
    plpd = p[rows, cls] - torch.softmax(logits_prime, 1)[rows, cls]
    shaped = plpd > DEYO_OPTS["plpd_threshold"]
    assert 0 < int(shaped.sum()) < int(keep.sum()), plpd
    e0 = 0.4 * math.log(C)
    e = ent[keep][shaped]
    weight = torch.exp(-(e.detach() - e0)) + torch.exp(plpd[shaped])
    loss = (e * weight).mean()
    opt = torch.optim.Adam(ls, lr=DEYO_OPTS["lr"])
    loss.backward()
    opt.step()
    assert_params(adapted, params)
    assert torch.equal(adapted.model.layer4[1].weight, net.layer4[1].weight)  # frozen
    # the PLPD filter matters: without it (τ = −1) the step differs
    loose = tta.adapt(net, "deyo", context=tta.RunContext(seed=3), lr=5e-3, plpd_threshold=-1.0)
    loose(x)
    assert not torch.allclose(loose.model.bn1.weight, adapted.model.bn1.weight, atol=1e-9)


def test_deyo_no_entropy_survivor_draws_nothing_and_changes_nothing():
    net = make_net()
    adapted = tta.adapt(net, "deyo", entropy_margin=0.001)
    state0 = adapted.method.rng_state.clone()
    adapted(batches(1)[0])
    assert torch.equal(adapted.method.rng_state, state0)
    assert len(adapted.optimizer.state) == 0
    assert torch.equal(adapted.model.bn1.weight, net.bn1.weight)


# --------------------------------------------------------------------------------------------
# LAME
# --------------------------------------------------------------------------------------------


def ref_rbf(feats, k):
    """exp(−d²/2σ²), σ the mean over points of the distance to the k-th nearest (self = 1st)."""
    n = feats.shape[0]
    d = torch.zeros(n, n, dtype=feats.dtype)
    for i in range(n):
        for j in range(n):
            d[i, j] = torch.sqrt(((feats[i] - feats[j]) ** 2).sum())
    kth = torch.stack([torch.sort(d[i]).values[min(k, n) - 1] for i in range(n)])
    sigma = kth.mean()
    return torch.exp(-(d**2) / (2 * sigma**2))


def ref_lame(probs, w, lam=1.0, max_steps=100):
    """Y ← softmax(log P + λ W Y) from Y = P; stop when the energy changes by ≤ 1e-8 of itself.

    The energy is the authors' Σ Y·unary − λ Σ Y·(λ W Y_old) + Σ Y log Y.
    """
    unary = -torch.log(probs + 1e-10)
    y = torch.softmax(-unary, 1)
    old = None
    for i in range(max_steps):
        pair = lam * (w @ y)
        y = torch.softmax(-unary + pair, 1)
        energy = (unary * y).sum() - lam * (pair * y).sum() + (y * torch.log(y)).sum()
        energy = energy.item()
        if i > 1 and abs(energy - old) <= 1e-8 * abs(old):
            break
        old = energy
    return y


def test_lame_rbf_affinity_and_fixed_point_on_fixed_inputs():
    feats = F.normalize(torch.randn(12, 6, generator=gen(4), dtype=DT), dim=1)
    probs = torch.softmax(3 * torch.randn(12, C, generator=gen(5), dtype=DT), 1)
    w = affinity(feats, "rbf", 5)
    close(w, ref_rbf(feats, 5))
    unary = -torch.log(probs + 1e-10)
    for steps in (1, 2, 3, 100):
        close(laplacian_optimization(unary, w, 1.0, steps), ref_lame(probs, w, 1.0, steps))
    close(laplacian_optimization(unary, w, 0.5), ref_lame(probs, w, 0.5))
    y = laplacian_optimization(unary, w, 1.0, 100)
    assert not torch.allclose(y, probs, atol=1e-3)
    # the result is (close to) a fixed point
    close(y, torch.softmax(torch.log(probs + 1e-10) + w @ y, 1), tol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_lame_knn_affinity_has_k_ones_per_row(k):
    feats = F.normalize(torch.randn(9, 4, generator=gen(6), dtype=DT), dim=1)
    w = affinity(feats, "knn", k)
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(w.sum(1), torch.full((9,), float(k), dtype=DT))
    assert torch.equal(torch.diagonal(w), torch.zeros(9, dtype=DT))
    d = torch.cdist(feats, feats)
    for i in range(9):
        nearest = [j for j in torch.argsort(d[i]).tolist() if j != i][:k]
        assert torch.nonzero(w[i]).flatten().tolist() == sorted(nearest)


def test_lame_knn_affinity_excludes_self_with_duplicate_features():
    base = F.normalize(torch.randn(8, 4, generator=gen(6), dtype=DT), dim=1)
    feats = torch.cat([base, base])  # every sample twice (e.g. repeated images in a batch)
    w = affinity(feats, "knn", 3)
    assert torch.equal(w.sum(1), torch.full((16,), 3.0, dtype=DT))
    assert torch.equal(torch.diagonal(w), torch.zeros(16, dtype=DT))
    for i in range(8):  # the twin is the nearest other point
        assert w[i, i + 8] == 1 and w[i + 8, i] == 1


@pytest.mark.parametrize("size, knn", [(1, 5), (4, 1)])
def test_lame_degenerate_sigma_gives_finite_output(size, knn):
    net = make_net()
    x = batches(1)[0][:size]
    y = tta.adapt(net, "lame", knn=knn)(x)
    assert torch.isfinite(y).all()
    close(y.sum(1), torch.ones(size, dtype=DT))


def test_lame_end_to_end_equals_reference_and_changes_nothing():
    net = make_net()
    xs = batches(3)
    adapted = tta.adapt(net, "lame")
    assert adapted.options["norm"] == "source"
    start = copy.deepcopy(adapted.state_dict())
    params = start_params(net)
    for x in xs:
        y = adapted(x)
        feats = ref_features(net, params, x, norm="source")
        logits = F.linear(feats, net.fc.weight, net.fc.bias)
        probs = torch.softmax(logits, 1)
        want = ref_lame(probs, ref_rbf(F.normalize(feats, dim=1), 5))
        close(y, want.detach(), tol=1e-10)
        close(y.sum(1), torch.ones(B, dtype=DT))
        assert not torch.allclose(y, probs, atol=1e-3)
    assert_same(adapted.state_dict(), start)
    assert adapted.optimizer is None
    for p in adapted.parameters():
        assert not p.requires_grad


def test_classifier_of_finds_known_heads():
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # architectures only: no weights are allocated or initialised
        r = torchvision.models.resnet18()
        m = torchvision.models.mobilenet_v3_small()
        e = torchvision.models.efficientnet_b0()
        t = timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert classifier_of(r) is r.fc
    assert classifier_of(m) is m.classifier[-1] and isinstance(m.classifier[-1], nn.Linear)
    assert classifier_of(e) is e.classifier[-1] and isinstance(e.classifier[-1], nn.Linear)
    assert classifier_of(t) is t.get_classifier() and t.get_classifier() is t.fc

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

    assert classifier_of(Wrapped(r)) is r.fc


def test_classifier_of_unknown_model_raises():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 5))
    with pytest.raises(TTAError, match="get_classifier"):
        classifier_of(net)
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    with pytest.raises(TTAError, match="get_classifier"):
        tta.adapt(plain, "lame")


# --------------------------------------------------------------------------------------------
# every method × norm: reset and state round trip
# --------------------------------------------------------------------------------------------

METHOD_OPTS = {
    "eta": dict(lr=1e-2, d_margin=0.5),
    "eata": dict(lr=1e-2, d_margin=0.5, fisher_alpha=100.0),
    "sar": dict(lr=0.05, reset_threshold=0.0),
    "deyo": dict(lr=1e-2, plpd_threshold=0.0),
    "lame": dict(),
}
NORMS = [None, "unmix-tns", "rbn"]


def wrap(net, method, norm):
    opts = dict(METHOD_OPTS[method])
    if norm is not None:
        opts["norm"] = norm
    if norm == "unmix-tns":
        opts["num_components"] = 4
    if norm == "rbn":
        opts["norm_momentum"] = 0.3
    ctx = tta.RunContext(seed=7, batch_size=8, source_images=source_images(10))
    return tta.adapt(net, method, context=ctx, **opts)


def adapts(method, norm) -> bool:
    return not (method == "lame" and norm is None)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", list(METHOD_OPTS))
def test_reset_is_bit_exact(method, norm):
    net = make_net()
    xs = batches(3)
    a = wrap(net, method, norm)
    start = copy.deepcopy(a.state_dict())
    y0 = a(xs[0])
    a(xs[1])
    if adapts(method, norm):
        assert differs(a.state_dict(), start)
        assert not torch.equal(a(xs[0]), y0)
    if a.optimizer is not None:
        assert len(a.optimizer.state) > 0  # some update happened
    a.reset()
    assert_same(a.state_dict(), start)
    assert torch.equal(a(xs[0]), y0)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", list(METHOD_OPTS))
def test_state_round_trip(method, norm):
    net = make_net()
    xs = batches(4)
    a = wrap(net, method, norm)
    for x in xs[:3]:
        a(x)
    b = wrap(net, method, norm)
    b.load_state_dict(a.state_dict())
    assert_same(b.state_dict(), a.state_dict())
    assert torch.equal(a(xs[3]), b(xs[3]))
    sa, sb = a.state_dict(), b.state_dict()
    assert_same(sb, sa)
    extra = sa["method._extra_state"]["vars"]
    if method in ("eta", "eata"):
        assert extra["mean_probs"] is not None
        assert torch.equal(a.method.mean_probs, b.method.mean_probs)
        assert a.method.num_used == b.method.num_used > 0
    if method == "sar":
        assert extra["loss_ema"] is not None and a.method.loss_ema == b.method.loss_ema
    if method == "deyo":
        assert torch.equal(a.method.rng_state, b.method.rng_state)
        fresh = wrap(net, method, norm).method.rng_state
        assert not torch.equal(a.method.rng_state, fresh)
    if a.optimizer is not None:
        assert len(a.optimizer.state) > 0
    # and the copies stay together on the batch after
    assert torch.equal(a(xs[0]), b(xs[0]))


@pytest.mark.parametrize("method", ["eta", "eata", "sar", "deyo"])
def test_stateful_norm_moves_once_per_test_batch(method):
    """Extra forwards (EATA's Fisher on source images, SAR's second pass, DeYO's x') leave rbn's
    statistics as the test batch alone moves them: μ ← (1−a)μ + a·μ_batch, once."""
    net = make_net()
    x = batches(1)[0]
    a = 0.3
    adapted = wrap(net, method, "rbn")
    bn = adapted.model.bn1
    assert torch.equal(bn.running_mean, net.bn1.running_mean)  # nothing moved at wrapping
    assert torch.equal(bn.running_var, net.bn1.running_var)
    rng = adapted.method.rng_state.clone() if method == "deyo" else None
    adapted(x)
    if method == "deyo":
        assert not torch.equal(adapted.method.rng_state, rng)  # x' was forwarded
    h = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)  # bn1's input: no γ, β yet
    mean = h.mean((0, 2, 3))
    var = ((h - mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    close(bn.running_mean, (1 - a) * net.bn1.running_mean + a * mean)
    close(bn.running_var, (1 - a) * net.bn1.running_var + a * var)


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def test_optimizer_options_rule():
    net = make_net()
    with pytest.raises(TTAError, match="norm_momentum"):
        tta.adapt(net, "tent", norm="rbn", momentum=0.1)
    for key, value in [
        ("lr", float("inf")),
        ("lr", 1e30),
        ("lr", float("nan")),
        ("weight_decay", float("inf")),
    ]:
        with pytest.raises(TTAError, match=f"'{key}'"):
            tta.adapt(net, "tent", **{key: value})
    with pytest.raises(TTAError, match="'betas'"):
        tta.adapt(net, "sar", betas=(0.9, 0.99))
    # the optimiser that reads an option accepts it
    assert tta.adapt(net, "sar", optimizer="adam", betas=(0.9, 0.99)).optimizer.defaults[
        "betas"
    ] == (0.9, 0.99)
    assert tta.adapt(net, "tent", norm="rbn", norm_momentum=0.1).model.bn1.momentum == 0.1
