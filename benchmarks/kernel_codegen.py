"""Static benchmark: what the fused sigmoid / elu+1 kernels compile to on an NVIDIA GPU, without one.

Triton compiles a kernel for a target architecture on any machine (its wheel brings ``ptxas``), so
this script builds the kernels of ``sinkinterp/models/_triton_sim_kernels.py`` for sm_90 (H100 /
H200) on the CPU, disassembles them and counts, in the loop over whole tiles (the kernel's hot loop:
the loop with tensor-core instructions and the fewest instructions), per warp and tile:

* ``instr``: SASS instructions, each issued in one cycle by the warp's scheduler;
* ``mufu``: special-function-unit operations (``MUFU.*``: exp2, reciprocal, tanh); on Hopper a
  scheduler's unit does 4 lanes a cycle, so one warp-wide operation occupies it 8 cycles;
* ``mma``: tensor-core instructions.

Kernels: the attention's ``fwd``, ``dkdv`` (``dkdv_atomic``: with dq added atomically) and ``dq`` for
sigmoid and elu+1; the measurement's ``lse`` (``softmax_lse``) and ``colsum`` (``col_sums`` of softmax
weights: every key's column sum, the full measurement's second pass), whose "x softmax" is the
softmax forward kernel's cycles over theirs (the pass's cost against the attention's own forward).

From them, for a BLOCK_M x BLOCK_N tile with head size D, an issue-bound estimate in cycles per tile
on one SM: ``max(issue, mufu, tensor)`` with issue = instr x warps per scheduler, mufu = 8 x mufu x
warps per scheduler, tensor = the tile's products (forward 2, dk / dv 4, dq 3, dk / dv with atomic dq
5) x 2 BLOCK_M BLOCK_N D flops / 4096 flops per cycle per SM (989 TFLOP/s dense bf16 over 132 SMs at
1.83 GHz). The same counts for a plain online-softmax forward kernel (defined here, FlashAttention's
forward loop in Triton, same tiles) give the forward pass's estimate for softmax: ``x softmax`` is
its cycles over the kernel's (above 1: fewer cycles than softmax would need).

It is a model, not a timing: it ignores latency, memory and occupancy, and the Triton version of the
GPU machine may schedule differently. Checked against the H200 timings of 2026-12-04 in
docs/performance.md ("The kernel's instruction budget"): the kernel then scored every tile with the mask
(``--kernels-file`` on that commit's kernels). Performance claims stay with ``bench_attention.py`` on a GPU.

Run ``python benchmarks/kernel_codegen.py --help``; the table is printed and the JSON written
(default benchmarks/results/kernel-codegen-sm90.json).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, no_type_check

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# floating-point contraction (a * b + c -> one FMA) as a kernel compiled by Triton 3.9 at run time gets it
# (3.9 warns that its default will change; the counts here assume it on)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

SCHEMA_VERSION = 1
from sinkinterp.models.triton_attention import SIM_IMPLS as IMPLS  # the kernels' IMPL order
from sinkinterp.models.triton_attention import SIM_OPS as OPS  # the kernels' OP order
KERNELS = ("fwd", "dkdv", "dkdv_atomic", "dq", "lse", "colsum")
#: tile products per kernel; "lse" / "colsum" are the measurement's softmax_lse and col_sums (softmax)
PRODUCTS = {"fwd": 2, "dkdv": 4, "dkdv_atomic": 5, "dq": 3, "softmax_fwd": 2, "lse": 1, "colsum": 1}
#: dense bf16 tensor-core flops per cycle per SM: A100 (312 TFLOP/s, 108 SMs, 1.41 GHz), H100 / H200
#: (989 TFLOP/s, 132 SMs, 1.83 GHz); MUFU: 16 operations per cycle per SM on both
FLOPS_PER_CYCLE_SM_BY_ARCH = {80: 2048, 90: 4096}
FLOPS_PER_CYCLE_SM = FLOPS_PER_CYCLE_SM_BY_ARCH[90]
MUFU_CYCLES = 8  # cycles a warp-wide MUFU operation holds one scheduler's unit (4 lanes a cycle)
#: SDPA's (FlashAttention-2's) forward + backward in this model's cycles per 64 x 64 tile, as the H200's
#: timings of 2026-12-04 imply for the kernels of commit 150ad90 at T 4096 (998-1,055; docs/performance.md)
SDPA_FWD_BWD_CYCLES_64 = 1030
SCHEDULERS = 4  # per SM
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def _softmax_reference():
    """A plain causal online-softmax forward kernel (FlashAttention's loop, exp2 with the scale folded
    in, whole tiles without a mask, the diagonal with one), the softmax side of the comparison."""
    import triton
    import triton.language as tl

    @triton.jit
    @no_type_check
    def _ref_tiles(acc, m_i, l_i, q, K, V, offs_m, offs_d, start, end, qk_scale, D, BLOCK_N: tl.constexpr,
                   MASK: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = tl.load(K + offs_n[:, None] * D + offs_d[None, :])
            v = tl.load(V + offs_n[:, None] * D + offs_d[None, :])
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if MASK:
                s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc, m_i, l_i

    @triton.jit
    @no_type_check
    def softmax_fwd(Q, K, V, O, T, D, qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        base = bh * T * D
        q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :])
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        whole = pid_m * BLOCK_M // BLOCK_N * BLOCK_N
        acc, m_i, l_i = _ref_tiles(acc, m_i, l_i, q, K + base, V + base, offs_m, offs_d, 0, whole, qk_scale, D,
                               BLOCK_N, False)
        acc, m_i, l_i = _ref_tiles(acc, m_i, l_i, q, K + base, V + base, offs_m, offs_d, whole, (pid_m + 1) * BLOCK_M,
                               qk_scale, D, BLOCK_N, True)
        tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty))

    return softmax_fwd


def _kernels(path: Path | None):
    if path is None:
        from sinkinterp.models import _triton_sim_kernels as kern
        return kern
    spec = importlib.util.spec_from_file_location("_kernels_under_test", path)
    kern = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kern)
    return kern


def _compile(fn, types: dict[str, str], consts: dict[str, Any], warps: int, stages: int, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    consts = {k: v for k, v in consts.items() if k in names}  # an older kernel file may lack IMPL
    sig = {n: "constexpr" if n in consts else types[n] for n in names}
    # pointers and the sizes a launch gets (T, D multiples of 16 at these shapes) as Triton specializes them
    div16 = [n for n in names if n in types and (types[n].startswith("*") or n in ("T", "D"))]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div16}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))


def _sass(cubin: bytes) -> tuple[str, str]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
        dis = subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    return res, dis


def loop_counts(dis: str) -> list[collections.Counter]:
    """Opcode counts of every loop body (from a backward branch's target to the branch)."""
    ins = [(int(a, 16), op, rest) for a, op, rest in _LINE.findall(dis)]
    out = []
    for addr, op, rest in ins:
        m = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr:
            out.append(collections.Counter(o for a, o, _ in ins if int(m.group(1), 16) <= a <= addr))
    return out


def analyse(compiled, kernel: str, block_m: int, block_n: int, d: int, warps: int,
            flops_per_cycle: int = FLOPS_PER_CYCLE_SM) -> dict[str, Any]:
    res, dis = _sass(compiled.asm["cubin"])
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    stack = int(re.search(r"STACK:(\d+)", res).group(1))
    loops = [c for c in loop_counts(dis) if any("GMMA" in k or k.startswith("HMMA") for k in c)]
    if not loops:
        raise RuntimeError(f"{kernel}: no loop with tensor-core instructions in the SASS")
    hot = min(loops, key=lambda c: sum(c.values()))
    instr = sum(hot.values())
    mufu = sum(v for k, v in hot.items() if k.startswith("MUFU"))
    per_thread = block_m * block_n / (32 * warps)  # tile weights per thread
    per_sched = max(1, warps // SCHEDULERS)
    cycles = {"issue": instr * per_sched, "mufu": MUFU_CYCLES * mufu * per_sched,
              "tensor": PRODUCTS[kernel] * 2 * block_m * block_n * d / flops_per_cycle}
    limiter = max(cycles, key=cycles.get)
    return {"regs": regs, "stack_bytes": stack, "loops": len(loops), "instr": instr, "mufu": mufu,
            "mma": sum(v for k, v in hot.items() if "GMMA" in k or k.startswith("HMMA")),
            "instr_per_weight": instr / per_thread, "mufu_per_weight": mufu / per_thread,
            "cycles": cycles, "bound_cycles": cycles[limiter], "limiter": limiter,
            "top": hot.most_common(6)}


def _tiles(text: str) -> list[tuple[int, int, int, int]]:
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        m = re.fullmatch(r"(\d+)(?:/(\d+))?x(\d+)x(\d+)", item)
        if not m:
            raise argparse.ArgumentTypeError(f"--tiles: BLOCK[/BLOCK_N]xWARPSxSTAGES items, got {item!r}")
        bm, bn, w, s = int(m[1]), int(m[2] or m[1]), int(m[3]), int(m[4])
        if any(b < 16 or b & (b - 1) for b in (bm, bn)) or w not in (1, 2, 4, 8, 16) or not 1 <= s <= 8:
            raise argparse.ArgumentTypeError(f"--tiles: blocks powers of two >= 16, warps 1-16, stages 1-8: {item!r}")
        out.append((bm, bn, w, s))
    return out


def _choice_list(name: str, allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        vals = [x.strip() for x in text.split(",") if x.strip()]
        if not vals or any(v not in allowed for v in vals):
            raise argparse.ArgumentTypeError(f"{name}: comma-separated from {list(allowed)}, got {text!r}")
        return vals
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, choices=tuple(FLOPS_PER_CYCLE_SM_BY_ARCH),
                   help="CUDA compute capability x 10: 90 (H100 / H200, the default) or 80 (A100); the "
                        "predictions against SDPA exist for 90 only (calibrated on the H200)")
    p.add_argument("--tiles", type=_tiles, default=[(64, 64, 4, 3)],
                   help="BLOCK[/BLOCK_N]xWARPSxSTAGES, comma-separated (default 64x4x3: the kernel's tile and "
                        "Triton's default warps and stages)")
    p.add_argument("--ops", type=_choice_list("--ops", OPS), default=list(OPS))
    p.add_argument("--impls", type=_choice_list("--impls", IMPLS), default=list(IMPLS))
    p.add_argument("--kernels", type=_choice_list("--kernels", KERNELS), default=list(KERNELS))
    p.add_argument("--d-head", type=int, default=64, choices=(16, 32, 64, 128))
    p.add_argument("--kernels-file", type=Path, default=None,
                   help="compile the kernels of this file instead (e.g. an older commit's, from git show)")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/kernel-codegen-sm<arch>.json)")
    p.add_argument("--sdpa-cycles", type=float, default=SDPA_FWD_BWD_CYCLES_64,
                   help="SDPA's forward + backward cycles per 64 x 64 tile, for the predicted ratios (default: the "
                        "H200 calibration)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--compare", type=Path, default=None, metavar="ATTENTION_JSON",
                   help="compile nothing: set the Triton rows of this bench_attention.py JSON beside the estimates "
                        "of --codegen-json (printed; written to --json when given)")
    p.add_argument("--codegen-json", type=Path, default=None,
                   help="with --compare: this script's earlier JSON (default benchmarks/results/kernel-codegen-sm<arch>.json)")
    p.add_argument("--default-impl", choices=IMPLS, default="mufu",
                   help="with --compare: the sim_impl of rows whose name has none (the kernel's default when they "
                        "were timed: mufu; portable for timings before 2026-12-04's third session)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import triton
    import triton.language as tl

    from benchmarks.common import provenance_info

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_codegen.py compiles kernels: unset TRITON_INTERPRET")
    kern = _kernels(args.kernels_file)
    bf, f32 = "*bf16", "*fp32"
    # (scale and BIAS: the float arguments of the kernels before 2026-12-04's second session, for --kernels-file)
    sizes = dict(T="i32", H="i32", GROUP="i32", D="i32", SB=f32, WINDOW="i32", scale="fp32", BIAS="fp32")
    types = {"fwd": dict(Q=bf, K=bf, V=bf, ACC=bf, L=f32, **sizes),
             "dkdv": dict(Q=bf, K=bf, V=bf, DACC=bf, DL=f32, DK=bf, DV=bf, DQ=f32, **sizes),
             "dq": dict(Q=bf, K=bf, V=bf, DACC=bf, DL=f32, DQ=bf, **sizes)}
    fns = {"fwd": kern.fwd, "dkdv": kern.bwd_dkdv, "dkdv_atomic": kern.bwd_dkdv, "dq": kern.bwd_dq,
           "lse": kern.softmax_lse, "colsum": kern.col_sums}
    types["lse"] = dict(Q=bf, K=bf, LSE=f32, **sizes)
    types["colsum"] = dict(Q=bf, K=bf, LSE=f32, CS=f32, **sizes)
    d = args.d_head
    flops = FLOPS_PER_CYCLE_SM_BY_ARCH[args.arch]
    rows = []
    for bm, bn, warps, stages in args.tiles:
        tile = f"{bm}/{bn}x{warps}x{stages}"
        ref = analyse(_compile(_softmax_reference(), dict(Q=bf, K=bf, V=bf, O=bf, T="i32", D="i32", qk_scale="fp32"),
                               dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=d), warps, stages, args.arch),
                      "softmax_fwd", bm, bn, d, warps, flops)
        rows.append({"kernel": "softmax_fwd", "op": "softmax", "impl": "-", "tile": tile, **ref})
        for kernel in (k for k in ("lse", "colsum") if k in args.kernels):  # softmax weights; no "tanh"
            for impl in (i for i in args.impls if i != "tanh"):
                consts = dict(OP=-1, IMPL=IMPLS.index(impl), HAS_WINDOW=False, PREC="tf32", ACC_T=tl.float32,
                              BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=d)
                if "IMPL" not in fns[kernel].arg_names and impl != "portable":
                    continue
                row = analyse(_compile(fns[kernel], types[kernel], consts, warps, stages, args.arch), kernel, bm, bn,
                              d, warps, flops)
                rows.append({"kernel": kernel, "op": "softmax", "impl": impl, "tile": tile, **row,
                             "x_softmax": ref["bound_cycles"] / row["bound_cycles"]})
        for op in args.ops:
            for impl in args.impls:
                if op == "elu1" and impl == "tanh":
                    continue  # elu+1 has no tanh form: "tanh" runs it as "mufu"
                for kernel in (k for k in args.kernels if k not in ("lse", "colsum")):
                    consts = dict(OP=OPS.index(op), IMPL=IMPLS.index(impl), HAS_WINDOW=False, PREC="tf32",
                                  ACC_T=tl.float32, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=d)
                    if kernel.startswith("dkdv"):
                        consts["FUSE_DQ"] = kernel == "dkdv_atomic"
                    names = fns[kernel].arg_names
                    if ("IMPL" not in names and impl != "portable") or \
                            (kernel == "dkdv_atomic" and "FUSE_DQ" not in names):
                        continue  # an older kernel file without these
                    row = analyse(_compile(fns[kernel], types[kernel.removesuffix("_atomic")], consts, warps,
                                           stages, args.arch), kernel, bm, bn, d, warps, flops)
                    if kernel == "fwd":
                        row["x_softmax"] = ref["bound_cycles"] / row["bound_cycles"]
                    rows.append({"kernel": kernel, "op": op, "impl": impl, "tile": tile, **row})
    return {"benchmark": "kernel_codegen", "schema_version": SCHEMA_VERSION,
            "provenance": provenance_info(["benchmarks/kernel_codegen.py", *args.argv]),
            "settings": {"arch": args.arch, "d_head": d, "dtype": "bfloat16", "triton": triton.__version__,
                         "kernels_file": None if args.kernels_file is None else str(args.kernels_file),
                         "model": {"flops_per_cycle_sm": flops, "mufu_cycles": MUFU_CYCLES,
                                   "schedulers": SCHEDULERS, "products": PRODUCTS}},
            "rows": rows, "predictions": predictions(rows, args.sdpa_cycles) if args.arch == 90 else []}


def predictions(rows: list[dict[str, Any]], sdpa_cycles: float) -> list[dict[str, Any]]:
    """Forward + backward estimates per (tile, op, sim_impl, dq): the kernels' bounds summed (fwd + dkdv
    + dq, or fwd + dkdv_atomic) and SDPA's cycles (``sdpa_cycles`` per 64 x 64 tile, scaled to the
    tile) over them: what ``bench_attention.py``'s fwd_bwd_x_sdpa should read at long T."""
    by = {(r["tile"], r["kernel"], r["op"], r["impl"]): r["bound_cycles"] for r in rows}
    out = []
    for tile, kernel, op, impl in by:
        if kernel != "fwd":
            continue
        bm, bn = (int(x) for x in tile.split("x")[0].split("/"))
        sdpa = sdpa_cycles * bm * bn / (64 * 64)
        for dq, parts in (("two_pass", ("fwd", "dkdv", "dq")), ("atomic", ("fwd", "dkdv_atomic"))):
            if all((tile, p, op, impl) in by for p in parts):
                cycles = sum(by[(tile, p, op, impl)] for p in parts)
                out.append({"tile": tile, "op": op, "impl": impl, "dq": dq, "cycles": cycles,
                            "fwd_bwd_x_sdpa": sdpa / cycles})
    return out


def _bench_tile(tile: dict[str, Any] | None) -> str:
    """bench_attention.py's tile of a row (None: the kernel's default launch, 64 x 64 tiles with
    Triton's 4 warps and 3 stages) under this script's tile name, BLOCK_M/BLOCK_NxWARPSxSTAGES."""
    tile = tile or {}
    block = tile.get("block") or 64
    bm, bn = (block, block) if isinstance(block, int) else block
    return f"{bm}/{bn}x{tile.get('num_warps') or 4}x{tile.get('num_stages') or 3}"


def compare(codegen: dict[str, Any], attention: dict[str, Any], default_impl: str = "mufu") -> list[dict[str, Any]]:
    """Each timed Triton row of a ``bench_attention.py`` JSON beside this script's estimate for the same
    kernels: op, dq mode and sim_impl from the row's name (``default_impl`` where the name has none: the
    kernel's default when the timings were taken, "portable" before 2026-12-04's third session), tile
    from its ``tile``. Predicted forward x SDPA is the forward kernel's ``x_softmax`` (SDPA's forward at
    the softmax kernel's cycles); forward + backward from ``predictions`` (made from the rows for a JSON
    written before they were). Rows without an estimate
    (another tile, an op or impl not compiled) get None there."""
    made = codegen.get("predictions") or predictions(codegen["rows"], SDPA_FWD_BWD_CYCLES_64)  # older JSONs: none
    preds = {(p["tile"], p["op"], p["impl"], p["dq"]): p["fwd_bwd_x_sdpa"] for p in made}
    fwd = {(r["tile"], r["op"], r["impl"]): r.get("x_softmax") for r in codegen["rows"] if r["kernel"] == "fwd"}
    out = []
    for r in attention["rows"]:
        base = r["method"].partition("@")[0]
        if not base.startswith("triton_") or r.get("status") != "ok":
            continue
        op, *mods = base.removeprefix("triton_").split("_")
        dq = "atomic" if "atomic" in mods else "two_pass"
        impl = next((m for m in mods if m in IMPLS), default_impl)
        tile = _bench_tile(r.get("tile"))
        out.append({"method": r["method"], "seq_len": r["seq_len"], "tile": tile, "op": op, "impl": impl, "dq": dq,
                    "predicted_fwd_x_sdpa": fwd.get((tile, op, impl)), "measured_fwd_x_sdpa": r["fwd_x_sdpa"],
                    "predicted_fwd_bwd_x_sdpa": preds.get((tile, op, impl, dq)),
                    "measured_fwd_bwd_x_sdpa": r["fwd_bwd_x_sdpa"]})
    return out


def compare_table(rows: list[dict[str, Any]]) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    head = ["method", "T", "tile", "impl", "dq", "fwd est", "fwd meas", "fwd+bwd est", "fwd+bwd meas"]
    lines = [head] + [[r["method"], str(r["seq_len"]), r["tile"], r["impl"], r["dq"], f(r["predicted_fwd_x_sdpa"]),
                       f(r["measured_fwd_x_sdpa"]), f(r["predicted_fwd_bwd_x_sdpa"]), f(r["measured_fwd_bwd_x_sdpa"])]
                      for r in rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("x SDPA softmax (above 1: faster); est: this script's issue-bound model, meas: bench_attention.py")
    return "\n".join(out)


def table(doc: dict[str, Any]) -> str:
    head = ["tile", "kernel", "op", "impl", "regs", "stack B", "instr", "instr/w", "MUFU/w", "issue", "mufu",
            "tensor", "limiter", "x softmax"]
    lines = [head]
    for r in doc["rows"]:
        c = r["cycles"]
        lines.append([r["tile"], r["kernel"], r["op"], r["impl"], str(r["regs"]), str(r["stack_bytes"]),
                      str(r["instr"]),
                      f"{r['instr_per_weight']:.1f}", f"{r['mufu_per_weight']:.2f}", f"{c['issue']:.0f}",
                      f"{c['mufu']:.0f}", f"{c['tensor']:.0f}", r["limiter"],
                      f"{r['x_softmax']:.2f}" if "x_softmax" in r else "-"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("cycles per tile on one SM (issue / MUFU / tensor cores; the largest bounds it); x softmax: the "
               "softmax forward kernel's bound over the row's (forward and measurement rows)")
    for p in doc.get("predictions", []):
        out.append(f"predicted {p['tile']} {p['op']} {p['impl']} dq={p['dq']}: {p['cycles']:.0f} cycles forward + "
                   f"backward, {p['fwd_bwd_x_sdpa']:.2f} x SDPA")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    from sinkinterp.fileio import write_json

    if args.compare is not None:
        import json

        codegen_path = args.codegen_json or REPO / "benchmarks" / "results" / f"kernel-codegen-sm{args.arch}.json"
        for flag, path in (("--compare", args.compare), ("--codegen-json", codegen_path)):
            if not path.is_file():
                raise SystemExit(f"kernel_codegen.py: {flag} {path}: no such file")
        rows = compare(json.loads(codegen_path.read_text()), json.loads(args.compare.read_text()), args.default_impl)
        print(compare_table(rows))
        if args.json:
            from benchmarks.common import provenance_info

            doc = {"benchmark": "kernel_codegen_compare", "schema_version": SCHEMA_VERSION,
                   "provenance": provenance_info(["benchmarks/kernel_codegen.py", *argv]),
                   "codegen_json": str(codegen_path), "attention_json": str(args.compare), "rows": rows}
            print(f"wrote {write_json(Path(args.json), doc)}")
        return 0
    doc = run(args)
    path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"kernel-codegen-sm{args.arch}.json"
    write_json(path, doc)
    if not args.quiet:
        print(table(doc))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
