"""``ModelConfig``: every architectural variant of ``SinkTransformer`` is a field here.

One frozen dataclass is the single source of truth for a model: the model is built from it,
``config.json`` of a checkpoint stores ``to_dict()`` of it, and ``from_dict()`` rebuilds it
(unknown keys are an error, never silently dropped). Validation happens in ``__post_init__``,
before any tensor is allocated; every error names the field and the values it accepts.

The defaults are a tiny LLaMA-style model (pre-RMSNorm, RoPE, SwiGLU, softmax, no biases),
the paper's baseline architecture at toy size. The paper's "60M" setup is
``ModelConfig(n_layers=10, d_model=768, n_heads=8, d_ff=1536, d_vocab=50304, n_ctx=2048)``.

TransformerLens-style aliases (``n_key_value_heads``, ``positional_embedding_type``, ``d_mlp``,
``normalization_type``, ``act_fn``, ``attn_only``) are read-only properties, so ``model.cfg``
of a ``SinkTransformer`` can be handed to code written for ``HookedTransformerConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ModelConfig",
    "POS_EMBS",
    "NORM_PLACEMENTS",
    "NORM_TYPES",
    "FFNS",
    "ATTN_OPS",
    "ATTN_BIASES",
    "ATTN_BIAS_REMOVALS",
    "SLOT_BIASES",
    "SOFTMAX_OPS",
    "KERNEL_OPS",
]

POS_EMBS = ("none", "sinusoidal", "learned", "rotary", "alibi", "relative")
NORM_PLACEMENTS = ("pre", "post")
NORM_TYPES = ("rmsnorm", "layernorm")
FFNS = ("swiglu", "geglu", "reglu", "gelu", "relu")
ATTN_OPS = (
    "softmax",
    "softmax_scaled",
    "sigmoid",
    "sigmoid_norm",
    "elu1",
    "elu1_norm",
    "linear_elu",
    "linear_identity",
)
ATTN_BIASES = ("none", "kv", "k", "v", "sink_token", "sink_logit")
ATTN_BIAS_REMOVALS = ("none", "v", "all")

#: attention biases that add an extra key column ("slot") every query can attend to
SLOT_BIASES = ("kv", "k", "sink_token", "sink_logit")
#: ops computed with a softmax (fused SDPA path)
SOFTMAX_OPS = ("softmax", "softmax_scaled")
#: kernel (linear) attention: a feature map on q and k, the score is phi(q).phi(k)/sqrt(d_head)
KERNEL_OPS = ("linear_elu", "linear_identity")
#: ops that use the sigmoid of the score
SIGMOID_OPS = ("sigmoid", "sigmoid_norm")

_TL_POS_NAMES = {
    "none": "none",
    "sinusoidal": "sinusoidal",
    "learned": "standard",  # TransformerLens' name for a learned absolute table
    "rotary": "rotary",
    "alibi": "alibi",
    "relative": "relative_positional_bias",
}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"ModelConfig.{name}: got {value!r}, allowed values are {list(allowed)}")


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ModelConfig.{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"ModelConfig.{name}: must be >= {minimum}, got {value}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"ModelConfig.{name}: expected True or False, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"ModelConfig.{name}: expected a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"ModelConfig.{name}: must be > 0, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a ``SinkTransformer``. Frozen; build variants with ``replace(**changes)``."""

    # --- sizes --------------------------------------------------------------------------
    n_layers: int = 2
    """number of transformer blocks."""
    d_model: int = 64
    """width of the residual stream."""
    n_heads: int = 4
    """number of query heads per attention layer."""
    n_kv_heads: int | None = None
    """number of key/value heads (grouped-query attention); None means n_heads. Must divide n_heads."""
    d_head: int | None = None
    """width of one head; None means d_model // n_heads (then d_model must be divisible by n_heads)."""
    d_ff: int | None = None
    """hidden width of the feed-forward network (of each branch for gated FFNs); None means 4 * d_model."""
    d_vocab: int = 256
    """vocabulary size (rows of the embedding, columns of the unembedding)."""
    n_ctx: int = 128
    """maximum sequence length a forward pass accepts (size of a learned position table)."""

    # --- positions ----------------------------------------------------------------------
    pos_emb: str = "rotary"
    """positional information: "none" (NoPE) | "sinusoidal" | "learned" (absolute, added to the
    embedding) | "rotary" (RoPE on q and k, rotate-half convention) | "alibi" (fixed per-head linear
    score bias) | "relative" (T5-style log buckets of |t - s|, a learned per-layer per-head score bias)."""
    rotary_base: float = 10000.0
    """RoPE base (theta); only for pos_emb="rotary"."""
    sinusoidal_scale: float = 1.0
    """multiplier of the sinusoidal table added to the token embeddings; only for pos_emb="sinusoidal".
    1.0 is Vaswani et al.'s table as the paper's code adds it (entries in [-1, 1], which swamp token
    embeddings drawn with std init_std); init_std puts it at the embeddings' scale."""
    relative_num_buckets: int = 32
    """number of T5 buckets; only for pos_emb="relative" (the paper's code used 32)."""
    relative_max_distance: int = 128
    """distance where the last T5 bucket starts; only for pos_emb="relative" (paper: 128)."""

    # --- block --------------------------------------------------------------------------
    norm_placement: str = "pre"
    """"pre": x + f(norm(x)) with a final norm; "post": norm(x + f(x)), no final norm (paper's post-LN)."""
    norm_type: str = "rmsnorm"
    """"rmsnorm" (weight only) | "layernorm" (weight and bias)."""
    norm_eps: float = 1e-5
    """epsilon inside the norms."""
    ffn: str = "swiglu"
    """feed-forward type: "swiglu" | "geglu" | "reglu" (gated, three matrices) | "gelu" | "relu"."""

    # --- attention ----------------------------------------------------------------------
    attn_op: str = "softmax"
    """how scores s = q.k/sqrt(d_head) become weights: "softmax" | "softmax_scaled" (softmax times
    softmax_alpha, rows sum to alpha) | "sigmoid" (sigmoid(s + sigmoid_bias), unnormalized) |
    "sigmoid_norm" (sigmoid normalized to sum 1) | "elu1" (elu(s) + 1, unnormalized) | "elu1_norm" |
    "linear_elu" (kernel attention, phi = elu + 1 on q and k after RoPE, normalized) |
    "linear_identity" (kernel attention with phi = identity, unnormalized)."""
    softmax_alpha: float = 1.0
    """sum of each attention row for attn_op="softmax_scaled"; must stay 1.0 for other ops."""
    sigmoid_bias: float | str = 0.0
    """score bias b inside sigmoid(s + b): a number or "-log n" (b = -log(seq_len), Apple's sigmoid
    attention); only for attn_op "sigmoid" / "sigmoid_norm" (the paper used 0)."""
    attn_eps: float = 1e-8
    """epsilon added to the denominator of normalized non-softmax ops (the paper's code: 1e-8)."""
    attn_gate: bool = False
    """Qwen gated attention: multiply each head's output elementwise by sigmoid(x W_gate) before W_O."""
    attn_bias: str = "none"
    """attention bias of the paper's section 7: "none" | "kv" (learnable k*, v* per kv head, an extra
    key/value slot every query sees; k* is not rotated) | "k" (k* only, v* = 0) | "v" (v* only: added to
    each head's output, softmax(QK)V + v*, as in the paper's code; no slot) | "sink_token" (a learnable
    token prepended to the sequence, with its own residual path through every layer) | "sink_logit"
    (gpt-oss: a learned per-head logit in the softmax denominator, value 0)."""
    attn_bias_shared: bool = False
    """one k* / v* / sink logit shared by all heads instead of one per head (kv, k, v, sink_logit)."""
    sink_logit_fixed: float | None = None
    """attn_bias="sink_logit" with the logit held at this value instead of learned (a buffer, not a
    parameter): 0.0 is softmax-off-by-one, exp(s_j) / (1 + sum_i exp(s_i)) (Miller 2023, "Attention is off
    by one"; Kaul et al. 2024's softmax-1); None = learned per head (gpt-oss)."""
    sink_logit_init: float = 0.0
    """a learned sink logit's value at initialization (attn_bias="sink_logit", sink_logit_fixed None): 0.0
    starts it where softmax-off-by-one holds it; a lower start asks whether the slot still takes the sink
    when it has to climb to it."""
    attn_bias_removed: str = "none"
    """bias removed after training (the paper's ablation): "none" | "v" (v* treated as 0, the slot
    keeps its key) | "all" (no slot, no v*). Parameters stay in the model so the removal is reversible;
    set by ``remove_attention_bias``."""
    window: int | None = None
    """sliding-window attention: query t sees keys s with t - window < s <= t; None = full causal."""
    prefix_len: int = 0
    """prefix LM: the first prefix_len tokens attend to each other bidirectionally and the loss is
    computed only on tokens after the prefix; 0 = plain causal LM."""

    # --- embeddings / init --------------------------------------------------------------
    tie_embeddings: bool = False
    """use the transposed embedding as the unembedding."""
    init_std: float = 0.02
    """standard deviation of the normal init (output projections get init_std / sqrt(2 n_layers))."""
    seed: int = 0
    """seed of the parameter initialisation (a private generator: the global RNG is not touched)."""

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            _int(name, getattr(self, name), 1)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        _int("n_kv_heads", self.n_kv_heads, 1)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads: must divide n_heads={self.n_heads}, got {self.n_kv_heads}"
            )
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"ModelConfig.d_head: d_model={self.d_model} is not divisible by n_heads="
                    f"{self.n_heads}; give d_head explicitly"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        _int("d_head", self.d_head, 1)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _int("d_ff", self.d_ff, 1)

        _choice("pos_emb", self.pos_emb, POS_EMBS)
        _positive_float("rotary_base", self.rotary_base)
        if self.pos_emb == "rotary" and self.d_head % 2:
            raise ValueError(f"ModelConfig.d_head: rotary needs an even d_head, got {self.d_head}")
        if self.pos_emb != "rotary" and self.rotary_base != 10000.0:
            raise ValueError("ModelConfig.rotary_base: only applies to pos_emb='rotary'")
        _positive_float("sinusoidal_scale", self.sinusoidal_scale)
        if self.pos_emb != "sinusoidal" and self.sinusoidal_scale != 1.0:
            raise ValueError("ModelConfig.sinusoidal_scale: only applies to pos_emb='sinusoidal'")
        _int("relative_num_buckets", self.relative_num_buckets, 2)
        _int("relative_max_distance", self.relative_max_distance, 1)
        if self.pos_emb != "relative" and (self.relative_num_buckets, self.relative_max_distance) != (32, 128):
            raise ValueError(
                "ModelConfig.relative_num_buckets / relative_max_distance: only apply to pos_emb='relative'"
            )
        if self.pos_emb == "relative" and self.relative_max_distance <= self.relative_num_buckets // 2:
            raise ValueError(
                f"ModelConfig.relative_max_distance: must exceed relative_num_buckets // 2 = "
                f"{self.relative_num_buckets // 2}, got {self.relative_max_distance}"
            )

        _choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        _choice("norm_type", self.norm_type, NORM_TYPES)
        _positive_float("norm_eps", self.norm_eps)
        _choice("ffn", self.ffn, FFNS)

        _choice("attn_op", self.attn_op, ATTN_OPS)
        _positive_float("softmax_alpha", self.softmax_alpha)
        if self.attn_op != "softmax_scaled" and self.softmax_alpha != 1.0:
            raise ValueError(
                f"ModelConfig.softmax_alpha: only applies to attn_op='softmax_scaled', "
                f"got softmax_alpha={self.softmax_alpha} with attn_op={self.attn_op!r}"
            )
        sb = self.sigmoid_bias
        if isinstance(sb, str):
            if sb != "-log n":
                raise ValueError(f"ModelConfig.sigmoid_bias: a number or '-log n', got {sb!r}")
        elif isinstance(sb, bool) or not isinstance(sb, (int, float)) or not math.isfinite(sb):
            raise TypeError(f"ModelConfig.sigmoid_bias: a finite number or '-log n', got {sb!r}")
        if self.attn_op not in SIGMOID_OPS and sb != 0.0:
            raise ValueError(
                f"ModelConfig.sigmoid_bias: only applies to attn_op in {list(SIGMOID_OPS)}, "
                f"got sigmoid_bias={sb!r} with attn_op={self.attn_op!r}"
            )
        _positive_float("attn_eps", self.attn_eps)
        if self.attn_op in KERNEL_OPS and self.pos_emb in ("alibi", "relative"):
            raise ValueError(
                f"ModelConfig.pos_emb: additive score biases ({self.pos_emb!r}) are not defined for "
                f"kernel attention attn_op={self.attn_op!r}; use one of "
                f"{['none', 'sinusoidal', 'learned', 'rotary']}"
            )
        _bool("attn_gate", self.attn_gate)

        _choice("attn_bias", self.attn_bias, ATTN_BIASES)
        _bool("attn_bias_shared", self.attn_bias_shared)
        if self.attn_bias_shared and self.attn_bias not in ("kv", "k", "v", "sink_logit"):
            raise ValueError(
                f"ModelConfig.attn_bias_shared: only applies to attn_bias in "
                f"{['kv', 'k', 'v', 'sink_logit']}, got attn_bias={self.attn_bias!r}"
            )
        if self.sink_logit_fixed is not None:
            if isinstance(self.sink_logit_fixed, bool) or not isinstance(self.sink_logit_fixed, (int, float)) \
                    or not math.isfinite(self.sink_logit_fixed):
                raise TypeError(f"ModelConfig.sink_logit_fixed: expected None or a finite number, "
                                f"got {self.sink_logit_fixed!r}")
            if self.attn_bias != "sink_logit":
                raise ValueError(f"ModelConfig.sink_logit_fixed: only applies to attn_bias='sink_logit', "
                                 f"got attn_bias={self.attn_bias!r}")
        if isinstance(self.sink_logit_init, bool) or not isinstance(self.sink_logit_init, (int, float)) \
                or not math.isfinite(self.sink_logit_init):
            raise TypeError(f"ModelConfig.sink_logit_init: expected a finite number, got {self.sink_logit_init!r}")
        if self.sink_logit_init != 0.0 and (self.attn_bias != "sink_logit" or self.sink_logit_fixed is not None):
            raise ValueError(f"ModelConfig.sink_logit_init: only applies to a learned sink logit (attn_bias='sink_logit', "
                             f"sink_logit_fixed None), got attn_bias={self.attn_bias!r}, "
                             f"sink_logit_fixed={self.sink_logit_fixed!r}")
        if self.attn_bias == "sink_logit" and self.attn_op in KERNEL_OPS:
            raise ValueError(
                f"ModelConfig.attn_bias: 'sink_logit' needs a score-based attn_op, not kernel "
                f"attention {self.attn_op!r}"
            )
        _choice("attn_bias_removed", self.attn_bias_removed, ATTN_BIAS_REMOVALS)
        if self.attn_bias_removed != "none":
            if self.attn_bias == "none":
                raise ValueError("ModelConfig.attn_bias_removed: the model has no attention bias")
            if self.attn_bias_removed == "v" and self.attn_bias not in ("kv", "v", "sink_token"):
                raise ValueError(
                    f"ModelConfig.attn_bias_removed: 'v' needs a value bias (attn_bias in "
                    f"{['kv', 'v', 'sink_token']}), got attn_bias={self.attn_bias!r}"
                )

        if self.window is not None:
            _int("window", self.window, 1)
        _int("prefix_len", self.prefix_len, 0)
        if self.prefix_len >= self.n_ctx:
            raise ValueError(
                f"ModelConfig.prefix_len: must be < n_ctx={self.n_ctx}, got {self.prefix_len}"
            )

        _bool("tie_embeddings", self.tie_embeddings)
        _positive_float("init_std", self.init_std)
        _int("seed", self.seed, 0)

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields (derived defaults resolved)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``. Unknown keys raise a ValueError that names them."""
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = cls.field_names()
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown field(s) {unknown}; known fields are {known}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(f"ModelConfig.replace: unknown field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    # --- derived facts the model code dispatches on ---------------------------------------
    @property
    def has_slot(self) -> bool:
        """True when attention has an extra key slot (learned k*, sink token or sink logit) in use."""
        return self.attn_bias in SLOT_BIASES and self.attn_bias_removed != "all"

    @property
    def has_v_bias(self) -> bool:
        """True when a learned v* is added to the head outputs ("v" bias, not removed)."""
        return self.attn_bias == "v" and self.attn_bias_removed == "none"

    # --- TransformerLens-style aliases ----------------------------------------------------
    @property
    def n_key_value_heads(self) -> int:
        return int(self.n_kv_heads)  # type: ignore[arg-type]

    @property
    def positional_embedding_type(self) -> str:
        return _TL_POS_NAMES[self.pos_emb]

    @property
    def d_mlp(self) -> int:
        return int(self.d_ff)  # type: ignore[arg-type]

    @property
    def normalization_type(self) -> str:
        return "RMS" if self.norm_type == "rmsnorm" else "LN"

    @property
    def act_fn(self) -> str:
        return {"swiglu": "silu", "geglu": "gelu", "reglu": "relu", "gelu": "gelu", "relu": "relu"}[self.ffn]

    @property
    def gated_mlp(self) -> bool:
        return self.ffn in ("swiglu", "geglu", "reglu")

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def device(self) -> None:
        """None: a config is device-independent. transformer_lens.patching reads ``cfg.device`` to
        place its result tensor; None puts it on torch's default device."""
        return None

    @property
    def original_architecture(self) -> str:
        return "SinkTransformer"
