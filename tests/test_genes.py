"""The one gene cosine similarity, against scikit-learn's."""

import numpy as np
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

from factembed.genes import cosine_similarity, nearest_genes, rank_by_similarity


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
