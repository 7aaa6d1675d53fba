"""CoTTA (Wang et al., CVPR 2022) against the paper's update rules written out on a tiny network."""

from __future__ import annotations

import copy
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

import tta
import tta.methods.cotta  # noqa: F401  (registers "cotta")
from tta._errors import TTAError
from tta.methods.augment import TTAAugment
from tta.methods.cotta import cotta_loss

sys.path.insert(0, str(Path(__file__).parent))
import _nets  # noqa: E402

SEED = 3
# The CoTTA network: parameters drawn with scale 0.5, BatchNorm weights as drawn.
make_net = partial(_nets.make_net, scale=0.5, random_gamma=False)


def batches(n: int, b: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(20)
    return [torch.rand(b, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(n)]


def adapt(net: nn.Module, seed: int = SEED, **options) -> tta.AdaptedModel:
    options = {"lr": 1e-2, **options}
    return tta.adapt(net, "cotta", context=tta.RunContext(seed=seed), **options)


def batch_stat_net(net: nn.Module) -> nn.Module:
    """The source network normalising with batch statistics (BatchNorm in train mode)."""
    ref = copy.deepcopy(net).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return ref


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_loss_on_fixed_logits():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)

    def softmax(row):
        z = sum(math.exp(v) for v in row)
        return [math.exp(v) / z for v in row]

    def ce(p_row, q_row):  # −Σ softmax(p)·log softmax(q)
        return -sum(a * math.log(b) for a, b in zip(softmax(p_row), softmax(q_row)))

    s, t = student.tolist(), teacher.tolist()
    plain = (ce(t[0], s[0]) + ce(t[1], s[1])) / 2
    sym = sum(0.5 * ce(t[i], s[i]) + 0.5 * ce(s[i], t[i]) for i in range(2)) / 2
    assert cotta_loss(student, teacher).item() == pytest.approx(plain, abs=1e-12)
    assert cotta_loss(student, teacher, symmetric=True).item() == pytest.approx(sym, abs=1e-12)


def test_first_batch_student_step_and_teacher_ema():
    """Batch 1, two augmented views, no restore: the target is the source network's mean over
    the views; the student takes one optimiser step on the soft cross-entropy against it, every
    parameter trained; then the teacher is m·source + (1 − m)·student."""
    net, x = make_net(), batches(1)[0]
    m = 0.9
    # SGD: Adam's first step, lr·sign(g), would blow up rounding noise of the zero gradients of
    # the biases in front of a BatchNorm
    options = {"optimizer": "sgd", "momentum": 0.0, "teacher_momentum": m, "rst": 0.0}
    ours = adapt(net, ap=1.0, n_augmentations=2, **options)
    out = ours(x)
    ref = batch_stat_net(net)
    opt = torch.optim.SGD(ref.parameters(), lr=1e-2)
    with torch.no_grad():
        aug, g = TTAAugment(16), torch.Generator().manual_seed(SEED)
        target = torch.stack([ref(aug(x, g)) for _ in range(2)]).mean(0)
    loss = -(target.softmax(1) * ref(x).log_softmax(1)).sum(1).mean()
    loss.backward()
    opt.step()
    torch.testing.assert_close(out, target, rtol=0, atol=1e-12)
    source, student = params(net), params(ref)
    assert ours.method.trainable_names() == list(student)  # every parameter trains
    for name, value in params(ours.model).items():
        torch.testing.assert_close(value, student[name], rtol=0, atol=1e-12)
    assert not torch.equal(ours.model.conv2.weight, net.conv2.weight)
    teacher = params(ours.method.teacher)
    for name in source:
        expected = m * source[name] + (1 - m) * student[name]
        torch.testing.assert_close(teacher[name], expected, rtol=0, atol=1e-12)
    assert all(torch.equal(v, source[n]) for n, v in params(ours.method.anchor).items())


def test_stochastic_restore_masks():
    """Each weight/bias element goes back to its source value where a float32 uniform draw of
    the run's seeded generator is < rst, one draw per parameter in order."""
    net, x = make_net(), batches(1)[0]
    kept = adapt(net, ap=1.0, n_augmentations=2, rst=0.0)
    kept(x)
    source, updated = params(net), params(kept.model)
    assert not torch.equal(updated["conv2.weight"], source["conv2.weight"])
    for rst in (0.3, 1.0):
        ours = adapt(net, ap=1.0, n_augmentations=2, rst=rst)
        ours(x)
        g = torch.Generator().manual_seed(SEED)
        for _ in range(2):  # the two views' draws come first
            TTAAugment(16)(x, g)
        for name, value in params(ours.model).items():
            mask = torch.rand(value.shape, generator=g, dtype=torch.float32) < rst
            assert torch.equal(value, torch.where(mask, source[name], updated[name]))
            if rst == 1.0:
                assert torch.equal(value, source[name])
        # the restore comes after the teacher's update
        for name, value in params(ours.method.teacher).items():
            assert torch.equal(value, params(kept.method.teacher)[name])
    # p = 0: no mask drawn (the generator stands where the views left it), nothing restored
    g = torch.Generator().manual_seed(SEED)
    for _ in range(2):
        TTAAugment(16)(x, g)
    assert torch.equal(kept.method.rng_state, g.get_state())


def test_augmentation_averaging_exactly_below_ap():
    net, x = make_net(), batches(1)[0]
    ref = batch_stat_net(net)
    with torch.no_grad():
        plain = ref(x)
        confidence = plain.softmax(1).amax(1).mean().item()
        aug, g = TTAAugment(16), torch.Generator().manual_seed(SEED)
        averaged = torch.stack([ref(aug(x, g)) for _ in range(3)]).mean(0)
    assert not torch.allclose(plain, averaged)
    for ap, expected in [
        (0.0, plain),
        (confidence - 1e-9, plain),
        (confidence + 1e-9, averaged),
        (1.0, averaged),
    ]:
        out = adapt(net, ap=ap, rst=0.0, n_augmentations=3)(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def stream(model: tta.AdaptedModel, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model(x) for x in xs]


OPTIONS = {"ap": 1.0, "rst": 0.2, "n_augmentations": 2}


def test_reset_is_bit_exact():
    net, xs = make_net(), batches(3)
    ours = adapt(net, **OPTIONS)
    first = stream(ours, xs)
    ours.reset()
    again = stream(ours, xs)
    fresh = stream(adapt(net, **OPTIONS), xs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(a, b) for a, b in zip(first, fresh))


def test_state_round_trip():
    net, xs = make_net(), batches(4)
    a, b = adapt(net, **OPTIONS), adapt(net, **OPTIONS)
    stream(a, xs[:2])
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(u, v) for u, v in zip(stream(a, xs[2:]), stream(b, xs[2:])))
    for part in ("model", "method.teacher", "method.anchor"):
        pa, pb = params(a.get_submodule(part)), params(b.get_submodule(part))
        assert all(torch.equal(pa[n], pb[n]) for n in pa)


def test_seed_determinism():
    net, xs = make_net(), batches(2)
    one = stream(adapt(net, seed=1, **OPTIONS), xs)
    same = stream(adapt(net, seed=1, **OPTIONS), xs)
    other = stream(adapt(net, seed=2, **OPTIONS), xs)
    assert all(torch.equal(u, v) for u, v in zip(one, same))
    assert not torch.allclose(one[1], other[1])


def test_unmix_tns_each_copy_updates_its_own_components():
    net, xs = make_net(), batches(2)
    ours = adapt(net, norm="unmix-tns", num_components=4, **OPTIONS)
    copies = {
        "student": ours.model,
        "anchor": ours.method.anchor,
        "teacher": ours.method.teacher,
    }
    before = {k: m.bn1.components.clone() for k, m in copies.items()}
    outs = stream(ours, xs)
    assert all(torch.isfinite(o).all() for o in outs)
    after = {k: m.bn1.components for k, m in copies.items()}
    for k in copies:
        assert torch.equal(before[k], before["student"])  # all start from the same draw
        assert not torch.equal(after[k], before[k])  # ...and move on every forward
    assert not torch.equal(after["teacher"], after["anchor"])


def cotta_reference(
    net: nn.Module, x: torch.Tensor, steps: int = 1, symmetric: bool = False, soft: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The prediction and the student after one batch, the rules written out: SGD without
    momentum, no restore, the target always the teacher's mean over two views; per step the
    target, one student step on ``cotta_loss`` against it, then the teacher's EMA (m = 0.9)."""
    student, teacher = batch_stat_net(net), batch_stat_net(net)
    opt = torch.optim.SGD(student.parameters(), lr=1e-2)
    aug, g = TTAAugment(16, soft=soft), torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        with torch.no_grad():
            target = torch.stack([teacher(aug(x, g)) for _ in range(2)]).mean(0)
        opt.zero_grad()
        cotta_loss(student(x), target, symmetric=symmetric).backward()
        opt.step()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.copy_(0.9 * t + (1 - 0.9) * s)
    return target, params(student)


def test_multiple_steps_symmetric_loss_and_soft_augmentation():
    """``steps``, ``symmetric_loss`` and ``soft_augmentation`` each change the update as the
    reference says, and not into the default one."""
    net, x = make_net(), batches(1)[0]
    out = adapt(net, steps=2, symmetric_loss=True, soft_augmentation=True, **OPTIONS)(x)
    assert out.shape == (8, 5) and torch.isfinite(out).all()
    base = {"optimizer": "sgd", "momentum": 0.0, "teacher_momentum": 0.9, "rst": 0.0}
    base = {**base, "ap": 1.0, "n_augmentations": 2}
    _, default = cotta_reference(net, x)
    for option, rule in [
        ({"steps": 2}, {"steps": 2}),
        ({"symmetric_loss": True}, {"symmetric": True}),
        ({"soft_augmentation": True}, {"soft": True}),
    ]:
        ours = adapt(net, **base, **option)
        out = ours(x)
        target, student = cotta_reference(net, x, **rule)
        torch.testing.assert_close(out, target, rtol=0, atol=1e-12)
        for name, value in params(ours.model).items():
            torch.testing.assert_close(value, student[name], rtol=0, atol=1e-12)
        # the option matters: its student is not the default one
        assert any(not torch.allclose(student[n], default[n], rtol=0, atol=1e-9) for n in student)


@pytest.mark.parametrize(
    "option",
    [{"rst": 1.5}, {"ap": -0.1}, {"n_augmentations": 0}, {"teacher_momentum": 2.0}],
)
def test_bad_options(option):
    key = next(iter(option))
    with pytest.raises(TTAError, match=key):
        adapt(make_net(), **option)
