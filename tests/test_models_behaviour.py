"""What each variant must do: masks, hook contract, positional schemes, losses, bias removal."""

from __future__ import annotations

import math

import pytest
import torch

from sinkinterp import tl_adapter
from sinkinterp.models import ModelConfig, SinkTransformer, remove_attention_bias
from sinkinterp.models.attention import alibi_slopes, relative_buckets
from sinkinterp.models.testing import SLOT_VARIANTS, VARIANTS, tiny_config, tiny_model

T = 16


def _tokens(batch: int = 2, n_pos: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (batch, n_pos), generator=torch.Generator().manual_seed(seed))


def _changed_positions(model, tokens, pos: int) -> torch.Tensor:
    """Positions whose logits change when token `pos` is replaced."""
    other = tokens.clone()
    other[:, pos] = (other[:, pos] + 1) % model.cfg.d_vocab
    with torch.no_grad():
        diff = (model(tokens) - model(other)).abs().amax(dim=(0, 2))
    return diff > 1e-9


# ---------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_causality(name):
    """Changing token t never changes logits before t, except inside a prefix."""
    model = tiny_model(name)
    tokens = _tokens(batch=1)
    p = model.cfg.prefix_len
    for pos in (3, 9):
        changed = _changed_positions(model, tokens, pos)
        assert changed[pos], "a token must influence its own logits"
        earlier = changed[:pos]
        if pos < p:  # inside the prefix: all prefix positions see it
            assert earlier.all()
            assert not earlier[p:].any()
        else:
            assert not earlier.any(), f"position {pos} leaks into {earlier.nonzero().flatten().tolist()}"


def test_sliding_window_limits_context():
    # one layer: query t sees t-w+1..t, so token s only reaches positions s..s+w-1
    model = tiny_model(dict(n_layers=1, window=4))
    changed = _changed_positions(model, _tokens(batch=1), 5)
    assert changed.nonzero().flatten().tolist() == [5, 6, 7, 8]
    # two layers: the receptive field grows to 2 * (w - 1) + 1
    model2 = tiny_model(dict(n_layers=2, window=4))
    changed = _changed_positions(model2, _tokens(batch=1), 5)
    assert changed.nonzero().flatten().tolist() == list(range(5, 12))
    # the bias slot (here a kv bias) never leaves the window: rows still include it
    model3 = tiny_model(dict(n_layers=1, window=2, attn_bias="kv"))
    _, cache = model3.run_with_cache(_tokens(batch=1))
    pat = cache["blocks.0.attn.hook_pattern"][0]
    assert (pat[:, 10, :9] == 0).all() and (pat[:, 10, 9:11] > 0).all()
    assert (cache["blocks.0.attn.hook_bias_pattern"][0] > 0).all()


def test_prefix_is_bidirectional_and_the_rest_causal():
    model = tiny_model(dict(prefix_len=6))
    _, cache = model.run_with_cache(_tokens(batch=1))
    pat = cache["blocks.0.attn.hook_pattern"][0]  # [head, q, k]
    assert (pat[:, :6, :6] > 0).all()  # every prefix pair, both directions
    assert (pat[:, 6:, :6] > 0).all()  # later tokens see the whole prefix
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    upper[:6, :6] = False
    assert (pat[:, upper] == 0).all()


def test_prefix_lm_loss_counts_only_targets_after_the_prefix():
    model = tiny_model(dict(prefix_len=6))
    tokens = _tokens()
    logits = model(tokens)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    expected = nll[:, 5:].mean()  # targets 6..T-1 are predicted at positions 5..T-2
    torch.testing.assert_close(model(tokens, return_type="loss"), expected)
    plain = tiny_model("rotary")
    full = torch.nn.functional.cross_entropy(plain(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:])
    torch.testing.assert_close(plain(tokens, return_type="loss"), full)


def test_loss_mask_and_return_types():
    model = tiny_model("rotary")
    tokens = _tokens()
    mask = torch.ones(2, T)
    mask[0, 8:] = 0
    logits, loss = model(tokens, return_type="both", loss_mask=mask)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    w = mask[:, 1:]
    torch.testing.assert_close(loss, (nll * w).sum() / w.sum())
    assert model(tokens, return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="probs")
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="loss_mask"):
        model(tokens, return_type="loss", loss_mask=torch.ones(2, 3))


# ---------------------------------------------------------------------------------------
# hook contract
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_hook_contract_shapes_and_row_sums(name):
    model = tiny_model(name)
    cfg = model.cfg
    tokens = _tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    assert tl_adapter.count_attached_hooks(model) == 0
    assert logits.shape == (2, T, cfg.d_vocab)
    H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    names = set(model.hook_dict)
    for l in range(cfg.n_layers):
        a = f"blocks.{l}.attn."
        for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            assert cache[f"blocks.{l}.{h}"].shape == (2, T, cfg.d_model)
        assert cache[a + "hook_q"].shape == (2, T, H, dh)
        assert cache[a + "hook_k"].shape == (2, T, Hkv, dh)
        assert cache[a + "hook_v"].shape == (2, T, Hkv, dh)
        assert cache[a + "hook_z"].shape == (2, T, H, dh)
        assert ((a + "hook_rot_q") in names) == ((a + "hook_rot_k") in names) == (cfg.pos_emb == "rotary")
        scores = cache[a + "hook_attn_scores"]
        pattern = cache[a + "hook_pattern"]
        assert scores.shape == pattern.shape == (2, H, T, T)
        if cfg.prefix_len == 0:  # masked scores are -inf, as in TransformerLens
            assert torch.isneginf(scores[:, :, 0, 1:]).all()
        assert (pattern >= 0).all()
        rows = pattern.sum(-1)
        if cfg.has_slot:
            bias = cache[a + "hook_bias_pattern"]
            assert bias.shape == (2, H, T)
            assert (bias > 0).all() and (bias < 1).all()
            torch.testing.assert_close(rows + bias, torch.ones_like(rows), atol=1e-6, rtol=0)
            assert (rows < 1).all()
        else:
            assert (a + "hook_bias_pattern") not in names
            torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-6, rtol=0)
    assert cache["hook_embed"].shape == (2, T, cfg.d_model)
    assert ("hook_pos_embed" in names) == (cfg.pos_emb in ("learned", "sinusoidal"))
    # TransformerLens-style cfg the measurement reads
    dims = tl_adapter.model_dims(model)
    assert dims["n_kv_heads"] == Hkv and dims["d_head"] == dh and dims["n_layers"] == 2


def test_slot_variants_are_the_expected_ones():
    assert set(SLOT_VARIANTS) >= {"kv", "k", "kv_shared", "sink_token", "sink_logit", "gqa_kv", "kv_removed_v"}
    assert not {"v", "v_shared", "rotary", "sigmoid"} & set(SLOT_VARIANTS)


def test_unnormalized_ops_emit_proxy_scores():
    """sigmoid without normalization: hook_pattern = sim / sum(sim), the paper's proxy."""
    model = tiny_model("sigmoid")
    tokens = _tokens(batch=1)
    _, cache = model.run_with_cache(tokens)
    scores = cache["blocks.0.attn.hook_attn_scores"]
    sim = torch.sigmoid(scores)  # masked scores are -inf -> 0
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], sim / sim.sum(-1, keepdim=True))
    # linear_identity: |sim| / sum |sim|
    model = tiny_model("linear_identity")
    _, cache = model.run_with_cache(tokens)
    s = cache["blocks.1.attn.hook_attn_scores"].nan_to_num(neginf=0.0)
    assert (s < 0).any()
    torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"], s.abs() / s.abs().sum(-1, keepdim=True))


@pytest.mark.parametrize("name", ["sigmoid", "sigmoid_logn", "elu1", "kv_sigmoid", "sigmoid_norm"])
def test_row_weight_turns_the_shares_into_the_weights(name):
    """hook_row_weight [batch, head, query] (attention other than softmax) fires before hook_pattern with
    the factor of each row: for unnormalized ops the row's total weight, slot included, so pattern x
    row_weight is each key's weight (sim); what the hook returns is used; hooking it alone takes the
    materialized path, with the fast path's output."""
    model = tiny_model(name)
    tokens = _tokens(batch=2)
    order: list[str] = []
    with torch.no_grad():
        fast = model(tokens)
        hooks = [(f"blocks.0.attn.hook_{k}", lambda x, hook, k=k: order.append(k)) for k in ("row_weight", "pattern")]
        with model.hooks(fwd_hooks=hooks):
            assert model.blocks[0].attn.observed() and not model.blocks[1].attn.observed()
            torch.testing.assert_close(model(tokens), fast, atol=1e-10, rtol=0)
        assert order == ["row_weight", "pattern"]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn"))
    pre = "blocks.0.attn."
    row, pattern = cache[pre + "hook_row_weight"], cache[pre + "hook_pattern"]
    assert row.shape == pattern.shape[:-1]
    attn = model.blocks[0].attn
    sim = attn.op.sim(cache[pre + "hook_attn_scores"], -math.log(tokens.shape[1]) if "logn" in name else 0.0)
    slot = cache[pre + "hook_bias_pattern"] if model.cfg.has_slot else torch.zeros_like(row)
    total = sim.sum(-1) + slot * row  # the slot's share times the factor is its weight
    if attn.op.normalized:  # rows sum to 1: the factor is sum / (sum + eps), about 1
        torch.testing.assert_close(row, total / (total + model.cfg.attn_eps), atol=1e-10, rtol=0)
    else:
        torch.testing.assert_close(pattern * row[..., None], sim, atol=1e-10, rtol=0)
        torch.testing.assert_close(row, total, atol=1e-10, rtol=0)
    if not model.cfg.has_slot:  # doubling the factor doubles the output
        with torch.no_grad(), model.hooks(fwd_hooks=[(pre + "hook_row_weight", lambda x, hook: 2 * x)]):
            _, doubled = model.run_with_cache(tokens, names_filter=pre + "hook_z")
        torch.testing.assert_close(doubled[pre + "hook_z"], 2 * cache[pre + "hook_z"], atol=1e-10, rtol=0)


def test_softmax_has_no_row_weight_hook():
    assert not hasattr(tiny_model("rotary").blocks[0].attn, "hook_row_weight")
    assert not hasattr(tiny_model("softmax_scaled_2").blocks[0].attn, "hook_row_weight")


def test_softmax_scaled_pattern_is_the_share_and_output_scales():
    tokens = _tokens(batch=1)
    base = tiny_model("rotary")
    scaled = SinkTransformer(base.cfg.replace(attn_op="softmax_scaled", softmax_alpha=0.1)).double()
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        _, c1 = base.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn"))
        _, c2 = scaled.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn"))
    torch.testing.assert_close(c2["blocks.0.attn.hook_pattern"], c1["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(c2["blocks.0.attn.hook_z"], 0.1 * c1["blocks.0.attn.hook_z"])


def test_sink_logit_mass_follows_the_logit():
    model = tiny_model("sink_logit")
    tokens = _tokens(batch=1)
    with torch.no_grad():
        model.blocks[0].attn.sink_logit.fill_(-30.0)
        _, low = model.run_with_cache(tokens)
        model.blocks[0].attn.sink_logit.fill_(30.0)
        _, high = model.run_with_cache(tokens)
    assert low["blocks.0.attn.hook_bias_pattern"].max() < 1e-6
    assert high["blocks.0.attn.hook_bias_pattern"].min() > 1 - 1e-6
    # value 0: all mass on the slot means no attention output at all
    assert high["blocks.0.attn.hook_z"].abs().max() < 1e-6


def test_a_fixed_zero_sink_logit_is_softmax_off_by_one_and_is_never_trained():
    """sink_logit_fixed=0.0: every attention weight is exp(s_j) / (1 + sum_i exp(s_i)) of the scores the
    model computed (its hook_attn_scores), the slot holds the rest, and the logit is a buffer: no
    optimizer sees it, so a training step leaves it at 0, and a checkpoint's state keeps it."""
    model = tiny_model("sink_logit_fixed")
    attn = model.blocks[0].attn
    assert "blocks.0.attn.sink_logit" not in dict(model.named_parameters())
    assert "blocks.0.attn.sink_logit" in model.state_dict()
    tokens = _tokens()
    with torch.no_grad():
        hooked, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn"))
        torch.testing.assert_close(model(tokens), hooked, atol=1e-10, rtol=0)  # the fused path, unobserved
    scores = cache["blocks.0.attn.hook_attn_scores"]  # [batch, head, query, key], -inf above the diagonal
    expected = scores.exp() / (1 + scores.exp().sum(-1, keepdim=True))
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(cache["blocks.0.attn.hook_bias_pattern"],  # [batch, head, query]
                               1 / (1 + scores.exp().sum(-1)), atol=1e-12, rtol=0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    model(tokens, return_type="loss").backward()
    opt.step()
    assert attn.sink_logit.requires_grad is False and float(attn.sink_logit.abs().max()) == 0.0
    assert model.cfg.to_dict()["sink_logit_fixed"] == 0.0


def test_sink_logit_fixed_is_checked():
    with pytest.raises(ValueError, match="sink_logit_fixed: only applies to attn_bias='sink_logit', got attn_bias='kv'"):
        tiny_config(attn_bias="kv", sink_logit_fixed=0.0)
    with pytest.raises(TypeError, match="sink_logit_fixed: expected None or a finite number, got nan"):
        tiny_config(attn_bias="sink_logit", sink_logit_fixed=float("nan"))
    for bad in (True, "0"):  # the runtime type check may answer first
        with pytest.raises(TypeError, match="sink_logit_fixed"):
            tiny_config(attn_bias="sink_logit", sink_logit_fixed=bad)


def test_a_learned_sink_logit_starts_at_sink_logit_init_and_nothing_else_moves():
    """sink_logit_init sets a learned sink logit's starting value (every layer and head; shared or not);
    every other weight is drawn as with the default 0, the slot weighs exp(init) against the scores, the
    logit stays a trained parameter, and the field is checked."""
    start = SinkTransformer(tiny_config(attn_bias="sink_logit", sink_logit_init=-2.0))
    plain = SinkTransformer(tiny_config(attn_bias="sink_logit"))
    for (name, p), (_, q) in zip(start.named_parameters(), plain.named_parameters(), strict=True):
        if name.endswith("sink_logit"):
            assert p.requires_grad and torch.equal(p, torch.full_like(p, -2.0)) and torch.equal(q, torch.zeros_like(q))
        else:
            assert torch.equal(p, q), name
    shared = SinkTransformer(tiny_config(attn_bias="sink_logit", attn_bias_shared=True, sink_logit_init=1.5))
    assert [b.attn.sink_logit.tolist() for b in shared.blocks] == [[1.5]] * len(shared.blocks)
    start = start.double()
    tokens = _tokens()
    with torch.no_grad():
        _, cache = start.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn"))
    scores = cache["blocks.0.attn.hook_attn_scores"]
    torch.testing.assert_close(cache["blocks.0.attn.hook_bias_pattern"],
                               math.exp(-2.0) / (math.exp(-2.0) + scores.exp().sum(-1)), atol=1e-12, rtol=0)
    assert ModelConfig.from_dict(start.cfg.to_dict()).sink_logit_init == -2.0
    with pytest.raises(ValueError, match="sink_logit_init: only applies to a learned sink logit .* attn_bias='kv'"):
        tiny_config(attn_bias="kv", sink_logit_init=-2.0)
    with pytest.raises(ValueError, match="sink_logit_init: only applies .* sink_logit_fixed=0.0"):
        tiny_config(attn_bias="sink_logit", sink_logit_fixed=0.0, sink_logit_init=-2.0)
    with pytest.raises(TypeError, match="sink_logit_init: expected a finite number, got inf"):
        tiny_config(attn_bias="sink_logit", sink_logit_init=float("inf"))
    for bad in (True, None):  # the runtime type check may answer first
        with pytest.raises(TypeError, match="sink_logit_init"):
            tiny_config(attn_bias="sink_logit", sink_logit_init=bad)
    assert tiny_config(attn_bias="kv").sink_logit_init == 0.0  # the default applies everywhere


def test_sink_token_state_is_shared_by_all_sequences():
    model = tiny_model("sink_token")
    a, b = _tokens(batch=1, seed=1), _tokens(batch=1, seed=2)
    with torch.no_grad():
        both = model(torch.cat([a, b]))
        torch.testing.assert_close(both[:1], model(a), atol=1e-12, rtol=0)
        torch.testing.assert_close(both[1:], model(b), atol=1e-12, rtol=0)


def test_grouped_query_attention_shapes_and_sharing():
    model = tiny_model("gqa")
    assert model.blocks[0].attn.W_K.shape == (2, 32, 8) and model.blocks[0].attn.W_Q.shape == (4, 32, 8)
    assert model.cfg.n_key_value_heads == 2
    _, cache = model.run_with_cache(_tokens(batch=1))
    # heads 0 and 1 read kv head 0: same keys, so equal queries would give equal scores
    assert cache["blocks.0.attn.hook_rot_k"].shape == (1, T, 2, 8)


# ---------------------------------------------------------------------------------------
# positional schemes
# ---------------------------------------------------------------------------------------
def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([0.25, 0.0625, 2 ** -6, 2 ** -8]))
    # not a power of two: the 4 slopes of n=4, then every other slope of n=8
    expected = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected))


def test_alibi_scores_are_linear_in_distance():
    model = tiny_model(dict(pos_emb="alibi", n_layers=1))
    with torch.no_grad():
        for p in (model.blocks[0].attn.W_Q, model.blocks[0].attn.W_K):
            p.zero_()
    _, cache = model.run_with_cache(_tokens(batch=1))
    s = cache["blocks.0.attn.hook_attn_scores"][0]  # q.k = 0: scores are the bias alone
    for h, slope in enumerate([0.25, 0.0625, 2 ** -6, 2 ** -8]):
        torch.testing.assert_close(s[h, 10, :11], -slope * torch.arange(10, -1, -1, dtype=s.dtype))


def test_relative_buckets():
    d = torch.arange(0, 300)
    b = relative_buckets(d, 32, 128)
    assert b[:16].tolist() == list(range(16))  # exact for small distances
    assert b[16].item() == 16 and b[127].item() == 31 and (b[128:] == 31).all()
    assert (b[1:] >= b[:-1]).all()  # monotone
    # T5's formula: 16 + log(n / 16) / log(128 / 16) * 16
    for n in (20, 40, 64, 100):
        assert b[n].item() == 16 + int(math.log(n / 16) / math.log(8) * 16)


def test_relative_bias_is_learned_per_head_and_bucket():
    model = tiny_model(dict(pos_emb="relative", n_layers=1, relative_num_buckets=8, relative_max_distance=12))
    table = model.blocks[0].attn.rel_bias
    assert table.shape == (8, 4) and table.requires_grad
    with torch.no_grad():
        for p in (model.blocks[0].attn.W_Q, model.blocks[0].attn.W_K):
            p.zero_()
    _, cache = model.run_with_cache(_tokens(batch=1))
    s = cache["blocks.0.attn.hook_attn_scores"][0]
    buckets = relative_buckets(torch.arange(12, -1, -1), 8, 12)
    torch.testing.assert_close(s[:, 12, :13], table[buckets].T)


def test_rotary_scores_depend_only_on_relative_position():
    model = tiny_model(dict(n_layers=1))
    tokens = torch.full((1, T), 7)
    _, cache = model.run_with_cache(tokens)
    s = cache["blocks.0.attn.hook_attn_scores"][0]
    # identical tokens: score(t, s) depends on t - s only
    torch.testing.assert_close(s[:, 10, 7], s[:, 5, 2])
    torch.testing.assert_close(s[:, 15, 15], s[:, 0, 0])
    assert (s[:, 10, 7] - s[:, 10, 6]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------
# removing a learned bias
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,which", [("kv", "kv"), ("k", "k"), ("sink_token", "sink"), ("sink_logit", "sink"), ("gqa_kv", "kv")]
)
def test_remove_attention_bias_drops_the_slot(name, which):
    model = tiny_model(name)
    tokens = _tokens()
    with torch.no_grad():
        before = model(tokens)
    removed = remove_attention_bias(model, which)
    assert removed.cfg.attn_bias_removed == "all" and model.cfg.attn_bias_removed == "none"
    assert removed.cfg.attn_bias == model.cfg.attn_bias and not removed.cfg.has_slot
    names = set(removed.hook_dict)
    assert not any(n.endswith("hook_bias_pattern") for n in names)
    with torch.no_grad():
        after, cache = removed.run_with_cache(tokens)
    rows = cache["blocks.0.attn.hook_pattern"].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert (after - before).abs().max() > 1e-4  # the bias mattered
    # the result equals a model trained without the bias, given the same shared weights
    plain = SinkTransformer(model.cfg.replace(attn_bias="none")).double()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(after, plain(tokens), atol=1e-12, rtol=0)
    # the original model is untouched
    torch.testing.assert_close(model(tokens), before)


def test_remove_value_bias_keeps_the_key_slot():
    model = tiny_model("kv")
    tokens = _tokens()
    removed = remove_attention_bias(model, "v")
    assert removed.cfg.attn_bias_removed == "v" and removed.cfg.has_slot
    _, c0 = model.run_with_cache(tokens)
    _, c1 = removed.run_with_cache(tokens)
    # layer 0: same attention (mass still on the slot), output without v*
    torch.testing.assert_close(c1["blocks.0.attn.hook_bias_pattern"], c0["blocks.0.attn.hook_bias_pattern"])
    w = c0["blocks.0.attn.hook_bias_pattern"]  # [batch, head, pos]
    v_star = model.blocks[0].attn.v_star  # [kv_head, d_head]
    expected = c0["blocks.0.attn.hook_z"] - w.transpose(1, 2)[..., None] * v_star
    torch.testing.assert_close(c1["blocks.0.attn.hook_z"], expected)
    # equal to a k-only model with the same k*
    k_only = SinkTransformer(model.cfg.replace(attn_bias="k")).double()
    k_only.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(removed(tokens), k_only(tokens), atol=1e-12, rtol=0)


def test_remove_v_only_bias():
    model = tiny_model("v")
    removed = remove_attention_bias(model, "v")
    plain = SinkTransformer(model.cfg.replace(attn_bias="none")).double()
    plain.load_state_dict(model.state_dict(), strict=False)
    tokens = _tokens()
    torch.testing.assert_close(removed(tokens), plain(tokens), atol=1e-12, rtol=0)
    assert (removed(tokens) - model(tokens)).abs().max() > 1e-4


def test_remove_attention_bias_errors():
    with pytest.raises(ValueError, match="which"):
        remove_attention_bias(tiny_model("kv"), "q")
    with pytest.raises(ValueError, match="does not apply"):
        remove_attention_bias(tiny_model("rotary"), "kv")
    with pytest.raises(ValueError, match="does not apply"):
        remove_attention_bias(tiny_model("sink_logit"), "v")
    removed = remove_attention_bias(tiny_model("kv"), "kv")
    with pytest.raises(ValueError, match="already removed"):
        remove_attention_bias(removed, "kv")


# ---------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------
def test_init_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = SinkTransformer(tiny_config(seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    b = SinkTransformer(tiny_config(seed=3))
    c = SinkTransformer(tiny_config(seed=4))
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
        if n.endswith("W_Q"):
            assert not torch.equal(pa, pc)


def test_tied_embeddings_share_one_tensor():
    model = tiny_model("tied")
    assert "unembed.W_U" not in dict(model.named_parameters())
    assert model.unembed.W_U.data_ptr() == model.embed.W_E.data_ptr()
    assert tiny_model("rotary").unembed.W_U.shape == (32, 50)


def test_paper_60m_config_size():
    """The paper's "60M" LLaMA: 10 layers, d_model 768, 8 heads, SwiGLU 1536 -> 59M non-embedding."""
    per_layer = 4 * 768 * 768 + 3 * 768 * 1536 + 2 * 768  # attention, SwiGLU, two RMSNorms
    assert (10 * per_layer + 768) / 1e6 == pytest.approx(59.0, abs=0.1)
    one_layer = SinkTransformer(ModelConfig(n_layers=1, d_model=768, n_heads=8, d_ff=1536, d_vocab=8, n_ctx=8))
    assert one_layer.num_params(non_embedding=True) == per_layer + 768 + 768 * 8  # + ln_final, W_U


def test_sinusoidal_and_learned_positions_enter_through_hook_pos_embed():
    model = tiny_model("sinusoidal")
    _, cache = model.run_with_cache(_tokens(batch=1), names_filter="hook_pos_embed")
    pe = cache["hook_pos_embed"][0]
    p = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(pe[:, 0], p.sin())
    torch.testing.assert_close(pe[:, 1], p.cos())
    torch.testing.assert_close(pe[:, 2], (p / 10000 ** (2 / 32)).sin())
    assert not list(model.pos_embed.parameters())
    scaled = SinkTransformer(tiny_config(pos_emb="sinusoidal", sinusoidal_scale=0.02)).double().eval()
    _, cache = scaled.run_with_cache(_tokens(batch=1), names_filter="hook_pos_embed")
    torch.testing.assert_close(cache["hook_pos_embed"][0], 0.02 * pe)
    learned = tiny_model("learned")
    _, cache = learned.run_with_cache(_tokens(batch=1), names_filter="hook_pos_embed")
    torch.testing.assert_close(cache["hook_pos_embed"][0], learned.pos_embed.W_pos[:T])
