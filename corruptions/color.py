"""Colour corruptions in HSV space and contrast (Hendrycks & Dietterich, 2019): brightness,
contrast and (extra) saturate; no size-dependent term.

Brightness and saturate go through HSV as scikit-image's rgb2hsv / hsv2rgb define it (hue from
whichever channel is the maximum, blue winning ties over green over red; hue and saturation 0 for
grey pixels; the six-sector reconstruction), in float64 like the reference, so that uint8 images
come out equal to the reference's truncated values, not just within a level.
"""

from __future__ import annotations

import torch

from corruptions._ops import Draw
from corruptions.params import Setting


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1), saturation and value of (B, 3, H, W), each (B, H, W)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.amax(dim=1)
    delta = v - x.amin(dim=1)
    grey = delta == 0
    sat = torch.where(grey, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    safe = torch.where(grey, torch.ones_like(delta), delta)
    hue = torch.zeros_like(v)
    hue = torch.where(r == v, (g - b) / safe, hue)
    hue = torch.where(g == v, 2.0 + (b - r) / safe, hue)
    hue = torch.where(b == v, 4.0 + (r - g) / safe, hue)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.where(grey, torch.zeros_like(hue), hue), sat, v


def hsv_to_rgb(hue: torch.Tensor, sat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) from hue, saturation and value (B, H, W): the six-sector formula, each
    channel picking v, p, q or t by sector (R: v q p p t v, G: t v v q p p, B: p p t v v q)."""
    sector = torch.floor(hue * 6)
    f = hue * 6 - sector
    p = v * (1 - sat)
    q = v * (1 - f * sat)
    t = v * (1 - (1 - f) * sat)
    k = torch.remainder(sector, 6)
    red = torch.where((k == 0) | (k == 5), v, torch.where(k == 1, q, torch.where(k == 4, t, p)))
    green = torch.where((k == 1) | (k == 2), v, torch.where(k == 0, t, torch.where(k == 3, q, p)))
    blue = torch.where((k == 3) | (k == 4), v, torch.where(k == 2, t, torch.where(k == 5, q, p)))
    return torch.stack([red, green, blue], dim=1)


def brightness(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """V <- clip(V + c, 0, 1) in HSV (float64)."""
    hue, sat, v = rgb_to_hsv(x.double())
    return hsv_to_rgb(hue, sat, (v + s.value).clamp(0, 1))


def contrast(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """(x - m) * c + m with m the per-image, per-channel mean."""
    c = s.value
    m = x.mean(dim=(2, 3), keepdim=True)
    return (x - m) * c + m


def saturate(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """S <- clip(S * a + b, 0, 1) in HSV (float64)."""
    a, b = s.value
    hue, sat, v = rgb_to_hsv(x.double())
    return hsv_to_rgb(hue, (sat * a + b).clamp(0, 1), v)
