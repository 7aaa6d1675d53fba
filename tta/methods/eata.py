"""ETA and EATA: efficient anti-forgetting test-time adaptation (Niu et al., ICML 2022).

ETA minimises the entropy of *reliable* and *non-redundant* samples, each re-weighted by how
certain it is:

- reliable: entropy E < E₀ = ``entropy_margin``·ln C (0.4·ln C);
- non-redundant: |cos(p̄, p_b)| < d₀ (``d_margin``), p̄ a moving average (0.9) of the mean
  probability vector of the samples that passed both filters (no redundancy filter until p̄
  exists);
- weight 1 / exp(E − E₀), loss = mean over the kept samples; no update when none is kept.

EATA adds the Fisher regulariser α·Σ F⊙(θ − θ₀)² with the diagonal Fisher information F estimated
on clean source images (cross-entropy against the model's own predictions, squared gradients
averaged over batches of the stream's batch size), as the authors' code does.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from tta._errors import TTAError
from tta.methods.optim import OPTIMIZER_OPTIONS, GradientMethod
from tta.methods.tent import entropy
from tta.options import Option, at_least_one, in_range, positive
from tta.registry import register_method


@register_method
class ETA(GradientMethod):
    name = "eta"
    description = "ETA (EATA without Fisher): entropy of reliable, non-redundant samples, weighted"
    options = {
        **OPTIMIZER_OPTIONS,
        "entropy_margin": Option(
            0.4, float, "E0 as a fraction of ln C (reliable: E < E0)", positive
        ),
        "d_margin": Option(
            0.05, float, "redundancy threshold d0 on |cos| (0.4 for CIFAR-10)", in_range(0, 1)
        ),
    }
    state_vars = ("mean_probs", "num_reliable", "num_used")

    def prepare(self) -> None:
        super().prepare()
        self.mean_probs: Optional[torch.Tensor] = None
        self.num_reliable = 0  # samples that passed the entropy filter, for diagnostics
        self.num_used = 0  # samples that passed both filters

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
        e0 = self.hparams["entropy_margin"] * math.log(logits.shape[1])
        ent = entropy(logits)
        reliable = ent < e0
        ent, kept = ent[reliable], logits[reliable]
        probs = kept.softmax(1)
        if self.mean_probs is not None:
            cos = F.cosine_similarity(self.mean_probs.unsqueeze(0), probs, dim=1)
            novel = cos.abs() < self.hparams["d_margin"]
            ent, probs = ent[novel], probs[novel]
        self.num_reliable += int(reliable.sum())
        self.num_used += ent.shape[0]
        if probs.shape[0] > 0:
            with torch.no_grad():
                batch_mean = probs.mean(0)
                if self.mean_probs is None:
                    self.mean_probs = batch_mean
                else:
                    self.mean_probs = 0.9 * self.mean_probs + (1 - 0.9) * batch_mean
        if ent.shape[0] == 0:
            return None
        weight = 1.0 / torch.exp(ent.detach() - e0)
        return (ent * weight).mean(0) + self.regulariser()

    def regulariser(self) -> torch.Tensor | float:
        return 0.0


@register_method
class EATA(ETA):
    name = "eata"
    description = "EATA: ETA plus a Fisher regulariser against forgetting (needs source images)"
    options = {
        **ETA.options,
        "fisher_alpha": Option(
            2000.0, float, "weight α of the Fisher regulariser", in_range(0, 1e12)
        ),
        "fisher_samples": Option(2000, int, "clean source images for the Fisher", at_least_one),
    }

    @classmethod
    def source_images_wanted(cls, options: dict) -> int:
        return options["fisher_samples"]

    def prepare(self) -> None:
        super().prepare()
        images = self.context.source_images
        if images is None or len(images) == 0:
            raise TTAError(
                "method 'eata' needs clean source images for its Fisher regulariser: in Python "
                "tta.adapt(model, 'eata', context=tta.RunContext(source_images=x)), in a run "
                "config data.source_data (the training split of data.clean by default); "
                "'eta' is EATA without the regulariser and needs none"
            )
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        fisher = self.fisher_information(images[: self.hparams["fisher_samples"]], params)
        for i, (p, f) in enumerate(zip(params, fisher)):
            self.register_buffer(f"fisher_{i}", f)
            self.register_buffer(f"anchor_{i}", p.detach().clone())

    def fisher_information(self, images: torch.Tensor, params: list) -> list[torch.Tensor]:
        """Mean over batches of the squared gradient of the cross-entropy to the predicted class.

        Each batch is normalised from the norm layers' state at wrapping time, which it leaves
        unchanged (a stateful norm does not adapt to the source images).
        """
        device = params[0].device
        size = self.context.batch_size or 64
        sums = [torch.zeros_like(p) for p in params]
        batches = 0
        initial = self.norm_state()
        with torch.enable_grad():
            for start in range(0, len(images), size):
                x = images[start : start + size].to(device, params[0].dtype)
                with self.norm_state_as(initial):
                    logits = self.model(x)
                    loss = F.cross_entropy(logits, logits.argmax(1))
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                for s, g in zip(sums, grads):
                    if g is not None:
                        s.add_(g.detach() ** 2)
                batches += 1
        return [s / batches for s in sums]

    def regulariser(self) -> torch.Tensor:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        alpha = self.hparams["fisher_alpha"]
        total = 0.0
        for i, p in enumerate(params):
            f, anchor = getattr(self, f"fisher_{i}"), getattr(self, f"anchor_{i}")
            total = total + alpha * (f * (p - anchor) ** 2).sum()
        return total
