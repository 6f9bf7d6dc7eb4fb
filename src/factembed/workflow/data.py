"""Reading and preparing data for a fit or for a fitted model (in memory and backed)."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import FEInputError, FEWarning, MissingColumnError
from .requests import Echo, FitRequest, PreprocessingOptions, ReadOptions, _quiet


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

def read_data(path: str, read: ReadOptions | None = None):
    """The :class:`~factembed.io.ExpressionData` of ``path`` (``"demo"``: the bundled HSMM data)."""
    read = read or ReadOptions()
    if path == "demo":
        from ..datasets import load_demo
        return load_demo()
    from ..io import read_expression
    return read_expression(path, fmt=read.fmt, samples_as_rows=read.samples_as_rows,
                           label_column=read.label_column, labels_path=read.labels_path)


def covariate_columns(names, data, labels_path: str | None) -> dict:
    """The covariate columns ``names`` for the samples of ``data`` (an
    :class:`~factembed.io.ExpressionData`): from the ``labels_path`` table when given, else
    from the data's own per-sample columns (an ``.h5ad``'s obs).  A name is ``COLUMN`` or
    ``COLUMN:categorical`` / ``COLUMN:numeric``; without a kind, a column whose every value
    reads as a number is numeric (write ``batch:categorical`` for batches numbered 1, 2, 3).
    Empty cells and ``NA`` are missing values."""
    if labels_path is not None:
        from ..io.labels import read_sample_table
        table, where = read_sample_table(labels_path, data.samples), labels_path
    else:
        table, where = dict(getattr(data, "obs", None) or {}), data.source or "the data file"
    out = {}
    for spec in names:
        name, _, kind = str(spec).rpartition(":") if str(spec).endswith((":categorical", ":numeric")) \
            else (str(spec), "", "")
        if name not in table:
            raise FEInputError(f"no per-sample column {name!r} for the covariate (columns: "
                               f"{', '.join(map(str, list(table)[:10])) or 'none'})", where,
                               hint="pass covariates= with that column",
                               cli_hint="pass --labels FILE holding that column (first column: sample ids)")
        col = np.asarray(table[name], dtype=object)
        col = np.array([None if v is None or str(v) in ("", "NA", "nan") else v for v in col.tolist()], dtype=object)
        try:
            num = np.array([float(v) for v in col.tolist() if v is not None])
            numeric = len(num) == len(col) and not isinstance(col[0], (bool, np.bool_))
        except (TypeError, ValueError):
            numeric = False
        if kind == "numeric" and not numeric:
            raise FEInputError(f"covariate {name!r} is declared numeric but holds values that are not numbers",
                               where)
        if kind == "categorical":
            numeric = False
            col = np.array([None if v is None else str(v) for v in col.tolist()], dtype=object)
        out[name] = num if numeric else col
    return out


def labels_covariates(request, samples) -> dict | None:
    """The request's ``--covariate`` columns from its ``--labels`` table, for ``samples``
    (the backed and data-parallel fits, which hold no per-sample columns of their own);
    ``None`` without covariates."""
    if not request.covariates:
        return None
    rows = SimpleNamespace(samples=samples, obs=None, source=request.data)
    return covariate_columns(request.covariates, rows, request.read.labels_path)


def model_covariates(fe, data, read: ReadOptions | None) -> dict | None:
    """The columns of the covariates ``fe`` was fitted with, for the samples of ``data``
    (:func:`covariate_columns`, each with its kind in the model); ``None`` for a model
    without covariates."""
    spec = getattr(fe, "covariates_", None)
    if spec is None:
        return None
    return covariate_columns([f"{c.name}:{c.kind}" for c in spec.covariates], data,
                             read.labels_path if read else None)


def load_model(path: str | os.PathLike):
    """``(estimator, fitted preprocessing or None, extra dict)`` of a model directory."""
    from ..estimator.factorized_embeddings import FactorizedEmbeddings
    from ..preprocessing import FittedPreprocessing

    fe = FactorizedEmbeddings.load(path)
    extra = getattr(fe, "extra_", None) or {}
    pre = FittedPreprocessing.from_dict(extra["preprocessing"]) if extra.get("preprocessing") else None
    return fe, pre, extra


#: values of ``fill_missing`` (genes absent from the file, and with "decoder" NA values)
FILL_MODES = ("decoder", "means")


def _fill_mode(fill_missing: bool | str | None) -> str | None:
    """``None`` (no filling), ``"decoder"`` or ``"means"``; ``True`` is ``"decoder"``."""
    if fill_missing is None or fill_missing is False:
        return None
    if fill_missing is True:
        return "decoder"
    if fill_missing not in FILL_MODES:
        raise ValueError(f"fill_missing must be one of {', '.join(FILL_MODES)}, got {fill_missing!r}")
    return fill_missing


def read_for_model(path: str, read: ReadOptions | None, fe, pre, *, fill_missing: bool | str = False):
    """``path`` read (:func:`read_new_data`) and brought to the model's genes
    (:func:`prepare_for_model`)."""
    return prepare_for_model(read_new_data(path, read, fe), fe, pre, fill_missing=fill_missing)


def read_new_data(path: str, read: ReadOptions | None, fe):
    """New samples for a fitted model, read from ``path``.

    Without a label column in ``read``, the column the model was fitted with (recorded
    in the model) is taken as the labels when the file has it, so that it is not read
    as a gene."""
    read = read or ReadOptions()
    fitted_with = ((getattr(fe, "extra_", None) or {}).get("label_column"))
    data = None
    if read.label_column is None and read.labels_path is None and fitted_with and path != "demo":
        try:
            data = read_data(path, replace(read, label_column=fitted_with))
        except MissingColumnError:
            data = None                  # the new file has no such column: read it as it is
    if data is None:
        data = read_data(path, read)
    warn_orientation(data.samples, data.genes, data.shape, data.source, read)
    return data


def prepare_for_model(data, fe, pre, *, fill_missing: bool | str = False):
    """``data`` brought to the model's genes: its recorded preprocessing re-applied
    (genes matched by name), or the gene count checked.  ``fill_missing``: ``"means"``
    fills the genes the data lack with their training means; ``"decoder"`` (or ``True``)
    leaves them, and the data's NA values, as NaN (missing values, which inference
    leaves out); otherwise both are errors."""
    mode = _fill_mode(fill_missing)
    if pre is not None:
        if mode == "decoder":
            _check_some_genes(data, pre)
            return pre.apply(data, fill_missing="nan", allow_nan=True)
        return pre.apply(data, fill_missing=mode == "means")
    if data.n_genes != fe.n_features_in_:
        raise FEInputError(f"{data.n_genes} genes but the model has {fe.n_features_in_}", data.source)
    return data


def drop_constant_samples(data, what: str = "training"):
    """``data`` without the samples whose profile is constant (e.g. all zero), with a
    warning naming how many and the first (they carry nothing to embed)."""
    if data.n_genes < 2:
        return data
    step = max(1, (1 << 22) // data.n_genes)
    empty = np.concatenate([~np.any(data.X[a:a + step] != data.X[a:a + step, :1], axis=1)
                            for a in range(0, data.n_samples, step)])
    if empty.any():
        warnings.warn(f"{data.source or 'data'}: {int(empty.sum())} sample(s) have a constant (e.g. all-zero) "
                      f"profile and were left out of {what} (first: {data.samples[empty][0]})", stacklevel=2)
        data = data.subset_samples(np.flatnonzero(~empty))
    return data


def warn_orientation(samples, genes, shape, source, read: ReadOptions | None) -> None:
    """Warn (:class:`FEWarning`) when the matrix looks genes x samples, unless the
    orientation was given explicitly."""
    from ..io.orientation import orientation_problem

    if read is not None and read.samples_as_rows is not None:
        return
    problem = orientation_problem(samples, genes, shape)
    if problem is not None:
        warnings.warn(FEWarning(f"{source or 'data'}: read as {shape[0]:,} samples x {shape[1]:,} genes, but "
                                f"{problem}",
                                hint="if its rows are genes, read it with ReadOptions(samples_as_rows=False)",
                                cli_hint="if its rows are genes, use --samples-as-columns"), stacklevel=2)


def prepare_in_memory(request: FitRequest, echo: Echo = _quiet):
    """Read, check and preprocess the request's data: ``(fitted preprocessing, data)``."""
    data = read_data(request.data, request.read)
    if request.data != "demo":
        warn_orientation(data.samples, data.genes, data.shape, data.source, request.read)
    already_log = data.transform == "log10p1"
    if request.data == "demo":   # the bundled demo is stored on the log scale, all genes kept
        pre = PreprocessingOptions(log10p1=False, protein_coding_only=False, drop_constant=True,
                                   top_variable=request.preprocessing.top_variable).resolve(True)
    else:
        pre = request.preprocessing.resolve(already_log)
    fitted, data = pre.fit_apply(data, copy=False,     # one copy of the matrix in memory
                                 allow_nan=request.missing == "ignore")
    data = drop_constant_samples(data)
    return fitted, data


# --------------------------------------------------------------------------------------
# backed data: one statistics pass, the same gene selection
# --------------------------------------------------------------------------------------

def open_backed(request: FitRequest):
    """The request's file as a backed row source, and whether log10(x + 1) is applied
    to each block as it is read."""
    from ..sources import open_source, stored_as_log

    unsupported = [opt for opt, on in (("--samples-as-columns", request.read.samples_as_rows is False),
                                       ("--labels", request.read.labels_path is not None
                                        and not request.covariates)) if on]
    if unsupported:
        raise FEInputError(f"{', '.join(unsupported)} cannot be combined with --backed (backed training "
                           "streams the file as stored: write it samples x genes with the labels inside; "
                           "--labels with --backed supplies only the --covariate columns)", request.data)
    options: dict[str, Any] = {}
    if request.read.label_column:
        options["label_column"] = request.read.label_column
    source = open_source(request.data, fmt=request.read.fmt, log10p1=False, **options)
    log = request.preprocessing.log10p1
    if log is None:
        log = not stored_as_log(source)
    source.log10p1 = bool(log)
    source.allow_nan = request.missing == "ignore"
    return source, bool(log)


def select_from_stats(source, stats, preprocessing: PreprocessingOptions, log: bool):
    """The :class:`~factembed.preprocessing.FittedPreprocessing` of a backed source from its
    per-gene statistics: the same gene selection an in-memory fit makes."""
    from ..preprocessing import Preprocessing
    pre = Preprocessing(log10p1=log, protein_coding_only=preprocessing.protein_coding_only,
                        drop_constant=preprocessing.drop_constant, top_variable=preprocessing.top_variable)
    m = source.shape[1]
    genes = source.genes if source.genes is not None else np.array([f"gene_{j}" for j in range(m)])
    return pre.fit_from_stats(genes, stats.mean, stats.var, stats.n, getattr(source, "biotypes", None),
                              vmin=stats.min, vmax=stats.max, source=source.path)


def prepare_backed(request: FitRequest, echo: Echo = _quiet, progress: bool = False):
    """Open the request's file backed, check every value and gather per-gene
    statistics in one pass, and choose the genes: ``(source restricted to the kept
    genes, fitted preprocessing, kept column numbers, statistics)``."""
    source, log = open_backed(request)
    n, m = source.shape
    warn_orientation(source.samples, source.genes, source.shape, request.data, request.read)
    echo(f"backed training on {n:,} samples x {m:,} genes from {request.data} "
         f"({'log10(x+1) applied per block' if log else 'values used as stored'}); "
         "checking all values and gathering gene statistics in one pass ...")
    stats = source.gene_stats(progress=progress)
    fitted = select_from_stats(source, stats, request.preprocessing, log)
    columns = _kept_columns(source, fitted)
    warn_constant_rows(source, stats)
    return source, fitted, columns, stats


def _kept_columns(source, fitted) -> np.ndarray:
    m = source.shape[1]
    genes = source.genes if source.genes is not None else np.array([f"gene_{j}" for j in range(m)])
    pos = {str(g): j for j, g in enumerate(genes)}
    return np.array([pos[str(g)] for g in fitted.genes], dtype=np.int64)


def warn_constant_rows(source, stats) -> None:
    rows = np.sort(stats.constant_rows)
    if rows.size:
        first = source.samples[rows[0]] if source.samples is not None else f"row {rows[0]}"
        warnings.warn(f"{source.path or 'data'}: {rows.size} sample(s) have a constant (e.g. all-zero) profile; "
                      f"backed training keeps them (first: {first}): their embedding carries no information, "
                      "leave them out when writing the file", stacklevel=2)


def _check_some_genes(data, pre) -> None:
    """An error when ``data`` has none of the model's genes (by name): every value would
    be missing (e.g. a file without gene names, such as ``.npy``)."""
    if len(pre.absent_genes(data)) == pre.n_genes:
        raise FEInputError(f"none of the model's {pre.n_genes:,} genes is in the data (the model's first: "
                           f"{', '.join(map(str, pre.genes[:3]))}; the data's first: "
                           f"{', '.join(map(str, data.genes[:3]))}); genes are matched by name", data.source)
