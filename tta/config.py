"""Run configuration: one schema with defaults for YAML files, ``key=value`` overrides and Python.

A config has the sections ``model``, ``data``, ``stream`` and ``methods`` plus a few top-level
keys. The names are the same everywhere: ``stream.batch_size`` in YAML is ``stream.batch_size=32``
on the command line and ``{"stream": {"batch_size": 32}}`` for ``tta.evaluate``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from tta._errors import did_you_mean
from tta.options import Option, at_least_one, in_range

DATA_SOURCES = ("cifar-c", "imagenet-c", "corrupt")

SCHEMA: dict[str, Any] = {
    "name": Option("run", str, "name shown in summaries"),
    "output": Option(None, str, "output folder (default runs/<name>)", nullable=True),
    "seed": Option(0, int, "seed of the stream order and of every method's random draws"),
    "device": Option("auto", str, "auto, cpu, cuda or cuda:N"),
    "model": {
        "spec": Option(
            None,
            str,
            "resnet26, wrn28_10, timm:<name>, torchvision:<name> (default: the checkpoint's)",
            nullable=True,
        ),
        "checkpoint": Option(
            None, str, "path to a checkpoint (state_dict or wrapper)", nullable=True
        ),
        "num_classes": Option(None, int, "number of classes", at_least_one, nullable=True),
        "mean": Option(None, list, "input normalisation mean (inside the model)", nullable=True),
        "std": Option(None, list, "input normalisation std (inside the model)", nullable=True),
    },
    "data": {
        "source": Option("cifar-c", str, "where domains come from", choices=DATA_SOURCES),
        "root": Option(None, str, "CIFAR-C / ImageNet-C folder", nullable=True),
        "clean": Option(
            None, str, "clean set to corrupt: .npz, CIFAR folder or 'mnist5k'", nullable=True
        ),
        "corruptions": Option(None, list, "corruption names (default: the 15)", nullable=True),
        "severities": Option([5], list, "severities 1..5"),
        "num_samples": Option(
            None,
            int,
            "use a seeded random subset of N samples per domain",
            at_least_one,
            nullable=True,
        ),
    },
    "stream": {
        "order": Option(
            "iid", str, "iid, dirichlet or sorted", choices=("iid", "dirichlet", "sorted")
        ),
        "delta": Option(0.1, float, "Dirichlet concentration (0 sorts by label)", in_range(0, 1e9)),
        "schedule": Option(
            "reset_each_shift",
            str,
            "how domains follow each other",
            choices=("reset_each_shift", "continual", "mixed", "gradual"),
        ),
        "batch_size": Option(64, int, "test batch size", at_least_one),
    },
    "methods": Option(["tbn"], list, "methods to compare with source (names or mappings)"),
}

PathLike = Union[str, Path]


def _check_section(prefix: str, schema: Mapping[str, Any], given: Any) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise TypeError(
            f"config key {prefix or '(top level)'!r} must be a mapping, got {type(given).__name__}"
        )
    out: dict[str, Any] = {}
    for key in given:
        if key not in schema:
            where = f"{prefix}.{key}" if prefix else key
            raise ValueError(
                f"unknown config key {where!r}.{did_you_mean(key, schema)} "
                f"Valid keys{' under ' + repr(prefix) if prefix else ''}: {', '.join(schema)}."
            )
    for key, spec in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            sub = given.get(key)
            out[key] = _check_section(where, spec, {} if sub is None else sub)
        else:
            out[key] = (
                _check_value(where, spec, given[key])
                if key in given
                else copy.deepcopy(spec.default)
            )
    return out


def _check_value(where: str, opt: Option, value: Any) -> Any:
    if value is None and opt.nullable:
        return None
    want = opt.type
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is list and isinstance(value, (tuple, str, int, float)) and not isinstance(value, bool):
        value = list(value) if isinstance(value, tuple) else [value]
    if not isinstance(value, want) or (want in (int, float) and isinstance(value, bool)):
        raise TypeError(
            f"config key {where!r} must be {want.__name__}{' or null' if opt.nullable else ''} "
            f"({opt.doc}), got {value!r} ({type(value).__name__})"
        )
    if opt.choices is not None and value not in opt.choices:
        raise ValueError(
            f"config key {where!r} must be one of {list(opt.choices)}, got {value!r}."
            f"{did_you_mean(value, opt.choices)}"
        )
    if opt.check is not None and (problem := opt.check(value)):
        raise ValueError(f"config key {where!r} {problem}, got {value!r}")
    return value


def method_entries(methods: list[Any]) -> list[dict[str, Any]]:
    """Normalise the ``methods`` list to ``{"name", "label", "options"}`` entries.

    An entry is a method name or a mapping with ``name``, an optional ``label`` and the method's
    options. ``source`` always runs first, as the baseline. Options are checked by ``tta.adapt``.
    """
    from tta.wrapper import resolve_method

    entries = [{"name": "source", "label": "source", "options": {}}]
    for i, item in enumerate(methods):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or "name" not in item:
            raise TypeError(
                f"config key 'methods[{i}]' must be a method name or a mapping with 'name', "
                f"got {item!r}"
            )
        options = {k: v for k, v in item.items() if k not in ("name", "label")}
        resolve_method(item["name"], options)  # unknown names and options fail here
        label = item.get("label") or item["name"] + (
            f"+{options['norm']}" if "norm" in options else ""
        )
        if item["name"] == "source" and not options:
            continue
        if any(e["label"] == label for e in entries):
            raise ValueError(
                f"two methods are labelled {label!r}; give one of them a distinct 'label'"
            )
        entries.append({"name": item["name"], "label": label, "options": dict(options)})
    return entries


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema and fill in defaults."""
    out = _check_section("", SCHEMA, config)
    if out["output"] is None:
        out["output"] = str(Path("runs") / out["name"])
    method_entries(out["methods"])
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"stream.batch_size=32"`` → (["stream", "batch_size"], 32); values are read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. stream.batch_size=32)")
    key, _, raw = text.partition("=")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(config: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(config))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def read_yaml(path: PathLike, kind: str = "config") -> Any:
    """Parse a YAML file; a missing file or bad YAML gets an error naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{kind} file {str(path)!r} is not valid YAML: {err}") from err


def load_config(path: PathLike, overrides: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Read a YAML config, apply ``key=value`` overrides, validate, fill defaults."""
    return resolve_config(apply_overrides(read_yaml(path), list(overrides)))
