"""What the estimator accepts: scikit-learn's estimator checks, sparse matrices, AnnData;
the gene side (similar_genes); quiet transforms."""
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from factembed import FactorizedEmbeddings, FEInputError
from factembed import estimator as est_mod

TINY = dict(gene_dim=8, hidden=(16, 8), infer_steps=20, random_state=0, verbose=False, device="cpu")


def _counts(n=60, m=40, seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (n, m)) * (rng.uniform(size=(n, m)) < density)
    X[:, 0] += 1.0          # no all-zero row
    return np.log10(X + 1).astype(np.float32)


# --------------------------------------------------------------------------------------
# scikit-learn's own checks
# --------------------------------------------------------------------------------------

def test_check_estimator_passes_or_declares_its_expected_failures(one_torch_thread):
    from sklearn.utils.estimator_checks import check_estimator

    expected = est_mod.sklearn_expected_failed_checks()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(FactorizedEmbeddings(n_steps=20, infer_steps=5, random_state=0, verbose=False),
                                  expected_failed_checks=expected, on_fail=None)
    bad = [(r["check_name"], r["status"], str(r["exception"])[:200]) for r in results
           if r["status"] not in ("passed", "xfail", "skipped")]
    assert not bad, bad
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed == set(expected)          # every declared failure still fails, none more
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}, skipped   # needs SCIPY_ARRAY_API
    assert all(reason for reason in expected.values())


def test_what_the_expected_failures_skip_still_holds():
    """check_transformer_general is declared an expected failure (fit_transform is the
    learned embedding, transform is inference); the rest of what it checks holds."""
    X = _counts()
    fe = FactorizedEmbeddings(n_steps=40, **TINY)
    Z = fe.fit_transform(X)
    assert Z.shape == (60, 2) and np.array_equal(Z, fe.embedding_)
    np.testing.assert_array_equal(FactorizedEmbeddings(n_steps=40, **TINY).fit_transform(X), Z)  # seeded
    assert fe.transform(X).shape == (60, 2)
    with pytest.raises(ValueError, match="X has 60 features, but FactorizedEmbeddings is expecting 40"):
        fe.transform(X.T)


def test_scikit_learn_wording_kept_with_our_content():
    fe = FactorizedEmbeddings(n_steps=5, **TINY)
    with pytest.raises(FEInputError, match=r"empty.*0 feature\(s\) \(shape=\(12, 0\)\) while a minimum of 1"):
        fe.fit(np.zeros((12, 0)))
    with pytest.raises(FEInputError, match="2-D.*Reshape your data"):
        fe.fit(np.ones(5))
    with pytest.raises(FEInputError, match="Complex data not supported"):
        fe.fit(np.ones((4, 3)) * 1j)
    X = np.ones((4, 3), dtype=object)
    X[2, 1] = np.nan
    with pytest.raises(FEInputError, match="row 2, column 1"):   # our locator, for object arrays too
        fe.fit(X)
    X[2, 1] = {"a": 1}
    with pytest.raises(TypeError, match="argument must be .* string.* number"):
        fe.fit(X)
    fitted = FactorizedEmbeddings(n_steps=5, **TINY).fit(_counts().astype(object))   # numbers as objects
    with pytest.raises(FEInputError, match="genes but the model was fitted on 40.*expecting 40 features"):
        fitted.transform(_counts()[:, :7])
    assert fitted.transform(_counts().astype(np.float64)).dtype == np.float32   # tag preserves_dtype


# --------------------------------------------------------------------------------------
# sparse input
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csr_array, sp.csc_matrix])
def test_sparse_fit_is_the_dense_fit_and_is_never_made_dense_whole(kind, monkeypatch):
    X = _counts()
    dense = FactorizedEmbeddings(n_steps=30, **TINY).fit(X)
    shapes = []
    for cls in (sp.csr_matrix, sp.csr_array):
        orig = cls.toarray

        def spy(self, *a, _orig=orig, **k):
            shapes.append(self.shape)
            return _orig(self, *a, **k)
        monkeypatch.setattr(cls, "toarray", spy)
    monkeypatch.setattr(est_mod, "_BLOCK_ELEMENTS", 25 * 40)      # blocks of ROW_BLOCK rows at least
    monkeypatch.setattr(est_mod, "ROW_BLOCK", 16)
    sparse = FactorizedEmbeddings(n_steps=30, **TINY).fit(kind(X))
    np.testing.assert_array_equal(sparse.embedding_, dense.embedding_)        # the same batches, same bits
    np.testing.assert_array_equal(sparse.gene_embedding_, dense.gene_embedding_)
    np.testing.assert_allclose(sparse.transform(kind(X)), dense.transform(X), rtol=1e-5, atol=1e-6)
    assert sparse.score(kind(X)) == pytest.approx(dense.score(X), rel=1e-6)
    assert shapes and max(s[0] for s in shapes) < X.shape[0]


def test_sparse_bad_value_is_located():
    X = sp.csr_matrix(_counts())
    X.data[X.indptr[7] + 1] = np.inf
    col = X.indices[X.indptr[7] + 1]
    with pytest.raises(FEInputError, match=f"NaN/inf value.*first at row 7, column {col} "):
        FactorizedEmbeddings(n_steps=5, **TINY).fit(X)


# --------------------------------------------------------------------------------------
# AnnData
# --------------------------------------------------------------------------------------

def _adata(X, sparse=False):
    ad = pytest.importorskip("anndata")
    n, m = X.shape
    a = ad.AnnData(sp.csr_matrix(X) if sparse else X.copy())
    a.obs_names = [f"cell{i}" for i in range(n)]
    a.var_names = [f"gene{j}" for j in range(m)]
    a.obs["group"] = pd.Categorical([f"g{i % 3}" for i in range(n)])
    return a


@pytest.mark.parametrize("sparse", [False, True])
def test_estimator_takes_anndata_genes_by_var_names(sparse):
    X = _counts()
    a = _adata(X, sparse)
    fe = FactorizedEmbeddings(n_steps=30, **TINY).fit(a)
    assert list(fe.feature_names_in_) == list(a.var_names) and list(fe.sample_names_) == list(a.obs_names)
    np.testing.assert_array_equal(fe.embedding_, FactorizedEmbeddings(n_steps=30, **TINY).fit(X).embedding_)
    shuffled = a[:, a.var_names[::-1]].copy()
    np.testing.assert_allclose(fe.transform(shuffled), fe.transform(X), rtol=1e-5, atol=1e-6)
    assert np.isfinite(fe.score(shuffled))
    with pytest.raises(FEInputError, match="lacks 2 of the model's 40 genes"):
        fe.transform(a[:, 2:].copy())


def test_backed_anndata_is_read_in_row_blocks(tmp_path):
    ad = pytest.importorskip("anndata")
    X = _counts()
    _adata(X, sparse=True).write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    fe = FactorizedEmbeddings(n_steps=30, **TINY).fit(backed)
    assert fe.embedding_.shape == (60, 2) and fe.feature_names_in_[3] == "gene3"
    np.testing.assert_allclose(fe.transform(backed), fe.transform(X), rtol=1e-5, atol=1e-6)
    backed.file.close()


def test_tl_fe_writes_obsm_varm_uns_and_embeds_new_cells(tmp_path):
    import factembed
    X = _counts(80, 40)
    X[:, 5] = 0.0                        # a constant gene: left out, NaN row in varm
    a = _adata(X, sparse=True)
    a.var["highly_variable"] = np.arange(40) != 9       # scanpy's gene mask is honoured
    fe = factembed.tl.fe(a, n_steps=40, gene_dim=8, hidden=(16, 8), infer_steps=20, verbose=False)
    assert isinstance(fe, FactorizedEmbeddings) and fe.random_state == 0
    assert a.obsm["X_fe"].shape == (80, 2)
    np.testing.assert_array_equal(a.obsm["X_fe"], fe.embedding_)
    G = a.varm["X_fe"]
    assert G.shape == (40, 8) and np.isnan(G[[5, 9]]).all() and np.isfinite(np.delete(G, [5, 9], 0)).all()
    uns = a.uns["fe"]
    assert uns["n_genes_used"] == 38 and uns["params"]["gene_dim"] == 8 and uns["mask_var"] == "highly_variable"
    assert uns["summary"]["n_steps"] == 40 and 0 < uns["summary"]["final_loss"]
    a.write_h5ad(tmp_path / "fitted.h5ad")            # everything written is serialisable

    new = _adata(_counts(20, 40, seed=3), sparse=False)
    factembed.tl.fe_transform(new, fe, key_added="X_fe_new")
    assert new.obsm["X_fe_new"].shape == (20, 2) and "X_fe_new" in new.uns
    np.testing.assert_allclose(new.obsm["X_fe_new"], fe.transform(new), rtol=1e-6)
    fe.save(tmp_path / "m")                           # from a saved model too
    factembed.tl.fe_transform(new, tmp_path / "m")
    np.testing.assert_allclose(new.obsm["X_fe"], new.obsm["X_fe_new"], rtol=1e-6)


def test_tl_fe_leaves_the_callers_gene_mask_as_it_was():
    """The constant genes are dropped from a copy of the mask, never from the caller's
    array (nor from a read-only one, as pandas 3 hands out)."""
    import factembed
    X = _counts(50, 30)
    X[:, 4] = 1.0
    mask = np.ones(30, dtype=bool)
    mask[7] = False
    before = mask.copy()
    fe = factembed.tl.fe(_adata(X, sparse=False), mask_var=mask, n_steps=10, gene_dim=4, hidden=(8,),
                         infer_steps=5, verbose=False)
    assert np.array_equal(mask, before)
    assert fe.n_features_in_ == 28
    frozen = before.copy()
    frozen.flags.writeable = False
    a = _adata(X, sparse=False)
    factembed.tl.fe(a, mask_var=frozen, n_steps=10, gene_dim=4, hidden=(8,), infer_steps=5, verbose=False)
    assert a.uns["fe"]["n_genes_used"] == 28


def test_scanpy_plots_the_fe_basis(tmp_path):
    sc = pytest.importorskip("scanpy")
    import factembed
    import matplotlib
    matplotlib.use("Agg")
    a = _adata(_counts(), sparse=True)
    factembed.tl.fe(a, n_steps=30, gene_dim=8, hidden=(16, 8), verbose=False)
    ax = sc.pl.embedding(a, basis="fe", color="group", show=False)
    ax.figure.savefig(tmp_path / "fe.png")
    assert (tmp_path / "fe.png").stat().st_size > 0


# --------------------------------------------------------------------------------------
# the gene side, quiet calls
# --------------------------------------------------------------------------------------

def test_similar_genes_by_cosine():
    rng = np.random.default_rng(0)
    X = _counts()
    fe = FactorizedEmbeddings(n_steps=20, **TINY).fit(pd.DataFrame(X, columns=[f"G{j}" for j in range(40)]))
    G = rng.normal(size=(40, 8)).astype(np.float32)
    G[7] = 3 * G[3] + 0.01          # nearly parallel to G3: the top neighbour, whatever its length
    fe.net_.gene_embedding.data = __import__("torch").from_numpy(G)
    s = fe.similar_genes("G3", k=5)
    assert isinstance(s, pd.Series) and len(s) == 5 and s.index[0] == "G7" and "G3" not in s.index
    assert s.iloc[0] == pytest.approx(1.0, abs=1e-3) and s.is_monotonic_decreasing
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    assert s["G7"] == pytest.approx(float(Gn[3] @ Gn[7]), rel=1e-6)
    assert len(fe.similar_genes("G3", k=100)) == 39
    with pytest.raises(FEInputError, match="unknown gene 'g3'.*did you mean 'G3'"):
        fe.similar_genes("g3")
    with pytest.raises(ValueError, match="k must be"):
        fe.similar_genes("G3", k=0)


def test_transform_and_score_are_quiet_for_small_calls(capsys, monkeypatch):
    X = _counts()
    fe = FactorizedEmbeddings(n_steps=20, **{**TINY, "verbose": True}).fit(X)
    assert "factembed fit" in capsys.readouterr().err      # fitting is long work: a bar
    fe.transform(X)
    fe.score(X)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(est_mod, "PROGRESS_MIN_SAMPLES", 50)
    fe.transform(X)
    err = capsys.readouterr().err
    assert "factembed transform" in err and "r=nan" not in err
