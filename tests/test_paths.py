"""Path patching (sinkinterp/paths.py) against a one-sender-at-a-time reference, against identities that
hold without it (a one-layer model's activation patching; the direct effect on the logits through the
final residual; the receivers' inputs through ln1's output), on our models, a HookedTransformer and a
bridge, and its errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import tiny_llama, word_tokenizer

from sinkinterp import patching, paths, tl_adapter
from sinkinterp.models.model import SinkTransformer
from sinkinterp.models.testing import tiny_config
from sinkinterp.paths import Receiver, Sender


def _model(kind: str, n_layers: int = 3):
    if kind == "sinkinterp":
        return SinkTransformer(tiny_config(n_layers=n_layers, n_kv_heads=2)).double().eval()
    if kind == "ht":
        return tl_adapter.hooked_transformer_from_config(
            n_layers=n_layers, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
            positional_embedding_type="rotary", normalization_type="RMS", seed=0)
    assert n_layers == 2
    return tl_adapter.boot_bridge(tiny_llama(), word_tokenizer(61), "tiny")


def _tokens(seed: int, vocab: int = 50, shape=(3, 9)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, shape, generator=g)


def _pair(vocab: int = 50):
    clean = _tokens(0, vocab)
    corrupted = clean.clone()
    corrupted[:, 0] = _tokens(1, vocab)[:, 0]  # the first token changed: the sink case
    corrupted[:, 4] = _tokens(2, vocab)[:, 4]
    return clean, corrupted


def _logit_metric(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean() + logits[:, 2, 7].mean()


_FROZEN: dict = {}  # (model, base tokens) -> the base run's head and MLP outputs, for _reference


def _reference(model, base, new, sender, receivers, metric, metric_hook=None, free_mlps=False, positions=None):
    """One sender at a time: freeze every head's output (hook_z) and MLP output after it at the base
    run's value, keep the receivers, then the base run with them."""
    L = tl_adapter.model_dims(model)["n_layers"]
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    key = (model, base.numpy().tobytes())  # the model itself: kept alive, its id cannot be reused meanwhile
    if key not in _FROZEN:
        _FROZEN.clear()
        _FROZEN[key] = patching.capture(model, base, names)
    base_acts = _FROZEN[key]
    sname = sender.hook_name()

    unit = sender.neuron if sender.kind == "neuron" else sender.head  # hook_post's neuron axis, hook_z's head axis

    def send(act, hook=None):
        out = act.clone()
        pos = slice(None) if positions is None else list(positions)
        if unit is None:
            out[:, pos] = new[sname][:, pos].to(act.dtype)
        else:
            for u in unit if isinstance(unit, tuple) else (unit,):
                out[:, pos, u] = new[sname][:, pos, u].to(act.dtype)
        return out

    def freeze(name):
        return lambda act, hook=None: base_acts[name].to(act.dtype)

    hooks = [(sname, send)]
    for l in range(L):
        if 2 * l + 1 > sender.order:
            hooks.append((f"blocks.{l}.attn.hook_z", freeze(f"blocks.{l}.attn.hook_z")))
        if not free_mlps and 2 * l + 2 > sender.order:
            hooks.append((f"blocks.{l}.hook_mlp_out", freeze(f"blocks.{l}.hook_mlp_out")))
    if receivers == "logits":
        with torch.no_grad(), tl_adapter.attached_hooks(model, hooks):
            return float(metric(model(base)))
    store = {}

    def keep(name):
        def hook(act, hook=None):
            store[name] = act.clone()
        return hook

    rnames = [patching.COMPONENTS[r.kind].hook_name(r.layer) for r in receivers]
    with torch.no_grad(), tl_adapter.attached_hooks(model, hooks + [(n, keep(n)) for n in set(rnames)]):
        model(base)

    def put(r, name):
        def hook(act, hook=None):
            out = act.clone()
            for p in range(act.shape[1]) if r.positions is None else r.positions:
                if r.head is None:
                    out[:, p] = store[name][:, p]
                else:
                    out[:, p, r.head] = store[name][:, p, r.head]
            return out
        return hook

    read = {}

    def save(act, hook=None):
        read["x"] = act.clone()

    with torch.no_grad(), tl_adapter.attached_hooks(
            model, [(n, put(r, n)) for r, n in zip(receivers, rnames)] + ([(metric_hook, save)] if metric_hook else [])):
        logits = model(base)
    return float(metric(read["x"] if metric_hook else logits))


def _pattern_metric(head):
    return lambda p: p[:, head, 1:, 0].mean()


@pytest.mark.parametrize(("kind", "free_mlps"), [("sinkinterp", False), ("sinkinterp", True), ("ht", False),
                                                  ("bridge", False)])
def test_batched_paths_equal_the_reference_one_sender_at_a_time(kind, free_mlps):
    L = 2 if kind == "bridge" else 3
    model = _model(kind, L)
    vocab = tl_adapter.model_dims(model)["d_vocab"]
    clean, corrupted = _pair(min(vocab, 50))
    clean_acts = patching.capture(model, clean, sorted({s.hook_name() for s in paths.senders_of(model, "blocks")}
                                                       | {s.hook_name() for s in paths.senders_of(model, "z")}))
    last = L - 1
    cases = [  # (receivers, metric hook, metric, senders)
        ("logits", None, _logit_metric, "blocks"),
        ([Receiver(last, "q", 1), Receiver(last, "k", 0)], f"blocks.{last}.attn.hook_pattern", _pattern_metric(1), "z"),
        ([(last, "v", None)], None, _logit_metric, "blocks"),
        # receivers at some positions only (the IOI paper's final-position queries)
        ([Receiver(last, "q", 1, (8,)), Receiver(last, "k", 0, (0, 4))], f"blocks.{last}.attn.hook_pattern",
         _pattern_metric(1), "blocks"),
    ]
    if free_mlps:  # only the MLPs change: the paths that go through them
        cases = cases[:1]
    for receivers, hook, metric, kind_s in cases:
        res = paths.path_patch(model, clean, corrupted, metric, senders=kind_s, receivers=receivers,
                               metric_hook=hook, free_mlps=free_mlps, batch_rows=7)
        recv = receivers if receivers == "logits" else [r if isinstance(r, Receiver) else Receiver(*r)
                                                        for r in receivers]
        for s, v in zip(res.senders, res.values):
            ref = _reference(model, corrupted, clean_acts, s, recv, metric, hook, free_mlps)
            assert v == pytest.approx(ref, rel=1e-9 if kind == "sinkinterp" else 1e-5, abs=1e-9), (receivers, s)
        with torch.no_grad():
            base = float(metric(patching.capture(model, corrupted, [hook])[hook] if hook else model(corrupted)))
        assert res.base == pytest.approx(base, rel=1e-6)
    # the paths carry something: not every value is the corrupted run's
    res = paths.path_patch(model, clean, corrupted, _logit_metric, senders="blocks", free_mlps=free_mlps)
    assert (abs(res.effects()) > 1e-6).sum() >= 2
    assert tl_adapter.count_attached_hooks(model) == 0  # passes stopped early leave no hook behind


def test_one_layer_with_free_mlps_is_activation_patching():
    """Nothing after a one-layer model's heads but its MLP and the unembedding: every path is the total
    effect, so path patching to the logits with the MLPs free equals patching.patch."""
    model = _model("sinkinterp", 1)
    clean, corrupted = _pair()
    res = paths.path_patch(model, clean, corrupted, _logit_metric, senders="z", free_mlps=True)
    act = patching.patch(model, clean, corrupted, "z", _logit_metric, by_pos=False, skip="none")
    torch.testing.assert_close(torch.tensor(res.by_head()[0]), torch.tensor(act.values[0]), rtol=1e-10, atol=1e-12)
    assert res.source == pytest.approx(act.clean) and res.base == pytest.approx(act.corrupted)
    assert res.normalized() == pytest.approx(act.normalized()[0])


@pytest.mark.parametrize("kind", ["sinkinterp", "ht"])
def test_nothing_frozen_is_activation_patching_and_free_attn_lets_later_heads_carry_it(kind):
    """With the MLPs and the attention free nothing after a sender is frozen: to the logits, every head's path
    is its total effect (patching.patch), in every layer. Attention free alone sits between: a layer-0 head's
    value differs from the direct path and from the total effect."""
    model = _model(kind, 3)
    clean, corrupted = _pair()
    act = patching.patch(model, clean, corrupted, "z", _logit_metric, by_pos=False, skip="none")
    both = paths.path_patch(model, clean, corrupted, _logit_metric, senders="z", free_mlps=True, free_attn=True)
    torch.testing.assert_close(torch.tensor(both.by_head()), torch.tensor(act.values), rtol=1e-9, atol=1e-10)
    direct = paths.path_patch(model, clean, corrupted, _logit_metric, senders="z")
    attn = paths.path_patch(model, clean, corrupted, _logit_metric, senders="z", free_attn=True)
    first = slice(0, tl_adapter.model_dims(model)["n_heads"])  # layer 0's heads: later blocks between them and the logits
    for other in (direct, both):
        assert np.abs(attn.values[first] - other.values[first]).max() > 1e-6
    last = slice(-tl_adapter.model_dims(model)["n_heads"], None)  # the last layer's heads: nothing after them but its MLP
    np.testing.assert_allclose(attn.values[last], direct.values[last], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sinkinterp", "ht"])
def test_logits_receiver_is_the_direct_effect_through_the_final_residual(kind):
    """The sender's change added to the last block's output, the final norm recomputed."""
    model = _model(kind, 3)
    clean, corrupted = _pair()
    for s in (Sender("attn_out", 0), Sender("mlp_out", 1), Sender("embed")):
        name = s.hook_name()
        delta = (patching.capture(model, clean, [name])[name] - patching.capture(model, corrupted, [name])[name])

        def add(act, hook=None, delta=delta):
            return act + delta

        with torch.no_grad(), tl_adapter.attached_hooks(model, [("blocks.2.hook_resid_post", add)]):
            ref = float(_logit_metric(model(corrupted)))
        res = paths.path_patch(model, clean, corrupted, _logit_metric, senders=[s])
        assert res.values[0] == pytest.approx(ref, rel=1e-9 if kind == "sinkinterp" else 1e-5)


@pytest.mark.parametrize("kind", ["sinkinterp", "ht"])
def test_qkv_receivers_are_the_heads_input_through_ln1(kind):
    """Receiving every head's q, k and v at layer 1 equals putting ln1's output of a run with the sender
    patched (and layer 0's MLP frozen) into the corrupted run: a different hook, the same path."""
    model = _model(kind, 2)
    clean, corrupted = _pair()
    name = "blocks.0.hook_attn_out"
    clean_attn = patching.capture(model, clean, [name])[name]
    mlp0 = patching.capture(model, corrupted, ["blocks.0.hook_mlp_out"])["blocks.0.hook_mlp_out"]
    kept = {}

    def keep(act, hook=None):
        kept["x"] = act.clone()

    with torch.no_grad(), tl_adapter.attached_hooks(model, [
            (name, lambda act, hook=None: clean_attn), ("blocks.0.hook_mlp_out", lambda act, hook=None: mlp0),
            ("blocks.1.ln1.hook_normalized", keep)]):
        model(corrupted)
    with torch.no_grad(), tl_adapter.attached_hooks(model, [("blocks.1.ln1.hook_normalized",
                                                            lambda act, hook=None: kept["x"])]):
        ref = float(_logit_metric(model(corrupted)))
    res = paths.path_patch(model, clean, corrupted, _logit_metric, senders=[Sender("attn_out", 0)],
                           receivers=[(1, "q"), (1, "k"), (1, "v")])
    assert res.values[0] == pytest.approx(ref, rel=1e-9 if kind == "sinkinterp" else 1e-5)


def test_positions_unreachable_senders_and_equal_runs():
    model = _model("sinkinterp", 3)
    clean, corrupted = _pair()
    # patched at the first token only: equal to the reference patched there
    clean_acts = patching.capture(model, clean, ["blocks.0.attn.hook_z"])
    recv = [Receiver(2, "k", 1)]
    res = paths.path_patch(model, clean, corrupted, _pattern_metric(2), senders=[Sender("z", 0, 3)],
                           receivers=recv, positions=[0], metric_hook="blocks.2.attn.hook_pattern")
    ref = _reference(model, corrupted, clean_acts, Sender("z", 0, 3), recv, _pattern_metric(2),
                     "blocks.2.attn.hook_pattern", positions=[0])
    assert res.values[0] == pytest.approx(ref, rel=1e-10) and res.positions == [0]
    # senders at or after the receivers' layer reach nothing: the base value exactly
    res = paths.path_patch(model, clean, corrupted, _logit_metric, senders="blocks", receivers=[(1, "q")])
    late = [i for i, s in enumerate(res.senders) if s.order >= 3]
    assert late and all(res.values[i] == res.base for i in late)
    assert any(res.values[i] != res.base for i in range(len(res.senders)) if i not in late)
    # clean == corrupted: nothing changes anywhere
    res = paths.path_patch(model, corrupted, corrupted, _logit_metric, senders="blocks")
    torch.testing.assert_close(torch.tensor(res.values), torch.full((len(res.senders),), res.base,
                                                                     dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_ablations():
    model = _model("sinkinterp", 3)
    tokens = _tokens(5)
    s = Sender("mlp_out", 0)
    name = s.hook_name()
    act = patching.capture(model, tokens, [name])[name]
    expected = {"zero": torch.zeros_like(act),
                "mean": act[:, 1:].mean((0, 1), keepdim=True).expand_as(act),
                "position_mean": act.mean(0, keepdim=True).expand_as(act)}
    for how, value in expected.items():
        res = paths.path_ablate(model, tokens, _logit_metric, ablation=how, senders=[s])
        ref = _reference(model, tokens, {name: value}, s, "logits", _logit_metric)
        assert res.values[0] == pytest.approx(ref, rel=1e-10), how
        assert res.source is None and res.how == how
    # one sequence: its own mean by position is itself
    res = paths.path_ablate(model, tokens[:1], _logit_metric, ablation="position_mean", senders="blocks")
    assert res.values == pytest.approx([res.base] * len(res.senders), rel=1e-12)
    # the mean at token 1 only: token 1's write made an ordinary token's
    res = paths.path_ablate(model, tokens, _logit_metric, senders=[s], positions=[0])
    value = act.clone()
    value[:, 0] = act[:, 1:].mean((0, 1))
    assert res.values[0] == pytest.approx(_reference(model, tokens, {name: value}, s, "logits", _logit_metric,
                                                     positions=[0]), rel=1e-10)
    with pytest.raises(ValueError, match="normalize"):
        res.normalized()


def test_results_and_errors():
    model = _model("sinkinterp", 3)
    clean, corrupted = _pair()
    res = paths.path_patch(model, clean, corrupted, _logit_metric, senders="z")
    assert res.by_head().shape == (3, 4) and res.labels[:2] == ["L0H0", "L0H1"]
    d = res.to_dict()
    assert d["receivers"] == "logits" and len(d["values"]) == 12 and d["how"] == "clean"
    assert [s.label for s in paths.senders_of(model, "blocks", layers=[1])] == ["embed", "attn 1", "mlp 1"]
    with pytest.raises(ValueError, match="no head"):
        paths.path_patch(model, clean, corrupted, _logit_metric, senders="blocks").by_head()
    bad = [
        (dict(senders="heads"), "senders: got 'heads'"),
        (dict(senders=[]), "senders: empty"),
        (dict(senders=[Sender("z", 0)]), "take a head"),
        (dict(senders=[Sender("mlp_out", 0, 1)]), "take no head"),
        (dict(senders=[Sender("z", 5, 0)]), "layer 5 is outside"),
        (dict(senders=[Sender("z", 0, 9)]), "head 9 is outside"),
        (dict(senders=[Sender("resid_pre", 0)]), "kind 'resid_pre'"),
        (dict(receivers="q"), "receivers: got 'q'"),
        (dict(receivers=[]), "receivers: empty"),
        (dict(receivers=[(1, "z")]), "kind 'z'"),
        (dict(receivers=[(3, "q")]), "layer 3 is outside"),
        (dict(receivers=[(1, "k", 2)]), "head 2 is outside the model's 2 key/value heads"),
        (dict(metric_hook="blocks.1.attn.hook_pattern"), "receivers='logits'"),
        (dict(receivers=[(1, "q")], metric_hook="blocks.1.attn.hook_nothing"), "no hook"),
        (dict(receivers=[(1, "q")], metric_hook=[]), "metric_hook: empty"),
        (dict(positions=[9]), "positions: 9 is outside"),
        (dict(positions=[]), "positions: empty"),
        (dict(batch_rows=0), "batch_rows"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            paths.path_patch(model, clean, corrupted, _logit_metric, **kwargs)
    with pytest.raises(TypeError, match="free_mlps"):
        paths.path_patch(model, clean, corrupted, _logit_metric, free_mlps=1)
    with pytest.raises(ValueError, match="same shape"):
        paths.path_patch(model, clean, corrupted[:2], _logit_metric)
    with pytest.raises(ValueError, match="ablation: got 'shuffle'"):
        paths.path_ablate(model, clean, _logit_metric, ablation="shuffle")


def _sink_model():
    """A 3-layer model with heads that lean on token 1 (threshold 0.2 finds some after layer 0)."""
    return _model("sinkinterp", 3)


def test_sink_paths_equal_the_reference_on_both_sides():
    model = _sink_model()
    tokens = _tokens(7, shape=(4, 10))
    res = paths.sink_paths(model, tokens, threshold=0.2)
    pats = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(3)])
    found = {l: [h for h in range(4) if float(pats[f"blocks.{l}.attn.hook_pattern"][:, h, 1:, 0].mean()) > 0.2]
             for l in (1, 2)}
    assert [(r["layer"], r["heads"]) for r in res["layers"]] == [(l, hs) for l, hs in found.items() if hs]
    assert res["layers"], "the test model should have sink heads after layer 0"
    names = sorted({s.hook_name() for s in paths.senders_of(model, "blocks")})
    acts = patching.capture(model, tokens, names)
    for row in res["layers"]:
        l, heads = row["layer"], row["heads"]
        hook = f"blocks.{l}.attn.hook_pattern"

        def metric(p, heads=heads):
            return p[:, heads, 1:, 0].double().mean()

        assert row["base"] == pytest.approx(float(metric(pats[hook])), rel=1e-12)
        for side in ("key", "query"):
            d = row[side]
            if side == "key":  # the model's 2 key/value heads: head h reads key head h // 2; token 1's key only
                recv = [Receiver(l, "k", g) for g in sorted({h // 2 for h in heads})]
                assert all(r.endswith(".k@0") for r in d["receivers"].split(", "))
                new = {n: x.clone() for n, x in acts.items()}
                for n, x in new.items():
                    x[:, 0] = acts[n][:, 1:].mean((0, 1))
                pos = [0]
            else:
                recv = [Receiver(l, "q", h) for h in heads]
                new = {n: torch.zeros_like(a) for n, a in acts.items()}
                pos = list(range(1, 10))
            senders = [s for s in paths.senders_of(model, "blocks") if s.order < 2 * l + 1]
            assert d["senders"] == [s.label for s in senders]
            for s, v in zip(senders, d["values"]):
                assert v == pytest.approx(_reference(model, tokens, new, s, recv, metric, hook, positions=pos),
                                          abs=1e-8), (l, side, s)  # to_dict keeps 8 decimals
            # the whole residual input ablated: the receivers computed from it, the rest of the run as it was
            name = f"blocks.{l}.hook_resid_pre"
            resid = patching.capture(model, tokens, [name])[name]
            edited = resid.clone()
            edited[:, pos] = resid[:, 1:].mean((0, 1)) if side == "key" else 0.0
            rnames = [patching.COMPONENTS[r.kind].hook_name(l) for r in recv]
            kept = {}
            with torch.no_grad(), tl_adapter.attached_hooks(
                    model, [(name, lambda a, hook=None, edited=edited: edited)]
                    + [(n, lambda a, hook=None, n=n, kept=kept: kept.__setitem__(n, a.clone())) for n in set(rnames)]):
                model(tokens)
            read = {}

            def put(r, n, kept=kept):
                def fn(act, hook=None):
                    out = act.clone()
                    out[:, :, r.head] = kept[n][:, :, r.head]
                    return out
                return fn

            with torch.no_grad(), tl_adapter.attached_hooks(
                    model, [(n, put(r, n)) for r, n in zip(recv, rnames)]
                    + [(hook, lambda a, hook=None, read=read: read.__setitem__("p", a.clone()))]):
                model(tokens)
            assert d["together"] == pytest.approx(float(metric(read["p"])), rel=1e-9)
    text = paths.sink_paths_summary(res)
    assert f"L{res['layers'][0]['layer']} heads" in text and "key: all" in text and "query: all" in text
    # one side, one layer
    only = paths.sink_paths(model, tokens, threshold=0.2, sides=["query"], layers=[res["layers"][-1]["layer"]])
    assert len(only["layers"]) == 1 and "key" not in only["layers"][0]
    assert only["layers"][0]["query"]["values"] == pytest.approx(res["layers"][-1]["query"]["values"], rel=1e-12)
    # the MLPs free: the embedding's path through them counts
    last = res["layers"][-1]
    free = paths.sink_paths(model, tokens, threshold=0.2, sides=["key"], layers=[last["layer"]], free_mlps=True)
    assert free["free_mlps"] is True and "MLPs after the sender recompute" in paths.sink_paths_summary(free)
    new = {n: x.clone() for n, x in acts.items()}
    new["hook_embed"][:, 0] = acts["hook_embed"][:, 1:].mean((0, 1))
    heads = last["heads"]
    ref = _reference(model, tokens, new, Sender("embed"), [Receiver(last["layer"], "k", g) for g in
                                                            sorted({h // 2 for h in heads})],
                     lambda p: p[:, heads, 1:, 0].double().mean(), f"blocks.{last['layer']}.attn.hook_pattern",
                     free_mlps=True, positions=[0])
    assert free["layers"][0]["key"]["values"][0] == pytest.approx(ref, abs=1e-8)
    assert free["layers"][0]["key"]["values"][0] != pytest.approx(last["key"]["values"][0], abs=1e-6)
    from sinkinterp import figures

    fig = figures.sink_paths_figure(res, title="t")
    assert len(fig.axes) == 4  # two panels and their colour bars
    assert fig.axes[2].get_ylabel() == "Δ mean weight on token 1"
    assert fig.axes[0].get_title() == "key side: sender mean-ablated at token 1, into their keys"


def test_sink_paths_errors():
    from sinkinterp import figures

    model = _sink_model()
    tokens = _tokens(7, shape=(2, 6))
    for kwargs, match in ((dict(threshold=1.5), "threshold"), (dict(sides=["value"]), "sides"),
                          (dict(sides=[]), "sides"), (dict(key_ablation="one"), "key_ablation"),
                          (dict(query_ablation="one"), "query_ablation"), (dict(layers=[0]), "layers: 0"),
                          (dict(layers=[3]), "layers: 3"), (dict(senders="heads"), "senders: got")):
        with pytest.raises(ValueError, match=match):
            paths.sink_paths(model, tokens, **kwargs)
    empty = paths.sink_paths(model, tokens, threshold=0.99)
    assert empty["layers"] == [] and "no sink heads" in paths.sink_paths_summary(empty)
    assert empty["receiver_layers"] is None
    with pytest.raises(ValueError, match="senders: got 'heads'"):  # checked also where no layer has sink heads
        paths.sink_paths(model, tokens, threshold=0.99, senders="heads")
    with pytest.raises(ValueError, match="no layer with sink heads"):
        figures.sink_paths_figure(empty)
    with pytest.raises(ValueError, match="sink_paths"):
        figures.sink_paths_figure({"x": 1})


@pytest.mark.shape_checks_off  # a whole study; this file's other tests run its functions checked
def test_cli_paths_writes_the_study_and_refuses_bad_input(tmp_path, capsys):
    import json

    from sinkinterp import cli

    out = tmp_path / "p"
    assert cli.main(["paths", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["layers"] == [3] and config["key_ablation"] == "mean" and config["query_ablation"] == "zero"
    assert res["num_seqs"] == 2 and res["receiver_layers"] == [3]
    assert [r["layer"] for r in res["layers"]] == [3]  # the default model (toy-softmax) sinks there with BOS
    assert (out / "paths.png").stat().st_size > 10_000
    assert len(res["layers"][0]["key"]["values"]) == 7  # the embedding, attention and MLP of layers 0..2
    assert "direct paths into the sink heads" in capsys.readouterr().out
    # nothing frozen: each sender's total effect on the sink heads' keys
    tot = tmp_path / "total"
    assert cli.main(["paths", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3", "--sides", "key",
                     "--free-mlps", "--free-attn", "--no-figures", "--out", str(tot)]) == 0
    config = json.loads((tot / "config.json").read_text())
    assert config["free_attn"] and config["free_mlps"] and json.loads((tot / "results.json").read_text())["free_attn"]
    assert "the attention layers after the sender recompute" in capsys.readouterr().out
    # the shipped k*/v* model: its slot is the sink (--sink auto), the query side only
    kv = tmp_path / "kv"
    assert cli.main(["paths", "--model", "toy-kv-bias", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos",
                     "--layers", "1", "--out", str(kv)]) == 0
    res = json.loads((kv / "results.json").read_text())
    assert res["sink"] == "slot" and res["sides"] == ["query"] and json.loads((kv / "config.json").read_text())["sink"] == "slot"
    assert "mean weight on the bias slot" in capsys.readouterr().out
    # the neurons of MLP 0 (the default model's has 344), layer 3's key side
    nr = tmp_path / "n"
    assert cli.main(["paths", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3", "--sides", "key",
                     "--senders", "neuron", "--sender-layers", "0", "--out", str(nr)]) == 0
    res = json.loads((nr / "results.json").read_text())
    assert json.loads((nr / "config.json").read_text())["sender_layers"] == [0]
    assert res["senders"] == [f"L0N{u}" for u in range(344)] and len(res["layers"][0]["key"]["values"]) == 344
    # groups of neurons sent together, after the kind's senders
    gr = tmp_path / "g"
    assert cli.main(["paths", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3", "--sides", "key",
                     "--senders", "mlp_out", "--sender-layers", "0", "--neurons", "0:253", "0:253,261", "0:~253",
                     "--out", str(gr)]) == 0
    res = json.loads((gr / "results.json").read_text())
    assert res["senders"] == ["mlp 0", "L0N253", "L0N253+261", "L0 all but N253"]
    assert json.loads((gr / "config.json").read_text())["neurons"] == ["0:253", "0:253,261", "0:~253"]
    one = dict(zip(json.loads((nr / "results.json").read_text())["senders"],
                   json.loads((nr / "results.json").read_text())["layers"][0]["key"]["values"]))
    assert res["layers"][0]["key"]["values"][1] == pytest.approx(one["L0N253"], abs=1e-8)
    # the search: MLP 0's neuron 253 leads, and 261, nearly nothing alone, is its backup (docs/sink-paths.md)
    se = tmp_path / "s"
    assert cli.main(["paths", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3", "--sides", "key",
                     "--senders", "mlp_out", "--sender-layers", "0", "--search-neurons", "0", "--search-size", "3",
                     "--search-triples", "4", "--search-quads", "5", "--out", str(se)]) == 0
    search = json.loads((se / "results.json").read_text())["layers"][0]["key"]["search"][0]
    assert [b["neurons"] for b in search["best"]][:2] == [[253], [253, 261]] and len(search["triples"]) == 4
    assert json.loads((se / "config.json").read_text())["search_triples"] == 4
    assert json.loads((se / "config.json").read_text())["search_quads"] == 5
    assert search["quads"] == []  # groups of four come at size 4, past this search's largest
    assert search["alone"][261] > 0.1 * search["alone"][253] and search["best"][1]["share"] > 0.75
    key = res["layers"][0]["key"]  # N253 kept alone (0:~253): the search's second reading of it
    assert key["values"][3] - key["base"] == pytest.approx(search["others"][253], abs=1e-8)
    assert json.loads((se / "config.json").read_text())["search_neurons"] == [0]
    assert (se / "search.png").stat().st_size > 10_000 and not (gr / "search.png").exists()
    assert "backup pair N253+261" in capsys.readouterr().out
    base = ["paths", "--num-seqs", "2", "--seq-len", "8", "--out", str(tmp_path / "x")]
    assert cli.main([*base, "--layers", "2", "--search-neurons", "2"]) == 2
    assert "search_mlps: MLP 2 is not before a sink layer read" in capsys.readouterr().err
    for bad in ("0-253", "0:", "a:1", "0:-1", "0:~", "~0:1"):
        with pytest.raises(SystemExit):
            cli.main([*base, "--neurons", bad])
        assert "LAYER:N1,N2" in capsys.readouterr().err
    assert cli.main([*base, "--neurons", "0:~" + ",".join(map(str, range(344)))]) == 2
    assert "leaves no neuron of blocks.0.mlp" in capsys.readouterr().err
    assert cli.main([*base, "--neurons", "0:344"]) == 2
    assert "neuron 344 is outside blocks.0.mlp" in capsys.readouterr().err
    assert cli.main([*base, "--senders", "mlp_out", "--sender-layers", "3", "--layers", "2"]) == 2
    assert "layer 2's heads come before every sender" in capsys.readouterr().err
    # no sink heads (no BOS, a short window): the summary says so, no figure, the results written
    none = tmp_path / "none"
    assert cli.main(["paths", "--num-seqs", "2", "--seq-len", "8", "--layers", "2", "--threshold", "0.99",
                     "--out", str(none)]) == 0
    assert json.loads((none / "results.json").read_text())["layers"] == [] and not (none / "paths.png").exists()
    assert "no sink heads" in capsys.readouterr().out
    assert cli.main([*base, "--model", "toy-kv-bias", "--sink", "slot", "--sides", "key"]) == 2
    assert "only the query side" in capsys.readouterr().err
    for bad, flag in ((["--layers", "9"], "layers"), (["--k-max", "3"], "--k-max")):
        assert cli.main([*base, *bad]) == 2
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--sides", "value"])
    assert not (tmp_path / "x" / "results.json").exists()


@pytest.mark.parametrize("kind", ["sinkinterp", "ht"])
def test_passes_start_at_the_first_sender_and_the_first_receiver(kind):
    """Where the model can start a pass at a block, pass 1 starts at its senders' layer and pass 2 at the
    receivers', from the base run's residual stream: block 0 runs only in the clean and corrupted runs, and
    the values are the reference's."""
    model = _model(kind, 3)
    clean, corrupted = _pair()
    calls = {"n": 0}
    handle = model.blocks[0].register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        senders = [Sender("z", 1, h) for h in range(4)] + [Sender("mlp_out", 1)]
        res = paths.path_patch(model, clean, corrupted, _pattern_metric(0), senders=senders,
                               receivers=[(2, "q", 0), (2, "k", None)], metric_hook="blocks.2.attn.hook_pattern",
                               batch_rows=6)
    finally:
        handle.remove()
    assert calls["n"] == 2  # the clean and the corrupted run; no sender's pass ran block 0
    clean_acts = patching.capture(model, clean, ["blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"])
    for s, v in zip(res.senders, res.values):
        ref = _reference(model, corrupted, clean_acts, s, [Receiver(2, "q", 0), Receiver(2, "k")], _pattern_metric(0),
                         "blocks.2.attn.hook_pattern")
        assert v == pytest.approx(ref, rel=1e-9 if kind == "sinkinterp" else 1e-5, abs=1e-9), s
    assert (abs(res.effects()) > 1e-9).any()


def test_sink_paths_on_the_bias_slot():
    """A k*/v* model: the sink heads by their weight on the slot (hook_bias_pattern), the query side only,
    each sender's value the reference's; token 1 and the slot are told apart, and the key side refused."""
    model = SinkTransformer(tiny_config(n_layers=3, attn_bias="kv")).double().eval()
    tokens = _tokens(3, shape=(3, 9))
    res = paths.sink_paths(model, tokens, threshold=0.1, sink="auto")
    assert res["sink"] == "slot" and res["sides"] == ["query"]
    bias = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_bias_pattern" for l in range(3)])
    found = [(l, [h for h in range(4) if float(bias[f"blocks.{l}.attn.hook_bias_pattern"][:, h, 1:].mean()) > 0.1])
             for l in (1, 2)]
    assert [(r["layer"], r["heads"]) for r in res["layers"]] == [(l, hs) for l, hs in found if hs]
    assert res["layers"], "the test model should lean on its slot after layer 0"
    names = sorted({s.hook_name() for s in paths.senders_of(model, "blocks")})
    zeros = {n: torch.zeros_like(x) for n, x in patching.capture(model, tokens, names).items()}
    for row in res["layers"]:
        l, heads = row["layer"], row["heads"]
        hook = f"blocks.{l}.attn.hook_bias_pattern"
        assert "key" not in row and row["base"] == pytest.approx(float(bias[hook][:, heads, 1:].mean()), rel=1e-12)
        senders = [s for s in paths.senders_of(model, "blocks") if s.order < 2 * l + 1]
        for s, v in zip(senders, row["query"]["values"]):
            ref = _reference(model, tokens, zeros, s, [Receiver(l, "q", h) for h in heads],
                             lambda p, heads=heads: p[:, heads, 1:].double().mean(), hook, positions=range(1, 9))
            assert v == pytest.approx(ref, abs=1e-8), (l, s)
    assert "mean weight on the bias slot" in paths.sink_paths_summary(res)
    from sinkinterp import figures

    fig = figures.sink_paths_figure(res)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "Δ mean weight on the bias slot"
    assert fig.axes[0].get_title() == "query side: sender zero-ablated at queries 2..T, into their queries"
    first = paths.sink_paths(model, tokens, threshold=0.1, sink="first")
    assert first["sink"] == "first" and first["sides"] == ["key", "query"]
    with pytest.raises(ValueError, match="only the query side"):
        paths.sink_paths(model, tokens, sink="slot", sides=["key", "query"])
    with pytest.raises(ValueError, match="needs a model with a bias slot"):
        paths.sink_paths(_sink_model(), tokens, sink="slot")
    with pytest.raises(ValueError, match="sink: got 'k'"):
        paths.sink_paths(model, tokens, sink="k")


@pytest.mark.parametrize("kind", ["learned", "gpt2_bridge"])
def test_a_learned_position_embedding_is_a_sender(kind):
    """Where the model adds a position embedding (sinkinterp's learned positions, a GPT-2 bridge), "blocks"
    has it as a sender: at token 1 made an ordinary position's, its path into the logits as the reference's."""
    from conftest import tiny_gpt2

    from sinkinterp.models.testing import tiny_model

    model = tiny_model("learned") if kind == "learned" else tl_adapter.boot_bridge(tiny_gpt2(), word_tokenizer(61), "g")
    labels = [s.label for s in paths.senders_of(model, "blocks")]
    assert labels[:3] == ["embed", "pos_embed", "attn 0"]
    tokens = _tokens(4)
    name = "hook_pos_embed"
    act = patching.capture(model, tokens, [name])[name]
    value = act.clone()
    value[:, 0] = act[:, 1:].mean((0, 1))
    def at_first(logits):  # the direct path from token 1's residual reaches token 1's logits only
        return (logits[:, 0, 3] - logits[:, 0, 5]).mean()

    res = paths.path_ablate(model, tokens, at_first, senders=[Sender("pos_embed")], positions=[0])
    ref = _reference(model, tokens, {name: value}, Sender("pos_embed"), "logits", at_first, positions=[0])
    assert res.values[0] == pytest.approx(ref, rel=1e-9 if kind == "learned" else 1e-5)
    assert res.values[0] != pytest.approx(res.base, abs=1e-6)
    # and the later positions' logits do not see it along the direct path
    assert paths.path_ablate(model, tokens, _logit_metric, senders=[Sender("pos_embed")], positions=[0]).effects()[0] == 0


def test_a_rotary_bridge_has_no_position_sender():
    model = _model("bridge", 2)
    assert tl_adapter.has_hook(model, "hook_pos_embed")  # listed, never fired
    assert "pos_embed" not in [s.label for s in paths.senders_of(model, "blocks")]
    with pytest.raises(RuntimeError, match="hook_pos_embed"):
        paths.path_ablate(model, _tokens(4), _logit_metric, senders=[Sender("pos_embed")])


def _some_neurons(model):
    """A few neurons of every layer's MLP: the first, one in the middle, the last, and two sent together."""
    out = []
    for l in range(tl_adapter.model_dims(model)["n_layers"]):
        d = tl_adapter.mlp_out_weight(model, l).shape[0]
        out += [*(Sender("neuron", l, neuron=u) for u in (0, d // 2, d - 1)), Sender("neuron", l, neuron=(1, d - 2))]
    return out


@pytest.mark.parametrize("kind", ["sinkinterp", "ht", "bridge"])
def test_neuron_senders_equal_the_reference(kind):
    """One MLP neuron (a unit of hook_post) as the sender: its clean value put in, what it writes through
    W_out sent along the residual stream alone; the MLP output of its own layer recomputes (it carries the
    neuron's write), every later one is frozen."""
    L = 2 if kind == "bridge" else 3
    model = _model(kind, L)
    vocab = tl_adapter.model_dims(model)["d_vocab"]
    clean, corrupted = _pair(min(vocab, 50))
    senders = _some_neurons(model)
    clean_acts = patching.capture(model, clean, sorted({s.hook_name() for s in senders}))
    last = L - 1
    for receivers, hook, metric in (("logits", None, _logit_metric),
                                    ([Receiver(last, "q", 1), Receiver(last, "k", 0)],
                                     f"blocks.{last}.attn.hook_pattern", _pattern_metric(1))):
        res = paths.path_patch(model, clean, corrupted, metric, senders=senders, receivers=receivers,
                               metric_hook=hook, batch_rows=5)
        assert res.labels[:2] == ["L0N0", f"L0N{senders[1].neuron}"]
        for s, v in zip(res.senders, res.values):
            if receivers != "logits" and s.layer >= last:
                assert v == res.base  # an MLP at or after the receivers' layer cannot reach them
                continue
            ref = _reference(model, corrupted, clean_acts, s, receivers, metric, hook)
            assert v == pytest.approx(ref, rel=1e-9 if kind == "sinkinterp" else 1e-5, abs=1e-9), (receivers, s)
        assert (abs(res.effects()) > 1e-7).sum() >= 2  # the neurons' paths carry something
    assert tl_adapter.count_attached_hooks(model) == 0


def test_all_neurons_of_a_layer_at_once_are_the_mlp_sender():
    """Every neuron of one MLP sent together is its output sent (the MLP output is W_out of hook_post), at
    every position and at some; and a neuron that writes nothing (its W_out row zeroed) sends nothing."""
    model = _model("sinkinterp", 3)
    clean, corrupted = _pair()
    d = tl_adapter.mlp_out_weight(model, 1).shape[0]
    for pos in (None, [0, 2, 8]):
        for receivers, hook, metric in (("logits", None, _logit_metric),
                                        ([Receiver(2, "k", 0)], "blocks.2.attn.hook_pattern", _pattern_metric(1))):
            res = paths.path_patch(model, clean, corrupted, metric, receivers=receivers, metric_hook=hook,
                                   positions=pos, senders=[Sender("mlp_out", 1), Sender("neuron", 1, neuron=tuple(range(d))),
                                                           Sender("neuron", 1, neuron=tuple(range(0, d, 2)))])
            assert res.labels[1] == "L1N" + "+".join(map(str, range(d)))
            assert res.values[1] == pytest.approx(res.values[0], rel=1e-10) and abs(res.effects()[0]) > 1e-6
            assert abs(res.values[2] - res.values[0]) > 1e-8  # half the neurons are not the MLP
    d = tl_adapter.mlp_out_weight(model, 1).shape[0]
    with torch.no_grad():
        tl_adapter.mlp_out_weight(model, 1)[5] = 0.0
    res = paths.path_patch(model, clean, corrupted, _logit_metric,
                           senders=[Sender("neuron", 1, neuron=5), Sender("neuron", 1, neuron=6)])
    assert res.values[0] == pytest.approx(res.base, abs=1e-12) and abs(res.effects()[1]) > 1e-9
    assert [s.label for s in paths.senders_of(model, "neuron", layers=[2])] == [f"L2N{u}" for u in range(d)]
    for kwargs, match in ((dict(senders=[Sender("neuron", 1)]), "take a neuron"),
                          (dict(senders=[Sender("neuron", 1, neuron=(2, 2))]), "tuple of distinct neurons"),
                          (dict(senders=[Sender("neuron", 1, neuron=())]), "tuple of distinct neurons"),
                          (dict(senders=[Sender("neuron", 1, neuron=(2, -1))]), "neuron -1 is outside"),
                          (dict(senders=[Sender("mlp_out", 1, neuron=3)]), "take no neuron"),
                          (dict(senders=[Sender("neuron", 1, neuron=d)]), f"neuron {d} is outside blocks.1.mlp")):
        with pytest.raises(ValueError, match=match):
            paths.path_patch(model, clean, corrupted, _logit_metric, **kwargs)


@pytest.mark.parametrize("kind", ["sinkinterp", "ht"])
def test_a_complement_sender_is_its_tuple_of_every_other_neuron(kind):
    """Sender(..., complement=True) is every neuron of the MLP but the named ones, sent together: the same
    value as the explicit tuple, patched and ablated, at every position and at some (the neuron search keeps
    each neuron alone this way, without d_mlp tuples of d_mlp - 1 units)."""
    model = _model(kind, 3)
    clean, corrupted = _pair()
    d = tl_adapter.mlp_out_weight(model, 1).shape[0]
    units = tuple(range(d))
    comp = [Sender("neuron", 1, neuron=5, complement=True), Sender("neuron", 1, neuron=(0, d - 1), complement=True),
            Sender("neuron", 0, neuron=tuple(range(1, d)), complement=True)]
    full = [Sender("neuron", 1, neuron=units[:5] + units[6:]), Sender("neuron", 1, neuron=units[1:d - 1]),
            Sender("neuron", 0, neuron=0)]
    assert [s.label for s in comp] == ["L1 all but N5", f"L1 all but N0+{d - 1}",
                                       "L0 all but N" + "+".join(map(str, range(1, d)))]
    for pos in (None, [0, 8]):
        for receivers, hook, metric in (("logits", None, _logit_metric),
                                        ([Receiver(2, "k")], "blocks.2.attn.hook_pattern", _pattern_metric(1))):
            kw = dict(receivers=receivers, metric_hook=hook, positions=pos, batch_rows=4)
            res = paths.path_patch(model, clean, corrupted, metric, senders=comp + full, **kw)
            got = res.values
            assert got[:3] == pytest.approx(got[3:], rel=1e-10, abs=1e-12)
            assert abs(got[0] - got[1]) > 1e-9 and abs(got[0] - res.base) > 1e-6  # each complement is its own
            abl = paths.path_ablate(model, corrupted, metric, ablation="zero", senders=comp + full, **kw).values
            assert abl[:3] == pytest.approx(abl[3:], rel=1e-10, abs=1e-12)
    for sender, match in ((Sender("neuron", 1, neuron=units, complement=True), "leaves no neuron"),
                          (Sender("mlp_out", 1, complement=True), "True for 'neuron' senders only"),
                          (Sender("neuron", 1, neuron=(3, 3), complement=True), "tuple of distinct neurons"),
                          (Sender("neuron", 1, neuron=d, complement=True), f"neuron {d} is outside")):
        with pytest.raises(ValueError, match=match):
            paths.path_patch(model, clean, corrupted, _logit_metric, senders=[sender])
    with pytest.raises(ValueError, match="needs d_mlp"):
        comp[0].cell(None)
    assert comp[0].cell((0,), 4) == patching.Cell(1, (0, 1, 2, 3), (0,))


def test_sink_paths_with_neuron_senders_and_sender_layers():
    model = _sink_model()
    tokens = _tokens(7, shape=(4, 10))
    full = paths.sink_paths(model, tokens, threshold=0.2)
    last = full["layers"][-1]["layer"]
    res = paths.sink_paths(model, tokens, threshold=0.2, senders="neuron", sender_layers=[1], sides=["key"])
    # layer 1's heads come before layer 1's MLP: only later layers are read
    assert [r["layer"] for r in res["layers"]] == [r["layer"] for r in full["layers"] if r["layer"] > 1]
    assert res["sender_layers"] == [1] and res["senders_kind"] == "neuron"
    row = res["layers"][-1]
    d_mlp = tl_adapter.mlp_out_weight(model, 1).shape[0]
    assert row["key"]["senders"] == [f"L1N{u}" for u in range(d_mlp)]
    assert row["key"]["together"] == pytest.approx(full["layers"][-1]["key"]["together"], rel=1e-12)
    heads = row["heads"]
    hook = f"blocks.{last}.attn.hook_pattern"
    acts = patching.capture(model, tokens, ["blocks.1.mlp.hook_post"])
    new = {n: x.clone() for n, x in acts.items()}
    new["blocks.1.mlp.hook_post"][:, 0] = acts["blocks.1.mlp.hook_post"][:, 1:].mean((0, 1))
    recv = [Receiver(last, "k", g) for g in sorted({h // 2 for h in heads})]
    for u in (0, 7, d_mlp - 1):
        ref = _reference(model, tokens, new, Sender("neuron", 1, neuron=u), recv,
                         lambda p: p[:, heads, 1:, 0].double().mean(), hook, positions=[0])
        assert row["key"]["values"][u] == pytest.approx(ref, abs=1e-8)
    # a list of senders; the errors
    mixed = paths.sink_paths(model, tokens, threshold=0.2, senders=[Sender("embed"), Sender("neuron", 0, neuron=3)],
                             sides=["query"], layers=[last])
    assert mixed["senders"] == ["embed", "L0N3"] and mixed["senders_kind"] == "list"
    for kwargs, match in ((dict(senders="neuron", sender_layers=[2], layers=[1]), "layer 1's heads come before"),
                          (dict(senders="neuron", sender_layers=[2]), "no layer's heads come after"),
                          (dict(senders=[Sender("embed")], sender_layers=[0]), "sender_layers: only with a kind"),
                          (dict(senders="z", sender_layers=[4]), "layers: 4 is outside")):
        with pytest.raises(ValueError, match=match):
            paths.sink_paths(model, tokens, threshold=0.2, **kwargs)
    from sinkinterp import figures

    fig = figures.sink_paths_figure(res, max_senders=10)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    eff = {n: abs(v - row["key"]["base"]) for n, v in zip(row["key"]["senders"], row["key"]["values"])}
    top = sorted(eff, key=lambda n: -eff[n])[:10]
    assert len(labels) == 11 and labels[-1] == "all" and set(labels[:-1]) == set(top)
    assert f"the 10 of {d_mlp} senders with the largest effects" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="max_senders"):
        figures.sink_paths_figure(res, max_senders=0)


def test_receivers_at_chosen_positions():
    """A receiver at every position is the receiver without positions; at some positions it takes the change
    there only (a query row the metric does not read changes nothing); its label names them; bad positions
    are refused."""
    model = _model("sinkinterp", 3)
    clean, corrupted = _pair()
    hook = "blocks.2.attn.hook_pattern"

    def row_metric(p):  # query 8's weight on token 1, head 1
        return p[:, 1, 8, 0].mean()

    every = paths.path_patch(model, clean, corrupted, row_metric, senders="blocks", receivers=[Receiver(2, "q", 1)],
                             metric_hook=hook)
    listed = paths.path_patch(model, clean, corrupted, row_metric, senders="blocks",
                              receivers=[Receiver(2, "q", 1, tuple(range(9)))], metric_hook=hook)
    np.testing.assert_allclose(listed.values, every.values, rtol=1e-12)
    at8 = paths.path_patch(model, clean, corrupted, row_metric, senders="blocks",
                           receivers=[Receiver(2, "q", 1, [8, 8])], metric_hook=hook)
    np.testing.assert_allclose(at8.values, every.values, rtol=1e-12)  # query 8 is the only row the metric reads
    assert at8.receivers == "L2H1.q@8"
    elsewhere = paths.path_patch(model, clean, corrupted, row_metric, senders="blocks",
                                 receivers=[Receiver(2, "q", 1, (3, 5))], metric_hook=hook)
    assert np.all(elsewhere.values == elsewhere.base) and np.any(every.effects() != 0)
    for receivers, match in (([Receiver(2, "q", 1, ())], "has no positions"),
                             ([Receiver(2, "q", 1, (9,))], "position 9 of L2H1.q@9 is outside the sequence")):
        with pytest.raises(ValueError, match=match):
            paths.path_patch(model, clean, corrupted, row_metric, receivers=receivers, metric_hook=hook)


def test_bridge_passes_continue_from_the_recorded_base_run():
    """On a bridge, the base run is recorded through its Hugging Face model and a pass that starts at a later
    block replays the blocks before it: block 0's attention runs in the clean and base runs and in the passes
    that start at it, nowhere else; the values are the reference's."""
    model = _model("bridge", 2)
    clean, corrupted = _pair(50)

    def late():  # one pass of five senders' copies (batch_rows 15: a chunk with a head-less sender after heads)
        return paths.path_patch(model, clean, corrupted, _logit_metric,
                                senders=[*(Sender("z", 1, h) for h in range(4)), Sender("mlp_out", 1)], batch_rows=15)

    def early():
        return paths.path_patch(model, clean, corrupted, _pattern_metric(0), senders="z", receivers=[(1, "q", 0)],
                                metric_hook="blocks.1.attn.hook_pattern", batch_rows=12)

    late(), early()  # the bridge's once-per-hook-kind editability probes (tl_adapter.check_editable) run here
    calls = {"n": 0}
    handle = model.blocks[0].attn.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        late_res = late()
        n_late = calls["n"]
        calls["n"] = 0
        early_res = early()
        n_early = calls["n"]
    finally:
        handle.remove()
    late, early = late_res, early_res
    assert n_late == 2  # the clean and the base run: pass 1 starts at block 1, for every sender
    assert n_early == 3  # and one pass 1 from block 0 (the layer-0 heads' copies); pass 2 starts at block 1
    names = sorted({s.hook_name() for s in late.senders} | {s.hook_name() for s in early.senders})
    clean_acts = patching.capture(model, clean, names)
    for res, recv, metric, hook in ((late, "logits", _logit_metric, None),
                                    (early, [Receiver(1, "q", 0)], _pattern_metric(0), "blocks.1.attn.hook_pattern")):
        for s, v in zip(res.senders, res.values):
            if s.layer >= 1 and recv != "logits":
                continue
            ref = _reference(model, corrupted, clean_acts, s, recv, metric, hook)
            assert v == pytest.approx(ref, rel=1e-5, abs=1e-7), s
        assert (abs(res.effects()) > 1e-7).any()


def test_sink_paths_on_gpt_oss_learned_sinks(tmp_path):
    """gpt-oss's learned attention sinks have no hook of their own: the slot's weight is what hook_pattern's
    rows leave. sink_paths finds it (--sink auto), picks the heads by it and reads it, the query side only;
    each sender's value is the reference's (its write at the queries zeroed, sent into the heads' queries)."""
    import warnings

    from test_architectures import T, V, _gpt_oss

    from sinkinterp.loading import load_model

    _gpt_oss().save_pretrained(tmp_path)
    word_tokenizer(V).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(tmp_path)).model
    tokens = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    res = paths.sink_paths(model, tokens, threshold=0.2, sink="auto")
    assert res["sink"] == "slot" and res["sides"] == ["query"]
    hook = "blocks.1.attn.hook_pattern"
    pat = patching.capture(model, tokens, [hook])[hook]
    share = (1 - pat.double().sum(-1))[:, :, 1:].mean((0, 2))  # [head]: the slot's mean weight, queries 2..T
    assert [r["layer"] for r in res["layers"]] == [1]
    row = res["layers"][0]
    assert row["heads"] == [h for h in range(4) if share[h] > 0.2] and row["heads"]
    heads = row["heads"]

    def metric(p):
        return (1 - p.double().sum(-1))[:, heads, 1:].mean()

    assert row["base"] == pytest.approx(float(share[heads].mean()), rel=1e-6)
    senders = paths.senders_of(model, "blocks")
    acts = patching.capture(model, tokens, sorted({s.hook_name() for s in senders}))
    new = {n: torch.zeros_like(a) for n, a in acts.items()}
    for s, v in zip(senders, row["query"]["values"]):
        if s.order >= 3:
            continue
        ref = _reference(model, tokens, new, s, [Receiver(1, "q", h) for h in heads], metric, hook,
                         positions=list(range(1, T)))
        assert v == pytest.approx(ref, abs=1e-6), s
    assert max(abs(v - row["base"]) for v in row["query"]["values"]) > 1e-3  # the senders' writes matter
    with pytest.raises(ValueError, match="only the query side"):
        paths.sink_paths(model, tokens, threshold=0.2, sink="slot", sides=["key"])
    first = paths.sink_paths(model, tokens, threshold=0.05, sink="first")
    assert first["sink"] == "first"


def _search_setup():
    model = _sink_model()
    tokens = _tokens(7, shape=(4, 10))
    pat = patching.capture(model, tokens, ["blocks.2.attn.hook_pattern"])["blocks.2.attn.hook_pattern"]
    head = int(pat[:, :, 1:, 0].mean((0, 2)).argmax())
    kw = dict(receivers=[Receiver(2, "k", head // 2)], ablation="mean", positions=[0],
              metric_hook="blocks.2.attn.hook_pattern")
    return model, tokens, (lambda p: p[:, head, 1:, 0].double().mean()), kw


@pytest.mark.shape_checks_off  # a whole study; this file's other tests run its functions checked
def test_neuron_search_reads_its_groups_as_path_ablate_does_and_finds_the_best_pair():
    """Each reading of the search is path_ablate's value for that group of neurons; with the pool and the beam
    holding every neuron the size-2 step tries every pair, so its best is the brute-force best pair."""
    model, tokens, metric, kw = _search_setup()
    d = tl_adapter.mlp_out_weight(model, 1).shape[0]
    res = paths.neuron_search(model, tokens, metric, mlp=1, size=2, pool=d, beam=d, pairs=4, **kw)
    assert res["d_mlp"] == d and len(res["alone"]) == len(res["others"]) == d and res["direction"] == "decrease"
    units = tuple(range(d))
    check = [Sender("neuron", 1, neuron=u) for u in (0, 5, d - 1)]
    check += [Sender("neuron", 1, neuron=units[:u] + units[u + 1:]) for u in (0, 5)] + [Sender("mlp_out", 1)]
    ref = paths.path_ablate(model, tokens, metric, senders=check, **kw).effects()
    assert [res["alone"][u] for u in (0, 5, d - 1)] == pytest.approx(ref[:3], abs=1e-8)
    assert [res["others"][u] for u in (0, 5)] == pytest.approx(ref[3:5], abs=1e-8)
    assert res["whole"] == pytest.approx(ref[5], abs=1e-8) and abs(ref[5]) > 1e-4  # every neuron: the MLP
    pairs = [(a, b) for a in range(d) for b in range(a + 1, d)]
    every = paths.path_ablate(model, tokens, metric, senders=[Sender("neuron", 1, neuron=g) for g in pairs],
                              **kw).effects()
    assert res["best"][0]["neurons"] == [int(np.argmin(res["alone"]))]
    assert res["best"][1]["neurons"] == list(pairs[int(np.argmin(every))])
    assert res["best"][1]["effect"] == pytest.approx(every.min(), abs=1e-8)
    assert res["best"][1]["share"] == pytest.approx(every.min() / res["whole"], abs=1e-5)
    assert res["groups_run"] == 2 * d + 1 + len(pairs)
    # the pairs: every pair of the 4 neurons that, kept alone, hold up the most of the whole effect
    kept = -(res["whole"] - np.asarray(res["others"]))
    top4 = sorted(int(u) for u in np.argsort(-kept, kind="stable")[:4])
    assert [p["neurons"] for p in res["pairs"]] == [[a, b] for i, a in enumerate(top4) for b in top4[i + 1:]]
    for p in res["pairs"]:
        a, b = p["neurons"]
        assert p["effect"] == pytest.approx(every[pairs.index((a, b))], abs=1e-8)
        assert p["synergy"] == pytest.approx(p["effect"] - res["alone"][a] - res["alone"][b], abs=1e-7)
    # backup pairs: those beyond their two alone (in the search's direction) by more than a share of the whole
    def beyond(p):  # how much more the pair lowers the metric than either neuron alone
        return -p["effect"] - max(-res["alone"][p["neurons"][0]], -res["alone"][p["neurons"][1]])

    def backed(p, floor):
        return -p["synergy"] > floor and beyond(p) > floor

    assert paths.backup_pairs(res, 0.0) == sorted([p for p in res["pairs"] if backed(p, 0)], key=lambda p: p["synergy"])
    assert paths.backup_pairs(res, 1e9) == [] and paths.backup_pairs(res, 0.0, min_effect=1e9) == []
    assert len(paths.backup_pairs(res)) == sum(backed(p, 0.1 * abs(res["whole"])) for p in res["pairs"])
    # by hand: a pair that adds up, one whose neuron works the other way, and two that back each other up
    hand = {"direction": "decrease", "whole": -1.0, "alone": [-0.5, -0.3, 0.4, -0.01, -0.02],
            "pairs": [{"neurons": [0, 1], "effect": -0.8, "synergy": 0.0},
                      {"neurons": [0, 2], "effect": -0.3, "synergy": -0.2},
                      {"neurons": [3, 4], "effect": -0.6, "synergy": -0.57}]}
    assert [p["neurons"] for p in paths.backup_pairs(hand)] == [[3, 4]]
    # "increase": the group that raises the metric most
    up = paths.neuron_search(model, tokens, metric, mlp=1, size=2, pool=d, beam=d, pairs=0, direction="increase", **kw)
    assert up["best"][0]["neurons"] == [int(np.argmax(up["alone"]))]
    assert up["best"][1]["neurons"] == list(pairs[int(np.argmax(every))]) and up["pairs"] == []
    # a small pool and beam: the groups come from the pool, and each size's best extends the beam before it
    small = paths.neuron_search(model, tokens, metric, mlp=1, size=3, pool=3, beam=2, pairs=2, **kw)
    assert len(small["pool"]) <= 6 and all(u in small["pool"] for b in small["best"] for u in b["neurons"])
    assert [len(b["neurons"]) for b in small["best"]] == [1, 2, 3]
    # a pool and beam of one: size 2 is the best single grown by the other pool neuron (if the two readings' best
    # differ), or a pair of the 8 strongest kept alone, whichever does most
    one = paths.neuron_search(model, tokens, metric, mlp=1, size=2, pool=1, beam=1, pairs=8, **kw)
    tried = {tuple(p["neurons"]): p["effect"] for p in one["pairs"]}
    if len(one["pool"]) == 2:
        tried[tuple(sorted(one["pool"]))] = every[pairs.index(tuple(sorted(one["pool"])))]
    assert len(one["pairs"]) == 28 and len(one["pool"]) <= 2
    assert tuple(one["best"][1]["neurons"]) == min(tried, key=lambda g: (tried[g], g))
    assert one["groups_run"] == 2 * d + 1 + len(tried)  # every pair run once, and the grown single
    n = len(small["pool"])  # size 2: the beam's 2 singles grown by the pool, and 1 pair; size 3: grown again
    assert 2 * d + 1 + 3 < small["groups_run"] <= 2 * d + 1 + 2 * (n - 1) + 1 + 2 * (n - 2)
    assert small["triples"] == []  # (none asked for)
    # triples: with a pool and beam of one, size 3 is at least as good as every triple of the 6 strongest kept
    # alone (three that each suffice are reached no other way), each triple read as path_ablate does
    tri = paths.neuron_search(model, tokens, metric, mlp=1, size=3, pool=1, beam=1, pairs=0, triples=6, **kw)
    kept6 = sorted(int(u) for u in np.argsort(-kept, kind="stable")[:6])
    assert [t["neurons"] for t in tri["triples"]] == [list(g) for g in itertools.combinations(kept6, 3)]
    ref = paths.path_ablate(model, tokens, metric, senders=[Sender("neuron", 1, neuron=tuple(t["neurons"]))
                                                            for t in tri["triples"]], **kw).effects()
    assert [t["effect"] for t in tri["triples"]] == pytest.approx(ref, abs=1e-8)
    assert tri["best"][2]["effect"] <= ref.min() + 1e-12 and len(tri["best"][2]["neurons"]) == 3
    # groups of four likewise: every four of the 6 strongest kept alone tried at size 4, read as path_ablate does
    quad = paths.neuron_search(model, tokens, metric, mlp=1, size=4, pool=1, beam=1, pairs=0, quads=6, **kw)
    assert quad["triples"] == [] and [q["neurons"] for q in quad["quads"]] == [
        list(g) for g in itertools.combinations(kept6, 4)]
    ref4 = paths.path_ablate(model, tokens, metric, senders=[Sender("neuron", 1, neuron=tuple(q["neurons"]))
                                                             for q in quad["quads"]], **kw).effects()
    assert [q["effect"] for q in quad["quads"]] == pytest.approx(ref4, abs=1e-8)
    # (the pool of one is used up before size 3: the search goes on to size 4's groups of their own)
    assert quad["best"][-1]["effect"] <= ref4.min() + 1e-12 and len(quad["best"][-1]["neurons"]) == 4


def test_neuron_search_in_sink_paths_and_its_errors():
    model, tokens, metric, kw = _search_setup()
    res = paths.sink_paths(model, tokens, threshold=0.2, senders="mlp_out", sides=["key"], layers=[2],
                           search_mlps=[0, 1], search_size=2)
    row = res["layers"][0]
    assert res["search_mlps"] == [0, 1] and res["search_size"] == 2 and res["search_triples"] == 0
    assert res["search_quads"] == 0
    assert [s["mlp"] for s in row["key"]["search"]] == [0, 1]
    heads = row["heads"]
    recv = [Receiver(2, "k", g) for g in sorted({h // 2 for h in heads})]
    direct = paths.neuron_search(model, tokens, lambda p: p[:, heads, 1:, 0].double().mean(), mlp=1, size=2,
                                 receivers=recv, ablation="mean", positions=[0],
                                 metric_hook="blocks.2.attn.hook_pattern")
    got = row["key"]["search"][1]
    assert got["best"] == direct["best"] and got["alone"] == pytest.approx(direct["alone"], abs=1e-10)
    # the whole MLP's path, read by the search, is the mlp_out sender's
    assert got["whole"] == pytest.approx(row["key"]["values"][1] - row["key"]["base"], abs=1e-8)
    assert "L2 key side, MLP 1's neurons" in paths.sink_paths_summary(res)
    from sinkinterp import figures

    fig = figures.neuron_search_figure(res, title="t")
    assert len(fig.axes) == 4 and fig.axes[0].get_title() == f"L2 key side, MLP 0's {tl_adapter.mlp_out_weight(model, 0).shape[0]} neurons (all {row['key']['search'][0]['whole']:+.3f})"
    assert list(fig.axes[1].lines[0].get_xdata()) == [1, 2]
    one = figures.neuron_search_figure(direct)  # one neuron_search result: one row, no layer or side to name
    assert len(one.axes) == 2 and one.axes[0].get_title().startswith(f"MLP 1's {tl_adapter.mlp_out_weight(model, 1).shape[0]} neurons")
    for bad, match in (({"layers": []}, "no neuron search"), ({"senders": []}, "expected paths.sink_paths' result .* or paths.neuron_search's")):
        with pytest.raises(ValueError, match=match):
            figures.neuron_search_figure(bad)
    d = tl_adapter.mlp_out_weight(model, 1).shape[0]
    for kwargs, match in ((dict(mlp=3), "mlp: a layer"), (dict(mlp=True), "mlp: a layer"),
                          (dict(direction="up"), "direction"), (dict(size=0), "size must be"),
                          (dict(size=d + 1), f"MLP 1's {d} neurons"), (dict(pool=0), "pool must be"),
                          (dict(beam=0), "beam must be"), (dict(pairs=-1), "pairs must be"),
                          (dict(triples=-1), "triples must be"), (dict(quads=-2), "quads must be")):
        with pytest.raises(ValueError, match=match):
            paths.neuron_search(model, tokens, metric, **{"mlp": 1, **kw, **kwargs})
    for kwargs, match in ((dict(search_mlps=[2]), "MLP 2 is not before a sink layer"),
                          (dict(search_mlps=[]), "search_mlps: empty"),
                          (dict(search_mlps=[1], search_size=0), "search_size must be"),
                          (dict(search_mlps=[1], search_triples=-1), "search_triples must be"),
                          (dict(search_mlps=[1], search_quads=True), "search_quads must be")):
        with pytest.raises(ValueError, match=match):
            paths.sink_paths(model, tokens, threshold=0.2, layers=[2], **kwargs)


def test_gate_variance_is_the_log_odds_variance_over_texts_within_positions():
    # two texts, one head, two query positions: log-odds (0, -log 4) and (log 4, -log 4)
    w = torch.tensor([[[0.5, 0.2]], [[0.8, 0.2]]], dtype=torch.float64)
    assert float(paths.gate_variance(w)) == pytest.approx(np.log(4) ** 2 / 8, rel=1e-12)
    # the same weights in every text: nothing varies, whatever the position's own level
    assert float(paths.gate_variance(torch.tensor([[[0.9, 0.1]]] * 3))) == 0.0
    # weights of 0 and 1 are clipped, not infinite
    assert np.isfinite(float(paths.gate_variance(torch.tensor([[[0.0]], [[1.0]]]))))
    with pytest.raises(ValueError, match="at least 2 sequences"):
        paths.gate_variance(torch.full((1, 2, 3), 0.5))
    with pytest.raises(ValueError, match=r"\[batch, head, query\]"):
        paths.gate_variance(torch.full((2, 3), 0.5))


def test_gate_share_is_the_covariance_of_the_change_with_the_gate_over_its_variance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 2, 3, generator=g, dtype=torch.float64), torch.randn(7, 2, 3, generator=g, dtype=torch.float64)
    a[:, 1] *= 3  # a head that varies more weighs more
    base = torch.sigmoid(a + b)
    edited = torch.sigmoid(a.mean(0, keepdim=True) + b)  # a made its mean over the texts
    gate = a + b

    def cov(x, y):
        return ((x - x.mean(0)) * (y - y.mean(0))).mean(0).sum()

    want = float(cov(a, gate) / cov(gate, gate))
    assert float(paths.gate_share(base, edited)) == pytest.approx(want, rel=1e-9)
    other = torch.sigmoid(a + b.mean(0, keepdim=True))
    assert float(paths.gate_share(base, edited) + paths.gate_share(base, other)) == pytest.approx(1.0, rel=1e-9)
    assert float(paths.gate_share(base, base)) == 0.0
    # by text: the terms of the covariance, summing to the share; a text whose part alone moves carries it all
    by_text = paths.gate_share_by_text(base, edited)
    assert by_text.shape == (7,) and float(by_text.sum()) == pytest.approx(want, rel=1e-9)
    spike = a.clone()
    spike[3] += 10.0
    one = paths.gate_share_by_text(torch.sigmoid(spike + b), torch.sigmoid(torch.where(
        torch.arange(7).view(7, 1, 1) == 3, spike - 10.0, spike) + b))
    assert int(one.abs().argmax()) == 3
    assert float(paths.gate_share(base, torch.full_like(base, 0.3))) == pytest.approx(1.0, rel=1e-12)
    assert float(paths.gate_share(base, torch.sigmoid(a + 2 * b))) < 0  # the edit doubles b's part: against it
    # a product of the two (how well one fits the other): each one's edit takes the product's part, so the two
    # shares overlap and add up to more than 1 (gate_paths' rest is negative)
    prod = torch.sigmoid((1 + a) * (1 + b))
    shares = [float(paths.gate_share(prod, torch.sigmoid((1 + x) * (1 + y)))) for x, y in
              ((a.mean(0, keepdim=True), b), (a, b.mean(0, keepdim=True)))]
    assert all(0 < x < 1 for x in shares) and sum(shares) > 1.1
    with pytest.raises(ValueError, match="must have the shape of base"):
        paths.gate_share(base, base[:, :1])
    with pytest.raises(ValueError, match="does not vary between the texts"):
        paths.gate_share(torch.full_like(base, 0.4), base)


def _sent_alone(model, tokens, edits, l, recv, metric, hook):
    """The receivers' inputs of a run with ``edits``, put into the unedited run alone: the metric there."""
    rnames = [patching.COMPONENTS[r.kind].hook_name(l) for r in recv]
    kept = {}
    with torch.no_grad(), tl_adapter.attached_hooks(
            model, edits + [(n, lambda a, hook=None, n=n: kept.__setitem__(n, a.clone())) for n in set(rnames)]):
        model(tokens)

    def put(r, n):
        def fn(act, hook=None):
            out = act.clone()
            out[:, list(r.positions), r.head] = kept[n][:, list(r.positions), r.head]
            return out
        return fn

    read = {}
    with torch.no_grad(), tl_adapter.attached_hooks(
            model, [(n, put(r, n)) for r, n in zip(recv, rnames)]
            + [(hook, lambda a, hook=None: read.__setitem__("p", a.clone()))]):
        model(tokens)
    return float(metric(read["p"]))


def _gate_reference_together(model, tokens, l, recv, pos, metric, hook, shift=None):
    """The layer's residual input made its mean over the texts at ``pos`` (``shift``: text b takes text
    (b + shift) mod batch's), sent to the receivers only."""
    name = f"blocks.{l}.hook_resid_pre"
    resid = patching.capture(model, tokens, [name])[name]
    edited = resid.clone()
    new = resid.mean(0, keepdim=True).expand_as(resid) if shift is None else resid[(torch.arange(len(resid)) + shift)
                                                                                    % len(resid)]
    edited[:, pos] = new[:, pos]
    return _sent_alone(model, tokens, [(name, lambda a, hook=None: edited)], l, recv, metric, hook)


def test_gate_paths_equal_the_reference_on_every_side():
    """Each sender's write made its mean over the texts at each position, along its path to the sink heads'
    queries (2..T), token 1's key or the other keys (2..T), read by the share of the gate's variance it carries:
    the reference's."""
    model = _sink_model()
    tokens = _tokens(7, shape=(6, 10))
    res = paths.gate_paths(model, tokens, threshold=0.2)
    assert res["reading"] == "gate" and res["sides"] == ["query", "sink_key", "keys"]
    resids = patching.capture(model, tokens, [f"blocks.{l}.hook_resid_pre" for l in range(3)])
    ref_heads = paths.sink_paths(model, tokens, threshold=0.2, sides=["query"])
    assert [(r["layer"], r["heads"]) for r in res["layers"]] == [(r["layer"], r["heads"]) for r in ref_heads["layers"]]
    assert res["layers"]
    names = sorted({s.hook_name() for s in paths.senders_of(model, "blocks")})
    acts = patching.capture(model, tokens, names)
    means = {n: x.mean(0, keepdim=True).expand_as(x).clone() for n, x in acts.items()}
    pats = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(3)])
    where = {"query": list(range(1, 10)), "sink_key": [0], "keys": list(range(1, 10))}
    moved = set()
    for row in res["layers"]:
        l, heads = row["layer"], row["heads"]
        hook = f"blocks.{l}.attn.hook_pattern"

        def metric(p, heads=heads, hook=hook):
            return paths.gate_share(pats[hook][:, heads, 1:, 0], p[:, heads, 1:, 0])

        def variance(p, heads=heads):
            return paths.gate_variance(p[:, heads, 1:, 0])

        assert row["base"] == pytest.approx(0.0, abs=1e-12)
        assert row["variance"] == pytest.approx(float(variance(pats[hook])), abs=1e-8)
        assert row["weight"] == pytest.approx(float(pats[hook][:, heads, 1:, 0].mean()), abs=1e-8)
        # every input of the heads' logits made its mean by position: every text's gate the same, a share of 1,
        # so the three sides' shares and the rest add up to 1
        name = f"blocks.{l}.hook_resid_pre"
        mean = resids[name].mean(0, keepdim=True).expand_as(resids[name]).clone()
        read = {}
        with torch.no_grad(), tl_adapter.attached_hooks(
                model, [(name, lambda a, hook=None, mean=mean: mean),
                        (hook, lambda a, hook=None, read=read: read.__setitem__("p", a.clone()))]):
            model(tokens)
        assert float(metric(read["p"])) == pytest.approx(1.0, rel=1e-9)
        assert row["rest"] == pytest.approx(1 - sum(row[side]["together"] for side in where), abs=1e-8)
        norm = resids[name][:, 1:].norm(dim=-1)
        assert row["resid_peak"] == pytest.approx((norm.max(1).values / norm.median()).tolist(), abs=1e-4)
        assert row["resid_peak_at"] == (norm.argmax(1) + 1).tolist()
        assert row["weight_by_text"] == pytest.approx(pats[hook][:, heads, 1:, 0].mean((1, 2)).tolist(), abs=1e-6)
        k = row["resid_peak_at"][2]
        assert row["peak_weight"][2] == pytest.approx(float(pats[hook][2, heads, k:, k].mean()), abs=1e-6)
        senders = [s for s in paths.senders_of(model, "blocks") if s.order < 2 * l + 1]
        for side, pos in where.items():
            recv = ([Receiver(l, "q", h, tuple(pos)) for h in heads] if side == "query" else
                    [Receiver(l, "k", g, tuple(pos)) for g in sorted({h // 2 for h in heads})])
            d = row[side]
            assert d["how"] == "position_mean" and d["positions"] == pos
            for s, v in zip(senders, d["values"]):
                assert v == pytest.approx(_reference(model, tokens, means, s, recv, metric, hook, positions=pos),
                                          abs=1e-8), (l, side, s)
                moved.add((side, abs(v) > 1e-6))
            assert d["together"] == pytest.approx(_gate_reference_together(model, tokens, l, recv, pos, metric, hook),
                                                  rel=1e-9)
            assert sum(d["together_by_text"]) == pytest.approx(d["together"], abs=1e-6)
            assert len(d["together_by_text"]) == 6
            assert d["together_variance"] == pytest.approx(
                _gate_reference_together(model, tokens, l, recv, pos, variance, hook), rel=1e-9)
    assert ("query", True) in moved and ("keys", True) in moved and ("sink_key", True) in moved
    text = paths.gate_paths_summary(res)
    assert "gate vary from text to text" in text and "query: all" in text and "sink_key: all" in text
    assert "the rest (100% minus the sides; < 0: they overlap)" in text
    from sinkinterp import figures

    fig = figures.sink_paths_figure(res, title="t")
    assert len(fig.axes) == 6 and fig.axes[3].get_ylabel() == "share of gate variance, %"
    assert fig.axes[1].get_title() == "sink_key side: sender's write made its mean by position at token 1, into its key"


def _gate_reference_no_attn(model, tokens, l, recv, pos, metric, hook, shift=None):
    """Every attention output before layer ``l`` made its mean over the texts at ``pos`` (``shift``: text b
    takes text (b + shift) mod batch's), the MLPs recomputing; the receivers' inputs of that run sent alone."""
    names = [f"blocks.{m}.hook_attn_out" for m in range(l)]
    acts = patching.capture(model, tokens, names)

    def edit(name):
        x = acts[name]
        new = x.mean(0, keepdim=True).expand_as(x) if shift is None else x[(torch.arange(len(x)) + shift) % len(x)]

        def fn(act, hook=None):
            out = act.clone()
            out[:, pos] = new[:, pos]
            return out
        return fn

    return _sent_alone(model, tokens, [(n, edit(n)) for n in names], l, recv, metric, hook)


def test_gate_paths_attention_all_leaves_the_tokens_alone():
    """With free MLPs each side also reads every attention output before the layer made its mean (or another
    text's) at the side's positions, the MLPs recomputing: the reference's, mean and resampled; at layer 1 it is
    the one sender attn 0's share; without free MLPs it is not read."""
    model = _sink_model()
    tokens = _tokens(7, shape=(6, 10))
    pats = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(3)])
    where = {"query": list(range(1, 10)), "sink_key": [0], "keys": list(range(1, 10))}
    layers_seen, moved = set(), False
    for resample, shifts in ((0, [None]), (2, [2, 4])):
        res = paths.gate_paths(model, tokens, threshold=0.2, free_mlps=True, resample=resample)
        assert res["layers"]
        for row in res["layers"]:
            l, heads = row["layer"], row["heads"]
            layers_seen.add(l)
            hook = f"blocks.{l}.attn.hook_pattern"

            def metric(p, heads=heads, hook=hook):
                return paths.gate_share(pats[hook][:, heads, 1:, 0], p[:, heads, 1:, 0])

            for side, pos in where.items():
                recv = ([Receiver(l, "q", h, tuple(pos)) for h in heads] if side == "query" else
                        [Receiver(l, "k", g, tuple(pos)) for g in sorted({h // 2 for h in heads})])
                d = row[side]
                each = [_gate_reference_no_attn(model, tokens, l, recv, pos, metric, hook, shift=k) for k in shifts]
                assert d["attention_all"] == pytest.approx(np.mean(each), abs=1e-7), (resample, l, side)
                if resample:
                    assert d["attention_all_by_shift"] == pytest.approx(each, abs=1e-7), (l, side)
                else:
                    assert not {"values_by_shift", "together_by_shift", "attention_all_by_shift"} & set(d)
                moved |= abs(d["attention_all"]) > 1e-4
                if l == 1:  # one attention layer before it: the group is the sender attn 0
                    assert d["attention_all"] == pytest.approx(d["values"][d["senders"].index("attn 0")], abs=1e-7)
    assert moved and layers_seen == {1, 2}
    d = res["layers"][-1]["query"]
    assert (f"every attention write {100 * d['attention_all']:+.0f}% (the tokens alone "
            f"{100 * (d['together'] - d['attention_all']):+.0f}%)") in paths.gate_paths_summary(res)
    plain = paths.gate_paths(model, tokens, threshold=0.2, sides=["query"])
    assert all("attention_all" not in row["query"] for row in plain["layers"])


def test_gate_paths_resample_takes_each_write_from_other_texts_averaged_over_the_shifts():
    """``resample``: each sender's write (and each side's whole input) taken from the text ``shift`` after it at
    the same position, the shares averaged over shifts spread evenly over 1..batch - 1: the reference's, shift by
    shift; path_ablate's "resample" alone against the one-sender reference."""
    model = _sink_model()
    tokens = _tokens(7, shape=(6, 10))
    res = paths.gate_paths(model, tokens, threshold=0.2, resample=2, sides=["query", "keys"])
    assert res["ablation"] == "resample" and res["shifts"] == [2, 4] and res["layers"]
    names = sorted({s.hook_name() for s in paths.senders_of(model, "blocks")})
    acts = patching.capture(model, tokens, names)
    pats = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(3)])
    rolled = {k: {n: x[(torch.arange(6) + k) % 6].clone() for n, x in acts.items()} for k in (2, 4)}
    moved = False
    for row in res["layers"]:
        l, heads = row["layer"], row["heads"]
        hook = f"blocks.{l}.attn.hook_pattern"

        def metric(p, heads=heads, hook=hook):
            return paths.gate_share(pats[hook][:, heads, 1:, 0], p[:, heads, 1:, 0])

        senders = [s for s in paths.senders_of(model, "blocks") if s.order < 2 * l + 1]
        pos = list(range(1, 10))
        for side in ("query", "keys"):
            recv = ([Receiver(l, "q", h, tuple(pos)) for h in heads] if side == "query" else
                    [Receiver(l, "k", g, tuple(pos)) for g in sorted({h // 2 for h in heads})])
            d = row[side]
            assert d["how"] == "resample"
            assert len(d["values_by_shift"]) == 2 and "attention_all_by_shift" not in d
            for i, (s, v) in enumerate(zip(senders, d["values"], strict=True)):
                each = [_reference(model, tokens, rolled[k], s, recv, metric, hook, positions=pos) for k in (2, 4)]
                assert [x[i] for x in d["values_by_shift"]] == pytest.approx(each, abs=1e-7), (l, side, s)
                assert v == pytest.approx(np.mean(each), abs=1e-7), (l, side, s)
                moved |= abs(v) > 1e-6
            each = [_gate_reference_together(model, tokens, l, recv, pos, metric, hook, shift=k) for k in (2, 4)]
            assert d["together_by_shift"] == pytest.approx(each, rel=1e-6)
            assert d["together"] == pytest.approx(np.mean(each), rel=1e-8)
            assert sum(d["together_by_text"]) == pytest.approx(d["together"], abs=1e-6)
            assert d["together_by_shift"][0] != pytest.approx(d["together_by_shift"][1], abs=1e-4)
            lo, hi = min(d["together_by_shift"]), max(d["together_by_shift"])
            assert (f"{side}: all {100 * d['together']:+.0f}% (one shift at a time {100 * lo:+.0f}% to "
                    f"{100 * hi:+.0f}%)") in paths.gate_paths_summary(res)
        one = paths.path_ablate(model, tokens, metric, ablation="resample", shift=4, senders=senders[:2],
                                receivers=[Receiver(l, "q", h, tuple(pos)) for h in heads], positions=pos,
                                metric_hook=hook)
        for s, v in zip(senders[:2], one.values):
            assert v == pytest.approx(_reference(model, tokens, rolled[4], s, [Receiver(l, "q", h, tuple(pos))
                                                                               for h in heads], metric, hook,
                                                 positions=pos), abs=1e-8)
    assert moved
    assert "taken from other texts at the same position (averaged over shifts 2, 4)" in paths.gate_paths_summary(res)
    # the weight reading takes it too: token 1's write from the next text (shift 1), on the key side
    sp = paths.sink_paths(model, tokens, threshold=0.2, sides=["key"], key_ablation="resample")
    rolled1 = {n: x[(torch.arange(6) + 1) % 6].clone() for n, x in acts.items()}
    for row in sp["layers"]:
        l, heads = row["layer"], row["heads"]
        hook = f"blocks.{l}.attn.hook_pattern"
        recv = [Receiver(l, "k", g, (0,)) for g in sorted({h // 2 for h in heads})]
        senders = [s for s in paths.senders_of(model, "blocks") if s.order < 2 * l + 1]
        assert row["key"]["how"] == "resample"
        for s, v in zip(senders, row["key"]["values"]):
            assert v == pytest.approx(_reference(model, tokens, rolled1, s, recv,
                                                 lambda p, heads=heads: p[:, heads, 1:, 0].double().mean(), hook,
                                                 positions=[0]), abs=1e-8)
    # every shift: 1..5
    assert paths.gate_paths(model, tokens, threshold=0.2, resample=5, sides=["query"])["shifts"] == [1, 2, 3, 4, 5]
    for bad in (6, -1, True):  # (a float: the runtime type check refuses it first)
        with pytest.raises(ValueError, match="resample: the number of shifts must be an integer from 0"):
            paths.gate_paths(model, tokens, threshold=0.2, resample=bad)
    metric = lambda p: p.sum()  # noqa: E731
    for shift in (0, 6, True):
        with pytest.raises(ValueError, match=r"shift must be an integer from 1 to the number of sequences - 1 \(5\)"):
            paths.path_ablate(model, tokens, metric, ablation="resample", shift=shift, senders=senders[:1],
                              receivers=[Receiver(1, "q", 0)], metric_hook="blocks.1.attn.hook_pattern")
    with pytest.raises(ValueError, match="needs at least 2, got 1"):
        paths.path_ablate(model, tokens[:1], metric, ablation="resample", senders=senders[:1],
                          receivers=[Receiver(1, "q", 0)], metric_hook="blocks.1.attn.hook_pattern")


def test_gate_paths_a_write_the_same_in_every_text_moves_nothing_and_errors():
    """A learned position embedding is the same in every text: made its mean by position it is unchanged, so
    the gate's variance is the base's on every side; and token 1 the same in every text (BOS) leaves the
    sink key's side with nothing to remove."""
    from sinkinterp.models.testing import tiny_model

    model = tiny_model("learned")
    tokens = _tokens(4, shape=(5, 9))
    res = paths.gate_paths(model, tokens, threshold=0.05, senders=[Sender("pos_embed"), Sender("embed")])
    assert res["layers"]
    for row in res["layers"]:
        for side in ("query", "sink_key", "keys"):
            assert row[side]["values"][0] == pytest.approx(0.0, abs=1e-9)  # pos_embed
        assert abs(row["query"]["values"][1]) > 1e-3  # the token embedding is text
    res = paths.gate_paths(model, tokens, threshold=0.05, senders=[Sender("pos_embed"), Sender("embed")], resample=4)
    for row in res["layers"]:  # another text's position embedding is the same one
        for side in ("query", "sink_key", "keys"):
            assert row[side]["values"][0] == pytest.approx(0.0, abs=1e-9)
        assert abs(row["query"]["values"][1]) > 1e-3
    bos = tokens.clone()
    bos[:, 0] = 1
    res = paths.gate_paths(model, bos, threshold=0.05, sides=["sink_key"])
    for row in res["layers"]:
        assert row["sink_key"]["together"] == pytest.approx(0.0, abs=1e-9) and "rest" not in row
        assert row["sink_key"]["values"] == pytest.approx([0.0] * len(row["sink_key"]["values"]), abs=1e-9)
    for kwargs, match in ((dict(sides=["key"]), "sides: got"), (dict(sides=[]), "sides"),
                          (dict(threshold=0.0), "threshold"), (dict(sink="k"), "sink: got 'k'"),
                          (dict(sink="slot"), "needs a model with a bias slot"),
                          (dict(sender_layers=[1], senders=[Sender("embed")]), "sender_layers"),
                          (dict(layers=[0]), "layers: 0")):
        with pytest.raises(ValueError, match=match):
            paths.gate_paths(model, tokens, **kwargs)
    with pytest.raises(ValueError, match="at least 2 sequences"):
        paths.gate_paths(model, tokens[:1])
    with pytest.raises(ValueError, match="does not vary between the texts"):
        paths.gate_paths(model, tokens[:1].repeat(3, 1), threshold=0.05)
    slot = SinkTransformer(tiny_config(n_layers=3, attn_bias="kv")).double().eval()
    with pytest.raises(ValueError, match="the sides are 'query' and 'keys'"):
        paths.gate_paths(slot, tokens, sink="slot", sides=["sink_key"])


def test_gate_paths_on_the_bias_slot_read_every_key_as_another_key():
    model = SinkTransformer(tiny_config(n_layers=3, attn_bias="kv")).double().eval()
    tokens = _tokens(3, shape=(5, 9))
    res = paths.gate_paths(model, tokens, threshold=0.1, sink="auto")
    assert res["sink"] == "slot" and res["sides"] == ["query", "keys"] and res["layers"]
    dims = tl_adapter.model_dims(model)
    group = dims["n_heads"] // dims["n_kv_heads"]
    bias = patching.capture(model, tokens, [f"blocks.{l}.attn.hook_bias_pattern" for l in range(3)])
    names = sorted({s.hook_name() for s in paths.senders_of(model, "blocks")})
    acts = patching.capture(model, tokens, names)
    means = {n: x.mean(0, keepdim=True).expand_as(x).clone() for n, x in acts.items()}
    for row in res["layers"]:
        l, heads = row["layer"], row["heads"]
        hook = f"blocks.{l}.attn.hook_bias_pattern"
        assert row["variance"] == pytest.approx(float(paths.gate_variance(bias[hook][:, heads, 1:])), abs=1e-8)
        assert row["rest"] == pytest.approx(1 - row["query"]["together"] - row["keys"]["together"], abs=1e-8)
        assert row["keys"]["positions"] == list(range(9))
        assert "peak_weight" not in row and len(row["weight_by_text"]) == 5
        s = paths.senders_of(model, "blocks")[0]
        ref = _reference(model, tokens, means, s, [Receiver(l, "k", g, tuple(range(9))) for g in
                                                   sorted({h // group for h in heads})],
                         lambda p, heads=heads, hook=hook: paths.gate_share(bias[hook][:, heads, 1:], p[:, heads, 1:]),
                         hook, positions=range(9))
        assert row["keys"]["values"][0] == pytest.approx(ref, abs=1e-8)
    assert "mean weight on the bias slot" in paths.gate_paths_summary(res)


def test_cli_paths_gate_writes_the_study_and_refuses_the_weight_reading_flags(tmp_path, capsys):
    import json

    from sinkinterp import cli

    out = tmp_path / "g"
    assert cli.main(["paths", "--gate", "--seq-len", "16", "--num-seqs", "4", "--prepend-bos", "--layers", "3",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert res["reading"] == "gate" and config["gate"] is True and res["sides"] == ["query", "sink_key", "keys"]
    assert config["key_ablation"] is None and config["query_ablation"] is None
    row = res["layers"][0]
    assert row["layer"] == 3 and len(row["query"]["values"]) == 7
    # BOS opens every text: token 1's key is the same in each, so the sink key's side carries nothing
    assert row["sink_key"]["together"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "paths.png").stat().st_size > 10_000
    assert "gate vary from text to text" in capsys.readouterr().out
    one = tmp_path / "one"
    assert cli.main(["paths", "--gate", "--seq-len", "16", "--num-seqs", "4", "--prepend-bos", "--layers", "3",
                     "--sides", "query", "--no-figures", "--out", str(one)]) == 0
    assert json.loads((one / "results.json").read_text())["layers"][0]["query"]["values"] == row["query"]["values"]
    re = tmp_path / "re"
    assert cli.main(["paths", "--gate", "--seq-len", "16", "--num-seqs", "4", "--prepend-bos", "--layers", "3",
                     "--sides", "query", "--resample", "3", "--no-figures", "--out", str(re)]) == 0
    got = json.loads((re / "results.json").read_text())
    assert got["ablation"] == "resample" and got["shifts"] == [1, 2, 3]
    assert json.loads((re / "config.json").read_text())["resample"] == 3
    assert got["layers"][0]["query"]["values"] != row["query"]["values"]
    assert "taken from other texts at the same position" in capsys.readouterr().out
    capsys.readouterr()
    base = ["paths", "--gate", "--num-seqs", "2", "--seq-len", "8", "--out", str(tmp_path / "x")]
    for bad, msg in ((["--key-ablation", "zero"], "--key-ablation: not used with --gate"),
                     (["--query-ablation", "mean"], "--query-ablation: not used with --gate"),
                     (["--search-neurons", "0"], "--search-neurons: not used with --gate"),
                     (["--sides", "key"], "sides: got ['key']"),
                     (["--num-seqs", "1"], "at least 2 sequences"),
                     (["--resample", "2"], "resample: the number of shifts must be an integer from 0")):
        assert cli.main([*base, *bad]) == 2
        assert msg in capsys.readouterr().err
    assert cli.main(["paths", "--num-seqs", "2", "--seq-len", "8", "--sides", "keys", "--out", str(tmp_path / "y")]) == 2
    assert "sides: got ['keys']" in capsys.readouterr().err
    assert cli.main(["paths", "--num-seqs", "2", "--seq-len", "8", "--resample", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--resample: only with --gate" in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.json").exists()
