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
