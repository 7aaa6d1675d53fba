"""Spatter (an extra corruption, Hendrycks & Dietterich, 2019): water drops at severities 1-3, mud
at 4-5, from a thresholded, blurred noise layer; no size-dependent term.

The water branch of the reference is an OpenCV pipeline; each step is rewritten here as a batched
tensor operation with OpenCV's semantics: Canny edges (3x3 Sobel, L1 magnitude, thresholds 50/150,
8-connected hysteresis), the 5x5 chamfer distance to the nearest edge (weights 1, 1.4, 2.1969 in
16-bit fixed point), truncation at 20, 3x3 box blurs, histogram equalisation and an emboss filter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corruptions._ops import Draw, depthwise, gaussian_blur, pad2d
from corruptions.params import Setting

WATER = (175 / 255.0, 238 / 255.0, 238 / 255.0)  # pale turquoise, RGB
MUD = (63 / 255.0, 42 / 255.0, 20 / 255.0)  # mud brown, RGB

_TG22 = 13573  # tan(22.5 deg) in OpenCV's 15-bit fixed point
_SHIFT = 16  # fixed-point bits of OpenCV's chamfer distances
_CHAMFER = (65536, 91750, 143976)  # round(1, 1.4f, 2.1969f) * 2^16
_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def canny(levels: torch.Tensor, low: int = 50, high: int = 150) -> torch.Tensor:
    """OpenCV Canny edges (aperture 3, L1 gradient) of uint8 levels (B, 1, H, W) -> bool."""
    x = levels.float()  # integer arithmetic below 2^24 is exact in float32
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    dx = depthwise(x, sobel_x, "nearest").round().long()
    dy = depthwise(x, sobel_x.T.contiguous(), "nearest").round().long()
    mag = dx.abs() + dy.abs()
    h, w = mag.shape[-2:]
    p = F.pad(mag, (1, 1, 1, 1))  # magnitude is zero outside the image

    def at(oy: int, ox: int) -> torch.Tensor:
        return p[..., 1 + oy : 1 + oy + h, 1 + ox : 1 + ox + w]

    ax = dx.abs()
    ay = dy.abs() << 15
    tg22 = ax * _TG22
    tg67 = tg22 + (ax << 16)
    horizontal = ay < tg22
    vertical = ay > tg67
    horiz_max = (mag > at(0, -1)) & (mag >= at(0, 1))
    vert_max = (mag > at(-1, 0)) & (mag >= at(1, 0))
    # gradient signs equal: compare up-left and down-right, else up-right and down-left
    same = (dx < 0) == (dy < 0)
    diag_same = (mag > at(-1, -1)) & (mag > at(1, 1))
    diag_diff = (mag > at(-1, 1)) & (mag > at(1, -1))
    diag_max = torch.where(same, diag_same, diag_diff)
    local_max = torch.where(horizontal, horiz_max, torch.where(vertical, vert_max, diag_max))
    candidate = (mag > low) & local_max
    edges = candidate & (mag > high)
    while True:
        grown = candidate & (F.max_pool2d(edges.float(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def chamfer_distance(edges: torch.Tensor, cap: float = 20.0) -> torch.Tensor:
    """OpenCV distanceTransform(DIST_L2, 5) to the nearest edge pixel, min(., cap), float32.

    Iterated min-plus relaxation over the 16 moves of the 5x5 mask; values are capped during the
    iteration, which is exact for the capped result and converges in at most ``cap`` rounds.
    """
    a, b, c = _CHAMFER
    limit = int(round(cap * (1 << _SHIFT)))
    moves = [(0, 1, a), (0, -1, a), (1, 0, a), (-1, 0, a)]
    moves += [(dy, dx, b) for dy in (-1, 1) for dx in (-1, 1)]
    moves += [
        (dy, dx, c)
        for dy, dx in ((1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1), (-1, -2), (-2, -1))
    ]
    # whole multiples of 2^-16 below 2^24 / 2^16: exact in float32
    d = torch.where(edges, 0.0, float(limit))
    h, w = d.shape[-2:]
    while True:
        p = F.pad(d, (2, 2, 2, 2), value=limit)
        new = d
        for dy, dx, cost in moves:
            new = torch.minimum(new, p[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w] + cost)
        new = new.clamp_max(limit)
        if torch.equal(new, d):
            return d * (1.0 / (1 << _SHIFT))
        d = new


def box3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur with a 3x3 box, reflect-101 border, computed in float64 as OpenCV does."""
    h, w = x.shape[-2:]
    p = pad2d(x.double(), 1, 1, 1, 1, "mirror")
    rows = p[..., :, 0:w] + p[..., :, 1 : w + 1] + p[..., :, 2 : w + 2]
    return (rows[..., 0:h, :] + rows[..., 1 : h + 1, :] + rows[..., 2 : h + 2, :]) * (1.0 / 9.0)


def equalize_hist(levels: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist for each uint8 image (B, 1, H, W) held as integer-valued floats."""
    b = levels.shape[0]
    flat = levels.reshape(b, -1).long()
    total = flat.shape[1]
    hist = torch.zeros((b, 256), dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).long().argmax(dim=1, keepdim=True)
    count_first = hist.gather(1, first)
    cum = hist.cumsum(1) - hist.cumsum(1).gather(1, first)
    scale = torch.tensor(255.0, dtype=torch.float32) / (total - count_first).clamp_min(1).float()
    lut = torch.round(cum.float() * scale).clamp(0, 255)
    lut = torch.where(count_first == total, first.float().expand_as(lut), lut)
    return lut.gather(1, flat).reshape(levels.shape).to(levels.dtype)


def water_mask(liquid: torch.Tensor) -> torch.Tensor:
    """The reference's water intensity map (before scaling), (B, 1, H, W), max 1 per image."""
    levels = torch.floor(liquid.double().clamp(0, 1) * 255).float()  # astype(uint8)
    dist = chamfer_distance(canny(levels))
    dist = torch.floor(box3(dist).float())  # blur, then astype(uint8)
    dist = equalize_hist(dist)
    dist = depthwise(dist.float(), _EMBOSS, "mirror").round().clamp(0, 255)  # filter2D to CV_8U
    dist = torch.round(box3(dist)).float()  # cv2.blur of a uint8 image rounds
    m = levels * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    # the reference divides by zero when no drop survives the threshold; we leave the image clean
    return torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m))


def spatter(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """Water (severities 1-3) or mud (4-5) splashes from a thresholded blurred noise layer."""
    mean, std, sigma, thresh, intensity, mode = s.value
    b, _, h, w = x.shape
    liquid = gaussian_blur(mean + std * draw.randn((b, 1, h, w)), sigma)
    liquid = torch.where(liquid < thresh, torch.zeros_like(liquid), liquid)
    if mode == 0:
        m = (water_mask(liquid.cpu()) * intensity).to(device=x.device, dtype=x.dtype)
        colour = torch.tensor(WATER, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x + m * colour
    m = gaussian_blur((liquid > thresh).float(), intensity)
    m = torch.where(m < 0.8, torch.zeros_like(m), m).to(x.dtype)
    colour = torch.tensor(MUD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * (1 - m) + colour * m
