"""Gradient methods: a loss on each test batch, minimised online by an optimiser.

``GradientMethod`` holds what TENT, Core, EATA, SAR and DeYO share: the optimiser options, the
choice of trainable parameters (the adapted norm layers' γ and β unless a method says otherwise)
and the step loop. A subclass writes ``loss(logits, x)``; returning ``None`` skips the update
(every sample filtered out).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from tta._errors import TTAError
from tta.methods.base import Method
from tta.options import Option, at_least_one, in_range


def _betas(v: Any) -> Optional[str]:
    ok = len(v) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in v
    )
    return None if ok else "must be two numbers in [0, 1)"


def _lr(v: float) -> Optional[str]:
    return None if 0 < v <= 1 else "must be > 0 and <= 1"


OPTIMIZER_OPTIONS: dict[str, Option] = {
    "optimizer": Option("adam", str, "adam or sgd", choices=("adam", "sgd")),
    "lr": Option(1e-3, float, "learning rate", _lr),
    "betas": Option((0.9, 0.999), tuple, "Adam betas", _betas),
    "momentum": Option(0.9, float, "SGD momentum", in_range(0.0, 1.0)),
    "weight_decay": Option(0.0, float, "weight decay", in_range(0.0, 1.0)),
    "steps": Option(1, int, "optimiser updates per batch", at_least_one),
    "episodic": Option(False, bool, "reset to the source state before every batch"),
}

# Options that only one optimiser reads; giving one to the other optimiser is an error.
ONLY_FOR = {"betas": "adam", "momentum": "sgd"}


def check_optimizer_options(owner: str, given: dict[str, Any], chosen: str, norm_options) -> None:
    """Refuse an optimiser option the chosen optimiser ignores (``momentum`` under Adam)."""
    for key, needs in ONLY_FOR.items():
        if key in given and chosen != needs:
            hint = (
                f"; the norm method's {key!r} is given as 'norm_{key}'"
                if key in norm_options
                else ""
            )
            raise TTAError(
                f"option {key!r} of {owner} is read only by optimizer={needs!r}, but the "
                f"optimizer is {chosen!r}{hint}"
            )


#: For methods that take one optimiser step per update of their own (NOTE, RoTTA): no ``steps``.
ONE_STEP_OPTIMIZER_OPTIONS = {k: v for k, v in OPTIMIZER_OPTIONS.items() if k != "steps"}


def build_optimizer(params: list[nn.Parameter], o: dict[str, Any]) -> torch.optim.Optimizer:
    if o["optimizer"] == "adam":
        return torch.optim.Adam(
            params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"]
        )
    return torch.optim.SGD(
        params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"]
    )


class GradientMethod(Method):
    """Online minimisation of ``loss`` over ``parameters()`` (default: norm layers' γ, β).

    The logits returned for a batch are those of the first forward, the one that computed the
    first loss, i.e. the prediction made before this batch's update. Every step is a full
    forward, so with ``steps > 1`` a stateful norm underneath (rbn, unmix-tns) updates its
    statistics once per step.
    """

    options = OPTIMIZER_OPTIONS
    # Whether loss() makes extra forwards that need the norm state from before the batch
    # (``self.pre_batch_norm_state``, see ``Method.norm_state_as``).
    extra_forwards = False

    def parameters_to_adapt(self) -> list[nn.Parameter]:
        return self.norm_parameters()

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return build_optimizer(params, self.hparams)

    def prepare(self) -> None:
        params = self.parameters_to_adapt()
        if not params:
            raise TTAError(
                f"method {self.name!r} trains the BatchNorm affine parameters, but no BatchNorm "
                "layer of this model has any (affine=False everywhere)"
            )
        for p in params:
            p.requires_grad_(True)
        self.optimizer = self.make_optimizer(params)

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (ROID's weight ensembling); default: nothing."""

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        prediction = None
        with torch.enable_grad():
            for _ in range(self.hparams.get("steps", 1)):
                if self.extra_forwards:
                    self.pre_batch_norm_state = self.norm_state()
                logits = self.model(x)
                loss = self.loss(logits, x)
                self.optimizer.zero_grad(set_to_none=True)
                if loss is not None:
                    loss.backward()
                    self.optimizer.step()
                    self.after_step()
                if prediction is None:
                    prediction = logits.detach()
        return prediction
