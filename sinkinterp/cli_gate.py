"""``sinkinterp gate``: is the sink a gate? For every head, how much of what it reads it writes, query
by query, how that follows the weight on the sink, which query tokens open it, and what the loss loses
when the gate is opened, fixed to its mean by position, made to follow only the position and the query
token, or taken from another text, and how much of the gate the position, the query token and the rest of
the text explain (sinkinterp.gate). Same --model / --tokens / --inputs / --out conventions as
``sinkinterp measure``; writes config.json, results.json (last) and gate.png.

    sinkinterp gate --model smollm2.gguf --inputs natural --seq-len 64 --num-seqs 32 --out DIR
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sinkinterp.argtypes import int_at_least

__all__ = ["add_parser", "cmd_gate"]


def _closed(text: str) -> float:
    from sinkinterp.gate import GATE_MAX

    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, {GATE_MAX}), got {text!r}") from None
    if not 0 < x < GATE_MAX:
        raise argparse.ArgumentTypeError(f"expected a number in (0, {GATE_MAX}), got {text!r}")
    return x


def add_parser(sub: Any, add_common: Any) -> None:
    from sinkinterp.gate import GATE_EDITS, SINKS

    s = sub.add_parser("gate", help="is the sink a gate? per head, how much of what it reads it writes, against "
                                    "the weight on the sink, and the loss with the gate opened, fixed, following "
                                    "only the position and query token, or another text's; what drives it")
    add_common(s, single_input=True, per_key=False)
    s.add_argument("--sink", choices=list(SINKS), default="auto",
                   help="where the sink is: token 1 (first) or the bias slot (slot); auto: the slot if the model "
                        "has one (default auto)")
    s.add_argument("--closed", type=_closed, default=0.1,
                   help="report the share of queries whose effective gate is below this (default 0.1)")
    s.add_argument("--per-head", nargs="*", choices=list(GATE_EDITS), default=None, metavar="EDIT",
                   help="also each head's loss change with its gate edited alone; bare: for every edit, or only "
                        f"for those named ({', '.join(GATE_EDITS)}): one pass per head each")
    s.add_argument("--no-interventions", action="store_true", help="measure only (no loss runs)")
    s.add_argument("--token-heads", type=int_at_least(0), default=6,
                   help="for this many heads whose gate varies most with the content (among those with at least "
                        "10%% of their weight on the sink), the query tokens that open and close their gate most "
                        "(default 6; 0: none)")
    s.add_argument("--turn-sources", nargs="?", const="layers", choices=["layers", "heads"], default=None,
                   help="with token 1 as the sink, also split the query's turn toward token 1's mean key by what "
                        "writes the query's input: the embedding and each earlier block's attention and MLP "
                        "(one backward pass per head and layer on each batch); 'heads': each earlier attention "
                        "head's write too")
    s.set_defaults(num_seqs=32, batch_size=8)


def cmd_gate(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures
    from sinkinterp.cli import UsageError, finish_study, model_and_tokens, run_config
    from sinkinterp.cli_intervene import _prepare
    from sinkinterp.gate import gate_study, summary

    tokens, text, kind = _prepare(args)
    if args.k_max is not None:
        raise UsageError("--k-max: not used by `sinkinterp gate` (it reports Sink_1 and Sink_*)")
    per_head = False if args.per_head is None else (list(args.per_head) or True)
    if per_head and args.no_interventions:
        raise UsageError("--per-head: needs the interventions (drop --no-interventions)")
    if args.seq_len < 3 and not args.tokens:
        raise UsageError(f"--seq-len: the gate study needs T >= 3, got {args.seq_len}")
    lm, tokens = model_and_tokens(args, kind, tokens, text)
    started = time.perf_counter()
    try:
        results = gate_study(lm.model, tokens, sink=args.sink, closed=args.closed, eps=args.eps,
                             interventions=not args.no_interventions, per_head=per_head,
                             batch_size=args.batch_size, token_heads=args.token_heads, progress=True,
                             turn_sources={None: False, "layers": True, "heads": "heads"}[args.turn_sources])
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if lm.tokenizer is not None:
        for x in results.get("open_tokens") or []:
            for row in x["open"] + x["closed"]:
                row["text"] = lm.tokenizer.decode([row["id"]])
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "sink": args.sink, "closed": args.closed,
                   "token_heads": args.token_heads, **({"turn_sources": args.turn_sources} if args.turn_sources else {}),
                   "per_head": per_head, "interventions": not args.no_interventions,
                   "seconds": round(time.perf_counter() - started, 3)})
    return finish_study(args, lm, tokens, config, results,
                        ("gate.png", lambda name, res, label: figures.gate_figure(
                            {name: res}, title=f"the sink as a gate — {label}")), summary(results))
