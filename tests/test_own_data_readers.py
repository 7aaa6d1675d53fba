"""Readers of a user's own arrays: the accepted ``.npz`` keys (one reader for ``tta corrupt``,
``tta train`` and runs), a data set without a test split used as ``data.clean``, and grey images
with 3-channel and 1-channel models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import corruptions
from tta._errors import TTAError
from tta.cli import main
from tta.data.arrays import (
    as_uint8_images,
    input_channels,
    match_channels,
    read_npz_splits,
    to_channels,
)
from tta.models.data import load_dataset, load_test_split, read_npz


def _grey(n: int, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


# ---- .npz keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train_keys, test_keys",
    [
        (("images", "labels"), ("test_images", "test_labels")),
        (("x", "y"), ("x_test", "y_test")),
        (("x_train", "y_train"), ("x_test", "y_test")),
    ],
)
def test_every_key_convention_reads_the_same(tmp_path, train_keys, test_keys):
    x, tx = _grey(6), _grey(3, seed=1)
    path = tmp_path / "d.npz"
    np.savez(path, **{train_keys[0]: x, train_keys[1]: np.arange(6), test_keys[0]: tx, test_keys[1]: np.arange(3)})  # fmt: skip
    splits = read_npz_splits(path)
    assert splits.train_keys == train_keys and splits.test_keys == test_keys
    train_x, train_y, test_x, test_y = read_npz(path)
    assert train_x.shape == (6, 32, 32, 3) and test_x.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(train_x[..., 1], x)
    np.testing.assert_array_equal(test_y, np.arange(3))
    assert load_dataset(str(path))[2].shape == (3, 32, 32, 3)


def test_missing_and_half_keys_name_the_accepted_ones(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, pictures=_grey(2), targets=np.arange(2))
    with pytest.raises(TTAError) as info:
        read_npz(path)
    message = str(info.value)
    assert "lacks array(s) images; it holds 'pictures', 'targets'" in message
    assert "'images'/'labels' or 'x'/'y' or 'x_train'/'y_train'" in message
    assert "'test_images'/'test_labels' or 'x_test'/'y_test'" in message
    np.savez(path, x=_grey(2))
    with pytest.raises(TTAError, match="lacks array\\(s\\) y; it holds 'x'"):
        read_npz(path)
    np.savez(path, x=_grey(3), y=np.arange(2))
    with pytest.raises(TTAError, match=r"\('x' / 'y'\) holds 3 images but 2 labels"):
        read_npz(path)


def test_a_file_with_only_a_test_split(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_test=_grey(4), y_test=np.arange(4))
    train_x, train_y, test_x, _ = read_npz(path)
    assert len(train_x) == len(train_y) == 0 and test_x.shape == (4, 32, 32, 3)
    assert train_x.shape == (0, 32, 32, 3)  # the empty split has the other one's layout
    assert load_test_split(str(path))[0].shape == (4, 32, 32, 3)


def test_data_clean_without_a_test_split_says_so(tmp_path):
    path = tmp_path / "train_only.npz"
    np.savez(path, x=_grey(5), y=np.arange(5))
    with pytest.raises(TTAError) as info:
        load_test_split(str(path))
    assert str(info.value).startswith(
        f"data.clean {str(path)!r} has no test split; it holds 5 training images. Runs corrupt "
        "the held-out images of data.clean: store them in the .npz under "
        "'test_images'/'test_labels' or 'x_test'/'y_test'"
    )


def test_tta_train_and_tta_corrupt_read_the_same_xy_file(tmp_path, capsys):
    path = tmp_path / "digits.npz"
    x, tx = _grey(8), _grey(4, seed=1)
    np.savez(path, x=x, y=np.arange(8) % 2, x_test=tx, y_test=np.arange(4) % 2)
    threads = torch.get_num_threads()
    try:
        argv = ["train", "--model", "resnet8", "--data", str(path), "--out", str(tmp_path / "m.pt")]
        assert main([*argv, "--epochs", "1", "--batch-size", "4", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "c"
    assert main(["corrupt", str(path), "--out", str(out), "--corruptions", "contrast"]) == 0
    written = np.load(out / "contrast.npy")
    rgb = np.repeat(tx[..., None], 3, axis=-1)  # the test split, grey repeated to RGB
    np.testing.assert_array_equal(written[:4], corruptions.corrupt(rgb, "contrast", 1))


# ---- grey images ---------------------------------------------------------------------------


def test_image_layouts_and_channel_conversion():
    grey = _grey(2, 20)
    assert as_uint8_images(grey, "x").shape == (2, 20, 20, 1)
    assert as_uint8_images(grey[:, None], "x").shape == (2, 20, 20, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_array_equal(as_uint8_images(rgb.transpose(0, 3, 1, 2), "x"), rgb)
    np.testing.assert_array_equal(to_channels(grey[..., None], 3), rgb)
    np.testing.assert_array_equal(to_channels(rgb, 1)[..., 0], grey)  # luma of a grey pixel
    assert to_channels(rgb, None) is rgb
    with pytest.raises(TTAError, match=r"images in 'f.npz' must be .*got shape \(2, 5, 20, 20\)"):
        as_uint8_images(np.zeros((2, 5, 20, 20), np.uint8), "'f.npz'")
    with pytest.raises(TypeError, match="must be uint8"):
        as_uint8_images(np.zeros((2, 20, 20), np.float32), "x")
    # the grey reader option keeps one channel
    assert load_dataset("mnist5k", channels=1)[0].shape[1:] == (32, 32, 1)


class _GreyNet(nn.Module):
    """A model whose first layer reads one channel, as a user's digit network would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_one_channel_models_take_grey_and_corrupted_grey_batches():
    grey = torch.rand(3, 1, 32, 32)
    model = _GreyNet()
    assert input_channels(model) == 1
    assert input_channels(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None
    assert match_channels(grey, input_channels(model)) is grey
    repeated = match_channels(grey, 3)
    assert repeated.shape == (3, 3, 32, 32) and torch.equal(repeated[:, 2], grey[:, 0])
    torch.testing.assert_close(match_channels(repeated, 1), grey)  # exact round trip
    # corruptions return RGB for grey input; the model-facing side gives the 1-channel model luma
    corrupted = corruptions.corrupt(grey, "frost", 3)
    x = match_channels(corrupted, input_channels(model))
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (corrupted * weights).sum(1, keepdim=True))
    assert model(x).shape == (3, 10)
    with pytest.raises(TTAError, match="takes 1-channel images but the batch has 2 channels"):
        match_channels(torch.rand(1, 2, 8, 8), 1)


def test_runs_give_a_one_channel_model_rgb_domains_and_rgb_source_images(tmp_path):
    """evaluate converts what the model reads everywhere: the check forward, every batch and
    EATA's clean source images (mnist5k's training split is RGB)."""
    import tta
    from tta.data import ArrayDomain, make_stream

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 10),
    ).eval()  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8), rng.integers(0, 10, 40)
    config = {
        "output": str(tmp_path / "out"),
        "methods": ["tbn", {"name": "eata", "fisher_samples": 16}],
        "stream": {"batch_size": 10},
        "data": {"source_data": "mnist5k"},
    }
    res = tta.evaluate(config, model=model, domains=[ArrayDomain(x, y, "rgb")])
    stream = make_stream([ArrayDomain(x, y, "rgb")], "iid", 0.1, "reset_each_shift", 10, 0)
    assert res["methods"][1]["errors"] == tta.score(tta.adapt(model, "tbn"), stream)
    assert res["methods"][2]["images"] == 40
