"""``sinkinterp tokens``: sinks past the first position, pooled by token (sinkinterp.token_sinks):
which tokens draw heads' attention wherever they stand, beside the rate their positions predict.
Same --model / --tokens / --inputs / --out conventions as ``sinkinterp measure``; writes
config.json, results.json (last) and token_sinks.png.

    sinkinterp tokens --model smollm2.gguf --inputs natural --seq-len 256 --num-seqs 64 --out DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sinkinterp.argtypes import int_at_least

__all__ = ["add_parser", "cmd_tokens"]

RANK_BY = ("sink_rate", "lift", "mean_alpha", "count")


def add_parser(sub: Any, add_common: Any) -> None:
    s = sub.add_parser("tokens", help="sinks past the first position, pooled by token (which tokens draw a sink)")
    add_common(s, single_input=True, per_key=False)
    s.add_argument("--skip", type=int_at_least(0), default=1,
                   help="leave out the first SKIP key positions (default 1: the first token)")
    s.add_argument("--min-queries", type=int_at_least(1), default=None,
                   help="pool a key position only when at least this many queries see it (default min(16, T - skip))")
    s.add_argument("--first-occurrence", action="store_true",
                   help="pool only each token's first occurrence in its sequence (default: every occurrence)")
    s.add_argument("--top", type=int_at_least(1), default=20, help="tokens listed (default 20)")
    s.add_argument("--min-count", type=int_at_least(1), default=5,
                   help="list only tokens seen at least this many times at pooled positions (default 5)")
    s.add_argument("--rank-by", choices=RANK_BY, default="sink_rate",
                   help="order of the list (default sink_rate; lift = sink_rate over the rate its positions predict)")


def _decoder(lm: Any) -> Any:
    tok = lm.tokenizer
    if tok is None:
        return None
    return lambda i: tok.decode([i])


def cmd_tokens(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures
    from sinkinterp.cli import UsageError, model_and_tokens, run_config
    from sinkinterp.cli_intervene import _prepare
    from sinkinterp.fileio import write_json
    from sinkinterp.token_sinks import token_sinks

    tokens, text, kind = _prepare(args)
    if args.k_max is not None:
        raise UsageError("--k-max: not used by `sinkinterp tokens` (it pools every key position; see --skip and "
                         "--min-queries)")
    lm, tokens = model_and_tokens(args, kind, tokens, text)
    started = time.perf_counter()
    try:
        report = token_sinks(lm.model, tokens, eps=args.eps, skip=args.skip, min_queries=args.min_queries,
                             first_occurrence=args.first_occurrence, batch_size=args.batch_size, progress=True)
    except ValueError as err:
        msg = str(err)
        for name, flag in (("skip", "--skip"), ("min_queries", "--min-queries")):
            if msg.startswith(name + " "):
                msg = flag + msg[len(name):]
        raise UsageError(msg) from None
    decode = _decoder(lm)
    results = report.to_dict(decode)
    top = report.top(args.top, args.min_count, args.rank_by)
    results["top"] = {"rank_by": args.rank_by, "min_count": args.min_count, "index": top.tolist()}
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "skip": args.skip,
                   "first_occurrence": args.first_occurrence,
                   "min_queries": report.min_queries, "top": args.top, "min_count": args.min_count,
                   "rank_by": args.rank_by, "seconds": round(time.perf_counter() - started, 3)})
    results.update({"model": args.model, "inputs": config["inputs"], "prepend_bos": bool(args.prepend_bos),
                    "dtype": lm.info.get("dtype")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures and len(top):
        show = decode or str
        labels = [repr(show(int(report.token_ids[i])))[1:-1][:12] or "''" for i in top]
        label = f"{Path(args.model).name} · {config['inputs']} · N={report.num_seqs}, T={report.seq_len}"
        figures.save_figure(figures.token_sink_bars(labels, report.sink_rate[top], report.expected_rate[top],
                                                    eps=args.eps, first_rate=report.sink1_pct,
                                                    title=f"sinks by token — {label}"),
                            out / "token_sinks.png")
    write_json(out / "config.json", config)
    write_json(out / "results.json", results)  # last: the run completed
    print(report.table(decode, args.top, args.min_count, args.rank_by))
    print(f"wrote {out}/results.json")
    return 0
