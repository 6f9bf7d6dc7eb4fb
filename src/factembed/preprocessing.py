"""Gene selection and transformation of expression matrices.

:class:`Preprocessing` decides which genes to keep (protein coding, non
constant, most variable) and :class:`FittedPreprocessing` applies the same
gene selection, by name, and the ``log10(x + 1)`` transform to new data.
:func:`align_genes` reorders the genes of a matrix by name.

The gene selection is made from per-gene statistics gathered over row blocks
(:class:`GeneStats`), so an in-memory fit (:meth:`Preprocessing.fit`) and a fit
over a matrix streamed from disk (:meth:`Preprocessing.fit_from_stats`) choose
genes by the same rule (:func:`select_genes`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._utils.validation import _log10p1_inplace, _nonfinite_name, first_bad_value
from .errors import FEInputError, FEWarning
from .io._data import (
    ExpressionData,
    _check_data,
    _chunk_rows,
    _compact_columns_inplace,
    _first_duplicate,
    _preview,
    _to_str_array,
    gene_positions,
)

__all__ = ["Preprocessing", "FittedPreprocessing", "GeneStats", "select_genes", "align_genes"]

# _log10p1_inplace (factembed._utils.validation) and _compact_columns_inplace
# (factembed.io._data) are used here and also by the backed sources / the text
# reader; they live in those lower-level modules so that factembed.io never
# imports this module at import time.


# --------------------------------------------------------------------------
# gene alignment
# --------------------------------------------------------------------------


def _gene_positions(data: ExpressionData, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Column of each wanted gene in ``data`` (-1 when absent) and the wanted names."""
    wanted = _to_str_array(genes)
    return gene_positions(data.genes.tolist(), wanted.tolist()), wanted


def _missing_genes_error(missing: Sequence[str], total: int, source: str | None) -> FEInputError:
    return FEInputError(f"{len(missing)} of {total} required genes are missing from the data: {_preview(missing)}",
                        source, hint="pass fill_missing=True to fill them with the training means; transform(missing='ignore') "
                             "embeds each sample from its observed genes only; impute() fills them from the decoder",
                        cli_hint="pass --fill-missing to fill them from the decoder (or --fill-missing means: "
                                 "training means); 'factembed impute' fills them from the decoder")


#: the remedy for values that are already on a log scale, in both spellings
_NO_LOG = dict(hint="use Preprocessing(log10p1=False) if the data are already log-transformed",
               cli_hint="use --no-log if the data are already log-transformed")


def _aligned_matrix(data: ExpressionData, idx: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
    n = data.n_samples
    out = np.empty((n, len(idx)), dtype=np.float32)
    present = idx >= 0
    src = idx[present]
    dst = np.flatnonzero(present)
    identity = bool(present.all()) and np.array_equal(src, np.arange(data.n_genes))
    step = _chunk_rows(max(1, len(idx)))
    for a in range(0, n, step):
        b = min(n, a + step)
        if identity:
            out[a:b] = data.X[a:b]
        else:
            block = data.X[a:b]
            out[a:b, dst] = block[:, src]
            if fill is not None and not present.all():
                out[a:b, ~present] = fill[~present]
    return out


def _align_annotations(data: ExpressionData, idx: np.ndarray) -> tuple[np.ndarray | None, dict]:
    present = idx >= 0

    def take(v: np.ndarray) -> np.ndarray:
        if v.dtype.kind in "biuf":
            out = np.full(len(idx), np.nan, dtype=np.float64 if v.dtype.kind != "f" else v.dtype)
        else:
            out = np.full(len(idx), "NA", dtype=object)
        out[present] = v[idx[present]]
        return out if v.dtype.kind in "biuf" else out.astype(str)

    biotypes = None if data.biotypes is None else take(data.biotypes)
    return biotypes, {k: take(v) for k, v in data.var.items()}


def align_genes(
    data: ExpressionData, genes: Sequence[str], fill: float | np.ndarray | None = None
) -> ExpressionData:
    """Reorder the columns of ``data`` to ``genes``, matching by name.

    Genes of ``data`` not in ``genes`` are dropped.  Genes in ``genes`` that
    ``data`` lacks raise :class:`FEInputError` (how many, and the first few
    names) unless ``fill`` is given: a scalar, or an array of one value per
    entry of ``genes``, written into the missing columns.
    """
    data = _check_data(data)
    idx, wanted = _gene_positions(data, genes)
    fill_arr = None
    missing_mask = idx < 0
    if missing_mask.any():
        if fill is None:
            raise _missing_genes_error(wanted[missing_mask].tolist(), len(wanted), data.source)
        fill_arr = np.broadcast_to(np.asarray(fill, dtype=np.float32), (len(wanted),))
    X = _aligned_matrix(data, idx, fill_arr)
    biotypes, var = _align_annotations(data, idx)
    return ExpressionData(X, data.samples.copy(), wanted, None if data.labels is None else data.labels.copy(),
                          biotypes, source=data.source, transform=data.transform,
                          obs={k: v.copy() for k, v in data.obs.items()}, var=var)


def _locate_bad(block: np.ndarray, a: int, data: ExpressionData, genes: np.ndarray, log10p1: bool,
                col_ok: np.ndarray | None = None, allow_nan: bool = False,
                nan_hint: tuple[str, str] | None = None) -> None:
    """Raise FEInputError naming the first NaN/inf (or negative, with log10p1) cell of ``block``
    (rows ``a:`` of ``data``; columns named by ``genes``; columns where ``col_ok`` is true skipped;
    NaN allowed with ``allow_nan``; ``nan_hint``: the remedy of a NaN, for Python and the CLI)."""
    hit = first_bad_value(block, nonneg=log10p1, skip_cols=col_ok, allow_nan=allow_nan)
    if hit is None:
        return
    i, j, v = hit
    sample, gene = str(data.samples[a + i]), str(genes[j])
    if not math.isfinite(v):
        what = _nonfinite_name(v)
        hint = " (infinite, or beyond float32's range of +-3.4e38)" if what != "NaN" else ""
        remedy = dict(hint=nan_hint[0], cli_hint=nan_hint[1]) if what == "NaN" and nan_hint else {}
        raise FEInputError(f"sample {sample!r}, gene {gene!r}: value is {what}{hint}; impute or drop it first",
                           data.source, **remedy)
    raise FEInputError(f"sample {sample!r}, gene {gene!r}: negative value {v:g} cannot be log10(x+1)-transformed",
                       data.source, **_NO_LOG)


# --------------------------------------------------------------------------
# gene selection from per-gene statistics
# --------------------------------------------------------------------------


#: the remedy a NaN in training data names (Python, command line)
TRAINING_NAN_HINT = ("or leave missing values out of training: fit(X, missing='ignore')",
                     "or leave missing values out of training: --missing ignore")


def _nan_reduce(fn, x: np.ndarray, nan: np.ndarray, fill: float) -> np.ndarray:
    """Column-wise ``fn.reduce`` (np.fmin / np.fmax) of ``x`` over its observed values;
    ``fill`` for a column without any."""
    return fn.reduce(np.where(nan, fill, x), axis=0)


class GeneStats:
    """Per-gene statistics gathered over row blocks: number of rows ``n``, ``mean``,
    ``var`` (population variance), ``min`` and ``max`` (float64).

    Call :meth:`update` with each block of rows (already transformed, e.g. by
    ``log10(x + 1)``); blocks are merged with the pairwise update of Chan et al.,
    exactly as :meth:`Preprocessing.fit` does.  The float64 results depend on the
    block boundaries only through rounding (~1e-15 relative); with the same row
    blocks they are the same bits, whatever the other columns of the blocks.

    NaN values are missing values: each gene's statistics are over its observed values
    (``count``: how many); a gene with none has mean 0, variance 0 and ``min > max``
    (it counts as constant).  Without NaN, ``count`` is ``n`` for every gene.
    """

    def __init__(self, n_genes: int) -> None:
        self.n = 0
        #: observed (non-NaN) values of each gene
        self.count = np.zeros(int(n_genes), dtype=np.int64)
        self.mean = np.zeros(int(n_genes), dtype=np.float64)
        self._m2 = np.zeros(int(n_genes), dtype=np.float64)
        self.min = np.full(int(n_genes), np.inf)
        self.max = np.full(int(n_genes), -np.inf)
        #: row numbers of the rows with a constant profile (for blocks added with ``first_row``)
        self.constant_rows = np.zeros(0, dtype=np.int64)

    def update(self, block: np.ndarray, first_row: int | None = None) -> None:
        """Add the rows of ``block`` (``rows x n_genes``); with ``first_row`` (the row
        number of the block's first row), also note which rows are constant."""
        if first_row is not None and len(block):
            const = np.flatnonzero((block == block[:, :1]).all(axis=1))
            if const.size:
                self.constant_rows = np.concatenate([self.constant_rows, int(first_row) + const])
        # C order whatever the block's layout: numpy sums a C-ordered column row by row
        # but a Fortran-ordered one pairwise, and the last bits of the result differ
        x = np.asarray(block, dtype=np.float64, order="C")
        rows = x.shape[0]
        if rows == 0:
            return
        nan = np.isnan(x)
        if nan.any():
            # the same pairwise update over each gene's observed values of the block
            nb = rows - nan.sum(axis=0)
            mb = np.where(nan, 0.0, x).sum(axis=0) / np.maximum(nb, 1)
            m2b = np.where(nan, 0.0, (x - mb) ** 2).sum(axis=0)
            np.fmin(self.min, _nan_reduce(np.fmin, x, nan, np.inf), out=self.min)
            np.fmax(self.max, _nan_reduce(np.fmax, x, nan, -np.inf), out=self.max)
        else:
            nb = rows
            mb = x.mean(axis=0)
            m2b = ((x - mb) ** 2).sum(axis=0)
            np.minimum(self.min, x.min(axis=0), out=self.min)
            np.maximum(self.max, x.max(axis=0), out=self.max)
        tot = self.count + nb
        safe = np.maximum(tot, 1)
        delta = mb - self.mean
        self.mean += delta * (nb / safe)
        self._m2 += m2b + delta ** 2 * (self.count * nb / safe)
        self.count = tot
        self.n += rows

    @property
    def var(self) -> np.ndarray:
        """Population variance (``ddof=0``) of each gene (over its observed values)."""
        return self._m2 / np.maximum(self.count, 1)

    @property
    def n_missing(self) -> int:
        """Number of missing (NaN) values seen."""
        return int(self.n * len(self.count) - self.count.sum())

    def merge(self, other: "GeneStats") -> "GeneStats":
        """Add the statistics of another, disjoint set of rows (e.g. another rank's
        shard), with the same pairwise update; returns ``self``."""
        if other.n:
            tot = self.count + other.count
            safe = np.maximum(tot, 1)
            delta = other.mean - self.mean
            self.mean = self.mean + delta * (other.count / safe)
            self._m2 = self._m2 + other._m2 + delta ** 2 * (self.count * other.count / safe)
            self.count = tot
            self.n += other.n
            self.min = np.minimum(self.min, other.min)
            self.max = np.maximum(self.max, other.max)
            self.constant_rows = np.concatenate([self.constant_rows, other.constant_rows])
        return self


def _protein_coding_mask(biotypes: np.ndarray | None, protein_coding_only: bool,
                         source: str | None) -> np.ndarray | None:
    """Boolean mask of the candidate genes (biotype ``protein_coding``), or None for all
    genes (no filter asked for, or no biotypes known)."""
    if not protein_coding_only or biotypes is None:
        return None
    cand = biotypes == "protein_coding"
    if not cand.any():
        raise FEInputError("no gene has biotype 'protein_coding'", source, hint="use protein_coding_only=False",
                           cli_hint="use --all-biotypes")
    return cand


def select_genes(var: np.ndarray, constant: np.ndarray, *, drop_constant: bool = True,
                 top_variable: int | None = None) -> np.ndarray:
    """Boolean mask of the genes to keep among candidates with variances ``var``:
    without the ``constant`` ones (when ``drop_constant``), then the ``top_variable``
    largest variances (ties broken by position; kept genes stay in order)."""
    var = np.asarray(var, dtype=np.float64)
    keep = np.ones(len(var), dtype=bool)
    if drop_constant:
        keep &= ~np.asarray(constant, dtype=bool)
    if top_variable is not None and keep.sum() > top_variable:
        order = np.argsort(-np.where(keep, var, -np.inf), kind="stable")[:top_variable]
        top = np.zeros(len(var), dtype=bool)
        top[order] = True
        keep &= top
    return keep


@dataclass
class Preprocessing:
    """Which genes to keep and how to transform the values.

    Parameters
    ----------
    log10p1:
        Apply ``log10(x + 1)`` (raw, non-negative values such as TPM / FPKM /
        counts).  Use ``False`` for data that are already log-transformed
        (e.g. :func:`factembed.datasets.load_demo`).
    protein_coding_only:
        Keep only genes whose biotype is ``"protein_coding"``; applies only
        when the data have biotypes.
    drop_constant:
        Drop genes with the same value in every training sample.
    top_variable:
        Keep only the ``top_variable`` genes with the largest variance (of the
        transformed values).  Kept genes stay in their original order.
    """

    log10p1: bool = True
    protein_coding_only: bool = True
    drop_constant: bool = True
    top_variable: int | None = None

    def __post_init__(self) -> None:
        if self.top_variable is not None:
            if int(self.top_variable) != self.top_variable or int(self.top_variable) < 1:
                raise ValueError(f"top_variable must be a positive integer or None, got {self.top_variable!r}")
            self.top_variable = int(self.top_variable)

    def fit(self, data: ExpressionData, *, allow_nan: bool = False) -> "FittedPreprocessing":
        """Decide the kept genes from ``data`` and record their training means
        (on the transformed scale).  Reads ``data.X`` in row chunks; does not
        copy the matrix.  A NaN value is an error naming its sample and gene, unless
        ``allow_nan``: then it is a missing value, and each gene's statistics are over
        its observed values (a gene observed nowhere counts as constant)."""
        data = _check_data(data)
        if data.n_samples == 0 or data.n_genes == 0:
            raise FEInputError(f"cannot fit preprocessing on an empty matrix {data.shape}", data.source)
        if self.log10p1 and data.log_transformed:
            warnings.warn(FEWarning(
                f"{data.source or 'data'}: values are already log10(x+1)-transformed (transform='log10p1') and "
                "would be transformed again", hint="use Preprocessing(log10p1=False)", cli_hint="use --no-log"),
                stacklevel=2,
            )
        cand = _protein_coding_mask(data.biotypes, self.protein_coding_only, data.source)
        cidx = np.arange(data.n_genes) if cand is None else np.flatnonzero(cand)
        cgenes = data.genes[cidx]
        all_cols = len(cidx) == data.n_genes
        stats = GeneStats(len(cidx))
        step = _chunk_rows(len(cidx))
        for a in range(0, data.n_samples, step):
            b = min(data.n_samples, a + step)
            block = data.X[a:b] if all_cols else data.X[a:b][:, cidx]
            block = np.array(block, dtype=np.float32, copy=True)
            _locate_bad(block, a, data, cgenes, self.log10p1, allow_nan=allow_nan, nan_hint=TRAINING_NAN_HINT)
            if self.log10p1:
                _log10p1_inplace(block)
            stats.update(block)
        return self._fitted(cgenes, stats.mean, stats.var, ~(stats.max > stats.min), data.n_genes, data.source)

    def fit_from_stats(
        self,
        genes: Sequence[str],
        mean: np.ndarray,
        var: np.ndarray,
        n_samples: int,
        biotypes: Sequence[str] | None = None,
        *,
        vmin: np.ndarray | None = None,
        vmax: np.ndarray | None = None,
        source: str | None = None,
    ) -> "FittedPreprocessing":
        """The :meth:`fit` of a matrix known only through per-gene statistics
        (e.g. gathered with :class:`GeneStats` while streaming it from disk).

        ``mean``, ``var`` (population variance), ``vmin`` and ``vmax`` are per gene,
        over ``n_samples`` rows, on the transformed scale (after ``log10(x + 1)``
        when ``log10p1``).  Genes are chosen exactly as :meth:`fit` chooses them:
        protein-coding genes when ``biotypes`` are given and ``protein_coding_only``,
        then without constant genes (``vmax == vmin``) when ``drop_constant``, then
        the ``top_variable`` most variable.  ``vmin`` / ``vmax`` are needed when
        ``drop_constant`` (a variance computed in floating point is rarely exactly
        zero for a constant gene).  On the same matrix, statistics gathered over the
        same row blocks give the same genes and means as :meth:`fit`, bit for bit.
        """
        genes = _to_str_array(genes)
        m = len(genes)
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        var = np.asarray(var, dtype=np.float64).reshape(-1)
        ranges = [None if v is None else np.asarray(v, dtype=np.float64).reshape(-1) for v in (vmin, vmax)]
        for what, arr in (("means", mean), ("variances", var), ("vmin", ranges[0]), ("vmax", ranges[1])):
            if arr is not None and len(arr) != m:
                raise ValueError(f"{len(arr)} {what} for {m} genes")
        if int(n_samples) < 1 or m == 0:
            raise FEInputError(f"cannot fit preprocessing on an empty matrix {(int(n_samples), m)}", source)
        if not (np.isfinite(mean).all() and np.isfinite(var).all()):
            raise ValueError("gene means and variances must be finite")
        if (ranges[0] is None) != (ranges[1] is None):
            raise ValueError("give both vmin and vmax, or neither")
        if self.drop_constant and ranges[0] is None:
            raise ValueError("drop_constant needs each gene's minimum and maximum (vmin=, vmax=; "
                             "GeneStats gathers them)")
        if biotypes is not None:
            biotypes = _to_str_array(biotypes)
            if len(biotypes) != m:
                raise ValueError(f"{len(biotypes)} biotypes for {m} genes")
        n_input_genes = m
        cand = _protein_coding_mask(biotypes, self.protein_coding_only, source)
        if cand is not None:
            genes, mean, var = genes[cand], mean[cand], var[cand]
            ranges = [None if v is None else v[cand] for v in ranges]
        constant = np.zeros(len(genes), dtype=bool) if ranges[0] is None else ~(ranges[1] > ranges[0])
        return self._fitted(genes, mean, var, constant, n_input_genes, source)

    def _fitted(self, genes: np.ndarray, mean: np.ndarray, var: np.ndarray, constant: np.ndarray,
                n_input_genes: int, source: str | None) -> "FittedPreprocessing":
        """The FittedPreprocessing keeping :func:`select_genes` of the candidate genes."""
        keep = select_genes(var, constant, drop_constant=self.drop_constant, top_variable=self.top_variable)
        if not keep.any():
            raise FEInputError("no genes left after preprocessing (all constant?)", source)
        return FittedPreprocessing(
            genes=genes[keep].copy(),
            means=mean[keep].copy(),
            variances=var[keep].copy(),
            config=Preprocessing(self.log10p1, self.protein_coding_only, self.drop_constant, self.top_variable),
            n_input_genes=n_input_genes,
        )

    def fit_apply(self, data: ExpressionData, *, copy: bool = True,
                  allow_nan: bool = False) -> tuple["FittedPreprocessing", ExpressionData]:
        """``fit`` then ``apply`` on the same data (``copy=False``: reuse ``data.X``'s
        memory, see :meth:`FittedPreprocessing.apply`; ``allow_nan``: NaN values are
        missing values, kept as NaN)."""
        fitted = self.fit(data, allow_nan=allow_nan)
        return fitted, fitted.apply(data, copy=copy, allow_nan=allow_nan)

    def describe(self) -> str:
        """The preprocessing in words, e.g. ``"log10(x+1), protein-coding genes, constant
        genes dropped, the 5,000 most variable genes"``."""
        parts = ["log10(x+1)" if self.log10p1 else "values used as given"]
        if self.protein_coding_only:
            parts.append("protein-coding genes (when biotypes are known)")
        parts.append("constant genes dropped" if self.drop_constant else "constant genes kept")
        if self.top_variable is not None:
            parts.append(f"the {self.top_variable:,} most variable genes")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"log10p1": bool(self.log10p1), "protein_coding_only": bool(self.protein_coding_only),
                "drop_constant": bool(self.drop_constant), "top_variable": self.top_variable}


@dataclass(repr=False)
class FittedPreprocessing:
    """A fitted :class:`Preprocessing`: the kept genes (in order) and their
    training means and variances on the transformed scale."""

    genes: np.ndarray
    means: np.ndarray
    config: Preprocessing
    variances: np.ndarray | None = None
    n_input_genes: int | None = None

    def __post_init__(self) -> None:
        self.genes = _to_str_array(self.genes)
        self.means = np.asarray(self.means, dtype=np.float64).reshape(-1)
        if self.variances is not None:
            self.variances = np.asarray(self.variances, dtype=np.float64).reshape(-1)
        if len(self.means) != len(self.genes):
            raise ValueError(f"{len(self.means)} means for {len(self.genes)} genes")
        dup = _first_duplicate(self.genes)
        if dup is not None:
            raise ValueError(f"duplicated gene name {str(self.genes[dup[1]])!r} in the fitted gene list")

    def __repr__(self) -> str:
        return f"FittedPreprocessing({len(self.genes)} genes, {self.config})"

    @property
    def log10p1(self) -> bool:
        return bool(self.config.log10p1)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def absent_genes(self, data: ExpressionData) -> np.ndarray:
        """The kept genes (names, in order) that ``data`` lacks."""
        idx, wanted = _gene_positions(_check_data(data), self.genes)
        return wanted[idx < 0]

    def apply(self, data: ExpressionData, *, fill_missing: bool | str = False, copy: bool = True,
              allow_nan: bool = False) -> ExpressionData:
        """Align ``data`` to the kept genes by name and transform it.

        Genes are matched by name and reordered.  Missing genes raise
        :class:`FEInputError` unless ``fill_missing`` is ``True`` (or ``"mean"``),
        which fills them with the training mean (transformed scale) and emits a
        warning, or ``"nan"``, which leaves them NaN (missing values, to be imputed or
        left out of inference; no warning: the caller reports them).
        NaN/inf values, and negative values when ``log10p1``, raise
        :class:`FEInputError` naming the sample and gene; ``allow_nan=True`` lets NaN
        values through as missing values (infinities and negative values still
        raise; ``log10(NaN + 1)`` stays NaN).  The result is a new
        ``float32`` matrix; with ``copy=False``, when the kept genes appear in ``data``
        in the same order (always so for the data the preprocessing was fitted on),
        ``data.X``'s buffer is reused (columns compacted and transformed in place), so
        ``data`` must not be used afterwards.
        """
        data = _check_data(data)
        if self.log10p1 and data.log_transformed:
            warnings.warn(FEWarning(
                f"{data.source or 'data'}: values are already log10(x+1)-transformed and this preprocessing "
                "applies log10(x+1) again", hint="fit with Preprocessing(log10p1=False)",
                cli_hint="fit with --no-log"),
                stacklevel=2,
            )
        if fill_missing not in (False, True, "mean", "nan"):
            raise ValueError(f"fill_missing must be False, True, 'mean' or 'nan', got {fill_missing!r}")
        idx, wanted = _gene_positions(data, self.genes)
        present = idx >= 0
        n_missing = int((~present).sum())
        if n_missing:
            missing = wanted[~present].tolist()
            if not fill_missing:
                raise _missing_genes_error(missing, len(wanted), data.source)
        if n_missing and fill_missing != "nan":
            warnings.warn(
                f"{data.source or 'data'}: {n_missing} of {len(wanted)} genes are missing and were filled with "
                f"their training means: {_preview(missing)}",
                stacklevel=2,
            )
        identity = n_missing == 0 and len(idx) == data.n_genes and np.array_equal(idx, np.arange(data.n_genes))
        ordered_subset = n_missing == 0 and bool(np.all(np.diff(idx) > 0))
        if identity and not copy:
            X = data.X
        elif ordered_subset and not copy and data.X.flags.c_contiguous and data.X.flags.owndata:
            # kept genes in their original order: compact the columns inside data.X's own
            # buffer, so the matrix never exists twice
            keep = np.zeros(data.n_genes, dtype=bool)
            keep[idx] = True
            X = _compact_columns_inplace(data.X, keep)
        else:
            X = _aligned_matrix(data, idx, np.zeros(len(idx), dtype=np.float32))
        col_ok = ~present if n_missing else None
        step = _chunk_rows(max(1, X.shape[1]))
        for a in range(0, X.shape[0], step):
            block = X[a:a + step]
            _locate_bad(block, a, data, wanted, self.log10p1, col_ok, allow_nan=allow_nan)
            if self.log10p1:
                _log10p1_inplace(block)
        if n_missing:
            X[:, ~present] = np.nan if fill_missing == "nan" else self.means[~present].astype(np.float32)
        biotypes, var = _align_annotations(data, idx)
        return ExpressionData(
            X, data.samples.copy(), wanted, None if data.labels is None else data.labels.copy(), biotypes,
            source=data.source, transform="log10p1" if (self.log10p1 or data.log_transformed) else data.transform,
            obs={k: v.copy() for k, v in data.obs.items()}, var=var,
        )

    def to_dict(self) -> dict:
        """JSON-serialisable description (config, gene names, means, variances)."""
        return {
            "kind": "factembed.FittedPreprocessing",
            "version": 1,
            **self.config.to_dict(),
            "genes": [str(g) for g in self.genes.tolist()],
            "means": [float(v) for v in self.means.tolist()],
            "variances": None if self.variances is None else [float(v) for v in self.variances.tolist()],
            "n_input_genes": None if self.n_input_genes is None else int(self.n_input_genes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FittedPreprocessing":
        try:
            config = Preprocessing(
                log10p1=bool(d["log10p1"]),
                protein_coding_only=bool(d.get("protein_coding_only", True)),
                drop_constant=bool(d.get("drop_constant", True)),
                top_variable=d.get("top_variable"),
            )
            return cls(genes=np.array(d["genes"], dtype=str), means=np.array(d["means"], dtype=np.float64),
                       config=config,
                       variances=None if d.get("variances") is None else np.array(d["variances"], dtype=np.float64),
                       n_input_genes=d.get("n_input_genes"))
        except KeyError as exc:
            raise ValueError(f"preprocessing dict lacks key {exc.args[0]!r}") from None
