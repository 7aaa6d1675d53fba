"""The five frost textures of the reference generators, read from the installed
``imagecorruptions`` distribution's data files (Apache-2.0), at the scale each table uses.

Its code is never imported (it does not run on current numpy/scikit-image); only the image files
are used. The references read a texture with OpenCV (alpha dropped) and shrink it before cropping:
CIFAR-10-C by 0.2, Tiny-ImageNet-C by 0.3 (bilinear), ImageNet-C not at all. A texture that is
not larger than the image along some side cannot hold a crop; it is then enlarged bicubically by
1.1 x the ratio it lacks, the rule of bethgelab's ``imagecorruptions`` for images of any size
(which, unlike ImageNet-C, also enlarges textures that are large enough by 1.1).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from PIL import Image

# The reference draws one of the first five files uniformly.
FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

INSTALL_HINT = (
    "frost needs the texture files shipped in the 'imagecorruptions' package: "
    "pip install --no-deps imagecorruptions (only its texture files are used; the tta[frost] "
    "extra installs it with its own dependencies, opencv-python and scikit-image)"
)

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: resize weights in 1/2048 for 8-bit images
_CUBIC_A = -0.75  # OpenCV's bicubic kernel parameter


def texture_paths() -> list[str]:
    """Absolute paths of frost1..frost5 inside the installed distribution."""
    try:
        dist = importlib.metadata.distribution("imagecorruptions")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{INSTALL_HINT}; it is not installed.") from None
    found = {}
    for f in dist.files or []:
        base = os.path.basename(str(f))
        if base in FILES and "frost" in str(f):
            found[base] = str(dist.locate_file(f))
    missing = [name for name in FILES if name not in found or not os.path.isfile(found[name])]
    if missing:
        raise RuntimeError(f"{INSTALL_HINT}; the installed copy lacks {', '.join(missing)}.")
    return [found[name] for name in FILES]


@lru_cache(maxsize=1)
def originals() -> tuple[np.ndarray, ...]:
    """The five texture files as uint8 RGB (H, W, 3) arrays, alpha dropped as cv2.imread does."""
    out = []
    for path in texture_paths():
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB")))
    return tuple(out)


def _linear_taps(in_size: int, out_size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR source index and 1/2048 weight of its right neighbour, per output
    pixel: half-pixel centres, x = (d + 0.5) * scale - 0.5, clamped at the borders."""
    pos = (np.arange(out_size) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    frac = np.where(i0 < 0, 0.0, frac)
    i0 = np.maximum(i0, 0)
    last = i0 >= in_size - 1
    frac = np.where(last, 0.0, frac)
    i0 = np.minimum(i0, in_size - 1)
    w1 = np.rint(frac * (1 << _COEF_BITS)).astype(np.int64)
    return i0, w1


def shrink_linear(image: np.ndarray, factor: float) -> np.ndarray:
    """cv2.resize(image, (0, 0), fx=factor, fy=factor) (INTER_LINEAR) of a uint8 (H, W, 3) image.

    Output sides round(side * factor). OpenCV's 8-bit path: weights in 1/2048, a horizontal pass
    in integers, then a vertical pass that drops 4 bits of each row sum, keeps the high 16 bits of
    each product and rounds the last 2 bits away (its vectorised kernel; bit-exact with OpenCV).
    """
    h, w = image.shape[:2]
    oh, ow = int(round(h * factor)), int(round(w * factor))
    one = 1 << _COEF_BITS
    src = image.astype(np.int64)
    c0, cw = _linear_taps(w, ow, 1.0 / factor)
    c1 = np.minimum(c0 + 1, w - 1)
    rows = src[:, c0] * (one - cw)[None, :, None] + src[:, c1] * cw[None, :, None]
    r0, rw = _linear_taps(h, oh, 1.0 / factor)
    r1 = np.minimum(r0 + 1, h - 1)
    top = ((rows[r0] >> 4) * (one - rw)[:, None, None]) >> 16
    bottom = ((rows[r1] >> 4) * rw[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def _cubic_weights(frac: np.ndarray) -> np.ndarray:
    """The four bicubic weights (a = -0.75) of taps -1, 0, 1, 2 for each fractional offset."""
    a = _CUBIC_A
    t = frac[:, None] + np.array([1.0, 0.0, -1.0, -2.0])[None, :]
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    weights = np.where(t <= 1, near, far)
    weights[:, 3] = 1.0 - weights[:, :3].sum(1)
    return weights


def enlarge_cubic(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2.resize(image, (out_w, out_h), interpolation=INTER_CUBIC) of a uint8 (H, W, 3) image:
    half-pixel centres, replicated border, the two passes in floating point, rounded to nearest
    (matches current OpenCV; 2019 releases used 1/2048 fixed-point weights, one level apart on a
    few percent of pixels)."""
    h, w = image.shape[:2]
    src = image.astype(np.float64)

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        base = np.floor(pos).astype(np.int64)
        idx = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
        return idx, _cubic_weights(pos - base)

    ci, cw = taps(w, out_w)
    rows = (src[:, ci] * cw[None, :, :, None]).sum(2)
    ri, rw = taps(h, out_h)
    both = (rows[ri] * rw[:, :, None, None]).sum(1)
    return np.clip(np.rint(both), 0, 255).astype(np.uint8)


@lru_cache(maxsize=3)
def scaled(scale: float) -> tuple[np.ndarray, ...]:
    """The five textures at one table's scale: 0.2 (CIFAR-10-C), 0.3 (Tiny-ImageNet-C) or 1."""
    return tuple(full if scale == 1.0 else shrink_linear(full, scale) for full in originals())


def fitted_shape(shape: tuple[int, ...], h: int, w: int) -> Optional[tuple[int, int]]:
    """None when a texture of ``shape`` is larger than h x w (used as it is), else the size it is
    enlarged to: ceil(side * 1.1 * max(h / th, w / tw)) (``imagecorruptions``' rule)."""
    th, tw = shape[:2]
    if th > h and tw > w:
        return None
    factor = 1.1 * max(h / th, w / tw, 1.0)
    return int(math.ceil(th * factor)), int(math.ceil(tw * factor))


def fit(texture: np.ndarray, h: int, w: int) -> np.ndarray:
    """``texture`` as it is when it is larger than h x w, else enlarged bicubically to
    :func:`fitted_shape`."""
    size = fitted_shape(texture.shape, h, w)
    return texture if size is None else enlarge_cubic(texture, *size)


def textures(scale: float = 0.2, h: int = 32, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The five textures for h x w images at a table's ``scale``, zero-padded into one uint8
    tensor (5, Hmax, Wmax, 3), and their true sizes (5, 2) as (height, width).

    Cached by the fitted texture sizes, not by h x w: every image size that all textures exceed
    (each size up to the smallest texture) shares one entry.
    """
    shapes = tuple(fitted_shape(t.shape, h, w) for t in scaled(scale))
    return _stacked(scale, shapes)


@lru_cache(maxsize=4)
def _stacked(
    scale: float, shapes: tuple[Optional[tuple[int, int]], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`textures` for the five textures at ``scale`` used as they are (None) or enlarged to
    the given (height, width)."""
    arrays = [
        t if size is None else enlarge_cubic(t, *size) for t, size in zip(scaled(scale), shapes)
    ]
    hmax = max(a.shape[0] for a in arrays)
    wmax = max(a.shape[1] for a in arrays)
    stacked = np.zeros((len(arrays), hmax, wmax, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        stacked[i, : a.shape[0], : a.shape[1]] = a
    sizes = torch.tensor([a.shape[:2] for a in arrays], dtype=torch.long)
    return torch.from_numpy(stacked), sizes


def clear_cache() -> None:
    """Forget every texture read or resized so far (the next frost call reads the files again)."""
    for cached in (originals, scaled, _stacked):
        cached.cache_clear()
