"""Using a fitted model: transform, impute, reconstruct, the gene table, describe."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FEConfig
from ..errors import FEInputError
from .requests import ReadOptions
from .data import (_check_some_genes, _fill_mode, load_model, model_covariates, prepare_for_model, read_for_model,
                   read_new_data)
from .outputs import summary_line, validation_line


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


def _report_missing(raw, d, pre, mode: str | None) -> tuple[int, int]:
    """``(the model's genes that ``raw`` lacks, NaN entries of the model-gene matrix of
    ``d``)``; with the decoder fill, warns when genes are absent (the means fill warns in
    the preprocessing itself)."""
    from .._utils.validation import observed_counts

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
              distributed: bool = False, html: str | None = None, unseen: str = "learn") -> TransformResult | None:
    """Embed the samples of ``data`` into the model at ``model`` and write the table
    (``.csv``/``.tsv``) or ``.h5ad`` to ``output``; ``plot``: a PNG of the new samples over
    the training embedding.  ``fill_missing``: ``"decoder"`` (or ``True``) embeds each
    sample from its observed values only, so the genes the file lacks and its NA values
    are left out (which is what filling them with the decoder's values at the sample's
    embedding amounts to: they then add no error); ``"means"`` fills absent genes with
    their training means (NA values stay errors).  ``html``: the interactive page
    (:func:`~factembed.workflow.pages.model_page`) with the new samples drawn over the
    training embedding.  ``distributed=True``: run as one
    rank under torchrun (the rows are split over the ranks; rank 0 writes, the others
    return ``None``)."""
    from ..io import write_embedding_h5ad, write_embedding_table

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
    covariates = model_covariates(fe, d, read)
    Z = fe.transform(d.X, missing="ignore" if mode == "decoder" else "error", covariates=covariates,
                     unseen=unseen)
    if output.endswith(".h5ad"):
        write_embedding_h5ad(output, d, Z, fe.gene_embedding_)
    else:                      # the covariates as columns: the page draws the new samples with them
        write_embedding_table(output, Z, d.samples, d.labels, columns=covariates)
    written = [Path(output)]
    if plot:
        from ..plot.figures import plot_transform
        extra = getattr(fe, "extra_", None) or {}
        written += plot_transform(fe.embedding_, Z, d.labels, plot, train_labels=training_labels(model, fe),
                                  label_name=read.label_column if read and read.label_column
                                  else extra.get("label_column")
                                  or ("time point" if extra.get("source") == "demo" else "label"))
    if html:
        from .pages import _label_name, model_page
        new = {"Z": Z, "samples": d.samples,
               "annotations": None if d.labels is None else {_label_name(fe): [str(v) for v in d.labels]}}
        written.append(model_page(model, html, fe=fe, new=new))
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

    from ..distributed import init_process_group, transform_distributed
    from ..io import write_embedding_h5ad, write_embedding_table

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
           empty_genes: bool = False, verbose: bool = True, unseen: str = "learn") -> ImputeResult:
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
    from .._utils.validation import check_observed, observed_counts
    from ..io import write_expression
    from ..io.formats import writer_format

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
        from .._utils.validation import first_bad_value
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
    d.X = fe.impute(d.X, empty_genes="impute", copy=False, covariates=model_covariates(fe, d, read), unseen=unseen)
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
    from ..io._data import _chunk_rows

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


def reconstruct(model: str, embedding: str, output: str, as_levels: dict | None = None):
    """Decode the embedding table ``embedding`` (columns ``sample``, ``FE1``, ``FE2``, ...)
    into full profiles written to ``output``: ``(n profiles, n genes, scale)``.  For a model
    with covariates, ``as_levels`` gives every covariate's value for all profiles (e.g.
    ``{"batch": "run_1"}``: decoded as if measured in ``run_1``)."""
    import pandas as pd

    from ..io import ExpressionData, write_expression

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
    spec = getattr(fe, "covariates_", None)
    if spec is not None and not as_levels:
        raise FEInputError(f"the model has covariate(s) {', '.join(map(repr, spec.names))}: say which level "
                           "to decode the profiles as", embedding, hint="pass as_levels={name: level}",
                           cli_hint="pass --as NAME=LEVEL for each, e.g. --as " + spec.names[0] + "=...")
    if spec is not None:
        numeric = {c.name for c in spec.covariates if c.kind == "numeric"}
        try:
            as_levels = {k: float(v) if k in numeric else str(v) for k, v in as_levels.items()}
        except ValueError:
            bad = next(k for k, v in as_levels.items() if k in numeric and not _is_number(v))
            raise FEInputError(f"covariate {bad!r} is numeric: its value must be a number, got "
                               f"{as_levels[bad]!r}", embedding) from None
    X = fe.inverse_transform(Z, covariates=as_levels if spec is not None else None)
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
    from .._utils.files import atomic_output
    from ..io._paths import _split_ext

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
    held_out = validation_line(fe)
    if held_out:
        lines.append(f"validation: {held_out}")
    if pre is not None:
        lines.append(f"preprocessing: {pre.config.describe()}; {pre.n_genes:,} genes kept")
    spec = getattr(fe, "covariates_", None)
    for c in ([] if spec is None else spec.covariates):
        lines.append(f"covariate {c.name}: " + (f"{len(c.levels)} levels ({', '.join(c.levels[:8])}"
                                                 f"{', ...' if len(c.levels) > 8 else ''}), {c.dim} numbers each"
                                                 if c.kind == "categorical" else
                                                 f"numeric (mean {c.mean:.4g}, sd {c.sd:.4g})"))
    return lines


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
