"""GGUF files beyond LLaMA: tiny models of the architectures transformers reads from GGUF (Qwen 2 / 3,
Phi-3, StableLM, StarCoder2, Falcon, GPT-2, Bloom, Gemma 2 / 3 besides LLaMA), written as llama.cpp lays them out
(``gguf_export``), loaded offline through ``load_model`` (a TransformerBridge): the logits and the
attention of the model they were written from, and the measurement on top of them."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf_export import write_gguf
from test_architectures import ARCHS, V, _build

from sinkinterp import loading
from sinkinterp.loading import gguf_not_read, llama_cpp_config_fields, load_model
from sinkinterp.measure import measure

T = 12
# the fields transformers' GGUF reader has no key for are read as llama.cpp reads them
# (loading.llama_cpp_config_fields), so the models differ from the releases' defaults there: Qwen 3's
# head_dim not d_model / heads (nor transformers' 128), Gemma 2's soft caps not 50 / 30; GPT-2's position
# table not 1024 long (ARCHS: 64); Phi-3 and StableLM rotating half of each head (not 1.0 / 0.25); StableLM's
# and StarCoder2's RoPE base (transformers maps it for neither: its default 10,000 would stay); Falcon's LayerNorm
# epsilon (transformers maps an RMS one only).
# Gemma 2's queries are scaled by the head size, as llama.cpp scales every Gemma 2 but the 27B (a
# query_pre_attn_scalar of its own cannot be written to a GGUF file)
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
GGUF_OVERRIDES = {
    "llama": {}, "qwen2": {}, "qwen3": {"head_dim": 16}, "phi3": {"partial_rotary_factor": 0.5},
    "stablelm": {"partial_rotary_factor": 0.5, "rope_theta": 100.0}, "falcon": {"layer_norm_epsilon": 0.01},
    "starcoder2": {},  # its base near 1e6 (ARCHS)
    "gpt2": {},
    "bloom": {}, "gemma2": {"query_pre_attn_scalar": 8, "attn_logit_softcapping": 0.5, "final_logit_softcapping": 5.0},
    # six layers, the fifth-sliding-then-global pattern llama.cpp fixes (two would both be sliding there), and
    # the 4B-27B releases' linear RoPE scaling on the global layer (factor 8)
    "gemma3": {"n_layers": 6, "layer_types": None, "query_pre_attn_scalar": 8, "rope_parameters": GEMMA3_ROPE},
}


@pytest.mark.parametrize("name", sorted(GGUF_OVERRIDES))
def test_a_gguf_file_loads_as_the_model_it_was_written_from(name, tmp_path, monkeypatch):
    hf = _build(name, **GGUF_OVERRIDES[name])
    path = write_gguf(hf, tmp_path / f"{name}.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(path))
    assert lm.info["kind"] == "gguf" and lm.info["hf_architecture"] == ARCHS[name][1]
    # the fields read as llama.cpp reads them, recorded in the load's info
    assert lm.info.get("gguf_fields_as_llama_cpp", {}) == {
        "qwen3": {"head_dim": 16}, "gpt2": {"n_positions": 64},
        "phi3": {"rope_parameters": getattr(hf.config, "rope_parameters", None)},
        "stablelm": {"rope_parameters": getattr(hf.config, "rope_parameters", None)},
        "starcoder2": {"rope_parameters": getattr(hf.config, "rope_parameters", None)},
        "falcon": {"layer_norm_epsilon": float(np.float32(0.01))},  # as the file stores it
        "gemma2": {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 5.0, "query_pre_attn_scalar": 8},
        "gemma3": {"query_pre_attn_scalar": 8, "rope_parameters": GEMMA3_ROPE},
    }.get(name, {})
    assert lm.tokenizer.convert_ids_to_tokens([0, 1, 2, V - 1]) == ["t0", "t1", "t2", f"t{V - 1}"]
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(tokens, output_attentions=True)
        logits = lm.model(tokens)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    report = measure(lm.model, tokens, qk_heads=None)
    att = torch.stack(out.attentions, 1).double()  # [N, L, H, T, T]
    ref = torch.stack([att[..., k:, k].mean(-1) for k in range(T)], -1).mean(0)
    assert float(ref[..., 0].max()) > 0.2  # token 1 draws attention somewhere: alpha is not trivially flat
    np.testing.assert_allclose(report.alpha_by_key, ref.numpy(), atol=1e-6)
    if lm.info.get("gguf_fields_as_llama_cpp"):  # without that reading: no load, or other logits
        monkeypatch.setattr(loading, "llama_cpp_config_fields", lambda *args: {})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plain = load_model(str(path))
        except RuntimeError:  # transformers refuses weights of other shapes (Qwen 3's heads, GPT-2's table)
            assert name in ("qwen3", "gpt2")
        else:
            with torch.no_grad():
                assert float((plain.model(tokens) - out.logits).abs().max()) > 1e-2


def test_a_gguf_load_parses_the_file_once(tmp_path, monkeypatch):
    """Our metadata read and transformers' config, tokenizer and weight reads share one parse of the file (four
    before; most of a parse is the vocabulary's arrays, 262,144 tokens in Gemma 3); the loader's reader factory is
    gone after the load, also after a load that fails, and a writable reader is not shared."""
    import gguf

    hf = _build("llama")
    path = write_gguf(hf, tmp_path / "llama.gguf")
    make, parsed = gguf.GGUFReader, []

    class Counted(make):
        def __init__(self, *args, **kwargs):
            parsed.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(path))
    assert parsed == [str(path)] and gguf.GGUFReader is Counted
    tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    with loading._one_gguf_reader():
        a, b = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(tmp_path / "." / "llama.gguf"))
        assert a is b and gguf.GGUFReader(str(path), "c") is not a
    monkeypatch.setattr(loading, "gguf_tokenizer", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        load_model(str(path))
    assert gguf.GGUFReader is Counted


def _config(hidden, heads, **more):
    return SimpleNamespace(hidden_size=hidden, num_attention_heads=heads, **more)


def test_the_fields_transformers_does_not_read_are_read_as_llama_cpp_reads_them():
    """The released models' shapes: Qwen 3's head size from its key length (d_model / heads without one,
    llama.cpp's default); Gemma 2's queries scaled by the head size (2B, 9B) or, at 46 layers, by
    d_model / heads (27B: 4608 / 32 = 144, as its query_pre_attn_scalar), its soft caps llama.cpp's 50 / 30
    where the file has none; GPT-2's position table from its context length; the rotated share of a head
    from the rotated size (Phi-4-mini: 96 of 128); nothing for the others."""
    assert llama_cpp_config_fields("qwen3", {}, _config(64, 4)) == {"head_dim": 16}
    meta = {"qwen3.attention.key_length": 128}
    assert llama_cpp_config_fields("qwen3", meta, _config(1024, 16)) == {"head_dim": 128}
    caps = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    for layers, hidden, heads, head_dim, scalar in ((26, 2304, 8, 256, 256), (42, 3584, 16, 256, 256),
                                                    (46, 4608, 32, 128, 144)):
        meta = {"gemma2.block_count": layers, "gemma2.attention.key_length": head_dim}
        expected = {**caps, "query_pre_attn_scalar": scalar}
        assert llama_cpp_config_fields("gemma2", meta, _config(hidden, heads)) == expected
    meta = {"gemma2.block_count": 2, "gemma2.attn_logit_softcapping": 0.5, "gemma2.final_logit_softcapping": 25.0}
    assert llama_cpp_config_fields("gemma2", meta, _config(32, 4)) == {
        "attn_logit_softcapping": 0.5, "final_logit_softcapping": 25.0, "query_pre_attn_scalar": 8}
    assert llama_cpp_config_fields("gpt2", {"gpt2.context_length": 2048}, _config(768, 12)) == {"n_positions": 2048}
    assert llama_cpp_config_fields("gpt2", {}, _config(768, 12)) == {}
    phi4_mini = _config(3072, 24, rope_parameters={"partial_rotary_factor": 1.0})
    meta = {"phi3.rope.dimension_count": 96}
    assert llama_cpp_config_fields("phi3", meta, phi4_mini) == {"rope_parameters": {"partial_rotary_factor": 0.75}}
    assert llama_cpp_config_fields("phi3", {}, phi4_mini) == {}  # no key: transformers' value stays
    assert llama_cpp_config_fields("llama", {"llama.attention.key_length": 64, "llama.rope.dimension_count": 64},
                                   _config(576, 9, rope_parameters={"rope_theta": 1e4})) == {}
    # linear RoPE scaling: the whole model's, or Gemma 3's global layers' (27B: 62 layers, 5376 / 32 = 168)
    meta = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    assert llama_cpp_config_fields("llama", meta, _config(576, 9, rope_parameters={"rope_theta": 1e4})) == {
        "rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 4.0}}
    rope = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    meta = {"gemma3.block_count": 62, "gemma3.attention.key_length": 128, "gemma3.rope.scaling.type": "linear",
            "gemma3.rope.scaling.factor": 8.0}
    assert llama_cpp_config_fields("gemma3", meta, _config(5376, 32, rope_parameters=rope)) == {
        "query_pre_attn_scalar": 168,
        "rope_parameters": {**rope, "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}}}
    meta = {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
            "qwen2.rope.scaling.original_context_length": 32768}  # Qwen 2.5's long-context setting
    assert llama_cpp_config_fields("qwen2", meta, _config(896, 14, rope_parameters={"rope_theta": 1e6})) == {
        "rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0,
                            "original_max_position_embeddings": 32768}}
    meta = {"gemma3.block_count": 26, "gemma3.attention.key_length": 256}  # Gemma 3 1B: no scaling
    assert llama_cpp_config_fields("gemma3", meta, _config(1152, 4, rope_parameters=rope)) == {
        "query_pre_attn_scalar": 256}


def _round_trip(hf, path):
    """``hf`` written to ``path`` as GGUF and loaded back (warnings quiet): the load, whose logits equal
    ``hf``'s, and the tokens they were compared on."""
    write_gguf(hf, path)
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(path))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    return lm, tokens


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0}


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_yarn_rope_scaling_is_read(name, tmp_path):
    """YaRN (Qwen's long-context setting: rope.scaling.type yarn, factor, original context length), which
    transformers' GGUF reader ignores for these architectures, goes into rope_parameters with llama.cpp's
    defaults for the rest (transformers' too): the model loads with its logits, here with a YaRN that acts
    at 12 tokens (original context 8)."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 10000.0}
    hf = _build(name, rope_parameters=rope)
    lm, tokens = _round_trip(hf, tmp_path / f"{name}-yarn.gguf")
    plain = _build(name, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    plain.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert float((plain(tokens).logits - hf(tokens).logits).abs().max()) > 1e-2  # YaRN matters here
    assert lm.info["gguf_fields_as_llama_cpp"]["rope_parameters"]["rope_type"] == "yarn"


def test_llama3_rope_scaling_stored_as_frequency_factors_is_applied(tmp_path, monkeypatch):
    """llama.cpp's converter stores LLaMA 3's RoPE scaling as rope_freqs.weight, one factor per rotary
    frequency (LLaMA 3.1 / 3.2 / 3.3 files), which transformers' GGUF reader ignores: the frequencies are
    divided by them on load, so the model is the one the file was written from (here the scaling acts on
    wavelengths over 4 tokens, so it shows at 12). Without that step the logits differ; factors that do
    not fit the model's rotary embedding are refused."""
    apply = loading.apply_rope_freq_factors
    hf = _build("llama", rope_parameters=LLAMA3_ROPE)
    path = tmp_path / "llama3.gguf"
    lm, tokens = _round_trip(hf, path)
    assert lm.info["gguf_rope_freq_factors"]["n"] == 4 and lm.info["gguf_rope_freq_factors"]["max"] == 8.0
    monkeypatch.setattr(loading, "apply_rope_freq_factors", lambda model, factors: {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = load_model(str(path))
        with torch.no_grad():
            assert float((plain.model(tokens) - hf(tokens).logits).abs().max()) > 1e-2
    with pytest.raises(ValueError, match=r"rope_freqs.weight holds 3 frequency factors .* has 4 rotary frequencies"):
        apply(_build("llama"), np.ones(3, dtype=np.float32))


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5, 2.0, 4.0],
            "long_factor": [1.0, 3.0, 8.0, 16.0], "original_max_position_embeddings": 16}


def test_longrope_runs_the_factor_set_llama_cpp_picks_by_its_context_size(tmp_path, monkeypatch):
    """Phi-3.5 / Phi-4-mini's LongRoPE, as llama.cpp's converter stores it (rope_factors_long / _short
    tensors, the original context 16, the attention factor 1.22 here). llama.cpp runs one set of factors for
    its whole context: the long ones where its context size is past the original context, by default (the
    file's 64 here), else the short ones (``gguf_context=16``). The load equals the model the file was
    written from with that one set, on sequences of 12 and of 24 tokens (transformers alone would take the
    short set at 12 and the long one at 24), and records which set it took. Without the reading the load
    warns that it was not read; ``gguf_context`` is refused for other models and below 1."""
    hf = _build("phi3", rope_parameters=LONGROPE, original_max_position_embeddings=16)
    path = write_gguf(hf, tmp_path / "phi3-longrope.gguf")
    for context, which in ((None, "long"), (16, "short"), (17, "long")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lm = load_model(str(path), gguf_context=context)
        assert lm.info["gguf_longrope_factors"] == f"{which} (context {context or 64}, original 16)"
        assert lm.info["gguf_fields_as_llama_cpp"]["rope_parameters"]["attention_factor"] == pytest.approx(1.5 ** 0.5)
        assert "gguf_not_read" not in lm.info
        one_set = _build("phi3", rope_parameters={**LONGROPE, "short_factor": LONGROPE[f"{which}_factor"],
                                                  "long_factor": LONGROPE[f"{which}_factor"]},
                         original_max_position_embeddings=16)
        one_set.load_state_dict(hf.state_dict())
        for n in (12, 24):
            tokens = torch.randint(3, V, (3, n), generator=torch.Generator().manual_seed(n))
            with torch.no_grad():
                torch.testing.assert_close(lm.model(tokens), one_set(tokens).logits, atol=1e-5, rtol=1e-5)
                # the other set is another model at this length
                other = hf(tokens).logits if (n > 16) != (which == "long") else None
                if other is not None:
                    assert float((lm.model(tokens) - other).abs().max()) > 1e-2
    monkeypatch.setattr(loading, "_longrope", lambda *args: None)
    with pytest.warns(UserWarning, match=r"sets LongRoPE's per-frequency factors \(rope_factors_long.weight, "):
        load_model(str(path))
    with pytest.raises(ValueError, match=r"gguf_context: a context size >= 1 for a GGUF file, got 4096 for a builtin"):
        load_model("tiny-llama-untrained", gguf_context=4096)
    with pytest.raises(ValueError, match=r"gguf_context: .* got 0 for a gguf model"):
        load_model(str(path), gguf_context=0)


def test_rope_and_window_keys_read_as_llama_cpp_reads_them():
    """The keys llama.cpp reads beyond the released files' usual ones: a linear factor without a scaling type
    (llama.cpp's default type) or under the older ``rope.scale_linear`` (a factor of 1 changes nothing);
    YaRN's original context from the context length where the file has none, its attention factor
    multiplying 1 + 0.1 ln factor, its beta fast / slow where llama.cpp reads them (Grok's and Mistral 3's files;
    it ignores them in a Qwen 2 file); LongRoPE's attention factor 1.0 where the file
    has none and the one factor set for the context size; Gemma 3's final soft cap, its sliding layers'
    RoPE base; and which Gemma layers window (every n-th global, or a flag per layer; as transformers
    reads them already: nothing)."""
    rope = {"rope_theta": 1e4}
    for meta in ({"llama.rope.scaling.factor": 4.0}, {"llama.rope.scale_linear": 4.0}):
        assert llama_cpp_config_fields("llama", meta, _config(64, 4, rope_parameters=rope)) == {
            "rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 4.0}}
    assert llama_cpp_config_fields("llama", {"llama.rope.scale_linear": 1.0}, _config(64, 4, rope_parameters=rope)) == {}
    for arch, betas in (("qwen2", {}), ("mistral3", {"beta_fast": 16.0, "beta_slow": 2.0})):
        meta = {f"{arch}.rope.scaling.type": "yarn", f"{arch}.rope.scaling.factor": 4.0,
                f"{arch}.context_length": 32768, f"{arch}.rope.scaling.attn_factor": 0.5,
                f"{arch}.rope.scaling.yarn_beta_fast": 16.0, f"{arch}.rope.scaling.yarn_beta_slow": 2.0}
        assert llama_cpp_config_fields(arch, meta, _config(64, 4, rope_parameters=rope)) == {
            "rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0,
                                "original_max_position_embeddings": 32768,
                                "attention_factor": pytest.approx(0.5 * (1 + 0.1 * np.log(4.0))), **betas}}, arch
    meta = {"_rope_factors_long.weight": [2.0], "_rope_factors_short.weight": [1.0], "phi3.context_length": 128,
            "phi3.rope.scaling.original_context_length": 64}
    fields = llama_cpp_config_fields("phi3", meta, _config(64, 4, rope_parameters=rope))
    assert fields["rope_parameters"] == {"rope_theta": 1e4, "rope_type": "longrope", "long_factor": [2.0],
                                         "short_factor": [2.0], "original_max_position_embeddings": 64,
                                         "attention_factor": 1.0}
    assert llama_cpp_config_fields("phi3", meta, _config(64, 4, rope_parameters=rope), context=64)[
        "rope_parameters"]["long_factor"] == [1.0]
    assert loading.longrope_factors("phi3", meta) == "long"
    assert loading.longrope_factors("phi3", meta, 64) == "short" and loading.longrope_factors("llama", meta) is None
    gemma3 = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    six = ["sliding_attention"] * 5 + ["full_attention"]
    meta = {"gemma3.block_count": 6, "gemma3.attention.key_length": 16, "gemma3.final_logit_softcapping": 30.0,
            "gemma3.rope.freq_base_swa": 500.0, "gemma3.attention.sliding_window_pattern": 6,
            "gemma3.attention.sliding_window": 512}
    assert llama_cpp_config_fields("gemma3", meta, _config(64, 4, rope_parameters=gemma3, layer_types=six)) == {
        "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 16,
        "rope_parameters": {**gemma3, "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}}
    # a Gemma 3 file without a window (no key, or 0): every layer global in llama.cpp, whatever its pattern says
    for window in ({}, {"gemma3.attention.sliding_window": 0}):
        meta = {"gemma3.block_count": 6, "gemma3.attention.sliding_window_pattern": 2, **window}
        assert llama_cpp_config_fields("gemma3", meta, _config(64, 4, layer_types=six))["layer_types"] == [
            "full_attention"] * 6
        assert "layer_types" not in llama_cpp_config_fields("gemma3", meta, _config(64, 4, layer_types=["full_attention"] * 6))
    for pattern in (2, [True, False, True, False, True, False]):
        meta = {"gemma2.block_count": 6, "gemma2.attention.sliding_window_pattern": pattern}
        assert llama_cpp_config_fields("gemma2", meta, _config(64, 4, layer_types=six))["layer_types"] == [
            "sliding_attention", "full_attention"] * 3
    with pytest.raises(ValueError, match="sliding_window_pattern has 2 flags for 6 layers"):
        llama_cpp_config_fields("gemma2", {"gemma2.attention.sliding_window_pattern": [True, False]},
                                _config(64, 4, layer_types=six))


# Gemma 3 as newer llama.cpp files can set it apart from the releases: its sliding layers' RoPE base, a final
# soft cap, and which layers window (every second one global here, not every sixth)
GEMMA3_KEYS = {
    "freq_base_swa": {"rope_parameters": {**GEMMA3_ROPE, "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}},
    "final_logit_softcapping": {"final_logit_softcapping": 0.05},  # the tiny model's logits are small
    "sliding_window_pattern": {"layer_types": ["sliding_attention", "full_attention"] * 3},
    # no window at all (no gemma3.attention.sliding_window): llama.cpp runs every layer global
    "no_sliding_window": {"layer_types": ["full_attention"] * 6},
}


@pytest.mark.parametrize("key", sorted(GEMMA3_KEYS))
def test_gemma3_keys_beyond_transformers_reader_are_read(key, tmp_path):
    """Each key loads as the model the file was written from; the same weights with the releases' setting
    (transformers' default, what it reads without the key) give other logits."""
    base = {**GGUF_OVERRIDES["gemma3"], "rope_parameters": GEMMA3_ROPE}
    hf = _build("gemma3", **{**base, **GEMMA3_KEYS[key]})
    lm, tokens = _round_trip(hf, tmp_path / f"gemma3-{key}.gguf")
    assert lm.info["gguf_fields_as_llama_cpp"].keys() >= {{"freq_base_swa": "rope_parameters", "sliding_window_pattern": "layer_types",
                                                           "no_sliding_window": "layer_types"}.get(key, key)}
    releases = _build("gemma3", **base)
    releases.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert float((releases(tokens).logits - hf(tokens).logits).abs().max()) > 1e-2


def test_yarn_attention_factor_is_read(tmp_path):
    """A YaRN file's ``rope.scaling.attn_factor`` (OLMo's converter writes one) scales the attention as
    llama.cpp scales it, times its own 1 + 0.1 ln factor: the model loads with its logits, and without the
    factor (the scale YaRN computes alone) they differ."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 10000.0}
    hf = _build("qwen2", rope_parameters={**rope, "attention_factor": 0.6})
    lm, tokens = _round_trip(hf, tmp_path / "qwen2-yarn-attn.gguf")
    assert lm.info["gguf_fields_as_llama_cpp"]["rope_parameters"]["attention_factor"] == pytest.approx(0.6)
    plain = _build("qwen2", rope_parameters=rope)
    plain.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert float((plain(tokens).logits - hf(tokens).logits).abs().max()) > 1e-2


def test_what_no_reader_reads_is_named():
    """LongRoPE's factor tensors (Phi-3.5 / Phi-4-mini), other scaling types and DeepSeek's YaRN log
    multiplier are read by neither transformers nor sinkinterp: they are named (and load_model warns),
    rather than loading a model that silently differs from llama.cpp's; what is read names nothing."""
    meta = {"_rope_tensors": ["rope_factors_long.weight", "rope_factors_short.weight"]}
    assert gguf_not_read("phi3", meta) == [("LongRoPE's per-frequency factors (rope_factors_long.weight, "
                                            "rope_factors_short.weight; Phi-3.5 / Phi-4-mini's long context)")]
    assert gguf_not_read("llama", {"llama.rope.scaling.type": "longrope"}) == ["RoPE scaling type 'longrope'"]
    full = {"phi3.rope.scaling.type": "longrope", "_rope_factors_long.weight": [1.0],
            "_rope_factors_short.weight": [1.0], "phi3.rope.scaling.original_context_length": 4096,
            "_rope_tensors": ["rope_factors_long.weight"]}
    assert gguf_not_read("phi3", full) == []  # all of LongRoPE there: read
    meta = {"deepseek2.rope.scaling.type": "yarn", "deepseek2.rope.scaling.yarn_log_multiplier": 0.1,
            "deepseek2.context_length": 4096}
    assert gguf_not_read("deepseek2", meta) == ["YaRN's log multiplier (DeepSeek's attention scale)"]
    meta = {"grok.rope.scaling.type": "yarn", "grok.rope.scaling.yarn_ext_factor": 0.5}
    assert gguf_not_read("grok", meta) == ["YaRN's ext_factor (grok.rope.scaling.yarn_ext_factor)",
                                           "YaRN without an original context length"]
    # llama.cpp reads the log multiplier for DeepSeek 2 / 3.2 and Mistral 3 / 4, the ext / attn factors for Grok only:
    # in a LLaMA file they change nothing it runs
    assert gguf_not_read("llama", {"llama.rope.scaling.type": "yarn", "llama.context_length": 64,
                                   "llama.rope.scaling.yarn_log_multiplier": 0.1,
                                   "llama.rope.scaling.yarn_ext_factor": 0.5,
                                   "llama.rope.scaling.yarn_attn_factor": 0.5}) == []
    meta = {"gemma3.rope.scaling.type": "yarn", "gemma3.context_length": 64}
    assert gguf_not_read("gemma3", meta) == ["YaRN on Gemma 3's per-layer-type RoPE"]
    # a rotated size short of the head size: named where the model rotates all of each head (Qwen 2 here), not
    # where it has a rotated share llama_cpp_config_fields sets (Phi-3), nor where it is the head size
    qwen2 = _config(64, 4, rope_parameters={"rope_theta": 1e4})
    assert gguf_not_read("qwen2", {"qwen2.rope.dimension_count": 8}, qwen2) == [
        ("a rotated size of 8 of each head's 16 dimensions (qwen2.rope.dimension_count: llama.cpp rotates only "
         "those (LLaMA and Falcon files it refuses), the model transformers builds rotates all)")]
    assert gguf_not_read("qwen2", {"qwen2.rope.dimension_count": 16}, qwen2) == []
    assert gguf_not_read("qwen2", {"qwen2.rope.dimension_count": 8}) == []  # no config: not checked
    phi3 = _config(64, 4, rope_parameters={"rope_theta": 1e4, "partial_rotary_factor": 0.5})
    assert gguf_not_read("phi3", {"phi3.rope.dimension_count": 8}, phi3) == []
    for meta in ({}, {"llama.rope.scaling.type": "linear"}, {"llama.rope.scaling.type": "yarn", "llama.context_length": 64},
                 {"_rope_tensors": ["rope_freqs.weight"]}, {"llama.rope.scaling.type": "none"}):
        assert gguf_not_read("llama", meta) == []


def test_a_gguf_file_with_what_no_reader_reads_loads_with_a_warning(tmp_path, monkeypatch):
    """The load names what it did not read in a warning and in its info; a file with nothing such has
    neither (the tiny LLaMA: no rope_* tensors, no scaling)."""
    path = write_gguf(_build("llama"), tmp_path / "llama.gguf")
    meta, freqs = loading._gguf_metadata(str(path))
    assert meta["_rope_tensors"] == [] and freqs is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to warn about
        warnings.filterwarnings("ignore", message=r"(?!model: ).*")  # other libraries' warnings
        assert "gguf_not_read" not in load_model(str(path)).info
    real = loading._gguf_metadata
    monkeypatch.setattr(loading, "_gguf_metadata", lambda p: ({**real(p)[0], "llama.rope.scaling.type": "su"}, None))
    with pytest.warns(UserWarning, match=r"llama.gguf sets RoPE scaling type 'su', which sinkinterp does not read yet"):
        lm = load_model(str(path))
    assert lm.info["gguf_not_read"] == ["RoPE scaling type 'su'"]
    # a short rotated size is checked against the config the model was built from (the tiny LLaMA: head size 8;
    # the plumbing only: from a real LLaMA file transformers reads the key as the head size)
    monkeypatch.setattr(loading, "_gguf_metadata", lambda p: ({**real(p)[0], "llama.rope.dimension_count": 4}, None))
    with pytest.warns(UserWarning, match=r"a rotated size of 4 of each head's 8 dimensions"):
        load_model(str(path))


REAL_METADATA = Path(__file__).parent / "data" / "llama_cpp_vocab_metadata.json"
# the real files' architectures transformers (5.23) builds a config for; the others it refuses
BUILT = {"llama", "falcon", "gpt2", "phi3", "qwen2", "starcoder2"}


def _real_metadata():
    return json.loads(REAL_METADATA.read_text())["files"]


def _write_metadata_only(entry, path, tokens=None, scores=None, types=None, skip=()):
    """A GGUF file with a real file's metadata (its keys, values and GGUF types), no tensors and a placeholder
    vocabulary of 8 tokens (the real ones run to 262,144, slow to write and read, and the vocabulary size
    comes from their count, not from the metadata tested here), or the vocabulary given (``tokens``, with
    ``scores`` and ``types``); the keys in ``skip`` left out."""
    import gguf

    meta = entry["metadata"]
    writer = gguf.GGUFWriter(str(path), meta["general.architecture"][1])
    for key, (kind, value) in meta.items():
        if key == "general.architecture" or key in skip:
            continue
        if kind.startswith("ARRAY:"):
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType[kind[6:]])
        else:
            writer.add_key_value(key, value, gguf.GGUFValueType[kind])
    tokens = tokens or [f"t{i}" for i in range(8)]
    writer.add_token_list(tokens)
    writer.add_token_types(types or [1] * len(tokens))
    if scores or "tokenizer.ggml.scores" in entry["tokenizer_array_lengths"]:
        writer.add_token_scores(scores or [0.0] * len(tokens))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def _as_llama_cpp_reads(meta):
    """What llama.cpp reads from the metadata (its generic keys, its defaults: RoPE base 10,000; linear
    scaling where the type is linear or absent and a factor is given)."""
    arch = meta["general.architecture"]

    def key(name, default=None):
        return meta.get(f"{arch}.{name}", default)

    heads = key("attention.head_count")
    out = {"layers": key("block_count"), "d_model": key("embedding_length"), "heads": heads,
           "kv_heads": key("attention.head_count_kv", heads), "ffn": key("feed_forward_length"),
           "context": key("context_length"),
           "eps": key("attention.layer_norm_rms_epsilon", key("attention.layer_norm_epsilon"))}
    if arch != "gpt2":  # learned positions; the others rotate
        out["rope_theta"] = float(key("rope.freq_base", 10000.0))
        factor = key("rope.scaling.factor")
        linear = key("rope.scaling.type") in (None, "linear") and factor not in (None, 1.0)
        out["rope"] = ("linear", float(factor)) if linear else ("default", None)
    return out


def _as_built(config):
    """The same quantities of the config a model is built from."""
    heads = config.num_attention_heads
    ffn = next(getattr(config, n) for n in ("intermediate_size", "ffn_hidden_size", "n_inner")
               if hasattr(config, n))
    eps = next(getattr(config, n) for n in ("rms_norm_eps", "layer_norm_epsilon", "norm_epsilon") if hasattr(config, n))
    eps = float(np.float32(eps))  # the file's precision (transformers' default 1e-5 for Falcon)
    out = {"layers": config.num_hidden_layers, "d_model": config.hidden_size, "heads": heads,
           "kv_heads": getattr(config, "num_key_value_heads", None) or heads, "ffn": ffn or 4 * config.hidden_size,
           "context": config.max_position_embeddings, "eps": eps}
    rope = getattr(config, "rope_parameters", None)
    if rope is not None:
        out["rope_theta"] = float(rope["rope_theta"])
        out["rope"] = (rope.get("rope_type", "default"), rope.get("factor"))
    return out


def test_real_llama_cpp_metadata_builds_the_model_llama_cpp_runs(tmp_path):
    """llama.cpp's vocabulary-only files (tests/data, from its source tree: written by its converter from
    released checkpoints; scripts/llama_cpp_metadata.py) carry every key but the weights. For each
    architecture transformers reads, the config the load builds from the metadata has the shape, norm epsilon,
    context and RoPE llama.cpp reads from it, and nothing is left unread; two files need sinkinterp's reading:
    StarCoder2's base near 1e6 and DeepSeek-Coder's linear scaling by 4 (transformers alone: base 10,000, no
    scaling). Architectures it does not read (Baichuan, BERT, Command-R, Gemma 4, GPT-NeoX, MPT, ...) are
    refused with their name."""
    files = _real_metadata()
    assert {e["metadata"]["general.architecture"][1] for e in files.values()} >= BUILT  # the fixture covers them
    for name, entry in sorted(files.items()):
        meta = {k: v for k, (_, v) in entry["metadata"].items()}
        arch = meta["general.architecture"]
        path = _write_metadata_only(entry, tmp_path / name)
        if arch not in BUILT:
            with pytest.raises(ValueError, match=rf"builds no model from .*{name} \(GGUF architecture '{arch}'\)"):
                load_model(str(path))
            continue
        config, fields, read, _ = loading.gguf_config(str(path))
        assert _as_built(config) == _as_llama_cpp_reads(meta), name
        assert gguf_not_read(arch, read, config) == [], name
        assert ("rope_parameters" in fields) == (name in ("ggml-vocab-starcoder.gguf", "ggml-vocab-deepseek-coder.gguf"))
    starcoder = loading.gguf_config(str(tmp_path / "ggml-vocab-starcoder.gguf"))[0]
    assert starcoder.rope_parameters["rope_theta"] == pytest.approx(999999.44, rel=1e-6)
    assert loading.gguf_config(str(tmp_path / "ggml-vocab-deepseek-coder.gguf"))[0].rope_parameters == {
        "rope_theta": 100000.0, "rope_type": "linear", "factor": 4.0}


def _script(name):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tokenizer_check_compares_ids_with_llama_cpp_s_expected_ones(tmp_path, capsys):
    """scripts/gguf_tokenizer_check.py on a folder laid out as llama.cpp's models/: the texts of ``.inp``
    (split at its separator lines) tokenized as a GGUF model loads, against the ids of ``.out``, one line each;
    here the second line is altered, so one case of two differs. A folder without tests is refused."""
    check = _script("gguf_tokenizer_check")
    path = write_gguf(_build("llama"), tmp_path / "ggml-vocab-tiny.gguf")
    tok, _ = loading.gguf_tokenizer(str(path))
    texts = ["t1 t2", "t0 t1"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(ids)
    Path(f"{path}.inp").write_text(check.SEPARATOR.join(texts), encoding="utf-8")
    altered = [ids[0], [*ids[1], 3]]
    Path(f"{path}.out").write_text("\n".join(" ".join(map(str, i)) for i in altered) + "\n", encoding="utf-8")
    result = check.check(path)
    assert (result["cases"], result["equal"]) == (2, 1)
    assert result["differ"] == [{"text": texts[1], "got": ids[1], "want": altered[1]}]
    assert check.main([str(tmp_path)]) == 0
    assert "| ggml-vocab-tiny.gguf |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no ggml-vocab"):
        check.main([str(tmp_path / "empty")])


def test_the_metadata_script_writes_what_the_real_metadata_test_reads(tmp_path):
    """scripts/llama_cpp_metadata.py on a folder of GGUF files: each file's metadata with its GGUF types, the
    tokenizer's arrays as lengths only, and the file's checksum; written whole (no temporary file left)."""
    import hashlib

    meta_script = _script("llama_cpp_metadata")
    path = write_gguf(_build("qwen2"), tmp_path / "ggml-vocab-tiny.gguf")
    out = tmp_path / "out" / "meta.json"
    assert meta_script.main([str(tmp_path), "--source", "a test", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    entry = data["files"]["ggml-vocab-tiny.gguf"]
    assert data["source"] == "a test" and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["metadata"]["qwen2.block_count"] == ["UINT32", 2]
    assert entry["metadata"]["general.architecture"] == ["STRING", "qwen2"]
    assert entry["tokenizer_array_lengths"]["tokenizer.ggml.tokens"] == V
    assert [p.name for p in out.parent.iterdir()] == ["meta.json"]
    rebuilt = _write_metadata_only(entry, tmp_path / "rebuilt.gguf")  # the test's writer reads it back
    assert loading.gguf_config(str(rebuilt))[0].num_hidden_layers == 2


# a SentencePiece vocabulary small enough to read: control tokens, U+2581 (the space), letters and their merges
SPM_TOKENS = ["<unk>", "<s>", "</s>", "\u2581", "H", "e", "l", "o", "He", "ll", "Hell", "Hello", "\u2581Hello",
              "\u2581\u2581"]


@pytest.mark.parametrize("prefix", [None, True, False])
def test_a_sentencepiece_vocabulary_gets_its_space_prefix_as_llama_cpp_adds_it(prefix, tmp_path):
    """A LLaMA file's SentencePiece vocabulary (the real llama-spm file's metadata, a tiny vocabulary): llama.cpp
    puts a space before every text, one that starts with a space too, unless the file's add_space_prefix is
    false; transformers' rebuild left it out before a leading space, so " Hello" and "Hello" came out as the same
    ids (15 of the llama-spm file's 47 tokenizer tests differed from its own tokenizer; none since). The load
    records the change."""
    entry = _real_metadata()["ggml-vocab-llama-spm.gguf"]
    meta = {} if prefix is None else {"tokenizer.ggml.add_space_prefix": ["BOOL", prefix]}
    entry = {**entry, "metadata": {**entry["metadata"], **meta}}
    n = len(SPM_TOKENS)
    path = _write_metadata_only(entry, tmp_path / "spm.gguf", tokens=SPM_TOKENS,
                                scores=[0.0, 0.0, 0.0, *[-float(n - i) for i in range(3, n)]],
                                types=[2, 3, 3, *[1] * (n - 3)])
    tok, note = loading.gguf_tokenizer(str(path))
    normalize = tok.backend_tokenizer.normalizer.normalize_str
    if prefix is False:
        assert normalize(" Hello") == "\u2581Hello" and normalize("Hello") == "Hello"
        assert note == "SentencePiece spaces as llama.cpp writes them: no space prefix"
    else:
        assert normalize(" Hello") == "\u2581\u2581Hello" and normalize("Hello") == "\u2581Hello"
        assert note == "SentencePiece spaces as llama.cpp writes them: a space prefix before every text"
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (" Hello", "Hello")]
        assert ids[1] == [SPM_TOKENS.index("\u2581Hello")] and ids[0] != ids[1]
    assert tok.backend_tokenizer.pre_tokenizer is None
    # transformers' own rebuild: no prefix before a leading space, so both texts are one token
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="spm.gguf", local_files_only=True)
    if prefix is not False:
        assert plain(" Hello", add_special_tokens=False)["input_ids"] == plain("Hello", add_special_tokens=False)["input_ids"]


def test_a_tokenizer_already_as_llama_cpp_writes_it_is_left_alone(tmp_path):
    """Phi-3's SentencePiece rebuild already puts the prefix llama.cpp puts (transformers picks it for the
    architecture): nothing changes, nothing is noted; a byte-level vocabulary is never touched."""
    entry = _real_metadata()["ggml-vocab-phi-3.gguf"]
    n = len(SPM_TOKENS)
    path = _write_metadata_only(entry, tmp_path / "phi3.gguf", tokens=SPM_TOKENS,
                                scores=[0.0, 0.0, 0.0, *[-float(n - i) for i in range(3, n)]],
                                types=[2, 3, 3, *[1] * (n - 3)],
                                skip=("tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id"))  # 32000
    tok, note = loading.gguf_tokenizer(str(path))
    assert note is None and tok.backend_tokenizer.normalizer.normalize_str(" Hello") == "\u2581\u2581Hello"
    gpt2 = write_gguf(_build("gpt2"), tmp_path / "gpt2.gguf")
    assert loading.gguf_tokenizer(str(gpt2))[1] is None


def _pieces(tok, text):
    return [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def test_byte_level_vocabularies_split_as_llama_cpp_splits_them(tmp_path, monkeypatch):
    """A byte-level vocabulary whose tokenizer.ggml.pre transformers has no split for (it falls back to GPT-2's)
    gets llama.cpp's: StarCoder / SmolLM each digit alone, Falcon punctuation runs then digits in threes; and
    LLaMA 3's (a split transformers has) llama.cpp's ignore_merges. On llama.cpp's tokenizer tests these
    vocabularies then equal their own tokenizers (docs/hook-contract.md). The load records it; a tokenizer with a
    split of transformers' own, a name split as GPT-2's, a file without the name and a SentencePiece vocabulary are
    left alone; a name whose split is not emulated is warned of (tests/test_llama_cpp_tokenize.py: every name)."""
    from sinkinterp.llama_cpp_tokenize import as_llama_cpp

    path = write_gguf(_build("gpt2"), tmp_path / "gpt2.gguf")

    def fresh():
        return loading.gguf_tokenizer(str(path))[0]

    gpt2 = fresh()
    assert _pieces(gpt2, "In 2024, ab") == ["In", "Ġ2024", ",", "Ġab"]  # GPT-2's split: digits together
    tok = fresh()
    assert as_llama_cpp(tok, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}) == [
        "llama.cpp's 'smollm' pre-tokenizer splits"]
    assert _pieces(tok, "In 2024, ab") == ["In", "Ġ", "2", "0", "2", "4", ",", "Ġab"]
    tok = fresh()
    as_llama_cpp(tok, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "falcon"})
    assert _pieces(tok, "x 3333333 ...!") == ["x", "Ġ", "333", "333", "3", "Ġ", "...!"]
    tok = fresh()
    assert not tok.backend_tokenizer.model.ignore_merges
    # this rebuild has GPT-2's split (its file names no pre), so it takes LLaMA 3's split too; a rebuild with a
    # split of transformers' own (a real llama-bpe file's) keeps it (below) and gets only ignore_merges
    assert as_llama_cpp(tok, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe"}) == [
        "llama.cpp's 'llama-bpe' pre-tokenizer splits", "a piece that is a token taken whole (ignore_merges)"]
    assert tok.backend_tokenizer.model.ignore_merges
    assert _pieces(tok, "In 20245") == ["In", "Ġ", "202", "45"]
    for meta in ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}, {"tokenizer.ggml.model": "gpt2"},
                 {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "smollm"}):
        tok = fresh()
        assert as_llama_cpp(tok, meta) == [] and _pieces(tok, "In 2024, ab") == _pieces(gpt2, "In 2024, ab")
    tok = fresh()  # a split of transformers' own (a Sequence, as it builds for Qwen 2 or LLaMA 3) is kept
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert as_llama_cpp(tok, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "falcon"}) == []
    # through the load: recorded in its info, the tokenizer it returns split so
    real = loading._gguf_metadata
    monkeypatch.setattr(loading, "_gguf_metadata",
                        lambda p: ({**real(p)[0], "tokenizer.ggml.pre": "starcoder"}, real(p)[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(path))
    assert lm.info["gguf_tokenizer_as_llama_cpp"] == "llama.cpp's 'starcoder' pre-tokenizer splits"
    assert _pieces(lm.tokenizer, "In 2024") == ["In", "Ġ", "2", "0", "2", "4"]
    # a name llama.cpp splits in a way not emulated: the load keeps GPT-2's split, warns and records it
    monkeypatch.setattr(loading, "_gguf_metadata",
                        lambda p: ({**real(p)[0], "tokenizer.ggml.pre": "superbpe"}, real(p)[1]))
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre 'superbpe' .llama.cpp splits text for it in a way not"):
        lm = load_model(str(path))
    assert "gguf_tokenizer_as_llama_cpp" not in lm.info and len(lm.info["gguf_not_read"]) == 1
    assert _pieces(lm.tokenizer, "In 2024") == _pieces(gpt2, "In 2024")


def test_a_sentencepiece_rebuild_that_already_cuts_as_llama_cpp_is_left_alone(monkeypatch):
    """Gemma's rebuild (spaces to U+2581, no prefix; its files say add_space_prefix false) already cuts text as
    llama.cpp does, with a normalizer and a pre-tokenizer of its own: nothing is changed or noted. The same
    tokenizer read with the prefix on is changed."""
    import transformers
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    def gemma():
        return GemmaTokenizer(vocab={"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "\u2581": 4, "a": 5, "\u2581a": 6},
                              merges=[("\u2581", "a")])

    def rebuilt_as(tok):  # the tokenizer transformers' GGUF rebuild would return
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: tok)
        return tok

    tok = rebuilt_as(gemma())
    before = (repr(tok.backend_tokenizer.normalizer), repr(tok.backend_tokenizer.pre_tokenizer))
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_space_prefix": False}
    assert loading.gguf_tokenizer("unused.gguf", meta) == (tok, None)
    assert (repr(tok.backend_tokenizer.normalizer), repr(tok.backend_tokenizer.pre_tokenizer)) == before
    rebuilt_as(gemma())
    _, note = loading.gguf_tokenizer("unused.gguf", {**meta, "tokenizer.ggml.add_space_prefix": True})
    assert note == "SentencePiece spaces as llama.cpp writes them: a space prefix before every text"


def test_the_tokenizer_check_compares_a_gguf_tokenizer_on_texts(tmp_path, capsys):
    """``--gguf PATH --texts FILE``: tokens with transformers' rebuild alone and with the load's tokenizer, per
    file (a vocabulary sinkinterp leaves as it is: equal, no difference); the two modes are exclusive."""
    check = _script("gguf_tokenizer_check")
    path = write_gguf(_build("gpt2"), tmp_path / "gpt2.gguf")
    text = tmp_path / "text.txt"
    text.write_text("t1 t2\nt0 t1", encoding="utf-8")
    (row,) = check.compare_texts(path, [text])
    assert row["tokens_transformers"] == row["tokens_load"] == 4 and row["equal"]
    assert row["first_difference"] is None and row["lines_differing"] == [] and row["note"] is None
    assert check.main(["--gguf", str(path), "--texts", str(text)]) == 0
    assert "| 4 | 4 | True | - | - |" in capsys.readouterr().out
    for bad in ([], ["--gguf", str(path)], [str(tmp_path), "--gguf", str(path), "--texts", str(text)]):
        with pytest.raises(SystemExit):
            check.main(bad)
