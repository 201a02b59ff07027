"""Checkpoints: round trip, bf16 storage, extras, atomic writes, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sinkinterp.models import SinkTransformer, load_checkpoint, read_checkpoint_info, save_checkpoint
from sinkinterp.models.checkpoint import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from sinkinterp.models.testing import tiny_config, tiny_model


def _tokens():
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["rotary", "sink_token", "kv_shared", "tied", "relative", "learned", "gated"])
def test_round_trip_is_exact(tmp_path, name):
    model = tiny_model(name, dtype=torch.float32)
    out = save_checkpoint(tmp_path / "ckpt", model, extra={"step": 1200, "tokens_seen": 5_000_000})
    assert sorted(os.listdir(out)) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary files left
    loaded = load_checkpoint(out)
    assert loaded.cfg == model.cfg
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded(_tokens()), model(_tokens()), atol=0, rtol=0)
    info = read_checkpoint_info(out)
    assert info["format_version"] == FORMAT_VERSION
    assert info["extra"] == {"step": 1200, "tokens_seen": 5_000_000}
    assert info["model_config"] == model.cfg.to_dict()
    assert "torch" in info["versions"]


def test_bf16_storage_is_cast_back(tmp_path):
    model = tiny_model("kv", dtype=torch.float32)
    save_checkpoint(tmp_path / "f32", model)
    save_checkpoint(tmp_path / "bf16", model, storage_dtype=torch.bfloat16)
    size32 = (tmp_path / "f32" / WEIGHTS_NAME).stat().st_size
    size16 = (tmp_path / "bf16" / WEIGHTS_NAME).stat().st_size
    assert size16 < 0.6 * size32
    assert read_checkpoint_info(tmp_path / "bf16")["storage_dtype"] == "bfloat16"
    loaded = load_checkpoint(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (n, p), q in zip(model.named_parameters(), loaded.parameters()):
        torch.testing.assert_close(q, p.to(torch.bfloat16).float(), atol=0, rtol=0, msg=n)
    assert (loaded(_tokens()) - model(_tokens())).abs().max() < 0.1
    # an explicit dtype wins
    assert next(load_checkpoint(tmp_path / "bf16", dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16
    assert next(load_checkpoint(tmp_path / "f32", dtype=torch.float64).parameters()).dtype == torch.float64


def test_a_removed_bias_survives_the_round_trip(tmp_path):
    from sinkinterp.models import remove_attention_bias

    removed = remove_attention_bias(tiny_model("kv", dtype=torch.float32), "kv")
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c", removed))
    assert loaded.cfg.attn_bias_removed == "all"
    assert "blocks.0.attn.hook_bias_pattern" not in loaded.hook_dict
    torch.testing.assert_close(loaded(_tokens()), removed(_tokens()), atol=0, rtol=0)


def test_overwrite_replaces_atomically(tmp_path):
    a = SinkTransformer(tiny_config(seed=1))
    b = SinkTransformer(tiny_config(seed=2))
    save_checkpoint(tmp_path, a, extra={"step": 1})
    save_checkpoint(tmp_path, b, extra={"step": 2})
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]
    assert read_checkpoint_info(tmp_path)["extra"]["step"] == 2
    torch.testing.assert_close(load_checkpoint(tmp_path)(_tokens()), b(_tokens()), atol=0, rtol=0)


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import sinkinterp.models.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, SinkTransformer(tiny_config()))
    assert os.listdir(tmp_path) == []


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="JSON-serializable"):
        save_checkpoint(tmp_path / "x", SinkTransformer(tiny_config()), extra={"t": torch.zeros(1)})

    save_checkpoint(tmp_path / "c", SinkTransformer(tiny_config()))
    meta = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())

    meta["model_config"]["flash_attn"] = True
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['flash_attn'\]"):
        load_checkpoint(tmp_path / "c")

    del meta["model_config"]["flash_attn"]
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="newer than this code supports"):
        load_checkpoint(tmp_path / "c")

    meta["format_version"] = FORMAT_VERSION
    meta["model_config"]["attn_bias"] = "kv"  # weights lack k*, v*
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"weights do not match the config \(missing \['blocks.0.attn.k_star'"):
        load_checkpoint(tmp_path / "c")

    os.remove(tmp_path / "c" / WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_checkpoint(tmp_path / "c")
