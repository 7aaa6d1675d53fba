"""`tta demo` in a reduced mode: trains, corrupts, evaluates both streams, states what it saw."""

from __future__ import annotations

import json
import re

from tta.cli import main
from tta.demo import DEMO_METHODS


def test_demo_reduced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "1", "--num-samples", "200"]
    assert main([*args, "--corruptions", "gaussian_noise", "contrast"]) == 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the source model is cached
    res = {o: json.loads((out / o / "results.json").read_text()) for o in ("iid", "dirichlet")}
    for r in res.values():
        assert [m["label"] for m in r["methods"]] == ["source", *DEMO_METHODS]
        assert {"tbn", "alpha-bn", "rbn", "unmix-tns", "tent", "core"} <= set(DEMO_METHODS)
        assert r["stream"]["domains"] == ["gaussian_noise-5", "contrast-5"]
        assert r["stream"]["num_samples"] == 400
    # The Dirichlet stream is label-correlated, the i.i.d. one is not.
    iid, dirichlet = (res[o]["stream"]["label_stats"] for o in ("iid", "dirichlet"))
    assert (
        dirichlet["consecutive_same_label_fraction"]
        > 0.5
        > 0.3
        > iid["consecutive_same_label_fraction"]
    )
    assert dirichlet["mean_distinct_labels_per_batch"] < iid["mean_distinct_labels_per_batch"]
    # Same images and labels in both runs: the source baseline is identical.
    assert res["iid"]["methods"][0]["errors"] == res["dirichlet"]["methods"][0]["errors"]
    # The summary's statements are read off the numbers.
    summary = (out / "summary.md").read_text()
    tbn = {o: next(m for m in res[o]["methods"] if m["label"] == "tbn") for o in res}
    line = f"tbn: {tbn['iid']['mean_error']:.1f}% i.i.d. → {tbn['dirichlet']['mean_error']:.1f}%"
    assert line in summary
    assert re.search(r"Label correlation: unmix-tns is (not )?less hurt", summary)
    assert "| source |" in capsys.readouterr().out
    # A rerun reuses the cached model and the finished units.
    assert main([*args, "--corruptions", "gaussian_noise", "contrast"]) == 0
    assert "Reusing the source model" in capsys.readouterr().out
