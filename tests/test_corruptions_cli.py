"""``tta corrupt``: sources, the CIFAR-10-C layout it writes, reruns and errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

import corruptions
from corruptions import seed_for
from tta.cli import main

N = 10


def _images(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _cifar10(tmp_path, images, labels) -> str:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # rows of R, G, B planes
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": list(labels)}, f)
    return str(tmp_path)  # the parent folder is accepted too


def test_cifar_folder_to_release_layout(tmp_path, capsys):
    images, labels = _images(), np.arange(N) % 10
    src = _cifar10(tmp_path, images, labels)
    out = tmp_path / "out"
    args = ["corrupt", src, "--out", str(out), "--corruptions", "contrast", "gaussian_noise"]
    assert main([*args, "--seed", "3"]) == 0
    assert sorted(os.listdir(out)) == [
        "contrast.npy", "gaussian_noise.npy", "labels.npy", "manifest.json"
    ]  # fmt: skip
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.tile(labels, 5).astype(np.uint8))
    noise = np.load(out / "gaussian_noise.npy")
    contrast = np.load(out / "contrast.npy")
    assert noise.shape == contrast.shape == (5 * N, 32, 32, 3) and noise.dtype == np.uint8
    for s in range(1, 6):
        block = slice((s - 1) * N, s * N)
        np.testing.assert_array_equal(contrast[block], corruptions.corrupt(images, "contrast", s))
        gen = torch.Generator().manual_seed(seed_for(3, "gaussian_noise", s))
        np.testing.assert_array_equal(
            noise[block], corruptions.corrupt(images, "gaussian_noise", s, generator=gen)
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["severities"] == [1, 2, 3, 4, 5] and manifest["num_images"] == N
    assert "wrote 2 corruption file(s)" in capsys.readouterr().out


def test_rerun_skips_finished_files_and_refuses_other_settings(tmp_path, capsys):
    src = _cifar10(tmp_path, _images(), np.zeros(N, dtype=int))
    out = str(tmp_path / "out")
    assert main(["corrupt", src, "--out", out, "--corruptions", "brightness"]) == 0
    before = os.stat(os.path.join(out, "brightness.npy")).st_mtime_ns
    capsys.readouterr()
    assert main(["corrupt", src, "--out", out, "--corruptions", "brightness", "fog"]) == 0
    assert "wrote 1 corruption file(s)" in capsys.readouterr().out
    assert os.stat(os.path.join(out, "brightness.npy")).st_mtime_ns == before
    assert not [f for f in os.listdir(out) if "partial" in f]
    assert main(["corrupt", src, "--out", out, "--corruptions", "fog", "--seed", "9"]) == 1
    assert "written with other settings (seed: 0 there, 9 now)" in capsys.readouterr().err


def test_npz_with_xy_keys_nchw_and_a_severity_subset(tmp_path):
    images = _images()
    np.savez(tmp_path / "set.npz", x=images.transpose(0, 3, 1, 2), y=np.arange(N))
    out = tmp_path / "out"
    argv = ["corrupt", str(tmp_path / "set.npz"), "--out", str(out), "--corruptions", "pixelate"]
    assert main([*argv, "--severities", "5", "2"]) == 0
    result = np.load(out / "pixelate.npy")
    np.testing.assert_array_equal(result[:N], corruptions.corrupt(images, "pixelate", 2))
    np.testing.assert_array_equal(result[N:], corruptions.corrupt(images, "pixelate", 5))
    # a subset is not the release layout: no labels.npy, so release readers fail loudly
    assert not (out / "labels.npy").exists()
    np.testing.assert_array_equal(np.load(out / "subset_labels.npy"), np.tile(np.arange(N), 2))
    assert json.loads((out / "manifest.json").read_text())["severities"] == [2, 5]


def test_layout_folder_and_grey_npy_source(tmp_path):
    folder = tmp_path / "clean"
    folder.mkdir()
    grey = _images()[..., 0]
    np.save(folder / "clean.npy", grey)
    np.save(folder / "labels.npy", np.arange(N))
    out = tmp_path / "out"
    assert main(["corrupt", str(folder), "--out", str(out), "--corruptions", "saturate"]) == 0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_array_equal(
        np.load(out / "saturate.npy")[4 * N :], corruptions.corrupt(rgb, "saturate", 5)
    )
    np.save(folder / "other.npy", grey)
    assert main(["corrupt", str(folder), "--out", str(out), "--corruptions", "saturate"]) == 1


def test_output_loads_with_the_cifarc_reader(tmp_path):
    cifarc = pytest.importorskip("tta.data.cifarc")
    images = _images()
    src = _cifar10(tmp_path, images, np.arange(N) % 10)
    out = tmp_path / "out"
    assert main(["corrupt", src, "--out", str(out), "--corruptions", "contrast"]) == 0
    (domain,) = cifarc.CIFARC(out, ["contrast"], [4])
    np.testing.assert_array_equal(domain.labels, np.arange(N) % 10)
    read = domain.images() if callable(domain.images) else domain.images  # API still settling
    np.testing.assert_array_equal(read, corruptions.corrupt(images, "contrast", 4))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--corruptions", "fogg"], "unknown corruption or group 'fogg'. Did you mean 'fog'?"),
        (["--severities", "0", "6"], "severities must be in 1..5, got [0, 6]"),
    ],
)
def test_bad_arguments(tmp_path, capsys, argv, message):
    src = _cifar10(tmp_path, _images(), np.zeros(N, dtype=int))
    assert main(["corrupt", src, "--out", str(tmp_path / "o"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_missing_or_malformed_source(tmp_path, capsys):
    assert main(["corrupt", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")]) == 1
    assert "not found or not supported" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 28, 28, 3), np.uint8), labels=np.zeros(2))
    assert main(["corrupt", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")]) == 1
    assert "must be (N, 32, 32, 3)" in capsys.readouterr().err
    np.savez(tmp_path / "keys.npz", pics=np.zeros((2, 32, 32, 3), np.uint8))
    assert main(["corrupt", str(tmp_path / "keys.npz"), "--out", str(tmp_path / "o")]) == 1
    assert "no images array: expected one of 'images', 'x', found 'pics'" in capsys.readouterr().err


def test_stale_partial_files_of_a_killed_run_are_removed(tmp_path):
    from tta.commands.corrupt import write_dataset

    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".gaussian_noise.npy.partial-12345"
    stale.write_bytes(b"half a file")
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    write_dataset(images, np.arange(4), str(out), ["contrast"], [1, 2, 3, 4, 5], 0, progress=False)
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["contrast.npy", "labels.npy", "manifest.json"]
