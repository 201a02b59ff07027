"""``sinkinterp paths``: what writes the first-token sink, along direct paths (sinkinterp.paths.sink_paths):
for each layer's sink heads, each earlier component's write sent through the residual stream alone to their
keys (ablated at token 1) and to their queries (ablated at the queries), by the heads' weight on token 1;
with --gate, what makes their gate vary from text to text (paths.gate_paths).
Same --model / --tokens / --inputs / --out conventions as ``sinkinterp measure``; writes config.json,
results.json (last), paths.png and, with --search-neurons, search.png.

    sinkinterp paths --model smollm2.gguf --inputs natural --seq-len 64 --num-seqs 8 --out DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sinkinterp.argtypes import int_at_least, open_unit_float

__all__ = ["add_parser", "cmd_paths", "neuron_group"]


def neuron_group(text: str) -> tuple[int, tuple[int, ...], bool]:
    """``L:N1,N2,...``: the neurons of layer L's MLP, one sender; ``L:~N1,N2,...``: every neuron of it but
    these (returned with ``complement`` True)."""
    layer, colon, units = text.partition(":")
    complement = units.startswith("~")
    try:
        got = (int(layer), tuple(int(u) for u in units.removeprefix("~").split(",")), complement)
    except ValueError:
        got = None
    if not colon or got is None or got[0] < 0 or any(u < 0 for u in got[1]):
        raise argparse.ArgumentTypeError(f"must be LAYER:N1,N2,... or LAYER:~N1,N2,... (every neuron but these; "
                                         f"non-negative integers), got {text!r}")
    return got


def add_parser(sub: Any, add_common: Any) -> None:
    from sinkinterp.paths import ABLATIONS, GATE_SIDES, PATH_SINKS, SENDER_KINDS, SIDES

    s = sub.add_parser("paths", help="what writes the first-token sink: each earlier component's direct path "
                                     "(path patching) to the sink heads' keys at token 1 and to their queries")
    add_common(s, single_input=True, per_key=False)
    s.add_argument("--threshold", type=open_unit_float, default=0.3,
                   help="a sink head's mean weight on token 1 over queries 2..T is above this (default 0.3)")
    s.add_argument("--senders", choices=["blocks", *SENDER_KINDS], default="blocks",
                   help="the senders: blocks (the embedding, a learned or sinusoidal position embedding where the "
                        "model adds one, and each layer's attention and MLP outputs; default), z (each head), "
                        "attn_out, mlp_out, neuron (each unit of the MLPs: name them with --sender-layers), embed "
                        "or pos_embed")
    s.add_argument("--sender-layers", nargs="+", type=int_at_least(0), default=None, metavar="L",
                   help="only the senders of these layers (0-based; default every layer; the embeddings are "
                        "always in 'blocks'); a layer's sink heads before every sender are not read")
    s.add_argument("--neurons", nargs="+", type=neuron_group, default=None, metavar="L:N1,N2",
                   help="more senders: each the listed neurons of layer L's MLP sent together (one neuron: L:N; "
                        "L:~N1,N2: every neuron of it but these, which keeps them alone), after those of --senders")
    s.add_argument("--sink", choices=list(PATH_SINKS), default="auto",
                   help="token 1 (first) or the bias slot (slot: k*/v*, a sink token, a sink logit, gpt-oss's learned "
                        "sinks; its key is a parameter, so only the query side applies); auto: the slot if the model has one (default)")
    s.add_argument("--gate", action="store_true",
                   help="read what makes the sink heads' gate vary from text to text instead of their weight: each "
                        "sender's write made its mean by position (what the text adds removed) along its path, read as "
                        "the share of the variance over texts of the heads' log-odds on the sink that the path carries "
                        "(paths.gate_paths)")
    s.add_argument("--resample", type=int_at_least(0), default=0, metavar="K",
                   help="with --gate: take each sender's write from other texts at the same position instead of its "
                        "mean (a value the model meets), averaged over K shifts of the texts, each shift's shares also kept in "
                        "results.json (default 0: the mean by position)")
    s.add_argument("--sides", nargs="+", choices=list(dict.fromkeys([*SIDES, *GATE_SIDES])), default=None,
                   help="the sink heads' inputs the paths end at: key, query (default both; the query side for the "
                        "slot); with --gate: query, sink_key (token 1's key), keys (the other keys; default all "
                        "three; query and keys for the slot)")
    s.add_argument("--key-ablation", choices=list(ABLATIONS), default=None,
                   help="what a sender's write at token 1 becomes on the key side (default mean: an ordinary "
                        "token's, its mean over positions 2..T; resample: the next text's; not with --gate)")
    s.add_argument("--query-ablation", choices=list(ABLATIONS), default=None,
                   help="what a sender's write at the queries becomes on the query side (default zero; not with "
                        "--gate)")
    s.add_argument("--layers", nargs="+", type=int_at_least(1), default=None, metavar="L",
                   help="only the sink heads of these layers (0-based, after the first; default every layer): "
                        "each costs two passes of its first blocks per sender before it")
    s.add_argument("--free-mlps", action="store_true",
                   help="let the MLPs after a sender recompute: its paths through them count (default: frozen, "
                        "the direct path only)")
    s.add_argument("--free-attn", action="store_true",
                   help="let the attention layers after a sender recompute too: its paths through later heads count "
                        "(with --free-mlps nothing is frozen: the sender's total effect on the receivers)")
    s.add_argument("--search-neurons", nargs="+", type=int_at_least(0), default=None, metavar="M",
                   help="for each of these MLPs (0-based, before a sink layer read): search for the few of its neurons "
                        "that, ablated together along their paths, lower the weight most, with the neurons that back "
                        "each other up (each alone, each kept alone, then a beam search; paths.neuron_search)")
    s.add_argument("--search-size", type=int_at_least(1), default=4,
                   help="the search's largest group (default 4)")
    s.add_argument("--search-triples", type=int_at_least(0), default=0, metavar="K",
                   help="size 3 of the search also tries every triple of the K neurons that, kept alone, hold up the "
                        "most (three that each suffice; default 0: none)")
    s.add_argument("--search-quads", type=int_at_least(0), default=0, metavar="K",
                   help="size 4 of the search also tries every group of four of the K neurons that, kept alone, hold "
                        "up the most (four that each suffice; default 0: none)")
    s.add_argument("--batch-rows", type=int_at_least(1), default=64,
                   help="rows per forward pass: copies of the batch, one per sender (default 64)")
    s.set_defaults(num_seqs=8)


def cmd_paths(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import figures
    from sinkinterp.cli import UsageError, finish_study, model_and_tokens, run_config
    from sinkinterp.cli_intervene import _prepare
    from sinkinterp.paths import (
        SIDES,
        Sender,
        gate_paths,
        gate_paths_summary,
        senders_of,
        sink_paths,
        sink_paths_summary,
    )

    tokens, text, kind = _prepare(args)
    if args.k_max is not None:
        raise UsageError("--k-max: not used by `sinkinterp paths` (it reads the weight on token 1)")
    if args.gate:
        used = [flag for flag, value in (("--key-ablation", args.key_ablation), ("--query-ablation", args.query_ablation),
                                         ("--search-neurons", args.search_neurons)) if value is not None]
        if used:
            raise UsageError(f"{used[0]}: not used with --gate (every sender's write is made its mean by position, "
                             "or with --resample taken from other texts)")
    else:
        if args.resample:
            raise UsageError("--resample: only with --gate (the weight reading takes --key-ablation / "
                             "--query-ablation resample)")
        args.key_ablation = args.key_ablation or "mean"
        args.query_ablation = args.query_ablation or "zero"
    lm, tokens = model_and_tokens(args, kind, tokens, text)
    started = time.perf_counter()
    try:
        senders: Any = args.senders
        layers_of_kind = args.sender_layers
        if args.neurons:  # the kind's senders, then each group
            senders = [*senders_of(lm.model, args.senders, args.sender_layers),
                       *(Sender("neuron", l, neuron=units[0] if len(units) == 1 else units, complement=but)
                         for l, units, but in args.neurons)]
            layers_of_kind = None
        sides = None if args.sides is None else list(dict.fromkeys(args.sides))
        if args.gate:
            results = gate_paths(lm.model, tokens, threshold=args.threshold, senders=senders,
                                 sender_layers=layers_of_kind, sides=sides, sink=args.sink, layers=args.layers,
                                 free_mlps=args.free_mlps, free_attn=args.free_attn, batch_rows=args.batch_rows,
                                 progress=True, resample=args.resample)
        else:
            results = sink_paths(lm.model, tokens, threshold=args.threshold, senders=senders,
                                 sender_layers=layers_of_kind, sides=sides, sink=args.sink,
                                 key_ablation=args.key_ablation, query_ablation=args.query_ablation,
                                 layers=args.layers, free_mlps=args.free_mlps, free_attn=args.free_attn,
                                 batch_rows=args.batch_rows, search_mlps=args.search_neurons,
                                 search_size=args.search_size, search_triples=args.search_triples,
                                 search_quads=args.search_quads, progress=True)
    except (ValueError, TypeError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    if not results["layers"]:  # nothing to draw; the summary says so
        args.no_figures = True
    if not args.no_figures and not args.gate and any(row.get(side, {}).get("search") for row in results["layers"]
                                                     for side in SIDES):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figures.save_figure(figures.neuron_search_figure(
            results, title=f"neuron search — {Path(args.model).name} · N={tokens.shape[0]}, T={tokens.shape[1]}"),
            out / "search.png")
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "threshold": args.threshold,
                   "senders": args.senders, "sender_layers": args.sender_layers,
                   "neurons": None if args.neurons is None else [f"{l}:{'~' if but else ''}{','.join(map(str, u))}"
                                                                 for l, u, but in args.neurons],
                   "sink": results["sink"], "gate": args.gate,
                   "sides": results["sides"], "key_ablation": args.key_ablation,
                   "query_ablation": args.query_ablation, "layers": args.layers, "free_mlps": args.free_mlps,
                   "free_attn": args.free_attn, "resample": args.resample if args.gate else None,
                   "search_neurons": args.search_neurons,
                   "search_size": args.search_size if args.search_neurons else None,
                   "search_triples": args.search_triples if args.search_neurons else None,
                   "search_quads": args.search_quads if args.search_neurons else None,
                   "seconds": round(time.perf_counter() - started, 3)})
    what = "what makes the sink heads' gate vary, by direct path" if args.gate else "direct paths into the sink heads"
    return finish_study(args, lm, tokens, config, results,
                        ("paths.png", lambda name, res, label: figures.sink_paths_figure(res, title=f"{what} — {label}")),
                        (gate_paths_summary if args.gate else sink_paths_summary)(results))
