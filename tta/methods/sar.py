"""SAR: sharpness-aware and reliable entropy minimisation (Niu et al., ICLR 2023).

Per batch, as in the authors' code:

1. entropy E of each sample; keep the reliable ones, E < E₀ = ``entropy_margin``·ln C;
2. gradient g of their mean entropy; move every trained parameter to θ + ρ·g/(‖g‖ + 1e-12)
   (SAM's ascent step, ‖g‖ the norm over all trained parameters together, ρ = ``rho``);
3. second forward at the perturbed point; keep samples reliable in both passes; the gradient of
   their mean entropy, taken there, updates θ with the base optimiser (SGD by default);
4. a moving average (0.9) of the second loss; when it falls below ``reset_threshold`` the model
   has collapsed to confident predictions and is reset to its initial state (parameters, norm
   statistics, the moving average) — but, as in the authors' code, the base optimiser keeps its
   momentum through that recovery. ``adapted.reset()`` called by the user restores everything.

Trained: γ, β of the norm layers except those whose names mark the top of the network in the
authors' code (``layer4`` of ResNets, ``blocks.9``–``blocks.11`` and the final ``norm`` of ViTs).
Over a stateful norm (rbn, unmix-tns) the second pass normalises with the statistics the first
pass saw and leaves them as the first pass left them: SAM perturbs θ of one and the same function.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from tta.methods.optim import OPTIMIZER_OPTIONS, GradientMethod
from tta.methods.tent import entropy
from tta.options import Option, in_range, positive
from tta.registry import register_method

# Parameters under these layer names stay frozen (the authors' choice for ResNet-50/ViT-B).
_TOP_LAYERS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")


def below_top_layers(name: str) -> bool:
    """Whether a norm layer named ``name`` is adapted by SAR and DeYO (authors' rule)."""
    return not (any(t in name for t in _TOP_LAYERS) or name == "norm")


def parameters_below_top_layers(norm_layers: dict[str, nn.Module]) -> list[nn.Parameter]:
    """γ, β of the norm layers SAR and DeYO adapt: all but the top of the network."""
    return [
        p
        for name, layer in norm_layers.items()
        if below_top_layers(name)
        for p in (layer.weight, layer.bias)
        if isinstance(p, nn.Parameter)
    ]


@register_method
class SAR(GradientMethod):
    name = "sar"
    description = "SAR: sharpness-aware entropy minimisation of reliable samples, model recovery"
    options = {
        **{k: v for k, v in OPTIMIZER_OPTIONS.items() if k != "steps"},  # one SAM update a batch
        "optimizer": Option(
            "sgd", str, "base optimiser of SAM: sgd or adam", choices=("adam", "sgd")
        ),
        "entropy_margin": Option(
            0.4, float, "E0 as a fraction of ln C (reliable: E < E0)", positive
        ),
        "rho": Option(0.05, float, "SAM neighbourhood radius ρ", in_range(0, 10)),
        "reset_threshold": Option(
            0.2,
            float,
            "reset when the moving average of the loss falls below this",
            in_range(0, 1e3),
        ),
    }
    state_vars = ("loss_ema",)

    def prepare(self) -> None:
        super().prepare()
        self.loss_ema = None

    def parameters_to_adapt(self) -> list[nn.Parameter]:
        return parameters_below_top_layers(self.norm_layers)

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        opt = self.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        with torch.enable_grad():
            opt.zero_grad(set_to_none=True)
            before = self.norm_state()
            logits = self.model(x)
            e0 = self.hparams["entropy_margin"] * math.log(logits.shape[1])
            ent = entropy(logits)
            reliable = ent < e0
            ent[reliable].mean(0).backward()
            originals = self._ascend(params)
            with self.norm_state_as(before):  # backward inside: the buffers are restored after
                ent2 = entropy(self.model(x))[reliable]
                loss2 = ent2[ent2 < e0].mean(0)
                loss2.backward()
            value = loss2.item()
            if not math.isnan(value):
                self.loss_ema = (
                    value if self.loss_ema is None else 0.9 * self.loss_ema + (1 - 0.9) * value
                )
            with torch.no_grad():
                for p, old in originals:
                    p.copy_(old)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.loss_ema is not None and self.loss_ema < self.hparams["reset_threshold"]:
            self.wants_reset = True
            # The authors' recovery (and MDTTA's) restores the model and SAM's own state but not
            # the base optimiser's (SGD momentum): keep it across the reset, as they do.
            self._kept_optimizer_state = copy.deepcopy(self.optimizer.state_dict()["state"])
        return logits.detach()

    def reset(self) -> None:
        kept = getattr(self, "_kept_optimizer_state", None)
        self._kept_optimizer_state = None
        if kept is not None:  # a recovery, not a reset asked for by the user
            state = self.optimizer.state_dict()
            state["state"] = kept
            self.optimizer.load_state_dict(state)

    @torch.no_grad()
    def _ascend(self, params: list[nn.Parameter]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """SAM's first step: θ += ρ·g/(‖g‖ + 1e-12); returns the original values; clears grads."""
        with_grad = [p for p in params if p.grad is not None]
        originals = [(p, p.detach().clone()) for p in with_grad]
        if with_grad:
            norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in with_grad]), p=2)
            scale = self.hparams["rho"] / (norm + 1e-12)
            for p in with_grad:
                p.add_(p.grad * scale.to(p))
        for p in params:
            p.grad = None
        return originals
