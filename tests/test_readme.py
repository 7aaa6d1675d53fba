"""README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_cmd = next(b for b in bash_blocks(readme) if "pytest" in b)
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_readme_main_command_installs_and_runs_the_demo():
    first = bash_blocks((ROOT / "README.md").read_text())[0]
    assert first.startswith("pip install") and first.endswith("tta demo")


def test_every_readme_method_is_registered():
    import tta

    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `([a-z-]+)` \|", readme, flags=re.M)
    assert set(tta.available_methods()) <= set(listed)


def test_methods_command_lists_every_method_and_option(capsys):
    from tta.cli import main
    from tta.registry import METHODS, NORMS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for method in [*NORMS.values(), *METHODS.values()]:
        assert f"{method.name}: {method.description}" in out
        for key, opt in method.options.items():
            assert f"    {key} = {opt.default!r}" in out


def test_readme_own_domains_snippet_runs(tmp_path, monkeypatch):
    """README's "Your own domains" snippet, run with stand-ins for the user's arrays and model."""
    import numpy as np
    import torch
    from torch import nn

    import tta

    readme = (ROOT / "README.md").read_text()
    start = readme.index("Your own domains, in a full run or in a loop of your own:")
    code = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    namespace = {
        "tta": tta,
        "my_model": model,
        "images_a": rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
        "labels_a": rng.integers(0, 3, 40),
        "images_b": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),  # grey works too
        "labels_b": rng.integers(0, 3, 40),
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), namespace)
    assert [m["label"] for m in namespace["results"]["methods"]] == ["source", "tbn", "tent"]
    assert set(namespace["errors"]) == {"site-a", "site-b"}
    assert (tmp_path / "runs/mine/results.json").is_file()
