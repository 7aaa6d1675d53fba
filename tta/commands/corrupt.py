"""``tta corrupt``: write a corrupted copy of an image set with the corruptions package
(Hendrycks & Dietterich, ICLR 2019 parameters), in the layout of the matching release.

Arrays in, CIFAR-10-C layout out. Sources: a torchvision CIFAR folder (``cifar-10-batches-py``
or ``cifar-100-python``, or a folder holding one; its test split), an ``.npz`` (its test split,
``test_images``/``test_labels`` or ``x_test``/``y_test``, when it has one, else
``images``/``labels``, ``x``/``y`` or ``x_train``/``y_train``), an ``.npy`` of images with
``labels.npy`` beside it, or a folder with ``labels.npy`` and one other ``.npy``. Images: uint8
(N, H, W, 3), (N, 3, H, W) or grey (N, H, W) / (N, H, W, 1) / (N, 1, H, W), any size from
16x16 (grey is repeated to RGB). Output: ``<out>/<corruption>.npy`` with the requested severities
stacked in ascending order in blocks of N rows, the labels tiled once per severity, and
``<out>/manifest.json`` (severities, N, seed, parameter table, source fingerprint). With all five
severities this is exactly the release layout, labels in ``labels.npy``. With a subset the labels
go to ``subset_labels.npy`` instead, so that readers of the release layout stop with a
missing-file error rather than misreading the blocks; ``tta.data.CIFARC`` reads such a folder
(the manifest says which severities it holds).

Image folder in, ImageNet-C layout out. Source: a folder of class folders, ``<class>/<image>``
(the ImageNet layout, e.g. ``val/n01440764/ILSVRC2012_val_00000293.JPEG``). Each image is
decoded with Pillow, resized so that its shorter side is 8/7 of ``--size`` (256 for 224) and
centre-cropped to ``--size`` x ``--size``, as the ImageNet-C release was made (``--size 0``
keeps every image as it is), corrupted, and written as
``<out>/<corruption>/<severity>/<class>/<image stem>.JPEG`` with JPEG quality 85 and an optimised
Huffman table, as ``make_imagenet_c.py`` saves. ``tta.data.ImageNetC`` reads the result.

Both: the parameter table follows the image size (``--params``, see ``corruptions.corrupt``). Every
file is written under a temporary name and renamed when complete; a rerun skips finished work
(whole ``.npy`` files; blocks of images whose files all exist, each block drawn from its own
seed, so a resumed run writes exactly what an uninterrupted one would) and refuses an output
folder made with other settings.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

import corruptions
from tta._errors import TTAError, TTAFileNotFoundError
from tta._io import atomic_write, folder_lock, remove_temp_files, write_json
from tta.data.arrays import (
    as_uint8_images,
    check_counts,
    load_npy,
    npz_keys_help,
    read_npz_splits,
    to_channels,
    user_path,
)
from tta.data.names import check_corruption_names
from tta.models.data import find_cifar_test_batch, read_cifar_batch

# Blocks of corrupt() calls in the array layout, in units of corrupt()'s own block for the image
# size, so the generator is consumed exactly as in one call over the whole set.
BLOCKS_PER_CALL = 8
# Images per seeded block in the image-folder layout: the unit a rerun redoes or skips.
FOLDER_BLOCK = 64
# JPEG settings of the ImageNet-C release (make_imagenet_c.py saves with quality=85, optimize=True).
JPEG_QUALITY = 85
# Extensions read from class folders (those of the reference's image folder loader).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm")
# The ImageNet evaluation view: shorter side to size * 256 / 224, then a centre crop.
RESIZE_RATIO = 256 / 224

_EXPAND = {"all": corruptions.names(), "benchmark": corruptions.names("benchmark")}
_GROUP_NAMES = ["all", "benchmark", *corruptions.GROUPS]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "corrupt",
        help="write a CIFAR-10-C- or ImageNet-C-layout dataset from an image set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", help="CIFAR folder, .npz, .npy (+labels.npy), layout folder or image folder"
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--corruptions",
        nargs="*",
        default=["all"],
        metavar="NAME",
        help="corruption names or groups (all, benchmark, noise, blur, weather, digital, extra)",
    )
    parser.add_argument("--severities", nargs="*", type=int, default=[1, 2, 3, 4, 5], metavar="S")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--params",
        default="auto",
        choices=list(corruptions.PARAM_CHOICES),
        help="parameter table: auto (by image size: 32 cifar, 64 tiny, else imagenet) or a table",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        metavar="N",
        help="image folders: resize (shorter side N*8/7) and centre-crop to NxN before corrupting "
        "(default 224, as ImageNet-C); 0 keeps each image's own size",
    )
    parser.set_defaults(func=run)


def expand_names(requested: list[str]) -> list[str]:
    """Names and group names to corruption names, in the standard order, without repeats."""
    check_corruption_names(requested, where="--corruptions", groups=_GROUP_NAMES)
    wanted: set[str] = set()
    for item in requested:
        if item in _EXPAND:
            wanted.update(_EXPAND[item])
        elif item in corruptions.GROUPS:
            wanted.update(corruptions.names(item))
        else:
            wanted.add(item)
    return [n for n in corruptions.names() if n in wanted]


def check_severities(severities: list[int]) -> list[int]:
    bad = [s for s in severities if not 1 <= s <= 5]
    if bad:
        raise TTAError(f"severities must be in 1..5, got {bad}")
    if not severities:
        raise TTAError("--severities is empty; omit the option for all five severities")
    return sorted(set(severities))


# ---- array sources -> CIFAR-10-C layout ----------------------------------------------------


def _cifar_folder(folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The test split of a torchvision CIFAR-10/100 python folder, or None if it is not one.

    Read with the library's restricted unpickler (``tta.models.data.read_cifar_batch``), which
    refuses any file that would run code."""
    found = find_cifar_test_batch(folder)
    if found is None:
        return None
    return read_cifar_batch(*found)


def _npz_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """The images to corrupt from an .npz: its test split when it has one, else its only split."""
    splits = read_npz_splits(source, name_keys=False)
    split = splits.test if splits.test is not None else splits.train
    assert split is not None  # read_npz_splits refuses a file with neither
    return split


def is_image_folder(folder: str) -> bool:
    """True when ``folder`` holds class folders with image files in them (``<class>/<image>``)."""
    for entry in os.scandir(folder):
        if entry.is_dir():
            for inner in os.scandir(entry.path):
                if inner.is_file() and inner.name.lower().endswith(IMAGE_EXTENSIONS):
                    return True
    return False


def load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and labels (N,) from any supported array source."""
    source = os.fspath(user_path(source))
    if os.path.isdir(source):
        found = _cifar_folder(source)
        if found is not None:
            images, labels = found
        else:
            label_path = os.path.join(source, "labels.npy")
            if not os.path.isfile(label_path):
                raise TTAFileNotFoundError(
                    f"{source!r} is not a CIFAR python folder (no test_batch or test+meta), has "
                    "no labels.npy and no class folders of images (<class>/<image>.JPEG); pass a "
                    "cifar-10-batches-py / cifar-100-python folder, an image folder, an .npz or "
                    "a folder with labels.npy and one images .npy"
                )
            others = sorted(
                p
                for p in glob.glob(os.path.join(source, "*.npy"))
                if os.path.basename(p) != "labels.npy"
            )
            if len(others) != 1:
                raise TTAError(
                    f"{source!r} must hold exactly one images .npy beside labels.npy to be a source, "
                    f"found {[os.path.basename(p) for p in others]}; pass the file itself, e.g. "
                    f"{os.path.join(source, 'clean.npy')!r}"
                )
            images, labels = load_npy(others[0], mmap=True), load_npy(label_path)
            check_counts(len(images), len(labels), f"{others[0]!r} with {label_path!r}")
    elif source.endswith(".npz") and os.path.isfile(source):
        images, labels = _npz_source(source)
    elif source.endswith(".npy") and os.path.isfile(source):
        label_path = os.path.join(os.path.dirname(os.path.abspath(source)), "labels.npy")
        if not os.path.isfile(label_path):
            raise TTAFileNotFoundError(f"no labels.npy beside {source!r}")
        images, labels = load_npy(source, mmap=True), load_npy(label_path)
        check_counts(len(images), len(labels), f"{source!r} with {label_path!r}")
    else:
        raise TTAFileNotFoundError(
            f"source {source!r} not found or not supported: use a CIFAR python folder, an image "
            "folder (<class>/<image>), an .npz, an .npy with labels.npy beside it, or a folder "
            f"with labels.npy ({npz_keys_help()})"
        )
    return _standardise(images, np.asarray(labels), source)


def _standardise(images: Any, labels: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    rgb = to_channels(as_uint8_images(images, repr(source)), 3)
    _check_side(rgb.shape[1], rgb.shape[2], repr(source))
    labels = labels.reshape(-1)
    check_counts(len(rgb), len(labels), f"{source!r}")
    return np.ascontiguousarray(rgb), labels


def _check_side(h: int, w: int, where: str) -> None:
    if min(h, w) < corruptions.api.MIN_SIDE:
        side = corruptions.api.MIN_SIDE
        raise TTAError(
            f"images in {where} are {h}x{w}; the corruptions need at least {side}x{side} pixels "
            "(their parameters were made for 32x32, 64x64 and 224x224 images)"
        )


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(images.tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def _atomic_save(path: str, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def _check_manifest(out: str, manifest: dict, keys: tuple[str, ...]) -> None:
    """Refuse an output folder whose manifest differs in ``keys``; then (re)write the manifest.

    A manifest from before ``params`` was recorded counts as ``params: auto`` (then the only
    behaviour)."""
    path = os.path.join(out, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        old.setdefault("params", "auto")
        diff = [k for k in keys if old.get(k) != manifest[k]]
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} there, {manifest[k]!r} now" for k in diff)
            raise TTAError(
                f"{out!r} was written with other settings ({details}); use another --out or "
                "delete that folder"
            )
    write_json(path, manifest)


def _fill(
    tmp: str,
    images: np.ndarray,
    name: str,
    severities: list[int],
    seed: int,
    params: str,
    bar: Any,
) -> None:
    """Corrupt every severity block into a new .npy at ``tmp`` (memory-mapped, then closed)."""
    n, h, w = images.shape[:3]
    shape = (len(severities) * n, h, w, 3)
    step = BLOCKS_PER_CALL * corruptions.chunk_size(h, w)
    result = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    for k, severity in enumerate(severities):
        gen = torch.Generator().manual_seed(corruptions.seed_for(seed, name, severity))
        for start in range(0, n, step):
            block = images[start : start + step]
            rows = slice(k * n + start, k * n + start + len(block))
            result[rows] = corruptions.corrupt(block, name, severity, gen, params=params)
            bar.update(len(block))
    result.flush()
    del result


def write_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    out: str,
    names: list[str],
    severities: list[int],
    seed: int,
    source: str = "",
    progress: bool = True,
    params: str = "auto",
) -> list[str]:
    """Write the CIFAR-10-C layout; returns the corruption names written (finished ones are
    skipped)."""
    os.makedirs(out, exist_ok=True)
    n, h, w = images.shape[:3]
    manifest = {
        "severities": severities,
        "num_images": n,
        "seed": seed,
        "params": params,
        "table": corruptions.table_name(h, w, params),
        "fingerprint": _fingerprint(images, labels),
        "source": os.path.abspath(source) if source else "",
        "layout": "<corruption>.npy: one block of num_images rows per severity, ascending",
    }
    _check_manifest(out, manifest, ("severities", "num_images", "seed", "params", "fingerprint"))
    small = labels.size == 0 or (labels.min() >= 0 and labels.max() < 256)
    tiled = np.tile(labels.astype(np.uint8 if small else np.int64), len(severities))
    # Only the full five-severity output is the release layout. A subset stores its labels under
    # another name, so that a release-layout reader fails loudly instead of misreading the blocks.
    label_name = "labels.npy" if severities == [1, 2, 3, 4, 5] else "subset_labels.npy"
    _atomic_save(os.path.join(out, label_name), tiled)

    for stale in glob.glob(os.path.join(out, ".*.npy.partial-*")):  # left by a killed run
        os.remove(stale)
    todo = [name for name in names if not os.path.isfile(os.path.join(out, f"{name}.npy"))]
    bar = tqdm(
        total=len(todo) * len(severities) * n, unit="img", desc="corrupt", disable=not progress
    )
    for name in todo:
        bar.set_postfix_str(name)
        path = os.path.join(out, f"{name}.npy")
        tmp = os.path.join(out, f".{name}.npy.partial-{os.getpid()}")  # hidden, not *.npy
        try:
            _fill(tmp, images, name, severities, seed, params, bar)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    bar.close()
    return todo


# ---- image folders -> ImageNet-C layout ----------------------------------------------------


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
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
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
            f"{', '.join(IMAGE_EXTENSIONS)})"
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
    _check_side(array.shape[0], array.shape[1], repr(path))
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


def write_image_folder(
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
    _check_manifest(out, manifest, ("num_images", "seed", "params", "size", "fingerprint"))
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


def run(args: argparse.Namespace) -> int:
    names = expand_names(args.corruptions)
    severities = check_severities(args.severities)
    if args.size < 0:
        raise TTAError(
            f"--size must be 0 (keep each image's size) or a side in pixels, got {args.size}"
        )
    if args.size:
        _check_side(args.size, args.size, "--size")
    source = os.fspath(user_path(args.source))
    out = os.fspath(user_path(args.out))
    image_folder = (
        os.path.isdir(source)
        and find_cifar_test_batch(source) is None
        and not os.path.isfile(os.path.join(source, "labels.npy"))
        and is_image_folder(source)
    )
    if image_folder:
        listing = list_image_folder(source)
        with folder_lock(out):
            written = write_image_folder(
                listing, out, names, severities, args.seed, args.size, args.params
            )
        total = len(names) * len(severities) * len(listing.items)
        print(
            f"wrote {written} image(s) to {args.out} in the ImageNet-C layout"
            + (f", skipped {total - written} already complete" if total > written else "")
            + f" ({len(listing.items)} images x {len(names)} corruptions x {len(severities)} "
            "severities)"
        )
        return 0
    images, labels = load_source(source)
    with folder_lock(out):
        written_names = write_dataset(
            images, labels, out, names, severities, args.seed, source, params=args.params
        )
    skipped = len(names) - len(written_names)
    print(
        f"wrote {len(written_names)} corruption file(s) to {args.out}"
        + (f", skipped {skipped} already complete" if skipped else "")
        + f" ({len(images)} images x {len(severities)} severities each)"
    )
    return 0
