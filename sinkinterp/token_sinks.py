"""Sinks past the first position, by token: which tokens draw a head's attention wherever they stand.

``measure`` reports Sink_k by key *position*. Pretrained models are known to sink on some tokens
besides the first (delimiters such as "\\n" or "." in the massive-activation literature), and those
show up at varying positions, so a per-position table smears them out. ``token_sinks(model, tokens)``
takes the paper's alpha_k of every (sequence, head, key position) in one streaming pass and pools it
by the token id at that position:

* ``sink_rate``: the percent of (occurrence, head) pairs with alpha_k > eps, the paper's Sink metric
  with occurrences of a token in place of a fixed position;
* ``expected_rate``: the same rate predicted by position alone (the mean, over the token's
  occurrences, of the rate of *all* tokens at that position), so a token that merely stands early is
  not mistaken for a sink; ``lift = sink_rate / expected_rate``;
* ``mean_alpha`` (over occurrences and heads), the head that sinks on it most often, and the
  residual-stream norm at its occurrences over the mean norm at all eligible positions, per residual
  hook (``resid_ratio``, the massive-activation ratio of this token).

Only key positions ``skip .. T - min_queries`` (0-based) are pooled: alpha_k averages the T - k + 1
queries that see key k, so the last keys would be averages over a handful of queries (alpha_T is
one query's attention on itself). ``first_occurrence=True`` pools only each token's first
occurrence in its sequence (massive activations are reported on the first delimiter of a sequence,
not on every one). The first token's own Sink_1 and massive ratio come from the same pass for
comparison. Memory: O(vocabulary x residual hooks) plus one (token, layer, head) counter per
pair that ever sank, never a T x T map across batches. On a sinkinterp model alpha comes from the
read-only ``hook_pattern_colsum`` (its fused kernels stay); on other models from ``hook_pattern``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.measure import _model_device, run_hooked, sink_hooks, validate_tokens
from sinkinterp.metrics import alpha_from_colsums, alpha_from_pattern, check_eps

__all__ = ["DEFAULT_MIN_QUERIES", "TokenSinkReport", "first_in_sequence", "token_sinks"]

DEFAULT_MIN_QUERIES = 16  # queries a key position needs (at most T - skip) to be pooled


@dataclass
class TokenSinkReport:
    """Per-token sink statistics over the pooled key positions (module docstring).

    Arrays over tokens are aligned with ``token_ids`` (every id that occurred at a pooled position,
    ascending). ``top_head[i]`` is (layer, head) of the head that sank most often on token i (-1, -1
    when none did), ``top_head_rate[i]`` the percent of its occurrences in which that head sank.
    ``resid_ratio[j, i]`` is residual hook j's mean norm at token i's occurrences over the mean norm at
    all pooled positions (hooks: every resid_pre, then the last resid_post); ``first_resid_ratio[j]``
    the first token's. ``rate_by_position[p]`` is the percent of heads with alpha > eps at pooled key
    position ``positions[p]`` (0-based), over all tokens.
    """

    eps: float
    seq_len: int
    num_seqs: int
    n_layers: int
    n_heads: int
    skip: int
    min_queries: int
    first_occurrence: bool  # True: only each token's first occurrence in its sequence was pooled
    positions: np.ndarray  # [P] pooled key positions, 0-based
    token_ids: np.ndarray  # [V']
    count: np.ndarray  # [V'] occurrences at pooled positions
    mean_alpha: np.ndarray  # [V']
    sink_rate: np.ndarray  # [V'] percent of (occurrence, head) pairs with alpha > eps
    expected_rate: np.ndarray  # [V'] the rate its positions predict
    top_head: np.ndarray  # [V', 2]
    top_head_rate: np.ndarray  # [V']
    rate_by_position: np.ndarray  # [P]
    sink1_pct: float  # Sink_1^eps of the first token, same pass
    alpha1: np.ndarray  # [L, H] alpha_1 averaged over sequences
    resid_ratio: np.ndarray | None = None  # [L + 1, V']
    first_resid_ratio: np.ndarray | None = None  # [L + 1]

    @property
    def pooled_rate(self) -> float:
        """The sink rate over every pooled (occurrence, head) pair, all tokens together."""
        return float(np.sum(self.sink_rate * self.count) / max(1, int(self.count.sum())))

    @property
    def lift(self) -> np.ndarray:
        """sink_rate / expected_rate (NaN where the positions predict no sinking at all)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.expected_rate > 0, self.sink_rate / self.expected_rate, np.nan)

    def max_resid_ratio(self) -> np.ndarray | None:
        """The largest residual-norm ratio over hooks, per token (None without norms)."""
        return None if self.resid_ratio is None else self.resid_ratio.max(axis=0)

    def top(self, n: int = 20, min_count: int = 5, by: str = "sink_rate") -> np.ndarray:
        """Indices (into the per-token arrays) of the ``n`` tokens with the largest ``by``
        (``sink_rate``, ``mean_alpha``, ``lift`` or ``count``) among those seen at least
        ``min_count`` times; ties broken by count, then token id."""
        keys = {"sink_rate": self.sink_rate, "mean_alpha": self.mean_alpha, "lift": self.lift,
                "count": self.count.astype(np.float64)}
        if by not in keys:
            raise ValueError(f"by must be one of {', '.join(keys)}, got {by!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
        value = np.nan_to_num(keys[by], nan=-np.inf)
        idx = np.flatnonzero(self.count >= min_count)
        order = np.lexsort((self.token_ids[idx], -self.count[idx], -value[idx]))
        return idx[order][:n]

    def table(self, decode: Callable[[int], str] | None = None, n: int = 20, min_count: int = 5,
              by: str = "sink_rate") -> str:
        """The top tokens as text, one per line, with the first token and the pooled rate for scale."""
        show = decode or str
        ratio = self.max_resid_ratio()
        header = (f"{'token':<16} {'id':>6} {'count':>6} {'Sink %':>7} {'by pos.':>7} {'lift':>6} "
                  f"{'mean a':>7} {'top head':>13} {'max |h|/mean':>12}")
        lines = [header]
        for i in self.top(n, min_count, by):
            text = repr(show(int(self.token_ids[i])))[:16]
            layer, head = (int(v) for v in self.top_head[i])
            top = f"L{layer}H{head} {self.top_head_rate[i]:4.0f}%" if layer >= 0 else "-"
            r = f"{ratio[i]:12.2f}" if ratio is not None else f"{'-':>12}"
            lines.append(f"{text:<16} {int(self.token_ids[i]):>6} {int(self.count[i]):>6} {self.sink_rate[i]:7.2f} "
                         f"{self.expected_rate[i]:7.2f} {self.lift[i]:6.2f} {self.mean_alpha[i]:7.4f} {top:>13} {r}")
        first = f"{self.first_resid_ratio.max():12.2f}" if self.first_resid_ratio is not None else f"{'-':>12}"
        lines.append(f"{'(first token)':<16} {'':>6} {self.num_seqs:>6} {self.sink1_pct:7.2f} {'':>7} {'':>6} "
                     f"{self.alpha1.mean():7.4f} {'':>13} {first}")
        lines.append(f"Sink % = share of (occurrence, head) pairs with alpha > {self.eps} at key positions "
                     f"{int(self.positions[0]) + 1}..{int(self.positions[-1]) + 1} (1-based; each seen by >= "
                     f"{self.min_queries} queries{'; first occurrences only' if self.first_occurrence else ''}); "
                     f"all tokens there: {self.pooled_rate:.2f}%; 'by pos.' = the rate "
                     f"the token's positions predict; tokens seen >= {min_count} times, by {by}")
        return "\n".join(lines)

    def to_dict(self, decode: Callable[[int], str] | None = None) -> dict[str, Any]:
        def arr(x: np.ndarray | None) -> Any:
            if x is None:
                return None
            x = np.asarray(x, dtype=np.float64).round(8)
            return np.where(np.isnan(x), None, x).tolist()

        out: dict[str, Any] = {
            "eps": self.eps, "seq_len": self.seq_len, "num_seqs": self.num_seqs, "n_layers": self.n_layers,
            "n_heads": self.n_heads, "skip": self.skip, "min_queries": self.min_queries,
            "first_occurrence": self.first_occurrence,
            "positions": [int(self.positions[0]), int(self.positions[-1])],
            "pooled_rate": round(self.pooled_rate, 8), "sink1_pct": round(self.sink1_pct, 8),
            "alpha1": arr(self.alpha1), "first_resid_ratio": arr(self.first_resid_ratio),
            "rate_by_position": arr(self.rate_by_position),
            "tokens": {
                "id": self.token_ids.tolist(), "count": self.count.tolist(), "sink_rate": arr(self.sink_rate),
                "expected_rate": arr(self.expected_rate), "lift": arr(self.lift), "mean_alpha": arr(self.mean_alpha),
                "top_head": self.top_head.tolist(), "top_head_rate": arr(self.top_head_rate),
                "max_resid_ratio": arr(self.max_resid_ratio()),
                "max_resid_hook": None if self.resid_ratio is None else self.resid_ratio.argmax(axis=0).tolist(),
            },
        }
        if decode is not None:
            out["tokens"]["text"] = [decode(int(t)) for t in self.token_ids]
        return out


class _TokenAccumulator:
    def __init__(self, *, tokens: Tensor, L: int, H: int, V: int, eps: float, skip: int, min_queries: int,
                 norms: bool, device: torch.device, first_occurrence: bool = False):
        T = tokens.shape[1]
        self.tokens = tokens.to(device)
        self.L, self.H, self.T, self.V, self.eps = L, H, T, V, eps
        self.lo, self.hi = skip, T - min_queries + 1  # pooled key positions [lo, hi), 0-based
        # the occurrences pooled by token: all, or each token's first in its sequence (positions 0..T-1)
        self.include = (first_in_sequence(tokens) if first_occurrence else torch.ones_like(tokens, dtype=torch.bool))
        self.include = self.include[:, self.lo:self.hi].to(device)
        f64 = {"dtype": torch.float64, "device": device}
        i64 = {"dtype": torch.int64, "device": device}
        self.alpha_sum = torch.zeros(V, **f64)  # over occurrences, layers and heads
        self.events = torch.zeros(V, **i64)  # (occurrence, layer, head) with alpha > eps
        self.pos_events = torch.zeros(self.hi - self.lo, **i64)
        self.head_events: dict[int, int] = {}  # token * L * H + layer * H + head -> occurrences sinking
        self.alpha1_sum = torch.zeros(L, H, **f64)
        self.first_events = torch.zeros((), **i64)
        self.norms = norms
        if norms:
            self.tok_norm = torch.zeros(L + 1, V, **f64)
            self.all_norm = torch.zeros(L + 1, **f64)
            self.first_norm = torch.zeros(L + 1, **f64)
        self.num_seqs = 0
        self.layers_seen: set[int] = set()

    def _batch_tokens(self, b: int) -> Tensor:
        return self.tokens[self.num_seqs:self.num_seqs + b, self.lo:self.hi]  # [b, P]

    def _batch_include(self, b: int) -> Tensor:
        return self.include[self.num_seqs:self.num_seqs + b]  # [b, P]

    def on_pattern(self, layer: int, pattern: Float[Tensor, "batch head q k"]) -> None:
        if pattern.shape[-1] != self.T or pattern.shape[1] != self.H:
            raise RuntimeError(
                f"blocks.{layer}.attn.hook_pattern has shape {tuple(pattern.shape)}; expected "
                f"[batch, {self.H}, {self.T}, {self.T}] (see docs/hook-contract.md)")
        self._add_alpha(layer, alpha_from_pattern(pattern.detach()).double())

    def on_colsum(self, layer: int, colsum: Float[Tensor, "batch head k"]) -> None:
        """A sinkinterp model's read-only hook_pattern_colsum: alpha_k = colsum_k / (T - k + 1)."""
        if tuple(colsum.shape[1:]) != (self.H, self.T):
            raise RuntimeError(f"blocks.{layer}.attn.hook_pattern_colsum has shape {tuple(colsum.shape)}; expected "
                               f"[batch, {self.H}, {self.T}]")
        self._add_alpha(layer, alpha_from_colsums(colsum.detach()))

    def _add_alpha(self, layer: int, alpha: Float[Tensor, "batch head k"]) -> None:
        b = alpha.shape[0]
        self.alpha1_sum[layer] += alpha[:, :, 0].sum(0)
        self.first_events += (alpha[:, :, 0] > self.eps).sum()
        a = alpha[:, :, self.lo:self.hi]  # [b, H, P]
        self.pos_events += (a > self.eps).sum((0, 1))  # every token: the positional baseline
        inc = self._batch_include(b)
        tok = self._batch_tokens(b)[inc]  # [m] the pooled occurrences
        a = a.permute(0, 2, 1)[inc]  # [m, H]
        sink = a > self.eps
        self.alpha_sum.index_add_(0, tok, a.sum(1))
        self.events.index_add_(0, tok, sink.sum(1))
        occ, head = sink.nonzero(as_tuple=True)
        if occ.numel():
            keys = tok[occ] * (self.L * self.H) + layer * self.H + head
            uniq, counts = keys.unique(return_counts=True)
            for key, c in zip(uniq.tolist(), counts.tolist()):
                self.head_events[key] = self.head_events.get(key, 0) + c
        self.layers_seen.add(layer)

    def on_resid(self, index: int, resid: Float[Tensor, "batch pos d_model"]) -> None:
        norm = resid.detach().double().norm(dim=-1)  # [b, T]
        pooled = norm[:, self.lo:self.hi]
        inc = self._batch_include(norm.shape[0])
        self.tok_norm[index].index_add_(0, self._batch_tokens(norm.shape[0])[inc], pooled[inc])
        self.all_norm[index] += pooled.sum()  # every token: the norm the ratio is taken against
        self.first_norm[index] += norm[:, 0].sum()

    def finish(self, skip: int, min_queries: int, first_occurrence: bool) -> TokenSinkReport:
        missing = sorted(set(range(self.L)) - self.layers_seen)
        if missing:
            raise RuntimeError(f"hook_pattern never fired for layers {missing}: the model does not follow "
                               "the hook-name contract (docs/hook-contract.md)")
        n, LH = self.num_seqs, self.L * self.H
        inc = self.include[:n].cpu()
        pooled = self.tokens[:n, self.lo:self.hi].cpu()[inc]  # [m] the pooled occurrences
        count_all = torch.bincount(pooled, minlength=self.V)
        ids = torch.nonzero(count_all).squeeze(1)
        count = count_all[ids].double()
        P = self.hi - self.lo
        pos_rate = self.pos_events.cpu().double() / (n * LH)  # [P] share of heads sinking by position
        expected = torch.zeros(self.V, dtype=torch.float64).index_add_(0, pooled, pos_rate.expand(n, P)[inc])
        best = torch.zeros(self.V, dtype=torch.int64)
        best_key = torch.full((self.V,), -1, dtype=torch.int64)
        for key, c in sorted(self.head_events.items()):
            tok = key // LH
            if c > best[tok]:
                best[tok], best_key[tok] = c, key % LH
        key = best_key[ids]
        top_head = torch.stack([torch.where(key >= 0, key // self.H, -1), torch.where(key >= 0, key % self.H, -1)], 1)
        report = TokenSinkReport(
            eps=self.eps, seq_len=self.T, num_seqs=n, n_layers=self.L, n_heads=self.H, skip=skip,
            min_queries=min_queries, first_occurrence=first_occurrence, positions=np.arange(self.lo, self.hi),
            token_ids=ids.numpy(),
            count=count_all[ids].numpy(),
            mean_alpha=(self.alpha_sum.cpu()[ids] / (count * LH)).numpy(),
            sink_rate=(self.events.cpu()[ids].double() / (count * LH) * 100.0).numpy(),
            expected_rate=(expected[ids] / count * 100.0).numpy(),
            top_head=top_head.numpy(), top_head_rate=(best[ids].double() / count * 100.0).numpy(),
            rate_by_position=(pos_rate * 100.0).numpy(),
            sink1_pct=float(self.first_events.cpu().double() / (n * LH) * 100.0),
            alpha1=(self.alpha1_sum.cpu() / n).numpy(),
        )
        if self.norms:
            mean_all = (self.all_norm.cpu() / (n * P)).clamp_min(1e-30)[:, None]
            report.resid_ratio = (self.tok_norm.cpu()[:, ids] / count / mean_all).numpy()
            report.first_resid_ratio = (self.first_norm.cpu() / n / mean_all[:, 0]).numpy()
        return report


def token_sinks(
    model: Any,
    tokens: Any,
    *,
    eps: float = 0.3,
    skip: int = 1,
    min_queries: int | None = None,
    first_occurrence: bool = False,
    batch_size: int = 8,
    norms: bool = True,
    progress: bool = False,
) -> TokenSinkReport:
    """Pool the paper's alpha_k by the token at key position k (module docstring).

    Args:
        model: any model following docs/hook-contract.md.
        tokens: token ids [num_seqs, T], used exactly as given.
        eps: the sink threshold in (0, 1), as in ``measure``.
        skip: key positions before this one (0-based) are left out; 1 leaves out only the first token.
        min_queries: a key position is pooled only when at least this many queries see it (positions
            ``skip .. T - min_queries``); default min(16, T - skip). Must lie in [1, T - skip].
        first_occurrence: pool only each token's first occurrence in its sequence (earlier
            positions, the skipped ones included, count as occurrences); the positional baseline
            (``rate_by_position``) and the norm the ratios divide by stay over all tokens.
        batch_size, norms, progress: as in ``measure``.
    """
    dims = tl_adapter.model_dims(model)
    eps = check_eps(eps)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    T = tokens.shape[1]
    if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip <= T - 1:
        raise ValueError(f"skip must be an integer in [0, seq_len - 1 = {T - 1}], got {skip!r}")
    if min_queries is None:
        min_queries = min(DEFAULT_MIN_QUERIES, T - skip)
    if isinstance(min_queries, bool) or not isinstance(min_queries, int) or not 1 <= min_queries <= T - skip:
        raise ValueError(f"min_queries must be an integer in [1, seq_len - skip = {T - skip}] (a pooled key "
                         f"position needs that many queries after it), got {min_queries!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dims["n_ctx"] and T > dims["n_ctx"]:
        raise ValueError(f"seq_len {T} exceeds the model's context length n_ctx={dims['n_ctx']}")
    L, H = dims["n_layers"], dims["n_heads"]
    names = set(tl_adapter.hook_names(model))
    acc = _TokenAccumulator(tokens=tokens, L=L, H=H, V=dims["d_vocab"], eps=eps, skip=skip, min_queries=min_queries,
                            norms=norms, device=_model_device(model), first_occurrence=bool(first_occurrence))
    hooks = sink_hooks(L, use_cols=False, on_pattern=acc.on_pattern, on_resid=acc.on_resid if norms else None)
    if "blocks.0.attn.hook_pattern_colsum" in names and hasattr(model, "pattern_cols"):
        # a sinkinterp model: every key's column sum without a T x T pattern (its fused kernels stay)
        hooks = [h for h in hooks if not h[0].endswith(".hook_pattern")]
        hooks += [(f"blocks.{l}.attn.hook_pattern_colsum", lambda x, hook, l=l: acc.on_colsum(l, x)) for l in range(L)]
    run_hooked(model, tokens, hooks, acc, batch_size=batch_size, names=names,
               progress="tokens" if progress else None)
    return acc.finish(skip, min_queries, bool(first_occurrence))


def first_in_sequence(tokens: Tensor) -> Tensor:
    """[N, T] bool: True where a token occurs for the first time in its sequence."""
    order = torch.sort(tokens, dim=1, stable=True)  # equal ids stay in position order
    first = torch.ones_like(tokens, dtype=torch.bool)
    first[:, 1:] = order.values[:, 1:] != order.values[:, :-1]
    out = torch.zeros_like(first)
    return out.scatter_(1, order.indices, first)
