"""Imports between tta's packages point down only: no module imports from a layer above its own.

The layers, lowest first, are ``LAYERS`` below (the map in README's "Development" section).
Modules of one layer may import each other; a module may import any lower layer. Every import
counts, also one inside a function or under ``TYPE_CHECKING``: it is still a dependency, only a
later one. Known upward imports are listed in ``EXCEPTIONS`` with the reason they are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple, Optional

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tta"

# Lowest first. An entry names a module and everything under it; "tta" alone is the package root
# (tta/__init__.py, the public facade), not everything in the package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations",
        (
            "tta._errors",
            "tta._io",
            "tta._render",
            "tta._runs",
            "tta.options",
            "tta.overrides",
            "tta.plugins",
        ),
    ),
    ("adaptation", ("tta.registry", "tta.norms", "tta.swap", "tta.methods", "tta.wrapper")),
    ("data and models", ("tta.data", "tta.models")),
    (
        "runs",
        ("tta", "tta.config", "tta.run_config", "tta.evaluation", "tta.report", "tta.plugin_table"),
    ),
    ("sweeps", ("tta.sweep",)),
    ("demo", ("tta.demo",)),
    ("command line", ("tta.commands", "tta.cli")),
]

# (importing module, imported module) → why this upward import is allowed. An entry no import
# needs any more fails the test, so the list stays true.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("tta._runs", "tta"): (
        "stale_files reads tta.__version__ (a constant of the package root) to tell results of "
        "another tta version apart; the root is always imported before any submodule, so this "
        "adds no dependency on what the root re-exports"
    ),
}


class Import(NamedTuple):
    module: str  # the importing module, e.g. "tta.sweep.plan"
    target: str  # the imported tta module, e.g. "tta.config"
    line: int
    path: Path


def module_name(path: Path) -> str:
    """tta/sweep/plan.py → tta.sweep.plan; tta/sweep/__init__.py → tta.sweep."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether a dotted name is a module or package under tta/ (not an attribute)."""
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def tta_imports(path: Path, source: Optional[str] = None) -> list[Import]:
    """Every import of a tta module in one file (or in ``source``, read as that file), wherever
    in the file it is."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source or path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from tta.sweep import plan`` imports a module; ``from tta import adapt`` a name.
            targets = [
                f"{source}.{alias.name}" if is_module(f"{source}.{alias.name}") else source
                for alias in node.names
            ]
        found += [
            Import(module, t, node.lineno, path)
            for t in targets
            if t == "tta" or t.startswith("tta.")
        ]
    return found


def layer_of(module: str) -> int:
    """Index in LAYERS of the entry that names ``module`` (the longest one that matches)."""
    best, length = -1, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "tta" and module.startswith(entry + "."))
            if matches and len(entry) > length:
                best, length = index, len(entry)
    return best


def all_imports() -> list[Import]:
    return [i for path in sorted(PACKAGE.rglob("*.py")) for i in tta_imports(path)]


def test_every_module_has_a_layer():
    missing = [
        module_name(p) for p in sorted(PACKAGE.rglob("*.py")) if layer_of(module_name(p)) < 0
    ]
    assert not missing, f"add these modules to LAYERS in {Path(__file__).name}: {missing}"


def upward(imports: list[Import]) -> list[str]:
    """One line per import from a higher layer that EXCEPTIONS does not allow."""
    found = []
    for imp in imports:
        own, other = layer_of(imp.module), layer_of(imp.target)
        if other > own and (imp.module, imp.target) not in EXCEPTIONS:
            found.append(
                f"{imp.path.relative_to(PACKAGE.parent)}:{imp.line}: {imp.module} "
                f"({LAYERS[own][0]}) imports {imp.target} ({LAYERS[other][0]})"
            )
    return found


def test_imports_point_down():
    found = upward(all_imports())
    assert not found, "imports from a higher layer:\n" + "\n".join(found)


def test_exceptions_are_still_needed():
    imports = all_imports()
    used = {(i.module, i.target) for i in imports if layer_of(i.target) > layer_of(i.module)}
    stale = [pair for pair in EXCEPTIONS if pair not in used]
    assert not stale, f"these EXCEPTIONS are no longer upward imports; remove them: {stale}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from tta.evaluation import evaluate", "tta.evaluation"),
        ("from tta.sweep import plan", "tta.sweep.plan"),
        ("from tta import adapt", "tta"),
        ("import tta.sweep", "tta.sweep"),
        ("def f():\n    from tta.report import write_reports", "tta.report"),
        ("from ..report import write_reports", "tta.report"),
    ],
)
def test_imports_are_found_wherever_they_are(source, expected):
    """The parser sees function-level and relative imports, and tells modules from names."""
    (imp,) = tta_imports(PACKAGE / "sweep" / "plan.py", source)
    assert (imp.module, imp.target) == ("tta.sweep.plan", expected)


def test_an_upward_import_is_caught():
    """The check itself: tta.data importing tta.evaluation, even inside a function, fails."""
    source = "def load():\n    from tta.evaluation import evaluate\n"
    (found,) = upward(tta_imports(PACKAGE / "data" / "domain.py", source))
    assert found == (
        "tta/data/domain.py:2: tta.data.domain (data and models) imports tta.evaluation (runs)"
    )
    assert layer_of("tta.sweep.plan") == layer_of("tta.sweep")
    assert layer_of("tta") == layer_of("tta.evaluation")  # the root is not "everything"
    assert not upward(tta_imports(PACKAGE / "sweep" / "plan.py", "import tta.config\n"))


def private_reads(path: Path, source: Optional[str] = None) -> list[int]:
    """Lines of ``path`` that call a ``_read`` method (a Domain's raw reader)."""
    tree = ast.parse(source or path.read_text(encoding="utf-8"), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_read"
    ]


def test_only_tta_data_reads_domains_raw():
    """``Domain._read`` is tta.data's own: everything else reads through ``get``/streams."""
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not module_name(path).startswith("tta.data")
        for line in private_reads(path)
    ]
    assert outside == []
    assert private_reads(PACKAGE / "x.py", "def f(d, rows):\n    return d.inner._read(rows)\n")


def readme_map() -> dict[str, str]:
    """README's "Map of the packages": layer name → its modules column."""
    text = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = text.split("### Map of the packages", 1)[1].split("\n\n")[2]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    return {cells[0].lstrip("| "): cells[1] for cells in rows}


def test_readme_map_lists_every_layer_and_module():
    """The README map names the layers of LAYERS in order, each with all its modules."""
    shown = readme_map()
    assert list(shown) == [name for name, _ in LAYERS]
    for name, entries in LAYERS:
        for module in entries:
            last = module.split(".")[-1]
            if module == "tta":
                token = "tta/__init__.py"
            elif (PACKAGE.parent / module.replace(".", "/")).is_dir():
                token = f"{last}/"
            else:
                token = f"{last}.py"
            assert token in shown[name], f"README's map lacks {token} under {name!r}"
