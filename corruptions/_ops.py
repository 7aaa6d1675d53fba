"""Batched image primitives shared by the corruptions: border handling, separable Gaussian blur,
ImageMagick-style motion blur, scipy-style clipped zoom as a matrix, uint8 quantisation and a
random-draw helper bound to one ``torch.Generator``.

All images here are float tensors (B, C, H, W). Border modes use scipy's names:
``nearest`` (a a | a b), ``reflect`` (b a | a b, half-sample symmetric) and ``mirror``
(c b | a b c, OpenCV's default BORDER_REFLECT_101).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

# Bounds of the caches keyed on an image side (``corrupt`` accepts any size, so a long run over
# images of many sizes would otherwise keep every matrix it ever built). One image size under one
# table needs at most 10 blur matrices (elastic transform: the severities whose sigma is wider than
# MATRIX_RADIUS, two axes each), 10 snow zoom matrices (five zooms x two axes) and 124 zoom-blur tap
# sets (the imagenet table's 62 zoom factors x two axes). A dense matrix of side n holds 8 n^2 bytes
# (1.3 MB at 400 pixels), a tap set 24 n bytes.
BLUR_MATRICES = 32
ZOOM_MATRICES = 32
ZOOM_TAPS = 512

# Added before truncating to uint8 so that values a float32 rounding error below an integer level
# (measured at most about 5e-5 of a level) still land on k. Kept this small so that values truly
# just below a level are not lifted to it. Corruptions computed in float64 (brightness, saturate)
# are truncated without it, as their float64 reference is.
TRUNC_EPS = 1e-4


def remap(index: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer positions (any range) onto 0..n-1 following a border ``mode``."""
    if mode == "nearest":
        return index.clamp(0, n - 1)
    if mode == "reflect":
        j = torch.remainder(index, 2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    if mode == "mirror":
        if n == 1:
            return torch.zeros_like(index)
        j = torch.remainder(index, 2 * n - 2)
        return torch.where(j >= n, 2 * n - 2 - j, j)
    raise ValueError(f"unknown border mode {mode!r}; valid: 'nearest', 'reflect', 'mirror'")


def pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of (B, C, H, W) following a border ``mode``.

    Uses torch's native padding where it matches (fast); index selection otherwise, which handles
    any pad width.
    """
    h, w = x.shape[-2:]
    widths = (left, right, top, bottom)
    if x.dim() == 4 and max(widths) < min(h, w):
        if mode == "nearest":
            return F.pad(x, widths, mode="replicate")
        if mode == "mirror":
            return F.pad(x, widths, mode="reflect")
        if mode == "reflect":
            rows = [x[..., :top, :].flip(-2), x, x[..., h - bottom :, :].flip(-2)]
            x = torch.cat(rows, dim=-2)
            cols = [x[..., :left].flip(-1), x, x[..., w - right :].flip(-1)]
            return torch.cat(cols, dim=-1)
    rows = remap(torch.arange(-top, h + bottom, device=x.device), h, mode)
    cols = remap(torch.arange(-left, w + right, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate*sigma + 0.5), weights exp(-x^2/2s^2)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * x**2)
    return torch.from_numpy(phi / phi.sum())


def _per_plane(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate each (H, W) plane of padded (B, C, H', W') with one small kernel.

    The planes become the channels of a single depthwise convolution, the fastest layout for
    torch's CPU kernels here.
    """
    b, c, h, w = x.shape
    n = b * c
    k = kernel.to(x)
    weight = k.view(1, 1, *k.shape).expand(n, 1, *k.shape)
    out = F.conv2d(x.reshape(1, n, h, w), weight, groups=n)
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def separable(
    x: torch.Tensor, k_rows: torch.Tensor, k_cols: torch.Tensor, mode: str
) -> torch.Tensor:
    """Correlate every channel of (B, C, H, W) with a row kernel and a column kernel."""
    ry, rx = (len(k_rows) - 1) // 2, (len(k_cols) - 1) // 2
    y = pad2d(x, ry, ry, rx, rx, mode)
    y = _per_plane(y, k_cols.view(1, -1))
    return _per_plane(y, k_rows.view(-1, 1))


# Kernels longer than this (radius in pixels) are applied as an n x n matrix per axis instead of
# a convolution: cheaper for the very wide kernels of ImageNet-C's elastic transform (radius up to
# 512 on 224-pixel images), and the matrix folds in any border extension however long the kernel.
MATRIX_RADIUS = 32


@lru_cache(maxsize=BLUR_MATRICES)
def blur_matrix(n: int, sigma: float, mode: str, truncate: float) -> torch.Tensor:
    """The 1-D Gaussian filter of an axis of length n as a matrix (border ``mode`` folded in):
    row i holds the weight every input pixel gets in output pixel i."""
    k = gaussian_kernel1d(sigma, truncate)
    r = (len(k) - 1) // 2
    rows = torch.arange(n).view(n, 1).expand(n, len(k))
    cols = remap(rows + torch.arange(-r, r + 1).view(1, -1), n, mode)
    out = torch.zeros((n, n), dtype=torch.float64)
    out.index_put_((rows.reshape(-1), cols.reshape(-1)), k.repeat(n), accumulate=True)
    return out


def gaussian_blur(
    x: torch.Tensor,
    sigma: Union[float, tuple[float, float]],
    mode: str = "nearest",
    truncate: float = 4.0,
) -> torch.Tensor:
    """scipy/scikit-image ``gaussian`` over the two spatial dims (defaults as skimage's).

    ``sigma`` is one value or (rows, columns); an axis with sigma <= 0 is left as it is, as scipy
    does.
    """
    sy, sx = (sigma, sigma) if not isinstance(sigma, tuple) else sigma
    if sy <= 0 and sx <= 0:
        return x
    h, w = x.shape[-2:]
    radius = max(int(truncate * float(s) + 0.5) for s in (sy, sx) if s > 0)
    if radius > MATRIX_RADIUS:
        eye = [torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)]
        m_rows = blur_matrix(h, float(sy), mode, truncate) if sy > 0 else eye[0]
        m_cols = blur_matrix(w, float(sx), mode, truncate) if sx > 0 else eye[1]
        return apply_rows_cols(x, m_rows, m_cols)
    one = torch.ones(1, dtype=torch.float64)
    k_rows = gaussian_kernel1d(sy, truncate) if sy > 0 else one
    k_cols = gaussian_kernel1d(sx, truncate) if sx > 0 else one
    return separable(x, k_rows, k_cols, mode)


def depthwise(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with one 2-D kernel of odd size (OpenCV filter2D semantics)."""
    kh, kw = kernel.shape
    return _per_plane(pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode), kernel)


def trunc_levels(x: torch.Tensor) -> torch.Tensor:
    """uint8 levels by truncation (numpy's ``astype(uint8)`` of x*255), as floats."""
    return torch.floor(x.clamp(0, 1) * 255 + TRUNC_EPS)


def round_levels(x: torch.Tensor) -> torch.Tensor:
    """uint8 levels by rounding to nearest (what an 8-bit PNG written by ImageMagick holds)."""
    return torch.floor(x.clamp(0, 1) * 255 + 0.5)


def motion_blur(
    x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor
) -> torch.Tensor:
    """ImageMagick's MotionBlurImage with one angle per image and an edge-replicated border.

    Width 2*ceil(radius)+1 taps with one-sided Gaussian weights exp(-i^2/2 sigma^2), tap i reading
    the pixel at (x + ceil(i cos t - .5), y + ceil(i sin t - .5)). One gather per tap, batched.
    """
    b, c, h, w = x.shape
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2.0 * sigma * sigma))
    weights = weights / weights.sum()
    theta = angle_deg.to(device=x.device, dtype=torch.float64) * (math.pi / 180.0)
    off_x = torch.ceil(i.to(x.device)[None, :] * torch.cos(theta)[:, None] - 0.5).long()
    off_y = torch.ceil(i.to(x.device)[None, :] * torch.sin(theta)[:, None] - 0.5).long()
    # Pad by the largest reach (edge replication), so that every tap of an image is one flat shift
    top, bottom = max(0, -int(off_y.min())), max(0, int(off_y.max()))
    left, right = max(0, -int(off_x.min())), max(0, int(off_x.max()))
    padded = pad2d(x, top, bottom, left, right, "nearest")
    if h * w >= 64 * 64:  # large images: each tap of an image is a plain slice (no index arrays)
        out = torch.zeros_like(x)
        for k in range(b):
            for t in range(width):
                r0, c0 = top + int(off_y[k, t]), left + int(off_x[k, t])
                out[k].add_(padded[k, :, r0 : r0 + h, c0 : c0 + w], alpha=float(weights[t]))
        return out
    hp, wp = padded.shape[-2:]
    rows = torch.arange(h, device=x.device).view(h, 1) + top
    cols = torch.arange(w, device=x.device).view(1, w) + left
    base = (rows * wp + cols).view(1, h * w)
    shift = off_y * wp + off_x  # (B, width)
    flat = padded.reshape(b, c, hp * wp)
    out = torch.zeros((b, c, h * w), dtype=x.dtype, device=x.device)
    for t in range(width):
        idx = (base + shift[:, t : t + 1]).view(b, 1, h * w).expand(b, c, h * w)
        out.add_(flat.gather(2, idx), alpha=float(weights[t]))
    return out.view(b, c, h, w)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C): one row per pixel, so a pixel gather is one index_select."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def from_pixels(p: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_pixels`, contiguous (B, C, H, W)."""
    return p.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


@lru_cache(maxsize=ZOOM_MATRICES)
def zoom_matrix(n: int, zoom: float) -> np.ndarray:
    """The 1-D linear map of the reference ``clipped_zoom`` for one axis of length n.

    Crop ceil(n/zoom) centre pixels, resample to round(len*zoom) samples as scipy.ndimage.zoom does
    with order=1 (output o reads input o*(len-1)/(out-1)), then keep the centre n samples.
    """
    ch = int(np.ceil(n / zoom))
    top = (n - ch) // 2
    out_len = int(round(ch * zoom))
    step = (ch - 1) / (out_len - 1) if out_len > 1 else 1.0
    full = np.zeros((out_len, n), dtype=np.float64)
    for o in range(out_len):
        pos = o * step
        i0 = int(math.floor(pos))
        t = pos - i0
        full[o, top + min(i0, ch - 1)] += 1.0 - t
        if t > 0 and i0 + 1 < ch:
            full[o, top + i0 + 1] += t
    trim = (out_len - n) // 2
    return full[trim : trim + n]


def apply_rows_cols(x: torch.Tensor, m_rows: torch.Tensor, m_cols: torch.Tensor) -> torch.Tensor:
    """Linear maps along both spatial axes: M_rows X M_cols^T for every channel."""
    m_rows, m_cols = m_rows.to(x), m_cols.to(x)
    return torch.einsum("ih,bchw,jw->bcij", m_rows, x, m_cols)


@lru_cache(maxsize=ZOOM_TAPS)
def zoom_taps(n: int, zoom: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`zoom_matrix` as its two taps per output pixel: indices i0, i1 and weight t of i1
    (every row of that matrix is a linear interpolation between two neighbours), computed from the
    same sample positions without building the n x n matrix.

    Row o of the matrix has 1 - t at i0 = top + min(floor(pos), ch - 1) (its first non-zero
    entry, as t < 1) and t at i0 + 1 when floor(pos) + 1 < ch; past the crop (a position rounded
    onto its last pixel) the second tap is absent and its weight here is 0.
    """
    ch = int(np.ceil(n / zoom))
    top = (n - ch) // 2
    out_len = int(round(ch * zoom))
    step = (ch - 1) / (out_len - 1) if out_len > 1 else 1.0
    trim = (out_len - n) // 2
    pos = np.arange(trim, trim + n, dtype=np.float64) * step
    base = np.floor(pos).astype(np.int64)
    frac = pos - base
    i0 = top + np.minimum(base, ch - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    t = np.where((i1 != i0) & (base + 1 < ch), frac, 0.0)
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(t)


def zoom_sparse(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The reference ``clipped_zoom`` of (B, C, H, W), each axis with its own length, by gathering
    two neighbours per output pixel (what :func:`zoom_matrix` does, without the dense product)."""
    h, w = x.shape[-2:]
    r0, r1, rt = (a.to(x.device) for a in zoom_taps(h, zoom))
    c0, c1, ct = (a.to(x.device) for a in zoom_taps(w, zoom))
    rt, ct = rt.to(x.dtype).view(-1, 1), ct.to(x.dtype)
    rows = torch.lerp(x.index_select(-2, r0), x.index_select(-2, r1), rt)
    return torch.lerp(rows.index_select(-1, c0), rows.index_select(-1, c1), ct)


class Draw:
    """Random draws from one explicit ``torch.Generator``, delivered on the images' device.

    Numbers are drawn on the generator's device (so a CPU generator gives the same numbers whatever
    the image device) and then moved.
    """

    def __init__(self, generator: torch.Generator, device: torch.device):
        self.gen = generator
        self.device = device

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        return self._to(torch.rand(tuple(shape), generator=self.gen, device=self.gen.device))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return self._to(torch.randn(tuple(shape), generator=self.gen, device=self.gen.device))

    def uniform(self, low: float, high: float, shape: Sequence[int]) -> torch.Tensor:
        return low + (high - low) * self.rand(shape)

    def randint(self, low: int, high: int, shape: Sequence[int]) -> torch.Tensor:
        return self._to(
            torch.randint(low, high, tuple(shape), generator=self.gen, device=self.gen.device)
        )

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return self._to(torch.poisson(rates.to(self.gen.device), generator=self.gen))
