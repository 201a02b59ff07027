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

* ``sink_mass``: mean a_t; ``mass``: mean m_t;
* ``gate``: the effective gate g_t = ||z_t W_O|| / ||o_t W_O|| (how much of what it reads the head
  writes; m_t exactly when the sink's value is 0 and no explicit gate acts), its mean, spread, and the
  part of the spread left within a query position (``gate_std_within``: the gate's dependence on the
  content, not only on t), its quantiles and the share of queries with g_t < ``closed``;
* ``corr_gate_mass``: the correlation of g_t with m_t over queries (1 where the sink sets the gate);
* ``value_share``: mean ||z_t W_O - m_t o_t W_O|| / mean ||z_t W_O||, the part of the write that is not
  the gated read (the sink's value, a V bias, an explicit gate's change of direction);
* with an explicit gate (``hook_gate``, gated attention): ``explicit_gate``, the mean of
  ||z_t W_O|| / ||(z_t / gate_t) W_O||.

Two interventions then ask whether the model needs the gate to follow the content (``interventions``):

* ``open``: the sink removed, rows renormalized (``first_token("ablate")`` or ``"ablate_bias"``): every
  query's gate fully open;
* ``fixed`` (normalized attention only): every query's m_t set to the mean of m_t at its (layer, head,
  position) over the other half of the measured sequences (cross-fitted), the other keys keeping their
  relative weights and the sink taking the rest: the gate keeps its average by position but no longer
  depends on the content.

For attention that does not normalize (sinkinterp's sigmoid, elu+1 and identity kernels, whose hook_pattern
holds each key's share of the row's weight), a_t and m_t are shares, g_t carries the row's total weight,
``open`` drops the sink without renormalizing, and ``fixed`` is not run.

If ``fixed`` costs little against ``open``, the sink acts as a constant damping (a bias) per position;
if it costs about as much, what the sink does is choose, query by query, how much a head writes.
``sinkinterp gate`` (sinkinterp/cli_gate.py) runs it from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["GATE_BINS", "GATE_MAX", "SINKS", "fixed_gate", "gate_stats", "gate_study", "head_table", "summary"]

SINKS = ("auto", "first", "slot")
#: histogram of the effective gate per head: bins of width GATE_MAX / GATE_BINS on [0, GATE_MAX), one overflow
GATE_BINS, GATE_MAX = 200, 2.0
_TINY = 1e-12


def _weights_unnormalized(model: Any) -> bool:
    """True for a sinkinterp model whose attention op does not normalize (sigmoid, elu+1, identity
    kernel): its hook_pattern holds each key's share of the row's weight, not the weight itself."""
    op = getattr(getattr(getattr(model, "blocks", [None])[0], "attn", None), "op", None)
    return op is not None and not getattr(op, "normalized", True)


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


class _Accumulator:
    """Per-head, per-position sums over queries; everything float64 on the CPU."""

    def __init__(self, n_layers: int, n_heads: int, seq_len: int, gated: bool):
        shape = (n_layers, n_heads, seq_len)
        def z() -> Tensor:
            return torch.zeros(shape, dtype=torch.float64)

        self.count, self.a, self.m, self.m2, self.g, self.g2, self.gm = z(), z(), z(), z(), z(), z(), z()
        self.write, self.read, self.rest = z(), z(), z()
        self.hist = torch.zeros((n_layers, n_heads, GATE_BINS + 1), dtype=torch.float64)
        self.explicit = (z(), z()) if gated else None
        self.row_error = 0.0  # max |row sum + slot - 1| over the queries measured: 0 for normalized attention

    def add(self, layer: int, a: Tensor, m: Tensor, g: Tensor, write: Tensor, read: Tensor, rest: Tensor,
            valid: Tensor, explicit: Tensor | None) -> None:
        """[batch, head, query] tensors (float64) for queries 1..T-1 of one batch."""
        w = valid.double()
        for acc, x in ((self.count, w), (self.a, a * w), (self.m, m * w), (self.m2, m * m * w), (self.g, g * w),
                       (self.g2, g * g * w), (self.gm, g * m * w), (self.write, write * w), (self.read, read * w),
                       (self.rest, rest * w)):
            acc[layer, :, 1:] += x.sum(0).cpu()
        if explicit is not None and self.explicit is not None:
            self.explicit[0][layer, :, 1:] += (explicit * w).sum(0).cpu()
            self.explicit[1][layer, :, 1:] += (explicit * explicit * w).sum(0).cpu()
        idx = (g / (GATE_MAX / GATE_BINS)).floor().clamp(0, GATE_BINS).long()
        idx = torch.where(valid, idx, torch.full_like(idx, -1))
        H = idx.shape[1]
        for h in range(H):
            sel = idx[:, h][idx[:, h] >= 0]
            self.hist[layer, h] += torch.bincount(sel.cpu(), minlength=GATE_BINS + 1).double()


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


def gate_stats(model: Any, tokens: Any, *, sink: str = "auto", closed: float = 0.1, batch_size: int = 8,
               progress: bool = False) -> dict[str, Any]:
    """The measurement part of the study (module docstring): per-head statistics over queries 2..T of
    ``tokens`` [N, T] and the per-position means of m_t and g_t (``mass_pos``, ``gate_pos``, [L][H][T],
    position 0 = query 1 is NaN). JSON-ready."""
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
    need = [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("v", "pattern", "z")]
    missing = [x for x in need if x not in names]
    if missing:
        raise ValueError(f"model has no hook {missing[0]} (the gate study reads hook_v, hook_pattern and hook_z; "
                         "see docs/hook-contract.md)")
    gated = all(f"blocks.{l}.attn.hook_gate" in names for l in range(L))
    grams = []
    for l in range(L):
        w_o = model.blocks[l].attn.W_O
        if tuple(w_o.shape[:1]) != (H,) or w_o.dim() != 3:
            raise TypeError(f"model: blocks[{l}].attn.W_O has shape {tuple(w_o.shape)}, expected [n_heads, d_head, d_model]")
        w_o = w_o.detach().double()
        grams.append(w_o @ w_o.transpose(1, 2))  # [H, dh, dh]: ||x W_O||^2 = x G x^T
    acc = _Accumulator(L, H, T, gated)
    stash: dict[tuple[int, str], Tensor] = {}

    def keep(layer: int, kind: str) -> Any:
        def hook(act: Tensor, hook: Any = None) -> None:
            stash[(layer, kind)] = act.detach()

        return hook

    def on_z(layer: int) -> Any:
        def hook(z: Tensor, hook: Any = None) -> None:
            try:
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
            acc.row_error = max(acc.row_error, float((p.sum(-1) + slot_w - 1.0)[..., q].abs().max()))
            acc.add(layer, a[..., q], m[..., q], g[..., q], write[..., q], read[..., q], resid[..., q], valid[..., q],
                    None if explicit is None else explicit[..., q])

        return hook

    hooks: list[tuple[str, Any]] = []
    for l in range(L):
        hooks += [(f"blocks.{l}.attn.hook_v", keep(l, "v")), (f"blocks.{l}.attn.hook_pattern", keep(l, "pattern"))]
        if slot == "hook":
            hooks.append((f"blocks.{l}.attn.hook_bias_pattern", keep(l, "bias")))
        if gated:
            hooks.append((f"blocks.{l}.attn.hook_gate", keep(l, "gate")))
        hooks.append((f"blocks.{l}.attn.hook_z", on_z(l)))
    device = patching._model_device(model)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="gate", unit="batch")
    with patching._eval_mode(model), torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
        for s in starts:
            stash.clear()
            model(tokens[s:s + batch_size].to(device))
    return _finish(acc, sink, slot, closed, gated, _weights_unnormalized(model))


def _finish(acc: _Accumulator, sink: str, slot: str | None, closed: float, gated: bool,
            shares: bool) -> dict[str, Any]:
    cnt = acc.count.sum(-1)
    c = cnt.clamp_min(1.0)

    def mean(x: Tensor) -> Tensor:
        return x.sum(-1) / c

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
    nan = float("nan")
    g_pos = torch.where(acc.count > 0, g_pos, torch.full_like(g_pos, nan))
    m_pos = torch.where(acc.count > 0, m_pos, torch.full_like(m_pos, nan))
    hist = acc.hist.numpy()
    L, H = cnt.shape
    closed_bins = int(np.floor(closed / (GATE_MAX / GATE_BINS)))
    quant = {f"gate_q{int(q * 100)}": [[_quantile(hist[l, h], q) for h in range(H)] for l in range(L)]
             for q in (0.1, 0.5, 0.9)}

    def out(x: Tensor) -> list[Any]:
        return x.tolist()

    res: dict[str, Any] = {
        "sink": sink, "slot": slot, "normalized": bool(acc.row_error < 1e-2 and not shares),
        "pattern_is_share": shares, "row_error": acc.row_error,
        "closed": closed, "queries_per_head": out(cnt),
        "sink_mass": out(mean(acc.a)), "mass": out(m_mean), "gate": out(g_mean),
        "gate_std": out(g_var.sqrt()), "gate_std_within": out(within.sqrt()),
        "corr_gate_mass": out(corr),
        "value_share": out(acc.rest.sum(-1) / acc.write.sum(-1).clamp_min(1e-300)),
        "write_norm": out(mean(acc.write)), "read_norm": out(mean(acc.read)),
        "closed_share": [[float(hist[l, h, :closed_bins].sum() / max(hist[l, h].sum(), 1.0)) for h in range(H)]
                         for l in range(L)],
        **quant,
        "mass_pos": out(m_pos), "gate_pos": out(g_pos),
    }
    if gated and acc.explicit is not None:
        e_mean = mean(acc.explicit[0])
        res["explicit_gate"] = out(e_mean)
        res["explicit_gate_std"] = out((mean(acc.explicit[1]) - e_mean ** 2).clamp_min(0.0).sqrt())
    return res


def fixed_gate(mass_pos: Any, *, sink: str, normalized: bool) -> Any:
    """An intervention that sets each query's weight on the non-sink keys, m_t, to ``mass_pos[layer][head][t]``
    (a [L, H, T] table; NaN entries leave their rows alone), scaling the other keys' weights together;
    with ``normalized`` the sink takes the difference, so rows keep their total (softmax), otherwise the
    sink's weight is kept. ``sink``: "first" (token 1's column) or "slot" (the bias slot). Query 1 is left
    alone. Tables for other sequence lengths: positions past the table are left alone too."""
    from sinkinterp.interventions import Intervention

    if sink not in ("first", "slot"):
        raise ValueError(f"sink: got {sink!r}, allowed values are ['first', 'slot']")
    table = torch.as_tensor(np.asarray(mass_pos, dtype=np.float64))
    if table.dim() != 3:
        raise ValueError(f"mass_pos must be a [layers, heads, positions] table, got shape {tuple(table.shape)}")

    def rows(p: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """(target m per [batch, head, query], mask of the rows to edit)."""
        if layer >= table.shape[0] or p.shape[1] != table.shape[1]:
            raise ValueError(f"fixed_gate: the table is [{table.shape[0]} layers, {table.shape[1]} heads]; "
                             f"blocks.{layer}.attn.hook_pattern has {p.shape[1]} heads")
        T = p.shape[-1]
        t = torch.full((table.shape[1], T), float("nan"), dtype=torch.float64)
        k = min(T, table.shape[2])
        t[:, :k] = table[layer, :, :k]
        t[:, 0] = float("nan")  # query 1
        t = t.to(p.device, p.dtype).expand(p.shape[0], -1, -1)
        return t.nan_to_num(0.0), ~t.isnan()

    stash: dict[int, Tensor] = {}

    def pattern(act: Tensor, layer: int) -> Tensor:
        p = act.to(torch.promote_types(act.dtype, torch.float64))
        target, edit = rows(p, layer)
        rest = p.clone()
        if sink == "first":
            rest[..., 0] = 0.0
        m = rest.sum(-1)
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
        new = stash.pop(layer)
        return new.reshape(act.shape).to(act.dtype)

    def edits(model: Any, has_slot: bool) -> tuple[tuple[str, Any], ...]:
        if sink == "slot" and not has_slot:
            raise ValueError("fixed_gate(sink='slot'): the model has no bias slot")
        return (("pattern", pattern), ("bias_pattern", bias_pattern)) if has_slot else (("pattern", pattern),)

    where = "token 1" if sink == "first" else "the bias slot"
    return Intervention("fixed_gate", f"each query's weight off {where} set to its (layer, head, position) mean",
                        ("pattern",), edits, needs_slot=sink == "slot", params={"sink": sink, "normalized": normalized})


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


def gate_study(model: Any, tokens: Any, *, sink: str = "auto", closed: float = 0.1, eps: float = 0.3,
               interventions: bool = True, per_head: bool = False, batch_size: int = 8,
               progress: bool = False) -> dict[str, Any]:
    """The whole study (module docstring): ``gate_stats`` and, with ``interventions``, the loss and Sink
    changes of opening every gate and of fixing it to its mean by position (``per_head``: also each
    head alone). The fixed gate is cross-fitted: the sequences are split in two halves, each half is
    edited with the means measured on the other, and the two results are pooled, so the means never
    come from the sequences they are tested on. JSON-ready."""
    from sinkinterp import interventions as iv

    res = gate_stats(model, tokens, sink=sink, closed=closed, batch_size=batch_size, progress=progress)
    if not interventions:
        return res
    tokens = torch.as_tensor(tokens)
    n = tokens.shape[0]
    sink_kind, normalized = res["sink"], res["normalized"]
    open_ = iv.first_token("ablate" if sink_kind == "first" else "ablate_bias", renormalize=normalized)
    res["interventions"] = [_record("open", iv.run_intervention(model, tokens, open_, eps=eps, per_head=per_head,
                                                                batch_size=batch_size, progress=progress))]
    if normalized and n >= 2:  # fixing m_t moves weight between the sink and the other keys: a softmax row's budget
        halves = (tokens[: n // 2], tokens[n // 2:])
        tables = [gate_stats(model, h, sink=sink_kind, closed=closed, batch_size=batch_size)["mass_pos"] for h in halves]
        parts = [(len(halves[i]), _record("fixed", iv.run_intervention(
            model, halves[i], fixed_gate(tables[1 - i], sink=sink_kind, normalized=True), eps=eps,
            per_head=per_head, batch_size=batch_size, progress=progress))) for i in (0, 1)]
        res["interventions"].append({**_pooled(parts), "cross_fitted": True})
    return res


def _top_heads(res: dict[str, Any], k: int) -> list[tuple[int, int]]:
    a = np.asarray(res["sink_mass"], dtype=np.float64)
    return sorted(np.ndindex(*a.shape), key=lambda lh: -a[lh])[:k]


def summary(res: dict[str, Any], heads: int = 6) -> str:
    """The study as a few lines of text (what ``sinkinterp gate`` prints)."""
    where = "token 1" if res["sink"] == "first" else "the bias slot"
    what = "share of the row's weight" if res.get("pattern_is_share") else "weight"
    lines = [(f"sink: {where}; attention {'normalized' if res['normalized'] else 'not normalized'} "
             f"(max |row sum - 1| {res['row_error']:.2g}); queries 2..T"),
             (f"the {heads} heads with the most weight on the sink (mean a = sink {what}, m = the other keys' "
             f"{what}, g = effective gate ||write|| / ||read||):"),
             f"  head      a      m      g   std(g)  within-t  corr(g,m)  g<{res['closed']:.2g}  value share"]
    for l, h in _top_heads(res, heads):
        lines.append(f"  L{l}H{h:<4} {res['sink_mass'][l][h]:.3f}  {res['mass'][l][h]:.3f}  {res['gate'][l][h]:.3f}  "
                     f"{res['gate_std'][l][h]:.3f}   {res['gate_std_within'][l][h]:.3f}     {res['corr_gate_mass'][l][h]:+.3f}"
                     f"     {res['closed_share'][l][h]:.2f}   {res['value_share'][l][h]:.3f}")
    if "explicit_gate" in res:
        e = np.asarray(res["explicit_gate"], dtype=np.float64)
        lines.append(f"explicit gate (hook_gate): mean over heads {np.nanmean(e):.3f}, heads from {np.nanmin(e):.3f} "
                     f"to {np.nanmax(e):.3f}")
    for x in res.get("interventions", []):
        bias = "" if x["sink_bias_after"] is None else f", Sink_* {x['sink_bias_base']:.2f} -> {x['sink_bias_after']:.2f}%"
        lines.append(f"{x['label']:<6} ({x['description']}): {x['delta_loss']:+.4f} nats, "
                     f"Sink_1 {x['sink1_base']:.2f} -> {x['sink1_after']:.2f}%{bias}")
    runs = {x["label"]: x for x in res.get("interventions", [])}
    if "open" in runs and "fixed" in runs and runs["open"]["delta_loss"] > 0:
        lines.append(f"fixing the gate to its mean by position costs {runs['fixed']['delta_loss'] / runs['open']['delta_loss']:.0%} "
                     "of what opening it costs")
    return "\n".join(lines)


def head_table(res: dict[str, Any], heads: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per-head rows of the study for ``heads`` [(layer, head)]: every per-head statistic by name."""
    keys = ("sink_mass", "mass", "gate", "gate_std", "gate_std_within", "corr_gate_mass", "closed_share",
            "value_share", "gate_q10", "gate_q50", "gate_q90", "explicit_gate")
    return [{"head": f"L{l}H{h}", **{k: res[k][l][h] for k in keys if k in res}} for l, h in heads]
