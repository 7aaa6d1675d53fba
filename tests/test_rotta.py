"""RoTTA (Yuan et al., CVPR 2023) against its rules written out here: the CSTU memory as a plain
Python model of the paper's Algorithm 1, the timeliness weights, the loss, the teacher's EMA."""

from __future__ import annotations

import copy
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import tta
import tta.methods.rotta  # noqa: F401  (registers "rotta")
from tta._errors import TTAError
from tta.methods.base import norm_train_mode
from tta.methods.rotta import CSTU, RoTTA, memory_loss, timeliness_weights
from tta.norms.rbn import RobustBatchNorm
from tta.norms.unmix_tns import UnMixTNS

sys.path.insert(0, str(Path(__file__).parent))
from _nets import make_net  # noqa: E402

K = 5  # the classes of make_net's network


def stream(n: int, b: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(n)]


def identity(self: RoTTA, x: torch.Tensor) -> torch.Tensor:
    return x


def flip(self: RoTTA, x: torch.Tensor) -> torch.Tensor:
    """A deterministic strong view: the student then sees other images than the teacher."""
    return x.flip(-1)


def wrap(seed: int = 0, **options):
    ctx = tta.RunContext(seed=seed)
    return tta.adapt(make_net(), "rotta", context=ctx, **options)


# -- the paper's memory rule, written independently -------------------------------------------
@dataclass
class Entry:
    id: int
    cls: int
    u: float
    age: int
    t: int  # arrival time


class PaperMemory:
    """Algorithm 1 of the paper over a flat list; ties go to the last candidate met when scanning
    class by class in arrival order (the authors' ``>=``)."""

    def __init__(self, n: int, k: int, lt: float = 1.0, lu: float = 1.0) -> None:
        self.n, self.k, self.lt, self.lu = n, k, lt, lu
        self.entries: list[Entry] = []
        self.time = 0

    def score(self, age: int, u: float) -> float:
        return self.lt * 1 / (1 + math.exp(-age / self.n)) + self.lu * u / math.log(self.k)

    def offer(self, id: int, cls: int, u: float) -> None:
        count = [sum(e.cls == c for e in self.entries) for c in range(self.k)]
        new = Entry(id, cls, u, 0, self.time)
        self.time += 1
        if count[cls] < self.n / self.k and len(self.entries) < self.n:
            self.entries.append(new)
        else:
            if count[cls] < self.n / self.k:  # memory full: look in the fullest classes
                pool = [e for e in self.entries if count[e.cls] == max(count)]
            else:
                pool = [e for e in self.entries if e.cls == cls]
            victim = max(pool, key=lambda e: (self.score(e.age, e.u), e.cls, e.t))
            if self.score(victim.age, victim.u) > self.score(0, u):
                self.entries.remove(victim)
                self.entries.append(new)
        for e in self.entries:
            e.age += 1

    def contents(self) -> list[tuple[int, int]]:
        """(sample id, age) class by class in arrival order."""
        return [(e.id, e.age) for e in sorted(self.entries, key=lambda e: (e.cls, e.t))]


def ours_contents(memory: CSTU, slot_ids: dict[int, int]) -> list[tuple[int, int]]:
    slots, ages = memory.contents()
    return [(slot_ids[s], round(a * memory.capacity)) for s, a in zip(slots, ages)]


def run_cstu(n, k, labels, us, lt=1.0, lu=1.0) -> list:
    """Feed both memories; after each sample, (ours, the paper's) contents."""
    memory, paper = CSTU([[] for _ in range(k)], n, lt, lu), PaperMemory(n, k, lt, lu)
    slot_ids, steps = {}, []
    for i, (c, u) in enumerate(zip(labels, us)):
        slot = memory.add(c, u)
        if slot is not None:
            slot_ids[slot] = i
        paper.offer(i, c, u)
        steps.append((ours_contents(memory, slot_ids), paper.contents()))
    return steps


def ids(step) -> list[int]:
    return [i for i, _ in step[1]]


def test_cstu_scripted_stream() -> None:
    # capacity 6, 3 classes: quota 2 per class; score 1/(1 + exp(-age/6)) + u/ln 3
    labels = [0, 0, 0, 1, 1, 2, 2, 1, 0, 0, 1, 2]
    us = [0.5, 0.5, 0.9, 0.1, 0.1, 0.3, 0.3, 0.2, 1.0, 0.0, 0.0, 0.0]
    steps = run_cstu(6, 3, labels, us)
    for i, (ours, ref) in enumerate(steps):
        assert ours == ref, f"after sample {i}"
    assert ids(steps[2]) == [0, 1]  # class 0 at quota; 1.32 for the new one beats 1.04: dropped
    assert ids(steps[6]) == [0, 1, 3, 4, 5, 6]  # full
    assert ids(steps[7]) == [0, 1, 4, 7, 5, 6]  # 3 (age 4: 0.75) > new 0.68: replaced
    assert ids(steps[8]) == [
        0,
        1,
        4,
        7,
        5,
        6,
    ]  # class 0's top, 0 (age 8: 1.25), < new 1.41: dropped
    assert ids(steps[9]) == [1, 9, 4, 7, 5, 6]  # the oldest of class 0 goes
    assert ids(steps[11]) == [1, 9, 7, 10, 6, 11]
    assert [a for _, a in steps[11][1]] == [11, 3, 5, 2, 6, 1]


def test_cstu_majority_eviction_and_ties() -> None:
    # capacity 4, 3 classes (quota 4/3); λ_t = 0 so that equal uncertainties tie
    labels = [0, 0, 1, 1, 2, 2, 1]
    us = [0.2, 0.2, 0.2, 0.2, 0.0, 0.1, 0.5]
    steps = run_cstu(4, 3, labels, us, lt=0.0)
    for i, (ours, ref) in enumerate(steps):
        assert ours == ref, f"after sample {i}"
    assert ids(steps[3]) == [0, 1, 2, 3]  # full, classes 0 and 1 the fullest
    assert ids(steps[4]) == [0, 1, 2, 4]  # all four tie: the last scanned (3) goes
    assert ids(steps[5]) == [0, 2, 4, 5]  # class 0 alone is the fullest: its last (1) goes
    assert ids(steps[6]) == [0, 2, 4, 5]  # fullest class 2 scores below the new sample


@pytest.mark.parametrize("lt", [1.0, 0.0])
@pytest.mark.parametrize("n,k", [(8, 3), (6, 3), (4, 10), (64, 10), (5, 2)])
def test_cstu_random_streams(n: int, k: int, lt: float) -> None:
    rnd = random.Random(n * 100 + k)
    length = 300
    labels = [min(int(rnd.expovariate(0.6)), k - 1) for _ in range(length)]  # imbalanced
    us = [rnd.choice([0.0, 0.25, 0.5, 1.0, 1.5]) for _ in range(length)]  # ties when λ_t = 0
    for i, (ours, ref) in enumerate(run_cstu(n, k, labels, us, lt=lt)):
        assert ours == ref, f"after sample {i}"


# -- weights, loss ------------------------------------------------------------------------------
def test_timeliness_weights_and_loss() -> None:
    ages = [1 / 64, 0.5, 1.0, 3.0]
    w = timeliness_weights(torch.tensor(ages, dtype=torch.float64))
    assert w.tolist() == pytest.approx([1 / (1 + math.exp(a)) for a in ages], rel=1e-15)
    student = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    a = torch.tensor([0.25, 2.0], dtype=torch.float64)
    expected = 0.0
    for s, t, age in zip(student.tolist(), teacher.tolist(), a.tolist()):
        zt, zs = sum(map(math.exp, t)), sum(map(math.exp, s))
        ce = -sum(math.exp(ti) / zt * (si - math.log(zs)) for si, ti in zip(s, t))
        expected += ce * math.exp(-age) / (1 + math.exp(-age))
    assert float(memory_loss(student, teacher, a)) == pytest.approx(expected / 2, rel=1e-14)


# -- the memory inside the method --------------------------------------------------------------
def paper_stream(logits_batches, images, n=64):
    """Feed the paper's memory with the teacher's predictions (returned logits)."""
    paper, flat = PaperMemory(n, K), []
    for logits, x in zip(logits_batches, images):
        p = logits.softmax(1)
        u = (-p * torch.log(p + 1e-6)).sum(1)
        for i in range(len(x)):
            paper.offer(len(flat), int(p[i].argmax()), float(u[i]))
            flat.append(x[i])
    return paper, flat


def test_memory_contents_and_update_positions(monkeypatch) -> None:
    monkeypatch.setattr(RoTTA, "strong_augment", identity)
    calls = []
    update = RoTTA.update

    def logged(self) -> None:
        slots, ages = self.cstu().contents()
        calls.append((self.seen, self.memory_images[slots].clone(), ages))
        update(self)

    monkeypatch.setattr(RoTTA, "update", logged)
    for b, expected in ((48, [64, 128, 192]), (64, [64, 128, 192, 256])):
        calls.clear()
        adapted, xs = wrap(), stream(4, b)
        outs = [adapted(x) for x in xs]
        assert [c[0] for c in calls] == expected
        for seen, data, ages in calls:  # the memory as it stood at that sample
            first = [i for i, x in enumerate(xs) if (i + 1) * b >= seen][0]
            part = seen - first * b
            paper, flat = paper_stream(outs[: first + 1], xs[:first] + [xs[first][:part]])
            ids = paper.contents()
            assert torch.equal(data, torch.stack([flat[i] for i, _ in ids]))
            assert ages == [a / 64 for _, a in ids]


def test_one_update_step_and_ema(monkeypatch) -> None:
    """One update (8 samples, memory 8, a flip as the strong view): the student takes Adam's first
    step, θ − lr·g/(|g| + ε), on the paper's loss; the teacher's parameters become
    (1−ν)·teacher + ν·student; each network's statistics are those of its own train-mode forward
    on the memory (not averaged)."""
    monkeypatch.setattr(RoTTA, "strong_augment", flip)
    nu = 0.25
    adapted = wrap(memory_size=8, update_every=8, nu=nu)
    m = adapted.method
    student0, teacher0 = copy.deepcopy(m.model), copy.deepcopy(m.teacher)
    adapted(stream(1, 8)[0])
    slots, ages = m.cstu().contents()
    data = m.memory_images[slots]
    rbn = [
        x for net in (student0, teacher0) for x in net.modules() if isinstance(x, RobustBatchNorm)
    ]
    with norm_train_mode(rbn):
        with torch.no_grad():
            target = teacher0(data)
        out = student0(data.flip(-1))
    w = torch.tensor([math.exp(-a) / (1 + math.exp(-a)) for a in ages], dtype=torch.float64)
    loss = (-(target.softmax(1) * out.log_softmax(1)).sum(1) * w).mean()
    params = [p for p in student0.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    for p, g, q in zip(params, grads, m.norm_parameters()):
        assert torch.allclose(q, p - 1e-3 * g / (g.abs() + 1e-8), rtol=0, atol=1e-13)
        assert not torch.equal(p, q)
    for t0, t1, s in zip(teacher0.parameters(), m.teacher.parameters(), m.model.parameters()):
        assert torch.equal(t1, (1.0 - nu) * t0 + nu * s.detach())
    for net0, net1 in ((teacher0, m.teacher), (student0, m.model)):
        for b0, b1 in zip(net0.buffers(), net1.buffers()):
            assert torch.equal(b0, b1)


def test_rbn_moves_only_in_train_mode_under_rotta(monkeypatch) -> None:
    bn = make_net().bn1
    x = torch.rand(6, 4, 5, 5, dtype=torch.float64)
    layer = RobustBatchNorm(bn, momentum=0.05)
    assert layer.update_in_eval  # alone (norm-only): moves on every forward
    layer.update_in_eval = False
    layer.eval()
    y = layer(x)
    assert torch.equal(layer.running_mean, bn.running_mean)
    assert torch.allclose(y, bn(x), atol=1e-12)
    with norm_train_mode([layer]):
        layer(x)
    mean = x.mean((0, 2, 3))
    assert torch.allclose(layer.running_mean, 0.95 * bn.running_mean + 0.05 * mean, atol=1e-14)
    # in the method: no update within the first 64 samples, so no statistic moves
    monkeypatch.setattr(RoTTA, "strong_augment", identity)
    adapted = wrap()
    m = adapted.method
    out = adapted(stream(1, 16)[0])
    assert all(
        not layer.update_in_eval for layer in [*m.norm_layers.values(), *m.teacher_layers.values()]
    )
    for layer in [*m.norm_layers.values(), *m.teacher_layers.values()]:
        assert torch.equal(layer.running_mean, layer.source_mean)
    assert torch.allclose(out, make_net()(stream(1, 16)[0]), atol=1e-12)


# -- reset, state, determinism, compositions, errors ------------------------------------------
def test_reset_is_bit_exact() -> None:
    xs = stream(3, 48)
    adapted = wrap()
    first = [adapted(x) for x in xs]
    adapted.reset()
    again = [adapted(x) for x in xs]
    fresh = wrap()
    for a, b, c in zip(first, again, [fresh(x) for x in xs]):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(first[0], first[2])  # it adapted


def test_state_round_trip_with_memory() -> None:
    xs = stream(4, 40)
    a, b = wrap(), wrap()
    for x in xs[:2]:
        a(x)
    b.load_state_dict(a.state_dict())
    assert b.method.memory == a.method.memory
    for x in xs[2:]:
        assert torch.equal(a(x), b(x))
    assert torch.equal(a.method.memory_images, b.method.memory_images)
    assert a.method.memory == b.method.memory and a.method.seen == b.method.seen == 160


def test_seed_determinism() -> None:
    xs = stream(3, 48)
    a, b, c = wrap(seed=3), wrap(seed=3), wrap(seed=4)
    outs = [[m(x) for x in xs] for m in (a, b, c)]
    assert all(torch.equal(p, q) for p, q in zip(outs[0], outs[1]))
    assert not torch.equal(outs[0][-1], outs[2][-1])  # another augmentation draw


def test_unmix_tns_runs_and_adapts(monkeypatch) -> None:
    monkeypatch.setattr(RoTTA, "strong_augment", flip)
    adapted = wrap(norm="unmix-tns", update_every=32)
    m = adapted.method
    student, teacher = list(m.norm_layers.values()), list(m.teacher_layers.values())
    assert all(isinstance(x, UnMixTNS) for x in student + teacher)
    assert all(s is not t and s.components is not t.components for s, t in zip(student, teacher))
    s0 = [x.components.clone() for x in student]
    t0 = [x.components.clone() for x in teacher]
    affine0 = [p.detach().clone() for p in m.norm_parameters()]
    x1, x2 = stream(2, 16)
    adapted(x1)  # no update yet: only the teacher's prediction forward moved its components
    assert all(not torch.equal(a, x.components) for a, x in zip(t0, teacher))
    assert all(torch.equal(a, x.components) for a, x in zip(s0, student))
    out = adapted(x2)  # the 32nd sample: an update
    assert torch.isfinite(out).all()
    assert all(not torch.equal(a, x.components) for a, x in zip(s0, student))
    assert all(not torch.equal(a, p) for a, p in zip(affine0, m.norm_parameters()))


@pytest.mark.parametrize(
    "options",
    [{"memory_size": 0}, {"nu": 1.5}, {"lambda_u": -1.0}, {"update_every": 0}, {"steps": 2}],
)
def test_bad_options(options) -> None:
    with pytest.raises(TTAError, match=f"option '{next(iter(options))}'"):
        wrap(**options)


def test_defaults_and_bad_input() -> None:
    o = wrap().method.hparams
    keys = ("memory_size", "update_every", "nu", "lambda_t", "lambda_u", "optimizer", "lr")
    assert [o[k] for k in keys] == [64, 64, 0.001, 1.0, 1.0, "adam", 1e-3]
    assert (o["betas"], o["weight_decay"], RoTTA.default_norm) == ((0.9, 0.999), 0.0, "rbn")
    with pytest.raises(TTAError, match="image batches"):
        wrap()(torch.rand(4, 3, 8, dtype=torch.float64))
