"""Regenerate every analysis doc in docs/ from the scripts in analyses/.

    .venv/bin/python analyses/regenerate.py            # all
    .venv/bin/python analyses/regenerate.py pretrained_baseline

Each analysis script has a ``main() -> int`` and writes its own result folders under runs/analyses/
and its markdown page under docs/, naming the command and config it ran with.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def analyses() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HERE.glob("*.py")) if p.stem != "regenerate" and not p.stem.startswith("_")}


def main(argv: list[str]) -> int:
    found = analyses()
    names = argv or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        print(f"regenerate: unknown analysis {', '.join(unknown)}; available: {', '.join(found)}", file=sys.stderr)
        return 2
    for name in names:
        spec = importlib.util.spec_from_file_location(f"analyses.{name}", found[name])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {name}")
        argv_was, sys.argv = sys.argv, [str(found[name])]  # an analysis parsing sys.argv sees none of ours
        try:
            code = module.main()
        finally:
            sys.argv = argv_was
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
