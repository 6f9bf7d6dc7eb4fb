"""Figures.  Every function writes a PNG (and a PDF when ``pdf=True``) and returns the
paths written.  matplotlib runs on the non-interactive Agg backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .palette import label_colors, label_palette, order_labels


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


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
    order = order_labels(labels)
    if colors is None:
        colors = label_palette(order)
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
                   pdf: bool = False, note: str | None = None) -> list[Path]:
    """2-D scatter of a sample embedding coloured by label (legend outside the axes);
    ``note`` (e.g. the kNN accuracy of the labels) is written under the axes."""
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
    if note:
        ax.text(0.0, -0.13, note, transform=ax.transAxes, ha="left", va="top", fontsize=9)
    return _save(fig, path, pdf)


def plot_transform(train_Z: np.ndarray, new_Z: np.ndarray, labels: Sequence | None,
                   path: str | os.PathLike, *, pdf: bool = False, train_labels: Sequence | None = None,
                   label_name: str = "label") -> list[Path]:
    """New samples (hollow triangles) over the training embedding (small dots), both
    coloured by label with one palette when labels are known (training dots grey
    otherwise); the legend, titled ``label_name``, also says which marker is which."""
    from matplotlib.lines import Line2D

    plt = _plt()
    train_Z, new_Z = np.asarray(train_Z), np.asarray(new_Z)
    if train_Z.shape[1] < 2:
        train_Z = np.column_stack([train_Z[:, 0], np.zeros(len(train_Z))])
        new_Z = np.column_stack([new_Z[:, 0], np.zeros(len(new_Z))])
    fig, ax = plt.subplots(figsize=(7, 5.2))
    known = [v for v in (train_labels, labels) if v is not None]
    colors = label_palette(order_labels([str(x) for v in known for x in v])) if known else None
    draw_embedding(ax, train_Z, train_labels, size=6, colors=colors)
    if train_labels is not None:
        for coll in ax.collections:
            coll.set_alpha(0.45)
    draw_embedding(ax, new_Z, labels, marker="^", size=30, hollow=True, colors=colors)
    grey = "0.45"
    handles = [Line2D([], [], linestyle="", marker="o", markersize=4, color=grey, label="training samples"),
               Line2D([], [], linestyle="", marker="^", markerfacecolor="none", color=grey, label="new samples")]
    if colors:
        handles += [Line2D([], [], linestyle="", marker="o", color=c, label=k) for k, c in colors.items()]
    ax.legend(handles=handles, title=label_name if colors else None, loc="center left",
              bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, ncol=1 if len(handles) <= 22 else 2)
    ax.set_title("new samples embedded into the training embedding", fontsize=10)
    ax.set_xlabel("FE1")
    ax.set_ylabel("FE2")
    return _save(fig, path, pdf)


def _plain_log_ticks(ax) -> None:
    """Tick labels of a log y axis as plain numbers (0.6, not 6x10^-1); minor ticks are
    labelled too when the axis spans less than ~1.5 decades (at 2, 3, 4 and 6 x 10^k, or
    all of them within a factor of 3)."""
    from matplotlib.ticker import FuncFormatter

    def major(v, _pos):
        return f"{v:g}"

    def minor(v, _pos):
        lo, hi = ax.get_ylim()
        if v <= 0 or lo <= 0 or hi / lo > 30:
            return ""
        mantissa = round(v / 10 ** np.floor(np.log10(v)), 6)
        return f"{v:g}" if hi / lo < 3 or mantissa in (2, 3, 4, 6) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(major))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                         title: str = "Training", pdf: bool = False, smooth: int | None = None) -> list[Path]:
    """Loss (log scale) and Pearson r of the batch reconstruction by step; raw values
    faint, a moving average bold.  With a validation curve (``val_step`` and
    ``val_loss``, or a ``val_loss`` column that is NaN where not measured, as in
    ``history.csv``), the held-out entries' MSE is drawn on the loss panel."""
    plt = _plt()
    step = np.asarray(history["step"])
    val_step = val_loss = None
    if "val_loss" in history and len(history["val_loss"]):
        val_loss = np.asarray(history["val_loss"], dtype=float)
        if "val_step" in history:
            val_step = np.asarray(history["val_step"])
        elif len(val_loss) == len(step):
            keep = np.isfinite(val_loss)
            val_step, val_loss = step[keep], val_loss[keep]
        else:
            val_loss = None
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
    if val_loss is not None and len(val_loss):
        a1.plot(val_step, val_loss, color="tab:orange", linewidth=1.5, marker="o", markersize=2.5,
                label="held-out entries (validation)")
        best = int(np.argmin(val_loss))
        a1.axvline(val_step[best], color="tab:orange", linewidth=0.8, linestyle=":")
    a1.set_yscale("log")
    _plain_log_ticks(a1)
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


# --------------------------------------------------------------------------
# evaluation and sweep figures (PNG + PDF by default)
# --------------------------------------------------------------------------

METHOD_STYLE = {"fe": ("tab:red", "o", "FE"), "pca": ("tab:blue", "s", "PCA"),
                "umap": ("tab:green", "^", "UMAP"), "full": ("0.3", "", "full profile")}
_METRIC_TITLES = {"knn_accuracy": "kNN (k = 5)", "logreg_accuracy": "logistic regression",
                  "mlp_accuracy": "MLP (64 hidden units)", "knn_r2": "kNN regressor: R²",
                  "ridge_r2": "ridge: R²", "knn_spearman_r": "kNN regressor: Spearman r",
                  "ridge_spearman_r": "ridge: Spearman r", "c_index": "Cox model: c-index"}


def _method_style(method: str, k: int = 0):
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    import matplotlib
    return matplotlib.colormaps["tab10"](4 + k % 6), "D", method


def plot_train_test_embedding(Z_train: np.ndarray, y_train: Sequence | None, Z_test: np.ndarray,
                              y_test: Sequence | None, path: str | os.PathLike, *,
                              title: str = "Embedding after inference of the test samples",
                              label_name: str = "label", axis_prefix: str = "FE",
                              pdf: bool = True) -> list[Path]:
    """Training samples as dots, test samples (embedded out of sample) as hollow
    triangles, both coloured by label with one shared colour map."""
    plt = _plt()
    Z_train, Z_test = np.asarray(Z_train), np.asarray(Z_test)
    if Z_train.shape[1] < 2:
        Z_train = np.column_stack([Z_train[:, 0], np.zeros(len(Z_train))])
        Z_test = np.column_stack([Z_test[:, 0], np.zeros(len(Z_test))])
    fig, ax = plt.subplots(figsize=(7, 5.2))
    colors = None
    if y_train is not None or y_test is not None:
        allv = list(y_train if y_train is not None else []) + list(y_test if y_test is not None else [])
        order = order_labels(allv)
        colors = label_palette(order)
    draw_embedding(ax, Z_train, y_train, size=10, colors=colors)
    draw_embedding(ax, Z_test, y_test, marker="^", size=34, hollow=True, colors=colors)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], linestyle="", marker="o", color="0.3", label="training fold"),
               Line2D([], [], linestyle="", marker="^", markerfacecolor="none", color="0.3",
                      label="test fold (inferred)")]
    if colors:
        handles += [Line2D([], [], linestyle="", marker="o", color=colors[k], label=k) for k in colors]
    ax.legend(handles=handles, title=label_name, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
              ncol=1 if len(handles) <= 22 else 2, frameon=False)
    ax.set_xlabel(f"{axis_prefix}1")
    ax.set_ylabel(f"{axis_prefix}2")
    ax.set_title(title, fontsize=10)
    return _save(fig, path, pdf)


def plot_speed_by_gene_dim(table, path: str | os.PathLike, *, title: str = "Computing time by gene-embedding size",
                           steps: int = 100_000, pdf: bool = True) -> list[Path]:
    """Speed (it/s) and the time ``steps`` iterations would take, by ``gene_dim``.

    ``table``: a CSV path or a DataFrame with columns ``gene_dim, it_per_s`` (the perf
    bench's ``bench/results/gene_dim.csv``); an optional ``device`` (or ``label``)
    column gives one line per device.  Repeated rows are averaged (error bar = sd)."""
    import pandas as pd
    plt = _plt()
    df = pd.read_csv(table) if isinstance(table, (str, os.PathLike)) else pd.DataFrame(table)
    missing = {"gene_dim", "it_per_s"} - set(df.columns)
    if missing:
        raise ValueError(f"speed table lacks column(s) {sorted(missing)}; it needs gene_dim and it_per_s")
    group = next((c for c in ("device", "label", "machine") if c in df.columns), None)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.9))
    groups = [(None, df)] if group is None else list(df.groupby(group, sort=False))
    for k, (name, sub) in enumerate(groups):
        g = sub.groupby("gene_dim")["it_per_s"].agg(["mean", "std"]).reset_index().sort_values("gene_dim")
        lab = "measured" if name is None else str(name)
        color = label_colors(max(1, len(groups)))[k]
        a1.errorbar(g["gene_dim"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, color=color, label=lab)
        minutes = steps / g["mean"] / 60.0
        a2.plot(g["gene_dim"], minutes, marker="o", color=color, label=lab)
    ticks = sorted(set(int(g) for g in df["gene_dim"]))
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xticks(ticks)
        a.set_xticklabels([str(t) for t in ticks], fontsize=8)
        a.minorticks_off()
        a.set_xlabel("gene-embedding size (gene_dim)")
        a.grid(alpha=0.3)
        a.legend(frameon=False, fontsize=8)
    a1.set_ylabel("training speed (iterations / s)")
    a1.set_title("speed")
    a2.set_ylabel(f"minutes for {steps:,} iterations")
    a2.set_title("computing time")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, pdf)


def plot_accuracy_by_dim(results, path: str | os.PathLike, *, metrics: Sequence[str] | None = None,
                         chance: float | None = None, title: str = "Accuracy by dimension",
                         pdf: bool = True, ylabel: str = "test-fold accuracy (mean ± sd over folds)") -> list[Path]:
    """One panel per classifier; one line per method (mean over folds, error bars = sd)
    against the embedding dimension (log2 axis).  ``results``: a tidy DataFrame or CSV
    with columns ``fold, method, dim, metric, value``.  The method ``full`` (whole
    profile) is drawn as a horizontal band."""
    import pandas as pd
    plt = _plt()
    df = pd.read_csv(results) if isinstance(results, (str, os.PathLike)) else results
    metrics = list(metrics or [m for m in _METRIC_TITLES if m in set(df["metric"])])
    if not metrics:
        raise ValueError("no accuracy metric in the results")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.3 * len(metrics), 3.9), sharey=True, squeeze=False)
    methods = list(dict.fromkeys(df["method"]))
    dims_all = sorted(set(df.loc[df["method"] != "full", "dim"]))
    for ax, metric in zip(axes[0], metrics):
        sub = df[df["metric"] == metric]
        for k, m in enumerate(methods):
            g = sub[sub["method"] == m].groupby("dim")["value"].agg(["mean", "std"]).reset_index()
            if g.empty:
                continue
            color, marker, name = _method_style(m, k)
            if m == "full":
                mu, sd = float(g["mean"].iloc[0]), float(np.nan_to_num(g["std"].iloc[0]))
                ax.axhline(mu, color=color, linestyle="--", linewidth=1.2, label=f"{name} ({int(g['dim'].iloc[0])} genes)")
                if dims_all:
                    ax.fill_between([min(dims_all), max(dims_all)], mu - sd, mu + sd, color=color, alpha=0.12,
                                    linewidth=0)
                continue
            ax.errorbar(g["dim"], g["mean"], yerr=g["std"].fillna(0), marker=marker, color=color, capsize=3,
                        label=name, linewidth=1.5, markersize=5)
        if chance is not None:
            ax.axhline(chance, color="0.5", linestyle=":", linewidth=1, label=f"chance ({chance:.2f})")
        ax.set_xscale("log", base=2)
        if dims_all:
            ax.set_xticks(dims_all)
            ax.set_xticklabels([str(d) for d in dims_all])
        ax.set_xlabel("embedding dimension")
        ax.set_title(_METRIC_TITLES.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, pdf)


def plot_distance_scatter(panels: Sequence[Mapping], path: str | os.PathLike, *,
                          title: str = "Preservation of pairwise distances", pdf: bool = True,
                          max_points: int = 3000) -> list[Path]:
    """Expression-space distance vs embedding distance, one panel per entry of
    ``panels`` (dicts with ``method, dim, d_expr, d_emb``; ``r`` is computed when absent).
    Rows = methods, columns = dimensions; Pearson r in each panel's title."""
    plt = _plt()
    methods = list(dict.fromkeys(p["method"] for p in panels))
    dims = sorted(set(int(p["dim"]) for p in panels))
    fig, axes = plt.subplots(len(methods), len(dims), figsize=(2.3 * len(dims) + 0.6, 2.3 * len(methods) + 0.6),
                             squeeze=False)
    index = {(p["method"], int(p["dim"])): p for p in panels}
    for i, m in enumerate(methods):
        color, _, name = _method_style(m, i)
        for j, d in enumerate(dims):
            ax = axes[i][j]
            p = index.get((m, d))
            if p is None:
                ax.set_axis_off()
                continue
            x = np.asarray(p["d_expr"], dtype=float)
            y = np.asarray(p["d_emb"], dtype=float)
            r = p.get("r")
            if r is None:
                xc, yc = x - x.mean(), y - y.mean()
                den = np.sqrt((xc @ xc) * (yc @ yc))
                r = float(xc @ yc / den) if den > 0 else float("nan")
            sel = slice(None) if len(x) <= max_points else np.linspace(0, len(x) - 1, max_points).astype(int)
            ax.scatter(x[sel], y[sel], s=2, alpha=0.35, color=color, linewidths=0, rasterized=True)
            ax.set_title(f"{name} {d}-D: r = {r:.2f}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(methods) - 1:
                ax.set_xlabel("expression distance", fontsize=8)
            if j == 0:
                ax.set_ylabel("embedding distance", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, pdf)


def _fmt_l2(v: float) -> str:
    return "0" if v == 0 else f"{v:g}"


def _grid_axes(n_rows: int, n_cols: int, size: float = 2.2):
    plt = _plt()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols + 1.0, size * n_rows + 0.8), squeeze=False)
    return fig, axes


def _label_grid_axes(fig, axes, gene_dims, l2s) -> None:
    for i, gd in enumerate(gene_dims):
        axes[i][0].set_ylabel(f"gene_dim = {gd}\nFE2", fontsize=8)
    for j, l2 in enumerate(l2s):
        axes[0][j].set_title(f"L2 = {_fmt_l2(l2)}", fontsize=9)
        axes[-1][j].set_xlabel("FE1", fontsize=8)


def sweep_axis_limits(embeddings: Mapping, pad: float = 0.03) -> tuple[float, float, float, float]:
    """Common (x0, x1, y0, y1) covering every cell's 2-D embedding (with a margin)."""
    Zs = [np.asarray(Z)[:, :2] for Z in embeddings.values() if Z is not None and len(Z)]
    if not Zs:
        return (-1.0, 1.0, -1.0, 1.0)
    allz = np.vstack(Zs)
    lo, hi = allz.min(0), allz.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def plot_sweep_density_grid(embeddings: Mapping, gene_dims: Sequence[int], l2s: Sequence[float],
                            path: str | os.PathLike, *, bins: int = 30,
                            limits: tuple[float, float, float, float] | None = None,
                            title: str = "Density of the 2-D sample embedding (30 x 30 bins, common axes)",
                            pdf: bool = True) -> list[Path]:
    """2-D histogram (``bins`` x ``bins``) of each grid cell's embedding, rows = gene_dim,
    columns = L2, all panels on the same fixed axes.  ``embeddings`` maps
    ``(gene_dim, l2)`` to an (n, 2) array; cells not yet run are left blank."""
    x0, x1, y0, y1 = limits or sweep_axis_limits(embeddings)
    fig, axes = _grid_axes(len(gene_dims), len(l2s))
    xe, ye = np.linspace(x0, x1, bins + 1), np.linspace(y0, y1, bins + 1)
    im = None
    for i, gd in enumerate(gene_dims):
        for j, l2 in enumerate(l2s):
            ax = axes[i][j]
            Z = embeddings.get((gd, l2))
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.tick_params(labelsize=6)
            if Z is None:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="0.5")
                continue
            Z = np.asarray(Z)
            H, _, _ = np.histogram2d(Z[:, 0], Z[:, 1], bins=[xe, ye])
            im = ax.imshow(np.log1p(H.T), origin="lower", extent=(x0, x1, y0, y1), aspect="auto", cmap="viridis")
    _label_grid_axes(fig, axes, gene_dims, l2s)
    fig.suptitle(title)
    fig.tight_layout()
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.6, pad=0.02)
        cb.set_label("log(1 + samples per bin)")
    return _save(fig, path, pdf)


def plot_legend_sheet(labels: Sequence, path: str | os.PathLike, *, title: str = "Labels",
                      colors: Mapping | None = None, pdf: bool = True) -> list[Path]:
    """A separate sheet with one coloured marker per label (for grids of small panels)."""
    plt = _plt()
    order = order_labels(labels)
    colors = colors or label_palette(order)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], linestyle="", marker="o", markersize=8, color=colors[k], label=k) for k in order]
    ncol = 1 if len(order) <= 12 else (2 if len(order) <= 30 else 3)
    rows = int(np.ceil(len(order) / ncol))
    fig = plt.figure(figsize=(3.2 * ncol, 0.28 * rows + 0.8))
    fig.legend(handles=handles, loc="center", ncol=ncol, frameon=False, fontsize=9, title=title)
    return _save(fig, path, pdf)


def plot_sweep_scatter_grid(embeddings: Mapping, labels: Sequence | None, gene_dims: Sequence[int],
                            l2s: Sequence[float], path: str | os.PathLike, *,
                            limits: tuple[float, float, float, float] | None = None,
                            title: str = "2-D sample embedding per grid cell, coloured by label",
                            label_name: str = "label", pdf: bool = True) -> list[Path]:
    """Scatter of each cell's embedding coloured by label (same colours in all panels,
    common axes); the legend is a separate sheet ``<path>_legend``.  Returns the
    grid's files followed by the legend sheet's."""
    x0, x1, y0, y1 = limits or sweep_axis_limits(embeddings)
    fig, axes = _grid_axes(len(gene_dims), len(l2s))
    colors = None
    if labels is not None:
        order = order_labels(labels)
        colors = label_palette(order)
    for i, gd in enumerate(gene_dims):
        for j, l2 in enumerate(l2s):
            ax = axes[i][j]
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.tick_params(labelsize=6)
            Z = embeddings.get((gd, l2))
            if Z is None:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="0.5")
                continue
            draw_embedding(ax, np.asarray(Z), labels, size=3, colors=colors)
    _label_grid_axes(fig, axes, gene_dims, l2s)
    fig.suptitle(title + ("" if labels is None else " (legend: separate sheet)"))
    fig.tight_layout()
    path = Path(path)
    written = _save(fig, path, pdf)
    if labels is not None:
        written += plot_legend_sheet(labels, path.with_name(path.name + "_legend"), title=label_name,
                                     colors=colors, pdf=pdf)
    return written


def plot_sweep_heatmap(table, path: str | os.PathLike, *, value: str = "accuracy",
                       title: str = "5-fold kNN accuracy on the 2-D embedding", cbar_label: str | None = None,
                       pdf: bool = True) -> list[Path]:
    """Heat-map of ``value`` per grid cell (rows = gene_dim, columns = L2), values
    written in the cells.  ``table``: DataFrame or CSV with ``gene_dim, l2, <value>``."""
    import pandas as pd
    plt = _plt()
    df = pd.read_csv(table) if isinstance(table, (str, os.PathLike)) else table
    piv = df.pivot_table(index="gene_dim", columns="l2", values=value, aggfunc="mean")
    piv = piv.sort_index().reindex(sorted(piv.columns), axis=1)
    fig, ax = plt.subplots(figsize=(1.2 * piv.shape[1] + 2.2, 0.7 * piv.shape[0] + 1.6))
    im = ax.imshow(piv.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    vals = piv.to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    mid = float(np.mean([finite.min(), finite.max()])) if finite.size else 0.0
    for i in range(piv.shape[0]):
        for j in range(piv.shape[1]):
            v = vals[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v < mid else "black")
    ax.set_xticks(range(piv.shape[1]))
    ax.set_xticklabels([_fmt_l2(float(c)) for c in piv.columns])
    ax.set_yticks(range(piv.shape[0]))
    ax.set_yticklabels([str(i) for i in piv.index])
    ax.set_xlabel("L2 penalty")
    ax.set_ylabel("gene-embedding size (gene_dim)")
    ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(cbar_label or value)
    fig.tight_layout()
    return _save(fig, path, pdf)


def interactive(fe, labels: Sequence | None = None, new=None, path: str | os.PathLike | None = None, **kw):
    """The interactive HTML page of a fitted model (bokeh; the ``interactive`` extra):
    hover, colour by annotation, new samples, gene search.  Returns the bokeh layout and
    writes one self-contained HTML file when ``path`` is given.  ``new``: new samples'
    embeddings (``fe.transform(X_new)``) or ``{"Z", "samples", "annotations"}``; more
    keywords (``annotations=``, ``label_name=``, ``dims=``, ``k_genes=``, ``color_by=``):
    :func:`factembed.plot.page.page_from_estimator`."""
    from .page import page_from_estimator
    return page_from_estimator(fe, labels, new=new, path=path, **kw)
