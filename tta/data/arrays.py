"""Reading ``.npy`` / ``.npz`` files and checking image arrays, with errors that name the file.

Every reader of user arrays goes through here (CIFAR-C files, ``tta corrupt`` sources, ``.npz``
data sets for ``tta train``, ``data.clean`` and ``data.source_data``), so that an empty, truncated
or mismatched file stops with a ``TTAError`` naming the file and what is wrong, not a numpy
traceback, and before any subset is taken.

``.npz`` data sets (:func:`read_npz_splits`): the training split under ``images``/``labels``
(or ``x``/``y``, or ``x_train``/``y_train``), the test split, when there is one, under
``test_images``/``test_labels`` (or ``x_test``/``y_test``).

Images (:func:`as_uint8_images`): uint8 (N, H, W, 3) as released, channels-first (N, 3, H, W),
or grey (N, H, W), (N, H, W, 1), (N, 1, H, W). Grey images keep their one channel until something
needs a given number: :func:`to_channels` (uint8, for readers asked for 3 channels) and
:func:`match_channels` (float batches, at the model) repeat grey to 3 channels, or reduce RGB to
grey (ITU-R BT.601 luma, what Pillow's "L" conversion uses) for a model whose first layer takes
one channel (:func:`input_channels`).
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from tta._errors import TTAError, TTAFileNotFoundError, TTATypeError

PathLike = Union[str, "os.PathLike[str]"]


def user_path(path: PathLike) -> Path:
    """``path`` with ``~`` expanded (the form every reader works with and names in errors)."""
    return Path(os.fspath(path)).expanduser()


def check_counts(n_images: int, n_labels: int, where: str) -> None:
    """Refuse a different number of images and labels; ``where`` names the file or domain."""
    if n_images != n_labels:
        raise TTAError(
            f"{where} holds {n_images} images but {n_labels} labels; every image needs exactly "
            "one label, so the two counts must match."
        )


def _existing_file(path: PathLike, what: str) -> Path:
    path = user_path(path)
    if not path.exists():
        raise TTAFileNotFoundError(f"{what} {str(path)!r} does not exist.")
    if not path.is_file():
        raise TTAError(f"{what} {str(path)!r} is not a file.")
    if path.stat().st_size == 0:
        raise TTAError(
            f"{str(path)!r} is empty (0 bytes); expected a numpy {path.suffix or '.npy'} file. "
            "A failed download or copy is the usual cause: write the file again."
        )
    return path


def load_npy(path: PathLike, mmap: bool = False, what: str = "array file") -> np.ndarray:
    """An ``.npy`` file as an array (memory-mapped with ``mmap=True``), refusing empty, truncated
    and pickled files with a ``TTAError`` that names the file."""
    path = _existing_file(path, what)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
    except Exception as err:  # numpy raises ValueError / EOFError / SyntaxError for bad headers
        raise TTAError(
            f"{str(path)!r} is not a valid .npy file (its header cannot be read: {err}); it is "
            "truncated or not a numpy array file."
        ) from None
    if dtype.hasobject:
        raise TTAError(
            f"{str(path)!r} holds Python objects (dtype {dtype}), which are refused because "
            "loading them runs pickle; save the data as a numeric array."
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise TTAError(
            f"{str(path)!r} is truncated: its header describes a {dtype} array of shape "
            f"{tuple(shape)} ({expected} bytes with the header) but the file has only {size} "
            "bytes. Write or download the file again."
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:
        raise TTAError(f"{str(path)!r} could not be read as a .npy file: {err}") from None


class NpzFile(Mapping):
    """A read-only view of an ``.npz`` archive whose reads raise ``TTAError`` naming the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._archive = np.load(path, allow_pickle=False)
        except Exception as err:
            raise TTAError(
                f"{str(path)!r} is not a valid .npz file ({type(err).__name__}: {err}); it is "
                "truncated or not a numpy archive. Write or download the file again."
            ) from None
        if not isinstance(self._archive, np.lib.npyio.NpzFile):
            raise TTAError(f"{str(path)!r} is a single .npy array, not an .npz archive.")

    @property
    def files(self) -> list[str]:
        return list(self._archive.files)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._archive.files:
            raise KeyError(key)
        try:
            return self._archive[key]
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
            raise TTAError(
                f"array {key!r} of {str(self.path)!r} cannot be read ({type(err).__name__}: "
                f"{err}); the file is truncated or damaged. Write or download it again."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._archive.files)

    def __len__(self) -> int:
        return len(self._archive.files)

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_npz(path: PathLike, what: str = "dataset file") -> NpzFile:
    """Open an ``.npz`` archive (``with open_npz(p) as data: data["images"]``)."""
    return NpzFile(_existing_file(path, what))


#: Accepted ``.npz`` keys, first match wins: (images, labels) of the training split, then the test split.
TRAIN_KEYS = (("images", "labels"), ("x", "y"), ("x_train", "y_train"))
TEST_KEYS = (("test_images", "test_labels"), ("x_test", "y_test"))


def npz_keys_help() -> str:
    """One sentence naming every accepted ``.npz`` key, for error messages and docs."""
    train = " or ".join(f"{i!r}/{lab!r}" for i, lab in TRAIN_KEYS)
    test = " or ".join(f"{i!r}/{lab!r}" for i, lab in TEST_KEYS)
    return (
        f"an .npz data set holds its images and labels under {train}, and a test split under {test}"
    )


def pick(archive: NpzFile, keys: Sequence[str], what: str) -> np.ndarray:
    """The first of ``keys`` present in ``archive``, or a ``TTAError`` listing what it holds."""
    for key in keys:
        if key in archive:
            return archive[key]
    raise TTAError(
        f"{str(archive.path)!r} has no {what} array: expected one of "
        f"{', '.join(map(repr, keys))}, found {', '.join(map(repr, archive.files)) or 'nothing'}."
    )


@dataclass
class NpzSplits:
    """The splits of an ``.npz`` data set: (images, labels) or None, and the keys they came from."""

    path: Path
    train: Optional[tuple[np.ndarray, np.ndarray]]
    test: Optional[tuple[np.ndarray, np.ndarray]]
    train_keys: Optional[tuple[str, str]]
    test_keys: Optional[tuple[str, str]]
    files: list[str]


Pair = tuple[np.ndarray, np.ndarray]


def _split(
    data: NpzFile, pairs: tuple[tuple[str, str], ...], name_keys: bool
) -> tuple[Optional[Pair], Optional[tuple[str, str]]]:
    """The first (images, labels) pair of ``pairs`` present in ``data``; a half pair is an error.
    Count errors name the file, and with ``name_keys`` the two keys too."""
    for image_key, label_key in pairs:
        has_images, has_labels = image_key in data, label_key in data
        if has_images and has_labels:
            images, labels = data[image_key], data[label_key]
            where = (
                f"{data.path} ({image_key!r} / {label_key!r})"
                if name_keys
                else repr(str(data.path))
            )
            check_counts(len(images), len(labels), where)
            return (images, labels), (image_key, label_key)
        if has_images or has_labels:
            missing = label_key if has_images else image_key
            raise TTAError(
                f"{data.path} lacks array(s) {missing}; it holds "
                f"{', '.join(map(repr, data.files))}. {npz_keys_help()}."
            )
    return None, None


def read_npz_splits(path: PathLike, name_keys: bool = True) -> NpzSplits:
    """Both splits of an ``.npz`` data set (the one reader for ``tta corrupt``, ``tta train`` and
    runs), counts checked per split; a file with neither split is a ``TTAError`` naming the
    accepted keys."""
    with open_npz(path) as data:
        train, train_keys = _split(data, TRAIN_KEYS, name_keys)
        test, test_keys = _split(data, TEST_KEYS, name_keys)
        if train is None and test is None:
            raise TTAError(
                f"{data.path} lacks array(s) images; it holds "
                f"{', '.join(map(repr, data.files)) or 'nothing'}. {npz_keys_help()}."
            )
        return NpzSplits(data.path, train, test, train_keys, test_keys, data.files)


def as_uint8_images(images: Any, where: str) -> np.ndarray:
    """uint8 images as (N, H, W, C) with C = 1 (grey) or 3, from any accepted layout.

    Accepted: (N, H, W, 3) and (N, H, W, 1) as released, (N, 3, H, W) and (N, 1, H, W)
    channels-first, and (N, H, W) grey. Anything else is a ``TTAError`` naming ``where``.
    """
    arr = np.asarray(images)
    valid = "(N, H, W, 3), (N, 3, H, W), or grey (N, H, W), (N, H, W, 1), (N, 1, H, W)"
    if arr.dtype != np.uint8:
        raise TTATypeError(f"images in {where} must be uint8 {valid}, got dtype {arr.dtype}.")
    if arr.ndim == 3:
        return arr[..., None]
    if arr.ndim == 4:
        if arr.shape[3] in (1, 3):
            return arr
        if arr.shape[1] in (1, 3):
            return arr.transpose(0, 2, 3, 1)
    raise TTAError(f"images in {where} must be {valid}; got shape {arr.shape}.")


def to_channels(images: np.ndarray, channels: Optional[int]) -> np.ndarray:
    """uint8 (N, H, W, C) images with ``channels`` channels: grey repeated to 3, or RGB reduced to
    grey by BT.601 luma (rounded); None keeps them as they are."""
    have = images.shape[-1]
    if channels is None or channels == have:
        return images
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and have == 3:
        luma = images.astype(np.float32) @ np.array(LUMA, dtype=np.float32)
        return np.floor(luma + 0.5).clip(0, 255).astype(np.uint8)[..., None]
    raise TTAError(f"cannot give images with {have} channel(s) {channels} channels; use 1 or 3.")


#: ITU-R BT.601 luma weights (R, G, B), as Pillow's "L" conversion and OpenCV's RGB2GRAY use.
LUMA = (0.299, 0.587, 0.114)


def match_channels(x: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    """A float batch (B, C, H, W) with ``channels`` channels, for the model that reads it: grey
    repeated to 3, RGB reduced to grey by BT.601 luma (exact for grey that was repeated to RGB);
    None (the model's need is unknown) leaves the batch as it is."""
    have = x.shape[1]
    if channels is None or channels == have:
        return x
    if channels == 3 and have == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 1 and have == 3:
        return (x * _luma_weights(x.dtype, x.device)).sum(dim=1, keepdim=True)
    raise TTAError(
        f"the model takes {channels}-channel images but the batch has {have} channels; only "
        "grey (1) and RGB (3) images are converted."
    )


@functools.lru_cache(maxsize=16)
def _luma_weights(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """LUMA as a (1, 3, 1, 1) tensor, made once per dtype and device (a host-to-device copy on
    every batch would make the loop wait for the GPU)."""
    return torch.tensor(LUMA, dtype=dtype, device=device).view(1, 3, 1, 1)


def input_channels(model: nn.Module) -> Optional[int]:
    """Channels the model's first convolution reads (its first ``nn.Conv2d`` in registration
    order, which is the input layer of the usual networks), or None when it has none."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return None


def check_float_images(
    images: torch.Tensor, where: str, index: np.ndarray | Sequence[int] | None = None
) -> None:
    """Refuse NaN, Inf or values outside [0, 1] in float (B, ...) images, naming the first bad
    item (``index[b]`` when the batch holds rows ``index`` of a larger set). One vectorised pass
    per batch: a min and a max per item, no Python loop over items."""
    if images.numel() == 0:
        return
    flat = images.detach().reshape(images.shape[0], -1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # both propagate NaN
    bad = ~((lo >= 0) & (hi <= 1))
    if not bool(bad.any()):
        return
    b = int(torch.nonzero(bad)[0])
    item = int(index[b]) if index is not None else b
    count = int(bad.sum())
    others = f" ({count - 1} other item(s) too)" if count > 1 else ""
    row = flat[b]
    finite = torch.isfinite(row)
    if not bool(finite.all()):
        kinds = [k for k, m in (("NaN", torch.isnan(row)), ("Inf", torch.isinf(row))) if m.any()]
        problem = f"holds {' and '.join(kinds)} values"
    else:
        problem = f"spans [{float(lo[b]):.3g}, {float(hi[b]):.3g}], outside [0, 1]"
    raise TTAError(
        f"item {item} of {where} {problem}{others}. Float images must be finite and in [0, 1]; "
        "keep mean/std normalisation inside the model wrapper."
    )
