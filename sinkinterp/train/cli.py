"""Command-line entry points of the trainer; the main ``sinkinterp`` command dispatches to them.

``sinkinterp train CONFIG.json --out DIR [--resume | --no-resume] [--until-step N] [--set KEY=VALUE ...]``
``sinkinterp sweep CONFIG.json ... --out DIR [--print-commands | --collect] [--set KEY=VALUE ...]``

Both also run as ``python -m sinkinterp.train train|sweep ...`` (the form ``torchrun`` needs:
``torchrun --nproc_per_node 8 -m sinkinterp.train train CONFIG.json --out DIR``).
``--set`` overrides one config field, dotted for nested ones, the value parsed as JSON when it
parses (``--set weight_decay=0.5 --set model.attn_bias='"kv"'`` or ``--set model.attn_bias=kv``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from sinkinterp.fileio import read_json, write_json

__all__ = ["train_main", "sweep_main", "load_config", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = ("step", "train_loss", "val_loss", "sink1", "sink2", "sink_bias", "massive_ratio",
                   "tokens_per_s", "mfu")


def _apply_override(d: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"--set: expected KEY=VALUE (e.g. weight_decay=0.5 or model.attn_bias=kv), got {assignment!r}")
    key, text = assignment.split("=", 1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    parts = key.split(".")
    target = d
    for p in parts[:-1]:
        if not isinstance(target.get(p), dict):
            raise ValueError(f"--set: {key!r}: {p!r} is not a nested section of the config (model, data)")
        target = target[p]
    target[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None):
    """A ``TrainConfig`` from a JSON file, with ``--set`` style overrides applied."""
    from .config import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CONFIG: {str(path)!r} does not exist")
    try:
        d = read_json(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"CONFIG: {path} is not valid JSON ({err})") from err
    for a in overrides or []:
        _apply_override(d, a)
    try:
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"CONFIG {path}: {err}") from err


def _train_parser(prog: str = "sinkinterp train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train one model from a TrainConfig JSON file.")
    p.add_argument("config", metavar="CONFIG.json")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (metrics.jsonl, checkpoints/, final.json)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from DIR/checkpoints/latest if present (default); --no-resume refuses a "
                        "folder that already holds a run")
    p.add_argument("--until-step", type=int, default=None, metavar="N",
                   help="stop (with a checkpoint) after N updates; rerun to continue")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config field (dotted for model./data. fields); repeatable")
    p.add_argument("--quiet", action="store_true", help="no per-row progress lines")
    return p


def train_main(argv: list[str] | None = None) -> int:
    """``sinkinterp train``; returns the exit status (2 for a bad argument or config)."""
    args = _train_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (OSError, ValueError, TypeError) as err:
        print(f"sinkinterp train: error: {err}", file=sys.stderr)
        return 2
    from .trainer import TrainingDiverged, train

    try:
        res = train(cfg, args.out, resume=args.resume, until_step=args.until_step, verbose=not args.quiet)
    except TrainingDiverged as err:
        print(f"sinkinterp train: {err}", file=sys.stderr)
        return 1
    except (FileExistsError, ValueError) as err:
        print(f"sinkinterp train: error: {err}", file=sys.stderr)
        return 2
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        state = "finished" if res.finished else "stopped"
        print(f"[train] {state} at step {res.step}; results in {res.out_dir}")
    if res.stopped_by:  # the shell's convention for a process ended by a signal (timeout expects it)
        return 128 + int(signal.Signals[res.stopped_by])
    return 0


def _run_name(path: Path) -> str:
    return path.stem


def collect(runs: dict[str, Path], out: Path) -> dict[str, Any]:
    """Read each run's final.json (or its last metrics rows) into ``out/summary.json``."""
    from .trainer import read_metrics

    summary: dict[str, Any] = {}
    for name, run_dir in runs.items():
        final_path = run_dir / "final.json"
        if final_path.is_file():
            entry = read_json(final_path)
            entry["status"] = "finished"
        else:
            entry = {}
            for row in read_metrics(run_dir):
                entry.update({k: v for k, v in row.items() if v is not None})
            entry["status"] = "incomplete" if entry else "missing"
        entry["out_dir"] = str(run_dir)
        summary[name] = entry
    write_json(out / "summary.json", summary)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    header = ["run", *SUMMARY_COLUMNS, "status"]
    body = [[name, *(cell(e.get(c)) for c in SUMMARY_COLUMNS), e.get("status", "")] for name, e in summary.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def sweep_main(argv: list[str] | None = None) -> int:
    """``sinkinterp sweep``: train several configs one after the other into ``--out/<config name>``,
    then write ``--out/summary.json`` and print a table. ``--print-commands`` prints one
    ``sinkinterp train`` command per run (for a cluster scheduler) and trains nothing;
    ``--collect`` only gathers the results of runs made that way."""
    p = argparse.ArgumentParser(prog="sinkinterp sweep", description=sweep_main.__doc__)
    p.add_argument("configs", nargs="+", metavar="CONFIG.json")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder: one sub-folder per config")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true", help="print one train command per run and exit")
    mode.add_argument("--collect", action="store_true", help="only collect summary.json from existing runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a field in every config; repeatable")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    runs: dict[str, Path] = {}
    cfgs = {}
    for c in args.configs:
        name = _run_name(Path(c))
        if name in runs:
            print(f"sinkinterp sweep: error: two configs are named {name!r} (runs go to --out/<file stem>)",
                  file=sys.stderr)
            return 2
        try:
            cfgs[name] = load_config(c, args.overrides)  # validate every config before any run starts
        except (OSError, ValueError, TypeError) as err:
            print(f"sinkinterp sweep: error: {err}", file=sys.stderr)
            return 2
        runs[name] = out / name
    if args.print_commands:
        for (name, run_dir), c in zip(runs.items(), args.configs):
            cmd = ["sinkinterp", "train", c, "--out", str(run_dir)]
            for a in args.overrides:
                cmd += ["--set", a]
            print(shlex.join(cmd))
        return 0
    if not args.collect:
        from .trainer import TrainingDiverged, train

        for name, cfg in cfgs.items():
            if not args.quiet:
                print(f"[sweep] {name} -> {runs[name]}", flush=True)
            try:
                train(cfg, runs[name], resume=True, verbose=not args.quiet)
            except TrainingDiverged as err:  # record and go on with the other runs
                print(f"[sweep] {name}: {err}", file=sys.stderr)
    summary = collect(runs, out)
    print(format_table(summary))
    return 0
