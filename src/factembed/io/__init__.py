"""Reading and writing gene-expression matrices.

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

Every problem with input data raises :class:`factembed.errors.FEInputError`
with a one-line message naming the file, the row / sample / gene and the
problem.

Modules, one concern each:

* :mod:`._data`: :class:`ExpressionData` and the name / chunk helpers;
* :mod:`.formats`: format detection and the reader / writer registries behind
  :func:`read_expression` / :func:`write_expression`;
* :mod:`.text` (CSV/TSV), :mod:`.hdf5` (TCGA-style ``.h5``), :mod:`.anndata`
  (``.h5ad``), :mod:`.arrays` (``.npy``, ``.npz``, ``.parquet``): the formats;
* :mod:`.labels`: :func:`read_sample_labels`, :func:`read_sample_table`;
* :mod:`.tables`: :func:`write_embedding_table`, :func:`write_embedding_h5ad`.

This package sits below the preprocessing and imports nothing of it:
:class:`Preprocessing`, :class:`FittedPreprocessing` and :func:`align_genes` are
:mod:`factembed.preprocessing`'s (which builds on :class:`ExpressionData`);
:func:`write_bytes_atomic` is :mod:`factembed._utils.files`' one atomic writer, importable here.
"""

from __future__ import annotations

from .._utils.files import write_bytes_atomic
from ._data import EMBEDDING_KEY, LABEL_KEY, ExpressionData
from .formats import read_expression, write_expression
from .labels import read_sample_labels, read_sample_table
from .tables import write_embedding_h5ad, write_embedding_table

__all__ = [
    "ExpressionData",
    "read_expression",
    "write_expression",
    "write_embedding_table",
    "write_embedding_h5ad",
    "LABEL_KEY",
    "EMBEDDING_KEY",
]
