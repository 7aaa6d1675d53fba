"""A test domain (one corruption at one severity, or any labelled image set) read on demand.

Every domain answers ``len``, ``labels`` (all labels, without decoding images) and ``get(indices)``
(float images in [0, 1], NCHW). Streams only ever ask for the rows of one batch, so images stay in
their stored form (uint8, often memory-mapped) until a batch is formed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Union

import numpy as np
import torch

from tta._errors import TTAError, TTATypeError
from tta.data.arrays import check_float_images

#: What ``Domain.read_raw`` returns: uint8 (B, H, W, 3) numpy or float (B, 3, H, W) torch in [0, 1].
Raw = Union[np.ndarray, torch.Tensor]


class Domain(ABC):
    """Base class: a named, labelled set of images; subclasses implement ``labels`` and ``_read``."""

    #: Whether reading means decoding files one at a time, so that a pool of worker processes
    #: (``data.workers``) speeds it up; in-memory and memory-mapped domains read in-process.
    parallel_read: bool = False

    def __init__(self, name: str, corruption: str | None = None, severity: int | None = None):
        if not isinstance(name, str) or not name:
            raise TTAError(f"a domain needs a non-empty string name, got {name!r}.")
        self.name = name
        self.corruption = corruption
        self.severity = severity

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """All labels as a read-only int64 array (no image is decoded)."""

    @abstractmethod
    def _read(self, rows: np.ndarray) -> Raw:
        """Images at the already-validated ``rows`` in their stored form (see ``Raw``)."""

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)})"

    def check_indices(self, indices: Any) -> np.ndarray:
        """``indices`` as a 1-D int64 array, or an IndexError naming the first bad one."""
        rows = np.asarray(indices)
        if rows.ndim == 0:
            rows = rows.reshape(1)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise IndexError(
                f"indices for domain {self.name!r} must be a 1-D integer array, "
                f"got dtype {rows.dtype} and shape {rows.shape}."
            )
        rows = rows.astype(np.int64, copy=False)
        n = len(self)
        bad = (rows < 0) | (rows >= n)
        if bad.any():
            raise IndexError(
                f"index {int(rows[bad][0])} is out of range for domain {self.name!r} "
                f"with {n} samples (valid: 0..{n - 1})."
            )
        return rows

    def fingerprint(self) -> dict[str, Any]:
        """What a run records to recognise this domain when it resumes (JSON-able).

        Here: the class, the size and the labels' hash. The images are not read, since hashing
        them would cost a full pass over the data; subclasses that can name their content
        cheaply (arrays in memory, lists of files) add it.
        """
        from tta._runs import sha256_arrays

        return {
            "type": f"{type(self).__module__}.{type(self).__qualname__}",
            "samples": len(self),
            "labels_sha256": sha256_arrays(self.labels),
        }

    def read_raw(self, indices: Any) -> Raw:
        """Images at ``indices`` in their stored form: uint8 NHWC numpy or float NCHW tensor."""
        return self._read(self.check_indices(indices))

    def get(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: float32 images (B, 3, H, W) in [0, 1] and int64 labels (B,)."""
        rows = self.check_indices(indices)
        x = to_float(self._read(rows))
        y = torch.from_numpy(self.labels[rows])
        return x, y


def to_float(raw: Raw, out: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a ``Raw`` batch into a contiguous float32 (B, 3, H, W) tensor in [0, 1].

    ``out``: a contiguous float32 tensor of that shape to write into (e.g. in pinned memory, so
    the batch needs no second copy before a non-blocking transfer to a GPU).
    """
    if isinstance(raw, torch.Tensor):
        x = raw.to(torch.float32).contiguous()
        return x if out is None else out.copy_(x)
    # One numpy pass (uint8 -> float32, divide by 255, NHWC -> NCHW); the result is bit-identical
    # to torch's ``x.float() / 255`` but avoids intra-op thread start-up on small batches.
    b, h, w, c = raw.shape
    if out is None:
        out = torch.empty((b, c, h, w), dtype=torch.float32)
    np.divide(raw.transpose(0, 3, 1, 2), np.float32(255.0), out=out.numpy())
    return out


def check_labels(labels: Any, n: int | None, what: str) -> np.ndarray:
    """Validate labels (1-D, integer, non-negative, length ``n``) and return a read-only int64 copy."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise TTAError(f"labels for {what} must be 1-D, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TTATypeError(f"labels for {what} must be integers, got dtype {arr.dtype}.")
    if n is not None and len(arr) != n:
        raise TTAError(f"labels for {what} have length {len(arr)} but there are {n} images.")
    out = arr.astype(np.int64)
    if out.size and out.min() < 0:
        raise TTAError(f"labels for {what} must be >= 0, found {int(out.min())}.")
    out.setflags(write=False)
    return out


class ArrayDomain(Domain):
    """In-memory images with labels: uint8 numpy (N, H, W, 3) or float (N, 3, H, W) in [0, 1].

    uint8 arrays (including ``np.load(..., mmap_mode="r")`` memmaps) are kept as given and converted
    a batch at a time; float data is kept as one float32 torch tensor.
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        name: str,
        corruption: str | None = None,
        severity: int | None = None,
    ):
        super().__init__(name, corruption, severity)
        self._images = _check_images(images, name)
        self._labels = check_labels(labels, len(self._images), f"domain {name!r}")

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _read(self, rows: np.ndarray) -> Raw:
        if isinstance(self._images, torch.Tensor):
            return self._images[torch.from_numpy(rows)]
        return self._images[rows]

    def fingerprint(self) -> dict[str, Any]:
        """The base record plus the SHA-256 of every image (they are in memory or mapped)."""
        from tta._runs import sha256_arrays

        images = self._images
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        return {**super().fingerprint(), "images_sha256": sha256_arrays(array)}


def _check_images(images: Any, name: str) -> Raw:
    """Accept uint8 numpy images (RGB or grey, channels last or first) or float NCHW (numpy or
    torch, 3 or 1 channels) in [0, 1]; explain anything else. Grey stays one channel here: runs
    give a model the channel count its first convolution reads (grey repeated to RGB)."""
    valid = (
        "uint8 numpy (N, H, W, 3) or grey (N, H, W), or float (N, 3, H, W) / (N, 1, H, W) "
        "numpy/torch with values in [0, 1]"
    )
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        from tta.data.arrays import as_uint8_images

        return np.ascontiguousarray(as_uint8_images(images, f"domain {name!r}"))
    if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        dtype = getattr(images, "dtype", type(images).__name__)
        raise TTATypeError(f"images for domain {name!r} have dtype {dtype}; expected {valid}.")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise TTAError(
            f"float images for domain {name!r} must have shape (N, 3, H, W) or (N, 1, H, W), "
            f"got {tuple(images.shape)}."
        )
    images = images.detach().to(device="cpu", dtype=torch.float32).contiguous()
    check_float_images(images, f"domain {name!r}")
    return images
