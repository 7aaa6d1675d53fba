"""Test-time augmentation shared by CoTTA, RoTTA and ROID.

The augmentation CoTTA (Wang et al., CVPR 2022) introduced for its augmentation-averaged teacher
prediction, in the form the later methods reuse it (the ``get_tta_transforms`` pipeline of the
mariodoebler/test-time-adaptation benchmark). One call draws one set of parameters for the whole
batch, as a torchvision transform does on a batched tensor; only the Gaussian noise differs per
pixel. Every draw comes from the generator passed in, so a method's seed fixes the views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from tta._errors import TTAError

# The colour operations, in the numbering their random order refers to.
COLOUR_OPS = ("brightness", "contrast", "saturation", "hue", "gamma")


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation's parameters (what ``TTAAugment.apply`` needs).

    ``order``: the colour operations as indices into ``COLOUR_OPS``, applied in that order;
    ``translate``: whole pixels (x, y); ``sigma``: blur standard deviation, None for no blur;
    ``flip``: mirror left-right. The defaults are the identity.
    """

    order: tuple[int, ...] = (0, 1, 2, 3, 4)
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    gamma: float = 1.0
    angle: float = 0.0
    translate: tuple[int, int] = (0, 0)
    scale: float = 1.0
    sigma: Optional[float] = None
    flip: bool = False


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float32 draw from U(low, high), the way torchvision draws a transform's parameter."""
    return torch.empty(1, dtype=torch.float32).uniform_(low, high, generator=generator).item()


class TTAAugment:
    """The CoTTA test-time augmentation of a batch (B, C, H, W) of images in [0, 1].

    In order (``soft=True`` ranges in brackets):

    1. clip to [0, 1];
    2. colour jitter, the five operations in a random order (a uniform random permutation, drawn
       first; each factor is drawn when its operation comes up): brightness U(0.6, 1.4)
       [U(0.8, 1.2)], contrast U(0.7, 1.3) [U(0.85, 1.15)], saturation U(0.5, 1.5)
       [U(0.75, 1.25)], hue shift U(−0.06, 0.06) [U(−0.03, 0.03)], gamma U(0.7, 1.3)
       [U(0.85, 1.15)] (the image is clamped to [1e-8, 1] before the gamma, as the authors do);
    3. pad by ``image_size // 2`` on every side, repeating the edge pixels (``padding_mode``
       "edge", CoTTA's and RoTTA's) or mirroring them ("reflect", ROID's);
    4. random affine map of the padded image about its centre: rotation U(−15°, 15°) [U(−8°, 8°)],
       translation by round(U(−d, d)) pixels per axis with d = 1/16 of the padded side, scale
       U(0.9, 1.1) [U(0.95, 1.05)], no shear, bilinear, filled with 0 outside;
    5. Gaussian blur, 5×5 kernel, σ ~ U(0.001, 0.5) [U(0.001, 0.25)] (``cotta_augs`` only);
    6. crop the centre ``image_size`` × ``image_size``;
    7. horizontal flip with probability 1/2;
    8. add N(0, ``gaussian_std``²) noise to every pixel (``cotta_augs`` only);
    9. clip to [0, 1].

    The draws happen in this order, each from a float32 draw of the given generator, like the
    reference pipeline's draws from torch's global generator; the noise is drawn on the
    generator's device and moved to the images'.
    """

    def __init__(
        self,
        image_size: int,
        soft: bool = False,
        gaussian_std: float = 0.005,
        cotta_augs: bool = True,
        padding_mode: str = "edge",
    ):
        if padding_mode not in ("edge", "reflect"):
            raise TTAError(
                f"padding_mode of TTAAugment must be 'edge' or 'reflect', got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise TTAError(f"image_size of TTAAugment must be an int >= 1, got {image_size!r}")
        if not gaussian_std >= 0:
            raise TTAError(f"gaussian_std of TTAAugment must be >= 0, got {gaussian_std!r}")
        self.image_size = image_size
        self.soft = bool(soft)
        self.gaussian_std = float(gaussian_std)
        self.cotta_augs = bool(cotta_augs)
        self.ranges = {
            "brightness": (0.8, 1.2) if soft else (0.6, 1.4),
            "contrast": (0.85, 1.15) if soft else (0.7, 1.3),
            "saturation": (0.75, 1.25) if soft else (0.5, 1.5),
            "hue": (-0.03, 0.03) if soft else (-0.06, 0.06),
            "gamma": (0.85, 1.15) if soft else (0.7, 1.3),
            "degrees": (-8.0, 8.0) if soft else (-15.0, 15.0),
            "translate": 1 / 16,
            "scale": (0.95, 1.05) if soft else (0.9, 1.1),
            "sigma": (0.001, 0.25) if soft else (0.001, 0.5),
        }

    def __repr__(self) -> str:
        return (
            f"TTAAugment(image_size={self.image_size}, soft={self.soft}, "
            f"gaussian_std={self.gaussian_std}, cotta_augs={self.cotta_augs}, "
            f"padding_mode={self.padding_mode!r})"
        )

    @property
    def padding(self) -> int:
        return self.image_size // 2

    def draw(self, generator: torch.Generator) -> AugmentParams:
        """Draw the batch-wide parameters (everything but the noise) in the pipeline's order."""
        r = self.ranges
        order = tuple(int(i) for i in torch.randperm(5, generator=generator))
        factors = {}
        for i in order:  # each factor is drawn when its operation comes up
            factors[COLOUR_OPS[i]] = _uniform(generator, *r[COLOUR_OPS[i]])
        angle = _uniform(generator, *r["degrees"])
        side = self.image_size + 2 * self.padding  # the padded image, square
        max_shift = r["translate"] * side
        tx = int(round(_uniform(generator, -max_shift, max_shift)))
        ty = int(round(_uniform(generator, -max_shift, max_shift)))
        scale = _uniform(generator, *r["scale"])
        sigma = _uniform(generator, *r["sigma"]) if self.cotta_augs else None
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        return AugmentParams(
            order, angle=angle, translate=(tx, ty), scale=scale, sigma=sigma, flip=flip, **factors
        )

    def apply(
        self, x: torch.Tensor, params: AugmentParams, noise: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The augmented batch for given parameters; ``noise`` (shape of ``x``) is added before
        the last clip when given (already scaled by the standard deviation)."""
        x = x.clamp(0.0, 1.0)
        for i in params.order:
            op = COLOUR_OPS[i]
            if op == "brightness":
                x = F.adjust_brightness(x, params.brightness)
            elif op == "contrast":
                x = F.adjust_contrast(x, params.contrast)
            elif op == "saturation":
                x = F.adjust_saturation(x, params.saturation)
            elif op == "hue":
                x = F.adjust_hue(x, params.hue)
            else:
                x = F.adjust_gamma(x.clamp(1e-8, 1.0), params.gamma)
        x = F.pad(x, [self.padding], padding_mode=self.padding_mode)
        x = F.affine(
            x,
            angle=params.angle,
            translate=list(params.translate),
            scale=params.scale,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=[0.0] * x.shape[-3],
        )
        if params.sigma is not None:
            x = F.gaussian_blur(x, [5, 5], [params.sigma, params.sigma])
        x = F.center_crop(x, [self.image_size, self.image_size])
        if params.flip:
            x = F.horizontal_flip(x)
        if noise is not None:
            x = x + noise.to(device=x.device, dtype=x.dtype)
        return x.clamp(0.0, 1.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view of the batch ``x`` (B, C, H, W), same dtype and device."""
        if x.dim() != 4 or not x.is_floating_point():
            raise TTAError(
                "TTAAugment expects a floating-point batch (B, C, H, W), got shape "
                f"{tuple(x.shape)} of dtype {x.dtype}"
            )
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise TTAError(
                f"TTAAugment(image_size={self.image_size}) got images of size "
                f"{tuple(x.shape[-2:])}; they must be {self.image_size}×{self.image_size}"
            )
        params = self.draw(generator)
        noise = None
        if self.cotta_augs:
            # float32 draws scaled in float32, as the reference's noise module computes them
            noise = torch.randn(
                x.shape, generator=generator, device=generator.device, dtype=torch.float32
            )
            noise = noise * self.gaussian_std
        return self.apply(x, params, noise)
