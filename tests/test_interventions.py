"""First-token interventions change exactly what they claim: checked against independent
reference computations (masked scores, edited weights, hand-made inputs) on small models."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama, word_tokenizer

from sinkinterp import interventions as iv
from sinkinterp import patching, tl_adapter
from sinkinterp.models import SinkTransformer, remove_attention_bias
from sinkinterp.models.testing import tiny_config

T = 10


@pytest.fixture(autouse=True)
def _no_grad():
    """No test here differentiates: the reference losses and logits are plain numbers."""
    with torch.no_grad():
        yield


def _tokens(seed=0, n=4, vocab=50):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return SinkTransformer(tiny_config()).double().eval()


def _patterns(model, tokens, hooks=()):
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    store = {}

    def save(act, hook):
        store[hook.name] = act.detach().clone()

    with torch.no_grad(), tl_adapter.attached_hooks(model, list(hooks) + [(n, save) for n in names]):
        logits = model(tokens)
    return logits, store


def _edit_hooks(model, inter, **cells):
    has_slot = "blocks.0.attn.hook_bias_pattern" in model.hook_dict
    edits = [(patching.COMPONENTS[c], s) for c, s in inter.build_edits(model, has_slot)]
    layers = cells.get("layers", inter.layers if inter.layers is not None else range(model.cfg.n_layers))
    return patching.edit_hooks(model, edits, [patching.Cell(l, cells.get("head")) for l in layers])


def _mask_first_key(act, hook):
    act = act.clone()
    act[:, :, 1:, 0] = float("-inf")
    return act


def test_ablation_equals_masking_token_one_in_the_scores(model):
    tokens = _tokens()
    ref = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), _mask_first_key)])
    logits, pats = _patterns(model, tokens, _edit_hooks(model, iv.first_token("ablate")))
    torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-10)
    for p in pats.values():  # after ablation no query after the first attends to token 1
        assert p[:, :, 1:, 0].abs().max() == 0
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    res = iv.run_intervention(model, tokens, iv.first_token("ablate"))
    assert res.sink.sink_pct[0] == 0.0
    np.testing.assert_allclose(res.sink.alpha, 1 / T)  # only query 1's own weight is left
    with torch.no_grad():
        assert res.loss_base == pytest.approx(float(model(tokens, return_type="loss")), rel=1e-9)
    assert res.loss == pytest.approx(float(patching.loss_metric(tokens)(ref)), rel=1e-9)


def test_ablation_on_a_transformer_bridge_equals_masked_scores():
    hf = tiny_llama()
    bridge = tl_adapter.boot_bridge(hf, word_tokenizer(61), "tiny")
    tokens = torch.randint(3, 61, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = bridge.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), _mask_first_key)])
        with tl_adapter.attached_hooks(bridge, _edit_hooks(bridge, iv.first_token("ablate"))):
            ours = bridge(tokens)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, bridge(tokens), atol=1e-3)


def test_zeroing_the_value_leaves_every_pattern_unchanged_and_removes_its_contribution(model):
    tokens = _tokens()
    base_logits, base = _patterns(model, tokens)
    z_base = patching.capture(model, tokens, ["blocks.0.attn.hook_z", "blocks.0.attn.hook_v"])
    # in the last layer the edit can change no pattern, only the output
    logits, pats = _patterns(model, tokens, _edit_hooks(model, iv.first_token("zero_value"), layers=[1]))
    for name in base:
        torch.testing.assert_close(pats[name], base[name], rtol=0, atol=0)
    assert not torch.allclose(logits, base_logits)
    hooks = _edit_hooks(model, iv.first_token("zero_value"), layers=[0])
    _, pats = _patterns(model, tokens, hooks)
    torch.testing.assert_close(pats["blocks.0.attn.hook_pattern"], base["blocks.0.attn.hook_pattern"], rtol=0, atol=0)
    with tl_adapter.attached_hooks(model, hooks):
        z = patching.capture(model, tokens, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
    # z_t = sum_s A[t, s] v_s: zeroing v_1 subtracts A[t, 1] v_1 and nothing else
    a1 = base["blocks.0.attn.hook_pattern"][:, :, :, 0].transpose(1, 2)  # [b, t, h]
    expect = z_base["blocks.0.attn.hook_z"] - a1[..., None] * z_base["blocks.0.attn.hook_v"][:, :1]
    torch.testing.assert_close(z, expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, comp", [("mean_value", "v"), ("mean_key", "k"), ("scale_value", "v"),
                                        ("zero_key", "k")])
def test_value_and_key_edits_set_exactly_token_one(model, kind, comp):
    tokens = _tokens()
    name = f"blocks.1.attn.hook_{comp}"
    base = patching.capture(model, tokens, [name])[name]
    inter = iv.first_token(kind, factor=3.0)
    with tl_adapter.attached_hooks(model, _edit_hooks(model, inter, layers=[1])):
        got = patching.capture(model, tokens, [name])[name]
    expect = {"mean_value": base[:, 1:].mean(1), "mean_key": base[:, 1:].mean(1),
              "scale_value": 3.0 * base[:, 0], "zero_key": torch.zeros_like(base[:, 0])}[kind]
    torch.testing.assert_close(got[:, 0], expect)
    torch.testing.assert_close(got[:, 1:], base[:, 1:])


@pytest.mark.parametrize("kind", ["scale_resid", "normalize_resid"])
def test_residual_edits_rescale_token_one_and_leave_the_edited_layers_pattern(kind):
    """scale_resid / normalize_resid change only the length of h_1 at the edited resid_pre; a pre-norm
    block normalizes its input, so the edited layer's own pattern stays (RMSNorm's eps made tiny)."""
    model = SinkTransformer(tiny_config(norm_eps=1e-12)).double().eval()
    tokens = _tokens()
    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    base = patching.capture(model, tokens, names)
    inter = iv.first_token(kind, factor=3.0)
    with tl_adapter.attached_hooks(model, _edit_hooks(model, inter, layers=[1])):
        got = patching.capture(model, tokens, names)
    b, g = base[names[0]], got[names[0]]
    torch.testing.assert_close(g[:, 1:], b[:, 1:], rtol=0, atol=0)
    norm = g[:, 0].norm(dim=-1)
    want = 3.0 * b[:, 0].norm(dim=-1) if kind == "scale_resid" else b[:, 1:].norm(dim=-1).mean(-1)
    torch.testing.assert_close(norm, want)
    torch.testing.assert_close(g[:, 0] / norm[:, None], b[:, 0] / b[:, 0].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(got[names[1]], base[names[1]], rtol=0, atol=1e-9)
    assert (got[names[2]][:, 0] - base[names[2]][:, 0]).abs().max() > 1e-3  # h_1 is not the same after it
    res = iv.run_intervention(model, tokens, inter, per_layer=True, sinks=False)
    assert res.per_layer.shape == (model.cfg.n_layers,) and np.isfinite(res.per_layer).all()
    with tl_adapter.attached_hooks(model, _edit_hooks(model, inter, layers=[0])):
        with torch.no_grad():
            one = float(patching.loss_metric(tokens)(model(tokens)))
    assert res.per_layer[0] == pytest.approx(one - res.loss_base, abs=1e-9)
    with pytest.raises(ValueError, match="has no per-head edit"):
        iv.run_intervention(model, tokens, inter, per_head=True, sinks=False)
    (got_cmp,) = iv.compare(model, tokens, [inter], per_head=True, sinks=False)  # answered per layer
    assert got_cmp.per_head is None and got_cmp.per_layer == pytest.approx(res.per_layer, abs=1e-9)


def test_normalize_resid_removes_a_massive_first_token():
    """Built by hand: a model whose embedding of token 0 is 100x the others' has a massive first
    token; after normalize_resid at every layer its norm at each resid_pre is the others' mean."""
    m = SinkTransformer(tiny_config()).double().eval()
    with torch.no_grad():
        m.embed.W_E[0] *= 100.0
    tokens = _tokens()
    tokens[:, 0], tokens[:, 1:] = 0, tokens[:, 1:].clamp_min(1)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(m.cfg.n_layers)]
    base = patching.capture(m, tokens, names)
    assert (base[names[0]][:, 0].norm(dim=-1) > 20 * base[names[0]][:, 1:].norm(dim=-1).mean(-1)).all()
    with tl_adapter.attached_hooks(m, _edit_hooks(m, iv.first_token("normalize_resid"))):
        got = patching.capture(m, tokens, names)
    for n in names:
        torch.testing.assert_close(got[n][:, 0].norm(dim=-1), got[n][:, 1:].norm(dim=-1).mean(-1))


def test_zero_key_makes_token_one_score_zero(model):
    tokens = _tokens()
    with tl_adapter.attached_hooks(model, _edit_hooks(model, iv.first_token("zero_key"), layers=[0])):
        scores = patching.capture(model, tokens, ["blocks.0.attn.hook_attn_scores"])["blocks.0.attn.hook_attn_scores"]
    assert scores[:, :, :, 0].abs().max() == 0  # rotary of a zero key is zero; no positional bias here


def test_grouped_query_value_edit_touches_only_its_query_heads():
    gqa = SinkTransformer(tiny_config(n_kv_heads=2)).double().eval()
    tokens = _tokens()
    base = patching.capture(gqa, tokens, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
    with tl_adapter.attached_hooks(gqa, _edit_hooks(gqa, iv.first_token("zero_value"), layers=[0], head=1)):
        z = patching.capture(gqa, tokens, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
    torch.testing.assert_close(z[:, :, :2], base[:, :, :2])  # kv head 0 serves query heads 0, 1
    assert (z[:, 1:, 2:] - base[:, 1:, 2:]).abs().min() > 0
    with pytest.raises(ValueError, match="heads: 2 is outside the model's 2 key/value heads"):
        iv.run_intervention(gqa, tokens, iv.first_token("zero_value"), heads=[2])


def test_per_head_effects_equal_one_head_at_a_time(model):
    tokens = _tokens()
    inter = iv.first_token("zero_value")
    res = iv.run_intervention(model, tokens, inter, per_head=True, per_layer=True, sinks=False, batch_rows=8)
    assert res.per_head.shape == (2, 4) and res.per_layer.shape == (2,)
    for l, h in [(0, 0), (1, 3)]:
        one = iv.run_intervention(model, tokens, inter, layers=[l], heads=[h], sinks=False)
        assert res.per_head[l, h] == pytest.approx(one.delta_loss, abs=1e-12)
    layer1 = iv.run_intervention(model, tokens, inter, layers=[1], sinks=False)
    assert res.per_layer[1] == pytest.approx(layer1.delta_loss, abs=1e-12)
    assert np.ptp(res.per_head) > 0
    assert tl_adapter.count_attached_hooks(model) == 0


@pytest.mark.parametrize("bias, which", [("kv", "kv"), ("k", "k"), ("sink_token", "sink"), ("sink_logit", "sink")])
def test_ablating_the_bias_slot_equals_removing_the_bias(bias, which):
    m = SinkTransformer(tiny_config(attn_bias=bias)).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("k_star", "v_star", "sink_logit", "W_sink")):
                p.normal_(0, 1.0)
    tokens = _tokens()
    res = iv.run_intervention(m, tokens, iv.first_token("ablate_bias"))
    ref = remove_attention_bias(m, which)
    assert res.loss == pytest.approx(float(ref(tokens, return_type="loss")), rel=1e-10)
    assert res.sink.sink_bias_pct == 0.0
    assert res.sink_base.alpha_bias.max() > 0.05


def test_moving_the_bias_mass_to_token_one():
    m = SinkTransformer(tiny_config(attn_bias="kv")).double().eval()
    with torch.no_grad():
        for block in m.blocks:
            block.attn.k_star.normal_(0, 2.0)
    tokens = _tokens()
    base = iv.run_intervention(m, tokens, iv.first_token("bias_to_first"), layers=[0])
    # layer 0's pattern is computed from unchanged inputs: alpha_1 gains exactly the slot's share
    np.testing.assert_allclose(base.sink.alpha[0], base.sink_base.alpha[0] + base.sink_base.alpha_bias[0],
                               rtol=1e-9)
    assert base.sink.alpha_bias[0].max() == 0.0
    with pytest.raises(ValueError, match="needs a model with a bias slot"):
        iv.run_intervention(SinkTransformer(tiny_config()), tokens, iv.first_token("bias_to_first"))


def test_ablation_with_a_bias_slot_keeps_rows_normalized():
    m = SinkTransformer(tiny_config(attn_bias="kv")).double().eval()
    tokens = _tokens()
    store = {}
    hooks = _edit_hooks(m, iv.first_token("ablate"))
    save = lambda act, hook: store.__setitem__(hook.name, act.detach().clone())  # noqa: E731
    with torch.no_grad(), tl_adapter.attached_hooks(m, hooks + [("blocks.0.attn.hook_pattern", save),
                                                                ("blocks.0.attn.hook_bias_pattern", save)]):
        m(tokens)
    p, slot = store["blocks.0.attn.hook_pattern"], store["blocks.0.attn.hook_bias_pattern"]
    assert p[:, :, 1:, 0].abs().max() == 0
    torch.testing.assert_close(p.sum(-1) + slot, torch.ones_like(slot))


def test_ablation_without_renormalizing_leaves_the_slot_alone():
    """ablate[norenorm] on a bias-slot model: token 1's column is zeroed, every other weight (the
    slot's included) stays as it was; the rows then sum to 1 minus token 1's old weight."""
    m = SinkTransformer(tiny_config(attn_bias="kv")).double().eval()
    tokens = _tokens()
    names = ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_bias_pattern"]
    store, base = {}, {}
    save = lambda d: (lambda act, hook: d.__setitem__(hook.name, act.detach().clone()))  # noqa: E731
    with torch.no_grad(), tl_adapter.attached_hooks(m, [(n, save(base)) for n in names]):
        m(tokens)
    hooks = _edit_hooks(m, iv.first_token("ablate", renormalize=False))
    with torch.no_grad(), tl_adapter.attached_hooks(m, hooks + [(n, save(store)) for n in names]):
        m(tokens)
    p, p0 = store[names[0]], base[names[0]]
    assert p[:, :, 1:, 0].abs().max() == 0
    torch.testing.assert_close(p[..., 1:], p0[..., 1:], atol=1e-12, rtol=0)
    torch.testing.assert_close(store[names[1]], base[names[1]], atol=1e-12, rtol=0)
    res = iv.run_intervention(m, tokens, iv.first_token("ablate", renormalize=False), sinks=True)
    assert res.name == "ablate[norenorm]" and np.isfinite(res.loss)


def test_swapping_learned_positions_equals_a_model_with_swapped_embeddings():
    m = SinkTransformer(tiny_config(pos_emb="learned")).double().eval()
    tokens = _tokens()
    ref = SinkTransformer(m.cfg).double().eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        w = ref.pos_embed.W_pos
        w[[0, 4]] = w[[4, 0]].clone()
    res = iv.run_intervention(m, tokens, iv.first_token("swap_position", position=4))
    assert res.loss == pytest.approx(float(ref(tokens, return_type="loss")), rel=1e-10)
    with pytest.raises(ValueError, match="no hook hook_pos_embed"):
        iv.run_intervention(SinkTransformer(tiny_config()), tokens, iv.first_token("swap_position", position=4))


def test_token_edits_score_the_same_targets(model):
    tokens = _tokens()
    nll = patching.per_token_loss(model(tokens), tokens)
    # replace: same positions
    res = iv.run_intervention(model, tokens, iv.replace_first(7), sinks=False, target_start=2)
    new = tokens.clone()
    new[:, 0] = 7
    assert res.loss == pytest.approx(float(patching.per_token_loss(model(new), new)[:, 1:].mean()))
    assert res.loss_base == pytest.approx(float(nll[:, 1:].mean()))
    # insert: original target j sits at j + 1; the last one drops out
    res = iv.run_intervention(model, tokens, iv.insert_first(3), sinks=False)
    new = torch.cat([torch.full((4, 1), 3), tokens[:, :-1]], 1)
    assert res.loss == pytest.approx(float(patching.per_token_loss(model(new), new)[:, 1:].mean()))
    assert res.loss_base == pytest.approx(float(nll[:, :-1].mean()))
    # start later by 2: original targets 3..T-1 are new targets 1..T-3
    res = iv.run_intervention(model, tokens, iv.start_later(2))
    new = tokens[:, 2:]
    assert res.loss == pytest.approx(float(patching.per_token_loss(model(new), new).mean()))
    assert res.loss_base == pytest.approx(float(nll[:, 2:].mean()))
    assert res.sink.seq_len == T - 2
    # frequent: the most common id after position 1
    freq = int(torch.bincount(tokens[:, 1:].reshape(-1)).argmax())
    res = iv.run_intervention(model, tokens, iv.replace_first("frequent"), sinks=False)
    new = tokens.clone()
    new[:, 0] = freq
    assert res.loss == pytest.approx(float(patching.per_token_loss(model(new), new).mean()))
    # random: reproducible with the seed
    a = iv.run_intervention(model, tokens, iv.replace_first("random"), sinks=False, seed=3)
    b = iv.run_intervention(model, tokens, iv.replace_first("random"), sinks=False, seed=3)
    assert a.loss == b.loss


def test_compare_and_key_vs_value_share_one_baseline(model):
    tokens = _tokens()
    results = iv.key_vs_value(model, tokens)
    assert [r.name for r in results] == ["zero_value", "mean_value", "zero_key", "ablate"]
    assert len({r.loss_base for r in results}) == 1
    d = results[0].to_dict()
    assert set(d) >= {"delta_loss", "sink_pct_base", "sink_pct", "alpha", "per_head_delta_loss"}


def test_rescale_bias():
    m = SinkTransformer(tiny_config(attn_bias="sink_logit")).double()
    with torch.no_grad():
        m.blocks[0].attn.sink_logit.fill_(0.5)
    new = iv.rescale_bias(m, "logit", 4.0)
    assert float(new.blocks[0].attn.sink_logit[0]) == pytest.approx(0.5 + np.log(4.0))
    assert float(m.blocks[0].attn.sink_logit[0]) == 0.5  # the input is unchanged
    held = SinkTransformer(tiny_config(attn_bias="sink_logit", sink_logit_fixed=0.0)).double()
    moved = iv.rescale_bias(held, "logit", 4.0)  # a held logit moves, and its config says where
    assert moved.cfg.sink_logit_fixed == pytest.approx(np.log(4.0))
    assert all(float(b.attn.sink_logit[0]) == pytest.approx(np.log(4.0)) for b in moved.blocks)
    assert "blocks.0.attn.sink_logit" not in dict(moved.named_parameters())
    assert held.cfg.sink_logit_fixed == 0.0 and float(held.blocks[0].attn.sink_logit[0]) == 0.0
    kv = SinkTransformer(tiny_config(attn_bias="kv")).double()
    zero_k = iv.rescale_bias(kv, "k", 0.0)
    assert zero_k.blocks[1].attn.k_star.abs().max() == 0
    with pytest.raises(ValueError, match="has no v_star"):
        iv.rescale_bias(m, "v", 2.0)
    with pytest.raises(ValueError, match="which: got 'q'"):
        iv.rescale_bias(kv, "q", 2.0)
    with pytest.raises(TypeError, match="SinkTransformer"):
        iv.rescale_bias(object(), "k", 2.0)


def test_hooks_are_removed_after_an_error(model):
    tokens = _tokens()
    with pytest.raises(ValueError, match="position 20 is outside"):
        iv.run_intervention(SinkTransformer(tiny_config(pos_emb="learned")), tokens,
                            iv.first_token("swap_position", position=20))
    assert tl_adapter.count_attached_hooks(model) == 0


def test_bad_input(model):
    tokens = _tokens()
    with pytest.raises(ValueError, match="kind: got 'nope'"):
        iv.first_token("nope")
    with pytest.raises(ValueError, match="layers: 5 is outside"):
        iv.run_intervention(model, tokens, iv.first_token("zero_value"), layers=[5])
    with pytest.raises(ValueError, match="heads: 4 is outside"):
        iv.run_intervention(model, tokens, iv.first_token("zero_value"), heads=[4])
    with pytest.raises(ValueError, match="not token edits"):
        iv.run_intervention(model, tokens, iv.replace_first(1), per_head=True)
    with pytest.raises(ValueError, match="target_start"):
        iv.run_intervention(model, tokens, iv.first_token("zero_value"), target_start=T)
    with pytest.raises(ValueError, match="token must be"):
        iv.replace_first("bos")
    with pytest.raises(ValueError, match="shift must be"):
        iv.start_later(0)
    with pytest.raises(ValueError, match="leaves fewer than 2"):
        iv.run_intervention(model, tokens, iv.start_later(T - 1))
    with pytest.raises(TypeError, match="intervention: expected"):
        iv.run_intervention(model, tokens, "ablate")
    with pytest.raises(ValueError, match="token ids must lie"):
        iv.run_intervention(model, tokens + 100, iv.first_token("ablate"))


# ---------------------------------------------------------------------------------------
# rotary repositioning: token 1's key as if it stood at another position
# ---------------------------------------------------------------------------------------
def _layer0_rot_k(model, tokens, hooks=()):
    store = {}
    with torch.no_grad(), tl_adapter.attached_hooks(
            model, list(hooks) + [("blocks.0.attn.hook_rot_k", lambda a, hook: store.setdefault("k", a.clone()))]):
        model(tokens)
    return store["k"]


def _rotary_models():
    yield "sinkinterp", SinkTransformer(tiny_config()).double().eval()
    for adjacent in (False, True):
        ht = tl_adapter.hooked_transformer_from_config(
            n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
            positional_embedding_type="rotary", rotary_dim=8, rotary_adjacent_pairs=adjacent,
            rotary_base=500, normalization_type="RMS", seed=0, dtype=torch.float64)
        yield f"hooked(adjacent={adjacent})", ht


@pytest.mark.parametrize("which", ["sinkinterp", "hooked(adjacent=False)", "hooked(adjacent=True)"])
def test_rotary_position_gives_token_1_the_key_it_would_have_at_that_position(which):
    """Layer 0's key of a token depends on the token alone before rotation, so the model's own key
    of token 1 placed at position p is the reference for the edited key at position 0."""
    model = dict(_rotary_models())[which]
    tokens, p = _tokens(), 6
    inter = iv.first_token("rotary_position", position=p)
    edited = _layer0_rot_k(model, tokens, _edit_hooks(model, inter))
    moved = tokens.clone()
    moved[:, p] = tokens[:, 0]
    reference = _layer0_rot_k(model, moved)[:, p]
    torch.testing.assert_close(edited[:, 0], reference, atol=1e-10, rtol=0)
    plain = _layer0_rot_k(model, tokens)
    torch.testing.assert_close(edited[:, 1:], plain[:, 1:], atol=0, rtol=0)
    assert (edited[:, 0] - plain[:, 0]).abs().max() > 1e-3  # it moved
    res = iv.run_intervention(model, tokens, inter, per_head=True, sinks=False)
    assert res.per_head.shape == (2, model.cfg.n_key_value_heads or model.cfg.n_heads)
    assert np.isfinite(res.per_head).all() and res.loss != res.loss_base


def test_rotary_position_errors():
    tokens = _tokens()
    with pytest.raises(ValueError, match="no hook"):
        iv.run_intervention(SinkTransformer(tiny_config(pos_emb="learned")).double(), tokens,
                            iv.first_token("rotary_position", position=3), sinks=False)
    with pytest.raises(ValueError, match="position 12 is outside"):
        iv.run_intervention(SinkTransformer(tiny_config()).double(), tokens,
                            iv.first_token("rotary_position", position=12), sinks=False)
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="position must be a positive integer"):
            iv.first_token("rotary_position", position=bad)
    # a "rotary" model whose hook_rot_k is not a rotation of hook_k: refused, not silently wrong
    m = SinkTransformer(tiny_config()).double().eval()
    scramble = [("blocks.0.attn.hook_rot_k", lambda a, hook: a.flip(-1))]
    with tl_adapter.attached_hooks(m, scramble), pytest.raises(RuntimeError, match="not a pairwise rotation"):
        iv.run_intervention(m, tokens, iv.first_token("rotary_position", position=3), sinks=False)


# ------------------------------------------------------------------------------- window_cache
@pytest.mark.parametrize("variant", ["rotary", "kv", "sink_logit"])
def test_window_cache_equals_a_model_trained_with_that_window(variant):
    """window_cache(w) on a model without a window gives exactly the loss and patterns of the same
    weights built with ``window=w`` (softmax over the kept keys; a bias slot stays visible in both),
    and the keep-first variant equals a reference mask applied to the scores."""
    from sinkinterp.models.testing import VARIANTS, tiny_model

    full = tiny_model(variant).eval()
    windowed = SinkTransformer(tiny_config(**VARIANTS[variant], window=4)).double().eval()
    windowed.load_state_dict(full.state_dict())
    tokens = _tokens(3)
    res = iv.run_intervention(full, tokens, iv.window_cache(4))
    assert res.loss_base == pytest.approx(float(full(tokens, return_type="loss")), abs=1e-12)
    assert res.loss == pytest.approx(float(windowed(tokens, return_type="loss")), abs=1e-10)
    assert abs(res.delta_loss) > 1e-4  # the window matters on these weights
    # keep the first 2 tokens as well: the scores of every other key older than the window -> -inf
    pos = torch.arange(T)
    hidden = (pos[:, None] - pos[None, :] >= 4) & (pos[None, :] >= 2)

    def mask(scores, hook):
        return scores.masked_fill(hidden, float("-inf"))

    names = [f"blocks.{l}.attn.hook_attn_scores" for l in range(full.cfg.n_layers)]
    if variant == "rotary":  # the slot's logit is not in hook_attn_scores; compare the no-slot model
        with tl_adapter.attached_hooks(full, [(n, mask) for n in names]):
            ref = float(full(tokens, return_type="loss"))
        assert iv.run_intervention(full, tokens, iv.window_cache(4, 2)).loss == pytest.approx(ref, abs=1e-10)
    # a window as long as the sequence, or keeping every token, changes nothing
    for inter in (iv.window_cache(T), iv.window_cache(1, keep_first=T)):
        assert iv.run_intervention(full, tokens, inter).delta_loss == pytest.approx(0.0, abs=1e-12)


def test_window_cache_arguments_and_cli_spec():
    from sinkinterp.cli_intervene import parse_spec

    inter = iv.window_cache(16, 4)
    assert inter.name == "window[16]+first[4]" and inter.params == {"window": 16, "keep_first": 4, "renormalize": True}
    assert iv.window_cache(8).name == "window[8]"
    assert iv.window_cache(8, renormalize=False).name == "window[8][norenorm]"
    for bad in (dict(window=0), dict(window=True), dict(window=4, keep_first=-1)):
        with pytest.raises(ValueError, match="window|keep_first"):
            iv.window_cache(**bad)
    assert parse_spec("window=16+4", None).params["keep_first"] == 4
    assert parse_spec("window=16", None).params == {"window": 16, "keep_first": 0, "renormalize": True}
    assert parse_spec("window=8+1,norenorm", None).name == "window[8]+first[1][norenorm]"
    for bad in ("window", "window=x", "window=16+", "window=0", "window=8,renorm"):
        with pytest.raises(ValueError, match="window needs =W or =W\\+K"):
            parse_spec(bad, None)


def test_zero_neurons_changes_exactly_those_units_at_token_one(model):
    """zero_neurons(l, [i, j]): blocks.l.mlp.hook_post is 0 at (token 1, i / j) and unchanged elsewhere;
    the layer's mlp_out at token 1 loses exactly a_i W_out[i] + a_j W_out[j]; other layers' MLP inputs
    at that layer are untouched. All neurons silenced = mlp_out of token 1 set to 0 (no MLP bias)."""
    tokens = _tokens(3)
    post, out = "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"
    base = patching.capture(model, tokens, [post, out, "blocks.0.mlp.hook_post"])
    inter = iv.zero_neurons(1, [5, 2])
    assert inter.name == "zero_neurons[L1:2,5]" and inter.params == {"layer": 1, "neurons": [2, 5]}
    with tl_adapter.attached_hooks(model, _edit_hooks(model, inter)):
        got = patching.capture(model, tokens, [post, out, "blocks.0.mlp.hook_post"])
    want = base[post].clone()
    want[:, 0, [2, 5]] = 0.0
    torch.testing.assert_close(got[post], want, rtol=0, atol=0)
    torch.testing.assert_close(got["blocks.0.mlp.hook_post"], base["blocks.0.mlp.hook_post"], rtol=0, atol=0)
    w_out = tl_adapter.mlp_out_weight(model, 1)
    lost = base[post][:, 0, [2, 5]] @ w_out[[2, 5]]
    torch.testing.assert_close(got[out][:, 0], base[out][:, 0] - lost)
    torch.testing.assert_close(got[out][:, 1:], base[out][:, 1:], rtol=0, atol=0)
    every = iv.zero_neurons(1, list(range(model.cfg.d_ff)))
    silent = iv.run_intervention(model, tokens, every, sinks=False)
    zero_out = iv.Intervention("zero_mlp_out", "", ("mlp_out",), lambda model, has_slot: (
        ("mlp_out", lambda a, l: torch.cat([torch.zeros_like(a[:, :1]), a[:, 1:]], 1) if l == 1 else a),))
    assert silent.loss == pytest.approx(iv.run_intervention(model, tokens, zero_out, sinks=False).loss, abs=1e-12)
    assert abs(silent.delta_loss) > 1e-4


def test_zero_neurons_on_a_bridge_and_its_errors(model):
    from sinkinterp.cli_intervene import parse_spec

    bridge = tl_adapter.boot_bridge(tiny_llama(), word_tokenizer(61), "tiny")
    tokens = torch.randint(0, 61, (3, 8), generator=torch.Generator().manual_seed(2))
    inter = iv.zero_neurons(0, [0, 1, 2, 3])
    with tl_adapter.attached_hooks(bridge, _edit_hooks(bridge, inter)):
        got = patching.capture(bridge, tokens, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"]
    base = patching.capture(bridge, tokens, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"]
    assert (got[:, 0, :4] == 0).all() and (base[:, 0, :4] != 0).all()
    torch.testing.assert_close(got[:, 0, 4:], base[:, 0, 4:]) and torch.testing.assert_close(got[:, 1:], base[:, 1:])
    res = iv.run_intervention(bridge, tokens, inter, sinks=False, per_layer=True)
    assert np.isnan(res.per_layer[1])  # the edit has no cell in layer 1
    assert res.per_layer[0] == pytest.approx(res.delta_loss, abs=1e-6)
    with pytest.raises(ValueError, match=r"edits layers \[0\] only"):
        iv.run_intervention(bridge, tokens, inter, sinks=False, layers=[1])
    assert tl_adapter.mlp_out_weight(bridge, 0).shape[0] == bridge.cfg.d_mlp
    with pytest.raises(ValueError, match=r"layers: 9 is outside the model \(0..1\)"):
        iv.run_intervention(model, _tokens(), iv.zero_neurons(9, [0]), sinks=False)
    with pytest.raises(ValueError, match="outside blocks.0.mlp"):
        iv.run_intervention(model, _tokens(), iv.zero_neurons(0, [10_000]), sinks=False)
    for bad in (dict(layer=-1, neurons=[0]), dict(layer=0, neurons=[]), dict(layer=0, neurons=[-2])):
        with pytest.raises(ValueError, match="layer|neurons"):
            iv.zero_neurons(**bad)
    assert parse_spec("zero_neurons=1:7,3", None).params == {"layer": 1, "neurons": [3, 7]}
    for bad in ("zero_neurons", "zero_neurons=1", "zero_neurons=1:", "zero_neurons=a:1", "zero_neurons=1:x"):
        with pytest.raises(ValueError, match="zero_neurons needs =LAYER:N1,N2"):
            parse_spec(bad, None)
    with pytest.raises(ValueError, match="layer must be"):
        tl_adapter.mlp_out_weight(model, 5)


# =========================================================================================
# at_position: edits at a key position other than the first, per sequence
# =========================================================================================
MARK = 7  # the token whose first occurrence is edited


def _marked_tokens():
    """Four sequences: MARK first at 0-based positions 3, 6 and 1 (again later in the first), and one
    without it (only at position 0, which first_of skips)."""
    tokens = torch.randint(10, 50, (4, T), generator=torch.Generator().manual_seed(5))
    tokens[0, 3] = tokens[0, 8] = MARK
    tokens[1, 6] = MARK
    tokens[2, 1] = MARK
    tokens[3, 0] = MARK
    return tokens, torch.tensor([3, 6, 1, -1])


def test_first_of_finds_the_first_occurrence_after_token_one_and_its_neighbours():
    tokens, pos = _marked_tokens()
    assert iv.first_of(MARK)(tokens).tolist() == pos.tolist()
    assert iv.first_of(MARK, offset=1)(tokens).tolist() == [4, 7, 2, -1]
    assert iv.first_of(MARK, offset=-2)(tokens).tolist() == [1, 4, -1, -1]  # 1 - 2 < 0: unedited
    assert iv.first_of(MARK, offset=-1)(tokens).tolist() == [2, 5, -1, -1]  # never the first token itself
    assert iv.first_of(MARK, offset=4)(tokens).tolist() == [7, -1, 5, -1]  # 6 + 4 >= T
    assert iv.first_of(MARK, start=0)(tokens).tolist() == [3, 6, 1, 0]
    assert iv.first_of(MARK, start=4)(tokens).tolist() == [8, 6, -1, -1]


def _mask_keys_at(pos):
    """hook_attn_scores edit: key pos[b] hidden from queries t > pos[b] of row b (the reference)."""
    def hook(act, hook):
        act = act.clone()
        for b, p in enumerate(pos.tolist()):
            if p >= 0:
                act[b, :, p + 1:, p] = float("-inf")
        return act
    return hook


def test_ablating_a_per_sequence_key_equals_masking_it_in_the_scores(model):
    tokens, pos = _marked_tokens()
    ref = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), _mask_keys_at(pos))])
    res = iv.run_intervention(model, tokens, iv.at_position("ablate", token=MARK))
    assert res.loss == pytest.approx(float(patching.loss_metric(tokens)(ref)), rel=1e-10)
    base = model(tokens)
    per = patching.per_token_loss(ref, tokens).double()
    per_base = patching.per_token_loss(base, tokens).double()
    after = torch.zeros_like(per, dtype=torch.bool)
    for b, p in enumerate(pos.tolist()):
        if p >= 0:
            after[b, p:] = True
    assert res.edited == 3
    assert res.loss_from_edit == pytest.approx(float(per[after].mean()), rel=1e-10)
    assert res.loss_from_edit_base == pytest.approx(float(per_base[after].mean()), rel=1e-10)
    assert res.delta_loss_from_edit != 0.0
    torch.testing.assert_close(per[3], per_base[3], rtol=1e-12, atol=1e-12)  # the row without the token: unedited
    # the edited measurement: the pattern rows after each edited key give it nothing
    with iv._token_tap(model):
        logits, pats = _patterns(model, tokens, _edit_hooks(model, iv.at_position("ablate", token=MARK)))
    torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-10)
    for p in pats.values():
        for b, k in enumerate(pos.tolist()):
            if k >= 0:
                assert p[b, :, k + 1:, k].abs().max() == 0
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    assert tl_adapter.count_attached_hooks(model) == 0 and not model._forward_pre_hooks


def test_position_zero_is_the_first_token_edit(model):
    tokens = _tokens()
    for kind in ("ablate", "zero_value", "mean_key"):
        ours = iv.run_intervention(model, tokens, iv.at_position(kind, position=0))
        ref = iv.run_intervention(model, tokens, iv.first_token(kind))
        assert ours.loss == pytest.approx(ref.loss, rel=1e-12)
        np.testing.assert_allclose(ours.sink.sink_pct, ref.sink.sink_pct)
        assert ours.loss_from_edit == pytest.approx(ours.loss, rel=1e-12)  # every prediction is from position 0 on
        assert ours.edited == tokens.shape[0]


@pytest.mark.parametrize("kind, comp", [("zero_value", "v"), ("mean_value", "v"), ("scale_key", "k"),
                                        ("mean_key", "k"), ("scale_resid", "resid_pre")])
def test_value_key_and_residual_edits_set_exactly_the_chosen_position_of_each_row(model, kind, comp):
    tokens, pos = _marked_tokens()
    name = f"blocks.1.attn.hook_{comp}" if comp != "resid_pre" else "blocks.1.hook_resid_pre"
    base = patching.capture(model, tokens, [name])[name]
    inter = iv.at_position(kind, token=MARK, factor=-2.0)
    with iv._token_tap(model), tl_adapter.attached_hooks(model, _edit_hooks(model, inter, layers=[1])):
        got = patching.capture(model, tokens, [name])[name]
    for b, p in enumerate(pos.tolist()):
        if p < 0:
            torch.testing.assert_close(got[b], base[b], rtol=0, atol=0)
            continue
        others = torch.cat([base[b, :p], base[b, p + 1:]])
        expect = {"zero_value": torch.zeros_like(base[b, p]), "mean_value": others.mean(0),
                  "mean_key": others.mean(0), "scale_key": -2.0 * base[b, p], "scale_resid": -2.0 * base[b, p]}[kind]
        torch.testing.assert_close(got[b, p], expect)
        torch.testing.assert_close(torch.cat([got[b, :p], got[b, p + 1:]]), others, rtol=0, atol=0)


def test_per_head_effects_at_a_per_sequence_position_equal_one_head_at_a_time(model):
    """Per-head passes stack copies of the batch; each copy finds its own positions."""
    tokens, _ = _marked_tokens()
    inter = iv.at_position("zero_value", token=MARK)
    res = iv.run_intervention(model, tokens, inter, per_head=True, sinks=False, batch_rows=8)
    for l, h in [(0, 1), (1, 3)]:
        one = iv.run_intervention(model, tokens, inter, layers=[l], heads=[h], sinks=False)
        assert res.per_head[l, h] == pytest.approx(one.delta_loss, abs=1e-12)
    assert np.ptp(res.per_head) > 0


def test_at_position_on_a_hooked_transformer_equals_masked_scores():
    """TransformerLens' start_at_layer passes the tokens as a keyword: the tap finds them there too."""
    ht = tl_adapter.hooked_transformer_from_config(
        n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
        positional_embedding_type="rotary", normalization_type="RMS", seed=0)
    tokens, pos = _marked_tokens()
    with torch.no_grad():
        ref = ht.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", _mask_keys_at(pos))])
    inter = iv.at_position("ablate", token=MARK)
    res = iv.run_intervention(ht, tokens, inter, layers=[1], per_layer=True, sinks=False)
    assert res.loss == pytest.approx(float(patching.loss_metric(tokens)(ref)), rel=1e-5)
    assert res.per_layer[1] == pytest.approx(res.delta_loss, abs=1e-6)


def test_at_position_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="kind: got 'swap_position'"):
        iv.at_position("swap_position", position=2)
    with pytest.raises(ValueError, match="exactly one of position, token or positions"):
        iv.at_position("ablate")
    with pytest.raises(ValueError, match="exactly one of position, token or positions"):
        iv.at_position("ablate", position=1, token=3)
    with pytest.raises(ValueError, match="offset: applies to token= only"):
        iv.at_position("ablate", position=1, offset=1)
    with pytest.raises(ValueError, match="position must be a non-negative integer"):
        iv.at_position("zero_value", position=-1)
    with pytest.raises(ValueError, match="token must be an integer >= 0"):
        iv.first_of(-3)
    tokens = _tokens()
    with pytest.raises(ValueError, match=r"positions must give one integer position per sequence.*\(4,\)"):
        iv.run_intervention(model, tokens, iv.at_position("ablate", positions=lambda t: torch.zeros(t.shape[0], 2)))
    with pytest.raises(ValueError, match="position 10 is outside the sequence"):
        iv.run_intervention(model, tokens, iv.at_position("ablate", positions=lambda t: torch.full((4,), 10)))
    hooks = _edit_hooks(model, iv.at_position("zero_value", token=MARK))
    # the edit alone cannot find its rows
    with pytest.raises(RuntimeError, match="run it through run_intervention"), tl_adapter.attached_hooks(model, hooks):
        model(tokens)
    assert tl_adapter.count_attached_hooks(model) == 0


def test_compare_checks_every_edit_before_the_first_runs(model, monkeypatch):
    """A head outside the key/value heads fails before any pass (no baseline, no earlier edit)."""
    gqa = SinkTransformer(tiny_config(n_kv_heads=2)).double().eval()
    calls = []
    monkeypatch.setattr(iv, "baseline", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="heads: 3 is outside the model's 2 key/value heads"):
        iv.compare(gqa, _tokens(), [iv.first_token("ablate"), iv.first_token("zero_value")], heads=[3])
    assert calls == []
