"""``sinkinterp lengths``: the sink at every sequence length T' up to --seq-len, from one pass over
the sequences (sinkinterp.lengths): each T' is measured on the first T' tokens of the same sequences,
exactly as ``sinkinterp measure --seq-len T'`` would on those prefixes. Same --model / --tokens /
--inputs / --out conventions as ``sinkinterp measure``; writes config.json, results.json (last) and
sink_by_length.png.

    sinkinterp lengths --model smollm2.gguf --inputs natural --seq-len 512 --num-seqs 20 --out DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sinkinterp.argtypes import int_at_least

__all__ = ["add_parser", "cmd_lengths"]

DEFAULT_MAX_LEN = 512


def add_parser(sub: Any, add_common: Any) -> None:
    s = sub.add_parser("lengths", help="the sink at every sequence length up to --seq-len, from one pass "
                                       "(prefixes of the same sequences)")
    add_common(s, single_input=True, per_key=False)
    s.add_argument("--lengths", nargs="+", type=int_at_least(2), default=None, metavar="T",
                   help="lengths printed and given per-head maps in results.json (every length 2..T is in the "
                        "curves); default: powers of two from 8, and T")
    for action in s._actions:
        if action.dest == "seq_len":
            action.help = (f"the longest length T, BOS included (default: the model's n_ctx, at most "
                           f"{DEFAULT_MAX_LEN}); every shorter length is a prefix of these sequences")
    s.set_defaults(seq_len=None, num_seqs=50)


def cmd_lengths(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures, tl_adapter
    from sinkinterp.cli import UsageError, input_tokens, run_config
    from sinkinterp.cli_intervene import _prepare
    from sinkinterp.fileio import write_json
    from sinkinterp.lengths import default_table_lengths, measure_lengths
    from sinkinterp.loading import load_model

    tokens, text, kind = _prepare(args)
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    attn_backend=args.attn_backend, gguf_context=args.gguf_context)
    n_ctx = tl_adapter.model_dims(lm.model)["n_ctx"]
    if tokens is None:
        if args.seq_len is None:
            args.seq_len = min(n_ctx, DEFAULT_MAX_LEN) if n_ctx else DEFAULT_MAX_LEN
        elif n_ctx and args.seq_len > n_ctx:
            raise UsageError(f"--seq-len: T must be <= the model's n_ctx={n_ctx}, got {args.seq_len}")
        if args.k_max is not None and args.k_max > args.seq_len:
            raise UsageError(f"--k-max: k must be <= T = {args.seq_len}, got {args.k_max}")
    tokens = input_tokens(args, lm, kind, tokens, text)
    T = int(tokens.shape[1])
    prefix = int(getattr(lm.model.cfg, "prefix_len", 0) or 0)
    table = sorted(set(args.lengths)) if args.lengths else [t for t in default_table_lengths(T) if t >= prefix]
    if table[-1] > T:
        raise UsageError(f"--lengths: every length must be <= T = {T}, got {table[-1]}")
    if table[0] < prefix:
        raise UsageError(f"--lengths: this model is measured from length {prefix} on (its bidirectional "
                         f"prefix), got {table[0]}")
    started = time.perf_counter()
    try:
        report = measure_lengths(lm.model, tokens, eps=args.eps, k_max=args.k_max, batch_size=args.batch_size,
                                 progress=True)
        results = report.to_dict(table)
    except ValueError as err:
        raise UsageError(str(err)) from None
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "k_max": report.k_max, "lengths": table,
                   "n_ctx": n_ctx, "seconds": round(time.perf_counter() - started, 3)})
    results.update({"model": args.model, "inputs": config["inputs"], "prepend_bos": bool(args.prepend_bos),
                    "dtype": lm.info.get("dtype"), "table_lengths": table})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures:
        label = f"{Path(args.model).name} · {config['inputs']} · N={report.num_seqs}"
        figures.save_figure(figures.sink_by_length(report.lengths, report.sink_pct, eps=args.eps,
                                                   alpha1_by_layer=report.alpha1.mean(-1),
                                                   sink_bias_pct=report.sink_bias_pct,
                                                   title=f"the sink against the sequence length — {label}"),
                            out / "sink_by_length.png")
    write_json(out / "config.json", config)
    write_json(out / "results.json", results)  # last: the run completed
    print(length_table(report, table))
    print(f"wrote {out}/results.json")
    return 0


def length_table(report: Any, table: list[int]) -> str:
    """One line per length: Sink_1, Sink_2, Sink_*, mean alpha_1 and the largest massive ratio."""
    lines = ["T'       Sink_1  Sink_2  Sink_*  mean alpha_1  max ||h1||/mean||ht||"]
    ratio = report.max_massive_ratio() if report.massive_ratio is not None else None
    for t in table:
        i = report.row(t)
        s2 = report.sink_pct[i, 1] if report.k_max > 1 else float("nan")
        sb = f"{report.sink_bias_pct[i]:7.2f}" if report.sink_bias_pct is not None else "      -"
        r = f"{ratio[i]:10.2f}" if ratio is not None else "         -"
        lines.append(f"{t:<7} {report.sink_pct[i, 0]:7.2f} {s2:7.2f} {sb}  {report.alpha1[i].mean():12.4f}  {r}")
    lines.append(f"Sink_k in % of heads with alpha_k > {report.eps} on the first T' tokens of the same "
                 f"{report.num_seqs} sequences")
    return "\n".join(lines)
