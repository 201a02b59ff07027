"""The paper's metric on hand-built attention patterns with known answers."""

import pytest
import torch

from sinkinterp.metrics import (alpha_bias_from_pattern, alpha_from_colsums, alpha_from_pattern, check_eps, proxy_scores,
                                sink_rate)


def uniform_causal(T: int) -> torch.Tensor:
    return torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]


def test_alpha_uniform_causal_is_harmonic_mean():
    alpha = alpha_from_pattern(uniform_causal(4))
    # alpha_1 = (1 + 1/2 + 1/3 + 1/4) / 4; alpha_2 = (1/2 + 1/3 + 1/4) / 3; alpha_4 = 1/4
    assert alpha[0].item() == pytest.approx(25 / 48, abs=1e-15)
    assert alpha[1].item() == pytest.approx(13 / 36, abs=1e-15)
    assert alpha[2].item() == pytest.approx((1 / 3 + 1 / 4) / 2, abs=1e-15)
    assert alpha[3].item() == pytest.approx(1 / 4, abs=1e-15)


def test_alpha_full_sink_and_batch_dims():
    T = 5
    sink = torch.zeros(T, T, dtype=torch.float64)
    sink[:, 0] = 1.0
    patterns = torch.stack([sink, uniform_causal(T)])[None]  # [1, 2, T, T]
    alpha = alpha_from_pattern(patterns)
    assert alpha.shape == (1, 2, T)
    assert torch.equal(alpha[0, 0], torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    assert alpha[0, 1, -1].item() == pytest.approx(1 / 5)


def test_alpha_ignores_entries_above_the_diagonal():
    # prefix-LM style: query 1 also looks at key 2; the paper averages over t >= k only.
    A = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]], dtype=torch.float64)
    alpha = alpha_from_pattern(A)
    assert alpha[1].item() == pytest.approx((0.8 + 0.1) / 2)
    assert alpha[0].item() == pytest.approx((0.5 + 0.2 + 0.1) / 3)


def test_alpha_rejects_non_square():
    with pytest.raises(ValueError, match="T, T"):
        alpha_from_pattern(torch.zeros(2, 3, 4))


def test_sink_rate_thresholds_per_sequence_strictly():
    alpha = torch.tensor([[[0.5, 0.1]], [[0.31, 0.3]]])  # [N=2, L=1, H=2]
    assert sink_rate(alpha, 0.3) == pytest.approx(50.0)  # 0.3 is not > 0.3
    # threshold per sequence, then average: a head at 0.9 / 0.1 sinks in half the sequences,
    # although its mean alpha 0.5 is above eps.
    alpha = torch.tensor([[[0.9]], [[0.1]]])
    assert sink_rate(alpha, 0.3) == pytest.approx(50.0)


def test_bias_alpha_is_mean_over_all_queries():
    bias = torch.tensor([[1.0, 0.5, 0.0, 0.5]])
    assert alpha_bias_from_pattern(bias).item() == pytest.approx(0.5)


def test_proxy_scores_normalize_rows_and_handle_negative_similarity():
    sim = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    mask = torch.tril(torch.ones(2, 2, dtype=torch.bool))
    p = proxy_scores(sim, mask)
    assert torch.allclose(p, torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    neg = torch.tensor([[1.0, -3.0]])
    assert torch.allclose(proxy_scores(neg, absolute=True), torch.tensor([[0.25, 0.75]]))
    assert torch.equal(proxy_scores(torch.zeros(1, 3)), torch.zeros(1, 3))


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "x", None])
def test_check_eps_rejects_values_outside_open_interval(bad):
    with pytest.raises(ValueError, match="eps"):
        check_eps(bad)


@pytest.mark.parametrize("t", [257, 600])
def test_alpha_of_long_sequences_by_blocks_equals_the_definition(t):
    """Above 256 positions alpha is summed by blocks of query rows without copying the pattern:
    the same values, and entries above the diagonal are still ignored."""
    g = torch.Generator().manual_seed(t)
    p = torch.rand(2, 3, t, t, generator=g, dtype=torch.float64).softmax(-1)
    p[..., :5, 200:] = 0.9  # above the diagonal (prefix-LM style): must not count
    expected = torch.stack([p[..., k:, k].sum(-1) / (t - k) for k in range(t)], dim=-1)
    torch.testing.assert_close(alpha_from_pattern(p), expected, rtol=1e-12, atol=1e-12)
    f32 = alpha_from_pattern(p.float())
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), expected, rtol=1e-5, atol=1e-6)


def test_alpha_from_colsums_divides_by_the_queries_that_see_each_key():
    # a hand-built causal pattern: its column sums over t >= k give back alpha_from_pattern exactly
    p = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.1, 0.4]], dtype=torch.float64)
    colsums = torch.tril(p).sum(-2)
    want = torch.tensor([1.75 / 3, 0.85 / 2, 0.4], dtype=torch.float64)
    torch.testing.assert_close(alpha_from_colsums(colsums), want, atol=1e-15, rtol=0)
    torch.testing.assert_close(alpha_from_colsums(colsums[None]), alpha_from_pattern(p[None]), atol=1e-15, rtol=0)
    assert alpha_from_colsums(torch.ones(2, 3, dtype=torch.float32)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"colsums must have shape \[\.\.\., T\]"):
        alpha_from_colsums(torch.zeros(2, 0))
