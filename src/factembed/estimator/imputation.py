"""The pieces of :meth:`FactorizedEmbeddings.impute` that are not the estimator's state:
which genes may be empty, the output matrix (of an array: output_array; of a DataFrame:
frame_output), and the fill loop."""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
import torch

from ..errors import FEInputError
from .inference import ROW_BLOCK, reconstruct

#: samples embedded per call of the inference (bounds the copy of the rows that have missing values)
IMPUTE_CHUNK = 4096
#: decoder values made at once when filling (rows x genes; bounds the fill's buffers, ~4 MB)
IMPUTE_FILL_ELEMENTS = 1 << 20


def empty_gene_mask(empty_genes: Any, names: np.ndarray | None, m: int, absent: np.ndarray | None) -> np.ndarray:
    """The genes allowed to have no observed value: those a DataFrame lacks (``absent``)
    and ``empty_genes`` (``"error"``: no more; ``"impute"``: all; or names / positions)."""
    ok = np.zeros(m, dtype=bool) if absent is None else absent.copy()
    if isinstance(empty_genes, str):
        if empty_genes not in ("error", "impute"):
            raise ValueError(f"empty_genes must be 'error', 'impute' or a list of genes, got {empty_genes!r}")
        if empty_genes == "impute":
            ok[:] = True
    elif empty_genes is not None:
        pos = {str(g): k for k, g in enumerate(names)} if names is not None else {}
        for g in np.atleast_1d(np.asarray(empty_genes, dtype=object)):
            if isinstance(g, (int, np.integer)) and not isinstance(g, bool):
                if not 0 <= int(g) < m:
                    raise FEInputError(f"empty_genes: column {int(g)} is outside 0..{m - 1}")
                ok[int(g)] = True
            elif str(g) in pos:
                ok[pos[str(g)]] = True
            else:
                raise FEInputError(f"empty_genes: {str(g)!r} is not one of the model's genes")
    return ok


def frame_output(X: Any, arr: np.ndarray, absent: np.ndarray | None, names: np.ndarray | None) -> np.ndarray:
    """The result matrix of a DataFrame ``X``: its observed values in the frame's own (float)
    dtype, on the model's genes ``names`` (``arr`` holds them in float32; ``absent``: the
    model's genes the frame lacks)."""
    dtypes = list(X.dtypes)
    dtype = np.result_type(*dtypes, np.float32) if dtypes else np.float32
    if dtype == np.float32:
        return arr.copy()       # arr may be a view of the frame's own data
    out = np.full(arr.shape, np.nan, dtype=dtype)
    if names is None:
        out[:] = X.to_numpy(dtype=dtype)
    else:
        present = np.ones(len(names), dtype=bool) if absent is None else ~absent
        cols = [str(g) for g in np.asarray(names)[present]]
        frame = X.copy(deep=False)
        frame.columns = frame.columns.astype(str)
        out[:, present] = frame[cols].to_numpy(dtype=dtype)
    return out


def fill_missing(out: np.ndarray, arr: np.ndarray, observed_per_row: np.ndarray, net,
                 embed: Callable[[np.ndarray, np.ndarray], np.ndarray], shift: torch.Tensor | None = None,
                 row_offset: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """Replace the NaN of ``out`` (a copy of ``arr``, the float32 profiles with NaN) by the
    decoder's values at the embeddings ``embed(profiles, row numbers)`` of the rows that
    have any, in chunks of :data:`IMPUTE_CHUNK` rows; ``shift``: every row's covariate term
    (a model with covariates); ``row_offset(rows)``: per-gene offsets added to those rows'
    decoded values (the samples of covariate levels the model never saw)."""
    n, m = arr.shape
    todo = np.flatnonzero(observed_per_row < m)
    fill_rows = int(min(ROW_BLOCK, max(1, IMPUTE_FILL_ELEMENTS // m)))   # decoded rows per fill block
    for c in range(0, len(todo), IMPUTE_CHUNK):
        idx = todo[c:c + IMPUTE_CHUNK]
        block = arr if len(idx) == n else np.ascontiguousarray(arr[idx])
        Z = torch.from_numpy(embed(block, idx))
        for b in range(0, len(idx), fill_rows):
            r = idx[b:b + fill_rows]
            R = reconstruct(net, Z[b:b + fill_rows],
                            shift=None if shift is None else shift[torch.from_numpy(r)]).numpy()
            if row_offset is not None:
                R = R + row_offset(r)
            sub = out[r]
            hole = np.isnan(sub)
            sub[hole] = R[hole]
            out[r] = sub


def output_array(X: Any, arr32: np.ndarray, copy: bool) -> np.ndarray:
    """The array :meth:`FactorizedEmbeddings.impute` fills: ``X``'s values in its own
    floating dtype (float32 and float64 kept, integers as float64), in place when
    ``copy`` is False and ``X`` is such a numpy array already."""
    if isinstance(X, np.ndarray) and X.dtype in (np.float32, np.float64) and X.flags.c_contiguous:
        return X if not copy else X.copy()
    src = X
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None and isinstance(X, torch_mod.Tensor):
        src = X.detach().cpu().numpy()
    src = np.asarray(src)
    dtype = np.result_type(src.dtype, np.float32) if src.dtype.kind in "biuf" else np.float32
    if dtype == np.float32:
        return arr32.copy() if np.shares_memory(arr32, src) else arr32
    return np.array(src, dtype=dtype, order="C", copy=True)
