"""GGUF files beyond LLaMA: tiny models of the architectures transformers reads from GGUF (Qwen 2 / 3,
Phi-3, StableLM, Falcon, GPT-2, Bloom, Gemma 2 besides LLaMA), written as llama.cpp lays them out
(``gguf_export``), loaded offline through ``load_model`` (a TransformerBridge): the logits and the
attention of the model they were written from, and the measurement on top of them."""

import warnings

import numpy as np
import pytest
import torch
from gguf_export import write_gguf
from test_architectures import ARCHS, V, _build

from sinkinterp.loading import load_model
from sinkinterp.measure import measure

T = 12
# config fields the GGUF metadata transformers reads has no key for are left at their defaults
# (None drops a field from test_architectures.ARCHS): Qwen 3's head_dim (128, as in every Qwen 3
# release), Gemma 2's query_pre_attn_scalar (256) and soft caps (50 / 30); GPT-2's context length is read
# into n_ctx, not the n_positions that sizes its position table, so only 1024 (every GPT-2 release) loads
GGUF_OVERRIDES = {
    "llama": {}, "qwen2": {}, "qwen3": {"head_dim": 128}, "phi3": {}, "stablelm": {}, "falcon": {},
    "gpt2": {"n_positions": 1024},
    "bloom": {}, "gemma2": {"query_pre_attn_scalar": None, "attn_logit_softcapping": None},
}


@pytest.mark.parametrize("name", sorted(GGUF_OVERRIDES))
def test_a_gguf_file_loads_as_the_model_it_was_written_from(name, tmp_path):
    hf = _build(name, **GGUF_OVERRIDES[name])
    path = write_gguf(hf, tmp_path / f"{name}.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(path))
    assert lm.info["kind"] == "gguf" and lm.info["hf_architecture"] == ARCHS[name][1]
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
