"""Out-of-core row sources: train on matrices that stay on disk.

A *row source* is any object with ``shape`` (samples, genes) and
``rows(index) -> float32 CPU tensor`` (see :class:`factembed.training.loop.RowSource`).
:meth:`FactorizedEmbeddings.fit` accepts one instead of an array and streams it;
the matrix is never loaded.  The sources here read

* a ``.npy`` file (or the memory map that ``np.load(path, mmap_mode="r")`` returns):
  :class:`NpySource`;
* a TCGA-style HDF5 file (dataset ``data``, samples x genes; optional ``samples``,
  ``genes``, ``labels``): :class:`H5Source`;
* an AnnData ``.h5ad`` file with a dense or CSR ``X``: :class:`H5adSource`;
* a Zarr array, or a Zarr group holding ``data`` or ``X`` (when ``zarr`` is
  installed): :class:`ZarrSource`.

:func:`open_source` picks the class from the file name.

Sampling: every source has ``make_sampler(batch_samples, generator)``, which the
estimator uses; it returns a :class:`BlockSampler` (module ``block_sampler``).  The rows are cut into *blocks*
of ``block_rows`` contiguous rows (each block is read with one sequential read of a
few MiB); each pass visits the blocks in a random order, ``blocks_per_window`` blocks
at a time.  The rows of one such *window* (a few hundred to a few thousand rows,
sized from ``memory_budget``) are permuted and cut into batches, so each batch mixes
rows from ``blocks_per_window`` random places of the file while every read stays
sequential.  A background thread reads the next window while the trainer works on
the current one (``prefetch`` windows ahead, 1 by default), and the batch rows that
``rows()`` hands to the trainer come from the window in memory (no random disk
reads).  Values are checked (NaN/inf, and negative values when ``log10p1``) and
optionally transformed by ``log10(x + 1)`` as each block is read.

Memory: the windows in flight (``2 + prefetch`` windows at most, each at most
``memory_budget / (2 + prefetch)`` bytes) plus O(n) bytes of bookkeeping (the block
order, and whatever the model itself keeps per sample).  ``.npy`` files are read
with ``pread`` rather than through the memory map, so file pages never count in the
process's resident set.
"""

from __future__ import annotations

import os
from pathlib import Path

from .block_sampler import DEFAULT_MEMORY_BUDGET, BlockSampler, plan_blocks
from ..errors import FEInputError
from .base import BackedSource
from .hdf5 import H5adSource, H5Source
from .npy import NpySource
from .zarr import ZarrSource

__all__ = [
    "BackedSource",
    "NpySource",
    "H5Source",
    "H5adSource",
    "ZarrSource",
    "BlockSampler",
    "open_source",
    "plan_blocks",
    "stored_as_log",
    "DEFAULT_MEMORY_BUDGET",
]


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def open_source(path: str | os.PathLike, fmt: str | None = None, **options) -> BackedSource:
    """Open ``path`` as a backed row source, by ``fmt`` (npy, h5, h5ad, zarr) or by
    its extension.  ``options`` go to the source (``log10p1``, ``memory_budget``, ...;
    ``label_column`` for h5ad)."""
    p = Path(path)
    name = p.name.lower()
    if fmt is None:
        if name.endswith(".npy"):
            fmt = "npy"
        elif name.endswith(".h5ad"):
            fmt = "h5ad"
        elif name.endswith((".h5", ".hdf5", ".hdf")):
            fmt = "h5"
        elif name.endswith(".zarr") or _is_zarr_dir(p):
            fmt = "zarr"
        else:
            raise FEInputError("backed (out-of-core) reading supports .npy, .h5/.hdf5, .h5ad and .zarr; "
                               "convert the file first (e.g. factembed's write_expression to .h5)", path)
    fmt = fmt.lower().lstrip(".")
    label_column = options.pop("label_column", None)
    if fmt == "npy":
        return NpySource(p, **options)
    if fmt in ("h5", "hdf5", "hdf"):
        return H5Source(p, **options)
    if fmt == "h5ad":
        return H5adSource(p, label_column=label_column, **options)
    if fmt == "zarr":
        return ZarrSource(p, **options)
    raise FEInputError(f"format {fmt!r} cannot be read backed (supported: npy, h5, h5ad, zarr)", path)


def stored_as_log(source: BackedSource) -> bool:
    """True when the file says its values are already log10(x + 1)-transformed (an
    HDF5 ``transform`` attribute or AnnData ``uns/factembed_transform``, as
    factembed's writers record it)."""
    f = getattr(source, "_file", None)
    if f is None:
        return False
    t = f.attrs.get("transform")
    if t is None and "uns" in f and "factembed_transform" in f["uns"]:
        t = f["uns"]["factembed_transform"][()]
    if isinstance(t, bytes):
        t = t.decode()
    return t == "log10p1"
