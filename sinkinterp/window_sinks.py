"""Sinks past a sliding window: where a windowed layer puts its attention once the first token has left it.

The paper finds that with sliding-window attention "the absolute first token keeps the sink while t <= w".
A query past the window (0-based t >= w) no longer sees token 1, so in a model that runs windowed layers
(Gemma 2 / 3, Mistral, a sinkinterp model with ``window``) the question is what those queries do instead:
form a new sink (on the oldest key in view, as StreamingLLM's rolling cache would suggest, or on some
token such as a delimiter), or spread their weight. ``window_sinks(model, tokens)`` answers it in one
streaming pass over ``blocks.{l}.attn.hook_pattern`` (no T x T map is kept across batches), for every layer,
windowed or global, on the same rows:

* rows are the queries 1 <= t < split ("inside": every layer sees token 1; the query at t = 0 sees only
  itself and is left out) and t >= split ("past"); ``split`` defaults to the smallest window of any layer;
* ``first``: the weight on token 1 (mean over rows and its rate: the percent of (row, head) pairs above eps);
  past the window it is 0 in a windowed layer, by its mask, and the global layers show what they keep;
* ``edge``: the weight on the oldest key in view, t - w + 1 (for a global layer the key at the same distance,
  t - split + 1, as a control);
* ``top``: the largest weight on any one key other than token 1, mean and rate above eps: a row with a sink
  somewhere else than on token 1;
* ``by_distance``: the mean weight at each distance d = t - s, 0 <= d < split (token 1 left out), per layer, over
  the region's rows that have a key at that distance (t - d >= 1);
* the tokens and distances of the keys that take such a sink (``top`` above eps), counted separately for the
  windowed and the global layers, inside and past, and whether each such key is the latest occurrence of its
  token before the query, the earliest one in view (from position 2 on, in the layer's window), or both
  (the only one);
* with ``blocks.{l}.attn.hook_v`` in the model, the value norms: each sink key's ||v|| (its head's key / value
  head) against the mean over all keys 2..T, and token 1's, per kind of layer and region: is the other sink's
  value short, as a sink's value is (the paper: ||v_1|| under 1 against 2-6 in LLaMA3-8B)?

All rates are per (row, head) pair, so they are per-query readings, not the paper's alpha_k (a mean over the
queries that see key k, thresholded per sequence): a key past the window has no fixed position to average over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.measure import _model_device, run_hooked, validate_tokens
from sinkinterp.metrics import check_eps

__all__ = ["REGIONS", "WindowSinkReport", "drop_token_keys", "window_sinks"]

REGIONS = ("inside", "past")  # rows 1 <= t < split, rows t >= split
ORDER = ("latest", "earliest", "only")  # which occurrence of its token a sink key is
KINDS = ("windowed", "global")


@dataclass
class WindowSinkReport:
    """Per-layer, per-head readings of rows inside and past the split (module docstring).

    Arrays ``[2, L, H]`` are indexed by region (``REGIONS``), layer and head: ``first`` / ``edge`` / ``top`` are
    mean weights over the region's rows, ``*_rate`` the percent of (row, head) pairs above eps. ``by_distance``
    is ``[2, L, split]``, the mean weight at distance d over heads and the rows with a key there (t - d >= 1). ``sink_tokens[kind][region]`` maps a
    token id to the number of (row, head) pairs whose largest weight off token 1 (above eps) fell on that token;
    ``sink_distance[kind][region]`` counts the same pairs by the key's distance t - s, ``sink_order[kind][region]``
    those whose key is the ``latest`` occurrence of its token up to the query, the ``earliest`` in view (keys 2..t,
    within the window), and ``only`` (both).
    """

    eps: float
    seq_len: int
    num_seqs: int
    n_layers: int
    n_heads: int
    split: int
    windows: list[int | None]  # per layer; None: every causal key
    rows: list[int]  # rows per sequence in each region
    first: np.ndarray
    first_rate: np.ndarray
    edge: np.ndarray
    top: np.ndarray
    top_rate: np.ndarray
    by_distance: np.ndarray
    sink_tokens: dict[str, dict[str, dict[int, int]]]
    sink_distance: dict[str, dict[str, np.ndarray]]
    sink_order: dict[str, dict[str, dict[str, int]]]
    # per kind and region: mean ||v|| at the sink keys, over all keys 2..T, at token 1 (None without hook_v)
    sink_value: dict[str, dict[str, dict[str, float]]] | None = None

    def windowed_layers(self) -> list[int]:
        """The layers whose window hides token 1 from the rows past the split."""
        return [l for l, w in enumerate(self.windows) if w is not None and w <= self.split]

    def global_layers(self) -> list[int]:
        return [l for l in range(self.n_layers) if l not in self.windowed_layers()]

    def kind_mean(self, name: str, kind: str, region: str) -> float:
        """``name`` (first, first_rate, edge, top, top_rate) averaged over the heads of one kind of layer."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        layers = self.windowed_layers() if kind == "windowed" else self.global_layers()
        if not layers:
            return float("nan")
        return float(getattr(self, name)[REGIONS.index(region), layers].mean())

    def top_tokens(self, kind: str, region: str, n: int = 10) -> list[tuple[int, int]]:
        """The ``n`` tokens that took the most off-token-1 sinks, as (token id, pairs), most first."""
        counts = self.sink_tokens[kind][region]
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def table(self, decode: Callable[[int], str] | None = None, n_tokens: int = 10) -> str:
        """Per layer: the window and the inside / past readings, then the sink tokens past the split."""
        lines = [(f"rows: inside 1 <= t < {self.split} ({self.rows[0]} a sequence), past t >= {self.split} "
                  f"({self.rows[1]}); N = {self.num_seqs}, T = {self.seq_len}, eps = {self.eps}; weights are means "
                  "over rows and heads, rates the % of (row, head) pairs above eps"),
                 (f"{'layer':>5} {'window':>6} | {'inside: tok1':>12} {'rate':>6} {'top':>6} {'rate':>6} | "
                  f"{'past: tok1':>10} {'rate':>6} {'edge':>6} {'top':>6} {'rate':>6}")]
        for l in range(self.n_layers):
            w = "-" if self.windows[l] is None else str(self.windows[l])
            i, p = 0, 1
            lines.append(
                f"{l:>5} {w:>6} | {self.first[i, l].mean():12.3f} {self.first_rate[i, l].mean():6.1f} "
                f"{self.top[i, l].mean():6.3f} {self.top_rate[i, l].mean():6.1f} | {self.first[p, l].mean():10.3f} "
                f"{self.first_rate[p, l].mean():6.1f} {self.edge[p, l].mean():6.3f} {self.top[p, l].mean():6.3f} "
                f"{self.top_rate[p, l].mean():6.1f}")
        show = decode or str
        for kind in KINDS:
            for region in REGIONS:
                total = sum(self.sink_tokens[kind][region].values())
                if not total:
                    continue
                dist = self.sink_distance[kind][region]
                at_edge = self._edge_share(kind, region)
                tops = ", ".join(f"{show(t)!r} {c / total:.0%}" for t, c in self.top_tokens(kind, region, n_tokens))
                order = self.sink_order[kind][region]
                lines.append(f"{kind} layers, {region}: {total} off-token-1 sink pairs; at distance < 8: "
                             f"{dist[:8].sum() / total:.0%}" + (f", at the window's edge: {at_edge:.0%}"
                                                                 if at_edge is not None else "")
                             + f", median distance {int(np.searchsorted(dist.cumsum(), total / 2))}; the latest "
                             f"of its token {order['latest'] / total:.0%}, the earliest in view "
                             f"{order['earliest'] / total:.0%}, the only one {order['only'] / total:.0%}; "
                             f"tokens: {tops}")
                if self.sink_value is not None:
                    v = self.sink_value[kind][region]
                    lines.append(f"  value norms: the sink keys {v['sink_keys']:.3g}, all keys 2..T {v['all_keys']:.3g}, "
                                 f"token 1 {v['token_1']:.3g}")
        return "\n".join(lines)

    def _edge_share(self, kind: str, region: str) -> float | None:
        """The share of a kind's sink pairs past the split that fell on the oldest key in view."""
        total = sum(self.sink_tokens[kind][region].values())
        if kind != "windowed" or region != "past" or not total:
            return None
        edges = {self.windows[l] - 1 for l in self.windowed_layers()}
        return float(sum(self.sink_distance[kind][region][d] for d in edges) / total)

    def to_dict(self, decode: Callable[[int], str] | None = None, n_tokens: int = 20) -> dict[str, Any]:
        def arr(x: np.ndarray) -> Any:
            return np.asarray(x, dtype=np.float64).round(8).tolist()

        out: dict[str, Any] = {
            "eps": self.eps, "seq_len": self.seq_len, "num_seqs": self.num_seqs, "n_layers": self.n_layers,
            "n_heads": self.n_heads, "split": self.split, "windows": self.windows, "rows": self.rows,
            "windowed_layers": self.windowed_layers(), "regions": list(REGIONS),
            "first": arr(self.first), "first_rate": arr(self.first_rate), "edge": arr(self.edge),
            "top": arr(self.top), "top_rate": arr(self.top_rate), "by_distance": arr(self.by_distance),
            "summary": {kind: {region: {name: self.kind_mean(name, kind, region)
                                        for name in ("first", "first_rate", "edge", "top", "top_rate")}
                               for region in REGIONS} for kind in KINDS},
            "sink_tokens": {}, "sink_distance": {}, "edge_share": {},
        }
        for kind in KINDS:
            out["sink_tokens"][kind] = {}
            out["sink_distance"][kind] = {}
            for region in REGIONS:
                rows = [{"id": t, "pairs": c, **({"text": decode(t)} if decode else {})}
                        for t, c in self.top_tokens(kind, region, n_tokens)]
                out["sink_tokens"][kind][region] = {"total": sum(self.sink_tokens[kind][region].values()),
                                                    "top": rows}
                out["sink_distance"][kind][region] = self.sink_distance[kind][region].tolist()
                out["sink_tokens"][kind][region]["order"] = dict(self.sink_order[kind][region])
            out["edge_share"][kind] = self._edge_share(kind, "past")
        out["sink_value"] = self.sink_value
        return out


class _WindowAccumulator:
    def __init__(self, *, tokens: Tensor, L: int, H: int, V: int, eps: float, split: int,
                 windows: list[int | None], device: torch.device):
        self.tokens = tokens.to(device)
        self.T, self.L, self.H, self.V, self.eps, self.split = tokens.shape[1], L, H, V, eps, split
        self.windows = windows
        self.windowed = {l for l, w in enumerate(windows) if w is not None and w <= split}
        f64 = {"dtype": torch.float64, "device": device}
        self.sums = {name: torch.zeros(2, L, H, **f64) for name in ("first", "first_rate", "edge", "top", "top_rate")}
        self.by_distance = torch.zeros(2, L, split, **f64)
        self.token_counts = {k: {r: torch.zeros(V, dtype=torch.int64, device=device) for r in REGIONS} for k in KINDS}
        self.dist_counts = {k: {r: torch.zeros(self.T, dtype=torch.int64, device=device) for r in REGIONS}
                            for k in KINDS}
        self.order_counts = {k: {r: dict.fromkeys(ORDER, 0) for r in REGIONS} for k in KINDS}
        self.prev_same, self.next_same = _same_token_neighbours(self.tokens)
        self.value_norm: Tensor | None = None  # [b, T, H] of the layer whose pattern comes next
        self.value_layer = -1
        self.want_values = False  # set when hook_v is attached: every pattern then needs its layer's values first
        self.values = {k: {r: torch.zeros(3, dtype=torch.float64) for r in REGIONS} for k in KINDS}
        self.value_pairs = {k: {r: 0 for r in REGIONS} for k in KINDS}
        self.value_rows = {k: {r: 0 for r in REGIONS} for k in KINDS}
        t = torch.arange(self.T, device=device)
        d = torch.arange(split, device=device)
        self.key_at = t[:, None] - d[None, :]  # [T, split] the key at distance d from query t
        self.valid = (self.key_at >= 1)  # token 1 (key 0) and keys before the sequence left out
        self.regions = [(t >= 1) & (t < split), t >= split]  # [T] bool each
        self.num_seqs = 0
        self.layers_seen: set[int] = set()

    def on_value(self, layer: int, v: Float[Tensor, "batch pos kv_head d_head"]) -> None:
        """hook_v: each position's value norm for each query head (a key / value head shared by a group of query
        heads is repeated for each)."""
        n = v.detach().double().norm(dim=-1)  # [b, T, kv_head]
        if n.shape[1] != self.T or self.H % n.shape[2]:
            raise RuntimeError(f"blocks.{layer}.attn.hook_v has shape {tuple(v.shape)}; expected [batch, {self.T}, "
                               f"kv_head, d_head] with kv_head dividing {self.H} (see docs/hook-contract.md)")
        self.value_norm = n.repeat_interleave(self.H // n.shape[2], dim=2)
        self.value_layer = layer

    def on_pattern(self, layer: int, pattern: Float[Tensor, "batch head q k"]) -> None:
        b = pattern.shape[0]
        if tuple(pattern.shape[1:]) != (self.H, self.T, self.T):
            raise RuntimeError(f"blocks.{layer}.attn.hook_pattern has shape {tuple(pattern.shape)}; expected "
                               f"[batch, {self.H}, {self.T}, {self.T}] (see docs/hook-contract.md)")
        p = pattern.detach().double()
        tok = self.tokens[self.num_seqs:self.num_seqs + b]  # [b, T]
        window = self.windows[layer] if layer in self.windowed else None
        reach = window if window is not None else self.split  # the edge's distance + 1
        edge_key = torch.arange(self.T, device=p.device) - (reach - 1)
        first = p[..., 0]  # [b, H, T]
        edge = p.gather(-1, edge_key.clamp_min(0).expand(b, self.H, self.T)[..., None]).squeeze(-1)
        rest = p[..., 1:]
        top, arg = rest.max(-1)  # [b, H, T]; arg + 1 = the key
        # [b, T, split]: the weight at each distance, summed over heads first (H times less memory than per head)
        rel = p.sum(1).gather(-1, self.key_at.clamp_min(0).expand(b, self.T, self.split)) * self.valid
        kind = "windowed" if layer in self.windowed else "global"
        for r, rows in enumerate(self.regions):
            if not bool(rows.any()):
                continue
            self.sums["first"][r, layer] += first[..., rows].sum((0, 2))
            self.sums["first_rate"][r, layer] += (first[..., rows] > self.eps).sum((0, 2))
            self.sums["edge"][r, layer] += torch.where(edge_key[rows] >= 0, edge[..., rows], 0.0).sum((0, 2))
            self.sums["top"][r, layer] += top[..., rows].sum((0, 2))
            sink = top[..., rows] > self.eps  # [b, H, R]
            self.sums["top_rate"][r, layer] += sink.sum((0, 2))
            self.by_distance[r, layer] += rel[:, rows].sum((0, 1))
            bi, hi, ri = sink.nonzero(as_tuple=True)
            vn = self.value_norm if self.value_layer == layer else None
            if vn is None and self.want_values:
                raise RuntimeError(f"blocks.{layer}.attn.hook_v did not fire before the layer's hook_pattern: the "
                                   "value norms cannot be matched to the pattern (see docs/hook-contract.md)")
            if vn is not None:  # the rows of this region, all keys 2..T and token 1, and the sink keys below
                acc_v = self.values[kind][REGIONS[r]]
                n_rows = int(rows.sum())
                acc_v[1] += float(vn[:, 1:].sum()) / (self.T - 1) * n_rows
                acc_v[2] += float(vn[:, 0].sum()) * n_rows
                self.value_rows[kind][REGIONS[r]] += b * self.H * n_rows
            if bi.numel():
                q = torch.nonzero(rows).squeeze(1)[ri]  # the query positions
                key = arg[..., rows][sink] + 1
                self.token_counts[kind][REGIONS[r]] += torch.bincount(tok[bi, key], minlength=self.V)
                self.dist_counts[kind][REGIONS[r]] += torch.bincount(q - key, minlength=self.T)
                seq = bi + self.num_seqs
                latest = self.next_same[seq, key] > q
                view = (q - reach + 1).clamp_min(1) if window is not None else torch.ones_like(q)
                earliest = self.prev_same[seq, key] < view
                counts = self.order_counts[kind][REGIONS[r]]
                for name, hit in (("latest", latest), ("earliest", earliest), ("only", latest & earliest)):
                    counts[name] += int(hit.sum())
                if vn is not None:
                    self.values[kind][REGIONS[r]][0] += float(vn[bi, key, hi].sum())
                    self.value_pairs[kind][REGIONS[r]] += int(bi.numel())
        self.value_norm, self.value_layer = None, -1
        self.layers_seen.add(layer)

    def finish(self) -> WindowSinkReport:
        missing = sorted(set(range(self.L)) - self.layers_seen)
        if missing:
            raise RuntimeError(f"hook_pattern never fired for layers {missing}: the model does not follow "
                               "the hook-name contract (docs/hook-contract.md)")
        rows = [int(r.sum()) for r in self.regions]
        # [2, 1, split] the rows of each region that have a key at distance d
        reach = torch.stack([(self.valid & r[:, None]).sum(0) for r in self.regions]).double()[:, None, :]
        n = torch.tensor(rows, dtype=torch.float64, device=self.by_distance.device)[:, None, None] * self.num_seqs
        mean = {name: (s / n.clamp_min(1)).cpu().numpy() for name, s in self.sums.items()}
        for name in ("first_rate", "top_rate"):
            mean[name] = mean[name] * 100.0
        tokens = {k: {r: {int(i): int(c) for i, c in zip(torch.nonzero(v).squeeze(1).tolist(), v[v > 0].tolist())}
                      for r, v in d.items()} for k, d in self.token_counts.items()}
        return WindowSinkReport(
            eps=self.eps, seq_len=self.T, num_seqs=self.num_seqs, n_layers=self.L, n_heads=self.H, split=self.split,
            windows=list(self.windows), rows=rows, first=mean["first"], first_rate=mean["first_rate"],
            edge=mean["edge"], top=mean["top"], top_rate=mean["top_rate"],
            by_distance=(self.by_distance / (reach * self.num_seqs * self.H).clamp_min(1)).cpu().numpy(),
            sink_tokens=tokens,
            sink_distance={k: {r: v.cpu().numpy() for r, v in d.items()} for k, d in self.dist_counts.items()},
            sink_order={k: {r: dict(v) for r, v in d.items()} for k, d in self.order_counts.items()},
            sink_value=self._sink_value(),
        )

    def _sink_value(self) -> dict[str, dict[str, dict[str, float]]] | None:
        if not any(self.value_rows[k][r] for k in KINDS for r in REGIONS):
            return None
        out: dict[str, dict[str, dict[str, float]]] = {}
        for k in KINDS:
            out[k] = {}
            for r in REGIONS:
                s, rows, pairs = self.values[k][r], self.value_rows[k][r], self.value_pairs[k][r]
                out[k][r] = {"sink_keys": float(s[0]) / pairs if pairs else float("nan"),
                             "all_keys": float(s[1]) / rows if rows else float("nan"),
                             "token_1": float(s[2]) / rows if rows else float("nan")}
        return out


def _same_token_neighbours(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """[N, T] each: the position of the previous occurrence of the token at each position (-1: none) and of
    the next one (T: none)."""
    T = tokens.shape[1]
    order = torch.sort(tokens, dim=1, stable=True)  # equal ids stay in position order
    pos, val = order.indices, order.values
    same = val[:, 1:] == val[:, :-1]  # sorted neighbours i-1, i hold the same token
    prev_sorted = torch.full_like(pos, -1)
    prev_sorted[:, 1:] = torch.where(same, pos[:, :-1], -1)
    next_sorted = torch.full_like(pos, T)
    next_sorted[:, :-1] = torch.where(same, pos[:, 1:], T)
    prev = torch.empty_like(pos).scatter_(1, pos, prev_sorted)
    nxt = torch.empty_like(pos).scatter_(1, pos, next_sorted)
    return prev, nxt


def _resolve_split(windows: list[int | None], T: int, split: int | None) -> int:
    """``split`` checked, or by default the smallest window shorter than the sequence."""
    if split is None:
        shorter = [w for w in windows if w is not None and w < T]
        if not shorter:
            raise ValueError(f"no layer's window is shorter than the sequence (windows {windows}, seq_len {T}): "
                             "pass split to compare query positions anyway, or longer tokens")
        split = min(shorter)
    if isinstance(split, bool) or not isinstance(split, int) or not 2 <= split <= T - 1:
        raise ValueError(f"split must be an integer in [2, seq_len - 1 = {T - 1}], got {split!r}")
    return split


def window_sinks(model: Any, tokens: Any, *, eps: float = 0.3, split: int | None = None, batch_size: int = 4,
                 progress: bool = False) -> WindowSinkReport:
    """Where each layer's attention goes for queries inside and past a sliding window (module docstring).

    Args:
        model: any model following docs/hook-contract.md whose layers' windows ``tl_adapter.attn_visibility``
            reads (a prefix is not taken into account).
        tokens: token ids [num_seqs, T], used exactly as given (put BOS first yourself where the model expects it).
        eps: the sink threshold in (0, 1).
        split: the first query position (0-based) counted as past; default the smallest window of any layer.
            Must lie in [2, T - 1]. A layer whose window is at most ``split`` counts as windowed.
        batch_size, progress: as in ``measure``.
    """
    dims = tl_adapter.model_dims(model)
    eps = check_eps(eps)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    T = tokens.shape[1]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dims["n_ctx"] and T > dims["n_ctx"]:
        raise ValueError(f"seq_len {T} exceeds the model's context length n_ctx={dims['n_ctx']}")
    L, H = dims["n_layers"], dims["n_heads"]
    windows = [tl_adapter.attn_visibility(model, l)[0] for l in range(L)]
    split = _resolve_split(windows, T, split)
    names = set(tl_adapter.hook_names(model))
    acc = _WindowAccumulator(tokens=tokens, L=L, H=H, V=dims["d_vocab"], eps=eps, split=split, windows=windows,
                             device=_model_device(model))
    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda x, hook, l=l: acc.on_pattern(l, x)) for l in range(L)]
    if all(f"blocks.{l}.attn.hook_v" in names for l in range(L)):  # fires before the layer's pattern
        hooks += [(f"blocks.{l}.attn.hook_v", lambda x, hook, l=l: acc.on_value(l, x)) for l in range(L)]
        acc.want_values = True
    run_hooked(model, tokens, hooks, acc, batch_size=batch_size, names=names,
               progress="windows" if progress else None)
    return acc.finish()


def drop_token_keys(model: Any, tokens: Any, token_ids: Sequence[int], *, layers: Sequence[int] | None = None,
                    split: int | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Is a sink past the window needed? The keys holding any of ``token_ids`` (key positions 2..t-1 of each query
    t: token 1 and the query itself stay) hidden from every query of ``layers`` (default: the layers whose window
    hides token 1 past the split), each row scaled back to its old total over the kept keys (for softmax: the
    softmax over the kept keys), against the plain run.

    Returns the mean next-token loss over the predictions made at the queries inside (1 <= t < split) and past
    (t >= split) the split, plain (``loss``) and edited (``loss_dropped``), their ``delta``, and the mean weight the
    hidden keys held in the edited layers' rows of each region (``weight_dropped``, over heads and rows)."""
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    T, L = tokens.shape[1], dims["n_layers"]
    if isinstance(token_ids, (str, bytes)) or not token_ids or any(
            isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < dims["d_vocab"] for t in token_ids):
        raise ValueError(f"token_ids must be a non-empty list of token ids in [0, {dims['d_vocab'] - 1}], got "
                         f"{token_ids!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    windows = [tl_adapter.attn_visibility(model, l)[0] for l in range(L)]
    split = _resolve_split(windows, T, split)
    if layers is None:
        layers = [l for l, w in enumerate(windows) if w is not None and w <= split]
        if not layers:
            raise ValueError(f"no layer's window hides token 1 from the queries past split {split} (windows "
                             f"{windows}): pass layers")
    layers = list(layers)
    if not layers or any(isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < L for l in layers):
        raise ValueError(f"layers must be a non-empty list of layer indices in [0, {L - 1}], got {layers!r}")
    from sinkinterp import patching

    device = _model_device(model)
    ids = torch.tensor(sorted(set(token_ids)), device=device)
    t = torch.arange(T, device=device)
    later = (t[None, :] >= 1) & (t[None, :] < t[:, None])  # [query, key]: keys 2..t-1 of query t
    regions = [(t >= 1) & (t < split), t >= split]
    current: dict[str, Tensor] = {}
    dropped = torch.zeros(2, dtype=torch.float64)

    def edit(p: Tensor, hook: Any) -> Tensor:
        hidden = torch.isin(current["tokens"], ids)[:, None, None, :] & later  # [b, 1, q, k]
        q = p.to(torch.promote_types(p.dtype, torch.float32))
        out = q.masked_fill(hidden, 0.0)
        for r, rows in enumerate(regions):
            dropped[r] += float((q - out)[:, :, rows].sum()) / (q.shape[1] * int(rows.sum()))
        kept = out.sum(-1, keepdim=True)
        out = out * torch.where(kept > 0, q.sum(-1, keepdim=True) / kept.clamp_min(torch.finfo(q.dtype).tiny), 1.0)
        return out.to(p.dtype)

    hooks = [(f"blocks.{l}.attn.hook_pattern", edit) for l in layers]
    losses = []
    for attach in ([], hooks):
        per = []
        with patching._eval_mode(model), torch.no_grad(), tl_adapter.attached_hooks(model, attach):
            for start in range(0, tokens.shape[0], batch_size):
                batch = tokens[start:start + batch_size].to(device)
                current["tokens"] = batch
                per.append(patching.per_token_loss(model(batch), batch).double().cpu())
        losses.append(torch.cat(per))  # [N, T - 1]: target t + 1 predicted at query t
    out: dict[str, Any] = {"token_ids": ids.tolist(), "layers": layers, "split": split, "seq_len": T,
                           "num_seqs": int(tokens.shape[0]), "loss": {}, "loss_dropped": {}, "delta": {},
                           "weight_dropped": {}}
    for r, region in enumerate(REGIONS):
        rows = regions[r][:-1].cpu()  # queries 0..T-2 make the predictions
        base, edited = float(losses[0][:, rows].mean()), float(losses[1][:, rows].mean())
        out["loss"][region], out["loss_dropped"][region] = base, edited
        out["delta"][region] = edited - base
        out["weight_dropped"][region] = float(dropped[r]) / (len(layers) * tokens.shape[0])
    return out
