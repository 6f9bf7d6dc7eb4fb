"""Time to quality: the reference training and the defaults (fast recipe), side by side.

For each data set, both recipes train the same model (gene_dim 100, hidden 100,50,50,
l2 1e-7, same seed) through the library's own pieces (``plan_training``, the batch
plan, ``make_optimizer``, ``train``), in segments; after each segment the clock stops
and we measure the full-data MSE (every sample x every gene, decoded from the training
embedding) and the 5-fold kNN accuracy of the label on the training embedding.  We
report each recipe's final figures, its wall time (training only), and the time the
defaults need to reach the reference's final MSE (the first evaluation point at or
below it: an upper bound), with a PNG of the curves.

The defaults (``training="fast"``, ``n_steps="auto"``) are trained by
``FactorizedEmbeddings.fit`` itself, held-out validation entries and stop rule included:
they are measured once, at the step where the rule stopped them (steps, why, wall time
from the fit's own clock, full-data MSE, held-out validation MSE, kNN), with their
validation curve against wall time in the figure.  ``--fast-options '{"n_steps": N}'``
trains the fast recipe for exactly N steps instead, in segments like the reference.

Data sets: ``khan`` (``../shared/data/khan_*``, 63 x 2,308 SRBCT microarrays, 4 classes,
1,282 NAs, left out of the loss and of the MSE), ``demo`` (bundled HSMM, 271 x 5,000),
``pbmc`` (scanpy's ``10x_pbmc68k_reduced.h5ad``, 700 x 765; give its path with
``--pbmc``), ``planted`` (:func:`_common.planted_expression`, ``--planted-n`` x
``--planted-m``, 33 groups).

    python bench/bench_convergence.py --datasets khan,demo,pbmc --pbmc /tmp/sc/scanpy/datasets/10x_pbmc68k_reduced.h5ad
    python bench/bench_convergence.py --datasets planted --planted-n 2000 --planted-m 19962

The full-size run (10,344 x 19,962): the reference's 100,000 steps take ~1.5 h on 2 cores,
so ``--reference-steps 5000`` trains it for its first 5,000 steps only; its time is then
extrapolated to the plan's steps (measured seconds per step x plan steps) and the target
becomes the reference's MSE at its last measured step (printed as such):

    python bench/bench_convergence.py --datasets planted --planted-n 10344 --reference-steps 5000 \
        --reference-evals 4 --evals 10 --merge --key planted_full
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from _common import RecipeTraining, Tee, machine_line, out_path, parser, planted_expression, scaled_batch, write_text


def load(name: str, args):
    if name == "khan":
        import pandas as pd
        from pathlib import Path
        root = Path(args.khan)
        X = pd.read_csv(root / "khan_expr.csv.gz", index_col=0)
        pheno = pd.read_csv(root / "khan_pheno.csv", index_col=0)
        return np.ascontiguousarray(X.to_numpy(np.float32)), pheno.loc[X.index, "class"].astype(str).to_numpy()
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
    """5-fold accuracy of a 5-NN classifier of the labels (the library's, as the CLI prints it)."""
    from factembed.evaluate.tasks import knn_accuracy as library_knn
    return library_knn(Z, labels)[0]


def run(X, labels, training: str, seed: int, evals: int, quick: bool, device: str = "cpu",
        precision: str = "fp32", max_steps: int | None = None, say=print, options: dict | None = None) -> dict:
    """Train one recipe in ``evals`` segments; the curve of (step, seconds, MSE, kNN).
    ``max_steps``: stop after that many of the plan's steps (the plan is unchanged);
    ``options``: more :class:`FEConfig` fields (e.g. ``batch_samples``, ``n_steps``)."""
    import torch

    from factembed import FEConfig

    n, m = X.shape
    fields = dict(training=training, gene_dim=8 if quick else 100, hidden=(16, 8) if quick else (100, 50, 50),
                  random_state=seed, device=device, precision=precision, n_steps=(40 if quick else None))
    cfg = FEConfig(**{**fields, **(options or {})})
    fit = RecipeTraining(X, cfg)
    plan, net, Xt = fit.plan, fit.net, fit.X
    steps = plan.n_steps if max_steps is None else min(plan.n_steps, int(max_steps))
    marks = sorted({max(1, round(steps * k / evals)) for k in range(1, evals + 1)})
    curve, seconds, eval_seconds = [], 0.0, 0.0
    for step in marks:
        seconds += fit.advance(step)
        t1 = time.perf_counter()
        mse = full_mse(net, Xt)                                              # evaluation: not timed
        curve.append({"step": step, "seconds": round(seconds, 2), "mse": mse,
                      "knn": knn_accuracy(net.sample_embedding.detach().cpu().numpy(), labels)})
        eval_seconds += time.perf_counter() - t1
        say(f"  {training}: step {step:,}/{steps:,}  {seconds:8.1f} s  MSE {mse:.4f}  "
            f"kNN {curve[-1]['knn']:.3f}  (evaluation {time.perf_counter() - t1:.0f} s, not timed)")
    out = {"training": training, "plan": plan.describe(), "n_steps": plan.n_steps,
           "pairs_per_step": fit.pairs_per_step, "curve": curve,
           "evaluation_seconds": round(eval_seconds, 1)}
    if steps < plan.n_steps:
        out["measured_steps"] = steps
        out["extrapolated_seconds"] = round(seconds / steps * plan.n_steps, 1)
    return out


def full_mse(net, Xt) -> float:
    """MSE of the decoded training embedding over every observed (sample, gene) entry."""
    import torch
    total, count = 0.0, 0
    with torch.no_grad():
        for a in range(0, Xt.shape[0], 256):
            x = Xt[a:a + 256]
            seen = ~torch.isnan(x)
            rec = net.decode(net.sample_embedding[a:a + 256]).float()
            total += float((((rec - x.nan_to_num()) ** 2) * seen).sum())
            count += int(seen.sum())
    return total / max(1, count)


def run_auto(X, labels, seed: int, quick: bool, device: str = "cpu", precision: str = "fp32",
             say=print, options: dict | None = None) -> dict:
    """The defaults as a user gets them: ``FactorizedEmbeddings(...).fit`` with
    ``n_steps="auto"`` (validation entries, stop rule), measured at its end."""
    import torch

    from factembed import FactorizedEmbeddings

    fields = dict(gene_dim=8 if quick else 100, hidden=(16, 8) if quick else (100, 50, 50), random_state=seed,
                  device=device, precision=precision, n_steps="auto", verbose=False)
    fe = FactorizedEmbeddings(**{**fields, **(options or {})})
    fe.fit(X, missing="ignore" if np.isnan(X).any() else "error")
    h = fe.history_
    seconds = h["seconds"][-1]
    Xt = torch.from_numpy(X).to(fe.net_.sample_embedding.device)
    point = {"step": fe.n_steps_, "seconds": round(seconds, 2), "mse": full_mse(fe.net_, Xt),
             "knn": knn_accuracy(fe.embedding_, labels)}
    val = fe.validation_ or {}
    say(f"  fast (auto): {fe.n_steps_:,} steps  {seconds:8.1f} s  MSE {point['mse']:.4f}  kNN {point['knn']:.3f}  "
        f"validation MSE {val.get('mse', float('nan')):.4f}; {fe.stop_reason_}")
    sec = dict(zip(h["step"], h["seconds"]))
    return {"training": "fast", "plan": fe.training_plan_.describe(), "n_steps": fe.n_steps_,
            "pairs_per_step": fe.training_plan_.batch_samples * (fe.training_plan_.batch_genes or X.shape[1]),
            "curve": [point], "stop_reason": fe.stop_reason_, "validation": val,
            "val_curve": [{"step": s, "seconds": round(sec.get(s, float("nan")), 2), "val_mse": v}
                          for s, v in zip(h.get("val_step", []), h.get("val_loss", []))]}


def time_to(curve: list[dict], target: float) -> float | None:
    for point in curve:
        if point["mse"] <= target:
            return point["seconds"]
    return None


def plot(results: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [k for k in results if "reference_final_mse" in results[k]]      # finished comparisons only
    if not names:                       # one recipe alone (--recipes fast): its figures are in the text
        return False
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.5), squeeze=False)
    for col, name in enumerate(names):
        for run_ in results[name]["runs"]:
            c = run_["curve"]
            label = run_["training"] + (f" (first {run_['measured_steps']:,} of {run_['n_steps']:,} steps)"
                                        if "measured_steps" in run_ else "")
            style = dict(marker="o", ms=3, label=label, color="C0" if run_["training"] == "fast" else "C3")
            if "val_curve" in run_:        # the defaults: one end point, and their validation curve
                style.update(marker="*", ms=11, label="fast, n_steps='auto' (end)")
                vc = run_["val_curve"]
                axes[0, col].plot([p["seconds"] for p in vc], [p["val_mse"] for p in vc], color="C1", lw=1,
                                  label="fast: held-out validation MSE")
            axes[0, col].plot([p["seconds"] for p in c], [p["mse"] for p in c], **style)
            axes[1, col].plot([p["seconds"] for p in c], [p["knn"] for p in c], **style)
        ref = results[name]["reference_final_mse"]
        measured = results[name]["runs"][0].get("measured_steps")
        axes[0, col].axhline(ref, color="0.5", lw=0.8, ls="--",
                             label=f"reference MSE at step {measured:,}" if measured else "reference final MSE")
        axes[0, col].set_title(f"{name} ({results[name]['shape'][0]:,} x {results[name]['shape'][1]:,})")
        axes[0, col].set_ylabel("full-data MSE")
        axes[1, col].set_ylabel("5-fold kNN accuracy (label)")
        axes[1, col].set_xlabel("training wall time (s)")
        axes[0, col].legend(fontsize=8, frameon=False)
    fig.suptitle("Time to quality: fast (default) vs reference training", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--datasets", default="demo,pbmc,planted")
    p.add_argument("--pbmc", default="/tmp/sc/scanpy/datasets/10x_pbmc68k_reduced.h5ad",
                   help="path of scanpy's 10x_pbmc68k_reduced.h5ad")
    p.add_argument("--khan", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                   help="folder holding khan_expr.csv.gz and khan_pheno.csv")
    p.add_argument("--planted-n", type=int, default=2000)
    p.add_argument("--planted-m", type=int, default=19_962)
    p.add_argument("--evals", type=int, default=16, help="evaluation points per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or auto")
    p.add_argument("--merge", action="store_true",
                   help="add these data sets to the convergence.json already in --out (and redraw the figure)")
    p.add_argument("--reference-steps", type=int, default=None,
                   help="train the reference for only its first N steps and extrapolate its time")
    p.add_argument("--reference-evals", type=int, default=None, help="evaluation points of the reference run")
    p.add_argument("--recipes", default="reference,fast",
                   help="which trainings to run: reference,fast (both, compared) or one of them alone "
                        "(e.g. fast with --precision bf16, for a precision check)")
    p.add_argument("--key", default=None, help="name of the (single) data set in the results (e.g. planted_full)")
    p.add_argument("--fast-options", type=json.loads, default=None,
                   help='JSON of FEConfig fields for the defaults\' run, to try a variant, '
                        'e.g. \'{"batch_samples": 16, "batch_genes": 312, "n_steps": 5429}\'')
    p.add_argument("--pairs-scale", type=float, default=None,
                   help="the defaults' batch with this many times their pairs per step (both sides x its square "
                        "root, from each data set's shape; --fast-options fields win), e.g. 4 for a GPU recipe")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.planted_n, args.planted_m, args.evals = "planted", 60, 50, 2
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not recipes or set(recipes) - {"reference", "fast"} or len(set(recipes)) < len(recipes):
        raise SystemExit(f"--recipes: reference, fast or reference,fast, got {args.recipes!r}")
    recipes = [r for r in ("reference", "fast") if r in recipes]
    say = Tee()
    say(machine_line() + f"; device {args.device}, {args.precision}")
    stem = out_path(args, "convergence")
    previous = (json.loads(stem.with_suffix(".json").read_text())
                if args.merge and stem.with_suffix(".json").exists() else {})
    results = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        key = args.key or name
        X, labels = load(name, args)
        say(f"{key}: {X.shape[0]:,} x {X.shape[1]:,}")
        runs = []
        fast_options = args.fast_options
        if args.pairs_scale is not None:
            fast_options = {**scaled_batch(*X.shape, args.pairs_scale), **(fast_options or {})}
        for t in recipes:
            if t == "fast" and "n_steps" not in (fast_options or {}):
                runs.append(run_auto(X, labels, args.seed, args.quick, args.device, args.precision, say=say,
                                     options=fast_options))
            else:
                runs.append(run(X, labels, t, args.seed,
                                (args.reference_evals or args.evals) if t == "reference" else args.evals,
                                args.quick, args.device, args.precision,
                                max_steps=args.reference_steps if t == "reference" else None, say=say,
                                options=None if t == "reference" else fast_options))
            # nothing lost if a long run dies: the finished runs are on disk
            write_text(stem.with_suffix(".json"), json.dumps({**previous, **results, key: {
                "shape": list(X.shape), "runs": runs, "partial": True}}, indent=1))
        if len(runs) == 1:                  # one recipe alone: its figures, no comparison
            r, last = runs[0], runs[0]["curve"][-1]
            results[key] = {"shape": list(X.shape), "runs": runs, "precision": args.precision}
            say(f"{key}: {r['plan']}: MSE at step {last['step']:,} {last['mse']:.4f}, kNN {last['knn']:.3f}, "
                f"{last['seconds']:.1f} s ({args.precision})")
            continue
        ref, fast = runs
        target = ref["curve"][-1]["mse"]
        reach = time_to(fast["curve"], target)
        total_ref = ref.get("extrapolated_seconds", ref["curve"][-1]["seconds"])
        results[key] = {"shape": list(X.shape), "runs": runs, "precision": args.precision,
                        "reference_final_mse": target,
                        "fast_seconds_to_reference_mse": reach,
                        "ratio_to_reference_time": None if reach is None else reach / total_ref}
        for r in runs:
            last = r["curve"][-1]
            extra = (f" (first {r['measured_steps']:,} steps of {r['n_steps']:,}; all of them: "
                     f"{r['extrapolated_seconds']:.0f} s extrapolated)" if "measured_steps" in r else "")
            at = f"MSE at step {last['step']:,}" if "measured_steps" in r else "final MSE"
            why = (f"; stopped after {r['n_steps']:,} steps: {r['stop_reason']}; held-out validation MSE "
                   f"{r['validation'].get('mse', float('nan')):.4f}" if r.get("stop_reason") else "")
            say(f"{key}: {r['plan']}: {at} {last['mse']:.4f}, kNN {last['knn']:.3f}, "
                f"{last['seconds']:.1f} s{extra}{why}")
        say(f"{key}: time ratio defaults / reference: {fast['curve'][-1]['seconds'] / total_ref:.3f}; "
            f"final MSE ratio {fast['curve'][-1]['mse'] / target:.3f}; kNN difference "
            f"{fast['curve'][-1]['knn'] - ref['curve'][-1]['knn']:+.3f}")
        what = (f"MSE at its step {ref['measured_steps']:,}" if "measured_steps" in ref else "final MSE")
        say(f"{key}: defaults reach the reference's {what} {target:.4f} in "
            + (f"{reach:.1f} s = {reach / total_ref:.3f} of the reference's {total_ref:.1f} s"
               + (" (extrapolated)" if "measured_steps" in ref else "")
               if reach is not None else "(not reached)"))
    results = {**previous, **results}
    write_text(stem.with_suffix(".json"), json.dumps(results, indent=1))
    drawn = plot(results, stem.with_suffix(".png"))
    say(f"wrote {stem.with_suffix('.json')}" + (f" and {stem.with_suffix('.png')}" if drawn else ""))
    say.save(stem.with_suffix(".txt"))


if __name__ == "__main__":
    main()
