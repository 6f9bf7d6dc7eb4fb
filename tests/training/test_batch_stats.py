"""The per-step loss and batch Pearson r of training are computed over exactly the entries
the step trained on: held-out validation entries and missing (NaN) values are left out of
both, checked against an independent NumPy computation on data far from 0."""

from __future__ import annotations

import numpy as np
import torch

from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.loop import BatchSampler, TensorRows, train
from factembed.training.heldout import ValidationSet


def _log2_like(n: int, m: int, seed: int = 0) -> np.ndarray:
    """log2-scale microarray values: gene levels 5-14, a sample factor, noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(5.0, 14.0, m)
    X = base + np.outer(rng.normal(0, 1.0, n), rng.normal(0, 0.5, m)) + rng.normal(0, 0.3, (n, m))
    return X.astype(np.float32)


def _first_step(X: np.ndarray, validation_fraction: float | None):
    """(history of one full-batch step, the initial network's predictions, the mask of the
    entries that step trained on)."""
    n, m = X.shape
    net = FactorizedEmbeddingNet(n, m, 2, 6, (16, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = net.decode(net.sample_embedding).double().numpy()
    Xt = torch.from_numpy(X)
    trained = ~np.isnan(X)
    validation = None
    if validation_fraction is not None:
        validation = ValidationSet(TensorRows(Xt), seed=11, fraction=validation_fraction, every=100)
        held = validation.mask(torch.arange(n), None).numpy()
        assert held.any()
        trained &= ~held
    gen = torch.Generator().manual_seed(0)
    history, _, _ = train(net, Xt, n_steps=1, lr=1e-3, l2=0.0, batch_samples=n, generator=gen,
                          device=torch.device("cpu"), progress=False, sampler=BatchSampler(n, n, gen),
                          validation=validation, missing=bool(np.isnan(X).any()), workers=1)
    return history, pred, trained


def _independent(X: np.ndarray, pred: np.ndarray, trained: np.ndarray) -> tuple[float, float]:
    x, y = X.astype(np.float64)[trained], pred[trained]
    return float(((y - x) ** 2).mean()), float(np.corrcoef(x, y)[0, 1])


def test_batch_r_and_loss_leave_out_held_out_and_missing_entries():
    X = _log2_like(24, 300)
    rng = np.random.default_rng(1)
    X[rng.random(X.shape) < 0.1] = np.nan                      # 10% missing values
    history, pred, trained = _first_step(X, validation_fraction=0.05)
    mse, r = _independent(X, pred, trained)
    assert -1.0 <= history.pearson_r[0] <= 1.0
    np.testing.assert_allclose(history.pearson_r[0], r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(history.loss[0], mse, rtol=1e-4)


def test_batch_r_without_masks_is_the_plain_correlation():
    X = _log2_like(20, 200, seed=2)
    history, pred, trained = _first_step(X, validation_fraction=None)
    assert trained.all()
    mse, r = _independent(X, pred, trained)
    np.testing.assert_allclose(history.pearson_r[0], r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(history.loss[0], mse, rtol=1e-4)


def test_batch_r_stays_within_one_while_training_on_masked_log2_data():
    """The symptom users saw (r = 1.04-1.07 in the progress bar on log2 data with held-out
    entries): every step's r is a correlation."""
    X = _log2_like(30, 400, seed=4)
    n, m = X.shape
    net = FactorizedEmbeddingNet(n, m, 2, 6, (16, 8), generator=torch.Generator().manual_seed(0))
    Xt = torch.from_numpy(X)
    validation = ValidationSet(TensorRows(Xt), seed=5, fraction=0.05, every=50)
    gen = torch.Generator().manual_seed(0)
    history, _, _ = train(net, Xt, n_steps=150, lr=5e-3, l2=0.0, batch_samples=8, generator=gen,
                          device=torch.device("cpu"), progress=False, validation=validation, workers=1)
    r = np.asarray(history.pearson_r)
    assert np.all(np.isfinite(r)) and np.all(np.abs(r) <= 1.0)
