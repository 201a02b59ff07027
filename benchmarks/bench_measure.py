"""Benchmark: sinkinterp's streaming ``measure`` against a plain forward pass and against caching
every attention pattern (what one does without sinkinterp).

Methods (one row each per model, sequence length T and number of sequences N; same batch size):

* ``forward``: ``model(batch)`` under ``no_grad`` for every batch, no hooks (fused SDPA attention).
  The baseline of the time ratios.
* ``forward_materialized``: the same with ``attn_backend="reference"``: attention is materialized
  (T x T scores and pattern per layer), as it must be whenever a hook reads ``hook_pattern``. Splits
  measure's overhead into "materializing attention" and "reducing it in hooks".
* ``measure``: ``sinkinterp.measure(model, tokens, norms=True, qk_heads="none")``.
* ``measure_blocks``: ``measure`` with the CPU column sums taken by the blocked pass over the scores
  instead of one flash call with keys and queries swapped (what ``measure`` did before 2026-12-03);
  the same numbers, for timing the two against each other. Off CPU it is ``measure``.
* ``measure_qk``: the same with ``qk_heads="all"`` (the q.k decomposition, prefix sums over keys).
* ``measure_first``: ``measure(..., first_keys=10)``: alpha and Sink_k for the first 10 keys only, read
  from the model's read-only column hooks, so attention stays in the fused kernel (no T x T pattern).
* ``measure_triton``: ``measure`` with ``attn_backend="triton"``: every key's column sum and softmax's
  row log-sum-exp from the Triton kernels of ``sinkinterp.models.triton_attention`` instead of a
  blocked pass in PyTorch (CUDA; on CPU only under ``TRITON_INTERPRET=1``, where it is slow and
  checks plumbing only, otherwise it is ``measure``).
* ``lengths``: ``sinkinterp.lengths.measure_lengths(model, tokens)``: Sink_1..10, alpha_1, Sink_* and
  the massive-activation ratio of every prefix length 2..T from the same pass (first 10 key columns
  from the column hooks, attention kept in the fused kernel). What a T sweep costs in one pass.
* ``cache``: ``model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))`` per
  batch, keeping the patterns of all batches, then alpha_k for every key and Sink_1 from them.

Time: median of ``--repeats`` timed runs over all N sequences, after ``--warmup`` runs on one batch.
Peak memory: increase of the peak over the memory after model build and input creation (see
``benchmarks/common.py``); on CPU each row runs in a fresh process by default.

Before anything is timed, a parity check asserts that Sink / alpha from the cached patterns equal
``measure``'s on one configuration (the first model at the shortest length, 2 x batch + 1
sequences or as many as ``--max-cache-gb`` holds the patterns of), so that both sides compute the
same thing.

Run ``python benchmarks/bench_measure.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    DTYPES,
    REPO_ROOT,
    MemoryMeter,
    available_memory_bytes,
    machine_info,
    provenance_info,
    summarize_times,
    time_calls,
)

__all__ = ["main", "MODEL_PRESETS", "METHODS", "parse_model", "run_row", "run_parity", "cache_then_reduce"]

SCHEMA_VERSION = 1
RESULT_PREFIX = "BENCH_RESULT "

#: named model sizes: (n_layers, d_model, n_heads); any "LxDxH" string works too
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 32, 4),
    "small": (4, 128, 8),
    "large": (12, 512, 8),
}

METHODS = ("forward", "forward_materialized", "measure", "measure_blocks", "measure_qk", "measure_first",
           "measure_triton", "lengths", "cache")
FIRST_KEYS = 10  # key columns of the measure_first method

#: the targets of issue 6, checked on every run (on a busy machine the time ratios are indicative only)
TARGET_TIME_RATIO = 1.3  # measure time <= 1.3 x plain forward
TARGET_MEMORY_RATIO = 10.0  # cache peak >= 10 x measure peak ...
TARGET_MEMORY_T = 2048  # ... at T = 2048
N_INDEPENDENCE_TOL = 1.10  # measure peak at the largest N <= 1.10 x the peak at the smallest N ...
N_INDEPENDENCE_SLACK_MB = 16.0  # ... or within 16 MB of it (noise of resident-set numbers)


# =============================================================================================
# configuration
# =============================================================================================
def parse_model(spec: str) -> tuple[int, int, int]:
    """A preset name (tiny / small / large) or "LxDxH" (n_layers x d_model x n_heads)."""
    if spec in MODEL_PRESETS:
        return MODEL_PRESETS[spec]
    parts = spec.lower().split("x")
    try:
        if len(parts) != 3:
            raise ValueError
        L, D, H = (int(p) for p in parts)
        if min(L, D, H) < 1 or D % H:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--models: {spec!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor 'LxDxH' "
            "(n_layers x d_model x n_heads, d_model divisible by n_heads)"
        ) from None
    return L, D, H


def model_config(spec: str, *, d_vocab: int, n_ctx: int, init_std: float | None = None) -> dict[str, Any]:
    """``ModelConfig.to_dict()`` of a default (LLaMA-style: RoPE, RMSNorm, SwiGLU, softmax) model."""
    from sinkinterp.models import ModelConfig

    L, D, H = parse_model(spec)
    kw: dict[str, Any] = dict(n_layers=L, d_model=D, n_heads=H, d_vocab=d_vocab, n_ctx=n_ctx)
    if init_std is not None:
        kw["init_std"] = init_std
    return ModelConfig(**kw).to_dict()


def _int_list(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{name}: expected positive integers, got {text!r}")
        return values

    return parse


def _name_list(name: str, allowed: Sequence[str] | None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{name}: empty list")
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{name}: unknown {bad}; allowed values are {list(allowed)}")
        else:
            for v in values:
                parse_model(v)
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_measure.py",
        description="Time and peak memory of sinkinterp.measure vs a plain forward pass vs caching every "
                    "attention pattern (run_with_cache).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="model dtype")
    p.add_argument("--models", type=_name_list("--models", None), default=["small", "large"],
                   help=f"comma-separated presets {dict(MODEL_PRESETS)} (n_layers, d_model, n_heads) "
                        "or LxDxH specs")
    p.add_argument("--seq-lens", type=_int_list("--seq-lens"), default=[64, 256, 1024, 2048],
                   help="sequence lengths T (>= 2)")
    p.add_argument("--num-seqs", type=_int_list("--num-seqs"), default=[16, 64],
                   help="numbers of sequences N (memory of measure must not grow with N)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass, all methods")
    p.add_argument("--methods", type=_name_list("--methods", METHODS), default=list(METHODS))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs on one batch before timing")
    p.add_argument("--eps", type=float, default=0.3, help="sink threshold")
    p.add_argument("--d-vocab", type=int, default=8192,
                   help="vocabulary size: the [batch, T, d_vocab] logits are part of every method's peak")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-cache-gb", type=float, default=None,
                   help="skip the cache method where the patterns alone would exceed this many GB "
                        "(default: 45%% of available host memory on CPU, 70%% of GPU memory on CUDA)")
    p.add_argument("--isolation", choices=("process", "none"), default=None,
                   help="'process': each row in a fresh Python process (clean CPU peaks); 'none': all rows "
                        "in this process (fine for CUDA peaks, approximate for CPU). Default: process on "
                        "cpu, none on cuda")
    p.add_argument("--paired", action="store_true",
                   help="time the methods of each (model, T, N) in one process, in turns: each of --repeats "
                        "rounds runs every method once (the order rotating), and 'x fwd' is the median over "
                        "rounds of the ratio to that round's forward. Steadier ratios on a machine whose speed "
                        "drifts; no peak memory (run without it for peaks)")
    p.add_argument("--row-timeout", type=float, default=3600.0, help="seconds before a row's process is killed")
    p.add_argument("--parity-init-std", type=float, default=0.3,
                   help="init_std of the parity-check model (large, so attention is far from uniform and "
                        "Sink_1 at the lower thresholds of the eps sweep is neither 0 nor 100)")
    p.add_argument("--json", type=Path, default=None,
                   help="where to write the results (default benchmarks/results/measure-<device>.json)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished rows of an earlier run in --json whose settings match (device, "
                        "dtype, batch size, repeats, warm-up, eps, vocabulary, seed, threads, isolation, "
                        "model sizes); the file records the earlier commands")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one row, JSON spec
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Clear errors before any work starts."""
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if not 0.0 < args.eps < 1.0:
        raise SystemExit(f"--eps must be in the open interval (0, 1), got {args.eps}")
    if min(args.seq_lens) < 2:
        raise SystemExit(f"--seq-lens must all be >= 2, got {args.seq_lens}")
    if args.d_vocab < 2:
        raise SystemExit(f"--d-vocab must be >= 2, got {args.d_vocab}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")


# =============================================================================================
# the methods
# =============================================================================================
def _batches(tokens: torch.Tensor, batch_size: int):
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start:start + batch_size]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def plain_forward(model: Any, tokens: torch.Tensor, batch_size: int, eps: float) -> None:
    """Logits for every batch, nothing kept (what ``measure`` adds its hooks to)."""
    device = _device(model)
    with torch.no_grad():
        for batch in _batches(tokens, batch_size):
            model(batch.to(device))


def streaming_measure(qk_heads: str, first_keys: int | None = None) -> Callable[..., dict[str, Any]]:
    def run(model: Any, tokens: torch.Tensor, batch_size: int, eps: float) -> dict[str, Any]:
        from sinkinterp.measure import measure

        report = measure(model, tokens, eps=eps, batch_size=batch_size, norms=True, qk_heads=qk_heads,
                         first_keys=None if first_keys is None else min(first_keys, tokens.shape[1]))
        return {"sink1_pct": report.sink1_pct, "alpha_by_key": report.alpha_by_key,
                "sink_pct_by_key": report.sink_pct_by_key, "sink1_by_eps": report.sink1_by_eps,
                "eps_grid": report.eps_grid}

    return run


def all_lengths(model: Any, tokens: torch.Tensor, batch_size: int, eps: float) -> dict[str, Any]:
    """``measure_lengths`` over every prefix length 2..T (one pass per batch at T)."""
    from sinkinterp.lengths import measure_lengths

    report = measure_lengths(model, tokens, eps=eps, batch_size=batch_size, k_max=min(FIRST_KEYS, tokens.shape[1]))
    return {"sink1_pct": float(report.sink_pct[-1, 0]), "sink1_by_eps": report.sink1_by_eps[-1]}


def cache_then_reduce(model: Any, tokens: torch.Tensor, batch_size: int, eps: float,
                      eps_grid: Sequence[float] = ()) -> dict[str, Any]:
    """The way without sinkinterp: cache every attention pattern of every batch, then reduce.

    Written independently of ``sinkinterp.metrics`` on purpose: alpha_k is the mean of column k over
    the queries t >= k that can see it, Sink is the share of (sequence, layer, head) above eps.
    """
    device = _device(model)
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    caches = []
    with torch.no_grad():
        for batch in _batches(tokens, batch_size):
            _, cache = model.run_with_cache(batch.to(device), names_filter=lambda n: n.endswith("hook_pattern"))
            caches.append(cache)
        alphas = []
        for cache in caches:  # [b, L, H, T] per batch
            per_layer = []
            for name in names:
                pattern = cache[name]
                acc = torch.float64 if pattern.dtype == torch.float64 else torch.float32
                T = pattern.shape[-1]
                lower = torch.ones(T, T, dtype=torch.bool, device=pattern.device).tril()  # query >= key
                n_queries = torch.arange(T, 0, -1, device=pattern.device, dtype=acc)
                per_layer.append(pattern.to(acc).masked_fill(~lower, 0).sum(-2) / n_queries)
            alphas.append(torch.stack(per_layer, 1))
        alpha = torch.cat(alphas)  # [N, L, H, T]
        del caches, alphas
        alpha1 = alpha[..., 0].double()
        out = {
            "sink1_pct": float((alpha1 > eps).double().mean() * 100),
            "alpha_by_key": alpha.double().mean(0).cpu().numpy(),
            "sink_pct_by_key": ((alpha > eps).double().mean((0, 1, 2)) * 100).cpu().numpy(),
            "sink1_by_eps": np.array([float((alpha1 > e).double().mean() * 100) for e in eps_grid]),
            "alpha1_per_seq": alpha1.cpu().numpy(),
        }
    return out


def _backend(name: str, flash_colsum: bool = True) -> Callable[[Any], None]:
    """Prepare a model: its attention backend, and whether on CPU the column sums may come from one
    flash call (``attention._colsum_flash_cpu``) or must take the blocked pass (``measure_blocks``)."""
    def prepare(model: Any) -> None:
        from sinkinterp.models import attention

        if not _REAL_COLSUM_FLASH:  # only prepare functions replace it, so the first one sees the real one
            _REAL_COLSUM_FLASH.append(attention._colsum_flash_cpu)
        model.set_attn_backend(name)
        attention._colsum_flash_cpu = _REAL_COLSUM_FLASH[0] if flash_colsum else (lambda *a: None)

    return prepare


_REAL_COLSUM_FLASH: list[Any] = []


#: method -> (prepare model, run)
_METHOD_FUNCS: dict[str, tuple[Callable[[Any], None], Callable[..., Any]]] = {
    "forward": (_backend("auto"), plain_forward),
    "forward_materialized": (_backend("reference"), plain_forward),
    "measure": (_backend("auto"), streaming_measure("none")),
    "measure_blocks": (_backend("auto", flash_colsum=False), streaming_measure("none")),
    "measure_qk": (_backend("auto"), streaming_measure("all")),
    "measure_first": (_backend("auto"), streaming_measure("none", FIRST_KEYS)),
    "measure_triton": (_backend("triton"), streaming_measure("none")),
    "lengths": (_backend("auto"), all_lengths),
    "cache": (_backend("auto"), cache_then_reduce),
}


# =============================================================================================
# one row (in this process or a fresh one)
# =============================================================================================
def _build(spec: dict[str, Any]) -> tuple[Any, torch.Tensor, torch.device]:
    from sinkinterp.models import ModelConfig, SinkTransformer

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    cfg = ModelConfig.from_dict(spec["model_config"])
    model = SinkTransformer(cfg, device=device, dtype=DTYPES[spec["dtype"]]).eval()
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    tokens = torch.randint(0, cfg.d_vocab, (int(spec["num_seqs"]), int(spec["seq_len"])), generator=gen)
    return model, tokens, device


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and peak memory of one method on one (model, T, N); returns the row's measurements."""
    model, tokens, device = _build(spec)
    prepare, fn = _METHOD_FUNCS[spec["method"]]
    prepare(model)
    bs, eps = int(spec["batch_size"]), float(spec["eps"])
    meter = MemoryMeter(device)
    meter.start()
    try:
        for _ in range(int(spec["warmup"])):
            fn(model, tokens[:bs], bs, eps)
        times = time_calls(lambda: fn(model, tokens, bs, eps), int(spec["repeats"]), device)
    finally:
        _backend("auto")(model)  # measure_blocks' switch does not outlive its row
    peak = meter.peak_increase()
    del model, tokens
    row: dict[str, Any] = {"times_s": [round(t, 6) for t in times], **summarize_times(times),
                           "peak_bytes": int(peak), "baseline_bytes": int(meter.baseline),
                           "memory_meter": meter.kind, "torch_threads": torch.get_num_threads()}
    return row


def run_paired(spec: dict[str, Any]) -> dict[str, Any]:
    """Every method of ``spec["methods"]`` on one model and input, in turns: warm-up for each, then
    ``repeats`` rounds of one timed call per method, the order rotated each round so that no method
    always runs first or after the same one. Returns {"times_s": {method: [seconds per round]}}."""
    model, tokens, device = _build(spec)
    methods = list(spec["methods"])
    bs, eps = int(spec["batch_size"]), float(spec["eps"])
    times: dict[str, list[float]] = {m: [] for m in methods}
    try:
        for method in methods:
            prepare, fn = _METHOD_FUNCS[method]
            prepare(model)
            for _ in range(int(spec["warmup"])):
                fn(model, tokens[:bs], bs, eps)
        for r in range(int(spec["repeats"])):
            for method in methods[r % len(methods):] + methods[:r % len(methods)]:
                prepare, fn = _METHOD_FUNCS[method]
                prepare(model)
                times[method] += time_calls(lambda: fn(model, tokens, bs, eps), 1, device)  # noqa: B023
    finally:
        _backend("auto")(model)
    return {"times_s": times, "torch_threads": torch.get_num_threads()}


def _paired_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One row's measurements per method from ``run_paired``'s result (a failed result: every
    method failed alike); the ratio to forward is the median over rounds of the per-round ratio."""
    if result.get("status") != "ok":
        return {m: {k: v for k, v in result.items() if k != "methods"} for m in result["methods"]}
    times = result["times_s"]
    rows = {}
    for method, ts in times.items():
        row: dict[str, Any] = {"status": "ok", "times_s": [round(t, 6) for t in ts], **summarize_times(ts),
                               "peak_bytes": None, "paired": True, "torch_threads": result["torch_threads"]}
        if "forward" in times:
            row["paired_ratio_to_forward"] = statistics.median(t / f for t, f in zip(ts, times["forward"]))
        rows[method] = row
    return rows


def run_parity(spec: dict[str, Any]) -> dict[str, Any]:
    """Sink_k^eps, the eps sweep of Sink_1 and alpha_k from cached patterns == measure's (also with
    ``first_keys``, from ``lengths`` and, where Triton runs, from the Triton column kernels)."""
    from sinkinterp.models.triton_attention import triton_available

    model, tokens, device = _build(spec)
    bs, eps = int(spec["batch_size"]), float(spec["eps"])
    streamed = streaming_measure("none")(model, tokens, bs, eps)
    grid = list(streamed["eps_grid"])
    cached = cache_then_reduce(model, tokens, bs, eps, eps_grid=grid)
    low_precision = spec["dtype"] in ("bfloat16", "float16")
    atol = 1e-3 if low_precision else 1e-6
    alpha_diff = float(np.max(np.abs(streamed["alpha_by_key"] - cached["alpha_by_key"])))
    # a threshold comparison may differ only where some alpha lies within rounding of a threshold
    a1 = cached["alpha1_per_seq"]
    borderline = int(sum(np.sum(np.abs(a1 - e) < atol) for e in set(grid) | {eps}))
    first = streaming_measure("none", FIRST_KEYS)(model, tokens, bs, eps)
    n_first = first["alpha_by_key"].shape[-1]
    first_diff = float(np.max(np.abs(first["alpha_by_key"] - cached["alpha_by_key"][..., :n_first])))
    alpha_diff = max(alpha_diff, first_diff)
    triton_diff, triton_equal = None, True
    if triton_available(device):  # the Triton column kernels give the same numbers
        model.set_attn_backend("triton")
        fused = streaming_measure("none")(model, tokens, bs, eps)
        model.set_attn_backend("auto")
        triton_diff = float(np.max(np.abs(fused["alpha_by_key"] - cached["alpha_by_key"])))
        alpha_diff = max(alpha_diff, triton_diff)
        triton_equal = bool(np.array_equal(fused["sink_pct_by_key"], cached["sink_pct_by_key"])
                            and np.array_equal(fused["sink1_by_eps"], cached["sink1_by_eps"]))
    lengths = all_lengths(model, tokens, bs, eps)  # its longest prefix is the whole sequence
    sink_equal = bool(lengths["sink1_pct"] == cached["sink1_pct"]
                      and np.array_equal(lengths["sink1_by_eps"], cached["sink1_by_eps"])
                      and np.array_equal(streamed["sink_pct_by_key"], cached["sink_pct_by_key"])
                      and np.array_equal(streamed["sink1_by_eps"], cached["sink1_by_eps"])
                      and np.array_equal(first["sink_pct_by_key"], cached["sink_pct_by_key"][:n_first])
                      and np.array_equal(first["sink1_by_eps"], cached["sink1_by_eps"]) and triton_equal)
    sweep = streamed["sink1_by_eps"]
    non_trivial = bool(np.any((sweep > 0) & (sweep < 100)))
    passed = alpha_diff <= atol and (sink_equal or borderline > 0)
    result = {
        "passed": bool(passed),
        "model": spec["model"], "model_config": spec["model_config"], "seq_len": spec["seq_len"],
        "num_seqs": spec["num_seqs"], "batch_size": bs, "dtype": spec["dtype"], "device": spec["device"],
        "eps": eps,
        "sink1_pct": {"measure": streamed["sink1_pct"], "cache": cached["sink1_pct"]},
        "sink1_by_eps": {"eps": [float(e) for e in grid], "measure": streamed["sink1_by_eps"].tolist(),
                         "cache": cached["sink1_by_eps"].tolist()},
        "sink_pct_by_key_equal": bool(np.array_equal(streamed["sink_pct_by_key"], cached["sink_pct_by_key"])),
        "sink1_by_eps_equal": bool(np.array_equal(streamed["sink1_by_eps"], cached["sink1_by_eps"])),
        "alpha_max_abs_diff": alpha_diff, "alpha_atol": atol, "borderline_alphas": borderline,
        "first_keys_alpha_max_abs_diff": first_diff,
        "triton_alpha_max_abs_diff": triton_diff,  # None: Triton not available on this device
        "non_trivial": non_trivial,
        "alpha1_range": [float(a1.min()), float(a1.max())],
    }
    if device.type == "cuda":
        result["machine"] = machine_info(device)
    return result


_ROW_FUNCS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"parity": run_parity, "paired": run_paired}


def _worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = _ROW_FUNCS.get(spec["method"], run_row)(spec)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def _run_in_process(spec: dict[str, Any]) -> dict[str, Any]:
    """One row in this process; running out of memory fails the row, not the benchmark."""
    try:
        result = _ROW_FUNCS.get(spec["method"], run_row)(spec)
        return {"status": "ok", **result}
    except torch.cuda.OutOfMemoryError as err:
        failed = {"status": "failed", "reason": f"CUDA out of memory: {str(err).splitlines()[0]}"}
    except MemoryError as err:
        failed = {"status": "failed", "reason": f"MemoryError: {err}"}
    # outside the except block the traceback (and the tensors its frames hold) is gone
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return failed


def _run_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return {"status": "ok", **json.loads(line[len(RESULT_PREFIX):])}
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}" + (" (likely out of memory)" if proc.returncode == -9 else "")
    else:
        why = f"exit status {proc.returncode}"
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return {"status": "failed", "reason": f"{why}: {tail}"[:2000]}


# =============================================================================================
# the grid, derived numbers, output
# =============================================================================================
_RESUME_SETTINGS = ("device", "dtype", "batch_size", "repeats", "warmup", "eps", "d_vocab", "seed", "threads",
                    "isolation", "paired")
_DERIVED = ("ratio_to_forward", "cache_to_measure_peak", "cache_to_measure_peak_lower_bound", "peak_vs_smallest_n")


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same model up to n_ctx (the longest T of a run; it changes no weight of a RoPE model)."""
    return {k: v for k, v in a.items() if k != "n_ctx"} == {k: v for k, v in b.items() if k != "n_ctx"}


def _previous_rows(path: Path, settings: dict[str, Any], configs: dict[str, dict[str, Any]]
                   ) -> tuple[dict[tuple[str, str, int, int], dict[str, Any]], list[str]]:
    """Finished rows of an earlier run in ``path`` (for --resume), and the commands that made them."""
    from sinkinterp.fileio import read_json

    if not path.exists():
        return {}, []
    old = read_json(path)
    old_settings = old.get("settings", {})
    mismatch = [k for k in _RESUME_SETTINGS if old_settings.get(k) != settings[k]]
    if mismatch:
        raise SystemExit(f"--resume: {path} was run with other settings for {mismatch} "
                         f"({[old_settings.get(k) for k in mismatch]} vs {[settings[k] for k in mismatch]}); "
                         "use another --json or the same settings")
    reuse = {}
    for r in old.get("rows", []):
        m = r["model"]
        old_cfg = old.get("models", {}).get(m, {}).get("config")
        if r.get("status") == "ok" and m in configs and old_cfg and _same_model(old_cfg, configs[m]):
            row = {k: v for k, v in r.items() if k not in _DERIVED}
            reuse[(row["method"], m, row["seq_len"], row["num_seqs"])] = {**row, "resumed": True}
    prov = old.get("provenance", {})
    return reuse, [*prov.get("resumed_commands", []), prov.get("command", "?")]


def _pattern_bytes(cfg: dict[str, Any], T: int, N: int, dtype: str) -> int:
    """Bytes of every attention pattern of N sequences: what the cache method keeps."""
    itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    return int(N) * cfg["n_layers"] * cfg["n_heads"] * T * T * itemsize


def _derive(rows: list[dict[str, Any]]) -> None:
    """Ratios to the plain forward pass, cache/measure peak ratios, peak relative to the smallest N."""
    ok = {(r["method"], r["model"], r["seq_len"], r["num_seqs"]): r for r in rows if r["status"] == "ok"}
    min_n = min((r["num_seqs"] for r in rows), default=0)
    for r in rows:
        key = (r["model"], r["seq_len"], r["num_seqs"])
        fwd = ok.get(("forward", *key))
        if r["status"] == "ok" and "paired_ratio_to_forward" in r:
            r["ratio_to_forward"] = r["paired_ratio_to_forward"]
        elif r["status"] == "ok" and fwd and fwd["median_s"] > 0:
            r["ratio_to_forward"] = r["median_s"] / fwd["median_s"]
        meas = ok.get(("measure", *key))
        if r["method"] == "cache" and meas and (meas["peak_bytes"] or 0) > 0:
            if r["status"] == "ok" and r["peak_bytes"]:
                r["cache_to_measure_peak"] = r["peak_bytes"] / meas["peak_bytes"]
            elif r.get("skipped"):
                r["cache_to_measure_peak_lower_bound"] = r["pattern_bytes"] / meas["peak_bytes"]
        if r["method"].startswith("measure") and r["status"] == "ok":
            base = ok.get((r["method"], r["model"], r["seq_len"], min_n))
            if base and r["peak_bytes"] and (base["peak_bytes"] or 0) > 0:
                r["peak_vs_smallest_n"] = r["peak_bytes"] / base["peak_bytes"]


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this run's rows."""
    out = []
    for target_id, method, what in (("time_ratio", "measure", "measure"),
                                    ("time_ratio_first_keys", "measure_first", f"measure(first_keys={FIRST_KEYS})"),
                                    ("time_ratio_triton", "measure_triton", "measure with the Triton column kernels")):
        items = [{"model": r["model"], "seq_len": r["seq_len"], "num_seqs": r["num_seqs"],
                  "ratio": round(r["ratio_to_forward"], 4), "met": r["ratio_to_forward"] <= TARGET_TIME_RATIO}
                 for r in rows if r["method"] == method and "ratio_to_forward" in r]
        out.append({"id": target_id, "target": f"{what} time <= {TARGET_TIME_RATIO}x plain forward", "items": items,
                    "met_all": all(i["met"] for i in items) if items else None})

    items = []
    for r in rows:
        if r["method"] != "cache" or r["seq_len"] != TARGET_MEMORY_T:
            continue
        if "cache_to_measure_peak" in r:
            v, kind = r["cache_to_measure_peak"], "measured"
        elif "cache_to_measure_peak_lower_bound" in r:
            v, kind = r["cache_to_measure_peak_lower_bound"], "lower bound (cache skipped: patterns alone)"
        else:
            continue
        items.append({"model": r["model"], "seq_len": r["seq_len"], "num_seqs": r["num_seqs"],
                      "ratio": round(v, 3), "kind": kind, "met": v >= TARGET_MEMORY_RATIO})
    out.append({"id": "memory_ratio", "target": f"cache peak >= {TARGET_MEMORY_RATIO:g}x measure peak at T = {TARGET_MEMORY_T}",
                "items": items, "met_all": all(i["met"] for i in items) if items else None})

    items = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] == "measure" and r["status"] == "ok" and r["peak_bytes"] is not None:
            groups.setdefault((r["model"], r["seq_len"]), []).append(r)
    for (model, T), rs in groups.items():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r["num_seqs"])
        lo, hi = rs[0], rs[-1]
        ratio = hi["peak_bytes"] / max(lo["peak_bytes"], 1)
        diff_mb = (hi["peak_bytes"] - lo["peak_bytes"]) / 2**20
        items.append({"model": model, "seq_len": T, "num_seqs": [lo["num_seqs"], hi["num_seqs"]],
                      "peak_mb": [round(lo["peak_bytes"] / 2**20, 1), round(hi["peak_bytes"] / 2**20, 1)],
                      "ratio": round(ratio, 3),
                      "met": ratio <= N_INDEPENDENCE_TOL or diff_mb <= N_INDEPENDENCE_SLACK_MB})
    out.append({"id": "memory_vs_n", "target": f"measure peak does not grow with N (largest-N peak <= {N_INDEPENDENCE_TOL}x "
                          f"smallest-N peak, or within {N_INDEPENDENCE_SLACK_MB:g} MB)",
                "items": items, "met_all": all(i["met"] for i in items) if items else None})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["method", "model", "T", "N", "seconds", "x fwd", "peak MB", "cache/measure peak", "note"]
    lines = []
    for r in rows:
        ok = r["status"] == "ok"
        ratio = ""
        if "cache_to_measure_peak" in r:
            ratio = f"{r['cache_to_measure_peak']:.1f}x"
        elif "cache_to_measure_peak_lower_bound" in r:
            ratio = f">= {r['cache_to_measure_peak_lower_bound']:.1f}x"
        note = "" if ok else f"{r['status']}: {r.get('reason', '')}"
        lines.append([
            r["method"], r["model"], str(r["seq_len"]), str(r["num_seqs"]),
            f"{r['median_s']:.3f}" if ok else "-",
            f"{r['ratio_to_forward']:.2f}" if "ratio_to_forward" in r else "-",
            f"{r['peak_bytes'] / 2**20:.1f}" if ok and r["peak_bytes"] is not None else "-",
            ratio, note[:90],
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return _worker_main(args.worker)
    _check_args(args)
    threads_before = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        return _run_benchmark(args, argv)
    finally:  # run in-process (tests), the caller keeps its thread count
        torch.set_num_threads(threads_before)


def _run_benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    from sinkinterp.fileio import write_json

    device = torch.device(args.device)
    isolation = args.isolation or ("process" if device.type == "cpu" else "none")
    json_path = args.json or REPO_ROOT / "benchmarks" / "results" / f"measure-{args.device}.json"
    n_ctx = max(args.seq_lens)
    max_cache = (args.max_cache_gb * 1e9 if args.max_cache_gb is not None
                 else (available_memory_bytes(device) or 0) * (0.45 if device.type == "cpu" else 0.70))
    configs = {m: model_config(m, d_vocab=args.d_vocab, n_ctx=n_ctx) for m in args.models}
    common = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size, eps=args.eps,
                  seed=args.seed, threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    run = (lambda spec: _run_in_process(spec)) if isolation == "none" else \
        (lambda spec: _run_subprocess(spec, args.row_timeout))

    doc: dict[str, Any] = {
        "benchmark": "measure",
        "schema_version": SCHEMA_VERSION,
        "description": "sinkinterp.measure (streaming, reduces in hooks) vs a plain forward pass vs "
                       "run_with_cache of every hook_pattern; time = median of repeats after warm-up, "
                       "peak = increase over the memory after model build and input creation",
        "provenance": provenance_info([sys.argv[0], *argv]),
        "machine": machine_info(torch.device("cpu")),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
                     "isolation": isolation, "max_cache_bytes": int(max_cache), "n_ctx": n_ctx,
                     "json": str(json_path)},
        "models": {m: {"config": c} for m, c in configs.items()},
        "targets_definition": {"time_ratio_max": TARGET_TIME_RATIO, "memory_ratio_min": TARGET_MEMORY_RATIO,
                               "memory_ratio_seq_len": TARGET_MEMORY_T},
    }

    previous, commands = _previous_rows(json_path, doc["settings"], configs) if args.resume else ({}, [])
    if previous:
        doc["provenance"]["resumed_commands"] = commands
        _log(args.quiet, f"--resume: reusing {len(previous)} finished rows from {json_path}")

    # ---- parity first: the comparison is only fair if both ways compute the same numbers ------
    first = args.models[0]
    parity_T = min(args.seq_lens)
    # two batches and a ragged one, or as many sequences as the cached patterns leave room for
    per_seq = _pattern_bytes(configs[first], parity_T, 1, args.dtype)
    parity_n = min(2 * args.batch_size + 1, int(max_cache // per_seq)) if max_cache else 2 * args.batch_size + 1
    if parity_n < 2:
        print(f"parity check: the patterns of two sequences at T={parity_T} ({2 * per_seq / 1e9:.1f} GB) do not fit "
              f"in --max-cache-gb ({max_cache / 1e9:.1f} GB); give a shorter length first in --seq-lens or a "
              "larger --max-cache-gb", file=sys.stderr)
        return 2
    parity_spec = {**common, "method": "parity", "model": first, "seq_len": parity_T,
                   "num_seqs": parity_n, "warmup": 0, "repeats": 0,
                   "model_config": model_config(first, d_vocab=args.d_vocab, n_ctx=n_ctx,
                                                init_std=args.parity_init_std)}
    _log(args.quiet, f"parity check: {first}, T={parity_spec['seq_len']}, N={parity_spec['num_seqs']} ...")
    parity = run(parity_spec)
    if "machine" in parity:
        doc["machine"].update(parity.pop("machine"))
    elif device.type == "cuda" and isolation == "none":
        doc["machine"] = machine_info(device)
    doc["parity"] = parity
    if parity.get("status") != "ok" or not parity.get("passed"):
        doc["rows"] = list(previous.values())
        write_json(json_path, doc)
        print(f"PARITY CHECK FAILED (cache vs measure); details in {json_path}:\n{json.dumps(parity, indent=1)[:3000]}",
              file=sys.stderr)
        return 1
    _log(args.quiet, f"parity ok: Sink_1 {parity['sink1_pct']['measure']:.3f}% both ways, "
                     f"max |alpha diff| {parity['alpha_max_abs_diff']:.2e}, eps sweep equal")

    # ---- the grid ------------------------------------------------------------------------------
    from sinkinterp.models import ModelConfig, SinkTransformer

    for m, c in configs.items():
        with torch.device("meta"):
            doc["models"][m]["num_params"] = SinkTransformer(ModelConfig.from_dict(c)).num_params()
    rows: list[dict[str, Any]] = []
    for m in args.models:
        for T in args.seq_lens:
            for N in args.num_seqs:
                too_big = _pattern_bytes(configs[m], T, N, args.dtype) > max_cache  # the cache row is skipped
                timed = [x for x in args.methods if not (x == "cache" and too_big)]
                paired: dict[str, dict[str, Any]] = {}
                if args.paired and any((x, m, T, N) not in previous for x in timed):
                    paired = _paired_rows({"methods": timed, **run(
                        {**common, "method": "paired", "methods": timed, "model": m, "seq_len": T,
                         "num_seqs": N, "model_config": configs[m]})})
                for method in args.methods:
                    if (method, m, T, N) in previous:
                        rows.append(previous[(method, m, T, N)])
                        continue
                    row: dict[str, Any] = {"method": method, "model": m, "seq_len": T, "num_seqs": N,
                                           "batch_size": args.batch_size, "dtype": args.dtype,
                                           "device": args.device,
                                           "pattern_bytes": _pattern_bytes(configs[m], T, N, args.dtype)}
                    if method == "cache" and row["pattern_bytes"] > max_cache:
                        row.update(status="skipped", skipped=True,
                                   reason=f"patterns alone need {row['pattern_bytes'] / 1e9:.1f} GB "
                                          f"> limit {max_cache / 1e9:.1f} GB (--max-cache-gb)")
                    elif paired:
                        row.update(paired[method])
                    else:
                        row.update(run({**common, "method": method, "model": m, "seq_len": T, "num_seqs": N,
                                        "model_config": configs[m]}))
                    rows.append(row)
                    peak = "" if row.get("peak_bytes") is None else f", peak {row['peak_bytes'] / 2**20:.1f} MB"
                    shown = (f"{row['median_s']:.3f} s{peak}" if row["status"] == "ok"
                             else f"{row['status']}: {row.get('reason', '')}")
                    _log(args.quiet, f"{method:>20}  {m}  T={T}  N={N}: {shown}")
                    doc["rows"] = rows
                    write_json(json_path, doc)  # partial results survive an interrupted run

    _derive(rows)
    doc["rows"] = rows
    doc["targets"] = _targets(rows)
    write_json(json_path, doc)
    print(format_table(rows))
    for t in doc["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not evaluated (no rows for it)"}[t["met_all"]]
        print(f"target: {t['target']}: {verdict} ({sum(i['met'] for i in t['items'])}/{len(t['items'])} rows)")
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
