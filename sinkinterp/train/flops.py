"""Training FLOPs per token and per-GPU peaks, for tokens/s -> MFU.

FLOPs per trained token (forward + backward, the PaLM / nanoGPT convention)::

    6 * N_matmul  +  12 * L * H * d_head * T_eff

* ``N_matmul``: parameters of every weight matrix a token is multiplied by: W_Q, W_K, W_V, W_O
  (and the attention gate), W_in / W_gate / W_out of the FFN, and the unembedding (W_U, or W_E
  when the embeddings are tied). Not counted: the embedding lookup (untied W_E), learned position
  tables, norms, biases, k*/v*, sink parameters. Each such parameter costs 2 FLOPs (multiply + add)
  forward and 4 backward.
* Attention scores and the weighted sum of values: 2 * 2 * d_head * T_eff FLOPs per head and token
  forward, times 3 for forward + backward; ``T_eff = min(T, window)`` for sliding-window models,
  else T. Like nanoGPT and PaLM the full (not causally halved) score matrix is counted.

MFU = tokens/s * FLOPs per token / (peak * world size), against the bf16 dense peak of the GPU
whatever ``dtype`` the run uses (a float32 run therefore reports a low MFU by construction).
On CPU, or a GPU not in the table, MFU is None.
"""

from __future__ import annotations

from sinkinterp.models.config import ModelConfig

__all__ = ["PEAK_FLOPS_BF16", "matmul_params", "flops_per_token", "peak_flops"]

#: dense bf16 tensor-core peak in FLOP/s, matched against torch.cuda.get_device_name() in order
PEAK_FLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),   # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
)


def matmul_params(cfg: ModelConfig) -> int:
    """Number of parameters that take part in a matrix multiply per token (see the module docstring)."""
    d, h, dh, hkv, f = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_kv_heads, cfg.d_ff
    attn = d * h * dh * 2 + d * hkv * dh * 2  # W_Q, W_O; W_K, W_V
    if cfg.attn_gate:
        attn += d * h * dh
    ffn = d * f * (3 if cfg.gated_mlp else 2)
    return cfg.n_layers * (attn + ffn) + d * cfg.d_vocab


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token at sequence length ``seq_len``."""
    t_eff = min(seq_len, cfg.window) if cfg.window is not None else seq_len
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.n_heads * cfg.d_head * t_eff


def peak_flops(device) -> float | None:
    """bf16 dense peak FLOP/s of ``device`` (a torch.device), or None (CPU, unknown GPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS_BF16:
        if key in name:
            return peak
    return None
