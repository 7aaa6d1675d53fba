"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021)."""

from __future__ import annotations

import torch

from tta.methods.optim import GradientMethod
from tta.registry import register_method


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy of each row of the logits, shape (B,)."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the softmax entropy of the logits."""
    return entropy(logits).mean()


@register_method
class Tent(GradientMethod):
    name = "tent"
    description = "TENT: minimise prediction entropy over the norm layers' affine (default tbn)"
    default_norm = "tbn"

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return entropy_loss(logits)
