"""What the teacher-student methods share (CoTTA, RoTTA, ROID): the soft cross-entropy between
two predictions and the exponential moving average of one set of weights towards another."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per sample −Σ_c softmax(teacher)_c · log_softmax(student)_c, both from logits."""
    return -(teacher.softmax(1) * student.log_softmax(1)).sum(1)


def symmetric_cross_entropy(
    x: torch.Tensor, x_ref: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """Per sample (1−α)·CE(x_ref → x) + α·CE(x → x_ref): −(1−α)·Σ p_ref·log p_x − α·Σ p_x·log p_ref."""
    return (1 - alpha) * soft_cross_entropy(x, x_ref) + alpha * soft_cross_entropy(x_ref, x)


@torch.no_grad()
def ema_(
    targets: Iterable[torch.Tensor], sources: Iterable[torch.Tensor], keep: float, take: float
) -> None:
    """targets ← keep·targets + take·sources, in place, each product rounded on its own (as the
    reference codes write the sum)."""
    targets, sources = list(targets), list(sources)
    torch._foreach_mul_(targets, keep)
    torch._foreach_add_(targets, torch._foreach_mul(sources, take))
