"""Unit files (one per method and segment) and the config a folder's units were made with."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from tta import _runs
from tta._errors import TTAError
from tta._io import json_text, read_json
from tta.config import SCHEMA, method_entries
from tta.run_config import MethodSpec, RunConfig


def unit_name(name: str) -> str:
    """A file name for a method label or segment name, distinct for distinct names: the name
    itself when plain (lower-case letters, digits, ``._+-``, not starting with a dot, at most
    100 characters), else a slug of it, ``~`` and 10 hex digits of its SHA-1 (``~`` is never
    in a plain name, so the two kinds cannot meet)."""
    if re.fullmatch(r"[a-z0-9_+-][a-z0-9._+-]{0,99}", name):
        return name
    slug = re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:60].lstrip(".") or "_"
    return f"{slug}~{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def unit_path(out: Path, label: str, segment: str, seed: Optional[int] = None) -> Path:
    """``units/<label>/<segment>.json``; in a run with ``seeds``, ``units/seed-<s>/...``."""
    units = out / "units" if seed is None else out / "units" / f"seed-{seed}"
    return units / unit_name(label) / f"{unit_name(segment)}.json"


def read_unit(path: Path, method: MethodSpec, segment: str, num_domains: int) -> dict[str, Any]:
    """A finished unit, checked to be the one asked for (a damaged file is a TTAError). Units
    record the method's name and options (older ones only its label, checked via config.json)."""
    label = method.label
    unit = read_json(path)
    ok = (
        isinstance(unit, dict)
        and unit.get("method") == label
        and unit.get("segment") == segment
        and all(len(unit.get(k) or []) == num_domains for k in ("wrong", "seen"))
        and isinstance(unit.get("seconds"), (int, float))
    )
    if not ok:
        raise TTAError(
            f"{str(path)!r} is damaged or belongs to another unit (expected method {label!r}, "
            f"segment {segment!r}, {num_domains} domains); {_runs.FORCE_HINT}"
        )
    recorded = unit.get("entry")
    wanted = method.record()
    if recorded is not None and json.loads(json_text(wanted)) != recorded:
        raise TTAError(
            f"{str(path)!r} holds method {label!r} as {recorded}, but the config now asks "
            f"for {wanted}; give the changed method another label, or {_runs.FORCE_HINT}"
        )
    return unit


def _with_defaults(config: Mapping[str, Any], schema: Mapping[str, Any] = SCHEMA) -> dict:
    """``config`` with the keys it lacks taken from the schema's defaults: a config.json written
    before a key existed lacks it, and means what the default means."""
    out = dict(config)
    for key, spec in schema.items():
        if isinstance(spec, dict):
            sub = out.get(key, {})
            out[key] = _with_defaults(sub, spec) if isinstance(sub, Mapping) else sub
        elif key not in out and key not in ("seed", "seeds"):  # a config holds one of the two
            out[key] = spec.default
    return out


def config_difference(old: Mapping[str, Any], new: RunConfig) -> list[str]:
    """The keys in which a saved config and a new one differ for the numbers already computed.

    ``data.workers`` only changes how the data is read. ``methods`` may gain or lose entries,
    since every unit belongs to one method label, but a label in both must keep its method and
    options.
    """
    a, b = _with_defaults(old), _with_defaults(new.values)
    for c in (a, b):
        c.pop("methods", None)
        if isinstance(c.get("data"), Mapping):
            c["data"] = {k: v for k, v in c["data"].items() if k != "workers"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    try:
        before = {e.label: e for e in method_entries(list(old.get("methods") or []))}
    except (TTAError, TypeError, ValueError):
        return diff + ["methods"]
    now = {e.label: e for e in new.methods}
    plain = lambda e: json.loads(json_text(e.record()))  # noqa: E731  as a unit records it
    changed = [k for k in before if k in now and plain(before[k]) != plain(now[k])]
    if changed:
        diff.append(
            f"methods ({', '.join(map(repr, changed))} changed; give a changed method a new label)"
        )
    return diff


def refuse_other_config(out: Path, config: RunConfig) -> None:
    """A folder holding another config's results is refused, naming the keys that differ; a
    config that only adds or drops methods (or changes ``data.workers``) resumes."""
    old = _runs.saved_config(out)
    if old is None or old == config.values:
        return
    if not isinstance(old, Mapping):
        raise TTAError(
            f"{str(out / 'config.json')!r} is damaged (not a config); {_runs.FORCE_HINT}"
        )
    diff = config_difference(old, config)
    if diff:
        raise TTAError(
            f"output folder {str(out)!r} holds results of a different config (differs in "
            f"{', '.join(diff)}); {_runs.FORCE_HINT}"
        )
