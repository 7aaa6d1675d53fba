"""The method layer: what a test-time adaptation method is, and the run context it is given.

A method is one class, registered by name with ``@tta.register_method``. ``tta.adapt`` copies the
network, replaces its BatchNorm layers by the chosen norm method (the one swap in ``tta.swap``) and
hands the copy to the method, which decides what adapts and how:

- ``prepare()``: one-off set-up (which parameters train, the optimiser, source-side statistics);
- ``forward_and_adapt(x) -> logits``: the prediction for a batch, adapting on the way;
- ``state_vars``: names of attributes holding state beyond tensors of the network (memories,
  moving averages, counters); they are saved in ``state_dict()`` and restored by ``reset()``
  bit for bit, together with the optimiser, so most methods need no reset code of their own;
- ``reset()``: a hook for anything else, called after the state above is restored.

Buffers and parameters a method registers on itself (an EMA model, a Fisher matrix) are part of the
wrapper's ``state_dict()`` and are restored by ``reset()`` too.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional

import torch
from torch import nn

from tta._errors import TTAError
from tta.options import Option


@dataclass(frozen=True)
class RunContext:
    """What a run knows that is not a method option, passed explicitly to every method.

    ``seed``: seeds every random draw of the method (UnMix-TNS components, DeYO's patch shuffle).
    ``batch_size``: the stream's batch size (a domain's last batch may be shorter).
    ``device``: where the run computes. ``num_classes``: the model's number of outputs.
    ``source_images``: clean source-domain images (N, C, H, W) in [0, 1], for methods that
    estimate source-side quantities (EATA's Fisher information).
    """

    seed: int = 0
    batch_size: Optional[int] = None
    device: Optional[torch.device] = None
    num_classes: Optional[int] = None
    source_images: Optional[torch.Tensor] = None


@contextmanager
def norm_train_mode(layers: Iterable[nn.Module]) -> Iterator[None]:
    """Forward the given norm layers in train mode, then put back their previous modes.

    The authors' memory-based methods call ``model.train()`` for their update forwards; the
    layers that behave differently then (``iabn`` normalises with the batch and moves its running
    statistics; ``rbn`` under RoTTA moves its statistics only then) read ``self.training``. Only
    the norm layers switch: dropout and stochastic depth stay off, as everywhere in tta.
    """
    layers = list(layers)
    before = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, mode in zip(layers, before):
            layer.training = mode


class Method(nn.Module):
    """Base class of the adaptation methods (see the module docstring for the hooks).

    Class attributes: ``name`` (registry key), ``description`` (one line), ``options`` (typed
    options with defaults), ``default_norm`` (the norm method used when ``norm=`` is not given).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    default_norm: ClassVar[str] = "tbn"
    state_vars: ClassVar[tuple[str, ...]] = ()
    needs_batchnorm: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        norm_layers: dict[str, nn.Module],
        options: dict[str, Any],
        context: RunContext,
    ):
        super().__init__()
        # The wrapper owns the network; a plain attribute keeps it out of this module's children.
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "norm_layers", dict(norm_layers))
        self.hparams = dict(options)
        self.context = context
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.wants_reset = False  # set by a method that asks the wrapper for a full reset (SAR)
        # The state of ``random``'s generator, seeded by the run (list it in state_vars to use it)
        self.rng_state = torch.Generator().manual_seed(context.seed).get_state()

    # -- hooks ---------------------------------------------------------------------------------
    @classmethod
    def source_images_wanted(cls, options: dict[str, Any]) -> int:
        """How many clean source images a run must put in ``context.source_images`` (EATA)."""
        return 0

    def prepare(self) -> None:
        """One-off set-up once the norm layers are in place (default: nothing)."""

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Restore state that ``state_vars``, buffers and the optimiser do not cover."""

    def trainable_names(self) -> list[str]:
        """Qualified names (in the network) of the parameters this method trains."""
        if self.optimizer is None:
            return []
        ids = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        return [n for n, p in self.model.named_parameters() if id(p) in ids]

    @property
    def episodic(self) -> bool:
        return bool(self.hparams.get("episodic", False))

    # -- state ---------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "vars": {k: getattr(self, k) for k in self.state_vars},
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "vars" not in state:
            raise TTAError(f"not a saved state of method {self.name!r} (no 'vars' entry)")
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        for key, value in state["vars"].items():
            setattr(self, key, copy.deepcopy(value))

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for key in self.state_vars:
            value = getattr(self, key)
            if isinstance(value, torch.Tensor):
                setattr(self, key, fn(value))
        if self.optimizer is not None and self.optimizer.state:
            # Optimizer.load_state_dict casts state tensors to their parameter's dtype and device
            self.optimizer.load_state_dict(self.optimizer.state_dict())
        return self

    # -- helpers for subclasses ----------------------------------------------------------------
    def copy_network(self) -> tuple[nn.Module, dict[str, nn.Module]]:
        """A frozen deep copy of the adapted network and its norm layers by name.

        For teachers and anchors (RoTTA, CoTTA, ROID): each copy has norm layers of its own,
        with their own statistics. Assign the copy to an attribute of the method (a submodule)
        so that ``state_dict()`` and ``reset()`` cover it.
        """
        net = copy.deepcopy(self.model)
        net.requires_grad_(False)
        return net, {name: net.get_submodule(name) for name in self.norm_layers}

    def random(self, draw: Callable[[torch.Generator], Any]) -> Any:
        """``draw(generator)`` with the method's own CPU generator, seeded by ``context.seed``.

        The generator's state lives in ``self.rng_state`` (add it to ``state_vars``), so
        ``reset()`` and a state round trip replay the same draws; the global RNG is untouched.
        """
        gen = torch.Generator()
        gen.set_state(self.rng_state.cpu())  # .to(device) moves state_vars tensors
        out = draw(gen)
        self.rng_state = gen.get_state()
        return out

    def norm_parameters(self) -> list[nn.Parameter]:
        """γ and β of every adapted norm layer, in module order (what TENT trains)."""
        return [
            p
            for layer in self.norm_layers.values()
            for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))
            if isinstance(p, nn.Parameter)
        ]

    def norm_state(self) -> list[torch.Tensor]:
        """Copies of the norm layers' buffers (statistics, components), in a fixed order."""
        return [
            buf.detach().clone()
            for layer in self.norm_layers.values()
            for buf in layer.buffers()
            if buf is not None
        ]

    @torch.no_grad()
    def load_norm_state(self, state: list[torch.Tensor]) -> None:
        buffers = [
            b for layer in self.norm_layers.values() for b in layer.buffers() if b is not None
        ]
        for buf, value in zip(buffers, state):
            buf.copy_(value)

    @contextmanager
    def norm_state_as(self, state: list[torch.Tensor]) -> Iterator[None]:
        """Run extra forwards (SAM's second pass, an augmented view, Fisher batches) with the norm
        layers in ``state`` (typically as they were before the test batch), then put back the
        statistics they hold now: a stateful norm (rbn, unmix-tns) moves once per test batch, and
        an extra forward normalises exactly as the batch's own forward did."""
        now = self.norm_state()
        self.load_norm_state(state)
        try:
            yield
        finally:
            self.load_norm_state(now)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, options={self.hparams}"


class NormOnly(Method):
    """A norm method on its own: predict with the adapted norm layers, no gradient step."""

    name = "norm-only"
    description = "statistics adaptation only"
    needs_batchnorm = False

    @torch.no_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
