"""circuitsvis attention views that work offline, in a saved HTML file, several on one page.

``head_view(model, tokens)`` runs a hooked model on one sequence and returns a standalone page with
one circuitsvis ``AttentionHeads`` view per layer; ``attention_heads_html`` / ``attention_pattern_html``
build one view from a pattern you already have; ``page`` puts views on one page; ``save_html`` writes it.

Why not circuitsvis' own HTML (1.43): three things break it outside a notebook with internet access,
and each is fixed here while keeping circuitsvis' render call (``CircuitsVis.render(id, Element,
props)``), its prop conversion and the JavaScript bundle shipped in its wheel:

* ``str(view)`` (and ``_repr_html_`` when online) imports the bundle from unpkg: blank offline and in
  an archived file. We inline ``circuitsvis/dist/cdn/iife.js`` (~1.3 MB), once per page; the page
  refers to nothing outside itself.
* its ``<div id=... />`` is self-closing, which HTML does not have: the div stays open, the next
  view on the page lands inside it and disappears when the first view renders. We write
  ``<div ...></div>`` with a fresh id per view.
* props are ``json.dumps`` output pasted into a ``<script>``: a token ``</script>`` ends the script
  early (and ``<!--`` changes how the rest is parsed). We write ``<``, ``>`` and ``&`` as ``\\u003c``,
  ``\\u003e``, ``\\u0026`` inside the JSON, so the script receives every token string exactly. The
  attention views draw tokens as canvas text (chart.js axis labels and tooltips), so ``<bos>`` then
  shows as ``<bos>``; HTML-escaping the tokens themselves would show ``&lt;bos&gt;``. circuitsvis
  drops whitespace from axis labels (a newline token shows as its position only); the string in the
  page is still the exact token. Titles, which are HTML, are HTML-escaped.

The bundle itself holds one ``</script>`` inside a string literal, which circuitsvis deletes; we
write it ``<\\/script>`` (the same string for JavaScript, invisible to the HTML parser).

Tests: tests/test_viz.py.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sinkinterp import tl_adapter
from sinkinterp.fileio import atomic_write
from sinkinterp.measure import validate_tokens

__all__ = ["attention_heads_html", "attention_pattern_html", "page", "save_html", "head_view", "SLOT_TOKEN", "DECIMALS"]

#: token string of the bias slot (learned k*/v*, sink token, sink logit) in ``head_view``
SLOT_TOKEN = "<k*>"

#: decimals kept of each attention weight in a page (a page holds L * H * T^2 numbers)
DECIMALS = 6

_VIEW_ID = re.compile(r'<div id="(sinkinterp-view-[0-9a-f]+)"')
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


@functools.cache
def _bundle_tag() -> str:
    """The circuitsvis JavaScript bundle as one classic ``<script>`` element (defines the global
    ``CircuitsVis``). Read once per process."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    js = path.read_text(encoding="utf-8")
    js = re.sub(r"^//# sourceMappingURL=.*$", "", js, flags=re.MULTILINE)  # no fetch of iife.js.map
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    if "<!--" in js:
        raise RuntimeError(f"{path} contains '<!--', which cannot be inlined in a <script> safely; "
                           "this circuitsvis version is not supported by sinkinterp.viz")
    return f'<script data-circuitsvis-bundle="{circuitsvis.__version__}">\n{js}\n</script>\n'


def _script_json(props: dict[str, Any]) -> str:
    """circuitsvis' prop conversion, made safe inside a ``<script>``: ``<``, ``>``, ``&`` can only
    occur inside JSON strings, where their ``\\u`` escapes mean the same characters."""
    from circuitsvis.utils.convert_props import convert_props

    return convert_props(props).translate(_SCRIPT_SAFE)


def _view_body(element: str, props: dict[str, Any], title: str | None) -> str:
    """Heading, an explicitly closed div with a fresh id, and the render call (no bundle)."""
    view_id = f"sinkinterp-view-{uuid.uuid4().hex[:16]}"
    heading = "" if title is None else f'<h3 class="sinkinterp-view-title">{escape(title)}</h3>\n'
    return (
        f"{heading}"
        f'<div id="{view_id}" class="sinkinterp-view" style="margin: 15px 0;"></div>\n'
        f"<script>\nCircuitsVis.render(\"{view_id}\", CircuitsVis.{element}, {_script_json(props)});\n</script>\n"
    )


def _str_list(value: object, name: str, length: int | None = None) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a list of strings, got {type(value).__name__}")
    bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name}: entry {bad[0]} is a {type(value[bad[0]]).__name__}, expected str")
    if length is not None and len(value) != length:
        raise ValueError(f"{name}: expected {length} strings, got {len(value)}")
    return list(value)


def _pattern_array(pattern: object, tokens: list[str], heads_dim: bool) -> np.ndarray:
    """``pattern`` as float64 numpy after checking shape [heads, T, T] (or [T, T]) and finiteness."""
    if isinstance(pattern, Tensor):
        arr = pattern.detach().to("cpu", torch.float64).numpy()
    elif isinstance(pattern, np.ndarray):
        if not (np.issubdtype(pattern.dtype, np.floating) or np.issubdtype(pattern.dtype, np.integer)):
            raise TypeError(f"pattern: expected numbers, got dtype {pattern.dtype}")
        arr = pattern.astype(np.float64)
    else:
        raise TypeError(f"pattern: expected a numpy array or torch tensor, got {type(pattern).__name__}")
    t = len(tokens)
    want = "[heads, T, T]" if heads_dim else "[T, T]"
    ok = arr.ndim == (3 if heads_dim else 2) and arr.shape[-2:] == (t, t) and (not heads_dim or arr.shape[0] >= 1)
    if not ok:
        raise ValueError(f"pattern: expected shape {want} with T = len(tokens) = {t}, got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("pattern: holds NaN or infinite values")
    return arr.round(DECIMALS)


def _checked_tokens(tokens: object) -> list[str]:
    toks = _str_list(tokens, "tokens")
    if not toks:
        raise ValueError("tokens: expected at least one token string, got an empty list")
    return toks


def _heads_body(tokens: object, pattern: object, title: str | None, head_names: object) -> str:
    toks = _checked_tokens(tokens)
    arr = _pattern_array(pattern, toks, heads_dim=True)
    names = None if head_names is None else _str_list(head_names, "head_names", arr.shape[0])
    return _view_body("AttentionHeads", {"attention": arr, "tokens": toks, "attentionHeadNames": names}, title)


def attention_heads_html(tokens: object, pattern: object, *, title: str | None = None,
                         head_names: object = None) -> str:
    """One self-contained HTML fragment (bundle included) of circuitsvis' ``AttentionHeads`` view:
    a thumbnail per head and a zoomed heat map of the selected one.

    Args:
        tokens: the T token strings, shown exactly as given.
        pattern: [heads, T, T] attention weights (numpy or torch; rows = queries), finite.
        title: optional heading above the view.
        head_names: optional list of one name per head (default "Head 0", "Head 1", ...).

    Values are kept to ``DECIMALS`` decimals. Several fragments can go on one page with ``page``,
    which keeps one copy of the bundle.
    """
    return _bundle_tag() + _heads_body(tokens, pattern, title, head_names)


def attention_pattern_html(tokens: object, pattern: object, *, title: str | None = None) -> str:
    """One self-contained HTML fragment of circuitsvis' ``AttentionPattern`` view: a single
    [T, T] heat map (numpy or torch; rows = queries) with token axis labels."""
    toks = _checked_tokens(tokens)
    arr = _pattern_array(pattern, toks, heads_dim=False)
    return _bundle_tag() + _view_body("AttentionPattern", {"attention": arr, "tokens": toks}, title)


def page(views: object, title: str) -> str:
    """A standalone HTML document holding ``views`` (fragments from this module) in order.

    The circuitsvis bundle is inlined once, in the head, whatever the number of views; the page
    loads no external script, stylesheet or font.
    """
    bodies = _str_list(views, "views")
    seen: dict[str, int] = {}
    for i, view in enumerate(bodies):
        for view_id in _VIEW_ID.findall(view):
            if view_id in seen:
                raise ValueError(f"views: view {i} repeats element id {view_id} of view {seen[view_id]}; "
                                 "build each view separately (a page needs one id per view)")
            seen[view_id] = i
    bundle = _bundle_tag()
    body = "\n".join(v.replace(bundle, "") for v in bodies)
    t = escape(title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{t}</title>\n{bundle}</head>\n<body>\n<h1>{t}</h1>\n{body}</body>\n</html>\n"
    )


def save_html(path: str | os.PathLike, html: str) -> Path:
    """Write ``html`` (UTF-8) to ``path`` atomically."""
    data = html.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


# ---- head_view ------------------------------------------------------------------------------------
def _token_ids(tokens_1d: object, d_vocab: int) -> Tensor:
    if isinstance(tokens_1d, (list, tuple)):
        if not all(isinstance(t, (int, np.integer)) for t in tokens_1d):
            raise TypeError("tokens_1d: a list must hold integer token ids")
        tokens_1d = torch.tensor([int(t) for t in tokens_1d], dtype=torch.long)
    if not isinstance(tokens_1d, (Tensor, np.ndarray)):
        raise TypeError("tokens_1d: expected token ids [T] (tensor, numpy array or list), "
                        f"got {type(tokens_1d).__name__}")
    if tokens_1d.ndim != 1:
        raise ValueError(f"tokens_1d: expected one sequence of shape [T], got shape {tuple(tokens_1d.shape)}")
    return validate_tokens(tokens_1d[None], d_vocab, name="tokens_1d")


def _token_strings(ids: list[int], tokenizer: Any, token_strs: object) -> list[str]:
    if token_strs is not None:
        return _str_list(token_strs, "token_strs", len(ids))
    if tokenizer is None:
        return [str(i) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(s) for s in tokenizer.convert_ids_to_tokens(ids)]
    if hasattr(tokenizer, "decode"):
        return [str(tokenizer.decode([i])) for i in ids]
    raise TypeError(f"tokenizer: needs convert_ids_to_tokens or decode, got {type(tokenizer).__name__}")


def _layer_list(layers: object, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers: expected a non-empty list of layer indices in [0, {n_layers - 1}], got {layers!r}")
    for l in layers:
        if not isinstance(l, (int, np.integer)) or isinstance(l, bool) or not 0 <= l < n_layers:
            raise ValueError(f"layers: {l!r} is not a layer index in [0, {n_layers - 1}]")
    return [int(l) for l in layers]


def _with_slot(pattern: Float[Tensor, "head q k"], slot: Float[Tensor, "head q"]) -> Float[Tensor, "head q1 k1"]:
    """[H, T+1, T+1]: row 0 is the slot attending to itself (weight 1), row t+1 is
    [slot share of query t, its weights on the T real tokens]."""
    h, t, _ = pattern.shape
    out = pattern.new_zeros(h, t + 1, t + 1)
    out[:, 0, 0] = 1.0
    out[:, 1:, 0] = slot
    out[:, 1:, 1:] = pattern
    return out


def head_view(model: object, tokens_1d: object, *, layers: object = None, tokenizer: Any = None,
              token_strs: object = None) -> str:
    """A standalone page with one ``AttentionHeads`` view per layer, titled ``layer l``.

    Runs ``model`` (any model with the hook-name contract, docs/hook-contract.md) once on the
    sequence ``tokens_1d`` [T] (used as given: no BOS is added) under ``torch.no_grad`` and in eval
    mode (the previous mode is restored), capturing ``blocks.{l}.attn.hook_pattern`` of the requested
    ``layers`` (default: all). The capture hooks are removed when the call returns, also on error.

    Token strings come from ``token_strs`` if given, else ``tokenizer`` (``convert_ids_to_tokens``,
    or ``decode`` per id), else the ids themselves.

    Models with a bias slot (``blocks.{l}.attn.hook_bias_pattern`` [batch, head, query]: learned
    k*/v*, sink token, sink logit) get the slot as an extra leading token ``SLOT_TOKEN`` ("<k*>"):
    circuitsvis needs square patterns, so each head shows [T+1, T+1] where row 0 is the slot
    attending to itself (weight 1, a display convention) and row t+1 holds query t's weight on the
    slot followed by its weights on the T tokens (a softmax row then sums to 1). Positions shown in
    labels are then shifted by one.
    """
    dims = tl_adapter.model_dims(model)
    names = set(tl_adapter.hook_names(model))
    tokens = _token_ids(tokens_1d, dims["d_vocab"])
    n_ctx = dims["n_ctx"]
    if n_ctx and tokens.shape[1] > n_ctx:
        raise ValueError(f"tokens_1d: {tokens.shape[1]} tokens exceed the model's context length n_ctx={n_ctx}")
    layer_ids = _layer_list(layers, dims["n_layers"])
    ids = tokens[0].tolist()
    strs = _token_strings(ids, tokenizer, token_strs)
    for l in layer_ids:
        if f"blocks.{l}.attn.hook_pattern" not in names:
            raise ValueError(f"model has no hook blocks.{l}.attn.hook_pattern (see docs/hook-contract.md)")

    captured: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any, key: str) -> None:
        captured[key] = x[0].detach().to("cpu", torch.float64)

    hooks = []
    for l in layer_ids:
        for kind in ("hook_pattern", "hook_bias_pattern"):
            name = f"blocks.{l}.attn.{kind}"
            if name in names:
                hooks.append((name, functools.partial(capture, key=name)))
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
            model(tokens.to(device))
    finally:
        model.train(was_training)

    views = []
    for l in layer_ids:
        name = f"blocks.{l}.attn.hook_pattern"
        if name not in captured:
            raise RuntimeError(f"{name} never fired: the model does not follow docs/hook-contract.md")
        pattern, slot = captured[name], captured.get(f"blocks.{l}.attn.hook_bias_pattern")
        if slot is None:
            views.append(_heads_body(strs, pattern, f"layer {l}", None))
        else:
            views.append(_heads_body([SLOT_TOKEN, *strs], _with_slot(pattern, slot), f"layer {l}", None))
    return page(views, f"attention heads · {type(model).__name__} · T={len(ids)}")
