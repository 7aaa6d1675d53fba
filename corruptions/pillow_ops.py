"""The two corruptions the reference runs through Pillow on uint8 images (Hendrycks & Dietterich,
2019): pixelate (BOX resize down and back up) and JPEG compression.

Pixelate is reproduced bit for bit as fixed linear maps on small images: Pillow resizes in two
passes (horizontal, then vertical), each with 22-bit fixed-point weights and rounding to uint8; from
64x64 on it calls Pillow per image instead (the dense maps grow as side^3 per image). JPEG uses
Pillow itself (libjpeg, default 4:2:0 chroma subsampling), one image at a time: that is the codec.
Float inputs are first rounded to uint8 levels, as the reference only ever sees uint8 images, and
go through the same uint8 functions (on the CPU).
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from PIL import Image

from corruptions._ops import Draw
from corruptions.params import Setting

_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2

# BOX weight matrices kept (keyed on input and output side; below ``PILLOW_PIXELS`` a side is at
# most 255, a matrix at most 0.5 MB): both axes of all five severities for a few image sizes.
BOX_WEIGHTS = 64


@lru_cache(maxsize=BOX_WEIGHTS)
def box_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's BOX-filter resampling weights as integers (out_size, in_size), summing to ~2^22.

    Output pixel i covers input centre (i + .5) * scale; an input pixel x gets weight 1 when
    (x + .5 - centre) / max(scale, 1) lies in (-.5, .5], then the row is normalised.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        row = np.zeros(in_size)
        for x in range(lo, hi):
            t = (x - centre + 0.5) / filterscale
            row[x] = 1.0 if -0.5 < t <= 0.5 else 0.0
        total = row.sum()
        if total != 0:
            row /= total
        weights[i] = row
    fixed = np.where(weights < 0, -0.5 + weights * (1 << _BITS), 0.5 + weights * (1 << _BITS))
    return np.trunc(fixed)


def _pass(levels: torch.Tensor, weights: np.ndarray, dim: int) -> torch.Tensor:
    """One Pillow 8-bit resampling pass along ``dim`` (-1 columns, -2 rows); exact in float64."""
    k = torch.from_numpy(weights).to(levels.device)
    if dim == -1:
        acc = levels @ k.T
    else:
        acc = (levels.transpose(-1, -2) @ k.T).transpose(-1, -2)
    return acc.add_(1 << (_BITS - 1)).div_(1 << _BITS).floor_().clamp_(0, 255)


def box_resize_levels(levels: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Pillow ``resize(..., Image.BOX)`` of uint8 levels held as float64 (B, C, H, W)."""
    h, w = levels.shape[-2:]
    if out_w != w:
        levels = _pass(levels, box_weights(w, out_w), -1)
    if out_h != h:
        levels = _pass(levels, box_weights(h, out_h), -2)
    return levels


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] to the nearest uint8 levels (exact for images that came from uint8)."""
    return torch.floor(x.double().clamp(0, 1) * 255 + 0.5)


# From this many pixels on, pixelate calls Pillow per image: the dense resampling matrices below
# cost O(side^3) per image, Pillow's banded filter O(side^2).
PILLOW_PIXELS = 64 * 64

Uint8Fn = Callable[[np.ndarray, Setting], np.ndarray]


def _via_uint8(fn: Uint8Fn, x: torch.Tensor, s: Setting) -> torch.Tensor:
    """Run a uint8 (B, H, W, 3) corruption on float images (B, 3, H, W): rounded to uint8 levels
    first (the reference only ever sees uint8 images), back to x's device and dtype in [0, 1]."""
    levels = to_levels(x).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = torch.from_numpy(fn(levels, s)).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=x.dtype) / 255.0


def pixelate_pillow(levels: np.ndarray, small: tuple[int, int]) -> np.ndarray:
    """BOX-resize uint8 images (B, H, W, 3) to ``small`` (w, h) and back with Pillow itself."""
    out = np.empty_like(levels)
    h, w = levels.shape[1:3]
    for i in range(levels.shape[0]):
        image = Image.fromarray(levels[i]).resize(small, Image.BOX).resize((w, h), Image.BOX)
        out[i] = np.asarray(image)
    return out


def pixelate_uint8(levels: np.ndarray, s: Setting) -> np.ndarray:
    """BOX-downsample uint8 images (B, H, W, 3) to int(H c) x int(W c) pixels and BOX-upsample
    back (Pillow, uint8), as the references do with their own side (int(32 c), int(64 c),
    int(224 c)): Pillow itself from ``PILLOW_PIXELS`` on, its exact fixed-point maps below."""
    c = s.value
    h, w = levels.shape[1:3]
    if h * w >= PILLOW_PIXELS:
        return pixelate_pillow(levels, (int(w * c), int(h * c)))
    x = torch.from_numpy(levels).permute(0, 3, 1, 2).double()
    small = box_resize_levels(x, int(h * c), int(w * c))
    out = box_resize_levels(small, h, w)
    return out.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def jpeg_uint8(levels: np.ndarray, s: Setting) -> np.ndarray:
    """Encode and decode uint8 images (B, H, W, 3) with Pillow's JPEG codec at the table's
    quality, one image at a time."""
    out = np.empty_like(levels)
    for i in range(levels.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(levels[i]).save(buf, format="JPEG", quality=s.value)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


#: uint8 (B, H, W, 3) versions, used directly for uint8 input (float input goes through them too).
UINT8: dict[str, Uint8Fn] = {"pixelate": pixelate_uint8, "jpeg_compression": jpeg_uint8}


def pixelate(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """:func:`pixelate_uint8` of float images, rounded to uint8 levels first."""
    return _via_uint8(pixelate_uint8, x, s)


def jpeg_compression(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """:func:`jpeg_uint8` of float images, rounded to uint8 levels first."""
    return _via_uint8(jpeg_uint8, x, s)
