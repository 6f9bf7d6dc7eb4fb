"""Before/after of the kernel work, interleaved: fairer than back-to-back rows when the
machine's load drifts.

Configurations (all the real ``train()`` at the TCGA shape, fp32, gene_dim 100):
  before   the fused kernel of commit BEFORE_REV (one OpenMP-parallel pass), library thread defaults
  after    the current kernel, library defaults (workers = intra-op threads)
  after-1m the current kernel with the calling thread at 1 intra-op thread and 2 kernel
           workers (the "fastest mode" layout), default gene blocks
  plus ``--chunks``: the last layout with those gene_chunk values.
Each round runs every configuration once (a few warm-up steps, then one timed window);
the figure per configuration is the median over rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common, bench_throughput

import statistics
import time

import torch

from _common import TCGA_GENES, TCGA_SAMPLES, Tee, machine_line, out_path, parser, tcga_like
from bench_throughput import BEFORE_REV, before_kernel, train_windows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed steps per window")
    p.add_argument("--chunks", type=int, nargs="*", default=[1024])
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    q = args.quick
    n, m = (64, 256) if q else (TCGA_SAMPLES, TCGA_GENES)
    rounds, steps = (2, 1) if q else (args.rounds, args.steps)
    X = torch.from_numpy(tcga_like(n, m))
    nt = torch.get_num_threads()
    configs = {}
    before = before_kernel()
    if before is not None:
        configs[f"before ({BEFORE_REV})"] = dict(kernel=before)
    configs["after (defaults)"] = {}
    configs["after, main 1 thread"] = dict(threads=1, workers=nt)
    for c in args.chunks:
        configs[f"after, main 1 thread, chunk {c}"] = dict(threads=1, workers=nt, gene_chunk=c)
    res: dict[str, list[float]] = {k: [] for k in configs}
    t0 = time.perf_counter()
    for r in range(rounds):
        for name, kw in configs.items():
            w = train_windows(X, 4, (2, 100, (100, 50, 50)), warmup=3 if not q else 1, n_windows=1,
                              spw=steps, **kw)
            res[name].append(w.it_s[0])
        out(f"round {r + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)")
    base = statistics.median(res[next(iter(res))])
    for name, v in res.items():
        med = statistics.median(v)
        out(f"{name:34s} median {med:6.2f} it/s  (x{med / base:4.2f})  rounds: "
            + ", ".join(f"{x:.2f}" for x in v))
    out.save(out_path(args, "ab.txt"))


if __name__ == "__main__":
    main()
