"""``alpha-bn``: a convex mix of source and test-batch statistics (You, Li, Zhao 2021).

Convention: ``alpha`` is the weight on the **source** statistics, so alpha=1 is ``source`` and
alpha=0 is ``tbn``. The default 0.9 is the alpha-BN baseline of the UnMix-TNS paper; some public
code writes the same setting as 0.1 on the test side. The test-batch variance is the biased one
(the reference code uses the unbiased n/(n−1) form; the difference is negligible at usual sizes).
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta.norms.base import AdaptiveNorm, batch_stats
from tta.options import Option, in_range
from tta.registry import NormMethod, register_norm


class AlphaBatchNorm(AdaptiveNorm):
    """μ = α·μ_s + (1−α)·μ_t, σ² = α·σ²_s + (1−α)·σ²_t; no state change."""

    def __init__(self, bn: _BatchNorm, name: str = "", post=None, alpha: float = 0.9):
        super().__init__(bn, name, post)
        self.alpha = float(alpha)

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean_t, var_t = batch_stats(x)
        a = self.alpha
        mean = a * self.source_mean + (1.0 - a) * mean_t
        var = a * self.source_var + (1.0 - a) * var_t
        return self.normalize(x, mean, var)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


register_norm(
    NormMethod(
        name="alpha-bn",
        layer=AlphaBatchNorm,
        description="alpha-BN: alpha·source + (1-alpha)·test-batch statistics (alpha on source)",
        options={
            "alpha": Option(0.9, float, "weight on the source statistics", in_range(0.0, 1.0)),
        },
    )
)
