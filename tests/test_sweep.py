"""Sweeps (issue 8): cells, local and Ray executors, retries, resume, merged tables, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import tta.sweep as sw
from tta._errors import TTAError
from tta.cli import main
from tta.config import resolve_config

CORRUPTIONS = ["gaussian_noise", "fog"]
ROOT = Path(__file__).resolve().parent.parent
# Tiny runs are fastest on one thread (tests/conftest.py), and the CI machine may be busy.
pytestmark = pytest.mark.usefixtures("one_thread")


def write_cifar_c(root: Path, n: int = 40) -> Path:
    """A CIFAR-10-C-layout folder: n images per severity, 5 severities stacked."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "labels.npy", np.tile(np.arange(n) % 4, 5).astype(np.uint8))
    for name in CORRUPTIONS:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(write_cifar_c(tmp_path_factory.mktemp("cifar-c")))


def sweep_spec(out: Path, root: str, **grid) -> dict:
    return {
        "name": "tiny",
        "output": str(out),
        "device": "cpu",
        "model": {"spec": "resnet8", "num_classes": 4},
        "data": {"source": "cifar-c", "root": root, "corruptions": CORRUPTIONS},
        "stream": {"order": "iid", "batch_size": 16},
        "methods": ["tbn"],
        "grid": grid or {"stream.schedule": ["reset_each_shift", "continual"], "seed": [0, 1]},
    }


def cell_errors(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """cell id → method → domain → error, read from the cells' results.json."""
    found = {}
    for path in sorted((out / "cells").glob("*/results.json")):
        res = json.loads(path.read_text())
        found[path.parent.name] = {m["label"]: m["errors"] for m in res["methods"]}
    return found


# ---------------------------------------------------------------------------------------------
# Sweep files


def test_cells_are_the_grid_minus_excludes_with_readable_ids(tmp_path, data_root):
    spec = sweep_spec(tmp_path / "s", data_root)
    spec["grid"] = {
        "stream.schedule": ["reset_each_shift", "continual", "mixed"],
        "stream.order": ["iid", "dirichlet"],
        "seed": [1, 2],
    }
    spec["exclude"] = [{"stream.schedule": "mixed", "stream.order": "iid"}, {"seed": 2}]
    sweep = sw.build_sweep(spec)
    ids = [c.id for c in sweep.cells]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert ids[0] == "schedule=reset_each_shift,order=iid,seed=1"
    assert "schedule=mixed,order=dirichlet,seed=1" in ids
    assert not any("seed=2" in i or i.startswith("schedule=mixed,order=iid") for i in ids)
    for cell in sweep.cells:
        # The cell's config is exactly the base with its grid values, written to cells/<id>.
        assert cell.config["output"] == str(tmp_path / "s" / "cells" / cell.id)
        assert cell.config["stream"]["schedule"] == cell.values["stream.schedule"]
        assert cell.config["seed"] == cell.values["seed"]
        assert cell.config == resolve_config(cell.config)
    # Stable: the same file gives the same ids and configs.
    assert [c.config for c in sw.build_sweep(spec).cells] == [c.config for c in sweep.cells]


def test_ids_of_list_values_and_ambiguous_leaf_names(tmp_path, data_root):
    spec = sweep_spec(tmp_path / "s", data_root)
    spec["grid"] = {
        "methods": [["tbn"], ["tbn", {"name": "unmix-tns", "num_components": 2}]],
        "data.severities": [[5], [3, 5]],
    }
    ids = [c.id for c in sw.build_sweep(spec).cells]
    assert ids[0] == "methods=tbn,severities=5"
    assert ids[-1] == "methods=tbn+unmix-tns,severities=3+5"


@pytest.mark.parametrize(
    "grid, exclude, err, pattern",
    [
        (
            {"stream.shedule": ["continual"]},
            None,
            ValueError,
            "grid key 'stream.shedule'.*Did you mean 'stream.schedule'",
        ),
        ({"batch_size": [8]}, None, ValueError, "Did you mean 'stream.batch_size'"),
        ({"seed": []}, None, ValueError, "grid key 'seed' has an empty list"),
        ({"seed": 3}, None, TypeError, "grid key 'seed' must map to a list"),
        ({"seed": [1, 1]}, None, ValueError, "lists the value 1 more than once"),
        ({"output": ["a", "b"]}, None, ValueError, "'output' cannot be swept"),
        ({}, None, ValueError, "needs 'grid'"),
        (
            {"seed": [1, 2]},
            [{"sed": 1}],
            ValueError,
            "exclude\\[0\\] names 'sed', which is not a grid key. Did you mean 'seed'",
        ),
        (
            {"seed": [1, 2]},
            [{"stream.order": "iid"}],
            ValueError,
            "not a grid key.*Grid keys: seed",
        ),
        ({"seed": [1, 2]}, [{"seed": 7}], ValueError, "seed=7, which is not among"),
        ({"seed": [1]}, [{"seed": 1}], ValueError, "leaves no cell"),
        ({"stream.batch_size": [16, 0]}, None, ValueError, "cell 'batch_size=0'.*must be >= 1"),
        ({"stream.order": ["iid", "dirichlett"]}, None, ValueError, "Did you mean 'dirichlet'"),
    ],
)
def test_sweep_file_errors(tmp_path, data_root, grid, exclude, err, pattern):
    spec = sweep_spec(tmp_path / "s", data_root)
    spec["grid"] = grid
    if exclude is not None:
        spec["exclude"] = exclude
    with pytest.raises(err, match=pattern):
        sw.build_sweep(spec)


def test_example_sweep_file_validates():
    sweep = sw.load_sweep(ROOT / "configs" / "sweeps" / "example.yaml")
    assert len(sweep.cells) > 1
    assert "seed" in sweep.grid and len(sweep.grid["seed"]) >= 2
    assert all(c.output.parent == sweep.output / "cells" for c in sweep.cells)


def test_missing_ray_is_a_clear_error(tmp_path, data_root, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(TTAError, match=r'pip install "tta\[ray\]"'):
        sw.run_sweep(sweep_spec(tmp_path / "s", data_root), "ray")
    assert not (tmp_path / "s" / "cells").exists()  # failed before any work


# ---------------------------------------------------------------------------------------------
# Local executor: resume, faults, merged table


def test_cells_equal_tta_run_and_rerun_only_runs_missing_cells(tmp_path, data_root, monkeypatch):
    out = tmp_path / "s"
    spec = sweep_spec(out, data_root)
    report = sw.run_sweep(spec)
    assert len(report["ran"]) == 4 and not report["skipped"] and not report["failed"]
    first = cell_errors(out)
    assert len(first) == 4
    # A cell folder is exactly what `tta run` writes for that cell's config.
    cell = sw.build_sweep(spec).cells[2]
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump({**cell.config, "output": str(tmp_path / "by_run")}))
    assert main(["run", str(path)]) == 0
    a = json.loads((cell.output / "results.json").read_text())
    b = json.loads((tmp_path / "by_run" / "results.json").read_text())
    assert [m["errors"] for m in a["methods"]] == [m["errors"] for m in b["methods"]]
    assert (cell.output / "results.csv").read_bytes() == (
        tmp_path / "by_run" / "results.csv"
    ).read_bytes()

    # Interrupt: one cell lost its results; a rerun runs that cell alone.
    (cell.output / "results.json").unlink()
    calls = []
    real = sw.evaluate
    monkeypatch.setattr(
        sw, "evaluate", lambda cfg, **k: calls.append(cfg["output"]) or real(cfg, **k)
    )
    again = sw.run_sweep(spec)
    assert calls == [str(cell.output)]
    assert again["ran"] == [cell.id] and len(again["skipped"]) == 3
    assert cell_errors(out) == first
    assert not list(out.rglob("*.tmp"))


def test_failing_cell_is_retried_then_reported_while_others_finish(
    tmp_path, data_root, monkeypatch
):
    out = tmp_path / "s"
    spec = sweep_spec(out, data_root)
    bad = "schedule=continual,seed=0"
    attempts = []
    real = sw.evaluate

    def flaky(cfg, **kwargs):
        if cfg["output"].endswith(bad):
            attempts.append(1)
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cfg, **kwargs)

    monkeypatch.setattr(sw, "evaluate", flaky)
    report = sw.run_sweep(spec, retries=2)
    assert len(attempts) == 3  # first try + 2 retries
    assert list(report["failed"]) == [bad] and len(report["ran"]) == 3
    failures = json.loads((out / "failures.json").read_text())
    assert failures[bad]["attempts"] == 3
    assert failures[bad]["errors"] == ["RuntimeError: CUDA out of memory (simulated)"] * 3
    assert "simulated" in failures[bad]["traceback"]
    assert not (out / "cells" / bad / "results.json").exists()
    md = (out / "sweep.md").read_text()
    assert "3 finished, 1 failed" in md and "## Failed cells" in md
    assert f"| {bad} | 3 | RuntimeError: CUDA out of memory (simulated) |" in md
    assert len(cell_errors(out)) == 3
    # CLI exit status says a cell failed.
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["sweep", str(sweep_file), "--retries", "0"]) == 1
    # Once the cause is gone, a rerun runs only that cell and clears the failure.
    monkeypatch.setattr(sw, "evaluate", real)
    again = sw.run_sweep(spec)
    assert again["ran"] == [bad] and not again["failed"]
    assert not (out / "failures.json").exists()
    assert "4 finished, 0 failed" in (out / "sweep.md").read_text()
    assert not list(out.rglob("*.tmp"))


def test_merged_table_matches_per_cell_results(tmp_path, data_root):
    out = tmp_path / "s"
    spec = sweep_spec(out, data_root)
    spec["grid"] = {"stream.schedule": ["reset_each_shift", "continual"], "seed": [0, 1, 2]}
    spec["methods"] = ["tbn", "alpha-bn"]
    sw.run_sweep(spec)
    merged = sw.collect(out)
    md = (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 1000
    per_cell = {
        p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/results.json")
    }
    for schedule in ("reset_each_shift", "continual"):
        group = merged["settings"][f"schedule={schedule}"]
        assert len(group["cells"]) == 3
        for label in ("source", "tbn", "alpha-bn"):
            errs, deltas = [], []
            for seed in (0, 1, 2):
                res = per_cell[f"schedule={schedule},seed={seed}"]
                m = next(m for m in res["methods"] if m["label"] == label)
                src = res["methods"][0]
                errs.append(np.mean(list(m["errors"].values())))
                deltas.append(errs[-1] - np.mean(list(src["errors"].values())))
            e = group["methods"][label]
            assert e["n"] == 3
            assert e["mean"] == pytest.approx(np.mean(errs))
            assert e["std"] == pytest.approx(np.std(errs, ddof=1))
            assert e["delta_mean"] == pytest.approx(np.mean(deltas))
            text = f"{np.mean(errs):.1f} ± {np.std(errs, ddof=1):.1f}"
            if label != "source":
                text += f" ({np.mean(deltas):+.1f})"
            assert text in md
    # sweep.csv: one row per cell × method × domain, grid values as columns.
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 6 * 3 * 2
    assert {"cell", "stream.schedule", "seed", "method", "domain", "error"} <= set(rows[0])
    for r in rows:
        res = per_cell[r["cell"]]
        assert r["stream.schedule"] == res["config"]["stream"]["schedule"]
        assert int(r["seed"]) == res["config"]["seed"]
        m = next(m for m in res["methods"] if m["label"] == r["method"])
        assert float(r["error"]) == pytest.approx(m["errors"][r["domain"]], abs=1e-4)
    # --collect rebuilds identical files from the finished cells alone.
    before = {n: (out / n).read_bytes() for n in ("sweep.csv", "sweep.md")}
    for n in ("sweep.csv", "sweep.md", "sweep.png"):
        (out / n).unlink()
    assert main(["sweep", "--collect", str(out)]) == 0
    assert {n: (out / n).read_bytes() for n in before} == before
    assert (out / "sweep.png").is_file()


def test_collect_without_plan_infers_grid_keys(tmp_path, data_root):
    out = tmp_path / "s"
    sw.run_sweep(sweep_spec(out, data_root))
    (out / "sweep.json").unlink()
    merged = sw.collect(out)
    assert set(merged["grid_keys"]) == {"stream.schedule", "seed"}
    assert set(merged["settings"]) == {
        "schedule=reset_each_shift",
        "schedule=continual",
    }


def test_changed_sweep_file_is_refused_unless_forced(tmp_path, data_root):
    out = tmp_path / "s"
    spec = sweep_spec(out, data_root, seed=[0])
    sw.run_sweep(spec)
    spec["stream"]["batch_size"] = 8
    with pytest.raises(ValueError, match="seed=0.*different config.*--force"):
        sw.run_sweep(spec)
    report = sw.run_sweep(spec, force=True)
    assert report["ran"] == ["seed=0"]
    res = json.loads((out / "cells" / "seed=0" / "results.json").read_text())
    assert res["config"]["stream"]["batch_size"] == 8


def test_ray_task_body_sends_back_a_complete_cell(tmp_path, data_root, monkeypatch):
    """What a Ray worker on another machine returns rebuilds the cell folder on the driver."""
    monkeypatch.chdir(tmp_path)  # the task body changes into the driver's folder
    cell = sw.build_sweep(sweep_spec(tmp_path / "s", data_root, seed=[4])).cells[0]
    out = sw.ray_cell_task(cell.config, str(tmp_path), 1, False)
    assert list(out["files"])[-1] == "results.json"  # the finished marker is written last
    reference = {rel: (cell.output / rel).read_bytes() for rel in out["files"]}
    assert "units/tbn/fog-5.json" in reference
    shutil.rmtree(cell.output)
    sw._store_files(cell.output, out["files"])
    assert sw.is_finished(cell)
    assert {rel: (cell.output / rel).read_bytes() for rel in reference} == reference


def test_cli_errors(tmp_path, capsys):
    assert main(["sweep"]) == 1
    assert "give a sweep file" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", "--collect", str(tmp_path)]) == 1
    assert "no finished cell" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Ray executor


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_cells_as_local(tmp_path, data_root, ray_local):
    local = sw.run_sweep(sweep_spec(tmp_path / "local", data_root))
    remote = sw.run_sweep(sweep_spec(tmp_path / "ray", data_root), "ray", cpus_per_run=1)
    assert sorted(remote["ran"]) == sorted(local["ran"]) and len(remote["ran"]) == 4
    a, b = cell_errors(tmp_path / "local"), cell_errors(tmp_path / "ray")
    assert len(a) == 4 and a == b
    assert (tmp_path / "ray" / "sweep.md").is_file() and not list((tmp_path / "ray").rglob("*.tmp"))
    # Rerun on Ray after losing one cell: only that cell runs, others are untouched.
    lost = tmp_path / "ray" / "cells" / "schedule=continual,seed=1" / "results.json"
    others = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "cells").glob("*/results.json")}
    lost.unlink()
    again = sw.run_sweep(sweep_spec(tmp_path / "ray", data_root), "ray")
    assert again["ran"] == ["schedule=continual,seed=1"] and len(again["skipped"]) == 3
    assert cell_errors(tmp_path / "ray") == a
    assert all(p.stat().st_mtime_ns == t for p, t in others.items() if p != lost)


def test_ray_refuses_cells_larger_than_the_local_cluster(tmp_path, data_root, ray_local):
    with pytest.raises(ValueError, match="asks for 4 CPU but the Ray cluster has 2"):
        sw.run_sweep(sweep_spec(tmp_path / "s", data_root), "ray", cpus_per_run=4)


def test_ray_cell_with_a_user_error_is_reported_at_once(tmp_path, data_root, ray_local):
    """A missing data folder (a TTAError) cannot succeed on a retry: one attempt, then reported."""
    out = tmp_path / "s"
    spec = sweep_spec(out, data_root)
    spec["grid"] = {"data.root": [data_root, str(tmp_path / "no-such-folder")], "seed": [0]}
    report = sw.run_sweep(spec, "ray", retries=1)
    (bad,) = report["failed"]
    assert "no-such-folder" in bad and len(report["ran"]) == 1
    failures = json.loads((out / "failures.json").read_text())
    assert failures[bad]["attempts"] == 1 and len(failures[bad]["errors"]) == 1
    assert "no-such-folder" in failures[bad]["errors"][-1]
    assert not (out / "cells" / bad / "results.json").exists()
    md = (out / "sweep.md").read_text()
    assert "1 finished, 1 failed" in md and "no-such-folder" in md
    assert len(cell_errors(out)) == 1


def test_cells_with_seeds_merge_like_a_grid_over_seed(tmp_path, data_root):
    """A sweep whose cells run `seeds: [0, 1]` gives the same merged numbers as a grid over
    `seed: [0, 1]`: a cell with seeds counts as one run per seed."""
    by_grid = sweep_spec(tmp_path / "grid", data_root)
    sw.run_sweep(by_grid)
    grid = sw.collect(tmp_path / "grid")
    by_seeds = sweep_spec(tmp_path / "seeds", data_root)
    by_seeds["grid"] = {"stream.schedule": ["reset_each_shift", "continual"]}
    by_seeds["seeds"] = [0, 1]
    sw.run_sweep(by_seeds)
    seeds = sw.collect(tmp_path / "seeds")
    assert seeds["seeded"] and set(seeds["settings"]) == set(grid["settings"])
    for label, group in seeds["settings"].items():
        assert group["seeds"] == 2 and len(group["cells"]) == 1
        for method, e in group["methods"].items():
            g = grid["settings"][label]["methods"][method]
            assert e["n"] == 2
            for key in ("mean", "std", "delta_mean", "delta_std"):
                assert e[key] == pytest.approx(g[key])
    md = (tmp_path / "seeds" / "sweep.md").read_text()
    assert "(2 seeds)" in md and "mean ± std over seeds" in md
    rows = list(csv.DictReader((tmp_path / "seeds" / "sweep.csv").open()))
    assert len(rows) == 2 * 2 * 2 * 2 and {r["seed"] for r in rows} == {"0", "1"}
    grid_rows = list(csv.DictReader((tmp_path / "grid" / "sweep.csv").open()))
    key = lambda r: (r["stream.schedule"], r["seed"], r["method"], r["domain"])  # noqa: E731
    assert {key(r): r["error"] for r in rows} == {key(r): r["error"] for r in grid_rows}
    # A grid over seed on a base with seeds is refused before anything runs.
    bad = sweep_spec(tmp_path / "bad", data_root)
    bad["seeds"] = [0, 1]
    with pytest.raises(ValueError, match="both set"):
        sw.build_sweep(bad)
