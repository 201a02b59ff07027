"""Matplotlib figures of a measurement: alpha heat map (layer x head), Sink_k over key positions, and
norms of token 1 vs the rest per layer. Figures are written atomically (PNG)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from sinkinterp.fileio import atomic_write

__all__ = ["alpha_heatmap", "norms_figure", "sink_by_position", "save_figure"]


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


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
