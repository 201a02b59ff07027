"""``TrainConfig``: one frozen dataclass describing a whole training run.

A run is ``TrainConfig(model=ModelConfig(...), data=DataConfig(...), steps=..., lr=...)``.
``to_dict()`` / ``from_dict()`` round-trip through plain JSON (the files in ``configs/`` are such
dicts); unknown keys are an error at every level (train, model, data), never silently dropped.
Validation happens in ``__post_init__``, before any tensor is allocated or file is read; every
error names the field and the values it accepts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sinkinterp.data.transforms import DataConfig
from sinkinterp.models.attention import ATTN_BACKENDS
from sinkinterp.models.config import ModelConfig
from sinkinterp.models.triton_attention import DQ_MODES, SIM_IMPLS

__all__ = ["TrainConfig", "SCHEDULES", "DECAY_PARAMS", "DTYPES", "RESUME_SAFE_FIELDS"]

SCHEDULES = ("cosine", "constant")
DECAY_PARAMS = ("matrices", "all")
DTYPES = ("float32", "bfloat16")

#: fields that may differ between a checkpointed run and the config it is resumed with (they do
#: not change the weights a step produces); any other difference refuses to resume.
RESUME_SAFE_FIELDS = ("log_every", "ckpt_every", "device", "compile", "attn_backend", "triton_sim_impl", "triton_dq")


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"TrainConfig.{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"TrainConfig.{name}: must be an int >= {minimum}, got {value}")


def _float(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"TrainConfig.{name}: expected a finite number, got {value!r}")
    bad = value <= lo if lo_open else value < lo
    if bad or value > hi:
        lo_s = "(" if lo_open else "["
        hi_s = "inf)" if hi == math.inf else f"{hi}]"
        raise ValueError(f"TrainConfig.{name}: must be in {lo_s}{lo}, {hi_s}, got {value}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"TrainConfig.{name}: got {value!r}, allowed values are {list(allowed)}")


@dataclass(frozen=True)
class TrainConfig:
    """A training run: model, data, optimizer, schedule, evaluation and checkpoint cadence."""

    model: ModelConfig | Mapping[str, Any]
    """the architecture (a ``ModelConfig`` or its dict); ``model.seed`` seeds the initialisation."""
    data: DataConfig | Mapping[str, Any]
    """the training windows (a ``DataConfig`` or its dict); ``data.batch_size`` is the global batch
    (split over ranks under DDP), ``data.seed`` fixes the windows of every step."""
    steps: int = 1000
    """number of optimizer updates of the run (>= 1)."""
    lr: float = 1e-3
    """peak learning rate (> 0), reached at the end of warm-up."""
    warmup_steps: int = 100
    """linear warm-up: update s (0-based) uses lr * (s + 1) / warmup_steps while s < warmup_steps (>= 0)."""
    schedule: str = "cosine"
    """after warm-up: "cosine" (from lr down to min_lr_ratio * lr at the last update) | "constant"."""
    min_lr_ratio: float = 0.1
    """cosine floor as a fraction of lr, in [0, 1]. (The paper's code set min_lr = lr, which made its
    "cosine" schedule constant; here the decay is real.) Only for schedule="cosine"."""
    betas: tuple[float, float] | list[float] = (0.9, 0.95)
    """AdamW (beta1, beta2), each in [0, 1)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (>= 0); the paper's sweep is 0 .. 5."""
    decay_params: str = "matrices"
    """which parameters get weight decay: "matrices" (the W_* weight matrices: embeddings, W_Q/K/V/O,
    FFN, unembedding; not norms, k*/v* biases, sink token/logits, relative-position tables) | "all"."""
    adam_eps: float = 1e-8
    """AdamW epsilon (> 0)."""
    grad_clip: float | None = 1.0
    """clip the global gradient norm to this value; None or 0 disables clipping."""
    dtype: str = "float32"
    """compute dtype: "float32" | "bfloat16" (autocast; the weights and optimizer stay float32)."""
    compile: bool = False
    """wrap the model in ``torch.compile`` (worth it on GPU; slow to start on CPU)."""
    attn_backend: str = "auto"
    """the model's attention backend while training (``SinkTransformer.set_attn_backend``): "auto" |
    "reference" | "flex" | "triton" (the fused sigmoid / elu+1 kernel, on CUDA). The same numbers up
    to rounding, so a run may resume with another one."""
    triton_sim_impl: str | None = None
    """with attn_backend "triton": how the kernel computes each weight (``sim_attention``'s ``sim_impl``):
    "portable" | "mufu" | "tanh" (sigmoid from one hardware tanh: the fastest, an approximation, up to
    about 6e-6 absolute on a weight) | null (the kernel's default: "mufu" on a GPU)."""
    triton_dq: str = "two_pass"
    """with attn_backend "triton": "two_pass" | "atomic" (``sim_attention``'s ``dq``)."""
    log_every: int = 10
    """write a metrics.jsonl row (train loss, lr, tokens/s, MFU) every this many updates (>= 1);
    the loss stays on the device in between (no per-step host sync)."""
    eval_every: int = 100
    """validation loss every this many updates, at step 0 and at the end (0: only at step 0 and the end)."""
    eval_batches: int = 4
    """number of fixed held-out batches (data.batch_size x data.seq_len windows of the val split,
    taken in order) the validation loss averages over (>= 1)."""
    sink_every: int = 100
    """measure Sink_1, Sink_2, Sink_* and the massive-activation ratio every this many updates, at
    step 0 and at the end (0: never)."""
    sink_eval_seqs: int = 32
    """number of fixed held-out sequences for sink tracking (>= 1)."""
    sink_seq_len: int = 64
    """T of the sink-tracking sequences (>= 2, <= model.n_ctx); the paper's default is 64."""
    sink_eps: float = 0.3
    """the sink threshold eps of Sink_k^eps, in (0, 1)."""
    sink_apply_transforms: bool = True
    """apply data.transforms (random / fixed tokens at positions) to the sink-tracking sequences too."""
    ckpt_every: int = 0
    """write a checkpoint every this many updates (0: only at the end); each folder keeps the
    weights, only the newest keeps optimizer.pt."""
    seed: int = 0
    """seed of torch's global RNG for the run (the init seed is model.seed, the data seed data.seed)."""
    init_from: str | None = None
    """start the weights from a trained model instead of model.seed's initialization: a model folder
    (model.safetensors + config.json: a checkpoint's ``step_N`` folder), a shipped model's name
    ("toy-softmax") or a run's folder (its newest checkpoint). Every parameter of the folder is copied; the new model's parameters the folder
    lacks (a slot added: k*/v*, a learned sink logit, a sink token) keep their fresh initialization, and its
    buffers (a held sink logit) come from this config. A folder parameter the new model has no place for,
    or of another shape, is an error. The optimizer, the schedule and the data start at step 0 (a second
    phase of training); once the run has a checkpoint, resuming takes over. None: a fresh model."""
    device: str = "auto"
    """"auto" (cuda if available, else cpu) | "cpu" | "cuda" | "cuda:N"; under DDP "auto"/"cuda"
    become cuda:LOCAL_RANK."""

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", ModelConfig.from_dict(dict(self.model)))
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"TrainConfig.model: expected a ModelConfig or its dict, got {type(self.model).__name__}")
        if isinstance(self.data, Mapping):
            object.__setattr__(self, "data", DataConfig.from_dict(dict(self.data)))
        if not isinstance(self.data, DataConfig):
            raise TypeError(f"TrainConfig.data: expected a DataConfig or its dict, got {type(self.data).__name__}")
        if self.model.attn_bias_removed != "none":
            raise ValueError(f"TrainConfig.model: attn_bias_removed={self.model.attn_bias_removed!r} describes a "
                             "trained model with its bias ablated; train with attn_bias_removed='none'")
        if self.data.seq_len > self.model.n_ctx:
            raise ValueError(f"TrainConfig.data: seq_len={self.data.seq_len} exceeds model.n_ctx={self.model.n_ctx}")
        if self.data.seq_len < 2:
            raise ValueError("TrainConfig.data: seq_len must be >= 2 for a next-token loss")
        if self.data.split != "train":
            raise ValueError(f"TrainConfig.data: split must be 'train' (validation uses the val split), "
                             f"got {self.data.split!r}")

        _int("steps", self.steps, 1)
        _float("lr", self.lr, 0.0, lo_open=True)
        _int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps: must be <= steps={self.steps}, got {self.warmup_steps}")
        _choice("schedule", self.schedule, SCHEDULES)
        _float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        betas = self.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"TrainConfig.betas: expected two numbers (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            _float(f"betas[{i}]", b, 0.0, 1.0)
            if b >= 1.0:
                raise ValueError(f"TrainConfig.betas[{i}]: must be < 1, got {b}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        _float("weight_decay", self.weight_decay, 0.0)
        _choice("decay_params", self.decay_params, DECAY_PARAMS)
        _float("adam_eps", self.adam_eps, 0.0, lo_open=True)
        if self.grad_clip is not None:
            _float("grad_clip", self.grad_clip, 0.0)
        _choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.compile, bool):
            raise TypeError(f"TrainConfig.compile: expected true or false, got {self.compile!r}")
        _choice("attn_backend", self.attn_backend, ATTN_BACKENDS)
        if self.triton_sim_impl is not None:
            _choice("triton_sim_impl", self.triton_sim_impl, SIM_IMPLS)
        _choice("triton_dq", self.triton_dq, DQ_MODES)
        _int("log_every", self.log_every, 1)
        _int("eval_every", self.eval_every, 0)
        _int("eval_batches", self.eval_batches, 1)
        _int("sink_every", self.sink_every, 0)
        _int("sink_eval_seqs", self.sink_eval_seqs, 1)
        _int("sink_seq_len", self.sink_seq_len, 2)
        if self.sink_seq_len > self.model.n_ctx:
            raise ValueError(f"TrainConfig.sink_seq_len: must be <= model.n_ctx={self.model.n_ctx}, "
                             f"got {self.sink_seq_len}")
        _float("sink_eps", self.sink_eps, 0.0, 1.0, lo_open=True)
        if self.sink_eps >= 1.0:
            raise ValueError(f"TrainConfig.sink_eps: must be in (0, 1), got {self.sink_eps}")
        if not isinstance(self.sink_apply_transforms, bool):
            raise TypeError(f"TrainConfig.sink_apply_transforms: expected true or false, "
                            f"got {self.sink_apply_transforms!r}")
        if self.sink_apply_transforms and self.data.transforms:
            top = max(max(t.positions) for t in self.data.transforms)
            if top >= self.sink_seq_len:
                raise ValueError(f"TrainConfig.sink_seq_len: data.transforms use position {top}, which does not "
                                 f"exist in sink sequences of length {self.sink_seq_len}")
        _int("ckpt_every", self.ckpt_every, 0)
        _int("seed", self.seed, 0)
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise TypeError(f"TrainConfig.init_from: expected None or a model / run folder path, got {self.init_from!r}")
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            raise ValueError(f"TrainConfig.device: got {dev!r}, allowed values are "
                             f"['auto', 'cpu', 'cuda', 'cuda:N']")

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (model and data as their own dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("model", "data"):
                v = v.to_dict()
            elif f.name == "betas":
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``. Unknown keys (here, in "model" or in "data") raise a ValueError
        naming them; a key starting with "_" (e.g. "_comment") is ignored."""
        if not isinstance(d, Mapping):
            raise TypeError(f"TrainConfig.from_dict: expected a dict, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if not str(k).startswith("_")}
        known = cls.field_names()
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown field(s) {unknown}; known fields are {known}")
        for required in ("model", "data"):
            if required not in d:
                raise ValueError(f"TrainConfig.from_dict: missing required field {required!r}")
        if isinstance(d.get("betas"), list):
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(f"TrainConfig.replace: unknown field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    @property
    def tokens_per_step(self) -> int:
        return self.data.batch_size * self.data.seq_len
