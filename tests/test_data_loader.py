"""Loader: windows equal the token stream, determinism per (seed, step), exact resume,
document-aligned starts, sequential order, and the data cap."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from sinkinterp.data.loader import TokenWindows
from sinkinterp.data.shards import write_shards
from sinkinterp.data.tokenizer import train_bpe

WORDS = "red green blue cyan magenta yellow black white grey orange purple brown pink".split()
SEQ = 16
BATCH = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(120)]
    tok = train_bpe(docs, vocab_size=300)
    out = tmp_path_factory.mktemp("shards")
    write_shards(docs, tok, out, shard_tokens=97, val_policy="none")  # many shards: windows cross them
    stream = np.array([i for d in docs for i in tok.encode(d) + [tok.eos_id]], dtype=np.int64)
    return out, stream, tok



def test_windows_are_slices_of_the_stream_across_shards(data):
    shard_dir, stream, _ = data
    w = TokenWindows(shard_dir)
    assert w.n_tokens == stream.size and len(w._shards) > 5
    np.testing.assert_array_equal(w.read(0, stream.size), stream)
    np.testing.assert_array_equal(w.read(90, 20), stream[90:110])  # crosses the 97-token shard edge
    for step in range(5):
        starts = w.window_starts(step, BATCH, SEQ, seed=3)
        batch = w.batch_at(step, BATCH, SEQ, seed=3)
        assert batch.shape == (BATCH, SEQ) and batch.dtype == np.int64
        for row, s in zip(batch, starts):
            np.testing.assert_array_equal(row, stream[s: s + SEQ])


def test_batches_are_a_function_of_seed_and_step(data):
    shard_dir, _, _ = data
    a, b = TokenWindows(shard_dir), TokenWindows(shard_dir)
    np.testing.assert_array_equal(a.batch_at(7, BATCH, SEQ, seed=1), b.batch_at(7, BATCH, SEQ, seed=1))
    assert not np.array_equal(a.batch_at(7, BATCH, SEQ, seed=1), a.batch_at(7, BATCH, SEQ, seed=2))
    assert not np.array_equal(a.batch_at(7, BATCH, SEQ, seed=1), a.batch_at(8, BATCH, SEQ, seed=1))
    a.batch_at(100, BATCH, SEQ, seed=1)  # reading other steps first changes nothing
    np.testing.assert_array_equal(a.batch_at(7, BATCH, SEQ, seed=1), b.batch_at(7, BATCH, SEQ, seed=1))


@pytest.mark.parametrize("sampling", ["random", "sequential"])
@pytest.mark.parametrize("doc_aligned", [False, True])
def test_resume_from_step_k_gives_identical_batches(data, sampling, doc_aligned):
    shard_dir, _, _ = data
    kw = dict(sampling=sampling, doc_aligned=doc_aligned)
    full = list(TokenWindows(shard_dir).batches(BATCH, SEQ, seed=5, start_step=0, num_steps=12, **kw))
    resumed = list(TokenWindows(shard_dir).batches(BATCH, SEQ, seed=5, start_step=5, num_steps=7, **kw))
    assert len(full) == 12 and len(resumed) == 7
    for x, y in zip(full[5:], resumed):
        np.testing.assert_array_equal(x, y)
    assert len({x.tobytes() for x in full}) == 12  # not one batch repeated


def test_doc_aligned_windows_start_right_after_eos(data):
    shard_dir, stream, tok = data
    w = TokenWindows(shard_dir)
    expected = np.concatenate([[0], np.flatnonzero(stream == tok.eos_id) + 1])
    np.testing.assert_array_equal(w.doc_starts(), expected[expected < stream.size])
    for sampling in ("random", "sequential"):
        for step in range(20):
            for s in w.window_starts(step, BATCH, SEQ, seed=0, sampling=sampling, doc_aligned=True):
                assert s == 0 or stream[s - 1] == tok.eos_id
                assert s + SEQ <= stream.size
    starts = np.concatenate([w.window_starts(s, BATCH, SEQ, seed=0) for s in range(20)])
    assert np.mean([s != 0 and stream[s - 1] != tok.eos_id for s in starts]) > 0.5  # unaligned by default


def test_sequential_windows_tile_the_stream_in_order(data):
    shard_dir, stream, _ = data
    w = TokenWindows(shard_dir)
    per_epoch = stream.size // SEQ
    rows = np.concatenate([w.batch_at(s, BATCH, SEQ, sampling="sequential") for s in range(per_epoch // BATCH)])
    np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
    wrap_step = per_epoch  # window index step * BATCH wraps modulo per_epoch
    np.testing.assert_array_equal(w.window_starts(wrap_step, 1, SEQ, sampling="sequential"), [0])


def test_max_tokens_limits_the_range_read(data):
    shard_dir, stream, _ = data
    cap = 300
    w = TokenWindows(shard_dir, max_tokens=cap)
    assert w.n_tokens == cap and w.total_tokens == stream.size
    starts = np.concatenate([w.window_starts(s, BATCH, SEQ, seed=0) for s in range(200)])
    assert starts.max() + SEQ <= cap and starts.max() > cap - 3 * SEQ  # uses the range, not beyond
    aligned = np.concatenate([w.window_starts(s, BATCH, SEQ, doc_aligned=True) for s in range(50)])
    assert aligned.max() + SEQ <= cap
    seq = np.concatenate([w.window_starts(s, BATCH, SEQ, sampling="sequential") for s in range(50)])
    assert seq.max() + SEQ <= cap
    with pytest.raises(IndexError):
        w.read(cap - 5, 10)
    np.testing.assert_array_equal(w.read(0, cap), stream[:cap])


def test_spread_cap_reads_evenly_spaced_blocks_of_the_stream(data):
    """spread_block: max_tokens tokens as blocks of that size spaced evenly over the split, read as one
    stream: every window is the concatenation of the stored tokens it maps to, the blocks never
    overlap, the first starts at 0 and the last ends near the end of the split."""
    shard_dir, stream, tok = data
    cap, b = 300, 40
    w = TokenWindows(shard_dir, max_tokens=cap, spread_block=b)
    assert w.n_tokens == cap
    n_blocks = -(-cap // b)
    starts = [j * stream.size // n_blocks for j in range(n_blocks)]
    expected = np.concatenate([stream[p: p + min(b, cap - j * b)] for j, p in enumerate(starts)])
    np.testing.assert_array_equal(w.read(0, cap), expected)
    assert starts[0] == 0 and starts[-1] > stream.size * 0.8
    assert all(q - p >= b for p, q in itertools.pairwise(starts))  # no token used twice
    assert not np.array_equal(expected, stream[:cap])  # not the first tokens
    np.testing.assert_array_equal(w.read(35, 50), expected[35:85])  # crosses two block seams
    for step in range(20):
        batch = w.batch_at(step, BATCH, SEQ, seed=1)
        for row, s in zip(batch, w.window_starts(step, BATCH, SEQ, seed=1)):
            assert s + SEQ <= cap
            np.testing.assert_array_equal(row, expected[s: s + SEQ])
    # document starts: 0 and right after every EOS of the spread stream, nothing else
    ds = w.doc_starts()
    np.testing.assert_array_equal(ds, np.concatenate([[0], np.flatnonzero(expected[:-1] == tok.eos_id) + 1]))
    aligned = np.concatenate([w.window_starts(s, BATCH, SEQ, doc_aligned=True) for s in range(20)])
    assert set(aligned.tolist()) <= set(ds.tolist())
    # capped() keeps the choice
    np.testing.assert_array_equal(TokenWindows(shard_dir).capped(cap, spread_block=b).read(0, cap), expected)


def test_spread_cap_errors_name_the_argument(data):
    shard_dir, stream, _ = data
    with pytest.raises(ValueError, match="spread_block: needs max_tokens"):
        TokenWindows(shard_dir, spread_block=10)
    with pytest.raises(ValueError, match="spread_block must be an integer >= 1"):
        TokenWindows(shard_dir, max_tokens=100, spread_block=0)
    with pytest.raises(ValueError, match=r"spread_block: 2 blocks of .* do not fit"):
        TokenWindows(shard_dir, max_tokens=stream.size - 10, spread_block=stream.size - 20)


def test_bad_arguments_are_clear(data, tmp_path):
    shard_dir, stream, _ = data
    w = TokenWindows(shard_dir)
    with pytest.raises(ValueError, match="sampling must be one of random, sequential"):
        w.batch_at(0, BATCH, SEQ, sampling="shuffled")
    with pytest.raises(ValueError, match="seq_len"):
        w.batch_at(0, BATCH, stream.size + 1)
    with pytest.raises(ValueError, match="step"):
        w.batches(BATCH, SEQ, start_step=-1)
    with pytest.raises(ValueError, match="batch_size"):
        w.batches(0, SEQ)
    with pytest.raises(ValueError, match="split"):
        TokenWindows(shard_dir, "test")
    with pytest.raises(ValueError, match="holds no tokens"):
        TokenWindows(shard_dir, "val")
    with pytest.raises(FileNotFoundError, match="manifest"):
        TokenWindows(tmp_path)
