"""The one place where adaptation methods are listed by name.

A method is a *norm method* (what replaces each BatchNorm: ``source``, ``tbn``, ...) optionally
combined with an *objective* optimised online over the norm layers' affine parameters (``tent``,
``core``). Modules in ``tta.norms`` and ``tta.methods`` register themselves here on import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from tta._errors import unknown
from tta.options import Option


@dataclass(frozen=True)
class NormMethod:
    """A BatchNorm replacement. ``layer(bn, name=..., **layer_kwargs)`` builds one adapted layer.

    ``prepare`` turns the method's resolved options into the layer keyword arguments once per
    wrapped model (for example a seeded generator shared by all layers, drawn in module order).
    """

    name: str
    layer: Callable[..., torch.nn.Module]
    description: str
    options: dict[str, Option] = field(default_factory=dict)
    prepare: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None
    needs_batchnorm: bool = True

    def layer_kwargs(self, options: dict[str, Any]) -> dict[str, Any]:
        return self.prepare(dict(options)) if self.prepare else dict(options)


@dataclass(frozen=True)
class Objective:
    """A loss on the logits of a batch, minimised online over the norm layers' γ and β."""

    name: str
    loss: Callable[..., torch.Tensor]
    description: str
    default_norm: str
    options: dict[str, Option] = field(default_factory=dict)


NORMS: dict[str, NormMethod] = {}
OBJECTIVES: dict[str, Objective] = {}


def register_norm(method: NormMethod) -> NormMethod:
    NORMS[method.name] = method
    return method


def register_objective(objective: Objective) -> Objective:
    OBJECTIVES[objective.name] = objective
    return objective


def method_names() -> list[str]:
    return list(NORMS) + list(OBJECTIVES)


def available_methods() -> dict[str, str]:
    """Every method name with a one-line description."""
    return {
        **{n: m.description for n, m in NORMS.items()},
        **{n: o.description for n, o in OBJECTIVES.items()},
    }


def get_norm(name: str) -> NormMethod:
    if name not in NORMS:
        raise ValueError(unknown("norm method", name, NORMS))
    return NORMS[name]


def lookup(name: str) -> tuple[Optional[Objective], Optional[NormMethod]]:
    """(objective, norm) for a method name; exactly one of them is set."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a name (str), got {type(name).__name__}")
    if name in NORMS:
        return None, NORMS[name]
    if name in OBJECTIVES:
        return OBJECTIVES[name], None
    raise ValueError(unknown("method", name, method_names()))
