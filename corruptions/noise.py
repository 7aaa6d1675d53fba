"""Noise corruptions (Hendrycks & Dietterich, 2019): Gaussian, shot (Poisson), impulse (salt and
pepper) and speckle noise, drawn independently for every pixel and channel; no size-dependent term."""

from __future__ import annotations

import torch

from corruptions._ops import Draw
from corruptions.params import Setting


def gaussian_noise(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """x + N(0, sigma^2)."""
    return x + s.value * draw.randn(x.shape)


def shot_noise(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """Poisson(lambda * x) / lambda: photon counting noise, variance x / lambda."""
    lam = float(s.value)
    return draw.poisson(x * lam) / lam


def impulse_noise(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """With probability ``amount`` a value becomes 0 or 1 (half each), as skimage's 's&p' mode."""
    amount = s.value
    flipped = draw.rand(x.shape) < amount
    salt = (draw.rand(x.shape) < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x)


def speckle_noise(x: torch.Tensor, s: Setting, draw: Draw) -> torch.Tensor:
    """x + x * N(0, c^2): multiplicative noise."""
    return x + x * (s.value * draw.randn(x.shape))
