"""Input generation: kinds, BOS policy, determinism, errors."""

import numpy as np
import pytest

from sinkinterp.builtin import byte_tokenizer
from sinkinterp.inputs import (
    copy_first_half,
    default_text,
    load_token_file,
    make_tokens,
)

TEXT = "It was a bright cold day in the valley, and the river ran quickly past the mill. " * 30


def test_random_is_uniform_ids_and_deterministic():
    a = make_tokens("random", seq_len=32, num_seqs=50, vocab_size=7, seed=3)
    b = make_tokens("random", seq_len=32, num_seqs=50, vocab_size=7, seed=3)
    c = make_tokens("random", seq_len=32, num_seqs=50, vocab_size=7, seed=4)
    assert a.shape == (50, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) == set(range(7))


def test_repeat_holds_one_token_per_sequence():
    ids = make_tokens("repeat", seq_len=10, num_seqs=4, vocab_size=100, seed=0)
    assert (ids == ids[:, :1]).all()
    fixed = make_tokens("repeat", seq_len=5, num_seqs=2, vocab_size=100, repeat_token=42)
    assert (fixed == 42).all()
    with pytest.raises(ValueError, match="repeat_token"):
        make_tokens("repeat", seq_len=5, num_seqs=2, vocab_size=10, repeat_token=42)


@pytest.mark.parametrize(("seq_len", "bos"), [(10, False), (11, False), (11, True)])
def test_copy_repeats_the_first_half_of_random_ids(seq_len, bos):
    ids = make_tokens("copy", seq_len=seq_len, num_seqs=6, vocab_size=1000, seed=2, prepend_bos=bos,
                      bos_token_id=999 if bos else None)
    assert ids.shape == (6, seq_len)
    body = ids[:, 1:] if bos else ids
    if bos:
        assert (ids[:, 0] == 999).all()
    half = (body.shape[1] + 1) // 2
    np.testing.assert_array_equal(body[:, half:], body[:, :body.shape[1] - half])
    assert len({tuple(r) for r in body[:, :half]}) == 6  # a fresh random half per sequence
    again = make_tokens("copy", seq_len=seq_len, num_seqs=6, vocab_size=1000, seed=2, prepend_bos=bos,
                        bos_token_id=999 if bos else None)
    np.testing.assert_array_equal(ids, again)


@pytest.mark.parametrize(("seq_len", "bos"), [(16, False), (17, False), (17, True)])
def test_copy_natural_is_the_natural_windows_with_their_first_half_copied(seq_len, bos):
    tok = byte_tokenizer()
    kw = {"seq_len": seq_len, "num_seqs": 5, "vocab_size": 258, "tokenizer": tok, "text": TEXT, "seed": 1,
          "prepend_bos": bos, "bos_token_id": 257 if bos else None}
    nat, cpy = make_tokens("natural", **kw), make_tokens("copy-natural", **kw)
    start = int(bos)
    half = start + (seq_len - start + 1) // 2
    np.testing.assert_array_equal(cpy[:, :half], nat[:, :half])  # the same windows: the control is the text itself
    np.testing.assert_array_equal(cpy[:, half:], nat[:, start:start + seq_len - half])
    assert (cpy[:, half:] != nat[:, half:]).any()
    np.testing.assert_array_equal(copy_first_half(nat, start), cpy)
    with pytest.raises(ValueError, match="copy-natural needs a tokenizer"):
        make_tokens("copy-natural", seq_len=8, num_seqs=1, vocab_size=10)
    with pytest.raises(ValueError, match=r"start must be an integer in \[0, 14\]"):
        copy_first_half(nat[:, :16], 15)
    with pytest.raises(ValueError, match=r"tokens must be \[N, T\]"):
        copy_first_half(nat[0])


def test_natural_windows_come_from_the_text_without_overlap():
    tok = byte_tokenizer()
    ids = make_tokens("natural", seq_len=16, num_seqs=5, vocab_size=258, tokenizer=tok, text=TEXT, seed=1)
    stream = TEXT.encode()
    for row in ids:
        assert bytes(row.tolist()) in stream
    assert len({bytes(r.tolist()) for r in ids}) >= 2


def test_bos_policy_is_explicit_and_counts_in_seq_len():
    tok = byte_tokenizer()
    ids = make_tokens("natural", seq_len=16, num_seqs=3, vocab_size=258, tokenizer=tok, text=TEXT)
    assert (ids[:, 0] != 256).all()  # default: no BOS
    with_bos = make_tokens("natural", seq_len=16, num_seqs=3, vocab_size=258, tokenizer=tok, text=TEXT,
                           prepend_bos=True, bos_token_id=256)
    assert with_bos.shape == (3, 16) and (with_bos[:, 0] == 256).all()
    with pytest.raises(ValueError, match="no BOS"):
        make_tokens("random", seq_len=4, num_seqs=1, vocab_size=9, prepend_bos=True)


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="inputs must be one of"):
        make_tokens("books", seq_len=4, num_seqs=1, vocab_size=9)
    with pytest.raises(ValueError, match="seq_len"):
        make_tokens("random", seq_len=1, num_seqs=1, vocab_size=9)
    with pytest.raises(ValueError, match="needs more text"):
        make_tokens("natural", seq_len=64, num_seqs=10, vocab_size=258, tokenizer=byte_tokenizer(), text="short")
    np.save(tmp_path / "f.npy", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="integer"):
        load_token_file(tmp_path / "f.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="could not read"):
        load_token_file(tmp_path / "junk.npy")


def test_shipped_sample_is_enough_for_the_paper_default():
    tok = byte_tokenizer()
    text = default_text()
    assert len(text) > 20_000
    ids = make_tokens("natural", seq_len=64, num_seqs=100, vocab_size=258, tokenizer=tok)
    assert ids.shape == (100, 64)
