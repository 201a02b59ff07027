"""Atomic file writes: a reader never sees a half-written file, and a failed run leaves none."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_path", "write_bytes", "write_json", "read_json", "default_file_mode"]


def default_file_mode() -> int:
    """0644 less the process umask: what a plain ``open(path, "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file in the destination folder, then rename it over
    ``path``. On any error the temporary file is removed and ``path`` is left as it was. The file
    gets ordinary permissions (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), default_file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_path(path: str | os.PathLike, write_to: Callable[[str], Any]) -> Path:
    """Like ``atomic_write`` for writers that want a file name (``safetensors.save_file``,
    ``torch.save``): ``write_to(tmp_path)``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_to(tmp)
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
