"""``load_model``: a network from a spec, optionally with local weights, taking [0, 1] input."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from tta._errors import TTAError
from tta.models.checkpoint import (
    PathLike,
    load_into,
    read_checkpoint,
    split_normalize,
)
from tta.models.normalize import NormalizedModel, Stats, _as_vector
from tta.models.registry import build_network, check_spec, classifier_key


def _build(spec: str, num_classes: Optional[int], seed: int, options: dict[str, Any]):
    # Weight initialisation draws from a seeded generator; the caller's global RNG state is kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(spec, num_classes, **options)


def _same(a: Stats, b: Stats) -> bool:
    """Equal statistics, a single value standing for every channel."""
    va, vb = _as_vector("a", a), _as_vector("b", b)
    if va is None or vb is None:
        return va is None and vb is None
    if va.numel() != vb.numel() and 1 in (va.numel(), vb.numel()):
        va, vb = torch.broadcast_tensors(va, vb)
    return va.shape == vb.shape and torch.allclose(va, vb, rtol=0, atol=1e-6)


def _resolve_stats(name: str, given: Stats, recorded: Stats, known: bool, where: str) -> Stats:
    """Explicit value, else the checkpoint's; refuse a conflict instead of guessing."""
    if given is None:
        return recorded
    if known and not _same(given, recorded):
        shown = None if recorded is None else list(_as_vector(name, recorded).tolist())
        raise TTAError(
            f"{where} records {name}={shown} (None means raw [0, 1] input) but {name}="
            f"{list(_as_vector(name, given).tolist())} was given; leave {name} unset to use the "
            "checkpoint's value"
        )
    return given


def load_model(
    spec: Optional[str] = None,
    checkpoint: Optional[PathLike] = None,
    num_classes: Optional[int] = None,
    mean: Stats = None,
    std: Stats = None,
    *,
    seed: int = 0,
    trusted: bool = False,
    **arch_options: Any,
) -> NormalizedModel:
    """Build ``spec`` (loading ``checkpoint`` if given) as a model that takes images in [0, 1].

    spec: ``resnet26`` (TTT/TENT CIFAR ResNet-26), ``wrn28_10`` (RobustBench WideResNet-28-10),
        ``resnet8`` / ``resnet20`` (smaller CIFAR ResNets), ``timm:<name>``,
        ``torchvision:<name>``. May be omitted for a checkpoint written by ``tta train``.
    checkpoint: a local file; raw state_dict or wrapped (see ``tta.models.checkpoint``).
    num_classes: default 10 for the CIFAR networks and the library default (1000) for timm /
        torchvision; with a checkpoint, taken from its classifier when unset.
    mean, std: per-channel input normalisation applied inside the model; None means the identity
        (raw [0, 1] input, as RobustBench ``Standard`` expects). A ``tta train`` checkpoint
        records its own values; a conflicting explicit value is an error.
    seed: seeds the weight initialisation (global RNG state is left untouched).
    trusted: allow full unpickling of checkpoints that ``weights_only=True`` refuses.
    arch_options: passed to the architecture (``width``, ``widen_factor``, timm keywords, ...).

    Returns a ``NormalizedModel`` in eval mode, on the CPU.
    """
    state_dict: Optional[dict[str, torch.Tensor]] = None
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        state_dict, meta = read_checkpoint(checkpoint, trusted=trusted)
    where = f"checkpoint {Path(checkpoint).expanduser() if checkpoint is not None else None}"
    recorded_spec = meta.get("spec")
    if spec is None:
        if recorded_spec is None:
            raise TTAError(
                "give a model spec (e.g. 'wrn28_10', 'resnet26', 'timm:resnet18')"
                + (f"; {where} does not record one" if checkpoint is not None else "")
            )
        spec = recorded_spec
    check_spec(spec)
    if recorded_spec is not None and recorded_spec != spec:
        raise TTAError(f"{where} was saved from model {recorded_spec!r}, not {spec!r}")
    options = {**meta.get("arch_options", {}), **arch_options}
    recorded_classes = meta.get("num_classes")
    if num_classes is not None and recorded_classes is not None and num_classes != recorded_classes:
        raise TTAError(
            f"class count mismatch: {where} has {recorded_classes} classes but "
            f"num_classes={num_classes} was given; leave num_classes unset to use the checkpoint's"
        )
    classes = num_classes if num_classes is not None else recorded_classes
    network = _build(spec, classes, seed, options)
    ck_mean = ck_std = None
    known = "mean" in meta
    if state_dict is not None:
        key = classifier_key(network)
        state_dict, ck_mean, ck_std = split_normalize(state_dict, set(network.state_dict()))
        if known:
            ck_mean, ck_std = meta.get("mean"), meta.get("std")
        known = known or ck_mean is not None
        if classes is None and key is not None and key in state_dict:
            found = int(state_dict[key].shape[0])
            if found != network.state_dict()[key].shape[0]:
                network = _build(spec, found, seed, options)
        load_into(network, state_dict, where, classifier=key)
    mean = _resolve_stats("mean", mean, ck_mean, known, where)
    std = _resolve_stats("std", std, ck_std, known, where)
    if state_dict is not None and not known and mean is None and spec != "wrn28_10":
        warnings.warn(
            f"{where} records no input normalisation and no mean/std was given, so the model "
            "takes raw [0, 1] images; if it was trained on normalised inputs pass mean= and "
            "std= (e.g. tta.models.CIFAR10_MEAN / CIFAR10_STD), or accuracy drops silently",
            stacklevel=2,
        )
    key = classifier_key(network)
    found_classes = int(network.state_dict()[key].shape[0]) if key else classes
    model = NormalizedModel(network, mean, std, spec, found_classes, options)
    return model.eval()
