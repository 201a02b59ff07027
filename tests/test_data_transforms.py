"""The paper's data interventions and DataConfig / DataPipeline."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from sinkinterp.data.loader import TokenWindows
from sinkinterp.data.shards import write_shards
from sinkinterp.data.tokenizer import train_bpe
from sinkinterp.data.transforms import (
    DataConfig,
    DataPipeline,
    TransformSpec,
    apply_transforms,
    cap_data,
    fixed_token_at,
    random_tokens_at,
)

VOCAB = 1000


def windows(b=64, t=12, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(b, t), dtype=np.int64)


def changed_positions(before, after) -> set[int]:
    diff = np.asarray(before) != np.asarray(after)
    return set(np.flatnonzero(diff.any(axis=0)).tolist())


@pytest.mark.parametrize("positions", [[0], [0, 1], [1], [3, 7]])
def test_random_tokens_change_exactly_their_positions_numpy(positions):
    x = windows()
    out = random_tokens_at(positions, VOCAB)(x, np.random.default_rng(1))
    assert changed_positions(x, out) == set(positions)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert (out[:, positions] >= 0).all() and (out[:, positions] < VOCAB).all()
    assert len(np.unique(out[:, positions])) > 30  # drawn per window, not one value
    np.testing.assert_array_equal(x, windows())  # input untouched


def test_random_tokens_with_torch_tensors_and_generators():
    x = torch.from_numpy(windows())
    t = random_tokens_at([0, 1], VOCAB, generator=torch.Generator().manual_seed(0))
    out = t(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert changed_positions(x.numpy(), out.numpy()) == {0, 1}
    # per-call numpy generator: same draws as on a numpy array
    a = t(x, np.random.default_rng(5))
    b = t(x.numpy(), np.random.default_rng(5))
    np.testing.assert_array_equal(a.numpy(), b)
    # reproducible from the same seed
    np.testing.assert_array_equal(t(x, torch.Generator().manual_seed(9)).numpy(),
                                  t(x, torch.Generator().manual_seed(9)).numpy())


def test_fixed_token_sets_exactly_its_position():
    x = windows()
    x[:, 2] = 999  # so that setting 5 changes every row
    for tokens in (x, torch.from_numpy(x)):
        out = fixed_token_at(2, 5)(tokens)
        out = out.numpy() if isinstance(out, torch.Tensor) else out
        assert changed_positions(x, out) == {2}
        assert (out[:, 2] == 5).all()
    out = fixed_token_at([0, 2], 7)(x)
    assert changed_positions(x, out) == {0, 2} and (out[:, [0, 2]] == 7).all()


def test_transforms_compose_in_order():
    x = windows()
    ts = [random_tokens_at([0, 1], VOCAB), fixed_token_at(1, 3)]
    out = apply_transforms(x, ts, np.random.default_rng(0))
    assert changed_positions(x, out) == {0, 1} and (out[:, 1] == 3).all()


def test_transform_errors():
    with pytest.raises(ValueError, match="positions"):
        random_tokens_at([], VOCAB)
    with pytest.raises(ValueError, match="positions"):
        random_tokens_at([-1], VOCAB)
    with pytest.raises(ValueError, match="vocab_size"):
        random_tokens_at([0], 0)
    with pytest.raises(ValueError, match="token_id"):
        fixed_token_at(0, -3)
    with pytest.raises(ValueError, match="generator"):
        random_tokens_at([0], VOCAB)(windows())
    with pytest.raises(ValueError, match="position 12 does not exist"):
        fixed_token_at(12, 1)(windows(t=12))
    with pytest.raises(ValueError, match="max_tokens"):
        cap_data(0)


# -------------------------------------------------------------------------- config and pipeline

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    rng = random.Random(1)
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(150)]
    tok = train_bpe(docs, vocab_size=290)
    out = tmp_path_factory.mktemp("shards")
    write_shards(docs, tok, out, shard_tokens=500, val_every=5, val_block_tokens=200)
    return out


def test_config_round_trip_and_json(shard_dir):
    cfg = DataConfig(shard_dir=str(shard_dir), seq_len=32, batch_size=4, seed=3, doc_aligned=True,
                     transforms=[{"kind": "random_tokens", "positions": [0, 1]},
                                 {"kind": "fixed_token", "position": 2, "token_id": "bos"}],
                     max_train_tokens=1000)
    assert cfg.transforms == (TransformSpec("random_tokens", (0, 1)), TransformSpec("fixed_token", (2,), "bos"))
    d = cfg.to_dict()
    assert d["transforms"] == [{"kind": "random_tokens", "positions": [0, 1]},
                               {"kind": "fixed_token", "positions": [2], "token_id": "bos"}]
    assert DataConfig.from_dict(json.loads(json.dumps(d))) == cfg
    hash(cfg)  # frozen and hashable


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 0}, r"DataConfig.seq_len must be an integer >= 1, got 0"),
    ({"seed": -1}, r"DataConfig.seed must be an integer >= 0"),
    ({"sampling": "shuffle"}, r"DataConfig.sampling must be one of random, sequential, got 'shuffle'"),
    ({"split": "test"}, r"DataConfig.split must be one of train, val"),
    ({"max_train_tokens": 10}, r"DataConfig.max_train_tokens must be an integer >= 64"),
    ({"shard_dir": ""}, r"DataConfig.shard_dir must be a folder path"),
    ({"transforms": [{"kind": "mask", "positions": [0]}]},
     r"DataConfig.transforms\[0\].kind must be one of random_tokens, fixed_token, got 'mask'"),
    ({"transforms": [{"kind": "random_tokens", "positions": [64]}]},
     r"DataConfig.transforms\[0\].positions: position 64 does not exist .* \(allowed 0..63\)"),
    ({"transforms": [{"kind": "random_tokens", "positions": [1, 1]}]},
     r"DataConfig.transforms\[0\].positions must be a non-empty list of distinct integers"),
    ({"transforms": [{"kind": "fixed_token", "positions": [0]}]},
     r"DataConfig.transforms\[0\].token_id must be an integer >= 0, 'bos' or 'eos'"),
    ({"transforms": [{"kind": "random_tokens", "positions": [0], "token_id": 1}]},
     r"token_id applies to fixed_token only"),
    ({"transforms": [{"kind": "random_tokens", "positions": [0], "where": 1}]},
     r"unknown key\(s\) where; allowed: kind, positions, token_id, vocab_size"),
])
def test_config_errors_name_field_and_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{"shard_dir": "x", "seq_len": 64, **kwargs})


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 2.5, r"DataConfig.batch_size must be an integer >= 1, got 2.5"),
    ("doc_aligned", "yes", r"DataConfig.doc_aligned must be true or false, got 'yes'"),
    ("transforms", {"kind": "random_tokens"}, r"DataConfig.transforms must be a list of transform mappings"),
])
def test_config_wrong_types_name_the_field(field, value, message):
    # under the suite's run-time type checker (jaxtyping + beartype) the annotations may reject the
    # value first, with a message naming the parameter; __post_init__'s own message is checked too
    with pytest.raises((TypeError, ValueError), match=field):
        DataConfig(**{"shard_dir": "x", field: value})
    cfg = DataConfig(shard_dir="x")
    object.__setattr__(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        cfg.__post_init__()


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown field\(s\) seqlen; allowed: .*seq_len"):
        DataConfig.from_dict({"shard_dir": "x", "seqlen": 3})


def test_pipeline_applies_transforms_and_resumes_exactly(shard_dir):
    cfg = DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=8, seed=4,
                     transforms=[{"kind": "random_tokens", "positions": [0]},
                                 {"kind": "fixed_token", "positions": [1], "token_id": "bos"}])
    pipe = DataPipeline(cfg)
    plain = TokenWindows(shard_dir)
    full = list(pipe.batches(0, 10))
    resumed = list(DataPipeline(cfg).batches(start_step=6, num_steps=4))
    for x, y in zip(full[6:], resumed):
        np.testing.assert_array_equal(x, y)
    vocab = plain.vocab_size
    bos = plain.manifest["tokenizer"]["bos_id"]
    for step, batch in enumerate(full):
        raw = plain.batch_at(step, 8, 16, seed=4)
        assert changed_positions(raw, batch) <= {0, 1}
        np.testing.assert_array_equal(batch[:, 2:], raw[:, 2:])
        assert (batch[:, 1] == bos).all() and (batch[:, 0] < vocab).all()
    firsts = np.concatenate([b[:, 0] for b in full])
    assert len(np.unique(firsts)) > 40  # random ids, not the text's first tokens
    assert pipe.tokens_seen(10) == 10 * 8 * 16


def test_max_train_tokens_caps_train_only(shard_dir):
    cfg = DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=8, max_train_tokens=200)
    pipe = DataPipeline(cfg)
    assert pipe.windows.n_tokens == 200
    allowed = set(TokenWindows(shard_dir).read(0, 200).tolist())
    stream = TokenWindows(shard_dir).read(0, 200)
    for step in range(30):
        for s in pipe.windows.window_starts(step, 8, 16, seed=0):
            assert s + 16 <= 200
        batch = pipe.batch_at(step)
        for row in batch:  # each window is a slice of the first 200 tokens
            assert any(np.array_equal(row, stream[i: i + 16]) for i in range(0, 185))
    assert allowed  # non-empty sanity
    val = DataPipeline(DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=8, split="val",
                                  max_train_tokens=200))
    assert val.windows.n_tokens == val.windows.total_tokens > 0


def test_max_train_tokens_spread_draws_the_cap_from_the_whole_split(shard_dir):
    cfg = DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=8, max_train_tokens=200,
                     max_train_tokens_spread=50)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    pipe = DataPipeline(cfg)
    full = TokenWindows(shard_dir)
    expected = TokenWindows(shard_dir, max_tokens=200, spread_block=50).read(0, 200)
    assert pipe.windows.n_tokens == 200 and pipe.windows.spread_block == 50
    np.testing.assert_array_equal(pipe.windows.read(0, 200), expected)
    np.testing.assert_array_equal(expected[150:], full.read(3 * full.n_tokens // 4, 50))  # the last block
    for step in range(10):
        batch = pipe.batch_at(step)
        for row, s in zip(batch, pipe.windows.window_starts(step, 8, 16, seed=0)):
            np.testing.assert_array_equal(row, expected[s: s + 16])
    val = DataPipeline(DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=8, split="val",
                                  max_train_tokens=200, max_train_tokens_spread=50))
    assert val.windows.n_tokens == val.windows.total_tokens > 0  # the cap is for the train split only
    with pytest.raises(ValueError, match="max_train_tokens_spread needs max_train_tokens"):
        DataConfig(shard_dir="x", max_train_tokens_spread=50)
    with pytest.raises((TypeError, ValueError), match="max_train_tokens_spread"):
        DataConfig(shard_dir="x", seq_len=16, max_train_tokens=200, max_train_tokens_spread=0)


def test_pipeline_checks_ids_against_the_tokenizer(shard_dir):
    with pytest.raises(ValueError, match="token_id=5000 is not below the tokenizer's vocab_size"):
        DataPipeline(DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=2,
                                transforms=[{"kind": "fixed_token", "positions": [0], "token_id": 5000}]))
    with pytest.raises(ValueError, match="vocab_size=99999 exceeds"):
        DataPipeline(DataConfig(shard_dir=str(shard_dir), seq_len=16, batch_size=2,
                                transforms=[{"kind": "random_tokens", "positions": [0], "vocab_size": 99999}]))
