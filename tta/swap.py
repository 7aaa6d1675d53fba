"""The BatchNorm swap: the one place that finds every BatchNorm in a model and replaces it.

Every ``torch.nn.modules.batchnorm._BatchNorm`` subclass is replaced in place, wherever it sits
(Sequential, ModuleList, ModuleDict or a plain attribute). timm's ``BatchNormAct2d`` normalises and
then applies dropout and an activation; those run after the replacement, so the adapted ``source``
output equals the original eval output exactly.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# BatchNorm classes whose forward is the plain normalisation (nothing before or after it).
_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def find_batchnorms(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(qualified name, module) of every BatchNorm in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def post_normalization(name: str, bn: _BatchNorm) -> Optional[nn.Module]:
    """What ``bn`` does after its affine (timm's BatchNormAct2d: dropout then activation)."""
    if type(bn) in _PLAIN:
        return None
    children = dict(bn.named_children())
    if set(children) <= {"drop", "act"} and "act" in children:  # timm BatchNormAct2d family
        return nn.Sequential(children.get("drop", nn.Identity()), children["act"])
    if not children and type(bn).forward in {c.forward for c in _PLAIN}:
        return None
    raise TypeError(
        f"BatchNorm layer {name!r} is a {type(bn).__module__}.{type(bn).__qualname__}, whose "
        "forward does more than normalise in a way tta does not know; supported are torch's "
        "BatchNorm1d/2d/3d, SyncBatchNorm, their plain subclasses and timm's BatchNormAct2d"
    )


def replace_batchnorms(
    model: nn.Module, make: Callable[[str, _BatchNorm, Optional[nn.Module]], nn.Module]
) -> dict[str, nn.Module]:
    """Replace every BatchNorm of ``model`` (in place) by ``make(name, bn, post)``.

    Returns the new layers by qualified name, in module order.
    """
    found = find_batchnorms(model)
    # Build everything first so a failure leaves the model untouched.
    new = {name: make(name, bn, post_normalization(name, bn)) for name, bn in found}
    by_id = {id(bn): new[name] for name, bn in found}
    # A module registered under several names (shared) is replaced under every one of them.
    places = [
        (n, by_id[id(m)])
        for n, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, _BatchNorm)
    ]
    for name, layer in places:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    return new
