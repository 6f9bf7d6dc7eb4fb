"""A Zarr array, or a Zarr group holding ``data`` or ``X``, as a row source (needs ``zarr``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import FEInputError, one_line
from .base import BackedSource, _names


class ZarrSource(BackedSource):
    """A 2-D Zarr array, or a Zarr group holding one as ``data`` (or ``X``) with
    optional 1-D ``samples``, ``genes``, ``labels`` arrays.  Needs ``zarr``; rows are
    read by slicing (chunks of many rows x all genes read best)."""

    def __init__(self, store: Any, **options) -> None:
        try:
            import zarr
        except ImportError:  # pragma: no cover - optional dependency
            raise ImportError("reading Zarr needs the 'zarr' package (pip install zarr)") from None
        path = os.fspath(store) if isinstance(store, (str, os.PathLike)) else None
        try:
            z = zarr.open(store, mode="r") if path is not None else store
        except Exception as exc:
            raise FEInputError(f"not a readable Zarr store: {one_line(exc)}", path) from None
        samples = genes = labels = None
        if hasattr(z, "shape") and hasattr(z, "dtype"):
            arr = z
        else:
            key = "data" if "data" in z else ("X" if "X" in z else None)
            if key is None:
                raise FEInputError("Zarr group has no 'data' or 'X' array", path)
            arr = z[key]
            for name in ("samples", "genes", "labels"):
                if name in z:
                    val = _names(z[name][...])
                    samples, genes, labels = (val if name == "samples" else samples,
                                              val if name == "genes" else genes,
                                              val if name == "labels" else labels)
        if len(arr.shape) != 2 or np.dtype(arr.dtype).kind not in "biuf":
            raise FEInputError(f"Zarr array must be 2-D numeric, got shape {arr.shape} dtype {arr.dtype}", path)
        super().__init__(arr.shape[0], arr.shape[1], path=path, samples=samples, genes=genes, labels=labels,
                         **options)
        self._arr = arr

    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:
        try:
            out[...] = self._arr[a:b]
        except Exception as exc:
            raise FEInputError(f"cannot read rows {a}-{b}: {one_line(exc)}", self.path) from None
