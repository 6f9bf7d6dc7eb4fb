"""Small matrices shared by the tests of the estimator's inputs and of the scanpy-style tools."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp


def counts(n=60, m=40, seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (n, m)) * (rng.uniform(size=(n, m)) < density)
    X[:, 0] += 1.0          # no all-zero row
    return np.log10(X + 1).astype(np.float32)


def adata(X, sparse=False):
    ad = pytest.importorskip("anndata")
    n, m = X.shape
    a = ad.AnnData(sp.csr_matrix(X) if sparse else X.copy())
    a.obs_names = [f"cell{i}" for i in range(n)]
    a.var_names = [f"gene{j}" for j in range(m)]
    a.obs["group"] = pd.Categorical([f"g{i % 3}" for i in range(n)])
    return a
