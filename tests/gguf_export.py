"""Write a tiny Hugging Face causal LM as a GGUF file, for the GGUF loading tests (no network, no
llama.cpp): the tensors in the layout llama.cpp's converter writes them (the inverse of what
transformers' GGUF tensor processors undo on load), the config fields transformers reads back
(``GGUF_CONFIG_MAPPING``, inverted) and those llama.cpp's converter adds that sinkinterp reads as llama.cpp
does (``loading.llama_cpp_config_fields``: the head size, Gemma 2's soft caps, the rotated size; LLaMA 3's
RoPE factors as ``rope_freqs.weight``), and a byte-level BPE vocabulary of words t0..t{V-1} (t1 BOS, t2 EOS,
t0 padding, as ``conftest.word_tokenizer``). Weights are stored in float32, unquantized."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# the Hugging Face model types written (each the name of its GGUF architecture), those the tests load
GGUF_ARCHS = ("llama", "qwen2", "qwen3", "phi3", "stablelm", "falcon", "gpt2", "bloom", "gemma2", "gemma3",
              "starcoder2")
# Hugging Face model types whose GGUF architecture is named otherwise
_GGUF_NAME = {"gemma3_text": "gemma3"}
# where a config keeps its context length (transformers' mapping names n_ctx for GPT-2, whose config keeps
# n_positions)
_CONTEXT = ("max_position_embeddings", "n_positions")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q / k permutation for LLaMA (rotate-half pairs -> adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _to_gguf_layout(arch: str, gguf_name: str, a: np.ndarray, cfg: Any) -> np.ndarray:
    if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        heads = cfg.num_attention_heads if ".attn_q." in gguf_name else cfg.num_key_value_heads
        return _permute(a, heads)
    if arch == "gpt2" and any(k in gguf_name for k in ("attn_qkv.weight", "ffn_down.weight", "ffn_up.weight",
                                                         "attn_output.weight")):
        return a.T.copy()  # Conv1D stores [in, out]
    if arch == "bloom" and "attn_qkv" in gguf_name:  # per head [q k v] -> [all q; all k; all v]
        h, e = cfg.n_head, cfg.hidden_size
        return a.reshape(h, 3, e // h, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)
    if arch in ("gemma2", "gemma3") and "norm.weight" in gguf_name:
        return a + 1  # llama.cpp stores Gemma's RMSNorm scale as 1 + w (Gemma 3's q / k norms too)
    return a


def llama3_rope_factors(cfg: Any) -> np.ndarray:
    """LLaMA 3's RoPE scaling as llama.cpp's converter writes it, one factor per rotary frequency f:
    1 for wavelengths under original_max_position_embeddings / high_freq_factor, ``factor`` above
    original / low_freq_factor, between them 1 / ((1 - s) / factor + s) with s = (original / wavelength -
    low) / (high - low); llama.cpp divides each frequency by its factor."""
    rope = cfg.rope_parameters
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelength = 2 * np.pi / f
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            s = (original / wavelength - low) / (high - low)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def write_gguf(hf_model: Any, path: str | Path) -> Path:
    """Write ``hf_model`` (one of ``GGUF_ARCHS``) to ``path`` as GGUF; returns the path."""
    import gguf
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    cfg = hf_model.config
    arch = _GGUF_NAME.get(cfg.model_type, cfg.model_type)
    if arch not in GGUF_ARCHS:
        raise ValueError(f"hf_model: model_type {arch!r}; this writer knows {GGUF_ARCHS}")
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=cfg.to_dict())
    to_gguf = {hf: g for g, hf in get_gguf_hf_weights_map(hf_model, processor, model_type=arch).items()}
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{cfg.model_type}")
    keys = {key: (_CONTEXT if key == "context_length" else (attr,)) for key, attr in GGUF_CONFIG_MAPPING[arch].items()}
    # keys llama.cpp's converter writes and transformers does not read (sinkinterp.loading.llama_cpp_config_fields)
    keys.setdefault("attention.key_length", ("head_dim",))
    if arch == "falcon":  # its LayerNorm's epsilon, as llama.cpp's converter names it
        keys["attention.layer_norm_epsilon"] = ("layer_norm_epsilon",)
    if arch == "gemma2":
        keys.update({"attn_logit_softcapping": ("attn_logit_softcapping",),
                     "final_logit_softcapping": ("final_logit_softcapping",)})
    rope = getattr(cfg, "rope_parameters", None) or {}
    # linear RoPE scaling (Gemma 3: its global layers') and YaRN, as llama.cpp's converter writes them
    scaled = rope.get("full_attention", rope) if arch == "gemma3" else rope
    if scaled.get("rope_type") in ("linear", "yarn"):
        writer.add_string(f"{arch}.rope.scaling.type", scaled["rope_type"])
        writer.add_float32(f"{arch}.rope.scaling.factor", float(scaled["factor"]))
    if scaled.get("rope_type") == "longrope":  # Phi-3.5: llama.cpp's converter writes these keys and two tensors
        original = int(scaled["original_max_position_embeddings"])
        scale = cfg.max_position_embeddings / original
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", original)
        writer.add_float32(f"{arch}.rope.scaling.attn_factor",
                           math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
    if scaled.get("rope_type") == "yarn":
        original = int(scaled["original_max_position_embeddings"])
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", original)
        if scaled.get("attention_factor") is not None:  # llama.cpp multiplies its 1 + 0.1 ln factor by this
            yarn_scale = 1 + 0.1 * math.log(scaled["factor"]) if scaled["factor"] > 1 else 1.0
            writer.add_float32(f"{arch}.rope.scaling.attn_factor", scaled["attention_factor"] / yarn_scale)
    layer_types = getattr(cfg, "layer_types", None)
    windowed = [t == "sliding_attention" for t in layer_types or []]
    if arch in ("gemma2", "gemma3") and any(windowed):  # which layers window: every n-th global, else a flag each
        periodic = [n for n in range(2, len(windowed) + 1) if windowed == [i % n < n - 1 for i in range(len(windowed))]]
        writer.add_sliding_window_pattern(periodic[0] if periodic else windowed)
    if arch == "gemma3" and not any(windowed):  # no layer windows: no window written (llama.cpp: all global)
        keys.pop("attention.sliding_window", None)
    if arch == "gemma3":
        if getattr(cfg, "final_logit_softcapping", None) is not None:
            writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
        if "rope_theta" in rope.get("sliding_attention", {}):  # the sliding layers' base, as newer converters write it
            writer.add_rope_freq_base_swa(float(rope["sliding_attention"]["rope_theta"]))
    if arch == "gemma3":  # its global layers' base (the sliding ones': freq_base_swa above)
        rope = rope.get("full_attention", {})
    per_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if "partial_rotary_factor" in rope:  # the rotated size, as llama.cpp's converter writes it
        keys["rope.dimension_count"] = (int(per_head * rope["partial_rotary_factor"]),)
    if "rope_theta" in rope:  # transformers 5 keeps the base in rope_parameters
        keys["rope.freq_base"] = (float(rope["rope_theta"]),)
    for key, names in keys.items():
        value = next((n if isinstance(n, (int, float)) else getattr(cfg, n) for n in names
                      if isinstance(n, (int, float)) or (n and getattr(cfg, n, None) is not None)), None)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            writer.add_uint32(f"{arch}.{key}", value)
        elif isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
    vocab = int(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    written = set()
    for name, tensor in hf_model.state_dict().items():
        gguf_name = to_gguf.get(name)
        if gguf_name is None or gguf_name in written:  # tied weights: written once
            continue
        written.add(gguf_name)
        writer.add_tensor(gguf_name, _to_gguf_layout(arch, gguf_name, tensor.detach().float().numpy().copy(), cfg))
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type") == "llama3":  # llama.cpp's converter stores LLaMA 3's scaling as frequency factors
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    if rope.get("rope_type") == "longrope":
        for which in ("long", "short"):
            writer.add_tensor(f"rope_factors_{which}.weight", np.array(rope[f"{which}_factor"], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
