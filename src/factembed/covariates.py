"""Known covariates of the samples (batch, tissue, sex, age...): their table, kinds and codes.

A model fitted with covariates learns them as factors beside the sample and gene
embeddings (:class:`factembed.engine.network.FactorizedEmbeddingNet`: a categorical covariate has a
table of level vectors, a numeric one enters standardised), so the sample embedding is
left the variation they do not explain.  This module turns what a user passes into what
the network needs, and back:

* :func:`covariate_table` reads ``covariates=`` of ``fit`` / ``transform`` /
  ``inverse_transform``: a pandas DataFrame (one row per sample, in ``X``'s order), a dict
  of 1-D arrays, or - with an AnnData ``X`` - a list of ``obs`` column names;
* :class:`CovariateSpec` holds each covariate's name, kind, levels (by name) or mean and
  sd, and its embedding size; :meth:`CovariateSpec.encode` gives the level codes and
  standardised values of a table, with errors that name the sample and the column.

Kinds: a column of strings, categories or booleans is categorical; a numeric column is
numeric.  Embedding size of a categorical covariate of ``L`` levels: ``L - 1`` (what lets
every level shift the first layer independently) within [:data:`MIN_LEVEL_DIM`,
:data:`MAX_LEVEL_DIM`]: on a planted two-batch matrix (``bench/NOTES.md``, "Covariates"),
one number per level left most of the batch in the sample embedding, four or eight far
less (a wider level vector gives the optimiser the covariate's path sooner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import FEInputError

__all__ = ["Covariate", "CovariateSpec", "covariate_table", "is_numeric", "MIN_LEVEL_DIM", "MAX_LEVEL_DIM"]

#: the smallest and largest embedding of a categorical covariate's levels
MIN_LEVEL_DIM = 4
MAX_LEVEL_DIM = 8
KINDS = ("categorical", "numeric")


@dataclass(frozen=True)
class Covariate:
    """One covariate: ``name``, ``kind`` (``"categorical"`` or ``"numeric"``), the
    categorical ``levels`` (sorted names) and embedding size ``dim``, or the numeric
    ``mean`` and ``sd`` its values are standardised with."""
    name: str
    kind: str
    levels: tuple[str, ...] = ()
    dim: int = 1
    mean: float = 0.0
    sd: float = 1.0

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            d.update(levels=list(self.levels), dim=self.dim)
        else:
            d.update(mean=self.mean, sd=self.sd)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Covariate":
        if d.get("kind") not in KINDS:
            raise ValueError(f"unknown covariate kind {d.get('kind')!r}")
        return cls(str(d["name"]), str(d["kind"]), tuple(str(v) for v in d.get("levels", ())),
                   int(d.get("dim", 1)), float(d.get("mean", 0.0)), float(d.get("sd", 1.0)))


def _is_missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "fc":
        return np.isnan(values)
    if values.dtype.kind in "biu":
        return np.zeros(len(values), dtype=bool)
    try:
        import pandas as pd
        na = pd.NA
    except ImportError:                 # pragma: no cover - pandas is a dependency
        na = None
    return np.array([v is None or v is na or (isinstance(v, float) and np.isnan(v)) for v in values.tolist()],
                    dtype=bool)


def is_numeric(values: Any) -> bool:
    """A covariate column is numeric when its values are integers or floats; strings,
    categories and booleans are categorical (the one rule of the package)."""
    return np.asarray(values).dtype.kind in "iuf"


def _kind(values: np.ndarray) -> str:
    return "numeric" if is_numeric(values) else "categorical"


def _as_column(values: Any, name: str, n: int, what: str) -> np.ndarray:
    if hasattr(values, "dtype") and str(getattr(values, "dtype", "")) == "category":
        values = np.asarray(values.astype(object))
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise FEInputError(f"covariate {name!r} of {what} must be one value per sample, got shape {arr.shape}")
    if len(arr) != n:
        raise FEInputError(f"covariate {name!r} of {what} has {len(arr)} values for {n} samples "
                           f"(one row per sample, in the order of X)")
    return arr


def covariate_table(covariates: Any, X: Any, n: int, what: str = "X") -> dict[str, np.ndarray]:
    """``{name: 1-D array}`` of ``covariates`` for the ``n`` samples of ``X``: a DataFrame,
    a dict of 1-D arrays, or (``X`` an AnnData) a list of its ``obs`` columns."""
    if isinstance(covariates, str):
        covariates = [covariates]
    if isinstance(covariates, (list, tuple)):
        obs = getattr(X, "obs", None)
        if obs is None:
            raise FEInputError("covariates given as column names need an AnnData X (its obs columns); "
                               "pass a DataFrame or a dict of arrays, one row per sample")
        absent = [c for c in covariates if c not in obs.columns]
        if absent:
            raise FEInputError(f"{what}.obs has no column {absent[0]!r} (columns: {', '.join(map(str, obs.columns[:10]))})")
        covariates = {c: obs[c] for c in covariates}
    if hasattr(covariates, "columns") and hasattr(covariates, "__getitem__"):       # a DataFrame
        covariates = {str(c): covariates[c] for c in covariates.columns}
    if not isinstance(covariates, Mapping) or not covariates:
        raise FEInputError("covariates must be a DataFrame, a dict of 1-D arrays (one value per sample) or, "
                           "for an AnnData, a list of obs columns")
    return {str(k): _as_column(v, str(k), n, what) for k, v in covariates.items()}


@dataclass(frozen=True)
class CovariateSpec:
    """The covariates of a model, in order (see the module's docstring)."""
    covariates: tuple[Covariate, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.covariates]

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """``(n_levels, dim)`` per covariate (``(0, 1)`` numeric), for the network."""
        return tuple((len(c.levels), c.dim) if c.kind == "categorical" else (0, 1) for c in self.covariates)

    @classmethod
    def fit(cls, table: Mapping[str, np.ndarray], dims: Mapping[str, int] | None = None,
            sample_names: Sequence | None = None) -> "CovariateSpec":
        """Kinds, levels and scales of ``table`` (from :func:`covariate_table`); ``dims``
        overrides the embedding size of named categorical covariates."""
        dims = dict(dims or {})
        unknown = [k for k in dims if k not in table]
        if unknown:
            raise FEInputError(f"covariate_dims names {unknown[0]!r}, which is not a covariate "
                               f"(covariates: {', '.join(table)})")
        out = []
        for name, values in table.items():
            _check_no_missing(values, name, sample_names)
            if _kind(values) == "numeric":
                v = values.astype(np.float64)
                sd = float(v.std())
                out.append(Covariate(name, "numeric", mean=float(v.mean()), sd=sd if sd > 0 else 1.0))
            else:
                levels = tuple(sorted({str(v) for v in values.tolist()}))
                dim = int(dims.get(name, max(MIN_LEVEL_DIM, min(len(levels) - 1, MAX_LEVEL_DIM))))
                if dim < 1:
                    raise FEInputError(f"covariate_dims[{name!r}] must be >= 1, got {dim}")
                out.append(Covariate(name, "categorical", levels=levels, dim=dim))
        return cls(tuple(out))

    def encode(self, table: Mapping[str, np.ndarray], sample_names: Sequence | None = None,
               what: str = "X") -> tuple[np.ndarray, np.ndarray]:
        """``(level codes (n, n_categorical) int64, standardised values (n, n_numeric)
        float32)`` of ``table``, which must hold every covariate of the model (extra columns
        are ignored).  A level the model never saw is an error naming it and its samples."""
        lv, nv, _ = self.encode_new(table, sample_names, what, unseen="error")
        return lv, nv

    def encode_new(self, table: Mapping[str, np.ndarray], sample_names: Sequence | None = None,
                   what: str = "X", unseen: str = "error", min_samples: int = 1
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[str, ...]]]:
        """:meth:`encode`, and with ``unseen="learn"`` the levels the model never saw too:
        ``(codes, values, {covariate: its new levels})``, a new level coded after the
        model's (``n_levels``, ``n_levels + 1``, ... in sorted order).  A new level with
        fewer than ``min_samples`` samples is an error naming it and its count."""
        if unseen not in ("error", "learn"):
            raise ValueError(f"unseen must be 'error' or 'learn', got {unseen!r}")
        absent = [c for c in self.names if c not in table]
        if absent:
            raise FEInputError(f"the model was fitted with covariate(s) {', '.join(map(repr, self.names))}; "
                               f"{what}'s covariates lack {absent[0]!r}",
                               hint=f"pass covariates= with a column {absent[0]!r}, one value per sample")
        n = len(next(iter(table.values())))
        codes, values, added = [], [], {}
        for c in self.covariates:
            col = table[c.name]
            _check_no_missing(col, c.name, sample_names)
            if c.kind == "numeric":
                if _kind(col) != "numeric":
                    raise FEInputError(f"covariate {c.name!r} is numeric in the model, but {what} gives "
                                       f"non-numeric values (first: {col[0]!r})")
                values.append((col.astype(np.float64) - c.mean) / c.sd)
            else:
                pos = {lv: i for i, lv in enumerate(c.levels)}
                keys = [str(v) for v in col.tolist()]
                new = sorted({k for k in keys if k not in pos})
                if new and unseen == "error":
                    first = keys.index(new[0])
                    who = f"sample {sample_names[first]!r}" if sample_names is not None else f"row {first}"
                    raise FEInputError(
                        f"covariate {c.name!r}: level {new[0]!r} ({who}) was not seen in training "
                        f"(levels: {', '.join(map(repr, c.levels[:10]))})",
                        hint="pass unseen='learn' (the default of transform; --unseen learn) to learn the new "
                             "level with the samples' embeddings, or give the nearest known level")
                for lv_new in new:
                    count = keys.count(lv_new)
                    if count < min_samples:
                        raise FEInputError(
                            f"covariate {c.name!r}: the new level {lv_new!r} has {count} sample(s); learning a "
                            f"level the model never saw needs at least {min_samples}",
                            hint="embed more samples of that level in one call, give the nearest known level, "
                                 "or refit the model with samples of it")
                    pos[lv_new] = len(pos)
                if new:
                    added[c.name] = tuple(new)
                codes.append(np.array([pos[k] for k in keys], dtype=np.int64))
        lv = np.stack(codes, 1) if codes else np.zeros((n, 0), dtype=np.int64)
        nv = np.stack(values, 1).astype(np.float32) if values else np.zeros((n, 0), dtype=np.float32)
        return lv, nv, added

    def broadcast(self, levels: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
        """A table of ``n`` samples that all have ``levels`` (one value per covariate), e.g.
        the reference batch of a batch-corrected reconstruction."""
        return {k: np.array([v] * n, dtype=object if isinstance(v, str) else None) for k, v in levels.items()}

    def to_dict(self) -> list[dict]:
        return [c.to_dict() for c in self.covariates]

    @classmethod
    def from_dict(cls, d: Sequence[Mapping]) -> "CovariateSpec":
        return cls(tuple(Covariate.from_dict(c) for c in d))


def _check_no_missing(values: np.ndarray, name: str, sample_names: Sequence | None) -> None:
    miss = _is_missing(values)
    if miss.any():
        i = int(np.flatnonzero(miss)[0])
        who = f"sample {sample_names[i]!r}" if sample_names is not None else f"row {i}"
        raise FEInputError(f"covariate {name!r} is missing for {int(miss.sum())} sample(s) (first: {who})",
                           hint="give every sample a value (e.g. an 'unknown' level)")
