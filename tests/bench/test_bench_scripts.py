"""Smoke test of the benchmark scripts: each runs with --quick at a tiny shape.

The benchmarks print figures and are not pass/fail tests; this only checks that they
run to the end and write their result files (to a temporary directory).  They run in
this process (one torch import for all); bench_memory still starts its own child."""
import runpy

import pytest
import numpy as np
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
ARCHIVED = {"ab_gene_term"}     # settled, in bench/archive/, still run here so that it keeps running
SCRIPTS = ["throughput", "roofline", "gene_dim", "memory", "inference", "quality", "ab_gene_term", "inference_demo", "kernel_profile",
           "convergence", "step_speed", "inference_seeds", "covariates", "schedule"]


def test_bench_scripts_run_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(BENCH)
    for name in SCRIPTS:
        script = BENCH / ("archive" if name in ARCHIVED else "") / f"bench_{name}.py"
        monkeypatch.setattr(sys, "argv", [script.name, "--quick", "--out", str(tmp_path)])
        runpy.run_path(str(script), run_name="__main__")
        assert (tmp_path / f"{name}_quick.txt").exists(), name
    out = capsys.readouterr().out
    assert "(c)/(a)" in out and "GFLOP/s" in out and "peak RSS" in out


def test_bench_convergence_trains_like_the_estimator(monkeypatch):
    """bench_convergence times the library's training in segments: its model must be the
    estimator's (same recipe, same seed), or its curves would measure something else."""
    from conftest import planted
    from factembed import FactorizedEmbeddings
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_convergence import run
    X, labels = planted(n=64, m=90)
    for training in ("reference", "fast"):
        res = run(X, labels, training, seed=3, evals=3, quick=True)
        fe = FactorizedEmbeddings(training=training, gene_dim=8, hidden=(16, 8), n_steps=40, random_state=3,
                                  device="cpu", verbose=False).fit(X)
        mse = float(((fe.inverse_transform(fe.embedding_) - X) ** 2).mean())
        assert [p["step"] for p in res["curve"]] == [13, 27, 40]
        assert abs(res["curve"][-1]["mse"] - mse) <= 1e-5 * mse, (training, res["curve"][-1]["mse"], mse)


def test_bench_convergence_defaults_are_the_estimator_with_its_stop(monkeypatch):
    """The defaults' run of bench_convergence is FactorizedEmbeddings.fit with
    n_steps='auto': the same stop step, reason and full-data MSE (NaN entries left out)."""
    from conftest import planted
    from factembed import FactorizedEmbeddings
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_convergence import run_auto
    X, labels = planted(n=64, m=90)
    X = X.copy()
    X[3, 5] = X[10, 7] = np.nan
    res = run_auto(X, labels, seed=3, quick=True, say=lambda *a: None)
    fe = FactorizedEmbeddings(gene_dim=8, hidden=(16, 8), n_steps="auto", random_state=3, device="cpu",
                              verbose=False).fit(X, missing="ignore")
    assert res["n_steps"] == fe.n_steps_ and res["stop_reason"] == fe.stop_reason_
    seen = ~np.isnan(X)
    mse = float(((fe.inverse_transform(fe.embedding_) - X)[seen] ** 2).mean())
    assert abs(res["curve"][-1]["mse"] - mse) <= 1e-5 * mse
    assert res["val_curve"] and res["val_curve"][-1]["step"] == fe.n_steps_


def test_gpu_check_script_runs_its_cpu_quick_mode(tmp_path):
    """bench/gpu_check.sh cannot run its GPU parts here; its quick mode runs the same
    commands on the CPU, so a typo in the script fails here, not on the GPU machine."""
    import os
    import subprocess
    env = dict(os.environ, GPU_CHECK_QUICK="1", OUT=str(tmp_path), PY=sys.executable)
    res = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "reference" in res.stdout and "fast" in res.stdout
    assert (tmp_path / "step_speed_quick.json").exists() and (tmp_path / "convergence_quick.png").exists()
    import json
    steps = json.loads((tmp_path / "step_speed_quick.json").read_text())
    scaled = [r for r in steps if "pairs_scale" in r]      # how a step's time grows with its pairs
    assert [r["pairs_scale"] for r in scaled] == [1, 4, 16]
    assert scaled[0]["pairs_per_step"] < scaled[1]["pairs_per_step"] < scaled[2]["pairs_per_step"]
    conv = json.loads((tmp_path / "convergence_quick.json").read_text())
    assert "planted_full_x4" in conv and "planted_full" in conv     # the GPU-recipe phase merged its run
    assert "failed phases: none" in res.stdout


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


def test_bench_survival_and_interactive_run_quick(monkeypatch, capsys):
    """bench_survival.py --quick: both evaluate runs, the c-index interval table, the
    classification rows of the two runs equal; bench_interactive.py --quick: a page built."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(BENCH)
    for name in ("survival", "interactive"):
        monkeypatch.setattr(sys, "argv", [f"bench_{name}.py", "--quick"])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(BENCH / f"bench_{name}.py"), run_name="__main__")
        assert done.value.code == 0, name
    out = capsys.readouterr().out
    assert "the classification rows of (b) equal those of (a): True" in out
    assert "c-index of the pooled test folds" in out and "ratio" in out
    page = [line for line in out.splitlines() if line.split()[:3] == ["300", "500", "300"]]
    assert len(page) == 1 and float(page[0].split()[3]) > 0.1        # size in MB of the page


def test_bench_scale_runs_at_a_tiny_shape(tmp_path):
    """bench_scale.py: the planted .npy written in row blocks, one streaming pass, a backed
    fit's peak RSS in a child process, the analytic all-reduce table; each writes its JSON."""
    import json
    import subprocess
    npy = tmp_path / "planted.npy"
    runs = [["make-npy", str(npy), "--n", "64", "--m", "300"],
            ["analytic", "--m", "300", "--json", str(tmp_path / "analytic.json")],
            ["stream", str(npy), "--memory-budget", "1", "--json", str(tmp_path / "stream.json")],
            ["rss", str(npy), "--steps", "5", "--repeats", "1", "--json", str(tmp_path / "rss.json")]]
    for args in runs:
        res = subprocess.run([sys.executable, str(BENCH / "bench_scale.py"), *args], capture_output=True, text=True,
                             timeout=300, cwd=BENCH.parent)
        assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-2000:])
    assert np.load(npy, mmap_mode="r").shape == (64, 300)
    for name in ("analytic", "stream", "rss"):
        assert json.loads((tmp_path / f"{name}.json").read_text()), name


def test_variant_starts_do_what_they_say(monkeypatch):
    """bench/variant.py's start points (bench/NOTES.md, "Khan's 8-D held-out distance r"):
    no-bias keeps the output bias's draw and the PCA scores; bias-only keeps the random
    embedding and sets the bias to the data's mean; whiten gives every axis sd 0.1."""
    import torch
    from sklearn.decomposition import PCA

    from factembed.engine.network import FactorizedEmbeddingNet
    from factembed.training.loop import TensorRows
    monkeypatch.syspath_prepend(str(BENCH))
    variant = runpy.run_path(str(BENCH / "variant.py"))
    rng = np.random.default_rng(0)
    U = rng.normal(size=(80, 3)) * np.array([3.0, 1.0, 0.3])     # three axes of falling variance
    X = (6.0 + U @ rng.normal(size=(3, 120)) + 0.1 * rng.normal(size=(80, 120))).astype(np.float32)
    rows = TensorRows(torch.from_numpy(X))
    nets = {}
    for mode in ("no-bias", "bias-only", "whiten"):
        net = FactorizedEmbeddingNet(80, 120, 2, 5, (8, 4), generator=torch.Generator().manual_seed(0))
        before = (net.sample_embedding.detach().clone(), net.layers[-1].bias.item())
        variant["_start"](mode)(net, rows, torch.Generator().manual_seed(1))
        nets[mode] = (net, before)
    Z = PCA(2).fit_transform(X.astype(np.float64))
    net, (emb0, bias0) = nets["no-bias"]
    assert net.layers[-1].bias.item() == bias0
    got = net.sample_embedding.detach().numpy()
    assert abs(np.corrcoef(got[:, 0], Z[:, 0])[0, 1]) > 0.999 and np.std(got[:, 0], ddof=1) == \
        pytest.approx(0.1, rel=1e-4)
    net, (emb0, bias0) = nets["bias-only"]
    assert torch.equal(net.sample_embedding.detach(), emb0)
    assert net.layers[-1].bias.item() == pytest.approx(float(X.mean()), rel=1e-5)
    net, _ = nets["whiten"]
    assert np.std(net.sample_embedding.detach().numpy(), axis=0, ddof=1) == pytest.approx([0.1, 0.1], rel=1e-4)
