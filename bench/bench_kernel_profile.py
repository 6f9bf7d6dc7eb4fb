"""Where one training step's fused pass spends its time: a torch-profiler table of the
fused kernel (``FusedProfileLoss.evaluate`` with the gene layer, as ``train()`` calls it,
so the gene term and its gradients are included) at the TCGA shape (4 profiles x 19,962
genes, defaults), on one worker thread with one intra-op thread, averaged over 5 passes.
Prints the share of matrix products (``mm``/``addmm``/``addmm_``) and of the rest.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from _common import TCGA_GENES, Tee, machine_line, out_path, parser

from factembed.engine.kernel import FusedProfileLoss, GeneLayer
from factembed.engine.network import FactorizedEmbeddingNet

GEMM_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::addmv"}


def main() -> None:
    args = parser(__doc__).parse_args()
    out = Tee()
    out(machine_line())
    m = 512 if args.quick else TCGA_GENES
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        net = FactorizedEmbeddingNet(64, m, 2, 100, (100, 50, 50), generator=gen)
        idx = torch.arange(4)
        X = torch.rand(4, m, generator=gen)
        layers = [(w.detach(), b.detach()) for w, b in net.decoder_weights()]
        with torch.no_grad():
            S = net.sample_term(net.sample_embedding[idx])
        G = GeneLayer(*(t.detach() for t in net.gene_layer()))   # as train() passes it
        fused = FusedProfileLoss(workers=1)
        for _ in range(3):
            fused.evaluate(S, G, X, layers, True, None)
        passes = 5
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(passes):
                fused.evaluate(S, G, X, layers, True, None)
    finally:
        torch.set_num_threads(threads)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    chunk, _ = fused.plan(4, 100, m, torch.device("cpu"))
    out(f"fused pass, 4 x {m} pairs, gene blocks of {chunk}, 1 thread: {total / 1e3 / passes:.1f} ms per pass")
    out(f"matrix products {100 * gemm / total:.0f}%, everything else {100 * (total - gemm) / total:.0f}%")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        out(f"  {e.key:28s} {100 * e.self_cpu_time_total / total:5.1f}%  {e.count // passes:5d} calls per pass")
    out.save(out_path(args, "kernel_profile.txt"))


if __name__ == "__main__":
    main()
