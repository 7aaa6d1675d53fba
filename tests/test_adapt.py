"""tta.adapt: the BatchNorm swap, the wrapper's modes and dtype, reset, state_dict and errors."""

from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import tta


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_batchnorms(model: nn.Module, seed: int = 1, spread: float = 0.5) -> nn.Module:
    """Non-trivial running statistics, γ and β on every BatchNorm of ``model``."""
    g = gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                c = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(c, generator=g) * spread * 0.2)
                    m.running_var.copy_(1.0 + (torch.rand(c, generator=g) - 0.5) * spread)
                if m.affine:
                    m.weight.copy_(1.0 + torch.randn(c, generator=g) * spread * 0.2)
                    m.bias.copy_(torch.randn(c, generator=g) * spread * 0.2)
    return model


def batchnorms_to_batch_stats(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorms (only) run in train mode: normalise with batch statistics."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, _BatchNorm):
            m.train()
    return ref


class Containers(nn.Module):
    """BatchNorms in a Sequential, a ModuleList, a ModuleDict and plain attributes."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.mlist = nn.ModuleList([nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)])
        self.mdict = nn.ModuleDict({"norm": nn.BatchNorm2d(4), "conv": nn.Conv2d(4, 6, 1)})
        self.bn_attr = nn.BatchNorm2d(6)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
        self.bn_out = nn.BatchNorm1d(5)

    def forward(self, x):
        x = self.seq(x)
        x = self.mlist[1](torch.relu(self.mlist[0](x)))
        x = self.mdict["conv"](self.mdict["norm"](x))
        return self.bn_out(self.head(torch.relu(self.bn_attr(x))))


class SmallNet(nn.Module):
    """Conv-BN-ReLU ×2, dropout, pooled linear head: small enough for every test."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x):
        return self.head(self.features(x))


def small_net(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # weights of the test network only
    return randomize_batchnorms(SmallNet(dropout), seed=seed + 1).eval()


def batches(n: int, shape=(6, 3, 5, 5), seed: int = 10) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(shape, generator=g) * (1 + 0.3 * i) + 0.2 * i for i in range(n)]


def tensors_of(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items() if torch.is_tensor(v)}


def assert_same(a, b, where="state"):
    """Recursive bit-exact equality of nested dicts/lists/tuples of tensors and scalars."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------------------
# the swap
# --------------------------------------------------------------------------------------------


def test_available_methods_lists_every_method():
    names = tta.available_methods()
    for name in ["source", "tbn", "alpha-bn", "rbn", "unmix-tns", "tent", "core"]:
        assert name in names and isinstance(names[name], str) and names[name]


@pytest.mark.parametrize("method", ["source", "tbn", "alpha-bn", "rbn", "unmix-tns"])
def test_swap_replaces_batchnorm_in_every_container(method):
    torch.manual_seed(0)
    net = randomize_batchnorms(Containers()).eval()
    adapted = tta.adapt(net, method)
    left = [n for n, m in adapted.model.named_modules() if isinstance(m, _BatchNorm)]
    assert left == []
    assert len(adapted.adapted_layers) == 5
    for name in ["seq.1", "mlist.0", "mdict.norm", "bn_attr", "bn_out"]:
        assert not isinstance(adapted.model.get_submodule(name), _BatchNorm)
    x = torch.randn(4, 3, 5, 5, generator=gen(3))
    assert adapted(x).shape == (4, 5)


def test_swap_in_containers_source_and_tbn_outputs():
    torch.manual_seed(0)
    net = randomize_batchnorms(Containers()).eval()
    x = torch.randn(4, 3, 5, 5, generator=gen(3))
    assert torch.equal(tta.adapt(net, "source")(x), net(x))
    with torch.no_grad():
        expected = batchnorms_to_batch_stats(net)(x)
    torch.testing.assert_close(tta.adapt(net, "tbn")(x), expected, rtol=1e-5, atol=1e-5)


class SharedBN(nn.Module):
    """One BatchNorm instance registered under two names and used twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.again = self.bn

    def forward(self, x):
        return self.again(torch.relu(self.bn(self.conv(x))) * 2.0)


def test_swap_replaces_a_batchnorm_registered_under_two_names():
    torch.manual_seed(0)
    net = randomize_batchnorms(SharedBN()).eval()
    adapted = tta.adapt(net, "tbn")
    left = [
        n
        for n, m in adapted.model.named_modules(remove_duplicate=False)
        if isinstance(m, _BatchNorm)
    ]
    assert left == [], f"BatchNorm left in place at {left}"
    x = torch.randn(4, 3, 5, 5, generator=gen(3))
    with torch.no_grad():
        expected = batchnorms_to_batch_stats(net)(x)
    torch.testing.assert_close(adapted(x), expected, rtol=1e-5, atol=1e-5)


def test_swap_sync_batchnorm_and_plain_subclass():
    class MyBN(nn.BatchNorm2d):
        pass

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.ReLU(), MyBN(4))
    net = randomize_batchnorms(net).eval()
    x = torch.randn(2, 3, 4, 4, generator=gen(3))
    adapted = tta.adapt(net, "source")
    assert not any(isinstance(m, _BatchNorm) for m in adapted.model.modules())
    assert torch.equal(adapted(x), net(x))


def test_swap_refuses_a_batchnorm_whose_forward_it_does_not_know():
    class Odd(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(nn.Conv2d(3, 4, 1), Odd(4))
    with pytest.raises(TypeError, match="'1'"):
        tta.adapt(net, "tbn")


def test_timm_batchnormact_keeps_its_activation():
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU))
    net = randomize_batchnorms(net).eval()
    x = torch.randn(3, 3, 6, 6, generator=gen(3))
    assert torch.equal(tta.adapt(net, "source")(x), net(x))
    y = tta.adapt(net, "tbn")(x)
    with torch.no_grad():
        h = net[0](x)
        mean = h.mean((0, 2, 3), keepdim=True)
        var = h.var((0, 2, 3), unbiased=False, keepdim=True)
        bn = net[1]
        z = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1)
        expected = torch.relu(z + bn.bias.view(1, -1, 1, 1))
    assert (y == 0).any()  # the activation ran
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@functools.cache
def _timm(name):
    """Built once per session; tests never modify it (tta.adapt works on a copy)."""
    import timm

    torch.manual_seed(0)
    return randomize_batchnorms(timm.create_model(name, pretrained=False), spread=0.2).eval()


@functools.cache
def _resnet18():
    import torchvision

    torch.manual_seed(0)
    return randomize_batchnorms(torchvision.models.resnet18(num_classes=10), spread=0.2).eval()


@pytest.fixture(scope="module", params=["efficientnet_b0", "mobilenetv3_large_100", "resnet18"])
def big_model(request):
    if request.param == "resnet18":
        return _resnet18()
    return _timm(request.param)


def test_real_models_source_equals_eval_exactly(big_model):
    x = torch.randn(2, 3, 64, 64, generator=gen(5))
    n_bn = sum(isinstance(m, _BatchNorm) for m in big_model.modules())
    adapted = tta.adapt(big_model, "source")
    assert len(adapted.adapted_layers) == n_bn > 10
    assert not any(isinstance(m, _BatchNorm) for m in adapted.model.modules())
    with torch.no_grad():
        expected = big_model.eval()(x)
    y = adapted(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y, expected)


def test_real_model_tbn_equals_train_mode_batchnorm():
    model = _timm("mobilenetv3_large_100")
    x = torch.randn(2, 3, 64, 64, generator=gen(5))
    with torch.no_grad():
        expected = batchnorms_to_batch_stats(model)(x)
    torch.testing.assert_close(tta.adapt(model, "tbn")(x), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# the wrapper leaves the original alone, runs in eval mode, follows .to()
# --------------------------------------------------------------------------------------------

METHODS = [
    ("source", {}),
    ("tbn", {}),
    ("alpha-bn", {"alpha": 0.5}),
    ("rbn", {"momentum": 0.3}),
    ("unmix-tns", {"num_components": 3}),
    ("tent", {"lr": 1e-2}),
    ("core", {"lr": 1e-2}),
    ("tent", {"norm": "unmix-tns", "num_components": 3, "lr": 1e-2}),
    ("iabn", {}),
    # the memory methods update every 4 samples here, so each batch of 6 updates mid-batch
    ("note", {"lr": 1e-2, "memory_size": 8, "update_every": 4}),
    ("note", {"norm": "unmix-tns", "num_components": 3, "lr": 1e-2, "update_every": 4}),
    ("rotta", {"lr": 1e-2, "memory_size": 8, "update_every": 4}),
    ("rotta", {"norm": "unmix-tns", "num_components": 3, "lr": 1e-2, "update_every": 4}),
    ("cotta", {"lr": 1e-2, "n_augmentations": 2, "ap": 1.0, "rst": 0.1}),
    ("cotta", {"norm": "unmix-tns", "num_components": 3, "n_augmentations": 2, "ap": 1.0}),
    ("roid", {"lr": 1e-2}),
    ("roid", {"norm": "unmix-tns", "num_components": 3, "lr": 1e-2}),
]
IDS = [m + ("+" + o["norm"] if "norm" in o else "") for m, o in METHODS]


@pytest.mark.parametrize("method,options", METHODS, ids=IDS)
def test_original_model_is_not_modified(method, options):
    net = small_net(dropout=0.2)
    net.train()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    modes = {n: m.training for n, m in net.named_modules()}
    adapted = tta.adapt(net, method, **options)
    for x in batches(3):
        adapted(x)
    for n, p in net.named_parameters():
        assert torch.equal(p, params[n]), n
        assert p.requires_grad == grads[n] and p.grad is None, n
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert not any(isinstance(m, _BatchNorm) for m in adapted.model.modules())
    assert any(isinstance(m, _BatchNorm) for m in net.modules())


@pytest.mark.parametrize("method,options", METHODS, ids=IDS)
def test_wrapper_keeps_network_in_eval_mode(method, options):
    net = small_net(dropout=0.5)
    net.train()  # the mode of the given model plays no part
    plain = small_net(dropout=0.5).eval()
    a = tta.adapt(net, method, **options)
    b = tta.adapt(plain, method, **options)
    a.train()
    assert not any(m.training for m in a.model.modules())
    for x in batches(3):
        assert torch.equal(a(x), b(x))  # dropout off, no dependence on train()/eval()
        a.train()
        b.eval()
    assert not any(m.training for m in a.model.modules())


def test_source_through_wrapper_equals_eval_with_dropout():
    net = small_net(dropout=0.5).train()
    x = batches(1)[0]
    adapted = tta.adapt(net, "source").train()
    with torch.no_grad():
        expected = copy.deepcopy(net).eval()(x)
    assert torch.equal(adapted(x), expected)


def test_to_float64_follows():
    net = small_net()
    x = batches(1)[0].double()
    adapted = tta.adapt(net, "source").to(torch.float64)
    assert all(
        t.dtype == torch.float64 for t in adapted.state_dict().values() if torch.is_tensor(t)
    )
    assert torch.equal(adapted(x), copy.deepcopy(net).double()(x))
    assert next(net.parameters()).dtype == torch.float32


@pytest.mark.parametrize("method,options", METHODS, ids=IDS)
def test_to_float64_every_method_runs_and_resets(method, options):
    net = small_net()
    adapted = tta.adapt(net, method, **options).to(torch.float64)
    xs = [x.double() for x in batches(3)]
    first = [adapted(x) for x in xs]
    assert all(y.dtype == torch.float64 and torch.isfinite(y).all() for y in first)
    state = adapted.state_dict()
    assert all(t.dtype == torch.float64 for t in state.values() if torch.is_tensor(t))
    adapted.reset()
    assert all(
        t.dtype == torch.float64 for t in adapted.state_dict().values() if torch.is_tensor(t)
    )
    for x, y in zip(xs, first):
        assert torch.equal(adapted(x), y)


def test_tent_to_float64_mid_stream():
    net = small_net()
    adapted = tta.adapt(net, "tent")
    xs = batches(3)
    adapted(xs[0])
    adapted.to(torch.float64)
    y = adapted(xs[1].double())
    assert y.dtype == torch.float64 and torch.isfinite(y).all()


# --------------------------------------------------------------------------------------------
# reset and state_dict
# --------------------------------------------------------------------------------------------

STATEFUL = [
    ("rbn", {"momentum": 0.3}),
    ("unmix-tns", {"num_components": 3}),
    ("tent", {"lr": 1e-2}),
    ("tent", {"lr": 1e-2, "optimizer": "sgd", "momentum": 0.9}),
    ("core", {"lr": 1e-2}),
    ("tent", {"norm": "unmix-tns", "num_components": 3, "lr": 1e-2}),
    ("core", {"norm": "rbn", "norm_momentum": 0.3, "lr": 1e-2}),
]
STATEFUL_IDS = [
    m + "".join(f"-{k}={v}" for k, v in o.items() if k in ("norm", "optimizer"))
    for m, o in STATEFUL
]


@pytest.mark.parametrize("method,options", STATEFUL, ids=STATEFUL_IDS)
def test_reset_restores_state_bit_for_bit(method, options):
    net = small_net()
    adapted = tta.adapt(net, method, **options)
    initial = tensors_of(adapted.state_dict())
    initial_extra = copy.deepcopy(adapted.state_dict()["_extra_state"])
    xs = batches(5)
    for x in xs[:3]:
        adapted(x)
    moved = [
        k for k, v in tensors_of(adapted.state_dict()).items() if not torch.equal(v, initial[k])
    ]
    assert moved, "adaptation changed nothing: the test would be vacuous"
    adapted.reset()
    after = tensors_of(adapted.state_dict())
    assert set(after) == set(initial)
    for k in initial:
        assert torch.equal(after[k], initial[k]), k
    assert_same(adapted.state_dict()["_extra_state"], initial_extra, "extra_state")
    if adapted.optimizer is not None:
        assert adapted.optimizer.state_dict()["state"] == {}
    fresh = tta.adapt(net, method, **options)
    for x in xs[3:] + xs[:2]:
        assert torch.equal(adapted(x), fresh(x))
    for k, v in tensors_of(fresh.state_dict()).items():
        assert torch.equal(adapted.state_dict()[k], v), k


@pytest.mark.parametrize("method,options", STATEFUL, ids=STATEFUL_IDS)
def test_reset_twice_and_after_reset(method, options):
    net = small_net()
    adapted = tta.adapt(net, method, **options)
    xs = batches(3)
    first = [adapted(x) for x in xs]
    adapted.reset()
    second = [adapted(x) for x in xs]
    adapted.reset()
    adapted.reset()
    third = [adapted(x) for x in xs]
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b) and torch.equal(a, c)


def _roundtrip_bytes(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("via", ["bytes", "in-memory"])
@pytest.mark.parametrize("method,options", STATEFUL, ids=STATEFUL_IDS)
def test_state_dict_round_trip_gives_identical_outputs(method, options, via):
    net = small_net()
    a = tta.adapt(net, method, **options)
    xs = batches(6)
    for x in xs[:2]:
        a(x)
    if a.optimizer is not None:
        assert a.optimizer.state_dict()["state"], "mid-stream optimiser state expected"
    state = a.state_dict()
    if via == "bytes":
        state = _roundtrip_bytes(state)
    b = tta.adapt(net, method, **options)
    b.load_state_dict(state)
    for x in xs[2:]:
        assert torch.equal(a(x), b(x))
    assert_same(tensors_of(a.state_dict()), tensors_of(b.state_dict()))
    if a.optimizer is not None:
        assert_same(a.optimizer.state_dict(), b.optimizer.state_dict(), "optimizer")


def test_loaded_state_is_independent_of_its_source():
    """Loading a state copies it: adapting the source wrapper further leaves the loaded one be."""
    net = small_net()
    a = tta.adapt(net, "tent", lr=1e-2)
    xs = batches(4)
    for x in xs[:2]:
        a(x)
    b = tta.adapt(net, "tent", lr=1e-2)
    b.load_state_dict(a.state_dict())
    saved = copy.deepcopy(b.optimizer.state_dict())
    a(xs[2])
    a(xs[3])
    assert_same(b.optimizer.state_dict(), saved, "optimizer of the loaded wrapper")


def test_state_dict_of_another_method_is_refused():
    net = small_net()
    state = tta.adapt(net, "tent").state_dict()
    with pytest.raises(ValueError, match="tent"):
        tta.adapt(net, "core").load_state_dict(state)
    with pytest.raises(ValueError, match="lr"):
        tta.adapt(net, "tent", lr=0.5).load_state_dict(state)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_unknown_method_names_the_closest():
    net = small_net()
    with pytest.raises(ValueError, match=r"unknown method 'tnet'.*Did you mean 'tent'"):
        tta.adapt(net, "tnet")
    with pytest.raises(ValueError, match=r"Did you mean 'unmix-tns'") as err:
        tta.adapt(net, "unmix_tns")
    for name in ["source", "tbn", "alpha-bn", "rbn", "unmix-tns", "tent", "core"]:
        assert repr(name) in str(err.value)
    with pytest.raises(TypeError, match="method must be a name"):
        tta.adapt(net, None)


@pytest.mark.parametrize(
    "method,options,bad,suggested,listed",
    [
        ("alpha-bn", {"alhpa": 0.5}, "alhpa", "alpha", ["alpha"]),
        ("rbn", {"momentun": 0.1}, "momentun", "momentum", ["momentum"]),
        (
            "unmix-tns",
            {"num_component": 4},
            "num_component",
            "num_components",
            ["num_components", "temperature", "init_spread", "batch_size", "max_batch_size"],
        ),
        ("tent", {"stpes": 2}, "stpes", "steps", ["lr", "optimizer", "episodic", "norm"]),
        ("core", {"temprature": 1.0}, "temprature", "temperature", ["entropy_weighting", "lr"]),
        ("tent", {"norm": "rbn", "momentm": 0.1}, "momentm", "momentum", ["norm_momentum"]),
    ],
)
def test_unknown_option_lists_valid_and_suggests(method, options, bad, suggested, listed):
    with pytest.raises(TypeError) as err:
        tta.adapt(small_net(), method, **options)
    msg = str(err.value)
    assert repr(bad) in msg
    assert f"Did you mean {suggested!r}" in msg
    for name in listed:
        assert name in msg


def test_source_and_tbn_take_no_options():
    with pytest.raises(TypeError, match="unknown option 'alpha'"):
        tta.adapt(small_net(), "source", alpha=0.5)
    with pytest.raises(TypeError, match="unknown option 'norm'"):
        tta.adapt(small_net(), "tbn", norm="rbn")
    with pytest.raises(TypeError, match="unknown option 'norm_momentum'"):
        tta.adapt(small_net(), "tent", norm="tbn", norm_momentum=0.2)


@pytest.mark.parametrize(
    "method,options",
    [
        ("alpha-bn", {"alpha": "0.5"}),
        ("alpha-bn", {"alpha": None}),
        ("rbn", {"momentum": [0.1]}),
        ("unmix-tns", {"num_components": 2.5}),
        ("unmix-tns", {"num_components": True}),
        ("unmix-tns", {"seed": "1"}),
        ("tent", {"episodic": "yes"}),
        ("tent", {"steps": 1.0}),
        ("tent", {"lr": "1e-3"}),
        ("core", {"entropy_weighting": 1}),
    ],
)
def test_ill_typed_option(method, options):
    ((key, value),) = options.items()
    with pytest.raises(TypeError, match=repr(key)):
        tta.adapt(small_net(), method, **options)


def test_ints_are_accepted_for_float_options():
    adapted = tta.adapt(small_net(), "alpha-bn", alpha=1)
    x = batches(1)[0]
    assert torch.equal(adapted(x), tta.adapt(small_net(), "source")(x))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"'alpha'.*\[0.0, 1.0\]"):
        tta.adapt(small_net(), "alpha-bn", alpha=alpha)


@pytest.mark.parametrize("k", [0, -3])
def test_num_components_below_one(k):
    with pytest.raises(ValueError, match="'num_components'.*>= 1"):
        tta.adapt(small_net(), "unmix-tns", num_components=k)


def test_no_batchnorm_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    x = batches(1)[0]
    for method in ["tbn", "alpha-bn", "rbn", "unmix-tns", "tent", "core"]:
        with pytest.raises(ValueError, match="no BatchNorm layer"):
            tta.adapt(net, method)
    adapted = tta.adapt(net, "source")
    with torch.no_grad():
        assert torch.equal(adapted(x), net(x))


class NoStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleDict({"stats_free": nn.BatchNorm2d(4, track_running_stats=False)})

    def forward(self, x):
        return self.blocks["stats_free"](self.conv(x))


@pytest.mark.parametrize("method", ["source", "alpha-bn", "rbn", "unmix-tns", "core"])
def test_batchnorm_without_running_stats_is_named(method):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"blocks\.stats_free.*track_running_stats=False"):
        tta.adapt(NoStats(), method)


def test_tbn_and_tent_run_on_batchnorm_without_running_stats():
    torch.manual_seed(0)
    net = NoStats().eval()
    x = batches(1)[0]
    with torch.no_grad():
        expected = net(x)  # without running stats BN always uses batch statistics
    torch.testing.assert_close(tta.adapt(net, "tbn")(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tta.adapt(net, "tent")(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", [lambda x: x, "resnet18", None, [nn.BatchNorm2d(3)]])
def test_non_module_model(model):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        tta.adapt(model, "source")


def test_unknown_optimizer():
    with pytest.raises(ValueError, match=r"'optimizer'.*'sdg'.*Did you mean 'sgd'"):
        tta.adapt(small_net(), "tent", optimizer="sdg")
    with pytest.raises(ValueError, match=r"'optimizer'.*\['adam', 'sgd'\]"):
        tta.adapt(small_net(), "core", optimizer="lbfgs")


@pytest.mark.parametrize("lr", [0, 0.0, -1e-3])
@pytest.mark.parametrize("method", ["tent", "core"])
def test_non_positive_lr(method, lr):
    with pytest.raises(ValueError, match=r"'lr'.*> 0"):
        tta.adapt(small_net(), method, lr=lr)


@pytest.mark.parametrize("norm,suggested", [("tbm", "tbn"), ("alpha_bn", "alpha-bn")])
def test_objective_with_unknown_norm(norm, suggested):
    with pytest.raises(ValueError, match=rf"unknown norm method '{norm}'.*'{suggested}'"):
        tta.adapt(small_net(), "tent", norm=norm)


def test_objective_as_norm_is_refused():
    with pytest.raises(ValueError, match="unknown norm method 'core'"):
        tta.adapt(small_net(), "tent", norm="core")


def test_gradient_method_on_model_without_affine():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
    with pytest.raises(ValueError, match="affine"):
        tta.adapt(net, "tent")


def test_failed_adapt_leaves_model_untouched():
    torch.manual_seed(0)
    net = NoStats()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError):
        tta.adapt(net, "rbn")
    assert isinstance(net.blocks["stats_free"], nn.BatchNorm2d)
    assert_same(net.state_dict(), before)
