"""Build a bare network (no normalisation, no weights) from a spec string.

Specs: the CIFAR networks defined here (``resnet26``, ``wrn28_10``, ...), ``timm:<name>``
(built with ``pretrained=False``), ``torchvision:<name>`` (built with ``weights=None``),
``robustbench:<dataset>/<threat_model>/<name>`` (the zoo's architecture) and an architecture of
your own, ``package.module:factory`` or ``path/to/file.py:factory`` (the callable is imported and
called with the architecture options, plus ``num_classes`` when it takes that keyword). Nothing is
downloaded here; pretrained weights are loaded by ``tta.models.pretrained`` (through
``tta.load_model``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from tta._errors import TTAError, TTATypeError, did_you_mean, unknown
from tta.models.cifar_resnet import CifarResNet
from tta.models.wide_resnet import WideResNet
from tta.plugins import import_file

# name -> (builder taking num_classes and options, default num_classes, one-line description)
_CIFAR: dict[str, tuple[Callable[..., nn.Module], dict[str, Any], str]] = {
    "resnet8": (
        CifarResNet,
        {"depth": 8},
        "pre-activation CIFAR ResNet-8, 75k parameters (fast demo model)",
    ),
    "resnet20": (CifarResNet, {"depth": 20}, "pre-activation CIFAR ResNet-20"),
    "resnet26": (CifarResNet, {"depth": 26}, "pre-activation CIFAR ResNet-26 (TTT, TENT)"),
    "wrn28_10": (
        WideResNet,
        {"depth": 28, "widen_factor": 10},
        "WideResNet-28-10, RobustBench layout (Standard)",
    ),
}
DEFAULT_NUM_CLASSES = 10
PREFIXES = ("timm", "torchvision", "robustbench")
IMPORT_FORM = "package.module:factory (or path/to/file.py:factory)"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def spec_names() -> list[str]:
    """The built-in CIFAR specs followed by the prefixed families and the import form."""
    return list(_CIFAR) + [f"{p}:<name>" for p in PREFIXES] + [IMPORT_FORM]


def is_import_spec(spec: str) -> bool:
    """Whether ``spec`` names a factory of the user's: ``<module or .py file>:<callable>``."""
    module, sep, attr = spec.rpartition(":")
    return bool(sep and module and module not in PREFIXES and _IDENTIFIER.fullmatch(attr))


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``package.module:factory`` or ``path/to/file.py:factory``."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise TTAError(f"model spec {spec!r}: no such file {str(path)!r}")
            module = import_file(path, "tta_model_" + re.sub(r"\W", "_", str(path.resolve())))
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if "." not in module_name and did_you_mean(module_name, PREFIXES):  # a mistyped family
            raise TTAError(
                unknown("model family", module_name, PREFIXES)
                + f" (Nor is it a module to import a factory from: {err}; a model of your own "
                f"is given as {IMPORT_FORM}.)"
            ) from None
        raise TTAError(
            f"model spec {spec!r}: cannot import module {module_name!r} ({err}); a model of "
            f"your own is given as {IMPORT_FORM}, importable from the current directory or "
            "the Python path; built-in specs: " + ", ".join(spec_names()[:-1])
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise TTAError(
            f"model spec {spec!r}: module {module_name!r} has no callable {attr!r}."
            f"{did_you_mean(attr, names)}"
        )
    return factory


def _build_imported(spec: str, num_classes: Optional[int], options: dict[str, Any]) -> nn.Module:
    factory = import_factory(spec)
    kwargs = dict(options)
    if num_classes is not None and "num_classes" not in kwargs:
        try:
            takes = "num_classes" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes = False
        if takes:
            kwargs["num_classes"] = int(num_classes)
    try:
        network = factory(**kwargs)
    except TypeError as err:
        raise TTATypeError(f"model spec {spec!r}: calling it with {kwargs} failed: {err}") from None
    if not isinstance(network, nn.Module):
        raise TTATypeError(
            f"model spec {spec!r} returned a {type(network).__module__}.{type(network).__name__}, "
            "not a torch.nn.Module"
        )
    return network


def describe() -> dict[str, str]:
    """One line per built-in spec (shown by ``tta train --help``)."""
    return {name: entry[2] for name, entry in _CIFAR.items()}


def check_spec(spec: str) -> str:
    """Return ``spec`` if it names a buildable network, else raise a ValueError saying why."""
    if not isinstance(spec, str) or not spec:
        raise TTAError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in _CIFAR:
        return spec
    if is_import_spec(spec):
        return spec
    family, sep, name = spec.partition(":")
    if sep and family in PREFIXES:
        if not name:
            raise TTAError(f"model spec {spec!r} names no architecture after '{family}:'")
        if family == "robustbench":
            from tta.models.pretrained import parse_robustbench

            parse_robustbench(spec)
        return spec
    if sep:
        raise TTAError(
            unknown("model family", family, PREFIXES)
            + f" A model of your own is given as {IMPORT_FORM}."
        )
    raise TTAError(unknown("model spec", spec, spec_names()))


def build_network(spec: str, num_classes: Optional[int] = None, **options: Any) -> nn.Module:
    """Build the network named by ``spec`` with freshly initialised weights.

    ``options`` go to the architecture (``width`` for the CIFAR ResNets, ``widen_factor`` for
    WideResNet, any ``timm.create_model`` / torchvision builder keyword otherwise).
    """
    check_spec(spec)
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
        raise TTAError(f"num_classes must be a positive integer, got {num_classes!r}")
    if spec in _CIFAR:
        builder, defaults, _ = _CIFAR[spec]
        kwargs = {**defaults, **options}
        classes = DEFAULT_NUM_CLASSES if num_classes is None else int(num_classes)
        try:
            return builder(num_classes=classes, **kwargs)
        except TypeError as err:
            raise TTATypeError(f"bad option for model {spec!r}: {err}") from None
    if is_import_spec(spec):
        return _build_imported(spec, num_classes, options)
    family, _, name = spec.partition(":")
    for key in ("pretrained", "weights", "pretrained_cfg_overlay", "pretrained_tag", "model_dir"):
        if key in options:
            raise TTAError(
                f"option {key!r} is not an architecture option; pretrained weights are loaded by "
                "tta.load_model(spec, weights=... | pretrained=True, pretrained_tag=..., "
                "model_dir=...)"
            )
    if family == "robustbench":
        return _build_robustbench(spec, num_classes, options)
    if num_classes is not None:
        options = {**options, "num_classes": int(num_classes)}
    if family == "timm":
        return _build_timm(name, options)
    return _build_torchvision(name, options)


def _build_robustbench(spec: str, num_classes: Optional[int], options: dict[str, Any]) -> nn.Module:
    from tta.models.pretrained import ROBUSTBENCH_DATASETS, build_robustbench_architecture

    classes = ROBUSTBENCH_DATASETS[spec.partition(":")[2].split("/")[0]]
    if num_classes is not None and int(num_classes) != classes:
        raise TTAError(f"model {spec!r} has {classes} classes, not num_classes={num_classes}")
    if options:
        raise TTAError(
            f"model {spec!r} takes no architecture options, got {', '.join(map(repr, options))}"
        )
    return build_robustbench_architecture(spec)


def _build_timm(name: str, options: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise TTAError(
            f"unknown timm model {name!r}.{did_you_mean(name, timm.list_models())} "
            "See timm.list_models() for the valid names."
        )
    return timm.create_model(name, pretrained=False, **options)


def _build_torchvision(name: str, options: dict[str, Any]) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise TTAError(
            f"unknown torchvision model {name!r}.{did_you_mean(name, names)} "
            "See torchvision.models.list_models() for the valid names."
        )
    return torchvision.models.get_model(name, weights=None, **options)


def classifier_key(network: nn.Module) -> Optional[str]:
    """Name of the final classifier's weight in ``network.state_dict()``, or None.

    timm models name their classifier via ``get_classifier()``; otherwise the last
    ``nn.Linear`` in module order is taken (true for every network built here).
    """
    target: Optional[nn.Module] = None
    get = getattr(network, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Linear):
            target = head
    named = list(network.named_modules())
    if target is None:
        linears = [m for _, m in named if isinstance(m, nn.Linear)]
        target = linears[-1] if linears else None
    for name, module in named:
        if module is target:
            return f"{name}.weight" if name else "weight"
    return None
