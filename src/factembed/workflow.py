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
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import FEConfig
from .errors import FEInputError, FEWarning, MissingColumnError

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
    """The preprocessing a fit applies (see :class:`factembed.io.Preprocessing`);
    ``log10p1=None`` applies log10(x + 1) unless the file says its values already are."""
    log10p1: bool | None = None
    protein_coding_only: bool = True
    drop_constant: bool = True
    top_variable: int | None = None

    def resolve(self, already_log: bool):
        from .preprocessing import Preprocessing
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
                   overwrite=bool(d.get("overwrite", False)))

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


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

def read_data(path: str, read: ReadOptions | None = None):
    """The :class:`~factembed.io.ExpressionData` of ``path`` (``"demo"``: the bundled HSMM data)."""
    read = read or ReadOptions()
    if path == "demo":
        from .datasets import load_demo
        return load_demo()
    from .io import read_expression
    return read_expression(path, fmt=read.fmt, samples_as_rows=read.samples_as_rows,
                           label_column=read.label_column, labels_path=read.labels_path)


def load_model(path: str | os.PathLike):
    """``(estimator, fitted preprocessing or None, extra dict)`` of a model directory."""
    from .estimator import FactorizedEmbeddings
    from .preprocessing import FittedPreprocessing

    fe = FactorizedEmbeddings.load(path)
    extra = getattr(fe, "extra_", None) or {}
    pre = FittedPreprocessing.from_dict(extra["preprocessing"]) if extra.get("preprocessing") else None
    return fe, pre, extra


#: values of ``fill_missing`` (genes absent from the file, and with "decoder" NA values)
FILL_MODES = ("decoder", "means")


def _fill_mode(fill_missing: bool | str | None) -> str | None:
    """``None`` (no filling), ``"decoder"`` or ``"means"``; ``True`` is ``"decoder"``."""
    if fill_missing is None or fill_missing is False:
        return None
    if fill_missing is True:
        return "decoder"
    if fill_missing not in FILL_MODES:
        raise ValueError(f"fill_missing must be one of {', '.join(FILL_MODES)}, got {fill_missing!r}")
    return fill_missing


def read_for_model(path: str, read: ReadOptions | None, fe, pre, *, fill_missing: bool | str = False):
    """``path`` read (:func:`read_new_data`) and brought to the model's genes
    (:func:`prepare_for_model`)."""
    return prepare_for_model(read_new_data(path, read, fe), fe, pre, fill_missing=fill_missing)


def read_new_data(path: str, read: ReadOptions | None, fe):
    """New samples for a fitted model, read from ``path``.

    Without a label column in ``read``, the column the model was fitted with (recorded
    in the model) is taken as the labels when the file has it, so that it is not read
    as a gene."""
    read = read or ReadOptions()
    fitted_with = ((getattr(fe, "extra_", None) or {}).get("label_column"))
    data = None
    if read.label_column is None and read.labels_path is None and fitted_with and path != "demo":
        try:
            data = read_data(path, replace(read, label_column=fitted_with))
        except MissingColumnError:
            data = None                  # the new file has no such column: read it as it is
    if data is None:
        data = read_data(path, read)
    warn_orientation(data.samples, data.genes, data.shape, data.source, read)
    return data


def prepare_for_model(data, fe, pre, *, fill_missing: bool | str = False):
    """``data`` brought to the model's genes: its recorded preprocessing re-applied
    (genes matched by name), or the gene count checked.  ``fill_missing``: ``"means"``
    fills the genes the data lack with their training means; ``"decoder"`` (or ``True``)
    leaves them, and the data's NA values, as NaN (missing values, which inference
    leaves out); otherwise both are errors."""
    mode = _fill_mode(fill_missing)
    if pre is not None:
        if mode == "decoder":
            _check_some_genes(data, pre)
            return pre.apply(data, fill_missing="nan", allow_nan=True)
        return pre.apply(data, fill_missing=mode == "means")
    if data.n_genes != fe.n_features_in_:
        raise FEInputError(f"{data.n_genes} genes but the model has {fe.n_features_in_}", data.source)
    return data


def drop_constant_samples(data, what: str = "training"):
    """``data`` without the samples whose profile is constant (e.g. all zero), with a
    warning naming how many and the first (they carry nothing to embed)."""
    if data.n_genes < 2:
        return data
    step = max(1, (1 << 22) // data.n_genes)
    empty = np.concatenate([~np.any(data.X[a:a + step] != data.X[a:a + step, :1], axis=1)
                            for a in range(0, data.n_samples, step)])
    if empty.any():
        warnings.warn(f"{data.source or 'data'}: {int(empty.sum())} sample(s) have a constant (e.g. all-zero) "
                      f"profile and were left out of {what} (first: {data.samples[empty][0]})", stacklevel=2)
        data = data.subset_samples(np.flatnonzero(~empty))
    return data


def warn_orientation(samples, genes, shape, source, read: ReadOptions | None) -> None:
    """Warn (:class:`FEWarning`) when the matrix looks genes x samples, unless the
    orientation was given explicitly."""
    from .io.orientation import orientation_problem

    if read is not None and read.samples_as_rows is not None:
        return
    problem = orientation_problem(samples, genes, shape)
    if problem is not None:
        warnings.warn(FEWarning(f"{source or 'data'}: read as {shape[0]:,} samples x {shape[1]:,} genes, but "
                                f"{problem}",
                                hint="if its rows are genes, read it with ReadOptions(samples_as_rows=False)",
                                cli_hint="if its rows are genes, use --samples-as-columns"), stacklevel=2)


def prepare_in_memory(request: FitRequest, echo: Echo = _quiet):
    """Read, check and preprocess the request's data: ``(fitted preprocessing, data)``."""
    data = read_data(request.data, request.read)
    if request.data != "demo":
        warn_orientation(data.samples, data.genes, data.shape, data.source, request.read)
    already_log = data.transform == "log10p1"
    if request.data == "demo":   # the bundled demo is stored on the log scale, all genes kept
        pre = PreprocessingOptions(log10p1=False, protein_coding_only=False, drop_constant=True,
                                   top_variable=request.preprocessing.top_variable).resolve(True)
    else:
        pre = request.preprocessing.resolve(already_log)
    fitted, data = pre.fit_apply(data, copy=False)     # one copy of the matrix in memory
    data = drop_constant_samples(data)
    return fitted, data


# --------------------------------------------------------------------------------------
# backed data: one statistics pass, the same gene selection
# --------------------------------------------------------------------------------------

def open_backed(request: FitRequest):
    """The request's file as a backed row source, and whether log10(x + 1) is applied
    to each block as it is read."""
    from .sources import open_source, stored_as_log

    unsupported = [opt for opt, on in (("--samples-as-columns", request.read.samples_as_rows is False),
                                       ("--labels", request.read.labels_path is not None)) if on]
    if unsupported:
        raise FEInputError(f"{', '.join(unsupported)} cannot be combined with --backed (backed training "
                           "streams the file as stored: write it samples x genes with the labels inside)",
                           request.data)
    options: dict[str, Any] = {}
    if request.read.label_column:
        options["label_column"] = request.read.label_column
    source = open_source(request.data, fmt=request.read.fmt, log10p1=False, **options)
    log = request.preprocessing.log10p1
    if log is None:
        log = not stored_as_log(source)
    source.log10p1 = bool(log)
    return source, bool(log)


def select_from_stats(source, stats, preprocessing: PreprocessingOptions, log: bool):
    """The :class:`~factembed.io.FittedPreprocessing` of a backed source from its
    per-gene statistics: the same gene selection an in-memory fit makes."""
    from .preprocessing import Preprocessing
    pre = Preprocessing(log10p1=log, protein_coding_only=preprocessing.protein_coding_only,
                        drop_constant=preprocessing.drop_constant, top_variable=preprocessing.top_variable)
    m = source.shape[1]
    genes = source.genes if source.genes is not None else np.array([f"gene_{j}" for j in range(m)])
    return pre.fit_from_stats(genes, stats.mean, stats.var, stats.n, getattr(source, "biotypes", None),
                              vmin=stats.min, vmax=stats.max, source=source.path)


def prepare_backed(request: FitRequest, echo: Echo = _quiet, progress: bool = False):
    """Open the request's file backed, check every value and gather per-gene
    statistics in one pass, and choose the genes: ``(source restricted to the kept
    genes, fitted preprocessing, kept column numbers, statistics)``."""
    source, log = open_backed(request)
    n, m = source.shape
    warn_orientation(source.samples, source.genes, source.shape, request.data, request.read)
    echo(f"backed training on {n:,} samples x {m:,} genes from {request.data} "
         f"({'log10(x+1) applied per block' if log else 'values used as stored'}); "
         "checking all values and gathering gene statistics in one pass ...")
    stats = source.gene_stats(progress=progress)
    fitted = select_from_stats(source, stats, request.preprocessing, log)
    columns = _kept_columns(source, fitted)
    warn_constant_rows(source, stats)
    return source, fitted, columns, stats


def _kept_columns(source, fitted) -> np.ndarray:
    m = source.shape[1]
    genes = source.genes if source.genes is not None else np.array([f"gene_{j}" for j in range(m)])
    pos = {str(g): j for j, g in enumerate(genes)}
    return np.array([pos[str(g)] for g in fitted.genes], dtype=np.int64)


def warn_constant_rows(source, stats) -> None:
    rows = np.sort(stats.constant_rows)
    if rows.size:
        first = source.samples[rows[0]] if source.samples is not None else f"row {rows[0]}"
        warnings.warn(f"{source.path or 'data'}: {rows.size} sample(s) have a constant (e.g. all-zero) profile; "
                      f"backed training keeps them (first: {first}): their embedding carries no information, "
                      "leave them out when writing the file", stacklevel=2)


def _restrict(source, columns: np.ndarray):
    return source if len(columns) == source.shape[1] and np.array_equal(columns, np.arange(len(columns))) \
        else source.select_genes(columns)


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


def convergence_note(history: dict) -> str | None:
    """A sentence when the fit was still improving at its end (see
    :func:`~factembed.estimator.training_summary`), else ``None``."""
    from .estimator import training_summary

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
    """``knn_accuracy`` of the labels from the embedding (on a random subset of at most
    ``max_samples`` samples), or ``None`` when the labels cannot be scored (one class, or
    a class with fewer than 5 samples)."""
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
    return knn_accuracy(Z, labels)


def write_fit_outputs(fe, samples, labels, out: Path, extra: dict, title: str) -> list[Path]:
    """Model, embedding table, history table and the two figures, into ``out``.  When
    the samples have labels, their 5-fold kNN accuracy from the embedding is written on
    the embedding figure and recorded as ``extra["knn_accuracy"]`` / ``["knn_chance"]``."""
    import pandas as pd

    from ._files import atomic_output
    from .io import write_embedding_table
    from .plot import plot_embedding, plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    knn = label_knn(fe.embedding_, labels)
    label_name = extra.get("label_column") or ("time point" if extra.get("source") == "demo" else "label")
    note = None
    if knn is not None:
        extra = {**extra, "knn_accuracy": knn[0], "knn_chance": knn[1]}
        note = f"5-fold kNN accuracy of the {label_name}: {knn[0]:.3f} (chance {knn[1]:.3f})"
    fe.save(out, extra=extra)
    fe.extra_ = extra
    written = [out / "model.json", out / "weights.safetensors"]
    write_embedding_table(out / "embedding.csv", fe.embedding_, samples, labels)
    written.append(out / "embedding.csv")
    with atomic_output(out / "history.csv") as tmp:
        pd.DataFrame(fe.history_).to_csv(tmp, index=False)
    written.append(out / "history.csv")
    written += plot_embedding(fe.embedding_, labels, out / "embedding.png", title=title,
                              label_name=label_name, note=note)
    written += plot_training_curves(fe.history_, out / "training.png", title=title)
    return written


def _extra(request: FitRequest, fitted, seconds: float, **more) -> dict:
    return {"preprocessing": fitted.to_dict(), "label_column": request.read.label_column,
            "source": "demo" if request.data == "demo" else str(request.data), "fit_seconds": seconds, **more}


def _title(request: FitRequest) -> str:
    return request.title or f"FE of {request.data_name}"


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------

def fit(request: FitRequest, echo: Echo = _stderr) -> FitResult | None:
    """Train the model the request describes and write its directory.  Returns the
    :class:`FitResult` (``None`` on the ranks other than 0 of a data-parallel fit).

    An output directory that already holds a model, or checkpoints of another run, is
    refused unless ``request.overwrite`` (which first removes those checkpoints) or
    ``checkpoints.resume``.  Without a seed (``config.random_state=None``) one is drawn
    and recorded in the model (``estimator.random_state``), so that the fit can be
    repeated (a resumed run takes the seed of its checkpoints).  After a successful fit the
    checkpoints are removed unless ``checkpoints.keep``."""
    if request.processes is not None and request.checkpoints.divergence_retries > 0:
        raise ValueError("--divergence-retries is not available for distributed fits (the ranks would have to "
                         "agree on the retry); use checkpoints and --resume with a smaller --lr")
    if request.processes == UNDER_TORCHRUN:
        if request.prepared is None:            # a launcher of the user's: every rank checks
            check_output(request)
        res = fit_rank(request, echo)
    else:
        check_output(request)
        request = _with_seed(request)
        if request.processes is not None:
            res = _launch_distributed(request, echo)
        elif request.backed:
            res = _fit_backed(request, echo)
        else:
            res = _fit_in_memory(request, echo)
    if res is not None and not request.checkpoints.keep:
        from .checkpoint import remove_checkpoints
        remove_checkpoints(request.checkpoints.location(request.output))
    return res


def check_output(request: FitRequest) -> None:
    """Refuse to train into a directory that holds a model or another run's checkpoints
    (see :func:`fit`); with ``overwrite``, remove those checkpoints first."""
    from .checkpoint import checkpoint_steps, remove_checkpoints

    out = Path(request.output)
    ck = request.checkpoints.location(out)
    has_model = (out / "model.json").is_file()
    has_checkpoints = bool(checkpoint_steps(ck))
    if request.checkpoints.resume:
        if has_model and not has_checkpoints:
            raise FEInputError("holds a finished model and no checkpoints to resume from (they are removed after "
                               "a successful fit unless kept)", out, hint="pass overwrite=True to train it again",
                               cli_hint="pass --overwrite to train it again; --keep-checkpoints keeps them "
                                        "so that a run can be extended")
        return
    if request.overwrite or (has_model and request.data == "demo" and _demo_model(out)):
        remove_checkpoints(ck)         # (a demo replaces the output of an earlier demo)
        return
    if has_model:
        raise FEInputError("already holds a model", out,
                           hint="pass overwrite=True to replace it, or CheckpointOptions(resume=True) to continue "
                                "its run", cli_hint="pass --overwrite to replace it, or --resume to continue its run")
    if has_checkpoints:
        raise FEInputError("holds checkpoints of an interrupted run", ck,
                           hint="resume it with CheckpointOptions(resume=True), or pass overwrite=True to start again",
                           cli_hint="resume it with --resume, or pass --overwrite to start again")


def _demo_model(out: Path) -> bool:
    try:
        return (json.loads((out / "model.json").read_text()).get("extra") or {}).get("source") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


def _with_seed(request: FitRequest) -> FitRequest:
    """The request with a seed: the given one, a resumed run's, or a new one (recorded
    in the model as ``random_state``)."""
    from .checkpoint import checkpoint_meta_of

    if request.config.random_state is not None:
        return request
    if request.checkpoints.resume:
        meta = checkpoint_meta_of(request.checkpoints.location(request.output))
        if meta is not None:          # continue with the run's own seed (None for an unseeded old run)
            seed = (meta.get("config") or {}).get("random_state")
            return replace(request, config=replace(request.config, random_state=seed))
    seed = secrets.randbelow(2**31)
    return replace(request, config=replace(request.config, random_state=seed))


def _checkpoint_kwargs(request: FitRequest) -> dict:
    ck = request.checkpoints
    directory = ck.directory_for(request.output)
    if directory is None:
        return {"divergence_retries": ck.divergence_retries}
    return {"checkpoint_dir": directory, "checkpoint_every": ck.every, "resume": ck.resume,
            "divergence_retries": ck.divergence_retries}


def _fit_in_memory(request: FitRequest, echo: Echo) -> FitResult:
    from .estimator import FactorizedEmbeddings

    fitted, data = prepare_in_memory(request, echo)
    from .recipes import plan_training
    echo(f"training on {data.n_samples:,} samples x {data.n_genes:,} genes ({fitted.config.describe()}); "
         f"{plan_training(request.config, data.n_samples, data.n_genes).describe()}")
    fe = FactorizedEmbeddings.from_config(request.config)
    t0 = time.perf_counter()
    fe.fit(data.X, sample_names=data.samples, gene_names=data.genes, **_checkpoint_kwargs(request))
    seconds = time.perf_counter() - t0
    written = write_fit_outputs(fe, data.samples, data.labels, Path(request.output),
                                _extra(request, fitted, seconds), _title(request))
    return FitResult(fe, data.samples, data.labels, seconds, written, "memory", fe.resumed_from_,
                     data.n_samples, data.n_genes)


def _fit_backed(request: FitRequest, echo: Echo) -> FitResult:
    from .estimator import FactorizedEmbeddings

    full, fitted, columns, _ = prepare_backed(request, echo, progress=request.config.verbose)
    try:
        source = _restrict(full, columns)
        n, m = source.shape
        samples = full.samples if full.samples is not None else np.array([f"sample_{i}" for i in range(n)])
        if m != full.shape[1]:
            echo(f"training on {n:,} samples x {m:,} of {full.shape[1]:,} genes ({fitted.config.describe()})")
        fe = FactorizedEmbeddings.from_config(request.config)
        t0 = time.perf_counter()
        fe.fit(source, sample_names=samples, gene_names=fitted.genes, **_checkpoint_kwargs(request))
        seconds = time.perf_counter() - t0
        written = write_fit_outputs(fe, samples, full.labels, Path(request.output),
                                    _extra(request, fitted, seconds, backed=True), _title(request))
        return FitResult(fe, samples, full.labels, seconds, written, "backed", fe.resumed_from_, n, m)
    finally:
        full.close()


# -- data-parallel ---------------------------------------------------------------------

def _launch_distributed(request: FitRequest, echo: Echo) -> FitResult:
    """Check and prepare the input here, then run ``processes`` ranks under torchrun."""
    from .distributed.launch import run_torchrun
    from .preprocessing import FittedPreprocessing

    nproc = int(request.processes)
    if nproc < 1:
        raise ValueError(f"--distributed needs a number of processes >= 1, got {nproc}")
    request.checkpoints.directory_for(request.output)     # checks --resume without checkpoints
    out = Path(request.output)
    prep = out / PREPARED_DIR
    prep.mkdir(parents=True, exist_ok=True)
    if request.backed:
        full, fitted, columns, _ = prepare_backed(request, echo, progress=request.config.verbose)
        n = full.shape[0]
        full.close()
        prepared = {"kind": "backed", "columns": columns.tolist()}
    else:
        fitted, data = prepare_in_memory(request, echo)
        n = data.n_samples
        np.save(prep / "matrix.npy", np.ascontiguousarray(data.X, dtype=np.float32))
        prepared = {"kind": "matrix", "matrix": str(prep / "matrix.npy"),
                    "samples": data.samples.tolist(),
                    "labels": None if data.labels is None else [str(v) for v in data.labels.tolist()]}
        del data
    from .recipes import plan_training
    plan = plan_training(request.config, n, len(fitted.genes), nproc)
    if n < nproc * plan.batch_samples:
        raise FEInputError(f"{n} samples cannot give each of {nproc} processes batch_samples="
                           f"{plan.batch_samples}; use fewer processes or a smaller batch", request.data)
    prepared["preprocessing"] = fitted.to_dict()
    rank_request = FitRequest.from_dict(request.to_dict())
    rank_request.processes = UNDER_TORCHRUN
    rank_request.prepared = prepared
    req_path = prep / "request.json"
    req_path.write_text(json.dumps(rank_request.to_dict()))
    echo(f"running {nproc} data-parallel process(es) under torchrun")
    t0 = time.perf_counter()
    try:
        rc = run_torchrun(nproc, ["-m", "factembed.distributed", str(req_path)])
    finally:
        shutil.rmtree(prep, ignore_errors=True)     # the prepared matrix is a full copy of the data
    if rc != 0:
        raise RuntimeError(f"distributed training failed (a rank exited with status {rc}); its message is above")
    fe, _, extra = load_model(out)
    FittedPreprocessing.from_dict(extra["preprocessing"])
    d = extra.get("distributed", {})
    return FitResult(fe, np.asarray(fe.sample_names_), None, time.perf_counter() - t0,
                     [out / name for name in ("model.json", "weights.safetensors", "embedding.csv", "history.csv")],
                     "distributed", d.get("resumed_from"), fe.net_.n_samples, fe.net_.n_genes, d)


def _rank_data(request: FitRequest, rank: int, world: int, echo: Echo):
    """This rank's rows (array or backed view), ``lo``, ``n``, names, labels and the fitted preprocessing."""
    from .distributed import all_gather_objects, shard_bounds
    from .preprocessing import FittedPreprocessing
    from .sources import NpySource

    prepared = request.prepared
    if prepared is not None and prepared["kind"] == "matrix":
        full = NpySource(prepared["matrix"])
        n = full.shape[0]
        lo, hi = shard_bounds(n, world, rank)
        rows = full.view(lo, hi).to_numpy()
        full.close()
        labels = prepared["labels"]
        return (rows, lo, n, np.asarray(prepared["samples"]), None if labels is None else np.asarray(labels),
                FittedPreprocessing.from_dict(prepared["preprocessing"]), [])
    if prepared is not None:       # backed, columns chosen by the launching process
        full, _ = open_backed(request)
        fitted = FittedPreprocessing.from_dict(prepared["preprocessing"])
        columns = np.asarray(prepared["columns"], dtype=np.int64)
    elif request.backed:           # under a launcher of the user's: statistics over the shards
        full, log = open_backed(request)
        lo, hi = shard_bounds(full.shape[0], world, rank)
        stats = full.view(lo, hi).gene_stats()
        stats.constant_rows = stats.constant_rows + lo       # the shard's row numbers -> the file's
        merged = None
        for part in all_gather_objects(stats):
            merged = part if merged is None else merged.merge(part)
        fitted = select_from_stats(full, merged, request.preprocessing, log)
        columns = _kept_columns(full, fitted)
        if rank == 0:
            warn_constant_rows(full, merged)
    else:                          # under a launcher of the user's, in memory: every rank reads the file
        fitted, data = prepare_in_memory(request, echo)
        n = data.n_samples
        lo, hi = shard_bounds(n, world, rank)
        return (np.ascontiguousarray(data.X[lo:hi]), lo, n, data.samples, data.labels, fitted, [])
    source = _restrict(full, columns)
    n = source.shape[0]
    lo, hi = shard_bounds(n, world, rank)
    samples = full.samples if full.samples is not None else np.array([f"sample_{i}" for i in range(n)])
    return source.view(lo, hi), lo, n, samples, full.labels, fitted, [full]


def fit_rank(request: FitRequest, echo: Echo = _stderr) -> FitResult | None:
    """One rank of a data-parallel fit (call it on every rank, under torchrun)."""
    import torch.distributed as dist

    from .distributed import fit_distributed, init_process_group

    cfg = request.config
    rank, world, _ = init_process_group(device=cfg.device)
    if rank != 0:
        cfg.verbose = False
        echo = _quiet
    try:
        rows, lo, n, samples, labels, fitted, to_close = _rank_data(request, rank, world, echo)
        m = rows.shape[1]
        from .recipes import plan_training
        plan = plan_training(cfg, n, m, world)
        echo(f"distributed training: {world} process(es) ({dist.get_backend()}), {n:,} samples x {m:,} genes, "
             f"{plan.batch_samples} profiles per rank per step (global batch {plan.batch_samples * world}); "
             f"{plan.describe()}")
        ck = request.checkpoints
        t0 = time.perf_counter()
        res = fit_distributed(rows, config=cfg, n_total=n, lo=lo, samples=samples, genes=fitted.genes,
                              checkpoint_dir=ck.directory_for(request.output), checkpoint_every=max(1, ck.every),
                              resume=ck.resume)
        seconds = time.perf_counter() - t0
        for src in to_close:
            src.close()
        if rank != 0:
            dist.barrier()
            return None
        fe = res.estimator
        details = dict(fe.distributed_, allreduce_seconds=res.allreduce_seconds, resumed_from=res.resumed_from)
        written = write_fit_outputs(fe, samples, labels, Path(request.output),
                                    _extra(request, fitted, seconds, backed=bool(request.backed),
                                           distributed=details), _title(request))
        dist.barrier()
        return FitResult(fe, samples, labels, seconds, written, "distributed", res.resumed_from, n, m, details)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# using a model
# --------------------------------------------------------------------------------------

@dataclass
class TransformResult:
    embedding: np.ndarray
    data: Any
    estimator: Any
    written: list[Path]
    fill: str | None = None           # how missing values were handled: None, "decoder" or "means"
    absent_genes: int = 0             # the model's genes the file lacks
    missing_values: int = 0           # NaN entries left out of inference (absent genes included)


def _check_some_genes(data, pre) -> None:
    """An error when ``data`` has none of the model's genes (by name): every value would
    be missing (e.g. a file without gene names, such as ``.npy``)."""
    if len(pre.absent_genes(data)) == pre.n_genes:
        raise FEInputError(f"none of the model's {pre.n_genes:,} genes is in the data (the model's first: "
                           f"{', '.join(map(str, pre.genes[:3]))}; the data's first: "
                           f"{', '.join(map(str, data.genes[:3]))}); genes are matched by name", data.source)


def _report_missing(raw, d, pre, mode: str | None) -> tuple[int, int]:
    """``(the model's genes that ``raw`` lacks, NaN entries of the model-gene matrix of
    ``d``)``; with the decoder fill, warns when genes are absent (the means fill warns in
    the preprocessing itself)."""
    from ._validation import observed_counts

    absent = 0 if pre is None else len(pre.absent_genes(raw))
    if mode != "decoder":
        return absent, 0
    rows, _ = observed_counts(d.X)
    if absent:
        warnings.warn(f"{raw.source or 'data'}: {absent} of {d.n_genes} genes are missing; each sample is embedded "
                      "from its observed values only (the decoder's values stand in for the missing ones)",
                      stacklevel=3)
    return absent, int(d.n_samples * d.n_genes - rows.sum())


def transform(model: str, data: str, output: str, *, read: ReadOptions | None = None,
              fill_missing: bool | str = False, plot: str | None = None, verbose: bool = True,
              distributed: bool = False) -> TransformResult | None:
    """Embed the samples of ``data`` into the model at ``model`` and write the table
    (``.csv``/``.tsv``) or ``.h5ad`` to ``output``; ``plot``: a PNG of the new samples over
    the training embedding.  ``fill_missing``: ``"decoder"`` (or ``True``) embeds each
    sample from its observed values only, so the genes the file lacks and its NA values
    are left out (which is what filling them with the decoder's values at the sample's
    embedding amounts to: they then add no error); ``"means"`` fills absent genes with
    their training means (NA values stay errors).  ``distributed=True``: run as one
    rank under torchrun (the rows are split over the ranks; rank 0 writes, the others
    return ``None``)."""
    from .io import write_embedding_h5ad, write_embedding_table

    mode = _fill_mode(fill_missing)
    if distributed:
        return _transform_rank(model, data, output, read=read, fill_missing=mode, verbose=verbose)
    fe, pre, _ = load_model(model)
    if not verbose:
        fe.set_params(verbose=False)
    raw = read_new_data(data, read, fe)
    d = prepare_for_model(raw, fe, pre, fill_missing=mode)
    absent, n_nan = _report_missing(raw, d, pre, mode)
    del raw
    Z = fe.transform(d.X, missing="ignore" if mode == "decoder" else "error")
    if output.endswith(".h5ad"):
        write_embedding_h5ad(output, d, Z, fe.gene_embedding_)
    else:
        write_embedding_table(output, Z, d.samples, d.labels)
    written = [Path(output)]
    if plot:
        from .plot import plot_transform
        extra = getattr(fe, "extra_", None) or {}
        written += plot_transform(fe.embedding_, Z, d.labels, plot, train_labels=training_labels(model, fe),
                                  label_name=read.label_column if read and read.label_column
                                  else extra.get("label_column")
                                  or ("time point" if extra.get("source") == "demo" else "label"))
    return TransformResult(Z, d, fe, written, mode, absent, n_nan)


def training_labels(model: str | os.PathLike, fe) -> np.ndarray | None:
    """The labels of the training samples, from the model directory's ``embedding.csv``
    (``None`` when it has none or does not match the model)."""
    import pandas as pd

    path = Path(model) / "embedding.csv"
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"sample": str, "label": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if "label" not in table or len(table) != fe.net_.n_samples:
        return None
    names = getattr(fe, "sample_names_", None)
    if names is not None and "sample" in table and list(table["sample"]) != [str(v) for v in names]:
        return None
    return table["label"].astype(str).to_numpy()


def _transform_rank(model, data, output, *, read, fill_missing, verbose):
    import os as _os

    import torch
    import torch.distributed as dist

    from .distributed import init_process_group, transform_distributed
    from .io import write_embedding_h5ad, write_embedding_table

    rank, world, _ = init_process_group(device="cpu")   # gloo: only the small embeddings travel
    try:
        fe, pre, _ = load_model(model)
        if torch.cuda.is_available() and fe.config.device != "cpu":
            local_rank = int(_os.environ.get("LOCAL_RANK", "0"))
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
            fe.net_.to(dev)
            fe.set_params(device=str(dev))
        if not verbose or rank != 0:
            fe.set_params(verbose=False)
        d = read_for_model(data, read, fe, pre, fill_missing=fill_missing)
        Z = transform_distributed(fe, d.X, missing="ignore" if fill_missing == "decoder" else "error")
        result = None
        if rank == 0:
            if output.endswith(".h5ad"):
                write_embedding_h5ad(output, d, Z, fe.gene_embedding_)
            else:
                write_embedding_table(output, Z, d.samples, d.labels)
            result = TransformResult(Z, d, fe, [Path(output)], fill_missing)
        dist.barrier()
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class ImputeResult:
    """What :func:`impute` did."""
    data: Any                          # the ExpressionData written (model genes, filled)
    estimator: Any
    written: list[Path]
    imputed_values: int                # entries filled (NA values and absent genes)
    imputed_samples: int               # samples with at least one filled entry
    absent_genes: list[str]            # the model's genes the file lacks (filled in every sample)
    dropped_genes: int                 # genes of the file the model does not know (not written)
    scale: str                         # the scale of the values written, in words


def impute(model: str, data: str, output: str, *, read: ReadOptions | None = None, model_scale: bool = False,
           empty_genes: bool = False, verbose: bool = True) -> ImputeResult:
    """Fill the missing values of ``data`` with the model's decoder and write the result
    to ``output`` (format from its extension: ``.csv``/``.tsv``/``.txt`` (``.gz``),
    ``.h5``, ``.h5ad``, ``.npz``).

    The model's recorded preprocessing is re-applied (genes matched by name, log10(x + 1)
    when the model was fitted with it); NA values and the model's genes that the file
    lacks are missing values.  Each sample with any is embedded from its observed values
    only and its missing values are replaced by the decoder's output at that embedding
    (:meth:`FactorizedEmbeddings.impute`).  The result holds the model's genes, in the
    model's order (the file's other genes are left out: the model cannot fill them).

    Scale: by default the values are written on the file's own scale: observed values
    exactly as read, imputed ones through the inverse of log10(x + 1) (``10^y - 1``,
    clipped at 0) when the model applies it; ``model_scale=True`` writes everything on
    the model's scale instead (log10(x + 1) of the observed values).  ``empty_genes``:
    fill a gene that the file has but observes in no sample (otherwise an error naming
    it: such a column is more often broken than absent)."""
    from ._validation import check_observed, observed_counts
    from .io import write_expression
    from .io.formats import writer_format

    writer_format(output)                       # no writer for it: fail before the work
    fe, pre, _ = load_model(model)
    if not verbose:
        fe.set_params(verbose=False)
    raw = read_new_data(data, read, fe)
    invert = pre is not None and pre.log10p1 and not model_scale
    absent: list[str] = []
    if pre is not None:
        _check_some_genes(raw, pre)
        absent = [str(g) for g in pre.absent_genes(raw).tolist()]
        dropped = raw.n_genes - (pre.n_genes - len(absent))
        # without the inversion raw is not needed again: its buffer may be reused
        d = pre.apply(raw, fill_missing="nan", allow_nan=True, copy=invert)
    else:
        from ._validation import first_bad_value
        if raw.n_genes != fe.n_features_in_:
            raise FEInputError(f"{raw.n_genes} genes but the model has {fe.n_features_in_}", raw.source)
        hit = first_bad_value(raw.X, allow_nan=True)
        if hit is not None:
            raise FEInputError(f"sample {str(raw.samples[hit[0]])!r}, gene {str(raw.genes[hit[1]])!r}: value is "
                               f"{hit[2]}", raw.source)
        d, dropped = raw, 0
    rows, cols = observed_counts(d.X)
    empty_ok = np.isin(d.genes, np.asarray(absent, dtype=str)) | bool(empty_genes)
    check_observed(rows, cols, samples=d.samples, genes=d.genes, empty_ok=empty_ok, what="", path=d.source,
                   gene_hint="use --impute-empty-genes (Python: empty_genes=True) to fill it from the decoder "
                             "alone, or leave the column out of the file (absent genes are imputed)")
    n, m = d.shape
    n_values = int(n * m - rows.sum())
    d.X = fe.impute(d.X, empty_genes="impute", copy=False)
    if invert:
        _to_input_scale(d.X, raw, pre)
        d.transform = None
        scale = "the input's scale: observed values as read, imputed ones 10^y - 1 of the model's log10(x+1) values"
    elif pre is not None and pre.log10p1:
        d.transform = "log10p1"
        scale = "the model's scale, log10(x+1)"
    elif pre is not None:
        scale = "the input's scale (the model was fitted on values as stored)"
    else:
        scale = "the input's scale (the model records no preprocessing: values used as given)"
    write_expression(output, d)
    return ImputeResult(d, fe, [Path(output)], n_values, int((rows < m).sum()), absent, dropped, scale)


def _to_input_scale(F: np.ndarray, raw, pre) -> None:
    """In place, row block by row block: the entries of ``F`` (model genes, model scale,
    every value filled) that ``raw`` observed become ``raw``'s values as read; the others
    ``max(10^y - 1, 0)`` (the inverse of log10(x + 1), clipped at 0)."""
    from .io._data import _chunk_rows

    pos = {g: j for j, g in enumerate(raw.genes.tolist())}
    idx = np.array([pos.get(g, -1) for g in pre.genes.tolist()], dtype=np.int64)
    present = idx >= 0
    ln10 = np.float32(np.log(10.0))
    step = _chunk_rows(F.shape[1])
    for a in range(0, F.shape[0], step):
        block = F[a:a + step]
        src = raw.X[a:a + step][:, idx[present]]
        inv = np.expm1(block * ln10)
        np.maximum(inv, 0, out=inv)
        kept = inv[:, present]
        obs = ~np.isnan(src)
        kept[obs] = src[obs]
        inv[:, present] = kept
        block[...] = inv


def reconstruct(model: str, embedding: str, output: str):
    """Decode the embedding table ``embedding`` (columns ``sample``, ``FE1``, ``FE2``, ...)
    into full profiles written to ``output``: ``(n profiles, n genes, scale)``."""
    import pandas as pd

    from .io import ExpressionData, write_expression

    fe, pre, _ = load_model(model)
    if not os.path.isfile(embedding):
        raise FEInputError("no such file", embedding)
    sep = "\t" if embedding.endswith((".tsv", ".tsv.gz", ".txt")) else ","
    try:
        table = pd.read_csv(embedding, sep=sep)
    except Exception as exc:
        raise FEInputError(f"cannot read the embedding table ({exc})", embedding) from None
    cols = [c for c in table.columns if str(c).startswith("FE")]
    if len(cols) != fe.net_.sample_dim:
        raise FEInputError(f"found {len(cols)} FE columns, the model has sample_dim={fe.net_.sample_dim}",
                           embedding)
    try:
        Z = table[cols].to_numpy(dtype=np.float32)
    except ValueError:
        raise FEInputError("embedding columns are not numeric", embedding) from None
    samples = table["sample"].astype(str).to_numpy() if "sample" in table else \
        np.array([f"sample_{i}" for i in range(len(table))])
    X = fe.inverse_transform(Z)
    genes = fe.feature_names_in_ if getattr(fe, "feature_names_in_", None) is not None else \
        np.array([f"gene_{j}" for j in range(X.shape[1])])
    labels = table["label"].astype(str).to_numpy() if "label" in table else None
    log = pre is not None and pre.log10p1
    write_expression(output, ExpressionData(X=X, samples=samples, genes=np.asarray(genes, dtype=str),
                                            labels=labels, transform="log10p1" if log else None))
    return len(samples), X.shape[1], ("log10(x+1) scale" if log else "model scale")


def gene_table(model: str):
    """The model's gene embedding as a DataFrame: column ``gene``, then ``GE1`` ... ``GEd``."""
    import pandas as pd

    fe, _, _ = load_model(model)
    G = fe.gene_embedding_
    names = getattr(fe, "feature_names_in_", None)
    genes = [str(g) for g in names] if names is not None else [f"gene_{j}" for j in range(G.shape[0])]
    table = pd.DataFrame(G, columns=[f"GE{k + 1}" for k in range(G.shape[1])])
    table.insert(0, "gene", genes)
    return table


def export_genes(model: str, output: str) -> tuple[int, int]:
    """Write the model's gene embedding to ``output`` (.csv/.tsv, optionally .gz) atomically:
    ``(genes, dimensions)``."""
    from ._files import atomic_output
    from .io._paths import _split_ext

    ext, gz = _split_ext(output)
    if ext not in (".csv", ".tsv", ".txt", ".tab"):
        raise FEInputError(f"cannot write a gene table with extension {ext!r}; use .csv or .tsv", output)
    table = gene_table(model)
    with atomic_output(output) as tmp:
        table.to_csv(tmp, sep="," if ext == ".csv" else "\t", index=False, float_format="%.9g",
                     compression="gzip" if gz else None)
    return len(table), table.shape[1] - 1


def similar_genes(model: str, gene: str, k: int = 10):
    """The ``k`` nearest genes to ``gene`` in the model's gene embedding (a Series,
    see :meth:`~factembed.FactorizedEmbeddings.similar_genes`)."""
    fe, _, _ = load_model(model)
    return fe.similar_genes(gene, k=k)


def describe(model: str) -> list[str]:
    """Lines describing a model: data shape, hyper-parameters, training, preprocessing."""
    fe, pre, extra = load_model(model)
    cfg = fe.config
    lines = [f"model: {model}",
             f"data: {fe.net_.n_samples:,} training samples x {fe.net_.n_genes:,} genes"
             + (f" (from {extra['source']})" if extra.get("source") else "")]
    lines += [f"  {name} = {getattr(cfg, name)}" for name in FEConfig.field_names()]
    lines.append(f"training: {fe.n_steps_:,} steps"
                 + (f" in {extra['fit_seconds']:.1f} s" if extra.get("fit_seconds") else "")
                 + f"; {summary_line(fe.history_)}")
    if pre is not None:
        lines.append(f"preprocessing: {pre.config.describe()}; {pre.n_genes:,} genes kept")
    return lines


def knn_accuracy(Z: np.ndarray, labels: Any, folds: int = 5, k: int = 5) -> tuple[float, float]:
    """``(mean 5-fold accuracy of a k-NN classifier of the labels from Z, chance level)``."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = np.asarray(labels)
    acc = float(cross_val_score(KNeighborsClassifier(k), Z, labels, cv=folds).mean())
    chance = float(np.unique(labels, return_counts=True)[1].max() / len(labels))
    return acc, chance
