"""Run every benchmark in turn; each writes its figures to bench/results/.

    .venv/bin/python bench/run_all.py            # full run at the TCGA shape (~30-40 min quiet)
    .venv/bin/python bench/run_all.py --quick    # tiny shapes, a smoke test of the scripts
    .venv/bin/python bench/run_all.py --only throughput roofline

Order matters a little: bench_roofline reads throughput.csv and bench_quality reads
fastest_mode.json written by bench_throughput.  The output of every script is also
saved as bench/results/<name>.txt; a summary table goes to bench/results/summary.md.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ["throughput", "roofline", "gene_dim", "memory", "inference", "quality"]


def summary(quick: bool) -> str:
    sfx = "_quick" if quick else ""

    def rows(name):
        path = RESULTS / f"{name}{sfx}.csv"
        if not path.exists():
            return []
        with open(path) as f:
            return list(csv.DictReader(f))

    lines = ["| figure | value |", "| --- | --- |"]
    thr = {r["row"]: r for r in rows("throughput")}
    labels = {"a": "(a) reference trainer", "m": "(m) factored net, plain autograd",
              "b0": "(b0) factembed fp32, kernel before perf work", "b": "(b) factembed fp32 (defaults)",
              "c": "(c) factembed fastest CPU mode"}
    for key, label in labels.items():
        if key in thr:
            r = thr[key]
            lines.append(f"| {label} | {float(r['it_per_s_median']):.2f} it/s, {float(r['mpairs_per_s']):.3f} "
                         f"M pairs/s, {float(r['ratio_to_reference']):.1f}x reference |")
    for r in rows("gene_dim"):
        lines.append(f"| gene_dim {r['gene_dim']} | {float(r['it_per_s']):.2f} it/s, "
                     f"{float(r['seconds_per_100k_steps']) / 60:.0f} min / 100k steps |")
    for r in rows("memory"):
        lines.append(f"| peak RSS of a {r['mode']} fit ({r['n']} x {r['m']}, {r['steps']} steps) | "
                     f"{int(r['fit_hwm']) / 2**30:.2f} GiB raw = {float(r['raw_ratio']):.2f}x the float32 matrix; "
                     f"net of the interpreter+torch baseline {float(r['net_ratio']):.2f}x |")
    for r in rows("inference"):
        if r["kind"] in ("default", "precise-extrapolated"):
            lines.append(f"| transform {r['n_new']} new samples ({r['kind']}: infer_steps {r['infer_steps']}, "
                         f"infer_genes {r['infer_genes']}) | {float(r['seconds']):.1f} s |")
        elif r["kind"] == "quality" and r["dist_median"]:
            lines.append(f"| inference quality, infer_steps {r['infer_steps']}, infer_genes {r['infer_genes']}, "
                         f"lr {r['infer_lr']} | median distance to the full-gene optimum {float(r['dist_median']):.4f}, "
                         f"excess MSE {float(r['excess_mse']):.1%} of the start point's |")
    for r in rows("quality"):
        lines.append(f"| demo quality, {r['mode']} | Pearson r {float(r['pearson_r']):.4f}, "
                     f"kNN accuracy {float(r['knn_accuracy']):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description="run all factembed benchmarks")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", choices=ORDER, default=ORDER)
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in [n for n in ORDER if n in args.only]:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py")] + (["--quick"] if args.quick else [])
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE).returncode
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(name)
    text = summary(args.quick)
    (RESULTS / ("summary_quick.md" if args.quick else "summary.md")).write_text(text)
    print("\n" + text)
    if failed:
        print("failed:", ", ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
