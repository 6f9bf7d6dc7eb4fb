"""The in-memory expression matrix, :class:`ExpressionData`, and the small
helpers for names and row chunks that it and the readers / writers share."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import FEInputError

#: Name of the label column / obs key that the writers use and the readers
#: pick up automatically when ``label_column`` is not given.
LABEL_KEY = "label"
#: Key of the embeddings in ``obsm`` / ``varm`` of the AnnData files written by
#: :func:`write_embedding_h5ad`.
EMBEDDING_KEY = "X_fe"

# Upper bound of elements handled per chunk in the chunked loops (~32 MB of
# float64).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _to_str_array(values: Any) -> np.ndarray:
    """Convert names / labels (str, bytes, numbers) to a numpy unicode array."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    if arr.dtype.kind in "iub":
        return arr.astype(str)
    if arr.dtype.kind == "f":
        return np.array([_format_number(v) for v in arr.tolist()], dtype=str)
    out = []
    for v in arr.tolist():
        if isinstance(v, bytes):
            out.append(v.decode("utf-8"))
        elif v is None:
            out.append("NA")
        elif isinstance(v, float):
            out.append(_format_number(v))
        else:
            out.append(str(v))
    return np.array(out, dtype=str) if out else np.array([], dtype=str)


def _format_number(v: float) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NA"
        if math.isfinite(v) and v == int(v):
            return str(int(v))
    return str(v)


def _first_duplicate(names: np.ndarray) -> tuple[int, int] | None:
    """Positions (first, second) of the first name that occurs twice, or None."""
    seen: dict[str, int] = {}
    for i, n in enumerate(names.tolist()):
        j = seen.setdefault(n, i)
        if j != i:
            return j, i
    return None


def _preview(names: Sequence[str], k: int = 5) -> str:
    names = list(names)
    shown = ", ".join(repr(str(n)) for n in names[:k])
    return shown + (", ..." if len(names) > k else "")


def _chunk_rows(n_cols: int, chunk_rows: int | None = None) -> int:
    rows = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    if chunk_rows is not None:
        rows = min(rows, max(1, int(chunk_rows)))
    return rows


def _compact_columns_inplace(X: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the columns ``keep`` (bool mask) of C-contiguous ``X`` without a second copy.

    Rows are moved left inside X's own buffer (row ``i`` of the result only
    overwrites rows ``<= i`` of the input, which are already done) and the
    buffer is then shrunk.  Returns the compacted (C-contiguous) array.
    """
    keep = np.asarray(keep, dtype=bool)
    n, m = X.shape
    k = int(keep.sum())
    if k == m:
        return X
    idx = np.flatnonzero(keep)
    flat = X.reshape(-1)
    for i in range(n):
        row = X[i, idx]  # a temporary copy of the kept values of row i
        flat[i * k:(i + 1) * k] = row
    try:
        X.resize((n * k,), refcheck=False)
        return X.reshape(n, k)
    except (ValueError, AttributeError):  # pragma: no cover - buffer not owned
        return np.ascontiguousarray(flat[: n * k].reshape(n, k))


# --------------------------------------------------------------------------
# ExpressionData
# --------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class ExpressionData:
    """A dense gene-expression matrix with names.

    Attributes
    ----------
    X:
        ``float32`` C-contiguous matrix, ``n_samples x n_genes``.  Other
        numeric dtypes / layouts are converted on construction.
    samples, genes:
        Unique names (numpy ``str`` arrays).
    labels:
        Optional per-sample labels, as strings (numbers are formatted as
        strings, ``"24"`` not ``"24.0"``; missing values become ``"NA"``).
    biotypes:
        Optional per-gene biotype (e.g. ``"protein_coding"``).
    source:
        The file the data were read from, if any (used in error messages).
    transform:
        The transform already applied to ``X``, e.g. ``"log10p1"`` for
        ``log10(x + 1)``; ``None`` means raw values.  Data with
        ``transform == "log10p1"`` should be preprocessed with
        ``Preprocessing(log10p1=False)``.
    obs, var:
        Extra per-sample / per-gene annotations (name -> 1-D array).
    """

    X: np.ndarray
    samples: np.ndarray
    genes: np.ndarray
    labels: np.ndarray | None = None
    biotypes: np.ndarray | None = None
    source: str | None = None
    transform: str | None = None
    obs: dict = field(default_factory=dict)
    var: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = self.source
        X = self.X
        if hasattr(X, "toarray") and not isinstance(X, np.ndarray):
            raise FEInputError("X is a sparse matrix; convert it to a dense array first", src)
        X = np.asarray(X)
        if X.ndim != 2:
            raise FEInputError(f"X must be 2-D (samples x genes), got {X.ndim}-D with shape {X.shape}", src)
        if X.dtype.kind not in "biuf":
            raise FEInputError(f"X must be numeric, got dtype {X.dtype}", src)
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        n, m = self.X.shape
        self.samples = _to_str_array(self.samples)
        self.genes = _to_str_array(self.genes)
        if len(self.samples) != n:
            raise FEInputError(f"{len(self.samples)} sample names for {n} rows of X", src)
        if len(self.genes) != m:
            raise FEInputError(f"{len(self.genes)} gene names for {m} columns of X", src)
        dup = _first_duplicate(self.samples)
        if dup is not None:
            raise FEInputError(
                f"duplicated sample name {str(self.samples[dup[1]])!r} (samples {dup[0]} and {dup[1]})", src
            )
        dup = _first_duplicate(self.genes)
        if dup is not None:
            raise FEInputError(
                f"duplicated gene name {str(self.genes[dup[1]])!r} (genes {dup[0]} and {dup[1]})", src
            )
        if self.labels is not None:
            self.labels = _to_str_array(self.labels)
            if len(self.labels) != n:
                raise FEInputError(f"{len(self.labels)} labels for {n} samples", src)
        if self.biotypes is not None:
            self.biotypes = _to_str_array(self.biotypes)
            if len(self.biotypes) != m:
                raise FEInputError(f"{len(self.biotypes)} biotypes for {m} genes", src)
        self.source = None if self.source is None else os.fspath(self.source)
        self.obs = {str(k): np.asarray(v) for k, v in dict(self.obs or {}).items()}
        self.var = {str(k): np.asarray(v) for k, v in dict(self.var or {}).items()}
        for k, v in self.obs.items():
            if v.ndim != 1 or len(v) != n:
                raise FEInputError(f"obs[{k!r}] has shape {v.shape}, expected ({n},)", src)
        for k, v in self.var.items():
            if v.ndim != 1 or len(v) != m:
                raise FEInputError(f"var[{k!r}] has shape {v.shape}, expected ({m},)", src)

    # -- conveniences ------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.X.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_samples, self.n_genes)

    @property
    def log_transformed(self) -> bool:
        """True when ``X`` already holds ``log10(x + 1)`` values."""
        return self.transform == "log10p1"

    def __repr__(self) -> str:
        extra = []
        if self.labels is not None:
            extra.append(f"labels={len(np.unique(self.labels))} classes")
        if self.biotypes is not None:
            extra.append("biotypes")
        if self.transform:
            extra.append(f"transform={self.transform!r}")
        if self.source:
            extra.append(f"source={self.source!r}")
        tail = (", " + ", ".join(extra)) if extra else ""
        return f"ExpressionData({self.n_samples} samples x {self.n_genes} genes{tail})"

    def subset_samples(self, index: Any) -> "ExpressionData":
        """A new ExpressionData with the samples selected by ``index``
        (integer positions, a boolean mask or sample names)."""
        idx = self._sample_index(index)
        return ExpressionData(
            X=self.X[idx],
            samples=self.samples[idx],
            genes=self.genes.copy(),
            labels=None if self.labels is None else self.labels[idx],
            biotypes=None if self.biotypes is None else self.biotypes.copy(),
            source=self.source,
            transform=self.transform,
            obs={k: v[idx] for k, v in self.obs.items()},
            var={k: v.copy() for k, v in self.var.items()},
        )

    def _sample_index(self, index: Any) -> np.ndarray:
        arr = np.asarray(index)
        if arr.dtype == bool:
            if arr.shape != (self.n_samples,):
                raise FEInputError(f"boolean sample mask of shape {arr.shape}, expected ({self.n_samples},)", self.source)
            return np.flatnonzero(arr)
        if arr.dtype.kind in "US" or arr.dtype == object:
            pos = {s: i for i, s in enumerate(self.samples.tolist())}
            names = _to_str_array(arr)
            missing = [s for s in names.tolist() if s not in pos]
            if missing:
                raise FEInputError(f"{len(missing)} unknown sample name(s): {_preview(missing)}", self.source)
            return np.array([pos[s] for s in names.tolist()], dtype=np.int64)
        return arr.astype(np.int64).reshape(-1)


def _check_data(data: Any, what: str = "data") -> ExpressionData:
    """``data`` itself; TypeError when it is not an :class:`ExpressionData`."""
    if not isinstance(data, ExpressionData):
        raise TypeError(f"{what} must be an ExpressionData, got {type(data).__name__}")
    return data


def gene_positions(have: Sequence, want: Sequence) -> np.ndarray:
    """int64 column of each name of ``want`` among the names ``have`` (-1 where absent;
    names compared as text): the one gene matching of the package (the preprocessing's
    ``align_genes``, new data on a fitted model's genes)."""
    pos = {str(g): i for i, g in enumerate(have)}
    return np.fromiter((pos.get(str(g), -1) for g in want), dtype=np.int64, count=len(want))
