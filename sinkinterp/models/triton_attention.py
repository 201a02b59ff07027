"""Fused sigmoid / elu+1 attention in Triton: forward and backward, never a T x T map in memory.

The paper's unnormalized attention ops replace softmax by an elementwise similarity,
``sim(s) = sigmoid(s + b)`` or ``elu(s) + 1`` of the score ``s = q.k / sqrt(d_head)``. No row maximum
and no rescaling are needed, so the kernel is a plain blocked loop (FlashSigmoid's observation):

    acc_t = sum_{s visible from t} sim(s_ts) v_s        rowsum_t = sum_{s visible from t} sim(s_ts)

``sim_attention`` returns both, differentiable; the caller adds a bias slot and normalizes
(``sigmoid_norm`` / ``elu1_norm``: ``(acc + w* v*) / (rowsum + w* + eps)``), so one kernel serves the
normalized and the unnormalized ops. Visibility: causal, optionally a sliding window (``t - s <
window``). Grouped-query attention: query head h reads kv head h // (n_heads / n_kv_heads).

Backward (recomputing sim block by block, like FlashAttention):

    dP_ts = dacc_t . v_s + drowsum_t      dS_ts = dP_ts sim'(s_ts)
    dq_t = scale sum_s dS_ts k_s          dk_s = scale sum_t dS_ts q_t          dv_s = sum_t sim(s_ts) dacc_t

in two kernels (keys outer for dk / dv, queries outer for dq), so no atomics are needed; the dk / dv
of the query heads that share a kv head are summed afterwards (or, ``dq="atomic"``, one kernel that
adds dq atomically). sim'(s) is taken from sim(s) alone (sigmoid: p (1 - p); elu+1: min(p, 1)), so a
masked weight (0) has no gradient. How each weight is computed on a GPU (``sim_impl``: "portable",
"mufu", "tanh") decides the kernel's speed: the elementwise work, not the tile products, bounds it
(docs/performance.md, "The kernel's instruction budget"; ``benchmarks/kernel_codegen.py``).
Forward and backward are ``torch.library`` custom operators (``sinkinterp::sim_attention_fwd`` /
``sinkinterp::sim_attention_bwd``) with shape-only fake implementations and an autograd formula, so
``torch.compile(fullgraph=True)`` sees one opaque node per call and never traces Triton's launcher.

The measurement's column statistics (``hook_pattern_colsum``: for every key s, the sum over the
queries t that see it of the weight w_ts) come from two more kernels that never hold a T x T map
either: ``softmax_lse`` (each softmax row's log-sum-exp, online over tiles of keys, like the forward
pass of FlashAttention without the values) and ``column_sums`` (keys outer, queries inner, so no
atomics: w_ts = exp(s_ts - lse_t) for softmax, sim(s_ts) / total_t for sigmoid / elu+1). They are
not differentiable (measurement only).

Triton is imported only when the kernel runs. On a machine without a GPU the kernels run in
Triton's interpreter (``TRITON_INTERPRET=1`` set before the first call, CPU tensors), which is how
the test suite checks them against ``sim_attention_reference`` in float64, outputs and gradients.
float32 inputs use exact float32 products (``input_precision="ieee"``, no TF32); bfloat16 / float16
inputs multiply in their dtype and accumulate in float32; float64 inputs stay in float64.
"""

from __future__ import annotations

import os
from typing import no_type_check

import torch
from torch import Tensor

__all__ = [
    "COLUMN_OPS",
    "DQ_MODES",
    "SIM_IMPLS",
    "SIM_OPS",
    "column_sums",
    "column_sums_reference",
    "sim_attention",
    "sim_attention_reference",
    "softmax_lse",
    "softmax_lse_reference",
    "triton_available",
]

#: similarity functions the kernel implements (the name of ModelConfig.attn_op, without "_norm")
SIM_OPS = ("sigmoid", "elu1")
#: how the backward computes dq (``sim_attention(dq=...)``)
DQ_MODES = ("two_pass", "atomic")
#: how the kernels compute sim from a score (``sim_attention(sim_impl=...)``; ``_triton_sim_kernels``, IMPL)
SIM_IMPLS = ("portable", "mufu", "tanh")


def triton_available(device: torch.device | str) -> bool:
    """True when the kernel can run on ``device``: CUDA with Triton installed, or any device with
    Triton's interpreter switched on (``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.device(device).type == "cuda"


def _check(q: Tensor, k: Tensor, v: Tensor | None, op: str, window: int | None,
           ops: tuple[str, ...] = SIM_OPS) -> None:
    """Shapes, dtypes, op and window of the kernels' inputs (``v`` None: the column kernels, q and k only)."""
    if op not in ops:
        raise ValueError(f"op: got {op!r}, allowed values are {list(ops)}")
    qkv = (q, k) if v is None else (q, k, v)
    names = "q, k" if v is None else "q, k, v"
    if any(x.dim() != 4 for x in qkv):
        raise ValueError(f"{names}: expected [batch, head, pos, d_head], got shapes "
                         f"{', '.join(str(tuple(x.shape)) for x in qkv)}")
    b, h, t, d = q.shape
    if k.shape[0] != b or k.shape[2] != t or k.shape[3] != d or (v is not None and k.shape != v.shape):
        got = tuple(k.shape) if v is None else f"{tuple(k.shape)} and {tuple(v.shape)}"
        raise ValueError(f"{names[3:]}: expected [{b}, kv_head, {t}, {d}], got {got}")
    if h % k.shape[1]:
        raise ValueError(f"k: {k.shape[1]} kv heads do not divide {h} query heads")
    if len({x.dtype for x in qkv}) != 1 or q.dtype not in (torch.float32, torch.float64, torch.bfloat16,
                                                           torch.float16):
        raise ValueError(f"{names}: one float dtype (float32, float64, bfloat16, float16), got "
                         f"{', '.join(str(x.dtype) for x in qkv)}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window: a positive integer or None, got {window!r}")


def _sim_and_grad(s: Tensor, op: str, bias: float) -> tuple[Tensor, Tensor]:
    if op == "sigmoid":
        p = torch.sigmoid(s + bias)
        return p, p * (1 - p)
    p = torch.where(s > 0, s + 1, torch.exp(torch.clamp_max(s, 0)))
    return p, torch.where(s > 0, torch.ones_like(s), p)


def sim_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, op: str, bias: float = 0.0, scale: float | None = None,
    window: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The same numbers as ``sim_attention`` from a materialized T x T map in plain PyTorch (any
    device and dtype; the tests run it in float64). Returns (acc [b, h, t, d], rowsum [b, h, t])."""
    _check(q, k, v, op, window)
    b, h, t, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    k = k.repeat_interleave(h // k.shape[1], dim=1)
    v = v.repeat_interleave(h // v.shape[1], dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    visible = _visible_mask(t, window, q.device)
    p = _sim_and_grad(s, op, bias)[0].masked_fill(~visible, 0.0)
    return torch.matmul(p, v), p.sum(-1)


def _visible_mask(t: int, window: int | None, device) -> Tensor:
    pos = torch.arange(t, device=device)
    dist = pos[:, None] - pos[None, :]
    visible = dist >= 0
    return visible & (dist < window) if window is not None else visible


def _kernels_module():
    """The kernels' module (imported on first use: Triton is optional and ``triton.jit`` reads
    TRITON_INTERPRET when the kernel module is imported)."""
    from . import _triton_sim_kernels as kern

    return kern


def _kernels():
    kern = _kernels_module()
    return kern.fwd, kern.bwd_dkdv, kern.bwd_dq


def _launch_settings(q: Tensor, block: int | None, block_n: int | None = None) -> dict:
    import triton
    import triton.language as tl

    d = q.shape[-1]
    blk = block if block is not None else (16 if q.device.type == "cpu" else 64)
    return dict(BLOCK_M=blk, BLOCK_N=block_n or blk, BLOCK_D=max(16, triton.next_power_of_2(d)),  # == d: see _pad_head
                PREC="ieee" if q.dtype in (torch.float32, torch.float64) else "tf32",
                ACC_T=tl.float64 if q.dtype == torch.float64 else tl.float32)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _acc_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


_SCALE_AND_BIAS: dict[tuple, Tensor] = {}


def _scale_and_bias(q: Tensor, scale: float, bias: float) -> Tensor:
    """[scale, bias] as a tensor in the accumulation dtype on q's device, for the kernels to load: a
    Python float argument reaches a compiled Triton kernel as float32 (on the H200 that put float64
    results off by 1e-6 wherever 1 / sqrt(d_head) or the bias is no float32 number). Kept per value, so
    a training step copies nothing to the device."""
    key = (float(scale), float(bias), _acc_dtype(q), q.device)
    if key not in _SCALE_AND_BIAS:
        if len(_SCALE_AND_BIAS) > 64:
            _SCALE_AND_BIAS.clear()
        _SCALE_AND_BIAS[key] = torch.tensor([float(scale), float(bias)], dtype=key[2], device=q.device)
    return _SCALE_AND_BIAS[key]


# The kernels are registered as PyTorch custom operators (opaque to torch.compile, with shape-only
# "fake" implementations and an autograd formula), so a compiled training step traces through the
# attention without a graph break and without looking inside Triton's launcher. window / block:
# 0 stands for None (plain ints in the operators' schemas; sim_attention checks both before).
@torch.library.custom_op("sinkinterp::sim_attention_fwd", mutates_args=())
@no_type_check  # the test suite's runtime type checker would hide the annotations custom_op reads
def _sim_fwd(q: Tensor, k: Tensor, v: Tensor, op: str, bias: float, scale: float, window: int,
             block: int, warps: int, stages: int, dq_mode: int, block_n: int, impl: int) -> tuple[Tensor, Tensor]:
    fwd, _, _ = _kernels()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, t, _ = q.shape
    acc = torch.empty_like(q)
    rowsum = torch.empty(b, h, t, device=q.device, dtype=_acc_dtype(q))
    args, const = _sim_settings(q, k, op, bias, scale, window, block, block_n, impl)
    fwd[(_cdiv(t, const["BLOCK_M"]), b * h)](q, k, v, acc, rowsum, *args, **const, **_tuning(warps, stages))
    return acc, rowsum


@_sim_fwd.register_fake
def _(q, k, v, op, bias, scale, window, block, warps, stages, dq_mode, block_n, impl):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=_acc_dtype(q))


@torch.library.custom_op("sinkinterp::sim_attention_bwd", mutates_args=())
@no_type_check
def _sim_bwd(q: Tensor, k: Tensor, v: Tensor, dacc: Tensor, drowsum: Tensor, op: str, bias: float, scale: float,
             window: int, block: int, warps: int, stages: int, dq_mode: int,
             block_n: int, impl: int) -> tuple[Tensor, Tensor, Tensor]:
    _, bwd_dkdv, bwd_dq = _kernels()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dacc, dl = dacc.contiguous().to(q.dtype), drowsum.contiguous().to(_acc_dtype(q))
    b, h, t, d = q.shape
    args, const = _sim_settings(q, k, op, bias, scale, window, block, block_n, impl)
    dk_h = torch.empty_like(q)  # per query head, summed over each kv head's group below
    dv_h = torch.empty_like(q)
    tuning = _tuning(warps, stages)
    fused = DQ_MODES[dq_mode] == "atomic"
    dq = torch.zeros(q.shape, device=q.device, dtype=_acc_dtype(q)) if fused else torch.empty_like(q)
    bwd_dkdv[(_cdiv(t, const["BLOCK_N"]), b * h)](q, k, v, dacc, dl, dk_h, dv_h, dq, *args, **const, **tuning,
                                                   FUSE_DQ=fused)
    if fused:
        dq = dq.to(q.dtype)
    else:
        bwd_dq[(_cdiv(t, const["BLOCK_M"]), b * h)](q, k, v, dacc, dl, dq, *args, **const, **tuning)
    hkv, group = k.shape[1], h // k.shape[1]
    dk = dk_h.view(b, hkv, group, t, d).sum(2) if group > 1 else dk_h
    dv = dv_h.view(b, hkv, group, t, d).sum(2) if group > 1 else dv_h
    return dq, dk, dv


@_sim_bwd.register_fake
def _(q, k, v, dacc, drowsum, op, bias, scale, window, block, warps, stages, dq_mode, block_n, impl):
    kv = torch.empty_like(k, memory_format=torch.contiguous_format)
    return torch.empty_like(q, memory_format=torch.contiguous_format), kv, torch.empty_like(kv)


def _tuning(warps: int, stages: int) -> dict:
    """Triton launch options (0: Triton's default): warps per program and software-pipelining stages."""
    return {**({"num_warps": warps} if warps else {}), **({"num_stages": stages} if stages else {})}


def _sim_settings(q: Tensor, k: Tensor, op: str, bias: float, scale: float, window: int,
                  block: int, block_n: int, impl: int) -> tuple[tuple, dict]:
    """The kernels' scalar arguments and compile-time constants (window / block / block_n 0: None;
    block_n None: block; impl: an index into SIM_IMPLS)."""
    meta = _launch_settings(q, block or None, block_n or None)
    _, h, t, d = q.shape
    args = (t, h, h // k.shape[1], d, _scale_and_bias(q, scale, bias), int(window or 1))
    return args, dict(OP=SIM_OPS.index(op), IMPL=impl, HAS_WINDOW=window > 0, **meta)


def _sim_setup_context(ctx, inputs, output) -> None:
    q, k, v, *settings = inputs
    ctx.save_for_backward(q, k, v)
    ctx.settings = settings


def _sim_backward(ctx, dacc, drowsum):
    q, k, v = ctx.saved_tensors
    if dacc is None:
        dacc = torch.zeros_like(q)
    if drowsum is None:
        drowsum = q.new_zeros(q.shape[:3], dtype=_acc_dtype(q))
    dq, dk, dv = _sim_bwd(q, k, v, dacc, drowsum, *ctx.settings)
    return dq, dk, dv, *([None] * len(ctx.settings))


_sim_fwd.register_autograd(_sim_backward, setup_context=_sim_setup_context)


def sim_attention(
    q: Tensor, k: Tensor, v: Tensor, *, op: str, bias: float = 0.0, scale: float | None = None,
    window: int | None = None, block: int | tuple[int, int] | None = None, num_warps: int | None = None,
    num_stages: int | None = None, dq: str = "two_pass", sim_impl: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused causal ``op`` attention: (acc [b, h, t, d], rowsum [b, h, t]) as in the module docstring;
    acc in the inputs' dtype, rowsum in float32 (float64 for float64 inputs).

    ``q`` [batch, head, pos, d_head], ``k`` / ``v`` [batch, kv_head, pos, d_head] (after RoPE);
    ``bias`` is the sigmoid bias b (ignored by elu1); ``scale`` defaults to 1 / sqrt(d_head); ``window``:
    query t sees keys t - window < s <= t; ``block``: rows and columns per tile (default 64 on a GPU, 16 in
    the interpreter; at least 16), or (BLOCK_M, BLOCK_N): query rows and key columns per tile apart
    (FlashAttention's Triton kernels use 128 x 64 on Hopper); ``num_warps`` (1, 2, 4, 8 or 16) and
    ``num_stages`` (1 to 8): Triton's launch options for the three kernels (None: Triton's defaults), for
    tuning on a GPU (``benchmarks/bench_attention.py --tiles``). ``dq``: how the backward computes dq:
    ``"two_pass"`` (a second kernel over query blocks recomputes the scores; deterministic) or ``"atomic"``
    (the dk / dv kernel adds each key block's share of dq into an accumulator in float32, float64 for
    float64 inputs, with atomic adds, as FlashAttention-2's backward does: the scores are computed once,
    five tile products instead of seven, the order of the additions not fixed). ``sim_impl``: how sim is
    computed from each score (``_triton_sim_kernels``, IMPL): ``"portable"`` (``tl.exp`` and a division; the
    default in Triton's interpreter and the only one for float64 on a GPU), ``"mufu"`` (the same two
    special-function operations from PTX without their range fix-ups, subnormal results flushed to zero:
    about as accurate, fewer instructions; the default of a compiled CUDA kernel), ``"tanh"`` (sigmoid from
    one ``tanh.approx``: one special-function operation per weight instead of two; an approximation, its
    relative error measured at up to 1.1e-5 (N. Juffa, NVIDIA developer forums, 2021), so up to about 6e-6
    absolute on a weight: under bf16's rounding for weights above about 1e-3, relatively more for smaller
    ones; elu+1 as ``"mufu"``); None: the default. In Triton's interpreter "mufu" and "tanh" run their
    formulas with exact exp2, reciprocal and tanh (the tests check the algebra in float64 that way).
    Differentiable in q, k and v through both outputs. Needs Triton on CUDA, or Triton's interpreter
    (``triton_available``)."""
    _check(q, k, v, op, window)
    given, block_n = block, None
    if isinstance(block, tuple) and len(block) == 2:
        block, block_n = block
        _check_block(block_n, given, pairs=True)
    _check_block(block, given, pairs=True)
    if num_warps is not None and num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps: 1, 2, 4, 8, 16 or None, got {num_warps!r}")
    if num_stages is not None and (isinstance(num_stages, bool) or not isinstance(num_stages, int)
                                   or not 1 <= num_stages <= 8):
        raise ValueError(f"num_stages: an integer from 1 to 8 or None, got {num_stages!r}")
    if dq not in DQ_MODES:
        raise ValueError(f"dq: one of {', '.join(map(repr, DQ_MODES))}, got {dq!r}")
    _require_triton(q, "sim_attention")
    impl = _sim_impl(q, sim_impl)
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    q, k, v = (_pad_head(x) for x in (q, k, v))
    acc, rowsum = _sim_fwd(q, k, v, op, float(bias), float(scale), window or 0, block or 0, num_warps or 0,
                           num_stages or 0, DQ_MODES.index(dq), block_n or 0, SIM_IMPLS.index(impl))
    return (acc[..., :d] if acc.shape[-1] != d else acc), rowsum


def _compiled_for_cuda(q: Tensor) -> bool:
    """Whether the kernels run compiled for an NVIDIA GPU (not in Triton's interpreter)."""
    return q.device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1" and torch.version.hip is None


def _sim_impl(q: Tensor, sim_impl: str | None) -> str:
    """``sim_impl`` resolved (None: "mufu" compiled on CUDA below float64, else "portable"). "mufu" /
    "tanh" are PTX on float32 registers when compiled on CUDA (float32, bfloat16 and float16 inputs);
    in Triton's interpreter they run the same formulas with exact functions, for any dtype."""
    if sim_impl is not None and sim_impl not in SIM_IMPLS:
        raise ValueError(f"sim_impl: one of {', '.join(map(repr, SIM_IMPLS))} or None, got {sim_impl!r}")
    compiled = _compiled_for_cuda(q)
    if sim_impl is None:
        return "mufu" if compiled and q.dtype != torch.float64 else "portable"
    if sim_impl != "portable" and compiled and q.dtype == torch.float64:
        raise ValueError(f"sim_impl: {sim_impl!r} is PTX on float32 registers: float32, bfloat16 or float16 "
                         f"inputs, got {q.dtype} (float64 runs 'portable')")
    if sim_impl != "portable" and not compiled and os.environ.get("TRITON_INTERPRET") != "1":  # e.g. ROCm
        raise ValueError(f"sim_impl: {sim_impl!r} is PTX, for a kernel compiled on an NVIDIA GPU (or emulated in "
                         f"Triton's interpreter); here only 'portable' or None")
    return sim_impl


#: weights ``column_sums`` can sum: softmax's exp(s - lse), or an unnormalized op's sim(s) / total
COLUMN_OPS = ("softmax", *SIM_OPS)


def _tile_head_dim(d: int) -> int:
    """The kernels' head-dimension tile for ``d_head``: the next power of two, at least 16 (tl.dot's
    smallest)."""
    return max(16, 1 << (d - 1).bit_length())


def _pad_head(x: Tensor) -> Tensor:
    """``x`` [..., d_head] zero-padded to ``_tile_head_dim(d_head)`` columns, so the kernels never mask
    the head dimension (zero columns add nothing to q.k, and the padded output columns are cut off).
    On the H200 (2026-12-04) the kernel failed its tests exactly where it masked a head dimension
    narrower than its tile (d_head 8 and 24) and passed at d_head 16: docs/performance.md."""
    d = x.shape[-1]
    return x if d == _tile_head_dim(d) else torch.nn.functional.pad(x, (0, _tile_head_dim(d) - d))


def _check_block(block: object, shown: object = None, pairs: bool = False) -> None:
    """``block`` a power of two >= 16 or None (``shown``: the argument as given, named in the error;
    ``pairs``: the caller also takes a (BLOCK_M, BLOCK_N) pair)."""
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 16
                              or block & (block - 1)):
        allowed = "a power of two >= 16" + (", a pair of them (BLOCK_M, BLOCK_N)," if pairs else "")
        raise ValueError(f"block: {allowed} or None, got {block if shown is None else shown!r}")


def _require_triton(q: Tensor, what: str) -> None:
    if not triton_available(q.device):
        raise RuntimeError(
            f"{what}: Triton cannot run on {q.device} here (needs a CUDA device with Triton "
            "installed, or TRITON_INTERPRET=1 set before the first call for the interpreter)")


def _check_lse(q: Tensor, lse: Tensor) -> None:
    b, h, t, _ = q.shape
    if lse.shape != (b, h, t) or not lse.is_floating_point() or lse.device != q.device:
        raise ValueError(f"lse: expected a float tensor of shape [{b}, {h}, {t}] on {q.device}, got {lse.dtype} "
                         f"{tuple(lse.shape)} on {lse.device}")


def _launch_row_stat(kernel: str, tile: str, q: Tensor, k: Tensor, cols: tuple | None, scale: float | None,
                     window: int | None, block: int | None, sim_impl: str | None = None) -> Tensor:
    """Run ``softmax_lse`` (one program per tile of queries) or ``col_sums`` (per tile of keys;
    ``cols`` = (lse, sigmoid bias, OP)); returns its [batch, head, pos] output."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k = _pad_head(q).contiguous(), _pad_head(k).contiguous()
    b, h, t, d = q.shape
    meta = _launch_settings(q, block)
    out = torch.empty(b, h, t, device=q.device, dtype=_acc_dtype(q))
    const = {key: meta[key] for key in ("PREC", "ACC_T", "BLOCK_M", "BLOCK_N", "BLOCK_D")}
    const["HAS_WINDOW"] = window is not None
    const["IMPL"] = SIM_IMPLS.index(_sim_impl(q, sim_impl))
    if cols is None:
        inputs, bias = (q, k, out), 0.0
    else:
        lse, bias, const["OP"] = cols
        inputs = (q, k, lse.to(_acc_dtype(q)).contiguous(), out)
    getattr(_kernels_module(), kernel)[(_cdiv(t, meta[tile]), b * h)](
        *inputs, t, h, h // k.shape[1], d, _scale_and_bias(q, scale, bias), int(window or 1), **const)
    return out


def softmax_lse_reference(q: Tensor, k: Tensor, *, scale: float | None = None,
                          window: int | None = None) -> Tensor:
    """``softmax_lse`` from a materialized T x T map in plain PyTorch (the tests run it in float64)."""
    _check(q, k, None, "softmax", window, ops=("softmax",))
    h, t, d = q.shape[1], q.shape[2], q.shape[3]
    scale = d ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.repeat_interleave(h // k.shape[1], dim=1).transpose(-1, -2)) * scale
    return torch.logsumexp(s.masked_fill(~_visible_mask(t, window, q.device), float("-inf")), dim=-1)


def softmax_lse(q: Tensor, k: Tensor, *, scale: float | None = None, window: int | None = None,
                block: int | None = None, sim_impl: str | None = None) -> Tensor:
    """Each causal softmax row's log-sum-exp [batch, head, pos] of the scores q.k * scale over the
    keys it sees (causal; with ``window``, keys t - window < s <= t), in float32 (float64 for
    float64 inputs); ``q`` [batch, head, pos, d_head], ``k`` [batch, kv_head, pos, d_head]. Never a
    T x T map in memory; not differentiable. ``sim_impl`` as ``sim_attention``'s ("mufu" and "tanh"
    both take exp2 from PTX here). Needs Triton (``triton_available``)."""
    _check(q, k, None, "softmax", window, ops=("softmax",))
    _check_block(block)
    _require_triton(q, "softmax_lse")
    return _launch_row_stat("softmax_lse", "BLOCK_M", q, k, None, scale, window, block, sim_impl)


def column_sums_reference(q: Tensor, k: Tensor, lse: Tensor, *, op: str = "softmax", bias: float = 0.0,
                          scale: float | None = None, window: int | None = None) -> Tensor:
    """``column_sums`` from a materialized T x T map in plain PyTorch (the tests run it in float64)."""
    _check(q, k, None, op, window, ops=COLUMN_OPS)
    _check_lse(q, lse)
    h, t, d = q.shape[1], q.shape[2], q.shape[3]
    scale = d ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.repeat_interleave(h // k.shape[1], dim=1).transpose(-1, -2)) * scale
    lse = lse.to(s.dtype)[..., None]
    w = torch.exp(s - lse) if op == "softmax" else _sim_and_grad(s, op, bias)[0] * torch.exp(-lse)
    return w.masked_fill(~_visible_mask(t, window, q.device), 0.0).sum(-2)


def column_sums(q: Tensor, k: Tensor, lse: Tensor, *, op: str = "softmax", bias: float = 0.0,
                scale: float | None = None, window: int | None = None, block: int | None = None,
                sim_impl: str | None = None) -> Tensor:
    """For every key s, the sum over the queries t that see it (causal, within ``window``) of the
    weight w_ts [batch, head, key_pos]: ``exp(s_ts - lse_t)`` for ``op="softmax"`` (``lse`` from
    ``softmax_lse``, plus any extra column such as a bias slot: the weights of the real keys then sum
    to less than 1), ``sim(s_ts) exp(-lse_t)`` for sigmoid / elu+1 (``lse`` = log of each row's total,
    ``bias`` = the sigmoid bias). float32 (float64 for float64 inputs); never a T x T map in memory;
    not differentiable. ``sim_impl`` as ``sim_attention``'s (for softmax "tanh" is "mufu"). Needs
    Triton (``triton_available``)."""
    _check(q, k, None, op, window, ops=COLUMN_OPS)
    _check_lse(q, lse)
    _check_block(block)
    _require_triton(q, "column_sums")
    return _launch_row_stat("col_sums", "BLOCK_N", q, k, (lse, float(bias), COLUMN_OPS.index(op) - 1), scale,
                            window, block, sim_impl)
