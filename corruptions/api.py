"""``corrupt(images, name, severity, generator, params="auto")``: the corruptions of Hendrycks &
Dietterich (ICLR 2019) on images of any size, batched in torch.

Accepts a float tensor (B, 3, H, W) or (B, 1, H, W) in [0, 1] (returned as (B, 3, H, W), on the
same device) or a numpy uint8 array (B, H, W, 3), (B, H, W, 1) or (B, H, W) (returned as uint8
(B, H, W, 3), truncated like the reference generators). Grey images are repeated to three channels
first, so the result is always RGB (what ``imagecorruptions`` does too).

Parameter tables (``params``): "cifar" (CIFAR-10-C, made for 32x32), "tiny" (Tiny-ImageNet-C,
64x64) and "imagenet" (ImageNet-C, 224x224). "auto" (the default) picks the table made for the
image size and the imagenet table for every other size, as bethgelab's ``imagecorruptions`` does.
A table used at a size other than its own keeps every parameter; the terms that depend on the
image size follow it:

- elastic_transform: alpha, sigma and the affine jitter are lengths in pixels of the native size;
  each is multiplied by side / native along its axis (rows by H / native, columns by W / native).
- fog: the fractal is drawn on the smallest power of two >= max(H, W) and cropped to H x W
  (the references: 32, 64, and 256 cropped to 224).
- frost: the crop is H x W, from the table's textures (shrunk 0.2 for cifar, 0.3 for tiny, full
  size for imagenet); a texture not larger than the image is first enlarged bicubically by 1.1 x
  the ratio it lacks (``imagecorruptions``' rule).
- pixelate: the downsampled image is int(H c) x int(W c).
- glass_blur: the pixel walk covers rows and columns delta + 1 .. side - delta of the image.
- zoom_blur and snow: each axis is cropped and zoomed with its own length.

Everything else (noise levels, blur radii and sigmas, motion-blur lengths, JPEG quality, colour
changes) is in pixels or intensities and is used as it stands, as ``imagecorruptions`` does.
"""

from __future__ import annotations

import difflib
import zlib
from typing import Callable, Optional, Union

import numpy as np
import torch

from corruptions import blur, color, geometric, noise, pillow_ops, spatter, weather
from corruptions._ops import TRUNC_EPS, Draw
from corruptions.params import PARAM_CHOICES, Setting, table_for

Fn = Callable[[torch.Tensor, Setting, Draw], torch.Tensor]

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

# Corruptions that work in float64 (as their scikit-image reference does): uint8 input reaches
# them as exact level / 255 in float64, and their output is truncated without ``TRUNC_EPS``, so
# that they reproduce the reference's uint8 values exactly.
FLOAT64 = frozenset({"brightness", "saturate"})

# Images per block inside ``corrupt`` at 32x32; larger images get proportionally fewer per block
# (``chunk_size``), so that the working set stays in cache and memory stays bounded.
CHUNK = 256

# Smallest side accepted: below it some reference steps have nothing left to work on (pixelate at
# the strongest setting keeps a quarter of the side, the 5x5 chamfer of spatter, glass blur's walk).
MIN_SIDE = 16

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


def chunk_size(h: int, w: int) -> int:
    """Images per block for h x w images: ``CHUNK`` at 32x32, as many pixels per block otherwise."""
    return max(1, (CHUNK * 32 * 32) // (h * w))


def _check_size(h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise ValueError(
            f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}; the corruption "
            "parameters were made for 32x32 (cifar), 64x64 (tiny) and 224x224 (imagenet) images"
        )


def _check_params(choice: object) -> str:
    if not isinstance(choice, str) or choice not in PARAM_CHOICES:
        raise ValueError(_unknown("parameter table", choice, list(PARAM_CHOICES)))
    return choice


def _check_tensor(images: torch.Tensor) -> None:
    if not images.is_floating_point():
        raise TypeError(
            f"a torch tensor must be floating point in [0, 1], got dtype {images.dtype}; "
            "pass uint8 images as a numpy array (B, H, W, 3)"
        )
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"a torch tensor must have shape (B, 3, H, W) or grey (B, 1, H, W), got "
            f"{tuple(images.shape)}"
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


def _check_array(images: np.ndarray) -> np.ndarray:
    """The uint8 batch as (B, H, W, C) with C = 1 or 3 (a grey (B, H, W) gains its channel axis)."""
    if images.dtype != np.uint8:
        raise TypeError(
            f"a numpy array must be uint8 (B, H, W, 3), got dtype {images.dtype}; "
            "pass float images as a torch tensor (B, 3, H, W) in [0, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(
            "a numpy uint8 array must have shape (B, H, W, 3), or grey (B, H, W, 1) or "
            f"(B, H, W), got {images.shape}"
        )
    _check_size(images.shape[1], images.shape[2])
    return images


def corrupt(
    images: Images,
    name: str,
    severity: int,
    generator: Optional[torch.Generator] = None,
    params: str = "auto",
) -> Images:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch of images of any size >= 16.

    ``images``: a float tensor (B, 3, H, W) or (B, 1, H, W) in [0, 1], returned as (B, 3, H, W) on
    its device, or a numpy uint8 array (B, H, W, 3), (B, H, W, 1) or (B, H, W), returned as uint8
    (B, H, W, 3) truncated like the reference generators. Grey images are repeated to 3 channels.
    ``params``: "auto" (the table made for the size: 32 cifar, 64 tiny, 224 imagenet; imagenet for
    any other size), or "cifar", "tiny", "imagenet" at any size; see the module docstring for the
    terms that follow the image size.
    Every random choice comes from ``generator``; with None a fresh
    ``torch.Generator().manual_seed(0)`` is used, so the same call always gives the same output.
    A CPU generator gives identical numbers whatever device the images are on. The batch is
    processed in blocks of ``chunk_size(H, W)`` images (``CHUNK`` at 32x32), drawing from the one
    generator in order, so the output depends only on the images, their order and the seed.
    On CPU the call runs with ``CPU_THREADS`` torch threads (1; see there) and then restores the
    caller's setting.
    """
    fn = _check_name(name)
    sev = _check_severity(severity)
    choice = _check_params(params)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if isinstance(images, torch.Tensor):
        _check_tensor(images)
        h, w = images.shape[2], images.shape[3]
    elif isinstance(images, np.ndarray):
        images = _check_array(images)
        h, w = images.shape[1], images.shape[2]
    else:
        raise TypeError(
            "images must be a torch float tensor (B, 3, H, W) or a numpy uint8 array "
            f"(B, H, W, 3), got {type(images).__name__}"
        )
    table = table_for(h, w, choice)
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    on_cpu = isinstance(images, np.ndarray) or images.device.type == "cpu"
    previous = torch.get_num_threads()
    if on_cpu and CPU_THREADS:
        torch.set_num_threads(CPU_THREADS)
    try:
        return _run(fn, images, Setting(table, name, sev), gen, name in FLOAT64)
    finally:
        torch.set_num_threads(previous)


def _run(fn: Fn, images: Images, s: Setting, gen: torch.Generator, exact: bool) -> Images:
    """Corrupt block by block into a new RGB array or tensor of the input's kind (``exact``:
    uint8 levels enter as float64 and leave truncated without the float32 allowance)."""
    if isinstance(images, np.ndarray):
        b, h, w = images.shape[:3]
        out: Images = np.empty((b, h, w, 3), dtype=np.uint8)
    else:
        b, _, h, w = images.shape
        out = torch.empty((b, 3, h, w), dtype=images.dtype, device=images.device)
    step = chunk_size(h, w)
    direct = pillow_ops.UINT8.get(s.name) if isinstance(images, np.ndarray) else None
    for start in range(0, b, step):
        block = images[start : start + step]
        if direct is not None:  # Pillow-based: uint8 in, uint8 out, no float round trip
            rgb = block if block.shape[3] == 3 else np.repeat(block, 3, axis=3)
            out[start : start + step] = direct(np.ascontiguousarray(rgb), s)
            continue
        if isinstance(block, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(block)).permute(0, 3, 1, 2)
            x = x.contiguous().to(torch.float64 if exact else torch.float32).div_(255.0)
        else:
            x = block.double() if exact else block.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        y = fn(x, s, Draw(gen, x.device)).clamp(0, 1)
        if isinstance(block, np.ndarray):
            # truncation: the cast rounds toward zero, which is floor for non-negative values
            eps = 0.0 if exact else TRUNC_EPS
            levels = y.mul_(255.0).add_(eps).to(torch.uint8)
            out[start : start + step] = levels.permute(0, 2, 3, 1).numpy()
        else:
            out[start : start + step] = y.to(images.dtype)
    return out


def table_name(h: int, w: int, params: str = "auto") -> str:
    """Name of the parameter table ``corrupt(..., params=params)`` uses for h x w images."""
    return table_for(h, w, _check_params(params)).name


def seed_for(seed: int, name: str, severity: int) -> int:
    """Independent seed per (corruption, severity) derived from one run seed.

    ``tta corrupt`` and on-the-fly corruption in evaluation runs both draw from
    ``torch.Generator().manual_seed(seed_for(seed, name, severity))``, so the same seed gives the
    same corrupted images either way, and a rerun or a subset reproduces each block.
    """
    return int(
        np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity]).generate_state(1)[0]
    )
