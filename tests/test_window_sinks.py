"""sinkinterp.window_sinks and `sinkinterp windows`: where a windowed layer's attention goes past its window;
exact on hand-built patterns, equal to a per-row reference on Hugging Face's own eager attention, clear errors."""

import json
import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sinkinterp import cli, tl_adapter
from sinkinterp.window_sinks import REGIONS, window_sinks


class WindowPatternModel(tl_adapter.HookedRootModule):
    """Two layers, two heads, as GPT-Neo lays out local and global layers (``attn_types``): layer 0 sees the last
    ``window`` keys, layer 1 every causal key. Layer 0 head 0: queries that still see token 1 put 0.6 on it and
    0.4 on themselves; past the window 0.55 on the oldest key in view and 0.45 on themselves. Layer 0 head 1: over
    the keys in view, weights rising 1 : 2 : ... toward itself. Layer 1 head 0: 0.7 on token 1, 0.3 on itself; head 1: itself only."""

    def __init__(self, window=4, d_vocab=10):
        super().__init__()
        self.cfg = SimpleNamespace(n_layers=2, n_heads=2, d_model=2, d_head=2, d_vocab=d_vocab, n_ctx=32,
                                   positional_embedding_type="none", use_local_attn=True,
                                   attn_types=["local", "global"], window_size=window)
        self.blocks = torch.nn.ModuleList()
        for _ in range(2):
            blk = torch.nn.Module()
            blk.attn = torch.nn.Module()
            blk.attn.hook_pattern = tl_adapter.HookPoint()
            blk.attn.hook_v = tl_adapter.HookPoint()
            self.blocks.append(blk)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.setup()

    def patterns(self, b, T):
        w = self.cfg.window_size
        p = torch.zeros(b, 2, 2, T, T, dtype=torch.float64)
        for t in range(T):
            if t == 0:
                p[:, :, :, 0, 0] = 1.0
                continue
            if t < w:
                p[:, 0, 0, t, 0], p[:, 0, 0, t, t] = 0.6, 0.4
            else:
                p[:, 0, 0, t, t - w + 1], p[:, 0, 0, t, t] = 0.55, 0.45
            lo = max(0, t - w + 1)
            rising = torch.arange(1, t + 2 - lo, dtype=torch.float64)
            p[:, 0, 1, t, lo:t + 1] = rising / rising.sum()
            p[:, 1, 0, t, 0], p[:, 1, 0, t, t] = 0.7, 0.3
            p[:, 1, 1, t, t] = 1.0
        return p

    def forward(self, tokens):
        p = self.patterns(*tokens.shape)
        v = torch.stack([tokens.double(), torch.zeros_like(tokens, dtype=torch.float64)], -1)[:, :, None]
        for l, blk in enumerate(self.blocks):
            blk.attn.hook_v(v * (l + 1))  # one key / value head for both query heads: ||v_s|| = (l + 1) x token id
            blk.attn.hook_pattern(p[:, l])
        return torch.zeros(*tokens.shape, self.cfg.d_vocab)


def _reference(pattern, tokens, windows, split, eps, vnorm=None):
    """Every reading of window_sinks, row by row: pattern [N, L, H, T, T], vnorm [N, L, H, T] (numpy)."""
    N, L, H, T, _ = pattern.shape
    out = {name: np.zeros((2, L, H)) for name in ("first", "first_rate", "edge", "top", "top_rate")}
    dist = np.zeros((2, L, split))
    tokens_by = {k: {r: {} for r in REGIONS} for k in ("windowed", "global")}
    dist_by = {k: {r: np.zeros(T, dtype=int) for r in REGIONS} for k in ("windowed", "global")}
    order_by = {k: {r: dict.fromkeys(("latest", "earliest", "only"), 0) for r in REGIONS}
                for k in ("windowed", "global")}
    values = {k: {r: [[], [], []] for r in REGIONS} for k in ("windowed", "global")}  # sink keys, all, token 1
    windowed = [w is not None and w <= split for w in windows]
    for r, rows in enumerate((range(1, split), range(split, T))):
        for l in range(L):
            reach = windows[l] if windowed[l] else split
            kind = "windowed" if windowed[l] else "global"
            for h in range(H):
                for n in range(N):
                    for t in rows:
                        row = pattern[n, l, h, t]
                        out["first"][r, l, h] += row[0]
                        out["first_rate"][r, l, h] += row[0] > eps
                        if t - reach + 1 >= 0:
                            out["edge"][r, l, h] += row[t - reach + 1]
                        s = 1 + int(np.argmax(row[1:]))
                        out["top"][r, l, h] += row[s]
                        if row[s] > eps:
                            out["top_rate"][r, l, h] += 1
                            tok = int(tokens[n, s])
                            tokens_by[kind][REGIONS[r]][tok] = tokens_by[kind][REGIONS[r]].get(tok, 0) + 1
                            dist_by[kind][REGIONS[r]][t - s] += 1
                            first_in_view = max(1, t - reach + 1) if windowed[l] else 1
                            latest = tok not in tokens[n, s + 1:t + 1]
                            earliest = tok not in tokens[n, first_in_view:s]
                            order = order_by[kind][REGIONS[r]]
                            order["latest"] += latest
                            order["earliest"] += earliest
                            order["only"] += latest and earliest
                            if vnorm is not None:
                                values[kind][REGIONS[r]][0].append(vnorm[n, l, h, s])
                        if vnorm is not None:
                            values[kind][REGIONS[r]][1].append(vnorm[n, l, h, 1:].mean())
                            values[kind][REGIONS[r]][2].append(vnorm[n, l, h, 0])
                        for d in range(split):
                            if t - d >= 1:
                                dist[r, l, d] += row[t - d] / (H * N * sum(1 for u in rows if u - d >= 1))
            count = N * len(rows)
            for value in out.values():
                value[r, l] /= count
    for name in ("first_rate", "top_rate"):
        out[name] *= 100.0
    value = None if vnorm is None else {
        k: {r: dict(zip(("sink_keys", "all_keys", "token_1"), (np.mean(x) if x else np.nan for x in v)))
            for r, v in by.items()} for k, by in values.items()}
    return out, dist, tokens_by, dist_by, order_by, value


def _assert_equal_to_reference(report, pattern, tokens, eps):
    L, H = pattern.shape[1:3]
    vnorm = (tokens[:, None, None, :] * (np.arange(L) + 1)[None, :, None, None]).repeat(H, 2).astype(float)
    ref, dist, tokens_by, dist_by, order_by, value = _reference(pattern, tokens, report.windows, report.split, eps,
                                                               vnorm)
    assert report.sink_order == order_by
    for kind, by_region in value.items():
        for region, got in by_region.items():
            np.testing.assert_allclose([report.sink_value[kind][region][k] for k in got], list(got.values()),
                                       rtol=1e-12, err_msg=f"{kind} {region}")
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(report, name), value, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(report.by_distance, dist, rtol=1e-9, atol=1e-12)
    assert report.sink_tokens == tokens_by
    for kind, by_region in dist_by.items():
        for region, counts in by_region.items():
            np.testing.assert_array_equal(report.sink_distance[kind][region], counts)


def test_the_readings_are_exact_on_hand_built_patterns():
    model = WindowPatternModel(window=4)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 9]])
    report = window_sinks(model, tokens, eps=0.3, batch_size=1)
    assert report.windows == [4, None] and report.split == 4 and report.windowed_layers() == [0]
    assert report.rows == [3, 6]  # t = 1..3 inside, 4..9 past
    inside, past = (REGIONS.index(r) for r in REGIONS)
    # layer 0 head 0: 0.6 on token 1 inside, nothing past (its window); past, 0.55 on the oldest key in view
    assert report.first[inside, 0, 0] == pytest.approx(0.6) and report.first[past, 0, 0] == 0.0
    assert report.first_rate[inside, 0, 0] == 100.0 and report.first_rate[past, 0, 0] == 0.0
    assert report.edge[past, 0, 0] == pytest.approx(0.55)
    assert report.top[past, 0, 0] == pytest.approx(0.55) and report.top_rate[past, 0, 0] == 100.0
    assert report.top[inside, 0, 0] == pytest.approx(0.4) and report.top_rate[inside, 0, 0] == 100.0
    # the rising head past its window: 0.4 on itself (1 + 2 + 3 + 4 = 10)
    assert report.top[past, 0, 1] == pytest.approx(0.4) and report.top_rate[past, 0, 1] == 100.0
    # layer 1 keeps token 1 past the split; its edge is the key at the same distance (3), which gets nothing
    assert report.first[past, 1, 0] == pytest.approx(0.7) and report.edge[past, 1, 0] == 0.0
    # by distance, mean over heads and the rows with a key there: past, layer 0 at its edge (0.55 + 0.1) / 2, layer 1
    # on itself (0.3 + 1) / 2; inside, layer 1 at distance 2 only from query 3 (key 1), where nothing is put
    assert report.by_distance[past, 0, 3] == pytest.approx(0.325) and report.by_distance[past, 1, 0] == pytest.approx(0.65)
    assert report.by_distance[inside, 1, 2] == 0.0 and report.by_distance[inside, 0, 0] == pytest.approx(
        (0.4 + (2 / 3 + 3 / 6 + 4 / 10) / 3) / 2)  # head 1 gives itself 2/3, 3/6, 4/10 at t = 1, 2, 3
    # the sinks off token 1 past the window: head 0's at the edge (distance 3), head 1's on the query itself
    past_dist = report.sink_distance["windowed"]["past"]
    assert past_dist[3] == 12 and past_dist[0] == 12 and past_dist.sum() == 24
    assert report._edge_share("windowed", "past") == 0.5
    expected = Counter(int(tokens[n, t - 3]) for n in range(2) for t in range(4, 10))
    expected += Counter(int(tokens[n, t]) for n in range(2) for t in range(4, 10))
    assert report.sink_tokens["windowed"]["past"] == dict(expected)
    assert report.top_tokens("windowed", "past", 2) == [(5, 4), (3, 3)]  # most first, then by id
    # every token occurs once in each sequence but 1 and 9, at its two ends (positions 0 and 9): each sink key is
    # the only occurrence of its token in view
    assert report.sink_order["windowed"]["past"] == {"latest": 24, "earliest": 24, "only": 24}
    # one token repeated: head 0's sink at the edge is the earliest 2 in view, head 1's on itself the latest
    same = torch.tensor([[1, 2, 2, 2, 2, 2, 2, 2, 2, 2]])
    repeated = window_sinks(model, same, eps=0.3)
    assert repeated.sink_order["windowed"]["past"] == {"latest": 6, "earliest": 6, "only": 0}
    _assert_equal_to_reference(repeated, model.patterns(1, 10).numpy(), same.numpy(), 0.3)
    # ||v_s|| = (layer + 1) x the token id there: token 1 holds 1 and 9
    assert report.sink_value["windowed"]["past"]["token_1"] == 5.0 and report.sink_value["global"]["past"]["token_1"] == 10.0
    assert report.sink_value["windowed"]["past"]["sink_keys"] == pytest.approx(
        sum(k * c for k, c in expected.items()) / 24)
    _assert_equal_to_reference(report, model.patterns(2, 10).numpy(), tokens.numpy(), 0.3)
    text = report.table()
    assert "window" in text and "windowed layers, past" in text
    d = report.to_dict()
    assert d["summary"]["windowed"]["past"]["first"] == 0.0 and d["edge_share"]["windowed"] == 0.5
    json.dumps(d)


def test_the_readings_equal_a_row_by_row_reference_on_hugging_face_eager_attention():
    """A tiny Gemma 3 (a sliding layer, then a global one) through TransformerBridge: every reading equals the
    reference taken row by row from Hugging Face's own attention probabilities."""
    from test_architectures import V

    hf, boot = _tiny_gemma3()
    tokens = torch.randint(3, V, (3, 12), generator=torch.Generator().manual_seed(1))
    values = []
    handles = [layer.self_attn.v_proj.register_forward_hook(lambda m, a, out: values.append(out))
               for layer in hf.model.layers]
    with torch.no_grad():
        attentions = hf(tokens, output_attentions=True).attentions
    for handle in handles:
        handle.remove()
    H, kv = hf.config.num_attention_heads, hf.config.num_key_value_heads
    vnorm = torch.stack([v.view(3, 12, kv, -1).double().norm(dim=-1).repeat_interleave(H // kv, 2).permute(0, 2, 1)
                         for v in values], 1).numpy()  # [N, L, H, T]
    pattern = torch.stack(attentions, 1).double().numpy()  # [N, L, H, T, T]
    report = window_sinks(boot(), tokens, eps=0.2, batch_size=2)
    assert report.windows == [3, None] and report.split == 3
    assert np.all(report.first[1, 0] == 0.0) and np.all(report.first[1, 1] > 0.0)
    ref, dist, tokens_by, _, order_by, value = _reference(pattern, tokens.numpy(), report.windows, report.split, 0.2,
                                                          vnorm)
    for kind, by_region in value.items():
        for region, got in by_region.items():
            np.testing.assert_allclose([report.sink_value[kind][region][k] for k in got], list(got.values()),
                                       rtol=1e-5, err_msg=f"{kind} {region}")
    assert report.sink_order == order_by
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(report, name), value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(report.by_distance, dist, rtol=1e-5, atol=1e-6)
    assert report.sink_tokens == tokens_by  # no weight sits within rounding of eps or of a tie here
    assert sum(tokens_by["windowed"]["past"].values()) > 0  # the comparison covers sinks past the window


def test_a_split_can_be_named_and_bad_input_is_refused():
    model = WindowPatternModel(window=4)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    report = window_sinks(model, tokens, split=6)
    assert report.split == 6 and report.windowed_layers() == [0] and report.rows == [5, 2]
    _assert_equal_to_reference(report, model.patterns(1, 8).numpy(), tokens.numpy(), 0.3)
    with pytest.raises(ValueError, match=r"split must be an integer in \[2, seq_len - 1 = 7\]"):
        window_sinks(model, tokens, split=8)
    with pytest.raises(ValueError, match="no layer's window is shorter than the sequence"):
        window_sinks(model, tokens[:, :4])
    with pytest.raises(ValueError, match="eps"):
        window_sinks(model, tokens, eps=1.5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        window_sinks(model, tokens, batch_size=0)


def test_the_windows_command_writes_its_result_folder(tmp_path):
    from sinkinterp.models import ModelConfig, SinkTransformer
    from sinkinterp.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "model", SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4,
                                                                          d_vocab=50, n_ctx=32, window=6)))
    out = tmp_path / "out"
    rc = cli.main(["windows", "--model", str(ckpt), "--inputs", "random", "--seq-len", "16", "--num-seqs", "3",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["windows"] == [6, 6] and res["split"] == 6 and res["summary"]["windowed"]["past"]["first"] == 0.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["split"] == 6 and (out / "window_sinks.png").is_file()


@pytest.mark.parametrize("extra, match", [
    (["--split", "16"], r"--split must be an integer in \[2, seq_len - 1 = 15\]"),
    (["--seq-len", "6"], "no layer's window is shorter than the sequence .* pass --split"),
    (["--k-max", "3"], "--k-max: not used"),
])
def test_the_windows_command_refuses_bad_arguments_without_results(tmp_path, capsys, extra, match):
    import re

    from sinkinterp.models import ModelConfig, SinkTransformer
    from sinkinterp.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "model", SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4,
                                                                          d_vocab=50, n_ctx=32, window=6)))
    out = tmp_path / "bad"
    code = cli.main(["windows", "--model", str(ckpt), "--inputs", "random", "--seq-len", "16", "--num-seqs", "2",
                     "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and not (out / "results.json").exists()
    assert re.search(match, err), err


def _tiny_gemma3():
    """A tiny Gemma 3 (a sliding layer, then a global one) and a function that boots its bridge (run Hugging Face's
    own model first: the bridge takes it over)."""
    import transformers
    from test_architectures import SMALL, WINDOW_CONFIGS, V, word_tokenizer

    cfg_cls, model_cls, fields = WINDOW_CONFIGS["gemma3"]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)._from_config(getattr(transformers, cfg_cls)(**SMALL, **fields),
                                                        attn_implementation="eager").eval()

    def boot():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tl_adapter.boot_bridge(hf, word_tokenizer(V), "tiny-gemma3")

    return hf, boot


def test_hiding_a_tokens_keys_equals_masking_them_in_hugging_face_attention():
    """drop_token_keys on a tiny Gemma 3 (its sliding layer edited): the losses equal Hugging Face's own model run
    with those keys masked out of the sliding layers' attention mask, and the weight they held is read off its
    attention probabilities."""
    from sinkinterp import patching
    from sinkinterp.window_sinks import drop_token_keys

    hf, boot = _tiny_gemma3()
    T = 12
    tokens = torch.randint(3, 8, (2, T), generator=torch.Generator().manual_seed(1))
    t = torch.arange(T)
    causal = (t[None, :] <= t[:, None]).expand(2, T, T)
    sliding = causal & ((t[:, None] - t[None, :]) < 3)
    hidden = torch.isin(tokens, torch.tensor([4]))[:, None, :] & (t[None, :] >= 1) & (t[None, :] < t[:, None])

    def additive(mask):
        return torch.where(mask, 0.0, float("-inf"))[:, None]

    with torch.no_grad():
        out = hf(tokens, output_attentions=True)
        masked = hf(tokens, attention_mask={"full_attention": additive(causal),
                                            "sliding_attention": additive(sliding & ~hidden)}).logits
    bridge = boot()
    res = drop_token_keys(bridge, tokens, [4], split=3)
    assert res["layers"] == [0] and res["split"] == 3 and res["token_ids"] == [4]
    plain, edited = (patching.per_token_loss(x, tokens).double() for x in (out.logits, masked))
    held = (out.attentions[0].double() * hidden[:, None]).sum(-1)  # [N, H, T]: weight on the hidden keys
    for region, rows in (("inside", (t >= 1) & (t < 3)), ("past", t >= 3)):
        assert res["loss"][region] == pytest.approx(float(plain[:, rows[:-1]].mean()), abs=1e-6)
        assert res["loss_dropped"][region] == pytest.approx(float(edited[:, rows[:-1]].mean()), abs=1e-6)
        assert res["weight_dropped"][region] == pytest.approx(float(held[:, :, rows].mean()), abs=1e-6)
    assert res["delta"]["past"] != 0.0 and res["weight_dropped"]["past"] > 0.05
    # a token that never occurs changes nothing
    absent = drop_token_keys(bridge, tokens, [9], split=3)
    assert absent["delta"] == {"inside": 0.0, "past": 0.0} and absent["weight_dropped"]["past"] == 0.0
    for bad, match in (([], "token_ids must be a non-empty list"), ([10**9], "token_ids must be a non-empty list")):
        with pytest.raises(ValueError, match=match):
            drop_token_keys(bridge, tokens, bad, split=3)
    with pytest.raises(ValueError, match=r"layers must be a non-empty list of layer indices in \[0, 1\]"):
        drop_token_keys(bridge, tokens, [4], layers=[2], split=3)


def test_the_windows_command_hides_tokens_on_request(tmp_path, capsys):
    from sinkinterp.models import ModelConfig, SinkTransformer
    from sinkinterp.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "model", SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4,
                                                                          d_vocab=50, n_ctx=32, window=6)))
    out = tmp_path / "out"
    assert cli.main(["windows", "--model", str(ckpt), "--inputs", "random", "--seq-len", "16", "--num-seqs", "3",
                     "--drop-tokens", "#7", "#11", "--no-figures", "--out", str(out)]) == 0
    drop = json.loads((out / "results.json").read_text())["drop"]
    assert drop["token_ids"] == [7, 11] and drop["layers"] == [0, 1] and set(drop["delta"]) == {"inside", "past"}
    assert json.loads((out / "config.json").read_text())["drop_tokens"] == [7, 11]
    assert "hidden from layers [0, 1]" in capsys.readouterr().out
    code = cli.main(["windows", "--model", str(ckpt), "--inputs", "random", "--seq-len", "16", "--num-seqs", "3",
                     "--drop-tokens", "#50", "--out", str(tmp_path / "bad")])
    assert code == 2 and "--drop-tokens: '#50': token ids must lie in [0, 49]" in capsys.readouterr().err
    whole = save_checkpoint(tmp_path / "whole", SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4,
                                                                           d_vocab=50, n_ctx=32)))
    code = cli.main(["windows", "--model", str(whole), "--inputs", "random", "--seq-len", "16", "--num-seqs", "3",
                     "--split", "8", "--drop-tokens", "#7", "--no-figures", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "--drop-tokens: no layer's window hides token 1 from the queries past split 8" in err, err
    assert not (tmp_path / "none" / "results.json").exists()


def test_values_that_come_after_their_pattern_are_refused():
    """A model whose hook_v fires after its hook_pattern would pair each pattern with another layer's values."""
    class Late(WindowPatternModel):
        def forward(self, tokens):
            p = self.patterns(*tokens.shape)
            v = torch.ones(*tokens.shape, 1, 2, dtype=torch.float64)
            for l, blk in enumerate(self.blocks):
                blk.attn.hook_pattern(p[:, l])
                blk.attn.hook_v(v)
            return torch.zeros(*tokens.shape, self.cfg.d_vocab)

    with pytest.raises(RuntimeError, match=r"blocks.0.attn.hook_v did not fire before the layer's hook_pattern"):
        window_sinks(Late(window=4), torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))


def test_a_kind_or_region_that_does_not_exist_is_refused():
    report = window_sinks(WindowPatternModel(window=4), torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
    assert report.kind_mean("first", "windowed", "inside") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="kind must be one of windowed, global, got 'local'"):
        report.kind_mean("first", "local", "past")
    with pytest.raises(ValueError, match="region must be one of inside, past, got 'after'"):
        report.kind_mean("first", "global", "after")
