"""The ``key=value`` grammar of the command line, and reading YAML files.

A value is read as YAML (``32`` is an int, ``[tbn,tent]`` a list, ``null`` or nothing is None),
so an override means what the same text means in a YAML file. A key is dotted: ``stream.order``
is the key ``order`` of the section ``stream``. Errors are TTAErrors naming the override or file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from tta._errors import TTAError, TTAFileNotFoundError

PathLike = Union[str, Path]

#: The advice on a value that is not valid YAML, with examples of config overrides.
YAML_HINT = "close brackets and quotes, e.g. methods=[tbn,tent] or name='my run'"


def yaml_problem(err: yaml.YAMLError, with_line: bool = True) -> str:
    """A one-line description of a YAML error: what is wrong and where."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = ""
    if mark is not None:
        where = (
            f" at line {mark.line + 1}, column {mark.column + 1}"
            if with_line
            else f" at column {mark.column + 1}"
        )
    return " ".join(f"{problem}{where}".split())


def python_number(text: str) -> Union[int, float, None]:
    """``text`` as Python's ``int()``, else ``float()``, reads it; None when neither does.

    YAML 1.1 differs on a few numbers: ``1e-3`` (no dot) is a string there, ``010`` is octal 8.
    """
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return None


def parse_value(text: str, what: str, hint: str = YAML_HINT, python_numbers: bool = False) -> Any:
    """An override's value read as YAML; bad YAML gets a TTAError naming ``what``.

    Blank text is None. With ``python_numbers``, text that Python's ``int()`` or ``float()``
    reads (``1e-3``, ``010``, ``inf``) is that number, before YAML is asked.
    """
    if python_numbers and (number := python_number(text)) is not None:
        return number
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise TTAError(
            f"{what} has a value that is not valid YAML ({yaml_problem(err, False)}); {hint}"
        ) from None


def split_override(text: str) -> tuple[str, str]:
    """``"stream.batch_size=32"`` → ("stream.batch_size", "32"), split at the first ``=``."""
    if "=" not in text:
        raise TTAError(f"override {text!r} must look like key=value (e.g. stream.batch_size=32)")
    key, _, raw = text.partition("=")
    return key, raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"stream.batch_size=32"`` → (["stream", "batch_size"], 32); values are read as YAML."""
    key, raw = split_override(text)
    keys = key.strip().split(".")
    if not all(keys):
        raise TTAError(
            f"override {text!r} names no config key before '='; write key=value, e.g. "
            "stream.batch_size=32"
        )
    return keys, parse_value(raw, f"override {text!r}")


def apply_dotted(config: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A deep copy of ``config`` with every ``key=value`` override set, in order; a dotted key
    sets a key of a section, creating the section where there is none."""
    out = copy.deepcopy(dict(config))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise TTAError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def read_yaml(path: PathLike, kind: str = "config") -> Any:
    """Parse a YAML file (UTF-8); a missing file, other text encodings and bad YAML get a
    TTAError naming the path. An empty file reads as ``{}``."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise TTAFileNotFoundError(f"{kind} file {str(path)!r} {what}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TTAError(
            f"{kind} file {str(path)!r} is not UTF-8 text (byte {data[err.start]:#04x} at "
            f"position {err.start}); save it as UTF-8"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TTAError(
            f"{kind} file {str(path)!r} is not valid YAML: {yaml_problem(err)}"
        ) from None
    return {} if loaded is None else loaded
