"""The PCA start point (factembed.training.warm_start) against scikit-learn's PCA, and what the
fast recipe's plan takes from the data's size (the stop rule's patience)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from factembed import FactorizedEmbeddings, FEConfig
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.recipes import PATIENCE_MAX, plan_training, stop_patience
from factembed.training.loop import TensorRows
from factembed.training.warm_start import pca_warm_start, principal_axes


def _low_rank(n=120, m=400, seed=0, level=8.0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3)) * np.array([3.0, 2.0, 0.5])
    X = level + rng.normal(0, 1, m) + Z @ rng.normal(size=(3, m)) + 0.1 * rng.normal(size=(n, m))
    return X.astype(np.float32)


def _net(X, dim=2):
    return FactorizedEmbeddingNet(X.shape[0], X.shape[1], dim, 5, (8, 4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("max_rows", [10_000, 60])
def test_pca_start_is_sklearns_pca_scores_scaled_and_the_bias_the_mean(max_rows, monkeypatch):
    import factembed.training.warm_start as ws
    monkeypatch.setattr(ws, "MAX_ROWS", max_rows)
    monkeypatch.setattr(ws, "BLOCK_ROWS", 32)            # several blocks
    X = _low_rank()
    net = _net(X)
    pca_warm_start(net, TensorRows(torch.from_numpy(X)), torch.Generator().manual_seed(1))
    Z = net.sample_embedding.detach().numpy().astype(np.float64)
    want = PCA(2).fit_transform(X.astype(np.float64))
    assert np.std(Z[:, 0], ddof=1) == pytest.approx(0.1, rel=1e-4)      # the random start's sd
    for k in range(2):                                   # the same axes, up to sign and one scale
        r = np.corrcoef(Z[:, k], want[:, k])[0, 1]
        assert abs(r) > (0.9999 if max_rows > 120 else 0.99), (k, r)
    ratio = np.std(Z[:, 1]) / np.std(Z[:, 0])
    assert ratio == pytest.approx(np.std(want[:, 1]) / np.std(want[:, 0]), rel=1e-3 if max_rows > 120 else 0.05)
    # the mean of the rows the axes come from (all of them, or the seeded subset)
    assert net.layers[-1].bias.item() == pytest.approx(float(X.mean()), rel=1e-5 if max_rows > 120 else 1e-2)


def test_pca_start_with_missing_values_uses_gene_means_and_is_seeded():
    X = _low_rank(seed=3)
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.05] = np.nan
    a, b = _net(X), _net(X)
    pca_warm_start(a, TensorRows(torch.from_numpy(X)), torch.Generator().manual_seed(7))
    pca_warm_start(b, TensorRows(torch.from_numpy(X)), torch.Generator().manual_seed(7))
    assert torch.equal(a.sample_embedding, b.sample_embedding)
    filled = np.where(np.isnan(X), np.nanmean(X, 0), X).astype(np.float64)
    want = PCA(1).fit_transform(filled)[:, 0]
    assert abs(np.corrcoef(a.sample_embedding.detach().numpy()[:, 0], want)[0, 1]) > 0.999
    assert a.layers[-1].bias.item() == pytest.approx(float(np.nanmean(X)), rel=1e-5)


def test_axes_beyond_the_datas_rank_keep_their_random_draw():
    X = _low_rank(n=3, m=50)                 # 3 samples: 2 axes at most
    net = _net(X, dim=4)
    before = net.sample_embedding.detach().clone()
    pca_warm_start(net, TensorRows(torch.from_numpy(X)), torch.Generator().manual_seed(0))
    assert torch.equal(net.sample_embedding[:, 2:], before[:, 2:])
    assert not torch.equal(net.sample_embedding[:, :2], before[:, :2])
    _, axes, _ = principal_axes(TensorRows(torch.from_numpy(X)), 4, torch.Generator().manual_seed(0))
    assert axes.shape == (50, 2)


def test_fit_starts_from_pca_by_default_and_the_reference_from_its_draw():
    X = _low_rank(n=40, m=60)
    fast = plan_training(FEConfig(), 40, 60)
    ref = plan_training(FEConfig(training="reference"), 40, 60)
    assert (fast.init, ref.init) == ("pca", "random")
    assert plan_training(FEConfig(init="random"), 40, 60).init == "random"
    with pytest.raises(ValueError, match="init must be"):
        FEConfig(init="spectral")
    # one tiny step: the start point is the embedding's layout
    kw = dict(gene_dim=4, hidden=(8,), n_steps=1, lr=1e-6, random_state=0, verbose=False)
    pca = FactorizedEmbeddings(**kw).fit(X).embedding_
    rnd = FactorizedEmbeddings(init="random", **kw).fit(X).embedding_
    want = PCA(1).fit_transform(X.astype(np.float64))[:, 0]
    assert abs(np.corrcoef(pca[:, 0], want)[0, 1]) > 0.999
    assert abs(np.corrcoef(rnd[:, 0], want)[0, 1]) < 0.6


def test_stop_patience_follows_the_passes_and_keeps_large_matrices_unchanged():
    # TCGA shape and 2,000 x 19,962: the 1,000-step patience, measured every 100 steps
    for n, m in ((10_344, 19_962), (2_000, 19_962)):
        plan = plan_training(FEConfig(), n, m)
        assert (plan.patience, plan.val_every) == (PATIENCE_MAX, 100) == (1000, 100)
    # 500 x 20,000 (45 x 1,777 pairs a step, a pass in ~125 steps): 4 passes
    mid = plan_training(FEConfig(), 500, 20_000)
    assert (mid.patience, mid.val_every) == (500, 50)
    # a small cohort: 4 passes, at least 150 steps, ten measurements per window
    khan = plan_training(FEConfig(), 63, 2_308)
    assert (khan.patience, khan.val_every) == (150, 15)
    demo = plan_training(FEConfig(), 271, 5_000)          # a pass in ~68 steps
    assert (demo.patience, demo.val_every) == (270, 27)
    assert stop_patience(100, 100, 10**6) == (150, 15)
    # a data-parallel fit counts the pairs of every rank
    assert stop_patience(1000, 1000, 4000)[0] == 1000 and stop_patience(1000, 1000, 4 * 10**5)[0] == 150


def test_an_auto_fit_measures_and_stops_on_the_plans_schedule():
    X = _low_rank(n=50, m=300, seed=5)
    fe = FactorizedEmbeddings(gene_dim=4, hidden=(8,), random_state=0, verbose=False).fit(X)
    plan = fe.training_plan_
    steps = fe.history_["val_step"]
    assert plan.patience == 150 and np.all(np.diff(steps[:-1]) == plan.val_every)
    assert "over the last 150 steps" in fe.stop_reason_ and "learning rates x0.1 at step" in fe.stop_reason_
    decay = int(fe.stop_reason_.split("x0.1 at step ")[1].split(")")[0].replace(",", ""))
    assert decay + 150 <= fe.n_steps_ < 25_000                # a stop a patience after the decay
