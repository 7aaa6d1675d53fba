"""Where and in which precision a run computes."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch

from tta._errors import TTAError
from tta.config import DEVICES, PRECISIONS


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a
    device this machine lacks is a TTAError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", name):
        raise TTAError(f"device must be {DEVICES}, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TTAError(
                f"device {name!r} asked for, but torch sees no CUDA GPU; use device: auto or cpu"
            )
        if (device.index or 0) >= count:
            raise TTAError(
                f"device {name!r} asked for, but torch sees {count} CUDA GPU(s): "
                f"{', '.join(f'cuda:{i}' for i in range(count))}"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TTAError("device 'mps' asked for, but MPS is not available here; use auto or cpu")
    return device


def autocast(device: torch.device, precision: str) -> Any:
    """The context the network runs in: nothing for fp32, else ``torch.autocast``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """fp32 anywhere; bf16 on CUDA and the CPU; fp16 on CUDA only (the CPU's float16 kernels
    are slow and incomplete, so a run would be slower than fp32, not faster)."""
    valid = {"cuda": PRECISIONS, "cpu": ("fp32", "bf16")}.get(device.type, ("fp32",))
    if precision not in valid:
        raise TTAError(
            f"precision {precision!r} is not available on device {str(device)!r}; valid there: "
            f"{', '.join(valid)} (fp16 needs CUDA)"
        )
