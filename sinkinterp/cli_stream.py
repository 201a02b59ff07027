"""``sinkinterp stream``: read streams longer than the model's training length through a bounded
cache (StreamingLLM) and record the loss along them (sinkinterp.streaming). Same --model / --tokens /
--inputs / --out conventions as ``sinkinterp measure``; writes config.json, results.json (last) and
stream_loss.png (the loss along the stream; minus the full-context re-computation when one of
the settings is one: ``W,recompute`` with W >= min(n_ctx, stream length)).

    sinkinterp stream --model toy-softmax --prepend-bos --seq-len 256 --cache 32 32+1 32+4 32+1,original 32+4,recompute --out DIR

A cache SPEC is ``W`` or ``W+K`` (the last W tokens plus the first K), optionally followed by
``,original`` (rotary models: keys keep their stream distance instead of re-numbered cache
positions) or ``,recompute`` (sliding window with re-computation).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


__all__ = ["add_parser", "cmd_stream", "parse_cache_spec"]

CACHE_HELP = ("cache settings, each W or W+K (each query sees the first K tokens and its last W, itself included) "
              "optionally followed by ,original (rotary models: stream distances instead of cache positions) or "
              ",recompute (re-read each context from scratch); default: W, W+1, W+4 and W+4,recompute with "
              "W = n_ctx / 2")


def add_parser(sub: Any, add_common: Any) -> None:
    s = sub.add_parser("stream", help="loss along streams longer than the training length through a bounded "
                                      "cache (StreamingLLM): rolling window, kept first tokens, re-computation")
    add_common(s, single_input=True)
    s.add_argument("--cache", nargs="+", default=None, metavar="SPEC", help=CACHE_HELP)
    s.set_defaults(seq_len=256, num_seqs=16, batch_size=8)


def parse_cache_spec(spec: str) -> dict[str, Any]:
    """``W[+K][,original|,recompute]`` -> stream_loss keyword arguments; ValueError names the form."""
    sizes, comma, mode = spec.partition(",")
    w, plus, k = sizes.partition("+")
    try:
        if comma and mode not in ("original", "recompute"):
            raise ValueError(mode)
        window, n_sink = int(w), int(k) if plus else 0
        if window < 1 or n_sink < 0:
            raise ValueError(sizes)
    except ValueError:
        raise ValueError(f"{spec!r}: expected W or W+K (integers W >= 1, K >= 0), optionally followed by "
                         ",original or ,recompute") from None
    return {"window": window, "n_sink": n_sink, "policy": "recompute" if mode == "recompute" else "rolling",
            "positions": "original" if mode == "original" else "cache"}


def _label(p: dict[str, Any]) -> str:
    name = f"{p['window']}" + (f"+{p['n_sink']}" if p["n_sink"] else "")
    if p["policy"] == "recompute":
        return name + ",recompute"
    return name + (",original" if p["positions"] == "original" else "")


def cmd_stream(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures, tl_adapter
    from sinkinterp.cli import UsageError, input_tokens, run_config
    from sinkinterp.cli_intervene import _prepare
    from sinkinterp.fileio import write_json
    from sinkinterp.loading import load_model
    from sinkinterp.streaming import stream_loss

    tokens, text, kind = _prepare(args)
    try:
        specs = None if args.cache is None else [parse_cache_spec(s) for s in args.cache]
    except ValueError as err:
        raise UsageError(f"--cache: {err}") from None
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    attn_backend=args.attn_backend, gguf_context=args.gguf_context)
    n_ctx = tl_adapter.model_dims(lm.model)["n_ctx"]
    if specs is None:
        w = max(1, n_ctx // 2)
        specs = [parse_cache_spec(s) for s in (f"{w}", f"{w}+1", f"{w}+4", f"{w}+4,recompute")]
    for p in specs:  # before any stream runs
        if n_ctx and p["window"] + p["n_sink"] > n_ctx:
            raise UsageError(f"--cache {_label(p)}: the cache ({p['window']} + {p['n_sink']}) must fit the "
                             f"model's n_ctx={n_ctx}")
    tokens = input_tokens(args, lm, kind, tokens, text)
    length = int(tokens.shape[1])
    import torch

    started = time.perf_counter()
    rows = []
    for p in specs:
        print(f"-- cache {_label(p)}")
        try:
            res = stream_loss(lm.model, torch.as_tensor(tokens), batch_size=args.batch_size, progress=True, **p)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--cache {_label(p)}: {err}") from None
        curve = res.nll.mean(0)
        row = {"name": _label(p), "params": res.params, "mean_nll": res.mean_nll(),
               "mean_nll_within": res.mean_nll(0, n_ctx - 1) if n_ctx else None,
               "mean_nll_past": res.mean_nll(n_ctx - 1) if n_ctx and length > n_ctx else None,
               "curve": curve.tolist(),
               "first_attention": None if res.first_attention is None else res.first_attention.tolist()}
        rows.append(row)
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "cache": [r["name"] for r in rows],
                   "n_ctx": n_ctx, "seconds": round(time.perf_counter() - started, 3)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures:
        label = f"{Path(args.model).name} · {config['inputs']} · L={length} · N={tokens.shape[0]}"
        curves = {r["name"]: r["curve"] for r in rows}
        full = min(length, n_ctx) if n_ctx else length  # a re-computed context this long is the full one
        ref = next((r["name"] for r in rows if r["params"]["policy"] == "recompute"
                    and r["params"]["window"] + r["params"]["n_sink"] >= full), None) if len(rows) > 1 else None
        line = n_ctx if n_ctx and n_ctx < length else None  # the training length, when the stream passes it
        figures.save_figure(figures.stream_curves(curves, n_ctx=line, bin_size=16, reference=ref,
                                                  title=f"loss along the stream — {label}"), out / "stream_loss.png")
    write_json(out / "config.json", config)
    write_json(out / "results.json", {"model": args.model, "inputs": config["inputs"], "length": length,
                                      "n_ctx": n_ctx, "settings": rows})  # last: the run completed
    print(_stream_table(rows, n_ctx))
    print(f"wrote {out}/results.json")
    return 0


def _stream_table(rows: list[dict[str, Any]], n_ctx: int) -> str:
    def num(x: float | None) -> str:
        return f"{x:10.4f}" if x is not None else "         -"

    def first(r: dict[str, Any]) -> str:
        a = r["first_attention"]
        if a is None:
            return "         -"
        return f"{sum(map(sum, a)) / sum(map(len, a)):10.3f}"

    lines = [f"cache                  loss, all  targets < {n_ctx:<5}  targets >= {n_ctx:<5}  attention on first"]
    for r in rows:
        lines.append(f"{r['name']:<20}{num(r['mean_nll'])}   {num(r['mean_nll_within'])}      "
                     f"{num(r['mean_nll_past'])}       {first(r)}")
    lines.append("loss: mean next-token cross entropy (nats); attention on first: mean over layers and heads of "
                 "the weight on the kept first tokens (the oldest entry without them) once the cache is full")
    return "\n".join(lines)
