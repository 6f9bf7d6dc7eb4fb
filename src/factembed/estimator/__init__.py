"""The estimator: :class:`FactorizedEmbeddings` (:mod:`.factorized_embeddings`), what it accepts
as input (:mod:`.inputs`), inference of new samples (:mod:`.inference`), imputation
(:mod:`.imputation`), covariates as the network needs them (:mod:`.covariate_terms`), the model
directory (:mod:`.model_files`) and the gene neighbours of the gene embedding (:mod:`.genes`)."""

from ._sklearn_checks import sklearn_expected_failed_checks
from .factorized_embeddings import FactorizedEmbeddings

__all__ = ["FactorizedEmbeddings", "sklearn_expected_failed_checks"]
