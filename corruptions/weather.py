"""Weather corruptions (Hendrycks & Dietterich, 2019): snow, frost and fog, at any image size.

Size-dependent terms: the snow layer is zoomed along each axis with that axis's own length; frost
crops the table's textures (enlarged first when an image is larger than a texture, see
:mod:`corruptions.frost_textures`); fog draws its fractal on the next power of two at least as large
as the longer side and keeps the top-left H x W, as the references do (32, 64 and 256 -> 224).
"""

from __future__ import annotations

import torch

from corruptions import frost_textures
from corruptions._ops import (
    Draw,
    apply_rows_cols,
    motion_blur,
    round_levels,
    trunc_levels,
    zoom_matrix,
)
from corruptions.params import Setting


def gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's RGB2GRAY weights, (B, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def snow(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """A thresholded, zoomed, motion-blurred noise layer added twice (once rotated 180 degrees)
    over a slightly whitened image."""
    mean, std, zoom, thresh, radius, sigma, blend = s.value
    b, _, h, w = x.shape
    layer = mean + std * draw.randn((b, 1, h, w))
    if zoom != 1:
        m_rows, m_cols = (torch.from_numpy(zoom_matrix(n, float(zoom))) for n in (h, w))
        layer = apply_rows_cols(layer, m_rows, m_cols)
    layer = torch.where(layer < thresh, torch.zeros_like(layer), layer)
    # the reference stores the layer as an 8-bit PNG (truncated) and reads the blur back rounded
    layer = trunc_levels(layer) / 255.0
    angle = draw.uniform(-135.0, -45.0, (b,))
    layer = round_levels(motion_blur(layer, radius, sigma, angle)) / 255.0
    x = blend * x + (1 - blend) * torch.maximum(x, gray(x) * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


def frost(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """w_img * x + w_frost * (a random H x W crop of one of five frost textures)."""
    w_img, w_frost = s.value
    b, _, h, w = x.shape
    tex, sizes = frost_textures.textures(s.table.frost_scale, h, w)
    pick = draw.randint(0, len(sizes), (b,)).cpu()
    # numpy's randint(0, n - side) over each texture's own range
    top = torch.floor(draw.rand((b,)).cpu() * (sizes[pick, 0] - h).double()).long()
    left = torch.floor(draw.rand((b,)).cpu() * (sizes[pick, 1] - w).double()).long()
    rows = top[:, None] + torch.arange(h)
    cols = left[:, None] + torch.arange(w)
    crop = tex[pick[:, None, None], rows[:, :, None], cols[:, None, :]]
    crop = crop.permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0
    return w_img * x + w_frost * crop


def plasma_fractal(b: int, size: int, decay: float, draw: Draw) -> torch.Tensor:
    """The reference's diamond-square fractal for b images at once, scaled to [0, 1].

    Follows its code, including the displacement wibble * U(-wibble, wibble) (wibble squared in
    scale) starting at wibble = 100 and divided by ``decay`` at every halving of the step.
    """
    a = torch.zeros((b, size, size), dtype=torch.float64, device=draw.device)
    step = size
    wibble = 100.0

    def wibbled_mean(t: torch.Tensor) -> torch.Tensor:
        return t / 4 + wibble * draw.uniform(-wibble, wibble, t.shape).double()

    while step >= 2:
        half = step // 2
        corners = a[:, 0:size:step, 0:size:step]
        square = corners + torch.roll(corners, -1, dims=1)
        square = square + torch.roll(square, -1, dims=2)
        a[:, half:size:step, half:size:step] = wibbled_mean(square)
        centres = a[:, half:size:step, half:size:step]
        corners = a[:, 0:size:step, 0:size:step]
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        a[:, 0:size:step, half:size:step] = wibbled_mean(left)
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        a[:, half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    a = a - a.amin(dim=(1, 2), keepdim=True)
    return a / a.amax(dim=(1, 2), keepdim=True)


def fractal_side(h: int, w: int) -> int:
    """The fractal's side: the smallest power of two >= the longer image side."""
    return 1 << (max(h, w) - 1).bit_length()


def fog(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """(x + amount * fractal) * m / (m + amount) with m the image's maximum."""
    amount, decay = s.value
    b, _, h, w = x.shape
    m = x.amax(dim=(1, 2, 3), keepdim=True)
    fractal = plasma_fractal(b, fractal_side(h, w), decay, draw)[:, :h, :w]
    return (x + amount * fractal.to(x.dtype)[:, None]) * m / (m + amount)
