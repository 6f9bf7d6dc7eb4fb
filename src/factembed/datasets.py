"""Bundled and downloadable data sets.

* :func:`load_demo` - the bundled HSMM single-cell demo (271 cells x 5,000
  genes, already ``log10(x + 1)``-transformed; see ``factembed/data/README.md``).
* :func:`fetch_tcga_pancan` - the TCGA PanCanAtlas RNA-seq matrix from the UCSC
  Xena hub (about 11,000 samples x 20,500 genes) with the primary disease of
  each sample as its label.  Downloads are cached (and checksummed) with pooch.

The cache directory is, in order of precedence: the ``cache_dir`` argument,
the ``FACTEMBED_DATA`` environment variable, or the platform's user cache
directory (``pooch.os_cache("factembed")``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from .errors import FEInputError
from ._utils.files import sha256_file, write_text_atomic
from .io import ExpressionData, read_expression, write_expression
from .io.text import _read_text

__all__ = [
    "load_demo",
    "fetch_tcga_pancan",
    "read_xena_matrix",
    "read_xena_phenotype",
    "data_dir",
    "DEMO_FILE",
    "TCGA_EXPRESSION_URL",
    "TCGA_PHENOTYPE_URL",
]

DEMO_FILE = "hsmm_demo.npz"

#: The PanCanAtlas batch-corrected (EB++) RNA-seq matrix: genes as rows
#: (first column ``sample`` = gene symbol), TCGA sample barcodes as columns,
#: values log2(normalized RSEM count + 1), some cells ``NA``.
TCGA_EXPRESSION_URL = (
    "https://tcga-pancan-atlas-hub.s3.us-east-1.amazonaws.com/download/"
    "EB%2B%2BAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.xena.gz"
)
#: Per-sample phenotype table: ``sample``, ``sample_type_id``,
#: ``sample_type``, ``_primary_disease``.
TCGA_PHENOTYPE_URL = (
    "https://tcga-pancan-atlas-hub.s3.us-east-1.amazonaws.com/download/"
    "TCGA_phenotype_denseDataOnlyDownload.tsv.gz"
)
#: SHA-256 of the two files.  They are not pinned in the package because the
#: files could not be downloaded where this code was written; instead the hash
#: of the first download is recorded in the cache directory
#: (``factembed-hashes.json``) and every later use is verified against it.
#: Pass ``known_hash`` / ``phenotype_hash`` to pin them yourself.
TCGA_EXPRESSION_HASH: str | None = None
TCGA_PHENOTYPE_HASH: str | None = None

_HASH_REGISTRY = "factembed-hashes.json"
_LOG10_2 = math.log10(2.0)


# --------------------------------------------------------------------------
# bundled demo
# --------------------------------------------------------------------------


def _demo_path():
    try:
        return resources.files("factembed").joinpath("data", DEMO_FILE)
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual installs
        return Path(__file__).resolve().parent / "data" / DEMO_FILE


def load_demo() -> ExpressionData:
    """The bundled HSMM demo: 271 human skeletal-muscle myoblasts x 5,000 genes.

    ``X`` holds ``log10(FPKM + 1)`` values (stored as float16, returned as
    float32), so ``transform == "log10p1"``: preprocess it with
    ``Preprocessing(log10p1=False)``.  ``labels`` are the time points
    ``"0h"``, ``"24h"``, ``"48h"``, ``"72h"``; ``biotypes`` are set;
    ``obs["State"]`` holds the pseudotime state ("1", "2", "3"), ``obs["Hours"]``
    the time point as a number (a regression target: ``regression:Hours``) and
    ``var["gene_symbols"]`` the gene symbols (``genes`` are Ensembl ids).
    Source: Bioconductor HSMMSingleCell (Trapnell et al. 2014), Artistic-2.0.
    """
    ref = _demo_path()
    with resources.as_file(ref) as path:
        if not os.path.exists(path):
            raise FEInputError("bundled demo data are missing (broken installation?)", path)
        with np.load(path, allow_pickle=False) as z:
            return ExpressionData(
                X=z["X"].astype(np.float32),
                samples=z["samples"],
                genes=z["genes"],
                labels=z["labels"],
                biotypes=z["biotypes"],
                source=f"factembed:data/{DEMO_FILE}",
                transform=str(z["transform"]) if "transform" in z.files else "log10p1",
                obs={"State": z["State"],
                     "Hours": np.array([float(str(v).rstrip("h")) for v in z["labels"].tolist()])},
                var={"gene_symbols": z["gene_symbols"]},
            )


# --------------------------------------------------------------------------
# cache and download
# --------------------------------------------------------------------------


def data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$FACTEMBED_DATA``, else the
    platform user cache directory for factembed."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FACTEMBED_DATA")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("factembed"))


def _local_source(url: str) -> str | None:
    """The local file behind a ``file://`` URL or a plain path, else None."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return url
    return None


def _copy_downloader(url: str, output_file, pooch=None) -> None:
    """A pooch downloader for local files (``file://`` URLs and plain paths)."""
    src = _local_source(url)
    if src is None or not os.path.isfile(src):
        raise FEInputError("local source file not found", src or url)
    if hasattr(output_file, "write"):
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, output_file)
    else:
        shutil.copyfile(src, output_file)


def _url_filename(url: str) -> str:
    name = os.path.basename(unquote(urlparse(url).path)) if _local_source(url) is None else os.path.basename(
        _local_source(url) or "")
    if not name:
        raise ValueError(f"cannot derive a file name from URL {url!r}")
    return name


def _load_registry(cache: Path) -> dict:
    try:
        with open(cache / _HASH_REGISTRY, encoding="utf-8") as fh:
            reg = json.load(fh)
        return reg if isinstance(reg, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_registry(cache: Path, reg: dict) -> None:
    write_text_atomic(cache / _HASH_REGISTRY, json.dumps(reg, indent=1, sort_keys=True))


def _fetch(url: str, known_hash: str | None, cache: Path, progress: bool) -> tuple[str, str]:
    """Download ``url`` into ``cache`` (or reuse the cached copy) and verify it.

    Returns (local path, sha256).  Without ``known_hash`` the hash recorded at
    the first download is used, so a changed or corrupted cached file is
    detected (and downloaded again).
    """
    import pooch

    fname = _url_filename(url)
    cache.mkdir(parents=True, exist_ok=True)
    reg = _load_registry(cache)
    expected = known_hash or reg.get(fname)
    local = _local_source(url) is not None
    downloader = _copy_downloader if local else pooch.HTTPDownloader(progressbar=progress)
    try:
        path = pooch.retrieve(url, known_hash=expected, fname=fname, path=cache, downloader=downloader,
                              progressbar=progress)
    except ValueError as exc:  # pooch: hash mismatch
        if isinstance(exc, FEInputError):
            raise
        raise FEInputError(f"checksum mismatch for {fname}: {' '.join(str(exc).split())}", url) from None
    except Exception as exc:  # network and HTTP errors from requests
        raise FEInputError(f"download failed: {type(exc).__name__}: {' '.join(str(exc).split())}", url) from None
    if expected and (":" not in expected or expected.lower().startswith("sha256:")):
        digest = expected.split(":")[-1].lower()
    else:
        digest = sha256_file(path)
    if reg.get(fname) != digest:
        reg[fname] = digest
        _save_registry(cache, reg)
    return path, digest


# --------------------------------------------------------------------------
# Xena file parsing (offline, testable)
# --------------------------------------------------------------------------


def _header_fields(path: str, sep: str = "\t") -> list[str]:
    opener = gzip.open if _is_gz(path) else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            line = fh.readline()
    except (OSError, EOFError) as exc:
        raise FEInputError(f"cannot read header: {' '.join(str(exc).split())}", path) from None
    if not line.strip():
        raise FEInputError("file is empty (no header line)", path)
    return [f.strip().strip('"') for f in line.rstrip("\r\n").split(sep)]


def _is_gz(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_xena_phenotype(path: str | os.PathLike, label_column: str | None = "_primary_disease") -> "dict[str, np.ndarray]":
    """Read a Xena phenotype table (``sample`` + annotation columns, TSV,
    optionally gzipped) into ``{column: values}`` with ``"sample"`` first."""
    import pandas as pd

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FEInputError("file not found", path)
    if os.path.getsize(path) == 0:
        raise FEInputError("file is empty", path)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                         compression="gzip" if _is_gz(path) else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise FEInputError(f"cannot parse phenotype table: {' '.join(str(exc).split())}", path) from None
    if "sample" not in df.columns:
        raise FEInputError(f"phenotype table has no 'sample' column; columns are {list(df.columns)[:8]}", path)
    if label_column is not None and label_column not in df.columns:
        raise FEInputError(f"phenotype table has no {label_column!r} column; columns are {list(df.columns)[:8]}",
                           path)
    dup = df["sample"].duplicated()
    if dup.any():
        raise FEInputError(f"duplicated sample {df['sample'][dup].iloc[0]!r} in the phenotype table", path)
    return {c: df[c].to_numpy(dtype=str) for c in df.columns}


def read_xena_matrix(
    path: str | os.PathLike,
    *,
    samples: Sequence[str] | None = None,
    drop_genes_with_missing: bool = True,
    chunk_rows: int = 4096,
) -> ExpressionData:
    """Read a Xena genomic matrix (TSV, optionally gzipped; genes as rows,
    first column gene id, one column per sample) as samples x genes.

    Only the columns of ``samples`` are parsed when given (in file order).
    Genes listed twice keep their first row; genes with any missing value are
    dropped when ``drop_genes_with_missing`` (a warning gives the counts).
    Values are returned as stored (no transform is applied or recorded).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FEInputError("file not found", path)
    if os.path.getsize(path) == 0:
        raise FEInputError("file is empty", path)
    header = _header_fields(path)
    keep = None
    if samples is not None:
        wanted = set(str(s) for s in samples)
        keep = np.array([h in wanted for h in header[1:]], dtype=bool)
        if not keep.any():
            raise FEInputError("none of the requested samples is a column of the matrix", path)
    stats: dict = {}
    data = _read_text(path, sep="\t", gz=_is_gz(path), samples_as_rows=False, label_column=None,
                      chunk_rows=chunk_rows, keep_columns=keep, duplicate_rows="first",
                      drop_rows_with_missing=drop_genes_with_missing, stats=stats)
    if stats.get("duplicate_rows") or stats.get("missing_rows"):
        warnings.warn(
            f"{path}: kept {data.n_genes} of {stats['rows']} genes ({stats.get('duplicate_rows', 0)} duplicated gene "
            f"ids, {stats.get('missing_rows', 0)} genes with missing values dropped)",
            stacklevel=2,
        )
    return data


#: the survival end points of the TCGA Pan-Cancer Clinical Data Resource, as Xena serves them
TCGA_SURVIVAL_URL = ("https://tcga-pancan-atlas-hub.s3.us-east-1.amazonaws.com/download/"
                     "Survival_SupplementalTable_S1_20171025_xena_sp")
#: survival columns kept (time and event of overall, disease-specific, disease-free, progression-free)
SURVIVAL_COLUMNS = ("OS", "OS.time", "DSS", "DSS.time", "DFI", "DFI.time", "PFI", "PFI.time")


def _survival_columns(table: dict, samples) -> dict:
    """The :data:`SURVIVAL_COLUMNS` of a Xena table (``sample`` column + strings) as
    float arrays in the order of ``samples`` (NaN where missing or not a number)."""
    if "sample" not in table:
        return {}
    row = {s: i for i, s in enumerate(table["sample"].tolist())}
    out = {}
    for c in SURVIVAL_COLUMNS:
        if c not in table:
            continue
        vals = np.full(len(samples), np.nan)
        for k, s in enumerate(np.asarray(samples).tolist()):
            i = row.get(s)
            if i is None:
                continue
            try:
                vals[k] = float(table[c][i])
            except ValueError:
                pass
        out[c] = vals
    return out


def fetch_tcga_pancan(
    cache_dir: str | os.PathLike | None = None,
    *,
    expression_url: str = TCGA_EXPRESSION_URL,
    phenotype_url: str = TCGA_PHENOTYPE_URL,
    known_hash: str | None = TCGA_EXPRESSION_HASH,
    phenotype_hash: str | None = TCGA_PHENOTYPE_HASH,
    progress: bool = True,
    values: str = "log10p1",
    sample_types: Sequence[str] | None = None,
    label_column: str = "_primary_disease",
    drop_unlabeled: bool = True,
    drop_genes_with_missing: bool = True,
    cache_parsed: bool = True,
    survival_url: str | None = None,
    survival_hash: str | None = None,
) -> ExpressionData:
    """Download (once) and read the TCGA PanCanAtlas RNA-seq matrix.

    The expression file (UCSC Xena, ``EB++AdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.xena.gz``)
    has genes as rows and samples as columns with values
    ``log2(normalized RSEM + 1)``; the phenotype file
    (``TCGA_phenotype_denseDataOnlyDownload.tsv.gz``) gives each sample's
    ``_primary_disease`` (the label) and ``sample_type``.

    Parameters
    ----------
    cache_dir:
        Where downloads (and the parsed matrix) are kept; defaults to
        ``$FACTEMBED_DATA`` or the platform user cache directory.
    expression_url, phenotype_url:
        Sources; ``https://``, ``file://`` URLs or local paths.
    known_hash, phenotype_hash:
        Expected checksums (``"sha256:..."`` or a bare sha256, or
        ``"md5:..."``).  When ``None`` the hash of the first download is
        recorded in the cache and enforced afterwards.
    progress:
        Show a download progress bar.
    values:
        ``"log10p1"`` (default): convert to ``log10(x + 1)``, the scale of
        the reference FE configuration (exactly ``log2(x+1) * log10(2)``);
        ``"log2p1"``: as stored; ``"raw"``: ``2**v - 1``.  ``transform`` of
        the result records the choice; for ``"log10p1"`` preprocess with
        ``Preprocessing(log10p1=False)``.  The batch correction leaves a few
        slightly negative values, kept as they are.
    sample_types:
        Keep only samples whose ``sample_type`` is listed (e.g.
        ``["Primary Tumor"]``); ``None`` keeps all.
    label_column:
        Phenotype column used as the labels.
    drop_unlabeled:
        Drop samples that have no row in the phenotype table (otherwise they
        are labelled ``"NA"``).
    drop_genes_with_missing:
        Drop genes with any ``NA`` value (the file has some).
    cache_parsed:
        Keep the parsed matrix as HDF5 in the cache so later calls skip the
        text parsing.
    survival_url, survival_hash:
        Optional clinical table with the TCGA survival end points (e.g. Xena's
        :data:`TCGA_SURVIVAL_URL`, TCGA-CDR): its columns ``OS``, ``OS.time``,
        ``DSS``, ``DSS.time``, ``DFI``, ``DFI.time``, ``PFI``, ``PFI.time`` are kept in
        ``obs`` (as are those of the phenotype table when it has them), as numbers
        (``NaN`` where missing), ready for ``evaluate``'s
        ``survival:OS.time,OS`` task.  They travel with the cached HDF5 (``obs/``).
    """
    if values not in ("log10p1", "log2p1", "raw"):
        raise ValueError(f"values must be 'log10p1', 'log2p1' or 'raw', got {values!r}")
    cache = data_dir(cache_dir)
    expr_path, expr_hash = _fetch(expression_url, known_hash, cache, progress)
    pheno_path, pheno_hash = _fetch(phenotype_url, phenotype_hash, cache, progress)

    options = {"expr": expr_hash, "pheno": pheno_hash, "values": values, "label": label_column,
               "sample_types": None if sample_types is None else sorted(map(str, sample_types)),
               "drop_unlabeled": bool(drop_unlabeled), "drop_missing": bool(drop_genes_with_missing),
               "survival": survival_url, "format": 2}
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    parsed = cache / f"tcga_pancan_{key}.h5"
    if cache_parsed and parsed.is_file():
        try:
            return read_expression(parsed)
        except FEInputError:
            warnings.warn(f"ignoring unreadable cached matrix {parsed}; parsing the download again", stacklevel=2)

    pheno = read_xena_phenotype(pheno_path, label_column)
    header = _header_fields(expr_path)
    matrix_samples = header[1:]
    label_of = dict(zip(pheno["sample"].tolist(), pheno[label_column].tolist()))
    type_of = dict(zip(pheno["sample"].tolist(), pheno["sample_type"].tolist())) if "sample_type" in pheno else {}
    wanted = []
    n_unlabeled = 0
    for s in matrix_samples:
        if s not in label_of:
            n_unlabeled += 1
            if drop_unlabeled:
                continue
        if sample_types is not None and type_of.get(s) not in set(sample_types):
            continue
        wanted.append(s)
    if not wanted:
        raise FEInputError("no sample left after matching the phenotype table and sample_types", expr_path)
    if n_unlabeled and drop_unlabeled:
        warnings.warn(f"{n_unlabeled} samples of the matrix have no phenotype row and were dropped", stacklevel=2)

    data = read_xena_matrix(expr_path, samples=wanted, drop_genes_with_missing=drop_genes_with_missing)
    X = data.X
    if values == "log10p1":
        X *= np.float32(_LOG10_2)
    elif values == "raw":
        np.exp2(X, out=X)
        X -= np.float32(1.0)
    labels = np.array([label_of.get(s, "NA") or "NA" for s in data.samples.tolist()], dtype=str)
    obs = {}
    if type_of:
        obs["sample_type"] = np.array([type_of.get(s, "NA") for s in data.samples.tolist()], dtype=str)
    obs.update(_survival_columns(pheno, data.samples))
    if survival_url is not None:
        surv_path, _ = _fetch(survival_url, survival_hash, cache, progress)
        obs.update(_survival_columns(read_xena_phenotype(surv_path, None), data.samples))
    result = ExpressionData(X, data.samples, data.genes, labels, None, source=expr_path,
                            transform=None if values == "raw" else values, obs=obs)
    if cache_parsed:
        try:
            write_expression(parsed, result)
        except OSError as exc:  # a full disk must not lose the parsed data
            warnings.warn(f"could not cache the parsed matrix: {exc}", stacklevel=2)
        result.source = expr_path
    return result
