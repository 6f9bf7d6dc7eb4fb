"""Fitting: the one place a fit is set up, for in-memory, backed and data-parallel data."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..estimator.inputs import take_genes
from ..errors import FEInputError
from ..estimator.model_files import META_FILE, WEIGHTS_FILE
from .requests import Echo, FitRequest, FitResult, PREPARED_DIR, UNDER_TORCHRUN, _quiet, _stderr
from .data import (_kept_columns, covariate_columns, labels_covariates, load_model, open_backed, prepare_backed,
                   prepare_in_memory, select_from_stats, warn_constant_rows)
from .outputs import _extra, _title, write_fit_outputs


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
    if request.missing not in ("error", "ignore"):
        raise ValueError(f"missing must be 'error' or 'ignore', got {request.missing!r}")
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
        from ..training.checkpoint import remove_checkpoints
        remove_checkpoints(request.checkpoints.location(request.output))
    return res


def check_output(request: FitRequest) -> None:
    """Refuse to train into a directory that holds a model or another run's checkpoints
    (see :func:`fit`); with ``overwrite``, remove those checkpoints first."""
    from ..training.checkpoint import checkpoint_steps, remove_checkpoints

    out = Path(request.output)
    ck = request.checkpoints.location(out)
    has_model = (out / META_FILE).is_file()
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
        return (json.loads((out / META_FILE).read_text()).get("extra") or {}).get("source") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


def _with_seed(request: FitRequest) -> FitRequest:
    """The request with a seed: the given one, a resumed run's, or a new one (recorded
    in the model as ``random_state``)."""
    from ..training.checkpoint import checkpoint_meta_of

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
    from ..estimator.factorized_embeddings import FactorizedEmbeddings

    fitted, data = prepare_in_memory(request, echo)
    from ..training.recipes import plan_training
    echo(f"training on {data.n_samples:,} samples x {data.n_genes:,} genes ({fitted.config.describe()}); "
         f"{plan_training(request.config, data.n_samples, data.n_genes).describe()}")
    fe = FactorizedEmbeddings.from_config(request.config)
    t0 = time.perf_counter()
    covariates = covariate_columns(request.covariates, data, request.read.labels_path) \
        if request.covariates else None
    fe.fit(data.X, sample_names=data.samples, gene_names=data.genes, missing=request.missing,
           covariates=covariates, **_checkpoint_kwargs(request))
    seconds = time.perf_counter() - t0
    written = write_fit_outputs(fe, data.samples, data.labels, Path(request.output),
                                _extra(request, fitted, seconds), _title(request), html=request.html)
    return FitResult(fe, data.samples, data.labels, seconds, written, "memory", fe.resumed_from_,
                     data.n_samples, data.n_genes)


def _fit_backed(request: FitRequest, echo: Echo) -> FitResult:
    from ..estimator.factorized_embeddings import FactorizedEmbeddings

    full, fitted, columns, _ = prepare_backed(request, echo, progress=request.config.verbose)
    try:
        source = take_genes(full, columns)
        n, m = source.shape
        samples = full.samples if full.samples is not None else np.array([f"sample_{i}" for i in range(n)])
        if m != full.shape[1]:
            echo(f"training on {n:,} samples x {m:,} of {full.shape[1]:,} genes ({fitted.config.describe()})")
        fe = FactorizedEmbeddings.from_config(request.config)
        covariates = labels_covariates(request, samples)   # a backed file's own per-sample columns are not read
        t0 = time.perf_counter()
        fe.fit(source, sample_names=samples, gene_names=fitted.genes, missing=request.missing,
               covariates=covariates, **_checkpoint_kwargs(request))
        seconds = time.perf_counter() - t0
        written = write_fit_outputs(fe, samples, full.labels, Path(request.output),
                                    _extra(request, fitted, seconds, backed=True), _title(request), html=request.html)
        return FitResult(fe, samples, full.labels, seconds, written, "backed", fe.resumed_from_, n, m)
    finally:
        full.close()


# -- data-parallel ---------------------------------------------------------------------

def _launch_distributed(request: FitRequest, echo: Echo) -> FitResult:
    """Check and prepare the input here, then run ``processes`` ranks under torchrun."""
    from ..distributed.launch import run_torchrun

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
        samples = full.samples if full.samples is not None else np.array([f"sample_{i}" for i in range(n)])
        full.close()
        prepared = {"kind": "backed", "columns": columns.tolist()}
    else:
        fitted, data = prepare_in_memory(request, echo)
        n, samples = data.n_samples, data.samples
        np.save(prep / "matrix.npy", np.ascontiguousarray(data.X, dtype=np.float32))
        prepared = {"kind": "matrix", "matrix": str(prep / "matrix.npy"),
                    "samples": data.samples.tolist(),
                    "labels": None if data.labels is None else [str(v) for v in data.labels.tolist()]}
        del data
    labels_covariates(request, samples)     # a bad covariate column: the usual one-line error, here, not in the ranks
    from ..training.recipes import plan_training
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
        rc = run_torchrun(nproc, ["-m", "factembed.cli.rank", str(req_path)])
    finally:
        shutil.rmtree(prep, ignore_errors=True)     # the prepared matrix is a full copy of the data
    if rc != 0:
        raise RuntimeError(f"distributed training failed (a rank exited with status {rc}); its message is above")
    fe, _, extra = load_model(out)
    d = extra.get("distributed", {})
    return FitResult(fe, np.asarray(fe.sample_names_), None, time.perf_counter() - t0,
                     [out / name for name in (META_FILE, WEIGHTS_FILE, "embedding.csv", "history.csv",
                                              "embedding.png", "training.png") if (out / name).exists()],
                     "distributed", d.get("resumed_from"), fe.net_.n_samples, fe.net_.n_genes, d)


def _rank_data(request: FitRequest, rank: int, world: int, echo: Echo):
    """This rank's rows (array or backed view), ``lo``, ``n``, names, labels and the fitted preprocessing."""
    from ..distributed import all_gather_objects, shard_bounds
    from ..preprocessing import FittedPreprocessing
    from ..sources import NpySource

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
    source = take_genes(full, columns)
    n = source.shape[0]
    lo, hi = shard_bounds(n, world, rank)
    samples = full.samples if full.samples is not None else np.array([f"sample_{i}" for i in range(n)])
    return source.view(lo, hi), lo, n, samples, full.labels, fitted, [full]


def fit_rank(request: FitRequest, echo: Echo = _stderr) -> FitResult | None:
    """One rank of a data-parallel fit (call it on every rank, under torchrun)."""
    import torch.distributed as dist

    from ..distributed import fit_distributed, init_process_group

    cfg = request.config
    rank, world, _ = init_process_group(device=cfg.device)
    if rank != 0:
        cfg.verbose = False
        echo = _quiet
    try:
        rows, lo, n, samples, labels, fitted, to_close = _rank_data(request, rank, world, echo)
        m = rows.shape[1]
        from ..distributed.fit import rank_plan
        plan = rank_plan(cfg, n, m, world)           # what the ranks train (their random start)
        echo(f"distributed training: {world} process(es) ({dist.get_backend()}), {n:,} samples x {m:,} genes, "
             f"{plan.batch_samples} profiles per rank per step (global batch {plan.batch_samples * world}); "
             f"{plan.describe()}")
        ck = request.checkpoints
        covariates = labels_covariates(request, samples)    # every rank reads the whole table, by sample name
        t0 = time.perf_counter()
        res = fit_distributed(rows, config=cfg, n_total=n, lo=lo, samples=samples, genes=fitted.genes,
                              checkpoint_dir=ck.directory_for(request.output), checkpoint_every=max(1, ck.every),
                              resume=ck.resume, missing=request.missing, covariates=covariates)
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
                                           distributed=details), _title(request), html=request.html)
        dist.barrier()
        return FitResult(fe, samples, labels, seconds, written, "distributed", res.resumed_from, n, m, details)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
