"""DeYO: destroy your object (Lee et al., ICLR 2024).

Entropy alone cannot tell a confident prediction that rests on the object's shape from one that
rests on texture or background. DeYO destroys the shape (shuffles the image's patches) and keeps a
sample only if that makes its predicted class much less likely:

1. entropy filter: E < ``entropy_margin``·ln C (0.5·ln C);
2. PLPD = p(ŷ | x) − p(ŷ | x′), x′ the patch-shuffled image (``patch_len``² patches, a seeded
   permutation per image); keep samples with PLPD > ``plpd_threshold`` (τ = 0.2);
3. weight 1/exp(E − E₀) + 1/exp(−PLPD) with E₀ = 0.4·ln C (``reweight_margin``); loss = mean of
   the weighted entropies; no update when no sample is kept.

Trained parameters follow SAR's rule (the authors' code). The augmented forward leaves a stateful
norm's statistics as the test batch left them, and normalises x′ as the batch itself was. ``augmentation`` ``pixel`` shuffles pixels and
``occ`` occludes a square with the image mean, as the authors' other options.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from tta.methods.optim import OPTIMIZER_OPTIONS, GradientMethod
from tta.methods.sar import parameters_below_top_layers
from tta.methods.tent import entropy
from tta.options import Option, at_least_one, in_range, positive
from tta.registry import register_method


@register_method
class DeYO(GradientMethod):
    name = "deyo"
    description = "DeYO: entropy and shape-based (PLPD) sample filtering and weighting"
    options = {
        **OPTIMIZER_OPTIONS,
        "entropy_margin": Option(0.5, float, "filter: keep E < this·ln C", positive),
        "reweight_margin": Option(0.4, float, "E0 of the weight, as a fraction of ln C", positive),
        "plpd_threshold": Option(0.2, float, "filter: keep PLPD > τ", in_range(-1, 1)),
        "augmentation": Option(
            "patch", str, "how the object is destroyed", choices=("patch", "pixel", "occ")
        ),
        "patch_len": Option(4, int, "patches per side for 'patch'", at_least_one),
        "occlusion_size": Option(112, int, "square side for 'occ'", at_least_one),
        "occlusion_start": Option(56, int, "top-left row and column for 'occ'", in_range(0, 1e6)),
        "reweight_entropy": Option(True, bool, "weight by 1/exp(E − E0)"),
        "reweight_plpd": Option(True, bool, "weight by 1/exp(−PLPD)"),
    }
    state_vars = ("rng_state",)
    extra_forwards = True

    def prepare(self) -> None:
        super().prepare()

    def parameters_to_adapt(self) -> list[nn.Parameter]:
        return parameters_below_top_layers(self.norm_layers)

    def destroy(self, x: torch.Tensor) -> torch.Tensor:
        """The object-destroying view x′ of a batch (B, C, H, W)."""
        x = x.detach().clone()
        b, c, h, w = x.shape
        kind = self.hparams["augmentation"]
        if kind == "occ":
            size, start = self.hparams["occlusion_size"], self.hparams["occlusion_start"]
            mean = x.reshape(b, c, -1).mean(2)[:, :, None, None]
            window = x[:, :, start : start + size, start : start + size]
            window.copy_(mean.expand_as(window))
            return x
        if kind == "pixel":
            perm = self.random(lambda g: torch.randperm(h * w, generator=g)).to(x.device)
            return x.reshape(b, c, h * w)[:, :, perm].reshape(b, c, h, w)
        n = self.hparams["patch_len"]
        hh, ww = (h // n) * n, (w // n) * n
        if (hh, ww) != (h, w):
            x = TF.resize(x, [hh, ww])
        ph, pw = hh // n, ww // n
        patches = (
            x.reshape(b, c, n, ph, n, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c, ph, pw)
        )
        order = self.random(lambda g: torch.rand(b, n * n, generator=g)).argsort(dim=-1)
        patches = patches[torch.arange(b)[:, None], order.to(x.device)]
        x = patches.reshape(b, n, n, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
        return TF.resize(x, [h, w]) if (hh, ww) != (h, w) else x

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
        log_c = math.log(logits.shape[1])
        ent = entropy(logits)
        keep = ent < self.hparams["entropy_margin"] * log_c
        ent = ent[keep]
        if ent.shape[0] == 0:
            return None
        with torch.no_grad(), self.norm_state_as(self.pre_batch_norm_state):
            logits_prime = self.model(self.destroy(x[keep]))
        probs = logits[keep].softmax(1)
        cls = probs.argmax(dim=1, keepdim=True)
        plpd = (probs.gather(1, cls) - logits_prime.softmax(1).gather(1, cls)).reshape(-1)
        shaped = plpd > self.hparams["plpd_threshold"]
        ent, plpd = ent[shaped], plpd[shaped]
        if ent.shape[0] == 0:
            return None
        e0 = self.hparams["reweight_margin"] * log_c
        weight = float(self.hparams["reweight_entropy"]) * (1.0 / torch.exp(ent.detach() - e0))
        weight = weight + float(self.hparams["reweight_plpd"]) * (1.0 / torch.exp(-plpd.detach()))
        if self.hparams["reweight_entropy"] or self.hparams["reweight_plpd"]:
            ent = ent * weight
        return ent.mean(0)
