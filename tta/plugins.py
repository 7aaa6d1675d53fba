"""Third-party methods: import the modules a run config lists under ``plugins:``.

A plugin is a module that registers methods with ``@tta.register_method`` when imported, named
either as an importable module (``mypackage.methods``) or as a ``.py`` file (relative to the
current folder). Each is imported once per process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tta._errors import TTAError, TTAFileNotFoundError


def import_file(path: Path, key: str) -> ModuleType:
    """Import the ``.py`` file at ``path`` as module ``key``, once (it stays in ``sys.modules``);
    an import that fails leaves no half-made module behind."""
    module = sys.modules.get(key)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def load_plugin(name: str) -> None:
    """Import one plugin module (a dotted module name or a path to a ``.py`` file)."""
    if not isinstance(name, str) or not name.strip():
        raise TTAError(f"a plugin must be a module name or a .py file, got {name!r}")
    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise TTAFileNotFoundError(f"plugin file {name!r} does not exist ({path})")
        key = f"tta_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        try:
            import_file(path, key)
        except TTAError:
            raise
        except Exception as err:
            raise TTAError(
                f"plugin {name!r} failed to import: {type(err).__name__}: {err}"
            ) from err
        return
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise TTAError(
            f"plugin module {name!r} cannot be imported ({err}); give an importable module name "
            "or the path of a .py file"
        ) from err


def load_plugins(names: list[str]) -> None:
    for name in names:
        load_plugin(name)
