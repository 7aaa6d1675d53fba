"""Evaluation runs end to end: files, consistency, resume, config errors (issue 7)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import tta
from tta.cli import main
from tta.config import load_config, resolve_config

CORRUPTIONS = ["gaussian_noise", "fog"]


def write_cifar_c(root: Path, n: int = 40, seed: int = 0, classes: int = 4) -> Path:
    """A CIFAR-10-C-layout folder: n images per severity, 5 severities stacked."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(n) % classes, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for name in CORRUPTIONS:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    return root


def tiny_model(classes: int = 4, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        net[1].running_mean.copy_(torch.rand(8, generator=gen))
        net[1].running_var.copy_(0.5 + torch.rand(8, generator=gen))
    return net.eval()


def config(tmp_path: Path, **stream) -> dict:
    return {
        "name": "tiny",
        "output": str(tmp_path / "out"),
        "seed": 3,
        "device": "cpu",
        "data": {
            "source": "cifar-c",
            "root": str(write_cifar_c(tmp_path / "c")),
            "corruptions": CORRUPTIONS,
        },
        "stream": {"order": "iid", "schedule": "reset_each_shift", "batch_size": 16, **stream},
        "methods": ["tbn", {"name": "unmix-tns", "num_components": 2}, "tent"],
    }


def test_run_writes_consistent_files(tmp_path):
    res = tta.evaluate(config(tmp_path), model=tiny_model())
    out = tmp_path / "out"
    for name in ("results.json", "results.csv", "summary.md", "errors.png", "config.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in saved["methods"]] == ["source", "tbn", "unmix-tns", "tent"]
    domains = ["gaussian_noise-5", "fog-5"]
    assert saved["stream"]["domains"] == domains
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 * len(domains)
    for m in saved["methods"]:
        errs = [m["errors"][d] for d in domains]
        assert m["mean_error"] == pytest.approx(np.mean(errs))
        assert all(m["samples"][d] == 40 for d in domains)
        for row in (r for r in rows if r["method"] == m["label"]):
            assert float(row["error"]) == pytest.approx(m["errors"][row["domain"]], abs=1e-4)
            src = saved["methods"][0]["errors"][row["domain"]]
            assert float(row["delta_vs_source"]) == pytest.approx(
                m["errors"][row["domain"]] - src, abs=1e-4
            )
    assert saved["methods"][0]["delta_vs_source"] == 0.0
    assert res["methods"][1]["delta_vs_source"] == pytest.approx(
        res["methods"][1]["mean_error"] - res["methods"][0]["mean_error"]
    )
    assert "label_stats" in saved["stream"] and saved["versions"]["torch"] == torch.__version__
    summary = (out / "summary.md").read_text()
    assert "| source |" in summary and "Δ vs source" in summary


def test_errors_match_a_hand_run_of_the_stream(tmp_path):
    """The recorded error is the online error of the method on the same stream."""
    cfg = config(tmp_path, schedule="continual")
    res = tta.evaluate(cfg, model=tiny_model())
    from tta.data import CIFARC, make_stream

    stream = make_stream(
        CIFARC(cfg["data"]["root"], corruptions=CORRUPTIONS), "iid", 0.1, "continual", 16, 3
    )
    adapted = tta.adapt(tiny_model(), "tbn")
    wrong = {d: 0 for d in stream.domain_names}
    for seg in stream.segments():
        for batch in seg:
            miss = (adapted(batch.x).argmax(1) != batch.y).numpy()
            for d, m in zip(batch.domains.numpy(), miss):
                wrong[stream.domain_names[d]] += int(m)
    tbn = res["methods"][1]
    for d, w in wrong.items():
        assert tbn["errors"][d] == pytest.approx(100 * w / 40)


def test_resume_after_interruption_gives_identical_results(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    full = tta.evaluate(cfg, model=tiny_model())
    out = tmp_path / "out"
    reference = {n: (out / n).read_bytes() for n in ("results.json", "results.csv", "summary.md")}
    # Simulate a kill: one unit and the final files are missing.
    (out / "units" / "unmix-tns" / "fog-5.json").unlink()
    for n in reference:
        (out / n).unlink()
    import tta.evaluation.run as ev

    calls = []
    real = ev.run_unit
    monkeypatch.setattr(ev, "run_unit", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    again = tta.evaluate(cfg, model=tiny_model())
    assert calls == ["unmix-tns | fog-5"]  # only the missing unit ran
    # Identical results; only the re-measured unit's timing may differ.
    assert (out / "results.csv").read_bytes() == reference["results.csv"]
    timing = ("seconds", "images_per_second")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    assert strip(again["methods"]) == strip(full["methods"])
    assert strip(json.loads((out / "results.json").read_text())["methods"]) == strip(
        full["methods"]
    )
    assert not list(out.rglob("*.tmp"))


def test_same_config_and_seed_same_numbers_and_force_reruns(tmp_path):
    a = tta.evaluate(config(tmp_path), model=tiny_model())
    b = tta.evaluate(config(tmp_path), force=True, model=tiny_model())
    assert [m["errors"] for m in a["methods"]] == [m["errors"] for m in b["methods"]]


def test_changed_config_in_same_output_is_refused(tmp_path):
    tta.evaluate(config(tmp_path), model=tiny_model())
    with pytest.raises(ValueError, match="different config.*stream.*--force"):
        tta.evaluate(config(tmp_path, batch_size=8), model=tiny_model())


def test_cli_run_with_overrides(tmp_path, capsys):
    cfg = config(tmp_path)
    cfg["model"] = {"spec": "resnet8", "num_classes": 4}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "stream.batch_size=20", "methods=[tbn]"]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["stream"]["batch_size"] == 20
    assert [m["label"] for m in saved["methods"]] == ["source", "tbn"]
    assert "| tbn |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "cfg, err, pattern",
    [
        ({"strem": {}}, ValueError, "unknown config key 'strem'. Did you mean 'stream'"),
        (
            {"stream": {"batch_sise": 3}},
            ValueError,
            "'stream.batch_sise'. Did you mean 'batch_size'",
        ),
        ({"stream": {"batch_size": "big"}}, TypeError, "'stream.batch_size' must be int"),
        ({"stream": {"batch_size": 0}}, ValueError, "'stream.batch_size' must be >= 1"),
        ({"stream": {"order": "dirichlett"}}, ValueError, "Did you mean 'dirichlet'"),
        ({"data": {"source": "cifar10c"}}, ValueError, "must be one of"),
        ({"methods": ["tentt"]}, ValueError, "unknown method 'tentt'. Did you mean 'tent'"),
        ({"methods": [{"label": "x"}]}, TypeError, "methods\\[0\\]"),
        ({"methods": ["tbn", "tbn"]}, ValueError, "two methods are labelled 'tbn'"),
        ({"model": []}, TypeError, "'model' must be a mapping"),
    ],
)
def test_config_errors(cfg, err, pattern):
    with pytest.raises(err, match=pattern):
        resolve_config(cfg)


def test_bad_method_option_fails_before_any_work(tmp_path):
    cfg = config(tmp_path)
    cfg["methods"] = [{"name": "unmix-tns", "num_component": 2}]
    with pytest.raises(TypeError, match="Did you mean 'num_components'"):
        tta.evaluate(cfg, model=tiny_model())
    assert not (tmp_path / "out" / "units").exists()


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    assert main(["run", str(tmp_path / "nope.yaml")]) == 1


def test_shipped_configs_validate():
    for path in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        cfg = load_config(path)
        assert cfg["methods"], path


def test_on_the_fly_corruption_equals_tta_corrupt_output(tmp_path):
    """A config's `data.source: corrupt` and `tta corrupt --seed` make the same images."""
    from tta.data import CIFARC
    from tta.data.make_cifarc import write_cifarc as write_dataset
    from tta.evaluation import corrupted_domains

    rng = np.random.default_rng(0)
    n = 2100  # more than one block of `tta corrupt`, so block boundaries are exercised
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    names = ["gaussian_noise", "glass_blur"]
    write_dataset(images, labels, str(tmp_path / "c"), names, [1, 2, 3, 4, 5], 7, progress=False)
    written = CIFARC(tmp_path / "c", corruptions=names, severities=[2, 5])
    fly = corrupted_domains(images, labels, names, [2, 5], seed=7)
    for a, b in zip(written, fly):
        assert a.name == b.name
        assert np.array_equal(a.read_raw(np.arange(n)), b.read_raw(np.arange(n)))


def test_unmix_tns_gets_the_stream_batch_size_and_the_run_seed():
    """The run context fills UnMix-TNS's unset seed and batch size; explicit options win."""
    from tta.methods.base import RunContext

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    net(torch.rand(2, 3, 8, 8))
    net.eval()

    def layer(adapted):
        return next(m for m in adapted.modules() if type(m).__name__ == "UnMixTNS")

    ctx = RunContext(seed=5, batch_size=64)
    by_context = layer(tta.adapt(net, "tent", ctx, norm="unmix-tns"))
    by_options = layer(tta.adapt(net, "tent", norm="unmix-tns", seed=5, batch_size=64))
    assert torch.equal(by_context.components, by_options.components)
    assert by_context.batch_size == 64
    given = layer(tta.adapt(net, "unmix-tns", ctx, batch_size=200, seed=1))
    assert given.batch_size == 200
    assert torch.equal(given.components, layer(tta.adapt(net, "unmix-tns", seed=1)).components)
    assert not torch.equal(given.components, by_context.components)


def test_seeds_run_keeps_each_seed_and_reports_mean_and_std(tmp_path, monkeypatch):
    """`seeds: [3, 4]`: each seed is exactly the run `seed: <s>` would make (units under
    units/seed-<s>/), and the reports show mean ± std (ddof = 1) over the seeds, Δ paired."""
    single = {s: tmp_path / f"single{s}" for s in (3, 4)}
    per = {}
    for s, folder in single.items():
        cfg = config(folder)
        cfg["seed"] = s
        per[s] = tta.evaluate(cfg, model=tiny_model())
        saved = json.loads((folder / "out" / "results.json").read_text())
        assert "seeds" not in saved and "per_seed" not in saved and "seeds" not in saved["config"]
        assert (folder / "out" / "units" / "tbn" / "fog-5.json").is_file()
    cfg = config(tmp_path)
    del cfg["seed"]
    cfg["seeds"] = [3, 4]
    res = tta.evaluate(cfg, model=tiny_model())
    out = tmp_path / "out"
    assert res["seeds"] == [3, 4] and "seed" not in res and "seed" not in res["config"]
    assert (out / "units" / "seed-4" / "unmix-tns" / "fog-5.json").is_file()
    timing = ("seconds", "images_per_second")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    for run, s in zip(res["per_seed"], (3, 4)):
        assert run["seed"] == s
        assert strip(run["methods"]) == strip(per[s]["methods"])
        assert run["stream"] == per[s]["stream"]
    for i, m in enumerate(res["methods"]):
        a, b = per[3]["methods"][i], per[4]["methods"][i]
        assert m["label"] == a["label"]
        assert m["mean_error"] == pytest.approx((a["mean_error"] + b["mean_error"]) / 2)
        assert m["mean_error_std"] == pytest.approx(
            np.std([a["mean_error"], b["mean_error"]], ddof=1)
        )
        deltas = [a["delta_vs_source"], b["delta_vs_source"]]
        assert m["delta_vs_source"] == pytest.approx(np.mean(deltas))
        assert m["delta_vs_source_std"] == pytest.approx(np.std(deltas, ddof=1))
        for d in m["errors"]:
            errs = [a["errors"][d], b["errors"][d]]
            assert m["errors"][d] == pytest.approx(np.mean(errs))
            assert m["errors_std"][d] == pytest.approx(np.std(errs, ddof=1))
    saved = json.loads((out / "results.json").read_text())
    assert saved["per_seed"][1]["methods"][2]["errors"] == per[4]["methods"][2]["errors"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 * 2 and {"error_std", "delta_std", "seeds"} <= set(rows[0])
    tbn = res["methods"][1]
    row = next(r for r in rows if r["method"] == "tbn" and r["domain"] == "fog-5")
    assert float(row["error_std"]) == pytest.approx(tbn["errors_std"]["fog-5"], abs=1e-4)
    summary = (out / "summary.md").read_text()
    assert f"{tbn['mean_error']:.1f} ± {tbn['mean_error_std']:.1f}" in summary
    assert "2 seeds (3, 4)" in summary and "ddof = 1" in summary
    assert (out / "errors.png").stat().st_size > 1000
    # Resume: only a missing per-seed unit runs again, and the results are the same.
    (out / "units" / "seed-4" / "tbn" / "fog-5.json").unlink()
    import tta.evaluation.run as ev

    calls = []
    real = ev.run_unit
    monkeypatch.setattr(ev, "run_unit", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    again = tta.evaluate(cfg, model=tiny_model())
    assert calls == ["tbn | fog-5 | seed 4"]
    assert strip(again["methods"]) == strip(res["methods"])


@pytest.mark.parametrize(
    "given, err, pattern",
    [
        ({"seeds": []}, ValueError, "'seeds' must be a non-empty list of integer seeds"),
        ({"seeds": [1, "2"]}, ValueError, "'seeds' must be a non-empty list of integer seeds"),
        ({"seeds": [1, True]}, ValueError, "'seeds' must be a non-empty list of integer seeds"),
        ({"seeds": [1, 1]}, ValueError, "'seeds' lists a seed more than once"),
        ({"seeds": [-1]}, ValueError, r"'seeds' must hold seeds in \[0, 2\*\*63\)"),
        ({"seeds": [2**63]}, ValueError, r"'seeds' must hold seeds in \[0, 2\*\*63\)"),
        ({"seeds": {"a": 1}}, TypeError, "'seeds' must be list or null"),
        ({"seed": 1, "seeds": [1, 2]}, ValueError, "'seed' .* and 'seeds' .* are both set"),
        ({"sedes": [1]}, ValueError, "Did you mean 'seeds'"),
    ],
)
def test_seeds_config_errors(given, err, pattern):
    with pytest.raises(err, match=pattern):
        resolve_config(given)


def test_seeds_resolve_and_cli_override(tmp_path):
    """A resolved config holds `seed` or `seeds`, never both, and resolves to itself; on the
    command line `seeds=[...]` replaces the file's `seed` (and `seed=` the file's `seeds`)."""
    one = resolve_config({})
    assert one["seed"] == 0 and "seeds" not in one
    many = resolve_config({"seeds": 5})
    assert many["seeds"] == [5] and "seed" not in many
    assert resolve_config(many) == many and resolve_config(one) == one
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\n")
    assert load_config(path, ["seeds=[1,2,3]"])["seeds"] == [1, 2, 3]
    path.write_text("seeds: [1, 2]\n")
    assert load_config(path, ["seed=4"])["seed"] == 4
    with pytest.raises(ValueError, match="both set"):
        load_config(path, ["seed=4", "seeds=[5]"])
    cfg = config(tmp_path)
    cfg["model"] = {"spec": "resnet8", "num_classes": 4}
    cfg["data"]["num_samples"] = 8
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "seeds=[1,2]", "methods=[tbn]"]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["seeds"] == [1, 2] and len(saved["per_seed"]) == 2
