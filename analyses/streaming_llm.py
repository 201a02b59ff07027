"""Analysis: StreamingLLM past the training length on the shipped toy models -- read 256-token
streams (4x the training length) through a bounded cache, and ask which models need their first
token kept, and whether re-numbered positions matter.

Runs ``sinkinterp stream`` (sinkinterp.streaming) on toy-softmax (sink on BOS), toy-kv-bias (sink on
the learned k*/v* slot) and toy-sigmoid (no sink) with natural text, BOS first as the models were
trained: a rolling cache of the last W tokens alone, plus BOS (W+1), plus the first four (W+4), plus
BOS at its stream distance (W+1,original: rotary keys not re-numbered), and sliding windows with
re-computation (W+4,recompute and the full training context, 64,recompute). Writes
runs/analyses/streaming_llm/, docs/streaming-llm.md and docs/figures/streaming-llm-*.png. A few
minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "streaming-llm.md"
FIGS = ROOT / "docs" / "figures"
OUT = Path("runs") / "analyses" / "streaming_llm"  # relative to the repository root
COMMON = ["--inputs", "natural", "--seq-len", "256", "--num-seqs", "16", "--seed", "0", "--prepend-bos",
          "--batch-size", "8"]
WINDOWS = (8, 32)
MODELS = ("toy-softmax", "toy-kv-bias", "toy-sigmoid")


def specs(model: str) -> list[str]:
    out = []
    for w in WINDOWS:
        out += [f"{w}", f"{w}+1", f"{w}+4"]
        if model != "toy-kv-bias":  # k* is not rotated: stream distances are not defined for it
            out.append(f"{w}+1,original")
        out.append(f"{w}+4,recompute")
    return out + ["64,recompute"]


def main() -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import enter_checkout, finish_page

    if not enter_checkout("streaming_llm", MODELS):
        return 2
    from sinkinterp import cli, figures

    res, cmds = {}, {}
    for model in MODELS:
        args = ["stream", "--model", model, *COMMON, "--cache", *specs(model), "--out", str(OUT / model)]
        cmds[model] = "sinkinterp " + " ".join(args)
        print(f"-- {cmds[model]}")
        code = cli.main(args)
        if code:
            return code
        res[model] = {r["name"]: r for r in json.loads((OUT / model / "results.json").read_text())["settings"]}
        FIGS.mkdir(parents=True, exist_ok=True)
        figures.copy_figure(OUT / model / "stream_loss.png", FIGS / f"streaming-llm-{model}.png")
    cfg = json.loads((OUT / MODELS[0] / "config.json").read_text())
    n_ctx = cfg["n_ctx"]

    def past(model: str, name: str) -> float | None:
        r = res[model].get(name)
        return None if r is None else r["mean_nll_past"]

    def cell(model: str, name: str) -> str:
        v = past(model, name)
        return "n/a" if v is None else f"{v:.3f}"

    def first(model: str, name: str) -> str:
        a = res[model][name]["first_attention"]
        return f"{sum(map(sum, a)) / sum(map(len, a)):.3f}"

    names = [n for n in res[MODELS[0]]]
    table = ["| cache | " + " | ".join(MODELS) + " |", "| --- |" + " ---: |" * len(MODELS)]
    for n in names:
        table.append(f"| `{n}` | " + " | ".join(cell(m, n) for m in MODELS) + " |")
    att = ["| cache | " + " | ".join(MODELS) + " |", "| --- |" + " ---: |" * len(MODELS)]
    for n in names:
        if res[MODELS[0]][n]["first_attention"] is not None:
            att.append(f"| `{n}` | " + " | ".join(first(m, n) if n in res[m] else "n/a" for m in MODELS) + " |")

    def delta(model: str, a: str, b: str) -> str:
        return f"{past(model, a) - past(model, b):+.3f}"

    findings = []
    for w in WINDOWS:
        findings.append(
            f"- W = {w}: keeping BOS beside a rolling window changes the loss past the training length by "
            + ", ".join(f"{m} {delta(m, f'{w}+1', f'{w}')}" for m in MODELS)
            + "; BOS at its stream distance instead of its cache position (`+1,original`): "
            + ", ".join(f"{m} {delta(m, f'{w}+1,original', f'{w}+1')}" for m in MODELS if m != "toy-kv-bias")
            + f". The rolling cache against re-computation (`{w}+4` - `{w}+4,recompute`): "
            + ", ".join(f"{m} {delta(m, f'{w}+4', f'{w}+4,recompute')}" for m in MODELS) + ".")
    w0 = WINDOWS[0]
    ceiling = f"{n_ctx},recompute"

    def won_back(model: str, w: int) -> str:
        gap = past(model, f"{w}") - past(model, f"{w}+4,recompute")
        return f"{(past(model, f'{w}') - past(model, f'{w}+1')) / gap:.0%}" if gap > 0 else "n/a (no gap)"

    reading = [
        "",
        "How to read it:",
        "",
        f"- No blow-up at this scale. A plain rolling window of {w0} costs toy-softmax "
        f"{delta('toy-softmax', f'{w0}', ceiling)} nats over the full training context re-computed at every "
        f"position (`{ceiling}`), not the perplexity explosion StreamingLLM reports for billion-parameter models",
        "  once the first tokens leave the cache: this model's sink is weaker (Sink_1 18% at eps 0.3,",
        "  docs/toy-models.md) and it has four layers.",
        f"- Keeping BOS wins back {won_back('toy-softmax', w0)} of toy-softmax's gap between the plain window and "
        f"re-computation with four kept tokens at W = {w0} ({won_back('toy-softmax', WINDOWS[-1])} at W = "
        f"{WINDOWS[-1]}), and the model keeps using BOS as its sink past the training length: "
        f"{first('toy-softmax', f'{w0}+1')} of every head's weight on it, on average, against "
        f"{first('toy-softmax', f'{w0}')} on the oldest entry of a plain window -- StreamingLLM's attention sink.",
        f"- toy-kv-bias needs no kept token ({delta('toy-kv-bias', f'{w0}+1', f'{w0}')} nats for BOS at W = {w0}): its "
        "sink is the k*/v* slot, which every cache holds -- StreamingLLM's own proposal of a learnable sink,",
        "  and the paper's finding that a key bias frees the model from its first token, seen from the cache side.",
        f"- Re-numbering matters a little and only when the window is short: at W = {w0} BOS at its stream distance "
        f"(up to 255, past training) costs toy-softmax {delta('toy-softmax', f'{w0}+1,original', f'{w0}+1')} nats against "
        f"its cache position and draws less attention ({first('toy-softmax', f'{w0}+1,original')} against "
        f"{first('toy-softmax', f'{w0}+1')}); at W = {WINDOWS[-1]} the difference is "
        f"{delta('toy-softmax', f'{WINDOWS[-1]}+1,original', f'{WINDOWS[-1]}+1')}.",
        f"- A rolling cache is as good as re-computation for the softmax models (`+4` against `+4,recompute`: "
        f"{delta('toy-softmax', f'{w0}+4', f'{w0}+4,recompute')} and {delta('toy-kv-bias', f'{w0}+4', f'{w0}+4,recompute')} "
        f"at W = {w0}), although its cached states were computed with contexts the stream has since forgotten.",
        f"- toy-sigmoid has no sink, yet it gains most from BOS ({delta('toy-sigmoid', f'{w0}+1', f'{w0}')} at W = {w0}) "
        "and loses most to a rolling cache: its rows are not normalized, so the output scale follows the",
        "  number and content of the visible keys (docs/streaming-window.md saw the same inside the training",
        "  length). What it takes from BOS is not a sink's share of attention (it puts "
        f"{first('toy-sigmoid', f'{w0}+1')} of its weight there).",
    ]
    lines = [
        "# StreamingLLM past the training length on the shipped toy models",
        "",
        "Generated by `analyses/streaming_llm.py` (run `.venv/bin/python analyses/regenerate.py streaming_llm`).",
        "Models: `toy-softmax` (its sink is BOS), `toy-kv-bias` (its sink is the learned k*/v* slot) and",
        f"`toy-sigmoid` (unnormalized sigmoid, no sink) -- sinkinterp/assets/README.md --, trained at T = {n_ctx},",
        "float32, CPU. Inputs: the shipped natural-text sample, 16 streams of 256 tokens (4x the training",
        f"length) with BOS first, seed 0. Versions: {cfg['versions']}; git {cfg['git_commit']}; {cfg['date']}.",
        "",
        "Each stream is read one token at a time through `sinkinterp.streaming.stream_loss` (its docstring",
        "defines the policies; tests/test_streaming.py checks them against a full forward, the masked",
        "scores of `interventions.window_cache` and explicit contexts). A cache `W+K` holds the first K",
        "tokens of the stream and the last W (the query included). Rolling (StreamingLLM): each token's",
        "keys and values are computed once, when it is read, and positions are re-numbered inside the",
        "cache, so no position past W + K - 1 is ever seen. `,original`: the same cache, but the kept",
        "tokens keep their stream distance to the query (rotary keys are not re-numbered; up to 255,",
        f"beyond the {n_ctx} positions of training). `,recompute`: every prediction re-reads its context from",
        f"scratch (sliding window with re-computation); `{n_ctx},recompute` is the full training context at",
        "every position, the ceiling of a bounded cache.",
        "",
        f"Mean next-token loss (nats) over the targets at stream positions {n_ctx}..255, past the training",
        "length (lower is better):",
        "",
        *table,
        "",
        "Attention on the kept first tokens (on the oldest cache entry for `W` alone), mean over layers,",
        "heads and the steps whose cache is full (rolling caches only):",
        "",
        *att,
        "",
        *findings,
        *reading,
        "",
        "Figures (loss along the stream, 8-token bins, the training length dashed):",
        "",
        *[f"![{m}](figures/streaming-llm-{m}.png)" for m in MODELS],
        "",
    ]
    return finish_page(DOC, lines, cmds.values())


if __name__ == "__main__":
    sys.exit(main())
