"""scanpy-style tools: fit FE on an ``AnnData`` and embed new cells into a model.

>>> import factembed
>>> fe = factembed.tl.fe(adata)                  # adata.obsm["X_fe"], .varm["X_fe"], .uns["fe"]
>>> sc.pl.embedding(adata, basis="fe", color="cell_type")
>>> factembed.tl.fe_transform(new_adata, fe)     # new_adata.obsm["X_fe"], same model

As scanpy's tools do, these work on the values as stored (``adata.X`` or a layer,
usually already normalised and log-transformed: nothing is transformed again), write
their results into the AnnData in place and default to ``random_state=0``.  ``X`` may
be dense or sparse (kept sparse: only the rows of each training batch and of each
inference block are made dense), or backed (read in row blocks).

Keys, as scanpy's ``pca`` lays them out: with ``key_added="X_fe"`` (the default) the
sample embedding goes to ``obsm["X_fe"]``, the gene embedding to ``varm["X_fe"]`` (NaN
rows for genes left out of the fit) and the parameters and a training summary to
``uns["fe"]``; another ``key_added`` is used for all three.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .estimator.inputs import CsrRows, as_matrix, is_anndata, take_genes
from .covariates import covariate_table
from .errors import FEInputError
from .estimator.factorized_embeddings import FactorizedEmbeddings
from .training.runner import training_summary

__all__ = ["fe", "fe_transform", "interactive"]

_AUTO = "auto"


def _uns_key(key_added: str) -> str:
    return "fe" if key_added == "X_fe" else key_added


def _check_adata(adata: Any) -> None:
    if not is_anndata(adata):
        raise TypeError(f"expected an anndata.AnnData, got {type(adata).__name__}")


def _var_mask(adata: Any, mask_var: Any) -> tuple[np.ndarray, str]:
    """Boolean mask of the genes to consider (a writable copy) and how it was chosen (for ``uns``)."""
    n = adata.n_vars
    if isinstance(mask_var, str) and mask_var == _AUTO:
        if "highly_variable" in adata.var:
            return np.array(adata.var["highly_variable"], dtype=bool), "highly_variable"
        return np.ones(n, dtype=bool), "all genes"
    if mask_var is None:
        return np.ones(n, dtype=bool), "all genes"
    if isinstance(mask_var, str):
        if mask_var not in adata.var:
            raise FEInputError(f"adata.var has no column {mask_var!r} for mask_var; columns are "
                               f"{', '.join(map(repr, adata.var.columns[:10])) or 'none'}")
        return np.array(adata.var[mask_var], dtype=bool), mask_var
    mask = np.array(mask_var, dtype=bool).reshape(-1)      # a copy: the caller's mask is not changed
    if mask.shape != (n,):
        raise FEInputError(f"mask_var has {mask.size} entries for {n} genes")
    return mask, "boolean mask"


def _constant_columns(mat: Any) -> np.ndarray:
    """Columns with one value in every row (implicit zeros of a sparse matrix included)."""
    if isinstance(mat, np.ndarray):
        lo, hi = np.full(mat.shape[1], np.inf), np.full(mat.shape[1], -np.inf)
        step = max(1, (1 << 22) // max(1, mat.shape[1]))
        for a in range(0, mat.shape[0], step):
            np.minimum(lo, mat[a:a + step].min(axis=0), out=lo)
            np.maximum(hi, mat[a:a + step].max(axis=0), out=hi)
        return ~(hi > lo)
    if isinstance(mat, CsrRows):
        def dense(v):
            return np.asarray(v.toarray() if hasattr(v, "toarray") else v).reshape(-1)
        return ~(dense(mat.X.max(axis=0)) > dense(mat.X.min(axis=0)))
    stats = mat.gene_stats()           # a backed source: one pass over row blocks
    return ~(stats.max > stats.min)


def _uns_value(v: Any) -> Any:
    """A value AnnData can write to .h5ad (no None, tuples as lists)."""
    if isinstance(v, tuple):
        return list(v)
    return v


def _record(adata: Any, key_added: str, est: FactorizedEmbeddings, genes_used: np.ndarray, **more) -> None:
    d = est.get_params()
    d["n_steps"] = est.n_steps_
    params = {k: _uns_value(v) for k, v in d.items() if v is not None}
    summary = {k: v for k, v in training_summary(est.history_).items() if v is not None}
    adata.uns[_uns_key(key_added)] = {"params": params, "summary": summary,
                                      "n_genes_used": int(genes_used.sum()),
                                      **{k: v for k, v in more.items() if v is not None}}


def _gene_rows(adata: Any, est: FactorizedEmbeddings) -> tuple[np.ndarray, np.ndarray]:
    """The model's gene embedding laid out over ``adata.var_names`` (NaN rows for the
    genes the model does not have), and the mask of the genes it has."""
    G = est.gene_embedding_
    full = np.full((adata.n_vars, G.shape[1]), np.nan, dtype=np.float32)
    names = getattr(est, "feature_names_in_", None)
    if names is None:
        if G.shape[0] != adata.n_vars:
            raise FEInputError(f"the model has {G.shape[0]} genes without names; adata has {adata.n_vars}")
        full[:] = G
        return full, np.ones(adata.n_vars, dtype=bool)
    pos = {str(g): j for j, g in enumerate(names)}
    idx = np.array([pos.get(str(g), -1) for g in adata.var_names], dtype=np.int64)
    have = idx >= 0
    full[have] = G[idx[have]]
    return full, have


def fe(adata: Any, layer: str | None = None, key_added: str = "X_fe", *, mask_var: Any = _AUTO,
       drop_constant: bool = True, random_state: int | None = 0, covariate_keys: Any = None,
       **params) -> FactorizedEmbeddings:
    """Fit Factorized Embeddings on ``adata`` and store the results in it.

    Parameters
    ----------
    adata:
        cells x genes; the values of ``adata.X`` (or ``adata.layers[layer]``) are used as
        they are (e.g. log-normalised counts).  Dense, sparse or backed.
    key_added:
        ``obsm[key_added]``: the cell embedding (``n_obs x sample_dim``);
        ``varm[key_added]``: the gene embedding (``n_vars x gene_dim``, NaN rows for the
        genes left out); ``uns["fe"]`` (``uns[key_added]`` for another key): parameters,
        training summary, number of genes used.
    mask_var:
        the genes to fit on: a boolean ``var`` column name or mask; ``"auto"`` (default)
        uses ``var["highly_variable"]`` when present, as ``scanpy.tl.pca`` does, else all
        genes; ``None``: all genes.
    drop_constant:
        also leave out genes with one value in every cell (they carry nothing to learn).
    covariate_keys:
        ``obs`` columns fitted as known factors beside the embedding (batch, donor, sex,
        age...; see ``FactorizedEmbeddings.fit(covariates=)``), like scvi-tools'
        ``batch_key`` / ``categorical_covariate_keys``; :func:`fe_transform` then reads
        the same columns of the new cells.
    random_state, **params:
        :class:`~factembed.FactorizedEmbeddings` parameters (``sample_dim``, ``n_steps``,
        ``gene_dim``, ...); ``random_state`` defaults to 0, as in scanpy.

    Returns the fitted estimator (for :func:`fe_transform`, ``similar_genes``, ``save``).
    """
    _check_adata(adata)
    est = FactorizedEmbeddings(random_state=random_state, **params)
    est.config  # validate the parameters before reading anything
    mat, samples, genes = as_matrix(adata, layer=layer, min_samples=2)
    try:
        mask, mask_name = _var_mask(adata, mask_var)
        if drop_constant:
            mask &= ~_constant_columns(mat)
        if not mask.any():
            raise FEInputError("no genes left to fit on (all masked out by mask_var, or constant)")
        cols = np.flatnonzero(mask)
        covariates = None if covariate_keys is None else covariate_table(
            covariate_keys if isinstance(covariate_keys, str) else list(covariate_keys), adata, adata.n_obs, "adata")
        est.fit(take_genes(mat, cols), sample_names=samples, gene_names=genes[cols], covariates=covariates)
    finally:
        if mat is not adata and hasattr(mat, "close"):
            mat.close()
    adata.obsm[key_added] = est.embedding_
    adata.varm[key_added], _ = _gene_rows(adata, est)
    _record(adata, key_added, est, mask, layer=layer, mask_var=mask_name, drop_constant=bool(drop_constant))
    return est


def fe_transform(adata: Any, model: Any, layer: str | None = None, key_added: str = "X_fe") -> FactorizedEmbeddings:
    """Embed the cells of ``adata`` into a fitted model, the way :func:`fe` stores a fit.

    ``model``: a fitted :class:`~factembed.FactorizedEmbeddings` (e.g. what :func:`fe`
    returned) or the directory of a saved model (``fe.save`` / ``factembed fit``).  Genes
    are matched by ``var_names``; every gene of the model must be present.  A model from
    ``factembed fit`` that applied log10(x + 1) to its training data applies it here too
    (so give it the same raw values as the training file).  Writes ``obsm[key_added]``,
    ``varm[key_added]`` (the model's gene embedding; NaN rows for genes it does not
    have) and ``uns`` as :func:`fe` does; returns the estimator.
    """
    _check_adata(adata)
    est = model if isinstance(model, FactorizedEmbeddings) else FactorizedEmbeddings.load(os.fspath(model))
    est._check_fitted()
    mat, _, genes = as_matrix(adata, layer=layer)
    try:
        pre = (getattr(est, "extra_", None) or {}).get("preprocessing") or {}
        if pre.get("log10p1"):
            mat = _log10p1(mat)
        spec = getattr(est, "covariates_", None)     # the model's covariates: the same obs columns
        shift = est._covariate_shift(None if spec is None else spec.names, adata, adata.n_obs, "adata")
        Z = est._embed(est._align_matrix(mat, genes, "adata"), shift=shift)
    finally:
        if hasattr(mat, "close"):
            mat.close()
    adata.obsm[key_added] = Z
    adata.varm[key_added], have = _gene_rows(adata, est)
    _record(adata, key_added, est, have, layer=layer, transform=True,
            model=None if isinstance(model, FactorizedEmbeddings) else os.fspath(model))
    return est


def _log10p1(mat: Any) -> Any:
    """``log10(x + 1)`` of the values (a copy; sparse stays sparse, backed is transformed
    per block as it is read); negative values raise."""
    from ._utils.validation import _log10p1_inplace, first_bad_value

    if isinstance(mat, np.ndarray):
        hit = first_bad_value(mat, nonneg=True)
        if hit is not None:
            raise FEInputError(f"row {hit[0]}, column {hit[1]}: negative value {hit[2]:g} cannot be "
                               "log10(x+1)-transformed as this model's preprocessing does")
        out = mat.copy()
        _log10p1_inplace(out)
        return out
    if isinstance(mat, CsrRows):
        X = mat.X.copy()
        if X.data.size and X.data.min() < 0:
            raise FEInputError("negative values cannot be log10(x+1)-transformed as this model's preprocessing does")
        _log10p1_inplace(X.data)
        return CsrRows(X, mat.samples, mat.genes)
    mat.log10p1 = True
    return mat


def interactive(adata: Any, model: FactorizedEmbeddings | None = None, key_added: str = "X_fe", *,
                new: Any = None, path: str | os.PathLike | None = None, color_by: str | None = None, **kw):
    """The interactive HTML page (:func:`factembed.plot.interactive`) of ``adata.obsm[key_added]``:
    cells named by ``obs_names``, every ``obs`` column an annotation to colour by; the gene
    view from ``model`` (the estimator :func:`fe` returned) or else ``varm[key_added]`` (genes
    left out of the fit dropped); ``new``: another AnnData embedded with :func:`fe_transform`
    (its ``obsm[key_added]`` drawn over the training cells)."""
    from .plot.page import embedding_page

    _check_adata(adata)
    if key_added not in adata.obsm:
        raise FEInputError(f"adata.obsm has no {key_added!r}: run factembed.tl.fe(adata) first")
    if model is not None:
        G, genes = model.gene_embedding_, getattr(model, "feature_names_in_", None)
    elif key_added in adata.varm:
        G = np.asarray(adata.varm[key_added])
        have = ~np.isnan(G).any(axis=1)
        G, genes = G[have], np.asarray(adata.var_names)[have]
    else:
        G, genes = None, None
    new_part = None
    if new is not None:
        _check_adata(new)
        if key_added not in new.obsm:
            raise FEInputError(f"new.obsm has no {key_added!r}: run factembed.tl.fe_transform(new, model) first")
        new_part = {"Z": np.asarray(new.obsm[key_added]), "samples": list(new.obs_names),
                    "annotations": new.obs.reset_index(drop=True)}
    return embedding_page(np.asarray(adata.obsm[key_added]), list(adata.obs_names), adata.obs.reset_index(drop=True),
                          gene_embedding=G, genes=genes, new=new_part, path=path, color_by=color_by, **kw)
