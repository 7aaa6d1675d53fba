"""``iabn``: Instance-Aware BatchNorm of NOTE (Gong et al., NeurIPS 2022).

A sample's own statistics over its L spatial positions, μ̃ and σ̃² (unbiased, as the authors'
code), are trusted only where they differ from the reference statistics μ_b, σ²_b by more than
sampling noise would explain. With the standard errors s_μ = sqrt((σ²_b + ε)/L) and
s_σ² = (σ²_b + ε)·sqrt(2/(L − 1)) the layer normalises with

    μ = μ_b + shrink(μ̃ − μ_b, k·s_μ),   σ² = relu(σ²_b + shrink(σ̃² − σ²_b, k·s_σ²)),

shrink(d, λ) = sign(d)·max(|d| − λ, 0) (soft shrinkage), then applies the affine γ, β. The
reference statistics are the layer's running statistics (starting at the source BN's) in eval
mode, and the current batch's (mean and unbiased variance) in train mode, where the forward also
moves the running statistics like torch's BatchNorm: r ← (1 − m)·r + m·batch, with the unbiased
batch variance and m = ``momentum``.

Used alone (``tta.adapt(model, "iabn")``) the network stays in eval mode, so this is NOTE's IABN
put into a BN-trained model at test time without any update (the UnMix-TNS authors'
``note_vanilla``); the NOTE authors instead train the source model with IABN. Only NOTE's memory
update forwards run it in train mode (``tta.methods.base.norm_train_mode``).

Inputs with a single position per sample (L = 1: BatchNorm1d on (B, C), or 1×1 feature maps) have
no instance statistics; there the layer behaves exactly like the source BatchNorm it replaced
(running statistics in eval mode; batch statistics and the running update in train mode). The
NOTE code skips the correction for L ≤ 1 in the same way, and the UnMix-TNS authors' version
converts only BatchNorm2d, leaving BatchNorm1d layers as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from tta.norms.base import AdaptiveNorm, batch_stats, instance_stats
from tta.options import Option, in_range, non_negative
from tta.registry import NormMethod, register_norm


def soft_shrink(d: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """sign(d)·max(|d| − λ, 0) with a per-channel λ ≥ 0 (``F.softshrink`` takes one scalar)."""
    return F.relu(d - threshold) - F.relu(-d - threshold)


class InstanceAwareBatchNorm(AdaptiveNorm):
    """IABN: instance statistics, shrunk towards the reference statistics (see module doc)."""

    def __init__(
        self, bn: _BatchNorm, name: str = "", post=None, k: float = 4.0, momentum: float = 0.01
    ):
        super().__init__(bn, name, post)
        self.k = float(k)
        self.momentum = float(momentum)
        self.register_buffer("running_mean", self.source_mean.clone())
        self.register_buffer("running_var", self.source_var.clone())

    @torch.no_grad()
    def _move_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """torch's BatchNorm update: r ← (1 − m)·r + m·batch (``var`` already unbiased)."""
        m = self.momentum
        self.running_mean.mul_(1.0 - m).add_(mean.detach(), alpha=m)
        self.running_var.mul_(1.0 - m).add_(var.detach(), alpha=m)

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        length = math.prod(x.shape[2:])  # L, positions per sample and channel (1 for (B, C))
        if length == 1:  # no instance statistics: the source BatchNorm's behaviour
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training,
                self.momentum,
                self.eps,
            )
        inst_mean, inst_var = instance_stats(x)
        inst_var = inst_var * (length / (length - 1))
        if self.training:
            n = x.shape[0] * length
            ref_mean, ref_var = batch_stats(x)
            ref_var = ref_var * (n / (n - 1))
            self._move_running(ref_mean, ref_var)
        else:
            ref_mean, ref_var = self.running_mean, self.running_var
        spread = ref_var + self.eps
        mean = ref_mean + soft_shrink(inst_mean - ref_mean, self.k * torch.sqrt(spread / length))
        shrunk = soft_shrink(inst_var - ref_var, (self.k * math.sqrt(2.0 / (length - 1))) * spread)
        var = F.relu(ref_var + shrunk)
        return self.normalize(x, mean, var)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, momentum={self.momentum}"


register_norm(
    NormMethod(
        name="iabn",
        layer=InstanceAwareBatchNorm,
        description="IABN (NOTE): instance statistics soft-shrunk towards the running statistics",
        options={
            # NOTE's tta.sh runs iabn_k=4; the UnMix-TNS authors' convert_iabn fixes k=4.
            "k": Option(4.0, float, "shrinkage threshold in standard errors", non_negative),
            # NOTE's tta.sh: bn_momentum=0.01 (read only by train-mode forwards, i.e. NOTE's).
            "momentum": Option(
                0.01, float, "running-statistics update rate in train mode", in_range(0, 1)
            ),
        },
    )
)
