"""Benchmark: one causal attention call, forward and forward + backward, for the fused sigmoid / elu+1
kernel (``sinkinterp.models.triton_attention``) beside softmax in PyTorch's fused SDPA (FlashAttention
on a GPU), the materialized sigmoid path and FlexAttention.

Methods (``--methods``):

* ``sdpa_softmax``: ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``, the baseline ("x sdpa").
* ``triton_sigmoid`` / ``triton_elu1``: ``sim_attention`` (our kernel), unnormalized, bias 0.
* ``triton_sigmoid_atomic`` / ``triton_elu1_atomic``: the same with ``dq="atomic"`` (one backward
  kernel that adds dq atomically instead of a second pass over the scores).
* ``triton_sigmoid_portable`` / ``triton_elu1_portable``: ``sim_impl="portable"``, sim from ``tl.exp``
  and a division as before 2026-12-04's third session (the default on CUDA is now ``"mufu"``);
  ``triton_sigmoid_tanh`` / ``triton_sigmoid_atomic_tanh``: ``sim_impl="tanh"`` (one special-function
  operation per weight; docs/performance.md, "The kernel's instruction budget").
* ``plain_sigmoid``: ``sigmoid(q k^T / sqrt(d))`` masked, ``@ v`` (what ``attn_backend="auto"`` runs:
  a B x H x T x T map).
* ``flex_sigmoid``: ``torch.compile(flex_attention)`` with ``score_mod = logsigmoid``, the output
  times each row's exp(log-sum-exp) (what ``attn_backend="flex"`` runs).

Before timing, every method's output is compared with a float32 materialized reference on the same
inputs (a row whose numbers are wrong is ``failed``, not timed). Then ``--warmup`` untimed calls and
``--repeats`` timed ones of the forward alone and of forward + backward (the gradient of
``(out * g).sum()`` for a fixed random ``g``). Rows that cannot run here are ``skipped`` with the
reason (the Triton kernel and FlexAttention's backward need CUDA). FLOPs count the causal half:
forward ``2 * 2 * B * H * T^2 * d / 2``, backward 2.5 x that (FlashAttention's convention).

``--tiles 64x4x2,128x8x3,128/64x8x3,...`` times the Triton rows once per tile setting (BLOCK, or
BLOCK_M/BLOCK_N for query rows and key columns apart; warps, stages; ``64`` alone keeps Triton's warps
and stages), each row named ``triton_sigmoid@64x4x2``, to tune the kernel on a GPU.

Run ``python benchmarks/bench_attention.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine_info, provenance_info, summarize_times, sync, time_calls  # noqa: E402

SCHEMA_VERSION = 1
METHODS = ("sdpa_softmax", "triton_sigmoid", "triton_elu1", "triton_sigmoid_atomic", "triton_elu1_atomic",
           "triton_sigmoid_portable", "triton_elu1_portable", "triton_sigmoid_tanh", "triton_sigmoid_atomic_tanh",
           "plain_sigmoid", "flex_sigmoid")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the issue's stretch target: a fused sigmoid kernel faster than softmax (FlashSigmoid)
TARGET_X_SDPA = 1.0


def _causal(t: int, device) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def _reference(method: str, q, k, v) -> torch.Tensor:
    """float32 materialized outputs of what each method computes."""
    q, k, v = q.float(), k.float(), v.float()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = _causal(q.shape[2], q.device)
    if method == "sdpa_softmax":
        return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
    sim = F.elu(s) + 1 if method.startswith("triton_elu1") else torch.sigmoid(s)
    return sim.masked_fill(~mask, 0.0) @ v


# BLOCK (or (BLOCK_M, BLOCK_N)), num_warps, num_stages (None: Triton's default)
Tile = tuple[int | tuple[int, int], int | None, int | None]


def _method(method: str, device: torch.device, interpret: bool = False,
            tile: Tile | None = None) -> tuple[Callable | None, str | None]:
    """(attention function of q, k, v, None) or (None, why it is skipped here)."""
    if method == "sdpa_softmax":
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), None
    if method == "plain_sigmoid":
        def plain(q, k, v):
            s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)
            return torch.sigmoid(s).masked_fill(~_causal(q.shape[2], q.device), 0.0) @ v
        return plain, None
    if method.startswith("triton_"):
        from sinkinterp.models.triton_attention import SIM_IMPLS, sim_attention, triton_available

        if device.type != "cuda" and not interpret:
            return None, "the Triton kernel runs on CUDA (on CPU only in Triton's interpreter: --interpret)"
        if not triton_available(device):
            return None, "Triton is not installed"
        op, *mods = method.removeprefix("triton_").split("_")
        launch = {} if tile is None else {"block": tile[0], "num_warps": tile[1], "num_stages": tile[2]}
        launch["dq"] = "atomic" if "atomic" in mods else "two_pass"
        launch["sim_impl"] = next((m for m in mods if m in SIM_IMPLS), None)
        if launch["sim_impl"] not in (None, "portable") and (device.type != "cuda" or interpret):
            return None, f"sim_impl {launch['sim_impl']!r} is PTX: the kernel compiled on CUDA only"
        return (lambda q, k, v: sim_attention(q, k, v, op=op, **launch)[0]), None
    if method == "flex_sigmoid":
        if device.type != "cuda":
            return None, "FlexAttention has no backward on CPU and is fused only under compile on CUDA"
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        compiled = torch.compile(flex_attention)
        masks: dict[int, Any] = {}

        def flex(q, k, v):
            t = q.shape[2]
            if t not in masks:
                masks[t] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, t, t, device=q.device)
            out, lse = compiled(q, k, v, score_mod=lambda s, b, h, qi, ki: F.logsigmoid(s),
                                block_mask=masks[t], return_lse=True)
            return out * lse.exp().unsqueeze(-1).to(out.dtype)
        return flex, None
    raise ValueError(f"--methods: unknown method {method!r}")


def _run_row(fn: Callable, method: str, shape: tuple[int, int, int, int], dtype, device, args) -> dict[str, Any]:
    b, h, t, d = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, g = (torch.randn(b, h, t, d, generator=gen).to(device=device, dtype=dtype) for _ in range(4))
    # correctness first, on the same inputs (up to the first 256 queries for the reference's memory)
    with torch.no_grad():
        n = min(t, 256)
        got = fn(q[:, :, :n].contiguous(), k[:, :, :n].contiguous(), v[:, :, :n].contiguous()).float()
        ref = _reference(method, q[:, :, :n], k[:, :, :n], v[:, :, :n])
    err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if not math.isfinite(err) or err > tol:
        return {"status": "failed", "reason": f"output differs from the float32 reference: relative max "
                                              f"error {err:.3g} > {tol}", "rel_err": err}
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

    def forward():
        with torch.no_grad():
            return fn(q, k, v)

    def forward_backward():
        out = fn(qg, kg, vg)
        (out * g).sum().backward()
        qg.grad = kg.grad = vg.grad = None
        return out

    peak = None
    for _ in range(args.warmup):
        forward_backward()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    fwd_times = time_calls(forward, args.repeats, device)
    both_times = time_calls(forward_backward, args.repeats, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    flops_fwd = 2 * 2 * b * h * t * t * d / 2
    fwd, both = summarize_times(fwd_times), summarize_times(both_times)
    return {"status": "ok", "rel_err": err, "fwd_times_s": fwd_times, "fwd_bwd_times_s": both_times,
            "fwd_median_s": fwd["median_s"], "fwd_bwd_median_s": both["median_s"],
            "fwd_tflops": flops_fwd / fwd["median_s"] / 1e12,
            "fwd_bwd_tflops": 3.5 * flops_fwd / both["median_s"] / 1e12, "peak_bytes": peak}


def _int_list(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            vals = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: comma-separated positive integers, got {text!r}") from None
        if not vals or min(vals) < 1:
            raise argparse.ArgumentTypeError(f"{name}: comma-separated positive integers, got {text!r}")
        return vals
    return parse


def _tiles(text: str) -> list[Tile]:
    """``--tiles``: comma-separated BLOCK[xWARPS[xSTAGES]], BLOCK a power of two >= 16 or
    BLOCK_M/BLOCK_N, e.g. ``64x4x2,128x8x3,128/64x8x3``."""
    out: list[Tile] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        parts = item.split("x")
        try:
            blocks = [int(x) for x in parts[0].split("/")]
            nums = [int(x) for x in parts[1:]]
        except ValueError:
            blocks, nums = [], []
        if not 1 <= len(blocks) <= 2 or any(b < 16 or b & (b - 1) for b in blocks) or len(nums) > 2 \
                or (nums and nums[0] not in (1, 2, 4, 8, 16)) or (len(nums) > 1 and not 1 <= nums[1] <= 8):
            raise argparse.ArgumentTypeError(
                f"--tiles: BLOCK[xWARPS[xSTAGES]] items (BLOCK a power of two >= 16 or BLOCK_M/BLOCK_N, WARPS 1-16 "
                f"a power of two, STAGES 1-8), comma-separated, got {item!r}")
        block = blocks[0] if len(blocks) == 1 else (blocks[0], blocks[1])
        out.append((block, *(nums + [None] * (2 - len(nums)))))
    if not out:
        raise argparse.ArgumentTypeError(f"--tiles: at least one BLOCK[xWARPS[xSTAGES]], got {text!r}")
    return out


def _tile_name(tile: Tile) -> str:
    block = tile[0] if isinstance(tile[0], int) else "/".join(map(str, tile[0]))
    return "x".join(str(x) for x in (block, *tile[1:]) if x is not None)


def _methods(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in vals if x not in METHODS]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"--methods: unknown {bad or text!r}, allowed values are {list(METHODS)}")
    return vals


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when there is one)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="input dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--seq-lens", type=_int_list("--seq-lens"), default=None,
                   help="comma-separated T (default: 512,2048,4096 on CUDA, 64,256 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--methods", type=_methods, default=list(METHODS), help=f"comma-separated: {list(METHODS)}")
    p.add_argument("--tiles", type=_tiles, default=None,
                   help="time the triton_* rows once per BLOCK[xWARPS[xSTAGES]] (e.g. 64x4x2,128x8x3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/attention-<device>.json)")
    p.add_argument("--interpret", action="store_true",
                   help="run the Triton rows on CPU in Triton's interpreter (needs TRITON_INTERPRET=1 set "
                        "before Python starts): checks the benchmark end to end, its times mean nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev not in ("cuda", "cpu") and not dev.startswith("cuda:"):
        p.error(f"--device: cuda, cpu or auto, got {args.device!r}")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device: cuda asked for, but torch sees no CUDA device")
    args.device = torch.device(dev)
    gpu = args.device.type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.seq_lens = args.seq_lens or ([512, 2048, 4096] if gpu else [64, 256])
    args.batch_size = args.batch_size if args.batch_size is not None else (8 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.repeats = args.repeats if args.repeats is not None else (10 if gpu else 3)
    for name in ("batch_size", "heads", "d_head", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup: must be >= 0, got {args.warmup}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from sinkinterp.fileio import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, DTYPES[args.dtype]
    json_path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"attention-{device.type}.json"
    doc: dict[str, Any] = {"benchmark": "attention", "schema_version": SCHEMA_VERSION,
                           "provenance": provenance_info(["benchmarks/bench_attention.py", *argv]),
                           "machine": machine_info(device),
                           "settings": {"batch_size": args.batch_size, "heads": args.heads, "d_head": args.d_head,
                                        "dtype": args.dtype, "warmup": args.warmup, "repeats": args.repeats,
                                        "interpret": args.interpret},
                           "rows": []}
    runs: list[tuple[str, str, Tile | None]] = []  # (row name, method, tile)
    for m in args.methods:
        tiles = args.tiles if m.startswith("triton_") and args.tiles else [None]
        runs += [(m if tile is None else f"{m}@{_tile_name(tile)}", m, tile) for tile in tiles]
    doc["settings"]["tiles"] = None if args.tiles is None else [list(t) for t in args.tiles]
    fns = {name: _method(m, device, args.interpret, tile) for name, m, tile in runs}
    for t in args.seq_lens:
        for name, m, tile in runs:
            fn, why = fns[name]
            row: dict[str, Any] = {"method": name, "seq_len": t}
            if tile is not None:
                row["tile"] = {"block": tile[0], "num_warps": tile[1], "num_stages": tile[2]}
            if fn is None:
                row.update(status="skipped", reason=why)
            else:
                try:
                    row.update(_run_row(fn, m, (args.batch_size, args.heads, t, args.d_head), dtype, device, args))
                except Exception as e:  # noqa: BLE001 - a failed row is a result (e.g. out of memory)
                    row.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:300]}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            doc["rows"].append(row)
            if not args.quiet:
                print(f"T {t} {name}: {row['status']}" + (f" ({row.get('reason')})" if row["status"] != "ok" else ""),
                      file=sys.stderr, flush=True)
    # x sdpa: the softmax baseline's time over the row's, per T (> 1: faster than softmax)
    for t in args.seq_lens:
        base = next((r for r in doc["rows"] if r["seq_len"] == t and r["method"] == "sdpa_softmax"
                     and r["status"] == "ok"), None)
        for r in doc["rows"]:
            if r["seq_len"] == t and r["status"] == "ok" and base is not None:
                r["fwd_x_sdpa"] = base["fwd_median_s"] / r["fwd_median_s"]
                r["fwd_bwd_x_sdpa"] = base["fwd_bwd_median_s"] / r["fwd_bwd_median_s"]
    fused = [r for r in doc["rows"] if r["method"].startswith("triton_") and "fwd_bwd_x_sdpa" in r]
    doc["target"] = {"id": "fused_sigmoid_faster_than_softmax", "threshold_x_sdpa": TARGET_X_SDPA,
                     "rows": len(fused), "met": sum(r["fwd_bwd_x_sdpa"] >= TARGET_X_SDPA for r in fused),
                     "note": "stretch target of issue 6 (FlashSigmoid ran 17% faster than FlashAttention-2 "
                             "forward on H100)"}
    write_json(json_path, doc)
    print(_table(doc))
    print(f"wrote {json_path}")
    return 0


def _table(doc: dict) -> str:
    head = ["T", "method", "fwd ms", "fwd+bwd ms", "fwd TFLOP/s", "fwd+bwd TFLOP/s", "x sdpa (fwd / both)",
            "peak MB", "status"]
    lines = [head]
    for r in doc["rows"]:
        if r["status"] == "ok":
            x = (f"{r['fwd_x_sdpa']:.2f} / {r['fwd_bwd_x_sdpa']:.2f}" if "fwd_x_sdpa" in r else "-")
            peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.0f}"
            lines.append([str(r["seq_len"]), r["method"], f"{r['fwd_median_s'] * 1e3:.3f}",
                          f"{r['fwd_bwd_median_s'] * 1e3:.3f}", f"{r['fwd_tflops']:.3g}", f"{r['fwd_bwd_tflops']:.3g}",
                          x, peak, "ok"])
        else:
            lines.append([str(r["seq_len"]), r["method"], "-", "-", "-", "-", "-", "-",
                          f"{r['status']}: {r.get('reason', '')}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    tgt = doc["target"]
    out.append(f"target: fused sigmoid / elu+1 forward + backward faster than SDPA softmax: "
               f"{tgt['met']} of {tgt['rows']} rows" + (" (no fused rows ran here)" if not tgt["rows"] else ""))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
