"""What every result and checkpoint records about where it came from: package versions and the git
commit of the sinkinterp checkout (None outside a git checkout)."""

from __future__ import annotations

import functools
import importlib.metadata as md
import platform
import subprocess
from pathlib import Path

__all__ = ["versions", "git_commit"]

_PACKAGES = ("sinkinterp", "torch", "triton", "transformer-lens", "transformers", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout sinkinterp runs from, read once per process: a process runs the code it
    imported, so a commit made while it runs (a long analysis or training run) is not recorded as its own."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None
