"""Image folder in, ImageNet-C layout out (``tta corrupt`` with an image folder).

Source: a folder of class folders, ``<class>/<image>`` (the ImageNet layout, e.g.
``val/n01440764/ILSVRC2012_val_00000293.JPEG``). Each image is decoded with Pillow, resized so
that its shorter side is 8/7 of ``--size`` (256 for 224) and centre-cropped to ``--size`` x
``--size``, as the ImageNet-C release was made (``--size 0`` keeps every image as it is),
corrupted, and written as ``<out>/<corruption>/<severity>/<class>/<image stem>.JPEG`` with JPEG
quality 85 and an optimised Huffman table, as ``make_imagenet_c.py`` saves. ``tta.data.ImageNetC``
reads the result.

The parameter table follows the image size (``--params``, see ``corruptions.corrupt``). Every
file is written under a temporary name and renamed when complete; a rerun skips the blocks of
images whose files all exist (each block is drawn from its own seed, so a resumed run writes
exactly what an uninterrupted one would) and refuses an output folder made with other settings.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

import corruptions
from tta._errors import TTAError, TTAFileNotFoundError
from tta._io import atomic_write, remove_temp_files, write_json
from tta.data.image_files import SOURCE_IMAGE_EXTENSIONS, is_image_file
from tta.data.make_cifarc import check_image_side, check_manifest
from tta.models.data import find_cifar_test_batch

# Images per seeded block: the unit a rerun redoes or skips.
FOLDER_BLOCK = 64
# JPEG settings of the ImageNet-C release (make_imagenet_c.py saves with quality=85, optimize=True).
JPEG_QUALITY = 85
# The ImageNet evaluation view: shorter side to size * 256 / 224, then a centre crop.
RESIZE_RATIO = 256 / 224


@dataclass
class ImageList:
    """The images of a class-folder tree: sorted classes, and (class, file name) per image."""

    root: str
    classes: list[str]
    items: list[tuple[str, str]]

    def path(self, i: int) -> str:
        cls, name = self.items[i]
        return os.path.join(self.root, cls, name)

    def out_name(self, i: int) -> str:
        return os.path.splitext(self.items[i][1])[0] + ".JPEG"

    def fingerprint(self) -> str:
        """Hash of every relative path and file size (the content is not read: too slow for
        50,000 JPEGs, and a changed file almost always changes size)."""
        h = hashlib.sha256()
        for i, (cls, name) in enumerate(self.items):
            h.update(f"{cls}/{name}:{os.path.getsize(self.path(i))}\n".encode())
        return h.hexdigest()[:16]


def is_image_folder(source: str) -> bool:
    """True when ``source`` is to be read as an image folder: a folder that is no array source
    (not a CIFAR python folder, no ``labels.npy``) and holds class folders with image files in
    them (``<class>/<image>``)."""
    if not os.path.isdir(source) or find_cifar_test_batch(source) is not None:
        return False
    if os.path.isfile(os.path.join(source, "labels.npy")):
        return False
    for entry in os.scandir(source):
        if entry.is_dir():
            for inner in os.scandir(entry.path):
                if inner.is_file() and is_image_file(inner.name, SOURCE_IMAGE_EXTENSIONS):
                    return True
    return False


def list_image_folder(root: str) -> ImageList:
    """Class folders (sorted; their index is the label, as ImageNet-C's reader assumes) and the
    image files directly inside each (sorted). Two files of one class with the same stem would
    write the same ``.JPEG`` and are refused."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    items: list[tuple[str, str]] = []
    for cls in classes:
        names = sorted(
            e.name
            for e in os.scandir(os.path.join(root, cls))
            if e.is_file() and is_image_file(e.name, SOURCE_IMAGE_EXTENSIONS)
        )
        stems: dict[str, str] = {}
        for name in names:
            stem = os.path.splitext(name)[0]
            if stem in stems:
                raise TTAError(
                    f"{os.path.join(root, cls)!r} holds {stems[stem]!r} and {name!r}: both would be "
                    f"written as {stem + '.JPEG'!r}; rename one"
                )
            stems[stem] = name
        items.extend((cls, name) for name in names)
    if not items:
        raise TTAFileNotFoundError(
            f"{root!r} holds no images in class folders (<class>/<image>, extensions "
            f"{', '.join(SOURCE_IMAGE_EXTENSIONS)})"
        )
    return ImageList(root, classes, items)


def load_view(path: str, size: int) -> np.ndarray:
    """One image as uint8 (H, W, 3): resized (shorter side size * 256/224, Pillow bilinear) and
    centre-cropped to size x size as torchvision's Resize + CenterCrop do; size 0 keeps it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise TTAError(f"cannot read image {path!r} ({err}); fix or remove the file") from None
    if size:
        w, h = image.size
        short = int(round(size * RESIZE_RATIO))
        if w <= h:
            new = (short, int(short * h / w))
        else:
            new = (int(short * w / h), short)
        image = image.resize(new, Image.BILINEAR)
        w, h = image.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image)
    check_image_side(array.shape[0], array.shape[1], repr(path))
    return array


def save_jpeg(path: str, image: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    """Write uint8 (H, W, 3) as JPEG (Pillow, optimised Huffman tables) atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())

    atomic_write(path, write)


def block_seed(seed: int, name: str, severity: int, block: int) -> int:
    """The seed of one block of images of one (corruption, severity)."""
    base = corruptions.seed_for(seed, name, severity)
    return int(np.random.SeedSequence([base, block]).generate_state(1)[0])


def corrupt_views(
    views: list[np.ndarray], name: str, severity: int, gen: torch.Generator, params: str
) -> list[np.ndarray]:
    """Corrupt images that may differ in size: one call per size, in order of first appearance."""
    out: list[Optional[np.ndarray]] = [None] * len(views)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(v.shape[:2], []).append(i)
    for members in groups.values():
        batch = np.stack([views[i] for i in members])
        result = corruptions.corrupt(batch, name, severity, gen, params=params)
        for k, i in enumerate(members):
            out[i] = result[k]
    return out  # type: ignore[return-value]


def write_imagenetc(
    listing: ImageList,
    out: str,
    names: list[str],
    severities: list[int],
    seed: int,
    size: int = 224,
    params: str = "auto",
    progress: bool = True,
) -> int:
    """Write ``<out>/<corruption>/<severity>/<class>/<stem>.JPEG``; returns images written.

    Blocks of ``FOLDER_BLOCK`` images whose files all exist are skipped; any other block is
    corrupted whole from its own seed (``block_seed``) and written again.
    """
    os.makedirs(out, exist_ok=True)
    manifest = {
        "num_images": len(listing.items),
        "classes": len(listing.classes),
        "seed": seed,
        "params": params,
        "size": size,
        "quality": JPEG_QUALITY,
        "fingerprint": listing.fingerprint(),
        "source": os.path.abspath(listing.root),
        "layout": "<corruption>/<severity>/<class>/<image>.JPEG (ImageNet-C)",
        "complete": False,  # true once every requested image is written
    }
    check_manifest(out, manifest, ("num_images", "seed", "params", "size", "fingerprint"))
    remove_temp_files(out)  # left by a killed run
    n = len(listing.items)
    starts = range(0, n, FOLDER_BLOCK)
    bar = tqdm(
        total=len(names) * len(severities) * n, unit="img", desc="corrupt", disable=not progress
    )
    written = 0
    views: dict[int, np.ndarray] = {}  # decoded views of the current block, reused across domains
    for start in starts:
        rows = range(start, min(start + FOLDER_BLOCK, n))
        views.clear()
        for name in names:
            for severity in severities:
                folder = os.path.join(out, name, str(severity))
                targets = [
                    os.path.join(folder, listing.items[i][0], listing.out_name(i)) for i in rows
                ]
                if start == 0:
                    for cls in listing.classes:  # every class, even an empty one, as in the source
                        os.makedirs(os.path.join(folder, cls), exist_ok=True)
                bar.set_postfix_str(f"{name}-{severity}")
                if all(os.path.isfile(t) for t in targets):
                    bar.update(len(rows))
                    continue
                for i in rows:
                    if i not in views:
                        views[i] = load_view(listing.path(i), size)
                gen = torch.Generator().manual_seed(block_seed(seed, name, severity, start))
                result = corrupt_views([views[i] for i in rows], name, severity, gen, params)
                for target, image in zip(targets, result):
                    save_jpeg(target, image)
                written += len(rows)
                bar.update(len(rows))
    bar.close()
    write_json(os.path.join(out, "manifest.json"), {**manifest, "complete": True})
    return written
