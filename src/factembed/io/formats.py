"""Format detection and the dispatch of :func:`read_expression` /
:func:`write_expression` to the per-format readers and writers.

:data:`READERS` maps a format name to its reader, called as
``reader(path, *, gz, samples_as_rows, label_column, chunk_rows)``;
:data:`WRITERS` maps a format name to its writer, called as
``writer(tmp, data)`` (text formats also get ``gz=`` and ``target=``, the final
path, for messages).  The writer fills the temporary file of
:func:`factembed._utils.files.atomic_output`.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable

from .._utils.files import atomic_output
from ..errors import FEInputError
from ._data import ExpressionData, _check_data
from ._paths import _check_input_file, _is_gzip, _split_ext
from .anndata import _read_h5ad, _write_h5ad
from .arrays import _read_npy, _read_npz, _read_parquet, _write_npz
from .hdf5 import _read_h5, _write_h5
from .labels import read_sample_labels
from .text import _read_text, _write_text

_EXT_FORMATS = {
    ".h5": "h5", ".hdf5": "h5", ".hdf": "h5", ".he5": "h5",
    ".h5ad": "h5ad",
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".xena": "tsv",
    ".npy": "npy", ".npz": "npz",
    ".parquet": "parquet", ".pq": "parquet",
}
_FMT_ALIASES = {"hdf5": "h5", "hdf": "h5", "tcga": "h5", "anndata": "h5ad", "pq": "parquet", "tab": "tsv"}
_TEXT_FORMATS = {"csv", "tsv", "txt"}


def _detect_format(path: str, fmt: str | None) -> tuple[str, bool]:
    """``(format, gzipped)`` of ``path``: from ``fmt`` when given (aliases such as
    ``"hdf5"`` accepted; gzip sniffed from the content), else from the extension."""
    ext, gz = _split_ext(path)
    if fmt is not None:
        f = str(fmt).lower().lstrip(".")
        f = _FMT_ALIASES.get(f, f)
        if f not in set(_EXT_FORMATS.values()):
            raise FEInputError(f"unknown format {fmt!r}; use one of h5, h5ad, csv, tsv, txt, npy, npz, parquet", path)
        if f not in _TEXT_FORMATS:
            gz = False
        return f, gz or _is_gzip(path)
    f = _EXT_FORMATS.get(ext)
    if f is None:
        raise FEInputError(
            f"unknown file extension {ext or '(none)'!r}; expected .h5/.hdf5, .h5ad, .csv, .tsv, .txt "
            "(optionally .gz), .npy, .npz or .parquet, or pass fmt=",
            path,
        )
    if gz and f not in _TEXT_FORMATS:
        raise FEInputError(f"gzip-compressed {ext} files are not supported; decompress it first", path)
    return f, gz


# --------------------------------------------------------------------------
# readers and writers by format
# --------------------------------------------------------------------------


def _h5(path, *, gz, samples_as_rows, label_column, chunk_rows):
    return _read_h5(path, samples_as_rows, chunk_rows)


def _h5ad(path, *, gz, samples_as_rows, label_column, chunk_rows):
    return _read_h5ad(path, label_column, chunk_rows)


def _table(path, *, sep, gz, samples_as_rows, label_column, chunk_rows):
    return _read_text(
        path,
        sep=sep,
        gz=gz,
        samples_as_rows=True if samples_as_rows is None else bool(samples_as_rows),
        label_column=label_column,
        chunk_rows=chunk_rows,
    )


def _npy(path, *, gz, samples_as_rows, label_column, chunk_rows):
    return _read_npy(path, samples_as_rows, chunk_rows)


def _npz(path, *, gz, samples_as_rows, label_column, chunk_rows):
    return _read_npz(path)


def _parquet(path, *, gz, samples_as_rows, label_column, chunk_rows):
    return _read_parquet(path, samples_as_rows, label_column)


#: Reader by format: ``reader(path, *, gz, samples_as_rows, label_column, chunk_rows)``.
READERS: dict[str, Callable[..., ExpressionData]] = {
    "h5": _h5,
    "h5ad": _h5ad,
    "csv": partial(_table, sep=","),
    "tsv": partial(_table, sep="\t"),
    "txt": partial(_table, sep=None),  # delimiter sniffed from the header
    "npy": _npy,
    "npz": _npz,
    "parquet": _parquet,
}

#: Writer by format: ``writer(tmp, data)``; text writers also take ``gz=`` and ``target=``.
WRITERS: dict[str, Callable[..., None]] = {
    "h5": _write_h5,
    "h5ad": _write_h5ad,
    "npz": _write_npz,
    "csv": partial(_write_text, sep=","),
    "tsv": partial(_write_text, sep="\t"),
    "txt": partial(_write_text, sep="\t"),
}


# --------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------


def read_expression(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    samples_as_rows: bool | None = None,
    label_column: str | None = None,
    labels_path: str | os.PathLike | None = None,
    chunk_rows: int = 4096,
) -> ExpressionData:
    """Read an expression matrix into an :class:`ExpressionData`.

    Parameters
    ----------
    path:
        The file.  Its format is taken from the extension unless ``fmt`` is
        given: ``.h5``/``.hdf5`` (TCGA style: datasets ``data``, ``samples``,
        ``genes``, optional ``labels``, ``biotypes``), ``.h5ad`` (AnnData),
        ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``), ``.npy``, ``.npz``
        (keys ``X``, ``samples``, ``genes``, optional ``labels``,
        ``biotypes``), ``.parquet`` (needs pyarrow).
    fmt:
        Force a format: ``"h5"``, ``"h5ad"``, ``"csv"``, ``"tsv"``, ``"txt"``,
        ``"npy"``, ``"npz"`` or ``"parquet"``.
    samples_as_rows:
        Orientation.  Text tables: ``True`` (default) means one sample per
        row; ``False`` one gene per row.  HDF5: ``None`` detects it from the
        lengths of ``samples`` / ``genes``, ``True`` / ``False`` force it.
        Ignored for ``.h5ad``, ``.npz``; for ``.npy`` / ``.parquet``
        ``False`` transposes.
    label_column:
        Column holding the labels: a column of a samples-as-rows table, an
        ``obs`` column of an ``.h5ad``, or a column of ``labels_path``.  When
        not given, a column / obs key named ``"label"`` is used if present.
    labels_path:
        A separate CSV/TSV of sample metadata (first column = sample id) from
        which ``label_column`` is taken, aligned by sample id.
    chunk_rows:
        Upper bound on the rows read per chunk.

    Text tables: surrounding whitespace of names is stripped; ``NA``,
    ``N/A``, ``NULL``, ``nan`` and empty cells are read as NaN (which
    :class:`Preprocessing` then rejects, naming sample and gene).
    """
    path = os.fspath(path)
    _check_input_file(path)
    kind, gz = _detect_format(path, fmt)
    explicit_label = label_column if labels_path is None else None
    reader = READERS.get(kind)
    if reader is None:  # pragma: no cover - _detect_format guards this
        raise FEInputError(f"unsupported format {kind!r}", path)
    data = reader(path, gz=gz, samples_as_rows=samples_as_rows, label_column=explicit_label,
                  chunk_rows=chunk_rows)
    if labels_path is not None:
        data.labels = read_sample_labels(labels_path, data.samples, label_column)
    return data


def writer_format(path: str | os.PathLike) -> tuple[str, bool]:
    """``(format, gzipped)`` that :func:`write_expression` writes ``path`` in, from its
    extension; :class:`FEInputError` when no writer exists for it (e.g. ``.npy``,
    ``.parquet``), so a caller can check an output path before doing the work."""
    path = os.fspath(path)
    ext, gz = _split_ext(path)
    kind = _EXT_FORMATS.get(ext)
    if kind not in WRITERS or (gz and kind not in _TEXT_FORMATS):
        raise FEInputError(
            f"cannot write extension {ext + ('.gz' if gz else '')!r}; use .h5, .h5ad, .csv, .tsv (optionally .gz) or .npz",
            path,
        )
    return kind, gz


def write_expression(path: str | os.PathLike, data: ExpressionData) -> None:
    """Write ``data`` atomically; the format follows the extension.

    ``.h5``/``.hdf5`` (TCGA style: ``data`` samples x genes, ``samples``,
    ``genes``, ``labels``, ``biotypes``), ``.h5ad`` (AnnData; labels in
    ``obs["label"]``, biotypes in ``var["biotype"]``), ``.csv``/``.tsv``
    (optionally ``.gz``; samples as rows, a ``label`` column after the id
    column when there are labels; biotypes are not stored) or ``.npz``.
    Values are written so that they read back bit-identical as ``float32``.
    """
    data = _check_data(data)
    path = os.fspath(path)
    kind, gz = writer_format(path)
    writer = WRITERS[kind]
    with atomic_output(path) as tmp:
        if kind in _TEXT_FORMATS:
            writer(tmp, data, gz=gz, target=path)
        else:
            writer(tmp, data)
