"""Blur corruptions of CIFAR-10-C (Hendrycks & Dietterich, 2019): defocus, glass, motion, zoom
and (extra) Gaussian blur, each batched over the images."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from corruptions import _ops
from corruptions._ops import (
    Draw,
    depthwise,
    from_pixels,
    pad2d,
    round_levels,
    to_pixels,
    trunc_levels,
    zoom_matrix,
)
from corruptions.params import params


@cache
def defocus_kernel(severity: int) -> torch.Tensor:
    """The reference ``disk``: indicator of X^2 + Y^2 <= r^2 on a 17x17 grid, normalised, then a
    3x3 Gaussian (OpenCV GaussianBlur, sigma = alias blur, reflect-101 border), in float32.

    Returned cropped to its non-zero support (at most 7x7), which filters identically.
    """
    radius, alias = params("defocus_blur", severity)
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2, dtype=np.float64) ** 2) / (2.0 * alias * alias))
    g = torch.from_numpy(g / g.sum())
    t = torch.from_numpy(disk.astype(np.float64))[None, None]
    kernel = pad2d(t, 1, 1, 1, 1, "mirror")
    kernel = torch.nn.functional.conv2d(kernel, g.view(1, 1, 1, 3))
    kernel = torch.nn.functional.conv2d(kernel, g.view(1, 1, 3, 1))[0, 0].float()
    rows = torch.nonzero(kernel.abs().sum(1)).flatten()
    cols = torch.nonzero(kernel.abs().sum(0)).flatten()
    r = int(
        max(
            8 - rows.min().item(),
            rows.max().item() - 8,
            8 - cols.min().item(),
            cols.max().item() - 8,
        )
    )
    return kernel[8 - r : 9 + r, 8 - r : 9 + r].contiguous()


def defocus_blur(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """Depthwise filtering with the aliased disk kernel, reflect-101 border (cv2.filter2D)."""
    return depthwise(x, defocus_kernel(severity), "mirror")


def glass_shuffle(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """One pass of the reference pixel loop as a single gather.

    The reference walks h, w from H-1 down to 2 and copies x[h+dy, w+dx] into x[h, w] with
    dy, dx in {-1, 0} (its swap degenerates to a copy on numpy views). Every source is up or
    left of its target, hence not yet written in that order, so all reads see the input.
    ``dy``, ``dx``: (B, H-2, W-2) integer offsets for the pixels 2..H-1 x 2..W-1.
    """
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1).expand(b, h, w).clone()
    cols = torch.arange(w, device=x.device).view(1, 1, w).expand(b, h, w).clone()
    rows[:, 2:, 2:] += dy
    cols[:, 2:, 2:] += dx
    base = (torch.arange(b, device=x.device) * (h * w)).view(b, 1, 1)
    picked = to_pixels(x).index_select(0, (base + rows * w + cols).flatten())
    return from_pixels(picked, b, h, w)


def glass_blur(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """Gaussian blur, quantise to uint8, local pixel shuffles, Gaussian blur again."""
    sigma, delta, iterations = params("glass_blur", severity)
    b, _, h, w = x.shape
    y = trunc_levels(_ops.gaussian_blur(x, sigma)) / 255.0
    for _ in range(iterations):
        # numpy's randint(-delta, delta) draws from {-delta, ..., delta - 1}
        off = draw.randint(-delta, delta, (b, 2, h - 2, w - 2))
        y = glass_shuffle(y, off[:, 0], off[:, 1])
    return _ops.gaussian_blur(y, sigma)


def motion_blur(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """ImageMagick motion blur at an angle ~ U(-45, 45) degrees per image; the reference reads the
    result back from an 8-bit PNG, so it is rounded to uint8 levels."""
    radius, sigma = params("motion_blur", severity)
    angle = draw.uniform(-45.0, 45.0, (x.shape[0],))
    return round_levels(_ops.motion_blur(x, radius, sigma, angle)) / 255.0


@cache
def zoom_blur_matrix(severity: int, n: int = 32) -> torch.Tensor:
    """(n*n, n*n) map: the mean of the image and each of its centre-zoomed copies."""
    factors = params("zoom_blur", severity)
    total = np.eye(n * n)
    for z in factors:
        m = zoom_matrix(n, float(z))
        total += np.kron(m, m)
    return torch.from_numpy(total / (len(factors) + 1)).float()


def zoom_blur(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """(x + sum over zoom factors of clipped_zoom(x, z)) / (count + 1), one matrix product."""
    b, c, h, w = x.shape
    k = zoom_blur_matrix(severity, h).to(x)
    return (x.reshape(b * c, h * w) @ k.T).reshape(b, c, h, w)


def gaussian_blur(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """scikit-image ``gaussian``: sigma per severity, nearest border, truncate 4."""
    return _ops.gaussian_blur(x, params("gaussian_blur", severity))
