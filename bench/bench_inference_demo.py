"""Inference settings on real data: held-out cells of the bundled HSMM demo.

Fits the demo (271 cells x 5,000 genes, log10(FPKM + 1)) on 4 of 5 stratified folds
(defaults, seed 0, automatic step count), embeds the held-out fold with several inference
settings, and compares each with an independent reference, the per-cell optimum of the
full-gene loss (Levenberg-Marquardt, ``factembed.estimator._inference_optimum``): median distance (also as a
share of the training embedding's spread), the full-gene MSE in excess of the optimum's
(as a share of the start point's excess), and the accuracy of a 5-NN classifier of the
time point trained on the training embedding.  Repeated over all 5 folds.

    python bench/bench_inference_demo.py [--training fast|reference] [--settings 100:512:0.01,50:512:0.02]

``--settings`` adds inference settings (steps:genes:lr) to the four always measured.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

from _common import Tee, machine_line, out_path, parser

from factembed.estimator._inference_optimum import excess_mse, full_gene_optimum, per_sample_mse
from factembed import FactorizedEmbeddings
from factembed.datasets import load_demo

SETTINGS = [(0, 2048, 2e-2), (200, 2048, 2e-2), (50, 512, "auto"), (50, 512, 1e-2)]
NAMES = {SETTINGS[0]: "start point only", SETTINGS[1]: "200 x 2048, lr 0.02 (precise)",
         SETTINGS[2]: "50 x 512, lr auto (defaults)", SETTINGS[3]: "50 x 512, lr 0.01 (defaults before)"}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--training", default="fast", choices=("fast", "reference"),
                   help="recipe of the fitted models: fast (default) or reference")
    p.add_argument("--settings", default="", help="more inference settings, steps:genes:lr,...")
    args = p.parse_args()
    settings = list(SETTINGS)
    for item in filter(None, (t.strip() for t in args.settings.split(","))):
        steps, genes, lr = item.split(":")
        st = (int(steps), int(genes), lr if lr == "auto" else float(lr))
        settings.append(st)
        NAMES[st] = f"{st[0]} x {st[1]}, lr {st[2]}"
    out = Tee()
    out(machine_line() + f"; models: training={args.training}")
    data = load_demo()
    X, y = data.X.astype(np.float32), np.asarray(data.labels)
    n_folds = 2 if args.quick else 5
    if args.quick:
        X = X[:, :300]
    rows = []
    for fold, (tr, te) in enumerate(StratifiedKFold(n_folds, shuffle=True, random_state=0).split(X, y)):
        fe = FactorizedEmbeddings(random_state=0, verbose=False, device="cpu", training=args.training,
                                  n_steps=20 if args.quick else None)
        t = time.perf_counter()
        fe.fit(X[tr])
        E = fe.embedding_
        spread = float(np.median(np.linalg.norm(E - np.median(E, 0), axis=1)))
        knn = KNeighborsClassifier(5).fit(E, y[tr])
        out(f"fold {fold}: trained on {len(tr)} cells, {fe.n_steps_} steps, {time.perf_counter() - t:.0f} s; "
            f"embedding spread {spread:.4f}")
        Z = {}
        for steps, genes, lr in settings:
            fe.set_params(infer_steps=steps, infer_genes=genes, infer_lr=lr)
            t = time.perf_counter()
            Z[(steps, genes, lr)] = (fe.transform(X[te]), time.perf_counter() - t)
        Z_ref, f_ref = full_gene_optimum(fe.net_, torch.from_numpy(Z[SETTINGS[1]][0]), torch.from_numpy(X[te]))
        Z_ref, f_ref = Z_ref.numpy(), f_ref.numpy()
        f0 = per_sample_mse(fe, Z[SETTINGS[0]][0], X[te])
        for st in settings:
            Zs, s = Z[st]
            d = float(np.median(np.linalg.norm(Zs - Z_ref, axis=1)))
            excess = excess_mse(per_sample_mse(fe, Zs, X[te]), f_ref, f0)
            acc = knn.score(Zs, y[te])
            rows.append((fold,) + st + (s, d, d / spread, excess, acc))
            out(f"  {NAMES[st]:36s}: {s:6.2f} s, median distance to the optimum {d:.4f} ({d / spread:5.1%} of "
                f"spread), excess MSE {excess:6.1%}, 5-NN accuracy {acc:.3f}")
    out("mean over folds:")
    arr = np.array([r[4:] for r in rows], dtype=float).reshape(n_folds, len(settings), -1)
    for i, st in enumerate(settings):
        m = arr[:, i].mean(0)
        out(f"  {NAMES[st]:36s}: {m[0]:6.2f} s, distance {m[1]:.4f} ({m[2]:5.1%} of spread), "
            f"excess MSE {m[3]:6.1%}, 5-NN accuracy {m[4]:.3f} (sd {arr[:, i, 4].std():.3f})")
    with open(out_path(args, "inference_demo.csv"), "w") as f:
        f.write("fold,infer_steps,infer_genes,infer_lr,seconds,dist_median,dist_over_spread,excess_mse,knn_acc\n")
        for r in rows:
            f.write(",".join(str(v) for v in r) + "\n")
    out.save(out_path(args, "inference_demo.txt"))


if __name__ == "__main__":
    main()
