"""Smoke test of the benchmark scripts: each runs with --quick at a tiny shape.

The benchmarks print figures and are not pass/fail tests; this only checks that they
run to the end and write their result files (to a temporary directory).  They run in
this process (one torch import for all); bench_memory still starts its own child."""
import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = ["throughput", "roofline", "gene_dim", "memory", "inference", "quality", "ab_gene_term", "inference_demo", "kernel_profile"]


def test_bench_scripts_run_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(BENCH)
    for name in SCRIPTS:
        monkeypatch.setattr(sys, "argv", [f"bench_{name}.py", "--quick", "--out", str(tmp_path)])
        runpy.run_path(str(BENCH / f"bench_{name}.py"), run_name="__main__")
        assert (tmp_path / f"{name}_quick.txt").exists(), name
    out = capsys.readouterr().out
    assert "(c)/(a)" in out and "GFLOP/s" in out and "peak RSS" in out


def test_bench_quality_fits_like_the_estimator(monkeypatch):
    """bench_quality trains with a chosen kernel / worker count through train(), repeating
    the estimator's fitting steps (the estimator takes neither): with the defaults that
    must be the estimator's model bit for bit, or its rows compare different seeds."""
    import numpy as np
    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    from bench_quality import fit_like_estimator

    from factembed import FactorizedEmbeddings
    X = np.random.default_rng(0).random((30, 50), dtype=np.float32)
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=20, random_state=5, verbose=False, device="cpu")
    ref = FactorizedEmbeddings(**kw).fit(X)
    net, n_steps = fit_like_estimator(FactorizedEmbeddings(**kw), X)
    assert n_steps == ref.n_steps_
    for (name, p), q in zip(net.state_dict().items(), ref.net_.state_dict().values()):
        assert torch.equal(p, q), name


def test_bench_impute_runs_quick(tmp_path, monkeypatch):
    """bench_impute.py --quick: every method scored on both hiding schemes, the embedding
    shift and the memory rows written, and the figure."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(BENCH)
    monkeypatch.setattr(sys, "argv", ["bench_impute.py", "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(BENCH / "bench_impute.py"), run_name="__main__")
    res = pd.read_csv(tmp_path / "impute_quick.csv")
    assert set(res["scheme"]) == {"entries", "genes"}
    assert {"fe_dim2", "gene_means", "knn", "pca_svd"} <= set(res["method"])
    assert res[["rmse", "pearson_r"]].notna().all().all()
    shift = pd.read_csv(tmp_path / "impute_shift_quick.csv")
    assert set(shift["hidden"]) >= {0.0, 0.1, 0.5, 0.9}
    mem = pd.read_csv(tmp_path / "impute_memory_quick.csv")
    assert set(mem["call"]) == {"transform_complete", "transform_missing", "impute_inplace"}
    assert (tmp_path / "impute_quick.png").stat().st_size > 0 and (tmp_path / "impute_quick.txt").exists()
