"""What a fit writes and reports: the model directory's files, summary lines, kNN accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate.tasks import knn_accuracy
from ..estimator.model_files import META_FILE, WEIGHTS_FILE
from .requests import FitRequest


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------

def summary_line(history: dict) -> str:
    """One line on the end of training: the mean loss and Pearson r of the last 1% of steps."""
    loss = np.asarray(history.get("loss", []), dtype=float)
    r = np.asarray(history.get("pearson_r", []), dtype=float)
    if loss.size == 0:
        return "no training history recorded"
    k = max(1, loss.size // 100)
    return (f"final loss {np.nanmean(loss[-k:]):.4g}, final Pearson r {np.nanmean(r[-k:]):.4f} "
            f"(mean of the last {k} step{'s' if k > 1 else ''})")


def validation_line(fe) -> str | None:
    """One line on the held-out validation entries of an ``n_steps="auto"`` fit (why it
    stopped, the kept state's held-out MSE and Pearson r), else ``None``."""
    val = getattr(fe, "validation_", None)
    reason = getattr(fe, "stop_reason_", None)
    if not val and not reason:
        return None
    parts = []
    if reason:
        parts.append(reason)
    if val:
        parts.append(f"held-out entries ({val['entries']:,}, {val['fraction']:.1%} of the matrix, never trained "
                     f"on): MSE {val['mse']:.4g}, Pearson r {val['pearson_r']:.4f}"
                     + (f" (measuring it took {val['share_of_training']:.1%} of the training time)"
                        if val.get("share_of_training") is not None else ""))
    return "; ".join(parts)


def convergence_note(history: dict) -> str | None:
    """A sentence when the fit was still improving at its end (see
    :func:`~factembed.training.runner.training_summary`), else ``None``."""
    from ..training.runner import training_summary

    s = training_summary(history)
    if not s["still_improving"]:
        return None
    trend = []
    if s["loss_change_per_10pct"] < 0:
        trend.append(f"the loss fell {-s['loss_change_per_10pct']:.1%}")
    if s["r_change_per_10pct"] > 0:
        trend.append(f"Pearson r rose {s['r_change_per_10pct']:.1%}")
    return (f"not converged: over the last 20% of the {s['n_steps']:,} steps {' and '.join(trend)} per 10% "
            "of the steps; more steps should give a better model")


def label_knn(Z: np.ndarray, labels: Any, max_samples: int = 20_000, seed: int = 0) -> tuple[float, float] | None:
    """``(accuracy, chance)`` of :func:`~factembed.evaluate.tasks.knn_accuracy` of the
    labels from the embedding (on a random subset of at most ``max_samples`` samples), or
    ``None`` when the labels cannot be scored (one class, or a class with fewer than 5
    samples)."""
    if labels is None:
        return None
    labels = np.asarray(labels).astype(str)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.min() < 5:
        return None
    Z = np.asarray(Z)
    if len(labels) > max_samples:
        pick = np.random.default_rng(seed).choice(len(labels), max_samples, replace=False)
        Z, labels = Z[pick], labels[pick]
        if np.unique(labels, return_counts=True)[1].min() < 5:
            return None
    score = knn_accuracy(Z, labels)
    return score.mean, score.chance


def write_fit_outputs(fe, samples, labels, out: Path, extra: dict, title: str, *, html: bool = True) -> list[Path]:
    """Model, embedding table, history table, the two figures and (``html``, when bokeh is
    installed; a warning otherwise) the interactive ``embedding.html``, into ``out``.  When
    the samples have labels, their 5-fold kNN accuracy from the embedding is written on
    the embedding figure and recorded as ``extra["knn_accuracy"]`` / ``["knn_chance"]``."""
    import pandas as pd

    from .._utils.files import atomic_output
    from ..io import write_embedding_table
    from ..plot.figures import plot_embedding, plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    knn = label_knn(fe.embedding_, labels)
    label_name = extra.get("label_column") or ("time point" if extra.get("source") == "demo" else "label")
    note = None
    if knn is not None:
        extra = {**extra, "knn_accuracy": knn[0], "knn_chance": knn[1]}
        note = f"5-fold kNN accuracy of the {label_name}: {knn[0]:.3f} (chance {knn[1]:.3f})"
    fe.save(out, extra=extra)
    fe.extra_ = extra
    written = [out / META_FILE, out / WEIGHTS_FILE]
    from ..estimator.covariate_terms import training_covariates
    write_embedding_table(out / "embedding.csv", fe.embedding_, samples, labels,
                          columns=training_covariates(getattr(fe, "covariates_", None), fe.net_))
    written.append(out / "embedding.csv")
    with atomic_output(out / "history.csv") as tmp:
        hist = {k: v for k, v in fe.history_.items() if not k.startswith("val_")}
        frame = pd.DataFrame(hist)
        if fe.history_.get("val_step"):   # the validation MSE at the steps where it was measured
            val = pd.Series(fe.history_["val_loss"], index=fe.history_["val_step"], dtype=float)
            frame["val_loss"] = frame["step"].map(val)
        frame.to_csv(tmp, index=False)
    written.append(out / "history.csv")
    written += plot_embedding(fe.embedding_, labels, out / "embedding.png", title=title,
                              label_name=label_name, note=note)
    written += plot_training_curves(fe.history_, out / "training.png", title=title)
    if html:
        written += write_fit_page(fe, samples, labels, out / "embedding.html", label_name, title)
    return written


def write_fit_page(fe, samples, labels, path: Path, label_name: str, title: str) -> list[Path]:
    """The interactive page of a fit (``[path]``), or ``[]`` with a one-line warning when
    bokeh is not installed: the rest of the fit's outputs do not depend on it."""
    import warnings

    from ..errors import FEWarning
    from ..plot.page import INSTALL_HINT, MissingBokeh, page_from_estimator

    try:
        page_from_estimator(fe, labels, label_name=label_name, samples=samples, path=path, title=title)
    except MissingBokeh:
        warnings.warn(FEWarning(f"{path.name} not written: the interactive page needs bokeh ({INSTALL_HINT})"),
                      stacklevel=2)
        return []
    return [path]


def _extra(request: FitRequest, fitted, seconds: float, **more) -> dict:
    return {"preprocessing": fitted.to_dict(), "label_column": request.read.label_column,
            "source": "demo" if request.data == "demo" else str(request.data), "fit_seconds": seconds, **more}


def _title(request: FitRequest) -> str:
    return request.title or f"FE of {request.data_name}"
