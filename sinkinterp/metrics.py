"""The paper's sink metric, as pure tensor functions (no model, no hooks).

Definitions (Gu et al. 2025, section 1 of ../shared/reference/attention-sink-paper.md):

* ``alpha_k^{l,h} = mean_{t=k..T} A^{l,h}[t, k]``: the importance of key position ``k`` (1-indexed),
  averaged over the queries that can see it. For ``k = 1`` that is all ``T`` queries.
* A head sinks on ``k`` when ``alpha_k > eps`` (strict).
* ``Sink_k^eps`` = percentage of the ``L * H`` heads that sink on ``k``, thresholded per sequence and
  then averaged over sequences.

Tensors here use 0-based positions: the paper's ``k = 1`` is index 0.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "alpha_from_pattern",
    "alpha_from_columns",
    "alpha_from_colsums",
    "alpha_bias_from_pattern",
    "alpha_by_length",
    "alpha_bias_by_length",
    "sink_rate",
    "proxy_scores",
    "check_eps",
]


def check_eps(eps: object, name: str = "eps") -> float:
    """Validate a threshold: a number strictly between 0 and 1."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {eps!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {eps!r}")
    return value


def _accum_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_ALPHA_BLOCK = 256  # query rows per block of alpha_from_pattern for long sequences


def alpha_from_pattern(
    pattern: Float[Tensor, "*batch query_pos key_pos"],
) -> Float[Tensor, "*batch key_pos"]:
    """alpha_k for every key position k: the mean of ``pattern[t, k]`` over queries ``t >= k``.

    Rows are queries, columns keys (TransformerLens' ``hook_pattern`` layout). Entries above the
    diagonal (``t < k``) are excluded even when non-zero (prefix-LM models attend bidirectionally
    inside the prefix), exactly as the paper averages over ``t = k..T``.
    """
    if pattern.ndim < 2 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(
            f"pattern must have shape [..., T, T] (queries x keys), got {tuple(pattern.shape)}"
        )
    t = pattern.shape[-1]
    if t <= _ALPHA_BLOCK:
        return alpha_from_columns(pattern)
    # By blocks of query rows: the part left of the block's diagonal square is summed as a view
    # (no copy, nothing above the diagonal is read), only the square itself is masked. For long
    # sequences this reads half the pattern once instead of copying all of it.
    dtype = _accum_dtype(pattern)
    col_sums = torch.zeros((*pattern.shape[:-2], t), dtype=dtype, device=pattern.device)
    for a in range(0, t, _ALPHA_BLOCK):
        b = min(a + _ALPHA_BLOCK, t)
        if a:
            col_sums[..., :a] += pattern[..., a:b, :a].sum(dim=-2, dtype=dtype)
        col_sums[..., a:b] += torch.tril(pattern[..., a:b, a:b]).to(dtype).sum(dim=-2)
    n_queries = torch.arange(t, 0, -1, device=pattern.device, dtype=dtype)  # T - k queries see k
    return col_sums / n_queries


def alpha_from_columns(
    cols: Float[Tensor, "*batch query_pos n_keys"],
) -> Float[Tensor, "*batch n_keys"]:
    """alpha_k for the first ``n_keys`` key positions from those columns of the pattern only
    (``pattern[..., :n_keys]``, e.g. a model's ``hook_pattern_cols``): the mean of ``cols[t, k]`` over
    queries ``t >= k``. Equal to ``alpha_from_pattern(pattern)[..., :n_keys]``."""
    if cols.ndim < 2 or cols.shape[-1] > cols.shape[-2] or cols.shape[-1] < 1:
        raise ValueError(
            f"cols must have shape [..., T, K] with 1 <= K <= T (queries x first keys), got {tuple(cols.shape)}"
        )
    t, n = cols.shape[-2:]
    dtype = _accum_dtype(cols)
    visible = torch.ones(t, n, dtype=torch.bool, device=cols.device).tril()  # [t, k]: t >= k
    col_sums = cols.to(dtype).masked_fill(~visible, 0.0).sum(dim=-2)
    n_queries = torch.arange(t, t - n, -1, device=cols.device, dtype=dtype)  # T - k queries see k
    return col_sums / n_queries


def alpha_from_colsums(colsums: Float[Tensor, "*batch key_pos"], name: str = "colsums") -> Float[Tensor, "*batch key_pos"]:
    """alpha_k for every key from the pattern's column sums over queries t >= k (a sinkinterp
    model's read-only ``hook_pattern_colsum``): colsum_k / (T - k + 1), in float64."""
    if colsums.ndim < 1 or colsums.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., T] (one sum per key), got {tuple(colsums.shape)}")
    t = colsums.shape[-1]
    return colsums.double() / torch.arange(t, 0, -1, device=colsums.device, dtype=torch.float64)


def alpha_bias_from_pattern(
    bias_pattern: Float[Tensor, "*batch query_pos"],
) -> Float[Tensor, "*batch"]:
    """alpha_* of a bias slot (k*, sink token, sink logit): the mean over all T queries of the
    weight each puts on the slot (every query sees the slot)."""
    return bias_pattern.to(_accum_dtype(bias_pattern)).mean(dim=-1)


def _check_lengths(lengths: object, t: int) -> Tensor:
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1 or lengths.numel() < 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a non-empty 1-D integer sequence, got {lengths!r}")
    if int(lengths.min()) < 1 or int(lengths.max()) > t:
        raise ValueError(f"lengths must lie in [1, T={t}], got {lengths.tolist()}")
    return lengths.to(torch.int64)


def alpha_by_length(
    cols: Float[Tensor, "*batch query_pos n_keys"],
    lengths: object,
) -> Float[Tensor, "*batch n_lengths n_keys"]:
    """alpha_k of the length-``T'`` prefix of each sequence, for every ``T'`` in ``lengths``, from one
    causal pass over the full ``T`` tokens: ``mean_{t=k..T'} cols[t, k]``.

    In a causal model the first ``T'`` rows of the pattern do not depend on the tokens after them,
    so this equals ``alpha_from_columns(cols[..., :T', :])`` for each ``T'``, computed with one
    cumulative sum. Keys the prefix does not reach (``k > T'``) are NaN.
    """
    if cols.ndim < 2 or cols.shape[-1] > cols.shape[-2] or cols.shape[-1] < 1:
        raise ValueError(
            f"cols must have shape [..., T, K] with 1 <= K <= T (queries x first keys), got {tuple(cols.shape)}"
        )
    return _alpha_by_length(cols, _check_lengths(lengths, cols.shape[-2]).to(cols.device))


def _alpha_by_length(cols: Tensor, lengths: Tensor) -> Tensor:
    """``alpha_by_length`` for ``lengths`` already checked and on ``cols``' device (no host sync: the
    form the measurement hooks call once per layer and batch)."""
    t, n = cols.shape[-2:]
    dtype = _accum_dtype(cols)
    visible = torch.ones(t, n, dtype=torch.bool, device=cols.device).tril()  # [t, k]: t >= k
    csum = cols.to(dtype).masked_fill(~visible, 0.0).cumsum(dim=-2)  # [..., T, K]
    sums = csum.index_select(-2, lengths - 1)  # [..., n_lengths, K]
    n_queries = lengths.to(dtype)[:, None] - torch.arange(n, device=cols.device, dtype=dtype)  # T' - k + 1
    return torch.where(n_queries > 0, sums / n_queries.clamp_min(1), torch.nan)


def alpha_bias_by_length(
    bias_pattern: Float[Tensor, "*batch query_pos"],
    lengths: object,
) -> Float[Tensor, "*batch n_lengths"]:
    """alpha_* of a bias slot for the length-``T'`` prefix of each sequence, for every ``T'`` in
    ``lengths``: the mean weight of the first ``T'`` queries on the slot."""
    if bias_pattern.ndim < 1:
        raise ValueError(f"bias_pattern must have shape [..., T], got {tuple(bias_pattern.shape)}")
    return _alpha_bias_by_length(bias_pattern, _check_lengths(lengths, bias_pattern.shape[-1]).to(bias_pattern.device))


def _alpha_bias_by_length(bias_pattern: Tensor, lengths: Tensor) -> Tensor:
    """``alpha_bias_by_length`` for ``lengths`` already checked and on the pattern's device."""
    dtype = _accum_dtype(bias_pattern)
    csum = bias_pattern.to(dtype).cumsum(dim=-1)
    return csum.index_select(-1, lengths - 1) / lengths.to(dtype)


def sink_rate(alpha: Float[Tensor, "seq *heads"], eps: object) -> float:
    """Sink^eps in percent: threshold ``alpha > eps`` per sequence and head, then average.

    ``alpha`` holds one value per sequence (first dimension) and head (remaining dimensions, e.g.
    ``[N, L, H]``). Every sequence has the same number of heads, so the mean of per-sequence
    percentages equals the fraction of all (sequence, head) pairs above ``eps``.
    """
    eps = check_eps(eps)
    if alpha.ndim < 2:
        raise ValueError(f"alpha must have shape [num_seqs, ...heads], got {tuple(alpha.shape)}")
    per_seq = (alpha > eps).flatten(1).to(torch.float64).mean(dim=1) * 100.0
    return float(per_seq.mean())


def proxy_scores(
    sim: Float[Tensor, "*batch query_pos key_pos"],
    mask: Tensor | None = None,
    absolute: bool = False,
    eps: float = 1e-12,
) -> Float[Tensor, "*batch query_pos key_pos"]:
    """The paper's attention proxy for unnormalized attention: ``sim / sum(sim)`` per query row, or
    ``|sim| / sum|sim|`` with ``absolute=True`` (for kernels whose similarity can be negative, such
    as identity-kernel linear attention).

    ``mask`` (broadcastable boolean, True = visible) zeroes invisible entries first. Rows that are
    all zero stay zero. No host synchronisation: safe inside a compiled forward pass.
    """
    if mask is not None:
        sim = sim.masked_fill(~mask, 0.0)
    if absolute:
        sim = sim.abs()
    denom = sim.sum(dim=-1, keepdim=True)
    return sim / denom.clamp_min(eps)
