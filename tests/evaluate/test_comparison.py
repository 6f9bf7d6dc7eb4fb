"""factembed.evaluate: cross-validated comparison without leakage."""

import numpy as np
import pandas as pd
import pytest

from conftest import planted
from factembed import FactorizedEmbeddings
from factembed.evaluate import comparison as ev
from factembed.config import FEConfig
from factembed.io import ExpressionData, write_expression
from factembed.preprocessing import Preprocessing

TINY_FE = FEConfig(gene_dim=8, hidden=(16, 8), n_steps=300, batch_samples=8, infer_steps=20, random_state=0,
                   verbose=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=90, m=40, k=3, seed=0):
    X, y = planted(n=n, m=m, k=k, seed=seed)
    return ExpressionData(X, [f"s{i}" for i in range(n)], [f"g{j}" for j in range(m)],
                          labels=np.array([f"c{v}" for v in y]))


def _image_ok(path):
    import matplotlib.image as mpimg
    assert path.is_file() and path.stat().st_size > 0, path
    if path.suffix == ".png":
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    else:
        assert path.read_bytes()[:5] == b"%PDF-"


def test_fe_and_pca_above_chance(tmp_path):
    data = _data()
    res = ev.evaluate(data, methods=["fe", "pca"], dims=[2], n_folds=3, fe_config=TINY_FE, output=tmp_path,
                      progress=False)
    df = res["results"]
    # issue 21: every row names its task ("label" here, "embedding" for the task-independent rows)
    assert list(df.columns) == ["fold", "method", "dim", "task", "metric", "value"]
    assert set(df.task) == {"label", "embedding"}
    # one row per fold x method x dim x metric; reconstruction r only for FE
    counts = df.groupby(["method", "dim", "metric"]).size()
    assert (counts == 3).all()
    assert set(df.loc[df.method == "fe", "metric"]) >= {"knn_accuracy", "logreg_accuracy", "mlp_accuracy",
                                                         "distance_r", "recon_r"}
    assert "recon_r" not in set(df.loc[df.method == "pca", "metric"])
    mean = df.groupby(["method", "metric"])["value"].mean()
    chance = res["chance"]
    assert chance == pytest.approx(1 / 3)
    for method in ("fe", "pca"):
        assert mean[(method, "knn_accuracy")] > chance + 0.3, mean
        assert mean[(method, "logreg_accuracy")] > chance + 0.2, mean
        assert mean[(method, "distance_r")] > 0.3
    assert mean[("fe", "recon_r")] > 0.5
    # outputs
    back = pd.read_csv(tmp_path / "results.csv")
    assert len(back) == len(df)
    assert "±" in (tmp_path / "summary.md").read_text()
    for name in ("accuracy_by_dim", "distance_scatter", "train_test_fe_2d", "train_test_pca_2d"):
        for ext in (".png", ".pdf"):
            _image_ok(tmp_path / f"{name}{ext}")


# -- leakage ------------------------------------------------------------------------

def _key(row):
    return np.ascontiguousarray(row, dtype=np.float32).tobytes()


def assert_no_leak(records, folds, X):
    """Every fit saw exactly one fold's training rows (never a test row of that fold);
    every out-of-sample call saw exactly that fold's test rows."""
    keys = [_key(r) for r in X]
    fold_sets = [({keys[i] for i in tr}, {keys[i] for i in te}) for tr, te in folds]
    for kind, rows in records:
        seen = {_key(r) for r in rows}
        assert len(seen) == len(rows)
        if kind == "fit":
            match = [f for f, (tr, te) in enumerate(fold_sets) if seen == tr]
            assert match, "a fit saw rows that are not one fold's training set"
            assert not (seen & fold_sets[match[0]][1]), "test rows reached fit"
        else:
            assert any(seen == te for _, te in fold_sets), "transform saw rows other than a test fold"


class SpyEmbedder(ev.Embedder):
    """Records every row passed to fit and to the out-of-sample path."""
    records: list = []

    def fit_transform(self, X):
        SpyEmbedder.records.append(("fit", np.array(X, copy=True)))
        self.mean = X.mean(0)
        return (X - self.mean)[:, : self.dim]

    def transform(self, X):
        SpyEmbedder.records.append(("transform", np.array(X, copy=True)))
        return (X - self.mean)[:, : self.dim]


def test_test_rows_never_reach_fit(monkeypatch):
    data = _data(n=60, m=20)
    records = []
    SpyEmbedder.records = records
    monkeypatch.setitem(ev.EMBEDDERS, "spy", SpyEmbedder)
    monkeypatch.setattr(ev, "CLASSIFIERS", ("knn",))  # speed: the classifiers are not under test here

    def spy(cls, name, kind):
        orig = getattr(cls, name)

        def wrapper(self, X, *a, **k):
            arr = X.X if isinstance(X, ExpressionData) else np.asarray(X)
            records.append((kind, np.array(arr, copy=True)))
            return orig(self, X, *a, **k)
        monkeypatch.setattr(cls, name, wrapper)

    from sklearn.decomposition import PCA
    spy(Preprocessing, "fit", "fit")                 # gene selection / statistics
    spy(FactorizedEmbeddings, "fit", "fit")
    spy(FactorizedEmbeddings, "transform", "transform")
    spy(PCA, "fit_transform", "fit")
    spy(PCA, "transform", "transform")
    cfg = FEConfig(gene_dim=4, hidden=(8,), n_steps=20, infer_steps=2, random_state=0, verbose=False)
    res = ev.evaluate(data, methods=["spy", "fe", "pca"], dims=[2], n_folds=3, fe_config=cfg,
                      progress=False)
    kinds = [k for k, _ in records]
    # 3 folds x (spy, fe, pca) cells: each fits the preprocessing once and its method once
    assert kinds.count("fit") == 3 * 3 * 2
    assert kinds.count("transform") == 3 * 3
    # preprocessing keeps every gene here, so rows can be matched to the input exactly
    assert all(r.shape[1] == data.n_genes for _, r in records)
    assert_no_leak(records, res["folds"], data.X)
    # the folds are a stratified partition of the samples
    test_idx = np.concatenate([te for _, te in res["folds"]])
    assert sorted(test_idx.tolist()) == list(range(data.n_samples))


def test_leak_check_catches_a_leak():
    data = _data(n=30, m=10)
    folds = ev.make_folds(data.labels, 3, 0)
    tr, te = folds[0]
    with pytest.raises(AssertionError):
        assert_no_leak([("fit", data.X[np.concatenate([tr, te[:1]])])], folds, data.X)
    with pytest.raises(AssertionError):
        assert_no_leak([("fit", data.X)], folds, data.X)
    assert_no_leak([("fit", data.X[tr]), ("transform", data.X[te])], folds, data.X)


def test_top_genes_are_chosen_on_the_training_fold(monkeypatch):
    data = _data(n=60, m=30)
    chosen = []
    orig = Preprocessing.fit

    def fit(self, d):
        fitted = orig(self, d)
        chosen.append((set(d.samples.tolist()), fitted.genes.tolist()))
        return fitted
    monkeypatch.setattr(Preprocessing, "fit", fit)
    pre = Preprocessing(log10p1=False, protein_coding_only=False, top_variable=10)
    monkeypatch.setattr(ev, "CLASSIFIERS", ("knn",))
    res = ev.evaluate(data, methods=["pca"], dims=[2], n_folds=3, preprocessing=pre, progress=False)
    for samples, genes in chosen:
        assert len(genes) == 10
        assert any(samples == set(data.samples[tr].tolist()) for tr, _ in res["folds"])


# -- parallel grid, summary, command line ---------------------------------------------

def test_parallel_matches_serial():
    data = _data(n=60, m=20)
    kw = dict(methods=["pca"], dims=[2, 4], n_folds=2, progress=False)
    a = ev.evaluate(data, jobs=1, **kw)["results"]
    b = ev.evaluate(data, jobs=2, **kw)["results"]
    keep = ~a.metric.str.endswith("seconds")
    pd.testing.assert_frame_equal(a[keep].reset_index(drop=True), b[~b.metric.str.endswith("seconds")]
                                  .reset_index(drop=True))


def test_summary_table_mean_sd():
    df = pd.DataFrame({"fold": [0, 1, 0, 1], "method": ["pca"] * 2 + ["fe"] * 2, "dim": [2] * 4,
                       "metric": ["knn_accuracy"] * 4, "value": [0.5, 0.7, 0.8, 0.8]})
    t = ev.metric_by_dim_table(df, "knn_accuracy")
    assert list(t.index) == ["fe", "pca"]
    assert t.loc["pca", 2] == "0.600 ± 0.141"
    assert t.loc["fe", 2] == "0.800 ± 0.000"


def test_distance_pairs_fixed_and_distinct():
    a = ev.sample_pairs(50, 100, seed=3)
    b = ev.sample_pairs(50, 100, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len(set(zip(*a))) == 100 and np.all(a[0] < a[1])
    assert len(ev.sample_pairs(5, 100, 0)[0]) == 10


def test_cli_evaluate(tmp_path, capsys):
    from factembed.cli import main
    data = _data(n=60, m=20)
    path = tmp_path / "d.npz"
    write_expression(path, data)
    out = tmp_path / "ev"
    rc = main(["evaluate", str(path), "--methods", "pca,full", "--dims", "2,3", "--folds", "3", "--no-log",
               "-o", str(out), "--quiet", "--no-figures"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "knn_accuracy" in text and "±" in text
    df = pd.read_csv(out / "results.csv")
    assert set(df.method) == {"pca", "full"}
    assert not (out / "accuracy_by_dim.png").exists()
    assert main(["evaluate", str(path), "--methods", "nope", "--no-log", "-o", str(out), "--quiet"]) == 1


@pytest.mark.skipif(not __import__("os").environ.get("FACTEMBED_SLOW_TESTS"),
                    reason="UMAP's numba compilation costs ~40 s of CPU; set FACTEMBED_SLOW_TESTS=1")
def test_umap_out_of_sample_above_chance():
    pytest.importorskip("umap")
    data = _data(n=90, m=40)
    res = ev.evaluate(data, methods=["umap"], dims=[2], n_folds=3, progress=False)
    df = res["results"]
    assert df.loc[df.metric == "knn_accuracy", "value"].mean() > res["chance"] + 0.3
