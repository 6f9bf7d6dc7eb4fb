"""The embedding methods of the evaluation: each fitted on the training fold, with an
out-of-sample path for the test fold (FE, PCA, UMAP, the full profile), and the batch
corrections that see both folds' batches (ComBat then PCA, Harmony on PCA).

:data:`EMBEDDERS` maps a method name to its class (tests and users may register more)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from ..config import FEConfig
from ..covariates import is_numeric


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------
# embedding methods: fit on the training fold, out-of-sample path for the test fold
# --------------------------------------------------------------------------


class Embedder:
    """Interface of an embedding method in the evaluation.

    ``fit_transform(X_train)`` sees the training fold only and returns its embedding;
    ``transform(X_test)`` embeds new rows without refitting."""

    name = "base"
    deterministic_dim = True
    #: takes the samples' covariates (``fit_transform(X, covariates=)``, ``transform(X, covariates=)``)
    uses_covariates = False
    #: sees both folds at once (``fit_both``): corrections such as ComBat that are fitted on
    #: every sample's batch (never on the task's labels)
    transductive = False
    #: takes NaN entries (missing values) itself; the others get them filled with the
    #: training fold's gene means
    handles_missing = False

    def __init__(self, dim: int, seed: int, fe_config: FEConfig | None = None):
        self.dim = int(dim)
        self.seed = int(seed)
        self.fe_config = fe_config

    def fit_transform(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def transform(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def extra_metrics(self, X_test: np.ndarray, Z_test: np.ndarray) -> dict[str, float]:
        return {}


def _pca(dim: int, seed: int):
    from sklearn.decomposition import PCA
    return PCA(n_components=dim, random_state=seed, svd_solver="full")


class PCAEmbedder(Embedder):
    """PCA (centred with the training mean); test rows are projected."""

    name = "pca"

    def fit_transform(self, X):
        self.model = _pca(self.dim, self.seed)
        return self.model.fit_transform(X)

    def transform(self, X):
        return self.model.transform(X)


class UMAPEmbedder(Embedder):
    """UMAP (umap-learn, 15 neighbours, min_dist 0.1); test rows through ``UMAP.transform``."""

    name = "umap"

    def fit_transform(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap
            n_neighbors = int(min(15, max(2, X.shape[0] - 1)))
            self.model = umap.UMAP(n_components=self.dim, n_neighbors=n_neighbors, min_dist=0.1,
                                   random_state=self.seed, n_jobs=1,
                                   init="spectral" if self.dim < X.shape[0] - 1 else "random")
            return self.model.fit_transform(X)

    def transform(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.model.transform(X)


class FEEmbedder(Embedder):
    """Factorized Embeddings with ``sample_dim = dim``; the training embedding is the
    learned one, test rows are embedded by inference (``transform``)."""

    name = "fe"
    handles_missing = True
    uses_covariates = True

    def fit_transform(self, X, covariates=None):
        from ..estimator.factorized_embeddings import FactorizedEmbeddings
        cfg = replace(self.fe_config or FEConfig(), sample_dim=self.dim, verbose=False)
        if cfg.random_state is None:
            cfg = replace(cfg, random_state=self.seed)
        self.model = FactorizedEmbeddings.from_config(cfg)
        self.missing = "ignore" if np.isnan(X).any() else "error"
        self.model.fit(X, missing=self.missing, covariates=covariates)
        self.train_X_ = X
        return self.model.embedding_

    def transform(self, X, covariates=None):
        self.test_covariates_ = covariates
        return self.model.transform(X, missing="ignore" if np.isnan(X).any() else "error", covariates=covariates)

    def extra_metrics(self, X_test, Z_test):
        rec = self.model.inverse_transform(Z_test, covariates=getattr(self, "test_covariates_", None))
        seen = ~np.isnan(X_test)              # the observed entries only
        return {"recon_r": pearson_r(X_test[seen], rec[seen]), "train_steps": float(self.model.n_steps_)}


class FullProfile(Embedder):
    """Reference: no reduction, the preprocessed profile itself."""

    name = "full"

    def fit_transform(self, X):
        return np.asarray(X)

    def transform(self, X):
        return np.asarray(X)


def _batches(cov_tr, cov_te) -> np.ndarray:
    """Both folds' batches (the first categorical covariate), training rows first."""
    for name, v in (cov_tr or {}).items():
        if not is_numeric(v):
            return np.concatenate([np.asarray(v), np.asarray(cov_te[name])]).astype(str)
    raise ValueError("this method corrects a batch: pass a categorical covariate (--covariate BATCH)")


class ComBatPCA(Embedder):
    """ComBat (``scanpy.pp.combat``) on both folds with the first categorical covariate as
    the batch, then PCA fitted on the training fold (test rows projected).  Transductive in
    the batch only: ComBat sees every sample's batch, never the task's labels."""

    name = "combat_pca"
    uses_covariates = True
    transductive = True

    def fit_both(self, X_tr, X_te, cov_tr, cov_te):
        import anndata
        import scanpy as sc
        ad = anndata.AnnData(np.vstack([X_tr, X_te]).astype(np.float64))
        ad.obs["batch"] = _batches(cov_tr, cov_te)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.combat(ad, key="batch")
        C = np.asarray(ad.X)
        pca = _pca(self.dim, self.seed).fit(C[:len(X_tr)])
        return pca.transform(C[:len(X_tr)]), pca.transform(C[len(X_tr):])


class HarmonyPCA(Embedder):
    """Harmony (``harmonypy``, defaults) on the PCA of the training fold (test rows
    projected), both folds together with their batch (the first categorical covariate)."""

    name = "harmony_pca"
    uses_covariates = True
    transductive = True

    def fit_both(self, X_tr, X_te, cov_tr, cov_te):
        import harmonypy
        import pandas as pd
        pca = _pca(self.dim, self.seed).fit(X_tr)
        P = np.vstack([pca.transform(X_tr), pca.transform(X_te)])
        H = np.asarray(harmonypy.run_harmony(P, pd.DataFrame({"batch": _batches(cov_tr, cov_te)}), ["batch"],
                                             random_state=self.seed, verbose=False).Z_corr)
        H = H if H.shape[0] == len(P) else H.T
        return H[:len(X_tr)], H[len(X_tr):]


#: method name -> Embedder class (tests may register spies here)
EMBEDDERS: dict[str, type[Embedder]] = {
    "fe": FEEmbedder,
    "pca": PCAEmbedder,
    "umap": UMAPEmbedder,
    "full": FullProfile,
    "combat_pca": ComBatPCA,
    "harmony_pca": HarmonyPCA,
}
