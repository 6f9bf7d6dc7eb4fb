"""The training runner: one fit, resumable and guarded, for every data path.

:func:`run_training` wraps :func:`factembed.training.loop.train` with what a real fit needs
around the loop: checkpoints every ``checkpoint_every`` steps, resuming from the newest
valid checkpoint, and the divergence guard (on a NaN/inf loss, divide the learning
rate by 10 and continue from the last good checkpoint, or from the start).  It does
not care where the rows come from: an in-memory tensor, a backed (on-disk) source or
one rank's shard in a data-parallel run all go through it, so a training feature is
written once.  (The split follows scvi-tools: the torch module in :mod:`.model`, the
training runner here, the user-facing estimator in :mod:`.estimator`.)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import Checkpointer
from ..errors import FEInputError
from ..engine.network import FactorizedEmbeddingNet
from .loop import BatchPlan, BatchSampler, GeneWalk, History, TensorRows, make_optimizer, train
from .recipes import resolved_lr_schedule, trains_until_converged

#: the config fields that do not shape the trained model: a checkpoint need not match them
RUNTIME_PARAMS = ("verbose", "device", "infer_steps", "infer_lr", "infer_genes", "init_genes")


def checkpoint_meta(cfg: Any, n_samples: int, n_genes: int, **more: Any) -> dict:
    """What a checkpoint must match to be resumed: the hyper-parameters that shape the
    trained model (not the run-time ones, nor ``n_steps``: a run may be extended) and
    the data shape (``more``: e.g. a data-parallel run's world size and rank).  An annealed
    run (the resolved ``lr_schedule`` is "anneal") keeps the schedule and its length
    (``"auto"`` or the explicit ``n_steps``): its rates follow its length, so it cannot be
    extended; a constant schedule is left out, so checkpoints of constant runs written
    before the schedule existed still resume."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_PARAMS + ("lr_schedule", "n_steps")}
    if resolved_lr_schedule(cfg) == "anneal":
        config["lr_schedule"] = "anneal"
        config["n_steps"] = "auto" if trains_until_converged(cfg) else cfg.n_steps
    return {"config": config, "n_samples": int(n_samples), "n_genes": int(n_genes), **more}


def batch_plan(rows: Any, n_genes: int, plan: Any, gene_seed: int) -> BatchPlan:
    """The rows sampler plus, when ``plan.batch_genes`` is set, a gene walk drawn from its
    own generator seeded with ``gene_seed`` (the same on every rank of a data-parallel
    run, so all ranks train the same genes at each step)."""
    if plan.batch_genes is None:
        return BatchPlan(rows)
    return BatchPlan(rows, GeneWalk(n_genes, plan.batch_genes, torch.Generator().manual_seed(int(gene_seed))))


@dataclass
class TrainingOutcome:
    """What :func:`run_training` returns."""
    history: History
    lr: float                        # the learning rate finally used (lower after a divergence retry)
    resumed_from: int | None = None  # the checkpoint step a resumed run continued from
    checkpoint_dir: str | None = None


def fit_network(net: FactorizedEmbeddingNet, source: Any, plan: Any, *, l2: float, gene_chunk: int | None,
                n_total: int, generator: torch.Generator, gene_seed: int, val_seed: int,
                device: torch.device, compute_dtype: torch.dtype, progress: bool,
                checkpointer: Checkpointer | None = None, resume: bool = False, resume_state: Any = None,
                offset: int = 0, world: int = 1, reduce: Callable[[torch.Tensor], None] | None = None,
                before_step: Callable[[], None] | None = None, divergence_retries: int = 0,
                kernel: Any = None, workers: int | None = None, missing: bool = False
                ) -> tuple[TrainingOutcome, Any]:
    """The one fit set-up of every path: the in-memory and backed fits of the estimator and
    each rank of a data-parallel fit (``offset``: the rank's first global row, ``world``
    ranks, ``reduce``: the all-reduce of the validation sums).  From the resolved
    :class:`~factembed.training.recipes.TrainingPlan`: the batch sampler (the source's block sampler
    when it has one) with the plan's gene walk, and for ``plan.auto_stop`` the held-out
    validation entries of the whole ``n_total``-sample matrix and the stop rule; then
    :func:`run_training`.  Returns its outcome and the validation set (``None`` without the
    auto stop)."""
    n_local, m = (int(v) for v in source.shape)

    def new_sampler():
        rows = source.make_sampler(plan.batch_samples, generator) if hasattr(source, "make_sampler") \
            else BatchSampler(n_local, plan.batch_samples, generator)
        return batch_plan(rows, m, plan, gene_seed)

    validation = stop_rule = None
    if plan.auto_stop:
        from .heldout import AnnealStop, StopRule, ValidationSet, default_fraction
        validation = ValidationSet(TensorRows(source) if isinstance(source, torch.Tensor) else source,
                                   seed=val_seed, fraction=default_fraction(n_total, m),
                                   max_entries=max(1000, 50_000 // max(1, int(world))), offset=offset,
                                   reduce=reduce, every=plan.val_every)
        stop_rule = AnnealStop(patience=plan.patience, min_steps=plan.patience, budget=plan.anneal_budget) \
            if plan.lr_schedule == "anneal" else StopRule(patience=plan.patience, min_steps=plan.patience)
    outcome = run_training(net, source, n_steps=plan.n_steps, lr=plan.lr, sample_lr=plan.sample_lr, l2=l2,
                           batch_samples=plan.batch_samples, generator=generator, new_sampler=new_sampler,
                           device=device, compute_dtype=compute_dtype, gene_chunk=gene_chunk,
                           progress=progress, checkpointer=checkpointer, resume=resume,
                           resume_state=resume_state, before_step=before_step,
                           divergence_retries=divergence_retries, kernel=kernel, workers=workers,
                           validation=validation, stop_rule=stop_rule, missing=missing,
                           lr_factor=plan.lr_factor())
    return outcome, validation


def make_checkpointer(directory: str | os.PathLike | None, every: int, meta: dict, *,
                      resume: bool = False) -> Checkpointer | None:
    """A :class:`Checkpointer` for ``directory`` (``None``: no checkpoints; then
    ``resume`` is an error)."""
    if directory is None:
        if resume:
            raise ValueError("resume=True needs checkpoint_dir")
        return None
    return Checkpointer(directory, every=every, meta=meta)


def run_training(net: FactorizedEmbeddingNet, source: Any, *, n_steps: int, lr: float, l2: float,
                 sample_lr: float | None = None,
                 batch_samples: int, generator: torch.Generator, new_sampler: Callable[[], Any],
                 device: torch.device, compute_dtype: torch.dtype, gene_chunk: int | None,
                 progress: bool, checkpointer: Checkpointer | None = None, resume: bool = False,
                 divergence_retries: int = 0, before_step: Callable[[], None] | None = None,
                 resume_state: Any = None, kernel: Any = None, workers: int | None = None,
                 validation: Any = None, stop_rule: Any = None, missing: bool = False,
                 lr_factor: Callable[[int], float] | None = None) -> TrainingOutcome:
    """Train ``net`` in place on ``source`` for ``n_steps`` steps (see :func:`train`).

    ``new_sampler()`` makes a fresh batch sampler drawing from ``generator`` (called
    again when a divergence retry restarts from scratch).  With ``checkpointer``, the
    full state is written every ``checkpointer.every`` steps; with ``resume=True`` the
    run continues from the newest valid checkpoint, or from ``resume_state`` when the
    caller picked one (a data-parallel run picks the newest step every rank holds).
    A checkpoint written for other data or hyper-parameters (its ``meta`` differs) is
    refused.  On CPU with the same seed, a resumed run is bitwise the uninterrupted one.
    ``kernel``, ``workers``, ``validation``, ``stop_rule`` and ``missing`` go to :func:`train`
    (the loss kernel, the CPU worker threads, the held-out entries and the stop of
    ``n_steps="auto"``, NaN entries left out of the loss) and so does ``lr_factor`` (the
    learning-rate schedule: each step's multiplier of the rates the optimizer was made
    with, kept in its groups as ``initial_lr``, so that a resumed run finds them).  The stop
    rule needs no state of its own in a checkpoint: it is a function of the validation
    curve in the history.
    """
    init_state = {k: v.clone() for k, v in net.state_dict().items()}
    gen_start = generator.get_state()
    sampler = new_sampler()
    optimizer = _with_initial_lr(make_optimizer(net, lr, l2, device, sample_lr=sample_lr))
    history, start, resumed_from = History(), 0, None
    state = resume_state
    if state is None and checkpointer is not None and resume:
        state = checkpointer.latest()
    if state is not None:
        if checkpointer is not None and state.meta != checkpointer.meta:
            raise FEInputError(f"checkpoint in {checkpointer.dir} belongs to a different run "
                               "(data shape or hyper-parameters differ); use another directory")
        net.load_state_dict(state.net_state)
        optimizer.load_state_dict(state.optimizer_state)
        sampler.load_state_dict(state.sampler_state)
        history, start, resumed_from = History(**state.history), state.step, state.step
    while True:
        try:
            history, _, _ = train(net, source, n_steps=n_steps, lr=lr, l2=l2, batch_samples=batch_samples,
                                  generator=generator, device=device, compute_dtype=compute_dtype,
                                  gene_chunk=gene_chunk, progress=progress, sampler=sampler,
                                  optimizer=optimizer, history=history, start_step=start,
                                  checkpointer=checkpointer, before_step=before_step, kernel=kernel,
                                  workers=workers, validation=validation, stop_rule=stop_rule,
                                  missing=missing, lr_factor=lr_factor)
            break
        except FloatingPointError as exc:
            if divergence_retries <= 0:
                raise
            divergence_retries -= 1
            lr /= 10.0
            sample_lr = None if sample_lr is None else sample_lr / 10.0
            state = checkpointer.latest() if checkpointer is not None else None
            if state is not None:
                net.load_state_dict(state.net_state)
                optimizer = _with_initial_lr(make_optimizer(net, lr, l2, device, sample_lr=sample_lr))
                optimizer.load_state_dict(state.optimizer_state)
                sampler = new_sampler()
                sampler.load_state_dict(state.sampler_state)
                history, start = History(**state.history), state.step
            else:
                net.load_state_dict(init_state)
                generator.set_state(gen_start)
                sampler = new_sampler()
                optimizer = _with_initial_lr(make_optimizer(net, lr, l2, device, sample_lr=sample_lr))
                history, start = History(), 0
            groups = optimizer.param_groups
            for group, value in zip(groups, [lr] if len(groups) == 1 else [sample_lr, lr]):
                group["lr"] = group["initial_lr"] = value
            warnings.warn(f"{exc}; retrying from step {start} with lr={lr:g}", stacklevel=2)
    if hasattr(sampler, "close"):
        sampler.close()
    return TrainingOutcome(history=history, lr=lr, resumed_from=resumed_from,
                           checkpoint_dir=None if checkpointer is None else str(checkpointer.dir))


def _with_initial_lr(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Record each group's learning rate as its ``initial_lr`` (the base of a schedule)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def _trend(values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``values`` against the step, as a relative change per
    ``len(values) / 2`` steps, and its t statistic."""
    y = values[np.isfinite(values)]
    if y.size < 3 or not np.mean(np.abs(y)) > 0:
        return 0.0, 0.0
    x = np.arange(y.size, dtype=float)
    x -= x.mean()
    slope = float((x @ (y - y.mean())) / (x @ x))
    resid = y - y.mean() - slope * x
    se = float(np.sqrt(resid.var() / (x @ x)))
    t = slope / se if se > 0 else (np.inf if slope else 0.0)
    return slope * (values.size / 2) / float(np.mean(np.abs(y))), float(t)


def training_summary(history: dict) -> dict:
    """How a fit ended: ``n_steps``, ``final_loss`` and ``final_pearson_r`` (means of the
    last 1% of steps), ``seconds``, and whether the fit was still improving at its end.

    Batch losses are noisy, so the trend is a least-squares line through the last 20% of
    steps, of the loss and of the batch Pearson r (the steadier of the two):
    ``loss_change_per_10pct`` / ``r_change_per_10pct`` are their relative changes per
    10% of the steps along that line, and ``still_improving`` is true when the loss
    falls or r rises by more than 0.25% per 10% of the steps with a t statistic above 2
    (``None`` for fits of fewer than 200 steps: too short to tell)."""
    loss = np.asarray(history.get("loss", []), dtype=float)
    r = np.asarray(history.get("pearson_r", []), dtype=float)
    seconds = history.get("seconds") or [None]
    out: dict[str, Any] = {"n_steps": int(loss.size), "final_loss": None, "final_pearson_r": None,
                           "seconds": None if seconds[-1] is None else float(seconds[-1]),
                           "still_improving": None, "loss_change_per_10pct": None, "r_change_per_10pct": None}
    if loss.size == 0:
        return out
    k = max(1, loss.size // 100)
    out["final_loss"] = float(np.nanmean(loss[-k:]))
    out["final_pearson_r"] = float(np.nanmean(r[-k:])) if r.size else None
    if loss.size >= 200:
        w = loss.size // 5
        dl, tl = _trend(loss[-w:])
        dr, tr = _trend(r[-w:]) if r.size == loss.size else (0.0, 0.0)
        out["loss_change_per_10pct"], out["r_change_per_10pct"] = dl, dr
        out["still_improving"] = bool((dl < -0.0025 and tl < -2) or (dr > 0.0025 and tr > 2))
    return out
