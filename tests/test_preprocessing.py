"""Tests of factembed.preprocessing: gene selection (in memory and from block
statistics), alignment by name, the log10(x + 1) transform."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from factembed.errors import FEInputError
from factembed.io import ExpressionData
from factembed.preprocessing import FittedPreprocessing, Preprocessing, align_genes
from factembed.io._data import _compact_columns_inplace
from factembed.preprocessing import GeneStats, select_genes
from factembed._utils.validation import _log10p1_inplace
from test_io import make_data


# --------------------------------------------------------------------------
# Preprocessing.fit / FittedPreprocessing.apply
# --------------------------------------------------------------------------


def test_preprocessing_selects_genes():
    d = make_data(n=8, m=9)
    d.X[:, 2] = 5.0  # constant
    fitted = Preprocessing().fit(d)
    pc = [g for g, b in zip(d.genes, d.biotypes) if b == "protein_coding" and g != "g2"]
    assert fitted.genes.tolist() == pc
    all_genes = Preprocessing(protein_coding_only=False, drop_constant=False).fit(d)
    assert all_genes.genes.tolist() == d.genes.tolist()
    top = Preprocessing(protein_coding_only=False, top_variable=3).fit(d)
    logs = np.log10(d.X.astype(np.float64) + 1)
    want = np.sort(np.argsort(-logs.var(axis=0), kind="stable")[:3])
    assert top.genes.tolist() == d.genes[want].tolist()
    np.testing.assert_allclose(top.means, logs[:, want].mean(axis=0), rtol=1e-5)
    with pytest.raises(ValueError):
        Preprocessing(top_variable=0)


def test_apply_transforms_and_reorders_by_name():
    d = make_data(n=7, m=6, biotypes=False)
    fitted = Preprocessing().fit(d)
    out = fitted.apply(d)
    assert out.X.dtype == np.float32 and out.transform == "log10p1"
    np.testing.assert_allclose(out.X, np.log10(d.X[:, [list(d.genes).index(g) for g in fitted.genes]] + 1.0),
                               rtol=1e-6, atol=1e-7)
    perm = np.random.default_rng(1).permutation(d.n_genes)
    shuffled = ExpressionData(d.X[:, perm], d.samples, d.genes[perm], labels=d.labels)
    np.testing.assert_array_equal(fitted.apply(shuffled).X, out.X)
    assert fitted.apply(shuffled).genes.tolist() == fitted.genes.tolist()


def test_apply_missing_genes_error_and_fill():
    d = make_data(n=5, m=8, biotypes=False)
    fitted = Preprocessing(drop_constant=False).fit(d)
    keep = [0, 1, 2, 3, 4]
    part = ExpressionData(d.X[:, keep], d.samples, d.genes[keep])
    with pytest.raises(FEInputError, match=r"3 of 8 required genes are missing from the data: 'g5', 'g6', 'g7'"):
        fitted.apply(part)
    with pytest.warns(UserWarning, match="3 of 8 genes are missing"):
        filled = fitted.apply(part, fill_missing=True)
    np.testing.assert_allclose(filled.X[:, 5:], np.broadcast_to(fitted.means[5:], (5, 3)).astype(np.float32))
    np.testing.assert_allclose(filled.X[:, :5], np.log10(d.X[:, :5] + 1.0), rtol=1e-6, atol=1e-7)


def test_apply_rejects_negative_and_nonfinite():
    d = make_data(n=4, m=3, biotypes=False)
    fitted = Preprocessing(drop_constant=False).fit(d)
    bad = ExpressionData(d.X.copy(), d.samples, d.genes, source="new.csv")
    bad.X[2, 1] = -1.0
    with pytest.raises(FEInputError, match=r"new\.csv: sample 's2', gene 'g1': negative value -1"):
        fitted.apply(bad)
    bad.X[2, 1] = np.nan
    with pytest.raises(FEInputError, match=r"sample 's2', gene 'g1': value is NaN"):
        fitted.apply(bad)
    bad.X[2, 1] = np.inf
    with pytest.raises(FEInputError, match=r"value is inf"):
        Preprocessing().fit(bad)
    bad.X[2, 1] = -3.0  # allowed without the log
    assert np.isfinite(Preprocessing(log10p1=False, drop_constant=False).fit(bad).apply(bad).X).all()


def test_apply_in_place_and_double_log_warning():
    d = make_data(n=4, m=4, biotypes=False)
    fitted = Preprocessing(drop_constant=False).fit(d)
    before = d.X.copy()
    out = fitted.apply(d, copy=False)
    assert out.X is d.X
    np.testing.assert_allclose(out.X, np.log10(before + 1.0), rtol=1e-6, atol=1e-7)
    with pytest.warns(UserWarning, match="already log10"):
        fitted.apply(out)


def test_fitted_preprocessing_json_round_trip():
    d = make_data(n=6, m=10)
    fitted = Preprocessing(top_variable=4).fit(d)
    blob = json.dumps(fitted.to_dict())
    again = FittedPreprocessing.from_dict(json.loads(blob))
    assert again.genes.tolist() == fitted.genes.tolist()
    np.testing.assert_array_equal(again.means, fitted.means)
    assert again.config == fitted.config
    np.testing.assert_array_equal(again.apply(d).X, fitted.apply(d).X)


def test_align_genes():
    d = make_data(n=3, m=4)
    a = align_genes(d, ["g3", "g0"])
    np.testing.assert_array_equal(a.X, d.X[:, [3, 0]])
    assert a.biotypes.tolist() == [d.biotypes[3], d.biotypes[0]]
    with pytest.raises(FEInputError, match="1 of 2 required genes are missing"):
        align_genes(d, ["g1", "zz"])
    f = align_genes(d, ["g1", "zz"], fill=-1.0)
    assert (f.X[:, 1] == -1).all() and (f.X[:, 0] == d.X[:, 1]).all()


def test_compact_columns_inplace():
    X = np.arange(20, dtype=np.float32).reshape(4, 5)
    keep = np.array([True, False, True, True, False])
    want = X[:, keep].copy()
    got = _compact_columns_inplace(X, keep)
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous


def test_apply_without_copy_reuses_the_buffer():
    """fit_apply(copy=False) compacts the kept genes inside the input's own buffer."""
    import numpy as np
    from factembed.io import ExpressionData
    from factembed.preprocessing import Preprocessing
    rng = np.random.default_rng(0)
    X = rng.random((50, 40)).astype(np.float32) * 10
    X[:, [3, 17]] = 5.0                                   # constant genes are dropped
    ref_fitted, ref = Preprocessing().fit_apply(ExpressionData(X=X.copy(), samples=np.arange(50).astype(str),
                                                               genes=np.arange(40).astype(str)))
    data = ExpressionData(X=X, samples=np.arange(50).astype(str), genes=np.arange(40).astype(str))
    address = data.X.__array_interface__["data"][0]
    fitted, out = Preprocessing().fit_apply(data, copy=False)
    assert out.X.__array_interface__["data"][0] == address
    assert out.X.shape == (50, 38) and list(out.genes) == list(ref.genes)
    np.testing.assert_array_equal(out.X, ref.X)


# --------------------------------------------------------------------------
# gene selection from block statistics (the backed / streamed fit)
# --------------------------------------------------------------------------


def _stats_matrix(n=40, m=12, seed=3):
    """Expression data with constant genes (zeros and a non-zero value), tied
    variances and biotypes."""
    d = make_data(n=n, m=m, seed=seed)
    d.X[:, 2] = 5.0          # constant, non-zero: its float64 variance need not be exactly 0
    d.X[:, 7] = 0.0          # constant zeros
    d.X[:, 9] = d.X[:, 5]    # same variance as gene 5 (tie, broken by position)
    return d


def _block_stats(d, log10p1, rows):
    X = d.X.copy()
    if log10p1:
        _log10p1_inplace(X)
    stats = GeneStats(d.n_genes)
    for a in range(0, d.n_samples, rows):
        stats.update(X[a:a + rows])
    return stats


CONFIGS = [
    dict(),
    dict(log10p1=False),
    dict(protein_coding_only=False),
    dict(top_variable=4),
    dict(protein_coding_only=False, top_variable=5),
    dict(drop_constant=False, top_variable=3),
    dict(protein_coding_only=False, drop_constant=False),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_fit_from_stats_matches_fit(config):
    d = _stats_matrix()
    pre = Preprocessing(**config)
    fitted = pre.fit(d)
    stats = _block_stats(d, pre.log10p1, rows=d.n_samples)   # the same row block as fit's
    again = pre.fit_from_stats(d.genes, stats.mean, stats.var, stats.n, d.biotypes, vmin=stats.min,
                               vmax=stats.max)
    assert again.genes.tolist() == fitted.genes.tolist()
    np.testing.assert_array_equal(again.means, fitted.means)
    np.testing.assert_array_equal(again.variances, fitted.variances)
    assert again.config == fitted.config and again.n_input_genes == fitted.n_input_genes == d.n_genes
    assert again.to_dict() == fitted.to_dict()
    if pre.drop_constant:
        assert "g2" not in again.genes.tolist() and "g7" not in again.genes.tolist()
    # statistics gathered over other row blocks: the same genes, means equal up to rounding
    other = _block_stats(d, pre.log10p1, rows=7)
    third = pre.fit_from_stats(d.genes, other.mean, other.var, other.n, d.biotypes, vmin=other.min,
                               vmax=other.max)
    assert third.genes.tolist() == fitted.genes.tolist()
    np.testing.assert_allclose(third.means, fitted.means, rtol=1e-12, atol=1e-15)


def test_fit_from_stats_checks_its_input():
    d = _stats_matrix()
    st = _block_stats(d, True, rows=10)
    pre = Preprocessing()
    with pytest.raises(ValueError, match="drop_constant needs each gene's minimum and maximum"):
        pre.fit_from_stats(d.genes, st.mean, st.var, st.n)
    with pytest.raises(ValueError, match="give both vmin and vmax"):
        Preprocessing(drop_constant=False).fit_from_stats(d.genes, st.mean, st.var, st.n, vmin=st.min)
    with pytest.raises(ValueError, match="11 means for 12 genes"):
        pre.fit_from_stats(d.genes, st.mean[:11], st.var, st.n, vmin=st.min, vmax=st.max)
    with pytest.raises(ValueError, match="3 biotypes for 12 genes"):
        pre.fit_from_stats(d.genes, st.mean, st.var, st.n, ["a", "b", "c"], vmin=st.min, vmax=st.max)
    with pytest.raises(FEInputError, match="cannot fit preprocessing on an empty matrix"):
        pre.fit_from_stats(d.genes, st.mean, st.var, 0, vmin=st.min, vmax=st.max)
    with pytest.raises(FEInputError, match="no gene has biotype 'protein_coding'"):
        pre.fit_from_stats(d.genes, st.mean, st.var, st.n, ["lncRNA"] * d.n_genes, vmin=st.min, vmax=st.max)
    flat = np.zeros(d.n_genes)
    with pytest.raises(FEInputError, match="no genes left after preprocessing"):
        pre.fit_from_stats(d.genes, flat, flat, 5, vmin=flat, vmax=flat)
    # without drop_constant no ranges are needed; the fit is used like any other
    fitted = Preprocessing(drop_constant=False, protein_coding_only=False).fit_from_stats(
        d.genes, st.mean, st.var, st.n)
    assert fitted.genes.tolist() == d.genes.tolist()
    assert FittedPreprocessing.from_dict(json.loads(json.dumps(fitted.to_dict()))).genes.tolist() == \
        d.genes.tolist()


def test_select_genes():
    var = np.array([3.0, 0.0, 1.0, 3.0, 2.0])
    constant = np.array([False, True, False, False, False])
    assert select_genes(var, constant).tolist() == [True, False, True, True, True]
    assert select_genes(var, constant, top_variable=2).tolist() == [True, False, False, True, False]
    assert select_genes(var, constant, drop_constant=False, top_variable=3).tolist() == \
        [True, False, False, True, True]


def test_io_sits_below_the_preprocessing():
    """factembed.preprocessing builds on factembed.io, never the other way: the io package
    does not serve the preprocessing's names (they live in factembed.preprocessing)."""
    code = ("import factembed.io as io, factembed.preprocessing as p; "
            "assert not hasattr(io, 'Preprocessing') and not hasattr(io, 'align_genes'); "
            "assert p.Preprocessing and p.align_genes")
    subprocess.run([sys.executable, "-c", code], check=True)
