"""Run configuration: one schema with defaults for YAML files, ``key=value`` overrides and Python.

A config has the sections ``model``, ``data``, ``stream`` and ``methods`` plus a few top-level
keys. The names are the same everywhere: ``stream.batch_size`` in YAML is ``stream.batch_size=32``
on the command line and ``{"stream": {"batch_size": 32}}`` for ``tta.evaluate``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from tta._errors import TTAError, TTATypeError
from tta.data.ordering import ORDERS
from tta.data.stream import SCHEDULES
from tta.options import CONFIG, Option, at_least_one, check_section, in_range
from tta.overrides import PathLike, apply_dotted, parse_override, read_yaml
from tta.plugins import load_plugins
from tta.run_config import SOURCE, MethodSpec, RunConfig

DATA_SOURCES = ("cifar-c", "imagenet-c", "corrupt")
DEVICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
PRECISIONS = ("fp32", "bf16", "fp16")


def _seed_range(v: Any) -> Optional[str]:
    return None if 0 <= v < 2**63 else "must be in [0, 2**63)"


def _seeds(v: list) -> Optional[str]:
    ints = all(isinstance(s, int) and not isinstance(s, bool) for s in v)
    if not v or not ints:
        return "must be a non-empty list of integer seeds, e.g. [1, 2, 3]"
    if not all(0 <= s < 2**63 for s in v):
        return "must hold seeds in [0, 2**63)"
    if len(set(v)) != len(v):
        return "lists a seed more than once"
    return None


def _device(v: str) -> Optional[str]:
    ok = re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v)
    return None if ok else f"must be {DEVICES}"


def _non_negative(v: int) -> Optional[str]:
    return None if v >= 0 else "must be an integer >= 0"


def _run_name(v: str) -> Optional[str]:
    if not v.strip() or v.strip() == "." or any(bad in v for bad in ("/", "\\", "..")):
        return (
            "must be a plain name, not empty and without '/', '\\' or '..' (it names the folder "
            "runs/<name>; set 'output' to choose the folder)"
        )
    return None


def _folder(v: str) -> Optional[str]:
    return None if v.strip() else "must be a folder path (or null for runs/<name>)"


def _stats(positive: bool):
    def check(v: list) -> Optional[str]:
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if not v or not numbers or not all(math.isfinite(x) for x in v):
            return "must be a non-empty list of finite numbers, one per input channel"
        if positive and not all(x > 0 for x in v):
            return "must be a list of numbers > 0, one per input channel"
        return None

    return check


def _severities(v: list) -> Optional[str]:
    ints = all(isinstance(s, int) and not isinstance(s, bool) for s in v)
    if not v or not ints or not all(1 <= s <= 5 for s in v):
        return "must be a non-empty list of severities from 1, 2, 3, 4, 5"
    if len(set(v)) != len(v):
        return "lists a severity more than once"
    return None


def _one_of(names: tuple[str, ...]) -> str:
    """("iid", "dirichlet", "sorted") → "iid, dirichlet or sorted"."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


SCHEMA: dict[str, Any] = {
    "name": Option("run", str, "name shown in summaries", _run_name),
    "output": Option(None, str, "output folder (default runs/<name>)", _folder, nullable=True),
    "seed": Option(
        0, int, "seed of the stream order and of every method's random draws", _seed_range
    ),
    "seeds": Option(
        None,
        list,
        "several seeds instead of 'seed': every method runs once per seed, reports show mean ± std",
        _seeds,
        nullable=True,
    ),
    "device": Option("auto", str, DEVICES, _device),
    "precision": Option(
        "fp32",
        str,
        "the network's arithmetic: fp32, or autocast to bf16 (CUDA or CPU) or fp16 (CUDA); "
        "norm statistics are summed in float32 either way",
        choices=PRECISIONS,
    ),
    "model": {
        "spec": Option(
            None,
            str,
            "resnet26, wrn28_10, timm:<name>, torchvision:<name>, "
            "robustbench:<dataset>/<threat_model>/<name> (default: the checkpoint's)",
            nullable=True,
        ),
        "weights": Option(
            None,
            str,
            "torchvision:<name> only: weights enum member (IMAGENET1K_V1, DEFAULT, ...)",
            nullable=True,
        ),
        "pretrained": Option(
            False,
            bool,
            "timm:<name> only: timm's pretrained weights (with checkpoint: that file)",
        ),
        "pretrained_tag": Option(
            None, str, "timm weights tag, e.g. a1_in1k (implies pretrained)", nullable=True
        ),
        "model_dir": Option(
            None,
            str,
            "robustbench: only: checkpoint folder <model_dir>/<dataset>/<threat_model>/<name>.pt "
            "(default ~/.cache/tta/robustbench)",
            nullable=True,
        ),
        "checkpoint": Option(
            None, str, "path to a checkpoint (state_dict or wrapper)", nullable=True
        ),
        "kwargs": Option(
            {},
            dict,
            "keyword arguments of the architecture: your factory's (spec package.module:factory "
            "or file.py:factory), or a built-in's (width, widen_factor, timm/torchvision keywords)",
        ),
        "num_classes": Option(None, int, "number of classes", at_least_one, nullable=True),
        "mean": Option(
            None, list, "input normalisation mean (inside the model)", _stats(False), nullable=True
        ),
        "std": Option(
            None, list, "input normalisation std (inside the model)", _stats(True), nullable=True
        ),
    },
    "data": {
        "source": Option("cifar-c", str, "where domains come from", choices=DATA_SOURCES),
        "root": Option(None, str, "CIFAR-C / ImageNet-C folder", nullable=True),
        "clean": Option(
            None, str, "clean set to corrupt: .npz, CIFAR folder or 'mnist5k'", nullable=True
        ),
        "corruptions": Option(None, list, "corruption names (default: the 15)", nullable=True),
        "severities": Option([5], list, "severities 1..5", _severities),
        "num_samples": Option(
            None,
            int,
            "use a seeded random subset of N samples per domain",
            at_least_one,
            nullable=True,
        ),
        "source_data": Option(
            None,
            str,
            "clean source-domain set for methods that need one (EATA's Fisher): 'mnist5k', "
            "'cifar10:<folder>', 'cifar100:<folder>' or .npz; its training split is used "
            "(default: data.clean's)",
            nullable=True,
        ),
        "workers": Option(
            None,
            int,
            "processes decoding image files (ImageNet-C) ahead of the model; null: min(8, CPU "
            "cores - 1), 0: in-process. Arrays and CIFAR-C are always read in-process",
            _non_negative,
            nullable=True,
        ),
        "context_per_domain": Option(
            None,
            int,
            "hold out the first N samples of each domain (in its stored order) as its context: "
            "neither streamed nor scored, for any method; before the stream enters a domain, "
            "methods with a context norm (context-bn) take their statistics from them",
            at_least_one,
            nullable=True,
        ),
    },
    "stream": {
        "order": Option("iid", str, _one_of(ORDERS), choices=ORDERS),
        "delta": Option(0.1, float, "Dirichlet concentration (0 sorts by label)", in_range(0, 1e9)),
        "schedule": Option(
            "reset_each_shift", str, "how domains follow each other", choices=SCHEDULES
        ),
        "batch_size": Option(64, int, "test batch size", at_least_one),
    },
    "methods": Option(["tbn"], list, "methods to compare with source (names or mappings)"),
    "plugins": Option(
        [], list, "modules or .py files to import first (they register third-party methods)"
    ),
}


def _check_section(prefix: str, schema: Mapping[str, Any], given: Any) -> dict[str, Any]:
    """One config section (the top level when ``prefix`` is ""), its sections checked in turn."""
    if not isinstance(given, Mapping):
        raise TTATypeError(
            f"config key {prefix or '(top level)'!r} must be a mapping, got {type(given).__name__}"
            + (f" {given!r}" if not prefix else "")
            + f"; valid keys{' under ' + repr(prefix) if prefix else ''}: {', '.join(schema)}"
        )

    def where(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    return check_section(
        schema,
        given,
        what=lambda key: f"config key {where(key)!r}",
        unknown=lambda key: f"unknown config key {where(key)!r}",
        valid=f"Valid keys{' under ' + repr(prefix) if prefix else ''}",
        style=CONFIG,
        section=lambda key, spec, sub: _check_section(where(key), spec, {} if sub is None else sub),
    )


def _check_model_stats(model: dict[str, Any]) -> None:
    mean, std = model["mean"], model["std"]
    lengths = {len(mean), len(std)} if mean is not None and std is not None else {1}
    if len(lengths) > 1 and 1 not in lengths:  # one value stands for every channel
        raise TTAError(
            f"config keys 'model.mean' and 'model.std' must have the same length (one value per "
            f"input channel, or a single value for all), got {len(mean)} and {len(std)} values: "
            f"mean {mean}, std {std}"
        )


def _check_corruptions(data: dict[str, Any]) -> None:
    """``data.corruptions``: null (the default set) or a non-empty list of known names, for every
    ``data.source``."""
    from tta.data.names import check_corruption_names

    if data["corruptions"] is not None:
        data["corruptions"] = check_corruption_names(data["corruptions"], "data.corruptions")


def _expand(path: Optional[str]) -> Optional[str]:
    return None if path is None else os.path.expanduser(path)


def _expand_clean(clean: Optional[str]) -> Optional[str]:
    if clean is None:
        return None
    kind, sep, rest = clean.partition(":")
    if sep and kind in ("cifar10", "cifar100"):
        return f"{kind}:{os.path.expanduser(rest)}"
    return os.path.expanduser(clean)


def method_entries(methods: list[Any]) -> list[MethodSpec]:
    """The ``methods`` list as checked ``MethodSpec`` entries, the ``source`` baseline first.

    An entry is a method name or a mapping with ``name``, an optional ``label`` (a non-empty
    string) and the method's options. ``source`` always runs first, as the baseline, under the
    label ``source``: listing it again is allowed but a different label for it is refused (the
    baseline's label is what reports and sweeps compare against). Names and options are
    checked here, once (``tta.wrapper.resolve_method``); the spec keeps the result.
    """
    from tta.wrapper import resolve_method

    entries = [MethodSpec(SOURCE, SOURCE, {}, resolve_method(SOURCE, {}))]
    for i, item in enumerate(methods):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or "name" not in item:
            raise TTATypeError(
                f"config key 'methods[{i}]' must be a method name or a mapping with 'name', "
                f"got {item!r}"
            )
        if not isinstance(item["name"], str):
            raise TTATypeError(
                f"config key 'methods[{i}].name' must be a method name (a string), got "
                f"{item['name']!r} ({type(item['name']).__name__})"
            )
        if "label" in item and (not isinstance(item["label"], str) or not item["label"].strip()):
            raise TTATypeError(
                f"config key 'methods[{i}].label' must be a non-empty string (the method's name "
                f"in the results), got {item['label']!r} ({type(item['label']).__name__})"
            )
        options = {k: v for k, v in item.items() if k not in ("name", "label")}
        resolved = resolve_method(item["name"], options)  # unknown names and options fail here
        label = item.get("label") or item["name"] + (
            f"+{options['norm']}" if "norm" in options else ""
        )
        if item["name"] == SOURCE and not options:
            if label != SOURCE:
                raise TTAError(
                    f"config key 'methods[{i}]': source always runs first as the baseline, "
                    f"labelled 'source', so it cannot be labelled {label!r}; remove this entry "
                    "(the baseline is in every run)"
                )
            continue
        if any(e.label == label for e in entries):
            raise TTAError(
                f"two methods are labelled {label!r}; give one of them a distinct 'label'"
            )
        entries.append(MethodSpec(label, item["name"], dict(options), resolved))
    return entries


def _check_seeds(given: Mapping[str, Any], out: dict[str, Any]) -> None:
    """A resolved config holds ``seed`` (one run, as before ``seeds`` existed) or ``seeds`` (one
    run per seed), never both: ``seeds`` given with a ``seed`` is refused."""
    if out["seeds"] is None:
        del out["seeds"]
        return
    if given.get("seed") is not None:
        raise TTAError(
            f"config keys 'seed' ({given['seed']!r}) and 'seeds' ({out['seeds']!r}) are both set; "
            "give one: 'seed' for one run, 'seeds' for one run per seed"
        )
    del out["seed"]


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` validated against the schema, with defaults filled in, as a mapping (what
    ``config.json`` holds); see ``build_config``."""
    return build_config(config).as_dict()


def build_config(config: Union[Mapping[str, Any], RunConfig]) -> RunConfig:
    """Validate ``config`` against the schema, fill in defaults, check every method once, and
    return the typed ``RunConfig`` (a ``RunConfig`` is returned as it is: it was checked).

    ``seeds`` (a list) replaces ``seed``: the resolved config then has ``seeds`` and no ``seed``;
    without ``seeds`` it has ``seed`` and no ``seeds`` (exactly as before ``seeds`` existed).

    ``~`` in the paths (``output``, ``model.checkpoint``, ``data.root``, ``data.clean``) is
    expanded to the home folder.
    """
    if isinstance(config, RunConfig):
        return config
    out = _check_section("", SCHEMA, config)
    _check_seeds(config, out)
    _check_model_stats(out["model"])
    _check_corruptions(out["data"])
    if out["output"] is None:
        out["output"] = str(Path("runs") / out["name"])
    out["output"] = _expand(out["output"])
    out["model"]["checkpoint"] = _expand(out["model"]["checkpoint"])
    out["model"]["model_dir"] = _expand(out["model"]["model_dir"])
    out["data"]["root"] = _expand(out["data"]["root"])
    out["data"]["clean"] = _expand_clean(out["data"]["clean"])
    out["data"]["source_data"] = _expand_clean(out["data"]["source_data"])
    load_plugins(out["plugins"])  # before the methods they register are checked
    return RunConfig.from_resolved(out, method_entries(out["methods"]))


def apply_overrides(config: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides. An override of ``seed`` or ``seeds`` replaces the other of
    the two when it comes from the file (``seeds=[1,2,3]`` on a config with ``seed: 1``); both
    as overrides is refused later, as in a file."""
    out = apply_dotted(config, overrides)
    given = {parse_override(text)[0][0] for text in overrides}
    for key, other in (("seed", "seeds"), ("seeds", "seed")):
        if key in given and other not in given:
            out.pop(other, None)
    return out


def load_config(path: PathLike, overrides: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Read a YAML config, apply ``key=value`` overrides, validate, fill defaults (as a mapping;
    ``load_run_config`` gives the typed ``RunConfig``)."""
    return load_run_config(path, overrides).as_dict()


def load_run_config(path: PathLike, overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides and build the checked ``RunConfig``."""
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise TTATypeError(
            f"config file {str(path)!r} must hold a mapping of config keys ({', '.join(SCHEMA)}), "
            f"got {'a list' if isinstance(raw, list) else 'a single value'}: {raw!r}"
        )
    return build_config(apply_overrides(raw, list(overrides)))
