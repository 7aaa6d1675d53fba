"""Domains: in-memory arrays, torchvision-style datasets, CIFAR-C and ImageNet-C folders."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tta.data import (
    CIFARC,
    CORRUPTIONS,
    ArrayDomain,
    ImageNetC,
    TorchvisionDomain,
)


def _save(path, array):
    """Write an .npy file the way a careful writer would: temp name, then rename."""
    tmp = str(path) + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def _coded_images(n, h=4, w=4):
    """uint8 (n, h, w, 3) images whose first pixel encodes the row: (row % 256, row // 256, 7)."""
    x = np.random.default_rng(0).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    rows = np.arange(n)
    x[:, 0, 0, 0] = rows % 256
    x[:, 0, 0, 1] = rows // 256
    x[:, 0, 0, 2] = 7
    return x


# ---------------------------------------------------------------- ArrayDomain


def test_array_domain_uint8_converts_only_requested_rows():
    images = _coded_images(10)
    labels = np.arange(10) % 3
    d = ArrayDomain(images, labels, "toy")
    x, y = d.get([4, 1, 9])
    # bit-identical to torchvision's ToTensor arithmetic: uint8 -> float, divided by 255
    expected = torch.from_numpy(images[[4, 1, 9]]).permute(0, 3, 1, 2).float().div(255)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 4, 4) and x.is_contiguous()
    assert torch.equal(x, expected)
    assert y.dtype == torch.int64 and y.tolist() == [1, 1, 0]
    assert len(d) == 10 and d.labels.dtype == np.int64 and d.corruption is None
    assert d._images is images  # kept as given, no float copy


def test_array_domain_float_tensor():
    images = torch.rand(6, 3, 5, 5, dtype=torch.float64)
    d = ArrayDomain(images, torch.tensor([0, 1, 2, 0, 1, 2]), "f", corruption="fog", severity=2)
    x, y = d.get(np.array([5, 0]))
    torch.testing.assert_close(x, images[[5, 0]].float())
    assert y.tolist() == [2, 0] and (d.corruption, d.severity) == ("fog", 2)


def test_array_domain_labels_are_read_only():
    d = ArrayDomain(_coded_images(3), [0, 1, 2], "t")
    with pytest.raises(ValueError):
        d.labels[0] = 5


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (_coded_images(5), np.zeros(4, dtype=np.int64), "length 4 but there are 5 images"),
        (np.zeros((5, 4, 4, 2), np.uint8), np.zeros(5, np.int64), r"\(N, H, W, 3\)"),
        (torch.rand(5, 4, 4, 3), np.zeros(5, np.int64), r"\(N, 3, H, W\)"),
        (
            torch.rand(5, 3, 4, 4) * 2 - 1,
            np.zeros(5, np.int64),
            "outside \\[0, 1\\].*normalisation",
        ),
        (_coded_images(5), np.zeros((5, 1), np.int64), "must be 1-D"),
        (_coded_images(5), np.zeros(5, np.float32), "must be integers"),
        (_coded_images(5), -np.ones(5, np.int64), "must be >= 0"),
    ],
)
def test_array_domain_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ArrayDomain(images, labels, "bad")


def test_array_domain_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="dtype int32.*uint8 numpy"):
        ArrayDomain(np.zeros((2, 4, 4, 3), np.int32), [0, 1], "bad")


def test_index_out_of_range_names_the_index():
    d = ArrayDomain(_coded_images(4), [0, 1, 2, 3], "toy")
    with pytest.raises(
        IndexError, match=r"index 4 is out of range.*'toy' with 4 samples \(valid: 0..3\)"
    ):
        d.get([0, 4])
    with pytest.raises(IndexError, match="index -1"):
        d.get([-1])


# ---------------------------------------------------------------- TorchvisionDomain


class _PILSet:
    """A torchvision-style dataset: PIL images, integer targets."""

    def __init__(self, images, targets, sizes=None):
        self.images = images
        self.targets = list(targets)
        self.sizes = sizes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        im = Image.fromarray(self.images[i])
        if self.sizes is not None:
            im = im.resize(self.sizes[i])
        return im, self.targets[i]


def test_torchvision_domain_reads_items_and_targets():
    images = _coded_images(5, 6, 6)
    d = TorchvisionDomain(_PILSet(images, [3, 1, 4, 1, 5]), "pil")
    x, y = d.get([2, 0])
    expected = torch.from_numpy(images[[2, 0]].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-7)
    assert y.tolist() == [4, 3] and d.labels.tolist() == [3, 1, 4, 1, 5]


def test_torchvision_domain_float_tensor_items():
    data = torch.rand(4, 3, 5, 5)
    ds = torch.utils.data.TensorDataset(data, torch.tensor([0, 1, 0, 1]))
    d = TorchvisionDomain(ds, "tensors", labels=[0, 1, 0, 1])
    x, y = d.get([3, 1])
    torch.testing.assert_close(x, data[[3, 1]])
    assert y.tolist() == [1, 1]


def test_torchvision_domain_errors():
    ds = torch.utils.data.TensorDataset(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no 'targets' or 'labels'.*pass labels="):
        TorchvisionDomain(ds, "x")
    with pytest.raises(ValueError, match="length 2 but there are 3 images"):
        TorchvisionDomain(ds, "x", labels=[0, 1])
    wrong = TorchvisionDomain(ds, "x", labels=[0, 2, 2])
    with pytest.raises(
        ValueError, match="item 1 of domain 'x' has label 1 but its labels list says 2"
    ):
        wrong.get([1])
    sized = TorchvisionDomain(_PILSet(_coded_images(2, 6, 6), [0, 1], [(6, 6), (8, 8)]), "s")
    with pytest.raises(ValueError, match="differ in size.*transform"):
        sized.get([0, 1])


# ---------------------------------------------------------------- CIFAR-C


def _cifarc_folder(root, corruptions=("gaussian_noise", "fog"), n=20):
    root.mkdir(exist_ok=True)
    labels = (np.arange(n) * 7 % 10).astype(np.uint8)
    _save(root / "labels.npy", labels)
    for c in corruptions:
        _save(root / f"{c}.npy", _coded_images(n))
    return labels


def test_cifarc_reads_severity_blocks_and_labels(tmp_path):
    labels = _cifarc_folder(tmp_path)
    domains = CIFARC(tmp_path, corruptions=["fog", "gaussian_noise"], severities=[2, 5])
    assert [d.name for d in domains] == ["fog-2", "fog-5", "gaussian_noise-2", "gaussian_noise-5"]
    assert [(d.corruption, d.severity) for d in domains][1] == ("fog", 5)
    for d in domains:
        assert len(d) == 4
        start = (d.severity - 1) * 4
        np.testing.assert_array_equal(d.labels, labels[start : start + 4])
        x, y = d.get([3, 0, 2])
        rows = np.rint(x[:, 0, 0, 0].numpy() * 255) + 256 * np.rint(x[:, 1, 0, 0].numpy() * 255)
        assert rows.tolist() == [start + 3, start, start + 2]
        assert y.tolist() == labels[[start + 3, start, start + 2]].tolist()
        assert isinstance(d.images(), np.memmap)


def test_cifarc_default_is_the_15_benchmark_corruptions_at_severity_5(tmp_path):
    _cifarc_folder(tmp_path, corruptions=CORRUPTIONS, n=10)
    domains = CIFARC(tmp_path)
    assert [d.name for d in domains] == [f"{c}-5" for c in CORRUPTIONS]
    assert CORRUPTIONS[0] == "gaussian_noise" and CORRUPTIONS[-1] == "jpeg_compression"


def test_cifarc_domain_pickles_without_its_data(tmp_path):
    _cifarc_folder(tmp_path, n=2000)
    d = CIFARC(tmp_path, "fog", 3)[0]
    d.get([0])  # map the file
    blob = pickle.dumps(d)
    assert len(blob) < 20000  # labels and path only, not the 96 KB of images
    back = pickle.loads(blob)
    torch.testing.assert_close(back.get([5, 7])[0], d.get([5, 7])[0])


def test_cifarc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*expected layout"):
        CIFARC(tmp_path / "nowhere")
    root = tmp_path / "c"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match="labels.npy' is missing"):
        CIFARC(root, "fog")
    _cifarc_folder(root)
    with pytest.raises(FileNotFoundError, match="(?s)present in .*: gaussian_noise, fog\\."):
        CIFARC(root, ["fog", "snow"])
    with pytest.raises(
        ValueError, match="unknown corruption 'gausian_noise'.*Did you mean 'gaussian_noise'"
    ):
        CIFARC(root, ["gausian_noise"])
    for bad in (0, 6):
        with pytest.raises(ValueError, match=f"severity {bad} is outside 1..5"):
            CIFARC(root, "fog", [bad])


def test_cifarc_file_errors(tmp_path):
    _cifarc_folder(tmp_path, corruptions=())
    _save(tmp_path / "fog.npy", _coded_images(25))
    with pytest.raises(ValueError, match="25 images but labels.npy holds 20"):
        CIFARC(tmp_path, "fog")
    _save(tmp_path / "fog.npy", np.zeros((20, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="float32 data.*expected uint8"):
        CIFARC(tmp_path, "fog")
    _save(tmp_path / "fog.npy", np.zeros((20, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(20, 4, 4\).*\(N, H, W, 3\)"):
        CIFARC(tmp_path, "fog")
    _save(tmp_path / "labels.npy", np.zeros(22, np.uint8))
    _save(tmp_path / "fog.npy", _coded_images(22))
    with pytest.raises(ValueError, match="22 labels.*multiple of 5"):
        CIFARC(tmp_path, "fog")


# ---------------------------------------------------------------- ImageNet-C


def _imagenetc_folder(root, corruptions=("fog",), severities=(5,), wnids=("n02", "n01"), size=40):
    for c in corruptions:
        for s in severities:
            for k, wnid in enumerate(wnids):
                folder = root / c / str(s) / wnid
                folder.mkdir(parents=True)
                for j in range(2):
                    value = 40 * k + 10 * j + s
                    im = Image.fromarray(np.full((size, size + 8, 3), value, np.uint8))
                    im.save(folder / f"img{j}.JPEG", quality=100)


def test_imagenetc_labels_are_sorted_wnid_indices(tmp_path):
    _imagenetc_folder(tmp_path, corruptions=("fog", "snow"), severities=(1, 5))
    domains = ImageNetC(tmp_path, ["snow", "fog"], [5, 1], transform=None)
    assert [d.name for d in domains] == ["snow-5", "snow-1", "fog-5", "fog-1"]
    d = domains[0]
    # sorted wnids: n01 (written as k=1) -> label 0, n02 (k=0) -> label 1
    assert d.labels.tolist() == [0, 0, 1, 1]
    x, y = d.get([0, 3])
    assert x.shape == (2, 3, 40, 48) and y.tolist() == [0, 1]
    expected = torch.tensor([40 * 1 + 0 + 5, 40 * 0 + 10 + 5], dtype=torch.float32) / 255
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), expected, atol=2 / 255, rtol=0)


def test_imagenetc_default_transform_is_resize_256_crop_224(tmp_path):
    _imagenetc_folder(tmp_path)
    x, _ = ImageNetC(tmp_path, "fog")[0].get([1])
    assert x.shape == (1, 3, 224, 224)


def test_imagenetc_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="(?s)does not exist.*<corruption>/<severity>/<wnid>"
    ):
        ImageNetC(tmp_path / "nowhere")
    _imagenetc_folder(tmp_path, corruptions=("fog", "snow"))
    with pytest.raises(FileNotFoundError, match="(?s)present in .*: snow, fog\\."):
        ImageNetC(tmp_path, ["frost"])
    with pytest.raises(FileNotFoundError, match="3' is missing; severity folders present: 5"):
        ImageNetC(tmp_path, "fog", 3)
    with pytest.raises(ValueError, match="unknown corruption 'fgo'.*Did you mean 'fog'"):
        ImageNetC(tmp_path, "fgo")
    with pytest.raises(ValueError, match="transform 'big' is not valid"):
        ImageNetC(tmp_path, "fog", transform="big")
    (tmp_path / "snow" / "5" / "n03").mkdir()
    with pytest.raises(ValueError, match=r"different class folders.*extra: \['n03'\]"):
        ImageNetC(tmp_path, ["fog", "snow"])
