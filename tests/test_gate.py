"""sinkinterp.gate and ``sinkinterp gate``: the per-head gate statistics against a direct computation
from captured activations (numpy loops, explicit W_O products), against Hugging Face eager attention on
a bridge, the exact identity g = m when the sink has no value, the fixed-gate edit, and errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import tiny_llama, word_tokenizer

from sinkinterp import cli, patching, tl_adapter
from sinkinterp import gate as gate_module
from sinkinterp import interventions as iv
from sinkinterp.gate import (
    TARGETS,
    TOKEN_SHRINK,
    _stats,
    _target_map,
    distance_bins,
    donor_gate,
    drivers,
    fixed_gate,
    gate_stats,
    gate_study,
    pooled_drivers,
    pooled_logit_split,
    pooled_targets,
    pooled_turn_sources,
    repeated,
    summary,
    token_gate,
)
from sinkinterp.models.testing import tiny_model

T = 10


def _tokens(n: int = 5, seed: int = 0, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def _direct(model, tokens, sink: str):
    """Per-head mean a, m, g, value share, within-position std of g and corr(g, m) over queries
    1..T-1, and per-position mean m, computed query by query from captured hook_v / hook_pattern /
    hook_z (and hook_bias_pattern) with explicit W_O products; where attention does not normalize, the
    weights are the pattern's shares times hook_row_weight."""
    dims = tl_adapter.model_dims(model)
    L, H = dims["n_layers"], dims["n_heads"]
    names = set(tl_adapter.hook_names(model))
    slot = "blocks.0.attn.hook_bias_pattern" in names
    weighted = "blocks.0.attn.hook_row_weight" in names and not model.blocks[0].attn.op.normalized
    want = [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("v", "pattern", "z")]
    want += [f"blocks.{l}.attn.hook_bias_pattern" for l in range(L)] if slot else []
    want += [f"blocks.{l}.attn.hook_row_weight" for l in range(L)] if weighted else []
    acts = {k: v.double().numpy() for k, v in patching.capture(model, tokens, want).items()}
    if weighted:  # shares -> weights
        for l in range(L):
            row = acts[f"blocks.{l}.attn.hook_row_weight"]
            acts[f"blocks.{l}.attn.hook_pattern"] = acts[f"blocks.{l}.attn.hook_pattern"] * row[..., None]
            if slot:
                acts[f"blocks.{l}.attn.hook_bias_pattern"] = acts[f"blocks.{l}.attn.hook_bias_pattern"] * row
    n = tokens.shape[0]
    out = {k: np.zeros((L, H)) for k in ("a", "m", "g", "vshare", "within", "corr")}
    mass_pos = np.full((L, H, T), np.nan)
    for l in range(L):
        p, v, z = (acts[f"blocks.{l}.attn.hook_{k}"] for k in ("pattern", "v", "z"))
        w_o = model.blocks[l].attn.W_O.detach().double().numpy()
        for h in range(H):
            vh = v[:, :, h * v.shape[2] // H]
            a, m, g, res, wr = (np.zeros((n, T - 1)) for _ in range(5))
            for b in range(n):
                for t in range(1, T):
                    row = p[b, h, t].copy()
                    if sink == "first":
                        a[b, t - 1] = row[0]
                        row[0] = 0.0
                    else:
                        a[b, t - 1] = acts[f"blocks.{l}.attn.hook_bias_pattern"][b, h, t]
                    m[b, t - 1] = row.sum()
                    o = row @ vh[b] / row.sum()
                    write, read = z[b, t, h] @ w_o[h], o @ w_o[h]
                    g[b, t - 1] = np.linalg.norm(write) / np.linalg.norm(read)
                    res[b, t - 1] = np.linalg.norm(write - m[b, t - 1] * read)
                    wr[b, t - 1] = np.linalg.norm(write)
            out["a"][l, h], out["m"][l, h], out["g"][l, h] = a.mean(), m.mean(), g.mean()
            out["vshare"][l, h] = res.sum() / wr.sum()
            out["within"][l, h] = np.sqrt(((g - g.mean(0)) ** 2).mean())
            out["corr"][l, h] = np.corrcoef(g.ravel(), m.ravel())[0, 1]
            mass_pos[l, h, 1:] = m.mean(0)
    return out, mass_pos


@pytest.mark.parametrize(("variant", "sink"), [("rotary", "first"), ("gqa", "first"), ("gqa_kv", "slot"),
                                                ("sink_token", "slot"), ("kv", "first"), ("window", "first"),
                                                ("sigmoid", "first"), ("kv_sigmoid", "slot"), ("elu1", "first")])
def test_stats_equal_a_direct_computation(variant, sink):
    model = tiny_model(variant).eval()
    tokens = _tokens()
    res = gate_stats(model, tokens, sink=sink, batch_size=2)  # two batches and a remainder
    ref, mass_pos = _direct(model, tokens, sink)
    normalized = model.blocks[0].attn.op.normalized
    assert res["sink"] == sink and res["normalized"] == normalized
    assert res["weights_from_row_weight"] == (not normalized) and not res["pattern_is_share"]
    # the sink's share of each row's weight, from the shares hook_pattern (and hook_bias_pattern) hold
    L = model.cfg.n_layers
    name = "hook_pattern" if sink == "first" else "hook_bias_pattern"
    acts = patching.capture(model, tokens, [f"blocks.{l}.attn.{name}" for l in range(L)])
    share = np.stack([acts[f"blocks.{l}.attn.{name}"].double().numpy() for l in range(L)], 1)  # [N, L, H, T(, T)]
    share = share[..., 1:, 0] if sink == "first" else share[..., 1:]
    np.testing.assert_allclose(res["sink_share"], share.mean(axis=(0, 3)), rtol=1e-9, atol=1e-12)
    for key, name in (("a", "sink_mass"), ("m", "mass"), ("g", "gate"), ("vshare", "value_share"),
                      ("within", "gate_std_within"), ("corr", "corr_gate_mass")):
        np.testing.assert_allclose(res[name], ref[key], rtol=1e-9, atol=1e-11, err_msg=name)
    np.testing.assert_allclose(np.asarray(res["mass_pos"])[..., 1:], mass_pos[..., 1:], rtol=1e-9, atol=1e-12)
    assert np.isnan(np.asarray(res["mass_pos"])[..., 0]).all()
    assert np.asarray(res["queries_per_head"]).min() == tokens.shape[0] * (T - 1)


def _direct_logits(model, tokens, sink: str, rows: dict | None = None):
    """Per head, over queries 1..T-1, the within-position sink-side share of the log-odds on the sink,
    query by query from captured hook_attn_scores / hook_pattern (/ hook_bias_pattern): lam = log a - log m,
    c = log-sum-exp of the other keys' scores, s = token 1's score (first) or lam + c (slot). ``rows``, when
    given, gets each head's [N, T - 1] lam and s (NaN where left out)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    want = [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("attn_scores", "pattern")]
    want += [f"blocks.{l}.attn.hook_bias_pattern" for l in range(L)] if sink == "slot" else []
    acts = {k: v.double().numpy() for k, v in patching.capture(model, tokens, want).items()}
    share, s_std, top_share = np.zeros((L, H)), np.zeros((L, H)), np.zeros((L, H))
    for l, h in np.ndindex(L, H):
        p, sc = acts[f"blocks.{l}.attn.hook_pattern"][:, h], acts[f"blocks.{l}.attn.hook_attn_scores"][:, h]
        lam, s, top = (np.zeros((len(tokens), T - 1)) for _ in range(3))
        for b, t in np.ndindex(len(tokens), T):
            if t == 0:
                continue
            keys = [j for j in range(t + 1) if p[b, t, j] > 0 and (sink == "slot" or j > 0)]
            a = p[b, t, 0] if sink == "first" else acts[f"blocks.{l}.attn.hook_bias_pattern"][b, h, t]
            if a <= 0 or not keys:  # token 1 out of a window: no log-odds (NaN, left out)
                lam[b, t - 1] = s[b, t - 1] = top[b, t - 1] = np.nan
                continue
            top[b, t - 1] = max(sc[b, t, keys])
            c = np.log(np.sum(np.exp(sc[b, t, keys])))
            lam[b, t - 1] = np.log(a) - np.log(p[b, t, keys].sum())
            s[b, t - 1] = sc[b, t, 0] if sink == "first" else lam[b, t - 1] + c
        if rows is not None:
            rows[(l, h)] = (lam, s)
        with warnings.catch_warnings():  # positions where token 1 is out of every query's window: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            dl, ds, dx = lam - np.nanmean(lam, 0), s - np.nanmean(s, 0), top - np.nanmean(top, 0)
        share[l, h] = np.nansum(dl * ds) / np.nansum(dl * dl)
        top_share[l, h] = -np.nansum(dl * dx) / np.nansum(dl * dl)
        s_std[l, h] = np.sqrt(np.nanmean(ds * ds))
    return share, s_std, top_share


@pytest.mark.parametrize(("variant", "sink"), [("rotary", "first"), ("alibi", "first"), ("window", "first"),
                                                ("kv", "first"), ("gqa_kv", "slot"), ("sink_token", "slot")])
def test_softmax_split_of_the_log_odds_equals_a_direct_computation(variant, sink):
    """With sink 'first' the sink's logit is token 1's own score, so lam = s - c is checked, not assumed."""
    model = tiny_model(variant).eval()
    tokens = _tokens()
    res = gate_stats(model, tokens, sink=sink, batch_size=2)
    split = res["logit_split"]
    share, s_std, top_share = _direct_logits(model, tokens, sink)
    np.testing.assert_allclose(split["sink_side_within"], share, rtol=1e-7)
    np.testing.assert_allclose(split["top_key_side_within"], top_share, rtol=1e-7, atol=1e-12)
    assert np.median(np.abs(top_share)) > 0.05
    np.testing.assert_allclose(split["sink_std_within"], s_std, rtol=1e-7)
    assert split["scores_error"] < 1e-12 and 0.05 < np.median(share) < 0.95  # both sides move somewhere
    pooled = pooled_logit_split(res, heads=[(0, 1), (1, 0), (1, 3)])
    picked = [share[0, 1], share[1, 0], share[1, 3]]
    assert pooled["median"] == pytest.approx(np.median(picked), rel=1e-7)
    tops = [top_share[0, 1], top_share[1, 0], top_share[1, 3]]
    assert pooled["top_key_median"] == pytest.approx(np.median(tops), rel=1e-7)
    assert pooled["spread_median"] == pytest.approx(np.median([1 - x - y for x, y in zip(picked, tops)]), rel=1e-7)
    assert pooled["sink_led"] == sum(x > 0.5 for x in picked)
    var, cov = np.asarray(split["logit_var_within"]), np.asarray(split["logit_cov_sink_within"])
    np.testing.assert_allclose(np.asarray(split["sink_side_within"]), cov / var, rtol=1e-12)


def _rotated_qk(model, tokens):
    """Per layer, the queries [N, T, H, d] and keys [N, T, kv, d] the attention multiplies: hook_rot_q /
    hook_rot_k where the model has them, else hook_q / hook_k (no rotary: ALiBi), or on a Hugging Face
    LLaMA bridge hook_q / hook_k rotated with the wrapped model's own rotary embedding."""
    L = tl_adapter.model_dims(model)["n_layers"]
    names = set(tl_adapter.hook_names(model))
    hf = tl_adapter.wrapped_hf_model(model)
    kinds = ("rot_q", "rot_k") if "blocks.0.attn.hook_rot_q" in names and hf is None else ("q", "k")
    acts = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in kinds])
    out = []
    for l in range(L):
        q, k = (acts[f"blocks.{l}.attn.hook_{x}"].double() for x in kinds)
        if hf is not None:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            pos = torch.arange(tokens.shape[1])[None]
            cos, sin = hf.model.rotary_emb(q, pos)
            q, k = (x.transpose(1, 2) for x in apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2),
                                                                     cos.double(), sin.double()))
        out.append((q, k))
    return out


def _direct_turn(model, tokens):
    """Per head, the within-position shares of the log-odds' variance that the query's turn and token 1's
    key carry, query by query: u = s + scale q_t . (k1_mean - k1), k1_mean token 1's key averaged over the
    texts (the scores are linear in the key: any position bias of key 1 stays in both)."""
    rows: dict = {}
    _direct_logits(model, tokens, "first", rows)
    dims = tl_adapter.model_dims(model)
    L, H = dims["n_layers"], dims["n_heads"]
    turn, ident = np.zeros((L, H)), np.zeros((L, H))
    for l, (q, k) in enumerate(_rotated_qk(model, tokens)):
        k1 = k[:, 0].repeat_interleave(H // k.shape[2], dim=1)  # [N, H, d]
        shift = torch.einsum("nthd,nhd->nht", q, k1.mean(0, keepdim=True) - k1).numpy()
        shift *= tl_adapter.attn_scale(model, l)
        for h in range(H):
            lam, s = rows[(l, h)]
            u = s + shift[:, h, 1:]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                dl, ds, du = lam - np.nanmean(lam, 0), s - np.nanmean(s, 0), u - np.nanmean(u, 0)
            turn[l, h] = np.nansum(dl * du) / np.nansum(dl * dl)
            ident[l, h] = np.nansum(dl * (ds - du)) / np.nansum(dl * dl)
    return turn, ident


def _turn_model(variant: str, n_layers: int = 2, output_bias: bool = False):
    """A model for the turn tests: a HookedTransformer with grouped keys and queries scaled up (so heads sink),
    a Hugging Face LLaMA bridge, or a sinkinterp test model of ``variant``."""
    if variant == "ht":
        model = tl_adapter.hooked_transformer_from_config(
            n_layers=n_layers, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
            positional_embedding_type="rotary", normalization_type="RMS", seed=0, dtype=torch.float64,
            n_key_value_heads=2)
        with torch.no_grad():
            for block in model.blocks:
                block.attn.W_Q.mul_(8.0)
                if output_bias:
                    block.attn.b_O.normal_(0.0, 0.5)
        return model
    if variant == "bridge":
        return tl_adapter.boot_bridge(tiny_llama(n_kv_heads=2), word_tokenizer(61), "llama")
    return tiny_model(variant).eval()


@pytest.mark.parametrize("variant", ["rotary", "alibi", "window", "kv", "gqa", "ht", "bridge"])
def test_the_sinks_side_splits_into_the_querys_turn_and_token_1s_key(variant):
    """The second pass scores every query against token 1's mean key: its share of the log-odds' variance
    equals q_t . k1_mean computed from the rotated queries and keys, on sinkinterp models (ALiBi, a window,
    k*/v* beside token 1, grouped keys), a HookedTransformer and a Hugging Face LLaMA bridge; the two parts
    add up to the sink's side; the rest of the second pass is the first one's (the study's other numbers
    are unchanged); a BOS first (the same key in every text) leaves token 1's key nothing."""
    model = _turn_model(variant)
    tokens = _tokens()
    res = gate_stats(model, tokens, sink="first", batch_size=2)
    split = res["logit_split"]
    assert "turn_note" not in split
    turn, ident = _direct_turn(model, tokens)
    tol = {"rtol": 1e-4, "atol": 1e-5} if variant == "bridge" else {"rtol": 1e-7, "atol": 1e-9}
    np.testing.assert_allclose(split["turn_side_within"], turn, **tol)
    np.testing.assert_allclose(split["identity_side_within"], ident, **tol)
    np.testing.assert_allclose(np.add(split["turn_side_within"], split["identity_side_within"]),
                               split["sink_side_within"], rtol=1e-9, atol=1e-12)
    assert np.median(np.abs(ident)) > 0.05 and np.median(np.abs(turn)) > 0.01  # both parts move here
    heads = [(0, 1), (1, 0), (1, 3)]
    pooled = pooled_logit_split(res, heads=heads)
    assert pooled["turn_median"] == pytest.approx(np.median([split["turn_side_within"][l][h] for l, h in heads]))
    assert pooled["identity_median"] == pytest.approx(np.median([split["identity_side_within"][l][h] for l, h in heads]))
    var = sum(split["logit_var_within"][l][h] for l, h in heads)
    assert pooled["turn_pooled"] == pytest.approx(sum(turn[l, h] * split["logit_var_within"][l][h]
                                                      for l, h in heads) / var, rel=tol["rtol"])
    assert "against token 1's mean key (the query's turn)" in summary(res)
    # the second pass left the first's numbers alone: the same as without it
    plain, _ = _stats(model, tokens, sink="first", closed=0.1, batch_size=2, logits=False)
    np.testing.assert_allclose(res["sink_mass"], plain["sink_mass"], rtol=1e-12)
    bos = tokens.clone()
    bos[:, 0] = 1
    fixed = gate_stats(model, bos, sink="first", batch_size=2)["logit_split"]
    exact = 1e-6 if variant == "bridge" else 1e-9  # the bridge in float32: its scores' rounding
    assert np.abs(fixed["identity_side_within"]).max() < exact
    np.testing.assert_allclose(fixed["turn_side_within"], fixed["sink_side_within"], rtol=exact, atol=exact)


def _direct_sources(model, tokens, heads: bool = False):
    """Per head and source, the within-position share of the log-odds' variance that the source's part of
    the query's turn carries, each part from forward passes alone (no autograd): block l's residual input
    replaced by one source (the embedding, an earlier block's attention or MLP output) with ln1's scale held
    at its own value and token 1's key at its mean over the texts, column 1 of block l's scores read,
    minus the same with a zero input (what no source carries). Returns the shares [L, H, C] (NaN after
    block l) and the rest's [L, H]; with ``heads`` also each earlier head's write z_h W_O[h] as a source,
    [L, H, L, H] (NaN unless l' < l)."""
    rows: dict = {}
    _direct_logits(model, tokens, "first", rows)
    dims = tl_adapter.model_dims(model)
    L, H = dims["n_layers"], dims["n_heads"]
    want = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.{x}" for l in range(L)
                                          for x in ("hook_attn_out", "hook_mlp_out", "ln1.hook_scale", "attn.hook_k",
                                                    "attn.hook_z")]
    acts = patching.capture(model, tokens, want)
    sources = [acts["blocks.0.hook_resid_pre"]] + [acts[f"blocks.{l}.hook_{k}_out"] for l in range(L)
                                                   for k in ("attn", "mlp")]

    def score(l, x):
        k_mean = acts[f"blocks.{l}.attn.hook_k"][:, 0].mean(0)
        got = {}

        def first_key(k, hook):
            k = k.clone()
            k[:, 0] = k_mean
            return k

        def read(sc, hook):
            got["u"] = sc[..., 0].double().numpy()

        hooks = [(f"blocks.{l}.hook_resid_pre", lambda r, hook: x.to(r.dtype)),
                 (f"blocks.{l}.ln1.hook_scale", lambda sc, hook: acts[f"blocks.{l}.ln1.hook_scale"]),
                 (f"blocks.{l}.attn.hook_k", first_key), (f"blocks.{l}.attn.hook_attn_scores", read)]
        with torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
            model(tokens)
        return got["u"][:, :, 1:]  # [N, H, T - 1]

    C = 2 * L + 1
    shares, rest = np.full((L, H, C), np.nan), np.zeros((L, H))

    def share(lam, u):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dl, du = lam - np.nanmean(lam, 0), u - np.nanmean(np.where(np.isnan(lam), np.nan, u), 0)
        return np.nansum(dl * du) / np.nansum(dl * dl)

    by_head = np.full((L, H, L, H), np.nan)
    for l in range(L):
        zero = score(l, torch.zeros_like(sources[0]))
        parts = [score(l, sources[c]) - zero for c in range(2 * l + 1)]
        for h in range(H):
            lam = rows[(l, h)][0]
            rest[l, h] = share(lam, zero[:, h])
            for c in range(2 * l + 1):
                shares[l, h, c] = share(lam, parts[c][:, h])
        for lp, hp in np.ndindex(l if heads else 0, H):
            w_o = tl_adapter.attn_out_weight(model, lp).detach()
            write = acts[f"blocks.{lp}.attn.hook_z"][:, :, hp].to(w_o.dtype) @ w_o[hp]
            part = score(l, write) - zero
            for h in range(H):
                by_head[l, h, lp, hp] = share(rows[(l, h)][0], part[:, h])
    return (shares, rest, by_head) if heads else (shares, rest)


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")  # the direct passes hold the bridge's scale
@pytest.mark.parametrize("variant", ["rotary", "alibi", "learned", "layernorm", "gqa", "kv", "ht", "bridge"])
def test_the_querys_turn_splits_by_what_writes_the_querys_input(variant):
    """turn_sources: each source's share of the turn (the embedding, each earlier block's attention and MLP)
    equals the part the source makes of u_t, read from forward passes with the source alone in the block's
    input (ln1's scale held, token 1's key at its mean) -- on sinkinterp models (rotary, ALiBi, learned
    positions, LayerNorm, grouped keys, k*/v* beside token 1), a HookedTransformer and a LLaMA bridge; the
    shares and the rest add up to turn_side; within positions the rest is 0; the study's other numbers
    are the same as without it."""
    model = _turn_model(variant)
    tokens = _tokens()
    res = gate_stats(model, tokens, sink="first", batch_size=2, turn_sources=True)
    split = res["logit_split"]
    ts = split["turn_sources"]
    assert "turn_sources_note" not in split
    L = len(split["turn_side"])
    assert ts["names"] == ["embed"] + [f"{k} {l}" for l in range(L) for k in ("attn", "mlp")]
    shares, rest = _direct_sources(model, tokens)
    tol = {"rtol": 2e-3, "atol": 2e-4} if variant == "bridge" else {"rtol": 1e-6, "atol": 1e-9}
    np.testing.assert_allclose(ts["share_within"], shares, **tol)
    # within positions what no source carries is nothing, here and in the direct passes
    np.testing.assert_allclose(ts["rest_share_within"], rest, atol=1e-4 if variant == "bridge" else 1e-9)
    assert np.abs(rest).max() < (1e-4 if variant == "bridge" else 1e-9)
    for suffix in ("", "_within"):  # the parts add up to the turn, over all queries and within positions
        total = np.nansum(np.asarray(ts["share" + suffix]), -1) + np.asarray(ts["rest_share" + suffix])
        np.testing.assert_allclose(total, split["turn_side" + suffix], rtol=1e-6, atol=1e-9)
    assert np.isnan(np.asarray(ts["share_within"])[0, :, 1:]).all()  # block 0 reads the embedding only
    assert np.nanmax(np.abs(np.asarray(ts["share_within"])[1:, :, 1:])) > 1e-3  # later sources move it here
    if variant == "alibi":  # a position-only term outside the sources: the rest carries it over all queries
        assert np.abs(ts["rest_share"]).max() > 1e-3
    heads = [(0, 1), (1, 0), (1, 3)]
    pooled = pooled_turn_sources(res, heads=heads)
    var = np.asarray(split["logit_var_within"])
    expect = sum(np.nan_to_num(np.asarray(ts["share_within"])[l, h]) * var[l, h] for l, h in heads) / sum(
        var[l, h] for l, h in heads)
    np.testing.assert_allclose(pooled["shares"], expect, rtol=1e-9)
    assert pooled["turn"] == pytest.approx(pooled_logit_split(res, heads=heads)["turn_pooled"], rel=1e-6, abs=1e-9)
    assert pooled["attn"] == pytest.approx(expect[1::2].sum()) and pooled["mlp"] == pytest.approx(expect[2::2].sum())
    assert abs(pooled["largest"][0][1]) == pytest.approx(np.abs(expect).max())
    assert "the turn by what writes the query's input" in summary(res)
    plain = gate_stats(model, tokens, sink="first", batch_size=2)
    assert "turn_sources" not in plain["logit_split"]
    for key in ("sink_mass", "gate"):
        np.testing.assert_allclose(res[key], plain[key], rtol=1e-12)
    # (the bridge rebuilds its norm's output from the held scale: float32 rounding, within the logits' check)
    np.testing.assert_allclose(split["turn_side_within"], plain["logit_split"]["turn_side_within"],
                               **({"rtol": 1e-4, "atol": 1e-6} if variant == "bridge" else {"rtol": 1e-9, "atol": 1e-12}))


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")
@pytest.mark.parametrize("variant", ["rotary", "gqa", "ht", "bridge"])
def test_the_turn_splits_by_each_earlier_heads_write(variant):
    """turn_sources="heads": each earlier head's write z_h W_O[h] as a source, against forward passes with that
    write alone in the block's input; where the attention has no output bias the heads' shares add up to their
    layer's."""
    # (the HookedTransformer with 3 layers and an output bias: the layer's share is more than its heads')
    model = _turn_model(variant, n_layers=3, output_bias=True)
    tokens = _tokens()
    res = gate_stats(model, tokens, sink="first", batch_size=2, turn_sources="heads")
    ts = res["logit_split"]["turn_sources"]
    _, _, by_head = _direct_sources(model, tokens, heads=True)
    tol = {"rtol": 2e-3, "atol": 2e-4} if variant == "bridge" else {"rtol": 1e-6, "atol": 1e-9}
    np.testing.assert_allclose(ts["head_share_within"], by_head, **tol)
    per = np.asarray(ts["head_share_within"])
    layer = np.asarray(ts["share_within"])[:, :, 1::2]  # attn 0, attn 1, ...
    L = per.shape[0]
    assert np.isnan(per[0]).all() and np.isfinite(per[L - 1, :, : L - 1]).all()
    summed = np.nansum(per, -1)
    later = np.arange(L)[None, None, :] < np.arange(L)[:, None, None]
    gap = np.abs(np.where(np.broadcast_to(later, summed.shape), summed - np.nan_to_num(layer[..., :L]), 0.0)).max()
    if variant == "ht":  # the output bias's part: what the heads leave of their layer's share
        assert gap > 1e-4
    else:
        assert gap < (1e-4 if variant == "bridge" else 1e-9)
    heads = [(1, 0), (1, 3), (L - 1, 2)]
    pooled = pooled_turn_sources(res, heads=heads)
    var = np.asarray(res["logit_split"]["logit_var_within"])
    expect = sum(np.nan_to_num(per[l, h]) * var[l, h] for l, h in heads) / sum(var[l, h] for l, h in heads)
    np.testing.assert_allclose(pooled["head_shares"], expect, rtol=1e-9)
    top = np.unravel_index(np.argmax(np.abs(expect)), expect.shape)
    assert pooled["largest_heads"][0] == [f"L{top[0]}H{top[1]}", pytest.approx(expect[top])]
    assert "the attention heads whose writes move it most: L" in summary(res)
    plain = gate_stats(model, tokens, sink="first", batch_size=2, turn_sources=True)["logit_split"]["turn_sources"]
    assert "head_share_within" not in plain
    np.testing.assert_allclose(plain["share_within"], ts["share_within"], rtol=1e-6, atol=1e-9)


def test_the_turn_by_source_is_left_out_where_it_cannot_be_measured(monkeypatch):
    """Post-norm (the block's input is not a sum of sources), a bias slot as the sink (no turn), a model that
    ignores what ln1.hook_scale returns (the query is then not affine in its input: the rest moves with the
    text), a table past the limit, and a flag that is not a bool: each says why."""
    tokens = _tokens()
    note = gate_stats(tiny_model("post_norm").eval(), tokens, sink="first", turn_sources=True)["logit_split"]
    assert note["turn_sources"] is None and "not the sum of the embedding" in note["turn_sources_note"]
    note = gate_stats(tiny_model("gqa_kv").eval(), tokens, sink="slot", turn_sources=True)["logit_split"]
    assert note["turn_sources"] is None and "the sink is not token 1" in note["turn_sources_note"]
    with pytest.raises((ValueError, TypeError), match="turn_sources"):  # (the test run type-checks: TypeError)
        gate_stats(tiny_model("rotary").eval(), tokens, turn_sources=1)
    with pytest.raises(ValueError, match="turn_sources must be True, False or 'heads', got 'yes'"):
        gate_stats(tiny_model("rotary").eval(), tokens, turn_sources="yes")
    monkeypatch.setattr(gate_module, "TURN_SOURCE_LIMIT", 10)
    note = gate_stats(tiny_model("rotary").eval(), tokens, sink="first", turn_sources=True)["logit_split"]
    assert "past TURN_SOURCE_LIMIT" in note["turn_sources_note"]
    monkeypatch.undo()
    attached = tl_adapter.attached_hooks

    def scale_ignored(model, hooks):  # ln1.hook_scale is seen, what it returns is dropped
        def observe(fn):
            def hook(act, hook=None):
                fn(act, hook)

            return hook

        return attached(model, [(n, observe(f) if n.endswith("ln1.hook_scale") else f) for n, f in hooks])

    monkeypatch.setattr(tl_adapter, "attached_hooks", scale_ignored)
    split = gate_stats(tiny_model("rotary").eval(), tokens, sink="first", turn_sources=True)["logit_split"]
    assert split["turn_sources"] is None and "changes with the text" in split["turn_sources_note"]
    assert np.isfinite(split["turn_side_within"]).all()  # the turn itself stands
    assert "the turn by source: not measured" in summary(
        gate_stats(tiny_model("rotary").eval(), tokens, sink="first", turn_sources=True))


def test_the_turn_split_is_left_out_where_it_cannot_be_measured(monkeypatch):
    """A bias slot as the sink has one key already (no second pass); a model that ignores what
    hook_attn_scores returns cannot be restored: the split of the sink's side is left out, with the reason."""
    split = gate_stats(tiny_model("gqa_kv").eval(), _tokens(), sink="slot")["logit_split"]
    assert "turn_side_within" not in split and split["turn_note"] == "the sink is not token 1"
    model = tiny_model("rotary").eval()
    attached = tl_adapter.attached_hooks

    def scores_ignored(model, hooks):  # hook_attn_scores sees a copy, and what it returns is dropped
        def observe(fn):
            def hook(act, hook=None):
                fn(act.clone(), hook)

            return hook

        return attached(model, [(n, observe(f) if n.endswith("hook_attn_scores") else f) for n, f in hooks])

    monkeypatch.setattr(tl_adapter, "attached_hooks", scores_ignored)
    split = gate_stats(model, _tokens(), sink="first")["logit_split"]
    assert "turn_side" not in split and "did not reproduce the first" in split["turn_note"]
    assert np.isfinite(split["sink_side_within"]).all()  # the rest of the split stands
    # the pass with ln1's scale held (turn_sources) checks against a looser tolerance (a bridge's norms round
    # otherwise there), still far below what an ignored edit moves the logits by
    split = gate_stats(model, _tokens(), sink="first", turn_sources=True)["logit_split"]
    assert f"over {gate_module.HELD_TOLERANCE:.0e}" in split["turn_note"] and split["turn_sources"] is None
    assert "not measured" in split["turn_sources_note"]


def test_softmax_split_in_bfloat16_allows_its_rounding():
    """A bfloat16 pattern is the softmax of its scores only to bfloat16's rounding (here 2e-3 in L1 per
    row, over the float32 tolerance): the split is still measured, and agrees with float32's."""
    tokens = _tokens()
    full = gate_stats(tiny_model("rotary").eval(), tokens)["logit_split"]
    half = gate_stats(tiny_model("rotary").eval().to(torch.bfloat16), tokens)["logit_split"]
    assert half["tolerance"] == 4 * torch.finfo(torch.bfloat16).eps and full["tolerance"] == 1e-3
    assert 1e-3 < half["scores_error"] < half["tolerance"]
    np.testing.assert_allclose(half["sink_side_within"], full["sink_side_within"], atol=0.05)


def test_a_learned_sink_logit_leaves_the_gate_to_the_other_keys():
    """A sink logit is one number per head: the sink's side of the log-odds never moves (up to the
    float32 pattern's rounding: the slot's weight is 1 - the row sum), and a model whose pattern is no
    softmax of its scores gets no split, with the reason."""
    res = gate_stats(tiny_model("sink_logit").eval(), _tokens())
    split = res["logit_split"]
    assert np.abs(split["sink_side"]).max() < 1e-6 and np.max(split["sink_std"]) < 1e-6
    assert min(min(r) for r in split["content_std_within"]) > 0.01
    pooled = pooled_logit_split(res, heads=[(0, 0), (1, 2)])
    assert pooled["heads"] == 2 and abs(pooled["median"]) < 1e-6 and pooled["sink_led"] == 0
    unasked, _ = _stats(tiny_model("rotary").eval(), _tokens(), sink="first", closed=0.1, batch_size=8, logits=False)
    assert unasked["logit_split"] is None and unasked["logit_split_note"] == "not asked for"  # the study's halves
    for variant, why in (("sigmoid_norm", "not the softmax of hook_attn_scores"), ("sigmoid", "does not normalize")):
        res = gate_stats(tiny_model(variant).eval(), _tokens())
        assert res["logit_split"] is None and why in res["logit_split_note"]
        assert pooled_logit_split(res) is None and why in summary(res)


def _category(toks, t: int, j: int, sink_first: bool) -> str | None:
    """Key j's category for query t, by the rules of ``TARGETS`` written out one by one."""
    if j > t or (j == 0 and sink_first):
        return None
    if j == 0:
        return "first"
    if j == t:
        return "self"
    if j == t - 1:
        return "previous"
    if toks[j - 1] == toks[t]:
        return "induction"
    if toks[j] == toks[t]:
        return "duplicate"
    return "other"


def _direct_targets(model, tokens, sink: str):
    """Per head, over queries 1..T-1 with weight besides the sink, query by query from captured hook_pattern:
    each category's share of the weight off the sink, how many queries' best key is of it, the gate's mean
    deviation from its position's mean on those queries, the weight by distance bin (0, 1, 2, then
    1 + bit length of d - 1), and per category the share of queries with such a key and its share of their keys."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    acts = {k: v.double().numpy() for k, v in patching.capture(
        model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(L)]).items()}
    toks = tokens.numpy()
    C, n = len(TARGETS), len(toks)
    D = len(distance_bins(T)[0])
    share, count, dev, dist = np.zeros((L, H, C)), np.zeros((L, H, C)), np.zeros((L, H, C)), np.zeros((L, H, D))
    avail, uniform = np.zeros(C), np.zeros(C)
    cats = {(b, t, j): _category(toks[b], t, j, sink == "first") for b in range(n) for t in range(T) for j in range(T)}
    for b, t in np.ndindex(n, T):
        if t == 0:
            continue
        kinds = [cats[b, t, j] for j in range(T) if cats[b, t, j] is not None]
        for c, name in enumerate(TARGETS):
            avail[c] += name in kinds
            uniform[c] += kinds.count(name) / len(kinds)
    for l, h in np.ndindex(L, H):
        p = acts[f"blocks.{l}.attn.hook_pattern"][:, h].copy()
        if sink == "first":
            p[:, :, 0] = 0.0
        m = p.sum(-1)  # [b, t]
        pos_mean = np.array([m[:, t][m[:, t] > 1e-12].mean() if t else 0.0 for t in range(T)])
        for b, t in np.ndindex(n, T):
            if t == 0 or m[b, t] <= 1e-12:
                continue
            for j in range(t + 1):
                if cats[b, t, j] is not None:
                    share[l, h, TARGETS.index(cats[b, t, j])] += p[b, t, j]
                    d = t - j
                    dist[l, h, 0 if d == 0 else 1 + (d - 1).bit_length()] += p[b, t, j]
            c = TARGETS.index(cats[b, t, int(np.argmax(p[b, t]))])
            count[l, h, c] += 1
            dev[l, h, c] += m[b, t] - pos_mean[t]
    with np.errstate(invalid="ignore"):
        return (share / share.sum(-1, keepdims=True), count, dev / count, dist / dist.sum(-1, keepdims=True),
                avail / (n * (T - 1)), uniform / (n * (T - 1)))


def test_target_categories_follow_their_order():
    toks = torch.tensor([[5, 7, 5, 5, 9, 5]])
    first, slot = _target_map(toks, True)[0], _target_map(toks, False)[0]
    names = {i: c for i, c in enumerate(TARGETS)} | {len(TARGETS): None}
    for t, j in np.ndindex(6, 6):
        assert names[int(first[t, j])] == _category(toks[0].tolist(), t, j, True)
        assert names[int(slot[t, j])] == _category(toks[0].tolist(), t, j, False)
    # query 6 (token 5): key 2 follows the 5 at key 1 (induction), key 3 is an earlier 5 (a duplicate), key 4 is
    # both (induction first)
    assert [names[int(x)] for x in first[5]] == [None, "induction", "duplicate", "induction", "previous", "self"]
    assert distance_bins(64) == (["0", "1", "2", "3-4", "5-8", "9-16", "17-32", "33-63"], [0, 1, 2, 3, 5, 9, 17, 33])
    assert distance_bins(3)[0] == ["0", "1", "2"] and distance_bins(10)[0][-1] == "9"


@pytest.mark.parametrize(("variant", "sink"), [("rotary", "first"), ("window", "first"), ("gqa_kv", "slot"),
                                                ("sink_token", "slot")])
def test_where_the_weight_off_the_sink_goes_equals_a_direct_computation(variant, sink):
    model = tiny_model(variant).eval()
    tokens = _tokens(vocab=5)  # few ids: repeats, duplicates and induction targets in every sequence
    res = gate_stats(model, tokens, sink=sink, batch_size=2)
    got = res["targets"]
    share, count, dev, dist, avail, uniform = _direct_targets(model, tokens, sink)
    np.testing.assert_allclose(got["share"], share, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got["top_count"], count)
    np.testing.assert_allclose(got["open_by_top"], dev, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got["distance_share"], dist, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["available"], avail, rtol=1e-12)
    np.testing.assert_allclose(got["uniform"], uniform, rtol=1e-12)
    assert got["queries"] == tokens.shape[0] * (T - 1)
    assert (np.asarray(got["share"])[..., TARGETS.index("first")] == 0).all() == (sink == "first")
    assert min(avail[TARGETS.index(c)] for c in ("induction", "duplicate")) > 0.3
    heads = [(0, 1), (1, 2)]
    pooled = pooled_targets(res, heads=heads)
    w = np.asarray([got["weight"][l][h] for l, h in heads])
    for c, name in enumerate(TARGETS):
        assert pooled["share"][name] == pytest.approx((share[0, 1, c] * w[0] + share[1, 2, c] * w[1]) / w.sum(), rel=1e-9)
        n = count[0, 1, c] + count[1, 2, c]
        assert pooled["top_rate"][name] == pytest.approx(n / (count[0, 1].sum() + count[1, 2].sum()), rel=1e-12)
        if n:
            both = np.nan_to_num(dev[0, 1, c]) * count[0, 1, c] + np.nan_to_num(dev[1, 2, c]) * count[1, 2, c]
            assert pooled["open_by_top"][name] == pytest.approx(both / n, rel=1e-7, abs=1e-12)


def test_targets_on_a_bridge_and_when_not_asked():
    hf = tiny_llama(n_kv_heads=2)
    bridge = tl_adapter.boot_bridge(hf, word_tokenizer(hf.config.vocab_size), name="tiny")
    tokens = _tokens(vocab=5)
    got = gate_stats(bridge, tokens)["targets"]
    share, count, *_ = _direct_targets(bridge, tokens, "first")
    np.testing.assert_allclose(got["share"], share, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got["top_count"], count)
    np.testing.assert_allclose(np.asarray(got["top_rate"]).sum(-1), 1.0, atol=1e-12)
    unasked, _ = _stats(tiny_model("rotary").eval(), tokens, sink="first", closed=0.1, batch_size=8, targets=False)
    assert unasked["targets"] is None and unasked["targets_note"] == "not asked for"
    assert pooled_targets(unasked) is None and "where the weight off the sink goes" not in summary(unasked)
    res = gate_stats(tiny_model("rotary").eval(), tokens)
    assert "where the weight off the sink goes" in summary(res) and "induction targets" in summary(res)


def test_a_sink_without_value_gates_exactly():
    """K bias only (v* = 0): the slot's weight writes nothing, so each query's gate is its weight on
    the real keys, g_t = m_t, and nothing of the write is left over."""
    model = tiny_model("k").eval()
    res = gate_stats(model, _tokens(), sink="slot")
    np.testing.assert_allclose(res["gate"], res["mass"], rtol=1e-10)
    np.testing.assert_allclose(res["corr_gate_mass"], 1.0, atol=1e-9)
    assert np.max(res["value_share"]) < 1e-9
    np.testing.assert_allclose(np.asarray(res["sink_mass"]) + np.asarray(res["mass"]), 1.0, atol=1e-12)
    assert "explicit_gate" not in res


def test_a_head_that_reads_nothing_has_weights_but_no_gate():
    """Layer 0's sink logit at +60: its heads put all their weight on the slot (m_t < 1e-20), so they
    have a sink weight of 1 and no gate to measure (NaN, not 0 or inf), and layer 1 is unaffected."""
    model = tiny_model("sink_logit").eval()
    tokens = _tokens()
    before = gate_stats(model, tokens)
    with torch.no_grad():
        model.blocks[0].attn.sink_logit.fill_(60.0)
    res = gate_stats(model, tokens)
    np.testing.assert_allclose(res["sink_mass"][0], 1.0, atol=1e-12)
    np.testing.assert_allclose(res["mass"][0], 0.0, atol=1e-12)
    assert res["queries_per_head"][0] == [0.0] * 4 and np.isnan(res["gate"][0]).all()
    assert np.isnan(res["value_share"][0]).all() and np.isnan(np.asarray(res["mass_pos"])[0, :, 1:]).sum() == 0
    assert np.isfinite(res["gate"][1]).all() and np.isfinite(res["sink_mass"]).all()
    assert res["gate"][1] != before["gate"][1]  # layer 1 reads a different residual now, but is measured


def test_auto_picks_the_slot_and_quantiles_are_ordered():
    res = gate_stats(tiny_model("kv").eval(), _tokens(), closed=0.5)
    assert res["sink"] == "slot" and res["slot"] == "hook"
    q10, q50, q90 = (np.asarray(res[k]) for k in ("gate_q10", "gate_q50", "gate_q90"))
    assert (q10 <= q50).all() and (q50 <= q90).all()
    g = np.asarray(res["gate"])
    assert ((q10 <= g + 0.01) & (g <= q90 + 0.01)).all()
    assert 0.0 <= np.min(res["closed_share"]) and np.max(res["closed_share"]) <= 1.0


def test_explicit_gate_is_reported_and_measured():
    model = tiny_model("gated").eval()
    tokens = _tokens()
    res = gate_stats(model, tokens)
    acts = patching.capture(model, tokens, ["blocks.1.attn.hook_z", "blocks.1.attn.hook_gate"])
    z, gate = acts["blocks.1.attn.hook_z"].double(), acts["blocks.1.attn.hook_gate"].double()
    w_o = model.blocks[1].attn.W_O.detach().double()
    h = 2
    write = torch.einsum("bte,ed->btd", z[:, 1:, h], w_o[h]).norm(dim=-1)
    ungated = torch.einsum("bte,ed->btd", z[:, 1:, h] / gate[:, 1:, h], w_o[h]).norm(dim=-1)
    assert res["explicit_gate"][1][h] == pytest.approx(float((write / ungated).mean()), rel=1e-9)
    assert 0.0 < np.min(res["explicit_gate"]) and np.max(res["explicit_gate"]) < 1.0 + 1e-9


def test_unnormalized_attention_runs_the_study_on_its_weights():
    """Sigmoid attention: m_t is the other keys' weight (shares x hook_row_weight), so the gate edits set
    weights, the sink keeping its own; the identity kernel, whose weights carry a sign, stays on shares."""
    model = tiny_model("sigmoid").eval()
    res = gate_study(model, _tokens(4), eps=0.3, token_heads=0)
    assert not res["pattern_is_share"] and not res["normalized"] and res["weights_from_row_weight"]
    assert [x["label"] for x in res["interventions"]] == ["open", "fixed", "token", "donor"]
    assert res["interventions"][0]["name"] == "ablate[norenorm]"
    assert all(np.isfinite(x["delta_loss"]) for x in res["interventions"])
    assert np.max(res["mass"]) > 1.0  # weights, not shares: the row's total is not 1
    assert np.isfinite(np.asarray(res["value_share"], dtype=float)).all()
    text = summary(res)  # no cost ratios against "open": without normalizing it only drops token 1
    assert "not normalized" in text and "hook_row_weight" in text and "fixing the gate" not in text
    assert "pooled over the 8 heads):" in text and "(the 8 heads, pooled;" in text  # every head has a gate here
    signed = gate_study(tiny_model("linear_identity").eval(), _tokens(4), eps=0.3, token_heads=0)
    assert signed["pattern_is_share"] and [x["label"] for x in signed["interventions"]] == ["open"]
    assert signed["value_share"][0][0] is None and "drivers" not in signed


def test_bridge_sink_mass_matches_hugging_face_eager_attention():
    hf = tiny_llama(n_kv_heads=2)
    tokens = torch.randint(3, 61, (3, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch.stack(hf(tokens, output_attentions=True).attentions, 1).double()  # [N, L, H, T, T]
    bridge = tl_adapter.boot_bridge(hf, word_tokenizer(61), "llama")
    res = gate_stats(bridge, tokens)
    assert res["sink"] == "first" and res["normalized"]
    np.testing.assert_allclose(res["sink_mass"], ref[..., 1:, 0].mean(dim=(0, 3)).numpy(), rtol=1e-5, atol=1e-7)
    ours, _ = _direct(bridge, tokens, "first")
    np.testing.assert_allclose(res["gate"], ours["g"], rtol=1e-5)
    # the adapter's eager attention fires hook_attn_scores on the scores it softmaxes: the split is measured
    assert res["logit_split"]["scores_error"] < 1e-5 and np.isfinite(res["logit_split"]["sink_side_within"]).all()


def test_bridge_per_head_token_and_donor_gates_match_single_head_runs():
    """Batched per-head passes of a bridge continue inside the Hugging Face model
    (``tl_adapter.hf_continuation``); the token tap must see their token ids there too."""
    bridge = tl_adapter.boot_bridge(tiny_llama(n_kv_heads=2), word_tokenizer(61), "llama")
    tokens = torch.randint(3, 12, (4, T), generator=torch.Generator().manual_seed(8))  # few ids: tokens repeat
    fit = torch.randint(3, 12, (3, T), generator=torch.Generator().manual_seed(9))
    res, seq = _stats(bridge, fit, sink="first", closed=0.1, batch_size=3, keep_seq=True)
    for inter in (token_gate(fit, seq, res["mass_pos"], sink="first", normalized=True),
                  donor_gate(tokens, seq[[0, 1, 2, 0]], sink="first", normalized=True)):
        with iv._token_tap(bridge):  # three cells a pass: the last (layer 1 only) continues inside the HF model
            batched = iv.run_intervention(bridge, tokens, inter, per_head=True, sinks=False, batch_rows=12).per_head
        assert np.abs(batched).max() > 1e-6
        for l, h in ((0, 1), (1, 3)):
            with iv._token_tap(bridge):
                alone = iv.run_intervention(bridge, tokens, inter, layers=[l], heads=[h], sinks=False)
            assert batched[l, h] == pytest.approx(alone.delta_loss, abs=1e-5), (inter.name, l, h)


@pytest.mark.parametrize("n_kv", [None, 2])
def test_a_users_hooked_transformer(n_kv):
    """A HookedTransformer (grouped keys and values too): the same statistics as the direct computation,
    and the study's donor runs per head through start_at_layer (tokens as a keyword)."""
    kw = {} if n_kv is None else {"n_key_value_heads": n_kv}
    ht = tl_adapter.hooked_transformer_from_config(
        n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
        positional_embedding_type="rotary", normalization_type="RMS", seed=0, dtype=torch.float64, **kw)
    with torch.no_grad():
        for block in ht.blocks:  # sharper attention than the default init
            block.attn.W_Q.mul_(8.0)
    tokens = _tokens()
    res = gate_stats(ht, tokens)
    ref, _ = _direct(ht, tokens, "first")
    for key, name in (("a", "sink_mass"), ("g", "gate"), ("vshare", "value_share")):
        np.testing.assert_allclose(res[name], ref[key], rtol=1e-9, atol=1e-11, err_msg=name)
    share, _, _ = _direct_logits(ht, tokens, "first")
    np.testing.assert_allclose(res["logit_split"]["sink_side_within"], share, rtol=1e-7)
    share, count, *_ = _direct_targets(ht, tokens, "first")
    np.testing.assert_allclose(res["targets"]["share"], share, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(res["targets"]["top_count"], count)
    if n_kv is None:
        study = gate_study(ht, tokens, per_head=True)
        donor = study["interventions"][3]
        assert donor["label"] == "donor" and np.isfinite(donor["per_head_delta_loss"]).all()


@pytest.mark.parametrize(("variant", "sink"), [("sigmoid", "first"), ("kv_sigmoid", "slot"), ("rotary", "first")])
def test_fixed_gate_without_normalizing_sets_the_weight_and_keeps_the_sinks(variant, sink):
    """normalized=False: m_t set as a weight (for sigmoid through hook_row_weight; softmax's pattern is the
    weight), the other keys scaled together, the sink's weight kept."""
    model = tiny_model(variant).eval()
    tokens = _tokens(4)
    L = model.cfg.n_layers
    clean = gate_stats(model, tokens, sink=sink)
    table = 0.5 * np.asarray(clean["mass_pos"])
    table[0, 1, 3] = np.nan  # left alone
    table[1, 2, 5] = 3.0
    inter = fixed_gate(table, sink=sink, normalized=False)
    assert {c for c, _ in inter.build_edits(model, sink == "slot")} >= ({"row_weight"} if variant != "rotary" else set())
    hooks = patching.edit_hooks(model, [(patching.COMPONENTS[c], s) for c, s in inter.build_edits(model, sink == "slot")],
                                [patching.Cell(l) for l in range(L)])
    with tl_adapter.attached_hooks(model, hooks):
        edited = gate_stats(model, tokens, sink=sink)
    want = table.copy()
    want[0, 1, 3] = np.asarray(clean["mass_pos"])[0, 1, 3]
    np.testing.assert_allclose(np.asarray(edited["mass_pos"])[..., 1:], want[..., 1:], rtol=1e-10, atol=1e-12)
    # the sink keeps its weight (layer 0: later layers' inputs change)
    np.testing.assert_allclose(edited["sink_mass"][0], clean["sink_mass"][0], rtol=1e-10, atol=1e-12)
    own = iv.run_intervention(model, tokens[:1], fixed_gate(gate_stats(model, tokens[:1], sink=sink)["mass_pos"],
                                                            sink=sink, normalized=False), sinks=False)
    assert abs(own.delta_loss) < 1e-12


@pytest.mark.parametrize(("variant", "sink"), [("rotary", "first"), ("kv", "slot"), ("sink_logit", "slot")])
def test_fixed_gate_sets_the_weight_and_keeps_rows_whole(variant, sink):
    model = tiny_model(variant).eval()
    tokens = _tokens(4)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    table = np.full((L, H, T), 0.5)
    table[0, 1, 3] = np.nan  # left alone
    table[1, 2, 5] = 0.8
    hooks = patching.edit_hooks(model, [(patching.COMPONENTS[c], s) for c, s in
                                        fixed_gate(table, sink=sink, normalized=True).build_edits(model, sink == "slot")],
                                [patching.Cell(l) for l in range(L)])
    clean = gate_stats(model, tokens, sink=sink)
    with tl_adapter.attached_hooks(model, hooks):
        edited = gate_stats(model, tokens, sink=sink)
    got = np.asarray(edited["mass_pos"])
    want = table.copy()
    want[0, 1, 3] = np.asarray(clean["mass_pos"])[0, 1, 3]
    np.testing.assert_allclose(got[..., 1:], want[..., 1:], atol=1e-12)
    assert edited["row_error"] < 1e-12  # the sink took the difference


def test_fixed_gate_at_a_sequences_own_weights_changes_nothing():
    model = tiny_model("rotary").eval()
    tokens = _tokens(1, seed=5)
    own = gate_stats(model, tokens)["mass_pos"]
    res = iv.run_intervention(model, tokens, fixed_gate(own, sink="first", normalized=True), sinks=False)
    assert abs(res.delta_loss) < 1e-12


def test_study_runs_open_and_cross_fitted_fixed_with_per_head_effects():
    model = tiny_model("kv").eval()
    res = gate_study(model, _tokens(6), per_head=True)
    labels = [x["label"] for x in res["interventions"]]
    assert labels == ["open", "fixed", "token", "donor"] and res["interventions"][1]["cross_fitted"]
    opened, fixed, token, donor = res["interventions"]
    assert np.asarray(token["per_head_delta_loss"]).shape == (2, 4) and token["name"] == "token_gate"
    assert np.asarray(donor["per_head_delta_loss"]).shape == (2, 4) and donor["name"] == "donor_gate"
    assert opened["name"] == "ablate_bias" and opened["sink_bias_after"] == 0.0
    assert np.asarray(fixed["per_head_delta_loss"]).shape == (2, 4)
    assert np.isfinite(fixed["delta_loss"]) and fixed["loss_base"] == pytest.approx(opened["loss_base"], rel=1e-12)
    text = summary(res)
    assert "open" in text and "fixed" in text and "L" in text


def _seq_masses(model, tokens):
    return _stats(model, tokens, sink="first", closed=0.1, batch_size=3, keep_seq=True)[1]


def test_donor_gate_gives_each_text_its_donors_weights():
    model = tiny_model("gqa").eval()
    tokens = _tokens(4, seed=3)
    own = _seq_masses(model, tokens)
    assert torch.isnan(own[..., 0]).all() and not torch.isnan(own[..., 1:]).any()
    with iv._token_tap(model):  # each text with its own weights: nothing changes
        same = iv.run_intervention(model, tokens, donor_gate(tokens, own, sink="first", normalized=True), sinks=False)
    assert abs(same.delta_loss) < 1e-12
    donors = own[[2, 3, 0, 1]]
    inter = donor_gate(tokens, donors, sink="first", normalized=True)
    hooks = patching.edit_hooks(model, [(patching.COMPONENTS[c], s) for c, s in inter.build_edits(model, False)],
                                [patching.Cell(l) for l in range(model.cfg.n_layers)])
    with iv._token_tap(model), tl_adapter.attached_hooks(model, hooks):
        got = _seq_masses(model, tokens)
    np.testing.assert_allclose(got[..., 1:].numpy(), donors[..., 1:].numpy(), atol=1e-12)
    with pytest.raises(RuntimeError, match="_token_tap"):  # no tap: no way to know the rows' texts
        iv.run_intervention(model, tokens, inter, sinks=False)
    with iv._token_tap(model), pytest.raises(RuntimeError, match="matches none"):
        iv.run_intervention(model, _tokens(4, seed=9), inter, sinks=False)
    with pytest.raises(ValueError, match="must agree"):
        donor_gate(tokens, own[:3], sink="first", normalized=True)


def _token_targets(tokens_fit, seq_fit, pos, tokens):
    """The token gate's m_t for ``tokens``, by numpy loops: the position mean plus the query token's summed
    deviation over ``count + TOKEN_SHRINK`` on the fitted sequences, clamped to [0, 1]; NaN at query 1."""
    n, L, H, T_ = seq_fit.shape
    out = np.full((tokens.shape[0], L, H, tokens.shape[1]), np.nan)
    for l, h in np.ndindex(L, H):
        sums, counts = {}, {}
        for b, t in np.ndindex(n, T_):
            if t == 0 or np.isnan(seq_fit[b, l, h, t]):
                continue
            i = int(tokens_fit[b, t])
            sums[i] = sums.get(i, 0.0) + seq_fit[b, l, h, t] - pos[l, h, t]
            counts[i] = counts.get(i, 0) + 1
        for b, t in np.ndindex(tokens.shape):
            if t == 0:
                continue
            i = int(tokens[b, t])
            dev = sums[i] / (counts[i] + TOKEN_SHRINK) if i in sums else 0.0
            out[b, l, h, t] = min(max(pos[l, h, t] + dev, 0.0), 1.0)
    return out


@pytest.mark.parametrize(("variant", "sink"), [("gqa", "first"), ("kv", "slot")])
def test_token_gate_sets_each_query_to_its_position_and_token_mean(variant, sink):
    model = tiny_model(variant).eval()
    fit = torch.randint(0, 8, (4, T), generator=torch.Generator().manual_seed(1))  # few ids: tokens repeat
    res, seq = _stats(model, fit, sink=sink, closed=0.1, batch_size=3, keep_seq=True)
    tokens = torch.randint(0, 10, (3, T), generator=torch.Generator().manual_seed(2))  # ids 8, 9 never seen
    want = _token_targets(fit.numpy(), seq.numpy(), np.asarray(res["mass_pos"]), tokens.numpy())
    inter = token_gate(fit, seq, res["mass_pos"], sink=sink, normalized=True)
    hooks = patching.edit_hooks(model, [(patching.COMPONENTS[c], s) for c, s in inter.build_edits(model, sink == "slot")],
                                [patching.Cell(l) for l in range(model.cfg.n_layers)])
    with iv._token_tap(model), tl_adapter.attached_hooks(model, hooks):
        got_res, got = _stats(model, tokens, sink=sink, closed=0.1, batch_size=2, keep_seq=True)
    np.testing.assert_allclose(got[..., 1:].numpy(), want[..., 1:], atol=1e-12)
    assert got_res["row_error"] < 1e-12
    assert (tokens[:, 1:] >= 8).any()  # the unseen ids took the position mean (checked above)
    with pytest.raises(RuntimeError, match="_token_tap"):
        iv.run_intervention(model, tokens, inter, sinks=False)
    with pytest.raises(ValueError, match="must agree"):
        token_gate(fit[:3], seq, res["mass_pos"], sink=sink, normalized=True)
    with pytest.raises(ValueError, match="sink: got 'both'"):
        token_gate(fit, seq, res["mass_pos"], sink="both", normalized=True)


def test_token_gate_without_token_deviations_is_the_fixed_gate():
    model = tiny_model("rotary").eval()
    tokens = _tokens(4, seed=6)
    res, seq = _stats(model, tokens, sink="first", closed=0.1, batch_size=4, keep_seq=True)
    flat = np.broadcast_to(np.asarray(res["mass_pos"])[None], seq.shape).copy()  # every query at its position mean
    with iv._token_tap(model):
        by_token = iv.run_intervention(model, tokens, token_gate(tokens, flat, res["mass_pos"], sink="first",
                                                                 normalized=True), sinks=False)
    fixed = iv.run_intervention(model, tokens, fixed_gate(res["mass_pos"], sink="first", normalized=True), sinks=False)
    assert by_token.delta_loss == pytest.approx(fixed.delta_loss, abs=1e-12) and abs(fixed.delta_loss) > 1e-6


def test_drivers_split_the_variance_out_of_sample():
    model = tiny_model("kv").eval()
    tokens = torch.randint(0, 8, (6, T), generator=torch.Generator().manual_seed(7))
    halves = (tokens[:3], tokens[3:])
    measured = [_stats(model, h, sink="slot", closed=0.1, batch_size=2, keep_seq=True) for h in halves]
    got = drivers(halves, measured)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sst, sse_pos, sse_tok = np.zeros((L, H)), np.zeros((L, H)), np.zeros((L, H))
    seen_sst, seen_pos, seen_tok = np.zeros((L, H)), np.zeros((L, H)), np.zeros((L, H))
    sse_rep, sse_prev, sse_text, rep_sum, rep_n, new_sum, new_n = (np.zeros((L, H)) for _ in range(7))
    seen = 0
    for i in (0, 1):
        (res_o, seq_o), seq_m = measured[1 - i], measured[i][1].numpy()
        pos = np.asarray(res_o["mass_pos"])
        pred = _token_targets(halves[1 - i].numpy(), seq_o.numpy(), pos, halves[i].numpy())
        grand = np.nanmean(seq_o.numpy()[..., 1:], axis=(0, 3))
        m = seq_m[..., 1:]
        sst += ((m - grand[None, :, :, None]) ** 2).sum(axis=(0, 3))
        sse_pos += ((m - pos[None, ..., 1:]) ** 2).sum(axis=(0, 3))
        sse_tok += ((m - pred[..., 1:]) ** 2).sum(axis=(0, 3))
        flags = [np.array([[int(row[t] in row[:t]) for t in range(T)] for row in halves[j].numpy()]) for j in (i, 1 - i)]
        by_rep = _token_targets(flags[1], seq_o.numpy(), pos, flags[0])  # the same fit, "tokens" new / repeated
        sse_rep += ((m - by_rep[..., 1:]) ** 2).sum(axis=(0, 3))
        before = [np.concatenate([halves[j].numpy()[:, :1], halves[j].numpy()[:, :-1]], 1) for j in (i, 1 - i)]
        by_prev = _token_targets(before[1], seq_o.numpy(), pos, before[0])  # the token before each query
        sse_prev += ((m - by_prev[..., 1:]) ** 2).sum(axis=(0, 3))
        by_text = np.zeros_like(m)  # each half of a text's queries: its mean offset over the other half
        cut = (T - 1) // 2
        for b, l, h in np.ndindex(m.shape[:3]):
            r = m[b, l, h] - pos[l, h, 1:]
            halves_dev = [r[:cut].sum() / (cut + TOKEN_SHRINK), r[cut:].sum() / (T - 1 - cut + TOKEN_SHRINK)]
            by_text[b, l, h, :cut] = pos[l, h, 1:cut + 1] + halves_dev[1]
            by_text[b, l, h, cut:] = pos[l, h, cut + 1:] + halves_dev[0]
        sse_text += ((m - np.clip(by_text, 0, 1)) ** 2).sum(axis=(0, 3))
        resid, rep = m - pos[None, ..., 1:], flags[0][:, None, None, 1:].astype(bool)
        rep_sum += np.where(rep, resid, 0).sum(axis=(0, 3))
        new_sum += np.where(rep, 0, resid).sum(axis=(0, 3))
        rep_n += rep.sum(axis=(0, 3))
        new_n += (~rep).sum(axis=(0, 3))
        known = np.isin(halves[i].numpy()[:, 1:], halves[1 - i].numpy()[:, 1:])[:, None, None, :]
        seen_sst += np.where(known, (m - grand[None, :, :, None]) ** 2, 0).sum(axis=(0, 3))
        seen_pos += np.where(known, (m - pos[None, ..., 1:]) ** 2, 0).sum(axis=(0, 3))
        seen_tok += np.where(known, (m - pred[..., 1:]) ** 2, 0).sum(axis=(0, 3))
        seen += known.sum()
    np.testing.assert_allclose(got["position"], 1 - sse_pos / sst, rtol=1e-9)
    np.testing.assert_allclose(got["token"], (sse_pos - sse_tok) / sst, rtol=1e-9)
    np.testing.assert_allclose(got["rest"], sse_tok / sst, rtol=1e-9)
    assert got["token_coverage"] == pytest.approx(seen / (6 * (T - 1))) and 0.2 < got["token_coverage"] < 1
    np.testing.assert_allclose(got["token_seen"], (seen_pos - seen_tok) / seen_sst, rtol=1e-9)
    np.testing.assert_allclose(got["repeat"], (sse_pos - sse_rep) / sst, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["repeat_diff"], rep_sum / rep_n - new_sum / new_n, rtol=1e-9)
    np.testing.assert_allclose(got["previous"], (sse_pos - sse_prev) / sst, rtol=1e-9, atol=1e-12)
    assert not np.allclose(got["previous"], got["token"])
    np.testing.assert_allclose(got["text"], (sse_pos - sse_text) / sst, rtol=1e-9, atol=1e-12)
    assert 0.3 < got["repeat_rate"] < 1  # ids 0..7 over 9 queries: most repeat
    res = {"sink_mass": [[0.5] * H, [0.0] * H], "drivers": got}
    pooled = pooled_drivers(res)  # the heads of layer 0 only
    assert pooled["heads"] == H
    assert pooled["rest"] == pytest.approx(sse_tok[0].sum() / sst[0].sum(), rel=1e-9)
    assert pooled["token_seen"] == pytest.approx((seen_pos[0] - seen_tok[0]).sum() / seen_sst[0].sum(), rel=1e-9)
    assert pooled["repeat"] == pytest.approx((sse_pos[0] - sse_rep[0]).sum() / sst[0].sum(), rel=1e-9)
    assert pooled["previous"] == pytest.approx((sse_pos[0] - sse_prev[0]).sum() / sst[0].sum(), rel=1e-9)
    assert pooled["text"] == pytest.approx((sse_pos[0] - sse_text[0]).sum() / sst[0].sum(), rel=1e-9)
    assert pooled_drivers({"sink_mass": [[0.0]], "drivers": got}) is None
    unread = {**got, "sst": [[float("nan")] + got["sst"][0][1:], got["sst"][1]]}  # a head that read nothing
    assert pooled_drivers({"sink_mass": res["sink_mass"], "drivers": unread})["heads"] == H - 1


def test_repeated_marks_tokens_seen_earlier_in_their_sequence():
    got = repeated(torch.tensor([[5, 3, 5, 5, 2, 3], [1, 2, 3, 4, 5, 6]]))
    assert got.tolist() == [[False, False, True, True, False, True], [False] * 6]
    with pytest.raises(ValueError, match=r"tokens must be \[N, T\]"):
        repeated(torch.tensor([1, 2, 3]))


def test_drivers_are_measured_without_the_interventions_too():
    model = tiny_model("rotary").eval()
    tokens = torch.randint(0, 8, (4, T), generator=torch.Generator().manual_seed(2))  # repeats: no NaN to compare
    measured = gate_study(model, tokens, interventions=False, token_heads=0)
    full = gate_study(model, tokens, token_heads=0)
    assert "interventions" not in measured and measured["drivers"] == full["drivers"]
    unnormalized = gate_study(tiny_model("sigmoid").eval(), tokens, interventions=False, token_heads=0)
    # m_t is a row's weight there, above 1: the fits are not clipped to [0, 1], so the position explains a share
    assert np.min(unnormalized["mass"]) > 1.0
    assert 0.0 < np.min(unnormalized["drivers"]["position"]) and np.max(unnormalized["drivers"]["position"]) <= 1.0
    for key in ("token", "repeat", "previous", "text"):  # clipped at 1, each fit would lose more than the position gains
        assert np.min(unnormalized["drivers"][key]) > -0.5, key


def test_per_head_effects_only_for_the_edits_named():
    model = tiny_model("rotary").eval()
    res = gate_study(model, _tokens(4), per_head=["fixed", "donor"], token_heads=0)
    has = {x["label"]: x["per_head_delta_loss"] is not None for x in res["interventions"]}
    assert has == {"open": False, "fixed": True, "token": False, "donor": True}
    with pytest.raises(ValueError, match=r"per_head: got \['close'\]"):
        gate_study(model, _tokens(4), per_head=["fixed", "close"])


def test_open_tokens_group_each_heads_weight_by_query_token(monkeypatch):
    from sinkinterp import gate

    model = tiny_model("rotary").eval()
    tokens = torch.randint(0, 6, (6, T), generator=torch.Generator().manual_seed(4))  # few ids: many repeats
    res = gate_stats(model, tokens, token_heads=2, min_count=4)
    seq = _seq_masses(model, tokens).numpy()
    a, w = np.asarray(res["sink_mass"]), np.asarray(res["gate_std_within"])
    top = sorted([lh for lh in np.ndindex(*a.shape) if a[lh] >= 0.1], key=lambda lh: -w[lh])[:2]
    assert len(top) == 2 and [x["head"] for x in res["open_tokens"]] == [f"L{l}H{h}" for l, h in top]
    for x, (l, h) in zip(res["open_tokens"], top):
        m, ids = seq[:, l, h, 1:].ravel(), tokens[:, 1:].numpy().ravel()
        means = {int(i): m[ids == i].mean() for i in np.unique(ids) if (ids == i).sum() >= 4}
        want = sorted(means, key=lambda i: -means[i])
        assert [r["id"] for r in x["open"]] == want[:8] and [r["id"] for r in x["closed"]] == want[::-1][:8]
        assert all(r["count"] == int((ids == r["id"]).sum()) and r["m"] == pytest.approx(means[r["id"]], rel=1e-12)
                   for r in x["open"])
        keep = np.isin(ids, list(means))
        between = np.mean([(means[int(i)] - m[keep].mean()) ** 2 for i in ids[keep]])
        assert x["token_r2"] == pytest.approx(between / m[keep].var(), rel=1e-9)
        assert 0 <= x["token_r2"] <= 1
    monkeypatch.setattr(gate, "TOKEN_TABLE_LIMIT", 10)
    skipped = gate_stats(model, tokens, token_heads=2)
    assert skipped["open_tokens"] is None and "TOKEN_TABLE_LIMIT" in skipped["open_tokens_note"]
    with pytest.raises(ValueError, match="token_heads must be"):
        gate_stats(model, tokens, token_heads=-1)
    with pytest.raises(ValueError, match="min_count must be"):
        gate_stats(model, tokens, token_heads=1, min_count=0)


def test_bad_arguments_are_named():
    model = tiny_model("rotary").eval()
    with pytest.raises(ValueError, match="sink: got 'key'"):
        gate_stats(model, _tokens(), sink="key")
    with pytest.raises(ValueError, match="sink='slot' needs a model with a bias slot"):
        gate_stats(model, _tokens(), sink="slot")
    with pytest.raises(ValueError, match="closed must be"):
        gate_stats(model, _tokens(), closed=0.0)
    with pytest.raises(ValueError, match="at least 3 positions"):
        gate_stats(model, _tokens()[:, :2])
    with pytest.raises(ValueError, match="batch_size"):
        gate_stats(model, _tokens(), batch_size=0)
    with pytest.raises(ValueError, match="sink: got 'both'"):
        fixed_gate(np.zeros((2, 4, T)), sink="both", normalized=True)
    with pytest.raises(ValueError, match=r"\[layers, heads, positions\]"):
        fixed_gate(np.zeros((2, 4)), sink="first", normalized=True)
    with pytest.raises(ValueError, match="the table is"):
        iv.run_intervention(model, _tokens(), fixed_gate(np.zeros((2, 3, T)), sink="first", normalized=True), sinks=False)


def test_cli_writes_results_and_refuses_bad_options(tmp_path, capsys):
    out = tmp_path / "gate"
    assert cli.main(["gate", "--model", "toy-softmax", "--prepend-bos", "--num-seqs", "4", "--seq-len", "12",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert res["sink"] == "first" and res["num_seqs"] == 4 and res["seq_len"] == 12
    assert [x["label"] for x in res["interventions"]] == ["open", "fixed", "token", "donor"]
    assert set(res["drivers"]) >= {"position", "token", "rest", "token_coverage"}
    assert res["targets"]["categories"] == list(TARGETS) and res["targets"]["queries"] == 4 * 11
    assert cfg["command"].startswith("sinkinterp gate") and (out / "gate.png").stat().st_size > 0
    assert len(res["open_tokens"]) == 6 and all(isinstance(r["text"], str) for r in res["open_tokens"][0]["open"])
    printed = capsys.readouterr().out
    assert "effective gate" in printed and "where the weight off the sink goes" in printed
    assert "turn_sources" not in res["logit_split"] and "turn_sources" not in cfg
    src = tmp_path / "src"  # no BOS: token 1's key differs between texts, and the turn splits by source
    assert cli.main(["gate", "--model", "toy-softmax", "--num-seqs", "4", "--seq-len", "12", "--no-interventions",
                     "--turn-sources", "--token-heads", "0", "--no-figures", "--out", str(src)]) == 0
    res = json.loads((src / "results.json").read_text())
    assert len(res["logit_split"]["turn_sources"]["names"]) == 2 * len(res["sink_mass"]) + 1
    assert json.loads((src / "config.json").read_text())["turn_sources"] == "layers"
    assert "the turn by what writes the query's input" in capsys.readouterr().out
    for argv, msg in ((["--closed", "3"], "--closed"), (["--per-head", "--no-interventions"], "--per-head"),
                      (["--per-head", "close"], "invalid choice: 'close'"),
                      (["--sink", "slot"], "bias slot"), (["--seq-len", "2"], "T >= 3")):
        code = None
        try:
            code = cli.main(["gate", "--model", "toy-softmax", "--num-seqs", "2", "--out", str(tmp_path / "x"), *argv])
        except SystemExit as err:  # argparse's own errors
            code = err.code
        assert code == 2, argv
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.json").exists()


def test_figure_refuses_what_is_not_a_study():
    from sinkinterp import figures

    with pytest.raises(ValueError, match="at least one"):
        figures.gate_figure({})
    with pytest.raises(ValueError, match="not a gate_study result"):
        figures.gate_figure({"m": {"sink_mass": [[0.1]]}})
    res = gate_stats(tiny_model("rotary").eval(), _tokens(2))
    fig = figures.gate_figure({"tiny": res})  # no interventions: the third panel says so
    assert len(fig.axes) == 4 and not fig.axes[2].axison and fig.axes[3].axison
    sigmoid = gate_stats(tiny_model("sigmoid").eval(), _tokens(2))  # no softmax split: the fourth panel says so
    assert not figures.gate_figure({"tiny": sigmoid}).axes[3].axison
    with pytest.raises(ValueError, match="at least one"):
        figures.targets_figure({})
    unasked, _ = _stats(tiny_model("rotary").eval(), _tokens(2), sink="first", closed=0.1, batch_size=8, targets=False)
    with pytest.raises(ValueError, match="not a gate_stats result with targets"):
        figures.targets_figure({"tiny": unasked})
    fig = figures.targets_figure({"tiny": res, "sigmoid": sigmoid})  # no copy curves: the third panel says so
    assert len(fig.axes) == 3 and not fig.axes[2].axison
    assert len(fig.axes[0].patches) == 2 * len(TARGETS)  # one bar per model and category


def test_passes_that_read_no_logits_unembed_one_position():
    """The gate study reads the logits only to check the turn's second pass against the first: the key-mean
    pass, and every pass where there is no turn to measure (a bias slot as the sink, the drivers' halves),
    unembed the last position alone."""

    def unembedded(variant: str, sink: str) -> list[int]:
        seen: list[int] = []
        model = tiny_model(variant).eval()
        handle = tl_adapter.unembed_module(model).register_forward_hook(
            lambda mod, args, out: seen.append(out.shape[1]))
        try:
            gate_stats(model, _tokens(), sink=sink, batch_size=2)
        finally:
            handle.remove()
        return seen

    assert unembedded("gqa_kv", "slot") == [1, 1, 1]  # three batches, no turn
    # the key means, then each batch's two passes whose logits are compared
    assert unembedded("rotary", "first") == [1, 1, 1] + [T, T] * 3
