"""TrainConfig validation and round trip, the LR schedule, weight-decay groups, FLOPs accounting."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from sinkinterp.models import ModelConfig, SinkTransformer
from sinkinterp.train import (TrainConfig, decays, flops_per_token, lr_at, matmul_params, param_groups)
from sinkinterp.train.flops import PEAK_FLOPS_BF16


def _cfg(**kw) -> TrainConfig:
    base = dict(model=dict(n_layers=2, d_model=32, n_heads=4, d_vocab=300, n_ctx=64),
                data=dict(shard_dir="/nonexistent/shards", seq_len=16, batch_size=8), sink_seq_len=16)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_round_trip_through_json():
    # (no data.transforms here: under the suite's run-time type checker DataConfig cannot be built
    # with transforms at all -- see the note in docs/training.md; the data package owns that)
    cfg = _cfg(weight_decay=0.5, schedule="constant", betas=[0.8, 0.99], grad_clip=None)
    d = json.loads(json.dumps(cfg.to_dict()))
    again = TrainConfig.from_dict(d)
    assert again == cfg
    assert isinstance(again.model, ModelConfig) and again.betas == (0.8, 0.99)
    assert again.to_dict() == d


@pytest.mark.parametrize("where, d, needle", [
    ("top", {"stepz": 3}, "stepz"),
    ("model", {"n_layer": 3}, "n_layer"),
    ("data", {"bach_size": 3}, "bach_size"),
])
def test_unknown_keys_rejected(where, d, needle):
    base = _cfg().to_dict()
    if where == "top":
        base.update(d)
    else:
        base[where].update(d)
    with pytest.raises(ValueError, match=needle):
        TrainConfig.from_dict(base)


def test_comment_keys_ignored():
    d = _cfg().to_dict()
    d["_comment"] = "why this run exists"
    assert TrainConfig.from_dict(d) == _cfg()


@pytest.mark.parametrize("field, value, needle", [
    ("schedule", "linear", "schedule.*cosine.*constant"),
    ("decay_params", "some", "decay_params.*matrices.*all"),
    ("dtype", "float16", "dtype.*float32.*bfloat16"),
    ("lr", 0.0, "lr"),
    ("lr", float("nan"), "lr"),
    ("steps", 0, "steps"),
    ("warmup_steps", 10_000, "warmup_steps"),
    ("min_lr_ratio", 1.5, "min_lr_ratio"),
    ("betas", (0.9, 1.0), r"betas\[1\]"),
    ("betas", (0.9,), "betas"),
    ("weight_decay", -0.1, "weight_decay"),
    ("device", "tpu", "device.*auto.*cpu.*cuda"),
    ("compile", "yes", "compile"),
    ("attn_backend", "cuda", r"attn_backend.*'auto', 'reference', 'flex', 'triton'"),
    ("sink_seq_len", 65, "sink_seq_len.*n_ctx"),
    ("sink_eps", 1.0, "sink_eps"),
    ("log_every", 0, "log_every"),
    ("init_from", "", "init_from.*model / run folder"),
    ("init_from", 3, "init_from"),
])
def test_bad_values_name_the_field(field, value, needle):
    # wrong types may be caught first by the test suite's run-time type checker (jaxtyping +
    # beartype), whose message names the parameter too
    with pytest.raises((ValueError, TypeError), match=needle):
        _cfg(**{field: value})


def test_cross_checks():
    with pytest.raises(ValueError, match="seq_len=128 exceeds model.n_ctx=64"):
        _cfg(data=dict(shard_dir="x", seq_len=128))
    with pytest.raises(ValueError, match="attn_bias_removed"):
        _cfg(model=dict(n_ctx=64, d_vocab=300, attn_bias="kv", attn_bias_removed="v"))
    with pytest.raises(ValueError, match="split"):
        _cfg(data=dict(shard_dir="x", seq_len=16, split="val"))


# ------------------------------------------------------------------------------- schedule
def test_warmup_then_cosine_to_min_lr():
    cfg = _cfg(steps=100, lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 4) == pytest.approx(5e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3)  # first post-warm-up update at the peak
    mid = 10 + (99 - 10) / 2
    assert lr_at(cfg, int(mid)) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    assert lr_at(cfg, 99) == pytest.approx(1e-4)  # the last update is at min_lr_ratio * lr, not lr
    values = [lr_at(cfg, s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule_and_no_warmup():
    cfg = _cfg(steps=50, lr=2e-3, warmup_steps=0, schedule="constant")
    assert {lr_at(cfg, s) for s in range(50)} == {2e-3}
    cos = _cfg(steps=50, lr=2e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(cos, 0) == pytest.approx(2e-3) and lr_at(cos, 49) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------- weight decay
def test_matrices_get_decay_biases_and_norms_do_not():
    cfg = _cfg(weight_decay=0.5, model=dict(n_ctx=64, d_vocab=300, attn_bias="kv", pos_emb="learned",
                                            norm_type="layernorm"))
    model = SinkTransformer(cfg.model)
    decay, no_decay = param_groups(model, cfg)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    leaves = lambda g: {n.rsplit(".", 1)[-1] for n in g["names"]}  # noqa: E731
    assert leaves(decay) == {"W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_U"}
    assert leaves(no_decay) == {"w", "b", "k_star", "v_star"}  # k*/v* are 2-D but are biases
    n_all = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_all

    every = param_groups(model, cfg.replace(decay_params="all"))
    assert len(every[0]["params"]) == n_all and not every[1]["params"]
    with pytest.raises(ValueError, match="matrices"):
        decays("x.W_Q", torch.zeros(2, 2), "bogus")


def test_weight_decay_applied_by_the_optimizer():
    from sinkinterp.train import build_optimizer

    cfg = _cfg(weight_decay=0.3)
    model = SinkTransformer(cfg.model)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    wds = sorted(g["weight_decay"] for g in opt.param_groups)
    assert wds == [0.0, 0.3]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


# ------------------------------------------------------------------------------- flops
def test_flops_formula_by_hand():
    # baseline_small: 6 layers, d 384, 6 heads, SwiGLU 1024, vocab 8192, T 512
    m = ModelConfig(n_layers=6, d_model=384, n_heads=6, d_ff=1024, d_vocab=8192, n_ctx=512)
    per_layer = 4 * 384 * 384 + 3 * 384 * 1024
    assert matmul_params(m) == 6 * per_layer + 384 * 8192
    assert flops_per_token(m, 512) == 6 * matmul_params(m) + 12 * 6 * 6 * 64 * 512
    # matmul params = the model's parameters minus embedding and norm weights
    model = SinkTransformer(m)
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".w"))
    assert matmul_params(m) == model.num_params() - 8192 * 384 - norms
    # a sliding window caps the attention term; GQA shrinks W_K / W_V
    assert flops_per_token(m.replace(window=64), 512) == 6 * matmul_params(m) + 12 * 6 * 6 * 64 * 64
    assert matmul_params(m.replace(n_kv_heads=2)) < matmul_params(m)


def test_peak_table():
    table = dict(PEAK_FLOPS_BF16)
    assert table["H100"] == 989e12 and table["H200"] == 989e12 and table["A100"] == 312e12
    from sinkinterp.train import peak_flops

    assert peak_flops(torch.device("cpu")) is None


# ------------------------------------------------------------------------------- shipped configs
def test_shipped_configs_parse():
    from pathlib import Path

    from sinkinterp.train.cli import load_config

    folder = Path(__file__).resolve().parent.parent / "configs"
    cfgs = {p.stem: load_config(p) for p in sorted(folder.glob("*.json"))}
    assert {"baseline_small", "baseline_small_wd05", "kv_bias_small", "sigmoid_small", "tiny_cpu"} <= set(cfgs)
    base = cfgs["baseline_small"]
    m = base.model
    assert (m.n_layers, m.d_model, m.n_heads, m.d_ff, m.pos_emb, m.ffn) == (6, 384, 6, 1024, "rotary", "swiglu")
    assert (base.data.seq_len, base.data.batch_size, base.lr) == (512, 64, 1e-3)
    assert base.dtype == "bfloat16" and base.compile and base.weight_decay == 0.1
    assert cfgs["baseline_small_wd05"] == base.replace(weight_decay=0.5)
    assert cfgs["kv_bias_small"].model == m.replace(attn_bias="kv")
    assert cfgs["sigmoid_small"].model == m.replace(attn_op="sigmoid")
    assert cfgs["tiny_cpu"].device == "cpu" and not cfgs["tiny_cpu"].compile
    for name in ("baseline_small", "baseline_small_wd05"):  # second seeds: the seeds and nothing else differ
        s1 = cfgs[f"{name}_s1"]
        assert (s1.seed, s1.model.seed, s1.data.seed) == (1, 1, 1)
        assert s1 == cfgs[name].replace(seed=1, model=cfgs[name].model.replace(seed=1),
                                        data=dataclasses.replace(cfgs[name].data, seed=1))
