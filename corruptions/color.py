"""Colour corruptions in HSV space and contrast (Hendrycks & Dietterich, 2019): brightness,
contrast and (extra) saturate.

scikit-image's rgb2hsv/hsv2rgb round trip is written here in closed form: every RGB channel is
V * (1 - S * g(H)) for a per-channel g that depends on hue only. So changing V scales the pixel
by V'/V, and changing S moves each channel to V - (V - x) * S'/S. Grey pixels (S = 0) have hue 0
(red) in scikit-image, which the closed forms reproduce.
"""

from __future__ import annotations

import torch

from corruptions._ops import Draw
from corruptions.params import params


def brightness(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """V <- clip(V + c, 0, 1) in HSV."""
    c = params("brightness", severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


def contrast(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """(x - m) * c + m with m the per-image, per-channel mean."""
    c = params("contrast", severity)
    m = x.mean(dim=(2, 3), keepdim=True)
    return (x - m) * c + m


def saturate(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """S <- clip(S * a + b, 0, 1) in HSV."""
    a, b = params("saturate", severity)
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * a + b).clamp(0, 1)
    coloured = v - (v - x) * (s_new / s.clamp_min(1e-12))
    # hue 0 for grey pixels: R = V, G = B = V * (1 - S')
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(delta > 0, coloured, grey)
