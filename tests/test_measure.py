"""The streaming measurement: exact values on hand-built patterns, parity with Hugging Face eager
attention and TransformerLens caches, streaming = all-at-once, hooks always removed, bad input."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import hf_attentions, tiny_gpt2, tiny_llama, word_tokenizer

from sinkinterp import tl_adapter
from sinkinterp.measure import measure, validate_tokens
from sinkinterp.metrics import alpha_from_pattern


class PatternModel(tl_adapter.HookedRootModule):
    """A fake hooked model whose attention patterns are hand-built: a sequence whose first token is
    0 gets a full sink on token 1 in every head of layer 0 and head 0 of layer 1; every other head
    and sequence attends uniformly. With ``bias`` it also reports a bias slot taking weight 0.5 in
    layer 1."""

    def __init__(self, n_layers=2, n_heads=2, d_vocab=10, bias=False, fail=False):
        super().__init__()
        self.cfg = SimpleNamespace(n_layers=n_layers, n_heads=n_heads, d_model=4, d_head=2, d_vocab=d_vocab,
                                   n_ctx=32, positional_embedding_type="none")
        self.blocks = torch.nn.ModuleList()
        for _ in range(n_layers):
            blk = torch.nn.Module()
            blk.attn = torch.nn.Module()
            blk.attn.hook_pattern = tl_adapter.HookPoint()
            if bias:
                blk.attn.hook_bias_pattern = tl_adapter.HookPoint()
            self.blocks.append(blk)
        self.bias, self.fail = bias, fail
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.setup()

    def forward(self, tokens):
        b, T = tokens.shape
        uniform = torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]
        sink = torch.zeros(T, T, dtype=torch.float64)
        sink[:, 0] = 1.0
        for l, blk in enumerate(self.blocks):
            pat = uniform.repeat(b, self.cfg.n_heads, 1, 1)
            is_sink = tokens[:, 0] == 0
            heads = range(self.cfg.n_heads) if l == 0 else [0]
            for h in heads:
                pat[is_sink, h] = sink
            if self.bias and l == 1:
                blk.attn.hook_bias_pattern(torch.full((b, self.cfg.n_heads, T), 0.5, dtype=torch.float64))
                pat = pat * 0.5
            blk.attn.hook_pattern(pat)
            if self.fail:
                raise RuntimeError("boom")
        return torch.zeros(b, T, self.cfg.d_vocab)


def fake_tokens(n_sink, n_plain, T=12):
    tokens = torch.ones(n_sink + n_plain, T, dtype=torch.long)
    tokens[:n_sink, 0] = 0
    return tokens


def test_exact_sink_values_on_hand_built_patterns():
    model = PatternModel()
    report = measure(model, fake_tokens(3, 1), eps=0.3, norms=False, qk_heads=None, batch_size=3)
    # uniform causal attention over T = 12: alpha_1 = (1 + 1/2 + ... + 1/12) / 12 = 0.2586 < 0.3.
    # Sink sequences: 3 of 4 heads sink on token 1 -> 75%; plain sequences: 0%. Mean: 56.25%.
    h12 = sum(1 / t for t in range(1, 13)) / 12
    assert report.sink_pct[0] == pytest.approx(3 * 75.0 / 4)
    mixed = (3 * 1.0 + h12) / 4
    np.testing.assert_allclose(report.alpha, [[mixed, mixed], [mixed, h12]], atol=1e-12)
    # Sink_2: uniform alpha_2 = (1/2 + ... + 1/12) / 11 = 0.19 -> no head
    assert report.sink_pct[1] == 0.0
    assert report.sink_bias_pct is None
    # eps sweep: at 0.25 the uniform heads (0.2586) count too; at 0.45 only the hand-built sinks
    at = lambda e: report.sink1_by_eps[int(np.argmin(np.abs(report.eps_grid - e)))]  # noqa: E731
    assert at(0.25) == pytest.approx(100.0)
    assert at(0.45) == pytest.approx(56.25)
    np.testing.assert_allclose(report.head_sink_rate, [[75.0, 75.0], [75.0, 0.0]])
    # attention on token 1 by query position: 1 in the sink sequences, 1/t under uniform attention
    inv_t = 1.0 / np.arange(1, 13)
    np.testing.assert_allclose(report.attn1_by_query[0, 1], (3 * 1.0 + inv_t) / 4, atol=1e-12)
    np.testing.assert_allclose(report.attn1_by_query[1, 1], inv_t, atol=1e-12)
    np.testing.assert_allclose(report.attn1_by_query.mean(-1), report.alpha, atol=1e-12)  # alpha_1 averages it
    assert report.attn_bias_by_query is None
    assert len(report.to_dict()["attn1_by_query"][1][1]) == 12


def test_bias_slot_gives_sink_star():
    model = PatternModel(bias=True)
    report = measure(model, fake_tokens(2, 2), eps=0.3, norms=False, qk_heads=None)
    # layer 1 heads put 0.5 on the slot: 2 of 4 heads per sequence -> Sink_* = 50%
    assert report.sink_bias_pct == pytest.approx(50.0)
    np.testing.assert_allclose(report.alpha_bias, [[0.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(report.attn_bias_by_query[1], np.full((2, 12), 0.5))
    np.testing.assert_allclose(report.attn_bias_by_query[0], 0.0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_streaming_equals_all_at_once(batch_size):
    model = tl_adapter.boot_bridge(tiny_llama(), word_tokenizer(61), "tiny")
    tokens = torch.randint(0, 61, (7, 12), generator=torch.Generator().manual_seed(1))
    whole = measure(model, tokens, batch_size=7, eps=0.2)
    parts = measure(model, tokens, batch_size=batch_size, eps=0.2)
    np.testing.assert_allclose(parts.alpha_by_key, whole.alpha_by_key, atol=1e-6)
    np.testing.assert_array_equal(parts.sink_pct_by_key, whole.sink_pct_by_key)
    np.testing.assert_allclose(parts.norms["resid"]["first"], whole.norms["resid"]["first"], rtol=1e-6)
    np.testing.assert_allclose(parts.qk["cos_q_k1"], whole.qk["cos_q_k1"], atol=1e-6)


def _reference_alpha(att):  # att [N, L, H, T, T], independent loop over k
    T = att.shape[-1]
    return torch.stack([att[..., k:, k].mean(-1) for k in range(T)], -1)  # [N, L, H, T]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_parity_with_hf_eager_attention(make):
    hf = make()
    tokens = torch.randint(0, 61, (6, 16), generator=torch.Generator().manual_seed(2))
    att, hidden = hf_attentions(hf, tokens)
    model = tl_adapter.boot_bridge(hf, word_tokenizer(61), "tiny")
    report = measure(model, tokens, eps=0.3, batch_size=4)
    alpha = _reference_alpha(att)  # [N, L, H, T]
    np.testing.assert_allclose(report.alpha_by_key, alpha.mean(0).numpy(), atol=1e-6)
    assert 0.05 < float(alpha[..., 0].std()) , "test model should have non-uniform attention"
    for eps in (0.1, 0.3, 0.5):
        ref = float((alpha[..., :10] > eps).double().mean((0, 1, 2))[0] * 100)
        i = int(np.argmin(np.abs(report.eps_grid - eps)))
        assert report.sink1_by_eps[i] == pytest.approx(ref, abs=1e-9)
    ref_sink = (alpha[..., :10] > 0.3).double().mean((0, 1, 2)).numpy() * 100
    np.testing.assert_allclose(report.sink_pct, ref_sink, atol=1e-9)
    # residual norms entering each block = HF hidden_states[l] for l < L
    for l in range(2):
        norms = hidden[l].norm(dim=-1)
        assert report.norms["resid"]["first"][l] == pytest.approx(float(norms[:, 0].mean()), rel=1e-5)
        assert report.norms["resid"]["rest"][l] == pytest.approx(float(norms[:, 1:].mean()), rel=1e-5)
    assert tl_adapter.count_attached_hooks(model) == 0


def _tiny_hooked_transformer():
    model = tl_adapter.hooked_transformer_from_config(
        n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
        positional_embedding_type="rotary", normalization_type="RMS", seed=0)
    return model, torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(3))


def test_hooked_transformer_and_qk_decomposition_match_cache():
    model, tokens = _tiny_hooked_transformer()
    report = measure(model, tokens, qk_heads=[(1, 2), (0, 0)])
    _, cache = model.run_with_cache(tokens)
    for i, (l, h) in enumerate([(1, 2), (0, 0)]):
        q = cache[f"blocks.{l}.attn.hook_rot_q"][:, :, h].double()
        k = cache[f"blocks.{l}.attn.hook_rot_k"][:, :, h].double()
        cos1 = torch.nn.functional.cosine_similarity(q, k[:, :1].expand_as(q), dim=-1).mean()
        assert report.qk["cos_q_k1"][i] == pytest.approx(float(cos1), abs=1e-6)
        assert report.qk["q_norm"][i] == pytest.approx(float(q.norm(dim=-1).mean()), rel=1e-6)
        assert report.qk["k1_norm"][i] == pytest.approx(float(k[:, 0].norm(dim=-1).mean()), rel=1e-6)
        logits = torch.einsum("btd,bsd->bts", q, k) / 8 ** 0.5
        mask = torch.tril(torch.ones(10, 10, dtype=torch.bool))
        mask[:, 0] = False
        assert report.qk["logit_q_krest"][i] == pytest.approx(float(logits[:, mask].mean()), abs=1e-6)
        pattern = cache[f"blocks.{l}.attn.hook_pattern"][:, h].double()
        assert report.alpha[l, h] == pytest.approx(float(alpha_from_pattern(pattern)[:, 0].mean()), abs=1e-6)
    v = cache["blocks.1.attn.hook_v"].double().norm(dim=-1)
    np.testing.assert_allclose(report.norms["value"]["first"][1], v[:, 0].mean(0).numpy(), rtol=1e-6)
    final = cache["blocks.1.hook_resid_post"].double().norm(dim=-1)
    assert report.norms["resid"]["massive_ratio"][-1] == pytest.approx(
        float(final[:, 0].mean() / final[:, 1:].mean()), rel=1e-6)


def test_gqa_keys_are_shared_across_query_heads():
    model = tl_adapter.boot_bridge(tiny_llama(n_kv_heads=2), word_tokenizer(61), "tiny")
    report = measure(model, torch.randint(0, 61, (2, 8)), qk_heads="all")
    k = report.norms["key"]["first"]  # [L, 4]: heads 0,1 share kv head 0; heads 2,3 share kv head 1
    np.testing.assert_allclose(k[:, 0], k[:, 1])
    np.testing.assert_allclose(k[:, 2], k[:, 3])
    assert not np.allclose(k[:, 0], k[:, 2])


def test_hooks_removed_after_error_and_user_hooks_kept():
    model = PatternModel(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        measure(model, fake_tokens(1, 1), norms=False, qk_heads=None)
    assert tl_adapter.count_attached_hooks(model) == 0
    ok = PatternModel()
    seen = []
    ok.blocks[0].attn.hook_pattern.add_hook(lambda x, hook: seen.append(1))
    measure(ok, fake_tokens(1, 1), norms=False, qk_heads=None)
    assert tl_adapter.count_attached_hooks(ok) == 1 and seen


@pytest.mark.parametrize("tokens, match", [
    (torch.zeros(2, 1, dtype=torch.long), "at least 2"),
    (torch.full((2, 4), 10), r"\[0, 9\]"),
    (torch.full((2, 4), -1), r"\[0, 9\]"),
    (torch.zeros(2, 4), "integer"),
    (torch.zeros(4, dtype=torch.long), "shape"),
])
def test_bad_tokens_rejected(tokens, match):
    with pytest.raises(ValueError, match=match):
        validate_tokens(tokens, d_vocab=10)


def test_bad_arguments_rejected_before_running():
    model = PatternModel(fail=True)  # would raise "boom" if it ever ran
    t = fake_tokens(1, 1)
    with pytest.raises(ValueError, match="eps"):
        measure(model, t, eps=1.5)
    with pytest.raises(ValueError, match="k_max"):
        measure(model, t, k_max=13)
    with pytest.raises(ValueError, match="qk_heads"):
        measure(model, t, qk_heads=[(5, 0)])
    with pytest.raises(TypeError, match="hooked model"):
        measure(torch.nn.Linear(2, 2), t)
    for bad in (0, 13, True):
        with pytest.raises(ValueError, match="first_keys"):
            measure(model, t, first_keys=bad)
    with pytest.raises(ValueError, match=r"k_max .*first_keys=3"):
        measure(model, t, first_keys=3, k_max=4)


def test_seq_len_sweep_measures_each_length():
    from sinkinterp.measure import sweep_seq_len

    model = PatternModel()
    reports = sweep_seq_len(model, lambda T: fake_tokens(1, 1, T=T), [4, 12], norms=False, qk_heads=None)
    assert sorted(reports) == [4, 12]
    # plain sequence: uniform alpha_1 is 0.52 at T = 4 (> 0.3) but 0.26 at T = 12 (< 0.3)
    assert reports[4].sink_pct[0] == pytest.approx(100.0)
    assert reports[12].sink_pct[0] == pytest.approx(37.5)
    assert reports[4].seq_len == 4 and len(reports[4].sink_pct) == 4


# ---------------------------------------------------------------------------------------
# first_keys: only the first key columns (a sinkinterp model keeps its fused kernels)
# ---------------------------------------------------------------------------------------
def _assert_restricted_equal(fast, full, n, atol=1e-12):
    assert fast.first_keys == n and full.first_keys is None
    assert fast.alpha_by_key.shape[-1] == n and fast.sink_pct_by_key.shape == (n,)
    np.testing.assert_allclose(fast.alpha_by_key, full.alpha_by_key[..., :n], atol=atol, rtol=0)
    np.testing.assert_array_equal(fast.sink_pct_by_key, full.sink_pct_by_key[:n])
    np.testing.assert_array_equal(fast.sink_pct, full.sink_pct[:fast.k_max])
    np.testing.assert_array_equal(fast.sink1_by_eps, full.sink1_by_eps)
    np.testing.assert_array_equal(fast.head_sink_rate, full.head_sink_rate)
    np.testing.assert_allclose(fast.attn1_by_query, full.attn1_by_query, atol=atol, rtol=0)
    if full.sink_bias_pct is not None:
        assert fast.sink_bias_pct == full.sink_bias_pct
        np.testing.assert_allclose(fast.alpha_bias, full.alpha_bias, atol=atol, rtol=0)
        np.testing.assert_array_equal(fast.sink_bias_by_eps, full.sink_bias_by_eps)
        np.testing.assert_allclose(fast.attn_bias_by_query, full.attn_bias_by_query, atol=atol, rtol=0)
    np.testing.assert_allclose(fast.norms["resid"]["first"], full.norms["resid"]["first"], rtol=1e-12)


def test_first_keys_on_hand_built_patterns():
    model = PatternModel(bias=True)
    full = measure(model, fake_tokens(3, 2), eps=0.3, norms=False, qk_heads=None)
    fast = measure(model, fake_tokens(3, 2), eps=0.3, norms=False, qk_heads=None, first_keys=3)
    assert fast.k_max == 3 and fast.to_dict()["first_keys"] == 3
    assert fast.sink_pct[0] == pytest.approx(3 * 75.0 / 5)  # 3 of 5 sequences sink in 3 of 4 heads
    full.norms = fast.norms = {"resid": {"first": np.zeros(1)}}
    _assert_restricted_equal(fast, full, 3)


@pytest.mark.parametrize("name", ["rotary", "kv", "sink_logit", "window_alibi_sigmoid", "gqa", "prefix"])
def test_first_keys_on_sinkinterp_models_equals_the_full_measurement(name):
    from sinkinterp.models.testing import tiny_model

    model = tiny_model(name)
    model.pattern_cols = 7
    tokens = torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(eps=0.15, eps_grid=(0.05, 0.1, 0.3), batch_size=2)
    full = measure(model, tokens, **kw)
    fast = measure(model, tokens, first_keys=4, **kw)
    _assert_restricted_equal(fast, full, 4)
    assert full.sink_pct_by_key[:4].max() > 0 or (full.sink_bias_pct or 0) > 0  # something to compare
    assert model.pattern_cols == 7  # restored
    assert tl_adapter.count_attached_hooks(model) == 0


@pytest.mark.parametrize("name", ["rotary", "kv", "sink_logit", "window_alibi_sigmoid", "gqa", "prefix",
                                  "linear_identity", "sigmoid_logn"])
def test_full_measurement_on_sinkinterp_models_keeps_the_fused_path(name, monkeypatch):
    """Every key's alpha from the read-only column sums (no materialized pattern) equals alpha_k of
    the cached patterns, sequence by sequence."""
    from sinkinterp.metrics import alpha_from_pattern
    from sinkinterp.models.attention import Attention
    from sinkinterp.models.testing import tiny_model

    model = tiny_model(name)
    tokens = torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(2))
    L, eps = model.cfg.n_layers, 0.15
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    patterns = [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(L)]
    alpha = torch.stack([alpha_from_pattern(p) for p in patterns]).numpy()  # [L, N, H, T]
    monkeypatch.setattr(Attention, "_attend_observed", lambda *a, **k: pytest.fail("materialized path used"))
    report = measure(model, tokens, eps=eps, batch_size=2)
    np.testing.assert_allclose(report.alpha_by_key, alpha.mean(1), atol=1e-12, rtol=0)
    np.testing.assert_array_equal(report.sink_pct_by_key, (alpha > eps).mean((0, 1, 2)) * 100)
    np.testing.assert_array_equal(report.head_sink_rate, (alpha[..., 0] > eps).mean(1) * 100)
    np.testing.assert_allclose(report.attn1_by_query, torch.stack([p[..., 0].mean(0) for p in patterns]).numpy(),
                               atol=1e-12, rtol=0)
    assert report.first_keys is None and report.sink_pct_by_key.max() > 0
    assert model.pattern_cols == 10 and tl_adapter.count_attached_hooks(model) == 0


def test_first_keys_on_a_hooked_transformer_slices_the_pattern():
    model, tokens = _tiny_hooked_transformer()
    full = measure(model, tokens, eps=0.2)
    fast = measure(model, tokens, eps=0.2, first_keys=2)
    _assert_restricted_equal(fast, full, 2, atol=1e-7)


def test_attention_on_token_1_by_query_ends_at_the_window():
    """Sliding-window models: queries past the window cannot see token 1, so its profile is exactly 0
    there, and alpha_1 (the profile's mean) is capped by window / T -- why Sink_1 alone cannot show
    the paper's window finding."""
    from sinkinterp.models.testing import tiny_model

    model = tiny_model("window_alibi_sigmoid")
    w = model.cfg.window
    tokens = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(3))
    report = measure(model, tokens, eps=0.3)
    assert 0 < w < 16
    np.testing.assert_array_equal(report.attn1_by_query[..., w:], 0.0)
    assert (report.attn1_by_query[..., :w] > 0).all()
    np.testing.assert_allclose(report.attn1_by_query.mean(-1), report.alpha, atol=1e-6)
    assert report.alpha.max() <= w / 16 + 1e-6


def _bias_terms_from_scores(model, tokens, layer):
    """The decomposition's expected position-bias terms, rebuilt from what the model really computed:
    hook_attn_scores minus scale * q.k (hook_q / hook_k: these models rotate nothing), each query's
    bias taken relative to its own key, averaged as the logits are (key 1: the queries that see it;
    keys 2..: the pairs the attention can use, read off the masked scores)."""
    store = {}
    names = [f"blocks.{layer}.attn.hook_{c}" for c in ("attn_scores", "q", "k")]
    hooks = [(n, lambda x, hook, n=n: store.__setitem__(n, x.detach().double())) for n in names]
    with torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
        model(tokens)
    s, q, k = (store[n] for n in names)
    k = k.repeat_interleave(q.shape[2] // k.shape[2], 2)
    seen, first, later = _pairs_in_sight(s)
    bias = (s - torch.einsum("bthd,bshd->bhts", q, k) * tl_adapter.attn_scale(model, layer)).masked_fill(~seen, 0)
    assert torch.allclose(bias, bias[:1].expand_as(bias), atol=1e-5)  # positions only, no data
    rel = bias - bias.diagonal(dim1=-2, dim2=-1)[..., None]
    return rel[..., first, 0].mean((0, 2)).numpy(), rel[..., later].mean((0, 2)).numpy()


def _pairs_in_sight(scores):
    """From a layer's masked scores [N, H, T, T]: the pairs a query sees ([T, T]), the queries that see
    key 1 ([T]) and the pairs with keys 2.. in sight ([T, T])."""
    seen = scores[0, 0] > -1e30
    later = seen.clone()
    later[:, 0] = False
    return seen, seen[:, 0], later


@pytest.mark.parametrize("kind", ["alibi", "relative_sink_token", "hooked_transformer_alibi", "alibi_window",
                                  "relative_prefix"])
def test_qk_decomposition_reports_the_position_bias_the_model_adds(kind):
    """ALiBi and T5 relative buckets add a bias of the positions to scale * q.k: the decomposition
    reports it beside the logits (bias_q_k1 / bias_q_krest), equal to the scores the model really
    computed minus its q.k logits; the learnable sink token's slot is not a real key and stays out."""
    from sinkinterp.measure import position_bias_terms
    from sinkinterp.models import ModelConfig, SinkTransformer
    from sinkinterp.models.attention import build_context

    torch.manual_seed(0)
    if kind == "hooked_transformer_alibi":
        model = tl_adapter.hooked_transformer_from_config(
            n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
            positional_embedding_type="alibi", normalization_type="RMS", seed=0)
    else:
        pos = kind.split("_")[0]
        model = SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=32, pos_emb=pos,
                                            attn_bias="sink_token" if "sink" in kind else "none",
                                            window=5 if "window" in kind else None,
                                            prefix_len=6 if "prefix" in kind else 0))
        if pos == "relative":
            for block in model.blocks:  # a learned table that is not flat, different in each layer
                torch.nn.init.normal_(block.attn.rel_bias, std=1.0)
        ctx = build_context(model.cfg, 20, torch.device("cpu"), torch.float32)
        for block in model.blocks:  # the rows equal what the forward pass adds
            np.testing.assert_allclose(block.attn.position_bias(torch.arange(20), 20).numpy(),
                                       block.attn._pos_bias(ctx).detach().double().numpy(), rtol=1e-6)
    tokens = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(1))
    report = measure(model, tokens, qk_heads="all")
    assert "ALiBi" in report.qk["position_bias"] or "relative" in report.qk["position_bias"]
    for l in range(2):
        k1, rest = _bias_terms_from_scores(model, tokens, l)
        assert np.abs(k1).max() > 0.05
        np.testing.assert_allclose(report.qk["bias_q_k1"][4 * l:4 * l + 4], k1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(report.qk["bias_q_krest"][4 * l:4 * l + 4], rest, rtol=1e-5, atol=1e-6)
    # by blocks of queries: the same numbers whatever the block
    small, _ = position_bias_terms(model, [0, 1], 20, block=3)
    np.testing.assert_allclose(small[1][0], report.qk["bias_q_k1"][4:], rtol=1e-12)
    np.testing.assert_allclose(small[1][1], report.qk["bias_q_krest"][4:], rtol=1e-12)


def test_a_model_without_position_bias_reports_none_and_a_soft_cap_is_named():
    model, tokens = _tiny_hooked_transformer()
    report = measure(model, tokens, qk_heads=[(0, 0)])
    assert report.qk["position_bias"].startswith("none") and "bias_q_k1" not in report.qk
    assert "softcap" not in report.qk
    model.cfg.attn_scores_soft_cap = 30.0
    assert measure(model, tokens, qk_heads=[(0, 0)]).qk["softcap"] == 30.0


@pytest.mark.parametrize("block", [128, 3])
def test_soft_capped_logits_are_the_scores_the_softmax_saw(monkeypatch, block):
    """A HookedTransformer with attn_scores_soft_cap: the decomposition's logits stay before the cap,
    capped_logit_q_k1 / capped_logit_q_krest are the means of the capped scores (hook_attn_scores),
    whatever the block of queries they are summed by."""
    import sinkinterp.measure as measure_mod

    monkeypatch.setattr(measure_mod, "CAPPED_QUERY_BLOCK", block)
    model, tokens = _tiny_hooked_transformer()
    plain = measure(model, tokens, qk_heads="all")
    model.cfg.attn_scores_soft_cap = 0.2
    report = measure(model, tokens, qk_heads="all")
    assert report.qk["softcap"] == 0.2
    # layer 0 reads the same queries and keys (the cap changes what later layers read)
    np.testing.assert_allclose(report.qk["logit_q_k1"][:4], plain.qk["logit_q_k1"][:4], rtol=1e-12)
    _, cache = model.run_with_cache(tokens)
    T = tokens.shape[1]
    n_pairs = T * (T - 1) / 2
    for l in range(model.cfg.n_layers):
        s = cache[f"blocks.{l}.attn.hook_attn_scores"].double()  # [N, H, T, T], capped
        assert s[..., torch.ones(T, T, dtype=torch.bool).tril()].abs().max() <= 0.2 + 1e-6
        heads = [i for i, (hl, _) in enumerate(report.qk["heads"]) if hl == l]
        k1 = s[..., :, 0].mean((0, 2))
        rest = torch.stack([s[:, :, t, 1:t + 1].sum(-1) for t in range(1, T)], -1).sum(-1).mean(0) / n_pairs
        np.testing.assert_allclose(report.qk["capped_logit_q_k1"][heads], k1.numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(report.qk["capped_logit_q_krest"][heads], rest.numpy(), rtol=1e-6, atol=1e-9)
    # the cap bends them: the capped means are not the plain ones
    assert np.abs(report.qk["capped_logit_q_k1"] - report.qk["logit_q_k1"]).max() > 0.01


@pytest.mark.parametrize("bias, n_kv_heads", [("kv", 4), ("kv", 2), ("sink_token", 2)])
def test_qk_decomposition_of_the_slot_key(bias, n_kv_heads):
    """The bias slot's key (a kv bias's learned k*, or the learnable sink token's key at position -1)
    gets the decomposition's factors (cos, logit, norm), and they are the ones the softmax used:
    log(alpha_* / alpha_1) of every query equals its k* logit minus its token-1 logit (both read from
    the model's own patterns), grouped-query attention included."""
    from sinkinterp.models import ModelConfig, SinkTransformer

    torch.manual_seed(0)
    model = SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=n_kv_heads, d_vocab=50,
                                        n_ctx=32, attn_bias=bias)).eval()
    with torch.no_grad():  # a slot that matters
        if bias == "kv":
            for block in model.blocks:
                block.attn.k_star.normal_(0, 2.0)
        else:
            model.W_sink.normal_(0, 3.0)
    keys = model.slot_keys()
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    report = measure(model, tokens, qk_heads="all")
    store = {}
    names = [f"blocks.{l}.attn.hook_{c}" for l in range(2) for c in ("pattern", "bias_pattern", "rot_q")]
    with torch.no_grad(), tl_adapter.attached_hooks(
            model, [(n, lambda x, hook, n=n: store.__setitem__(n, x.double())) for n in names]):
        model(tokens)
    for l in range(2):
        p1 = store[f"blocks.{l}.attn.hook_pattern"][..., 0]  # [b, H, T]
        pstar = store[f"blocks.{l}.attn.hook_bias_pattern"]
        gap = torch.log(pstar / p1).mean((0, 2)).numpy()
        rows = slice(4 * l, 4 * l + 4)
        np.testing.assert_allclose(report.qk["logit_q_kstar"][rows] - report.qk["logit_q_k1"][rows], gap, atol=1e-5)
        k_star = keys[l].double().repeat_interleave(4 // n_kv_heads, 0)
        if bias == "kv":
            assert torch.equal(keys[l], model.blocks[l].attn.k_star.detach().expand(n_kv_heads, 8))
        q = store[f"blocks.{l}.attn.hook_rot_q"]
        cos = torch.nn.functional.cosine_similarity(q, k_star[None, None].expand_as(q), dim=-1).mean((0, 1))
        # float32 model: measure runs the fused attention, this reference the materialized one
        np.testing.assert_allclose(report.qk["cos_q_kstar"][rows], cos.numpy(), atol=1e-6)
        np.testing.assert_allclose(report.qk["kstar_norm"][rows], k_star.norm(dim=-1).numpy(), rtol=1e-9)
    # a slot without a key (the sink logit), no k* factors
    plain = measure(SinkTransformer(ModelConfig(n_layers=1, d_model=32, n_heads=4, d_vocab=50, n_ctx=32,
                                                attn_bias="sink_logit")), tokens, qk_heads="all")
    assert "cos_q_kstar" not in plain.qk and "kstar_norm" not in plain.qk


@pytest.mark.parametrize("kind", ["window", "prefix", "window_prefix", "hooked_transformer_local"])
def test_qk_decomposition_averages_the_pairs_in_sight(kind):
    """Under a sliding window or a prefix the key-1 means run over the queries that see key 1 and the
    rest over the pairs (t, s >= 2) the attention can use, read off the model's own masked scores;
    tl_adapter.attn_visibility names the same pairs, and qk["pairs"] says what was averaged."""
    from sinkinterp.measure import visible_keys
    from sinkinterp.models import ModelConfig, SinkTransformer

    torch.manual_seed(0)
    if kind == "hooked_transformer_local":
        model = tl_adapter.hooked_transformer_from_config(
            n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
            positional_embedding_type="rotary", normalization_type="RMS", seed=0,
            use_local_attn=True, attn_types=["local", "global"], window_size=4)
    else:
        model = SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=32,
                                            window=4 if "window" in kind else None,
                                            prefix_len=6 if "prefix" in kind else 0))
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    report = measure(model, tokens, qk_heads="all")
    names = [f"blocks.{l}.attn.hook_{c}" for l in range(2) for c in ("attn_scores", "rot_q", "rot_k")]
    store = {}
    with torch.no_grad(), tl_adapter.attached_hooks(
            model, [(n, lambda x, hook, n=n: store.__setitem__(n, x.detach().double())) for n in names]):
        model(tokens)
    plain = []
    for l in range(2):
        seen, first, later = _pairs_in_sight(store[f"blocks.{l}.attn.hook_attn_scores"])
        window, prefix = tl_adapter.attn_visibility(model, l)
        assert torch.equal(visible_keys(torch.arange(12), 12, window, prefix), seen)
        plain.append(torch.equal(seen, torch.ones(12, 12, dtype=torch.bool).tril()))
        q, k = store[f"blocks.{l}.attn.hook_rot_q"], store[f"blocks.{l}.attn.hook_rot_k"]
        logits = torch.einsum("bthd,bshd->bhts", q, k) * tl_adapter.attn_scale(model, l)
        cos = torch.einsum("bthd,bshd->bhts", q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True))
        heads = [i for i, (hl, _) in enumerate(report.qk["heads"]) if hl == l]
        for name, x in (("logit", logits), ("cos", cos)):
            np.testing.assert_allclose(report.qk[f"{name}_q_k1"][heads], x[..., first, 0].mean((0, 2)).numpy(),
                                       rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(report.qk[f"{name}_q_krest"][heads], x[..., later].mean((0, 2)).numpy(),
                                       rtol=1e-6, atol=1e-6)
    assert not plain[0] and plain[1] == (kind == "hooked_transformer_local")  # the mask is in force
    assert ("window 4" in report.qk["pairs"]) == ("window" in kind or "local" in kind)
    assert ("prefix 6" in report.qk["pairs"]) == ("prefix" in kind)


@pytest.mark.parametrize("batch_size", [3, 7])
def test_key_spread_over_texts_equals_a_direct_computation(batch_size):
    """How much token 1's key (and the other keys) differ between texts at the same position, relative to their
    RMS norm: sqrt(var / E ||k||^2), var from the squared distances of consecutive sequences of each batch
    (halved); a first token that is the same in every text has a key that does not move (spread 0)."""
    from sinkinterp import patching
    from sinkinterp.models.testing import tiny_model

    model = tiny_model("gqa").eval()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    tokens = torch.randint(0, 50, (7, 9), generator=torch.Generator().manual_seed(4))
    rep = measure(model, tokens, eps=0.3, batch_size=batch_size)
    acts = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_k" for l in range(L)])
    for i, (pos, name) in enumerate(((slice(0, 1), "first_spread"), (slice(1, None), "rest_spread"))):
        want = np.zeros((L, H))
        for l in range(L):
            k = acts[f"blocks.{l}.attn.hook_k"].double()
            k = k.repeat_interleave(H // k.shape[2], dim=2)[:, pos]  # [N, P, H, d]
            pair = sum(((k[s + 1:s + batch_size] - k[s:s + batch_size - 1]) ** 2).sum((0, 1, 3))
                       for s in range(0, len(tokens), batch_size) if len(k[s:s + batch_size]) > 1)
            n_pairs = sum(max(len(k[s:s + batch_size]) - 1, 0) for s in range(0, len(tokens), batch_size)) * k.shape[1]
            var = pair.numpy() / (2 * n_pairs)
            want[l] = np.sqrt(var / (k ** 2).sum(-1).mean((0, 1)).numpy())
        np.testing.assert_allclose(rep.norms["key"][name], want, rtol=1e-9, err_msg=name)
        assert (want > 0.05).all()
    same = tokens.clone()
    same[:, 0] = 1
    spread = measure(model, same, eps=0.3, batch_size=batch_size).norms["key"]
    assert np.abs(spread["first_spread"]).max() < 1e-6 and (spread["rest_spread"] > 0.05).all()
    single = measure(model, tokens, eps=0.3, batch_size=1).norms["key"]  # no pair of texts in any batch
    assert np.isnan(single["first_spread"]).all()


@pytest.mark.parametrize("kind", ["sinkinterp", "ht", "bridge"])
def test_measure_unembeds_only_the_last_position(kind):
    """measure reads no logits: the unembedding sees one position per sequence (it is a large share of a
    forward pass where the vocabulary is large), and the report is the one a full forward pass gives."""
    from conftest import hooked_model

    model = hooked_model(kind)
    tokens = torch.randint(0, 50, (5, 12), generator=torch.Generator().manual_seed(0))
    seen = []
    handle = tl_adapter.unembed_module(model).register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    try:
        report = measure(model, tokens, batch_size=2, norms=True)
    finally:
        handle.remove()
    assert seen[-3:] == [1, 1, 1]  # the three batches
    assert seen[:-3] in ([], [12])  # a bridge's probe of which hooks fire: one sequence, before them
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    layers = len(report.alpha)
    full = np.stack([alpha_from_pattern(cache[f"blocks.{l}.attn.hook_pattern"]).mean(0).detach().numpy()
                     for l in range(layers)])
    np.testing.assert_allclose(report.alpha, full[..., 0], rtol=1e-5, atol=1e-6)  # alpha_1 per layer and head
