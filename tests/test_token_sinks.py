"""sinkinterp.token_sinks and `sinkinterp tokens`: alpha pooled by token, exact on hand-built
patterns, equal to per-sequence `measure` on real models, clear errors."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_measure import _tiny_hooked_transformer

from sinkinterp import cli, tl_adapter
from sinkinterp.loading import load_model
from sinkinterp.measure import measure
from sinkinterp.token_sinks import first_in_sequence, token_sinks


class TokenPatternModel(tl_adapter.HookedRootModule):
    """Head (0, 0) sends each query's whole weight to the first 7 among keys 1..t (itself when there
    is none); every other head attends to itself only. The residual stream at a position is the
    vector (token id, 0), so its norm is the token id."""

    def __init__(self, n_layers=2, n_heads=2, d_vocab=10):
        super().__init__()
        self.cfg = SimpleNamespace(n_layers=n_layers, n_heads=n_heads, d_model=2, d_head=2, d_vocab=d_vocab,
                                   n_ctx=32, positional_embedding_type="none")
        self.blocks = torch.nn.ModuleList()
        for _ in range(n_layers):
            blk = torch.nn.Module()
            blk.attn = torch.nn.Module()
            blk.attn.hook_pattern = tl_adapter.HookPoint()
            blk.hook_resid_pre = tl_adapter.HookPoint()
            blk.hook_resid_post = tl_adapter.HookPoint()
            self.blocks.append(blk)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.setup()

    def forward(self, tokens):
        b, T = tokens.shape
        resid = torch.zeros(b, T, 2, dtype=torch.float64)
        resid[..., 0] = tokens.double()
        for l, blk in enumerate(self.blocks):
            blk.hook_resid_pre(resid)
            pat = torch.eye(T, dtype=torch.float64).repeat(b, self.cfg.n_heads, 1, 1)
            if l == 0:
                for i in range(b):
                    sevens = [s for s in range(1, T) if tokens[i, s] == 7]
                    for t in range(sevens[0] if sevens else T, T):
                        pat[i, 0, t] = 0.0
                        pat[i, 0, t, sevens[0]] = 1.0
            blk.attn.hook_pattern(pat)
        self.blocks[-1].hook_resid_post(resid)
        return torch.zeros(b, T, self.cfg.d_vocab)


TOKENS = torch.tensor([[1, 2, 7, 3, 4, 5, 6, 8], [1, 7, 2, 7, 3, 4, 5, 6]])


def test_exact_values_on_hand_built_patterns():
    # T = 8, min_queries 4: pooled key positions 1..4 (0-based). Self-only heads give alpha = 1/(T - p)
    # <= 1/4 there; head (0, 0) gives the first 7 alpha 1 and every other pooled key 0 (or 1/7 for a
    # key before the first 7, whose own query attends to itself).
    r = token_sinks(TokenPatternModel(), TOKENS, eps=0.3, min_queries=4, batch_size=1)
    assert r.positions.tolist() == [1, 2, 3, 4] and r.num_seqs == 2 and r.min_queries == 4
    i = {int(t): n for n, t in enumerate(r.token_ids)}
    assert sorted(i) == [2, 3, 4, 7]
    assert [int(r.count[i[t]]) for t in (2, 3, 4, 7)] == [2, 2, 1, 3]
    # token 7: seq 0 at 2 (head (0, 0) sinks), seq 1 at 1 (sinks) and at 3 (the second 7: weight 0)
    assert r.sink_rate[i[7]] == pytest.approx(100 * 2 / 12)
    assert r.mean_alpha[i[7]] == pytest.approx((1 + 3 / 6 + 1 + 3 / 7 + 0 + 3 / 5) / 12)
    assert r.top_head[i[7]].tolist() == [0, 0] and r.top_head_rate[i[7]] == pytest.approx(200 / 3)
    # by position: one head of eight (two sequences x four heads) sinks at positions 1 and 2, none later
    np.testing.assert_allclose(r.rate_by_position, [12.5, 12.5, 0.0, 0.0])
    assert r.expected_rate[i[7]] == pytest.approx((12.5 + 12.5 + 0.0) / 3)
    assert r.lift[i[7]] == pytest.approx(2.0)
    # token 2: seq 0 at 1 (before the 7: alpha 1/7 in head (0, 0)), seq 1 at 2 (0): never a sink
    assert r.sink_rate[i[2]] == 0.0 and r.expected_rate[i[2]] == pytest.approx(12.5) and r.lift[i[2]] == 0.0
    assert r.mean_alpha[i[2]] == pytest.approx((1 / 7 + 3 / 7 + 0 + 3 / 6) / 8)
    assert r.top_head[i[2]].tolist() == [-1, -1] and r.top_head_rate[i[2]] == 0.0
    assert np.isnan(r.lift[i[4]])  # position 4: no sink predicted, none seen
    assert r.pooled_rate == pytest.approx(100 * 2 / 32)
    # the first token: every head attends to it from query 0 only, alpha_1 = 1/8
    assert r.sink1_pct == 0.0
    np.testing.assert_allclose(r.alpha1, 1 / 8)
    # norms: the token id; the pooled positions hold 2, 7, 3, 4 and 7, 2, 7, 3 (mean 35/8)
    assert r.resid_ratio.shape == (3, 4)
    np.testing.assert_allclose(r.resid_ratio[:, i[7]], 7 / (35 / 8))
    np.testing.assert_allclose(r.first_resid_ratio, 1 / (35 / 8))
    np.testing.assert_allclose(r.max_resid_ratio(), [t / (35 / 8) for t in (2, 3, 4, 7)])
    # ranking: by rate (7 first), by count among tokens seen twice or more (7, then 2 and 3 by id)
    assert r.token_ids[r.top(1, min_count=1)].tolist() == [7] and not len(r.top())  # default min_count 5
    assert r.token_ids[r.top(5, min_count=2, by="count")].tolist() == [7, 2, 3]
    text = r.table(lambda t: f"tok{t}", n=2, min_count=1)
    assert "'tok7'" in text and "L0H0" in text and "(first token)" in text and "key positions 2..5" in text
    d = json.loads(json.dumps(r.to_dict(lambda t: f"tok{t}")))
    assert d["tokens"]["text"][i[7]] == "tok7" and d["tokens"]["lift"][i[4]] is None
    assert d["positions"] == [1, 4] and d["pooled_rate"] == pytest.approx(6.25)
    assert d["tokens"]["max_resid_hook"][i[7]] == 0 and d["first_occurrence"] is False


def test_skip_and_strict_threshold():
    # skip 2 leaves out position 1, where the 7 of sequence 1 stands; its second 7 (position 3) never sinks
    r = token_sinks(TokenPatternModel(), TOKENS, min_queries=4, skip=2, norms=False)
    i = {int(t): n for n, t in enumerate(r.token_ids)}
    assert r.positions.tolist() == [2, 3, 4] and int(r.count[i[7]]) == 2 and r.resid_ratio is None
    assert r.sink_rate[i[7]] == pytest.approx(100 / 8)
    # min_queries 3 pools position 5, whose self-only heads have alpha exactly 1/3 > 0.3 (strict: 0.25 is not)
    r3 = token_sinks(TokenPatternModel(), TOKENS, min_queries=3, eps=0.3)
    assert r3.rate_by_position[-1] == pytest.approx(100 * 3 / 4)
    r4 = token_sinks(TokenPatternModel(), TOKENS, min_queries=4, eps=0.25)
    assert r4.rate_by_position[-1] == 0.0  # alpha 1/4 is not > 0.25


def test_first_in_sequence():
    tokens = torch.tensor([[3, 1, 3, 1, 2], [5, 5, 5, 0, 5]])
    assert first_in_sequence(tokens).tolist() == [[True, True, False, False, True], [True, False, False, True, False]]


def test_first_occurrence_pools_each_tokens_first_only():
    # sequence 1's second 7 (position 3, never a sink) leaves the pool; the position baseline keeps it
    r = token_sinks(TokenPatternModel(), TOKENS, min_queries=4, first_occurrence=True)
    i = {int(t): n for n, t in enumerate(r.token_ids)}
    assert r.first_occurrence and [int(r.count[i[t]]) for t in (2, 3, 4, 7)] == [2, 2, 1, 2]
    assert r.sink_rate[i[7]] == pytest.approx(100 * 2 / 8) and r.expected_rate[i[7]] == pytest.approx(12.5)
    assert r.top_head_rate[i[7]] == pytest.approx(100.0)
    np.testing.assert_allclose(r.rate_by_position, [12.5, 12.5, 0.0, 0.0])
    np.testing.assert_allclose(r.resid_ratio[:, i[7]], 7 / (35 / 8))  # still over the norm of all tokens
    assert "first occurrences only" in r.table(min_count=1) and r.to_dict()["first_occurrence"] is True
    # a token seen first at a skipped position has no first occurrence in the pool
    tokens = torch.tensor([[7, 2, 7, 3, 4, 5, 6, 8]])
    assert 7 not in token_sinks(TokenPatternModel(), tokens, min_queries=4, first_occurrence=True).token_ids


def _brute_force(model, tokens, min_queries, eps=0.3):
    """Per-token pools from `measure` run on one sequence at a time (its alpha_by_key is that sequence's)."""
    pooled = {}
    T = tokens.shape[1]
    for s in range(tokens.shape[0]):
        a = measure(model, tokens[s:s + 1], eps=eps, qk_heads=None, norms=False).alpha_by_key  # [L, H, T]
        for p in range(1, T - min_queries + 1):
            tok = int(tokens[s, p])
            c, total, events = pooled.get(tok, (0, 0.0, 0))
            pooled[tok] = (c + 1, total + a[:, :, p].sum(), events + int((a[:, :, p] > eps).sum()))
    return pooled


@pytest.mark.parametrize("kind", ["hooked_transformer", "toy-kv-bias"])
def test_equal_to_per_sequence_measure(kind, monkeypatch):
    from sinkinterp.models.attention import Attention

    if kind == "hooked_transformer":
        model, tokens = _tiny_hooked_transformer()
        tokens = torch.randint(0, 6, (5, 12), generator=torch.Generator().manual_seed(1))  # repeats of few ids
        mq = 3
    else:
        model = load_model(kind).model
        tokens = torch.randint(0, 40, (4, 24), generator=torch.Generator().manual_seed(2))
        mq = 8
        # a sinkinterp model: alpha from the read-only column sums, no materialized pattern
        monkeypatch.setattr(Attention, "_attend_observed", lambda *a, **k: pytest.fail("materialized path used"))
    r = token_sinks(model, tokens, min_queries=mq, batch_size=3, eps=0.3)
    ref = _brute_force(model, tokens, mq)
    LH = r.n_layers * r.n_heads
    assert sorted(ref) == r.token_ids.tolist()
    for n, tok in enumerate(r.token_ids.tolist()):
        c, total, events = ref[tok]
        assert int(r.count[n]) == c
        assert r.mean_alpha[n] == pytest.approx(total / (c * LH), abs=1e-6)
        assert r.sink_rate[n] == pytest.approx(100 * events / (c * LH))
    assert r.sink1_pct == pytest.approx(measure(model, tokens, qk_heads=None, norms=False).sink1_pct)
    if kind == "hooked_transformer":  # the tiny model sinks somewhere, so the table has content
        assert r.sink_rate.max() > 0


@pytest.mark.parametrize("kw, match", [
    ({"skip": 12}, r"skip must be an integer in \[0, seq_len - 1 = 11\]"),
    ({"skip": -1}, "skip must be"),
    ({"min_queries": 12}, r"min_queries must be an integer in \[1, seq_len - skip = 11\]"),
    ({"min_queries": 0}, "min_queries must be"),
    ({"eps": 1.5}, "eps"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_arguments(kw, match):
    model, tokens = _tiny_hooked_transformer()
    tokens = torch.randint(0, 50, (2, 12))
    with pytest.raises(ValueError, match=match):
        token_sinks(model, tokens, **kw)


def test_bad_ranking_arguments():
    r = token_sinks(TokenPatternModel(), TOKENS, min_queries=4)
    with pytest.raises(ValueError, match="by must be one of sink_rate, mean_alpha, lift, count"):
        r.top(by="alpha")
    with pytest.raises(ValueError, match="min_count must be a positive integer"):
        r.top(min_count=0)


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_a_result_folder(tmp_path, capsys):
    out = tmp_path / "t"
    code, stdout, _ = run(["tokens", "--model", "toy-softmax", "--prepend-bos", "--num-seqs", "8", "--top", "5",
                           "--min-count", "3", "--out", str(out)], capsys)
    assert code == 0, stdout
    res = json.loads((out / "results.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["min_queries"] == 16 and cfg["skip"] == 1 and res["positions"] == [1, 48]
    toks = res["tokens"]
    assert len(toks["id"]) == len(toks["text"]) == len(toks["count"]) and sum(toks["count"]) == 8 * 48
    top = res["top"]["index"]
    assert len(top) == 5 and all(toks["count"][i] >= 3 for i in top)
    rates = [toks["sink_rate"][i] for i in top]
    assert rates == sorted(rates, reverse=True)
    assert res["sink1_pct"] > 10  # BOS first: the shipped baseline's sink
    assert (out / "token_sinks.png").read_bytes()[:4] == b"\x89PNG"
    assert "(first token)" in stdout and repr(toks["text"][top[0]])[:16] in stdout


@pytest.mark.parametrize("extra, match", [
    (["--min-queries", "64"], r"--min-queries must be an integer in \[1, seq_len - skip = 63\]"),
    (["--skip", "64"], r"--skip must be an integer in \[0, seq_len - 1 = 63\]"),
    (["--k-max", "3"], "--k-max: not used"),
    (["--seq-len", "65"], "--seq-len: T must be <= the model's n_ctx=64"),
])
def test_cli_bad_arguments_exit_2_without_results(tmp_path, capsys, extra, match):
    out = tmp_path / "bad"
    code, _, err = run(["tokens", "--inputs", "random", "--num-seqs", "2", "--out", str(out), *extra], capsys)
    assert code == 2 and not (out / "results.json").exists()
    assert __import__("re").search(match, err), err
