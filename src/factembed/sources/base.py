"""The row source every on-disk format builds on: shape and views, checked reads, the block sampler."""

from __future__ import annotations

import copy
import math
from typing import Any, Iterator

import numpy as np
import torch

from .._utils.validation import _log10p1_inplace, _nonfinite_name, first_bad_value
from .block_sampler import BlockSampler
from ..errors import FEInputError


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
        from ..preprocessing import GeneStats
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
