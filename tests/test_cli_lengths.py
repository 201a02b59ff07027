"""`sinkinterp lengths`: a result folder whose numbers equal `sinkinterp measure` on the prefixes,
the defaults, clear errors (exit 2, no results.json)."""

import hashlib
import json
import re

import numpy as np
import pytest

from sinkinterp import cli
from sinkinterp.inputs import make_tokens
from sinkinterp.loading import load_model


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lengths_equal_measure_on_the_prefixes(tmp_path, capsys):
    out = tmp_path / "l"
    common = ["--model", "toy-kv-bias", "--prepend-bos", "--num-seqs", "6", "--seed", "2"]
    code, stdout, _ = run(["lengths", *common, "--seq-len", "48", "--lengths", "12", "48", "--out", str(out)], capsys)
    assert code == 0, stdout
    res = json.loads((out / "results.json").read_text())
    assert res["lengths"] == list(range(2, 49)) and res["table_lengths"] == [12, 48]
    assert sorted(res["by_length"]) == ["12", "48"] and res["prepend_bos"] is True
    # the 12-token prefixes of the same inputs (checked by their hash), measured alone
    lm = load_model("toy-kv-bias")
    ids = make_tokens("natural", seq_len=48, num_seqs=6, seed=2, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer,
                      prepend_bos=True, bos_token_id=lm.bos_token_id)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tokens_sha256"] == hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()
    ref_dir = tmp_path / "m"
    np.save(tmp_path / "ids12.npy", ids[:, :12])
    assert run(["measure", "--model", "toy-kv-bias", "--tokens", str(tmp_path / "ids12.npy"), "--no-figures",
                "--out", str(ref_dir)], capsys)[0] == 0
    ref = json.loads((ref_dir / "results.json").read_text())
    i = res["lengths"].index(12)
    np.testing.assert_allclose(res["sink_pct"][i], ref["sink_pct"], atol=1e-9)
    assert res["sink_bias_pct"][i] == pytest.approx(ref["sink_bias_pct"], abs=1e-9)
    np.testing.assert_allclose(res["by_length"]["12"]["alpha"], ref["alpha"], atol=1e-6)
    np.testing.assert_allclose(res["by_length"]["12"]["massive_ratio"], ref["norms"]["resid"]["massive_ratio"],
                               rtol=1e-6)
    assert (out / "sink_by_length.png").read_bytes()[:4] == b"\x89PNG"
    assert "Sink_*" in stdout and stdout.count("\n48 ") == 1


def test_defaults_follow_the_model_context(tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, _ = run(["lengths", "--inputs", "random", "--num-seqs", "2", "--no-figures", "--out", str(out)],
                          capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seq_len"] == 64 and res["table_lengths"] == [8, 16, 32, 64]  # toy-softmax: n_ctx 64
    assert res["sink_bias_pct"] is None and not (out / "sink_by_length.png").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lengths"] == [8, 16, 32, 64] and cfg["n_ctx"] == 64


@pytest.mark.parametrize("extra, match", [
    (["--seq-len", "65"], "--seq-len: T must be <= the model's n_ctx=64"),
    (["--seq-len", "32", "--lengths", "8", "40"], "--lengths: every length must be <= T = 32"),
    (["--lengths", "1"], "--lengths: .*>= 2"),
    (["--seq-len", "8", "--k-max", "9"], "--k-max: k must be <= T = 8"),
    (["--first-keys", "3"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_without_results(tmp_path, capsys, extra, match):
    out = tmp_path / "bad"
    try:
        code, _, err = run(["lengths", "--inputs", "random", "--num-seqs", "1", *extra, "--out", str(out)], capsys)
    except SystemExit as exc:  # argparse
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    assert re.search(match, err), err
    assert not (out / "results.json").exists()


def test_rerun_repeats_a_lengths_folder(tmp_path, capsys):
    out, again = tmp_path / "a", tmp_path / "b"
    assert run(["lengths", "--inputs", "random", "--seq-len", "24", "--num-seqs", "3", "--no-figures",
                "--out", str(out)], capsys)[0] == 0
    assert run(["rerun", str(out), "--out", str(again)], capsys)[0] == 0
    first, second = (json.loads((d / "results.json").read_text()) for d in (out, again))
    assert first["sink_pct"] == second["sink_pct"] and first["table_lengths"] == [8, 16, 24]


def test_a_prefix_lm_starts_at_its_prefix(tmp_path, capsys):
    from sinkinterp.models import save_checkpoint
    from sinkinterp.models.testing import tiny_model

    save_checkpoint(tmp_path / "ck", tiny_model("prefix").float())  # prefix_len 5
    common = ["lengths", "--model", str(tmp_path / "ck"), "--inputs", "random", "--seq-len", "20", "--num-seqs", "2",
              "--no-figures"]
    code, _, err = run([*common, "--lengths", "4", "20", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--lengths: this model is measured from length 5 on" in err
    assert not (tmp_path / "bad" / "results.json").exists()
    assert run([*common, "--out", str(tmp_path / "ok")], capsys)[0] == 0
    res = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert res["lengths"][0] == 5 and res["table_lengths"] == [8, 16, 20]
