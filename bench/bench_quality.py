"""Quality must not pay for speed: fp32 defaults vs the fastest CPU mode on the demo data.

Fits the bundled HSMM demo (271 cells x 5,000 genes, already log10(FPKM + 1)) with the
same seed (a) with factembed's fp32 defaults, (b) in the fastest CPU mode found by
bench_throughput.py (bench/results/fastest_mode.json; workers / gene_chunk / dtype), and
(c) with the kernel as it was before the performance work, and reports for each the
reconstruction Pearson r (decoder output of the training embedding vs X, all entries)
and the 5-fold kNN accuracy (k = 5) of the time-point labels from the 2-D embedding.
For scale, the fp32 defaults are also fitted with other seeds (``--seeds``): the spread
over seeds is what a difference between modes has to be compared with (a different float
rounding order changes a fit about as much as a different seed does).

Kernels and worker counts are chosen through ``FactorizedEmbeddings.fit(X, kernel=,
workers=)``, so every row trains through the estimator itself.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from _common import Tee, caller_threads, machine_line, out_path, parser

from factembed import FactorizedEmbeddings
from factembed.datasets import load_demo
from factembed.estimator.inference import reconstruct


def fit(X, steps: int, *, workers=None, threads=None, gene_chunk=None, dtype="fp32", kernel=None, seed=0):
    """(network, steps, seconds) of a CPU fit of the estimator, the caller at ``threads``
    intra-op threads, with train()'s ``kernel`` and ``workers`` (None: its defaults)."""
    fe = FactorizedEmbeddings(n_steps=steps, gene_chunk=gene_chunk, precision=dtype, random_state=seed,
                              verbose=False, device="cpu")
    with caller_threads(threads):
        t = time.perf_counter()
        fe.fit(X, kernel=kernel, workers=workers)
        return fe.net_, fe.n_steps_, time.perf_counter() - t


def scores(net, X, labels) -> tuple[float, float, np.ndarray]:
    """Reconstruction r, kNN accuracy and the training embedding of a fitted network."""
    Z = net.sample_embedding.detach().cpu()
    rec = reconstruct(net, Z).numpy()
    r = float(np.corrcoef(rec.ravel().astype(np.float64), X.ravel().astype(np.float64))[0, 1])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    emb = Z.numpy().copy()
    acc = float(cross_val_score(KNeighborsClassifier(5), emb, labels, cv=cv).mean())
    return r, acc, emb


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the estimator's rule)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the fp32 defaults, for the spread (default 3)")
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    demo = load_demo()
    X, labels = demo.X, np.asarray(demo.labels)
    if args.quick:
        X, labels = X[:, :200], labels
    steps = args.steps or (10 if args.quick else None)
    mode_path = out_path(args, "fastest_mode.json")
    mode = json.loads(mode_path.read_text()) if mode_path.exists() else {"threads": None, "workers": None,
                                                                       "gene_chunk": None, "dtype": "fp32"}
    out(f"demo: {X.shape[0]} cells x {X.shape[1]} genes, labels {sorted(set(map(str, labels)))}; "
        f"steps {'auto' if steps is None else steps}; fastest mode {mode} "
        f"({'from ' + str(mode_path) if mode_path.exists() else 'no bench result yet: defaults'})")
    runs = [("fp32 defaults", {}), ("fastest mode", mode)]
    from bench_throughput import BEFORE_REV, before_kernel
    before = before_kernel()
    if before is not None:
        runs.append((f"kernel before ({BEFORE_REV})", {"kernel": before}))
    res = {}
    for name, kw in runs:
        net, n_steps, s = fit(X, steps, **kw)
        r, acc, emb = scores(net, X, labels)
        res[name] = (r, acc, s, emb)
        out(f"{name:22s}: reconstruction r {r:.4f}, 5-fold kNN accuracy {acc:.3f}, fit {s:6.1f} s "
            f"({n_steps} steps)")
    r0, a0, _, z0 = res["fp32 defaults"]
    for name in list(res)[1:]:
        r1, a1, _, z1 = res[name]
        same = np.array_equal(z0, z1)
        out(f"{name} vs fp32 defaults: |dr| = {abs(r1 - r0):.4f} (" + ("within" if abs(r1 - r0) <= 0.01 else "NOT within")
            + f" 0.01), |d accuracy| = {abs(a1 - a0):.3f}, embeddings "
            + ("bit-identical" if same else f"differ (max |dz| {np.abs(z1 - z0).max():.3g})"))
    seed_rows = [res["fp32 defaults"][:2]]
    for seed in range(1, 1 if args.quick else args.seeds):
        net, _, s = fit(X, steps, seed=seed)
        seed_rows.append(scores(net, X, labels)[:2])
        out(f"fp32 defaults, seed {seed:2d}: reconstruction r {seed_rows[-1][0]:.4f}, "
            f"5-fold kNN accuracy {seed_rows[-1][1]:.3f}, fit {s:6.1f} s")
    if len(seed_rows) > 1:
        rs, accs = np.array([r for r, _ in seed_rows]), np.array([a for _, a in seed_rows])
        out(f"fp32 defaults over {len(seed_rows)} seeds: r {rs.min():.4f}-{rs.max():.4f} (range {np.ptp(rs):.4f}), "
            f"kNN accuracy {accs.min():.3f}-{accs.max():.3f} (range {np.ptp(accs):.3f}, sd {accs.std(ddof=1):.3f})")
    with open(out_path(args, "quality.csv"), "w") as f:
        f.write("mode,pearson_r,knn_accuracy,fit_seconds\n")
        for name, (r, acc, s, _) in res.items():
            f.write(f"{name},{r:.5f},{acc:.4f},{s:.2f}\n")
    out.save(out_path(args, "quality.txt"))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
