"""Is the sink a gate? How much each head writes, query by query, and what the sink has to do with it.

A head's output at query t splits into what the sink contributes and what the other keys do:

    z_t = a_t v_sink + m_t o_t,        o_t = sum_{j not sink} p_tj v_j / m_t,   m_t = sum_{j not sink} p_tj

(a_t: the sink's weight, token 1's or the bias slot's; m_t: the weight on every other key; o_t: the
normalized average of their values, what the head "reads"). With softmax, m_t = 1 - a_t. If the sink's
value writes almost nothing (the paper's key bias), the head writes m_t o_t W_O: the sink works as a
per-query gate on the head, closed where a_t is near 1 (Bondarenko et al., 2023: heads that "do
nothing"; gated attention, Qiu et al., 2025, makes the gate explicit and loses the sink). Sigmoid
attention needs no sink for this: its weights need not sum to 1, so m_t is free.

``gate_study`` measures this on any hooked model (sinkinterp models, HookedTransformer, a
TransformerBridge), streaming over batches (no T x T map is kept), for every head over queries t >= 2:

* ``sink_mass``: mean a_t; ``mass``: mean m_t; ``sink_share``: the mean share of each row's weight on the
  sink (``sink_mass`` where attention normalizes; what picks the sink heads, ``DRIVER_FLOOR``, everywhere);
* ``gate``: the effective gate g_t = ||z_t W_O|| / ||o_t W_O|| (how much of what it reads the head
  writes; m_t exactly when the sink's value is 0 and no explicit gate acts), its mean, spread, and the
  part of the spread left within a query position (``gate_std_within``: the gate's dependence on the
  content, not only on t), its quantiles and the share of queries with g_t < ``closed``;
* ``corr_gate_mass``: the correlation of g_t with m_t over queries (1 where the sink sets the gate);
* ``value_share``: mean ||z_t W_O - m_t o_t W_O|| / mean ||z_t W_O||, the part of the write that is not
  the gated read (the sink's value, a V bias, an explicit gate's change of direction);
* with an explicit gate (``hook_gate``, gated attention): ``explicit_gate``, the mean of
  ||z_t W_O|| / ||(z_t / gate_t) W_O||.

Four interventions then ask what the model needs of the gate (``interventions``):

* ``open``: the sink removed, rows renormalized (``first_token("ablate")`` or ``"ablate_bias"``): every
  query's gate fully open;
* ``fixed`` (normalized attention only): every query's m_t set to the mean of m_t at its (layer, head,
  position) over the other half of the measured sequences, the other keys keeping their relative
  weights and the sink taking the rest: the gate keeps its average by position but no longer depends
  on the content (``fixed_gate``);
* ``token`` (normalized attention only): every query's m_t set to the mean at its (layer, head,
  position) plus the mean deviation from it of its query token, both from the other half (``token_gate``):
  the gate follows the position and the query token, but no longer the rest of the text before it;
* ``donor`` (normalized attention only): every query's m_t set to the m_t of a text of the other half
  at the same (layer, head, position): a real gate pattern, spread included, that belongs to another
  text (``donor_gate``).

What drives the gate (``drivers``, normalized attention): per head, the share of m_t's variance over
queries that the position explains, the share the query token adds, and the rest (the text before the
query: the keys' content and the token's interaction with it, plus the noise of the fitted means), each
out of sample: the means are fitted on one half of the sequences and scored on the other (and the other
way round), so a token seen once cannot explain its own query (the by-token table's ``token_r2`` can).
Three features of the context are tested the same way: whether the query's token occurred earlier in the
text (``repeat``), the token before the query (``previous``), and a constant per text (``text``: its mean
offset over the other half of its queries).

Which side of the softmax moves the gate (``logit_split``, softmax attention whose ``hook_attn_scores``
the pattern is the softmax of): the log-odds on the sink, lam_t = log(a_t / m_t), is exactly the sink's
logit s_t minus the log-sum-exp c_t of the other keys' logits, so its variance splits exactly into
cov(lam, s) / var(lam) (``sink_side``: the query turns toward or away from the sink's key; for a learned
sink logit s_t is constant and the share is 0) and the rest, -cov(lam, c) / var(lam) (the other keys
match the query better or worse), over all queries and within positions (``_within``). The other keys'
side splits once more, exactly, with c_t = x_t + (c_t - x_t), x_t the best-matching other key's logit:
``top_key_side`` = -cov(lam, x) / var(lam) (one key matching the query, as in retrieval), and what is left,
1 - sink_side - top_key_side (the spread: how many keys match, log of their effective number).
Where the sink is token 1, its logit s_t = score(q_t, k_1) moves with the query and with token 1's key,
which differs between texts unless token 1 is the same token (BOS): a second pass over each batch scores
each query against a fixed key instead (token 1's key at ``hook_k``, averaged over the texts by a pass that
observes hook_k alone, put in place of token 1's in every layer, each layer's hook_attn_scores then given
back its own column 1, so the rest of the pass is the first one's; checked on the logits), u_t, and the
sink's side splits exactly into ``turn_side`` = cov(lam, u) / var(lam) (the query turning toward or away
from a key that is the same in every text) and ``identity_side`` = cov(lam, s - u) / var(lam) (which key
token 1 has in this text); for a BOS first, whose key is the same in every text, the second is 0.
What in the query makes the turn (``turn_sources``): in the same second pass each block's residual input
is made a leaf of autograd and ln1's scale is held, so u_t = g_t . x_t + b_t is affine in the input x_t,
which is the sum of the embedding and each earlier block's attention and MLP outputs; source c's part of
u_t is g_t . x_c (direct attribution through the frozen norm scale), and cov(lam, u_c) / var(lam) over the
sources, with the rest b_t (biases; checked not to move with the text), sums to ``turn_side``; with
``turn_sources="heads"`` each earlier attention head's write z_h W_O[h] is a source too.

Where the weight off the sink goes (``targets``, any attention): each key besides the sink falls, for its
query, in the first of TARGETS that fits it: token 1 (when the sink is the bias slot), the query itself,
the key before it, an induction target (the key right after an earlier occurrence of the query's token),
an earlier occurrence of the query's token, or another key. Per head: each category's share of the
weight off the sink (pooled over queries: where the open gate's weight lands), how often the best key
besides the sink is of each category and how much more open than its position's mean the gate is on those
queries (``open_by_top``: does the head open when it finds an induction target?), the weight and the best
key by distance t - j (bins 0, 1, 2, 3-4, 5-8, ...); per category, the share of queries that have such a
key (``available``) and its share of the causal keys (``uniform``: what attention spread evenly would
give). ``inputs.make_tokens("copy", ...)`` (random ids whose second half copies the first) gives every
query of the second half an induction target.

For attention that does not normalize (sinkinterp's sigmoid and elu+1 kernels, whose hook_pattern holds
each key's share of the row's weight), the weights are the shares times ``hook_row_weight`` (each row's
total weight; ``weights_from_row_weight``), so a_t and m_t are the weights on the sink and on the other keys,
no longer tied by a_t + m_t = 1: m_t is the gate this attention has without a sink. Everything above is
measured on them; ``open`` drops the sink without renormalizing, and ``fixed``, ``token`` and ``donor`` set
m_t as a weight (the other keys scaled together, the sink keeping its weight, so the row's total changes;
the token gate clamped at 0 only). For the identity kernel, whose weights carry a sign the shares drop,
a_t and m_t stay shares (``pattern_is_share``), ``corr_gate_mass`` and ``value_share`` are None, and only
``open`` runs.

Reading them: ``open`` prices the damping itself; ``fixed`` the gate's dependence on the content, with
its average kept; ``token`` how much of that dependence the query token carries; ``donor`` whether the
gate must match its own text (if it costs no more than ``fixed``, a gate of the right spread would do;
if more, each text needs its own pattern of open and closed queries).
``sinkinterp gate`` (sinkinterp/cli_gate.py) runs it from the command line.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["DRIVER_FLOOR", "GATE_BINS", "GATE_EDITS", "GATE_MAX", "LOGIT_TOLERANCE", "SINKS", "TARGETS",
           "TOKEN_SHRINK", "TOKEN_TABLE_LIMIT", "distance_bins", "donor_gate", "drivers", "fixed_gate", "gate_stats",
           "gate_study", "pooled_drivers", "pooled_logit_split", "pooled_targets", "pooled_turn_sources", "repeated", "sink_share", "summary",
           "token_gate"]

SINKS = ("auto", "first", "slot")
#: histogram of the effective gate per head: bins of width GATE_MAX / GATE_BINS on [0, GATE_MAX), one overflow
GATE_BINS, GATE_MAX = 200, 2.0
_TINY = 1e-12


def _attn_op(model: Any) -> Any:
    return getattr(getattr(getattr(model, "blocks", [None])[0], "attn", None), "op", None)


def _weights_unnormalized(model: Any) -> bool:
    """True for a sinkinterp model whose attention op does not normalize (sigmoid, elu+1, identity
    kernel): its hook_pattern holds each key's share of the row's weight, not the weight itself."""
    op = _attn_op(model)
    return op is not None and not getattr(op, "normalized", True)


def _row_weighted(model: Any) -> bool:
    """True for a sinkinterp model whose attention does not normalize and whose weights are the shares of
    hook_pattern times hook_row_weight (sigmoid and elu+1; not the identity kernel, whose weights carry a
    sign the shares drop): the study then reads the weights themselves."""
    return _weights_unnormalized(model) and not getattr(_attn_op(model), "signed", False)


def _resolve_sink(model: Any, sink: str) -> tuple[str, str | None]:
    """("first" | "slot", slot kind "hook" | "rows" | None) for ``sink`` on ``model``."""
    from sinkinterp.interventions import _slot_kind

    if sink not in SINKS:
        raise ValueError(f"sink: got {sink!r}, allowed values are {list(SINKS)}")
    slot = _slot_kind(model)
    if sink == "slot" and slot is None:
        raise ValueError("sink='slot' needs a model with a bias slot (k*, a sink token, a sink logit, or learned "
                         "attention sinks); this model has none: use sink='first'")
    if sink == "auto":
        sink = "slot" if slot is not None else "first"
    return sink, slot


#: where the weight off the sink goes (``targets``): each key besides the sink, for query t, falls in the first of
#: these that fits it: token 1 (only when the sink is the bias slot), the query itself, the key just before it, an
#: induction target (a key right after an earlier occurrence of the query's token), an earlier occurrence of the
#: query's token (a duplicate), or none of these
TARGETS = ("first", "self", "previous", "induction", "duplicate", "other")


def distance_bins(seq_len: int) -> tuple[list[str], list[int]]:
    """The bins of a key's distance t - j from its query (``targets``): 0, 1, 2, 3-4, 5-8, 9-16, ... up to
    seq_len - 1, as (labels, lower edges)."""
    edges = [0, 1, 2]
    while edges[-1] * 2 - 1 < seq_len:
        edges.append(edges[-1] * 2 - 1)
    edges = [e for e in edges if e < max(seq_len, 1)]
    highs = [e - 1 for e in edges[1:]] + [seq_len - 1]
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in zip(edges, highs, strict=True)], edges


def _target_map(tokens: Tensor, sink_first: bool) -> Tensor:
    """[b, T, T] long: each key's category for each query (an index into TARGETS), len(TARGETS) where the
    key is not counted (after the query, or token 1 when it is the sink)."""
    b, T = tokens.shape
    C = len(TARGETS)
    t = torch.arange(T, device=tokens.device)
    causal = t[None, :] <= t[:, None]  # [query, key]
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, query, key]
    after_same = torch.zeros_like(same)
    after_same[:, :, 1:] = same[:, :, :-1]  # key j follows an occurrence of the query's token at j - 1
    out = torch.full((b, T, T), C, dtype=torch.long, device=tokens.device)
    rules = [(TARGETS.index("other"), causal[None].expand(b, T, T)),
             (TARGETS.index("duplicate"), same & causal),
             (TARGETS.index("induction"), after_same & causal),
             (TARGETS.index("previous"), (t[None, :] == t[:, None] - 1)[None].expand(b, T, T)),
             (TARGETS.index("self"), (t[None, :] == t[:, None])[None].expand(b, T, T)),
             (TARGETS.index("first"), ((t[None, :] == 0) & causal)[None].expand(b, T, T))]
    for code, where in rules:  # the later rules win: the order of TARGETS
        out = torch.where(where, code, out)
    if sink_first:
        out[:, :, 0] = C
    return out


def _distance_map(seq_len: int, device: Any) -> Tensor:
    """[T, T] long: each key's distance bin from its query (``distance_bins``), the number of bins after it."""
    _, edges = distance_bins(seq_len)
    t = torch.arange(seq_len, device=device)
    d = t[:, None] - t[None, :]
    idx = torch.bucketize(d.clamp_min(0), torch.tensor(edges, device=device), right=True) - 1
    return torch.where(d >= 0, idx, len(edges))


#: the per-(layer, head, position) sums behind the softmax split (``_Accumulator.add_logits``)
LOGIT_SUMS = ("n", "lam", "s", "c", "x", "lam2", "lam_s", "lam_c", "lam_x", "s2", "c2", "x2")
# the sink's logit against a fixed key (``_turn_batch``): u_t, and its products with lam_t and s_t
TURN_SUMS = ("u", "u2", "lam_u", "s_u")
#: the split is reported only where the pattern is the softmax of hook_attn_scores to this L1 error per row
#: (or to 4 x the machine epsilon of a coarser dtype of the scores or the pattern: bfloat16 allows 0.031)
LOGIT_TOLERANCE = 1e-3
#: the sources of the turn (``turn_sources``) are left out, with a note, past this many per-position sums
#: (n_layers x n_heads x (2 n_layers + 1) x T, three of them, float64)
TURN_SOURCE_LIMIT = 50_000_000
#: the residual stream entering each block must be the sum of the sources to this relative error (L2 per
#: position) and the part of u_t they leave must stay the same across texts at a position to this share
#: of u_t's spread (or to 4 x the machine epsilon of a coarser dtype of the residual stream)
SOURCE_TOLERANCE = 1e-3


class _Accumulator:
    """Per-head, per-position sums over queries, float64 on the model's device (moved to the CPU once, by
    ``to_cpu``): the hooks add to them without a host synchronisation per layer."""

    def __init__(self, n_layers: int, n_heads: int, seq_len: int, gated: bool, device: Any):
        shape = (n_layers, n_heads, seq_len)

        def z() -> Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        self.count, self.a, self.m, self.m2, self.g, self.g2, self.gm = z(), z(), z(), z(), z(), z(), z()
        self.write, self.read, self.rest = z(), z(), z()
        self.count_all, self.a_all, self.m_all = z(), z(), z()  # every query, read or not (a_t = 1 - m_t there)
        self.share_all = z()  # the sink's share of each row's weight (a_t itself where attention normalizes)
        self.hist = torch.zeros((n_layers, n_heads, GATE_BINS + 1), dtype=torch.float64, device=device)
        self.explicit = (z(), z()) if gated else None
        # max |row sum + slot - 1| over the queries measured: 0 for normalized attention
        self.row_error = torch.zeros((), dtype=torch.float64, device=device)
        # the softmax split of each query's log-odds on the sink (``_add_logit_sides``): sums over the queries
        # with both weights > 0 of 1, lam, s, c and their products, the layers that fired hook_attn_scores,
        # the largest L1 distance of a row from the softmax of its scores and what the dtypes seen allow
        self.logit = {k: z() for k in LOGIT_SUMS}
        self.logit_layers: set[int] = set()
        self.logit_error = torch.zeros((), dtype=torch.float64, device=device)
        self.logit_tolerance = LOGIT_TOLERANCE
        self.logit_wanted = True  # False: the caller asked for no split (``_stats(..., logits=False)``)
        # the sink's logit against a fixed key (``_turn_batch``), over the same queries as ``logit``
        self.turn = {k: z() for k in TURN_SUMS}
        self.turn_layers: set[int] = set()
        self.turn_note: str | None = "not measured"
        # the turn by source (``add_turn_sources``): None unless asked for; per source [L, H, C, T] sums of u_c,
        # u_c^2 and lam u_c, the part the sources leave (``rest``: [L, H, T] sums of b, b^2, lam b), the largest
        # relative distance of a block's residual input from the sum of the sources, and the dtype tolerance
        self.src: dict[str, Tensor] | None = None
        self.src_rest: dict[str, Tensor] | None = None
        self.src_heads: dict[str, Tensor] | None = None
        self.src_wanted = False
        self.src_note: str | None = None
        self.src_additive = torch.zeros((), dtype=torch.float64, device=device)
        self.src_tolerance = SOURCE_TOLERANCE
        # where the weight off the sink goes (``add_targets``): per key category (TARGETS) and distance bin
        C, D = len(TARGETS), len(distance_bins(seq_len)[0])

        def zc(*tail: int) -> Tensor:
            return torch.zeros((n_layers, n_heads, *tail), dtype=torch.float64, device=device)

        self.t_weight, self.t_dist, self.t_top_dist = zc(C), zc(D), zc(D)
        self.t_top, self.t_top_m = zc(seq_len, C), zc(seq_len, C)  # per query position: counts and sums of m_t
        # per category: queries (the same in each), those with a key of it, its share of their keys (uniform weight)
        self.t_keys = torch.zeros((3, C), dtype=torch.float64, device=device)
        self.t_wanted = True

    def add(self, layer: int, a: Tensor, m: Tensor, g: Tensor, write: Tensor, read: Tensor, rest: Tensor,
            valid: Tensor, explicit: Tensor | None, row_error: Tensor, share: Tensor | None = None) -> None:
        """[batch, head, query] tensors (float64) for queries 1..T-1 of one batch; ``share``: the sink's share of
        each row's weight where ``a`` is not it."""
        def kept(x: Tensor) -> Tensor:  # a query without a read (m_t = 0) adds nothing, not 0 * inf
            return torch.where(valid, x, 0.0).sum(0)

        self.row_error = torch.maximum(self.row_error, row_error)
        self.count_all[layer, :, 1:] += a.shape[0]
        self.a_all[layer, :, 1:] += a.sum(0)
        self.share_all[layer, :, 1:] += (a if share is None else share).sum(0)
        self.m_all[layer, :, 1:] += m.sum(0)
        for acc, x in ((self.count, valid.double()), (self.a, a), (self.m, m), (self.m2, m * m), (self.g, g),
                       (self.g2, g * g), (self.gm, g * m), (self.write, write), (self.read, read), (self.rest, rest)):
            acc[layer, :, 1:] += kept(x)
        if explicit is not None and self.explicit is not None:
            self.explicit[0][layer, :, 1:] += kept(explicit)
            self.explicit[1][layer, :, 1:] += kept(explicit * explicit)
        # one histogram per head from one bincount: bin + head * (GATE_BINS + 1), unread queries dropped
        n_bins, H = GATE_BINS + 1, g.shape[1]
        idx = (g / (GATE_MAX / GATE_BINS)).nan_to_num(0.0).floor().clamp(0, GATE_BINS).long()
        idx = idx + torch.arange(H, device=idx.device)[None, :, None] * n_bins
        self.hist[layer] += torch.bincount(idx[valid], minlength=H * n_bins).double().view(H, n_bins)

    def add_logits(self, layer: int, lam: Tensor, s: Tensor, c: Tensor, x: Tensor, ok: Tensor,
                   error: Tensor) -> None:
        """[batch, head, query] tensors for queries 1..T-1: the log-odds on the sink ``lam`` = s - c, the
        sink's logit ``s``, the log-sum-exp of the other keys' logits ``c`` and the largest of them ``x``;
        ``ok`` where both weights are > 0; ``error``: how far the pattern is from the softmax of the scores
        (L1 per row, max)."""
        self.logit_layers.add(layer)
        self.logit_error = torch.maximum(self.logit_error, error)
        terms = {"n": torch.ones_like(lam), "lam": lam, "s": s, "c": c, "x": x, "lam2": lam * lam, "lam_s": lam * s,
                 "lam_c": lam * c, "lam_x": lam * x, "s2": s * s, "c2": c * c, "x2": x * x}
        for key in LOGIT_SUMS:
            self.logit[key][layer, :, 1:] += torch.where(ok, terms[key], 0.0).sum(0)

    def add_turn(self, layer: int, lam: Tensor, s: Tensor, u: Tensor, ok: Tensor) -> None:
        """[batch, head, query] tensors for queries 1..T-1 (float64): ``lam`` and ``s`` as in ``add_logits``,
        ``u`` the sink's logit against the fixed key (``_turn_batch``), ``ok`` the queries ``add_logits`` kept."""
        self.turn_layers.add(layer)
        u = torch.where(ok, u, 0.0)
        terms = {"u": u, "u2": u * u, "lam_u": lam * u, "s_u": s * u}
        for key in TURN_SUMS:
            self.turn[key][layer, :, 1:] += torch.where(ok, terms[key], 0.0).sum(0)

    def init_sources(self, n_sources: int, heads: bool = False) -> None:
        L, H, T = self.count.shape
        z = {"dtype": torch.float64, "device": self.count.device}
        self.src = {k: torch.zeros((L, H, n_sources, T), **z) for k in ("u", "u2", "lam_u")}
        self.src_rest = {k: torch.zeros((L, H, T), **z) for k in ("u", "u2", "lam_u")}
        # per earlier head (``turn_sources="heads"``): [L, H, L, H, T] sums of u_c and lam u_c
        self.src_heads = {k: torch.zeros((L, H, L, H, T), **z) for k in ("u", "lam_u")} if heads else None

    def add_head_sources(self, layer: int, lam: Tensor, parts: Tensor, ok: Tensor) -> None:
        """Queries 1..T-1 of one batch: ``parts`` [layer, b, H, T - 1, H'] each earlier head's part of u_t (its
        write z_h W_O[h] as a source), ``lam`` and ``ok`` as in ``add_turn_sources``."""
        if self.src_heads is None:
            return
        parts = torch.where(ok[..., None], parts, 0.0)
        n = parts.shape[0]
        for key, x in (("u", parts), ("lam_u", lam[..., None] * parts)):
            self.src_heads[key][layer, :, :n, :, 1:] += x.sum(1).permute(1, 0, 3, 2)

    def add_turn_sources(self, layer: int, lam: Tensor, parts: Tensor, rest: Tensor, ok: Tensor) -> None:
        """Queries 1..T-1 of one batch (float64): ``lam`` [b, H, T - 1] as in ``add_turn``, ``parts`` [C_l, b, H,
        T - 1] each source's part of u_t (the embedding, then attention and MLP of each earlier block),
        ``rest`` [b, H, T - 1] what they leave of u_t (``_turn_batch``), ``ok`` the queries ``add_logits`` kept."""
        if self.src is None or self.src_rest is None:
            return
        parts = torch.where(ok, parts, 0.0)
        n = parts.shape[0]
        for key, x in (("u", parts), ("u2", parts * parts), ("lam_u", lam * parts)):
            self.src[key][layer, :, :n, 1:] += x.sum(1).transpose(0, 1)
        rest = torch.where(ok, rest, 0.0)
        for key, x in (("u", rest), ("u2", rest * rest), ("lam_u", lam * rest)):
            self.src_rest[key][layer, :, 1:] += x.sum(0)

    def add_targets(self, layer: int, rest: Tensor, m: Tensor, valid: Tensor, cat: Tensor, dist: Tensor) -> None:
        """Where the weight off the sink goes, for queries 1..T-1 of one batch: ``rest`` [b, H, T, T] (the
        pattern without the sink), ``m`` and ``valid`` [b, H, T] as in ``add``, ``cat`` [b, T, T] each key's
        category (``_target_map``; len(TARGETS) for keys that are not counted) and ``dist`` [T, T] each
        key's distance bin (the number of bins for keys after the query)."""
        b, H, T, _ = rest.shape
        C, D = self.t_weight.shape[-1], self.t_dist.shape[-1]
        q, v = slice(1, None), valid[..., 1:, None]
        cats = cat[:, None].expand(b, H, T, T)
        dists = dist[None, None].expand(b, H, T, T)
        for acc, index, n in ((self.t_weight, cats, C), (self.t_dist, dists, D)):
            by = torch.zeros((b, H, T, n + 1), dtype=rest.dtype, device=rest.device).scatter_add_(-1, index, rest)
            acc[layer] += torch.where(v, by[:, :, q, :n], 0.0).sum((0, 2))
        top = rest.argmax(-1, keepdim=True)  # the best-matching key besides the sink
        hot = torch.nn.functional.one_hot(cats.gather(-1, top)[..., 0][:, :, q], C + 1)[..., :C].double() * v
        self.t_top[layer, :, 1:] += hot.sum(0)
        self.t_top_m[layer, :, 1:] += (hot * m[:, :, q, None]).sum(0)
        hot_d = torch.nn.functional.one_hot(dists.gather(-1, top)[..., 0][:, :, q], D + 1)[..., :D].double() * v
        self.t_top_dist[layer] += hot_d.sum((0, 2))

    def add_target_keys(self, cat: Tensor) -> None:
        """Per batch (the same for every head): for queries 1..T-1, how many there are, how many have a key of
        each category, and the share of each category among their keys (what spreading the weight evenly over
        the causal keys besides the sink would give)."""
        C = self.t_keys.shape[-1]
        counts = torch.nn.functional.one_hot(cat[:, 1:], C + 1)[..., :C].sum(2).double()  # [b, T - 1, C]
        total = counts.sum(-1, keepdim=True)
        keep = total[..., 0] > 0
        self.t_keys[0] += keep.sum()
        self.t_keys[1] += ((counts > 0) & keep[..., None]).sum((0, 1))
        self.t_keys[2] += torch.where(keep[..., None], counts / total.clamp_min(1.0), 0.0).sum((0, 1))

    def to_cpu(self) -> _Accumulator:
        self.logit = {k: v.cpu() for k, v in self.logit.items()}
        self.turn = {k: v.cpu() for k, v in self.turn.items()}
        if self.src is not None and self.src_rest is not None:
            self.src = {k: v.cpu() for k, v in self.src.items()}
            self.src_rest = {k: v.cpu() for k, v in self.src_rest.items()}
        if self.src_heads is not None:
            self.src_heads = {k: v.cpu() for k, v in self.src_heads.items()}
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.cpu())
        if self.explicit is not None:
            self.explicit = (self.explicit[0].cpu(), self.explicit[1].cpu())
        return self


def _quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile of a histogram of GATE_BINS bins on [0, GATE_MAX) plus an overflow bin (linear
    within a bin; GATE_MAX when it falls in the overflow)."""
    total = hist.sum()
    if total <= 0:
        return float("nan")
    c = np.cumsum(hist)
    i = int(np.searchsorted(c, q * total, side="left"))
    if i >= GATE_BINS:
        return GATE_MAX
    below = c[i - 1] if i else 0.0
    width = GATE_MAX / GATE_BINS
    return float((i + (q * total - below) / max(hist[i], 1e-300)) * width)


#: at most this many per-query values ([N, L, H, T]) are kept for the by-token table of ``gate_stats``
TOKEN_TABLE_LIMIT = 20_000_000


def gate_stats(model: Any, tokens: Any, *, sink: str = "auto", closed: float = 0.1, batch_size: int = 8,
               token_heads: int = 0, min_count: int = 3, progress: bool = False,
               turn_sources: bool | str = False) -> dict[str, Any]:
    """The measurement part of the study (module docstring): per-head statistics over queries 2..T of
    ``tokens`` [N, T] and the per-position means of m_t and g_t (``mass_pos``, ``gate_pos``, [L][H][T],
    position 0 = query 1 is NaN). With ``token_heads`` > 0, also ``open_tokens``: for that many heads
    whose gate varies most with the content (within a position) among those with at least 10% of their
    weight on the sink, the query tokens (seen at least ``min_count`` times) on which the
    head's weight off the sink, m_t, is largest and smallest on average, and the share of m_t's variance
    that the query token explains (``token_r2``, over the queries whose token is seen that often; it is
    biased up by tokens seen few times: compare heads, not absolute values). Skipped, with a note, past
    TOKEN_TABLE_LIMIT per-query values. ``logit_split`` (module docstring; per head [L][H], over the queries
    with both weights > 0): ``sink_side``, ``top_key_side`` and their ``_within`` versions, the variances
    and covariances they are made of (``logit_var``, ``logit_cov_sink``, ``logit_cov_top``), the spreads of
    the sides (``sink_std``, ``content_std``, ``top_key_std``), the means of the sink's logit and the other
    keys' log-sum-exp (``sink_logit``, ``content_lse``), ``queries``, ``tolerance`` and ``scores_error`` (the
    L1 distance per row between the pattern and the softmax of the scores); None, with
    ``logit_split_note`` saying why, where it cannot be measured. ``targets`` (module docstring): per head
    [L][H][category] ``share``, ``top_count``, ``top_rate``, ``open_by_top``, [L][H][bin] ``distance_share``
    and ``top_distance``, [L][H] ``weight`` (the summed weight off the sink), per category ``available``
    and ``uniform``, and the ``categories``, ``distance_bins`` and ``queries`` they are over.

    ``turn_sources`` (token 1 the sink, the turn measured; one backward per head and layer on each batch):
    ``logit_split["turn_sources"]``, the query's turn u_t split by what writes the query's input (module
    docstring): ``names`` (the embedding, then ``attn l`` and ``mlp l`` of each block), per head and source
    [L][H][C] ``share`` and ``share_within`` (cov(lam, u_c) / var(lam): they sum, with ``rest_share``, to
    ``turn_side``; NaN for a source at or after the head's block) and ``std_within`` (u_c's spread within
    positions), per head ``rest_share`` / ``rest_share_within`` (what no source carries: biases, the
    position; 0 within positions, checked); None, with ``turn_sources_note`` saying why, where it cannot
    be measured. ``turn_sources="heads"`` splits the attention layers further, by head: each earlier head's
    write z_h W_O[h] as a source, ``head_share_within`` [L][H][L'][H'] (NaN for l' >= l; an attention
    layer's share less the sum of its heads' is its output bias's). JSON-ready."""
    if turn_sources not in (False, True, "heads") or not isinstance(turn_sources, (bool, str)):
        raise ValueError(f"turn_sources must be True, False or 'heads', got {turn_sources!r}")
    for arg, val, low in (("token_heads", token_heads, 0), ("min_count", min_count, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {val!r}")
    toks = torch.as_tensor(tokens)
    dims_ok = toks.dim() == 2
    keep = bool(token_heads) and dims_ok and toks.numel() * _layers_heads(model) <= TOKEN_TABLE_LIMIT
    res, seq = _stats(model, tokens, sink=sink, closed=closed, batch_size=batch_size, progress=progress, keep_seq=keep,
                      sources=turn_sources)
    if token_heads:
        if seq is None:
            res["open_tokens"] = None
            res["open_tokens_note"] = (f"skipped: {toks.numel() * _layers_heads(model):,} per-query values past "
                                       f"TOKEN_TABLE_LIMIT = {TOKEN_TABLE_LIMIT:,}")
        else:
            res["open_tokens"] = _open_tokens(res, seq, toks, token_heads, min_count)
    return res


def _layers_heads(model: Any) -> int:
    from sinkinterp import tl_adapter

    dims = tl_adapter.model_dims(model)
    return int(dims["n_layers"] * dims["n_heads"])


def _content_heads(res: dict[str, Any], k: int, floor: float = 0.1) -> list[tuple[int, int]]:
    """The ``k`` heads whose gate varies most within a query position (with the content), among those
    with a mean sink share (``sink_share``) of at least ``floor`` (all heads if none has)."""
    a = sink_share(res)
    w = np.asarray(res["gate_std_within"], dtype=np.float64)
    heads = [lh for lh in np.ndindex(*a.shape) if a[lh] >= floor] or list(np.ndindex(*a.shape))
    return sorted(heads, key=lambda lh: -w[lh])[:k]


def _open_tokens(res: dict[str, Any], seq: Tensor, tokens: Tensor, k: int, min_count: int,
                 shown: int = 8) -> list[dict[str, Any]]:
    """Per head (the ``k`` of ``_content_heads``): mean m_t by query token, the ``shown`` largest and
    smallest (tokens seen at least ``min_count`` times) and the share of variance the token explains."""
    out = []
    for l, h in _content_heads(res, k):
        m = seq[:, l, h, 1:].reshape(-1)
        ids = tokens[:, 1:].reshape(-1).long()
        ok = ~m.isnan()
        m, ids = m[ok], ids[ok]
        uniq, inv, count = torch.unique(ids, return_inverse=True, return_counts=True)
        mean = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, m) / count
        often = count >= min_count
        sel = often[inv]
        r2 = None
        if int(sel.sum()) > 1 and float(m[sel].var()) > 0:
            between = float(((mean[inv][sel] - m[sel].mean()) ** 2).mean())
            r2 = between / float(m[sel].var(unbiased=False))
        order = torch.nonzero(often).flatten()
        order = order[mean[order].argsort(descending=True)]

        table = [{"id": int(uniq[i]), "count": int(count[i]), "m": float(mean[i])} for i in order.tolist()]
        out.append({"head": f"L{l}H{h}", "layer": l, "head_index": h, "sink_mass": res["sink_mass"][l][h],
                    "token_r2": r2, "tokens_seen": int(often.sum()), "min_count": min_count,
                    "open": table[:shown], "closed": table[::-1][:shown]})
    return out


def _stats(model: Any, tokens: Any, *, sink: str, closed: float, batch_size: int, progress: bool = False,
           keep_seq: bool = False, logits: bool = True, targets: bool = True,
           sources: bool | str = False) -> tuple[dict[str, Any], Tensor | None]:
    """``gate_stats``, and with ``keep_seq`` every sequence's m_t too ([N, L, H, T], NaN at query 1 and
    where a head reads nothing besides the sink); without ``logits`` no softmax split (``logit_split``
    None, with a note), without ``targets`` no ``targets`` (None, with a note): the study's half passes
    need only m_t. ``sources``: the turn by source (``gate_stats``'s ``turn_sources``)."""
    from sinkinterp import patching, tl_adapter
    from sinkinterp.measure import validate_tokens

    if not isinstance(closed, (int, float)) or isinstance(closed, bool) or not 0 < closed < GATE_MAX:
        raise ValueError(f"closed must be a number in (0, {GATE_MAX}), got {closed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    n, T = tokens.shape
    if T < 3:
        raise ValueError(f"tokens must have at least 3 positions (queries 2..T read keys besides the sink), got T = {T}")
    sink, slot = _resolve_sink(model, sink)
    L, H = dims["n_layers"], dims["n_heads"]
    names = set(tl_adapter.hook_names(model))
    # attention that does not normalize: the weights are the shares of hook_pattern times hook_row_weight
    weighted = _row_weighted(model)
    need = [f"blocks.{l}.attn.hook_{k}" for l in range(L)
            for k in ("v", "pattern", "z", *(["row_weight"] if weighted else []))]
    missing = [x for x in need if x not in names]
    if missing:
        raise ValueError(f"model has no hook {missing[0]} (the gate study reads hook_v, hook_pattern and hook_z, and "
                         "hook_row_weight where attention does not normalize; see docs/hook-contract.md)")
    gated = all(f"blocks.{l}.attn.hook_gate" in names for l in range(L))
    # the softmax split needs the scores the pattern is the softmax of: not for attention that does not normalize
    scored = logits and all(f"blocks.{l}.attn.hook_attn_scores" in names for l in range(L)) \
        and not _weights_unnormalized(model)
    grams = []
    for l in range(L):
        w_o = tl_adapter.attn_out_weight(model, l)
        if w_o.shape[0] != H:
            raise TypeError(f"model: blocks[{l}].attn.W_O has shape {tuple(w_o.shape)}, expected [n_heads, d_head, d_model]")
        w_o = w_o.detach().double()
        grams.append(w_o @ w_o.transpose(1, 2))  # [H, dh, dh]: ||x W_O||^2 = x G x^T
    acc = _Accumulator(L, H, T, gated, patching._model_device(model))
    acc.logit_wanted, acc.t_wanted = logits, targets
    dist = _distance_map(T, patching._model_device(model)) if targets else None
    cat: list[Tensor | None] = [None]  # this batch's key categories (``_target_map``)
    stash: dict[tuple[int, str], Tensor] = {}
    seq = torch.full((n, L, H, T), float("nan"), dtype=torch.float64) if keep_seq else None
    offset = [0]
    # the sink's logit against a fixed key (``_turn_batch``): token 1 as the sink, the split measured, hook_k there
    turn_ok = scored and sink == "first" and all(f"blocks.{l}.attn.hook_k" in names for l in range(L))
    # k_mean: token 1's key per layer averaged over the texts (None once the second pass fails); rows: this
    # batch's raw first score column, lam, s and ok per layer; keys / logits: how far token 1's keys were from
    # their mean and u_t from s_t, over batches (``_turn_batch``)
    # (device tensors: no host synchronisation per layer)
    zero = torch.zeros((), dtype=torch.float64, device=patching._model_device(model))
    turn: dict[str, Any] = {"k_mean": None, "rows": {}, "keys": zero, "logits": zero, "sources": False}
    if sources:
        acc.src_wanted = True
        parts = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "ln1.hook_scale")
        lacking = [f"blocks.{l}.{x}" for l in range(L) for x in parts if f"blocks.{l}.{x}" not in names]
        size = L * H * (2 * L + 1) * T + (L * H * L * H * T if sources == "heads" else 0)
        if not turn_ok:
            acc.src_note = "the sink's logit against a fixed key is not measured here (see turn_note)"
        elif lacking:
            acc.src_note = (f"the model has no hook {lacking[0]} (the sources of the turn read hook_resid_pre, "
                            "hook_attn_out, hook_mlp_out and ln1.hook_scale in every block)")
        elif size > TURN_SOURCE_LIMIT:
            acc.src_note = f"skipped: {size:,} per-position sums past TURN_SOURCE_LIMIT = {TURN_SOURCE_LIMIT:,}"
        else:
            acc.init_sources(2 * L + 1, heads=sources == "heads")
            turn["sources"] = True
            if sources == "heads":  # each head's W_O, to split an attention layer's write by head
                turn["w_o"] = [tl_adapter.attn_out_weight(model, l).detach() for l in range(L)]
    pattern_dtype = [torch.float64]

    def keep(layer: int, kind: str) -> Any:
        def hook(act: Tensor, hook: Any = None) -> None:
            stash[(layer, kind)] = act.detach()

        return hook

    def on_z(layer: int) -> Any:
        def hook(z: Tensor, hook: Any = None) -> None:
            try:
                pattern_dtype[0] = stash[(layer, "pattern")].dtype
                p, v = stash.pop((layer, "pattern")).double(), stash.pop((layer, "v")).double()
            except KeyError:
                raise RuntimeError(f"blocks.{layer}.attn.hook_z fired before hook_v / hook_pattern of its layer; "
                                   "the gate study needs them first (docs/hook-contract.md)") from None
            b = p.shape[0]
            if slot == "hook":
                share = stash.pop((layer, "bias"), None)  # a layer without a slot may leave it silent: weight 0
                slot_w = torch.zeros_like(p[..., 0]) if share is None else share.double().reshape(b, H, -1)
            elif slot == "rows":
                slot_w = (1.0 - p.sum(-1)).clamp_min(0.0)
            else:
                slot_w = torch.zeros_like(p[..., 0])
            row_error = (p.sum(-1) + slot_w - 1.0)[..., 1:].abs().max()  # of the shares: 0 where they are shares
            share = p[..., 0] if sink == "first" else slot_w  # the sink's share of the row's weight
            if weighted:  # shares -> the weights the head applies
                row = stash.pop((layer, "row")).double().reshape(b, H, -1)
                p, slot_w = p * row[..., None], slot_w * row
            if v.shape[2] != H:  # grouped keys / values: one value head per group of query heads
                v = v.repeat_interleave(H // v.shape[2], dim=2)
            vh, zh = v.transpose(1, 2), z.detach().double().transpose(1, 2)  # [b, H, T, dh]
            rest = p.clone()
            if sink == "first":
                a = p[..., 0]
                rest[..., 0] = 0.0
            else:
                a = slot_w
            m = rest.sum(-1)
            o = (rest @ vh) / m.clamp_min(_TINY)[..., None]
            gram = grams[layer].to(zh.device)

            def norm(x: Tensor) -> Tensor:
                return torch.einsum("bhtd,hde,bhte->bht", x, gram, x).clamp_min(0.0).sqrt()

            write, read = norm(zh), norm(o)
            resid = norm(zh - m[..., None] * o)
            valid = (m > _TINY) & (read > _TINY)
            g = write / read.clamp_min(_TINY)
            explicit = None
            if gated:
                gate = stash.pop((layer, "gate")).double().transpose(1, 2)
                explicit = write / norm(zh / gate.clamp_min(_TINY)).clamp_min(_TINY)
            q = slice(1, None)
            scores = stash.pop((layer, "scores"), None)
            if scores is not None:
                for dt in (scores.dtype, pattern_dtype[0]):
                    if dt.is_floating_point:
                        acc.logit_tolerance = max(acc.logit_tolerance, 4 * torch.finfo(dt).eps)
                lam, s_logit, ok = _add_logit_sides(acc, layer, scores, rest, a, m)
                if turn["k_mean"] is not None:  # what the second pass needs: the raw column 1 (to give back), lam, s, ok
                    turn["rows"][layer] = (scores[..., 0].clone(), lam, s_logit, ok)
            acc.add(layer, a[..., q], m[..., q], g[..., q], write[..., q], read[..., q], resid[..., q], valid[..., q],
                    None if explicit is None else explicit[..., q], row_error, share[..., q])
            if cat[0] is not None:
                acc.add_targets(layer, rest, m, valid, cat[0].to(rest.device), dist.to(rest.device))
            if seq is not None:
                seq[offset[0]:offset[0] + b, layer, :, 1:] = torch.where(m > _TINY, m, float("nan"))[..., 1:].cpu()

        return hook

    hooks: list[tuple[str, Any]] = []
    for l in range(L):
        hooks += [(f"blocks.{l}.attn.hook_v", keep(l, "v")), (f"blocks.{l}.attn.hook_pattern", keep(l, "pattern"))]
        if slot == "hook":
            hooks.append((f"blocks.{l}.attn.hook_bias_pattern", keep(l, "bias")))
        if gated:
            hooks.append((f"blocks.{l}.attn.hook_gate", keep(l, "gate")))
        if scored:
            hooks.append((f"blocks.{l}.attn.hook_attn_scores", keep(l, "scores")))
        if weighted:
            hooks.append((f"blocks.{l}.attn.hook_row_weight", keep(l, "row")))
        hooks.append((f"blocks.{l}.attn.hook_z", on_z(l)))
    device = patching._model_device(model)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="gate", unit="batch")
    with patching._eval_mode(model), torch.no_grad():
        if turn_ok:
            turn["k_mean"] = _first_key_mean(model, tokens, L, batch_size, device)
            acc.turn_note = None
        elif scored:
            acc.turn_note = "the sink is not token 1" if sink != "first" else "the model has no hook_k in every layer"
        for s in starts:
            stash.clear()
            offset[0] = s
            batch = tokens[s:s + batch_size].to(device)
            if targets:
                cat[0] = _target_map(batch, sink == "first")
                acc.add_target_keys(cat[0])
            # the logits are read only to check the turn's second pass: otherwise the last position alone is unembedded
            cut = None if turn["k_mean"] is not None else [batch.shape[1] - 1]
            with tl_adapter.attached_hooks(model, hooks), tl_adapter.unembed_positions(model, cut):
                out = model(batch)
            if turn["k_mean"] is not None:
                note = _turn_batch(model, batch, turn, _digest(out), acc, L)
                if note is not None:  # the split of the sink's side is left out: no later batch adds to it
                    acc.turn_note, turn["k_mean"] = note, None
                    acc.turn_layers.clear()
            turn["rows"].clear()
    if turn["k_mean"] is not None and float(turn["keys"]) > 1e-6 and float(turn["logits"]) == 0.0:
        acc.turn_layers.clear()
        acc.turn_note = "token 1's key at hook_k differs between texts but the scores did not move: hook_k edits do not act"
    return _finish(acc, sink, slot, closed, gated, _weights_unnormalized(model), weighted), seq


def _digest(out: Any) -> Tensor | None:
    """A forward pass's logits, summed over the vocabulary ([batch, pos], float64): what ``_turn_batch``
    compares to tell that its second pass is the first one again; None where the output holds no logits."""
    logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    return logits.detach().sum(-1, dtype=torch.float64) if isinstance(logits, Tensor) else None


TURN_TOLERANCE = 1e-6  # the second pass's logits (summed over the vocabulary) against the first's, relative
#: the same with ln1's scale held (``turn_sources``): a bridge then rebuilds its norms' outputs from the held
#: scale instead of running Hugging Face's own norm, which rounds differently in float32 (1.5e-6 on SmolLM2's
#: English windows, 1.1e-5 on its Debian-text windows: checked only as an upper bound, not traced to its cause)
HELD_TOLERANCE = 1e-4


def _first_key_mean(model: Any, tokens: Tensor, L: int, batch_size: int, device: Any) -> dict[int, Tensor]:
    """Token 1's key at each layer's hook_k, averaged over the texts (float64): the fixed key of the second
    pass (``_turn_batch``), from a pass over ``tokens`` that observes hook_k alone."""
    from sinkinterp import tl_adapter

    sums: dict[int, Tensor] = {}

    def on_k(layer: int) -> Any:
        def hook(k: Tensor, hook: Any = None) -> None:
            first = k.detach()[:, 0].double().sum(0)
            sums[layer] = sums[layer] + first if layer in sums else first

        return hook

    with tl_adapter.attached_hooks(model, [(f"blocks.{l}.attn.hook_k", on_k(l)) for l in range(L)]):
        for s in range(0, tokens.shape[0], batch_size):
            with tl_adapter.unembed_positions(model, [tokens.shape[1] - 1]):  # no logits read
                model(tokens[s:s + batch_size].to(device))
    return {l: x / tokens.shape[0] for l, x in sums.items()}


def _turn_batch(model: Any, batch: Tensor, turn: dict[str, Any], digest: Tensor | None, acc: _Accumulator,
                L: int) -> str | None:
    """The second pass of the softmax split (module docstring) over one batch: each layer's hook_k gets
    ``turn["k_mean"]`` in place of token 1's key, hook_attn_scores records column 1 (u_t: the query against
    that fixed key) and gives back the first pass's column (``turn["rows"]``), so every layer sees the first
    pass's residual stream. Adds u_t to ``acc`` and returns None, or why the split must be left out (no
    logits to check against, or the logits changed: the model does not use what hook_attn_scores returns).

    With ``turn["sources"]``, u_t is also split by where the query's input comes from: each block's residual
    input x_t (hook_resid_pre) is made a leaf of autograd and ln1's scale (hook_scale) is held, so u_t is
    affine in x_t, u_t = g_t . x_t + b_t with g_t = du_t/dx_t (one backward per head, from u_t to the leaf
    only); x_t is the sum of the embedding (block 0's hook_resid_pre) and each earlier block's hook_attn_out
    and hook_mlp_out (checked), so source c's part is g_t . x_c. b_t, the rest (a query or norm bias, a
    position's rotation of it), may depend on the position but not on the text: checked in ``_logit_split``."""
    from sinkinterp import tl_adapter

    if digest is None:
        return "the model's forward returned no logits to check the second pass against"
    rows, k_mean = turn["rows"], turn["k_mean"]
    sourced = bool(turn["sources"]) and acc.src is not None
    parts: list[Tensor] = []  # the sources seen so far this pass: embedding, attn 0, mlp 0, attn 1, ... ([b, T, d])
    zs: list[Tensor] = []  # with per-head sources: each earlier layer's hook_z ([b, T, H, d_head])
    leaves: dict[int, Tensor] = {}
    total: list[Tensor] = []  # their running sum (float64)

    def on_k(layer: int) -> Any:
        def hook(k: Tensor, hook: Any = None) -> Tensor:
            mean = k_mean[layer].to(k.device)
            moved = (k.detach()[:, 0].double() - mean).abs().max() / mean.abs().max().clamp_min(1e-30)
            turn["keys"] = torch.maximum(turn["keys"], moved)
            out = k.clone()  # (hook_k may be a view of a fused projection: not edited in place)
            out[:, 0] = mean.to(k.dtype)
            return out

        return hook

    def on_scores(layer: int) -> Any:
        def hook(scores: Tensor, hook: Any = None) -> Tensor:
            raw, lam, s, ok = rows.pop(layer)
            u = scores[..., 0].detach().double()
            q = slice(1, None)
            turn["logits"] = torch.maximum(turn["logits"], torch.where(ok, (u - s).abs(), 0.0).max())
            acc.add_turn(layer, lam[..., q], s[..., q], u[..., q], ok[..., q])
            if sourced:
                _add_sources(acc, layer, scores, leaves.pop(layer), parts[:2 * layer + 1], lam, u, ok,
                             (zs[:layer], turn["w_o"][:layer]) if acc.src_heads is not None else None)
            scores = scores.detach()
            scores[..., 0] = raw  # in place: the scores are this pass's own fresh T x T tensor
            return scores

        return hook

    def on_resid(layer: int) -> Any:
        def hook(x: Tensor, hook: Any = None) -> Tensor:
            xd = x.detach()
            if layer == 0:
                parts.append(xd)
                total.append(xd.double())
            else:  # the block's input against the sum of the sources before it
                err = (xd.double() - total[0]).norm(dim=-1) / xd.double().norm(dim=-1).clamp_min(1e-30)
                acc.src_additive = torch.maximum(acc.src_additive, err.max())
            leaves[layer] = xd.clone().requires_grad_(True)
            return leaves[layer]

        return hook

    def on_source(layer: int, kind: str) -> Any:
        def hook(x: Tensor, hook: Any = None) -> None:
            if len(parts) != 2 * layer + (1 if kind == "attn" else 2):  # the hooks fire in the order of the sources
                acc.src_additive = torch.full_like(acc.src_additive, float("inf"))
            parts.append(x.detach())
            total[0] = total[0] + x.detach().double()

        return hook

    def held(x: Tensor, hook: Any = None) -> Tensor:
        return x.detach()

    def on_z(layer: int) -> Any:
        def hook(z: Tensor, hook: Any = None) -> None:
            if len(zs) != layer:  # the layers fire in order
                acc.src_additive = torch.full_like(acc.src_additive, float("inf"))
            zs.append(z.detach())

        return hook

    hooks = [(f"blocks.{l}.attn.hook_{kind}", fn(l)) for l in range(L)
             for kind, fn in (("k", on_k), ("attn_scores", on_scores))]
    if sourced:
        hooks += [(f"blocks.{l}.{name}", fn) for l in range(L) for name, fn in (
            ("hook_resid_pre", on_resid(l)), ("ln1.hook_scale", held), ("hook_attn_out", on_source(l, "attn")),
            ("hook_mlp_out", on_source(l, "mlp")))]
        if acc.src_heads is not None:
            hooks += [(f"blocks.{l}.attn.hook_z", on_z(l)) for l in range(L)]
    with tl_adapter.attached_hooks(model, hooks), torch.set_grad_enabled(sourced), warnings.catch_warnings():
        # a bridge warns that a held norm scale makes it rebuild the norm's output: the logits are checked below
        warnings.filterwarnings("ignore", message=".*edited hook_scale.*")
        again = _digest(model(batch))
    worst = float((again - digest).abs().max() / digest.abs().max().clamp_min(1.0))
    if worst > (HELD_TOLERANCE if sourced else TURN_TOLERANCE) or rows:
        return (f"the second pass did not reproduce the first (logits off by {worst:.2g}, relative, over "
                f"{HELD_TOLERANCE if sourced else TURN_TOLERANCE:.0e}): the model does not use what its hooks "
                "return, or rounds otherwise with them")
    return None


def _add_sources(acc: _Accumulator, layer: int, scores: Tensor, leaf: Tensor, parts: list[Tensor], lam: Tensor,
                 u: Tensor, ok: Tensor, heads: tuple[list[Tensor], list[Tensor]] | None = None) -> None:
    """Split this layer's u_t (column 1 of ``scores``, computed from ``leaf``, the block's residual input with
    ln1's scale held) by source (``_turn_batch``): g_t = du_t/dx_t per head, then g_t . x_c for each source
    in ``parts``, and the rest u_t - sum_c g_t . x_c; adds them to ``acc``. ``heads``: each earlier layer's
    hook_z and W_O, whose heads' writes z_h W_O[h] are sources too (g_t W_O[h]^T . z_h)."""
    col = scores[..., 0]  # [b, H, T]
    grads = []
    for h in range(col.shape[1]):
        g = torch.autograd.grad(col[:, h].sum(), leaf, retain_graph=True, allow_unused=True)[0] \
            if col.requires_grad else None
        grads.append(torch.zeros_like(leaf) if g is None else g)
    dtype = leaf.dtype
    if dtype.is_floating_point:
        acc.src_tolerance = max(acc.src_tolerance, 4 * torch.finfo(dtype).eps)
    g = torch.stack(grads, 1).double()  # [b, H, T, d]
    split = torch.stack([torch.einsum("bhtd,btd->bht", g, x.double()) for x in parts])  # [C_l, b, H, T]
    q = slice(1, None)
    acc.add_turn_sources(layer, lam[..., q], split[..., q], (u - split.sum(0))[..., q], ok[..., q])
    if heads is not None and layer > 0:
        per = torch.stack([torch.einsum("bhtkj,btkj->bhtk", torch.einsum("bhtd,kjd->bhtkj", g, w.double().to(g.device)),
                                        z.double()) for z, w in zip(*heads, strict=True)])  # [layer, b, H, T, H']
        acc.add_head_sources(layer, lam[..., q], per[..., q, :], ok[..., q])


def _add_logit_sides(acc: _Accumulator, layer: int, scores: Tensor, rest: Tensor, a: Tensor,
                     m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split each query's log-odds on the sink, lam_t = log(a_t / m_t), into the sink's logit and the
    other keys' log-sum-exp: with softmax, lam_t = s_t - c_t, c_t = logsumexp of the scores of the keys
    with weight in ``rest`` ([b, H, T, T]: the pattern without the sink), and s_t = lam_t + c_t the
    sink's logit on the same scale (token 1's score, or the bias slot's). ``scores``: hook_attn_scores.
    Returns lam, s and ok ([b, H, T], every query) for ``_turn_batch``."""
    sc = scores.double()
    visible = rest > 0  # a key whose weight underflowed to 0 adds nothing to the log-sum-exp either
    masked = torch.where(visible, sc, float("-inf"))
    c = torch.logsumexp(masked, -1)
    ok = (a > _TINY) & (m > _TINY) & c.isfinite()
    c = torch.where(ok, c, 0.0)
    top = torch.where(ok, masked.amax(-1), 0.0)  # the best-matching other key's logit
    lam = torch.where(ok, a.clamp_min(_TINY).log() - m.clamp_min(_TINY).log(), 0.0)
    soft = torch.where(visible, (masked - c[..., None]).exp() * m[..., None], 0.0)
    error = torch.where(ok, (soft - rest).abs().sum(-1), 0.0).max()
    q = slice(1, None)
    acc.add_logits(layer, lam[..., q], (lam + c)[..., q], c[..., q], top[..., q], ok[..., q], error)
    return lam, lam + c, ok


def _logit_split(acc: _Accumulator, n_layers: int, normalized: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The per-head softmax split (``gate_stats``'s ``logit_split``), or None and why not."""
    if not acc.logit_wanted:
        return None, "not asked for"
    if not normalized:
        return None, "the attention does not normalize: its weights are not a softmax of the scores"
    if len(acc.logit_layers) != n_layers:
        return None, "the model did not fire hook_attn_scores in every layer"
    error = float(acc.logit_error)
    if error > acc.logit_tolerance:
        return None, (f"the pattern is not the softmax of hook_attn_scores (L1 error {error:.2g} per row): e.g. a "
                      "normalized sigmoid or elu+1 kernel, or scores hooked before a soft cap")
    g = {**acc.logit, **acc.turn}  # the turn sums are zero where no second pass ran
    n = g["n"].sum(-1)
    nan = torch.full_like(n, float("nan"))

    def cov(x: str, y: str, xy: str, within: bool) -> Tensor:
        if within:  # around each position's mean, pooled over positions
            return (g[xy] - g[x] * g[y] / g["n"].clamp_min(1.0)).sum(-1) / n.clamp_min(1.0)
        return (g[xy].sum(-1) - g[x].sum(-1) * g[y].sum(-1) / n.clamp_min(1.0)) / n.clamp_min(1.0)

    out: dict[str, Any] = {"queries": n.tolist(), "scores_error": error, "tolerance": acc.logit_tolerance,
                           "sink_logit": (g["s"].sum(-1) / n.clamp_min(1.0)).tolist(),
                           "content_lse": (g["c"].sum(-1) / n.clamp_min(1.0)).tolist()}
    turned = len(acc.turn_layers) == n_layers  # the second pass ran: the sink's side splits once more
    if not turned:
        out["turn_note"] = acc.turn_note or "not measured"
    for suffix, within in (("", False), ("_within", True)):
        var, cs, cx = cov("lam", "lam", "lam2", within), cov("lam", "s", "lam_s", within), cov("lam", "x", "lam_x", within)
        keep = (n >= 2) & (var > 1e-20)
        out["sink_side" + suffix] = torch.where(keep, cs / var.clamp_min(1e-300), nan).tolist()
        # the other keys' side, -cov(lam, c) / var, split as c = x + (c - x): the best key's logit and the spread
        out["top_key_side" + suffix] = torch.where(keep, -cx / var.clamp_min(1e-300), nan).tolist()
        out["logit_var" + suffix] = torch.where(n >= 2, var.clamp_min(0.0), nan).tolist()
        out["logit_cov_sink" + suffix] = torch.where(n >= 2, cs, nan).tolist()
        out["logit_cov_top" + suffix] = torch.where(n >= 2, cx, nan).tolist()
        for key, name in (("s", "sink_std"), ("c", "content_std"), ("x", "top_key_std")):
            out[name + suffix] = torch.where(n >= 2, cov(key, key, f"{key}2", within).clamp_min(0.0).sqrt(), nan).tolist()
        if turned:  # the sink's side, cov(lam, s), as the query's turn (a fixed key) and token 1's own key
            cu = cov("lam", "u", "lam_u", within)
            out["turn_side" + suffix] = torch.where(keep, cu / var.clamp_min(1e-300), nan).tolist()
            out["identity_side" + suffix] = torch.where(keep, (cs - cu) / var.clamp_min(1e-300), nan).tolist()
            out["logit_cov_turn" + suffix] = torch.where(n >= 2, cu, nan).tolist()
            # var(u) and var(s - u) = var(s) + var(u) - 2 cov(s, u)
            vu = cov("u", "u", "u2", within)
            vd = cov("s", "s", "s2", within) + vu - 2 * cov("s", "u", "s_u", within)
            out["turn_std" + suffix] = torch.where(n >= 2, vu.clamp_min(0.0).sqrt(), nan).tolist()
            out["identity_std" + suffix] = torch.where(n >= 2, vd.clamp_min(0.0).sqrt(), nan).tolist()
    if acc.src_wanted:
        vu = cov("u", "u", "u2", True) if turned else None
        out["turn_sources"], note = _turn_sources(acc, g, vu, n_layers)
        if note:
            out["turn_sources_note"] = note
    return out, None


def _turn_sources(acc: _Accumulator, g: dict[str, Tensor], var_u: Tensor | None,
                  n_layers: int) -> tuple[dict[str, Any] | None, str | None]:
    """``logit_split``'s ``turn_sources`` from the sums of ``add_turn_sources``, or None and why not.
    ``g``: the split's sums, ``var_u``: u_t's variance within positions per head (None: no second pass)."""
    if var_u is None:
        return None, f"the sink's logit against a fixed key is not measured ({acc.turn_note or 'not measured'})"
    if acc.src is None or acc.src_rest is None:
        return None, acc.src_note or "not measured"
    additive = float(acc.src_additive)
    if not additive <= acc.src_tolerance:
        return None, (f"the residual stream entering a block is not the sum of the embedding and the earlier blocks' "
                      f"hook_attn_out and hook_mlp_out (off by {additive:.2g}, relative): e.g. a post-norm model, or "
                      "hooks that fire out of the blocks' order")
    nan = float("nan")
    n_pos, lam_pos = g["n"], g["lam"]

    def split(sums: dict[str, Tensor], np_: Tensor, lp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Over all queries and within positions: cov(lam, x) and within positions var(x)."""
        n, c = np_.sum(-1).clamp_min(1.0), np_.clamp_min(1.0)
        cov_all = (sums["lam_u"].sum(-1) - lp.sum(-1) * sums["u"].sum(-1) / n) / n
        cov_in = (sums["lam_u"] - lp * sums["u"] / c).sum(-1) / n
        var_in = (sums["u2"] - sums["u"] ** 2 / c).sum(-1) / n
        return cov_all, cov_in, var_in

    n = n_pos.sum(-1)
    c = n.clamp_min(1.0)
    var_lam = {False: (g["lam2"].sum(-1) - g["lam"].sum(-1) ** 2 / c) / c,
               True: (g["lam2"] - g["lam"] ** 2 / n_pos.clamp_min(1.0)).sum(-1) / c}
    rest_all, rest_in, rest_var = split(acc.src_rest, n_pos, lam_pos)
    # the rest must not move with the text: its spread within positions against u_t's
    ratio = rest_var.clamp_min(0.0).sqrt() / var_u.clamp_min(0.0).sqrt().clamp_min(1e-30)
    moving = torch.where((n >= 2) & (var_u > 1e-20), ratio, 0.0).max()
    if float(moving) > acc.src_tolerance:
        return None, (f"what the sources leave of u_t changes with the text ({float(moving):.2g} of u_t's spread "
                      "within positions): the query is not affine in the block's residual input with ln1's scale "
                      "held (a norm on the queries themselves, or a model that ignores what ln1.hook_scale returns)")
    src_all, src_in, src_var = split(acc.src, n_pos[:, :, None], lam_pos[:, :, None])
    C = src_all.shape[-1]
    upstream = torch.arange(C)[None, None, :] < (2 * torch.arange(n_layers) + 1)[:, None, None]  # [L, 1, C]
    names = ["embed"] + [f"{kind} {l}" for l in range(n_layers) for kind in ("attn", "mlp")]
    out: dict[str, Any] = {"names": names, "additive_error": additive, "rest_error": float(moving),
                           "tolerance": acc.src_tolerance}
    for suffix, within in (("", False), ("_within", True)):
        var = var_lam[within]
        keep = (n >= 2) & (var > 1e-20)
        x = src_in if within else src_all
        out["share" + suffix] = torch.where(keep[..., None] & upstream, x / var.clamp_min(1e-300)[..., None],
                                            nan).tolist()
        out["rest_share" + suffix] = torch.where(keep, (rest_in if within else rest_all) / var.clamp_min(1e-300),
                                                 nan).tolist()
    out["std_within"] = torch.where((n >= 2)[..., None] & upstream, src_var.clamp_min(0.0).sqrt(), nan).tolist()
    if acc.src_heads is not None:  # each earlier head's write as a source, within positions: [L, H, L', H']
        hs = acc.src_heads
        cov = (hs["lam_u"] - lam_pos[:, :, None, None] * hs["u"] / n_pos[:, :, None, None].clamp_min(1.0)).sum(-1) / c[
            ..., None, None]
        earlier = torch.arange(n_layers)[None, None, :, None] < torch.arange(n_layers)[:, None, None, None]
        keep = ((n >= 2) & (var_lam[True] > 1e-20))[..., None, None] & earlier
        out["head_share_within"] = torch.where(keep, cov / var_lam[True].clamp_min(1e-300)[..., None, None],
                                               nan).tolist()
    return out, None


def _targets(acc: _Accumulator) -> dict[str, Any]:
    """Where each head's weight off the sink goes (``gate_stats``'s ``targets``), from the sums of
    ``add_targets`` and ``add_target_keys``."""
    nan = float("nan")
    T = acc.t_top.shape[2]
    weight = acc.t_weight.sum(-1)
    top_n = acc.t_top.sum(2)  # [L, H, C]
    # each query's m_t against the mean m_t of its (layer, head, position) over the queries measured
    pos_mean = torch.where(acc.count > 0, acc.m / acc.count.clamp_min(1.0), 0.0)
    dev = (acc.t_top_m - acc.t_top * pos_mean[..., None]).sum(2)
    queries, with_key, uniform = acc.t_keys
    labels, _ = distance_bins(T)

    def ratio(x: Tensor, y: Tensor) -> list[Any]:
        return torch.where(y > 0, x / y.clamp_min(1e-300), nan).tolist()

    return {"categories": list(TARGETS), "distance_bins": labels,
            "weight": weight.tolist(), "share": ratio(acc.t_weight, weight[..., None]),
            "top_count": top_n.tolist(), "top_rate": ratio(top_n, top_n.sum(-1, keepdim=True)),
            "open_by_top": ratio(dev, top_n),
            "distance_share": ratio(acc.t_dist, acc.t_dist.sum(-1, keepdim=True)),
            "top_distance": ratio(acc.t_top_dist, acc.t_top_dist.sum(-1, keepdim=True)),
            "queries": int(queries[0]), "available": ratio(with_key, queries), "uniform": ratio(uniform, queries)}


def _finish(acc: _Accumulator, sink: str, slot: str | None, closed: float, gated: bool,
            unnormalized: bool, weighted: bool) -> dict[str, Any]:
    shares = unnormalized and not weighted  # m_t a share of the row, not the weight the head applies
    acc = acc.to_cpu()
    row_error = float(acc.row_error)
    cnt = acc.count.sum(-1)
    c = cnt.clamp_min(1.0)

    def mean(x: Tensor) -> Tensor:
        return x.sum(-1) / c

    nan = float("nan")
    none = cnt == 0  # heads that read nothing besides the sink on every query: no gate to measure

    def per_head(x: Tensor) -> Tensor:
        return torch.where(none, torch.full_like(x, nan), x)

    g_mean, m_mean = mean(acc.g), mean(acc.m)
    g_var = (mean(acc.g2) - g_mean ** 2).clamp_min(0.0)
    m_var = (mean(acc.m2) - m_mean ** 2).clamp_min(0.0)
    cov = mean(acc.gm) - g_mean * m_mean
    corr = torch.where((g_var > 1e-20) & (m_var > 1e-20), cov / (g_var * m_var).clamp_min(1e-40).sqrt(),
                       torch.full_like(cov, float("nan")))
    # within a position: the variance of g around that position's mean, pooled over positions
    pc = acc.count.clamp_min(1.0)
    g_pos, m_pos = acc.g / pc, acc.m / pc
    within = ((acc.g2 - acc.count * g_pos ** 2).clamp_min(0.0)).sum(-1) / c
    g_pos = torch.where(acc.count > 0, g_pos, torch.full_like(g_pos, nan))
    # the weights over every query (a query that reads nothing besides the sink has m_t = 0)
    all_c = acc.count_all.sum(-1).clamp_min(1.0)
    m_pos = torch.where(acc.count_all > 0, acc.m_all / acc.count_all.clamp_min(1.0), torch.full_like(acc.m_all, nan))
    hist = acc.hist.numpy()
    L, H = cnt.shape
    closed_bins = int(np.floor(closed / (GATE_MAX / GATE_BINS)))
    quant = {f"gate_q{int(q * 100)}": [[_quantile(hist[l, h], q) for h in range(H)] for l in range(L)]
             for q in (0.1, 0.5, 0.9)}

    def out(x: Tensor) -> list[Any]:
        return x.tolist()

    res: dict[str, Any] = {
        "sink": sink, "slot": slot, "normalized": bool(row_error < 1e-2 and not unnormalized),
        "pattern_is_share": shares, "weights_from_row_weight": weighted, "row_error": row_error,
        "closed": closed, "queries_per_head": out(cnt),
        "sink_mass": out(acc.a_all.sum(-1) / all_c), "mass": out(acc.m_all.sum(-1) / all_c),
        "sink_share": out(acc.share_all.sum(-1) / all_c),
        "gate": out(per_head(g_mean)), "gate_std": out(per_head(g_var.sqrt())),
        "gate_std_within": out(per_head(within.sqrt())), "corr_gate_mass": out(corr),
        "value_share": out(per_head(acc.rest.sum(-1) / acc.write.sum(-1).clamp_min(1e-300))),
        "write_norm": out(per_head(mean(acc.write))), "read_norm": out(per_head(mean(acc.read))),
        "closed_share": [[float(hist[l, h, :closed_bins].sum() / max(hist[l, h].sum(), 1.0)) for h in range(H)]
                         for l in range(L)],
        **quant,
        "mass_pos": out(m_pos), "gate_pos": out(g_pos),
    }
    if shares:  # m_t is a share, not the weight the head applies: the split of the write is not defined
        blank = [[None] * H for _ in range(L)]
        res["corr_gate_mass"], res["value_share"] = blank, [list(r) for r in blank]
    res["logit_split"], note = _logit_split(acc, L, res["normalized"])
    if note:
        res["logit_split_note"] = note
    res["targets"] = _targets(acc) if acc.t_wanted else None
    if not acc.t_wanted:
        res["targets_note"] = "not asked for"
    if gated and acc.explicit is not None:
        e_mean = per_head(mean(acc.explicit[0]))
        res["explicit_gate"] = out(e_mean)
        res["explicit_gate_std"] = out((mean(acc.explicit[1]) - e_mean ** 2).clamp_min(0.0).sqrt())
    return res


def _gate_edit(targets: Any, sink: str, normalized: bool, name: str, description: str,
               params: dict[str, Any]) -> Any:
    """An intervention that sets each query's weight on the non-sink keys, m_t, to ``targets(p, layer)``
    ([batch, head, query]; NaN leaves a row alone), scaling the other keys' weights together; with
    ``normalized`` the sink takes the difference, so rows keep their total (softmax), otherwise the
    sink's weight is kept and the targets are weights: the pattern's shares times ``hook_row_weight``
    where the model has it (attention that does not normalize), the pattern itself elsewhere. Query 1 is
    always left alone."""
    from sinkinterp import tl_adapter
    from sinkinterp.interventions import Intervention

    if sink not in ("first", "slot"):
        raise ValueError(f"sink: got {sink!r}, allowed values are ['first', 'slot']")
    stash: dict[int, Tensor] = {}
    rows: dict[int, Tensor] = {}  # each layer's hook_row_weight in this pass, where the weights need it

    def row_weight(act: Tensor, layer: int) -> Tensor:
        rows[layer] = act.detach()
        return act

    def pattern(act: Tensor, layer: int) -> Tensor:
        p = act.to(torch.promote_types(act.dtype, torch.float64))
        t = targets(p, layer).to(p.device, p.dtype).clone()
        t[..., 0] = float("nan")  # query 1
        target, edit = t.nan_to_num(0.0), ~t.isnan()
        rest = p.clone()
        if sink == "first":
            rest[..., 0] = 0.0
        m = rest.sum(-1)
        if not normalized and layer in rows:  # the weight on the other keys, not their share
            m = m * rows.pop(layer).to(p.device, p.dtype).reshape(m.shape)
        edit = edit & (m > _TINY)
        scale = torch.where(edit, target / m.clamp_min(_TINY), 1.0)
        out = p * scale[..., None]
        if sink == "first":
            moved = torch.where(edit, m - target, 0.0) if normalized else torch.zeros_like(m)
            out[..., 0] = (p[..., 0] + moved).clamp_min(0.0)
        else:
            slot = (1.0 - p.sum(-1)).clamp_min(0.0)
            stash[layer] = (slot + torch.where(edit, m - target, 0.0)).clamp_min(0.0) if normalized else slot
        return out.to(act.dtype)

    def bias_pattern(act: Tensor, layer: int) -> Tensor:
        if layer not in stash:
            raise RuntimeError(f"blocks.{layer}.attn.hook_bias_pattern fired before hook_pattern (docs/hook-contract.md)")
        return stash.pop(layer).reshape(act.shape).to(act.dtype)

    def edits(model: Any, has_slot: bool) -> tuple[tuple[str, Any], ...]:
        if sink == "slot" and not has_slot:
            raise ValueError(f"{name}(sink='slot'): the model has no bias slot")
        out = (("pattern", pattern), ("bias_pattern", bias_pattern)) if has_slot else (("pattern", pattern),)
        if not normalized and "blocks.0.attn.hook_row_weight" in set(tl_adapter.hook_names(model)):
            out = (*out, ("row_weight", row_weight))  # fires before hook_pattern (docs/hook-contract.md)
        return out

    return Intervention(name, description, ("pattern",), edits, needs_slot=sink == "slot",
                        params={"sink": sink, "normalized": normalized, **params})


def _check_table(table: Tensor, p: Tensor, layer: int, name: str) -> None:
    if layer >= table.shape[-3] or p.shape[1] != table.shape[-2]:
        raise ValueError(f"{name}: the table is [{table.shape[-3]} layers, {table.shape[-2]} heads]; "
                         f"blocks.{layer}.attn.hook_pattern has {p.shape[1]} heads")


def _padded(x: Tensor, T: int) -> Tensor:
    """[..., T'] -> [..., T]: cut, or padded with NaN (positions past the table are left alone)."""
    out = torch.full((*x.shape[:-1], T), float("nan"), dtype=torch.float64)
    k = min(T, x.shape[-1])
    out[..., :k] = x[..., :k]
    return out


def fixed_gate(mass_pos: Any, *, sink: str, normalized: bool) -> Any:
    """Each query's weight on the non-sink keys, m_t, set to ``mass_pos[layer][head][t]`` (a [L, H, T]
    table; NaN entries leave their rows alone), the other keys scaled together; with ``normalized`` the
    sink takes the difference (rows keep their total, as softmax), otherwise the sink's weight is kept.
    ``sink``: "first" (token 1's column) or "slot" (the bias slot). Query 1 is left alone, and so are
    positions past the table."""
    if sink not in ("first", "slot"):
        raise ValueError(f"sink: got {sink!r}, allowed values are ['first', 'slot']")
    table = torch.as_tensor(np.asarray(mass_pos, dtype=np.float64))
    if table.dim() != 3:
        raise ValueError(f"mass_pos must be a [layers, heads, positions] table, got shape {tuple(table.shape)}")

    def targets(p: Tensor, layer: int) -> Tensor:
        _check_table(table, p, layer, "fixed_gate")
        return _padded(table[layer], p.shape[-1]).expand(p.shape[0], -1, -1)

    where = "token 1" if sink == "first" else "the bias slot"
    return _gate_edit(targets, sink, normalized, "fixed_gate",
                      f"each query's weight off {where} set to its (layer, head, position) mean", {})


def donor_gate(tokens: Any, masses: Any, *, sink: str, normalized: bool) -> Any:
    """Each query's weight on the non-sink keys, m_t, set to a donor's: the sequence ``tokens[i]`` takes
    ``masses[i]`` ([N, L, H, T], measured on other sequences), so the gate keeps a real query-by-query
    pattern, with its spread, that does not belong to this text. Rows are matched to their sequence by
    their token ids (a pass that starts at a later position matches its tail), so it runs through
    ``run_intervention`` and batched per-head passes alike inside ``interventions._token_tap``; a row
    that matches no sequence of ``tokens`` is an error."""
    from sinkinterp.interventions import _TAPPED

    if sink not in ("first", "slot"):
        raise ValueError(f"sink: got {sink!r}, allowed values are ['first', 'slot']")
    toks = torch.as_tensor(tokens)
    table = torch.as_tensor(np.asarray(masses, dtype=np.float64))
    if toks.dim() != 2 or table.dim() != 4 or table.shape[0] != toks.shape[0]:
        raise ValueError(f"tokens [N, T] and masses [N, layers, heads, positions] must agree, got "
                         f"{tuple(toks.shape)} and {tuple(table.shape)}")

    def targets(p: Tensor, layer: int) -> Tensor:
        _check_table(table, p, layer, "donor_gate")
        run = _TAPPED[-1] if _TAPPED else None
        if run is None or run.shape[0] != p.shape[0]:
            raise RuntimeError("donor_gate: needs the token ids of each forward pass (run it inside "
                               "interventions._token_tap, as gate_study does)")
        n = run.shape[1]
        match = (toks[None, :, -n:].to(run.device) == run[:, None, :]).all(-1)  # [rows, N]
        if not bool(match.any(1).all()):
            raise RuntimeError("donor_gate: a row of the pass matches none of the sequences it was built for")
        idx = match.int().argmax(1).cpu()
        return _padded(table[idx, layer], p.shape[-1])

    where = "token 1" if sink == "first" else "the bias slot"
    return _gate_edit(targets, sink, normalized, "donor_gate",
                      f"each query's weight off {where} taken from another text at the same (layer, head, position)", {})


#: the query tokens' deviations from the position mean are shrunk toward 0: sum / (count + TOKEN_SHRINK), so
#: a token seen once moves its prediction by a third of what it showed, one seen 20 times by 91%
TOKEN_SHRINK = 2.0


def _token_table(tokens: Any, masses: Any, mass_pos: Any) -> tuple[Tensor, Tensor, Tensor]:
    """From measured sequences (``tokens`` [N, T], ``masses`` [N, L, H, T]: m_t, NaN where not measured) and
    a position table ``mass_pos`` [L, H, T]: (position table [L, H, T], the query-token ids seen at queries
    2..T, sorted [U], and each one's mean deviation of m_t from its position's mean, shrunk toward 0 by
    TOKEN_SHRINK, [L, H, U])."""
    toks = torch.as_tensor(tokens).long()
    seq = torch.as_tensor(np.asarray(masses, dtype=np.float64))
    pos = torch.as_tensor(np.asarray(mass_pos, dtype=np.float64))
    if toks.dim() != 2 or seq.dim() != 4 or pos.dim() != 3 or seq.shape[0] != toks.shape[0] \
            or seq.shape[-1] != toks.shape[1] or seq.shape[1:] != pos.shape:
        raise ValueError(f"tokens [N, T], masses [N, layers, heads, T] and mass_pos [layers, heads, T] must agree, got "
                         f"{tuple(toks.shape)}, {tuple(seq.shape)} and {tuple(pos.shape)}")
    _, L, H, _ = seq.shape
    resid = (seq - pos[None])[..., 1:].permute(1, 2, 0, 3).reshape(L, H, -1)  # [L, H, N * (T - 1)], row-major (n, t)
    ids, inv = torch.unique(toks[:, 1:].reshape(-1), return_inverse=True)
    ok = ~resid.isnan()
    sums = torch.zeros((L, H, len(ids)), dtype=torch.float64).index_add_(2, inv, torch.where(ok, resid, 0.0))
    counts = torch.zeros((L, H, len(ids)), dtype=torch.float64).index_add_(2, inv, ok.double())
    return pos, ids, sums / (counts + TOKEN_SHRINK)


def _token_predict(pos: Tensor, ids: Tensor, dev: Tensor, tokens: Tensor, layer: int,
                   upper: float = 1.0) -> tuple[Tensor, Tensor]:
    """The token gate's m_t for ``tokens`` [b, T'] at ``layer``: [b, H, T'] (position mean plus the query
    token's deviation, clamped to [0, ``upper``]: 1 for softmax's weights, inf for attention that does not
    normalize; NaN past the table), and whether each query's token was seen."""
    tokens = tokens.long().cpu()
    at = torch.searchsorted(ids, tokens).clamp_max(max(len(ids) - 1, 0))
    seen = (ids[at] == tokens) if len(ids) else torch.zeros_like(tokens, dtype=torch.bool)
    d = dev[layer][:, at].permute(1, 0, 2) if len(ids) else torch.zeros((tokens.shape[0], dev.shape[1], tokens.shape[1]),
                                                                          dtype=torch.float64)
    d = torch.where(seen[:, None, :], d, 0.0)
    return (_padded(pos[layer], tokens.shape[1])[None] + d).clamp(0.0, upper), seen


def token_gate(tokens: Any, masses: Any, mass_pos: Any, *, sink: str, normalized: bool) -> Any:
    """Each query's weight on the non-sink keys, m_t, set to the mean at its (layer, head, position),
    ``mass_pos``, plus its query token's mean deviation from that mean on the measured sequences
    ``tokens`` [N, T] with their ``masses`` [N, L, H, T] (shrunk by TOKEN_SHRINK; 0 for a token not seen
    there), clamped to [0, 1] (at 0 only, without ``normalized``): the gate follows the position and the
    query token, not the rest of the text.
    The other keys are scaled together; with ``normalized`` the sink takes the difference. The query
    tokens are those of each forward pass, so it runs inside ``interventions._token_tap`` (as gate_study
    does). Query 1 is left alone, and so are positions past the table."""
    from sinkinterp.interventions import _TAPPED

    if sink not in ("first", "slot"):
        raise ValueError(f"sink: got {sink!r}, allowed values are ['first', 'slot']")
    pos, ids, dev = _token_table(tokens, masses, mass_pos)

    def targets(p: Tensor, layer: int) -> Tensor:
        _check_table(pos, p, layer, "token_gate")
        run = _TAPPED[-1] if _TAPPED else None
        if run is None or run.shape[0] != p.shape[0] or run.shape[1] != p.shape[-1]:
            raise RuntimeError("token_gate: needs the token ids of each forward pass (run it inside "
                               "interventions._token_tap, as gate_study does)")
        return _token_predict(pos, ids, dev, run, layer, 1.0 if normalized else math.inf)[0]

    where = "token 1" if sink == "first" else "the bias slot"
    return _gate_edit(targets, sink, normalized, "token_gate",
                      f"each query's weight off {where} set to its (layer, head, position) mean plus its query "
                      "token's mean deviation", {"shrink": TOKEN_SHRINK})


def repeated(tokens: Any) -> Tensor:
    """[N, T] bool: whether each position's token already occurred earlier in its sequence (among the
    keys a causal query at that position sees besides itself)."""
    toks = torch.as_tensor(tokens).long()
    if toks.dim() != 2:
        raise ValueError(f"tokens must be [N, T], got shape {tuple(toks.shape)}")
    out = torch.zeros(toks.shape, dtype=torch.bool)
    pos = torch.arange(toks.shape[1])
    for i, row in enumerate(toks.cpu()):
        _, inv = torch.unique(row, return_inverse=True)
        first = torch.full((int(inv.max()) + 1,), toks.shape[1], dtype=torch.long).scatter_reduce(0, inv, pos, "amin")
        out[i] = pos > first[inv]
    return out


def _fit_by(ids: Tensor, other_ids: Tensor, other_seq: Tensor, mass_pos: Any, upper: float) -> Tensor:
    """The token gate's prediction [N, L, H, T] for queries labelled ``ids`` [N, T], fitted on the other
    half's labels ``other_ids`` and masses: any per-query label in place of the query token."""
    pos, f_ids, f_dev = _token_table(other_ids, other_seq, mass_pos)
    return torch.stack([_token_predict(pos, f_ids, f_dev, ids, l, upper)[0] for l in range(pos.shape[0])], 1)


def drivers(halves: Any, measured: Any) -> dict[str, Any]:
    """What drives the gate, out of sample. ``halves``: two sets of sequences [N_i, T]; ``measured``: for
    each, (gate_stats result, masses [N_i, L, H, T]) as ``_stats(..., keep_seq=True)`` returns. Each half's
    m_t (queries 2..T) is predicted from the other half's measurements by its grand mean (per head), by the
    mean at its position, and by that plus its query token's deviation (``token_gate``'s target), and the
    squared errors are summed over both halves. Per head ([L][H]): ``position`` = 1 - SSE_pos / SST,
    ``token`` = (SSE_pos - SSE_token) / SST, ``rest`` = SSE_token / SST (the text before the query, and the
    fitted means' noise); shares can be negative where a fitted mean does worse than the one before it.
    ``sst``, ``sse_position``, ``sse_token`` are the sums, for pooling over heads; ``token_coverage`` the
    share of scored queries whose token the other half had seen; ``token_seen`` the token's share on those
    queries alone (its sums: the same keys with ``_seen``), where an unseen token cannot dilute it.

    One feature of the keys' content is tested on its own: whether the query's token already occurred
    earlier in the text (``repeated``; what an induction or copying head needs). ``repeat`` is the share
    it adds to the position mean (the same fit: the other half's mean deviation of repeated and of new
    tokens; sums ``sse_repeat``), ``repeat_rate`` the share of scored queries that repeat a token, and
    ``repeat_diff`` per head the mean of m_t - its position's mean over repeated tokens minus over new
    ones, over both halves (in sample: the direction, not a test). ``previous``: the share the token before
    the query adds to the position mean, fitted as the query token is (sums ``sse_previous``): whether the
    gate follows the last token the query has seen rather than its own. ``text``: the share a constant per
    text adds to the position mean, each half of a sequence's queries predicted by the text's mean
    deviation over its other half (sums ``sse_text``; shrunk as the token's): the part of the rest that is
    one offset per text (its topic, its first token) rather than query by query."""
    sums: dict[str, Tensor] = {}
    moments: dict[str, Tensor] = {}
    seen_n = total_n = rep_n = 0
    for i in (0, 1):
        toks = torch.as_tensor(halves[i]).long()
        mine, (other_res, other_seq) = measured[i][1], measured[1 - i]
        other_toks = torch.as_tensor(halves[1 - i]).long()
        pos, ids, dev = _token_table(other_toks, other_seq, other_res["mass_pos"])
        upper = 1.0 if other_res["normalized"] else math.inf  # m_t: a softmax weight, or a row's weight
        grand = other_seq[..., 1:].nanmean(dim=(0, 3))  # [L, H]
        m = mine[..., 1:]  # [N, L, H, T - 1]
        per_layer = [_token_predict(pos, ids, dev, toks, l, upper) for l in range(pos.shape[0])]
        tok = torch.stack([x[0] for x in per_layer], 1)[..., 1:]
        seen = per_layer[0][1][:, 1:]  # whether each query's token was seen: the same in every layer
        ok = ~m.isnan()
        # two "tokens": the query's token is new (0) or repeats an earlier one (1)
        rep = repeated(toks).long()
        by_rep = _fit_by(rep, repeated(other_toks).long(), other_seq, other_res["mass_pos"], upper)
        # the token before the query in place of the query's own (position 0 is never scored)
        by_prev = _fit_by(*(torch.cat([x[:, :1], x[:, :-1]], 1) for x in (toks, other_toks)), other_seq,
                          other_res["mass_pos"], upper)
        resid = torch.where(ok, m - _padded(pos, mine.shape[-1])[None, ..., 1:], 0.0)
        flag = rep[:, None, None, 1:].bool()
        for key, x in (("rep_sum", torch.where(flag, resid, 0.0)), ("rep_n", (ok & flag).double()),
                       ("new_sum", torch.where(~flag, resid, 0.0)), ("new_n", (ok & ~flag).double())):
            x = x.sum(dim=(0, 3))
            moments[key] = moments[key] + x if key in moments else x
        rep_n += int(rep[:, 1:].sum())
        # a constant per text: each half of a sequence's queries gets the position mean plus the text's mean
        # deviation from it over the other half of its queries (far apart: a per-text offset, not local context)
        pos_pred = _padded(pos, mine.shape[-1])[None, ..., 1:]
        cut = m.shape[-1] // 2
        dev = [resid[..., sl].sum(-1) / (ok[..., sl].double().sum(-1) + TOKEN_SHRINK)
               for sl in (slice(None, cut), slice(cut, None))]
        by_text = (pos_pred + torch.cat([dev[1][..., None].expand(*dev[1].shape, cut),
                                         dev[0][..., None].expand(*dev[0].shape, m.shape[-1] - cut)], -1)).clamp(0, upper)

        preds = {"sst": grand[None, :, :, None], "sse_position": pos_pred,
                 "sse_token": tok, "sse_repeat": by_rep[..., 1:], "sse_previous": by_prev[..., 1:], "sse_text": by_text}
        for suffix, where, keys in (("", ok, preds), ("_seen", ok & seen[:, None, None, :],
                                                      ("sst", "sse_position", "sse_token"))):
            for key in keys:
                x = torch.where(where, (m - preds[key]) ** 2, 0.0).sum(dim=(0, 3))
                sums[key + suffix] = sums[key + suffix] + x if key + suffix in sums else x
        seen_n += int(seen.sum())
        total_n += seen.numel()

    def share(x: Tensor, sst: Tensor) -> list[Any]:
        return torch.where(sst > 1e-20, x / sst.clamp_min(1e-300), torch.full_like(sst, float("nan"))).tolist()

    sst, sse_pos, sse_tok = sums["sst"], sums["sse_position"], sums["sse_token"]
    return {"position": share(sst - sse_pos, sst), "token": share(sse_pos - sse_tok, sst), "rest": share(sse_tok, sst),
            "token_seen": share(sums["sse_position_seen"] - sums["sse_token_seen"], sums["sst_seen"]),
            "repeat": share(sse_pos - sums["sse_repeat"], sst), "previous": share(sse_pos - sums["sse_previous"], sst),
            "text": share(sse_pos - sums["sse_text"], sst),
            "repeat_diff": (moments["rep_sum"] / moments["rep_n"] - moments["new_sum"] / moments["new_n"]).tolist(),
            **{k: v.tolist() for k, v in sums.items()},
            "token_coverage": seen_n / max(total_n, 1), "repeat_rate": rep_n / max(total_n, 1),
            "shrink": TOKEN_SHRINK}


def _record(label: str, x: Any) -> dict[str, Any]:
    bias_base, bias = x.sink_base.sink_bias_pct, x.sink.sink_bias_pct
    return {"label": label, "name": x.name, "description": x.description, "loss_base": x.loss_base,
            "delta_loss": x.delta_loss, "sink1_base": float(x.sink_base.sink_pct[0]),
            "sink1_after": float(x.sink.sink_pct[0]),
            "sink_bias_base": None if bias_base is None else float(bias_base),
            "sink_bias_after": None if bias is None else float(bias),
            "per_head_delta_loss": None if x.per_head is None else x.per_head.tolist()}


def _pooled(parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Records of one intervention on disjoint sets of sequences, pooled (weighted by sequence count)."""
    total = sum(n for n, _ in parts)
    out = dict(parts[0][1])
    for key in ("loss_base", "delta_loss", "sink1_base", "sink1_after", "sink_bias_base", "sink_bias_after"):
        if out[key] is not None:
            out[key] = sum(n * r[key] for n, r in parts) / total
    if out["per_head_delta_loss"] is not None:
        out["per_head_delta_loss"] = (sum(n * np.asarray(r["per_head_delta_loss"]) for n, r in parts) / total).tolist()
    return out


#: the study's interventions, in the order they run
GATE_EDITS = ("open", "fixed", "token", "donor")


def gate_study(model: Any, tokens: Any, *, sink: str = "auto", closed: float = 0.1, eps: float = 0.3,
               interventions: bool = True, per_head: bool | Sequence[str] = False, batch_size: int = 8,
               token_heads: int = 6, progress: bool = False, turn_sources: bool | str = False) -> dict[str, Any]:
    """The whole study (module docstring): ``gate_stats`` and, with ``interventions``, the loss and Sink
    changes of opening every gate (``open``), of fixing it to its mean by position (``fixed``) and of
    giving each text another text's gate (``donor``); ``per_head``: also each head alone (True: for every
    intervention; or the labels of those that get it, from GATE_EDITS: per-head runs cost one pass per
    head on large models). The fixed
    and donor gates are cross-fitted: the sequences are split in two halves, each half is edited with
    what was measured on the other, and the two results are pooled, so no sequence is edited with its
    own measurements; so is the token gate (``token``: position mean plus the query token's deviation), and
    ``drivers`` splits each head's m_t variance into position, query token and the rest, out of sample, on
    the same halves (also without ``interventions``: it only measures). ``token_heads``: the by-token table of
    ``gate_stats`` for that many heads; ``turn_sources``: its split of the query's turn by source. JSON-ready."""
    from sinkinterp import interventions as iv

    if isinstance(per_head, bool):
        heads_for = set(GATE_EDITS) if per_head else set()
    else:
        heads_for = set(per_head) if not isinstance(per_head, str) else {per_head}
        if not heads_for <= set(GATE_EDITS):
            raise ValueError(f"per_head: got {sorted(heads_for - set(GATE_EDITS))}; allowed: True, False or labels "
                             f"from {list(GATE_EDITS)}")
    res = gate_stats(model, tokens, sink=sink, closed=closed, batch_size=batch_size, token_heads=token_heads,
                     progress=progress, turn_sources=turn_sources)
    tokens = torch.as_tensor(tokens)
    n = tokens.shape[0]
    sink_kind, normalized = res["sink"], res["normalized"]
    # fixing m_t moves weight between the sink and the other keys (a softmax row's budget), or sets the other keys'
    # weight where attention does not normalize; the drivers need m_t as a weight too (not a share of the row)
    split = (normalized or bool(res.get("weights_from_row_weight"))) and n >= 2
    if split:
        halves = (tokens[: n // 2], tokens[n // 2:])
        measured = [_stats(model, h, sink=sink_kind, closed=closed, batch_size=batch_size, keep_seq=True,
                           logits=False, targets=False) for h in halves]
        res["drivers"] = drivers(halves, measured)
    if not interventions:
        return res
    open_ = iv.first_token("ablate" if sink_kind == "first" else "ablate_bias", renormalize=normalized)
    res["interventions"] = [_record("open", iv.run_intervention(model, tokens, open_, eps=eps,
                                                                per_head="open" in heads_for, batch_size=batch_size,
                                                                progress=progress))]
    if not split:
        return res
    fixed, token, donor = [], [], []
    for i in (0, 1):
        mine, other, other_toks = halves[i], measured[1 - i], halves[1 - i]
        fixed.append((len(mine), _record("fixed", iv.run_intervention(
            model, mine, fixed_gate(other[0]["mass_pos"], sink=sink_kind, normalized=normalized), eps=eps,
            per_head="fixed" in heads_for, batch_size=batch_size, progress=progress))))
        masses = other[1][torch.arange(len(mine)) % len(other[1])]  # text j of this half takes text j of the other's
        with iv._token_tap(model):
            token.append((len(mine), _record("token", iv.run_intervention(
                model, mine, token_gate(other_toks, other[1], other[0]["mass_pos"], sink=sink_kind, normalized=normalized),
                eps=eps, per_head="token" in heads_for, batch_size=batch_size, progress=progress))))
            donor.append((len(mine), _record("donor", iv.run_intervention(
                model, mine, donor_gate(mine, masses, sink=sink_kind, normalized=normalized), eps=eps,
                per_head="donor" in heads_for, batch_size=batch_size, progress=progress))))
    res["interventions"] += [{**_pooled(x), "cross_fitted": True} for x in (fixed, token, donor)]
    return res


#: ``pooled_drivers`` (and the other pooled views) pool the heads with at least this mean share of their weight on
#: the sink (``sink_share``: the weight itself where attention normalizes)
DRIVER_FLOOR = 0.1


def pooled_drivers(res: dict[str, Any], heads: Any = None) -> dict[str, Any] | None:
    """``drivers`` pooled over ``heads`` ((layer, head) pairs; default: those with mean sink share >=
    DRIVER_FLOOR): the shares of the summed variance (sums of squares over the heads), and how many heads;
    a head without a measured gate (NaN sums: it read nothing besides the sink) is left out. None without
    drivers or heads."""
    d = res.get("drivers")
    if not d:
        return None
    a = sink_share(res)
    if heads is None:
        heads = [lh for lh in np.ndindex(*a.shape) if a[lh] >= DRIVER_FLOOR]
    heads = [(l, h) for l, h in heads if all(np.isfinite(d[k][l][h]) for k in ("sst", "sse_position", "sse_token"))]
    sst = sum(d["sst"][l][h] for l, h in heads)
    if not heads or sst <= 0:
        return None
    pos = sum(d["sse_position"][l][h] for l, h in heads)
    tok = sum(d["sse_token"][l][h] for l, h in heads)
    out = {"heads": len(heads), "position": 1 - pos / sst, "token": (pos - tok) / sst, "rest": tok / sst}
    if "sse_repeat" in d:  # whether the query's token occurred earlier in the text, against the position alone
        out["repeat"] = (pos - sum(d["sse_repeat"][l][h] for l, h in heads)) / sst
        diffs = [d["repeat_diff"][l][h] for l, h in heads if np.isfinite(d["repeat_diff"][l][h])]
        out["repeat_diff"] = float(np.mean(diffs)) if diffs else float("nan")  # NaN: no query repeats (or none is new)
    if "sse_previous" in d:  # the token before the query, against the position alone
        out["previous"] = (pos - sum(d["sse_previous"][l][h] for l, h in heads)) / sst
    if "sse_text" in d:  # a constant per text, against the position alone
        out["text"] = (pos - sum(d["sse_text"][l][h] for l, h in heads)) / sst
    if "sst_seen" in d:  # the token's share on the queries whose token the other half had seen
        seen = sum(d["sst_seen"][l][h] for l, h in heads)
        gain = sum(d["sse_position_seen"][l][h] - d["sse_token_seen"][l][h] for l, h in heads)
        out["token_seen"] = gain / seen if seen > 0 else float("nan")
    return out


def pooled_logit_split(res: dict[str, Any], heads: Any = None) -> dict[str, Any] | None:
    """``logit_split`` within positions over ``heads`` ((layer, head) pairs; default: those with mean sink
    weight >= DRIVER_FLOOR and a measured split): the median of the heads' sink-side shares, the share of
    the summed variance (each head's log-odds variance weighs in), and how many heads are sink-led (share >
    0.5); with the best other key's side too, its median and summed share and the spread's median
    (``top_key_median``, ``top_key_pooled``, ``spread_median``); where the second pass ran (token 1 the sink),
    the sink's side as the query's turn and token 1's key (``turn_median``, ``identity_median``,
    ``turn_pooled``, ``identity_pooled``). None without a split or heads."""
    d = res.get("logit_split")
    if not d:
        return None
    a = sink_share(res)
    share = np.asarray(d["sink_side_within"], dtype=np.float64)
    if heads is None:
        heads = [lh for lh in np.ndindex(*a.shape) if a[lh] >= DRIVER_FLOOR]
    heads = [(l, h) for l, h in heads if np.isfinite(share[l, h])]
    if not heads:
        return None
    var = sum(d["logit_var_within"][l][h] for l, h in heads)
    shares = [float(share[l, h]) for l, h in heads]
    out = {"heads": len(heads), "median": float(np.median(shares)),
           "pooled": sum(d["logit_cov_sink_within"][l][h] for l, h in heads) / var if var > 0 else float("nan"),
           "sink_led": sum(x > 0.5 for x in shares)}
    if "top_key_side_within" in d:  # the best other key's logit, and the spread of the others
        top = [float(d["top_key_side_within"][l][h]) for l, h in heads]
        out["top_key_median"] = float(np.median(top))
        out["spread_median"] = float(np.median([1.0 - x - y for x, y in zip(shares, top, strict=True)]))
        out["top_key_pooled"] = (-sum(d["logit_cov_top_within"][l][h] for l, h in heads) / var if var > 0
                                 else float("nan"))
    if "turn_side_within" in d:  # the sink's side: the query's turn toward a fixed key, and token 1's own key
        turn = [float(d["turn_side_within"][l][h]) for l, h in heads]
        out["turn_median"] = float(np.median(turn))
        out["identity_median"] = float(np.median([x - y for x, y in zip(shares, turn, strict=True)]))
        out["turn_pooled"] = sum(d["logit_cov_turn_within"][l][h] for l, h in heads) / var if var > 0 else float("nan")
        out["identity_pooled"] = out["pooled"] - out["turn_pooled"]
    return out


def pooled_turn_sources(res: dict[str, Any], heads: Any = None, top: int = 5) -> dict[str, Any] | None:
    """``turn_sources`` within positions pooled over ``heads`` ((layer, head) pairs; default: those with mean
    sink weight >= DRIVER_FLOOR and a measured split), each head weighing in with its log-odds variance as in
    ``pooled_logit_split``'s ``turn_pooled``: per source its share of the summed variance (``shares``, 0 for
    a head downstream of nothing), by kind (``embed``, ``attn``, ``mlp``), what no source carries (``rest``),
    their sum (``turn``, = ``turn_pooled``), and the ``top`` sources by size (``largest``: [name, share]);
    with per-head sources (``turn_sources="heads"``) also each earlier head's share (``head_shares``
    [L'][H']) and the ``top`` heads by size (``largest_heads``: ["L{l}H{h}", share]). None without them or
    heads."""
    d = res.get("logit_split") or {}
    ts = d.get("turn_sources")
    if not ts:
        return None
    a = sink_share(res)
    share = np.asarray(ts["share_within"], dtype=np.float64)  # [L, H, C]
    rest = np.asarray(ts["rest_share_within"], dtype=np.float64)
    if heads is None:
        heads = [lh for lh in np.ndindex(*a.shape) if a[lh] >= DRIVER_FLOOR]
    heads = [(l, h) for l, h in heads if np.isfinite(rest[l, h])]
    var = np.asarray(d["logit_var_within"], dtype=np.float64)
    total = sum(var[l, h] for l, h in heads)
    if not heads or not total > 0:
        return None
    shares = sum(np.nan_to_num(share[l, h]) * var[l, h] for l, h in heads) / total
    names = ts["names"]
    kinds = {k: float(sum(x for name, x in zip(names, shares, strict=True) if name.split()[0] == k))
             for k in ("embed", "attn", "mlp")}
    r = float(sum(rest[l, h] * var[l, h] for l, h in heads) / total)
    order = sorted(range(len(names)), key=lambda i: -abs(shares[i]))[:top]
    out = {"heads": len(heads), "names": names, "shares": shares.tolist(), **kinds, "rest": r,
           "turn": float(shares.sum()) + r, "largest": [[names[i], float(shares[i])] for i in order]}
    if "head_share_within" in ts:
        per = np.asarray(ts["head_share_within"], dtype=np.float64)  # [L, H, L', H']
        pooled = sum(np.nan_to_num(per[l, h]) * var[l, h] for l, h in heads) / total
        best = sorted(np.ndindex(*pooled.shape), key=lambda lh: -abs(pooled[lh]))[:top]
        out["head_shares"] = pooled.tolist()
        out["largest_heads"] = [[f"L{l}H{h}", float(pooled[l, h])] for l, h in best]
    return out


def pooled_targets(res: dict[str, Any], heads: Any = None) -> dict[str, Any] | None:
    """``targets`` pooled over ``heads`` ((layer, head) pairs; default: those with mean sink share >=
    DRIVER_FLOOR): per category (a dict keyed by TARGETS), the share of the heads' summed weight off the sink
    (``share``), the share of their queries whose best key besides the sink is of it (``top_rate``) and
    how much more open than its position's mean the gate is on those queries (``open_by_top``, NaN where
    no query's best key is of it); per distance bin, the share of the weight (``distance_share``); the
    inputs' ``available`` and ``uniform`` shares, and how many heads. None without targets or heads."""
    d = res.get("targets")
    if not d:
        return None
    a = sink_share(res)
    weight = np.asarray(d["weight"], dtype=np.float64)
    if heads is None:
        heads = [lh for lh in np.ndindex(*a.shape) if a[lh] >= DRIVER_FLOOR]
    heads = [(l, h) for l, h in heads if weight[l, h] > 0]
    if not heads:
        return None
    idx = tuple(np.asarray(heads).T)
    share = np.asarray(d["share"], dtype=np.float64)[idx]  # [heads, C]
    count = np.asarray(d["top_count"], dtype=np.float64)[idx]
    dev = np.nan_to_num(np.asarray(d["open_by_top"], dtype=np.float64)[idx]) * count
    dist = np.asarray(d["distance_share"], dtype=np.float64)[idx]
    w = weight[idx][:, None]
    n = count.sum(0)
    cats = d["categories"]
    return {"heads": len(heads), "share": dict(zip(cats, ((share * w).sum(0) / w.sum()).tolist(), strict=True)),
            "top_rate": dict(zip(cats, (n / n.sum()).tolist(), strict=True)),
            "open_by_top": dict(zip(cats, np.where(n > 0, dev.sum(0) / np.maximum(n, 1e-300), np.nan).tolist(),
                                    strict=True)),
            "distance_share": dict(zip(d["distance_bins"], ((dist * w).sum(0) / w.sum()).tolist(), strict=True)),
            "available": dict(zip(cats, d["available"], strict=True)),
            "uniform": dict(zip(cats, d["uniform"], strict=True))}


def sink_share(res: dict[str, Any]) -> np.ndarray:
    """[L, H]: each head's mean share of its rows' weight on the sink, what picks the sink heads (``sink_mass``
    in a result without ``sink_share``: normalized attention, where they are the same, or an earlier run)."""
    return np.asarray(res["sink_share"] if "sink_share" in res else res["sink_mass"], dtype=np.float64)


def _top_heads(res: dict[str, Any], k: int) -> list[tuple[int, int]]:
    a = sink_share(res)
    return sorted(np.ndindex(*a.shape), key=lambda lh: -a[lh])[:k]


def summary(res: dict[str, Any], heads: int = 6) -> str:
    """The study as a few lines of text (what ``sinkinterp gate`` prints)."""
    where = "token 1" if res["sink"] == "first" else "the bias slot"
    what = "share of the row's weight" if res.get("pattern_is_share") else "weight"
    weighted = bool(res.get("weights_from_row_weight"))  # a: the sink's share; m: the other keys' weight
    a_of = sink_share(res)
    lines = [(f"sink: {where}; attention {'normalized' if res['normalized'] else 'not normalized'} "
             f"(max |row sum - 1| {res['row_error']:.2g}); queries 2..T"
              + ("; weights from hook_row_weight" if weighted else "")),
             (f"the {heads} heads with the largest share of their weight on the sink (mean a = sink "
              f"{'share of the row' if weighted else what}, m = the other keys' {what}, "
              "g = effective gate ||write|| / ||read||):"),
             f"  head      a      m      g   std(g)  within-t  corr(g,m)  g<{res['closed']:.2g}  value share"]
    def num(x: float | None, fmt: str) -> str:
        return "  -   " if x is None else format(x, fmt)

    for l, h in _top_heads(res, heads):
        lines.append(f"  L{l}H{h:<4} {a_of[l, h]:.3f}  {res['mass'][l][h]:.3f}  {res['gate'][l][h]:.3f}  "
                     f"{res['gate_std'][l][h]:.3f}   {res['gate_std_within'][l][h]:.3f}     "
                     f"{num(res['corr_gate_mass'][l][h], '+.3f')}     {res['closed_share'][l][h]:.2f}   "
                     f"{num(res['value_share'][l][h], '.3f')}")
    for x in (res.get("open_tokens") or [])[:3]:
        def shown(rows: list[dict[str, Any]]) -> str:
            return ", ".join(f"{r.get('text', r['id'])!r} {r['m']:.2f}" for r in rows[:5])

        r2 = "-" if x["token_r2"] is None else f"{x['token_r2']:.2f}"
        lines.append(f"{x['head']} (a {x['sink_mass']:.2f}): the query token explains {r2} of m's variance; "
                     f"most open on {shown(x['open'])}; most closed on {shown(x['closed'])}")
    if "explicit_gate" in res:
        e = np.asarray(res["explicit_gate"], dtype=np.float64)
        lines.append(f"explicit gate (hook_gate): mean over heads {np.nanmean(e):.3f}, heads from {np.nanmin(e):.3f} "
                     f"to {np.nanmax(e):.3f}")
    for x in res.get("interventions", []):
        bias = "" if x["sink_bias_after"] is None else f", Sink_* {x['sink_bias_base']:.2f} -> {x['sink_bias_after']:.2f}%"
        lines.append(f"{x['label']:<6} ({x['description']}): {x['delta_loss']:+.4f} nats, "
                     f"Sink_1 {x['sink1_base']:.2f} -> {x['sink1_after']:.2f}%{bias}")
    # without a sink every head has a gate (its row's weight): pool over all heads, not those with a sink share
    every = list(np.ndindex(*a_of.shape)) if weighted else None
    over = "" if weighted else f" with a >= {DRIVER_FLOOR}"
    if res.get("drivers"):
        pooled = pooled_drivers(res, every)
        if pooled is not None:
            lines.append(f"what the gate follows (m's variance over queries, out of sample, pooled over the "
                         f"{pooled['heads']} heads{over}): position {pooled['position']:.0%}, the "
                         f"query token {pooled['token']:+.0%} more, the rest {pooled['rest']:.0%} (the text before "
                         f"the query, and noise); query tokens seen in the other half: "
                         f"{res['drivers']['token_coverage']:.0%}, on those the token adds "
                         f"{pooled.get('token_seen', float('nan')):+.0%}")
            if "repeat" in pooled:
                lines.append(f"  whether the query's token occurred earlier in the text ({res['drivers']['repeat_rate']:.0%} "
                             f"of queries) adds {pooled['repeat']:+.0%} to the position; m is "
                             f"{pooled['repeat_diff']:+.3f} higher on repeated tokens (mean over those heads)")
            if "previous" in pooled:
                lines.append(f"  the token before the query, in place of its own, adds {pooled['previous']:+.0%} to the "
                             "position")
            if "text" in pooled:
                lines.append(f"  a constant per text (its mean offset over the other half of its queries) adds "
                             f"{pooled['text']:+.0%} to the position")
    split = pooled_logit_split(res)
    if split is not None:
        lines.append(f"which side of the softmax moves the gate (the log-odds on the sink, log a_t/m_t = sink logit - "
                     f"log-sum-exp of the other keys' logits, its variance within positions over the {split['heads']} "
                     f"heads with a >= {DRIVER_FLOOR}): the sink's logit carries {split['median']:.0%} in the median head "
                     f"({split['pooled']:.0%} of the summed variance), {split['sink_led']} of {split['heads']} heads "
                     f"led by it; the rest "
                     "is the other keys'" + (f": the best-matching key's logit {split['top_key_median']:.0%} and their "
                                             f"spread {split['spread_median']:.0%} in the median head"
                                             if "top_key_median" in split else ""))
        if "turn_median" in split:
            lines.append(f"  the sink's logit against token 1's mean key (the query's turn) {split['turn_median']:.0%}, "
                         f"what token 1's own key adds {split['identity_median']:+.0%} in the median head "
                         f"({split['turn_pooled']:.0%} / {split['identity_pooled']:+.0%} of the summed variance)")
        src = pooled_turn_sources(res)
        if src is not None:
            lines.append(f"  the turn by what writes the query's input (of the summed variance): the embedding "
                         f"{src['embed']:+.0%}, attention {src['attn']:+.0%}, MLPs {src['mlp']:+.0%}; largest: "
                         + ", ".join(f"{name} {x:+.0%}" for name, x in src["largest"]))
            if "largest_heads" in src:
                lines.append("  the attention heads whose writes move it most: "
                             + ", ".join(f"{name} {x:+.1%}" for name, x in src["largest_heads"]))
        elif (res["logit_split"] or {}).get("turn_sources_note"):
            lines.append(f"  the turn by source: not measured ({res['logit_split']['turn_sources_note']})")
    elif res.get("logit_split_note"):
        lines.append(f"softmax split: not measured ({res['logit_split_note']})")
    where_to = pooled_targets(res, every)
    if where_to is not None:
        names = {"first": "token 1", "self": "itself", "previous": "the token before", "induction": "induction targets",
                 "duplicate": "earlier copies of its token", "other": "other keys"}
        used = [c for c in TARGETS if where_to["uniform"][c] > 0 or where_to["share"][c] > 0]
        lines.append(f"where the weight off the sink goes (the {where_to['heads']} heads{over}, pooled; "
                     "spread evenly over the keys in brackets): "
                     + ", ".join(f"{names[c]} {where_to['share'][c]:.0%} ({where_to['uniform'][c]:.0%})" for c in used))
        lines.append("  the gate against its position's mean, by the query's best key: "
                     + ", ".join(f"{names[c]} {where_to['open_by_top'][c]:+.3f} ({where_to['top_rate'][c]:.0%} of queries)"
                                 for c in used if where_to["top_rate"][c] > 0))
    runs = {x["label"]: x for x in res.get("interventions", [])}
    if "open" in runs and runs["open"]["delta_loss"] > 0 and res["normalized"]:  # without it "open" only drops token 1
        for label, what in (("fixed", "fixing the gate to its mean by position"),
                            ("token", "a gate that follows only the position and the query token"),
                            ("donor", "giving each text another text's gate")):
            if label in runs:
                lines.append(f"{what} costs {runs[label]['delta_loss'] / runs['open']['delta_loss']:.0%} of what "
                             "opening it costs")
    return "\n".join(lines)
