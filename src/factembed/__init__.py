"""factembed: Factorized Embeddings of gene-expression matrices.

The public entry point is :class:`FactorizedEmbeddings` (scikit-learn style);
:class:`FEConfig` holds the hyper-parameters shared with the ``factembed`` command;
:mod:`factembed.tl` has the scanpy-style tools (``factembed.tl.fe(adata)``);
``factembed.evaluate(data, tasks=[...])`` cross-validates FE vs PCA vs UMAP on auxiliary tasks.
"""

from .config import FEConfig, auto_n_steps
from .errors import FEInputError
from .estimator.factorized_embeddings import FactorizedEmbeddings
from . import tl
from . import evaluate  # a callable package: factembed.evaluate(data, tasks=[...]) is evaluate.evaluate

__all__ = ["FactorizedEmbeddings", "FEConfig", "FEInputError", "auto_n_steps", "evaluate", "tl"]
__version__ = "0.1.0"
