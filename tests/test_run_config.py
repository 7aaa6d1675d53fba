"""The typed run objects: RunConfig/MethodSpec built once by the schema, RunResult round trips."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import tta
import tta.wrapper
from tta.config import SCHEMA, build_config, resolve_config
from tta.data import ArrayDomain
from tta.evaluation import RunResult
from tta.run_config import DataConfig, ModelConfig, RunConfig, StreamConfig


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def domains() -> list[ArrayDomain]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 48)
    return [ArrayDomain(x, y, "a"), ArrayDomain(x[::-1].copy(), y[::-1].copy(), "b")]


def test_sections_have_exactly_the_schema_keys():
    for cls, key in ((ModelConfig, "model"), (DataConfig, "data"), (StreamConfig, "stream")):
        assert [f.name for f in dataclasses.fields(cls)] == list(SCHEMA[key]), key
    top = {f.name for f in dataclasses.fields(RunConfig)} - {"values", "seeds", "multi_seed"}
    assert top == set(SCHEMA) - {"seed", "seeds"}


def test_build_config_types_and_round_trip():
    run = build_config({"seeds": [4, 2], "methods": ["tent", "source"], "stream": {"delta": 1}})
    assert run.seeds == (4, 2) and run.multi_seed
    assert run.stream.delta == 1.0 and isinstance(run.stream.delta, float)
    assert [m.label for m in run.methods] == ["source", "tent"] and run.source.label == "source"
    assert run.as_dict() == resolve_config(run.as_dict())  # what config.json holds, unchanged
    assert build_config(run) is run  # checked already
    one = build_config({"seed": 7})
    assert one.seeds == (7,) and not one.multi_seed and "seeds" not in one.as_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.name = "other"  # type: ignore[misc]


def test_method_spec_adapts_like_tta_adapt():
    (spec,) = build_config({"methods": [{"name": "tent", "lr": 0.01}]}).methods[1:]
    x = torch.rand(8, 3, 8, 8)
    a, b = spec.adapt(Tiny()), tta.adapt(Tiny(), "tent", lr=0.01)
    for _ in range(3):
        assert torch.equal(a(x), b(x))
    assert spec.record() == {"name": "tent", "options": {"lr": 0.01}}


def test_each_method_is_checked_once_per_run(tmp_path, monkeypatch):
    """Methods are resolved when the config is built, not again per segment or per use."""
    calls = []
    real = tta.wrapper.resolve_method
    monkeypatch.setattr(tta.wrapper, "resolve_method", lambda n, o: calls.append(n) or real(n, o))
    cfg = {
        "output": str(tmp_path / "out"),
        "methods": ["tbn", "tent", "lame", {"name": "rbn", "momentum": 0.1}],
        "stream": {"batch_size": 16, "schedule": "reset_each_shift"},
    }
    res = tta.evaluate(cfg, model=Tiny(), domains=domains())
    assert len(res["stream"]["domains"]) == 2  # two segments
    assert sorted(calls) == sorted(["source", "tbn", "tent", "lame", "rbn"])


def test_run_result_round_trips_results_json(tmp_path):
    for extra in ({"seed": 1}, {"seeds": [1, 2]}):
        out = tmp_path / next(iter(extra))
        cfg = {"output": str(out), "methods": ["tbn", "tent"], "stream": {"batch_size": 16}}
        res = tta.evaluate({**cfg, **extra}, model=Tiny(), domains=domains())
        saved = json.loads((out / "results.json").read_text())
        typed = RunResult.from_dict(saved)
        assert typed.as_dict() == saved == json.loads(json.dumps(res))
        assert json.dumps(typed.as_dict()) == json.dumps(saved)  # key order too
        assert typed.source.label == "source" and typed.methods[0] is typed.source
        assert typed.methods[1].delta_vs_source == pytest.approx(
            typed.methods[1].mean_error - typed.source.mean_error
        )


def test_evaluate_takes_a_run_config(tmp_path):
    cfg = {"methods": ["tbn"], "stream": {"batch_size": 16}}
    a = tta.evaluate({**cfg, "output": str(tmp_path / "a")}, model=Tiny(), domains=domains())
    run = build_config({**cfg, "output": str(tmp_path / "b")})
    b = tta.evaluate(run, model=Tiny(), domains=domains())
    assert [m["errors"] for m in a["methods"]] == [m["errors"] for m in b["methods"]]
    assert b["config"] == run.as_dict()
    named = build_config({**cfg, "data": {"severities": [3]}})
    with pytest.raises(tta.TTAError, match=r"data.severities name domains, but domains="):
        tta.evaluate(named, model=Tiny(), domains=domains())


def test_summary_of_a_method_without_measured_time(tmp_path):
    """images_per_second is None when a method's time was 0: the summary shows '-'."""
    from tta.report import summary_markdown

    cfg = {"output": str(tmp_path / "o"), "methods": ["tbn"], "stream": {"batch_size": 16}}
    res = tta.evaluate(cfg, model=Tiny(), domains=domains())
    res["methods"][1].update(seconds=0.0, images_per_second=None)
    assert "| tbn | - | 0.0 |" in summary_markdown(res)
