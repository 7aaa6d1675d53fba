"""Read, check and write model checkpoints.

Reading accepts a raw ``state_dict`` or one wrapped as ``{"state_dict": ...}``, ``{"model": ...}``,
``{"net": ...}`` or ``{"model_state_dict": ...}``, with ``module.`` (DataParallel) or
``_orig_mod.`` (torch.compile) prefixes. Files are opened with ``torch.load(weights_only=True)``;
full unpickling, which can run arbitrary code, happens only when the caller says the file is
trusted. Every failure names the file and what went wrong: a missing file, an HTML page saved by a
failed download, a file that is not a torch checkpoint, keys or shapes that do not fit.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta._errors import TTAError, TTAFileNotFoundError, TTATypeError
from tta._io import atomic_write

PathLike = Union[str, "os.PathLike[str]"]
FORMAT = "tta-checkpoint-1"
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5


def _first(items: list[str], count: int = _SHOW) -> str:
    shown = ", ".join(repr(k) for k in items[:count])
    return shown + (f", ... ({len(items) - count} more)" if len(items) > count else "")


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or (
        text.startswith(b"<") and b"<html" in text
    )


def _torch_load(path: Path, trusted: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses a pickled Python object by naming its global; anything else that
        # the unpickler cannot read means the bytes are not a checkpoint at all.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise TTAError(_not_a_checkpoint(path, err)) from None
        if not trusted:
            raise TTAError(
                f"{path} holds a pickled Python object ({found.group(1)}) besides tensors, so "
                "torch.load(weights_only=True) refused it. If you trust the file, pass trusted=True "
                "to tta.load_model, which unpickles it fully (pickles can run arbitrary code)"
            ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ... for damaged files
        raise TTAError(_not_a_checkpoint(path, err)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise TTAError(f"{path} could not be unpickled: {_short(err)}") from None


def _not_a_checkpoint(path: Path, err: BaseException) -> str:
    return (
        f"{path} is not a torch checkpoint (torch.load failed: {_short(err)}); "
        "a truncated or failed download is the usual cause"
    )


def _short(err: BaseException) -> str:
    text = str(err)
    for marker in ("WeightsUnpickler error:", "error:"):
        if marker in text:  # torch's long preamble says nothing about the file itself
            text = text.split(marker, 1)[1]
            break
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:200]


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the tensor mapping inside a loaded object; return it and any tta metadata."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    for _ in range(3):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise TTAError(
            f"{path} does not hold a state_dict: found {type(obj).__name__}"
            + (" (empty)" if isinstance(obj, Mapping) else "")
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TTAError(
            f"{path} does not hold a state_dict: entries {_first(bad)} are not tensors; expected "
            f"a mapping of tensors, possibly under one of the keys {', '.join(WRAPPER_KEYS)}"
        )
    return {str(k): v for k, v in obj.items()}, meta


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel (``module.``) and torch.compile (``_orig_mod.``) key prefixes."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def read_checkpoint(
    path: PathLike, trusted: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``path`` on the CPU; return (state_dict with prefixes removed, tta metadata or {})."""
    path = check_file(path)
    state_dict, meta = _unwrap(_torch_load(path, trusted), path)
    return strip_prefixes(state_dict), meta


def check_file(path: PathLike) -> Path:
    """Refuse a checkpoint path that is missing, a directory, empty or an HTML page saved by a
    failed download, before any library tries to unpickle it; return it as a ``Path``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TTAFileNotFoundError(f"checkpoint file not found: {path.absolute()}")
    if path.is_dir():
        raise TTAError(f"checkpoint path {path} is a directory, not a file")
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if not head:
        raise TTAError(f"{path} is empty (0 bytes), not a torch checkpoint; download it again")
    if _looks_like_html(head):
        raise TTAError(
            f"{path} is an HTML page, not a torch checkpoint; a failed download (an error, login "
            "or quota page saved under the checkpoint's name) is the usual cause: download it again"
        )
    return path


def split_normalize(
    state_dict: Mapping[str, torch.Tensor], network_keys: set[str]
) -> tuple[dict[str, torch.Tensor], Optional[list[float]], Optional[list[float]]]:
    """Accept the state_dict of a whole ``NormalizedModel`` as well as the bare network's.

    Returns the network's entries and the (mean, std) stored under ``normalize.`` if present.
    """
    mean = state_dict.get("normalize.mean")
    std = state_dict.get("normalize.std")
    rest = {k: v for k, v in state_dict.items() if not k.startswith("normalize.")}
    stripped = {k[len("model.") :]: v for k, v in rest.items() if k.startswith("model.")}
    if len(stripped) == len(rest) and len(set(stripped) & network_keys) > len(
        set(rest) & network_keys
    ):
        rest = stripped
    return (
        rest,
        None if mean is None else mean.flatten().tolist(),
        None if std is None else std.flatten().tolist(),
    )


def load_into(
    network: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    classifier: Optional[str] = None,
) -> None:
    """Copy ``state_dict`` into ``network`` after checking keys and shapes; errors name ``what``.

    BatchNorm's ``num_batches_tracked`` may be absent (older checkpoints do not have it).
    """
    own = network.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        raise TTAError(
            f"{what} does not fit the architecture: "
            + "; ".join(parts)
            + ". Check the model spec and its options (e.g. width, depth)"
        )
    if classifier is not None and classifier in own:
        have, want = tuple(state_dict[classifier].shape), tuple(own[classifier].shape)
        if have[:1] != want[:1]:
            raise TTAError(
                f"class count mismatch: {what} has {have[0]} classes ('{classifier}' has shape "
                f"{have}) but the model was built for {want[0]}; pass num_classes={have[0]} or "
                "leave num_classes unset to take it from the checkpoint"
            )
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise TTAError(
            f"{what} has {len(wrong)} tensor(s) of the wrong shape: "
            + "; ".join(wrong[:_SHOW])
            + (" ..." if len(wrong) > _SHOW else "")
            + ". Check the model spec and its options (e.g. width, depth)"
        )
    check_bn_statistics(network, state_dict, what)
    network.load_state_dict(dict(state_dict), strict=False)


def check_bn_statistics(
    network: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str
) -> None:
    """Refuse BatchNorm statistics no trained network can have: a negative or non-finite
    ``running_var`` or a non-finite ``running_mean`` (a damaged file, or one written after a
    diverged training run). Every method that uses source statistics would turn them into NaN
    predictions, so the checkpoint is refused at load time, naming ``what`` and the layer."""
    for name, module in network.named_modules():
        if not isinstance(module, _BatchNorm) or module.running_var is None:
            continue
        prefix = f"{name}." if name else ""
        mean = state_dict.get(prefix + "running_mean")
        var = state_dict.get(prefix + "running_var")
        problems = []
        if var is not None:
            var = var.detach().double()
            if not bool(torch.isfinite(var).all()):
                problems.append(f"running_var holds {_non_finite(var)} values")
            elif bool((var < 0).any()):
                count = int((var < 0).sum())
                problems.append(
                    f"running_var is negative in {count} of {var.numel()} channels "
                    f"(min {float(var.min()):.4g}); a variance is never negative"
                )
        if mean is not None and not bool(torch.isfinite(mean.detach().double()).all()):
            problems.append(f"running_mean holds {_non_finite(mean.detach().double())} values")
        if problems:
            raise TTAError(
                f"{what} has invalid BatchNorm statistics in layer {name or '<root>'!r}: "
                + "; ".join(problems)
                + ". The file is damaged or was saved after training diverged; use another "
                "checkpoint"
            )


def _non_finite(t: torch.Tensor) -> str:
    kinds = [k for k, m in (("NaN", torch.isnan(t)), ("Inf", torch.isinf(t))) if bool(m.any())]
    return " and ".join(kinds)


def _plain(value: Any) -> Any:
    """Builtin types only (str subclasses such as torch's version string, numpy scalars and paths
    made plain), so that the file loads with ``weights_only=True``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    item = getattr(value, "item", None)
    if callable(item):
        return _plain(item())
    return str(value)


def check_output_file(path: PathLike, what: str = "checkpoint path") -> Path:
    """Refuse an output path that cannot become a file before any work is done: an existing
    directory, a parent that is a file, or a parent folder without write permission."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise TTAError(
            f"{what} {str(path)!r} is an existing directory; give a file name, e.g. "
            f"{str(path / 'model.pt')!r}"
        )
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TTAError(
            f"{what} {str(path)!r} cannot be written: {str(parent)!r} is a file, not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TTAError(
            f"{what} {str(path)!r} cannot be written: no write permission in {str(parent)!r}"
        )
    return path


def save_checkpoint(model: nn.Module, path: PathLike, info: Optional[dict] = None) -> Path:
    """Write a ``NormalizedModel`` with its metadata to ``path`` atomically; return the path.

    The file is ``{"format", "spec", "num_classes", "mean", "std", "arch_options", "info",
    "state_dict"}`` where ``state_dict`` holds the bare network's tensors (the keys a plain
    checkpoint of that architecture would have); it loads with ``weights_only=True``.
    """
    from tta.models.normalize import NormalizedModel

    if not isinstance(model, NormalizedModel):
        raise TTATypeError(
            f"save_checkpoint needs a model from tta.load_model / tta.train_model, "
            f"got {type(model).__name__}"
        )
    mean, std = model.normalize.stats()
    payload = {
        "format": FORMAT,
        "spec": model.spec,
        "num_classes": model.num_classes,
        "mean": mean,
        "std": std,
        "arch_options": _plain(model.arch_options),
        "info": _plain(info or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.model.state_dict().items()},
    }
    return atomic_write(Path(path).expanduser(), lambda tmp: torch.save(payload, tmp))
