"""Byte-level BPE training, save/load, Hugging Face folders and to_hf()."""

from __future__ import annotations

import random

import pytest

from sinkinterp.data.shards import _safe_cuts, encode_document
from sinkinterp.data.tokenizer import BOS_TOKEN, EOS_TOKEN, load_tokenizer, train_bpe

WORDS = ("the quick brown fox jumps over lazy dog and then rests under a tree while birds sing "
         "songs of morning light across quiet fields").split()


def corpus_texts(n_docs: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
                 for _ in range(rng.randint(2, 6))]
        docs.append("\n".join(lines))
    return docs


@pytest.fixture(scope="module")
def tok():
    return train_bpe(corpus_texts(), vocab_size=400)


def test_special_tokens_come_first_and_vocab_size_is_respected(tok):
    assert tok.eos_id == 0 and tok.bos_id == 1
    assert tok.eos_token == EOS_TOKEN and tok.bos_token == BOS_TOKEN
    assert 258 < tok.vocab_size <= 400
    assert tok.decode([tok.eos_id]) == EOS_TOKEN


def test_round_trip_on_seen_and_unseen_text(tok):
    for text in corpus_texts(5, seed=1) + ["Ünïcödé ☃ and emoji 🦊, tabs\tand\r\nnewlines", "  leading spaces"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    common = tok.encode("the quick brown fox")
    assert len(common) < len("the quick brown fox")  # merges were learned


def test_encode_adds_no_special_tokens_and_literal_separator_stays_text(tok):
    ids = tok.encode("a tree")
    assert tok.eos_id not in ids and tok.bos_id not in ids
    tricky = f"docs mention {EOS_TOKEN} literally"
    ids = tok.encode(tricky)
    assert tok.eos_id not in ids and tok.decode(ids) == tricky


def test_training_is_deterministic(tok):
    again = train_bpe(corpus_texts(), vocab_size=400)
    assert again.to_json_str() == tok.to_json_str()


def test_save_and_load_tokenizer_json(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert (loaded.vocab_size, loaded.eos_id, loaded.bos_id) == (tok.vocab_size, tok.eos_id, tok.bos_id)
    text = corpus_texts(1, seed=3)[0]
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.fingerprint() == tok.fingerprint()


def test_to_hf_and_local_hf_folder(tok, tmp_path):
    from transformers import PreTrainedTokenizerFast

    hf = tok.to_hf()
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (tok.eos_id, tok.bos_id, tok.eos_id)
    text = "the lazy dog sings"
    assert hf(text)["input_ids"] == tok.encode(text)  # no BOS added by the HF tokenizer either
    hf.save_pretrained(tmp_path / "hf")
    folder = load_tokenizer(tmp_path / "hf")  # AutoTokenizer, local_files_only
    assert folder.encode(text) == tok.encode(text)
    assert (folder.eos_id, folder.bos_id, folder.vocab_size) == (tok.eos_id, tok.bos_id, tok.vocab_size)
    assert folder.decode(folder.encode(text)) == text
    assert folder.encode_batch([text, "a tree"]) == [tok.encode(text), tok.encode("a tree")]


def test_chunked_encoding_equals_whole_encoding(tok):
    text = "\n".join(corpus_texts(40, seed=5)) + "\n\n  indented line\nlast"
    chunks = _safe_cuts(text, 200)
    assert len(chunks) > 5 and "".join(chunks) == text
    assert encode_document(tok, text, chunk_chars=200) == tok.encode(text) + [tok.eos_id]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=70000)
    with pytest.raises(FileNotFoundError, match="path"):
        load_tokenizer(tmp_path / "nope.json")
    tok = train_bpe(["abc abc"], vocab_size=300)
    tok.save(tmp_path / "t.json")
    with pytest.raises(ValueError, match="eos_token"):
        load_tokenizer(tmp_path / "t.json", eos_token="<|missing|>")
