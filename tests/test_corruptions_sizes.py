"""Corruptions at sizes other than 32x32: the table choice, the ImageNet-C (224) and
Tiny-ImageNet-C (64) parameters against independent computations (Pillow, scipy, literal loops of
the reference code), the size-dependent terms on other and non-square sizes, and grey input."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import corruptions
from corruptions import blur, frost_textures, geometric, weather
from corruptions._ops import Draw, apply_rows_cols, gaussian_blur, motion_blur, zoom_matrix
from corruptions.params import TABLES, params, setting, table_for

sys.path.insert(0, str(Path(__file__).parent))
from _corruption_refs import (  # noqa: E402
    Recorder,
    clipped_zoom,
    disk,
    glass_loop,
    motion_blur_loop,
    plasma_loop,
    to_float,
    uint8_images,
)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- which table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, choice, expected",
    [
        (32, 32, "auto", "cifar"),
        (64, 64, "auto", "tiny"),
        (224, 224, "auto", "imagenet"),
        (100, 100, "auto", "imagenet"),
        (32, 64, "auto", "imagenet"),
        (28, 28, "cifar", "cifar"),
        (224, 224, "tiny", "tiny"),
    ],
)
def test_auto_picks_the_table_made_for_the_size(h, w, choice, expected):
    assert table_for(h, w, choice).name == expected
    assert corruptions.table_name(h, w, choice) == expected


def test_tables_hold_every_corruption_at_five_severities():
    for table in TABLES.values():
        assert sorted(table.values) == sorted(corruptions.names())
        assert all(len(v) == 5 for v in table.values.values())
    # a few entries as printed in make_imagenet_c.py / make_tinyimagenet_c.py
    assert params("gaussian_noise", 5, "imagenet") == 0.38
    assert params("glass_blur", 5, "imagenet") == (1.5, 4, 2)
    assert params("jpeg_compression", 5, "tiny") == 25
    assert params("saturate", 5, "tiny") == (30, 0.2)
    assert params("elastic_transform", 1, "imagenet") == (244 * 2, 244 * 0.7, 244 * 0.1)


def test_forcing_a_table_changes_the_result():
    u = uint8_images(2, 64)
    tiny = corruptions.corrupt(u, "gaussian_blur", 5)  # auto: tiny, sigma 1.5
    ref = ndimage.gaussian_filter(u / 255.0, (0, 1.5, 1.5, 0), mode="nearest", truncate=4.0)
    assert np.abs(tiny.astype(int) - np.floor(ref * 255 + 1e-4)).max() <= 1
    imagenet = corruptions.corrupt(u, "gaussian_blur", 5, params="imagenet")  # sigma 6
    ref = ndimage.gaussian_filter(u / 255.0, (0, 6, 6, 0), mode="nearest", truncate=4.0)
    assert np.abs(imagenet.astype(int) - np.floor(ref * 255 + 1e-4)).max() <= 1


# ---- deterministic corruptions at 224 and 64 ------------------------------------------------


@pytest.mark.parametrize(
    "h, w, table", [(224, 224, "imagenet"), (64, 64, "tiny"), (50, 81, "imagenet")]
)
@pytest.mark.parametrize("severity", [1, 5])
def test_pixelate_is_bit_exact_with_pillow(h, w, table, severity):
    u = (np.random.default_rng(severity).random((2, h, w, 3)) * 256).astype(np.uint8)
    c = params("pixelate", severity, table)
    small = (int(w * c), int(h * c))
    ref = np.stack(
        [
            np.asarray(Image.fromarray(a).resize(small, Image.BOX).resize((w, h), Image.BOX))
            for a in u
        ]
    )
    np.testing.assert_array_equal(corruptions.corrupt(u, "pixelate", severity, params=table), ref)


@pytest.mark.parametrize("size, table", [(224, "imagenet"), (64, "tiny")])
def test_jpeg_matches_pillow(size, table):
    u = uint8_images(2, size)
    quality = params("jpeg_compression", 5, table)
    ref = []
    for a in u:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=quality)
        ref.append(np.asarray(Image.open(buf)))
    np.testing.assert_array_equal(corruptions.corrupt(u, "jpeg_compression", 5), np.stack(ref))


@pytest.mark.parametrize("h, w, severity", [(224, 224, 5), (64, 64, 3), (48, 80, 2)])
def test_zoom_blur_matches_scipy_zoom(h, w, severity):
    u = uint8_images(1, h, w)
    table = table_for(h, w).name
    factors = params("zoom_blur", severity, table)
    a = u[0] / 255.0
    acc = a + sum(clipped_zoom(a, z) for z in factors)
    ref = np.clip(acc / (len(factors) + 1), 0, 1)
    out = _hwc(corruptions.corrupt(to_float(u), "zoom_blur", severity))[0]
    np.testing.assert_allclose(out, ref, atol=5e-6)


@pytest.mark.parametrize(
    "severity, table, size", [(5, "imagenet", 224), (3, "imagenet", 224), (4, "tiny", 64)]
)
def test_defocus_matches_disk_plus_gaussian(severity, table, size):
    radius, alias = params("defocus_blur", severity, table)
    full = disk(radius, alias)
    k = blur.defocus_kernel(float(radius), float(alias)).double().numpy()
    half, r = full.shape[0] // 2, k.shape[0] // 2
    np.testing.assert_allclose(k, full[half - r : half + r + 1, half - r : half + r + 1], atol=1e-7)
    assert np.abs(full).sum() == pytest.approx(np.abs(k).sum(), abs=1e-6)  # nothing cropped away
    u = uint8_images(1, size)
    a = u[0] / 255.0
    ref = np.stack([ndimage.correlate(a[..., ch], full, mode="mirror") for ch in range(3)], -1)
    out = _hwc(corruptions.corrupt(to_float(u), "defocus_blur", severity, params=table))[0]
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=5e-6)


def test_gaussian_blur_matches_scipy_at_224():
    u = uint8_images(1, 224)
    ref = ndimage.gaussian_filter(u / 255.0, sigma=(0, 6, 6, 0), mode="nearest", truncate=4.0)
    out = _hwc(corruptions.corrupt(to_float(u), "gaussian_blur", 5))
    np.testing.assert_allclose(out, ref, atol=5e-6)


@pytest.mark.parametrize("severity", [1, 5])
def test_contrast_at_224(severity):
    u = uint8_images(1, 224)
    x = u / 255.0
    mean = x.mean(axis=(1, 2), keepdims=True)
    c = params("contrast", severity, "imagenet")
    ref = np.clip((x - mean) * c + mean, 0, 1)
    np.testing.assert_allclose(
        _hwc(corruptions.corrupt(to_float(u), "contrast", severity)), ref, atol=2e-6
    )


def _hsv_round_trip(u: np.ndarray, change) -> np.ndarray:
    """scikit-image's rgb2hsv / hsv2rgb conventions written out in numpy float64 (hue from the
    maximum channel, blue winning ties over green over red, grey pixels hue 0), uint8 truncated."""
    x = u / 255.0
    v = x.max(-1)
    delta = v - x.min(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(delta == 0, 0.0, delta / v)
        h = np.zeros_like(v)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        for channel, value in (
            (0, (g - b) / delta),
            (1, 2.0 + (b - r) / delta),
            (2, 4.0 + (r - g) / delta),
        ):
            h = np.where(x[..., channel] == v, value, h)
    h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    h, s, v = change(h, s, v)
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    options = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.choose(sector.astype(int)[..., None] % 6, [np.stack(o, -1) for o in options])
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_and_saturate_equal_the_float64_hsv_round_trip(size, severity):
    u = uint8_images(2, size)
    u[:, :3, :3] = 90  # grey pixels
    table = table_for(size, size).name
    c = params("brightness", severity, table)
    ref = _hsv_round_trip(u, lambda h, s, v: (h, s, np.clip(v + c, 0, 1)))
    np.testing.assert_array_equal(corruptions.corrupt(u, "brightness", severity), ref)
    a, b = params("saturate", severity, table)
    ref = _hsv_round_trip(u, lambda h, s, v: (h, np.clip(s * a + b, 0, 1), v))
    np.testing.assert_array_equal(corruptions.corrupt(u, "saturate", severity), ref)


# ---- glass blur: the reference walk with offsets up to 4 ------------------------------------


@pytest.mark.parametrize("h, w, delta", [(64, 64, 2), (224, 224, 4), (40, 57, 3)])
def test_glass_walk_matches_the_reference_loop(h, w, delta):
    rng = np.random.default_rng(delta)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    dy = rng.integers(-delta, delta, (h - 2 * delta, w - 2 * delta))
    dx = rng.integers(-delta, delta, (h - 2 * delta, w - 2 * delta))
    ref = glass_loop(img, dy, dx, delta)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = blur.glass_shuffle(x, torch.from_numpy(dy)[None], torch.from_numpy(dx)[None], delta)
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy().astype(np.uint8), ref)


# ---- motion blur with ImageNet-C lengths ----------------------------------------------------


def test_motion_blur_with_imagenet_lengths_matches_per_pixel_loop():
    rng = np.random.default_rng(6)
    img = rng.random((2, 1, 40, 44))
    angles = np.array([12.0, -41.0])
    radius, sigma = params("motion_blur", 5, "imagenet")  # (20, 15): 41 taps
    ref = motion_blur_loop(img, angles, radius, sigma)
    out = motion_blur(torch.from_numpy(img), radius, sigma, torch.from_numpy(angles))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


def test_snow_layer_zoom_matches_scipy_at_224():
    rng = np.random.default_rng(7)
    layer = rng.normal(0.55, 0.3, (224, 224))
    z = params("snow", 4, "imagenet")[2]  # 4.5
    m = torch.from_numpy(zoom_matrix(224, z))
    ours = apply_rows_cols(torch.from_numpy(layer)[None, None], m, m)[0, 0].numpy()
    np.testing.assert_allclose(ours, clipped_zoom(layer, z), atol=1e-10)


# ---- elastic transform: wide Gaussians and the scaling rule ---------------------------------


@pytest.mark.parametrize(
    "h, w, sigma", [(224, 224, 244 * 0.7), (224, 224, 244 * 0.08), (48, 80, 6.0)]
)
def test_elastic_smoothing_matches_scipy_reflect(h, w, sigma):
    noise = np.random.default_rng(1).uniform(-1, 1, (1, 1, h, w))
    sy, sx = sigma * h / 224, sigma * w / 224
    ours = gaussian_blur(torch.from_numpy(noise), (sy, sx), mode="reflect", truncate=3.0)
    ref = ndimage.gaussian_filter(noise[0, 0], (sy, sx), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(ours[0, 0].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("h, w", [(224, 224), (112, 112), (96, 160)])
def test_elastic_fields_scale_with_the_side(h, w):
    s = setting("elastic_transform", 4, "imagenet")
    alpha, sigma, jitter = s.value
    rec = Recorder()
    inv, dx, dy = geometric.elastic_fields(2, h, w, s, rec)
    shift_u, noise_u = rec.record
    sy, sx = h / 224, w / 224
    # affine: every control point moved by U(-1, 1) * jitter * (W / 224, H / 224)
    pts = geometric.control_points(h, w).numpy()
    moved = pts + (2 * shift_u - 1) * np.array([jitter * sx, jitter * sy])
    back = np.einsum("bij,bkj->bki", inv[:, :, :2].numpy(), moved) + inv[:, None, :, 2].numpy()
    np.testing.assert_allclose(back, np.broadcast_to(pts, back.shape), atol=1e-4)
    # displacement: alpha * gaussian(U(-1, 1), sigma) with both scaled along their own axis
    noise = 2 * noise_u - 1
    ref_dx = ndimage.gaussian_filter(
        noise[0, 0], (sigma * sy, sigma * sx), mode="reflect", truncate=3
    )
    ref_dy = ndimage.gaussian_filter(
        noise[0, 1], (sigma * sy, sigma * sx), mode="reflect", truncate=3
    )
    np.testing.assert_allclose(dx[0].numpy(), ref_dx * alpha * sx, atol=1e-5)
    np.testing.assert_allclose(dy[0].numpy(), ref_dy * alpha * sy, atol=1e-5)


def test_elastic_resampling_matches_scipy_at_224():
    u = uint8_images(1, 224)
    x = to_float(u).double()
    draw = Draw(_gen(0), torch.device("cpu"))
    inv, dx, dy = geometric.elastic_fields(
        1, 224, 224, setting("elastic_transform", 2, "imagenet"), draw
    )
    out = geometric.elastic_apply(x, inv, dx, dy).numpy()
    yy, xx = np.meshgrid(np.arange(224.0), np.arange(224.0), indexing="ij")
    a = inv[0].numpy()
    matrix = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])
    offset = np.array([a[1, 2], a[0, 2]])
    for ch in range(3):
        warped = ndimage.affine_transform(x[0, ch].numpy(), matrix, offset, order=1, mode="mirror")
        coords = [yy + dy[0].numpy(), xx + dx[0].numpy()]
        ref = ndimage.map_coordinates(warped, coords, order=1, mode="reflect")
        np.testing.assert_allclose(out[0, ch], ref, atol=1e-10)


# ---- fog: the fractal on 256 cropped to 224 -------------------------------------------------


@pytest.mark.parametrize("h, w, side", [(224, 224, 256), (64, 64, 64), (100, 40, 128)])
def test_fog_uses_the_fractal_of_the_next_power_of_two(h, w, side):
    assert weather.fractal_side(h, w) == side
    u = uint8_images(1, h, w)
    x = to_float(u)
    rec = Recorder()
    out = weather.fog(x, setting("fog", 4, table_for(h, w).name), rec)
    amount = params("fog", 4, table_for(h, w).name)[0]
    fractal = plasma_loop(side, params("fog", 4, table_for(h, w).name)[1], iter(rec.record))
    m = float(x.max())
    ref = (x.double().numpy()[0] + amount * fractal[None, :h, :w]) * m / (m + amount)
    np.testing.assert_allclose(out[0].double().numpy(), ref, atol=2e-5)


# ---- frost: texture scales and crops --------------------------------------------------------


class _FrostRecorder(Recorder):
    def randint(self, low, high, shape):
        out = super().randint(low, high, shape)
        self.picks = out.numpy().copy()
        return out


@pytest.mark.parametrize("size, scale", [(224, 1.0), (64, 0.3), (32, 0.2)])
def test_frost_adds_a_crop_of_the_tables_texture(size, scale):
    table = table_for(size, size).name
    w_img, w_frost = params("frost", 5, table)
    x = to_float(uint8_images(3, size))
    rec = _FrostRecorder()
    out = weather.frost(x, setting("frost", 5, table), rec).double().numpy()
    textures = frost_textures.scaled(scale)
    u_top, u_left = rec.record
    for b in range(3):
        tex = textures[rec.picks[b]]
        # numpy's randint(0, side - size): a start in [0, side - size), never the last one
        top = int(np.floor(u_top[b] * (tex.shape[0] - size)))
        left = int(np.floor(u_left[b] * (tex.shape[1] - size)))
        crop = tex[top : top + size, left : left + size].transpose(2, 0, 1) / 255.0
        ref = w_img * x[b].double().numpy() + w_frost * crop
        np.testing.assert_allclose(out[b], ref, atol=1e-6)
    assert len(set(rec.picks.tolist()) | {0}) >= 2  # not always the first texture


def test_tiny_textures_are_a_bilinear_shrink_by_0_3():
    full = frost_textures.originals()[3].astype(np.float64)
    ours = frost_textures.scaled(0.3)[3].astype(np.float64)
    oh, ow = ours.shape[:2]
    assert (oh, ow) == (round(full.shape[0] * 0.3), round(full.shape[1] * 0.3))
    rows = np.clip((np.arange(oh) + 0.5) / 0.3 - 0.5, 0, None)
    cols = np.clip((np.arange(ow) + 0.5) / 0.3 - 0.5, 0, None)
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    ref = np.stack(
        [
            ndimage.map_coordinates(full[..., c], [yy, xx], order=1, mode="nearest")
            for c in range(3)
        ],
        -1,
    )
    assert np.abs(ours - ref).max() <= 1.0  # OpenCV's 11-bit weights round to a neighbouring level


def _cubic_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bicubic convolution (a = -0.75, half-pixel centres, replicated border), pixel by pixel."""

    def weight(d: float) -> float:
        a, d = -0.75, abs(d)
        if d <= 1:
            return ((a + 2) * d - (a + 3)) * d * d + 1
        if d < 2:
            return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return 0.0

    h, w = img.shape[:2]
    out = np.zeros((out_h, out_w, img.shape[2]))
    for oy in range(out_h):
        py = (oy + 0.5) * h / out_h - 0.5
        for ox in range(out_w):
            px = (ox + 0.5) * w / out_w - 0.5
            acc = np.zeros(img.shape[2])
            for iy in range(int(np.floor(py)) - 1, int(np.floor(py)) + 3):
                for ix in range(int(np.floor(px)) - 1, int(np.floor(px)) + 3):
                    src = img[min(max(iy, 0), h - 1), min(max(ix, 0), w - 1)]
                    acc += weight(py - iy) * weight(px - ix) * src
            out[oy, ox] = acc
    return np.clip(np.rint(out), 0, 255)


def test_small_textures_are_enlarged_for_large_images():
    texture = frost_textures.scaled(0.2)[1][:12, :15]  # 12 x 15 stand-in for a small texture
    fitted = frost_textures.fit(texture, 20, 14)
    factor = 1.1 * max(20 / 12, 14 / 15)
    assert fitted.shape[:2] == (int(np.ceil(12 * factor)), int(np.ceil(15 * factor)))
    ref = _cubic_loop(texture.astype(np.float64), *fitted.shape[:2])
    assert np.abs(fitted.astype(np.float64) - ref).max() <= 1.0
    assert frost_textures.fit(texture, 10, 14) is texture  # large enough: used as it is
    # an imagenet-table frost on an image larger than the smallest textures still works
    out = corruptions.corrupt(np.zeros((2, 330, 340, 3), np.uint8), "frost", 1)
    assert out.shape == (2, 330, 340, 3) and out.any()


# ---- any size, grey input -------------------------------------------------------------------


@pytest.mark.parametrize("table", ["cifar", "tiny", "imagenet"])
def test_every_corruption_runs_on_a_non_square_size(table):
    u = uint8_images(2, 20, 36)
    for name in corruptions.names():
        a = corruptions.corrupt(u, name, 5, _gen(1), params=table)
        b = corruptions.corrupt(u, name, 5, _gen(1), params=table)
        assert a.shape == u.shape and a.dtype == np.uint8, name
        np.testing.assert_array_equal(a, b)


def test_grey_input_is_corrupted_as_its_rgb_repetition():
    grey = uint8_images(3, 64)[..., 0]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for name in ("gaussian_noise", "frost", "spatter", "saturate"):
        expected = corruptions.corrupt(rgb, name, 4, _gen())
        np.testing.assert_array_equal(corruptions.corrupt(grey, name, 4, _gen()), expected)
        np.testing.assert_array_equal(
            corruptions.corrupt(grey[..., None], name, 4, _gen()), expected
        )
        floats = torch.from_numpy(grey).float()[:, None] / 255
        out = corruptions.corrupt(floats, name, 4, _gen())
        assert out.shape == (3, 3, 64, 64)
        torch.testing.assert_close(
            out, corruptions.corrupt(floats.expand(-1, 3, -1, -1), name, 4, _gen())
        )


@pytest.mark.parametrize("severity", [1, 3])
def test_imagenet_noise_levels(severity):
    x = torch.full((4, 3, 224, 224), 0.5)
    sigma = params("gaussian_noise", severity, "imagenet")
    noise = corruptions.corrupt(x, "gaussian_noise", severity, _gen()) - x
    clipped = float(((noise <= -0.5) | (noise >= 0.5)).float().mean())
    assert clipped < 0.01
    assert float(noise.std()) == pytest.approx(sigma, rel=0.03)


def test_blocks_follow_the_image_size():
    assert corruptions.chunk_size(32, 32) == corruptions.api.CHUNK
    assert corruptions.chunk_size(224, 224) == corruptions.api.CHUNK * 1024 // (224 * 224)
    n = corruptions.chunk_size(64, 64) + 3
    x = torch.rand(n, 3, 64, 64)
    whole = corruptions.corrupt(x, "gaussian_noise", 2, _gen(5))
    g = _gen(5)
    k = corruptions.chunk_size(64, 64)
    parts = [
        corruptions.corrupt(x[:k], "gaussian_noise", 2, g),
        corruptions.corrupt(x[k:], "gaussian_noise", 2, g),
    ]
    assert torch.equal(whole, torch.cat(parts))
