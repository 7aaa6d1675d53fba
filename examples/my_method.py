"""A method of your own, registered from outside tta: cross-entropy to confident pseudo-labels.

Import this module and the method runs like any other (``tta.adapt(model, "pseudo-label")``,
over any norm via ``norm=``); in a run config, list it under ``plugins: [examples/my_method.py]``.
"""

import torch
import torch.nn.functional as F

import tta
from tta.methods.optim import OPTIMIZER_OPTIONS
from tta.options import Option, in_range


@tta.register_method
class PseudoLabel(tta.GradientMethod):
    name = "pseudo-label"
    description = "cross-entropy to the model's own confident predictions (Lee, 2013)"
    default_norm = "tbn"
    options = {
        **OPTIMIZER_OPTIONS,
        "threshold": Option(0.9, float, "minimum confidence of a pseudo-label", in_range(0, 1)),
    }
    state_vars = ("num_updates",)  # saved in state_dict() and restored by reset()

    def prepare(self) -> None:
        super().prepare()  # trains the norm layers' γ, β with the optimiser options
        self.num_updates = 0

    def loss(self, logits: torch.Tensor, x: torch.Tensor):
        probs = logits.softmax(1)
        confident = probs.max(1).values >= self.hparams["threshold"]
        if not confident.any():
            return None  # nothing confident: no update on this batch
        self.num_updates += 1
        return F.cross_entropy(logits[confident], probs.argmax(1)[confident])
