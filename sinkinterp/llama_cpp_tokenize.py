"""llama.cpp's pre-tokenizer rules for the byte-level BPE vocabularies of GGUF files that transformers' GGUF reader
(5.23) rebuilds with GPT-2's split, and its ``ignore_merges`` (``src/llama-vocab.cpp``: ``llm_tokenizer_bpe``'s
``regex_exprs`` by ``tokenizer.ggml.pre``, each regex splitting the pieces the one before left, matches and the
rest alike; and the pre-tokenizer names that take a piece whole where it is a token). Copied from the
llama.cpp that llama-cpp-python 0.3.36 vendors; on its tokenizer tests the vocabularies split so equal their own
tokenizers (docs/hook-contract.md, "The tokenizer a GGUF model loads with")."""

from __future__ import annotations

from typing import Any

_DEEPSEEK_LLM = (
    "[\r\n]",
    ("\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-"
     "\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-"
     "\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-"
     "\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-"
     "\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-"
     "\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-"
     "\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-"
     "\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-"
     "\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-"
     "\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"),
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
)
_DEEPSEEK_CODER = (
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}",
)
_FALCON = (
    "[\\p{P}\\$\\+<=>\\^~\\|`]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "[0-9][0-9][0-9]",
)
_STARCODER = (
    "\\p{N}",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
)

# tokenizer.ggml.pre -> the regexes llama.cpp splits with, in order (names as llama_vocab::load matches them)
SPLITS: dict[str, tuple[str, ...]] = {
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
    "falcon": _FALCON,
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"), _STARCODER),
}
# the pre-tokenizer names for which llama.cpp takes a piece whole where it is a token, before any merge
IGNORE_MERGES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                           "jina-v5-nano", "minicpm5", "youtu", "glm4", "glm5", "tekken", "granite-embed-multi-97m"})


def as_llama_cpp(tokenizer: Any, meta: dict[str, Any]) -> list[str]:
    """Set a byte-level BPE tokenizer's (``tokenizer.ggml.model`` "gpt2") pre-tokenizer to llama.cpp's splits
    for the file's ``tokenizer.ggml.pre`` where transformers has none of its own for it (``SPLITS``), and its
    BPE model's ``ignore_merges`` where llama.cpp sets it (``IGNORE_MERGES``). ``tokenizer``: transformers'
    rebuild (its ``backend_tokenizer`` changed in place); ``meta``: the file's metadata. Returns what changed."""
    from tokenizers import Regex, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = meta.get("tokenizer.ggml.pre")
    if meta.get("tokenizer.ggml.model") != "gpt2" or backend is None or pre is None:
        return []
    done = []
    if pre in SPLITS and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel):  # GPT-2's split: not its own
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [*(pre_tokenizers.Split(Regex(r), behavior="isolated") for r in SPLITS[pre]),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        done.append(f"llama.cpp's {pre!r} pre-tokenizer splits")
    model = backend.model
    if pre in IGNORE_MERGES and hasattr(model, "ignore_merges") and not model.ignore_merges:
        model.ignore_merges = True
        done.append("a piece that is a token taken whole (ignore_merges)")
    return done
