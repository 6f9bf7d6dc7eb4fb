"""A ``.npy`` file (or its memory map) as a row source, read with ``pread``."""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from ..errors import FEInputError, one_line
from .base import BackedSource


class NpySource(BackedSource):
    """A 2-D numeric ``.npy`` file (or an array / memory map already open).

    Given a path (or the memory map ``np.load(path, mmap_mode="r")`` returned), rows
    are read with ``os.preadv`` at their offset in the file: sequential reads into
    our own buffers, and the mapped pages are never touched (so they never count in
    the process's RSS).  Any other array (in memory, a slice of a memory map,
    Fortran order) is read by slicing."""

    def __init__(self, data: str | os.PathLike | np.ndarray, *, samples: Any = None, genes: Any = None,
                 **options) -> None:
        path = None
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
            if not os.path.isfile(path):
                raise FEInputError("no such file", path)
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise FEInputError(f"not a readable .npy file (truncated or corrupt?): {one_line(exc)}",
                                   path) from None
            if not isinstance(arr, np.ndarray):
                raise FEInputError("expected a .npy array", path)
        elif isinstance(data, np.ndarray):
            arr = data
            path = getattr(data, "filename", None)
        else:
            raise TypeError(f"NpySource needs a path or a numpy array, got {type(data).__name__}")
        if arr.ndim != 2:
            raise FEInputError(f"array must be 2-D (samples x genes), got shape {arr.shape}", path)
        if arr.dtype.kind not in "biuf":
            raise FEInputError(f"array must be numeric, got dtype {arr.dtype}", path)
        super().__init__(arr.shape[0], arr.shape[1], path=path, samples=samples, genes=genes, **options)
        self._arr = arr
        self._fd: int | None = None
        # pread only from an original memory map (not a slice of one): then `offset` is
        # where row 0 starts in the file.
        if (isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.filename
                and arr.flags.c_contiguous and arr.offset is not None):
            self._fd = os.open(arr.filename, os.O_RDONLY)
            self._offset = int(arr.offset)
            self._row_bytes = arr.shape[1] * arr.dtype.itemsize
            self._file_dtype = arr.dtype

    def _read_raw(self, a: int, b: int, out: np.ndarray) -> None:
        if self._fd is None:
            out[...] = self._arr[a:b]
            return
        direct = self._file_dtype == np.dtype("<f4") or self._file_dtype == np.dtype("=f4")
        target = out if direct and out.flags.c_contiguous else np.empty((b - a, self._stored_m), self._file_dtype)
        mv = memoryview(target).cast("B")
        offset = self._offset + a * self._row_bytes
        done = 0
        while done < mv.nbytes:
            k = os.preadv(self._fd, [mv[done:]], offset + done)
            if k <= 0:
                raise FEInputError(f"rows {a}-{b}: file ends early (truncated?)", self.path)
            done += k
        if target is not out:
            out[...] = target

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            if getattr(self, "_owner", False):
                self._close()
        except Exception:  # pragma: no cover
            pass


# ---------------------------------------------------------------------------------------
# HDF5 and AnnData
# ---------------------------------------------------------------------------------------
