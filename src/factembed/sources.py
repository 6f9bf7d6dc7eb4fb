"""Out-of-core row sources: train on matrices that stay on disk.

A *row source* is any object with ``shape`` (samples, genes) and
``rows(index) -> float32 CPU tensor`` (see :class:`factembed.train.RowSource`).
:meth:`FactorizedEmbeddings.fit` accepts one instead of an array and streams it;
the matrix is never loaded.  The sources here read

* a ``.npy`` file (or the memory map that ``np.load(path, mmap_mode="r")`` returns):
  :class:`NpySource`;
* a TCGA-style HDF5 file (dataset ``data``, samples x genes; optional ``samples``,
  ``genes``, ``labels``): :class:`H5Source`;
* an AnnData ``.h5ad`` file with a dense or CSR ``X``: :class:`H5adSource`;
* a Zarr array, or a Zarr group holding ``data`` or ``X`` (when ``zarr`` is
  installed): :class:`ZarrSource`.

:func:`open_source` picks the class from the file name.

Sampling: every source has ``make_sampler(batch_samples, generator)``, which the
estimator uses; it returns a :class:`BlockSampler` (module ``block_sampler``).  The rows are cut into *blocks*
of ``block_rows`` contiguous rows (each block is read with one sequential read of a
few MiB); each pass visits the blocks in a random order, ``blocks_per_window`` blocks
at a time.  The rows of one such *window* (a few hundred to a few thousand rows,
sized from ``memory_budget``) are permuted and cut into batches, so each batch mixes
rows from ``blocks_per_window`` random places of the file while every read stays
sequential.  A background thread reads the next window while the trainer works on
the current one (``prefetch`` windows ahead, 1 by default), and the batch rows that
``rows()`` hands to the trainer come from the window in memory (no random disk
reads).  Values are checked (NaN/inf, and negative values when ``log10p1``) and
optionally transformed by ``log10(x + 1)`` as each block is read.

Memory: the windows in flight (``2 + prefetch`` windows at most, each at most
``memory_budget / (2 + prefetch)`` bytes) plus O(n) bytes of bookkeeping (the block
order, and whatever the model itself keeps per sample).  ``.npy`` files are read
with ``pread`` rather than through the memory map, so file pages never count in the
process's resident set.
"""

from __future__ import annotations

import copy
import math
import mmap
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ._validation import _log10p1_inplace, _nonfinite_name, first_bad_value
from .block_sampler import DEFAULT_MEMORY_BUDGET, BlockSampler, plan_blocks
from .errors import FEInputError, MissingColumnError, one_line
from .io.hdf5 import _open_h5

__all__ = [
    "BackedSource",
    "NpySource",
    "H5Source",
    "H5adSource",
    "ZarrSource",
    "BlockSampler",
    "open_source",
    "plan_blocks",
    "stored_as_log",
    "DEFAULT_MEMORY_BUDGET",
]

def _names(values: Any) -> np.ndarray | None:
    """Names / labels as a str array (None stays None).  Unlike the readers'
    ``factembed.io._data._to_str_array``, numbers keep numpy's ``str`` form
    (``1.0`` stays ``"1.0"``, NaN is ``"nan"``), as backed sources always did."""
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    elif arr.dtype == object:
        arr = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)])
    return arr.reshape(-1).astype(str)


class BackedSource:
    """Base class of the on-disk row sources.

    Subclasses implement ``_read_raw(a, b, out)``: copy rows ``a:b`` of the stored
    matrix (absolute row numbers) into the float32 array ``out``.

    Parameters common to all sources: ``log10p1`` (apply ``log10(x + 1)`` to every
    value as it is read; negative values are then an error), ``validate`` (raise
    :class:`FEInputError` naming the sample and gene of the first NaN/inf),
    ``memory_budget`` / ``block_rows`` / ``blocks_per_window`` / ``prefetch`` (defaults
    of :meth:`make_sampler`, see :func:`plan_blocks`).
    """

    def __init__(self, n_rows: int, n_genes: int, *, path: str | None = None,
                 samples: Any = None, genes: Any = None, labels: Any = None,
                 log10p1: bool = False, validate: bool = True, memory_budget: int | None = None,
                 block_rows: int | None = None, blocks_per_window: int | None = None,
                 prefetch: int = 1) -> None:
        self._lo = 0
        self._n = int(n_rows)
        self._m = int(n_genes)
        self._stored_m = int(n_genes)   # columns as stored (``_m`` after a gene selection)
        self._cols: np.ndarray | None = None
        self.path = path
        self.samples = _names(samples)
        self.genes = _names(genes)
        self.labels = _names(labels)
        self.biotypes: np.ndarray | None = None   # per-gene biotype, where the file has one
        for what, names, size in (("samples", self.samples, self._n), ("genes", self.genes, self._m),
                                  ("labels", self.labels, self._n)):
            if names is not None and len(names) != size:
                raise FEInputError(f"{len(names)} {what} names for a matrix of shape {self.shape}", path)
        self.log10p1 = bool(log10p1)
        self.validate = bool(validate)
        #: NaN values are missing values (``fit(source, missing="ignore")`` sets it), not errors
        self.allow_nan = False
        self.memory_budget = memory_budget
        self.block_rows = block_rows
        self.blocks_per_window = blocks_per_window
        self.prefetch = int(prefetch)
        self._owner = True
        self._staged: tuple[torch.Tensor, torch.Tensor] | None = None
        if self._n < 1 or self._m < 1:
            raise FEInputError(f"matrix is empty: shape {self.shape}", path)

    # -- shape and views --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._m)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        rng = "" if (self._lo == 0 and self._owner) else f", rows {self._lo}:{self._lo + self._n}"
        return (f"{type(self).__name__}({self.path or 'array'}, shape={self.shape}{rng}, "
                f"log10p1={self.log10p1})")

    def view(self, start: int, stop: int) -> "BackedSource":
        """The rows ``start:stop`` as a source of their own (shares the open file;
        closing the view does not close it).  Used to give each process its shard."""
        if not 0 <= start < stop <= self._n:
            raise ValueError(f"bad row range {start}:{stop} for {self._n} rows")
        v = copy.copy(self)
        v._lo = self._lo + int(start)
        v._n = int(stop) - int(start)
        v._owner = False
        v._parent = self        # keeps the open file (owned by the parent) alive
        v._staged = None
        for name in ("samples", "labels"):
            arr = getattr(self, name)
            setattr(v, name, None if arr is None else arr[start:stop])
        return v

    def select_genes(self, columns: Any) -> "BackedSource":
        """The same rows restricted to the stored columns ``columns`` (in that order),
        as a source of their own sharing the open file: how a backed fit applies the
        gene selection of its preprocessing (each block is read whole, then its kept
        columns taken)."""
        cols = np.asarray(columns, dtype=np.int64).reshape(-1)
        base = self._cols if self._cols is not None else None
        if cols.size == 0 or cols.min() < 0 or cols.max() >= self._m:
            raise ValueError(f"gene columns out of range for {self._m} genes")
        v = copy.copy(self)
        v._cols = cols if base is None else base[cols]
        v._m = int(cols.size)
        v.genes = None if self.genes is None else self.genes[cols]
        v.biotypes = None if self.biotypes is None else self.biotypes[cols]
        v._owner = False
        v._parent = self
        v._staged = None
        return v

    # -- reading ------------------------------------------------------------------------
    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_block(self, a: int, b: int, out: np.ndarray) -> None:
        """Rows ``a:b`` (local numbering) into ``out``, checked and transformed."""
        if self._cols is None:
            self._read_raw(self._lo + a, self._lo + b, out)
        else:
            full = np.empty((b - a, self._stored_m), dtype=np.float32)
            self._read_raw(self._lo + a, self._lo + b, full)
            np.take(full, self._cols, axis=1, out=out)
        self._prepare(out, a)

    def _prepare(self, block: np.ndarray, a: int) -> None:
        if self.validate:
            hit = first_bad_value(block, nonneg=self.log10p1, allow_nan=self.allow_nan)
            if hit is not None:
                i, j, v = hit
                self._bad_value(v, a + i, j)
        if self.log10p1:
            _log10p1_inplace(block)

    def _bad_value(self, v: float, i: int, j: int) -> None:
        sample = f"sample {str(self.samples[i])!r} (row {self._lo + i})" if self.samples is not None \
            else f"row {self._lo + i}"
        gene = f"gene {str(self.genes[j])!r} (column {j})" if self.genes is not None else f"column {j}"
        if not math.isfinite(v):
            what = _nonfinite_name(v)
            remedy = dict(hint="or leave missing values out of training: fit(source, missing='ignore')",
                          cli_hint="or leave missing values out of training: --missing ignore") if what == "NaN" else {}
            raise FEInputError(f"{sample}, {gene}: value is {what}; impute or drop it first", self.path, **remedy)
        raise FEInputError(f"{sample}, {gene}: negative value {v:g} cannot be log10(x+1)-transformed",
                           self.path, hint="the data may already be on a log scale: open the source with log10p1=False",
                           cli_hint="the data may already be on a log scale: use --no-log")

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new float32 array (checked and transformed)."""
        start, stop = max(0, int(start)), min(self._n, int(stop))
        out = np.empty((max(0, stop - start), self._m), dtype=np.float32)
        if stop > start:
            self.read_block(start, stop, out)
        return out

    def iter_blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` for consecutive blocks covering the matrix once, in order."""
        rows = rows or max(1, (64 << 20) // (4 * self._m))
        for a in range(0, self._n, rows):
            yield a, self.read_rows(a, a + rows)

    def to_numpy(self) -> np.ndarray:
        """The whole (checked, transformed) matrix in memory: for small data and tests."""
        return self.read_rows(0, self._n)

    def gene_stats(self, progress: bool = False):
        """Per-gene statistics (:class:`factembed.preprocessing.GeneStats`) of the
        (checked, transformed) values in one sequential pass over row blocks, with the
        rows that hold a constant profile.  Reading every block also
        checks every value before training starts."""
        from .preprocessing import GeneStats
        stats = GeneStats(self._m)
        from tqdm.auto import tqdm
        with tqdm(total=self._n, desc="checking values", unit="sample", mininterval=0.5, disable=not progress) as bar:
            for a, block in self.iter_blocks():
                stats.update(block, first_row=a)
                bar.update(len(block))
        return stats

    def column_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and variance (float64) in one sequential pass."""
        s = self.gene_stats()
        return s.mean, s.var

    def stage(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep ``rows``, the rows of ``index`` that a :class:`BlockSampler` has just read,
        for the next ``rows(index)`` call with that same index tensor."""
        self._staged = (index, rows)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows ``index`` (local numbering).  The batch that the source's
        :class:`BlockSampler` just drew (:meth:`stage`) is served from memory; any other
        request is read from disk (rows grouped into contiguous runs)."""
        staged = self._staged
        if staged is not None and staged[0] is index:
            self._staged = None
            return staged[1]
        idx = torch.as_tensor(index).reshape(-1).to("cpu", torch.int64).numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"row index out of range for {self._n} rows")
        uniq, inverse = np.unique(idx, return_inverse=True)
        buf = np.empty((len(uniq), self._m), dtype=np.float32)
        if len(uniq):
            breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
            o = 0
            for run in np.split(uniq, breaks):
                a, b = int(run[0]), int(run[-1]) + 1
                self.read_block(a, b, buf[o:o + b - a])
                o += b - a
        if len(uniq) == len(idx) and np.array_equal(uniq, idx):
            return torch.from_numpy(buf)
        return torch.from_numpy(buf[inverse.reshape(-1)])

    # -- sampling -----------------------------------------------------------------------
    def make_sampler(self, batch_samples: int, generator: torch.Generator, **options) -> "BlockSampler":
        """A :class:`BlockSampler` over this source (``options`` override the source's
        ``memory_budget``, ``block_rows``, ``blocks_per_window``, ``prefetch``)."""
        kw = dict(memory_budget=self.memory_budget, block_rows=self.block_rows,
                  blocks_per_window=self.blocks_per_window, prefetch=self.prefetch)
        kw.update(options)
        return BlockSampler(self, batch_samples, generator, **kw)

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        if self._owner:
            self._close()

    def _close(self) -> None:
        pass

    def __enter__(self) -> "BackedSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# numpy
# ---------------------------------------------------------------------------------------


class NpySource(BackedSource):
    """A 2-D numeric ``.npy`` file (or an array / memory map already open).

    Given a path (or the memory map ``np.load(path, mmap_mode="r")`` returned), rows
    are read with ``os.preadv`` at their offset in the file: sequential reads into
    our own buffers, and the mapped pages are never touched (so they never count in
    the process's RSS).  Any other array (in memory, a slice of a memory map,
    Fortran order) is read by slicing."""

    def __init__(self, data: str | os.PathLike | np.ndarray, *, samples: Any = None, genes: Any = None,
                 **options) -> None:
        path = None
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
            if not os.path.isfile(path):
                raise FEInputError("no such file", path)
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise FEInputError(f"not a readable .npy file (truncated or corrupt?): {one_line(exc)}",
                                   path) from None
            if not isinstance(arr, np.ndarray):
                raise FEInputError("expected a .npy array", path)
        elif isinstance(data, np.ndarray):
            arr = data
            path = getattr(data, "filename", None)
        else:
            raise TypeError(f"NpySource needs a path or a numpy array, got {type(data).__name__}")
        if arr.ndim != 2:
            raise FEInputError(f"array must be 2-D (samples x genes), got shape {arr.shape}", path)
        if arr.dtype.kind not in "biuf":
            raise FEInputError(f"array must be numeric, got dtype {arr.dtype}", path)
        super().__init__(arr.shape[0], arr.shape[1], path=path, samples=samples, genes=genes, **options)
        self._arr = arr
        self._fd: int | None = None
        # pread only from an original memory map (not a slice of one): then `offset` is
        # where row 0 starts in the file.
        if (isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.filename
                and arr.flags.c_contiguous and arr.offset is not None):
            self._fd = os.open(arr.filename, os.O_RDONLY)
            self._offset = int(arr.offset)
            self._row_bytes = arr.shape[1] * arr.dtype.itemsize
            self._file_dtype = arr.dtype

    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:
        if self._fd is None:
            out[...] = self._arr[a:b]
            return
        direct = self._file_dtype == np.dtype("<f4") or self._file_dtype == np.dtype("=f4")
        target = out if direct and out.flags.c_contiguous else np.empty((b - a, self._stored_m), self._file_dtype)
        mv = memoryview(target).cast("B")
        offset = self._offset + a * self._row_bytes
        done = 0
        while done < mv.nbytes:
            k = os.preadv(self._fd, [mv[done:]], offset + done)
            if k <= 0:
                raise FEInputError(f"rows {a}-{b}: file ends early (truncated?)", self.path)
            done += k
        if target is not out:
            out[...] = target

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            if getattr(self, "_owner", False):
                self._close()
        except Exception:  # pragma: no cover
            pass


# ---------------------------------------------------------------------------------------
# HDF5 and AnnData
# ---------------------------------------------------------------------------------------


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
        from .io import LABEL_KEY
        from .io.anndata import _h5ad_names, _LegacyH5ad
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


class ZarrSource(BackedSource):
    """A 2-D Zarr array, or a Zarr group holding one as ``data`` (or ``X``) with
    optional 1-D ``samples``, ``genes``, ``labels`` arrays.  Needs ``zarr``; rows are
    read by slicing (chunks of many rows x all genes read best)."""

    def __init__(self, store: Any, **options) -> None:
        try:
            import zarr
        except ImportError:  # pragma: no cover - optional dependency
            raise ImportError("reading Zarr needs the 'zarr' package (pip install zarr)") from None
        path = os.fspath(store) if isinstance(store, (str, os.PathLike)) else None
        try:
            z = zarr.open(store, mode="r") if path is not None else store
        except Exception as exc:
            raise FEInputError(f"not a readable Zarr store: {one_line(exc)}", path) from None
        samples = genes = labels = None
        if hasattr(z, "shape") and hasattr(z, "dtype"):
            arr = z
        else:
            key = "data" if "data" in z else ("X" if "X" in z else None)
            if key is None:
                raise FEInputError("Zarr group has no 'data' or 'X' array", path)
            arr = z[key]
            for name in ("samples", "genes", "labels"):
                if name in z:
                    val = _names(z[name][...])
                    samples, genes, labels = (val if name == "samples" else samples,
                                              val if name == "genes" else genes,
                                              val if name == "labels" else labels)
        if len(arr.shape) != 2 or np.dtype(arr.dtype).kind not in "biuf":
            raise FEInputError(f"Zarr array must be 2-D numeric, got shape {arr.shape} dtype {arr.dtype}", path)
        super().__init__(arr.shape[0], arr.shape[1], path=path, samples=samples, genes=genes, labels=labels,
                         **options)
        self._arr = arr

    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:
        try:
            out[...] = self._arr[a:b]
        except Exception as exc:
            raise FEInputError(f"cannot read rows {a}-{b}: {one_line(exc)}", self.path) from None


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def open_source(path: str | os.PathLike, fmt: str | None = None, **options) -> BackedSource:
    """Open ``path`` as a backed row source, by ``fmt`` (npy, h5, h5ad, zarr) or by
    its extension.  ``options`` go to the source (``log10p1``, ``memory_budget``, ...;
    ``label_column`` for h5ad)."""
    p = Path(path)
    name = p.name.lower()
    if fmt is None:
        if name.endswith(".npy"):
            fmt = "npy"
        elif name.endswith(".h5ad"):
            fmt = "h5ad"
        elif name.endswith((".h5", ".hdf5", ".hdf")):
            fmt = "h5"
        elif name.endswith(".zarr") or _is_zarr_dir(p):
            fmt = "zarr"
        else:
            raise FEInputError("backed (out-of-core) reading supports .npy, .h5/.hdf5, .h5ad and .zarr; "
                               "convert the file first (e.g. factembed's write_expression to .h5)", path)
    fmt = fmt.lower().lstrip(".")
    label_column = options.pop("label_column", None)
    if fmt == "npy":
        return NpySource(p, **options)
    if fmt in ("h5", "hdf5", "hdf"):
        return H5Source(p, **options)
    if fmt == "h5ad":
        return H5adSource(p, label_column=label_column, **options)
    if fmt == "zarr":
        return ZarrSource(p, **options)
    raise FEInputError(f"format {fmt!r} cannot be read backed (supported: npy, h5, h5ad, zarr)", path)


def stored_as_log(source: BackedSource) -> bool:
    """True when the file says its values are already log10(x + 1)-transformed (an
    HDF5 ``transform`` attribute or AnnData ``uns/factembed_transform``, as
    factembed's writers record it)."""
    f = getattr(source, "_file", None)
    if f is None:
        return False
    t = f.attrs.get("transform")
    if t is None and "uns" in f and "factembed_transform" in f["uns"]:
        t = f["uns"]["factembed_transform"][()]
    if isinstance(t, bytes):
        t = t.decode()
    return t == "log10p1"
