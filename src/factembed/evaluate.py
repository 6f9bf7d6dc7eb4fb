"""Leakage-free evaluation of sample embeddings: FE vs PCA vs UMAP.

Stratified k-fold cross-validation over a grid of (fold, method, dimension).  For one
grid cell the *training fold only* is used to

* fit the preprocessing (kept genes: constant genes dropped, optional top-variable
  selection, their statistics),
* fit the embedding method (FE: ``fit``; PCA: ``fit``; UMAP: ``fit``),
* fit the classifiers on the training-fold embedding (kNN, logistic regression, a
  small MLP; scaling inside the classifier pipelines is fitted there too);

and the test fold is embedded only through the method's own out-of-sample path
(FE: :meth:`FactorizedEmbeddings.transform`, i.e. inference with the model frozen;
PCA: projection; UMAP: ``transform``), then scored.

Metrics (one tidy row each: ``fold, method, dim, metric, value``):

``knn_accuracy``, ``logreg_accuracy``, ``mlp_accuracy``
    accuracy on the test fold of a classifier trained on the training-fold embedding.
``distance_r``
    Pearson r between Euclidean distances in expression space (the preprocessed test
    profiles) and in the embedding, over a fixed random sample of pairs of test
    samples (the same pairs for every method and dimension of a fold).
``recon_r`` (FE only)
    Pearson r between the test profiles and the decoder's reconstruction of their
    inferred embeddings (all entries pooled).
``fit_seconds``, ``embed_seconds``
    wall time of fitting on the training fold / embedding the test fold.

The method ``full`` (not in the default list) is a reference: the classifiers on the
whole preprocessed profile; its ``dim`` is the number of input genes.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._files import atomic_output, write_text_atomic
from .config import FEConfig

DEFAULT_DIMS = (2, 4, 8, 16, 32, 64)
DEFAULT_METHODS = ("fe", "pca", "umap")
CLASSIFIERS = ("knn", "logreg", "mlp")
ACCURACY_METRICS = tuple(f"{c}_accuracy" for c in CLASSIFIERS)
METRIC_ORDER = ACCURACY_METRICS + ("distance_r", "recon_r", "fit_seconds", "embed_seconds")


# --------------------------------------------------------------------------
# embedding methods: fit on the training fold, out-of-sample path for the test fold
# --------------------------------------------------------------------------


class Embedder:
    """Interface of an embedding method in the evaluation.

    ``fit_transform(X_train)`` sees the training fold only and returns its embedding;
    ``transform(X_test)`` embeds new rows without refitting."""

    name = "base"
    deterministic_dim = True
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


class PCAEmbedder(Embedder):
    """PCA (centred with the training mean); test rows are projected."""

    name = "pca"

    def fit_transform(self, X):
        from sklearn.decomposition import PCA
        self.model = PCA(n_components=self.dim, random_state=self.seed, svd_solver="full")
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

    def fit_transform(self, X):
        from .estimator import FactorizedEmbeddings
        cfg = replace(self.fe_config or FEConfig(), sample_dim=self.dim, verbose=False)
        if cfg.random_state is None:
            cfg = replace(cfg, random_state=self.seed)
        self.model = FactorizedEmbeddings.from_config(cfg)
        self.missing = "ignore" if np.isnan(X).any() else "error"
        self.model.fit(X, missing=self.missing)
        self.train_X_ = X
        return self.model.embedding_

    def transform(self, X):
        return self.model.transform(X, missing="ignore" if np.isnan(X).any() else "error")

    def extra_metrics(self, X_test, Z_test):
        rec = self.model.inverse_transform(Z_test)
        seen = ~np.isnan(X_test)              # the observed entries only
        return {"recon_r": pearson_r(X_test[seen], rec[seen]), "train_steps": float(self.model.n_steps_)}


class FullProfile(Embedder):
    """Reference: no reduction, the preprocessed profile itself."""

    name = "full"

    def fit_transform(self, X):
        return np.asarray(X)

    def transform(self, X):
        return np.asarray(X)


#: method name -> Embedder class (tests may register spies here)
EMBEDDERS: dict[str, type[Embedder]] = {
    "fe": FEEmbedder,
    "pca": PCAEmbedder,
    "umap": UMAPEmbedder,
    "full": FullProfile,
}


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def sample_pairs(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random sample of ``min(n_pairs, n(n-1)/2)`` distinct pairs i < j."""
    i, j = np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    if len(i) > n_pairs:
        sel = np.sort(rng.choice(len(i), size=n_pairs, replace=False))
        i, j = i[sel], j[sel]
    return i, j


def pair_distances(Z: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    i, j = pairs
    return np.sqrt(((Z[i] - Z[j]) ** 2).sum(1))


def make_classifier(kind: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=5)
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    if kind == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3,
                                                             max_iter=1000, random_state=seed))
    raise ValueError(f"unknown classifier {kind!r}")


def classifier_accuracies(Z_train, y_train, Z_test, y_test, seed: int) -> dict[str, float]:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the MLP / logistic regression
        for kind in CLASSIFIERS:
            clf = make_classifier(kind, seed)
            clf.fit(Z_train, y_train)
            out[f"{kind}_accuracy"] = float(np.mean(clf.predict(Z_test) == y_test))
    return out


# --------------------------------------------------------------------------
# folds and the grid
# --------------------------------------------------------------------------


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (shuffled with ``seed``): list of (train index, test index)."""
    from sklearn.model_selection import StratifiedKFold
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() < n_folds:
        warnings.warn(f"the smallest class has {counts.min()} samples, fewer than {n_folds} folds; "
                      "some test folds will lack it", stacklevel=2)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in skf.split(np.zeros(len(labels)), labels)]


@dataclass(frozen=True)
class Task:
    fold: int
    method: str
    dim: int


@dataclass
class EvalContext:
    """Everything a worker needs (pickled once per worker process)."""
    X: np.ndarray
    labels: np.ndarray
    samples: np.ndarray
    genes: np.ndarray
    folds: list
    preprocessing: Any
    fe_config: FEConfig
    seed: int = 0
    n_pairs: int = 2000
    keep_fold: int = 0
    extra_embedders: dict = field(default_factory=dict)
    missing: str = "error"          # "ignore": NaN entries are missing values


def build_tasks(methods: Sequence[str], dims: Sequence[int], n_folds: int, n_genes: int) -> list[Task]:
    tasks = []
    for fold in range(n_folds):
        for method in methods:
            if method == "full":
                tasks.append(Task(fold, method, int(n_genes)))
                continue
            for d in dims:
                tasks.append(Task(fold, method, int(d)))
    # expensive methods first so that the pool is not left waiting on one long task
    cost = {"fe": 0, "umap": 1}
    return sorted(tasks, key=lambda t: (cost.get(t.method, 2), -t.dim, t.fold))


def _fold_data(ctx: EvalContext, fold: int):
    """Preprocessing fitted on the training fold only, applied to both folds."""
    from .io import ExpressionData
    tr, te = ctx.folds[fold]
    train = ExpressionData(ctx.X[tr], ctx.samples[tr], ctx.genes)
    test = ExpressionData(ctx.X[te], ctx.samples[te], ctx.genes)
    if ctx.missing != "ignore":
        fitted = ctx.preprocessing.fit(train)
        return fitted.apply(train).X, fitted.apply(test).X, ctx.labels[tr], ctx.labels[te]
    fitted = ctx.preprocessing.fit(train, allow_nan=True)
    return (fitted.apply(train, allow_nan=True).X, fitted.apply(test, allow_nan=True).X,
            ctx.labels[tr], ctx.labels[te])


def fill_with_train_means(X_tr: np.ndarray, X_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both folds with their NaN entries replaced by the training fold's gene means
    (0 for a gene observed nowhere in it): what methods that cannot take missing values
    get, and what distances between expression profiles are measured on."""
    seen = ~np.isnan(X_tr)
    means = np.where(seen, X_tr, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    means = means.astype(X_tr.dtype)
    return (np.where(np.isnan(X_tr), means, X_tr), np.where(np.isnan(X_te), means, X_te))


def run_task(task: Task, ctx: EvalContext) -> tuple[list[dict], dict]:
    """Fit one (fold, method, dim) cell; return its tidy rows and, for ``ctx.keep_fold``,
    the sampled distances and the embeddings (for the figures)."""
    X_tr, X_te, y_tr, y_te = _fold_data(ctx, task.fold)
    cls = ctx.extra_embedders.get(task.method) or EMBEDDERS.get(task.method)
    if cls is None:
        raise ValueError(f"unknown method {task.method!r} (known: {', '.join(EMBEDDERS)})")
    seed = ctx.seed * 1000 + task.fold
    emb = cls(task.dim, seed, ctx.fe_config)
    F_tr, F_te = fill_with_train_means(X_tr, X_te) if np.isnan(X_tr).any() or np.isnan(X_te).any() \
        else (X_tr, X_te)
    own = emb.handles_missing
    t0 = time.perf_counter()
    Z_tr = np.asarray(emb.fit_transform(X_tr if own else F_tr))
    t1 = time.perf_counter()
    Z_te = np.asarray(emb.transform(X_te if own else F_te))
    t2 = time.perf_counter()
    metrics = classifier_accuracies(Z_tr, y_tr, Z_te, y_te, seed)
    pairs = sample_pairs(len(X_te), ctx.n_pairs, seed=ctx.seed * 7919 + task.fold)
    d_expr = pair_distances(F_te, pairs)
    d_emb = pair_distances(Z_te, pairs)
    metrics["distance_r"] = pearson_r(d_expr, d_emb)
    metrics.update(emb.extra_metrics(X_te if own else F_te, Z_te))
    metrics["fit_seconds"] = t1 - t0
    metrics["embed_seconds"] = t2 - t1
    rows = [{"fold": task.fold, "method": task.method, "dim": task.dim, "metric": k, "value": float(v)}
            for k, v in metrics.items()]
    extras = {}
    if task.fold == ctx.keep_fold:
        extras = {"d_expr": d_expr.astype(np.float32), "d_emb": d_emb.astype(np.float32)}
        if task.method != "full":
            extras.update(Z_train=Z_tr.astype(np.float32), Z_test=Z_te.astype(np.float32),
                          y_train=np.asarray(y_tr).astype(str), y_test=np.asarray(y_te).astype(str))
    return rows, extras


# -- process pool ------------------------------------------------------------

_WORKER_CTX: EvalContext | None = None


def _init_worker(ctx: EvalContext) -> None:
    """One thread per worker: torch, BLAS (threadpoolctl) and numba."""
    global _WORKER_CTX
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    import torch
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except Exception:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    warnings.filterwarnings("ignore")
    _WORKER_CTX = ctx


def _run_in_worker(task: Task):
    assert _WORKER_CTX is not None
    return task, run_task(task, _WORKER_CTX)


def run_grid(ctx: EvalContext, tasks: Sequence[Task], jobs: int = 1, progress: bool = True,
             on_result: Callable | None = None) -> tuple[list[dict], dict]:
    """Run every task (in ``jobs`` processes when > 1) with one progress bar."""
    from tqdm.auto import tqdm
    rows: list[dict] = []
    extras: dict = {}
    bar = tqdm(total=len(tasks), desc="factembed evaluate", unit="fit", disable=not progress)

    def collect(task, result):
        r, e = result
        rows.extend(r)
        if e:
            extras[(task.method, task.dim)] = e
        bar.set_postfix_str(f"fold {task.fold} {task.method} d={task.dim}", refresh=False)
        bar.update(1)
        if on_result is not None:
            on_result(task, r)

    try:
        if jobs <= 1:
            for task in tasks:
                collect(task, run_task(task, ctx))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(ctx,)) as pool:
                futures = [pool.submit(_run_in_worker, t) for t in tasks]
                try:
                    for fut in as_completed(futures):
                        task, result = fut.result()
                        collect(task, result)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return rows, extras


# --------------------------------------------------------------------------
# summary and the whole command
# --------------------------------------------------------------------------


def summarize(df) -> "Any":
    """Mean, sd (over folds, ddof=1) and count per (method, dim, metric)."""
    g = df.groupby(["method", "dim", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    return out


def _method_order(methods) -> list[str]:
    pref = ["fe", "pca", "umap", "full"]
    return sorted(methods, key=lambda m: (pref.index(m) if m in pref else len(pref), m))


def summary_table(df, metrics: Sequence[str] | None = None, fmt: str = "{:.3f} ± {:.3f}"):
    """Wide table: one row per (method, dim), one column per metric, 'mean ± sd'."""
    import pandas as pd
    s = summarize(df)
    metrics = [m for m in (metrics or METRIC_ORDER) if m in set(s["metric"])]
    s["text"] = [fmt.format(m, 0.0 if not np.isfinite(sd) else sd) for m, sd in zip(s["mean"], s["sd"])]
    wide = s.pivot_table(index=["method", "dim"], columns="metric", values="text", aggfunc="first")
    wide = wide.reindex(columns=metrics)
    order = _method_order(wide.index.get_level_values(0).unique())
    wide = wide.reindex(pd.MultiIndex.from_tuples(
        sorted(wide.index, key=lambda t: (order.index(t[0]), t[1])), names=["method", "dim"]))
    return wide.fillna("-")


def metric_by_dim_table(df, metric: str, fmt: str = "{:.3f} ± {:.3f}"):
    """Rows = method, columns = dim, cells 'mean ± sd' of one metric."""
    s = summarize(df)
    s = s[s["metric"] == metric]
    s = s.assign(text=[fmt.format(m, 0.0 if not np.isfinite(sd) else sd) for m, sd in zip(s["mean"], s["sd"])])
    wide = s.pivot_table(index="method", columns="dim", values="text", aggfunc="first")
    wide = wide.reindex(_method_order(wide.index))
    return wide.fillna("-")


def _to_markdown(table) -> str:
    cols = [str(c) for c in table.columns]
    idx_names = [str(n) for n in (table.index.names if table.index.names[0] is not None else [""])]
    lines = ["| " + " | ".join(idx_names + cols) + " |", "|" + "---|" * (len(idx_names) + len(cols))]
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([str(k) for k in key] + [str(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def evaluate(
    data,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    dims: Sequence[int] = DEFAULT_DIMS,
    n_folds: int = 5,
    fe_config: FEConfig | None = None,
    preprocessing=None,
    output: str | os.PathLike | None = None,
    jobs: int = 1,
    seed: int = 0,
    n_pairs: int = 2000,
    progress: bool = True,
    figures: bool = True,
    extra_embedders: dict | None = None,
    title: str | None = None,
    missing: str = "error",
) -> dict:
    """Cross-validated comparison of embedding methods on ``data`` (an
    :class:`~factembed.io.ExpressionData` with labels).

    ``missing="ignore"``: NaN entries are missing values; FE leaves them out of training
    and inference, the other methods (and the distances between expression profiles)
    see them filled with the training fold's gene means.

    Returns ``{"results": tidy DataFrame, "summary": wide table, "folds": folds,
    "extras": per (method, dim) arrays of fold ``0``, "written": paths}``.  With
    ``output`` set, writes ``results.csv``, ``summary.csv``, ``summary.md``,
    ``run.json``, ``fold0_arrays.npz`` and (``figures=True``) the figures.
    """
    import pandas as pd

    from .preprocessing import Preprocessing

    if data.labels is None:
        raise ValueError("evaluate needs sample labels (give --label-column)")
    if missing not in ("error", "ignore"):
        raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in EMBEDDERS and m not in (extra_embedders or {}):
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(EMBEDDERS)}")
    dims = sorted(set(int(d) for d in dims))
    if not dims or min(dims) < 1:
        raise ValueError("dims must be positive integers")
    if n_folds < 2:
        raise ValueError("folds must be at least 2")
    if preprocessing is None:
        preprocessing = Preprocessing(log10p1=False, protein_coding_only=False, drop_constant=True)
    fe_config = fe_config or FEConfig()
    labels = np.asarray(data.labels).astype(str)
    folds = make_folds(labels, n_folds, seed)
    min_train = min(len(tr) for tr, _ in folds)
    n_used = min(data.n_genes, preprocessing.top_variable or data.n_genes)
    tasks = build_tasks(methods, dims, n_folds, n_used)
    dropped = [t for t in tasks if t.method in ("pca", "umap") and t.dim >= min(min_train - 1, data.n_genes)]
    if dropped:
        warnings.warn(f"skipping {len(dropped)} PCA/UMAP cells whose dimension is not below the number of "
                      f"training samples / genes", stacklevel=2)
        tasks = [t for t in tasks if t not in dropped]
    ctx = EvalContext(X=data.X, labels=labels, samples=np.asarray(data.samples), genes=np.asarray(data.genes),
                      folds=folds, preprocessing=preprocessing, fe_config=fe_config, seed=seed, missing=missing,
                      n_pairs=n_pairs, extra_embedders=dict(extra_embedders or {}))
    t0 = time.perf_counter()
    rows, extras = run_grid(ctx, tasks, jobs=jobs, progress=progress)
    seconds = time.perf_counter() - t0
    df = pd.DataFrame(rows, columns=["fold", "method", "dim", "metric", "value"])
    order = {m: i for i, m in enumerate(_method_order(df["method"].unique()))}
    morder = {m: i for i, m in enumerate(METRIC_ORDER)}
    df = df.sort_values(["fold", "method", "dim", "metric"],
                        key=lambda c: c.map(order) if c.name == "method" else
                        (c.map(lambda v: morder.get(v, 99)) if c.name == "metric" else c)).reset_index(drop=True)
    _, counts = np.unique(labels, return_counts=True)
    chance = float(counts.max() / counts.sum())
    result = {"results": df, "summary": summary_table(df), "folds": folds, "extras": extras,
              "seconds": seconds, "chance": chance, "written": []}
    if output is None:
        return result

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = result["written"]
    with atomic_output(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    written.append(out / "results.csv")
    s = summarize(df)
    s.to_csv(out / "summary.csv", index=False)
    written.append(out / "summary.csv")
    md = [f"# evaluate: {title or data.source or 'data'}", "",
          f"{data.n_samples} samples x {data.n_genes} genes, {len(counts)} classes, {n_folds}-fold stratified CV, "
          f"chance (majority class) {chance:.3f}; mean ± sd over folds.", ""]
    for metric in [m for m in METRIC_ORDER if m in set(df["metric"])]:
        md += [f"## {metric}", "", _to_markdown(metric_by_dim_table(df, metric)), ""]
    write_text_atomic(out / "summary.md", "\n".join(md))
    written.append(out / "summary.md")
    run = {"data": str(data.source), "n_samples": data.n_samples, "n_genes": data.n_genes,
           "classes": int(len(counts)), "chance": chance, "folds": n_folds, "methods": methods, "dims": dims,
           "jobs": jobs, "seed": seed, "n_pairs": n_pairs, "seconds": seconds,
           "fe_config": fe_config.to_dict(), "preprocessing": preprocessing.to_dict()}
    write_text_atomic(out / "run.json", json.dumps(run, indent=1))
    written.append(out / "run.json")
    arrays = {}
    for (m, d), e in extras.items():
        for k, v in e.items():
            arrays[f"{m}__{d}__{k}"] = v
    np.savez_compressed(out / "fold0_arrays.npz", **arrays)
    written.append(out / "fold0_arrays.npz")
    if figures:
        written += evaluation_figures(out, df=df, extras=extras, chance=chance, title=title)
    return result


def evaluation_figures(out: str | os.PathLike, *, df=None, extras: dict | None = None,
                       chance: float | None = None, title: str | None = None) -> list[Path]:
    """The figures of an evaluation directory (``results.csv`` and ``fold0_arrays.npz``
    are read when ``df`` / ``extras`` are not given)."""
    import pandas as pd

    from . import plot
    out = Path(out)
    if df is None:
        df = pd.read_csv(out / "results.csv")
    if extras is None:
        extras = {}
        p = out / "fold0_arrays.npz"
        if p.is_file():
            with np.load(p, allow_pickle=False) as z:
                for key in z.files:
                    m, d, k = key.split("__")
                    extras.setdefault((m, int(d)), {})[k] = z[key]
    if chance is None and (out / "run.json").is_file():
        chance = json.loads((out / "run.json").read_text()).get("chance")
    suffix = f" ({title})" if title else ""
    written = plot.plot_accuracy_by_dim(df, out / "accuracy_by_dim", chance=chance,
                                        title="Accuracy by dimension, test folds embedded out of sample" + suffix)
    panels = []
    for (m, d), e in sorted(extras.items(), key=lambda kv: (_method_order([kv[0][0], "fe", "pca", "umap", "full"])
                                                             .index(kv[0][0]), kv[0][1])):
        if m == "full" or "d_emb" not in e:
            continue
        panels.append({"method": m, "dim": d, "d_expr": e["d_expr"], "d_emb": e["d_emb"]})
    if panels:
        written += plot.plot_distance_scatter(panels, out / "distance_scatter",
                                              title="Distance preservation on test fold 0" + suffix)
    for (m, d), e in extras.items():
        if "Z_train" in e and d == 2:
            written += plot.plot_train_test_embedding(
                e["Z_train"], e["y_train"], e["Z_test"], e["y_test"], out / f"train_test_{m}_2d",
                title=f"{m.upper()} 2-D: training fold (dots) and test fold embedded out of sample "
                      f"(triangles){suffix}", axis_prefix=m.upper())
    return written
