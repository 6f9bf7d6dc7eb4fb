"""Data-parallel training, its single-process equivalent, and data-parallel transform."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config import FEConfig
from ..errors import FEInputError
from ..engine.network import FactorizedEmbeddingNet
from ..estimator.covariate_terms import fit_covariates, record_codes
from ..training.loop import (BatchSampler, TensorRows, as_float32_tensor, make_optimizer, resolve_device,
                     resolve_precision, train)
from .group import (_SEED_MULT, GradientAllReduce, _agree_seed, _comm_device, all_gather_objects,
                    broadcast_replicated, gather_rows, rank_generator, replica_spread, shard_bounds)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

@dataclass
class DistributedFit:
    """What :func:`fit_distributed` returns on every rank."""
    estimator: Any                 # the gathered FactorizedEmbeddings (every rank)
    local_net: FactorizedEmbeddingNet
    lo: int
    hi: int
    history: dict = field(default_factory=dict)   # mean of the ranks' per-step loss / r
    train_seconds: float = 0.0
    allreduce_seconds: float = 0.0
    allreduce_bytes: int = 0
    replica_spread: float = 0.0
    world_size: int = 1
    resumed_from: int | None = None


def build_shard_net(n_total: int, n_genes: int, cfg: FEConfig, seed: int, lo: int, hi: int,
                    covariates: tuple = (), codes: tuple | None = None) -> FactorizedEmbeddingNet:
    """The network of the shard ``lo:hi``, initialised exactly as the single-process
    ``FactorizedEmbeddings(random_state=seed).fit`` would initialise the full model
    (the full initial sample table, n_total x sample_dim floats, exists briefly).
    ``covariates``: the covariates' shapes (:attr:`CovariateSpec.shapes`) and ``codes``
    every sample's (level codes, standardised values); the shard keeps its rows of them."""
    gen = torch.Generator()
    gen.manual_seed(int(seed) * _SEED_MULT)
    torch.manual_seed(int(seed))
    full = FactorizedEmbeddingNet(n_total, n_genes, cfg.sample_dim, cfg.gene_dim, cfg.hidden, generator=gen,
                                  covariates=covariates)
    if codes is not None:
        record_codes(full, *codes)
    state = full.state_dict()
    for key in ("sample_embedding", "covariate_levels", "covariate_values"):
        if key in state:
            state[key] = state[key][lo:hi].clone()
    del full
    local = FactorizedEmbeddingNet(hi - lo, n_genes, cfg.sample_dim, cfg.gene_dim, cfg.hidden,
                                   generator=torch.Generator().manual_seed(0), covariates=covariates)
    local.load_state_dict(state)
    return local


def fit_distributed(source: Any, *, config: FEConfig | dict, n_total: int, lo: int,
                    samples: Any = None, genes: Any = None, checkpoint_dir: str | None = None,
                    checkpoint_every: int = 1000, resume: bool = False, missing: str = "error",
                    covariates: Any = None, covariate_dims: dict | None = None) -> DistributedFit:
    """Train on this rank's shard; call it on every rank of an initialised group.

    ``source`` holds this rank's rows ``lo:lo+len`` of the ``n_total`` samples: an
    array/tensor, or a backed row source (e.g. ``open_source(path).view(lo, hi)``,
    whose block sampler is used).  ``config`` are the usual hyper-parameters
    (``batch_samples`` is per rank; ``n_steps=None`` gives 40 passes at the global
    batch).  Returns, on every rank, the gathered model as a
    :class:`FactorizedEmbeddings` (identical on all ranks; write it from rank 0).

    Checkpoints: with ``checkpoint_dir``, rank ``r`` of ``w`` writes its own state (its
    shard's embeddings, the replicated parameters, Adam's moments, its sampler) every
    ``checkpoint_every`` steps into ``checkpoint_dir/rank-r-of-w``; ``resume=True``
    continues every rank from the newest step that all ranks hold a valid checkpoint
    of (a rank killed between two ranks' writes falls back to the one before).

    ``missing="ignore"``: NaN entries are missing values, left out of every step's loss
    (a backed source must let them through: ``allow_nan``).

    ``covariates``: the known factors of *all* ``n_total`` samples (as in
    :meth:`FactorizedEmbeddings.fit`: a DataFrame or a dict of arrays, in sample order), the
    same on every rank: their levels are agreed from the whole table, each rank keeps its
    rows' codes, and the level tables are replicated parameters like the decoder's."""
    from ..estimator.inputs import is_row_source
    from ..estimator.factorized_embeddings import FactorizedEmbeddings
    from ..training.runner import checkpoint_meta, fit_network, make_checkpointer

    cfg = config if isinstance(config, FEConfig) else FEConfig(**config)
    if missing not in ("error", "ignore"):
        raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
    rank, world = dist.get_rank(), dist.get_world_size()
    if not is_row_source(source):
        arr = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        source = as_float32_tensor(arr)
    elif missing == "ignore" and hasattr(source, "allow_nan"):
        source.allow_nan = True
    n_local, m = int(source.shape[0]), int(source.shape[1])
    hi = lo + n_local
    # every rank must agree on the shapes
    shapes = torch.tensor([n_total, m, lo, hi], dtype=torch.int64, device=_comm_device())
    allshapes = [torch.empty_like(shapes) for _ in range(world)]
    dist.all_gather(allshapes, shapes)
    allshapes = [s.cpu().tolist() for s in allshapes]
    if any(s[:2] != [n_total, m] for s in allshapes):
        raise FEInputError(f"ranks disagree on the data shape: {[tuple(s[:2]) for s in allshapes]}")
    spans = sorted((s[2], s[3]) for s in allshapes)
    if spans[0][0] != 0 or spans[-1][1] != n_total or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise FEInputError(f"the ranks' shards {spans} do not tile the {n_total} samples")
    smallest = min(b - a for a, b in spans)      # checked on every rank: all raise together
    if cfg.init == "pca":
        # not built yet for shards: the axes would have to be agreed between the ranks
        raise FEInputError("init='pca' is not available for data-parallel fits yet; "
                           "use init='random' (the default there)")
    plan = rank_plan(cfg, n_total, m, world)
    if smallest < plan.batch_samples:
        raise FEInputError(f"a rank holds only {smallest} samples, fewer than batch_samples="
                           f"{plan.batch_samples}; use fewer processes or a smaller batch")
    device = resolve_device(cfg.device) if dist.get_backend() != "nccl" else _comm_device()
    dtype = resolve_precision(cfg.precision, device)
    seed = _agree_seed(cfg.random_state)
    # every rank holds the whole covariate table: the levels are those of all samples
    spec, codes = fit_covariates(covariates, covariate_dims, None, n_total, None)
    cov_shapes = () if spec is None else spec.shapes
    net = build_shard_net(n_total, m, cfg, seed, lo, hi, cov_shapes, codes).to(device)
    broadcast_replicated(net, 0)
    gen = rank_generator(seed, rank)
    hook = GradientAllReduce(net)
    checkpointer = make_checkpointer(None if checkpoint_dir is None else f"{checkpoint_dir}/rank-{rank}-of-{world}",
                                     checkpoint_every, checkpoint_meta(cfg, n_total, m, world_size=world, rank=rank,
                                                                       lo=lo, hi=hi,
                                                                       **({} if spec is None else
                                                                          {"covariates": spec.to_dict()})),
                                     resume=resume)
    state = _common_checkpoint(checkpointer) if (checkpointer is not None and resume) else None

    def reduce(t: torch.Tensor) -> None:
        # the validation sums pooled over the ranks: every rank sees the same curve and
        # stops at the same step
        buf = t.to(_comm_device())
        dist.all_reduce(buf)
        t.copy_(buf.cpu())

    t0 = time.perf_counter()
    outcome, validation = fit_network(
        net, source, plan, l2=cfg.l2, gene_chunk=cfg.gene_chunk, n_total=n_total, generator=gen,
        gene_seed=gene_seed(seed), val_seed=validation_seed(seed), device=device, compute_dtype=dtype,
        progress=cfg.verbose and rank == 0, checkpointer=checkpointer, resume_state=state,
        offset=lo, world=world, reduce=reduce, before_step=hook, missing=missing == "ignore")
    n_steps = plan.n_steps
    history = outcome.history
    if plan.auto_stop and history.step:
        n_steps = history.step[-1]
    train_seconds = time.perf_counter() - t0
    spread = replica_spread(net)
    # history: mean over ranks of the per-step batch loss (= the global batch's MSE, the
    # ranks' batches being the same size) and of the per-rank Pearson r (approximate)
    dev = _comm_device()
    h = torch.tensor([history.loss, history.pearson_r], dtype=torch.float64, device=dev)
    dist.all_reduce(h)
    h /= world
    secs = torch.tensor(history.seconds, dtype=torch.float64, device=dev)
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    hist = {"step": list(history.step), "loss": h[0].cpu().tolist(), "pearson_r": h[1].cpu().tolist(),
            "seconds": secs.cpu().tolist()}
    if history.val_step:
        hist.update(val_step=list(history.val_step), val_loss=list(history.val_loss))
    scores = None if validation is None else validation.scores(net)    # collective: every rank
    table = gather_rows(net.sample_embedding.detach(), lo, n_total)
    full = FactorizedEmbeddingNet(n_total, m, cfg.sample_dim, cfg.gene_dim, cfg.hidden,
                                  generator=torch.Generator().manual_seed(0), covariates=cov_shapes)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    state["sample_embedding"] = table
    if codes is not None:
        state["covariate_levels"], state["covariate_values"] = (torch.from_numpy(c) for c in codes)
    full.load_state_dict(state)
    est = FactorizedEmbeddings.from_config(cfg)
    est._set_fitted(full, n_steps=n_steps, history=hist,
                    samples=None if samples is None else np.asarray(samples, dtype=object),
                    genes=None if genes is None else np.asarray(genes, dtype=object))
    est.lr_ = outcome.lr
    est.covariates_ = spec
    est.stop_reason_ = history.stop_reason
    est.validation_ = scores
    est.training_plan_ = plan
    est.distributed_ = {"world_size": world, "batch_samples_per_rank": plan.batch_samples,
                        "global_batch": plan.batch_samples * world, "backend": dist.get_backend(),
                        "replica_spread": spread}
    return DistributedFit(est, net, lo, hi, hist, train_seconds, hook.seconds, hook.bytes, spread, world,
                          outcome.resumed_from)


def validation_seed(seed: int) -> int:
    """The seed of the held-out validation entries: the same on every rank."""
    return (int(seed) * _SEED_MULT + 7_919) % (2**31 - 1)


def gene_seed(seed: int) -> int:
    """The seed of the gene walk: the same on every rank (all ranks train the same genes)."""
    return int(seed) * _SEED_MULT + 104_729


def _common_checkpoint(checkpointer):
    """The newest checkpoint step that every rank holds a valid copy of (loaded), or ``None``."""
    import warnings

    from ..errors import FEInputError as _Bad
    valid = {}
    for step in reversed(checkpointer._steps()):
        try:
            valid[step] = checkpointer.load(step)
        except _Bad as exc:
            warnings.warn(f"skipping damaged checkpoint: {exc}", stacklevel=2)
    common = set(valid)
    for steps in all_gather_objects(sorted(valid)):
        common &= set(steps)
    return valid[max(common)] if common else None


class UnionSampler:
    """Single-process stand-in for a distributed run: each batch is the union of the
    batches the ranks draw (rank r's local indices shifted by its shard start)."""

    def __init__(self, samplers: list, offsets: list[int]) -> None:
        self.samplers = samplers
        self.offsets = offsets
        self.b = sum(s.b for s in samplers)

    def next(self) -> torch.Tensor:
        return torch.cat([s.next() + o for s, o in zip(self.samplers, self.offsets)])

    def state_dict(self) -> dict:
        return {f"{r}/{k}": v for r, s in enumerate(self.samplers) for k, v in s.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        for r, s in enumerate(self.samplers):
            s.load_state_dict({k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{r}/")})


def union_sampler(n_total: int, world: int, batch_samples: int, seed: int) -> UnionSampler:
    """The batches (in global row numbers) that ``world`` in-memory ranks draw with
    ``random_state=seed``: train a single process with this sampler and
    ``batch_samples * world`` to reproduce a distributed run."""
    samplers, offsets = [], []
    for r in range(world):
        lo, hi = shard_bounds(n_total, world, r)
        samplers.append(BatchSampler(hi - lo, batch_samples, rank_generator(seed, r)))
        offsets.append(lo)
    return UnionSampler(samplers, offsets)


def rank_plan(cfg: FEConfig, n: int, m: int, world: int):
    """The :class:`~factembed.training.recipes.TrainingPlan` of each rank: the ranks start at random
    (``init="pca"`` is refused by :func:`fit_distributed`), and the plan is resolved for that
    start, so that its sample-table rate is the random start's."""
    from ..training.recipes import plan_training

    return plan_training(dataclasses.replace(cfg, init="random"), n, m, world)


def single_process_equivalent(X: Any, config: FEConfig | dict, world: int,
                              covariates: Any = None) -> FactorizedEmbeddingNet:
    """Train one process exactly as ``world`` ranks of :func:`fit_distributed` would
    (same initial values, batches = union of the ranks' batches, gradients of the
    global batch's mean loss); ``config.random_state`` must be set."""
    cfg = config if isinstance(config, FEConfig) else FEConfig(**config)
    if cfg.random_state is None:
        raise ValueError("single_process_equivalent needs random_state")
    X = as_float32_tensor(np.asarray(X))
    n, m = X.shape
    from ..training.runner import batch_plan

    spec, codes = fit_covariates(covariates, None, None, n, None)
    net = build_shard_net(n, m, cfg, cfg.random_state, 0, n, () if spec is None else spec.shapes, codes)
    plan = rank_plan(cfg, n, m, world)
    sampler = batch_plan(union_sampler(n, world, plan.batch_samples, cfg.random_state), m, plan,
                         gene_seed(cfg.random_state))
    device = resolve_device(cfg.device)
    train(net, TensorRows(X), n_steps=plan.n_steps, lr=plan.lr, l2=cfg.l2, batch_samples=sampler.b,
          generator=torch.Generator(), device=device, compute_dtype=resolve_precision(cfg.precision, device),
          gene_chunk=cfg.gene_chunk, progress=False, sampler=sampler,
          optimizer=make_optimizer(net, plan.lr, cfg.l2, device, sample_lr=plan.sample_lr),
          lr_factor=plan.lr_factor())
    return net


# --------------------------------------------------------------------------------------
# transform
# --------------------------------------------------------------------------------------

def transform_distributed(fe: Any, X: Any, *, n_total: int | None = None, lo: int | None = None,
                          missing: str = "error") -> np.ndarray:
    """Embed new samples with the rows split over the ranks; returns all rows on every rank.

    Pass either the full ``X`` (each rank takes its slice) or this rank's rows with
    ``lo`` and ``n_total``.  Each sample's embedding depends only on its own profile
    and on the gene draws, which are the same on every rank for a fixed
    ``random_state``, so the result equals a single-process ``fe.transform(X)``
    up to floating-point order.  ``missing``: as in ``fe.transform``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if lo is None:
        X = np.asarray(X)
        n_total = X.shape[0]
        lo, hi = shard_bounds(n_total, world, rank)
        X = X[lo:hi]
    Z = fe.transform(X, missing=missing) if len(X) else np.zeros((0, fe.net_.sample_dim), np.float32)
    return gather_rows(torch.from_numpy(np.asarray(Z, dtype=np.float32)), lo, n_total).numpy()


