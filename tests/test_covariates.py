"""Known covariates as factors of the model (factembed.covariates, the network's covariate
term, fit / transform / inverse_transform / impute / score / save / load with them)."""
import numpy as np
import pandas as pd
import pytest
import torch

from factembed import FactorizedEmbeddings
from factembed.covariates import CovariateSpec, covariate_table
from factembed.errors import FEInputError
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.planted import make_planted, plant_batches


def planted_batches(seed=0, n=240, m=400, n_batches=2):
    """Planted clusters (label i % 4) measured in random batches (plant_batches: per-gene
    shifts sd 1.5, log-scales sd 0.2); also the matrix as batch 0 would measure it."""
    P = make_planted(n, m, n_groups=4, latent_dim=3, scatter=0.15, loading_sd=1.0, base=None, noise=0.1,
                     clip=False, balanced=True, seed=seed)
    B = plant_batches(P.X, n_batches, seed=seed + 1)
    return B.X, P.labels, B.batch, B.as_batch(P.X, 0)


def batch_gap(Z, labels, batch):
    """Distance between the two batches' centroids within each label, in within-label sds."""
    return float(np.mean([np.linalg.norm(Z[(labels == g) & (batch == 0)].mean(0) - Z[(labels == g) & (batch == 1)].mean(0))
                          / Z[labels == g].std(0).mean() for g in np.unique(labels)]))


def test_covariate_term_is_the_concatenation_mlp():
    # independent reference: the plain MLP on [s_i, E_batch[l_i], age_i, g_j] with the first
    # layer's weight the concatenation of its blocks
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(5, 7, sample_dim=2, gene_dim=3, hidden=(6, 4), covariates=((3, 2), (0, 1)),
                                 generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.covariate_levels.copy_(torch.tensor([[0], [2], [1], [2], [0]]))
        net.covariate_values.copy_(torch.tensor([[0.5], [-1.0], [0.0], [2.0], [1.5]]))
    rows = torch.arange(5)
    got = net(rows)
    W1 = torch.cat([net.first_sample.weight, net.first_covariate[0].weight, net.first_covariate[1].weight,
                    net.first_gene.weight], 1)
    ref = torch.empty(5, 7)
    for i in range(5):
        for j in range(7):
            x = torch.cat([net.sample_embedding[i], net.covariate_embeddings[0][net.covariate_levels[i, 0]],
                           net.covariate_values[i], net.gene_embedding[j]])
            a = torch.relu(W1 @ x + net.first_gene.bias)
            for k, layer in enumerate(net.layers):
                a = layer(a)
                if k < len(net.layers) - 1:
                    a = torch.relu(a)
            ref[i, j] = a[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # the pairs path and the step's sample term agree with it
    torch.testing.assert_close(net.decode_pairs(torch.tensor([1, 3]), torch.tensor([6, 0])),
                               torch.stack([ref[1, 6], ref[3, 0]]), rtol=1e-5, atol=1e-6)


def test_spec_kinds_levels_and_errors():
    table = covariate_table(pd.DataFrame({"batch": ["b", "a", "b"], "age": [30, 50, 70], "sex": [True, False, True]}),
                            None, 3)
    spec = CovariateSpec.fit(table)
    assert [(c.name, c.kind) for c in spec.covariates] == [("batch", "categorical"), ("age", "numeric"),
                                                           ("sex", "categorical")]
    assert spec.covariates[0].levels == ("a", "b") and spec.covariates[0].dim == 4
    levels, values = spec.encode(table)
    np.testing.assert_array_equal(levels, [[1, 1], [0, 0], [1, 1]])
    np.testing.assert_allclose(values[:, 0], (np.array([30, 50, 70]) - 50) / np.std([30, 50, 70]), rtol=1e-6)
    assert CovariateSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(FEInputError, match=r"'c'.*row 1.*not seen"):
        spec.encode({"batch": np.array(["a", "c"]), "age": np.array([1.0, 2.0]), "sex": np.array([True, True])})
    with pytest.raises(FEInputError, match="lack 'age'"):
        spec.encode({"batch": np.array(["a"]), "sex": np.array([True])})
    with pytest.raises(FEInputError, match=r"missing for 1 sample.*'s2'"):
        CovariateSpec.fit({"batch": np.array(["a", None, "b"], dtype=object)}, sample_names=["s1", "s2", "s3"])
    with pytest.raises(FEInputError, match="3 values for 2 samples"):
        covariate_table({"batch": ["a", "b", "c"]}, None, 2)


def test_batch_covariate_takes_the_batch_out_of_the_embedding_and_corrects_the_matrix(tmp_path):
    X, labels, batch, clean0 = planted_batches(seed=0)
    names = np.array([f"run_{b}" for b in batch])
    kw = dict(gene_dim=16, hidden=(32, 16), random_state=0, verbose=False)
    plain = FactorizedEmbeddings(**kw).fit(X)
    fe = FactorizedEmbeddings(**kw).fit(X, covariates={"batch": names})
    gap_plain, gap_cov = batch_gap(plain.embedding_, labels, batch), batch_gap(fe.embedding_, labels, batch)
    assert gap_cov < 0.7 * gap_plain, (gap_cov, gap_plain)
    # decoded as if every sample were measured in run_0: closer to the batch-free matrix than the input
    R0 = fe.inverse_transform(fe.embedding_, covariates={"batch": "run_0"})
    rmse = lambda a: float(np.sqrt(((a - clean0) ** 2).mean()))
    assert rmse(R0) < 0.5 * rmse(X), (rmse(R0), rmse(X))
    frames = fe.covariate_embedding_
    assert list(frames) == ["batch"] and list(frames["batch"].index) == ["run_0", "run_1"]
    # transform needs the samples' covariates; with them the training samples land near their embedding
    with pytest.raises(FEInputError, match="fitted with covariate"):
        fe.transform(X[:10])
    with pytest.raises(FEInputError, match="without covariates"):
        plain.transform(X[:10], covariates={"batch": names[:10]})
    Zt = fe.transform(X[:30], covariates=pd.DataFrame({"batch": names[:30]}))
    spread = np.abs(fe.embedding_ - fe.embedding_.mean(0)).mean()
    assert np.abs(Zt - fe.embedding_[:30]).mean() < 0.2 * spread
    assert fe.score(X[:30], covariates={"batch": names[:30]}) > 0.9
    # impute with covariates: a hidden entry comes back close to the truth
    Xh = X[:12].copy()
    hole = np.zeros_like(Xh, dtype=bool)
    hole[::2, 5] = hole[1::2, 6] = True
    Xh[hole] = np.nan
    imp = fe.impute(Xh, covariates={"batch": names[:12]})
    gene_means = np.broadcast_to(X.mean(0), Xh.shape)[hole]
    assert np.abs(imp[hole] - X[:12][hole]).mean() < 0.5 * np.abs(X[:12][hole] - gene_means).mean()
    # save / load: levels by name, the same decoder
    fe.save(tmp_path / "m")
    back = FactorizedEmbeddings.load(tmp_path / "m")
    assert back.covariates_ == fe.covariates_
    np.testing.assert_array_equal(back.inverse_transform(fe.embedding_[:5], covariates={"batch": "run_1"}),
                                  fe.inverse_transform(fe.embedding_[:5], covariates={"batch": "run_1"}))
    with pytest.raises(FEInputError, match="not seen in training"):
        back.inverse_transform(fe.embedding_[:2], covariates={"batch": "run_9"})


def test_anndata_obs_columns_as_covariates():
    ad = pytest.importorskip("anndata")
    X, labels, batch, _ = planted_batches(seed=1, n=60, m=40)
    a = ad.AnnData(X)
    a.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    a.obs["age"] = np.linspace(20, 80, 60)
    fe = FactorizedEmbeddings(gene_dim=8, hidden=(16, 8), n_steps=30, random_state=0, verbose=False)
    fe.fit(a, covariates=["batch", "age"])
    assert fe.covariates_.names == ["batch", "age"] and fe.covariates_.covariates[1].kind == "numeric"
    assert fe.transform(a[:5], covariates=["batch", "age"]).shape == (5, 2)
    with pytest.raises(FEInputError, match="no column 'donor'"):
        fe.transform(a[:5], covariates=["donor"])


def test_resume_with_covariates_is_bitwise_and_other_covariates_are_refused(tmp_path):
    X, _, batch, _ = planted_batches(seed=2, n=80, m=60)
    cov = {"batch": np.array([f"b{b}" for b in batch]), "age": np.linspace(0, 1, 80)}
    kw = dict(gene_dim=8, hidden=(16, 8), random_state=0, verbose=False, device="cpu")
    full = FactorizedEmbeddings(n_steps=90, **kw).fit(X, covariates=cov)
    FactorizedEmbeddings(n_steps=60, **kw).fit(X, covariates=cov, checkpoint_dir=tmp_path, checkpoint_every=30)
    resumed = FactorizedEmbeddings(n_steps=90, **kw).fit(X, covariates=cov, checkpoint_dir=tmp_path,
                                                         checkpoint_every=30, resume=True)
    for k, v in full.net_.state_dict().items():
        assert np.array_equal(v.numpy(), resumed.net_.state_dict()[k].numpy()), k
    assert "covariate_embeddings.0" in full.net_.state_dict()
    with pytest.raises(FEInputError, match="different run"):
        FactorizedEmbeddings(n_steps=90, **kw).fit(X, covariates={"batch": cov["batch"]}, checkpoint_dir=tmp_path,
                                                   checkpoint_every=30, resume=True)


def test_cli_fit_and_transform_with_a_covariate_column(tmp_path, capsys):
    from factembed.cli import main
    from factembed.io import ExpressionData, write_expression
    X, labels, batch, _ = planted_batches(seed=3, n=60, m=40)
    samples = np.array([f"s{i}" for i in range(60)])
    data = ExpressionData(X=X, samples=samples, genes=np.array([f"g{j}" for j in range(40)]))
    write_expression(tmp_path / "train.csv", data)
    pd.DataFrame({"sample": samples, "group": [f"c{v}" for v in labels], "batch": batch + 1,
                  "age": np.linspace(20, 80, 60)}).to_csv(tmp_path / "ann.csv", index=False)
    fast = ["--steps", "40", "--gene-dim", "8", "--hidden", "16,8", "--seed", "0", "--no-log", "--quiet", "--no-html"]
    assert main(["fit", str(tmp_path / "train.csv"), "-o", str(tmp_path / "m"), "--labels", str(tmp_path / "ann.csv"),
                 "--label-column", "group", "--covariate", "batch:categorical", "--covariate", "age", *fast]) == 0
    fe = FactorizedEmbeddings.load(tmp_path / "m")
    assert [(c.name, c.kind) for c in fe.covariates_.covariates] == [("batch", "categorical"), ("age", "numeric")]
    assert fe.covariates_.covariates[0].levels == ("1", "2")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "covariate batch: 2 levels (1, 2), 4 numbers each" in out and "covariate age: numeric (mean 50" in out
    # the model's embedding.csv carries the covariates (the page colours by its columns)
    emb = pd.read_csv(tmp_path / "m" / "embedding.csv")
    assert list(emb.columns[:4]) == ["sample", "label", "batch", "age"]
    np.testing.assert_array_equal(emb["batch"].to_numpy(), batch + 1)
    np.testing.assert_allclose(emb["age"].to_numpy(), np.linspace(20, 80, 60), rtol=1e-5)
    # transform reads the same columns from its --labels
    assert main(["transform", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o", str(tmp_path / "z.csv"),
                 "--labels", str(tmp_path / "ann.csv"), "--label-column", "group", "--quiet"]) == 0
    assert len(pd.read_csv(tmp_path / "z.csv")) == 60
    # reconstruct as batch 1 (and age 50): the Python API's matrix
    assert main(["reconstruct", str(tmp_path / "m"), str(tmp_path / "m" / "embedding.csv"), "-o",
                 str(tmp_path / "r.csv"), "--as", "batch=1", "--as", "age=50"]) == 0
    want = fe.inverse_transform(fe.embedding_, covariates={"batch": "1", "age": 50.0})
    got = pd.read_csv(tmp_path / "r.csv")[[f"g{j}" for j in range(40)]].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["reconstruct", str(tmp_path / "m"), str(tmp_path / "m" / "embedding.csv"), "-o",
                 str(tmp_path / "r2.csv")]) != 0
    assert "--as batch=" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "m"), str(tmp_path / "m" / "embedding.csv"), "-o",
                 str(tmp_path / "r3.csv"), "--as", "batch=1", "--as", "age=old"]) != 0
    assert "'age' is numeric" in capsys.readouterr().err
    # impute reads them the same way
    holes = X.copy()
    holes[::3, 4] = np.nan
    write_expression(tmp_path / "holes.csv", ExpressionData(X=holes, samples=samples, genes=data.genes))
    assert main(["impute", str(tmp_path / "m"), str(tmp_path / "holes.csv"), "-o", str(tmp_path / "filled.csv"),
                 "--labels", str(tmp_path / "ann.csv"), "--label-column", "group", "--quiet"]) == 0
    filled = pd.read_csv(tmp_path / "filled.csv")
    assert filled["g4"].notna().all()
    # a batch the model never saw: learned by default, refused with --unseen error
    ann3 = pd.read_csv(tmp_path / "ann.csv")
    ann3["batch"] = 3
    ann3.to_csv(tmp_path / "ann3.csv", index=False)
    assert main(["transform", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o", str(tmp_path / "z3.csv"),
                 "--labels", str(tmp_path / "ann3.csv"), "--label-column", "group", "--quiet"]) == 0
    z3 = pd.read_csv(tmp_path / "z3.csv")
    assert len(z3) == 60 and (z3["batch"] == 3).all()          # the new samples' covariates as columns
    capsys.readouterr()
    assert main(["transform", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o", str(tmp_path / "z4.csv"),
                 "--labels", str(tmp_path / "ann3.csv"), "--label-column", "group", "--quiet", "--unseen", "error"]) != 0
    assert "level '3'" in capsys.readouterr().err
    # without them: a one-line error naming the column and the flag
    capsys.readouterr()
    assert main(["transform", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o", str(tmp_path / "z2.csv"),
                 "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "'batch'" in err and "--labels" in err
    # a column the table does not have
    assert main(["fit", str(tmp_path / "train.csv"), "-o", str(tmp_path / "m2"), "--labels", str(tmp_path / "ann.csv"),
                 "--label-column", "group", "--covariate", "donor", *fast]) != 0
    assert "'donor'" in capsys.readouterr().err


def test_tl_fe_with_covariate_keys():
    ad = pytest.importorskip("anndata")
    from factembed import tl
    X, labels, batch, _ = planted_batches(seed=4, n=60, m=40)
    a = ad.AnnData(X)
    a.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    est = tl.fe(a, covariate_keys="batch", gene_dim=8, hidden=(16, 8), n_steps=30, verbose=False)
    assert est.covariates_.names == ["batch"] and a.obsm["X_fe"].shape == (60, 2)
    new = a[:8].copy()
    tl.fe_transform(new, est)
    direct = est.transform(X[:8], covariates={"batch": np.asarray(a.obs["batch"][:8].astype(str))})
    np.testing.assert_allclose(new.obsm["X_fe"], direct, rtol=1e-5, atol=1e-6)
    del new.obs["batch"]
    with pytest.raises(FEInputError, match="no column 'batch'"):
        tl.fe_transform(new, est)


def _centroid_gap(Z, labels, Ztr, ltr):
    """Per label, the distance of Z's centroid to the training centroid, in training sds."""
    return float(np.mean([np.linalg.norm(Z[labels == g].mean(0) - Ztr[ltr == g].mean(0)) / Ztr[ltr == g].std(0).mean()
                          for g in np.unique(labels)]))


def test_a_batch_the_model_never_saw_is_learned_in_transform_or_refused():
    from scipy.sparse import csr_matrix
    from sklearn.neighbors import KNeighborsClassifier
    X, labels, batch, _ = planted_batches(seed=0, n=360, m=400, n_batches=3)
    names = np.array([f"run_{b}" for b in batch])
    train = names != "run_2"
    fe = FactorizedEmbeddings(gene_dim=16, hidden=(32, 16), random_state=0, verbose=False).fit(
        X[train], covariates={"batch": names[train]})
    Ztr, ltr = fe.embedding_, labels[train]
    new = np.flatnonzero(~train)[:40]
    learned = fe.transform(X[new], covariates={"batch": names[new]})          # unseen="learn" by default
    as_known = fe.transform(X[new], covariates={"batch": ["run_0"] * len(new)})
    gap_learned, gap_known = (_centroid_gap(Z, labels[new], Ztr, ltr) for Z in (learned, as_known))
    # ratio 0.25-0.59 over seeds 0-1 and 1-2 threads (float differences change the fit)
    assert gap_learned < 0.7 * gap_known, (gap_learned, gap_known)
    assert KNeighborsClassifier(5).fit(Ztr, ltr).score(learned, labels[new]) >= 0.9
    # the new batch's rows do not depend on the known-batch rows embedded with them
    seen = np.flatnonzero(train)[:10]
    both = fe.transform(X[np.r_[new, seen]], covariates={"batch": names[np.r_[new, seen]]})
    np.testing.assert_allclose(both[:len(new)], learned, atol=1e-3)
    np.testing.assert_allclose(both[len(new):], fe.transform(X[seen], covariates={"batch": names[seen]}), atol=1e-4)
    # score and impute use the learned offsets
    assert fe.score(X[new], covariates={"batch": names[new]}) > 0.95
    Xh = X[new].copy()
    Xh[::3, 7] = np.nan
    imp = fe.impute(Xh, covariates={"batch": names[new]})
    err = np.abs(imp[::3, 7] - X[new][::3, 7]).mean()
    assert err < 0.2 * np.abs(X[new][::3, 7] - X[train][:, 7].mean()).mean()
    # refused: on request, with fewer than MIN_NEW_LEVEL_SAMPLES samples, from a sparse matrix
    with pytest.raises(FEInputError, match=r"'run_2' \(row 0\) was not seen in training"):
        fe.transform(X[new], covariates={"batch": names[new]}, unseen="error")
    with pytest.raises(FEInputError, match=r"new level 'run_2' has 4 sample\(s\).*at least 5"):
        fe.transform(X[new[:4]], covariates={"batch": names[new[:4]]})
    with pytest.raises(FEInputError, match="in memory"):
        fe.transform(csr_matrix(X[new]), covariates={"batch": names[new]})
    with pytest.raises(ValueError, match="unseen must be"):
        fe.transform(X[new], covariates={"batch": names[new]}, unseen="guess")


def test_a_backed_fit_takes_covariates_from_labels_like_the_in_memory_fit(tmp_path):
    """--backed --covariate: the same levels by name and the same model as the in-memory fit
    of the same file (both read the same rows; the backed one in blocks)."""
    import h5py
    from factembed.cli import main
    X, labels, batch, _ = planted_batches(seed=5, n=64, m=30)
    X = np.abs(X)
    samples = np.array([f"s{i}" for i in range(64)])
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = X
        f["samples"] = samples.astype("S")
        f["genes"] = np.array([f"g{j}" for j in range(30)]).astype("S")
    pd.DataFrame({"sample": samples[::-1], "batch": [f"run_{b}" for b in batch[::-1]],
                  "group": labels[::-1]}).to_csv(
        tmp_path / "ann.csv", index=False)                          # rows in another order: matched by name
    fast = ["--steps", "30", "--gene-dim", "4", "--hidden", "8", "--seed", "0", "--quiet", "--no-html",
            "--labels", str(tmp_path / "ann.csv"), "--covariate", "batch"]
    assert main(["fit", str(tmp_path / "x.h5"), "-o", str(tmp_path / "backed"), "--backed", *fast]) == 0
    assert main(["fit", str(tmp_path / "x.h5"), "-o", str(tmp_path / "memory"), "--label-column", "group", *fast]) == 0
    backed, memory = (FactorizedEmbeddings.load(tmp_path / d) for d in ("backed", "memory"))
    assert backed.covariates_ == memory.covariates_ and backed.covariates_.covariates[0].levels == ("run_0", "run_1")
    np.testing.assert_array_equal(backed.net_.covariate_levels[:, 0].numpy(), batch)
    assert backed.extra_["backed"] and backed.covariate_embedding_["batch"].shape == (2, 4)
    # data-parallel: every rank reads the whole table; the same levels
    assert main(["fit", str(tmp_path / "x.h5"), "-o", str(tmp_path / "dist"), "--distributed", "2", "--backed",
                 *fast]) == 0
    dist_fe = FactorizedEmbeddings.load(tmp_path / "dist")
    assert dist_fe.covariates_ == memory.covariates_ and dist_fe.extra_["distributed"]["world_size"] == 2
    np.testing.assert_array_equal(dist_fe.net_.covariate_levels[:, 0].numpy(), batch)
    # a column the table lacks: the launching process says so before it starts the ranks
    bad = [a if a != "batch" else "donor" for a in fast]
    assert main(["fit", str(tmp_path / "x.h5"), "-o", str(tmp_path / "dist2"), "--distributed", "2", "--backed",
                 *bad]) != 0
    assert not (tmp_path / "dist2" / ".factembed-prepared" / "request.json").exists()
