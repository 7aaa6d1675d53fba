"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021)."""

from __future__ import annotations

import torch

from tta.methods.optim import OPTIMIZER_OPTIONS
from tta.registry import Objective, register_objective


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the softmax entropy of the logits."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


register_objective(
    Objective(
        name="tent",
        loss=entropy_loss,
        description="TENT: minimise prediction entropy over the norm layers' affine (default tbn)",
        default_norm="tbn",
        options=dict(OPTIMIZER_OPTIONS),
    )
)
