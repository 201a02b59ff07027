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
import importlib.metadata
import os
from collections.abc import Callable, Iterator, Sequence
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
    "attached_hooks",
    "count_attached_hooks",
    "model_dims",
    "boot_bridge",
    "hooked_transformer_from_config",
    "wrapped_hf_model",
    "mlp_out_weight",
    "patching",
]

HookFn = Callable[..., Any]


def tl_version() -> str:
    """The installed TransformerLens version string."""
    return importlib.metadata.version("transformer-lens")


def hook_names(model: Any) -> list[str]:
    """All hook names a model answers to (canonical names and aliases)."""
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise TypeError(
            f"model: expected a hooked model (HookedTransformer, TransformerBridge or a sinkinterp "
            f"model) with a `hook_dict`, got {type(model).__name__}"
        )
    return list(hook_dict.keys())


def has_hook(model: Any, name: str) -> bool:
    return name in model.hook_dict


@contextlib.contextmanager
def attached_hooks(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[Any]:
    """Attach forward hooks for the duration of a ``with`` block.

    Uses the model's own ``hooks`` context manager (HookedRootModule and TransformerBridge
    both have one), which removes exactly the hooks it added, also when the block raises.
    Hooks the user attached beforehand stay.
    """
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model


def count_attached_hooks(model: Any) -> int:
    """Number of forward and backward hook functions currently attached to any hook point."""
    total = 0
    seen: set[int] = set()
    for hp in model.hook_dict.values():
        if id(hp) in seen:  # aliases point at the same HookPoint
            continue
        seen.add(id(hp))
        total += len(getattr(hp, "fwd_hooks", [])) + len(getattr(hp, "bwd_hooks", []))
    return total


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


def boot_bridge(hf_model: Any, tokenizer: Any, name: str, device: str = "cpu") -> Any:
    """Wrap an already-loaded Hugging Face causal LM in a TransformerBridge, offline.

    ``hf_model`` must have been loaded with ``attn_implementation="eager"`` so attention
    probabilities exist to hook. No weight processing is applied: norms are the model's own.
    """
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        name,
        hf_model=hf_model,
        tokenizer=_tokenizer_for_bridge(tokenizer, name),
        device=device,
        dtype=next(hf_model.parameters()).dtype,
    )


def hooked_transformer_from_config(**cfg_kwargs: Any) -> Any:
    """A randomly initialised ``HookedTransformer`` (TransformerLens 3.x only): for tests and users
    who already work with one. Raises a clear error on TransformerLens 4.x, which removed it."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:  # pragma: no cover - 4.x
        raise RuntimeError(
            f"HookedTransformer is not available in TransformerLens {tl_version()}; "
            "use a TransformerBridge or a sinkinterp model"
        ) from err
    return HookedTransformer(HookedTransformerConfig(**cfg_kwargs))


def start_at_layer_fn(model: Any) -> Callable[[Any, int, Any], Any] | None:
    """For a ``HookedTransformer`` (TransformerLens 3.x): ``f(tokens, layer, resid) -> logits`` that
    runs the blocks from ``layer`` on, starting from the residual stream ``resid`` entering it
    (TransformerLens' ``start_at_layer``). None for every other model (bridges run in full) and for
    configurations where the embedding does more than start the residual stream (shortformer
    positions, which are added again in every layer)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # pragma: no cover - 4.x
        return None
    if not isinstance(model, HookedTransformer) or model.cfg.positional_embedding_type == "shortformer":
        return None
    return lambda tokens, layer, resid: model(resid, start_at_layer=layer, tokens=tokens)


def wrapped_hf_model(model: Any) -> Any | None:
    """The Hugging Face model a ``TransformerBridge`` wraps (its ``original_model``; calling it runs
    through the bridge's hook points), or None for any other model."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - a TransformerLens without bridges
        return None
    return model.original_model if isinstance(model, TransformerBridge) else None


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


def __getattr__(name: str) -> Any:
    if name == "patching":
        import transformer_lens.patching as _patching

        return _patching
    raise AttributeError(name)
