"""``sinkinterp intervene`` and ``sinkinterp patch``: the first-token experiments as commands that
write result folders (config.json, results.json written last, figures), with the same --model /
--tokens / --inputs / --out conventions as ``sinkinterp measure``.

    sinkinterp intervene --model M --inputs natural --do zero_value mean_value zero_key ablate --out DIR
    sinkinterp patch --model M --inputs natural --corrupt replace_first=random --components k v --out DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from sinkinterp.argtypes import int_at_least

__all__ = ["add_parsers", "cmd_intervene", "cmd_patch", "parse_spec", "DEFAULT_DO"]

DEFAULT_DO = ("zero_value", "mean_value", "zero_key", "ablate")

SPEC_HELP = (
    "interventions as NAME or NAME=VALUE: ablate, zero_value, mean_value, scale_value=F, zero_key, mean_key, "
    "scale_key=F, scale_resid=F, normalize_resid, ablate_bias, bias_to_first, swap_position=P, rotary_position=P, "
    "replace_first=ID|bos|random|frequent, "
    "insert_first=ID|bos|random, start_later=N, window=W or window=W+K (attention to the last W keys plus the "
    "first K: a StreamingLLM cache; add ,norenorm for unnormalized attention), zero_neurons=L:N1,N2 (MLP "
    "neurons of layer L silenced at token 1); ablate and ablate_bias take "
    "=norenorm to zero without "
    f"renormalizing. ablate, zero_value, mean_value, scale_value=F, zero_key, mean_key, scale_key=F and scale_resid=F "
    "act at another key position with @P (0-based, every sequence), @first:ID or @first:\"TEXT\" (the first "
    "occurrence of that token after token 1 in each sequence; +D / -D after it: its neighbour D tokens away), e.g. "
    "'ablate@first:\" the\"+1'; --no-sinks skips the Sink measurement "
    f"(default: {' '.join(DEFAULT_DO)})"
)

_AT_HELP = ('@P (a 0-based position), @first:ID or @first:"TEXT" (one token of the model\'s tokenizer), '
            "either followed by +D or -D (integers)")


def _token_of(spec: str, text: str, tokenizer: Any) -> int:
    """The one token id ``text`` encodes to (special tokens not added)."""
    if tokenizer is None:
        raise ValueError(f"{spec!r}: the model has no tokenizer; give the token as first:ID")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        raise ValueError(f"{spec!r}: {text!r} is {len(ids)} tokens {ids} for this model's tokenizer; give one token")
    return int(ids[0])


def _parse_at(spec: str, head: str, where: str, tokenizer: Any) -> Any:
    """``KIND[=VALUE]@WHERE`` -> an at_position Intervention (``tokenizer`` False: check the syntax only)."""
    import re

    from sinkinterp import interventions as iv

    name, _, value = head.partition("=")
    if name not in iv.POSITION_KINDS:
        raise ValueError(f"{spec!r}: @ applies to {', '.join(iv.POSITION_KINDS)}")
    kw: dict[str, Any] = {}
    if name == "ablate":
        if value not in ("", "norenorm"):
            raise ValueError(f"{spec!r}: ablate takes no value or =norenorm")
        kw["renormalize"] = value != "norenorm"
    elif name.startswith("scale"):
        try:
            kw["factor"] = float(value)
        except ValueError:
            raise ValueError(f"{spec!r}: {name} needs =float") from None
    elif value:
        raise ValueError(f"{spec!r}: {name} takes no value")
    if re.fullmatch(r"\d+", where):
        return iv.at_position(name, position=int(where), **kw)
    m = re.fullmatch(r'first:(?:(\d+)|"(.+)")([+-]\d+)?', where, flags=re.DOTALL)
    if m is None:
        raise ValueError(f"{spec!r}: the place after @ must be {_AT_HELP}")
    if m.group(1) is not None:
        token = int(m.group(1))
    else:
        token = 0 if tokenizer is False else _token_of(spec, m.group(2), tokenizer)
    return iv.at_position(name, token=token, offset=int(m.group(3) or 0), **kw)


def add_parsers(sub: Any, add_common: Any) -> None:
    """Register the two subcommands; ``add_common`` adds the measure-style model/input arguments."""
    i = sub.add_parser("intervene", help="first-token interventions: loss and Sink_k changes, per-head effects")
    add_common(i, single_input=True)
    i.add_argument("--do", nargs="+", default=list(DEFAULT_DO), metavar="SPEC", help=SPEC_HELP)
    i.add_argument("--layers", default=None, help="edit only these layers, e.g. 0,1 (default all)")
    i.add_argument("--heads", default=None, help="edit only these heads (key/value heads for k and v edits)")
    i.add_argument("--per-head", action="store_true", help="also the loss change of each head edited alone")
    i.add_argument("--per-layer", action="store_true", help="also the loss change of each layer edited alone")
    i.add_argument("--batch-rows", type=int_at_least(1), default=64, help="rows per batched pass (per-head runs)")
    i.add_argument("--no-sinks", action="store_true", help="losses only: skip the Sink_k measurement before and after")

    p = sub.add_parser("patch", help="patch token 1's key / value / score column / residual from clean into corrupted")
    add_common(p, single_input=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corrupt", default="replace_first=random", metavar="SPEC",
                     help="how the corrupted input is made from the clean one: replace_first=ID|bos|random|frequent "
                          "(default replace_first=random)")
    src.add_argument("--corrupted-tokens", metavar="IDS.npy", help="corrupted token ids, same shape as the clean ones")
    p.add_argument("--components", nargs="+", default=["k", "v"],
                   help="what to patch: k v q z scores pattern rot_k resid_pre resid_mid resid_post attn_out mlp_out "
                        "(default k v)")
    p.add_argument("--positions", default="first", help="'first' (default), 'all' (one cell per position) or 0,1,...")
    p.add_argument("--per-layer", action="store_true", help="patch all heads of a layer together (cells per layer)")
    p.add_argument("--batch-rows", type=int_at_least(1), default=64, help="rows per batched pass")
    p.add_argument("--metric", choices=("loss", "last-loss"), default="loss",
                   help="loss: mean next-token cross entropy over every clean target (default); last-loss: the "
                        "cross entropy of the last clean token only (passes then unembed one position)")


def _int_list(text: str | None, name: str) -> list[int] | None:
    from sinkinterp.cli import UsageError

    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UsageError(f"{name}: expected integers separated by commas, got {text!r}") from None
    if not out or min(out) < 0:
        raise UsageError(f"{name}: expected non-negative integers separated by commas, got {text!r}")
    return out


def parse_spec(spec: str, bos_token_id: int | None, tokenizer: Any = False) -> Any:
    """One --do / --corrupt SPEC -> an Intervention; raises ValueError with the allowed forms.
    ``tokenizer``: the model's (Hugging Face) tokenizer or None, for @first:"TEXT"; False checks the
    syntax only (the text is not resolved)."""
    from sinkinterp import interventions as iv

    head, at, where = spec.partition("@")
    if at:
        return _parse_at(spec, head, where, tokenizer)
    name, _, value = spec.partition("=")

    def number(kind: type) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{spec!r}: {name} needs ={kind.__name__}") from None

    def token() -> int | str:
        if value == "bos":
            if bos_token_id is None:
                raise ValueError(f"{spec!r}: the model has no BOS token; give an id")
            return int(bos_token_id)
        if value in ("random", "frequent"):
            return value
        return number(int)

    if name in ("ablate", "ablate_bias"):
        if value not in ("", "norenorm"):
            raise ValueError(f"{spec!r}: {name} takes no value or =norenorm")
        return iv.first_token(name, renormalize=value != "norenorm")
    if name in ("zero_value", "mean_value", "zero_key", "mean_key", "bias_to_first", "normalize_resid"):
        if value:
            raise ValueError(f"{spec!r}: {name} takes no value")
        return iv.first_token(name)
    if name in ("scale_value", "scale_key", "scale_resid"):
        return iv.first_token(name, factor=number(float))
    if name in ("swap_position", "rotary_position"):
        return iv.first_token(name, position=number(int))
    if name == "replace_first":
        return iv.replace_first(token())
    if name == "insert_first":
        return iv.insert_first(token())
    if name == "start_later":
        return iv.start_later(number(int))
    if name == "zero_neurons":
        layer, colon, listed = value.partition(":")
        try:
            return iv.zero_neurons(int(layer), [int(i) for i in listed.split(",")] if colon else [])
        except ValueError:
            raise ValueError(f"{spec!r}: zero_neurons needs =LAYER:N1,N2,... (non-negative integers)") from None
    if name == "window":
        sizes, comma, mode = value.partition(",")
        w, plus, k = sizes.partition("+")
        try:
            if comma and mode != "norenorm":
                raise ValueError(mode)
            return iv.window_cache(int(w), int(k) if plus else 0, renormalize=not comma)
        except ValueError:
            raise ValueError(f"{spec!r}: window needs =W or =W+K with integers W >= 1, K >= 0, "
                             "optionally followed by ,norenorm") from None
    raise ValueError(f"{spec!r}: unknown intervention; {SPEC_HELP}")


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    from sinkinterp.cli import _precheck

    kind = None if args.tokens else (args.inputs or "natural")
    tokens, (text, _) = _precheck(args, kind)
    return tokens, text, kind


def cmd_intervene(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp import interventions as iv
    from sinkinterp.cli import UsageError, input_tokens, run_config
    from sinkinterp.fileio import write_json
    from sinkinterp.loading import load_model

    tokens, text, kind = _prepare(args)
    layers = _int_list(args.layers, "--layers")
    heads = _int_list(args.heads, "--heads")
    for spec in args.do:  # syntax first, before the model loads (the BOS id comes with the model)
        try:
            parse_spec(spec, 0)
        except ValueError as err:
            raise UsageError(f"--do: {err}") from None
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    attn_backend=args.attn_backend, gguf_context=args.gguf_context)
    try:
        inters = [parse_spec(s, lm.bos_token_id, lm.tokenizer) for s in args.do]
    except ValueError as err:
        raise UsageError(f"--do: {err}") from None
    tokens = input_tokens(args, lm, kind, tokens, text)
    started = time.perf_counter()
    try:
        results = iv.compare(lm.model, tokens, inters, layers=layers, heads=heads, per_head=args.per_head,
                             per_layer=args.per_layer, eps=args.eps, batch_size=args.batch_size, sinks=not args.no_sinks,
                             batch_rows=args.batch_rows, seed=args.seed, progress=True)
    except ValueError as err:
        raise UsageError(str(err)) from None
    config = run_config(args, argv, lm, tokens)
    config.update({"inputs": "tokens" if args.tokens else kind, "do": args.do, "layers": layers, "heads": heads,
                   "per_head": args.per_head, "per_layer": args.per_layer,
                   "sinks": not args.no_sinks,
                   "seconds": round(time.perf_counter() - started, 3)})
    base = results[0]
    out = Path(args.out)
    payload = {
        "model": args.model, "inputs": config["inputs"], "eps": args.eps,
        "loss_base": base.loss_base, "sink_pct_base": base.sink_base.sink_pct.tolist() if base.sink_base else None,
        "sink_bias_pct_base": base.sink_base.sink_bias_pct if base.sink_base else None,
        "interventions": [r.to_dict() for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures:
        _intervene_figures(results, out, f"{Path(args.model).name} · {config['inputs']} · T={tokens.shape[1]}")
    write_json(out / "config.json", config)
    write_json(out / "results.json", payload)  # last: its presence means the run completed
    print(_intervene_table(results))
    print(f"wrote {out}/results.json")
    return 0


def _intervene_table(results: list[Any]) -> str:
    width = max(24, *(len(r.name) + 2 for r in results))
    lines = [f"{'intervention':<{width}}Δloss (nats)   Sink_1 before → after   Sink_* before → after"]
    at = [r for r in results if r.edited is not None]
    for r in results:
        s1 = s1b = "      -"
        sb = ""
        if r.sink is not None:
            s1b, s1 = f"{r.sink_base.sink_pct[0]:7.2f}", f"{r.sink.sink_pct[0]:7.2f}"
            if r.sink.sink_bias_pct is not None:
                sb = f"{r.sink_base.sink_bias_pct:7.2f} → {r.sink.sink_bias_pct:7.2f}"
        lines.append(f"{r.name:<{width}}{r.delta_loss:+12.4f}   {s1b} → {s1}        {sb}".rstrip())
    lines.append(f"baseline loss {results[0].loss_base:.4f} nats (mean next-token cross entropy)")
    for r in at:
        d = r.delta_loss_from_edit
        lines.append(f"{r.name}: {r.edited} sequences edited; from the edited position on Δloss "
                     + ("-" if d is None else f"{d:+.4f} (base {r.loss_from_edit_base:.4f})"))
    return "\n".join(lines)


def _file_stem(name: str) -> str:
    """An intervention's name as a plain file name (at_position names hold @, [ ], +)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _intervene_figures(results: list[Any], out: Path, label: str) -> None:
    from sinkinterp import figures

    figures.save_figure(figures.effect_bars([r.name for r in results], [r.delta_loss for r in results],
                                            title=f"loss change — {label}"), out / "effects.png")
    for r in results:
        if r.per_head is not None:
            figures.save_figure(figures.layer_head_heatmap(r.per_head, title=f"{r.name}: Δloss per head — {label}",
                                                           label="Δ loss (nats)", center=0.0),
                                out / f"per_head_{_file_stem(r.name)}.png")
        if r.per_layer is not None:
            figures.save_figure(figures.layer_head_heatmap(np.asarray(r.per_layer)[:, None],
                                                           title=f"{r.name}: Δloss per layer — {label}",
                                                           label="Δ loss (nats)", center=0.0),
                                out / f"per_layer_{_file_stem(r.name)}.png")


def cmd_patch(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from sinkinterp import inputs, patching
    from sinkinterp.cli import UsageError, input_tokens, run_config
    from sinkinterp.fileio import write_json
    from sinkinterp.loading import load_model

    tokens, text, kind = _prepare(args)
    for c in args.components:
        if c not in patching.COMPONENTS or c in ("bias_pattern", "row_weight", "pos_embed"):
            allowed = sorted(set(patching.COMPONENTS) - {"bias_pattern", "row_weight", "pos_embed"})
            raise UsageError(f"--components: got {c!r}, allowed values are {allowed}")
    if args.positions in ("first", "all"):
        positions = [0] if args.positions == "first" else None
    else:
        positions = _int_list(args.positions, "--positions")
    corrupted = None
    if args.corrupted_tokens:
        try:
            corrupted = inputs.load_token_file(args.corrupted_tokens)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--corrupted-tokens: {err}") from None
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    attn_backend=args.attn_backend, gguf_context=args.gguf_context)
    clean = torch.as_tensor(np.asarray(input_tokens(args, lm, kind, tokens, text)), dtype=torch.long)
    if corrupted is None:
        if not args.corrupt.startswith("replace_first="):
            raise UsageError(f"--corrupt: only replace_first=ID|bos|random|frequent keeps positions aligned, "
                             f"got {args.corrupt!r}")
        try:
            inter = parse_spec(args.corrupt, lm.bos_token_id)
        except ValueError as err:
            raise UsageError(f"--corrupt: {err}") from None
        gen = torch.Generator().manual_seed(args.seed)
        corrupted_t, _ = inter.token_edit.apply(clean, gen, lm.d_vocab)
    else:
        corrupted_t = torch.as_tensor(corrupted, dtype=torch.long)
        if tuple(corrupted_t.shape) != tuple(clean.shape):
            raise UsageError(f"--corrupted-tokens: shape {tuple(corrupted_t.shape)} differs from the clean "
                             f"tokens {tuple(clean.shape)}")
    metric_positions = None
    if args.metric == "last-loss":  # the prediction of the last token: logits at position T-2
        if clean.shape[1] < 2:
            raise UsageError("--metric last-loss: the inputs need at least 2 tokens")
        last = clean[:, -1:]
        metric_positions = [-2]

        def metric(logits):
            return torch.nn.functional.cross_entropy(logits[:, 0].double(), last[:, 0].to(logits.device))
        metric_name = "cross entropy of the last clean token (logits of position T-2)"
    else:
        metric = patching.loss_metric(clean)
        metric_name = "mean next-token cross entropy on the clean targets"
    started = time.perf_counter()
    results = {}
    try:
        for c in args.components:
            results[c] = patching.patch(lm.model, clean, corrupted_t, c, metric, positions=positions,
                                        by_pos=args.positions != "first", by_head=not args.per_layer,
                                        batch_rows=args.batch_rows, progress=True,
                                        metric_positions=metric_positions)
    except ValueError as err:
        raise UsageError(str(err)) from None
    config = run_config(args, argv, lm, clean)
    config.update({"inputs": "tokens" if args.tokens else kind, "corrupt": None if args.corrupted_tokens else args.corrupt,
                   "corrupted_tokens_file": args.corrupted_tokens, "components": args.components,
                   "positions": args.positions, "per_layer": args.per_layer, "metric": metric_name,
                   "seconds": round(time.perf_counter() - started, 3)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(results.values()))
    payload = {"model": args.model, "inputs": config["inputs"], "metric": config["metric"],
               "clean": first.clean, "corrupted": first.corrupted,
               "patches": {c: r.to_dict() for c, r in results.items()}}
    if not args.no_figures:
        from sinkinterp import figures

        for c, r in results.items():
            if r.values.ndim == 1:
                grid = (r.values - r.corrupted)[:, None]
            elif r.values.ndim == 2:
                grid = r.values - r.corrupted
            else:
                continue
            figures.save_figure(figures.layer_head_heatmap(
                grid, title=f"patching token 1's {c}: Δ loss vs corrupted", label="Δ loss (nats)", center=0.0),
                out / f"patch_{c}.png")
    write_json(out / "config.json", config)
    write_json(out / "results.json", payload)
    print(_patch_table(results))
    print(f"wrote {out}/results.json")
    return 0


def _patch_table(results: dict[str, Any]) -> str:
    first = next(iter(results.values()))
    span = first.clean - first.corrupted
    lines = [f"loss clean {first.clean:.4f}, corrupted {first.corrupted:.4f} nats; a cell's share is how much of the "
             "gap patching it closes",
             "component  cells   best cell (layer, ...)     loss there   share of the gap   all cells at once"]
    for c, r in results.items():
        score = (r.values - r.corrupted) / span if span else -np.abs(r.values - r.corrupted)
        flat = int(np.argmax(score))
        idx = tuple(int(i) for i in np.unravel_index(flat, r.values.shape))
        share = f"{score.flat[flat]:6.1%}" if span else "   n/a"
        together = f"{r.together:.4f} ({(r.together - r.corrupted) / span:.1%})" if span else f"{r.together:.4f}"
        lines.append(f"{c:<10} {r.values.size:5d}   {str(idx):<26} {r.values.flat[flat]:10.4f}   {share:<16}   "
                     f"{together}")
    return "\n".join(lines)
