"""Train a source model on labelled images: the starting point of every test-time adaptation run.

Standard CIFAR recipe: random crop after zero padding, optional horizontal flip (turn it off for
digits and text), SGD with momentum or Adam, cosine learning-rate decay to zero over all steps,
cross-entropy. Every random draw (initialisation, shuffling, augmentation) comes from the seed, so
a run on the CPU is repeatable bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tta._errors import TTAError, TTATypeError, unknown
from tta.models.checkpoint import PathLike, check_output_file, save_checkpoint
from tta.models.load import load_model
from tta.models.normalize import NormalizedModel, Stats

ArrayLike = Union[np.ndarray, torch.Tensor]
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainResult:
    """What ``train_model`` produced: the model (eval mode, CPU) and how training went."""

    model: NormalizedModel
    seconds: float
    train_loss: float
    train_accuracy: float
    test_accuracy: Optional[float]
    checkpoint: Optional[Path]
    info: dict[str, Any] = field(default_factory=dict)


def as_image_tensor(images: ArrayLike, name: str = "images") -> torch.Tensor:
    """Check and convert images to an NCHW tensor.

    uint8 input is in the data-release layout (N, H, W, C) and stays uint8 (scaled to [0, 1] per
    batch); floating input must already be NCHW in [0, 1] (normalisation belongs to the model).
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() != 4:
        raise TTAError(f"{name} must have 4 dimensions, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] not in (1, 3):
            raise TTAError(
                f"uint8 {name} must be (N, H, W, C) with C = 1 or 3, got shape {tuple(x.shape)}"
            )
        return x.permute(0, 3, 1, 2).contiguous()
    if not x.is_floating_point():
        raise TTATypeError(
            f"{name} must be uint8 (N, H, W, C) or float (N, C, H, W), got {x.dtype}"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise TTAError(
            f"float {name} must lie in [0, 1] (found [{x.min().item():.3g}, {x.max().item():.3g}]); "
            "pass raw images and give mean/std to the model instead of normalising the data"
        )
    return x.float()


def as_label_tensor(labels: ArrayLike, count: int, num_classes: Optional[int]) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dim() != 1 or y.shape[0] != count:
        raise TTAError(f"labels must have shape ({count},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TTATypeError(f"labels must be integers, got {y.dtype}")
    y = y.long()
    if count and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise TTAError(
            f"labels must lie in [0, {num_classes}) , found [{y.min().item()}, {y.max().item()}]"
            if num_classes is not None
            else f"labels must be non-negative, found {y.min().item()}"
        )
    return y


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def augment(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch (same size as the input) and random left-right flip.

    Offsets and flips are drawn on the CPU from ``generator``, so results do not depend on the
    device.
    """
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        index = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[index, channel, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: ArrayLike,
    labels: ArrayLike,
    batch_size: int = 500,
    device: Union[str, torch.device] = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` in eval mode on images in [0, 1] (see ``as_image_tensor``)."""
    x = as_image_tensor(images)
    y = as_label_tensor(labels, x.shape[0], None)
    if x.shape[0] == 0:
        raise TTAError("cannot evaluate on an empty set of images")
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        batch = _to_float(x[start : start + batch_size].to(device))
        pred = model(batch).argmax(1).cpu()
        correct += int((pred == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / x.shape[0]


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise TTAError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    if kind is int and int(value) != value:
        raise TTAError(f"{name} must be a positive int, got {value!r}")


def train_model(
    spec: str,
    images: ArrayLike,
    labels: ArrayLike,
    *,
    test_images: Optional[ArrayLike] = None,
    test_labels: Optional[ArrayLike] = None,
    num_classes: Optional[int] = None,
    mean: Stats = None,
    std: Stats = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: Optional[float] = None,
    momentum: float = 0.9,
    weight_decay: Optional[float] = None,
    crop_padding: int = 4,
    flip: bool = True,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    out: Optional[PathLike] = None,
    log: Optional[Callable[[str], None]] = None,
    **arch_options: Any,
) -> TrainResult:
    """Train ``spec`` from scratch on (images, labels); optionally test and save a checkpoint.

    images: uint8 (N, H, W, C) or float (N, C, H, W) in [0, 1]. labels: integers.
    num_classes: default ``max(labels) + 1``. mean/std: normalisation inside the model.
    optimizer: ``sgd`` (default lr 0.1, momentum 0.9, weight decay 5e-4) or ``adam`` (default
        lr 1e-3, no weight decay); the learning rate follows a cosine decay to 0 over all steps.
    crop_padding: pixels of zero padding for the random crop (0 turns cropping off).
    flip: random horizontal flips (turn off for digits and text).
    out: where to write the checkpoint (atomically); ``load_model(checkpoint=out)`` reloads it.
    log: called with one line per epoch (e.g. ``print``).
    """
    if optimizer not in OPTIMIZERS:
        raise TTAError(unknown("optimizer", optimizer, OPTIMIZERS))
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise TTAError(f"crop_padding must be a non-negative int, got {crop_padding!r}")
    lr = (0.1 if optimizer == "sgd" else 1e-3) if lr is None else lr
    _check_positive("lr", lr, float)
    if weight_decay is None:
        weight_decay = 5e-4 if optimizer == "sgd" else 0.0
    if weight_decay < 0:
        raise TTAError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if out is not None:
        check_output_file(out)  # before training, not after it
    x = as_image_tensor(images)
    n = x.shape[0]
    if n < 2:
        raise TTAError(f"need at least 2 training images, got {n}")
    y = as_label_tensor(labels, n, num_classes)
    if num_classes is None:
        num_classes = int(y.max()) + 1
    device = torch.device(device)

    model = load_model(spec, None, num_classes, mean, std, seed=seed, **arch_options)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    # Drop a last partial batch only if it would hold one image (BatchNorm needs two).
    batches = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if batches[-1][1] - batches[-1][0] < 2:
        batches.pop()
    total_steps, step = epochs * len(batches), 0
    data = x.to(device)
    targets = y.to(device)
    start = time.perf_counter()
    loss_sum = correct = seen = 0.0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = correct = seen = 0.0
        for lo, hi in batches:
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            idx = order[lo:hi]
            batch = augment(_to_float(data[idx]), crop_padding, flip, generator)
            logits = model(batch)
            loss = F.cross_entropy(logits, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * (hi - lo)
            correct += float((logits.argmax(1) == targets[idx]).sum())
            seen += hi - lo
        if log is not None:
            log(
                f"epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f}, "
                f"train accuracy {correct / seen:.4f}, {time.perf_counter() - start:.1f}s"
            )
    seconds = time.perf_counter() - start
    model.eval()
    test_accuracy = None
    if test_images is not None and test_labels is not None and len(test_labels):
        test_accuracy = evaluate(model, test_images, test_labels, device=device)
        if log is not None:
            log(f"test accuracy {test_accuracy:.4f} on {len(test_labels)} images")
    model.cpu()
    info = {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "crop_padding": crop_padding,
        "flip": flip,
        "seed": seed,
        "train_images": n,
        "seconds": seconds,
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "test_accuracy": test_accuracy,
        "device": str(device),
        "torch": str(torch.__version__),
    }
    path = save_checkpoint(model, out, info) if out is not None else None
    return TrainResult(model, seconds, loss_sum / seen, correct / seen, test_accuracy, path, info)
