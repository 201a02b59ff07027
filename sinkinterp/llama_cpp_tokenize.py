"""llama.cpp's pre-tokenizer rules for the byte-level BPE vocabularies of GGUF files (``tokenizer.ggml.model``
"gpt2"), for those that transformers' GGUF reader (5.23) rebuilds with GPT-2's split, and its ``ignore_merges``
(``src/llama-vocab.cpp``: ``llm_tokenizer_bpe``'s ``regex_exprs`` by ``tokenizer.ggml.pre``, each regex splitting the
pieces the one before left, matches and the rest alike; and the pre-tokenizer names that take a piece whole where
it is a token). Copied from the llama.cpp that llama-cpp-python 0.3.36 vendors: every name its ``llama_vocab::load``
knows is in ``SPLITS``, ``AS_GPT2`` or ``NOT_EMULATED``. On llama.cpp's tokenizer tests the vocabularies split so
equal their own tokenizers (docs/hook-contract.md, "The tokenizer a GGUF model loads with"); the names without a
test vocabulary there are checked for how the splits are applied (``tests/test_llama_cpp_tokenize.py``), not against
their own tokenizers."""

from __future__ import annotations

from typing import Any

_DEFAULT = (
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "\\p{N}+",
    "[0-9][0-9][0-9]",
)
_LLAMA3 = (
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
     "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_DEEPSEEK_LLM = (
    "[\r\n]",
    ("\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
     "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
     "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-"
     "\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57"
     "\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-"
     "\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-"
     "\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183"
     "\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
     "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
     "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-"
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
_DEEPSEEK3_LLM = (
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    ('[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+'
     "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
)
_SPARK2_5 = (
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    ('[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+'
     "| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+"),
    "\\p{N}",
)
_YOUTU = (
    ("[\uac00-\ud7a3\u3131-\u318e]+"
     "|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+"
     "|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
    ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]"
     "|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
     "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]"
     "|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
     "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
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
_JAIS2 = (
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
     "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)"
     "|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)"
     "|\\s{1,2}(?!\\S)|\\s{1}"),
)
_QWEN2 = (
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_QWEN35 = (
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+"
     "|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_PORO = (
    " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",
)
_VIKING = (
    " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",
    "\\p{N}",
)
_TEKKEN = (
    ("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"
     "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}"
     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_CHAMELEON = (
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    "\\p{N}",
    "[\\p{P}!-/:-@\\[-`{-~]",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
)
_EXAONE_MOE = (
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
     "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}"
     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"),
)
_GPT4O = (
    ("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]"
     "|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
     "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]"
     "|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+"
     "|\\s+(?!\\S)|\\s+"),
)
_GRANITE_EMB_MULTI = (
    ("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+(?:'[sS]|'[tT]"
     "|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
     "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*(?:'[sS]|'[tT]"
     "|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
     "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_TINY_AYA = (
    "\\d{1,3}(?=(?:\\d{3})*\\b)",
    ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]"
     "|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
     "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]"
     "|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
     "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_BAILINGMOE = (
    ("'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"),
)
_SEED_CODER = (
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}"
     "| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_UFAKZEKA = (
    "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
_LAGUNA = (
    "[^\\n]+|[\\n]+",
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)
_MINICPM5 = (
    "\\p{N}{1,3}",
    ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+"
     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
)

# tokenizer.ggml.pre -> the regexes llama.cpp splits with, in order (each name as llama_vocab::load matches it)
SPLITS: dict[str, tuple[str, ...]] = {
    "default": _DEFAULT,
    **dict.fromkeys(("chatglm-bpe", "dbrx", "falcon-h1", "falcon3", "glm4", "glm5", "jina-v5-nano", "lfm2",
                     "llama-bpe", "llama-v3", "llama3", "midm-2.0", "pixtral", "smaug-bpe"), _LLAMA3),
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"), _DEEPSEEK3_LLM),
    "spark2_5": _SPARK2_5,
    "youtu": _YOUTU,
    "falcon": _FALCON,
    **dict.fromkeys(("codeshell", "command-r", "exaone", "mellum2", "minerva-7b", "refact", "smollm",
                     "starcoder"), _STARCODER),
    "jais-2": _JAIS2,
    **dict.fromkeys(("deepseek-r1-qwen", "f2llmv2", "grok-2", "hunyuan", "kormo", "megrez", "qwen2", "solar-open",
                     "stablelm2"), _QWEN2),
    "qwen35": _QWEN35,
    **dict.fromkeys(("bloom", "gpt3-finnish", "poro-chat"), _PORO),
    "viking": _VIKING,
    "tekken": _TEKKEN,
    "chameleon": _CHAMELEON,
    "exaone-moe": _EXAONE_MOE,
    **dict.fromkeys(("gpt-4o", "kanana2", "llama4", "minimax-m2", "talkie"), _GPT4O),
    "granite-embed-multi-97m": _GRANITE_EMB_MULTI,
    **dict.fromkeys(("cohere2moe", "tiny_aya"), _TINY_AYA),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), _BAILINGMOE),
    "seed-coder": _SEED_CODER,
    "ufakzeka": _UFAKZEKA,
    "laguna": _LAGUNA,
    "minicpm5": _MINICPM5,
}
# the names llama.cpp splits with GPT-2's own regex, as transformers' rebuild does where it has no split of its own
AS_GPT2 = frozenset({"a.x-4.0", "exaone4", "gigachat", "gpt-2", "granite-docling", "jais", "jina-de", "jina-es",
                         "jina-v1-en", "jina-v2-code", "jina-v2-de", "jina-v2-es", "mellum", "modern-bert", "mpt",
                         "olmo", "phi-2", "roberta-bpe", "trillion"})
# the names llama.cpp splits otherwise, in ways a tokenizers pre-tokenizer here does not reproduce
NOT_EMULATED = frozenset({"afmoe", "gemma4", "granite-embed-multi-311m", "kimi-k2", "sarvam-moe", "superbpe",
                         "whitespace"})
# the pre-tokenizer names for which llama.cpp takes a piece whole where it is a token, before any merge
IGNORE_MERGES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                           "jina-v5-nano", "minicpm5", "youtu", "glm4", "glm5", "tekken", "granite-embed-multi-97m"})


def as_llama_cpp(tokenizer: Any, meta: dict[str, Any]) -> list[str]:
    """Set a byte-level BPE tokenizer's (``tokenizer.ggml.model`` "gpt2") pre-tokenizer to llama.cpp's splits
    for the file's ``tokenizer.ggml.pre`` where transformers has none of its own for it (its rebuild is GPT-2's
    split; ``SPLITS``), and its BPE model's ``ignore_merges`` where llama.cpp sets it (``IGNORE_MERGES``).
    ``tokenizer``: transformers' rebuild (its ``backend_tokenizer`` changed in place); ``meta``: the file's
    metadata. Returns what changed."""
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


def not_as_llama_cpp(meta: dict[str, Any]) -> str | None:
    """Where the tokenizer a byte-level GGUF vocabulary loads with cannot split text as llama.cpp does, why
    (``loading.gguf_not_read`` lists it: the load warns and records it), else None: a ``tokenizer.ggml.pre`` that
    llama.cpp splits in a way not emulated here (``NOT_EMULATED``: a split of raw UTF-8 rather than GPT-2's bytes,
    a digit class of its own, a split at empty matches, a vocabulary without merges), or one it does not know (it
    refuses the file). A file without the key is left alone: llama.cpp splits it with its ``default`` rules and
    warns that the output will be degraded, while transformers' GPT-2 split is the likelier original."""
    pre = meta.get("tokenizer.ggml.pre")
    if meta.get("tokenizer.ggml.model") != "gpt2" or pre is None or pre in SPLITS or pre in AS_GPT2:
        return None
    if pre in NOT_EMULATED:
        return (f"tokenizer.ggml.pre {pre!r} (llama.cpp splits text for it in a way not emulated here: the "
                "tokenizer keeps transformers' split)")
    return (f"tokenizer.ggml.pre {pre!r}, a name llama.cpp does not know (it refuses the file; the tokenizer keeps "
            "transformers' split)")
