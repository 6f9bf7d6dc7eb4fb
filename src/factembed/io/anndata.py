"""AnnData ``.h5ad``: reader (with h5py, in row chunks; dense, CSR or CSC ``X``;
old layouts through ``anndata`` in backed mode) and writer.

:func:`_h5ad_names` (sample / gene names and annotations of an open file) is
also used by :class:`factembed.sources.H5adSource`."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ..errors import FEInputError, MissingColumnError, one_line
from ._data import LABEL_KEY, _CHUNK_ELEMENTS, ExpressionData, _chunk_rows, _preview, _to_str_array
from .hdf5 import _h5_strings, _open_h5


def _h5ad_column(elem, path: str, what: str) -> np.ndarray:
    """Decode one column of an AnnData dataframe group (anndata >= 0.7 encoding)."""
    import h5py

    enc = elem.attrs.get("encoding-type", "")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if isinstance(elem, h5py.Group):
        if enc == "categorical":
            cats = elem["categories"]
            cats = _h5_strings(cats, path, what) if cats.dtype.kind not in "biuf" else _to_str_array(cats[()])
            codes = np.asarray(elem["codes"][()]).astype(np.int64)
            out = np.empty(len(codes), dtype=object)
            good = codes >= 0
            out[good] = cats[codes[good]]
            out[~good] = "NA"
            return out.astype(str)
        if enc.startswith("nullable"):
            values = np.asarray(elem["values"][()])
            mask = np.asarray(elem["mask"][()]).astype(bool) if "mask" in elem else np.zeros(len(values), bool)
            out = _to_str_array(values) if values.dtype.kind not in "biuf" else values.astype(object)
            out = np.asarray(out, dtype=object)
            out[mask] = None
            return out
        raise FEInputError(f"unsupported AnnData column encoding {enc!r} for {what!r}", path)
    if elem.dtype.kind in "biuf":
        return np.asarray(elem[()])
    return _h5_strings(elem, path, what)


def _h5ad_frame(f, key: str, path: str) -> tuple[np.ndarray, dict]:
    import h5py

    g = f.get(key)
    if not isinstance(g, h5py.Group):
        raise _LegacyH5ad()
    index_key = g.attrs.get("_index", "_index")
    if isinstance(index_key, bytes):
        index_key = index_key.decode()
    if index_key not in g:
        raise FEInputError(f"{key} has no index dataset {index_key!r}", path)
    index = _h5_strings(g[index_key], path, f"{key}/{index_key}")
    cols = {}
    for name in g.keys():
        if name == index_key or name.startswith("__"):
            continue
        cols[name] = _h5ad_column(g[name], path, f"{key}/{name}")
    return index, cols


class _LegacyH5ad(Exception):
    pass


def _h5ad_names(f, path: str):
    """``(samples, obs, genes, var)`` of an open AnnData file (anndata >= 0.8 layout);
    :class:`FEInputError` without ``X``, :class:`_LegacyH5ad` for the old layout."""
    if "X" not in f:
        raise FEInputError("missing 'X' (not an AnnData file?)", path)
    samples, obs = _h5ad_frame(f, "obs", path)
    genes, var = _h5ad_frame(f, "var", path)
    return samples, obs, genes, var


def _read_h5ad(path: str, label_column: str | None, chunk_rows: int) -> ExpressionData:
    import h5py

    with _open_h5(path) as f:
        try:
            try:
                samples, obs, genes, var = _h5ad_names(f, path)
            except _LegacyH5ad:
                legacy = True
            else:
                legacy = False
            if not legacy:
                if label_column is not None and label_column not in obs:   # before reading X
                    raise _no_obs_column(path, obs, label_column)
                X = _read_h5ad_matrix(f["X"], len(samples), len(genes), path, chunk_rows)
                uns = f.get("uns")
                transform = None
                if isinstance(uns, h5py.Group) and "factembed_transform" in uns:
                    t = uns["factembed_transform"][()]
                    transform = t.decode() if isinstance(t, bytes) else str(t)
        except KeyError as exc:
            raise FEInputError(f"cannot read AnnData content (corrupt?): {one_line(exc)}", path) from None
    if legacy:
        return _read_h5ad_with_anndata(path, label_column, chunk_rows)
    return _finish_anndata(path, X, samples, genes, obs, var, label_column, transform)


def _no_obs_column(path: str, obs: dict, label_column: str) -> MissingColumnError:
    return MissingColumnError(f"obs has no column {label_column!r}; columns are {_preview(sorted(obs), 8)}",
                              path, column=label_column, available=sorted(obs))


def _finish_anndata(path, X, samples, genes, obs, var, label_column, transform) -> ExpressionData:
    labels = None
    if label_column is not None:
        if label_column not in obs:
            raise _no_obs_column(path, obs, label_column)
        labels = obs.pop(label_column)
    elif LABEL_KEY in obs:
        labels = obs.pop(LABEL_KEY)
    biotypes = None
    for key in ("biotype", "biotypes", "gene_biotype", "gene_type"):
        if key in var:
            biotypes = var.pop(key)
            break
    obs = {k: v for k, v in obs.items() if v.dtype != object}
    var = {k: v for k, v in var.items() if v.dtype != object}
    return ExpressionData(X, samples, genes, labels, biotypes, source=path, transform=transform, obs=obs, var=var)


def _read_h5ad_matrix(elem, n: int, m: int, path: str, chunk_rows: int) -> np.ndarray:
    import h5py

    X = np.empty((n, m), dtype=np.float32)
    if isinstance(elem, h5py.Dataset):
        if elem.shape != (n, m):
            raise FEInputError(f"X has shape {elem.shape}, expected ({n}, {m}) from obs/var", path)
        if elem.dtype.kind not in "biuf":
            raise FEInputError(f"X must be numeric, got dtype {elem.dtype}", path)
        step = _chunk_rows(m, chunk_rows)
        a = b = 0
        try:
            for a in range(0, n, step):
                b = min(n, a + step)
                X[a:b] = elem[a:b]
        except (OSError, RuntimeError) as exc:
            raise FEInputError(f"cannot read X rows {a}-{b} (truncated or corrupt?): {one_line(exc)}", path) from None
        return X
    enc = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    if isinstance(enc, bytes):
        enc = enc.decode()
    shape = tuple(int(s) for s in elem.attrs.get("shape", elem.attrs.get("h5sparse_shape", (n, m))))
    if shape != (n, m):
        raise FEInputError(f"X has shape {shape}, expected ({n}, {m}) from obs/var", path)
    if enc in ("csr_matrix", "csr"):
        major, minor = n, m
    elif enc in ("csc_matrix", "csc"):
        major, minor = m, n
    else:
        raise FEInputError(f"unsupported X encoding {enc!r}", path)
    try:
        indptr = np.asarray(elem["indptr"][()], dtype=np.int64)
        data_ds, ind_ds = elem["data"], elem["indices"]
        if len(indptr) != major + 1:
            raise FEInputError(f"sparse X has {len(indptr)} indptr entries, expected {major + 1}", path)
        X.fill(0.0)
        nnz_per_chunk = max(1, _CHUNK_ELEMENTS)
        a = 0
        while a < major:
            # grow the block of rows (csr) / columns (csc) up to ~nnz_per_chunk values
            b = int(np.searchsorted(indptr, indptr[a] + nnz_per_chunk, side="right")) - 1
            b = min(major, max(a + 1, b))
            if enc.startswith("csr"):
                b = min(b, a + max(1, int(chunk_rows)))
            lo, hi = int(indptr[a]), int(indptr[b])
            vals = np.asarray(data_ds[lo:hi], dtype=np.float32)
            idx = np.asarray(ind_ds[lo:hi], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= minor):
                raise FEInputError("sparse X has out-of-range indices (corrupt?)", path)
            rows = np.repeat(np.arange(a, b), np.diff(indptr[a:b + 1]))
            if enc.startswith("csr"):
                X[rows, idx] = vals
            else:
                X[idx, rows] = vals
            a = b
    except (OSError, RuntimeError) as exc:
        raise FEInputError(f"cannot read sparse X (truncated or corrupt?): {one_line(exc)}", path) from None
    return X


def _read_h5ad_with_anndata(path: str, label_column: str | None, chunk_rows: int) -> ExpressionData:
    """Fallback for old AnnData layouts: anndata in backed mode, X read in row chunks."""
    import anndata

    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as exc:  # anndata raises many types for bad files
        raise FEInputError(f"cannot read AnnData file: {one_line(exc)}", path) from None
    try:
        n, m = adata.shape
        X = np.empty((n, m), dtype=np.float32)
        step = _chunk_rows(m, chunk_rows)
        for a in range(0, n, step):
            b = min(n, a + step)
            block = adata.X[a:b]
            X[a:b] = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        obs = {c: _series_values(adata.obs[c]) for c in adata.obs.columns}
        var = {c: _series_values(adata.var[c]) for c in adata.var.columns}
        samples = np.asarray(adata.obs_names, dtype=str)
        genes = np.asarray(adata.var_names, dtype=str)
        t = adata.uns.get("factembed_transform") if hasattr(adata, "uns") else None
    finally:
        with contextlib.suppress(Exception):
            adata.file.close()
    return _finish_anndata(path, X, samples, genes, obs, var, label_column, None if t is None else str(t))


def _series_values(s) -> np.ndarray:
    if getattr(s.dtype, "kind", "O") in "biuf":
        return s.to_numpy()
    return _to_str_array(s.astype(object).where(s.notna(), None).to_numpy())


def _anndata_for(data: ExpressionData):
    import anndata
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index(data.samples.astype(object), name=None))
    if data.labels is not None:
        obs[LABEL_KEY] = pd.Categorical(data.labels.astype(object))
    for k, v in data.obs.items():
        obs[k] = v if v.dtype.kind in "biuf" else v.astype(str).astype(object)
    var = pd.DataFrame(index=pd.Index(data.genes.astype(object), name=None))
    if data.biotypes is not None:
        var["biotype"] = pd.Categorical(data.biotypes.astype(object))
    for k, v in data.var.items():
        var[k] = v if v.dtype.kind in "biuf" else v.astype(str).astype(object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata.AnnData(X=data.X, obs=obs, var=var)
    if data.transform:
        adata.uns["factembed_transform"] = data.transform
    return adata


def _write_h5ad(tmp: str, data: ExpressionData) -> None:
    adata = _anndata_for(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(tmp)
