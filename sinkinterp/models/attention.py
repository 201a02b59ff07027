"""Attention of ``SinkTransformer``: one module, variants dispatched by small tables and functions.

Three things vary, each in one place:

* the attention operation (``ATTN_OP_SPECS``): how a score ``s = q.k / sqrt(d_head)`` becomes a
  weight (softmax, scaled softmax, sigmoid, elu+1, kernel attention; normalized or not);
* where a query may look (``AttnContext``): causal, sliding window, prefix-LM, plus the positional
  score bias (ALiBi, T5 relative buckets) built once per forward pass and shared by all layers;
* the attention bias (``Slot`` / ``v*``): the paper's learnable k*/v*, a learnable sink token,
  a gpt-oss sink logit, or a value bias added to the output.

Two paths compute the same numbers:

* **fast** (nothing hooked on ``hook_attn_scores`` / ``hook_pattern`` / ``hook_bias_pattern`` /
  ``hook_row_weight``): softmax
  ops run in ``F.scaled_dot_product_attention`` (is_causal, or a boolean / additive float mask; a slot
  is an extra key column); the other ops run a plain masked ``q k^T -> sim -> @ v`` without the proxy
  bookkeeping (compilable; ``attn_backend="flex"`` runs them in FlexAttention instead, and
  ``attn_backend="triton"`` in the fused Triton kernel of ``triton_attention`` where it applies);
* **observed** (something is hooked there, which includes ``run_with_cache``): scores, pattern and
  the slot's weight are materialized and pass through the hook points; whatever a hook returns is
  what the attention uses (a patched pattern changes the output).

**Column hooks** (read-only, they never force the observed path): ``hook_pattern_cols``
[batch, head, query_pos, n_cols] holds the first ``n_cols`` key columns of the pattern (exactly what
``hook_pattern[..., :n_cols]`` would hold) and ``hook_bias_col`` [batch, head, query_pos] the slot's
weight (what ``hook_bias_pattern`` would hold). On the fast path they come from each row's
log-sum-exp instead of a T x T pattern: for softmax ops the log-sum-exp of the fused CPU flash kernel
(plain causal attention on CPU) or of a query-blocked pass over the scores (every other case: memory
O(block x T), never the whole map); for FlexAttention the kernel's own; for the plain path the row
sums it already has. ``hook_pattern_colsum`` [batch, head, key_pos] holds, for every key k, the sum
of the pattern's column k over the queries t >= k (what alpha_k averages), from one more pass over the
scores by blocks of query rows weighted with each row's log-sum-exp (the plain and materialized paths
sum their pattern). The attention output never depends on them: to patch, hook ``hook_pattern``.
``sinkinterp.measure`` uses them (``first_keys=K``: the columns; every key: the column sums).

``hook_pattern`` always covers the T real tokens only. For softmax it is the softmax (with a slot,
rows sum to 1 - bias weight); for ``softmax_scaled`` it is the softmax before the alpha scaling (the
share of each key); for the other ops it is each key's share ``sim / sum(sim)`` (the paper's proxy for
unnormalized ops; ``|sim| / sum|sim|`` for ``linear_identity``, whose sim can be negative), the slot
included in the sum, so rows sum to 1 - bias weight. The weight used is recovered from the (possibly
hooked) pattern: ``alpha * p`` for softmax_scaled, ``p * sum / (sum + eps)`` for normalized ops,
``p * sum`` (times sign(sim)) for unnormalized ops. That factor, [batch, head, query_pos], passes through
``hook_row_weight`` (the ops other than softmax; it fires before ``hook_pattern``, and what the hook returns
is used): for unnormalized ops it is each row's total weight, slot included, so a hook reads the weights
themselves (``pattern * row_weight``) and can scale a row's total without touching its shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import no_type_check

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from sinkinterp.tl_adapter import HookPoint

from .config import ModelConfig

__all__ = [
    "AttnOpSpec",
    "ATTN_OP_SPECS",
    "ATTN_BACKENDS",
    "AttnContext",
    "build_context",
    "alibi_slopes",
    "relative_buckets",
    "apply_rotary",
    "Attention",
]

ATTN_BACKENDS = ("auto", "reference", "flex", "triton")
DEFAULT_PATTERN_COLS = 10  # key columns carried by hook_pattern_cols unless set_pattern_cols changes it
_LSE_BLOCK = 256  # query rows per block of the blocked log-sum-exp
_COLSUM_BLOCK_ELEMENTS = 2 ** 22  # weights per block of hook_pattern_colsum's pass, at most (16 MB in float32: fastest on CPU)


# =========================================================================================
# attention operations
# =========================================================================================
def _sigmoid_sim(s: Tensor, bias: float) -> Tensor:
    return torch.sigmoid(s + bias)


def _elu1_sim(s: Tensor, bias: float) -> Tensor:
    return F.elu(s) + 1.0


def _identity_sim(s: Tensor, bias: float) -> Tensor:
    return s


def _elu1_feature(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


def _identity_feature(x: Tensor) -> Tensor:
    return x


# log(sim(s)) for FlexAttention (which always normalizes with a softmax); None: no flex path.
# no_type_check: these run inside FlexAttention's traced score_mod, where a runtime type-checking
# wrapper (jaxtyping's import hook in the test suite) is a side effect it refuses.
@no_type_check
def _sigmoid_log_sim(s: Tensor, bias: float) -> Tensor:
    return F.logsigmoid(s + bias)


@no_type_check
def _elu1_log_sim(s: Tensor, bias: float) -> Tensor:
    return torch.where(s < 0, s, torch.log1p(s.clamp_min(0)))


@no_type_check
def _kernel_log_sim(s: Tensor, bias: float) -> Tensor:
    return torch.log(s)


@dataclass(frozen=True)
class AttnOpSpec:
    """How scores become weights. ``softmax`` ops: weights = gain * softmax(scores). Other ops:
    sim = ``sim(score)`` (zero where masked), weights = sim / (sum sim + eps) if ``normalized`` else sim.
    ``feature`` is the kernel feature map applied to q and k before the score (kernel attention)."""

    softmax: bool
    normalized: bool
    signed: bool = False
    sim: Callable[[Tensor, float], Tensor] | None = None
    feature: Callable[[Tensor], Tensor] | None = None
    log_sim: Callable[[Tensor, float], Tensor] | None = None


ATTN_OP_SPECS: dict[str, AttnOpSpec] = {
    "softmax": AttnOpSpec(softmax=True, normalized=True),
    "softmax_scaled": AttnOpSpec(softmax=True, normalized=True),
    "sigmoid": AttnOpSpec(False, False, sim=_sigmoid_sim, log_sim=_sigmoid_log_sim),
    "sigmoid_norm": AttnOpSpec(False, True, sim=_sigmoid_sim, log_sim=_sigmoid_log_sim),
    "elu1": AttnOpSpec(False, False, sim=_elu1_sim, log_sim=_elu1_log_sim),
    "elu1_norm": AttnOpSpec(False, True, sim=_elu1_sim, log_sim=_elu1_log_sim),
    "linear_elu": AttnOpSpec(
        False, True, sim=_identity_sim, feature=_elu1_feature, log_sim=_kernel_log_sim
    ),
    "linear_identity": AttnOpSpec(
        False, False, signed=True, sim=_identity_sim, feature=_identity_feature
    ),
}


# =========================================================================================
# positions and masks
# =========================================================================================
def alibi_slopes(n_heads: int, device: torch.device | str | None = None) -> Float[Tensor, " head"]:
    """ALiBi slopes (Press et al.), computed on the device without a host copy.

    Power of two n: 2^(-8 i / n), i = 1..n. Otherwise the n' = 2^floor(log2 n) slopes followed by
    every other slope of the 2n' series (the reference implementation's interpolation).
    """
    m = 2 ** math.floor(math.log2(n_heads))
    i = torch.arange(n_heads, device=device, dtype=torch.float64)
    exponent = torch.where(i < m, -8.0 * (i + 1) / m, -4.0 * (2 * (i - m) + 1) / m)
    return torch.exp2(exponent).float()


def relative_buckets(
    distance: Int[Tensor, "..."], num_buckets: int, max_distance: int
) -> Int[Tensor, "..."]:
    """T5 buckets of a non-negative distance: exact below num_buckets // 2, then logarithmic up to
    max_distance, clamped to the last bucket (T5's unidirectional bucketing)."""
    max_exact = num_buckets // 2
    n = distance.clamp_min(0)
    large = max_exact + (
        torch.log(n.float().clamp_min(1) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = large.clamp_max(num_buckets - 1)
    return torch.where(n < max_exact, n, large)


def rotary_cos_sin(
    positions: Int[Tensor, " pos"], d_head: int, base: float, dtype: torch.dtype
) -> tuple[Float[Tensor, "pos d_head"], Float[Tensor, "pos d_head"]]:
    """cos and sin for the rotate-half (GPT-NeoX / LLaMA) RoPE convention, in ``dtype``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, device=positions.device, dtype=dtype) / d_head))
    angles = positions.to(dtype)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "pos d_head"],
    sin: Float[Tensor, "pos d_head"],
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate q or k (computed in cos' dtype, at least float32, and cast back)."""
    xf = x.to(cos.dtype)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def rotate_half_partial(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Hugging Face's rotate-half RoPE on the first ``r = cos.shape[-1]`` dimensions of ``x`` (the
    rest pass through: partial rotary, as in GPT-NeoX, StableLM and Phi), with ``cos`` / ``sin``
    already shaped to broadcast against ``x[..., :r]``. Computed in x's dtype."""
    r = cos.shape[-1]
    if r > x.shape[-1] or r % 2:
        raise ValueError(f"cos has {r} rotary dimensions for vectors of {x.shape[-1]}")
    xr = x[..., :r]
    x1, x2 = xr.chunk(2, dim=-1)
    moved = xr * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)
    return torch.cat([moved, x[..., r:]], dim=-1)


def rotate_pairs_partial(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """GPT-J's rotary embedding ("rotate every two": dimensions 2i and 2i + 1 form a pair) on the
    first ``r = cos.shape[-1]`` dimensions of ``x``, the rest passing through; ``cos`` / ``sin`` hold
    one value per dimension (each pair's angle repeated twice) shaped to broadcast against
    ``x[..., :r]``. Computed in x's dtype."""
    r = cos.shape[-1]
    if r > x.shape[-1] or r % 2:
        raise ValueError(f"cos has {r} rotary dimensions for vectors of {x.shape[-1]}")
    xr = x[..., :r]
    turned = torch.stack([-xr[..., 1::2], xr[..., 0::2]], dim=-1).flatten(-2)
    moved = xr * cos.to(x.dtype) + turned * sin.to(x.dtype)
    return torch.cat([moved, x[..., r:]], dim=-1)


@dataclass
class AttnContext:
    """Everything about positions that all layers share, built once per forward pass."""

    n_pos: int
    visible: Bool[Tensor, "query_pos key_pos"]  # may query t attend to real key s (square unless q_start > 0)
    causal_only: bool  # visible is the plain causal mask (SDPA's is_causal applies)
    sigmoid_bias: float
    rotary: tuple[Tensor, Tensor] | None = None  # cos, sin [pos, d_head]
    rotary_sink: tuple[Tensor, Tensor] | None = None  # cos, sin [1, d_head] at position -1
    alibi: Tensor | None = None  # [head, pos, pos] additive score bias
    alibi_sink: Tensor | None = None  # [head, pos, 1] bias of the sink token's slot
    buckets: Tensor | None = None  # [pos, pos] T5 bucket of each (query, key)
    buckets_sink: Tensor | None = None  # [pos, 1] bucket of the sink token's slot
    bucket_self: Tensor | None = None  # [1, 1] bucket of distance 0
    flex_masks: dict = field(default_factory=dict)  # FlexAttention block masks, shared by layers
    q_start: int = 0  # first query position (> 0: a pass continued from a cached prefix of keys)

    def from_position(self, start: int) -> AttnContext:
        """The context of a pass that computes only queries ``start..`` against all keys (keys before
        ``start`` come from a cache): query-side tensors sliced, the mask no longer square."""
        if start == 0:
            return self
        cut = lambda t: None if t is None else t[..., start:, :]  # noqa: E731  [.., query, key]
        rot = None if self.rotary is None else (self.rotary[0][start:], self.rotary[1][start:])
        rows = lambda t: None if t is None else t[start:]  # noqa: E731  [query, ...]
        return AttnContext(
            n_pos=self.n_pos - start, visible=self.visible[start:], causal_only=False,
            sigmoid_bias=self.sigmoid_bias, rotary=rot, rotary_sink=self.rotary_sink, alibi=cut(self.alibi),
            alibi_sink=cut(self.alibi_sink), buckets=rows(self.buckets), buckets_sink=rows(self.buckets_sink),
            bucket_self=self.bucket_self, q_start=start)


def build_context(cfg: ModelConfig, n_pos: int, device: torch.device, dtype: torch.dtype) -> AttnContext:
    """Masks and positional tensors for a forward pass over ``n_pos`` tokens.

    Visibility of a real key s from query t: ``s <= t`` and, with a window w, ``t - s < w``; with a
    prefix p, additionally every pair inside the prefix (s < p and t < p). A bias slot is visible to
    every query (it never leaves a sliding window). The sink token sits at position -1: RoPE rotates
    it by -1, ALiBi / relative buckets see it at distance t + 1.
    """
    pos = torch.arange(n_pos, device=device)
    dist = pos[:, None] - pos[None, :]  # t - s
    visible = dist >= 0
    if cfg.window is not None:
        visible = visible & (dist < cfg.window)
    if cfg.prefix_len > 0:
        in_prefix = pos < cfg.prefix_len
        visible = visible | (in_prefix[:, None] & in_prefix[None, :])
    causal_only = (cfg.window is None or cfg.window >= n_pos) and cfg.prefix_len <= 1

    if cfg.sigmoid_bias == "-log n":
        sigmoid_bias = -math.log(n_pos)
    else:
        sigmoid_bias = float(cfg.sigmoid_bias)
    ctx = AttnContext(n_pos=n_pos, visible=visible, causal_only=causal_only, sigmoid_bias=sigmoid_bias)

    sink_token = cfg.attn_bias == "sink_token" and cfg.has_slot
    # positional math in float32 at least (float64 for a float64 model)
    pdtype = torch.promote_types(dtype, torch.float32)
    if cfg.pos_emb == "rotary":
        ctx.rotary = rotary_cos_sin(pos, cfg.d_head, cfg.rotary_base, pdtype)
        if sink_token:
            ctx.rotary_sink = rotary_cos_sin(pos[:1] - 1, cfg.d_head, cfg.rotary_base, pdtype)
    elif cfg.pos_emb == "alibi":
        slopes = alibi_slopes(cfg.n_heads, device).to(pdtype)
        ctx.alibi = -slopes[:, None, None] * dist.abs().to(pdtype)[None]
        if sink_token:
            ctx.alibi_sink = -slopes[:, None, None] * (pos + 1).to(pdtype)[None, :, None]
    elif cfg.pos_emb == "relative":
        nb, md = cfg.relative_num_buckets, cfg.relative_max_distance
        ctx.buckets = relative_buckets(dist.abs(), nb, md)
        if sink_token:
            ctx.buckets_sink = relative_buckets(pos[:, None] + 1, nb, md)
            ctx.bucket_self = relative_buckets(pos[:1, None] * 0, nb, md)
    return ctx


# =========================================================================================
# the attention module
# =========================================================================================
@dataclass
class Slot:
    """The extra key column of a bias slot, for one layer and one forward pass."""

    key: Tensor | None  # [1, kv_head, 1, d_head] (None: a zero key, the score is `logit`)
    value: Tensor | None  # [1, kv_head, 1, d_head] (None: v* = 0)
    score_bias: Tensor | None  # [head, pos, 1] added to the slot's score (sink logit, ALiBi, buckets)


def _to_heads(x: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch head pos d_head"]:
    return x.transpose(1, 2)


def _at_or_after(ctx: AttnContext, a: int, e: int, n_keys: int) -> Bool[Tensor, "q key"]:
    """[e - a, n_keys]: key s <= query t for the query rows a..e-1 of the pass (absolute positions
    ctx.q_start + row): the entries alpha_k averages (t >= k), also where a prefix LM looks ahead."""
    rows = ctx.q_start + torch.arange(a, e, device=ctx.visible.device)
    return torch.arange(n_keys, device=rows.device)[None, :] <= rows[:, None]


def _grouped_scores(
    q: Float[Tensor, "batch head qpos d_head"], k: Float[Tensor, "kbatch kv_head kpos d_head"]
) -> Float[Tensor, "batch head qpos kpos"]:
    """q.k for grouped-query attention: query head h reads kv head h // (n_heads / n_kv_heads)."""
    b, h, t, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, h // hkv, t, d)
    return torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).reshape(b, h, t, k.shape[2])


def _grouped_mix(
    w: Float[Tensor, "batch head qpos kpos"], v: Float[Tensor, "kbatch kv_head kpos d_head"]
) -> Float[Tensor, "batch head qpos d_head"]:
    b, h, t, s = w.shape
    hkv = v.shape[1]
    wg = w.reshape(b, hkv, h // hkv, t, s)
    return torch.matmul(wg, v.unsqueeze(2)).reshape(b, h, t, v.shape[-1])


def _flash_with_lse(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor] | None:
    """Causal attention and each row's log-sum-exp [batch, head, pos] from PyTorch's fused flash
    kernel (on CPU the kernel ``F.scaled_dot_product_attention`` runs; on CUDA FlashAttention-2, for
    bfloat16 / float16 and d_head <= 256), or None where it does not apply (another device or dtype,
    or a PyTorch without these private ops): the caller then computes the log-sum-exp by blocks."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16):
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    elif q.device.type == "cuda" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256 \
            and q.shape[-1] % 8 == 0:
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None)
    else:
        return None
    if op is None:
        return None
    if k.shape[1] != q.shape[1]:
        k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    try:
        z, lse = op(q, k, v, 0.0, True, scale=scale)[:2]
    except (TypeError, NotImplementedError, RuntimeError):  # private ops: another PyTorch or GPU may refuse
        return None
    if z.shape != q.shape or lse.shape != q.shape[:3]:
        return None
    return z, lse.to(torch.promote_types(q.dtype, torch.float32))


def _colsum_flash_cpu(q: Tensor, k: Tensor, lse: Tensor, scale: float) -> Tensor | None:
    """For every key s, sum over queries t >= s of exp(scale q_t.k_s - lse_t) [batch, head, key_pos],
    from one call of PyTorch's fused CPU flash kernel, or None where it does not apply (not CPU, or
    a PyTorch without the op or without an additive mask beside its causal one). The roles swap: keys
    ask, queries answer, positions reversed so that "t >= s" is the kernel's causal mask, and -lse_t
    enters as an additive mask on answering position t (one row, broadcast over the asking ones), so
    the kernel's own log-sum-exp of each asking row is log(sum_t exp(scale q_t.k_s - lse_t)). The
    head size stays that of q and k (no extra dimension carrying -lse_t / scale). Computed in lse's
    dtype (float32 or float64)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or q.device.type != "cpu" or lse.dtype not in (torch.float32, torch.float64):
        return None
    b, h, t, _ = q.shape
    if k.shape[1] != h:
        k = _repeat_kv(k, h)
    ask = k.to(lse.dtype).flip(2).contiguous()
    answer = q.to(lse.dtype).flip(2).contiguous()
    bias = (-lse).flip(2).unsqueeze(2).contiguous()  # [batch, head, 1, answering position]
    try:
        col_lse = op(ask, answer, torch.zeros_like(ask), 0.0, True, attn_mask=bias, scale=scale)[1]
    except (TypeError, NotImplementedError, RuntimeError):  # a private op: another PyTorch may refuse
        return None
    if col_lse.shape != (b, h, t):
        return None
    return col_lse.to(lse.dtype).flip(2).exp()


def _repeat_kv(x: Tensor, n_heads: int) -> Tensor:
    """[.., kv_head, ..] -> [.., head, ..] along dim 1 (repeat_interleave, the GQA convention)."""
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with TransformerLens parameter and hook names.

    Parameters: ``W_Q`` [head, d_model, d_head], ``W_K`` / ``W_V`` [kv_head, d_model, d_head],
    ``W_O`` [head, d_head, d_model]; optional ``W_gate`` [head, d_model, d_head] (gated attention),
    ``rel_bias`` [bucket, head] (relative positions), ``k_star`` / ``v_star`` (kv / k / v biases),
    ``sink_logit`` [head] (sink_logit bias).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, hkv, d, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head
        self.op = ATTN_OP_SPECS[cfg.attn_op]
        self.gain = cfg.softmax_alpha if cfg.attn_op == "softmax_scaled" else 1.0
        self.scale = 1.0 / math.sqrt(dh)
        self.backend = "auto"
        self.triton_kernel: dict = {}  # sim_attention's sim_impl / dq (SinkTransformer.set_triton_kernel)
        self.n_cols = DEFAULT_PATTERN_COLS

        self.W_Q = nn.Parameter(torch.empty(h, d, dh))
        self.W_K = nn.Parameter(torch.empty(hkv, d, dh))
        self.W_V = nn.Parameter(torch.empty(hkv, d, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d))
        if cfg.attn_gate:
            self.W_gate = nn.Parameter(torch.empty(h, d, dh))
        if cfg.pos_emb == "relative":
            self.rel_bias = nn.Parameter(torch.empty(cfg.relative_num_buckets, h))
        n_bias = 1 if cfg.attn_bias_shared else hkv
        if cfg.attn_bias in ("kv", "k"):
            self.k_star = nn.Parameter(torch.empty(n_bias, dh))
        if cfg.attn_bias == "kv":
            self.v_star = nn.Parameter(torch.empty(n_bias, dh))
        if cfg.attn_bias == "v":  # added to every query head's output, as in the paper's code
            self.v_star = nn.Parameter(torch.empty(1 if cfg.attn_bias_shared else h, dh))
        if cfg.attn_bias == "sink_logit" and cfg.sink_logit_fixed is None:
            self.sink_logit = nn.Parameter(torch.empty(1 if cfg.attn_bias_shared else h))
        elif cfg.attn_bias == "sink_logit":  # softmax-off-by-one at 0.0: held, never trained or decayed
            self.register_buffer("sink_logit", torch.full((1 if cfg.attn_bias_shared else h,), float(cfg.sink_logit_fixed)))

        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        if cfg.pos_emb == "rotary":
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        if cfg.has_slot:
            self.hook_bias_pattern = HookPoint()  # [batch, head, query_pos]
        if not self.op.softmax:  # the factor that turns hook_pattern's shares into weights
            self.hook_row_weight = HookPoint()  # [batch, head, query_pos]
        # read-only column hooks (module docstring): no T x T map when only these are observed
        self.hook_pattern_cols = HookPoint()  # [batch, head, query_pos, n_cols]
        self.hook_pattern_colsum = HookPoint()  # [batch, head, key_pos]: sum over queries t >= k of column k
        if cfg.has_slot:
            self.hook_bias_col = HookPoint()  # [batch, head, query_pos]
        if cfg.attn_gate:
            self.hook_gate = HookPoint()  # [batch, pos, head, d_head]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]

    # ---------------------------------------------------------------------------------
    def observed(self) -> bool:
        """True when a hook (forward or backward) sits on the materialized attention."""
        points = [self.hook_attn_scores, self.hook_pattern]
        if self.cfg.has_slot:
            points.append(self.hook_bias_pattern)
        if not self.op.softmax:
            points.append(self.hook_row_weight)
        return any(len(p.fwd_hooks) + len(p.bwd_hooks) > 0 for p in points)

    def cols_observed(self) -> bool:
        """True when a forward hook sits on a read-only column hook."""
        points = [self.hook_pattern_cols, self.hook_pattern_colsum] + ([self.hook_bias_col] if self.cfg.has_slot else [])
        return any(len(p.fwd_hooks) > 0 for p in points)

    def colsum_observed(self) -> bool:
        """True when a forward hook sits on the read-only hook_pattern_colsum."""
        return len(self.hook_pattern_colsum.fwd_hooks) > 0

    def _emit_colsum(self, pattern: Tensor, ctx: AttnContext) -> None:
        """hook_pattern_colsum from a materialized pattern [batch, head, query, key]."""
        if self.colsum_observed():
            self.hook_pattern_colsum((pattern * _at_or_after(ctx, 0, pattern.shape[2], pattern.shape[3])).sum(-2))

    def _emit_colsum_from_lse(self, q, k, pos_bias, ctx: AttnContext, lse: Tensor,
                              log_sim: Callable[[Tensor, float], Tensor] | None = None) -> None:
        """hook_pattern_colsum from each row's log normalizer (weight = exp(f(s) - lse), f the identity
        for softmax or the op's log-similarity), summed over query rows t >= k: in Triton kernels
        where ``_triton_cols_apply``, by one swapped flash call on CPU for softmax with the plain causal
        mask (``_colsum_flash_cpu``), else by blocks of rows: memory O(block x T), never the whole map."""
        if not self.colsum_observed():
            return
        if self._triton_cols_apply(q, k, pos_bias, ctx):  # the same sums in a Triton kernel
            from .triton_attention import column_sums

            op = "softmax" if log_sim is None else self.cfg.attn_op.removesuffix("_norm")
            self.hook_pattern_colsum(column_sums(q, k, lse, op=op, bias=ctx.sigmoid_bias, scale=self.scale,
                                                 window=self._kernel_window(q.shape[2])).to(q.dtype))
            return
        if log_sim is None and pos_bias is None and ctx.causal_only and ctx.q_start == 0 and k.shape[2] == q.shape[2]:
            fused = _colsum_flash_cpu(q, k, lse, self.scale)  # softmax weights, plain causal mask: one flash call
            if fused is not None:
                self.hook_pattern_colsum(fused.to(q.dtype))
                return
        b, h, t, _ = q.shape
        n = k.shape[2]
        dtype, out_dtype = lse.dtype, q.dtype
        q, k = q.to(dtype), k.to(dtype)
        block = max(1, min(_LSE_BLOCK, _COLSUM_BLOCK_ELEMENTS // max(1, b * h * n)))
        out = torch.zeros(b, h, n, dtype=dtype, device=q.device)
        for a in range(0, t, block):
            e = min(a + block, t)
            m = min(n, ctx.q_start + e)  # keys after the block's last query get nothing from it
            s = _grouped_scores(q[:, :, a:e], k[:, :, :m]).mul_(self.scale)
            if pos_bias is not None:
                s.add_(pos_bias[:, a:e, :m].to(dtype))
            if log_sim is not None:
                s = log_sim(s, ctx.sigmoid_bias)
            w = s.sub_(lse[:, :, a:e, None]).exp_()
            if ctx.causal_only and ctx.q_start == 0:  # only the block's diagonal square has masked entries
                w[..., a:m].masked_fill_(~_at_or_after(ctx, a, e, m)[:, a:], 0.0)
            else:
                w.masked_fill_(~(ctx.visible[a:e, :m] & _at_or_after(ctx, a, e, m)), 0.0)
            out[..., :m] += w.sum(-2)
        self.hook_pattern_colsum(out.to(out_dtype))

    def _emit_cols(self, cols: Tensor, slot_col: Tensor | None) -> None:
        """Pass the column summaries through their hooks (return values are ignored: read-only)."""
        self.hook_pattern_cols(cols)
        if slot_col is not None:
            self.hook_bias_col(slot_col)

    def _project(self, x: Tensor, W: Tensor) -> Tensor:
        return torch.einsum("bpd,hde->bphe", x, W)

    def _qkv(self, x: Tensor, cos_sin: tuple[Tensor, Tensor] | None, hooks: bool):
        """q, k, v in [batch, pos, head, d_head]; through the hook points when ``hooks``."""
        hk = (lambda hp, t: hp(t)) if hooks else (lambda hp, t: t)
        q = hk(self.hook_q, self._project(x, self.W_Q))
        k = hk(self.hook_k, self._project(x, self.W_K))
        v = hk(self.hook_v, self._project(x, self.W_V))
        if cos_sin is not None:
            q = hk(self.hook_rot_q, apply_rotary(q, *cos_sin))
            k = hk(self.hook_rot_k, apply_rotary(k, *cos_sin))
        return q, k, v

    def keys_values(self, x: Tensor, cos_sin: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """k (rotated when ``cos_sin`` is given) and v of ``x`` as ``_qkv`` computes them, without hook
        points and without the queries: the ``past`` of a pass that starts after these positions."""
        k, v = self._project(x, self.W_K), self._project(x, self.W_V)
        return (k if cos_sin is None else apply_rotary(k, *cos_sin)), v

    def slot_key(self) -> Float[Tensor, "kv_head d_head"] | None:
        """The learned key k* every query scores in the bias slot (kv and k biases; shared ones
        repeated per kv head), as the scores use it: not rotated, the same for every position; None
        without one (sink token, sink logit, v bias, a removed bias)."""
        if self.cfg.attn_bias not in ("kv", "k") or not self.cfg.has_slot:
            return None
        return self.k_star.detach().expand(self.cfg.n_kv_heads, self.cfg.d_head)

    @torch.no_grad()
    def position_bias(self, queries: Int[Tensor, " q"], n_keys: int) -> Float[Tensor, "head q key"] | None:
        """The additive score bias this layer puts on ``scale * q.k`` for query positions ``queries``
        (0-based) and the real keys 0..n_keys-1, in float64: ALiBi ``-slope * |t - s|`` or the learned
        T5 relative-bucket table; None for rotary / learned / sinusoidal / no positions. The same
        numbers as ``_pos_bias(build_context(...))`` (a test checks), one block of query rows at a time."""
        cfg = self.cfg
        if cfg.pos_emb not in ("alibi", "relative"):
            return None
        keys = torch.arange(n_keys, device=queries.device)
        dist = (queries[:, None] - keys[None, :]).abs()
        if cfg.pos_emb == "alibi":
            return -alibi_slopes(cfg.n_heads, queries.device).double()[:, None, None] * dist.double()[None]
        buckets = relative_buckets(dist, cfg.relative_num_buckets, cfg.relative_max_distance)
        return self.rel_bias.double()[buckets.to(self.rel_bias.device)].permute(2, 0, 1).to(queries.device)

    def _pos_bias(self, ctx: AttnContext) -> Tensor | None:
        """Additive positional score bias [head, pos, pos] for the real keys, or None."""
        if ctx.alibi is not None:
            return ctx.alibi
        if ctx.buckets is not None:
            return self.rel_bias[ctx.buckets].permute(2, 0, 1)
        return None

    # ---------------------------------------------------------------------------------
    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        ctx: AttnContext,
        sink: Float[Tensor, "1 1 d_model"] | None = None,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "1 1 d_model"] | None]:
        """Attention output for the real tokens, and for the sink token when there is one.

        ``x`` is the (normalized) block input; ``sink`` the (normalized) sink-token state, batch 1:
        the sink token only sees itself, so its state is the same for every sequence. ``past``:
        (k, v) [batch, ctx.q_start, kv_head, d_head] of the positions before ``x``'s first one (k
        after rotary), when the pass continues from them (``AttnContext.from_position``).
        """
        cfg, op = self.cfg, self.op
        q, k, v = self._qkv(x, ctx.rotary, hooks=True)
        if past is not None:  # keys / values of the positions before ctx.q_start, as the attention uses them
            k, v = torch.cat([past[0].to(k.dtype), k], dim=1), torch.cat([past[1].to(v.dtype), v], dim=1)
        qh, kh, vh = _to_heads(q), _to_heads(k), _to_heads(v)
        if op.feature is not None:
            qh, kh = op.feature(qh), op.feature(kh)
        pos_bias = self._pos_bias(ctx)

        slot, sink_z = None, None
        if cfg.has_slot:
            slot, sink_z = self._slot(ctx, sink)

        cols = self.cols_observed()
        if self.backend == "reference" or self.observed():
            z = self._attend_observed(qh, kh, vh, slot, pos_bias, ctx, cols)
        elif op.softmax:
            z = self._attend_sdpa(qh, kh, vh, slot, pos_bias, ctx, cols)
        elif self.backend == "flex" and op.log_sim is not None:
            z = self._attend_flex(qh, kh, vh, slot, pos_bias, ctx, cols)
        elif self.backend == "triton" and self._triton_applies(qh, pos_bias, ctx):
            z = self._attend_triton(qh, kh, vh, slot, ctx, cols)
        else:
            z = self._attend_plain(qh, kh, vh, slot, pos_bias, ctx, cols)
        z = z.transpose(1, 2)  # [batch, pos, head, d_head]

        if cfg.has_v_bias:
            z = z + self.v_star.to(z.dtype)
        if cfg.attn_gate:
            z = z * self.hook_gate(torch.sigmoid(self._project(x, self.W_gate)))
        z = self.hook_z(z)
        out = torch.einsum("bphe,hed->bpd", z, self.W_O)

        sink_out = None
        if sink_z is not None:
            if cfg.attn_gate:
                sink_z = sink_z * torch.sigmoid(self._project(sink, self.W_gate))
            sink_out = torch.einsum("bphe,hed->bpd", sink_z, self.W_O)
        return out, sink_out

    # ---------------------------------------------------------------------------------
    def _slot(self, ctx: AttnContext, sink: Tensor | None) -> tuple[Slot, Tensor | None]:
        """This layer's bias slot; for a sink token also the sink token's own attention output."""
        cfg, op = self.cfg, self.op
        hkv, h, dh = cfg.n_kv_heads, cfg.n_heads, cfg.d_head
        keep_v = cfg.attn_bias_removed != "v"
        if cfg.attn_bias in ("kv", "k"):
            key = self.k_star.expand(hkv, dh).reshape(1, hkv, 1, dh)
            if op.feature is not None:
                key = op.feature(key)
            value = None
            if cfg.attn_bias == "kv" and keep_v:
                value = self.v_star.expand(hkv, dh).reshape(1, hkv, 1, dh)
            return Slot(key, value, None), None
        if cfg.attn_bias == "sink_logit":
            logit = self.sink_logit.expand(h).reshape(h, 1, 1).expand(h, ctx.n_pos, 1)
            return Slot(None, None, logit), None

        # sink token: a real token at position -1 that only sees itself
        assert sink is not None
        rot = ctx.rotary_sink
        q_s, k_s, v_s = self._qkv(sink, rot, hooks=False)  # [1, 1, head, d_head]
        q_s, k_s, v_s = _to_heads(q_s), _to_heads(k_s), _to_heads(v_s)
        if op.feature is not None:
            q_s, k_s = op.feature(q_s), op.feature(k_s)
        score_bias, self_bias = None, None
        if ctx.alibi_sink is not None:
            score_bias = ctx.alibi_sink
        elif ctx.buckets_sink is not None:
            score_bias = self.rel_bias[ctx.buckets_sink].permute(2, 0, 1)
            self_bias = self.rel_bias[ctx.bucket_self].permute(2, 0, 1)
        # the sink token's own row: one key, itself
        s_self = _grouped_scores(q_s, k_s) * self.scale  # [1, head, 1, 1]
        if self_bias is not None:
            s_self = s_self + self_bias.to(s_self.dtype)
        if op.softmax:
            w_self = torch.full_like(s_self, self.gain)
        else:
            w_self = op.sim(s_self, ctx.sigmoid_bias)
            if op.normalized:
                w_self = w_self / (w_self + cfg.attn_eps)
        sink_z = _grouped_mix(w_self, v_s).transpose(1, 2)  # [1, 1, head, d_head]
        return Slot(k_s, v_s if keep_v else None, score_bias), sink_z

    def _slot_scores(self, q: Tensor, slot: Slot) -> Tensor:
        """Score of every query on the slot, [batch, head, pos, 1]."""
        b, h, t, _ = q.shape
        if slot.key is not None:
            s = _grouped_scores(q, slot.key.to(q.dtype)) * self.scale
        else:
            s = q.new_zeros(b, h, t, 1)
        if slot.score_bias is not None:
            s = s + slot.score_bias.to(s.dtype)
        return s

    def _slot_value(self, slot: Slot, like: Tensor) -> Tensor | None:
        """The slot's value per query head, [1, head, 1, d_head], or None when it is zero."""
        if slot.value is None:
            return None
        return _repeat_kv(slot.value.to(like.dtype), self.cfg.n_heads)

    # ---------------------------------------------------------------------------------
    def _proxy_parts(self, sim: Tensor, slot_sim: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """|sim| (or sim), the slot's, and the row total they share: the proxy pattern is mag / total."""
        mag = sim.abs() if self.op.signed else sim
        slot_mag = None
        if slot_sim is not None:
            slot_mag = slot_sim.abs() if self.op.signed else slot_sim
        total = mag.sum(-1, keepdim=True)
        if slot_mag is not None:
            total = total + slot_mag
        return mag, slot_mag, total.clamp_min(torch.finfo(total.dtype).tiny)

    def _row_lse(self, q, k, slot: Slot | None, pos_bias, ctx: AttnContext) -> Float[Tensor, "batch head qpos"]:
        """log-sum-exp of every softmax row (visible real keys and the slot): in a Triton kernel where
        ``_triton_cols_apply``, from a flash kernel with the plain causal mask where one applies
        (``_flash_with_lse``), else by blocks of query rows: memory O(batch x head x block x T), never
        the whole map. float32 (float64 for float64 input)."""
        if self._triton_cols_apply(q, k, pos_bias, ctx):
            from .triton_attention import softmax_lse

            lse = softmax_lse(q, k, scale=self.scale, window=self._kernel_window(q.shape[2]))
            if slot is not None:
                lse = torch.logaddexp(lse, self._slot_scores(q.to(lse.dtype), slot).squeeze(-1).to(lse.dtype))
            return lse
        b, h, t, _ = q.shape
        dtype = torch.promote_types(q.dtype, torch.float32)
        if pos_bias is None and ctx.causal_only and ctx.q_start == 0 and k.shape[2] == t:
            # the real keys' log-sum-exp from a flash call (its output unused: the caller's SDPA call
            # makes the output, so observing the column hooks leaves the logits bit for bit), the slot
            # added to it
            fused = _flash_with_lse(q, k, torch.zeros_like(k), self.scale)
            if fused is not None:
                lse = fused[1].to(dtype)
                if slot is not None:
                    lse = torch.logaddexp(lse, self._slot_scores(q.to(dtype), slot).squeeze(-1))
                return lse
        q, k = q.to(dtype), k.to(dtype)  # a bf16 model's scores in float32, as in the fused kernel
        slot_s = self._slot_scores(q, slot) if slot is not None else None
        out = torch.empty(b, h, t, dtype=dtype, device=q.device)
        for a in range(0, t, _LSE_BLOCK):
            e = min(a + _LSE_BLOCK, t)
            s = _grouped_scores(q[:, :, a:e], k).mul_(self.scale)
            if pos_bias is not None:
                s.add_(pos_bias[:, a:e].to(dtype))
            s.masked_fill_(~ctx.visible[a:e], float("-inf"))
            if slot_s is not None:
                s = torch.cat([slot_s[:, :, a:e], s], dim=-1)
            out[:, :, a:e] = torch.logsumexp(s, dim=-1)
        return out

    def _cols_from_lse(self, q, k, slot: Slot | None, pos_bias, ctx: AttnContext, lse: Tensor,
                       log_sim: Callable[[Tensor, float], Tensor] | None = None) -> None:
        """Emit the column hooks from each row's log normalizer: weight = exp(f(s) - lse) with f the
        identity (softmax) or the op's log-similarity (FlexAttention ops)."""
        self._emit_colsum_from_lse(q, k, pos_bias, ctx, lse, log_sim)
        n = min(self.n_cols, k.shape[2])
        dtype, out_dtype = lse.dtype, q.dtype
        q = q.to(dtype)
        s = _grouped_scores(q, k[:, :, :n].to(dtype)) * self.scale
        if pos_bias is not None:
            s = s + pos_bias[:, :, :n].to(dtype)
        if log_sim is not None:
            s = log_sim(s, ctx.sigmoid_bias)
        w = torch.exp(s - lse.unsqueeze(-1)).masked_fill(~ctx.visible[:, :n], 0.0)
        w_slot = None
        if slot is not None:
            ss = self._slot_scores(q, slot)
            if log_sim is not None:
                ss = log_sim(ss, ctx.sigmoid_bias)
            w_slot = torch.exp(ss.squeeze(-1) - lse).to(out_dtype)
        self._emit_cols(w.to(out_dtype), w_slot)

    def _attend_sdpa(self, q, k, v, slot: Slot | None, pos_bias, ctx: AttnContext, cols: bool = False) -> Tensor:
        """Softmax ops in fused scaled_dot_product_attention; with ``cols``, also the column hooks."""
        b, h, t, dh = q.shape
        hkv = k.shape[1]
        gqa = hkv != h
        if cols and slot is None and pos_bias is None and ctx.causal_only:
            fused = _flash_with_lse(q, k, v, self.scale)
            if fused is not None:
                z, lse = fused
                self._cols_from_lse(q, k, None, None, ctx, lse)
                return z * self.gain if self.gain != 1.0 else z
        if cols:
            self._cols_from_lse(q, k, slot, pos_bias, ctx, self._row_lse(q, k, slot, pos_bias, ctx))
        col_bias = None
        if slot is not None:
            key = slot.key if slot.key is not None else q.new_zeros(1, hkv, 1, dh)
            val = slot.value if slot.value is not None else q.new_zeros(1, hkv, 1, dh)
            k = torch.cat([key.to(k.dtype).expand(b, hkv, 1, dh), k], dim=2)
            v = torch.cat([val.to(v.dtype).expand(b, hkv, 1, dh), v], dim=2)
            col_bias = slot.score_bias

        if slot is None and pos_bias is None:
            if ctx.causal_only:
                z = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            else:
                z = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.visible, enable_gqa=gqa)
        elif pos_bias is None and col_bias is None:
            mask = torch.cat([ctx.visible.new_ones(t, 1), ctx.visible], dim=1)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            real = pos_bias if pos_bias is not None else q.new_zeros(1, *ctx.visible.shape)
            real = real.to(q.dtype).masked_fill(~ctx.visible, float("-inf"))
            if slot is not None:
                col = col_bias.to(q.dtype) if col_bias is not None else q.new_zeros(1, t, 1)
                n = max(real.shape[0], col.shape[0])
                real = torch.cat([col.expand(n, t, 1), real.expand(n, *ctx.visible.shape)], dim=-1)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=real.unsqueeze(0), enable_gqa=gqa)
        return z * self.gain if self.gain != 1.0 else z

    def _attend_plain(self, q, k, v, slot: Slot | None, pos_bias, ctx: AttnContext, cols: bool = False) -> Tensor:
        """Non-softmax ops: masked sim, no proxy bookkeeping unless ``cols`` (compilable)."""
        op = self.op
        scores = _grouped_scores(q, k) * self.scale
        if pos_bias is not None:
            scores = scores + pos_bias.to(scores.dtype)
        sim = op.sim(scores, ctx.sigmoid_bias).masked_fill(~ctx.visible, 0.0)
        slot_sim = op.sim(self._slot_scores(q, slot), ctx.sigmoid_bias) if slot is not None else None
        if cols:
            mag, slot_mag, total = self._proxy_parts(sim, slot_sim)
            n = min(self.n_cols, sim.shape[-1])
            self._emit_cols(mag[..., :n] / total, None if slot_mag is None else (slot_mag / total).squeeze(-1))
            self._emit_colsum(mag / total, ctx)
        z = _grouped_mix(sim, v)
        return self._finish_sim(z, sim.sum(-1, keepdim=True) if op.normalized else None, slot, slot_sim)

    def _finish_sim(self, z: Tensor, rowsum: Tensor | None, slot: Slot | None, slot_sim: Tensor | None) -> Tensor:
        """Non-softmax ops from z = sum_s sim_s v_s and rowsum = sum_s sim_s (only needed when
        normalized): divide by rowsum + eps (+ the slot's sim) for normalized ops, add the slot's
        weight times v*."""
        if self.op.normalized:
            denom = rowsum + self.cfg.attn_eps
            if slot_sim is not None:
                denom = denom + slot_sim
                slot_sim = slot_sim / denom
            z = z / denom
        if slot is not None:
            v_slot = self._slot_value(slot, z)
            if v_slot is not None:
                z = z + slot_sim * v_slot
        return z

    def _attend_observed(self, q, k, v, slot: Slot | None, pos_bias, ctx: AttnContext, cols: bool = False) -> Tensor:
        """Materialized scores and pattern through the hook points (the reference path)."""
        op, eps = self.op, self.cfg.attn_eps
        # in place on the fresh product, before the hook: one T x T tensor until the pattern
        scores = _grouped_scores(q, k).mul_(self.scale)
        if pos_bias is not None:
            scores.add_(pos_bias.to(scores.dtype))
        scores = self.hook_attn_scores(scores.masked_fill_(~ctx.visible, float("-inf")))
        slot_scores = self._slot_scores(q, slot) if slot is not None else None

        if op.softmax:
            full = scores if slot_scores is None else torch.cat([slot_scores, scores], dim=-1)
            p = torch.softmax(full.to(torch.promote_types(full.dtype, torch.float32)), dim=-1)
            p = p.to(scores.dtype)
            p_slot, p_real = (p[..., :1], p[..., 1:]) if slot is not None else (None, p)
            to_weight = lambda pat, _sim: pat * self.gain if self.gain != 1.0 else pat  # noqa: E731
        else:
            sim = op.sim(scores, ctx.sigmoid_bias).masked_fill(~ctx.visible, 0.0)
            slot_sim = op.sim(slot_scores, ctx.sigmoid_bias) if slot is not None else None
            # pattern = each key's share sim / sum(sim) (|sim| / sum|sim| when sim can be negative,
            # the paper's proxy); the weight is recovered as share * factor (* sign), so a hooked
            # pattern is honoured: factor = sum / (sum + eps) normalized, = sum unnormalized
            mag, slot_mag, total = self._proxy_parts(sim, slot_sim)
            p_real = mag / total
            p_slot = slot_mag / total if slot_mag is not None else None
            factor = total / (total + eps) if op.normalized else total
            factor = self.hook_row_weight(factor.squeeze(-1)).unsqueeze(-1)

            def to_weight(pat: Tensor, s: Tensor) -> Tensor:
                w = pat * factor
                return w * torch.sign(s) if op.signed else w

        p_real = self.hook_pattern(p_real)
        w_real = to_weight(p_real, sim if not op.softmax else None)
        z = _grouped_mix(w_real, v)
        if slot is not None:
            p_slot = self.hook_bias_pattern(p_slot.squeeze(-1)).unsqueeze(-1)
        if cols:
            self._emit_cols(p_real[..., :min(self.n_cols, p_real.shape[-1])],
                            None if slot is None else p_slot.squeeze(-1))
            self._emit_colsum(p_real, ctx)
        if slot is not None:
            v_slot = self._slot_value(slot, z)
            if v_slot is not None:
                w_slot = to_weight(p_slot, slot_sim if not op.softmax else None)
                z = z + w_slot * v_slot
        return z

    # ---------------------------------------------------------------------------------
    def _triton_applies(self, q: Tensor, pos_bias, ctx: AttnContext) -> bool:
        """The fused Triton kernel covers sigmoid / elu+1 (normalized or not) with causal or
        sliding-window visibility, no additive positional bias, no prefix and a full pass."""
        from .triton_attention import SIM_OPS, triton_available

        return (self.cfg.attn_op.removesuffix("_norm") in SIM_OPS and pos_bias is None
                and self.cfg.prefix_len <= 1 and ctx.q_start == 0 and triton_available(q.device))

    def _triton_cols_apply(self, q: Tensor, k: Tensor, pos_bias, ctx: AttnContext) -> bool:
        """Backend "triton": the column statistics (softmax's row log-sum-exp, hook_pattern_colsum)
        come from the Triton kernels of ``triton_attention`` for softmax, sigmoid and elu+1 with
        causal or sliding-window visibility, no additive positional bias, no prefix and a full pass."""
        if self.backend != "triton" or pos_bias is not None or self.cfg.prefix_len > 1 or ctx.q_start != 0 \
                or k.shape[2] != q.shape[2]:
            return False
        from .triton_attention import COLUMN_OPS, triton_available

        op = "softmax" if self.op.softmax else self.cfg.attn_op.removesuffix("_norm")
        return op in COLUMN_OPS and triton_available(q.device)

    def _kernel_window(self, t: int) -> int | None:
        """The sliding window as the Triton kernels take it (None when it covers every key)."""
        return self.cfg.window if self.cfg.window is not None and self.cfg.window < t else None

    def _attend_triton(self, q, k, v, slot: Slot | None, ctx: AttnContext, cols: bool = False) -> Tensor:
        """Sigmoid / elu+1 ops in the fused Triton kernel (``triton_attention.sim_attention``): it gives
        each row's sum(sim v) and sum(sim); the slot and the normalization are added here."""
        from .triton_attention import sim_attention

        op = self.op
        acc, rowsum = sim_attention(q, k, v, op=self.cfg.attn_op.removesuffix("_norm"), bias=ctx.sigmoid_bias,
                                    scale=self.scale, window=self._kernel_window(q.shape[2]), **self.triton_kernel)
        rowsum = rowsum.unsqueeze(-1).to(acc.dtype)  # float32 from the kernel; the model's dtype here
        slot_sim = op.sim(self._slot_scores(q, slot), ctx.sigmoid_bias) if slot is not None else None
        if cols:  # the first columns' share of each row's total, as the plain path emits them
            n = min(self.n_cols, k.shape[2])
            sim_n = op.sim(_grouped_scores(q, k[:, :, :n]) * self.scale, ctx.sigmoid_bias)
            sim_n = sim_n.masked_fill(~ctx.visible[:, :n], 0.0)
            total = rowsum if slot_sim is None else rowsum + slot_sim
            total = total.clamp_min(torch.finfo(total.dtype).tiny)
            self._emit_cols(sim_n / total, None if slot_sim is None else (slot_sim / total).squeeze(-1))
            lse = total.squeeze(-1).to(torch.promote_types(q.dtype, torch.float32)).log()
            self._emit_colsum_from_lse(q, k, None, ctx, lse, log_sim=op.log_sim)
        return self._finish_sim(acc, rowsum, slot, slot_sim)

    def _attend_flex(self, q, k, v, slot: Slot | None, pos_bias, ctx: AttnContext, cols: bool = False) -> Tensor:
        """Non-softmax ops in FlexAttention: softmax of log(sim) is sim / sum(sim); the
        unnormalized output is that times exp(logsumexp) = sum(sim). The slot is key 0.

        Forward-tested against the plain path on CPU; FlexAttention has no CPU backward, and
        it is only fused under ``torch.compile`` (on CUDA).
        """
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        op, eps = self.op, self.cfg.attn_eps
        b, h, t, dh = q.shape
        hkv = k.shape[1]
        bias = ctx.sigmoid_bias
        n_slot = 1 if slot is not None else 0
        k_real = k  # before the slot column is put in front
        visible = ctx.visible
        if slot is not None:
            key = slot.key if slot.key is not None else q.new_zeros(1, hkv, 1, dh)
            val = slot.value if slot.value is not None else q.new_zeros(1, hkv, 1, dh)
            k = torch.cat([key.to(k.dtype).expand(b, hkv, 1, dh), k], dim=2)
            v = torch.cat([val.to(v.dtype).expand(b, hkv, 1, dh), v], dim=2)
            visible = torch.cat([visible.new_ones(t, 1), visible], dim=1)
        s_len = t + n_slot
        add = q.new_zeros(h, t, s_len)
        if pos_bias is not None:
            add[:, :, n_slot:] = pos_bias.to(q.dtype)
        if slot is not None and slot.score_bias is not None:
            add[:, :, :1] = slot.score_bias.to(q.dtype)

        # lambdas, not defs: FlexAttention counts their positional arguments, which a runtime
        # type-checking wrapper around a def would hide
        mask_mod = lambda b_, h_, qi, ki: visible[qi, ki]  # noqa: E731
        score_mod = lambda score, b_, h_, qi, ki: op.log_sim(score + add[h_, qi, ki], bias)  # noqa: E731

        block_mask = ctx.flex_masks.get(n_slot)
        if block_mask is None:
            block_mask = create_block_mask(mask_mod, None, None, t, s_len, device=q.device)
            ctx.flex_masks[n_slot] = block_mask
        out, lse = flex_attention(
            q, k, v, score_mod=score_mod, block_mask=block_mask, scale=self.scale,
            enable_gqa=hkv != h, return_lse=True,
        )
        if cols:  # lse = log(sum of sim) over the row, slot included
            self._cols_from_lse(q, k_real, slot, pos_bias, ctx, lse.to(torch.promote_types(q.dtype, torch.float32)),
                                log_sim=op.log_sim)
        total = lse.exp().unsqueeze(-1).to(out.dtype)  # sum of sim per row
        if op.normalized:
            return out * (total / (total + eps))
        return out * total
