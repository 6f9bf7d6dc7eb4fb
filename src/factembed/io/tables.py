"""Embedding outputs: a CSV/TSV table of sample embeddings and an AnnData file with
the embeddings in ``obsm`` / ``varm`` (both written atomically)."""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from .._utils.files import atomic_output
from ..errors import FEInputError
from ._data import EMBEDDING_KEY, LABEL_KEY, ExpressionData, _check_data, _to_str_array
from ._paths import _split_ext
from .anndata import _anndata_for


def write_embedding_table(
    path: str | os.PathLike,
    embedding: np.ndarray,
    samples: Sequence[str],
    labels: Sequence[str] | None = None,
    prefix: str = "FE",
    columns: "dict[str, Sequence] | None" = None,
) -> None:
    """Write a sample embedding as CSV/TSV (optionally ``.gz``), atomically.

    Columns: ``sample``, ``label`` (when labels are given), ``columns`` (more per-sample
    annotations, e.g. a model's covariates, by name), ``FE1`` ... ``FEk`` (``prefix`` +
    1-based dimension).
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
    for name, values in (columns or {}).items():
        if name in cols or (name.startswith(prefix) and name[len(prefix):].isdigit()):
            continue                  # never shadows the sample, the label or a dimension
        values = np.asarray(values)
        if len(values) != emb.shape[0]:
            raise FEInputError(f"column {name!r} has {len(values)} values for {emb.shape[0]} embedding rows", path)
        cols[name] = values
    df = pd.DataFrame(cols)
    for j in range(emb.shape[1]):
        df[f"{prefix}{j + 1}"] = emb[:, j]
    with atomic_output(path) as tmp:
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
    with atomic_output(path) as tmp:
        adata = _anndata_for(data)
        adata.obsm[EMBEDDING_KEY] = emb
        if gemb is not None:
            adata.varm[EMBEDDING_KEY] = gemb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(tmp)
