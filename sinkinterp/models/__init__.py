"""sinkinterp's own trainable models: one transformer whose variants are config fields.

Public API::

    ModelConfig(**fields)                       # frozen, validated; to_dict() / from_dict() / replace()
    SinkTransformer(cfg, device=None, dtype=None)
        .forward(tokens, return_type="logits" | "loss" | "both" | None, loss_mask=None)
        .set_attn_backend("auto" | "reference" | "flex")
        .pattern_cols                           # key columns of the read-only hook_pattern_cols
        .cfg                                    # the ModelConfig (with TransformerLens-style aliases)
    remove_attention_bias(model, which="kv" | "k" | "v" | "sink") -> SinkTransformer   # a copy
    save_checkpoint(directory, model, extra=None, storage_dtype=None) -> Path
    load_checkpoint(directory, device="cpu", dtype=None) -> SinkTransformer
    read_checkpoint_info(directory) -> dict     # config.json (extra: step, data position ...)

Variants (``ModelConfig`` fields): positions ``pos_emb`` (none / sinusoidal / learned / rotary /
alibi / relative), ``norm_placement`` (pre / post), ``norm_type`` (rmsnorm / layernorm), ``ffn``
(swiglu / geglu / reglu / gelu / relu), ``attn_op`` (softmax / softmax_scaled / sigmoid /
sigmoid_norm / elu1 / elu1_norm / linear_elu / linear_identity), ``attn_gate``, ``attn_bias``
(none / kv / k / v / sink_token / sink_logit, ``attn_bias_shared``; ``sink_logit_fixed`` holds the sink
logit instead of learning it, 0.0 = softmax-off-by-one; ``sink_logit_init`` starts a learned one elsewhere
than 0), ``window``, ``prefix_len``,
grouped-query attention (``n_kv_heads``), ``tie_embeddings``.

Hook names follow TransformerLens and ``docs/hook-contract.md``; bias-slot models (kv, k,
sink_token, sink_logit) also have ``blocks.{l}.attn.hook_bias_pattern``. Every model has the
read-only ``hook_pattern_cols`` (and ``hook_bias_col`` with a slot) and ``hook_pattern_colsum``, which keep
the fused kernels. Code: ``config.py``
(fields), ``attention.py`` (attention variants, fast and observed paths), ``model.py`` (the rest),
``checkpoint.py``. Tests: ``tests/test_models_*.py``.
"""

from .checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from .config import ModelConfig
from .model import SinkTransformer, next_token_loss, remove_attention_bias

__all__ = [
    "ModelConfig",
    "SinkTransformer",
    "remove_attention_bias",
    "next_token_loss",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
]
