"""Evaluation of sample embeddings on held-out samples: FE vs PCA vs UMAP.

:mod:`.comparison` runs the grid of (fold, method, dim) cells, :mod:`.tasks` holds what is
predicted from an embedding (classification, regression, survival) and its models,
:mod:`.report` writes the tables and figures, :mod:`.sweep` the hyper-parameter grid of
``factembed sweep``.  The package is callable: ``factembed.evaluate(data, tasks=[...])`` is
:func:`factembed.evaluate.evaluate`.
"""

import sys as _sys
import types as _types

from .comparison import DEFAULT_DIMS, DEFAULT_METHODS, evaluate
from .report import evaluation_figures, interval_table, metric_by_dim_table, summary_table
from .tasks import CLASSIFIERS, METRIC_ORDER, TaskSpec, make_folds, parse_task

__all__ = ["evaluate", "DEFAULT_DIMS", "DEFAULT_METHODS", "CLASSIFIERS", "METRIC_ORDER", "TaskSpec",
           "make_folds", "parse_task", "evaluation_figures", "interval_table", "metric_by_dim_table",
           "summary_table"]


class _CallableModule(_types.ModuleType):
    """``factembed.evaluate(...)`` calls :func:`evaluate`; ``factembed.evaluate.X`` is this package's X."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
