"""Survival (and regression) next to classification in one ``evaluate`` run, on real data:
GSE7390 as scikit-survival ships it (198 breast tumours, 76 genes, age, ER, grade, size,
time to distant metastasis ``t.tdm`` and its event ``e.tdm``).

Two runs on the same folds and the same embeddings (FE, PCA, UMAP at the given dimensions
plus the 76-gene profile, ``--folds``-fold CV stratified by ER status):

(a) one classification task, ER status;
(b) ER status + survival (penalised Cox, Harrell's c-index, bootstrap 95% interval over the
    pooled test folds) + regression of age.

Prints the c-index per method and dimension with its interval, the other tasks' headline
metrics and the wall time of (a) and (b) with their ratio (target: (b) < 1.10 x (a): the
embeddings, the expensive part, are computed once per cell and reused by every task).
UMAP's numba compilation is paid in a warm-up before either run is timed.

    python bench/bench_survival.py --dims 2,4,8 --folds 5 --out bench/results/survival
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def load_gse7390():
    from sksurv.datasets import load_breast_cancer

    from factembed.io import ExpressionData
    X, y = load_breast_cancer()
    clinical = ("age", "er", "grade", "size")
    genes = [c for c in X.columns if c not in clinical]
    obs = {"t.tdm": np.asarray(y["t.tdm"], float), "e.tdm": np.asarray(y["e.tdm"], bool).astype(int),
           "age": X["age"].to_numpy(float), "er": X["er"].astype(str).to_numpy(),
           "grade": X["grade"].astype(str).to_numpy()}
    return ExpressionData(X[genes].to_numpy(np.float32), [f"GSE7390_{i:03d}" for i in range(len(X))], genes,
                          obs=obs, source="sksurv.datasets.load_breast_cancer (GSE7390)")


def main(argv=None) -> int:
    import factembed
    from factembed import evaluate as ev
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="2,4,8")
    ap.add_argument("--methods", default="fe,pca,umap,full")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of the c-index interval")
    ap.add_argument("--out", default=None, help="output directory: run (b)'s tables and figures, run (a)'s in "
                    "its er_only/ subfolder (without --out neither run writes any)")
    ap.add_argument("--quick", action="store_true", help="2-D only, FE and PCA, 2 folds, 50 resamples, a short FE "
                    "fit (smoke test)")
    args = ap.parse_args(argv)
    fe_config = None
    if args.quick:
        from factembed.config import FEConfig
        args.dims, args.methods, args.folds, args.bootstrap = "2", "fe,pca", 2, 50
        fe_config = FEConfig(n_steps=30, gene_dim=8, hidden=(16, 8))
    dims = [int(d) for d in args.dims.split(",")]
    methods = args.methods.split(",")
    data = load_gse7390()
    print(f"GSE7390: {data.n_samples} tumours x {data.n_genes} genes, {int(data.obs['e.tdm'].sum())} distant "
          f"metastases; {platform.processor() or platform.machine()}, numpy {np.__version__}")
    if "umap" in methods:  # numba compilation outside the timed runs
        ev.evaluate(data, methods=["umap"], dims=[2], n_folds=2, progress=False, tasks=["classification:er"])
    kw = dict(methods=methods, dims=dims, n_folds=args.folds, seed=args.seed, progress=False,
              n_bootstrap=args.bootstrap, fe_config=fe_config)
    # both runs write their tables and figures when --out is given (what a user's run does),
    # neither does without it: the figures of the extra tasks are part of their cost
    out_a = out_b = None
    if args.out:
        out_a, out_b = Path(args.out) / "er_only", Path(args.out)
    t0 = time.perf_counter()
    a = factembed.evaluate(data, tasks=["classification:er"], output=out_a, title="GSE7390", **kw)
    t_a = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = factembed.evaluate(data, tasks=["classification:er", "survival:t.tdm,e.tdm", "regression:age"],
                           output=out_b, title="GSE7390", **kw)
    t_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    task = next(t for t in b["tasks"] if t.kind == "survival")
    factembed.evaluate.tasks.pooled_c_index(task.y, task.event, np.random.default_rng(0).normal(size=len(task.y)),
                                            n_boot=args.bootstrap)
    t_boot = time.perf_counter() - t0
    # one c-index on all patients: scikit-survival's (point estimates, folds) and the
    # bootstrap resamples' function (lifelines where installed), 300 calls each
    n_patients, t_all, e_all = len(task.y), task.y.astype(float), task.event.astype(bool)
    risk = np.random.default_rng(1).normal(size=n_patients)
    per_call = {}
    resample_fn = factembed.evaluate.tasks._resample_c_index()
    resample_lib = "scikit-survival: lifelines absent" if resample_fn is factembed.evaluate.tasks.c_index else "lifelines"
    for name, fn in (("scikit-survival", factembed.evaluate.tasks.c_index), ("resamples", resample_fn)):
        t0 = time.perf_counter()
        for _ in range(300):
            fn(t_all, e_all, risk)
        per_call[name] = (time.perf_counter() - t0) / 300
    df = b["results"]
    same = a["results"].query("task == 'er' and metric == 'logreg_accuracy'")["value"].to_numpy()
    again = df.query("task == 'er' and metric == 'logreg_accuracy'")["value"].to_numpy()
    print(f"\nthe classification rows of (b) equal those of (a): {np.allclose(same, again)}")
    print("\nsurvival:t.tdm,e.tdm: c-index of the pooled test folds [bootstrap 95% interval]")
    print(ev.interval_table(df, "survival:t.tdm,e.tdm").to_string())
    print("\nc-index per test fold (mean ± sd)")
    print(ev.metric_by_dim_table(df[df.fold >= 0], "c_index", task="survival:t.tdm,e.tdm").to_string())
    for task, metric in (("er", "logreg_accuracy"), ("er", "logreg_balanced_accuracy"), ("age", "ridge_r2"),
                         ("age", "ridge_spearman_r")):
        print(f"\n{task}: {metric}\n{ev.metric_by_dim_table(df, metric, task=task).to_string()}")
    print(f"\nwall time (a) ER only: {t_a:.1f} s; (b) ER + survival + age: {t_b:.1f} s; "
          f"ratio {t_b / t_a:.3f} (target < 1.10); the bootstrap interval of one cell ({args.bootstrap} "
          f"resamples) takes {t_boot:.2f} s, x {df.query('fold == -1')[['method', 'dim']].drop_duplicates().shape[0]} "
          f"cells")
    print(f"one c-index on {n_patients} patients (mean of 300 calls): scikit-survival "
          f"{per_call['scikit-survival'] * 1e3:.2f} ms, the bootstrap resamples' ({resample_lib}) "
          f"{per_call['resamples'] * 1e3:.2f} ms")
    if args.out:
        print(f"tables and figures of (b) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
