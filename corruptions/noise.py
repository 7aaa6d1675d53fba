"""Noise corruptions of CIFAR-10-C (Hendrycks & Dietterich, 2019): Gaussian, shot (Poisson),
impulse (salt and pepper) and speckle noise, drawn independently for every pixel and channel."""

from __future__ import annotations

import torch

from corruptions._ops import Draw
from corruptions.params import params


def gaussian_noise(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """x + N(0, sigma^2)."""
    return x + params("gaussian_noise", severity) * draw.randn(x.shape)


def shot_noise(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """Poisson(lambda * x) / lambda: photon counting noise, variance x / lambda."""
    lam = float(params("shot_noise", severity))
    return draw.poisson(x * lam) / lam


def impulse_noise(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """With probability ``amount`` a value becomes 0 or 1 (half each), as skimage's 's&p' mode."""
    amount = params("impulse_noise", severity)
    flipped = draw.rand(x.shape) < amount
    salt = (draw.rand(x.shape) < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x)


def speckle_noise(x: torch.Tensor, severity: int, draw: Draw) -> torch.Tensor:
    """x + x * N(0, c^2): multiplicative noise."""
    return x + x * (params("speckle_noise", severity) * draw.randn(x.shape))
