"""Sample labels from a separate metadata table (first column = sample id)."""

from __future__ import annotations

import os
import zlib
from typing import Sequence

import numpy as np

from ..errors import FEInputError, MissingColumnError, one_line
from ._data import LABEL_KEY, _first_duplicate, _preview, _to_str_array
from ._paths import _check_input_file, _split_ext


def read_sample_labels(
    path: str | os.PathLike, samples: Sequence[str], label_column: str | None = None
) -> np.ndarray:
    """Labels for ``samples`` from a metadata table (first column = sample id).

    ``label_column`` defaults to a column named ``"label"``.  Every sample must
    be present in the table (a :class:`FEInputError` lists the missing ones).
    """
    meta = _read_table(path)
    path = os.fspath(path)
    if label_column is None:
        if LABEL_KEY not in meta.columns:
            raise FEInputError(
                f"no label_column given and no {LABEL_KEY!r} column; columns are {_preview(meta.columns, 8)}", path
            )
        label_column = LABEL_KEY
    if label_column not in meta.columns:
        raise MissingColumnError(f"no column {label_column!r}; columns are {_preview(meta.columns, 8)}", path,
                                 column=label_column, available=list(meta.columns))
    values = _aligned(meta, path, samples)[label_column].to_numpy(dtype=object)
    values = np.array(["NA" if v is None or v == "" else str(v) for v in values], dtype=str)
    return values


def read_sample_table(path: str | os.PathLike, samples: Sequence[str]) -> dict:
    """Every column of a metadata table (first column = sample id) as strings in the
    order of ``samples`` (``"NA"`` where empty): the annotations of ``evaluate``'s tasks."""
    meta = _aligned(_read_table(path), os.fspath(path), samples)
    return {str(c): np.array(["NA" if v is None or v == "" else str(v) for v in meta[c].tolist()], dtype=str)
            for c in meta.columns}


def _read_table(path):
    import pandas as pd

    path = os.fspath(path)
    _check_input_file(path)
    ext, gz = _split_ext(path)
    sep = "\t" if ext in (".tsv", ".tab", ".xena") else ("," if ext == ".csv" else None)
    try:
        meta = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", index_col=0,
                           dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
        raise FEInputError(f"cannot parse sample metadata table ({one_line(exc)})", path) from None
    except pd.errors.EmptyDataError:
        raise FEInputError("sample metadata table is empty", path) from None
    return meta


def _aligned(meta, path: str, samples):
    """The rows of ``meta`` in the order of ``samples`` (every sample must have one)."""
    index = meta.index.astype(str)
    dup = _first_duplicate(np.asarray(index, dtype=str))
    if dup is not None:
        raise FEInputError(f"duplicated sample id {str(index[dup[1]])!r} (data rows {dup[0] + 1} and {dup[1] + 1})", path)
    meta = meta.copy()
    meta.index = index
    samples = list(_to_str_array(samples).tolist())
    missing = [s for s in samples if s not in meta.index]
    if missing:
        raise FEInputError(
            f"{len(missing)} of {len(samples)} samples have no row in the metadata table: {_preview(missing)}", path
        )
    return meta.loc[samples]
