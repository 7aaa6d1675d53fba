"""Each deterministic corruption against an independent computation (scipy, Pillow, colorsys,
literal loops of the reference code), and the random ones' building blocks."""

from __future__ import annotations

import colorsys
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import corruptions
from corruptions import blur, geometric, spatter, weather
from corruptions._ops import Draw, motion_blur
from corruptions.params import params, setting

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


def _trunc(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, 1) * 255


@pytest.mark.parametrize("severity", range(1, 6))
def test_contrast_matches_formula(severity):
    u = uint8_images()
    x = u / 255.0
    mean = x.mean(axis=(1, 2), keepdims=True)
    c = params("contrast", severity)
    ref = np.clip((x - mean) * c + mean, 0, 1)
    out = corruptions.corrupt(to_float(u), "contrast", severity).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)
    levels = corruptions.corrupt(u, "contrast", severity).astype(int)
    assert np.abs(levels - np.uint8(ref * 255).astype(int)).max() <= 1


def _hsv_reference(u: np.ndarray, channel: int, fn) -> np.ndarray:
    out = np.empty(u.shape, dtype=np.float64)
    for idx in np.ndindex(u.shape[:3]):
        hsv = list(colorsys.rgb_to_hsv(*(u[idx] / 255.0)))
        hsv[channel] = fn(hsv[channel])
        out[idx] = colorsys.hsv_to_rgb(*hsv)
    return np.clip(out, 0, 1)


def _with_grey_pixels(u: np.ndarray) -> np.ndarray:
    u = u[:2].copy()
    u[:, :4, :4] = 0  # black
    u[:, 4:8, :4] = 77  # grey
    u[:, 8:10, :4] = 255  # white
    return u


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_matches_hsv_round_trip(severity):
    u = _with_grey_pixels(uint8_images())
    c = params("brightness", severity)
    ref = _hsv_reference(u, 2, lambda v: min(max(v + c, 0.0), 1.0))
    out = corruptions.corrupt(to_float(u), "brightness", severity).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_saturate_matches_hsv_round_trip(severity):
    u = _with_grey_pixels(uint8_images())
    a, b = params("saturate", severity)
    ref = _hsv_reference(u, 1, lambda s: min(max(s * a + b, 0.0), 1.0))
    out = corruptions.corrupt(to_float(u), "saturate", severity).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("severity", range(1, 6))
def test_pixelate_is_bit_exact_with_pillow(severity):
    u = (np.random.default_rng(severity).random((5, 32, 32, 3)) * 256).astype(np.uint8)
    side = int(32 * params("pixelate", severity))
    ref = np.stack(
        [
            np.asarray(
                Image.fromarray(a).resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
            )
            for a in u
        ]
    )
    np.testing.assert_array_equal(corruptions.corrupt(u, "pixelate", severity), ref)


@pytest.mark.parametrize("severity", [1, 5])
def test_jpeg_matches_pillow(severity):
    import io

    u = uint8_images(3)
    ref = []
    for a in u:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=params("jpeg_compression", severity))
        ref.append(np.asarray(Image.open(buf)))
    np.testing.assert_array_equal(
        corruptions.corrupt(u, "jpeg_compression", severity), np.stack(ref)
    )


@pytest.mark.parametrize("severity", [1, 2, 5])
def test_zoom_blur_matches_scipy_zoom(severity):
    u = uint8_images(2)
    ref = []
    for a in u / 255.0:
        factors = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1], 0.01)
        acc = a + sum(clipped_zoom(a, z) for z in factors)
        ref.append(np.clip(acc / (len(factors) + 1), 0, 1))
    out = corruptions.corrupt(to_float(u), "zoom_blur", severity).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, np.stack(ref), atol=2e-6)


@pytest.mark.parametrize("severity", range(1, 6))
def test_defocus_matches_disk_plus_gaussian(severity):
    radius, alias = params("defocus_blur", severity)
    full = disk(radius, alias)
    k = blur.defocus_kernel(radius, alias).double().numpy()
    r = k.shape[0] // 2
    np.testing.assert_allclose(k, full[8 - r : 9 + r, 8 - r : 9 + r], atol=1e-7)
    assert np.abs(full).sum() == pytest.approx(np.abs(k).sum(), abs=1e-6)  # nothing cropped away
    u = uint8_images(2)
    ref = np.stack(
        [
            np.stack([ndimage.correlate(a[..., ch], full, mode="mirror") for ch in range(3)], -1)
            for a in u / 255.0
        ]
    )
    out = corruptions.corrupt(to_float(u), "defocus_blur", severity).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=2e-6)


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_blur_matches_scipy(severity):
    u = uint8_images(2)
    sigma = params("gaussian_blur", severity)
    ref = ndimage.gaussian_filter(
        u / 255.0, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0
    )
    out = corruptions.corrupt(to_float(u), "gaussian_blur", severity).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_glass_gather_equals_reference_swap_loop():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    dy = rng.integers(-1, 1, (30, 30))
    dx = rng.integers(-1, 1, (30, 30))
    ref = glass_loop(img, dy, dx, 1)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = blur.glass_shuffle(x, torch.from_numpy(dy)[None], torch.from_numpy(dx)[None])
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy().astype(np.uint8), ref)


def test_motion_blur_matches_per_pixel_loop():
    rng = np.random.default_rng(5)
    img = rng.random((2, 1, 12, 12))
    angles = np.array([30.0, -100.0])
    radius, sigma = 3, 1.5
    ref = motion_blur_loop(img, angles, radius, sigma)
    out = motion_blur(torch.from_numpy(img), radius, sigma, torch.from_numpy(angles))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


def test_elastic_resampling_matches_scipy():
    u = uint8_images(2)
    x = to_float(u).double()
    draw = Draw(torch.Generator().manual_seed(0), torch.device("cpu"))
    inv, dx, dy = geometric.elastic_fields(2, 32, 32, setting("elastic_transform", 4), draw)
    # the inverse maps take the jittered control points back to the originals
    pts = geometric.control_points(32, 32)
    out = geometric.elastic_apply(x, inv, dx, dy).numpy()
    yy, xx = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    for b in range(2):
        a = inv[b].numpy()
        # scipy works in (row, col) order: row_src = a[1] . (col, row, 1), col_src = a[0] . (...)
        matrix = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])
        offset = np.array([a[1, 2], a[0, 2]])
        for ch in range(3):
            warped = ndimage.affine_transform(
                x[b, ch].numpy(), matrix, offset, order=1, mode="mirror"
            )
            coords = [yy + dy[b].numpy(), xx + dx[b].numpy()]
            ref = ndimage.map_coordinates(warped, coords, order=1, mode="reflect")
            np.testing.assert_allclose(out[b, ch], ref, atol=1e-10)
    assert pts.shape == (3, 2)
    assert float(dx.abs().max()) > 0


def test_elastic_inverse_affine_maps_points_back():
    src = geometric.control_points(32, 32)
    dst = src + torch.tensor([[[1.5, -2.0], [0.25, 0.5], [-1.0, 2.0]]], dtype=torch.float64)
    inv = geometric.inverse_affine(src, dst)[0]
    back = dst[0] @ inv[:, :2].T + inv[:, 2]
    torch.testing.assert_close(back, src, atol=1e-10, rtol=0)


def test_plasma_fractal_matches_reference_loop():
    rec = Recorder()
    ours = weather.plasma_fractal(1, 32, 2.5, rec)[0].numpy()
    ref = plasma_loop(32, 2.5, iter(rec.record))  # the same uniforms, in the reference's order
    np.testing.assert_allclose(ours, ref, atol=1e-6)  # uniforms are float32


def test_frost_adds_a_crop_of_a_shrunk_texture():
    tex, sizes = __import__("corruptions.frost_textures", fromlist=["x"]).textures()
    # cv2.resize(fx=0.2) output sizes of the five reference textures (height, width)
    assert sizes.tolist() == [[120, 180], [63, 112], [63, 112], [70, 105], [99, 132]]
    black = torch.zeros(3, 3, 32, 32)
    out = corruptions.corrupt(black, "frost", 5, torch.Generator().manual_seed(2))
    crop = out / 0.45 * 255
    for b in range(3):
        target = torch.round(crop[b]).permute(1, 2, 0).numpy()
        found = False
        for t in range(5):
            h, w = sizes[t].tolist()
            arr = tex[t, :h, :w].numpy().astype(np.float64)
            windows = np.lib.stride_tricks.sliding_window_view(arr, (32, 32, 3))[:, :, 0]
            # the reference's randint(0, H - 32) never reaches the last start row/col
            hits = np.argwhere(np.abs(windows - target).max(axis=(2, 3, 4)) < 0.51)
            if len(hits):
                assert hits[0][0] < h - 32 and hits[0][1] < w - 32
                found = True
        assert found


def test_frost_without_distribution_names_install_command(monkeypatch):
    import importlib.metadata

    from corruptions import frost_textures

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    frost_textures.clear_cache()
    try:
        with pytest.raises(RuntimeError, match="pip install --no-deps imagecorruptions"):
            corruptions.corrupt(torch.zeros(1, 3, 32, 32), "frost", 1)
    finally:
        frost_textures.clear_cache()


# ---- spatter building blocks ---------------------------------------------------------------


def test_canny_marks_one_column_on_a_step():
    img = torch.zeros(1, 1, 32, 32)
    img[..., 16:] = 200.0
    edges = spatter.canny(img)
    expected = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    expected[..., 15] = True  # Sobel response 800 at columns 15 and 16; NMS keeps the left one
    assert torch.equal(edges, expected)
    weak = torch.zeros(1, 1, 32, 32)
    weak[..., 16:] = 30.0  # response 120: above low (50) but never strong (150), so no edge
    assert not spatter.canny(weak).any()


def test_chamfer_distance_matches_closed_form():
    edges = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    edges[0, 0, 10, 12] = True
    d = spatter.chamfer_distance(edges).numpy()[0, 0]
    a, b, c = 65536 / 65536, 91750 / 65536, 143976 / 65536
    for y in range(32):
        for x in range(32):
            big, small = sorted((abs(y - 10), abs(x - 12)), reverse=True)
            if big >= 2 * small:
                ref = small * c + (big - 2 * small) * a
            else:
                ref = (big - small) * c + (2 * small - big) * b
            assert d[y, x] == pytest.approx(min(ref, 20.0), abs=1e-5)


def test_equalize_hist_matches_opencv_formula():
    rng = np.random.default_rng(0)
    img = rng.integers(3, 21, (2, 1, 32, 32)).astype(np.float32)
    img[1] = 7.0  # a constant image keeps its value
    out = spatter.equalize_hist(torch.from_numpy(img)).numpy()
    hist = np.bincount(img[0].astype(int).ravel(), minlength=256)
    first = int(np.nonzero(hist)[0][0])
    scale = np.float32(255.0) / np.float32(1024 - hist[first])
    lut = np.zeros(256)
    total = 0
    for i in range(first + 1, 256):
        total += hist[i]
        lut[i] = min(255, np.round(np.float32(total) * scale))
    np.testing.assert_array_equal(out[0], lut[img[0].astype(int)])
    assert (out[1] == 7.0).all()


def test_spatter_mud_only_changes_masked_pixels_towards_brown():
    u = uint8_images(4)
    x = to_float(u)
    out = corruptions.corrupt(x, "spatter", 5, torch.Generator().manual_seed(1))
    changed = (out - x).abs().amax(dim=1) > 1e-6
    assert changed.any()
    mud = torch.tensor(spatter.MUD).view(1, 3, 1, 1)
    # out = x (1 - m) + mud m with one m per pixel, m >= 0.8 where changed
    d = x - mud
    m = ((x - out) * d).sum(1) / (d * d).sum(1)  # least-squares m per pixel
    assert (m[changed] >= 0.8 - 1e-4).all() and (m[changed] <= 1 + 1e-4).all()
    torch.testing.assert_close(out, x - m[:, None] * d, atol=1e-5, rtol=0)


def test_spatter_water_adds_turquoise_only_where_liquid():
    u = uint8_images(4)
    x = to_float(u)
    out = corruptions.corrupt(x, "spatter", 3, torch.Generator().manual_seed(1))
    added = out - x
    assert (added >= -1e-6).all()
    assert added.amax() > 0.05


@pytest.mark.parametrize(
    "mode, np_mode", [("nearest", "edge"), ("mirror", "reflect"), ("reflect", "symmetric")]
)
@pytest.mark.parametrize("pad", [2, 40])  # the fast path and the any-width index path
def test_pad2d_matches_numpy_pad(mode, np_mode, pad):
    from corruptions._ops import pad2d

    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad + 1), (pad - 1, pad)), mode=np_mode)
    out = pad2d(x, pad, pad + 1, pad - 1, pad, mode).numpy()
    np.testing.assert_array_equal(out, ref)
