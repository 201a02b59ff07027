"""``sinkinterp windows``: where a sliding-window layer's attention goes once token 1 has left its window
(sinkinterp.window_sinks), beside the global layers on the same queries. Same --model / --tokens / --inputs /
--out conventions as ``sinkinterp measure``; writes config.json, results.json (last) and window_sinks.png.

    sinkinterp windows --model gemma.gguf --inputs natural --prepend-bos --seq-len 1024 --num-seqs 7 --out DIR
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
    s.add_argument("--drop-tokens", nargs="+", default=None, metavar="TOKEN",
                   help="also the loss inside and past the split with the keys holding these tokens (each one token "
                        "of the model's vocabulary, as text, or #ID) hidden from the windowed layers' queries")


def _token_ids(lm: Any, names: list[str]) -> list[int]:
    """``--drop-tokens``: each a single token of the model's vocabulary, as its text or as #ID."""
    from sinkinterp.cli import UsageError

    vocab = lm.d_vocab
    ids = []
    for name in names:
        if name.startswith("#") and name[1:].isdigit():
            ids.append(int(name[1:]))
        elif lm.tokenizer is None:
            raise UsageError(f"--drop-tokens: {name!r}: this model has no tokenizer; give token ids as #ID")
        else:
            got = list(lm.tokenizer(name, add_special_tokens=False)["input_ids"])
            if len(got) != 1:
                raise UsageError(f"--drop-tokens: {name!r} is {len(got)} tokens of this vocabulary, not one "
                                 "(give its id as #ID)")
            ids.append(int(got[0]))
        if not 0 <= ids[-1] < vocab:
            raise UsageError(f"--drop-tokens: {name!r}: token ids must lie in [0, {vocab - 1}]")
    return ids


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
    drop_ids = _token_ids(lm, args.drop_tokens) if args.drop_tokens else None
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
    if drop_ids is not None:
        from sinkinterp.window_sinks import drop_token_keys

        try:
            results["drop"] = drop_token_keys(lm.model, tokens, drop_ids, split=report.split,
                                              batch_size=args.batch_size)
        except ValueError as err:  # no layer's window hides token 1 past the split
            raise UsageError(f"--drop-tokens: {err}") from None
        results["drop"]["tokens"] = [decode(t) for t in drop_ids] if decode else None
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "split": report.split, "top": args.top,
                   "drop_tokens": drop_ids,
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
    if drop_ids is not None:
        d = results["drop"]
        print(f"keys holding {d['tokens'] or d['token_ids']} hidden from layers {d['layers']}: loss inside "
              f"{d['loss']['inside']:.4f} -> {d['loss_dropped']['inside']:.4f} ({d['delta']['inside']:+.4f}), past "
              f"{d['loss']['past']:.4f} -> {d['loss_dropped']['past']:.4f} ({d['delta']['past']:+.4f}); the weight "
              f"they held: {d['weight_dropped']['inside']:.3f} inside, {d['weight_dropped']['past']:.3f} past")
    print(f"wrote {out}/results.json")
    return 0
