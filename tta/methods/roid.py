"""ROID: universal test-time adaptation through weight ensembling, diversity weighting and prior
correction (Marsden, Döbler and Yang, WACV 2024).

Per test batch, as the authors' code does (MDTTA's ``methods/roid.py``; the UnMix-TNS authors run
the same code over their norm layers):

1. weights (``use_weighting``): a diversity score d_b = 1 − cos(p̄, p_b) against a moving average p̄
   of the batch-mean probabilities, and a certainty score c_b = −H(p_b), each min-max normalised
   over the batch; samples with d_b below the batch mean of d are dropped, the others weigh
   w_b = exp(d_b·c_b / T) (T = ``temperature``, 1/3); then p̄ ← 0.9·p̄ + 0.1·mean_b p_b;
2. loss: the soft likelihood ratio −Σ_c p_c·log(p_c / (1 − p_c) + 1e-5), p clipped to ≤ 0.99,
   weighted by w_b over the kept samples, plus (``use_consistency``) the symmetric cross-entropy
   between the kept samples' logits and those of an augmented view of them, weighted by w_b;
   both sums divided by the stream's batch size (``context.batch_size``, the authors'
   ``TEST.BATCH_SIZE``; the batch's own size when not given);
3. one optimiser step on the norm layers' γ, β (and those of any LayerNorm/GroupNorm, as the
   authors' ``collect_params``), then weight ensembling θ ← 0.99·θ + 0.01·θ_source over the
   trained parameters (``momentum_src``); θ_source is kept as buffers of the method;
4. prior correction (``use_prior_correction``) of the returned prediction, from the logits of the
   batch's forward (before the update): with the batch prior π = mean_b p_b and
   δ = max(1/B, 1/C) / max π, the logits are multiplied by (π + δ) / (1 + δ·C). The authors'
   code multiplies the logits, not the probabilities, and so does this one.

The augmented view is MDTTA's ``get_tta_transforms(img_size, padding_mode="reflect",
cotta_augs=False)``: ``tta.methods.augment.TTAAugment(cotta_augs=False, padding_mode="reflect")``
at the batch's image size, its draws from the method's own seeded generator. The view is forwarded
through the network like the batch itself, so a stateful norm (rbn, unmix-tns) moves its
statistics a second time, on the augmented kept samples, as in the authors' code.

Defaults: ROID options from MDTTA's ``conf.py``; optimiser from its ``cfgs/cifar10_c/roid.yaml``
(Adam, lr 1e-3, β₁ 0.9, no weight decay, one step). The UnMix-TNS authors' ``run.sh`` overrides
the learning rate to 1e-5 (CIFAR-10/100-C, batch size 64) for their experiments.

Beyond the authors' code: with ``use_weighting=False`` every sample is kept with weight 1 (their
code then fails when the consistency loss is on); a min-max normalisation over a batch whose
scores are all equal gives 0 instead of NaN; with ``steps > 1`` each step is a full ROID update
and the prediction returned is the first step's, as for every ``GradientMethod``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tta.methods.augment import TTAAugment
from tta.methods.optim import OPTIMIZER_OPTIONS, GradientMethod
from tta.methods.teacher import ema_, symmetric_cross_entropy
from tta.options import Option, in_range, positive
from tta.registry import register_method


def soft_likelihood_ratio(
    logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5
) -> torch.Tensor:
    """Per-sample soft likelihood ratio loss −Σ_c p_c·log(p_c/(1 − p_c) + eps), p ≤ ``clip``."""
    p = logits.softmax(1).clamp(min=0.0, max=clip)
    return -(p * torch.log(p / (1.0 - p) + eps)).sum(1)


def _min_max(v: torch.Tensor) -> torch.Tensor:
    """(v − min) / (max − min) over the batch; all zeros when every entry is equal."""
    low, span = v.min(), v.max() - v.min()
    return torch.where(span > 0, (v - low) / span, torch.zeros_like(v))


@torch.no_grad()
def roid_weights(
    logits: torch.Tensor, class_probs: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROID's sample weights and the mask of dropped samples, shape (B,) each.

    Diversity d = minmax(1 − cos(p̄, p_b)), certainty c = minmax(Σ p·log p); dropped: d < mean d;
    weight exp(d·c / T) for the others, 0 for the dropped.
    """
    probs = logits.softmax(1)
    diversity = _min_max(1 - F.cosine_similarity(class_probs.unsqueeze(0), probs, dim=1))
    dropped = diversity < diversity.mean()
    certainty = _min_max((probs * logits.log_softmax(1)).sum(1))
    weights = torch.exp(diversity * certainty / temperature)
    weights[dropped] = 0.0
    return weights, dropped


@torch.no_grad()
def prior_correction(logits: torch.Tensor) -> torch.Tensor:
    """The logits times the smoothed batch prior (π + δ)/(1 + δ·C), δ = max(1/B, 1/C)/max π."""
    b, c = logits.shape
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / b, 1 / c) / prior.max()
    return logits * ((prior + smooth) / (1 + smooth * c))


@register_method
class ROID(GradientMethod):
    name = "roid"
    description = "ROID: weighted soft likelihood ratio + consistency, weight ensembling, prior"
    default_norm = "tbn"
    options = {
        **OPTIMIZER_OPTIONS,
        "use_weighting": Option(True, bool, "certainty and diversity weighting, sample filter"),
        "use_prior_correction": Option(True, bool, "correct the prediction by the batch prior"),
        "use_consistency": Option(True, bool, "consistency loss with an augmented view"),
        "momentum_src": Option(
            0.99, float, "weight ensembling θ ← m·θ + (1−m)·θ_source", in_range(0.0, 1.0)
        ),
        "momentum_probs": Option(
            0.9, float, "moving average of the batch-mean probabilities", in_range(0.0, 1.0)
        ),
        "temperature": Option(1 / 3, float, "temperature T of the weights exp(d·c/T)", positive),
    }
    state_vars = ("class_probs", "rng_state")

    def parameters_to_adapt(self) -> list[nn.Parameter]:
        """γ, β of the adapted norm layers, plus those of any LayerNorm/GroupNorm (authors')."""
        params = self.norm_parameters()
        seen = {id(p) for p in params}
        for m in self.model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                for p in (m.weight, m.bias):
                    if isinstance(p, nn.Parameter) and id(p) not in seen:
                        params.append(p)
                        seen.add(id(p))
        return params

    def prepare(self) -> None:
        super().prepare()
        params = self.trained_parameters()
        for i, p in enumerate(params):
            self.register_buffer(f"source_{i}", p.detach().clone())
        self.class_probs: Optional[torch.Tensor] = None  # uniform at the first batch

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    # -- the augmented view ------------------------------------------------------------------
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """MDTTA's ROID view of a batch (square images): CoTTA's augmentation without blur and
        noise, at the batch's image size, its random parameters drawn from the method's
        generator."""
        aug = TTAAugment(x.shape[-1], soft=False, cotta_augs=False, padding_mode="reflect")
        return self.random(lambda g: aug(x, g))

    # -- one batch ---------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
        o = self.hparams
        n = self.context.batch_size or x.shape[0]
        if self.class_probs is None:
            c = logits.shape[1]
            self.class_probs = torch.full((c,), 1.0 / c, dtype=logits.dtype, device=logits.device)
        if o["use_weighting"]:
            weights, dropped = roid_weights(logits, self.class_probs, o["temperature"])
            with torch.no_grad():
                m = o["momentum_probs"]
                self.class_probs = m * self.class_probs + (1 - m) * logits.softmax(1).mean(0)
        else:
            weights = torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
            dropped = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        kept = ~dropped
        slr = soft_likelihood_ratio(logits)
        if o["use_weighting"]:
            slr = (slr * weights)[kept]
        loss = slr.sum() / n
        if o["use_consistency"]:
            # the authors forward the view as the batch: a stateful norm moves a second time
            logits_aug = self.model(self.augment(x[kept]))
            sce = symmetric_cross_entropy(logits_aug, logits[kept])
            loss = loss + (sce * weights[kept]).sum() / n
        return loss

    @torch.no_grad()
    def ensemble_with_source(self) -> None:
        """θ ← m·θ + (1 − m)·θ_source for every trained parameter (the authors' update)."""
        m = self.hparams["momentum_src"]
        params = self.trained_parameters()
        ema_(params, (getattr(self, f"source_{i}") for i in range(len(params))), m, 1 - m)

    def after_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.ensemble_with_source()

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        prediction = super().forward_and_adapt(x)
        if self.hparams["use_prior_correction"]:
            prediction = prior_correction(prediction)
        return prediction
