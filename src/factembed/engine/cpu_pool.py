"""CPU worker threads of the fused kernel, how many of them, and how large a gene block is.

On CPU the gene blocks of a step (and the gene term and the forward-only decode) are
shared out to a small pool of worker threads with ``torch.get_num_threads() // workers``
intra-op threads each (one on small machines), instead of running one pass of
OpenMP-parallel operations: the workers synchronise once per call instead of once per
operation, whose skinny matrix products and element-wise passes scale poorly and slow
down many-fold whenever another process competes for the cores (every operation waits
for all its threads).  Measurements: ``bench/NOTES.md``.

The number of workers is an argument wherever it matters (``train(..., workers=)``,
``FusedProfileLoss(workers=)``, ``FactorizedEmbeddingNet.decode(..., workers=)``...);
where none is given, :func:`cpu_workers` uses the environment variable
``FACTEMBED_CPU_WORKERS`` if set, else the calling thread's torch thread count up to
:data:`MAX_AUTO_WORKERS`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

#: Environment variable with the default number of worker threads (a positive integer);
#: unset or empty: ``min(torch.get_num_threads(), MAX_AUTO_WORKERS)``.
WORKERS_ENV = "FACTEMBED_CPU_WORKERS"
#: Cap of the automatic worker count (the block pass runs without the GIL when
#: TorchScript compiles it, but the plain-Python fallback and the decode issue every
#: operation from Python: many workers would contend for the GIL there).
MAX_AUTO_WORKERS = 4
# Bytes of first-layer activations per gene block on CPU: ~1 MiB, one core's L2 on the
# 2-core AVX2 dev machine (chosen by the interleaved A/B of bench/archive/bench_ab.py; figures in
# bench/NOTES.md, "Gene blocks of ~1 MiB of activations").
_CPU_BLOCK_BYTES = 1 << 20

_POOL: dict = {"pool": None, "key": None, "pid": None}
_POOL_LOCK = threading.Lock()


def _worker_init(intra: int) -> None:
    torch.get_num_threads()      # settle this thread's lazy thread-count initialisation first,
    torch.set_num_threads(intra)  # then its own intra-op threads (OpenMP and MKL: per thread)
    torch.set_flush_denormal(True)  # these threads run only factembed's kernels (see flush_denormals)


def denormals_flushed() -> bool:
    """True when the calling thread flushes denormal floats to zero (probed: a denormal
    float32 times one comes out 0)."""
    return float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero in the calling thread for the block (restored after).

    Late in training, some of Adam's moments and gradients fall below float32's normal
    range (~1.2e-38); x86 CPUs take a microcode assist on every such operand, and the
    fused steps slowed from 31 to 105 ms at the planted 2,000 x 19,962 shape by step
    2,000 (bench/NOTES.md, "Denormals").  Flushing them changes values below 1e-38 only."""
    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not before:
            torch.set_flush_denormal(False)


def worker_pool(size: int, intra: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``size`` workers with ``intra`` intra-op threads each
    (rebuilt after a fork or when the shape changes)."""
    with _POOL_LOCK:
        if _POOL["pool"] is None or _POOL["key"] != (size, intra) or _POOL["pid"] != os.getpid():
            old = _POOL["pool"]
            if old is not None and _POOL["pid"] == os.getpid():
                old.shutdown(wait=True)
            prev = torch.get_num_threads()
            pool = ThreadPoolExecutor(size, thread_name_prefix="factembed-kernel",
                                      initializer=_worker_init, initargs=(intra,))
            # start every worker now, then restore the process-wide default, which
            # set_num_threads in the workers also changed (the caller's own stays as it was)
            barrier = threading.Barrier(size)
            list(pool.map(lambda _: barrier.wait(), range(size)))
            torch.set_num_threads(prev)
            _POOL.update(pool=pool, key=(size, intra), pid=os.getpid())
        return _POOL["pool"]


def default_workers() -> int:
    """The worker count used when none is given: ``FACTEMBED_CPU_WORKERS`` if set, else
    the calling thread's torch threads up to :data:`MAX_AUTO_WORKERS`."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{WORKERS_ENV} must be a positive integer, got {env!r}")
        return n
    return min(torch.get_num_threads(), MAX_AUTO_WORKERS)


def cpu_workers(n_blocks: int, want: int | None = None) -> int:
    """Worker threads used for ``n_blocks`` gene blocks on CPU: ``want`` of them (default:
    :func:`default_workers`), never more than the blocks."""
    if not want:
        want = default_workers()
    return int(max(1, min(want, n_blocks)))


def default_gene_chunk(batch_samples: int, first_width: int, n_genes: int, device: torch.device,
                       workers: int = 1) -> int:
    """Genes per fused block: ~``_CPU_BLOCK_BYTES`` of first-layer activations on CPU
    (evened out so that every worker gets the same number of blocks), all genes on GPU."""
    if device.type != "cpu":
        return n_genes
    chunk = _CPU_BLOCK_BYTES // (4 * max(1, batch_samples) * max(1, first_width))
    chunk = int(max(32, min(n_genes, chunk)))
    blocks = -(-n_genes // chunk)
    blocks = -(-blocks // workers) * workers
    return int(max(1, -(-n_genes // blocks)))
