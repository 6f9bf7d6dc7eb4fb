"""Leakage-free evaluation of sample embeddings: FE vs PCA vs UMAP.

Stratified k-fold cross-validation over a grid of (fold, method, dimension), scored on
one or more auxiliary tasks (classification, regression, survival:
:mod:`factembed.evaluate.tasks`).  For one grid cell the *training fold only* is used to

* fit the preprocessing (kept genes: constant genes dropped, optional top-variable
  selection, their statistics),
* fit the embedding method (FE: ``fit``; PCA: ``fit``; UMAP: ``fit``),
* fit every task's models on the training-fold embedding (classifiers, regressors, the
  Cox model; scaling inside their pipelines is fitted there too);

and the test fold is embedded only through the method's own out-of-sample path
(FE: :meth:`FactorizedEmbeddings.transform`, i.e. inference with the model frozen;
PCA: projection; UMAP: ``transform``), then scored.  The embeddings of a cell are
computed once and reused by every task.

Metrics (one tidy row each: ``fold, method, dim, task, metric, value``; the task's own
metrics are listed in :mod:`factembed.evaluate.tasks`; ``c_index_pooled``,
``c_index_low``, ``c_index_high`` have ``fold = -1``: the pooled test predictions of all
folds and their bootstrap 95% interval):

``knn_accuracy``, ``logreg_accuracy``, ``mlp_accuracy`` (and ``_balanced_accuracy``, ``_macro_f1``)
    of a classification task, on the test fold, classifier trained on the training-fold embedding.
``distance_r``
    Pearson r between Euclidean distances in expression space (the preprocessed test
    profiles) and in the embedding, over a fixed random sample of pairs of test
    samples (the same pairs for every method and dimension of a fold).
``recon_r`` (FE only)
    Pearson r between the test profiles and the decoder's reconstruction of their
    inferred embeddings (all entries pooled).
``fit_seconds``, ``embed_seconds``
    wall time of fitting on the training fold / embedding the test fold.

The task-independent rows (``distance_r``, ``recon_r``, the seconds) have ``task = "embedding"``.

The method ``full`` (not in the default list) is a reference: the classifiers on the
whole preprocessed profile; its ``dim`` is the number of input genes.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._utils.files import atomic_output, write_text_atomic
from . import tasks as _tasks
from .embedders import (EMBEDDERS, ComBatPCA, Embedder, FEEmbedder, FullProfile, HarmonyPCA,  # noqa: F401 (public here)
                        PCAEmbedder, UMAPEmbedder, pearson_r)
from ..config import FEConfig
from ..covariates import is_numeric
from .tasks import TaskSpec, make_classifier, make_folds, parse_task  # noqa: F401 (public here)
from .tasks import ACCURACY_METRICS, CLASSIFIERS, EMBEDDING_TASK, METRIC_ORDER, MIXING_TASK  # noqa: F401 (public here)
from .report import (evaluation_figures, interval_table, method_order,  # noqa: F401 (public here)
                              metric_by_dim_table, summarize, summary_table, write_outputs)

DEFAULT_DIMS = (2, 4, 8, 16, 32, 64)
DEFAULT_METHODS = ("fe", "pca", "umap")
COLUMNS = ["fold", "method", "dim", "task", "metric", "value"]


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# folds and the grid
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    fold: int
    method: str
    dim: int


@dataclass
class EvalContext:
    """Everything a worker needs (pickled once per worker process)."""
    X: np.ndarray
    tasks: list                     # evaluate_tasks.Task
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
    covariates: dict | None = None  # name -> values in sample order (fitted by the methods that take them)


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
    from ..io import ExpressionData
    tr, te = ctx.folds[fold]
    train = ExpressionData(ctx.X[tr], ctx.samples[tr], ctx.genes)
    test = ExpressionData(ctx.X[te], ctx.samples[te], ctx.genes)
    if ctx.missing != "ignore":
        fitted = ctx.preprocessing.fit(train)
        return fitted.apply(train).X, fitted.apply(test).X
    fitted = ctx.preprocessing.fit(train, allow_nan=True)
    return fitted.apply(train, allow_nan=True).X, fitted.apply(test, allow_nan=True).X


def fill_with_train_means(X_tr: np.ndarray, X_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both folds with their NaN entries replaced by the training fold's gene means
    (0 for a gene observed nowhere in it): what methods that cannot take missing values
    get, and what distances between expression profiles are measured on."""
    seen = ~np.isnan(X_tr)
    means = np.where(seen, X_tr, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    means = means.astype(X_tr.dtype)
    return (np.where(np.isnan(X_tr), means, X_tr), np.where(np.isnan(X_te), means, X_te))


def run_task(task: Task, ctx: EvalContext) -> tuple[list[dict], dict]:
    """Fit one (fold, method, dim) cell and score every task on its embeddings; return its
    tidy rows and extras: for ``ctx.keep_fold`` the sampled distances and the embeddings
    (for the figures), and (``"_pred"``) the survival tasks' test-fold risks."""
    X_tr, X_te = _fold_data(ctx, task.fold)
    tr, te = ctx.folds[task.fold]
    cls = ctx.extra_embedders.get(task.method) or EMBEDDERS.get(task.method)
    if cls is None:
        raise ValueError(f"unknown method {task.method!r} (known: {', '.join(EMBEDDERS)})")
    seed = ctx.seed * 1000 + task.fold
    emb = cls(task.dim, seed, ctx.fe_config)
    F_tr, F_te = fill_with_train_means(X_tr, X_te) if np.isnan(X_tr).any() or np.isnan(X_te).any() \
        else (X_tr, X_te)
    own = emb.handles_missing
    cov = ctx.covariates if getattr(emb, "uses_covariates", False) else None
    cov_tr = None if cov is None else {k: v[tr] for k, v in cov.items()}
    cov_te = None if cov is None else {k: v[te] for k, v in cov.items()}
    t0 = time.perf_counter()
    if getattr(emb, "transductive", False):
        Z_tr, Z_te = (np.asarray(z) for z in emb.fit_both(F_tr, F_te, cov_tr, cov_te))
        t1 = t2 = time.perf_counter()
    else:
        kw_tr, kw_te = ({}, {}) if cov is None else ({"covariates": cov_tr}, {"covariates": cov_te})
        Z_tr = np.asarray(emb.fit_transform(X_tr if own else F_tr, **kw_tr))
        t1 = time.perf_counter()
        Z_te = np.asarray(emb.transform(X_te if own else F_te, **kw_te))
        t2 = time.perf_counter()
    rows, preds = [], {}
    for t in ctx.tasks:
        scores, pred = _tasks.score_task(t, tr, te, Z_tr, Z_te, seed, classifiers=CLASSIFIERS)
        rows += [{"fold": task.fold, "method": task.method, "dim": task.dim, "task": t.name, "metric": k,
                  "value": float(v)} for k, v in scores.items()]
        if pred is not None:
            preds[t.name] = {**pred, "fold": task.fold}
    rows += _mixing_rows(ctx, task, tr, te, Z_tr, Z_te)
    metrics = {}
    pairs = sample_pairs(len(X_te), ctx.n_pairs, seed=ctx.seed * 7919 + task.fold)
    d_expr = pair_distances(F_te, pairs)
    d_emb = pair_distances(Z_te, pairs)
    metrics["distance_r"] = pearson_r(d_expr, d_emb)
    metrics.update(emb.extra_metrics(X_te if own else F_te, Z_te))
    metrics["fit_seconds"] = t1 - t0
    metrics["embed_seconds"] = t2 - t1
    rows += [{"fold": task.fold, "method": task.method, "dim": task.dim, "task": EMBEDDING_TASK, "metric": k,
              "value": float(v)} for k, v in metrics.items()]
    extras: dict = {"_pred": preds} if preds else {}
    if task.fold == ctx.keep_fold:
        extras.update(d_expr=d_expr.astype(np.float32), d_emb=d_emb.astype(np.float32))
        first = next((t for t in ctx.tasks if t.kind == "classification"), None)
        if task.method != "full":
            extras.update(Z_train=Z_tr.astype(np.float32), Z_test=Z_te.astype(np.float32))
            if first is not None:
                extras.update(y_train=first.y[tr].astype(str), y_test=first.y[te].astype(str))
    return rows, extras


def _mixing_rows(ctx: EvalContext, task: Task, tr, te, Z_tr, Z_te) -> list[dict]:
    """Batch mixing of each categorical covariate within the groups of the first
    classification task (:func:`~factembed.evaluate.tasks.batch_mixing`), for every method."""
    first = next((t for t in ctx.tasks if t.kind == "classification"), None)
    if not ctx.covariates or first is None or task.method == "full":
        return []
    rows = []
    ok_tr, ok_te = first.known[tr], first.known[te]
    for name, values in ctx.covariates.items():
        if is_numeric(values):
            continue
        scores = _tasks.batch_mixing(Z_tr[ok_tr], Z_te[ok_te], first.y[tr][ok_tr], first.y[te][ok_te],
                                     values[tr][ok_tr], values[te][ok_te])
        rows += [{"fold": task.fold, "method": task.method, "dim": task.dim, "task": f"{MIXING_TASK}:{name}",
                  "metric": k, "value": float(v)} for k, v in scores.items()]
    return rows


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
    preds: dict = {}       # (method, dim) -> task name -> list of per-fold predictions
    bar = tqdm(total=len(tasks), desc="factembed evaluate", unit="fit", disable=not progress)

    def collect(task, result):
        r, e = result
        rows.extend(r)
        for name, p in e.pop("_pred", {}).items():
            preds.setdefault((task.method, task.dim), {}).setdefault(name, []).append(p)
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
    if preds:
        extras["_pred"] = preds
    return rows, extras


# --------------------------------------------------------------------------
# summary and the whole command
# --------------------------------------------------------------------------


def _pooled_survival(tasks, preds: dict, seed: int, n_bootstrap: int) -> tuple[list[dict], dict]:
    """Rows (``fold = -1``) of the pooled c-index and its bootstrap interval per survival
    task and cell, and the Kaplan-Meier groups (time, event, high risk) of the pooled test folds."""
    rows, km = [], {}
    for t in (t for t in tasks if t.kind == "survival"):
        for (method, dim), by_task in preds.items():
            parts = sorted(by_task.get(t.name, []), key=lambda p: p["fold"])
            if not parts:
                continue
            idx = np.concatenate([p["index"] for p in parts])
            risk = np.concatenate([p["risk"] for p in parts])
            high = np.concatenate([p["high"] for p in parts])
            est, lo, hi = _tasks.pooled_c_index(t.y[idx], t.event[idx], risk, seed=seed, n_boot=n_bootstrap)
            rows += [{"fold": -1, "method": method, "dim": dim, "task": t.name, "metric": k, "value": v}
                     for k, v in (("c_index_pooled", est), ("c_index_low", lo), ("c_index_high", hi))]
            km[(t.name, method, dim)] = {"time": t.y[idx], "event": t.event[idx], "high": high}
    return rows, km


def evaluate(
    data,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    dims: Sequence[int] = DEFAULT_DIMS,
    n_folds: int = 5,
    tasks: Sequence | None = None,
    annotations: dict | None = None,
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
    n_bootstrap: int = _tasks.N_BOOTSTRAP,
    covariates: Sequence[str] | None = None,
) -> dict:
    """Cross-validated comparison of embedding methods on ``data`` (an
    :class:`~factembed.io.ExpressionData`).

    ``tasks``: what to predict from the embeddings, e.g. ``["classification:label",
    "regression:age", "survival:time,event"]`` (:func:`~factembed.evaluate.tasks.parse_task`);
    columns are looked up in ``annotations`` (name -> array in sample order), then
    ``data.obs``, then ``"label"`` = ``data.labels``.  Default: classification of
    ``data.labels``.  Folds are stratified by the first task.  ``n_bootstrap``: resamples of
the pooled c-index interval of survival tasks (about 0.75 ms each per cell on 200 samples).

    ``covariates``: known factors of the samples (columns looked up as the tasks' are),
    fitted by FE as covariates (the test fold embedded with its own levels; a level absent
    from the training fold is learned by ``transform``) and, for the first categorical one,
    by the batch corrections ``"combat_pca"`` and ``"harmony_pca"``.  Each categorical
    covariate adds, for every method, its batch mixing within the groups of the first
    classification task (task ``mixing:NAME``: ``batch_knn`` and its ``batch_chance``).

    ``missing="ignore"``: NaN entries are missing values; FE leaves them out of training
    and inference, the other methods (and the distances between expression profiles)
    see them filled with the training fold's gene means.

    Returns ``{"results": tidy DataFrame, "summary": wide table, "folds": folds,
    "tasks": resolved tasks, "extras": per (method, dim) arrays of fold ``0``,
    "km": Kaplan-Meier groups, "written": paths}``.  With ``output`` set, writes
    ``results.csv``, ``summary.csv``, ``summary.md``, ``run.json``, ``fold0_arrays.npz``
    and (``figures=True``) the figures.
    """
    import pandas as pd

    from ..preprocessing import Preprocessing

    if tasks is None or len(tasks) == 0:
        if data.labels is None:
            raise ValueError("evaluate needs a task: sample labels (--label-column) or --task KIND:COLUMN")
        tasks = ["classification:label"]
    resolved = _tasks.resolve_tasks(data, tasks, annotations)
    covs = _tasks.resolve_covariates(data, list(covariates), annotations) if covariates else None
    needs = [m for m in methods if getattr(EMBEDDERS.get(m), "transductive", False)]
    if needs and all(is_numeric(v) for v in (covs or {}).values()):
        raise ValueError(f"method(s) {', '.join(needs)} correct a batch: give a categorical covariate "
                         "(covariates=[...], --covariate BATCH)")
    if missing not in ("error", "ignore"):
        raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in EMBEDDERS and m not in (extra_embedders or {}):
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(EMBEDDERS)}")
    if any(t.kind == "survival" for t in resolved):
        _tasks.make_cox(1)  # a clear ImportError now rather than in a worker
    dims = sorted(set(int(d) for d in dims))
    if not dims or min(dims) < 1:
        raise ValueError("dims must be positive integers")
    if n_folds < 2:
        raise ValueError("folds must be at least 2")
    if preprocessing is None:
        preprocessing = Preprocessing(log10p1=False, protein_coding_only=False, drop_constant=True)
    fe_config = fe_config or FEConfig()
    folds = make_folds(resolved[0].strata(), n_folds, seed)
    min_train = min(len(tr) for tr, _ in folds)
    n_used = min(data.n_genes, preprocessing.top_variable or data.n_genes)
    cells = build_tasks(methods, dims, n_folds, n_used)
    dropped = [t for t in cells if t.method in ("pca", "umap") and t.dim >= min(min_train - 1, data.n_genes)]
    if dropped:
        warnings.warn(f"skipping {len(dropped)} PCA/UMAP cells whose dimension is not below the number of "
                      f"training samples / genes", stacklevel=2)
        cells = [t for t in cells if t not in dropped]
    ctx = EvalContext(X=data.X, tasks=resolved, samples=np.asarray(data.samples), genes=np.asarray(data.genes),
                      folds=folds, preprocessing=preprocessing, fe_config=fe_config, seed=seed, missing=missing,
                      n_pairs=n_pairs, extra_embedders=dict(extra_embedders or {}), covariates=covs)
    t0 = time.perf_counter()
    rows, extras = run_grid(ctx, cells, jobs=jobs, progress=progress)
    pooled, km = _pooled_survival(resolved, extras.pop("_pred", {}), seed, n_bootstrap)
    rows += pooled
    seconds = time.perf_counter() - t0
    df = pd.DataFrame(rows, columns=COLUMNS)
    order = {m: i for i, m in enumerate(method_order(df["method"].unique()))}
    morder = {m: i for i, m in enumerate(METRIC_ORDER)}
    torder = {t.name: i for i, t in enumerate(resolved)}
    df = df.sort_values(["fold", "method", "dim", "task", "metric"],
                        key=lambda c: c.map(order) if c.name == "method" else
                        (c.map(lambda v: morder.get(v, 99)) if c.name == "metric" else
                         (c.map(lambda v: torder.get(v, -1)) if c.name == "task" else c))).reset_index(drop=True)
    chances = {}
    for t in resolved:
        if t.kind == "classification":
            _, counts = np.unique(t.y[t.known], return_counts=True)
            chances[t.name] = float(counts.max() / counts.sum())
    chance = next(iter(chances.values()), None)
    result = {"results": df, "summary": summary_table(df), "folds": folds, "extras": extras, "km": km,
              "tasks": resolved, "seconds": seconds, "chance": chance, "chances": chances, "written": []}
    if output is None:
        return result
    result["written"] = write_outputs(output, result, data=data, methods=methods, dims=dims, n_folds=n_folds,
                                      jobs=jobs, seed=seed, n_pairs=n_pairs, fe_config=fe_config,
                                      preprocessing=preprocessing, figures=figures, title=title)
    return result
