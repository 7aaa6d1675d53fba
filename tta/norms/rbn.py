"""``rbn``: robust BatchNorm of RoTTA (Yuan et al., CVPR 2023).

Running statistics start at the source ones and move towards each test batch by an exponential
moving average; every batch is normalised with the freshly updated values. Under the RoTTA method
(``update_in_eval = False``) the statistics move only in train-mode forwards, the memory updates,
and eval-mode forwards normalise with them as they stand, as the authors' RobustBN does.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta.norms.base import AdaptiveNorm, batch_stats
from tta.options import Option, in_range
from tta.registry import NormMethod, register_norm


class RobustBatchNorm(AdaptiveNorm):
    """μ ← (1−a)·μ + a·μ_t, σ² ← (1−a)·σ² + a·σ²_t; normalise with the updated μ, σ²."""

    def __init__(self, bn: _BatchNorm, name: str = "", post=None, momentum: float = 0.05):
        super().__init__(bn, name, post)
        self.momentum = float(momentum)
        self.register_buffer("running_mean", self.source_mean.clone())
        self.register_buffer("running_var", self.source_var.clone())
        # False: move the statistics only when ``self.training`` (RoTTA's memory forwards)
        self.update_in_eval = True

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.update_in_eval):
            return self.normalize(x, self.running_mean, self.running_var)
        mean_t, var_t = batch_stats(x)
        a = self.momentum
        mean = (1.0 - a) * self.running_mean + a * mean_t
        var = (1.0 - a) * self.running_var + a * var_t
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return self.normalize(x, mean, var)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}"


register_norm(
    NormMethod(
        name="rbn",
        layer=RobustBatchNorm,
        description="robust BN (RoTTA): exponential moving average of test-batch statistics",
        options={
            "momentum": Option(0.05, float, "update rate a of the moving average", in_range(0, 1)),
        },
    )
)
