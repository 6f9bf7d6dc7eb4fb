"""Roofline of factembed's training step on this machine.

1. FLOPs per (sample, gene) pair of the fused kernel (forward + backward), counted
   analytically, plus the once-per-step gene term amortised over the batch.
2. Measured GEMM GFLOP/s of this machine in fp32 and bf16: square products and the
   kernel's skinny shapes, with 1 and with all threads.
3. The fraction of that limit reached by factembed's training (it/s read from
   bench/results/throughput.csv when present, else measured briefly here), and the
   arithmetic deciding whether 40 it/s at the TCGA shape is reachable.
"""

from __future__ import annotations

import csv
import time

import torch

from _common import RESULTS, TCGA_GENES, TCGA_SAMPLES, Tee, machine_line, out_path, parser

from factembed.engine.cpu_pool import cpu_workers, default_gene_chunk


def flops_per_pair(sample_dim: int, gene_dim: int, hidden: tuple[int, ...], batch: int, n_genes: int) -> dict:
    """Analytic FLOP counts (a multiply-add = 2 FLOPs).

    Per pair, the decoder after the factored first layer has layers h0->h1->...->hL->1.
    Forward: sum_k 2 h_{k-1} h_k + 2 hL.  Backward: the same again for the weight
    gradients and again for the input gradients (propagated down to the first-layer
    activations, which dS and dG need): 3x the forward in total.
    Per step, not per pair: the gene term G = E W1g^T + b1 for all genes (2 dg h0 per
    gene forward, 2x that backward for dE and dW1g) = 6 dg h0 per gene per step, shared
    by the ``batch`` pairs of that gene; the sample term (6 ds h0 per sample) likewise
    over the genes.
    """
    h = list(hidden)
    fwd = sum(2 * a * b for a, b in zip(h[:-1], h[1:])) + 2 * h[-1]
    pair = 3 * fwd
    gene = 6 * gene_dim * h[0] / batch
    sample = 6 * sample_dim * h[0] / n_genes
    elementwise = 3 * h[0] + 3 * sum(h[1:]) + 8    # add+relu, relu masks, sums (memory-bound)
    return {"fwd": fwd, "pair_gemm": pair, "gene": gene, "sample": sample,
            "total": pair + gene + sample, "elementwise": elementwise}


def gemm_rate(M: int, K: int, N: int, dtype=torch.float32, threads: int | None = None,
              min_time: float = 0.4, reps: int = 5) -> float:
    """Best GFLOP/s of C = A @ B (M x K @ K x N), over ``reps`` timed batches."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        A = torch.randn(M, K).to(dtype)
        B = torch.randn(K, N).to(dtype)
        C = torch.empty(M, N, dtype=dtype)
        torch.mm(A, B, out=C)
        t = time.perf_counter()
        torch.mm(A, B, out=C)
        one = max(time.perf_counter() - t, 1e-6)
        inner = max(1, int(min_time / reps / one))
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(inner):
                torch.mm(A, B, out=C)
            best = min(best, (time.perf_counter() - t) / inner)
        return 2 * M * K * N / best / 1e9
    finally:
        torch.set_num_threads(old)


def nominal_peak() -> tuple[float, str]:
    """cores x clock x FLOPs/cycle/core (2 FMA pipes x vector lanes x 2)."""
    mhz, flags = 0.0, ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    lanes = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4
    fpc = 2 * lanes * 2
    cores = torch.get_num_threads()
    return cores * mhz / 1e3 * fpc, (f"{cores} cores x {mhz / 1e3:.2f} GHz x {fpc} fp32 FLOP/cycle "
                                      f"(2 FMA x {lanes} lanes x 2)")


def measured_it_s(quick: bool) -> dict:
    """(b) and (c) from throughput.csv when present (and not --quick), else measure (b)."""
    path = RESULTS / "throughput.csv"
    if path.exists() and not quick:
        with open(path) as f:
            rows = {r["row"]: float(r["it_per_s_median"]) for r in csv.DictReader(f)}
        its = {k: v for k, v in rows.items() if k in ("a", "b0", "b", "c")}
        return its | {"source": str(path), "genes": TCGA_GENES}
    from factembed.engine.network import FactorizedEmbeddingNet
    from factembed.training.loop import train
    n, m = (32, 256) if quick else (256, TCGA_GENES)
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(n, m)
    net = FactorizedEmbeddingNet(n, m, 2, 100, (100, 50, 50), generator=gen)
    steps = 6 if quick else 25
    hist, _, _ = train(net, X, n_steps=steps, lr=5e-3, l2=1e-7, batch_samples=4, generator=gen,
                       device=torch.device("cpu"), progress=False)
    s = hist.seconds
    w = (steps - 2) // 2
    it = sorted(w / (s[k + w] - s[k]) for k in (1, 1 + w))[-1]
    return {"b": it, "source": f"measured here, {steps} steps at {m} genes", "genes": m}


def main() -> None:
    args = parser(__doc__).parse_args()
    out = Tee()
    out(machine_line())
    q = args.quick
    dims = dict(sample_dim=2, gene_dim=100, hidden=(100, 50, 50), batch=4, n_genes=TCGA_GENES)
    f = flops_per_pair(**dims)
    pairs = dims["batch"] * TCGA_GENES
    step_gflop = f["total"] * pairs / 1e9
    out("FLOPs per (sample, gene) pair, TCGA shape (ds 2, dg 100, hidden 100-50-50, batch 4):")
    out(f"  decoder forward  = sum_k 2 h(k-1) h(k) + 2 hL = 2*100*50 + 2*50*50 + 2*50 = {f['fwd']:,}")
    out(f"  decoder fwd+bwd  = 3 x forward (weight grads + input grads)        = {f['pair_gemm']:,}")
    out(f"  gene term        = 6 dg h0 / batch = 6*100*100/4                   = {f['gene']:,.0f}")
    out(f"  sample term      = 6 ds h0 / n_genes                               = {f['sample']:.2f}")
    out(f"  total            = {f['total']:,.0f} FLOP/pair  (+ ~{f['elementwise']} memory-bound "
        f"element-wise ops/pair and Adam on {TCGA_SAMPLES * 2 + TCGA_GENES * 100:,} embedding values/step)")
    out(f"  per step         = {f['total']:,.0f} x {pairs:,} pairs = {step_gflop:.3f} GFLOP")
    ref_pair = 3 * (2 * (dims["sample_dim"] + dims["gene_dim"]) * dims["hidden"][0]) + f["pair_gemm"]
    ref_gflop = ref_pair * pairs / 1e9
    out(f"reference trainer (concatenated first layer per pair, input grads to the embeddings): "
        f"3 x 2*(ds+dg)*h0 + {f['pair_gemm']:,} = {ref_pair:,} FLOP/pair = {ref_gflop:.3f} GFLOP/step, "
        f"{ref_pair / f['total']:.2f}x ours: at equal efficiency the factored kernel is at most "
        f"{ref_pair / f['total']:.2f}x faster")

    peak, how = nominal_peak()
    out(f"nominal fp32 peak: {how} = {peak:.0f} GFLOP/s")
    nt = torch.get_num_threads()
    out("measured GEMM GFLOP/s (best of 5; M x K x N):")
    sq = 256 if q else 2048
    rates = {}
    for threads in sorted({1, nt}):
        r = gemm_rate(sq, sq, sq, threads=threads, min_time=0.02 if q else 0.6)
        rates[("sq", threads)] = r
        out(f"  fp32 square {sq}^3, {threads} thread(s):          {r:7.1f}")
    bsq = 64 if q else 1024
    for threads in sorted({1, nt}):
        r = gemm_rate(bsq, bsq, bsq, dtype=torch.bfloat16, threads=threads, min_time=0.01 if q else 0.5, reps=3)
        rates[("bf16", threads)] = r
        out(f"  bf16 square {bsq}^3, {threads} thread(s):          {r:7.1f}   "
            f"({'native' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'emulated: no native bf16'})")
    P = 4 * (256 if q else 1024)   # rows of one gene block (4 profiles x 1024 genes)
    # the gene term is computed block by block inside the block pass (rows of one default block)
    kw = cpu_workers(1 << 30)        # train()'s kernel workers, each with nt // kw intra-op threads
    per = max(1, nt // kw)
    c = default_gene_chunk(4, 100, TCGA_GENES, torch.device("cpu"), workers=kw) if not q else 256
    shapes = [("fwd  a1 = a0 W1^T", P, 100, 50), ("fwd  a2 = a1 W2^T", P, 50, 50),
              ("bwd  dW1 = g1^T a0", 50, P, 100), ("bwd  g0 = g1 W1", P, 50, 100),
              ("gene block G = E W1g^T", c, 100, 100)]
    skinny = []
    for name, M, K, N in shapes:
        r1 = gemm_rate(M, K, N, threads=1, min_time=0.01 if q else 0.3)
        rn = gemm_rate(M, K, N, threads=nt, min_time=0.01 if q else 0.3)
        rw = r1 if per == 1 else gemm_rate(M, K, N, threads=per, min_time=0.01 if q else 0.3)
        skinny.append((name, rw, rn))
        out(f"  fp32 {name:20s} {M}x{K}x{N}: 1 thread {r1:6.1f}, {nt} threads {rn:6.1f}"
            + (f", {per} threads (one worker's) {rw:6.1f}" if per > 1 else ""))
    # FLOPs per pair done at each measured shape (the 50x50 rate also stands for dW2, g1, output)
    weight = {"fwd  a1 = a0 W1^T": 10_000, "bwd  dW1 = g1^T a0": 10_000, "bwd  g0 = g1 W1": 10_000,
              "fwd  a2 = a1 W2^T": f["pair_gemm"] - 30_000}
    # the kernel runs one gene block per worker: its ceiling is workers x one worker's rates
    pair_rate = kw * sum(weight.values()) / sum(weight[name] / rw for name, rw, _ in skinny if name in weight)
    gene_rate = kw * skinny[-1][1]
    t_floor = f["pair_gemm"] * pairs / (pair_rate * 1e9) + f["gene"] * pairs / (gene_rate * 1e9)
    sq_n = rates[("sq", nt)]
    out("")
    out("limits at the TCGA shape:")
    out(f"  all FLOPs at the nominal peak ({peak:.0f} GFLOP/s):        {peak / step_gflop:6.1f} it/s")
    out(f"  all FLOPs at the measured square-GEMM rate ({sq_n:.0f}):   {sq_n / step_gflop:6.1f} it/s")
    out(f"  pair GEMMs at {kw} workers x one worker's skinny rate ({pair_rate:.0f}) + gene-term blocks at {kw} x theirs "
        f"({gene_rate:.0f}): "
        f"{1 / t_floor:6.1f} it/s  (GEMM-only floor: no element-wise work, no Adam)")
    if "bf16" in str(rates) and rates[("bf16", nt)] > sq_n:
        out(f"  bf16 GEMMs here are faster than fp32 ({rates[('bf16', nt)]:.0f} GFLOP/s)")
    else:
        out(f"  bf16 does not help here: {rates[('bf16', nt)]:.1f} GFLOP/s vs fp32 {sq_n:.1f}")
    need = 40 * step_gflop
    out("")
    out(f"40 it/s needs 40 x {step_gflop:.3f} GFLOP = {need:.0f} GFLOP/s sustained, "
        f"{need / peak:.0%} of the nominal peak and {need / sq_n:.0%} of the best measured fp32 GEMM rate: "
        + ("NOT reachable on this machine in fp32 (more than the hardware does even on large square "
           "GEMMs)" if need > sq_n else "reachable in principle"))
    its = measured_it_s(q)
    genes = its.pop("genes")
    out(f"factembed measured ({its.pop('source')}):")
    a = its.pop("a", None)
    if a is not None:
        ga = a * ref_gflop
        out(f"  (a)  {a:6.2f} it/s = {ga:6.1f} GFLOP/s of the reference's own FLOPs ({ga / sq_n:5.1%} of the "
            f"square-GEMM rate); 10x (a) = {10 * a:.1f} it/s vs the GEMM-only floor {1 / t_floor:.1f} it/s: "
            + ("NOT reachable" if 10 * a > 1 / t_floor else "reachable in principle"))
    for key, it in its.items():
        g = it * step_gflop * genes / TCGA_GENES
        out(f"  ({key}) {it:6.2f} it/s = {g:6.1f} GFLOP/s = {g / peak:5.1%} of nominal peak, "
            f"{g / sq_n:5.1%} of square-GEMM rate, {it * t_floor * genes / TCGA_GENES:5.1%} of the GEMM-only floor")
    out.save(out_path(args, "roofline.txt"))


if __name__ == "__main__":
    main()
