"""Streaming measurement of attention sinks on any model that speaks the hook-name contract.

``measure(model, tokens)`` runs the model over the sequences in batches and reduces every statistic
inside the hooks: per batch it keeps O(L * H * T) numbers, never a T x T map, and what it keeps
across batches does not grow with the number of sequences. See docs/hook-contract.md for what the
model must provide and docs/measurement.md for the definitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.metrics import (alpha_bias_from_pattern, alpha_from_colsums, alpha_from_columns, alpha_from_pattern,
                                check_eps)
from sinkinterp.models.attention import rotate_half_partial

__all__ = ["measure", "SinkReport", "DEFAULT_EPS_GRID", "validate_tokens", "sweep_seq_len"]

DEFAULT_EPS_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

QKHeads = str | Sequence[tuple[int, int]] | None


@dataclass
class SinkReport:
    """Everything ``measure`` found, as numpy arrays; ``to_dict()`` gives the results.json form.

    Layers and heads index as in the model (0-based). ``alpha_by_key[l, h, k]`` is alpha_{k+1}
    averaged over sequences; ``sink_pct[k]`` is Sink_{k+1}^eps in percent. The per-key arrays cover
    all T keys, or the first ``first_keys`` when the measurement was restricted to them.
    """

    eps: float
    seq_len: int
    num_seqs: int
    k_max: int
    n_layers: int
    n_heads: int
    sink_pct: np.ndarray  # [k_max]
    sink_pct_by_key: np.ndarray  # [T] (or [first_keys]): Sink_k^eps for every key position measured
    alpha_by_key: np.ndarray  # [L, H, T] (or [L, H, first_keys])
    attn1_by_query: np.ndarray  # [L, H, T]: mean attention of query t on token 1 (the profile alpha_1 averages)
    head_sink_rate: np.ndarray  # [L, H]: percent of sequences in which the head sinks on token 1
    eps_grid: np.ndarray  # [E]
    sink1_by_eps: np.ndarray  # [E]
    sink_bias_pct: float | None = None
    alpha_bias: np.ndarray | None = None  # [L, H]
    sink_bias_by_eps: np.ndarray | None = None  # [E]
    attn_bias_by_query: np.ndarray | None = None  # [L, H, T]: mean weight of query t on the bias slot
    norms: dict[str, Any] | None = None
    qk: dict[str, Any] | None = None
    first_keys: int | None = None  # None: every key position was measured
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha(self) -> np.ndarray:
        """alpha_1 per layer and head, averaged over sequences: [L, H]."""
        return self.alpha_by_key[:, :, 0]

    @property
    def sink1_pct(self) -> float:
        return float(self.sink_pct[0])

    def to_dict(self) -> dict[str, Any]:
        def arr(x: np.ndarray | None) -> Any:
            return None if x is None else np.asarray(x, dtype=np.float64).round(8).tolist()

        out: dict[str, Any] = {
            "sink_pct": arr(self.sink_pct),
            "sink_bias_pct": None if self.sink_bias_pct is None else round(self.sink_bias_pct, 8),
            "alpha": arr(self.alpha),
            "alpha_bias": arr(self.alpha_bias),
            "eps": self.eps,
            "seq_len": self.seq_len,
            "num_seqs": self.num_seqs,
            "k_max": self.k_max,
            "first_keys": self.first_keys,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "head_sink_rate": arr(self.head_sink_rate),
            "sink_pct_by_key": arr(self.sink_pct_by_key),
            "alpha_by_key": arr(self.alpha_by_key),
            "attn1_by_query": arr(self.attn1_by_query),
            "attn_bias_by_query": arr(self.attn_bias_by_query),
            "eps_sweep": {
                "eps": arr(self.eps_grid),
                "sink1_pct": arr(self.sink1_by_eps),
                "sink_bias_pct": arr(self.sink_bias_by_eps),
            },
            "norms": _jsonable(self.norms),
            "qk": _jsonable(self.qk),
        }
        out.update(_jsonable(self.extra))
        return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float64).round(8).tolist()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def validate_tokens(tokens: Any, d_vocab: int, name: str = "tokens") -> Tensor:
    """Return ``tokens`` as a LongTensor [N, T] after checking shape and vocabulary range."""
    if isinstance(tokens, np.ndarray):
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
        tokens = torch.from_numpy(tokens.astype(np.int64))
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor [N, T], got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must have shape [num_seqs, seq_len], got {tuple(tokens.shape)}")
    n, t = tokens.shape
    if n < 1:
        raise ValueError(f"{name} holds no sequences")
    if t < 2:
        raise ValueError(f"{name}: seq_len must be at least 2 (the metric needs queries after token 1), got {t}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        raise ValueError(
            f"{name}: token ids must lie in [0, {d_vocab - 1}] (the model's vocabulary), found {lo}..{hi}"
        )
    return tokens.long()


def _resolve_qk_heads(qk_heads: QKHeads, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    if qk_heads is None or qk_heads == "none":
        return []
    if qk_heads in ("all", "auto"):
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    if isinstance(qk_heads, str):
        raise ValueError(f"qk_heads must be 'all', 'auto', 'none' or a list of (layer, head), got {qk_heads!r}")
    heads = []
    for item in qk_heads:
        l, h = (int(v) for v in item)
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(
                f"qk_heads: head ({l}, {h}) is outside the model (layers 0..{n_layers - 1}, heads 0..{n_heads - 1})"
            )
        heads.append((l, h))
    return heads


def qk_source(model: Any, tokens: Tensor, names: set[str] | None = None) -> tuple[str | None, str]:
    """Where the q.k decomposition reads the queries and keys the attention really multiplies:
    ("rot", ...) from hook_rot_q / hook_rot_k, ("cos_sin", ...) by rotating hook_q / hook_k with the
    model's own hook_cos / hook_sin (bridges whose Hugging Face attention rotates internally: GPT-NeoX,
    Phi-3, Falcon), ("plain", ...) from hook_q / hook_k when the model lists no rotary hooks, or
    (None, reason) when it lists rotary hooks but none of them fire (GPT-J). On a bridge, one forward
    pass over the first sequence of ``tokens`` tells which hooks fire; other models run the hooks
    they list."""
    names = set(tl_adapter.hook_names(model)) if names is None else names
    rot = ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"]
    if not all(n in names for n in rot):
        return "plain", "hook_q / hook_k (the model lists no rotary hooks)"
    if tl_adapter.wrapped_hf_model(model) is None:  # sinkinterp models and a HookedTransformer run theirs
        return "rot", "hook_rot_q / hook_rot_k"
    trig = [n for n in ("blocks.0.attn.hook_cos", "blocks.0.attn.hook_sin") if n in names]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        fired = tl_adapter.fired_hooks(model, rot + trig, tokens[:1].to(_model_device(model)))
    finally:
        if was_training:
            model.train()
    if all(n in fired for n in rot):
        return "rot", "hook_rot_q / hook_rot_k"
    if len(trig) == 2 and all(n in fired for n in trig):
        return "cos_sin", "hook_q / hook_k rotated with the model's hook_cos / hook_sin (rotate-half)"
    arch = tl_adapter.hf_architecture(model) or type(model).__name__
    if tl_adapter.hf_key_rotation(tl_adapter.wrapped_hf_model(model)) is not None:
        return "module", (f"hook_q / hook_k rotated by {arch}'s own rotary embedding (its attention rotates "
                          "inside Hugging Face's code and has no hook_rot_q / hook_rot_k or hook_cos / hook_sin)")
    return None, (f"{arch} lists hook_rot_q / hook_rot_k but its forward pass never reaches them, and it has no "
                  "firing hook_cos / hook_sin or rotary embedding this adapter knows to rotate hook_q / hook_k "
                  "with: the rotated queries and keys are not observable")


# queries per block when the soft-capped logits are averaged (_Accumulator._capped_logits), at most;
# fewer when a block's [batch, heads, block, T] logits would pass CAPPED_BLOCK_ELEMENTS
CAPPED_QUERY_BLOCK = 128
CAPPED_BLOCK_ELEMENTS = 2 ** 24


def visible_keys(queries: Tensor, seq_len: int, window: int | None, prefix: int) -> Tensor:
    """[len(queries), seq_len] bool: which keys each query sees (``tl_adapter.attn_visibility``):
    s <= t and t - s < window, or both inside the prefix."""
    keys = torch.arange(seq_len, device=queries.device)
    dist = queries[:, None] - keys[None, :]
    seen = dist >= 0
    if window is not None:
        seen = seen & (dist < window)
    if prefix > 0:
        seen = seen | ((queries[:, None] < prefix) & (keys[None, :] < prefix))
    return seen


def _all_causal(visibility: tuple[int | None, int], seq_len: int) -> bool:
    """Whether ``(window, prefix)`` leaves every query exactly its causal keys at this length."""
    window, prefix = visibility
    return (window is None or window >= seq_len) and prefix <= 1


class _Accumulator:
    """Running sums filled by the hooks. Everything stays on the model's device until ``finish``."""

    def __init__(self, *, dims: dict[str, Any], seq_len: int, eps: float, eps_grid: Sequence[float],
                 has_bias: bool, norms: bool, qk_layers: set[int], device: torch.device,
                 first_keys: int | None = None, qk_from: str = "plain", scales: Sequence[float] = (),
                 rotate: Any = None, slot_keys: dict[int, Tensor] | None = None, softcap: float | None = None,
                 visibility: dict[int, tuple[int | None, int]] | None = None):
        L, H, T = dims["n_layers"], dims["n_heads"], seq_len
        self.L, self.H, self.T, self.eps = L, H, T, eps
        self.first_keys = first_keys
        n_keys = T if first_keys is None else first_keys  # key positions with an alpha
        self.group = H // dims["n_kv_heads"]
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        self.grid = torch.tensor(list(eps_grid), **f64)
        self.alpha_sum = torch.zeros(L, H, n_keys, **f64)
        self.col1_sum = torch.zeros(L, H, T, **f64)  # attention on token 1 by query position
        self.head_counts = torch.zeros(L, H, n_keys, **i64)  # sequences in which head sinks on key k
        self.grid_counts = torch.zeros(len(eps_grid), L, H, **i64)
        self.has_bias = has_bias
        if has_bias:
            self.bias_sum = torch.zeros(L, H, **f64)
            self.bias_col_sum = torch.zeros(L, H, T, **f64)
            self.bias_counts = torch.zeros(L, H, **i64)
            self.bias_grid_counts = torch.zeros(len(eps_grid), L, H, **i64)
        self.norms = norms
        if norms:
            self.resid_pos_sum = torch.zeros(L + 1, T, **f64)
            self.key_first = torch.zeros(L, H, **f64)
            self.key_rest = torch.zeros(L, H, **f64)
            # how much the keys differ between texts at the same position (``_key_spread``): per layer and head,
            # sums over pairs of consecutive sequences of a batch of ||k_b - k_b'||^2, the pairs, and sums of ||k||^2
            # (token 1; then keys 2..T, pooled over positions)
            self.key_pair = torch.zeros(2, L, H, **f64)
            self.key_sq = torch.zeros(2, L, H, **f64)
            self.key_pairs = torch.zeros(2, **f64)
            self.key_count = torch.zeros(2, **f64)
            self.value_first = torch.zeros(L, H, **f64)
            self.value_rest = torch.zeros(L, H, **f64)
        self.qk_layers = qk_layers
        self.qk_from, self.scales = qk_from, list(scales)
        self.softcap = softcap  # c of a model whose softmax sees c * tanh(logit / c) (Gemma 2)
        # (window, prefix) of the decomposed layers whose queries do not see every causal key
        self.visibility = {l: v for l, v in (visibility or {}).items() if l in qk_layers and not _all_causal(v, T)}
        self.rotate = rotate  # qk_from "module": rotate(x, positions), the model's own rotary embedding
        # the bias slot's key per layer [kv_head, d_head] (SinkTransformer.slot_keys)
        self.slot_keys = {l: k.double().to(device) for l, k in (slot_keys or {}).items() if l in qk_layers}
        if qk_layers:
            names = ("q_norm", "cos_q_k1", "cos_q_krest", "logit_q_k1", "logit_q_krest")
            if self.slot_keys:
                names += ("cos_q_kstar", "logit_q_kstar")
            if softcap is not None:
                names += ("capped_logit_q_k1", "capped_logit_q_krest")
            self.qk = {name: torch.zeros(L, H, **f64) for name in names}
        self.stash: dict[int, dict[str, Tensor]] = {}
        self.qk_done: set[int] = set()
        self.num_seqs = 0
        self.layers_seen: set[int] = set()
        self.bias_layers_seen: set[int] = set()

    # ---- hooks -------------------------------------------------------------------------------
    def on_pattern(self, layer: int, pattern: Float[Tensor, "batch head q k"]) -> None:
        if pattern.shape[-1] != self.T or pattern.shape[1] != self.H:
            raise RuntimeError(
                f"blocks.{layer}.attn.hook_pattern has shape {tuple(pattern.shape)}; expected "
                f"[batch, {self.H}, {self.T}, {self.T}] (a model with extra attention slots must "
                "report them through hook_bias_pattern, see docs/hook-contract.md)"
            )
        if self.first_keys is not None:
            self.on_cols(layer, pattern[..., :self.first_keys])
            return
        self.col1_sum[layer] += pattern[..., 0].detach().sum(0).double()
        self._add_alpha(layer, alpha_from_pattern(pattern.detach()))  # [b, H, T]

    def on_cols(self, layer: int, cols: Float[Tensor, "batch head q n_keys"]) -> None:
        """The first ``first_keys`` columns of the pattern (a model's read-only hook_pattern_cols)."""
        expected = (self.H, self.T, self.first_keys)
        if tuple(cols.shape[1:]) != expected:
            raise RuntimeError(f"blocks.{layer}.attn pattern columns have shape {tuple(cols.shape)}; expected "
                               f"[batch, {', '.join(map(str, expected))}]")
        self.col1_sum[layer] += cols[..., 0].detach().sum(0).double()
        self._add_alpha(layer, alpha_from_columns(cols.detach()))

    def on_col1(self, layer: int, cols: Float[Tensor, "batch head q n_cols"]) -> None:
        """The first key column of the pattern (hook_pattern_cols), for the attention on token 1 by
        query; alpha comes from ``on_colsum``."""
        self.col1_sum[layer] += cols[..., 0].detach().sum(0).double()

    def on_colsum(self, layer: int, colsum: Float[Tensor, "batch head k"]) -> None:
        """Column sums of the pattern over queries t >= k (a sinkinterp model's read-only
        hook_pattern_colsum): alpha_k = colsum_k / (T - k + 1)."""
        if tuple(colsum.shape[1:]) != (self.H, self.T):
            raise RuntimeError(f"blocks.{layer}.attn.hook_pattern_colsum has shape {tuple(colsum.shape)}; expected "
                               f"[batch, {self.H}, {self.T}]")
        self._add_alpha(layer, alpha_from_colsums(colsum.detach()))

    def _add_alpha(self, layer: int, alpha: Float[Tensor, "batch head n_keys"]) -> None:
        self.alpha_sum[layer] += alpha.sum(0).double()
        self.head_counts[layer] += (alpha > self.eps).sum(0)
        self.grid_counts[:, layer] += (alpha[None, :, :, 0] > self.grid[:, None, None]).sum(1)
        self.layers_seen.add(layer)

    def on_bias_pattern(self, layer: int, bias_pattern: Float[Tensor, "batch head q"]) -> None:
        a = alpha_bias_from_pattern(bias_pattern.detach())  # [b, H]
        self.bias_col_sum[layer] += bias_pattern.detach().sum(0).double()
        self.bias_sum[layer] += a.sum(0).double()
        self.bias_counts[layer] += (a > self.eps).sum(0)
        self.bias_grid_counts[:, layer] += (a[None] > self.grid[:, None, None]).sum(1)
        self.bias_layers_seen.add(layer)

    def on_resid(self, index: int, resid: Float[Tensor, "batch pos d_model"]) -> None:
        self.resid_pos_sum[index] += resid.detach().double().norm(dim=-1).sum(0)

    def _per_head(self, x: Float[Tensor, "batch pos kv_head d_head"]) -> Tensor:
        return x.repeat_interleave(self.group, dim=2) if x.shape[2] != self.H else x

    def on_key(self, layer: int, k: Float[Tensor, "batch pos kv_head d_head"]) -> None:
        """hook_k: key norms (a rotary rotation keeps them, so these are the norms the attention
        sees) and, for the decomposition, the keys before any rotation."""
        k = k.detach()
        if self.norms:
            kd = k.double()  # [b, T, kv_head, d]: per kv head, then repeated for the query heads that share it
            n = self._per_head(kd.norm(dim=-1, keepdim=True))[..., 0]  # [b, T, H]
            self.key_first[layer] += n[:, 0].sum(0)
            self.key_rest[layer] += n[:, 1:].mean(1).sum(0)
            self._key_spread(layer, kd)
        if layer in self.qk_layers and self.qk_from != "rot":
            self._stash(layer, "k", k)

    def _key_spread(self, layer: int, k: Float[Tensor, "batch pos kv_head d_head"]) -> None:
        """Sums for how much keys differ between texts at the same position: for token 1 and for keys 2..T,
        the squared distance between consecutive sequences of the batch (2 x the variance over texts, in
        expectation, for texts drawn independently) and the squared norms; ``finish`` turns them into the
        spread over texts relative to the keys' RMS norm (``_spread_of``)."""
        b = k.shape[0]
        for i, part in enumerate((k[:, :1], k[:, 1:])):
            if part.shape[1] == 0:
                continue
            self.key_sq[i, layer] += self._per_head(part.pow(2).sum((0, 1, 3))[None, None, :, None])[0, 0, :, 0]
            if b > 1:
                pair = (part[1:] - part[:-1]).pow(2).sum((0, 1, 3))
                self.key_pair[i, layer] += self._per_head(pair[None, None, :, None])[0, 0, :, 0]
            if layer == 0:
                self.key_count[i] += b * part.shape[1]
                self.key_pairs[i] += (b - 1) * part.shape[1]

    def _spread(self, i: int) -> np.ndarray:
        """[L, H]: the keys' spread over texts relative to their RMS norm, token 1 (i = 0) or keys 2..T (1)."""
        return _spread_of(self.key_pair[i], self.key_sq[i], float(self.key_pairs[i]), float(self.key_count[i]))

    def on_qk_input(self, layer: int, kind: str, x: Tensor) -> None:
        """hook_q, hook_rot_q, hook_rot_k, hook_cos or hook_sin of a layer in the decomposition."""
        self._stash(layer, kind, x.detach())

    def on_value(self, layer: int, v: Float[Tensor, "batch pos kv_head d_head"]) -> None:
        n = self._per_head(v.detach()).double().norm(dim=-1)
        self.value_first[layer] += n[:, 0].sum(0)
        self.value_rest[layer] += n[:, 1:].mean(1).sum(0)

    _QK_NEEDS = {"rot": ("rot_q", "rot_k"), "cos_sin": ("q", "k", "cos", "sin"), "module": ("q", "k"),
                 "plain": ("q", "k")}

    def _stash(self, layer: int, kind: str, x: Tensor) -> None:
        """Keep a layer's q / k (and rotation) until it has all it needs, then decompose and drop them."""
        slot = self.stash.setdefault(layer, {})
        slot[kind] = x
        need = self._QK_NEEDS[self.qk_from]
        if not all(n in slot for n in need):
            return
        del self.stash[layer]
        if self.qk_from == "rot":
            q, k = slot["rot_q"], slot["rot_k"]
        elif self.qk_from == "cos_sin":
            cos, sin = slot["cos"].double(), slot["sin"].double()
            cos, sin = cos[:, :, None], sin[:, :, None]  # [1 or batch, pos, 1, rotary dims]
            q, k = rotate_half_partial(slot["q"].double(), cos, sin), rotate_half_partial(slot["k"].double(), cos, sin)
        elif self.qk_from == "module":
            positions = torch.arange(slot["q"].shape[1], device=slot["q"].device)
            q, k = self.rotate(slot["q"].double(), positions), self.rotate(slot["k"].double(), positions)
        else:
            q, k = slot["q"], slot["k"]
        self._qk_decomposition(layer, q, k)
        self.qk_done.add(layer)

    def end_batch(self) -> None:
        """After each forward pass: every layer of the decomposition got its queries and keys."""
        missing = sorted(self.qk_layers - self.qk_done)
        if missing:
            raise RuntimeError(f"q.k decomposition: layers {missing} did not get all of "
                               f"{list(self._QK_NEEDS[self.qk_from])} in this batch")
        self.qk_done.clear()
        self.stash.clear()

    def _qk_decomposition(self, layer: int, q: Tensor, k: Tensor) -> None:
        """q.k = |q||k|cos(q, k): mean query norm, and cosine / logit of each query with key 1 and
        with the keys after it it can see (t >= s >= 2 in the paper's 1-based positions; under a
        sliding window or a prefix, the pairs the attention can use: ``_visible_pairs``)."""
        q = q.double()
        k = self._per_head(k).double()
        scale = self.scales[layer]
        qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.qk["q_norm"][layer] += q.norm(dim=-1).mean(1).sum(0)
        if layer in self.visibility:
            self._visible_pairs(layer, q, k, qn, kn, scale, *self.visibility[layer])
        else:
            self._causal_pairs(layer, q, k, qn, kn, scale)
        if layer in self.slot_keys:  # the slot's key, as every query scores it (it is never out of sight)
            k_star = self.slot_keys[layer].repeat_interleave(self.group, 0)  # [H, d]
            ks_n = k_star / k_star.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self.qk["cos_q_kstar"][layer] += (qn * ks_n).sum(-1).mean(1).sum(0)
            self.qk["logit_q_kstar"][layer] += ((q * k_star).sum(-1) * scale).mean(1).sum(0)

    def _causal_pairs(self, layer: int, q: Tensor, k: Tensor, qn: Tensor, kn: Tensor, scale: float) -> None:
        """Every query sees key 1 and keys 2..t: the means by prefix sums, no T x T map."""
        self.qk["cos_q_k1"][layer] += (qn * kn[:, :1]).sum(-1).mean(1).sum(0)
        self.qk["logit_q_k1"][layer] += ((q * k[:, :1]).sum(-1) * scale).mean(1).sum(0)
        # mean over the pairs 2 <= s <= t of q_t . k_s = sum_t q_t . (k_2 + ... + k_t) / n_pairs:
        # prefix sums over keys, O(T d) instead of a T x T map (keys 2..t only; query 1 has none)
        T = q.shape[1]
        n_pairs = T * (T - 1) / 2
        cos_sum = (qn[:, 1:] * kn[:, 1:].cumsum(1)).sum((1, 3))  # [b, H]
        self.qk["cos_q_krest"][layer] += (cos_sum / n_pairs).sum(0)
        logit_sum = (q[:, 1:] * k[:, 1:].cumsum(1)).sum((1, 3)) * scale
        self.qk["logit_q_krest"][layer] += (logit_sum / n_pairs).sum(0)
        if self.softcap is not None:
            self._capped_logits(layer, q, k, scale)

    def _visible_pairs(self, layer: int, q: Tensor, k: Tensor, qn: Tensor, kn: Tensor, scale: float,
                       window: int | None, prefix: int) -> None:
        """A sliding window or a prefix: the key-1 means over the queries that see key 1, the rest
        over the pairs (t, s >= 2) the attention can use (``visible_keys``), by blocks of queries
        as in ``_capped_logits`` (soft-capped means too, when the model caps its logits)."""
        T = q.shape[1]
        block = max(1, min(CAPPED_QUERY_BLOCK, CAPPED_BLOCK_ELEMENTS // (q.shape[0] * q.shape[2] * T)))
        keys = torch.arange(T, device=q.device)
        capped = self.softcap is not None
        sums = {name: torch.zeros(q.shape[0], q.shape[2], dtype=q.dtype, device=q.device)
                for name in ("cos_q_k1", "logit_q_k1", "cos_q_krest", "logit_q_krest")
                + (("capped_logit_q_k1", "capped_logit_q_krest") if capped else ())}
        n_first = n_rest = 0
        for start in range(0, T, block):
            queries = keys[start:start + block]
            seen = visible_keys(queries, T, window, prefix)  # [n, T]
            first, rest = seen[:, 0].to(q.dtype), seen.clone()
            rest[:, 0] = False
            rest = rest.to(q.dtype)
            n_first, n_rest = n_first + first.sum(), n_rest + rest.sum()
            cos = torch.einsum("bthd,bshd->bhts", qn[:, start:start + block], kn)
            logits = torch.einsum("bthd,bshd->bhts", q[:, start:start + block], k) * scale
            parts = [("cos", cos), ("logit", logits)]
            if capped:
                c = self.softcap
                parts.append(("capped_logit", c * torch.tanh(logits / c)))
            for name, x in parts:
                sums[f"{name}_q_k1"] += (x[..., 0] * first).sum(2)
                sums[f"{name}_q_krest"] += (x * rest).sum((2, 3))
        for name, total in sums.items():
            self.qk[name][layer] += (total / (n_first if name.endswith("k1") else n_rest)).sum(0)

    def _capped_logits(self, layer: int, q: Tensor, k: Tensor, scale: float) -> None:
        """The same two means after the soft cap, c * tanh(logit / c), the scores the softmax sees.
        tanh does not pass through the prefix sums, so the pairs are made by blocks of queries
        (``CAPPED_QUERY_BLOCK``, fewer where a block would pass ``CAPPED_BLOCK_ELEMENTS``), never the
        whole T x T map."""
        c, T = self.softcap, q.shape[1]
        block = max(1, min(CAPPED_QUERY_BLOCK, CAPPED_BLOCK_ELEMENTS // (q.shape[0] * q.shape[2] * T)))
        cap = lambda x: c * torch.tanh(x / c)
        self.qk["capped_logit_q_k1"][layer] += cap((q * k[:, :1]).sum(-1) * scale).mean(1).sum(0)
        keys = torch.arange(T, device=q.device)
        total = torch.zeros(q.shape[0], q.shape[2], dtype=q.dtype, device=q.device)
        for start in range(1, T, block):
            queries = keys[start:start + block]
            logits = cap(torch.einsum("bthd,bshd->bhts", q[:, start:start + block], k) * scale)
            later = (keys[None, :] >= 1) & (keys[None, :] <= queries[:, None])  # keys 2..t, 1-based
            total += (logits * later).sum((2, 3))
        self.qk["capped_logit_q_krest"][layer] += (total / (T * (T - 1) / 2)).sum(0)

    # ---- results -----------------------------------------------------------------------------
    def finish(self, k_max: int, qk_heads: list[tuple[int, int]]) -> SinkReport:
        missing = sorted(set(range(self.L)) - self.layers_seen)
        if missing:
            raise RuntimeError(f"hook_pattern never fired for layers {missing}: the model does not follow "
                               "the hook-name contract (docs/hook-contract.md)")
        n, total = self.num_seqs, self.num_seqs * self.L * self.H
        cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
        sink_by_key = cpu(self.head_counts.sum((0, 1)).double() / total * 100.0)
        report = SinkReport(
            eps=self.eps, seq_len=self.T, num_seqs=n, k_max=k_max, n_layers=self.L, n_heads=self.H,
            sink_pct=sink_by_key[:k_max].copy(), sink_pct_by_key=sink_by_key, first_keys=self.first_keys,
            alpha_by_key=cpu(self.alpha_sum / n), attn1_by_query=cpu(self.col1_sum / n),
            head_sink_rate=cpu(self.head_counts[:, :, 0].double() / n * 100.0),
            eps_grid=cpu(self.grid),
            sink1_by_eps=cpu(self.grid_counts.sum((1, 2)).double() / total * 100.0),
        )
        if self.has_bias:
            report.sink_bias_pct = float(self.bias_counts.sum().double() / total * 100.0)
            report.alpha_bias = cpu(self.bias_sum / n)
            report.attn_bias_by_query = cpu(self.bias_col_sum / n)
            report.sink_bias_by_eps = cpu(self.bias_grid_counts.sum((1, 2)).double() / total * 100.0)
        if self.norms:
            resid = cpu(self.resid_pos_sum / n)  # [L+1, T]
            first, rest = resid[:, 0], resid[:, 1:].mean(1)
            report.norms = {
                "resid": {
                    "hooks": [f"blocks.{l}.hook_resid_pre" for l in range(self.L)]
                    + [f"blocks.{self.L - 1}.hook_resid_post"],
                    "first": first, "rest": rest, "massive_ratio": first / np.maximum(rest, 1e-30),
                    "by_position": resid,
                },
                "key": {"first": cpu(self.key_first / n), "rest": cpu(self.key_rest / n),
                        "first_spread": self._spread(0), "rest_spread": self._spread(1)},
                "value": {"first": cpu(self.value_first / n), "rest": cpu(self.value_rest / n)},
            }
        if qk_heads:
            idx = np.array(qk_heads)
            report.qk = {"heads": [list(h) for h in qk_heads]}
            for name, t in self.qk.items():
                report.qk[name] = cpu(t / n)[idx[:, 0], idx[:, 1]]
            if self.norms:
                report.qk["k1_norm"] = report.norms["key"]["first"][idx[:, 0], idx[:, 1]]
                report.qk["k_rest_norm"] = report.norms["key"]["rest"][idx[:, 0], idx[:, 1]]
            if self.slot_keys:
                report.qk["kstar_norm"] = np.array([
                    float(self.slot_keys[l][h // self.group].norm()) for l, h in qk_heads])
        return report


def _spread_of(pair: Tensor, sq: Tensor, pairs: float, count: float) -> np.ndarray:
    """sqrt(var / E ||k||^2) per layer and head, var = E ||k_b - k_b'||^2 / 2 over pairs of texts: 0 where the
    key is the same in every text, about 1 where nothing of it is (a little over 1 by sampling noise); NaN
    without a pair."""
    if pairs <= 0 or count <= 0:
        return np.full(tuple(pair.shape), np.nan)
    var = pair / (2 * pairs)
    return (var.clamp_min(0.0) / (sq / count).clamp_min(1e-300)).sqrt().cpu().numpy()


def _batches(tokens: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start:start + batch_size]


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def measure(
    model: Any,
    tokens: Int[Tensor, "num_seqs seq_len"] | np.ndarray,
    *,
    eps: float = 0.3,
    k_max: int | None = None,
    eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
    batch_size: int = 8,
    norms: bool = True,
    qk_heads: QKHeads = "all",
    first_keys: int | None = None,
    progress: bool = False,
) -> SinkReport:
    """Measure Sink_k^eps, per-head alpha, eps sweep, norms and the q.k decomposition.

    Args:
        model: any model following docs/hook-contract.md (HookedTransformer, TransformerBridge,
            sinkinterp model).
        tokens: token ids [num_seqs, seq_len], used exactly as given (no BOS is added here).
        eps: the sink threshold, in (0, 1); a head sinks on k when alpha_k > eps (strict).
        k_max: report Sink_k for k = 1..k_max (default min(T, 10), or min(first_keys, 10)); must be
            <= T (and <= first_keys).
        eps_grid: thresholds for the eps sweep of Sink_1 (and Sink_*), each in (0, 1).
        batch_size: sequences per forward pass; memory per pass is O(batch * L * H * T) kept.
        norms: also measure residual/key/value norms and the massive-activation ratio.
        qk_heads: "all", "none"/None, or a list of (layer, head) for the q.k decomposition, which
            reads the queries and keys after any rotary embedding (see ``qk_source``; a ValueError when
            the model does not expose them); "auto": all heads where it can, none (with the reason in
            ``extra["qk_skipped"]``) where it cannot. Its logits use the model's own q.k scale
            (``tl_adapter.attn_scale``); a position bias (ALiBi, T5 buckets) the model adds is reported
            beside them (``bias_q_k1`` / ``bias_q_krest``, ``position_bias_terms``), and a soft cap on
            the logits as ``softcap`` (the logits are before it; ``capped_logit_q_k1`` /
            ``capped_logit_q_krest`` are the same means after it). The key k* of a bias slot (a learned
            kv / k bias, or the learnable sink token's key) gets the same factors: ``cos_q_kstar``,
            ``logit_q_kstar`` (mean over queries), ``kstar_norm``; a learned sink logit (sinkinterp's
            sink_logit, gpt-oss's sinks) is ``slot_logit``.
        first_keys: measure alpha and Sink_k only for the first ``first_keys`` key positions (the
            per-key arrays then have that length). On a sinkinterp model this reads the read-only
            ``hook_pattern_cols`` / ``hook_bias_col`` hooks, so attention stays in the fused kernels
            and no T x T pattern is made; on other models it slices ``hook_pattern``. None: all keys
            (on a sinkinterp model from the read-only ``hook_pattern_colsum``: the fused kernel's
            attention plus one blocked pass over the scores, still no T x T pattern).
        progress: show a progress bar over batches.

    Every hook is removed when the call returns, also on error.
    """
    dims = tl_adapter.model_dims(model)
    eps = check_eps(eps)
    grid = sorted({check_eps(e, "eps_grid entry") for e in eps_grid} | {eps})
    tokens = validate_tokens(tokens, dims["d_vocab"])
    n, T = tokens.shape
    if first_keys is not None and (isinstance(first_keys, bool) or not isinstance(first_keys, int)
                                   or not 1 <= first_keys <= T):
        raise ValueError(f"first_keys must be None or an integer in [1, seq_len={T}], got {first_keys!r}")
    n_keys = T if first_keys is None else first_keys
    if k_max is None:
        k_max = min(n_keys, 10)
    if not isinstance(k_max, int) or not 1 <= k_max <= n_keys:
        limit = f"seq_len={T}" if first_keys is None else f"first_keys={first_keys}"
        raise ValueError(f"k_max must be an integer in [1, {limit}], got {k_max!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_ctx = dims["n_ctx"]
    if n_ctx and T > n_ctx:
        raise ValueError(f"seq_len {T} exceeds the model's context length n_ctx={n_ctx}")
    L, H = dims["n_layers"], dims["n_heads"]
    heads = _resolve_qk_heads(qk_heads, L, H)
    names = set(tl_adapter.hook_names(model))
    for l in range(L):
        if f"blocks.{l}.attn.hook_pattern" not in names:
            raise ValueError(f"model has no hook blocks.{l}.attn.hook_pattern (see docs/hook-contract.md)")
    rows_slot = slot_from_rows(model)  # gpt-oss's learned sinks: the share the pattern rows leave
    has_bias = "blocks.0.attn.hook_bias_pattern" in names or bool(rows_slot)
    # a sinkinterp model's read-only column hooks keep its fused kernels (models/attention.py)
    use_cols = first_keys is not None and "blocks.0.attn.hook_pattern_cols" in names and hasattr(model, "pattern_cols")
    # ... and for every key, their read-only column sums (hook_pattern_colsum) with the first column
    use_colsum = (first_keys is None and "blocks.0.attn.hook_pattern_colsum" in names
                  and hasattr(model, "pattern_cols"))
    qk_from, qk_note = qk_source(model, tokens, names) if heads else (None, "")
    if heads and qk_from is None:
        if qk_heads != "auto":
            raise ValueError(f"qk_heads: the q.k decomposition needs the rotated queries and keys; {qk_note}. "
                             "Pass qk_heads=None or 'auto' (norms and sinks are unaffected)")
        heads = []

    device = _model_device(model)
    acc = _Accumulator(dims=dims, seq_len=T, eps=eps, eps_grid=grid, has_bias=has_bias, norms=norms,
                       qk_layers={l for l, _ in heads}, device=device, first_keys=first_keys,
                       qk_from=qk_from or "plain", scales=[tl_adapter.attn_scale(model, l) for l in range(L)],
                       rotate=tl_adapter.hf_key_rotation(tl_adapter.wrapped_hf_model(model)) if qk_from == "module" else None,
                       slot_keys=_slot_keys(model, {l for l, _ in heads}),
                       softcap=tl_adapter.attn_softcap(model) if heads else None,
                       visibility={l: tl_adapter.attn_visibility(model, l) for l in {l for l, _ in heads}})
    on_pattern = acc.on_cols if use_cols else acc.on_col1 if use_colsum else acc.on_pattern

    hooks = sink_hooks(L, use_cols=use_cols or use_colsum, on_pattern=on_pattern,
                       on_bias=acc.on_bias_pattern if has_bias else None,
                       on_resid=acc.on_resid if norms else None, rows_slot=rows_slot)
    if use_colsum:
        hooks += [(f"blocks.{l}.attn.hook_pattern_colsum", lambda x, hook, l=l: acc.on_colsum(l, x)) for l in range(L)]
    qk_hooks = {"rot": ("rot_q", "rot_k"), "cos_sin": ("q", "cos", "sin"), "module": ("q",),
                "plain": ("q",)}.get(qk_from or "", ())
    for l in range(L):
        if norms:
            hooks.append((f"blocks.{l}.attn.hook_v", lambda x, hook, l=l: acc.on_value(l, x)))
        if norms or l in acc.qk_layers:
            hooks.append((f"blocks.{l}.attn.hook_k", lambda x, hook, l=l: acc.on_key(l, x)))
        if l in acc.qk_layers:
            hooks += [(f"blocks.{l}.attn.hook_{kind}", lambda x, hook, l=l, kind=kind: acc.on_qk_input(l, kind, x))
                      for kind in qk_hooks]
    run_hooked(model, tokens, hooks, acc, batch_size=batch_size, names=names,
               pattern_cols=first_keys if use_cols else 1 if use_colsum else None,
               progress="measure" if progress else None)
    report = acc.finish(k_max, heads)
    if report.norms is not None:  # the residual and value norms depend on it (tl_adapter.weight_processing)
        report.norms["weight_processing"] = tl_adapter.weight_processing(model)
    if report.qk is not None:
        report.qk["source"] = qk_note
        report.qk["scale"] = [acc.scales[l] for l, _ in heads]
        report.qk["pairs"] = _pairs_note(acc.visibility)
        terms, report.qk["position_bias"] = position_bias_terms(model, sorted(acc.qk_layers), T, device,
                                                                visibility=acc.visibility)
        if terms:
            report.qk["bias_q_k1"] = np.array([terms[l][0][h] for l, h in heads])
            report.qk["bias_q_krest"] = np.array([terms[l][1][h] for l, h in heads])
        cap = tl_adapter.attn_softcap(model)
        if cap is not None:
            report.qk["softcap"] = cap
        logits = _slot_logits(model, acc.qk_layers)
        if logits:
            report.qk["slot_logit"] = np.array([float(logits[l][h]) for l, h in heads])
    elif qk_from is None and qk_heads == "auto":
        report.extra["qk_skipped"] = qk_note
    return report


def _slot_keys(model: Any, layers: set[int]) -> dict[int, Tensor]:
    """The slot's key k* in these layers (sinkinterp models with a kv or k bias or a learnable sink
    token: ``SinkTransformer.slot_keys``); empty for every other model."""
    get = getattr(model, "slot_keys", None)
    if not layers or not callable(get) or not hasattr(model, "pattern_cols"):
        return {}
    return {layer: key for layer, key in get().items() if layer in layers}


def _slot_logits(model: Any, layers: set[int]) -> dict[int, Tensor]:
    """A learned sink logit per head in these layers, the slot's score whatever the query: a
    sinkinterp model's ``sink_logit`` bias, or a bridge's learned attention sinks (gpt-oss)."""
    H = tl_adapter.model_dims(model)["n_heads"]
    out = {}
    for layer in layers:
        if hasattr(model, "pattern_cols"):  # a sinkinterp model
            cfg = model.cfg
            own = getattr(model.blocks[layer].attn, "sink_logit", None)
            logit = own.detach() if cfg.attn_bias == "sink_logit" and cfg.has_slot and own is not None else None
        else:
            logit = tl_adapter.learned_sink_logits(model, layer)
        if logit is not None:
            out[layer] = logit.double().expand(H).cpu()
    return out


def _pairs_note(visibility: dict[int, tuple[int | None, int]]) -> str:
    """What the decomposition's key-1 and rest means average over, in words."""
    if not visibility:
        return "every query with key 1; the causal pairs t >= s >= 2"
    parts = [f"layer {l}: " + ", ".join(([f"window {w}"] if w is not None else []) + ([f"prefix {p}"] if p > 1 else []))
             for l, (w, p) in sorted(visibility.items())]
    return ("the queries that see key 1, and the pairs (t, s >= 2) the attention can use, in "
            + "; ".join(parts) + "; every query and causal pair elsewhere")


def position_bias_terms(model: Any, layers: Sequence[int], seq_len: int, device: torch.device | str = "cpu",
                        block: int = 256, visibility: dict[int, tuple[int | None, int]] | None = None,
                        ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], str]:
    """The position bias's share of the decomposition's logits, per layer: ``{layer: (bias_q_k1,
    bias_q_krest)}`` ([head] each) and the bias's source (``tl_adapter.position_bias``); ``{}`` when the
    model adds none. Each query's bias is taken relative to its own key (b(t, s) - b(t, t): softmax
    ignores a constant per query, and implementations differ by one: Bloom adds slope * s where
    sinkinterp adds -slope * (t - s)), then averaged as the logits are: over all queries for key 1,
    over the pairs 2 <= s <= t for the rest (for a layer in ``visibility``, ``(window, prefix)``:
    over the queries that see key 1 and the pairs they can use, as the decomposition's logits; by
    default each layer's ``tl_adapter.attn_visibility``).
    Data-independent; computed by blocks of ``block`` queries, so O(block x T) memory."""
    T = seq_len
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    source = "none (no head decomposed)"
    keys = torch.arange(T, device=device)
    for layer in layers:
        rows, source = tl_adapter.position_bias(model, layer, T)
        if rows is None:
            return {}, source
        window, prefix = (visibility.get(layer, (None, 0)) if visibility is not None
                          else tl_adapter.attn_visibility(model, layer))
        k1 = rest = 0.0
        n_first = n_rest = 0
        for start in range(0, T, block):
            queries = keys[start:start + block]
            b = rows(queries)  # [H, n, T]
            rel = b - b[:, torch.arange(len(queries), device=device), queries][:, :, None]
            seen = visible_keys(queries, T, window, prefix)
            first, later = seen[:, 0], seen & (keys[None, :] >= 1)  # key 1; keys 2.. (1-based) in sight
            k1 = k1 + (rel[:, :, 0] * first).sum(1)
            rest = rest + (rel * later).sum((1, 2))
            n_first, n_rest = n_first + int(first.sum()), n_rest + int(later.sum())
        out[layer] = ((k1 / n_first).cpu().numpy(), (rest / n_rest).cpu().numpy())
    return out, source


def slot_from_rows(model: Any) -> set[int]:
    """Layers whose bias slot has no hook of its own: a bridge with learned attention sinks
    (gpt-oss; ``tl_adapter.learned_sink_logits``), whose hook_pattern rows sum to 1 minus the sink's
    share, so that share is the slot's weight."""
    if tl_adapter.wrapped_hf_model(model) is None:
        return set()
    return {l for l in range(tl_adapter.model_dims(model)["n_layers"])
            if tl_adapter.learned_sink_logits(model, l) is not None}


def _row_slot(pattern: Tensor) -> Tensor:
    """The slot's share of each query row, 1 - sum over the real keys, [batch, head, query]."""
    return (1.0 - pattern.detach().to(torch.promote_types(pattern.dtype, torch.float32)).sum(-1)).clamp_min(0.0)


def sink_hooks(n_layers: int, *, use_cols: bool, on_pattern: Any, on_bias: Any = None,
               on_resid: Any = None, rows_slot: set[int] = frozenset()) -> list[tuple[str, Any]]:
    """The hooks every sink measurement attaches: ``on_pattern(layer, pattern)`` on each layer's
    hook_pattern (or, with ``use_cols``, a sinkinterp model's read-only hook_pattern_cols),
    ``on_bias(layer, bias_pattern)`` on hook_bias_pattern / hook_bias_col (for the layers in
    ``rows_slot``, learned sinks without a hook of their own: 1 minus each row of hook_pattern,
    ``slot_from_rows``), and ``on_resid(index, resid)`` on every resid_pre plus the last resid_post
    (index n_layers). None: not attached."""
    pattern_name, bias_name = ("hook_pattern_cols", "hook_bias_col") if use_cols else ("hook_pattern", "hook_bias_pattern")
    hooks: list[tuple[str, Any]] = []
    for l in range(n_layers):
        if on_bias is not None and l in rows_slot:
            def both(x: Tensor, hook: Any, l: int = l) -> None:
                on_pattern(l, x)
                on_bias(l, _row_slot(x))

            hooks.append((f"blocks.{l}.attn.{pattern_name}", both))
        else:
            hooks.append((f"blocks.{l}.attn.{pattern_name}", lambda x, hook, l=l: on_pattern(l, x)))
            if on_bias is not None:
                hooks.append((f"blocks.{l}.attn.{bias_name}", lambda x, hook, l=l: on_bias(l, x)))
        if on_resid is not None:
            hooks.append((f"blocks.{l}.hook_resid_pre", lambda x, hook, l=l: on_resid(l, x)))
    if on_resid is not None:
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", lambda x, hook: on_resid(n_layers, x)))
    return hooks


def run_hooked(model: Any, tokens: Tensor, hooks: list[tuple[str, Any]], acc: Any, *, batch_size: int,
               names: set[str], pattern_cols: int | None = None, progress: str | None = None) -> None:
    """Run ``model`` over ``tokens`` in batches with ``hooks`` attached (checked against the model's
    hook ``names`` first), in eval mode and without gradients; after each batch ``acc.num_seqs`` grows
    and ``acc.end_batch()`` runs when the accumulator has one. Every attached hook must
    fire (``tl_adapter.attached_hooks``) except a layer's bias-slot hooks. ``pattern_cols``: the number of key columns a
    sinkinterp model's read-only hook_pattern_cols carries for the run (restored after). The model's
    training mode and every hook are restored, also on error. ``progress``: a progress-bar label. The logits
    are not read, so the model unembeds the last position only (``tl_adapter.unembed_positions``)."""
    for name, _ in hooks:
        if name not in names:
            raise ValueError(f"model has no hook {name} (needed for this measurement; see docs/hook-contract.md)")
    device = _model_device(model)
    batches: Iterable[Tensor] = _batches(tokens, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=math.ceil(tokens.shape[0] / batch_size), desc=progress, unit="batch")
    was_training = getattr(model, "training", False)
    old_cols = model.pattern_cols if pattern_cols is not None else None
    model.eval()
    try:
        if pattern_cols is not None:
            model.pattern_cols = pattern_cols
        # a layer without a bias slot may leave its hook_bias_pattern silent (weight 0 there)
        optional = [n for n, _ in hooks if n.endswith((".hook_bias_pattern", ".hook_bias_col"))]
        with torch.no_grad(), tl_adapter.attached_hooks(model, hooks, optional=optional):
            for batch in batches:
                # the logits are not read: unembed the last position only (the unembedding is a large share of a
                # forward pass where the vocabulary is large; the hooked blocks still run whole)
                with tl_adapter.unembed_positions(model, [batch.shape[1] - 1]):
                    model(batch.to(device))
                acc.num_seqs += batch.shape[0]
                if hasattr(acc, "end_batch"):
                    acc.end_batch()
    finally:
        if pattern_cols is not None:
            model.pattern_cols = old_cols
        if was_training:
            model.train()


def sweep_seq_len(model: Any, make_tokens: Any, seq_lens: Sequence[int], **kwargs: Any) -> dict[int, SinkReport]:
    """Measure at several sequence lengths: ``make_tokens(T)`` returns the [N, T] ids for each T."""
    return {int(t): measure(model, make_tokens(int(t)), **kwargs) for t in seq_lens}
