"""Models embedded in sinkinterp: they load offline with no file from the user.

* **Shipped trained models** (``SHIPPED_MODELS``): sinkinterp checkpoints under
  ``sinkinterp/assets/models/NAME/`` (bf16 weights, tokenizer, training config and metrics; see
  that folder's README.md and docs/reproduction.md). ``default`` names the first of them, and the
  README's main command (``sinkinterp report``) shows all of them side by side.
* ``tiny-llama-untrained``: a small LLaMA-style Hugging Face model built from a fixed config and
  seed with a byte-level tokenizer; the default when no trained model is shipped. Its report says
  plainly that it is untrained.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_MODELS", "byte_tokenizer", "DEFAULT_MODEL", "SHIPPED_MODELS", "shipped_models",
           "default_models"]

DEFAULT_MODEL = "default"
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "models"
#: the trained models shipped in the package, in the order reports show them: a softmax baseline,
#: the same with a learnable per-head k*/v* slot, and sigmoid attention without normalization
SHIPPED_MODELS: tuple[str, ...] = ("toy-softmax", "toy-kv-bias", "toy-sigmoid")


def shipped_models() -> dict[str, Path]:
    """Name -> checkpoint folder of every shipped model present in this installation."""
    return {name: SHIPPED_DIR / name for name in SHIPPED_MODELS if (SHIPPED_DIR / name / "config.json").is_file()}


def default_models() -> list[str]:
    """What ``default`` stands for: every shipped model for a report, the first for one measurement
    (``[0]``); the untrained built-in model when none is shipped."""
    return list(shipped_models()) or ["tiny-llama-untrained"]


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character (the convention of byte-level BPE): printable
    Latin-1 bytes map to themselves, the rest to code points from 256 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_tokenizer() -> Any:
    """A Hugging Face fast tokenizer whose ids are UTF-8 bytes (0..255), plus ``<|bos|>`` = 256 and
    ``<|endoftext|>`` = 257. Needs no training data and no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    hf.add_special_tokens({"bos_token": "<|bos|>", "eos_token": "<|endoftext|>"})
    hf.init_kwargs["name_or_path"] = "sinkinterp-bytes"
    return hf


def _tiny_llama_untrained() -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=258, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=256, eos_token_id=257)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(LlamaConfig(**config), attn_implementation="eager").eval()
    info = {"builtin": "tiny-llama-untrained", "trained": False, "hf_config": config, "init_seed": 0,
            "note": "untrained LLaMA-style model built from config; trained checkpoints replace it later"}
    return model, byte_tokenizer(), info


# name -> factory returning (hf_model or hooked model, tokenizer, info)
BUILTIN_MODELS: dict[str, Callable[[], tuple[Any, Any, dict[str, Any]]]] = {
    "tiny-llama-untrained": _tiny_llama_untrained,
}
