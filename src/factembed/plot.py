"""Figures.  Every function writes a PNG (and a PDF when ``pdf=True``) and returns the
paths written.  matplotlib runs on the non-interactive Agg backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def label_colors(n: int) -> list:
    """``n`` distinguishable colours: tab10/tab20 for few labels, then tab20 + tab20b +
    tab20c (60 colours) so that the study's 33 cancer types stay distinct."""
    import matplotlib
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    pool = []
    for name in ("tab20", "tab20b", "tab20c"):
        cmap = matplotlib.colormaps[name]
        pool.extend(cmap(i) for i in range(20))
    if n <= len(pool):
        return pool[:n]
    hsv = matplotlib.colormaps["hsv"]
    return pool + [hsv(i / (n - len(pool))) for i in range(n - len(pool))]


def _order_labels(labels: Sequence) -> list:
    uniq = list(dict.fromkeys(str(x) for x in labels))
    try:
        return sorted(uniq, key=lambda s: float(s.rstrip("h")))
    except ValueError:
        return sorted(uniq)


def _save(fig, path: str | os.PathLike, pdf: bool) -> list[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png")]
    fig.savefig(out[0], dpi=150, bbox_inches="tight")
    if pdf:
        out.append(path.with_suffix(".pdf"))
        fig.savefig(out[1], bbox_inches="tight")
    _plt().close(fig)
    return out


def draw_embedding(ax, Z: np.ndarray, labels: Sequence | None, *, marker: str = "o", size: float = 12,
                   hollow: bool = False, colors: Mapping[str, object] | None = None) -> dict:
    """Scatter the first two columns of ``Z`` on ``ax``, coloured by ``labels``; returns
    the label -> colour map used (pass it back to keep colours across panels)."""
    Z = np.asarray(Z)
    if labels is None:
        ax.scatter(Z[:, 0], Z[:, 1], s=size, c="0.3", marker=marker, linewidths=0)
        return {}
    labels = np.asarray([str(x) for x in labels])
    order = _order_labels(labels)
    if colors is None:
        colors = dict(zip(order, label_colors(len(order))))
    for lab in order:
        sel = labels == lab
        if not sel.any():
            continue
        if hollow:
            ax.scatter(Z[sel, 0], Z[sel, 1], s=size, marker=marker, facecolors="none",
                       edgecolors=[colors[lab]], linewidths=0.8, label=lab)
        else:
            ax.scatter(Z[sel, 0], Z[sel, 1], s=size, marker=marker, color=colors[lab], linewidths=0,
                       label=lab)
    return dict(colors)


def plot_embedding(Z: np.ndarray, labels: Sequence | None, path: str | os.PathLike, *,
                   title: str = "Factorized Embeddings: sample embedding", label_name: str = "label",
                   pdf: bool = False) -> list[Path]:
    """2-D scatter of a sample embedding coloured by label (legend outside the axes)."""
    plt = _plt()
    Z = np.asarray(Z)
    if Z.shape[1] < 2:
        Z = np.column_stack([Z[:, 0], np.zeros(len(Z))])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    draw_embedding(ax, Z, labels)
    ax.set_xlabel("FE1")
    ax.set_ylabel("FE2")
    ax.set_title(title)
    if labels is not None:
        n = len(set(map(str, labels)))
        ax.legend(title=label_name, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                  ncol=1 if n <= 20 else 2, frameon=False, markerscale=1.5)
    return _save(fig, path, pdf)


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                         title: str = "Training", pdf: bool = False, smooth: int | None = None) -> list[Path]:
    """Loss (log scale) and Pearson r of the batch reconstruction by step; raw values
    faint, a moving average bold."""
    plt = _plt()
    step = np.asarray(history["step"])
    loss = np.asarray(history["loss"], dtype=float)
    r = np.asarray(history["pearson_r"], dtype=float)
    k = smooth or max(1, len(step) // 100)

    def avg(v):
        if k <= 1 or len(v) < k:
            return v
        c = np.convolve(np.nan_to_num(v), np.ones(k) / k, mode="valid")
        return np.concatenate([np.full(k - 1, np.nan), c])

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(step, loss, color="tab:blue", alpha=0.25, linewidth=0.6)
    a1.plot(step, avg(loss), color="tab:blue", linewidth=1.5, label=f"moving average ({k} steps)")
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("MSE of the batch")
    a1.set_title("loss")
    a1.legend(frameon=False, fontsize=8)
    a2.plot(step, r, color="tab:green", alpha=0.25, linewidth=0.6)
    a2.plot(step, avg(r), color="tab:green", linewidth=1.5)
    a2.set_xlabel("step")
    a2.set_ylabel("Pearson r")
    a2.set_title("reconstruction of the batch")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, pdf)
