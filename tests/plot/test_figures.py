"""Figures of factembed.plot: every file is written, non-empty and opens as an image."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from factembed import plot
from factembed.plot import figures


def _check(paths, n=2):
    assert len(paths) >= n
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0, p
        if p.suffix == ".png":
            img = mpimg.imread(p)
            assert img.ndim == 3 and min(img.shape[:2]) > 50
            assert img[..., :3].std() > 0.01, "blank image"
        else:
            assert p.suffix == ".pdf" and p.read_bytes()[:5] == b"%PDF-"
    return paths


def _tidy(rng):
    rows = []
    for fold in range(3):
        for method in ("fe", "pca", "umap"):
            for dim in (2, 4, 8):
                for metric in ("knn_accuracy", "logreg_accuracy", "mlp_accuracy", "distance_r"):
                    rows.append((fold, method, dim, metric, rng.uniform(0.3, 0.9)))
        for metric in ("knn_accuracy", "logreg_accuracy", "mlp_accuracy"):
            rows.append((fold, "full", 500, metric, rng.uniform(0.8, 0.95)))
    return pd.DataFrame(rows, columns=["fold", "method", "dim", "metric", "value"])


def test_accuracy_by_dim(tmp_path):
    rng = np.random.default_rng(0)
    df = _tidy(rng)
    _check(plot.plot_accuracy_by_dim(df, tmp_path / "acc", chance=0.25))
    df.to_csv(tmp_path / "r.csv", index=False)
    _check(plot.plot_accuracy_by_dim(tmp_path / "r.csv", tmp_path / "acc2", metrics=["knn_accuracy"]))


def test_distance_scatter(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 10, 500)
    panels = [{"method": m, "dim": d, "d_expr": x, "d_emb": x * 0.5 + rng.normal(0, s, 500)}
              for m, s in (("fe", 1.0), ("pca", 0.1)) for d in (2, 8)]
    paths = _check(plot.plot_distance_scatter(panels, tmp_path / "dist"))
    assert paths[0].name == "dist.png" and paths[1].name == "dist.pdf"


def test_train_test_embedding(tmp_path):
    rng = np.random.default_rng(2)
    Ztr, Zte = rng.normal(size=(80, 2)), rng.normal(size=(20, 2))
    ytr, yte = rng.choice(["0h", "24h", "48h"], 80), rng.choice(["0h", "24h", "48h", "72h"], 20)
    _check(plot.plot_train_test_embedding(Ztr, ytr, Zte, yte, tmp_path / "tt"))
    _check(plot.plot_train_test_embedding(Ztr[:, :1], None, Zte[:, :1], None, tmp_path / "tt1", pdf=False), n=1)


def test_speed_by_gene_dim(tmp_path):
    csv = tmp_path / "gene_dim.csv"
    pd.DataFrame({"gene_dim": [2, 10, 25, 50, 100, 1000, 10], "it_per_s": [97, 95, 92, 83, 71, 19, 94]}).to_csv(
        csv, index=False)
    _check(plot.plot_speed_by_gene_dim(csv, tmp_path / "speed"))
    two = pd.DataFrame({"gene_dim": [10, 100] * 2, "it_per_s": [90, 70, 30, 20], "device": ["gpu"] * 2 + ["cpu"] * 2})
    _check(plot.plot_speed_by_gene_dim(two, tmp_path / "speed2"))
    with pytest.raises(ValueError, match="it_per_s"):
        plot.plot_speed_by_gene_dim(pd.DataFrame({"gene_dim": [1]}), tmp_path / "bad")


def test_sweep_grids_with_many_labels(tmp_path):
    rng = np.random.default_rng(3)
    gene_dims, l2s = [10, 50], [0.0, 1e-7, 1e-5]
    labels = np.array([f"TYPE{i % 35:02d}" for i in range(350)])
    emb = {(gd, l2): rng.normal(size=(350, 2)) / (1 + 1e5 * l2) for gd in gene_dims for l2 in l2s}
    emb.pop((50, 1e-5))  # a cell not run yet stays blank
    lim = plot.sweep_axis_limits(emb)
    assert lim[0] < lim[1] and lim[2] < lim[3]
    _check(plot.plot_sweep_density_grid(emb, gene_dims, l2s, tmp_path / "density", limits=lim))
    paths = _check(plot.plot_sweep_scatter_grid(emb, labels, gene_dims, l2s, tmp_path / "scatter"), n=4)
    assert {p.name for p in paths} == {"scatter.png", "scatter.pdf", "scatter_legend.png", "scatter_legend.pdf"}
    table = pd.DataFrame([{"gene_dim": gd, "l2": l2, "accuracy": rng.uniform()} for gd, l2 in emb])
    _check(plot.plot_sweep_heatmap(table, tmp_path / "heat"))
    # 35 labels get 35 distinct colours
    cols = plot.label_colors(35)
    assert len({tuple(np.round(c, 4)) for c in cols}) == 35


def test_cli_plot(tmp_path):
    from factembed.cli import main
    csv = tmp_path / "gene_dim.csv"
    pd.DataFrame({"gene_dim": [10, 100], "it_per_s": [50.0, 40.0]}).to_csv(csv, index=False)
    assert main(["plot", "speed", str(csv), "-o", str(tmp_path / "fig")]) == 0
    _check([tmp_path / "fig.png", tmp_path / "fig.pdf"])
    h = tmp_path / "history.csv"
    pd.DataFrame({"step": range(1, 51), "loss": np.linspace(1, 0.1, 50), "pearson_r": np.linspace(0, 0.9, 50),
                  "seconds": np.arange(50) * 0.1}).to_csv(h, index=False)
    assert main(["plot", "history", str(h)]) == 0
    _check([tmp_path / "history.png", tmp_path / "history.pdf"])


def test_ordered_labels_get_an_ordered_palette_and_plain_log_ticks(tmp_path):
    import matplotlib
    assert plot.ordered_labels(["0h", "24h", "48h", "72h"]) and plot.ordered_labels(["1", "10", "100"])
    assert not plot.ordered_labels(["B cell", "T cell"]) and not plot.ordered_labels(["0h", "2d"])
    pal = plot.label_palette(["0h", "24h", "48h", "72h"])
    viridis = matplotlib.colormaps["viridis"]
    assert pal["0h"] == viridis(0.0) and list(pal) == ["0h", "24h", "48h", "72h"]
    assert plot.order_labels(["24h", "0h", "120h"]) == ["0h", "24h", "120h"]
    cats = plot.label_palette(["a", "b"])
    assert cats["a"] == plot.label_colors(2)[0]

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.3, 0.9])
    ax.set_yscale("log")
    figures._plain_log_ticks(ax)
    fig.canvas.draw()
    texts = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    assert "0.6" in texts and not any("10^" in t or "e-" in t or "times" in t for t in texts), texts
    plt.close(fig)


def test_transform_plot_colours_training_points_and_titles_its_legend(tmp_path):
    rng = np.random.default_rng(4)
    paths = _check(plot.plot_transform(rng.normal(size=(80, 2)), rng.normal(size=(10, 2)),
                                       rng.choice(["0h", "24h"], 10), tmp_path / "t",
                                       train_labels=rng.choice(["0h", "24h", "48h"], 80), label_name="time"), n=1)
    assert paths[0].name == "t.png"
    _check(plot.plot_transform(rng.normal(size=(80, 2)), rng.normal(size=(10, 2)), None, tmp_path / "u"), n=1)
