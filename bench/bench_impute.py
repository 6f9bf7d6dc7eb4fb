"""Imputation with the FE decoder vs gene means, k-NN and an iterative-SVD (PCA) imputer.

Data sets: the bundled HSMM demo (271 cells, log10(FPKM + 1), top 2,000 variable genes of
each training fold), pbmc68k_reduced (700 cells x 765 genes from scanpy's wheel, already
scaled: ``--pbmc PATH``; skipped when not found) and a synthetic TCGA-shaped matrix
(``_common.tcga_like``; size ``--tcga-samples`` x ``--tcga-genes``).

For each data set, K-fold split (shuffled, seed 0); on each fold every method sees the
training fold only, plus the observed entries of the test fold:

* **FE**: ``FactorizedEmbeddings(sample_dim=d)`` fitted on the training fold; the test
  fold's missing entries by ``fe.impute`` (each test sample embedded from its observed
  entries only, the decoder's values at that embedding), one row per ``--fe-dims`` value;
* **gene means**: the training fold's mean of each gene;
* **k-NN**: scikit-learn's ``KNNImputer`` fitted on the training fold (donors are
  training samples; distances over the observed genes);
* **iterative SVD (PCA)**: written here (:func:`svd_impute`): the training rows stacked
  with the test rows, missing entries initialised with the training gene means, then
  repeated: rank-k SVD of the column-centred matrix, missing entries := the rank-k
  reconstruction, until they change by less than 1e-4 (relative) or 100 rounds.

k of k-NN and the rank of the SVD are chosen on each training fold alone (inner split
80/20, 10% of the inner test entries hidden; grids ``KNN_GRID``, ``RANK_GRID``); FE uses
its defaults (pbmc: the experiments' gene_dim 50, 16 profiles per step, 1,500 steps;
TCGA-shaped: ``--tcga-steps``).

Two hiding schemes on the test fold: 10% of its entries at random (``entries``), and 10%
of the genes hidden in every test sample (``genes``, as for genes a platform lacks).
Scores on the hidden entries only: RMSE and Pearson r (all hidden entries of the fold
pooled), and the seconds each method took.

Embedding shift: on the first fold, for up to ``--shift-samples`` test samples, the
embedding from all entries vs from the entries left after hiding 10 ... 90% of each
sample's entries at random (median and 90th percentile of the distance, as a share of the
training embedding's spread = median distance of the training embeddings to their
median), and the RMSE of the decoder on the hidden entries.  Reference row
``hidden 0``: the same complete profiles embedded with another random seed (the
inference's own scatter).

Memory: peak resident memory added by ``fe.impute(X, copy=False)``, by
``fe.transform(X, missing="ignore")`` (float32 matrices with 10% NaN) and by
``fe.transform`` of the complete matrix, each call in a fresh child process, at two row
counts (``--mem-samples``, ``--mem-genes`` genes): what grows with the rows, per MiB of
matrix, next to the 0.25 MiB per MiB a full-size boolean mask would add.

Writes ``impute.csv``, ``impute_shift.csv``, ``impute_memory.csv``, ``impute.png`` and
``impute.txt`` (the printout, with markdown tables) under ``--out``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, Tee, machine_line, out_path, parser, tcga_like

KNN_GRID = (3, 5, 10, 20)
RANK_GRID = (2, 5, 10, 20, 40)
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PBMC_CANDIDATES = ("/tmp/sc/scanpy/datasets/10x_pbmc68k_reduced.h5ad",
                   "/tmp/sc/10x_pbmc68k_reduced.h5ad")


# -- the baselines written here ---------------------------------------------------------------

def svd_impute(X_train: np.ndarray, X_obs: np.ndarray, rank: int, *, max_iter: int = 100, tol: float = 1e-4,
               seed: int = 0) -> np.ndarray:
    """Iterative SVD imputation of the NaN entries of ``X_obs`` with the complete rows
    ``X_train`` stacked above them: initialise the missing entries with the training
    gene means, then repeat { centre the columns, rank-``rank`` SVD, missing entries :=
    the reconstruction } until the missing entries change by less than ``tol`` (relative
    to their norm) or ``max_iter`` rounds.  Exact SVD when the matrix has at most 300
    rows or columns, scikit-learn's randomized SVD (5 power iterations) otherwise.  Returns the filled
    test rows."""
    from sklearn.utils.extmath import randomized_svd

    n_tr = X_train.shape[0]
    M = np.isnan(X_obs)
    Y = np.vstack([X_train, np.where(M, X_train.mean(0), X_obs)]).astype(np.float64)
    test = Y[n_tr:]                                   # a view: filled in place
    rank = max(1, min(rank, min(Y.shape) - 1))
    prev = test[M].copy()
    for _ in range(max_iter):
        mu = Y.mean(0)
        if min(Y.shape) <= 300:
            U, s, Vt = np.linalg.svd(Y - mu, full_matrices=False)
            U, s, Vt = U[:, :rank], s[:rank], Vt[:rank]
        else:
            U, s, Vt = randomized_svd(Y - mu, rank, n_iter=5, random_state=seed)
        R = (U[n_tr:] * s) @ Vt + mu
        new = R[M]
        test[M] = new
        change = np.linalg.norm(new - prev) / max(np.linalg.norm(prev), 1e-12)
        prev = new
        if change < tol:
            break
    return test.astype(np.float32)


def knn_impute(X_train: np.ndarray, X_obs: np.ndarray, k: int) -> np.ndarray:
    from sklearn.impute import KNNImputer
    return KNNImputer(n_neighbors=k).fit(X_train).transform(X_obs).astype(np.float32)


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    pred, truth = pred.astype(np.float64), truth.astype(np.float64)
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    a, b = pred - pred.mean(), truth - truth.mean()
    r = float((a @ b) / np.sqrt((a @ a) * (b @ b))) if (a @ a) > 0 and (b @ b) > 0 else float("nan")
    return rmse, r


def hide_entries(shape, frac: float, rng: np.random.Generator) -> np.ndarray:
    """``frac`` of each row's entries, at random (every row keeps at least one)."""
    n, m = shape
    k = min(m - 1, int(round(frac * m)))
    M = np.zeros(shape, dtype=bool)
    for i in range(n):
        M[i, rng.permutation(m)[:k]] = True
    return M


def hide_genes(shape, frac: float, rng: np.random.Generator) -> np.ndarray:
    n, m = shape
    M = np.zeros(shape, dtype=bool)
    M[:, rng.permutation(m)[:max(1, int(round(frac * m)))]] = True
    return M


def tune(X_train: np.ndarray, frac: float, seed: int, quick: bool, svd_iter: int) -> tuple[int, int]:
    """k of k-NN and the SVD rank with the lowest RMSE on an inner 80/20 split of the
    training fold (``frac`` of the inner test entries hidden)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X_train))
    cut = int(0.8 * len(perm))
    A, B = X_train[perm[:cut]], X_train[perm[cut:]]
    M = hide_entries(B.shape, frac, rng)
    Bo = B.copy()
    Bo[M] = np.nan
    knn_grid = KNN_GRID[:2] if quick else KNN_GRID
    rank_grid = RANK_GRID[:2] if quick else RANK_GRID
    k = min(knn_grid, key=lambda k: scores(knn_impute(A, Bo, min(k, len(A)))[M], B[M])[0])
    rank = min(rank_grid, key=lambda r: scores(svd_impute(A, Bo, r, max_iter=svd_iter)[M], B[M])[0])
    return min(k, len(A)), rank


# -- data ---------------------------------------------------------------------------------------

def find_pbmc(path: str | None) -> str | None:
    cands = [path] if path else []
    cands += [os.environ.get("FACTEMBED_PBMC", "")] + list(PBMC_CANDIDATES)
    spec = importlib.util.find_spec("scanpy")
    if spec is not None and spec.origin:
        cands.append(str(Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"))
    return next((c for c in cands if c and os.path.isfile(c)), None)


def load_sets(args, out: Tee) -> list[dict]:
    """Each data set: name, matrix (float32, model scale), how the genes of a training
    fold are chosen, and the FE settings."""
    from factembed.datasets import load_demo
    from factembed.io import read_expression

    sets = []
    if "demo" in args.datasets:
        d = load_demo()
        X = d.X
        if args.quick:
            X = X[:80, :200]
        sets.append(dict(name="demo", X=np.ascontiguousarray(X), top=None if args.quick else args.demo_top_genes,
                         fe={}, folds=2 if args.quick else args.folds))
    if "pbmc" in args.datasets and not args.quick:
        path = find_pbmc(args.pbmc)
        if path is None:
            out("pbmc68k_reduced: not found (pass --pbmc PATH; see docs/experiments.md) - skipped")
        else:
            d = read_expression(path)
            sets.append(dict(name="pbmc68k_reduced", X=np.ascontiguousarray(d.X), top=None,
                             fe=dict(gene_dim=50, batch_samples=16, n_steps=1500), folds=args.folds))
    if "tcga" in args.datasets:
        n, m = (80, 200) if args.quick else (args.tcga_samples, args.tcga_genes)
        sets.append(dict(name=f"tcga_like_{n}x{m}", X=tcga_like(n, m, seed=0), top=None,
                         fe=dict(n_steps=30 if args.quick else args.tcga_steps),
                         folds=2 if args.quick else args.tcga_folds))
    return sets


def fold_genes(X_tr: np.ndarray, top: int | None) -> np.ndarray:
    """Columns kept for a training fold: non-constant, then the ``top`` most variable."""
    from factembed.preprocessing import select_genes
    const = ~(X_tr.max(0) > X_tr.min(0))
    return np.flatnonzero(select_genes(X_tr.var(0), const, drop_constant=True, top_variable=top))


# -- the runs -----------------------------------------------------------------------------------

def run_set(ds: dict, args, out: Tee, rows: list, shift_rows: list) -> None:
    from sklearn.model_selection import KFold

    from factembed import FactorizedEmbeddings

    X_all = ds["X"]
    out(f"\n== {ds['name']}: {X_all.shape[0]:,} samples x {X_all.shape[1]:,} genes, {ds['folds']} folds ==")
    splits = KFold(ds["folds"], shuffle=True, random_state=0).split(X_all)
    for fold, (tr, te) in enumerate(splits):
        cols = fold_genes(X_all[tr], ds["top"])
        X_tr = np.ascontiguousarray(X_all[tr][:, cols])
        X_te = np.ascontiguousarray(X_all[te][:, cols])
        t = time.perf_counter()
        k_nn, rank = tune(X_tr, args.hide, seed=100 + fold, quick=args.quick, svd_iter=args.svd_iter)
        out(f"fold {fold}: train {X_tr.shape[0]} x {X_tr.shape[1]} genes, test {X_te.shape[0]}; "
            f"chosen on the training fold: k-NN k={k_nn}, SVD rank {rank} ({time.perf_counter() - t:.0f} s)")
        models = {}
        for dim in args.fe_dims:
            quick = {"n_steps": 20, "infer_steps": 10}
            fe = FactorizedEmbeddings(sample_dim=dim, random_state=0, verbose=False, device="cpu",
                                      **(quick if args.quick else ds["fe"]))
            t = time.perf_counter()
            fe.fit(X_tr)
            models[dim] = fe
            out(f"  FE sample_dim {dim}: {fe.n_steps_} steps in {time.perf_counter() - t:.0f} s")
        means = X_tr.mean(0)
        rng = np.random.default_rng(1000 + fold)
        for scheme, M in (("entries", hide_entries(X_te.shape, args.hide, rng)),
                          ("genes", hide_genes(X_te.shape, args.hide, rng))):
            X_obs = X_te.copy()
            X_obs[M] = np.nan
            truth = X_te[M]
            methods = [(f"fe_dim{dim}", f"sample_dim={dim}",
                        lambda fe=fe: fe.impute(X_obs, empty_genes="impute")) for dim, fe in models.items()]
            methods += [("gene_means", "", lambda: np.broadcast_to(means, X_obs.shape)),
                        ("knn", f"k={k_nn}", lambda: knn_impute(X_tr, X_obs, k_nn)),
                        ("pca_svd", f"rank={rank}", lambda: svd_impute(X_tr, X_obs, rank, max_iter=args.svd_iter))]
            for name, param, run in methods:
                t = time.perf_counter()
                F = run()
                sec = time.perf_counter() - t
                rmse, r = scores(F[M], truth)
                rows.append(dict(dataset=ds["name"], fold=fold, scheme=scheme, method=name, param=param,
                                 rmse=rmse, pearson_r=r, seconds=sec, n_hidden=int(M.sum())))
                out(f"  {scheme:7s} {name:11s} {param:13s} RMSE {rmse:.4f}  r {r:.4f}  ({sec:.1f} s)")
        if fold == 0:
            embedding_shift(ds["name"], models, X_te, args, out, shift_rows)


def embedding_shift(name: str, models: dict, X_te: np.ndarray, args, out: Tee, shift_rows: list) -> None:
    X = X_te[:args.shift_samples]
    fractions = (0.1, 0.5, 0.9) if args.quick else FRACTIONS
    for dim, fe in models.items():
        E = fe.embedding_
        spread = float(np.median(np.linalg.norm(E - np.median(E, 0), axis=1)))
        Z_full = fe.transform(X)
        other = copy.deepcopy(fe).set_params(random_state=12345)
        d = np.linalg.norm(other.transform(X) - Z_full, axis=1)
        shift_rows.append(dict(dataset=name, sample_dim=dim, hidden=0.0, dist_median=float(np.median(d)) / spread,
                               dist_p90=float(np.quantile(d, 0.9)) / spread, rmse_hidden=float("nan"),
                               n_samples=len(X)))
        line = [f"0% (other seed) {np.median(d) / spread:.1%}"]
        for frac in fractions:
            M = hide_entries(X.shape, frac, np.random.default_rng(int(frac * 1000)))
            Xo = X.copy()
            Xo[M] = np.nan
            Z = fe.transform(Xo, missing="ignore")
            d = np.linalg.norm(Z - Z_full, axis=1)
            rmse, _ = scores(fe.inverse_transform(Z)[M], X[M])
            shift_rows.append(dict(dataset=name, sample_dim=dim, hidden=frac, dist_median=float(np.median(d)) / spread,
                                   dist_p90=float(np.quantile(d, 0.9)) / spread, rmse_hidden=rmse, n_samples=len(X)))
            line.append(f"{frac:.0%} {np.median(d) / spread:.1%}")
        out(f"  embedding shift, sample_dim {dim} (median distance / spread, {len(X)} test samples): "
            + ", ".join(line))


# -- memory (child process) ---------------------------------------------------------------------

CHILD = r"""
import json, sys, time
import numpy as np, torch
def hwm():
    with open('/proc/self/status') as f:
        return [int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM')][0]
from factembed import FactorizedEmbeddings
model, path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
fe = FactorizedEmbeddings.load(model, device='cpu').set_params(verbose=False, infer_steps=steps)
X = np.load(path)
warm = X[:8].copy()                    # one-off costs (TorchScript compile, thread pools) before measuring
fe.transform(np.nan_to_num(warm)); fe.transform(warm, missing='ignore'); fe.impute(warm)
for what in sys.argv[4].split(','):
    Xw = np.nan_to_num(X, nan=0.0) if what == 'transform_complete' else X
    try:
        open('/proc/self/clear_refs', 'w').write('5')   # peak RSS := current RSS
        reset = True
    except OSError:
        reset = False
    base = hwm()
    t = time.perf_counter()
    if what == 'transform_complete':
        fe.transform(Xw)
    elif what == 'transform_missing':
        fe.transform(Xw, missing='ignore')
    else:
        fe.impute(Xw, copy=False)
    print('REPORT ' + json.dumps({'what': what, 'matrix_bytes': X.nbytes, 'added_bytes': hwm() - base,
                                  'reset': reset, 'seconds': time.perf_counter() - t}), flush=True)
    del Xw
"""

CALLS = (("transform_complete", "transform, complete matrix"),
         ("transform_missing", "transform(missing='ignore')"),
         ("impute_inplace", "impute(copy=False)"))


def memory_check(args, out: Tee, tmp: Path) -> list[dict]:
    """Peak memory added by each call, each in its own fresh child (memory freed by an
    earlier call and kept by the allocator would otherwise hide a later call's needs),
    at two row counts: what grows with the rows is what a full-size buffer would show."""
    from factembed import FactorizedEmbeddings

    sizes = (60,) if args.quick else tuple(args.mem_samples)
    m = 500 if args.quick else args.mem_genes
    X = tcga_like(max(sizes) + 200, m, seed=3)
    fe = FactorizedEmbeddings(n_steps=20, random_state=0, verbose=False, device="cpu").fit(X[:200])
    fe.save(tmp / "mem_model")
    Xt = X[200:].copy()
    del X
    Xt[np.random.default_rng(0).random(Xt.shape) < 0.1] = np.nan
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    steps = "5" if args.quick else str(args.mem_infer_steps)
    out(f"\n== peak memory added by a call (each in a fresh process), {m:,} genes, 10% NaN, "
        f"infer_steps {steps} ==")
    rows = []
    for n in sizes:
        np.save(tmp / "mem_X.npy", Xt[:n])
        size = 4 * n * m
        # one fresh process per call; in --quick mode one for all three (the figures mean nothing there)
        groups = [[w for w, _ in CALLS]] if args.quick else [[w] for w, _ in CALLS]
        reports = {}
        for group in groups:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "mem_model"), str(tmp / "mem_X.npy"),
                                   steps, ",".join(group)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit("memory child failed:\n" + proc.stderr[-3000:])
            for line in proc.stdout.splitlines():
                if line.startswith("REPORT "):
                    rep = json.loads(line[7:])
                    reports[rep["what"]] = rep
        for what, label in CALLS:
            rep = reports[what]
            add = rep["added_bytes"]
            rows.append(dict(call=what, n=n, m=m, matrix_bytes=size, added_bytes=add, ratio=add / size,
                             seconds=rep["seconds"], peak_reset=rep["reset"]))
            out(f"  {n:6,} x {m:,} ({size / 2**20:5.0f} MiB)  {label:30s} +{add / 2**20:7.1f} MiB = "
                f"{add / size:.3f}x the matrix ({rep['seconds']:.1f} s"
                f"{'' if rep['reset'] else '; peak not reset: includes loading'})")
    lo, hi = sizes[0], sizes[-1]
    if hi > lo:
        grow = 4.0 * (hi - lo) * m
        for what, label in CALLS:
            a = next(r["added_bytes"] for r in rows if r["call"] == what and r["n"] == lo)
            b = next(r["added_bytes"] for r in rows if r["call"] == what and r["n"] == hi)
            out(f"  {label:30s} grows by {(b - a) / 2**20:+.1f} MiB for {grow / 2**20:.0f} MiB more matrix = "
                f"{(b - a) / grow:+.3f} MiB per MiB")
        out("  (a full-size boolean mask would grow by 0.250 MiB per MiB, a float32 copy by 1.000; transform's "
            "start-point search copies its init_genes=2048 columns: 2048 / genes)")
    return rows


# -- output -------------------------------------------------------------------------------------

def tables(rows: list, shift_rows: list, out: Tee) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    if len(df):
        out("\n== hidden entries: RMSE / Pearson r, mean ± sd over folds ==")
        for (ds, scheme), g in df.groupby(["dataset", "scheme"], sort=False):
            out(f"\n{ds}, hidden {scheme}\n\n| method | RMSE | Pearson r | seconds |\n|---|---|---|---|")
            for method, h in g.groupby("method", sort=False):
                out(f"| {method} {h['param'].iloc[0]} | {h.rmse.mean():.4f} ± {h.rmse.std(ddof=0):.4f} | "
                    f"{h.pearson_r.mean():.4f} ± {h.pearson_r.std(ddof=0):.4f} | {h.seconds.mean():.1f} |")
    sf = pd.DataFrame(shift_rows)
    if len(sf):
        out("\n== embedding shift (fold 0): median distance to the all-entries embedding / spread ==")
        for (ds, dim), g in sf.groupby(["dataset", "sample_dim"], sort=False):
            cells = ", ".join(f"{h:.0%}: {v:.1%}" for h, v in zip(g.hidden, g.dist_median))
            out(f"{ds}, sample_dim {dim}: {cells}")


def figure(rows: list, shift_rows: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from factembed._utils.files import atomic_output

    df, sf = pd.DataFrame(rows), pd.DataFrame(shift_rows)
    groups = list(df.groupby(["dataset", "scheme"], sort=False)) if len(df) else []
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    methods = list(dict.fromkeys(df["method"])) if len(df) else []
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        means = [g[g.method == method].rmse.mean() for _, g in groups]
        sds = [g[g.method == method].rmse.std(ddof=0) for _, g in groups]
        ax.bar(np.arange(len(groups)) + k * width, means, width, yerr=sds, label=method, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"{ds}\n{scheme}" for (ds, scheme), _ in groups], fontsize=7)
    ax.set_ylabel("RMSE on hidden entries (mean ± sd over folds)")
    ax.set_title("Imputation of hidden test entries")
    ax.legend(fontsize=7)
    ax = axes[1]
    if len(sf):
        for (ds, dim), g in sf.groupby(["dataset", "sample_dim"], sort=False):
            ax.plot(100 * g.hidden, 100 * g.dist_median, marker="o", label=f"{ds}, sample_dim {dim}")
    ax.set_xlabel("% of each sample's entries hidden (0: complete, another seed)")
    ax.set_ylabel("median embedding shift, % of spread")
    ax.set_title("Embedding from observed entries vs from all")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    import tempfile

    import pandas as pd

    p = parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=["demo", "pbmc", "tcga"], choices=["demo", "pbmc", "tcga"])
    p.add_argument("--pbmc", default=None, help="path of 10x_pbmc68k_reduced.h5ad (default: searched)")
    p.add_argument("--folds", type=int, default=5, help="folds of demo and pbmc (default %(default)s)")
    p.add_argument("--hide", type=float, default=0.1, help="share hidden per scheme (default %(default)s)")
    p.add_argument("--fe-dims", type=lambda s: [int(v) for v in s.split(",")], default=[2, 16],
                   help="FE sample_dim values, comma separated (default 2,16)")
    p.add_argument("--demo-top-genes", type=int, default=2000)
    p.add_argument("--tcga-samples", type=int, default=1000)
    p.add_argument("--tcga-genes", type=int, default=2000)
    p.add_argument("--tcga-steps", type=int, default=3000)
    p.add_argument("--tcga-folds", type=int, default=2)
    p.add_argument("--shift-samples", type=int, default=100)
    p.add_argument("--mem-samples", type=lambda t: [int(v) for v in t.split(",")], default=[1000, 3000],
                   help="row counts of the memory check, comma separated (default 1000,3000)")
    p.add_argument("--mem-genes", type=int, default=19962)
    p.add_argument("--mem-infer-steps", type=int, default=5, help="inference steps of the memory check "
                   "(memory does not depend on them; default %(default)s)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--svd-iter", type=int, default=100, help="most rounds of the iterative SVD (default %(default)s)")
    args = p.parse_args()
    if args.quick:
        args.fe_dims = args.fe_dims[:1]
        args.shift_samples = min(args.shift_samples, 10)
        args.svd_iter = min(args.svd_iter, 10)
    out = Tee()
    out(machine_line())
    out(f"command: {' '.join(sys.argv)}")
    t0 = time.perf_counter()
    rows, shift_rows = [], []
    from threadpoolctl import threadpool_limits
    # --quick: numpy's BLAS on one thread (its tiny SVDs are several times slower on two
    # threads of a busy machine); the full run keeps the default threads
    with threadpool_limits(limits=1, user_api="blas") if args.quick else contextlib.nullcontext():
        for ds in load_sets(args, out):
            run_set(ds, args, out, rows, shift_rows)
    mem_rows = []
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as tmp:
            mem_rows = memory_check(args, out, Path(tmp))
    tables(rows, shift_rows, out)
    pd.DataFrame(rows).to_csv(out_path(args, "impute.csv"), index=False)
    pd.DataFrame(shift_rows).to_csv(out_path(args, "impute_shift.csv"), index=False)
    pd.DataFrame(mem_rows).to_csv(out_path(args, "impute_memory.csv"), index=False)
    figure(rows, shift_rows, out_path(args, "impute.png"))
    out(f"\ntotal {time.perf_counter() - t0:.0f} s")
    out.save(out_path(args, "impute.txt"))


if __name__ == "__main__":
    main()
