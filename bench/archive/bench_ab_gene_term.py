"""Interleaved A/B of where ``train()`` computes the gene term ``E W1g^T + b`` (and its
backward: ~25% of the step's FLOPs at the defaults), and of how the block pass runs.

  one-thread  precomputed for all genes before the fused pass, on the calling thread,
              which ``train()`` runs at one intra-op thread (the code before 2026-11-27)
  split       precomputed for all genes, rows split over the kernel's worker threads
              (the gene-term fix of 2026-11-27)
  in-pass     each gene block computes its rows of the gene term and their gradients
              inside the fused pass (``GeneLayer``), on the worker that owns the block,
              while the block is in cache; the block pass as plain Python
              (printed "in-sweep" by runs before the kernel's pass was renamed)
  scripted    the current code: in-pass, and the block pass compiled by TorchScript (the
              workers run without the GIL)
Each variant is a kernel passed to ``train(..., kernel=)``: the first two precompute the
gene term from the ``GeneLayer`` that ``train()`` passes (``FusedProfileLoss`` takes
either); the first three run the block pass as plain Python
(``FusedProfileLoss(compiled=False)``).  Rounds run every variant once on the same data
(TCGA shape, defaults), 40 timed steps after 10 warm-up steps each; prints it/s per round
and the per-round ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common, bench_throughput

import functools
import statistics

import torch

from _common import Tee, machine_line, out_path, parser, tcga_like
from bench_throughput import train_windows

import factembed.engine.kernel as fe_kernel
from factembed.engine.cpu_pool import cpu_workers
from factembed.engine.kernel import FusedProfileLoss, GeneLayer, split_linear


class PrecomputedGeneTerm(FusedProfileLoss):
    """The fused kernel given the gene term for all genes, computed before the pass
    through autograd: on the calling thread, or with ``split`` its rows split over the
    kernel's workers (as ``FactorizedEmbeddingNet.gene_term(workers=...)`` does)."""

    def __init__(self, *args, split: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.split = split

    def __call__(self, S, G, X, layers, **kw):
        if isinstance(G, GeneLayer):
            G = split_linear(*G, workers=self.workers) if self.split else torch.nn.functional.linear(*G)
        return super().__call__(S, G, X, layers, **kw)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    shape = (64, 2048) if args.quick else (10_344, 19_962)
    warm, timed = (2, 3) if args.quick else (10, 40)
    X = torch.from_numpy(tcga_like(*shape))
    workers = cpu_workers(1 << 30)   # what train() uses, read before it drops to 1 thread
    variants = {   # name: the kernel passed to train()
        "one-thread": functools.partial(PrecomputedGeneTerm, compiled=False),
        "split": functools.partial(PrecomputedGeneTerm, split=True, compiled=False),
        "in-pass": functools.partial(FusedProfileLoss, compiled=False),
        "scripted": FusedProfileLoss,
    }
    res: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(1 if args.quick else args.rounds):
        for name, kernel in variants.items():
            w = train_windows(X, 4, (2, 100, (100, 50, 50)), warmup=warm, n_windows=1, spw=timed, kernel=kernel)
            res[name].append(w.it_s[0])
    scripted = isinstance(fe_kernel._compiled_block_pass(), torch.jit.ScriptFunction)
    out(f"kernel workers: {workers}; TorchScript block pass available: {scripted}")
    for name, vals in res.items():
        out(f"{name:10s}: " + ", ".join(f"{v:.2f}" for v in vals) + f" it/s; median {statistics.median(vals):.2f}")
    for a, b in (("split", "one-thread"), ("in-pass", "split"), ("scripted", "in-pass"),
                 ("scripted", "split")):
        ratios = [x / y for x, y in zip(res[a], res[b])]
        out(f"{a}/{b} per round: " + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}")
    out.save(out_path(args, "ab_gene_term.txt"))


if __name__ == "__main__":
    main()
