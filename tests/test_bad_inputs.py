"""Results you can trust (issue 11): no silent wrong results, one-line user errors, run folders
that behave as a user expects, no silent coercions."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import tta
import tta._runs as runs
import tta.evaluation as ev
import tta.evaluation.run as ev_run
import tta.sweep as sw
from tta._errors import TTAError, TTATypeError
from tta._io import LOCK_NAME, folder_lock
from tta.cli import main
from tta.config import resolve_config

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation import tiny_model, write_cifar_c  # noqa: E402

CORRUPTIONS = ["gaussian_noise", "fog"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(tmp_path: Path, methods=("tbn",), **extra) -> dict:
    root = tmp_path / "c"
    if not root.exists():
        write_cifar_c(root)
    return {
        "name": "tiny",
        "output": str(tmp_path / "out"),
        "seed": 3,
        "device": "cpu",
        "data": {"source": "cifar-c", "root": str(root), "corruptions": CORRUPTIONS},
        "stream": {"order": "iid", "schedule": "reset_each_shift", "batch_size": 16},
        "methods": list(methods),
        **extra,
    }


def cli_config(tmp_path: Path, **extra) -> dict:
    """A config the command line can run: the model is built from the config."""
    cfg = config(tmp_path, **extra)
    cfg.setdefault("model", {"spec": "resnet8", "num_classes": 4})
    return cfg


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def counting_units(monkeypatch) -> list[str]:
    """From now on, the description of every unit run: through ``run_unit`` (one method missing
    on a segment) or ``run_segment`` (several), both looked up on tta.evaluation.run."""
    calls: list[str] = []
    for name in ("run_unit", "run_segment"):
        real = getattr(ev_run, name)
        monkeypatch.setattr(
            ev_run, name, lambda *a, _real=real, **k: calls.append(a[4]) or _real(*a, **k)
        )
    return calls


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    """``tta ...`` exits with 1 and prints exactly one line ``tta <cmd>: error: ...``."""
    capsys.readouterr()  # what earlier calls printed
    assert main(argv) == 1
    err = capsys.readouterr().err
    # warnings come first, one line each (a model without a checkpoint runs on random weights)
    err = "".join(x for x in err.splitlines(True) if not x.startswith(f"tta {argv[0]}: warning: "))
    assert err.startswith(f"tta {argv[0]}: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


# ---------------------------------------------------------------------------------------------
# A. Silent wrong results


@pytest.mark.parametrize(
    "a, b",
    [
        ("my/method", "my_method"),
        ("méthode", "m_thode"),
        ("TBN", "tbn"),  # a case-insensitive disk
        ("x" * 120, "x" * 121),
        (".", "_"),
        ("a~b", "a_b"),
    ],
)
def test_unit_names_are_distinct_for_distinct_labels(a, b):
    na, nb = ev.unit_name(a), ev.unit_name(b)
    assert na.lower() != nb.lower()
    for name in (na, nb):
        assert "/" not in name and name not in (".", "..") and len(name) <= 80


def test_plain_unit_names_stay_readable():
    for name in ("tbn", "tent+unmix-tns", "gaussian_noise-5", "alpha-bn"):
        assert ev.unit_name(name) == name
    assert ev.unit_name("my/method").startswith("my_method~")


def bn_first_model(seed: int = 1) -> nn.Module:
    """Normalises the raw input with BatchNorm first: tbn and source predict differently."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    with torch.no_grad():
        net[3].weight.copy_(torch.randn(4, 3, generator=gen))
        net[3].bias.zero_()
        net[0].running_mean.fill_(0.3)
        net[0].running_var.fill_(0.01)
    return net.eval()


def test_colliding_labels_report_their_own_numbers(tmp_path):
    """`my/method` and `my_method` used to share units/my_method: the second reported the
    first's numbers."""
    cfg = config(
        tmp_path,
        methods=[
            {"name": "tbn", "label": "my/method"},
            {"name": "alpha-bn", "alpha": 1.0, "label": "my_method"},  # equals source
            {"name": "tbn", "label": "méthode"},
            {"name": "alpha-bn", "alpha": 1.0, "label": "m_thode"},
        ],
    )
    res = tta.evaluate(cfg, model=bn_first_model())
    errors = {m["label"]: m["errors"] for m in res["methods"]}
    assert errors["my/method"] != errors["source"]  # tbn differs from source on this data
    assert errors["my_method"] == errors["source"]
    assert errors["m_thode"] == errors["source"]
    assert errors["méthode"] == errors["my/method"]
    folders = list((tmp_path / "out" / "units").iterdir())
    assert len(folders) == 5
    for folder in folders:
        labels = {json.loads(p.read_text())["method"] for p in folder.glob("*.json")}
        assert len(labels) == 1 and ev.unit_name(labels.pop()) == folder.name


def test_second_run_in_the_same_folder_is_refused_naming_the_holder(tmp_path):
    cfg = config(tmp_path)
    out = tmp_path / "out"
    with folder_lock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(
            TTAError, match=f"{out}.*in use by another tta run \\(PID {os.getpid()}"
        ):
            tta.evaluate(cfg, model=tiny_model())
    assert not (out / "config.json").exists()
    tta.evaluate(cfg, model=tiny_model())  # the lock went with its holder


def test_sweep_cell_in_use_is_reported_without_retry(tmp_path):
    spec = {**cli_config(tmp_path), "output": str(tmp_path / "s"), "grid": {"seed": [0, 1]}}
    cell = sw.build_sweep(spec).cells[1]
    with folder_lock(cell.output):
        report = sw.run_sweep(spec, retries=2)
    assert list(report["failed"]) == [cell.id] and report["failed"][cell.id]["attempts"] == 1
    assert f"PID {os.getpid()}" in report["failed"][cell.id]["errors"][0]
    with folder_lock(tmp_path / "s"):
        with pytest.raises(TTAError, match="sweep folder .* is in use by another tta run"):
            sw.run_sweep(spec)


def test_changed_checkpoint_is_not_resumed_but_a_touched_one_is(tmp_path, monkeypatch):
    ckpt = tmp_path / "model.pt"
    torch.save(tiny_model().state_dict(), ckpt)
    cfg = config(tmp_path)
    monkeypatch.setattr(tta, "load_model", lambda *a, **k: _load_tiny(ckpt))
    tta.evaluate({**cfg, "model": {"checkpoint": str(ckpt)}})
    marker = json.loads((tmp_path / "out" / runs.MARKER).read_text())
    assert marker["inputs"]["checkpoint"]["sha256"] == runs.sha256_file(ckpt)
    calls = counting_units(monkeypatch)
    # Touched, same bytes: resumes (nothing reruns).
    os.utime(ckpt, ns=(1, 1))
    tta.evaluate({**cfg, "model": {"checkpoint": str(ckpt)}})
    assert calls == []
    # Other weights of the same size: refused, naming the file and --force.
    torch.save(tiny_model(seed=1).state_dict(), ckpt)
    with pytest.raises(TTAError, match=f"the checkpoint: '{ckpt}' has different content.*--force"):
        tta.evaluate({**cfg, "model": {"checkpoint": str(ckpt)}})
    tta.evaluate({**cfg, "model": {"checkpoint": str(ckpt)}}, force=True)


def _load_tiny(path: Path) -> nn.Module:
    net = tiny_model()
    net.load_state_dict(torch.load(path))
    return net


def test_changed_data_file_is_not_resumed_but_a_touched_one_is(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    tta.evaluate(cfg, model=tiny_model())
    fog = tmp_path / "c" / "fog.npy"
    calls = counting_units(monkeypatch)
    os.utime(fog, ns=(5, 5))
    tta.evaluate(cfg, model=tiny_model())
    assert calls == []
    data = np.load(fog)
    np.save(fog, 255 - data)
    with pytest.raises(TTAError, match=r"data 'fog.npy': .*fog.npy' has different content"):
        tta.evaluate(cfg, model=tiny_model())


def test_changed_python_model_or_tta_version_is_not_resumed(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    tta.evaluate(cfg, model=tiny_model())
    tta.evaluate(cfg, model=tiny_model())  # the same weights resume
    with pytest.raises(TTAError, match="the model passed as model= changed.*--force"):
        tta.evaluate(cfg, model=tiny_model(seed=2))
    monkeypatch.setattr(tta, "__version__", "99.0")
    with pytest.raises(TTAError, match=r"the tta version \(\S+ → 99.0\)"):
        tta.evaluate(cfg, model=tiny_model())


def test_force_only_clears_folders_tta_made(tmp_path):
    cfg = config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TTAError, match="not empty \\(notes.txt\\) and was not made by tta run"):
        tta.evaluate(cfg, force=True, model=tiny_model())
    assert (out / "notes.txt").read_text() == "mine"
    # A run folder: --force removes what tta wrote, and only that.
    tta.evaluate(cfg, model=tiny_model())
    (out / "units" / "tbn" / "fog-5.json").write_text("{}")
    tta.evaluate(cfg, force=True, model=tiny_model())
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "units" / "tbn" / "fog-5.json").read_text())["method"] == "tbn"


def test_force_accepts_run_folders_from_before_the_marker(tmp_path):
    cfg = config(tmp_path)
    tta.evaluate(cfg, model=tiny_model())
    (tmp_path / "out" / runs.MARKER).unlink()
    with pytest.raises(TTAError, match="without a record of the model and data.*--force"):
        tta.evaluate(cfg, model=tiny_model())
    tta.evaluate(cfg, force=True, model=tiny_model())
    assert (tmp_path / "out" / runs.MARKER).is_file()


def test_labels_beyond_the_model_classes_are_refused(tmp_path):
    write_cifar_c(tmp_path / "c", classes=7)  # labels 0..6, the model has 4 outputs
    with pytest.raises(TTAError, match="domain 'gaussian_noise-5' has label 6 but the model has 4"):
        tta.evaluate(config(tmp_path), model=tiny_model())
    assert not (tmp_path / "out").exists()  # the folder was not claimed


class TupleModel(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind = tiny_model(), kind

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "tuple":
            return logits, logits.detach()
        if self.kind == "dict":
            return {"logits": logits}
        return logits[:, :, None]


@pytest.mark.parametrize(
    "kind, err, pattern",
    [
        ("tuple", TTATypeError, r"the model returned a tuple of 2 items .*return the logits"),
        ("dict", TTATypeError, r"the model returned a dict with keys \['logits'\].*logits"),
        ("3d", TTAError, r"a tensor of shape \(1, 4, 1\).*\(batch, classes\)"),
    ],
)
def test_model_must_return_logits(tmp_path, kind, err, pattern):
    with pytest.raises(err, match=pattern):
        tta.evaluate(config(tmp_path), model=TupleModel(kind))


class NaNForBrightPixel(nn.Module):
    """tiny_model's logits, NaN for the images whose first pixel is bright."""

    def __init__(self):
        super().__init__()
        self.net = tiny_model()

    def forward(self, x):
        logits = self.net(x)
        return torch.where((x[:, 0, 0, 0] > 0.5)[:, None], float("nan"), logits)


def test_nonfinite_logits_count_as_errors_and_are_reported(tmp_path):
    cfg = config(tmp_path, methods=[])
    res = tta.evaluate(cfg, model=NaNForBrightPixel())
    from tta.data import CIFARC

    source = res["methods"][0]
    model = NaNForBrightPixel()
    for d in CIFARC(cfg["data"]["root"], corruptions=CORRUPTIONS):
        x, y = d.get(np.arange(len(d)))
        with torch.no_grad():
            logits = model(x)
        bad = ~torch.isfinite(logits).all(1)
        wrong = (logits.argmax(1) != y) | bad
        assert 0 < int(bad.sum()) < len(d)
        assert source["nonfinite"][d.name] == int(bad.sum())
        assert source["errors"][d.name] == pytest.approx(100 * wrong.double().mean().item())
        # NaN rows argmax to a class: some would have been scored as right.
        assert ((logits.argmax(1) == y) & bad).any()
    assert source["nonfinite_total"] == sum(source["nonfinite"].values())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["methods"][0]["nonfinite"] == source["nonfinite"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert (
        f"**Warning**: source returned non-finite logits (NaN or inf) for "
        f"{source['nonfinite_total']} of 80 samples" in summary
    )


def test_finite_runs_report_zero_nonfinite_and_no_warning(tmp_path):
    res = tta.evaluate(config(tmp_path), model=tiny_model())
    assert all(m["nonfinite_total"] == 0 for m in res["methods"])
    assert all(set(m["nonfinite"].values()) == {0} for m in res["methods"])
    assert "Warning" not in (tmp_path / "out" / "summary.md").read_text()


def test_num_samples_larger_than_a_domain_warns(tmp_path):
    cfg = config(tmp_path)
    cfg["data"]["num_samples"] = 100
    with pytest.warns(
        UserWarning,
        match=r"num_samples=100 is larger than domain 'gaussian_noise-5'"
        r", 'fog-5' \(40 samples\)",
    ):
        res = tta.evaluate(cfg, model=tiny_model())
    assert res["stream"]["num_samples"] == 80


# ---------------------------------------------------------------------------------------------
# B. One error type, one line


BAD_CONFIGS = [
    ({"model": {"mean": [float("nan")]}}, "config key 'model.mean' must be a non-empty list of finite numbers"),
    ({"model": {"mean": ["a"]}}, "config key 'model.mean' must be a non-empty list of finite numbers"),
    ({"model": {"std": [0.2, 0]}}, "config key 'model.std' must be a list of numbers > 0"),
    ({"model": {"mean": [0.5, 0.5], "std": [1, 1, 1]}}, "'model.mean' and 'model.std' must have the same length"),
    ({"seed": -1}, "config key 'seed' must be in [0, 2**63), got -1"),
    ({"seed": 2**63}, "config key 'seed' must be in [0, 2**63), got 9223372036854775808"),
    ({"methods": [{"name": "tbn", "label": 123}]}, "config key 'methods[0].label' must be a non-empty string"),
    ({"methods": [{"name": "tbn", "label": ""}]}, "config key 'methods[0].label' must be a non-empty string"),
    ({"device": "gpu"}, "config key 'device' must be auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps, got 'gpu'"),
    ({"name": "a/b"}, "config key 'name' must be a plain name"),
    ({"name": ".."}, "config key 'name' must be a plain name"),
    ({"output": ""}, "config key 'output' must be a folder path"),
    ({"data": {"corruptions": []}}, "data.corruptions is empty; omit the key for the default set"),
    ({"data": {"source": "corrupt", "clean": "mnist5k", "corruptions": []}}, "data.corruptions is empty"),
    ({"data": {"source": "imagenet-c", "corruptions": []}}, "data.corruptions is empty"),
    ({"data": {"corruptions": [1]}}, "data.corruptions[0] is 1 (int)"),
    ({"data": {"severities": [0]}}, "config key 'data.severities' must be a non-empty list of severities"),
    ({"methods": [{"name": "source", "label": "x"}]}, "source always runs first as the baseline, labelled 'source', so it cannot be labelled 'x'"),
]  # fmt: skip


@pytest.mark.parametrize("override, text", BAD_CONFIGS)
def test_bad_config_values_are_one_line_errors(tmp_path, capsys, override, text):
    cfg = cli_config(tmp_path)
    for key, value in override.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path = write_yaml(tmp_path / "run.yaml", cfg)
    one_line_error(capsys, ["run", str(path)], text)
    assert not (tmp_path / "out" / "config.json").exists()


def test_source_listed_plainly_is_the_baseline():
    cfg = resolve_config({"methods": ["source", {"name": "source", "label": "source"}, "tbn"]})
    from tta.config import method_entries

    assert [e.label for e in method_entries(cfg["methods"])] == ["source", "tbn"]


@pytest.mark.parametrize(
    "argv, text",
    [
        (["methods=[tbn"], "override 'methods=[tbn' has a value that is not valid YAML"),
        (["seed=-1"], "config key 'seed' must be in [0, 2**63)"),
        (["stream.batch_size"], "override 'stream.batch_size' must look like key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(tmp_path, capsys, argv, text):
    path = write_yaml(tmp_path / "run.yaml", cli_config(tmp_path))
    one_line_error(capsys, ["run", str(path), *argv], text)


def test_bad_sweep_override_is_a_one_line_error(tmp_path, capsys):
    spec = {**cli_config(tmp_path), "output": str(tmp_path / "s"), "grid": {"seed": [0]}}
    path = write_yaml(tmp_path / "sweep.yaml", spec)
    one_line_error(
        capsys, ["sweep", str(path), "grid.seed=[1,"], "override 'grid.seed=[1,' has a value that"
    )


@pytest.mark.parametrize(
    "content, text",
    [
        (b"seed: 1\nname: caf\xe9\n", "is not UTF-8 text (byte 0xe9 at position 17); save it as UTF-8"),
        (b"- tbn\n- tent\n", "must hold a mapping of config keys (name, output, seed"),
        (b"42\n", "must hold a mapping of config keys"),
        (b"stream: [unclosed\n", "is not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ],
)  # fmt: skip
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    one_line_error(capsys, ["run", str(path)], str(path), text)


def test_damaged_files_name_the_file_and_suggest_force(tmp_path, capsys):
    path = write_yaml(tmp_path / "run.yaml", cli_config(tmp_path))
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    unit = out / "units" / "tbn" / "fog-5.json"
    unit.write_text('{"method": "tbn", "wro')
    capsys.readouterr()
    one_line_error(capsys, ["run", str(path)], f"'{unit}' is damaged (not valid JSON", "--force")
    unit.write_text(json.dumps({"method": "tent", "segment": "fog-5"}))
    one_line_error(capsys, ["run", str(path)], f"'{unit}' is damaged or belongs to another unit")
    (out / "config.json").write_bytes(b"\xff\xfe")
    one_line_error(
        capsys, ["run", str(path)], f"'{out / 'config.json'}' is damaged (not valid JSON", "--force"
    )
    assert main(["run", str(path), "--force"]) == 0


def test_damaged_sweep_json_is_named(tmp_path, capsys):
    spec = {**cli_config(tmp_path), "output": str(tmp_path / "s"), "grid": {"seed": [0]}}
    sw.run_sweep(spec)
    (tmp_path / "s" / "sweep.json").write_text("{")
    one_line_error(
        capsys, ["sweep", "--collect", str(tmp_path / "s")], "sweep.json' is damaged (not valid"
    )


def test_output_that_is_a_file_or_read_only_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    path = write_yaml(tmp_path / "run.yaml", cli_config(tmp_path, output=str(tmp_path / "file")))
    one_line_error(
        capsys, ["run", str(path)], f"output '{tmp_path / 'file'}' is a file, not a folder"
    )
    path = write_yaml(
        tmp_path / "run.yaml", cli_config(tmp_path, output=str(tmp_path / "file" / "sub"))
    )
    one_line_error(capsys, ["run", str(path)], "which is a file")
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(runs, "writable", lambda folder: False)
    path = write_yaml(tmp_path / "run.yaml", cli_config(tmp_path, output=str(tmp_path / "ro")))
    one_line_error(capsys, ["run", str(path)], f"output folder '{tmp_path / 'ro'}' is not writable")


def test_tilde_is_expanded_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = resolve_config(
        {
            "output": "~/out",
            "model": {"checkpoint": "~/m.pt"},
            "data": {"root": "~/c", "clean": "cifar10:~/cifar"},
        }
    )
    assert cfg["output"] == str(tmp_path / "out")
    assert cfg["model"]["checkpoint"] == str(tmp_path / "m.pt")
    assert cfg["data"]["root"] == str(tmp_path / "c")
    assert cfg["data"]["clean"] == f"cifar10:{tmp_path / 'cifar'}"
    write_cifar_c(tmp_path / "c")
    tta.evaluate({**config(tmp_path), "output": "~/out", "data": {**config(tmp_path)["data"], "root": "~/c"}}, model=tiny_model())  # fmt: skip
    assert (tmp_path / "out" / "results.json").is_file()
    assert not Path("~").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_cuda_is_a_user_error():
    with pytest.raises(TTAError, match="device 'cuda:1' asked for, but torch sees no CUDA GPU"):
        ev.resolve_device("cuda:1")


# ---------------------------------------------------------------------------------------------
# C. Run folders behave as a user expects


def test_a_run_that_fails_its_checks_does_not_claim_its_folder(tmp_path, capsys, monkeypatch):
    write_cifar_c(tmp_path / "c", classes=7)
    cfg = cli_config(tmp_path)
    path = write_yaml(tmp_path / "run.yaml", cfg)
    one_line_error(capsys, ["run", str(path)], "has label 6 but the model has 4 outputs")
    assert not (tmp_path / "out" / "config.json").exists()
    # The fixed config runs without --force.
    assert main(["run", str(path), "model.num_classes=7"]) == 0
    # An empty config fails on its missing data and writes nothing.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    one_line_error(capsys, ["run", "empty.yaml"])  # no model, no data
    assert not (tmp_path / "runs").exists()


def test_force_and_options_anywhere_on_the_command_line(tmp_path, capsys):
    path = write_yaml(tmp_path / "run.yaml", cli_config(tmp_path))
    assert main(["run", str(path), "stream.batch_size=20"]) == 0
    assert main(["run", str(path), "--force", "stream.batch_size=8", "methods=[alpha-bn]"]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["stream"]["batch_size"] == 8
    assert [m["label"] for m in saved["methods"]] == ["source", "alpha-bn"]
    spec = {**cli_config(tmp_path), "output": str(tmp_path / "s"), "grid": {"seed": [0]}}
    sweep = write_yaml(tmp_path / "sweep.yaml", spec)
    assert main(["sweep", str(sweep), "grid.seed=[1]"]) == 0
    assert main(["sweep", "--retries", "0", str(sweep), "--force", "grid.seed=[1]"]) == 0
    assert "1 finished, 0 failed" in capsys.readouterr().out


def test_result_files_get_normal_permissions(tmp_path):
    before = os.umask(0o022)
    try:
        tta.evaluate(config(tmp_path), model=tiny_model())
    finally:
        os.umask(before)
    out = tmp_path / "out"
    names = ["results.json", "results.csv", "summary.md", "errors.png", "config.json"]
    for path in [*(out / n for n in names), out / "units" / "tbn" / "fog-5.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_temp_files_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    cfg = config(tmp_path)
    tta.evaluate(cfg, model=tiny_model())
    out = tmp_path / "out"
    left = [out / ".results.json.k2x9a1.tmp", out / "units" / "tbn" / ".fog-5.json.3jd8s.tmp"]
    for p in left:
        p.write_text("half")
    (out / "mine.tmp").write_text("kept")  # not a temp file of tta's
    tta.evaluate(cfg, model=tiny_model())
    assert not any(p.exists() for p in left)
    assert (out / "mine.tmp").exists()


def test_sweeps_do_not_retry_user_errors(tmp_path, monkeypatch):
    spec = {
        **cli_config(tmp_path),
        "output": str(tmp_path / "s"),
        "grid": {"model.num_classes": [4, 2]},
    }
    calls = []
    real = sw.evaluate
    monkeypatch.setattr(sw, "evaluate", lambda cfg, **k: calls.append(1) or real(cfg, **k))
    report = sw.run_sweep(spec, retries=3)
    (bad,) = report["failed"]
    assert bad == "num_classes=2" and len(calls) == 2
    failure = report["failed"][bad]
    assert failure["attempts"] == 1
    assert failure["errors"] == [
        "TTAError: domain 'gaussian_noise-5' has label 3 but the model has 2 outputs (valid "
        "labels: 0..1); check model.num_classes and the data"
    ]


def test_finished_run_in_a_read_only_folder_is_summarised(tmp_path, monkeypatch, capsys):
    path = write_yaml(tmp_path / "run.yaml", cli_config(tmp_path))
    assert main(["run", str(path)]) == 0
    first = capsys.readouterr().out
    out = tmp_path / "out"
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    monkeypatch.setattr(runs, "writable", lambda folder: False)

    def no_writes(*args, **kwargs):
        raise AssertionError("a read-only folder was written to")

    for module, name in ((ev_run, "folder_lock"), (ev_run, "write_json"), (runs, "write_text")):
        monkeypatch.setattr(module, name, no_writes)
    monkeypatch.setattr("tta.report.write_reports", no_writes)
    if os.getuid() != 0:
        out.chmod(0o555)
    try:
        assert main(["run", str(path)]) == 0
        assert capsys.readouterr().out == first
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
        # Not finished: a clear error, nothing written.
        (out / "units" / "tbn" / "fog-5.json").rename(tmp_path / "moved.json")
        one_line_error(capsys, ["run", str(path)], "is not writable and the run is not finished")
    finally:
        out.chmod(0o755)


def test_unchanged_config_json_is_not_rewritten(tmp_path):
    cfg = config(tmp_path)
    tta.evaluate(cfg, model=tiny_model())
    saved = tmp_path / "out" / "config.json"
    os.utime(saved, ns=(7, 7))
    tta.evaluate(cfg, model=tiny_model())
    assert saved.stat().st_mtime_ns == 7
