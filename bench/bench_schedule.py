"""Held-out quality of training configurations on the same folds: the defaults (trained
until converged), the study's training, and fits of explicit length with
``lr_schedule="anneal"``, side by side.

For each configuration (``--configs``: a JSON list of :class:`FEConfig` fields; ``{}`` is
the defaults) and each of ``--folds`` stratified folds, FE is fitted on the training
samples (``sample_dim`` = each of ``--dims``) and the test fold is embedded by
``transform``; we report, mean and sd over the folds: the steps trained, the fit's wall
time, the training matrix's MSE (every observed entry, decoded from the training
embedding), the test fold's 5-NN accuracy (neighbours among the training embedding) and
the Pearson r between the test samples' distances in the embedding and in expression over
2,000 sampled pairs (the metrics of ``factembed evaluate``), and each configuration's time
as a multiple of the first configuration's.

    python bench/bench_schedule.py --dataset khan --dims 2,8 \\
        --configs '[{"training": "reference"}, {}, {"n_steps": 500, "lr_schedule": "anneal"}]'
    python bench/bench_schedule.py --dataset planted --planted-n 100 --planted-m 12000 --planted-groups 4 ...

Data sets as in ``bench_convergence.py`` (``khan``, ``demo``, ``pbmc``, ``planted``).
"""

from __future__ import annotations

import json
import time

import numpy as np

from _common import Tee, machine_line, out_path, parser, planted_expression, write_text


def load(args):
    if args.dataset == "planted":
        return planted_expression(args.planted_n, args.planted_m, n_groups=args.planted_groups, seed=0)
    from bench_convergence import load as load_named
    return load_named(args.dataset, args)


def score(X_tr, X_te, y_tr, y_te, cfg, seed: int) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    from factembed import FactorizedEmbeddings
    from factembed.evaluate.comparison import fill_with_train_means, pair_distances, sample_pairs
    from factembed.evaluate.embedders import pearson_r

    missing = "ignore" if np.isnan(X_tr).any() or np.isnan(X_te).any() else "error"
    est = FactorizedEmbeddings.from_config(cfg)
    t0 = time.perf_counter()
    est.fit(X_tr, missing=missing)
    seconds = time.perf_counter() - t0
    rec = est.inverse_transform(est.embedding_)
    seen = ~np.isnan(X_tr)
    Z_te = est.transform(X_te, missing=missing)
    F_tr, F_te = fill_with_train_means(X_tr, X_te) if missing == "ignore" else (X_tr, X_te)
    pairs = sample_pairs(len(X_te), 2000, seed=seed)
    return {"steps": est.n_steps_, "seconds": seconds,
            "train_mse": float(np.mean((rec[seen] - X_tr[seen]) ** 2)),
            "knn": float(KNeighborsClassifier(min(5, len(X_tr) - 1)).fit(est.embedding_, y_tr).score(Z_te, y_te)),
            "distance_r": pearson_r(pair_distances(F_te, pairs), pair_distances(Z_te, pairs))}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--dataset", default="khan", help="khan, demo, pbmc or planted")
    p.add_argument("--pbmc", default="/tmp/sc/scanpy/datasets/10x_pbmc68k_reduced.h5ad")
    from pathlib import Path
    p.add_argument("--khan", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--planted-n", type=int, default=100)
    p.add_argument("--planted-m", type=int, default=12_000)
    p.add_argument("--planted-groups", type=int, default=33)
    p.add_argument("--dims", default="2")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--configs", type=json.loads,
                   default=[{"training": "reference"}, {}, {"n_steps": 500, "lr_schedule": "anneal"}])
    args = p.parse_args()
    import pandas as pd

    from factembed import FEConfig
    from factembed.evaluate.tasks import make_folds

    if args.quick:       # a tiny planted matrix (no data files needed), two short fits
        args.dataset, args.planted_n, args.planted_m, args.planted_groups = "planted", 30, 200, 3
        args.configs = [{"n_steps": 40}, {"n_steps": 40, "lr_schedule": "anneal"}]
    X, y = load(args)
    out = Tee()
    out(machine_line())
    out(f"{args.dataset}: {X.shape[0]} x {X.shape[1]}, {args.folds} folds, dims {args.dims}")
    folds = make_folds(np.asarray(y), args.folds, 0)
    # a few steps first: the process's one-time costs (the first Adam imports torch._dynamo,
    # ~1 s) out of the first configuration's clock
    score(X[folds[0][0]], X[folds[0][1]], y[folds[0][0]], y[folds[0][1]],
          FEConfig(n_steps=5, verbose=False, random_state=0), seed=0)
    rows = []
    for c, options in enumerate(args.configs):
        for dim in (int(d) for d in args.dims.split(",")):
            for f, (tr, te) in enumerate(folds):
                cfg = FEConfig(**{"sample_dim": dim, "verbose": False, "random_state": f, **options})
                r = score(X[tr], X[te], y[tr], y[te], cfg, seed=f)
                rows.append({"config": c, "options": json.dumps(options), "dim": dim, "fold": f, **r})
                out(f"  {json.dumps(options)} dim {dim} fold {f}: {r['steps']} steps, {r['seconds']:.1f} s, "
                    f"train MSE {r['train_mse']:.4f}, kNN {r['knn']:.3f}, distance r {r['distance_r']:.3f}")
    df = pd.DataFrame(rows)
    base = df[df.config == 0].groupby("dim")["seconds"].mean()
    out("\n| configuration | dim | steps | seconds (x first) | train MSE | test kNN | test distance r |")
    out("|---|---|---|---|---|---|---|")
    for (c, dim), g in df.groupby(["config", "dim"]):
        ms = {k: (g[k].mean(), g[k].std()) for k in ("steps", "seconds", "train_mse", "knn", "distance_r")}
        out(f"| `{g.options.iloc[0]}` | {dim} | {ms['steps'][0]:.0f} | {ms['seconds'][0]:.1f} "
            f"({ms['seconds'][0] / base[dim]:.2f}x) | {ms['train_mse'][0]:.4f} +- {ms['train_mse'][1]:.4f} | "
            f"{ms['knn'][0]:.3f} +- {ms['knn'][1]:.3f} | {ms['distance_r'][0]:.3f} +- {ms['distance_r'][1]:.3f} |")
    name = "schedule" if args.quick else \
        f"schedule_{args.dataset}" + (f"_{args.planted_n}x{args.planted_m}" if args.dataset == "planted" else "")
    df.to_csv(out_path(args, name + ".csv"), index=False)
    write_text(out_path(args, name + ".txt"), "\n".join(out.lines) + "\n")


if __name__ == "__main__":
    main()
