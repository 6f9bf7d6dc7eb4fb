"""The gene side: the one gene cosine similarity (against scikit-learn's) and similar_genes."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

from factembed import FactorizedEmbeddings, FEInputError
from factembed.estimator.genes import cosine_similarity, nearest_genes, rank_by_similarity
from _small import counts as _counts

TINY = dict(gene_dim=8, hidden=(16, 8), infer_steps=20, random_state=0, verbose=False, device="cpu")


def _genes(m=300, d=6, seed=0):
    G = np.random.default_rng(seed).normal(size=(m, d))
    G[7] = 0.0                                   # a gene whose embedding is all zeros
    return G


def test_cosine_similarity_matches_scikit_learn():
    G = _genes()
    rows = [0, 5, 7, 299]
    ours = cosine_similarity(G, rows)
    ref = sk_cosine(G[rows], G)
    for r, j in enumerate(rows):
        ref[r, j] = np.nan                       # a gene is not its own neighbour
    ref[:, 7] = np.nan                           # zeros have no direction
    ref[rows.index(7)] = np.nan
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, equal_nan=True)


def test_nearest_genes_follow_the_similarity_in_any_block_size():
    G = _genes()
    ref = sk_cosine(G, G)
    np.fill_diagonal(ref, -np.inf)
    ref[:, 7] = -np.inf
    for block in (17, 2048):
        nb = nearest_genes(G, k=5, block=block)
        assert nb.shape == (300, 5)
        for g in (0, 123, 299):
            expect = np.argsort(-ref[g], kind="stable")[:5]
            assert nb[g].tolist() == expect.tolist()
            assert g not in nb[g] and 7 not in nb[g]


def test_rank_puts_nan_last():
    assert rank_by_similarity(np.array([0.1, np.nan, 0.9, -0.5])).tolist() == [2, 0, 3, 1]


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
