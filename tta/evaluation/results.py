"""Results of a run: per-domain online error of every method and its difference to ``source``.

``MethodResult``, ``SeedResult`` and ``RunResult`` are the typed form of ``results.json``:
``as_dict()`` gives the mapping ``evaluate`` returns and writes (keys in the written order),
``RunResult.from_dict`` reads one back. The baseline is ``methods[0]`` (``RunResult.source``,
see ``tta.config.baseline``); every Δ is taken against it on the same stream.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

import tta
from tta._render import sample_std
from tta.run_config import MethodSpec, RunConfig, baseline


def _versions() -> dict[str, str]:
    return {
        "tta": tta.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


@dataclass(frozen=True)
class MethodResult:
    """One method's numbers: online error (%) per domain and its mean, Δ to ``source``, counts
    of samples and of non-finite predictions, and the time spent in the method.

    In a run with ``seeds`` the numbers are means over seeds and the ``*_std`` fields hold their
    sample standard deviations (ddof = 1); for one seed those fields are None and not written.
    """

    label: str
    name: str
    options: Mapping[str, Any]
    errors: Mapping[str, float]
    samples: Mapping[str, int]
    nonfinite: Mapping[str, int]
    nonfinite_total: int
    mean_error: float
    seconds: float
    images: int
    images_per_second: Optional[float]
    delta_vs_source: float
    delta_per_domain: Mapping[str, float]
    errors_std: Optional[Mapping[str, float]] = None
    mean_error_std: Optional[float] = None
    mean_error_per_seed: Optional[list[float]] = None
    delta_vs_source_std: Optional[float] = None
    delta_per_domain_std: Optional[Mapping[str, float]] = None

    @property
    def over_seeds(self) -> bool:
        return self.mean_error_std is not None

    def as_dict(self) -> dict[str, Any]:
        keys = _SEEDS_KEYS if self.over_seeds else _ONE_SEED_KEYS
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# The key order of results.json (kept from the first versions, so files stay byte-identical).
_ONE_SEED_KEYS = (
    "label", "name", "options", "errors", "samples", "nonfinite", "nonfinite_total",
    "mean_error", "seconds", "images", "images_per_second", "delta_vs_source",
    "delta_per_domain",
)  # fmt: skip
_SEEDS_KEYS = (
    "label", "name", "options", "errors", "errors_std", "samples", "nonfinite",
    "nonfinite_total", "mean_error", "mean_error_std", "mean_error_per_seed", "delta_vs_source",
    "delta_vs_source_std", "delta_per_domain", "delta_per_domain_std", "seconds", "images",
    "images_per_second",
)  # fmt: skip


@dataclass(frozen=True)
class SeedResult:
    """One seed's stream (domains, sizes, label statistics), methods and summed seconds."""

    stream: Mapping[str, Any]
    methods: tuple[MethodResult, ...]
    wall_seconds: float
    seed: Optional[int] = None  # set in the per-seed entries of a run with ``seeds``

    @property
    def source(self) -> MethodResult:
        return baseline(self.methods)

    def as_dict(self) -> dict[str, Any]:
        head = {} if self.seed is None else {"seed": self.seed}
        return {
            **head,
            "stream": self.stream,
            "methods": [m.as_dict() for m in self.methods],
            "wall_seconds": self.wall_seconds,
        }


@dataclass(frozen=True)
class RunResult:
    """What ``evaluate`` returns and writes to results.json: the config, library versions and
    the numbers (for ``seeds``: their mean ± std, and each seed's own in ``per_seed``)."""

    name: str
    config: Mapping[str, Any]
    versions: Mapping[str, str]
    result: SeedResult  # the numbers (over seeds: means and stds)
    seed: Optional[int] = None
    seeds: Optional[list[int]] = None
    per_seed: Optional[tuple[SeedResult, ...]] = None

    @property
    def over_seeds(self) -> bool:
        """Whether the run had ``seeds``: numbers are means over them, with a std."""
        return self.per_seed is not None

    @property
    def methods(self) -> tuple[MethodResult, ...]:
        return self.result.methods

    @property
    def source(self) -> MethodResult:
        return self.result.source

    def as_dict(self) -> dict[str, Any]:
        body = self.result.as_dict()
        if self.per_seed is None:
            return {
                "name": self.name,
                "seed": self.seed,
                "config": self.config,
                "versions": self.versions,
                **body,
            }
        return {
            "name": self.name,
            "seeds": self.seeds,
            "config": self.config,
            "versions": self.versions,
            "stream": body["stream"],
            "methods": body["methods"],
            "per_seed": [r.as_dict() for r in self.per_seed],
            "wall_seconds": body["wall_seconds"],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        def seed_result(d: Mapping[str, Any]) -> SeedResult:
            methods = tuple(MethodResult.from_dict(m) for m in d["methods"])
            return SeedResult(d["stream"], methods, d["wall_seconds"], d.get("seed"))

        per_seed = data.get("per_seed")
        return cls(
            name=data["name"],
            config=data["config"],
            versions=data["versions"],
            result=seed_result({k: v for k, v in data.items() if k != "seed"}),
            seed=data.get("seed"),
            seeds=data.get("seeds"),
            per_seed=None if per_seed is None else tuple(seed_result(r) for r in per_seed),
        )


Units = Mapping[str, Sequence[Mapping[str, Any]]]


def seed_result(
    methods: Sequence[MethodSpec], units: Units, stream: Any, seed: Optional[int] = None
) -> SeedResult:
    """One seed's results from its units (label -> one unit per segment, in stream order)."""
    names = stream.domain_names
    counted = []
    for spec in methods:
        own = units[spec.label]
        wrong = np.sum([u["wrong"] for u in own], axis=0)
        seen = np.sum([u["seen"] for u in own], axis=0)
        nonfinite = np.sum([u.get("nonfinite") or [0] * len(names) for u in own], axis=0)
        seconds = float(sum(u["seconds"] for u in own))
        errors = {n: 100.0 * w / c for n, w, c in zip(names, wrong, seen) if c > 0}
        counted.append((spec, errors, seen, nonfinite, seconds))
    source_errors = baseline(counted)[1]
    source_mean = float(np.mean(list(source_errors.values())))
    results = []
    for spec, errors, seen, nonfinite, seconds in counted:
        mean = float(np.mean(list(errors.values())))
        results.append(
            MethodResult(
                label=spec.label,
                name=spec.name,
                options=spec.options,
                errors=errors,
                samples={n: int(c) for n, c in zip(names, seen) if c > 0},
                nonfinite={n: int(b) for n, b, c in zip(names, nonfinite, seen) if c > 0},
                nonfinite_total=int(nonfinite.sum()),
                mean_error=mean,
                seconds=seconds,
                images=int(seen.sum()),
                images_per_second=float(seen.sum() / seconds) if seconds > 0 else None,
                delta_vs_source=mean - source_mean,
                delta_per_domain={n: e - source_errors[n] for n, e in errors.items()},
            )
        )
    stream_info = {
        "domains": names,
        "num_batches": stream.num_batches,
        "num_samples": stream.num_samples,
        "label_stats": stream.label_stats(),
    }
    return SeedResult(stream_info, tuple(results), float(sum(m.seconds for m in results)), seed)


def over_seeds(runs: Sequence[SeedResult]) -> SeedResult:
    """The mean over seeds of each method's numbers with their sample standard deviations
    (ddof = 1): ``errors``/``errors_std`` per domain, ``mean_error``/``mean_error_std``,
    ``delta_vs_source``/``delta_vs_source_std`` (the Δ is taken per seed, on that seed's
    identical stream, then averaged); ``samples`` and the stream's sizes are per seed (equal for
    every seed), non-finite counts, seconds and images are summed over seeds; label statistics
    are averaged."""
    names = runs[0].stream["domains"]
    methods = []
    for i, first in enumerate(runs[0].methods):
        per = [r.methods[i] for r in runs]
        doms = [d for d in names if all(d in m.errors for m in per)]
        seconds = float(sum(m.seconds for m in per))
        images = int(sum(m.images for m in per))
        methods.append(
            MethodResult(
                label=first.label,
                name=first.name,
                options=first.options,
                errors={d: _mean([m.errors[d] for m in per]) for d in doms},
                errors_std={d: sample_std([m.errors[d] for m in per]) for d in doms},
                samples={d: first.samples[d] for d in doms},  # per seed
                nonfinite={d: int(sum(m.nonfinite.get(d, 0) for m in per)) for d in doms},
                nonfinite_total=int(sum(m.nonfinite_total for m in per)),
                mean_error=_mean([m.mean_error for m in per]),
                mean_error_std=sample_std([m.mean_error for m in per]),
                mean_error_per_seed=[m.mean_error for m in per],
                delta_vs_source=_mean([m.delta_vs_source for m in per]),
                delta_vs_source_std=sample_std([m.delta_vs_source for m in per]),
                delta_per_domain={d: _mean([m.delta_per_domain[d] for m in per]) for d in doms},
                delta_per_domain_std={
                    d: sample_std([m.delta_per_domain[d] for m in per]) for d in doms
                },
                seconds=seconds,
                images=images,
                images_per_second=images / seconds if seconds > 0 else None,
            )
        )
    stats = [r.stream["label_stats"] for r in runs]
    stream = {
        "domains": names,
        "num_batches": runs[0].stream["num_batches"],  # per seed (equal for every seed)
        "num_samples": runs[0].stream["num_samples"],
        "label_stats": {
            k: _mean([st[k] for st in stats])
            for k in stats[0]
            if all(isinstance(st.get(k), (int, float)) for st in stats)
        },
    }
    return SeedResult(stream, tuple(methods), float(sum(r.wall_seconds for r in runs)))


def run_result(config: RunConfig, per_seed: Sequence[SeedResult]) -> RunResult:
    """The results of a run: one seed's as they are; with ``seeds``, their mean ± std and each
    seed's own (see ``over_seeds``)."""
    common = {"name": config.name, "config": config.as_dict(), "versions": _versions()}
    if not config.multi_seed:
        return RunResult(**common, result=per_seed[0], seed=config.seeds[0])
    return RunResult(
        **common,
        result=over_seeds(per_seed),
        seeds=[r.seed for r in per_seed],
        per_seed=tuple(per_seed),
    )
