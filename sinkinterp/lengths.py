"""The sink as a function of the sequence length T, from one pass at the longest T.

In a causal model the attention of the first ``T'`` queries does not depend on the tokens after
them, so the measurement of the length-``T'`` prefix of a sequence (``measure(model, tokens[:, :T'])``)
can be read off one forward pass over the whole sequence: alpha_k of the prefix is the mean of
the pattern's column k over queries k..T' (a cumulative sum), alpha_* the mean of the bias slot's
weights over queries 1..T', and the massive-activation ratio of the prefix the first token's
residual norm over the mean norm of tokens 2..T'. ``measure_lengths`` keeps those statistics for
every length 2..T at once (O(T) numbers per head and key, never a T x T map across batches) and
is tested equal to separate ``measure`` calls on the prefixes.

Thresholds are applied per sequence, head and length, exactly as ``measure`` does at one length.
A prefix-LM model (bidirectional inside its first ``prefix_len`` tokens) is measured only at
lengths ``T' >= prefix_len``, where the prefix is complete and the equality still holds; sigmoid
attention with ``b = -log n`` (a bias set by the length of the pass) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.measure import DEFAULT_EPS_GRID, _model_device, run_hooked, sink_hooks, slot_from_rows, validate_tokens
from sinkinterp.metrics import _alpha_bias_by_length, _alpha_by_length, check_eps

__all__ = ["LengthReport", "measure_lengths", "default_table_lengths"]


def default_table_lengths(seq_len: int, smallest: int = 8) -> list[int]:
    """Powers of two from ``smallest`` below ``seq_len``, then ``seq_len`` itself."""
    out = []
    t = smallest
    while t < seq_len:
        out.append(t)
        t *= 2
    return out + [seq_len]


@dataclass
class LengthReport:
    """Sink statistics of the length-T' prefixes, for every T' in ``lengths`` (2..T by default).

    ``sink_pct[i, k]`` is Sink_{k+1}^eps (percent) of the prefixes of length ``lengths[i]``; NaN where
    the prefix does not reach key k+1. ``alpha1[i]`` is alpha_1 per layer and head averaged over
    sequences, ``head_sink_rate[i]`` the percent of sequences in which each head sinks on token 1,
    ``sink1_by_eps[i]`` the eps sweep of Sink_1. ``massive_ratio[i]`` is ||h_1|| / mean_{t=2..T'} ||h_t||
    per residual hook (L + 1 of them).
    """

    eps: float
    seq_len: int
    num_seqs: int
    k_max: int
    n_layers: int
    n_heads: int
    lengths: np.ndarray  # [n]
    sink_pct: np.ndarray  # [n, k_max]
    alpha1: np.ndarray  # [n, L, H]
    head_sink_rate: np.ndarray  # [n, L, H]
    eps_grid: np.ndarray  # [E]
    sink1_by_eps: np.ndarray  # [n, E]
    sink_bias_pct: np.ndarray | None = None  # [n]
    alpha_bias: np.ndarray | None = None  # [n, L, H]
    massive_ratio: np.ndarray | None = None  # [n, L + 1]
    min_length: int = 2  # the shortest length allowed (prefix_len for a longer prefix LM)

    def row(self, length: int) -> int:
        """Index of ``length`` in ``lengths``."""
        hits = np.flatnonzero(self.lengths == int(length))
        if not hits.size:
            raise ValueError(f"length {length} was not measured (lengths {self.lengths.min()}..{self.lengths.max()})")
        return int(hits[0])

    def max_massive_ratio(self) -> np.ndarray:
        """The largest massive-activation ratio over residual hooks, per length."""
        if self.massive_ratio is None:
            raise ValueError("this report was made with norms=False")
        return self.massive_ratio.max(axis=1)

    def to_dict(self, table_lengths: Sequence[int] | None = None) -> dict[str, Any]:
        """results.json form: the curves over every length, and per-head maps at ``table_lengths``."""
        def arr(x: np.ndarray | None) -> Any:
            if x is None:
                return None
            x = np.asarray(x, dtype=np.float64).round(8)
            return np.where(np.isnan(x), None, x).tolist()

        rows = [self.row(t) for t in (table_lengths or [])]
        return {
            "eps": self.eps, "seq_len": self.seq_len, "num_seqs": self.num_seqs, "k_max": self.k_max,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "min_length": self.min_length,
            "lengths": self.lengths.tolist(),
            "sink_pct": arr(self.sink_pct),
            "sink_bias_pct": arr(self.sink_bias_pct),
            "mean_alpha1_by_layer": arr(self.alpha1.mean(-1)),
            "max_massive_ratio": None if self.massive_ratio is None else arr(self.max_massive_ratio()),
            "eps_sweep": {"eps": arr(self.eps_grid), "sink1_pct": arr(self.sink1_by_eps)},
            "by_length": {str(int(self.lengths[i])): {
                "alpha": arr(self.alpha1[i]),
                "head_sink_rate": arr(self.head_sink_rate[i]),
                "alpha_bias": None if self.alpha_bias is None else arr(self.alpha_bias[i]),
                "massive_ratio": None if self.massive_ratio is None else arr(self.massive_ratio[i]),
            } for i in rows},
        }


class _LengthAccumulator:
    def __init__(self, *, L: int, H: int, T: int, k_max: int, eps: float, grid: Tensor, lengths: Tensor,
                 has_bias: bool, norms: bool, device: torch.device):
        self.L, self.H, self.T, self.K, self.eps = L, H, T, k_max, eps
        self.grid, self.lengths = grid.to(device), lengths.to(device)
        n = len(lengths)
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        self.counts = torch.zeros(n, k_max, **i64)  # (sequence, head) pairs sinking on key k, over L and H
        self.alpha1_sum = torch.zeros(n, L, H, **f64)
        self.head_counts = torch.zeros(n, L, H, **i64)
        self.grid_counts = torch.zeros(n, len(grid), **i64)
        self.has_bias = has_bias
        if has_bias:
            self.bias_counts = torch.zeros(n, **i64)
            self.bias_sum = torch.zeros(n, L, H, **f64)
        self.norms = norms
        if norms:
            self.resid_pos_sum = torch.zeros(L + 1, T, **f64)
        self.num_seqs = 0
        self.layers_seen: set[int] = set()

    def on_cols(self, layer: int, cols: Float[Tensor, "batch head q n_keys"]) -> None:
        expected = (self.H, self.T, self.K)
        if tuple(cols.shape[1:]) != expected:
            raise RuntimeError(f"blocks.{layer}.attn pattern columns have shape {tuple(cols.shape)}; expected "
                               f"[batch, {', '.join(map(str, expected))}]")
        a = _alpha_by_length(cols.detach(), self.lengths)  # [b, H, n, K]; NaN where T' < k (checked once)
        self.counts += (a > self.eps).sum((0, 1))
        a1 = a[..., 0]  # [b, H, n]
        self.alpha1_sum[:, layer] += a1.sum(0).T.double()
        self.head_counts[:, layer] += (a1 > self.eps).sum(0).T
        self.grid_counts += (a1[..., None] > self.grid).sum((0, 1))
        self.layers_seen.add(layer)

    def on_pattern(self, layer: int, pattern: Float[Tensor, "batch head q k"]) -> None:
        if pattern.shape[-1] != self.T or pattern.shape[1] != self.H:
            raise RuntimeError(
                f"blocks.{layer}.attn.hook_pattern has shape {tuple(pattern.shape)}; expected "
                f"[batch, {self.H}, {self.T}, {self.T}] (a model with extra attention slots must "
                "report them through hook_bias_pattern, see docs/hook-contract.md)")
        self.on_cols(layer, pattern[..., :self.K])

    def on_bias(self, layer: int, bias_pattern: Float[Tensor, "batch head q"]) -> None:
        a = _alpha_bias_by_length(bias_pattern.detach(), self.lengths)  # [b, H, n]
        self.bias_sum[:, layer] += a.sum(0).T.double()
        self.bias_counts += (a > self.eps).sum((0, 1))

    def on_resid(self, index: int, resid: Float[Tensor, "batch pos d_model"]) -> None:
        self.resid_pos_sum[index] += resid.detach().double().norm(dim=-1).sum(0)

    def finish(self, min_length: int) -> LengthReport:
        missing = sorted(set(range(self.L)) - self.layers_seen)
        if missing:
            raise RuntimeError(f"hook_pattern never fired for layers {missing}: the model does not follow "
                               "the hook-name contract (docs/hook-contract.md)")
        n, total = self.num_seqs, self.num_seqs * self.L * self.H
        cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
        lengths = cpu(self.lengths)
        sink = cpu(self.counts.double() / total * 100.0)
        sink[lengths[:, None] < np.arange(1, self.K + 1)[None, :]] = np.nan  # the prefix has no key k
        report = LengthReport(
            eps=self.eps, seq_len=self.T, num_seqs=n, k_max=self.K, n_layers=self.L, n_heads=self.H,
            lengths=lengths, sink_pct=sink, alpha1=cpu(self.alpha1_sum / n),
            head_sink_rate=cpu(self.head_counts.double() / n * 100.0), eps_grid=cpu(self.grid),
            sink1_by_eps=cpu(self.grid_counts.double() / total * 100.0), min_length=min_length,
        )
        if self.has_bias:
            report.sink_bias_pct = cpu(self.bias_counts.double() / total * 100.0)
            report.alpha_bias = cpu(self.bias_sum / n)
        if self.norms:
            resid = cpu(self.resid_pos_sum / n)  # [L+1, T]: mean norm by position
            rest = np.cumsum(resid[:, 1:], axis=1) / np.arange(1, self.T)  # mean over 2..T'
            ratio = resid[:, :1] / np.maximum(rest[:, lengths - 2], 1e-30)  # [L+1, n]; T' >= 2
            report.massive_ratio = ratio.T
        return report


def measure_lengths(
    model: Any,
    tokens: Any,
    *,
    lengths: Sequence[int] | None = None,
    eps: float = 0.3,
    k_max: int | None = None,
    eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
    batch_size: int = 8,
    norms: bool = True,
    progress: bool = False,
) -> LengthReport:
    """Sink_k^eps, alpha_1, Sink_* and the massive-activation ratio of the length-T' prefixes of
    ``tokens`` for every T' in ``lengths`` (default: every length the model allows, 2..T), from
    one forward pass per batch at the full length T.

    Args:
        model: any model following docs/hook-contract.md whose attention is causal (a sinkinterp
            prefix LM is measured at lengths >= its prefix_len only).
        tokens: token ids [num_seqs, T], used exactly as given.
        lengths: prefix lengths to report, each in [2, T] (sorted and de-duplicated here).
        eps, eps_grid, batch_size, norms, progress: as in ``measure``.
        k_max: Sink_k for k = 1..k_max (default min(T, 10)).

    On a sinkinterp model the pattern's first k_max columns come from the read-only
    ``hook_pattern_cols``, so attention stays in the fused kernels.
    """
    dims = tl_adapter.model_dims(model)
    eps = check_eps(eps)
    grid = sorted({check_eps(e, "eps_grid entry") for e in eps_grid} | {eps})
    tokens = validate_tokens(tokens, dims["d_vocab"])
    T = tokens.shape[1]
    if k_max is None:
        k_max = min(T, 10)
    if isinstance(k_max, bool) or not isinstance(k_max, int) or not 1 <= k_max <= T:
        raise ValueError(f"k_max must be an integer in [1, seq_len={T}], got {k_max!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dims["n_ctx"] and T > dims["n_ctx"]:
        raise ValueError(f"seq_len {T} exceeds the model's context length n_ctx={dims['n_ctx']}")
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "sigmoid_bias", None) == "-log n":
        raise ValueError("model: sigmoid_bias='-log n' sets every score's bias from the length of the pass, so "
                         "the prefixes of one pass are not length-T' measurements; measure each length with "
                         "`measure` instead")
    prefix = int(getattr(cfg, "prefix_len", 0) or 0)
    min_length = max(2, prefix)  # as in ``measure``: the metric needs queries after token 1
    if lengths is None:
        lengths = range(min_length, T + 1)
    try:
        chosen = sorted({int(t) for t in lengths})
    except (TypeError, ValueError):
        raise ValueError(f"lengths must be integers, got {lengths!r}") from None
    if not chosen or chosen[0] < min_length or chosen[-1] > T:
        why = f" (prefix_len={prefix}: shorter prefixes cut the bidirectional prefix)" if prefix > 1 else ""
        raise ValueError(f"lengths must lie in [{min_length}, seq_len={T}]{why}, got {list(lengths)!r}")
    L, H = dims["n_layers"], dims["n_heads"]
    names = set(tl_adapter.hook_names(model))
    use_cols = "blocks.0.attn.hook_pattern_cols" in names and hasattr(model, "pattern_cols")
    rows_slot = slot_from_rows(model)
    has_bias = "blocks.0.attn.hook_bias_pattern" in names or bool(rows_slot)
    device = _model_device(model)
    acc = _LengthAccumulator(L=L, H=H, T=T, k_max=k_max, eps=eps, grid=torch.tensor(grid, dtype=torch.float64),
                             lengths=torch.tensor(chosen), has_bias=has_bias, norms=norms, device=device)
    on_pattern = acc.on_cols if use_cols else acc.on_pattern
    hooks = sink_hooks(L, use_cols=use_cols, on_pattern=on_pattern, on_bias=acc.on_bias if has_bias else None,
                       on_resid=acc.on_resid if norms else None, rows_slot=rows_slot)
    run_hooked(model, tokens, hooks, acc, batch_size=batch_size, names=names,
               pattern_cols=k_max if use_cols else None, progress="lengths" if progress else None)
    return acc.finish(min_length)
