"""Source models for test-time adaptation: networks by spec, local checkpoints, training.

Every model returned here takes images in [0, 1] and normalises them itself (docs/algorithms.md §5).
"""

from __future__ import annotations

from tta.models.checkpoint import read_checkpoint, save_checkpoint
from tta.models.data import mnist5k, read_cifar, read_npz
from tta.models.load import load_model
from tta.models.normalize import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    NormalizedModel,
)
from tta.models.registry import build_network, spec_names
from tta.models.train import TrainResult, evaluate, train_model

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
    "NormalizedModel",
    "TrainResult",
    "build_network",
    "evaluate",
    "load_model",
    "mnist5k",
    "read_checkpoint",
    "read_cifar",
    "read_npz",
    "save_checkpoint",
    "spec_names",
    "train_model",
]
