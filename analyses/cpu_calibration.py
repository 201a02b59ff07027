"""Analysis: does a sink emerge in small models trained on two CPU cores? The sink-tracking curves
of the CPU calibration runs, side by side.

The runs themselves take tens of minutes to hours on the CPU and live in git-ignored ``runs/cpu/``;
what they log along training (``metrics.jsonl``) and their configuration are snapshotted into
``analyses/data/cpu_calibration/NAME/`` with ``--snapshot`` (while or after they run), and this page is
made from the snapshots, so it regenerates on a fresh clone:

    .venv/bin/python analyses/cpu_calibration.py --snapshot runs/cpu/c_bos ...   # copy metrics + config, probe checkpoints
    .venv/bin/python analyses/regenerate.py cpu_calibration                      # docs/cpu-calibration.md

or, for the runs named in ``RECIPES`` below, train and snapshot in one go (one core per run is
enough: ``OMP_NUM_THREADS=1``; ``--dry-run`` prints the commands):

    OMP_NUM_THREADS=1 .venv/bin/python analyses/cpu_calibration.py --train c_sinklogitbos c_alibibos

Every run is ``sinkinterp train configs/cpu_calib_wd05.json --out runs/cpu/NAME`` plus the ``--set``
overrides its train_config.json records (shown in the table).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "analyses" / "data" / "cpu_calibration"
DOC = ROOT / "docs" / "cpu-calibration.md"
FIG = ROOT / "docs" / "figures" / "cpu-calibration-emergence.png"
HEADS_FIG = ROOT / "docs" / "figures" / "cpu-calibration-heads.png"
SLOT_FIG = ROOT / "docs" / "figures" / "cpu-calibration-slot.png"
BASE = ROOT / "configs" / "cpu_calib_wd05.json"
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from sinkinterp.fileio import write_bytes, write_json  # noqa: E402


# Every toy-scale run: its name and the ``--set`` overrides of configs/cpu_calib_wd05.json that make
# it (the form ``_overrides`` prints; a test checks each snapshot's train_config.json against its
# recipe). ``--train NAME ...`` trains and snapshots them one after another.
BOS = 'data.transforms=[{"kind":"fixed_token","positions":[0],"token_id":"bos"}]'
SEED1 = ["seed=1", "model.seed=1", "data.seed=1"]
SEED2 = ["seed=2", "model.seed=2", "data.seed=2"]
SEED3 = ["seed=3", "model.seed=3", "data.seed=3"]
RECIPES: dict[str, list[str]] = {
    "c_softmax": [],
    "c_kv": ['model.attn_bias="kv"'],
    "c_bos": [BOS],
    "c_bos_s1": [BOS, *SEED1],
    "c_bos_wd01": [BOS, "weight_decay=0.1"],
    "c_bos_lr3": [BOS, "lr=0.003"],
    "c_bos_lr2e3_3k": [BOS, "lr=0.002", "steps=3000"],
    "c_kvbos": [BOS, 'model.attn_bias="kv"'],
    "c_kvbos_s1": [BOS, 'model.attn_bias="kv"', *SEED1],
    "c_kbos": [BOS, 'model.attn_bias="k"'],
    "c_kbos_s1": [BOS, 'model.attn_bias="k"', *SEED1],
    "c_vbos": [BOS, 'model.attn_bias="v"'],
    "c_vbos_s1": [BOS, 'model.attn_bias="v"', *SEED1],
    "c_sigbos": [BOS, 'model.attn_op="sigmoid"'],
    "c_sigbos_s1": [BOS, 'model.attn_op="sigmoid"', *SEED1],
    "c_siglognbos": [BOS, 'model.attn_op="sigmoid"', 'model.sigmoid_bias="-log n"'],
    "c_signormbos": [BOS, 'model.attn_op="sigmoid_norm"'],
    "c_kvsharedbos": [BOS, 'model.attn_bias="kv"', "model.attn_bias_shared=true"],
    "c_sinktokbos": [BOS, 'model.attn_bias="sink_token"'],
    "c_elu1bos": [BOS, 'model.attn_op="elu1"'],
    "c_postbos": [BOS, 'model.norm_placement="post"'],
    "c_nopebos": [BOS, 'model.pos_emb="none"'],
    "c_gatebos": [BOS, "model.attn_gate=true"],
    "c_sinktok": ['model.attn_bias="sink_token"'],
    "c_siglognbos_s1": [BOS, 'model.attn_op="sigmoid"', 'model.sigmoid_bias="-log n"', *SEED1],
    # not run yet (docs/reproduction.md, "What is still missing")
    "c_sinklogitbos": [BOS, 'model.attn_bias="sink_logit"'],
    "c_bos_wd01_s1": [BOS, "weight_decay=0.1", *SEED1],
    "c_signormbos_12k": [BOS, 'model.attn_op="sigmoid_norm"', "steps=12000"],
    "c_bos_lr5e4_12k": [BOS, "lr=0.0005", "steps=12000"],
    "c_bos_data1m": [BOS, "data.max_train_tokens=1000000"],
    "c_linelubos": [BOS, 'model.attn_op="linear_elu"'],
    "c_alibibos": [BOS, 'model.pos_emb="alibi"'],
    "c_learnedbos": [BOS, 'model.pos_emb="learned"'],
    "c_sinbos": [BOS, 'model.pos_emb="sinusoidal"'],
    # the same table at the token embeddings' scale (init_std 0.02): position scheme vs a swamped embedding
    "c_sinscalebos": [BOS, 'model.pos_emb="sinusoidal"', "model.sinusoidal_scale=0.02"],
    "c_sinscalebos_s1": [BOS, 'model.pos_emb="sinusoidal"', "model.sinusoidal_scale=0.02", *SEED1],
    "c_relbos": [BOS, 'model.pos_emb="relative"'],
    "c_bos_wd0": [BOS, "weight_decay=0.0"],
    "c_bos_wd2": [BOS, "weight_decay=2.0"],
    "c_bos_wd2_s1": [BOS, "weight_decay=2.0", *SEED1],
    "c_win16bos": [BOS, "model.window=16"],
    "c_win32bos": [BOS, "model.window=32"],
    "c_prefix8": ["model.prefix_len=8"],
    "c_prefix8bos": [BOS, "model.prefix_len=8"],
    "c_rand1": ['data.transforms=[{"kind":"random_tokens","positions":[0]}]'],
    "c_bos2": ['data.transforms=[{"kind":"fixed_token","positions":[1],"token_id":"bos"}]'],
    "c_bos3": ['data.transforms=[{"kind":"fixed_token","positions":[2],"token_id":"bos"}]'],
    "c_rand12": ['data.transforms=[{"kind":"random_tokens","positions":[0,1]}]'],
    "c_bos_bs4": [BOS, "data.batch_size=4"],
    "c_gatebos_s1": [BOS, "model.attn_gate=true", *SEED1],
    "c_postbos_s1": [BOS, 'model.norm_placement="post"', *SEED1],
    "c_nopebos_s1": [BOS, 'model.pos_emb="none"', *SEED1],
    "c_elu1bos_s1": [BOS, 'model.attn_op="elu1"', *SEED1],
    "c_alibibos_s1": [BOS, 'model.pos_emb="alibi"', *SEED1],
    "c_sinktokbos_s1": [BOS, 'model.attn_bias="sink_token"', *SEED1],
    "c_kvsharedbos_s1": [BOS, 'model.attn_bias="kv"', "model.attn_bias_shared=true", *SEED1],
    "c_linelubos_s1": [BOS, 'model.attn_op="linear_elu"', *SEED1],
    "c_sinklogitbos_s1": [BOS, 'model.attn_bias="sink_logit"', *SEED1],
    "c_softmax_s1": [*SEED1],
    "c_kv_s1": ['model.attn_bias="kv"', *SEED1],
    "c_relbos_s1": [BOS, 'model.pos_emb="relative"', *SEED1],
    "c_learnedbos_s1": [BOS, 'model.pos_emb="learned"', *SEED1],
    "c_sinbos_s1": [BOS, 'model.pos_emb="sinusoidal"', *SEED1],
    "c_rand1_s1": ['data.transforms=[{"kind":"random_tokens","positions":[0]}]', *SEED1],
    "c_bos2_s1": ['data.transforms=[{"kind":"fixed_token","positions":[1],"token_id":"bos"}]', *SEED1],
    "c_win16bos_s1": [BOS, "model.window=16", *SEED1],
    "c_prefix8_s1": ["model.prefix_len=8", *SEED1],
    "c_signormbos_s1": [BOS, 'model.attn_op="sigmoid_norm"', *SEED1],
    "c_bos_wd0_s1": [BOS, "weight_decay=0.0", *SEED1],
    "c_rand12_s1": ['data.transforms=[{"kind":"random_tokens","positions":[0,1]}]', *SEED1],
    "c_bos_lr3_s1": [BOS, "lr=0.003", *SEED1],
    "c_bos3_s1": ['data.transforms=[{"kind":"fixed_token","positions":[2],"token_id":"bos"}]', *SEED1],
    "c_sinktok_s1": ['model.attn_bias="sink_token"', *SEED1],
    "c_win32bos_s1": [BOS, "model.window=32", *SEED1],
    "c_prefix8bos_s1": [BOS, "model.prefix_len=8", *SEED1],
    "c_bos_lr2e3_3k_s1": [BOS, "lr=0.002", "steps=3000", *SEED1],
    "c_bos_bs4_s1": [BOS, "data.batch_size=4", *SEED1],
    "c_bos_data1m_s1": [BOS, "data.max_train_tokens=1000000", *SEED1],
    "c_signormbos_12k_s1": [BOS, 'model.attn_op="sigmoid_norm"', "steps=12000", *SEED1],
    "c_bos_lr5e4_12k_s1": [BOS, "lr=0.0005", "steps=12000", *SEED1],
    # repetition between 1 and 6 epochs: the same 6,000 steps over 2M (3 epochs) and 3M (2 epochs) tokens
    "c_bos_data2m": [BOS, "data.max_train_tokens=2000000"],
    "c_bos_data3m": [BOS, "data.max_train_tokens=3000000"],
    # controls for the 1M row: the same 1M tokens' worth spread over the whole corpus in 4,096-token
    # blocks (6 epochs, every package), and the corpus' first 6.1M tokens seen once (its first packages only)
    "c_bos_data1m_spread": [BOS, "data.max_train_tokens=1000000", "data.max_train_tokens_spread=4096"],
    "c_bos_data6m": [BOS, "data.max_train_tokens=6144000"],
    "c_bos_data1m_spread_s1": [BOS, "data.max_train_tokens=1000000", "data.max_train_tokens_spread=4096", *SEED1],
    "c_bos_data2m_s1": [BOS, "data.max_train_tokens=2000000", *SEED1],
    "c_bos_data3m_s1": [BOS, "data.max_train_tokens=3000000", *SEED1],
    "c_bos_data6m_s1": [BOS, "data.max_train_tokens=6144000", *SEED1],
    # the rest of the paper's weight-decay sweep: wd 1 (37.71 there) and wd 5, where its sink collapses (0.01)
    "c_bos_wd5": [BOS, "weight_decay=5.0"],
    "c_bos_wd5_s1": [BOS, "weight_decay=5.0", *SEED1],
    "c_bos_wd1": [BOS, "weight_decay=1.0"],
    "c_bos_wd1_s1": [BOS, "weight_decay=1.0", *SEED1],
    # wd 2 for twice the steps: twice the total decay sum_t lr_t * wd (13.2, near the paper's 16.0 at wd 2,
    # where its sink had fallen to 6.13) against more training (the sink grows with steps at wd 0.5)
    "c_bos_wd2_12k": [BOS, "weight_decay=2.0", "steps=12000"],
    "c_bos_wd2_12k_s1": [BOS, "weight_decay=2.0", "steps=12000", *SEED1],
    # wd 5 for twice the steps: total decay 33.0, near the paper's 39.9 at wd 5 (Sink_1 0.01 there); at
    # 6,000 steps the two seeds split (17.9 / 0.0)
    "c_bos_wd5_12k": [BOS, "weight_decay=5.0", "steps=12000"],
    "c_bos_wd5_12k_s1": [BOS, "weight_decay=5.0", "steps=12000", *SEED1],
    # the baseline (wd 0.5) for twice the steps: the 12k-step anchor of the weight-decay runs above
    # (total decay 6.6) and of the lr x steps rows (the same lr for twice the steps)
    "c_bos_12k": [BOS, "steps=12000"],
    "c_bos_12k_s1": [BOS, "steps=12000", *SEED1],
    # beyond the paper: softmax-off-by-one (Miller 2023; Kaul et al. 2024's softmax-1), a sink logit held at 0
    # (value 0) beside the learned one of c_sinklogitbos: does a slot the model cannot tune still take the sink?
    "c_zerologitbos": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=0.0"],
    "c_zerologitbos_s1": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=0.0", *SEED1],
    "c_zerologit": ['model.attn_bias="sink_logit"', "model.sink_logit_fixed=0.0"],
    "c_zerologit_s1": ['model.attn_bias="sink_logit"', "model.sink_logit_fixed=0.0", *SEED1],
    # the same slot held lower: at b < 0 it weighs e^b of a key whose logit is 0, so taking the sink
    # costs that much more lowering of every real logit. Where does the sink go back to token 1?
    "c_logitm05bos": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-0.5"],
    "c_logitm05bos_s1": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-0.5", *SEED1],
    # its two seeds split (one sinks on the slot, one on BOS): two more seeds for the odds
    "c_logitm05bos_s2": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-0.5", *SEED2],
    "c_logitm05bos_s3": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-0.5", *SEED3],
    "c_logitm1bos": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-1.0"],
    "c_logitm1bos_s1": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-1.0", *SEED1],
    "c_logitm2bos": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-2.0"],
    "c_logitm2bos_s1": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-2.0", *SEED1],
    "c_logitm4bos": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-4.0"],
    "c_logitm4bos_s1": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_fixed=-4.0", *SEED1],
    # held at -1 without BOS: with no fixed first token to compete with, does the slot take the sink that
    # it leaves to BOS at -1 (and that it takes at 0 with or without BOS)?
    "c_logitm1": ['model.attn_bias="sink_logit"', "model.sink_logit_fixed=-1.0"],
    "c_logitm1_s1": ['model.attn_bias="sink_logit"', "model.sink_logit_fixed=-1.0", *SEED1],
    # a second phase of 2,000 steps from the shipped toy-softmax (c_bos trained, its sink on BOS):
    # with a slot held at 0 added, does the slot take over an established sink? And the same phase
    # without the slot, the control (`init_from`: the weights start from the model, the schedule anew)
    "c_ft_zerologitbos": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"', 'model.attn_bias="sink_logit"',
                          "model.sink_logit_fixed=0.0", "steps=2000"],
    "c_ft_bos": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"', "steps=2000"],
    "c_ft_zerologitbos_s1": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"', 'model.attn_bias="sink_logit"',
                             "model.sink_logit_fixed=0.0", "steps=2000", *SEED1],
    # the other way: c_zerologitbos's slot (held at 0) has the sink; held at -1 for 2,000 more steps, does
    # the sink go back to BOS (as in c_logitm1bos from scratch)? Needs runs/cpu/c_zerologitbos (train it first)
    "c_ft_m1fromzerobos": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                           "model.sink_logit_fixed=-1.0", "steps=2000"],
    "c_ft_m1fromzerobos_s1": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                              "model.sink_logit_fixed=-1.0", "steps=2000", *SEED1],
    # its control: the same phase with the slot left at 0
    "c_ft_zerofromzerobos": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                             "model.sink_logit_fixed=0.0", "steps=2000"],
    "c_ft_zerofromzerobos_s1": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                                "model.sink_logit_fixed=0.0", "steps=2000", *SEED1],
    # both second phases at a lower peak lr (3e-4 instead of 1e-3, the same warm-up and cosine): does the result
    # hang on the schedule warming up again to the from-scratch peak?
    "c_ft_zerologitbos_lr3e4": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"', 'model.attn_bias="sink_logit"',
                                "model.sink_logit_fixed=0.0", "steps=2000", "lr=0.0003"],
    "c_ft_m1fromzerobos_lr3e4": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                                 "model.sink_logit_fixed=-1.0", "steps=2000", "lr=0.0003"],
    # both second phases for the config's 6,000 steps instead of 2,000 (warm-up, cosine over 6,000):
    # does the slot added to toy-softmax take the sink given as long as from scratch, and does the lowered
    # slot give back the half it keeps?
    "c_ft_zerologitbos_6k": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"', 'model.attn_bias="sink_logit"',
                             "model.sink_logit_fixed=0.0"],
    "c_ft_m1fromzerobos_6k": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                              "model.sink_logit_fixed=-1.0"],
    # ... with a second seed (the phase's data order; the source model is the same, the held slot has no parameters)
    "c_ft_zerologitbos_6k_s1": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"', 'model.attn_bias="sink_logit"',
                                "model.sink_logit_fixed=0.0", *SEED1],
    "c_ft_m1fromzerobos_6k_s1": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                                 "model.sink_logit_fixed=-1.0", *SEED1],
    # their controls over the same 6,000 steps: toy-softmax unchanged (does token 1's sink grow as much without the
    # slot?), and c_zerologitbos with its slot left at 0 (how much does the slot keep with no change at all?)
    "c_ft_bos_6k": [BOS, 'init_from="sinkinterp/assets/models/toy-softmax"'],
    "c_ft_zerofromzerobos_6k": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                                "model.sink_logit_fixed=0.0"],
    # the reverse phase and its control over 12,000 steps (twice the config's; warm-up, cosine over 12,000): over
    # 2,000 steps the lowered slot keeps about half its control's share, over 6,000 a third; does it fall to none?
    "c_ft_m1fromzerobos_12k": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                               "model.sink_logit_fixed=-1.0", "steps=12000"],
    "c_ft_zerofromzerobos_12k": [BOS, 'init_from="runs/cpu/c_zerologitbos"', 'model.attn_bias="sink_logit"',
                                 "model.sink_logit_fixed=0.0", "steps=12000"],
    # the forward phase from a second source model: c_bos_s1 (the baseline's second seed, its sink on BOS; needs
    # runs/cpu/c_bos_s1, `--train c_bos_s1` first, about 40 minutes of one core)
    "c_ft_zerologitbos_src1": [BOS, 'init_from="runs/cpu/c_bos_s1"', 'model.attn_bias="sink_logit"',
                               "model.sink_logit_fixed=0.0", "steps=2000"],
    # the reverse phase and its control from a second source model: c_zerologitbos_s1 (its slot has the sink too;
    # needs runs/cpu/c_zerologitbos_s1, `--train c_zerologitbos_s1` first)
    "c_ft_m1fromzerobos_src1": [BOS, 'init_from="runs/cpu/c_zerologitbos_s1"', 'model.attn_bias="sink_logit"',
                                "model.sink_logit_fixed=-1.0", "steps=2000"],
    "c_ft_zerofromzerobos_src1": [BOS, 'init_from="runs/cpu/c_zerologitbos_s1"', 'model.attn_bias="sink_logit"',
                                  "model.sink_logit_fixed=0.0", "steps=2000"],
    # a learned logit started at -2 instead of 0: is the slot's sink decided by where the logit starts?
    "c_sinklogitinitm2bos": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_init=-2.0"],
    "c_sinklogitinitm2bos_s1": [BOS, 'model.attn_bias="sink_logit"', "model.sink_logit_init=-2.0", *SEED1],
}


def train_commands(names: list[str], runs_dir: str = "runs/cpu") -> list[list[str]]:
    """The commands ``--train`` runs for each recipe: train (resuming a partial run), then snapshot."""
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        raise ValueError(f"--train takes run names from RECIPES ({', '.join(RECIPES)}), got {unknown or 'none'}")
    out = []
    for name in names:
        train = [sys.executable, "-m", "sinkinterp.train", "train", str(BASE.relative_to(ROOT)),
                 "--out", f"{runs_dir}/{name}", "--quiet"]
        for s in RECIPES[name]:
            train += ["--set", s]
        out += [train, [sys.executable, str(Path(__file__).relative_to(ROOT)), "--snapshot", f"{runs_dir}/{name}"]]
    return out


def train_recipes(names: list[str], dry_run: bool = False) -> int:
    import shlex
    import subprocess

    try:
        commands = train_commands(names)
    except ValueError as err:
        print(f"cpu_calibration: {err}", file=sys.stderr)
        return 2
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            if rc:
                print(f"cpu_calibration: exit status {rc}; rerunning the same --train resumes", file=sys.stderr)
                return rc
    return 0


def _overrides(cfg: dict, base: dict, prefix: str = "") -> list[str]:
    """The settings of ``cfg`` that differ from ``base`` (both full TrainConfig dicts), as the
    ``--set KEY=VALUE`` strings that produce them."""
    out = []
    for key, value in cfg.items():
        ref = base.get(key)
        if isinstance(value, dict) and isinstance(ref, dict):
            out += _overrides(value, ref, f"{prefix}{key}.")
        elif value != ref:
            out.append(f"{prefix}{key}={json.dumps(value, separators=(',', ':'))}")
    return out


PROBE_EPS = (0.1, 0.2, 0.3)


def probe(checkpoint: Path) -> dict:
    """How close a checkpoint is to a sink: on the run's own sink-tracking windows, the largest
    per-head alpha_1 and Sink_1 at a few thresholds (``measure(..., first_keys=4)``)."""
    import torch

    from sinkinterp.measure import measure
    from sinkinterp.models import load_checkpoint, read_checkpoint_info
    from sinkinterp.train.config import TrainConfig
    from sinkinterp.train.trainer import sink_tracking_tokens

    info = read_checkpoint_info(checkpoint)
    cfg = TrainConfig.from_dict(info["extra"]["train_config"])
    with torch.no_grad():
        report = measure(load_checkpoint(checkpoint).eval(), sink_tracking_tokens(cfg), first_keys=4,
                         eps_grid=PROBE_EPS, norms=False, qk_heads="none")
    at = {f"{e:g}": float(report.sink1_by_eps[list(report.eps_grid.round(6)).index(round(e, 6))]) for e in PROBE_EPS}
    out = {"step": info["extra"]["step"], "alpha1_max": float(report.alpha.max()),
           "alpha1_mean": float(report.alpha.mean()), "sink1_by_eps": at}
    if report.alpha_bias is not None:
        out["alpha_bias_max"] = float(report.alpha_bias.max())
    return out


REPORT = dict(seq_len=64, num_seqs=100, eps=0.3, seed=0)  # the report protocol (sinkinterp report)
FINAL_INTERVENTIONS = (("ablate", True), ("ablate", False), ("zero_value", True))  # (kind, renormalize)
SLOT_INTERVENTIONS = (("ablate_bias", True), ("ablate_bias", False), ("bias_to_first", True))


def _qk_grids(qk: dict, n_layers: int, n_heads: int) -> dict[str, list[list[float]]]:
    """The measurement's per-head q.k factors as [layer][head] grids."""
    import numpy as np

    out = {}
    for key in ("cos_q_k1", "cos_q_krest", "k1_norm", "k_rest_norm", "q_norm", "logit_q_k1", "logit_q_krest",
                "bias_q_k1", "bias_q_krest", "cos_q_kstar", "logit_q_kstar", "kstar_norm"):
        if key not in qk:  # a position bias (ALiBi, T5 buckets) or a learned k* only where the model has one
            continue
        grid = np.full((n_layers, n_heads), np.nan)
        for (layer, head), val in zip(qk["heads"], qk[key]):
            grid[layer, head] = val
        out[key] = grid.round(4).tolist()
    if "pairs" in qk:  # what the means ran over (the pairs in sight under a window or a prefix)
        out["pairs"] = qk["pairs"]
    return out


def _slot_logits(model) -> list[list[float]] | None:
    """The logit of the sink-logit slot per [layer][head] (``attn_bias="sink_logit"``: learned, or
    held by ``sink_logit_fixed``; one shared value is repeated over the heads); None for other models."""
    if getattr(model.cfg, "attn_bias", None) != "sink_logit":
        return None
    return [[round(float(x), 4) for x in block.attn.sink_logit.detach().expand(model.cfg.n_heads)]
            for block in model.blocks]


def _seed0_val_loss(model, checkpoint: Path | str) -> float | None:
    """Validation loss on the held-out windows a data.seed = 0 run logs as ``val_loss`` (the run's
    own transforms), so runs with other data seeds compare on the same 4,096 tokens; None without
    the run's train_config.json or the shard folder."""
    import dataclasses

    import torch

    from sinkinterp.train.config import TrainConfig
    from sinkinterp.train.trainer import held_out_batches

    cfg_file = Path(checkpoint).parent.parent / "train_config.json" if isinstance(checkpoint, Path) else None
    if cfg_file is None or not cfg_file.is_file():
        return None
    cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
    if not Path(cfg.data.shard_dir).is_dir():
        return None
    batches = held_out_batches(cfg.replace(data=dataclasses.replace(cfg.data, seed=0)))
    with torch.no_grad():
        return float(torch.stack([model(b, return_type="loss").float() for b in batches]).mean())


def _block_stats(model, tokens) -> dict:
    """What the residual-stream norms miss in two variants, from one hooked forward pass.

    ``massive_ratio_sums``: per layer, the massive-activation ratio ||s_1|| / mean_t>1 ||s_t|| (means
    over sequences) of the two sums each block normalizes or passes on, x + attn_out and
    mid + mlp_out, the larger of the two. In a pre-norm model those sums are hook_resid_mid /
    hook_resid_post; in a post-norm model they are what the norms flatten, so the residual stream
    (normalized there) cannot show a massive activation while these can.
    ``gate_mean`` (gated attention only): per [layer][head], the mean sigmoid gate over queries
    t > 1, and ``gate_mean_first`` at query 1 -- a head can switch itself off by its gate instead of
    attending to a sink."""
    import numpy as np
    import torch

    from sinkinterp import tl_adapter

    L = model.cfg.n_layers
    pending: dict[str, torch.Tensor] = {}  # the residual a block adds to, until the addition arrives
    norms: dict[str, torch.Tensor] = {}  # [batch, pos] norms of each sum
    gates: dict[int, torch.Tensor] = {}  # [pos, head] mean gate

    def keep(name):
        def hook(x, hook):
            pending[name] = x.detach()
        return hook

    def add(base, name):
        def hook(x, hook):
            norms[name] = (pending.pop(base) + x.detach()).float().norm(dim=-1)
        return hook

    def gate(layer):
        def hook(x, hook):
            gates[layer] = x.detach().float().mean(dim=(0, 3))
        return hook

    hooks = []
    for l in range(L):
        b = f"blocks.{l}."
        hooks += [(b + "hook_resid_pre", keep(b + "pre")), (b + "hook_attn_out", add(b + "pre", b + "attn")),
                  (b + "hook_resid_mid", keep(b + "mid")), (b + "hook_mlp_out", add(b + "mid", b + "mlp"))]
    gated = bool(getattr(model.cfg, "attn_gate", False))
    if gated:
        hooks += [(f"blocks.{l}.attn.hook_gate", gate(l)) for l in range(L)]
    with torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
        model(torch.as_tensor(tokens))  # the report's tokens are a numpy array

    def ratio(n):
        return float(n[:, 0].mean() / n[:, 1:].mean().clamp_min(1e-30))

    out = {"massive_ratio_sums": [round(max(ratio(norms[f"blocks.{l}.attn"]), ratio(norms[f"blocks.{l}.mlp"])), 3)
                                  for l in range(L)]}
    if gated:
        g = np.stack([gates[l].numpy() for l in range(L)])  # [L, pos, H]
        out["gate_mean"] = g[:, 1:, :].mean(axis=1).astype(float).round(4).tolist()
        out["gate_mean_first"] = g[:, 0, :].astype(float).round(4).tolist()
    return out


def _window_stats(model, tokens, eps: float = REPORT["eps"], window: int | None = None) -> dict | None:
    """What Sink_1 cannot show under a sliding window w < T (query t sees keys t - w < s <= t, so
    alpha_1 <= w / T): the same metric over the queries that still see token 1, and where the
    attention goes once token 1 has left the window. None without a window shorter than T.

    Per layer and head, with a per-sequence threshold as Sink_k^eps uses: ``sink1_within_window`` (%
    of heads x sequences whose mean attention on token 1 over the queries t <= w exceeds eps),
    ``alpha1_within_window`` [layer][head] (that mean, averaged over sequences),
    ``alpha_window_start`` [layer][head] (attention on the oldest visible key t - w + 1, mean over
    queries t > w) and ``sink_window_start`` (its thresholded share): a sink that follows the window
    edge shows there, a sink tied to token 1 does not.

    ``window`` measures the same queries of a model without a window (the reference a windowed
    run is compared with); by default the model's own window."""
    import torch

    from sinkinterp import tl_adapter

    w, T = window or getattr(model.cfg, "window", None), int(tokens.shape[-1])
    if w is None or w >= T:
        return None
    L = model.cfg.n_layers
    inside: dict[int, torch.Tensor] = {}  # [batch, head] mean attention on token 1 over queries t <= w
    edge: dict[int, torch.Tensor] = {}  # [batch, head] mean attention on key t - w + 1 over queries t > w
    q = torch.arange(w, T)

    def hook(layer):
        def fn(pattern, hook):
            p = pattern.detach().double()
            inside[layer] = p[:, :, :w, 0].mean(-1)
            edge[layer] = p[:, :, q, q - w + 1].mean(-1)
        return fn

    with torch.no_grad(), tl_adapter.attached_hooks(model, [(f"blocks.{l}.attn.hook_pattern", hook(l))
                                                            for l in range(L)]):
        model(torch.as_tensor(tokens))
    a_in, a_edge = torch.stack([inside[l] for l in range(L)]), torch.stack([edge[l] for l in range(L)])
    return {"window": int(w), "sink1_within_window": float(100 * (a_in > eps).float().mean()),
            "alpha1_within_window": a_in.mean(1).round(decimals=4).tolist(),
            "sink_window_start": float(100 * (a_edge > eps).float().mean()),
            "alpha_window_start": a_edge.mean(1).round(decimals=4).tolist()}


def _massive_by_position(resid, k: int) -> list[float]:
    """For positions 1..k: the largest over layers of ||x_k|| / mean ||x_j|| over the other positions
    (resid: the measurement's [L + 1, T] mean residual norms by position); the massive-activation
    ratio asked of a position other than the first, where a moved fixed token may carry it."""
    import numpy as np

    resid = np.asarray(resid, dtype=float)
    out = []
    for pos in range(k):
        rest = np.delete(resid, pos, axis=1).mean(1)
        out.append(round(float((resid[:, pos] / np.maximum(rest, 1e-30)).max()), 3))
    return out


def _train_config(checkpoint: Path | str) -> dict:
    """The train_config a checkpoint folder was written with ({} for anything else)."""
    from sinkinterp.models import read_checkpoint_info

    if not Path(checkpoint).is_dir():
        return {}
    return read_checkpoint_info(checkpoint).get("extra", {}).get("train_config") or {}


def _transformed_tokens(lm, tokens, transforms: list[dict]):
    """The report's tokens with a run's data transforms (random / fixed tokens at positions) applied,
    random draws from seed REPORT["seed"]; None when the run trained without them or only with BOS
    first (the report already prepends BOS then)."""
    import numpy as np

    from sinkinterp.data.transforms import TransformSpec, apply_transforms

    specs = [TransformSpec.from_dict(t) for t in transforms]
    if all(s.kind == "fixed_token" and s.positions == (0,) and s.token_id == "bos" for s in specs):
        return None
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    built = [s.build(lm.d_vocab, 0 if eos is None else int(eos), lm.bos_token_id) for s in specs]
    return apply_transforms(np.asarray(tokens), built, np.random.default_rng(REPORT["seed"]))


def final_report(checkpoint: Path | str) -> dict:
    """The last checkpoint measured as ``sinkinterp report`` measures the shipped models: the shipped
    natural-text sample, T 64, 100 sequences, eps 0.3, BOS first when the run trained with it."""
    import torch

    from sinkinterp.inputs import make_tokens
    from sinkinterp.loading import load_model
    from sinkinterp.measure import measure

    lm = load_model(str(checkpoint))  # a checkpoint folder, or a shipped model's name
    bos = bool(lm.info.get("bos_first"))
    tokens = make_tokens("natural", seq_len=REPORT["seq_len"], num_seqs=REPORT["num_seqs"], seed=REPORT["seed"],
                         vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, prepend_bos=bos,
                         bos_token_id=lm.bos_token_id)
    with torch.no_grad():
        rep = measure(lm.model.eval(), tokens, eps=REPORT["eps"], qk_heads="all")
    out = {"checkpoint": getattr(checkpoint, "name", checkpoint), "bos_first": bos, **REPORT, "sink1": float(rep.sink_pct[0]),
           "sink2": float(rep.sink_pct[1]), "sink_bias": rep.sink_bias_pct,
           "sink_by_key": rep.sink_pct.round(2).tolist(),  # Sink_k for k = 1..10 (a prefix LM's sink may sit later)
           "massive_ratio": float(rep.norms["resid"]["massive_ratio"].max()),
           # per [layer][head]: which heads carry the sink (compared across seeds)
           "heads": {"alpha1": rep.alpha_by_key[:, :, 0].round(4).tolist(),
                     "sink_rate1": rep.head_sink_rate.round(2).tolist(),
                     "alpha_bias": None if rep.alpha_bias is None else rep.alpha_bias.round(4).tolist(),
                     # attention on token 1 at every query position, mean over each layer's heads
                     # (where alpha_1 comes from; under a window it ends at the window's edge)
                     "attn1_by_query": rep.attn1_by_query.mean(1).round(4).tolist(),
                     # q.k = |q||k|cos per head (keys after rotary; k_s: every key after the first)
                     "qk": _qk_grids(rep.qk, rep.n_layers, rep.n_heads),
                     # the sink-logit slot's own logit per [layer][head] (learned, or held), else None
                     "slot_logit": _slot_logits(lm.model)}}
    out.update(_block_stats(lm.model, tokens))
    win = _window_stats(lm.model, tokens)
    if win is not None:
        out["window_stats"] = win
    transforms = (_train_config(checkpoint).get("data") or {}).get("transforms") or []
    moved = _transformed_tokens(lm, tokens, transforms) if transforms else None
    if moved is not None:  # measured again on inputs shaped like the run's training windows
        with torch.no_grad():
            rep_t = measure(lm.model.eval(), moved, eps=REPORT["eps"], norms=True, qk_heads="none")
        out["with_transforms"] = {"transforms": transforms, "sink_by_key": rep_t.sink_pct[:4].round(2).tolist(),
                                  "massive_ratio": float(rep_t.norms["resid"]["massive_ratio"].max()),
                                  "massive_ratio_by_key": _massive_by_position(rep_t.norms["resid"]["by_position"], 4),
                                  "alpha_by_key": rep_t.alpha_by_key[:, :, :4].round(4).tolist()}
    # the key-bias interventions on token 1 of the first 32 sequences (toy_interventions' settings),
    # on the inputs the run trained on: with its transforms where it had some besides BOS first
    from sinkinterp import interventions as iv

    kinds = list(FINAL_INTERVENTIONS) + (list(SLOT_INTERVENTIONS) if rep.sink_bias_pct is not None else [])

    def intervene(inputs) -> dict:
        results = iv.compare(lm.model, inputs[:32], [iv.first_token(k, renormalize=r) for k, r in kinds],
                             eps=REPORT["eps"])
        return {r.name: {"delta_loss": r.delta_loss, "sink1": float(r.sink.sink_pct[0]),
                         "sink_bias": r.sink.sink_bias_pct} for r in results}

    out["interventions"] = intervene(tokens)
    if moved is not None:
        out["with_transforms"]["interventions"] = intervene(moved)
    common = _seed0_val_loss(lm.model, checkpoint)
    if common is not None:
        out["val_loss_seed0_windows"] = common
    return out


def snapshot(run_dirs: list[str]) -> int:
    for run in map(Path, run_dirs):
        if not (run / "metrics.jsonl").is_file() or not (run / "train_config.json").is_file():
            print(f"cpu_calibration: {run} is not a training run folder", file=sys.stderr)
            return 2
        dest = DATA / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("metrics.jsonl", "train_config.json"):
            write_bytes(dest / f, (run / f).read_bytes())
        probes_file = dest / "probes.json"
        probes = json.loads(probes_file.read_text()) if probes_file.is_file() else {}
        for ckpt in sorted((run / "checkpoints").glob("step_*")):
            if ckpt.name not in probes and (ckpt / "config.json").is_file():
                probes[ckpt.name] = probe(ckpt)
        write_json(probes_file, dict(sorted(probes.items())))
        steps = json.loads((run / "train_config.json").read_text())["steps"]
        last = run / "checkpoints" / f"step_{steps:07d}"
        final_file = dest / "final.json"
        if (last / "config.json").is_file() and not final_file.is_file():
            write_json(final_file, final_report(last))
        print(f"snapshot {run} -> {dest} ({len(probes)} checkpoints probed"
              f"{', final checkpoint measured' if final_file.is_file() else ''})")
    return 0


def _runs() -> dict[str, tuple[dict, list[dict]]]:
    out = {}
    for folder in sorted(p for p in DATA.glob("*") if p.is_dir()):
        cfg = json.loads((folder / "train_config.json").read_text())
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out[folder.name] = (cfg, rows)
    return out


def _probes() -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(DATA.glob("*/probes.json"))}


def _figure(runs: dict[str, tuple[dict, list[dict]]]) -> None:
    from sinkinterp.figures import _plt, save_figure

    plt = _plt()  # the project's matplotlib set-up (Agg unless inline)
    ncol = 6  # the legend of every run goes under the panels, ncol names a row
    legend_h = 0.16 * -(-len(runs) // ncol)  # inches
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6 + legend_h))
    # one color per recipe (a row of PAPER_ROWS, or a run of its own), one line style per seed, so
    # the seeds of a recipe read as a band
    recipe: dict[str, tuple[int, int]] = {}
    for r, (_, names, _) in enumerate(PAPER_ROWS):
        for k, n in enumerate(names):
            recipe.setdefault(n, (r, k))
    extra = iter(range(len(PAPER_ROWS), 10**6))
    cmap = plt.get_cmap("tab20")  # the 10 strong colors first, then their light partners
    for name, (_, rows) in runs.items():
        tracked = [r for r in rows if r.get("sink1") is not None]
        steps = [r["step"] for r in tracked]
        color_index, seed_index = recipe.get(name) or (next(extra), 0)
        style = dict(marker=".", markersize=3, label=name, color=cmap((2 * color_index + color_index // 10) % 20),
                     linestyle=("-", "--", ":", "-.")[seed_index % 4])
        axes[0].plot(steps, [r["sink1"] for r in tracked], **style)
        if any(r.get("sink_bias") is not None for r in tracked):
            axes[1].plot(steps, [r["sink_bias"] for r in tracked], **style)
        axes[2].plot(steps, [r["massive_ratio"] for r in tracked], **style)
    for ax, title in zip(axes, ("Sink_1 (%), eps 0.3", "Sink_* on k*/v* (%), eps 0.3",
                                "max ||h_1|| / mean ||h_t||")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (3.6 + legend_h), 1, 1))
    save_figure(fig, FIG, palette=True)


def _slot_key(cfg: dict) -> tuple[str, float]:
    """A sink-logit run's slot as (label, start): "held b" / "learned from b", b the held value or the start."""
    held = cfg["model"].get("sink_logit_fixed")
    if held is not None:
        return f"held {held:+g}", float(held)
    start = float(cfg["model"].get("sink_logit_init", 0.0))
    return f"learned from {start:+g}", start


def _slot_runs(runs: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    """The runs whose attention has a sink-logit slot (held or learned)."""
    return [n for n, (cfg, _) in runs.items() if cfg.get("model", {}).get("attn_bias") == "sink_logit"]


def _slot_figure(runs: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    """Sink_* on the slot and Sink_1 along training for every sink-logit run, one color per held value or
    learned start, a marker for BOS first or not, a line style per seed; the runs it drew (none: no figure)."""
    from sinkinterp.figures import _plt, save_figure

    names = _slot_runs(runs)
    if not names:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sorted({_slot_key(runs[n][0]) for n in names}, key=lambda k: (k[0].startswith("learned"), -k[1]))
    cmap = plt.get_cmap("tab10")
    for name in names:
        cfg, rows = runs[name]
        key = _slot_key(cfg)
        bos = any(t.get("kind") == "fixed_token" and t.get("token_id") == "bos" and list(t.get("positions", [])) == [0]
                  for t in cfg.get("data", {}).get("transforms") or [])
        tracked = [r for r in rows if r.get("sink1") is not None]
        style = {"color": cmap(keys.index(key) % 10), "marker": "." if bos else "x",
                 "markersize": 4, "linestyle": ("-", "--", ":", "-.")[int(cfg.get("seed", 0)) % 4],
                 "label": f"{name} ({key[0]}{'' if bos else ', no BOS'}"
                          + (f", 2nd phase from {Path(cfg['init_from']).name})" if cfg.get("init_from") else ")")}
        steps = [r["step"] for r in tracked]
        axes[0].plot(steps, [r.get("sink_bias") or 0.0 for r in tracked], **style)
        axes[1].plot(steps, [r["sink1"] for r in tracked], **style)
    for ax, title in zip(axes, ("Sink_* on the slot (%), eps 0.3", "Sink_1 (%), eps 0.3")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               frameon=False)
    fig.tight_layout()
    save_figure(fig, SLOT_FIG, palette=True)
    return names


def _finals() -> dict[str, dict]:
    """final.json of every snapshot that has per-head numbers, in PAPER_ROWS order (seeds together)."""
    order = [n for _, names, _ in PAPER_ROWS for n in names]
    out = {}
    for name in order + sorted(p.name for p in DATA.glob("*") if p.is_dir()):
        f = DATA / name / "final.json"
        if name not in out and f.is_file():
            fin = json.loads(f.read_text())
            if "heads" in fin:
                out[name] = fin
    return out


def _sink_map(fin: dict) -> tuple[list[list[float]], str]:
    """Per [layer][head] mean attention on the sink: the slot for bias models, else token 1."""
    if fin["heads"].get("alpha_bias") is not None:
        return fin["heads"]["alpha_bias"], "alpha_*"
    return fin["heads"]["alpha1"], "alpha_1"


def _heads_figure(finals: dict[str, dict]) -> None:
    import numpy as np

    from sinkinterp.figures import _plt, save_figure

    plt = _plt()
    n = len(finals)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax, (name, fin) in zip(axes.flat, finals.items()):
        grid, what = _sink_map(fin)
        im = ax.imshow(np.array(grid), vmin=0, vmax=1, cmap="viridis")
        for (layer, head), val in np.ndenumerate(np.array(grid)):
            ax.text(head, layer, f"{val:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if val < 0.5 else "black")
        ax.set_title(f"{name}\n{what}", fontsize=7)
        ax.set_xlabel("head", fontsize=6)
        ax.set_ylabel("layer", fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    save_figure(fig, HEADS_FIG, palette=True)


def _masked(name: str) -> bool:
    """Whether the snapshot's run trained with a sliding window or a prefix."""
    f = DATA / name / "train_config.json"
    model = json.loads(f.read_text()).get("model", {}) if f.is_file() else {}
    return model.get("window") is not None or (model.get("prefix_len") or 0) > 1


def _angle_vs_norm(heads: dict, masked: bool = False) -> str:
    """The angle-vs-norm cell of the heads table; ``masked``: the run has a window or a prefix."""
    import numpy as np

    qk = heads.get("qk")
    if qk is None:
        return "-"
    # snapshots measured before the decomposition kept to the pairs a window / prefix leaves in sight
    stale = " (every causal pair: measured before the q.k means kept to the pairs in sight)" \
        if masked and "pairs" not in qk else ""
    gap = np.array(qk["cos_q_k1"]) - np.array(qk["cos_q_krest"])
    ratio = np.array(qk["k1_norm"]) / np.array(qk["k_rest_norm"])
    sink = np.array(heads["sink_rate1"]) > 50
    text = f"cos gap > 0 in {int((gap > 0).sum())} of {gap.size} heads"
    if sink.any():
        text += (f"; sinking heads: gap {gap[sink].mean():+.2f}, norm ratio "
                 f"{ratio[sink].min():.2f}-{ratio[sink].max():.2f}")
    if "cos_q_kstar" in qk:  # the learned key k*: angle and length against the real keys
        cos_star = np.array(qk["cos_q_kstar"])
        star_ratio = np.array(qk["kstar_norm"]) / np.array(qk["k_rest_norm"])
        text += (f"; k*: cos(q, k*) {np.nanmin(cos_star):+.2f} to {np.nanmax(cos_star):+.2f}, ||k*|| / ||k_s|| "
                 f"{np.nanmin(star_ratio):.2f}-{np.nanmax(star_ratio):.2f}")
    if "bias_q_k1" in qk:  # what a position bias adds to key 1's logit against the later keys' (per head)
        bias_gap = np.array(qk["bias_q_k1"]) - np.array(qk["bias_q_krest"])
        logit_gap = np.array(qk["logit_q_k1"]) - np.array(qk["logit_q_krest"])
        text += (f"; position bias on key 1 minus keys 2..t: {np.nanmin(bias_gap):+.2f} to "
                 f"{np.nanmax(bias_gap):+.2f} (q.k logit gap {np.nanmin(logit_gap):+.2f} to {np.nanmax(logit_gap):+.2f})")
    return text + stale


def _variants_section(finals: dict[str, dict], runs: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    """Post-norm and gated runs: the numbers the residual-stream table cannot show (``_block_stats``)."""
    post = [n for n, f in finals.items() if "massive_ratio_sums" in f
            and runs.get(n, ({}, []))[0].get("model", {}).get("norm_placement") == "post"]
    gated = [n for n, f in finals.items() if "gate_mean" in f]
    slots = [n for n, f in finals.items() if runs.get(n, ({}, []))[0].get("model", {}).get("attn_bias") == "sink_logit"
             and "logit_q_krest" in f["heads"].get("qk", {})]
    out = []
    if slots:
        out += ["", "## Softmax-off-by-one and the sink logit: how the slot takes the sink", "",
                *(["Sink_* on the slot and Sink_1 along training for every sink-logit run (`_slot_figure`; one color",
                   "per held logit or learned logit's start; dots: BOS first, crosses: no BOS; solid, dashed, dotted,",
                   "dash-dot: seeds 0-3; a second phase from a trained model starts at that model's Sink_1), on the",
                   "runs' tracking windows:", "",
                   ("![Sink_* on the slot and Sink_1 along training, per held or learned sink logit]"
                    "(figures/cpu-calibration-slot.png)"), ""] if _slot_runs(runs) else []),
                "With the slot's logit held at b the slot's weight for query t is e^b / (e^b + sum_s exp(s_ts)): the",
                "model cannot raise the slot, only lower every real key's logit (b = 0 is softmax-off-by-one); a learned",
                "logit can rise instead. Per head (0..H-1), on the report sequences: the slot's logit (held, or as",
                "learned), its alpha_*, and the mean q.k logits (`logit_q_k1`, `logit_q_krest` of the q.k",
                "decomposition) on token 1 and on keys 2..t:", "",
                "| run | layer | slot logit | alpha_* | logit on token 1 | logit on keys 2..t |",
                "| --- | ---: | --- | --- | --- | --- |"]
        for n in slots:
            h = finals[n]["heads"]
            held = runs[n][0]["model"].get("sink_logit_fixed")
            kept = h.get("slot_logit")
            for layer, (a, l1, lr) in enumerate(zip(h["alpha_bias"], h["qk"]["logit_q_k1"], h["qk"]["logit_q_krest"])):
                slot = (f"held {held:+.1f}" if held is not None else "learned: not kept" if kept is None
                        else "learned " + " / ".join(f"{x:+.2f}" for x in kept[layer]))
                out.append(f"| {n} | {layer} | {slot} | {' / '.join(f'{x:.2f}' for x in a)} | "
                           f"{' / '.join(f'{x:+.2f}' for x in l1)} | {' / '.join(f'{x:+.2f}' for x in lr)} |")
        learned = [n for n in slots if runs[n][0]["model"].get("sink_logit_fixed") is None
                   and finals[n]["heads"].get("slot_logit") is not None]
        if learned:
            # Adam moves a parameter whose gradient keeps its sign by about lr per update, so a learned
            # logit can get about sum_t lr_t (the decay total at weight decay 1) away from its start
            reach = {n: _decay_total(runs[n][0], weight_decay=1.0) for n in learned}
            out += ["", "Where the learned logits end (from where they start, `sink_logit_init`): " + "; ".join(
                f"{n} {min(map(min, finals[n]['heads']['slot_logit'])):+.2f} to "
                f"{max(map(max, finals[n]['heads']['slot_logit'])):+.2f} "
                f"(from {runs[n][0]['model'].get('sink_logit_init', 0.0):+.1f})" for n in learned)
                + ". Adam moves a parameter whose gradient keeps its sign by about lr per update, so the run's "
                "learning-rate sum (" + ", ".join(f"{reach[n]:.2f}" for n in learned)
                + ") is about as far as one can move from its start."]
        borrowed = [n for n in slots if "heads_source_sink" in finals[n]]
        if borrowed:
            out += ["", "Per-head numbers measured on another copy of the model (`--add-heads`; the snapshot's own "
                    "Sink_1 / Sink_* against the copy's):"]
            for n in borrowed:
                f, g = finals[n], finals[n]["heads_source_sink"]
                out.append(f"- {n}: `{f['heads_source']}`, Sink_1 {f['sink1']:.2f} / {g['sink1']:.2f}, "
                           f"Sink_* {f['sink_bias']:.2f} / {g['sink_bias']:.2f}")
    if post:
        out += ["", "## Post-norm: the massive activation before the norms", "",
                "In a post-norm block the residual stream is the output of a norm, so its massive-activation",
                "ratio is close to 1 by construction. The sums each block normalizes (x + attn_out and",
                "mid + mlp_out; `_block_stats` in the script, report sequences) show what the norms flatten:",
                "", "| run | massive ratio, residual stream (max over layers) | massive ratio of the block sums, layers 0..L-1 |",
                "| --- | ---: | --- |"]
        for n in post:
            f = finals[n]
            out.append(f"| {n} | {f['massive_ratio']:.1f} | {' / '.join(f'{r:.1f}' for r in f['massive_ratio_sums'])} |")
    if gated:
        out += ["", "## Gated attention: what the gates do", "",
                "Mean sigmoid gate per head (`blocks.{l}.attn.hook_gate`, averaged over the head's dimensions and",
                "the report sequences) for queries t > 1, and at query 1; a gate near 0 switches a head off",
                "without a sink. One row per layer, heads 0..H-1:", "",
                "| run | layer | gate, queries t > 1 | gate, query 1 | alpha_1 |", "| --- | ---: | --- | --- | --- |"]
        for n in gated:
            f = finals[n]
            for layer, (g, g1, a) in enumerate(zip(f["gate_mean"], f["gate_mean_first"], f["heads"]["alpha1"])):
                out.append(f"| {n} | {layer} | {' / '.join(f'{x:.2f}' for x in g)} | "
                           f"{' / '.join(f'{x:.2f}' for x in g1)} | {' / '.join(f'{x:.2f}' for x in a)} |")
    return out


def _masks_section(finals: dict[str, dict], runs: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    """Windows, prefixes and moved first tokens: where Sink_1 on the report inputs is the wrong place
    to look (``_window_stats``, ``sink_by_key``, ``with_transforms`` of final.json)."""
    win = [n for n, f in finals.items() if "window_stats" in f]
    prefix = [n for n, f in finals.items() if runs.get(n, ({}, []))[0].get("model", {}).get("prefix_len", 0) > 1
              and "sink_by_key" in f]
    moved = [n for n, f in finals.items() if "with_transforms" in f]
    out = []
    if win:
        out += ["", "## Sliding windows: token 1 while it is visible, the window's edge after", "",
                "Under a window w query t sees keys t - w < s <= t, so alpha_1 <= w / T and Sink_1 over all",
                "queries cannot pass eps once w / T < eps. `_window_stats` applies the metric to the queries",
                "t <= w that still see token 1, and to the oldest visible key (t - w + 1) for the queries after",
                "them: a sink that moves with the window shows on its edge. Report sequences, eps 0.3, % of",
                "heads x sequences; alpha per layer, heads 0..H-1:", "",
                "| run | w | Sink_1 (all queries) | Sink_1, queries t <= w | Sink on the window's edge, t > w | "
                "alpha_1 (t <= w), by layer | alpha on the edge (t > w), by layer |",
                "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
        grid = lambda g: "<br>".join(" / ".join(f"{x:.2f}" for x in layer) for layer in g)  # noqa: E731
        for n in win:
            f, w = finals[n], finals[n]["window_stats"]
            out.append(f"| {n} | {w['window']} | {f['sink1']:.2f} | {w['sink1_within_window']:.2f} | "
                       f"{w['sink_window_start']:.2f} | {grid(w['alpha1_within_window'])} | "
                       f"{grid(w['alpha_window_start'])} |")
            if "reference" in w:
                r = w["reference"]
                out.append(f"| {r['model']} (no window, the same queries) | - | - | {r['sink1_within_window']:.2f} | "
                           f"{r['sink_window_start']:.2f} | {grid(r['alpha1_within_window'])} | "
                           f"{grid(r['alpha_window_start'])} |")
        sizes = sorted({finals[n]["window_stats"]["window"] for n in win})
        out += ["", "Uniform attention over the visible keys gives alpha_1 (t <= w) = H_w / w "
                + ", ".join(f"{sum(1 / t for t in range(1, w + 1)) / w:.3f} for w = {w}" for w in sizes)
                + " and 1 / w on the edge; a reference row is the windowless model measured on the same queries",
                "(`analyses/cpu_calibration.py --window-reference NAME=MODEL`)."]
    if prefix:
        out += ["", "## Prefix LM: which prefix token takes the sink", "",
                "Sink_k (eps 0.3, report sequences without BOS) for the first ten keys; the prefix tokens attend",
                "to each other in both directions and carry no loss.", "",
                "| run | prefix | " + " | ".join(f"Sink_{k}" for k in range(1, 11)) + " |",
                "| --- | ---: |" + " ---: |" * 10]
        for n in prefix:
            p_len = runs[n][0]["model"]["prefix_len"]
            out.append(f"| {n} | {p_len} | " + " | ".join(f"{x:.2f}" for x in finals[n]["sink_by_key"][:10]) + " |")
    if moved:
        out += ["", "## Runs trained with other tokens at the first positions", "",
                "The report inputs (natural text, no BOS) and the same inputs with the run's data transforms",
                "applied (random ids drawn with seed 0), Sink_k in % for k = 1..4:", "",
                "| run | transforms | Sink_1..4, report inputs | Sink_1..4, with the transforms | "
                "massive ratio of positions 1..4, with the transforms | Δ loss, with the transforms: token 1 "
                "ablated / its value zeroed |", "| --- | --- | --- | --- | --- | --- |"]
        for n in moved:
            f, t = finals[n], finals[n]["with_transforms"]
            what = "; ".join(f"{x['kind']} at {x['positions']}" + (f" ({x['token_id']})" if "token_id" in x else "")
                             for x in t["transforms"])
            by_key = t.get("massive_ratio_by_key") or [t["massive_ratio"]]
            iv_t = t.get("interventions", {})
            deltas = " / ".join("-" if k not in iv_t else f"{iv_t[k]['delta_loss']:+.3f}" for k in ("ablate", "zero_value"))
            out.append(f"| {n} | {what} | {' / '.join(f'{x:.2f}' for x in f['sink_by_key'][:4])} | "
                       f"{' / '.join(f'{x:.2f}' for x in t['sink_by_key'])} | {' / '.join(f'{x:.1f}' for x in by_key)} "
                       f"| {deltas} |")
    return out


def _heads_section(finals: dict[str, dict]) -> list[str]:
    if not finals:
        return []
    _heads_figure(finals)
    out = [
        "",
        "## Which heads carry the sink, by run and seed",
        "",
        "Mean attention on the sink per layer and head on the report sequences (token 1 for models",
        "without a slot, the k*/v* slot for models with one; uniform causal attention over 64 positions",
        "gives alpha_1 = 0.074), and the heads that sink on token 1 in more than half of the sequences",
        "(alpha_1 > eps 0.3;",
        "`head_sink_rate` of the measurement). From each snapshot's `final.json` (`heads`; for c_bos, c_kvbos",
        "and c_sigbos computed afterwards from the shipped bf16 models made from their last checkpoints:",
        "`analyses/cpu_calibration.py --add-heads c_bos=toy-softmax c_kvbos=toy-kv-bias c_sigbos=toy-sigmoid`).",
        "",
        "The last column is the paper's LLaMA3-8B question asked of every run: is attention on token 1",
        "made by the angle or by the key's length? cos(q_t, k_1) - cos(q_t, k_s) per head (k_s: every later",
        "key; how many heads have it above 0, and its mean over the sinking heads) beside ||k_1|| / ||k_s||",
        "in the sinking heads (`measure(..., qk_heads=\"all\")`).",
        "",
        "| run | on | layer 0 | layer 1 | layer 2 | layer 3 | heads sinking on token 1 (> 50% of sequences) | "
        "angle vs norm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, fin in finals.items():
        grid, what = _sink_map(fin)
        cells = [" / ".join(f"{v:.2f}" for v in layer) for layer in grid]
        cells += [""] * (4 - len(cells))
        rates = fin["heads"]["sink_rate1"]
        sinking = [f"L{li}H{hi} ({r:.0f}%)" for li, layer in enumerate(rates) for hi, r in enumerate(layer) if r > 50]
        out.append(f"| {name} | {what} | {' | '.join(cells[:4])} | {', '.join(sinking) or 'none'} | "
                   f"{_angle_vs_norm(fin['heads'], _masked(name))} |")
    out += ["", "![Mean attention on the sink per layer and head](figures/cpu-calibration-heads.png)"]
    return out


# The paper's rows at toy scale: (row, runs = seeds of one recipe, the paper's number and the H100
# reference's, ../shared/reference/attention-sink-paper.md sections 4 and 6).
PAPER_ROWS = [
    ("softmax, BOS first, wd 0.5 (the baseline)", ["c_bos", "c_bos_s1"],
     "fixed token at position 1: 74.11 on it (60M, wd 0.1); H100 reference (no BOS, wd 0.5): 20.2 at 6k steps"),
    ("softmax, no BOS, wd 0.5", ["c_softmax", "c_softmax_s1"], "60M: 41.08 (wd 0.5); H100 reference: 0.9 at 3k, 20.2 at 6k"),
    ("softmax, BOS first, wd 0.1", ["c_bos_wd01", "c_bos_wd01_s1"], "60M: 18.18 (wd 0.1) vs 41.08 (wd 0.5); H100: 2.9 vs 20.2 at 6k"),
    ("softmax, BOS first, wd 0", ["c_bos_wd0", "c_bos_wd0_s1"], "60M: 15.20 (wd 0) vs 18.18 (0.1) vs 41.08 (0.5)"),
    ("softmax, BOS first, wd 1", ["c_bos_wd1", "c_bos_wd1_s1"], "60M: 37.71 (wd 1) vs 41.08 (0.5) vs 6.13 (2)"),
    ("softmax, BOS first, wd 2", ["c_bos_wd2", "c_bos_wd2_s1"], "60M: 6.13 (wd 2) vs 41.08 (0.5) vs 0.01 (wd 5, loss 5.24)"),
    ("softmax, BOS first, wd 2 for 12,000 steps (total decay 13.2)", ["c_bos_wd2_12k", "c_bos_wd2_12k_s1"],
     "60M: 6.13 at wd 2 (total decay 16.0)"),
    ("softmax, BOS first, wd 5", ["c_bos_wd5", "c_bos_wd5_s1"], "60M: 0.01 (wd 5), loss 5.24 (wd 0.5: 41.08, loss 3.72)"),
    ("softmax, BOS first, wd 5 for 12,000 steps (total decay 33.0)", ["c_bos_wd5_12k", "c_bos_wd5_12k_s1"],
     "60M: 0.01 at wd 5 (total decay 39.9), loss 5.24"),
    ("softmax, BOS first, wd 0.5 for 12,000 steps (the baseline for twice the steps)", ["c_bos_12k", "c_bos_12k_s1"],
     "60M: 41.08 at wd 0.5, 20k steps; lr 8e-4 32.23 vs 4e-4 18.18 (wd 0.1)"),
    ("softmax, BOS first, lr 3e-3", ["c_bos_lr3", "c_bos_lr3_s1"], "60M: lr 8e-4 32.23 vs 4e-4 18.18"),
    ("softmax, BOS first, lr 2e-3 for 3,000 steps (lr x steps of the baseline)", ["c_bos_lr2e3_3k", "c_bos_lr2e3_3k_s1"],
     "60M: 2e-4 for 40k steps 16.81 vs 4e-4 for 20k 18.18 (equal lr x steps); 2e-4 for 20k 11.21"),
    ("softmax, BOS first, lr 5e-4 for 12,000 steps (lr x steps of the baseline)", ["c_bos_lr5e4_12k", "c_bos_lr5e4_12k_s1"],
     "60M: 2e-4 for 40k steps 16.81 vs 2e-4 for 20k 11.21; 1e-4 for 80k 6.29 vs 20k 2.90"),
    ("softmax, BOS first, batch 4 (a quarter of the baseline's, the same 6,000 steps)", ["c_bos_bs4", "c_bos_bs4_s1"],
     "60M, 20k steps each: batch 0.25M to 2M tokens (1M the default): 16.2-18.2 (no effect)"),
    ("softmax, BOS first, the corpus' first 1M tokens (the King James Bible; 6 epochs)",
     ["c_bos_data1m", "c_bos_data1m_s1"],
     "60M: with 100M tokens or less (vs 5B) the sink stays under 1%"),
    ("softmax, BOS first, the corpus' first 2M tokens (3 epochs)", ["c_bos_data2m", "c_bos_data2m_s1"],
     "not in the paper: between 1M (6 epochs) and the baseline (1 epoch of the whole corpus)"),
    ("softmax, BOS first, the corpus' first 3M tokens (2 epochs)", ["c_bos_data3m", "c_bos_data3m_s1"],
     "not in the paper: between 1M (6 epochs) and the baseline (1 epoch of the whole corpus)"),
    ("softmax, BOS first, the corpus' first 6.1M tokens (1 epoch)", ["c_bos_data6m", "c_bos_data6m_s1"],
     "control: the 1M rows' narrow domain without repetition"),
    ("softmax, BOS first, 1M tokens spread over the corpus (6 epochs)", ["c_bos_data1m_spread", "c_bos_data1m_spread_s1"],
     "control: the 1M rows' repetition without the narrow domain"),
    ("softmax, random token at position 1 (no BOS)", ["c_rand1", "c_rand1_s1"], "27.03"),
    ("softmax, BOS at position 2 (token 1 natural)", ["c_bos2", "c_bos2_s1"], "fixed token at position 2: 69.03 on it"),
    ("softmax, BOS at position 3 (tokens 1-2 natural)", ["c_bos3", "c_bos3_s1"], "fixed token at position 3: 69.64 on it"),
    ("softmax, random tokens at positions 1 and 2 (no BOS)", ["c_rand12", "c_rand12_s1"], "Sink_2 14.08, Sink_1 1.98"),
    ("KV bias (k*, v* per head), BOS first", ["c_kvbos", "c_kvbos_s1"], "Sink_* 72.76, Sink_1 0.04"),
    ("KV bias, no BOS", ["c_kv", "c_kv_s1"], "Sink_* 72.76, Sink_1 0.04; H100: Sink_* 12 at 1k, 23 at 3k"),
    ("K bias only (v* = 0), BOS first", ["c_kbos", "c_kbos_s1"], "Sink_* 73.34, Sink_1 0.00"),
    ("V bias only, BOS first", ["c_vbos", "c_vbos_s1"], "Sink_1 17.53 (the sink stays on token 1)"),
    ("sigmoid without normalization, BOS first", ["c_sigbos", "c_sigbos_s1"], "Sink_1 0.44, loss 3.70 vs 3.73"),
    ("sigmoid without normalization, b = -log n, BOS first", ["c_siglognbos", "c_siglognbos_s1"],
     "not in the paper's table (it used b = 0); Apple's sigmoid attention uses b = -log n"),
    ("sigmoid normalized (rows sum to 1), BOS first", ["c_signormbos", "c_signormbos_s1"], "Sink_1 30.24, loss 3.74"),
    ("sigmoid normalized, BOS first, 12,000 steps", ["c_signormbos_12k", "c_signormbos_12k_s1"], "Sink_1 30.24, loss 3.74"),
    ("linear attention, elu+1 kernel, normalized, BOS first", ["c_linelubos", "c_linelubos_s1"], "Sink_1 53.65, loss 4.19"),
    ("learned sink logit per head (a key bias whose logit ignores the query, v* = 0), BOS first",
     ["c_sinklogitbos", "c_sinklogitbos_s1"], "not in the paper's table (gpt-oss); K bias only: Sink_* 73.34, Sink_1 0.00"),
    ("softmax-off-by-one (a sink logit held at 0, v* = 0), BOS first", ["c_zerologitbos", "c_zerologitbos_s1"],
     "not in the paper (Miller 2023; Kaul et al. 2024's softmax-1 against first-token dominance)"),
    ("softmax-off-by-one, no BOS", ["c_zerologit", "c_zerologit_s1"],
     "not in the paper; its KV bias without BOS: Sink_* 72.76, Sink_1 0.04"),
    ("a learned sink logit started at -2 instead of 0 (`sink_logit_init`), BOS first", ["c_sinklogitinitm2bos", "c_sinklogitinitm2bos_s1"],
     "not in the paper; the learned logit above starts at 0"),
    ("a sink logit held at -0.5 (v* = 0), BOS first", ["c_logitm05bos", "c_logitm05bos_s1", "c_logitm05bos_s2", "c_logitm05bos_s3"],
     "not in the paper; softmax-off-by-one with the slot weighing e^-0.5 of a key at logit 0"),
    ("a sink logit held at -1 (v* = 0), BOS first", ["c_logitm1bos", "c_logitm1bos_s1"],
     "not in the paper; softmax-off-by-one with the slot weighing e^-1 of a key at logit 0"),
    ("a sink logit held at -1, no BOS", ["c_logitm1", "c_logitm1_s1"],
     "not in the paper; the slot at e^-1 with no BOS to compete with"),
    ("2,000 more steps from toy-softmax (c_bos) with a slot held at 0 added, BOS first",
     ["c_ft_zerologitbos", "c_ft_zerologitbos_s1"],
     "not in the paper; softmax-off-by-one added to a model whose sink is on BOS"),
    ("2,000 more steps from toy-softmax (c_bos), unchanged: the control, BOS first", ["c_ft_bos"],
     "not in the paper; the second phase without the slot"),
    ("2,000 more steps from c_zerologitbos (its slot has the sink) with the slot held at -1 instead of 0, BOS first",
     ["c_ft_m1fromzerobos", "c_ft_m1fromzerobos_s1"],
     "not in the paper; from scratch at -1 (c_logitm1bos) the sink is on BOS"),
    ("2,000 more steps from c_zerologitbos, the slot left at 0: the control, BOS first",
     ["c_ft_zerofromzerobos", "c_ft_zerofromzerobos_s1"], "not in the paper; the second phase with the slot unchanged"),
    ("the slot held at 0 added to toy-softmax for 2,000 steps at peak lr 3e-4 (the phase above: 1e-3), BOS first",
     ["c_ft_zerologitbos_lr3e4"], "not in the paper; does the result hang on the lr warming up again?"),
    ("c_zerologitbos's slot lowered to -1 for 2,000 steps at peak lr 3e-4 (above: 1e-3), BOS first",
     ["c_ft_m1fromzerobos_lr3e4"], "not in the paper; does the result hang on the lr warming up again?"),
    ("the slot held at 0 added to toy-softmax for 6,000 steps (the phase above: 2,000), BOS first",
     ["c_ft_zerologitbos_6k", "c_ft_zerologitbos_6k_s1"],
     "not in the paper; given as many steps as from scratch, does the slot take the sink?"),
    ("6,000 more steps from toy-softmax (c_bos), unchanged: the control, BOS first", ["c_ft_bos_6k"],
     "not in the paper; does token 1's sink grow as much without the slot?"),
    ("c_zerologitbos's slot lowered to -1 for 6,000 steps (above: 2,000), BOS first",
     ["c_ft_m1fromzerobos_6k", "c_ft_m1fromzerobos_6k_s1"],
     "not in the paper; does the lowered slot give back the half it keeps?"),
    ("6,000 more steps from c_zerologitbos, the slot left at 0: the control, BOS first", ["c_ft_zerofromzerobos_6k"],
     "not in the paper; how much does the slot keep with nothing changed?"),
    ("c_zerologitbos's slot lowered to -1 for 12,000 steps (above: 2,000 and 6,000), BOS first",
     ["c_ft_m1fromzerobos_12k"], "not in the paper; does the lowered slot's share fall to none?"),
    ("12,000 more steps from c_zerologitbos, the slot left at 0: the control, BOS first", ["c_ft_zerofromzerobos_12k"],
     "not in the paper; how much does the slot keep over 12,000 steps with nothing changed?"),
    ("2,000 more steps from c_bos_s1 (a second source; its sink on BOS) with a slot held at 0 added, BOS first",
     ["c_ft_zerologitbos_src1"], "not in the paper; the forward phase from another model"),
    ("2,000 more steps from c_zerologitbos_s1 (a second source; its slot has the sink) with the slot held at -1, BOS first",
     ["c_ft_m1fromzerobos_src1"], "not in the paper; the reverse phase from another model"),
    ("2,000 more steps from c_zerologitbos_s1, the slot left at 0: the control, BOS first",
     ["c_ft_zerofromzerobos_src1"], "not in the paper; the second source's control"),
    ("a sink logit held at -2 (v* = 0), BOS first", ["c_logitm2bos", "c_logitm2bos_s1"],
     "not in the paper; softmax-off-by-one with the slot weighing e^-2 of a key at logit 0"),
    ("a sink logit held at -4 (v* = 0), BOS first", ["c_logitm4bos", "c_logitm4bos_s1"],
     "not in the paper; softmax-off-by-one with the slot weighing e^-4 of a key at logit 0"),
    ("KV bias shared by all heads, BOS first", ["c_kvsharedbos", "c_kvsharedbos_s1"], "Sink_1 comes back to 12.44"),
    ("learnable sink token, BOS first", ["c_sinktokbos", "c_sinktokbos_s1"], "Sink_* 74.12, Sink_1 0.00 (no BOS)"),
    ("learnable sink token, no BOS", ["c_sinktok", "c_sinktok_s1"], "Sink_* 74.12, Sink_1 0.00"),
    ("elu+1 without normalization, BOS first", ["c_elu1bos", "c_elu1bos_s1"], "Sink_1 0.80, loss 3.69"),
    ("post-norm, BOS first", ["c_postbos", "c_postbos_s1"], "13.54 (pre-norm 18.18)"),
    ("no positional embedding (NoPE), BOS first", ["c_nopebos", "c_nopebos_s1"], "20.35 (RoPE 18.18)"),
    ("ALiBi, BOS first", ["c_alibibos", "c_alibibos_s1"], "20.78 (RoPE 18.18)"),
    ("learned absolute positions, BOS first", ["c_learnedbos", "c_learnedbos_s1"], "33.13 (RoPE 18.18)"),
    ("sinusoidal absolute positions, BOS first", ["c_sinbos", "c_sinbos_s1"], "32.73 (RoPE 18.18)"),
    ("sinusoidal positions scaled by 0.02 (the embeddings' init std), BOS first", ["c_sinscalebos", "c_sinscalebos_s1"],
     "32.73 (unscaled, RoPE 18.18)"),
    ("T5 relative position buckets, BOS first", ["c_relbos", "c_relbos_s1"], "35.53 (RoPE 18.18)"),
    ("sliding window w = 16 (T 64), BOS first", ["c_win16bos", "c_win16bos_s1"],
     "the first token keeps the sink while t <= w; small windows prevent it (section below)"),
    ("sliding window w = 32 (T 64), BOS first", ["c_win32bos", "c_win32bos_s1"],
     "the first token keeps the sink while t <= w; small windows prevent it (section below)"),
    ("prefix LM, prefix 8 (no BOS)", ["c_prefix8", "c_prefix8_s1"], "the sink lands on one of the prefix tokens (section below)"),
    ("prefix LM, prefix 8, BOS first (BOS sees the prefix)", ["c_prefix8bos", "c_prefix8bos_s1"],
     "the sink lands on one of the prefix tokens (section below)"),
    ("gated attention (sigmoid gate on each head's output), BOS first", ["c_gatebos", "c_gatebos_s1"],
     "not in the paper; Qwen 2025: first-token attention 46.7% -> 4.8%, max activation 1053 -> 94"),
]


def _spread(values: list[float | None], spec: str = ".2f") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], spec)
    mean = sum(vals) / len(vals)
    return f"{mean:{spec}} ({min(vals):{spec}} to {max(vals):{spec}}, n={len(vals)})"


def _delta(final: dict, name: str) -> float | None:
    r = final.get("interventions", {}).get(name)
    return None if r is None else r["delta_loss"]


def _val_loss(cfg: dict, rows: list[dict], final: dict | None) -> float | None:
    """A run's final validation loss on the same windows for every run, those of data.seed 0 (a
    run's own val_loss is on windows drawn with its data seed); None where it has none there."""
    if final is not None and "val_loss_seed0_windows" in final:
        return final["val_loss_seed0_windows"]
    if cfg["data"]["seed"] == 0:
        return [r for r in rows if r.get("val_loss") is not None][-1]["val_loss"]
    return None


# The weight-decay sweep (BOS first, 6,000 steps): wd -> its runs, and the paper's Sink_1 (%) at
# 60M for the same wd (section 6 of the reference: "the loss climbing from 3.72 to 5.24" for 0 -> 5)
WD_RUNS = {0.0: ["c_bos_wd0", "c_bos_wd0_s1"], 0.1: ["c_bos_wd01", "c_bos_wd01_s1"], 0.5: ["c_bos", "c_bos_s1"],
           1.0: ["c_bos_wd1", "c_bos_wd1_s1"], 2.0: ["c_bos_wd2", "c_bos_wd2_s1"], 5.0: ["c_bos_wd5", "c_bos_wd5_s1"]}
# the same weight decay for twice the steps (twice the total decay below)
WD_LONG_RUNS = {0.5: ["c_bos_12k", "c_bos_12k_s1"], 2.0: ["c_bos_wd2_12k", "c_bos_wd2_12k_s1"],
                5.0: ["c_bos_wd5_12k", "c_bos_wd5_12k_s1"]}
PAPER_WD_SINK1 = {0.0: 15.20, 0.1: 18.18, 0.5: 41.08, 1.0: 37.71, 2.0: 6.13, 5.0: 0.01}
# the paper's schedule (section 3 of the reference): lr 4e-4, 100 warm-up steps, 20k steps; its
# "cosine" keeps min_lr = lr, so the lr is constant after warm-up
PAPER_SCHEDULE = {"lr": 4e-4, "warmup_steps": 100, "steps": 20_000, "schedule": "constant"}
WD_FIG = ROOT / "docs" / "figures" / "cpu-calibration-weight-decay.png"


def _decay_total(cfg: dict, **changes) -> float:
    """sum_t lr_t * wd over a run's updates (its train_config.json, ``changes`` applied): AdamW's
    decoupled decay multiplies every decayed weight by (1 - lr_t * wd) at update t, so a weight no
    gradient holds up shrinks by about exp(-this) over the run."""
    from sinkinterp.train.config import TrainConfig
    from sinkinterp.train.schedule import lr_at

    c = TrainConfig.from_dict(cfg)
    if changes:
        c = c.replace(**changes)
    return c.weight_decay * sum(lr_at(c, s) for s in range(c.steps))


@functools.cache  # 20,000 updates summed; asked for per table row and figure point
def _paper_decay_total(wd: float) -> float:
    return _decay_total(json.loads(BASE.read_text()), weight_decay=wd, **PAPER_SCHEDULE)


ONSET_SINK1 = 5.0  # the weight-decay table's onset: the first tracked step with Sink_1 >= this (%, as the table rounds it)


def _wd_points(runs: dict[str, tuple[dict, list[dict]]], table: dict[float, list[str]]) -> dict[float, list[dict]]:
    """Per weight decay of ``table``, one dict per run that has a final.json: Sink_1 (report and
    tracking), massive ratio, val loss on the seed-0 windows, the loss change when token 1 is
    ablated, the run's steps and its total decay, the first tracked step with Sink_1 >=
    ``ONSET_SINK1`` (None: never) and the tracking peak with its step."""
    out: dict[float, list[dict]] = {}
    for wd, names in table.items():
        for n in names:
            f = DATA / n / "final.json"
            if n not in runs or not f.is_file():
                continue
            cfg, rows = runs[n]
            fin = json.loads(f.read_text())
            tracked = [r for r in rows if r.get("sink1") is not None]
            peak = max(tracked, key=lambda r: r["sink1"])
            out.setdefault(wd, []).append(dict(
                run=n, sink1=fin["sink1"], tracking=tracked[-1]["sink1"], massive=fin["massive_ratio"],
                val=_val_loss(cfg, rows, fin), ablate=_delta(fin, "ablate"), steps=cfg["steps"],
                decay=_decay_total(cfg),
                onset=next((r["step"] for r in tracked if round(r["sink1"], 1) >= ONSET_SINK1), None),
                peak=peak["sink1"], peak_step=peak["step"]))
    return out


def _wd_section(runs: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    """The weight-decay sweep as one table (each seed) and a figure beside the paper's numbers,
    by weight decay and by total decay."""
    points = _wd_points(runs, WD_RUNS)
    if len(points) < 2:
        return []
    long_points = _wd_points(runs, WD_LONG_RUNS)
    steps = PAPER_SCHEDULE["steps"]
    out = ["", "## The weight-decay sweep", "",
           "Softmax, BOS first, 6,000 steps, weight decay the only change (`c_bos_wd*`, the baseline `c_bos` at",
           "0.5), seeds 0 / 1. Sink_1 as in the table above (report and tracking), val loss on the seed-0",
           "windows; the paper's Sink_1 is its 60M model's (section 6 of the reference; its loss climbs from",
           "3.72 at wd 0 to 5.24 at wd 5).", "",
           "Weight decay alone does not say how far it pulls the weights: AdamW multiplies each decayed",
           "matrix by (1 - lr_t wd) at every update, so over a run the pull is the total decay",
           "Σ_t lr_t · wd (a weight no gradient holds up ends at about exp(-Σ) of its size). Ours: cosine from",
           ("1e-3 to 1e-4 over 6,000 updates (Σ_t lr_t = "
            f"{_decay_total(json.loads(BASE.read_text()), weight_decay=1.0):.2f}); the paper's: 4e-4, constant after "
            "100 warm-up updates,"),
           f"{steps:,} updates (Σ_t lr_t = {_paper_decay_total(1.0):.2f}; the reference notes that the original code's \"cosine\"",
           "schedule has min_lr = lr). Both computed with `sinkinterp.train.schedule.lr_at`.", "",
           ("| weight decay | steps | total decay Σ lr·wd: ours / the paper's | the paper's Sink_1 (%) | Sink_1 (%) report | "
            f"Sink_1 (%) tracking | tracking: first step at >= {ONSET_SINK1:g}% | tracking peak (step) | massive ratio | "
            "val loss | Δ loss: token 1 ablated |"),
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for wd, pts in [*points.items(), *long_points.items()]:
        def cell(key: str, fmt: str, pts: list[dict] = pts) -> str:
            return " / ".join("-" if p[key] is None else format(p[key], fmt) for p in pts)
        out.append(f"| {wd:g} | {pts[0]['steps']:,} | {pts[0]['decay']:.2f} / {_paper_decay_total(wd):.2f} | "
                   f"{PAPER_WD_SINK1[wd]:.2f} | {cell('sink1', '.1f')} | {cell('tracking', '.1f')} | "
                   f"{_onsets(pts)} | {_peaks(pts)} | "
                   f"{cell('massive', '.1f')} | {cell('val', '.3f')} | {cell('ablate', '+.3f')} |")
    out += _wd_long_paragraphs(points, long_points)
    _wd_figure(points, long_points)
    out += ["", ("![Sink_1, massive ratio and validation loss against weight decay and against the total decay, "
                 "ours and the paper's](figures/cpu-calibration-weight-decay.png)")]
    return out


def _onsets(pts: list[dict]) -> str:
    return " / ".join("never" if p["onset"] is None else f"{p['onset']:,}" for p in pts)


def _peaks(pts: list[dict]) -> str:
    return " / ".join(f"{p['peak']:.1f} ({p['peak_step']:,})" for p in pts)


def _mean(pts: list[dict], key: str = "sink1") -> float | None:
    """The mean over the runs that have ``key`` (a seed-1 run may have no seed-0-window val loss)."""
    got = [p[key] for p in pts if p[key] is not None]
    return sum(got) / len(got) if got else None


def _seeds(pts: list[dict], key: str = "sink1") -> str:
    return " / ".join(f"{p[key]:.1f}" for p in pts)


def _compare(a: list[dict], b: list[dict], than: bool = False) -> str:
    """How the Sink_1 of runs ``a`` stands against runs ``b``: above or below every seed of b, or
    within their spread (``than``: worded to be followed by b's numbers)."""
    if min(p["sink1"] for p in a) > max(p["sink1"] for p in b):
        return "higher in every seed" + (" than" if than else "")
    if max(p["sink1"] for p in a) < min(p["sink1"] for p in b):
        return "lower in every seed" + (" than" if than else "")
    return "within the spread of" if than else "within the seeds' spread"


def _wd_long_paragraphs(points: dict[float, list[dict]], long_points: dict[float, list[dict]]) -> list[str]:
    """What the longer runs say: the same weight decay for twice the steps (twice the total decay),
    a shorter run of the same total decay beside each, and the weight-decay curve at the longer
    length. Every verdict is computed from the seeds' numbers."""
    long_points = {wd: pts for wd, pts in sorted(long_points.items()) if pts}
    if not long_points:
        return []
    steps = next(iter(long_points.values()))[0]["steps"]
    short_steps = next(iter(points.values()))[0]["steps"]
    same = [f"at wd {wd:g} (total decay {pts[0]['decay']:.1f}; the paper's at wd {wd:g}: {_paper_decay_total(wd):.1f}, "
            f"Sink_1 {PAPER_WD_SINK1[wd]:.2f}): {_seeds(pts)}% ({_compare(pts, points[wd], than=True)} "
            f"{_seeds(points[wd])}% at {short_steps:,} steps)" for wd, pts in long_points.items() if wd in points]
    # runs whose tracking Sink_1 ended more than a third below its peak: formed, then faded while training went on
    faded = [f"at wd {wd:g} it peaked at {_peaks(pts)} and ended at {_seeds(pts, 'tracking')}%"
             for wd, pts in long_points.items() if all(p["tracking"] < 2 / 3 * p["peak"] for p in pts)]
    times = "twice" if steps == 2 * short_steps else f"{steps / short_steps:g} times"
    out = ["", f"**{times.capitalize()} the steps.** The {steps:,}-step runs (the same cosine schedule over {times} "
           f"the updates, so {times} the total decay) give Sink_1 " + "; ".join(same) + "."
           + (" On the tracking windows the sink formed and then lost more than a third of its peak in every seed: " + "; ".join(faded) + "."
              if faded else "")]
    twins = []  # a longer run and the shorter run whose total decay is nearest, when within 25%
    for wd, pts in long_points.items():
        twin = min(points, key=lambda w: abs(points[w][0]["decay"] - pts[0]["decay"]))
        d_long, d_short = pts[0]["decay"], points[twin][0]["decay"]
        if abs(d_long - d_short) <= 0.25 * max(d_long, d_short):
            twins.append(f"wd {wd:g} for {steps:,} steps (total decay {d_long:.1f}) sinks {_seeds(pts)}% and "
                         f"wd {twin:g} for {short_steps:,} (total decay {d_short:.1f}) {_seeds(points[twin])}%: "
                         f"{_compare(pts, points[twin])}")
    if twins:
        out += ["", "**The same total decay, different runs.** " + "; ".join(twins) + ". "
                "Where these differ beyond the seeds, the total decay alone does not set the sink: "
                "the number of updates does too."]
    if len(long_points) >= 3:
        wds = list(long_points)
        means = [_mean(long_points[w]) for w in wds]
        peak = wds[means.index(max(means))]
        shape = ("rises to a peak at wd {peak:g} and falls after it" if peak not in (wds[0], wds[-1]) else
                 "rises with weight decay over this range" if peak == wds[-1] else "falls with weight decay over "
                 "this range").format(peak=peak)
        losses = " / ".join("-" if _mean(long_points[w], "val") is None else f"{_mean(long_points[w], 'val'):.3f}"
                            for w in wds)
        massive = " / ".join(f"{_mean(long_points[w], 'massive'):.1f}" for w in wds)
        out += ["", f"**The curve at {steps:,} steps.** Mean Sink_1 " + " / ".join(f"{m:.1f}" for m in means)
                + "% at wd " + " / ".join(f"{w:g}" for w in wds) + f": the sink {shape}; mean val loss "
                f"{losses}, massive ratio {massive}."]
    return out


def _wd_figure(points: dict[float, list[dict]], long_points: dict[float, list[dict]]) -> None:
    from sinkinterp.figures import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    xs = sorted(points)
    pos = {wd: i for i, wd in enumerate(sorted(WD_RUNS))}  # evenly spaced: 0, 0.1, 0.5, 1, 2, 5
    for ax, key, title in ((axes[0, 0], "sink1", "Sink_1 (%), eps 0.3, report inputs"),
                           (axes[1, 0], "massive", "massive ratio max ||h_1|| / mean ||h_t||"),
                           (axes[1, 1], "val", "validation loss (seed-0 windows)")):
        for seed, marker in ((0, "o"), (1, "s")):
            got = [(pos[wd], pts[seed][key]) for wd in xs for pts in [points[wd]]
                   if len(pts) > seed and pts[seed][key] is not None]
            ax.plot([x for x, _ in got], [y for _, y in got], marker, color="C0", alpha=0.8,
                    label=f"ours, seed {seed}", linestyle="none")
        mean = [(pos[wd], sum(p[key] for p in points[wd]) / len(points[wd])) for wd in xs
                if all(p[key] is not None for p in points[wd])]
        ax.plot([x for x, _ in mean], [y for _, y in mean], "-", color="C0", alpha=0.5, label="ours, mean")
        for seed, marker in ((0, "^"), (1, "v")):
            got = [(pos[wd], p[key]) for wd, pts in long_points.items() for p in pts[seed:seed + 1]
                   if p[key] is not None]
            if got:
                ax.plot([x for x, _ in got], [y for _, y in got], marker, color="C2", linestyle="none",
                        label=f"ours, 12k steps, seed {seed}")
        if key == "sink1":
            ax.plot([pos[w] for w in sorted(PAPER_WD_SINK1)], [PAPER_WD_SINK1[w] for w in sorted(PAPER_WD_SINK1)],
                    "--", color="C3", marker="x", label="paper (60M, 5B tokens)")
        ax.set_xticks(range(len(pos)), [f"{w:g}" for w in sorted(pos)])
        ax.set_xlabel("weight decay")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    ax = axes[0, 1]  # the same Sink_1 against the total decay
    for seed, marker in ((0, "o"), (1, "s")):
        got = [(p["decay"], p["sink1"]) for wd in xs for p in points[wd][seed:seed + 1]]
        ax.plot([x for x, _ in got], [y for _, y in got], marker, color="C0", alpha=0.8, linestyle="none",
                label=f"ours, 6k steps, seed {seed}")
        got = [(p["decay"], p["sink1"]) for pts in long_points.values() for p in pts[seed:seed + 1]]
        if got:
            ax.plot([x for x, _ in got], [y for _, y in got], "^" if seed == 0 else "v", color="C2",
                    linestyle="none", label=f"ours, 12k steps, seed {seed}")
    mean = [(points[wd][0]["decay"], sum(p["sink1"] for p in points[wd]) / len(points[wd])) for wd in xs]
    ax.plot([x for x, _ in mean], [y for _, y in mean], "-", color="C0", alpha=0.5)
    paper = sorted((_paper_decay_total(w), sink1, w) for w, sink1 in PAPER_WD_SINK1.items())
    ax.plot([x for x, _, _ in paper], [y for _, y, _ in paper], "--", color="C3", marker="x", label="paper")
    for x, y, w in paper:
        ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7, color="C3")
    for wd in xs:
        ax.annotate(f"{wd:g}", (points[wd][0]["decay"], max(p["sink1"] for p in points[wd])),
                    textcoords="offset points", xytext=(3, 4), fontsize=7, color="C0")
    ax.set_xscale("symlog", linthresh=0.5)
    ax.set_xticks([0, 0.3, 1, 3, 10, 30], ["0", "0.3", "1", "3", "10", "30"])
    ax.minorticks_off()
    ax.set_xlabel("total decay Σ_t lr_t · wd (labels: wd)")
    ax.set_title("Sink_1 (%) against the total decay", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, WD_FIG, palette=True)


def _paper_rows(runs: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    out = ["| row | the paper (Sink_1 %, 60M unless noted) | runs | steps | Sink_1 (%) tracking | Sink_* (%) tracking | "
           "Sink_1 (%) report | Sink_* (%) report | massive ratio report | val loss | Δ loss: token 1 ablated | "
           "Δ loss: slot ablated |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row, names, paper in PAPER_ROWS:
        have = [n for n in names if n in runs]
        if not have:
            out.append(f"| {row} | {paper} | {', '.join(names)}: not run yet | | | | | | | | | |")
            continue
        last, val, fin, steps = [], [], [], []
        for n in have:
            cfg, rows = runs[n]
            tracked = [r for r in rows if r.get("sink1") is not None]
            last.append(tracked[-1])
            f = DATA / n / "final.json"
            fin.append(json.loads(f.read_text()) if f.is_file() else None)
            val.append(_val_loss(cfg, rows, fin[-1]))
            steps.append(f"{tracked[-1]['step']:,}" + ("" if tracked[-1]["step"] == cfg["steps"]
                                                      else f" of {cfg['steps']:,} (stopped)"))
        done = [x for x in fin if x is not None]
        out.append(
            f"| {row} | {paper} | {', '.join(have)} | {' / '.join(steps)} | {_spread([r['sink1'] for r in last])} | "
            f"{_spread([r.get('sink_bias') for r in last])} | {_spread([x['sink1'] for x in done])} | "
            f"{_spread([x['sink_bias'] for x in done])} | {_spread([x['massive_ratio'] for x in done], '.1f')} | "
            f"{_spread(val, '.3f')} | {_spread([_delta(x, 'ablate') for x in done], '+.3f')} | "
            f"{_spread([_delta(x, 'ablate_bias') for x in done], '+.3f')} |")
    return out


def add_heads(pairs: list[str], within: float = 0.5) -> int:
    """``NAME=MODEL``: put the per-head numbers of ``final_report(MODEL)`` into NAME's final.json when
    it lacks some (snapshots made before final.json had the q.k grids, their logits or the slot's logit;
    MODEL is the run's final checkpoint, or the shipped model made from it, or the same recipe trained
    again: Sink_1 and Sink_* must agree within ``within`` points, 0.5 unless ``--within`` says more: a
    recipe trained again on another machine is not bit-equal). The other numbers of final.json are kept;
    ``heads_source`` says where the heads came from, ``heads_source_sink`` the copy's Sink_1 / Sink_*
    (the page prints both beside the snapshot's)."""
    if not math.isfinite(within) or within < 0:
        print(f"cpu_calibration: --within takes a number of points >= 0, got {within!r}", file=sys.stderr)
        return 2
    for pair in pairs:
        name, sep, spec = pair.partition("=")
        final_file = DATA / name / "final.json"
        if not sep or not final_file.is_file():
            print(f"cpu_calibration: --add-heads takes NAME=MODEL with a snapshot NAME that has a final.json, "
                  f"got {pair!r}", file=sys.stderr)
            return 2
        final = json.loads(final_file.read_text())
        heads = final.get("heads", {})
        if "logit_q_krest" in heads.get("qk", {}) and "slot_logit" in heads:
            continue
        fresh = final_report(Path(spec) if Path(spec).exists() else spec)
        for key in ("sink1", "sink_bias"):
            a, b = fresh[key], final[key]
            if (a is None) != (b is None) or (a is not None and abs(a - b) > within):
                print(f"cpu_calibration: {spec} gives {key} {a}, {name}'s final.json {b}: not the same model",
                      file=sys.stderr)
                return 2
        final.update(heads=fresh["heads"], heads_source=str(spec),
                     heads_source_sink={"sink1": fresh["sink1"], "sink_bias": fresh["sink_bias"]})
        if "val_loss_seed0_windows" in fresh and "val_loss_seed0_windows" not in final:
            final["val_loss_seed0_windows"] = fresh["val_loss_seed0_windows"]
        write_json(final_file, final)
        print(f"{name}: heads from {spec} (Sink_1 {fresh['sink1']:.2f} vs {final['sink1']:.2f}, "
              f"Sink_* {fresh['sink_bias']} vs {final['sink_bias']})")
    return 0


def window_reference(pairs: list[str]) -> int:
    """``NAME=MODEL``: measure MODEL (a model without a window, e.g. ``toy-softmax``, the baseline
    shipped from c_bos) on the queries NAME's window statistics cover, with the report's inputs, and
    keep it in NAME's final.json as ``window_stats["reference"]``."""
    import torch

    from sinkinterp.inputs import make_tokens
    from sinkinterp.loading import load_model

    for pair in pairs:
        name, sep, spec = pair.partition("=")
        final_file = DATA / name / "final.json"
        final = json.loads(final_file.read_text()) if sep and final_file.is_file() else {}
        if "window_stats" not in final:
            print(f"cpu_calibration: --window-reference takes NAME=MODEL with a snapshot NAME whose final.json "
                  f"has window_stats, got {pair!r}", file=sys.stderr)
            return 2
        lm = load_model(spec)
        if getattr(lm.model.cfg, "window", None) is not None or bool(lm.info.get("bos_first")) != final["bos_first"]:
            print(f"cpu_calibration: {spec} must have no window and the same BOS-first training as {name}",
                  file=sys.stderr)
            return 2
        tokens = make_tokens("natural", seq_len=REPORT["seq_len"], num_seqs=REPORT["num_seqs"], seed=REPORT["seed"],
                             vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, prepend_bos=final["bos_first"],
                             bos_token_id=lm.bos_token_id)
        with torch.no_grad():
            ref = _window_stats(lm.model.eval(), tokens, window=final["window_stats"]["window"])
        final["window_stats"]["reference"] = {"model": spec, **{k: v for k, v in ref.items() if k != "window"}}
        write_json(final_file, final)
        print(f"{name}: {spec} on queries t <= {ref['window']}: Sink_1 {ref['sink1_within_window']:.2f} "
              f"(the windowed run: {final['window_stats']['sink1_within_window']:.2f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--snapshot":
        return snapshot(argv[1:])
    if argv and argv[0] == "--add-heads":
        rest = list(argv[1:])
        within = 0.5
        if "--within" in rest:  # --within POINTS: how far the copy's Sink_1 / Sink_* may be from the snapshot's
            i = rest.index("--within")
            try:
                within = float(rest[i + 1])
            except (IndexError, ValueError):
                print(f"cpu_calibration: --within takes a number of points, got {rest[i + 1:i + 2]}", file=sys.stderr)
                return 2
            del rest[i:i + 2]
        return add_heads(rest, within=within)
    if argv and argv[0] == "--window-reference":
        return window_reference(argv[1:])
    if argv and argv[0] == "--train":
        dry = "--dry-run" in argv
        return train_recipes([a for a in argv[1:] if a != "--dry-run"], dry_run=dry)
    if argv:
        print("usage: analyses/cpu_calibration.py [--train NAME... [--dry-run] | --snapshot RUN_DIR... | "
              "--add-heads NAME=MODEL... [--within POINTS] | --window-reference ...]; with no argument it regenerates "
              f"docs/cpu-calibration.md from the snapshots (got {argv!r})", file=sys.stderr)
        return 2
    from sinkinterp.train.config import TrainConfig

    base = TrainConfig.from_dict(json.loads(BASE.read_text())).to_dict()
    runs = _runs()
    if not runs:
        print(f"cpu_calibration: no snapshots in {DATA}", file=sys.stderr)
        return 2
    _figure(runs)
    _slot_figure(runs)
    lines = [
        "# Sink emergence at CPU scale (calibration runs)",
        "",
        "Generated by `analyses/cpu_calibration.py` from the snapshots in `analyses/data/cpu_calibration/`",
        "(run `.venv/bin/python analyses/regenerate.py cpu_calibration`). Every run is",
        "`sinkinterp train configs/cpu_calib_wd05.json --out runs/cpu/NAME --set ...` with the overrides",
        "listed: 4 layers x 128, 4 heads, RoPE, pre-RMSNorm, SwiGLU, T 64, batch 16 (1,024 tokens a step),",
        "AdamW lr 1e-3 (unless overridden), weight decay 0.5, cosine to 10%, float32, on the 52.5M-token",
        "Debian corpus (docs/data.md), on 2 CPU cores shared by up to three runs. Sink tracking: 64",
        "held-out windows of T = 64, eps 0.3, with the run's data transforms (a run trained with BOS first",
        "is measured with BOS first).",
        "",
        "| run | overrides | last step | tokens | val loss | Sink_1 (%) | Sink_2 (%) | Sink_* (%) | massive ratio | max Sink_* so far |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (cfg, rows) in runs.items():
        tracked = [r for r in rows if r.get("sink1") is not None]
        last = tracked[-1]
        val = [r for r in rows if r.get("val_loss") is not None][-1]
        sets = _overrides(cfg, base) or ["(none)"]
        sets = [x for x in sets if not x.startswith("device=")]
        bias = [r["sink_bias"] for r in tracked if r.get("sink_bias") is not None]
        lines.append(
            f"| {name} | {'<br>'.join(f'`{s}`' for s in sets)} | {last['step']:,} of {cfg['steps']:,} | "
            f"{last['tokens_seen'] / 1e6:.2f}M | {val['val_loss']:.3f} (step {val['step']:,}) | "
            f"{last['sink1']:.2f} | {last['sink2']:.2f} | "
            f"{'-' if last.get('sink_bias') is None else format(last['sink_bias'], '.2f')} | "
            f"{last['massive_ratio']:.2f} | {'-' if not bias else format(max(bias), '.2f')} |")
    lines += [
        "",
        "## The paper's rows at toy scale",
        "",
        "Final values of each recipe; several runs of one recipe (seeds: `--set seed=1 --set model.seed=1",
        "--set data.seed=1`) are shown as mean (min to max, n). \"Tracking\": the last sink-tracking point (64",
        "held-out Debian windows). \"Report\": the final checkpoint measured like `sinkinterp report` (the",
        f"shipped natural-text sample, T {REPORT['seq_len']}, {REPORT['num_seqs']} sequences, eps {REPORT['eps']}, "
        "BOS first for runs trained with it; `final.json` in the",
        "snapshot). The paper's models are 60M parameters trained on 5B tokens; ours 4 x 128 on 6.1M, so",
        "compare directions and contrasts, not levels. Δ loss: the loss change (nats) when token 1 (`ablate`) or",
        "the k*/v* slot (`ablate_bias`) is removed from every query's keys, rows renormalized, on the first 32",
        "report sequences. Val loss: on the held-out windows of data seed 0 for every run (a seed-1 run's",
        "own `val_loss` is on other windows: 4,096 tokens, too few to compare across window sets).",
        "Verdicts: docs/reproduction.md.",
        "",
        *_paper_rows(runs),
        *_wd_section(runs),
        *_heads_section(_finals()),
        *_variants_section(_finals(), runs),
        *_masks_section(_finals(), runs),
    ]
    probes = _probes()
    if any(probes.values()):
        lines += [
            "",
            "## How close the checkpoints are to a sink",
            "",
            "Each saved checkpoint measured on the run's own tracking windows (`probe()` in the script:",
            "`measure(..., first_keys=4)`; uniform attention over 64 keys gives alpha_1 = 0.074):",
            "",
            "| run | checkpoint step | max alpha_1 over heads | mean alpha_1 | Sink_1 at eps 0.1 / 0.2 / 0.3 (%) | max alpha_* |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, per in probes.items():
            for p in per.values():
                eps = " / ".join(f"{p['sink1_by_eps'][k]:.1f}" for k in ("0.1", "0.2", "0.3"))
                bias = "-" if p.get("alpha_bias_max") is None else f"{p['alpha_bias_max']:.3f}"
                lines.append(f"| {name} | {p['step']:,} | {p['alpha1_max']:.3f} | {p['alpha1_mean']:.3f} | {eps} | {bias} |")
    lines += [
        "",
        "![Sink_1, Sink_* and the massive-activation ratio along training](figures/cpu-calibration-emergence.png)",
        "",
        "Per-step rows: `analyses/data/cpu_calibration/NAME/metrics.jsonl`.",
        "",
    ]
    text = "\n".join(lines)
    print(f"wrote {write_bytes(DOC, text.encode())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
