"""Atomic file writes: a reader (or a rerun after a kill) never sees a half-written file.

Also the folder lock that keeps two tta processes from writing one output folder at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

from tta._errors import TTAError

PathLike = Union[str, Path]

#: The lock file tta holds (``fcntl.flock``) in an output folder while it writes there.
LOCK_NAME = ".tta-lock"


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_temp_name(name: str) -> bool:
    """A temporary file of ``atomic_write`` (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the permissions of a file created normally (0o666 minus the umask, so 0644
    under the usual umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_json(path: PathLike, data: Any) -> Path:
    return write_text(path, json_text(data))


def read_json(path: PathLike, hint: str = "delete it, or rerun with --force to start over") -> Any:
    """Parse a JSON file tta wrote; a damaged file gets a TTAError naming it and ``hint``."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TTAError(f"{str(path)!r} is damaged (not valid JSON: {err}); {hint}") from None


def remove_temp_files(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` left in ``folder`` (and below it)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if is_temp_name(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def lock_holder(folder: PathLike) -> Optional[str]:
    """The PID written in ``folder``'s lock file, if any (the holder may have finished)."""
    try:
        return (Path(folder) / LOCK_NAME).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str = "output folder") -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``<folder>/.tta-lock`` (with this PID written in it).

    A second process (or a second lock in this one) gets a TTAError naming the folder and the
    PID of the holder. The lock goes with the process, so a killed run never leaves it held.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run unlocked
        yield
        return
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise TTAError(
            f"cannot write to {what} {str(folder)!r} ({err.strerror}); make it writable or set "
            "another output"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise TTAError(
                f"{what} {str(folder)!r} is in use by another tta run (PID {pid}); wait for it "
                "to finish, or set another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
