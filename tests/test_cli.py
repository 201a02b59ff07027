"""`sinkinterp measure / report / rerun`: the result-folder contract and clear errors on bad input."""

import json
import re

import numpy as np
import pytest

from sinkinterp import builtin, cli

RESULT_KEYS = {"sink_pct", "sink_bias_pct", "alpha", "eps", "seq_len", "num_seqs"}


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_measure_random_writes_result_folder(tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, _ = run(["measure", "--model", "default", "--inputs", "random", "--seq-len", "16",
                           "--num-seqs", "6", "--eps", "0.2", "--out", str(out)], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= res.keys()
    assert len(res["sink_pct"]) == 10 and res["seq_len"] == 16 and res["num_seqs"] == 6
    assert res["sink_bias_pct"] is None
    assert np.array(res["alpha"]).shape == (4, 4)
    assert res["eps"] == 0.2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["inputs"] == "random" and cfg["prepend_bos"] is False
    assert cfg["model_info"]["weight_processing"]["fold_ln"] is False
    for fig in ("alpha_heatmap.png", "norms.png", "sink_by_position.png", "first_token_by_query.png", "qk.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    assert "Sink_1" in stdout


def test_measure_first_keys_equals_the_full_measurement(tmp_path, capsys):
    base = ["measure", "--inputs", "random", "--seq-len", "12", "--num-seqs", "4", "--eps", "0.1", "--no-figures"]
    assert run([*base, "--out", str(tmp_path / "full")], capsys)[0] == 0
    assert run([*base, "--first-keys", "3", "--out", str(tmp_path / "first")], capsys)[0] == 0
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    assert first["first_keys"] == 3 and full["first_keys"] is None
    assert first["sink_pct_by_key"] == full["sink_pct_by_key"][:3] and len(first["sink_pct"]) == 3
    np.testing.assert_allclose(np.array(first["alpha_by_key"]), np.array(full["alpha_by_key"])[..., :3], atol=1e-7)
    assert json.loads((tmp_path / "first" / "config.json").read_text())["first_keys"] == 3


def test_attn_backend_changes_the_path_not_the_numbers(tmp_path, capsys, monkeypatch):
    """--attn-backend reference materializes every pattern (the fused path patched to fail) and
    gives the numbers of the default fused path; the choice is recorded with the model."""
    from sinkinterp.models.attention import ATTN_BACKENDS, Attention

    assert cli.ATTN_BACKEND_CHOICES == ATTN_BACKENDS
    base = ["measure", "--model", "toy-kv-bias", "--inputs", "random", "--seq-len", "12", "--num-seqs", "4",
            "--eps", "0.1", "--no-figures"]
    assert run([*base, "--out", str(tmp_path / "auto")], capsys)[0] == 0
    monkeypatch.setattr(Attention, "_attend_sdpa", lambda *a, **k: pytest.fail("fused path used"))
    assert run([*base, "--attn-backend", "reference", "--out", str(tmp_path / "ref")], capsys)[0] == 0
    auto, ref = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("auto", "ref"))
    assert ref["sink_pct"] == auto["sink_pct"] and ref["sink_bias_pct"] == auto["sink_bias_pct"]
    assert auto["sink_bias_pct"] > 0  # the k* slot holds attention: a comparison that can differ
    np.testing.assert_allclose(np.array(ref["alpha_by_key"]), np.array(auto["alpha_by_key"]), atol=1e-6)
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert cfg["model_info"]["attn_backend"] == "reference"


def test_tokens_file_used_exactly_and_rerun_reproduces(tmp_path, capsys):
    ids = np.random.default_rng(0).integers(0, 258, size=(5, 12))
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "a"
    assert run(["measure", "--tokens", str(tmp_path / "ids.npy"), "--out", str(out)], capsys)[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    import hashlib

    assert cfg["tokens_sha256"] == hashlib.sha256(ids.astype(np.int64).tobytes()).hexdigest()
    assert cfg["seq_len"] == 12 and cfg["num_seqs"] == 5
    assert run(["rerun", str(out), "--out", str(tmp_path / "b")], capsys)[0] == 0
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["alpha"] == b["alpha"] and a["sink_pct"] == b["sink_pct"]


def test_prepend_bos_puts_bos_first(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "n"
    code, _, _ = run(["measure", "--model", "tiny-llama-untrained", "--inputs", "natural", "--text", str(text),
                      "--seq-len", "20", "--num-seqs", "3", "--prepend-bos", "--no-figures", "--out", str(out)], capsys)
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prepend_bos"] is True and cfg["model_info"]["bos_token_id"] == 256


def test_report_runs_three_input_kinds(tmp_path, capsys):
    code, stdout, _ = run(["report", "--seq-len", "16", "--num-seqs", "4", "--no-figures",
                           "--out", str(tmp_path / "rep")], capsys)
    assert code == 0
    # the default is every shipped trained model, each measured with BOS first as it was trained
    shipped = list(builtin.shipped_models())
    assert shipped == ["toy-softmax", "toy-kv-bias", "toy-sigmoid"]
    for name in shipped:
        for kind in ("natural", "random", "repeat"):
            assert (tmp_path / "rep" / name / kind / "results.json").is_file()
            assert re.search(rf"^{name}\s+{kind}\s", stdout, re.M)
    text = (tmp_path / "rep" / "report.txt").read_text()
    assert text.count("BOS prepended (trained with BOS first)") == len(shipped) and "untrained" not in text
    # one model: its result folders directly under --out
    assert run(["report", "--model", "tiny-llama-untrained", "--seq-len", "8", "--num-seqs", "2", "--no-figures",
                "--out", str(tmp_path / "rep2")], capsys)[0] == 0
    assert "untrained" in (tmp_path / "rep2" / "report.txt").read_text()
    assert (tmp_path / "rep2" / "natural" / "results.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/folder"], "unknown model spec"),
    (["--model", "gpt2"], "never downloads"),
    (["--model", "missing.gguf"], "GGUF file not found"),
    (["--tokens", "missing.npy"], "tokens file not found"),
    (["--inputs", "random", "--k-max", "20", "--seq-len", "8"], "k must be <= T"),
    (["--inputs", "random", "--first-keys", "9", "--seq-len", "8"], "--first-keys: K must be <= T"),
    (["--inputs", "random", "--first-keys", "2", "--k-max", "3"], "k must be <= --first-keys = 2"),
    (["--inputs", "random", "--text", "x.txt"], "--text only applies"),
    (["--inputs", "natural", "--text", "missing.txt"], "text file not found"),
    (["--model", "tiny-llama-untrained", "--attn-backend", "triton"],
     "--attn-backend: 'triton' applies to sinkinterp models only; 'tiny-llama-untrained' is a builtin model"),
    (["--model", "tiny-llama-untrained", "--gguf-context", "4096"],
     "--gguf-context: only for a GGUF file, but --model tiny-llama-untrained is a builtin model"),
])
def test_bad_input_stops_with_clear_message_and_no_results(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["measure", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--eps", "1.0"], "open interval"),
    (["--eps", "0"], "open interval"),
    (["--seq-len", "1"], ">= 2"),
    (["--inputs", "sometimes"], "invalid choice"),
    (["--attn-backend", "fast"], "invalid choice: 'fast'"),
    (["--gguf-context", "0"], "--gguf-context"),
])
def test_argument_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["measure", *args, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_ids_outside_vocabulary_and_bos_conflict(tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.full((2, 8), 300))
    code, _, err = run(["measure", "--model", "tiny-llama-untrained", "--tokens", str(tmp_path / "big.npy"),
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "[0, 257]" in err
    np.save(tmp_path / "ok.npy", np.zeros((2, 8), dtype=np.int64))
    code, _, err = run(["measure", "--tokens", str(tmp_path / "ok.npy"), "--prepend-bos",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--prepend-bos" in err
    np.save(tmp_path / "flat.npy", np.zeros(8, dtype=np.int64))
    code, _, err = run(["measure", "--tokens", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "shape" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_data_subcommand_is_delegated(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "--help"])
    assert exc.value.code == 0
    assert "build-tokenizer" in capsys.readouterr().out
