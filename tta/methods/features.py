"""The features hook: a network's penultimate features and its logits from one forward.

Methods that work on features (LAME) call ``features_and_logits(model, x)``. The features are the
input of the network's final classifier layer, found by ``classifier_of``:

1. ``model.get_classifier()`` when the model has it (timm models; define it on your own model to
   point tta at its classifier);
2. otherwise the attribute ``fc`` (torchvision ResNets, tta's built-in networks), ``classifier``
   (torchvision EfficientNets, MobileNets, DenseNets: its last ``nn.Linear``), ``head`` or
   ``linear``;
3. through wrappers that hold the network as ``model`` or ``module`` (tta's input normalisation,
   DataParallel).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tta._errors import TTAError

_ATTRIBUTES = ("fc", "classifier", "head", "linear")


def _last_linear(module: nn.Module) -> Optional[nn.Module]:
    if isinstance(module, nn.Linear):
        return module
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classifier layer of ``model`` (see the module docstring for the search order)."""
    seen = []
    node: Optional[nn.Module] = model
    while node is not None:
        seen.append(type(node).__name__)
        getter = getattr(node, "get_classifier", None)
        if callable(getter):
            found = getter()
            if isinstance(found, nn.Module) and _last_linear(found) is not None:
                return _last_linear(found)
        for attr in _ATTRIBUTES:
            found = getattr(node, attr, None)
            if isinstance(found, nn.Module) and _last_linear(found) is not None:
                return _last_linear(found)
        inner = [getattr(node, a, None) for a in ("model", "module")]
        node = next((m for m in inner if isinstance(m, nn.Module)), None)
    raise TTAError(
        f"cannot find the classifier of model {' > '.join(seen)}: this method needs the features "
        "the final layer sees; give the model a get_classifier() method returning its final "
        "nn.Linear (as timm models have), or name that layer fc, classifier or head"
    )


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of one forward: features are the classifier's input, flattened."""
    layer = classifier_of(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise TTAError(
            f"the classifier layer {type(layer).__name__} ran {len(captured)} times in one forward; "
            "define get_classifier() on the model to name the final layer"
        )
    return captured[0].flatten(1), logits
