"""``corrupt(images, name, severity, generator)``: the CIFAR-10-C corruptions (Hendrycks &
Dietterich, ICLR 2019) at 32x32, batched in torch.

Accepts a float tensor (B, 3, H, W) in [0, 1] (returned the same way, on the same device) or a
numpy uint8 array (B, H, W, 3) (returned as uint8, truncated like the reference generator).
"""

from __future__ import annotations

import difflib
import zlib
from typing import Callable, Optional, Union

import numpy as np
import torch

from corruptions import blur, color, geometric, noise, pillow_ops, spatter, weather
from corruptions._ops import TRUNC_EPS, Draw
from corruptions.params import SIZES

Fn = Callable[[torch.Tensor, int, Draw], torch.Tensor]

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}

_FUNCS: dict[str, Fn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": color.brightness,
    "contrast": color.contrast,
    "elastic_transform": geometric.elastic_transform,
    "pixelate": pillow_ops.pixelate,
    "jpeg_compression": pillow_ops.jpeg_compression,
    "speckle_noise": noise.speckle_noise,
    "gaussian_blur": blur.gaussian_blur,
    "spatter": spatter.spatter,
    "saturate": color.saturate,
}

DEFAULT_SEED = 0

# Images per block inside ``corrupt``: small enough for the working set to stay in cache.
CHUNK = 256

# torch CPU threads used while ``corrupt`` runs on CPU tensors (restored afterwards); None keeps
# torch's setting. On blocks this small, intra-op threading costs more than it gains: measured on
# 2 cores, the 19 corruptions at severity 5 on 10,000 images took 11 s with 1 thread and 54-134 s
# with 2 (benchmarks/corruptions.py). Parallelise across processes instead.
CPU_THREADS: Optional[int] = 1

Images = Union[torch.Tensor, np.ndarray]


def names(group: Optional[str] = None) -> list[str]:
    """Corruption names in the standard order: the 15 benchmark ones, then the 4 extras.

    ``group``: None (all 19), "benchmark" (the 15), or one of noise, blur, weather, digital, extra.
    """
    if group is None:
        return [n for g in GROUPS.values() for n in g]
    if group == "benchmark":
        return [n for g, members in GROUPS.items() if g != "extra" for n in members]
    if group not in GROUPS:
        raise ValueError(_unknown("corruption group", group, ["benchmark", *GROUPS]))
    return list(GROUPS[group])


def _unknown(kind: str, name: object, choices: list[str]) -> str:
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    hint = f" Did you mean {match[0]!r}?" if match else ""
    return f"unknown {kind} {name!r}.{hint} Valid: {', '.join(repr(c) for c in choices)}."


def _check_name(name: object) -> Fn:
    if not isinstance(name, str) or name not in _FUNCS:
        raise ValueError(_unknown("corruption", name, names()))
    return _FUNCS[name]


def _check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise TypeError(f"severity must be an integer 1..5, got {severity!r}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be in 1..5, got {int(severity)}")
    return int(severity)


def _check_size(h: int, w: int) -> None:
    if h != w or h not in SIZES:
        raise ValueError(
            f"corruption parameters exist only for {' / '.join(f'{s}x{s}' for s in SIZES)} images "
            f"(the CIFAR-10-C table); got {h}x{w}. Resize or pad the images first."
        )


def _check_tensor(images: torch.Tensor) -> None:
    if not images.is_floating_point():
        raise TypeError(
            f"a torch tensor must be floating point in [0, 1], got dtype {images.dtype}; "
            "pass uint8 images as a numpy array (B, H, W, 3)"
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"a torch tensor must have shape (B, 3, H, W), got {tuple(images.shape)}"
            + ("; add a batch dim with images[None]" if images.dim() == 3 else "")
        )
    _check_size(images.shape[2], images.shape[3])
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                "(undo any mean/std normalisation first)"
            )


def _check_array(images: np.ndarray) -> None:
    if images.dtype != np.uint8:
        raise TypeError(
            f"a numpy array must be uint8 (B, H, W, 3), got dtype {images.dtype}; "
            "pass float images as a torch tensor (B, 3, H, W) in [0, 1]"
        )
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(
            f"a numpy uint8 array must have shape (B, H, W, 3), got {images.shape}"
            + ("; add a batch dim with images[None]" if images.ndim == 3 else "")
        )
    _check_size(images.shape[1], images.shape[2])


def corrupt(
    images: Images,
    name: str,
    severity: int,
    generator: Optional[torch.Generator] = None,
) -> Images:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch of 32x32 RGB images.

    ``images``: a float tensor (B, 3, 32, 32) in [0, 1], returned as such on its device, or a
    numpy uint8 array (B, 32, 32, 3), returned as uint8 truncated like the reference generator.
    Every random choice comes from ``generator``; with None a fresh
    ``torch.Generator().manual_seed(0)`` is used, so the same call always gives the same output.
    A CPU generator gives identical numbers whatever device the images are on. The batch is
    processed in blocks of ``CHUNK`` images (cache-friendly, bounded memory), drawing from the
    one generator in order, so the output depends only on the images, their order and the seed.
    On CPU the call runs with ``CPU_THREADS`` torch threads (1; see there) and then restores the
    caller's setting.
    """
    fn = _check_name(name)
    sev = _check_severity(severity)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if isinstance(images, torch.Tensor):
        _check_tensor(images)
    elif isinstance(images, np.ndarray):
        _check_array(images)
    else:
        raise TypeError(
            "images must be a torch float tensor (B, 3, H, W) or a numpy uint8 array "
            f"(B, H, W, 3), got {type(images).__name__}"
        )
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    on_cpu = isinstance(images, np.ndarray) or images.device.type == "cpu"
    previous = torch.get_num_threads()
    if on_cpu and CPU_THREADS:
        torch.set_num_threads(CPU_THREADS)
    try:
        return _run(fn, images, sev, gen)
    finally:
        torch.set_num_threads(previous)


def _run(fn: Fn, images: Images, sev: int, gen: torch.Generator) -> Images:
    """Corrupt block by block into a new array or tensor of the input's kind."""
    out = np.empty_like(images) if isinstance(images, np.ndarray) else torch.empty_like(images)
    for start in range(0, len(images), CHUNK):
        block = images[start : start + CHUNK]
        if isinstance(block, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(block)).permute(0, 3, 1, 2)
            x = x.contiguous().float().div_(255.0)
        else:
            x = block.float()
        y = fn(x, sev, Draw(gen, x.device)).clamp(0, 1)
        if isinstance(block, np.ndarray):
            # truncation: the cast rounds toward zero, which is floor for non-negative values
            levels = y.mul_(255.0).add_(TRUNC_EPS).to(torch.uint8)
            out[start : start + CHUNK] = levels.permute(0, 2, 3, 1).numpy()
        else:
            out[start : start + CHUNK] = y.to(images.dtype)
    return out


def seed_for(seed: int, name: str, severity: int) -> int:
    """Independent seed per (corruption, severity) derived from one run seed.

    ``tta corrupt`` and on-the-fly corruption in evaluation runs both draw from
    ``torch.Generator().manual_seed(seed_for(seed, name, severity))``, so the same seed gives the
    same corrupted images either way, and a rerun or a subset reproduces each block.
    """
    return int(
        np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity]).generate_state(1)[0]
    )
