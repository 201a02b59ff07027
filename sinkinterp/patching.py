"""Batched activation edits and activation patching on any model that speaks the hook-name contract.

One engine serves both: a *cell* is one place to edit (a layer, optionally one head, optionally one
position); a *source* says what the edited activation becomes there (the clean run's activation for
patching, zeros / a mean / a renormalized pattern for the first-token interventions). Instead of one
forward pass per cell, ``run_cells`` stacks the input once per cell along the batch and edits each
copy at its own cell in a single pass (chunked to ``batch_rows`` rows), then applies the metric to
every copy's logits.

Patching follows ``transformer_lens.patching``: the same hook names, the same result layout
([layer, pos, head], [layer, head] or [layer, pos]) and a metric that takes the patched logits of one
copy of the corrupted batch. ``tests/test_patching.py`` checks our results equal TransformerLens'
per-cell functions.

Components (``COMPONENTS``): "q", "k", "v", "z", "rot_q", "rot_k" ([batch, pos, head, d_head]; k and
v index the key/value heads of a grouped-query model), "scores" and "pattern" ([batch, head, query,
key]: a position is a *key* column, so position 0 is the column of token 1 seen by every query; note
that TransformerLens' ``get_act_patch_attn_head_pattern_by_pos`` indexes query rows instead),
"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out" ([batch, pos, d_model]), "mlp_post" (the
MLP's neurons, the input of W_out: [batch, pos, d_mlp]); for interventions, "bias_pattern" (the bias
slot's weight) and "row_weight" (sinkinterp attention other than softmax: the factor each ``hook_pattern``
row is multiplied by), both [batch, head, query] without a position axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.measure import validate_tokens

__all__ = [
    "COMPONENTS",
    "Component",
    "Cell",
    "Source",
    "run_cells",
    "patch",
    "patch_first_token",
    "clean_hooks",
    "capture",
    "loss_metric",
    "logit_diff_metric",
    "SKIP_MODES",
]

Metric = Callable[[Tensor], Tensor]
SKIP_MODES = ("auto", "layer", "none")
# a source maps (activation [rows, ...], layer) -> the replacement, same shape
Source = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Component:
    """A hook per layer and where its head and position axes sit (None: no such axis)."""

    name: str
    hook: str  # format string with {l}
    head_dim: int | None
    pos_dim: int | None
    kv: bool = False  # head axis counts key/value heads
    query_dim: int | None = None  # [query, key] components: the query axis (pos_dim is the key axis)

    def hook_name(self, layer: int) -> str:
        return self.hook.format(l=layer)


def _bphd(name: str, kv: bool = False) -> Component:
    return Component(name, f"blocks.{{l}}.attn.hook_{name}", head_dim=2, pos_dim=1, kv=kv)


COMPONENTS: dict[str, Component] = {
    "q": _bphd("q"),
    "k": _bphd("k", kv=True),
    "v": _bphd("v", kv=True),
    "z": _bphd("z"),
    "rot_q": _bphd("rot_q"),
    "rot_k": _bphd("rot_k", kv=True),
    "scores": Component("scores", "blocks.{l}.attn.hook_attn_scores", head_dim=1, pos_dim=3, query_dim=2),
    "pattern": Component("pattern", "blocks.{l}.attn.hook_pattern", head_dim=1, pos_dim=3, query_dim=2),
    "bias_pattern": Component("bias_pattern", "blocks.{l}.attn.hook_bias_pattern", head_dim=1, pos_dim=None),
    # attention other than softmax (sinkinterp models): [batch, head, query], the factor of each hook_pattern row
    "row_weight": Component("row_weight", "blocks.{l}.attn.hook_row_weight", head_dim=1, pos_dim=None),
    "pos_embed": Component("pos_embed", "hook_pos_embed", head_dim=None, pos_dim=1),
    "mlp_post": Component("mlp_post", "blocks.{l}.mlp.hook_post", head_dim=None, pos_dim=1),  # W_out's input
    **{name: Component(name, f"blocks.{{l}}.hook_{name}", head_dim=None, pos_dim=1)
       for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")},
}


def component(name: object) -> Component:
    if isinstance(name, Component):
        return name
    if name not in COMPONENTS:
        raise ValueError(f"component: got {name!r}, allowed values are {sorted(COMPONENTS)}")
    return COMPONENTS[name]  # type: ignore[index]


@dataclass(frozen=True)
class Cell:
    """One place to edit: ``layer``; ``head`` (None: every head; a tuple: several units of the head axis);
    ``pos`` (None: every position, an int or a tuple of positions)."""

    layer: int
    head: int | tuple[int, ...] | None = None
    pos: int | tuple[int, ...] | None = None


# =========================================================================================
# metrics
# =========================================================================================
def loss_metric(tokens: Int[Tensor, "batch pos"], target_start: int = 1) -> Metric:
    """Mean next-token cross entropy of ``tokens`` (targets from 0-based index ``target_start``),
    as a metric of logits [batch, pos, vocab]."""
    if not isinstance(target_start, int) or not 1 <= target_start < tokens.shape[1]:
        raise ValueError(f"target_start must be an integer in [1, {tokens.shape[1] - 1}], got {target_start!r}")

    def metric(logits: Tensor) -> Tensor:
        return per_token_loss(logits, tokens.to(logits.device))[:, target_start - 1:].mean()

    return metric


def per_token_loss(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """Cross entropy of each next-token prediction, [batch, pos - 1] (target j is tokens[:, j])."""
    lg = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    return torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(tokens.shape[0], -1)


def logit_diff_metric(correct: Sequence[int], wrong: Sequence[int], pos: int = -1) -> Metric:
    """Mean over the batch of logit[correct_i] - logit[wrong_i] at position ``pos``."""
    if len(correct) != len(wrong):
        raise ValueError(f"correct and wrong must have the same length, got {len(correct)} and {len(wrong)}")
    c = torch.as_tensor(list(correct))
    w = torch.as_tensor(list(wrong))

    def metric(logits: Tensor) -> Tensor:
        if logits.shape[0] != len(c):
            raise ValueError(f"logit_diff_metric: expected a batch of {len(c)} sequences, got {logits.shape[0]}")
        last = logits[:, pos]
        idx = torch.arange(len(c), device=logits.device)
        return (last[idx, c.to(logits.device)] - last[idx, w.to(logits.device)]).mean()

    return metric


# =========================================================================================
# the engine
# =========================================================================================
def _hook_map_kept(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(model, ...)`` with the model's hook map read once for the whole call
    (``tl_adapter.hook_dict_kept``: a bridge rebuilds it on every read)."""
    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        with tl_adapter.hook_dict_kept(model):
            return fn(model, *args, **kwargs)

    return wrapper


def _dims(model: Any) -> dict[str, Any]:
    return tl_adapter.model_dims(model)


def _n_heads(model: Any, comp: Component) -> int:
    dims = _dims(model)
    return dims["n_kv_heads"] if comp.kv else dims["n_heads"]


def _check_cells(model: Any, comp: Component, cells: Sequence[Cell], seq_len: int) -> None:
    dims = _dims(model)
    names = set(tl_adapter.hook_names(model))
    n_heads = _n_heads(model, comp)
    layered = "{l}" in comp.hook
    for cell in cells:
        if not isinstance(cell, Cell):
            raise TypeError(f"cells: expected Cell objects, got {type(cell).__name__}")
        if layered and not 0 <= cell.layer < dims["n_layers"]:
            raise ValueError(f"cells: layer {cell.layer} is outside the model (0..{dims['n_layers'] - 1})")
        if cell.head is not None:
            if comp.head_dim is None:
                raise ValueError(f"cells: component {comp.name!r} has no head axis; use head=None")
            if not 0 <= cell.head < n_heads:
                kind = "key/value heads" if comp.kv else "heads"
                raise ValueError(f"cells: head {cell.head} is outside the model's {n_heads} {kind}")
        if cell.pos is not None:
            if comp.pos_dim is None:
                raise ValueError(f"cells: component {comp.name!r} has no position axis; use pos=None")
            for p in (cell.pos,) if isinstance(cell.pos, int) else cell.pos:
                if not 0 <= p < seq_len:
                    raise ValueError(f"cells: position {p} is outside the sequence (0..{seq_len - 1})")
        hook = comp.hook_name(cell.layer)
        if hook not in names:
            raise ValueError(f"model has no hook {hook} (component {comp.name!r}; see docs/hook-contract.md)")


def _cell_mask(comp: Component, cells: Sequence[Cell], act: Tensor) -> Tensor:
    """Boolean mask [n_cells, *act.shape[1:]] (size 1 on the axes a cell does not select)."""
    shape = [len(cells)] + [1] * (act.dim() - 1)
    if comp.head_dim is not None:
        shape[comp.head_dim] = act.shape[comp.head_dim]
    if comp.pos_dim is not None:
        shape[comp.pos_dim] = act.shape[comp.pos_dim]
    mask = torch.zeros(shape, dtype=torch.bool, device=act.device)

    def axis(dim: int, chosen: int | tuple[int, ...]) -> Tensor:  # the chosen units of one axis, broadcastable
        sel = torch.zeros(act.shape[dim], dtype=torch.bool, device=act.device)
        sel[[chosen] if isinstance(chosen, int) else list(chosen)] = True
        return sel.view([-1 if d == dim else 1 for d in range(1, act.dim())])

    for i, cell in enumerate(cells):
        m = torch.ones(shape[1:], dtype=torch.bool, device=act.device)
        if cell.head is not None:  # a head, or (path patching's neuron senders) several units of that axis
            m = m & axis(comp.head_dim, cell.head)  # type: ignore[arg-type]
        if cell.pos is not None:
            m = m & axis(comp.pos_dim, cell.pos)  # type: ignore[arg-type]
        mask[i] = m
    return mask


def edit_hooks(model: Any, edits: Sequence[tuple[Component, Source]], cells: Sequence[Cell],
               n_copies: int | None = None, before: tuple[int, dict[str, Tensor]] | None = None,
               ) -> list[tuple[str, Any]]:
    """Forward hooks that apply each (component, source) edit at ``cells``.

    With ``n_copies`` None every row of the batch gets every cell's edit (an intervention on the
    whole batch, any batch size). With ``n_copies = len(cells)`` the batch is read as that many
    stacked copies of the input and copy i is edited at cell i only. ``before`` = (p, activations of
    one unedited batch by hook name): the pass computes positions p.. only, and each hook puts the
    unedited positions before p back in front so that sources and cells see whole sequences.
    """
    hooks: list[tuple[str, Any]] = []
    for comp, source in edits:
        by_layer: dict[int, list[int]] = {}
        for i, cell in enumerate(cells):
            by_layer.setdefault(cell.layer if "{l}" in comp.hook else 0, []).append(i)
        for layer, idx in by_layer.items():
            hooks.append((comp.hook_name(layer), _make_hook(comp, source, layer, cells, idx, n_copies, before)))
    tl_adapter.check_editable(model, [name for name, _ in hooks])
    return hooks


def _make_hook(comp: Component, source: Source, layer: int, cells: Sequence[Cell], idx: list[int],
               n_copies: int | None, before: tuple[int, dict[str, Tensor]] | None = None) -> Any:
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if before is not None:  # [rows, pos - p, ...] -> whole sequences, edited, then cut again
            p, acts = before  # (the query rows of a [query, key] component: its keys are all there)
            axis = comp.query_dim if comp.query_dim is not None else 1
            head = acts[comp.hook_name(layer)].narrow(axis, 0, p).to(act.dtype)
            head = head.repeat(act.shape[0] // head.shape[0], *([1] * (head.dim() - 1)))
            edited = _edit(torch.cat([head, act], dim=axis))
            return edited.narrow(axis, p, edited.shape[axis] - p)
        return _edit(act)

    def _edit(act: Tensor) -> Tensor:
        new = source(act, layer)
        if n_copies is None:
            mask = _cell_mask(comp, [cells[i] for i in idx], act).any(0, keepdim=True)
        else:
            rows = act.shape[0] // n_copies
            mask = torch.zeros((n_copies, *_cell_mask(comp, [cells[idx[0]]], act).shape[1:]), dtype=torch.bool,
                               device=act.device)
            mask[idx] = _cell_mask(comp, [cells[i] for i in idx], act)
            mask = mask.repeat_interleave(rows, dim=0)
        return torch.where(mask, new.to(act.dtype), act)

    return hook


@_hook_map_kept
def run_cells(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    edits: Sequence[tuple[object, Source]],
    cells: Sequence[Cell],
    metric: Metric,
    *,
    batch_rows: int = 64,
    progress: bool = False,
    extra_hooks: Sequence[tuple[str, Any]] = (),
    skip: str = "auto",
    metric_positions: Sequence[int] | None = None,
    _unedited: _Run | None = None,
    _query_starts: dict[Cell, int] | None = None,
) -> np.ndarray:
    """``metric`` of the model's logits with the edits applied at each cell separately: [n_cells].

    Each forward pass holds ``max(1, batch_rows // batch)`` copies of ``tokens``. ``extra_hooks``
    are attached for every pass (for example the hooks of a patching source that reads the
    clean run). The edits must not depend on other rows of the batch. ``skip``: what a pass may
    take from the unedited run instead of computing it (``SKIP_MODES``): "auto" the blocks before
    its first edited layer and, on sinkinterp models and HookedTransformers, the positions before
    its first edited position; on a TransformerBridge the same, through its Hugging Face model
    (recorded block outputs, its own key-value cache), each where it reproduces the unedited run
    (checked once per call); "layer" only the blocks; "none" nothing (every pass in full).
    Results are the same. ``metric_positions``: the positions (0-based, or negative from the end)
    whose logits the metric reads, None for all; the metric then gets ``logits[:, metric_positions]``
    and passes unembed those positions only (``tl_adapter.unembed_positions``: a large
    vocabulary's unembedding is a large part of a pass that starts at a late layer), and a pass
    whose edits all come after them is not run. ``_unedited`` (internal): a record of the unedited
    run of ``tokens`` (``_record``) whose activations and, on a bridge, Hugging Face record stand in
    for the ones this call would otherwise record in a pass of its own. ``_query_starts``
    (internal): for a [query, key] component, each cell's first query row the edit changes
    (``patch`` knows it from the clean and corrupted runs), so that its passes start there; without
    it such passes start at position 0 (an edit's source may need the whole pass).
    """
    if skip not in SKIP_MODES:
        raise ValueError(f"skip: got {skip!r}, allowed values are {list(SKIP_MODES)}")
    comps = [(component(c), s) for c, s in edits]
    dims = _dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    mp = _metric_positions(metric_positions, tokens.shape[1])
    for comp, _ in comps:
        _check_cells(model, comp, cells, tokens.shape[1])
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    device = _model_device(model)
    tokens = tokens.to(device)
    b = tokens.shape[0]
    per_pass = max(1, batch_rows // b)
    # Start each pass at its first edited layer: the blocks before it compute the same residual
    # stream for every copy, taken once from the unedited run (not with extra hooks, which may need
    # the earlier layers, nor for edits outside the blocks, such as pos_embed).
    start_from = None
    if skip != "none" and not extra_hooks and all("{l}" in c.hook for c, _ in comps):
        start_from = _start_fn(model)
    # A sinkinterp model or a HookedTransformer also starts each pass at its first edited position,
    # when every edit is of a per-token activation: earlier positions cannot see the edit (causal
    # attention), so their keys and values, and logits, are the unedited run's (_Prefix). Cells are then grouped into
    # passes by blocks of nearby layers and positions, which shortens the passes on both axes.
    # A TransformerBridge starts passes through its Hugging Face model (_HFPrefix): blocks before
    # the first edited layer return their recorded outputs, positions before p come from the model's
    # own key-value cache.
    prefix: _Prefix | _HFPrefix | None = None
    if skip == "auto" and start_from is not None:
        prefix = _Prefix.build(model, tokens, comps, cells, _unedited, _query_starts)
    elif skip != "none" and not extra_hooks and all("{l}" in c.hook for c, _ in comps):
        prefix = _HFPrefix.build(model, tokens, comps, cells, positions=skip == "auto", unedited=_unedited,
                                 query_starts=_query_starts)
    order = list(range(len(cells)))
    if prefix is not None:
        order = _block_order(cells, per_pass, by_layer=isinstance(prefix, _Prefix) or prefix.layers_ok)
    chunk_idx = [order[i:i + per_pass] for i in range(0, len(cells), per_pass)]
    resid_at: dict[int, Tensor] = {}
    if isinstance(prefix, _Prefix):
        resid_at = {l: prefix.acts[f"blocks.{l}.hook_resid_pre"] for l in range(dims["n_layers"])}
    elif start_from is not None:
        starts = sorted({min(cells[i].layer for i in idx) for idx in chunk_idx} - {0})
        if starts:
            names = [f"blocks.{l}.hook_resid_pre" for l in starts]
            captured = _unedited.acts if _unedited is not None and _unedited.has(names) else capture(model, tokens, names)
            resid_at = {l: captured[f"blocks.{l}.hook_resid_pre"].to(device) for l in starts}
    chunks: Iterable[list[int]] = chunk_idx
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=len(chunk_idx), desc="cells", unit="pass")
    out = np.empty(len(cells), dtype=np.float64)
    with _eval_mode(model), torch.no_grad():
        for idx in chunks:
            chunk = [cells[i] for i in idx]
            n = len(chunk)
            first = min(c.layer for c in chunk)
            pos0 = prefix.first_position(chunk) if prefix is not None else 0
            if isinstance(prefix, _HFPrefix):  # a bridge: its blocks may be replayed without a position start
                first = prefix.first_layer(chunk)
            keep = None if mp is None else sorted({p - pos0 for p in mp if p >= pos0})
            if keep == []:  # every position the metric reads comes before every edit: the unedited logits
                value = float(metric(prefix.logits[:, mp]))
                out[idx] = value
                continue
            if pos0 or (isinstance(prefix, _HFPrefix) and first):
                before = (pos0, prefix.acts) if pos0 else None
                hooks = edit_hooks(model, comps, chunk, n_copies=n, before=before)
                with tl_adapter.attached_hooks(model, hooks), tl_adapter.unembed_positions(model, keep):
                    new = prefix.run(tokens, n, first, pos0)
            else:
                hooks = list(extra_hooks) + edit_hooks(model, comps, chunk, n_copies=n)
                with tl_adapter.attached_hooks(model, hooks), tl_adapter.unembed_positions(model, keep):
                    if first and first in resid_at:
                        new = start_from(tokens.repeat(n, 1), first, resid_at[first].repeat(n, 1, 1))
                    else:
                        new = model(tokens.repeat(n, 1))
            if keep is not None:  # the metric's positions, in its order: computed ones, or unedited ones before pos0
                if new.shape[1] != len(keep):  # a model whose unembedding the adapter does not know: cut here
                    new = new[:, keep]
                logits = torch.stack([new[:, keep.index(p - pos0)] if p >= pos0
                                      else prefix.logits[:, p].repeat(n, 1) for p in mp], dim=1)
            elif pos0:
                logits = torch.cat([prefix.logits[:, :pos0].repeat(n, 1, 1), new], dim=1)
            else:
                logits = new
            for j, i in enumerate(idx):
                out[i] = float(metric(logits[j * b:(j + 1) * b]))
    return out


def _metric_positions(positions: object, T: int) -> list[int] | None:
    """``metric_positions`` as non-negative indices (order kept), or None for every position."""
    if positions is None:
        return None
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence):
        raise TypeError(f"metric_positions: expected a sequence of integers or None, got {positions!r}")
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not -T <= int(p) < T:
            raise ValueError(f"metric_positions: {p!r} is not a position of a sequence of {T} "
                             f"(integers in -{T}..{T - 1})")
        out.append(int(p) % T)
    if not out:
        raise ValueError("metric_positions: empty (None reads every position)")
    return out


# (tokens, layer, resid of positions p.., p, [(k, v) of positions ..p-1 per block from layer on]) -> logits of p..
_ContinueFn = Callable[[Tensor, int, Tensor, int, list[tuple[Tensor, Tensor]]], Tensor]


def _continuation(model: Any, comps: Sequence[tuple[Component, Source]],
                  ) -> tuple[_ContinueFn, str, Callable[[int], bool]] | None:
    """How ``model`` continues a run from a position: the function, the hook whose keys it takes as
    the past, and which positions it can start at; None where it cannot (or where a hook to edit
    would see every position in such a pass)."""
    if hasattr(model, "can_start_at_pos"):  # a sinkinterp model
        k_name = "hook_rot_k" if tl_adapter.has_hook(model, "blocks.0.attn.hook_rot_k") else "hook_k"
        return ((lambda toks, layer, resid, pos, past: model(toks, start_at_layer=layer, resid=resid,
                                                             start_at_pos=pos, past_kv=past)),
                k_name, model.can_start_at_pos)
    fn = tl_adapter.start_at_pos_fn(model)
    if fn is None or any(c.name == "rot_k" for c, _ in comps):  # TransformerLens rotates every key again
        return None
    return (lambda toks, layer, resid, pos, past: fn(layer, resid, pos, past)), "hook_k", lambda pos: True


@dataclass
class _Prefix:
    """The unedited run of a model that can continue a run from a position p (a sinkinterp model, a
    HookedTransformer), kept to continue edited passes from p: residual streams, keys and values of
    every layer, the edited activations (so edit sources still see whole sequences) and the logits."""

    acts: dict[str, Tensor]
    logits: Tensor
    k_name: str
    n_layers: int
    run_fn: _ContinueFn
    can_start: Callable[[int], bool]
    starts: dict[Cell, int]  # each cell's first position an edit changes

    @staticmethod
    def build(model: Any, tokens: Tensor, comps: Sequence[tuple[Component, Source]],
              cells: Sequence[Cell], unedited: _Run | None = None,
              query_starts: dict[Cell, int] | None = None) -> _Prefix | None:
        """The unedited run's record (taken from ``unedited`` where it holds every activation
        needed), or None where no pass could start after position 0. A cell of a per-token
        component starts at its first position; a cell of a [query, key] component (scores,
        pattern) at ``query_starts[cell]``, the first query row its edit changes (the rows before
        stay the unedited ones: for a patch whose clean and corrupted prompts share a prefix, the
        rows of that prefix); without ``query_starts`` such edits get None."""
        if any(c.pos_dim != 1 and c.query_dim is None for c, _ in comps):
            return None
        if query_starts is None and any(c.query_dim is not None for c, _ in comps):
            return None
        if any(c.pos_dim == 1 for c, _ in comps) and (
                any(c.pos is None for c in cells) or max(_Prefix._min_pos([c]) for c in cells) == 0):
            return None
        cont = _continuation(model, comps)
        if cont is None:
            return None
        run_fn, k_name, can_start = cont
        L = _dims(model)["n_layers"]
        wanted = {f"blocks.{l}.{n}" for l in range(L) for n in ("hook_resid_pre", f"attn.{k_name}", "attn.hook_v")}
        wanted |= {c.hook_name(cell.layer) for c, _ in comps for cell in cells}
        if unedited is not None and unedited.has(wanted):
            acts, logits = unedited.acts, unedited.logits
        else:
            acts, logits = _capture_run(model, tokens, sorted(wanted))
        starts = {cell: min(_Prefix._min_pos([cell]) if c.query_dim is None else (query_starts or {}).get(cell, 0)
                            for c, _ in comps) for cell in cells}
        if max(starts.values()) == 0:
            return None
        return _Prefix(acts, logits, k_name, L, run_fn, can_start, starts)

    @staticmethod
    def _min_pos(chunk: Sequence[Cell]) -> int:
        if any(c.pos is None for c in chunk):
            return 0
        return min(c.pos if isinstance(c.pos, int) else min(c.pos) for c in chunk)

    def first_position(self, chunk: Sequence[Cell]) -> int:
        p = min(self.starts[c] for c in chunk)
        return p if p and self.can_start(p) else 0

    def run(self, tokens: Tensor, n: int, layer: int, pos: int) -> Tensor:
        """Logits of positions pos.. of n stacked copies, computed from ``layer`` and ``pos`` on (hooks
        attached by the caller)."""
        acts, L = self.acts, self.n_layers
        rep = lambda t: t.repeat(n, *([1] * (t.dim() - 1)))  # noqa: E731
        past = [(rep(acts[f"blocks.{l}.attn.{self.k_name}"][:, :pos]), rep(acts[f"blocks.{l}.attn.hook_v"][:, :pos]))
                for l in range(layer, L)]
        resid = rep(acts[f"blocks.{layer}.hook_resid_pre"][:, pos:])
        return self.run_fn(tokens.repeat(n, 1), layer, resid, pos, past)


def _first_changed_row(comp: Component, source: Source, acts: dict[str, Tensor], cell: Cell) -> int:
    """The first query row where ``source`` changes the unedited [query, key] activation inside
    ``cell`` (the last row where it changes nothing: a pass that starts there gives the unedited
    logits)."""
    act = acts[comp.hook_name(cell.layer)]
    changed = (source(act, cell.layer).to(act.dtype) != act) & _cell_mask(comp, [cell], act)
    rows = changed.movedim(comp.query_dim, 0).reshape(act.shape[comp.query_dim], -1).any(1).nonzero()
    return int(rows[0]) if len(rows) else act.shape[comp.query_dim] - 1


@dataclass
class _HFPrefix:
    """The unedited run of a TransformerBridge, kept to start edited passes later through its
    Hugging Face model: at a layer (the blocks before it return their recorded outputs) and, for
    per-token components, at a position p (the keys and values before p from the model's own
    key-value cache; the edited activations kept so that edit sources see whole sequences). Each
    way is used only where one unedited pass that starts late reproduces the run's logits (and, for
    positions, every edited hook saw positions p.. only in it)."""

    acts: dict[str, Tensor]
    record: Any  # tl_adapter.HFRecord
    cont: Callable[[Tensor, int, int, Any, int], Tensor]
    layers_ok: bool
    positions_ok: bool
    starts: dict[Cell, int]  # each cell's first position an edit changes (as _Prefix)

    @staticmethod
    def build(model: Any, tokens: Tensor, comps: Sequence[tuple[Component, Source]],
              cells: Sequence[Cell], positions: bool = True, unedited: _Run | None = None,
              query_starts: dict[Cell, int] | None = None) -> _HFPrefix | None:
        """The record (``unedited``'s where it has one with every edited activation, else one more
        pass) and which ways to start reproduce the run, checked on the first sequence; None where
        neither does. Positions as in ``_Prefix.build`` (``query_starts`` for [query, key] edits)."""
        fns = tl_adapter.hf_continuation(model)
        if fns is None:
            return None
        cont = fns[1]
        T = tokens.shape[1]
        layers = [c.layer for c in cells if c.layer > 0]
        by_pos = positions and all(c.pos_dim == 1 or (c.query_dim is not None and query_starts is not None)
                                   for c, _ in comps) \
            and not (any(c.pos_dim == 1 for c, _ in comps) and any(c.pos is None for c in cells))
        cell_starts = {cell: min(_Prefix._min_pos([cell]) if c.query_dim is None else (query_starts or {}).get(cell, 0)
                                 for c, _ in comps) for cell in cells} if by_pos else {}
        starts = [p for p in cell_starts.values() if p > 0]
        if not layers and not starts:
            return None
        names = sorted({c.hook_name(cell.layer) for c, _ in comps for cell in cells})
        axis = {c.hook_name(cell.layer): 1 if c.query_dim is None else c.query_dim for c, _ in comps for cell in cells}
        seen: dict[str, int] = {}

        def count(name: str) -> Any:
            def hook(act: Tensor, hook: Any = None) -> None:
                seen[name] = act.shape[axis[name]]

            return hook

        with _eval_mode(model), torch.no_grad():
            if unedited is not None and unedited.hf is not None and unedited.has(names):
                acts, record = unedited.acts, unedited.hf
            else:
                got = _record(model, tokens, names, hf=True)
                if got.hf is None:  # e.g. a model whose cache is no DynamicCache: passes run in full
                    return None
                acts, record = got.acts, got.hf
            if record.past is None or any(k.shape[2] != T for k, _ in record.past):
                starts = []  # a layer's cache does not hold one key per position (not one HF can continue from)
            one = tl_adapter.HFRecord(record.logits[:1], None if record.past is None else
                                      [(k[:1], v[:1]) for k, v in record.past],
                                      [_first_row(o) for o in record.block_outputs])

            def reproduces(layer: int, pos: int) -> bool:
                seen.clear()
                edited = [n for n in names if int(n.split(".")[1]) >= layer]
                try:
                    with tl_adapter.attached_hooks(model, [(n, count(n)) for n in edited]):
                        got = cont(tokens[:1], layer, pos, one, 1)
                except Exception:  # noqa: BLE001 - a pass that cannot start there runs in full
                    return False
                want = one.logits[:, pos:].double()
                return (got.shape == want.shape and all(n in seen and (not pos or seen[n] == T - pos) for n in edited)
                        and torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4 * (1 + float(want.abs().max()))))

            p = min(starts) if starts else 0
            layer = min(layers) if layers else 0
            layers_ok = bool(layers) and reproduces(layer, 0)
            positions_ok = bool(starts) and reproduces(layer if layers_ok else 0, p)
        if not (layers_ok or positions_ok):
            return None
        return _HFPrefix(acts, record, cont, layers_ok, positions_ok, cell_starts)

    @property
    def logits(self) -> Tensor:
        return self.record.logits

    def first_position(self, chunk: Sequence[Cell]) -> int:
        return min(self.starts[c] for c in chunk) if self.positions_ok else 0

    def first_layer(self, chunk: Sequence[Cell]) -> int:
        return min(c.layer for c in chunk) if self.layers_ok else 0

    def run(self, tokens: Tensor, n: int, layer: int, pos: int) -> Tensor:
        """Logits of positions pos.. of n stacked copies, from ``layer`` and ``pos`` on (hooks attached
        by the caller)."""
        return self.cont(tokens, layer, pos, self.record, n)


def _block_order(cells: Sequence[Cell], per_pass: int, by_layer: bool = True) -> list[int]:
    """Cell indices ordered so that consecutive runs of ``per_pass`` cover compact blocks of the
    (layer, first position) grid: a pass costs about (layers after its first) x (positions after
    its first), which square-ish blocks keep smaller than whole layers or whole positions. Without
    ``by_layer`` (passes run every layer) the order is by first position alone."""
    def first_pos(c: Cell) -> int:
        return 0 if c.pos is None else c.pos if isinstance(c.pos, int) else min(c.pos)

    if not by_layer:
        return sorted(range(len(cells)), key=lambda i: (first_pos(cells[i]), cells[i].layer, i))

    per_site = max(1, len(cells) // max(1, len({(c.layer, first_pos(c)) for c in cells})))  # e.g. heads
    side = max(1, math.isqrt(max(1, per_pass // per_site)))
    return sorted(range(len(cells)), key=lambda i: (cells[i].layer // side, first_pos(cells[i]) // side,
                                                    cells[i].layer, first_pos(cells[i]), i))


def _start_fn(model: Any) -> Callable[[Tensor, int, Tensor], Tensor] | None:
    """``f(tokens, layer, resid) -> logits`` running ``model`` from block ``layer`` on the residual
    stream ``resid`` entering it, or None where the model cannot (then every pass runs in full)."""
    if getattr(model, "can_start_at_layer", False):
        return lambda toks, layer, resid: model(toks, start_at_layer=layer, resid=resid)
    return tl_adapter.start_at_layer_fn(model)


class _eval_mode:
    def __init__(self, model: Any):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = bool(getattr(self.model, "training", False))
        if self.was_training:  # eval() walks every module (slow on a bridge): only when needed
            self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        if self.was_training:
            self.model.train()


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


# =========================================================================================
# activation patching
# =========================================================================================
def capture(model: Any, tokens: Tensor, hook_names: Sequence[str]) -> dict[str, Tensor]:
    """Activations at ``hook_names`` for one forward pass on ``tokens`` (hooks removed afterwards). The
    logits are not returned, so the model unembeds the last position only, unless a hook asked for is the
    unembedding's own (``tl_adapter.unembed_positions``)."""
    if any("unembed" in name for name in hook_names):
        return _capture_run(model, tokens, hook_names)[0]
    with tl_adapter.unembed_positions(model, [tokens.shape[-1] - 1]):
        return _capture_run(model, tokens, hook_names)[0]


def _capture_run(model: Any, tokens: Tensor, hook_names: Sequence[str],
                 run: Callable[[Tensor], Any] | None = None) -> tuple[dict[str, Tensor], Any]:
    """Activations at ``hook_names`` and the output of one pass over ``tokens``: ``model(tokens)``,
    or ``run(tokens)`` (a pass through the model that fires the same hooks)."""
    store: dict[str, Tensor] = {}
    names = set(tl_adapter.hook_names(model))
    for name in hook_names:
        if name not in names:
            raise ValueError(f"model has no hook {name} (see docs/hook-contract.md)")

    def save(name: str) -> Any:
        def hook(act: Tensor, hook: Any = None) -> None:
            store[name] = act.detach().clone()

        return hook

    with _eval_mode(model), torch.no_grad(), tl_adapter.attached_hooks(model, [(n, save(n)) for n in hook_names]):
        out = (run or model)(tokens.to(_model_device(model)))
    return store, out


@dataclass
class _Run:
    """A recorded unedited run: activations by hook name, logits and, when recorded through a
    bridge's Hugging Face model (``tl_adapter.hf_continuation``), that record (key-value cache,
    block outputs) to continue passes from."""

    acts: dict[str, Tensor]
    logits: Tensor
    hf: Any = None  # tl_adapter.HFRecord

    def has(self, names: Iterable[str]) -> bool:
        return all(n in self.acts for n in names)


def _record(model: Any, tokens: Tensor, hook_names: Sequence[str], hf: bool = False) -> _Run:
    """One pass keeping ``hook_names``; with ``hf``, on a bridge that can continue runs, through
    ``hf_continuation``'s recording pass (the same hooks fire), so that the same pass serves as the
    record later passes start from (``hf`` None in the result where that pass raised: a model whose
    cache is no DynamicCache, for example)."""
    fns = tl_adapter.hf_continuation(model) if hf else None
    if fns is None:
        return _Run(*_capture_run(model, tokens, hook_names))
    try:
        acts, record = _capture_run(model, tokens, hook_names, run=fns[0])
    except Exception:  # noqa: BLE001 - the caller runs every pass in full (a wrong hook name raises again here)
        return _Run(*_capture_run(model, tokens, hook_names))
    return _Run(acts, record.logits, record)


def _first_row(out: Any) -> Any:
    """A recorded block output (``tl_adapter._hidden_only``) for the first sequence."""
    if isinstance(out, tuple):
        return tuple(o[:1] if isinstance(o, Tensor) else o for o in out)
    return out[:1] if isinstance(out, Tensor) else out


def _unedited_names(model: Any, comp: Component, cells: Sequence[Cell], skip: str) -> list[str]:
    """What run_cells would record of the unedited run besides the edited activations: every
    layer's residual stream and, for cells at positions, the keys and values a pass continuing
    from a position takes."""
    if skip == "none" or "{l}" not in comp.hook or _start_fn(model) is None:
        return []
    L = _dims(model)["n_layers"]
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    by_pos = skip == "auto" and ((comp.pos_dim == 1 and all(c.pos is not None for c in cells))
                                 or comp.query_dim is not None)
    cont = _continuation(model, [(comp, lambda a, l: a)]) if by_pos else None
    if cont is not None:
        names += [f"blocks.{l}.attn.{n}" for l in range(L) for n in (cont[1], "hook_v")]
    return names


@dataclass
class PatchResult:
    """Patching results: ``values`` has axes ``axes`` (a sub-list of layer, pos, head), as in
    transformer_lens.patching; ``clean`` and ``corrupted`` are the metric on the unpatched runs."""

    component: str
    values: np.ndarray
    axes: tuple[str, ...]
    positions: list[int]
    clean: float
    corrupted: float
    together: float | None = None  # the metric with every cell patched at once

    def normalized(self) -> np.ndarray:
        """(patched - corrupted) / (clean - corrupted): 0 = no effect, 1 = fully restores clean."""
        span = self.clean - self.corrupted
        if span == 0:
            raise ZeroDivisionError("clean and corrupted metrics are equal; nothing to normalize by")
        return (self.values - self.corrupted) / span

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "axes": list(self.axes), "positions": self.positions,
                "values": np.asarray(self.values, dtype=np.float64).round(8).tolist(),
                "clean": self.clean, "corrupted": self.corrupted, "together": self.together}


@_hook_map_kept
def patch(
    model: Any,
    clean_tokens: object,
    corrupted_tokens: object,
    component_name: str,
    metric: Metric,
    *,
    positions: Sequence[int] | None = None,
    by_pos: bool = True,
    by_head: bool = True,
    layers: Sequence[int] | None = None,
    batch_rows: int = 64,
    progress: bool = False,
    skip: str = "auto",
    metric_positions: Sequence[int] | None = None,
) -> PatchResult:
    """Patch ``component_name`` from the clean run into the corrupted run, one cell at a time.

    ``positions`` (default: all) are the positions patched; with ``by_pos`` each is its own cell,
    otherwise they are patched together. ``by_head`` gives each head its own cell (components with a
    head axis). The result's axes follow transformer_lens.patching: [layer, pos, head] for
    ``get_act_patch_attn_head_k_by_pos``, [layer, head] for ``..._all_pos``, [layer, pos] for
    ``get_act_patch_resid_pre``. ``metric(logits)`` sees the logits of one copy of the corrupted batch.
    ``skip``: see ``run_cells`` (changes the time, not the result); unless it is "none", a cell is
    also narrowed to the positions where the clean and corrupted activations differ, and a cell where
    they do not differ at all gets the corrupted metric without a pass (for example position p > 0 of
    layer 0's keys when only the first token was corrupted, or every position before the first
    corrupted one). ``together`` in the result: the metric with every cell patched at once (for
    example token 1's key at every layer: a mechanism spread over layers that no single cell
    restores). ``metric_positions``: the positions whose logits ``metric`` reads (see ``run_cells``;
    for example ``[-1]`` with ``logit_diff_metric(..., pos=-1)``): it then sees ``logits[:,
    metric_positions]`` everywhere, the unpatched runs included, and passes unembed those only.
    """
    comp = component(component_name)
    if skip not in SKIP_MODES:
        raise ValueError(f"skip: got {skip!r}, allowed values are {list(SKIP_MODES)}")
    dims = _dims(model)
    clean_tokens = validate_tokens(clean_tokens, dims["d_vocab"], "clean_tokens")
    corrupted_tokens = validate_tokens(corrupted_tokens, dims["d_vocab"], "corrupted_tokens")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens "
                         f"{tuple(corrupted_tokens.shape)} must have the same shape")
    T = clean_tokens.shape[1]
    mp = _metric_positions(metric_positions, T)
    at = (lambda logits: logits) if mp is None else (lambda logits: logits[:, mp])
    if comp.pos_dim is None and (positions is not None or by_pos):
        if positions is not None:
            raise ValueError(f"positions: component {comp.name!r} has no position axis")
        by_pos = False
    pos_list = list(range(T)) if positions is None else [int(p) for p in positions]
    if not pos_list:
        raise ValueError("positions: empty")
    for p in pos_list:
        if not 0 <= p < T:
            raise ValueError(f"positions: {p} is outside the sequence (0..{T - 1})")
    layer_list = list(range(dims["n_layers"])) if layers is None else [int(l) for l in layers]
    heads = list(range(_n_heads(model, comp))) if (by_head and comp.head_dim is not None) else [None]

    axes = ["layer"]
    pos_cells: list[Any] = pos_list if by_pos else [None if positions is None else tuple(pos_list)]
    if comp.pos_dim is None:
        pos_cells = [None]
    if by_pos and comp.pos_dim is not None:
        axes.append("pos")
    if heads != [None]:
        axes.append("head")
    cells = [Cell(l, h, p) for l in layer_list for p in pos_cells for h in heads]

    hook_list = sorted({comp.hook_name(l) for l in layer_list})
    # one pass each: the activations to patch in (clean) or compare with (corrupted), and the metric
    clean_acts, clean_logits = _capture_run(model, clean_tokens, hook_list)
    # the corrupted run, recorded once for everything after it: the activations to compare with, the
    # metric, and what run_cells' passes start from (its residual streams, keys and values; on a
    # bridge, the Hugging Face record)
    unedited = _record(model, corrupted_tokens,
                       sorted(set(hook_list) | set(_unedited_names(model, comp, cells, skip))),
                       hf=skip != "none")
    corrupted_acts, corrupted_logits = unedited.acts, unedited.logits

    def source(act: Tensor, layer: int) -> Tensor:
        clean = clean_acts[comp.hook_name(layer)]
        reps = act.shape[0] // clean.shape[0]
        return clean.repeat(reps, *([1] * (clean.dim() - 1)))

    with _eval_mode(model), torch.no_grad():
        device = _model_device(model)
        clean_value, corrupted_value = float(metric(at(clean_logits))), float(metric(at(corrupted_logits)))
        union = [Cell(l, None, None if positions is None else tuple(pos_list)) for l in layer_list]
        with tl_adapter.attached_hooks(model, edit_hooks(model, [(comp, source)], union)):
            together = float(metric(at(model(corrupted_tokens.to(device)))))
    if skip == "none":
        values = run_cells(model, corrupted_tokens, [(comp, source)], cells, metric, batch_rows=batch_rows,
                           skip=skip, progress=progress, metric_positions=mp, _unedited=unedited)
    else:  # a cell edits only where clean and corrupted differ; a cell that changes nothing needs no pass
        narrowed = _narrow_cells(comp, cells, clean_acts, corrupted_acts)
        kept = [i for i, c in enumerate(narrowed) if c is not None]
        values = np.full(len(cells), corrupted_value, dtype=np.float64)
        query_starts = None
        if comp.query_dim is not None and skip == "auto":  # rows before the first that differs stay as they are
            query_starts = {narrowed[i]: _first_changed_row(comp, source, corrupted_acts, narrowed[i]) for i in kept}
        if kept:
            values[kept] = run_cells(model, corrupted_tokens, [(comp, source)], [narrowed[i] for i in kept],
                                     metric, batch_rows=batch_rows, skip=skip, progress=progress,
                                     metric_positions=mp, _unedited=unedited, _query_starts=query_starts)
    shape = [len(layer_list)] + ([len(pos_list)] if "pos" in axes else []) + ([len(heads)] if "head" in axes else [])
    return PatchResult(comp.name, values.reshape(shape), tuple(axes), pos_list, clean_value, corrupted_value,
                       together)


def _narrow_cells(comp: Component, cells: Sequence[Cell], clean: dict[str, Tensor],
                  corrupted: dict[str, Tensor]) -> list[Cell | None]:
    """Each cell reduced to the positions where patching changes the corrupted run (the clean and
    corrupted activations differ in some sequence, in the cell's head), or None where it changes
    nothing: then the patched run is the corrupted run. Where the two inputs share a prefix (or
    tokens whose early activations do not depend on context), passes start later or are not run."""
    table: dict[str, Tensor] = {}  # hook -> bool [pos or 1, head or 1]: differs anywhere there

    def differs(hook: str) -> Tensor:
        if hook not in table:
            d = (clean[hook] != corrupted[hook]).any(0)  # the axes after the batch
            keep = [a - 1 for a in (comp.pos_dim, comp.head_dim) if a is not None]
            rest = [a for a in range(d.dim()) if a not in keep]
            d = d.permute(*keep, *rest).reshape(*(d.shape[a] for a in keep), -1).any(-1)
            if comp.pos_dim is None:
                d = d.unsqueeze(0)
            if comp.head_dim is None:
                d = d.unsqueeze(-1)
            table[hook] = d.cpu()
        return table[hook]

    out: list[Cell | None] = []
    for cell in cells:
        d = differs(comp.hook_name(cell.layer))
        d = d[:, cell.head] if cell.head is not None else d.any(-1)  # [pos or 1]
        if comp.pos_dim is None:
            out.append(cell if bool(d.any()) else None)
            continue
        wanted = range(d.shape[0]) if cell.pos is None else (cell.pos,) if isinstance(cell.pos, int) else cell.pos
        changed = tuple(p for p in wanted if bool(d[p]))
        if not changed:
            out.append(None)
        elif len(changed) == len(wanted):
            out.append(cell)
        else:
            out.append(Cell(cell.layer, cell.head, changed[0] if len(changed) == 1 else changed))
    return out


def clean_hooks(model: Any, clean_tokens: object, components: Sequence[str], *,
                positions: Sequence[int] | None = (0,), layers: Sequence[int] | None = None) -> list[tuple[str, Any]]:
    """Forward hooks that put the clean run's activations of ``components`` (several at once, for
    example ``["k", "v"]``) back at ``positions`` (None: all) in every layer of ``layers`` (default
    all). Attach them (``tl_adapter.attached_hooks``) to run a corrupted batch of the same shape
    under any metric or a ``measure``."""
    comps = [component(c) for c in components]
    if not comps:
        raise ValueError("components: empty")
    dims = _dims(model)
    clean_tokens = validate_tokens(clean_tokens, dims["d_vocab"], "clean_tokens")
    T = clean_tokens.shape[1]
    pos = None if positions is None else tuple(int(p) for p in positions)
    for p in pos or ():
        if not 0 <= p < T:
            raise ValueError(f"positions: {p} is outside the sequence (0..{T - 1})")
    layer_list = list(range(dims["n_layers"])) if layers is None else [int(l) for l in layers]
    for l in layer_list:
        if not 0 <= l < dims["n_layers"]:
            raise ValueError(f"layers: {l} is outside the model (0..{dims['n_layers'] - 1})")
    names = sorted({c.hook_name(l) for c in comps for l in layer_list})
    acts = capture(model, clean_tokens, names)
    def source_for(comp: Component) -> Source:
        def source(act: Tensor, layer: int) -> Tensor:
            clean = acts[comp.hook_name(layer)]
            if act.shape != clean.shape:
                raise ValueError(f"clean_hooks: {comp.hook_name(layer)} has shape {tuple(act.shape)} in this run, "
                                 f"{tuple(clean.shape)} in the clean one; run a corrupted batch of the clean "
                                 f"tokens' shape {tuple(clean_tokens.shape)} whole, in one pass")
            return clean.to(act.device)

        return source

    cells = [Cell(l, None, pos) for l in layer_list]
    return [h for c in comps for h in edit_hooks(model, [(c, source_for(c))], cells)]


def patch_first_token(
    model: Any,
    clean_tokens: object,
    corrupted_tokens: object,
    component_name: str,
    metric: Metric,
    **kwargs: Any,
) -> PatchResult:
    """Patch the first token's ``component_name`` (k, v, resid_pre, ...; for "scores" / "pattern"
    the column of key 1 seen by every query) per layer and head: values [layer, head] or [layer]."""
    comp = component(component_name)
    if comp.pos_dim is None:
        raise ValueError(f"component {comp.name!r} has no position axis to pick the first token from")
    return patch(model, clean_tokens, corrupted_tokens, component_name, metric, positions=[0], by_pos=False,
                 **kwargs)
