"""``tta corrupt``: write a corrupted copy of an image set with the corruptions package
(Hendrycks & Dietterich, ICLR 2019 parameters), in the layout of the matching release."""

from __future__ import annotations

import argparse
import os
from typing import Any

import corruptions
from tta._errors import TTAError
from tta._io import folder_lock
from tta.data import make_cifarc, make_imagenetc
from tta.data.arrays import user_path
from tta.data.make_cifarc import (
    check_image_side,
    check_severities,
    expand_names,
    load_source,
    write_cifarc,
)
from tta.data.make_imagenetc import is_image_folder, list_image_folder, write_imagenetc

# --help: what this command does, then each layout as its library module describes it.
DESCRIPTION = "\n\n".join(
    doc.strip() for doc in (__doc__, make_cifarc.__doc__, make_imagenetc.__doc__) if doc
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "corrupt",
        help="write a CIFAR-10-C- or ImageNet-C-layout dataset from an image set",
        description=DESCRIPTION,
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


def run(args: argparse.Namespace) -> int:
    names = expand_names(args.corruptions)
    severities = check_severities(args.severities)
    if args.size < 0:
        raise TTAError(
            f"--size must be 0 (keep each image's size) or a side in pixels, got {args.size}"
        )
    if args.size:
        check_image_side(args.size, args.size, "--size")
    source = os.fspath(user_path(args.source))
    out = os.fspath(user_path(args.out))
    if is_image_folder(source):
        listing = list_image_folder(source)
        with folder_lock(out):
            written = write_imagenetc(
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
        written_names = write_cifarc(
            images, labels, out, names, severities, args.seed, source, params=args.params
        )
    skipped = len(names) - len(written_names)
    print(
        f"wrote {len(written_names)} corruption file(s) to {args.out}"
        + (f", skipped {skipped} already complete" if skipped else "")
        + f" ({len(images)} images x {len(severities)} severities each)"
    )
    return 0
