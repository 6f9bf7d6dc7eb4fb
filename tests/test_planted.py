"""factembed.planted: the one planted-data generator (tests, benchmarks)."""
import numpy as np
import pytest

from factembed.planted import make_planted


def test_same_seed_same_matrix_other_seed_other():
    a = make_planted(50, 40, seed=3)
    b = make_planted(50, 40, seed=3)
    c = make_planted(50, 40, seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.X, c.X)
    assert a.X.dtype == np.float32 and a.X.shape == (50, 40) and a.latent.shape == (50, 4)


def test_linear_without_noise_is_exactly_the_latent_times_loadings():
    # no base level, no noise, no clipping: X has rank latent_dim and is a linear map of the
    # latent positions (least squares recovers it exactly)
    P = make_planted(80, 60, n_groups=3, latent_dim=5, base=None, noise=0.0, clip=False, seed=1)
    s = np.linalg.svd(P.X.astype(np.float64), compute_uv=False)
    assert s[4] > 1e-3 * s[0] and s[5] < 1e-5 * s[0]
    V, *_ = np.linalg.lstsq(P.latent.astype(np.float64), P.X.astype(np.float64), rcond=None)
    np.testing.assert_allclose(P.latent @ V, P.X, atol=1e-4)


def test_balanced_groups_and_separated_centres():
    P = make_planted(120, 30, n_groups=4, latent_dim=3, scatter=0.05, balanced=True, seed=0)
    np.testing.assert_array_equal(P.labels, np.arange(120) % 4)
    # each sample is nearer its own group's mean position than any other group's
    means = np.stack([P.latent[P.labels == g].mean(0) for g in range(4)])
    d = ((P.latent[:, None, :] - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == P.labels).all()


def test_tcga_like_values_and_nonlinear_dropouts():
    lin = make_planted(300, 400, n_groups=33, latent_dim=16, seed=0)
    assert lin.X.min() >= 0 and 1.0 < lin.X.mean() < 1.5          # base Gamma(2, 0.6): mean 1.2
    assert 0.05 < (lin.X == 0).mean() < 0.25
    non = make_planted(300, 400, structure="nonlinear", loading_sd=0.35, seed=0)
    assert non.X.min() >= 0
    # dropouts: more exact zeros than clipping alone makes in the linear preset of the same levels
    assert (non.X == 0).mean() > 0.1
    unclipped = make_planted(300, 400, base=None, clip=False, seed=0)
    assert unclipped.X.min() < 0


def test_out_is_filled_in_row_blocks_with_the_same_draws(tmp_path):
    # a memory-mapped .npy larger than one block: the same matrix as in memory
    ref = make_planted(600, 33, seed=2)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(600, 33))
    got = make_planted(600, 33, seed=2, out=mm)
    assert got.X is mm
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), ref.X)
    with pytest.raises(ValueError, match="out must be"):
        make_planted(600, 33, out=np.zeros((600, 33)))


@pytest.mark.parametrize("kw, word", [({"structure": "curved"}, "structure"), ({"base": "normal"}, "base"),
                                      ({"noise": -1.0}, "noise"), ({"n_groups": 0}, "n_groups")])
def test_bad_arguments_name_themselves(kw, word):
    with pytest.raises(ValueError, match=word):
        make_planted(10, 10, **kw)


def test_plant_batches_measures_the_matrix_with_known_shifts_and_scales():
    from factembed.planted import plant_batches
    rng = np.random.default_rng(0)
    clean = (rng.normal(size=(4000, 6)) * np.array([1, 2, 3, 4, 5, 6])).astype(np.float32)
    groups = np.arange(4000) % 4
    P = plant_batches(clean, 3, seed=1)
    np.testing.assert_allclose(P.X, clean * P.scale[P.batch] + P.shift[P.batch], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(P.as_batch(clean, 2)[P.batch == 2], P.X[P.batch == 2], rtol=1e-6, atol=1e-6)
    assert P.shift.shape == P.scale.shape == (3, 6) and (P.scale > 0).all()
    assert abs(np.bincount(P.batch, minlength=3) / 4000 - 1 / 3).max() < 0.03          # balanced
    # confounded: a group's home batch (g % 2) holds c + (1 - c) / 2 of it
    C = plant_batches(clean, 2, groups=groups, confounding=0.6, seed=1)
    home = np.mean(C.batch == groups % 2)
    assert abs(home - 0.8) < 0.03, home
    # relative shifts follow each gene's sd
    R = plant_batches(clean, 2, shift_sd=1.0, scale_sd=0.0, relative=True, seed=2)
    ratio = np.abs(R.shift).mean(0) / clean.std(0)
    assert ratio.max() / ratio.min() < 4 and (R.scale == 1).all()
    assert np.array_equal(plant_batches(clean, 2, seed=5).X, plant_batches(clean, 2, seed=5).X)
    with pytest.raises(ValueError, match="groups"):
        plant_batches(clean, 2, confounding=0.5)
