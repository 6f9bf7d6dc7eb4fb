"""Missing values: inference from observed values only (transform(missing="ignore")),
imputation with the decoder (fe.impute, workflow.impute, `factembed impute`,
`transform --fill-missing`), and the checks that let NaN through only when asked.

References independent of the code under test: autograd on the masked loss (kernel),
brute-force numpy distances (start point), Levenberg-Marquardt on each sample's
observed genes (factembed.estimator._inference_optimum; the optimum the inference should reach), and
plain numpy for the values that must come back unchanged."""
import copy
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from _plain_mlp import make
from factembed import FactorizedEmbeddings
from factembed.errors import FEInputError
from factembed.engine.kernel import FusedProfileLoss


def spread(fe):
    E = fe.embedding_
    return float(np.median(np.linalg.norm(E - np.median(E, 0), axis=1)))


def hide(X, frac, seed):
    """A copy of X with ``frac`` of each row's entries set to NaN, and the mask."""
    rng = np.random.default_rng(seed)
    M = np.zeros(X.shape, dtype=bool)
    k = int(round(frac * X.shape[1]))
    for i in range(X.shape[0]):
        M[i, rng.permutation(X.shape[1])[:k]] = True
    Xn = X.copy()
    Xn[M] = np.nan
    return Xn, M


@pytest.fixture(scope="module")
def new_samples(fitted_small):
    fe, X, _ = fitted_small
    rng = np.random.default_rng(3)
    return X[:30] + 0.05 * rng.normal(size=X[:30].shape).astype(np.float32)


# -- the kernel and the inference ----------------------------------------------------------

@pytest.mark.parametrize("chunk", [7, 64, 301])
def test_kernel_nan_targets_are_left_out_of_loss_and_gradients(chunk):
    """nan_targets=True: the loss and the sample gradient are those of the squared error
    over the observed entries only (autograd on the plain decode, float64)."""
    net = make(torch.float64)
    idx = torch.tensor([0, 1, 2, 3])
    X = torch.randn(4, net.n_genes, dtype=torch.float64)
    obs = torch.rand(X.shape, generator=torch.Generator().manual_seed(1)) > 0.4
    obs[3] = False
    obs[3, :5] = True                                     # a row with 5 observed entries
    Xn = torch.where(obs, X, torch.tensor(float("nan"), dtype=torch.float64))
    n_obs = obs.sum(1).double()
    w = net.n_genes / n_obs                               # each row's mean over its observed entries
    z = net.sample_embedding[idx].detach().clone().requires_grad_(True)
    sq = torch.where(obs, (net.decode(z) - X) ** 2, torch.zeros((), dtype=torch.float64))
    ref = (sq.sum(1) / n_obs).sum()
    (gz_ref,) = torch.autograd.grad(ref, z)
    z2 = z.detach().clone().requires_grad_(True)
    fused = FusedProfileLoss(gene_chunk=chunk, compute_dtype=torch.float64, nan_targets=True)
    layers = [(a.detach(), b.detach()) for a, b in net.decoder_weights()]
    with torch.no_grad():
        G = net.gene_term()
    loss = fused(z2 @ net.first_sample.weight.detach().T, G, Xn, layers, weight_grads=False, row_weights=w)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(z2.grad, gz_ref, rtol=1e-10, atol=1e-14)
    # without the flag a NaN target still poisons the loss, as it always did
    plain = FusedProfileLoss(gene_chunk=chunk, compute_dtype=torch.float64)
    assert torch.isnan(plain(z2.detach() @ net.first_sample.weight.detach().T, G, Xn, layers,
                             weight_grads=False, row_weights=w))


def test_start_point_is_nearest_over_observed_genes(fitted_small, new_samples):
    fe, _, _ = fitted_small
    Xn, M = hide(new_samples, 0.6, seed=2)
    est = copy.deepcopy(fe).set_params(infer_steps=0)
    Z0 = est.transform(Xn, missing="ignore")
    R = fe.inverse_transform(fe.embedding_)
    d = np.nansum((Xn[:, None, :] - R[None, :, :]) ** 2, axis=-1)      # NaN terms left out
    np.testing.assert_array_equal(Z0, fe.embedding_[d.argmin(1)])


def test_start_point_of_a_sample_observed_outside_the_search_genes(fitted_small, new_samples):
    """A sample with no observed value among the init_genes search genes is searched
    again over the genes it observed."""
    import factembed.estimator.inference as infer
    fe, _, _ = fitted_small
    m = fe.n_features_in_
    J = torch.randperm(m, generator=torch.Generator().manual_seed(11))[:20].sort().values.numpy()
    outside = np.setdiff1d(np.arange(m), J)[[3, 50, 120, 200, 260]]
    X = new_samples[:4].copy()
    keep = np.zeros(m, dtype=bool)
    keep[outside] = True
    X[0, ~keep] = np.nan                                   # row 0: 5 observed genes, none in J
    X[1, ::3] = np.nan
    Z0 = infer.nearest_reconstruction_init(fe.net_, torch.from_numpy(X), init_genes=20,
                                           generator=torch.Generator().manual_seed(11), missing=True)
    R = fe.inverse_transform(fe.embedding_)
    d0 = ((X[0, outside][None, :] - R[:, outside]) ** 2).sum(1)
    np.testing.assert_array_equal(Z0[0].numpy(), fe.embedding_[d0.argmin()])
    d1 = np.nansum((X[1, J][None, :] - R[:, J]) ** 2, axis=1)   # the others: over J as usual
    np.testing.assert_array_equal(Z0[1].numpy(), fe.embedding_[d1.argmin()])


def _observed_optimum(net, Z0, X, M):
    """Levenberg-Marquardt on each sample's observed genes (factembed.estimator._inference_optimum)."""
    from factembed.estimator import _inference_optimum as ref
    out = []
    for i in range(len(X)):
        obs = np.flatnonzero(~M[i])
        sub = types.SimpleNamespace(first_gene=net.first_gene, gene_embedding=net.gene_embedding[torch.from_numpy(obs)],
                                    first_sample=net.first_sample, layers=net.layers)
        z, _ = ref.full_gene_optimum(sub, torch.from_numpy(Z0[i:i + 1]), torch.from_numpy(X[i:i + 1, obs]))
        out.append(z.numpy())
    return np.concatenate(out)


def test_inference_reaches_the_optimum_of_the_observed_genes(fitted_small, new_samples):
    """Against an independent solver on each sample's observed genes only: the
    observed-only inference lands on that optimum (< 1% of the embedding's spread;
    measured 0.015%), not on the full-gene one."""
    fe, _, _ = fitted_small
    Xn, M = hide(new_samples, 0.5, seed=5)
    Z = fe.transform(Xn, missing="ignore")
    Z_ref = _observed_optimum(fe.net_, Z, new_samples, M)
    assert np.median(np.linalg.norm(Z - Z_ref, axis=1)) < 0.01 * spread(fe)


@pytest.mark.parametrize("settings", [{}, {"infer_genes": 64, "init_genes": 128}])
def test_embedding_from_half_the_genes_stays_close(fitted_small, new_samples, settings):
    """A sample's embedding from all its genes vs from a random 50% of them: median
    distance below 5% of the embedding's spread (median distance of the training
    embeddings to their median; measured 1.6-2.1% on these data), with all genes per step
    and with 64 genes per step (where a step may hold no observed gene of a sample)."""
    fe, _, _ = fitted_small
    est = copy.deepcopy(fe).set_params(**settings)
    Xn, _ = hide(new_samples, 0.5, seed=6)
    Z_all = est.transform(new_samples)
    Z_half = est.transform(Xn, missing="ignore")
    d = np.linalg.norm(Z_all - Z_half, axis=1)
    assert np.median(d) < 0.05 * spread(fe), np.median(d) / spread(fe)


def test_missing_path_on_complete_data_matches_the_plain_path(fitted_small, new_samples):
    from factembed.estimator.inference import embed_new_samples
    fe, _, _ = fitted_small
    kw = dict(steps=30, lr=1e-2, infer_genes=100, init_genes=10**6)
    a = embed_new_samples(fe.net_, torch.from_numpy(new_samples), generator=torch.Generator().manual_seed(0), **kw)
    b = embed_new_samples(fe.net_, torch.from_numpy(new_samples), generator=torch.Generator().manual_seed(0),
                          missing=True, **kw)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_transform_ignore_without_nan_is_the_default(fitted_small, new_samples):
    fe, _, _ = fitted_small
    np.testing.assert_array_equal(fe.transform(new_samples[:10], missing="ignore"), fe.transform(new_samples[:10]))


def test_transform_missing_argument(fitted_small, new_samples):
    fe, _, _ = fitted_small
    Xn = new_samples[:5].copy()
    Xn[2, 7] = np.nan
    with pytest.raises(FEInputError, match=r"row 2, column 7"):      # the default stays an error
        fe.transform(Xn)
    Xi = Xn.copy()
    Xi[1, 3] = np.inf
    with pytest.raises(FEInputError, match=r"inf.*row 1, column 3"):   # inf is never a missing value
        fe.transform(Xi, missing="ignore")
    with pytest.raises(ValueError, match="missing must be"):
        fe.transform(Xn, missing="drop")
    assert fe.transform(Xn, missing="ignore").shape == (5, 2)


# -- impute --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_impute_never_changes_observed_values(fitted_small, new_samples, dtype):
    fe, _, _ = fitted_small
    Xn, M = hide(new_samples.astype(dtype), 0.3, seed=7)
    before = Xn.copy()
    F = fe.impute(Xn)
    assert F.dtype == dtype and F.shape == Xn.shape
    assert np.array_equal(F[~M], before[~M])                 # bit for bit
    assert not np.isnan(F).any()
    assert np.array_equal(Xn, before, equal_nan=True)        # the input is not modified (copy=True)
    G = fe.impute(Xn, copy=False)                            # in place
    assert G is Xn and np.array_equal(G[~M], before[~M]) and not np.isnan(G).any()


def test_impute_with_nothing_missing_is_the_input_and_embeds_nothing(fitted_small, new_samples, monkeypatch):
    import factembed.estimator.factorized_embeddings as est_mod
    fe, _, _ = fitted_small
    calls = []
    real = est_mod.embed_new_samples
    monkeypatch.setattr(est_mod, "embed_new_samples", lambda net, X, **kw: calls.append(len(X)) or real(net, X, **kw))
    F = fe.impute(new_samples)
    assert np.array_equal(F, new_samples) and F is not new_samples and calls == []
    X = new_samples[:6].copy()
    X[4, 10] = np.nan
    F = fe.impute(X)
    assert calls == [1]                                       # only the sample with a NaN is embedded
    assert np.array_equal(np.delete(F, 4, 0), np.delete(X, 4, 0))
    ints = np.arange(12 * fe.n_features_in_).reshape(12, -1)
    Fi = fe.impute(ints)
    assert Fi.dtype == np.float64 and np.array_equal(Fi, ints)


def test_imputed_values_are_the_decoder_at_the_observed_only_embedding(fitted_small, new_samples):
    fe, _, _ = fitted_small
    Xn, M = hide(new_samples, 0.4, seed=8)
    F = fe.impute(Xn)
    R = fe.inverse_transform(fe.transform(Xn, missing="ignore"))
    np.testing.assert_allclose(F[M], R[M], rtol=1e-5, atol=1e-6)


def test_impute_beats_gene_means(fitted_small):
    """On the planted data (rank 3, clusters) the decoder recovers hidden entries far
    better than the training means of the genes (measured RMSE 0.20 vs 1.22)."""
    fe, X, _ = fitted_small
    rng = np.random.default_rng(4)
    X_new = X[:60] + 0.05 * rng.normal(size=X[:60].shape).astype(np.float32)
    Xn, M = hide(X_new, 0.2, seed=9)
    F = fe.impute(Xn)
    rmse = np.sqrt(((F[M] - X_new[M]) ** 2).mean())
    means = np.broadcast_to(X.mean(0), X_new.shape)
    rmse_means = np.sqrt(((means[M] - X_new[M]) ** 2).mean())
    assert rmse < 0.3 * rmse_means, (rmse, rmse_means)


def test_dataframe_absent_genes_are_imputed_by_name(fitted_small, new_samples):
    fe, _, _ = fitted_small
    genes = [f"g{j}" for j in range(fe.n_features_in_)]
    named = copy.deepcopy(fe)
    named.feature_names_in_ = np.array(genes, dtype=object)
    Xn, M = hide(new_samples[:8], 0.2, seed=10)
    absent = [3, 40, 41]
    Xn_abs = Xn.copy()
    Xn_abs[:, absent] = np.nan
    order = np.random.default_rng(0).permutation(fe.n_features_in_)
    order = order[~np.isin(order, absent)]
    df = pd.DataFrame(Xn.astype(np.float64)[:, order], index=[f"s{i}" for i in range(8)],
                      columns=[genes[j] for j in order])
    df["not_a_model_gene"] = 1.0
    with pytest.warns(UserWarning, match="1 gene.*not_a_model_gene"):
        out = named.impute(df)
    assert list(out.columns) == genes and list(out.index) == list(df.index)
    assert out.dtypes.unique().tolist() == [np.dtype(np.float64)]
    observed = ~np.isnan(Xn_abs)
    assert np.array_equal(out.to_numpy()[observed], Xn_abs.astype(np.float64)[observed])
    # the same as imputing an array whose absent genes are NaN columns
    ref = fe.impute(Xn_abs, empty_genes=absent)
    np.testing.assert_allclose(out.to_numpy(), ref, rtol=1e-6, atol=1e-6)
    # and the DataFrame's absent genes never trip the empty-gene check
    assert not np.isnan(out.to_numpy()).any()


def test_bad_input_names_the_sample_or_gene(fitted_small, new_samples):
    fe, _, _ = fitted_small
    genes = [f"g{j}" for j in range(fe.n_features_in_)]
    named = copy.deepcopy(fe)
    named.feature_names_in_ = np.array(genes, dtype=object)
    df = pd.DataFrame(new_samples[:5].copy(), index=[f"cell{i}" for i in range(5)], columns=genes)
    df.iloc[3, :] = np.nan
    for call in (lambda: named.impute(df), lambda: named.transform(df, missing="ignore")):
        with pytest.raises(FEInputError, match="sample 'cell3' has no observed value"):
            call()
    df = pd.DataFrame(new_samples[:5].copy(), index=[f"cell{i}" for i in range(5)], columns=genes)
    df["g17"] = np.nan
    df["g30"] = np.nan
    with pytest.raises(FEInputError, match=r"gene 'g17' has no observed value in any of the 5 samples \(2 such"):
        named.impute(df)
    with pytest.raises(FEInputError, match="gene 'g30'"):
        named.impute(df, empty_genes=["g17"])
    out = named.impute(df, empty_genes=["g17", "g30"])
    assert not out.isna().any().any()
    assert np.array_equal(named.impute(df, empty_genes="impute").to_numpy(), out.to_numpy())
    X = new_samples[:4].copy()
    X[:, 9] = np.nan
    with pytest.raises(FEInputError, match="column 9 has no observed value"):
        fe.impute(X)
    X[2] = np.nan
    with pytest.raises(FEInputError, match="row 2 has no observed value"):
        fe.impute(X, empty_genes="impute")
    with pytest.raises(ValueError, match="empty_genes must be"):
        fe.impute(new_samples[:2], empty_genes="skip")


# -- validation and preprocessing ----------------------------------------------------------

@pytest.mark.parametrize("block", [1, 7, 10**6])
def test_nan_scans_agree_with_a_full_mask(block):
    from factembed._utils.validation import first_bad_value, observed_counts
    rng = np.random.default_rng(block)
    X = rng.normal(size=(23, 11)).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = np.nan
    rows, cols = observed_counts(X, block_elements=block)
    assert np.array_equal(rows, (~np.isnan(X)).sum(1)) and np.array_equal(cols, (~np.isnan(X)).sum(0))
    assert first_bad_value(X, allow_nan=True, block_elements=block) is None
    Y = np.abs(X)
    Y[13, 4], Y[17, 2] = np.inf, -1.0
    assert first_bad_value(Y, allow_nan=True, block_elements=block)[:2] == (13, 4)
    Y[13, 4] = 5.0
    assert first_bad_value(Y, allow_nan=True, nonneg=True, block_elements=block)[:2] == (17, 2)
    assert first_bad_value(Y, allow_nan=True, block_elements=block) is None
    first_nan = np.argwhere(np.isnan(Y))[0]
    assert first_bad_value(Y, block_elements=block)[:2] == tuple(first_nan)   # default: NaN is bad


def test_preprocessing_lets_nan_through_only_when_asked():
    from factembed.io import ExpressionData
    from factembed.preprocessing import Preprocessing
    rng = np.random.default_rng(0)
    X = rng.random((6, 5)).astype(np.float32) * 10
    genes = np.array(["a", "b", "c", "d", "e"])
    fitted = Preprocessing(protein_coding_only=False).fit(ExpressionData(X, [f"s{i}" for i in range(6)], genes))
    Xn = X[:, 1:].copy()
    Xn[2, 1] = np.nan                                               # sample s2, gene c
    new = ExpressionData(Xn, [f"s{i}" for i in range(6)], genes[1:])
    with pytest.raises(FEInputError, match="'s2', gene 'c': value is NaN"), pytest.warns(UserWarning):
        fitted.apply(new, fill_missing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # "nan" does not warn
        out = fitted.apply(new, fill_missing="nan", allow_nan=True)
    assert np.isnan(out.X[:, 0]).all() and np.isnan(out.X[2, 2])
    assert np.array_equal(np.isnan(out.X[:, 1:]), np.isnan(Xn))
    np.testing.assert_allclose(out.X[:, 1:][~np.isnan(Xn)], np.log10(Xn[~np.isnan(Xn)] + 1), rtol=1e-6)
    assert list(fitted.absent_genes(new)) == ["a"]
    bad = Xn.copy()
    bad[4, 3] = -2.0
    with pytest.raises(FEInputError, match="'s4', gene 'e': negative"):
        fitted.apply(ExpressionData(bad, new.samples, new.genes), fill_missing="nan", allow_nan=True)
    bad[4, 3] = np.inf
    with pytest.raises(FEInputError, match="'s4', gene 'e': value is inf"):
        fitted.apply(ExpressionData(bad, new.samples, new.genes), fill_missing="nan", allow_nan=True)
    with pytest.raises(FEInputError, match="missing from the data"):
        fitted.apply(new, allow_nan=True)                           # absent genes still need asking


# -- command line and workflow ---------------------------------------------------------------

FAST = ["--steps", "150", "--gene-dim", "8", "--hidden", "16,8", "--infer-steps", "20", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, planted_data):
    from factembed.cli import main
    from factembed.io import ExpressionData, write_expression
    d = tmp_path_factory.mktemp("impute_cli")
    X, _ = planted_data
    X = np.expm1(np.abs(X[:80, :60]) * 2.3).astype(np.float32)       # raw-scale values
    samples = np.array([f"s{i}" for i in range(80)])
    genes = np.array([f"g{j}" for j in range(60)])
    write_expression(d / "train.h5", ExpressionData(X=X, samples=samples, genes=genes))
    assert main(["fit", str(d / "train.h5"), "-o", str(d / "model"), "--checkpoint-every", "0", *FAST]) == 0
    new = X[:10].copy()
    rng = np.random.default_rng(1)
    new[rng.random(new.shape) < 0.2] = np.nan
    order = rng.permutation(np.arange(3, 60))                        # g0-g2 absent, others reordered
    data = ExpressionData(X=new[:, order], samples=samples[:10], genes=genes[order],
                          labels=np.array([f"c{i % 2}" for i in range(10)]))
    return d, data, genes


@pytest.mark.parametrize("ext", [".csv", ".tsv.gz", ".h5", ".h5ad", ".npz"])
def test_cli_impute_same_format_out(cli_model, ext, capsys):
    """Every format with a writer: observed values come back as read, absent genes and NA
    values are filled (on the input's scale, 10^y - 1 of the model-scale values)."""
    from factembed.cli import main
    from factembed.io import read_expression, write_expression
    d, data, genes = cli_model
    src, out, out_log = d / f"new{ext}", d / f"filled{ext}", d / f"filled_log{ext}"
    write_expression(src, data)
    capsys.readouterr()
    assert main(["impute", str(d / "model"), str(src), "-o", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    n_nan = int(np.isnan(data.X).sum()) + 3 * 10
    assert f"imputed {n_nan:,} missing values in 10 of 10 samples" in line
    assert "3 of them genes absent" in line and "input's scale" in line and str(out) in line
    assert main(["impute", str(d / "model"), str(src), "-o", str(out_log), "--model-scale", "--quiet"]) == 0
    assert "model's scale, log10(x+1)" in capsys.readouterr().out
    got, log = read_expression(out), read_expression(out_log)
    assert list(got.genes) == list(genes) and list(got.samples) == list(data.samples)
    if ext != ".npz":
        assert list(got.labels) == list(data.labels)
    assert not np.isnan(got.X).any() and not np.isnan(log.X).any()
    pos = {g: j for j, g in enumerate(data.genes)}
    raw = np.full(got.X.shape, np.nan, dtype=np.float32)
    for j, g in enumerate(genes):
        if g in pos:
            raw[:, j] = data.X[:, pos[g]]
    obs = ~np.isnan(raw)
    assert np.array_equal(got.X[obs], raw[obs])                        # as read, bit for bit
    np.testing.assert_allclose(log.X[obs], np.log10(raw[obs] + 1), rtol=1e-6, atol=1e-7)
    expect = np.maximum(np.expm1(log.X[~obs].astype(np.float64) * np.log(10)), 0)
    np.testing.assert_allclose(got.X[~obs], expect, rtol=1e-5, atol=1e-6)
    # the model-scale values are the decoder at the observed-only embedding
    from factembed import FactorizedEmbeddings
    fe = FactorizedEmbeddings.load(d / "model")
    Xlog = np.log10(raw + 1)
    R = fe.inverse_transform(fe.transform(Xlog, missing="ignore"))
    np.testing.assert_allclose(log.X[~obs], R[~obs], rtol=1e-5, atol=1e-6)


def test_cli_impute_errors(cli_model, capsys):
    from factembed.cli import main
    from factembed.io import ExpressionData, write_expression
    d, data, genes = cli_model
    src = d / "new_err.csv"
    write_expression(src, data)
    for out in ("o.npy", "o.parquet"):           # no writer: fails before any work, nothing written
        assert main(["impute", str(d / "model"), str(src), "-o", str(d / out), "--quiet"]) == 1
        assert "cannot write extension" in capsys.readouterr().err and not (d / out).exists()
    X = data.X.copy()
    X[:, list(data.genes).index("g7")] = np.nan
    write_expression(d / "empty_gene.csv", ExpressionData(X, data.samples, data.genes))
    assert main(["impute", str(d / "model"), str(d / "empty_gene.csv"), "-o", str(d / "o.csv"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "gene 'g7' has no observed value in any of the 10 samples" in err and "--impute-empty-genes" in err
    assert not (d / "o.csv").exists()
    assert main(["impute", str(d / "model"), str(d / "empty_gene.csv"), "-o", str(d / "o.csv"),
                 "--impute-empty-genes", "--quiet"]) == 0
    X = data.X.copy()
    X[6] = np.nan
    write_expression(d / "empty_sample.csv", ExpressionData(X, data.samples, data.genes))
    assert main(["impute", str(d / "model"), str(d / "empty_sample.csv"), "-o", str(d / "o2.csv"), "--quiet"]) == 1
    assert "sample 's6' has no observed value" in capsys.readouterr().err
    np.save(d / "no_names.npy", data.X)              # generated names: none is a model gene
    for cmd in (["impute", str(d / "model"), str(d / "no_names.npy"), "-o", str(d / "o4.csv")],
                ["transform", str(d / "model"), str(d / "no_names.npy"), "-o", str(d / "o4.csv"), "--fill-missing"]):
        assert main(cmd + ["--quiet"]) == 1
        assert "none of the model's 60 genes is in the data" in capsys.readouterr().err
    X = data.X.copy()
    X[2, 5] = -3.0
    write_expression(d / "negative.csv", ExpressionData(X, data.samples, data.genes))
    assert main(["impute", str(d / "model"), str(d / "negative.csv"), "-o", str(d / "o3.csv"), "--quiet"]) == 1
    assert "negative value" in capsys.readouterr().err


def test_cli_transform_fill_missing_says_which(cli_model, capsys):
    from factembed import FactorizedEmbeddings
    from factembed.cli import main
    from factembed.io import ExpressionData, write_expression
    d, data, genes = cli_model
    src = d / "new_fill.csv"
    write_expression(src, data)
    capsys.readouterr()
    assert main(["transform", str(d / "model"), str(src), "-o", str(d / "e.csv"), "--quiet"]) == 1
    assert "missing from the data" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="3 of 60 genes are missing; each sample is embedded from its observed"):
        assert main(["transform", str(d / "model"), str(src), "-o", str(d / "e.csv"), "--fill-missing",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 genes absent from the file" in out and "decoder fill" in out
    fe = FactorizedEmbeddings.load(d / "model")
    pos = {g: j for j, g in enumerate(data.genes)}
    Xlog = np.full((10, 60), np.nan, dtype=np.float32)
    for j, g in enumerate(genes):
        if g in pos:
            Xlog[:, j] = np.log10(data.X[:, pos[g]] + 1)
    got = pd.read_csv(d / "e.csv")[["FE1", "FE2"]].to_numpy()
    np.testing.assert_allclose(got, fe.transform(Xlog, missing="ignore"), rtol=1e-5, atol=1e-6)
    # the training means: absent genes only, NA values stay an error naming sample and gene
    complete = ExpressionData(np.nan_to_num(data.X, nan=1.0), data.samples, data.genes)
    write_expression(d / "complete.csv", complete)
    with pytest.warns(UserWarning, match="training means"):
        assert main(["transform", str(d / "model"), str(d / "complete.csv"), "-o", str(d / "e2.csv"),
                     "--fill-missing", "means", "--quiet"]) == 0
    assert "3 genes absent from the file filled with their training means" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        assert main(["transform", str(d / "model"), str(src), "-o", str(d / "e3.csv"), "--fill-missing", "means",
                     "--quiet"]) == 1
    assert "value is NaN" in capsys.readouterr().err


def test_workflow_impute_result(cli_model):
    from factembed.io import write_expression
    from factembed.workflow import impute
    d, data, genes = cli_model
    write_expression(d / "wf.csv", data)
    res = impute(str(d / "model"), str(d / "wf.csv"), str(d / "wf_out.csv"), verbose=False)
    assert res.absent_genes == ["g0", "g1", "g2"] and res.dropped_genes == 0
    assert res.imputed_values == int(np.isnan(data.X).sum()) + 30 and res.imputed_samples == 10
    assert res.written == [d / "wf_out.csv"] and res.data.shape == (10, 60)


def test_workflow_impute_model_scale_with_extra_genes_in_order(cli_model):
    """Genes the model does not know are left out and counted; with --model-scale the
    file's buffer may be reused in place (no second copy) and the counts stay right."""
    from factembed.io import ExpressionData, write_expression
    from factembed.workflow import impute
    d, data, genes = cli_model
    pos = {g: j for j, g in enumerate(data.genes)}
    X = np.full((10, 61), 1.0, dtype=np.float32)
    names = list(genes) + ["extra"]
    for j, g in enumerate(genes):
        X[:, j] = data.X[:, pos[g]] if g in pos else 2.0
    X[3, 5] = np.nan
    write_expression(d / "extra.csv", ExpressionData(X, data.samples, names))
    res = impute(str(d / "model"), str(d / "extra.csv"), str(d / "extra_out.csv"), model_scale=True, verbose=False)
    assert res.dropped_genes == 1 and res.absent_genes == [] and res.data.shape == (10, 60)
    assert res.imputed_values == int(np.isnan(X).sum()) and "model's scale" in res.scale
    obs = ~np.isnan(X[:, :60])
    np.testing.assert_allclose(res.data.X[obs], np.log10(X[:, :60][obs] + 1), rtol=1e-6, atol=1e-7)
