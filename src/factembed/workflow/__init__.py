"""The workflows behind the command line: fit, transform, impute, reconstruct, describe.

This is the one place a fit is set up.  A :class:`FitRequest` says what to train on
and how (data file, preprocessing, hyper-parameters, in memory / backed / data-parallel,
checkpoints); :func:`fit` reads and checks the input, preprocesses it the same way on
every path, trains through :class:`~factembed.estimator.FactorizedEmbeddings` (one
process) or :func:`~factembed.distributed.fit_distributed` (each rank), and writes the
model directory.  Nothing here parses command-line arguments or prints: messages go
through the ``echo`` callable (the CLI passes one that prints to stderr), warnings
through :mod:`warnings`.

Paths of a fit:

* in memory: read the file, preprocess (genes filtered, log10(x + 1)), leave out
  samples with a constant profile, fit;
* backed (``backed=True``): one pass over the file in row blocks checks every value and
  gathers per-gene statistics, from which the same gene selection is made; training
  then streams the kept genes of each block from disk;
* data-parallel (``processes=N``): everything above happens once in this process
  (so a bad input fails here, with the same one-line error), the prepared request is
  written to a JSON file and ``N`` ranks are launched with torchrun; each rank calls
  :func:`fit_rank`.  Under a launcher you started yourself (several machines),
  ``processes="torchrun"`` makes every rank prepare its own data and train.

Modules: :mod:`.requests` (the request and result dataclasses), :mod:`.data` (reading
and preparing data, in memory and backed), :mod:`.fitting` (fit, the data-parallel launch
and ranks), :mod:`.using` (transform, impute, reconstruct, genes, describe),
:mod:`.outputs` (the model directory's files, summary lines).
"""

from __future__ import annotations

from .requests import (ReadOptions, PreprocessingOptions, CheckpointOptions, FitRequest, FitResult,
                       PREPARED_DIR, UNDER_TORCHRUN)
from .data import (read_data, load_model, read_for_model, read_new_data, prepare_for_model,
                   drop_constant_samples, warn_orientation, prepare_in_memory, open_backed, select_from_stats,
                   prepare_backed, warn_constant_rows, FILL_MODES)
from ..evaluate.tasks import knn_accuracy
from .outputs import summary_line, convergence_note, label_knn, validation_line, write_fit_outputs
from .fitting import fit, check_output, fit_rank
from .using import (TransformResult, transform, training_labels, ImputeResult, impute, reconstruct,
                    gene_table, export_genes, similar_genes, describe)

__all__ = [
    "ReadOptions",
    "PreprocessingOptions",
    "CheckpointOptions",
    "FitRequest",
    "FitResult",
    "PREPARED_DIR",
    "UNDER_TORCHRUN",
    "read_data",
    "load_model",
    "read_for_model",
    "read_new_data",
    "prepare_for_model",
    "drop_constant_samples",
    "warn_orientation",
    "prepare_in_memory",
    "open_backed",
    "select_from_stats",
    "prepare_backed",
    "warn_constant_rows",
    "FILL_MODES",
    "summary_line",
    "validation_line",
    "convergence_note",
    "label_knn",
    "write_fit_outputs",
    "knn_accuracy",
    "fit",
    "check_output",
    "fit_rank",
    "TransformResult",
    "transform",
    "training_labels",
    "ImputeResult",
    "impute",
    "reconstruct",
    "gene_table",
    "export_genes",
    "similar_genes",
    "describe",
]
