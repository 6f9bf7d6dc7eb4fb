"""Training speed by gene-embedding size (the study's computing-time figure).

it/s of factembed's real ``train()`` (fp32; in the fastest CPU mode found by
bench_throughput.py when bench/results/fastest_mode.json exists, else defaults) at the TCGA shape for gene_dim
2, 10, 25, 50, 75, 100 and 1000 (sample_dim 2, hidden 100-50-50, 4 profiles per step):
median of timed windows after warm-up.  Writes bench/results/gene_dim.csv
(gene_dim,it_per_s,pairs_per_s,seconds_per_100k_steps) and gene_dim.png (minutes per
100k steps vs gene_dim, with the reference GPU implementation's *quoted* speeds as a
second series for comparison: those are not measured here).
"""

from __future__ import annotations

import json
import time

import torch

from _common import (REFERENCE_GPU_IT_S, TCGA_GENES, TCGA_SAMPLES, Tee, Windows, caller_threads, machine_line,
                     out_path, parser, tcga_like, wait_for_quiet)

from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.loop import train

GENE_DIMS = (2, 10, 25, 50, 75, 100, 1000)


def measure(X: torch.Tensor, gene_dim: int, *, warmup: int, n_windows: int, spw: int, mode: dict) -> Windows:
    n, m = X.shape
    gen = torch.Generator().manual_seed(0)
    net = FactorizedEmbeddingNet(n, m, 2, gene_dim, (100, 50, 50), generator=gen)
    steps = warmup + n_windows * spw
    with caller_threads(mode.get("threads")):
        hist, _, _ = train(net, X, n_steps=steps, lr=5e-3, l2=1e-7, batch_samples=4, generator=gen,
                           device=torch.device("cpu"), gene_chunk=mode.get("gene_chunk"), progress=False,
                           workers=mode.get("workers"))
    return Windows.from_times(hist.seconds, warmup=warmup, n_windows=n_windows, steps_per_window=spw,
                              pairs_per_step=4 * m)


def plot(rows: list[tuple[int, float]], path, label: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims = [d for d, _ in rows]
    ours = [1e5 / it / 60 for _, it in rows]
    ref = [1e5 / REFERENCE_GPU_IT_S[d] / 60 for d in dims]
    x = range(len(dims))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    wdt = 0.38
    b1 = ax.bar([i - wdt / 2 for i in x], ours, wdt, label=f"factembed, this CPU ({label}; measured)", color="#2b6cb0")
    b2 = ax.bar([i + wdt / 2 for i in x], ref, wdt, color="#cccccc", hatch="//", edgecolor="#777777",
                label="reference implementation, one GPU (quoted from the study, not measured)")
    ax.bar_label(b1, fmt="%.0f", fontsize=8)
    ax.bar_label(b2, fmt="%.0f", fontsize=8, color="#555555")
    ax.set_xticks(list(x), [str(d) for d in dims])
    ax.set_xlabel("gene embedding size (gene_dim)")
    ax.set_ylabel("minutes per 100,000 training steps")
    ax.set_title("Computing time, TCGA shape (10,344 x 19,962; 4 profiles/step; hidden 100-50-50)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    args = parser(__doc__).parse_args()
    out = Tee()
    out(machine_line())
    q = args.quick
    n, m = (64, 256) if q else (TCGA_SAMPLES, TCGA_GENES)
    t = time.perf_counter()
    X = torch.from_numpy(tcga_like(n, m))
    out(f"data: synthetic {n} x {m} float32 made in {time.perf_counter() - t:.1f} s; "
        f"other processes used {100 * wait_for_quiet(0 if q else 20):.0f}% of the CPUs before the run")
    mode_path = out_path(args, "fastest_mode.json")
    mode = json.loads(mode_path.read_text()) if mode_path.exists() else {}
    label = (f"fastest mode: main threads {mode.get('threads')}, workers {mode.get('workers')}, "
             f"gene_chunk {mode.get('gene_chunk')}" if mode else "train() defaults")
    out(f"configuration: {label}" + (f" (from {mode_path})" if mode else ""))
    rows = []
    dims = GENE_DIMS[:2] if q else GENE_DIMS
    for d in dims:
        spw = 1 if q else (4 if d >= 1000 else 8)
        w = measure(X, d, warmup=1 if q else 4, n_windows=3 if q else 5, spw=spw, mode=mode)
        rows.append((d, w.median))
        out(f"gene_dim {d:5d}: {w.summary()}; {1e5 / w.median / 60:6.1f} min per 100k steps "
            f"(reference GPU, quoted: {REFERENCE_GPU_IT_S[d]} it/s, {1e5 / REFERENCE_GPU_IT_S[d] / 60:.0f} min)")
    csv_path = out_path(args, "gene_dim.csv")
    with open(csv_path, "w") as f:
        f.write("gene_dim,it_per_s,pairs_per_s,seconds_per_100k_steps\n")
        for d, it in rows:
            f.write(f"{d},{it:.4f},{it * 4 * m:.0f},{1e5 / it:.0f}\n")
    png = out_path(args, "gene_dim.png")
    plot(rows, png, "fastest mode" if mode else "defaults")
    out(f"wrote {csv_path} and {png}")
    out.save(out_path(args, "gene_dim.txt"))


if __name__ == "__main__":
    main()
