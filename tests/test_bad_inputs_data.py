"""Bad data is refused where it is read, with a TTAError naming the file, item or layer (issue 11):
unsafe CIFAR pickles, image/label count mismatches, empty and truncated arrays, NaN/Inf/out-of-range
float images, broken BatchNorm statistics in checkpoints, unusable output paths, bad corruption
name lists, and ``~`` in data paths."""

from __future__ import annotations

import builtins
import os
import pickle
import re

import numpy as np
import pytest
import torch

from tta._errors import TTAError, TTAFileNotFoundError, TTATypeError
from tta.cli import main
from tta.data import (
    CIFARC,
    ArrayDomain,
    ImageNetC,
    TorchvisionDomain,
    check_corruption_names,
    check_counts,
)
from tta.models import load_model, read_npz, save_checkpoint
from tta.models.data import load_dataset, read_cifar, read_cifar_batch
from tta.models.train import train_model


def _rgb(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _planes(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR rows: R, G, B planes


# ------------------------------------------------------------------ unsafe CIFAR pickles


class _OpenForWriting:
    """Unpickling this calls builtins.open(path, "w"), which creates the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _ShellTouch:
    """Unpickling this runs ``touch path`` through os.system."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _evil_batch(kind, marker) -> bytes:
    return pickle.dumps({b"data": kind(str(marker)), b"labels": [0]})


def test_the_evil_pickles_do_create_a_file_when_unpickled_plainly(tmp_path):
    # What the old `tta corrupt` (plain pickle.load) did with such a file: the payload ran.
    for kind in (_OpenForWriting, _ShellTouch):
        marker = tmp_path / f"made-by-{kind.__name__}"
        result = pickle.loads(_evil_batch(kind, marker))
        if hasattr(result[b"data"], "close"):
            result[b"data"].close()
        assert marker.exists()


@pytest.mark.parametrize("kind", [_OpenForWriting, _ShellTouch])
def test_tta_corrupt_refuses_a_cifar_pickle_that_would_run_code(tmp_path, capsys, kind):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    batch = folder / "test_batch"
    batch.write_bytes(_evil_batch(kind, marker))
    assert main(["corrupt", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tta corrupt: error: CIFAR batch file {batch} is not a plain CIFAR ")
    assert "refusing to load" in err and "nothing from it was run or loaded" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", [_OpenForWriting, _ShellTouch])
def test_every_cifar_reader_refuses_code(tmp_path, capsys, kind):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(_evil_batch(kind, marker))
    with pytest.raises(TTAError, match=re.escape(f"{folder / 'data_batch_1'} is not a plain")):
        read_cifar(folder)
    with pytest.raises(TTAError, match="refusing to load (builtins|io|posix|os)\\.(open|system)"):
        load_dataset(f"cifar10:{folder}")
    out = tmp_path / "model.pt"
    argv = ["train", "--model", "resnet8", "--data", f"cifar10:{folder}", "--out", str(out)]
    assert main(argv) == 1
    assert "is not a plain CIFAR batch" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_the_one_cifar_reader_still_reads_real_batches(tmp_path):
    images, labels = _rgb(6), np.arange(6) % 10
    path = tmp_path / "test_batch"
    # numpy scalars as labels, and numpy >= 2's protocol-5 array pickles, are plain data too
    for protocol in (2, 5):
        batch = {b"batch_label": b"testing", b"data": _planes(images), b"labels": list(labels)}
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        x, y = read_cifar_batch(path)
        assert np.array_equal(x, images) and y.tolist() == labels.tolist()


def test_damaged_cifar_batches(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(b"")
    with pytest.raises(TTAError, match=re.escape(f"CIFAR batch file {path} is empty (0 bytes)")):
        read_cifar_batch(path)
    full = pickle.dumps({b"data": _planes(_rgb(4)), b"labels": [0, 1, 2, 3]})
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(TTAError, match=f"{re.escape(str(path))} cannot be unpickled.*truncated"):
        read_cifar_batch(path)


# ------------------------------------------------------------------ image / label counts


def test_count_check_names_the_place_and_both_counts():
    check_counts(3, 3, "x")
    with pytest.raises(TTAError) as info:
        check_counts(5, 4, "'/data/set.npz'")
    assert str(info.value) == (
        "'/data/set.npz' holds 5 images but 4 labels; every image needs exactly one label, so "
        "the two counts must match."
    )


def test_npz_reader_checks_counts_before_any_subset(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=_rgb(5), labels=np.zeros(4, np.int64))
    with pytest.raises(TTAError, match=re.escape(f"{path} ('images' / 'labels') holds 5 images but 4 labels")):  # fmt: skip
        read_npz(path)
    np.savez(path, images=_rgb(4), labels=np.zeros(4, np.int64),
             test_images=_rgb(3), test_labels=np.zeros(2, np.int64))  # fmt: skip
    with pytest.raises(TTAError, match=re.escape("('test_images' / 'test_labels') holds 3 images but 2 labels")):  # fmt: skip
        load_dataset(str(path))


def test_cifar_batch_and_corrupt_sources_check_counts(tmp_path, capsys):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _planes(_rgb(4)), b"labels": [0, 1, 2]}))
    with pytest.raises(TTAError, match=re.escape(f"CIFAR batch file {path} holds 4 images but 3 labels")):  # fmt: skip
        read_cifar_batch(path)
    np.savez(tmp_path / "set.npz", x=_rgb(6), y=np.zeros(7, np.int64))
    assert main(["corrupt", str(tmp_path / "set.npz"), "--out", str(tmp_path / "o")]) == 1
    assert f"'{tmp_path / 'set.npz'}' holds 6 images but 7 labels" in capsys.readouterr().err
    folder = tmp_path / "layout"
    folder.mkdir()
    np.save(folder / "clean.npy", _rgb(3))
    np.save(folder / "labels.npy", np.zeros(2, np.int64))
    assert main(["corrupt", str(folder / "clean.npy"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"'{folder / 'clean.npy'}' with '{folder / 'labels.npy'}' holds 3 images but 2" in err


def test_array_domain_checks_counts():
    with pytest.raises(TTAError, match="labels for domain 'd' have length 4 but there are 5"):
        ArrayDomain(_rgb(5, 4), np.zeros(4, np.int64), "d")


# ------------------------------------------------------------------ empty and truncated arrays


def _cifarc(root, n=10, corruptions=("fog",)):
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "labels.npy", np.arange(n) % 3)
    for c in corruptions:
        np.save(root / f"{c}.npy", _rgb(n, 4))


def _truncate(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - keep])


def test_cifarc_empty_and_truncated_files(tmp_path):
    _cifarc(tmp_path)
    fog = tmp_path / "fog.npy"
    fog.write_bytes(b"")
    with pytest.raises(TTAError) as info:
        CIFARC(tmp_path, "fog")
    assert str(info.value).startswith(f"'{fog}' is empty (0 bytes); expected a numpy .npy file.")
    _cifarc(tmp_path)
    _truncate(fog, 100)
    with pytest.raises(TTAError) as info:
        CIFARC(tmp_path, "fog")
    assert str(info.value) == (
        f"'{fog}' is truncated: its header describes a uint8 array of shape (10, 4, 4, 3) "
        f"(608 bytes with the header) but the file has only 508 bytes. Write or download the "
        "file again."
    )
    fog.write_bytes(b"\x93NUMPY\x01")  # cut inside the header
    with pytest.raises(TTAError, match=re.escape(f"'{fog}' is not a valid .npy file")):
        CIFARC(tmp_path, "fog")
    _cifarc(tmp_path)
    (tmp_path / "labels.npy").write_bytes(b"")
    with pytest.raises(TTAError, match=re.escape(f"'{tmp_path / 'labels.npy'}' is empty (0 bytes)")):  # fmt: skip
        CIFARC(tmp_path, "fog")


def test_truncated_npz_files(tmp_path, capsys):
    path = tmp_path / "set.npz"
    np.savez(path, images=_rgb(4), labels=np.zeros(4, np.int64))
    _truncate(path, 30)
    with pytest.raises(TTAError, match=re.escape(f"'{path}' is not a valid .npz file")) as info:
        read_npz(path)
    assert "truncated" in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(TTAError, match=re.escape(f"'{path}' is empty (0 bytes); expected a numpy .npz file")):  # fmt: skip
        read_npz(path)
    assert main(["corrupt", str(path), "--out", str(tmp_path / "o")]) == 1
    assert f"tta corrupt: error: '{path}' is empty (0 bytes)" in capsys.readouterr().err


def test_truncated_npy_sources_of_tta_corrupt(tmp_path, capsys):
    np.save(tmp_path / "clean.npy", _rgb(4))
    np.save(tmp_path / "labels.npy", np.zeros(4, np.int64))
    _truncate(tmp_path / "clean.npy", 1)
    assert main(["corrupt", str(tmp_path / "clean.npy"), "--out", str(tmp_path / "o")]) == 1
    assert f"error: '{tmp_path / 'clean.npy'}' is truncated" in capsys.readouterr().err


# ------------------------------------------------------------------ NaN / Inf / range in float images


class _Items:
    """A map-style dataset of float CHW tensors with a targets list."""

    def __init__(self, images):
        self.images = images
        self.targets = [0] * len(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def _floats(n=6, seed=0):
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "value, problem",
    [
        (float("nan"), "holds NaN values"),
        (float("inf"), "holds Inf values"),
        (1.5, "spans [0, 1.5], outside [0, 1]"),
        (-0.25, "spans [-0.25, 1], outside [0, 1]"),
    ],
)
def test_torchvision_domain_refuses_bad_float_items(value, problem):
    x = _floats()
    x[3, 1, 2, 2] = value
    if value > 1 or value < 0:
        x[3, 0, 0, 0], x[3, 0, 0, 1] = 0.0, 1.0  # make the span exact
        x[3, 1, 2, 2] = value
    domain = TorchvisionDomain(_Items(list(x)), "tv")
    domain.get([0, 1, 2])  # clean rows pass
    with pytest.raises(TTAError) as info:
        domain.get([5, 3, 0])  # the item index is the dataset's, not the batch position
    assert str(info.value) == (
        f"item 3 of domain 'tv' {problem}. Float images must be finite and in [0, 1]; keep "
        "mean/std normalisation inside the model wrapper."
    )


def test_array_domain_refuses_nan_and_names_the_item():
    x = _floats(8)
    x[6, 2, 0, 1] = float("nan")
    x[7, 0, 0, 0] = float("-inf")
    with pytest.raises(TTAError) as info:
        ArrayDomain(x.numpy(), np.zeros(8, np.int64), "arr")
    assert str(info.value).startswith(
        "item 6 of domain 'arr' holds NaN values (1 other item(s) too). Float images must be "
        "finite and in [0, 1]"
    )


def test_the_float_check_is_one_pass_per_batch(monkeypatch):
    # Vectorised: one amin and one amax over the whole batch, not one per item.
    import tta.data.arrays as arrays

    calls = []
    real = torch.Tensor.amin

    def counting(self, *args, **kwargs):
        calls.append(self.shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "amin", counting)
    arrays.check_float_images(_floats(64), "domain 'x'")
    assert calls == [torch.Size([64, 48])]


# ------------------------------------------------------------------ BatchNorm statistics in checkpoints


@pytest.mark.parametrize(
    "key, value, problem",
    [
        (
            "layer1.0.bn1.running_var",
            -0.5,
            "running_var is negative in 1 of 16 channels (min -0.5)",
        ),
        ("bn.running_var", float("nan"), "running_var holds NaN values"),
        ("layer2.0.bn2.running_var", float("inf"), "running_var holds Inf values"),
        ("layer1.0.bn1.running_mean", float("-inf"), "running_mean holds Inf values"),
    ],
)
def test_checkpoint_with_broken_bn_statistics_is_refused(tmp_path, key, value, problem):
    model = load_model("resnet8")
    sd = model.model.state_dict()
    assert key in sd
    sd[key][0] = value
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    layer = key.rsplit(".", 1)[0]
    with pytest.raises(TTAError) as info:
        load_model("resnet8", path)
    assert str(info.value).startswith(
        f"checkpoint {path} has invalid BatchNorm statistics in layer {layer!r}: {problem}"
    )
    # the same through a tta checkpoint (spec recorded in the file)
    model.model.load_state_dict(sd)
    save_checkpoint(model, tmp_path / "tta.pt")
    with pytest.raises(TTAError, match=re.escape(f"layer {layer!r}: {problem}")):
        load_model(checkpoint=tmp_path / "tta.pt")


def test_zero_running_var_is_still_accepted(tmp_path):
    model = load_model("resnet8")
    sd = model.model.state_dict()
    sd["bn.running_var"].zero_()  # a dead channel: unusual, but a valid variance
    torch.save(sd, tmp_path / "ok.pt")
    load_model("resnet8", tmp_path / "ok.pt", mean=0.5, std=0.25)


# ------------------------------------------------------------------ tta train --out


def _toy_npz(tmp_path):
    path = tmp_path / "toy.npz"
    np.savez(path, images=_rgb(8), labels=np.arange(8) % 2)
    return path


def test_tta_train_refuses_a_directory_as_out_before_training(tmp_path, capsys):
    data = _toy_npz(tmp_path)
    out = tmp_path / "existing"
    out.mkdir()
    argv = ["train", "--model", "resnet8", "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "epoch" not in captured.out  # nothing was trained
    assert captured.err == (
        f"tta train: error: --out '{out}' is an existing directory; give a file name, e.g. "
        f"'{out / 'model.pt'}'\n"
    )


def test_train_model_checks_out_before_training(tmp_path, monkeypatch):
    import tta.models.train as train

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "load_model", no_training)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TTAError) as info:
        train_model("resnet8", _rgb(4), np.arange(4) % 2, out=blocker / "sub" / "m.pt")
    assert str(info.value) == (
        f"checkpoint path '{blocker / 'sub' / 'm.pt'}' cannot be written: '{blocker}' is a file, "
        "not a directory"
    )
    with pytest.raises(TTAError, match="is an existing directory"):
        train_model("resnet8", _rgb(4), np.arange(4) % 2, out=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_folder(tmp_path):
    from tta.models.checkpoint import check_output_file

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(TTAError, match="cannot be written: no write permission in"):
            check_output_file(folder / "m.pt")
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------ corruption names


def test_corruption_names_validator():
    assert check_corruption_names(["fog", "snow"]) == ["fog", "snow"]
    with pytest.raises(TTATypeError) as info:
        check_corruption_names([1])
    assert str(info.value).startswith(
        "data.corruptions[0] is 1 (int); expected a corruption name (a string) such as "
        "'gaussian_noise'. Valid: gaussian_noise, shot_noise,"
    )
    with pytest.raises(TTAError) as info:
        check_corruption_names(["fog", "fgo"])
    assert str(info.value).startswith(
        "data.corruptions[1]: unknown corruption 'fgo'. Did you mean 'fog'? Valid: "
        "'gaussian_noise',"
    )
    with pytest.raises(TTAError) as info:
        check_corruption_names([])
    assert str(info.value) == "data.corruptions is empty; omit the key for the default set"
    with pytest.raises(TTATypeError, match="data.corruptions must be a list of corruption names"):
        check_corruption_names("fog")
    with pytest.raises(TTAError, match="data.corruptions lists 'fog' more than once"):
        check_corruption_names(["fog", "snow", "fog"])


def test_tta_corrupt_refuses_empty_and_non_string_corruption_lists(tmp_path, capsys):
    np.savez(tmp_path / "set.npz", images=_rgb(2), labels=np.zeros(2, np.int64))
    src, out = str(tmp_path / "set.npz"), str(tmp_path / "o")
    assert main(["corrupt", src, "--out", out, "--corruptions"]) == 1
    assert capsys.readouterr().err == (
        "tta corrupt: error: --corruptions is empty; omit the option for the default set\n"
    )
    assert main(["corrupt", src, "--out", out, "--corruptions", "noise", "fogg"]) == 1
    err = capsys.readouterr().err
    assert "--corruptions[1]: unknown corruption or group 'fogg'. Did you mean 'fog'?" in err
    assert not os.path.exists(out)


# ------------------------------------------------------------------ ~ in data paths


def test_tilde_is_expanded_in_data_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    _cifarc(tmp_path / "cifarc")
    assert [d.name for d in CIFARC("~/cifarc", "fog")] == ["fog-5"]
    from PIL import Image

    folder = tmp_path / "inc" / "fog" / "5" / "n01"
    folder.mkdir(parents=True)
    Image.fromarray(_rgb(1, 8)[0]).save(folder / "a.JPEG")
    assert len(ImageNetC("~/inc", "fog", transform=None)[0]) == 1
    np.savez(tmp_path / "set.npz", images=_rgb(3), labels=np.zeros(3, np.int64))
    assert len(read_npz("~/set.npz")[1]) == 3
    assert main(["corrupt", "~/set.npz", "--out", "~/out", "--corruptions", "contrast"]) == 0
    assert (tmp_path / "out" / "contrast.npy").is_file()
    capsys.readouterr()
    torch.save(load_model("resnet8").model.state_dict(), tmp_path / "m.pt")
    load_model("resnet8", "~/m.pt", mean=0.5, std=0.25)
    with pytest.raises(TTAFileNotFoundError, match=re.escape(f"{tmp_path / 'nope.pt'}")):
        load_model("resnet8", "~/nope.pt")
