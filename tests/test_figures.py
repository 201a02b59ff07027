"""The matplotlib figures: each builds from small data, saves a PNG, draws what it should, and bad input
stops with an error naming the argument."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer

from sinkinterp import figures
from sinkinterp.measure import measure
from sinkinterp.models.testing import tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _saved(fig, tmp_path, name: str) -> None:
    path = figures.save_figure(fig, tmp_path / f"{name}.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend_labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def _qk(norms: bool = True) -> dict:
    qk = {
        "heads": [[0, 0], [0, 1], [1, 0]],
        "q_norm": np.array([1.0, 3.0, 5.0]),
        "cos_q_k1": np.array([0.9, 0.7, -0.2]),
        "cos_q_krest": np.array([0.1, 0.0, 0.2]),
        "logit_q_k1": np.array([4.0, 2.0, -1.0]),
        "logit_q_krest": np.array([0.5, 0.1, 0.3]),
    }
    if norms:
        qk["k1_norm"] = np.array([0.5, 0.5, 0.5])
        qk["k_rest_norm"] = [2.0, 2.0, 2.0]  # results.json form: plain lists
    return qk


def test_qk_figure_means_per_layer(tmp_path):
    fig = figures.qk_figure(_qk(), title="qk")
    assert len(fig.axes) == 3
    assert [len(_legend_labels(ax)) for ax in fig.axes] == [3, 2, 2]
    q_line = fig.axes[0].lines[0]
    np.testing.assert_allclose(q_line.get_xdata(), [0, 1])
    np.testing.assert_allclose(q_line.get_ydata(), [2.0, 5.0])  # layer 0: mean of heads 0 and 1
    _saved(fig, tmp_path, "qk")
    without_norms = figures.qk_figure(_qk(norms=False))
    assert [len(_legend_labels(ax)) for ax in without_norms.axes] == [1, 2, 2]


def test_qk_figure_reads_a_real_report():
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    report = measure(tiny_model("rotary"), tokens, qk_heads=[(0, 1), (1, 2), (1, 3)])
    fig = figures.qk_figure(report.qk)
    assert [len(_legend_labels(ax)) for ax in fig.axes] == [3, 2, 2]


def test_qk_figure_draws_the_slot_key():
    """A kv-bias model's report: k* gets a line in each panel, its values the report's layer means."""
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    report = measure(tiny_model("kv"), tokens, qk_heads="all")
    fig = figures.qk_figure(report.qk)
    assert [_legend_labels(ax)[-1] for ax in fig.axes] == ["|k*|", "cos(q, k*)", "q.k*"]
    layer0 = [i for i, (l, _) in enumerate(report.qk["heads"]) if l == 0]
    line = next(ln for ln in fig.axes[1].lines if ln.get_label() == "cos(q, k*)")
    np.testing.assert_allclose(line.get_ydata()[0], report.qk["cos_q_kstar"][layer0].mean())


def test_qk_figure_adds_the_position_bias_to_the_logits():
    """An ALiBi model's report: the logits panel also shows logit + bias (what the softmax sees)."""
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    report = measure(tiny_model("alibi"), tokens, qk_heads=[(0, 1), (1, 2), (1, 3)])
    fig = figures.qk_figure(report.qk)
    assert _legend_labels(fig.axes[2]) == ["q.k_1", "mean q.k_t", "q.k_1 + position bias",
                                           "mean q.k_t + position bias"]
    summed = fig.axes[2].lines[2].get_ydata()
    np.testing.assert_allclose(summed[1], (report.qk["logit_q_k1"][1:] + report.qk["bias_q_k1"][1:]).mean())
    assert summed[1] < fig.axes[2].lines[0].get_ydata()[1]  # ALiBi pushes key 1 down


def test_qk_figure_draws_the_soft_capped_logits():
    """A report of a soft-capped model: the logits panel adds the capped means, layer by layer."""
    qk = _qk() | {"softcap": 1.0, "capped_logit_q_k1": np.array([0.9, 0.8, -0.6]),
                  "capped_logit_q_krest": np.array([0.4, 0.1, 0.3])}
    fig = figures.qk_figure(qk)
    assert _legend_labels(fig.axes[2]) == ["q.k_1", "mean q.k_t", "q.k_1 after the soft cap",
                                           "mean q.k_t after the soft cap"]
    np.testing.assert_allclose(fig.axes[2].lines[2].get_ydata(), [0.85, -0.6])


@pytest.mark.parametrize("change, match", [
    (lambda qk: qk.pop("cos_q_k1"), r"qk: missing keys \['cos_q_k1'\]"),
    (lambda qk: qk.update(q_norm=[1.0, 2.0]), r"qk\['q_norm'\]: expected 3 values, got 2"),
    (lambda qk: qk.update(heads=[0, 1, 2]), "qk: 'heads' must be a non-empty list of"),
    (lambda qk: qk.update(logit_q_k1=[[1.0], [2.0], [3.0]]), r"qk\['logit_q_k1'\]: expected a 1-D list"),
])
def test_qk_figure_bad_input(change, match):
    qk = _qk()
    change(qk)
    with pytest.raises(ValueError, match=match):
        figures.qk_figure(qk)


def test_effect_bars(tmp_path):
    fig = figures.effect_bars(["remove k*", "zero v*", "scale k_1", "none"], [0.8, -0.05, 0.3, 0.0],
                              errors=[0.1, 0.02, 0.05, 0.0], title="interventions")
    ax, = fig.axes
    assert len(ax.patches) == 4
    bars, = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert bars.errorbar is not None
    assert [t.get_text() for t in ax.texts] == ["0.8", "-0.05", "0.3", "0"]
    assert any(np.allclose(line.get_ydata(), 0.0) for line in ax.lines)  # the zero line
    _saved(fig, tmp_path, "bars")
    plain = figures.effect_bars(["a"], np.array([1.5]))
    assert plain.axes[0].containers[0].errorbar is None


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(names=["a", "b"], values=[1.0]), ValueError, "values: expected 2 values, got 1"),
    (dict(names=["a"], values=[[1.0]]), ValueError, "values: expected a 1-D list"),
    (dict(names=["a"], values=[float("nan")]), ValueError, "values: holds NaN"),
    (dict(names=["a", "b"], values=[1.0, 2.0], errors=[0.1]), ValueError, "errors: expected 2 values"),
    (dict(names=["a"], values=[1.0], errors=[-0.1]), ValueError, "errors: error bar half-widths must be >= 0"),
    (dict(names="ab", values=[1.0, 2.0]), TypeError, "names: expected a list of strings"),
])
def test_effect_bars_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        figures.effect_bars(**kwargs)


def test_token_sink_bars(tmp_path):
    fig = figures.token_sink_bars([" the", "\\n", "."], [2.0, 0.25, 0.0], [0.15, 0.13, 0.14], eps=0.3,
                                  first_rate=4.0, title="tokens")
    ax, = fig.axes
    assert len(ax.patches) == 6  # two bars per token
    assert [p.get_height() for p in ax.patches] == [2.0, 0.25, 0.0, 0.15, 0.13, 0.14]
    assert any(np.allclose(line.get_ydata(), 4.0) for line in ax.lines) and not ax.texts
    _saved(fig, tmp_path, "tokens")
    far = figures.token_sink_bars(["a"], [2.0], [0.1], eps=0.3, first_rate=62.0).axes[0]
    assert not far.lines and "Sink_1 = 62.0% (off this scale)" in far.texts[0].get_text()
    with pytest.raises(ValueError, match="expected_rate: expected 1 values, got 2"):
        figures.token_sink_bars(["a"], [1.0], [1.0, 2.0], eps=0.3)


def test_layer_head_heatmap(tmp_path):
    values = np.array([[0.5, -1.0, 0.0, 0.2], [2.0, 0.1, -0.3, 0.0], [0.0, 0.0, 0.0, 0.4]])
    fig = figures.layer_head_heatmap(values, title="patching", label="Δ loss", center=0.0)
    ax, colorbar_ax = fig.axes
    im, = ax.images
    assert im.get_cmap().name == "RdBu_r"
    assert im.get_clim() == (-2.0, 2.0)
    np.testing.assert_array_equal(im.get_array(), values)
    _saved(fig, tmp_path, "heads")
    per_layer = figures.layer_head_heatmap(values[:, :1], label="per layer")
    assert per_layer.axes[0].images[0].get_cmap().name == "viridis"
    assert per_layer.axes[0].images[0].get_array().shape == (3, 1)
    assert figures.layer_head_heatmap(np.zeros((2, 2)), center=0).axes[0].images[0].get_clim() == (-1.0, 1.0)
    partial = figures.layer_head_heatmap([[np.nan], [-3.0], [1.0]], center=0)  # layer 0 not computed: blank
    im = partial.axes[0].images[0]
    assert im.get_clim() == (-3.0, 3.0) and im.get_array().mask.tolist() == [[True], [False], [False]]


@pytest.mark.parametrize("values, match", [
    (np.ones(4), r"values: expected a non-empty 2-D array \[layer, head\], got shape \(4,\)"),
    (np.ones((2, 2, 2)), "values: expected a non-empty 2-D array"),
    (np.full((2, 2), np.inf), "values: holds infinite values"),
    (np.full((2, 2), np.nan), "or only NaN"),
])
def test_layer_head_heatmap_bad_input(values, match):
    with pytest.raises(ValueError, match=match):
        figures.layer_head_heatmap(values)


def _metrics_rows() -> list[dict]:
    """Rows shaped like metrics.jsonl: sink values only on sink steps, no bias slot."""
    rows = []
    for step in range(0, 50, 10):
        sink = step % 20 == 0
        rows.append({"step": step, "train_loss": None if step == 0 else 5.0 - step / 20,
                     "val_loss": 5.5 - step / 25 if sink else None,
                     "sink1": 2.0 * step if sink else None, "sink2": 0.5 if sink else None,
                     "sink_bias": None, "massive_ratio": 1.0 + step if sink else None})
    return rows


def test_sink_over_training(tmp_path):
    fig = figures.sink_over_training(list(reversed(_metrics_rows())), title="run")
    assert len(fig.axes) == 3  # Sink_1 + Sink_2 together, massive ratio, val loss; no Sink_* data
    sinks, ratio, loss = fig.axes
    assert _legend_labels(sinks) == ["Sink_1", "Sink_2"]
    np.testing.assert_allclose(sinks.lines[0].get_xdata(), [0, 20, 40])  # sorted by step
    np.testing.assert_allclose(sinks.lines[0].get_ydata(), [0, 40, 80])
    assert ratio.get_yscale() == "log" and len(ratio.lines) == 1
    assert len(loss.lines) == 1
    _saved(fig, tmp_path, "training")
    only_loss = figures.sink_over_training(_metrics_rows(), keys=["train_loss"])
    assert len(only_loss.axes) == 1 and len(only_loss.axes[0].lines[0].get_xdata()) == 4


def test_training_keys_are_metrics_fields():
    from sinkinterp.train.trainer import METRIC_FIELDS

    assert set(figures.TRAINING_KEYS) <= set(METRIC_FIELDS)


@pytest.mark.parametrize("records, keys, error, match", [
    ([], figures.TRAINING_KEYS, ValueError, "records: expected a non-empty list"),
    ([{"sink1": 1.0}], figures.TRAINING_KEYS, ValueError, "records: row 0 is not a dict with a 'step' key"),
    ([{"step": 0, "sink1": None}], figures.TRAINING_KEYS, ValueError, "records: no row holds a value"),
    ([{"step": 0, "sink1": "high"}], figures.TRAINING_KEYS, ValueError, "records: 'sink1': expected a list"),
    ([{"step": 0, "sink1": 1.0}], "sink1", TypeError, "keys: expected a list of strings"),
])
def test_sink_over_training_bad_input(records, keys, error, match):
    with pytest.raises(error, match=match):
        figures.sink_over_training(records, keys=keys)


def test_first_token_by_query(tmp_path):
    vals = np.zeros((2, 3, 8))
    vals[0, 1] = 1.0  # layer 0, head 1: everything on token 1
    vals[1] = 0.25
    fig = figures.first_token_by_query(vals, title="t")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2 * 2 + 1  # mean and top head per layer, the uniform reference
    np.testing.assert_allclose(lines[0].get_ydata(), np.full(8, 1 / 3))  # layer 0 mean over heads
    np.testing.assert_allclose(lines[1].get_ydata(), np.ones(8))  # layer 0's top head is head 1
    np.testing.assert_allclose(lines[-1].get_ydata(), 1.0 / np.arange(1, 9))
    assert _legend_labels(ax) == ["layer 0", "layer 1", "uniform (1/t)"]
    _saved(fig, tmp_path, "by_query")
    real = measure(tiny_model("rotary"), torch.randint(0, 50, (2, 10)), norms=False, qk_heads=None)
    _saved(figures.first_token_by_query(real.attn1_by_query), tmp_path, "real")
    with pytest.raises(ValueError, match="attn1_by_query: expected an array"):
        figures.first_token_by_query(np.zeros((2, 8)))


def test_stream_curves_bins_and_subtracts_the_reference(tmp_path):
    a, ref = np.arange(10.0), np.full(10, 2.0)
    fig = figures.stream_curves({"8": a, "8+1,original": a * 2, "64,recompute": ref}, n_ctx=4, bin_size=4,
                                reference="64,recompute", title="stream")
    ax, = fig.axes
    drawn = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert list(drawn) == ["8", "8+1,original"]  # the reference is subtracted, not drawn
    np.testing.assert_allclose(drawn["8"].get_ydata(), [1.5 - 2, 5.5 - 2])  # two full bins; the tail is dropped
    np.testing.assert_allclose(drawn["8"].get_xdata(), [2.5, 6.5])  # stream positions 1..4 and 5..8
    assert drawn["8+1,original"].get_linestyle() == "--" and drawn["8"].get_linestyle() == "-"
    _saved(fig, tmp_path, "stream")
    raw = figures.stream_curves({"w": [1.0, 2.0, 3.0]}, bin_size=8)  # fewer targets than a bin: one bin
    np.testing.assert_allclose(raw.axes[0].lines[0].get_ydata(), [2.0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(curves={}), "curves: expected a non-empty dict"),
    (dict(curves={"a": [1.0], "b": [1.0, 2.0]}), "same number of targets"),
    (dict(curves={"a": [1.0]}, reference="b"), "reference: expected one of"),
    (dict(curves={"a": [1.0]}, bin_size=0), "bin_size"),
    (dict(curves={"a": [float("inf")]}), "holds NaN"),
])
def test_stream_curves_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        figures.stream_curves(**kwargs)


def test_sink_by_length_draws_sinks_layers_and_the_uniform_reference(tmp_path):
    lengths = np.arange(2, 11)
    sink = np.stack([np.linspace(100, 10, 9), np.r_[np.nan, np.linspace(5, 0, 8)], np.zeros(9)], axis=1)
    alpha = np.stack([np.linspace(0.6, 0.2, 9), np.linspace(0.4, 0.1, 9)], axis=1)  # [lengths, layers]
    fig = figures.sink_by_length(lengths, sink, eps=0.3, alpha1_by_layer=alpha, sink_bias_pct=np.full(9, 20.0))
    left, right = fig.axes
    assert [l.get_label() for l in left.lines] == ["Sink_1", "Sink_2", "Sink_3", "Sink_* (bias slot)"]
    uniform = next(l for l in right.lines if l.get_label() == "uniform attention")
    np.testing.assert_allclose(uniform.get_ydata(), [sum(1 / s for s in range(1, t + 1)) / t for t in lengths])
    np.testing.assert_allclose(right.lines[1].get_ydata(), alpha[:, 1])
    _saved(fig, tmp_path, "lengths")
    assert len(figures.sink_by_length(lengths, sink[:, :1], eps=0.3).axes) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(sink_pct=np.zeros((3, 2))), r"sink_pct: expected shape \[9, k\]"),
    (dict(sink_pct=np.zeros((9, 1)), alpha1_by_layer=np.zeros(9)), "alpha1_by_layer: expected shape"),
    (dict(sink_pct=np.zeros((9, 1)), sink_bias_pct=np.zeros(3)), "sink_bias_pct: expected 9 values"),
])
def test_sink_by_length_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        figures.sink_by_length(np.arange(2, 11), eps=0.3, **kwargs)


def test_turn_sources_figure_draws_each_blocks_share(tmp_path):
    """One panel per run: the embedding's bar, then each block's attention and MLP bars at the pooled shares
    of gate.pooled_turn_sources; a result without the turn by source is refused by name."""
    from sinkinterp.gate import gate_stats, pooled_turn_sources

    model = tiny_model("rotary").eval()
    tokens = torch.randint(0, 50, (6, 10), generator=torch.Generator().manual_seed(0))
    res = gate_stats(model, tokens, sink="first", batch_size=3, turn_sources=True)
    fig = figures.turn_sources_figure({"tiny": res, "again": res}, title="t")
    assert len(fig.axes) == 2
    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    heights = [[r.get_height() for r in c] for c in bars]
    src = pooled_turn_sources(res)
    L = len(res["sink_mass"])
    np.testing.assert_allclose(heights[0], [src["shares"][0]])
    np.testing.assert_allclose(heights[1], src["shares"][1::2])  # attention, block by block
    np.testing.assert_allclose(heights[2], src["shares"][2::2])  # MLPs
    assert len(heights[1]) == L and f"turn {src['turn']:.0%}" in fig.axes[0].get_title()
    figures.save_figure(fig, tmp_path / "turn.png")
    assert (tmp_path / "turn.png").stat().st_size > 1000
    plain = gate_stats(model, tokens, sink="first", batch_size=3)
    with pytest.raises(ValueError, match=r"studies\['plain'\]: no turn by source"):
        figures.turn_sources_figure({"plain": plain})
    with pytest.raises(ValueError, match="studies: at least one"):
        figures.turn_sources_figure({})


def test_save_figure_with_a_palette_is_smaller_and_looks_the_same(tmp_path):
    from PIL import Image

    def heat():
        return figures.alpha_heatmap(np.linspace(0, 1, 30 * 9).reshape(30, 9), title="t", eps=0.5)

    full = figures.save_figure(heat(), tmp_path / "full.png")
    small = figures.save_figure(heat(), tmp_path / "small.png", palette=True)
    a, b = Image.open(full), Image.open(small)
    assert b.mode == "P" and a.size == b.size
    assert small.stat().st_size < 0.7 * full.stat().st_size
    diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
    assert diff.mean() < 2.0 and not list(tmp_path.glob(".*.tmp"))


def test_copy_figure_writes_what_save_figure_writes_with_a_palette(tmp_path):
    """A figure a command saved in full colour, copied into docs, is the figure ``save_figure(palette=True)``
    writes: byte for byte; copying it again changes nothing; without ``palette`` it is a plain copy."""
    def heat():
        return figures.alpha_heatmap(np.linspace(0, 1, 12 * 4).reshape(12, 4), title="t", eps=0.5)

    full = figures.save_figure(heat(), tmp_path / "full.png")
    direct = figures.save_figure(heat(), tmp_path / "direct.png", palette=True)
    copied = figures.copy_figure(full, tmp_path / "docs" / "copied.png")
    assert copied.read_bytes() == direct.read_bytes() != full.read_bytes()
    again = figures.copy_figure(copied, tmp_path / "again.png")
    assert again.read_bytes() == copied.read_bytes()
    assert figures.copy_figure(full, tmp_path / "plain.png", palette=False).read_bytes() == full.read_bytes()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_copy_figure_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="src: no figure"):
        figures.copy_figure(tmp_path / "missing.png", tmp_path / "out.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ValueError, match="src: .* is not a PNG"):
        figures.copy_figure(tmp_path / "notes.txt", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
