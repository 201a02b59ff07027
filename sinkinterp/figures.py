"""Matplotlib figures: of a measurement (alpha heat map layer x head, Sink_k over key positions, norms of
token 1 vs the rest per layer, the q.k decomposition), of interventions (effect bars, per-head heat
maps), of training (sink emergence curves), of the sink against the sequence length, and of
streaming (loss along a stream past the training length). Each function returns a Figure;
``save_figure`` writes it atomically (PNG). Tests: tests/test_figures.py."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from sinkinterp.fileio import atomic_write

__all__ = ["alpha_heatmap", "norms_figure", "sink_by_position", "save_figure", "qk_figure", "effect_bars",
           "layer_head_heatmap", "sink_over_training", "copy_figure", "stream_curves", "sink_by_length", "token_sink_bars",
           "window_distance", "massive_activation", "gate_figure", "targets_figure", "turn_sources_figure", "sink_paths_figure",
           "TRAINING_KEYS"]


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, *, palette: bool = False) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it. ``palette``: with 256 colours (about a
    third of the bytes; the figures tracked in docs/ travel with every device call, under its 64 MiB)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = _with_palette(buf.getvalue()) if palette else buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def copy_figure(src: str | os.PathLike, dst: str | os.PathLike, *, palette: bool = True) -> Path:
    """Copy the PNG ``src`` (a figure a command wrote into its result folder) to ``dst`` atomically, with 256
    colours unless ``palette`` is False: the same bytes ``save_figure(..., palette=True)`` writes for the
    figure ``src`` holds."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"src: no figure at {src}")
    data = src.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"src: {src} is not a PNG file")
    out = _with_palette(data) if palette else data
    return atomic_write(dst, lambda f: f.write(out))


def _with_palette(png: bytes) -> bytes:
    """The PNG ``png`` with 256 colours (median cut): about a third of the bytes. A PNG that already has a
    palette is returned as it is, so the step can be repeated without losing colours."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    if image.mode == "P":
        return png
    out = io.BytesIO()
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="png", optimize=True)
    return out.getvalue()


def alpha_heatmap(alpha: np.ndarray, title: str = "", eps: float | None = None, label: str = "alpha_1") -> Any:
    """Heat map of alpha[layer, head]; heads above ``eps`` are marked with a dot."""
    plt = _plt()
    alpha = np.asarray(alpha)
    n_layers, n_heads = alpha.shape
    fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * n_heads + 2), max(2.5, 0.3 * n_layers + 1.5)))
    im = ax.imshow(alpha, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="upper")
    if eps is not None:
        ls, hs = np.nonzero(alpha > eps)
        ax.scatter(hs, ls, s=8, c="white", marker="o", label=f"{label} > {eps}")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"{label} per head")
    fig.colorbar(im, ax=ax, label=label)
    return fig


def sink_by_position(sink_pct_by_key: np.ndarray, eps: float, title: str = "") -> Any:
    plt = _plt()
    vals = np.asarray(sink_pct_by_key)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(vals) + 1), vals, marker=".")
    ax.set_xlabel("key position k (1 = first token)")
    ax.set_ylabel(f"Sink_k^{eps} (%)")
    ax.set_title(title or "Sink_k over key positions")
    ax.set_xscale("log")
    return fig


def first_token_by_query(attn1_by_query: object, title: str = "") -> Any:
    """Attention on token 1 against the query position, one line per layer (mean over heads) and
    the layer's most attentive head dashed: where alpha_1 comes from (it is the mean over queries),
    e.g. whether it stops at a sliding window's edge."""
    plt = _plt()
    vals = np.asarray(attn1_by_query, dtype=np.float64)
    if vals.ndim != 3 or vals.shape[-1] < 1:
        raise ValueError(f"attn1_by_query: expected an array [layers, heads, T], got shape {vals.shape}")
    n_layers, _, T = vals.shape
    t = np.arange(1, T + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    cmap = plt.get_cmap("viridis")
    for layer in range(n_layers):
        color = cmap(layer / max(n_layers - 1, 1))
        ax.plot(t, vals[layer].mean(0), color=color, label=f"layer {layer}" if n_layers <= 12 else None)
        top = int(np.argmax(vals[layer].mean(-1)))
        ax.plot(t, vals[layer, top], color=color, linestyle="--", linewidth=0.8)
    ax.plot(t, 1.0 / t, color="grey", linestyle=":", label="uniform (1/t)")
    ax.set_xlabel("query position t")
    ax.set_ylabel("attention on token 1")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "attention on token 1 by query (dashed: the layer's top head)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def norms_figure(norms: dict[str, Any], title: str = "") -> Any:
    """Three panels: residual norm of token 1 vs the rest per layer (with the massive-activation
    ratio), key norms and value norms of token 1 vs the rest (mean over heads)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    r = norms["resid"]
    x = np.arange(len(r["first"]))
    axes[0].plot(x, r["first"], marker="o", label="token 1")
    axes[0].plot(x, r["rest"], marker="o", label="mean of tokens 2..T")
    axes[0].set_xlabel("layer (last = before final norm)")
    axes[0].set_ylabel("||h||")
    axes[0].set_yscale("log")
    axes[0].set_title("residual stream")
    axes[0].legend(fontsize=8)
    for ax, key, name in ((axes[1], "key", "||k||"), (axes[2], "value", "||v||")):
        first = np.asarray(norms[key]["first"]).mean(1)
        rest = np.asarray(norms[key]["rest"]).mean(1)
        xl = np.arange(len(first))
        ax.plot(xl, first, marker="o", label="token 1")
        ax.plot(xl, rest, marker="o", label="mean of tokens 2..T")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{name} (mean over heads)")
        ax.set_title(f"{key}s")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---- q.k decomposition, intervention effects, per-head maps, training curves -----------------------
_QK_KEYS = ("heads", "q_norm", "cos_q_k1", "cos_q_krest", "logit_q_k1", "logit_q_krest")

#: metrics.jsonl keys (sinkinterp.train.trainer.METRIC_FIELDS) drawn by ``sink_over_training``
TRAINING_KEYS = ("sink1", "sink2", "sink_bias", "massive_ratio", "val_loss")
#: percent-valued keys, drawn together in one panel
_SINK_PERCENT_KEYS = ("sink1", "sink2", "sink_bias")
_TRAINING_LABELS = {
    "sink1": "Sink_1", "sink2": "Sink_2", "sink_bias": "Sink_* (bias slot)",
    "massive_ratio": "max_l ||h_1|| / mean ||h_t||", "val_loss": "val loss (nats)",
}


def _vector(values: object, name: str, length: int | None = None) -> np.ndarray:
    """``values`` as a finite float64 vector, optionally of a given length."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a list or 1-D array of numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D list of numbers, got shape {arr.shape}")
    if length is not None and len(arr) != length:
        raise ValueError(f"{name}: expected {length} values, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return arr


def _names(names: object, name: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{name}: expected a list of strings, got {names!r}")
    return list(names)


def qk_figure(qk: object, title: str = "") -> Any:
    """The q.k = |q| |k| cos(q, k) decomposition of ``SinkReport.qk`` (or its results.json form),
    per layer as the mean over that layer's listed heads. Three panels: norms (|q|, |k_1|, mean
    |k_t| over t >= 2; the key norms only when the report measured norms), cosines cos(q, k_1) vs
    mean cos(q, k_t), and logits q.k_1 / sqrt(d_head) vs mean q.k_t / sqrt(d_head) (dashed: plus the
    position bias, when the model adds one: ``bias_q_k1`` / ``bias_q_krest``); the bias slot's key k*
    in each panel when the report has it (``kstar_norm``, ``cos_q_kstar``, ``logit_q_kstar``), a
    learned sink logit (``slot_logit``), and, dash-dotted, the means after a soft cap on the logits
    (Gemma 2: ``capped_logit_q_k1`` / ``capped_logit_q_krest``)."""
    if not isinstance(qk, dict):
        raise TypeError(f"qk: expected the dict SinkReport.qk, got {type(qk).__name__}")
    missing = [k for k in _QK_KEYS if k not in qk]
    if missing:
        raise ValueError(f"qk: missing keys {missing} (a SinkReport.qk from measure(..., qk_heads=...))")
    heads = np.asarray(qk["heads"])
    if heads.ndim != 2 or heads.shape[1] != 2 or len(heads) == 0:
        raise ValueError(f"qk: 'heads' must be a non-empty list of [layer, head] pairs, got shape {heads.shape}")
    n = len(heads)
    series = {k: _vector(qk[k], f"qk[{k!r}]", n) for k in (*_QK_KEYS[1:], "k1_norm", "k_rest_norm", "bias_q_k1",
                                                           "bias_q_krest", "cos_q_kstar", "logit_q_kstar",
                                                           "kstar_norm", "slot_logit", "capped_logit_q_k1",
                                                           "capped_logit_q_krest") if k in qk}
    for key in ("k1", "krest"):  # the score the softmax sees: the logit plus the position bias (ALiBi ...)
        if f"bias_q_{key}" in series:
            series[f"score_q_{key}"] = series[f"logit_q_{key}"] + series[f"bias_q_{key}"]
    layers = np.unique(heads[:, 0])
    per_layer = {k: np.array([v[heads[:, 0] == l].mean() for l in layers]) for k, v in series.items()}

    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    # (key, label, color, line style): token 1 in C0, the later keys in C1, the slot's key k* in C2,
    # |q| in C3; dashed: with the position bias added; dash-dotted: after the soft cap
    panels = (
        (axes[0], "norms", "norm", (("q_norm", "|q|", "C3", "-"), ("k1_norm", "|k_1|", "C0", "-"),
                                    ("k_rest_norm", "mean |k_t|, t >= 2", "C1", "-"), ("kstar_norm", "|k*|", "C2", "-"))),
        (axes[1], "cosines", "cos", (("cos_q_k1", "cos(q, k_1)", "C0", "-"), ("cos_q_krest", "mean cos(q, k_t)", "C1", "-"),
                                     ("cos_q_kstar", "cos(q, k*)", "C2", "-"))),
        (axes[2], "logits", "q.k / sqrt(d_head)", (("logit_q_k1", "q.k_1", "C0", "-"), ("logit_q_krest", "mean q.k_t", "C1", "-"),
                                                   ("score_q_k1", "q.k_1 + position bias", "C0", "--"),
                                                   ("score_q_krest", "mean q.k_t + position bias", "C1", "--"),
                                                   ("capped_logit_q_k1", "q.k_1 after the soft cap", "C0", "-."),
                                                   ("capped_logit_q_krest", "mean q.k_t after the soft cap", "C1", "-."),
                                                   ("logit_q_kstar", "q.k*", "C2", "-"),
                                                   ("slot_logit", "sink logit", "C2", ":"))),
    )
    for ax, name, ylabel, lines in panels:
        for key, label, color, style in lines:
            if key in per_layer:
                ax.plot(layers, per_layer[key], marker="o", label=label, linestyle=style, color=color)
        if name != "norms":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"q.k = |q| |k| cos, mean over {n} listed heads per layer")
    fig.tight_layout()
    return fig


def effect_bars(names: object, values: object, *, errors: object = None, ylabel: str = "Δ loss (nats)",
                title: str = "") -> Any:
    """One bar per intervention (e.g. the loss change it causes), values written on the bars, a
    zero line, optional error bars (``errors``: one non-negative half-width per bar)."""
    labels = _names(names, "names")
    vals = _vector(values, "values", len(labels))
    errs = None if errors is None else _vector(errors, "errors", len(labels))
    if errs is not None and (errs < 0).any():
        raise ValueError("errors: error bar half-widths must be >= 0")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 1.5), 3.4))
    bars = ax.bar(np.arange(len(labels)), vals, yerr=errs, capsize=3 if errs is not None else 0,
                  color=["tab:red" if v > 0 else "tab:blue" for v in vals])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], padding=2, fontsize=8)
    ax.axhline(0.0, color="black", lw=0.8)
    long = any(len(s) > 8 for s in labels)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def token_sink_bars(labels: object, sink_rate: object, expected_rate: object, *, eps: float,
                    first_rate: float | None = None, title: str = "") -> Any:
    """Sinks by token (``token_sinks``): each listed token's sink rate beside the rate its positions
    predict; the first token's Sink_1, when given, as a dashed line (as a note when it is more than
    three times the tallest bar)."""
    names = _names(labels, "labels")
    rate = _vector(sink_rate, "sink_rate", len(names))
    expected = _vector(expected_rate, "expected_rate", len(names))
    plt = _plt()
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2), 3.6))
    ax.bar(x - 0.2, rate, width=0.4, color="tab:red", label="this token")
    ax.bar(x + 0.2, expected, width=0.4, color="tab:gray", label="any token at its positions")
    top = max(float(rate.max(initial=0.0)), float(expected.max(initial=0.0)))
    if first_rate is not None and first_rate <= 3 * top:
        ax.axhline(first_rate, color="black", ls="--", lw=1, label=f"first token (Sink_1 = {first_rate:.1f}%)")
    elif first_rate is not None:  # a line far above the bars would flatten them: say it instead
        ax.text(0.99, 0.97, f"first token: Sink_1 = {first_rate:.1f}% (off this scale)", transform=ax.transAxes,
                ha="right", va="top", fontsize=8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"% of heads with alpha > {eps}")
    ax.set_title(title or "sinks by token")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def window_distance(by_distance: object, windowed: object, *, split: int, title: str = "") -> Any:
    """Where the attention goes by distance (``window_sinks``): the mean weight at distance d = t - s (token 1
    left out) for the queries inside the split and past it, averaged over the windowed layers and over the
    global ones (``by_distance`` [2, L, split]; ``windowed``: the windowed layers' indices)."""
    d = np.asarray(by_distance, dtype=np.float64)
    if d.ndim != 3 or d.shape[0] != 2 or d.shape[2] != split:
        raise ValueError(f"by_distance must have shape [2, n_layers, split={split}], got {d.shape}")
    local = sorted(int(l) for l in windowed)  # type: ignore[union-attr]
    full = [l for l in range(d.shape[1]) if l not in local]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(split)
    for layers, name, color in ((local, "windowed layers", "tab:red"), (full, "global layers", "tab:blue")):
        if not layers:
            continue
        ax.plot(x, d[0, layers].mean(0), color=color, ls="--", lw=1, label=f"{name}, queries inside")
        ax.plot(x, d[1, layers].mean(0), color=color, lw=1.5, label=f"{name}, queries past")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yscale("log")
    ax.set_xlabel("distance t - s (token 1 left out)")
    ax.set_ylabel("mean weight")
    ax.set_title(title or "attention by distance, inside and past the window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_head_heatmap(values: object, *, title: str = "", label: str = "", center: int | float | None = None) -> Any:
    """Heat map of ``values[layer, head]`` (per-head effects, patching results; ``[L, 1]`` for
    per-layer values). With ``center`` a diverging colormap symmetric around it, else viridis.
    NaN marks a cell that was not computed (left blank: effects of the edited layers only)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("values: expected a 2-D array [layer, head] of numbers") from None
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"values: expected a non-empty 2-D array [layer, head], got shape {arr.shape}")
    if np.isinf(arr).any() or np.isnan(arr).all():
        raise ValueError("values: holds infinite values or only NaN (NaN marks cells not computed)")
    n_layers, n_heads = arr.shape
    if center is None:
        style: dict[str, Any] = dict(cmap="viridis")
    else:
        half = float(np.nanmax(np.abs(arr - center))) or 1.0
        style = dict(cmap="RdBu_r", vmin=center - half, vmax=center + half)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * n_heads + 2), max(2.5, 0.3 * n_layers + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(arr), aspect="auto", origin="upper", **style)
    ax.set_yticks(np.arange(n_layers))
    ax.set_ylabel("layer")
    if n_heads > 1:
        ax.set_xticks(np.arange(n_heads))
        ax.set_xlabel("head")
    else:
        ax.set_xticks([])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    return fig


def sink_over_training(records: object, keys: object = TRAINING_KEYS, title: str = "") -> Any:
    """Emergence curves over training from metrics.jsonl rows (``sinkinterp.train.read_metrics``):
    Sink_1 / Sink_2 / Sink_* (percent) in one panel, every other key in its own panel (the
    massive-activation ratio on a log scale). Rows where a key is None (not measured at that step)
    are skipped; keys no row has are left out."""
    wanted = _names(keys, "keys")
    if not isinstance(records, (list, tuple)) or not records:
        raise ValueError("records: expected a non-empty list of metrics rows (dicts with a 'step' key)")
    for i, row in enumerate(records):
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"records: row {i} is not a dict with a 'step' key")
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in wanted:
        points = sorted((row["step"], row[key]) for row in records if row.get(key) is not None)
        if points:
            steps, vals = zip(*points)
            curves[key] = (_vector(steps, "records: 'step'"), _vector(vals, f"records: {key!r}"))
    if not curves:
        raise ValueError(f"records: no row holds a value for any of keys {wanted}")
    sink_keys = [k for k in curves if k in _SINK_PERCENT_KEYS]
    panels = ([sink_keys] if sink_keys else []) + [[k] for k in curves if k not in _SINK_PERCENT_KEYS]
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for key in panel:
            ax.plot(*curves[key], marker=".", label=_TRAINING_LABELS.get(key, key))
        ax.set_xlabel("step")
        if panel[0] in _SINK_PERCENT_KEYS:
            ax.set_ylabel("Sink^eps (%)")
            ax.set_ylim(-2, 102)
            ax.legend(fontsize=8)
        else:
            ax.set_ylabel(_TRAINING_LABELS.get(panel[0], panel[0]))
        if panel == ["massive_ratio"]:
            ax.set_yscale("log")
    fig.suptitle(title or "sinks over training")
    fig.tight_layout()
    return fig


def stream_curves(curves: dict[str, object], *, n_ctx: int | None = None, bin_size: int = 8,
                  reference: str | None = None, title: str = "") -> Any:
    """Mean next-token loss along a stream, one line per cache setting: ``curves[name][j]`` is the
    loss of the target at stream position j + 1, averaged in bins of ``bin_size`` targets; with
    ``reference`` (one of the names), each curve minus that one (which then is not drawn), which
    removes how hard each stretch of text is. Names ending in ``,original`` are dashed, in
    ``,recompute`` dotted; a dashed vertical line at the training length ``n_ctx``."""
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves: expected a non-empty dict {name: per-target losses}")
    if isinstance(bin_size, bool) or not isinstance(bin_size, int) or bin_size < 1:
        raise ValueError(f"bin_size: expected an integer >= 1, got {bin_size!r}")
    vecs = {name: _vector(values, f"curves[{name!r}]") for name, values in curves.items()}
    if len({len(v) for v in vecs.values()}) != 1:
        raise ValueError("curves: every curve needs the same number of targets")
    if reference is not None and reference not in vecs:
        raise ValueError(f"reference: expected one of {list(vecs)}, got {reference!r}")
    base = vecs.pop(reference) if reference is not None else 0.0
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    colors = plt.get_cmap("tab20").colors
    for i, (name, v) in enumerate(vecs.items()):
        v = v - base
        b = min(bin_size, len(v))
        n = len(v) // b * b
        means = v[:n].reshape(-1, b).mean(1)
        centers = 1 + np.arange(len(means)) * b + (b - 1) / 2
        style = ":" if name.endswith(",recompute") else "--" if name.endswith(",original") else "-"
        ax.plot(centers, means, style, label=name, lw=1.4, color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20])
    if reference is not None:
        ax.axhline(0.0, color="black", lw=0.8)
    if n_ctx:
        ax.axvline(n_ctx, color="black", ls="--", lw=0.8)
        ax.text(n_ctx, ax.get_ylim()[1], " training length", va="top", fontsize=8)
    ax.set_xlabel("stream position of the target")
    what = f"loss - loss of {reference}" if reference is not None else "loss"
    ax.set_ylabel(f"{what} (nats, {bin_size}-token bins)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def sink_by_length(lengths: object, sink_pct: object, *, eps: float, alpha1_by_layer: object = None,
                   sink_bias_pct: object = None, title: str = "") -> Any:
    """The sink against the sequence length T': Sink_1..3^eps (and Sink_* of a bias slot) in the left
    panel; with ``alpha1_by_layer`` ([n_lengths, layers]: mean alpha_1 over heads) one line per layer
    in the right panel, beside alpha_1 under uniform causal attention (H_T' / T', harmonic number: above
    eps = 0.3 up to T' = 9, so short prefixes count every head). ``sink_pct`` is [n_lengths, k] (NaN
    where the prefix has no key k)."""
    x = _vector(lengths, "lengths")
    sink = np.asarray(sink_pct, dtype=np.float64)
    if sink.ndim != 2 or sink.shape[0] != len(x) or sink.shape[1] < 1:
        raise ValueError(f"sink_pct: expected shape [{len(x)}, k], got {sink.shape}")
    panels = 1 if alpha1_by_layer is None else 2
    plt = _plt()
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    for k in range(min(3, sink.shape[1])):
        ax.plot(x, sink[:, k], label=f"Sink_{k + 1}", lw=1.5 if k == 0 else 1.0)
    if sink_bias_pct is not None:
        ax.plot(x, _vector(sink_bias_pct, "sink_bias_pct", len(x)), "--", label="Sink_* (bias slot)")
    ax.set_ylabel(f"% of heads, eps = {eps}")
    ax.legend(fontsize=8)
    if alpha1_by_layer is not None:
        a = np.asarray(alpha1_by_layer, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != len(x):
            raise ValueError(f"alpha1_by_layer: expected shape [{len(x)}, layers], got {a.shape}")
        cmap = plt.get_cmap("viridis")
        for l in range(a.shape[1]):
            axes[0, 1].plot(x, a[:, l], color=cmap(l / max(1, a.shape[1] - 1)), lw=1.0,
                            label=f"layer {l}" if a.shape[1] <= 12 else None)
        axes[0, 1].axhline(eps, color="grey", ls=":", lw=0.8)
        uniform = np.cumsum(1.0 / np.arange(1, int(x.max()) + 1))[x.astype(int) - 1] / x  # H_T' / T'
        axes[0, 1].plot(x, uniform, "k:", lw=1.0, label="uniform attention")
        axes[0, 1].set_ylabel("alpha_1, mean over heads")
        if a.shape[1] <= 12:
            axes[0, 1].legend(fontsize=7, ncol=2)
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T'")
    fig.suptitle(title or "the sink against the sequence length")
    fig.tight_layout()
    return fig


def massive_activation(studies: dict[str, dict[str, Any]], *, title: str = "", heads: int = 10) -> Any:
    """``sinkinterp.massive.massive_study`` results by model name: ||h_1|| against the other tokens' mean
    norm at each block's input for every model (left), and for the model with the largest ratio its
    ``heads`` heads with the most attention on token 1, alpha_1 as measured and with the massive
    activation's strongest writer, and its strongest writers together, silenced at token 1 (right)."""
    if not studies:
        raise ValueError("studies: at least one massive_study result")
    for name, res in studies.items():
        missing = {"resid_first", "resid_rest", "massive_ratio", "alpha1", "neurons"} - set(res)
        if missing:
            raise ValueError(f"studies[{name!r}]: not a massive_study result (missing {sorted(missing)})")
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    for i, (name, res) in enumerate(studies.items()):
        x = range(len(res["resid_first"]))
        ax.plot(x, res["resid_first"], marker="o", ms=3, color=f"C{i}", label=f"{name}: ||h_1||")
        ax.plot(x, res["resid_rest"], ls="--", marker=".", color=f"C{i}", label=f"{name}: mean ||h_t||, t > 1")
    ax.set_yscale("log")
    ax.set_xlabel("resid_pre of layer (last: the final residual)")
    ax.set_ylabel("residual norm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    name, res = max(studies.items(), key=lambda kv: max(kv[1]["massive_ratio"]))
    a, ne = np.asarray(res["alpha1"], dtype=np.float64), res["neurons"]
    order = sorted(np.ndindex(*a.shape), key=lambda lh: -a[lh])[:heads]
    series = [("as measured", a),
              (f"neuron {ne['top'][0]['neuron']} of MLP {ne['layer']} silenced at token 1", ne["top1"]["alpha1_after"]),
              (f"its {ne['k']} strongest writers silenced", ne["interventions"][0]["alpha1_after"])]
    width = 0.8 / len(series)
    for j, (label, grid) in enumerate(series):
        grid = np.asarray(grid, dtype=np.float64)
        bx.bar([i + j * width for i in range(len(order))], [grid[lh] for lh in order], width, label=label)
    bx.set_xticks([i + width for i in range(len(order))], [f"L{l}H{h}" for l, h in order], fontsize=7)
    bx.set_ylabel("mean alpha_1")
    bx.set_title(f"{name}: the {len(order)} heads with the most attention on token 1", fontsize=8)
    bx.legend(fontsize=7, frameon=False)
    bx.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def gate_figure(studies: dict[str, dict[str, Any]], *, title: str = "", g_max: float = 1.5, spread_max: float = 0.6) -> Any:
    """``sinkinterp.gate.gate_study`` results by model name, one point per head: the effective gate
    (mean ||write|| / ||read||) against the mean weight on the sink, with the line g = 1 - a that a sink
    with a silent value gives under softmax (left); the gate's spread within a query position (its
    dependence on the content) against the same weight (middle); heads past ``g_max`` / ``spread_max``
    (unnormalized attention, whose gate is the row's total weight) are drawn on the top edge. Right,
    where measured: the loss change of opening every gate, of fixing it to its mean by position and of
    giving each text another text's gate. Fourth, where the softmax split was measured: each head's share
    of its log-odds on the sink (within positions) that the sink's logit carries, against the same
    weight (clipped to [-0.2, 1.2])."""
    from sinkinterp import gate

    if not studies:
        raise ValueError("studies: at least one gate_study result")
    for name, res in studies.items():
        missing = {"sink_mass", "gate", "gate_std_within", "sink"} - set(res)
        if missing:
            raise ValueError(f"studies[{name!r}]: not a gate_study result (missing {sorted(missing)})")
    plt = _plt()
    fig, (ax, bx, cx, dx) = plt.subplots(1, 4, figsize=(18, 4.0), layout="constrained")
    clipped, split = [], False
    for i, (name, res) in enumerate(studies.items()):
        a = gate.sink_share(res).ravel()  # the weight itself where attention normalizes
        g = np.asarray(res["gate"], dtype=np.float64).ravel()
        w = np.asarray(res["gate_std_within"], dtype=np.float64).ravel()
        if (g > g_max).any() or (w > spread_max).any():
            clipped.append(name)
        where = "token 1" if res["sink"] == "first" else "slot"
        ax.scatter(a, np.minimum(g, g_max), s=10, color=f"C{i}", alpha=0.7, label=f"{name} (sink: {where})")
        bx.scatter(a, np.minimum(w, spread_max), s=10, color=f"C{i}", alpha=0.7, label=name)
        if res.get("logit_split"):
            share = np.asarray(res["logit_split"]["sink_side_within"], dtype=np.float64).ravel()
            dx.scatter(a, np.clip(share, -0.2, 1.2), s=10, color=f"C{i}", alpha=0.7, label=name)
            split = True
    ax.plot([0, 1], [1, 0], color="0.5", lw=0.8, ls="--", label="g = 1 - a")
    ax.set_ylim(0, g_max * 1.04)
    bx.set_ylim(0, spread_max * 1.04)
    ax.set_xlabel("mean weight on the sink, a\n(its share of the row where not normalized)")
    ax.set_ylabel("mean effective gate, ||write|| / ||read||")
    ax.legend(fontsize=6, frameon=False)
    ax.grid(alpha=0.3)
    bx.set_xlabel("mean weight on the sink, a\n(its share of the row where not normalized)")
    bx.set_ylabel("std of the gate within a query position")
    bx.grid(alpha=0.3)
    if clipped:
        bx.set_title("heads past the top edge drawn on it: " + ", ".join(clipped), fontsize=7)
    measured = [(name, res["interventions"]) for name, res in studies.items() if res.get("interventions")]
    if measured:
        labels = {"open": "gate opened (sink removed)", "fixed": "gate fixed to its mean by position",
                  "token": "gate of position and query token", "donor": "another text's gate"}
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            vals = [next((x["delta_loss"] for x in runs if x["label"] == label), np.nan) for _, runs in measured]
            cx.bar([i + j * width for i in range(len(measured))], vals, width, label=labels[label])
        centres = [i + width * (len(labels) - 1) / 2 for i in range(len(measured))]
        cx.set_xticks(centres, [n for n, _ in measured], fontsize=7, rotation=20, ha="right")
        cx.set_ylabel("Δ loss (nats)")
        cx.legend(fontsize=7, frameon=False)
        cx.grid(alpha=0.3, axis="y")
    else:
        cx.set_axis_off()
        cx.text(0.5, 0.5, "no interventions run", ha="center", va="center", fontsize=8)
    if split:
        dx.axhline(0.5, color="0.5", lw=0.8, ls="--")
        dx.set_ylim(-0.25, 1.25)
        dx.set_xlabel("mean weight on the sink, a")
        dx.set_ylabel("share of the log-odds' variance on the sink's logit")
        dx.set_title("above 0.5: the query turns from the sink; below: other keys match", fontsize=7)
        dx.grid(alpha=0.3)
    else:
        dx.set_axis_off()
        dx.text(0.5, 0.5, "no softmax split measured", ha="center", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def turn_sources_figure(studies: dict[str, dict[str, Any]], *, title: str = "") -> Any:
    """``gate_stats(..., turn_sources=True)`` results by run name, one panel each: what writes the query's
    input, as its share of the query's turn (within positions, pooled over the heads with a >= DRIVER_FLOOR as
    ``gate.pooled_turn_sources`` does), by block: the embedding, then each block's attention and MLP output
    side by side; the panel's title gives the turn's share and the three kinds' sums."""
    from sinkinterp import gate

    if not studies:
        raise ValueError("studies: at least one gate result with the turn by source")
    pooled = {}
    for name, res in studies.items():
        src = gate.pooled_turn_sources(res) if isinstance(res, dict) and "logit_split" in res else None
        if src is None:
            raise ValueError(f"studies[{name!r}]: no turn by source (run gate_stats / sinkinterp gate with "
                             "turn_sources / --turn-sources on a model whose sink is token 1)")
        pooled[name] = src
    plt = _plt()
    fig, axes = plt.subplots(1, len(pooled), figsize=(6.0 * len(pooled), 3.8), layout="constrained", squeeze=False)
    for ax, (name, src) in zip(axes[0], pooled.items(), strict=True):
        x = np.asarray(src["shares"], dtype=np.float64)
        L = (len(x) - 1) // 2
        at = np.arange(L)
        ax.bar([-1], [x[0]], width=0.8, color="0.5", label="embedding")
        ax.bar(at - 0.2, x[1::2], width=0.4, color="C0", label="attention")
        ax.bar(at + 0.2, x[2::2], width=0.4, color="C1", label="MLP")
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.set_xlabel("block (-1: the embedding)")
        ax.set_ylabel("share of the log-odds' variance")
        ax.set_title(f"{name}\nturn {src['turn']:.0%} = embedding {src['embed']:+.0%}, attention {src['attn']:+.0%}, "
                     f"MLPs {src['mlp']:+.0%} ({src['heads']} heads)", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    return fig


def sink_paths_figure(results: dict[str, Any], *, title: str = "", max_senders: int = 100) -> Any:
    """``paths.sink_paths`` results: one heat map per side (key, query; one above the other), a row per layer
    with sink heads, a column per sender, the change of the heads' mean weight on token 1 with the sender
    ablated along its direct path (blank: a sender after the layer); ``paths.gate_paths`` results the same
    way, per side (query, sink_key, keys), the share of the gate's variance over texts each path carries, in
    %. The colours span the single senders' effects; the last column ("all", the whole residual input
    ablated) is printed in its cells (its colour clipped at the senders' span). With more than
    ``max_senders`` senders (neurons) only the ``max_senders`` with the largest effect anywhere are drawn, in
    their order, and the title says so."""
    if not isinstance(results, dict) or "layers" not in results or "senders" not in results:
        raise ValueError("results: expected paths.sink_paths' result (with 'layers' and 'senders')")
    rows = results["layers"]
    if not rows:
        raise ValueError("results: no layer with sink heads to draw")
    if not isinstance(max_senders, int) or max_senders < 1:
        raise ValueError(f"max_senders must be a positive integer, got {max_senders!r}")
    senders = list(results["senders"])
    sides = list(results["sides"])
    shown = ""
    if len(senders) > max_senders:
        size = dict.fromkeys(senders, 0.0)
        for row in rows:
            for side in sides:
                d = row[side]
                for name, v in zip(d["senders"], d["values"], strict=True):
                    size[name] = max(size[name], abs(v - d["base"]))
        keep = set(sorted(senders, key=lambda n: -size[n])[:max_senders])
        shown = f" — the {max_senders} of {len(senders)} senders with the largest effects"
        senders = [n for n in senders if n in keep]
    col = {name: i for i, name in enumerate(senders)}
    labels = [*senders, "all"]
    gate = results.get("reading") == "gate"  # paths.gate_paths: the change as a share of the gate's variance
    plt = _plt()
    fig, axes = plt.subplots(len(sides), 1, figsize=(max(6.0, 0.15 * len(labels) + 2.5),
                                                      len(sides) * max(2.4, 0.3 * len(rows) + 1.4)),
                             layout="constrained", squeeze=False)
    free = " (MLPs free)" if results.get("free_mlps") else ""
    sink_name = "the bias slot" if results.get("sink") == "slot" else "token 1"
    for ax, side in zip(axes[:, 0], sides, strict=True):
        arr = np.full((len(rows), len(labels)), np.nan)
        for r, row in enumerate(rows):
            d = row[side]
            scale = 100.0 if gate else 1.0  # gate_paths: shares of the gate's variance, in %
            for name, v in zip(d["senders"], d["values"], strict=True):
                if name in col:
                    arr[r, col[name]] = scale * (v - d["base"])
            arr[r, -1] = scale * (d["together"] - d["base"])
        half = float(np.nanmax(np.abs(arr[:, :-1]))) if np.isfinite(arr[:, :-1]).any() else 0.0
        half = half or float(np.nanmax(np.abs(arr))) or 1.0
        im = ax.imshow(np.ma.masked_invalid(arr), aspect="auto", cmap="RdBu_r", vmin=-half, vmax=half)
        for r in range(len(rows)):
            dark = abs(arr[r, -1]) > 0.6 * half  # on a dark cell, white text
            ax.text(len(labels) - 1, r, f"{arr[r, -1]:+.0f}%" if gate else f"{arr[r, -1]:+.2f}", ha="center",
                    va="center", fontsize=5,
                    color="white" if dark else "0.1")
        ax.set_xticks(np.arange(len(labels)), labels, rotation=90, fontsize=5 if len(labels) > 30 else 7)
        ax.set_yticks(np.arange(len(rows)), [f"L{row['layer']} ({len(row['heads'])})" for row in rows], fontsize=6)
        if gate:
            at = {"query": "at queries 2..T, into their queries", "sink_key": "at token 1, into its key",
                  "keys": "at the other positions, into their keys"}[side]
            edit = ("taken from other texts" if results.get("ablation") == "resample" else
                    "made its mean by position")
            ax.set_title(f"{side} side: sender's write {edit} {at}{free}", fontsize=8)
        else:
            how = results["key_ablation"] if side == "key" else results["query_ablation"]
            at = "at token 1, into their keys" if side == "key" else "at queries 2..T, into their queries"
            ax.set_title(f"{side} side: sender {how}-ablated {at}{free}", fontsize=8)
        ax.set_ylabel("sink heads' layer (count)", fontsize=7)
        label = "share of gate variance, %" if gate else f"Δ mean weight on {sink_name}"
        fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    if title or shown:
        fig.suptitle(title + shown, fontsize=9)
    return fig


def targets_figure(studies: dict[str, dict[str, Any]], copy_curves: dict[str, Any] | None = None, *,
                   title: str = "") -> Any:
    """Where the weight off the sink goes (``sinkinterp.gate`` ``targets``), by model name: left, the share
    of the summed weight off the sink, over the heads with mean sink share >= ``gate.DRIVER_FLOOR``, that
    lands on each key category (bars; the share spreading it evenly over the causal keys would give as
    ticks); middle, the same weight by the key's distance from the query. Right, where ``copy_curves``
    holds (positions, m on random ids, m on copied random ids, first copied position) per model: the
    mean weight off the sink by query position of its induction heads, on the two inputs."""
    from sinkinterp import gate

    if not studies:
        raise ValueError("studies: at least one gate_stats result with targets")
    pooled = {}
    for name, res in studies.items():
        if not isinstance(res, dict) or "sink_mass" not in res or not res.get("targets"):
            raise ValueError(f"studies[{name!r}]: not a gate_stats result with targets")
        pooled[name] = gate.pooled_targets(res)
    plt = _plt()
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4.0), layout="constrained")
    cats = list(gate.TARGETS)
    names = [n for n, p in pooled.items() if p is not None]
    left = np.zeros(len(names))
    for c, cat in enumerate(cats):
        vals = np.array([pooled[n]["share"][cat] for n in names])
        ax.barh(range(len(names)), vals, left=left, color=f"C{c}", label=cat)
        uni = np.array([pooled[n]["uniform"][cat] for n in names])
        if uni.any():  # where each category would end if the weight were spread evenly over the keys
            cum_uni = np.array([sum(pooled[n]["uniform"][k] for k in cats[:c + 1]) for n in names])
            ax.scatter(cum_uni, range(len(names)), marker="|", s=120, color="k", lw=1.0,
                       label="spread evenly (cumulative)" if c == 1 else None)
        left += vals
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the weight off the sink (heads with a >= {gate.DRIVER_FLOOR:g})")
    ax.legend(fontsize=6, frameon=False, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    for i, n in enumerate(names):
        bins = list(pooled[n]["distance_share"])
        bx.plot(range(len(bins)), [pooled[n]["distance_share"][b] for b in bins], marker="o", ms=3, color=f"C{i}",
                label=n)
        bx.set_xticks(range(len(bins)), bins, fontsize=7)
    bx.set_xlabel("distance from the query, t - j")
    bx.set_ylabel("share of the weight off the sink")
    bx.legend(fontsize=6, frameon=False)
    bx.grid(alpha=0.3)
    if copy_curves:
        for i, (name, (pos, m_random, m_copy, start)) in enumerate(copy_curves.items()):
            cx.plot(pos, m_copy, color=f"C{i}", label=f"{name}: copied half")
            cx.plot(pos, m_random, color=f"C{i}", ls="--", lw=0.8, label=f"{name}: random ids")
            cx.axvline(start, color=f"C{i}", lw=0.6, ls=":")
        cx.set_xlabel("query position (0-based)")
        cx.set_ylabel("mean weight off the sink, m, of the induction heads")
        cx.set_ylim(0, 1)
        cx.legend(fontsize=6, frameon=False)
        cx.grid(alpha=0.3)
    else:
        cx.set_axis_off()
        cx.text(0.5, 0.5, "no induction heads on copied inputs", ha="center", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def neuron_search_figure(results: dict[str, Any], *, title: str = "", label: int = 4) -> Any:
    """The neuron searches of ``paths.sink_paths`` results (``search_mlps``): a row per (layer, side, MLP); or
    one ``paths.neuron_search`` result (any metric), one row. Left: each neuron's two readings as shares of
    every neuron's effect: ablated alone (x) and, kept alone with every other ablated, what it holds up (y); a
    neuron that another backs up sits high and to the left, and the ``label`` strongest by each reading are
    named (those above 2%). Right: the best group's share by its size."""
    if isinstance(results, dict) and {"alone", "others", "best", "mlp"} <= results.keys():  # one neuron_search
        found = [(None, None, results)]
    elif not isinstance(results, dict) or "layers" not in results:
        raise ValueError("results: expected paths.sink_paths' result (with 'layers') or paths.neuron_search's")
    else:
        found = [(row["layer"], side, s) for row in results["layers"] for side in ("key", "query")
                 for s in row.get(side, {}).get("search", [])]
    if not found:
        raise ValueError("results: no neuron search to draw (sink_paths(search_mlps=...))")
    if not isinstance(label, int) or label < 0:
        raise ValueError(f"label must be a non-negative integer, got {label!r}")
    plt = _plt()
    fig, axes = plt.subplots(len(found), 2, figsize=(8.0, 2.8 * len(found)), layout="constrained", squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for (ax, bx), (layer, side, s) in zip(axes, found, strict=True):
        whole = s["whole"] or 1.0
        alone = np.asarray(s["alone"], dtype=np.float64) / whole
        kept = (whole - np.asarray(s["others"], dtype=np.float64)) / whole  # held up by the neuron kept alone
        ax.scatter(alone, kept, s=6, color="0.55", alpha=0.7, linewidths=0)
        named = [u for u in dict.fromkeys([*np.argsort(-alone, kind="stable")[:label],
                                           *np.argsort(-kept, kind="stable")[:label]])
                 if max(alone[u], kept[u]) > 0.02]  # (not the crowd near 0)
        for u in named:
            ax.scatter([alone[u]], [kept[u]], s=14, color="C3")
            ax.annotate(f"N{u}", (alone[u], kept[u]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(0, color="0.8", lw=0.6)
        ax.axvline(0, color="0.8", lw=0.6)
        ax.set_xlabel("ablated alone: share of the whole MLP's effect", fontsize=7)
        ax.set_ylabel("kept alone: share held up", fontsize=7)
        where = "" if layer is None else f"L{layer} {side} side, "
        ax.set_title(f"{where}MLP {s['mlp']}'s {s['d_mlp']} neurons (all {s['whole']:+.3f})", fontsize=8)
        ax.tick_params(labelsize=6)
        sizes = [len(b["neurons"]) for b in s["best"]]
        shares = [b["effect"] / whole for b in s["best"]]
        bx.plot(sizes, shares, marker="o", color="C0")
        for k, sh, b in zip(sizes, shares, s["best"], strict=True):
            bx.annotate("+".join(map(str, b["neurons"])), (k, sh), fontsize=5, xytext=(2, -8), textcoords="offset points")
        bx.axhline(1, color="0.6", lw=0.6, ls="--")
        bx.set_xticks(sizes)
        bx.set_xlabel("group size", fontsize=7)
        bx.set_ylabel("the best group's share", fontsize=7)
        bx.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
