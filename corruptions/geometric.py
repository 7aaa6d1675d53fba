"""Elastic transform (Hendrycks & Dietterich, 2019): a random affine warp (three control points
jittered) followed by a smooth random displacement field, both resampled bilinearly, batched over
images.

Its three lengths (displacement scale alpha, smoothing sigma, affine jitter) are in pixels of the
table's native size. On another size each is scaled by side / native along the axis it is measured
on (rows by H, columns by W), so the warp covers the same fraction of the image; at the native size
the factor is 1 and the reference is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from corruptions._ops import Draw, gaussian_blur, pad2d
from corruptions.params import Setting


def bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample (B, C, H, W) at fractional positions (B, H, W), border ``mode`` as in _ops.

    The image is padded by the mode far enough to hold every position, then sampled with
    ``grid_sample`` (bilinear, align_corners=True): the same weights as order-1 interpolation.
    """
    b, c, h, w = x.shape
    reach = max(
        0.0,
        float(-rows.min()),
        float(rows.max()) - (h - 1),
        float(-cols.min()),
        float(cols.max()) - (w - 1),
    )
    pad = int(math.ceil(reach)) + 1
    padded = pad2d(x, pad, pad, pad, pad, mode)
    hp, wp = padded.shape[-2:]
    grid = torch.stack(
        [(cols + pad) * (2.0 / (wp - 1)) - 1.0, (rows + pad) * (2.0 / (hp - 1)) - 1.0], dim=-1
    )
    return F.grid_sample(
        padded, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


def control_points(h: int, w: int) -> torch.Tensor:
    """The reference's three affine control points (x, y): centre +- a third of the shorter side.

    The reference builds them from (H // 2, W // 2) read as (x, y), which is the centre only for
    square images (all it was run on); here x is always the column centre, y the row centre.
    """
    cy, cx = float(h // 2), float(w // 2)
    s = min(h, w) // 3
    return torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float64)


def inverse_affine(src_pts: torch.Tensor, dst_pts: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) maps taking each warped position back to where it reads in the input
    (what cv2.warpAffine does with the inverse of getAffineTransform(src, dst))."""
    ones = torch.ones(dst_pts.shape[:-1] + (1,), dtype=torch.float64)
    system = torch.cat([dst_pts, ones], dim=-1)
    return torch.linalg.solve(system, src_pts.expand_as(dst_pts)).transpose(1, 2)


def elastic_fields(b: int, h: int, w: int, s: Setting, draw: Draw):
    """Random parameters: inverse affine maps (B, 2, 3) and displacements dx, dy (B, H, W)."""
    alpha, sigma, jitter = s.value
    sy, sx = s.scale(h), s.scale(w)
    pts = control_points(h, w)
    if sx == sy:
        shift = draw.uniform(-jitter * sx, jitter * sx, (b, 3, 2)).cpu().double()
    else:  # x (column) jitter scaled by W, y (row) jitter by H
        step = torch.tensor([jitter * sx, jitter * sy], dtype=torch.float64)
        shift = (draw.rand((b, 3, 2)).cpu().double() * 2.0 - 1.0) * step
    moved = pts + shift
    inv = inverse_affine(pts, moved)
    noise = draw.uniform(-1.0, 1.0, (b, 2, h, w))
    field = gaussian_blur(noise, (sigma * sy, sigma * sx), mode="reflect", truncate=3.0).double()
    return inv, field[:, 0] * (alpha * sx), field[:, 1] * (alpha * sy)


def elastic_apply(
    x: torch.Tensor, inv: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor
) -> torch.Tensor:
    """Warp by the affine maps (reflect-101 border, as cv2.warpAffine's BORDER_REFLECT_101), then
    displace: out(r, c) = warped(r + dy, c + dx) with scipy's 'reflect' border."""
    b, _, h, w = x.shape
    dev = x.device
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=dev),
        torch.arange(w, dtype=torch.float64, device=dev),
        indexing="ij",
    )
    inv = inv.to(dev)
    src_x = inv[:, 0, 0, None, None] * xx + inv[:, 0, 1, None, None] * yy + inv[:, 0, 2, None, None]
    src_y = inv[:, 1, 0, None, None] * xx + inv[:, 1, 1, None, None] * yy + inv[:, 1, 2, None, None]
    warped = bilinear(x, src_y, src_x, "mirror")
    return bilinear(warped, yy + dy.to(dev), xx + dx.to(dev), "reflect")


def elastic_transform(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """Random affine then elastic displacement (alpha * Gaussian-smoothed U(-1, 1) noise)."""
    b, _, h, w = x.shape
    inv, dx, dy = elastic_fields(b, h, w, s, draw)
    return elastic_apply(x, inv, dx, dy)
