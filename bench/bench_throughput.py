"""Training throughput at the TCGA shape: reference trainer vs factembed.

Rows (all on the same synthetic 10,344 x 19,962 float32 matrix, sample_dim 2,
gene_dim 100, hidden 100-50-50, 4 whole profiles = 79,848 (sample, gene) pairs per step,
Adam, l2 = 1e-7):

(a)  REFERENCE trainer written here the way the original algorithm works: shuffled
     (i, j) pair indices of the batch, per-pair gathers from two nn.Embedding tables,
     concatenation, an nn.Sequential MLP, autograd, torch.optim.Adam, L2 added to the
     loss.  (The original materialised the pair indices for the whole n*m matrix, i.e.
     2 x 206 M int64 = 3.3 GB at this shape; to keep memory sane they are generated
     per step here, which only makes the reference faster.)
(m)  middle point: factembed's factored network through plain autograd
     (``net.decode`` of whole profiles + MSE + backward + fused Adam).
(b0) factembed fp32 with the fused kernel as it was before the performance work
     (model.py of commit ``BEFORE_REV``, loaded from git), through the real ``train()``.
(b)  factembed fp32: the real ``train()`` path with its defaults (FusedProfileLoss +
     fused Adam).
(c)  factembed's fastest CPU mode on this machine: the best of a short search over worker
     threads / gene blocks (and bf16, only where the CPU has native bf16), re-measured.

Figures are it/s and million pairs/s, the median of >= 5 timed windows after warm-up.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import torch
from torch import nn

from _common import (RESULTS, TCGA_GENES, TCGA_SAMPLES, Tee, Windows, caller_threads, machine_line, out_path, parser,
                     tcga_like, wait_for_quiet)

from factembed.engine.kernel import GeneLayer
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.loop import BatchSampler, bf16_native, make_optimizer, train

#: the last commit of model.py before the performance work (the "before" kernel)
BEFORE_REV = "d475e60"

L2, LR = 1e-7, 5e-3


class ReferenceFE(nn.Module):
    """The original formulation: embedding lookups per pair, concatenation, MLP."""

    def __init__(self, n, m, sample_dim, gene_dim, hidden):
        super().__init__()
        self.samples = nn.Embedding(n, sample_dim)
        self.genes = nn.Embedding(m, gene_dim)
        widths = [sample_dim + gene_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, i, j):
        return self.mlp(torch.cat([self.samples(i), self.genes(j)], dim=1)).squeeze(1)


def reference_step_fn(X: torch.Tensor, batch: int, dims, seed: int = 0):
    n, m = X.shape
    torch.manual_seed(seed)
    model = ReferenceFE(n, m, *dims)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(n, batch, gen)
    genes = torch.arange(m)

    def step():
        rows = sampler.next()
        i = rows.repeat_interleave(m)
        j = genes.repeat(len(rows))
        order = torch.randperm(len(i), generator=gen)      # shuffled pairs
        i, j = i[order], j[order]
        target = X[i, j]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(i, j), target)
        loss = loss + L2 * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        opt.step()
    return step


def autograd_step_fn(X: torch.Tensor, batch: int, dims, seed: int = 0):
    n, m = X.shape
    gen = torch.Generator().manual_seed(seed)
    net = FactorizedEmbeddingNet(n, m, *dims, generator=gen)
    opt = make_optimizer(net.parameters(), LR, L2, torch.device("cpu"))
    sampler = BatchSampler(n, batch, gen)

    def step():
        idx = sampler.next()
        xb = X.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = ((net.decode(net.sample_embedding[idx]) - xb) ** 2).mean()
        loss.backward()
        opt.step()
    return step


def train_windows(X, batch, dims, *, warmup, n_windows, spw, gene_chunk=None, workers=None,
                  threads=None, dtype=torch.float32, kernel=None, seed=0) -> Windows:
    """Windows cut out of the per-step timestamps of the real ``train()``.  ``threads``:
    torch intra-op threads of the calling thread during the run (None: unchanged);
    ``workers``, ``kernel``: train()'s arguments (None: its defaults)."""
    n, m = X.shape
    gen = torch.Generator().manual_seed(seed)
    net = FactorizedEmbeddingNet(n, m, *dims, generator=gen)
    steps = warmup + n_windows * spw
    with caller_threads(threads):
        hist, _, _ = train(net, X, n_steps=steps, lr=LR, l2=L2, batch_samples=batch, generator=gen,
                           device=torch.device("cpu"), compute_dtype=dtype, gene_chunk=gene_chunk,
                           progress=False, kernel=kernel, workers=workers)
    return Windows.from_times(hist.seconds, warmup=warmup, n_windows=n_windows, steps_per_window=spw,
                              pairs_per_step=batch * m)


def before_kernel():
    """FusedProfileLoss of model.py at BEFORE_REV (None when git history is unavailable)."""
    try:
        src = subprocess.run(["git", "show", f"{BEFORE_REV}:src/factembed/model.py"], cwd=RESULTS.parents[1],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("factembed_model_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    exec(compile(src, f"model.py@{BEFORE_REV}", "exec"), mod.__dict__)

    class Before(mod.FusedProfileLoss):
        """The old kernel under today's train(), which also passes ``workers``."""

        def __init__(self, gene_chunk=None, compute_dtype=torch.float32, workers=None):
            super().__init__(gene_chunk=gene_chunk, compute_dtype=compute_dtype)

        def __call__(self, S, G, X, layers, **kw):
            if isinstance(G, GeneLayer):    # today's train() passes the gene layer: the old
                G = nn.functional.linear(*G)  # kernel took the gene term, made by autograd
            return super().__call__(S, G, X, layers, **kw)

    return Before


def main() -> None:
    args = parser(__doc__).parse_args()
    out = Tee()
    if args.quick:
        n, m, n_windows, wait = 64, 256, 5, 0.0
    else:
        n, m, n_windows, wait = TCGA_SAMPLES, TCGA_GENES, 5, 30.0
    batch, dims = 4, (2, 100, (100, 50, 50))
    out(machine_line())
    t = time.perf_counter()
    X = torch.from_numpy(tcga_like(n, m))
    out(f"data: synthetic TCGA-shaped log-expression {n} x {m} float32 "
        f"({X.numel() * 4 / 2**20:.0f} MiB), made in {time.perf_counter() - t:.1f} s")
    out(f"model: sample_dim {dims[0]}, gene_dim {dims[1]}, hidden {dims[2]}, batch {batch} profiles "
        f"= {batch * m:,} pairs/step, Adam lr {LR}, l2 {L2}")
    share = wait_for_quiet(wait)
    out(f"other processes used {100 * share:.0f}% of the CPUs just before the run "
        f"(the figures below are only as good as the machine is quiet)")
    pairs = batch * m
    rows: dict[str, Windows] = {}

    def timed(key, label, step, spw, warmup):
        w = Windows(step, warmup=warmup, n_windows=n_windows, steps_per_window=spw, pairs_per_step=pairs).run()
        rows[key] = w
        out(f"{label:58s} {w.summary()}")

    q = args.quick
    out("(a) reference: materialised pairs in the original; here indices are generated per step")
    timed("a", "(a)  reference (pair gathers + concat + MLP, autograd)",
          reference_step_fn(X, batch, dims), 2 if not q else 1, 2 if not q else 1)
    timed("m", "(m)  factored net, plain autograd (decode+MSE+backward)",
          autograd_step_fn(X, batch, dims), 2 if not q else 1, 1)

    def trained(key, label, spw, warmup, **kw):
        w = train_windows(X, batch, dims, warmup=warmup, n_windows=n_windows, spw=spw, **kw)
        rows[key] = w
        out(f"{label:58s} {w.summary()}")
        return w

    before = before_kernel()
    if before is not None:
        trained("b0", f"(b0) factembed fp32, kernel before perf work ({BEFORE_REV})",
                5 if not q else 1, 3 if not q else 1, kernel=before)
    trained("b", "(b)  factembed fp32 (train() defaults)", 10 if not q else 1, 5 if not q else 1)

    # (c): search, then re-measure the best
    cands = []
    nt = torch.get_num_threads()
    # (caller's intra-op threads, kernel workers).  train() runs its own loop at 1 intra-op
    # thread on CPU whatever the caller had, so only the worker count matters: 1 worker
    # (everything on one core) or one per core.  (Runs before 2026-11-27 06:30 also swept
    # the caller's threads, 2 or 1, which made no difference.)
    layouts = [(1, 1), (1, nt)] if nt > 1 else [(1, 1)]
    for threads, workers in layouts:
        for chunk in ((None,) if q else (None, 512, 1024, 2048)):
            cands.append(dict(threads=threads, workers=workers, gene_chunk=chunk, dtype=torch.float32))
    if bf16_native(torch.device("cpu")):
        cands.append(dict(threads=None, workers=None, gene_chunk=None, dtype=torch.bfloat16))
    else:
        out("bf16 not swept: this CPU has no native bf16 (emulated bf16 GEMMs are ~20-40x slower "
            "than fp32 here, see bench_roofline.py)")
    out("search for (c) (3 windows each):")
    best, best_kw = -1.0, None
    for kw in cands:
        w = train_windows(X, batch, dims, warmup=2 if not q else 1, n_windows=3, spw=4 if not q else 1, **kw)
        dt = "bf16" if kw["dtype"] == torch.bfloat16 else "fp32"
        out(f"     main threads={kw['threads']}, workers={kw['workers']}, gene_chunk={kw['gene_chunk']}, {dt}: "
            f"{w.median:.3f} it/s (others used {100 * wait_for_quiet(0, probe=0.2):.0f}% after)")
        if w.median > best:
            best, best_kw = w.median, kw
    dt = "bf16" if best_kw["dtype"] == torch.bfloat16 else "fp32"
    trained("c", f"(c)  fastest: threads={best_kw['threads']}, workers={best_kw['workers']}, "
            f"chunk={best_kw['gene_chunk']}, {dt}",
            10 if not q else 1, 5 if not q else 1, **best_kw)

    a = rows["a"].median
    out("")
    out("ratios (same run):")
    for key, label in (("m", "(m)/(a)"), ("b0", "(b0)/(a)"), ("b", "(b)/(a)"), ("c", "(c)/(a)")):
        if key in rows:
            out(f"  {label:9s} {rows[key].median / a:7.1f}x")
    if "b0" in rows:
        out(f"  (b)/(b0)  {rows['b'].median / rows['b0'].median:7.2f}x   (kernel after/before the perf work)")
    if not q:
        out(f"  40 it/s target: (c) reaches {rows['c'].median:.2f} it/s = {rows['c'].median / 40:.0%} of it "
            f"(see bench_roofline.py for why 40 it/s is out of reach on this machine)")
    with open(out_path(args, "throughput.csv"), "w") as f:
        f.write("row,it_per_s_median,it_per_s_best,mpairs_per_s,windows,ratio_to_reference\n")
        for key, w in rows.items():
            f.write(f"{key},{w.median:.4f},{w.best:.4f},{w.mpairs:.4f},{len(w.it_s)},{w.median / a:.2f}\n")
    best_kw = dict(best_kw, dtype="bf16" if best_kw["dtype"] == torch.bfloat16 else "fp32")
    out_path(args, "fastest_mode.json").write_text(json.dumps(best_kw) + "\n")
    out.save(out_path(args, "throughput.txt"))


if __name__ == "__main__":
    main()
