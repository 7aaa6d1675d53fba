"""`tta demo` in a reduced mode: trains, corrupts, evaluates both streams over seeds, states what
it saw (read off mean ± std)."""

from __future__ import annotations

import json
import re

import pytest

from tta.cli import main
from tta.demo import DEMO_LEFT_OUT, DEMO_METHODS, DEMO_SEEDS, verdict


def test_demo_lists_every_built_in_method():
    from tta.registry import METHODS, NORMS

    built_in = [n for n, m in NORMS.items() if m.layer.__module__.startswith("tta.")]
    built_in += [n for n, c in METHODS.items() if c.__module__.startswith("tta.")]
    assert sorted(DEMO_METHODS) == sorted(set(built_in) - {"source", *DEMO_LEFT_OUT})
    assert set(DEMO_LEFT_OUT) <= set(built_in)
    assert len(DEMO_SEEDS) == 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One source model (1 epoch) for the tests of this file."""
    return tmp_path_factory.mktemp("cache")


def test_demo_reduced(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("TTA_CACHE", str(cache))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "1", "--num-samples", "200", "--seeds", "0", "1"]
    args += ["--methods", "tbn", "unmix-tns", "tent", "--corruptions", "gaussian_noise", "contrast"]
    assert main(args) == 0
    assert len(list(cache.glob("*.pt"))) == 1  # the source model is cached
    res = {o: json.loads((out / o / "results.json").read_text()) for o in ("iid", "dirichlet")}
    for r in res.values():
        assert [m["label"] for m in r["methods"]] == ["source", "tbn", "unmix-tns", "tent"]
        assert r["stream"]["domains"] == ["gaussian_noise-5", "contrast-5"]
        assert r["stream"]["num_samples"] == 400
        assert r["seeds"] == [0, 1] and len(r["per_seed"]) == 2
    # The Dirichlet stream is label-correlated, the i.i.d. one is not.
    iid, dirichlet = (res[o]["stream"]["label_stats"] for o in ("iid", "dirichlet"))
    assert (
        dirichlet["consecutive_same_label_fraction"]
        > 0.5
        > 0.3
        > iid["consecutive_same_label_fraction"]
    )
    assert dirichlet["mean_distinct_labels_per_batch"] < iid["mean_distinct_labels_per_batch"]
    # Same images and labels in both runs of a seed: the source baseline is identical.
    for a, b in zip(res["iid"]["per_seed"], res["dirichlet"]["per_seed"]):
        assert a["methods"][0]["errors"] == b["methods"][0]["errors"]
    # The summary's statements are read off the numbers, mean ± std over the seeds.
    summary = (out / "summary.md").read_text()
    tbn = {o: next(m for m in res[o]["methods"] if m["label"] == "tbn") for o in res}
    line = (
        f"tbn: {tbn['iid']['mean_error']:.1f} ± {tbn['iid']['mean_error_std']:.1f}% i.i.d. → "
        f"{tbn['dirichlet']['mean_error']:.1f} ± {tbn['dirichlet']['mean_error_std']:.1f}%"
    )
    assert line in summary
    assert "over 2 seeds (0, 1)" in summary
    assert re.search(r"Label correlation: unmix-tns is (not )?(less|more) hurt", summary)
    assert re.search(r"Seed spread: over 2 seeds, unmix-tns's mean error ranges", summary)
    assert "| source |" in capsys.readouterr().out
    # A rerun reuses the cached model and the finished units.
    assert main(args) == 0
    assert "Reusing the source model" in capsys.readouterr().out


def test_demo_runs_every_method(tmp_path, cache, monkeypatch):
    """The default method list, on one seed and a short stream (the full demo's shape)."""
    monkeypatch.setenv("TTA_CACHE", str(cache))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "1", "--num-samples", "200", "--seeds", "3"]
    assert main([*args, "--corruptions", "contrast"]) == 0
    for order in ("iid", "dirichlet"):
        r = json.loads((out / order / "results.json").read_text())
        assert [m["label"] for m in r["methods"]] == ["source", *DEMO_METHODS]
        assert r["seeds"] == [3]
    assert "| eata |" in (out / "summary.md").read_text()


def _results(errors: dict[str, list[float]]) -> dict:
    """Results of a seeds run with the given per-seed mean errors (source first)."""
    import numpy as np

    methods = []
    src = errors["source"]
    for label, errs in errors.items():
        deltas = np.subtract(errs, src)
        methods.append(
            {
                "label": label,
                "mean_error": float(np.mean(errs)),
                "mean_error_std": float(np.std(errs, ddof=1)),
                "mean_error_per_seed": errs,
                "delta_vs_source": float(deltas.mean()),
                "delta_vs_source_std": float(deltas.std(ddof=1)),
            }
        )
    return {"seeds": list(range(len(src))), "methods": methods}


@pytest.mark.parametrize(
    "unmix, claim",
    [
        ([20.0, 21.0, 22.0], "better beyond one std: tbn, unmix-tns;"),  # Δ −9 ± 1
        ([28.0, 31.0, 34.0], "within one std: unmix-tns."),  # Δ +0 ± 3
        ([40.0, 41.0, 45.0], "worse beyond one std: unmix-tns;"),
    ],
)
def test_verdict_claims_hold_only_beyond_one_std(unmix, claim):
    iid = _results({"source": [30.0, 30.0, 30.0], "tbn": [10.0, 11.0, 12.0], "unmix-tns": unmix})
    text = verdict(iid, iid)
    assert claim in text.splitlines()[3]
    assert "unmix-tns is not less hurt (within one std)" in text  # identical shifts


def test_demo_plugin_table(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("TTA_CACHE", str(cache))
    out = tmp_path / "plugin"
    args = ["demo", "--plugin-table", "--out", str(out), "--epochs", "1", "--num-samples", "128"]
    args += ["--seeds", "0", "1", "--corruptions", "gaussian_noise"]
    assert main(args) == 0
    text = (out / "summary.md").read_text()
    assert "| method | own norm | + unmix-tns | Δ |" in text
    for order in ("iid", "dirichlet"):
        res = json.loads((out / order / "results.json").read_text())
        by_label = {m["label"]: m for m in res["per_seed"][0]["methods"]}
        for row, own in (("tent", "tbn"), ("rotta", "rbn"), ("note", "iabn"), ("roid", "tbn")):
            assert f"{row}+unmix-tns" in by_label
            plugged = [
                m["mean_error"]
                for s in res["per_seed"]
                for m in s["methods"]
                if m["label"] == f"{row}+unmix-tns"
            ]
            mean = sum(plugged) / len(plugged)
            assert re.search(rf"\| {row} \({own}\) \| [0-9.]+ ± [0-9.]+ \| {mean:.1f} ± ", text)
