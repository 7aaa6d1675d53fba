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
