"""ImageNet-C (Hendrycks & Dietterich, ICLR 2019) read from the release folder layout with Pillow.

Layout (docs/algorithms.md §5): ``<root>/<corruption>/<severity>/<wnid>/<image>.JPEG``. Labels are the
index of the wnid in the sorted list of wnids (the standard ImageNet class order), so every domain
must hold the same set of wnid folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import numpy as np

from tta._errors import TTAError, TTAFileNotFoundError
from tta.data.arrays import user_path
from tta.data.dataset_domain import TorchvisionDomain
from tta.data.image_files import IMAGENETC_EXTENSIONS, is_image_file
from tta.data.names import (
    ALL_CORRUPTIONS,
    check_corruptions,
    check_severities,
    domain_name,
    present_in,
)

IMAGENETC_LAYOUT = """expected layout (the ImageNet-C release):
  <root>/<corruption>/<severity>/<wnid>/<image>.JPEG
  e.g. <root>/gaussian_noise/5/n01440764/ILSVRC2012_val_00000293.JPEG"""


def default_transform() -> Callable[[Any], Any]:
    """Resize the short side to 256 and centre-crop 224 (the usual ImageNet evaluation view)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])


class ImageFiles:
    """Image files with labels as a map-style dataset: item i is (file i as RGB PIL, label i)."""

    def __init__(self, files: Sequence[str], labels: Any):
        self.files = list(files)
        self.targets = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return im.convert("RGB"), int(self.targets[i])


class ImageFolderDomain(TorchvisionDomain):
    """Images listed as file paths with labels, decoded with Pillow when a batch asks for them
    (a ``TorchvisionDomain`` over ``ImageFiles``)."""

    def __init__(
        self,
        files: Sequence[str],
        labels: np.ndarray,
        name: str,
        transform: Callable[[Any], Any] | None = None,
        corruption: str | None = None,
        severity: int | None = None,
    ):
        if len(files) != len(labels):
            raise TTAError(
                f"domain {name!r} lists {len(files)} files but {len(labels)} labels; they must match."
            )
        dataset = ImageFiles(files, labels)
        super().__init__(dataset, name, dataset.targets, transform, corruption, severity)
        self.files = dataset.files

    def fingerprint(self) -> dict[str, Any]:
        """The base record plus the hash of the file names relative to their common folder (so
        a moved folder still matches); images replaced under the same name are not seen."""
        from tta._runs import sha256_names

        base = os.path.commonpath(self.files) if self.files else ""
        if len(self.files) == 1:
            base = os.path.dirname(base)
        rel = [os.path.relpath(f, base) for f in self.files]
        return {**super().fingerprint(), "names_sha256": sha256_names(rel)}


def ImageNetC(
    root: str | os.PathLike[str],
    corruptions: Iterable[str] | str | None = None,
    severities: Iterable[int] | int = (5,),
    transform: Callable[[Any], Any] | None | str = "default",
) -> list[ImageFolderDomain]:
    """One domain per (corruption, severity), corruption-major in the order requested.

    ``transform="default"`` resizes to 256 and centre-crops 224; ``None`` keeps images as stored
    (the release images are 224 x 224); any callable on a PIL image may be given instead.
    """
    names = check_corruptions(corruptions)
    sevs = check_severities(severities)
    root = os.fspath(user_path(root))
    if not os.path.isdir(root):
        raise TTAFileNotFoundError(
            f"ImageNet-C folder {root!r} does not exist.\n{IMAGENETC_LAYOUT}"
        )
    if isinstance(transform, str):
        if transform != "default":
            raise TTAError(
                f"transform {transform!r} is not valid; pass 'default', None or a callable."
            )
        transform = default_transform()
    wnids: list[str] | None = None
    first = ""
    domains: list[ImageFolderDomain] = []
    for corruption in names:
        cdir = os.path.join(root, corruption)
        if not os.path.isdir(cdir):
            present = present_in(
                ALL_CORRUPTIONS,
                (e.name for e in os.scandir(root) if e.is_dir() and e.name in ALL_CORRUPTIONS),
            )
            raise TTAFileNotFoundError(
                f"{cdir!r} is missing; corruptions present in {root!r}: "
                f"{', '.join(present) if present else 'none'}.\n{IMAGENETC_LAYOUT}"
            )
        for s in sevs:
            sdir = os.path.join(cdir, str(s))
            if not os.path.isdir(sdir):
                have = sorted(e.name for e in os.scandir(cdir) if e.is_dir())
                raise TTAFileNotFoundError(
                    f"{sdir!r} is missing; severity folders present: {', '.join(have) or 'none'}."
                    f"\n{IMAGENETC_LAYOUT}"
                )
            found = sorted(e.name for e in os.scandir(sdir) if e.is_dir())
            if not found:
                raise TTAFileNotFoundError(f"{sdir!r} holds no <wnid> folders.\n{IMAGENETC_LAYOUT}")
            if wnids is None:
                wnids, first = found, sdir
            elif found != wnids:
                extra = sorted(set(found) - set(wnids))[:5]
                lacking = sorted(set(wnids) - set(found))[:5]
                raise TTAError(
                    f"{sdir!r} has different class folders from {first!r} (extra: {extra}, "
                    f"missing: {lacking}); labels are indices into the sorted wnids, so every "
                    "domain must hold the same classes."
                )
            files, labels = _list_images(sdir, wnids)
            domains.append(
                ImageFolderDomain(
                    files, labels, domain_name(corruption, s), transform, corruption, s
                )
            )
    return domains


def _list_images(sdir: str, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    """All image files under ``sdir/<wnid>/``, sorted, with the wnid's index as label."""
    files: list[str] = []
    counts: list[int] = []
    for wnid in wnids:
        wdir = os.path.join(sdir, wnid)
        names = sorted(
            e.name for e in os.scandir(wdir) if is_image_file(e.name, IMAGENETC_EXTENSIONS)
        )
        files.extend(os.path.join(wdir, n) for n in names)
        counts.append(len(names))
    if not files:
        raise TTAFileNotFoundError(
            f"{sdir!r} holds no images ({', '.join(IMAGENETC_EXTENSIONS)}).\n{IMAGENETC_LAYOUT}"
        )
    labels = np.repeat(np.arange(len(wnids), dtype=np.int64), counts)
    return files, labels
