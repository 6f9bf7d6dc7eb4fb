"""The training loop: whole-profile batches, Adam, progress, history.

Each step draws ``batch_samples`` rows of the data matrix (a permutation of the samples
is walked through, reshuffled every pass) and evaluates the MSE and all its gradients
with the fused blocked kernel of :mod:`factembed.engine.kernel` (or another kernel passed to
:func:`train`), which also computes the gene term of the first layer, block by block
(every gene once per step).  The L2 term ``l2 * sum(p^2)`` over all parameters is
applied exactly through Adam's (non-decoupled) ``weight_decay = 2 * l2``, whose gradient
is the same ``2 * l2 * p``; it is therefore not recomputed every step.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch

from ..engine.cpu_pool import cpu_workers, flush_denormals
from ..engine.kernel import FusedProfileLoss
from ..engine.network import FactorizedEmbeddingNet

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpointer


@dataclass
class History:
    """Per-step training record: MSE of the batch, Pearson r of the batch
    reconstruction (all pairs of the batch pooled) and seconds since the start."""
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    pearson_r: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    #: the validation curve (held-out entries' MSE every ``validation.every`` steps)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    #: why training stopped (``n_steps="auto"``), else None
    stop_reason: str | None = None
    #: seconds spent measuring the validation MSE (included in ``seconds``)
    val_seconds: float = 0.0

    def as_dict(self) -> dict[str, list]:
        out = {"step": self.step, "loss": self.loss, "pearson_r": self.pearson_r,
               "seconds": self.seconds}
        if self.val_step:
            out.update(val_step=self.val_step, val_loss=self.val_loss)
        return out

    def __len__(self) -> int:
        return len(self.step)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    return dev


def bf16_native(device: torch.device) -> bool:
    """True where bf16 matrix products run on native hardware (CUDA with bf16, or a
    CPU with AVX-512 BF16 / AMX).  Elsewhere bf16 is emulated and far slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - very old torch
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_native(device) else torch.float32


class RowSource(Protocol):
    """Anything that hands out rows of a (samples x genes) matrix: an in-memory tensor
    (see :class:`TensorRows`) or a backed, on-disk source."""
    shape: tuple[int, int]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows ``index`` (a 1-D long tensor), shape (len(index), n_genes)."""
        ...


class TensorRows:
    """A float32 matrix held in memory (CPU or device) as a :class:`RowSource`."""

    def __init__(self, X: torch.Tensor) -> None:
        self.X = X
        self.shape = tuple(X.shape)
        self.device = X.device

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.X.index_select(0, index.to(self.X.device))


class BatchSampler:
    """Batches of ``batch_samples`` distinct sample indices; every pass over the
    samples is a fresh permutation (the last incomplete batch of a pass is dropped
    so every batch has the same size).  ``state_dict``/``load_state_dict`` capture
    the position and the random state, so a resumed run draws the same batches."""

    def __init__(self, n_samples: int, batch_samples: int, generator: torch.Generator) -> None:
        self.n = n_samples
        self.b = min(batch_samples, n_samples)
        self.gen = generator
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = 0
        self.passes = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.b > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
            self.passes += 1
        idx = self.perm[self.pos:self.pos + self.b]
        self.pos += self.b
        return idx

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "passes": self.passes,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
        self.passes = int(state["passes"])
        self.gen.set_state(state["generator"])


class GeneWalk:
    """The genes of each step when a step trains on ``batch_genes`` genes: consecutive
    pieces of a random permutation of the genes, a fresh permutation every cycle, so
    every gene is trained once per cycle.  Every step has exactly ``batch_genes`` genes:
    the last piece of a cycle is completed with genes from the start of the same
    permutation (distinct from the piece's own).  ``state_dict``/``load_state_dict``
    capture the permutation, the position and the random state, for bitwise resume."""

    def __init__(self, n_genes: int, batch_genes: int, generator: torch.Generator) -> None:
        self.m = int(n_genes)
        self.k = min(int(batch_genes), self.m)
        self.gen = generator
        self.perm = torch.randperm(self.m, generator=self.gen)
        self.pos = 0
        self.cycles = 0

    def next(self) -> torch.Tensor:
        if self.pos >= self.m:
            self.perm = torch.randperm(self.m, generator=self.gen)
            self.pos = 0
            self.cycles += 1
        idx = self.perm[self.pos:self.pos + self.k]
        if len(idx) < self.k:
            idx = torch.cat([idx, self.perm[:self.k - len(idx)]])
        self.pos += self.k
        return idx

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "cycles": self.cycles,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm = torch.as_tensor(state["perm"]).clone()
        self.pos = int(state["pos"])
        self.cycles = int(state["cycles"])
        self.gen.set_state(state["generator"])


class BatchPlan:
    """What each step trains on: rows from ``rows`` (a batch sampler) and, with
    ``genes`` (a :class:`GeneWalk`), only those genes of them; ``genes=None``: all genes.
    Its state (for checkpoints) is the row sampler's, plus the walk's under ``genes/``."""

    def __init__(self, rows, genes: GeneWalk | None = None) -> None:
        self.rows = rows
        self.genes = genes

    @property
    def b(self) -> int:
        return self.rows.b

    def next(self) -> torch.Tensor:
        return self.rows.next()

    def next_genes(self) -> torch.Tensor | None:
        return None if self.genes is None else self.genes.next()

    def state_dict(self) -> dict:
        state = dict(self.rows.state_dict())
        if self.genes is not None:
            state.update({f"genes/{k}": v for k, v in self.genes.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict({k: v for k, v in state.items() if not k.startswith("genes/")})
        if self.genes is not None:
            self.genes.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("genes/")})

    def close(self) -> None:
        if hasattr(self.rows, "close"):
            self.rows.close()


def pearson_from_stats(x_sum: float, x_sq: float, y_sum: float, y_sq: float, xy: float, n: int) -> float:
    cov = xy - x_sum * y_sum / n
    vx = x_sq - x_sum * x_sum / n
    vy = y_sq - y_sum * y_sum / n
    if vx <= 0 or vy <= 0:
        return float("nan")
    return float(cov / math.sqrt(vx * vy))


def make_optimizer(params, lr: float, l2: float, device: torch.device,
                   sample_lr: float | None = None) -> torch.optim.Adam:
    """Adam over ``params`` (a module's parameters, or ``net`` itself) with the L2 term
    as coupled weight decay ``2 * l2``.  With ``sample_lr`` (and ``params`` a
    :class:`FactorizedEmbeddingNet`), the sample table gets its own learning rate: it
    only moves when its sample is in the batch; the covariates' level tables share it."""
    kwargs = dict(lr=lr, weight_decay=2.0 * l2)
    if sample_lr is not None and isinstance(params, FactorizedEmbeddingNet):
        net = params
        # the covariates' level vectors are per-sample factors too: they take the sample
        # table's rate (with the decoder's rate the sample embedding learns the batch first)
        per_sample, rest = [], []
        for name, p in net.named_parameters():
            (per_sample if name == "sample_embedding" or name.startswith("covariate_embeddings.") else rest).append(p)
        params = [{"params": per_sample, "lr": sample_lr}, {"params": rest}]
    elif isinstance(params, FactorizedEmbeddingNet):
        params = params.parameters()
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused Adam unsupported on this device/torch
        return torch.optim.Adam(params, **kwargs)


def set_scheduled_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's learning rate at ``factor`` times its ``initial_lr`` (its rate when
    the optimizer was made, which a checkpoint keeps); untouched when already there."""
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        value = base * factor
        if group["lr"] != value:
            group["lr"] = value


class _Progress:
    """A tqdm bar refreshed at most a few times a second (no per-step overhead).
    ``total=None`` (a fit that stops when its validation curve is flat): no total and no
    ETA, only the steps done; :meth:`held_out` adds the held-out MSE and its trend."""

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True,
                            mininterval=0.5, smoothing=0.1)
        self.last = 0.0
        self.done = 0
        self.val: dict[str, str] = {}
        self.shown: dict[str, str] = {}

    def held_out(self, steps: list[int], values: list[float], window: int) -> None:
        """Show the last held-out MSE and its change over the last ``window`` steps."""
        if self.bar is None or not values:
            return
        self.val = {"held-out": f"{values[-1]:.4g}"}
        past = [v for s, v in zip(steps, values) if s <= steps[-1] - window]
        if past and past[-1] > 0:
            self.val["trend"] = f"{values[-1] / past[-1] - 1:+.1%}/{window:,} steps"
        self.bar.set_postfix(refresh=False, **{**self.shown, **self.val})

    def update(self, step: int, loss: float, r: float) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.last >= 0.5:
            shown = {"loss": f"{loss:.4g}"}
            if r is not None and math.isfinite(r):     # inference has no r: show none, not nan
                shown["r"] = f"{r:.3f}"
            self.shown = shown
            self.bar.set_postfix(refresh=False, **shown, **self.val)
            self.last = now
        self.bar.update(step - self.done)
        self.done = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(net: FactorizedEmbeddingNet, X: torch.Tensor | RowSource, *, n_steps: int, lr: float, l2: float,
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
          missing: bool = False, chunk_steps: int | None = None, graphs: bool | None = None,
          feed: str | None = None, lr_factor: Callable[[int], float] | None = None
          ) -> tuple[History, torch.optim.Optimizer, BatchSampler]:
    """Train ``net`` in place on the (samples x genes) float32 matrix ``X`` (a tensor or
    any :class:`RowSource`).

    ``X`` stays where it is (CPU memory, a memory map, a file) unless the run is on CUDA
    and an in-memory ``X`` fits the device (:func:`factembed.training.step.resident_on`: it is
    copied there for the run); otherwise only each step's tile (its rows x its genes) is
    copied to ``device``.  ``sampler`` may be any object with ``next() -> index``
    and a batch size ``b`` (e.g. a block-shuffling sampler for on-disk data).
    ``callback(step, loss, r)`` is called for every step, in order, after the step (in
    bursts: once per chunk, below).
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
    ``lr_factor(step)``: before each (1-based) step every learning rate is set to that
    multiple of its group's ``initial_lr`` (a schedule such as
    :func:`~factembed.training.schedule.anneal_factor`); ``None``: the rates are left as they are
    (or, with a stop rule that has an ``lr_factor`` of its curve, such as
    :class:`~factembed.training.heldout.AnnealStop`, set by it from one chunk to the next).

    The steps run in chunks (:mod:`factembed.training.step`) of ``chunk_steps`` (default 16 on
    the CPU, 256 on CUDA) that end at every validation and checkpoint step: within a
    chunk the host never waits for the device; the losses are read once per chunk, where
    a divergence is reported (at the step it happened) and the history, callback and
    progress bar are fed.  ``graphs`` (default: on CUDA, without ``before_step``) replays
    each step from a CUDA graph (:class:`~factembed.training.step.GraphedStep`, with an eager
    fallback).  ``feed`` forces how batches reach the device (``"lazy"``, ``"resident"``,
    ``"tiles"``: :func:`~factembed.training.step.make_feed`).  On the CPU the result is bitwise
    that of one step at a time, whatever ``chunk_steps`` and ``feed``.
    Returns the history, the optimizer and the batch sampler (the last two so that a
    caller can checkpoint and resume).
    """
    from .step import CHUNK_STEPS, chunk_schedule, make_feed, make_step

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
    bar = _Progress(None if stop_rule is not None else n_steps, "factembed fit", progress)
    bar.done = start_step
    t0 = time.perf_counter() - (history.seconds[-1] if history.seconds else 0.0)
    feeder = make_feed(source, sampler, device, validation, feed)
    step_fn = make_step(net, fused, optimizer, device=device, masked=masked, before_step=before_step,
                        graphs=graphs)
    size = int(chunk_steps or CHUNK_STEPS.get(device.type, CHUNK_STEPS["cuda"]))
    if hasattr(feeder, "chunk_limit"):
        size = min(size, feeder.chunk_limit(sampler.b))
    records = torch.empty((size, 7), dtype=torch.float32, device=device)

    def drain(first: int, last: int, launched: list[float]) -> None:
        # One host transfer per chunk: the only synchronisation with the device.
        values = records[:last - first + 1].tolist()
        launched[-1] = time.perf_counter() - t0           # the chunk is done: its wall time
        for j, (loss_v, x_sum, x_sq, y_sum, y_sq, xy, count) in enumerate(values):
            step = first + j
            if not math.isfinite(loss_v):
                raise FloatingPointError(
                    f"training diverged at step {step}: loss is {loss_v}; "
                    f"try a smaller lr (now {lr}) or a larger l2 (now {l2})")
            r = pearson_from_stats(x_sum, x_sq, y_sum, y_sq, xy, count)
            history.step.append(step)
            history.loss.append(loss_v)
            history.pearson_r.append(r)
            history.seconds.append(launched[j])
            if callback is not None:
                callback(step, loss_v, r)
        bar.update(history.step[-1], history.loss[-1], history.pearson_r[-1])

    def validate(step: int) -> bool:
        t_val = time.perf_counter()
        value = validation.mse(net)
        history.val_seconds += time.perf_counter() - t_val
        if stop_rule is not None and stop_rule.keep == "best" and (not history.val_loss
                                                                  or value < min(history.val_loss)):
            validation.keep_best(net, step)      # a copy of the parameters: only when it is kept
        history.val_step.append(step)
        history.val_loss.append(value)
        bar.held_out(history.val_step, history.val_loss,
                     stop_rule.patience if stop_rule is not None else 10 * validation.every)
        act = None if stop_rule is None else stop_rule.action(history.val_step, history.val_loss)
        if act == "decay":                # a plateau before the stop: smaller steps, patience again
            for group in optimizer.param_groups:
                group["lr"] *= stop_rule.factor
        return act == "stop"

    looks = [validation.every if validation is not None else 0,
             checkpointer.every if checkpointer is not None else 0]
    stopped = False
    ftz = contextlib.ExitStack()
    try:
        if on_cpu:
            ftz.enter_context(flush_denormals())   # denormals late in training: 3x slower steps otherwise
        if on_cpu:
            torch.set_num_threads(1)
        chunks = list(chunk_schedule(start_step, n_steps, size, looks))
        ahead = None
        for c, (first, last) in enumerate(chunks):
            batch = ahead or feeder.prepare(last - first + 1)
            ahead = None
            launched = []
            factor = lr_factor if lr_factor is not None or not hasattr(stop_rule, "lr_factor") else \
                stop_rule.lr_factor(history.val_step, history.val_loss)     # an auto stop's anneal
            for j in range(last - first + 1):
                if factor is not None:
                    set_scheduled_lr(optimizer, factor(first + j))
                records[j].copy_(step_fn(batch(j)))
                launched.append(time.perf_counter() - t0)
            at_look = any(e and last % e == 0 for e in looks)
            if feeder.prefetches and not at_look and c + 1 < len(chunks):
                # the next chunk's batches are gathered while the device runs this one (no
                # validation or checkpoint here reads the sampler's state in between)
                ahead = feeder.prepare(chunks[c + 1][1] - chunks[c + 1][0] + 1)
            drain(first, last, launched)
            if validation is not None and last % validation.every == 0:
                stopped = validate(last)
            if checkpointer is not None and last % checkpointer.every == 0:
                checkpointer.save(last, net, optimizer, sampler, history)
            if stopped:
                break
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


def as_float32_tensor(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 C-contiguous CPU tensor sharing memory with ``X`` when possible."""
    if isinstance(X, torch.Tensor):
        return X.detach().to(torch.float32).contiguous()
    arr = np.ascontiguousarray(X, dtype=np.float32)
    return torch.from_numpy(arr)
