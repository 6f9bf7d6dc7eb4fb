"""Scaling benchmarks: out-of-core memory/throughput and multi-process throughput.

Subcommands (run with the project's venv python, from the repository root):

  make-npy OUT --n N --m M         write the TCGA-like planted matrix (N x M float32 .npy)
                                   in row blocks (np.lib.format.open_memmap), never in memory
  rss DATA --steps K [--in-memory] fit K steps on DATA in a fresh subprocess and report
                                   its peak RSS (VmHWM) and it/s; backed unless --in-memory
  ab DATA --steps K                backed vs in-memory it/s, runs interleaved (same load)
  stream DATA [--drop-cache]       one full pass of the block sampler over DATA (no training):
                                   peak RSS and read rate
  dist DATA --steps K --nproc 1,2  it/s of data-parallel training with 1, 2, ... processes
                                   (torchrun, gloo, per-rank batch fixed) and the measured
                                   all-reduce time per step
  analytic [--m --gene-dim ...]    all-reduce bytes vs FLOPs per step, bandwidth needed per
                                   machine at a given it/s, and the expected scaling on N machines

Timings on a shared machine are noisy: every throughput figure is the median of
--repeats runs (each a separate process), and the spread is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

def make_npy(path: str, n: int, m: int, seed: int = 0) -> None:
    """The TCGA-like planted matrix (``_common.tcga_like``: ``factembed.planted``'s preset)
    written into a memory-mapped .npy, one block of rows at a time, so memory stays at a
    block.  (Before 2026-12-07 this script drew its own log-normal-like matrix; the speed
    and memory figures of docs/scaling.md do not depend on the values.)"""
    from _common import tcga_like

    out = np.lib.format.open_memmap(path + ".part", mode="w+", dtype=np.float32, shape=(n, m))
    t0 = time.perf_counter()
    tcga_like(n, m, seed=seed, out=out)
    out.flush()
    del out
    os.replace(path + ".part", path)
    print(f"wrote {path}: {n:,} x {m:,} float32 = {n * m * 4 / 1e9:.1f} GB "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)


# --------------------------------------------------------------------------------------
# peak RSS of a fit, measured in a fresh subprocess
# --------------------------------------------------------------------------------------

_RSS_CHILD = r"""
import json, sys, time, numpy as np, torch
from factembed import FactorizedEmbeddings
from factembed.sources import NpySource

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
path, steps, in_memory, threads, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1', int(sys.argv[4]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
rss_start = status('VmRSS:')
if in_memory:
    X = np.load(path)               # the whole matrix in memory
    src = X
else:
    src = NpySource(path, memory_budget=budget)
rss_loaded = status('VmRSS:')
fe = FactorizedEmbeddings(n_steps=steps, random_state=0, verbose=False)
t0 = time.perf_counter()
fe.fit(src)
dt = time.perf_counter() - t0
# steady-state rate: the second half of the steps (excludes start-up and the first window read)
h = fe.history_
half = len(h['seconds']) // 2
rate = (len(h['seconds']) - 1 - half) / (h['seconds'][-1] - h['seconds'][half])
print(json.dumps({'n': int(src.shape[0]), 'm': int(src.shape[1]), 'steps': steps,
                  'in_memory': in_memory, 'file_bytes': int(src.shape[0]) * int(src.shape[1]) * 4,
                  'vmhwm': status('VmHWM:'), 'rss_end': status('VmRSS:'), 'rss_start': rss_start,
                  'rss_after_open': rss_loaded, 'fit_seconds': dt, 'it_per_s_steady': rate,
                  'it_per_s_overall': steps / dt, 'final_loss': h['loss'][-1],
                  'threads': torch.get_num_threads()}))
"""


def run_rss(path: str, steps: int, in_memory: bool, threads: int = 0, budget: int = 256 << 20) -> dict:
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, path, str(steps), "1" if in_memory else "0",
                          str(threads), str(budget)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmd_rss(args) -> None:
    results = []
    for r in range(args.repeats):
        res = run_rss(args.data, args.steps, args.in_memory, args.threads, args.memory_budget << 20)
        results.append(res)
        print(f"  run {r + 1}: VmHWM {res['vmhwm'] / 2**20:,.0f} MiB, {res['it_per_s_steady']:.2f} it/s "
              f"(steady), {res['it_per_s_overall']:.2f} it/s (overall)", flush=True)
    med = lambda k: statistics.median(x[k] for x in results)  # noqa: E731
    summary = {"data": args.data, "mode": "in-memory" if args.in_memory else "backed", "runs": results,
               "median_vmhwm_mib": med("vmhwm") / 2**20, "median_it_per_s": med("it_per_s_steady"),
               "file_gb": results[0]["file_bytes"] / 1e9}
    print(f"{summary['mode']}: {results[0]['n']:,} x {results[0]['m']:,} ({summary['file_gb']:.1f} GB on disk), "
          f"{args.steps} steps: peak RSS (VmHWM) median {summary['median_vmhwm_mib']:,.0f} MiB, "
          f"{summary['median_it_per_s']:.2f} it/s median of {args.repeats}")
    _save(args, summary)


def cmd_ab(args) -> None:
    """Backed vs in-memory throughput, runs interleaved (A B A B ...) so that both see
    the same background load on a shared machine."""
    runs: dict[str, list] = {"backed": [], "in-memory": []}
    for r in range(args.repeats):
        for mode in ("backed", "in-memory"):
            res = run_rss(args.data, args.steps, mode == "in-memory", args.threads, args.memory_budget << 20)
            runs[mode].append(res)
            print(f"  round {r + 1} {mode:>9}: {res['it_per_s_steady']:.2f} it/s, VmHWM {res['vmhwm'] / 2**20:,.0f} MiB",
                  flush=True)
    summary = {"data": args.data, "steps": args.steps, "runs": runs}
    for mode, rs in runs.items():
        its = [x["it_per_s_steady"] for x in rs]
        summary[f"median_it_per_s_{mode}"] = statistics.median(its)
        print(f"{mode:>9}: median {statistics.median(its):.2f} it/s (min {min(its):.2f}, max {max(its):.2f}), "
              f"median VmHWM {statistics.median(x['vmhwm'] for x in rs) / 2**20:,.0f} MiB")
    ratios = [b["it_per_s_steady"] / a["it_per_s_steady"] for b, a in zip(runs["backed"], runs["in-memory"])]
    summary["median_ratio_backed_over_in_memory"] = statistics.median(ratios)
    print(f"backed / in-memory, per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}")
    _save(args, summary)


# --------------------------------------------------------------------------------------
# one full pass of the block sampler over a file (no training): bounded RSS, read rate
# --------------------------------------------------------------------------------------

_STREAM_CHILD = r"""
import json, os, sys, time, torch
from factembed.sources import NpySource

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
path, budget, drop = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'
if drop:   # evict this file from the page cache so the pass reads from the disk
    fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
src = NpySource(path, memory_budget=budget)
s = src.make_sampler(4, torch.Generator().manual_seed(0))
steps = src.shape[0] // 4
t0 = time.perf_counter()
acc = 0.0
for _ in range(steps):
    acc += float(src.rows(s.next())[:, 0].sum())
dt = time.perf_counter() - t0
print(json.dumps({'n': src.shape[0], 'm': src.shape[1], 'seconds': dt, 'gb_per_s': src.shape[0] * src.shape[1] * 4 / dt / 1e9,
                  'batches_per_s': steps / dt, 'vmhwm': status('VmHWM:'), 'waited_s': s.read_seconds_waited,
                  'windows': s.windows_read, 'window_rows': s.block_rows * s.blocks_per_window,
                  'block_rows': s.block_rows, 'cold_cache': drop, 'passes': s.passes}))
"""


def cmd_stream(args) -> None:
    out = subprocess.run([sys.executable, "-c", _STREAM_CHILD, args.data, str(args.memory_budget << 20),
                          "1" if args.drop_cache else "0"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"one pass over {res['n']:,} x {res['m']:,} ({res['n'] * res['m'] * 4 / 1e9:.1f} GB, "
          f"{'cold' if res['cold_cache'] else 'warm'} page cache): {res['seconds']:.0f} s, {res['gb_per_s']:.2f} GB/s, "
          f"{res['batches_per_s']:.0f} batches of 4/s; peak RSS (VmHWM) {res['vmhwm'] / 2**20:,.0f} MiB; "
          f"{res['windows']} windows of {res['window_rows']} rows (blocks of {res['block_rows']})")
    _save(args, res)


# --------------------------------------------------------------------------------------
# multi-process throughput
# --------------------------------------------------------------------------------------

def cmd_dist_worker(args) -> None:
    import torch
    import torch.distributed as dist

    from factembed.config import FEConfig
    from factembed.distributed import fit_distributed, init_process_group, shard_bounds
    from factembed.sources import NpySource

    rank, world, _ = init_process_group(device="cpu")
    src = NpySource(args.data)
    n = src.shape[0]
    lo, hi = shard_bounds(n, world, rank)
    cfg = FEConfig(n_steps=args.steps, random_state=0, verbose=False, device="cpu",
                   batch_samples=args.batch, gene_dim=args.gene_dim)
    res = fit_distributed(src.view(lo, hi), config=cfg, n_total=n, lo=lo)
    if rank == 0:
        h = res.history
        half = len(h["seconds"]) // 2
        rate = (len(h["seconds"]) - 1 - half) / (h["seconds"][-1] - h["seconds"][half])
        print("RESULT " + json.dumps({
            "world": world, "threads_per_rank": torch.get_num_threads(), "it_per_s": rate,
            "samples_per_s": rate * args.batch * world, "allreduce_s_per_step": res.allreduce_seconds / args.steps,
            "allreduce_bytes": res.allreduce_bytes, "replica_spread": res.replica_spread,
            "final_loss": h["loss"][-1]}), flush=True)
    dist.destroy_process_group()


def cmd_dist(args) -> None:
    summary = {"data": args.data, "steps": args.steps, "batch_per_rank": args.batch, "by_nproc": {}}
    nprocs = [int(v) for v in args.nproc.split(",")]
    runs: dict[int, list] = {p: [] for p in nprocs}
    for r in range(args.repeats):            # interleaved: every setting sees the same background load
        for nproc in nprocs:
            env = dict(os.environ)
            cores = os.cpu_count() or 1
            # default: the same cores in total for every nproc; --threads: fixed threads per rank
            env["OMP_NUM_THREADS"] = str(args.threads or max(1, cores // nproc))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   str(Path(__file__).resolve()), "dist-worker", args.data, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--gene-dim", str(args.gene_dim)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                raise RuntimeError(out.stderr[-3000:])
            res = json.loads(lines[-1][7:])
            runs[nproc].append(res)
            print(f"  round {r + 1}, {nproc} process(es): {res['it_per_s']:.2f} it/s, "
                  f"{res['samples_per_s']:.1f} profiles/s, all-reduce {1e3 * res['allreduce_s_per_step']:.1f} ms/step "
                  f"({res['threads_per_rank']} thread(s)/rank)", flush=True)
    for nproc in nprocs:
        rs = runs[nproc]
        summary["by_nproc"][nproc] = {
            "runs": rs, "median_it_per_s": statistics.median(x["it_per_s"] for x in rs),
            "median_samples_per_s": statistics.median(x["samples_per_s"] for x in rs),
            "median_allreduce_ms": 1e3 * statistics.median(x["allreduce_s_per_step"] for x in rs)}
    base = None
    for nproc, s in summary["by_nproc"].items():
        base = base or s["median_samples_per_s"]
        print(f"{nproc} process(es) on {os.cpu_count()} cores: median {s['median_it_per_s']:.2f} it/s, "
              f"{s['median_samples_per_s']:.1f} profiles/s ({s['median_samples_per_s'] / base:.2f}x), "
              f"all-reduce {s['median_allreduce_ms']:.1f} ms/step")
    _save(args, summary)


# --------------------------------------------------------------------------------------
# analytic estimate
# --------------------------------------------------------------------------------------

def analytic(m: int, gene_dim: int, hidden: tuple[int, ...], batch: int, sample_dim: int = 2) -> dict:
    h0 = hidden[0]
    widths = list(hidden) + [1]
    mlp_macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))          # per (sample, gene) pair
    replicated = (m * gene_dim                 # gene embedding (dense gradient every step)
                  + gene_dim * h0 + h0         # first layer, gene half + bias
                  + sample_dim * h0            # first layer, sample half
                  + sum(a * b + b for a, b in zip(widths[:-1], widths[1:])))
    pairs = batch * m
    # forward 2*MACs, backward ~2x forward (input and weight gradients); + add/ReLU of layer 1
    flops_pairs = pairs * (3 * 2 * mlp_macs + 3 * h0)
    flops_gene_term = 3 * 2 * m * gene_dim * h0   # G = E W1g^T, its backward to E and W1g
    return {"replicated_params": replicated, "grad_bytes": 4 * replicated,
            "gene_embedding_grad_bytes": 4 * m * gene_dim,
            "flops_per_step": flops_pairs + flops_gene_term,
            "flops_pairs": flops_pairs, "flops_gene_term": flops_gene_term}


def cmd_analytic(args) -> None:
    hidden = tuple(int(v) for v in args.hidden.split(","))
    a = analytic(args.m, args.gene_dim, hidden, args.batch)
    gb = a["grad_bytes"]
    print(f"FE model, m={args.m:,} genes, gene_dim={args.gene_dim}, hidden={hidden}, "
          f"{args.batch} profiles per rank per step:")
    print(f"  replicated parameters: {a['replicated_params']:,} -> all-reduced gradient {gb / 1e6:.2f} MB per step "
          f"(gene embedding alone {a['gene_embedding_grad_bytes'] / 1e6:.2f} MB, dense: every gene is in every batch)")
    print(f"  compute per rank per step: {a['flops_per_step'] / 1e9:.2f} GFLOP "
          f"({a['flops_pairs'] / 1e9:.2f} for the {args.batch * args.m:,} (sample, gene) pairs, "
          f"{a['flops_gene_term'] / 1e9:.2f} for the gene term, independent of the batch)")
    print(f"  arithmetic intensity vs the network: {a['flops_per_step'] / gb:.0f} FLOP per all-reduced byte")
    print("  ring all-reduce: each machine sends and receives 2(N-1)/N x gradient bytes per step")
    print(f"  {'N':>4} {'MB/step/machine':>16} " + " ".join(f"{'@' + str(r) + ' it/s':>12}" for r in args.rates))
    for N in (2, 4, 8, 16, 64):
        vol = 2 * (N - 1) / N * gb
        print(f"  {N:>4} {vol / 1e6:>16.2f} " + " ".join(f"{vol * r * 8 / 1e9:>8.2f} Gb/s" for r in args.rates))
    print("  Scaling on N machines (per-rank batch fixed, so the global batch grows N-fold):")
    print("    t_step(N) = t_compute + t_allreduce(N),  t_allreduce ~ 2(N-1)/N * bytes / link_bandwidth + 2(N-1) * latency")
    print("    profiles/s(N) = N * batch / t_step(N): near-linear while t_allreduce << t_compute.")
    for name, rate, link in (("GPU (~80 it/s per rank, reference)", 80.0, 100e9 / 8),
                             ("GPU over 10 GbE", 80.0, 10e9 / 8),
                             ("CPU node (~5 it/s per rank)", 5.0, 10e9 / 8)):
        t_c = 1.0 / rate
        cells = []
        for N in (2, 8, 64):
            t_ar = 2 * (N - 1) / N * gb / link + 2 * (N - 1) * 20e-6
            cells.append(f"N={N}: {N * t_c / (t_c + t_ar):.1f}x")
        print(f"    {name}, link {link * 8 / 1e9:.0f} Gb/s: speed-up " + ", ".join(cells)
              + " (no overlap of communication and compute assumed)")
    _save(args, {"inputs": vars(args) | {"hidden": hidden}, **a})


# --------------------------------------------------------------------------------------

def _save(args, summary: dict) -> None:
    if getattr(args, "json", None):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        summary = {k: v for k, v in summary.items() if k != "func"}
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
        print(f"wrote {args.json}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-npy")
    mk.add_argument("out")
    mk.add_argument("--n", type=int, required=True)
    mk.add_argument("--m", type=int, default=20_000)
    r = sub.add_parser("rss")
    r.add_argument("data")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--in-memory", action="store_true")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    r.add_argument("--memory-budget", type=int, default=256, help="MiB of row buffers (backed)")
    r.add_argument("--json")
    ab = sub.add_parser("ab")
    ab.add_argument("data")
    ab.add_argument("--steps", type=int, default=200)
    ab.add_argument("--repeats", type=int, default=3)
    ab.add_argument("--threads", type=int, default=0)
    ab.add_argument("--memory-budget", type=int, default=256)
    ab.add_argument("--json")
    st = sub.add_parser("stream")
    st.add_argument("data")
    st.add_argument("--memory-budget", type=int, default=256, help="MiB of row buffers")
    st.add_argument("--drop-cache", action="store_true", help="evict the file from the page cache first")
    st.add_argument("--json")
    d = sub.add_parser("dist")
    d.add_argument("data")
    d.add_argument("--steps", type=int, default=60)
    d.add_argument("--nproc", default="1,2")
    d.add_argument("--batch", type=int, default=4, help="profiles per rank per step")
    d.add_argument("--gene-dim", type=int, default=100)
    d.add_argument("--threads", type=int, default=0, help="threads per rank (0 = cores / nproc)")
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--json")
    w = sub.add_parser("dist-worker")
    w.add_argument("data")
    w.add_argument("--steps", type=int, default=60)
    w.add_argument("--batch", type=int, default=4)
    w.add_argument("--gene-dim", type=int, default=100)
    a = sub.add_parser("analytic")
    a.add_argument("--m", type=int, default=19_962)
    a.add_argument("--gene-dim", type=int, default=100)
    a.add_argument("--hidden", default="100,50,50")
    a.add_argument("--batch", type=int, default=4)
    a.add_argument("--rates", type=float, nargs="+", default=[1.5, 10.0, 80.0])
    a.add_argument("--json")
    args = p.parse_args(argv)
    if args.cmd == "make-npy":
        make_npy(args.out, args.n, args.m)
    elif args.cmd == "rss":
        cmd_rss(args)
    elif args.cmd == "ab":
        cmd_ab(args)
    elif args.cmd == "stream":
        cmd_stream(args)
    elif args.cmd == "dist":
        cmd_dist(args)
    elif args.cmd == "dist-worker":
        cmd_dist_worker(args)
    else:
        cmd_analytic(args)


if __name__ == "__main__":
    main()
