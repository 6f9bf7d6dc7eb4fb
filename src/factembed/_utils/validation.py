"""Input validation shared by the estimator, the readers and the backed sources.

* :func:`check_matrix`: validate an in-memory expression matrix (numpy, torch,
  nested lists, pandas) and convert it to ``float32``.
* :func:`first_bad_value`: THE locator of the first bad value of a matrix (NaN,
  inf, or a negative value when ``log10(x + 1)`` is to be applied).  It scans in
  row blocks of about :data:`CHECK_ELEMENTS` values, so the temporary masks stay
  small whatever the matrix size.  Callers format their own messages (naming
  samples / genes / rows as they know them).
* :func:`observed_counts` / :func:`check_observed`: for data with missing values
  (NaN) that are to be imputed or left out of inference: the observed values of each
  sample and gene, counted in the same row blocks, and the one message for a sample
  (or gene) with none.
* :func:`_log10p1_inplace`: the ``log10(x + 1)`` transform that the checks guard.

NaN is a bad value unless a caller asks otherwise (``allow_nan=True``): only the
imputation paths do, and they still reject infinities.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ..errors import FEInputError, one_line

__all__ = ["check_matrix", "check_sparse", "first_bad_value", "count_nonfinite", "observed_counts",
           "check_observed", "CHECK_ELEMENTS"]

#: Values examined per block by the scans (bounds the temporary boolean masks, ~4 MB).
CHECK_ELEMENTS = 1 << 22
#: ``1 / ln(10)`` in float32: ``log10(x + 1) = log1p(x) * _LOG10_E``.
_LOG10_E = np.float32(1.0 / math.log(10.0))


def _nonfinite_name(v: float) -> str:
    """``"NaN"``, ``"inf"`` or ``"-inf"`` for a non-finite value."""
    return "NaN" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _log10p1_inplace(block: np.ndarray) -> None:
    """``block = log10(block + 1)`` in place (float32)."""
    np.log1p(block, out=block)
    block *= _LOG10_E


def _block_rows(n_cols: int, block_elements: int) -> int:
    return max(1, int(block_elements) // max(1, int(n_cols)))


def first_bad_value(X: np.ndarray, *, nonneg: bool = False, skip_cols: np.ndarray | None = None,
                    allow_nan: bool = False,
                    block_elements: int = CHECK_ELEMENTS) -> tuple[int, int, float] | None:
    """``(row, column, value)`` of the first bad value of the 2-D array ``X`` in
    row-major order, or ``None`` when every value is good.

    Bad means NaN or +-inf (only +-inf with ``allow_nan``: NaN then marks a missing
    value), and also negative when ``nonneg`` (the values are to be
    ``log10(x + 1)``-transformed).  Columns where the boolean mask ``skip_cols`` is
    true are not examined.  ``X`` is scanned in row blocks of about
    ``block_elements`` values; no full-size mask is ever built.
    """
    n, m = X.shape
    step = _block_rows(m, block_elements)
    for a in range(0, n, step):
        part = X[a:a + step]
        ok = ~np.isinf(part) if allow_nan else np.isfinite(part)
        if nonneg:
            with np.errstate(invalid="ignore"):
                ok &= ~(part < 0)      # NaN is not negative (it is judged above)
        if skip_cols is not None:
            ok[:, skip_cols] = True
        if not ok.all():
            i, j = np.argwhere(~ok)[0]
            return a + int(i), int(j), float(part[i, j])
    return None


def count_nonfinite(X: np.ndarray, *, nan: bool = True, block_elements: int = CHECK_ELEMENTS) -> int:
    """Number of NaN / inf values of the 2-D array ``X`` (scanned in row blocks);
    ``nan=False`` counts the infinities only."""
    step = _block_rows(X.shape[1], block_elements)
    bad = np.isinf if not nan else (lambda part: ~np.isfinite(part))
    return sum(int(bad(X[a:a + step]).sum()) for a in range(0, X.shape[0], step))


#: scikit-learn's advice for 1-D input, in its words (its estimator checks look for them)
_RESHAPE = ("Reshape your data either using array.reshape(-1, 1) if your data has a single feature (gene) "
            "or array.reshape(1, -1) if it contains a single sample.")


def _is_sparse(X: Any) -> bool:
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(X)


def _check_shape(shape: tuple, what: str, min_samples: int) -> None:
    """Our message for an empty or too small matrix, followed by scikit-learn's wording."""
    n, m = int(shape[0]), int(shape[1])
    if n == 0 or m == 0:
        count = (f"0 sample(s) (shape={tuple(shape)}) while a minimum of {max(1, min_samples)} is required"
                 if n == 0 else f"0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is required")
        raise FEInputError(f"{what} is empty: shape {tuple(shape)}; found array with {count}.")
    if n < min_samples:
        raise FEInputError(f"{what} has {n} sample(s); at least {min_samples} are needed (found array with "
                           f"{n} sample(s) (shape={tuple(shape)}) while a minimum of {min_samples} is required)")


def observed_counts(X: np.ndarray, *, block_elements: int = CHECK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """``(per row, per column)`` numbers of observed (non-NaN) values of the 2-D array
    ``X`` (int64), counted in row blocks of about ``block_elements`` values: the only
    masks ever built are those of one block."""
    n, m = X.shape
    rows = np.zeros(n, dtype=np.int64)
    cols = np.zeros(m, dtype=np.int64)
    step = _block_rows(m, block_elements)
    for a in range(0, n, step):
        obs = ~np.isnan(X[a:a + step])
        rows[a:a + step] = obs.sum(1)
        cols += obs.sum(0)
    return rows, cols


def _named(names: Any, k: int, kind: str) -> str:
    return f"{kind} {str(names[k])!r}" if names is not None else f"{kind} {k}"


def check_observed(rows: np.ndarray, cols: np.ndarray | None = None, *, samples: Any = None, genes: Any = None,
                   empty_ok: np.ndarray | None = None, what: str = "X", gene_hint: str = "",
                   path: Any = None) -> None:
    """Raise :class:`FEInputError` for a sample without any observed value (its
    embedding would be undefined) and, when ``cols`` is given, for a gene without any
    observed value in any sample unless ``empty_ok`` (a boolean mask over the genes)
    allows it.  ``rows`` / ``cols`` are the counts of :func:`observed_counts`; the
    message names the first such sample (or gene), how many there are, and ends with
    ``gene_hint`` for genes; ``path``: the file concerned, if any."""
    lead = f"{what}: " if what else ""
    empty = np.flatnonzero(rows == 0)
    if empty.size:
        first = _named(samples, int(empty[0]), "sample" if samples is not None else "row")
        more = f" ({empty.size} such samples)" if empty.size > 1 else ""
        raise FEInputError(f"{lead}{first} has no observed value (every value is NaN){more}; a sample needs "
                           "at least one observed value to be embedded", path)
    if cols is None:
        return
    bad = cols == 0
    if empty_ok is not None:
        bad &= ~np.asarray(empty_ok, dtype=bool)
    idx = np.flatnonzero(bad)
    if idx.size:
        first = _named(genes, int(idx[0]), "gene" if genes is not None else "column")
        more = f" ({idx.size} such genes)" if idx.size > 1 else ""
        raise FEInputError(f"{lead}{first} has no observed value in any of the {len(rows)} samples{more}"
                           + (f"; {gene_hint}" if gene_hint else ""), path)


def check_matrix(X: Any, *, what: str = "X", min_samples: int = 1, n_genes: int | None = None,
                 allow_nan: bool = False, nan_hint: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validate an expression matrix; return (float32 array, sample names, gene names).

    Accepts numpy arrays, torch tensors, nested lists and pandas DataFrames (index =
    samples, columns = genes).  Raises :class:`FEInputError` (a ``ValueError``) naming
    the problem and, for bad values, the first offending row and column.  With
    ``allow_nan`` NaN values pass (missing values, for the imputation paths);
    infinities never do.  ``nan_hint``: the remedy a NaN's error names.
    """
    samples = genes = None
    try:
        import pandas as pd
        if isinstance(X, pd.DataFrame):
            samples = np.asarray(X.index.astype(str))
            genes = np.asarray(X.columns.astype(str))
            # pandas' own dtype tests: extension dtypes (nullable Float64/Int64, string) are no numpy dtypes
            non_numeric = [c for c, dt in zip(X.columns, X.dtypes)
                           if pd.api.types.is_bool_dtype(dt) or not pd.api.types.is_numeric_dtype(dt)]
            if non_numeric:
                raise FEInputError(f"{what}: column {non_numeric[0]!r} is not numeric "
                                   f"({len(non_numeric)} non-numeric column(s))")
            nullable = any(isinstance(dt, pd.api.extensions.ExtensionDtype) for dt in X.dtypes)
            X = X.to_numpy(dtype=np.float64, na_value=np.nan) if nullable else X.to_numpy()
    except ImportError:  # pragma: no cover
        pass
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch is not None and isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if _is_sparse(X):
        raise FEInputError(f"{what} is a sparse matrix; sparse input is not supported here, pass a dense array")
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise FEInputError(f"{what} could not be read as a numeric matrix: {exc}") from None
    if arr.dtype == object:
        # numbers held as Python objects are fine (as in scikit-learn); anything that is not a
        # number raises numpy's TypeError ("... argument must be a string or a real number ...")
        try:
            arr = np.asarray(arr, dtype=np.float64)
        except ValueError as exc:
            raise FEInputError(f"{what} must be numeric, got dtype object ({one_line(exc)})") from None
    elif not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise FEInputError(f"{what} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise FEInputError(f"{what} must be real-valued, got complex numbers (Complex data not supported)")
    if arr.ndim != 2:
        raise FEInputError(f"{what} must be a 2-D (samples x genes) matrix, got {arr.ndim} dimension(s) "
                           f"with shape {arr.shape}. {_RESHAPE}")
    _check_shape(arr.shape, what, min_samples)
    if n_genes is not None and arr.shape[1] != n_genes:
        raise FEInputError(f"{what} has {arr.shape[1]} genes but the model was fitted on {n_genes}")
    with np.errstate(over="ignore"):  # out-of-range values become inf and are reported below
        arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    # values that are not finite in float32: NaN, inf, or finite values beyond
    # float32's range (which became inf)
    hit = first_bad_value(arr32, allow_nan=allow_nan)
    if hit is not None:
        i, j, _ = hit
        row = samples[i] if samples is not None else f"row {i}"
        col = genes[j] if genes is not None else f"column {j}"
        original = arr[i, j]
        if np.isfinite(original):
            raise FEInputError(f"{what}: value at {row}, {col} ({original:g}) overflows float32")
        n_bad = count_nonfinite(arr32[i:], nan=not allow_nan)  # nothing is bad before row i
        kind = "inf" if allow_nan else "NaN/inf"
        raise FEInputError(f"{what} contains {n_bad} {kind} value(s); first at {row}, {col} ({original})",
                           hint=nan_hint if np.isnan(original) else None)
    return arr32, samples, genes


def check_sparse(X: Any, *, what: str = "X", min_samples: int = 1, samples: np.ndarray | None = None,
                 genes: np.ndarray | None = None,
                 block_elements: int = CHECK_ELEMENTS) -> Any:
    """Validate a scipy sparse matrix and return it as CSR with ``float32`` values.

    Other sparse formats are converted to CSR (a sparse copy; the matrix is never made
    dense).  The stored values are checked in blocks of ``block_elements``; the first
    NaN/inf (or value beyond float32's range) raises :class:`FEInputError` naming its row
    and column (``samples`` / ``genes`` names when given), as :func:`check_matrix` does.
    """
    if X.ndim != 2:
        raise FEInputError(f"{what} must be a 2-D (samples x genes) matrix, got shape {X.shape}. {_RESHAPE}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise FEInputError(f"{what} must be real-valued, got complex numbers (Complex data not supported)")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise FEInputError(f"{what} must be numeric, got dtype {X.dtype}")
    _check_shape(X.shape, what, min_samples)
    if X.format != "csr":
        X = X.tocsr()
    original = X.data
    if X.dtype != np.float32:
        with np.errstate(over="ignore"):
            X = X.astype(np.float32)
    data = X.data
    for a in range(0, data.size, block_elements):
        ok = np.isfinite(data[a:a + block_elements])
        if ok.all():
            continue
        k = a + int(np.argmin(ok))
        row = int(np.searchsorted(X.indptr, k, side="right")) - 1
        lo, hi = int(X.indptr[row]), int(X.indptr[row + 1])
        bad = np.flatnonzero(~np.isfinite(data[lo:hi]))       # the row's columns may be unsorted
        first = lo + bad[np.argmin(X.indices[lo + bad])]
        col = int(X.indices[first])
        value = original[first]
        where = (samples[row] if samples is not None else f"row {row}",
                 genes[col] if genes is not None else f"column {col}")
        if np.isfinite(value):
            raise FEInputError(f"{what}: value at {where[0]}, {where[1]} ({value:g}) overflows float32")
        n_bad = int((~np.isfinite(data[k:])).sum())
        raise FEInputError(f"{what} contains {n_bad} NaN/inf value(s); first at {where[0]}, {where[1]} ({value})")
    return X
