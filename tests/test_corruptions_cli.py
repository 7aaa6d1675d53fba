"""``tta corrupt``: sources, the CIFAR-10-C layout it writes, reruns and errors."""

from __future__ import annotations

import io
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


def _files(folder) -> list[str]:
    """Names in ``folder`` other than hidden ones (the lock file tta holds while writing)."""
    return sorted(f for f in os.listdir(folder) if not f.startswith("."))


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
    assert _files(out) == ["contrast.npy", "gaussian_noise.npy", "labels.npy", "manifest.json"]
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
    assert not [f for f in os.listdir(out) if "partial" in f or f.endswith(".tmp")]
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
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2))
    assert main(["corrupt", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")]) == 1
    assert "are 8x8; the corruptions need at least 16x16 pixels" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 5, 32, 32), np.uint8), labels=np.zeros(2))
    assert main(["corrupt", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")]) == 1
    assert "must be (N, H, W, 3), (N, 3, H, W), or grey" in capsys.readouterr().err
    np.savez(tmp_path / "keys.npz", pics=np.zeros((2, 32, 32, 3), np.uint8))
    assert main(["corrupt", str(tmp_path / "keys.npz"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "lacks array(s) images; it holds 'pics'" in err
    assert (
        "'images'/'labels' or 'x'/'y' or 'x_train'/'y_train'" in err and "'x_test'/'y_test'" in err
    )


def test_stale_partial_files_of_a_killed_run_are_removed(tmp_path):
    from tta.data.make_cifarc import write_cifarc

    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".gaussian_noise.npy.partial-12345"  # the name tta used before atomic_write
    stale.write_bytes(b"half a file")
    stale_tmp = out / ".fog.npy.k3j_x9q2.tmp"  # atomic_write's
    stale_tmp.write_bytes(b"half a file")
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    write_cifarc(images, np.arange(4), str(out), ["contrast"], [1, 2, 3, 4, 5], 0, progress=False)
    assert not stale.exists() and not stale_tmp.exists()
    assert _files(out) == ["contrast.npy", "labels.npy", "manifest.json"]


def test_a_failed_corruption_leaves_no_file_and_a_rerun_completes(tmp_path, monkeypatch):
    from tta.data.make_cifarc import write_cifarc

    out = tmp_path / "out"
    images, labels = _images(), np.arange(N)
    real = corruptions.corrupt

    def fail_at_severity_3(images, name, severity, *args, **kwargs):
        if name == "fog" and severity == 3:
            raise RuntimeError("killed")
        return real(images, name, severity, *args, **kwargs)

    monkeypatch.setattr(corruptions, "corrupt", fail_at_severity_3)
    args = (images, labels, str(out), ["contrast", "fog"], [1, 2, 3, 4, 5], 0)
    with pytest.raises(RuntimeError, match="killed"):
        write_cifarc(*args, progress=False)
    assert sorted(os.listdir(out)) == ["contrast.npy", "labels.npy", "manifest.json"]  # no temp
    monkeypatch.setattr(corruptions, "corrupt", real)
    assert write_cifarc(*args, progress=False) == ["fog"]  # contrast was complete
    fog = np.load(out / "fog.npy")
    gen = torch.Generator().manual_seed(seed_for(0, "fog", 3))
    np.testing.assert_array_equal(fog[2 * N : 3 * N], real(images, "fog", 3, generator=gen))


# ---- image folders -> ImageNet-C layout ----------------------------------------------------


def _image_folder(tmp_path, sizes=((40, 52), (61, 47), (48, 48))) -> tuple[str, list[str]]:
    """Two class folders of small images of mixed sizes and formats (one grey PNG)."""
    from PIL import Image

    root = tmp_path / "val"
    rng = np.random.default_rng(1)
    files = []
    for k, (h, w) in enumerate(sizes):
        cls = root / ("n0002" if k % 2 else "n0001")
        cls.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if k == 2:
            Image.fromarray(pixels[..., 0]).save(cls / f"img{k}.png")  # grey
            files.append(str(cls / f"img{k}.png"))
        else:
            Image.fromarray(pixels).save(cls / f"img{k}.JPEG", quality=95)
            files.append(str(cls / f"img{k}.JPEG"))
    (root / "n0003").mkdir()  # a class without images keeps its label index
    return str(root), files


def test_view_is_torchvision_resize_and_centre_crop(tmp_path):
    from PIL import Image
    from torchvision import transforms

    from tta.data.make_imagenetc import load_view

    _, files = _image_folder(tmp_path, sizes=((300, 420), (433, 260)))
    view = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    for path in files:
        with Image.open(path) as im:
            expected = np.asarray(view(im.convert("RGB")))
        np.testing.assert_array_equal(load_view(path, 224), expected)
        with Image.open(path) as im:
            np.testing.assert_array_equal(load_view(path, 0), np.asarray(im.convert("RGB")))


def test_image_folder_to_imagenet_c_layout(tmp_path, capsys):
    from PIL import Image

    from tta.data import ImageNetC, make_imagenetc

    root, _ = _image_folder(tmp_path)
    out = tmp_path / "inc"
    argv = ["corrupt", root, "--out", str(out), "--corruptions", "fog", "--severities", "2", "5"]
    assert main([*argv, "--size", "32"]) == 0
    assert "wrote 6 image(s)" in capsys.readouterr().out
    assert _files(out) == ["fog", "manifest.json"]
    assert sorted(os.listdir(out / "fog" / "5")) == ["n0001", "n0002", "n0003"]
    listing = make_imagenetc.list_image_folder(root)
    for severity in (2, 5):
        gen = torch.Generator().manual_seed(make_imagenetc.block_seed(0, "fog", severity, 0))
        views = [make_imagenetc.load_view(listing.path(i), 32) for i in range(len(listing.items))]
        expected = corruptions.corrupt(np.stack(views), "fog", severity, gen)
        for i, image in enumerate(expected):
            cls, name = listing.items[i]
            path = out / "fog" / str(severity) / cls / (os.path.splitext(name)[0] + ".JPEG")
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=85, optimize=True)
            assert path.read_bytes() == buf.getvalue()  # quality 85, optimised, as the release
    domains = ImageNetC(out, ["fog"], [2, 5], transform=None)
    assert [d.name for d in domains] == ["fog-2", "fog-5"]
    np.testing.assert_array_equal(domains[0].labels, [0, 0, 1])  # n0001: img0, img2; n0002: img1
    assert domains[1].get([0])[0].shape == (1, 3, 32, 32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quality"] == 85 and manifest["size"] == 32 and manifest["complete"] is True


def test_image_folder_rerun_redoes_only_missing_blocks_identically(tmp_path, capsys):
    root, _ = _image_folder(tmp_path)
    out = tmp_path / "inc"
    argv = ["corrupt", root, "--out", str(out), "--corruptions", "gaussian_noise", "--size", "0"]
    assert main([*argv, "--severities", "3"]) == 0
    target = out / "gaussian_noise" / "3" / "n0002" / "img1.JPEG"
    first = target.read_bytes()
    with_other_size = sorted(p.name for p in (out / "gaussian_noise" / "3" / "n0001").iterdir())
    assert with_other_size == ["img0.JPEG", "img2.JPEG"]
    target.unlink()
    capsys.readouterr()
    assert main([*argv, "--severities", "3"]) == 0
    assert "wrote 3 image(s)" in capsys.readouterr().out  # the block is redone whole
    assert target.read_bytes() == first
    assert main([*argv, "--severities", "3"]) == 0
    assert "wrote 0 image(s)" in capsys.readouterr().out
    assert main([*argv, "--severities", "3", "--seed", "4"]) == 1
    assert "written with other settings (seed: 0 there, 4 now)" in capsys.readouterr().err


def test_image_folder_refuses_colliding_stems(tmp_path, capsys):
    from PIL import Image

    root, _ = _image_folder(tmp_path)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(os.path.join(root, "n0001", "img0.png"))
    assert main(["corrupt", root, "--out", str(tmp_path / "o"), "--corruptions", "fog"]) == 1
    assert "both would be written as 'img0.JPEG'" in capsys.readouterr().err


# ---- other sizes, subsets, npz splits ------------------------------------------------------


def test_npz_of_64x64_images_uses_the_tiny_table_and_its_test_split(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 64, 64), dtype=np.uint8)  # grey
    np.savez(
        tmp_path / "d.npz", x_train=train, y_train=np.arange(7), x_test=test, y_test=np.arange(4)
    )
    out = tmp_path / "out"
    argv = ["corrupt", str(tmp_path / "d.npz"), "--out", str(out), "--corruptions", "pixelate"]
    assert main(argv) == 0
    result = np.load(out / "pixelate.npy")
    rgb = np.repeat(test[..., None], 3, axis=-1)
    assert result.shape == (20, 64, 64, 3)
    np.testing.assert_array_equal(
        result[12:16], corruptions.corrupt(rgb, "pixelate", 4, params="tiny")
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["table"] == "tiny" and manifest["params"] == "auto"
    assert main([*argv, "--params", "imagenet"]) == 1  # another table: refused, not mixed


def test_a_severity_subset_is_read_by_cifarc(tmp_path, capsys):
    from tta.data import CIFARC

    images, labels = _images(), np.arange(N) % 3
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    out = tmp_path / "out"
    argv = ["corrupt", str(tmp_path / "s.npz"), "--out", str(out), "--corruptions", "contrast"]
    assert main([*argv, "--severities", "3", "5"]) == 0
    assert not (out / "labels.npy").exists()  # release-layout readers still stop
    d3, d5 = CIFARC(out, ["contrast"], [3, 5])
    np.testing.assert_array_equal(d3.images(), corruptions.corrupt(images, "contrast", 3))
    np.testing.assert_array_equal(d5.images(), corruptions.corrupt(images, "contrast", 5))
    np.testing.assert_array_equal(d5.labels, labels)
    with pytest.raises(ValueError, match=r"holds severities 3, 5 only .*asked for 1"):
        CIFARC(out, ["contrast"], [1, 3])
