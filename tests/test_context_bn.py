"""context-bn: statistics from designated context samples (CS-ARM-BN), against the formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tta


def net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return m.double().eval()


def bn_with(x: torch.Tensor, bn: nn.BatchNorm2d, mean, var) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def reference(m: nn.Module, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Written out: each BN's statistics are the mean and biased variance of its input over the
    context images, with the earlier layers already normalised by their context statistics."""
    with torch.no_grad():
        stats = []
        h = m[0](context)
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        stats.append((mean, var))
        h = m[3](torch.relu(bn_with(h, m[1], mean, var)))
        stats.append((h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)))
        y = torch.relu(bn_with(m[0](x), m[1], *stats[0]))
        y = torch.relu(bn_with(m[3](y), m[4], *stats[1]))
        return m[8](y.mean((2, 3)))


def test_output_is_the_formula_and_independent_of_batch_mates():
    m = net()
    g = torch.Generator().manual_seed(1)
    context = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 0.5 + 0.3
    adapted = tta.adapt(m, "context-bn")
    adapted.set_context(context)
    out = adapted(x)
    torch.testing.assert_close(out, reference(m, context, x), rtol=0, atol=1e-12)
    # batch size 1 and any batch-mates give the same per-sample output
    torch.testing.assert_close(adapted(x[2:3]), out[2:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(adapted(x.flip(0)).flip(0), out, rtol=0, atol=1e-12)


def test_context_statistics_replace_the_previous_ones():
    m = net()
    a, b = torch.rand(5, 3, 8, 8).double(), torch.rand(5, 3, 8, 8).double() * 2
    x = torch.rand(3, 3, 8, 8).double()
    adapted = tta.adapt(m, "context-bn")
    adapted.set_context(a)
    adapted.set_context(b)
    torch.testing.assert_close(adapted(x), reference(m, b, x), rtol=0, atol=1e-12)


def test_no_context_is_an_error_until_set_and_after_reset():
    m = net()
    adapted = tta.adapt(m, "context-bn")
    x = torch.rand(2, 3, 8, 8).double()
    with pytest.raises(tta.TTAError, match="set_context"):
        adapted(x)
    adapted.set_context(torch.rand(4, 3, 8, 8).double())
    adapted(x)
    adapted.reset()
    with pytest.raises(tta.TTAError, match="set_context"):
        adapted(x)


def test_under_a_gradient_method():
    m = net()
    context = torch.rand(6, 3, 8, 8).double()
    x = torch.rand(4, 3, 8, 8).double()
    adapted = tta.adapt(m, "tent", norm="context-bn", lr=1e-2)
    adapted.set_context(context)
    first = adapted(x)  # prediction before the first update: the formula
    torch.testing.assert_close(first, reference(m, context, x), rtol=0, atol=1e-12)
    assert not torch.equal(adapted(x), first)  # γ, β moved


def test_state_round_trip_keeps_the_context():
    m = net()
    a = tta.adapt(m, "context-bn")
    a.set_context(torch.rand(5, 3, 8, 8).double())
    b = tta.adapt(m, "context-bn")
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 3, 8, 8).double()
    assert torch.equal(a(x), b(x))


def test_set_context_errors():
    m = net()
    with pytest.raises(tta.TTAError, match="needs the norm method 'context-bn'"):
        tta.adapt(m, "tbn").set_context(torch.rand(4, 3, 8, 8).double())
    adapted = tta.adapt(m, "context-bn")
    with pytest.raises(TypeError, match="float tensor"):
        adapted.set_context(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="more than one value per channel"):
        adapted.set_context(torch.rand(1, 3, 1, 1).double())


def test_teachers_take_the_context_too():
    """RoTTA and CoTTA predict with a copy of the network (their teacher): set_context gives it
    the context statistics as well, so the first prediction is the formula's."""
    m = net()
    context = torch.rand(6, 3, 8, 8).double()
    x = torch.rand(4, 3, 8, 8).double()
    adapted = tta.adapt(m, "rotta", norm="context-bn")
    adapted.set_context(context)
    torch.testing.assert_close(adapted(x), reference(m, context, x), rtol=0, atol=1e-12)
    cotta = tta.adapt(m, "cotta", norm="context-bn")
    cotta.set_context(context)
    for copy in cotta.method.children():
        torch.testing.assert_close(copy(x), reference(m, context, x), rtol=0, atol=1e-12)


def test_episodic_is_refused():
    with pytest.raises(tta.TTAError, match="episodic=True .* context statistics"):
        tta.adapt(net(), "tent", norm="context-bn", episodic=True)
