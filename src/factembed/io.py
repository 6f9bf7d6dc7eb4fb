"""Reading, writing and preprocessing gene-expression matrices.

The in-memory representation is :class:`ExpressionData`: a dense ``float32``
C-contiguous matrix ``X`` (samples x genes) with sample names, gene names and
optional per-sample labels and per-gene biotypes.

:func:`read_expression` reads TCGA-style HDF5, AnnData ``.h5ad``, CSV/TSV
(optionally gzipped), ``.npy``/``.npz`` and (when pyarrow is installed)
``.parquet``.  Large inputs are read in row chunks straight into the final
``float32`` matrix, so peak memory stays near one copy of the matrix.

Writers (:func:`write_expression`, :func:`write_embedding_table`,
:func:`write_embedding_h5ad`) are atomic: they write a temporary file in the
destination directory, ``fsync`` it and ``os.replace`` it onto the target; on
any error the temporary file is removed, so no partial output is left behind.

:class:`Preprocessing` decides which genes to keep (protein coding, non
constant, most variable) and :class:`FittedPreprocessing` applies the same
gene selection, by name, and the ``log10(x + 1)`` transform to new data.

Every problem with input data raises :class:`factembed.errors.FEInputError`
with a one-line message naming the file, the row / sample / gene and the
problem.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._files import atomic_output as _atomic_output
from ._files import write_bytes_atomic  # noqa: F401 - re-exported, as before
from ._validation import _log10p1_inplace, _nonfinite_name, _one_line, first_bad_value
from .errors import FEInputError

__all__ = [
    "ExpressionData",
    "read_expression",
    "write_expression",
    "write_embedding_table",
    "write_embedding_h5ad",
    "Preprocessing",
    "FittedPreprocessing",
    "align_genes",
    "LABEL_KEY",
    "EMBEDDING_KEY",
]

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


def _human(n: int) -> str:
    return f"{n:,}"


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


# --------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------

_EXT_FORMATS = {
    ".h5": "h5", ".hdf5": "h5", ".hdf": "h5", ".he5": "h5",
    ".h5ad": "h5ad",
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".xena": "tsv",
    ".npy": "npy", ".npz": "npz",
    ".parquet": "parquet", ".pq": "parquet",
}
_FMT_ALIASES = {"hdf5": "h5", "hdf": "h5", "tcga": "h5", "anndata": "h5ad", "pq": "parquet", "tab": "tsv"}
_TEXT_FORMATS = {"csv", "tsv", "txt"}


def _split_ext(path: str) -> tuple[str, bool]:
    name = os.path.basename(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return os.path.splitext(name)[1], gz


def _detect_format(path: str, fmt: str | None) -> tuple[str, bool]:
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


def _is_gzip(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _check_input_file(path: str) -> None:
    if not os.path.exists(path):
        raise FEInputError("file not found", path)
    if os.path.isdir(path):
        raise FEInputError("is a directory, expected a file", path)
    if os.path.getsize(path) == 0:
        raise FEInputError("file is empty", path)


# --------------------------------------------------------------------------
# reading: public entry point
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
    if kind == "h5":
        data = _read_h5(path, samples_as_rows, chunk_rows)
    elif kind == "h5ad":
        data = _read_h5ad(path, explicit_label, chunk_rows)
    elif kind in _TEXT_FORMATS:
        sep = {"csv": ",", "tsv": "\t"}.get(kind)
        data = _read_text(
            path,
            sep=sep,
            gz=gz,
            samples_as_rows=True if samples_as_rows is None else bool(samples_as_rows),
            label_column=explicit_label,
            chunk_rows=chunk_rows,
        )
    elif kind == "npy":
        data = _read_npy(path, samples_as_rows, chunk_rows)
    elif kind == "npz":
        data = _read_npz(path)
    elif kind == "parquet":
        data = _read_parquet(path, samples_as_rows, explicit_label)
    else:  # pragma: no cover - _detect_format guards this
        raise FEInputError(f"unsupported format {kind!r}", path)
    if labels_path is not None:
        data.labels = read_sample_labels(labels_path, data.samples, label_column)
    return data


def read_sample_labels(
    path: str | os.PathLike, samples: Sequence[str], label_column: str | None = None
) -> np.ndarray:
    """Labels for ``samples`` from a metadata table (first column = sample id).

    ``label_column`` defaults to a column named ``"label"``.  Every sample must
    be present in the table (a :class:`FEInputError` lists the missing ones).
    """
    import pandas as pd

    path = os.fspath(path)
    _check_input_file(path)
    ext, gz = _split_ext(path)
    sep = "\t" if ext in (".tsv", ".tab", ".xena") else ("," if ext == ".csv" else None)
    try:
        meta = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", index_col=0,
                           dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
        raise FEInputError(f"cannot parse sample metadata table ({_one_line(exc)})", path) from None
    except pd.errors.EmptyDataError:
        raise FEInputError("sample metadata table is empty", path) from None
    if label_column is None:
        if LABEL_KEY not in meta.columns:
            raise FEInputError(
                f"no label_column given and no {LABEL_KEY!r} column; columns are {_preview(meta.columns, 8)}", path
            )
        label_column = LABEL_KEY
    if label_column not in meta.columns:
        raise FEInputError(f"no column {label_column!r}; columns are {_preview(meta.columns, 8)}", path)
    index = meta.index.astype(str)
    dup = _first_duplicate(np.asarray(index, dtype=str))
    if dup is not None:
        raise FEInputError(f"duplicated sample id {str(index[dup[1]])!r} (data rows {dup[0] + 1} and {dup[1] + 1})", path)
    col = meta[label_column]
    col.index = index
    samples = list(_to_str_array(samples).tolist())
    missing = [s for s in samples if s not in col.index]
    if missing:
        raise FEInputError(
            f"{len(missing)} of {len(samples)} samples have no row in the metadata table: {_preview(missing)}", path
        )
    values = col.loc[samples].to_numpy(dtype=object)
    values = np.array(["NA" if v is None or v == "" else str(v) for v in values], dtype=str)
    return values


# --------------------------------------------------------------------------
# reading: HDF5 (TCGA style) and AnnData
# --------------------------------------------------------------------------


def _open_h5(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FEInputError(f"not a readable HDF5 file (truncated or corrupt?): {_one_line(exc)}", path) from None


def _h5_strings(ds, path: str, what: str) -> np.ndarray:
    try:
        raw = ds[()]
    except (OSError, RuntimeError, KeyError) as exc:
        raise FEInputError(f"cannot read dataset {what!r} (truncated or corrupt?): {_one_line(exc)}", path) from None
    raw = np.asarray(raw)
    if raw.ndim == 0:
        raw = raw.reshape(1)
    if raw.ndim == 2 and 1 in raw.shape:
        raw = raw.reshape(-1)
    if raw.ndim != 1:
        raise FEInputError(f"dataset {what!r} must be 1-D, got shape {raw.shape}", path)
    return _to_str_array(raw)


def _read_h5(path: str, samples_as_rows: bool | None, chunk_rows: int) -> ExpressionData:
    import h5py

    with _open_h5(path) as f:
        try:
            for key in ("data", "samples", "genes"):
                if key not in f:
                    keys = ", ".join(sorted(f.keys())) or "none"
                    raise FEInputError(f"missing dataset {key!r} (TCGA-style HDF5 needs data, samples, genes; found {keys})", path)
            ds = f["data"]
            if not isinstance(ds, h5py.Dataset):
                raise FEInputError("'data' is a group, expected a 2-D dataset", path)
            if ds.ndim != 2:
                raise FEInputError(f"dataset 'data' must be 2-D, got shape {ds.shape}", path)
            if ds.dtype.kind not in "biuf":
                raise FEInputError(f"dataset 'data' must be numeric, got dtype {ds.dtype}", path)
            samples = _h5_strings(f["samples"], path, "samples")
            genes = _h5_strings(f["genes"], path, "genes")
            r, c = ds.shape
            ns, ng = len(samples), len(genes)
            if samples_as_rows is None:
                if (r, c) == (ns, ng):
                    rows_are_samples = True
                elif (r, c) == (ng, ns):
                    rows_are_samples = False
                else:
                    raise FEInputError(
                        f"data has shape {ds.shape} but there are {ns} samples and {ng} genes", path
                    )
            else:
                rows_are_samples = bool(samples_as_rows)
                want = (ns, ng) if rows_are_samples else (ng, ns)
                if (r, c) != want:
                    orient = "samples x genes" if rows_are_samples else "genes x samples"
                    raise FEInputError(
                        f"data has shape {ds.shape}, expected {want} ({orient}) for {ns} samples and {ng} genes", path
                    )
            X = np.empty((ns, ng), dtype=np.float32)
            step = _chunk_rows(c, chunk_rows)
            try:
                for a in range(0, r, step):
                    b = min(r, a + step)
                    block = ds[a:b]
                    if rows_are_samples:
                        X[a:b] = block
                    else:
                        X[:, a:b] = block.T
            except (OSError, RuntimeError) as exc:
                raise FEInputError(f"cannot read dataset 'data' rows {a}-{b} (truncated or corrupt?): {_one_line(exc)}", path) from None
            labels = _h5_strings(f["labels"], path, "labels") if "labels" in f else None
            biotypes = _h5_strings(f["biotypes"], path, "biotypes") if "biotypes" in f else None
            transform = f.attrs.get("transform")
            if isinstance(transform, bytes):
                transform = transform.decode()
            obs = _h5_annotations(f, "obs", path)
            var = _h5_annotations(f, "var", path)
        except KeyError as exc:  # h5py raises KeyError for broken links
            raise FEInputError(f"cannot read HDF5 content (corrupt?): {_one_line(exc)}", path) from None
    return ExpressionData(X, samples, genes, labels, biotypes, source=path,
                          transform=str(transform) if transform else None, obs=obs, var=var)


def _h5_annotations(f, group: str, path: str) -> dict:
    import h5py

    out: dict = {}
    g = f.get(group)
    if not isinstance(g, h5py.Group):
        return out
    for k, ds in g.items():
        if isinstance(ds, h5py.Dataset):
            if ds.dtype.kind in "biuf":
                out[k] = np.asarray(ds[()])
            else:
                out[k] = _h5_strings(ds, path, f"{group}/{k}")
    return out


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
                X = _read_h5ad_matrix(f["X"], len(samples), len(genes), path, chunk_rows)
                uns = f.get("uns")
                transform = None
                if isinstance(uns, h5py.Group) and "factembed_transform" in uns:
                    t = uns["factembed_transform"][()]
                    transform = t.decode() if isinstance(t, bytes) else str(t)
        except KeyError as exc:
            raise FEInputError(f"cannot read AnnData content (corrupt?): {_one_line(exc)}", path) from None
    if legacy:
        return _read_h5ad_with_anndata(path, label_column, chunk_rows)
    return _finish_anndata(path, X, samples, genes, obs, var, label_column, transform)


def _finish_anndata(path, X, samples, genes, obs, var, label_column, transform) -> ExpressionData:
    labels = None
    if label_column is not None:
        if label_column not in obs:
            raise FEInputError(f"obs has no column {label_column!r}; columns are {_preview(sorted(obs), 8)}", path)
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
            raise FEInputError(f"cannot read X rows {a}-{b} (truncated or corrupt?): {_one_line(exc)}", path) from None
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
        raise FEInputError(f"cannot read sparse X (truncated or corrupt?): {_one_line(exc)}", path) from None
    return X


def _read_h5ad_with_anndata(path: str, label_column: str | None, chunk_rows: int) -> ExpressionData:
    """Fallback for old AnnData layouts: anndata in backed mode, X read in row chunks."""
    import anndata

    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as exc:  # anndata raises many types for bad files
        raise FEInputError(f"cannot read AnnData file: {_one_line(exc)}", path) from None
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


# --------------------------------------------------------------------------
# reading: text tables
# --------------------------------------------------------------------------


def _open_binary(path: str, gz: bool):
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _parse_fields(line: str, sep: str) -> list[str]:
    return next(csv.reader([line], delimiter=sep))


@dataclass
class _TableScan:
    header: list[str]
    ids: list[str]
    sep: str
    n_cols: int
    header_has_index: bool


def _scan_text(path: str, sep: str | None, gz: bool) -> _TableScan:
    """First pass over a text table: header, row ids, field counts.

    Rejects empty files, ragged rows (naming the line), blank lines inside
    the table and empty ids.  Runs at the speed of reading the file.
    """
    try:
        with _open_binary(path, gz) as fh:
            first = fh.readline()
            while first.strip() == b"" and first:
                first = fh.readline()
            if not first:
                raise FEInputError("file is empty (no header line)", path)
            try:
                head_text = first.decode("utf-8-sig").rstrip("\r\n")
            except UnicodeDecodeError:
                raise FEInputError("line 1 is not valid UTF-8 text (binary file?)", path) from None
            if sep is None:
                sep = "\t" if "\t" in head_text else ","
            header = _parse_fields(head_text, sep)
            sepb = sep.encode()
            ids: list[str] = []
            n_cols: int | None = None
            header_has_index = True
            blank_at: int | None = None
            lineno = 1
            for raw in fh:
                lineno += 1
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    if blank_at is None:
                        blank_at = lineno
                    continue
                if blank_at is not None:
                    raise FEInputError(f"line {blank_at} is empty (blank line inside the table)", path)
                q = line.count(b'"')
                if q == 0:
                    nf = line.count(sepb) + 1
                    first_field = line.split(sepb, 1)[0]
                elif q == 2 and line.startswith(b'"'):
                    end = line.find(b'"', 1)
                    first_field = line[1:end]
                    nf = line[end + 1:].count(sepb) + 1
                else:
                    fields = _parse_fields(line.decode("utf-8", "replace"), sep)
                    nf = len(fields)
                    first_field = fields[0].encode() if fields else b""
                if n_cols is None:
                    # R's write.table omits the name of the id column in the header.
                    if nf == len(header) + 1:
                        header = [""] + header
                        header_has_index = False
                    n_cols = len(header)
                if nf != n_cols:
                    raise FEInputError(
                        f"line {lineno} has {nf} fields, expected {n_cols} like the header (ragged row)", path
                    )
                try:
                    rid = first_field.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise FEInputError(f"line {lineno}: id is not valid UTF-8", path) from None
                if rid == "":
                    raise FEInputError(f"line {lineno} has an empty id in the first column", path)
                ids.append(rid)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FEInputError(f"corrupt or truncated gzip stream: {_one_line(exc)}", path) from None
    except OSError as exc:
        raise FEInputError(f"cannot read file: {_one_line(exc)}", path) from None
    if not ids:
        raise FEInputError("no data rows below the header", path)
    if len(header) < 2:
        raise FEInputError(f"header has {len(header)} field(s); expected an id column and at least one data column "
                           f"(wrong delimiter {sep!r}?)", path)
    return _TableScan(header=[h.strip() for h in header], ids=ids, sep=sep, n_cols=len(header),
                      header_has_index=header_has_index)


def _read_text(
    path: str,
    *,
    sep: str | None,
    gz: bool,
    samples_as_rows: bool,
    label_column: str | None,
    chunk_rows: int,
    keep_columns: np.ndarray | None = None,
    duplicate_rows: str = "error",
    drop_rows_with_missing: bool = False,
    stats: dict | None = None,
) -> ExpressionData:
    """Read a CSV/TSV table (see :func:`read_expression`).

    Internal options (used by the TCGA fetcher): ``keep_columns`` (bool mask
    over the data columns) parses only those columns; ``duplicate_rows="first"``
    keeps the first of rows with the same id; ``drop_rows_with_missing``
    skips rows with NaN cells.  ``stats`` (a dict) receives the counts of rows
    read, duplicated rows and rows dropped for missing values.
    """
    scan = _scan_text(path, sep, gz)
    sep = scan.sep
    names = scan.header[1:]
    col_pos = np.arange(1, scan.n_cols)  # positions in the file of the data columns
    label_pos = None
    if label_column is None and samples_as_rows and LABEL_KEY in names:
        label_column = LABEL_KEY
    if label_column is not None:
        if not samples_as_rows:
            raise FEInputError("label_column inside the table needs samples as rows; use labels_path", path)
        if label_column not in names:
            raise FEInputError(f"no column {label_column!r} in the header", path)
        j = names.index(label_column)
        label_pos = int(col_pos[j])
        keep_mask = np.ones(len(names), dtype=bool)
        keep_mask[j] = False
        names = [n for n, k in zip(names, keep_mask) if k]
        col_pos = col_pos[keep_mask]
        if keep_columns is not None:
            keep_columns = np.asarray(keep_columns, bool)[keep_mask]
    if keep_columns is not None:
        keep_columns = np.asarray(keep_columns, dtype=bool)
        names = [n for n, k in zip(names, keep_columns) if k]
        col_pos = col_pos[keep_columns]
    col_names = np.array(names, dtype=str)
    dup = _first_duplicate(col_names)
    what_col, what_row = ("gene", "sample") if samples_as_rows else ("sample", "gene")
    if dup is not None:
        raise FEInputError(
            f"duplicated {what_col} name {str(col_names[dup[1]])!r} in the header (columns {dup[0] + 2} and {dup[1] + 2})", path
        )
    if any(n == "" for n in names):
        j = names.index("")
        raise FEInputError(f"header column {j + 2} has an empty {what_col} name", path)

    ids = np.array(scan.ids, dtype=str)
    keep_rows = np.ones(len(ids), dtype=bool)
    dup = _first_duplicate(ids)
    if dup is not None:
        if duplicate_rows == "first":
            seen: set = set()
            for i, s in enumerate(scan.ids):
                if s in seen:
                    keep_rows[i] = False
                seen.add(s)
        else:
            line_a = dup[0] + 2
            line_b = dup[1] + 2
            raise FEInputError(f"duplicated {what_row} name {str(ids[dup[1]])!r} (lines {line_a} and {line_b})", path)
    n_out = int(keep_rows.sum())
    n_data = len(col_pos)
    if samples_as_rows:
        X = np.empty((n_out, n_data), dtype=np.float32)
    else:
        X = np.empty((n_data, n_out), dtype=np.float32)
    labels = np.empty(n_out, dtype=object) if label_pos is not None else None
    data_cols = [int(p) for p in col_pos.tolist()]
    step = _chunk_rows(n_data, chunk_rows)
    k = 0  # next output row
    r0 = 0  # data rows consumed so far
    na_fix = _na_fixer(sep)
    try:
        with _open_text(path, gz) as fh:
            fh.readline()  # header
            while True:
                batch = []
                for line in fh:
                    line = line.rstrip("\r\n")
                    if not line.strip():
                        continue  # only trailing blank lines reach here (checked by the scan)
                    batch.append(line)
                    if len(batch) >= step:
                        break
                if not batch:
                    break
                r1 = r0 + len(batch)
                if r1 > len(ids):
                    raise FEInputError("table has more rows than the first pass counted (multi-line quoted fields "
                                       "are not supported)", path)
                block = _parse_numeric_lines(batch, na_fix, sep, data_cols, path, r0, scan.header, scan.ids,
                                             what_row, what_col)
                if drop_rows_with_missing:
                    bad = ~np.isfinite(block).all(axis=1)
                    if bad.any():
                        keep_rows[r0:r1] &= ~bad
                sel = keep_rows[r0:r1]
                n_sel = int(sel.sum())
                if n_sel:
                    part = block[sel] if n_sel != len(sel) else block
                    if samples_as_rows:
                        X[k:k + n_sel] = part
                    else:
                        X[:, k:k + n_sel] = part.T
                    if labels is not None:
                        labs = [_split_line(line, sep)[label_pos] for line in batch]
                        labels[k:k + n_sel] = np.asarray(labs, dtype=object)[sel]
                    k += n_sel
                r0 = r1
    except FEInputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FEInputError(f"corrupt or truncated gzip stream: {_one_line(exc)}", path) from None
    except UnicodeDecodeError as exc:
        raise FEInputError(f"not valid UTF-8 text: {_one_line(exc)}", path) from None
    except OSError as exc:
        raise FEInputError(f"cannot read file: {_one_line(exc)}", path) from None
    if r0 != len(ids):
        raise FEInputError(f"parsed {r0} data rows but the first pass counted {len(ids)} (multi-line quoted "
                           "fields are not supported)", path)
    kept_ids = ids[keep_rows]
    if stats is not None:
        stats["rows"] = len(ids)
        stats["duplicate_rows"] = len(ids) - n_out
        stats["missing_rows"] = n_out - k
    if k < n_out:  # rows dropped while parsing (missing values)
        if samples_as_rows:
            X.resize((k, n_data), refcheck=False)
        else:
            mask = np.zeros(n_out, dtype=bool)
            mask[:k] = True
            X = _compact_columns_inplace(X, mask)
        if labels is not None:
            labels = labels[:k]
    if samples_as_rows:
        samples, genes = kept_ids, col_names
    else:
        samples, genes = col_names, kept_ids
    if labels is not None:
        labels = np.array(["NA" if v.strip() in _NA_TOKENS else v.strip() for v in labels.tolist()], dtype=str)
    return ExpressionData(X, samples, genes, labels, None, source=path)


# Tokens read as missing values (NaN) in text tables, besides nan / NaN.
_NA_TOKENS = frozenset({"", "NA", "N/A", "NULL", "null", "NaN", "nan", "#N/A"})


def _open_text(path: str, gz: bool):
    if gz:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, "rt", encoding="utf-8-sig", newline="")


def _split_line(line: str, sep: str) -> list[str]:
    if '"' in line:
        return _parse_fields(line, sep)
    return line.split(sep)


def _na_fixer(sep: str):
    """A function rewriting missing-value tokens (NA, empty, ...) of a line to ``nan``."""
    import re

    s = re.escape(sep)
    tokens = "|".join(re.escape(t) for t in sorted(_NA_TOKENS - {"nan", "NaN", ""}, key=len, reverse=True))
    pattern = re.compile(rf'(?<={s})(?:{tokens}|"(?:{tokens})"|)(?={s}|$)')
    probes = [t for t in _NA_TOKENS if t not in ("", "nan", "NaN")]
    double = sep + sep

    def fix(line: str) -> str:
        if double in line or line.endswith(sep) or any(t in line for t in probes):
            return pattern.sub("nan", line)
        return line

    return fix


def _parse_numeric_lines(batch: list[str], na_fix, sep: str, data_cols: list[int], path: str, r0: int,
                         header: list[str], ids: list[str], what_row: str, what_col: str) -> np.ndarray:
    """float32 values of the data columns of ``batch``; a non-numeric cell raises naming line and column."""
    fixed = [na_fix(line) for line in batch]
    if not data_cols:
        return np.empty((len(batch), 0), dtype=np.float32)
    try:
        return np.loadtxt(fixed, delimiter=sep, usecols=data_cols, dtype=np.float32, quotechar='"',
                          comments=None, ndmin=2)
    except ValueError:
        pass
    # error path: find the first offending cell for a precise message
    for i, line in enumerate(fixed):
        fields = _split_line(line, sep)
        for p in data_cols:
            value = fields[p].strip() if p < len(fields) else ""
            try:
                float(value)
            except ValueError:
                orig = _split_line(batch[i], sep)
                shown = orig[p] if p < len(orig) else value
                raise FEInputError(
                    f"line {r0 + i + 2} ({what_row} {str(ids[r0 + i])!r}), column {p + 1} ({what_col} {header[p]!r}): "
                    f"non-numeric value {shown!r}", path
                ) from None
    raise FEInputError(f"cannot parse numbers in lines {r0 + 2}-{r0 + len(batch) + 1}", path)  # pragma: no cover


# --------------------------------------------------------------------------
# reading: numpy and parquet
# --------------------------------------------------------------------------


def _read_npy(path: str, samples_as_rows: bool | None, chunk_rows: int) -> ExpressionData:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FEInputError(f"not a readable .npy file (truncated or corrupt?): {_one_line(exc)}", path) from None
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
        raise FEInputError(f"not a readable .npz file (truncated or corrupt?): {_one_line(exc)}", path) from None

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
        raise FEInputError(f"corrupt .npz archive: {_one_line(exc)}", path) from None
    except ValueError as exc:
        if isinstance(exc, FEInputError):
            raise
        raise FEInputError(f"cannot load array from .npz (object arrays are not allowed): {_one_line(exc)}", path) from None
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
        raise FEInputError(f"cannot read parquet file: {_one_line(exc)}", path) from None
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
            raise FEInputError(f"no column {label_column!r}", path)
        labels = _to_str_array(df.pop(label_column).to_numpy())
    for c in df.columns:
        if df[c].dtype.kind not in "biuf":
            raise FEInputError(f"column {c!r} is not numeric (dtype {df[c].dtype})", path)
    X = df.to_numpy(dtype=np.float32)
    cols = _to_str_array(np.asarray(df.columns))
    if rows:
        return ExpressionData(X, ids, cols, labels, source=path)
    return ExpressionData(np.ascontiguousarray(X.T), cols, ids, labels, source=path)


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _check_data(data: Any, what: str = "data") -> ExpressionData:
    if not isinstance(data, ExpressionData):
        raise TypeError(f"{what} must be an ExpressionData, got {type(data).__name__}")
    return data


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
    ext, gz = _split_ext(path)
    kind = _EXT_FORMATS.get(ext)
    if kind not in ("h5", "h5ad", "csv", "tsv", "txt", "npz") or (gz and kind not in _TEXT_FORMATS):
        raise FEInputError(
            f"cannot write extension {ext + ('.gz' if gz else '')!r}; use .h5, .h5ad, .csv, .tsv (optionally .gz) or .npz",
            path,
        )
    with _atomic_output(path) as tmp:
        if kind == "h5":
            _write_h5(tmp, data)
        elif kind == "h5ad":
            _write_h5ad(tmp, data)
        elif kind == "npz":
            _write_npz(tmp, data)
        else:
            _write_text(tmp, data, sep="," if kind == "csv" else "\t", gz=gz, target=path)


def _write_h5(tmp: str, data: ExpressionData) -> None:
    import h5py

    sdt = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data.X)
        f.create_dataset("samples", data=data.samples.astype(object), dtype=sdt)
        f.create_dataset("genes", data=data.genes.astype(object), dtype=sdt)
        if data.labels is not None:
            f.create_dataset("labels", data=data.labels.astype(object), dtype=sdt)
        if data.biotypes is not None:
            f.create_dataset("biotypes", data=data.biotypes.astype(object), dtype=sdt)
        f.attrs["format"] = "factembed-expression-h5"
        f.attrs["orientation"] = "samples x genes"
        if data.transform:
            f.attrs["transform"] = data.transform
        for group, ann in (("obs", data.obs), ("var", data.var)):
            if not ann:
                continue
            g = f.create_group(group)
            for k, v in ann.items():
                if v.dtype.kind in "biuf":
                    g.create_dataset(k, data=v)
                else:
                    g.create_dataset(k, data=_to_str_array(v).astype(object), dtype=sdt)


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


def _write_text(tmp: str, data: ExpressionData, *, sep: str, gz: bool, target: str) -> None:
    import pandas as pd

    if data.labels is not None and LABEL_KEY in set(data.genes.tolist()):
        raise FEInputError(f"a gene is named {LABEL_KEY!r}, which clashes with the label column", target)
    opener = (lambda: gzip.open(tmp, "wt", encoding="utf-8", newline="")) if gz else (
        lambda: open(tmp, "w", encoding="utf-8", newline=""))
    step = _chunk_rows(data.n_genes, 4096)
    with opener() as fh:
        for a in range(0, max(1, data.n_samples), step):
            b = min(data.n_samples, a + step)
            df = pd.DataFrame(data.X[a:b], index=pd.Index(data.samples[a:b], name="sample"), columns=data.genes,
                              copy=False)
            if data.labels is not None:
                df.insert(0, LABEL_KEY, data.labels[a:b])
            df.to_csv(fh, sep=sep, header=(a == 0), float_format="%.9g", na_rep="NaN", lineterminator="\n")


def write_embedding_table(
    path: str | os.PathLike,
    embedding: np.ndarray,
    samples: Sequence[str],
    labels: Sequence[str] | None = None,
    prefix: str = "FE",
) -> None:
    """Write a sample embedding as CSV/TSV (optionally ``.gz``), atomically.

    Columns: ``sample``, ``label`` (when labels are given), ``FE1`` ...
    ``FEk`` (``prefix`` + 1-based dimension).
    """
    import pandas as pd

    path = os.fspath(path)
    ext, gz = _split_ext(path)
    if ext not in (".csv", ".tsv", ".txt", ".tab"):
        raise FEInputError(f"cannot write an embedding table with extension {ext!r}; use .csv or .tsv", path)
    sep = "," if ext == ".csv" else "\t"
    emb = np.asarray(embedding)
    if emb.ndim == 1:
        emb = emb.reshape(-1, 1)
    if emb.ndim != 2:
        raise FEInputError(f"embedding must be 2-D (samples x dims), got shape {emb.shape}", path)
    samples = _to_str_array(samples)
    if len(samples) != emb.shape[0]:
        raise FEInputError(f"{len(samples)} sample names for {emb.shape[0]} embedding rows", path)
    cols = {"sample": samples}
    if labels is not None:
        labels = _to_str_array(labels)
        if len(labels) != emb.shape[0]:
            raise FEInputError(f"{len(labels)} labels for {emb.shape[0]} embedding rows", path)
        cols[LABEL_KEY] = labels
    df = pd.DataFrame(cols)
    for j in range(emb.shape[1]):
        df[f"{prefix}{j + 1}"] = emb[:, j]
    with _atomic_output(path) as tmp:
        df.to_csv(tmp, sep=sep, index=False, float_format="%.9g", lineterminator="\n",
                  compression="gzip" if gz else None)


def write_embedding_h5ad(
    path: str | os.PathLike,
    data: ExpressionData,
    embedding: np.ndarray,
    gene_embedding: np.ndarray | None = None,
) -> None:
    """Write ``data`` as AnnData with the sample embedding in ``obsm["X_fe"]``
    and the gene embedding (if given) in ``varm["X_fe"]``, atomically."""
    data = _check_data(data)
    path = os.fspath(path)
    emb = np.asarray(embedding, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != data.n_samples:
        raise FEInputError(f"embedding has shape {emb.shape}, expected ({data.n_samples}, k)", path)
    gemb = None
    if gene_embedding is not None:
        gemb = np.asarray(gene_embedding, dtype=np.float32)
        if gemb.ndim != 2 or gemb.shape[0] != data.n_genes:
            raise FEInputError(f"gene_embedding has shape {gemb.shape}, expected ({data.n_genes}, d)", path)
    with _atomic_output(path) as tmp:
        adata = _anndata_for(data)
        adata.obsm[EMBEDDING_KEY] = emb
        if gemb is not None:
            adata.varm[EMBEDDING_KEY] = gemb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(tmp)


# --------------------------------------------------------------------------
# gene alignment and preprocessing
# --------------------------------------------------------------------------


def _gene_positions(data: ExpressionData, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Column of each wanted gene in ``data`` (-1 when absent) and the wanted names."""
    wanted = _to_str_array(genes)
    pos = {g: i for i, g in enumerate(data.genes.tolist())}
    idx = np.fromiter((pos.get(g, -1) for g in wanted.tolist()), dtype=np.int64, count=len(wanted))
    return idx, wanted


def _missing_message(missing: Sequence[str], total: int) -> str:
    return (f"{len(missing)} of {total} required genes are missing from the data: {_preview(missing)}"
            " (pass fill_missing=True to fill them with the training means)")


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
            raise FEInputError(_missing_message(wanted[missing_mask].tolist(), len(wanted)), data.source)
        fill_arr = np.broadcast_to(np.asarray(fill, dtype=np.float32), (len(wanted),))
    X = _aligned_matrix(data, idx, fill_arr)
    biotypes, var = _align_annotations(data, idx)
    return ExpressionData(X, data.samples.copy(), wanted, None if data.labels is None else data.labels.copy(),
                          biotypes, source=data.source, transform=data.transform,
                          obs={k: v.copy() for k, v in data.obs.items()}, var=var)


def _locate_bad(block: np.ndarray, a: int, data: ExpressionData, genes: np.ndarray, log10p1: bool,
                col_ok: np.ndarray | None = None) -> None:
    """Raise FEInputError naming the first NaN/inf (or negative, with log10p1) cell of ``block``
    (rows ``a:`` of ``data``; columns named by ``genes``; columns where ``col_ok`` is true skipped)."""
    hit = first_bad_value(block, nonneg=log10p1, skip_cols=col_ok)
    if hit is None:
        return
    i, j, v = hit
    sample, gene = str(data.samples[a + i]), str(genes[j])
    if not math.isfinite(v):
        what = _nonfinite_name(v)
        hint = " (infinite, or beyond float32's range of +-3.4e38)" if what != "NaN" else ""
        raise FEInputError(f"sample {sample!r}, gene {gene!r}: value is {what}{hint}; impute or drop it first",
                           data.source)
    raise FEInputError(
        f"sample {sample!r}, gene {gene!r}: negative value {v:g} cannot be log10(x+1)-transformed "
        "(use Preprocessing(log10p1=False) if the data are already log-transformed)",
        data.source,
    )


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

    def fit(self, data: ExpressionData) -> "FittedPreprocessing":
        """Decide the kept genes from ``data`` and record their training means
        (on the transformed scale).  Reads ``data.X`` in row chunks; does not
        copy the matrix."""
        data = _check_data(data)
        if data.n_samples == 0 or data.n_genes == 0:
            raise FEInputError(f"cannot fit preprocessing on an empty matrix {data.shape}", data.source)
        if self.log10p1 and data.log_transformed:
            warnings.warn(
                f"{data.source or 'data'}: values are already log10(x+1)-transformed (transform='log10p1') and "
                "Preprocessing(log10p1=True) will transform them again; use Preprocessing(log10p1=False)",
                stacklevel=2,
            )
        cand = np.ones(data.n_genes, dtype=bool)
        if self.protein_coding_only and data.biotypes is not None:
            cand &= data.biotypes == "protein_coding"
            if not cand.any():
                raise FEInputError("no gene has biotype 'protein_coding' (use protein_coding_only=False)", data.source)
        cidx = np.flatnonzero(cand)
        cgenes = data.genes[cidx]
        all_cols = len(cidx) == data.n_genes
        n_tot = 0
        mean = np.zeros(len(cidx), dtype=np.float64)
        m2 = np.zeros(len(cidx), dtype=np.float64)
        vmin = np.full(len(cidx), np.inf)
        vmax = np.full(len(cidx), -np.inf)
        step = _chunk_rows(len(cidx))
        for a in range(0, data.n_samples, step):
            b = min(data.n_samples, a + step)
            block = data.X[a:b] if all_cols else data.X[a:b][:, cidx]
            block = np.array(block, dtype=np.float32, copy=True)
            _locate_bad(block, a, data, cgenes, self.log10p1)
            if self.log10p1:
                _log10p1_inplace(block)
            x = block.astype(np.float64)
            nb = b - a
            mb = x.mean(axis=0)
            m2b = ((x - mb) ** 2).sum(axis=0)
            tot = n_tot + nb
            delta = mb - mean
            mean += delta * (nb / tot)
            m2 += m2b + delta ** 2 * (n_tot * nb / tot)
            n_tot = tot
            np.minimum(vmin, x.min(axis=0), out=vmin)
            np.maximum(vmax, x.max(axis=0), out=vmax)
        var = m2 / n_tot
        keep = np.ones(len(cidx), dtype=bool)
        if self.drop_constant:
            keep &= vmax > vmin
        if self.top_variable is not None and keep.sum() > self.top_variable:
            order = np.argsort(-np.where(keep, var, -np.inf), kind="stable")[: self.top_variable]
            top = np.zeros(len(cidx), dtype=bool)
            top[order] = True
            keep &= top
        if not keep.any():
            raise FEInputError("no genes left after preprocessing (all constant?)", data.source)
        return FittedPreprocessing(
            genes=cgenes[keep].copy(),
            means=mean[keep].copy(),
            variances=var[keep].copy(),
            config=Preprocessing(self.log10p1, self.protein_coding_only, self.drop_constant, self.top_variable),
            n_input_genes=data.n_genes,
        )

    def fit_apply(self, data: ExpressionData, *, copy: bool = True) -> tuple["FittedPreprocessing", ExpressionData]:
        """``fit`` then ``apply`` on the same data (``copy=False``: reuse ``data.X``'s
        memory, see :meth:`FittedPreprocessing.apply`)."""
        fitted = self.fit(data)
        return fitted, fitted.apply(data, copy=copy)

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

    def apply(self, data: ExpressionData, *, fill_missing: bool = False, copy: bool = True) -> ExpressionData:
        """Align ``data`` to the kept genes by name and transform it.

        Genes are matched by name and reordered.  Missing genes raise
        :class:`FEInputError` unless ``fill_missing=True``, which fills them
        with the training mean (transformed scale) and emits a warning.
        NaN/inf values, and negative values when ``log10p1``, raise
        :class:`FEInputError` naming the sample and gene.  The result is a new
        ``float32`` matrix; with ``copy=False``, when the kept genes appear in ``data``
        in the same order (always so for the data the preprocessing was fitted on),
        ``data.X``'s buffer is reused (columns compacted and transformed in place), so
        ``data`` must not be used afterwards.
        """
        data = _check_data(data)
        if self.log10p1 and data.log_transformed:
            warnings.warn(
                f"{data.source or 'data'}: values are already log10(x+1)-transformed and this preprocessing "
                "applies log10(x+1) again; fit with Preprocessing(log10p1=False)",
                stacklevel=2,
            )
        idx, wanted = _gene_positions(data, self.genes)
        present = idx >= 0
        n_missing = int((~present).sum())
        if n_missing:
            missing = wanted[~present].tolist()
            if not fill_missing:
                raise FEInputError(_missing_message(missing, len(wanted)), data.source)
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
            _locate_bad(block, a, data, wanted, self.log10p1, col_ok)
            if self.log10p1:
                _log10p1_inplace(block)
        if n_missing:
            X[:, ~present] = self.means[~present].astype(np.float32)
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
