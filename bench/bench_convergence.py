"""Time to quality: the reference training and the defaults (fast recipe), side by side.

For each data set, both recipes train the same model (gene_dim 100, hidden 100,50,50,
l2 1e-7, same seed) through the library's own pieces (``plan_training``, the batch
plan, ``make_optimizer``, ``train``), in segments; after each segment the clock stops
and we measure the full-data MSE (every sample x every gene, decoded from the training
embedding) and the 5-fold kNN accuracy of the label on the training embedding.  We
report each recipe's final figures, its wall time (training only), and the time the
defaults need to reach the reference's final MSE (the first evaluation point at or
below it: an upper bound), with a PNG of the curves.

Data sets: ``demo`` (bundled HSMM, 271 x 5,000), ``pbmc`` (scanpy's
``10x_pbmc68k_reduced.h5ad``, 700 x 765; give its path with ``--pbmc``), ``planted``
(:func:`_common.planted_expression`, ``--planted-n`` x ``--planted-m``, 33 groups).

    python bench/bench_convergence.py --datasets demo,pbmc --pbmc /tmp/sc/scanpy/datasets/10x_pbmc68k_reduced.h5ad
    python bench/bench_convergence.py --datasets planted --planted-n 2000 --planted-m 19962
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from _common import Tee, machine_line, out_path, parser, planted_expression, write_text


def load(name: str, args):
    if name == "demo":
        from factembed.datasets import load_demo
        from factembed.preprocessing import Preprocessing
        d = load_demo()
        _, d = Preprocessing(log10p1=False, protein_coding_only=False).fit_apply(d)
        return d.X, d.labels
    if name == "pbmc":
        import anndata
        a = anndata.read_h5ad(args.pbmc)
        return np.ascontiguousarray(a.X, dtype=np.float32), np.asarray(a.obs["bulk_labels"]).astype(str)
    if name == "planted":
        return planted_expression(args.planted_n, args.planted_m, seed=0)
    raise SystemExit(f"unknown data set {name!r}")


def knn_accuracy(Z, labels) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    return float(cross_val_score(KNeighborsClassifier(5), Z, labels, cv=5).mean())


def run(X, labels, training: str, seed: int, evals: int, quick: bool, device: str = "cpu",
        precision: str = "fp32") -> dict:
    """Train one recipe in ``evals`` segments; the curve of (step, seconds, MSE, kNN)."""
    import torch

    from factembed import FEConfig
    from factembed.model import FactorizedEmbeddingNet
    from factembed.recipes import plan_training
    from factembed.runner import batch_plan
    from factembed.train import BatchSampler, make_optimizer, resolve_device, resolve_precision, train

    n, m = X.shape
    cfg = FEConfig(training=training, gene_dim=8 if quick else 100, hidden=(16, 8) if quick else (100, 50, 50),
                   random_state=seed, device=device, precision=precision, n_steps=(40 if quick else None))
    plan = plan_training(cfg, n, m)
    gen = torch.Generator().manual_seed(seed * 1_000_003)          # as FactorizedEmbeddings.fit
    torch.manual_seed(seed)
    net = FactorizedEmbeddingNet(n, m, cfg.sample_dim, cfg.gene_dim, cfg.hidden, generator=gen)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    net.to(dev)
    gene_seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed * 1_000_003 + 2)))
    sampler = batch_plan(BatchSampler(n, plan.batch_samples, gen), m, plan, gene_seed)
    opt = make_optimizer(net, plan.lr, cfg.l2, dev, sample_lr=plan.sample_lr)
    Xt = torch.from_numpy(X).to(dev)
    marks = sorted({max(1, round(plan.n_steps * k / evals)) for k in range(1, evals + 1)})
    curve, seconds, done = [], 0.0, 0
    for step in marks:
        t0 = time.perf_counter()
        train(net, Xt, n_steps=step, lr=plan.lr, l2=cfg.l2, batch_samples=plan.batch_samples, generator=gen,
              device=dev, compute_dtype=dtype, progress=False, sampler=sampler, optimizer=opt, start_step=done)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        done = step
        with torch.no_grad():
            mse = 0.0
            for a in range(0, n, 256):                                    # evaluation: not timed
                rec = net.decode(net.sample_embedding[a:a + 256])
                mse += float(((rec.float() - Xt[a:a + 256]) ** 2).sum())
            mse /= n * m
        curve.append({"step": step, "seconds": round(seconds, 2), "mse": mse,
                      "knn": knn_accuracy(net.sample_embedding.detach().cpu().numpy(), labels)})
    return {"training": training, "plan": plan.describe(), "n_steps": plan.n_steps,
            "pairs_per_step": plan.batch_samples * (plan.batch_genes or m), "curve": curve}


def time_to(curve: list[dict], target: float) -> float | None:
    for point in curve:
        if point["mse"] <= target:
            return point["seconds"]
    return None


def plot(results: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.5), squeeze=False)
    for col, name in enumerate(names):
        for run_ in results[name]["runs"]:
            c = run_["curve"]
            style = dict(marker="o", ms=3, label=run_["training"], color="C0" if run_["training"] == "fast" else "C3")
            axes[0, col].plot([p["seconds"] for p in c], [p["mse"] for p in c], **style)
            axes[1, col].plot([p["seconds"] for p in c], [p["knn"] for p in c], **style)
        ref = results[name]["reference_final_mse"]
        axes[0, col].axhline(ref, color="0.5", lw=0.8, ls="--", label="reference final MSE")
        axes[0, col].set_title(f"{name} ({results[name]['shape'][0]:,} x {results[name]['shape'][1]:,})")
        axes[0, col].set_ylabel("full-data MSE")
        axes[1, col].set_ylabel("5-fold kNN accuracy (label)")
        axes[1, col].set_xlabel("training wall time (s)")
        axes[0, col].legend(fontsize=8, frameon=False)
    fig.suptitle("Time to quality: fast (default) vs reference training", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--datasets", default="demo,pbmc,planted")
    p.add_argument("--pbmc", default="/tmp/sc/scanpy/datasets/10x_pbmc68k_reduced.h5ad",
                   help="path of scanpy's 10x_pbmc68k_reduced.h5ad")
    p.add_argument("--planted-n", type=int, default=2000)
    p.add_argument("--planted-m", type=int, default=19_962)
    p.add_argument("--evals", type=int, default=16, help="evaluation points per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or auto")
    p.add_argument("--merge", action="store_true",
                   help="add these data sets to the convergence.json already in --out (and redraw the figure)")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.planted_n, args.planted_m, args.evals = "planted", 60, 50, 2
    say = Tee()
    say(machine_line() + f"; device {args.device}, {args.precision}")
    results = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        X, labels = load(name, args)
        runs = [run(X, labels, t, args.seed, args.evals, args.quick, args.device, args.precision)
                for t in ("reference", "fast")]
        ref, fast = runs
        target = ref["curve"][-1]["mse"]
        reach = time_to(fast["curve"], target)
        total_ref = ref["curve"][-1]["seconds"]
        results[name] = {"shape": list(X.shape), "runs": runs, "reference_final_mse": target,
                         "fast_seconds_to_reference_mse": reach,
                         "ratio_to_reference_time": None if reach is None else reach / total_ref}
        for r in runs:
            last = r["curve"][-1]
            say(f"{name}: {r['plan']}: final MSE {last['mse']:.4f}, kNN {last['knn']:.3f}, "
                  f"{last['seconds']:.1f} s")
        say(f"{name}: defaults reach the reference's final MSE {target:.4f} in "
              + (f"{reach:.1f} s = {reach / total_ref:.2f} of the reference's {total_ref:.1f} s"
                 if reach is not None else "(not reached)"))
    stem = out_path(args, "convergence")
    if args.merge and stem.with_suffix(".json").exists():
        results = {**json.loads(stem.with_suffix(".json").read_text()), **results}
    write_text(stem.with_suffix(".json"), json.dumps(results, indent=1))
    plot(results, stem.with_suffix(".png"))
    say(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    say.save(stem.with_suffix(".txt"))


if __name__ == "__main__":
    main()
