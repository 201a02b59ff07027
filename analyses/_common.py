"""The start shared by the analysis scripts that run on the shipped toy models (not an analysis
itself: regenerate.py skips names that start with an underscore)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def enter_checkout(script: str, models: Iterable[str]) -> bool:
    """Work from the repository root with its sinkinterp first on sys.path; False (after a message
    on stderr) if one of ``models`` is not among the shipped models."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sinkinterp import builtin

    os.chdir(ROOT)
    missing = [m for m in models if m not in builtin.shipped_models()]
    if missing:
        print(f"{script}: shipped models missing: {', '.join(missing)}", file=sys.stderr)
    return not missing


def finish_page(doc: Path, lines: list[str], commands: Iterable[str]) -> int:
    """Write an analysis page: ``lines``, then a "Commands:" list of ``commands`` (atomically)."""
    from sinkinterp.fileio import write_bytes

    lines = [*lines, "Commands:", "", *[f"- `{c}`" for c in commands], ""]
    print(f"wrote {write_bytes(doc, chr(10).join(lines).encode())}")
    return 0
