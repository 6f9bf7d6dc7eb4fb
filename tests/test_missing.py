"""Missing values in training: fit(X, missing="ignore"), --missing ignore, evaluate."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import planted
from factembed import FactorizedEmbeddings
from factembed.evaluate import comparison as ev
from factembed.cli import main
from factembed.config import FEConfig
from factembed.errors import FEInputError
from factembed.io import ExpressionData
from factembed.preprocessing import GeneStats, Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(gene_dim=8, hidden=(16, 8), infer_steps=20, random_state=0, verbose=False)


def _low_rank(n=80, m=60, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 2))
    W = rng.normal(size=(2, m))
    return (np.tanh(Z @ W) + 0.05 * rng.normal(size=(n, m))).astype(np.float32)


def _hide(X, fraction, seed=1):
    mask = np.random.default_rng(seed).random(X.shape) < fraction
    Xn = X.copy()
    Xn[mask] = np.nan
    return Xn, mask


def test_gene_stats_over_observed_values_match_numpy():
    X, mask = _hide(_low_rank().astype(np.float64), 0.2)
    X[:, 5] = np.nan                                  # a gene observed nowhere
    stats = GeneStats(X.shape[1])
    for a in range(0, len(X), 17):                    # blocks, some columns all-NaN within a block
        stats.update(X[a:a + 17])
    seen = ~np.isnan(X)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        mean, var = np.nanmean(X, axis=0), np.nanvar(X, axis=0)
    ok = seen.any(axis=0)
    assert np.array_equal(stats.count, seen.sum(axis=0)) and stats.n == len(X)
    np.testing.assert_allclose(stats.mean[ok], mean[ok], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.var[ok], var[ok], rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(stats.min[ok], np.nanmin(X[:, ok], axis=0))
    np.testing.assert_array_equal(stats.max[ok], np.nanmax(X[:, ok], axis=0))
    assert stats.mean[5] == 0 and stats.var[5] == 0 and stats.min[5] > stats.max[5]
    assert stats.n_missing == int((~seen).sum())
    # two halves merged give the one-pass figures
    a, b = GeneStats(X.shape[1]), GeneStats(X.shape[1])
    a.update(X[:40]), b.update(X[40:])
    a.merge(b)
    np.testing.assert_allclose(a.mean[ok], mean[ok], rtol=1e-12)
    np.testing.assert_allclose(a.var[ok], var[ok], rtol=1e-10, atol=1e-14)
    # the preprocessing fitted with allow_nan drops the gene observed nowhere, keeps NaN elsewhere
    data = ExpressionData(X.astype(np.float32), [f"s{i}" for i in range(len(X))], [f"g{j}" for j in range(X.shape[1])])
    pre = Preprocessing(log10p1=False, protein_coding_only=False)
    with pytest.raises(FEInputError, match="missing='ignore'"):
        pre.fit(data)
    fitted, out = pre.fit_apply(data, allow_nan=True)
    assert "g5" not in set(fitted.genes) and len(fitted.genes) == X.shape[1] - 1
    np.testing.assert_allclose(fitted.means, mean[ok], rtol=1e-6)
    assert np.isnan(out.X).sum() == int((~seen[:, ok]).sum())


def test_fit_ignores_missing_values_and_imputes_them_better_than_gene_means():
    X = _low_rank(100, 60)
    Xn, mask = _hide(X, 0.1)
    with pytest.raises(FEInputError, match="missing='ignore'"):
        FactorizedEmbeddings(n_steps=50, **TINY).fit(Xn)
    fe = FactorizedEmbeddings(n_steps=1500, **TINY).fit(Xn, missing="ignore")
    assert np.isfinite(fe.history_["loss"]).all()     # a NaN target that reached the loss would make it NaN
    filled = fe.impute(Xn)
    assert np.array_equal(filled[~mask], Xn[~mask])  # observed values are kept
    rmse_fe = np.sqrt(np.mean((filled[mask] - X[mask]) ** 2))
    means = np.nanmean(Xn, axis=0)
    rmse_means = np.sqrt(np.mean((np.broadcast_to(means, X.shape)[mask] - X[mask]) ** 2))
    assert rmse_fe < 0.6 * rmse_means, (rmse_fe, rmse_means)


def test_missing_ignore_without_nan_trains_the_same_model_and_bad_input_is_refused():
    X = _low_rank(40, 30)
    a = FactorizedEmbeddings(n_steps=60, **TINY).fit(X)
    b = FactorizedEmbeddings(n_steps=60, **TINY).fit(X, missing="ignore")
    assert np.array_equal(a.embedding_, b.embedding_)
    with pytest.raises(FEInputError, match="dense"):
        FactorizedEmbeddings(n_steps=10, **TINY).fit(sp.csr_matrix(X), missing="ignore")
    with pytest.raises(ValueError, match="missing must be"):
        FactorizedEmbeddings(n_steps=10, **TINY).fit(X, missing="drop")
    Xn = X.copy()
    Xn[3, :] = np.nan
    with pytest.raises(FEInputError, match="row 3 has no observed value"):
        FactorizedEmbeddings(n_steps=10, **TINY).fit(Xn, missing="ignore")


def test_cli_fit_missing_ignore_then_impute_and_info(tmp_path, capsys):
    X, _ = _hide(_low_rank(50, 40), 0.05)
    frame = pd.DataFrame(X, index=[f"s{i}" for i in range(50)], columns=[f"g{j}" for j in range(40)])
    frame.to_csv(tmp_path / "x.csv")
    opts = ["--no-log", "--gene-dim", "8", "--hidden", "16,8", "--seed", "0", "--quiet"]
    assert main(["fit", str(tmp_path / "x.csv"), "-o", str(tmp_path / "m0"), "--steps", "20", *opts]) != 0
    assert "--missing ignore" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "x.csv"), "-o", str(tmp_path / "m"), "--missing", "ignore",
                 "--steps", "auto", *opts]) == 0
    out = capsys.readouterr().out
    assert "stopped: validation MSE" in out and "held-out entries" in out and "try --steps" not in out
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "validation: " in capsys.readouterr().out
    assert main(["impute", str(tmp_path / "m"), str(tmp_path / "x.csv"), "-o", str(tmp_path / "f.csv")]) == 0
    filled = pd.read_csv(tmp_path / "f.csv", index_col=0)
    assert filled.shape == (50, 40) and not filled.isna().any().any()


def test_evaluate_with_missing_values():
    X, y = planted(n=60, m=30, k=3, seed=0)
    Xn, _ = _hide(X.astype(np.float32), 0.05)
    data = ExpressionData(Xn, [f"s{i}" for i in range(60)], [f"g{j}" for j in range(30)],
                          labels=np.array([f"c{v}" for v in y]))
    cfg = FEConfig(gene_dim=8, hidden=(16, 8), n_steps=200, batch_samples=8, infer_steps=20, random_state=0,
                   verbose=False)
    with pytest.raises(FEInputError, match="missing"):
        ev.evaluate(data, methods=["fe", "pca"], dims=[2], n_folds=3, fe_config=cfg, progress=False,
                    figures=False)
    res = ev.evaluate(data, methods=["fe", "pca"], dims=[2], n_folds=3, fe_config=cfg, progress=False,
                      figures=False, missing="ignore")
    df = res["results"]
    values = df.pivot_table(index=["method", "metric"], values="value", aggfunc="mean")["value"]
    assert np.isfinite(df["value"]).all()
    assert values[("pca", "knn_accuracy")] > 0.5 and values[("fe", "knn_accuracy")] > 0.5
    assert values[("fe", "train_steps")] == 200


def test_training_figure_draws_the_validation_curve(tmp_path, monkeypatch):
    from factembed.plot import figures as plot

    figs = []
    monkeypatch.setattr(plot, "_save", lambda fig, path, pdf: figs.append(fig) or [])
    steps = list(range(1, 501))
    hist = {"step": steps, "loss": [1.0 / s for s in steps], "pearson_r": [0.5] * 500,
            "val_step": [100, 200, 300, 400, 500], "val_loss": [0.5, 0.4, 0.35, 0.36, 0.37]}
    plot.plot_training_curves(hist, tmp_path / "t.png")
    # history.csv's form: one val_loss column, NaN where it was not measured
    col = [np.nan] * 500
    for s, v in zip(hist["val_step"], hist["val_loss"]):
        col[s - 1] = v
    plot.plot_training_curves({k: hist[k] for k in ("step", "loss", "pearson_r")} | {"val_loss": col},
                              tmp_path / "u.png")
    for fig in figs:
        line = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "held-out entries (validation)"]
        assert len(line) == 1
        assert list(line[0].get_xdata()) == hist["val_step"] and list(line[0].get_ydata()) == hist["val_loss"]
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_backed_fit_with_missing_values(tmp_path, capsys):
    """--backed --missing ignore: NaN passes the block checks, the statistics are over the
    observed values (the in-memory fit's gene means, which are NumPy's nanmean), and the
    training loss stays finite (a NaN target that reached the loss would make it NaN)."""
    X, _ = _hide(_low_rank(60, 40), 0.05)
    np.save(tmp_path / "x.npy", X)
    opts = ["--no-log", "--gene-dim", "8", "--hidden", "16,8", "--seed", "0", "--quiet", "--steps", "60",
            "--keep-constant"]
    assert main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "b0"), "--backed", *opts]) != 0
    assert "--missing ignore" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "b"), "--backed", "--missing", "ignore",
                 *opts]) == 0
    fe = FactorizedEmbeddings.load(tmp_path / "b")
    assert np.isfinite(fe.history_["loss"]).all() and np.isfinite(fe.embedding_).all()
    assert main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m"), "--missing", "ignore", *opts]) == 0
    mem = FactorizedEmbeddings.load(tmp_path / "m")
    pre_b = __import__("json").loads((tmp_path / "b" / "model.json").read_text())["extra"]["preprocessing"]
    pre_m = __import__("json").loads((tmp_path / "m" / "model.json").read_text())["extra"]["preprocessing"]
    np.testing.assert_allclose(pre_b["means"], pre_m["means"], rtol=1e-6)
    np.testing.assert_allclose(pre_b["means"], np.nanmean(X, axis=0), rtol=1e-5)
    assert mem.embedding_.shape == fe.embedding_.shape
