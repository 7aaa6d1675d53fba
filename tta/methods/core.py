"""Core (You, Li, Zhao 2021): alpha-BN statistics plus an online class-correlation objective.

The paper describes a "pairwise class correlation" loss on γ and β but its exact form is not
public in any code or text we could find. This is our reading of it: the class-confusion objective
of Minimum Class Confusion (Jin et al., ECCV 2020), which penalises the off-diagonal mass of the
batch's class-correlation matrix.
"""

from __future__ import annotations

import torch

from tta.methods.optim import OPTIMIZER_OPTIONS, GradientMethod
from tta.options import Option, positive
from tta.registry import register_method


def class_confusion_loss(
    logits: torch.Tensor, temperature: float = 2.5, entropy_weighting: bool = True
) -> torch.Tensor:
    """MCC-style class confusion of a batch (B × K logits).

    P = softmax(logits / T); with entropy weighting each sample counts 1 + exp(−H(P_b)),
    rescaled to sum to B (weights are not differentiated); R = Pᵀ·diag(w)·P; each row of R is
    normalised to sum to 1; the loss is the sum of R's off-diagonal entries divided by K.
    """
    p = torch.softmax(logits / temperature, dim=1)
    b, k = p.shape
    if entropy_weighting:
        with torch.no_grad():
            entropy = -(p * torch.log(p + 1e-5)).sum(dim=1)
            w = 1.0 + torch.exp(-entropy)
            w = b * w / w.sum()
        r = (p * w[:, None]).T @ p
    else:
        r = p.T @ p
    r = r / r.sum(dim=1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
    return (r.sum() - r.trace()) / k


@register_method
class Core(GradientMethod):
    name = "core"
    description = "Core: class-confusion objective over alpha-BN (our reading of the paper)"
    default_norm = "alpha-bn"
    options = {
        **OPTIMIZER_OPTIONS,
        "temperature": Option(2.5, float, "softmax temperature T", positive),
        "entropy_weighting": Option(True, bool, "weight samples by 1 + exp(-entropy)"),
    }

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return class_confusion_loss(
            logits, self.hparams["temperature"], self.hparams["entropy_weighting"]
        )
