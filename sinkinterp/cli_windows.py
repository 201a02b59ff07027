"""``sinkinterp windows``: where a sliding-window layer's attention goes once token 1 has left its window
(sinkinterp.window_sinks), beside the global layers on the same queries. Same --model / --tokens / --inputs /
--out conventions as ``sinkinterp measure``; writes config.json, results.json (last) and window_sinks.png.

    sinkinterp windows --model gemma.gguf --inputs natural --prepend-bos --seq-len 1024 --num-seqs 8 --out DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sinkinterp.argtypes import int_at_least

__all__ = ["add_parser", "cmd_windows"]


def add_parser(sub: Any, add_common: Any) -> None:
    s = sub.add_parser("windows", help="past a sliding window: where windowed layers' attention goes without token 1")
    add_common(s, single_input=True, per_key=False)
    s.add_argument("--split", type=int_at_least(2), default=None,
                   help="first query position (0-based) counted as past (default: the smallest window of any layer)")
    s.add_argument("--top", type=int_at_least(1), default=10, help="sink tokens listed per kind of layer (default 10)")


def cmd_windows(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures
    from sinkinterp.cli import UsageError, model_and_tokens, run_config
    from sinkinterp.cli_intervene import _prepare
    from sinkinterp.cli_tokens import _decoder
    from sinkinterp.fileio import write_json
    from sinkinterp.window_sinks import window_sinks

    tokens, text, kind = _prepare(args)
    if args.k_max is not None:
        raise UsageError("--k-max: not used by `sinkinterp windows` (it reads every query row; see --split)")
    lm, tokens = model_and_tokens(args, kind, tokens, text)
    started = time.perf_counter()
    try:
        report = window_sinks(lm.model, tokens, eps=args.eps, split=args.split, batch_size=args.batch_size,
                              progress=True)
    except ValueError as err:
        msg = str(err)
        if msg.startswith("split "):
            msg = "--split " + msg[len("split "):]
        elif msg.startswith("no layer's window"):
            msg = msg.replace("pass split", "pass --split")
        raise UsageError(msg) from None
    decode = _decoder(lm)
    results = report.to_dict(decode, args.top)
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "split": report.split, "top": args.top,
                   "seconds": round(time.perf_counter() - started, 3)})
    results.update({"model": args.model, "inputs": config["inputs"], "prepend_bos": bool(args.prepend_bos),
                    "dtype": lm.info.get("dtype")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures:
        label = f"{Path(args.model).name} · {config['inputs']} · N={report.num_seqs}, T={report.seq_len}"
        figures.save_figure(figures.window_distance(report.by_distance, report.windowed_layers(), split=report.split,
                                                    title=f"attention by distance — {label}"),
                            out / "window_sinks.png")
    write_json(out / "config.json", config)
    write_json(out / "results.json", results)  # last: the run completed
    print(report.table(decode, args.top))
    print(f"wrote {out}/results.json")
    return 0
