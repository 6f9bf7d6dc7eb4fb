"""Property-based tests (hypothesis) of input validation and readers/writers."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from factembed import FEInputError
from factembed.estimator.factorized_embeddings import check_matrix
from factembed.io import ExpressionData, read_expression, write_expression

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(arrays(np.float32, shapes, elements=finite))
def test_valid_matrices_pass_unchanged(X):
    out, samples, genes = check_matrix(X)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.array_equal(out, X) and samples is None and genes is None


@given(arrays(np.float64, shapes, elements=st.floats(-10, 10)), st.data(),
       st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e39]))
def test_first_bad_value_is_named(X, data, bad):
    n, m = X.shape
    cells = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, m - 1)), min_size=1, max_size=4))
    for i, j in cells:
        X[i, j] = bad
    i0, j0 = min(cells)                                   # row-major first
    with pytest.raises(FEInputError, match=f"row {i0}, column {j0}"):
        check_matrix(X)


@given(st.one_of(st.just(np.zeros((0, 3))), st.just(np.zeros((3, 0))),
                 arrays(np.float32, st.integers(1, 5)),
                 arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))))
def test_wrong_shapes_raise(X):
    with pytest.raises(FEInputError):
        check_matrix(X)


names = st.lists(st.text("abcdefgXYZ_0123456789", min_size=1, max_size=6), min_size=1, max_size=8, unique=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=names, genes=names, ext=st.sampled_from([".h5", ".npz", ".h5ad", ".tsv"]), data=st.data())
def test_round_trip_any_shape(tmp_path_factory, samples, genes, ext, data):
    X = data.draw(arrays(np.float32, (len(samples), len(genes)),
                         elements=st.floats(0, 1e6, allow_nan=False, width=32)))
    d = ExpressionData(X=X, samples=np.array(samples), genes=np.array(genes))
    path = tmp_path_factory.mktemp("rt") / f"m{ext}"
    write_expression(path, d)
    back = read_expression(path)
    assert list(back.samples) == samples and list(back.genes) == genes
    np.testing.assert_array_equal(back.X, X)
