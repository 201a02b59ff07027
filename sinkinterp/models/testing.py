"""Tiny configurations of every model variant, for tests (ours and other modules').

``tiny_config(**overrides)`` is a 2-layer, d_model 32, 4-head model with a large init (0.3) so
attention patterns are far from uniform; ``VARIANTS`` names one override dict per option and a
few combinations (bias slot x positional scheme x attention op). ``tiny_model(name)`` builds one in
float64 with the sink logits drawn away from zero.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import ModelConfig
from .model import SinkTransformer

__all__ = ["tiny_config", "tiny_model", "VARIANTS", "SLOT_VARIANTS"]


def tiny_config(**overrides: Any) -> ModelConfig:
    base: dict[str, Any] = dict(
        n_layers=2, d_model=32, n_heads=4, d_ff=48, d_vocab=50, n_ctx=32, init_std=0.3, seed=1
    )
    base.update(overrides)
    return ModelConfig(**base)


VARIANTS: dict[str, dict[str, Any]] = {
    # positions
    "rotary": {},
    "nope": dict(pos_emb="none"),
    "sinusoidal": dict(pos_emb="sinusoidal"),
    "learned": dict(pos_emb="learned"),
    "alibi": dict(pos_emb="alibi"),
    "alibi_6heads": dict(pos_emb="alibi", n_heads=6, d_model=36),
    "relative": dict(pos_emb="relative", relative_num_buckets=8, relative_max_distance=12),
    # block
    "post_norm": dict(norm_placement="post"),
    "layernorm": dict(norm_type="layernorm"),
    "geglu": dict(ffn="geglu"),
    "reglu": dict(ffn="reglu"),
    "gelu": dict(ffn="gelu"),
    "relu": dict(ffn="relu"),
    "tied": dict(tie_embeddings=True),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    # attention operations
    "softmax_scaled_2": dict(attn_op="softmax_scaled", softmax_alpha=2.0),
    "softmax_scaled_0.1": dict(attn_op="softmax_scaled", softmax_alpha=0.1),
    "sigmoid": dict(attn_op="sigmoid"),
    "sigmoid_logn": dict(attn_op="sigmoid", sigmoid_bias="-log n"),
    "sigmoid_norm": dict(attn_op="sigmoid_norm"),
    "elu1": dict(attn_op="elu1"),
    "elu1_norm": dict(attn_op="elu1_norm"),
    "linear_elu": dict(attn_op="linear_elu"),
    "linear_identity": dict(attn_op="linear_identity"),
    "gated": dict(attn_gate=True),
    # attention biases
    "kv": dict(attn_bias="kv"),
    "k": dict(attn_bias="k"),
    "v": dict(attn_bias="v"),
    "kv_shared": dict(attn_bias="kv", attn_bias_shared=True),
    "v_shared": dict(attn_bias="v", attn_bias_shared=True),
    "sink_token": dict(attn_bias="sink_token"),
    "sink_logit": dict(attn_bias="sink_logit"),
    "sink_logit_shared": dict(attn_bias="sink_logit", attn_bias_shared=True),
    "sink_logit_fixed": dict(attn_bias="sink_logit", sink_logit_fixed=0.0),
    "kv_removed_v": dict(attn_bias="kv", attn_bias_removed="v"),
    # masks
    "window": dict(window=4),
    "prefix": dict(prefix_len=5),
    # combinations
    "gqa_kv": dict(n_kv_heads=2, attn_bias="kv"),
    "mqa_sink_token": dict(n_kv_heads=1, attn_bias="sink_token"),
    "kv_alibi": dict(attn_bias="kv", pos_emb="alibi"),
    "sink_token_alibi": dict(attn_bias="sink_token", pos_emb="alibi"),
    "sink_token_relative": dict(
        attn_bias="sink_token", pos_emb="relative", relative_num_buckets=8, relative_max_distance=12
    ),
    "sink_token_post_gated": dict(attn_bias="sink_token", norm_placement="post", attn_gate=True),
    "sink_token_sigmoid_norm": dict(attn_bias="sink_token", attn_op="sigmoid_norm"),
    "sink_token_linear_identity": dict(attn_bias="sink_token", attn_op="linear_identity"),
    "sink_logit_window": dict(attn_bias="sink_logit", window=3),
    "sink_logit_scaled": dict(attn_bias="sink_logit", attn_op="softmax_scaled", softmax_alpha=0.5),
    "sink_logit_sigmoid_norm": dict(attn_bias="sink_logit", attn_op="sigmoid_norm"),
    "kv_sigmoid": dict(attn_bias="kv", attn_op="sigmoid"),
    "k_elu1_norm": dict(attn_bias="k", attn_op="elu1_norm"),
    "kv_linear_elu": dict(attn_bias="kv", attn_op="linear_elu"),
    "kv_window_prefix": dict(attn_bias="kv", window=3, prefix_len=4),
    "prefix_relative": dict(prefix_len=5, pos_emb="relative"),
    "window_alibi_sigmoid": dict(window=4, pos_emb="alibi", attn_op="sigmoid"),
}

#: variants whose attention has a bias slot (and so a hook_bias_pattern)
SLOT_VARIANTS = [n for n, o in VARIANTS.items() if tiny_config(**o).has_slot]


def tiny_model(name_or_overrides: str | dict[str, Any], dtype: torch.dtype = torch.float64) -> SinkTransformer:
    overrides = VARIANTS[name_or_overrides] if isinstance(name_or_overrides, str) else name_or_overrides
    model = SinkTransformer(tiny_config(**overrides)).to(dtype)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sink_logit"):  # zero at init; make the slot matter
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model
