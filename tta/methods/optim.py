"""Optimiser options shared by the gradient methods, and the online adaptation step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch

from tta.options import Option, at_least_one, in_range, positive

if TYPE_CHECKING:
    from tta.wrapper import AdaptedModel


def _betas(v: Any) -> Optional[str]:
    ok = len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1)"


OPTIMIZER_OPTIONS: dict[str, Option] = {
    "optimizer": Option("adam", str, "adam or sgd", choices=("adam", "sgd")),
    "lr": Option(1e-3, float, "learning rate", positive),
    "betas": Option((0.9, 0.999), tuple, "Adam betas", _betas),
    "momentum": Option(0.9, float, "SGD momentum", in_range(0.0, 1.0)),
    "weight_decay": Option(0.0, float, "weight decay", in_range(0.0, math.inf)),
    "steps": Option(1, int, "optimiser updates per batch", at_least_one),
    "episodic": Option(False, bool, "reset to the source state before every batch"),
}


def split_objective_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(optimiser and schedule options, loss options) of a gradient method's options."""
    optim = {k: v for k, v in options.items() if k in OPTIMIZER_OPTIONS}
    return optim, {k: v for k, v in options.items() if k not in OPTIMIZER_OPTIONS}


def build_optimizer(params: list[torch.nn.Parameter], o: dict[str, Any]) -> torch.optim.Optimizer:
    if o["optimizer"] == "adam":
        return torch.optim.Adam(
            params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"]
        )
    return torch.optim.SGD(
        params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"]
    )


def adapt_step(adapted: AdaptedModel, x: torch.Tensor) -> torch.Tensor:
    """Predict ``x`` and take ``steps`` optimiser steps on the objective.

    The returned logits are those of the first forward, the one that computed the first loss,
    i.e. the prediction made before this batch's update. Every step is a full forward, so with
    ``steps > 1`` a stateful norm underneath (rbn, unmix-tns) updates its statistics once per step.
    """
    o = adapted.optim_options
    if o["episodic"]:
        adapted.reset()
    opt = adapted.optimizer
    prediction = None
    with torch.enable_grad():
        for _ in range(o["steps"]):
            logits = adapted.model(x)
            loss = adapted.objective.loss(logits, **adapted.loss_options)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if prediction is None:
                prediction = logits.detach()
    return prediction
