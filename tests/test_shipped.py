"""Shipping trained runs as built-in models: scripts/ship_models.py, the ``default`` name, and the
report over several models (BOS policy taken from how each model was trained)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

from sinkinterp import builtin, cli
from sinkinterp.loading import load_model, resolve_spec
from sinkinterp.models import load_checkpoint
from sinkinterp.train import train
from sinkinterp.train.testing import make_tiny_shards, tiny_train_config


def _ship_module():
    return load_script("scripts/ship_models.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    shards = make_tiny_shards(root / "shards")
    bos = tiny_train_config(shards, data={"transforms": [{"kind": "fixed_token", "positions": [0], "token_id": "bos"}]})
    kv = tiny_train_config(shards, model={"attn_bias": "kv"})
    train(bos, root / "bos", verbose=False)
    train(kv, root / "kv", verbose=False)
    return root


@pytest.fixture
def shipped(runs, tmp_path, monkeypatch):
    dest = tmp_path / "models"
    assert _ship_module().main([f"toy-softmax={runs / 'bos'}", f"toy-kv-bias={runs / 'kv'}", "--dest", str(dest)]) == 0
    monkeypatch.setattr(builtin, "SHIPPED_DIR", dest)
    return dest


def test_ship_writes_complete_bf16_folders_and_nothing_else(runs, shipped):
    assert sorted(p.name for p in shipped.iterdir()) == ["toy-kv-bias", "toy-softmax"]  # no temporary folders
    folder = shipped / "toy-softmax"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "metrics.jsonl", "model.safetensors", "tokenizer.json", "train_config.json"]
    info = json.loads((folder / "config.json").read_text())
    assert info["storage_dtype"] == "bfloat16" and info["param_dtype"] == "float32"
    assert info["extra"]["shipped_from"] == {"run": "bos", "checkpoint": "step_0000008"}
    original = load_checkpoint(runs / "bos" / "checkpoints" / "step_0000008")
    loaded = load_checkpoint(folder)
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.to(torch.bfloat16).float(), atol=0, rtol=0, msg=name)
    with pytest.raises(SystemExit, match="NAME=RUN_DIR"):
        _ship_module().main(["no-equals-sign"])
    with pytest.raises(SystemExit, match="no checkpoints/latest"):
        _ship_module().main([f"x={shipped}", "--dest", str(shipped.parent / "other")])


def test_default_names_the_shipped_models(shipped):
    assert list(builtin.shipped_models()) == ["toy-softmax", "toy-kv-bias"]  # SHIPPED_MODELS order
    assert builtin.default_models() == ["toy-softmax", "toy-kv-bias"]
    assert resolve_spec("default") == ("sinkinterp", str(shipped / "toy-softmax"))
    assert resolve_spec("toy-kv-bias") == ("sinkinterp", str(shipped / "toy-kv-bias"))
    lm = load_model("toy-softmax")
    assert lm.info["trained"] and lm.info["bos_first"] and lm.info["step"] == 8
    assert "BOS first" in lm.info["note"] and lm.tokenizer is not None and lm.bos_token_id == 1
    assert load_model("toy-kv-bias").info["bos_first"] is False


def test_without_shipped_models_default_is_the_untrained_model(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "SHIPPED_DIR", tmp_path / "empty")
    assert builtin.default_models() == ["tiny-llama-untrained"]
    assert resolve_spec("default") == ("builtin", "tiny-llama-untrained")


def test_report_shows_every_shipped_model_with_its_bos_policy(shipped, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["report", "--seq-len", "12", "--num-seqs", "3", "--no-figures", "--out", str(out)]) == 0
    text = (out / "report.txt").read_text()
    assert text == capsys.readouterr().out.split("sinkinterp report", 1)[1].join(["sinkinterp report", ""])
    assert "toy-softmax (" in text and "BOS prepended (trained with BOS first)" in text
    assert "toy-kv-bias (" in text and ": no BOS;" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("toy-")]
    assert [(r[0], r[1]) for r in rows] == [(m, k) for m in ("toy-softmax", "toy-kv-bias")
                                            for k in ("natural", "random", "repeat")]
    assert all(r[4] == "-" for r in rows if r[0] == "toy-softmax") and all(r[4] != "-" for r in rows[3:])
    cfg = json.loads((out / "toy-softmax" / "natural" / "config.json").read_text())
    assert cfg["prepend_bos"] is True
    tokens_first = json.loads((out / "toy-softmax" / "random" / "results.json").read_text())
    assert tokens_first["prepend_bos"] is True
    assert json.loads((out / "toy-kv-bias" / "random" / "config.json").read_text())["prepend_bos"] is False


def test_a_checkpoint_inside_a_run_finds_its_training_tokenizer(tmp_path, monkeypatch):
    """No tokenizer.json beside the weights: the tokenizer of the run's shard folder is used, its
    relative path resolved against the working directory or a folder above the checkpoint."""
    make_tiny_shards(tmp_path / "data" / "shards")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_train_config("data/shards", steps=2, eval_every=2, sink_every=2)
    train(cfg, tmp_path / "runs" / "r", verbose=False)
    ckpt = tmp_path / "runs" / "r" / "checkpoints" / "step_0000002"
    assert not (ckpt / "tokenizer.json").exists()
    for cwd in (tmp_path, tmp_path / "runs"):  # relative to the working directory, then to a parent
        monkeypatch.chdir(cwd)
        lm = load_model(str(ckpt))
        assert lm.tokenizer is not None and lm.bos_token_id == 1
        assert Path(lm.info["tokenizer_file"]).resolve() == (tmp_path / "data" / "shards" / "tokenizer.json")


def test_report_tells_checkpoints_of_different_runs_apart(runs, tmp_path, capsys):
    a, b = (str(runs / r / "checkpoints" / "step_0000008") for r in ("bos", "kv"))
    out = tmp_path / "rep"
    assert cli.main(["report", "--model", a, b, "--no-figures",
                     "--seq-len", "12", "--num-seqs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bos-checkpoints-step_0000008",
                                                                    "kv-checkpoints-step_0000008"]
    rows = [line.split()[0] for line in (out / "report.txt").read_text().splitlines() if "-checkpoints-" in line]
    assert rows.count("bos-checkpoints-step_0000008") == 3 and rows.count("kv-checkpoints-step_0000008") == 3


# ---------------------------------------------------------------------------------------
# the models shipped in sinkinterp/assets/models (issue 5)
# ---------------------------------------------------------------------------------------
def _measure_shipped(name, kind="natural"):
    from sinkinterp.inputs import make_tokens
    from sinkinterp.measure import measure

    lm = load_model(name)
    assert lm.info["bos_first"]  # trained with BOS first in every window: measured the same way
    tokens = make_tokens(kind, seq_len=64, num_seqs=100, seed=0, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer,
                         prepend_bos=True, bos_token_id=lm.bos_token_id)
    return measure(lm.model, tokens, eps=0.3, qk_heads="none")


def test_the_shipped_softmax_model_sinks_on_token_1():
    """The softmax baseline: a clear first-token sink at the paper's protocol (T = 64, eps 0.3, the
    shipped natural text), none on token 2, and a massive activation on token 1."""
    report = _measure_shipped("toy-softmax")
    assert report.sink_pct[0] > 12.0  # 18.1% when shipped
    assert report.sink_pct[1] < 1.0
    assert report.sink_bias_pct is None
    assert max(report.norms["resid"]["massive_ratio"]) > 4.0  # 5.6 when shipped


def test_the_shipped_kv_bias_model_sinks_on_k_star_instead():
    """The same model with a learnable per-head k*/v* slot: the sink sits on k*, not on token 1
    (the paper's key-bias finding: Sink_* 72.8%, Sink_1 0.04% at 60M)."""
    report = _measure_shipped("toy-kv-bias")
    assert report.sink_bias_pct > 25.0  # 37.2% when shipped
    assert report.sink_pct[0] < 1.0  # 0.00 when shipped
    assert report.alpha_bias.max() > 0.5


def test_measure_points_to_prepend_bos_for_a_model_trained_with_it(tmp_path, capsys):
    assert cli.main(["measure", "--model", "toy-softmax", "--inputs", "random", "--seq-len", "8", "--num-seqs", "2",
                     "--no-figures", "--out", str(tmp_path / "a")]) == 0
    assert "add --prepend-bos" in capsys.readouterr().err
    assert cli.main(["measure", "--model", "toy-softmax", "--inputs", "random", "--seq-len", "8", "--num-seqs", "2",
                     "--prepend-bos", "--no-figures", "--out", str(tmp_path / "b")]) == 0
    assert "add --prepend-bos" not in capsys.readouterr().err


def test_the_shipped_sigmoid_model_has_no_sink():
    """Sigmoid attention without normalization: no first-token sink (the paper: Sink_1 0.44% at 60M)
    and no massive activation (its invariant: no massive activations <=> no sink)."""
    report = _measure_shipped("toy-sigmoid")
    assert report.sink_pct[0] < 1.0  # 0.00 when shipped
    assert max(report.norms["resid"]["massive_ratio"]) < 2.5  # 1.3 when shipped, 5.6 for toy-softmax
