"""LAME: Laplacian-adjusted maximum-likelihood estimation (Boudiaf et al., CVPR 2022).

LAME changes no parameter. It replaces the batch's predictions by assignments Y that stay close to
the model's probabilities P and agree between samples whose features are close:

    minimise Σ_b KL(Y_b ‖ P_b) − λ Σ_bc w_bc Y_bᵀ Y_c,

solved by the fixed point Y ← softmax(log P + λ·W·Y), started from Y = P, for at most ``max_steps``
iterations or until the energy changes by at most 1e-8 of its value (the authors' loop and
tolerance). W is an affinity between the L2-normalised features (the classifier's input, see
``tta.methods.features``): ``rbf`` exp(−d²/2σ²) with σ the mean distance to the ``knn``-th
nearest point (self included, as in the authors' code); ``knn``, 1 for each of the ``knn`` nearest
other points; ``linear``, the dot product. The output is Y, a probability per class: its argmax is
the prediction. The norm layers underneath (``norm=``, default ``source``) adapt as usual.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from tta.methods.base import Method
from tta.methods.features import classifier_of, features_and_logits
from tta.options import Option, at_least_one, positive
from tta.registry import register_method


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of x, computed from differences (no x·xᵀ shortcut)."""
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def affinity(features: torch.Tensor, kind: str, knn: int) -> torch.Tensor:
    """(N, N) affinity of L2-normalised features."""
    n = features.shape[0]
    if kind == "linear":
        return features @ features.T
    dist = pairwise_distances(features)
    if kind == "knn":  # the k nearest *other* points (a duplicate row is not the point itself)
        others = dist.clone().fill_diagonal_(float("inf"))
        index = others.topk(min(knn, n - 1), dim=-1, largest=False).indices
        return torch.zeros(n, n, dtype=features.dtype, device=features.device).scatter_(
            -1, index, 1.0
        )
    kth = dist.topk(min(knn, n), dim=-1, largest=False).values[:, -1]
    sigma = kth.mean()  # 0 for a batch of one (or k = 1): every affinity is then exp(0) or 0
    return torch.exp(-(dist**2) / (2 * sigma**2).clamp_min(torch.finfo(dist.dtype).tiny))


def laplacian_optimization(
    unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float = 1.0, max_steps: int = 100
) -> torch.Tensor:
    """Y = softmax(−unary + λ·K·Y) iterated from softmax(−unary) until the energy settles."""
    y = (-unary).softmax(-1)
    old: Optional[float] = None
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)
        y = (-unary + pairwise).softmax(-1)
        energy = (unary * y - bound_lambda * pairwise * y + y * torch.log(y.clip(1e-20))).sum()
        energy = energy.item()
        if i > 1 and abs(energy - old) <= 1e-8 * abs(old):
            break
        old = energy
    return y


@register_method
class LAME(Method):
    name = "lame"
    description = "LAME: Laplacian-regularised outputs on the batch's features, no parameter update"
    default_norm = "source"
    needs_batchnorm = False
    options = {
        "affinity": Option("rbf", str, "feature affinity", choices=("rbf", "knn", "linear")),
        "knn": Option(5, int, "neighbours k of the affinity", at_least_one),
        "bound_lambda": Option(1.0, float, "weight λ of the Laplacian term", positive),
        "max_steps": Option(100, int, "fixed-point iterations at most", at_least_one),
        "force_symmetry": Option(False, bool, "use (W + Wᵀ)/2"),
    }

    def prepare(self) -> None:
        classifier_of(self.model)  # fail at wrapping time, naming what to provide

    @torch.no_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        features, logits = features_and_logits(self.model, x)
        unary = -torch.log(logits.softmax(dim=1) + 1e-10)
        features = F.normalize(features, p=2, dim=-1)
        kernel = affinity(features, self.hparams["affinity"], self.hparams["knn"])
        if self.hparams["force_symmetry"]:
            kernel = 0.5 * (kernel + kernel.T)
        return laplacian_optimization(
            unary, kernel, self.hparams["bound_lambda"], self.hparams["max_steps"]
        )
