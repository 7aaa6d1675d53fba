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
from tta.models.pretrained import (
    build_timm_pretrained,
    build_torchvision_pretrained,
    load_robustbench,
)
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
    weights: Any = None,
    pretrained: bool = False,
    pretrained_tag: Optional[str] = None,
    model_dir: Optional[PathLike] = None,
    seed: int = 0,
    trusted: bool = False,
    **arch_options: Any,
) -> NormalizedModel:
    """Build ``spec`` (loading ``checkpoint`` if given) as a model that takes images in [0, 1].

    spec: ``resnet26`` (TTT/TENT CIFAR ResNet-26), ``wrn28_10`` (RobustBench WideResNet-28-10),
        ``resnet8`` / ``resnet20`` (smaller CIFAR ResNets), ``timm:<name>``,
        ``torchvision:<name>``, ``robustbench:<dataset>/<threat_model>/<name>`` (RobustBench's
        model zoo, loaded by the ``robustbench`` package unless a ``checkpoint`` is given).
        May be omitted for a checkpoint written by ``tta train``.
    checkpoint: a local file; raw state_dict or wrapped (see ``tta.models.checkpoint``). With
        ``timm:<name>`` and ``pretrained=True`` it is read by timm
        (``pretrained_cfg_overlay=dict(file=...)``).
    weights: ``torchvision:<name>`` only: a member name of the model's weights enum
        (``IMAGENET1K_V1``, ``DEFAULT``, ...), loaded by torchvision (downloaded into
        ``$TORCH_HOME/hub/checkpoints`` if not there yet); the weights' preprocessing mean/std
        become the model's normalisation.
    pretrained, pretrained_tag: ``timm:<name>`` only: ``timm.create_model(pretrained=True)``
        (Hugging Face cache), the tag choosing the weights (``a1_in1k`` or ``resnet50.a1_in1k``;
        a tag implies ``pretrained``); mean/std from the model's ``pretrained_cfg``.
    model_dir: ``robustbench:`` only: RobustBench's checkpoint folder (files at
        ``<model_dir>/<dataset>/<threat_model>/<name>.pt``); default
        ``$XDG_CACHE_HOME/tta/robustbench`` (``~/.cache/tta/robustbench``).
    num_classes: default 10 for the CIFAR networks and the library default (1000) for timm /
        torchvision; with a checkpoint, taken from its classifier when unset.
    mean, std: per-channel input normalisation applied inside the model; None means the identity
        (raw [0, 1] input, as RobustBench ``Standard`` expects). A ``tta train`` checkpoint
        records its own values; a conflicting explicit value is an error. With pretrained
        torchvision / timm weights the weights' values are used; an explicit value wins, with a
        warning when it differs. RobustBench models take none (they normalise as RobustBench
        defines).
    seed: seeds the weight initialisation (global RNG state is left untouched).
    trusted: allow full unpickling of checkpoints that ``weights_only=True`` refuses.
    arch_options: passed to the architecture (``width``, ``widen_factor``, timm keywords, ...).

    Returns a ``NormalizedModel`` in eval mode, on the CPU.
    """
    pretrained = bool(pretrained) or pretrained_tag is not None
    family = spec.partition(":")[0] if isinstance(spec, str) and ":" in spec else None
    _check_sources(spec, family, checkpoint, weights, pretrained, model_dir, mean, std)
    if weights is not None or pretrained:
        return _load_pretrained(
            spec,
            family,
            checkpoint,
            num_classes,
            mean,
            std,
            weights,
            pretrained_tag,
            seed,
            arch_options,
        )
    if family == "robustbench" and checkpoint is None:
        if arch_options:
            raise TTAError(
                f"model {spec!r} takes no architecture options, got "
                f"{', '.join(map(repr, arch_options))}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network, classes = load_robustbench(spec, model_dir)
        if num_classes is not None and int(num_classes) != classes:
            raise TTAError(f"model {spec!r} has {classes} classes, not num_classes={num_classes}")
        return NormalizedModel(network, None, None, spec, classes, {}).eval()
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
    raw_input = spec == "wrn28_10" or spec.startswith("robustbench:")
    if state_dict is not None and not known and mean is None and not raw_input:
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


def _check_sources(
    spec: Any,
    family: Optional[str],
    checkpoint: Optional[PathLike],
    weights: Any,
    pretrained: bool,
    model_dir: Optional[PathLike],
    mean: Stats,
    std: Stats,
) -> None:
    """Refuse keyword combinations that name no single source of weights."""
    if weights is not None:
        if family != "torchvision":
            raise TTAError(
                f"weights={weights!r} is for torchvision:<name> specs (a weights enum member such "
                f"as 'IMAGENET1K_V1' or 'DEFAULT'), not model {spec!r}; timm models take "
                "pretrained=True, RobustBench models load their own weights"
            )
        if checkpoint is not None:
            raise TTAError(
                f"give weights={weights!r} or checkpoint={str(checkpoint)!r} for {spec!r}, not both"
            )
    if pretrained and family != "timm":
        raise TTAError(
            f"pretrained=True / pretrained_tag are for timm:<name> specs, not model {spec!r}; "
            "torchvision models take weights='DEFAULT' (or a weights enum name), RobustBench "
            "models load their own weights"
        )
    if model_dir is not None:
        if family != "robustbench":
            raise TTAError(
                f"model_dir is RobustBench's checkpoint folder, for robustbench:<dataset>/"
                f"<threat_model>/<name> specs, not model {spec!r}"
            )
        if checkpoint is not None:
            raise TTAError(
                f"give model_dir or checkpoint={str(checkpoint)!r} for {spec!r}, not both"
            )
    if family == "robustbench" and (mean is not None or std is not None):
        raise TTAError(
            f"model {spec!r} takes [0, 1] input and normalises it as RobustBench defines; leave "
            "mean and std unset"
        )


def _pretrained_stats(given: tuple[Stats, Stats], library: tuple[Stats, Stats], label: str):
    """Explicit mean/std where given (one warning when they differ from the weights'), else the
    weights' own."""
    out, differ = [], []
    for name, mine, theirs in zip(("mean", "std"), given, library):
        out.append(theirs if mine is None else mine)
        if mine is not None and theirs is not None and not _same(mine, theirs):
            differ.append(
                f"{name}={list(theirs)}, but {name}={_as_vector(name, mine).tolist()} was given"
            )
    if differ:
        warnings.warn(
            f"{label} were trained with {'; '.join(differ)}; the given values are used",
            stacklevel=4,
        )
    return out[0], out[1]


def _load_pretrained(
    spec: str,
    family: Optional[str],
    checkpoint: Optional[PathLike],
    num_classes: Optional[int],
    mean: Stats,
    std: Stats,
    weights: Any,
    pretrained_tag: Optional[str],
    seed: int,
    options: dict[str, Any],
) -> NormalizedModel:
    check_spec(spec)
    name = spec.partition(":")[2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "torchvision":
            network, lib_mean, lib_std = build_torchvision_pretrained(
                name, weights, num_classes, options
            )
            label = f"{spec} weights {weights}"
        else:
            network, lib_mean, lib_std = build_timm_pretrained(
                name, pretrained_tag, checkpoint, num_classes, options
            )
            label = f"{spec} pretrained weights" + (f" {pretrained_tag}" if pretrained_tag else "")
    mean, std = _pretrained_stats((mean, std), (lib_mean, lib_std), label)
    key = classifier_key(network)
    classes = int(network.state_dict()[key].shape[0]) if key else num_classes
    return NormalizedModel(network, mean, std, spec, classes, options).eval()
