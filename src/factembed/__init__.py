"""factembed: Factorized Embeddings of gene-expression matrices.

The public entry point is :class:`FactorizedEmbeddings` (scikit-learn style);
:class:`FEConfig` holds the hyper-parameters shared with the ``factembed`` command.
"""

from .config import FEConfig, auto_n_steps
from .errors import FEInputError
from .estimator import FactorizedEmbeddings

__all__ = ["FactorizedEmbeddings", "FEConfig", "FEInputError", "auto_n_steps"]
__version__ = "0.1.0"
