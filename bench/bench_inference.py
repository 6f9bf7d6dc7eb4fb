"""Seconds to embed new samples into a trained TCGA-shape model (``transform``), and
what the inference settings cost in quality.

Speed.  A model of the TCGA shape (synthetic 10,344 x 19,962 matrix, defaults: sample_dim
2, gene_dim 100, hidden 100-50-50) is trained briefly (``--train-steps``, default 500),
then 1, 100 and 2,000 new samples (held-out rows of the same generator) are embedded with
the default transform settings.  Target: < 60 s for 2,000.  The "precise" setting
(``infer_steps=200, infer_genes=2048``, the defaults before 2026-11-27) is timed on 1 and
100 samples and extrapolated to 2,000 (fixed cost + per-sample cost).

Quality.  A smaller, well-trained model (2,000 x 19,962, ``--quality-steps``, labels: the
generator's 33 "cancer types") embeds 200 held-out samples with each setting.  Measured
against an independent reference, the per-sample optimum of the *full-gene* loss found by
Levenberg-Marquardt (``factembed.estimator._inference_optimum``, no code shared with ``factembed.estimator.inference``) on the
first 50 of them: the distance of each setting's embedding to that optimum (median and 90th
percentile; also in units of the embedding's spread and of the median nearest-neighbour
distance between training samples), the full-gene MSE in excess of the optimum's (as a
fraction of the start point's excess), and the accuracy of a 15-NN classifier of the
cancer type trained on the training embedding, scored on all 200 new samples.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _common import TCGA_GENES, TCGA_SAMPLES, Tee, machine_line, out_path, parser, tcga_like, wait_for_quiet

from factembed.estimator._inference_optimum import excess_mse, full_gene_optimum, per_sample_mse
from factembed import FactorizedEmbeddings

PRECISE = (200, 2048, 2e-2)           # (infer_steps, infer_genes, infer_lr): the old defaults
SETTINGS = [  # quality table: (infer_steps, infer_genes, infer_lr)
    (0, 2048, 2e-2), PRECISE, (100, 1024, 2e-2), (50, 2048, 2e-2), (50, 512, 2e-2), (50, 512, "auto"), (50, 512, 1e-2),
    (40, 512, 1e-2), (25, 512, 1e-2), (50, 256, 1e-2)]


def timed_transform(fe: FactorizedEmbeddings, X: np.ndarray) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    Z = fe.transform(X)
    return time.perf_counter() - t, Z


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--train-steps", type=int, default=500,
                   help="training steps of the TCGA-shape model to embed into (default 500)")
    p.add_argument("--quality-steps", type=int, default=2500,
                   help="training steps of the 2,000-sample quality model (default 2500: 5 passes over the pairs)")
    p.add_argument("--training", default="fast", choices=("fast", "reference"),
                   help="training recipe of both models (default: fast, the library's default)")
    p.add_argument("--skip-speed", action="store_true", help="only the quality table")
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    q = args.quick
    n, m, n_new = (64, 256, 8) if q else (TCGA_SAMPLES, TCGA_GENES, 2000)
    out(f"other processes used {100 * wait_for_quiet(0 if q else 20):.0f}% of the CPUs before the run")
    out(f"training recipe of the models: {args.training}")
    rows: list[tuple] = []
    if not args.skip_speed:
        speed(args, out, q, n, m, n_new, rows)
    quality(args, out, q, rows)


def speed(args, out, q, n, m, n_new, rows) -> None:
    X_all = tcga_like(n + n_new, m)
    X, X_new = X_all[:n], X_all[n:]
    fe = FactorizedEmbeddings(n_steps=5 if q else args.train_steps, random_state=0, verbose=False, device="cpu",
                              training=args.training)
    t = time.perf_counter()
    fe.fit(X)
    out(f"trained a {n} x {m} model for {fe.n_steps_} steps in {time.perf_counter() - t:.0f} s")
    defaults = (fe.infer_steps, fe.infer_genes, fe.infer_lr)
    rows = []
    out(f"default settings (infer_steps={fe.infer_steps}, infer_genes={fe.infer_genes}, "
        f"infer_lr={fe.infer_lr}, init_genes={fe.init_genes}):")
    for k in (1, 100, n_new):
        s, _ = timed_transform(fe, X_new[:k])
        rows.append(("default",) + defaults + (k, s))
        out(f"  {k:5d} new samples: {s:8.2f} s  ({1e3 * s / k:7.1f} ms/sample)")
    out(f"  {n_new} samples in {s:.1f} s: " + ("meets" if s < 60 else "MISSES") + " the < 60 s target")
    if not q:
        fe.set_params(infer_steps=PRECISE[0], infer_genes=PRECISE[1], infer_lr=PRECISE[2])
        (t1, k1), (t100, k100) = [(timed_transform(fe, X_new[:k])[0], k) for k in (1, 100)]
        slope = max(0.0, (t100 - t1) / (k100 - k1))
        pred = t1 + slope * (n_new - k1)
        rows.append(("precise-extrapolated",) + PRECISE + (n_new, pred))
        out(f"precise settings {PRECISE[:2]}: 1 sample {t1:.1f} s, 100 samples {t100:.1f} s -> {n_new} samples "
            f"~{pred:.0f} s (extrapolated: {t1:.1f} s + {slope:.3f} s/sample)")


def quality(args, out, q, rows) -> None:
    """Quality against the full-gene optimum."""
    nq, mq, n_q, n_ref = (64, 256, 16, 8) if q else (2000, TCGA_GENES, 200, 50)
    Xq, labels = tcga_like(nq + n_q, mq, return_labels=True, seed=1)
    fe_q = FactorizedEmbeddings(n_steps=5 if q else args.quality_steps, random_state=0, verbose=False, device="cpu",
                                training=args.training)
    t = time.perf_counter()
    fe_q.fit(Xq[:nq])
    E = fe_q.embedding_
    spread = float(np.median(np.linalg.norm(E - np.median(E, 0), axis=1)))
    d2 = ((E[:, None, :] - E[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nn_dist = float(np.median(np.sqrt(d2.min(1))))
    plan = fe_q.training_plan_
    passes = fe_q.n_steps_ * plan.batch_samples * (plan.batch_genes or mq) / (nq * mq)
    out(f"quality model: {nq} x {mq}, {plan.describe()}, {fe_q.n_steps_} steps ({passes:.1f} passes) in "
        f"{time.perf_counter() - t:.0f} s, final batch r {np.mean(fe_q.history_['pearson_r'][-50:]):.3f}; "
        f"embedding spread (median distance to the median point) {spread:.4f}, median nearest-neighbour "
        f"distance {nn_dist:.4f}")
    X_q, y_q = Xq[nq:], labels[nq:]
    from sklearn.neighbors import KNeighborsClassifier
    knn = KNeighborsClassifier(15).fit(E, labels[:nq])
    defaults = (fe_q.infer_steps, fe_q.infer_genes, fe_q.infer_lr)
    results = {}
    for steps, genes, lr in SETTINGS:
        fe_q.set_params(infer_steps=steps, infer_genes=genes, infer_lr=lr)
        s, Z = timed_transform(fe_q, X_q)
        results[(steps, genes, lr)] = (s, Z)
    t = time.perf_counter()
    start = torch.from_numpy(results[PRECISE][1][:n_ref])
    Z_ref, f_ref = full_gene_optimum(fe_q.net_, start, torch.from_numpy(X_q[:n_ref]))
    Z_ref, f_ref = Z_ref.numpy(), f_ref.numpy()
    f_init = per_sample_mse(fe_q, results[SETTINGS[0]][1][:n_ref], X_q[:n_ref])
    out(f"reference: Levenberg-Marquardt on all {mq} genes for the first {n_ref} new samples "
        f"({time.perf_counter() - t:.0f} s)")
    out(f"{'infer_steps':>11s} {'genes':>5s} {'lr':>6s} | {'ms/sample':>9s} | {'dist median':>11s} {'p90':>7s} "
        f"{'(% spread, NN units)':>20s} | {'excess MSE':>10s} | {'15-NN acc':>9s}")
    for (steps, genes, lr), (s, Z) in results.items():
        d = np.linalg.norm(Z[:n_ref] - Z_ref, axis=1)
        excess = excess_mse(per_sample_mse(fe_q, Z[:n_ref], X_q[:n_ref]), f_ref, f_init)
        acc = knn.score(Z, y_q)
        med, p90 = float(np.median(d)), float(np.percentile(d, 90))
        tag = " (default)" if (steps, genes, lr) == defaults else (" (start point only)" if steps == 0 else "")
        lr_text = lr if isinstance(lr, str) else format(lr, ".3g")
        out(f"{steps:11d} {genes:5d} {lr_text:>6s} | {1e3 * s / len(X_q):9.1f} | {med:11.4f} {p90:7.4f} "
            f"({100 * med / spread:5.1f}%, {med / nn_dist:4.2f} NN) | {excess:10.1%} | {acc:9.3f}{tag}")
        rows.append(("quality", steps, genes, lr, len(X_q), s, med, p90, excess, acc))
    stem = "inference" if args.training == "fast" else f"inference_{args.training}"
    with open(out_path(args, f"{stem}.csv"), "w") as f:
        header = "kind,infer_steps,infer_genes,infer_lr,n_new,seconds,dist_median,dist_p90,excess_mse,knn_acc"
        f.write(header + "\n")
        for r in rows:   # timing rows have no quality columns: left empty
            f.write(",".join(str(v) for v in r + ("",) * (header.count(",") + 1 - len(r))) + "\n")
    out.save(out_path(args, f"{stem}.txt"))


if __name__ == "__main__":
    main()
