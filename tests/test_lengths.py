"""sinkinterp.lengths: the sink of every prefix length from one pass, equal to separate measurements."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama, word_tokenizer
from test_measure import PatternModel, _tiny_hooked_transformer, fake_tokens

from sinkinterp import tl_adapter
from sinkinterp.lengths import default_table_lengths, measure_lengths
from sinkinterp.measure import measure
from sinkinterp.metrics import alpha_bias_by_length, alpha_by_length, alpha_from_columns


def test_alpha_by_length_on_a_hand_built_column_keeps_the_strict_threshold():
    # token 1 takes all the weight of queries 1..3 and none after: alpha_1(T') = 3 / T' for T' >= 3
    T = 12
    cols = torch.zeros(1, T, 2, dtype=torch.float64)
    cols[0, :3, 0] = 1.0
    cols[0, 1:, 1] = 0.5
    a = alpha_by_length(cols, range(1, T + 1))[0]  # [T, 2]
    np.testing.assert_allclose(a[:, 0], [1, 1, 1] + [3 / t for t in range(4, T + 1)])
    assert a[9, 0].item() == 0.3 and not bool(a[9, 0] > 0.3)  # T' = 10: exactly eps, not a sink (strict)
    assert bool(a[8, 0] > 0.3)  # T' = 9: 1/3
    assert torch.isnan(a[0, 1])  # a 1-token prefix has no key 2
    np.testing.assert_allclose(a[1:, 1], 0.5)
    for t in (2, 5, T):  # equal to alpha_from_columns on the truncated columns
        np.testing.assert_allclose(a[t - 1], alpha_from_columns(cols[0, :t]), atol=1e-15)
    bias = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    np.testing.assert_allclose(alpha_bias_by_length(bias, [1, 2, 4])[0], [1.0, 0.5, 0.5])


@pytest.mark.parametrize("lengths, match", [([0], r"\[1, T=12\]"), ([13], r"\[1, T=12\]"), ([], "non-empty"),
                                            ([1.5], "integer")])
def test_alpha_by_length_rejects_bad_lengths(lengths, match):
    with pytest.raises(ValueError, match=match):
        alpha_by_length(torch.zeros(12, 2), lengths)


def test_exact_curve_on_hand_built_patterns():
    """Uniform causal attention gives alpha_1(T') = H_T' / T' (harmonic number): above 0.3 up to
    T' = 9 (0.314), below from T' = 10 (0.293); the hand-built sinks stay at 1."""
    report = measure_lengths(PatternModel(), fake_tokens(3, 1), eps=0.3, norms=False, batch_size=3)
    assert report.lengths.tolist() == list(range(2, 13))
    sink1 = report.sink_pct[:, 0]
    np.testing.assert_allclose(sink1[:8], 100.0)  # T' = 2..9: every head of every sequence
    np.testing.assert_allclose(sink1[8:], 3 * 75.0 / 4)  # T' = 10..12: only the hand-built sinks
    for t in (9, 10):
        h = sum(1 / s for s in range(1, t + 1)) / t
        np.testing.assert_allclose(report.alpha1[report.row(t)], [[(3 + h) / 4] * 2, [(3 + h) / 4, h]], atol=1e-12)
    # key 2 at T' = 2 has one query, itself: weight 1/2 in the uniform heads, 0 in the sink heads
    # (1 of 4 heads uniform in a sink sequence, 4 of 4 in the plain one): (3 * 25 + 100) / 4
    assert report.sink_pct[0, 1] == 43.75 and np.isnan(report.sink_pct[0, 2])  # T' = 2 has no key 3
    assert report.sink_bias_pct is None and report.massive_ratio is None


def _assert_equal_to_measure(model, tokens, lengths, atol=1e-9, **kw):
    rep = measure_lengths(model, tokens, lengths=lengths, **kw)
    k_max = rep.k_max
    for t in lengths:
        ref = measure(model, tokens[:, :t], qk_heads=None, **{**kw, "k_max": min(k_max, t)})
        i = rep.row(t)
        np.testing.assert_array_equal(rep.sink_pct[i, :min(k_max, t)], ref.sink_pct, err_msg=f"T'={t}")
        np.testing.assert_allclose(rep.alpha1[i], ref.alpha, atol=atol, err_msg=f"T'={t}")
        np.testing.assert_array_equal(rep.head_sink_rate[i], ref.head_sink_rate)
        np.testing.assert_array_equal(rep.sink1_by_eps[i], ref.sink1_by_eps)
        if ref.sink_bias_pct is None:
            assert rep.sink_bias_pct is None
        else:
            assert rep.sink_bias_pct[i] == ref.sink_bias_pct
            np.testing.assert_allclose(rep.alpha_bias[i], ref.alpha_bias, atol=atol)
        np.testing.assert_allclose(rep.massive_ratio[i], ref.norms["resid"]["massive_ratio"], rtol=1e-6)
    return rep


@pytest.mark.parametrize("name", ["rotary", "kv", "sink_token", "sink_logit", "window", "gqa", "alibi", "learned",
                                  "relative", "nope", "sigmoid", "linear_elu", "post_norm"])
def test_equal_to_measure_on_each_prefix_for_sinkinterp_models(name):
    from sinkinterp.models.testing import tiny_model

    model = tiny_model(name)
    model.pattern_cols = 7
    tokens = torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(2))
    rep = _assert_equal_to_measure(model, tokens, [2, 3, 5, 8, 11, 16], eps=0.15, eps_grid=(0.05, 0.1, 0.3),
                                   batch_size=2, k_max=4)
    assert np.nanmax(rep.sink_pct) > 0 or np.nanmax(rep.sink_bias_pct if rep.sink_bias_pct is not None else 0) > 0
    assert model.pattern_cols == 7  # restored
    assert tl_adapter.count_attached_hooks(model) == 0


def test_prefix_lm_is_measured_from_its_full_prefix_on():
    from sinkinterp.models.testing import tiny_model

    model = tiny_model("prefix")  # prefix_len 5
    tokens = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(4))
    _assert_equal_to_measure(model, tokens, [5, 9, 16], eps=0.15, batch_size=2, k_max=3)
    assert measure_lengths(model, tokens, k_max=3).lengths.tolist() == list(range(5, 17))
    with pytest.raises(ValueError, match=r"lengths must lie in \[5, seq_len=16\].*prefix_len=5"):
        measure_lengths(model, tokens, lengths=[4, 8])


def test_equal_to_measure_on_a_hooked_transformer_and_a_bridge():
    model, tokens = _tiny_hooked_transformer()
    _assert_equal_to_measure(model, tokens, [2, 4, 7, 10], atol=1e-6, eps=0.2, k_max=3)
    bridge = tl_adapter.boot_bridge(tiny_llama(), word_tokenizer(61), "tiny")
    tokens = torch.randint(0, 61, (4, 12), generator=torch.Generator().manual_seed(1))
    _assert_equal_to_measure(bridge, tokens, [3, 6, 12], atol=1e-6, eps=0.2, k_max=2, batch_size=3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=[1, 4]), r"lengths must lie in \[2, seq_len=16\]"),
    (dict(lengths=[17]), r"lengths must lie in \[2, seq_len=16\]"),
    (dict(lengths=[]), r"lengths must lie in \[2, seq_len=16\].*got \[\]"),
    (dict(k_max=17), r"k_max must be an integer in \[1, seq_len=16\]"),
    (dict(eps=1.0), "eps"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments(kwargs, match):
    from sinkinterp.models.testing import tiny_model

    with pytest.raises(ValueError, match=match):
        measure_lengths(tiny_model("rotary"), torch.zeros(2, 16, dtype=torch.long), **kwargs)


def test_length_dependent_sigmoid_bias_and_overlong_inputs_are_refused():
    from sinkinterp.models.testing import tiny_model

    with pytest.raises(ValueError, match="sigmoid_bias='-log n'"):
        measure_lengths(tiny_model("sigmoid_logn"), torch.zeros(2, 8, dtype=torch.long))
    model = tiny_model("rotary")
    with pytest.raises(ValueError, match="exceeds the model's context length"):
        measure_lengths(model, torch.zeros(1, model.cfg.n_ctx + 1, dtype=torch.long))


def test_to_dict_and_table_lengths():
    from sinkinterp.models.testing import tiny_model

    rep = measure_lengths(tiny_model("kv"), torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(5)))
    assert default_table_lengths(16) == [8, 16] and default_table_lengths(100) == [8, 16, 32, 64, 100]
    d = rep.to_dict([8, 16])
    assert d["lengths"] == list(range(2, 17)) and sorted(d["by_length"]) == ["16", "8"]
    assert d["sink_pct"][0][2] is None  # NaN -> null: a 2-token prefix has no key 3
    assert d["max_massive_ratio"][14] == pytest.approx(float(np.max(rep.massive_ratio[14])))
    assert len(d["by_length"]["8"]["alpha_bias"]) == rep.n_layers
    with pytest.raises(ValueError, match="length 17 was not measured"):
        rep.to_dict([17])
