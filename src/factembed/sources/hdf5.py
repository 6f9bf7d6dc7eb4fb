"""HDF5 row sources: a TCGA-style ``.h5`` (dataset ``data``) and an AnnData ``.h5ad`` (dense or CSR ``X``)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import FEInputError, MissingColumnError, one_line
from ..io.hdf5 import _open_h5
from .base import BackedSource, _names


def _h5_names(f, key: str, path: str) -> np.ndarray | None:
    import h5py
    ds = f.get(key)
    if not isinstance(ds, h5py.Dataset):
        return None
    try:
        return _names(ds[()])
    except (OSError, RuntimeError) as exc:
        raise FEInputError(f"cannot read dataset {key!r}: {one_line(exc)}", path) from None


def _h5_read_rows(ds, a: int, b: int, out: np.ndarray) -> None:
    """Rows ``a:b`` of a 2-D h5py dataset into ``out`` (straight into it when contiguous)."""
    if out.flags.c_contiguous:
        ds.read_direct(out, np.s_[a:b], np.s_[0:b - a])
    else:
        out[...] = ds[a:b]


class _H5Backed(BackedSource):
    """A source reading from an open h5py file ``self._file``."""

    def _close(self) -> None:
        try:
            self._file.close()
        except Exception:  # pragma: no cover
            pass


class H5Source(_H5Backed):
    """TCGA-style HDF5: 2-D numeric dataset ``data`` (samples x genes), with optional
    1-D ``samples``, ``genes`` and ``labels``.  A file stored genes x samples (detected
    from the name lengths) is read column-wise, which is slow: transpose it once."""

    def __init__(self, path: str | os.PathLike, *, dataset: str = "data", **options) -> None:
        import h5py
        path = os.fspath(path)
        f = _open_h5(path)
        try:
            ds = f.get(dataset)
            if not isinstance(ds, h5py.Dataset):
                keys = ", ".join(sorted(f.keys())) or "none"
                raise FEInputError(f"no 2-D dataset {dataset!r} (found {keys})", path)
            if ds.ndim != 2 or ds.dtype.kind not in "biuf":
                raise FEInputError(f"dataset {dataset!r} must be a 2-D numeric matrix, got shape {ds.shape} "
                                   f"dtype {ds.dtype}", path)
            samples, genes = _h5_names(f, "samples", path), _h5_names(f, "genes", path)
            labels = _h5_names(f, "labels", path)
            biotypes = _h5_names(f, "biotypes", path)
            r, c = ds.shape
            self._transposed = (samples is not None and genes is not None and (r, c) != (len(samples), len(genes))
                                and (r, c) == (len(genes), len(samples)))
            if self._transposed:
                warnings.warn(f"{path}: 'data' is stored genes x samples; streaming samples reads it "
                              "column-wise (slow); store it samples x genes", stacklevel=2)
                r, c = c, r
            super().__init__(r, c, path=path, samples=samples, genes=genes, labels=labels, **options)
        except BaseException:
            f.close()
            raise
        self._file, self._ds = f, ds
        self.biotypes = biotypes if biotypes is not None and len(biotypes) == c else None

    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:
        try:
            if self._transposed:
                out[...] = self._ds[:, a:b].T
            else:
                _h5_read_rows(self._ds, a, b, out)
        except (OSError, RuntimeError, TypeError) as exc:
            raise FEInputError(f"cannot read rows {a}-{b} (truncated or corrupt?): {one_line(exc)}",
                               self.path) from None



class H5adSource(_H5Backed):
    """AnnData ``.h5ad`` (anndata >= 0.8 layout) with a dense or CSR ``X``, read with
    h5py in row blocks.  Sample names come from ``obs``, gene names from ``var``,
    labels from ``obs[label_column]`` (default: the column ``label`` if present)."""

    def __init__(self, path: str | os.PathLike, *, label_column: str | None = None, **options) -> None:
        import h5py
        from ..io import LABEL_KEY
        from ..io.anndata import _h5ad_names, _LegacyH5ad
        path = os.fspath(path)
        f = _open_h5(path)
        try:
            try:
                samples, obs, genes, var = _h5ad_names(f, path)
            except _LegacyH5ad:
                raise FEInputError("old AnnData layout; re-save it with anndata >= 0.8 to read it backed",
                                   path) from None
            key = label_column if label_column is not None else (LABEL_KEY if LABEL_KEY in obs else None)
            if key is not None and key not in obs:
                raise MissingColumnError(f"obs has no column {key!r}; columns are "
                                         f"{', '.join(map(repr, sorted(obs)[:8])) or 'none'}", path,
                                         column=key, available=sorted(obs))
            labels = obs[key] if key is not None else None
            X = f["X"]
            n, m = len(samples), len(genes)
            if isinstance(X, h5py.Dataset):
                if X.shape != (n, m) or X.dtype.kind not in "biuf":
                    raise FEInputError(f"X has shape {X.shape} dtype {X.dtype}, expected numeric ({n}, {m})", path)
                self._csr = None
            else:
                enc = X.attrs.get("encoding-type", "")
                enc = enc.decode() if isinstance(enc, bytes) else str(enc)
                if enc not in ("csr_matrix", "csr"):
                    raise FEInputError(f"X is stored as {enc or 'an unknown encoding'}; backed reading needs "
                                       "dense or CSR X (convert CSC to CSR first)", path)
                indptr = np.asarray(X["indptr"][()], dtype=np.int64)
                if len(indptr) != n + 1:
                    raise FEInputError(f"X has {len(indptr)} indptr entries, expected {n + 1}", path)
                self._csr = (X["data"], X["indices"], indptr)
            super().__init__(n, m, path=path, samples=samples, genes=genes, labels=labels, **options)
        except BaseException:
            f.close()
            raise
        self._file, self._X = f, X
        self.biotypes = next((_names(var[k]) for k in ("biotype", "biotypes", "gene_biotype", "gene_type")
                              if isinstance(var, dict) and k in var), None)

    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:
        try:
            if self._csr is None:
                _h5_read_rows(self._X, a, b, out)
                return
            data, indices, indptr = self._csr
            lo, hi = int(indptr[a]), int(indptr[b])
            vals = np.asarray(data[lo:hi], dtype=np.float32)
            cols = np.asarray(indices[lo:hi], dtype=np.int64)
            if cols.size and (cols.min() < 0 or cols.max() >= self._stored_m):
                raise FEInputError(f"X rows {a}-{b}: column index out of range (corrupt?)", self.path)
            out.fill(0.0)
            rows = np.repeat(np.arange(b - a), np.diff(indptr[a:b + 1]))
            out[rows, cols] = vals
        except (OSError, RuntimeError) as exc:
            raise FEInputError(f"cannot read X rows {a}-{b} (truncated or corrupt?): {one_line(exc)}",
                               self.path) from None



# ---------------------------------------------------------------------------------------
# Zarr
# ---------------------------------------------------------------------------------------
