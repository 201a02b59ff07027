"""``train(cfg, out_dir)``: the training loop (see docs/training.md).

Output folder::

    out_dir/train_config.json          TrainConfig.to_dict() of the run
    out_dir/metrics.jsonl              one JSON object per logged step (METRIC_FIELDS)
    out_dir/final.json                 the last value of every metric, written when the run ends
    out_dir/checkpoints/step_0001000/  model.safetensors + config.json (save_checkpoint), and in the
                                       newest folder only optimizer.pt (AdamW state, RNG state, step)
    out_dir/checkpoints/latest         the name of the newest complete checkpoint folder
    out_dir/init_from.json             with ``cfg.init_from``: the folder the weights started from, its step,
                                       the parameters copied from it and those freshly initialized

A step's batch is ``DataPipeline(cfg.data).batch_at(step)``, a pure function of the data config and
the step, so the checkpoint only records the step; with the optimizer state and the RNG state a
resumed run continues bit-for-bit (float32 on CPU; tested). Files are written atomically and only
by rank 0.

SIGTERM or SIGINT (``timeout``, a batch scheduler, Ctrl-C) during a single-process run stops it
cleanly: the step in flight finishes, a checkpoint is saved at it (with a metrics row), and ``train``
returns with ``TrainResult.stopped_by`` set, so the same command resumes the run; a second signal
interrupts at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sinkinterp import provenance
from sinkinterp.data.transforms import DataConfig, DataPipeline
from sinkinterp.fileio import atomic_write, read_json, write_json
from sinkinterp.models import (
    SinkTransformer,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)

from .config import RESUME_SAFE_FIELDS, TrainConfig
from .flops import flops_per_token, peak_flops
from .optim import build_optimizer
from .schedule import lr_at

__all__ = ["train", "TrainResult", "TrainingDiverged", "METRIC_FIELDS", "read_metrics", "held_out_batches",
           "sink_tracking_tokens"]

#: keys of every metrics.jsonl row (None where not measured at that step)
METRIC_FIELDS = (
    "step",            # updates done so far (the row describes the model after `step` updates)
    "train_loss",      # mean training loss over the updates since the previous row (None at step 0)
    "val_loss",        # mean loss on the fixed held-out batches (eval steps only)
    "lr",              # learning rate of the last update
    "tokens_seen",     # step * batch_size * seq_len (all ranks together)
    "tokens_per_s",    # training throughput since the previous row (eval/sink/checkpoint time excluded)
    "mfu",             # model FLOPs utilisation against the bf16 peak of the GPU (None on CPU)
    "grad_norm",       # global gradient norm before clipping, of the last update
    "sink1",           # Sink_1^eps in percent (sink steps only)
    "sink2",           # Sink_2^eps in percent
    "sink_bias",       # Sink_*^eps in percent on the bias slot (None for models without a slot)
    "massive_ratio",   # max over layers of ||h_1|| / mean_{t>1} ||h_t|| of the residual stream
    "elapsed_s",       # wall seconds since the run (or this resumed part of it) started
)

CKPT_DIR = "checkpoints"
LATEST = "latest"
OPTIMIZER_NAME = "optimizer.pt"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What ``train`` returns: the folder, the last step done, the final metrics and the model."""

    out_dir: Path
    step: int
    finished: bool
    """True when the run reached cfg.steps (False when stopped at ``until_step`` or by a signal)."""
    final: dict[str, Any]
    """the last value of every metric (as in final.json)."""
    model: SinkTransformer = field(repr=False)
    """the trained model (unwrapped: no DDP, not compiled), on the training device."""
    stopped_by: str | None = None
    """the signal's name (``"SIGTERM"``, ``"SIGINT"``) when a signal stopped the run early."""


class _StopOnSignal:
    """While active, SIGTERM / SIGINT set ``signum`` instead of killing the process, so the loop can
    save a checkpoint and return; a second signal raises ``KeyboardInterrupt`` at once. Only in a
    single-process run on the main thread (elsewhere signals keep their usual effect: ranks of a
    distributed run would stop at different steps)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name} while saving a checkpoint")
        self.signum = signum

    def __enter__(self) -> "_StopOnSignal":
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


# =========================================================================================
# helpers
# =========================================================================================
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: TrainConfig) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"TrainConfig.device={cfg.device!r} but CUDA is not available on this machine")
    if world <= 1:
        return _Dist(), torch.device(cfg.device if cfg.device != "auto" else ("cuda" if want_cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if cfg.data.batch_size % world:
        raise ValueError(f"TrainConfig.data.batch_size={cfg.data.batch_size} must be divisible by the "
                         f"world size {world} (the global batch is split evenly over ranks)")
    if want_cuda:
        device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owns = True
    return _Dist(world, rank, local, owns), device


def _val_config(data: DataConfig, **changes: Any) -> DataConfig:
    # windows drawn across the whole val split with the data seed (fixed for the run): with "sequential"
    # a few thousand tokens would all come from the first validation block, i.e. one package's text
    return dataclasses.replace(data, split="val", sampling="random", max_train_tokens=None,
                               max_train_tokens_spread=None, **changes)


def held_out_batches(cfg: TrainConfig) -> torch.Tensor:
    """The fixed validation set: ``[eval_batches, batch_size, seq_len]`` windows drawn across the val
    split (seeded, the same for the whole run and its resumes), with the data transforms applied."""
    try:
        pipe = DataPipeline(_val_config(cfg.data))
    except ValueError as err:
        raise ValueError(f"validation: the shard folder {cfg.data.shard_dir!r} needs a val split "
                         f"(build it with val_policy 'interleave' or 'tail'): {err}") from err
    return torch.from_numpy(np.stack([pipe.batch_at(i) for i in range(cfg.eval_batches)]))


def sink_tracking_tokens(cfg: TrainConfig) -> torch.Tensor:
    """The fixed sink-tracking sequences: ``[sink_eval_seqs, sink_seq_len]`` windows of the val split
    (document-aligned if the training data is), with the data transforms if sink_apply_transforms."""
    changes: dict[str, Any] = dict(seq_len=cfg.sink_seq_len, batch_size=cfg.sink_eval_seqs)
    if not cfg.sink_apply_transforms:
        changes["transforms"] = ()
    return torch.from_numpy(DataPipeline(_val_config(cfg.data, **changes)).batch_at(0))


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``out_dir/metrics.jsonl``."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(saved) | set(current)
                  if k not in RESUME_SAFE_FIELDS and saved.get(k) != current.get(k))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write(path, lambda f: f.write(data))


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# =========================================================================================
# the loop
# =========================================================================================
def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = True,
    *,
    until_step: int | None = None,
    verbose: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.steps`` updates, writing into ``out_dir``.

    Args:
        cfg: the run (a ``TrainConfig``, or its dict).
        out_dir: output folder (created); see the module docstring for its layout.
        resume: continue from ``out_dir/checkpoints/latest`` when there is one (the saved
            train_config.json must match ``cfg`` except in ``RESUME_SAFE_FIELDS``). With
            ``resume=False`` an out_dir that already holds a run is an error.
        until_step: stop after this many updates (checkpoint written), as if the job were
            preempted; a later call resumes. None: run to ``cfg.steps``.
        verbose: print one line per metrics row (rank 0 only).

    Under ``torchrun`` (WORLD_SIZE > 1) every rank calls this; the process group is initialised
    (nccl on CUDA, gloo on CPU), the model is wrapped in DDP, each rank trains on its
    ``batch_size / world_size`` rows of the step's batch, and only rank 0 writes files and runs
    the evaluations. Raises ``TrainingDiverged`` naming the step when the loss becomes NaN/inf.
    """
    provenance.git_commit()  # the commit the run starts from: its checkpoints record it, not one made while it runs
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg: expected a TrainConfig or its dict, got {type(cfg).__name__}")
    end = cfg.steps
    if until_step is not None:
        if isinstance(until_step, bool) or not isinstance(until_step, int) or until_step < 1:
            raise ValueError(f"until_step: expected an int >= 1 or None, got {until_step!r}")
        end = min(until_step, cfg.steps)
    out_dir = Path(out_dir)
    ckpt_root = out_dir / CKPT_DIR
    metrics_path = out_dir / "metrics.jsonl"
    latest_path = ckpt_root / LATEST
    has_ckpt = latest_path.is_file()
    if not resume and (has_ckpt or metrics_path.exists()):
        raise FileExistsError(f"out_dir: {str(out_dir)!r} already holds a run (metrics.jsonl / checkpoints); "
                              "resume it, or choose a new folder")
    saved_cfg = out_dir / "train_config.json"
    if has_ckpt and saved_cfg.is_file():
        diff = _config_differences(read_json(saved_cfg), cfg.to_dict())
        if diff:
            raise ValueError(f"resume: the config differs from the run in {str(out_dir)!r} in {diff} (only "
                             f"{list(RESUME_SAFE_FIELDS)} may change); use a new out_dir to start a new run")

    # --- data first: bad shard folders fail before any model is built --------------------
    pipeline = DataPipeline(cfg.data)
    vocab = int(pipeline.windows.manifest["tokenizer"]["vocab_size"])
    if vocab > cfg.model.d_vocab:
        raise ValueError(f"TrainConfig.model.d_vocab={cfg.model.d_vocab} is smaller than the tokenizer's "
                         f"vocab_size={vocab} of {cfg.data.shard_dir!r}")
    val_tokens = held_out_batches(cfg)
    sink_tokens = sink_tracking_tokens(cfg) if cfg.sink_every else None

    dd, device = _setup_distributed(cfg)
    try:
        with _StopOnSignal(enabled=dd.world == 1) as stop:
            return _run(cfg, out_dir, dd, device, pipeline, val_tokens, sink_tokens, end, has_ckpt, verbose, stop)
    finally:
        if dd.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_weights_from(model: SinkTransformer, source: str | os.PathLike) -> dict[str, Any]:
    """Copy the parameters of the model in ``source`` (a model folder, a shipped model's name, or a run
    folder: its newest checkpoint) into ``model`` (``TrainConfig.init_from``). Parameters ``model`` has and the source lacks
    keep their values; buffers are not copied. Returns what was done: the source folder, its step, the
    parameters copied and those left fresh. A source parameter ``model`` has no place for, or of another
    shape, raises a ValueError naming it (nothing is copied then)."""
    from sinkinterp.loading import resolve_spec

    folder = Path(source)
    if (folder / CKPT_DIR / LATEST).is_file():
        folder = folder / CKPT_DIR / (folder / CKPT_DIR / LATEST).read_text().strip()
    else:  # a sinkinterp model folder or a shipped model's name, as every command names models
        try:
            kind, where = resolve_spec(str(source))
        except (ValueError, FileNotFoundError) as err:
            raise FileNotFoundError(f"TrainConfig.init_from: {str(source)!r} is neither a model folder (model.safetensors "
                                    f"+ config.json), a shipped model nor a run folder with {CKPT_DIR}/{LATEST} "
                                    f"({err})") from None
        if kind != "sinkinterp":
            raise ValueError(f"TrainConfig.init_from: {str(source)!r} is a {kind} model; a run starts only from a "
                             "sinkinterp model (a checkpoint folder, a shipped model, a run folder)")
        folder = Path(where)
    theirs = dict(load_checkpoint(folder, device="cpu", dtype=torch.float32).named_parameters())
    ours = dict(model.named_parameters())
    no_place = sorted(set(theirs) - set(ours))
    reshaped = [f"{n} {tuple(theirs[n].shape)} vs {tuple(ours[n].shape)}" for n in theirs
                if n in ours and theirs[n].shape != ours[n].shape]
    if no_place or reshaped:
        raise ValueError(f"TrainConfig.init_from: the model in {str(folder)!r} does not fit this config's model: "
                         + "; ".join(([f"no parameter here for {no_place}"] if no_place else [])
                                     + ([f"other shapes: {reshaped}"] if reshaped else [])))
    with torch.no_grad():
        for name, p in theirs.items():
            ours[name].copy_(p.to(device=ours[name].device, dtype=ours[name].dtype))
    return {"source": str(folder), "source_step": read_checkpoint_info(folder).get("extra", {}).get("step"),
            "copied": sorted(theirs), "fresh": sorted(set(ours) - set(theirs))}


def _run(cfg, out_dir, dd, device, pipeline, val_tokens, sink_tokens, end, has_ckpt, verbose,
         stop: _StopOnSignal) -> TrainResult:
    t_start = time.perf_counter()
    ckpt_root = out_dir / CKPT_DIR
    metrics_path = out_dir / "metrics.jsonl"
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = SinkTransformer(cfg.model).to(device)
    started = init_weights_from(model, cfg.init_from) if cfg.init_from is not None and not has_ckpt else None
    model.set_attn_backend(cfg.attn_backend).set_triton_kernel(cfg.triton_sim_impl, cfg.triton_dq)
    model.train()
    opt = build_optimizer(model, cfg, device)
    fused = device.type == "cuda"

    start = 0
    rows: list[dict[str, Any]] = []
    if has_ckpt:
        name = (ckpt_root / LATEST).read_text().strip()
        folder = ckpt_root / name
        loaded = load_checkpoint(folder, device="cpu", dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        del loaded
        state = torch.load(folder / OPTIMIZER_NAME, map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        for g in opt.param_groups:
            g["fused"] = True if fused else None
        start = int(state["step"])
        _set_rng_state(state["rng"], device)
        rows = [r for r in read_metrics(out_dir) if r["step"] <= start]
        if dd.main and verbose:
            print(f"[train] resumed from {folder} at step {start}", flush=True)
    if dd.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "train_config.json", cfg.to_dict())
        if started is not None:
            write_json(out_dir / "init_from.json", started)
            if verbose:
                print(f"[train] weights from {started['source']} (step {started['source_step']}); "
                      f"fresh: {started['fresh'] or 'none'}", flush=True)
        _write_jsonl(metrics_path, rows)  # drops rows logged after the checkpoint we resume from

    fwd: torch.nn.Module = model
    if cfg.compile:
        fwd = torch.compile(model)
    if dd.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)

    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    per_rank = cfg.data.batch_size // dd.world
    lo, hi = dd.rank * per_rank, (dd.rank + 1) * per_rank
    tokens_per_step = cfg.tokens_per_step
    fpt = flops_per_token(cfg.model, cfg.data.seq_len)
    peak = peak_flops(device)
    val_tokens = val_tokens.to(device)
    clip = cfg.grad_clip if cfg.grad_clip else None

    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), math.inf, device=device)
    grad_norm = torch.zeros((), device=device)
    n_acc = 0
    lr = lr_at(cfg, max(start - 1, 0))
    final: dict[str, Any] = {}
    for r in rows:
        final.update({k: v for k, v in r.items() if v is not None})

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), torch.autocast(**autocast):
            losses = [model(b, return_type="loss").float() for b in val_tokens]
        model.train()
        return float(torch.stack(losses).mean())

    def sinks() -> dict[str, Any]:
        from sinkinterp.measure import measure

        rep = measure(model, sink_tokens, eps=cfg.sink_eps, norms=True, qk_heads=None,
                      batch_size=min(32, sink_tokens.shape[0]))
        ratio = np.asarray(rep.norms["resid"]["massive_ratio"], dtype=np.float64)
        return {
            "sink1": float(rep.sink_pct[0]),
            "sink2": float(rep.sink_pct[1]) if len(rep.sink_pct) > 1 else None,
            "sink_bias": None if rep.sink_bias_pct is None else float(rep.sink_bias_pct),
            "massive_ratio": _finite_or_none(float(np.max(ratio))),
        }

    def save(step: int) -> None:
        folder = ckpt_root / f"step_{step:07d}"
        extra = {
            "step": step,
            "tokens_seen": step * tokens_per_step,
            "data_position": {"next_step": step, "seed": cfg.data.seed, "sampling": cfg.data.sampling,
                              "note": "the batch of step s is DataPipeline(data).batch_at(s)"},
            "train_config": cfg.to_dict(),
            "world_size": dd.world,
        }
        save_checkpoint(folder, model, extra=extra)
        blob = {"optimizer": opt.state_dict(), "rng": _rng_state(device), "step": step}
        atomic_write(folder / OPTIMIZER_NAME, lambda f: torch.save(blob, f))
        latest = ckpt_root / LATEST
        previous = latest.read_text().strip() if latest.is_file() else None
        atomic_write(latest, lambda f: f.write(folder.name.encode()))
        if previous and previous != folder.name and (ckpt_root / previous / OPTIMIZER_NAME).exists():
            (ckpt_root / previous / OPTIMIZER_NAME).unlink()

    def emit(row: dict[str, Any]) -> None:
        full = {k: row.get(k) for k in METRIC_FIELDS}
        final.update({k: v for k, v in full.items() if v is not None})
        with open(metrics_path, "a") as f:
            f.write(json.dumps(full) + "\n")
        if verbose:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in full.items() if v is not None and k != "elapsed_s")
            print(f"[train] {shown}", flush=True)

    def periodic(every: int, step: int) -> bool:
        return step == 0 or step == cfg.steps or (every > 0 and step % every == 0)

    # step-0 evaluation: the starting point of every curve
    if start == 0 and dd.main:
        row: dict[str, Any] = {"step": 0, "lr": lr_at(cfg, 0), "tokens_seen": 0}
        row["val_loss"] = evaluate()
        if sink_tokens is not None:
            row.update(sinks())
        row["elapsed_s"] = round(time.perf_counter() - t_start, 3)
        emit(row)

    t_interval = time.perf_counter()
    stopped_by: str | None = None
    for step in range(start, end):
        lr = lr_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        tokens = torch.from_numpy(pipeline.batch_at(step)[lo:hi]).to(device, non_blocking=True)
        with torch.autocast(**autocast):
            loss = fwd(tokens, return_type="loss")
        loss.backward()
        if clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ld = loss.detach().float()
        loss_sum += ld
        first_bad = torch.where(torch.isfinite(ld), first_bad, first_bad.clamp(max=float(step)))
        n_acc += 1

        done = step + 1
        do_eval = periodic(cfg.eval_every, done)
        do_sink = cfg.sink_every > 0 and periodic(cfg.sink_every, done)
        stopping = stop.signum is not None
        do_ckpt = done == end or stopping or (cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0)
        if not (done % cfg.log_every == 0 or do_eval or do_sink or do_ckpt):
            continue

        # --- sync point: the only host syncs of the loop --------------------------------
        summed, fb = loss_sum.clone(), first_bad.clamp(max=1e30)
        if dd.world > 1:
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            dist.all_reduce(fb, op=dist.ReduceOp.MIN)
            summed /= dd.world
        vals = torch.stack([summed, fb, grad_norm.detach().float()]).tolist()
        train_loss, bad_step = vals[0] / n_acc, vals[1]
        elapsed = time.perf_counter() - t_interval
        if bad_step < 1e30 or not math.isfinite(train_loss):
            at = int(bad_step) if bad_step < 1e30 else step
            raise TrainingDiverged(
                f"training loss became non-finite (NaN/inf) at step {at} (0-based update index; "
                f"lr {lr_at(cfg, at):.3g}); stopped at step {done}, last checkpoint: "
                f"{(ckpt_root / LATEST).read_text().strip() if (ckpt_root / LATEST).is_file() else 'none'}. "
                "Lower TrainConfig.lr, enable grad_clip or use dtype='float32'.")
        tps = n_acc * tokens_per_step / max(elapsed, 1e-9)
        row = {
            "step": done, "train_loss": train_loss, "lr": lr, "tokens_seen": done * tokens_per_step,
            "tokens_per_s": tps, "mfu": (tps * fpt / (peak * dd.world)) if peak else None,
            "grad_norm": _finite_or_none(vals[2]),
        }
        loss_sum.zero_()
        n_acc = 0
        if dd.main:
            if do_eval:
                row["val_loss"] = evaluate()
            if do_sink:
                row.update(sinks())
            row["elapsed_s"] = round(time.perf_counter() - t_start, 3)
            emit(row)
            if do_ckpt:
                save(done)
        if dd.world > 1 and do_ckpt:
            dist.barrier()
        t_interval = time.perf_counter()
        if stopping:
            end, stopped_by = done, signal.Signals(stop.signum).name
            if verbose:
                print(f"[train] {signal.Signals(stop.signum).name}: checkpoint saved at step {done}; "
                      "the same command resumes the run", flush=True)
            break

    finished = end == cfg.steps and stopped_by is None
    if dd.main and finished:
        final = {**{k: final.get(k) for k in METRIC_FIELDS}, "step": end, "tokens_seen": end * tokens_per_step,
                 "flops_per_token": fpt, "n_params": model.num_params(), "world_size": dd.world}
        write_json(out_dir / "final.json", final)
    if dd.world > 1:
        dist.barrier()
    return TrainResult(out_dir=out_dir, step=end, finished=finished, final=final, model=model,
                       stopped_by=stopped_by)
