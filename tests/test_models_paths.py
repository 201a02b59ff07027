"""Fast (fused) vs observed (materialized) attention, and both against a naive reference.

Every variant in ``sinkinterp.models.testing.VARIANTS`` is built tiny in float64 on CPU:
* the fused path (nothing hooked) and the materialized path (a no-op hook on hook_pattern) give
  the same logits and parameter gradients to 1e-10;
* hook_z of every layer equals an independent per-query loop implementation of the variant's
  definition (scores, masks, positional biases, op, slot, v*, gate);
* a sink-token model equals the plain model run on the sequence with the learned token prepended
  (the paper's definition of a learnable sink token).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from sinkinterp.models import SinkTransformer
from sinkinterp.models.testing import VARIANTS, tiny_config, tiny_model

TOL = 1e-10
T = 16


def _tokens(batch: int = 2, n_pos: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (batch, n_pos), generator=torch.Generator().manual_seed(seed))


def _noop(x, hook):
    return None


def _run(model: SinkTransformer, tokens: torch.Tensor, observed: bool):
    model.zero_grad(set_to_none=True)
    hooks = [(f"blocks.{l}.attn.hook_pattern", _noop) for l in range(model.cfg.n_layers)] if observed else []
    with model.hooks(fwd_hooks=hooks):
        if observed:
            assert all(b.attn.observed() for b in model.blocks)
        else:
            assert not any(b.attn.observed() for b in model.blocks)
        logits, loss = model(tokens, return_type="both")
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_and_materialized_paths_agree(name):
    model = tiny_model(name)
    tokens = _tokens()
    logits_f, grads_f = _run(model, tokens, observed=False)
    logits_o, grads_o = _run(model, tokens, observed=True)
    assert logits_f.abs().max() > 0.1  # non-degenerate
    torch.testing.assert_close(logits_f, logits_o, atol=TOL, rtol=0)
    assert grads_f.keys() == grads_o.keys()
    # every parameter that is in use gets a gradient (v* of a removed value bias does not)
    unused = {n for n, _ in model.named_parameters()} - grads_f.keys()
    assert all(n.endswith("v_star") for n in unused) and (bool(unused) == (name == "kv_removed_v"))
    for n in grads_f:
        assert grads_f[n].abs().max() > 0, n
        torch.testing.assert_close(grads_f[n], grads_o[n], atol=TOL, rtol=0, msg=n)
    assert sum(len(hp.fwd_hooks) for hp in model.hook_dict.values()) == 0


# ---------------------------------------------------------------------------------------
# naive reference: one query at a time, straight from the definitions
# ---------------------------------------------------------------------------------------
def _ref_slopes(n: int) -> list[float]:
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return pow2(n)
    m = 2 ** math.floor(math.log2(n))
    return pow2(m) + _ref_slopes(2 * m)[0::2][: n - m]


def _ref_bucket(n: int, num_buckets: int, max_distance: int) -> int:
    max_exact = num_buckets // 2
    if n < max_exact:
        return n
    b = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return min(b, num_buckets - 1)


def _ref_visible(cfg, t: int, s: int) -> bool:
    ok = s <= t and (cfg.window is None or t - s < cfg.window)
    return ok or (s < cfg.prefix_len and t < cfg.prefix_len)


def _ref_pos_bias(cfg, attn, h: int, t: int, s: int) -> float:
    if cfg.pos_emb == "alibi":
        return -_ref_slopes(cfg.n_heads)[h] * abs(t - s)
    if cfg.pos_emb == "relative":
        b = _ref_bucket(abs(t - s), cfg.relative_num_buckets, cfg.relative_max_distance)
        return float(attn.rel_bias[b, h])
    return 0.0


def _ref_z(model: SinkTransformer, cache: dict, layer: int) -> torch.Tensor:
    cfg = model.cfg
    attn = model.blocks[layer].attn
    pre = f"blocks.{layer}.attn."
    rot = cfg.pos_emb == "rotary"
    q = cache[pre + ("hook_rot_q" if rot else "hook_q")]
    k = cache[pre + ("hook_rot_k" if rot else "hook_k")]
    v = cache[pre + "hook_v"]
    B, n, H, dh = q.shape
    group = H // cfg.n_kv_heads
    op = cfg.attn_op
    phi = {"linear_elu": lambda x: F.elu(x) + 1, "linear_identity": lambda x: x}.get(op, lambda x: x)
    b_sig = -math.log(n) if cfg.sigmoid_bias == "-log n" else float(cfg.sigmoid_bias)
    sim_fn = {
        "sigmoid": lambda s: torch.sigmoid(s + b_sig),
        "sigmoid_norm": lambda s: torch.sigmoid(s + b_sig),
        "elu1": lambda s: F.elu(s) + 1,
        "elu1_norm": lambda s: F.elu(s) + 1,
        "linear_elu": lambda s: s,
        "linear_identity": lambda s: s,
    }.get(op)
    z = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            g = h // group
            for t in range(n):
                keys = [s for s in range(n) if _ref_visible(cfg, t, s)]
                scores = torch.stack(
                    [
                        phi(q[b, t, h]) @ phi(k[b, s, g]) / math.sqrt(dh) + _ref_pos_bias(cfg, attn, h, t, s)
                        for s in keys
                    ]
                )
                values = torch.stack([v[b, s, g] for s in keys])
                slot_score, slot_value = None, None
                if cfg.has_slot and cfg.attn_bias in ("kv", "k"):
                    kstar = attn.k_star[0 if cfg.attn_bias_shared else g]
                    slot_score = phi(q[b, t, h]) @ phi(kstar) / math.sqrt(dh)
                    if cfg.attn_bias == "kv" and cfg.attn_bias_removed == "none":
                        slot_value = attn.v_star[0 if cfg.attn_bias_shared else g]
                elif cfg.has_slot and cfg.attn_bias == "sink_logit":
                    slot_score = attn.sink_logit[0 if cfg.attn_bias_shared else h]
                if slot_score is not None:
                    scores = torch.cat([slot_score.reshape(1), scores])
                    if slot_value is None:
                        slot_value = torch.zeros(dh, dtype=q.dtype)
                    values = torch.cat([slot_value[None], values])
                if op in ("softmax", "softmax_scaled"):
                    w = torch.softmax(scores, 0) * cfg.softmax_alpha
                else:
                    w = sim_fn(scores)
                    if op in ("sigmoid_norm", "elu1_norm", "linear_elu"):
                        w = w / (w.sum() + cfg.attn_eps)
                z[b, t, h] = w @ values
    if cfg.has_v_bias:
        z = z + attn.v_star
    if cfg.attn_gate:
        z = z * cache[pre + "hook_gate"]
    return z


NAIVE = [n for n, o in VARIANTS.items() if o.get("attn_bias") != "sink_token"]


@pytest.mark.parametrize("name", NAIVE)
def test_attention_matches_naive_reference(name):
    model = tiny_model(name)
    tokens = _tokens(batch=1, n_pos=10)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        for layer in range(model.cfg.n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"]
            assert z.abs().max() > 1e-3
            torch.testing.assert_close(z, _ref_z(model, cache, layer), atol=1e-10, rtol=0)


SINK_TOKEN_PREPEND = [
    n for n, o in VARIANTS.items()
    if o.get("attn_bias") == "sink_token" and o.get("pos_emb", "rotary") in ("rotary", "none", "alibi", "relative")
]


@pytest.mark.parametrize("name", SINK_TOKEN_PREPEND)
def test_sink_token_equals_prepended_learned_token(name):
    """Paper: a learnable token in front of every sequence. With relative positions (RoPE, ALiBi,
    T5 buckets, NoPE) this is the plain model on [sink; tokens] with the sink's embedding = W_sink."""
    model = tiny_model(name)
    plain = SinkTransformer(model.cfg.replace(attn_bias="none")).double()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected == ["W_sink"]
    tokens = _tokens()
    with torch.no_grad():
        expected_logits = model(tokens)

        def put_sink(x, hook):
            x = x.clone()
            x[:, 0] = model.W_sink
            return x

        with plain.hooks(fwd_hooks=[("hook_embed", put_sink)]):
            padded = torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)
            got = plain(padded)[:, 1:]
    torch.testing.assert_close(got, expected_logits, atol=1e-10, rtol=0)
    # and the sink token is doing something
    assert (expected_logits - plain(tokens)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------
# other backends, patched patterns
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sigmoid", "sigmoid_norm", "elu1", "elu1_norm", "linear_elu",
                                  "kv_sigmoid", "sink_token_sigmoid_norm", "sink_logit_sigmoid_norm",
                                  "window_alibi_sigmoid", "kv_window_prefix"])
def test_flex_backend_forward_matches(name):
    """FlexAttention (eager, CPU: forward only; it has no CPU backward) equals the plain path."""
    model = tiny_model(name)
    tokens = _tokens()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model(tokens)
        got = model.set_attn_backend("flex")(tokens)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["rotary", "sigmoid", "kv", "sink_logit"])
def test_reference_backend_matches_default(name):
    model = tiny_model(name)
    tokens = _tokens()
    with torch.no_grad():
        expected = model(tokens)
        got = model.set_attn_backend("reference")(tokens)
    assert model.attn_backend == "reference"
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="attn_backend"):
        model.set_attn_backend("cuda")


@pytest.mark.parametrize(
    "name", ["rotary", "softmax_scaled_2", "sigmoid", "elu1_norm", "linear_identity", "kv", "sink_logit"]
)
def test_a_patched_pattern_is_what_attention_uses(name):
    """The weights are recomputed from whatever hook_pattern returns: a zero pattern leaves only
    the slot's contribution (zero without a slot value)."""
    model = tiny_model(name)
    tokens = _tokens(batch=1)
    zero = lambda x, hook: torch.zeros_like(x)  # noqa: E731
    fwd = [("blocks.0.attn.hook_pattern", zero)]
    if model.cfg.has_slot:
        fwd.append(("blocks.0.attn.hook_bias_pattern", zero))
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
    assert cache["blocks.0.attn.hook_z"].abs().max() == 0

    # doubling the pattern doubles the output (of a model without slot value)
    if not model.cfg.has_slot:
        with torch.no_grad():
            _, base = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
            with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: 2 * x)]):
                _, doubled = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
        torch.testing.assert_close(doubled["blocks.0.attn.hook_z"], 2 * base["blocks.0.attn.hook_z"], atol=TOL, rtol=0)


def test_backward_hook_on_pattern_forces_materialized_path():
    model = tiny_model("kv")
    grads = []
    with model.hooks(bwd_hooks=[("blocks.1.attn.hook_pattern", lambda g, hook: grads.append(g))]):
        assert model.blocks[1].attn.observed() and not model.blocks[0].attn.observed()
        model(_tokens(), return_type="loss").backward()
    assert len(grads) == 1 and grads[0].shape == (2, 4, T, T) and grads[0].abs().max() > 0
    assert not model.blocks[1].attn.observed()


def test_bf16_forward_and_backward_run():
    model = SinkTransformer(tiny_config(attn_bias="kv", pos_emb="alibi"), dtype=torch.bfloat16)
    loss = model(_tokens(), return_type="loss")
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert model.blocks[0].attn.k_star.grad.dtype == torch.bfloat16
    ref = SinkTransformer(tiny_config(attn_bias="kv", pos_emb="alibi"))
    assert abs(ref(_tokens(), return_type="loss").item() - loss.item()) < 0.05


# ---------------------------------------------------------------------------------------
# read-only column hooks: the first key columns without a T x T pattern
# ---------------------------------------------------------------------------------------
def _grab_cols(model: SinkTransformer, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    got = {}

    def keep(x, hook):
        got[hook.name] = x.detach().clone()

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
        got["logits"] = model(tokens)
    return got


@pytest.mark.parametrize("name", list(VARIANTS))
def test_column_hooks_equal_the_materialized_pattern_columns(name):
    """hook_pattern_cols / hook_bias_col on the fused path (log-sum-exp, no pattern) hold exactly the
    first columns of hook_pattern / hook_bias_pattern on the materialized path; observing them
    changes neither the path nor the logits."""
    model = tiny_model(name)
    model.pattern_cols = 5
    tokens = _tokens(batch=3, seed=1)
    L, slot = model.cfg.n_layers, model.cfg.has_slot
    col_names = [f"blocks.{l}.attn.hook_pattern_cols" for l in range(L)]
    col_names += [f"blocks.{l}.attn.hook_bias_col" for l in range(L)] if slot else []
    with model.hooks(fwd_hooks=[(n, _noop) for n in col_names]):
        assert not any(b.attn.observed() for b in model.blocks)
    fast = _grab_cols(model, tokens, col_names)
    pat_names = [n.replace("hook_pattern_cols", "hook_pattern").replace("hook_bias_col", "hook_bias_pattern")
                 for n in col_names]
    observed = _grab_cols(model, tokens, pat_names + col_names)
    with torch.no_grad():
        plain = model(tokens)
    torch.testing.assert_close(fast["logits"], plain, atol=0, rtol=0)
    torch.testing.assert_close(observed["logits"], plain, atol=TOL, rtol=0)
    for l in range(L):
        cols = fast[f"blocks.{l}.attn.hook_pattern_cols"]
        pattern = observed[f"blocks.{l}.attn.hook_pattern"]
        assert cols.shape == (3, model.cfg.n_heads, T, 5)
        torch.testing.assert_close(cols, pattern[..., :5], atol=1e-12, rtol=0)
        torch.testing.assert_close(observed[f"blocks.{l}.attn.hook_pattern_cols"], pattern[..., :5], atol=0, rtol=0)
        if slot:
            torch.testing.assert_close(fast[f"blocks.{l}.attn.hook_bias_col"],
                                       observed[f"blocks.{l}.attn.hook_bias_pattern"], atol=1e-12, rtol=0)
    assert pattern[..., :5].abs().max() > 0.05  # non-degenerate


@pytest.mark.parametrize("name", list(VARIANTS))
def test_column_sums_equal_the_materialized_pattern(name, monkeypatch):
    """hook_pattern_colsum on the fused path (a blocked pass over the scores with each row's
    log-sum-exp, or the plain path's proxy shares) holds the sums over queries t >= k of every key
    column of hook_pattern (what alpha_k averages; a prefix LM's look-ahead left out), without the
    materialized path; on the materialized path it is computed from the pattern itself."""
    from sinkinterp.models import attention

    model = tiny_model(name)
    tokens = _tokens(batch=3, seed=1)
    L = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern_colsum" for l in range(L)]
    observed = _grab_cols(model, tokens, names + [f"blocks.{l}.attn.hook_pattern" for l in range(L)])
    with monkeypatch.context() as m:
        m.setattr(attention.Attention, "_attend_observed", lambda *a, **k: pytest.fail("materialized path used"))
        m.setattr(attention, "_COLSUM_BLOCK_ELEMENTS", 3 * 4 * T * 5)  # blocks of 5 query rows
        fast = _grab_cols(model, tokens, names)
    at_or_after = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(L):
        want = (observed[f"blocks.{l}.attn.hook_pattern"] * at_or_after).sum(-2)
        assert fast[names[l]].shape == (3, model.cfg.n_heads, T)
        torch.testing.assert_close(fast[names[l]], want, atol=1e-12, rtol=0)
        torch.testing.assert_close(observed[names[l]], want, atol=1e-12, rtol=0)
    assert want[..., 1:].abs().max() > 0.05  # non-degenerate


def test_column_hooks_do_not_materialize(monkeypatch):
    """Only the column hooks observed: the materialized path never runs (softmax: the fused flash
    kernel's log-sum-exp on CPU; a kv slot or ALiBi: the blocked log-sum-exp)."""
    from sinkinterp.models.attention import Attention

    def boom(*args, **kwargs):
        raise AssertionError("materialized path used")

    monkeypatch.setattr(Attention, "_attend_observed", boom)
    for name in ("rotary", "kv", "alibi", "sigmoid"):
        model = tiny_model(name)
        got = _grab_cols(model, _tokens(), ["blocks.1.attn.hook_pattern_cols"])
        assert got["blocks.1.attn.hook_pattern_cols"].shape == (2, 4, T, 10)  # default pattern_cols


@pytest.mark.parametrize("name", ["sigmoid", "elu1_norm", "kv_sigmoid", "window_alibi_sigmoid"])
def test_column_hooks_from_flex_log_sum_exp(name):
    model = tiny_model(name)
    names = [f"blocks.{l}.attn.hook_pattern_{c}" for l in range(model.cfg.n_layers) for c in ("cols", "colsum")]
    if model.cfg.has_slot:
        names += [f"blocks.{l}.attn.hook_bias_col" for l in range(model.cfg.n_layers)]
    plain = _grab_cols(model, _tokens(), names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = _grab_cols(model.set_attn_backend("flex"), _tokens(), names)
    for n in names:
        torch.testing.assert_close(flex[n], plain[n], atol=1e-10, rtol=0, msg=n)


def test_column_hooks_in_bf16_are_closer_to_exact_than_the_bf16_pattern():
    """In bf16 the columns come from float32 scores of the bf16 q and k (as in the fused kernel);
    the float64 softmax of those same q and k is the truth both are compared with."""
    model = SinkTransformer(tiny_config(init_std=0.5), dtype=torch.bfloat16).eval()
    model.pattern_cols = 4
    names = ["blocks.1.attn.hook_pattern_cols", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_rot_q",
             "blocks.1.attn.hook_rot_k"]
    got = _grab_cols(model, _tokens(), names[:1] + names[2:])
    pattern = _grab_cols(model, _tokens(), names[1:2])["blocks.1.attn.hook_pattern"]
    q = got["blocks.1.attn.hook_rot_q"].double().transpose(1, 2)
    k = got["blocks.1.attn.hook_rot_k"].double().transpose(1, 2)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    exact = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)[..., :4]
    err_cols = (got["blocks.1.attn.hook_pattern_cols"].double() - exact).abs().max()
    assert got["blocks.1.attn.hook_pattern_cols"].dtype == torch.bfloat16
    assert err_cols < 4e-3  # bf16 rounding of the output only
    assert err_cols <= (pattern[..., :4].double() - exact).abs().max()


def test_pattern_cols_setting():
    model = tiny_model("rotary")
    assert model.pattern_cols == 10
    model.pattern_cols = 3
    assert all(b.attn.n_cols == 3 for b in model.blocks)
    got = _grab_cols(model, _tokens(n_pos=2), ["blocks.0.attn.hook_pattern_cols"])
    assert got["blocks.0.attn.hook_pattern_cols"].shape[-1] == 2  # never more columns than keys
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="pattern_cols"):
            model.pattern_cols = bad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention's log-sum-exp: CUDA only")
def test_cuda_flash_kernel_gives_the_log_sum_exp():
    """On CUDA in bf16 the column hooks take each row's log-sum-exp from FlashAttention-2 itself
    (``_flash_with_lse``): it must be there, of the right shape, and equal the float64 one."""
    from sinkinterp.models.attention import _flash_with_lse

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 64, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
    got = _flash_with_lse(q, k[:, :2], v[:, :2], 0.125)  # GQA: kv heads repeated for the kernel
    assert got is not None
    z, lse = got
    k2, v2 = (x[:, :2].double().repeat_interleave(2, dim=1) for x in (k, v))
    s = (q.double() @ k2.transpose(-1, -2)) * 0.125
    s = s.masked_fill(~torch.ones(300, 300, dtype=torch.bool, device="cuda").tril(), float("-inf"))
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 300)
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), atol=2e-2, rtol=0)
    assert (z.double() - torch.softmax(s, -1) @ v2).abs().max() < 3e-2


def test_column_sums_from_one_flash_call_on_cpu(monkeypatch):
    """Softmax with the plain causal mask (with or without a slot): each row's log-sum-exp comes from
    the fused CPU flash kernel and hook_pattern_colsum from one more call of it with keys and queries
    swapped (``_colsum_flash_cpu``);
    windows, positional biases and other ops take the blocked pass. The swap itself against a
    float64 materialized map, in float32 with grouped-query heads and a ragged length."""
    from sinkinterp.models import attention

    calls, lse_calls = [], []
    real, real_lse = attention._colsum_flash_cpu, attention._flash_with_lse
    monkeypatch.setattr(attention, "_colsum_flash_cpu", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(attention, "_flash_with_lse", lambda *a: lse_calls.append(1) or real_lse(*a))
    for name, used in (("rotary", True), ("gqa_kv", True), ("window", False), ("alibi", False), ("sigmoid", False)):
        calls.clear()
        lse_calls.clear()
        _grab_cols(tiny_model(name), _tokens(), ["blocks.1.attn.hook_pattern_colsum"])
        assert bool(calls) == used, name
        assert bool(lse_calls) == used, name  # with a slot too: the real keys' log-sum-exp from the flash kernel
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 33, 8, generator=g), torch.randn(2, 2, 33, 8, generator=g)
    s = q.double() @ k.double().repeat_interleave(2, dim=1).transpose(-1, -2) * 0.4
    s = s.masked_fill(~torch.ones(33, 33, dtype=torch.bool).tril(), float("-inf"))
    lse = torch.logsumexp(s, -1)
    want = torch.exp(s - lse[..., None]).sum(-2)
    assert want.std() > 0.5  # far from uniform: a wrong column would show
    torch.testing.assert_close(real(q, k, lse.float(), 0.4).double(), want, atol=2e-5, rtol=2e-5)
