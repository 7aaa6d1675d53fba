"""NOTE and its Instance-Aware BatchNorm against written-out references: the IABN formula in
numpy (float64), the PBRS reservoir on scripted streams, the update positions and step."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta
import tta.methods.note  # noqa: F401  (registers "note")
import tta.norms.iabn  # noqa: F401  (registers "iabn")
from tta._errors import TTAError
from tta.methods.note import note_entropy, pbrs_insert
from tta.norms.iabn import InstanceAwareBatchNorm
from tta.norms.unmix_tns import UnMixTNS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_bn(c: int, seed: int, cls=nn.BatchNorm2d) -> nn.Module:
    g = gen(seed)
    bn = cls(c)
    with torch.no_grad():
        bn.running_mean.copy_(0.5 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
        bn.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=g))
        bn.bias.copy_(0.3 * torch.randn(c, generator=g))
    return bn.double().eval()


def features(b=6, c=4, h=4, w=5, seed=1) -> torch.Tensor:
    """Per-sample offsets and scales: some instance statistics fall inside the shrinkage band
    around the running statistics, some outside (checked where it matters)."""
    g = gen(seed)
    shift = torch.randn(b, c, 1, 1, generator=g, dtype=torch.float64)
    scale = 0.4 + 1.2 * torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64)
    return shift + scale * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# IABN written out in numpy (NOTE paper, eqs. for μ, σ² with soft shrinkage)
# ------------------------------------------------------------------------------------------------
def shrink(d: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return np.where(d > lam, d - lam, np.where(d < -lam, d + lam, 0.0))


def numpy_iabn(x, mean_r, var_r, w, b, eps, k, train):
    x = x.numpy()
    bsz, c = x.shape[:2]
    length = int(np.prod(x.shape[2:]))
    flat = x.reshape(bsz, c, length)
    mu = flat.mean(2)
    var = flat.var(2, ddof=1)
    if train:
        per_channel = flat.transpose(1, 0, 2).reshape(c, -1)
        mb, vb = per_channel.mean(1), per_channel.var(1, ddof=1)
    else:
        mb, vb = mean_r.numpy(), var_r.numpy()
    s_mu = np.sqrt((vb + eps) / length)
    s_var = (vb + eps) * np.sqrt(2.0 / (length - 1))
    d_mu, d_var = mu - mb, var - vb
    mu_adj = mb + shrink(d_mu, k * s_mu)
    var_adj = np.maximum(vb + shrink(d_var, k * s_var), 0.0)
    y = (flat - mu_adj[..., None]) / np.sqrt(var_adj[..., None] + eps)
    y = y * w.detach().numpy()[None, :, None] + b.detach().numpy()[None, :, None]
    inside = (np.abs(d_mu) <= k * s_mu).sum(), (np.abs(d_var) <= k * s_var).sum()
    return y.reshape(x.shape), mb, vb, inside


@pytest.mark.parametrize("k", [4.0, 1.5])
def test_iabn_eval_matches_written_out_formula(k):
    bn = random_bn(4, seed=0)
    layer = InstanceAwareBatchNorm(bn, k=k).eval()
    x = features()
    want, _, _, (in_mu, in_var) = numpy_iabn(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, k, train=False
    )
    n = x.shape[0] * x.shape[1]
    assert 0 < in_mu < n and 0 < in_var < n  # both sides of the shrinkage threshold occur
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=0, atol=1e-12)
    assert torch.equal(layer.running_mean, bn.running_mean)  # eval: no state change
    assert torch.equal(layer.running_var, bn.running_var)


def test_iabn_train_uses_batch_stats_and_moves_running_stats_like_batchnorm():
    bn = random_bn(4, seed=0)
    layer = InstanceAwareBatchNorm(bn, k=4.0, momentum=0.01).train()
    x = features(b=5)
    want, mb, vb, _ = numpy_iabn(x, None, None, bn.weight, bn.bias, bn.eps, 4.0, train=True)
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=0, atol=1e-12)
    src_m, src_v = bn.running_mean.numpy(), bn.running_var.numpy()
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.99 * src_m + 0.01 * mb, atol=1e-14)
    np.testing.assert_allclose(layer.running_var.numpy(), 0.99 * src_v + 0.01 * vb, atol=1e-14)
    torch_bn = copy.deepcopy(bn).train()  # torch's own update with the same momentum
    torch_bn.momentum = 0.01
    torch_bn(x)
    torch.testing.assert_close(layer.running_mean, torch_bn.running_mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(layer.running_var, torch_bn.running_var, rtol=0, atol=1e-14)
    # a second eval forward now reads the moved statistics
    layer.eval()
    want, *_ = numpy_iabn(
        x, layer.running_mean, layer.running_var, bn.weight, bn.bias, bn.eps, 4.0, False
    )
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=0, atol=1e-12)


def test_iabn_gradients_through_the_statistics():
    bn = random_bn(3, seed=2)
    x = features(b=3, c=3, h=3, w=3, seed=3).requires_grad_(True)
    for train in (False, True):
        layer = InstanceAwareBatchNorm(bn, k=1.0).train(train)
        params = (x, layer.weight, layer.bias)
        forward = lambda *a, layer=layer: layer(a[0])  # noqa: E731
        assert torch.autograd.gradcheck(forward, params, eps=1e-6, atol=1e-7)


def test_iabn_limits_k_infinite_is_bn_and_k_zero_is_instance_norm():
    bn = random_bn(4, seed=0)
    x = features()
    eps = bn.eps
    wide = InstanceAwareBatchNorm(bn, k=math.inf).eval()
    torch.testing.assert_close(wide(x), bn(x), rtol=0, atol=1e-12)
    wide.train()
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    want = F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, eps)
    torch.testing.assert_close(wide(x), want, rtol=0, atol=1e-12)
    for train in (False, True):
        zero = InstanceAwareBatchNorm(bn, k=0.0).train(train)
        mu, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=True, keepdim=True)
        want = (x - mu) / torch.sqrt(var + eps) * bn.weight.view(1, -1, 1, 1)
        want = want + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(zero(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 1, 1)])
def test_iabn_single_position_behaves_like_the_source_batchnorm(shape):
    cls = nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d
    bn = random_bn(5, seed=4, cls=cls)
    x = torch.randn(*shape, generator=gen(5), dtype=torch.float64)
    layer = InstanceAwareBatchNorm(bn, momentum=0.01).eval()
    torch.testing.assert_close(layer(x), bn(x), rtol=0, atol=1e-14)
    torch_bn = copy.deepcopy(bn).train()
    torch_bn.momentum = 0.01
    layer.train()
    torch.testing.assert_close(layer(x), torch_bn(x), rtol=0, atol=1e-14)
    torch.testing.assert_close(layer.running_var, torch_bn.running_var, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# small networks
# ------------------------------------------------------------------------------------------------
class Net(nn.Module):
    """conv-BN2d-ReLU twice, pooling, linear, BN1d on the logits (an L = 1 layer)."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc, self.head = nn.Linear(6, classes), nn.BatchNorm1d(classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.head(self.fc(h.mean((2, 3))))


def make_net(seed: int = 0) -> Net:
    g = gen(seed)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for bn in (net.bn1, net.bn2, net.head):
            bn.running_mean.copy_(0.2 * torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
    return net.eval()


def stream(n: int, b: int, seed: int = 7) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.rand(b, 3, 8, 8, generator=g) * (1.0 + 0.2 * i) for i in range(n)]


class ChannelNet(nn.Module):
    """Predicts the brightest input channel: BN2d (source mean 0, var 1), pooling, identity."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return 10.0 * self.bn(x).mean((2, 3))


def scripted_stream(labels: list[int], b: int, seed: int = 3) -> list[torch.Tensor]:
    """Unique images whose channel ``label`` is bright: the pseudo-labels are ``labels``."""
    x = 0.1 * torch.randn(len(labels), 3, 4, 4, generator=gen(seed))
    x[torch.arange(len(labels)), torch.tensor(labels)] += 5.0
    return list(x.split(b))


def correlated_labels(n: int, classes: int = 3, seed: int = 11) -> list[int]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        out += [rng.randrange(classes)] * rng.randrange(3, 40)
    return out[:n]


# ------------------------------------------------------------------------------------------------
# PBRS
# ------------------------------------------------------------------------------------------------
class Scripted:
    """A stand-in for random.Random returning preset draws and logging each call."""

    def __init__(self, choices, ranges, uniforms):
        self.choices, self.ranges, self.uniforms = list(choices), list(ranges), list(uniforms)
        self.calls = []

    def choice(self, seq):
        self.calls.append(("choice", list(seq)))
        return seq[self.choices.pop(0)]

    def randrange(self, a, b):
        self.calls.append(("randrange", a, b))
        return self.ranges.pop(0)

    def uniform(self, a, b):
        self.calls.append(("uniform", a, b))
        return self.uniforms.pop(0)


def test_pbrs_hand_derived_stream():
    slots, seen = [[], [], []], [0, 0, 0]
    rng = Scripted(choices=[0, 0, 0], ranges=[1, 0, 1, 0], uniforms=[0.5, 0.9])
    got = [pbrs_insert(slots, seen, 4, c, rng) for c in [0, 0, 0, 1, 0, 2, 1, 1, 0]]
    # fill slots 0-3; then: class 0 (largest, u=.5 <= 3/4) replaces its 2nd sample (slot 1);
    # class 2 evicts class 0's 1st (slot 0); class 1 evicts class 0's 2nd (slot 1, the one
    # re-filled at step 5); class 1 (now largest, u=.9 > 2/3) is dropped; class 0 evicts
    # class 1's 1st sample (slot 3).
    assert got == [0, 1, 2, 3, 1, 0, 1, None, 3]
    assert slots == [[2, 3], [1], [0]]
    assert seen == [5, 3, 1]
    assert rng.calls == [
        ("uniform", 0, 1), ("randrange", 0, 3),
        ("choice", [0]), ("randrange", 0, 3),
        ("choice", [0]), ("randrange", 0, 2),
        ("uniform", 0, 1),
        ("choice", [1]), ("randrange", 0, 2),
    ]  # fmt: skip


def test_pbrs_tie_between_largest_classes():
    slots, seen = [[], [], []], [0, 0, 0]
    rng = Scripted(choices=[1], ranges=[0], uniforms=[])
    for c in [0, 0, 1, 1]:
        pbrs_insert(slots, seen, 4, c, rng)
    assert pbrs_insert(slots, seen, 4, 2, rng) == 2  # class 1 chosen among [0, 1]
    assert slots == [[0, 1], [3], [2]] and rng.calls == [("choice", [0, 1]), ("randrange", 0, 2)]


def plain_pbrs(labels: list[int], classes: int, capacity: int, seed: int) -> list[list[int]]:
    """The reservoir as the NOTE paper states it, storing stream indices per class."""
    rng, store, counts = random.Random(seed), [[] for _ in range(classes)], [0] * classes
    for index, c in enumerate(labels):
        counts[c] += 1
        if sum(map(len, store)) >= capacity:
            sizes = [len(s) for s in store]
            largest = [j for j in range(classes) if sizes[j] == max(sizes)]
            if c not in largest:
                j = rng.choice(largest)
                del store[j][rng.randrange(0, len(store[j]))]
            elif rng.uniform(0, 1) <= len(store[c]) / counts[c]:
                del store[c][rng.randrange(0, len(store[c]))]
            else:
                continue
        store[c].append(index)
    return store


def test_pbrs_matches_plain_model_on_long_stream():
    labels = correlated_labels(3000, classes=10)
    slots, seen, where = [[] for _ in range(10)], [0] * 10, {}
    rng = random.Random(5)
    for index, c in enumerate(labels):
        slot = pbrs_insert(slots, seen, 64, c, rng)
        if slot is not None:
            where[slot] = index
    expected = plain_pbrs(labels, 10, 64, seed=5)
    assert [[where[s] for s in cls] for cls in slots] == expected
    assert seen == [labels.count(c) for c in range(10)]


def memory_ids(method, samples: torch.Tensor) -> list[int]:
    """Stream index of each memory row, in the order the memory batch is formed."""
    rows = method.memory_batch()
    return [int((samples == r).flatten(1).all(1).nonzero()[0]) for r in rows]


@pytest.mark.parametrize("batch", [48, 64])
def test_note_memory_and_update_positions_on_scripted_stream(batch):
    labels = correlated_labels(256)
    batches = scripted_stream(labels, batch)
    model = tta.adapt(ChannelNet().eval(), "note", context=tta.RunContext(seed=3))
    method = model.method
    log = []
    update = method.update

    def logged():
        log.append((method.num_seen, memory_ids(method, torch.cat(batches))))
        update()

    method.update = logged
    outputs = [model(x) for x in batches]
    assert torch.cat(outputs).argmax(1).tolist() == labels  # the pseudo-labels are scripted
    assert [seen for seen, _ in log] == [64, 128, 192, 256]
    for seen, ids in log:
        expected = plain_pbrs(labels[:seen], 3, 64, seed=3)
        assert ids == [i for cls in expected for i in cls]
    assert memory_ids(method, torch.cat(batches)) == log[-1][1]
    assert method.num_updates == 4


def test_update_inside_a_batch_leaves_that_batch_prediction_alone():
    net, xs = make_net(), stream(3, 48)
    note = tta.adapt(net, "note")
    frozen = tta.adapt(net, "iabn")
    out = [note(x) for x in xs]
    assert torch.equal(out[1], frozen(xs[1]))  # first update at sample 64, inside batch 1
    assert not torch.allclose(out[2], frozen(xs[2]), atol=1e-7)


def test_update_is_one_adam_step_of_the_hloss_in_train_mode():
    net, xs = make_net(), stream(1, 64)
    model = tta.adapt(net, "note", lr=1e-3)
    method = model.method
    before = {}
    update = method.update

    def logged():
        before["net"] = copy.deepcopy(model.model)
        before["memory"] = method.memory_batch().clone()
        update()

    method.update = logged
    model(xs[0])
    ref = before["net"]
    norms = [ref.get_submodule(n) for n in model.adapted_layers]
    params = [p for layer in norms for p in (layer.weight, layer.bias)]
    for layer in norms:
        layer.train()
    p = ref(before["memory"]).softmax(1)
    loss = -(p * torch.log(p + 1e-6)).sum() / p.numel()
    grads = torch.autograd.grad(loss, params)
    now = [p for n in model.adapted_layers for p in model.model.get_submodule(n).parameters()]
    for p_new, p_old, g in zip(now, params, grads):  # Adam's first step: −lr·g/(|g| + ε)
        torch.testing.assert_close(p_new, p_old - 1e-3 * g / (g.abs() + 1e-8), rtol=0, atol=1e-7)
    # the train-mode forward moved IABN's running statistics (momentum 0.01)
    assert not torch.equal(model.model.bn1.running_mean, net.bn1.running_mean)


def test_note_entropy_is_mean_over_batch_and_classes():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    want = float(np.mean(-p * np.log(p + 1e-6)))
    assert note_entropy(logits).item() == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# state, compositions, errors
# ------------------------------------------------------------------------------------------------
def test_reset_and_determinism_bit_exact():
    net, xs = make_net(), stream(4, 48)
    a = tta.adapt(net, "note", context=tta.RunContext(seed=1))
    first = [a(x) for x in xs]
    a.reset()
    again = [a(x) for x in xs]
    fresh = tta.adapt(net, "note", context=tta.RunContext(seed=1))
    other = [fresh(x) for x in xs]
    assert all(torch.equal(u, v) and torch.equal(u, w) for u, v, w in zip(first, again, other))
    assert a.method.num_updates == 3


def test_state_round_trip_includes_memory():
    net, xs = make_net(), stream(5, 48)
    a = tta.adapt(net, "note", context=tta.RunContext(seed=2))
    for x in xs[:2]:  # 96 samples: one update, 32 samples since
        a(x)
    b = tta.adapt(net, "note", context=tta.RunContext(seed=2))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.method.memory, b.method.memory)
    assert a.method.class_slots == b.method.class_slots
    for x in xs[2:]:
        assert torch.equal(a(x), b(x))
    assert torch.equal(a.method.memory, b.method.memory) and a.method.num_updates == 3


@pytest.mark.parametrize("norm", ["unmix-tns", "tbn", "rbn"])
def test_note_over_other_norms_runs_and_adapts(norm):
    net, xs = make_net(), stream(3, 64)
    model = tta.adapt(net, "note", norm=norm, context=tta.RunContext(seed=0, batch_size=64))
    start = [p.detach().clone() for p in model.method.norm_parameters()]
    for x in xs:
        assert torch.isfinite(model(x)).all()
    assert model.method.num_updates == 3
    moved = [not torch.equal(p, q) for p, q in zip(model.method.norm_parameters(), start)]
    assert any(moved)
    if norm == "unmix-tns":
        assert isinstance(model.model.bn1, UnMixTNS)


def test_iabn_alone_is_per_sample_and_stateless():
    net, x = make_net(), stream(1, 6)[0]
    model = tta.adapt(net, "iabn")
    whole = model(x)
    single = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(whole, single, rtol=0, atol=1e-6)
    assert torch.equal(model.model.bn1.running_mean, net.bn1.running_mean)


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"memory_size": 0}, "option 'memory_size' .*>= 1"),
        ({"update_every": 0}, "option 'update_every' .*>= 1"),
        ({"k": -1.0}, "option 'k' .*>= 0"),
        # the norm layer's own name for it
        ({"norm_momentum": 1.5}, r"option 'momentum' .*\(norm 'iabn'\) must be in \[0, 1\]"),
        ({"lr": 0.0}, "option 'lr' .*> 0"),
        # SGD's option under Adam
        ({"momentum": 0.5}, "option 'momentum' .*optimizer='sgd'.*'norm_momentum'"),
        ({"steps": 2}, "unknown option 'steps'"),
        ({"memory_size": "64"}, "option 'memory_size' .*must be int"),
    ],
)
def test_bad_options(options, pattern):
    with pytest.raises(TTAError, match=pattern):
        tta.adapt(make_net(), "note", **options)


def test_changed_input_size_is_an_error():
    model = tta.adapt(make_net(), "note")
    model(torch.rand(4, 3, 8, 8))
    with pytest.raises(TTAError, match="reset"):
        model(torch.rand(4, 3, 6, 6))
