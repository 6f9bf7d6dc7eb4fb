"""Data-parallel training over several processes or machines with ``torch.distributed``.

Launch with ``torchrun`` (gloo on CPU, NCCL on CUDA); there is no networking code here::

    torchrun --nproc-per-node 2 -m factembed.distributed fit DATA -o MODEL [fit options]
    torchrun --nnodes 4 --node-rank K --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m factembed.distributed fit DATA -o MODEL ...
    factembed fit DATA -o MODEL --distributed 2       # one machine: runs torchrun for you

Partition.  The samples are cut into ``world_size`` contiguous shards; rank ``r`` owns
the rows ``shard_bounds(n, world, r)`` and *their* embeddings, which are never
communicated during training.  The decoder and the gene embeddings are replicated:
every rank starts from the same values (the single-process initialisation for the same
seed, then broadcast from rank 0) and, after each backward pass, their gradients are
averaged across ranks with one all-reduce of a single flattened buffer
(:class:`GradientAllReduce`, run through ``train(..., before_step=...)``).  Each rank's
sample-embedding gradient is divided by ``world_size`` as well, without communication.

Learning dynamics.  Every rank draws ``batch_samples`` profiles of its own shard per
step, so a step sees ``world_size x batch_samples`` profiles.  With the averaging above,
every gradient equals the gradient of the mean squared error over that global batch,
and Adam acts elementwise, so a distributed run is the single-process run whose batch
at each step is the union of the ranks' batches (stratified: exactly ``batch_samples``
from each shard), up to the order of floating-point sums.  :func:`union_sampler` builds
that single-process sampler (tests compare the two).  Compared with a single-process
run at ``batch_samples``, the global batch is ``world_size`` times larger: a pass over
the data takes ``world_size`` times fewer steps (the automatic ``n_steps`` rule is
applied to the global batch), and gradients are less noisy.  To reproduce single-process
dynamics at batch B, use ``batch_samples = B / world_size`` per rank.

Saving.  The shards' embeddings are all-gathered with their global row numbers
(:func:`gather_rows`, which checks that every sample appears exactly once) into one
:class:`FactorizedEmbeddings` whose network holds the full sample table; rank 0 writes
it with the usual ``save`` (same format as a single-process model).

Transform of new samples is embarrassingly parallel: each rank embeds a contiguous
slice of the rows and the results are gathered (:func:`transform_distributed`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .config import FEConfig, auto_n_steps
from .errors import FEInputError
from .model import FactorizedEmbeddingNet
from .train import BatchSampler, TensorRows, as_float32_tensor, resolve_device, resolve_precision, train

__all__ = [
    "shard_bounds",
    "init_process_group",
    "GradientAllReduce",
    "fit_distributed",
    "gather_rows",
    "transform_distributed",
    "union_sampler",
    "replica_spread",
    "main",
]

_SEED_MULT = 1_000_003          # as FactorizedEmbeddings._generator
_RANK_SALT = 7_919


# --------------------------------------------------------------------------------------
# process group and shards
# --------------------------------------------------------------------------------------

def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` owned by ``rank``: contiguous, disjoint, sizes differ by <= 1."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    return (n * rank) // world, (n * (rank + 1)) // world


def init_process_group(backend: str | None = None, device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``) unless one is
    already initialised.  NCCL and ``cuda:LOCAL_RANK`` when CUDA is asked for (or
    ``device="auto"`` finds it), gloo and the CPU otherwise.  Returns (rank, world, device)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if want_cuda else "gloo"))
    if dist.get_backend() == "nccl":
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu") if not want_cuda else resolve_device(device)
    return dist.get_rank(), dist.get_world_size(), dev


def _comm_device() -> torch.device:
    """Where collective buffers must live (CUDA for NCCL, CPU for gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree_seed(random_state: int | None) -> int:
    """The seed every rank uses: ``random_state``, or one drawn by rank 0."""
    if random_state is not None:
        return int(random_state)
    t = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64).to(_comm_device())
    dist.broadcast(t, 0)
    return int(t.item())


def rank_generator(seed: int, rank: int) -> torch.Generator:
    """The batch-drawing generator of ``rank`` (distinct per rank, fixed by the seed)."""
    g = torch.Generator()
    g.manual_seed(int(seed) * _SEED_MULT + _RANK_SALT * (rank + 1))
    return g


# --------------------------------------------------------------------------------------
# replicated parameters
# --------------------------------------------------------------------------------------

def replicated_parameters(net: FactorizedEmbeddingNet) -> list[torch.nn.Parameter]:
    """Every parameter except the (sharded) sample embedding, in a fixed order."""
    return [p for name, p in net.named_parameters() if name != "sample_embedding"]


def _flat_replicated(net: FactorizedEmbeddingNet) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in replicated_parameters(net)])


@torch.no_grad()
def broadcast_replicated(net: FactorizedEmbeddingNet, src: int = 0) -> None:
    """Copy rank ``src``'s replicated parameters to every rank (one broadcast)."""
    dev = _comm_device()
    flat = _flat_replicated(net).to(dev)
    dist.broadcast(flat, src)
    o = 0
    for p in replicated_parameters(net):
        k = p.numel()
        p.copy_(flat[o:o + k].view_as(p))
        o += k


@torch.no_grad()
def replica_spread(net: FactorizedEmbeddingNet) -> float:
    """Largest difference, over all replicated parameters, between any two ranks
    (0.0 when the replicas are identical)."""
    flat = _flat_replicated(net).to(_comm_device(), torch.float32)
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max().item()) if flat.numel() else 0.0


class GradientAllReduce:
    """``before_step`` hook: average the replicated parameters' gradients over the
    ranks with one all-reduce of one flattened buffer, and divide the local sample
    embedding's gradient by the world size (so every gradient is that of the global
    batch's mean loss).  Records the time spent (``seconds``) and the bytes reduced."""

    def __init__(self, net: FactorizedEmbeddingNet, group=None) -> None:
        self.params = replicated_parameters(net)
        self.sample_embedding = net.sample_embedding
        self.group = group
        self.world = dist.get_world_size(group)
        self.numel = sum(p.numel() for p in self.params)
        self.flat = torch.zeros(self.numel, dtype=torch.float32, device=_comm_device())
        self.bytes = 4 * self.numel
        self.seconds = 0.0
        self.calls = 0

    @torch.no_grad()
    def __call__(self) -> None:
        t0 = time.perf_counter()
        flat, o = self.flat, 0
        for p in self.params:
            k = p.numel()
            if p.grad is None:
                flat[o:o + k].zero_()
            else:
                flat[o:o + k].copy_(p.grad.reshape(-1))
            o += k
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat.div_(self.world)
        o = 0
        for p in self.params:
            k = p.numel()
            if p.grad is None:
                p.grad = flat[o:o + k].view_as(p).to(p.device, copy=True)
            else:
                p.grad.copy_(flat[o:o + k].view_as(p))
            o += k
        if self.sample_embedding.grad is not None:
            self.sample_embedding.grad.div_(self.world)
        self.seconds += time.perf_counter() - t0
        self.calls += 1


# --------------------------------------------------------------------------------------
# gathering rows
# --------------------------------------------------------------------------------------

@torch.no_grad()
def gather_rows(local: torch.Tensor, lo: int, n_total: int) -> torch.Tensor:
    """All ranks' row blocks (``local`` holds rows ``lo:lo+len(local)``) assembled, on
    every rank, into one ``(n_total, ...)`` CPU tensor.  Rows travel with their global
    row numbers; raises ``RuntimeError`` unless every row arrives exactly once."""
    world = dist.get_world_size()
    dev = _comm_device()
    local = local.detach().to(dev, torch.float32).contiguous()
    k = local.shape[0]
    counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([k], dtype=torch.int64, device=dev))
    counts = [int(c.item()) for c in counts]
    cap = max(counts)
    tail = tuple(local.shape[1:])
    pad = torch.zeros((cap, *tail), dtype=torch.float32, device=dev)
    pad[:k] = local
    idx = torch.full((cap,), -1, dtype=torch.int64, device=dev)
    idx[:k] = torch.arange(lo, lo + k, dtype=torch.int64, device=dev)
    blocks = [torch.empty_like(pad) for _ in range(world)]
    indices = [torch.empty_like(idx) for _ in range(world)]
    dist.all_gather(blocks, pad)
    dist.all_gather(indices, idx)
    out = torch.zeros((n_total, *tail), dtype=torch.float32)
    seen = torch.zeros(n_total, dtype=torch.int64)
    for c, blk, ii in zip(counts, blocks, indices):
        ii = ii[:c].cpu()
        if c and (int(ii.min()) < 0 or int(ii.max()) >= n_total):
            raise RuntimeError(f"gathered row numbers out of range 0..{n_total - 1}")
        out[ii] = blk[:c].cpu()
        seen.index_add_(0, ii, torch.ones_like(ii))
    if not bool((seen == 1).all()):
        bad = int(torch.nonzero(seen != 1)[0])
        raise RuntimeError(f"row {bad} was gathered {int(seen[bad])} times (shards overlap or miss rows)")
    return out


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


def build_shard_net(n_total: int, n_genes: int, cfg: FEConfig, seed: int, lo: int, hi: int) -> FactorizedEmbeddingNet:
    """The network of the shard ``lo:hi``, initialised exactly as the single-process
    ``FactorizedEmbeddings(random_state=seed).fit`` would initialise the full model
    (the full initial sample table, n_total x sample_dim floats, exists briefly)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed) * _SEED_MULT)
    torch.manual_seed(int(seed))
    full = FactorizedEmbeddingNet(n_total, n_genes, cfg.sample_dim, cfg.gene_dim, cfg.hidden, generator=gen)
    state = full.state_dict()
    state["sample_embedding"] = state["sample_embedding"][lo:hi].clone()
    del full
    local = FactorizedEmbeddingNet(hi - lo, n_genes, cfg.sample_dim, cfg.gene_dim, cfg.hidden,
                                   generator=torch.Generator().manual_seed(0))
    local.load_state_dict(state)
    return local


def fit_distributed(source: Any, *, config: FEConfig | dict, n_total: int, lo: int,
                    samples: Any = None, genes: Any = None) -> DistributedFit:
    """Train on this rank's shard; call it on every rank of an initialised group.

    ``source`` holds this rank's rows ``lo:lo+len`` of the ``n_total`` samples: an
    array/tensor, or a backed row source (e.g. ``open_source(path).view(lo, hi)``,
    whose block sampler is used).  ``config`` are the usual hyper-parameters
    (``batch_samples`` is per rank; ``n_steps=None`` gives 40 passes at the global
    batch).  Returns, on every rank, the gathered model as a
    :class:`FactorizedEmbeddings` (identical on all ranks; write it from rank 0)."""
    from .estimator import FactorizedEmbeddings, _is_row_source

    cfg = config if isinstance(config, FEConfig) else FEConfig(**config)
    rank, world = dist.get_rank(), dist.get_world_size()
    if not _is_row_source(source):
        arr = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        source = as_float32_tensor(arr)
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
    if smallest < cfg.batch_samples:
        raise FEInputError(f"a rank holds only {smallest} samples, fewer than batch_samples="
                           f"{cfg.batch_samples}; use fewer processes or a smaller batch")
    device = resolve_device(cfg.device) if dist.get_backend() != "nccl" else _comm_device()
    dtype = resolve_precision(cfg.precision, device)
    seed = _agree_seed(cfg.random_state)
    net = build_shard_net(n_total, m, cfg, seed, lo, hi).to(device)
    broadcast_replicated(net, 0)
    n_steps = cfg.n_steps or auto_n_steps(n_total, cfg.batch_samples * world)
    gen = rank_generator(seed, rank)
    sampler = source.make_sampler(cfg.batch_samples, gen) if hasattr(source, "make_sampler") \
        else BatchSampler(n_local, cfg.batch_samples, gen)
    hook = GradientAllReduce(net)
    t0 = time.perf_counter()
    history, _, _ = train(net, source, n_steps=n_steps, lr=cfg.lr, l2=cfg.l2, batch_samples=cfg.batch_samples,
                          generator=gen, device=device, compute_dtype=dtype, gene_chunk=cfg.gene_chunk,
                          progress=cfg.verbose and rank == 0, sampler=sampler, before_step=hook)
    train_seconds = time.perf_counter() - t0
    if hasattr(sampler, "close"):
        sampler.close()
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
    table = gather_rows(net.sample_embedding.detach(), lo, n_total)
    full = FactorizedEmbeddingNet(n_total, m, cfg.sample_dim, cfg.gene_dim, cfg.hidden,
                                  generator=torch.Generator().manual_seed(0))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    state["sample_embedding"] = table
    full.load_state_dict(state)
    est = FactorizedEmbeddings.from_config(cfg)
    est._set_fitted(full, n_steps=n_steps, history=hist,
                    samples=None if samples is None else np.asarray(samples, dtype=object),
                    genes=None if genes is None else np.asarray(genes, dtype=object))
    est.lr_ = cfg.lr
    est.distributed_ = {"world_size": world, "batch_samples_per_rank": cfg.batch_samples,
                        "global_batch": cfg.batch_samples * world, "backend": dist.get_backend(),
                        "replica_spread": spread}
    return DistributedFit(est, net, lo, hi, hist, train_seconds, hook.seconds, hook.bytes, spread, world)


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


def single_process_equivalent(X: Any, config: FEConfig | dict, world: int) -> FactorizedEmbeddingNet:
    """Train one process exactly as ``world`` ranks of :func:`fit_distributed` would
    (same initial values, batches = union of the ranks' batches, gradients of the
    global batch's mean loss); ``config.random_state`` must be set."""
    cfg = config if isinstance(config, FEConfig) else FEConfig(**config)
    if cfg.random_state is None:
        raise ValueError("single_process_equivalent needs random_state")
    X = as_float32_tensor(np.asarray(X))
    n, m = X.shape
    net = build_shard_net(n, m, cfg, cfg.random_state, 0, n)
    n_steps = cfg.n_steps or auto_n_steps(n, cfg.batch_samples * world)
    sampler = union_sampler(n, world, cfg.batch_samples, cfg.random_state)
    device = resolve_device(cfg.device)
    train(net, TensorRows(X), n_steps=n_steps, lr=cfg.lr, l2=cfg.l2, batch_samples=sampler.b,
          generator=torch.Generator(), device=device, compute_dtype=resolve_precision(cfg.precision, device),
          gene_chunk=cfg.gene_chunk, progress=False, sampler=sampler)
    return net


# --------------------------------------------------------------------------------------
# transform
# --------------------------------------------------------------------------------------

def transform_distributed(fe: Any, X: Any, *, n_total: int | None = None, lo: int | None = None) -> np.ndarray:
    """Embed new samples with the rows split over the ranks; returns all rows on every rank.

    Pass either the full ``X`` (each rank takes its slice) or this rank's rows with
    ``lo`` and ``n_total``.  Each sample's embedding depends only on its own profile
    and on the gene draws, which are the same on every rank for a fixed
    ``random_state``, so the result equals a single-process ``fe.transform(X)``
    up to floating-point order."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if lo is None:
        X = np.asarray(X)
        n_total = X.shape[0]
        lo, hi = shard_bounds(n_total, world, rank)
        X = X[lo:hi]
    Z = fe.transform(X) if len(X) else np.zeros((0, fe.net_.sample_dim), np.float32)
    return gather_rows(torch.from_numpy(np.asarray(Z, dtype=np.float32)), lo, n_total).numpy()


# --------------------------------------------------------------------------------------
# command line: python -m factembed.distributed fit|transform ...  (under torchrun)
# --------------------------------------------------------------------------------------

#: fit options (argparse dests) that the distributed fit honours
_FIT_DESTS = {"data", "output", "fmt", "samples_as_columns", "label_column", "labels_path", "no_log",
              "all_biotypes", "keep_constant", "top_genes", "quiet", "backed", "distributed", "func",
              "command", "debug"} | set(FEConfig.field_names())


def _fit_subparser() -> argparse.ArgumentParser:
    from .cli import build_parser
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["fit"]
    raise RuntimeError("factembed's parser has no 'fit' command")  # pragma: no cover


def fit_argv(args: argparse.Namespace, drop: tuple[str, ...] = ("distributed",)) -> list[str]:
    """Rebuild the command-line arguments of ``factembed fit`` from parsed ``args``
    (options at their default are left out; ``drop`` lists dests to omit)."""
    out: list[str] = []
    positional: list[str] = []
    for action in _fit_subparser()._actions:
        dest = action.dest
        if dest in drop or dest == "help" or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if not action.option_strings:
            positional.append(str(value))
            continue
        opt = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                out.append(opt)
        elif value != action.default and value is not None:
            out += [opt, ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)]
    return positional + out


def launch_from_cli(args: argparse.Namespace) -> int:
    """``factembed fit --distributed N``: run ``N`` local processes under torchrun
    (``--standalone``: rendezvous on a free local port)."""
    import subprocess

    nproc = int(args.distributed)
    if nproc < 1:
        raise ValueError(f"--distributed needs a number of processes >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "factembed.distributed", "fit", *fit_argv(args)]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores between the processes
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    print("running: torchrun " + " ".join(cmd[3:]), file=sys.stderr)
    return subprocess.call(cmd, env=env)


def _check_supported(args: argparse.Namespace) -> None:
    fit = _fit_subparser()
    for action in fit._actions:
        if action.dest in _FIT_DESTS or action.dest == "help" or not hasattr(args, action.dest):
            continue
        if getattr(args, action.dest) != action.default:
            raise ValueError(f"{max(action.option_strings, key=len)} is not supported by distributed training")


def run_fit(args: argparse.Namespace) -> int:
    from .cli import _read, _summary_line, _write_fit_outputs, config_from_args
    from .io import FittedPreprocessing, Preprocessing

    _check_supported(args)
    cfg = config_from_args(args)
    rank, world, _ = init_process_group(device=cfg.device)
    if world > 1 and rank != 0:
        cfg.verbose = False
    out = Path(args.output)
    if getattr(args, "backed", False):
        from .sources import open_for_fit
        full, log = open_for_fit(args)
        n, m = full.shape
        lo, hi = shard_bounds(n, world, rank)
        local = full.view(lo, hi)
        # gene means (recorded for 'transform --fill-missing') and a check of every value,
        # each rank over its own shard, in parallel
        mean, var = local.column_stats()
        k = hi - lo
        stats = torch.from_numpy(np.stack([mean * k, (var + mean * mean) * k])).to(_comm_device())
        dist.all_reduce(stats)
        stats = stats.cpu().numpy() / n
        mean, var = stats[0], np.maximum(stats[1] - stats[0] ** 2, 0.0)
        genes = full.genes if full.genes is not None else np.array([f"gene_{j}" for j in range(m)])
        samples = full.samples if full.samples is not None else np.array([f"sample_{i}" for i in range(n)])
        labels = full.labels
        fitted = FittedPreprocessing(genes=genes, means=mean, variances=var, n_input_genes=m,
                                     config=Preprocessing(log10p1=log, protein_coding_only=False,
                                                          drop_constant=False, top_variable=None))
        source: Any = local
    else:
        data = _read(args, args.data)
        pre = Preprocessing(log10p1=not args.no_log and data.transform != "log10p1",
                            protein_coding_only=not args.all_biotypes,
                            drop_constant=not args.keep_constant, top_variable=args.top_genes)
        fitted, data = pre.fit_apply(data)
        n, m = data.X.shape
        lo, hi = shard_bounds(n, world, rank)
        source = np.ascontiguousarray(data.X[lo:hi])
        samples, genes, labels = data.samples, data.genes, data.labels
        del data
    if rank == 0:
        print(f"distributed training: {world} process(es) ({dist.get_backend()}), {n:,} samples x {m:,} genes, "
              f"{cfg.batch_samples} profiles per rank per step (global batch {cfg.batch_samples * world})",
              file=sys.stderr)
    t0 = time.perf_counter()
    res = fit_distributed(source, config=cfg, n_total=n, lo=lo, samples=samples, genes=genes)
    seconds = time.perf_counter() - t0
    if rank == 0:
        extra = {"preprocessing": fitted.to_dict(), "label_column": getattr(args, "label_column", None),
                 "source": str(args.data), "fit_seconds": seconds, "backed": bool(getattr(args, "backed", False)),
                 "distributed": res.estimator.distributed_}
        written = _write_fit_outputs(res.estimator, SimpleNamespace(samples=samples, labels=labels), out, extra,
                                     f"FE of {Path(args.data).name}")
        fe = res.estimator
        print(f"fitted {fe.n_steps_:,} steps on {world} process(es) in {seconds:.1f} s "
              f"(all-reduce {res.allreduce_seconds:.1f} s, replicas differ by at most {res.replica_spread:g}); "
              f"{_summary_line(fe.history_)}")
        for p in written:
            print(f"wrote {p}")
    dist.barrier()
    return 0


def run_transform(args: argparse.Namespace) -> int:
    from .cli import _load_model, read_for_model
    from .io import write_embedding_h5ad, write_embedding_table

    rank, world, _ = init_process_group(device="cpu")   # gloo: only the small embeddings travel
    fe, pre, _ = _load_model(args.model)
    if torch.cuda.is_available() and fe.config.device != "cpu":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        fe.net_.to(dev)
        fe.set_params(device=str(dev))
    if args.quiet or rank != 0:
        fe.set_params(verbose=False)
    data = read_for_model(args, fe, pre)
    Z = transform_distributed(fe, data.X)
    if rank == 0:
        if args.output.endswith(".h5ad"):
            write_embedding_h5ad(args.output, data, Z, fe.gene_embedding_)
        else:
            write_embedding_table(args.output, Z, data.samples, data.labels)
        print(f"embedded {data.n_samples:,} samples on {world} process(es); wrote {args.output}")
    dist.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m factembed.distributed fit ...`` / ``transform MODEL DATA -o OUT``
    (the options of ``factembed fit`` / ``factembed transform``), on every rank."""
    from .cli import build_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.prog = "torchrun ... -m factembed.distributed"
    if not argv or argv[0] not in ("fit", "transform"):
        parser.error("expected 'fit' or 'transform' (with the options of 'factembed fit' / 'factembed transform')")
    args = parser.parse_args(argv)
    if getattr(args, "distributed", None):
        args.distributed = None     # already under torchrun
    try:
        return run_fit(args) if args.command == "fit" else run_transform(args)
    except (ValueError, OSError, FloatingPointError, KeyError, RuntimeError) as exc:
        if args.debug:
            raise
        rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
        print(f"factembed.distributed: error (rank {rank}): {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
