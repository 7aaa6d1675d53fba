"""Independent reference computations shared by the corruption tests: test images, and literal
ports of the reference generators' loops and scipy rewrites of their steps (never the package's own
code)."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from scipy import ndimage, signal

from corruptions._ops import Draw


def uint8_images(n: int = 6, h: int = 32, w: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Smooth colour images with some texture: a coarse random field upsampled plus pixel noise,
    uint8 (n, h, w, 3)."""
    w = h if w is None else w
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 8, 8, 3))
    smooth = ndimage.zoom(coarse, (1, h / 8, w / 8, 1), order=1)[:, :h, :w]
    noisy = 0.8 * smooth + 0.2 * rng.random((n, h, w, 3))
    return np.clip(noisy * 255, 0, 255).astype(np.uint8)


def to_float(u: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) as a float tensor (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(u).permute(0, 3, 1, 2).float() / 255.0


def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
    """The reference's centre crop, scipy zoom (order 1) and trim, each axis with its own length."""
    out = img
    for axis, n in enumerate(img.shape[:2]):
        ch = int(np.ceil(n / z))
        top = (n - ch) // 2
        out = np.take(out, np.arange(top, top + ch), axis=axis)
    factors = (z, z) + (1,) * (img.ndim - 2)
    out = ndimage.zoom(out, factors, order=1)
    for axis, n in enumerate(img.shape[:2]):
        trim = (out.shape[axis] - n) // 2
        out = np.take(out, np.arange(trim, trim + n), axis=axis)
    return out


def disk(radius: float, alias: float) -> np.ndarray:
    """The reference disk kernel rebuilt with scipy: indicator, normalised, then a 3x3 (radius <= 8,
    on a 17x17 grid) or 5x5 Gaussian (larger radii, on a (2r+1)^2 grid) with OpenCV's reflect-101
    border."""
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    kernel /= kernel.sum()
    g = np.exp(-((np.arange(ksize) - ksize // 2) ** 2) / (2 * alias**2))
    g /= g.sum()
    padded = np.pad(kernel, ksize // 2, mode="reflect")  # numpy's reflect is reflect-101
    return signal.correlate2d(padded, np.outer(g, g), mode="valid")


def glass_loop(img: np.ndarray, dy: np.ndarray, dx: np.ndarray, delta: int) -> np.ndarray:
    """The reference pixel walk, literally: rows and columns from side - delta down to delta + 1,
    the tuple "swap" on numpy views (which copies the source into the target)."""
    x = img.copy()
    h, w = x.shape[:2]
    for r in range(h - delta, delta, -1):
        for c in range(w - delta, delta, -1):
            rp, cp = r + dy[r - delta - 1, c - delta - 1], c + dx[r - delta - 1, c - delta - 1]
            x[r, c], x[rp, cp] = x[rp, cp], x[r, c]
    return x


def motion_blur_loop(img: np.ndarray, angles: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """ImageMagick's motion blur of (B, 1, H, W), pixel by pixel: 2 radius + 1 one-sided Gaussian
    taps, tap i reading (x + ceil(i cos t - .5), y + ceil(i sin t - .5)) clamped to the image."""
    _, _, h, w = img.shape
    width = 2 * radius + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k /= k.sum()
    ref = np.zeros_like(img)
    for b, ang in enumerate(angles):
        t = np.deg2rad(ang)
        for y in range(h):
            for x in range(w):
                for i in range(width):
                    sx = min(max(x + int(np.ceil(i * np.cos(t) - 0.5)), 0), w - 1)
                    sy = min(max(y + int(np.ceil(i * np.sin(t) - 0.5)), 0), h - 1)
                    ref[b, 0, y, x] += k[i] * img[b, 0, sy, sx]
    return ref


def plasma_loop(size: int, decay: float, draws: Iterator[np.ndarray]) -> np.ndarray:
    """The reference diamond-square loop, fed the recorded uniforms in its call order."""
    a = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled(arr):
        return arr / 4 + wibble * (-wibble + 2 * wibble * next(draws)[0])

    while step >= 2:
        half = step // 2
        c = a[0:size:step, 0:size:step]
        sq = c + np.roll(c, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        a[half:size:step, half:size:step] = wibbled(sq)
        dr = a[half:size:step, half:size:step]
        ul = a[0:size:step, 0:size:step]
        a[0:size:step, half:size:step] = wibbled(
            dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        )
        a[half:size:step, 0:size:step] = wibbled(
            dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        )
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max()


class Recorder(Draw):
    """A Draw that keeps every uniform block it hands out, so a test can redo the computation."""

    def __init__(self, seed: int = 3):
        super().__init__(torch.Generator().manual_seed(seed), torch.device("cpu"))
        self.record: list[np.ndarray] = []

    def rand(self, shape):
        out = super().rand(shape)
        self.record.append(out.double().numpy().copy())
        return out
