"""factembed.tl: the scanpy-style tools (obsm / varm / uns, gene masks, scanpy's plots)."""
import numpy as np
import pytest

from factembed import FactorizedEmbeddings
from _small import adata as _adata, counts as _counts


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
