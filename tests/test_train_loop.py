"""The training loop on CPU: metrics.jsonl, sink tracking, exact resume, NaN stop, every variant
family learning, the CLI. Tiny models (2 layers, d_model 32, T 16) on a synthetic shard folder."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from sinkinterp.data.transforms import DataPipeline
from sinkinterp.models import SinkTransformer, load_checkpoint, read_checkpoint_info
from sinkinterp.train import METRIC_FIELDS, TrainingDiverged, read_metrics, train
from sinkinterp.train.cli import sweep_main, train_main
from sinkinterp.train.testing import make_tiny_shards, tiny_train_config
from sinkinterp.train.trainer import _StopOnSignal


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("shards"))


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------------------- metrics
def test_metrics_rows_checkpoint_and_final(shards, tmp_path):
    cfg = tiny_train_config(shards, steps=8, log_every=2, eval_every=4, sink_every=4, ckpt_every=4)
    res = train(cfg, tmp_path, verbose=False)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8]
    assert all(list(r) == list(METRIC_FIELDS) for r in rows)
    assert rows[0]["train_loss"] is None and rows[0]["val_loss"] is not None and rows[0]["sink1"] is not None
    for r in rows[1:]:
        assert math.isfinite(r["train_loss"]) and r["tokens_per_s"] > 0 and r["grad_norm"] > 0
        assert r["tokens_seen"] == r["step"] * 8 * 16
        assert r["mfu"] is None  # CPU
    assert [r["val_loss"] is not None for r in rows] == [True, False, True, False, True]
    assert [r["sink1"] is not None for r in rows] == [True, False, True, False, True]
    assert rows[-1]["lr"] == pytest.approx(0.1 * 3e-3)  # cosine ends at min_lr_ratio * lr
    # checkpoints: every 4 steps, optimizer state only in the newest, latest points at it
    ck = tmp_path / "checkpoints"
    assert (ck / "latest").read_text() == "step_0000008"
    assert not (ck / "step_0000004" / "optimizer.pt").exists()
    assert (ck / "step_0000008" / "optimizer.pt").exists()
    info = read_checkpoint_info(ck / "step_0000008")
    assert info["extra"]["step"] == 8 and info["extra"]["data_position"]["next_step"] == 8
    assert info["extra"]["train_config"] == cfg.to_dict()
    loaded = load_checkpoint(ck / "step_0000008")
    for k, v in res.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["step"] == 8 and final["val_loss"] == rows[-1]["val_loss"] and res.finished
    assert set(METRIC_FIELDS) <= set(final) and final["n_params"] == res.model.num_params()


@pytest.mark.parametrize("variant, has_bias", [("baseline", False), ("kv", True), ("sink_logit", True)])
def test_sink_tracking_values(shards, tmp_path, variant, has_bias):
    model = {} if variant == "baseline" else {"attn_bias": variant}
    cfg = tiny_train_config(shards, steps=2, log_every=2, eval_every=0, sink_every=2, model=model)
    train(cfg, tmp_path, verbose=False)
    rows = [r for r in read_metrics(tmp_path) if r["sink1"] is not None]
    assert [r["step"] for r in rows] == [0, 2]
    for r in rows:
        for key in ("sink1", "sink2", "massive_ratio"):
            assert isinstance(r[key], float) and math.isfinite(r[key])
        assert 0.0 <= r["sink1"] <= 100.0 and r["massive_ratio"] > 0
        assert (r["sink_bias"] is not None) == has_bias
        if has_bias:
            assert 0.0 <= r["sink_bias"] <= 100.0


def test_sink_every_zero_means_no_sink_columns(shards, tmp_path):
    train(tiny_train_config(shards, steps=2, sink_every=0), tmp_path, verbose=False)
    assert all(r["sink1"] is None for r in read_metrics(tmp_path))


# ------------------------------------------------------------------------------- resume
def test_resume_is_exact(shards, tmp_path):
    """2N steps in one go == N steps, stop, resume, N more: identical weights (float32, CPU)."""
    cfg = tiny_train_config(shards, steps=8, warmup_steps=2, log_every=3, eval_every=3, sink_every=5,
                            model={"attn_bias": "kv"})
    full = train(cfg, tmp_path / "full", verbose=False)
    part = train(cfg, tmp_path / "split", until_step=4, verbose=False)
    assert part.step == 4 and not part.finished and not (tmp_path / "split" / "final.json").exists()
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text() == "step_0000004"
    rest = train(cfg, tmp_path / "split", verbose=False)
    assert rest.finished
    a = _weights(tmp_path / "full" / "checkpoints" / "step_0000008")
    b = _weights(tmp_path / "split" / "checkpoints" / "step_0000008")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["blocks.0.attn.W_Q"], SinkTransformer(cfg.model).state_dict()["blocks.0.attn.W_Q"])
    # the metrics agree where both logged the same thing
    fa = {r["step"]: r for r in read_metrics(tmp_path / "full")}
    fb = {r["step"]: r for r in read_metrics(tmp_path / "split")}
    assert fa[8]["val_loss"] == fb[8]["val_loss"] and fa[8]["sink1"] == fb[8]["sink1"]
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [0, 3, 4, 5, 6, 8]


def test_init_from_copies_the_parameters_keeps_added_slots_fresh_and_resumes_exactly(shards, tmp_path):
    """``init_from`` starts a run from a trained model: every parameter copied (its step-0 validation loss
    is the source's final one), a slot the source lacks left at its fresh initialization, a held sink
    logit taken from the new config, what was done recorded in init_from.json; once the run has a
    checkpoint, resuming takes over and continues exactly."""
    from sinkinterp.train.trainer import init_weights_from

    src = train(tiny_train_config(shards, steps=4), tmp_path / "src", verbose=False)
    assert src.finished
    source = load_checkpoint(tmp_path / "src" / "checkpoints" / "step_0000004")
    cfg = tiny_train_config(shards, steps=4, init_from=str(tmp_path / "src"))  # a run folder: its newest checkpoint
    train(cfg, tmp_path / "ft", verbose=False)
    rows = {r["step"]: r for r in read_metrics(tmp_path / "ft")}
    assert rows[0]["val_loss"] == pytest.approx(read_metrics(tmp_path / "src")[-1]["val_loss"], abs=1e-6)
    done = json.loads((tmp_path / "ft" / "init_from.json").read_text())
    assert done["source"] == str(tmp_path / "src" / "checkpoints" / "step_0000004") and done["source_step"] == 4
    assert done["copied"] == sorted(n for n, _ in source.named_parameters()) and done["fresh"] == []
    # the same run stopped after one update and resumed: the checkpoint's weights, not the source's again
    train(cfg, tmp_path / "split", until_step=1, verbose=False)
    train(cfg, tmp_path / "split", verbose=False)
    a, b = (_weights(tmp_path / d / "checkpoints" / "step_0000004") for d in ("ft", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a learned sink logit added: copied weights equal the source's, the logits keep their init
    learned = SinkTransformer(tiny_train_config(shards, model={"attn_bias": "sink_logit", "sink_logit_init": -1.0}).model)
    done = init_weights_from(learned, tmp_path / "src" / "checkpoints" / "step_0000004")
    assert done["fresh"] == ["blocks.0.attn.sink_logit", "blocks.1.attn.sink_logit"]
    theirs = dict(source.named_parameters())
    for name, p in learned.named_parameters():
        assert torch.equal(p, theirs[name]) if name in theirs else bool((p == -1.0).all()), name
    # a held one comes from the new config (a buffer: never copied), also from a source that held it elsewhere
    train(tiny_train_config(shards, steps=2, model={"attn_bias": "sink_logit", "sink_logit_fixed": 0.0}),
          tmp_path / "held0", verbose=False)
    held = SinkTransformer(tiny_train_config(shards, model={"attn_bias": "sink_logit", "sink_logit_fixed": -1.0}).model)
    assert init_weights_from(held, tmp_path / "held0")["fresh"] == []
    assert all(bool((b.attn.sink_logit == -1.0).all()) for b in held.blocks)
    # a shipped model by its name, as every command names models
    from sinkinterp.builtin import shipped_models
    from sinkinterp.models import ModelConfig

    info = read_checkpoint_info(shipped_models()["toy-softmax"])
    shipped = SinkTransformer(ModelConfig.from_dict(info["model_config"]))
    done = init_weights_from(shipped, "toy-softmax")
    assert done["fresh"] == [] and done["source_step"] == info["extra"]["step"]

    # a source the new model has no place for, or of other shapes, or no model at all: clear errors
    train(tiny_train_config(shards, steps=2, model={"attn_bias": "kv"}), tmp_path / "kv", verbose=False)
    plain = SinkTransformer(tiny_train_config(shards).model)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match=r"init_from.*no parameter here for \['blocks.0.attn.k_star'"):
        init_weights_from(plain, tmp_path / "kv")
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())  # nothing copied
    wide = SinkTransformer(tiny_train_config(shards, model={"d_ff": 96}).model)
    with pytest.raises(ValueError, match=r"other shapes: \['blocks.0.mlp.W_in"):
        init_weights_from(wide, tmp_path / "src")
    with pytest.raises(FileNotFoundError, match="init_from.*neither a model folder"):
        train(tiny_train_config(shards, init_from=str(tmp_path / "nothing")), tmp_path / "bad", verbose=False)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    hf = tmp_path / "hf"  # a Hugging Face folder: not a model a run can start from
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="init_from.*is a hf model"):
        init_weights_from(plain, hf)


def test_triton_backend_trains_like_auto_and_may_change_on_resume(shards, tmp_path):
    """attn_backend="triton" (the fused sigmoid kernel, here in Triton's interpreter) trains to the
    weights of the plain path up to rounding; a run resumes with another backend."""
    pytest.importorskip("triton")
    cfg = tiny_train_config(shards, steps=4, warmup_steps=1, log_every=2, eval_every=0, sink_every=0,
                            ckpt_every=2, model={"attn_op": "sigmoid_norm", "attn_bias": "kv"})
    auto = train(cfg, tmp_path / "auto", verbose=False)
    part = train(cfg.replace(attn_backend="triton"), tmp_path / "fused", until_step=2, verbose=False)
    assert part.model.attn_backend == "triton"
    rest = train(cfg, tmp_path / "fused", verbose=False)  # resumed with "auto"
    assert rest.finished
    a = _weights(tmp_path / "auto" / "checkpoints" / "step_0000004")
    b = _weights(tmp_path / "fused" / "checkpoints" / "step_0000004")
    moved = max((a[k] - SinkTransformer(cfg.model).state_dict()[k]).abs().max().item() for k in a)
    assert moved > 1e-3
    # Adam turns a rounding difference in a near-zero gradient into a visible step, so the bound is
    # a small share of how far training moved the weights (about 8e-3 here), not float32 rounding:
    # on one CPU (AMD EPYC, AVX-512) a single entry of 2,048 differed by 1.1e-5
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=5e-3 * moved, rtol=1e-4, msg=k)
    assert auto.model.attn_backend == "auto"


def _signal_at_step(monkeypatch, step, signum=signal.SIGTERM):
    """Send ``signum`` to this process when the training loop asks for the batch of ``step`` (the
    held-out batches, read before the loop, come from a pipeline with another split)."""
    original = DataPipeline.batch_at

    def batch_at(self, s):
        if s == step and self.config.split == "train":
            os.kill(os.getpid(), signum)
        return original(self, s)

    monkeypatch.setattr(DataPipeline, "batch_at", batch_at)


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes_exactly(shards, tmp_path, monkeypatch):
    """A signal during step 3 (0-based) stops the run after that step with a checkpoint at 4 (not a
    multiple of log_every or ckpt_every); resuming gives the weights of an uninterrupted run."""
    cfg = tiny_train_config(shards, steps=8, warmup_steps=2, log_every=3, eval_every=3, sink_every=5,
                            ckpt_every=0)
    full = train(cfg, tmp_path / "full", verbose=False)
    before = signal.getsignal(signal.SIGTERM)
    _signal_at_step(monkeypatch, 3)
    part = train(cfg, tmp_path / "split", verbose=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert (part.step, part.finished, part.stopped_by) == (4, False, "SIGTERM")
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text() == "step_0000004"
    assert not (tmp_path / "split" / "final.json").exists()
    monkeypatch.undo()
    rest = train(cfg, tmp_path / "split", verbose=False)
    assert rest.finished and rest.stopped_by is None and full.stopped_by is None
    a = _weights(tmp_path / "full" / "checkpoints" / "step_0000008")
    b = _weights(tmp_path / "split" / "checkpoints" / "step_0000008")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_cli_exits_with_the_signal_status(shards, tmp_path, monkeypatch, capsys):
    cfg = tiny_train_config(shards, steps=6, sink_every=0)
    c = _write_cfg(tmp_path / "run.json", cfg)
    _signal_at_step(monkeypatch, 2, signal.SIGINT)
    assert train_main([str(c), "--out", str(tmp_path / "o")]) == 128 + signal.SIGINT
    out = capsys.readouterr().out
    assert "SIGINT: checkpoint saved at step 3" in out and "stopped at step 3" in out
    monkeypatch.undo()
    assert train_main([str(c), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert json.loads((tmp_path / "o" / "final.json").read_text())["step"] == 6


def test_a_second_signal_interrupts_at_once():
    stop = _StopOnSignal(enabled=True)
    with stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert not _StopOnSignal(enabled=False).enabled


def test_resume_refuses_a_changed_config_and_no_resume_refuses_a_used_folder(shards, tmp_path):
    cfg = tiny_train_config(shards, steps=4)
    train(cfg, tmp_path, until_step=2, verbose=False)
    with pytest.raises(ValueError, match=r"differs .* \['lr'\]"):
        train(cfg.replace(lr=1e-2), tmp_path, verbose=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, tmp_path, resume=False, verbose=False)
    train(cfg.replace(log_every=1), tmp_path, verbose=False)  # a resume-safe change


def test_resume_drops_rows_logged_after_the_checkpoint(shards, tmp_path):
    cfg = tiny_train_config(shards, steps=6, log_every=1, ckpt_every=2, sink_every=0, eval_every=0)
    train(cfg, tmp_path, until_step=4, verbose=False)
    # simulate a crash after step 5 was logged but before its checkpoint
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: (5 if k == "step" else None) for k in METRIC_FIELDS}) + "\n")
    train(cfg, tmp_path, verbose=False)
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [0, 1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------- divergence
def test_nan_loss_stops_with_the_step(shards, tmp_path, monkeypatch):
    real_forward = SinkTransformer.forward
    calls = {"n": 0}

    def forward(self, tokens, return_type="logits", loss_mask=None):
        out = real_forward(self, tokens, return_type=return_type, loss_mask=loss_mask)
        if torch.is_grad_enabled() and return_type == "loss":
            calls["n"] += 1
            if calls["n"] == 4:  # the 4th training update, step 3 (0-based)
                return out * float("nan")
        return out

    monkeypatch.setattr(SinkTransformer, "forward", forward)
    cfg = tiny_train_config(shards, steps=10, log_every=5, ckpt_every=2, sink_every=0, eval_every=0)
    with pytest.raises(TrainingDiverged, match=r"at step 3 .*stopped at step 4.*last checkpoint: step_0000002"):
        train(cfg, tmp_path, verbose=False)
    # no checkpoint of the diverged weights was written
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000002"


def test_huge_lr_diverges_with_a_clear_error(shards, tmp_path):
    cfg = tiny_train_config(shards, steps=30, lr=1e12, warmup_steps=0, grad_clip=None, log_every=30,
                            sink_every=0, eval_every=0)
    with pytest.raises(TrainingDiverged, match=r"non-finite \(NaN/inf\) at step \d+"):
        train(cfg, tmp_path, verbose=False)


# ------------------------------------------------------------------------------- variants learn
# every variant of the model family (one registry: sinkinterp/models/testing.py)
from sinkinterp.models.testing import VARIANTS as _MODEL_VARIANTS  # noqa: E402

# bias-removed configs describe ablations of trained models; training them is refused by design
VARIANTS = {k: v for k, v in _MODEL_VARIANTS.items() if "attn_bias_removed" not in v}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_learns(shards, tmp_path, name):
    cfg = tiny_train_config(shards, steps=12, lr=1e-2, warmup_steps=1, log_every=12, eval_every=0,
                            sink_every=0, eval_batches=1, model=VARIANTS[name])
    train(cfg, tmp_path, verbose=False)
    rows = read_metrics(tmp_path)
    start, end = rows[0]["val_loss"], rows[-1]["val_loss"]
    assert math.isfinite(end) and end < start - 0.3, (name, start, end)


def test_bfloat16_autocast_trains(shards, tmp_path):
    cfg = tiny_train_config(shards, steps=6, lr=1e-2, dtype="bfloat16", sink_every=6, eval_every=6)
    res = train(cfg, tmp_path, verbose=False)
    rows = read_metrics(tmp_path)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert next(res.model.parameters()).dtype == torch.float32  # master weights stay float32


def test_vocab_too_small_is_refused_before_training(shards, tmp_path):
    with pytest.raises(ValueError, match="d_vocab=100 is smaller than the tokenizer's vocab_size=300"):
        train(tiny_train_config(shards, model={"d_vocab": 100}), tmp_path, verbose=False)
    assert not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------- CLI
def _write_cfg(path, cfg):
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def test_train_cli(shards, tmp_path, capsys):
    cfg = tiny_train_config(shards, steps=4, sink_every=0)
    c = _write_cfg(tmp_path / "run.json", cfg)
    assert train_main([str(c), "--out", str(tmp_path / "o"), "--until-step", "2", "--quiet"]) == 0
    assert train_main([str(c), "--out", str(tmp_path / "o"), "--quiet", "--set", "log_every=1"]) == 0
    assert json.loads((tmp_path / "o" / "final.json").read_text())["step"] == 4
    assert train_main([str(c), "--out", str(tmp_path / "o"), "--no-resume", "--quiet"]) == 2
    assert train_main([str(c), "--out", str(tmp_path / "p"), "--set", "schedule=linear"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "schedule" in err and "cosine" in err


def test_sweep_cli(shards, tmp_path, capsys):
    a = _write_cfg(tmp_path / "wd01.json", tiny_train_config(shards, steps=3, sink_every=3, weight_decay=0.1))
    b = _write_cfg(tmp_path / "kv.json", tiny_train_config(shards, steps=3, sink_every=3, model={"attn_bias": "kv"}))
    out = tmp_path / "sweep"
    assert sweep_main([str(a), str(b), "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"sinkinterp train {a} --out {out / 'wd01'}", f"sinkinterp train {b} --out {out / 'kv'}"]
    assert not out.exists()
    assert sweep_main([str(a), str(b), "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["wd01", "kv"]
    assert summary["kv"]["sink_bias"] is not None and summary["wd01"]["sink_bias"] is None
    assert all(s["status"] == "finished" and s["step"] == 3 for s in summary.values())
    assert "val_loss" in table.splitlines()[0] and table.splitlines()[2].startswith("kv")
    assert sweep_main([str(a), str(b), "--out", str(out), "--collect"]) == 0


def test_held_out_windows_are_fixed_and_drawn_across_the_val_split(shards):
    """Validation and sink-tracking windows are the same on every call (resume sees the same set) and
    are not simply the first windows of the val split (which would all come from one block of text)."""
    import dataclasses

    import numpy as np

    from sinkinterp.data.transforms import DataPipeline
    from sinkinterp.train import trainer

    cfg = tiny_train_config(shards, eval_batches=3)
    first = trainer.held_out_batches(cfg)
    assert first.shape == (3, cfg.data.batch_size, cfg.data.seq_len)
    assert torch.equal(first, trainer.held_out_batches(cfg))
    assert torch.equal(trainer.sink_tracking_tokens(cfg), trainer.sink_tracking_tokens(cfg))
    in_order = DataPipeline(dataclasses.replace(trainer._val_config(cfg.data), sampling="sequential"))
    sequential = torch.from_numpy(np.stack([in_order.batch_at(i) for i in range(3)]))
    assert not torch.equal(first, sequential)
