"""Data-parallel training over several processes or machines with ``torch.distributed``.

Launch with ``torchrun`` (gloo on CPU, NCCL on CUDA); there is no networking code here::

    factembed fit DATA -o MODEL --distributed 2       # one machine: runs torchrun for you
    torchrun --nnodes 4 --node-rank K --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m factembed fit DATA -o MODEL --distributed torchrun ...

Modules: :mod:`.group` (process group, shards, broadcast, gradient all-reduce, gathers),
:mod:`.fit` (:func:`fit_distributed`, its single-process equivalent, transform),
:mod:`.launch` (torchrun on this machine), ``__main__`` (the rank entry point of
``factembed fit --distributed N``, which calls :func:`factembed.workflow.fit_rank`).

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

from .fit import (DistributedFit, UnionSampler, build_shard_net, fit_distributed, single_process_equivalent,
                  transform_distributed, union_sampler)
from .group import (GradientAllReduce, all_gather_objects, broadcast_replicated, gather_rows, init_process_group,
                    rank_generator, replica_spread, replicated_parameters, shard_bounds)

__all__ = [
    "shard_bounds",
    "init_process_group",
    "GradientAllReduce",
    "fit_distributed",
    "gather_rows",
    "transform_distributed",
    "union_sampler",
    "replica_spread",
    "replicated_parameters",
    "broadcast_replicated",
    "rank_generator",
    "build_shard_net",
    "single_process_equivalent",
    "all_gather_objects",
    "DistributedFit",
    "UnionSampler",
]
