"""The ``sinkinterp`` command line.

``sinkinterp measure``  one model, one input kind -> a result folder (config.json, results.json, figures)
``sinkinterp report``   the main job: natural / random / repeated-token inputs side by side
``sinkinterp rerun``    repeat a measurement from the config.json of its result folder
``sinkinterp intervene`` first-token interventions (sinkinterp/cli_intervene.py)
``sinkinterp patch``    activation patching of token 1's key / value / score column / residual
``sinkinterp stream``   the loss along long streams through a bounded cache (sinkinterp/cli_stream.py)
``sinkinterp lengths``  the sink at every sequence length from one pass (sinkinterp/cli_lengths.py)
``sinkinterp tokens``   sinks past the first position, pooled by token (sinkinterp/cli_tokens.py)
``sinkinterp windows``  past a sliding window: where windowed layers' attention goes without token 1
                        (sinkinterp/cli_windows.py)
``sinkinterp massive``  where the massive activation on token 1 is written, and whether the sink needs it
                        (sinkinterp/cli_massive.py)
``sinkinterp gate``     is the sink a gate? how much each head writes against its weight on the sink, and
                        the loss with the gate opened, fixed, or taken from another text (sinkinterp/cli_gate.py)
``sinkinterp paths``    what writes the sink: each component's direct path (path patching) to the sink heads'
                        keys at token 1 and to their queries (sinkinterp/cli_paths.py)

Every argument is checked before any work starts; results.json is written last and atomically,
so a failed run leaves no partial results behind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from sinkinterp import provenance
from sinkinterp.argtypes import int_at_least as _int_at_least
from sinkinterp.argtypes import open_unit_float as _eps

__all__ = ["main", "build_parser"]

#: sinkinterp.models.attention.ATTN_BACKENDS, here so that building the parser imports no torch (a test
#: checks they agree)
ATTN_BACKEND_CHOICES = ("auto", "reference", "flex", "triton")

class UsageError(Exception):
    """A bad argument: printed as one clear line, exit status 2."""


def _add_measure_args(p: argparse.ArgumentParser, *, single_input: bool, several_models: bool = False,
                      per_key: bool = True) -> None:
    """The options every measuring command shares; ``per_key=False`` leaves out --first-keys and
    --qk-heads (commands that do not make a full ``measure`` report)."""
    if several_models:
        p.add_argument("--model", nargs="+", default=["default"], metavar="MODEL",
                       help="one or more models (folders, .gguf files, built-in names); default: the "
                            "embedded trained models side by side")
    else:
        p.add_argument("--model", default="default",
                       help="Hugging Face checkpoint folder, .gguf file, sinkinterp checkpoint folder, or a "
                            "built-in name (default: the embedded default model)")
    if single_input:
        from sinkinterp.inputs import INPUT_KINDS

        src = p.add_mutually_exclusive_group()
        src.add_argument("--tokens", metavar="IDS.npy", help="integer array [N, T] of token ids, used exactly as given")
        src.add_argument("--inputs", choices=list(INPUT_KINDS),
                             help="generated inputs: natural text, uniform random ids, one id repeated, or random ids "
                                  "whose second half copies the first (copy) (default natural)")
    p.add_argument("--text", nargs="+", metavar="FILE", help="text files for natural inputs (default: shipped sample)")
    p.add_argument("--seq-len", type=_int_at_least(2), default=64, help="T, BOS included (default 64)")
    p.add_argument("--num-seqs", type=_int_at_least(1), default=100, help="N sequences (default 100)")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--prepend-bos", action="store_true", help="put the tokenizer's BOS first (default: not added)")
    p.add_argument("--eps", type=_eps, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    p.add_argument("--k-max", type=_int_at_least(1), default=None, help="report Sink_k for k = 1..K (default min(T, 10))")
    if per_key:
        p.add_argument("--first-keys", type=_int_at_least(1), default=None, metavar="K",
                       help="alpha and Sink_k only for the first K key positions; on sinkinterp models attention "
                            "then stays in the fused kernels (default: every key position)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=16)
    if per_key:
        p.add_argument("--qk-heads", default="auto",
                       help="'auto' (all heads where the model exposes its rotated queries and keys), 'all', "
                            "'none' or heads as L.H,L.H (q.k decomposition)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--attn-backend", default="auto", choices=list(ATTN_BACKEND_CHOICES),
                   help="how a sinkinterp model runs attention: auto (fused SDPA / plain path), reference "
                        "(always materialized), flex, triton (Triton kernels for sigmoid / elu+1 attention and "
                        "for the column sums the measurement reads; CUDA). Other models: auto only")
    p.add_argument("--gguf-context", type=_int_at_least(1), default=None, metavar="N",
                   help="a GGUF file's context per sequence as llama.cpp's -c (default: the file's own, as "
                        "recent llama.cpp's -c 0; older releases defaulted to 4096); it picks LongRoPE's factor "
                        "set (Phi-3.5 / Phi-4-mini)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--out", required=True, metavar="DIR", help="result folder (created; files replaced)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sinkinterp", description="Measure and explain attention sinks.",
        epilog="also: " + "; ".join(f"sinkinterp {k} ...: {v[2]}" for k, v in _DELEGATED.items()))
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure Sink_k^eps, alpha, norms and q.k on one input kind")
    _add_measure_args(m, single_input=True)
    r = sub.add_parser("report", help="natural vs random vs repeated-token inputs on one or more models (the main job)")
    _add_measure_args(r, single_input=False, several_models=True)
    r.set_defaults(out="runs/report")
    for action in r._actions:
        if action.dest == "out":
            action.required = False
    from sinkinterp import cli_intervene

    cli_intervene.add_parsers(sub, _add_measure_args)
    from sinkinterp import cli_stream

    cli_stream.add_parser(sub, _add_measure_args)
    from sinkinterp import cli_lengths

    cli_lengths.add_parser(sub, _add_measure_args)
    from sinkinterp import cli_tokens

    cli_tokens.add_parser(sub, _add_measure_args)
    from sinkinterp import cli_windows

    cli_windows.add_parser(sub, _add_measure_args)
    from sinkinterp import cli_massive

    cli_massive.add_parser(sub, _add_measure_args)
    from sinkinterp import cli_gate

    cli_gate.add_parser(sub, _add_measure_args)
    from sinkinterp import cli_paths

    cli_paths.add_parser(sub, _add_measure_args)
    rr = sub.add_parser("rerun", help="repeat a measurement from its result folder's config.json")
    rr.add_argument("result_dir", help="a folder written by `sinkinterp measure`")
    rr.add_argument("--out", help="write to this folder instead of the original one")
    return parser


def _parse_qk_heads(text: str) -> Any:
    if text in ("all", "auto", "none"):
        return text
    heads = []
    for part in text.split(","):
        try:
            l, h = part.strip().split(".")
            heads.append((int(l), int(h)))
        except ValueError:
            raise UsageError(f"--qk-heads: expected 'auto', 'all', 'none' or L.H[,L.H...], got {text!r}") from None
    return heads


def _precheck(args: argparse.Namespace, kind: str | None) -> tuple[Any, Any]:
    """Checks that need no model: files exist, arrays are well formed, k_max fits T."""
    from sinkinterp import inputs, loading

    try:
        model_kind, _ = loading.resolve_spec(args.model)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--model: {err}") from None
    try:
        loading.check_attn_backend(args.attn_backend, model_kind, args.model)
    except ValueError as err:
        raise UsageError(f"--attn-backend: {str(err).removeprefix('attn_backend: ')}") from None
    if args.gguf_context is not None and model_kind != "gguf":
        raise UsageError(f"--gguf-context: only for a GGUF file, but --model {args.model} is a {model_kind} model")
    tokens = None
    if getattr(args, "tokens", None):
        if args.prepend_bos:
            raise UsageError("--prepend-bos cannot be combined with --tokens (the array is used exactly as given)")
        try:
            tokens = inputs.load_token_file(args.tokens)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--tokens: {err}") from None
        if tokens.shape[1] < 2:
            raise UsageError(f"--tokens: seq_len (second dimension) must be at least 2, got {tokens.shape[1]}")
        if tokens.shape[0] < 1:
            raise UsageError("--tokens: the array holds no sequences")
    seq_len = tokens.shape[1] if tokens is not None else args.seq_len  # None: chosen once the model is loaded
    first_keys = getattr(args, "first_keys", None)
    if seq_len is not None and args.k_max is not None and args.k_max > seq_len:
        raise UsageError(f"--k-max: k must be <= T = {seq_len}, got {args.k_max}")
    if seq_len is not None and first_keys is not None and first_keys > seq_len:
        raise UsageError(f"--first-keys: K must be <= T = {seq_len}, got {first_keys}")
    if first_keys is not None and args.k_max is not None and args.k_max > first_keys:
        raise UsageError(f"--k-max: k must be <= --first-keys = {first_keys}, got {args.k_max}")
    text = None
    if args.text:
        if kind not in (None, "natural"):
            raise UsageError("--text only applies to --inputs natural")
        try:
            text = inputs.read_texts(args.text)
        except FileNotFoundError as err:
            raise UsageError(f"--text: {err}") from None
    qk = _parse_qk_heads(getattr(args, "qk_heads", "none"))
    return tokens, (text, qk)


def input_tokens(args: argparse.Namespace, lm: Any, kind: str | None, tokens: Any, text: str | None) -> Any:
    """The token ids of a run: the --tokens array, or generated inputs of ``kind``; checked against
    the model's vocabulary."""
    from sinkinterp import inputs
    from sinkinterp.measure import validate_tokens

    if tokens is None:
        try:
            tokens = inputs.make_tokens(kind, seq_len=args.seq_len, num_seqs=args.num_seqs, seed=args.seed,
                                        vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, text=text,
                                        prepend_bos=args.prepend_bos, bos_token_id=lm.bos_token_id)
        except ValueError as err:
            raise UsageError(f"--inputs {kind}: {err}") from None
    try:
        validate_tokens(tokens, lm.d_vocab)
    except ValueError as err:
        raise UsageError(f"--tokens: {err}") from None
    return tokens


def model_and_tokens(args: argparse.Namespace, kind: str | None, tokens: Any, text: str | None) -> tuple[Any, Any]:
    """Load --model and make the run's token ids (``input_tokens``), refusing a --seq-len past the
    model's n_ctx for generated inputs (single-input commands that need no other model-specific check)."""
    from sinkinterp import tl_adapter
    from sinkinterp.loading import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, attn_backend=args.attn_backend,
                    gguf_context=args.gguf_context)
    n_ctx = tl_adapter.model_dims(lm.model)["n_ctx"]
    if tokens is None and n_ctx and args.seq_len > n_ctx:
        raise UsageError(f"--seq-len: T must be <= the model's n_ctx={n_ctx}, got {args.seq_len}")
    return lm, input_tokens(args, lm, kind, tokens, text)


def finish_study(args: argparse.Namespace, lm: Any, tokens: Any, config: dict[str, Any], results: dict[str, Any],
                 figure: tuple[str, Any], summary: str) -> int:
    """The end shared by the single-model study commands (``massive``, ``gate``): the run's fields added to
    ``results``, the figure ``figure = (file name, make(model name, results, title label))`` unless
    --no-figures, config.json, then results.json last (atomically: a failed run leaves none), the summary."""
    from sinkinterp import figures
    from sinkinterp.fileio import write_json

    results.update({"model": args.model, "inputs": config["inputs"], "prepend_bos": bool(args.prepend_bos),
                    "dtype": lm.info.get("dtype"), "eps": args.eps, "num_seqs": int(tokens.shape[0]),
                    "seq_len": int(tokens.shape[1])})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures:
        label = f"{Path(args.model).name} · {config['inputs']} · N={tokens.shape[0]}, T={tokens.shape[1]}"
        name, make = figure
        figures.save_figure(make(Path(args.model).name, results, label), out / name)
    write_json(out / "config.json", config)
    write_json(out / "results.json", results)  # last: the run completed
    print(summary)
    print(f"wrote {out}/results.json")
    return 0


def run_config(args: argparse.Namespace, argv: list[str], lm: Any, tokens: Any) -> dict[str, Any]:
    """What every result folder's config.json records about the run."""
    import numpy as np

    return {
        "command": "sinkinterp " + " ".join(shlex.quote(a) for a in argv),
        "argv": argv,
        "model": args.model,
        "model_info": lm.info,
        "tokens_file": getattr(args, "tokens", None),
        "tokens_sha256": hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest(),
        "text_files": args.text,
        "seq_len": int(tokens.shape[1]),
        "num_seqs": int(tokens.shape[0]),
        "seed": args.seed,
        "prepend_bos": bool(args.prepend_bos),
        "eps": args.eps,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _measure_one(args: argparse.Namespace, lm: Any, kind: str | None, tokens: Any, text: str | None,
                 qk: Any, out: Path, argv: list[str]) -> dict[str, Any]:
    from sinkinterp import figures
    from sinkinterp.fileio import write_json
    from sinkinterp.measure import measure

    tokens = input_tokens(args, lm, kind, tokens, text)
    started = time.perf_counter()
    try:
        report = measure(lm.model, tokens, eps=args.eps, k_max=args.k_max, batch_size=args.batch_size,
                         qk_heads=qk, first_keys=args.first_keys, progress=True)
    except ValueError as err:
        raise UsageError(str(err)) from None
    elapsed = time.perf_counter() - started
    config = run_config(args, argv, lm, tokens)
    config.update({
        "inputs": "tokens" if getattr(args, "tokens", None) else kind,
        "k_max": report.k_max,
        "first_keys": report.first_keys,
        "qk_heads": args.qk_heads,
        "seconds": round(elapsed, 3),
    })
    results = report.to_dict()
    results["inputs"] = config["inputs"]
    results["model"] = args.model
    # every result carries what shapes norms and sinks: BOS policy, dtype, weight processing
    results["prepend_bos"] = config["prepend_bos"]
    results["dtype"] = lm.info.get("dtype")
    results["weight_processing"] = lm.info.get("weight_processing")
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_figures:
        label = f"{Path(args.model).name} · {config['inputs']} · T={report.seq_len} · N={report.num_seqs}"
        figures.save_figure(figures.alpha_heatmap(report.alpha, title=f"alpha_1 — {label}", eps=args.eps),
                            out / "alpha_heatmap.png")
        if report.norms is not None:
            figures.save_figure(figures.norms_figure(report.norms, title=label), out / "norms.png")
        figures.save_figure(figures.sink_by_position(report.sink_pct_by_key, args.eps, title=label),
                            out / "sink_by_position.png")
        figures.save_figure(figures.first_token_by_query(report.attn1_by_query, title=label),
                            out / "first_token_by_query.png")
        if report.qk is not None:  # angle vs norm, per layer (and k*, the position bias where there are)
            figures.save_figure(figures.qk_figure(report.qk, title=f"q.k = |q| |k| cos — {label}"), out / "qk.png")
    write_json(out / "config.json", config)
    write_json(out / "results.json", results)  # last: its presence means the run completed
    return results


def _summary_line(name: str, res: dict[str, Any]) -> str:
    sink = res["sink_pct"]
    bias = res["sink_bias_pct"]
    ratio = max(res["norms"]["resid"]["massive_ratio"]) if res.get("norms") else float("nan")
    s2 = f"{sink[1]:7.2f}" if len(sink) > 1 else "    n/a"
    sb = f"{bias:7.2f}" if bias is not None else "      -"
    return f"{name:<10} {sink[0]:7.2f} {s2} {sb}   {ratio:9.1f}"


def cmd_measure(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp.loading import load_model

    kind = None if args.tokens else (args.inputs or "natural")
    tokens, (text, qk) = _precheck(args, kind)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, attn_backend=args.attn_backend,
                    gguf_context=args.gguf_context)
    if lm.info.get("bos_first") and not args.prepend_bos and tokens is None:
        print(f"note: {args.model} was trained with BOS first in every window; add --prepend-bos to measure it "
              "that way (`sinkinterp report` does)", file=sys.stderr)
    res = _measure_one(args, lm, kind, tokens, text, qk, Path(args.out), argv)
    print("input      Sink_1  Sink_2  Sink_*   max ||h1||/mean||ht||")
    print(_summary_line(res["inputs"], res))
    print(f"wrote {args.out}/results.json")
    return 0


def _report_labels(specs: list[str]) -> list[str]:
    """Short unique names for the report's rows and folders: the last path component, or as many
    trailing components as it takes to tell the models apart (checkpoints of different runs are all
    called step_NNNNNNN)."""
    for depth in range(1, 1 + max(len(Path(s).parts) for s in specs)):
        labels = ["-".join(Path(s).parts[-depth:]) for s in specs]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}-{Path(s).name}" for i, s in enumerate(specs)]


def _report_models(specs: list[str]) -> list[str]:
    from sinkinterp import builtin

    out: list[str] = []
    for spec in specs:
        for name in (builtin.default_models() if spec == builtin.DEFAULT_MODEL else [spec]):
            if name not in out:
                out.append(name)
    return out


def cmd_report(args: argparse.Namespace, argv: list[str]) -> int:
    import copy

    from sinkinterp.fileio import atomic_write
    from sinkinterp.loading import load_model

    args.tokens = None
    specs = _report_models(args.model)
    several = len(specs) > 1
    checked = []
    for spec in specs:  # every spec is checked before anything runs
        one = copy.copy(args)
        one.model = spec
        checked.append((one, _precheck(one, None)[1]))
    out = Path(args.out)
    notes, rows = [], []
    for label, (one, (text, qk)) in zip(_report_labels(specs), checked):
        lm = load_model(one.model, device=args.device, dtype=args.dtype, attn_backend=args.attn_backend,
                        gguf_context=args.gguf_context)
        # a model trained with BOS first in every window is measured the same way
        bos_by_model = bool(lm.info.get("bos_first")) and not args.prepend_bos
        one.prepend_bos = args.prepend_bos or bos_by_model
        m_out = out / label if several else out
        kinds = ["natural", "random", "repeat"] if lm.tokenizer is not None else ["random", "repeat"]
        where = lm.info.get("builtin") or lm.info.get("location")
        note = f"{one.model} ({where}): " + ("BOS prepended" + (" (trained with BOS first)" if bos_by_model else "")
                                             if one.prepend_bos else "no BOS")
        if lm.info.get("note"):
            note += f"; {lm.info['note']}"
        notes.append(note)
        for kind in kinds:
            sub_argv = ["measure", "--model", one.model, "--inputs", kind, "--seq-len", str(args.seq_len),
                        "--num-seqs", str(args.num_seqs), "--seed", str(args.seed), "--eps", str(args.eps),
                        "--out", str(m_out / kind)] + (["--prepend-bos"] if one.prepend_bos else [])
            res = _measure_one(one, lm, kind, None, text if kind == "natural" else None, qk, m_out / kind, sub_argv)
            rows.append((label, kind, res, m_out / kind))
    width = max(12, *(len(r[0]) for r in rows))
    lines = [f"sinkinterp report — T={args.seq_len}, N={args.num_seqs}, eps={args.eps}, dtype {args.dtype}", ""]
    lines += [f"model {n}" for n in notes]
    lines += ["", f"{'model':<{width}} input      Sink_1  Sink_2  Sink_*   max ||h1||/mean||ht||"]
    lines += [f"{name:<{width}} {_summary_line(kind, res)}" for name, kind, res, _ in rows]
    lines += ["", "Sink_k in % of heads with alpha_k > eps (per sequence, then averaged); Sink_* on the bias slot.",
              f"per-input folders: {', '.join(str(r[3]) for r in rows)}"]
    text_out = "\n".join(lines) + "\n"
    atomic_write(out / "report.txt", lambda f: f.write(text_out.encode()))
    print(text_out, end="")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    cfg_path = Path(args.result_dir) / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"result_dir: no config.json in {args.result_dir}")
    argv = list(json.loads(cfg_path.read_text())["argv"])
    if args.out:
        i = argv.index("--out")
        argv[i + 1] = args.out
    return main(argv)


# Subcommands owned by other layers of the package, dispatched before argparse sees them.
_DELEGATED = {
    "data": ("sinkinterp.data.cli", "main", "build tokenizers, token shards and compressed packs"),
    "train": ("sinkinterp.train.cli", "train_main", "pre-train a sinkinterp model from a JSON config"),
    "sweep": ("sinkinterp.train.cli", "sweep_main", "run a list of training configs and collect a table"),
}


def main(argv: list[str] | None = None) -> int:
    provenance.git_commit()  # read HEAD now: a run records the commit it started from, not one made while it ran
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        module, func, _ = _DELEGATED[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "measure":
            return cmd_measure(args, argv)
        if args.command == "report":
            return cmd_report(args, argv)
        if args.command == "rerun":
            return cmd_rerun(args)
        if args.command in ("intervene", "patch"):
            from sinkinterp import cli_intervene

            return getattr(cli_intervene, f"cmd_{args.command}")(args, argv)
        if args.command == "stream":
            from sinkinterp import cli_stream

            return cli_stream.cmd_stream(args, argv)
        if args.command == "lengths":
            from sinkinterp import cli_lengths

            return cli_lengths.cmd_lengths(args, argv)
        if args.command == "tokens":
            from sinkinterp import cli_tokens

            return cli_tokens.cmd_tokens(args, argv)
        if args.command == "windows":
            from sinkinterp import cli_windows

            return cli_windows.cmd_windows(args, argv)
        if args.command == "massive":
            from sinkinterp import cli_massive

            return cli_massive.cmd_massive(args, argv)
        if args.command == "gate":
            from sinkinterp import cli_gate

            return cli_gate.cmd_gate(args, argv)
        if args.command == "paths":
            from sinkinterp import cli_paths

            return cli_paths.cmd_paths(args, argv)
    except UsageError as err:
        print(f"sinkinterp {args.command}: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
