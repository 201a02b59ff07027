"""Analysis: the reduced-scale reference runs trained on a GPU (docs/reproduction.md, "Plan for the GPU
sessions", step 2): 6 layers x 384, T 512, batch 64, 9,000 steps, beside the small-scale calibration
of ../shared/reference/attention-sink-paper.md section 6 (an independent trainer on an H100).

A run is trained on the GPU machine by ``scripts/device/train_call.sh CONFIG.json`` (one device call;
docs/performance.md), which brings back the run folder's metrics and the last checkpoint in bf16.
Here, on CPU, the run is snapshotted into ``analyses/data/gpu_reference/NAME/`` (metrics.jsonl,
train_config.json, final.json, device.json) and its model measured as ``sinkinterp report`` measures the
shipped models (report.json: the shipped natural-text sample, T 64, 100 sequences, eps 0.3, per-head
alpha, q.k decomposition, first-token interventions; ``final_report`` of analyses/cpu_calibration.py):

    .venv/bin/python analyses/gpu_reference.py --snapshot RUN_DIR MODEL_DIR DEVICE_LOG [RUN_DIR MODEL_DIR DEVICE_LOG ...]
    .venv/bin/python analyses/gpu_reference.py --key-value NAME MODEL_DIR [NAME MODEL_DIR ...]
    .venv/bin/python analyses/gpu_reference.py --lengths NAME MODEL_DIR [NAME MODEL_DIR ...]
    .venv/bin/python analyses/gpu_reference.py --inputs NAME MODEL_DIR [NAME MODEL_DIR ...]
    .venv/bin/python analyses/gpu_reference.py --tokens NAME MODEL_DIR [NAME MODEL_DIR ...]
    .venv/bin/python analyses/gpu_reference.py --per-head NAME MODEL_DIR [NAME MODEL_DIR ...]
    .venv/bin/python analyses/gpu_reference.py --massive NAME MODEL_DIR [NAME MODEL_DIR ...]
    .venv/bin/python analyses/regenerate.py gpu_reference          # docs/gpu-reference.md + figure

``--key-value`` runs ``sinkinterp intervene`` (token 1's value and key zeroed or mean-replaced,
removed, replaced, shifted; the k*/v* slot removed or moved onto token 1) and ``sinkinterp patch``
(first-token k, v and residual patched from the clean run into one whose first token is random,
per layer) on the model, as analyses/key_vs_value.py does for SmolLM2, and keeps their results.json
as intervene.json and patch.json. ``--lengths`` runs ``sinkinterp lengths`` (Sink_1, Sink_* and the
massive-activation ratio on the first T' tokens of the same sequences, T' = 16 ... 512: the models
trained at T 512 are measured at T 64 by the protocol) and keeps its table as lengths.json.
``--inputs`` runs ``sinkinterp measure`` on natural text, uniformly random tokens and one repeated
token (T 64, 100 sequences, eps 0.3) and keeps Sink_1, Sink_2, Sink_*, the massive-activation
ratio and the eps sweep of each as inputs.json. ``--tokens`` runs ``sinkinterp tokens`` (sinks past the first
position, pooled by token, against the rate their positions predict; T 512, 20 windows) and keeps
the pooled rate and the ten tokens with the highest sink rate as tokens.json. ``--per-head`` runs
``sinkinterp intervene --per-head`` (token 1 removed from the keys, or its value zeroed, in one
head at a time) and keeps the per-head loss changes as per_head.json. ``--massive`` runs
``sinkinterp massive`` (sinkinterp.massive: residual norms at token 1 against the rest, the sublayer
that writes h_1, h_1 rescaled to the others' norm at every layer and one layer at a time, the MLP
neurons that write it silenced at token 1) and keeps its results and settings as massive.json.

The models themselves (33 MB each in bf16) stay out of git, so the page regenerates from the
snapshots alone.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sinkinterp.fileio import write_bytes, write_json

DATA = ROOT / "analyses" / "data" / "gpu_reference"
DOC = ROOT / "docs" / "gpu-reference.md"
FIG = ROOT / "docs" / "figures" / "gpu-reference-emergence.png"
HEADS_FIG = ROOT / "docs" / "figures" / "gpu-reference-heads.png"
MASSIVE_FIG = ROOT / "docs" / "figures" / "gpu-reference-massive.png"

# ../shared/reference/attention-sink-paper.md section 6 (one H100, 2026-11, its own trainer and a
# 46.7M-token Debian corpus): the sink-tracking points it reports, by config and step
REFERENCE = {
    "baseline_small": {"sink1": {1500: 0.5, 3000: 1.1, 6000: 2.9, 9000: 5.1}},
    "baseline_small_wd05": {"sink1": {3000: 0.9, 4500: 8.3, 6000: 20.2, 9000: 30.8}},
    "kv_bias_small": {"sink_bias": {1000: 12.0, 3000: 23.0}, "sink1": {}},
    "sigmoid_small": {"sink1": {}},
}
REFERENCE_TEXT = {
    "baseline_small": "softmax, wd 0.1: Sink_1 0.5% at 1.5k, 1.1% at 3k, 2.9% at 6k, 5.1% at 9k",
    "baseline_small_wd05": "softmax, wd 0.5: Sink_1 0.9% at 3k, 8.3% at 4.5k, 20.2% at 6k, 30.8% at 9k",
    "kv_bias_small": "KV bias: Sink_* 12% at 1k, 23% at 3k; Sink_1 0.0",
    "sigmoid_small": "sigmoid without normalization: Sink_1 0.3-1% throughout",
}


def _calibration():
    """analyses/cpu_calibration.py as a module (its final_report measures like the CPU study)."""
    spec = importlib.util.spec_from_file_location("cpu_calibration", Path(__file__).with_name("cpu_calibration.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def device_facts(log_text: str) -> dict:
    """What a train_call.sh log says about the call: the start line, the GPU, each step's end."""
    facts: dict = {}
    m = re.search(r"train_call: (\S+) commit (\S+) device (\S+) budget (\d+)s", log_text)
    if m:
        facts.update(started=m.group(1), device=m.group(3), budget_s=int(m.group(4)))
    m = re.search(r"^(NVIDIA [^,\n]+), (\d+) MiB, ([\d.]+)$", log_text, re.MULTILINE)
    if m:
        facts.update(gpu=m.group(1), gpu_memory_mib=int(m.group(2)), driver=m.group(3))
    facts["steps"] = [{"name": n, "rc": int(rc), "seconds": int(s), "time_limit": bool(t)}
                      for n, rc, s, t in re.findall(r"^== (\S+): rc=(\d+) after (\d+)s( \(time limit\))?", log_text, re.MULTILINE)]
    m = re.search(r"^\[train\] (SIGTERM): checkpoint saved at step (\d+)", log_text, re.MULTILINE)
    if m:
        facts["stopped"] = {"signal": m.group(1), "step": int(m.group(2))}
    return facts


def snapshot(args: list[str]) -> int:
    if not args or len(args) % 3:
        print("gpu_reference: --snapshot takes triples RUN_DIR MODEL_DIR DEVICE_LOG", file=sys.stderr)
        return 2
    cal = None
    for i in range(0, len(args), 3):
        run, model, log = map(Path, args[i:i + 3])
        for need, what in ((run / "metrics.jsonl", "RUN_DIR"), (run / "train_config.json", "RUN_DIR"),
                           (model / "config.json", "MODEL_DIR"), (log, "DEVICE_LOG")):
            if not need.is_file():
                print(f"gpu_reference: {what} {need.parent if what != 'DEVICE_LOG' else need}: {need.name} missing",
                      file=sys.stderr)
                return 2
        dest = DATA / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("metrics.jsonl", "train_config.json", "final.json"):
            if (run / f).is_file():
                write_bytes(dest / f, (run / f).read_bytes())
        facts = device_facts(log.read_text())
        step = json.loads((model / "config.json").read_text()).get("extra", {}).get("step")
        write_json(dest / "device.json", {**facts, "model_step": step})
        cal = cal or _calibration()
        write_json(dest / "report.json", cal.final_report(model))
        print(f"snapshot {run} + {model} -> {dest}")
    return 0


KV_COMMON = ["--inputs", "natural", "--seq-len", "64", "--eps", "0.3", "--seed", "0"]
KV_INTERVENE = ["zero_value", "mean_value", "zero_key", "mean_key", "ablate", "ablate=norenorm",
                "replace_first=random", "insert_first=bos", "start_later=1"]
KV_SLOT = ["ablate_bias", "bias_to_first"]


def key_value_commands(model: str, out: Path, has_slot: bool) -> dict[str, list[str]]:
    """The ``sinkinterp`` argument lists of the key-vs-value step (as analyses/key_vs_value.py)."""
    return {
        "intervene": ["intervene", "--model", model, *KV_COMMON, "--num-seqs", "32", "--batch-size", "8",
                      "--do", *KV_INTERVENE, *(KV_SLOT if has_slot else []), "--out", str(out / "intervene")],
        "patch": ["patch", "--model", model, *KV_COMMON, "--num-seqs", "8", "--batch-size", "8",
                  "--corrupt", "replace_first=random", "--components", "k", "v", "resid_pre", "--per-layer",
                  "--batch-rows", "16", "--out", str(out / "patch")],
    }


def _model_pairs(flag: str, args: list[str]) -> list[tuple[str, str]] | None:
    """``NAME MODEL_DIR`` pairs of a snapshotted run and its model folder (None, said why, if not)."""
    if not args or len(args) % 2:
        print(f"gpu_reference: {flag} takes pairs NAME MODEL_DIR", file=sys.stderr)
        return None
    pairs = list(zip(args[::2], args[1::2]))
    for name, model in pairs:
        if not (DATA / name).is_dir() or not (Path(model) / "config.json").is_file():
            print(f"gpu_reference: {flag} {name} {model}: snapshot {name} first, and give a model folder",
                  file=sys.stderr)
            return None
    return pairs


def _shown(argv: list[str], model: str) -> str:
    """A command as the page shows it: the model folder as MODEL_DIR, paths relative to the repo."""
    return "sinkinterp " + " ".join("MODEL_DIR" if a == model else a.replace(f"{ROOT}/", "") for a in argv)


RUNS_OUT = ROOT / "runs" / "analyses" / "gpu_reference"


def _run_cli(name: str, what: str, argv: list[str], out: Path) -> dict | None:
    """Run ``sinkinterp ARGV`` for one model's step and return its results.json (None if it failed)."""
    from sinkinterp import cli

    print(f"-- {name} {what}: sinkinterp {' '.join(argv)}")
    return None if cli.main(argv) else json.loads((out / "results.json").read_text())


def key_value(args: list[str]) -> int:
    pairs = _model_pairs("--key-value", args)
    if pairs is None:
        return 2
    for name, model in pairs:
        cfg = json.loads((Path(model) / "config.json").read_text())
        has_slot = cfg["model_config"].get("attn_bias") not in (None, "none")
        for step, argv in key_value_commands(model, RUNS_OUT / name, has_slot).items():
            result = _run_cli(name, step, argv, RUNS_OUT / name / step)
            if result is None:
                return 1
            result["command"] = _shown(argv, model)
            if result.get("model") == model:  # a path on the machine that ran it
                result["model"] = f"MODEL_DIR ({name}'s bf16 model from the GPU call)"
            write_json(DATA / name / f"{step}.json", result)
    return 0


LENGTHS = [16, 32, 64, 128, 256, 512]


def lengths_command(model: str, out: Path) -> list[str]:
    """``sinkinterp lengths`` on the shipped natural sample: 20 windows of 512 tokens (all it holds)."""
    return ["lengths", "--model", model, "--inputs", "natural", "--seq-len", "512", "--num-seqs", "20",
            "--eps", "0.3", "--seed", "0", "--lengths", *map(str, LENGTHS), "--no-figures", "--out", str(out)]


def lengths_table(result: dict) -> dict:
    """The rows of a ``sinkinterp lengths`` result at its table lengths (its results.json also holds
    every length from 2 and the per-head maps, 300 kB a model)."""
    at = {t: result["lengths"].index(t) for t in result["table_lengths"]}
    bias = result.get("sink_bias_pct")
    return {"eps": result["eps"], "num_seqs": result["num_seqs"], "seq_len": result["seq_len"],
            "rows": [{"length": t, "sink1": result["sink_pct"][i][0],
                      "sink_bias": None if bias is None else bias[i],
                      "mean_alpha1": sum(result["mean_alpha1_by_layer"][i]) / len(result["mean_alpha1_by_layer"][i]),
                      "massive_ratio": result["max_massive_ratio"][i]} for t, i in at.items()]}


def _one_step(flag: str, step: str, args: list[str], command, summary) -> int:
    """For each NAME MODEL_DIR pair: run ``sinkinterp`` with ``command(model, out)``, keep
    ``summary(results)`` plus the command as analyses/data/gpu_reference/NAME/STEP.json."""
    pairs = _model_pairs(flag, args)
    if pairs is None:
        return 2
    for name, model in pairs:
        out = RUNS_OUT / name / step
        argv = command(model, out)
        res = _run_cli(name, step, argv, out)
        if res is None:
            return 1
        write_json(DATA / name / f"{step}.json", {"command": _shown(argv, model), **summary(res)})
    return 0


def lengths(args: list[str]) -> int:
    return _one_step("--lengths", "lengths", args, lengths_command, lengths_table)


INPUT_KINDS = ("natural", "random", "repeat")


def inputs_command(model: str, kind: str, out: Path) -> list[str]:
    """``sinkinterp measure`` on one kind of input, the report protocol (T 64, 100 sequences, eps 0.3)."""
    return ["measure", "--model", model, "--inputs", kind, "--seq-len", "64", "--num-seqs", "100", "--eps", "0.3",
            "--seed", "0", "--no-figures", "--out", str(out)]


def inputs(args: list[str]) -> int:
    pairs = _model_pairs("--inputs", args)
    if pairs is None:
        return 2
    for name, model in pairs:
        rows = []
        for kind in INPUT_KINDS:
            out = RUNS_OUT / name / f"inputs-{kind}"
            res = _run_cli(name, kind, inputs_command(model, kind, out), out)
            if res is None:
                return 1
            sweep = res["eps_sweep"]
            rows.append({"inputs": kind, "sink1": res["sink_pct"][0], "sink2": res["sink_pct"][1],
                         "sink_bias": res.get("sink_bias_pct"),
                         "massive_ratio": max(res["norms"]["resid"]["massive_ratio"]),
                         "eps_sweep": {"eps": sweep["eps"], "sink1": sweep["sink1_pct"],
                                       "sink_bias": sweep.get("sink_bias_pct")}})
        write_json(DATA / name / "inputs.json", {"command": _shown(inputs_command(model, "KIND", Path("OUT")), model),
                                                 "rows": rows})
    return 0


def tokens_command(model: str, out: Path) -> list[str]:
    """``sinkinterp tokens`` on the 512-token windows of the shipped natural sample."""
    return ["tokens", "--model", model, "--inputs", "natural", "--seq-len", "512", "--num-seqs", "20", "--eps", "0.3",
            "--seed", "0", "--top", "10", "--no-figures", "--out", str(out)]


def tokens_summary(res: dict) -> dict:
    """The pooled rate past the first position and the ten tokens with the highest sink rate."""
    tok = res["tokens"]
    keys = ("text", "id", "count", "sink_rate", "expected_rate", "lift", "mean_alpha", "top_head")
    return {"positions": res["positions"], "pooled_rate": res["pooled_rate"], "sink1_pct": res["sink1_pct"],
            "top": [{key: tok[key][i] for key in keys} for i in res["top"]["index"]]}


def tokens(args: list[str]) -> int:
    return _one_step("--tokens", "tokens", args, tokens_command, tokens_summary)


PER_HEAD = ["ablate", "zero_value"]


def per_head_command(model: str, out: Path) -> list[str]:
    """``sinkinterp intervene --per-head``: each head's own loss change when token 1 leaves its keys or
    its value is zeroed there (32 sequences, as the key-vs-value step)."""
    return ["intervene", "--model", model, *KV_COMMON, "--num-seqs", "32", "--batch-size", "8", "--do", *PER_HEAD,
            "--per-head", "--no-figures", "--out", str(out)]


def per_head(args: list[str]) -> int:
    return _one_step("--per-head", "per_head", args, per_head_command, lambda res: {
        "loss_base": res["loss_base"],
        "interventions": [{"name": iv["name"], "delta_loss": iv["delta_loss"],
                           "per_head_delta_loss": iv["per_head_delta_loss"]} for iv in res["interventions"]]})


MASSIVE_SEQS = 32
ALPHA_SHOWN = 0.15  # the heads the massive-activation page lists one by one


def massive_command(model: str, out: Path) -> list[str]:
    """``sinkinterp massive`` on the final model, the protocol of the key-vs-value step (32 sequences)."""
    return ["massive", "--model", model, *KV_COMMON, "--num-seqs", str(MASSIVE_SEQS), "--no-figures",
            "--out", str(out)]


def massive(args: list[str]) -> int:
    """``sinkinterp massive`` (sinkinterp.massive: where ||h_1|| grows and which sublayer and MLP neurons
    write it, h_1 rescaled or its writers silenced at token 1) on each model; kept as massive.json with
    the run's settings."""
    pairs = _model_pairs("--massive", args)
    if pairs is None:
        return 2
    keep = ("inputs", "prepend_bos", "seq_len", "num_seqs", "eps", "seed", "do", "max_neurons", "share", "dtype",
            "device", "versions", "git_commit")
    for name, model in pairs:
        out = RUNS_OUT / name / "massive"
        argv = massive_command(model, out)
        res = _run_cli(name, "massive", argv, out)
        if res is None:
            return 1
        config = json.loads((out / "config.json").read_text())
        for key in ("model", "inputs", "prepend_bos", "dtype", "eps", "num_seqs", "seq_len"):
            res.pop(key, None)  # in the config
        write_json(DATA / name / "massive.json", {"command": _shown(argv, model),
                                                  "config": {k: config[k] for k in keep}, "results": res})
    return 0


def _runs() -> dict[str, dict]:
    out = {}
    for folder in sorted(p for p in DATA.glob("*") if p.is_dir()):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        run = {"cfg": json.loads((folder / "train_config.json").read_text()), "rows": rows}
        for f in ("final", "report", "device", "intervene", "patch", "lengths", "inputs", "tokens", "per_head",
                  "massive"):
            p = folder / f"{f}.json"
            run[f] = json.loads(p.read_text()) if p.is_file() else None
        out[folder.name] = run
    return out


def _at(rows: list[dict], key: str, step: int) -> float | None:
    """The tracked value of ``key`` at ``step`` (None when the run did not log it there)."""
    for r in rows:
        if r["step"] == step and r.get(key) is not None:
            return r[key]
    return None


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def throughput(rows: list[dict]) -> dict:
    """Median tokens/s and MFU over the logged intervals after the first (which holds the compile)."""
    timed = [r for r in rows if r.get("tokens_per_s") is not None][1:]
    if not timed:
        return {}
    out = {"tokens_per_s": _median([r["tokens_per_s"] for r in timed]), "intervals": len(timed)}
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    if mfu:
        out["mfu"] = _median(mfu)
    return out


def comparison_rows(name: str, rows: list[dict]) -> list[str]:
    """One table row per reference point: the reference's value beside ours at the same step."""
    out = []
    for key, label in (("sink1", "Sink_1"), ("sink_bias", "Sink_*")):
        for step, ref in sorted(REFERENCE.get(name, {}).get(key, {}).items()):
            ours = _at(rows, key, step)
            shown = "not reached" if ours is None else f"{ours:.2f}"
            out.append(f"| {name} | {label} | {step:,} | {ref:g} | {shown} |")
    return out


def _heads(report: dict, key: str = "sink_rate1", at_least: float = 50.0) -> list[str]:
    """Heads whose alpha_1 reaches eps in at least ``at_least`` percent of the sequences."""
    grid = report["heads"][key]
    return [f"L{li}H{hi}" for li, layer in enumerate(grid) for hi, v in enumerate(layer) if v is not None and v >= at_least]


def _slot_heads(report: dict, at_least: float = 0.3) -> list[str]:
    """Heads whose mean attention on the learned k*/v* slot is at least ``at_least`` (the eps)."""
    grid = report["heads"].get("alpha_bias") or []
    return [f"L{li}H{hi}" for li, layer in enumerate(grid) for hi, v in enumerate(layer) if v >= at_least]


def _figure(runs: dict[str, dict]) -> None:
    from sinkinterp.figures import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = plt.get_cmap("tab10")
    for i, (name, run) in enumerate(runs.items()):
        tracked = [r for r in run["rows"] if r.get("sink1") is not None]
        steps = [r["step"] for r in tracked]
        style = {"color": colors(i), "marker": ".", "markersize": 3, "label": f"{name} (ours)"}
        axes[0].plot(steps, [r["sink1"] for r in tracked], **style)
        if any(r.get("sink_bias") is not None for r in tracked):
            axes[1].plot(steps, [r["sink_bias"] for r in tracked], **style)
        axes[2].plot(steps, [r["massive_ratio"] for r in tracked], **style)
        for ax, key in ((axes[0], "sink1"), (axes[1], "sink_bias")):
            ref = REFERENCE.get(name, {}).get(key) or {}
            if ref:
                ax.plot(list(ref), list(ref.values()), linestyle="none", marker="x", markersize=7, color=colors(i),
                        label=f"{name} (reference, section 6)")
    for ax, title in zip(axes, ("Sink_1 (%), eps 0.3", "Sink_* on k*/v* (%), eps 0.3", "max ||h_1|| / mean ||h_t||")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes[:2]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    save_figure(fig, FIG, palette=True)


def _heads_figure(runs: dict[str, dict]) -> None:
    """Per final model: mean attention on the sink (alpha_1; alpha_* on k*/v* where the model has the
    slot) per layer and head, on one colour scale; and the massive-activation ratio after each layer."""
    import numpy as np

    from sinkinterp.figures import _plt, save_figure

    reports = {n: r["report"] for n, r in runs.items() if r["report"] is not None}
    plt = _plt()
    fig, axes = plt.subplots(1, len(reports) + 1, figsize=(3.1 * (len(reports) + 1), 3.4), layout="constrained")
    grids = {n: np.asarray(rep["heads"]["alpha_bias"] if rep["heads"].get("alpha_bias") else rep["heads"]["alpha1"],
                           dtype=float) for n, rep in reports.items()}
    top = max(float(g.max()) for g in grids.values())
    for ax, (name, grid) in zip(axes, grids.items()):
        im = ax.imshow(grid, vmin=0.0, vmax=top, cmap="viridis", aspect="auto")
        slot = reports[name]["heads"].get("alpha_bias") is not None
        ax.set_title(f"{name}\nmean alpha on {'k*' if slot else 'token 1'}", fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        for (li, hi), v in np.ndenumerate(grid):
            if v >= 0.3:  # the eps of the protocol
                ax.text(hi, li, f"{v:.2f}", ha="center", va="center", fontsize=6, color="black")
    fig.colorbar(im, ax=list(axes[:-1]), fraction=0.02, pad=0.02, label="mean alpha")
    ax = axes[-1]
    for name, rep in reports.items():
        ratios = rep.get("massive_ratio_sums") or []
        ax.plot(range(len(ratios)), ratios, marker="o", markersize=3, label=name)
    ax.set_title("||s_1|| / mean ||s_t|| of each block's\nresidual sums (x + attn, x + mlp)", fontsize=8)
    ax.set_xlabel("layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, frameon=False)
    save_figure(fig, HEADS_FIG, palette=True)


def _massive_figure(runs: dict[str, dict]) -> bool:
    """sinkinterp.figures.massive_activation of every model with a massive.json (False: none has one)."""
    from sinkinterp.figures import massive_activation, save_figure

    have = {n: r["massive"]["results"] for n, r in runs.items() if r.get("massive")}
    if not have:
        return False
    save_figure(massive_activation(have, title="The massive activation on token 1, and the sink heads without "
                                               "its strongest writers"), MASSIVE_FIG, palette=True)
    return True


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--snapshot":
        return snapshot(argv[1:])
    if argv and argv[0] == "--key-value":
        return key_value(argv[1:])
    if argv and argv[0] == "--lengths":
        return lengths(argv[1:])
    if argv and argv[0] == "--inputs":
        return inputs(argv[1:])
    if argv and argv[0] == "--tokens":
        return tokens(argv[1:])
    if argv and argv[0] == "--per-head":
        return per_head(argv[1:])
    if argv and argv[0] == "--massive":
        return massive(argv[1:])
    if argv:
        print("usage: analyses/gpu_reference.py [--snapshot RUN_DIR MODEL_DIR DEVICE_LOG ... | --key-value NAME "
              "MODEL_DIR ... | --lengths NAME MODEL_DIR ... | --inputs NAME MODEL_DIR ... | --tokens NAME MODEL_DIR ... | "
              "--per-head NAME MODEL_DIR ... | --massive NAME MODEL_DIR ...]; "
              "with no argument it "
              f"regenerates docs/gpu-reference.md from the snapshots (got {argv!r})", file=sys.stderr)
        return 2
    runs = _runs()
    if not runs:
        print(f"gpu_reference: no snapshots in {DATA}", file=sys.stderr)
        return 2
    _figure(runs)
    _heads_figure(runs)
    lines = [
        "# The reduced-scale reference runs on a GPU",
        "",
        "Generated by `analyses/gpu_reference.py` from the snapshots in `analyses/data/gpu_reference/`",
        "(run `.venv/bin/python analyses/regenerate.py gpu_reference`). Each run was trained on the GPU",
        "machine in one device call, `bash scripts/device/train_call.sh configs/NAME.json` (carry `.whl` and",
        "`data/debian/debian-shards.tar.xz`; docs/reproduction.md, \"Plan for the GPU sessions\"), that is",
        "`sinkinterp train configs/NAME.json --out runs/gpu/NAME --set device=cuda`: 6 layers x 384, 6 heads,",
        "SwiGLU 1024, RoPE, pre-RMSNorm, T 512, batch 64 (32,768 tokens a step), AdamW lr 1e-3 with 100",
        "warm-up steps and cosine to 10%, bf16 autocast, compiled, on the 52.5M-token Debian corpus",
        "(docs/data.md). Sink tracking along training: 100 held-out windows of T 64, eps 0.3, no BOS.",
        "The reference: ../shared/reference/attention-sink-paper.md section 6, the same model shape and",
        "protocol trained by an independent trainer on one H100 on a 46.7M-token build of the corpus.",
        "",
        "## The runs",
        "",
        "| run | config | GPU, date | steps done | tokens | val loss | Sink_1 (%) | Sink_* (%) | massive ratio | tokens/s (median) | MFU (median) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        rows, dev, cfg = run["rows"], run["device"] or {}, run["cfg"]
        tracked = [r for r in rows if r.get("sink1") is not None]
        last = tracked[-1]
        val = [r for r in rows if r.get("val_loss") is not None][-1]
        tp = throughput(rows)
        stopped = f" (stopped by the call's time limit, {dev['stopped']['signal']})" if dev.get("stopped") else ""
        lines.append(
            f"| {name} | `configs/{name}.json` (wd {cfg['weight_decay']:g}, attn_bias {cfg['model'].get('attn_bias') or 'none'}) | "
            f"{dev.get('gpu', '?')}, {str(dev.get('started', '?'))[:10]} | {rows[-1]['step']:,} of {cfg['steps']:,}{stopped} | "
            f"{rows[-1]['tokens_seen'] / 1e6:.0f}M | {val['val_loss']:.3f} | {last['sink1']:.2f} | "
            f"{_fmt(last.get('sink_bias'))} | {last['massive_ratio']:.2f} | "
            f"{tp.get('tokens_per_s', 0) / 1e6:.2f}M | {_fmt(tp.get('mfu'), '.1%')} |")
    lines += [
        "",
        "MFU against the bf16 dense peak of the chip's table (989 TFLOP/s for the H200 and H100 SXM;",
        "`sinkinterp/train/flops.py`), medians over the logged 50-step intervals after the first, which",
        "holds the compile; evaluation and sink tracking are not in them.",
        "",
        "## Beside the reference (section 6)",
        "",
        "| run | metric | step | reference (%) | ours (%) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        lines += comparison_rows(name, run["rows"])
    lines += [
        "",
        "![Sink_1, Sink_* and the massive-activation ratio along training, with the reference's points](figures/gpu-reference-emergence.png)",
        "",
        "## The final models, measured like `sinkinterp report` (CPU)",
        "",
        "The last checkpoint of each run (bf16), on the shipped natural-text sample: T 64, 100 sequences,",
        "eps 0.3, no BOS (`final_report` of analyses/cpu_calibration.py). Sink heads: alpha_1 >= eps in at",
        "least half the sequences. Δ loss: the loss change (nats) on the first 32 sequences when token 1",
        "(`ablate`) or the k*/v* slot (`ablate_bias`) is removed from every query's keys (rows",
        "renormalized), when token 1 is removed without renormalizing, when its value is zeroed, and when",
        "the slot's mass is moved onto token 1 (`bias_to_first`).",
        "",
        "| run | checkpoint step | Sink_1 (%) | Sink_2 (%) | Sink_* (%) | massive ratio | sink heads (token 1) | slot heads (k*) | ablate | ablate, no renorm | zero value | ablate_bias | ablate_bias, no renorm | bias_to_first |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        rep = run["report"]
        if rep is None:
            continue
        iv = rep.get("interventions", {})

        def d(key, iv=iv):
            return _fmt((iv.get(key) or {}).get("delta_loss"), "+.3f")

        heads = _heads(rep) or ["none"]
        slot = "-" if rep["heads"].get("alpha_bias") is None else ", ".join(_slot_heads(rep)) or "none"
        lines.append(
            f"| {name} | {_fmt((run['device'] or {}).get('model_step'), ',')} | {rep['sink1']:.2f} | {rep['sink2']:.2f} | "
            f"{_fmt(rep.get('sink_bias'))} | {rep['massive_ratio']:.2f} | {', '.join(heads)} | {slot} | {d('ablate')} | "
            f"{d('ablate[norenorm]')} | {d('zero_value')} | {d('ablate_bias')} | {d('ablate_bias[norenorm]')} | "
            f"{d('bias_to_first')} |")
    lines += [
        "",
        "Mean attention on the sink per layer and head (alpha_1; alpha_* on k*/v* for the KV model;",
        "values >= eps 0.3 printed), and the massive-activation ratio of each block's residual sums:",
        "",
        "![Per-head mean attention on the sink and the massive-activation ratio by layer, final models](figures/gpu-reference-heads.png)",
    ]
    lines += _inputs_lines(runs)
    lines += _qk_lines(runs)
    lines += _score_lines(runs)
    lines += _lengths_lines(runs)
    lines += _tokens_lines(runs)
    lines += _key_value_lines(runs)
    lines += _per_head_lines(runs)
    lines += _massive_lines(runs)
    lines += [
        "",
        "Per-step rows: `analyses/data/gpu_reference/NAME/metrics.jsonl`; the call's log facts:",
        "`device.json`; the final measurement: `report.json`.",
        "",
    ]
    print(f"wrote {write_bytes(DOC, chr(10).join(lines).encode())}")
    return 0


def _lengths_lines(runs: dict[str, dict]) -> list[str]:
    """Sink_1 / Sink_* against the length the model is measured at (it trained at T 512)."""
    done = {n: r["lengths"] for n, r in runs.items() if r.get("lengths")}
    if not done:
        return []
    out = ["", "## The sink against the measured length (CPU)", "",
           "The models trained on 512-token windows; the protocol measures them at T 64. On the first T'",
           "tokens of the same 20 windows of the shipped natural sample (all the 512-token windows it",
           "holds), eps 0.3; mean alpha_1: the attention on token 1 averaged over heads and queries",
           "(causal attention spread evenly gives (1 + 1/2 + ... + 1/T') / T': 0.074 at T' 64, 0.013 at",
           "512). Commands:", ""]
    out += [f"- {name}: `{tab['command']}`" for name, tab in done.items()]
    out += ["", "| run | T' | Sink_1 (%) | Sink_* (%) | mean alpha_1 | massive ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, tab in done.items():
        for r in tab["rows"]:
            out.append(f"| {name} | {r['length']} | {r['sink1']:.2f} | {_fmt(r['sink_bias'])} | "
                       f"{r['mean_alpha1']:.4f} | {r['massive_ratio']:.2f} |")
    return out


def _key_value_lines(runs: dict[str, dict]) -> list[str]:
    """The intervene and patch results: what token 1 (or k*/v*) carries, its key or its value."""
    out: list[str] = []
    done = {n: r for n, r in runs.items() if r.get("intervene") and r.get("patch")}
    if not done:
        return out
    out += ["", "## Key or value: interventions and patching (CPU)", "",
            "The commands (MODEL_DIR: the bf16 model the call brought back):", ""]
    for name, run in done.items():
        out += [f"- {name}: `{run['intervene']['command']}`", f"  and `{run['patch']['command']}`"]
    out += ["", "Δ loss on 32 sequences of the natural sample (mean next-token cross entropy over the targets",
            "both inputs contain); Sink_1 and Sink_* before and after, eps 0.3.", "",
            "| run | intervention | what it does | Δ loss (nats) | Sink_1 (%) | Sink_* (%) |",
            "| --- | --- | --- | ---: | --- | --- |"]
    for name, run in done.items():
        iv = run["intervene"]
        for r in iv["interventions"]:
            bias = "-" if r.get("sink_bias_pct") is None else f"{r['sink_bias_pct_base']:.1f} -> {r['sink_bias_pct']:.1f}"
            out.append(f"| {name} | `{r['name']}` | {r['description']} | {r['delta_loss']:+.4f} | "
                       f"{r['sink_pct_base'][0]:.1f} -> {r['sink_pct'][0]:.1f} | {bias} |")
    out += ["", "Patching: the first token replaced by a random one (`replace_first=random`); each component of",
            "the first position patched back from the clean run, one layer at a time and in every layer at",
            "once; the share of the clean-corrupted loss gap it closes (on 8 sequences).", "",
            "| run | clean loss | corrupted | component | share, every layer at once | share by layer (0, 1, ...) |",
            "| --- | ---: | ---: | --- | ---: | --- |"]
    for name, run in done.items():
        pt = run["patch"]
        gap = pt["clean"] - pt["corrupted"]
        for comp, res in pt["patches"].items():
            shares = [(pt["corrupted"] - v) / -gap if gap else float("nan") for v in res["values"]]
            together = (res["together"] - pt["corrupted"]) / gap if gap else float("nan")
            out.append(f"| {name} | {pt['clean']:.4f} | {pt['corrupted']:.4f} | {comp} | {together:.0%} | "
                       f"{', '.join(f'{x:.0%}' for x in shares)} |")
    return out


def _qk_lines(runs: dict[str, dict]) -> list[str]:
    """Angle or norm: in each sink head, cos(q, k_1) against cos(q, k_s) and |k_1| / |k_s|."""
    out = []
    for name, run in runs.items():
        rep = run["report"]
        if rep is None or not rep["heads"].get("qk"):
            continue
        qk = rep["heads"]["qk"]
        def cell(h):
            return int(h[1:h.index("H")]), int(h[h.index("H") + 1:])

        picked = [(h, "token 1", "alpha1", "cos_q_k1", "k1_norm") for h in _heads(rep)]
        if "cos_q_kstar" in qk:
            picked += [(h, "k*", "alpha_bias", "cos_q_kstar", "kstar_norm") for h in _slot_heads(rep)]
        if not picked:
            continue
        if not out:
            out += ["", "## Angle or norm in the sink heads", "",
                    "For each head that sinks on token 1 (or, in a KV-bias model, whose mean attention on k* is at",
                    "least eps): the mean cosine of the queries with the sink's key against their cosine with",
                    "every other key k_s, and the sink key's norm over theirs (q.k = |q||k|cos, keys after RoPE).",
                    "",
                    "| run | head | sink | mean alpha on it | cos(q, sink key) | cos(q, k_s) | norm(sink key) / norm(k_s) |",
                    "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for h, what, alpha_key, cos_key, norm_key in picked:
            li, hi = cell(h)

            def g(key, qk=qk, li=li, hi=hi):
                grid = qk.get(key)
                return None if grid is None else grid[li][hi]

            kr = None if g(norm_key) is None or not g("k_rest_norm") else g(norm_key) / g("k_rest_norm")
            out.append(f"| {name} | {h} | {what} | {rep['heads'][alpha_key][li][hi]:.3f} | {_fmt(g(cos_key), '+.2f')} | "
                       f"{_fmt(g('cos_q_krest'), '+.2f')} | {_fmt(kr)} |")
    return out



def _score_lines(runs: dict[str, dict]) -> list[str]:
    """Per layer, the mean attention score q.k / sqrt(d) on key 1 and on keys 2..T, averaged over the
    layer's heads, with the range over heads of the latter: how each model spends attention it does not
    need (softmax must place it; sigmoid without normalization can keep every score low)."""
    out = ["", "## Where the spare attention goes: mean scores per layer", "",
           "The mean score q.k / sqrt(d_head) (after RoPE) of every query on key 1 and on keys 2..T,",
           "averaged over each layer's heads, and the lowest / highest head's mean on keys 2..T",
           "(`heads.qk.logit_q_k1` / `logit_q_krest` of report.json). Under sigmoid without normalization a",
           "score s gives weight sigmoid(s) whatever the other keys do, so a model that needs little",
           "attention can keep every score negative instead of piling the spare mass on one key.",
           "",
           "| run | layer | mean score on key 1 | mean score on keys 2..T | lowest / highest head on keys 2..T |",
           "| --- | ---: | ---: | ---: | --- |"]
    rows = 0
    for name, run in runs.items():
        qk = (run["report"] or {}).get("heads", {}).get("qk") or {}
        if not qk.get("logit_q_krest"):
            continue
        for li, (first, rest) in enumerate(zip(qk["logit_q_k1"], qk["logit_q_krest"])):
            out.append(f"| {name} | {li} | {sum(first) / len(first):+.2f} | {sum(rest) / len(rest):+.2f} | "
                       f"{min(rest):+.2f} / {max(rest):+.2f} |")
            rows += 1
    return out if rows else []


def _inputs_lines(runs: dict[str, dict]) -> list[str]:
    """Sink_1 / Sink_2 / Sink_* and the massive-activation ratio on natural, random and repeated inputs."""
    have = {n: r["inputs"] for n, r in runs.items() if r.get("inputs")}
    if not have:
        return []
    command = next(iter(have.values()))["command"]
    out = ["", "## Natural, random and repeated inputs (CPU)", "",
           f"`{command}` with KIND natural (the shipped sample), random (uniform token ids) and repeat (one",
           "token repeated), no BOS. The paper finds the sink on the first token whatever the input.", "",
           "| run | inputs | Sink_1 (%) | Sink_2 (%) | Sink_* (%) | massive ratio |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, tab in have.items():
        for r in tab["rows"]:
            out.append(f"| {name} | {r['inputs']} | {r['sink1']:.2f} | {r['sink2']:.2f} | {_fmt(r['sink_bias'])} | "
                       f"{r['massive_ratio']:.2f} |")
    shown = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    out += ["", "Sink_1 (Sink_* for a k*/v* model) against eps on the natural inputs (the same measurement's",
            "eps sweep):", "",
            "| run | " + " | ".join(f"eps {e:g}" for e in shown) + " |",
            "| --- |" + " ---: |" * len(shown)]
    for name, tab in have.items():
        sweep = next(r for r in tab["rows"] if r["inputs"] == "natural")["eps_sweep"]
        vals = sweep["sink_bias"] or sweep["sink1"]
        at = {round(e, 4): v for e, v in zip(sweep["eps"], vals)}
        out.append(f"| {name} | " + " | ".join(_fmt(at.get(e)) for e in shown) + " |")
    return out


def _tokens_lines(runs: dict[str, dict]) -> list[str]:
    """Sinks past the first position, pooled by token (``sinkinterp tokens``)."""
    have = {n: r["tokens"] for n, r in runs.items() if r.get("tokens")}
    if not have:
        return []
    out = ["", "## Sinks past the first position, by token (CPU)", ""]
    for name, tab in have.items():
        lo, hi = tab["positions"]
        out += [f"{name}: `{tab['command']}`. Sink % = the share of (occurrence, head) pairs with alpha > 0.3 at",
                (f"key positions {lo + 1}..{hi + 1} (each seen by at least 16 queries): all tokens there "
                 f"{tab['pooled_rate']:.3f}%; token 1 on the same windows {tab['sink1_pct']:.2f}%. The ten tokens with"),
                "the highest rate (seen at least 5 times):", "",
                "| run | token | id | count | sink % | predicted by its positions (%) | mean alpha | top head |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for t in tab["top"]:
            text = t["text"].replace("\n", "\\n").replace("|", "\\|")
            li, hi = t["top_head"] or (-1, -1)
            out.append(f"| {name} | `{text}` | {t['id']} | {t['count']} | {t['sink_rate']:.2f} | "
                       f"{t['expected_rate']:.2f} | {t['mean_alpha']:.4f} | {f'L{li}H{hi}' if li >= 0 else '-'} |")
        out.append("")
    return out


def _per_head_lines(runs: dict[str, dict]) -> list[str]:
    """The heads whose own use of token 1 matters most for the loss."""
    have = {n: r for n, r in runs.items() if r.get("per_head")}
    if not have:
        return []
    command = next(iter(have.values()))["per_head"]["command"]
    out = ["", "## Which heads need token 1 (CPU)", "",
           f"`{command}`: the loss change when the edit is made in one head alone (all other heads",
           "untouched), the six largest per intervention, beside the head's mean attention on token 1",
           "(alpha_1 from the final-model measurement) and the edit made in every head at once.", "",
           "| run | intervention | every head at once | head | Δ loss in that head alone | its mean alpha_1 |",
           "| --- | --- | ---: | --- | ---: | ---: |"]
    for name, run in have.items():
        alpha = (run["report"] or {}).get("heads", {}).get("alpha1")
        for iv in run["per_head"]["interventions"]:
            cells = [(v, li, hi) for li, layer in enumerate(iv["per_head_delta_loss"]) for hi, v in enumerate(layer)]
            for v, li, hi in sorted(cells, reverse=True)[:6]:
                a = _fmt(alpha[li][hi], ".3f") if alpha else "-"
                out.append(f"| {name} | `{iv['name']}` | {iv['delta_loss']:+.4f} | L{li}H{hi} | {v:+.4f} | {a} |")
    return out


def _massive_lines(runs: dict[str, dict]) -> list[str]:
    """Where the massive activation on token 1 is written, and what the sink and the loss lose
    without it (the study of docs/massive-activation-pretrained.md)."""
    have = {n: r for n, r in runs.items() if r.get("massive")}
    if not have:
        return []
    first = next(iter(have.values()))["massive"]
    cfg = first["config"]
    out = ["", "## The massive activation and the sink (CPU)", "",
           f"`{first['command']}`",
           "(`analyses/gpu_reference.py --massive NAME MODEL_DIR`; the study of",
           "[massive-activation-pretrained.md](massive-activation-pretrained.md), sinkinterp.massive) on the final",
           (f"models: the shipped natural-text sample, T {cfg['seq_len']}, {cfg['num_seqs']} sequences, eps "
            f"{cfg['eps']:g}, no BOS, {cfg['dtype']} on {cfg['device']}. ||h_1|| against the mean ||h_t|| of the"),
           "other positions at each block's resid_pre (the last column: the final residual), with their ratio:",
           ""]
    n_res = max(len(r["massive"]["results"]["resid_first"]) for r in have.values())
    out += ["| run | " + " | ".join(f"L{i}" if i < n_res - 1 else "final" for i in range(n_res)) + " |",
            "| --- | " + " | ".join("---:" for _ in range(n_res)) + " |"]
    for name, run in have.items():
        res = run["massive"]["results"]
        out.append(f"| {name} | " + " | ".join(f"{a:.0f} / {b:.0f} ({r:.1f})" for a, b, r in
                                              zip(res["resid_first"], res["resid_rest"], res["massive_ratio"])) + " |")
    out += ["", "The sublayer that writes the most into h_1 (its output's norm at token 1 against the other",
            "positions' mean), and token 1's value norm against the others' where the ratio peaks; then the",
            "loss change and Sink_1 after each edit at every layer (`normalize_resid`: h_1 rescaled to the others'",
            "mean norm, direction kept; `scale_resid=0.5`: h_1 halved at every resid_pre), `normalize_resid` at",
            "one layer alone (the layer where it costs most), and the MLP neurons that write h_1 silenced at",
            "token 1 (the strongest writer alone, the fewest that carry 95% of the write or the eight",
            "strongest, and as many of the weaker half as a control):", "",
            "| run | writer (token 1 / others) | value norm, token 1 / others | Sink_1 (%) | edit | Δ loss (nats) | Sink_1 after (%) | massive ratio after |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, run in have.items():
        res = run["massive"]["results"]
        subs = [(k, li, v) for k, vs in res["sublayers"].items() for li, v in enumerate(vs)]
        kind, li, (a, b) = max(subs, key=lambda t: t[2][0] - t[2][1])
        ratio = res["massive_ratio"][:len(res["value_first"])]
        peak = max(range(len(ratio)), key=lambda i: ratio[i])
        vr = res["value_first"][peak] / max(res["value_rest"][peak], 1e-12)
        head = f"| {name} | {kind} of layer {li} ({a:.0f} / {b:.0f}) | {vr:.2f} (layer {peak}) | {res['sink1']:.1f} |"
        blank = "| | | | |"
        specs = run["massive"]["config"]["do"]
        rows = [(f"`{spec}` (every layer)", x["delta_loss"], x["sink1_after"], None)
                for spec, x in zip(specs, res["interventions"])]
        per = res["normalize_per_layer"]
        worst = max(range(len(per)), key=lambda i: per[i])
        rows.append((f"`normalize_resid` at layer {worst} alone", per[worst], None, None))
        ne = res["neurons"]
        top = ne["top"][0]
        if ne.get("top1"):
            what = (f"neuron {top['neuron']} of layer {ne['layer']} silenced at token 1 (activation "
                    f"{top['act_first']:.1f} there, mean absolute activation {top['act_rest']:.2f} elsewhere; "
                    f"{ne['share'][0]:.0%} of the write)")
            rows.append((what, ne["top1"]["delta_loss"], ne["top1"]["sink1_after"], ne["top1"]["massive_ratio_after"]))
        for x, what in zip(ne["interventions"], (f"its {ne['k']} strongest writers ({ne['share'][ne['k'] - 1]:.0%})",
                                                f"{ne['k']} of its weaker half (control)")):
            rows.append((f"{what} silenced", x["delta_loss"], x["sink1_after"], x["massive_ratio_after"]))
        for i, (edit, dl, s1, mr) in enumerate(rows):
            out.append(f"{head if i == 0 else blank} {edit} | {dl:+.3f} | {_fmt(s1, '.1f')} | {_fmt(mr, '.1f')} |")
    heads = []
    for name, run in have.items():
        res = run["massive"]["results"]
        ne = res["neurons"]
        after = [ne.get("top1", {}).get("alpha1_after"), *(x.get("alpha1_after") for x in ne["interventions"])]
        if res.get("alpha1") is None or None in after:
            continue
        a = res["alpha1"]
        shown = [(layer, h) for layer in range(len(a)) for h in range(len(a[layer])) if a[layer][h] >= ALPHA_SHOWN]
        for li, hi in sorted(shown, key=lambda t: -a[t[0]][t[1]]):
            heads.append(f"| {name} | L{li}H{hi} | {a[li][hi]:.3f} | " + " | ".join(f"{x[li][hi]:.3f}" for x in after)
                         + " |")
    if heads:
        out += ["", f"Per head: the mean attention on token 1 (alpha_1) of every head with alpha_1 >= {ALPHA_SHOWN:g},",
                "before and after the neuron edits above:", "",
                "| run | head | alpha_1 | strongest writer silenced | strongest writers silenced | control |",
                "| --- | --- | ---: | ---: | ---: | ---: |", *heads]
    if _massive_figure(runs):
        out += ["", ("![Residual norms at token 1 against the others by layer, and the sink heads' alpha_1 with the "
                     "massive activation's writers silenced](figures/gpu-reference-massive.png)")]
    return out

if __name__ == "__main__":
    sys.exit(main())
