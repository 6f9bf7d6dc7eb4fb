"""Interleaved A/B of where ``train()`` computes the gene term ``E W1g^T + b`` (and its
backward: ~25% of the step's FLOPs at the defaults), and of how the sweep runs.

  one-thread  precomputed for all genes before the fused sweep, on the calling thread,
              which ``train()`` runs at one intra-op thread (the code before 2026-11-27)
  split       precomputed for all genes, rows split over the kernel's worker threads
              (the gene-term fix of 2026-11-27)
  in-sweep    each gene block computes its rows of the gene term and their gradients
              inside the fused sweep (``GeneLayer``), on the worker that owns the block,
              while the block is in cache; the sweep as plain Python
  scripted    the current code: in-sweep, and the sweep compiled by TorchScript (the
              workers run without the GIL)
The first two are restored by patching ``FactorizedEmbeddingNet.gene_layer`` to return a
precomputed gene term (``FusedProfileLoss`` takes either); the first three run the sweep
as plain Python (``_compiled_sweep`` patched to return the uncompiled function).  Rounds run every variant once on
the same data (TCGA shape, defaults), 40 timed steps after 10 warm-up steps each; prints it/s
per round and the per-round ratios.
"""

from __future__ import annotations

import statistics

import torch

from _common import Tee, machine_line, out_path, parser, tcga_like
from bench_throughput import train_windows

import factembed.model as fe_model


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    shape = (64, 2048) if args.quick else (10_344, 19_962)
    warm, timed = (2, 3) if args.quick else (10, 40)
    X = torch.from_numpy(tcga_like(*shape))
    Net = fe_model.FactorizedEmbeddingNet
    current = Net.gene_layer
    workers = fe_model.cpu_workers(1 << 30)   # what train() uses, read before it drops to 1 thread
    compiled = fe_model._compiled_sweep
    plain = lambda: fe_model._sweep_blocks   # noqa: E731
    variants = {   # name: (FactorizedEmbeddingNet.gene_layer, model._compiled_sweep)
        "one-thread": (lambda self: self.gene_term(), plain),
        "split": (lambda self: self.gene_term(workers=workers), plain),
        "in-sweep": (current, plain),
        "scripted": (current, compiled),
    }
    res: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(1 if args.quick else args.rounds):
            for name, (gene_layer, sweep) in variants.items():
                Net.gene_layer, fe_model._compiled_sweep = gene_layer, sweep
                w = train_windows(X, 4, (2, 100, (100, 50, 50)), warmup=warm, n_windows=1, spw=timed)
                res[name].append(w.it_s[0])
    finally:
        Net.gene_layer, fe_model._compiled_sweep = current, compiled
    scripted = not isinstance(compiled(), type(fe_model._sweep_blocks))
    out(f"kernel workers: {workers}; TorchScript sweep available: {scripted}")
    for name, vals in res.items():
        out(f"{name:10s}: " + ", ".join(f"{v:.2f}" for v in vals) + f" it/s; median {statistics.median(vals):.2f}")
    for a, b in (("split", "one-thread"), ("in-sweep", "split"), ("scripted", "in-sweep"),
                 ("scripted", "split")):
        ratios = [x / y for x, y in zip(res[a], res[b])]
        out(f"{a}/{b} per round: " + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}")
    out.save(out_path(args, "ab_gene_term.txt"))


if __name__ == "__main__":
    main()
