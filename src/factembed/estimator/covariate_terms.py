"""The estimator's covariates as the network needs them: a fit's codes recorded in the
network, the covariate terms of new samples, the level vectors as DataFrames
(:mod:`factembed.covariates` reads and checks the tables; this module adds torch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..covariates import CovariateSpec, covariate_table
from ..errors import FEInputError
from .inference import MIN_NEW_LEVEL_SAMPLES, NewLevels


def fit_covariates(covariates: Any, dims: dict | None, X: Any, n: int, samples: Any
                   ) -> tuple[CovariateSpec | None, tuple[np.ndarray, np.ndarray] | None]:
    """``(spec, (level codes, standardised values))`` of a fit's ``covariates`` (``(None,
    None)`` without any)."""
    if covariates is None:
        if dims:
            raise FEInputError("covariate_dims is given without covariates")
        return None, None
    table = covariate_table(covariates, X, n)
    spec = CovariateSpec.fit(table, dims, samples)
    return spec, spec.encode(table, samples)


@torch.no_grad()
def record_codes(net, levels: np.ndarray, values: np.ndarray) -> None:
    """Store the training samples' covariate codes in ``net``'s buffers."""
    net.covariate_levels.copy_(torch.from_numpy(levels))
    net.covariate_values.copy_(torch.from_numpy(values))


def covariate_shift(spec: CovariateSpec | None, net, covariates: Any, X: Any, n: int,
                    what: str = "X", unseen: str = "error") -> "torch.Tensor | NewLevels | None":
    """The covariate terms of ``n`` samples of ``X`` (``None`` for a model without
    covariates); ``covariates`` as in ``fit``, or a dict of one value per covariate for all
    of them (e.g. ``{"batch": "run_1"}``: every sample as if measured in ``run_1``).
    ``unseen="learn"``: levels the model never saw (at least
    :data:`~factembed.estimator.inference.MIN_NEW_LEVEL_SAMPLES` samples each) give a
    :class:`~factembed.estimator.inference.NewLevels` (their samples' terms and groups,
    whose offsets the inference learns); ``"error"``: such a level is an error naming it."""
    if spec is None:
        if covariates is not None:
            raise FEInputError("this model was fitted without covariates; leave covariates= out")
        return None
    if covariates is None:
        raise FEInputError(f"this model was fitted with covariate(s) {', '.join(map(repr, spec.names))}: "
                           f"pass covariates= for the samples of {what}")
    if isinstance(covariates, dict) and all(np.ndim(v) == 0 for v in covariates.values()):
        covariates = spec.broadcast(covariates, n)
    levels, values, new = spec.encode_new(covariate_table(covariates, X, n, what), what=what, unseen=unseen,
                                          min_samples=MIN_NEW_LEVEL_SAMPLES)
    dev = net.gene_embedding.device
    if new:
        counts = [len(new.get(c.name, ())) for c in spec.covariates if c.kind == "categorical"]
        return NewLevels(net, torch.from_numpy(levels), torch.from_numpy(values), counts)
    with torch.no_grad():
        return net.covariate_term(torch.from_numpy(levels).to(dev), torch.from_numpy(values).to(dev))


def level_frames(spec: CovariateSpec | None, net) -> dict:
    """``{name: DataFrame (levels x dim)}`` of the categorical covariates' level vectors."""
    import pandas as pd

    cats = [] if spec is None else [c for c in spec.covariates if c.kind == "categorical"]
    return {c.name: pd.DataFrame(t.detach().cpu().numpy().copy(), index=pd.Index(c.levels, name=c.name))
            for c, t in zip(cats, net.covariate_embeddings)}


def training_covariates(spec: CovariateSpec | None, net) -> dict[str, np.ndarray]:
    """``{name: values}`` of the training samples' covariates as the user gave them (level
    names; numbers back on their own scale), from the codes the network records."""
    if spec is None:
        return {}
    out, cat, num = {}, 0, 0
    for c in spec.covariates:
        if c.kind == "categorical":
            out[c.name] = np.asarray(c.levels, dtype=object)[net.covariate_levels[:, cat].cpu().numpy()]
            cat += 1
        else:
            out[c.name] = net.covariate_values[:, num].cpu().numpy().astype(np.float64) * c.sd + c.mean
            num += 1
    return out
