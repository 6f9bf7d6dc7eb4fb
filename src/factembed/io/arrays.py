"""Array files: ``.npy`` (reader), ``.npz`` (keys ``X``, ``samples``, ``genes``,
optional ``labels``, ``biotypes``, ``transform``, ``obs:*`` / ``var:*``; reader
and writer) and ``.parquet`` (reader, needs pyarrow)."""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import FEInputError, MissingColumnError, one_line
from ._data import LABEL_KEY, ExpressionData, _chunk_rows, _to_str_array


def _read_npy(path: str, samples_as_rows: bool | None, chunk_rows: int) -> ExpressionData:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FEInputError(f"not a readable .npy file (truncated or corrupt?): {one_line(exc)}", path) from None
    if arr.ndim != 2:
        raise FEInputError(f"array must be 2-D, got shape {arr.shape}", path)
    if arr.dtype.kind not in "biuf":
        raise FEInputError(f"array must be numeric, got dtype {arr.dtype}", path)
    if samples_as_rows is False:
        arr = arr.T
    n, m = arr.shape
    X = np.empty((n, m), dtype=np.float32)
    step = _chunk_rows(m, chunk_rows)
    for a in range(0, n, step):
        X[a:a + step] = arr[a:a + step]
    del arr
    return ExpressionData(X, [f"sample_{i}" for i in range(n)], [f"gene_{j}" for j in range(m)], source=path)


def _read_npz(path: str) -> ExpressionData:
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FEInputError(f"not a readable .npz file (truncated or corrupt?): {one_line(exc)}", path) from None

    try:
        with z:
            keys = set(z.files)
            if "X" not in keys:
                raise FEInputError(f"missing array 'X' (found {', '.join(sorted(keys)) or 'none'})", path)
            X = z["X"]
            if X.ndim != 2:
                raise FEInputError(f"array 'X' must be 2-D, got shape {X.shape}", path)
            n, m = X.shape
            samples = z["samples"] if "samples" in keys else np.array([f"sample_{i}" for i in range(n)])
            genes = z["genes"] if "genes" in keys else np.array([f"gene_{j}" for j in range(m)])
            labels = z["labels"] if "labels" in keys else None
            biotypes = z["biotypes"] if "biotypes" in keys else None
            transform = str(z["transform"]) if "transform" in keys else None
            obs = {k[4:]: z[k] for k in keys if k.startswith("obs:")}
            var = {k[4:]: z[k] for k in keys if k.startswith("var:")}
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise FEInputError(f"corrupt .npz archive: {one_line(exc)}", path) from None
    except ValueError as exc:
        if isinstance(exc, FEInputError):
            raise
        raise FEInputError(f"cannot load array from .npz (object arrays are not allowed): {one_line(exc)}", path) from None
    return ExpressionData(X, samples, genes, labels, biotypes, source=path, transform=transform or None,
                          obs=obs, var=var)


def _read_parquet(path: str, samples_as_rows: bool | None, label_column: str | None) -> ExpressionData:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise FEInputError("reading .parquet needs the 'pyarrow' package (pip install pyarrow)", path) from None
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise FEInputError(f"cannot read parquet file: {one_line(exc)}", path) from None
    if not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    ids = _to_str_array(df.iloc[:, 0].to_numpy())
    df = df.iloc[:, 1:]
    labels = None
    rows = samples_as_rows is not False
    if label_column is None and rows and LABEL_KEY in df.columns:
        label_column = LABEL_KEY
    if label_column is not None:
        if label_column not in df.columns:
            text = [str(c) for c in df.columns if df[c].dtype.kind not in "biuf"]
            where = (f"its non-numeric columns are {', '.join(map(repr, text[:8]))}" if text
                     else f"it has no non-numeric column ({len(df.columns):,} columns)")
            raise MissingColumnError(f"no column {label_column!r}; {where}", path, column=label_column,
                                     available=text or list(df.columns))
        labels = _to_str_array(df.pop(label_column).to_numpy())
    for c in df.columns:
        if df[c].dtype.kind not in "biuf":
            raise FEInputError(f"column {c!r} is not numeric (dtype {df[c].dtype})", path)
    X = df.to_numpy(dtype=np.float32)
    cols = _to_str_array(np.asarray(df.columns))
    if rows:
        return ExpressionData(X, ids, cols, labels, source=path)
    return ExpressionData(np.ascontiguousarray(X.T), cols, ids, labels, source=path)


def _write_npz(tmp: str, data: ExpressionData) -> None:
    arrays = {"X": data.X, "samples": data.samples, "genes": data.genes}
    if data.labels is not None:
        arrays["labels"] = data.labels
    if data.biotypes is not None:
        arrays["biotypes"] = data.biotypes
    if data.transform:
        arrays["transform"] = np.array(data.transform)
    for k, v in data.obs.items():
        arrays[f"obs:{k}"] = v if v.dtype.kind in "biuf" else _to_str_array(v)
    for k, v in data.var.items():
        arrays[f"var:{k}"] = v if v.dtype.kind in "biuf" else _to_str_array(v)
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
