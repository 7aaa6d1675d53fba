"""Blur corruptions (Hendrycks & Dietterich, 2019): defocus, glass, motion, zoom and (extra)
Gaussian blur, each batched over the images, at any image size."""

from __future__ import annotations

from functools import cache, lru_cache

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
    zoom_sparse,
)
from corruptions.params import Setting

# Images up to this many pixels get zoom blur as one dense (HW x HW) matrix product; larger ones
# gather two neighbours per pixel and zoom factor (the dense matrix would grow as (HW)^2).
DENSE_ZOOM_PIXELS = 32 * 32

# Dense zoom-blur matrices kept (each up to (32*32)^2 float32, 4 MB): the five severities of a
# size under all three tables.
ZOOM_BLUR_MATRICES = 16


@cache
def defocus_kernel(radius: float, alias: float) -> torch.Tensor:
    """The reference ``disk``: the indicator of X^2 + Y^2 <= r^2, normalised, on a 17x17 grid
    (radius <= 8) or a (2r+1)^2 grid (larger radii), then OpenCV's GaussianBlur with a 3x3
    (respectively 5x5) kernel of sigma ``alias`` and the reflect-101 border, in float32.

    Returned cropped to its non-zero support, which filters identically.
    """
    half = 8 if radius <= 8 else int(radius)
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    taps = np.arange(ksize, dtype=np.float64) - ksize // 2
    g = np.exp(-(taps**2) / (2.0 * alias * alias))
    g = torch.from_numpy(g / g.sum())
    t = torch.from_numpy(disk.astype(np.float64))[None, None]
    r = ksize // 2
    kernel = pad2d(t, r, r, r, r, "mirror")
    kernel = torch.nn.functional.conv2d(kernel, g.view(1, 1, 1, ksize))
    kernel = torch.nn.functional.conv2d(kernel, g.view(1, 1, ksize, 1))[0, 0].float()
    rows = torch.nonzero(kernel.abs().sum(1)).flatten()
    cols = torch.nonzero(kernel.abs().sum(0)).flatten()
    keep = int(
        max(
            half - rows.min().item(),
            rows.max().item() - half,
            half - cols.min().item(),
            cols.max().item() - half,
        )
    )
    return kernel[half - keep : half + keep + 1, half - keep : half + keep + 1].contiguous()


def defocus_blur(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """Depthwise filtering with the aliased disk kernel, reflect-101 border (cv2.filter2D)."""
    radius, alias = s.value
    return depthwise(x, defocus_kernel(float(radius), float(alias)), "mirror")


def glass_sources(dy: torch.Tensor, dx: torch.Tensor, h: int, w: int, delta: int) -> torch.Tensor:
    """Flat source index (into one H x W image) of every pixel after one pass of the reference's
    pixel loop, for a batch of offset fields.

    The reference walks h from H - delta down to delta + 1 and, in each row, w from W - delta down
    to delta + 1, copying x[h + dy, w + dx] into x[h, w] (its tuple swap degenerates into that
    copy on numpy views). A source that the walk has already visited (further down, or further
    right on the same row, inside the walked region) holds its new value by then, so pixel p ends
    up with the input value at the end of the chain p -> src(p) -> src(src(p)) ... that stops at
    the first source not yet visited. The chains are followed for all pixels at once by pointer
    doubling (log2 of the longest chain rounds). With delta = 1 every source is up or left, never
    visited, and each chain has a single step.

    ``dy``, ``dx``: (B, H - 2 delta, W - 2 delta) integer offsets for the walked pixels.
    Returns (B, H * W) source indices.
    """
    b = dy.shape[0]
    dev = dy.device
    rows = torch.arange(h, device=dev).view(1, h, 1).expand(b, h, w).clone()
    cols = torch.arange(w, device=dev).view(1, 1, w).expand(b, h, w).clone()
    walked = (slice(None), slice(delta + 1, h - delta + 1), slice(delta + 1, w - delta + 1))
    rows[walked] += dy
    cols[walked] += dx
    src = (rows * w + cols).view(b, h * w)
    here = torch.arange(h * w, device=dev).view(1, -1)
    inside = torch.zeros((h, w), dtype=torch.bool, device=dev)
    inside[walked[1:]] = True
    inside = inside.view(1, -1)
    # walked earlier = inside the region and later in raster order (the walk runs backwards)
    follow = inside.expand(b, -1).gather(1, src) & (src > here) & inside
    while bool(follow.any()):
        nxt = src.gather(1, src)
        follow_next = follow.gather(1, src)
        src = torch.where(follow, nxt, src)
        follow = follow & follow_next
    return src


def glass_shuffle(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, delta: int = 1
) -> torch.Tensor:
    """One pass of the reference pixel loop over every image of (B, C, H, W), as one gather."""
    b, c, h, w = x.shape
    src = glass_sources(dy, dx, h, w, delta)
    base = (torch.arange(b, device=x.device) * (h * w)).view(b, 1)
    picked = to_pixels(x).index_select(0, (base + src).flatten())
    return from_pixels(picked, b, h, w)


def glass_blur(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """Gaussian blur, quantise to uint8, local pixel shuffles, Gaussian blur again."""
    sigma, delta, iterations = s.value
    b, _, h, w = x.shape
    y = trunc_levels(_ops.gaussian_blur(x, sigma)) / 255.0
    n_rows, n_cols = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    for _ in range(iterations):
        # numpy's randint(-delta, delta) draws from {-delta, ..., delta - 1}
        off = draw.randint(-delta, delta, (b, 2, n_rows, n_cols))
        y = glass_shuffle(y, off[:, 0], off[:, 1], delta)
    return _ops.gaussian_blur(y, sigma)


def motion_blur(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """ImageMagick motion blur at an angle ~ U(-45, 45) degrees per image; the reference reads the
    result back from an 8-bit PNG, so it is rounded to uint8 levels."""
    radius, sigma = s.value
    angle = draw.uniform(-45.0, 45.0, (x.shape[0],))
    return round_levels(_ops.motion_blur(x, radius, sigma, angle)) / 255.0


@lru_cache(maxsize=ZOOM_BLUR_MATRICES)
def zoom_blur_matrix(factors: tuple[float, ...], h: int, w: int) -> torch.Tensor:
    """(h*w, h*w) map: the mean of the image and each of its centre-zoomed copies."""
    total = np.eye(h * w)
    for z in factors:
        total += np.kron(zoom_matrix(h, z), zoom_matrix(w, z))
    return torch.from_numpy(total / (len(factors) + 1)).float()


def zoom_blur(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """(x + sum over zoom factors of clipped_zoom(x, z)) / (count + 1), each axis zoomed with its
    own length; one matrix product for small images, two-tap gathers for larger ones."""
    b, c, h, w = x.shape
    factors = tuple(float(z) for z in s.value)
    if h * w <= DENSE_ZOOM_PIXELS:
        k = zoom_blur_matrix(factors, h, w).to(x)
        return (x.reshape(b * c, h * w) @ k.T).reshape(b, c, h, w)
    total = x.clone()
    for z in factors:
        total += zoom_sparse(x, z)
    return total / (len(factors) + 1)


def gaussian_blur(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """scikit-image ``gaussian``: sigma per severity, nearest border, truncate 4."""
    return _ops.gaussian_blur(x, s.value)
