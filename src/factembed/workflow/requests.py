"""What a workflow is asked to do: the request dataclasses and their results."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import FEConfig


Echo = Callable[[str], None]

#: where a data-parallel fit keeps its prepared inputs, inside the output directory
PREPARED_DIR = ".factembed-prepared"
#: the value of ``FitRequest.processes`` that joins a process group torchrun already made
UNDER_TORCHRUN = "torchrun"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _quiet(msg: str) -> None:
    pass


# --------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------

@dataclass
class ReadOptions:
    """How to read an expression file (see :func:`factembed.io.read_expression`)."""
    fmt: str | None = None
    samples_as_rows: bool | None = None       # None: detect; False: genes are rows
    label_column: str | None = None
    labels_path: str | None = None


@dataclass
class PreprocessingOptions:
    """The preprocessing a fit applies (see :class:`factembed.preprocessing.Preprocessing`);
    ``log10p1=None`` applies log10(x + 1) unless the file says its values already are."""
    log10p1: bool | None = None
    protein_coding_only: bool = True
    drop_constant: bool = True
    top_variable: int | None = None

    def resolve(self, already_log: bool):
        from ..preprocessing import Preprocessing
        log = (not already_log) if self.log10p1 is None else bool(self.log10p1)
        return Preprocessing(log10p1=log, protein_coding_only=self.protein_coding_only,
                             drop_constant=self.drop_constant, top_variable=self.top_variable)


@dataclass
class CheckpointOptions:
    """Checkpoints of a fit: every ``every`` steps (0: none) into ``directory``
    (default ``OUTPUT/checkpoints``); ``resume`` continues an interrupted run;
    ``divergence_retries`` as in :meth:`FactorizedEmbeddings.fit`; ``keep``: keep the
    checkpoints after a successful fit (``False``: remove them, the command line's
    default, since they are bigger than the model)."""
    every: int = 0
    directory: str | None = None
    resume: bool = False
    divergence_retries: int = 0
    keep: bool = True

    def location(self, output: str | os.PathLike) -> Path:
        """Where this run's checkpoints are (or would be)."""
        return Path(self.directory or Path(output) / "checkpoints")

    def directory_for(self, output: str | os.PathLike) -> str | None:
        if self.every <= 0:
            if self.resume:
                raise ValueError("resuming needs checkpoints (--checkpoint-every > 0)")
            return None
        return str(self.directory or Path(output) / "checkpoints")


@dataclass
class FitRequest:
    """Everything :func:`fit` needs; JSON-serialisable (:meth:`to_dict`), so the ranks
    of a data-parallel fit receive exactly the request the user made."""
    data: str
    output: str
    config: FEConfig = field(default_factory=FEConfig)
    read: ReadOptions = field(default_factory=ReadOptions)
    preprocessing: PreprocessingOptions = field(default_factory=PreprocessingOptions)
    checkpoints: CheckpointOptions = field(default_factory=CheckpointOptions)
    backed: bool = False
    processes: int | str | None = None        # data-parallel ranks, or UNDER_TORCHRUN
    title: str | None = None
    prepared: dict | None = None              # set by fit() for the ranks it launches
    overwrite: bool = False                   # replace a model already in ``output``
    missing: str = "error"                    # "ignore": NaN values are left out of training
    html: bool = True                         # also write embedding.html (needs bokeh; skipped without)
    covariates: list = field(default_factory=list)   # columns of --labels / obs fitted as covariates

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FitRequest":
        d = dict(d)
        return cls(data=d["data"], output=d["output"], config=FEConfig.from_dict(d["config"]),
                   read=ReadOptions(**d["read"]), preprocessing=PreprocessingOptions(**d["preprocessing"]),
                   checkpoints=CheckpointOptions(**d["checkpoints"]), backed=bool(d["backed"]),
                   processes=d.get("processes"), title=d.get("title"), prepared=d.get("prepared"),
                   overwrite=bool(d.get("overwrite", False)), missing=d.get("missing", "error"),
                   html=bool(d.get("html", True)), covariates=list(d.get("covariates") or []))

    @property
    def data_name(self) -> str:
        return "bundled HSMM demo" if self.data == "demo" else Path(self.data).name


@dataclass
class FitResult:
    """What :func:`fit` returns (on rank 0 for a data-parallel fit)."""
    estimator: Any
    samples: np.ndarray
    labels: np.ndarray | None
    seconds: float
    written: list[Path]
    mode: str                                  # "memory", "backed" or "distributed"
    resumed_from: int | None = None
    n_samples: int = 0
    n_genes: int = 0
    details: dict = field(default_factory=dict)
