"""Severity parameters of the CIFAR-10-C generator (Hendrycks & Dietterich, ICLR 2019) at 32x32.

``PARAMS_32[name][severity - 1]`` is the parameter tuple for that severity; the meaning of each
tuple is documented next to the corruption that uses it (and in SPEC section 6).
"""

from __future__ import annotations

import numpy as np

PARAMS_32: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    # (disk radius, alias blur sigma)
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    # (sigma, max offset, iterations)
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    # (radius, sigma); the angle is drawn per image
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    # zoom factors, built exactly as the reference does (np.arange keeps its float end points)
    "zoom_blur": [np.arange(1, stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)],
    # (mean, std, zoom, threshold, motion radius, motion sigma, blend)
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    # (image weight, frost weight)
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    # (amount, wibble decay)
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    # (alpha, sigma, affine jitter), in pixels: 32 * (0, 0, .08), (.05, .2, .07), ...
    "elastic_transform": [
        (32 * 0, 32 * 0, 32 * 0.08),
        (32 * 0.05, 32 * 0.2, 32 * 0.07),
        (32 * 0.08, 32 * 0.06, 32 * 0.06),
        (32 * 0.1, 32 * 0.04, 32 * 0.05),
        (32 * 0.1, 32 * 0.03, 32 * 0.03),
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    # (mean, std, sigma, threshold, intensity (water) or mud sigma, mode: 0 water, 1 mud)
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
    # (saturation scale, saturation shift)
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
}

# Image sizes that have a parameter table.
SIZES = (32,)


def params(name: str, severity: int):
    """The parameter tuple of one corruption at one severity (1..5)."""
    return PARAMS_32[name][severity - 1]
