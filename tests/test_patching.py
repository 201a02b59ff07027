"""Batched activation patching: equal to transformer_lens.patching's per-cell functions, chunking
does not change results, grouped-query heads, hooks always removed, bad input."""

import numpy as np
import pytest
import torch

from sinkinterp import patching, tl_adapter
from sinkinterp.models import SinkTransformer
from sinkinterp.models.testing import VARIANTS, tiny_config

tlp = tl_adapter.patching


def _tokens(seed, n=3, T=6, vocab=50):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return SinkTransformer(tiny_config()).double().eval()


@pytest.fixture(scope="module")
def pair():
    return _tokens(0), _tokens(1)


@pytest.mark.parametrize(
    "tl_fn, component, kwargs",
    [
        ("get_act_patch_resid_pre", "resid_pre", {}),
        ("get_act_patch_attn_head_k_by_pos", "k", {}),
        ("get_act_patch_attn_head_out_by_pos", "z", {}),
        ("get_act_patch_attn_head_q_all_pos", "q", {"by_pos": False}),
        ("get_act_patch_attn_head_v_all_pos", "v", {"by_pos": False}),
        ("get_act_patch_attn_head_pattern_all_pos", "pattern", {"by_pos": False}),
    ],
)
def test_batched_patching_equals_transformer_lens(model, pair, tl_fn, component, kwargs):
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    _, cache = model.run_with_cache(clean)
    ref = getattr(tlp, tl_fn)(model, corrupted, cache, metric).numpy()
    ours = patching.patch(model, clean, corrupted, component, metric, batch_rows=12, **kwargs)
    assert ours.values.shape == ref.shape
    # TransformerLens stores results in float32
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-3  # the cells differ: a real test, not all-equal values
    assert tl_adapter.count_attached_hooks(model) == 0


def test_patching_a_hooked_transformer_equals_transformer_lens(pair):
    ht = tl_adapter.hooked_transformer_from_config(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu",
        normalization_type="LN", seed=0, dtype=torch.float64)
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    _, cache = ht.run_with_cache(clean)
    ref = tlp.get_act_patch_attn_head_v_by_pos(ht, corrupted, cache, metric).numpy()
    ours = patching.patch(ht, clean, corrupted, "v", metric)
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6, atol=1e-6)


def test_first_token_patch_is_the_position_zero_slice(model, pair):
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    by_pos = patching.patch(model, clean, corrupted, "k", metric)
    first = patching.patch_first_token(model, clean, corrupted, "k", metric)
    assert first.axes == ("layer", "head")
    np.testing.assert_allclose(first.values, by_pos.values[:, 0, :], atol=1e-12)
    # the score column of key 1 as seen by every query
    scores = patching.patch_first_token(model, clean, corrupted, "scores", metric)
    assert scores.values.shape == (2, 4)


def test_chunking_does_not_change_results(model, pair):
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    one = patching.patch(model, clean, corrupted, "v", metric, by_pos=False, batch_rows=1)  # a cell per pass
    many = patching.patch(model, clean, corrupted, "v", metric, by_pos=False, batch_rows=1000)
    np.testing.assert_allclose(one.values, many.values, atol=1e-12)


def _embed_calls(model):
    calls = []
    model.hook_embed.add_hook(lambda act, hook: calls.append(act.shape[0]))
    return calls


@pytest.mark.parametrize("variant", ["rotary", "learned", "post_norm", "kv", "sink_logit", "alibi"])
def test_passes_start_at_the_patched_layer_with_the_same_results(pair, variant):
    """Each pass runs from its first edited layer and position on the unedited run: the blocks
    before it are skipped (the embedding runs only for the clean/corrupted runs, one capture and the
    one pass that edits position 0 of layer 0), positions before the first edited one are taken from
    the unedited run, and the grid equals full passes."""
    m = SinkTransformer(tiny_config(n_layers=3, **VARIANTS[variant])).double().eval()
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    calls = _embed_calls(m)
    seen = []  # positions that each pass computes at block 2
    m.blocks[2].hook_resid_pre.add_hook(lambda act, hook: seen.append(act.shape[1]))
    fast = patching.patch(m, clean, corrupted, "k", metric, batch_rows=3 * 8)  # 8 cells per pass, 3 passes per layer
    n_full = sum(1 for c in calls if c > clean.shape[0])
    m.blocks[2].hook_resid_pre.remove_hooks()
    assert m.can_start_at_layer and n_full == 1
    # every pass reaches block 2; per layer the 3 passes start at positions 0, 2, 4 (2 positions x 4 heads each)
    assert sorted(seen[-9:]) == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    calls.clear()
    by_layer_only = patching.patch(m, clean, corrupted, "k", metric, batch_rows=3 * 8, skip="layer")
    assert sum(1 for c in calls if c > clean.shape[0]) == 3  # the layer-0 passes embed the stacked copies
    calls.clear()
    slow = patching.patch(m, clean, corrupted, "k", metric, batch_rows=3 * 8, skip="none")
    assert sum(1 for c in calls if c > clean.shape[0]) == 9  # every pass (3 layers x 3) in full
    m.reset_hooks()
    np.testing.assert_allclose(fast.values, slow.values, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(by_layer_only.values, slow.values, rtol=1e-10, atol=1e-10)
    assert np.ptp(fast.values[1:]) > 1e-3


def _tl_by_pos(model, clean, corrupted, metric, component):
    """TransformerLens' generic per-cell patching of ``component`` by position (and head)."""
    _, cache = model.run_with_cache(clean)
    if patching.component(component).head_dim is None:
        setter, axes = tlp.layer_pos_patch_setter, ["layer", "pos"]
    else:
        setter, axes = tlp.layer_pos_head_vector_patch_setter, ["layer", "pos", "head"]
    return tlp.generic_activation_patch(model, corrupted, cache, metric, setter, component,
                                        index_axis_names=axes).numpy()


@pytest.mark.parametrize("component", ["resid_pre", "rot_k", "v", "z", "q", "attn_out", "mlp_out", "resid_mid"])
def test_position_continued_passes_equal_transformer_lens_per_cell(pair, component):
    """Every per-token component, patched by position (and head), through passes continued from the
    first patched position, equals TransformerLens' generic per-cell patching."""
    m = SinkTransformer(tiny_config(n_layers=2)).double().eval()
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    ours = patching.patch(m, clean, corrupted, component, metric, batch_rows=3 * 5)
    np.testing.assert_allclose(ours.values, _tl_by_pos(m, clean, corrupted, metric, component), rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-4


def test_start_at_pos_forward():
    """forward(start_at_layer, resid, start_at_pos, past_kv) gives the full run's logits of the later
    positions, for every variant that allows it; bad arguments are refused."""
    tokens = _tokens(2, T=12)
    for name, over in VARIANTS.items():
        m = SinkTransformer(tiny_config(**over)).double().eval()
        starts = ((0, 1), (1, 5), (1, 11))
        if not m.can_start_at_layer:  # sink token: from layer 0 only (it enters block 0 as W_sink)
            assert not m.can_start_at_pos(3) and not m.can_start_at_pos(3, layer=1) and m.can_start_at_pos(3, layer=0)
            starts = ((0, 1), (0, 5), (0, 11))
        k_name = "hook_rot_k" if "blocks.0.attn.hook_rot_k" in m.hook_dict else "hook_k"
        logits, cache = m.run_with_cache(tokens)
        for layer, pos in starts:
            if not m.can_start_at_pos(pos, layer):
                assert m.cfg.prefix_len > pos
                continue
            past = [(cache[f"blocks.{l}.attn.{k_name}"][:, :pos], cache[f"blocks.{l}.attn.hook_v"][:, :pos])
                    for l in range(layer, 2)]
            out = m(tokens, start_at_layer=layer, resid=cache[f"blocks.{layer}.hook_resid_pre"][:, pos:],
                    start_at_pos=pos, past_kv=past)
            torch.testing.assert_close(out, logits[:, pos:], atol=1e-10, rtol=0, msg=f"{name} {layer} {pos}")
    m = SinkTransformer(tiny_config()).double().eval()
    _, cache = m.run_with_cache(tokens)
    past = [(cache[f"blocks.{l}.attn.hook_rot_k"][:, :3], cache[f"blocks.{l}.attn.hook_v"][:, :3]) for l in range(2)]
    resid = cache["blocks.0.hook_resid_pre"][:, 3:]
    with pytest.raises(ValueError, match="give start_at_pos, past_kv, start_at_layer and resid together"):
        m(tokens, start_at_pos=3, past_kv=past)
    with pytest.raises(ValueError, match=r"start_at_pos: expected an integer in 1..11"):
        m(tokens, start_at_layer=0, resid=cache["blocks.0.hook_resid_pre"], start_at_pos=0, past_kv=past)
    with pytest.raises(ValueError, match="past_kv: expected 2"):
        m(tokens, start_at_layer=0, resid=resid, start_at_pos=3, past_kv=past[:1])
    with pytest.raises(ValueError, match="only return_type='logits'"):
        m(tokens, return_type="loss", start_at_layer=0, resid=resid, start_at_pos=3, past_kv=past)
    with pytest.raises(ValueError, match="resid: expected a float tensor of shape"):
        m(tokens, start_at_layer=0, resid=cache["blocks.0.hook_resid_pre"], start_at_pos=3, past_kv=past)
    sink = SinkTransformer(tiny_config(**VARIANTS["sink_token"])).double().eval()
    _, cache = sink.run_with_cache(tokens)
    with pytest.raises(ValueError, match="sink-token models start at layer 0 only"):
        sink(tokens, start_at_layer=1, resid=cache["blocks.1.hook_resid_pre"])
    assert not SinkTransformer(tiny_config(prefix_len=5)).can_start_at_pos(4)
    assert not m.set_attn_backend("flex").can_start_at_pos(4)


def test_logits_at_equals_the_full_run_and_cuts_the_last_block():
    """model.logits_at(positions): the logits of those positions, in order, equal to the full run's
    (also in a pass continued from a position), for every variant; the last block computes the
    queries from the first of them on where nothing hooks it or the final norm and a pass could
    start there, and runs whole otherwise (a hook there, a position inside a bidirectional prefix, the
    FlexAttention backend); bad positions are refused."""
    tokens = _tokens(2, T=12)
    for name, over in VARIANTS.items():
        m = SinkTransformer(tiny_config(**over)).double().eval()
        seen = []  # positions entering the last block's MLP (a plain torch hook: no HookPoint is hooked)
        handle = m.blocks[-1].mlp.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0].shape[1]))
        logits, cache = m.run_with_cache(tokens)
        seen.clear()
        for keep in ([11], [7, 11, 9], [0, 11]):
            with m.logits_at(keep):
                out = m(tokens)
            torch.testing.assert_close(out, logits[:, keep], atol=1e-10, rtol=0, msg=f"{name} {keep}")
            want = 12 if min(keep) == 0 or m.cfg.prefix_len > min(keep) else 12 - min(keep)
            assert seen.pop() == want, (name, keep)
        if m.can_start_at_pos(4, 0):  # a pass continued from position 4: positions relative to it
            k_name = "hook_rot_k" if "blocks.0.attn.hook_rot_k" in m.hook_dict else "hook_k"
            past = [(cache[f"blocks.{l}.attn.{k_name}"][:, :4], cache[f"blocks.{l}.attn.hook_v"][:, :4]) for l in range(2)]
            with m.logits_at([7, 3]):
                out = m(tokens, start_at_layer=0, resid=cache["blocks.0.hook_resid_pre"][:, 4:], start_at_pos=4,
                        past_kv=past)
            torch.testing.assert_close(out, logits[:, [11, 7]], atol=1e-10, rtol=0, msg=name)
            assert seen.pop() == 5
        m.blocks[-1].attn.hook_v.add_hook(lambda act, hook: None)  # a hook on the last block: it runs whole
        with m.logits_at([11]):
            out = m(tokens)
        m.reset_hooks()
        torch.testing.assert_close(out, logits[:, [11]], atol=1e-10, rtol=0, msg=name)
        assert seen.pop() == 12
        handle.remove()
    m = SinkTransformer(tiny_config()).double().eval()
    with m.logits_at([12]), pytest.raises(ValueError, match="position 12 is outside the 12 positions"):
        m(tokens)
    with pytest.raises(ValueError, match="non-negative positions"), m.logits_at([-1]):
        pass
    with m.logits_at([3]), pytest.raises(ValueError, match="only return_type='logits'"):
        m(tokens, return_type="loss")
    assert m._logit_positions is None  # restored after each block


def _one_token_pair(p, n=3, T=6, vocab=50):
    """Clean prompts and the same prompts with the token at position ``p`` replaced (an IOI-style pair)."""
    clean = _tokens(0, n, T, vocab)
    corrupted = clean.clone()
    corrupted[:, p] = (clean[:, p] + 1 + _tokens(1, n, 1, vocab - 1)[:, 0]) % vocab  # a different token
    assert (corrupted[:, p] != clean[:, p]).all()
    return clean, corrupted


def test_cells_that_change_nothing_need_no_pass():
    """Clean and corrupted prompts differ at position 3 only: patching cells before it (at every
    layer) or after it at layer 0 (a key depends only on its own token there) changes nothing, so
    those cells get the corrupted metric without a pass; all-position cells start at position 3.
    The grids equal TransformerLens' per-cell functions and full passes (skip="none")."""
    m = SinkTransformer(tiny_config(n_layers=3)).double().eval()
    clean, corrupted = _one_token_pair(3)
    metric = patching.loss_metric(clean)
    _, cache = m.run_with_cache(clean)
    seen = []  # (rows, positions) of every pass at block 2
    m.blocks[2].hook_resid_pre.add_hook(lambda act, hook: seen.append(tuple(act.shape[:2])))

    def passes():  # the edited passes: stacked copies, not the 3-row clean / corrupted / capture runs
        out = [s for s in seen if s[0] > clean.shape[0]]
        seen.clear()
        return out

    by_pos = patching.patch(m, clean, corrupted, "k", metric, batch_rows=3 * 4)  # 4 cells per pass
    # layer 0: position 3 (4 heads); layers 1-2: positions 3, 4, 5 (12 cells each): 1 + 3 + 3 passes
    assert len(passes()) == 7
    slow = patching.patch(m, clean, corrupted, "k", metric, batch_rows=3 * 4, skip="none")
    assert len(passes()) == 3 * 6 * 4 // 4
    ref = tlp.get_act_patch_attn_head_k_by_pos(m, corrupted, cache, metric).numpy()
    np.testing.assert_allclose(by_pos.values, slow.values, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(by_pos.values, ref, rtol=1e-6, atol=1e-6)
    assert (by_pos.values[:, :3] == by_pos.corrupted).all() and (by_pos.values[0, 4:] == by_pos.corrupted).all()
    assert np.ptp(by_pos.values[1:, 3:]) > 1e-4

    all_pos = patching.patch(m, clean, corrupted, "v", metric, by_pos=False, batch_rows=3 * 4)
    assert {s[1] for s in passes()} == {3}  # every pass computes positions 3.. only
    ref = tlp.get_act_patch_attn_head_v_all_pos(m, corrupted, cache, metric).numpy()
    np.testing.assert_allclose(all_pos.values, ref, rtol=1e-6, atol=1e-6)
    m.reset_hooks()
    assert np.ptp(all_pos.values) > 1e-4


@pytest.mark.parametrize("kind", ["sink", "hooked"])
@pytest.mark.parametrize("component, by_pos", [("pattern", False), ("pattern", True), ("scores", False)])
def test_query_key_sweeps_start_at_the_first_changed_query_row(kind, component, by_pos):
    """A [query, key] component (pattern, scores) of prompts that differ at position 3 only: the
    query rows before 3 are the same in both runs, so every pass computes query positions 3.. only,
    and a cell of key column j > 3 rows j.. only (the hook sees those rows, edited with the unedited
    rows put back in front); the grid equals full passes and, for the pattern, TransformerLens'
    per-cell function."""
    m = SinkTransformer(tiny_config(n_layers=3)).double().eval() if kind == "sink" else _hooked("rotary")
    clean, corrupted = _one_token_pair(3)
    metric = patching.loss_metric(clean)
    seen = []
    m.blocks[2].hook_resid_pre.add_hook(lambda act, hook: seen.append(tuple(act.shape[:2])))
    got = patching.patch(m, clean, corrupted, component, metric, by_pos=by_pos, batch_rows=3 * 4)
    passes = [s for s in seen if s[0] > clean.shape[0]]
    m.reset_hooks()
    # all-position cells: query rows 3.. (3 of 6 positions); a key column j >= 3: rows j.. (causal)
    assert passes and {s[1] for s in passes} == ({3, 2, 1} if by_pos else {3})
    want = patching.patch(m, clean, corrupted, component, metric, by_pos=by_pos, skip="none")
    np.testing.assert_allclose(got.values, want.values, rtol=1e-10, atol=1e-10)
    assert np.ptp(got.values) > 1e-4
    if component == "pattern" and not by_pos:
        _, cache = m.run_with_cache(clean)
        ref = tlp.get_act_patch_attn_head_pattern_all_pos(m, corrupted, cache, metric).numpy()
        np.testing.assert_allclose(got.values, ref, rtol=1e-6, atol=1e-6)
    assert tl_adapter.count_attached_hooks(m) == 0


def test_a_hooked_transformer_skips_cells_that_change_nothing():
    ht = tl_adapter.hooked_transformer_from_config(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu",
        normalization_type="LN", seed=0, dtype=torch.float64)
    clean, corrupted = _one_token_pair(2)
    metric = patching.loss_metric(clean)
    rows = []
    ht.blocks[1].hook_resid_pre.add_hook(lambda act, hook: rows.append(act.shape[0]))
    ours = patching.patch(ht, clean, corrupted, "resid_pre", metric, batch_rows=3 * 5)  # 5 cells per pass
    # layer 0: position 2 only (a token's embedding is its own); layer 1: positions 2..5: one pass
    assert [r for r in rows if r > 3] == [15]
    rows.clear()
    slow = patching.patch(ht, clean, corrupted, "resid_pre", metric, batch_rows=3 * 5, skip="none")
    assert [r for r in rows if r > 3] == [15, 15, 6]  # 12 cells
    ht.reset_hooks()
    np.testing.assert_allclose(ours.values, slow.values, rtol=1e-10, atol=1e-10)
    _, cache = ht.run_with_cache(clean)
    ref = tlp.get_act_patch_resid_pre(ht, corrupted, cache, metric).numpy()
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6, atol=1e-6)


HT_VARIANTS = {"standard": {}, "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8},
               "alibi": {"positional_embedding_type": "alibi"},
               "rotary_gqa": {"positional_embedding_type": "rotary", "rotary_dim": 8, "n_key_value_heads": 2},
               # GPT-Neo's local attention: TransformerLens masks keys more than window_size back
               "local": {"use_local_attn": True, "attn_types": ["local", "global", "local"], "window_size": 3}}


@pytest.mark.parametrize("kind", ["sink", "hooked"])
@pytest.mark.parametrize("component, by_pos, skip", [("k", True, "auto"), ("v", False, "auto"), ("resid_pre", True, "layer")])
def test_the_corrupted_run_is_recorded_once(pair, kind, component, by_pos, skip):
    """patch runs the unpatched batch three times (the clean run, the corrupted run, every cell
    together): the corrupted run's record also gives the residual streams, keys and values the
    patched passes start from, instead of one more pass for them; the grid equals full passes."""
    m = SinkTransformer(tiny_config(n_layers=3)).double().eval() if kind == "sink" else _hooked("rotary")
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    calls = _embed_calls(m)
    got = patching.patch(m, clean, corrupted, component, metric, by_pos=by_pos, batch_rows=3 * 8, skip=skip)
    unbatched = sum(1 for c in calls if c == clean.shape[0])
    m.reset_hooks()
    assert unbatched == 3
    want = patching.patch(m, clean, corrupted, component, metric, by_pos=by_pos, skip="none")
    np.testing.assert_allclose(got.values, want.values, rtol=1e-10, atol=1e-10)
    assert np.ptp(got.values) > 1e-3


def _hooked(variant, n_layers=3):
    return tl_adapter.hooked_transformer_from_config(
        n_layers=n_layers, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu",
        normalization_type="LN", seed=0, dtype=torch.float64, **HT_VARIANTS[variant])


@pytest.mark.parametrize("variant", list(HT_VARIANTS))
def test_hooked_transformer_start_at_pos_forward(variant):
    """tl_adapter.start_at_pos_fn: a HookedTransformer continued from block l and position p on the
    full run's keys and values gives the full run's logits of positions p.."""
    ht = _hooked(variant)
    tokens = _tokens(2, T=10)
    logits, cache = ht.run_with_cache(tokens)
    if variant == "local":  # the window is in force: layer 0 sees 3 keys, layer 1 all of them
        assert (cache["blocks.0.attn.hook_pattern"] > 0).sum(-1).amax().item() == 3
        assert (cache["blocks.1.attn.hook_pattern"] > 0).sum(-1).amax().item() == 10
    run = tl_adapter.start_at_pos_fn(ht)
    for layer, pos in ((0, 1), (1, 4), (2, 9)):
        past = [(cache[f"blocks.{l}.attn.hook_k"][:, :pos], cache[f"blocks.{l}.attn.hook_v"][:, :pos])
                for l in range(layer, 3)]
        out = run(layer, cache[f"blocks.{layer}.hook_resid_pre"][:, pos:], pos, past)
        torch.testing.assert_close(out, logits[:, pos:], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"past: expected 2 \(k, v\) pairs"):
        run(1, cache["blocks.1.hook_resid_pre"][:, 4:], 4, past)
    shortformer = tl_adapter.hooked_transformer_from_config(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=50, n_ctx=16, act_fn="gelu",
        positional_embedding_type="shortformer")
    bidirectional = tl_adapter.hooked_transformer_from_config(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=50, n_ctx=16, act_fn="gelu",
        attention_dir="bidirectional")
    assert tl_adapter.start_at_pos_fn(bidirectional) is None and tl_adapter.start_at_pos_fn(shortformer) is None
    assert tl_adapter.start_at_pos_fn(_tokens) is None


@pytest.mark.parametrize("variant", list(HT_VARIANTS))
def test_hooked_transformer_unembed_positions_cuts_the_last_block(variant):
    """tl_adapter.unembed_positions on a HookedTransformer: the logits of the kept positions equal
    the full run's, in a full pass, a pass started at a layer and a pass continued from a position;
    the last block computes only the positions from the first kept one on, and all of them when a
    hook watches that block or the final norm."""
    ht = _hooked(variant)
    tokens = _tokens(2, T=10)
    logits, cache = ht.run_with_cache(tokens)
    seen = []  # positions the last block's MLP computes (a plain module hook, not a HookPoint)
    ht.blocks[-1].mlp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    keep = [9, 6, 7]
    with torch.no_grad(), tl_adapter.unembed_positions(ht, keep):
        full = ht(tokens)
        from_layer = tl_adapter.start_at_layer_fn(ht)(tokens, 1, cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(full, logits[:, keep], atol=1e-10, rtol=0)
    torch.testing.assert_close(from_layer, logits[:, keep], atol=1e-10, rtol=0)
    assert seen == [4, 4]
    seen.clear()
    pos = 4
    past = [(cache[f"blocks.{l}.attn.hook_k"][:, :pos], cache[f"blocks.{l}.attn.hook_v"][:, :pos]) for l in (1, 2)]
    with torch.no_grad(), tl_adapter.unembed_positions(ht, [2, 5]):  # positions 6 and 9 of the continued pass
        continued = tl_adapter.start_at_pos_fn(ht)(1, cache["blocks.1.hook_resid_pre"][:, pos:], pos, past)
    torch.testing.assert_close(continued, logits[:, [6, 9]], atol=1e-10, rtol=0)
    assert seen == [4]
    seen.clear()
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding: TransformerLens hands the mask to every block
    with torch.no_grad():
        padded = ht(tokens, attention_mask=mask)
        with tl_adapter.unembed_positions(ht, keep):
            torch.testing.assert_close(ht(tokens, attention_mask=mask), padded[:, keep], atol=1e-10, rtol=0)
    assert seen == [10, 4]
    seen.clear()
    for hooked in ("blocks.2.attn.hook_pattern", "ln_final.hook_normalized"):
        with torch.no_grad(), tl_adapter.unembed_positions(ht, keep):
            watched = ht.run_with_hooks(tokens, fwd_hooks=[(hooked, lambda act, hook: act)])
        torch.testing.assert_close(watched, logits[:, keep], atol=1e-10, rtol=0)
    assert seen == [10, 10]
    ht.reset_hooks()


@pytest.mark.parametrize("changed", [{"use_qk_norm": True}, {"clip_qkv": 0.05},
                                     {"original_architecture": "Olmo2ForCausalLM"}])
def test_hooked_transformers_that_change_keys_after_hook_k_run_passes_from_position_zero(changed):
    """A QK norm (Gemma 3, Qwen 3, OLMoE, OLMo 2 / 3) or ``clip_qkv`` (OLMo) changes the keys after hook_k, before
    TransformerLens caches them, so a pass continued on recorded hook_k values would be wrong: such
    models get no position start, and patching their keys still equals the per-cell functions."""
    ht = tl_adapter.hooked_transformer_from_config(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, seed=0,
        dtype=torch.float64, **changed)
    with torch.no_grad():
        for p in ht.parameters():  # weights large enough that the norm / clamp changes the keys
            p.normal_(0, 0.5)
    assert tl_adapter.start_at_pos_fn(ht) is None
    clean, corrupted = _tokens(0), _tokens(1)
    metric = patching.loss_metric(clean)
    ours = patching.patch(ht, clean, corrupted, "k", metric, batch_rows=3 * 4)
    np.testing.assert_allclose(ours.values, _tl_by_pos(ht, clean, corrupted, metric, "k"), rtol=1e-6, atol=1e-6)
    assert np.ptp(ours.values) > 1e-4


@pytest.mark.parametrize("variant, component", [
    ("standard", "resid_pre"), ("standard", "k"), ("standard", "mlp_out"), ("rotary", "rot_q"), ("rotary", "v"),
    ("alibi", "z"), ("alibi", "k"), ("rotary_gqa", "k"), ("rotary_gqa", "v"), ("local", "k"), ("local", "v")])
def test_hooked_transformer_passes_start_at_the_patched_position(variant, component):
    """A HookedTransformer's passes start at their first patched layer and position (a frozen
    TransformerLens key-value cache holds the earlier positions): the grid equals TransformerLens'
    per-cell patching and full passes, and the passes compute fewer positions."""
    ht = _hooked(variant, n_layers=2)
    clean, corrupted = _tokens(0), _tokens(1)
    metric = patching.loss_metric(clean)
    seen = []  # positions each pass computes at the last block
    ht.blocks[1].hook_resid_pre.add_hook(lambda act, hook: seen.append(act.shape[1]))
    ours = patching.patch(ht, clean, corrupted, component, metric, batch_rows=3 * 4)
    fast_positions = sum(seen)
    seen.clear()
    full = patching.patch(ht, clean, corrupted, component, metric, batch_rows=3 * 4, skip="layer")
    ht.reset_hooks()
    assert fast_positions < sum(seen)
    np.testing.assert_allclose(ours.values, _tl_by_pos(ht, clean, corrupted, metric, component), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.values, full.values, rtol=1e-10, atol=1e-10)
    assert np.ptp(ours.values) > 1e-4


def test_hooked_transformer_rotated_keys_run_from_position_zero():
    """TransformerLens rotates cached keys again with the new ones (hook_rot_k sees every position),
    so rot_k passes are not continued from a position; the grid still equals per-cell patching."""
    ht = _hooked("rotary", n_layers=2)
    clean, corrupted = _tokens(0), _tokens(1)
    metric = patching.loss_metric(clean)
    seen = []
    ht.blocks[1].hook_resid_pre.add_hook(lambda act, hook: seen.append(act.shape[1]))
    ours = patching.patch(ht, clean, corrupted, "rot_k", metric, batch_rows=3 * 4)
    ht.reset_hooks()
    assert set(seen) == {6}
    _, cache = ht.run_with_cache(clean)
    ref = tlp.generic_activation_patch(ht, corrupted, cache, metric, tlp.layer_pos_head_vector_patch_setter,
                                       "rot_k", index_axis_names=["layer", "pos", "head"])
    np.testing.assert_allclose(ours.values, ref.numpy(), rtol=1e-6, atol=1e-6)


def test_sink_token_models_run_every_pass_in_full(pair):
    m = SinkTransformer(tiny_config(n_layers=3, **VARIANTS["sink_token"])).double().eval()
    assert not m.can_start_at_layer
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    calls = _embed_calls(m)
    res = patching.patch(m, clean, corrupted, "v", metric, by_pos=False, batch_rows=3 * 4)
    m.reset_hooks()
    assert sum(1 for c in calls if c > clean.shape[0]) == 3  # one full pass per layer
    _, cache = m.run_with_cache(clean)
    ref = tlp.get_act_patch_attn_head_v_all_pos(m, corrupted, cache, metric).numpy()
    np.testing.assert_allclose(res.values, ref, rtol=1e-6, atol=1e-6)


def test_start_at_layer_forward(model):
    tokens = _tokens(2)
    full, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        out = model(tokens, start_at_layer=layer, resid=cache[f"blocks.{layer}.hook_resid_pre"])
        torch.testing.assert_close(out, full, rtol=1e-10, atol=1e-10)
    resid = cache["blocks.1.hook_resid_pre"]
    with pytest.raises(ValueError, match="start_at_layer and resid"):
        model(tokens, start_at_layer=1)
    with pytest.raises(ValueError, match="start_at_layer: expected an integer in 0..1"):
        model(tokens, start_at_layer=2, resid=resid)
    # (under the test suite's run-time type checker, jaxtyping names resid first)
    with pytest.raises((ValueError, TypeError), match="resid"):
        model(tokens, start_at_layer=1, resid=resid[:, :-1])
    sink = SinkTransformer(tiny_config(**VARIANTS["sink_token"])).double()
    with pytest.raises(ValueError, match="sink-token models"):
        sink(tokens, start_at_layer=1, resid=resid)


def test_patching_everything_at_layer_zero_restores_the_clean_run(model, pair):
    clean, corrupted = pair
    res = patching.patch(model, clean, corrupted, "resid_pre", patching.loss_metric(clean), by_pos=False)
    assert res.axes == ("layer",)
    np.testing.assert_allclose(res.normalized(), [1.0, 1.0], atol=1e-9)
    assert res.clean != res.corrupted


def test_together_patches_every_cell_at_once(model, pair):
    """``together``: token 1's key from the clean run at every layer at once, checked against hand-made
    hooks; with one layer it is that layer's cell."""
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    res = patching.patch_first_token(model, clean, corrupted, "k", metric)
    clean_k = patching.capture(model, clean, [f"blocks.{l}.attn.hook_k" for l in range(model.cfg.n_layers)])

    def put_back(act, hook):
        act = act.clone()
        act[:, 0] = clean_k[hook.name][:, 0]
        return act

    with torch.no_grad(), tl_adapter.attached_hooks(
            model, [(f"blocks.{l}.attn.hook_k", put_back) for l in range(model.cfg.n_layers)]):
        ref = float(metric(model(corrupted)))
    assert res.together == pytest.approx(ref, abs=1e-10)
    assert all(abs(res.together - v) > 1e-6 for v in res.values.flat)  # no single head-layer cell equals it
    one = patching.patch_first_token(model, clean, corrupted, "k", metric, layers=[1], by_head=False)
    assert one.together == pytest.approx(float(one.values[0]), abs=1e-10)
    assert res.to_dict()["together"] == res.together


def test_clean_hooks_patch_several_components_at_once(model, pair):
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    with torch.no_grad():
        with tl_adapter.attached_hooks(model, patching.clean_hooks(model, clean, ["k"])):
            k_only = float(metric(model(corrupted)))
        with tl_adapter.attached_hooks(model, patching.clean_hooks(model, clean, ["k", "v"])):
            k_and_v = float(metric(model(corrupted)))
        with tl_adapter.attached_hooks(model, patching.clean_hooks(model, clean, ["resid_pre"], positions=None,
                                                                   layers=[0])):
            logits = model(corrupted)
    assert k_only == pytest.approx(patching.patch_first_token(model, clean, corrupted, "k", metric).together, abs=1e-10)
    assert abs(k_and_v - k_only) > 1e-6
    torch.testing.assert_close(logits, model(clean), rtol=0, atol=1e-12)  # the whole clean input put back
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    clean_p = patching.capture(model, clean, names)
    with tl_adapter.attached_hooks(model, patching.clean_hooks(model, clean, ["pattern"])):  # [batch, head, q, k]
        got = patching.capture(model, corrupted, names)
    for n in names:  # position 0 of a pattern is key 1's column
        torch.testing.assert_close(got[n][..., 0], clean_p[n][..., 0], rtol=0, atol=0)
        assert (got[n][..., 1:] - clean_p[n][..., 1:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="whole, in one pass"):
        with tl_adapter.attached_hooks(model, patching.clean_hooks(model, clean, ["v"])):
            model(corrupted[:2])
    with pytest.raises(ValueError, match="positions: 6 is outside"):
        patching.clean_hooks(model, clean, ["v"], positions=[6])
    with pytest.raises(ValueError, match="layers: 2 is outside"):
        patching.clean_hooks(model, clean, ["v"], layers=[2])
    with pytest.raises(ValueError, match="component: got 'x'"):
        patching.clean_hooks(model, clean, ["x"])
    assert tl_adapter.count_attached_hooks(model) == 0


def test_grouped_query_heads_index_key_value_heads(pair):
    gqa = SinkTransformer(tiny_config(n_kv_heads=2)).double().eval()
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    res = patching.patch_first_token(gqa, clean, corrupted, "k", metric)
    assert res.values.shape == (2, 2)
    clean_k = patching.capture(gqa, clean, ["blocks.1.attn.hook_k"])["blocks.1.attn.hook_k"]

    def by_hand(act, hook):
        act = act.clone()
        act[:, 0, 1] = clean_k[:, 0, 1]
        return act

    with torch.no_grad():
        logits = gqa.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_k", by_hand)])
    assert res.values[1, 1] == pytest.approx(float(metric(logits)), abs=1e-12)


def test_logit_diff_metric(model, pair):
    clean, corrupted = pair
    metric = patching.logit_diff_metric([1, 2, 3], [4, 5, 6])
    res = patching.patch(model, clean, corrupted, "resid_pre", metric, positions=[5], by_head=False)
    with torch.no_grad():
        logits = model(clean)
    expect = (logits[:, -1, [1, 2, 3]].diagonal() - logits[:, -1, [4, 5, 6]].diagonal()).mean()
    assert res.clean == pytest.approx(float(expect))
    with pytest.raises(ValueError, match="same length"):
        patching.logit_diff_metric([1], [2, 3])


def _unembedded_positions(model):
    """(rows, positions) of the logits each pass's unembedding computes (a forward hook on it)."""
    seen = []
    handle = model.unembed.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape[:2])))
    return seen, handle


@pytest.mark.parametrize("kind, component, by_pos, p", [
    ("sink", "v", False, 0), ("sink", "resid_pre", True, 2), ("sink", "resid_post", True, 0),
    ("hooked", "v", False, 0), ("hooked", "k", True, 3), ("hooked", "pattern", False, 0)])
def test_metric_positions_unembed_only_what_the_metric_reads(kind, component, by_pos, p):
    """metric_positions=[-1] with a last-position logit difference gives the grid of the full
    logits (and TransformerLens' per-cell functions), while every patched pass unembeds one
    position only (resid_post of the last layer: the cells' edits come first, then the cut)."""
    m = (SinkTransformer(tiny_config(n_layers=3)).double().eval() if kind == "sink" else _hooked("rotary"))
    clean, corrupted = _one_token_pair(p)
    metric = patching.logit_diff_metric([1, 2, 3], [4, 5, 6], pos=-1)
    full = patching.patch(m, clean, corrupted, component, metric, by_pos=by_pos, batch_rows=12)
    seen, handle = _unembedded_positions(m)
    try:
        cut = patching.patch(m, clean, corrupted, component, metric, by_pos=by_pos, batch_rows=12,
                             metric_positions=[-1])
    finally:
        handle.remove()
    np.testing.assert_allclose(cut.values, full.values, rtol=1e-10, atol=1e-10)
    assert (cut.clean, cut.corrupted, cut.together) == pytest.approx((full.clean, full.corrupted, full.together))
    assert np.ptp(cut.values) > 1e-4
    patched = [s for s in seen if s[0] > clean.shape[0]]  # stacked copies: the patched passes
    assert patched and {s[1] for s in patched} == {1}
    if component in ("v", "k", "resid_pre"):
        _, cache = m.run_with_cache(clean)
        tl_fn = {"v": "get_act_patch_attn_head_v_all_pos", "k": "get_act_patch_attn_head_k_by_pos",
                 "resid_pre": "get_act_patch_resid_pre"}[component]
        ref = getattr(tlp, tl_fn)(m, corrupted, cache, metric).numpy()
        np.testing.assert_allclose(cut.values, ref, rtol=1e-6, atol=1e-6)
    assert tl_adapter.count_attached_hooks(m) == 0


def test_metric_positions_in_any_order_and_before_the_edits():
    """The metric gets logits[:, metric_positions] in the order given; positions before a pass's
    first edited position come from the unpatched run; a pass whose edits all come after every
    metric position is not run (its value is the corrupted run's)."""
    m = SinkTransformer(tiny_config(n_layers=3)).double().eval()
    clean, corrupted = _one_token_pair(3)

    def metric(logits):  # reads two positions, order-sensitive
        return (logits[:, 0, 1] - 2 * logits[:, 1, 4]).mean()

    def metric_full(logits):
        return metric(logits[:, [5, 1]])

    full = patching.patch(m, clean, corrupted, "resid_pre", metric_full)
    cut = patching.patch(m, clean, corrupted, "resid_pre", metric, metric_positions=[-1, 1])
    np.testing.assert_allclose(cut.values, full.values, rtol=1e-10, atol=1e-10)
    assert np.ptp(cut.values) > 1e-4
    seen, handle = _unembedded_positions(m)
    try:  # clean and corrupted differ at position 3 only; the metric reads position 2: nothing to run
        early = patching.patch(m, clean, corrupted, "resid_pre", lambda lg: lg[:, 0, 1].mean(), metric_positions=[2])
    finally:
        handle.remove()
    assert (early.values == early.corrupted).all()
    assert [s for s in seen if s[0] > clean.shape[0]] == []
    with pytest.raises(ValueError, match=r"metric_positions: 6 is not a position of a sequence of 6"):
        patching.patch(m, clean, corrupted, "v", metric, metric_positions=[6])
    with pytest.raises(ValueError, match="metric_positions: empty"):
        patching.run_cells(m, clean, [("v", lambda a, l: a)], [patching.Cell(0)], metric, metric_positions=[])
    # a wrong type may be caught first by the suite's run-time type checker, which names the parameter too
    with pytest.raises((ValueError, TypeError), match="metric_positions"):
        patching.patch(m, clean, corrupted, "v", metric, metric_positions=-1)
    with pytest.raises(TypeError, match="metric_positions: expected a sequence of integers or None, got -1"):
        patching._metric_positions(-1, 6)


def test_hooks_are_removed_when_the_metric_fails(model, pair):
    clean, corrupted = pair
    calls = []

    def bad_metric(logits):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return logits.mean()

    with pytest.raises(RuntimeError, match="boom"):
        patching.patch(model, clean, corrupted, "v", bad_metric)
    assert tl_adapter.count_attached_hooks(model) == 0


def test_bad_input(model, pair):
    clean, corrupted = pair
    metric = patching.loss_metric(clean)
    with pytest.raises(ValueError, match="component: got 'x'"):
        patching.patch(model, clean, corrupted, "x", metric)
    with pytest.raises(ValueError, match="same shape"):
        patching.patch(model, clean, corrupted[:, :5], "v", metric)
    with pytest.raises(ValueError, match="positions: 6 is outside"):
        patching.patch(model, clean, corrupted, "v", metric, positions=[6])
    with pytest.raises(ValueError, match="no hook blocks.0.attn.hook_rot_k"):
        patching.patch(SinkTransformer(tiny_config(pos_emb="none")), clean, corrupted, "rot_k", metric)
    with pytest.raises(ValueError, match="corrupted_tokens: token ids must lie"):
        patching.patch(model, clean, corrupted + 100, "v", metric)
    with pytest.raises(ValueError, match=r"skip: got 'fast', allowed values are \['auto', 'layer', 'none'\]"):
        patching.patch(model, clean, corrupted, "v", metric, skip="fast")
    with pytest.raises(ValueError, match="target_start"):
        patching.loss_metric(clean, target_start=0)
    with pytest.raises(ValueError, match="cells: head 4 is outside"):
        patching.run_cells(model, clean, [("v", lambda a, l: a)], [patching.Cell(0, 4)], metric)
    with pytest.raises(ValueError, match="batch_rows"):
        patching.run_cells(model, clean, [("v", lambda a, l: a)], [patching.Cell(0)], metric, batch_rows=0)


@pytest.mark.parametrize("kind", ["sinkinterp", "ht", "bridge"])
def test_capture_unembeds_the_last_position_only(kind):
    """capture returns no logits: the unembedding sees one position (the activations are those of a full pass),
    unless the unembedding's own hook is asked for."""
    from conftest import hooked_model

    model = hooked_model(kind)
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    handle = tl_adapter.unembed_module(model).register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    names = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.0.hook_mlp_out"]
    try:
        got = patching.capture(model, tokens, names)
        assert seen[-1] == 1
        if kind == "bridge":  # the unembedding's own hook asked for: every position
            out = patching.capture(model, tokens, ["unembed.hook_out"])
            assert seen[-1] == 9 and out["unembed.hook_out"].shape[1] == 9
    finally:
        handle.remove()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    for name in names:
        torch.testing.assert_close(got[name], cache[name])
