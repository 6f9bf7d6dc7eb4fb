"""Known covariates: does a batch covariate take the batch out of the embedding, keep the
biology, and correct the matrix?  Planted batches on planted and real matrices.

Designs (``factembed.planted.plant_batches``: per-batch, per-gene shifts and scales, so
the batch-free matrix is known):

* ``planted``: 4 planted groups, 2 batches, balanced;
* ``confounded``: the same, 80% of each group in its "home" batch (``confounding=0.6``);
* ``khan``: the 63 SRBCT tumours (4 classes) taken as batch-free, 2 balanced batches with
  shifts of 1.5 gene sds (``relative=True``); ``demo``: the HSMM cells (4 time points), likewise.

Each design is split once into training and test samples (a quarter, stratified by
group).  Methods, all 2-D: FE on the batch-free matrix (the target), FE on the batched
matrix without and with ``covariates={"batch": ...}``, PCA, ComBat (``scanpy.pp.combat``
on all samples) then PCA, and Harmony on 10 PCs (``harmonypy``, where installed).  Test
samples are embedded out of sample (FE ``transform`` with their batch; PCA fitted on the
training samples).  Metrics on the test samples:

* ``label_knn``: 5-NN accuracy of the group from the training embedding;
* ``batch_knn``: 5-NN accuracy of the batch from the training samples *of the same group*
  (what a batch still explains once the biology is fixed), beside its chance level (the
  majority batch's share within each group); near chance = mixed;
* ``rmse``: the corrected matrix against the batch-free one (per-gene centred, since which
  batch is "the truth" is a convention): FE decodes every sample at batch 0 (a smooth
  matrix: the model's reconstruction error counts too) and, ``rmse_residuals_kept``, takes
  the decoder's batch difference off the measurements (``X + decode(z, b0) - decode(z, own
  batch)``); ComBat's output is its own; the input's figure is the baseline.

Then a batch the model never saw: a third batch planted on the ``planted`` design, fitted
on two, its samples embedded by ``transform`` (the default ``unseen="learn"``) from 5, 10 and
20 (medians of 4 random draws) and from all of them, against passing a known batch instead; ``gap``: distance of the new samples'
group centroids to the training ones, in within-group sds (held-out samples of the seen
batches give the level to reach).  And the cost: seconds per training step with and without
a covariate, after a warm-up fit, interleaved rounds (``--cost-rounds``, median), at
``--cost-shape`` (TCGA's genes); the seconds from a fifth of the run to its last step.

    python bench/bench_covariates.py                  # every design, ~10 min on 2 cores
    python bench/bench_covariates.py --designs planted,khan --no-cost
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from _common import machine_line, out_path, parser, write_text

DESIGNS = ("planted", "confounded", "khan", "demo")


def load_design(name: str, quick: bool, data_dir: Path):
    """``(clean matrix, groups, planted batches)`` of a design."""
    from factembed.planted import make_planted, plant_batches
    if name in ("planted", "confounded"):
        n, m = (120, 200) if quick else (400, 2000)
        P = make_planted(n, m, n_groups=4, latent_dim=3, scatter=0.15, loading_sd=1.0, base=None, noise=0.1,
                         clip=False, balanced=True, seed=0)
        clean, groups = P.X, P.labels.astype(str)
        B = plant_batches(clean, 2, groups=groups, confounding=0.6 if name == "confounded" else 0.0, seed=1)
        return clean, groups, B
    import pandas as pd
    if name == "khan":
        X = pd.read_csv(data_dir / "khan_expr.csv.gz", index_col=0)
        pheno = pd.read_csv(data_dir / "khan_pheno.csv", index_col=0)
        clean = X.to_numpy(np.float32)
        clean = np.where(np.isnan(clean), np.nanmean(clean, 0), clean).astype(np.float32)  # its NAs: gene means
        groups = pheno.loc[X.index, "class"].astype(str).to_numpy()
    else:
        from factembed.datasets import load_demo
        d = load_demo()
        clean, groups = d.X.astype(np.float32), np.asarray(d.labels).astype(str)
    if quick:
        clean = clean[:, :300]
    return clean, groups, plant_batches(clean, 2, relative=True, seed=1)


def split(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """A test mask: a quarter of each group."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        test[idx[:max(1, len(idx) // 4)]] = True
    return test


def knn_scores(Ztr, Zte, gtr, gte, btr, bte) -> dict:
    """Group 5-NN accuracy of the test samples, and the library's batch mixing within groups."""
    from sklearn.neighbors import KNeighborsClassifier

    from factembed.evaluate.tasks import batch_mixing
    label = KNeighborsClassifier(5).fit(Ztr, gtr).score(Zte, gte)
    mix = batch_mixing(Ztr, Zte, gtr, gte, btr, bte)
    return {"label_knn": round(float(label), 3), "batch_knn": round(mix["batch_knn"], 3),
            "batch_chance": round(mix["batch_chance"], 3)}


def centred_rmse(A, B) -> float:
    return float(np.sqrt((((A - A.mean(0)) - (B - B.mean(0))) ** 2).mean()))


def run_design(name: str, args) -> list[dict]:
    from sklearn.decomposition import PCA

    from factembed import FactorizedEmbeddings
    clean, groups, B = load_design(name, args.quick, args.data)
    X, batch = B.X, B.batch
    test = split(groups)
    tr, te = ~test, test
    cov = np.array([f"b{b}" for b in batch])
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=60) if args.quick else {}
    kw.update(random_state=0, verbose=False)
    rows = []

    def add(method, Ztr, Zte, seconds, rmse=None):
        r = {"design": name, "method": method, **knn_scores(Ztr, Zte, groups[tr], groups[te], batch[tr], batch[te]),
             "seconds": round(seconds, 1)}
        if rmse is not None:
            r["rmse"] = round(rmse, 4)
        rows.append(r)
        print(f"  {name:11s} {method:18s} " + "  ".join(f"{k} {v}" for k, v in r.items()
                                                       if k not in ("design", "method")), flush=True)

    for method, data, covs in (("fe_batch_free", clean, None), ("fe", X, None), ("fe_covariate", X, cov)):
        t = time.perf_counter()
        fe = FactorizedEmbeddings(**kw).fit(X=data[tr], covariates=None if covs is None else {"batch": covs[tr]})
        Zte = fe.transform(data[te], covariates=None if covs is None else {"batch": covs[te]})
        seconds = time.perf_counter() - t
        rmse = None
        if method == "fe_covariate":
            at_b0 = fe.inverse_transform(fe.embedding_, covariates={"batch": "b0"})
            rmse = centred_rmse(at_b0, clean[tr])
            # the measurements with the decoder's batch difference taken off (residuals kept)
            own = fe.inverse_transform(fe.embedding_, covariates={"batch": cov[tr]})
            kept = centred_rmse(X[tr] + at_b0 - own, clean[tr])
        add(method, fe.embedding_, Zte, seconds, rmse)
        if method == "fe_covariate":
            rows[-1]["rmse_residuals_kept"] = round(kept, 4)
            print(f"  {name:11s} {'':18s} corrected with residuals kept: rmse {kept:.4f}", flush=True)
    rows[-1]["input_rmse"] = round(centred_rmse(X[tr], clean[tr]), 4)
    t = time.perf_counter()
    pca = PCA(2, random_state=0).fit(X[tr])
    add("pca", pca.transform(X[tr]), pca.transform(X[te]), time.perf_counter() - t)
    import anndata
    import scanpy as sc
    t = time.perf_counter()
    ad = anndata.AnnData(X.copy())
    ad.obs["batch"] = cov
    sc.pp.combat(ad, key="batch")
    Xc = np.asarray(ad.X, dtype=np.float32)
    pca = PCA(2, random_state=0).fit(Xc[tr])
    add("combat_pca", pca.transform(Xc[tr]), pca.transform(Xc[te]), time.perf_counter() - t,
        centred_rmse(Xc[tr], clean[tr]))
    try:
        import harmonypy
    except ImportError:
        print("  (harmonypy not installed: no Harmony row; pip install harmonypy)")
    else:
        import pandas as pd
        t = time.perf_counter()
        P = PCA(10, random_state=0).fit_transform(X)
        H = np.asarray(harmonypy.run_harmony(P, pd.DataFrame({"batch": cov}), ["batch"], random_state=0,
                                             verbose=False).Z_corr)
        H = H.T if H.shape[0] != len(X) else H
        pca = PCA(2, random_state=0).fit(H[tr])
        add("harmony_pca", pca.transform(H[tr]), pca.transform(H[te]), time.perf_counter() - t)
    return rows


def new_batch(args) -> list[dict]:
    """A batch the model never saw, embedded by transform (see the module's docstring)."""
    from factembed import FactorizedEmbeddings
    from factembed.planted import make_planted, plant_batches
    n, m = (180, 200) if args.quick else (600, 2000)
    P = make_planted(n, m, n_groups=4, latent_dim=3, scatter=0.15, loading_sd=1.0, base=None, noise=0.1, clip=False,
                     balanced=True, seed=0)
    B = plant_batches(P.X, 3, seed=1)
    names = np.array([f"b{b}" for b in B.batch])
    held = split(P.labels)
    train = (B.batch < 2) & ~held
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=60) if args.quick else {}
    fe = FactorizedEmbeddings(**kw, random_state=0, verbose=False).fit(B.X[train], covariates={"batch": names[train]})
    Ztr, ltr = fe.embedding_, P.labels[train]

    def gap(Z, lab):
        return round(float(np.mean([np.linalg.norm(Z[lab == g].mean(0) - Ztr[ltr == g].mean(0)) /
                                    Ztr[ltr == g].std(0).mean() for g in np.unique(lab)])), 3)

    from sklearn.neighbors import KNeighborsClassifier
    knn = KNeighborsClassifier(5).fit(Ztr, ltr)
    rows = []
    new = np.flatnonzero(B.batch == 2)
    seen = np.flatnonzero((B.batch < 2) & held)
    rng = np.random.default_rng(7)
    for k in (5, 10, 20, None):
        draws = 1 if k is None else (1 if args.quick else 4)
        res: dict[str, list] = {}
        for _ in range(draws):
            pick = new if k is None else rng.choice(new, k, replace=False)
            other = seen if k is None else rng.choice(seen, k, replace=False)
            for label, idx, cov in (("seen batch, held out", other, names[other]),
                                    ("new batch, learned", pick, names[pick]),
                                    ("new batch as b0", pick, np.array(["b0"] * len(pick)))):
                Z = fe.transform(B.X[idx], covariates={"batch": cov})
                res.setdefault(label, []).append((gap(Z, P.labels[idx]), float(knn.score(Z, P.labels[idx]))))
        for label, vals in res.items():
            rows.append({"samples": "all" if k is None else k, "draws": draws, "case": label,
                         "gap": round(float(np.median([v[0] for v in vals])), 3),
                         "label_knn": round(float(np.median([v[1] for v in vals])), 3)})
            print(f"  {rows[-1]}", flush=True)
    return rows


def cost(args) -> dict:
    """Seconds per step with and without a two-level covariate, interleaved rounds."""
    from factembed import FactorizedEmbeddings
    from _common import tcga_like
    n, m = (200, 500) if args.quick else args.cost_shape
    X = tcga_like(n, m, seed=0)
    cov = {"batch": np.array(["a", "b"])[np.arange(n) % 2]}
    steps = 20 if args.quick else 300
    per = {"without": [], "with": []}
    FactorizedEmbeddings(n_steps=steps // 2, random_state=0, verbose=False).fit(X)      # warm-up, not counted
    for _ in range(1 if args.quick else args.cost_rounds):
        for key in ("without", "with"):
            fe = FactorizedEmbeddings(n_steps=steps, random_state=0, verbose=False)
            fe.fit(X, covariates=cov if key == "with" else None)
            s = fe.history_["seconds"]
            per[key].append((s[-1] - s[len(s) // 5]) / (len(s) - 1 - len(s) // 5) * 1e3)
    out = {"shape": [n, m], "steps": steps, "ms_per_step": {k: round(statistics.median(v), 2) for k, v in per.items()}}
    out["ratio"] = round(out["ms_per_step"]["with"] / out["ms_per_step"]["without"], 3)
    out["ratio_per_round"] = [round(a / b, 3) for a, b in zip(per["with"], per["without"])]
    print(f"  cost at {n:,} x {m:,}: {out}", flush=True)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--designs", default=",".join(DESIGNS))
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="folder of khan_expr.csv.gz / khan_pheno.csv")
    p.add_argument("--no-new-batch", action="store_true")
    p.add_argument("--no-cost", action="store_true")
    p.add_argument("--cost-shape", type=lambda s: tuple(int(v) for v in s.split("x")), default=(2000, 19_962),
                   help="N x M of the cost rounds (default 2000x19962)")
    p.add_argument("--cost-rounds", type=int, default=5, help="interleaved rounds of the cost (median)")
    args = p.parse_args()
    designs = [d for d in args.designs.split(",") if d]
    if args.quick:
        designs = [d for d in designs if d in ("planted", "confounded", "khan")]
    if "khan" in designs and not (args.data / "khan_expr.csv.gz").is_file():
        print(f"khan: no {args.data / 'khan_expr.csv.gz'} (--data DIR): design skipped")
        designs.remove("khan")
    print(machine_line())
    result = {"designs": []}
    for d in designs:
        result["designs"] += run_design(d, args)
    if not args.no_new_batch:
        print("a batch the model never saw:")
        result["new_batch"] = new_batch(args)
    if not args.no_cost:
        result["cost"] = cost(args)
    path = out_path(args, "covariates.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    lines = [f"{r['design']} {r['method']}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("design", "method"))
             for r in result["designs"]]
    write_text(out_path(args, "covariates.txt"), machine_line() + "\n" + "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
