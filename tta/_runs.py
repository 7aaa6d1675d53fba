"""Run folders: what tta writes in them, who may write them, and what their results came from.

A run folder holds ``config.json`` (the resolved config), ``.tta-run`` (the marker that tta made
the folder, with the fingerprints of the run's inputs), ``units/`` (finished units), the result
files and ``.tta-lock`` (held with ``fcntl.flock`` while a run writes there).

Fingerprints (recorded in ``.tta-run`` when a run claims its folder, checked before it resumes):

- ``tta``: the package version; resuming with another version is refused.
- ``checkpoint``: the checkpoint file's size, mtime and SHA-256. When size and mtime (and path)
  are unchanged the file counts as unchanged; otherwise its content hash decides, so a touched
  but identical file, or the same file under another path, still resumes.
- ``model``: for a model passed as ``model=`` in Python (no file to look at), the SHA-256 of its
  class name and ``state_dict`` (names, dtypes, shapes, values). Changes to its code that leave
  the weights alone are not seen.
- data: ``data:<file>`` for every file of a CIFAR-C folder (size, mtime, SHA-256, checked like the
  checkpoint); ``data:<domain>`` for an ImageNet-C domain (its number of images and the hash of
  their relative file names: images replaced in place under the same name are not seen);
  ``data:clean`` for ``data.source: corrupt`` (the SHA-256 of the clean images and labels as read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tta._errors import TTAError
from tta._io import LOCK_NAME, is_temp_name, json_text, read_json, write_text

PathLike = Union[str, Path]

#: Marker of a folder made by ``tta run``; holds the fingerprints of the run's inputs.
MARKER = ".tta-run"
#: Files of a run folder that tta writes (and ``--force`` removes), besides ``units/``.
RUN_FILES = ("results.json", "results.csv", "summary.md", "errors.png", "config.json", MARKER)
RUN_DIRS = ("units",)
FORCE_HINT = "rerun with --force to start over, or set another output"

# An input is ("file", path) or ("value", json-able dict); see ``record`` and ``changes``.
Input = tuple[str, Any]


# ----------------------------------------------------------------------------------------------
# Output folder


def writable(folder: PathLike) -> bool:
    """Whether tta can create files in ``folder`` (or create it): checked on the folder or its
    nearest existing parent."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def check_output_path(out: Path) -> None:
    """The output must be a folder (or not exist yet, below folders)."""
    if out.exists() and not out.is_dir():
        raise TTAError(
            f"output {str(out)!r} is a file, not a folder; set 'output' to a folder path "
            "(default runs/<name>)"
        )
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise TTAError(
                    f"output {str(out)!r} lies below {str(parent)!r}, which is a file; set "
                    "'output' to a folder path"
                )
            break


def not_writable(out: Path) -> TTAError:
    return TTAError(
        f"output folder {str(out)!r} is not writable; make it writable or set another output"
    )


def _is_config(data: Any) -> bool:
    return isinstance(data, Mapping) and {"model", "data", "stream", "methods"} <= set(data)


def is_run_folder(out: Path) -> bool:
    """Made by ``tta run``: it holds the marker, or (folders from before the marker) a
    config.json holding a run config."""
    if (out / MARKER).is_file():
        return True
    try:
        return _is_config(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def _foreign_entries(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME and not is_temp_name(p.name))


def check_can_force(out: Path) -> None:
    """``--force`` clears only folders tta made; anything else that is not empty is refused."""
    entries = _foreign_entries(out)
    if entries and not is_run_folder(out):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise TTAError(
            f"output folder {str(out)!r} is not empty ({shown}) and was not made by tta run (no "
            f"{MARKER} marker), so --force will not clear it; set another output, or empty the "
            "folder yourself"
        )


def clear_run_folder(out: Path) -> None:
    """Remove what tta wrote in a run folder (units/, result files, config, marker); any other
    file stays."""
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def saved_config(out: Path) -> Optional[Any]:
    path = out / "config.json"
    return read_json(path, FORCE_HINT) if path.is_file() else None


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds exactly it (its mtime then stays)."""
    try:
        if path.read_bytes() == text.encode("utf-8"):
            return
    except OSError:
        pass
    write_text(path, text)


# ----------------------------------------------------------------------------------------------
# Fingerprints


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def sha256_names(names: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()


def model_fingerprint(model: Any) -> dict[str, Any]:
    """The SHA-256 of a module's class and state_dict (values copied to the CPU one at a time)."""
    import torch

    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return {"state_dict_sha256": digest.hexdigest()}


def file_fingerprint(path: PathLike) -> dict[str, Any]:
    st = os.stat(path)
    return {
        "path": str(Path(path).resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256_file(path),
    }


def record(inputs: Mapping[str, Input]) -> dict[str, Any]:
    """The fingerprint of every input, files hashed."""
    return {
        name: file_fingerprint(what) if kind == "file" else dict(what)
        for name, (kind, what) in inputs.items()
    }


def _describe(name: str) -> str:
    if name == "tta":
        return "the tta version"
    if name == "checkpoint":
        return "the checkpoint"
    if name == "model":
        return "the model passed as model="
    if name == "data:clean":
        return "the clean images (data.clean)"
    return f"data {name[5:]!r}" if name.startswith("data:") else name


def _file_change(old: Mapping[str, Any], path: PathLike) -> tuple[Optional[str], dict[str, Any]]:
    """(what changed or None, the fingerprint to keep). Size, mtime and path unchanged: same file;
    otherwise the content hash decides."""
    try:
        st = os.stat(path)
    except OSError:
        return f"file {str(path)!r} is missing", dict(old)
    resolved = str(Path(path).resolve())
    if st.st_size != old.get("size"):
        return f"{resolved!r} changed size ({old.get('size')} → {st.st_size} bytes)", dict(old)
    if resolved == old.get("path") and st.st_mtime_ns == old.get("mtime_ns"):
        return None, dict(old)
    fresh = file_fingerprint(path)
    if fresh["sha256"] != old.get("sha256"):
        return f"{resolved!r} has different content (same size)", dict(old)
    return None, fresh  # touched or moved, same content: keep the new stat for the fast path


def changes(
    recorded: Mapping[str, Any], inputs: Mapping[str, Input]
) -> tuple[list[str], dict[str, Any]]:
    """What differs between the recorded fingerprints and the current inputs, and the record to
    keep when nothing does."""
    found, kept = [], {}
    for name in list(inputs) + [n for n in recorded if n not in inputs]:
        if name not in inputs:
            found.append(f"{_describe(name)} was an input before, not now")
            continue
        kind, what = inputs[name]
        if name not in recorded:
            found.append(f"{_describe(name)} is an input now, not before")
            continue
        old = recorded[name]
        if kind == "file":
            change, kept[name] = _file_change(old, what)
            if change:
                found.append(f"{_describe(name)}: {change}")
        else:
            kept[name] = old
            if dict(what) != old:
                if name == "tta":
                    found.append(f"the tta version ({old.get('version')} → {what.get('version')})")
                else:
                    found.append(f"{_describe(name)} changed")
    return found, kept


def recorded_inputs(out: Path) -> Optional[dict[str, Any]]:
    """The fingerprints in the folder's marker (None when there is none)."""
    path = out / MARKER
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("inputs"), Mapping):
        raise TTAError(f"{str(path)!r} is damaged (no 'inputs'); {FORCE_HINT}")
    return dict(data["inputs"])


def marker_text(inputs_record: Mapping[str, Any]) -> str:
    return json_text({"tta_run": 1, "inputs": dict(inputs_record)})


def check_inputs(out: Path, inputs: Mapping[str, Input]) -> dict[str, Any]:
    """Refuse to resume a folder whose results came from other inputs; return the record to
    keep (refreshed for files that were only touched or moved)."""
    recorded = recorded_inputs(out)
    if recorded is None:
        raise TTAError(
            f"output folder {str(out)!r} holds results without a record of the model and data "
            f"they came from (no {MARKER}: an older tta wrote them); {FORCE_HINT}"
        )
    found, kept = changes(recorded, inputs)
    if found:
        raise TTAError(
            f"output folder {str(out)!r} holds results computed from other inputs: "
            f"{'; '.join(found)}; {FORCE_HINT}"
        )
    return kept


def stale_files(out: Path) -> list[str]:
    """Without loading model or data: what changed among a folder's recorded files and the tta
    version (used by sweeps to tell finished cells from stale ones)."""
    import tta

    try:
        recorded = recorded_inputs(out)
    except TTAError as err:
        return [str(err)]
    if recorded is None:
        return []
    inputs: dict[str, Input] = {"tta": ("value", {"version": tta.__version__})}
    for name, old in recorded.items():
        if isinstance(old, Mapping) and "sha256" in old and "path" in old:
            inputs[name] = ("file", old["path"])
    found, _ = changes({k: v for k, v in recorded.items() if k in inputs}, inputs)
    return found
