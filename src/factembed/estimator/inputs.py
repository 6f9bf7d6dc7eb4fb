"""What the estimator accepts as a matrix, brought to one of two forms.

* dense: numpy arrays, torch tensors, nested lists, pandas DataFrames
  (:func:`factembed._utils.validation.check_matrix`: a float32 array);
* sparse: scipy sparse matrices and arrays (:func:`factembed._utils.validation.check_sparse`:
  float32 CSR, never made dense), wrapped in :class:`CsrRows`, a row source that makes
  dense only the rows asked for;
* ``anndata.AnnData``: its ``X`` (dense or sparse, as above; a backed file is read in
  row blocks through :class:`factembed.sources.H5adSource`), with sample names from
  ``obs_names`` and gene names from ``var_names``.

:func:`as_matrix` returns ``(matrix, sample names, gene names)`` where ``matrix`` is a
float32 array or a *row-block reader*: an object with ``shape``, ``rows(index)`` (for
training) and ``read_rows(start, stop)`` (for inference in blocks).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .._utils.validation import _is_sparse, check_matrix, check_sparse
from ..errors import FEInputError
from ..io._data import gene_positions


def is_anndata(X: Any) -> bool:
    """True for an ``anndata.AnnData`` (checked by type when anndata is imported)."""
    import sys
    ad = sys.modules.get("anndata")
    return ad is not None and isinstance(X, ad.AnnData)


def is_row_source(X: Any) -> bool:
    """True for backed sources (objects with ``rows(index)`` and ``shape``), which
    :meth:`FactorizedEmbeddings.fit` (and each rank of a data-parallel fit) streams instead of loading."""
    import torch
    return (hasattr(X, "rows") and hasattr(X, "shape") and not isinstance(X, (np.ndarray, torch.Tensor))
            and not _is_sparse(X) and not is_anndata(X))


class CsrRows:
    """An in-memory CSR matrix as a row source: :meth:`rows` and :meth:`read_rows`
    make dense (float32) only the rows asked for.  ``samples`` / ``genes``: names."""

    def __init__(self, X: Any, samples: np.ndarray | None = None, genes: np.ndarray | None = None) -> None:
        self.X = X
        self.shape = tuple(int(v) for v in X.shape)
        self.samples = samples
        self.genes = genes

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.X[start:stop].toarray(), dtype=np.float32)

    def rows(self, index: Any):
        import torch
        idx = torch.as_tensor(index).reshape(-1).to("cpu", torch.int64).numpy()
        return torch.from_numpy(np.ascontiguousarray(self.X[idx].toarray(), dtype=np.float32))

    def select_genes(self, columns: np.ndarray) -> "CsrRows":
        """The same rows restricted to ``columns`` (in that order; a sparse copy)."""
        cols = np.asarray(columns, dtype=np.int64)
        return CsrRows(self.X[:, cols], self.samples, None if self.genes is None else self.genes[cols])


def take_genes(matrix: Any, columns: np.ndarray) -> Any:
    """``matrix`` restricted to ``columns`` (in that order): a contiguous copy of a
    numpy array, ``select_genes`` of a row-block reader, ``matrix`` itself when
    ``columns`` are all its columns in order."""
    columns = np.asarray(columns, dtype=np.int64)
    if len(columns) == matrix.shape[1] and np.array_equal(columns, np.arange(matrix.shape[1])):
        return matrix
    if isinstance(matrix, np.ndarray):
        return np.ascontiguousarray(matrix[:, columns])
    return matrix.select_genes(columns)


def _names(index: Any) -> np.ndarray:
    return np.asarray([str(v) for v in index], dtype=object)


def _anndata_matrix(adata: Any, layer: str | None = None) -> Any:
    if layer is not None:
        if layer not in adata.layers:
            raise FEInputError(f"AnnData has no layer {layer!r}; layers are "
                               f"{', '.join(map(repr, adata.layers.keys())) or 'none'}")
        return adata.layers[layer]
    if adata.X is None:
        raise FEInputError("AnnData has no X (pass layer= to use one of its layers)")
    return adata.X


def as_matrix(X: Any, *, what: str = "X", min_samples: int = 1, layer: str | None = None,
              allow_nan: bool = False, nan_hint: str | None = None
              ) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """``(float32 array or row-block reader, sample names, gene names)`` of ``X``
    (see the module docstring); :class:`FEInputError` for bad input.  ``allow_nan``:
    NaN values of a dense matrix pass (missing values); sparse and backed input never
    hold them."""
    if is_anndata(X):
        samples, genes = _names(X.obs_names), _names(X.var_names)
        if getattr(X, "isbacked", False) and layer is None:
            if X.is_view:
                raise FEInputError("a view of a backed AnnData cannot be read in row blocks; "
                                   "call .to_memory() on it, or write it to its own .h5ad file")
            from ..sources import H5adSource
            source = H5adSource(X.filename)
            if source.shape[0] < min_samples:
                raise FEInputError(f"{what} has {source.shape[0]} sample(s); at least {min_samples} are needed")
            return source, samples, genes
        M = _anndata_matrix(X, layer)
        if _is_sparse(M):
            return CsrRows(check_sparse(M, what=what, min_samples=min_samples, samples=samples, genes=genes),
                           samples, genes), samples, genes
        arr, _, _ = check_matrix(np.asarray(M), what=what, min_samples=min_samples, allow_nan=allow_nan,
                                 nan_hint=nan_hint)
        return arr, samples, genes
    if _is_sparse(X):
        return CsrRows(check_sparse(X, what=what, min_samples=min_samples)), None, None
    return check_matrix(X, what=what, min_samples=min_samples, allow_nan=allow_nan,
                                 nan_hint=nan_hint)


def row_blocks(matrix: Any, rows: int):
    """``(start, dense float32 rows)`` of a float32 array or a row-block reader."""
    n = matrix.shape[0]
    for a in range(0, n, rows):
        if isinstance(matrix, np.ndarray):
            yield a, matrix[a:a + rows]
        else:
            yield a, matrix.read_rows(a, a + rows)


def on_model_genes(mat: Any, genes: np.ndarray | None, names: np.ndarray | None, n_features: int, what: str,
                estimator: str = "FactorizedEmbeddings") -> Any:
    """``mat`` (validated by :func:`as_matrix`) on a fitted model's genes: columns matched by
    name when both the input's ``genes`` and the model's ``names`` are known (every model gene
    must be there), then the count checked against ``n_features``."""
    if genes is not None and names is not None and not np.array_equal(genes, names):
        cols = gene_positions(genes, names)
        missing = [str(g) for g, c in zip(names, cols) if c < 0]
        if missing:
            raise FEInputError(f"{what} lacks {len(missing)} of the model's {len(names)} genes "
                               f"(first: {', '.join(missing[:5])})")
        mat = take_genes(mat, cols)
    if mat.shape[1] != n_features:
        raise FEInputError(f"{what} has {mat.shape[1]} genes but the model was fitted on "
                           f"{n_features} ({what} has {mat.shape[1]} features, but "
                           f"{estimator} is expecting {n_features} features as input)")
    return mat


def on_model_genes_missing(X: Any, names: np.ndarray | None, n_features: int, what: str
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """:func:`on_model_genes` for data with missing values: NaN entries pass (infinities do not)
    and the model's genes that a DataFrame lacks become NaN columns.  Returns the float32
    matrix on the model's genes, the mask of those absent genes (None when none), the sample
    names and the input's gene names (when known)."""
    arr, samples, genes = check_matrix(X, what=what, allow_nan=True)
    absent = None
    if genes is not None and names is not None and not np.array_equal(genes, names):
        idx = gene_positions(genes, names)
        present = idx >= 0
        if not present.any():
            raise FEInputError(f"{what} has none of the model's {len(names)} genes (first model genes: "
                               f"{', '.join(map(str, names[:5]))})")
        out = np.full((arr.shape[0], len(names)), np.nan, dtype=np.float32)
        out[:, present] = arr[:, idx[present]]
        arr = out
        absent = None if present.all() else ~present
    if arr.shape[1] != n_features:
        raise FEInputError(f"{what} has {arr.shape[1]} genes but the model was fitted on {n_features}")
    return arr, absent, samples, genes


def is_dataframe(X: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(X, pd.DataFrame)
