"""Reading ``.npy`` / ``.npz`` files and checking image arrays, with errors that name the file.

Every reader of user arrays goes through here (CIFAR-C files, ``tta corrupt`` sources, ``.npz``
training sets), so that an empty, truncated or mismatched file stops with a ``TTAError`` naming
the file and what is wrong, not a numpy traceback, and before any subset is taken.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from tta._errors import TTAError, TTAFileNotFoundError

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


def pick(archive: NpzFile, keys: Sequence[str], what: str) -> np.ndarray:
    """The first of ``keys`` present in ``archive``, or a ``TTAError`` listing what it holds."""
    for key in keys:
        if key in archive:
            return archive[key]
    raise TTAError(
        f"{str(archive.path)!r} has no {what} array: expected one of "
        f"{', '.join(map(repr, keys))}, found {', '.join(map(repr, archive.files)) or 'nothing'}."
    )


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
