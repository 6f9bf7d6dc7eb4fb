"""Process group, shards and collectives of a data-parallel fit (see :mod:`factembed.distributed`)."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist

from ..engine.network import FactorizedEmbeddingNet
from ..training.loop import resolve_device

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


def _wants_cuda(device: str, n_gpus: int) -> bool:
    return device.startswith("cuda") or (device == "auto" and n_gpus > 0)


def choose_backend(device: str, local_world: int, n_gpus: int) -> tuple[str, str | None]:
    """The collective backend for ``device`` ("auto", "cpu", "cuda", "cuda:N") when
    ``local_world`` processes of this node share ``n_gpus`` GPUs: ``(backend, warning)``.
    NCCL needs a GPU of its own per process; with fewer GPUs than processes the ranks
    train on the shared GPUs and reduce through gloo (host memory), with a warning."""
    if not _wants_cuda(device, n_gpus):
        return "gloo", None
    if local_world > n_gpus:
        return "gloo", (f"{local_world} processes on this node share {n_gpus} GPU(s): NCCL needs one GPU per "
                        "process, so gradients are reduced through gloo in host memory (slower); start at most "
                        f"{n_gpus} process(es) per node (torchrun --nproc-per-node) to use NCCL")
    return "nccl", None


def init_process_group(backend: str | None = None, device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``)
    unless one is already initialised.  With CUDA asked for (or ``device="auto"`` finding
    it): ``cuda:LOCAL_RANK`` (modulo the node's GPUs) and NCCL, or gloo where the node
    has fewer GPUs than processes (see :func:`choose_backend`); gloo and the CPU otherwise.
    Returns (rank, world, device)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want_cuda = _wants_cuda(device, n_gpus)
    if not dist.is_initialized():
        chosen, warning = choose_backend(device, local_world, n_gpus)
        if warning and backend is None and local_rank == 0:
            warnings.warn(warning, stacklevel=2)
        dist.init_process_group(backend or chosen)
    if want_cuda:
        dev = resolve_device(device)             # raises a clear error where CUDA is missing
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(1, n_gpus))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
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




def all_gather_objects(obj: Any) -> list:
    """``obj`` of every rank, in rank order (small picklable objects: statistics, step lists)."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
