"""``tta.adapt``: wrap a network so it predicts and adapts online in one call."""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from tta import registry
from tta._errors import did_you_mean
from tta.methods.optim import adapt_step, build_optimizer, split_objective_options
from tta.norms.base import AdaptiveNorm
from tta.options import resolve
from tta.swap import find_batchnorms, replace_batchnorms


class AdaptedModel(nn.Module):
    """A copy of a network whose BatchNorm layers adapt to the test batches passing through it.

    ``forward`` returns the prediction for the batch and adapts (statistics, components, and for
    gradient methods one or more optimiser steps on the norm layers' γ, β). ``reset()`` restores
    the state right after wrapping bit for bit. The wrapped network always runs in eval mode
    (dropout and stochastic depth off), whatever ``train()``/``eval()`` is called on the wrapper.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str,
        norm: registry.NormMethod,
        norm_options: dict[str, Any],
        objective: Optional[registry.Objective] = None,
        objective_options: Optional[dict[str, Any]] = None,
    ):
        super().__init__()
        self.method = method
        self.norm_method = norm.name
        if objective is None:
            self.options = dict(norm_options)
        else:  # the same names tta.adapt takes: norm=, objective options, norm options
            clash = {
                f"norm_{k}" if k in objective_options else k: v for k, v in norm_options.items()
            }
            self.options = {"norm": norm.name, **objective_options, **clash}
        self.model = copy.deepcopy(model)
        kwargs = norm.layer_kwargs(norm_options)
        layers = replace_batchnorms(
            self.model, lambda name, bn, post: norm.layer(bn, name=name, post=post, **kwargs)
        )
        self.model.eval()
        self.model.requires_grad_(False)
        self.adapted_layers = list(layers)
        self.objective = objective
        self.objective_options = dict(objective_options or {})
        self.optimizer: Optional[torch.optim.Optimizer] = None
        if objective is not None:
            params = [
                p
                for layer in layers.values()
                if isinstance(layer, AdaptiveNorm)
                for p in (layer.weight, layer.bias)
                if p is not None
            ]
            if not params:
                raise ValueError(
                    f"method {method!r} trains the BatchNorm affine parameters, but no BatchNorm "
                    "layer of this model has any (affine=False everywhere)"
                )
            for p in params:
                p.requires_grad_(True)
            self.optim_options, self.loss_options = split_objective_options(self.objective_options)
            self.optimizer = build_optimizer(params, self.optim_options)
        self._initial = self._snapshot()

    # -- state -------------------------------------------------------------------------------
    def _mutable_names(self) -> list[str]:
        """state_dict keys of everything adaptation can change: the adapted norm layers."""
        prefixes = tuple(f"model.{name}." for name in self.adapted_layers)
        return [k for k in self.state_dict(keep_vars=True) if k.startswith(prefixes)]

    def _snapshot(self) -> dict[str, Any]:
        state = self.state_dict(keep_vars=True)
        tensors = {k: state[k].detach().clone() for k in self._mutable_names()}
        opt = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None
        return {"tensors": tensors, "optimizer": opt}

    @torch.no_grad()
    def reset(self) -> None:
        """Restore the state right after wrapping: norm weights, statistics, optimiser."""
        state = self.state_dict(keep_vars=True)
        for key, value in self._initial["tensors"].items():
            state[key].copy_(value)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._initial["optimizer"]))

    def get_extra_state(self) -> dict[str, Any]:
        opt = self.optimizer.state_dict() if self.optimizer is not None else None
        return {"method": self.method, "options": dict(self.options), "optimizer": opt}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "method" not in state:
            raise ValueError("not a tta AdaptedModel state (no 'method' in its extra state)")
        if state["method"] != self.method or state.get("options") != self.options:
            raise ValueError(
                f"state was saved from method {state['method']!r} with options "
                f"{state.get('options')}, but this model is {self.method!r} with {self.options}"
            )
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        opt = getattr(self, "optimizer", None)
        if opt is not None and opt.state:
            # Optimizer.load_state_dict casts state tensors to their parameter's dtype and device
            opt.load_state_dict(opt.state_dict())
        return self

    def train(self, mode: bool = True) -> AdaptedModel:
        """Only flips the wrapper's flag: the wrapped network stays in eval mode."""
        self.training = mode
        self.model.eval()
        return self

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.objective is None:
            with torch.no_grad():
                return self.model(x)
        return adapt_step(self, x)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, options={self.options}"


def resolve_method(method: str, options: dict[str, Any]) -> tuple[Any, ...]:
    """Check a method name and its options without a model.

    Returns (objective or None, norm method, norm options, objective options or None), every
    option filled with its default; raises with the closest valid name for anything unknown.
    """
    options = dict(options)
    objective, norm = registry.lookup(method)
    objective_options: Optional[dict[str, Any]] = None
    valid = list(norm.options) if norm is not None else []
    if objective is not None:
        norm = registry.get_norm(options.pop("norm", objective.default_norm))
        owner = f"method {method!r} (norm {norm.name!r})"
        own = {k: options.pop(k) for k in list(options) if k in objective.options}
        objective_options = resolve(owner, objective.options, own)
        # A norm option whose name the objective also uses (rbn's momentum) is norm_<name>.
        options = {
            k[5:] if k.startswith("norm_") and k[5:] in norm.options else k: v
            for k, v in options.items()
        }
        valid = ["norm", *objective.options]
        valid += [f"norm_{k}" if k in objective.options else k for k in norm.options]
    else:
        owner = f"method {method!r}"
    bad = [k for k in options if k not in norm.options]
    if bad:
        raise TypeError(
            f"unknown option {bad[0]!r} for {owner}.{did_you_mean(bad[0], valid)} "
            f"Valid options: {', '.join(valid) or '(none)'}."
        )
    return objective, norm, resolve(owner, norm.options, options), objective_options


def adapt(model: nn.Module, method: str, **options: Any) -> AdaptedModel:
    """Wrap ``model`` (not modified; a copy is adapted) with an adaptation method by name.

    ``tta.available_methods()`` lists the names. Statistics-only methods (``source``, ``tbn``,
    ``alpha-bn``, ``rbn``, ``unmix-tns``) take their own options; gradient methods (``tent``,
    ``core``) also take ``norm=`` naming the norm method underneath and that method's options
    (a norm option named like an optimiser option, such as rbn's ``momentum``, is
    ``norm_momentum``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__module__}.{type(model).__name__}"
        )
    objective, norm, norm_options, objective_options = resolve_method(method, options)
    if (norm.needs_batchnorm or objective is not None) and not find_batchnorms(model):
        raise ValueError(
            f"model {type(model).__name__} has no BatchNorm layer, and method {method!r} adapts "
            "BatchNorm layers; only 'source' runs on a model without one"
        )
    return AdaptedModel(model, method, norm, norm_options, objective, objective_options)
