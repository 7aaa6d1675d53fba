"""The method layer: registration, plugins from a run config, run context, EATA in runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tta
from tta._errors import TTAError
from tta.methods.base import Method
from tta.registry import METHODS, register_method

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation import config, tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _registry_restored():
    """Methods a test registers (plugins) are removed afterwards, so other tests see tta's own."""
    before, modules = dict(METHODS), set(sys.modules)
    yield
    METHODS.clear()
    METHODS.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith("tta_plugin_"):
            del sys.modules[name]


def test_duplicate_method_name_is_refused():
    class Again(Method):
        name = "tent"
        description = "a second tent"

    with pytest.raises(TTAError, match="'tent' is already registered"):
        register_method(Again)
    with pytest.raises(TTAError, match="'tbn' is already registered"):
        register_method(type("T", (Method,), {"name": "tbn", "description": ""}))
    assert METHODS["tent"].__name__ == "Tent"


def test_register_method_wants_a_method_class():
    with pytest.raises(TypeError, match="subclass of tta.methods.Method"):
        register_method(object)


def test_methods_do_not_import_the_wrapper():
    """No wrapper <-> method cycle: no module of the method layer imports tta.wrapper."""
    for path in (ROOT / "tta" / "methods").glob("*.py"):
        assert "tta.wrapper" not in path.read_text(), path.name


def test_readme_example_is_the_shipped_plugin():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Adding a method.*?```python\n(.*?)```", readme, re.S).group(1)
    shipped = (ROOT / "examples" / "my_method.py").read_text()
    body = shipped.split('"""', 2)[2].lstrip("\n")
    assert block.strip() == body.strip()
    assert len(block.strip().splitlines()) <= 40


def test_plugin_method_runs_from_a_yaml_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config(tmp_path)
    cfg["plugins"] = ["examples/my_method.py"]
    cfg["methods"] = ["tbn", {"name": "pseudo-label", "norm": "unmix-tns", "threshold": 0.3}]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = tta.evaluate(tta.config.load_config(path), model=tiny_model())
    labels = [m["label"] for m in res["methods"]]
    assert labels == ["source", "tbn", "pseudo-label+unmix-tns"]
    plugin = res["methods"][2]
    assert plugin["options"] == {"norm": "unmix-tns", "threshold": 0.3}
    # The same method by hand on the same model gives an adapted state different from source:
    # it trained (its threshold lets samples through on this tiny model).
    adapted = tta.adapt(tiny_model(), "pseudo-label", threshold=0.3)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    adapted(x)
    assert adapted.method.num_updates == 1
    adapted.reset()
    assert adapted.method.num_updates == 0
    # a second import of the same file does not register twice
    tta.plugins.load_plugins(["examples/my_method.py"])


def test_missing_plugin_names_the_path(tmp_path):
    with pytest.raises(TTAError, match="plugin file 'nowhere/m.py' does not exist"):
        tta.plugins.load_plugin("nowhere/m.py")
    with pytest.raises(TTAError, match="plugin module 'no_such_module_xyz' cannot be imported"):
        tta.plugins.load_plugin("no_such_module_xyz")
    cfg = config(tmp_path)
    cfg["plugins"] = [3]
    with pytest.raises(TTAError, match="a plugin must be a module name or a .py file, got 3"):
        tta.config.resolve_config(cfg)


def _npz(tmp_path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path / "clean.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        labels=(np.arange(n) % 4).astype(np.int64),
    )
    return path


def test_eata_in_a_run_gets_source_images_and_the_class_count(tmp_path, monkeypatch):
    seen = {}
    original = tta.methods.eata.EATA.prepare

    def spy(self):
        seen["images"] = self.context.source_images
        seen["num_classes"] = self.context.num_classes
        seen["seed"] = self.context.seed
        original(self)

    monkeypatch.setattr(tta.methods.eata.EATA, "prepare", spy)
    cfg = config(tmp_path)
    cfg["data"]["source_data"] = str(_npz(tmp_path))
    cfg["methods"] = [{"name": "eata", "fisher_samples": 10}]
    res = tta.evaluate(cfg, model=tiny_model())
    assert [m["label"] for m in res["methods"]] == ["source", "eata"]
    images = seen["images"]
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert seen["num_classes"] == 4 and seen["seed"] == 3


def test_eata_in_a_run_without_source_data_says_what_to_set(tmp_path):
    cfg = config(tmp_path)
    cfg["methods"] = ["eata"]
    with pytest.raises(TTAError, match="'eata' needs clean source images: set data.source_data"):
        tta.evaluate(cfg, model=tiny_model())
    assert not (tmp_path / "out" / "config.json").exists()


def test_eata_in_python_without_source_images_points_to_eta():
    with pytest.raises(TTAError, match="'eta' is EATA without the regulariser"):
        tta.adapt(tiny_model(), "eata")


def test_run_context_from_a_mapping():
    a = tta.adapt(tiny_model(), "unmix-tns", {"seed": 4, "batch_size": 8}, num_components=2)
    b = tta.adapt(tiny_model(), "unmix-tns", tta.RunContext(seed=4, batch_size=8), num_components=2)
    assert torch.equal(a.state_dict()["model.1.components"], b.state_dict()["model.1.components"])


def test_lame_refuses_a_model_without_a_classifier_at_wrapping_time():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    with pytest.raises(TTAError, match="get_classifier"):
        tta.adapt(net, "lame")


def test_subprocess_cli_lists_new_methods():
    out = subprocess.run(
        [sys.executable, "-m", "tta.cli", "methods"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("eta", "eata", "sar", "deyo", "lame"):
        assert f"\n{name}: " in out
