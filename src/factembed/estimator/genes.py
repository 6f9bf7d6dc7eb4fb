"""The gene side of a model: which genes lie near each other in the gene embedding.

One cosine similarity serves :meth:`FactorizedEmbeddings.similar_genes` (one gene's
neighbours) and the interactive page (every gene's neighbours, :func:`nearest_genes`).
It imports only the package's errors (:func:`gene_position`, a gene by name or column)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import FEInputError


def cosine_similarity(G: np.ndarray, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(len(rows), m)`` float64 cosine similarities between the gene embeddings ``G[rows]``
    and every row of ``G``; NaN where either embedding is all zeros and for each gene with
    itself (a gene is not its own neighbour)."""
    G = np.asarray(G, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    norms = np.linalg.norm(G, axis=1)
    Gn = G / np.where(norms > 0, norms, 1.0)[:, None]
    sims = Gn[rows] @ Gn.T
    sims[norms[rows] == 0] = np.nan
    sims[:, norms == 0] = np.nan
    sims[np.arange(len(rows)), rows] = np.nan
    return sims


def _order_key(sims: np.ndarray) -> np.ndarray:
    """Ascending sort key of similarities: most similar first, NaN last."""
    return np.where(np.isnan(sims), np.inf, -sims)


def rank_by_similarity(sims: np.ndarray) -> np.ndarray:
    """Column order of each row of ``sims``, most similar first, NaN last (ties by column)."""
    return np.argsort(_order_key(sims), axis=-1, kind="stable")


def nearest_genes(G: np.ndarray, k: int = 10, block: int = 2048) -> np.ndarray:
    """``(m, k)`` int32: each gene's ``k`` nearest genes by :func:`cosine_similarity`, most
    similar first, the gene itself excluded, computed ``block`` genes at a time."""
    m = len(G)
    k = max(0, min(int(k), m - 1))
    out = np.empty((m, k), dtype=np.int32)
    if k == 0:
        return out
    for a in range(0, m, block):
        sims = cosine_similarity(G, np.arange(a, min(m, a + block)))
        key = _order_key(sims)
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, np.take_along_axis(key, part, axis=1)), axis=1)
        out[a:a + block] = np.take_along_axis(part, order, axis=1)
    return out


def gene_position(gene: Any, names: np.ndarray | None, m: int) -> int:
    """Column of ``gene`` (a name, or a column number for a model without gene names)."""
    if names is None:
        if isinstance(gene, (int, np.integer)) and not isinstance(gene, bool) and 0 <= gene < m:
            return int(gene)
        raise FEInputError(f"unknown gene {gene!r}: this model has no gene names (fit it on a DataFrame or "
                           f"AnnData, or pass gene_names=), so genes are column numbers 0..{m - 1}")
    pos = {str(g): i for i, g in enumerate(names)}
    key = str(gene)
    if key in pos:
        return pos[key]
    import difflib
    folded = [str(g) for g in names if str(g).casefold() == key.casefold()
              or str(g).split(".")[0] == key.split(".")[0]]
    close = folded[:3] or difflib.get_close_matches(key, list(pos), n=3)
    raise FEInputError(f"unknown gene {key!r}: not among the model's {m:,} genes"
                       + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""))
