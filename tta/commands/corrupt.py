"""``tta corrupt``: write a CIFAR-10-C-layout dataset (SPEC section 5) from any 32x32 image set,
with the corruptions package (Hendrycks & Dietterich, ICLR 2019 parameters).

Sources: a torchvision CIFAR folder (``cifar-10-batches-py`` or ``cifar-100-python``, or a folder
holding one), an ``.npz`` with ``images``/``labels`` (or ``x``/``y``), an ``.npy`` of images with
``labels.npy`` beside it, or a folder with ``labels.npy`` and one other ``.npy`` (e.g. a
CIFAR-C-like folder holding ``clean.npy``). Images: (N, 32, 32, 3), (N, 3, 32, 32) or grey
(N, 32, 32) uint8.

Output: ``<out>/<corruption>.npy`` with the requested severities stacked in ascending order in
blocks of N rows, the labels tiled once per severity, and ``<out>/manifest.json`` (severities, N,
seed, source fingerprint). With all five severities (the default) this is exactly the release
layout, labels in ``labels.npy``. With a subset the labels go to ``subset_labels.npy`` instead,
so that a reader of the release layout stops with a missing-file error rather than misreading
the blocks. Every file is written under a temporary name and renamed when complete; a rerun skips
finished corruptions, and refuses an output folder made with other settings.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import corruptions
from tta._errors import TTAError, TTAFileNotFoundError, TTATypeError, unknown
from tta._io import atomic_write, write_json
from tta.data.arrays import check_counts, load_npy, open_npz, pick, user_path
from tta.data.names import check_corruption_names
from tta.models.data import find_cifar_test_batch, read_cifar_batch

# Images per corrupt() call (progress granularity). A multiple of corrupt()'s own chunk, so the
# generator is consumed exactly as in one call over the whole set.
BLOCK = 8 * corruptions.api.CHUNK
_EXPAND = {"all": corruptions.names(), "benchmark": corruptions.names("benchmark")}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "corrupt",
        help="write a CIFAR-10-C-layout dataset from an image set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="CIFAR folder, .npz, .npy (+labels.npy) or layout folder")
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
    parser.set_defaults(func=run)


_GROUP_NAMES = ["all", "benchmark", *corruptions.GROUPS]


def expand_names(requested: list[str]) -> list[str]:
    """Names and group names to corruption names, in the standard order, without repeats."""
    check_corruption_names(requested, where="--corruptions", groups=_GROUP_NAMES)
    wanted: set[str] = set()
    for item in requested:
        if item in _EXPAND:
            wanted.update(_EXPAND[item])
        elif item in corruptions.GROUPS:
            wanted.update(corruptions.names(item))
        elif item in corruptions.names():
            wanted.add(item)
        else:  # a name tta.data knows but the generator does not: refuse, never skip silently
            raise TTAError(
                unknown("corruption or group", item, [*_GROUP_NAMES, *corruptions.names()])
            )
    return [n for n in corruptions.names() if n in wanted]


def check_severities(severities: list[int]) -> list[int]:
    bad = [s for s in severities if not 1 <= s <= 5]
    if bad:
        raise TTAError(f"severities must be in 1..5, got {bad}")
    if not severities:
        raise TTAError("--severities is empty; omit the option for all five severities")
    return sorted(set(severities))


def _cifar_folder(folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The test split of a torchvision CIFAR-10/100 python folder, or None if it is not one.

    Read with the library's restricted unpickler (``tta.models.data.read_cifar_batch``), which
    refuses any file that would run code."""
    found = find_cifar_test_batch(folder)
    if found is None:
        return None
    return read_cifar_batch(*found)


def load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) from any supported source."""
    source = os.fspath(user_path(source))
    if os.path.isdir(source):
        found = _cifar_folder(source)
        if found is not None:
            images, labels = found
        else:
            label_path = os.path.join(source, "labels.npy")
            if not os.path.isfile(label_path):
                raise TTAFileNotFoundError(
                    f"{source!r} is not a CIFAR python folder (no test_batch or test+meta) and has "
                    "no labels.npy; pass a cifar-10-batches-py / cifar-100-python folder, an .npz "
                    "or a folder with labels.npy and one images .npy"
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
        with open_npz(source) as archive:
            images = pick(archive, ("images", "x"), "images")
            labels = pick(archive, ("labels", "y"), "labels")
        check_counts(len(images), len(labels), f"{source!r}")
    elif source.endswith(".npy") and os.path.isfile(source):
        label_path = os.path.join(os.path.dirname(os.path.abspath(source)), "labels.npy")
        if not os.path.isfile(label_path):
            raise TTAFileNotFoundError(f"no labels.npy beside {source!r}")
        images, labels = load_npy(source, mmap=True), load_npy(label_path)
        check_counts(len(images), len(labels), f"{source!r} with {label_path!r}")
    else:
        raise TTAFileNotFoundError(
            f"source {source!r} not found or not supported: use a CIFAR python folder, an .npz, "
            "an .npy with labels.npy beside it, or a folder with labels.npy"
        )
    return _standardise(np.asarray(images), np.asarray(labels), source)


def _standardise(
    images: np.ndarray, labels: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8:
        raise TTATypeError(f"images in {source!r} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)  # grey -> RGB
    elif images.ndim == 4 and images.shape[1] == 3 and images.shape[3] != 3:
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise TTAError(
            f"images in {source!r} must be (N, 32, 32, 3), (N, 3, 32, 32) or (N, 32, 32), "
            f"got {images.shape}"
        )
    labels = labels.reshape(-1)
    check_counts(len(images), len(labels), f"{source!r}")
    return np.ascontiguousarray(images), labels


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


def _check_manifest(out: str, manifest: dict) -> None:
    path = os.path.join(out, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diff = [
            k
            for k in ("severities", "num_images", "seed", "fingerprint")
            if old.get(k) != manifest[k]
        ]
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} there, {manifest[k]!r} now" for k in diff)
            raise TTAError(
                f"{out!r} was written with other settings ({details}); use another --out or "
                "delete that folder"
            )
    write_json(path, manifest)


def _fill(
    tmp: str, images: np.ndarray, name: str, severities: list[int], seed: int, bar: Any
) -> None:
    """Corrupt every severity block into a new .npy at ``tmp`` (memory-mapped, then closed)."""
    n = len(images)
    shape = (len(severities) * n, 32, 32, 3)
    result = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    for k, severity in enumerate(severities):
        gen = torch.Generator().manual_seed(corruptions.seed_for(seed, name, severity))
        for start in range(0, n, BLOCK):
            block = images[start : start + BLOCK]
            rows = slice(k * n + start, k * n + start + len(block))
            result[rows] = corruptions.corrupt(block, name, severity, generator=gen)
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
) -> list[str]:
    """Write the layout; returns the corruption names written (finished ones are skipped)."""
    os.makedirs(out, exist_ok=True)
    n = len(images)
    manifest = {
        "severities": severities,
        "num_images": n,
        "seed": seed,
        "fingerprint": _fingerprint(images, labels),
        "source": os.path.abspath(source) if source else "",
        "layout": "<corruption>.npy: one block of num_images rows per severity, ascending",
    }
    _check_manifest(out, manifest)
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
            _fill(tmp, images, name, severities, seed, bar)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    bar.close()
    return todo


def run(args: argparse.Namespace) -> int:
    names = expand_names(args.corruptions)
    severities = check_severities(args.severities)
    images, labels = load_source(args.source)
    out, source = os.fspath(user_path(args.out)), os.fspath(user_path(args.source))
    written = write_dataset(images, labels, out, names, severities, args.seed, source)
    skipped = len(names) - len(written)
    print(
        f"wrote {len(written)} corruption file(s) to {args.out}"
        + (f", skipped {skipped} already complete" if skipped else "")
        + f" ({len(images)} images x {len(severities)} severities each)"
    )
    return 0
