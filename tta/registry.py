"""The one place where adaptation methods are listed by name.

Two kinds of entries:

- a *norm method* (``source``, ``tbn``, ``alpha-bn``, ``rbn``, ``unmix-tns``) is what replaces each
  BatchNorm; used alone it adapts statistics only;
- a *method* (``tent``, ``core``, ``eata``, ...) is a class in ``tta.methods`` that runs on top of
  any norm method (``norm=``) and decides what adapts and how.

Modules in ``tta.norms`` and ``tta.methods`` register themselves here on import; a third-party
module registers its own methods the same way (``@register_method``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from tta._errors import TTAError, TTATypeError, unknown
from tta.options import Option

if TYPE_CHECKING:
    from tta.methods.base import Method, RunContext


@dataclass(frozen=True)
class NormMethod:
    """A BatchNorm replacement. ``layer(bn, name=..., **layer_kwargs)`` builds one adapted layer.

    ``prepare(options, context)`` turns the method's resolved options and the run context into the
    layer keyword arguments once per wrapped model (for example a seeded generator shared by all
    layers, drawn in module order).
    """

    name: str
    layer: Callable[..., torch.nn.Module]
    description: str
    options: dict[str, Option] = field(default_factory=dict)
    prepare: Optional[Callable[[dict[str, Any], RunContext], dict[str, Any]]] = None
    needs_batchnorm: bool = True

    def layer_kwargs(self, options: dict[str, Any], context: RunContext) -> dict[str, Any]:
        return self.prepare(dict(options), context) if self.prepare else dict(options)


NORMS: dict[str, NormMethod] = {}
METHODS: dict[str, type[Method]] = {}


def _check_free(name: str) -> None:
    if name in NORMS or name in METHODS:
        raise TTAError(f"a method named {name!r} is already registered; choose another name")


def register_norm(method: NormMethod) -> NormMethod:
    _check_free(method.name)
    NORMS[method.name] = method
    return method


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: list a ``tta.methods.Method`` subclass under its ``name``."""
    from tta.methods.base import Method

    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TTATypeError(f"register_method takes a subclass of tta.methods.Method, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TTAError(f"method class {cls.__qualname__} needs a class attribute name = '...'")
    _check_free(name)
    METHODS[name] = cls
    return cls


def method_names() -> list[str]:
    return list(NORMS) + list(METHODS)


def available_methods() -> dict[str, str]:
    """Every method name with a one-line description."""
    return {
        **{n: m.description for n, m in NORMS.items()},
        **{n: c.description for n, c in METHODS.items()},
    }


def get_norm(name: str) -> NormMethod:
    if name not in NORMS:
        raise TTAError(unknown("norm method", name, NORMS))
    return NORMS[name]


def lookup(name: str) -> tuple[Optional[type[Method]], Optional[NormMethod]]:
    """(method class, norm) for a method name; exactly one of them is set."""
    if not isinstance(name, str):
        raise TTATypeError(f"method must be a name (str), got {name!r} ({type(name).__name__})")
    if name in NORMS:
        return None, NORMS[name]
    if name in METHODS:
        return METHODS[name], None
    raise TTAError(unknown("method", name, method_names()))
