"""Benchmark: sinkinterp's path patching (``sinkinterp.paths.path_patch``: several senders' copies per pass,
passes that stop once their receivers are computed and, on sinkinterp models and HookedTransformers, start at
a block from the base run's residual stream) against the plain way to write it: one sender at a time, two
full passes each (the sender patched and every later head and MLP output frozen, keeping the receivers; then
the corrupted run with the receivers put in), as in the IOI paper's path patching. TransformerLens ships no
path patching, so the plain way is written here (``plain_path_patch``) and is the reference: both must give
the same values (a row whose values differ is recorded as failed).

Sweeps (senders, receivers, what the metric reads):

* ``heads_to_logits``: every head ("z"), the logits (the heads' direct effect; the plain way's second pass
  is not needed: one full pass per head), an IOI-style logit difference at the last position.
* ``blocks_to_last_k``: the embedding and every layer's attention and MLP output, every key/value head of the
  last layer, that layer's mean weight on token 1 (``sinkinterp paths``' key side).
* ``heads_to_mid_q``: every head before the middle layer, every query head of the middle layer, that
  layer's mean weight on token 1 (the query side; senders at or after the receivers' layer are skipped by
  both ways).

The corrupted prompts replace the first token (the sink case). Time of one sweep including the runs each way
needs (our base and clean captures; the plain way's clean capture and its base capture of the frozen
outputs); with ``--repeats R`` each way runs R times in alternating order and the fastest counts. Models as in
bench_patching.py (``--kinds sink,hooked,bridge,smollm2``, ``--models`` presets or LxDxH, random weights).

Run ``python benchmarks/bench_paths.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_patching import (  # noqa: E402
    KINDS,
    MODEL_PRESETS,
    SMOLLM2,
    _names,
    _parse_model,
    _timed,
    build_model,
    check_machine,
    with_threads,
)
from benchmarks.common import REPO_ROOT, machine_info, provenance_info  # noqa: E402

__all__ = ["SWEEPS", "main", "plain_path_patch", "run_sweep"]

SCHEMA_VERSION = 1
SWEEPS = ("heads_to_logits", "blocks_to_last_k", "heads_to_mid_q")
ATOL, RTOL = 1e-4, 1e-4  # float32: stacked and single passes sum in different orders


def _sweep_args(model: Any, sweep: str, clean: torch.Tensor, corrupted: torch.Tensor) -> dict[str, Any]:
    """The senders, receivers, metric and metric hook of a sweep on ``model``."""
    from sinkinterp import patching, paths, tl_adapter

    dims = tl_adapter.model_dims(model)
    L = dims["n_layers"]
    if sweep == "heads_to_logits":
        return {"senders": paths.senders_of(model, "z"), "receivers": "logits", "metric_hook": None,
                "metric": patching.logit_diff_metric(clean[:, 0].tolist(), corrupted[:, 0].tolist(), pos=-1)}
    layer = L - 1 if sweep == "blocks_to_last_k" else L // 2
    if sweep == "blocks_to_last_k":
        senders = paths.senders_of(model, "blocks")
        receivers = [paths.Receiver(layer, "k", g) for g in range(dims["n_kv_heads"])]
    else:
        senders = paths.senders_of(model, "z", layers=range(layer))
        receivers = [paths.Receiver(layer, "q", h) for h in range(dims["n_heads"])]

    def metric(p: torch.Tensor) -> torch.Tensor:  # the layer's mean weight on token 1, queries 2..T
        return p[:, :, 1:, 0].double().mean()

    return {"senders": senders, "receivers": receivers, "metric": metric,
            "metric_hook": f"blocks.{layer}.attn.hook_pattern"}


def plain_path_patch(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, metric: Callable[[Any], Any],
                     senders: Sequence[Any], receivers: Any, metric_hook: str | None) -> np.ndarray:
    """Path patching one sender at a time, every pass in full: pass 1 with the sender's clean value and every
    later head output (``hook_z``) and MLP output frozen at the corrupted run's value, keeping the receivers'
    activations (for "logits": its metric); pass 2, the corrupted run with the receivers put in."""
    from sinkinterp import patching, tl_adapter

    L = tl_adapter.model_dims(model)["n_layers"]
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    base = patching.capture(model, corrupted, names)
    new = patching.capture(model, clean, sorted({s.hook_name() for s in senders}))
    last = L if receivers == "logits" else max(r.layer for r in receivers)
    values = []
    for s in senders:
        if s.order >= 2 * last + 1:  # reaches no receiver: the corrupted run's metric, as path_patch gives
            values.append(np.nan)
            continue
        name = s.hook_name()

        def send(act: torch.Tensor, hook: Any = None, s: Any = s, name: str = name) -> torch.Tensor:
            out = act.clone()
            if s.head is None:
                return new[name].to(act.dtype)
            out[:, :, s.head] = new[name][:, :, s.head].to(act.dtype)
            return out

        hooks = [(name, send)]
        for l in range(L):
            if 2 * l + 1 > s.order:
                hooks.append((f"blocks.{l}.attn.hook_z", lambda a, hook=None, n=f"blocks.{l}.attn.hook_z": base[n]))
            if 2 * l + 2 > s.order:
                hooks.append((f"blocks.{l}.hook_mlp_out", lambda a, hook=None, n=f"blocks.{l}.hook_mlp_out": base[n]))
        with torch.no_grad():
            if receivers == "logits":
                with tl_adapter.attached_hooks(model, hooks):
                    values.append(float(metric(model(corrupted))))
                continue
            rnames = [patching.COMPONENTS[r.kind].hook_name(r.layer) for r in receivers]
            kept: dict[str, torch.Tensor] = {}
            keep = [(n, lambda a, hook=None, n=n, kept=kept: kept.__setitem__(n, a.clone())) for n in sorted(set(rnames))]
            with tl_adapter.attached_hooks(model, hooks + keep):
                model(corrupted)

            def put(act: torch.Tensor, hook: Any = None, r: Any = None, n: str = "",
                    kept: dict[str, torch.Tensor] = kept) -> torch.Tensor:
                out = act.clone()
                out[:, :, r.head] = kept[n][:, :, r.head]
                return out

            read: dict[str, torch.Tensor] = {}
            puts = [(n, lambda a, hook=None, r=r, n=n: put(a, r=r, n=n)) for r, n in zip(receivers, rnames)]
            with tl_adapter.attached_hooks(model, puts + [(metric_hook, lambda a, hook=None, read=read: read.__setitem__("x", a))]):
                model(corrupted)
            values.append(float(metric(read["x"])))
    return np.asarray(values)


def run_sweep(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, sweep: str, *, batch_rows: int,
              repeats: int = 1) -> dict[str, Any]:
    """Both ways of one sweep: seconds, the number of senders, and whether their values agree."""
    from sinkinterp import paths

    device = next(model.parameters()).device
    a = _sweep_args(model, sweep, clean, corrupted)

    def ours() -> np.ndarray:
        res = paths.path_patch(model, clean, corrupted, a["metric"], senders=a["senders"], receivers=a["receivers"],
                               metric_hook=a["metric_hook"], batch_rows=batch_rows)
        reach = 2 * (len(model.blocks) if a["receivers"] == "logits" else max(r.layer for r in a["receivers"])) + 1
        return np.where([s.order < reach for s in res.senders], res.values, np.nan)

    def plain() -> np.ndarray:
        return plain_path_patch(model, clean, corrupted, a["metric"], a["senders"], a["receivers"], a["metric_hook"])

    ways = {"ours": ours, "plain": plain}
    values: dict[str, list[np.ndarray]] = {"ours": [], "plain": []}
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(repeats):
        for way in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
            got, secs = _timed(ways[way], device)
            values[way].append(got)
            times[way].append(secs)
    reached = ~np.isnan(values["ours"][0])
    diff = max(float(np.max(np.abs(o[reached] - p[reached]), initial=0.0)) for o in values["ours"] for p in values["plain"])
    agree = all(np.array_equal(np.isnan(o), np.isnan(p)) and np.allclose(o[reached], p[reached], atol=ATOL, rtol=RTOL)
                for o in values["ours"] for p in values["plain"])
    row = {"sweep": sweep, "senders": len(a["senders"]), "reached": int(reached.sum()),
           "receivers": "logits" if a["receivers"] == "logits" else [r.label for r in a["receivers"]],
           "ours_s": min(times["ours"]), "plain_s": min(times["plain"]), "max_abs_diff": diff, "agree": agree,
           "value_range": [float(np.nanmin(values["ours"][0])), float(np.nanmax(values["ours"][0]))]}
    row["speedup"] = row["plain_s"] / row["ours_s"]
    if repeats > 1:
        row.update(ours_s_all=times["ours"], plain_s_all=times["plain"])
    row["status"] = "ok" if agree else "failed"
    if not agree:
        row["reason"] = f"values differ: max |ours - plain| = {diff:.3g} > atol {ATOL} (rtol {RTOL})"
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'kind':7} {'model':12} {'T':>4} {'N':>3} {'sweep':17} {'senders':>8} {'plain s':>9} {'ours s':>9} "
            f"{'speedup':>8} {'max|diff|':>10} status")
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(k: str, fmt: str, r: dict[str, Any] = r) -> str:
            return format(r[k], fmt) if k in r else "-"

        lines.append(f"{r['kind']:7} {r['model']:12} {r['seq_len']:>4} {r['num_seqs']:>3} {r['sweep']:17} "
                     f"{r.get('reached', '-'):>8} {f('plain_s', '9.2f'):>9} {f('ours_s', '9.2f'):>9} "
                     f"{f('speedup', '7.1f') + ('x' if 'speedup' in r else ''):>8} {f('max_abs_diff', '10.1e'):>10} "
                     f"{r['status']}" + (f" ({r['reason']})" if r["status"] == "failed" else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_paths.py",
        description="Path patching (sinkinterp.paths) vs one sender at a time in full passes: time of full "
                    "sweeps, and the values must agree.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--kinds", default="sink,hooked,bridge", help=f"comma-separated model kinds {list(KINDS)}")
    p.add_argument("--models", default="12l", help=f"comma-separated presets {MODEL_PRESETS} or LxDxH")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated {list(SWEEPS)}")
    p.add_argument("--seq-len", type=int, default=32, help="T of the clean and corrupted prompts")
    p.add_argument("--num-seqs", type=int, default=4, help="N prompts in the batch")
    p.add_argument("--batch-rows", type=int, default=64,
                   help="our passes hold max(1, batch_rows // N) senders' copies of the corrupted batch")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each way per sweep, alternating which goes first; the fastest counts")
    p.add_argument("--d-vocab", type=int, default=8192)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None,
                   help="where to write results (default benchmarks/results/paths-<device>.json)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    kinds = _names("--kinds", args.kinds, KINDS)
    sweeps = _names("--sweeps", args.sweeps, SWEEPS)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise SystemExit("--models: empty list")
    for m in models:
        _parse_model(m)
    for flag, v, lo in (("--seq-len", args.seq_len, 2), ("--num-seqs", args.num_seqs, 1),
                        ("--batch-rows", args.batch_rows, 1), ("--d-vocab", args.d_vocab, 2),
                        ("--repeats", args.repeats, 1)):
        if v < lo:
            raise SystemExit(f"{flag} must be >= {lo}, got {v}")
    check_machine(args, kinds)
    return with_threads(args.threads, lambda: _run(args, argv, kinds, models, sweeps))


def _run(args: argparse.Namespace, argv: list[str], kinds: list[str], models: list[str], sweeps: list[str]) -> int:
    from sinkinterp.fileio import write_json

    device = torch.device(args.device)
    out = args.json or REPO_ROOT / "benchmarks" / "results" / f"paths-{device.type}.json"
    doc: dict[str, Any] = {
        "benchmark": "paths", "schema_version": SCHEMA_VERSION,
        "description": "path patching sweeps: sinkinterp.paths.path_patch (stacked senders, passes stopped early "
                       "and started late) vs one sender at a time in full passes; seconds include the runs each "
                       "way needs; values must agree",
        "provenance": provenance_info(["benchmarks/bench_paths.py", *argv]),
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "corruption": "the first token of every prompt replaced by a random other token",
        "rows": [],
    }
    for kind in kinds:
        for spec in ([SMOLLM2] if kind == "smollm2" else models):
            model = build_model(kind, spec, d_vocab=args.d_vocab, n_ctx=max(args.seq_len, 16), seed=args.seed).to(device)
            d_vocab = int(model.cfg.d_vocab)
            g = torch.Generator().manual_seed(args.seed)
            clean = torch.randint(0, d_vocab, (args.num_seqs, args.seq_len), generator=g).to(device)
            corrupted = clean.clone()
            shift = 1 + torch.randint(0, d_vocab - 1, (args.num_seqs,), generator=g).to(device)
            corrupted[:, 0] = (clean[:, 0] + shift) % d_vocab
            for sweep in sweeps:
                base = {"kind": kind, "model": spec, "n_params": sum(p.numel() for p in model.parameters()),
                        "n_layers": len(model.blocks), "seq_len": args.seq_len, "num_seqs": args.num_seqs,
                        "batch_rows": args.batch_rows}
                if not args.quiet:
                    print(f"[bench_paths] {kind} {spec} {sweep} ...", file=sys.stderr, flush=True)
                try:
                    row = {**base, **run_sweep(model, clean, corrupted, sweep, batch_rows=args.batch_rows,
                                               repeats=args.repeats)}
                except Exception as err:  # noqa: BLE001 - record and go on with the next row
                    row = {**base, "sweep": sweep, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
                doc["rows"].append(row)
                write_json(out, doc)
            del model
    write_json(out, doc)
    print(format_table(doc["rows"]))
    print(f"results: {out}")
    return 1 if any(r["status"] == "failed" for r in doc["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
