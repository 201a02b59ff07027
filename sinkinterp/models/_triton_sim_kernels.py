"""The Triton kernels of ``sinkinterp.models.triton_attention`` (see its docstring for the maths):
``fwd`` / ``bwd_dkdv`` / ``bwd_dq`` for sigmoid / elu+1 attention, ``softmax_lse`` and ``col_sums``
for the measurement's column statistics.

Imported only when the kernel first runs: ``triton.jit`` decides at import whether the kernels run
compiled or in Triton's interpreter (``TRITON_INTERPRET=1``), so set that before the first call.
Pointers are to contiguous [batch, head, pos, d_head] tensors; ``GROUP`` query heads share a kv head.
OP: 0 = sigmoid(s + BIAS), 1 = elu(s) + 1; IMPL: how (below). ACC_T: the accumulation dtype (float32;
float64 for float64 inputs). ``SB`` points to [scale, BIAS] in ACC_T: a Python float argument reaches a
compiled kernel as float32, which on the H200 put float64 results off by up to 1e-6 (relative) wherever
the scale or bias is not a float32 number (d_head 8, 24; bias -3.6).
"""

import os
from typing import no_type_check

import triton
import triton.language as tl

# @no_type_check under every @triton.jit: the test suite's runtime type checker (jaxtyping's import
# hook over the sinkinterp package) would otherwise wrap the kernels, which Triton cannot compile.


@triton.jit
@no_type_check
def _scale_and_bias(SB, ACC_T: tl.constexpr):
    return tl.load(SB).to(ACC_T), tl.load(SB + 1).to(ACC_T)


# IMPL: how sim is computed from a tile's raw products q.k (``triton_attention.SIM_IMPLS``).
# 0 "portable": tl.exp and a division (Triton's interpreter, float64; on CUDA float32 they compile to
#   ex2.approx / div.full with range fix-ups: about 14 instructions and two special-function-unit
#   (MUFU) operations per sigmoid weight). 1 "mufu": the same two MUFU operations from PTX without the
#   fix-ups (subnormal results flushed to zero), constants folded into one multiply-add. 2 "tanh":
#   sigmoid(x) = 0.5 + 0.5 tanh(x / 2) from one tanh.approx (one MUFU operation; its relative error
#   measured at up to 1.1e-5, so up to about 6e-6 absolute on a weight); elu+1 as in 1.
# Per 64 x 64 tile the tensor cores need about 128 cycles per product, the MUFU 256 cycles per
# operation per weight, so two MUFU operations per weight cap the forward pass at half of FlashAttention's
# speed (docs/performance.md, "The kernel's instruction budget").
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# The PTX operations exist only in a kernel compiled for an NVIDIA GPU. In Triton's interpreter IMPL 1
# and 2 run the same formulas with exact exp2, reciprocal and tanh (the tests check their algebra
# against float64 that way; the hardware's rounding is checked on a GPU). Fixed for the process:
# triton.jit reads TRITON_INTERPRET once, when this module is imported.
PTX = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
@no_type_check
def _mufu(x, ASM: tl.constexpr):
    """One PTX special-function instruction on float32 registers (``ASM``: "op $0, $1;")."""
    return tl.inline_asm_elementwise(ASM, "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


# (if / else with a return in each branch, as in _sim: a form the H200's Triton, whatever its version,
# compiled on 2026-12-04)
@triton.jit
@no_type_check
def _ex2(x):
    if PTX:
        return _mufu(x, "ex2.approx.ftz.f32 $0, $1;")
    else:
        return tl.exp2(x)


@triton.jit
@no_type_check
def _rcp(x):
    if PTX:
        return _mufu(x, "rcp.approx.ftz.f32 $0, $1;")
    else:
        return 1.0 / x


@triton.jit
@no_type_check
def _tanh(x):
    if PTX:
        return _mufu(x, "tanh.approx.f32 $0, $1;")
    else:
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
@no_type_check
def _sim_constants(SB, OP: tl.constexpr, IMPL: tl.constexpr, ACC_T: tl.constexpr):
    """(scale, c1, c2): sim of a raw product x = q.k is computed from x * c1 (+ c2) by ``_sim_of``."""
    scale, BIAS = _scale_and_bias(SB, ACC_T)
    if IMPL == 0:
        return scale, scale, BIAS
    elif OP == 0 and IMPL == 1:  # sigmoid = 1 / (1 + 2^-(s + b) log2 e)
        return scale, -scale * LOG2E, -BIAS * LOG2E
    elif OP == 0:  # tanh: sigmoid = 0.5 + 0.5 tanh((s + b) / 2)
        return scale, 0.5 * scale, 0.5 * BIAS
    else:  # elu+1 = 2^min(u, 0) + max(u, 0) ln 2, u = s log2 e
        return scale, scale * LOG2E, BIAS


@triton.jit
@no_type_check
def _sim(s, BIAS, OP: tl.constexpr):
    if OP == 0:
        return 1.0 / (1.0 + tl.exp(-(s + BIAS)))
    else:
        return tl.where(s > 0, s + 1.0, tl.exp(tl.minimum(s, 0.0)))


@triton.jit
@no_type_check
def _sim_of(x, c1, c2, OP: tl.constexpr, IMPL: tl.constexpr):
    """sim of the raw products ``x`` (``_sim_constants``)."""
    if IMPL == 0:
        return _sim(x * c1, c2, OP)
    elif OP == 0 and IMPL == 1:
        return _rcp(1.0 + _ex2(x * c1 + c2))
    elif OP == 0:
        return 0.5 * _tanh(x * c1 + c2) + 0.5
    else:
        u = x * c1
        return _ex2(tl.minimum(u, 0.0)) + tl.maximum(u, 0.0) * LN2


@triton.jit
@no_type_check
def _dsim(p, OP: tl.constexpr):
    """sim'(s) from sim(s) alone: sigmoid p (1 - p); elu+1 1 where s > 0 (p > 1), else p: min(p, 1).
    0 where a mask set p to 0."""
    if OP == 0:
        return p * (1.0 - p)
    else:
        return tl.minimum(p, 1.0)


@triton.jit
@no_type_check
def _visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW: tl.constexpr):
    ok = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < T) & (offs_n[None, :] < T)
    if HAS_WINDOW:
        ok = ok & (offs_m[:, None] - offs_n[None, :] < WINDOW)
    return ok


@triton.jit
@no_type_check
def _load_rows(PTR, offs, offs_d, T, D):
    """Rows ``offs`` of a [T, D] matrix (zeros past T and D)."""
    return tl.load(PTR + offs[:, None] * D + offs_d[None, :], mask=(offs[:, None] < T) & (offs_d[None, :] < D),
                   other=0.0)


@triton.jit
@no_type_check
def _store_rows(PTR, offs, offs_d, T, D, x):
    tl.store(PTR + offs[:, None] * D + offs_d[None, :], x.to(PTR.dtype.element_ty),
             mask=(offs[:, None] < T) & (offs_d[None, :] < D))


@triton.jit
@no_type_check
def _key_range(pid_m, T, WINDOW, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """First and end key of the tiles a block of queries sees (causal, within the window)."""
    lo = pid_m * 0
    if HAS_WINDOW:
        lo = tl.maximum(pid_m * BLOCK_M - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    return lo, tl.minimum((pid_m + 1) * BLOCK_M, T)


@triton.jit
@no_type_check
def _query_range(pid_n, T, WINDOW, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """First and end query of the tiles that see a block of keys (queries before the keys see none of
    them; with a window, none past its reach)."""
    lo = pid_n * BLOCK_N // BLOCK_M * BLOCK_M
    hi = pid_n * 0 + T
    if HAS_WINDOW:
        hi = tl.minimum((pid_n + 1) * BLOCK_N + WINDOW - 1, T)
    return lo, hi


@triton.jit
@no_type_check
def _full_key_tiles(pid_m, lo, hi, WINDOW, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[full_lo, full_hi): the key tiles within [lo, hi) that every query of block pid_m sees whole
    (key n0 + BLOCK_N - 1 <= the block's first query; with a window, its last query within reach of
    key n0), so their scores need no mask. The tiles before (the window's edge) and after (the
    diagonal, and keys past T) are masked."""
    m0 = pid_m * BLOCK_M
    full_hi = tl.maximum(tl.minimum((m0 + 1) // BLOCK_N * BLOCK_N, hi), lo)
    full_lo = lo
    if HAS_WINDOW:
        reach = tl.maximum(m0 + BLOCK_M - WINDOW, 0)  # the first key the block's last query sees
        full_lo = tl.maximum((reach + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo)
    return tl.minimum(full_lo, full_hi), full_hi


@triton.jit
@no_type_check
def _full_query_tiles(pid_n, lo, hi, WINDOW, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """[full_lo, full_hi): the query tiles within [lo, hi) that see key block pid_n whole (first query
    >= the block's last key; with a window, the tile's last query within reach of its first key).
    Rows past T in the last tile add nothing: their q, dacc and drowsum load as zeros."""
    n0 = pid_n * BLOCK_N
    full_lo = tl.minimum(tl.maximum((n0 + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M * BLOCK_M, lo), hi)
    full_hi = hi
    if HAS_WINDOW:
        last = n0 + WINDOW - BLOCK_M  # the last first-query of a tile whose last query reaches key n0
        full_hi = tl.where(last >= 0, (tl.maximum(last, 0) // BLOCK_M + 1) * BLOCK_M, 0)
        full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return full_lo, full_hi


@triton.jit
@no_type_check
def _tile_sim(q, k, offs_m, offs_n, T, c1, c2, WINDOW,
              OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr,
              ACC_T: tl.constexpr, MASK: tl.constexpr):
    """sim of one [M, N] tile (with MASK, 0 where not visible)."""
    p = _sim_of(tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC_T), c1, c2, OP, IMPL)
    if MASK:
        p = tl.where(_visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW), p, 0.0)
    return p


@triton.jit
@no_type_check
def _tile_grads(q, k, v, do, dl, offs_m, offs_n, T, c1, c2, WINDOW,
                OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr,
                ACC_T: tl.constexpr, MASK: tl.constexpr):
    """sim and dS = (dacc . v + drowsum) * sim'(s) of one [M, N] tile (sim' from sim: 0 where masked)."""
    p = _tile_sim(q, k, offs_m, offs_n, T, c1, c2, WINDOW, OP, IMPL, HAS_WINDOW, PREC, ACC_T, MASK)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC_T) + dl[:, None]
    return p, dp * _dsim(p, OP)


@triton.jit
@no_type_check
def _fwd_tiles(acc, rowsum, q, K, V, kvh, offs_m, offs_d, start, end, T, D, c1, c2, WINDOW,
               OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K + kvh * T * D, offs_n, offs_d, T, D)
        v = _load_rows(V + kvh * T * D, offs_n, offs_d, T, D)
        p = _tile_sim(q, k, offs_m, offs_n, T, c1, c2, WINDOW, OP, IMPL, HAS_WINDOW, PREC, ACC_T, MASK)
        rowsum += tl.sum(p, 1)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PREC).to(ACC_T)
    return acc, rowsum


@triton.jit
@no_type_check
def fwd(Q, K, V, ACC, L, T, H, GROUP, D, SB, WINDOW,
        OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    _, c1, c2 = _sim_constants(SB, OP, IMPL, ACC_T)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + bh * T * D, offs_m, offs_d, T, D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_T)
    rowsum = tl.zeros([BLOCK_M], dtype=ACC_T)
    lo, hi = _key_range(pid_m, T, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    full_lo, full_hi = _full_key_tiles(pid_m, lo, hi, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    # the window's edge, the tiles seen whole (no mask), the diagonal
    acc, rowsum = _fwd_tiles(acc, rowsum, q, K, V, kvh, offs_m, offs_d, lo, full_lo, T, D, c1, c2, WINDOW,
                             OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_N, True)
    acc, rowsum = _fwd_tiles(acc, rowsum, q, K, V, kvh, offs_m, offs_d, full_lo, full_hi, T, D, c1, c2,
                             WINDOW, OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_N, False)
    acc, rowsum = _fwd_tiles(acc, rowsum, q, K, V, kvh, offs_m, offs_d, full_hi, hi, T, D, c1, c2, WINDOW,
                             OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_N, True)
    _store_rows(ACC + bh * T * D, offs_m, offs_d, T, D, acc)
    tl.store(L + bh * T + offs_m, rowsum, mask=offs_m < T)


@triton.jit
@no_type_check
def _dkdv_tiles(dk, dv, k, v, Q, DACC, DL, DQ, bh, offs_n, offs_d, start, end, T, D, scale, c1, c2, WINDOW,
                OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
                BLOCK_M: tl.constexpr, MASK: tl.constexpr, FUSE_DQ: tl.constexpr):
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q + bh * T * D, offs_m, offs_d, T, D)
        do = _load_rows(DACC + bh * T * D, offs_m, offs_d, T, D)
        dl = tl.load(DL + bh * T + offs_m, mask=offs_m < T, other=0.0)
        p, ds = _tile_grads(q, k, v, do, dl, offs_m, offs_n, T, c1, c2, WINDOW, OP, IMPL, HAS_WINDOW, PREC,
                            ACC_T, MASK)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC).to(ACC_T)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC).to(ACC_T)
        if FUSE_DQ:  # this key block's share of dq, added into the [T, D] accumulator (ACC_T) of the head
            dq = tl.dot(ds.to(k.dtype), k, input_precision=PREC).to(ACC_T) * scale
            tl.atomic_add(DQ + bh * T * D + offs_m[:, None] * D + offs_d[None, :], dq,
                          mask=(offs_m[:, None] < T) & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


@triton.jit
@no_type_check
def bwd_dkdv(Q, K, V, DACC, DL, DK, DV, DQ, T, H, GROUP, D, SB, WINDOW,
             OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FUSE_DQ: tl.constexpr):
    # one block of keys of one query head; dk / dv per query head (summed over the group later); with
    # FUSE_DQ also dq, added atomically into DQ (zeros in ACC_T) tile by tile, and bwd_dq does not run
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    scale, c1, c2 = _sim_constants(SB, OP, IMPL, ACC_T)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + kvh * T * D, offs_n, offs_d, T, D)
    v = _load_rows(V + kvh * T * D, offs_n, offs_d, T, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_T)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_T)
    lo, hi = _query_range(pid_n, T, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    full_lo, full_hi = _full_query_tiles(pid_n, lo, hi, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    # the diagonal, the tiles that see the keys whole (no mask), the window's edge
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DACC, DL, DQ, bh, offs_n, offs_d, lo, full_lo, T, D, scale, c1, c2, WINDOW,
                         OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_M, True, FUSE_DQ)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DACC, DL, DQ, bh, offs_n, offs_d, full_lo, full_hi, T, D, scale, c1, c2,
                         WINDOW, OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_M, False, FUSE_DQ)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DACC, DL, DQ, bh, offs_n, offs_d, full_hi, hi, T, D, scale, c1, c2, WINDOW,
                         OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_M, True, FUSE_DQ)
    _store_rows(DK + bh * T * D, offs_n, offs_d, T, D, dk * scale)
    _store_rows(DV + bh * T * D, offs_n, offs_d, T, D, dv)


@triton.jit
@no_type_check
def _dq_tiles(dq, q, do, dl, K, V, kvh, offs_m, offs_d, start, end, T, D, c1, c2, WINDOW,
              OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
              BLOCK_N: tl.constexpr, MASK: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K + kvh * T * D, offs_n, offs_d, T, D)
        v = _load_rows(V + kvh * T * D, offs_n, offs_d, T, D)
        _, ds = _tile_grads(q, k, v, do, dl, offs_m, offs_n, T, c1, c2, WINDOW, OP, IMPL, HAS_WINDOW, PREC,
                            ACC_T, MASK)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC).to(ACC_T)
    return dq


@triton.jit
@no_type_check
def bwd_dq(Q, K, V, DACC, DL, DQ, T, H, GROUP, D, SB, WINDOW,
           OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    scale, c1, c2 = _sim_constants(SB, OP, IMPL, ACC_T)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + bh * T * D, offs_m, offs_d, T, D)
    do = _load_rows(DACC + bh * T * D, offs_m, offs_d, T, D)
    dl = tl.load(DL + bh * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_T)
    lo, hi = _key_range(pid_m, T, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    full_lo, full_hi = _full_key_tiles(pid_m, lo, hi, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    dq = _dq_tiles(dq, q, do, dl, K, V, kvh, offs_m, offs_d, lo, full_lo, T, D, c1, c2, WINDOW,
                   OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_N, True)
    dq = _dq_tiles(dq, q, do, dl, K, V, kvh, offs_m, offs_d, full_lo, full_hi, T, D, c1, c2, WINDOW,
                   OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_N, False)
    dq = _dq_tiles(dq, q, do, dl, K, V, kvh, offs_m, offs_d, full_hi, hi, T, D, c1, c2, WINDOW,
                   OP, IMPL, HAS_WINDOW, PREC, ACC_T, BLOCK_N, True)
    _store_rows(DQ + bh * T * D, offs_m, offs_d, T, D, dq * scale)


@triton.jit
@no_type_check
def _lse_tiles(m, l, q, K, kvh, offs_m, offs_d, start, end, T, D, c1, WINDOW,
               IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr):
    """The online maximum m and sum l of exp (IMPL 0) or 2^ (IMPL 1: scores in log2 units) over key tiles."""
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K + kvh * T * D, offs_n, offs_d, T, D)
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC_T) * c1
        if MASK:
            s = tl.where(_visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        if IMPL == 0:
            l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        else:
            l = l * _ex2(m - m_new) + tl.sum(_ex2(s - m_new[:, None]), 1)
        m = m_new
    return m, l


@triton.jit
@no_type_check
def softmax_lse(Q, K, LSE, T, H, GROUP, D, SB, WINDOW,
                IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr, ACC_T: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # log-sum-exp of each causal softmax row, online over tiles of keys (no values, no output); whole
    # tiles without the mask, as in fwd; IMPL 1: in log2 units with PTX's exp2
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    scale, _ = _scale_and_bias(SB, ACC_T)
    if IMPL == 0:
        c1 = scale
    else:
        c1 = scale * LOG2E
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + bh * T * D, offs_m, offs_d, T, D)
    m = tl.zeros([BLOCK_M], dtype=ACC_T) - 1.0e30  # finite: a row with no visible key in a tile adds 0
    l = tl.zeros([BLOCK_M], dtype=ACC_T)
    lo, hi = _key_range(pid_m, T, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    full_lo, full_hi = _full_key_tiles(pid_m, lo, hi, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    m, l = _lse_tiles(m, l, q, K, kvh, offs_m, offs_d, lo, full_lo, T, D, c1, WINDOW, IMPL, HAS_WINDOW, PREC,
                      ACC_T, BLOCK_N, True)
    m, l = _lse_tiles(m, l, q, K, kvh, offs_m, offs_d, full_lo, full_hi, T, D, c1, WINDOW, IMPL, HAS_WINDOW, PREC,
                      ACC_T, BLOCK_N, False)
    m, l = _lse_tiles(m, l, q, K, kvh, offs_m, offs_d, full_hi, hi, T, D, c1, WINDOW, IMPL, HAS_WINDOW, PREC,
                      ACC_T, BLOCK_N, True)
    if IMPL == 0:
        lse = m + tl.log(tl.where(l > 0, l, 1.0))
    else:  # m in log2 units
        lse = m * LN2 + tl.log(tl.where(l > 0, l, 1.0))
    tl.store(LSE + bh * T + offs_m, lse, mask=offs_m < T)


@triton.jit
@no_type_check
def _col_tiles(cs, k, Q, LSE, bh, offs_n, offs_d, start, end, T, D, c1, c2, WINDOW,
               OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr,
               ACC_T: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr):
    """Adds the weights of query tiles [start, end) to the [BLOCK_M, BLOCK_N] accumulator ``cs`` (its
    rows summed once at the end, not per tile)."""
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q + bh * T * D, offs_m, offs_d, T, D)
        lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0).to(ACC_T)
        x = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC_T)
        if OP < 0:  # exp(s - lse); IMPL 1: 2^(x scale log2 e - lse log2 e)
            if IMPL == 0:
                p = tl.exp(x * c1 - lse[:, None])
            else:
                p = _ex2(x * c1 - (lse * LOG2E)[:, None])
        else:  # sim(s) / total, total = exp(lse)
            if IMPL == 0:
                p = _sim_of(x, c1, c2, OP, IMPL) * tl.exp(-lse)[:, None]
            else:
                p = _sim_of(x, c1, c2, OP, IMPL) * _ex2(-lse * LOG2E)[:, None]
        if MASK:  # (a masked score may overflow exp: where picks 0 without arithmetic on it)
            p = tl.where(_visible(offs_m, offs_n, T, WINDOW, HAS_WINDOW), p, 0.0)
        cs += p
    return cs


@triton.jit
@no_type_check
def col_sums(Q, K, LSE, CS, T, H, GROUP, D, SB, WINDOW,
             OP: tl.constexpr, IMPL: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr,
             ACC_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # one block of keys of one query head: sum over the queries that see key s of the weight
    # exp(s_ts - LSE_t) (OP -1, softmax) or sim(s_ts) exp(-LSE_t) (OP 0 / 1, LSE_t = log of the row total);
    # the diagonal and the window's edge masked, the query tiles that see the block whole not
    # (rows past T excluded from those: a zero query row would weigh exp(0 - 0))
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    if OP < 0:
        scale, c2 = _scale_and_bias(SB, ACC_T)  # (c2 unused)
        if IMPL == 0:
            c1 = scale
        else:
            c1 = scale * LOG2E
    else:
        _, c1, c2 = _sim_constants(SB, OP, IMPL, ACC_T)
    kvh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + kvh * T * D, offs_n, offs_d, T, D)
    cs = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_T)
    lo, hi = _query_range(pid_n, T, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    full_lo, full_hi = _full_query_tiles(pid_n, lo, hi, WINDOW, HAS_WINDOW, BLOCK_M, BLOCK_N)
    full_hi = tl.maximum(tl.minimum(full_hi, T // BLOCK_M * BLOCK_M), full_lo)
    cs = _col_tiles(cs, k, Q, LSE, bh, offs_n, offs_d, lo, full_lo, T, D, c1, c2, WINDOW, OP, IMPL, HAS_WINDOW,
                    PREC, ACC_T, BLOCK_M, True)
    cs = _col_tiles(cs, k, Q, LSE, bh, offs_n, offs_d, full_lo, full_hi, T, D, c1, c2, WINDOW, OP, IMPL,
                    HAS_WINDOW, PREC, ACC_T, BLOCK_M, False)
    cs = _col_tiles(cs, k, Q, LSE, bh, offs_n, offs_d, full_hi, hi, T, D, c1, c2, WINDOW, OP, IMPL, HAS_WINDOW,
                    PREC, ACC_T, BLOCK_M, True)
    tl.store(CS + bh * T + offs_n, tl.sum(cs, 0), mask=offs_n < T)
