"""Interventions on the first token, to test the claim that it acts as a key bias: it stores
attention mass through its key and contributes almost no value.

Each intervention is either a set of *activation edits* (hook-level; they run on any model that
speaks the hook-name contract: a sinkinterp model, a HookedTransformer or a TransformerBridge) or a
*token edit* (a new input whose targets are aligned with the old one). ``run_intervention`` reports:

* the loss change (mean next-token cross entropy on the same target tokens, before and after);
* the Sink_k^eps changes (a full ``measure`` with the edits in place);
* per-head (or per-layer) effects: the loss change when the edit is applied to one head (layer) only,
  all heads computed in batched passes (see sinkinterp/patching.py).

Activation edits (``first_token(kind)``; ``heads`` index key/value heads for key and value edits):

==================  =====================================================================
``ablate``          remove token 1 from every query's keys: its pattern column -> 0 and the row
                    renormalized (softmax masking); ``renormalize=False`` only zeroes it (the
                    natural choice for unnormalized sigmoid attention). Query 1 is left alone.
``zero_value``      v_1 -> 0                       ``zero_key``   k_1 -> 0 (score q.k_1 = 0)
``mean_value``      v_1 -> mean of v_2..v_T         ``mean_key``   k_1 -> mean of k_2..k_T
``scale_value``     v_1 -> factor * v_1             ``scale_key``  k_1 -> factor * k_1
``ablate_bias``     models with a bias slot (k*, sink token, sink logit): the slot's share -> 0,
                    rows renormalized (equals dropping the slot for softmax)
``bias_to_first``   the slot's share moved onto token 1 (does token 1 still work as the bias?)
``swap_position``   learned/sinusoidal position embeddings of positions 1 and ``position``
                    exchanged (the paper's GPT-2 experiment)
``scale_resid``     h_1 -> factor * h_1 in the residual stream (each edited layer's resid_pre)
``normalize_resid`` h_1 rescaled to the mean norm of h_2..h_T at each edited layer's resid_pre,
                    direction kept: the massive activation removed (pre-norm blocks see the same
                    normalized input at that layer; what changes is how much later writes turn it)
``rotary_position`` rotary models: token 1's key rotated as if token 1 stood at ``position``, so
                    query t sees it at relative distance t - position (its query needs no change:
                    query 1 sees only key 1). The rotation is read off the model's own hook_k ->
                    hook_rot_k at that position (any base, scaling or pairing convention) and checked;
                    on a bridge whose hook_rot_k never fires (GPT-NeoX, Phi-3, Falcon, GPT-J) it is
                    the Hugging Face model's own rotary embedding, applied at hook_k.
==================  =====================================================================

Other key positions: ``at_position(kind, position=p | token=id | positions=fn)`` makes the ablate,
value, key and residual edits at one position of each sequence, fixed or found per sequence (the
first occurrence of a token, or its neighbour as a control): a sink that sits on a later token (a
frequent word) tested the way the first token is. It also reports the loss of the predictions from
the edited position on, where its effects land.

Neuron edit: ``zero_neurons(layer, neurons)`` silences chosen MLP neurons of one layer (units of
``blocks.{layer}.mlp.hook_post``) at token 1 only: a massive activation written by a few neurons,
removed at its source.
Attention-window edit: ``window_cache(window, keep_first)`` hides every key older than the last
``window`` except the first ``keep_first`` tokens (StreamingLLM's cache: keep 4 plus a window; a plain
rolling window: keep 0), rows renormalized; the question is how much a model needs its sink.

Token edits: ``replace_first(token)`` (a fixed id, "random" or "frequent"), ``insert_first(token)``
(a token before the text), ``start_later(shift)`` (the text starts ``shift`` tokens later).
Controls: ``measure`` the same model on random and repeated-token inputs (sinkinterp.inputs).

Model-level surgery for trained sinkinterp models: ``rescale_bias(model, which, factor)`` and
``sinkinterp.models.remove_attention_bias``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from sinkinterp import patching, tl_adapter
from sinkinterp.measure import SinkReport, measure, slot_from_rows, validate_tokens
from sinkinterp.patching import COMPONENTS, Cell, Source

__all__ = [
    "Intervention",
    "InterventionResult",
    "HOOK_KINDS",
    "first_token",
    "at_position",
    "first_of",
    "POSITION_KINDS",
    "replace_first",
    "insert_first",
    "start_later",
    "window_cache",
    "zero_neurons",
    "run_intervention",
    "baseline",
    "compare",
    "key_vs_value",
    "rescale_bias",
]

HOOK_KINDS = ("ablate", "zero_value", "mean_value", "scale_value", "zero_key", "mean_key", "scale_key",
              "ablate_bias", "bias_to_first", "swap_position", "rotary_position", "scale_resid",
              "normalize_resid")


# =========================================================================================
# the intervention objects
# =========================================================================================
@dataclass(frozen=True)
class TokenEdit:
    """New tokens from old: ``apply(tokens, rng)`` -> (new tokens, offset) where original position j
    sits at j + offset in the new sequence."""

    apply: Callable[[Tensor, torch.Generator, int], tuple[Tensor, int]]  # (tokens, rng, d_vocab)


Edits = tuple[tuple[str, Source], ...]


@dataclass(frozen=True)
class Intervention:
    """A named intervention: activation edits, built for a model by ``build_edits(model, has_slot)``
    as (component, source) pairs, or a token edit. ``components`` lists what the edits touch; the first
    one's head axis is what ``heads`` and per-head effects index."""

    name: str
    description: str
    components: tuple[str, ...] = ()
    build_edits: Callable[[Any, bool], Edits] | None = None
    token_edit: TokenEdit | None = None
    needs_slot: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    layers: tuple[int, ...] | None = None  # the layers it edits (None: every layer, or the caller's ``layers``)
    # at_position: each sequence's edited position from its token ids (-1: none); sources read the tokens
    positions: Callable[[Tensor], Tensor] | None = None

    @property
    def head_component(self) -> patching.Component | None:
        return COMPONENTS[self.components[0]] if self.components else None


def _first_only(new_first: Callable[[Tensor], Tensor]) -> Source:
    """A source for [batch, pos, ...] activations that replaces position 0 only."""

    def source(act: Tensor, layer: int) -> Tensor:
        out = act.clone()
        out[:, 0] = new_first(act)
        return out

    return source


def _drop_keys_sources(drop: Callable[[Tensor], Tensor], renormalize: bool, has_slot: bool) -> Edits:
    """Sources for hook_pattern (and hook_bias_pattern) that set the pattern entries ``drop(pattern)``
    marks (a bool mask broadcasting to [batch, head, query, key]) to 0 and, with ``renormalize``
    (right for softmax), scale each row back to its old total over the kept keys plus the slot: a
    softmax model then computes exactly the softmax over the kept keys. A bias slot stays visible.

    Patterns hold shares that sum to 1 per row over the real keys plus the slot (if any), so the
    slot's share is 1 - sum(row) when the pattern hook fires (before the slot's own hook). The row
    factor computed there is kept for the slot hook of the same layer and pass.
    """
    stash: dict[int, Tensor] = {}

    def pattern(act: Tensor, layer: int) -> Tensor:
        # act: [batch, head, query, key]
        p = act.to(torch.promote_types(act.dtype, torch.float32))
        slot = (1.0 - p.sum(-1)).clamp_min(0.0) if has_slot else torch.zeros_like(p[..., 0])
        out = p.masked_fill(drop(p), 0.0)
        if renormalize:  # a row with nothing dropped keeps factor 1 exactly (x / x)
            kept = out.sum(-1) + slot  # computed from what remains: exact when a dropped key held ~all
            factor = torch.where(kept > 0, p.sum(-1) + slot, 0.0) / kept.clamp_min(torch.finfo(p.dtype).tiny)
            out = out * factor[..., None]
        else:  # the slot keeps its weight
            factor = torch.ones_like(slot)
        stash[layer] = factor
        return out.to(act.dtype)

    return _with_slot(pattern, stash, has_slot)


def _drop_first_key(p: Tensor) -> Tensor:
    """Token 1's column for queries 2..T (query 1 sees only token 1: left alone)."""
    T = p.shape[-1]
    pos = torch.arange(T, device=p.device)
    return (pos[None, :] == 0) & (pos[:, None] >= 1)


def _pattern_sources(kind: str, renormalize: bool, has_slot: bool) -> Edits:
    """Sources for hook_pattern (and hook_bias_pattern) that zero token 1's column (``ablate``) or
    remove or move the bias slot's share (``ablate_bias``, ``bias_to_first``)."""
    if kind == "ablate":
        return _drop_keys_sources(_drop_first_key, renormalize, has_slot)
    stash: dict[int, Tensor] = {}

    def pattern(act: Tensor, layer: int) -> Tensor:
        p = act.to(torch.promote_types(act.dtype, torch.float32))
        slot = (1.0 - p.sum(-1)).clamp_min(0.0) if has_slot else torch.zeros_like(p[..., 0])
        out = p.clone()
        if kind == "ablate_bias":
            real = p.sum(-1)
            factor = (real + slot) / real.clamp_min(torch.finfo(p.dtype).tiny) if renormalize else torch.ones_like(real)
            out = out * factor[..., None]
            stash[layer] = torch.zeros_like(real)
        elif kind == "bias_to_first":
            out[..., 0] = out[..., 0] + slot
            stash[layer] = torch.zeros_like(slot)
        else:  # pragma: no cover
            raise AssertionError(kind)
        return out.to(act.dtype)

    return _with_slot(pattern, stash, has_slot)


def _with_slot(pattern: Source, stash: dict[int, Tensor], has_slot: bool) -> Edits:
    """The pattern edit, plus (for a model with a bias slot) the hook_bias_pattern edit that scales the
    slot's share by the row factor the pattern edit left in ``stash`` for that layer and pass."""

    def bias_pattern(act: Tensor, layer: int) -> Tensor:
        if layer not in stash:
            raise RuntimeError(f"blocks.{layer}.attn.hook_bias_pattern fired before hook_pattern; "
                               "this intervention needs the pattern hook first (docs/hook-contract.md)")
        return act * stash.pop(layer).to(act.dtype)

    return (("pattern", pattern), ("bias_pattern", bias_pattern)) if has_slot else (("pattern", pattern),)


_ROTARY_TOL = 2e-2  # relative error of the rotation read off hook_k -> hook_rot_k (bf16 models included)


def _as_complex(x: Tensor, adjacent: bool) -> Tensor:
    """[..., d] real -> [..., d/2] complex, pairing (2i, 2i+1) or (i, i + d/2) (rotate-half)."""
    x = x.double()
    if adjacent:
        return torch.complex(x[..., 0::2], x[..., 1::2])
    a, b = x.chunk(2, dim=-1)
    return torch.complex(a, b)


def _from_complex(z: Tensor, adjacent: bool) -> Tensor:
    if adjacent:
        return torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    return torch.cat([z.real, z.imag], dim=-1)


def _rotation_at(pre: Tensor, rot: Tensor, layer: int, position: int) -> tuple[Tensor, bool]:
    """The model's rotary rotation at ``position`` as unit complex numbers per pair, read off its own
    pre- and post-rotary keys there ([batch, kv_head, d_head] each), and the pairing convention that
    explains them. Raises when neither rotate-half nor adjacent pairs reproduce the model's rotation."""
    errors = {}
    for adjacent in (False, True):
        u, w = _as_complex(pre, adjacent), _as_complex(rot, adjacent)
        z = (u.conj() * w).sum(dim=tuple(range(u.ndim - 1)))  # [d/2]: all rows share one angle per pair
        turn = torch.where(z.abs() > 0, z / z.abs().clamp_min(1e-300), torch.ones_like(z))
        err = float((u * turn - w).abs().norm() / w.abs().norm().clamp_min(1e-300))
        if err <= _ROTARY_TOL:
            return turn, adjacent
        errors["adjacent pairs" if adjacent else "rotate-half"] = err
    raise RuntimeError(
        f"rotary_position: blocks.{layer}.attn.hook_rot_k at position {position} is not a pairwise rotation of "
        f"hook_k (relative error {', '.join(f'{k} {v:.2g}' for k, v in errors.items())}); the model's rotary "
        "embedding is not one this intervention can read (partial rotary dimensions?)")


def _hf_rotary_source(rotate: Any, position: int) -> Source:
    """For a bridge around a Hugging Face model whose attention rotates keys inside its own code:
    hook_k (before rotary) gets token 1's key turned by the model's own rotary embedding at
    ``position`` (``tl_adapter.hf_key_rotation``); the model then rotates it by its own angle at
    position 0, the identity."""

    def rotate_first(act: Tensor, layer: int) -> Tensor:
        if position >= act.shape[1]:
            raise ValueError(f"position {position} is outside the sequence (0..{act.shape[1] - 1})")
        k = act[:, :1].to(torch.promote_types(act.dtype, torch.float32))
        out = act.clone()
        out[:, :1] = rotate(k, torch.tensor([position], device=act.device)).to(act.dtype)
        return out

    return rotate_first


def _rotary_position_sources(model: Any, position: int) -> Edits:
    """hook_k stashes the pre-rotary keys; hook_rot_k rotates token 1's key by the rotation the model
    applied at ``position`` (read off the stashed and rotated keys there, so base, scaling and pairing
    are the model's own). On a bridge whose hook_rot_k never fires (GPT-NeoX, Phi-3, Falcon, GPT-J:
    the Hugging Face attention rotates inside its own code): hook_k alone, with the model's own
    rotary embedding (a shared rotate-half ``rotary_emb``, or GPT-J's sin|cos table)."""
    hf = tl_adapter.wrapped_hf_model(model)
    rotate = tl_adapter.hf_key_rotation(hf) if hf is not None else None
    if rotate is not None and not tl_adapter.hook_fires(model, "blocks.0.attn.hook_rot_k"):
        return (("k", _hf_rotary_source(rotate, position)),)
    stash: dict[int, Tensor] = {}

    def keep(act: Tensor, layer: int) -> Tensor:
        stash[layer] = act
        return act

    def rotate(act: Tensor, layer: int) -> Tensor:
        if layer not in stash:
            raise RuntimeError(f"blocks.{layer}.attn.hook_rot_k fired before hook_k; rotary_position needs both "
                               "(docs/hook-contract.md)")
        pre = stash.pop(layer)
        if position >= act.shape[1]:
            raise ValueError(f"position {position} is outside the sequence (0..{act.shape[1] - 1})")
        turn, adjacent = _rotation_at(pre[:, position], act[:, position], layer, position)
        out = act.clone()
        out[:, 0] = _from_complex(_as_complex(act[:, 0], adjacent) * turn, adjacent).to(act.dtype)
        return out

    return (("k", keep), ("rot_k", rotate))


def first_token(kind: str, *, factor: float = 0.0, renormalize: bool = True, position: int = 1) -> Intervention:
    """An activation-level intervention on the first token (see the module docstring for kinds).

    ``factor``: for scale_value / scale_key / scale_resid. ``renormalize``: for ablate / ablate_bias.
    ``position``: for swap_position / rotary_position (0-based position token 1 takes).
    """
    if kind not in HOOK_KINDS:
        raise ValueError(f"kind: got {kind!r}, allowed values are {list(HOOK_KINDS)}")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    if kind in ("ablate", "ablate_bias", "bias_to_first"):
        desc = {
            "ablate": "token 1 removed from every query's keys" + (" (rows renormalized)" if renormalize else ""),
            "ablate_bias": "bias slot removed" + (" (rows renormalized)" if renormalize else ""),
            "bias_to_first": "bias slot's attention moved onto token 1",
        }[kind]
        name = kind if renormalize or kind == "bias_to_first" else f"{kind}[norenorm]"
        return Intervention(name, desc, ("pattern",), lambda model, has_slot: _pattern_sources(kind, renormalize, has_slot),
                            needs_slot=kind != "ablate", params={"renormalize": renormalize})
    if kind in ("swap_position", "rotary_position"):
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            raise ValueError(f"position must be a positive integer (0-based), got {position!r}")
    if kind == "rotary_position":
        return Intervention(kind, f"token 1's key rotated as if at position {position}", ("rot_k", "k"),
                            lambda model, has_slot: _rotary_position_sources(model, position), params={"position": position})
    if kind == "swap_position":

        def swap(act: Tensor, layer: int) -> Tensor:
            if position >= act.shape[1]:
                raise ValueError(f"position {position} is outside the sequence (0..{act.shape[1] - 1})")
            out = act.clone()
            out[:, 0], out[:, position] = act[:, position], act[:, 0]
            return out

        return Intervention(kind, f"position embeddings of positions 0 and {position} swapped", ("pos_embed",),
                            lambda model, has_slot: (("pos_embed", swap),), params={"position": position})
    if kind == "normalize_resid":

        def to_mean_norm(a: Tensor) -> Tensor:
            first = a[:, 0]
            target = a[:, 1:].norm(dim=-1).mean(-1, keepdim=True)
            return first * (target / first.norm(dim=-1, keepdim=True).clamp_min(1e-30))

        return Intervention(kind, "token 1's residual rescaled to the mean norm of the others", ("resid_pre",),
                            lambda model, has_slot: (("resid_pre", _first_only(to_mean_norm)),))
    what, comp = {"value": ("value", "v"), "key": ("key", "k"), "resid": ("residual", "resid_pre")}[kind.split("_")[1]]
    if kind.startswith("zero"):
        src, desc, params = _first_only(lambda a: torch.zeros_like(a[:, 0])), f"{what} of token 1 set to 0", {}
    elif kind.startswith("mean"):
        src, desc, params = _first_only(lambda a: a[:, 1:].mean(1)), f"{what} of token 1 set to the mean of the others", {}
    else:
        if not isinstance(factor, (int, float)):
            raise TypeError(f"factor must be a number, got {type(factor).__name__}")
        f = float(factor)
        src, desc, params = _first_only(lambda a: a[:, 0] * f), f"{what} of token 1 scaled by {f:g}", {"factor": f}
    return Intervention(kind, desc, (comp,), lambda model, has_slot: ((comp, src),), params=params)


# -----------------------------------------------------------------------------------------
# edits at a key position other than the first, possibly a different one in each sequence
# -----------------------------------------------------------------------------------------
POSITION_KINDS = ("ablate", "zero_value", "mean_value", "scale_value", "zero_key", "mean_key", "scale_key",
                  "scale_resid")

_TAPPED: list[Tensor | None] = []  # the token ids of the forward pass in progress, innermost run last


def _integer_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex() and x.dim() == 2


@contextlib.contextmanager
def _token_tap(model: Any) -> Iterator[None]:
    """While open, every forward call of ``model`` records its token ids (the first positional
    argument, or ``tokens=`` / ``input=`` when the call starts from a residual stream, as
    TransformerLens' start_at_layer does) for the edit sources of ``at_position`` and the gate edits
    (``gate.token_gate``, ``gate.donor_gate``), which need each row's tokens: the rows of a batch can be
    any slice or stack of copies. On a bridge, calls of the Hugging Face model inside are recorded too
    (``input_ids``): the batched passes of ``tl_adapter.hf_continuation`` call it directly."""
    from sinkinterp import tl_adapter

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        found = next((x for x in (*args[:1], kwargs.get("tokens"), kwargs.get("input")) if _integer_tensor(x)), None)
        _TAPPED[-1] = found

    def hf_pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        found = next((x for x in (kwargs.get("input_ids"), *args[:1]) if _integer_tensor(x)), None)
        if found is not None:  # a call from embeddings keeps what the bridge's own call recorded
            _TAPPED[-1] = found

    _TAPPED.append(None)
    handles = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    hf = tl_adapter.wrapped_hf_model(model)
    if hf is not None:
        handles.append(hf.register_forward_pre_hook(hf_pre_hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        _TAPPED.pop()


def _tapped_positions(where: Callable[[Tensor], Tensor], act: Tensor, name: str) -> Tensor:
    """The edited position of each row of ``act`` [batch, ...] (-1: none), from the tapped tokens."""
    if not _TAPPED or _TAPPED[-1] is None:
        raise RuntimeError(f"{name}: this edit finds its position in each sequence's tokens; run it through "
                           "run_intervention / compare (they record the tokens of each forward pass)")
    tokens = _TAPPED[-1]
    if tokens.shape[0] != act.shape[0]:
        raise RuntimeError(f"{name}: the forward pass has {tokens.shape[0]} token rows but the activation "
                           f"{act.shape[0]} rows")
    return where(tokens).to(act.device)


def _positions_of(where: Callable[[Tensor], Tensor], tokens: Tensor, name: str) -> Tensor:
    """``where(tokens)`` checked: one integer position per row, -1 or inside the sequence."""
    pos = where(tokens)
    if not isinstance(pos, Tensor) or pos.shape != (tokens.shape[0],) or pos.is_floating_point():
        raise ValueError(f"{name}: positions must give one integer position per sequence, a tensor of shape "
                         f"({tokens.shape[0]},); got {getattr(pos, 'shape', type(pos).__name__)}")
    bad = (pos < -1) | (pos >= tokens.shape[1])
    if bool(bad.any()):
        raise ValueError(f"{name}: position {int(pos[bad][0])} is outside the sequence (0..{tokens.shape[1] - 1}, "
                         "or -1 to leave a sequence unedited)")
    return pos.long()


def first_of(token: int, *, offset: int = 0, start: int = 1) -> Callable[[Tensor], Tensor]:
    """Per-sequence positions: the first occurrence of ``token`` at 0-based position ``start`` or later
    (default 1: the first token is ``first_token``'s business), shifted by ``offset`` (a neighbour of
    that occurrence, as a control); -1 where the token does not occur there or the shifted position
    falls before ``start`` or past the sequence (so a neighbour never is the first token)."""
    for arg, val, low in (("token", token, 0), ("start", start, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {val!r}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ValueError(f"offset must be an integer, got {offset!r}")

    def where(tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        hit = tokens == token
        hit[:, :start] = False
        pos = torch.where(hit.any(1), hit.int().argmax(1), torch.full_like(hit[:, 0], -1, dtype=torch.long))
        shifted = pos + offset
        return torch.where((pos >= 0) & (shifted >= start) & (shifted < T), shifted, -1).long()

    where.__name__ = f"first_of[{token}{offset:+d}]" if offset else f"first_of[{token}]"
    return where


def _at_rows(new_rows: Callable[[Tensor, Tensor], Tensor], where: Callable[[Tensor], Tensor], name: str) -> Source:
    """A source for [batch, pos, ...] activations that replaces, in each row b with a position p_b >= 0,
    position p_b by ``new_rows(act[rows], p[rows])`` (one new row each)."""

    def source(act: Tensor, layer: int) -> Tensor:
        pos = _tapped_positions(where, act, name)
        rows = torch.nonzero(pos >= 0).flatten()
        out = act.clone()
        if rows.numel():
            out[rows, pos[rows]] = new_rows(act[rows], pos[rows]).to(act.dtype)
        return out

    return source


def _mean_of_others(a: Tensor, pos: Tensor) -> Tensor:
    """Per row, the mean over every position but pos (a: [rows, T, ...])."""
    keep = torch.ones(a.shape[:2], dtype=a.dtype, device=a.device)
    keep[torch.arange(a.shape[0], device=a.device), pos] = 0.0
    keep = keep.view(*keep.shape, *([1] * (a.dim() - 2)))
    return (a * keep).sum(1) / (a.shape[1] - 1)


def at_position(kind: str, *, position: int | None = None, token: int | None = None, offset: int = 0,
                positions: Callable[[Tensor], Tensor] | None = None, factor: float = 0.0,
                renormalize: bool = True) -> Intervention:
    """An activation edit at one key position of each sequence, not only the first: is a sink that
    sits elsewhere (the first occurrence of a frequent word) doing the first token's job?

    Where (exactly one): ``position`` (0-based, the same in every sequence; 0 is token 1, as
    ``first_token``), ``token`` (the first occurrence of that id at positions >= 1 in each
    sequence, shifted by ``offset``: ``first_of``) or ``positions`` (a function of the token ids
    [batch, T] giving one position per row, -1 to leave a row unedited; it must look at each row
    alone, since batches are slices and stacked copies of the input).

    Kinds (``POSITION_KINDS``): ``ablate`` removes key p from the keys of every later query t > p
    (rows renormalized unless ``renormalize=False``; query p itself is left alone); ``zero_value`` /
    ``zero_key`` set v_p / k_p to 0, ``mean_value`` / ``mean_key`` to the mean over the sequence's
    other positions, ``scale_value`` / ``scale_key`` / ``scale_resid`` multiply v_p / k_p / h_p by
    ``factor``. ``run_intervention`` also reports the loss of the predictions from the edited
    position on (``loss_from_edit``), where every effect lands.
    """
    if kind not in POSITION_KINDS:
        raise ValueError(f"kind: got {kind!r}, allowed values are {list(POSITION_KINDS)}")
    if sum(x is not None for x in (position, token, positions)) != 1:
        raise ValueError("at_position: give exactly one of position, token or positions")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    if offset and token is None:
        raise ValueError("offset: applies to token= only (the first occurrence's neighbour)")
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"position must be a non-negative integer (0-based), got {position!r}")

        def fixed(tokens: Tensor) -> Tensor:  # -1 (no edit) where the sequence is shorter
            return torch.full((tokens.shape[0],), position if position < tokens.shape[1] else -1, dtype=torch.long)

        where, label = fixed, f"pos[{position}]"
    elif token is not None:
        where = first_of(token, offset=offset)
        label = where.__name__
    else:
        if not callable(positions):
            raise TypeError(f"positions must be a function of the token ids, got {type(positions).__name__}")
        where, label = positions, f"positions[{getattr(positions, '__name__', 'fn')}]"
    params: dict[str, Any] = {"where": label}
    name = f"{kind}@{label}"
    if kind == "ablate":
        if not renormalize:
            name = f"ablate[norenorm]@{label}"

        def drop_key(p: Tensor) -> Tensor:
            pos = _tapped_positions(where, p, name)  # [batch]
            idx = torch.arange(p.shape[-1], device=p.device)
            mask = (idx[None, None, :] == pos[:, None, None]) & (idx[None, :, None] > pos[:, None, None])
            return mask[:, None]  # [batch, 1, query, key]; rows with pos -1 drop nothing

        params["renormalize"] = renormalize
        return Intervention(name, f"key at {label} removed from later queries' keys"
                            + (" (rows renormalized)" if renormalize else ""), ("pattern",),
                            lambda model, has_slot: _drop_keys_sources(drop_key, renormalize, has_slot),
                            params=params, positions=where)
    what, comp = {"value": ("value", "v"), "key": ("key", "k"), "resid": ("residual", "resid_pre")}[kind.split("_")[1]]
    if kind.startswith("zero"):
        new, desc = (lambda a, pos: torch.zeros_like(a[:, 0])), f"{what} at {label} set to 0"
    elif kind.startswith("mean"):
        new, desc = _mean_of_others, f"{what} at {label} set to the mean of the others"
    else:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"factor must be a number, got {type(factor).__name__}")
        f = float(factor)
        params["factor"] = f

        def new(a: Tensor, pos: Tensor) -> Tensor:
            return a[torch.arange(a.shape[0], device=a.device), pos] * f

        desc = f"{what} at {label} scaled by {f:g}"

    src = _at_rows(new, where, name)
    return Intervention(name, desc, (comp,), lambda model, has_slot: ((comp, src),), params=params, positions=where)


def _window_sources(window: int, keep_first: int, renormalize: bool, has_slot: bool) -> Edits:
    """Sources for hook_pattern (and hook_bias_pattern) that hide every key s from query t unless
    t - s < window or s < keep_first; a bias slot stays visible, as in a windowed model."""

    def outside(p: Tensor) -> Tensor:
        T = p.shape[-1]
        pos = torch.arange(T, device=p.device)
        return ~(((pos[:, None] - pos[None, :]) < window) | (pos[None, :] < keep_first))  # future keys are 0 already

    return _drop_keys_sources(outside, renormalize, has_slot)


def window_cache(window: int, keep_first: int = 0, *, renormalize: bool = True) -> Intervention:
    """Attention limited to a sliding window of the last ``window`` keys plus the first ``keep_first``
    tokens (StreamingLLM's cache: ``keep_first=4``; a plain rolling window: 0), at the pattern: every
    other key's weight is set to 0 and, with ``renormalize`` (right for softmax), each row is scaled
    back to its old total, so a softmax model computes exactly the softmax over the kept keys. Keys
    keep their original positions (StreamingLLM re-numbers positions inside its cache; with RoPE
    that changes the kept tokens' relative distances, which this does not model). A bias slot stays
    visible. On a model trained with ``window=w`` and no bias, ``window_cache(w)`` changes nothing."""
    for arg, val, low in (("window", window, 1), ("keep_first", keep_first, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {val!r}")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    name = f"window[{window}]" + (f"+first[{keep_first}]" if keep_first else "") + ("" if renormalize else "[norenorm]")
    desc = f"keys limited to the last {window}" + (f" plus the first {keep_first}" if keep_first else "") + (
        " (rows renormalized)" if renormalize else "")
    return Intervention(name, desc, ("pattern",),
                        lambda model, has_slot: _window_sources(window, keep_first, renormalize, has_slot),
                        params={"window": window, "keep_first": keep_first, "renormalize": renormalize})


def zero_neurons(layer: int, neurons: Sequence[int]) -> Intervention:
    """MLP neurons ``neurons`` of layer ``layer`` set to 0 at token 1 only (units of
    ``blocks.{layer}.mlp.hook_post``, the input of W_out; every other position and layer untouched).
    Its cells are that layer only (``run_intervention`` checks it against the model); a neuron index
    past d_mlp raises there."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative integer, got {layer!r}")
    if (isinstance(neurons, (str, bytes)) or not isinstance(neurons, Sequence) or not neurons
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in neurons)):
        raise ValueError(f"neurons must be a non-empty list of non-negative integers, got {neurons!r}")
    chosen = sorted(set(neurons))
    index = torch.tensor(chosen)

    def silence(act: Tensor, l: int) -> Tensor:
        if chosen[-1] >= act.shape[-1]:
            raise ValueError(f"neurons: {chosen[-1]} is outside blocks.{layer}.mlp (d_mlp = {act.shape[-1]})")
        out = act.clone()
        out[:, 0, index.to(act.device)] = 0.0
        return out

    def edits(model: Any, has_slot: bool) -> Edits:
        if tl_adapter.has_hook(model, f"blocks.{layer}.mlp.hook_router_scores"):
            raise ValueError(f"zero_neurons: blocks.{layer}.mlp of this model is a mixture of experts (it has a "
                             "router); its hook_post is not one set of neurons, and silencing units of single "
                             "experts is not supported")
        return (("mlp_post", silence),)

    shown = ",".join(map(str, chosen[:8])) + (f",... ({len(chosen)})" if len(chosen) > 8 else "")
    return Intervention(f"zero_neurons[L{layer}:{shown}]", f"MLP neurons {shown} of layer {layer} set to 0 at token 1",
                        ("mlp_post",), edits, params={"layer": layer, "neurons": chosen}, layers=(layer,))


def replace_first(token: int | str) -> Intervention:
    """Put another token first: an id, ``"random"`` (uniform per sequence) or ``"frequent"`` (the most
    frequent id among positions 2..T of the batch)."""
    if not (isinstance(token, int) and token >= 0) and token not in ("random", "frequent"):
        raise ValueError(f"token must be a non-negative id, 'random' or 'frequent', got {token!r}")

    def apply(tokens: Tensor, gen: torch.Generator, d_vocab: int) -> tuple[Tensor, int]:
        new = tokens.clone()
        if token == "random":
            new[:, 0] = torch.randint(0, d_vocab, (tokens.shape[0],), generator=gen)
        elif token == "frequent":
            new[:, 0] = int(torch.bincount(tokens[:, 1:].reshape(-1)).argmax())
        else:
            new[:, 0] = int(token)
        return new, 0

    return Intervention(f"replace_first[{token}]", f"token 1 replaced by {token}", token_edit=TokenEdit(apply),
                        params={"token": token})


def insert_first(token: int | str) -> Intervention:
    """Insert a token (an id or ``"random"``) before the text; the last token is dropped so the
    length stays T."""
    if not (isinstance(token, int) and token >= 0) and token != "random":
        raise ValueError(f"token must be a non-negative id or 'random', got {token!r}")

    def apply(tokens: Tensor, gen: torch.Generator, d_vocab: int) -> tuple[Tensor, int]:
        if token == "random":
            first = torch.randint(0, d_vocab, (tokens.shape[0], 1), generator=gen)
        else:
            first = torch.full((tokens.shape[0], 1), int(token), dtype=tokens.dtype)
        return torch.cat([first, tokens[:, :-1]], dim=1), 1

    return Intervention(f"insert_first[{token}]", f"{token} inserted before token 1", token_edit=TokenEdit(apply),
                        params={"token": token})


def start_later(shift: int) -> Intervention:
    """The text starts ``shift`` tokens later (the old token 1+shift becomes the first); T shrinks."""
    if not isinstance(shift, int) or shift < 1:
        raise ValueError(f"shift must be a positive integer, got {shift!r}")

    def apply(tokens: Tensor, gen: torch.Generator, d_vocab: int) -> tuple[Tensor, int]:
        if shift > tokens.shape[1] - 2:
            raise ValueError(f"shift {shift} leaves fewer than 2 tokens of {tokens.shape[1]}")
        return tokens[:, shift:], -shift

    return Intervention(f"start_later[{shift}]", f"text starts {shift} tokens later", token_edit=TokenEdit(apply),
                        params={"shift": shift})


# =========================================================================================
# running
# =========================================================================================
@dataclass
class InterventionResult:
    """What an intervention changed. Losses are mean next-token cross entropy (nats) over the same
    target tokens before and after; ``per_head`` / ``per_layer`` hold the loss change when only that
    head / layer is edited (NaN where not computed)."""

    name: str
    description: str
    loss_base: float
    loss: float
    sink_base: SinkReport | None
    sink: SinkReport | None
    per_head: np.ndarray | None = None  # [L, H]
    per_layer: np.ndarray | None = None  # [L]
    params: dict[str, Any] = field(default_factory=dict)
    # at_position: sequences edited, and the mean loss of the predictions from the edited position on
    edited: int | None = None
    loss_from_edit_base: float | None = None
    loss_from_edit: float | None = None
    # activation edits on weights TransformerLens processed (tl_adapter.weight_processing): a value edit then
    # leaves the value bias, folded into b_O, in place
    weight_processing: str | None = None

    @property
    def delta_loss(self) -> float:
        return self.loss - self.loss_base

    @property
    def delta_loss_from_edit(self) -> float | None:
        """at_position: the loss change of the predictions from each edited position on (None elsewhere)."""
        if self.loss_from_edit is None or self.loss_from_edit_base is None:
            return None
        return self.loss_from_edit - self.loss_from_edit_base

    def sink_delta(self) -> np.ndarray | None:
        """Sink_k change (percentage points) for k = 1..k_max."""
        if self.sink is None or self.sink_base is None:
            return None
        return self.sink.sink_pct - self.sink_base.sink_pct

    def to_dict(self) -> dict[str, Any]:
        def arr(x: np.ndarray | None) -> Any:
            return None if x is None else np.asarray(x, dtype=np.float64).round(8).tolist()

        out: dict[str, Any] = {
            "name": self.name, "description": self.description, "params": self.params,
            "loss_base": round(self.loss_base, 8), "loss": round(self.loss, 8),
            "delta_loss": round(self.delta_loss, 8),
            "per_head_delta_loss": arr(self.per_head), "per_layer_delta_loss": arr(self.per_layer),
        }
        if self.edited is not None:
            out["edited_sequences"] = self.edited
            out["loss_from_edit_base"] = None if self.loss_from_edit_base is None else round(self.loss_from_edit_base, 8)
            out["loss_from_edit"] = None if self.loss_from_edit is None else round(self.loss_from_edit, 8)
            d = self.delta_loss_from_edit
            out["delta_loss_from_edit"] = None if d is None else round(d, 8)
        if self.weight_processing is not None:
            out["weight_processing"] = self.weight_processing
        if self.sink is not None and self.sink_base is not None:
            out["sink_pct_base"] = arr(self.sink_base.sink_pct)
            out["sink_pct"] = arr(self.sink.sink_pct)
            out["sink_bias_pct_base"] = self.sink_base.sink_bias_pct
            out["sink_bias_pct"] = self.sink.sink_bias_pct
            out["alpha_base"] = arr(self.sink_base.alpha)
            out["alpha"] = arr(self.sink.alpha)
        return out


def _slot_kind(model: Any) -> str | None:
    """"hook": the model reports its bias slot through hook_bias_pattern (sinkinterp's k*/v*, sink
    token, sink logit); "rows": a bridge's learned attention sinks (gpt-oss), whose share is what the
    hook_pattern rows leave (``measure.slot_from_rows``), edited through the pattern alone; None."""
    if "blocks.0.attn.hook_bias_pattern" in set(tl_adapter.hook_names(model)):
        return "hook"
    return "rows" if slot_from_rows(model) else None


def _layer_list(dims: dict[str, Any], layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(dims["n_layers"]))
    out = [int(l) for l in layers]
    for l in out:
        if not 0 <= l < dims["n_layers"]:
            raise ValueError(f"layers: {l} is outside the model (0..{dims['n_layers'] - 1})")
    if not out:
        raise ValueError("layers: empty")
    return out


def _head_count(dims: dict[str, Any], comp: patching.Component) -> int:
    return dims["n_kv_heads"] if comp.kv else dims["n_heads"]


def _selected_cells(dims: dict[str, Any], inter: Intervention, layers: Sequence[int] | None,
                    heads: Sequence[int] | None) -> list[Cell]:
    layer_list = _layer_list(dims, layers)
    comp = inter.head_component
    assert comp is not None
    if "{l}" not in comp.hook:  # a model-wide hook (position embeddings)
        if layers is not None or heads is not None:
            raise ValueError(f"layers / heads do not apply to {inter.name!r} (it edits {comp.hook})")
        return [Cell(0)]
    if heads is None:
        return [Cell(l) for l in layer_list]
    if comp.head_dim is None:
        raise ValueError(f"heads: intervention {inter.name!r} has no head axis")
    n = _head_count(dims, comp)
    for h in heads:
        if not 0 <= int(h) < n:
            raise ValueError(f"heads: {h} is outside the model's {n} {'key/value ' if comp.kv else ''}heads")
    return [Cell(l, int(h)) for l in layer_list for h in heads]


def _run_loss(model: Any, tokens: Tensor, hooks: Sequence[tuple[str, Any]], batch_size: int) -> Tensor:
    """Per-target cross entropy [N, T-1] with ``hooks`` attached."""
    device = patching._model_device(model)
    out = []
    with patching._eval_mode(model), torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start:start + batch_size].to(device)
            out.append(patching.per_token_loss(model(batch), batch).double().cpu())
    return torch.cat(out)


Baseline = tuple[Tensor, SinkReport | None]


def baseline(model: Any, tokens: Tensor, *, eps: float = 0.3, sinks: bool = True, batch_size: int = 8) -> Baseline:
    """Per-target losses and (optionally) the Sink measurement of the unedited model, to share
    between several ``run_intervention`` calls on the same tokens."""
    tokens = validate_tokens(tokens, tl_adapter.model_dims(model)["d_vocab"])
    return (_run_loss(model, tokens, [], batch_size),
            measure(model, tokens, eps=eps, batch_size=batch_size, qk_heads=None) if sinks else None)


def _prepare_edits(model: Any, dims: dict[str, Any], tokens: Tensor, inter: Intervention,
                   layers: Sequence[int] | None, heads: Sequence[int] | None) -> tuple[Any, ...]:
    """Check an intervention against the model and tokens before any work starts: (layers, slot kind,
    edits, cells, each sequence's edited position); edits and cells are empty for a token edit."""
    T = tokens.shape[1]
    if inter.layers is not None:  # an edit of its own layers (zero_neurons): its cells, per-layer and per-head runs
        if layers is not None and set(layers) - set(inter.layers):
            raise ValueError(f"layers: intervention {inter.name!r} edits layers {list(inter.layers)} only")
        layers = inter.layers if layers is None else layers
    slot = _slot_kind(model)
    if inter.needs_slot and slot is None:
        raise ValueError(f"intervention {inter.name!r} needs a model with a bias slot "
                         "(blocks.{l}.attn.hook_bias_pattern: k*, a sink token or a sink logit; or a bridge "
                         "with learned attention sinks, as gpt-oss)")
    edits: list[tuple[patching.Component, Source]] = []
    cells: list[Cell] = []
    if inter.build_edits is not None:
        # learned sinks without a hook: the pattern edit alone changes their share (1 - the row's sum)
        edits = [(COMPONENTS[c], s) for c, s in inter.build_edits(model, slot is not None)
                 if not (slot == "rows" and c == "bias_pattern")]
        cells = _selected_cells(dims, inter, layers, heads)
        for comp, _ in edits:
            patching._check_cells(model, comp, [c if comp.head_dim is not None else Cell(c.layer) for c in cells], T)
    edit_pos = _positions_of(inter.positions, tokens, inter.name) if inter.positions is not None else None
    return layers, slot, edits, cells, edit_pos


def run_intervention(
    model: Any,
    tokens: Int[Tensor, "num_seqs seq_len"] | np.ndarray,
    intervention: object,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    per_head: bool = False,
    per_layer: bool = False,
    eps: float = 0.3,
    sinks: bool = True,
    target_start: int = 1,
    batch_size: int = 8,
    batch_rows: int = 64,
    seed: int = 0,
    base: Baseline | None = None,
    progress: bool = False,
) -> InterventionResult:
    """Apply ``intervention`` to ``model`` on ``tokens`` [N, T] and report what changed.

    ``layers`` / ``heads``: where activation edits act (default everywhere; heads index key/value
    heads for key and value edits). ``per_head`` / ``per_layer``: also the loss change of editing one
    head / layer at a time (batched passes). ``target_start``: first 0-based target position scored
    (the loss covers the targets from there on that both inputs contain). ``sinks``: measure
    Sink_k^eps before and after. ``base``: a precomputed ``baseline(...)`` on the same tokens.
    Every hook is removed when the call returns, also on error.
    """
    if not isinstance(intervention, Intervention):
        raise TypeError(f"intervention: expected an Intervention, got {type(intervention).__name__}")
    inter = intervention
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    n, T = tokens.shape
    if not isinstance(target_start, int) or not 1 <= target_start < T:
        raise ValueError(f"target_start must be an integer in [1, {T - 1}], got {target_start!r}")
    if inter.token_edit is not None and (per_head or per_layer or layers is not None or heads is not None):
        raise ValueError("layers / heads / per_head / per_layer apply to activation edits, not token edits")
    layers, _, edits, cells, edit_pos = _prepare_edits(model, dims, tokens, inter, layers, heads)

    base_nll, sink_base = base if base is not None else baseline(model, tokens, eps=eps, sinks=sinks,
                                                                  batch_size=batch_size)
    if tuple(base_nll.shape) != (n, T - 1):
        raise ValueError(f"base: computed on other tokens (losses {tuple(base_nll.shape)}, tokens {(n, T)})")

    if inter.token_edit is not None:
        gen = torch.Generator().manual_seed(seed)
        new_tokens, offset = inter.token_edit.apply(tokens, gen, dims["d_vocab"])
        new_tokens = validate_tokens(new_tokens, dims["d_vocab"], "intervened tokens")
        new_nll = _run_loss(model, new_tokens, [], batch_size)
        # original target j (>= target_start) is new target j + offset (in 1..new length - 1)
        j = torch.arange(1, T)
        jj = j[(j >= target_start) & (j + offset >= 1) & (j + offset < new_tokens.shape[1])]
        sink = measure(model, new_tokens, eps=eps, batch_size=batch_size, qk_heads=None) if sinks else None
        return InterventionResult(inter.name, inter.description, float(base_nll[:, jj - 1].mean()),
                                  float(new_nll[:, jj + offset - 1].mean()), sink_base, sink,
                                  params=dict(inter.params))

    # at_position edits read each forward pass's tokens
    with _token_tap(model) if inter.positions is not None else contextlib.nullcontext():
        hooks = patching.edit_hooks(model, edits, cells)
        new_nll = _run_loss(model, tokens, hooks, batch_size)
        loss_base = float(base_nll[:, target_start - 1:].mean())
        sink = None
        if sinks:
            with tl_adapter.attached_hooks(model, hooks):
                sink = measure(model, tokens, eps=eps, batch_size=batch_size, qk_heads=None)
        result = InterventionResult(inter.name, inter.description, loss_base,
                                    float(new_nll[:, target_start - 1:].mean()), sink_base, sink,
                                    params=dict(inter.params), weight_processing=tl_adapter.weight_processing(model))
        if edit_pos is not None:  # the predictions from each sequence's edited position on
            pos = edit_pos
            query = torch.arange(T - 1)[None, :]  # column c of the losses: query c predicting token c + 1
            after = (pos[:, None] >= 0) & (query >= pos[:, None]) & (query >= target_start - 1)
            result.edited = int((pos >= 0).sum())
            if bool(after.any()):
                result.loss_from_edit_base = float(base_nll[after].mean())
                result.loss_from_edit = float(new_nll[after].mean())

        metric = patching.loss_metric(tokens, target_start)
        comp = inter.head_component
        assert comp is not None
        if per_head:
            if comp.head_dim is None or "{l}" not in comp.hook:
                raise ValueError(f"per_head: intervention {inter.name!r} has no per-head edit")
            n_h = _head_count(dims, comp)
            head_cells = [Cell(l, h) for l in _layer_list(dims, layers) for h in range(n_h)]
            vals = patching.run_cells(model, tokens, edits, head_cells, metric, batch_rows=batch_rows, progress=progress)
            result.per_head = np.full((dims["n_layers"], n_h), np.nan)
            for c, v in zip(head_cells, vals):
                result.per_head[c.layer, c.head] = v - loss_base
        if per_layer:
            if "{l}" not in comp.hook:
                raise ValueError(f"per_layer: intervention {inter.name!r} has no per-layer edit")
            layer_cells = [Cell(l) for l in _layer_list(dims, layers)]
            vals = patching.run_cells(model, tokens, edits, layer_cells, metric, batch_rows=batch_rows, progress=progress)
            result.per_layer = np.full(dims["n_layers"], np.nan)
            for c, v in zip(layer_cells, vals):
                result.per_layer[c.layer] = v - loss_base
        return result


def compare(model: Any, tokens: Any, interventions: Sequence[Intervention], **kwargs: Any) -> list[InterventionResult]:
    """Run several interventions on the same tokens (``run_intervention`` keyword arguments), sharing
    one baseline run. ``layers``, ``heads``, ``per_head`` and ``per_layer`` apply to the activation
    edits; token edits run without them, and residual-stream edits (no head axis) answer ``per_head``
    with per-layer effects."""
    for inter in interventions:
        if not isinstance(inter, Intervention):
            raise TypeError(f"interventions: expected Intervention objects, got {type(inter).__name__}")
    dims = tl_adapter.model_dims(model)
    tokens = validate_tokens(tokens, dims["d_vocab"])
    for inter in interventions:  # every edit checked before the first one runs
        if inter.token_edit is None:
            _prepare_edits(model, dims, tokens, inter, kwargs.get("layers"), kwargs.get("heads"))
    base = baseline(model, tokens, eps=kwargs.get("eps", 0.3), sinks=kwargs.get("sinks", True),
                    batch_size=kwargs.get("batch_size", 8))
    edit_only = ("layers", "heads", "per_head", "per_layer")
    token_kwargs = {k: v for k, v in kwargs.items() if k not in edit_only}
    todo: Sequence[Intervention] = interventions
    if kwargs.get("progress"):
        from tqdm.auto import tqdm

        todo = tqdm(interventions, desc="interventions", unit="run")

    def options(inter: Intervention) -> dict[str, Any]:
        if inter.token_edit is not None:
            return token_kwargs
        comp = inter.head_component
        if kwargs.get("per_head") and comp is not None and comp.head_dim is None and "{l}" in comp.hook:
            return {**kwargs, "per_head": False, "per_layer": True}  # a residual edit: one effect per layer
        return kwargs

    return [run_intervention(model, tokens, inter, base=base, **options(inter)) for inter in todo]


def key_vs_value(model: Any, tokens: Any, **kwargs: Any) -> list[InterventionResult]:
    """The key-bias test: zero / mean-replace token 1's values vs ablating or zeroing its key.
    A key bias that carries no value predicts small value effects and large key effects."""
    kinds = ["zero_value", "mean_value", "zero_key", "ablate"]
    return compare(model, tokens, [first_token(k) for k in kinds], **kwargs)


# =========================================================================================
# model-level surgery
# =========================================================================================
def rescale_bias(model: Any, which: str, factor: float) -> Any:
    """A copy of a trained sinkinterp model with its learned k* (``"k"``), v* (``"v"``) or sink
    logit (``"logit"``: ``factor`` is added in log space, i.e. the sink's weight is multiplied by
    ``factor``) rescaled; a logit held fixed (``sink_logit_fixed``) is held at the new value, its config
    saying so. The input model is unchanged."""
    from sinkinterp.models import SinkTransformer
    from sinkinterp.models.model import rebuilt

    if not isinstance(model, SinkTransformer):
        raise TypeError(f"model: expected a SinkTransformer, got {type(model).__name__}")
    params = {"k": "k_star", "v": "v_star", "logit": "sink_logit"}
    if which not in params:
        raise ValueError(f"which: got {which!r}, allowed values are {list(params)}")
    if not isinstance(factor, (int, float)) or (which == "logit" and factor <= 0):
        raise ValueError(f"factor must be a number{' > 0' if which == 'logit' else ''}, got {factor!r}")
    attn = model.blocks[0].attn
    if not hasattr(attn, params[which]):
        raise ValueError(f"which={which!r}: the model (attn_bias={model.cfg.attn_bias!r}) has no {params[which]}")
    fixed = model.cfg.sink_logit_fixed
    if which == "logit" and fixed is not None:  # a held logit: the copy's config says where it is held now
        new = rebuilt(model, model.cfg.replace(sink_logit_fixed=float(fixed + np.log(factor))))
    else:
        new = copy.deepcopy(model)
    with torch.no_grad():
        for block in new.blocks:
            p = getattr(block.attn, params[which])
            if which == "logit":
                p.add_(float(np.log(factor)))
            else:
                p.mul_(float(factor))
    return new
