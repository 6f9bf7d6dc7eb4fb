"""evaluate's auxiliary tasks (issue 21): classification, regression, survival; several in
one run on the same embeddings; leakage; readers that keep survival columns."""

import gzip
import itertools

import numpy as np
import pandas as pd
import pytest

import factembed
from conftest import planted
from factembed.evaluate import comparison as ev
from factembed.evaluate import tasks as et
from factembed.config import FEConfig
from factembed.errors import FEInputError
from factembed.io import ExpressionData, read_expression
from factembed.preprocessing import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_FE = FEConfig(gene_dim=8, hidden=(16, 8), n_steps=200, batch_samples=8, infer_steps=20, random_state=0,
                   verbose=False)
PRE = Preprocessing(log10p1=False, protein_coding_only=False, drop_constant=True)


def _data(n=90, m=20, seed=0):
    """Planted clusters; a numeric target and a survival time driven by the first gene."""
    X, y = planted(n=n, m=m, k=3, seed=seed)
    rng = np.random.default_rng(seed)
    score = (X[:, 0] - X[:, 0].mean()) / X[:, 0].std()
    age = 50 + 5 * score + rng.normal(0, 1, n)
    time = rng.exponential(np.exp(-1.5 * score)) + 0.01
    event = rng.random(n) < 0.7
    obs = {"age": age, "time": time, "event": event.astype(int), "cls": np.array([f"c{v}" for v in y])}
    return ExpressionData(X, [f"s{i}" for i in range(n)], [f"g{j}" for j in range(m)],
                          labels=np.array([f"c{v}" for v in y]), obs=obs)


def brute_c_index(time, event, risk):
    """Harrell's c by counting every comparable pair: i had the event before j's time (or at
    the time j was censored: censored at the same time counts as surviving longer, as in
    R's survival package); ties in risk count one half."""
    num = den = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
            den += 1
            num += 1.0 if risk[i] > risk[j] else (0.5 if risk[i] == risk[j] else 0.0)
    return num / den


# -- parsing and input errors ----------------------------------------------------------

def test_parse_task():
    assert et.parse_task("classification:cls") == et.TaskSpec("classification", ("cls",))
    assert et.parse_task("survival: time , event").columns == ("time", "event")
    for bad in ("cls", "cox:time,event", "survival:time", "regression:", "survival:a,b,c"):
        with pytest.raises(ValueError, match="--task"):
            et.parse_task(bad)


def test_bad_task_columns_are_named():
    d = _data(n=30)
    d.obs["word"] = np.array(["x"] * 29 + ["7"])
    d.obs["ev3"] = np.array([0, 1, 2] * 10)
    d.obs["neg"] = np.r_[-1.0, np.ones(29)]
    with pytest.raises(FEInputError, match="no annotation column 'nope'.*'age'"):
        et.resolve_tasks(d, ["regression:nope"])
    with pytest.raises(FEInputError, match="regression column 'word' must be numeric; sample 0 has 'x'"):
        et.resolve_tasks(d, ["regression:word"])
    with pytest.raises(FEInputError, match="event column 'ev3' must be 0/1 or true/false; sample 2 has 2"):
        et.resolve_tasks(d, ["survival:time,ev3"])
    with pytest.raises(FEInputError, match="survival time column 'neg' must be positive"):
        et.resolve_tasks(d, ["survival:neg,event"])
    with pytest.raises(ValueError, match="given twice"):
        et.resolve_tasks(d, ["regression:age", "regression:age"])
    with pytest.raises(ValueError, match="needs a task"):
        ev.evaluate(ExpressionData(d.X, d.samples, d.genes), methods=["pca"], dims=[2], progress=False)


def test_event_values_and_missing_markers():
    d = _data(n=6)
    d.obs["e"] = np.array(["true", "False", "1", "0", "NA", ""])
    d.obs["t"] = np.array(["1", "2", "3", "NA", "5", "6"])
    (t,) = et.resolve_tasks(d, ["survival:t,e"])
    assert t.event.tolist()[:4] == [True, False, True, False]
    assert t.known.tolist() == [True, True, True, False, False, False] and t.n_missing == 3


# -- numbers against independent references ------------------------------------------

def test_the_bootstrap_resample_c_index_equals_brute_force_and_sksurv():
    """The bootstrap's hot loop scores resamples with lifelines (when installed): on
    resamples (duplicated patients: tied times and risks) it must give Harrell's c of the
    brute-force count and of scikit-survival, whatever the ties."""
    pytest.importorskip("lifelines", reason="lifelines (factembed[survival]) is not installed")
    resample_c = et._resample_c_index()
    assert resample_c is not et.c_index
    rng = np.random.default_rng(4)
    time = np.round(rng.exponential(1, 50), 1) + 0.1
    event = rng.random(50) < 0.5
    risk = np.round(-time + rng.normal(0, 0.7, 50), 1)
    for _ in range(25):
        i = rng.integers(0, 50, 50)
        want = brute_c_index(time[i], event[i], risk[i])
        assert resample_c(time[i], event[i], risk[i]) == pytest.approx(want, abs=1e-12)
        assert et.c_index(time[i], event[i], risk[i]) == pytest.approx(want, abs=1e-12)


def test_c_index_and_pooled_interval_against_brute_force():
    rng = np.random.default_rng(1)
    time = np.round(rng.exponential(1, 60), 1) + 0.1        # ties in time
    event = rng.random(60) < 0.6
    risk = np.round(-time + rng.normal(0, 0.7, 60), 1)      # ties in risk
    assert et.c_index(time, event, risk) == pytest.approx(brute_c_index(time, event, risk), abs=1e-12)
    est, lo, hi = et.pooled_c_index(time, event, risk, seed=3, n_boot=200)
    assert est == pytest.approx(brute_c_index(time, event, risk), abs=1e-12)
    assert lo < est < hi and 0.5 < lo and hi <= 1
    assert (est, lo, hi) == et.pooled_c_index(time, event, risk, seed=3, n_boot=200)   # seeded
    # the interval is the percentile interval of c-indices of resamples: check one by hand
    i = np.random.default_rng(3).integers(0, 60, 60)
    assert 0 < brute_c_index(time[i], event[i], risk[i]) < 1


def test_several_tasks_one_run_against_refits():
    """The full-profile cell's metrics equal an independent refit on the same fold, with
    R² from sklearn and the c-index by brute force; missing targets leave that task only."""
    pytest.importorskip("sksurv", reason="survival tasks need scikit-survival (pip install 'factembed[survival]')")
    from scipy.stats import spearmanr
    from sklearn.metrics import r2_score
    d = _data(n=90)
    d.obs["age"][:7] = np.nan                        # 7 samples without the regression target
    res = factembed.evaluate(d, methods=["pca", "full"], dims=[2], n_folds=3, preprocessing=PRE, progress=False,
                             tasks=["classification:cls", "regression:age", "survival:time,event"])
    df = res["results"]
    assert set(df.task) == {"cls", "age", "survival:time,event", "embedding"}
    n_test = df[(df.metric == "n_test")].groupby(["method", "task"])["value"].sum()
    assert n_test[("full", "cls")] == 90 and n_test[("full", "age")] == 83
    assert n_test[("full", "survival:time,event")] == 90
    # folds stratified by the first task (classes c0, c1, c2: 10 of each per test fold)
    for _, te in res["folds"]:
        assert sorted(np.unique(d.obs["cls"][te], return_counts=True)[1].tolist()) == [10, 10, 10]
    tasks = {t.name: t for t in res["tasks"]}
    ridge_r2, c_folds, risks = [], [], []
    for f, (tr, te) in enumerate(res["folds"]):
        a = tasks["age"]
        ktr, kte = tr[a.known[tr]], te[a.known[te]]
        p = et.make_regressor("ridge", 0).fit(d.X[ktr], a.y[ktr]).predict(d.X[kte])
        got = df[(df.fold == f) & (df.method == "full") & (df.task == "age")].set_index("metric")["value"]
        assert got["ridge_r2"] == pytest.approx(r2_score(a.y[kte], p), abs=1e-9)
        assert got["ridge_spearman_r"] == pytest.approx(spearmanr(a.y[kte], p).statistic, abs=1e-9)
        ridge_r2.append(got["ridge_r2"])
        s = tasks["survival:time,event"]
        cox = et.make_cox(d.n_genes).fit(d.X[tr], et.survival_y(s.y[tr], s.event[tr]))
        r = cox.predict(d.X[te])
        risks.append(r)
        got = df[(df.fold == f) & (df.method == "full") & (df.task == s.name)].set_index("metric")["value"]
        assert got["c_index"] == pytest.approx(brute_c_index(s.y[te], s.event[te], r), abs=1e-9)
        c_folds.append(got["c_index"])
    assert np.mean(ridge_r2) > 0.5 and np.mean(c_folds) > 0.6      # the targets follow gene 0
    idx = np.concatenate([te for _, te in res["folds"]])
    pooled = df[(df.fold == -1) & (df.method == "full")].set_index("metric")["value"]
    s = tasks["survival:time,event"]
    assert pooled["c_index_pooled"] == pytest.approx(brute_c_index(s.y[idx], s.event[idx], np.concatenate(risks)),
                                                     abs=1e-9)
    assert pooled["c_index_low"] < pooled["c_index_pooled"] < pooled["c_index_high"]
    # classification gains balanced accuracy and macro F1
    cls = df[(df.task == "cls") & (df.method == "pca")]
    assert {"knn_balanced_accuracy", "logreg_macro_f1", "mlp_accuracy"} <= set(cls.metric)


def test_embeddings_computed_once_for_all_tasks(monkeypatch):
    pytest.importorskip("sksurv", reason="survival tasks need scikit-survival (pip install 'factembed[survival]')")
    from sklearn.decomposition import PCA
    calls = []
    orig = PCA.fit_transform
    monkeypatch.setattr(PCA, "fit_transform", lambda self, X, *a, **k: calls.append(1) or orig(self, X, *a, **k))
    d = _data(n=60)
    ev.evaluate(d, methods=["pca"], dims=[2, 3], n_folds=3, progress=False,
                tasks=["classification:cls", "regression:age", "survival:time,event"])
    assert len(calls) == 3 * 2                                 # one per (fold, dim), not per task


# -- leakage: the task models see training rows only -------------------------------------

def test_task_models_never_fit_test_rows(monkeypatch):
    pytest.importorskip("sksurv", reason="survival tasks need scikit-survival (pip install 'factembed[survival]')")
    d = _data(n=60)
    d.obs["age"][:5] = np.nan
    fits = []

    def spying(factory):
        def make(*a, **k):
            model = factory(*a, **k)
            orig = model.fit

            def fit(Z, y, *fa, **fk):
                fits.append(np.array(Z, copy=True))
                return orig(Z, y, *fa, **fk)
            model.fit = fit
            return model
        return make
    for name in ("make_classifier", "make_regressor", "make_cox"):
        monkeypatch.setattr(et, name, spying(getattr(et, name)))
    res = ev.evaluate(d, methods=["full"], dims=[2], n_folds=3, preprocessing=PRE, progress=False,
                      tasks=["survival:time,event", "regression:age", "classification:cls"])
    # 3 folds x (3 classifiers + 2 regressors + 1 Cox model)
    assert len(fits) == 3 * 6
    key = lambda r: np.ascontiguousarray(r, dtype=np.float32).tobytes()  # noqa: E731
    rows = [key(r) for r in d.X]
    folds = [({rows[i] for i in tr}, {rows[i] for i in te}) for tr, te in res["folds"]]
    for Z in fits:
        seen = {key(r) for r in Z}
        assert any(seen <= tr and not (seen & te) for tr, te in folds), "a task model saw a test row"
    # folds stratified by the first task: the event indicator
    ev_counts = [int(d.obs["event"][te].sum()) for _, te in res["folds"]]
    assert max(ev_counts) - min(ev_counts) <= 1


# -- readers -----------------------------------------------------------------------------

def test_hdf5_with_survival_datasets_reads_and_evaluates(tmp_path):
    pytest.importorskip("sksurv", reason="survival tasks need scikit-survival (pip install 'factembed[survival]')")
    import h5py
    d = _data(n=60)
    p = tmp_path / "tcga_like.h5"
    with h5py.File(p, "w") as f:
        f["data"] = d.X.T                      # genes x samples, as the study's files
        f["samples"] = d.samples.astype("S")
        f["genes"] = d.genes.astype("S")
        f["labels"] = d.labels.astype("S")
        f["OS.time"] = d.obs["time"]
        f["OS"] = d.obs["event"]
        f["vital"] = np.where(d.obs["event"] == 1, "dead", "alive").astype("S")
        f["gene_len"] = np.arange(d.n_genes)  # per gene: not a sample annotation
    back = read_expression(p)
    assert set(back.obs) == {"OS.time", "OS", "vital"}
    np.testing.assert_allclose(back.obs["OS.time"], d.obs["time"])
    res = ev.evaluate(back, methods=["pca"], dims=[2], n_folds=3, progress=False, tasks=["survival:OS.time,OS"])
    assert (res["results"].metric == "c_index").sum() == 3


def test_fetch_tcga_pancan_keeps_survival_columns(tmp_path):
    from factembed.datasets import fetch_tcga_pancan
    samples = ["TCGA-A-01", "TCGA-B-01", "TCGA-C-01"]
    src = tmp_path / "src"
    src.mkdir()
    expr = src / "expr.xena.gz"
    with gzip.open(expr, "wt") as fh:
        fh.write("sample\t" + "\t".join(samples) + "\nTP53\t1\t2\t3\nMYC\t4\t5\t6\n")
    pheno = src / "pheno.tsv.gz"
    with gzip.open(pheno, "wt") as fh:
        fh.write("sample\tsample_type\t_primary_disease\n" + "".join(f"{s}\tPrimary Tumor\tx\n" for s in samples))
    surv = src / "survival.tsv"
    surv.write_text("sample\tOS\tOS.time\tPFI\tPFI.time\tother\n"
                    "TCGA-A-01\t1\t100\t1\t50\tz\nTCGA-B-01\t0\t2000\t\t\tz\n")
    d = fetch_tcga_pancan(tmp_path / "cache", expression_url=expr.as_uri(), phenotype_url=str(pheno),
                          survival_url=str(surv), progress=False)
    np.testing.assert_array_equal(d.obs["OS"], [1, 0, np.nan])
    np.testing.assert_array_equal(d.obs["OS.time"], [100, 2000, np.nan])
    np.testing.assert_array_equal(d.obs["PFI.time"], [50, np.nan, np.nan])
    assert "other" not in d.obs
    again = fetch_tcga_pancan(tmp_path / "cache", expression_url=expr.as_uri(), phenotype_url=str(pheno),
                              survival_url=str(surv), progress=False)  # from the parsed cache
    np.testing.assert_array_equal(again.obs["OS.time"], [100, 2000, np.nan])


# -- command line ------------------------------------------------------------------------

def test_cli_tasks_from_a_labels_table(tmp_path, capsys):
    pytest.importorskip("sksurv", reason="survival tasks need scikit-survival (pip install 'factembed[survival]')")
    from factembed.cli import main
    from factembed.io import write_expression
    d = _data(n=60)
    path = tmp_path / "d.npz"
    write_expression(path, ExpressionData(d.X, d.samples, d.genes))
    meta = pd.DataFrame({"id": d.samples, "cls": d.obs["cls"], "age": d.obs["age"], "t": d.obs["time"],
                         "e": d.obs["event"]})
    meta.loc[3, "age"] = np.nan
    meta.to_csv(tmp_path / "meta.csv", index=False)
    out = tmp_path / "ev"
    rc = main(["evaluate", str(path), "--labels", str(tmp_path / "meta.csv"), "--task", "classification:cls",
               "--task", "regression:age", "--task", "survival:t,e", "--methods", "pca", "--dims", "2",
               "--folds", "3", "--no-log", "-o", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "task age (regression; 59 samples, 1 with a missing value left out)" in text
    assert "c-index of the pooled test folds" in text and "ridge_r2" in text
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == ["fold", "method", "dim", "task", "metric", "value"]
    assert {"c_index", "c_index_pooled", "ridge_r2", "knn_spearman_r", "logreg_balanced_accuracy"} <= set(df.metric)
    for name in ("accuracy_by_dim", "regression_by_dim_age", "c_index_by_dim_t_e", "kaplan_meier_t_e"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "[" in (out / "summary.md").read_text()
    # figures redrawn from the directory
    (out / "kaplan_meier_t_e.png").unlink()
    assert main(["plot", "evaluate", str(out)]) == 0
    assert (out / "kaplan_meier_t_e.png").is_file()
    # a bad column: one line naming it
    rc = main(["evaluate", str(path), "--labels", str(tmp_path / "meta.csv"), "--task", "regression:cls",
               "--methods", "pca", "--dims", "2", "--folds", "3", "--no-log", "-o", str(out), "--quiet"])
    assert rc == 1
    assert "regression column 'cls' must be numeric" in capsys.readouterr().err


# -- real data: GSE7390 (scikit-survival's copy) -------------------------------------------

def test_gse7390_survival_small():
    pytest.importorskip("sksurv", reason="the GSE7390 set ships with scikit-survival (pip install "
                                         "'factembed[survival]')")
    from sksurv.datasets import load_breast_cancer
    X, y = load_breast_cancer()
    genes = [c for c in X.columns if c not in ("age", "er", "grade", "size")]
    d = ExpressionData(X[genes].to_numpy(np.float32), [f"p{i}" for i in range(len(X))], genes,
                       obs={"t": y["t.tdm"], "e": y["e.tdm"], "er": X["er"].astype(str).to_numpy()})
    res = factembed.evaluate(d, methods=["fe", "pca"], dims=[2], n_folds=3, fe_config=TINY_FE, progress=False,
                             tasks=["survival:t,e", "classification:er"])
    df = res["results"]
    pooled = df[df.fold == -1].pivot_table(index="method", columns="metric", values="value")
    assert ((pooled["c_index_low"] < pooled["c_index_pooled"]) & (pooled["c_index_pooled"] < pooled["c_index_high"])).all()
    assert pooled.loc["pca", "c_index_pooled"] > 0.55       # two principal components carry prognosis
    assert df[(df.task == "er") & (df.metric == "logreg_accuracy") & (df.method == "pca")]["value"].mean() > 0.7
    # deterministic with the seed (bootstrap included)
    kw = dict(methods=["pca"], dims=[2], n_folds=3, progress=False, tasks=["survival:t,e"])
    a, b = (factembed.evaluate(d, **kw)["results"] for _ in range(2))
    keep = ~a.metric.str.endswith("seconds")
    pd.testing.assert_frame_equal(a[keep], b[keep])


def test_batch_mixing_against_a_brute_force_vote():
    """batch_knn is the share of test samples whose 5 nearest training samples of the same
    group vote their batch (counted here by brute force); chance the majority share."""
    rng = np.random.default_rng(0)
    Z_tr, Z_te = rng.normal(size=(60, 2)), rng.normal(size=(30, 2))
    g_tr, g_te = np.arange(60) % 3, np.arange(30) % 3
    b_tr, b_te = rng.integers(0, 2, 60), rng.integers(0, 2, 30)
    got = et.batch_mixing(Z_tr, Z_te, g_tr, g_te, b_tr, b_te)
    hits, chance = 0, 0.0
    for i in range(30):
        same = np.flatnonzero(g_tr == g_te[i])
        near = same[np.argsort(((Z_tr[same] - Z_te[i]) ** 2).sum(1))[:5]]
        hits += int(np.bincount(b_tr[near], minlength=2).argmax() == b_te[i])
        chance += np.bincount(b_tr[same]).max() / len(same)
    assert got["batch_knn"] == pytest.approx(hits / 30) and got["batch_chance"] == pytest.approx(chance / 30)
    # batches apart within every group: predicted perfectly
    Z_tr[:, 0] += 10 * b_tr
    Z_te[:, 0] += 10 * b_te
    assert et.batch_mixing(Z_tr, Z_te, g_tr, g_te, b_tr, b_te)["batch_knn"] == 1.0


def test_evaluate_with_a_batch_covariate_reports_mixing_for_every_method():
    pytest.importorskip("scanpy")
    from factembed.planted import make_planted, plant_batches
    P = make_planted(160, 300, n_groups=4, latent_dim=3, scatter=0.15, loading_sd=1.0, base=None, noise=0.1,
                     clip=False, balanced=True, seed=0)
    B = plant_batches(P.X, 2, seed=1)
    d = ExpressionData(B.X, [f"s{i}" for i in range(160)], [f"g{j}" for j in range(300)],
                       obs={"group": P.labels.astype(str), "batch": np.array(["b0", "b1"])[B.batch]})
    kw = dict(dims=[2], n_folds=2, preprocessing=PRE, progress=False, tasks=["classification:group"])

    class PlainFE(ev.FEEmbedder):               # FE without the covariate, for comparison
        uses_covariates = False

    res = factembed.evaluate(d, methods=["fe", "fe_plain", "pca", "combat_pca"], covariates=["batch"],
                             fe_config=FEConfig(gene_dim=8, hidden=(16, 8), n_steps=300),
                             extra_embedders={"fe_plain": PlainFE}, **kw)
    df = res["results"].query("task == 'mixing:batch'")
    knn = df[df.metric == "batch_knn"].groupby("method")["value"].mean()
    chance = df[df.metric == "batch_chance"]["value"].mean()
    assert set(knn.index) == {"fe", "fe_plain", "pca", "combat_pca"} and 0.4 < chance < 0.7
    assert knn["pca"] > 0.95 and knn["fe_plain"] > 0.95     # the batch is in both embeddings
    assert knn["fe"] < knn["fe_plain"] - 0.1 and knn["combat_pca"] < knn["pca"] - 0.2, knn.to_dict()
    with pytest.raises(ValueError, match="correct a batch"):
        factembed.evaluate(d, methods=["combat_pca"], **kw)


def test_cli_evaluate_with_a_covariate_writes_the_mixing_tables(tmp_path, capsys):
    pytest.importorskip("scanpy")
    from factembed.cli import main
    from factembed.io import write_expression
    from factembed.planted import make_planted, plant_batches
    P = make_planted(80, 60, n_groups=2, latent_dim=2, scatter=0.15, loading_sd=1.0, base=None, noise=0.1,
                     clip=False, balanced=True, seed=0)
    B = plant_batches(P.X, 2, seed=1)
    samples = np.array([f"s{i}" for i in range(80)])
    write_expression(tmp_path / "x.csv", ExpressionData(B.X, samples, np.array([f"g{j}" for j in range(60)])))
    pd.DataFrame({"sample": samples, "group": P.labels.astype(str), "batch": np.array(["b0", "b1"])[B.batch]}
                 ).to_csv(tmp_path / "ann.csv", index=False)
    args = ["evaluate", str(tmp_path / "x.csv"), "--labels", str(tmp_path / "ann.csv"), "--label-column", "group",
            "--no-log", "--folds", "2", "--dims", "2", "--steps", "30", "--gene-dim", "4", "--hidden", "8",
            "--no-figures", "--quiet", "-o", str(tmp_path / "ev")]
    assert main(args + ["--covariate", "batch", "--methods", "fe,pca,combat_pca"]) == 0
    out = capsys.readouterr().out
    assert "mixing:batch (within the groups of label): batch_knn" in out and "combat_pca" in out
    md = (tmp_path / "ev" / "summary.md").read_text()
    assert "## mixing:batch: batch mixing within the groups of label" in md
    assert main(args + ["--methods", "pca,combat_pca"]) != 0
    assert "--covariate BATCH" in capsys.readouterr().err
