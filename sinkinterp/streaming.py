"""Reading a stream longer than the model's context through a bounded cache (StreamingLLM, Xiao et al.
2024): the per-token loss when each query sees the first ``n_sink`` tokens of the stream plus its last
``window`` tokens (itself included), with two ways of filling that cache.

``policy="rolling"`` (StreamingLLM): a token's keys and values are computed once, when it is read,
and kept while it stays in the cache; the oldest non-sink entry is evicted as each new token arrives.
A cached entry was therefore computed with the context it had then, which the stream has since
forgotten. ``positions`` says where the attention places the cached keys:

* ``"cache"``: re-numbered inside the cache, as StreamingLLM does: the kept first tokens at 0..K-1,
  the window after them, the query last. Keys are cached before the rotary rotation and rotated at
  their cache position at every step; ALiBi and relative buckets see cache distances. The model
  never sees a position past ``n_sink + window - 1``, so the stream can be any length.
* ``"original"`` (rotary models only): every key keeps its distance to the query in the stream, so
  the kept first tokens drift ever farther away, past anything seen in training: the variant
  StreamingLLM reports as failing. The query is rotated at its cache position and the keys by the
  same shift, which preserves every distance; not for a k*/v* slot or a sink token, whose keys
  are not shifted with the others. For a stream no longer than ``n_ctx`` this is exactly
  ``interventions.window_cache(window, n_sink)`` (tested).

``policy="recompute"``: sliding window with re-computation, the quality ceiling of a bounded
context (StreamingLLM's oracle baseline): each prediction re-reads its context (the first ``n_sink``
tokens, then the last ``window``) from scratch at positions 0.. . Any hooked model (a plain forward
per context, batched), at ``window`` times the cost.

The rolling cache runs on Hugging Face models with rotate-half RoPE from their base model's shared
``rotary_emb``, full or partial (LLaMA, Mistral, Qwen 2/3, Gemma, OLMo, Phi-3, StableLM, GPT-NeoX /
Pythia, Falcon; SmolLM2 included) or GPT-J's sin|cos table (``tl_adapter.hf_key_rotation``), and on
Bloom, MPT and Falcon with ALiBi (Falcon-RW), loaded through ``TransformerBridge`` (``sinkinterp.loading``): the model's
own key/value cache, rotary keys re-rotated by -1 position when an entry before them is evicted (checked once
against the model's own rotation; an ALiBi model's keys carry no position and it builds its bias from the
cache length, so its keys sit at their cache index unturned, and only ``positions="cache"`` applies); and on sinkinterp models (``SinkTransformer.forward``'s
``start_at_pos`` / ``past_kv`` continuation, one token a step), without learned or sinusoidal position embeddings (a
cached state would keep the absolute position it was read at, while new tokens get cache positions)
or a prefix LM. A learnable sink token (``attn_bias="sink_token"``, StreamingLLM's own proposal) is
not a cache entry: it stays at position -1, as in training. The model's own ``window`` (if
any) applies to cache positions, and a sigmoid bias of ``-log n`` uses the number of keys the query
sees (the cache), not the stream length.

``first_attention``: for the rolling policy, the mean attention weight ([layer, head]) that the
query puts on the first ``max(n_sink, 1)`` cache entries (the kept tokens; with ``n_sink=0``
the oldest window entry), over the steps whose cache is full: does the model keep dumping attention
on whatever is first?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sinkinterp import patching, tl_adapter
from sinkinterp.models.attention import apply_rotary, rotary_cos_sin

POLICIES = ("rolling", "recompute")
POSITIONS = ("cache", "original")


@dataclass
class StreamResult:
    """``nll[:, t]``: -log p(token t+1 | what the cache holds at step t), float64 [batch, L - 1]."""

    nll: Float[Tensor, "batch target"]
    first_attention: Float[Tensor, "layer head"] | None
    params: dict[str, Any] = field(default_factory=dict)

    def mean_nll(self, start: int = 0, stop: int | None = None) -> float:
        """Mean over the targets at stream positions ``start + 1 .. stop`` (nll columns start..stop-1)."""
        return float(self.nll[:, start:stop].mean())


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_tokens(tokens: Any, vocab: int) -> Tensor:
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2 or tokens.is_floating_point() or tokens.shape[1] < 2:
        raise ValueError(f"tokens: expected integer ids [batch, length >= 2], got shape {tuple(tokens.shape)} "
                         f"and dtype {tokens.dtype}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"tokens: ids must lie in [0, {vocab - 1}]")
    return tokens.long()


def stream_loss(
    model: Any,
    tokens: Any,
    *,
    window: int,
    n_sink: int = 0,
    policy: str = "rolling",
    positions: str = "cache",
    batch_size: int = 8,
    first_attention: bool = True,
    progress: bool = False,
) -> StreamResult:
    """Per-token loss of ``model`` reading each row of ``tokens`` (integer ids [batch, length]) as a
    stream through a cache of the first ``n_sink`` tokens plus the last ``window`` (module
    docstring). Rows are independent streams. ``progress``: a progress bar over the rolling
    policy's steps (on stderr)."""
    window = _int("window", window, 1)
    n_sink = _int("n_sink", n_sink, 0)
    batch_size = _int("batch_size", batch_size, 1)
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {list(POLICIES)}, got {policy!r}")
    if positions not in POSITIONS:
        raise ValueError(f"positions: expected one of {list(POSITIONS)}, got {positions!r}")
    dims = tl_adapter.model_dims(model)
    tokens = _check_tokens(tokens, dims["d_vocab"])
    n_ctx = dims["n_ctx"]
    if n_ctx and n_sink + window > n_ctx:
        raise ValueError(f"window + n_sink: the cache ({window} + {n_sink}) must fit the model's n_ctx={n_ctx}")
    params = {"window": window, "n_sink": n_sink, "policy": policy, "positions": positions,
              "length": int(tokens.shape[1]), "num_seqs": int(tokens.shape[0])}
    with patching._eval_mode(model), torch.no_grad():
        if policy == "recompute":
            if positions != "cache":
                raise ValueError("positions: the recompute policy reads every context from position 0; "
                                 "only positions='cache' applies")
            nll = torch.cat([_recompute(model, tokens[i:i + batch_size], window, n_sink)
                             for i in range(0, tokens.shape[0], batch_size)])
            return StreamResult(nll, None, params)
        hf = tl_adapter.wrapped_hf_model(model)
        if hf is not None:
            _check_rolling_hf(hf, positions)
            run = _rolling_hf
        else:
            _check_rolling(model, positions)
            run = _rolling
        label = f"stream {window}+{n_sink}" + (",original" if positions == "original" else "") if progress else None
        parts = [run(model, tokens[i:i + batch_size], window, n_sink, positions, first_attention, label)
                 for i in range(0, tokens.shape[0], batch_size)]
    nll = torch.cat([p[0] for p in parts])
    att = None
    if first_attention and parts[0][1] is not None:  # weighted by the rows of each batch
        att = sum(p[1] * p[2] for p in parts) / sum(p[2] for p in parts)
    return StreamResult(nll, att, params)


def _last_nll(logits: Tensor, target: Tensor) -> Tensor:
    lp = logits.double().log_softmax(-1)
    return -lp.gather(-1, target[:, None])[:, 0]


# ------------------------------------------------------------------------------- recompute
def _recompute(model: Any, tokens: Tensor, window: int, n_sink: int) -> Tensor:
    device = patching._model_device(model)
    tokens = tokens.to(device)
    b, length = tokens.shape
    cap = n_sink + window  # context length of every prediction once the stream is longer
    head = min(cap, length)
    # targets 1..head-1: the whole stream so far fits the cache, one causal pass
    out = [patching.per_token_loss(model(tokens[:, :head]), tokens[:, :head]).double()]
    if length > cap:
        # target t+1 for t = cap-1..length-2: first n_sink tokens + tokens t-window+1..t
        recent = tokens.unfold(1, window, 1)[:, n_sink: length - window]  # [b, n_t, window]
        n_t = recent.shape[1]
        ctx = torch.cat([tokens[:, None, :n_sink].expand(b, n_t, n_sink), recent], dim=2).reshape(b * n_t, cap)
        target = tokens[:, cap:].reshape(-1)
        rows = []
        step = 256
        for i in range(0, ctx.shape[0], step):
            rows.append(_last_nll(model(ctx[i:i + step])[:, -1], target[i:i + step]))
        out.append(torch.cat(rows).view(b, n_t))
    return torch.cat(out, dim=1).cpu()


# ------------------------------------------------------------------------------- rolling
def _check_rolling(model: Any, positions: str) -> None:
    from sinkinterp.models import SinkTransformer

    if not isinstance(model, SinkTransformer):
        raise TypeError(f"model: the rolling cache needs a sinkinterp model (SinkTransformer) or a Hugging Face "
                        f"model in a TransformerBridge, got {type(model).__name__}; policy='recompute' runs on "
                        "any hooked model")
    cfg = model.cfg
    if cfg.pos_emb in ("learned", "sinusoidal"):
        raise ValueError(f"model: pos_emb={cfg.pos_emb!r} is added to the input, so a cached state keeps the "
                         "position it was read at; the rolling cache supports rotary, alibi, relative and none "
                         "(policy='recompute' works)")
    if cfg.prefix_len > 1 or not model.can_start_at_pos(1, layer=0):
        raise ValueError(f"model: the rolling cache does not apply here (prefix_len={cfg.prefix_len}, "
                         f"backend {model.attn_backend!r}); see SinkTransformer.can_start_at_pos")
    if positions == "original" and cfg.pos_emb != "rotary":
        raise ValueError(f"positions: 'original' is for rotary models (a key rotated at any position); "
                         f"this model has pos_emb={cfg.pos_emb!r}")
    if positions == "original" and cfg.attn_bias in ("kv", "k", "sink_token") and cfg.has_slot:
        raise ValueError("positions: 'original' keeps distances by rotating the query at its cache position, "
                         f"but the slot's key (attn_bias={cfg.attn_bias!r}) is not shifted with the others, so "
                         "its score would follow the query's cache position; use positions='cache'")


def _steps(length: int, label: str | None) -> Any:
    """range(length - 1), the rolling policy's steps, behind a progress bar named ``label``."""
    steps = range(length - 1)
    if label is None:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=label, unit="token", mininterval=5.0)


def _rolling(model: Any, tokens: Tensor, window: int, n_sink: int, positions: str,
             want_attention: bool, progress: str | None = None) -> tuple[Tensor, Tensor | None, int]:
    cfg = model.cfg
    device = patching._model_device(model)
    tokens = tokens.to(device)
    b, length = tokens.shape
    n_layers, cap = cfg.n_layers, n_sink + window
    rotary = cfg.pos_emb == "rotary"
    pdtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)

    new: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> None:
        new[hook.name] = act

    n_first = max(n_sink, 1)
    att_sum = torch.zeros(n_layers, cfg.n_heads, dtype=torch.float64, device=device)
    att_steps = 0
    hooks = [(f"blocks.{l}.attn.hook_{x}", keep) for l in range(n_layers) for x in ("k", "v")]
    # the read-only column hooks carry the first keys' weights without materializing the pattern
    # (attention stays in the fused kernels); the full pattern only when more columns are needed
    pattern = "hook_pattern_cols" if n_first <= model.pattern_cols else "hook_pattern"
    if want_attention:
        hooks += [(f"blocks.{l}.attn.{pattern}", keep) for l in range(n_layers)]

    k_cache: list[Tensor] = []  # per layer [b, c, kv_head, d_head], keys before rotation
    v_cache: list[Tensor] = []
    where: list[int] = []  # stream position of each cache entry
    nll = torch.empty(b, length - 1, dtype=torch.float64, device=device)  # one host copy at the end
    with tl_adapter.attached_hooks(model, hooks):
        for t in _steps(length, progress):
            c = len(where)
            if c == 0:
                logits = model(tokens[:, t:t + 1])
            else:
                if rotary:
                    key_pos = (torch.arange(c) if positions == "cache"
                               else torch.tensor(where) - t + c)  # distance t - s kept, query rotated at c
                    cos, sin = rotary_cos_sin(key_pos.to(device), cfg.d_head, cfg.rotary_base, pdtype)
                    past = [(apply_rotary(k_cache[l], cos, sin), v_cache[l]) for l in range(n_layers)]
                else:
                    past = list(zip(k_cache, v_cache))
                resid = model.embed(tokens[:, t:t + 1])
                dummy = tokens.new_zeros(b, c + 1)
                logits = model(dummy, start_at_layer=0, resid=resid, start_at_pos=c, past_kv=past)
            nll[:, t] = _last_nll(logits[:, -1], tokens[:, t + 1])
            if want_attention and c + 1 == cap:
                for l in range(n_layers):
                    pat = new[f"blocks.{l}.attn.{pattern}"][:, :, -1, :n_first]  # [b, head, n_first]
                    att_sum[l] += pat.double().sum(-1).mean(0)
                att_steps += 1
            for l in range(n_layers):
                k_new, v_new = new[f"blocks.{l}.attn.hook_k"], new[f"blocks.{l}.attn.hook_v"]
                if c == 0:
                    k_cache.append(k_new)
                    v_cache.append(v_new)
                else:
                    k_cache[l] = torch.cat([k_cache[l], k_new], dim=1)
                    v_cache[l] = torch.cat([v_cache[l], v_new], dim=1)
            where.append(t)
            if len(where) > cap - 1:  # the next query needs the kept tokens + its last window - 1
                drop = n_sink
                where.pop(drop)
                if len(where) == 0:
                    k_cache, v_cache = [], []
                else:
                    k_cache = [torch.cat([k[:, :drop], k[:, drop + 1:]], dim=1) for k in k_cache]
                    v_cache = [torch.cat([v[:, :drop], v[:, drop + 1:]], dim=1) for v in v_cache]
    att = (att_sum / att_steps).cpu() if want_attention and att_steps else None
    return nll.cpu(), att, b


# ------------------------------------------------------------------------------- Hugging Face
def _hf_position_scheme(hf: Any) -> str | None:
    """"rotary" (cached keys carry their rotation; ``tl_adapter.hf_key_rotation`` turns them), "alibi"
    (Bloom, MPT, Falcon with ALiBi: keys carry no position, the model adds slope x cache index to the
    scores, so the cache positions come for free), or None."""
    if tl_adapter.hf_key_rotation(hf) is not None:
        return "rotary"
    mtype = getattr(hf.config, "model_type", None)
    if mtype in ("bloom", "mpt") or (mtype == "falcon" and getattr(hf.config, "alibi", False)):
        return "alibi"
    return None


def _check_rolling_hf(hf: Any, positions: str) -> None:
    mtype = getattr(hf.config, "model_type", None)
    scheme = _hf_position_scheme(hf)
    if scheme is None:
        raise ValueError(f"model: the rolling cache on a Hugging Face model needs a rotary embedding sinkinterp "
                         f"can turn cached keys with (a base model's rotate-half rotary_emb: LLaMA, Mistral, Qwen, "
                         f"Gemma, OLMo, Phi-3, StableLM, GPT-NeoX, Falcon ...; GPT-J's table) or ALiBi (Bloom, MPT, Falcon-RW), "
                         f"got {mtype!r}; policy='recompute' works")
    if scheme == "alibi" and positions != "cache":
        raise ValueError("positions: an ALiBi model's rolling cache places keys at their cache index (the model "
                         "builds its bias from the cache length); only positions='cache' applies")
    if getattr(hf.config, "sliding_window", None) and getattr(hf.config, "use_sliding_window", True):
        raise ValueError("model: Hugging Face sliding-window attention has its own cache; policy='recompute' works")


def _hf_shift(rotate: Any, keys: Tensor, delta: int) -> Tensor:
    """Keys [batch, kv_head, pos, d_head] after RoPE, moved by ``delta`` positions (rotations add),
    with ``rotate``, the model's own rotary embedding (``tl_adapter.hf_key_rotation``, looked up once
    per stream; partial rotary included)."""
    if keys.shape[2] == 0 or delta == 0:
        return keys
    k = keys.to(torch.promote_types(keys.dtype, torch.float32)).transpose(1, 2)  # [b, pos, kv_head, d]
    turned = rotate(k, torch.full((k.shape[1],), delta, device=keys.device))
    return turned.transpose(1, 2).to(keys.dtype)


def _hf_step(hf: Any, token: Tensor, cache: list[tuple[Tensor, Tensor]], position: int | None) -> Any:
    """One token through the model on top of ``cache``, at ``position`` (None: the model places it
    itself after the cache, as ALiBi models do)."""
    pkv = tl_adapter.hf_cache(cache) if cache else None
    if position is None:
        return hf(input_ids=token, past_key_values=pkv, use_cache=True)
    pos = torch.tensor([[position]], device=token.device).expand(token.shape[0], 1)
    return hf(input_ids=token, past_key_values=pkv, position_ids=pos, use_cache=True)


def _check_hf_rotation(hf: Any, rotate: Any, token: Tensor) -> None:
    """In every layer, the cached key of a token read at position 5 equals the one read at 0 moved by
    5 (a model whose layers rotate differently, e.g. local and global bases, fails here)."""
    at0 = _hf_step(hf, token, [], 0).past_key_values.layers
    at5 = _hf_step(hf, token, [], 5).past_key_values.layers
    for layer, (c0, c5) in enumerate(zip(at0, at5)):
        k0, k5 = c0.keys, c5.keys
        if not torch.allclose(_hf_shift(rotate, k0, 5).double(), k5.double(), atol=1e-4 * (1 + float(k5.abs().max()))):
            raise RuntimeError(f"model: layer {layer}'s cached keys are not its rotary embedding's rotation of the "
                               "keys; the rolling cache cannot re-number positions (policy='recompute' works)")


def _rolling_hf(model: Any, tokens: Tensor, window: int, n_sink: int, positions: str,
                want_attention: bool, progress: str | None = None) -> tuple[Tensor, Tensor | None, int]:
    hf = tl_adapter.wrapped_hf_model(model)
    dims = tl_adapter.model_dims(model)
    device = patching._model_device(model)
    tokens = tokens.to(device)
    b, length = tokens.shape
    n_layers, cap = dims["n_layers"], n_sink + window
    rotate = tl_adapter.hf_key_rotation(hf)  # None for ALiBi (Bloom, MPT, Falcon-RW): keys are not turned
    rotary = rotate is not None
    if rotary:
        _check_hf_rotation(hf, rotate, tokens[:1, :1])
    seen: dict[str, Tensor] = {}
    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda act, hook: seen.__setitem__(hook.name, act))
             for l in range(n_layers)] if want_attention else []
    n_first = max(n_sink, 1)
    att_sum = torch.zeros(n_layers, dims["n_heads"], dtype=torch.float64, device=device)
    att_steps = 0
    cache: list[tuple[Tensor, Tensor]] = []  # per layer (keys after RoPE, values) [b, kv_head, c, d_head]
    nll = torch.empty(b, length - 1, dtype=torch.float64, device=device)  # one host copy at the end
    with tl_adapter.attached_hooks(model, hooks):
        for t in _steps(length, progress):
            c = cache[0][0].shape[2] if cache else 0
            position = (c if positions == "cache" else t) if rotary else None  # ALiBi: the model places it
            out = _hf_step(hf, tokens[:, t:t + 1], cache, position)
            nll[:, t] = _last_nll(out.logits[:, -1], tokens[:, t + 1])
            if want_attention and c + 1 == cap:
                for l in range(n_layers):
                    pat = seen[f"blocks.{l}.attn.hook_pattern"][:, :, -1, :n_first]
                    att_sum[l] += pat.double().sum(-1).mean(0)
                att_steps += 1
            new = out.past_key_values
            cache = [(new.layers[l].keys, new.layers[l].values) for l in range(n_layers)]
            if c + 1 > cap - 1:  # evict the oldest non-kept entry; later keys move down one position
                d = n_sink
                shift = -1 if positions == "cache" and rotary else 0
                cache = [(torch.cat([k[:, :, :d], _hf_shift(rotate, k[:, :, d + 1:], shift)], dim=2),
                          torch.cat([v[:, :, :d], v[:, :, d + 1:]], dim=2)) for k, v in cache]
                if cache[0][0].shape[2] == 0:
                    cache = []
    att = (att_sum / att_steps).cpu() if want_attention and att_steps else None
    return nll.cpu(), att, b
