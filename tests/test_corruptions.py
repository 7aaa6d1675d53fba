"""Public API of the corruptions package: names, errors, determinism, uint8/float agreement,
noise statistics and severity ordering."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import corruptions
from corruptions import geometric
from corruptions._ops import TRUNC_EPS, Draw
from corruptions.params import params, setting

BENCHMARK = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
]  # fmt: skip
EXTRA = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
RANDOM = [
    "gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
    "fog", "elastic_transform", "speckle_noise", "spatter",
]  # fmt: skip


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear")
    return (0.8 * coarse + 0.2 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_names_order_and_groups():
    assert corruptions.names() == BENCHMARK + EXTRA
    assert corruptions.names("benchmark") == BENCHMARK
    assert corruptions.names("extra") == EXTRA
    assert corruptions.names("noise") == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert sum(len(corruptions.names(g)) for g in corruptions.GROUPS) == 19
    with pytest.raises(ValueError, match="Did you mean 'weather'"):
        corruptions.names("wether")


def test_package_does_not_import_tta():
    root = pathlib.Path(corruptions.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "tta" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "tta", path


@pytest.mark.parametrize("name", BENCHMARK + EXTRA)
def test_uint8_path_is_the_truncated_float_path(name):
    x = _images(4)
    u = (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    xu = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 255
    exact = name in corruptions.api.FLOAT64  # computed in float64, truncated as in float64
    if exact:
        xu = torch.from_numpy(u).permute(0, 3, 1, 2).double() / 255
    out_u = corruptions.corrupt(u, name, 5, _gen())
    out_f = corruptions.corrupt(xu, name, 5, _gen())
    assert out_u.dtype == np.uint8 and out_u.shape == u.shape
    assert out_f.dtype == xu.dtype and out_f.shape == xu.shape
    assert 0 <= float(out_f.min()) and float(out_f.max()) <= 1
    eps = 0.0 if exact else TRUNC_EPS
    expected = torch.floor(out_f * 255 + eps).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out_u, expected.astype(np.uint8))


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_same_output_other_seed_differs(name):
    x = _images(4)
    a = corruptions.corrupt(x, name, 3, _gen(7))
    b = corruptions.corrupt(x, name, 3, _gen(7))
    c = corruptions.corrupt(x, name, 3, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # without a generator the default seed (0) is used: reproducible too
    assert torch.equal(corruptions.corrupt(x, name, 3), corruptions.corrupt(x, name, 3, _gen(0)))


def _change(name: str, severity: int) -> float:
    if name == "frost":  # frost also down-weights the image; measure the frost added to black
        out = corruptions.corrupt(torch.zeros(8, 3, 32, 32), name, severity, _gen())
        return float(out.mean())
    if name == "elastic_transform":
        # severity 1 has the largest affine jitter in the reference table (2.56 px vs .96 px);
        # what grows with severity is the elastic (non-affine) displacement
        s = setting("elastic_transform", severity)
        _, dx, dy = geometric.elastic_fields(8, 32, 32, s, Draw(_gen(), torch.device("cpu")))
        return float((dx.abs() + dy.abs()).mean())
    x = _images()
    return float((corruptions.corrupt(x, name, severity, _gen()) - x).abs().mean())


@pytest.mark.parametrize("name", BENCHMARK + EXTRA)
def test_severity_one_weaker_than_five(name):
    assert _change(name, 1) < _change(name, 5)


@pytest.mark.parametrize(
    "name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur",
             "fog", "brightness", "contrast", "pixelate", "speckle_noise", "gaussian_blur"]
)  # fmt: skip
def test_severity_monotone_where_the_table_is(name):
    changes = [_change(name, s) for s in range(1, 6)]
    assert changes == sorted(changes)


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_and_speckle_noise_std(severity):
    x = torch.full((64, 3, 32, 32), 0.5)
    sigma = params("gaussian_noise", severity)
    noise = corruptions.corrupt(x, "gaussian_noise", severity, _gen()) - x
    assert float(noise.std()) == pytest.approx(sigma, rel=0.02)
    assert abs(float(noise.mean())) < 0.002
    c = params("speckle_noise", severity)
    noise = corruptions.corrupt(x, "speckle_noise", severity, _gen()) - x
    assert float(noise.std()) == pytest.approx(0.5 * c, rel=0.02)


@pytest.mark.parametrize("severity", [1, 5])
def test_shot_noise_poisson_variance(severity):
    x = torch.full((64, 3, 32, 32), 0.3)
    lam = params("shot_noise", severity)
    out = corruptions.corrupt(x, "shot_noise", severity, _gen())
    assert float(out.mean()) == pytest.approx(0.3, abs=0.002)
    assert float(out.var()) == pytest.approx(0.3 / lam, rel=0.03)
    # counts are integers: out * lambda is whole
    torch.testing.assert_close(out * lam, torch.round(out * lam), atol=1e-3, rtol=0)


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_fraction(severity):
    x = torch.full((64, 3, 32, 32), 0.5)
    amount = params("impulse_noise", severity)
    out = corruptions.corrupt(x, "impulse_noise", severity, _gen())
    salt = float((out == 1).float().mean())
    pepper = float((out == 0).float().mean())
    assert salt + pepper == pytest.approx(amount, rel=0.06)
    assert salt == pytest.approx(pepper, rel=0.15)
    assert bool(((out == 0) | (out == 1) | (out == 0.5)).all())


def test_grey_digits_work_for_every_corruption():
    # MNIST-like: a white stroke on black, padded to 32x32 and replicated to 3 channels
    digit = np.zeros((2, 32, 32), dtype=np.uint8)
    for i in range(6, 26):  # a slanted stroke, 3 px wide
        digit[:, i, i // 2 + 5 : i // 2 + 8] = 255
    u = np.repeat(digit[..., None], 3, axis=-1)
    for name in corruptions.names():
        out = corruptions.corrupt(u, name, 5, _gen())
        assert out.dtype == np.uint8 and out.shape == u.shape
        assert (out != u).any(), name


def test_float64_input_keeps_dtype():
    x = _images(2).double()
    out = corruptions.corrupt(x, "contrast", 2)
    assert out.dtype == torch.float64


# ---- bad input ---------------------------------------------------------------------------------


def test_unknown_name_suggests_closest():
    with pytest.raises(
        ValueError, match="unknown corruption 'gausian_noise'.*Did you mean 'gaussian_noise'"
    ):
        corruptions.corrupt(_images(1), "gausian_noise", 1)


@pytest.mark.parametrize("severity", [0, 6, -1])
def test_severity_out_of_range(severity):
    with pytest.raises(ValueError, match=f"severity must be in 1..5, got {severity}"):
        corruptions.corrupt(_images(1), "fog", severity)


@pytest.mark.parametrize("severity", ["3", 2.0, True])
def test_severity_wrong_type(severity):
    with pytest.raises(TypeError, match="severity must be an integer"):
        corruptions.corrupt(_images(1), "fog", severity)


def test_values_outside_unit_range():
    x = _images(1) * 2
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*normalisation"):
        corruptions.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corruptions.corrupt(_images(1) - 0.5, "fog", 1)


def test_wrong_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*add a batch dim"):
        corruptions.corrupt(torch.rand(3, 32, 32), "fog", 1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) or grey \(B, 1, H, W\), got \(2, 32, 32, 3\)"):  # fmt: skip
        corruptions.corrupt(torch.rand(2, 32, 32, 3), "fog", 1)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\), or grey .*got \(2, 3, 32, 32\)"):
        corruptions.corrupt(np.zeros((2, 3, 32, 32), np.uint8), "fog", 1)
    with pytest.raises(TypeError, match="must be uint8.*float32"):
        corruptions.corrupt(np.zeros((2, 32, 32, 3), np.float32), "fog", 1)
    with pytest.raises(TypeError, match="floating point.*torch.uint8"):
        corruptions.corrupt(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "fog", 1)
    with pytest.raises(TypeError, match="got list"):
        corruptions.corrupt([[0.0]], "fog", 1)
    with pytest.raises(ValueError, match="at least 16x16 pixels, got 12x28"):
        corruptions.corrupt(torch.rand(1, 3, 12, 28), "fog", 1)
    with pytest.raises(ValueError, match="unknown parameter table 'cifar10'.*Did you mean 'cifar'"):
        corruptions.corrupt(_images(1), "fog", 1, params="cifar10")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        corruptions.corrupt(_images(1), "fog", 1, generator=np.random.default_rng(0))


def test_thread_setting_is_restored_and_does_not_change_results():
    from corruptions import api

    x = _images(4)
    before = torch.get_num_threads()
    a = corruptions.corrupt(x, "motion_blur", 4, _gen())
    assert torch.get_num_threads() == before
    old = api.CPU_THREADS
    try:
        api.CPU_THREADS = None
        b = corruptions.corrupt(x, "motion_blur", 4, _gen())
    finally:
        api.CPU_THREADS = old
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batch_larger_than_one_block_matches_blockwise_calls():
    from corruptions import api

    x = _images(api.CHUNK + 5)
    whole = corruptions.corrupt(x, "gaussian_noise", 2, _gen(5))
    g = _gen(5)
    parts = [
        corruptions.corrupt(x[: api.CHUNK], "gaussian_noise", 2, g),
        corruptions.corrupt(x[api.CHUNK :], "gaussian_noise", 2, g),
    ]
    assert torch.equal(whole, torch.cat(parts))
