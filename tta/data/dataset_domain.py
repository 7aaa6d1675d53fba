"""Any map-style, torchvision-style dataset (``ds[i] -> (image, label)``) as a test domain."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from tta._errors import TTAError, TTATypeError
from tta.data.arrays import check_float_images
from tta.data.domain import Domain, Raw, check_labels


class TorchvisionDomain(Domain):
    """Wrap a dataset whose items are ``(image, label)``; images are PIL, uint8 HWC or float CHW.

    Labels come from ``labels=``, else the dataset's ``targets`` or ``labels`` attribute, so that
    streams can be ordered without decoding images. Each item's label is checked against them.
    ``transform`` (optional) is applied to each image before conversion, e.g. a resize.
    Runs read its batches through worker processes (``data.workers``), as items are decoded one
    at a time.
    """

    parallel_read = True

    def __init__(
        self,
        dataset: Any,
        name: str,
        labels: Any = None,
        transform: Callable[[Any], Any] | None = None,
        corruption: str | None = None,
        severity: int | None = None,
    ):
        super().__init__(name, corruption, severity)
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TTATypeError(
                f"dataset for domain {name!r} must support len() and ds[i] -> (image, label), "
                f"got {type(dataset).__name__}."
            )
        if labels is None:
            labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = getattr(dataset, "labels", None)
        if labels is None:
            raise TTAError(
                f"cannot find labels for domain {name!r}: the dataset has no 'targets' or 'labels' "
                "attribute; pass labels= (one integer per item) so streams can be ordered "
                "without decoding every image."
            )
        self.dataset = dataset
        self.transform = transform
        self._labels = check_labels(labels, len(dataset), f"domain {name!r}")

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def fingerprint(self) -> dict[str, Any]:
        """The base record plus the dataset's class (its images are not read)."""
        kind = type(self.dataset)
        return {**super().fingerprint(), "dataset": f"{kind.__module__}.{kind.__qualname__}"}

    def _read(self, rows: np.ndarray) -> Raw:
        # A map-style dataset can only be read one item at a time; this loop is its access pattern.
        images = []
        for i in rows.tolist():
            image, label = self.dataset[i]
            if int(label) != self._labels[i]:
                raise TTAError(
                    f"item {i} of domain {self.name!r} has label {int(label)} but its labels list "
                    f"says {int(self._labels[i])}; pass labels= that match the dataset."
                )
            if self.transform is not None:
                image = self.transform(image)
            images.append(image_to_raw(image, f"item {i} of domain {self.name!r}"))
        batch = stack_raw(images, self.name)
        if isinstance(batch, torch.Tensor):  # float items: one vectorised range check per batch
            check_float_images(batch, f"domain {self.name!r}", rows)
        return batch


def image_to_raw(image: Any, what: str) -> Raw:
    """One image as uint8 HWC numpy (PIL or uint8 arrays) or float CHW tensor in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
        if image.shape[2] != 3:
            raise TTAError(f"{what}: uint8 images must be (H, W, 3), got {image.shape}.")
        return image
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        image = torch.from_numpy(image)
    if isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 3:
        if image.shape[0] != 3:
            raise TTAError(
                f"{what}: float images must be (3, H, W) in [0, 1], got {tuple(image.shape)}."
            )
        return image.to(torch.float32)
    raise TTATypeError(
        f"{what}: expected a PIL image, uint8 (H, W, 3) array or float (3, H, W) tensor in [0, 1], "
        f"got {type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}."
    )


def stack_raw(images: list[Raw], name: str) -> Raw:
    """Stack single images into one ``Raw`` batch; all must share a size (else use a transform)."""
    if not images:
        return torch.empty((0, 3, 0, 0))
    shapes = {
        tuple(im.shape[:2]) if isinstance(im, np.ndarray) else tuple(im.shape[1:]) for im in images
    }
    if len(shapes) > 1:
        raise TTAError(
            f"images of domain {name!r} differ in size {sorted(shapes)}; pass a transform that "
            "resizes them to one size."
        )
    if all(isinstance(im, np.ndarray) for im in images):
        return np.stack(images)
    as_float = [
        torch.from_numpy(im).permute(2, 0, 1).float().div_(255.0)
        if isinstance(im, np.ndarray)
        else im
        for im in images
    ]
    return torch.stack(as_float)
