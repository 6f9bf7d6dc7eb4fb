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


def _full_gene_reference():
    from factembed.estimator import _inference_optimum
    return _inference_optimum


def test_gn_reference_gradient_matches_autograd(fitted_small):
    """The bench's Gauss-Newton reference (forward-mode Jacobians) agrees with autograd."""
    ref = _full_gene_reference()
    fe, X, _ = fitted_small
    net = fe.net_
    Z = torch.tensor(fe.embedding_[:5], dtype=torch.float64)
    Xt = torch.from_numpy(X[:5])
    G = net.first_gene(net.gene_embedding).detach()
    layers = [(la.weight.detach(), la.bias.detach()) for la in net.layers]
    f, g, _ = ref.loss_grad_gn(Z, Xt, G, net.first_sample.weight.detach(), layers, chunk=7)
    z = Z.float().clone().requires_grad_(True)
    loss = ((net.decode(z) - Xt) ** 2).mean(1)
    loss.sum().backward()
    np.testing.assert_allclose(f.numpy(), loss.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(g.numpy(), z.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_transform_reaches_the_full_gene_optimum(fitted_small):
    """Against an independent solver (Levenberg-Marquardt on the full-gene loss): a long
    all-gene transform lands on its optimum; the default (subsampled) settings land
    within a few percent of the embedding's spread of it and never fit worse than
    their start point."""
    ref = _full_gene_reference()
    fe, X, _ = fitted_small
    rng = np.random.default_rng(3)
    X_new = X[:30] + 0.05 * rng.normal(size=X[:30].shape).astype(np.float32)
    spread = np.median(np.linalg.norm(fe.embedding_ - np.median(fe.embedding_, 0), axis=1))
    long = copy.deepcopy(fe).set_params(infer_steps=400, infer_genes=10**6, infer_lr=2e-2)
    Z_long = long.transform(X_new)
    Z_ref, f_ref = ref.full_gene_optimum(fe.net_, torch.from_numpy(Z_long), torch.from_numpy(X_new))
    f_long = per_sample_mse(fe, Z_long, X_new)
    assert np.all(f_long <= f_ref.numpy() * (1 + 1e-3) + 1e-6)
    assert np.median(np.linalg.norm(Z_long - Z_ref.numpy(), axis=1)) < 0.01 * spread
    from factembed import FactorizedEmbeddings
    default = copy.deepcopy(fe).set_params(**{k: FactorizedEmbeddings().get_params()[k]
                                              for k in ("infer_steps", "infer_genes", "infer_lr")})
    Z_def = default.transform(X_new)
    Z0 = copy.deepcopy(default).set_params(infer_steps=0).transform(X_new)
    assert np.median(np.linalg.norm(Z_def - Z_ref.numpy(), axis=1)) < 0.05 * spread
    assert np.all(per_sample_mse(fe, Z_def, X_new) <= per_sample_mse(fe, Z0, X_new) + 1e-4)


def test_start_points_come_from_a_capped_candidate_set(fitted_small, monkeypatch):
    """Above INIT_CANDIDATES training samples the start point is the nearest
    reconstruction among a random subset of that many (the search must not grow with
    the training set); the subset comes from the generator (reproducible)."""
    import factembed.estimator.inference as infer
    fe, X, _ = fitted_small
    monkeypatch.setattr(infer, "INIT_CANDIDATES", 25)
    Xt = torch.from_numpy(X[:40])
    Z0 = infer.nearest_reconstruction_init(fe.net_, Xt, init_genes=10**6,
                                           generator=torch.Generator().manual_seed(7))
    subset = torch.randperm(len(fe.embedding_), generator=torch.Generator().manual_seed(7))[:25].numpy()
    E = fe.embedding_
    R = fe.inverse_transform(E[subset])
    d = ((X[:40, None, :] - R[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(Z0.numpy(), E[subset[d.argmin(1)]])
    assert len({tuple(z) for z in Z0.numpy()}) <= 25


# -- the automatic step (infer_lr="auto") ---------------------------------------------

def test_neighbour_scale_against_brute_force():
    """Each chosen start point's distance to its nearest other candidate (numpy brute
    force), duplicates floored at a tenth of the median, None for one candidate."""
    from factembed.estimator.inference import neighbour_scale
    rng = np.random.default_rng(0)
    C = rng.normal(size=(300, 2)).astype(np.float32)
    C[5] = C[6]                                       # a duplicate pair: distance 0
    arg = np.array([0, 5, 6, 299, 17, 17])
    d = np.sqrt(((C[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = d.min(1)
    want = np.maximum(nn, 0.1 * np.median(nn))[arg]
    got = neighbour_scale(torch.from_numpy(C), torch.from_numpy(arg), block=64).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[1] == got[2] and np.isclose(got[1], 0.1 * np.median(nn), rtol=1e-5)
    assert neighbour_scale(torch.zeros(1, 2), torch.zeros(3, dtype=torch.long)) is None


def test_auto_step_is_adam_in_units_of_the_local_scale(fitted_small, monkeypatch):
    """With the same local scale c for every sample, lr="auto" is Adam at the absolute step
    AUTO_STEP * c (Adam does not see the gradient's scale: z = z0 + c u moves by c times
    u's steps); with each sample's own scale, a sample alone equals it among others."""
    import factembed.estimator.inference as infer
    fe, X, _ = fitted_small
    Xt = torch.from_numpy(X[:12])
    kw = dict(steps=30, infer_genes=64, init_genes=300)
    c = 0.037
    monkeypatch.setattr(infer, "neighbour_scale", lambda cand, arg, block=1024: torch.full((len(arg),), c))
    auto = infer.embed_new_samples(fe.net_, Xt, lr="auto", generator=torch.Generator().manual_seed(1), **kw)
    plain = infer.embed_new_samples(fe.net_, Xt, lr=infer.AUTO_STEP * c, generator=torch.Generator().manual_seed(1),
                                    **kw)
    # Equal up to rounding, which Adam can amplify: it divides each coordinate's gradient by its
    # own running size, so where a gradient is near zero a rounding-level difference (another
    # CPU's kernels) changes that coordinate's step by up to a step.  Nearly every coordinate
    # matches to 1e-4, and none is off by a tenth of one step (a wrong scale is off by many).
    a, p = auto.numpy(), plain.numpy()
    assert np.isclose(a, p, rtol=1e-4, atol=1e-6).mean() >= 0.9
    assert np.abs(a - p).max() < 0.1 * infer.AUTO_STEP * c
    monkeypatch.undo()
    together = infer.embed_new_samples(fe.net_, Xt, lr="auto", generator=torch.Generator().manual_seed(1), **kw)
    alone = infer.embed_new_samples(fe.net_, Xt[3:4], lr="auto", generator=torch.Generator().manual_seed(1), **kw)
    np.testing.assert_allclose(alone[0].numpy(), together[3].numpy(), rtol=1e-4, atol=1e-5)


def test_infer_lr_accepts_auto_or_a_positive_number():
    import argparse

    import pytest

    from factembed import FEConfig
    from factembed.cli.options import auto_or_float
    assert FEConfig().infer_lr == "auto"
    FEConfig(infer_lr=0.02)
    for bad in ("fast", 0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            FEConfig(infer_lr=bad)
    assert auto_or_float("auto") == "auto" and auto_or_float("0.02") == 0.02
    with pytest.raises(argparse.ArgumentTypeError, match="'auto' or a number"):
        auto_or_float("quick")
