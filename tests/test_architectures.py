"""The measurement and the interventions on the Hugging Face architectures attention-sink studies use
(GPT-2, Pythia / GPT-NeoX, OPT, LLaMA-style, Mistral, Mixtral, Qwen 2 / 3, Gemma 1 / 2 / 3, Phi-2, Phi-3,
OLMo 1 / 2, Granite, Cohere, Bloom, MPT, Falcon with RoPE and with ALiBi, GPT-J, CodeGen, GPT-BigCode, StableLM,
StarCoder2), each a tiny model
built from its config, saved to a folder and loaded offline through ``load_model`` (a TransformerBridge): alpha against Hugging Face eager attention, residual norms
against its hidden states, the q.k decomposition against the scores the model really computed, key
norms that are really measured, and first-token edits that really act."""

import contextlib
import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import word_tokenizer

from sinkinterp import tl_adapter
from sinkinterp.interventions import first_token, run_intervention
from sinkinterp.loading import load_model
from sinkinterp.measure import measure, qk_source

V, T = 61, 12
SMALL = dict(vocab_size=V)
ROPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
# name -> (config class, model class, config fields, where the q.k decomposition reads q and k)
ARCHS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64), "plain"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(ROPE, rotary_pct=0.5), "cos_sin"),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32), "plain"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(ROPE, num_key_value_heads=2), "rot"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(ROPE, num_key_value_heads=2), "rot"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(ROPE, num_key_value_heads=2, sliding_window=None), "rot"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8), "rot"),
    # query_pre_attn_scalar != head_dim: the decomposition must use the model's own scale
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8, sliding_window=64,
                                                         query_pre_attn_scalar=32, attn_logit_softcapping=None), "rot"),
    # Gemma 2's soft cap on the attention logits, small enough to bend these sharpened scores
    "gemma2_cap": ("Gemma2Config", "Gemma2ForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8, sliding_window=64,
                                                             query_pre_attn_scalar=32, attn_logit_softcapping=0.5), "rot"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(ROPE, num_key_value_heads=2, pad_token_id=0), "cos_sin"),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(ROPE, pad_token_id=0), "rot"),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=2, n_head=4), "plain"),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                         new_decoder_architecture=False, multi_query=True,
                                                         alibi=False), "cos_sin"),
    # Falcon-RW's layout: ALiBi, one kv head per query head, sequential attention and MLP, biases
    "falcon_alibi": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                               new_decoder_architecture=False, multi_query=False,
                                                               alibi=True, parallel_attn=False, bias=True), "plain"),
    # rotary_dim 4 of d_head 8: partial, adjacent pairs, rotated inside Hugging Face's code
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
             "module"),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(ROPE, num_key_value_heads=4), "rot"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8), "rot"),
    # one sliding-window layer (window 4 < T) and one global layer, each with its own rotary base
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                             query_pre_attn_scalar=8,
                                                             layer_types=["sliding_attention", "full_attention"]), "rot"),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(ROPE, partial_rotary_factor=0.5), "rot"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(ROPE, num_key_value_heads=2, num_local_experts=2,
                                                            num_experts_per_tok=1, sliding_window=None), "rot"),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
                    "plain"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(ROPE, pad_token_id=0), "rot"),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(ROPE, attention_multiplier=0.2), "rot"),
    # adjacent-pair RoPE, parallel attention + MLP, logit_scale: TransformerLens 3.9's bridge rotated with
    # the wrong pairing until tl_adapter.route_attention
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(ROPE, num_key_value_heads=2, pad_token_id=0, logit_scale=0.5),
               "rot"),
    "mpt": ("MptConfig", "MptForCausalLM", dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=64), "plain"),
    # LayerNorm with biases, biased attention and GELU MLP, rotate-half RoPE (its real base near 1e6)
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(ROPE, num_key_value_heads=2, sliding_window=None,
                                                                     rope_theta=999999.4375), "rot"),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
                "module"),
}
# scores with a term q.k does not hold: ALiBi's position bias
POSITION_BIAS = {"bloom", "mpt", "falcon_alibi"}
# sliding-window layers: keys outside the window are masked in the scores, not in q.k; the
# decomposition averages the pairs in sight
WINDOWED = {"gemma3"}
# soft-capped scores, c * tanh(q.k scaled / c): the decomposition's logits are before the cap
CAPPED = {"gemma2_cap"}
# mixtures of experts: no single set of MLP neurons
MOE = {"mixtral"}
# bridges whose TransformerLens 3.9 attention only observes Hugging Face's (hook_pattern right to read,
# no effect when edited; hook_attn_scores = the probabilities) until tl_adapter.route_attention routes it
ROUTED = {"opt", "gptj"}


class _GPTJScores:
    """The pre-softmax scores a Hugging Face GPT-J computes (its eager ``_attn`` gets the rotated
    queries and keys), per layer, captured while the context is open: a reference from Hugging
    Face's own code, independent of the bridge (whose hook_attn_scores, unrouted, carries the
    softmaxed pattern)."""

    def __init__(self, hf, layers=(0, 1)):
        self.attns = [hf.transformer.h[l].attn for l in layers]
        self.scores = {}

    def __enter__(self):
        for l, attn in enumerate(self.attns):
            def capture(query, key, value, attention_mask=None, l=l, attn=attn, orig=attn._attn):
                self.scores[l] = (query.double() @ key.double().transpose(-1, -2)) / float(attn.scale_attn)
                return orig(query, key, value, attention_mask)
            attn._attn = capture
        return self.scores

    def __exit__(self, *exc):
        for attn in self.attns:
            del attn._attn


def _build(name: str, seed: int = 0, n_layers: int = 2, **overrides):
    import transformers

    cfg_cls, model_cls, fields, _ = ARCHS[name]
    # an override of None drops the field, leaving the config class's default
    fields = {k: v for k, v in {**fields, **overrides}.items() if not (k in overrides and v is None)}
    fields[next(k for k in ("n_layer", "n_layers", "num_hidden_layers") if k in fields)] = n_layers
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**SMALL, **fields)
    model = getattr(transformers, model_cls)._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # sharpen attention so alpha spreads over (0, 1)
        for pname, p in model.named_parameters():
            if pname.endswith(("q_proj.weight", "k_proj.weight", "c_attn.weight", "query_key_value.weight",
                               "Wqkv.weight", "qkv_proj.weight")):
                p.mul_(8.0)
    return model


def _sdpa_copy(hf):
    """The same weights under Hugging Face's SDPA attention."""
    sdpa = type(hf)._from_config(copy.deepcopy(hf.config), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(hf.state_dict())
    return sdpa


def _alibi_from_the_mask_only(module, args, kwargs):
    return args, {**kwargs, "alibi": torch.zeros_like(kwargs["alibi"])}


def _reference(hf, name):
    """A copy of ``hf`` to read Hugging Face's answers from (logits, attentions, hidden states). Falcon
    with ALiBi: while transformers' eager attention (the one that returns attentions) adds the bias
    twice (``tl_adapter.falcon_alibi_defect``), the copy's attention modules get a zero ``alibi`` and take
    the bias from the mask alone, checked equal to Falcon's SDPA path (the bias once, as Falcon-RW was
    trained)."""
    ref = copy.deepcopy(hf)
    if name == "falcon_alibi" and tl_adapter.falcon_alibi_defect() is not None:
        for block in ref.transformer.h:
            block.self_attention.register_forward_pre_hook(_alibi_from_the_mask_only, with_kwargs=True)
        tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            torch.testing.assert_close(ref(tokens).logits, _sdpa_copy(hf)(tokens).logits, atol=1e-5, rtol=1e-5)
    return ref


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request, tmp_path_factory):
    name = request.param
    hf = _build(name)
    folder = tmp_path_factory.mktemp(name)
    hf.save_pretrained(folder)
    word_tokenizer(V).save_pretrained(folder)
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    ref = _reference(hf, name)
    with torch.no_grad(), (_GPTJScores(ref) if name == "gptj" else contextlib.nullcontext({})) as scores:
        out = ref(tokens, output_attentions=True, output_hidden_states=True)
    out.gptj_scores = scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(folder))
    return name, lm, tokens, out


def _captured(model, tokens, names):
    store = {}
    hooks = [(n, lambda x, hook, n=n: store.__setitem__(n, x.detach().double().clone())) for n in names]
    with torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
        model(tokens)
    return store


def test_alpha_and_resid_norms_match_hugging_face(arch):
    name, lm, tokens, out = arch
    assert lm.info["hf_architecture"] == ARCHS[name][1]
    report = measure(lm.model, tokens, qk_heads="auto")
    att = torch.stack(out.attentions, 1).double()  # [N, L, H, T, T]
    ref = torch.stack([att[..., k:, k].mean(-1) for k in range(T)], -1).mean(0)
    np.testing.assert_allclose(report.alpha_by_key, ref.numpy(), atol=1e-6)
    by_pos = report.norms["resid"]["by_position"]  # [L + 1, T]; HF's last hidden state is after the final norm
    for l in range(2):
        np.testing.assert_allclose(by_pos[l], out.hidden_states[l].double().norm(dim=-1).mean(0).numpy(), rtol=1e-5)


def test_key_and_value_norms_are_measured(arch):
    """Every architecture reports the norms of the keys and values its attention uses (rotary
    embeddings rotate, so the pre-rotation norms are the ones), never a silent zero."""
    name, lm, tokens, _ = arch
    report = measure(lm.model, tokens, qk_heads=None)
    acts = _captured(lm.model, tokens, [f"blocks.{l}.attn.hook_{c}" for l in range(2) for c in ("k", "v")])
    group = 4 // acts["blocks.0.attn.hook_k"].shape[2]
    for l in range(2):
        for c, key in (("k", "key"), ("v", "value")):
            n = acts[f"blocks.{l}.attn.hook_{c}"].repeat_interleave(group, 2).norm(dim=-1)  # [N, T, H]
            np.testing.assert_allclose(report.norms[key]["first"][l], n[:, 0].mean(0).numpy(), rtol=1e-5)
            np.testing.assert_allclose(report.norms[key]["rest"][l], n[:, 1:].mean((0, 1)).numpy(), rtol=1e-5)
            assert (report.norms[key]["first"][l] > 0).all()


def test_qk_decomposition_rebuilds_the_real_attention_scores(arch):
    name, lm, tokens, out = arch
    expected = ARCHS[name][3]
    assert qk_source(lm.model, tokens)[0] == expected
    report = measure(lm.model, tokens, qk_heads="all")
    kinds = ("attn_scores",) + (("rot_q", "rot_k") if name in WINDOWED | CAPPED else ("q", "k") if name in POSITION_BIAS else ())
    acts = _captured(lm.model, tokens, [f"blocks.{l}.attn.hook_{c}" for l in range(2) for c in kinds])
    att = torch.stack(out.attentions, 1).double()
    n_pairs = T * (T - 1) / 2
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(2):
        in_sight = causal
        if name == "gptj":  # rotated inside Hugging Face's code: the scores it really softmaxed
            s = out.gptj_scores[l]
        else:
            s = acts[f"blocks.{l}.attn.hook_attn_scores"][..., :T, :T]  # [N, H, T, T] (some bridges pad keys)
        # these are the scores Hugging Face's softmax turned into its attention
        np.testing.assert_allclose(s.masked_fill(~causal, float("-inf")).softmax(-1).numpy(),
                                   att[:, l].numpy(), atol=1e-6)
        if name in WINDOWED:  # the decomposition is q.k over the pairs the window leaves in sight
            q, k = acts[f"blocks.{l}.attn.hook_rot_q"], acts[f"blocks.{l}.attn.hook_rot_k"]
            k = k.repeat_interleave(q.shape[2] // k.shape[2], 2)
            full = torch.einsum("bthd,bshd->bhts", q, k) * tl_adapter.attn_scale(lm.model, l)
            seen = causal & (s > -1e30)
            assert (~seen & causal).any() == (l == 0)  # layer 0's window of 4 hides keys, layer 1 is global
            np.testing.assert_allclose(full[..., seen].numpy(), s[..., seen].numpy(), rtol=1e-5, atol=1e-6)
            s, in_sight = full, seen[0, 0]
        heads = [i for i, (hl, _) in enumerate(report.qk["heads"]) if hl == l]
        if name in CAPPED:  # the softmax saw the capped scores; the decomposition reports both sides
            q, k = acts[f"blocks.{l}.attn.hook_rot_q"], acts[f"blocks.{l}.attn.hook_rot_k"]
            k = k.repeat_interleave(q.shape[2] // k.shape[2], 2)
            full = torch.einsum("bthd,bshd->bhts", q, k) * tl_adapter.attn_scale(lm.model, l)
            c = report.qk["softcap"]
            assert c == 0.5
            np.testing.assert_allclose((c * torch.tanh(full / c))[..., causal].numpy(), s[..., causal].numpy(),
                                       rtol=1e-5, atol=1e-6)
            k1 = s[..., :, 0].mean((0, 2))
            rest = torch.stack([s[:, :, t, 1:t + 1].sum(-1) for t in range(1, T)], -1).sum(-1).mean(0) / n_pairs
            np.testing.assert_allclose(report.qk["capped_logit_q_k1"][heads], k1.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(report.qk["capped_logit_q_krest"][heads], rest.numpy(), rtol=1e-5, atol=1e-6)
            assert (full.abs() > 2 * c).any()  # the cap bends some of these scores
            s = full
        else:
            assert "softcap" not in report.qk and "capped_logit_q_k1" not in report.qk
        if name in POSITION_BIAS:  # scores = scale * q.k + a bias of the positions alone (ALiBi)
            q, k = acts[f"blocks.{l}.attn.hook_q"], acts[f"blocks.{l}.attn.hook_k"]
            logits = torch.einsum("bthd,bshd->bhts", q, k) * tl_adapter.attn_scale(lm.model, l)
            bias = (s - logits).masked_fill(~causal, 0.0)
            np.testing.assert_allclose(bias.numpy(), bias[:1].expand_as(bias).numpy(), atol=1e-5)  # no data in it
            rel = bias - bias.diagonal(dim1=-2, dim2=-1)[..., None]  # relative to the query's own key
            b1 = rel[..., :, 0].mean((0, 2))
            brest = torch.stack([rel[:, :, t, 1:t + 1].sum(-1) for t in range(1, T)], -1).sum(-1).mean(0) / n_pairs
            assert b1.abs().max() > 0.05  # the bias is there and matters
            np.testing.assert_allclose(report.qk["bias_q_k1"][heads], b1.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(report.qk["bias_q_krest"][heads], brest.numpy(), rtol=1e-5, atol=1e-5)
            assert report.qk["position_bias"].startswith("ALiBi")
            s = logits
        else:
            assert "bias_q_k1" not in report.qk and report.qk["position_bias"].startswith("none")
        later = in_sight.clone()
        later[:, 0] = False
        k1 = s[..., in_sight[:, 0], 0].mean((0, 2))
        rest = s[..., later].mean((0, 2))
        np.testing.assert_allclose(report.qk["logit_q_k1"][heads], k1.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(report.qk["logit_q_krest"][heads], rest.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(report.qk["cos_q_k1"]) <= 1 + 1e-9)
    assert ("layer 0: window 4" in report.qk["pairs"]) == (name in WINDOWED)


def test_first_token_value_edit_acts(arch):
    """In the last layer, zeroing token 1's value (hook_v) and removing token 1 from the pattern of
    queries 2.. without renormalizing (hook_pattern) take the same term out of the outputs of
    queries 2..: equal losses on their targets, and not the unedited one, on every architecture
    (OPT and GPT-J through tl_adapter.route_attention)."""
    name, lm, tokens, _ = arch
    kw = dict(layers=[1], target_start=2, sinks=False)
    zero = run_intervention(lm.model, tokens, first_token("zero_value"), **kw)
    ablate = run_intervention(lm.model, tokens, first_token("ablate", renormalize=False), **kw)
    assert abs(zero.delta_loss) > 2e-5
    assert zero.loss == pytest.approx(ablate.loss, abs=1e-6)


@pytest.mark.parametrize("kind", ["mean_key", "scale_resid", "scale_value"])
def test_key_resid_and_value_edits_run_and_act(arch, kind):
    """Token 1's key, residual and value edits pass the editable check and change the loss on every
    architecture. (normalize_resid acts too, but in these random models token 1's norm is within a
    percent of the others', so its loss change can round to nothing: Bloom's does.)"""
    name, lm, tokens, _ = arch
    kw = {"factor": 3.0} if kind.startswith("scale") else {}
    result = run_intervention(lm.model, tokens, first_token(kind, **kw), sinks=False)
    assert np.isfinite(result.loss) and abs(result.delta_loss) > 1e-6


# where each fused-projection architecture keeps the values of token 1 in its q/k/v projection output
FUSED_V = {
    "gpt2": ("transformer.h", "attn.c_attn", lambda o: o[:, 0, 64:]),  # [q | k | v], d_model 32 each
    "bloom": ("transformer.h", "self_attention.query_key_value", lambda o: o.view(*o.shape[:2], 4, 3, 8)[:, 0, :, 2]),
    "gpt_neox": ("gpt_neox.layers", "attention.query_key_value", lambda o: o.view(*o.shape[:2], 4, 3, 8)[:, 0, :, 2]),
}


@pytest.mark.parametrize("name", sorted(FUSED_V))
def test_value_edit_on_fused_projections_matches_hugging_face(name):
    """The bridge splits a fused q/k/v projection into hook_v; zeroing token 1's value there is the
    same as zeroing it in Hugging Face's own fused output."""
    import torch.nn.functional as F

    hf = _build(name)
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(hf)
    blocks_path, proj_path, v_of_first = FUSED_V[name]

    def zero_v(module, inputs, output):
        output = output.clone()
        v_of_first(output).zero_()
        return output

    blocks = ref.get_submodule(blocks_path)
    handles = [b.get_submodule(proj_path).register_forward_hook(zero_v) for b in blocks]
    with torch.no_grad():
        logits = ref(tokens).logits.double()
    for h in handles:
        h.remove()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)).item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = tl_adapter.boot_bridge(hf, word_tokenizer(V), name)
    result = run_intervention(bridge, tokens, first_token("zero_value"), sinks=False)
    assert abs(result.delta_loss) > 1e-4
    assert result.loss == pytest.approx(expected, abs=1e-6)


# sliding windows of 3 < T, as Hugging Face applies them: every layer from the config (Mistral, Phi-3,
# Mixtral), some layers from the attention module's own sliding_window (Qwen 2 past max_window_layers,
# Gemma 2 / 3 by layer type), none where the config switches it off, GPT-Neo's local layers
WINDOW_CONFIGS = {
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(ROPE, num_key_value_heads=2, sliding_window=3)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(ROPE, num_key_value_heads=2, pad_token_id=0, sliding_window=3)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(ROPE, num_key_value_heads=2, num_local_experts=2,
                                                            num_experts_per_tok=1, sliding_window=3)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(ROPE, num_key_value_heads=2, use_sliding_window=True,
                                                      sliding_window=3, max_window_layers=1)),
    "qwen2_off": ("Qwen2Config", "Qwen2ForCausalLM", dict(ROPE, num_key_value_heads=2, use_sliding_window=False,
                                                          sliding_window=3)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8, sliding_window=3,
                                                         query_pre_attn_scalar=32)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(ROPE, num_key_value_heads=2, head_dim=8, sliding_window=3,
                                                             query_pre_attn_scalar=8,
                                                             layer_types=["sliding_attention", "full_attention"])),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(hidden_size=32, num_layers=2, num_heads=4,
                                                          max_position_embeddings=64, window_size=3,
                                                          attention_types=[[["global", "local"], 1]])),
}


@pytest.mark.parametrize("name", sorted(WINDOW_CONFIGS))
def test_attn_visibility_is_the_mask_hugging_face_applies(name):
    """tl_adapter.attn_visibility names, layer by layer, the keys Hugging Face's own attention lets
    each query see (its attention probabilities are > 0 exactly there)."""
    import transformers

    from sinkinterp.measure import visible_keys

    cfg_cls, model_cls, fields = WINDOW_CONFIGS[name]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)._from_config(getattr(transformers, cfg_cls)(**SMALL, **fields),
                                                        attn_implementation="eager").eval()
    tokens = torch.randint(3, V, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        attentions = hf(tokens, output_attentions=True).attentions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = tl_adapter.boot_bridge(hf, word_tokenizer(V), f"tiny-{name}")
    windows = []
    for l, att in enumerate(attentions):
        window, prefix = tl_adapter.attn_visibility(bridge, l)
        assert prefix == 0
        assert torch.equal(visible_keys(torch.arange(8), 8, window, prefix), (att > 0).all(0).all(0)), l
        windows.append(window)
    expected = {"qwen2": [None, 3], "qwen2_off": [None, None], "gemma2": [3, None], "gemma3": [3, None],
                "gpt_neo": [None, 3]}.get(name, [3, 3])
    assert windows == expected


def _bridge(name, n_layers=2):
    hf = _build(name, n_layers=n_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl_adapter.boot_bridge(hf, word_tokenizer(V), name)


@pytest.mark.parametrize("name", sorted(n for n, a in ARCHS.items() if a[3] in ("cos_sin", "module")))
def test_a_hook_that_never_fires_is_refused(name):
    """These bridges list hook_rot_k but rotate inside Hugging Face's code: reading or editing it is
    refused instead of silently giving nothing."""
    bridge = _bridge(name)
    tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    assert "blocks.0.attn.hook_rot_k" in tl_adapter.hook_names(bridge)
    with pytest.raises(RuntimeError, match=r"\['blocks.1.attn.hook_rot_k'\] are listed by the model"):
        with tl_adapter.attached_hooks(bridge, [("blocks.1.attn.hook_rot_k", lambda x, hook: x),
                                                ("blocks.1.attn.hook_k", lambda x, hook: x)]):
            bridge(tokens)
    assert tl_adapter.count_attached_hooks(bridge) == 0


def _hook_map_reads(bridge, monkeypatch):
    """A list that grows by one at each read of the bridge's hook_dict (each read rebuilds the map)."""
    cls, reads = type(bridge), []
    real = cls.hook_dict
    monkeypatch.setattr(cls, "hook_dict", property(lambda self: reads.append(1) or real.fget(self)))
    return reads


def _with_biases(name, **overrides):
    """A tiny model whose biases and norm weights are random (Hugging Face initializes them to 0 and 1,
    which would hide what weight processing moves)."""
    hf = _build(name, **overrides)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if pname.endswith("bias") or "ln" in pname or "norm" in pname:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return hf


def test_processed_weights_keep_the_attention_and_are_named_beside_the_norms_they_change():
    """A bridge after enable_compatibility_mode() (TransformerLens's weight processing, as a user may hand
    one over) computes the same attention: alpha, Sink, key norms and the q.k decomposition equal the
    unprocessed bridge's. On GPT-2 (LayerNorm, value biases) its centered writing weights move the residual
    norms and its folded value biases the value norms and what zeroing token 1's value does; the report
    names the processing. Unprocessed bridges (load_model's) report None."""
    hf = _with_biases("gpt2")
    tokens = torch.randint(3, V, (4, T), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = tl_adapter.boot_bridge(copy.deepcopy(hf), word_tokenizer(V), "gpt2")
        processed = tl_adapter.boot_bridge(copy.deepcopy(hf), word_tokenizer(V), "gpt2")
        processed.enable_compatibility_mode(disable_warnings=True)
    with torch.no_grad():
        torch.testing.assert_close(processed(tokens).log_softmax(-1), plain(tokens).log_softmax(-1),
                                   atol=1e-5, rtol=0)
    a, b = measure(plain, tokens, eps=0.3), measure(processed, tokens, eps=0.3)
    assert a.norms["weight_processing"] is None
    assert b.norms["weight_processing"] == (
        "TransformerBridge.process_weights / enable_compatibility_mode, read from the weights: norms folded, "
        "writing weights centered, unembedding centered, value biases zero (folded into b_O: the checkpoint "
        "(GPT2LMHeadModel) has value biases)")
    np.testing.assert_allclose(b.alpha_by_key, a.alpha_by_key, atol=1e-6)
    np.testing.assert_array_equal(b.sink_pct_by_key, a.sink_pct_by_key)
    for key in ("first", "rest"):
        np.testing.assert_allclose(b.norms["key"][key], a.norms["key"][key], rtol=1e-5)
    for key in ("q_norm", "cos_q_k1", "logit_q_k1", "logit_q_krest"):
        np.testing.assert_allclose(b.qk[key], a.qk[key], atol=1e-5)
    assert np.abs(b.norms["resid"]["rest"] - a.norms["resid"]["rest"]).max() > 1e-3
    assert np.abs(b.norms["value"]["first"] - a.norms["value"]["first"]).max() > 1e-2
    zero_plain = run_intervention(plain, tokens, first_token("zero_value"), sinks=False)
    zero_processed = run_intervention(processed, tokens, first_token("zero_value"), sinks=False)
    assert abs(zero_plain.delta_loss - zero_processed.delta_loss) > 1e-4  # the folded bias stays in b_O
    assert "weight_processing" not in zero_plain.to_dict()
    assert zero_processed.to_dict()["weight_processing"] == b.norms["weight_processing"]
    ablate = [run_intervention(m, tokens, first_token("zero_key"), sinks=False).delta_loss for m in (plain, processed)]
    assert ablate[0] == pytest.approx(ablate[1], abs=1e-6)


def test_a_hooked_transformer_with_processed_weights_is_named():
    """HookedTransformer.from_pretrained folds its norms by default (normalization_type LNPre); the
    report says so, and the attention is unchanged."""
    ht = tl_adapter.hooked_transformer_from_config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=V,
                                                   n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for pname, p in ht.named_parameters():
            if pname.startswith("blocks") and ("ln" in pname or ".b_" in pname):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if "W_Q" in pname or "W_K" in pname:
                p.mul_(8.0)
    tokens = torch.randint(3, V, (4, T), generator=torch.Generator().manual_seed(1))
    before = measure(ht, tokens, eps=0.3)
    assert before.norms["weight_processing"] is None
    ht.process_weights_()
    after = measure(ht, tokens, eps=0.3)
    assert after.norms["weight_processing"] == (
        "HookedTransformer with processed weights, read from the weights: norms folded (normalization_type LNPre), "
        "writing weights centered, unembedding centered, value biases zero (folded into b_O; or a checkpoint with "
        "an output bias and none on the values, as GPT-Neo)")
    np.testing.assert_allclose(after.alpha_by_key, before.alpha_by_key, atol=1e-5)


@pytest.mark.parametrize("steps, found, not_found", [
    ({}, ["writing weights centered", "unembedding centered"], ["norms folded"]),
    ({"center_writing_weights": False}, ["unembedding centered"], ["norms folded", "writing weights centered"]),
    ({"center_writing_weights": False, "center_unembed": False}, None, None),
])
def test_which_steps_processed_a_hooked_transformer_is_read_from_its_weights(steps, found, not_found):
    """TransformerLens records no processing options, so the steps are read from the weights: a
    HookedTransformer processed without folding its norms is still recognized by its centered writing
    weights or unembedding, and the steps that did not run are named; one processed with none of the three
    (its value biases folded alone, which its zero b_V cannot show) reads as unprocessed."""
    ht = tl_adapter.hooked_transformer_from_config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=V,
                                                   n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0)
    ht.process_weights_(fold_ln=False, **steps)
    said = tl_adapter.weight_processing(ht)
    if found is None:
        assert said is None
        return
    # built from a config, its value and output biases are zero: nothing was folded, and the answer says so
    assert said == ("HookedTransformer with processed weights, read from the weights: " + ", ".join(found)
                    + ", value biases zero (the output biases are zero too: the checkpoint has none)"
                    + "; not: " + ", ".join(not_found))


@pytest.mark.parametrize("name, config, steps, said", [
    ("gpt2", {}, {"fold_ln": False, "center_writing_weights": False, "center_unembed": False},
     ("value biases zero (folded into b_O: the checkpoint (GPT2LMHeadModel) has value biases); not: norms "
      "folded, writing weights centered, unembedding centered")),
    ("gpt2", {}, {"fold_value_biases": False},
     "norms folded, writing weights centered, unembedding centered; not: value biases zero"),
    ("llama", {}, {}, "norms folded, unembedding centered; not: writing weights centered"),  # RMSNorm: no centering
    # LLaMA with value and output biases (no grouped heads: TransformerLens 3.9 cannot fold grouped value
    # biases): its config's attention_bias says the zero b_V were folded
    ("llama", {"attention_bias": True, "num_key_value_heads": None}, {"fold_ln": False},
     ("unembedding centered, value biases zero (folded into b_O: the checkpoint (LlamaForCausalLM) has value "
      "biases); not: norms folded, writing weights centered")),
])
def test_which_steps_processed_a_bridge_is_read_from_its_weights(name, config, steps, said):
    """A bridge's own flag says only that processing ran; the steps are read from the weights: folded
    norms left constant, writing weights and the unembedding with mean 0, zero value biases (folded: the
    architecture, or its config's flag, says the checkpoint has them). Options turned off show as steps not
    found; TransformerLens centers no RMSNorm model's writing weights."""
    hf = _with_biases(name, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = tl_adapter.boot_bridge(hf, word_tokenizer(V), name)
        assert tl_adapter.weight_processing(bridge) is None
        bridge.process_weights(**steps)
    assert tl_adapter.weight_processing(bridge) == (
        "TransformerBridge.process_weights / enable_compatibility_mode, read from the weights: " + said)


@pytest.mark.parametrize("arch, processed, said", [
    # GPT-2's checkpoints have value biases: zero ones were folded, the one step that ran, and it is found
    ("GPT2LMHeadModel", True, ("value biases zero (folded into b_O: the checkpoint (GPT2LMHeadModel) has value "
                               "biases); not: norms folded, writing weights centered, unembedding centered")),
    ("GPT2LMHeadModel", False, None),
    # GPT-Neo's have none beside an output bias: the same weights unprocessed are the checkpoint's own
    ("GPTNeoForCausalLM", False, None),
    # built from a config, no architecture named: value biases folded alone cannot be told from none to begin
    # with, and the answer says so (perhaps processed); with nonzero value biases, unprocessed
    (None, True, "perhaps"),
    ("no value biases", False, "perhaps"),
    (None, False, None),
])
def test_value_biases_folded_alone_are_found_by_the_architecture(arch, processed, said):
    """TransformerLens's fold_value_biases alone leaves b_V zero and moves it into a nonzero b_O, which the
    weights cannot tell from a checkpoint with an output bias and no value biases (GPT-Neo). A
    HookedTransformer from from_pretrained names its architecture (cfg.original_architecture), which does;
    one built from a config (none named) is answered as perhaps processed, with both readings."""
    no_value_biases = arch in ("GPTNeoForCausalLM", "no value biases")
    arch = None if arch == "no value biases" else arch
    ht = tl_adapter.hooked_transformer_from_config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=V,
                                                   n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0,
                                                   original_architecture=arch)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in ht.blocks:
            block.attn.b_O.add_(0.3 * torch.randn(block.attn.b_O.shape, generator=g))
            if not no_value_biases:
                block.attn.b_V.add_(0.3 * torch.randn(block.attn.b_V.shape, generator=g))
    tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = ht(tokens).log_softmax(-1)
    if processed:
        # process_weights_ always folds value biases (from_pretrained's fold_value_biases=True)
        ht.process_weights_(fold_ln=False, center_writing_weights=False, center_unembed=False)
        assert not any(bool(b.attn.b_V.any()) for b in ht.blocks)
        with torch.no_grad():
            torch.testing.assert_close(ht(tokens).log_softmax(-1), before, atol=1e-5, rtol=0)
    if said == "perhaps":
        said = ("HookedTransformer, perhaps with processed weights (no architecture named to tell), read from the "
                "weights: value biases zero (folded into b_O; or a checkpoint with an output bias and none on the "
                "values, as GPT-Neo); not: norms folded, writing weights centered, unembedding centered")
    elif said is not None:
        said = "HookedTransformer with processed weights, read from the weights: " + said
    assert tl_adapter.weight_processing(ht) == said
    assert tl_adapter.checkpoint_value_biases(ht) == ({"GPT2LMHeadModel": True, "GPTNeoForCausalLM": False}.get(arch),
                                                      arch)


def test_the_weights_are_read_again_only_when_they_change(monkeypatch):
    """measure and every edit ask for the processing; the weights are read once while they stay the same
    tensors, and again after an in-place edit."""
    ht = tl_adapter.hooked_transformer_from_config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=V,
                                                   n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0)
    ht.process_weights_()
    reads = []
    real = tl_adapter._folds_in_weights
    monkeypatch.setattr(tl_adapter, "_folds_in_weights", lambda m: reads.append(1) or real(m))
    first = tl_adapter.weight_processing(ht)
    assert tl_adapter.weight_processing(ht) == first and len(reads) == 1
    with torch.no_grad():
        ht.blocks[0].attn.W_O.add_(1.0)  # no longer centered
    assert "not: writing weights centered" in tl_adapter.weight_processing(ht) and len(reads) == 2


def test_centering_is_told_from_rounding_in_float32_and_bf16():
    """A row mean of 0 up to the rounding of centering in float32 and of a cast to bf16 counts as centered; an
    uncentered random matrix, whose row means are about 1 / sqrt(n) of its size, does not, in float32 or bf16;
    missing, integer or all-zero weights say nothing."""
    w = torch.randn(576, 49152, generator=torch.Generator().manual_seed(0))  # SmolLM2's W_U: d_model x vocabulary
    centered = w - w.mean(-1, keepdim=True)
    assert tl_adapter._mean_free(centered) is True
    assert tl_adapter._mean_free(centered.bfloat16()) is True
    assert tl_adapter._mean_free(w) is False
    assert tl_adapter._mean_free(w.bfloat16()) is False
    assert tl_adapter._mean_free(centered + 1e-3 * w.std()) is False  # a small common offset is not rounding
    assert tl_adapter._mean_free(None) is None
    assert tl_adapter._mean_free(torch.zeros(4, 8)) is None
    assert tl_adapter._mean_free(torch.ones(4, 8, dtype=torch.int64)) is None


def _bridge_pair_at_token_2(n_layers):
    """A bridge, clean prompts (2 x 6) and corrupted ones differing at token 2, the loss metric and
    the resid_pre grid from full passes."""
    from sinkinterp import patching

    bridge = _bridge("llama", n_layers=n_layers)
    clean = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(2))
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 7) % V
    metric = patching.loss_metric(clean)
    want = patching.patch(bridge, clean, corrupted, "resid_pre", metric, skip="none").values
    return bridge, clean, corrupted, metric, want


def _chained_hooks_on_a_bridge(monkeypatch):
    """A 2-layer bridge, tokens, its logits with blocks.1.hook_resid_pre -> (x + 1) * 2, a list
    ``seen`` a user's hook there writes to, the map-read counter, and three hooks that do the same
    edit in two steps on that point and note a hook_v read (each writes to ``seen``)."""
    bridge = _bridge("llama", n_layers=2)
    tokens = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(3))
    seen = []
    with torch.no_grad():
        want = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: (x + 1) * 2)])
    bridge.blocks[1].hook_resid_pre.add_hook(lambda x, hook: seen.append("user"))
    reads = _hook_map_reads(bridge, monkeypatch)
    hooks = [("blocks.1.hook_resid_pre", lambda x, hook: seen.append("add") or x + 1),
             ("blocks.1.hook_resid_pre", lambda x, hook: seen.append("double") or x * 2),
             ("blocks.0.attn.hook_v", lambda x, hook: seen.append("v"))]
    return bridge, tokens, want, seen, reads, hooks


def test_many_hooks_on_a_bridge_attach_as_one_and_chain_in_order(monkeypatch):
    """tl_adapter.attached_hooks hands a bridge many hooks as one filter hook (its hooks() rebuilds
    the alias map once per named hook): two hooks on one point run in the given order, each on
    the output of the one before; the map is built a fixed number of times, not once per hook; a hook the user attached
    beforehand stays and runs first."""
    bridge, tokens, want, seen, builds, hooks = _chained_hooks_on_a_bridge(monkeypatch)
    hooks += [(f"blocks.{l}.hook_resid_post", lambda x, hook: None) for l in range(2)]
    with torch.no_grad(), tl_adapter.attached_hooks(bridge, hooks):
        got = bridge(tokens)
    assert len(builds) <= 4  # 7 here when the hooks go in one by one (one per named hook, and more)
    torch.testing.assert_close(got, want)
    assert seen == ["v", "user", "add", "double"]
    bridge.reset_hooks()
    assert tl_adapter.count_attached_hooks(bridge) == 0


def test_a_bridge_with_its_hook_map_kept_takes_hooks_at_its_points(monkeypatch):
    """Inside tl_adapter.hook_dict_kept a bridge's hook map is read once, and attached_hooks adds
    hooks to its hook points directly: the same output as the bridge's own run_with_hooks, hooks on
    one point run in the given order after a user's, exactly the added ones are removed (also when
    the block raises), a hook point gated off by the bridge is refused with its message, and a hook
    that never fires is still named."""
    bridge, tokens, want, seen, builds, hooks = _chained_hooks_on_a_bridge(monkeypatch)
    with torch.no_grad():
        with tl_adapter.hook_dict_kept(bridge):
            for _ in range(3):
                with tl_adapter.attached_hooks(bridge, hooks):
                    got = bridge(tokens)
            assert tl_adapter.has_hook(bridge, "blocks.1.hook_resid_pre")
            with pytest.raises(ZeroDivisionError), tl_adapter.attached_hooks(bridge, hooks):
                raise ZeroDivisionError
            with pytest.raises(ValueError, match="use_attn_result"), \
                    tl_adapter.attached_hooks(bridge, [("blocks.0.attn.hook_result", lambda x, hook: None)]):
                pass
            assert len(builds) == 1
            with pytest.raises(RuntimeError, match=r"blocks\.0\.hook_resid_pre.*never fired"), \
                    tl_adapter.attached_hooks(bridge, [("blocks.0.hook_resid_pre", lambda x, hook: None),
                                                      ("blocks.1.hook_resid_pre", lambda x, hook: None)]):
                bridge.blocks[1].hook_resid_pre(torch.zeros(1, 6, 16))  # only block 1's point fires
        torch.testing.assert_close(got, want)
        assert seen == ["v", "user", "add", "double"] * 3 + ["user"]
        assert len(bridge.blocks[1].hook_resid_pre.fwd_hooks) == 1  # the user's hook stays
    bridge.reset_hooks()
    assert tl_adapter.count_attached_hooks(bridge) == 0


def test_bridge_patching_reads_its_hook_map_once_and_records_the_corrupted_run_once(monkeypatch):
    """patch on a bridge reads the hook map once per call (the bridge rebuilds it on every read) and
    runs the whole batch through the Hugging Face model three times (clean, corrupted, every cell
    together): the corrupted run is also the record the passes continue from, and whether they
    reproduce the run is checked on one sequence; the grid equals full passes."""
    from sinkinterp import patching

    bridge, clean, corrupted, metric, want = _bridge_pair_at_token_2(n_layers=3)
    builds, rows = _hook_map_reads(bridge, monkeypatch), []
    base = tl_adapter.wrapped_hf_model(bridge).model
    handle = base.register_forward_pre_hook(
        lambda mod, args, kw: rows.append(tuple(kw["input_ids"].shape)) if kw.get("input_ids") is not None else None,
        with_kwargs=True)
    try:
        got = patching.patch(bridge, clean, corrupted, "resid_pre", metric, batch_rows=6)
    finally:
        handle.remove()
    assert len(builds) == 1
    assert rows.count(tuple(clean.shape)) == 3
    assert any(r[0] == 1 for r in rows)  # the check
    np.testing.assert_allclose(got.values, want, rtol=1e-6, atol=1e-6)
    assert np.ptp(got.values) > 1e-6
    assert tl_adapter.count_attached_hooks(bridge) == 0


@pytest.mark.parametrize("name", sorted(ROUTED))
def test_observation_only_attention_is_routed_through_its_hooks(name, monkeypatch):
    """TransformerLens 3.9's OPT and GPT-J bridges fire hook_pattern and hook_attn_scores on the
    probabilities Hugging Face returns: edits there do nothing and hook_attn_scores holds
    probabilities. Unrouted, pattern edits are refused; routed (boot_bridge does it), hook_attn_scores
    holds the scores the model softmaxes, the attention equals Hugging Face's, and edits act."""
    tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    names = ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"]
    with monkeypatch.context() as m:
        m.setattr(tl_adapter, "route_attention", lambda model: False)
        plain = _bridge(name)
    acts = _captured(plain, tokens, names)
    np.testing.assert_allclose(acts[names[0]].numpy(), acts[names[1]].numpy(), atol=1e-7)
    with pytest.raises(RuntimeError, match="can be read but not edited"):
        run_intervention(plain, tokens, first_token("ablate"), sinks=False)

    hf = _build(name)
    with torch.no_grad():
        ref = copy.deepcopy(hf)(tokens, output_attentions=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        routed = tl_adapter.boot_bridge(hf, word_tokenizer(V), name)
    acts = _captured(routed, tokens, names)
    scores, pattern = acts[names[0]], acts[names[1]]
    np.testing.assert_allclose(pattern.numpy(), ref.attentions[0].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(scores.masked_fill(~causal, float("-inf")).softmax(-1).numpy(), pattern.numpy(),
                               atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(routed(tokens).double(), ref.logits.double(), atol=1e-5, rtol=1e-5)
    assert run_intervention(routed, tokens, first_token("ablate"), sinks=False).delta_loss != 0


@pytest.mark.parametrize("name", ["codegen", "cohere", "falcon", "gpt_neox", "llama", "phi3", "stablelm",
                                  "starcoder2"])
def test_rotary_position_moves_token_1_on_bridges(name):
    """Layer 0's queries and keys depend on the token and its position only, so after the edit query
    t scores token 1 exactly as it scores token 1's id placed at position p (t > p); partial rotary
    (GPT-NeoX, StableLM) included."""
    bridge = _bridge(name)
    tokens, p = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1)), 5
    moved = tokens.clone()
    moved[:, p] = tokens[:, 0]
    inter = first_token("rotary_position", position=p)
    from sinkinterp import patching
    from sinkinterp.interventions import COMPONENTS

    edits = [(COMPONENTS[c], src) for c, src in inter.build_edits(bridge, False)]
    hooks = patching.edit_hooks(bridge, edits, [patching.Cell(0)])
    name0 = "blocks.0.attn.hook_attn_scores"
    store = {}
    with torch.no_grad(), tl_adapter.attached_hooks(bridge, hooks + [(name0, lambda x, hook: store.__setitem__("e", x))]):
        bridge(tokens)
    with torch.no_grad(), tl_adapter.attached_hooks(bridge, [(name0, lambda x, hook: store.__setitem__("m", x))]):
        bridge(moved)
    with torch.no_grad(), tl_adapter.attached_hooks(bridge, [(name0, lambda x, hook: store.__setitem__("p", x))]):
        bridge(tokens)
    # query p itself is token 1's id in the moved run: compare the queries after it
    torch.testing.assert_close(store["e"][:, :, p + 1:, 0], store["m"][:, :, p + 1:, p], atol=1e-5, rtol=1e-5)
    assert (store["e"][:, :, p:, 0] - store["p"][:, :, p:, 0]).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(store["e"][:, :, :, 1:], store["p"][:, :, :, 1:], atol=0, rtol=0)
    result = run_intervention(bridge, tokens, inter, sinks=False, per_head=True)
    assert np.isfinite(result.per_head).all() and result.loss != result.loss_base


def test_rotary_position_moves_token_1_on_gptj():
    """GPT-J rotates adjacent pairs of the first rotary_dim dimensions inside Hugging Face's code, with
    no rotary hook firing: rotary_position turns token 1's pre-rotary key (hook_k) by the model's own
    sin|cos table. Rebuilt with Hugging Face's own GPT-J rotary functions, layer 0 then scores token
    1 as it scores token 1's id placed at position p, for the queries after p."""
    from transformers.models.gptj import modeling_gptj as gptj

    from sinkinterp import patching
    from sinkinterp.interventions import COMPONENTS

    bridge = _bridge("gptj")
    hf_attn = tl_adapter.wrapped_hf_model(bridge).transformer.h[0].attn
    tokens, p = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1)), 5
    moved = tokens.clone()
    moved[:, p] = tokens[:, 0]
    inter = first_token("rotary_position", position=p)
    assert [c for c, _ in inter.build_edits(bridge, False)] == ["k"]
    edits = [(COMPONENTS[c], src) for c, src in inter.build_edits(bridge, False)]

    def scores(toks, hooks=()):
        store = {}
        grab = [(f"blocks.0.attn.hook_{c}", lambda x, hook, c=c: store.__setitem__(c, x.double())) for c in "qk"]
        with torch.no_grad(), tl_adapter.attached_hooks(bridge, list(hooks) + grab):
            bridge(toks)
        sincos = hf_attn.embed_positions[:T].double()[None]  # [1, T, rotary dims]
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        r = hf_attn.rotary_dim
        q, k = (torch.cat([gptj.apply_rotary_pos_emb(x[..., :r], sin, cos), x[..., r:]], -1)
                for x in (store["q"], store["k"]))
        return torch.einsum("bthd,bshd->bhts", q, k)

    edited = scores(tokens, patching.edit_hooks(bridge, edits, [patching.Cell(0)]))
    torch.testing.assert_close(edited[:, :, p + 1:, 0], scores(moved)[:, :, p + 1:, p], atol=1e-5, rtol=1e-5)
    plain = scores(tokens)
    assert (edited[:, :, p:, 0] - plain[:, :, p:, 0]).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(edited[:, :, :, 1:], plain[:, :, :, 1:], atol=0, rtol=0)
    result = run_intervention(bridge, tokens, inter, sinks=False, per_head=True)
    assert np.isfinite(result.per_head).all() and result.loss != result.loss_base


def test_unobservable_rotation_is_skipped_or_refused(monkeypatch):
    """A bridge that lists rotary hooks that never fire, around a model whose rotary embedding the
    adapter does not know (simulated on GPT-J by hiding its table): qk_heads="all" refuses, "auto"
    measures the rest and says why the decomposition is missing; rotary_position is refused."""
    bridge = _bridge("gptj")
    tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(tl_adapter, "hf_key_rotation", lambda hf: None)
    assert qk_source(bridge, tokens)[0] is None
    with pytest.raises(ValueError, match="rotated queries and keys"):
        measure(bridge, tokens, qk_heads="all")
    report = measure(bridge, tokens, qk_heads="auto")
    assert report.qk is None and "GPTJForCausalLM" in report.extra["qk_skipped"]
    assert report.alpha_by_key.shape == (2, 4, T)
    with pytest.raises(RuntimeError, match="never fired"):
        run_intervention(bridge, tokens, first_token("rotary_position", position=3), sinks=False)


# the module whose input is the MLP's hidden units (blocks.{l}.mlp.hook_post) in each Hugging Face model
MLP_OUT = {"gpt2": "mlp.c_proj", "gpt_neox": "mlp.dense_4h_to_h", "opt": "fc2", "bloom": "mlp.dense_4h_to_h",
           "falcon": "mlp.dense_4h_to_h", "falcon_alibi": "mlp.dense_4h_to_h", "gptj": "mlp.fc_out", "phi": "mlp.fc2", "gpt_bigcode": "mlp.c_proj",
           "mpt": "ffn.down_proj", "codegen": "mlp.fc_out",
           "starcoder2": "mlp.c_proj"}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_zero_neurons_equals_silencing_hugging_face_mlp_units(name):
    """zero_neurons(1, units) on the bridge gives the loss of Hugging Face's own model with those
    units of layer 1's MLP (the input of its output projection; gated MLPs included) zeroed at
    token 1."""
    if name in MOE:
        bridge = _bridge(name)
        tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
        from sinkinterp.interventions import zero_neurons

        with pytest.raises(ValueError, match="mixture of experts"):
            run_intervention(bridge, tokens, zero_neurons(1, [0]), sinks=False)
        return
    import torch.nn.functional as F

    hf = _build(name)
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    neurons = list(range(0, 32, 2))
    ref = _reference(hf, name)
    out_proj = [m for n, m in ref.named_modules() if n.endswith(MLP_OUT.get(name, "mlp.down_proj")) and ".1." in n]
    assert len(out_proj) == 1

    def silence(module, args):
        x = args[0].clone()
        x.view(tokens.shape[0], T, -1)[:, 0, neurons] = 0  # OPT flattens batch and positions here
        return (x,)

    handle = out_proj[0].register_forward_pre_hook(silence)
    with torch.no_grad():
        logits = ref(tokens).logits.double()
    handle.remove()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)).item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = tl_adapter.boot_bridge(hf, word_tokenizer(V), name)
    from sinkinterp.interventions import zero_neurons

    result = run_intervention(bridge, tokens, zero_neurons(1, neurons), sinks=False)
    assert abs(result.delta_loss) > 5e-6
    assert result.loss == pytest.approx(expected, abs=2e-7)


def _pair_with_tl_reference(arch, tl_fn, T=6, p=0):
    """For the ``arch`` fixture: clean = its first two prompts cut to T, corrupted = token p
    replaced, the loss metric, and transformer_lens.patching's per-cell grid ``tl_fn`` for them."""
    from sinkinterp import patching

    _, lm, tokens, _ = arch
    clean = tokens[:2, :T]
    corrupted = clean.clone()
    corrupted[:, p] = (clean[:, p] + 7) % V
    metric = patching.loss_metric(clean)
    _, cache = lm.model.run_with_cache(clean)
    return clean, corrupted, metric, getattr(tl_adapter.patching, tl_fn)(lm.model, corrupted, cache, metric).numpy()


@pytest.mark.parametrize("component, tl_fn", [("k", "get_act_patch_attn_head_k_by_pos"),
                                              ("v", "get_act_patch_attn_head_v_all_pos"),
                                              ("resid_pre", "get_act_patch_resid_pre")])
def test_batched_patching_equals_transformer_lens_on_bridges(arch, component, tl_fn):
    """sinkinterp's batched patching of first-token k / v / resid (first token replaced in the
    corrupted run) equals transformer_lens.patching's per-cell functions on every architecture."""
    from sinkinterp import patching

    name, lm, _, _ = arch
    clean, corrupted, metric, ref = _pair_with_tl_reference(arch, tl_fn)
    ours = patching.patch(lm.model, clean, corrupted, component, metric, by_pos=component != "v")
    assert ours.values.shape == ref.shape
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-6
    assert tl_adapter.count_attached_hooks(lm.model) == 0


@pytest.mark.parametrize("component, tl_fn", [("resid_pre", "get_act_patch_resid_pre"),
                                              ("v", "get_act_patch_attn_head_v_all_pos"),
                                              ("pattern", "get_act_patch_attn_head_pattern_all_pos")])
def test_bridge_passes_start_at_the_corrupted_position(arch, component, tl_fn):
    """With a token in the middle corrupted, a bridge's passes continue the corrupted run from that
    position through the Hugging Face key-value cache (earlier positions are not computed again) and
    give transformer_lens.patching's per-cell values; sliding-window layers included (Gemma 3's
    window of 4 < T: the recorded cache keeps every key, the model's mask applies the window); the
    pattern from its first changed query row (the pattern hook sees those rows, every key)."""
    from sinkinterp import patching

    name, lm, _, _ = arch
    p = 3
    clean, corrupted, metric, ref = _pair_with_tl_reference(arch, tl_fn, T=7, p=p)
    lengths = []

    def record(x, hook):
        if x.shape[0] > 1:  # the adapter's own hook probes run one short sequence: left out
            lengths.append(x.shape[1])

    with tl_adapter.attached_hooks(lm.model, [("blocks.0.hook_resid_pre", record)]):
        ours = patching.patch(lm.model, clean, corrupted, component, metric, by_pos=component == "resid_pre")
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-6
    # full passes: the two captures, the together pass and (continued) the record of the corrupted run
    lengths = sorted(set(lengths))
    if name in MOE:  # tokens grouped by expert round earlier positions differently: a pass may start earlier
        assert lengths[-1] == 7 and 7 - p <= lengths[0] < 7
    else:
        assert lengths == [7 - p, 7]
    assert tl_adapter.count_attached_hooks(lm.model) == 0


@pytest.mark.parametrize("component, tl_fn, by_pos", [("resid_pre", "get_act_patch_resid_pre", True),
                                                      ("pattern", "get_act_patch_attn_head_pattern_all_pos", False)])
def test_bridge_passes_start_at_the_patched_layer(arch, component, tl_fn, by_pos):
    """A bridge's passes for cells at layer 1 do not run block 0 (it returns its output from the
    corrupted run) and give transformer_lens.patching's per-cell values of that layer, on every
    architecture (block outputs with attention weights beside them included)."""
    from sinkinterp import patching

    name, lm, _, _ = arch
    clean, corrupted, metric, ref = _pair_with_tl_reference(arch, tl_fn)
    batches = []
    with tl_adapter.attached_hooks(lm.model, [("blocks.0.hook_resid_pre", lambda x, hook: batches.append(x.shape[0]))]):
        ours = patching.patch(lm.model, clean, corrupted, component, metric, by_pos=by_pos, layers=[1])
    np.testing.assert_allclose(ours.values[0], ref[1], rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-6
    assert max(batches) == 2  # block 0 ran in the unpatched passes only (the patched ones hold 6 or 4 copies)


def test_bridge_patching_unembeds_only_the_metric_positions(arch):
    """metric_positions=[-1] with a last-position logit difference: every patched pass of a bridge
    hands one position to the Hugging Face model's output embedding, and the grid equals
    transformer_lens.patching's per-cell values from full logits (token 3 corrupted: passes
    continued from it, blocks replayed)."""
    from sinkinterp import patching

    _, lm, tokens, _ = arch
    clean = tokens[:2, :7]
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 7) % V
    metric = patching.logit_diff_metric([5, 6], [7, 8], pos=-1)
    _, cache = lm.model.run_with_cache(clean)
    ref = tl_adapter.patching.get_act_patch_resid_pre(lm.model, corrupted, cache, metric).numpy()
    seen = []
    head = tl_adapter.wrapped_hf_model(lm.model).get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape[:2])))
    try:
        ours = patching.patch(lm.model, clean, corrupted, "resid_pre", metric, metric_positions=[-1])
    finally:
        handle.remove()
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-6
    patched = [s for s in seen if s[0] > 2]  # stacked copies (the checks and captures run 2 rows)
    assert patched and {s[1] for s in patched} == {1}
    assert tl_adapter.count_attached_hooks(lm.model) == 0


def test_a_bridge_whose_record_fails_runs_every_pass_in_full(monkeypatch):
    """When the recording pass of hf_continuation raises (a model whose cache is not a Hugging
    Face DynamicCache, say), patching runs every pass in full and gives the same grid."""
    from sinkinterp import patching

    bridge, clean, corrupted, metric, want = _bridge_pair_at_token_2(n_layers=2)
    real = tl_adapter.hf_continuation

    def failing(model):
        _, cont = real(model)

        def run_fails(tokens):
            raise TypeError("this model keeps another kind of cache")

        return run_fails, cont

    monkeypatch.setattr(tl_adapter, "hf_continuation", failing)
    got = patching.patch(bridge, clean, corrupted, "resid_pre", metric).values
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert tl_adapter.count_attached_hooks(bridge) == 0


def test_hf_continuation_equals_the_full_run_and_leaves_the_bridge_as_it_was():
    """tl_adapter.hf_continuation: a pass from (layer, pos) gives the full run's logits of positions
    pos.. for n stacked copies (a sliding-window model too, from positions inside and past its window); the blocks it replays get their own forward back, also when a hook
    raises in the middle of the pass."""
    tokens = torch.randint(3, V, (2, 8), generator=torch.Generator().manual_seed(4))
    windowed = _bridge("gemma3")  # a sliding window of 4 < 8 positions: the record keeps every key anyway
    run, cont = tl_adapter.hf_continuation(windowed)
    with torch.no_grad():
        full, record = windowed(tokens), run(tokens)
        assert all(k.shape[2] == 8 for k, _ in record.past)
        for pos in (1, 3, 6):
            torch.testing.assert_close(cont(tokens, 0, pos, record, 2), full[:, pos:].repeat(2, 1, 1),
                                       atol=1e-5, rtol=1e-5)
    bridge = _bridge("llama", n_layers=3)
    run, cont = tl_adapter.hf_continuation(bridge)
    with torch.no_grad():
        full = bridge(tokens)
        record = run(tokens)
        torch.testing.assert_close(record.logits, full)
        for layer, pos in [(0, 3), (2, 0), (2, 5), (3, 1)]:
            got = cont(tokens, layer, pos, record, 2)
            torch.testing.assert_close(got, full[:, pos:].repeat(2, 1, 1), atol=1e-5, rtol=1e-5)

        def fail(x, hook):
            raise RuntimeError("a hook failed")

        with pytest.raises(RuntimeError, match="a hook failed"), \
                tl_adapter.attached_hooks(bridge, [("blocks.2.hook_resid_pre", fail)]):
            cont(tokens, 2, 0, record, 1)
        assert not any("forward" in vars(b) for b in bridge.blocks)
        torch.testing.assert_close(bridge(tokens), full)
    with pytest.raises(ValueError, match="layer: got 4"):
        cont(tokens, 4, 0, record, 1)
    assert tl_adapter.hf_continuation(tl_adapter.hooked_transformer_from_config(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=V, n_ctx=8, act_fn="gelu")) is None


def test_an_alibi_falcon_has_no_rotary_embedding_to_use():
    """Falcon configured with ALiBi keeps a rotary_emb module it never applies: the adapter must not
    offer it as the model's rotation (the decomposition, rotary_position and the rolling cache would
    turn keys the model does not turn)."""
    import transformers

    fields = dict(ARCHS["falcon"][2], alibi=True)
    hf = transformers.FalconForCausalLM._from_config(transformers.FalconConfig(**SMALL, **fields))
    assert tl_adapter.hf_rotary_emb(hf) is None and tl_adapter.hf_key_rotation(hf) is None
    assert tl_adapter.hf_key_rotation(_build("falcon")) is not None


def test_falcon_alibi_bridge_adds_the_bias_once_and_writes_its_cache(monkeypatch):
    """transformers 5.23's eager Falcon attention with ALiBi adds the bias twice (in the mask FalconModel
    builds, and again itself), its SDPA path once, as Falcon-RW was trained; TransformerLens 3.9's ALiBi
    bridge copies the eager path and never writes the KV cache. The defect is measured here directly
    (eager vs SDPA, same weights) and falcon_alibi_defect must follow it. Unrouted, the bridge gives
    eager's logits and (on 3.x; TransformerLens 4.3 writes it) an empty cache; routed (boot_bridge),
    SDPA's logits, and a step read through the cache the full pass's. If the unrouted asserts start failing, transformers or TransformerLens
    changed: revisit tl_adapter._falcon_alibi_once."""
    hf = _build("falcon_alibi")
    tokens = torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager, sdpa = copy.deepcopy(hf)(tokens).logits, _sdpa_copy(hf)(tokens).logits
    gap = float((eager - sdpa).abs().max())
    assert (tl_adapter.falcon_alibi_defect() is not None) == (gap > 1e-4)
    assert gap > 1e-4  # transformers 5.23 (constraints.txt); a fixed release needs this test revisited
    with monkeypatch.context() as m:
        m.setattr(tl_adapter, "route_attention", lambda model: False)
        plain = tl_adapter.wrapped_hf_model(_bridge("falcon_alibi"))
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens).logits, eager, atol=1e-5, rtol=1e-5)
        unwritten = all(layer.keys is None
                        for layer in plain(input_ids=tokens[:, :8], use_cache=True).past_key_values.layers)
        assert unwritten == tl_adapter.tl_version().startswith("3.")  # TransformerLens 4.3 writes it
        routed = tl_adapter.wrapped_hf_model(_bridge("falcon_alibi"))
        torch.testing.assert_close(routed(tokens).logits, sdpa, atol=1e-5, rtol=1e-5)
        cache = routed(input_ids=tokens[:, :8], use_cache=True).past_key_values
        assert [tuple(layer.keys.shape) for layer in cache.layers] == [(2, 4, 8, 8)] * 2
        step = routed(input_ids=tokens[:, 8:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(step, sdpa[:, 8:], atol=1e-5, rtol=1e-5)


def test_cohere_needs_its_rotation_routed(monkeypatch):
    """TransformerLens 3.9's Cohere bridge rotates with LLaMA's rotate-half where Cohere pairs adjacent
    dimensions: unrouted, its pattern is not the model's. boot_bridge routes it (route_attention), and
    the ARCHS tests hold it to Hugging Face. TransformerLens 4.3 fixed it, so there the unrouted pattern
    is already the model's and route_attention leaves Cohere alone (tl_adapter._TL3_ONLY)."""
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch.stack(_build("cohere")(tokens, output_attentions=True).attentions, 1).double()
    with monkeypatch.context() as m:
        m.setattr(tl_adapter, "route_attention", lambda model: False)
        plain = _bridge("cohere")
    pattern = _captured(plain, tokens, ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"]
    # TransformerLens 4.3 fixed it (route_attention leaves it alone there)
    assert ((pattern - ref[:, 0]).abs().max() > 1e-4) == tl_adapter.tl_version().startswith("3.")
    routed = _captured(_bridge("cohere"), tokens, ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"]
    np.testing.assert_allclose(routed.numpy(), ref[:, 0].numpy(), atol=1e-6)


def _gpt_oss(sinks=(2.0, 0.0, -1.0, 1.0)):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GptOssConfig(**SMALL, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, intermediate_size=32, num_local_experts=2,
                                    num_experts_per_tok=1, max_position_embeddings=64, sliding_window=4,
                                    layer_types=["sliding_attention", "full_attention"])  # as gpt-oss alternates
    hf = transformers.GptOssForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if pname.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
            if pname.endswith("sinks"):
                p.copy_(torch.tensor(sinks))
    return hf


def test_gpt_oss_learned_sinks_are_the_bias_slot(tmp_path):
    """gpt-oss's learned attention sinks (a logit per head that joins the softmax and is dropped):
    TransformerLens 3.9's bridge gives hook_pattern rows that sum to 1 minus the sink's share, which
    measure reports as the bias slot (alpha_*, Sink_*, equal to what Hugging Face's eager attention
    leaves), the decomposition names the logits (slot_logit), and ablate_bias is the model without
    sinks (Hugging Face's with the sink logits at -1e4)."""
    import torch.nn.functional as F

    from sinkinterp.lengths import measure_lengths

    hf = _gpt_oss()
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        att = torch.stack(copy.deepcopy(hf)(tokens, output_attentions=True).attentions, 1).double()  # [N, L, H, T, T]
    hf.save_pretrained(tmp_path)
    word_tokenizer(V).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(tmp_path))
    report = measure(lm.model, tokens, qk_heads="all", eps=0.3)
    sink_share = 1.0 - att.sum(-1)  # [N, L, H, T]
    assert sink_share.max() > 0.3
    np.testing.assert_allclose(report.alpha, att[..., 0].mean((0, 3)).numpy(), atol=1e-6)
    np.testing.assert_allclose(report.alpha_bias, sink_share.mean((0, 3)).numpy(), atol=1e-6)
    expected = (sink_share.mean(-1) > 0.3).double().mean() * 100  # per sequence, layer and head
    assert report.sink_bias_pct == pytest.approx(float(expected))
    np.testing.assert_allclose(report.qk["slot_logit"], [2.0, 0.0, -1.0, 1.0] * 2)
    lengths = measure_lengths(lm.model, tokens, lengths=[T], eps=0.3, norms=False)
    assert lengths.sink_bias_pct[-1] == pytest.approx(report.sink_bias_pct)

    result = run_intervention(lm.model, tokens, first_token("ablate_bias"), target_start=1, sinks=False)
    without = copy.deepcopy(hf)
    with torch.no_grad():
        for layer in without.model.layers:
            layer.self_attn.sinks.fill_(-1e4)
        logits = without(tokens).logits.double()
    expected_loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)).item()
    assert abs(result.delta_loss) > 1e-3
    assert result.loss == pytest.approx(expected_loss, abs=1e-5)


def test_mpt_bridge_writes_its_kv_cache_only_routed(monkeypatch):
    """TransformerLens 3.9's MPT bridge recomputes the attention but never wrote the Hugging Face cache:
    unrouted, a cached step leaves every layer's cache empty (a next step would see only itself).
    Routed (boot_bridge), the cache holds each layer's keys and values, and the next token read
    through it gets the logits of the full forward pass. TransformerLens 4.3 fixed it, so there the
    unrouted cache is written and route_attention leaves MPT alone (tl_adapter._TL3_ONLY)."""
    tokens = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(1))
    with monkeypatch.context() as m:
        m.setattr(tl_adapter, "route_attention", lambda model: False)
        plain = tl_adapter.wrapped_hf_model(_bridge("mpt"))
    with torch.no_grad():
        unwritten = all(layer.keys is None
                        for layer in plain(input_ids=tokens[:, :4], use_cache=True).past_key_values.layers)
        assert unwritten == tl_adapter.tl_version().startswith("3.")  # TransformerLens 4.3 fixed it: not routed
        routed = tl_adapter.wrapped_hf_model(_bridge("mpt"))
        cache = routed(input_ids=tokens[:, :4], use_cache=True).past_key_values
        assert [tuple(layer.keys.shape) for layer in cache.layers] == [(2, 4, 4, 8)] * 2
        step = routed(input_ids=tokens[:, 4:], past_key_values=cache, use_cache=True).logits[:, -1]
        full = routed(input_ids=tokens).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
