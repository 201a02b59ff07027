"""Shards: manifest correctness, train/val split rules, checksums, compressed pack round trip."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import random
import tarfile

import numpy as np
import pytest

from sinkinterp.data.corpus import Corpus
from sinkinterp.data.shards import (
    ChecksumError,
    open_split,
    pack_compressed,
    read_manifest,
    unpack_compressed,
    verify_shards,
    write_shards,
)
from sinkinterp.data.tokenizer import load_tokenizer, train_bpe

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + f" #{i}" for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(documents(200), vocab_size=320)


def expected_stream(tok, docs) -> np.ndarray:
    return np.array([i for d in docs for i in tok.encode(d) + [tok.eos_id]], dtype=np.int64)


def read_split(shard_dir, split) -> np.ndarray:
    maps = open_split(shard_dir, split)
    return np.concatenate([np.asarray(m, dtype=np.int64) for m in maps]) if maps else np.zeros(0, np.int64)


def test_manifest_describes_the_shards_exactly(tok, tmp_path):
    docs = documents(50)
    m = write_shards(docs, tok, tmp_path / "s", shard_tokens=300, val_policy="none")
    stream = expected_stream(tok, docs)
    assert m == read_manifest(tmp_path / "s")
    assert m["total_tokens"] == stream.size and m["documents"] == 50
    shards = m["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == [f"train_{i:06d}.bin" for i in range(len(shards))]
    assert [s["tokens"] for s in shards[:-1]] == [300] * (len(shards) - 1) and 0 < shards[-1]["tokens"] <= 300
    for s in shards:
        raw = (tmp_path / "s" / s["file"]).read_bytes()
        assert len(raw) == 2 * s["tokens"] and hashlib.sha256(raw).hexdigest() == s["sha256"]
    got = np.concatenate([np.fromfile(tmp_path / "s" / s["file"], dtype="<u2") for s in shards])
    np.testing.assert_array_equal(got, stream)  # docs in order, each followed by EOS
    assert int((got == tok.eos_id).sum()) == 50 and got[-1] == tok.eos_id
    assert m["tokenizer"]["vocab_size"] == tok.vocab_size and m["tokenizer"]["eos_id"] == tok.eos_id
    assert m["splits"]["val"] == {"tokens": 0, "shards": []}
    reloaded = load_tokenizer(tmp_path / "s" / "tokenizer.json")
    assert reloaded.encode(docs[0]) == tok.encode(docs[0])
    assert not list((tmp_path / "s").glob("*.tmp")) and not list((tmp_path / "s").glob(".*"))


def test_shards_from_a_local_hf_tokenizer_folder(tok, tmp_path):
    tok.to_hf().save_pretrained(tmp_path / "hf")
    hf = load_tokenizer(tmp_path / "hf")
    docs = documents(20)
    m = write_shards(docs, hf, tmp_path / "s", val_policy="none")
    np.testing.assert_array_equal(read_split(tmp_path / "s", "train"), expected_stream(tok, docs))
    assert m["tokenizer"]["source"] == str(tmp_path / "hf") and m["tokenizer"]["eos_id"] == tok.eos_id
    assert load_tokenizer(tmp_path / "s" / "tokenizer.json").encode(docs[1]) == tok.encode(docs[1])


def test_interleave_split_routes_every_nth_block_to_val(tok, tmp_path):
    docs = documents(80)
    stream = expected_stream(tok, docs)
    block, every = 64, 4
    m = write_shards(docs, tok, tmp_path / "s", shard_tokens=500, val_every=every, val_block_tokens=block)
    blocks = [stream[i: i + block] for i in range(0, stream.size, block)]
    want_val = np.concatenate([b for i, b in enumerate(blocks) if (i + 1) % every == 0])
    want_train = np.concatenate([b for i, b in enumerate(blocks) if (i + 1) % every != 0])
    np.testing.assert_array_equal(read_split(tmp_path / "s", "val"), want_val)
    np.testing.assert_array_equal(read_split(tmp_path / "s", "train"), want_train)
    assert m["splits"]["val"]["tokens"] == want_val.size and m["total_tokens"] == stream.size
    assert m["split"] == {"policy": "interleave", "val_every": every, "val_block_tokens": block}


def test_tail_split_holds_out_the_last_tokens(tok, tmp_path):
    docs = documents(40)
    stream = expected_stream(tok, docs)
    write_shards(docs, tok, tmp_path / "s", shard_tokens=128, val_policy="tail", val_tokens=100)
    np.testing.assert_array_equal(read_split(tmp_path / "s", "val"), stream[-100:])
    np.testing.assert_array_equal(read_split(tmp_path / "s", "train"), stream[:-100])
    with pytest.raises(ValueError, match="val_tokens"):
        write_shards(docs[:2], tok, tmp_path / "t", val_policy="tail", val_tokens=10_000)


def test_corpus_summary_recorded_and_overwrite_rules(tok, tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    for i, d in enumerate(documents(10)):
        (src / f"{i:02d}.txt").write_text(d)
    (src / "dup.txt").write_text(documents(10)[3])
    m = write_shards(Corpus(src), tok, tmp_path / "s", shard_tokens=100, val_policy="none")
    assert m["source"]["corpus_summary"]["duplicates"] == 1 and m["documents"] == 10
    assert m["source"]["corpus_options"]["paths"] == [str(src)]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(documents(3), tok, tmp_path / "s", val_policy="none")
    old_count = len(m["splits"]["train"]["shards"])
    m2 = write_shards(documents(3), tok, tmp_path / "s", shard_tokens=100, val_policy="none", overwrite=True)
    assert len(m2["splits"]["train"]["shards"]) < old_count
    on_disk = sorted(p.name for p in (tmp_path / "s").glob("*.bin"))
    assert on_disk == [s["file"] for s in m2["splits"]["train"]["shards"]]  # stale shards removed
    verify_shards(tmp_path / "s")


def test_checksum_verification_catches_corruption(tok, tmp_path):
    write_shards(documents(30), tok, tmp_path / "s", shard_tokens=200, val_policy="none")
    verify_shards(tmp_path / "s")
    shard = tmp_path / "s" / "train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    verify_shards(tmp_path / "s", checksums=False)  # sizes still match
    with pytest.raises(ChecksumError, match="train_000001.bin: sha256"):
        verify_shards(tmp_path / "s")
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(ChecksumError, match="train_000001.bin: .* bytes"):
        verify_shards(tmp_path / "s", checksums=False)
    shard.unlink()
    with pytest.raises(ChecksumError, match="missing"):
        verify_shards(tmp_path / "s")


def test_pack_unpack_round_trip(tok, tmp_path):
    m = write_shards(documents(60), tok, tmp_path / "s", shard_tokens=256, val_every=3, val_block_tokens=50)
    info = pack_compressed(tmp_path / "s", tmp_path / "s.tar.xz", preset=6)
    assert info["bytes"] == (tmp_path / "s.tar.xz").stat().st_size < info["raw_bytes"]
    again = pack_compressed(tmp_path / "s", tmp_path / "again.tar.xz", preset=6)
    assert (tmp_path / "s.tar.xz").read_bytes() == (tmp_path / "again.tar.xz").read_bytes()  # reproducible
    assert again["bytes"] == info["bytes"]
    restored = unpack_compressed(tmp_path / "s.tar.xz", tmp_path / "r")
    assert restored == m
    for split in ("train", "val"):
        np.testing.assert_array_equal(read_split(tmp_path / "r", split), read_split(tmp_path / "s", split))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(p.name for p in (tmp_path / "s").iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        unpack_compressed(tmp_path / "s.tar.xz", tmp_path / "r")
    unpack_compressed(tmp_path / "s.tar.xz", tmp_path / "r", overwrite=True)
    verify_shards(tmp_path / "r")


def test_unpack_of_a_tampered_pack_fails_and_leaves_nothing(tok, tmp_path):
    write_shards(documents(20), tok, tmp_path / "s", shard_tokens=10_000, val_policy="none")
    pack_compressed(tmp_path / "s", tmp_path / "good.tar.xz", preset=1, extreme=False)
    # rebuild the archive with one byte of the shard changed
    with tarfile.open(tmp_path / "good.tar.xz", "r:xz") as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for info, data in members:
            if info.name.endswith(".bin"):
                data = bytes([data[0] ^ 1]) + data[1:]
            out.addfile(info, io.BytesIO(data))
    (tmp_path / "bad.tar.xz").write_bytes(lzma.compress(buf.getvalue()))
    with pytest.raises(ChecksumError, match="train_000000.bin: sha256"):
        unpack_compressed(tmp_path / "bad.tar.xz", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_vocab_too_large_for_uint16_is_refused_before_work(tmp_path):
    from tokenizers import Tokenizer, models

    from sinkinterp.data.tokenizer import TextTokenizer

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(70_000)}, unk_token="w1"))
    huge = TextTokenizer(words, eos_token="w0", bos_token=None, source="70k-word test vocabulary")
    assert huge.vocab_size == 70_000
    with pytest.raises(ValueError, match="uint16"):
        write_shards(["text"], huge, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_bad_split_arguments(tok, tmp_path):
    with pytest.raises(ValueError, match="val_policy"):
        write_shards(["a"], tok, tmp_path / "s", val_policy="random")
    with pytest.raises(ValueError, match="val_every"):
        write_shards(["a"], tok, tmp_path / "s", val_every=1)
    with pytest.raises(ValueError, match="val_tokens"):
        write_shards(["a"], tok, tmp_path / "s", val_policy="tail")
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path)
    with pytest.warns(UserWarning, match="validation split is empty"):
        write_shards(["a b c"], tok, tmp_path / "s")
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["splits"]["val"]["tokens"] == 0
