"""The one module that talks to TransformerLens.

Every other part of sinkinterp reaches TransformerLens only through the names defined here,
so a change between TransformerLens lines (3.9 keeps ``HookedTransformer``; 4.x has only
``TransformerBridge``) is absorbed in one place. What both lines share, and what we rely on:

* ``HookedRootModule`` and ``HookPoint``: the hook base classes our own models build on;
* the hook-name contract (``blocks.{l}.attn.hook_pattern``, ``hook_k``, ``hook_v``,
  ``blocks.{l}.hook_resid_pre`` ...), served by a ``HookedTransformer``, a ``TransformerBridge``
  and sinkinterp's own models alike;
* ``model.hooks(fwd_hooks=...)``: a context manager that removes exactly the hooks it added;
* ``transformer_lens.patching``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import inspect
import os
import re
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

# No code path of sinkinterp may contact a model hub: set the offline switches before
# transformers / huggingface_hub are imported by TransformerLens.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import warnings  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # TransformerLens >= 3.9 prefers the top-level import; 4.x requires it.
        from transformer_lens import HookedRootModule  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - older 3.x
        from transformer_lens.hook_points import HookedRootModule  # type: ignore[no-redef]
    from transformer_lens.hook_points import HookPoint

__all__ = [
    "HookPoint",
    "HookedRootModule",
    "HookFn",
    "tl_version",
    "hook_names",
    "has_hook",
    "hook_dict_kept",
    "attached_hooks",
    "count_attached_hooks",
    "fired_hooks",
    "hook_fires",
    "check_editable",
    "attn_scale",
    "position_bias",
    "attn_softcap",
    "attn_visibility",
    "learned_sink_logits",
    "model_dims",
    "weight_processing",
    "checkpoint_value_biases",
    "boot_bridge",
    "hooked_transformer_from_config",
    "wrapped_hf_model",
    "hf_continuation",
    "HFRecord",
    "hf_rotary_emb",
    "hf_key_rotation",
    "route_attention",
    "hf_architecture",
    "mlp_out_weight",
    "attn_out_weight",
    "patching",
]

HookFn = Callable[..., Any]


def tl_version() -> str:
    """The installed TransformerLens version string."""
    return importlib.metadata.version("transformer-lens")


def hook_names(model: Any) -> list[str]:
    """All hook names a model answers to (canonical names and aliases)."""
    return list(_hook_dict(model).keys())


def has_hook(model: Any, name: str) -> bool:
    return name in _hook_dict(model)


# id(model) -> its hook_dict, while inside hook_dict_kept(model)
_KEPT_HOOK_DICTS: dict[int, dict[str, Any]] = {}


def _hook_dict(model: Any) -> dict[str, Any]:
    kept = _KEPT_HOOK_DICTS.get(id(model))
    if kept is not None:
        return kept
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise TypeError(
            f"model: expected a hooked model (HookedTransformer, TransformerBridge or a sinkinterp "
            f"model) with a `hook_dict`, got {type(model).__name__}"
        )
    return hook_dict


@contextlib.contextmanager
def hook_dict_kept(model: Any) -> Iterator[None]:
    """Inside, the model's name -> hook point map is read once and kept: ``hook_names``,
    ``has_hook`` and ``attached_hooks`` use it. A TransformerBridge rebuilds that map, every alias
    included, on each read of its ``hook_dict`` (its own ``hooks()`` reads it twice per call), a
    large part of a short pass; with the map kept, ``attached_hooks`` adds a bridge's hooks to its
    hook points directly. For calls that attach hooks many times and do not change which hook
    points the model has meanwhile (patching). Nested uses keep the outer map."""
    key = id(model)
    if key in _KEPT_HOOK_DICTS:
        yield
        return
    _KEPT_HOOK_DICTS[key] = dict(_hook_dict(model))
    try:
        yield
    finally:
        del _KEPT_HOOK_DICTS[key]


@contextlib.contextmanager
def attached_hooks(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]], *,
                   optional: Collection[str] = ()) -> Iterator[Any]:
    """Attach forward hooks for the duration of a ``with`` block.

    Uses the model's own ``hooks`` context manager (HookedRootModule and TransformerBridge
    both have one), which removes exactly the hooks it added, also when the block raises.
    Hooks the user attached beforehand stay.

    A model can list a hook name that its forward pass never reaches (a TransformerBridge lists
    ``hook_rot_k`` for GPT-NeoX, Phi-3, Falcon and GPT-J, whose attention rotates the keys inside
    Hugging Face's code). A measurement or an edit on such a hook would silently read nothing or do
    nothing, so when the block ends normally after at least one hook fired, every attached hook must
    have fired at least once; otherwise this raises a RuntimeError naming the silent hooks. Names in
    ``optional`` may stay silent (a bias slot that only some layers of a model have).
    """
    fired: set[str] = set()

    def recording(name: str, fn: HookFn) -> HookFn:
        def hook_fn(*args: Any, **kwargs: Any) -> Any:
            fired.add(name)
            return fn(*args, **kwargs)

        return hook_fn

    hooks = [(name, recording(name, fn)) for name, fn in fwd_hooks]
    if id(model) in _KEPT_HOOK_DICTS and wrapped_hf_model(model) is not None:
        with _added_to_points(model, hooks):
            yield model
    else:
        if len(hooks) > 1 and wrapped_hf_model(model) is not None:
            hooks = _as_one_filter_hook(model, hooks)
        with model.hooks(fwd_hooks=hooks):
            yield model
    silent = sorted({name for name, _ in fwd_hooks} - fired - set(optional))
    if fired and silent:
        raise RuntimeError(
            f"hooks {silent} are listed by the model ({type(model).__name__}"
            f"{' for ' + hf_architecture(model) if hf_architecture(model) else ''}) but never fired in its forward "
            "pass, so what was read from or done through them is missing; see docs/hook-contract.md"
        )


@functools.lru_cache(maxsize=None)
def _checks_by_name(bridge_type: type) -> bool:
    """Whether a bridge class's ``check_hooks_to_add`` takes the hook name alone (TransformerLens 3.9) rather
    than HookedRootModule's arguments (4.x)."""
    return "hook_point" not in inspect.signature(bridge_type.check_hooks_to_add).parameters


@contextlib.contextmanager
def _added_to_points(model: Any, hooks: list[tuple[str, HookFn]]) -> Iterator[None]:
    """A bridge's hooks added to its hook points (from the kept map) as its ``hooks()`` adds them
    (``HookPoint.add_hook``, in order; the gate on hook points that need a setter first; names the
    bridge does not list left out) and removed again, exactly those, when the block ends."""
    points = _KEPT_HOOK_DICTS[id(model)]
    check = getattr(model, "check_hooks_to_add", None)
    by_name = check is not None and _checks_by_name(type(model))
    added: list[tuple[Any, Any]] = []
    try:
        for name, fn in hooks:
            point = points.get(name)
            if point is None:
                continue
            if by_name:
                check(name)
            elif check is not None:
                check(point, name, fn, dir="fwd")
            point.add_hook(fn, dir="fwd", level=getattr(model, "context_level", 0) + 1)
            added.append((point, point.fwd_hooks[-1]))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            if handle in point.fwd_hooks:  # not already gone through a reset_hooks() inside the block
                point.fwd_hooks.remove(handle)


def _as_one_filter_hook(model: Any, hooks: list[tuple[str, HookFn]]) -> list[tuple[Any, HookFn]]:
    """A TransformerBridge's ``hooks()`` rebuilds its name -> hook point map (``hook_dict``, with
    every alias) once per named hook, a large part of a bridge patching pass's time. The same hooks as one (name filter, dispatcher) pair build it a fixed
    few times (4 in the test) instead of once per hook; each hook point runs its functions in the given order, each seeing the output of the
    one before (as hooks added one by one do). Names the bridge does not list are left out, as
    its ``hooks()`` leaves them out (the caller's silent-hook check then names them)."""
    points = _hook_dict(model)
    by_point: dict[int, list[HookFn]] = {}
    for name, fn in hooks:
        point = points.get(name)
        if point is not None:
            by_point.setdefault(id(point), []).append(fn)

    def wanted(name: str) -> bool:
        return id(points.get(name)) in by_point

    def dispatch(act: Any, hook: Any = None) -> Any:
        for fn in by_point[id(hook)]:
            out = fn(act, hook=hook)
            if out is not None:
                act = out
        return act

    return [(wanted, dispatch)]


def hf_architecture(model: Any) -> str | None:
    """The Hugging Face architecture a TransformerBridge wraps (``LlamaForCausalLM`` ...), or None."""
    hf = wrapped_hf_model(model)
    if hf is None:
        return None
    return (getattr(hf.config, "architectures", None) or [type(hf).__name__])[0]


def fired_hooks(model: Any, names: Sequence[str], tokens: Any) -> set[str]:
    """The subset of ``names`` (hook names the model lists) that fire in a forward pass over
    ``tokens`` (run without gradients; the outputs are discarded)."""
    import torch

    fired: set[str] = set()
    hooks = [(n, lambda x, hook, n=n: fired.add(n)) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    return fired


def _probe_tokens(model: Any) -> Any:
    """Three token ids [[0, 1, 2]] (modulo the vocabulary) on the model's device, for probe passes."""
    import torch

    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        device = torch.device("cpu")
    return (torch.arange(3, device=device) % model_dims(model)["d_vocab"])[None]


def hook_fires(model: Any, name: str) -> bool:
    """Whether hook ``name`` fires in a 3-token forward pass (a bridge can list hooks it never runs)."""
    return name in fired_hooks(model, [name], _probe_tokens(model))


_EDITABLE: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def _edit_reaches_output(model: Any, name: str) -> str:
    """"ok" when replacing the activation at hook ``name`` by other values changes the model's logits
    (a 3-token pass with an identity hook against one with random values, both hooked alike),
    "silent" when the hook never fires, "inert" when it fires and the logits stay the same."""
    import torch

    tokens = _probe_tokens(model)
    gen = torch.Generator().manual_seed(0)
    fired: list[bool] = []

    def scramble(x: Any, hook: Any) -> Any:
        fired.append(True)
        return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x)

    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            with model.hooks(fwd_hooks=[(name, lambda x, hook: x)]):
                same = model(tokens)
            with model.hooks(fwd_hooks=[(name, scramble)]):
                edited = model(tokens)
    finally:
        if was_training:
            model.train()
    if not fired:
        return "silent"
    return "inert" if torch.equal(same, edited) else "ok"


def check_editable(model: Any, names: Sequence[str]) -> None:
    """Raise a RuntimeError when an edit at one of these hooks would not reach the model's output.

    Some TransformerBridge architectures (OPT and GPT-J in TransformerLens 3.9, unless
    ``route_attention`` has routed them) fire ``hook_pattern`` and ``hook_attn_scores`` beside
    Hugging Face's attention for observation only: reading the pattern is right, editing it changes
    nothing. Each kind of hook (the name with its layer index dropped) is tried once per bridge, on
    its first layer named here, and remembered. Other
    models (sinkinterp's, a HookedTransformer) compute their forward pass from their hook points and
    are not probed: there a legitimate edit can leave the output unchanged (the weight of a bias slot
    whose value is zero)."""
    if wrapped_hf_model(model) is None:
        return
    cache = _EDITABLE.setdefault(model, {})
    for name in names:
        kind = re.sub(r"^blocks\.\d+\.", "blocks.{l}.", name)
        if kind not in cache:
            cache[kind] = _edit_reaches_output(model, name)
        if cache[kind] == "ok":
            continue
        arch = hf_architecture(model)
        what = f"{kind} of this model ({type(model).__name__}{' for ' + arch if arch else ''})"
        if cache[kind] == "silent":
            raise RuntimeError(f"{what} is listed but never fired in its forward pass, so an intervention or "
                               "patch there would do nothing; see docs/hook-contract.md")
        raise RuntimeError(f"{what} can be read but not edited: replacing it leaves the output unchanged (the "
                           "bridge computes it beside the attention the model runs), so an intervention or patch "
                           "there would do nothing (tl_adapter.route_attention routes OPT and GPT-J; "
                           "docs/hook-contract.md)")


def attn_scale(model: Any, layer: int) -> float:
    """The factor the model multiplies q.k by before its attention weight function, in ``blocks[layer]``:
    a Hugging Face attention module's own ``scaling`` (Gemma 2: query_pre_attn_scalar ** -0.5),
    ``inv_norm_factor`` (Bloom, Falcon), ``softmax_scale`` (MPT) or ``1 / scale_attn`` (GPT-J) for a bridge; ``1 / attn.attn_scale``
    for a HookedTransformer; a sinkinterp model's ``attn.scale``; else 1 / sqrt(d_head). Position
    biases (ALiBi, T5 buckets: ``position_bias``) and logit soft-capping come on top of this."""
    import math

    attn = model.blocks[layer].attn
    hf = getattr(attn, "original_component", None)
    if hf is not None:
        for name in ("scaling", "inv_norm_factor", "softmax_scale"):  # softmax_scale: MPT
            value = getattr(hf, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        value = getattr(hf, "scale_attn", None)
        if value is not None:
            return 1.0 / float(value)
    own = getattr(attn, "scale", None)
    if isinstance(own, float):
        return own
    divisor = getattr(attn, "attn_scale", None)  # a HookedTransformer divides by it
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and divisor > 0:
        return 1.0 / float(divisor)
    return 1.0 / math.sqrt(model_dims(model)["d_head"])


PositionRows = Callable[[Any], Any]


def position_bias(model: Any, layer: int, n_pos: int) -> tuple[PositionRows | None, str]:
    """The additive score bias ``blocks[layer]``'s attention puts on ``attn_scale * q.k`` over
    ``n_pos`` tokens, as ``(rows, source)``: ``rows(queries)`` gives [head, len(queries), n_pos] in
    float64 for the 0-based query positions ``queries`` (a long tensor; one block of rows at a time, so
    no T x T map is needed), exactly as the model adds it, or ``rows`` is None when the model adds
    none it knows of; ``source`` says which (or what is left out). Known: a sinkinterp model's ALiBi
    and T5 relative buckets; a HookedTransformer's ALiBi; Hugging Face Bloom and MPT, through their
    own functions (Bloom adds slope * key index, MPT slope * (key index - n_pos + 1): per query the
    same as -slope * distance up to a constant) and Falcon with ALiBi (slope * key index / sqrt(d_head),
    folded into the attention mask by its ``FalconModel``)."""
    import math

    import torch

    own = getattr(getattr(model.blocks[layer], "attn", None), "position_bias", None)
    if callable(own) and hasattr(model, "pattern_cols"):  # a sinkinterp model
        kind = getattr(model.cfg, "pos_emb", None)
        if kind not in ("alibi", "relative"):
            return None, "none (the model adds no position bias to its scores)"
        label = ("ALiBi, -slope * |t - s|" if kind == "alibi"
                 else "the layer's learned T5 relative-position bucket table")
        return (lambda queries: own(queries, n_pos)), f"{label} (sinkinterp model)"
    hf = wrapped_hf_model(model)
    if hf is not None:
        config = hf.config
        kind = getattr(config, "model_type", "")
        attn_config = getattr(config, "attn_config", None)
        if kind == "bloom":
            from transformers.models.bloom.modeling_bloom import build_alibi_tensor

            beta = float(getattr(model.blocks[layer].attn.original_component, "beta", 1.0))
            keys = build_alibi_tensor(torch.ones(1, n_pos, dtype=torch.long), config.n_head, torch.float32)[:, 0]
            keys, label = keys.double() * beta, "ALiBi, slope * key index (Hugging Face Bloom's build_alibi_tensor)"
        elif kind == "mpt" and getattr(attn_config, "alibi", False):
            from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

            table = build_mpt_alibi_tensor(config.n_heads, config.max_seq_len, attn_config.alibi_bias_max)
            keys = table[:, 0, -n_pos:].double()  # MPT slices the keys' columns off the end
            label = "ALiBi, slope * (key index - n + 1) (Hugging Face MPT's build_mpt_alibi_tensor)"
        elif kind == "falcon" and getattr(config, "alibi", False):
            from transformers.models.falcon.modeling_falcon import build_alibi_tensor

            keys = build_alibi_tensor(torch.ones(1, n_pos, dtype=torch.long), config.num_attention_heads,
                                      torch.float32)[:, 0].double()
            keys = keys / math.sqrt(config.hidden_size // config.num_attention_heads)
            label = ("ALiBi, slope * key index / sqrt(d_head) (Hugging Face Falcon's build_alibi_tensor, which its "
                     "FalconModel folds into the attention mask)")
        elif getattr(config, "alibi", False) or getattr(attn_config, "alibi", False):
            return None, f"not included: {kind or type(hf).__name__} is configured with ALiBi this adapter does not know"
        else:
            return None, "none (the model adds no position bias to its scores)"
        return (lambda queries: keys.to(queries.device)[:, None, :].expand(-1, len(queries), -1)), label
    kind = getattr(getattr(model, "cfg", None), "positional_embedding_type", None)
    if kind == "alibi":  # a HookedTransformer: TransformerLens's own table, as its attention adds it
        attn = model.blocks[layer].attn
        table = attn.create_alibi_bias(model.cfg.n_heads, n_pos, "cpu").double()
        return (lambda queries: table.to(queries.device)[:, queries]), "ALiBi (TransformerLens's create_alibi_bias)"
    if kind == "relative_positional_bias":
        return None, "not included: the relative position bias of a HookedTransformer comes from outside the layer"
    return None, "none (the model adds no position bias to its scores)"


def learned_sink_logits(model: Any, layer: int) -> Any | None:
    """A bridge's learned attention-sink logits in ``blocks[layer]`` ([head]; gpt-oss's ``sinks``): one
    logit per head joins the softmax as an extra key column and is dropped after it, so the bridge's
    ``hook_pattern`` rows sum to 1 minus the sink's share (TransformerLens 3.9's attention bridge
    computes it so; tested against Hugging Face's eager attention). None for any other model or layer."""
    if wrapped_hf_model(model) is None:
        return None
    sinks = getattr(getattr(model.blocks[layer].attn, "original_component", None), "sinks", None)
    return None if sinks is None else sinks.detach()


def attn_softcap(model: Any) -> float | None:
    """The cap c of a model that soft-caps its attention logits (c * tanh(x / c): Gemma 2's
    ``attn_logit_softcapping``, a HookedTransformer's ``attn_scores_soft_cap``), or None."""
    hf = wrapped_hf_model(model)
    if hf is not None:
        value = getattr(hf.config, "attn_logit_softcapping", None)
    else:
        value = getattr(getattr(model, "cfg", None), "attn_scores_soft_cap", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def attn_visibility(model: Any, layer: int) -> tuple[int | None, int]:
    """Which keys the queries of ``blocks[layer]`` see, as ``(window, prefix)``: query t sees key
    s when s <= t and, with a window w, t - s < w; with a prefix p, also every pair inside the first
    p positions. ``(None, 0)``: every causal key. A sinkinterp model's ``cfg.window`` /
    ``cfg.prefix_len``; a HookedTransformer's ``window_size`` on its "local" layers (GPT-Neo); on a
    bridge the Hugging Face attention module's own ``sliding_window`` (Gemma 2 / 3, Qwen 2 and, by
    the same attribute, Qwen 3, Cohere 2, OLMo 3), GPT-Neo's local layers' ``window_size``, else the
    config's ``sliding_window`` for every layer (Mistral, Mixtral, Phi-3). Tested against Hugging
    Face's masks for the models named first in each group (tests/test_architectures.py)."""
    def window(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    cfg = getattr(model, "cfg", None)
    hf = wrapped_hf_model(model)
    if hf is None and hasattr(cfg, "prefix_len") and hasattr(cfg, "window"):  # a sinkinterp model
        return window(cfg.window), int(cfg.prefix_len)
    if hf is None:  # a HookedTransformer: GPT-Neo's "local" layers
        types = getattr(cfg, "attn_types", None) or []
        local = getattr(cfg, "use_local_attn", False) and layer < len(types) and types[layer] == "local"
        return (window(getattr(cfg, "window_size", None)) if local else None), 0
    attn = getattr(model.blocks[layer].attn, "original_component", None)
    if attn is not None and hasattr(attn, "sliding_window"):
        return window(attn.sliding_window), 0
    kind = getattr(attn, "attention_type", None)
    if kind in ("local", "global"):  # GPT-Neo
        return (window(getattr(hf.config, "window_size", None)) if kind == "local" else None), 0
    if getattr(hf.config, "use_sliding_window", True) is False:
        return None, 0
    return window(getattr(hf.config, "sliding_window", None)), 0


def count_attached_hooks(model: Any) -> int:
    """Number of forward and backward hook functions currently attached to any hook point, leaving out
    permanent ones, which a model wires itself (TransformerLens 4.3's OPT bridge ties its MLP hooks so)."""
    total = 0
    seen: set[int] = set()
    for hp in model.hook_dict.values():
        if id(hp) in seen:  # aliases point at the same HookPoint
            continue
        seen.add(id(hp))
        handles = [*getattr(hp, "fwd_hooks", []), *getattr(hp, "bwd_hooks", [])]
        total += sum(1 for h in handles if not getattr(h, "is_permanent", False))
    return total


def _mean_free(w: Any) -> bool | None:
    """Whether every row of ``w`` (the mean taken over its last dimension, n entries) has mean 0 up to
    rounding, against the matrix's root mean square: TransformerLens centers in float32, which leaves row means
    of some float32 ulp / sqrt(n), and a cast to bf16 adds about one bf16 ulp / sqrt(n); an uncentered random
    matrix has row means of about 1 / sqrt(n) of its size. The bound, 256 float32 ulp + 8 of ``w``'s dtype, over
    sqrt(n), lies between (tests/test_architectures.py: a float32-centered matrix of SmolLM2's unembedding's
    shape, 576 x 49,152, passes, centered or not in float32 and bf16 told apart); it is taken against the root
    mean square of blocks of rows, read block by block, so an uncentered matrix is told by its first block.
    None where ``w`` is missing, not floating point or all zero."""
    import torch

    if not isinstance(w, torch.Tensor) or w.numel() == 0 or w.dim() < 1 or not w.dtype.is_floating_point:
        return None
    n = w.shape[-1]
    rows = w.detach().reshape(-1, n)
    tol = (256 * torch.finfo(torch.float32).eps + 8 * torch.finfo(w.dtype).eps) / n**0.5
    seen = False
    step = max(1, (1 << 20) // n)  # float64 copies of about 8 MB at a time: an embedding can be large, and
    for i in range(0, rows.shape[0], step):  # an uncentered one is told by its first rows
        chunk = rows[i:i + step].double()
        rms = float(chunk.pow(2).mean().sqrt())
        if rms == 0:
            continue
        seen = True
        if float(chunk.mean(-1).abs().max()) > tol * rms:
            return False
    return True if seen else None


def _getattr_quiet(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``, also where a bridge's weight property raises for a component it
    does not have (an MoE MLP's W_out, say)."""
    try:
        return getattr(obj, name, None)
    except (AttributeError, KeyError, NotImplementedError, RuntimeError, TypeError):
        return None


def _is_hooked_transformer(model: Any) -> bool:
    return any(c.__name__ == "HookedTransformer" and c.__module__.startswith("transformer_lens")
               for c in type(model).__mro__)


def _folds_in_weights(model: Any) -> dict[str, bool | None]:
    """What TransformerLens's weight processing leaves in the weights, read from them (it records no
    options): the norms folded (a HookedTransformer's ``normalization_type`` LNPre / RMSPre; a bridge's
    norms left with constant weights, 1 or 0), the writing weights centered (W_E, W_pos, every W_O and
    W_out with mean 0 over d_model), the unembedding centered (W_U with mean 0 over the vocabulary), the
    value biases zero, the output biases zero. None where the model has no such weights."""
    import torch

    blocks = list(_getattr_quiet(model, "blocks") or [])
    norm_type = getattr(getattr(model, "cfg", None), "normalization_type", None)
    if _is_hooked_transformer(model):
        folded: bool | None = norm_type in ("LNPre", "RMSPre") if norm_type is not None else None
    else:
        norms = [m for b in blocks for m in (_getattr_quiet(b, "ln1"), _getattr_quiet(b, "ln2")) if m is not None]
        params = [p for m in norms for p in m.parameters() if p.dim() == 1 and p.numel() > 1]
        folded = all(bool((p == p[0]).all()) for p in params) if params else None
    writing = [lambda b=b: _getattr_quiet(_getattr_quiet(b, "attn"), "W_O") for b in blocks]
    writing += [lambda b=b: _getattr_quiet(_getattr_quiet(b, "mlp"), "W_out") for b in blocks]
    writing += [lambda: _getattr_quiet(model, "W_E"), lambda: _getattr_quiet(model, "W_pos")]
    centered: bool | None = None
    for get in writing:  # smallest first; the first uncentered one decides
        c = _mean_free(get())
        if c is False:
            centered = False
            break
        centered = centered or c
    value_biases, output_biases = ([_getattr_quiet(_getattr_quiet(b, "attn"), name) for b in blocks]
                                   for name in ("b_V", "b_O"))
    value_biases = [v for v in value_biases if isinstance(v, torch.Tensor)]
    output_biases = [o for o in output_biases if isinstance(o, torch.Tensor)]
    return {
        "norms folded": folded,
        "writing weights centered": centered,
        "unembedding centered": _mean_free(_getattr_quiet(model, "W_U")),
        "value biases zero": all(not bool(v.any()) for v in value_biases) if value_biases else None,
        # folding adds sum_h b_V[h] W_O[h] to b_O, which is then zero only where b_V was (or b_V W_O cancels b_O
        # exactly): zero output biases beside zero value biases mean the checkpoint had none to fold
        "output biases zero": all(not bool(o.any()) for o in output_biases) if output_biases else None,
    }


# Whether an architecture's checkpoints carry value biases, where zero value biases beside a nonzero output bias
# leave it open (folded into b_O, or none to begin with): a fixed answer, or the Hugging Face config flag that
# switches them and its default (a HookedTransformer keeps no Hugging Face config: the default then). Checked
# against the installed transformers' attention modules; LLaMA-style configs name theirs ``attention_bias``.
_VALUE_BIASES: dict[str, bool | tuple[str, bool]] = {
    "GPT2LMHeadModel": True, "GPTBigCodeForCausalLM": True, "BloomForCausalLM": True, "PhiForCausalLM": True,
    "Qwen2ForCausalLM": True, "QWenLMHeadModel": True, "BertForMaskedLM": True,
    "OPTForCausalLM": ("enable_bias", True), "GPTNeoXForCausalLM": ("attention_bias", True),
    "FalconForCausalLM": ("bias", False), "StableLmForCausalLM": ("use_qkv_bias", False),
    "GPTNeoForCausalLM": False, "GPTJForCausalLM": False, "CodeGenForCausalLM": False,
    "MistralForCausalLM": False, "MixtralForCausalLM": False, "Phi3ForCausalLM": False,
}


def checkpoint_value_biases(model: Any) -> tuple[bool | None, str | None]:
    """(whether the checkpoint behind ``model`` has value biases, its architecture): read from the
    architecture's name (a HookedTransformer's ``cfg.original_architecture``, a bridge's ``cfg.architecture``)
    and, for a bridge, its Hugging Face config's flag; (None, name) where neither tells."""
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)
    hf = wrapped_hf_model(model)
    hf_cfg = getattr(hf, "config", None)
    if arch is None and hf_cfg is not None:
        arch = (getattr(hf_cfg, "architectures", None) or [None])[0]
    if not isinstance(arch, str):
        return None, None
    rule = _VALUE_BIASES.get(arch)
    if isinstance(rule, bool):
        return rule, arch
    flag, default = rule if rule is not None else ("attention_bias", None)
    value = getattr(hf_cfg, flag, default) if hf_cfg is not None else default
    return (bool(value) if value is not None else None), arch


def weight_processing(model: Any) -> str | None:
    """How TransformerLens rewrote ``model``'s weights, or None where they are the checkpoint's own (sinkinterp
    boots bridges without processing; ``loading.NO_WEIGHT_PROCESSING``). A bridge after ``process_weights`` or
    ``enable_compatibility_mode()``, and a HookedTransformer from ``from_pretrained``, compute the same
    log-probabilities and attention, but may have centered writing weights (LayerNorm models: the residual
    stream loses its mean, so its norms change) and value biases folded into the output bias (``hook_v`` and
    the value norms without them; a value edit leaves the bias in place).

    TransformerLens records which steps ran for neither, so they are read from the weights
    (``_folds_in_weights``): a bridge counts as processed by its ``_weights_processed`` flag; a
    HookedTransformer by folded norms, centered writing weights or a centered unembedding, or by zero value
    biases where its architecture's checkpoints have them (``checkpoint_value_biases``: GPT-2, Pythia, OPT,
    ...; so value biases folded alone are found there; one built from a config names no architecture, so
    its zero b_V beside a nonzero b_O is answered as perhaps processed: folded, or never there). The answer
    names the steps found and those not found; zero value biases are told apart by the architecture where it
    is known (folded, or none to begin with as GPT-Neo), else by the output biases: zero too means the
    checkpoint had none (folding would have left b_O nonzero), nonzero that they were folded, or that the
    checkpoint has an output bias only (GPT-Neo)."""
    bridge = getattr(model, "_weights_processed", None) is True
    if not bridge and not _is_hooked_transformer(model):
        return None
    # measure and every edit ask again; reading a processed model's weights takes a pass over all of them, so
    # the answer is kept while the weights are the same tensors at the same versions (in-place edits bump them)
    norm = getattr(getattr(model, "cfg", None), "normalization_type", None)
    key = (bridge, norm, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    seen = _PROCESSING_SEEN.get(model)
    if seen is not None and seen[0] == key:
        return seen[1]
    answer = _processing_from_weights(model, bridge, norm)
    _PROCESSING_SEEN[model] = (key, answer)
    return answer


_PROCESSING_SEEN: weakref.WeakKeyDictionary[Any, tuple[tuple, str | None]] = weakref.WeakKeyDictionary()


def _processing_from_weights(model: Any, bridge: bool, norm: str | None) -> str | None:
    found = _folds_in_weights(model)
    has_value_biases, arch = checkpoint_value_biases(model)
    evidence = ("norms folded", "writing weights centered", "unembedding centered")
    folded_values = bool(found["value biases zero"]) and has_value_biases is True
    # no architecture named (a HookedTransformer built from a config): zero value biases beside nonzero output
    # biases may have been folded, or the model may never have had value biases; the answer says it cannot tell
    perhaps = (bool(found["value biases zero"]) and has_value_biases is None and found["output biases zero"] is False)
    if not bridge and not folded_values and not perhaps and not any(found[k] for k in evidence):
        return None
    who = ("TransformerBridge.process_weights / enable_compatibility_mode" if bridge
           else "HookedTransformer with processed weights" if folded_values or any(found[k] for k in evidence)
           else "HookedTransformer, perhaps with processed weights (no architecture named to tell)")
    no_output_bias = found.pop("output biases zero") is not False
    if has_value_biases is not None:
        why = (f" (folded into b_O: the checkpoint ({arch}) has value biases)" if has_value_biases
               else f" (the checkpoint ({arch}) has none)")
    elif no_output_bias:
        why = " (the output biases are zero too: the checkpoint has none)"
    else:
        why = " (folded into b_O; or a checkpoint with an output bias and none on the values, as GPT-Neo)"
    yes = [k + (f" (normalization_type {norm})" if k == "norms folded" and not bridge else "")
           + (why if k == "value biases zero" else "")
           for k, v in found.items() if v]
    no = [k for k, v in found.items() if v is False]
    return (f"{who}, read from the weights: {', '.join(yes) or 'no step found'}"
            + (f"; not: {', '.join(no)}" if no else ""))


def model_dims(model: Any) -> dict[str, Any]:
    """n_layers, n_heads, n_kv_heads, d_model, d_head, d_vocab of any hooked model (from ``cfg``)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"model: a hooked model needs a `cfg`, got {type(model).__name__}")
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    return {
        "n_layers": int(cfg.n_layers),
        "n_heads": n_heads,
        "n_kv_heads": int(n_kv),
        "d_model": int(cfg.d_model),
        "d_head": int(getattr(cfg, "d_head", cfg.d_model // n_heads)),
        "d_vocab": int(cfg.d_vocab),
        "positional_embedding_type": str(getattr(cfg, "positional_embedding_type", "unknown")),
        "n_ctx": int(getattr(cfg, "n_ctx", 0) or 0),
    }


def _tokenizer_for_bridge(tokenizer: Any, name: str) -> Any:
    """TransformerBridge re-loads a tokenizer by name (a hub call) unless it already says it adds
    BOS. sinkinterp feeds token ids itself and decides the BOS policy explicitly, so we hand the
    bridge a copy that claims ``add_bos_token`` and never let it fetch anything."""
    tok = copy.copy(tokenizer)
    tok.init_kwargs = dict(getattr(tokenizer, "init_kwargs", {}))
    tok.init_kwargs["add_bos_token"] = True
    tok.init_kwargs.setdefault("name_or_path", name)
    return tok


@functools.lru_cache(maxsize=1)
def falcon_alibi_defect() -> str | None:
    """Why the installed transformers' eager Falcon attention with ALiBi is not the model, or None.

    In transformers 5.23 ``FalconModel.forward`` folds the ALiBi bias into the causal mask and the
    eager attention adds it again (the SDPA path adds it once, as Falcon-RW was trained), and
    TransformerLens 3.9's ALiBi attention bridge copies the eager path. While this holds,
    ``route_attention`` drops the bridge's second copy (``_falcon_alibi_once``). Checked by behaviour,
    once per process: a tiny random Falcon with ALiBi, the same weights run eager and SDPA, logits
    compared."""
    import torch
    import transformers

    cfg = transformers.FalconConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    new_decoder_architecture=False, multi_query=False, alibi=True,
                                    initializer_range=0.5)  # weights large enough for the attention to show
    with torch.random.fork_rng():  # the caller's random state stays as it was
        torch.manual_seed(0)
        eager = transformers.FalconForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
        sdpa = transformers.FalconForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    tokens = torch.arange(1, 9)[None]
    with torch.no_grad():
        gap = float((eager(tokens).logits - sdpa(tokens).logits).abs().max())
    if gap <= 1e-3:
        return None
    return (f"Hugging Face transformers {transformers.__version__}: Falcon's eager attention adds the ALiBi bias "
            f"twice, once in the causal mask and once itself, while its SDPA path adds it once (logits differ by "
            f"{gap:.2g} on a random 1-layer model)")


def boot_bridge(hf_model: Any, tokenizer: Any, name: str, device: str = "cpu") -> Any:
    """Wrap an already-loaded Hugging Face causal LM in a TransformerBridge, offline.

    ``hf_model`` must have been loaded with ``attn_implementation="eager"`` so attention
    probabilities exist to hook. No weight processing is applied: norms are the model's own. A model
    built from a config in memory has no ``config.architectures`` (saving fills it in), which the
    bridge needs to pick its adapter; its class name is filled in then. Architectures whose bridge
    only observes the attention are routed through its hooks (``route_attention``).
    """
    from transformer_lens.model_bridge import TransformerBridge

    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    bridge = TransformerBridge.boot_transformers(
        name,
        hf_model=hf_model,
        tokenizer=_tokenizer_for_bridge(tokenizer, name),
        device=device,
        dtype=next(hf_model.parameters()).dtype,
    )
    route_attention(bridge)
    return bridge


# Bridges whose TransformerLens attention component only wraps Hugging Face's attention, firing
# hook_pattern / hook_attn_scores on the probabilities it returns (observation only), and how to run
# their attention through those hooks instead: "interface" registers an eager attention function with
# Hugging Face's AttentionInterface (OPT's attention calls it); "gptj" replaces GPT-J's ``_attn``.
# "mpt_cache" is another repair: TransformerLens 3.9's MPT bridge recomputes the attention itself (its
# hooks act) but never writes the KV cache, so a cached step saw only its own token.
# "falcon_alibi" (Falcon configured with ALiBi, chosen by ``_route_kind``): the same missing cache write,
# and the bias added a second time while ``falcon_alibi_defect`` holds (``_falcon_alibi_once``).
# "cohere_rope" too: TransformerLens 3.9's Cohere bridge rotates queries and keys with LLaMA's rotate-half
# where Cohere pairs adjacent dimensions (attention off by ~1e-3); the bridge's own adjacent-pairs
# rotation (GLM's) is switched on and given Cohere's cos / sin in the layout it expects.
_ROUTE_KIND = {"OPTForCausalLM": "interface", "GPTJForCausalLM": "gptj", "MptForCausalLM": "mpt_cache",
               "CohereForCausalLM": "cohere_rope"}
# repairs of TransformerLens 3.9 defects that 4.3 fixed itself (its MPT and Falcon-ALiBi bridges write the
# cache, its Cohere bridge rotates adjacent pairs: tests/test_architectures.py shows each): applied on 3.x only,
# since on a fixed bridge they would act twice
_TL3_ONLY = ("mpt_cache", "cohere_rope")
_ROUTE_NAME = "sinkinterp_hooked"
_HOOKS_ATTR = "_sinkinterp_attn_hooks"  # on the Hugging Face attention module: its AttentionBridge


def _hooked_probabilities(module: Any, scores: Any, dtype: Any, dropout: float) -> Any:
    """softmax(scores) through the module's AttentionBridge: hook_attn_scores on the (masked) scores,
    hook_pattern on the probabilities, each returning what the attention then uses."""
    import torch

    hooks = module.__dict__.get(_HOOKS_ATTR)
    if hooks is not None:
        scores = hooks.hook_attn_scores(scores)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    if hooks is not None:
        weights = hooks.hook_pattern(weights)
    return torch.nn.functional.dropout(weights, p=dropout, training=module.training)


def _interface_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                         scaling: float = 1.0, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Hugging Face's eager attention (OPT's ``eager_attention_forward``: one kv head per query head)
    with the probabilities taken through the module's hooks. Returns no weights, so the bridge does
    not fire hook_pattern a second time on them."""
    import torch

    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = _hooked_probabilities(module, scores, query.dtype, dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _gptj_hooked_attn(self: Any, query: Any, key: Any, value: Any, attention_mask: Any = None) -> tuple[Any, None]:
    """GPT-J's ``_attn`` (float32 scores over its rotated queries and keys, divided by scale_attn)
    with the probabilities taken through the module's hooks; no weights returned (see above)."""
    import torch

    scores = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2)) / self.scale_attn
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = _hooked_probabilities(self, scores, value.dtype, 0.0)
    return torch.matmul(self.attn_dropout(weights), value), None


def _attention_with_cache(self: Any, q: Any, k: Any, v: Any, **kwargs: Any) -> Any:
    """An ALiBi attention bridge's own ``_reconstruct_attention`` (MPT's, Falcon's: the bias, the
    bridge's hooks), with the keys and values first passed through the Hugging Face cache it was
    given (TransformerLens's ``_update_kv_cache``), as Hugging Face's attention does."""
    reconstruct = type(self)._reconstruct_attention
    if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
        return reconstruct(self, q, k, v, **kwargs)
    reshape = type(self)._reshape_qkv_to_heads

    def reshape_then_cache(*args: Any, **kw: Any) -> Any:
        q_, k_, v_, *rest = reshape(self, *args, **kw)
        k_, v_ = self._update_kv_cache(k_, v_, **kwargs)
        return (q_, k_, v_, *rest)

    self.__dict__["_reshape_qkv_to_heads"] = reshape_then_cache
    try:
        return reconstruct(self, q, k, v, **kwargs)
    finally:
        del self.__dict__["_reshape_qkv_to_heads"]


def _falcon_alibi_once(self: Any, q: Any, k: Any, v: Any, **kwargs: Any) -> Any:
    """Falcon's ALiBi attention bridge without its second copy of the bias: ``FalconModel`` already
    folded ALiBi / sqrt(d_head) into the attention mask the bridge adds to its scores, so the
    ``alibi`` argument (which the bridge would add again, as transformers' eager attention does) is
    dropped, and the scores are then the ones Falcon's SDPA path softmaxes: (q.k + ALiBi) / sqrt(d_head)
    plus the causal mask. Keys and values go through the cache (``_attention_with_cache``)."""
    return _attention_with_cache(self, q, k, v, **{**kwargs, "alibi": None})


def _falcon_alibi_once_only(self: Any, q: Any, k: Any, v: Any, **kwargs: Any) -> Any:
    """``_falcon_alibi_once`` on a bridge that writes its own cache (TransformerLens 4.x)."""
    return type(self)._reconstruct_attention(self, q, k, v, **{**kwargs, "alibi": None})


def _route_kind(model: Any, hf: Any) -> str | None:
    """The repair ``route_attention`` applies to this bridge (``_ROUTE_KIND``), or None."""
    if getattr(hf.config, "model_type", "") == "falcon" and getattr(hf.config, "alibi", False):
        return "falcon_alibi"
    return _ROUTE_KIND.get(hf_architecture(model) or "")


def _cohere_position_embeddings(self: Any, position_embeddings: Any) -> Any:
    """hook_cos / hook_sin fire on Cohere's own cos / sin (each pair's angle repeated: [a0, a0, a1, a1,
    ...]); the bridge's adjacent-pairs rotation then gets them half-duplicated ([a0, a1, ..., a0, a1,
    ...]), the layout it expands back with repeat_interleave."""
    import torch

    cos, sin = type(self)._apply_position_embedding_hooks(self, position_embeddings)
    return tuple(torch.cat([t[..., ::2], t[..., ::2]], dim=-1) for t in (cos, sin))


def route_attention(model: Any) -> bool:
    """Make a bridge's hook_attn_scores / hook_pattern the ones its attention really uses, for the
    architectures whose TransformerLens 3.9 component only observes Hugging Face's attention (OPT,
    GPT-J: edits there changed nothing, and hook_attn_scores held the probabilities). Their attention
    then runs eager attention in this module that fires the hooks and uses what they return (tested
    equal to Hugging Face's eager attention). MPT's bridge, which recomputes the attention itself but
    never wrote the KV cache (cached steps saw only their own token), gets its cache written
    (``_attention_with_cache``); Cohere's bridge, which rotated with the wrong pairing, rotates
    adjacent pairs (``_cohere_position_embeddings``); Falcon's ALiBi bridge gets its cache written and,
    while ``falcon_alibi_defect`` holds, the bias added once (``_falcon_alibi_once``; tested equal to
    Falcon's SDPA path). ``boot_bridge`` calls it; returns whether this model was routed (False for
    architectures that need no routing or that this adapter does not know)."""
    import types

    hf = wrapped_hf_model(model)
    kind = _route_kind(model, hf) if hf is not None else None
    tl3 = tl_version().startswith("3.")
    if kind is None or (kind in _TL3_ONLY and not tl3):
        return False
    # the bridge's own _reconstruct_attention, replaced: the cache written (3.x), the second ALiBi dropped
    reconstruct = _attention_with_cache if kind == "mpt_cache" else None
    if kind == "falcon_alibi":
        once = falcon_alibi_defect() is not None
        reconstruct = ((_falcon_alibi_once if once else _attention_with_cache) if tl3
                       else _falcon_alibi_once_only if once else None)  # 4.x writes the cache itself
        if reconstruct is None:
            return False
    for block in model.blocks:
        module = block.attn.original_component
        module.__dict__[_HOOKS_ATTR] = block.attn  # a plain attribute: no submodule cycle
        if kind == "gptj":
            module._attn = types.MethodType(_gptj_hooked_attn, module)
        if reconstruct is not None:
            block.attn.__dict__["_reconstruct_attention"] = types.MethodType(reconstruct, block.attn)
        if kind == "cohere_rope":
            block.attn.__dict__["_apply_position_embedding_hooks"] = types.MethodType(
                _cohere_position_embeddings, block.attn)
            block.attn.config.rotary_adjacent_pairs = True
    if kind == "interface":
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        AttentionInterface.register(_ROUTE_NAME, _interface_attention)
        AttentionMaskInterface.register(_ROUTE_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
        hf.config._attn_implementation = _ROUTE_NAME
    _EDITABLE.pop(model, None)
    return True


class HookedTransformerUnavailable(RuntimeError):
    """The installed TransformerLens has no ``HookedTransformer`` (4.x removed it)."""


def hooked_transformer_from_config(**cfg_kwargs: Any) -> Any:
    """A randomly initialised ``HookedTransformer`` (TransformerLens 3.x only): for tests and users
    who already work with one. Raises ``HookedTransformerUnavailable`` on TransformerLens 4.x, which
    removed it."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:  # pragma: no cover - 4.x
        raise HookedTransformerUnavailable(
            f"HookedTransformer is not available in TransformerLens {tl_version()}; "
            "use a TransformerBridge or a sinkinterp model"
        ) from err
    return HookedTransformer(HookedTransformerConfig(**cfg_kwargs))


def start_at_layer_fn(model: Any) -> Callable[[Any, int, Any], Any] | None:
    """For a ``HookedTransformer`` (TransformerLens 3.x): ``f(tokens, layer, resid) -> logits`` that
    runs the blocks from ``layer`` on, starting from the residual stream ``resid`` entering it
    (TransformerLens' ``start_at_layer``). None for every other model (bridges: ``hf_continuation``) and for
    configurations where the embedding does more than start the residual stream (shortformer
    positions, which are added again in every layer)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # pragma: no cover - 4.x
        return None
    if not isinstance(model, HookedTransformer) or model.cfg.positional_embedding_type == "shortformer":
        return None
    return lambda tokens, layer, resid: model(resid, start_at_layer=layer, tokens=tokens)


CONTINUED_POSITION_TYPES = ("standard", "rotary", "alibi")
# architectures whose attention changes the keys after hook_k, before they enter the key-value cache
# (the QK norm of OLMoE / OLMo 2 / 3): recorded hook_k values are not what the cache must hold
_KEYS_CHANGED_AFTER_HOOK_K = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def _cache_keys_are_hook_k(cfg: Any) -> bool:
    """Whether a HookedTransformer's key-value cache holds its hook_k / hook_v values: not with a QK
    norm (``use_qk_norm``: Gemma 3, Qwen 3; OLMoE, OLMo 2 / 3 by architecture), nor with
    ``clip_qkv`` (OLMo), applied after them."""
    return not (getattr(cfg, "use_qk_norm", False) or getattr(cfg, "clip_qkv", None) is not None
                or getattr(cfg, "original_architecture", None) in _KEYS_CHANGED_AFTER_HOOK_K)


def start_at_pos_fn(model: Any) -> Callable[[int, Any, int, Sequence[tuple[Any, Any]]], Any] | None:
    """For a ``HookedTransformer`` (TransformerLens 3.x): ``f(layer, resid, pos, past) -> logits``
    of positions ``pos``.. only, run from block ``layer`` on ``resid`` (the residual stream of those
    positions entering it), with ``past`` the keys and values of positions ..pos-1 of blocks
    ``layer``.. as hook_k / hook_v record them (before rotation), given to TransformerLens as a frozen
    key-value cache (what its ``generate`` uses). In such a pass every hook sees positions pos..
    only, except hook_rot_k (TransformerLens rotates the cached keys again with the new ones: every
    position) and the [query, key] hooks (every key). None where it does not apply: any other model,
    bidirectional attention, positions other than learned, rotary or ALiBi (shortformer
    positions re-enter every layer), and attention that changes the keys after hook_k (a QK norm,
    ``clip_qkv``: the cache would need the changed keys)."""
    if start_at_layer_fn(model) is None or model.cfg.positional_embedding_type not in CONTINUED_POSITION_TYPES:
        return None
    if model.cfg.attention_dir != "causal" or not _cache_keys_are_hook_k(model.cfg):  # see above
        return None
    import torch

    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry
    except ImportError:  # pragma: no cover - a TransformerLens without this cache
        return None
    n_layers = model.cfg.n_layers

    def run(layer: int, resid: Any, pos: int, past: Sequence[tuple[Any, Any]]) -> Any:
        if len(past) != n_layers - layer:
            raise ValueError(f"past: expected {n_layers - layer} (k, v) pairs (blocks {layer}..), got {len(past)}")
        k0, v0 = past[0]
        unused = [Entry(k0[:, :0], v0[:, :0], frozen=True)] * layer  # blocks before ``layer`` do not run
        cache = TransformerLensKeyValueCache(
            entries=unused + [Entry(k, v, frozen=True) for k, v in past],
            previous_attention_mask=torch.ones(k0.shape[0], pos, dtype=torch.int, device=k0.device), frozen=True)
        return model(resid, start_at_layer=layer, past_kv_cache=cache)

    return run


def wrapped_hf_model(model: Any) -> Any | None:
    """The Hugging Face model a ``TransformerBridge`` wraps (its ``original_model``; calling it runs
    through the bridge's hook points), or None for any other model."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - a TransformerLens without bridges
        return None
    return model.original_model if isinstance(model, TransformerBridge) else None


HFPast = list[tuple[Any, Any]]  # per layer (keys, values) [batch, kv_head, pos, d_head] as the model caches them


class HFRecord:
    """What ``hf_continuation``'s ``run`` keeps of a pass: logits, the per-layer key-value cache
    (None where the model's cache is not one [batch, kv_head, pos, d_head] pair per layer) and each
    block's output."""

    def __init__(self, logits: Any, past: HFPast | None, block_outputs: list[Any]):
        self.logits, self.past, self.block_outputs = logits, past, block_outputs


def _hidden_only(out: Any) -> Any:
    """A block's output as recorded: its hidden states, and None for whatever a tuple holds beside
    them (Bloom, Falcon, MPT and CodeGen return their attention weights, [batch, head, T, T] per
    layer, which the model loop drops unless asked for them; a model that uses them fails the
    caller's check instead of costing that memory)."""
    return (out[0], *([None] * (len(out) - 1))) if isinstance(out, tuple) and out else out


def _cut_block_output(out: Any, pos: int, n: int) -> Any:
    """A recorded block output (``_hidden_only``) for positions pos.. of n stacked copies; ValueError
    where it is not hidden states [batch, pos, d_model]."""
    import torch

    hidden = out[0] if isinstance(out, tuple) else out
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"a block output of shape {getattr(hidden, 'shape', type(hidden))} is not hidden states")
    cut = hidden[:, pos:].repeat(n, 1, 1)
    return (cut, *out[1:]) if isinstance(out, tuple) else cut


def hf_continuation(model: Any) -> tuple[Callable[[Any], HFRecord], Callable[[Any, int, int, HFRecord, int], Any]] | None:
    """For a ``TransformerBridge`` over a decoder-only Hugging Face model: ``(run, cont)``.

    ``run(tokens) -> HFRecord``: one pass through the wrapped model (the bridge's hooks fire as in
    ``model(tokens)``) that also keeps its key-value cache and every block's output.
    ``cont(tokens, layer, pos, record, n) -> logits`` of positions pos.. of n stacked copies of
    ``tokens``: the keys and values of positions ..pos-1 come from the record's cache (Hugging
    Face's own incremental decoding; positions follow from the cache length), and blocks
    ..layer-1 are not run: each returns its recorded output (their hooks do not fire). In such a
    pass the hooks see positions pos.. only (the [query, key] hooks: every key). The record's
    cache keeps every key of every layer, sliding-window layers included (the model's own cache
    would keep only their last keys, too few to continue from an earlier position). Whether a given
    architecture reproduces its full run that way is for the caller to check (``patching`` does,
    once per call). None for any other model."""
    hf = wrapped_hf_model(model)
    if hf is None or getattr(getattr(hf, "config", None), "is_encoder_decoder", False):
        return None
    blocks = list(getattr(model, "blocks", []))

    def run(tokens: Any) -> HFRecord:
        outs: list[Any] = [None] * len(blocks)

        def keep(i: int) -> Any:
            return lambda module, args, out: outs.__setitem__(i, _hidden_only(out))

        handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
        try:  # a cache of full layers: sliding-window layers keep every key too (their mask still applies the window)
            out = hf(input_ids=tokens, use_cache=True, past_key_values=hf_cache([]))
        finally:
            for h in handles:
                h.remove()
        layers = getattr(getattr(out, "past_key_values", None), "layers", None)
        past = None
        if layers and all(getattr(l, "keys", None) is not None and l.keys.dim() == 4 for l in layers):
            past = [(l.keys, l.values) for l in layers]
        return HFRecord(out.logits, past, outs)

    def cont(tokens: Any, layer: int, pos: int, record: HFRecord, n: int) -> Any:
        if pos and record.past is None:
            raise ValueError("pos: this run kept no per-layer key-value cache to continue from")
        if not 0 <= layer <= len(blocks):
            raise ValueError(f"layer: got {layer}, allowed 0..{len(blocks)}")
        cache = hf_cache([(k[:, :, :pos].repeat(n, 1, 1, 1), v[:, :, :pos].repeat(n, 1, 1, 1))
                          for k, v in record.past]) if pos else None
        replayed = [_cut_block_output(record.block_outputs[i], pos, n) for i in range(layer)]
        # an instance attribute shadows the class's forward; set past the bridge's __setattr__, which
        # would hand it on to the Hugging Face layer inside
        for i, out in enumerate(replayed):
            object.__setattr__(blocks[i], "forward", functools.partial(_replay, out))
        try:
            return hf(input_ids=tokens[:, pos:].repeat(n, 1), past_key_values=cache, use_cache=bool(pos)).logits
        finally:
            for i in range(layer):
                object.__delattr__(blocks[i], "forward")

    return run, cont


def unembed_module(model: Any) -> Any | None:
    """The module that turns the final normalized residual stream [batch, pos, d_model] into logits:
    a sinkinterp model's or HookedTransformer's ``unembed``, the output embedding of the Hugging
    Face model a bridge wraps (what its forward calls; GPT-2-style models reshape the hidden states
    after the last block, so a cut must come after that); None when neither is there."""
    import torch

    hf = wrapped_hf_model(model)
    if hf is not None:
        return hf.get_output_embeddings()
    unembed = getattr(model, "unembed", None)
    return unembed if isinstance(unembed, torch.nn.Module) else None


@contextlib.contextmanager
def unembed_positions(model: Any, keep: Sequence[int] | None) -> Iterator[None]:
    """While inside, the model unembeds only positions ``keep`` of what reaches its unembedding
    (a forward pre-hook on ``unembed_module``; a sinkinterp model through its own ``logits_at``),
    so its logits have len(keep) positions; no change for ``keep`` None or a model without a known
    unembedding (the caller checks the shape). A sinkinterp model and a HookedTransformer that a
    pass could continue from a position (``start_at_pos_fn``) also compute their last block for the
    positions from min(keep) on only, where nothing hooks that block or the final norm."""
    import torch

    if keep is not None and hasattr(model, "logits_at"):  # a sinkinterp model: its own, which also cuts the last block
        with model.logits_at(keep):
            yield
        return
    module = None if keep is None else unembed_module(model)
    if module is None:
        yield
        return
    index = torch.tensor(list(keep))
    skipped = [0]  # positions the last block skipped in the current pass

    def cut(mod: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
            return None
        return (args[0][:, (index - skipped[0]).to(args[0].device)], *args[1:])

    handles = [module.register_forward_pre_hook(cut)]
    block_cut = _last_block_cut(model, min(keep), skipped)
    if block_cut is not None:
        handles.append(model.blocks[-1].register_forward_pre_hook(block_cut, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _last_block_cut(model: Any, first: int, skipped: list[int]) -> Callable[..., Any] | None:
    """For a HookedTransformer that a pass could continue from a position: a forward pre-hook
    (with kwargs) on its last block that gives the block the residual stream of positions
    ``first``.. only, the keys and values of the positions before as a frozen key-value cache entry
    (from the block's projections, after any entry the pass already has), and records ``first`` in
    ``skipped[0]`` (0 for a pass it leaves whole: the last block or the final norm hooked, too few
    positions). None for other models, or ``first`` 0."""
    if first == 0 or start_at_pos_fn(model) is None:
        return None
    cfg = model.cfg
    if cfg.use_attn_in or cfg.use_split_qkv_input:  # the block's attention input is per head
        return None
    import torch
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    block = model.blocks[-1]
    watched = [m for part in (block, getattr(model, "ln_final", None)) if part is not None
               for m in part.modules() if isinstance(m, HookPoint)]

    def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        skipped[0] = 0
        resid = args[0] if args else kwargs.get("resid_pre")
        if (not isinstance(resid, torch.Tensor) or resid.dim() != 3 or first >= resid.shape[1]
                or kwargs.get("shortformer_pos_embed") is not None
                or any(hp._forward_hooks or hp._backward_hooks for hp in watched)):
            return None
        x = block.ln1(resid[:, :first])
        _, k, v = block.attn.calculate_qkv_matrices(x, x, x)
        past = kwargs.get("past_kv_cache_entry")
        if past is not None:
            k, v = torch.cat([past.past_keys, k], dim=1), torch.cat([past.past_values, v], dim=1)
        kwargs = dict(kwargs, past_kv_cache_entry=Entry(k, v, frozen=True))
        if args:
            args = (resid[:, first:], *args[1:])
        else:
            kwargs["resid_pre"] = resid[:, first:]
        skipped[0] = first
        return args, kwargs

    return hook


def hf_cache(pairs: Sequence[tuple[Any, Any]]) -> Any:
    """A Hugging Face ``DynamicCache`` holding one (keys, values) pair [batch, kv_head, pos, d_head]
    per layer, in order; every layer a full one (built without the model's config, so no layer
    trims its keys to a sliding window: the model's attention masks apply the window)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(pairs):
        cache.update(k, v, i)
    return cache


def _replay(out: Any, *args: Any, **kwargs: Any) -> Any:
    return out


def hf_rotary_emb(hf_model: Any) -> Any | None:
    """A Hugging Face model's shared rotary embedding, ``rotary_emb(x, position_ids) -> (cos, sin)``
    on its base model (LLaMA, Mistral, Qwen, Gemma, OLMo, Phi-3, StableLM, GPT-NeoX, Falcon ...;
    rotate-half, possibly on the first cos.shape[-1] dimensions only), or None, also for a model
    configured with ALiBi instead (Falcon keeps a ``rotary_emb`` it does not use then)."""
    if getattr(getattr(hf_model, "config", None), "alibi", False):
        return None
    return getattr(getattr(hf_model, "base_model", None), "rotary_emb", None)


def hf_key_rotation(hf_model: Any) -> Callable[[Any, Any], Any] | None:
    """The rotary embedding a Hugging Face model applies to its queries and keys inside its own
    attention code, as ``rotate(x, positions)`` (``x`` [batch, pos, head, d_head] before rotation,
    ``positions`` [pos] integer positions, negative ones turning backwards; returned in x's dtype),
    or None when the model has none this adapter knows: the shared rotate-half ``rotary_emb`` of
    LLaMA-style models (partial rotary included; Cohere's pairs adjacent dimensions), or GPT-J's
    per-attention sin|cos table ``embed_positions`` with adjacent pairs on the first ``rotary_dim``
    dimensions."""
    from sinkinterp.models.attention import rotate_half_partial, rotate_pairs_partial

    rotary_emb = hf_rotary_emb(hf_model)
    if rotary_emb is not None and getattr(hf_model.config, "model_type", "") == "cohere":
        def rotate_adjacent(x: Any, positions: Any) -> Any:  # Cohere: adjacent pairs, angles repeated
            cos, sin = rotary_emb(x, positions[None].to(x.device))
            return rotate_pairs_partial(x, cos[:, :, None], sin[:, :, None])

        return rotate_adjacent
    if rotary_emb is not None:
        def rotate_half(x: Any, positions: Any) -> Any:
            cos, sin = rotary_emb(x, positions[None].to(x.device))  # [1, pos, rotary dims]
            return rotate_half_partial(x, cos[:, :, None], sin[:, :, None])

        return rotate_half
    import torch

    attn = next((m for m in hf_model.modules() if hasattr(m, "rotary_dim")
                 and isinstance(getattr(m, "embed_positions", None), torch.Tensor)), None)
    if attn is None:
        return None
    table = attn.embed_positions  # [max positions, rotary dims]: sin of each pair's angle, then cos

    def rotate_pairs(x: Any, positions: Any) -> Any:
        # a negative position turns backwards: cos(-a) = cos(a), sin(-a) = -sin(a)
        span = positions.abs()
        if span.device.type == "cpu" and int(span.max()) >= table.shape[0]:  # no host sync on a GPU
            raise ValueError(f"positions: {int(span.max())} is beyond the model's rotary table "
                             f"({table.shape[0]} positions)")
        sin, cos = table[span.to(table.device)].double().to(x.device).chunk(2, dim=-1)  # [pos, rotary dims / 2]
        sin = sin * positions.sign().to(sin)[:, None]
        cos, sin = (t.repeat_interleave(2, dim=-1)[None, :, None] for t in (cos, sin))
        return rotate_pairs_partial(x, cos, sin)

    return rotate_pairs


def mlp_out_weight(model: Any, layer: int) -> Any:
    """The MLP output matrix W_out [d_mlp, d_model] of ``blocks[layer]`` (HookedTransformer, a
    TransformerBridge and sinkinterp models all expose it under that name): row i is what neuron i
    (unit i of ``blocks.{layer}.mlp.hook_post``) writes into the residual stream per unit of activation."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be in [0, {len(blocks) if blocks is not None else 0}), got {layer!r}")
    w = getattr(blocks[layer].mlp, "W_out", None)
    if w is None:
        raise TypeError(f"model: blocks[{layer}].mlp has no W_out (a gated or MoE MLP this adapter does not know)")
    return w


def attn_out_weight(model: Any, layer: int) -> Any:
    """Each head's output matrix W_O [n_heads, d_head, d_model] of ``blocks[layer]`` (HookedTransformer, a
    TransformerBridge and sinkinterp models all expose it under that name): head h writes
    ``hook_z[..., h, :] @ W_O[h]`` into the residual stream."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be in [0, {len(blocks) if blocks is not None else 0}), got {layer!r}")
    w = getattr(blocks[layer].attn, "W_O", None)
    if w is None or w.dim() != 3:
        raise TypeError(f"model: blocks[{layer}].attn has no W_O of shape [n_heads, d_head, d_model] "
                        f"(got {None if w is None else tuple(w.shape)})")
    return w


def __getattr__(name: str) -> Any:
    if name == "patching":
        import transformer_lens.patching as _patching

        return _patching
    raise AttributeError(name)
