"""``tbn``: test-time batch normalisation (Schneider et al., NeurIPS 2020; "norm" in TENT)."""

from __future__ import annotations

import torch

from tta.norms.base import AdaptiveNorm, batch_stats
from tta.registry import NormMethod, register_norm


class TestBatchNorm(AdaptiveNorm):
    """Normalise with the current batch's mean and biased variance; source stats are unused.

    At batch size 1 the statistics are those of the single image over its spatial positions,
    which is only defined when the layer sees more than one value per channel.
    """

    needs_source_stats = False

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // x.shape[1] < 2:
            raise ValueError(
                f"tbn layer {self.layer_name!r} needs more than one value per channel to take "
                f"batch statistics, got input of shape {tuple(x.shape)}; use a batch size > 1 "
                "or a method defined for single samples (unmix-tns, alpha-bn, source)"
            )
        return self.normalize(x, *batch_stats(x))


register_norm(
    NormMethod(
        name="tbn",
        layer=TestBatchNorm,
        description="test-time BN: normalise with the statistics of the current test batch",
    )
)
