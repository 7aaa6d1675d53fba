"""The shared CoTTA test-time augmentation (tta.methods.augment)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F1
from torchvision.transforms import InterpolationMode

from tta._errors import TTAError
from tta.methods.augment import COLOUR_OPS, AugmentParams, TTAAugment


def images(b: int = 4, size: int = 16, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_same_generator_state_same_view_and_different_state_different_view():
    aug, x = TTAAugment(16), images()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    g = torch.Generator().manual_seed(3)
    first, second = aug(x, g), aug(x, g)  # consecutive calls: separate draws
    assert torch.equal(first, a) and not torch.allclose(first, second)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("cotta_augs", [False, True])
def test_output_range_shape_dtype(soft: bool, cotta_augs: bool):
    aug = TTAAugment(16, soft=soft, cotta_augs=cotta_augs, gaussian_std=0.05)
    for dtype in (torch.float32, torch.float64):
        x = images(dtype=dtype) * 1.4 - 0.2  # also values outside [0, 1]
        for seed in range(5):
            y = aug(x, torch.Generator().manual_seed(seed))
            assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
            assert y.min() >= 0 and y.max() <= 1


def test_identity_parameters_give_the_clipped_input():
    aug, x = TTAAugment(16), images(dtype=torch.float64)
    y = aug.apply(x, AugmentParams(sigma=1e-3))
    # hue runs through float32 HSV even at a zero shift
    torch.testing.assert_close(y, x, atol=2e-6, rtol=0)
    y = aug.apply(x * 2, AugmentParams(sigma=None))
    torch.testing.assert_close(y, (x * 2).clamp(0, 1), atol=2e-6, rtol=0)


def test_draws_follow_torchvision_parameter_draws():
    """Our draws, from a generator, equal the reference pipeline's draws from torch's global
    generator in the same state: the colour order (randperm of five), each factor when its
    operation comes up, then RandomAffine's, GaussianBlur's and RandomHorizontalFlip's own
    ``get_params`` draws and the per-pixel noise."""
    aug = TTAAugment(16)
    r = aug.ranges
    for seed in range(10):
        ours = aug.draw(torch.Generator().manual_seed(seed))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            order = tuple(int(i) for i in torch.randperm(5))
            factors = {}
            for i in order:
                factors[COLOUR_OPS[i]] = torch.tensor(1.0).uniform_(*r[COLOUR_OPS[i]]).item()
            angle, translate, scale, _ = T.RandomAffine.get_params(
                [-15.0, 15.0], [1 / 16, 1 / 16], [0.9, 1.1], None, [32, 32]
            )
            sigma = T.GaussianBlur.get_params(0.001, 0.5)
            flip = bool(torch.rand(1) < 0.5)
        expected = AugmentParams(order, **factors, angle=angle, translate=translate, scale=scale)
        assert ours == dataclasses.replace(expected, sigma=sigma, flip=flip)


def test_apply_matches_torchvision_functional_ops():
    """Each step against torchvision's (v1) functional op with the drawn parameters."""
    aug, x = TTAAugment(16), images(dtype=torch.float64)
    noise = 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    for seed in range(6):
        p = aug.draw(torch.Generator().manual_seed(seed))
        ref = x.clamp(0, 1)
        for i in p.order:
            if COLOUR_OPS[i] == "gamma":
                ref = F1.adjust_gamma(ref.clamp(1e-8, 1), p.gamma)
            else:
                ref = getattr(F1, f"adjust_{COLOUR_OPS[i]}")(ref, getattr(p, COLOUR_OPS[i]))
        ref = F1.pad(ref, 8, padding_mode="edge")
        ref = F1.affine(
            ref,
            p.angle,
            list(p.translate),
            p.scale,
            [0.0, 0.0],
            InterpolationMode.BILINEAR,
            [0.0] * 3,
        )
        ref = F1.gaussian_blur(ref, 5, [p.sigma, p.sigma])
        ref = F1.center_crop(ref, 16)
        ref = F1.hflip(ref) if p.flip else ref
        ref = (ref + noise).clamp(0, 1)
        # torchvision's two hue implementations (v1 here, v2 in tta) differ in float32 rounding
        torch.testing.assert_close(aug.apply(x, p, noise), ref, atol=5e-6, rtol=0)


def test_full_call_is_draw_then_apply_with_noise():
    aug, x = TTAAugment(16, gaussian_std=0.02), images()
    g = torch.Generator().manual_seed(7)
    p = aug.draw(g)
    noise = torch.randn(x.shape, generator=g) * 0.02
    assert torch.equal(aug(x, torch.Generator().manual_seed(7)), aug.apply(x, p, noise))
    # cotta_augs=False: no blur, no noise, fewer draws
    plain = TTAAugment(16, cotta_augs=False)
    q = plain.draw(torch.Generator().manual_seed(7))
    assert q.sigma is None
    assert torch.equal(plain(x, torch.Generator().manual_seed(7)), plain.apply(x, q))


def test_soft_ranges_are_narrower():
    hard, soft = TTAAugment(16).ranges, TTAAugment(16, soft=True).ranges
    for key in ("brightness", "contrast", "saturation", "hue", "gamma", "degrees", "scale"):
        assert soft[key][0] > hard[key][0] and soft[key][1] < hard[key][1]


def test_bad_arguments():
    with pytest.raises(TTAError, match="image_size"):
        TTAAugment(0)
    with pytest.raises(TTAError, match="gaussian_std"):
        TTAAugment(16, gaussian_std=-1.0)
    with pytest.raises(TTAError, match="16×16"):
        TTAAugment(16)(images(size=8), torch.Generator())
    with pytest.raises(TTAError, match="floating-point"):
        TTAAugment(16)((images() * 255).to(torch.uint8), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_kept():
    aug, x = TTAAugment(16), images().cuda()
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.device == x.device
    torch.testing.assert_close(y.cpu(), aug(x.cpu(), torch.Generator().manual_seed(0)))
