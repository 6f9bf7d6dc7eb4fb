"""A frozen copy of the training loop as it was before the chunked loop of
``factembed.training.step`` (factembed commit 8fca09c, ``train.py``): one step at a time, the
losses read every 16 steps.  ``tests/training/test_step.py`` checks that the chunked loop is
bitwise this one on the CPU.  Do not edit it to follow the library: it is the reference.
"""
# ruff: noqa
from __future__ import annotations

import contextlib
import math
import numbers
import time
from typing import Callable

import torch

from factembed.engine.cpu_pool import cpu_workers, flush_denormals
from factembed.engine.kernel import FusedProfileLoss
from factembed.training.checkpoint import Checkpointer
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.loop import (BatchSampler, History, RowSource, TensorRows, _Progress, make_optimizer,
                             pearson_from_stats)


def reference_train(net: FactorizedEmbeddingNet, X: torch.Tensor | RowSource, *, n_steps: int, lr: float, l2: float,
          batch_samples: int, generator: torch.Generator, device: torch.device,
          compute_dtype: torch.dtype = torch.float32, gene_chunk: int | None = None,
          progress: bool = True, callback: Callable[[int, float, float], None] | None = None,
          history: History | None = None, start_step: int = 0,
          optimizer: torch.optim.Optimizer | None = None,
          sampler: BatchSampler | None = None,
          before_step: Callable[[], None] | None = None,
          checkpointer: "Checkpointer | None" = None,
          kernel: Callable[..., FusedProfileLoss] | None = None,
          workers: int | None = None, validation=None, stop_rule=None,
          missing: bool = False) -> tuple[History, torch.optim.Optimizer, BatchSampler]:
    """Train ``net`` in place on the (samples x genes) float32 matrix ``X`` (a tensor or
    any :class:`RowSource`).

    ``X`` stays where it is (CPU memory, a memory map, a file); only the rows of a batch
    are copied to ``device``.  ``sampler`` may be any object with ``next() -> index``
    and a batch size ``b`` (e.g. a block-shuffling sampler for on-disk data).
    ``callback(step, loss, r)`` is called for every step, in order, after the step.
    ``before_step()`` runs after the gradients are computed and before Adam's update
    (e.g. an all-reduce of the replicated parameters' gradients across processes).
    ``checkpointer`` writes a checkpoint every ``checkpointer.every`` steps, only after
    every step up to it was checked finite.
    ``kernel`` makes the loss of a step: a class or factory called as
    ``kernel(gene_chunk=, compute_dtype=, workers=)`` (the signature of
    :class:`~factembed.engine.kernel.FusedProfileLoss`, the default) whose result is called like
    a ``FusedProfileLoss`` and exposes its ``last_stats``.
    ``workers``: the kernel's CPU worker threads (default: the automatic choice of
    :func:`~factembed.engine.cpu_pool.cpu_workers`, i.e. ``FACTEMBED_CPU_WORKERS`` if set, else
    the calling thread's torch threads up to ``MAX_AUTO_WORKERS``, read before this
    thread drops to one intra-op thread); ignored on other devices.
    ``validation`` (a :class:`~factembed.training.heldout.ValidationSet`): its entries are left
    out of every step's loss (their targets set to NaN), and its MSE is recorded in
    ``history.val_step`` / ``history.val_loss`` every ``validation.every`` steps; with
    ``stop_rule`` (a :class:`~factembed.training.heldout.StopRule`) training ends early when the
    rule says so (``history.stop_reason`` says why).  ``missing=True``: NaN entries of
    ``X`` are missing values, left out of the loss the same way.
    Returns the history, the optimizer and the batch sampler (the last two so that a
    caller can checkpoint and resume).
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral)
                                or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    source = TensorRows(X) if isinstance(X, torch.Tensor) else X
    history = history if history is not None else History()
    optimizer = optimizer or make_optimizer(net.parameters(), lr, l2, device)
    sampler = sampler or BatchSampler(source.shape[0], batch_samples, generator)
    # On CPU the fused kernel's gene blocks go to worker threads (one intra-op thread
    # each) while this thread runs at one intra-op thread, instead of OpenMP-parallel
    # operations; Adam stays on this one thread too, rather than waking OpenMP threads
    # that then spin on the cores the workers need.  Both choices were measured with
    # bench/archive/bench_ab.py (figures in bench/NOTES.md).
    caller_threads = torch.get_num_threads()
    on_cpu = device.type == "cpu"
    workers = cpu_workers(1 << 30, workers) if on_cpu else None   # fixed before this thread drops to 1
    masked = validation is not None or missing
    extra = {"nan_targets": True} if masked else {}   # a custom kernel need not know the option
    fused = (kernel or FusedProfileLoss)(gene_chunk=gene_chunk, compute_dtype=compute_dtype, workers=workers, **extra)
    bar = _Progress(n_steps, "factembed fit", progress)
    bar.done = start_step
    t0 = time.perf_counter() - (history.seconds[-1] if history.seconds else 0.0)
    walk = getattr(sampler, "genes", None)
    pairs = sampler.b * (source.shape[1] if walk is None else walk.k)
    pending: list[tuple[int, float, torch.Tensor]] = []

    def flush() -> None:
        # One host transfer for many steps: no device synchronisation per step.
        if not pending:
            return
        rows = torch.stack([rec for _, _, rec in pending]).tolist()
        for (step, seconds, _), (loss_v, x_sum, x_sq, y_sum, y_sq, xy) in zip(pending, rows):
            if not math.isfinite(loss_v):
                raise FloatingPointError(
                    f"training diverged at step {step}: loss is {loss_v}; "
                    f"try a smaller lr (now {lr}) or a larger l2 (now {l2})")
            r = pearson_from_stats(x_sum, x_sq, y_sum, y_sq, xy, pairs)
            history.step.append(step)
            history.loss.append(loss_v)
            history.pearson_r.append(r)
            history.seconds.append(seconds)
            if callback is not None:
                callback(step, loss_v, r)
        bar.update(history.step[-1], history.loss[-1], history.pearson_r[-1])
        pending.clear()

    flush_every = 16 if device.type == "cpu" else 256
    stopped = False

    def validate(step: int) -> bool:
        t_val = time.perf_counter()
        value = validation.mse(net)
        history.val_seconds += time.perf_counter() - t_val
        if stop_rule is not None and stop_rule.keep == "best" and (not history.val_loss
                                                                  or value < min(history.val_loss)):
            validation.keep_best(net, step)      # a copy of the parameters: only when it is kept
        history.val_step.append(step)
        history.val_loss.append(value)
        act = None if stop_rule is None else stop_rule.action(history.val_step, history.val_loss)
        if act == "decay":                # a plateau before the stop: smaller steps, patience again
            for group in optimizer.param_groups:
                group["lr"] *= stop_rule.factor
        return act == "stop"

    ftz = contextlib.ExitStack()
    try:
        if on_cpu:
            ftz.enter_context(flush_denormals())   # denormals late in training: 3x slower steps otherwise
        if on_cpu:
            torch.set_num_threads(1)
        for step in range(start_step + 1, n_steps + 1):
            idx = sampler.next()
            xb = source.rows(idx).to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            S = net.sample_term(net.sample_embedding[idx.to(device)])
            genes = None
            if walk is None:
                layer = net.gene_layer()
            else:   # this step's genes only: their columns and embedding rows (gradients flow to those rows)
                genes = sampler.next_genes().to(device)
                xb = xb.index_select(1, genes)
                layer = net.gene_layer(genes)
            weights = None
            if masked:
                if validation is not None:    # held-out entries: a NaN target adds nothing to loss or gradient
                    xb = xb.masked_fill(validation.mask(idx, None if genes is None else genes.cpu()).to(device),
                                        float("nan"))
                observed = (~torch.isnan(xb)).sum().clamp_min(1)
                weights = torch.full((xb.shape[0],), 1.0, device=device) * (xb.shape[1] / observed)
                loss = fused(S, layer, xb, net.decoder_weights(), row_weights=weights)
            else:
                loss = fused(S, layer, xb, net.decoder_weights())
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            xs = xb.nan_to_num(0.0) if masked else xb   # r pools the observed targets (missing: the prediction)
            record = torch.cat([loss.detach().reshape(1), xs.sum().reshape(1),
                                (xs * xs).sum().reshape(1), fused.last_stats])
            pending.append((step, time.perf_counter() - t0, record))
            if validation is not None and step % validation.every == 0:
                flush()
                stopped = validate(step)
            if checkpointer is not None and step % checkpointer.every == 0:
                flush()
                checkpointer.save(step, net, optimizer, sampler, history)
            elif len(pending) >= flush_every:
                flush()
            if stopped:
                break
        flush()
        if validation is not None and history.step and (not history.val_step
                                                        or history.val_step[-1] != history.step[-1]):
            validate(history.step[-1])
        if stop_rule is not None:
            history.stop_reason = stop_rule.reason(history.val_step, history.val_loss, stopped)
            if stop_rule.keep == "best" and validation.restore_best(net, history):
                history.stop_reason += f"; kept the best state (step {validation.best_step:,})"
    finally:
        ftz.close()
        if on_cpu:
            torch.set_num_threads(caller_threads)
        bar.close()
    return history, optimizer, sampler


