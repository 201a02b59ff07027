"""Analysis: the shipped toy models measured like the paper measures pretrained ones (issue 5).

Runs ``sinkinterp report --model default`` (toy-softmax, toy-kv-bias, toy-sigmoid; natural, random
and repeated-token inputs; T = 64, N = 100, eps 0.3, BOS first as the models were trained) and
writes docs/toy-models.md with Sink_k, the massive-activation ratio, the q.k = |q||k|cos
decomposition per head (is the sink made by the angle or by the norms, as the paper asks of
LLaMA3-8B?), value norms, and the per-head alpha maps. About 30 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "toy-models.md"
FIGS = ROOT / "docs" / "figures"
OUT = Path("runs") / "analyses" / "toy_models"  # relative to the repository root
MODELS = ("toy-softmax", "toy-kv-bias", "toy-sigmoid")
KINDS = ("natural", "random", "repeat")
ARGS = ["report", "--model", "default", "--seq-len", "64", "--num-seqs", "100", "--eps", "0.3", "--seed", "0"]


def _head_rows(r: dict) -> list[str]:
    """Per head: sink rate on token 1 (or k*), alpha, the q.k factors and the value norms."""
    qk, norms = r["qk"], r["norms"]
    rate, alpha = np.array(r["head_sink_rate"]), np.array(r["alpha"])
    bias = None if r.get("alpha_bias") is None else np.array(r["alpha_bias"])
    vf, vr = np.array(norms["value"]["first"]), np.array(norms["value"]["rest"])
    out = []
    for i, (l, h) in enumerate(qk["heads"]):
        star = "-" if bias is None else f"{bias[l, h]:.2f}"
        kstar = (f"{qk['cos_q_kstar'][i]:+.2f} / {qk['kstar_norm'][i]:.2f}" if "cos_q_kstar" in qk else "-")
        out.append(f"| L{l}H{h} | {rate[l, h]:.0f} | {alpha[l, h]:.2f} | {star} | {qk['cos_q_k1'][i]:+.2f} | "
                   f"{qk['cos_q_krest'][i]:+.2f} | {kstar} | {qk['k1_norm'][i]:.2f} / {qk['k_rest_norm'][i]:.2f} | "
                   f"{qk['q_norm'][i]:.2f} | {vf[l, h]:.2f} / {vr[l, h]:.2f} |")
    return out


def _kstar_finding(r: dict, eps: float) -> str:
    """Is the learned k* attended by the angle or by its length? The heads that put more than eps
    on the slot (mean alpha_*), against every real key."""
    qk = r["qk"]
    alpha_bias = np.array(r["alpha_bias"])
    idx = [i for i, (l, h) in enumerate(qk["heads"]) if alpha_bias[l, h] > eps]
    if not idx:
        return f"- **toy-kv-bias: no head puts more than {eps} on k* on average.**"
    cos_star, cos_1, cos_r = (np.array(qk[k])[idx] for k in ("cos_q_kstar", "cos_q_k1", "cos_q_krest"))
    ratio = np.array(qk["kstar_norm"])[idx] / np.array(qk["k_rest_norm"])[idx]
    gap = (np.array(qk["logit_q_kstar"]) - np.array(qk["logit_q_krest"]))[idx]
    return (f"- **toy-kv-bias: the queries point at k*, which is shorter than the real keys.** In the {len(idx)} heads "
            f"with mean alpha_* above {eps}, cos(q_t, k*) is {cos_star.min():+.2f} to {cos_star.max():+.2f} (mean "
            f"{cos_star.mean():+.2f}) while the queries point away from token 1 ({cos_1.mean():+.2f}) and from the "
            f"other keys ({cos_r.mean():+.2f}); ||k*|| is {ratio.min():.2f}x to {ratio.max():.2f}x the real keys' "
            f"mean norm, so the logit gap in k*'s favour ({gap.min():+.2f} to {gap.max():+.2f}) comes from the "
            "angle, as token 1's does in toy-softmax: the learned key took over the first token's mechanism, "
            "not a larger norm (`cos_q_kstar`, `kstar_norm` of `measure`).")


BINS = ((1, 2), (2, 5), (5, 17), (17, 33), (33, 64))  # query positions [a, b): the query at p sees p keys


def _arg(name: str) -> int:
    return int(ARGS[ARGS.index(name) + 1])


def _loss_by_position() -> dict[str, np.ndarray]:
    """Mean next-token loss at every query position of the report's natural-text sequences (ARGS'
    T, N and seed; BOS first), per shipped model: entry p - 1 is the query at token p (token 1 = BOS)
    predicting token p + 1 from tokens 1..p."""
    import torch
    import torch.nn.functional as F

    from sinkinterp.inputs import make_tokens
    from sinkinterp.loading import load_model

    out = {}
    for m in MODELS:
        lm = load_model(m)
        tokens = torch.as_tensor(np.asarray(make_tokens(
            "natural", seq_len=_arg("--seq-len"), num_seqs=_arg("--num-seqs"), seed=_arg("--seed"),
            vocab_size=lm.d_vocab, tokenizer=lm.tokenizer,
            prepend_bos=True, bos_token_id=lm.bos_token_id))).long()
        with torch.no_grad():
            logits = lm.model.eval()(tokens).float()
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        out[m] = loss.mean(0).numpy()  # [63]
    return out


def _loss_section(loss: dict[str, np.ndarray]) -> tuple[list[str], str]:
    from sinkinterp.figures import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    pos = np.arange(1, len(loss[MODELS[0]]) + 1)
    for m in MODELS:
        axes[0].plot(pos, loss[m], label=m, lw=1)
    axes[1].plot(pos, loss["toy-sigmoid"] - loss["toy-softmax"], color="C2", lw=1, label="toy-sigmoid - toy-softmax")
    axes[1].plot(pos, loss["toy-kv-bias"] - loss["toy-softmax"], color="C1", lw=1, label="toy-kv-bias - toy-softmax")
    axes[1].axhline(0, color="k", lw=0.5)
    for ax, title in zip(axes, ("loss by position (nats)", "difference to toy-softmax (nats)")):
        ax.set_title(title)
        ax.set_xlabel("keys visible to the query (position)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, FIGS / "toy-models-loss-by-position.png", palette=True)

    def binned(x: np.ndarray, a: int, b: int) -> float:
        return float(x[a - 1:b - 1].mean())

    head = " | ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in BINS)
    lines = ["| model | mean | " + head + " |", "| --- | ---: | " + " | ".join("---:" for _ in BINS) + " |"]
    for m in MODELS:
        lines.append(f"| {m} | {loss[m].mean():.3f} | " + " | ".join(f"{binned(loss[m], a, b):.3f}" for a, b in BINS) + " |")
    gap = loss["toy-sigmoid"] - loss["toy-softmax"]
    lines.append("| toy-sigmoid - toy-softmax | " + f"{gap.mean():+.3f} | "
                 + " | ".join(f"{binned(gap, a, b):+.3f}" for a, b in BINS) + " |")
    finding = (f"- **toy-sigmoid's loss gap grows with the number of keys.** On the report sequences it is "
               f"{binned(gap, *BINS[0]):+.3f} nats at the first prediction (made at BOS, which sees only "
               f"itself), {binned(gap, *BINS[1]):+.3f} with 2-4 keys and {binned(gap, *BINS[-1]):+.3f} with "
               "33-63: unnormalized sigmoid weights with b = 0 sum to about t / 2 over t keys at initialization, "
               "so the attention output's scale grows with position. The same recipe with b = -log n (which "
               "keeps the expected row sum near one; `c_siglognbos` in docs/cpu-calibration.md) reaches a "
               "validation loss of 3.970, below softmax's 4.008: the bias, not sigmoid, made the gap.")
    return lines, finding


def main() -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import enter_checkout

    if not enter_checkout("toy_models", MODELS):
        return 2
    from sinkinterp import cli
    from sinkinterp.fileio import write_bytes

    args = [*ARGS, "--out", str(OUT)]
    code = cli.main(args)
    if code:
        return code
    res = {m: {k: json.loads((OUT / m / k / "results.json").read_text()) for k in KINDS} for m in MODELS}
    cfg = json.loads((OUT / MODELS[0] / "natural" / "config.json").read_text())
    FIGS.mkdir(parents=True, exist_ok=True)
    from sinkinterp import figures

    for m in MODELS:
        for name in ("alpha_heatmap.png", "norms.png", "qk.png"):
            figures.copy_figure(OUT / m / "natural" / name, FIGS / f"toy-models-{m}-{name}")
        if res[m]["natural"].get("alpha_bias") is not None:  # where the slot took the sink
            figures.save_figure(figures.layer_head_heatmap(res[m]["natural"]["alpha_bias"],
                                                           title=f"alpha_* (k*) — {m} · natural", label="alpha_*"),
                                FIGS / f"toy-models-{m}-alpha_bias.png", palette=True)

    table = ["| model | input | Sink_1 (%) | Sink_2 (%) | Sink_* (%) | max ||h_1|| / mean ||h_t|| | "
             "mean cos(q_t, k_1) / cos(q_t, k_s) | mean ||k_1|| / ||k_s|| |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in MODELS:
        for k in KINDS:
            r = res[m][k]
            qk = r["qk"]
            star = "-" if r["sink_bias_pct"] is None else f"{r['sink_bias_pct']:.2f}"
            table.append(f"| {m} | {k} | {r['sink_pct'][0]:.2f} | {r['sink_pct'][1]:.2f} | {star} | "
                         f"{max(r['norms']['resid']['massive_ratio']):.1f} | "
                         f"{np.mean(qk['cos_q_k1']):+.2f} / {np.mean(qk['cos_q_krest']):+.2f} | "
                         f"{np.mean(qk['k1_norm']):.2f} / {np.mean(qk['k_rest_norm']):.2f} |")

    soft = res["toy-softmax"]["natural"]
    qk = soft["qk"]
    rate = np.array(soft["head_sink_rate"])
    idx = [i for i, (l, h) in enumerate(qk["heads"]) if rate[l, h] > 50]
    others = [i for i in range(len(qk["heads"])) if i not in idx]
    cos1 = np.array(qk["cos_q_k1"])
    cosr = np.array(qk["cos_q_krest"])
    k1 = np.array(qk["k1_norm"])
    kr = np.array(qk["k_rest_norm"])
    vf, vr = np.array(soft["norms"]["value"]["first"]), np.array(soft["norms"]["value"]["rest"])
    sink_heads = ", ".join(f"L{qk['heads'][i][0]}H{qk['heads'][i][1]}" for i in idx)
    findings = []
    if idx:
        gap = cos1 - cosr
        ratios = k1[idx] / kr[idx]
        v_ratio = float(np.mean([vf[tuple(qk["heads"][i])] / vr[tuple(qk["heads"][i])] for i in idx]))
        findings.append(
            f"- **toy-softmax: the queries point at k_1; the key's length does not decide.** cos(q_t, k_1) "
            f"exceeds cos(q_t, k_s) in {int((gap > 0).sum())} of {len(gap)} heads (mean gap {gap.mean():+.2f}); in "
            f"the sink heads ({sink_heads}: token 1 above eps in more than half the sequences) by "
            f"{gap[idx].mean():+.2f}, while ||k_1|| / ||k_s|| there goes either way ({ratios.min():.2f}x to "
            f"{ratios.max():.2f}x). The angle is the common factor, as the paper found in LLaMA3-8B; which "
            f"heads cross eps also depends on ||q|| and on the other keys. Token 1's value is {v_ratio:.2f}x "
            "the others' in the sink heads: a key bias stores attention mass, not content.")
    kv = res["toy-kv-bias"]["natural"]
    sig = res["toy-sigmoid"]["natural"]
    findings += [
        f"- **toy-kv-bias: the slot takes the sink.** Sink_* {kv['sink_bias_pct']:.1f}% "
        f"with Sink_1 {kv['sink_pct'][0]:.2f}% (alpha_* per head below; the paper: 72.76 / 0.04 at 60M).",
        _kstar_finding(kv, float(ARGS[ARGS.index("--eps") + 1])),
        f"- **toy-sigmoid: no sink on any input** (Sink_1 {sig['sink_pct'][0]:.2f} / "
        f"{res['toy-sigmoid']['random']['sink_pct'][0]:.2f} / {res['toy-sigmoid']['repeat']['sink_pct'][0]:.2f}%; "
        "the paper: 0.44 at 60M). Its alpha values are unnormalized sigmoid weights, so eps 0.3 is a "
        "statement about one key's weight alone, not about a share of the row.",
        "- **Repeated tokens:** unlike the paper's RoPE models (0% on one repeated token) toy-softmax "
        f"still sinks ({res['toy-softmax']['repeat']['sink_pct'][0]:.1f}%), because the BOS these models "
        "were trained with stays first and differs from the repeated token; on pretrained SmolLM2 without "
        "BOS it is 0% (docs/pretrained-baseline.md).",
    ]
    loss_lines, loss_finding = _loss_section(_loss_by_position())
    findings.append(loss_finding)
    cmd = "sinkinterp " + " ".join(args)
    lines = [
        "# The shipped toy models, measured",
        "",
        "Generated by `analyses/toy_models.py` (run `.venv/bin/python analyses/regenerate.py toy_models`).",
        f"Command: `{cmd}` (the README's main command with fixed settings). Models: `toy-softmax`,",
        "`toy-kv-bias`, `toy-sigmoid` (4 layers x 128, 6,000 CPU steps, sinkinterp/assets/README.md), float32,",
        "CPU; BOS first, as they were trained; natural = the shipped sample text, random = uniform token ids,",
        "repeat = one random token repeated after BOS; T = 64, N = 100, eps 0.3, seed 0.",
        f"Versions: {cfg['versions']}; git {cfg['git_commit']}; {cfg['date']}.",
        "",
        "## Findings",
        "",
        *findings,
        "",
        "## Sink_k, massive activation and the q.k factors",
        "",
        "cos and key norms are means over all 16 heads (keys after rotary; k_s: every key after the first,",
        "averaged over queries).",
        "",
        *table,
        "",
    ]
    lines += [
        "## Loss by position",
        "",
        "Mean next-token loss (nats) on the same natural-text sequences (BOS first, T 64, N 100), by query",
        "position p = the number of keys the query sees (p = 1: BOS predicting the first text token);",
        "`_loss_by_position` in the script:",
        "",
        *loss_lines,
        "",
        "![loss by position](figures/toy-models-loss-by-position.png)",
        "",
    ]
    for m in MODELS:
        lines += [
            f"## {m}: per head (natural text)",
            "",
            "| head | sink rate on token 1 (%) | alpha_1 | alpha_* | cos(q, k_1) | cos(q, k_s) | cos(q, k*) / ||k*|| | "
            "||k_1|| / ||k_s|| | ||q|| | ||v_1|| / ||v_s|| |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *_head_rows(res[m]["natural"]),
            "",
            f"![alpha_1 per head, {m}](figures/toy-models-{m}-alpha_heatmap.png)",
            "",
            *([f"![alpha_* per head, {m}](figures/toy-models-{m}-alpha_bias.png)", ""]
              if res[m]["natural"].get("alpha_bias") is not None else []),
            f"![norms, {m}](figures/toy-models-{m}-norms.png)",
            "",
            f"![q.k decomposition per layer, {m}](figures/toy-models-{m}-qk.png)",
            "",
        ]
    print(f"wrote {write_bytes(DOC, chr(10).join(lines).encode())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
