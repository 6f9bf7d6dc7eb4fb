"""Inference of new samples into a frozen model."""
import copy

import numpy as np
import torch


def per_sample_mse(fe, Z, X):
    return ((fe.inverse_transform(Z) - X) ** 2).mean(1)


def test_transform_of_training_data_lands_near_embedding(fitted_small):
    fe, X, _ = fitted_small
    Z = fe.embedding_
    Zt = fe.transform(X)
    spread = np.linalg.norm(Z - Z.mean(0), axis=1).mean()
    dist = np.linalg.norm(Zt - Z, axis=1)
    assert np.median(dist) < 0.1 * spread, (np.median(dist), spread)
    # inference only ever improves the fit of a training profile (up to fp32 noise)
    assert np.all(per_sample_mse(fe, Zt, X) <= per_sample_mse(fe, Z, X) + 1e-4)


def test_transform_does_not_modify_model_and_is_deterministic(fitted_small):
    fe, X, _ = fitted_small
    before = {k: v.clone() for k, v in fe.net_.state_dict().items()}
    a = fe.transform(X[:20])
    b = fe.transform(X[:20])
    after = fe.net_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.array_equal(a, b)


def test_samples_are_optimised_independently(fitted_small):
    """Embedding samples together or alone gives the same answer (per-sample loss)."""
    fe, X, _ = fitted_small
    together = fe.transform(X[:30])
    alone = fe.transform(X[7:8])
    np.testing.assert_allclose(alone[0], together[7], rtol=1e-4, atol=1e-5)


def test_init_is_nearest_reconstruction(fitted_small):
    fe, X, _ = fitted_small
    est = copy.deepcopy(fe).set_params(infer_steps=0)
    Z0 = est.transform(X[:15])
    R = fe.inverse_transform(fe.embedding_)
    d = ((X[:15, None, :] - R[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(Z0, fe.embedding_[d.argmin(1)])


def test_noisy_new_samples_keep_their_cluster(fitted_small):
    fe, X, labels = fitted_small
    rng = np.random.default_rng(5)
    X_new = X[:40] + 0.1 * rng.normal(size=X[:40].shape).astype(np.float32)
    Zn = fe.transform(X_new)
    Z = fe.embedding_
    d = ((Zn[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    nn_label = labels[np.argsort(d, axis=1)[:, :5]]
    votes = np.array([np.bincount(r, minlength=4).argmax() for r in nn_label])
    assert (votes == labels[:40]).mean() >= 0.9


def test_gene_subsampled_refinement(fitted_small):
    """With fewer genes per step than the model has, inference still lands close."""
    fe, X, _ = fitted_small
    est = copy.deepcopy(fe).set_params(infer_genes=64, init_genes=128)
    Zt = est.transform(X[:50])
    Z = fe.embedding_[:50]
    spread = np.linalg.norm(fe.embedding_ - fe.embedding_.mean(0), axis=1).mean()
    assert np.median(np.linalg.norm(Zt - Z, axis=1)) < 0.15 * spread
