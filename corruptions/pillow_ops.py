"""The two corruptions the reference runs through Pillow on uint8 images (Hendrycks & Dietterich,
2019): pixelate (BOX resize down and back up) and JPEG compression.

Pixelate is reproduced bit for bit as fixed linear maps on small images: Pillow resizes in two
passes (horizontal, then vertical), each with 22-bit fixed-point weights and rounding to uint8; from
64x64 on it calls Pillow per image instead (the dense maps grow as side^3 per image). JPEG uses
Pillow itself (libjpeg, default 4:2:0 chroma subsampling), one image at a time: that is the codec.
Float inputs are first rounded to uint8 levels, as the reference only ever sees uint8 images.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import torch
from PIL import Image

from corruptions._ops import Draw
from corruptions.params import Setting

_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2


@cache
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


def pixelate_pillow(levels: np.ndarray, small: tuple[int, int]) -> np.ndarray:
    """BOX-resize uint8 images (B, H, W, 3) to ``small`` (w, h) and back with Pillow itself."""
    out = np.empty_like(levels)
    h, w = levels.shape[1:3]
    for i in range(levels.shape[0]):
        image = Image.fromarray(levels[i]).resize(small, Image.BOX).resize((w, h), Image.BOX)
        out[i] = np.asarray(image)
    return out


def pixelate(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """BOX-downsample to int(H c) x int(W c) pixels and BOX-upsample back (Pillow, uint8), as the
    references do with their own side (int(32 c), int(64 c), int(224 c))."""
    c = s.value
    h, w = x.shape[-2:]
    if h * w >= PILLOW_PIXELS:
        levels = to_levels(x).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = torch.from_numpy(pixelate_pillow(levels, (int(w * c), int(h * c))))
        return out.permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0
    small = box_resize_levels(to_levels(x), int(h * c), int(w * c))
    return (box_resize_levels(small, h, w) / 255.0).to(x.dtype)


def jpeg_levels(levels: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode uint8 images (B, H, W, 3) with Pillow's JPEG codec at ``quality``."""
    out = np.empty_like(levels)
    for i in range(levels.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(levels[i]).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


def pixelate_uint8(levels: np.ndarray, s: Setting) -> np.ndarray:
    """:func:`pixelate` of uint8 images (B, H, W, 3), without the trip through floats."""
    c = s.value
    h, w = levels.shape[1:3]
    if h * w >= PILLOW_PIXELS:
        return pixelate_pillow(levels, (int(w * c), int(h * c)))
    x = torch.from_numpy(levels).permute(0, 3, 1, 2).double()
    small = box_resize_levels(x, int(h * c), int(w * c))
    out = box_resize_levels(small, h, w)
    return out.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def jpeg_uint8(levels: np.ndarray, s: Setting) -> np.ndarray:
    """:func:`jpeg_compression` of uint8 images (B, H, W, 3), without the trip through floats."""
    return jpeg_levels(levels, s.value)


#: uint8 (B, H, W, 3) versions, used for uint8 input (same result as the float path truncated).
UINT8 = {"pixelate": pixelate_uint8, "jpeg_compression": jpeg_uint8}


def jpeg_compression(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """JPEG at the table's quality, per image through Pillow."""
    quality = s.value
    levels = to_levels(x).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = torch.from_numpy(jpeg_levels(levels, quality)).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=x.dtype) / 255.0
