"""The data command line end to end on a tiny corpus: tokenizer, shards, pack, unpack, inspect."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from sinkinterp.data.cli import main
from sinkinterp.data.loader import TokenWindows
from sinkinterp.data.tokenizer import load_tokenizer


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture()
def corpus(tmp_path):
    rng = random.Random(0)
    words = "sun moon star sky sea land wind rain snow fire stone tree river hill".split()
    root = tmp_path / "corpus"
    for i in range(30):
        text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(5))
        path = root / f"pkg{i % 3}" / f"doc{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 5 == 0:
            path.with_suffix(".html.gz").write_bytes(gzip.compress(f"<html><p>{text}</p></html>".encode()))
        else:
            path.write_text(text)
    return root


def test_full_recipe_through_the_cli(corpus, tmp_path, capsys):
    tok_path = tmp_path / "tokenizer.json"
    code, out, err = run(capsys, "build-tokenizer", str(corpus), "--out", str(tok_path), "--vocab-size", "300")
    assert code == 0, err
    assert out["vocab_size"] == 300 and out["eos_id"] == 0 and out["corpus"]["documents"] == 30
    assert out["corpus"]["by_kind"] == {"html": 6, "text": 24}

    shards = tmp_path / "shards"
    code, out, err = run(capsys, "build-shards", str(corpus), "--tokenizer", str(tok_path), "--out", str(shards),
                         "--shard-tokens", "500", "--val-every", "4", "--val-block-tokens", "100")
    assert code == 0, err
    assert out["train_tokens"] + out["val_tokens"] == out["total_tokens"] > 1000
    assert out["val_tokens"] > 0 and out["shards"]["train"] > 1

    code, packed, err = run(capsys, "pack", str(shards), str(tmp_path / "d.tar.xz"))
    assert code == 0, err
    assert 0 < packed["bytes"] < packed["raw_bytes"]

    code, out, err = run(capsys, "unpack", str(tmp_path / "d.tar.xz"), str(tmp_path / "restored"))
    assert code == 0 and out["verified"], err
    code, info, err = run(capsys, "inspect", str(tmp_path / "restored"), "--verify")
    assert code == 0 and info["verified"] and info["total_tokens"] == out["total_tokens"]

    a, b = TokenWindows(shards), TokenWindows(tmp_path / "restored")
    np.testing.assert_array_equal(a.read(0, a.n_tokens), b.read(0, b.n_tokens))
    tok = load_tokenizer(tmp_path / "restored" / "tokenizer.json")
    text = tok.decode(b.read(0, 40))
    assert all(w in "sun moon star sky sea land wind rain snow fire stone tree river hill".split()
               for w in text.split())


def test_errors_exit_2_with_one_line(corpus, tmp_path, capsys):
    code, _, err = run(capsys, "unpack", str(tmp_path / "missing.tar.xz"), str(tmp_path / "x"))
    assert code == 2 and err.startswith("error: pack_file:")
    code, _, err = run(capsys, "build-shards", str(corpus), "--tokenizer", str(tmp_path / "none.json"),
                       "--out", str(tmp_path / "s"), "--val-policy", "tail")
    assert code == 2 and "--val-tokens is required" in err
    code, _, err = run(capsys, "inspect", str(tmp_path))
    assert code == 2 and "manifest.json" in err
    with pytest.raises(SystemExit) as exc:
        main(["build-tokenizer", str(corpus), "--out", "t.json", "--vocab-size", "10"])
    assert exc.value.code == 2 and "--vocab-size: must be an integer >= 258" in capsys.readouterr().err


def test_importing_the_data_package_stays_offline_and_light():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, sinkinterp.data, sinkinterp.data.cli\n"
            "heavy = [m for m in ('datasets', 'transformers', 'torch', 'huggingface_hub') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
