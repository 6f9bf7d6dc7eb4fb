"""Tests of factembed._utils.validation: the one locator of bad values and its users."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factembed.estimator import factorized_embeddings as estimator
from factembed._utils.validation import check_matrix, count_nonfinite, first_bad_value
from factembed.errors import FEInputError
from factembed.io import ExpressionData
from factembed.preprocessing import Preprocessing
from factembed.sources import NpySource


def _brute_force(X, nonneg=False, skip_cols=None):
    bad = ~np.isfinite(X)
    if nonneg:
        with np.errstate(invalid="ignore"):
            bad |= X < 0
    if skip_cols is not None:
        bad[:, skip_cols] = False
    hits = np.argwhere(bad)
    return None if len(hits) == 0 else (int(hits[0][0]), int(hits[0][1]))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), m=st.integers(1, 7), block=st.integers(1, 20), data=st.data(),
       nonneg=st.booleans(), skip=st.booleans())
def test_first_bad_value_agrees_with_a_full_mask(n, m, block, data, nonneg, skip):
    X = np.abs(np.arange(n * m, dtype=np.float32).reshape(n, m)) + 1
    for _ in range(data.draw(st.integers(0, 4))):
        i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, m - 1))
        X[i, j] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, -0.5]))
    skip_cols = np.arange(m) % 3 == 1 if skip else None
    hit = first_bad_value(X, nonneg=nonneg, skip_cols=skip_cols, block_elements=block)
    want = _brute_force(X, nonneg, skip_cols)
    assert (None if hit is None else hit[:2]) == want
    if hit is not None:
        np.testing.assert_equal(hit[2], float(X[hit[0], hit[1]]))
    assert count_nonfinite(X, block_elements=block) == int((~np.isfinite(X)).sum())


def test_check_matrix_lives_in_validation_and_is_reexported():
    assert estimator.check_matrix is check_matrix
    X = np.ones((3, 4))
    X[1, 2] = np.nan
    X[2, 0] = np.inf
    with pytest.raises(FEInputError, match=r"X contains 2 NaN/inf value\(s\); first at row 1, column 2 \(nan\)"):
        check_matrix(X)


def test_every_caller_names_the_same_first_bad_value(tmp_path):
    """check_matrix, the preprocessing and a backed source report the same cell."""
    rng = np.random.default_rng(0)
    X = rng.random((300, 50)).astype(np.float32)
    X[217, 31] = np.nan
    X[240, 3] = np.inf
    X[290, 0] = np.nan
    with pytest.raises(FEInputError, match=r"first at row 217, column 31"):
        check_matrix(X)
    data = ExpressionData(X, [f"s{i}" for i in range(300)], [f"g{j}" for j in range(50)])
    with pytest.raises(FEInputError, match=r"sample 's217', gene 'g31': value is NaN"):
        Preprocessing(protein_coding_only=False).fit(data)
    np.save(tmp_path / "x.npy", X)
    with NpySource(tmp_path / "x.npy") as src:
        with pytest.raises(FEInputError, match=r"row 217, column 31: value is NaN"):
            src.to_numpy()
    X[217, 31] = -4.0  # negative: bad only with log10(x + 1)
    with pytest.raises(FEInputError, match=r"sample 's217', gene 'g31': negative value -4"):
        Preprocessing(protein_coding_only=False).fit(data)
    np.save(tmp_path / "x.npy", X)
    with NpySource(tmp_path / "x.npy", log10p1=True) as src:
        with pytest.raises(FEInputError, match=r"row 217, column 31: negative value -4"):
            src.to_numpy()
    with pytest.raises(FEInputError, match=r"first at row 240, column 3 \(inf\)"):
        check_matrix(X)


def test_nullable_and_string_columns_of_a_dataframe():
    """pandas extension dtypes (nullable Float64/Int64, the string dtype that pandas 3 makes
    the default) are checked with pandas' own dtype tests: numeric ones are read as floats
    (pd.NA -> NaN), others are named as non-numeric, never a TypeError."""
    import pandas as pd
    plain = pd.DataFrame({"g1": [1.0, 2.0, 3.0], "g2": [0.0, 5.0, 1.5]}, index=["s1", "s2", "s3"])
    want, samples, genes = check_matrix(plain)
    nullable = plain.astype({"g1": "Float64", "g2": "Float64"})
    got, s2, g2 = check_matrix(nullable)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert list(s2) == list(samples) and list(g2) == list(genes)
    ints = pd.DataFrame({"g1": [1, 2, 3], "g2": [0, 5, 1]}).astype("Int64")
    assert np.array_equal(check_matrix(ints)[0], np.array([[1, 0], [2, 5], [3, 1]], dtype=np.float32))
    holes = nullable.copy()
    holes.iloc[1, 0] = pd.NA
    with pytest.raises(FEInputError, match="NaN"):
        check_matrix(holes)
    assert np.isnan(check_matrix(holes, allow_nan=True)[0][1, 0])
    for bad in (plain.assign(g2=pd.array(["a", "b", "c"], dtype="string")), plain.assign(g2=[True, False, True])):
        with pytest.raises(FEInputError, match="column 'g2' is not numeric"):
            check_matrix(bad)
