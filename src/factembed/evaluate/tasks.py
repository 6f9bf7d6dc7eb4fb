"""The auxiliary tasks of :func:`factembed.evaluate.evaluate`: what is predicted from an
embedding, and how it is scored.

A task is one or two annotation columns (``data.obs`` of an ``.h5ad`` / HDF5 file, a
sample table, or the labels):

``classification:COLUMN``
    kNN / logistic regression / MLP classifiers; ``{clf}_accuracy``,
    ``{clf}_balanced_accuracy``, ``{clf}_macro_f1`` on the test fold.
``regression:COLUMN`` (numeric)
    kNN and ridge regressors (``RidgeCV``, alpha chosen on the training fold);
    ``{reg}_r2`` and ``{reg}_spearman_r`` on the test fold.
``survival:TIME_COLUMN,EVENT_COLUMN`` (time > 0, event 0/1 or boolean)
    a ridge-penalised Cox model (scikit-survival ``CoxPHSurvivalAnalysis(alpha=1)`` on
    standardised features, ``CoxnetSurvivalAnalysis`` above 256 features); Harrell's
    ``c_index`` (``sksurv.metrics.concordance_index_censored``) per test fold, and over
    the pooled test predictions of all folds with a bootstrap 95% interval
    (:func:`pooled_c_index`; its resamples scored by lifelines, the same c-index, faster).

The embeddings of a (fold, method, dim) cell are computed once and every task is scored
on them.  A sample with a missing value for a task is left out of that task only (out of
its training and its test fold); the count is reported (``n_missing``).

Folds: stratified by the *first* task: its classes, its event indicator (survival) or
five quantile bins of its target (regression); samples missing that task form a stratum
of their own.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ..covariates import is_numeric
from ..errors import FEInputError

KINDS = ("classification", "regression", "survival")
CLASSIFIERS = ("knn", "logreg", "mlp")
REGRESSORS = ("knn", "ridge")
ACCURACY_METRICS = tuple(f"{c}_accuracy" for c in CLASSIFIERS)
#: the order of the metrics in the tables (evaluate's results and the report's summaries)
METRIC_ORDER = (ACCURACY_METRICS + tuple(f"{c}_{m}" for m in ("balanced_accuracy", "macro_f1") for c in CLASSIFIERS)
                + ("c_index", "c_index_pooled", "c_index_low", "c_index_high")
                + tuple(f"{r}_{m}" for m in ("r2", "spearman_r") for r in REGRESSORS)
                + ("batch_knn", "batch_chance")
                + ("distance_r", "recon_r", "n_test", "fit_seconds", "embed_seconds"))
#: the task name prefix of the batch-mixing rows of a categorical covariate (``mixing:batch``)
MIXING_TASK = "mixing"
#: the task of the rows that do not depend on a task (distances, reconstruction, times)
EMBEDDING_TASK = "embedding"
_MISSING_TEXT = {"", "na", "nan", "none", "null", "n/a"}
#: bootstrap resamples of the pooled c-index interval
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class TaskSpec:
    """A task as asked for: ``kind`` and its column(s)."""
    kind: str
    columns: tuple

    @property
    def name(self) -> str:
        return self.columns[0] if self.kind != "survival" else "survival:" + ",".join(self.columns)


def parse_task(text: str) -> TaskSpec:
    """``"classification:COL"``, ``"regression:COL"``, ``"survival:TIME,EVENT"``."""
    if isinstance(text, TaskSpec):
        return text
    kind, sep, rest = str(text).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS or not rest.strip():
        raise ValueError(f"--task {text!r}: expected classification:COLUMN, regression:COLUMN or "
                         "survival:TIME_COLUMN,EVENT_COLUMN")
    cols = tuple(c.strip() for c in rest.split(",")) if kind == "survival" else (rest.strip(),)
    if kind == "survival" and (len(cols) != 2 or not all(cols)):
        raise ValueError(f"--task {text!r}: a survival task needs two columns, survival:TIME_COLUMN,EVENT_COLUMN")
    return TaskSpec(kind, cols)


@dataclass
class Task:
    """A task resolved against the data: its target(s) for every sample and which are known."""
    kind: str
    name: str
    columns: tuple
    known: np.ndarray             # bool, n_samples
    y: np.ndarray                 # class (str), target (float) or survival time (float)
    event: np.ndarray | None = None   # survival: bool

    @property
    def n_missing(self) -> int:
        return int((~self.known).sum())

    def strata(self) -> np.ndarray:
        """The fold-stratification labels this task gives (missing samples: their own stratum)."""
        if self.kind == "classification":
            s = self.y.astype(str)
        elif self.kind == "survival":
            s = np.where(self.event, "event", "censored")
        else:
            s = np.full(len(self.y), "0", dtype=object)
            v = self.y[self.known]
            edges = np.unique(np.quantile(v, [0.2, 0.4, 0.6, 0.8])) if len(v) else []
            s[self.known] = np.searchsorted(edges, v, side="right").astype(str)
            s = s.astype(str)
        return np.where(self.known, s, "__missing__")


def _column(data, annotations: Mapping | None, col: str) -> np.ndarray:
    if annotations is not None and col in annotations:
        return np.asarray(annotations[col])
    if col in data.obs:
        return np.asarray(data.obs[col])
    if col == "label" and data.labels is not None:
        return np.asarray(data.labels)
    known = sorted(set(data.obs) | set(annotations or {}) | ({"label"} if data.labels is not None else set()))
    raise FEInputError(f"no annotation column {col!r} for the task; columns are "
                       f"{', '.join(repr(k) for k in known) or 'none'}", data.source)


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "iub":
        return np.zeros(len(values), dtype=bool)
    return np.array([v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip().lower() in _MISSING_TEXT
                     for v in values.tolist()], dtype=bool)


def _numeric(values: np.ndarray, col: str, what: str, source) -> tuple[np.ndarray, np.ndarray]:
    miss = _missing(values)
    if values.dtype.kind in "biuf":
        out = values.astype(np.float64)
    else:
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values.tolist()):
            if miss[i]:
                continue
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise FEInputError(f"{what} column {col!r} must be numeric; sample {i} has {v!r}", source) from None
    bad = ~miss & ~np.isfinite(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FEInputError(f"{what} column {col!r} must be finite; sample {i} has {out[i]!r}", source)
    return out, ~miss


def _events(values: np.ndarray, col: str, source) -> tuple[np.ndarray, np.ndarray]:
    miss = _missing(values)
    out = np.zeros(len(values), dtype=bool)
    truth = {"1": True, "0": False, "1.0": True, "0.0": False, "true": True, "false": False}
    for i, v in enumerate(values.tolist()):
        if miss[i]:
            continue
        key = str(v).strip().lower() if not isinstance(v, (bool, np.bool_)) else str(bool(v)).lower()
        if key not in truth:
            raise FEInputError(f"event column {col!r} must be 0/1 or true/false; sample {i} has {v!r}", source)
        out[i] = truth[key]
    return out, ~miss


def resolve_tasks(data, specs: Sequence, annotations: Mapping | None = None) -> list[Task]:
    """Each spec (a :class:`TaskSpec` or its text) as a :class:`Task` of ``data``'s samples.
    ``annotations``: extra columns (name -> array in ``data.samples`` order)."""
    tasks, names = [], set()
    for spec in specs:
        spec = parse_task(spec)
        if spec.name in names:
            raise ValueError(f"task {spec.kind}:{','.join(spec.columns)} given twice")
        names.add(spec.name)
        src = data.source
        if spec.kind == "classification":
            v = _column(data, annotations, spec.columns[0])
            known = ~_missing(v)
            y = np.array([str(x) for x in v.tolist()], dtype=object)
            if len(set(y[known].tolist())) < 2:
                raise FEInputError(f"classification column {spec.columns[0]!r} needs at least 2 classes", src)
            tasks.append(Task("classification", spec.name, spec.columns, known, y.astype(str)))
        elif spec.kind == "regression":
            y, known = _numeric(_column(data, annotations, spec.columns[0]), spec.columns[0], "regression", src)
            if known.sum() < 3 or np.ptp(y[known]) == 0:
                raise FEInputError(f"regression column {spec.columns[0]!r} is constant or nearly empty", src)
            tasks.append(Task("regression", spec.name, spec.columns, known, y))
        else:
            tcol, ecol = spec.columns
            t, tk = _numeric(_column(data, annotations, tcol), tcol, "survival time", src)
            e, ek = _events(_column(data, annotations, ecol), ecol, src)
            known = tk & ek
            if (t[known] <= 0).any():
                i = int(np.flatnonzero(known & (t <= 0))[0])
                raise FEInputError(f"survival time column {tcol!r} must be positive; sample {i} has {t[i]!r}", src)
            if not e[known].any():
                raise FEInputError(f"event column {ecol!r} has no event (all censored)", src)
            tasks.append(Task("survival", spec.name, spec.columns, known, t, e))
    return tasks


def make_folds(strata: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (shuffled with ``seed``): list of (train index, test index)."""
    from sklearn.model_selection import StratifiedKFold
    strata = np.asarray(strata)
    _, counts = np.unique(strata, return_counts=True)
    if counts.min() < n_folds:
        warnings.warn(f"the smallest class has {counts.min()} samples, fewer than {n_folds} folds; "
                      "some test folds will lack it", stacklevel=3)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in skf.split(np.zeros(len(strata)), strata)]


# --------------------------------------------------------------------------
# models and scores
# --------------------------------------------------------------------------


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


def make_regressor(kind: str, seed: int):
    from sklearn.linear_model import RidgeCV
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if kind == "knn":
        return KNeighborsRegressor(n_neighbors=5)
    if kind == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    raise ValueError(f"unknown regressor {kind!r}")


def make_cox(n_features: int):
    """A penalised Cox model on standardised features (scikit-survival)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    try:
        from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
    except ImportError:
        raise ImportError("survival tasks need scikit-survival: pip install 'factembed[survival]'") from None
    if n_features <= 256:
        return make_pipeline(StandardScaler(), CoxPHSurvivalAnalysis(alpha=1.0, ties="breslow", n_iter=200))
    # many features (a whole profile): elastic net, mostly ridge, at a fixed small penalty
    return make_pipeline(StandardScaler(), CoxnetSurvivalAnalysis(l1_ratio=0.1, alphas=[0.1], max_iter=10000))


def survival_y(time: np.ndarray, event: np.ndarray):
    from sksurv.util import Surv
    return Surv.from_arrays(event=np.asarray(event, dtype=bool), time=np.asarray(time, dtype=np.float64))


def c_index(time, event, risk) -> float:
    """Harrell's concordance index (scikit-survival)."""
    from sksurv.metrics import concordance_index_censored
    return float(concordance_index_censored(np.asarray(event, dtype=bool), np.asarray(time, dtype=np.float64),
                                            np.asarray(risk, dtype=np.float64))[0])


def score_task(task: Task, tr: np.ndarray, te: np.ndarray, Z_tr: np.ndarray, Z_te: np.ndarray,
               seed: int, classifiers: Sequence[str] = CLASSIFIERS) -> tuple[dict, dict | None]:
    """Metrics of one task on one cell's embeddings (``tr``/``te``: the folds' sample
    indices, rows of ``Z_tr``/``Z_te``); samples missing the task are left out.
    Returns ``(metrics, prediction)`` (survival: the test rows' risks for the pooled
    c-index and the Kaplan-Meier split at the training fold's median risk)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import balanced_accuracy_score, f1_score, r2_score
    ktr, kte = task.known[tr], task.known[te]
    Ztr, Zte = Z_tr[ktr], Z_te[kte]
    itr, ite = tr[ktr], te[kte]
    out: dict = {}
    pred = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the MLP / logistic regression / Cox
        if task.kind == "classification":
            ytr, yte = task.y[itr], task.y[ite]
            for kind in classifiers:
                p = make_classifier(kind, seed).fit(Ztr, ytr).predict(Zte)
                out[f"{kind}_accuracy"] = float(np.mean(p == yte))
                out[f"{kind}_balanced_accuracy"] = float(balanced_accuracy_score(yte, p))
                out[f"{kind}_macro_f1"] = float(f1_score(yte, p, average="macro", zero_division=0))
        elif task.kind == "regression":
            ytr, yte = task.y[itr], task.y[ite]
            for kind in REGRESSORS:
                p = make_regressor(kind, seed).fit(Ztr, ytr).predict(Zte)
                out[f"{kind}_r2"] = float(r2_score(yte, p))
                out[f"{kind}_spearman_r"] = float(spearmanr(yte, p).statistic) if np.ptp(p) > 0 else float("nan")
        else:
            model = make_cox(Ztr.shape[1]).fit(Ztr, survival_y(task.y[itr], task.event[itr]))
            r_tr, r_te = model.predict(Ztr), model.predict(Zte)
            out["c_index"] = c_index(task.y[ite], task.event[ite], r_te)
            pred = {"index": ite, "risk": r_te, "high": r_te > np.median(r_tr)}
    out["n_test"] = float(len(ite))
    return out, pred


def _resample_c_index():
    """Harrell's c of one bootstrap resample, the function of the bootstrap's hot loop:
    lifelines' ``concordance_index`` (an O(n log n) count, faster than scikit-survival's
    loop over event times: bench/NOTES.md; the same value, ties included, which
    ``tests/evaluate/test_tasks.py`` checks) where lifelines is installed (it is in the
    ``survival`` extra), else :func:`c_index`."""
    try:
        from lifelines.utils import concordance_index
    except ImportError:
        return c_index

    def c(time, event, risk):
        # lifelines scores predicted survival times: the higher the risk, the shorter
        return float(concordance_index(time, -risk, event))
    return c


def pooled_c_index(time, event, risk, seed: int = 0, n_boot: int = N_BOOTSTRAP) -> tuple[float, float, float]:
    """Harrell's c-index of the pooled test predictions and a percentile bootstrap 95%
    interval (``n_boot`` resamples of the samples with replacement, seeded)."""
    time, event, risk = np.asarray(time, np.float64), np.asarray(event, bool), np.asarray(risk, np.float64)
    est = c_index(time, event, risk)
    resample_c = _resample_c_index()
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(time), len(time))
        if not event[i].any():
            continue
        try:
            vals.append(resample_c(time[i], event[i], risk[i]))
        except Exception:  # no comparable pair in this resample
            continue
    lo, hi = np.percentile(vals, [2.5, 97.5]) if vals else (np.nan, np.nan)
    return est, float(lo), float(hi)


class KnnAccuracy(NamedTuple):
    mean: float     # accuracy over the folds
    sd: float       # its sd over the folds (ddof 1; 0 for one fold)
    chance: float   # the majority class's share


def knn_accuracy(Z: np.ndarray, labels: Sequence, folds: int = 5, k: int = 5,
                 seed: int | None = None) -> KnnAccuracy:
    """Stratified ``folds``-fold cross-validated accuracy of a ``k``-NN classifier of
    ``labels`` from the embedding ``Z``: the one kNN score of the package (the fit's
    figure and summary, the sweep's cells).  ``seed=None``: the folds in sample order
    (scikit-learn's default); an int shuffles them with that seed.  At most as many
    folds as the largest class has samples; a smaller class only warns in scikit-learn,
    silenced here."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    n_folds = int(min(folds, counts.max()))
    cv = StratifiedKFold(n_folds, shuffle=seed is not None, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes smaller than the number of folds
        scores = cross_val_score(KNeighborsClassifier(k), Z, labels, cv=cv)
    sd = float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
    return KnnAccuracy(float(scores.mean()), sd, float(counts.max() / counts.sum()))


def resolve_covariates(data, names: Sequence[str], annotations: Mapping | None = None) -> dict[str, np.ndarray]:
    """``{name: values}`` of the covariate columns ``names`` (looked up as task columns are:
    ``annotations``, ``data.obs``, ``"label"``); a missing value is an error naming the
    column and the first sample."""
    out = {}
    for name in names:
        v = _column(data, annotations, name)
        miss = _missing(v)
        if miss.any():
            i = int(np.flatnonzero(miss)[0])
            raise FEInputError(f"covariate {name!r} is missing for {int(miss.sum())} sample(s) (first: "
                               f"{str(data.samples[i])!r})", data.source,
                               hint="give every sample a value (e.g. an 'unknown' level)")
        out[name] = v if is_numeric(v) else np.array([str(x) for x in v.tolist()], dtype=object)
    return out


def batch_mixing(Z_tr: np.ndarray, Z_te: np.ndarray, groups_tr: np.ndarray, groups_te: np.ndarray,
                 batch_tr: np.ndarray, batch_te: np.ndarray, k: int = 5) -> dict[str, float]:
    """How well the batch of a test sample is predicted from the training samples *of its
    own group* (a k-NN vote in the embedding): ``batch_knn``, pooled over the groups, and
    ``batch_chance``, the majority batch's share within each group's training samples (what
    a vote that ignores the embedding gets).  Near chance: the batches are mixed within
    each group, so the biology (the groups) is not what is being removed.  Groups with
    fewer than ``k`` training samples or one batch are left out."""
    from sklearn.neighbors import KNeighborsClassifier
    hits = chance = 0.0
    total = 0
    batch_tr, batch_te = np.asarray(batch_tr).astype(str), np.asarray(batch_te).astype(str)
    for g in np.unique(groups_te):
        tr, te = groups_tr == g, groups_te == g
        if tr.sum() < k or len(np.unique(batch_tr[tr])) < 2:
            continue
        vote = KNeighborsClassifier(k).fit(Z_tr[tr], batch_tr[tr])
        hits += float((vote.predict(Z_te[te]) == batch_te[te]).sum())
        chance += np.unique(batch_tr[tr], return_counts=True)[1].max() / tr.sum() * te.sum()
        total += int(te.sum())
    if total == 0:
        return {}
    return {"batch_knn": hits / total, "batch_chance": chance / total}
