"""llama.cpp's pre-tokenizer splits for byte-level GGUF vocabularies (sinkinterp.llama_cpp_tokenize): how they are
applied, for every name llama.cpp knows. The vocabularies with a tokenizer test in llama.cpp's tree are checked
against their own tokenizers by scripts/gguf_tokenizer_check.py (docs/hook-contract.md); the load through a GGUF file
in tests/test_gguf_architectures.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sinkinterp import llama_cpp_tokenize as lct
from sinkinterp.loading import gguf_not_read

regex = pytest.importorskip("regex")  # transformers' own dependency: an engine other than the tokenizers' one

# texts that reach every branch of the splits: contractions in both cases, digit runs, punctuation runs, CJK, Hangul
# and kana, accented and other scripts' letters and marks, newlines, tabs and runs of spaces, chameleon's sentinels
PROBES = (
    "I'LL pay 1234567 for it, won't I?  Yes...!!",
    "caf\u00e9 na\u00efve \u00c9COLE \u00fcber \u03b1\u03b2\u03b3 \u0416\u0443\u043a",
    "\u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \ud55c\uad6d\uc5b4\u3002\uff01",
    "a\n\n  b\r\n\tc    d   \n",
    "x=1;y+=2^3|4 `code` $5,000.00 ~/path/to?",
    "\u0928\u092e\u0938\u094d\u0924\u0947\u0964 \u0645\u0631\u062d\u0628\u0627\u060c \u06d4 \u2026done",
    "<sentinel:12>IMGIMGABZ tail",
    "   leading and trailing   ",
)


def _tokenizer():
    """A byte-level tokenizer as transformers' GGUF rebuild makes it without a split of its own: GPT-2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return SimpleNamespace(backend_tokenizer=tok)


def _spans(tok, text):
    return [span for _, span in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def _llama_cpp_spans(regexes, text):
    """llama.cpp's unicode_regex_split, by another regex engine: each regex splits every piece the one before
    left, its matches and the text between them alike; the pieces as (start, end) in ``text``."""
    pieces = [(0, len(text))]
    for expr in regexes:
        pattern, out = regex.compile(expr), []
        for start, end in pieces:
            at = start
            for m in pattern.finditer(text, start, end):
                if m.end() == m.start():
                    continue
                if m.start() > at:
                    out.append((at, m.start()))
                out.append((m.start(), m.end()))
                at = m.end()
            if at < end:
                out.append((at, end))
        pieces = out
    return pieces


def test_every_split_cuts_text_as_llama_cpps_sequential_split():
    """For each of llama.cpp's splits (one name per set of regexes), the tokenizer as_llama_cpp builds cuts every
    probe text where llama.cpp's sequential split cuts it, read by another regex engine: the regexes are applied in
    order, each to what the one before left, and nothing between matches is lost."""
    groups = {}
    for name, exprs in lct.SPLITS.items():
        groups.setdefault(exprs, name)
    assert len(groups) >= 20
    for exprs, name in groups.items():
        tok = _tokenizer()
        assert lct.as_llama_cpp(tok, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name})[0] == (
            f"llama.cpp's {name!r} pre-tokenizer splits")
        for text in PROBES:
            assert _spans(tok, text) == _llama_cpp_spans(exprs, text), (name, text)


@pytest.mark.parametrize(("name", "text", "pieces"), [
    ("stablelm2", "I'LL pay 2024", ["I", "'LL", " pay", " ", "2", "0", "2", "4"]),  # Qwen 2's: one digit each
    ("chatglm-bpe", "In 12345", ["In", " ", "123", "45"]),  # LLaMA 3's: digits in threes
    ("poro-chat", "x+1, don't!", ["x+1", ",", " don't", "!"]),  # BLOOM's: cut at spaces and some punctuation
    ("chameleon", "ab.12", ["ab", ".", "1", "2"]),  # each digit, each punctuation mark alone
    ("deepseek-v3", "\u4f60\u597d 12345", ["\u4f60\u597d", " ", "123", "45"]),
    ("default", "a+b 12345", ["a", "+", "b", " ", "123", "45"]),
])
def test_names_take_the_split_llama_cpp_gives_them(name, text, pieces):
    """A few of the names transformers rebuilds with GPT-2's split (it would keep " 2024" and "12345" whole and cut
    "'LL" in two), read off llama.cpp's regexes by hand."""
    tok = _tokenizer()
    gpt2 = [text[a:b] for a, b in _spans(tok, text)]
    lct.as_llama_cpp(tok, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name})
    assert [text[a:b] for a, b in _spans(tok, text)] == pieces != gpt2


def test_every_name_llama_cpp_knows_is_split_as_gpt2_split_or_named_as_not_emulated():
    """The three tables hold llama.cpp's 91 names (llama_vocab::load in the llama.cpp llama-cpp-python 0.3.36
    vendors) once each; the names it takes a piece whole for are among the split ones. A name llama.cpp splits in a
    way not emulated, or one it does not know, is listed among what the load does not read; a known one, a file
    without the key and a SentencePiece vocabulary are not."""
    tables = (set(lct.SPLITS), set(lct.AS_GPT2), set(lct.NOT_EMULATED))
    assert sum(map(len, tables)) == len(set().union(*tables)) == 91
    assert lct.IGNORE_MERGES <= set(lct.SPLITS)

    def unread(meta):
        return gguf_not_read("llama", meta)

    assert unread({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "afmoe"}) == [
        ("tokenizer.ggml.pre 'afmoe' (llama.cpp splits text for it in a way not emulated here: the tokenizer keeps "
         "transformers' split)")]
    assert unread({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "my-own"}) == [
        ("tokenizer.ggml.pre 'my-own', a name llama.cpp does not know (it refuses the file; the tokenizer keeps "
         "transformers' split)")]
    for meta in ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "stablelm2"},
                 {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mpt"}, {"tokenizer.ggml.model": "gpt2"},
                 {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "my-own"}):
        assert unread(meta) == [], meta
