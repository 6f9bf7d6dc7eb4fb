"""CSV / TSV / TXT tables (optionally gzipped): reader and writer.

The reader makes two passes: :func:`_scan_text` reads the header, the row ids and
the field counts (rejecting ragged rows, blank lines and empty ids, naming the
line); :func:`_read_text` then parses the numbers in row chunks straight into
the final ``float32`` matrix."""

from __future__ import annotations

import csv
import gzip
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import FEInputError, MissingColumnError, one_line
from ._data import LABEL_KEY, ExpressionData, _chunk_rows, _compact_columns_inplace, _first_duplicate, _preview


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
        raise FEInputError(f"corrupt or truncated gzip stream: {one_line(exc)}", path) from None
    except OSError as exc:
        raise FEInputError(f"cannot read file: {one_line(exc)}", path) from None
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
            raise _missing_label_column(path, gz, sep, names, label_column)
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
        raise FEInputError(f"corrupt or truncated gzip stream: {one_line(exc)}", path) from None
    except UnicodeDecodeError as exc:
        raise FEInputError(f"not valid UTF-8 text: {one_line(exc)}", path) from None
    except OSError as exc:
        raise FEInputError(f"cannot read file: {one_line(exc)}", path) from None
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


def _missing_label_column(path: str, gz: bool, sep: str, names: list[str], label_column: str) -> MissingColumnError:
    """The error for a label column the header lacks, naming the columns that could be
    one: those whose value on the first data line is not a number."""
    try:
        with _open_text(path, gz) as fh:
            fh.readline()
            fields = _split_line(fh.readline().rstrip("\r\n"), sep)[1:]
    except (OSError, UnicodeDecodeError, EOFError, zlib.error):
        fields = []
    text = []
    for name, value in zip(names, fields):
        value = value.strip().strip('"')
        if value in _NA_TOKENS:
            continue
        try:
            float(value)
        except ValueError:
            text.append(name)
    where = (f"its non-numeric columns are {_preview(text, 8)}" if text
             else f"it has no non-numeric column (columns: {_preview(names, 8)}, {len(names):,} in all)")
    return MissingColumnError(f"no column {label_column!r} in the header; {where}", path, column=label_column,
                              available=text or names)


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
