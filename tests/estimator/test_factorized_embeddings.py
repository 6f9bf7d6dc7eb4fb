"""The public estimator: scikit-learn contract, persistence, input errors."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from factembed import FactorizedEmbeddings, FEConfig, FEInputError


def test_get_set_params_and_clone():
    fe = FactorizedEmbeddings(gene_dim=7, l2=0.0, random_state=1)
    params = fe.get_params()
    assert params["gene_dim"] == 7 and params["l2"] == 0.0 and params["hidden"] == (100, 50, 50)
    assert set(params) == set(FEConfig.field_names())
    c = clone(fe)
    assert c.get_params() == params and c is not fe
    fe.set_params(sample_dim=3)
    assert fe.sample_dim == 3 and fe.config.sample_dim == 3
    assert not hasattr(FactorizedEmbeddings(), "embedding_")


def test_invalid_hyper_parameters_are_named():
    with pytest.raises(ValueError, match="gene_dim"):
        FactorizedEmbeddings(gene_dim=0).fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="precision"):
        FactorizedEmbeddings(precision="fp8").config


def test_not_fitted():
    with pytest.raises(NotFittedError):
        FactorizedEmbeddings().transform(np.ones((2, 3)))


def test_save_load_round_trip(fitted_small, tmp_path):
    fe, X, _ = fitted_small
    fe.save(tmp_path / "m")
    fe2 = FactorizedEmbeddings.load(tmp_path / "m")
    assert fe2.get_params() == fe.get_params()
    np.testing.assert_array_equal(fe2.embedding_, fe.embedding_)
    np.testing.assert_array_equal(fe2.gene_embedding_, fe.gene_embedding_)
    np.testing.assert_array_equal(fe2.transform(X[:10]), fe.transform(X[:10]))
    np.testing.assert_array_equal(fe2.inverse_transform(fe.embedding_[:3]),
                                  fe.inverse_transform(fe.embedding_[:3]))
    assert fe2.history_["loss"] == fe.history_["loss"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]


def test_tampered_or_truncated_model_fails_clearly(fitted_small, tmp_path):
    fe, _, _ = fitted_small
    d = fe.save(tmp_path / "m")
    w = d / "weights.safetensors"
    blob = w.read_bytes()
    w.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FEInputError, match="checksum"):
        FactorizedEmbeddings.load(d)
    w.write_bytes(blob)
    meta = json.loads((d / "model.json").read_text())
    meta["config"]["gene_dim"] = 99
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(FEInputError, match="disagree"):
        FactorizedEmbeddings.load(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(FEInputError, match="JSON"):
        FactorizedEmbeddings.load(d)
    with pytest.raises(FEInputError, match="missing"):
        FactorizedEmbeddings.load(tmp_path / "nowhere")


def test_dataframe_genes_are_aligned_by_name(fitted_small):
    fe, X, _ = fitted_small
    genes = [f"g{j}" for j in range(X.shape[1])]
    df = pd.DataFrame(X[:60], columns=genes)
    est = FactorizedEmbeddings(**{**fe.get_params(), "n_steps": 30})
    est.fit(df)
    assert list(est.feature_names_in_) == genes
    shuffled = df[genes[::-1]]
    np.testing.assert_allclose(est.transform(shuffled), est.transform(df), rtol=1e-6, atol=1e-7)
    with pytest.raises(FEInputError, match="lacks 2 of the model's"):
        est.transform(df.drop(columns=["g0", "g5"]))


BAD_INPUTS = [
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "NaN/inf"),
    (np.array([[1.0, 2.0], [np.inf, 3.0]]), "NaN/inf"),
    (np.zeros((0, 5)), "empty"),
    (np.zeros((3, 0)), "empty"),
    (np.ones((1, 5)), "at least 2"),
    (np.ones(5), "2-D"),
    (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    (pd.DataFrame({"g1": [1.0, 2.0], "g2": ["x", "y"]}), "not numeric"),
    (np.array([[1e300, 1.0], [1.0, 1.0]]), "overflows float32"),
]


@pytest.mark.parametrize("X,msg", BAD_INPUTS)
def test_bad_input_raises_before_training(X, msg):
    fe = FactorizedEmbeddings(n_steps=10, verbose=False)
    with pytest.raises(FEInputError, match=msg):
        fe.fit(X)
    assert not hasattr(fe, "net_")


def test_nan_message_names_row_and_column():
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2, column 1"):
        FactorizedEmbeddings(n_steps=10).fit(X)


def test_transform_with_wrong_number_of_genes(fitted_small):
    fe, X, _ = fitted_small
    with pytest.raises(FEInputError, match="genes but the model was fitted on"):
        fe.transform(X[:, :-1])
    with pytest.raises(FEInputError, match="sample_dim"):
        fe.inverse_transform(np.zeros((2, 5)))


def test_score_is_reconstruction_correlation(fitted_small):
    fe, X, _ = fitted_small
    s = fe.score(X[:50])
    assert 0.9 < s <= 1.0


def test_estimator_defaults_are_the_config_defaults():
    """One set of defaults: the estimator's signature may not drift from FEConfig."""
    from dataclasses import fields

    from factembed import FactorizedEmbeddings
    from factembed.config import FEConfig
    assert FactorizedEmbeddings().get_params() == {f.name: f.default for f in fields(FEConfig)}


def test_estimator_fit_uses_the_kernel_and_workers_it_is_given():
    """bench_quality compares kernels and worker counts through FactorizedEmbeddings.fit:
    the kernel it passes must be the one that runs, with the worker count it passes."""
    import numpy as np

    from factembed import FactorizedEmbeddings
    from factembed.engine.kernel import FusedProfileLoss
    made = []

    def kernel(**kw):
        made.append(kw)
        return FusedProfileLoss(**kw)

    X = np.random.default_rng(0).random((30, 50), dtype=np.float32)
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=20, random_state=5, verbose=False, device="cpu")
    fe = FactorizedEmbeddings(**kw).fit(X, kernel=kernel, workers=1)
    assert len(made) == 1 and made[0]["workers"] == 1
    ref = FactorizedEmbeddings(**kw).fit(X, workers=1)
    for (name, p), q in zip(fe.net_.state_dict().items(), ref.net_.state_dict().values()):
        assert (p == q).all(), name          # the same kernel class by default: the same model
