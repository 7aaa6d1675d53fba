"""Arrays in, CIFAR-10-C layout out (``tta corrupt`` with an array source).

Sources: a torchvision CIFAR folder (``cifar-10-batches-py`` or ``cifar-100-python``, or a folder
holding one; its test split), an ``.npz`` (its test split, ``test_images``/``test_labels`` or
``x_test``/``y_test``, when it has one, else ``images``/``labels``, ``x``/``y`` or
``x_train``/``y_train``), an ``.npy`` of images with ``labels.npy`` beside it, or a folder with
``labels.npy`` and one other ``.npy``. Images: uint8 (N, H, W, 3), (N, 3, H, W) or grey
(N, H, W) / (N, H, W, 1) / (N, 1, H, W), any size from 16x16 (grey is repeated to RGB). Output:
``<out>/<corruption>.npy`` with the requested severities stacked in ascending order in blocks of
N rows, the labels tiled once per severity, and ``<out>/manifest.json`` (severities, N, seed,
parameter table, source fingerprint). With all five severities this is exactly the release
layout, labels in ``labels.npy``. With a subset the labels go to ``subset_labels.npy`` instead,
so that readers of the release layout stop with a missing-file error rather than misreading the
blocks; ``tta.data.CIFARC`` reads such a folder (the manifest says which severities it holds).

The parameter table follows the image size (``--params``, see ``corruptions.corrupt``). Every
file is written under a temporary name and renamed when complete; a rerun skips the finished
``.npy`` files and refuses an output folder made with other settings.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import corruptions
from tta._errors import TTAError, TTAFileNotFoundError
from tta._io import atomic_write, remove_temp_files, write_json
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

# ---- shared by both layouts (tta.data.make_imagenetc uses these too) --------------------------

_EXPAND = {"all": corruptions.names(), "benchmark": corruptions.names("benchmark")}
#: The group names ``expand_names`` accepts besides corruption names.
GROUP_NAMES = ["all", "benchmark", *corruptions.GROUPS]


def expand_names(requested: list[str]) -> list[str]:
    """Names and group names to corruption names, in the standard order, without repeats."""
    check_corruption_names(requested, where="--corruptions", groups=GROUP_NAMES)
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
    """The requested severities (``--severities``), each in 1..5, sorted, without repeats."""
    bad = [s for s in severities if not 1 <= s <= 5]
    if bad:
        raise TTAError(f"severities must be in 1..5, got {bad}")
    if not severities:
        raise TTAError("--severities is empty; omit the option for all five severities")
    return sorted(set(severities))


def check_image_side(h: int, w: int, where: str) -> None:
    """Refuse images smaller than the corruptions handle (``corruptions.api.MIN_SIDE``)."""
    if min(h, w) < corruptions.api.MIN_SIDE:
        side = corruptions.api.MIN_SIDE
        raise TTAError(
            f"images in {where} are {h}x{w}; the corruptions need at least {side}x{side} pixels "
            "(their parameters were made for 32x32, 64x64 and 224x224 images)"
        )


def check_manifest(out: str, manifest: dict, keys: tuple[str, ...]) -> None:
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


# ---- array sources --------------------------------------------------------------------------


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
    check_image_side(rgb.shape[1], rgb.shape[2], repr(source))
    labels = labels.reshape(-1)
    check_counts(len(rgb), len(labels), f"{source!r}")
    return np.ascontiguousarray(rgb), labels


# ---- the CIFAR-10-C layout ------------------------------------------------------------------


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(images.tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def _save_npy(path: str, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


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


def remove_stale_files(out: str) -> None:
    """Delete the temporary files a killed run left directly in ``out``: ``atomic_write``'s, and
    the ``.<name>.npy.partial-<pid>`` files of tta versions before it wrote through it."""
    remove_temp_files(out, recursive=False)
    for stale in glob.glob(os.path.join(out, ".*.npy.partial-*")):
        os.remove(stale)


def write_cifarc(
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
    check_manifest(out, manifest, ("severities", "num_images", "seed", "params", "fingerprint"))
    small = labels.size == 0 or (labels.min() >= 0 and labels.max() < 256)
    tiled = np.tile(labels.astype(np.uint8 if small else np.int64), len(severities))
    # Only the full five-severity output is the release layout. A subset stores its labels under
    # another name, so that a release-layout reader fails loudly instead of misreading the blocks.
    label_name = "labels.npy" if severities == [1, 2, 3, 4, 5] else "subset_labels.npy"
    _save_npy(os.path.join(out, label_name), tiled)

    remove_stale_files(out)
    todo = [name for name in names if not os.path.isfile(os.path.join(out, f"{name}.npy"))]
    bar = tqdm(
        total=len(todo) * len(severities) * n, unit="img", desc="corrupt", disable=not progress
    )
    for name in todo:
        bar.set_postfix_str(name)
        atomic_write(
            os.path.join(out, f"{name}.npy"),
            lambda tmp, name=name: _fill(tmp, images, name, severities, seed, params, bar),
        )
    bar.close()
    return todo
