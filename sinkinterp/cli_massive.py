"""``sinkinterp massive``: where the massive activation on token 1 is written (which sublayer, which MLP
neurons) and whether the sink and the loss need it (sinkinterp.massive). Same --model / --tokens /
--inputs / --out conventions as ``sinkinterp measure``; writes config.json, results.json (last) and
massive.png.

    sinkinterp massive --model smollm2.gguf --inputs natural --seq-len 64 --num-seqs 16 --out DIR
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sinkinterp.argtypes import int_at_least, open_unit_float

__all__ = ["add_parser", "cmd_massive"]


def add_parser(sub: Any, add_common: Any) -> None:
    from sinkinterp.massive import DEFAULT_DO

    s = sub.add_parser("massive", help="where the massive activation on token 1 is written (sublayer, MLP "
                                       "neurons) and what the sink and the loss lose without it")
    add_common(s, single_input=True, per_key=False)
    s.add_argument("--do", nargs="+", default=list(DEFAULT_DO), metavar="SPEC",
                   help="edits of token 1 at every layer, as `sinkinterp intervene --do` (default: "
                        + " ".join(DEFAULT_DO) + ")")
    s.add_argument("--max-neurons", type=int_at_least(1), default=8,
                   help="at most this many of the writing MLP's neurons are silenced together (default 8)")
    s.add_argument("--share", type=open_unit_float, default=0.95,
                   help="silence the fewest neurons that carry this share of the MLP's write into h_1, in (0, 1) "
                        "(default 0.95)")
    s.add_argument("--mlp-layer", type=int_at_least(0), default=None, metavar="L",
                   help="search the neurons of layer L's MLP (default: the MLP whose output at token 1 most exceeds "
                        "its output elsewhere; the massive ratio by layer shows where the activation appears)")
    s.set_defaults(num_seqs=32)


def cmd_massive(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures
    from sinkinterp.cli import UsageError, finish_study, model_and_tokens, run_config
    from sinkinterp.cli_intervene import _prepare, parse_spec
    from sinkinterp.massive import massive_study, summary

    tokens, text, kind = _prepare(args)
    if args.k_max is not None:
        raise UsageError("--k-max: not used by `sinkinterp massive` (it reports Sink_1)")
    for spec in args.do:  # syntax first, before the model loads
        try:
            parse_spec(spec, 0)
        except ValueError as err:
            raise UsageError(f"--do: {err}") from None
    lm, tokens = model_and_tokens(args, kind, tokens, text)
    started = time.perf_counter()
    try:
        results = massive_study(lm.model, tokens, eps=args.eps, seed=args.seed, do=args.do,
                                bos_token_id=lm.bos_token_id, tokenizer=lm.tokenizer, max_neurons=args.max_neurons,
                                share=args.share, mlp_layer=args.mlp_layer,
                                progress=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "do": list(args.do),
                   "max_neurons": args.max_neurons, "share": args.share, "mlp_layer": args.mlp_layer,
                   "seconds": round(time.perf_counter() - started, 3)})
    return finish_study(args, lm, tokens, config, results,
                        ("massive.png", lambda name, res, label: figures.massive_activation(
                            {name: res}, title=f"the massive activation on token 1 — {label}")), summary(results))
