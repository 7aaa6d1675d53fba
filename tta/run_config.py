"""Typed run objects: a run config and its methods, checked once against ``tta.config.SCHEMA``.

``tta.config.build_config`` makes a ``RunConfig`` from a mapping in the YAML schema (validating
every key and every method's options once); the run code reads its attributes instead of checking
dicts again. The fields of each section are the schema's keys (a test keeps them equal), and
``as_dict()`` gives back the resolved mapping exactly as ``config.json`` holds it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional, TypeVar

#: The baseline's label and method name: every run streams it first, as ``methods[0]``.
SOURCE = "source"

T = TypeVar("T")


def baseline(methods: Sequence[T]) -> T:
    """The ``source`` baseline of a run's methods (or of any list kept in their order): the
    first entry, where ``tta.config.method_entries`` always puts it. Every Δ is taken to it."""
    return methods[0]


@dataclass(frozen=True)
class MethodSpec:
    """One entry of ``methods``: its label (its name in results and unit folders), the method's
    registered name and its options as given. The options were checked when the spec was made;
    ``adapt`` wraps a model without checking them again."""

    label: str
    name: str
    options: Mapping[str, Any]
    resolved: tuple = field(compare=False, repr=False)  # tta.wrapper.resolve_method's result

    def adapt(self, model: Any, context: Any = None) -> Any:
        """``tta.adapt(model, name, context, **options)`` with the options checked already."""
        from tta.wrapper import adapt_resolved

        return adapt_resolved(model, self.name, self.resolved, context)

    def source_images_wanted(self) -> int:
        """How many clean source images the method asks for (EATA's Fisher), 0 for none."""
        method_class, _, _, method_options = self.resolved
        return 0 if method_class is None else method_class.source_images_wanted(method_options)

    def record(self) -> dict[str, Any]:
        """The method and options as a unit file records them."""
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class ModelConfig:
    """``model``: what network to build and with which weights (see ``tta.load_model``)."""

    spec: Optional[str]
    weights: Optional[str]
    pretrained: bool
    pretrained_tag: Optional[str]
    model_dir: Optional[str]
    checkpoint: Optional[str]
    kwargs: Mapping[str, Any]
    num_classes: Optional[int]
    mean: Optional[list[float]]
    std: Optional[list[float]]

    @property
    def library_weights(self) -> bool:
        """Whether the weights come from a library's own cache (named, not a file of ours)."""
        return bool(
            self.weights
            or self.pretrained
            or self.pretrained_tag
            or "robustbench:" in (self.spec or "")
        )


@dataclass(frozen=True)
class DataConfig:
    """``data``: where the domains come from and how much of them is used."""

    source: str
    root: Optional[str]
    clean: Optional[str]
    corruptions: Optional[list[str]]
    severities: list[int]
    num_samples: Optional[int]
    source_data: Optional[str]
    workers: Optional[int]
    context_per_domain: Optional[int]


@dataclass(frozen=True)
class StreamConfig:
    """``stream``: the order of samples, the schedule of domains and the batch size."""

    order: str
    delta: float
    schedule: str
    batch_size: int


@dataclass(frozen=True)
class RunConfig:
    """A checked run config with its defaults filled in. ``seeds`` is the list of seeds the run
    streams (one for a config with ``seed``); ``multi_seed`` says the config gave ``seeds``, so
    results hold mean ± std and units live under ``units/seed-<s>/``. ``methods`` starts with
    the ``source`` baseline (see ``baseline``)."""

    name: str
    output: str
    seeds: tuple[int, ...]
    multi_seed: bool
    device: str
    precision: str
    model: ModelConfig
    data: DataConfig
    stream: StreamConfig
    methods: tuple[MethodSpec, ...]
    plugins: tuple[str, ...]
    values: Mapping[str, Any] = field(compare=False, repr=False)  # the resolved mapping

    @property
    def source(self) -> MethodSpec:
        return baseline(self.methods)

    def as_dict(self) -> dict[str, Any]:
        """The resolved mapping (as ``config.json`` holds it); a copy the caller may change."""
        return copy.deepcopy(dict(self.values))

    @classmethod
    def from_resolved(cls, values: Mapping[str, Any], methods: Sequence[MethodSpec]) -> RunConfig:
        """Wrap a mapping checked by ``tta.config.build_config`` and its method entries."""
        values = copy.deepcopy(dict(values))
        multi = values.get("seeds") is not None
        return cls(
            name=values["name"],
            output=values["output"],
            seeds=tuple(values["seeds"]) if multi else (values["seed"],),
            multi_seed=multi,
            device=values["device"],
            precision=values["precision"],
            model=_section(ModelConfig, values["model"]),
            data=_section(DataConfig, values["data"]),
            stream=_section(StreamConfig, values["stream"]),
            methods=tuple(methods),
            plugins=tuple(values["plugins"]),
            values=values,
        )


def _section(cls: type[T], values: Mapping[str, Any]) -> T:
    return cls(**{f.name: copy.deepcopy(values[f.name]) for f in fields(cls)})  # type: ignore[arg-type]
