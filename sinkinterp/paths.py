"""Path patching: what one component sends to chosen heads' queries, keys or values along the residual
stream alone, on any model that speaks the hook-name contract.

Activation patching (``patching.patch``) gives a component's *total* effect: everything downstream of
it recomputes. Path patching (Wang et al., 2022, "Interpretability in the Wild"; Goldowsky-Dill et al.,
2023) asks what travels along one path: from a *sender* (the embedding, a layer's attention output,
one head's output, an MLP's output, one MLP neuron: a unit of ``blocks.L.mlp.hook_post``, what it writes
through its row of W_out) directly, through the residual stream only, into *receivers* (the
query, key or value inputs of chosen heads, or the unembedding). Two passes per sender, both of the
*base* run (the corrupted tokens, or the unedited run for an ablation):

1. the sender's activation takes its new value (the clean run's, or an ablation's), every attention
   and MLP output after it is frozen at the base run's value, and the receivers' activations
   (``hook_q`` / ``hook_k`` / ``hook_v`` of their layers: each is computed from a residual stream
   that differs from the base run's by the sender's change alone, its norm recomputed) are kept;
2. the base run again, with only the receivers' activations put in from pass 1; the metric reads its
   logits, or any activation of it (``metric_hook``: for example the receiving heads' own pattern).

With ``receivers="logits"`` pass 1 is the whole run: the sender's direct effect on the logits through
the final norm. ``free_mlps=True`` does not freeze the MLPs, so paths through them count as part of
the residual stream (as in the IOI paper's path patching), the attention outputs stay frozen;
``free_attn=True`` does not freeze the attention outputs (paths through later heads, across positions,
count). With both, nothing is frozen: pass 1 is activation patching of the sender, read at the receivers.

Senders are patched together at ``positions`` (default all), and every pass holds several senders'
copies of the base batch (``batch_rows``), as ``patching.run_cells`` does; a pass stops once what it is
for is computed (the receivers' activations, or the metric's hook), and it starts at a block: pass 1 at its
first sender's, pass 2 at the first receiver's (sinkinterp models and HookedTransformers from the base run's
residual stream; bridges from the base run recorded through their Hugging Face model, the blocks before the
start returning their recorded outputs, where one such pass reproduces the run). A sender that comes after every receiver cannot reach them: its value is the
base run's metric, without a pass.

``path_patch(model, clean_tokens, corrupted_tokens, metric, ...)`` puts the clean run's sender values
into the corrupted run, as ``patching.patch`` does; ``path_ablate(model, tokens, metric, ablation=...)``
removes a sender's value instead: ``"zero"``; ``"mean"``, its mean over every sequence and every
position but the first (at token 1, what makes token 1's write different from an ordinary token's; at
the other positions, what the text adds); ``"position_mean"``, its mean over the sequences at each
position (what the text adds at that position); ``"resample"``, its value at the same position in another
sequence of the batch (the one ``shift`` after it, cyclically: what another text writes there, a value
the model meets, where a mean may be one no text produces).

``gate_paths`` asks along the same paths what makes the sink heads' weight on the sink vary from text to
text: each sender's write made its mean by position, read by the share of the gate's variance the change
carries (``gate_share``), or each sender's write taken from other texts (``resample``).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.measure import _row_slot, slot_from_rows, validate_tokens
from sinkinterp.patching import (
    COMPONENTS,
    Cell,
    Component,
    Metric,
    _capture_run,
    _eval_mode,
    _first_row,
    _hook_map_kept,
    _make_hook,
    _model_device,
    _record,
    _start_fn,
)

__all__ = ["ABLATIONS", "PATH_SINKS", "RECEIVER_KINDS", "SENDER_KINDS", "SIDES", "PathResult", "Receiver", "Sender",
           "backup_pairs", "GATE_SIDES", "gate_paths", "gate_paths_summary", "gate_share", "gate_share_by_text", "gate_variance", "neuron_search", "path_ablate", "path_patch", "senders_of", "sink_paths", "sink_paths_summary"]

SENDER_KINDS = ("embed", "pos_embed", "attn_out", "z", "mlp_out", "neuron")
RECEIVER_KINDS = ("q", "k", "v")
ABLATIONS = ("zero", "mean", "position_mean", "resample")
_EMBED = Component("embed", "hook_embed", head_dim=None, pos_dim=1)
_NEURON = Component("neuron", "blocks.{l}.mlp.hook_post", head_dim=2, pos_dim=1)  # [batch, pos, d_mlp]


@dataclass(frozen=True)
class Sender:
    """A sender: ``kind`` in SENDER_KINDS ("embed": the token embedding, ``hook_embed``; "pos_embed": a learned
    or sinusoidal position embedding added to it, ``hook_pos_embed``; "neuron": unit ``neuron`` of layer
    ``layer``'s ``mlp.hook_post``, W_out's input, or a tuple of units sent together); ``layer`` (ignored for
    the embeddings); ``head`` for "z" only. ``complement`` ("neuron" only): the sender is every unit of the
    MLP *but* ``neuron`` (a neuron kept alone while the rest are ablated, without a tuple of d_mlp - 1 units)."""

    kind: str
    layer: int = 0
    head: int | None = None
    neuron: int | tuple[int, ...] | None = None
    complement: bool = False

    @property
    def order(self) -> int:
        """Where it writes in the residual stream: the embeddings 0, attention l 2l + 1, MLP l 2l + 2."""
        if self.kind in ("embed", "pos_embed"):
            return 0
        return 2 * self.layer + (2 if self.kind in ("mlp_out", "neuron") else 1)

    @property
    def label(self) -> str:
        if self.kind in ("embed", "pos_embed"):
            return self.kind
        if self.kind == "z":
            return f"L{self.layer}H{self.head}"
        if self.kind == "neuron":
            units = self.neuron if isinstance(self.neuron, tuple) else (self.neuron,)
            return f"L{self.layer}{' all but N' if self.complement else 'N'}{'+'.join(map(str, units))}"
        return f"{'attn' if self.kind == 'attn_out' else 'mlp'} {self.layer}"

    def component(self) -> Component:
        if self.kind == "neuron":
            return _NEURON
        return _EMBED if self.kind == "embed" else COMPONENTS[self.kind]  # pos_embed: hook_pos_embed

    def cell(self, pos: tuple[int, ...] | None, d_mlp: int | None = None) -> Cell:
        """Where it edits its component: the head or the neuron axis' units, at ``pos`` (a complement's units
        need the MLP's ``d_mlp``)."""
        if self.kind != "neuron":
            return Cell(self.layer, self.head, pos)
        if not self.complement:
            return Cell(self.layer, self.neuron, pos)
        if d_mlp is None:
            raise ValueError(f"{self.label}: a complement sender's cell needs d_mlp")
        left = {self.neuron} if isinstance(self.neuron, int) else set(self.neuron or ())
        return Cell(self.layer, tuple(u for u in range(d_mlp) if u not in left), pos)

    def hook_name(self) -> str:
        return self.component().hook_name(self.layer)


@dataclass(frozen=True)
class Receiver:
    """A receiver: the ``kind`` ("q", "k" or "v") input of head ``head`` (None: every head; for "k" and
    "v" a key/value head of a grouped-query model) at ``layer``, at ``positions`` only (None: every position;
    the IOI paper's receivers take the change at the final position's queries alone)."""

    layer: int
    kind: str
    head: int | None = None
    positions: Sequence[int] | None = None

    @property
    def label(self) -> str:
        at = "" if self.positions is None else "@" + ",".join(map(str, self.positions))
        return f"L{self.layer}{'' if self.head is None else f'H{self.head}'}.{self.kind}{at}"


@dataclass
class PathResult:
    """The metric with each sender's path to the receivers patched: ``values[i]`` for ``senders[i]``.
    ``base``: the metric of the run the passes edit (the corrupted run, or the unablated one);
    ``source``: the clean run's metric (patching; None for an ablation)."""

    senders: list[Sender]
    receivers: str
    values: np.ndarray
    base: float
    source: float | None
    positions: list[int] | None
    how: str  # "clean" or the ablation

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.senders]

    def effects(self) -> np.ndarray:
        """values - base: what each path changes."""
        return self.values - self.base

    def normalized(self) -> np.ndarray:
        """(values - base) / (source - base): 1 = the path restores the clean run's metric (patching)."""
        if self.source is None:
            raise ValueError("normalized: an ablation has no clean run to normalize by; use effects()")
        span = self.source - self.base
        if span == 0:
            raise ZeroDivisionError("the clean and corrupted metrics are equal; nothing to normalize by")
        return (self.values - self.base) / span

    def by_head(self) -> np.ndarray:
        """The values of "z" senders as [layer, head] (NaN where a head was not sent)."""
        zs = [(s, v) for s, v in zip(self.senders, self.values) if s.kind == "z"]
        if not zs:
            raise ValueError("by_head: no head ('z') senders in this result")
        out = np.full((max(s.layer for s, _ in zs) + 1, max(s.head for s, _ in zs) + 1), np.nan)  # type: ignore[type-var]
        for s, v in zs:
            out[s.layer, s.head] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"senders": self.labels, "receivers": self.receivers, "how": self.how, "positions": self.positions,
                "values": np.asarray(self.values, dtype=np.float64).round(8).tolist(), "base": self.base,
                "source": self.source}


def senders_of(model: Any, kind: str, layers: Sequence[int] | None = None) -> list[Sender]:
    """Every sender of ``kind`` ("embed", "pos_embed", "attn_out", "z": each head, "mlp_out", "neuron": each
    unit of the MLP; or "blocks": the embedding, the position embedding where the model adds one to it, and
    each layer's attention and MLP outputs, the residual stream's terms) in ``layers`` (default all)."""
    dims = tl_adapter.model_dims(model)
    L, H = dims["n_layers"], dims["n_heads"]
    allowed = (*SENDER_KINDS, "blocks")
    if kind not in allowed:
        raise ValueError(f"senders: got {kind!r}, allowed values are {list(allowed)} or a list of Sender")
    layer_list = list(range(L)) if layers is None else [int(l) for l in layers]
    for l in layer_list:
        if not 0 <= l < L:
            raise ValueError(f"layers: {l} is outside the model (0..{L - 1})")
    if kind in ("embed", "pos_embed"):
        return [Sender(kind)]
    if kind == "blocks":
        pos = [Sender("pos_embed")] if _adds_positions(model) else []
        return [Sender("embed"), *pos, *[Sender(k, l) for l in layer_list for k in ("attn_out", "mlp_out")]]
    if kind == "z":
        return [Sender("z", l, h) for l in layer_list for h in range(H)]
    if kind == "neuron":
        return [Sender("neuron", l, neuron=u) for l in layer_list for u in range(_d_mlp(model, l))]
    return [Sender(kind, l) for l in layer_list]


def _d_mlp(model: Any, layer: int) -> int:
    """The number of neurons of layer ``layer``'s MLP (rows of its W_out)."""
    try:
        return int(tl_adapter.mlp_out_weight(model, layer).shape[0])
    except (TypeError, AttributeError) as err:
        raise ValueError(f"senders: neuron senders need the MLP's W_out, which blocks[{layer}] does not expose "
                         f"({err})") from None


def _adds_positions(model: Any) -> bool:
    """Whether the model adds a position embedding to the token embedding at ``hook_pos_embed`` (a bridge
    over a rotary model lists the hook but never fires it)."""
    if not tl_adapter.has_hook(model, "hook_pos_embed"):
        return False
    return tl_adapter.wrapped_hf_model(model) is None or tl_adapter.hook_fires(model, "hook_pos_embed")


class _Stop(Exception):  # control flow: a pass has computed what it is for
    pass


def _check_senders(model: Any, senders: Sequence[Sender]) -> None:
    dims = tl_adapter.model_dims(model)
    names = set(tl_adapter.hook_names(model))
    d_mlp: dict[int, int] = {}
    if not senders:
        raise ValueError("senders: empty")
    for s in senders:
        if not isinstance(s, Sender):
            raise TypeError(f"senders: expected a kind or Sender objects, got {type(s).__name__}")
        if s.kind not in SENDER_KINDS:
            raise ValueError(f"senders: kind {s.kind!r} is not one of {list(SENDER_KINDS)}")
        if s.kind not in ("embed", "pos_embed") and not 0 <= s.layer < dims["n_layers"]:
            raise ValueError(f"senders: layer {s.layer} is outside the model (0..{dims['n_layers'] - 1})")
        if (s.head is None) != (s.kind != "z"):
            raise ValueError(f"senders: {s.kind!r} senders take {'a head' if s.kind == 'z' else 'no head'}, got {s.head!r}")
        if s.head is not None and not 0 <= s.head < dims["n_heads"]:
            raise ValueError(f"senders: head {s.head} is outside the model's {dims['n_heads']} heads")
        if (s.neuron is None) != (s.kind != "neuron"):
            raise ValueError(f"senders: {s.kind!r} senders take {'a neuron' if s.kind == 'neuron' else 'no neuron'}, "
                             f"got {s.neuron!r}")
        if not isinstance(s.complement, bool) or (s.complement and s.kind != "neuron"):
            raise ValueError(f"senders: complement is True or False, and True for 'neuron' senders only; got "
                             f"{s.complement!r} for a {s.kind!r} sender")
        if s.hook_name() not in names:
            raise ValueError(f"model has no hook {s.hook_name()} (sender {s.label}; see docs/hook-contract.md)")
        if s.kind == "neuron":
            if s.layer not in d_mlp:
                d_mlp[s.layer] = _d_mlp(model, s.layer)
            units = s.neuron if isinstance(s.neuron, tuple) else (s.neuron,)
            if not units or len(set(units)) != len(units):
                raise ValueError(f"senders: {s.label} needs one neuron or a tuple of distinct neurons, got {s.neuron!r}")
            for u in units:
                if isinstance(u, bool) or not isinstance(u, (int, np.integer)):
                    raise ValueError(f"senders: a neuron is an integer or a tuple of integers, got {s.neuron!r}")
                if not 0 <= u < d_mlp[s.layer]:
                    raise ValueError(f"senders: neuron {u!r} is outside blocks.{s.layer}.mlp (d_mlp = {d_mlp[s.layer]})")
            if s.complement and len(units) >= d_mlp[s.layer]:
                raise ValueError(f"senders: {s.label} leaves no neuron of blocks.{s.layer}.mlp (d_mlp = "
                                 f"{d_mlp[s.layer]}) to send")


def _check_receivers(model: Any, receivers: object, seq_len: int) -> list[Receiver] | None:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"receivers: got {receivers!r}; allowed: 'logits' or a list of Receiver")
        return None
    dims = tl_adapter.model_dims(model)
    out = [r if isinstance(r, Receiver) else Receiver(*r) for r in receivers]  # type: ignore[attr-defined]
    if not out:
        raise ValueError("receivers: empty")
    for r in out:
        if r.kind not in RECEIVER_KINDS:
            raise ValueError(f"receivers: kind {r.kind!r} is not one of {list(RECEIVER_KINDS)}")
        if not 0 <= r.layer < dims["n_layers"]:
            raise ValueError(f"receivers: layer {r.layer} is outside the model (0..{dims['n_layers'] - 1})")
        n = dims["n_heads"] if r.kind == "q" else dims["n_kv_heads"]
        if r.head is not None and not 0 <= r.head < n:
            kind = "heads" if r.kind == "q" else "key/value heads"
            raise ValueError(f"receivers: head {r.head} is outside the model's {n} {kind}")
        name = COMPONENTS[r.kind].hook_name(r.layer)
        if not tl_adapter.has_hook(model, name):
            raise ValueError(f"model has no hook {name} (receiver {r.label}; see docs/hook-contract.md)")
    for i, r in enumerate(out):
        if r.positions is not None:
            pos = sorted({int(p) for p in r.positions})
            if not pos:
                raise ValueError(f"receivers: {r.label} has no positions (None: every position)")
            bad = [p for p in pos if not 0 <= p < seq_len]
            if bad:
                raise ValueError(f"receivers: position {bad[0]} of {r.label} is outside the sequence (0..{seq_len - 1})")
            out[i] = Receiver(r.layer, r.kind, r.head, tuple(pos))
    return out


@_hook_map_kept
def path_patch(model: Any, clean_tokens: object, corrupted_tokens: object, metric: Metric, *,
               senders: str | Sequence[Sender] = "z", receivers: str | Sequence[Receiver | tuple] = "logits",
               positions: Sequence[int] | None = None, free_mlps: bool = False,
               metric_hook: str | Sequence[str] | None = None, batch_rows: int = 64,
               free_attn: bool = False) -> PathResult:
    """The corrupted run with each sender's clean value sent along its paths to ``receivers`` only (see the
    module's docstring). ``senders``: a kind for ``senders_of`` or a list of Sender; ``receivers``: "logits"
    or a list of Receiver (or (layer, kind, head) tuples); ``positions``: where the senders are patched (all
    by default); ``metric(x)`` sees one copy of the corrupted batch: its logits, or with ``metric_hook`` the
    activation at that hook (a list of them, in order, for several hooks)."""
    dims = tl_adapter.model_dims(model)
    clean = validate_tokens(clean_tokens, dims["d_vocab"], "clean_tokens")
    corrupted = validate_tokens(corrupted_tokens, dims["d_vocab"], "corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} "
                         "must have the same shape")
    return _paths(model, corrupted, metric, senders, receivers, positions, free_mlps, metric_hook, batch_rows,
                  how="clean", clean=clean, free_attn=free_attn)


@_hook_map_kept
def path_ablate(model: Any, tokens: object, metric: Metric, *, ablation: str = "mean",
                senders: str | Sequence[Sender] = "z", receivers: str | Sequence[Receiver | tuple] = "logits",
                positions: Sequence[int] | None = None, free_mlps: bool = False,
                metric_hook: str | Sequence[str] | None = None, batch_rows: int = 64,
                free_attn: bool = False, shift: int = 1) -> PathResult:
    """``tokens``' run with each sender's value ablated (``ablation`` in ABLATIONS, measured on ``tokens``
    themselves) along its paths to ``receivers`` only; the arguments as in ``path_patch``. ``shift``: with
    ``"resample"``, sequence b takes the sender's value of sequence (b + shift) mod batch (1 to batch - 1)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation: got {ablation!r}, allowed values are {list(ABLATIONS)}")
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    if ablation == "resample":
        _check_shift(shift, tokens.shape[0])
    return _paths(model, tokens, metric, senders, receivers, positions, free_mlps, metric_hook, batch_rows,
                  how=ablation, free_attn=free_attn, shift=shift)


def _check_shift(shift: object, batch: int) -> None:
    if batch < 2:
        raise ValueError(f"tokens: the resample ablation takes values from other sequences and needs at least 2, "
                         f"got {batch}")
    if isinstance(shift, bool) or not isinstance(shift, int) or not 1 <= shift < batch:
        raise ValueError(f"shift must be an integer from 1 to the number of sequences - 1 ({batch - 1}), got {shift!r}")


def _paths(model: Any, base_tokens: Tensor, metric: Metric, senders: object, receivers: object,
           positions: Sequence[int] | None, free_mlps: bool, metric_hook: str | Sequence[str] | None,
           batch_rows: int, how: str, clean: Tensor | None = None, free_attn: bool = False,
           shift: int = 1) -> PathResult:
    dims = tl_adapter.model_dims(model)
    L = dims["n_layers"]
    sender_list = senders_of(model, senders) if isinstance(senders, str) else list(senders)  # type: ignore[arg-type]
    _check_senders(model, sender_list)
    recv = _check_receivers(model, receivers, base_tokens.shape[1])
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    for name, flag in (("free_mlps", free_mlps), ("free_attn", free_attn)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    hooks_m = [metric_hook] if isinstance(metric_hook, str) else (None if metric_hook is None else list(metric_hook))
    if hooks_m is not None:
        if recv is None:
            raise ValueError("metric_hook: with receivers='logits' the metric reads the logits (pass 1 freezes "
                             "everything after the sender, so no activation of it is a path's end)")
        if not hooks_m:
            raise ValueError("metric_hook: empty")
        for name in hooks_m:
            if not tl_adapter.has_hook(model, name):
                raise ValueError(f"metric_hook: model has no hook {name} (see docs/hook-contract.md)")
    T = base_tokens.shape[1]
    pos = None if positions is None else sorted({int(p) for p in positions})
    if pos is not None:
        if not pos:
            raise ValueError("positions: empty")
        for p in pos:
            if not 0 <= p < T:
                raise ValueError(f"positions: {p} is outside the sequence (0..{T - 1})")

    # what a pass needs of the base run: frozen outputs, and the senders' values for an ablation
    last = L if recv is None else max(r.layer for r in recv)  # receivers read resid_pre of their layer
    frozen = [] if free_attn else [(f"blocks.{l}.hook_attn_out", 2 * l + 1) for l in range(last)]
    if not free_mlps:  # (a model without MLPs has no hook_mlp_out)
        frozen += [(f"blocks.{l}.hook_mlp_out", 2 * l + 2) for l in range(last)
                   if tl_adapter.has_hook(model, f"blocks.{l}.hook_mlp_out")]
    sender_names = sorted({s.hook_name() for s in sender_list})
    tl_adapter.check_editable(model, sorted({*sender_names, *(n for n, _ in frozen),
                                             *(COMPONENTS[r.kind].hook_name(r.layer) for r in recv or [])}))
    device = _model_device(model)
    base_tokens = base_tokens.to(device)
    readout = hooks_m or []
    # sinkinterp models and HookedTransformers start a pass at a block, from the base run's residual stream:
    # pass 1 at its first sender's layer, pass 2 at the first receiver's (where the metric's hooks come after it);
    # a bridge continues from the base run recorded through its Hugging Face model (the blocks before the start
    # return their recorded outputs), where one such pass reproduces the run
    start_from = _start_fn(model)
    resids = [f"blocks.{l}.hook_resid_pre" for l in range(min(last + 1, L))] if start_from is not None else []
    names = sorted({n for n, _ in frozen} | set(sender_names) | set(readout) | set(resids))
    bridge = tl_adapter.hf_continuation(model) if start_from is None else None
    cont = None
    if bridge is not None:
        run = _record(model, base_tokens, names, hf=True)
        base_acts, base_out = run.acts, run.logits
        starts = [s.layer for s in sender_list if s.order > 0 and s.layer > 0] + [r.layer for r in recv or [] if r.layer]
        if run.hf is not None and starts and _continues(bridge[1], base_tokens, run.hf, min(starts)):
            record = run.hf

            def cont(layer: int, n: int) -> Tensor:
                return bridge[1](base_tokens, layer, 0, record, n)
    else:
        base_acts, base_out = _capture_run(model, base_tokens, names)
    base_value = float(metric(_read(base_acts, base_out, hooks_m)))
    source_value = None
    if clean is not None:
        clean_acts, clean_out = _capture_run(model, clean.to(device), sorted(set(sender_names) | set(readout)))
        source_value = float(metric(_read(clean_acts, clean_out, hooks_m)))
        new_values = clean_acts
    else:
        new_values = {n: _ablated(base_acts[n], how, shift) for n in sender_names}

    reach = 2 * last + 1  # a sender reaches a receiver of layer l if its order < 2 l + 1 (the logits: any)
    values = np.full(len(sender_list), base_value, dtype=np.float64)
    todo = [i for i, s in enumerate(sender_list) if s.order < reach]
    b = base_tokens.shape[0]
    per_pass = max(1, batch_rows // b)
    first_recv = None if recv is None else min(r.layer for r in recv)
    if (start_from is None and cont is None) or (hooks_m is not None and any(
            _block_of(n) is None or _block_of(n) < first_recv for n in hooks_m)):  # type: ignore[operator]
        first_recv = None  # pass 2 runs in full
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(todo), per_pass):
            idx = todo[start:start + per_pass]
            chunk = [sender_list[i] for i in idx]
            n = len(chunk)
            tokens = base_tokens.repeat(n, 1)
            hooks = _sender_hooks(chunk, new_values, pos, n) + _freeze_hooks(chunk, frozen, base_acts, n)
            first = 0 if any(s.order == 0 for s in chunk) else min(s.layer for s in chunk)
            run1 = _runner(model, start_from, first, base_acts, n, cont)
            if recv is None:
                with tl_adapter.attached_hooks(model, hooks):
                    logits = run1(tokens)
                got = [logits[j * b:(j + 1) * b] for j in range(n)]
            else:
                sent = _pass_until(run1, model, tokens, hooks,
                                   [COMPONENTS[r.kind].hook_name(r.layer) for r in recv])
                run2 = _runner(model, start_from, first_recv or 0, base_acts, n, cont)
                got = _receive(run2, model, tokens, recv, sent, hooks_m, n, b)
            for j, i in enumerate(idx):
                values[i] = float(metric(got[j]))
    desc = "logits" if recv is None else ", ".join(r.label for r in recv)
    return PathResult(sender_list, desc, values, base_value, source_value, pos, how)


def _read(acts: dict[str, Tensor], out: Any, hooks_m: list[str] | None) -> Any:
    if hooks_m is None:
        return out
    return acts[hooks_m[0]] if len(hooks_m) == 1 else [acts[n] for n in hooks_m]


def _ablated(act: Tensor, how: str, shift: int = 1) -> Tensor:
    """The value an ablation gives an activation [batch, pos, ...] (broadcast over the batch where its first
    axis is 1; ``"resample"``: sequence b takes sequence (b + shift) mod batch's)."""
    if how == "resample":
        return act.roll(-shift, 0)
    if how == "zero":
        return torch.zeros_like(act[:1])
    if how == "position_mean":
        return act.mean(0, keepdim=True)
    if act.shape[1] < 2:  # pragma: no cover - validate_tokens asks for T >= 2
        raise ValueError("mean ablation needs positions after the first")
    return act[:, 1:].mean((0, 1), keepdim=True).expand(1, *act.shape[1:])


def _sender_hooks(chunk: Sequence[Sender], new_values: dict[str, Tensor], pos: list[int] | None,
                  n: int) -> list[tuple[str, Any]]:
    """Copy j's sender takes its new value at ``pos`` (patching.run_cells' stacked copies)."""
    cells = [s.cell(None if pos is None else tuple(pos),
                    new_values[s.hook_name()].shape[_NEURON.head_dim] if s.kind == "neuron" else None) for s in chunk]
    hooks = []
    for name in sorted({s.hook_name() for s in chunk}):
        idx = [j for j, s in enumerate(chunk) if s.hook_name() == name]
        comp = chunk[idx[0]].component()
        value = new_values[name]

        def source(act: Tensor, layer: int, value: Tensor = value) -> Tensor:
            return value.to(act.device).repeat(act.shape[0] // value.shape[0], *([1] * (value.dim() - 1)))

        hooks.append((name, _make_hook(comp, source, chunk[idx[0]].layer, cells, idx, n)))
    return hooks


def _freeze_hooks(chunk: Sequence[Sender], frozen: Sequence[tuple[str, int]], base_acts: dict[str, Tensor],
                  n: int) -> list[tuple[str, Any]]:
    """Every attention / MLP output after copy j's sender keeps the base run's value (in copy j)."""
    hooks = []
    for name, order in frozen:
        rows = torch.tensor([s.order < order for s in chunk])
        if not rows.any():
            continue
        value = base_acts[name]
        mask = rows.view(n, 1, *([1] * (value.dim() - 1)))  # copy j's rows: [n, 1 (its batch), ...]

        def hook(act: Tensor, hook: Any = None, value: Tensor = value, mask: Tensor = mask) -> Tensor:
            # the n copies as [n, batch, ...]: the base value broadcast over the copies, nothing repeated
            copies = act.reshape(n, -1, *act.shape[1:])
            out = torch.where(mask.to(act.device), value.to(act.device, act.dtype).unsqueeze(0), copies)
            return out.reshape(act.shape)

        hooks.append((name, hook))
    return hooks


def _block_of(name: str) -> int | None:
    """The block a hook name belongs to ("blocks.L. ..."), None for hooks outside the blocks."""
    head, _, rest = name.partition(".")
    number = rest.partition(".")[0]
    return int(number) if head == "blocks" and number.isdigit() else None


def _continues(cont: Callable[..., Tensor], tokens: Tensor, record: Any, layer: int) -> bool:
    """Whether a bridge's pass that starts at ``layer`` from ``record`` (the blocks before it replayed)
    reproduces the recorded logits, checked on the first sequence."""
    one = tl_adapter.HFRecord(record.logits[:1], None if record.past is None else
                              [(k[:1], v[:1]) for k, v in record.past], [_first_row(o) for o in record.block_outputs])
    try:
        with torch.no_grad():
            got = cont(tokens[:1], layer, 0, one, 1)
    except Exception:  # noqa: BLE001 - a pass that cannot start there runs in full
        return False
    want = one.logits.double()
    return got.shape == want.shape and torch.allclose(got.double(), want, rtol=1e-4,
                                                      atol=1e-4 * (1 + float(want.abs().max())))


def _runner(model: Any, start_from: Callable[[Tensor, int, Tensor], Tensor] | None, layer: int,
            base_acts: dict[str, Tensor], n: int, cont: Callable[[int, int], Tensor] | None = None
            ) -> Callable[[Tensor], Any]:
    """A pass over ``n`` stacked copies of the base tokens: from block ``layer`` on, on the base run's residual
    stream entering it (every copy's is the base run's there), where the model can start there; else whole."""
    if layer == 0:
        return model
    if start_from is None:  # a bridge continues from its recorded base run (``cont``), or runs in full
        return model if cont is None else (lambda tokens: cont(layer, n))
    resid = base_acts[f"blocks.{layer}.hook_resid_pre"]
    return lambda tokens: start_from(tokens, layer, resid.repeat(n, *([1] * (resid.dim() - 1))))


def _pass_until(run: Callable[[Tensor], Any], model: Any, tokens: Tensor, hooks: Sequence[tuple[str, Any]],
                keep: Sequence[str]) -> dict[str, Tensor]:
    """``run(tokens)`` (a pass through ``model``) with ``hooks``, keeping the activations at ``keep`` (after the
    hooks' edits), stopping the pass once all of them are kept."""
    store: dict[str, Tensor] = {}
    wanted = set(keep)

    def save(name: str) -> Callable[..., None]:
        def hook(act: Tensor, hook: Any = None) -> None:
            store[name] = act.detach().clone()
            if wanted <= store.keys():
                raise _Stop

        return hook

    try:
        with tl_adapter.attached_hooks(model, [*hooks, *[(k, save(k)) for k in sorted(wanted)]]):
            run(tokens)
    except _Stop:
        pass
    missing = wanted - store.keys()
    if missing:  # pragma: no cover - attached_hooks raises first for a hook that never fires
        raise RuntimeError(f"path patching: hooks {sorted(missing)} did not fire")
    return store


def _receive(run: Callable[[Tensor], Any], model: Any, tokens: Tensor, recv: list[Receiver],
             sent: dict[str, Tensor], hooks_m: list[str] | None, n: int, b: int) -> list[Any]:
    """Pass 2, ``run(tokens)``: the base run with the receivers' activations from pass 1; each copy's metric
    input."""
    hooks = []
    for r in recv:
        comp = COMPONENTS[r.kind]
        name = comp.hook_name(r.layer)

        def put(act: Tensor, hook: Any = None, r: Receiver = r, name: str = name) -> Tensor:
            new = sent[name].to(act.device, act.dtype)
            if r.head is None and r.positions is None:
                return new
            pos: Any = slice(None) if r.positions is None else list(r.positions)
            out = act.clone()
            if r.head is None:
                out[:, pos] = new[:, pos]
            else:
                out[:, pos, r.head] = new[:, pos, r.head]
            return out

        hooks.append((name, put))
    if hooks_m is None:
        with tl_adapter.attached_hooks(model, hooks):
            logits = run(tokens)
        return [logits[j * b:(j + 1) * b] for j in range(n)]
    read = _pass_until(run, model, tokens, hooks, hooks_m)
    if len(hooks_m) == 1:
        return [read[hooks_m[0]][j * b:(j + 1) * b] for j in range(n)]
    return [[read[name][j * b:(j + 1) * b] for name in hooks_m] for j in range(n)]


DIRECTIONS = ("decrease", "increase")


def neuron_search(model: Any, tokens: object, metric: Metric, *, mlp: int, receivers: str | Sequence[Receiver | tuple],
                  ablation: str = "mean", positions: Sequence[int] | None = None,
                  metric_hook: str | Sequence[str] | None = None, direction: str = "decrease", size: int = 4,
                  pool: int = 32, beam: int = 4, pairs: int = 8, triples: int = 0, free_mlps: bool = False,
                  batch_rows: int = 64, free_attn: bool = False, quads: int = 0) -> dict[str, Any]:
    """Which few neurons of MLP ``mlp``, ablated together along their direct paths to ``receivers``
    (``path_ablate``'s passes and arguments), move the metric most in ``direction`` ("decrease" or
    "increase"). Ranking neurons one at a time misses neurons that back each other up: with two that
    each make the same write (either one suffices), ablating one does nothing. So the search reads each
    neuron two ways and then builds groups:

    * ``alone``: the effect of the neuron ablated alone (what the metric needs from it given the others);
    * ``others``: the effect of every neuron *but* this one ablated; ``whole`` - ``others`` is what the
      neuron, kept alone, holds up of the whole MLP's effect (``whole``: every neuron ablated);
    * a beam search over ``pool``: the ``pool`` strongest by each reading. Size 1 is the best single
      neurons; each larger size extends each of the ``beam`` best groups of the size before by one pool
      neuron, and size 2 also tries every pair of the ``pairs`` strongest by the second reading (two that
      back each other up are each strong by it, weak alone); size 3 also every triple of the ``triples``
      strongest by it (three that each suffice: no pair of them does anything, so the beam cannot reach
      them; default 0: none), and size 4 every group of four of the ``quads`` strongest (default 0: none);
      the ``beam`` groups with the largest effects go on.

    Returns {"mlp", "d_mlp", "direction", "base": the unablated metric, "whole", "alone", "others": effects
    (metric - base) per neuron, "pool", "triples": [{"neurons", "effect"}] (those tried: size >= 3), "quads"
    likewise (size >= 4),
    "pairs": [{"neurons", "effect", "synergy": effect minus the two
    neurons' effects alone}], "best": [{"neurons", "effect", "share": effect / whole}] for sizes 1..size (a
    size with no group to try left out),
    "groups_run": the number of groups (senders) run}."""
    dims = tl_adapter.model_dims(model)
    if isinstance(mlp, bool) or not isinstance(mlp, (int, np.integer)) or not 0 <= mlp < dims["n_layers"]:
        raise ValueError(f"mlp: a layer of the model (0..{dims['n_layers'] - 1}), got {mlp!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: got {direction!r}, allowed values are {list(DIRECTIONS)}")
    for name, value, least in (("size", size, 1), ("pool", pool, 1), ("beam", beam, 1), ("pairs", pairs, 0),
                               ("triples", triples, 0), ("quads", quads, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    d = _d_mlp(model, int(mlp))
    if d < 2 or size > d:
        raise ValueError(f"size: {size} is more than MLP {mlp}'s {d} neurons (and the search needs two or more)")
    sign = -1.0 if direction == "decrease" else 1.0

    def run(groups: Sequence[tuple[int, ...]], kept_alone: Sequence[int] = ()) -> tuple[np.ndarray, float]:
        # ``kept_alone``: the groups of every neuron but u, as complement senders (not d_mlp tuples of d_mlp - 1)
        res = path_ablate(model, tokens, metric, ablation=ablation, receivers=receivers, positions=positions,
                          metric_hook=metric_hook, free_mlps=free_mlps, free_attn=free_attn, batch_rows=batch_rows,
                          senders=[Sender("neuron", int(mlp), neuron=g[0] if len(g) == 1 else g) for g in groups]
                          + [Sender("neuron", int(mlp), neuron=u, complement=True) for u in kept_alone])
        return res.effects(), res.base

    units = list(range(d))
    eff, base = run([(u,) for u in units] + [tuple(units)], kept_alone=units)
    alone, whole, others = eff[:d], float(eff[d]), eff[d + 1:]
    kept = sign * (whole - others)  # > 0: the neuron kept alone holds up that much of the whole effect
    by_alone = [int(u) for u in np.argsort(-sign * alone, kind="stable")[:pool]]
    by_kept = [int(u) for u in np.argsort(-kept, kind="stable")]
    cands = list(dict.fromkeys(by_alone + by_kept[:pool]))
    done: dict[tuple[int, ...], float] = {(u,): float(alone[u]) for u in units}
    n_run = 2 * d + 1

    def top(groups: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return sorted(groups, key=lambda g: (-sign * done[g], g))[:beam]

    pair_groups = {(a, b) for i, a in enumerate(sorted(by_kept[:pairs])) for b in sorted(by_kept[:pairs])[i + 1:]}
    triple_groups = set(itertools.combinations(sorted(by_kept[:triples]), 3))
    quad_groups = set(itertools.combinations(sorted(by_kept[:quads]), 4))
    level = top({(u,) for u in cands})
    best = [level[0]]
    forced = {2: pair_groups, 3: triple_groups, 4: quad_groups}
    for k in range(2, size + 1):
        grown = {tuple(sorted((*g, c))) for g in level if len(g) == k - 1 for c in cands if c not in g}
        grown |= forced.get(k, set())
        new = sorted(g for g in grown if g not in done)
        if new:
            got, _ = run(new)
            done.update(zip(new, map(float, got)))
            n_run += len(new)
        if not grown:  # the pool is used up: stop, unless a larger size has groups of its own to try
            if any(forced.get(j) for j in range(k + 1, size + 1)):
                continue
            break
        level = top(grown)
        best.append(level[0])

    def share(e: float) -> float | None:
        return None if whole == 0 else round(e / whole, 6)

    return {"mlp": int(mlp), "d_mlp": d, "direction": direction, "base": base, "whole": round(whole, 8),
            "alone": alone.round(8).tolist(), "others": np.asarray(others).round(8).tolist(), "pool": cands,
            "triples": [{"neurons": list(g), "effect": round(done[g], 8)} for g in sorted(triple_groups) if g in done],
            "quads": [{"neurons": list(g), "effect": round(done[g], 8)} for g in sorted(quad_groups) if g in done],
            "pairs": [{"neurons": list(g), "effect": round(done[g], 8),
                       "synergy": round(done[g] - done[g[:1]] - done[g[1:]], 8)} for g in sorted(pair_groups)],
            "best": [{"neurons": list(g), "effect": round(done[g], 8), "share": share(done[g])} for g in best],
            "groups_run": n_run}


SIDES = ("key", "query")
PATH_SINKS = ("auto", "first", "slot")


def sink_paths(model: Any, tokens: object, *, threshold: float = 0.3, senders: str | Sequence[Sender] = "blocks",
               sender_layers: Sequence[int] | None = None, sides: Sequence[str] | None = None, key_ablation: str = "mean", query_ablation: str = "zero",
               sink: str = "first",
               layers: Sequence[int] | None = None, free_mlps: bool = False, batch_rows: int = 64,
               search_mlps: Sequence[int] | None = None, search_size: int = 4, search_triples: int = 0,
               progress: bool = False, free_attn: bool = False, search_quads: int = 0) -> dict[str, Any]:
    """What writes the first-token sink, along direct paths: for each layer with sink heads (mean weight on
    token 1 over queries 2..T above ``threshold``; of ``layers`` only, when given: each layer costs two passes
    of its first blocks per sender before it), each sender's path to those heads' keys and to their
    queries, by the heads' mean weight on token 1 (``metric_hook``: the layer's pattern).

    * ``"key"``: the sender ablated at token 1 only (``key_ablation``; "mean": token 1's write made an
      ordinary token's) and sent to the sink heads' keys (their key/value heads): what makes token 1's key
      the one every query finds; ``together``: token 1's whole residual input ablated the same way (every
      sender at once: the key computed from an ordinary token's residual);
    * ``"query"``: the sender ablated at every query position 2..T (``query_ablation``; "zero": its write
      removed) and sent to the sink heads' queries: what turns the queries toward token 1's key;
      ``together``: the queries' whole residual input ablated.

    ``free_mlps``: the MLPs after a sender recompute (its paths through them count; ``path_patch``);
    ``free_attn``: the attention layers after it too (with both: its total effect on the receivers).
    ``senders``: a kind for ``senders_of`` (of ``sender_layers`` only, when given: "neuron" senders are every
    unit of those layers' MLPs) or a list of Sender; a layer whose heads come before every sender is not
    read (``layers`` naming one is an error).

    ``search_mlps``: for each of these MLPs before a sink layer, ``neuron_search`` on each side (the groups of
    up to ``search_size`` of its neurons that lower the weight most along their paths, with the neurons
    that back each other up; ``search_triples`` / ``search_quads``: its ``triples`` / ``quads``), in the
    side's ``"search"`` list.

    ``sink="slot"`` (a model with a bias slot reported by ``hook_bias_pattern``: k*/v*, a sink token, a sink
    logit; or a bridge's learned attention sinks, gpt-oss, whose weight is what ``hook_pattern``'s rows leave;
    "auto": the slot where the model has one, else token 1): the sink heads are those whose mean
    weight on the slot is above ``threshold``, the reading is that weight, and only the query side applies
    (the slot's key is a parameter, written by no sender). ``sides`` default: both for token 1, the query
    side for the slot.

    Returns {"layers": [{"layer", "heads", "base", "key": PathResult.to_dict() + "together", "query": ...}],
    "senders": labels, settings}. Softmax-like attention whose ``hook_pattern`` holds the weights."""
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    sink, pats, weight = _sink_reading(model, sink)
    if sides is None:
        sides = ("query",) if sink == "slot" else SIDES
    if sink == "slot" and "key" in sides:
        raise ValueError("sides: the bias slot's key is a parameter that no sender writes; with sink='slot' only "
                         "the query side applies")
    bad = [s for s in sides if s not in SIDES]
    if bad or not sides:
        raise ValueError(f"sides: got {list(sides)!r}, allowed values are {list(SIDES)} (one or both)")
    for name, how in (("key_ablation", key_ablation), ("query_ablation", query_ablation)):
        if how not in ABLATIONS:
            raise ValueError(f"{name}: got {how!r}, allowed values are {list(ABLATIONS)}")
    T = tokens.shape[1]
    all_senders, wanted = _senders_and_layers(model, senders, sender_layers, layers)
    searched = [] if search_mlps is None else sorted({int(m) for m in search_mlps})
    if search_mlps is not None and not searched:
        raise ValueError("search_mlps: empty (None: no search)")
    if searched and (isinstance(search_size, bool) or not isinstance(search_size, int) or search_size < 1):
        raise ValueError(f"search_size must be an integer >= 1, got {search_size!r}")
    for name, value in (("search_triples", search_triples), ("search_quads", search_quads)):
        if searched and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    for m in searched:
        if not 0 <= m < max(wanted):
            raise ValueError(f"search_mlps: MLP {m} is not before a sink layer read (0..{max(wanted) - 1})")
    group = dims["n_heads"] // dims["n_kv_heads"]
    with tl_adapter.hook_dict_kept(model):
        # the patterns pick the sink heads; the residual inputs are what ``together`` ablates
        acts, _ = _capture_run(model, tokens, pats + [f"blocks.{l}.hook_resid_pre" for l in wanted])
        found = _sink_heads(acts, pats, weight, wanted, threshold)
        out: dict[str, Any] = {"sink": sink, "threshold": threshold,
                               "senders_kind": senders if isinstance(senders, str) else "list",
                               "sender_layers": None if sender_layers is None else sorted({int(l) for l in sender_layers}),
                               "free_mlps": free_mlps, "free_attn": free_attn,
                               "key_ablation": key_ablation,
                               "receiver_layers": None if layers is None else list(wanted),
                               "query_ablation": query_ablation, "sides": list(sides),
                               "search_mlps": searched or None, "search_size": search_size if searched else None,
                               "search_triples": search_triples if searched else None,
                               "search_quads": search_quads if searched else None,
                               "layers": []}
        for l, heads in found:
            send = [s for s in all_senders if s.order < 2 * l + 1]
            if progress:
                print(f"paths: layer {l}, sink heads {heads}, {len(send)} senders", file=sys.stderr, flush=True)
            hook = pats[l]

            def metric(p: Tensor, heads: list[int] = heads) -> Tensor:
                return weight(p)[:, heads].double().mean()

            row: dict[str, Any] = {"layer": l, "heads": heads}
            for side in sides:
                if side == "key":  # token 1's key only (with free_attn later heads also carry its change to the others)
                    recv = [Receiver(l, "k", g, (0,)) for g in sorted({h // group for h in heads})]
                    how, pos = key_ablation, [0]
                else:
                    recv = [Receiver(l, "q", h) for h in heads]
                    how, pos = query_ablation, list(range(1, T))
                res = path_ablate(model, tokens, metric, ablation=how, senders=send, receivers=recv,
                                  positions=pos, free_mlps=free_mlps, free_attn=free_attn, metric_hook=hook,
                                  batch_rows=batch_rows)
                d = res.to_dict()
                d["together"] = _together(model, tokens, acts[f"blocks.{l}.hook_resid_pre"], metric, l, recv, how,
                                          pos, hook)
                for m in (m for m in searched if m < l):
                    if progress:
                        print(f"paths: layer {l}, {side} side, searching MLP {m}'s neurons", file=sys.stderr, flush=True)
                    d.setdefault("search", []).append(neuron_search(
                        model, tokens, metric, mlp=m, receivers=recv, ablation=how, positions=pos, metric_hook=hook,
                        size=search_size, triples=search_triples, quads=search_quads, free_mlps=free_mlps,
                        free_attn=free_attn, batch_rows=batch_rows))
                row[side] = d
                row["base"] = res.base
            out["layers"].append(row)
        out["senders"] = [s.label for s in all_senders]
    return out


def _sink_reading(model: Any, sink: str) -> tuple[str, list[str], Callable[[Tensor], Tensor]]:
    """``sink`` resolved ("auto": the bias slot where the model has one, else "first"), each layer's hook
    that holds the sink's weight, and ``weight(activation)``: [batch, head, query 2..T], the weight on it."""
    if sink not in PATH_SINKS:
        raise ValueError(f"sink: got {sink!r}, allowed values are {list(PATH_SINKS)}")
    hooked_slot = tl_adapter.has_hook(model, "blocks.0.attn.hook_bias_pattern")
    rows_slot = not hooked_slot and bool(slot_from_rows(model))  # gpt-oss: what hook_pattern's rows leave
    has_slot = hooked_slot or rows_slot
    if sink == "slot" and not has_slot:
        raise ValueError("sink='slot' needs a model with a bias slot (k*/v*, a sink token, a sink logit, reported by "
                         "hook_bias_pattern; or learned attention sinks, gpt-oss); this model has none: use "
                         "sink='first'")
    if sink == "auto":
        sink = "slot" if has_slot else "first"
    slot = sink == "slot"
    L = tl_adapter.model_dims(model)["n_layers"]
    pats = [f"blocks.{l}.attn.hook_{'bias_pattern' if slot and not rows_slot else 'pattern'}" for l in range(L)]

    def weight(p: Tensor) -> Tensor:
        if slot:  # the slot's weight: hook_bias_pattern, or what the pattern's rows leave (learned sinks)
            return _row_slot(p)[:, :, 1:] if rows_slot else p[:, :, 1:]
        return p[:, :, 1:, 0]

    return sink, pats, weight


def _senders_and_layers(model: Any, senders: str | Sequence[Sender], sender_layers: Sequence[int] | None,
                        layers: Sequence[int] | None) -> tuple[list[Sender], list[int]]:
    """The senders (a kind for ``senders_of``, of ``sender_layers`` only, or a list of Sender), checked, and
    the layers whose sink heads are read (``_read_layers``)."""
    if isinstance(senders, str):
        all_senders = senders_of(model, senders, sender_layers)
    else:
        if sender_layers is not None:
            raise ValueError("sender_layers: only with a kind of senders (a list of Sender names its layers itself)")
        all_senders = list(senders)
    _check_senders(model, all_senders)
    return all_senders, _read_layers(tl_adapter.model_dims(model)["n_layers"], all_senders, layers)


def _read_layers(L: int, senders: Sequence[Sender], layers: Sequence[int] | None) -> list[int]:
    """The layers whose sink heads are read: ``layers`` (checked), or every layer after the first sender."""
    first = min(senders, key=lambda s: s.order)
    wanted = [l for l in range(1, L) if 2 * l + 1 > first.order] if layers is None else sorted({int(l) for l in layers})
    for l in wanted:
        if not 1 <= l < L:
            raise ValueError(f"layers: {l} is not a layer after the first (1..{L - 1}): layer 0's heads have no "
                             "sender before them but the embedding")
        if 2 * l + 1 <= first.order:
            raise ValueError(f"layers: layer {l}'s heads come before every sender (the first is {first.label})")
    if not wanted:
        raise ValueError(f"senders: no layer's heads come after a sender (the first is {first.label})")
    return wanted


def _sink_heads(acts: dict[str, Tensor], pats: list[str], weight: Callable[[Tensor], Tensor], wanted: list[int],
                threshold: float) -> list[tuple[int, list[int]]]:
    """(layer, its heads whose mean weight on the sink is above ``threshold``) for the layers with any."""
    found = []
    for l in wanted:
        a = weight(acts[pats[l]]).double().mean((0, 2))
        heads = [int(h) for h in torch.nonzero(a > threshold).flatten()]
        if heads:
            found.append((l, heads))
    return found


GATE_SIDES = ("query", "sink_key", "keys")
_LOG_ODDS_CLIP = 1e-6


def gate_variance(weights: Tensor) -> Tensor:
    """The gate's variance from text to text: the sink weights ``weights`` [batch, head, query] (in (0, 1);
    clipped to [1e-6, 1 - 1e-6]) as log-odds log(w / (1 - w)), their variance over the batch (the texts;
    population variance) at each head and query position, averaged over heads and positions. The position's
    own average is not in it: this is what varies between texts at the same position."""
    if weights.dim() != 3:
        raise ValueError(f"weights: expected [batch, head, query], got shape {tuple(weights.shape)}")
    if weights.shape[0] < 2:
        raise ValueError(f"weights: the variance over texts needs at least 2 sequences, got {weights.shape[0]}")
    return _log_odds(weights).var(0, unbiased=False).mean()


def _varies(var: Tensor, g: Tensor) -> bool:
    """Whether a variance over texts is more than rounding: above 1e-10 of the log-odds' mean square."""
    return float(var) > 1e-10 * max(float((g * g).mean()), 1e-12)


def _log_odds(weights: Tensor) -> Tensor:
    w = weights.double().clamp(_LOG_ODDS_CLIP, 1 - _LOG_ODDS_CLIP)
    return torch.log(w / (1 - w))


def gate_share(base: Tensor, edited: Tensor) -> Tensor:
    """``gate_share_by_text(base, edited)`` summed over the texts (see there)."""
    return gate_share_by_text(base, edited).sum()


def gate_share_by_text(base: Tensor, edited: Tensor) -> Tensor:
    """The share of the gate's variance over texts that an edit carries, by text: with g the log-odds of the sink
    weights ``base`` and g' those of ``edited`` (both [batch, head, query], as in ``gate_variance``), the
    covariance over the batch of the change g - g' with g, over g's variance, each summed over heads and query
    positions (the share of the summed variance: heads and positions that vary more weigh more). For an edit
    that takes away one additive part of g (g = a + b, the edit making a its mean), it is cov(a, g) / var(g):
    the parts' shares add up to 1, and a part that works against the rest has a negative share. By text:
    [batch], each text's term of that covariance (their sum is the share), so one text that carries most
    of it shows."""
    if base.shape != edited.shape:
        raise ValueError(f"edited {tuple(edited.shape)} must have the shape of base {tuple(base.shape)}")
    var = gate_variance(base)  # (checks the shape and the batch)
    g = _log_odds(base)
    if not _varies(var, g):
        raise ValueError("base: the gate does not vary between the texts (its variance is 0 to rounding): no share "
                         "to split")
    change = g - _log_odds(edited)
    terms = (change - change.mean(0)) * (g - g.mean(0))  # [batch, head, query]: mean over the batch is the cov
    return terms.flatten(1).mean(1) / (g.shape[0] * var)


def gate_paths(model: Any, tokens: object, *, threshold: float = 0.3, senders: str | Sequence[Sender] = "blocks",
               sender_layers: Sequence[int] | None = None, sides: Sequence[str] | None = None, sink: str = "first",
               layers: Sequence[int] | None = None, free_mlps: bool = False, free_attn: bool = False,
               batch_rows: int = 64, progress: bool = False, resample: int = 0) -> dict[str, Any]:
    """What makes the sink heads' gate vary from text to text, along direct paths: for each layer's sink heads
    (as in ``sink_paths``), each sender's write made the same in every text (``"position_mean"``: its mean
    over the sequences at each position, so what it adds by position stays and what it adds by text goes)
    along its path to one input of those heads, read by ``gate_share``: the share of the variance over texts
    of the heads' log-odds on the sink (within positions) that the change carries. A sender whose text-driven
    write moves the gate with its variation has a positive share; one that works against the rest a negative
    one; for additive parts the shares add up to 1.

    * ``"query"``: at the queries 2..T, into the heads' queries (what the query brings);
    * ``"sink_key"``: at token 1, into token 1's key (which word opens the text; not for the bias slot,
      whose key is a parameter);
    * ``"keys"``: at positions 2..T, into the other keys (the text before the query; for the slot every
      position's key is another key).

    ``together``: the layer's whole residual input made the same way at those positions (every sender at
    once; ``together_variance``: the gate's variance then, which can exceed the base's where the side's
    text-driven part works against the rest). With every side run, ``rest`` = 1 - the sides' ``together``
    shares (all inputs made their means by position leave every text the same gate, a share of exactly 1): 0
    where the gate is a query part plus keys parts; negative where the sides' edits overlap, as for a part that
    moves only with query and keys together (a product of the two: how well this query fits these keys),
    which each side's edit takes, so the sides count it twice; positive where some of the variance goes only
    with both sides made their means. ``tokens`` needs two sequences or more (sixteen or more give a
    steadier variance). ``resample`` > 0: each write (and each side's whole input) is instead taken from
    another text at the same position (``"resample"``: what another text writes there, a value the model
    meets, where a mean may be one no text produces), with ``resample`` shifts spread evenly over 1..batch - 1
    (text b takes text b + shift's) and the shares averaged over them; for additive parts of the gate its
    expected shares are the mean edit's, with noise that more shifts lower. Other arguments as in
    ``sink_paths`` (``free_mlps`` / ``free_attn``: paths through later MLPs / heads count; the receivers stay
    the side's positions). With ``free_mlps``, each side at a layer after 0 also reads ``attention_all``: the
    share with every attention output before the layer made its mean (or another text's) at the side's
    positions, the MLPs recomputing, so that what still varies there is the tokens and what the MLPs make of
    them; for additive parts, ``together`` minus it is the share those tokens carry alone, without the context
    the heads bring. Returns {"reading": "gate", "sink", "threshold", "sides", "ablation":
    "position_mean" or "resample", "shifts": the shifts (resample), "layers": [{"layer", "heads", "weight":
    their mean weight on the sink, "variance": the gate's variance (``gate_variance``), "base": 0 (the
    unedited run's share), "resid_peak" / "resid_peak_at": per text, its largest residual norm at the layer's
    input after token 1 over the median one there (a second massive token stands out far above the rest) and
    where, "peak_weight" (token 1 the sink): the heads' mean weight on that position from it on,
    "weight_by_text", side: PathResult.to_dict() (values: the shares, averaged over the shifts) + "together"
    + "together_by_text" (``gate_share_by_text``) + "together_variance" + "attention_all" (``free_mlps``,
    layers after 0) + with ``resample``, each shift's own "values_by_shift" / "together_by_shift" /
    "attention_all_by_shift" (in the order of "shifts"; their mean is the side's value), "rest" (every side
    run)}],
    "senders": labels, settings}."""
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    if tokens.shape[0] < 2:
        raise ValueError(f"tokens: the gate's variance over texts needs at least 2 sequences, got {tokens.shape[0]}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    B = tokens.shape[0]
    if isinstance(resample, bool) or not isinstance(resample, int) or not 0 <= resample < B:
        raise ValueError(f"resample: the number of shifts must be an integer from 0 (the mean by position) to the "
                         f"number of sequences - 1 ({B - 1}), got {resample!r}")
    shifts = sorted({round(j * B / (resample + 1)) for j in range(1, resample + 1)})
    how = "resample" if shifts else "position_mean"
    sink, pats, weight = _sink_reading(model, sink)
    slot = sink == "slot"
    if sides is None:
        sides = ("query", "keys") if slot else GATE_SIDES
    sides = list(dict.fromkeys(sides))
    bad = [x for x in sides if x not in GATE_SIDES]
    if bad or not sides:
        raise ValueError(f"sides: got {sides!r}, allowed values are {list(GATE_SIDES)} (one or more)")
    if slot and "sink_key" in sides:
        raise ValueError("sides: the bias slot's key is a parameter that no sender writes; with sink='slot' the "
                         "sides are 'query' and 'keys'")
    T = tokens.shape[1]
    all_senders, wanted = _senders_and_layers(model, senders, sender_layers, layers)
    group = dims["n_heads"] // dims["n_kv_heads"]
    where = {"query": list(range(1, T)), "sink_key": [0], "keys": list(range(0 if slot else 1, T))}
    with tl_adapter.hook_dict_kept(model):
        # with free MLPs, every attention output before the last receiver layer (the tokens-alone reading)
        attn = [f"blocks.{m}.hook_attn_out" for m in range(max(wanted, default=0))] if free_mlps else []
        if attn:
            tl_adapter.check_editable(model, attn)
        acts, _ = _capture_run(model, tokens, pats + [f"blocks.{l}.hook_resid_pre" for l in wanted] + attn)
        found = _sink_heads(acts, pats, weight, wanted, threshold)
        out: dict[str, Any] = {"reading": "gate", "sink": sink, "threshold": threshold, "sides": sides,
                               "ablation": how, **({"shifts": shifts} if shifts else {}),
                               "senders_kind": senders if isinstance(senders, str) else "list",
                               "sender_layers": None if sender_layers is None else sorted({int(l) for l in sender_layers}),
                               "receiver_layers": None if layers is None else list(wanted),
                               "free_mlps": free_mlps, "free_attn": free_attn, "layers": []}
        for l, heads in found:
            send = [s for s in all_senders if s.order < 2 * l + 1]
            if progress:
                print(f"gate paths: layer {l}, sink heads {heads}, {len(send)} senders", file=sys.stderr, flush=True)
            hook = pats[l]
            base_w = weight(acts[hook])[:, heads]
            if not _varies(gate_variance(base_w), _log_odds(base_w)):
                raise ValueError(f"tokens: the sink heads' gate at layer {l} does not vary between the texts (are "
                                 "they the same?)")

            def metric(p: Tensor, heads: list[int] = heads, base_w: Tensor = base_w) -> Tensor:
                return gate_share(base_w, weight(p)[:, heads])

            # each text's largest residual norm after token 1 over the median one there: a second massive token
            norm = acts[f"blocks.{l}.hook_resid_pre"][:, 1:].double().norm(dim=-1)  # [batch, T - 1]
            ratio = norm / norm.median()
            peak_at = ratio.argmax(1) + 1
            row: dict[str, Any] = {"layer": l, "heads": heads, "weight": round(float(base_w.double().mean()), 8),
                                   "variance": round(float(gate_variance(base_w)), 8),
                                   "weight_by_text": base_w.double().mean((1, 2)).round(decimals=6).tolist(),
                                   "resid_peak": ratio.max(1).values.round(decimals=4).tolist(),
                                   "resid_peak_at": peak_at.tolist()}
            if not slot:  # the heads' mean weight on that position, over the queries from it on
                pat = acts[hook][:, heads].double()  # [batch, head, query, key]
                row["peak_weight"] = [round(float(pat[b, :, int(k):, int(k)].mean()), 6) for b, k in enumerate(peak_at)]
            for side in sides:
                pos = where[side]
                if side == "query":
                    recv = [Receiver(l, "q", h, pos) for h in heads]
                else:
                    recv = [Receiver(l, "k", g, pos) for g in sorted({h // group for h in heads})]
                resid = acts[f"blocks.{l}.hook_resid_pre"]
                values, by_text, variance, no_attn = [], [], [], []
                for shift in shifts or [1]:  # (the mean by position: one edit)
                    res = path_ablate(model, tokens, metric, ablation=how, senders=send, receivers=recv,
                                      positions=pos, free_mlps=free_mlps, free_attn=free_attn, metric_hook=hook,
                                      batch_rows=batch_rows, shift=shift)
                    values.append(res.values)
                    got = weight(_together_read(model, tokens, resid, l, recv, how, pos, hook, shift))[:, heads]
                    by_text.append(gate_share_by_text(base_w, got))
                    variance.append(float(gate_variance(got)))
                    if free_mlps and l > 0:  # every attention write made its mean, the MLPs recomputing
                        got = weight(_attn_mean_read(model, tokens, [acts[n] for n in attn[:l]], l, recv, how, pos,
                                                     hook, shift))[:, heads]
                        no_attn.append(float(gate_share(base_w, got)))
                d = res.to_dict()
                d["values"] = np.mean(values, axis=0).round(8).tolist()
                mean_by_text = torch.stack(by_text).mean(0)
                d["together"] = float(mean_by_text.sum())
                d["together_by_text"] = mean_by_text.round(decimals=8).tolist()
                d["together_variance"] = float(np.mean(variance))
                if no_attn:
                    d["attention_all"] = round(float(np.mean(no_attn)), 8)
                if shifts:  # each shift's own shares, in the order of "shifts": their spread is the noise
                    d["values_by_shift"] = np.round(values, 8).tolist()
                    d["together_by_shift"] = [round(float(t.sum()), 8) for t in by_text]
                    if no_attn:
                        d["attention_all_by_shift"] = [round(x, 8) for x in no_attn]
                row[side] = d
                row["base"] = res.base
            if len(sides) == (2 if slot else 3):  # every input of the heads' logits at queries 2..T: the rest
                row["rest"] = round(1 - sum(row[side]["together"] for side in sides), 8)
            out["layers"].append(row)
        out["senders"] = [s.label for s in all_senders]
    return out


_GATE_SIDE_TEXT = {"query": "the queries 2..T", "sink_key": "token 1's key", "keys": "the other keys"}


def gate_paths_summary(results: dict[str, Any], top: int = 3) -> str:
    """One line per layer with sink heads: the gate's variance over texts and, per side, the share of it
    that the whole residual input and the largest senders carry (``gate_share``)."""
    where = "the bias slot" if results.get("sink") == "slot" else "token 1"
    lines = [f"what makes the sink heads' gate vary from text to text (mean weight on {where} above "
             f"{results['threshold']}; the log-odds' variance over texts within positions): the share of it carried "
             + ("by a sender's write, taken from other texts at the same position (averaged over shifts "
                + ", ".join(map(str, results["shifts"])) + ")" if results.get("ablation") == "resample"
                else "by a sender's write, made its mean by position") + " along its path to "
             + ", ".join(_GATE_SIDE_TEXT[x] for x in results["sides"])
             + ("; the MLPs after the sender recompute" if results.get("free_mlps") else "")
             + ("; the attention layers after the sender recompute" if results.get("free_attn") else "")]
    if not results["layers"]:
        lines.append("no sink heads after layer 0")
    for row in results["layers"]:
        parts = [f"L{row['layer']} heads {','.join(map(str, row['heads']))}: weight {row['weight']:.3f}, "
                 f"variance {row['variance']:.3f}"]
        for side in results["sides"]:
            d = row[side]
            share = np.asarray(d["values"], dtype=np.float64)
            order = np.argsort(-np.abs(share), kind="stable")[:top]
            spread = d.get("together_by_shift", [])
            parts.append(f"{side}: all {100 * d['together']:+.0f}%"
                         + (f" (one shift at a time {100 * min(spread):+.0f}% to {100 * max(spread):+.0f}%)"
                            if len(spread) > 1 else "") + ", "
                         + ", ".join(f"{d['senders'][i]} {100 * share[i]:+.0f}%" for i in order)
                         + (f", every attention write {100 * d['attention_all']:+.0f}% (the tokens alone "
                            f"{100 * (d['together'] - d['attention_all']):+.0f}%)" if "attention_all" in d else ""))
        if "rest" in row:
            parts.append(f"the rest (100% minus the sides; < 0: they overlap): {100 * row['rest']:+.0f}%")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def _together(model: Any, tokens: Tensor, resid: Tensor, metric: Metric, layer: int, recv: list[Receiver],
              how: str, pos: list[int], hook: str, shift: int = 1) -> float:
    """The receivers' inputs computed from the layer's whole residual input ``resid`` (the unedited run's)
    ablated at ``pos``: the metric of the run with them."""
    return float(metric(_together_read(model, tokens, resid, layer, recv, how, pos, hook, shift)))


def _together_read(model: Any, tokens: Tensor, resid: Tensor, layer: int, recv: list[Receiver], how: str,
                   pos: list[int], hook: str, shift: int = 1) -> Tensor:
    """``_together``'s run: the activation at ``hook``."""
    return _ablated_read(model, tokens, {f"blocks.{layer}.hook_resid_pre": resid}, recv, how, pos, hook, shift)


def _attn_mean_read(model: Any, tokens: Tensor, attn: list[Tensor], layer: int, recv: list[Receiver], how: str,
                    pos: list[int], hook: str, shift: int = 1) -> Tensor:
    """The receivers' inputs from a run with every attention output before ``layer`` (``attn``: the unedited
    run's, layer by layer) ablated at ``pos``, the MLPs recomputing from the tokens and those writes: the
    activation at ``hook``. What varies from text to text in those inputs is then the tokens at each position
    and what the MLPs make of them."""
    return _ablated_read(model, tokens, {f"blocks.{m}.hook_attn_out": a for m, a in enumerate(attn[:layer])}, recv,
                         how, pos, hook, shift)


def _ablated_read(model: Any, tokens: Tensor, acts: dict[str, Tensor], recv: list[Receiver], how: str,
                  pos: list[int], hook: str, shift: int) -> Tensor:
    """A run with each activation in ``acts`` (hook name -> the unedited run's value) ablated at ``pos``; its
    receivers' inputs sent alone into the unedited run: the activation at ``hook`` there."""
    tokens = tokens.to(_model_device(model))

    def edit(value: Tensor) -> Callable[..., Tensor]:
        def fn(act: Tensor, hook: Any = None) -> Tensor:
            out = act.clone()
            out[:, pos] = value.expand_as(act)[:, pos].to(act.dtype)
            return out
        return fn

    with _eval_mode(model), torch.no_grad():
        edits = [(name, edit(_ablated(act, how, shift).to(act.dtype))) for name, act in acts.items()]
        sent = _pass_until(model, model, tokens, edits, [COMPONENTS[r.kind].hook_name(r.layer) for r in recv])
        return _receive(model, model, tokens, recv, sent, [hook], 1, tokens.shape[0])[0]


def sink_paths_summary(results: dict[str, Any], top: int = 3) -> str:
    """One line per layer with sink heads: their weight on token 1 and, per side, the whole residual's and
    the largest senders' effects on it."""
    where = "the bias slot" if results.get("sink") == "slot" else "token 1"
    how = {"key": f"key side: at token 1, {results['key_ablation']}",
           "query": f"query side: at queries 2..T, {results['query_ablation']}"}
    head = (f"direct paths into the sink heads (mean weight on {where} above {results['threshold']}): the change of "
            f"that weight with a sender ablated along its path only ({'; '.join(how[x] for x in results['sides'])})"
            + ("; the MLPs after the sender recompute (paths through them count)" if results.get("free_mlps") else "")
            + ("; the attention layers after the sender recompute (paths through later heads count)"
               if results.get("free_attn") else ""))
    lines = [head]
    if not results["layers"]:
        lines.append("no sink heads after layer 0")
    for row in results["layers"]:
        parts = [f"L{row['layer']} heads {','.join(map(str, row['heads']))}: weight {row['base']:.3f}"]
        for side in results["sides"]:
            d = row[side]
            eff = np.asarray(d["values"]) - d["base"]
            order = np.argsort(eff)[:top]
            parts.append(f"{side}: all {d['together'] - d['base']:+.3f}, "
                         + ", ".join(f"{d['senders'][i]} {eff[i]:+.3f}" for i in order))
        lines.append("; ".join(parts))
        for side in results["sides"]:
            for srch in row[side].get("search", []):
                lines.append(f"  L{row['layer']} {side} side, MLP {srch['mlp']}'s neurons (all {srch['whole']:+.3f}): "
                             + _search_line(srch))
    return "\n".join(lines)


def backup_pairs(search: dict[str, Any], min_share: float = 0.1, min_effect: float = 0.0) -> list[dict[str, Any]]:
    """The pairs of a ``neuron_search`` result whose effect together goes (in the search's direction) beyond
    both the sum of their effects alone (synergy) and either one alone, by more than ``min_share`` of every
    neuron's effect and ``min_effect``: neurons that back each other up (with one ablated, the other still
    writes what the metric needs). Pairs that add up, or whose one neuron works the other way, are not. The
    largest synergy first."""
    sign = -1.0 if search["direction"] == "decrease" else 1.0
    alone = search["alone"]

    def beyond(p: dict[str, Any]) -> float:
        return sign * p["effect"] - max(sign * alone[p["neurons"][0]], sign * alone[p["neurons"][1]])

    floor = max(min_share * abs(search["whole"]), min_effect)
    found = [p for p in search["pairs"] if sign * p["synergy"] > floor and beyond(p) > floor]
    return sorted(found, key=lambda p: -sign * p["synergy"])


def _search_line(search: dict[str, Any]) -> str:
    """The best group of each size, and the strongest backup pair (``backup_pairs``) if there is one."""
    def share(x: dict[str, Any]) -> str:
        return "" if x["share"] is None else f" ({100 * x['share']:.0f}%)"

    out = ", ".join(f"N{'+'.join(map(str, b['neurons']))} {b['effect']:+.3f}{share(b)}" for b in search["best"])
    backups = backup_pairs(search, min_effect=0.01)  # (the weight: 1 point)
    if backups:
        p, alone = backups[0], search["alone"]
        out += (f"; backup pair N{p['neurons'][0]}+{p['neurons'][1]}: {p['effect']:+.3f} together, "
                f"{alone[p['neurons'][0]]:+.3f} and {alone[p['neurons'][1]]:+.3f} alone")
    elif search["pairs"]:
        out += "; no backup pair among the neurons strongest kept alone"
    return out
