"""Atomic file writes with ordinary permissions (shared by the data modules)."""

from __future__ import annotations

import os
from pathlib import Path

from sinkinterp.fileio import atomic_write


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``; the file
    gets mode 0644 less the umask (not mkstemp's 0600)."""
    mask = os.umask(0)
    os.umask(mask)

    def write(f) -> None:
        os.fchmod(f.fileno(), 0o644 & ~mask)
        f.write(data)

    return atomic_write(path, write)


def default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask
