"""``tta.adapt``: wrap a network so it predicts and adapts online in one call."""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from tta import registry
from tta._errors import TTAError, TTATypeError, did_you_mean
from tta.methods.base import Method, NormOnly, RunContext
from tta.methods.optim import check_optimizer_options
from tta.options import resolve
from tta.swap import find_batchnorms, replace_batchnorms


def _check_logits(module: nn.Module, inputs: Any, output: Any) -> None:
    """Forward hook on the wrapped network: methods and scoring need the logits as a tensor."""
    if not isinstance(output, torch.Tensor):
        raise TTAError(
            f"model {type(module).__name__} returned a {type(output).__name__}; tta needs its "
            "forward to return the logits as one (batch, classes) tensor (wrap the model to pick "
            "the logits out of the tuple or dict)"
        )


class AdaptedModel(nn.Module):
    """A copy of a network whose BatchNorm layers adapt to the test batches passing through it.

    It holds the copy (``model``), its norm layers (``adapted_layers``, from the one BN swap) and
    one method object (``method``, a ``tta.methods.Method``). ``forward`` returns the prediction
    for the batch and adapts. ``reset()`` restores the state right after wrapping bit for bit:
    norm layers, trained parameters, the method's buffers, optimiser and ``state_vars``. The
    wrapped network always runs in eval mode (dropout and stochastic depth off), whatever
    ``train()``/``eval()`` is called on the wrapper.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str,
        norm: registry.NormMethod,
        norm_options: dict[str, Any],
        method_class: Optional[type[Method]] = None,
        method_options: Optional[dict[str, Any]] = None,
        context: Optional[RunContext] = None,
    ):
        super().__init__()
        context = context or RunContext()
        self.method_name = method
        self.norm_method = norm.name
        if method_class is None:
            self.options = dict(norm_options)
        else:  # the same names tta.adapt takes: norm=, method options, norm options
            clash = {f"norm_{k}" if k in method_options else k: v for k, v in norm_options.items()}
            self.options = {"norm": norm.name, **method_options, **clash}
        self.model = copy.deepcopy(model)
        kwargs = norm.layer_kwargs(norm_options, context)
        layers = replace_batchnorms(
            self.model, lambda name, bn, post: norm.layer(bn, name=name, post=post, **kwargs)
        )
        self.model.eval()
        self.model.requires_grad_(False)
        self.model.register_forward_hook(_check_logits)
        self.adapted_layers = list(layers)
        cls = method_class or NormOnly
        self.method = cls(self.model, layers, dict(method_options or {}), context)
        self.method.prepare()
        # context-bn layers, by name (a plain dict: the modules are registered under self.model)
        self._context_layers = [n for n, m in layers.items() if hasattr(m, "collecting")]
        self._has_context = False
        if self._context_layers and self.method.episodic:
            raise TTAError(
                f"method {method!r} with episodic=True resets to the state right after wrapping "
                "before every batch, and that state has no context statistics for norm "
                "'context-bn'; drop episodic (set_context's statistics hold until the next call)"
            )
        self._initial = self._snapshot()

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        return self.method.optimizer

    @property
    def uses_context(self) -> bool:
        """Whether the norm layers take their statistics from context samples (``context-bn``)."""
        return bool(self._context_layers)

    @torch.no_grad()
    def set_context(self, x: torch.Tensor) -> None:
        """Take every norm layer's statistics from the context images ``x`` (B, C, H, W) of the
        domain about to be streamed (``context-bn``); they hold until the next call or reset."""
        if not self.uses_context:
            raise TTAError(
                f"set_context needs the norm method 'context-bn', but this model adapts with "
                f"{self.method_name!r} over norm {self.norm_method!r}; wrap it with "
                "tta.adapt(model, 'context-bn') or norm='context-bn'"
            )
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise TTATypeError(
                "set_context takes the context images as one float tensor (B, C, H, W) in "
                f"[0, 1], got {type(x).__name__}"
                + (f" of shape {tuple(x.shape)}, dtype {x.dtype}" if torch.is_tensor(x) else "")
            )
        if x.shape[0] < 1:
            raise TTAError("set_context got no context images (batch of 0)")
        # The adapted network and the method's copies of it (teachers, anchors) all normalise
        # with context statistics, each computed through its own layers.
        for net in (self.model, *self.method.children()):
            layers = [m for m in net.modules() if hasattr(m, "collecting")]
            for layer in layers:
                layer.collecting = True
            try:
                net(x)
            finally:
                for layer in layers:
                    layer.collecting = False
        self._has_context = True

    # -- state -------------------------------------------------------------------------------
    def _mutable_names(self) -> list[str]:
        """state_dict keys of everything adaptation can change: the adapted norm layers, the
        parameters the method trains and the method's own buffers."""
        prefixes = tuple(f"model.{name}." for name in self.adapted_layers) + ("method.",)
        trained = {f"model.{n}" for n in self.method.trainable_names()}
        return [
            k
            for k, v in self.state_dict(keep_vars=True).items()
            if (k.startswith(prefixes) or k in trained) and isinstance(v, torch.Tensor)
        ]

    def _snapshot(self) -> dict[str, Any]:
        state = self.state_dict(keep_vars=True)
        tensors = {k: state[k].detach().clone() for k in self._mutable_names()}
        return {"tensors": tensors, "method": copy.deepcopy(self.method.get_extra_state())}

    @torch.no_grad()
    def reset(self) -> None:
        """Restore the state right after wrapping: norm layers, trained parameters, the method's
        buffers, optimiser and state variables."""
        state = self.state_dict(keep_vars=True)
        for key, value in self._initial["tensors"].items():
            state[key].copy_(value)
        self.method.set_extra_state(copy.deepcopy(self._initial["method"]))
        self.method.reset()
        self.method.wants_reset = False
        self._has_context = False

    def get_extra_state(self) -> dict[str, Any]:
        state = {"method": self.method_name, "options": dict(self.options)}
        if self.uses_context:
            state["has_context"] = self._has_context
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "method" not in state:
            raise TTAError("not a tta AdaptedModel state (no 'method' in its extra state)")
        if state["method"] != self.method_name or state.get("options") != self.options:
            raise TTAError(
                f"state was saved from method {state['method']!r} with options "
                f"{state.get('options')}, but this model is {self.method_name!r} with "
                f"{self.options}"
            )
        self._has_context = bool(state.get("has_context", False))

    def train(self, mode: bool = True) -> AdaptedModel:
        """Only flips the wrapper's flag: the wrapped network stays in eval mode."""
        self.training = mode
        self.model.eval()
        return self

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._has_context and self.uses_context:
            raise TTAError(
                "norm 'context-bn' normalises with the statistics of context samples, and none "
                "were given since wrapping or the last reset; call adapted.set_context(x_context) "
                "with images of the domain first (in runs: data.context_per_domain)"
            )
        if self.method.episodic:
            self.reset()
        out = self.method.forward_and_adapt(x)
        if self.method.wants_reset:
            self.reset()
        return out

    def extra_repr(self) -> str:
        return f"method={self.method_name!r}, options={self.options}"


def resolve_method(method: str, options: dict[str, Any]) -> tuple[Any, ...]:
    """Check a method name and its options without a model.

    Returns (method class or None, norm method, norm options, method options or None), every
    option filled with its default; raises with the closest valid name for anything unknown.
    """
    if not isinstance(options, dict):
        raise TTATypeError(f"options of method {method!r} must be a mapping, got {options!r}")
    options = dict(options)
    method_class, norm = registry.lookup(method)
    method_options: Optional[dict[str, Any]] = None
    valid = list(norm.options) if norm is not None else []
    if method_class is not None:
        norm_name = options.pop("norm", method_class.default_norm)
        if not isinstance(norm_name, str):
            raise TTATypeError(
                f"option 'norm' of method {method!r} must be a name, got {norm_name!r}"
            )
        norm = registry.get_norm(norm_name)
        owner = f"method {method!r} (norm {norm.name!r})"
        schema = method_class.options
        own = {k: options.pop(k) for k in list(options) if k in schema}
        method_options = resolve(owner, schema, own)
        if "optimizer" in schema:
            check_optimizer_options(owner, own, method_options["optimizer"], norm.options)
        # A norm option whose name the method also uses (rbn's momentum) is norm_<name>.
        options = {
            k[5:] if k.startswith("norm_") and k[5:] in norm.options else k: v
            for k, v in options.items()
        }
        valid = ["norm", *schema]
        valid += [f"norm_{k}" if k in schema else k for k in norm.options]
    else:
        owner = f"method {method!r}"
    bad = [k for k in options if k not in norm.options]
    if bad:
        raise TTATypeError(
            f"unknown option {bad[0]!r} for {owner}.{did_you_mean(bad[0], valid)} "
            f"Valid options: {', '.join(valid) or '(none)'}."
        )
    return method_class, norm, resolve(owner, norm.options, options), method_options


def adapt(
    model: nn.Module, method: str, context: Optional[RunContext] = None, **options: Any
) -> AdaptedModel:
    """Wrap ``model`` (not modified; a copy is adapted) with an adaptation method by name.

    ``tta.available_methods()`` lists the names. Norm methods (``source``, ``tbn``,
    ``alpha-bn``, ``rbn``, ``unmix-tns``) take their own options; the other methods (``tent``,
    ``core``, ``eata``, ...) also take ``norm=`` naming the norm method underneath and that
    method's options (a norm option named like one of the method's, such as rbn's ``momentum``,
    is ``norm_momentum``). ``context`` (a ``tta.RunContext`` or a mapping of its fields) gives the
    run's seed, stream batch size, number of classes and, for EATA, clean source images.
    """
    if not isinstance(model, nn.Module):
        raise TTATypeError(
            f"model must be a torch.nn.Module, got {type(model).__module__}.{type(model).__name__}"
        )
    return adapt_resolved(model, method, resolve_method(method, options), context)


def adapt_resolved(
    model: nn.Module,
    method: str,
    resolved: tuple[Any, ...],
    context: Optional[RunContext] = None,
) -> AdaptedModel:
    """``adapt`` with the options already checked: ``resolved`` is ``resolve_method``'s result
    (runs check every method once, when the config is built, then wrap it once per segment).
    Each wrap gets its own copy of the option values."""
    if isinstance(context, dict):
        context = RunContext(**context)
    method_class, norm, norm_options, method_options = resolved
    norm_options, method_options = copy.deepcopy(norm_options), copy.deepcopy(method_options)
    needs_bn = norm.needs_batchnorm or (method_class is not None and method_class.needs_batchnorm)
    if needs_bn and not find_batchnorms(model):
        raise TTAError(
            f"model {type(model).__name__} has no BatchNorm layer, and method {method!r} adapts "
            "BatchNorm layers; only 'source' (and 'lame' over it) runs on a model without one"
        )
    return AdaptedModel(model, method, norm, norm_options, method_class, method_options, context)
