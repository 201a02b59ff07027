"""`sinkinterp stream`: a result folder whose numbers equal the Python API, the default settings,
clear errors (exit 2, no results.json)."""

import json

import numpy as np
import pytest
import torch

from sinkinterp import cli
from sinkinterp.cli_stream import parse_cache_spec
from sinkinterp.inputs import make_tokens
from sinkinterp.loading import load_model
from sinkinterp.streaming import stream_loss

SMALL = ["--seq-len", "72", "--num-seqs", "2", "--inputs", "random", "--seed", "3"]


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stream_writes_a_result_folder_equal_to_the_api(tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, _ = run(["stream", *SMALL, "--cache", "6+1", "6,recompute", "6+1,original", "--out", str(out)],
                          capsys)
    assert code == 0, stdout
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["settings"]] == ["6+1", "6,recompute", "6+1,original"]
    assert res["length"] == 72 and res["n_ctx"] == 64
    lm = load_model("default")
    tokens = torch.as_tensor(make_tokens("random", seq_len=72, num_seqs=2, seed=3, vocab_size=lm.d_vocab))
    with torch.no_grad():
        ref = stream_loss(lm.model, tokens, window=6, n_sink=1)
    got = res["settings"][0]
    np.testing.assert_allclose(got["curve"], ref.nll.mean(0).numpy(), atol=1e-6)
    assert got["mean_nll_within"] == pytest.approx(ref.mean_nll(0, 63), abs=1e-6)
    assert got["mean_nll_past"] == pytest.approx(ref.mean_nll(63), abs=1e-6)
    np.testing.assert_allclose(got["first_attention"], ref.first_attention.numpy(), atol=1e-6)
    assert res["settings"][1]["first_attention"] is None  # re-computation keeps no cache
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["cache"] == ["6+1", "6,recompute", "6+1,original"] and cfg["n_ctx"] == 64
    assert (out / "stream_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "6+1,original" in stdout and "targets >= 64" in stdout


def test_default_settings_follow_the_context(tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, _ = run(["stream", "--seq-len", "40", "--num-seqs", "1", "--inputs", "random", "--no-figures",
                           "--out", str(out)], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["settings"]] == ["32", "32+1", "32+4", "32+4,recompute"]
    assert all(r["mean_nll_past"] is None for r in res["settings"])  # the stream stays inside n_ctx
    assert not (out / "stream_loss.png").exists()


@pytest.mark.parametrize("spec,match", [("0", "W >= 1"), ("8+x", "W or W\\+K"), ("8,dense", "recompute"),
                                        ("60+8", "n_ctx=64")])
def test_bad_cache_specs_are_usage_errors(tmp_path, capsys, spec, match):
    out = tmp_path / "bad"
    code, _, err = run(["stream", *SMALL, "--cache", spec, "--out", str(out)], capsys)
    assert code == 2 and "--cache" in err
    assert __import__("re").search(match, err), err
    assert not (out / "results.json").exists()


def test_parse_cache_spec():
    assert parse_cache_spec("16") == {"window": 16, "n_sink": 0, "policy": "rolling", "positions": "cache"}
    assert parse_cache_spec("16+4,recompute")["policy"] == "recompute"
    assert parse_cache_spec("16+1,original")["positions"] == "original"
    for bad in ("", "+4", "16+-1", "16,original,recompute"):
        with pytest.raises(ValueError, match="expected W or W\\+K"):
            parse_cache_spec(bad)


def test_a_cache_too_big_for_the_model_stops_before_any_stream(tmp_path, capsys):
    code, stdout, err = run(["stream", *SMALL, "--cache", "8", "60+8", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--cache 60+8" in err and "n_ctx=64" in err
    assert "-- cache" not in stdout  # nothing ran
