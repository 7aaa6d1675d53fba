"""``source``: the unadapted baseline, normalising with the training (running) statistics."""

from __future__ import annotations

import torch

from tta.norms.base import AdaptiveNorm
from tta.registry import NormMethod, register_norm


class SourceNorm(AdaptiveNorm):
    """Exactly BatchNorm's eval forward: μ_s, σ²_s, no state change."""

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x, self.source_mean, self.source_var)


register_norm(
    NormMethod(
        name="source",
        layer=SourceNorm,
        description="no adaptation: BatchNorm with the source (training) statistics",
        needs_batchnorm=False,
    )
)
