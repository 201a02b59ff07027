"""Analysis: where a sink head's weight goes when its gate opens. For every head, the weight it puts on
keys besides the sink, split by what the key is to its query (token 1 where the sink is the bias slot,
the query itself, the token before it, an induction target: the key right after an earlier occurrence of
the query's token, an earlier occurrence of that token, or another key) and by distance; which kind of
key is the query's best match, and how open the gate is then against its position's mean
(``sinkinterp gate``'s ``targets``). Then the induction test: the same models on uniform random ids and on
random ids whose second half copies the first (``--inputs copy``), where every query of the second half
has an induction target: do the heads that read induction targets open their gate when there is one? A third
test does the same on each model's own text: its own-domain windows against the same windows with their
second half replaced by a copy of their first (``--inputs copy-natural`` for SmolLM2; for the Debian-trained
models the held-out windows so copied, analyses/data/gate_targets/*_copied.npy, made once by ``_copied_file``).

The models are those of analyses/sink_gate.py (the shipped toy models, their second seeds, the toy gated
model, the GPU models and SmolLM2, each where it is here), each on its own domain (the Debian-trained
models on the 32 held-out windows of analyses/data/sink_gate, with BOS first where trained so; SmolLM2 on
120 windows of the shipped English sample) and on 64 sequences of random and of copied random ids (T = 64,
seed 0, and a replicate at T = 128, seed 1; BOS first for the models trained with it), measured only
(`sinkinterp gate --no-interventions`); the closing test (``_close``) runs through the Python API.
The per-head results are kept in analyses/data/gate_targets/KEY.json, so the page regenerates from them
where a model is missing here. Writes docs/gate-targets.md and docs/figures/gate-targets.png. About
20 minutes on a 2-core CPU with every model present (SmolLM2's closing tests, each induction head also held
alone, about 10 of them); ``--only NAME ...`` runs those models alone (the
others from their snapshots; ``NAME__INPUTS`` runs one run of a model, and its pair's closing test),
``--snapshots`` runs none.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "gate-targets.md"
FIG = ROOT / "docs" / "figures" / "gate-targets.png"
DATA = ROOT / "analyses" / "data" / "gate_targets"
OUT = Path("runs") / "analyses" / "gate_targets"  # relative to the repository root
SEQ_LEN, NUM_SEQS, NATURAL_SEQS, SEED = 64, 64, 120, 0
REPLICATE = (128, 1)  # the induction test's replicate: T (at most the model's context length) and seed
# each pair of random and copied ids is one induction test: the first at SEQ_LEN and SEED, then the replicate;
# then the model's own text (None: its own-domain run) against the same windows with their second half copied
PAIRS = (("", "random", "copy"), ("_r", "random_r", "copy_r"), ("_t", None, "copy_text"))
GENERATED = ("random", "copy", "random_r", "copy_r")


def _generated(inputs: str, n_ctx: int | None) -> tuple[str, int, int]:
    """(kind, T, seed) of a generated input of the induction test, for a model of context length ``n_ctx``."""
    kind, _, rep = inputs.partition("_")
    return (kind, min(REPLICATE[0], n_ctx or REPLICATE[0]), REPLICATE[1]) if rep else (kind, SEQ_LEN, SEED)


def _n_ctx(spec: str) -> int | None:
    """A sinkinterp checkpoint's context length (from its config.json); None for other models."""
    from sinkinterp import loading

    kind, location = loading.resolve_spec(spec)
    if kind != "sinkinterp":
        return None
    return json.loads((Path(location) / "config.json").read_text())["model_config"].get("n_ctx")
SINK_HEAD = 0.3  # a head with mean sink weight above this on its own domain is a sink head here
INDUCTION = 0.3  # a head that puts at least this share of its weight off the sink on induction targets, on copied ids
NAMES = {"first": "token 1", "self": "itself", "previous": "the token before", "induction": "induction target",
         "duplicate": "earlier copy of its token", "other": "other"}
BEST = {"first": "token 1", "self": "the query itself", "previous": "the token before", "induction": "an induction target",
        "duplicate": "an earlier copy of the query's token", "other": "another key"}


def _models() -> tuple[dict, Path, Path]:
    """sink_gate's models (name -> (spec or None for SmolLM2, BOS first?, ...)) and its held-out windows."""
    import sink_gate

    return sink_gate.MODELS, sink_gate.TOKENS, sink_gate.TOKENS_BOS


def _inputs(spec: str | None) -> tuple[str, ...]:
    return ("natural" if spec is None else "debian", *GENERATED, "copy_text")


def _copied_file(path: Path, bos: bool) -> Path:
    """The held-out windows of ``path`` with their second half (after BOS, where first) a copy of their first:
    analyses/data/gate_targets/STEM_copied.npy, made once (``inputs.copy_first_half``) and committed."""
    import numpy as np

    from sinkinterp.fileio import atomic_write
    from sinkinterp.inputs import copy_first_half

    out = DATA / f"{path.stem}_copied.npy"
    if not out.is_file():
        ids = copy_first_half(np.load(path), int(bos))
        atomic_write(out, lambda f: np.save(f, ids))
    return out


def _pair_label(res: dict) -> str:
    return f"T {res['seq_len']}, seed {res.get('seed')}"


def _label(key: str) -> str:
    name, _, inputs = key.partition("__")
    return f"{name}, " + {"debian": "Debian held-out", "natural": "English sample",
                          "random": "random ids", "copy": "random ids, second half copied",
                          "random_r": "random ids, replicate", "copy_r": "random ids, second half copied, replicate",
                          "copy_text": "own text, second half copied"}.get(inputs, inputs)


def _rounded(x: object, digits: int) -> object:
    """``x`` with every float rounded to ``digits`` decimals (NaN as None): the snapshots stay small."""
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, digits)
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    return x


def _snapshot(res: dict, config: dict) -> dict:
    """What the page needs of a run: per head the sink weight, the targets (without the per-head best-key
    rates and distances, which it does not show), the gate by position (m; the effective gate g too where
    the attention does not normalize) and the drivers' repeat difference, rounded; the command and provenance."""
    keep = ("sink", "slot", "normalized", "weights_from_row_weight", "sink_mass", "sink_share", "num_seqs", "seq_len",
            "prepend_bos")
    out = {k: res.get(k) for k in keep}
    out["targets"] = {k: v for k, v in res["targets"].items() if k not in ("top_rate", "top_distance")}
    out["mass_pos"] = res["mass_pos"]
    if not res["normalized"]:
        out["gate_pos"] = res["gate_pos"]
    out["repeat_diff"] = (res.get("drivers") or {}).get("repeat_diff")
    out = _rounded(out, 6)
    for k in ("command", "versions", "git_commit", "tokens_sha256"):
        out[k] = config.get(k)
    return out


def _run(key: str, spec: str, inputs: str, bos: bool, commands: list[str], gguf: str | None) -> dict:
    from _common import run_cli, write_snapshot

    from sinkinterp import cli

    _, tokens, tokens_bos = _models()
    out = OUT / key
    seed = SEED
    if inputs in ("debian", "copy_text") and gguf is None:
        path = tokens_bos if bos else tokens
        path = _copied_file(path, bos) if inputs == "copy_text" else path
        source = ["--tokens", str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)]
    elif inputs == "copy_text":  # SmolLM2: the windows of its own-domain run ("natural"), second half copied
        source = ["--inputs", "copy-natural", "--seq-len", str(SEQ_LEN), "--num-seqs", str(NATURAL_SEQS), "--seed",
                  str(SEED), *(["--prepend-bos"] if bos else [])]
    else:
        kind, T, seed = _generated(inputs, _n_ctx(spec)) if inputs in GENERATED else (inputs, SEQ_LEN, SEED)
        n = NATURAL_SEQS if inputs == "natural" else NUM_SEQS
        source = ["--inputs", kind, "--seq-len", str(T), "--num-seqs", str(n), "--seed", str(seed),
                  *(["--prepend-bos"] if bos else [])]
    args = ["gate", "--model", spec, *source, "--no-interventions", "--token-heads", "0", "--no-figures",
            "--out", str(out)]
    res = run_cli(cli, args, commands, gguf)
    snap = _snapshot(res, json.loads((out / "config.json").read_text()))
    snap["seed"] = seed
    if inputs.startswith("copy"):  # the first copied position: after BOS where the model has it first, also in a file
        snap["copy_start"] = int(bos) + (snap["seq_len"] - int(bos) + 1) // 2
    write_snapshot(DATA / f"{key}.json", snap)
    return snap


def _alone(dom_key: str) -> dict | None:
    """The per-head loss changes of opening and of fixing one head's gate alone ({"open": [L][H], "fixed":
    [L][H]}) from analyses/sink_gate.py's snapshot of the same model in its own domain (32 sequences), where
    it has them; None otherwise."""
    import sink_gate

    path = sink_gate.DATA / f"{dom_key}.json"
    if not path.is_file():
        return None
    runs = {x["label"]: x for x in json.loads(path.read_text()).get("interventions", [])}
    if not all(runs.get(k, {}).get("per_head_delta_loss") for k in ("open", "fixed")):
        return None
    return {k: runs[k]["per_head_delta_loss"] for k in ("open", "fixed")}


def _copy_start(res: dict) -> int:
    """The first query position (0-based) whose token copies an earlier one in a copied run (``copy_start``; in
    a snapshot from before it, from ``--prepend-bos``, as ``--inputs copy`` places it)."""
    if res.get("copy_start") is not None:
        return int(res["copy_start"])
    bos = int(bool(res["prepend_bos"]))
    return bos + (res["seq_len"] - bos + 1) // 2


def _induction_heads(copy: dict) -> list[tuple[int, int]]:
    import numpy as np

    share = np.asarray(copy["targets"]["share"], dtype=np.float64)[..., copy["targets"]["categories"].index("induction")]
    return sorted((lh for lh in np.ndindex(*share.shape) if share[lh] >= INDUCTION), key=lambda lh: -share[lh])


def _weighted(res: dict) -> bool:
    """Whether m in ``res`` is a weight: normalized attention, or attention that does not normalize measured
    through hook_row_weight (runs before it have m as a share of the row and the effective gate g in its place)."""
    return bool(res["normalized"] or res.get("weights_from_row_weight"))


def _half_means(res: dict, start: int) -> tuple:
    """Per head [L, H]: the mean gate over the queries 1..start-1 and start..T-1 (NaN-aware), and the gate
    by position: m, the weight off the sink, or in a run where m is a share of the row's weight (attention
    that does not normalize, measured without hook_row_weight) the effective gate g, which carries the row's
    total weight."""
    import warnings

    import numpy as np

    m = np.asarray([[[np.nan if x is None else x for x in row] for row in layer]
                    for layer in res["mass_pos" if _weighted(res) else "gate_pos"]], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(m[..., 1:start], -1), np.nanmean(m[..., start:], -1), m


def _controls(heads: list, a, sinks: bool = True) -> list:
    """For each induction head, the head that is not an induction head with the closest value of ``a`` ([L, H]),
    each used once: the control set of the closing test. ``sinks``: only sink heads (a > SINK_HEAD: ``a`` is the
    sink share in the model's own domain); otherwise every other head (``a``: the weight off the sink, for
    attention that does not normalize)."""
    import numpy as np

    pool = [lh for lh in np.ndindex(*a.shape) if (a[lh] > SINK_HEAD or not sinks) and lh not in heads
            and np.isfinite(a[lh])]
    out = []
    for lh in heads:
        if not pool:
            break
        best = min(pool, key=lambda x, lh=lh: abs(a[x] - a[lh]))
        out.append(best)
        pool.remove(best)
    return out


def _copied_ids(kind: str, lm, cpy: dict, bos: bool, seed: int):
    """The ids ``cpy`` was measured on, made again: random ids copied (``copy``, ``copy_r``), or the model's own
    text copied (``copy_text``: SmolLM2's English windows, or the committed copied Debian windows)."""
    import numpy as np

    from sinkinterp import inputs

    if kind != "copy_text":
        return inputs.make_tokens("copy", seq_len=cpy["seq_len"], num_seqs=cpy["num_seqs"], seed=seed,
                                  vocab_size=lm.d_vocab, prepend_bos=bos, bos_token_id=lm.bos_token_id)
    if lm.tokenizer is not None and "--inputs copy-natural" in (cpy.get("command") or ""):
        return inputs.make_tokens("copy-natural", seq_len=cpy["seq_len"], num_seqs=cpy["num_seqs"], seed=seed,
                                  vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, prepend_bos=bos,
                                  bos_token_id=lm.bos_token_id)
    _, tokens, tokens_bos = _models()
    return np.load(_copied_file(tokens_bos if bos else tokens, bos))


def _close(name: str, spec: str, bos: bool, heads: list, controls: list, rnd: dict, cpy: dict, seed: int,
           kind: str = "copy") -> dict:
    """The closing test on ``cpy``'s copied ids (``kind``: its inputs; made again, checked against its token
    hash): the loss on the copied half's predictable targets (from the second copied token on) with the gate
    of ``heads``, then of ``controls``, held on the copied half at its mean by position on the same positions
    without the copy (``rnd``: random ids, or the unrepeated text: what the head does with nothing to copy),
    the other keys scaled together and the sink taking the rest (``gate.fixed_gate`` with NaN, left alone,
    everywhere else); then each induction head held alone (``alone``: [layer, head, Δ loss])."""
    import hashlib

    import numpy as np
    import torch

    from sinkinterp import gate, loading, provenance
    from sinkinterp import interventions as iv

    lm = loading.load_model(spec)
    toks = _copied_ids(kind, lm, cpy, bos, seed)
    sha = hashlib.sha256(np.ascontiguousarray(toks, dtype=np.int64).tobytes()).hexdigest()
    if cpy.get("tokens_sha256") and sha != cpy["tokens_sha256"]:
        raise SystemExit(f"gate_targets: {name}: the copied ids made again differ from the measured run's")
    start = _copy_start(cpy)
    _, _, m_r = _half_means(rnd, start)
    out = {"heads": [list(map(int, lh)) for lh in heads], "controls": [list(map(int, lh)) for lh in controls],
           "normalized": bool(cpy["normalized"]), "start": start, "target_start": start + 1,
           "num_seqs": int(toks.shape[0]), "seq_len": int(toks.shape[1]), "seed": seed, "tokens_sha256": sha,
           "git_commit": provenance.git_commit(), "versions": provenance.versions()}
    toks = torch.as_tensor(toks)
    base = iv.baseline(lm.model, toks, sinks=False)

    def held(which: list) -> Any:
        table = np.full(m_r.shape, np.nan)
        for l, h in which:
            table[l, h, start:] = m_r[l, h, start:]
        return iv.run_intervention(lm.model, toks, gate.fixed_gate(table, sink=cpy["sink"],
                                                                   normalized=bool(cpy["normalized"])),
                                   target_start=start + 1, sinks=False, base=base)

    for label, which in (("induction", heads), ("control", controls)):
        res = held(which)
        out[label] = {"loss_base": res.loss_base, "loss": res.loss, "delta_loss": res.delta_loss}
    out["alone"] = [[int(l), int(h), held([(l, h)]).delta_loss] for l, h in heads] if len(heads) > 1 else []
    return out


def _alone_text(done: dict) -> str:
    """A closing test's heads held one at a time: their summed Δ loss and the costliest three ("-" without)."""
    alone = done.get("alone") or []
    if not alone:
        return "-"
    top = sorted(alone, key=lambda x: -x[2])[:3]
    return f"{sum(x[2] for x in alone):+.3f} (" + ", ".join(f"L{l}H{h} {d:+.3f}" for l, h, d in top) + ")"


def _alone_reading(joint: float, alone: list) -> str:
    """The heads held together against one at a time, in words (empty without per-head runs)."""
    if not alone or joint <= 0.05:
        return ""
    total = sum(x[2] for x in alone)
    worst = max(alone, key=lambda x: x[2])
    how = ("more than the sum of each held alone: they stand in for one another, so closing one leaves the others "
           "to copy" if joint > 1.25 * total else "less than the sum of each held alone" if joint < 0.8 * total
           else "about the sum of each held alone")
    return (f" Together they cost {how} ({total:+.3f}; the costliest, L{worst[0]}H{worst[1]}, {worst[2]:+.3f} "
            f"alone, {max(worst[2], 0) / joint:.0%} of the joint cost).")


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    if str(ROOT / "analyses") not in sys.path:
        sys.path.insert(0, str(ROOT / "analyses"))
    models, _, _ = _models()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    keys = [f"{n}__{i}" for n, (spec, *_) in models.items() for i in _inputs(spec)]
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(models) + keys,
                        help=("run only these models, or runs by their key NAME__INPUTS (and the closing test of a "
                              "copied run's pair); the others come from their snapshots "
                              f"({', '.join(models)})"))
    parser.add_argument("--snapshots", action="store_true", help="run no model: render the page from the snapshots")
    args = parser.parse_args(argv or [])
    from _common import SMOLLM2_ARG, enter_checkout, finish_page, write_snapshot

    enter_checkout("gate_targets", [])
    import numpy as np

    from sinkinterp import builtin, figures, gate, loading

    commands: list[str] = []
    results: dict[str, dict] = {}
    present_of: dict[str, str | None] = {}  # name -> the spec to load, when the model is here and is to run
    ran: set[str] = set()  # the runs made now (their pair's closing test runs again)
    for name, (spec, bos, *_rest) in models.items():
        gguf = loading.smollm2_gguf_path() if spec is None else None
        present = (gguf is not None) if spec is None else (spec in builtin.shipped_models() or Path(spec).is_dir())
        run_it = present and not args.snapshots and (args.only is None or name in args.only)
        runs_of = {i for i in _inputs(spec)
                   if run_it or (present and not args.snapshots and f"{name}__{i}" in args.only)}
        present_of[name] = (gguf if spec is None else spec) if runs_of else None
        for inputs in _inputs(spec):
            key = f"{name}__{inputs}"
            if inputs in runs_of:
                if inputs == "debian":
                    import sink_gate

                    sink_gate._debian_tokens()
                results[key] = _run(key, gguf if spec is None else spec, inputs, bos, commands, gguf)
                ran.add(key)
            elif (DATA / f"{key}.json").is_file():
                results[key] = json.loads((DATA / f"{key}.json").read_text())
                at = f" at commit {results[key]['git_commit'][:7]}" if results[key].get("git_commit") else ""
                commands.append(results[key]["command"].replace(str(loading.smollm2_gguf_path() or "\0"), SMOLLM2_ARG)
                                + f"  (from analyses/data/gate_targets/{key}.json: "
                                + (f"an earlier run of this script{at})" if present else f"the model is not here; run{at})"))
            else:
                why = "not run (--only / --snapshots)" if present else "model not here"
                print(f"gate_targets: {key}: {why} and no snapshot; left out")
    if not results:
        print("gate_targets: no model to run", file=sys.stderr)
        return 1
    domain = {k: r for k, r in results.items() if k.partition("__")[2] in ("debian", "natural")}
    cats = list(gate.TARGETS)

    share_rows = ["| model | heads (a >= 0.1) | " + " | ".join(NAMES[c] for c in cats) + " |",
                  "| --- | ---: |" + " ---: |" * len(cats)]
    best_rows = ["| model | " + " | ".join(NAMES[c] for c in cats) + " |", "| --- |" + " --- |" * len(cats)]
    bins = max((r["targets"]["distance_bins"] for r in domain.values()), key=len, default=[])
    dist_rows = ["| model | " + " | ".join(bins) + " |", "| --- |" + " ---: |" * len(bins)]
    pooled_of = {}
    for key, res in domain.items():
        free = bool(res.get("weights_from_row_weight"))  # no sink: every head has a gate, its row's weight
        p = gate.pooled_targets(res, list(np.ndindex(*gate.sink_share(res).shape)) if free else None)
        if p is None:
            continue
        p["every_head"] = free
        pooled_of[key] = p
        share_rows.append(f"| {_label(key)} | {p['heads']}{' (every head: no sink)' if free else ''} | " + " | ".join(
            f"{_pct(p['share'][c])} ({_pct(p['uniform'][c])})" for c in cats) + " |")
        best_rows.append(f"| {_label(key)} | " + " | ".join(
            "-" if p["top_rate"][c] == 0 else f"{_pct(p['top_rate'][c])}, {p['open_by_top'][c]:+.3f}" for c in cats) + " |")
        dist_rows.append(f"| {_label(key)} | " + " | ".join(_pct(p["distance_share"].get(b)) for b in bins) + " |")

    copy_rows = [("| model | induction heads (>= 30% of the weight off the sink on induction targets, copied ids) | of them "
                  "sink heads in their own domain (a > 0.3) | their a in their own domain | their m on the copied half: "
                  "without the copy -> copied | m's change on the copied half (median head) | on the first half (the "
                  "control: the same ids) | all sink heads: m's change on the copied half (median) |"),
                 "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    head_rows = [("| model | head | a, own domain | on induction targets, own domain | on induction targets, copied "
                  "ids | m on the copied half: random -> copied | m's change on the first half | m on repeated "
                  "minus new query tokens, own domain | Δ loss on its own domain, this head's gate opened / fixed "
                  "alone (docs/sink-gate.md) |"), "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    closing: dict[tuple, tuple] = {}  # (model, test) whose induction heads get the closing test
    curves: dict[str, tuple] = {}
    copy_notes: list[tuple] = []
    none: list[str] = []  # the models measured on copied ids without an induction head
    close_notes: list[tuple] = []
    lost: list[str] = []  # replicates without an induction head where the first test had some
    alone_notes: list[tuple] = []  # per-head gate edits on the model's own domain, from sink_gate's snapshot
    for name, suffix, rnd_key, cpy_key in ((n, *p) for n in models for p in PAIRS):
        dom_key = next((k for k in domain if k.startswith(f"{name}__")), None)
        rnd = results.get(f"{name}__{rnd_key}") if rnd_key else domain.get(dom_key)  # None: the own text
        cpy = results.get(f"{name}__{cpy_key}")
        if dom_key is None or rnd is None or cpy is None:
            continue
        dom = domain[dom_key]
        start = _copy_start(cpy)
        first_r, second_r, m_r = _half_means(rnd, start)
        first_c, second_c, m_c = _half_means(cpy, start)
        heads = _induction_heads(cpy)
        a = gate.sink_share(dom)
        ind = cats.index("induction")
        share_dom = np.asarray(dom["targets"]["share"], dtype=np.float64)[..., ind]
        share_cpy = np.asarray(cpy["targets"]["share"], dtype=np.float64)[..., ind]
        sinks = [lh for lh in np.ndindex(*a.shape) if a[lh] > SINK_HEAD]
        all_sink = f"{np.nanmedian([second_c[lh] - second_r[lh] for lh in sinks]):+.3f}" if sinks else "-"
        shown = {"": name, "_r": f"{name}, replicate at {_pair_label(cpy)}",
                 "_t": f"{name}, its own text copied"}[suffix] + (
            "" if cpy["normalized"] else " (not normalized: m is the row's weight off the sink)" if _weighted(cpy)
            else " (not normalized: the gate g in place of m)")
        if heads:
            idx = tuple(np.asarray(heads).T)
            n_sink = sum(a[lh] > SINK_HEAD for lh in heads)
            copy_rows.append(
                f"| {shown} | {len(heads)} | {n_sink} | {np.min(a[idx]):.2f} to {np.max(a[idx]):.2f} (median "
                f"{np.median(a[idx]):.2f}) | {np.median(second_r[idx]):.2f} -> {np.median(second_c[idx]):.2f} | "
                f"{np.median(second_c[idx] - second_r[idx]):+.3f} | {np.median(first_c[idx] - first_r[idx]):+.3f} | "
                f"{all_sink} |")
            if not suffix:  # the figure and the per-head table: the first test only
                curves[name if _weighted(cpy) else f"{name} (g)"] = (
                    np.arange(1, m_c.shape[-1]), np.nanmean(m_r[idx][:, 1:], 0), np.nanmean(m_c[idx][:, 1:], 0), start)
            rep = dom.get("repeat_diff")
            alone = _alone(dom_key)
            if alone and not suffix:
                worst = max(heads, key=lambda lh, o=alone["open"]: o[lh[0]][lh[1]])
                alone_notes.append((name, len(heads), max(abs(alone["fixed"][l][h]) for l, h in heads),
                                    f"L{worst[0]}H{worst[1]}", alone["open"][worst[0]][worst[1]]))
            for l, h in heads[:8] if not suffix else []:
                head_rows.append(
                    f"| {shown} | L{l}H{h} | {a[l, h]:.3f} | {_pct(share_dom[l, h])} | {_pct(share_cpy[l, h])} | "
                    f"{second_r[l, h]:.2f} -> {second_c[l, h]:.2f} | {first_c[l, h] - first_r[l, h]:+.3f} | "
                    + ("-" if rep is None or rep[l][h] is None else f"{rep[l][h]:+.3f}")
                    + (f" | {alone['open'][l][h]:+.3f} / {alone['fixed'][l][h]:+.4f} |" if alone else " | - |"))
            if _weighted(cpy):  # softmax: controls among the sink heads; otherwise the heads of closest weight
                controls = _controls(heads, a) if cpy["normalized"] else _controls(heads, second_r, sinks=False)
                load = present_of[name] if f"{name}__{cpy_key}" in ran else None
                closing[(name, suffix)] = (shown, models[name][1], heads, controls, rnd, cpy, load, cpy.get("seed", SEED),
                                          cpy_key)
            copy_notes.append((shown, bool(cpy["normalized"]), suffix, len(heads), n_sink, float(np.median(a[idx])),
                               float(np.median(second_c[idx] - second_r[idx])),
                               float(np.median(first_c[idx] - first_r[idx]))))
        else:
            best = float(np.nanmax(share_cpy)) if np.isfinite(share_cpy).any() else float("nan")
            if not suffix:
                none.append(name)
            elif name not in none:  # a replicate that loses the first test's induction heads
                lost.append(f"{shown} (largest share {_pct(best)})")
            copy_rows.append(f"| {shown} | 0 (largest share {_pct(best)}) | - | - | - | - | - | {all_sink} |")

    close_rows = [("| model | induction heads held | Δ loss on the copied half, their gate held at its level without the "
                   "copy | "
                   "each induction head held alone: Δ loss summed over them (the costliest three) | "
                   "control heads held so (other sink heads of closest sink weight; without normalization, other heads "
                   "of closest weight off the sink; as many as there are, up to the same number) | their "
                   "Δ loss | loss on the copied half, unedited | where it comes from |"),
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for (model, suffix), (name, bos, heads, controls, rnd, cpy, load, seed, kind) in closing.items():
        path = DATA / f"{model}__closing{suffix}.json"
        if load is not None:
            print(f"-- closing test on {name}: {len(heads)} induction heads, {len(controls)} controls")
            done = _close(name, load, bos, heads, controls, rnd, cpy, seed, kind)
            write_snapshot(path, done)
            where = "run now"
        elif path.is_file():
            done = json.loads(path.read_text())
            where = f"snapshot at commit {(done.get('git_commit') or '?')[:7]}"
        else:
            continue
        close_rows.append(f"| {name} | {len(done['heads'])} | {done['induction']['delta_loss']:+.3f} | "
                          f"{_alone_text(done)} | {len(done['controls'])} | "
                          + (f"{done['control']['delta_loss']:+.3f}" if done["controls"] else "-") + " | "
                          f"{done['induction']['loss_base']:.3f} | "
                          f"`analyses/gate_targets.py` (`_close`), {where}: analyses/data/gate_targets/{path.name} |")
        close_notes.append((name, done))

    shown = {_label(k): r for k, r in domain.items() if k in pooled_of}
    if shown:
        figures.save_figure(figures.targets_figure(shown, curves,
                                                   title="where the weight off the sink goes (T = 64)"), FIG,
                            palette=True)

    lines = [
        "# Where the gate opens to",
        "",
        "Generated by `analyses/gate_targets.py` (run `.venv/bin/python analyses/regenerate.py gate_targets`); the",
        "command behind each run is listed at the end. CPU, float32. Each model on its own domain at T = 64 (the",
        "Debian-trained models on the 32 held-out windows that docs/sink-gate.md uses, with BOS first for the",
        "models trained so; SmolLM2 on 120 windows of the shipped English sample) and on 64 sequences of uniform",
        "random ids and of random ids whose second half copies the first (`--inputs copy`): T = 64, seed 0, and",
        "a replicate at T = 128, seed 1.",
        "",
        "## The question",
        "",
        "[docs/sink-gate.md](sink-gate.md) found that a sink head's gate opens when one key before the query",
        "matches it well (the best-matching key's logit carries most of the log-odds on the sink), not because",
        "the query turns from the sink. Which key? `sinkinterp gate` sorts each key besides the sink, for",
        "its query, into the first of these that fits: **token 1** (only where the sink is the bias slot k*:",
        "where token 1 is the sink it is left out), the query **itself**, **the token before** it, an",
        "**induction target** (the key right after an earlier occurrence of the query's token: what an induction",
        "head reads), an **earlier copy** of the query's token, or **other**. Per head it sums the weight off",
        "the sink by category and by distance, finds each query's best key besides the sink, and compares the",
        "gate (m, the weight off the sink) on those queries with its position's mean. The bracketed shares are",
        "what spreading the weight evenly over the causal keys besides the sink would give.",
        "",
        "## Results",
        "",
        ("![left: where the weight off the sink goes, by key category; middle: by distance; right: the induction "
         "heads' weight off the sink by position on random and on copied ids](figures/gate-targets.png)"),
        "",
        "Where the weight off the sink goes, over the heads with a >= 0.1 in each model's own domain (pooled:",
        "each head weighs in with its weight off the sink; evenly spread in brackets):",
        "",
        *(share_rows if len(share_rows) > 2 else ["(no such heads in these results)"]),
        "",
        "The query's best key besides the sink: the share of queries whose best key is of each kind, and the mean",
        "of m minus its position's mean on those queries (positive: the gate is more open than usual at that",
        "position when the head's best match is of this kind):",
        "",
        *(best_rows if len(best_rows) > 2 else ["(no such heads in these results)"]),
        "",
        "The weight off the sink by the key's distance from the query, t - j (same heads, pooled):",
        "",
        *(dist_rows if len(dist_rows) > 2 else ["(no such heads in these results)"]),
        "",
        "## The induction test",
        "",
        "On random ids whose second half copies the first, every query of the second half has an induction",
        "target and a head that copies can open its gate there; on uniform random ids at the same positions it",
        "has none. An induction head here is one that puts at least 30% of its weight off the sink on induction",
        "targets on the copied ids. m's change on the copied half is, per head, the mean over those positions of",
        "m on copied ids minus m on random ids (the first half, where the two inputs are alike, is the control).",
        (f"The replicate (T {REPLICATE[0]} where the model's context allows it, else its context length; seed "
         f"{REPLICATE[1]}) selects its induction heads on its own copied ids. The third test is on real text: each "
         "model's own-domain windows (SmolLM2's English windows, `--inputs copy-natural`; the Debian held-out "
         "windows, analyses/data/gate_targets/*_copied.npy) with their second half replaced by a copy of their "
         "first, against the same windows unrepeated (random ids -> copied reads: unrepeated text -> copied)."),
        "",
        *copy_rows,
        "",
        "The induction heads (at most eight per model, by their share on induction targets on copied ids):",
        "",
        *(head_rows if len(head_rows) > 2 else ["(no induction heads in these results)"]),
        "",
        "Does copying need the gate to open? On the same copied ids, each induction head's weight off the sink",
        "on the copied half is held at its mean by position on random ids, or on the unrepeated text for the",
        "third test (what the head does with nothing to copy: `gate.fixed_gate`, the other keys scaled together",
        "and the sink taking the rest; every other head and",
        "position left alone), and the loss is scored on the predictable targets (from the second copied token",
        "on). The control holds other sink heads (a > 0.3 in the model's own domain), for each induction head the",
        "not yet chosen non-induction sink head closest in sink weight (fewer where the model has fewer), at their",
        "level without the copy the same way. Where attention does not normalize (sigmoid), m is the row's weight off",
        "the sink (`hook_row_weight`): it is held the same way, but the sink keeps its weight, so the row's total",
        "changes, and the control holds, for each induction head, the other head with the closest weight off the",
        "sink on the copied half without the copy.",
        "",
        *(close_rows if len(close_rows) > 2 else ["(no closing test in these results)"]),
        "",
        "## Reading",
        "",
        *_reading(pooled_of, copy_notes, none, close_notes, lost),
        *[f"- **{name}** on its own domain (docs/sink-gate.md, one head at a time, 32 sequences of 64): fixing the "
          f"gate of one of its {_heads(n)} to its mean by position costs at most {fixed:.4f} nats in absolute value, "
          f"opening one costs up to {opened:+.3f} ({head})"
          + (": there a shut gate matters, its variation hardly." if fixed < 0.01 and opened > 10 * fixed else ".")
          for name, n, fixed, head, opened in alone_notes],
        "",
        "## Limits",
        "",
        "- The categories are exclusive and ordered: a key that is both the token before and an induction target",
        "  counts as the token before. 'Other' holds everything else, semantic matches included.",
        "- The best key is the one with the most weight besides the sink; a head that spreads its weight has a",
        "  best key that means little (see the evenly spread shares).",
        "- The gate's deviation by best key is a correlation within positions, not an intervention.",
        "- Random ids are out of every model's domain; the toy and GPU models never saw copied text of this kind",
        "  (the Debian corpus repeats lines and words, not 32-token stretches of random ids).",
        "",
    ]
    return finish_page(DOC, lines, commands)


def _heads(n: int) -> str:
    return f"{n} induction head{'s' if n != 1 else ''}"


def _reading(pooled_of: dict, copy_notes: list, none: list, close_notes: list, lost: list) -> list[str]:
    """The plain-language reading, from the numbers (nothing here is fixed text about a result)."""
    out = []
    for key, p in pooled_of.items():
        ratios = {c: p["share"][c] / p["uniform"][c] for c in p["share"] if p["uniform"][c] > 0}
        over = sorted(ratios, key=lambda c: -ratios[c])[:2]
        gate_best = max((c for c in p["open_by_top"] if p["top_rate"][c] >= 0.02), key=lambda c: p["open_by_top"][c],
                        default=None)
        line = (f"- **{_label(key)}**: over its {p['heads']} head{'s' if p['heads'] != 1 else ''}"
                + (" (every head: no sink)" if p.get("every_head") else " with a >= 0.1") + ", the "
                "weight off the sink lands most above an even spread on " + " and ".join(f"{NAMES[c]} ({_pct(p['share'][c])} against "
                                                           f"{_pct(p['uniform'][c])})" for c in over))
        if gate_best is not None:
            line += (f"; the gate is most open, against its position's mean, when the best key is {BEST[gate_best]} "
                     f"({p['open_by_top'][gate_best]:+.3f}, {_pct(p['top_rate'][gate_best])} of queries)")
        out.append(line + ".")
    for name, _, _, n, n_sink, a_med, d_copy, d_first in copy_notes:
        verb = "opens" if d_copy > 0.02 else "closes" if d_copy < -0.02 else "hardly moves"
        out.append(f"- **{name}**: {_heads(n)}, of which {n_sink} "
                   f"{'is a sink head' if n_sink == 1 else 'are sink heads'} in its own domain (median a "
                   f"{a_med:.2f}). On the copied half their gate {verb} ({d_copy:+.3f} in the median head, against "
                   f"{d_first:+.3f} on the first half, where the inputs do not differ).")
    soft = [x for x in copy_notes if x[1] and x[2] == ""]  # the first test of each softmax model
    if soft:
        n, n_sink = sum(x[3] for x in soft), sum(x[4] for x in soft)
        opened = sum(x[6] > 0.02 for x in soft)
        again = [x for x in copy_notes if x[1] and x[2] == "_r"]
        out.append(f"- Over the softmax models with induction heads, {n_sink} of {n} induction heads are sink heads in "
                   f"their own domain, and in {opened} of {len(soft)} models their gate opens on the copied half "
                   + (f"({sum(x[6] > 0.02 for x in again)} of {len(again)} in the replicates)" if again else "") + ": "
                   + ("a head that copies sits on the sink until the text offers something to copy (compare the "
                      "active and dormant heads of Guo et al., 2024)." if n_sink > n / 2 and opened == len(soft)
                      else "the sink and copying do not line up in every model here."))
    text = [x for x in copy_notes if x[2] == "_t"]
    if text:
        opened = [x for x in text if x[6] > 0.02]
        out.append(f"- **On the models' own text** with its second half copied (the unrepeated windows the control), "
                   f"{len(text)} model{'s' if len(text) != 1 else ''} have induction heads, and their gate opens on "
                   f"the copied half in {len(opened)} of them: the test does not need random ids.")
    for name, _, _, n, _, _, d_copy, _ in (x for x in copy_notes if not x[1] and x[2] == ""):
        out.append(f"- **{name}** has no sink to park on: its induction head{'s' if n != 1 else ''} "
                   + ("open" if n != 1 else "opens") + f" the row's total weight instead ({d_copy:+.3f} in the median "
                   "head), the gate sigmoid attention has without a sink.")
    if not copy_notes:
        out.append("- No model here has an induction head by this test.")
    if copy_notes and none:
        out.append(f"- No induction head by this test in {', '.join(none)}.")
    if lost:
        out.append(f"- Later tests (the replicate, the model's own text copied) that find no induction head at the "
                   f"{INDUCTION:.0%} floor where the first test found some: {', '.join(lost)}.")
    for name, done in close_notes:
        ind, ctl = done["induction"]["delta_loss"], done["control"]["delta_loss"]
        kind = "sink head" if done.get("normalized", True) else "head"
        out.append(f"- **{name}**, closing test: holding the gate of its {_heads(len(done['heads']))} at the "
                   f"level without the copy on the copied half costs {ind:+.3f} nats there (loss "
                   f"{done['induction']['loss_base']:.3f} -> {done['induction']['loss']:.3f}), "
                   + (f"{len(done['controls'])} other {kind}{'s' if len(done['controls']) != 1 else ''} {ctl:+.3f}: "
                      if done["controls"] else f"(no other {kind} to compare): ")
                   + ("copying needs the induction heads' gate open." if ind > max(0.05, 3 * abs(ctl))
                      else "the gate's opening is not what copying rests on here.")
                   + _alone_reading(ind, done.get("alone") or []))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
