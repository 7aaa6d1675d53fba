"""Pretrained weights through each library's own loader: torchvision's weights enums, timm's
``pretrained=True`` and RobustBench's model zoo.

Each library downloads into its own cache on a connected machine and reads the cached file
otherwise (torchvision: ``$TORCH_HOME/hub/checkpoints/``; timm: the Hugging Face cache
``$HF_HOME/hub/``; RobustBench: ``<model_dir>/<dataset>/<threat_model>/<name>.pt``). When a file is
missing and cannot be downloaded, the error names the file, the URL tried and where to put the file
to run offline.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from tta._errors import TTAError, TTATypeError, did_you_mean, unknown
from tta.models.checkpoint import PathLike, check_file

Stats = Optional[tuple[float, ...]]

ROBUSTBENCH_DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")
ROBUSTBENCH_INSTALL = 'pip install "tta[robustbench]"'


def _short(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:240]


def _stats(value: Any) -> Stats:
    return None if value is None else tuple(float(v) for v in value)


# -- torchvision ---------------------------------------------------------------------------------


def torchvision_weights(name: str, weights: Any) -> Any:
    """The member of ``name``'s weights enum named ``weights`` (``IMAGENET1K_V1``, ``DEFAULT``, ...;
    ``ResNet50_Weights.IMAGENET1K_V1`` or the member itself are accepted too)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except Exception:  # models registered without a weights enum
        raise TTAError(f"torchvision model {name!r} has no pretrained weights enum") from None
    if isinstance(weights, enum):
        return weights
    if not isinstance(weights, str):
        raise TTATypeError(
            f"weights must be the name of a {enum.__name__} member (e.g. 'DEFAULT'), "
            f"got {type(weights).__name__}"
        )
    key = weights.split(".", 1)[1] if weights.startswith(f"{enum.__name__}.") else weights
    if key not in enum.__members__:
        raise TTAError(
            unknown(
                f"weights for torchvision:{name} ({enum.__name__})", weights, list(enum.__members__)
            )
        )
    return enum[key]


def torchvision_cache_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and looks first for) ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def build_torchvision_pretrained(
    name: str, weights: Any, num_classes: Optional[int], options: dict[str, Any]
) -> tuple[nn.Module, Stats, Stats]:
    """torchvision model ``name`` with ``weights`` loaded by torchvision; (network, mean, std)."""
    import torchvision

    member = torchvision_weights(name, weights)
    label = f"torchvision:{name} weights {type(member).__name__}.{member.name}"
    classes = len(member.meta.get("categories") or []) or None
    if num_classes is not None and classes is not None and int(num_classes) != classes:
        raise TTAError(
            f"{label} have {classes} classes but num_classes={num_classes} was given; leave "
            "num_classes unset (or load without weights to train a new classifier)"
        )
    cached = torchvision_cache_file(member.url)
    try:
        network = torchvision.models.get_model(name, weights=member, **options)
    except TypeError as err:
        raise TTATypeError(f"bad option for model 'torchvision:{name}': {err}") from None
    except Exception as err:
        if cached.is_file():
            raise TTAError(
                f"{label}: the cached file {cached} could not be loaded ({_short(err)}); it is "
                f"damaged or incomplete: delete it (it is downloaded again from {member.url}) or "
                "replace it with a good copy"
            ) from None
        raise TTAError(
            f"{label} need the file {cached.name}, which could not be downloaded from "
            f"{member.url} ({_short(err)}); to run offline, download it on a connected machine "
            f"and place it at {cached} (torch.hub's cache: $TORCH_HOME/hub/checkpoints)"
        ) from None
    transforms = member.transforms()
    return (
        network,
        _stats(getattr(transforms, "mean", None)),
        _stats(getattr(transforms, "std", None)),
    )


# -- timm ----------------------------------------------------------------------------------------


def timm_pretrained_name(name: str, tag: Optional[str]) -> str:
    """``name`` or ``name.tag``, checked against ``timm.list_pretrained``."""
    import timm

    available = timm.list_pretrained(f"{name}.*")
    if tag is None:
        if not available:
            raise TTAError(
                f"timm model {name!r} has no pretrained weights; see timm.list_pretrained()"
            )
        return name
    full = str(tag) if "." in str(tag) else f"{name}.{tag}"
    if full.split(".", 1)[0] != name:
        raise TTAError(
            f"pretrained_tag {tag!r} is for another architecture than timm:{name}; give a tag of "
            f"{name} (e.g. {available[0] if available else name + '.<tag>'!r})"
        )
    if full not in available:
        raise TTAError(unknown(f"pretrained_tag for timm:{name}", str(tag), available))
    return full


def build_timm_pretrained(
    name: str,
    tag: Optional[str],
    file: Optional[PathLike],
    num_classes: Optional[int],
    options: dict[str, Any],
) -> tuple[nn.Module, Stats, Stats]:
    """timm model ``name`` (``name.tag``) built with ``pretrained=True``; weights from timm's
    download / cache, or from ``file`` through ``pretrained_cfg_overlay=dict(file=...)``."""
    import timm

    full = timm_pretrained_name(name, tag)
    kwargs = dict(options)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if file is not None:
        path = check_file(file)
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
    try:
        network = timm.create_model(full, pretrained=True, **kwargs)
    except TypeError as err:
        raise TTATypeError(f"bad option for model 'timm:{name}': {err}") from None
    except Exception as err:
        if file is not None:
            raise TTAError(
                f"checkpoint {path} could not be loaded as the pretrained weights of timm:{full} "
                f"({_short(err)}); check the model name and tag"
            ) from None
        raise TTAError(_timm_offline_message(full, err)) from None
    cfg = getattr(network, "pretrained_cfg", None) or {}
    return network, _stats(cfg.get("mean")), _stats(cfg.get("std"))


def _timm_offline_message(full: str, err: BaseException) -> str:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(full)
    label = f"timm:{full}" + (f" (weights {cfg.hf_hub_id})" if cfg and cfg.hf_hub_id else "")
    if cfg is not None and cfg.hf_hub_id:
        import huggingface_hub.constants as hf

        repo = cfg.hf_hub_id.split("@", 1)[0]
        wanted = cfg.hf_hub_filename or "model.safetensors"
        url = f"https://huggingface.co/{repo}/resolve/main/{wanted}"
        folder = Path(hf.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return (
            f"{label} needs the file {wanted}, which could not be downloaded from {url} "
            f"({_short(err)}); to run offline, download it on a connected machine and pass it as "
            f"checkpoint=<file> with pretrained=True, or copy that machine's Hugging Face cache "
            f"folder to {folder}"
        )
    url = cfg.url if cfg is not None and cfg.url else "(no download URL known)"
    where = torchvision_cache_file(cfg.url) if cfg is not None and cfg.url else None
    return (
        f"{label} needs its pretrained weights, which could not be downloaded from {url} "
        f"({_short(err)}); to run offline, download the file on a connected machine and pass it "
        "as checkpoint=<file> with pretrained=True"
        + (f", or place it at {where}" if where is not None else "")
    )


# -- RobustBench ---------------------------------------------------------------------------------


def default_robustbench_dir() -> Path:
    """``$XDG_CACHE_HOME/tta/robustbench`` (``~/.cache/tta/robustbench`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "tta" / "robustbench"


def parse_robustbench(spec: str) -> tuple[str, str, str]:
    """``robustbench:<dataset>/<threat_model>/<name>`` -> (dataset, threat_model, name)."""
    rest = spec.partition(":")[2]
    parts = rest.split("/")
    if len(parts) != 3 or not all(parts):
        raise TTAError(
            f"model spec {spec!r} must be robustbench:<dataset>/<threat_model>/<name>, e.g. "
            "'robustbench:cifar10/corruptions/Standard'"
        )
    dataset, threat, name = parts
    if dataset not in ROBUSTBENCH_DATASETS:
        raise TTAError(unknown(f"RobustBench dataset in {spec!r}:", dataset, ROBUSTBENCH_DATASETS))
    if threat not in ROBUSTBENCH_THREATS:
        raise TTAError(
            unknown(f"RobustBench threat model in {spec!r}:", threat, ROBUSTBENCH_THREATS)
        )
    return dataset, threat, name


def _robustbench(spec: str) -> Any:
    try:
        with warnings.catch_warnings():  # its imports of pkg_resources / old timm paths warn
            warnings.simplefilter("ignore")
            import robustbench.utils
    except ImportError as err:
        raise TTAError(
            f"model spec {spec!r} needs the robustbench package, which could not be imported "
            f"({_short(err)}); install it with: {ROBUSTBENCH_INSTALL}"
        ) from None
    return robustbench.utils


def robustbench_entry(spec: str) -> tuple[str, str, str, dict[str, Any]]:
    """(dataset, threat_model, name, model-zoo entry), the name checked against the zoo."""
    dataset, threat, name = parse_robustbench(spec)
    utils = _robustbench(spec)
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = utils.all_models[BenchmarkDataset(dataset)][ThreatModel(threat.replace("_3d", ""))]
    if name not in zoo:
        raise TTAError(
            f"unknown RobustBench model {name!r} for {dataset}/{threat}.{did_you_mean(name, zoo)} "
            f"Valid: {', '.join(repr(n) for n in zoo)}."
        )
    return dataset, threat, name, zoo[name]


def robustbench_file(model_dir: Path, dataset: str, threat: str, name: str) -> Path:
    """Where ``robustbench.utils.load_model`` looks for (and downloads) the checkpoint."""
    return Path(model_dir) / dataset / threat.replace("_3d", "") / f"{name}.pt"


def build_robustbench_architecture(spec: str) -> nn.Module:
    """The zoo's architecture for ``spec`` with fresh weights (for a local checkpoint)."""
    return robustbench_entry(spec)[3]["model"]()


def load_robustbench(spec: str, model_dir: Optional[PathLike]) -> tuple[nn.Module, int]:
    """The RobustBench model ``spec`` through ``robustbench.utils.load_model``; (network, classes).

    It takes [0, 1] input: any normalisation is part of the network, as RobustBench defines it.
    """
    dataset, threat, name, entry = robustbench_entry(spec)
    utils = _robustbench(spec)
    folder = default_robustbench_dir() if model_dir is None else Path(model_dir).expanduser()
    wanted = robustbench_file(folder, dataset, threat, name)
    try:
        network = utils.load_model(
            model_name=name, model_dir=str(folder), dataset=dataset, threat_model=threat
        )
    except Exception as err:
        ids = entry.get("gdrive_id")
        if wanted.is_file():
            raise TTAError(
                f"{spec}: {wanted} could not be loaded by robustbench ({_short(err)}); it is "
                "damaged or not RobustBench's checkpoint of this model: delete it (it is "
                "downloaded again) or replace it"
            ) from None
        if isinstance(ids, str):
            url = f"https://drive.google.com/uc?id={ids}"
        else:
            url = "Google Drive ids " + ", ".join(map(str, ids or [])) or "(no URL known)"
        raise TTAError(
            f"{spec} needs the file {wanted.name}, which could not be downloaded from {url} "
            f"({_short(err)}); to run offline, download it on a connected machine and place it at "
            f"{wanted} (model_dir {folder})"
        ) from None
    return network.eval(), ROBUSTBENCH_DATASETS[dataset]
