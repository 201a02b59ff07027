"""The Triton kernels of ``sinkinterp.models.triton_attention`` (see its docstring for the maths).

Imported only when the kernel first runs: ``triton.jit`` decides at import whether the kernels run
compiled or in Triton's interpreter (``TRITON_INTERPRET=1``), so set that before the first call.
Pointers are to contiguous [batch, head, pos, d_head] tensors; ``GROUP`` query heads share a kv head.
OP: 0 = sigmoid(s + BIAS), 1 = elu(s) + 1. ACC_T: the accumulation dtype (float32; float64 for float64
inputs).
"""

from typing import no_type_check

import triton
import triton.language as tl

# @no_type_check under every @triton.jit: the test suite's runtime type checker (jaxtyping's import
# hook over the sinkinterp package) would otherwise wrap the kernels, which Triton cannot compile.


@triton.jit
@no_type_check
def _sim(s, BIAS, OP: tl.constexpr):
    if OP == 0:
        return 1.0 / (1.0 + tl.exp(-(s + BIAS)))
    else:
        return tl.where(s > 0, s + 1.0, tl.exp(tl.minimum(s, 0.0)))


@triton.jit
@no_type_check
def _dsim(s, p, OP: tl.constexpr):
    if OP == 0:
        return p * (1.0 - p)
    else:
        return tl.where(s > 0, 1.0, p)


@triton.jit
@no_type_check
def _visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW: tl.constexpr):
    ok = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < T) & (offs_n[None, :] < T)
    if HAS_WINDOW:
        ok = ok & (offs_m[:, None] - offs_n[None, :] < WINDOW)
    return ok


@triton.jit
@no_type_check
def fwd(Q, K, V, ACC, L, T, H, GROUP, D, scale, BIAS, WINDOW,
        OP: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + bh * T * D + offs_m[:, None] * D + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < T) & (offs_d[None, :] < D), other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_T)
    rowsum = tl.zeros([BLOCK_M], dtype=ACC_T)
    lo = pid_m * 0
    if HAS_WINDOW:
        lo = tl.maximum(pid_m * BLOCK_M - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
        k = tl.load(K + kvh * T * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + kvh * T * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC_T) * scale
        p = tl.where(_visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW), _sim(s, BIAS, OP), 0.0)
        rowsum += tl.sum(p, 1)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PREC).to(ACC_T)
    out_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    tl.store(ACC + bh * T * D + offs_m[:, None] * D + offs_d[None, :], acc.to(ACC.dtype.element_ty),
             mask=out_mask)
    tl.store(L + bh * T + offs_m, rowsum, mask=offs_m < T)


@triton.jit
@no_type_check
def bwd_dkdv(Q, K, V, DACC, DL, DK, DV, T, H, GROUP, D, scale, BIAS, WINDOW,
             OP: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # one block of keys of one query head; dk / dv per query head (summed over the group later)
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
    k = tl.load(K + kvh * T * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + kvh * T * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_T)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_T)
    lo = pid_n * BLOCK_N // BLOCK_M * BLOCK_M
    hi = pid_n * 0 + T
    if HAS_WINDOW:
        hi = tl.minimum((pid_n + 1) * BLOCK_N + WINDOW - 1, T)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
        q = tl.load(Q + bh * T * D + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DACC + bh * T * D + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        dl = tl.load(DL + bh * T + offs_m, mask=offs_m < T, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC_T) * scale  # [M, N]
        visible = _visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW)
        p = tl.where(visible, _sim(s, BIAS, OP), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC_T) + dl[:, None]
        ds = tl.where(visible, dp * _dsim(s, p, OP), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC).to(ACC_T)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC).to(ACC_T)
    tl.store(DK + bh * T * D + offs_n[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV + bh * T * D + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)


@triton.jit
@no_type_check
def bwd_dq(Q, K, V, DACC, DL, DQ, T, H, GROUP, D, scale, BIAS, WINDOW,
           OP: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    q = tl.load(Q + bh * T * D + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DACC + bh * T * D + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    dl = tl.load(DL + bh * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_T)
    lo = pid_m * 0
    if HAS_WINDOW:
        lo = tl.maximum(pid_m * BLOCK_M - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
        k = tl.load(K + kvh * T * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + kvh * T * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC_T) * scale
        visible = _visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW)
        p = tl.where(visible, _sim(s, BIAS, OP), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC_T) + dl[:, None]
        ds = tl.where(visible, dp * _dsim(s, p, OP), 0.0)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC).to(ACC_T)
    tl.store(DQ + bh * T * D + offs_m[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=q_mask)
