"""Interleaved A/B of the gene-term fix in ``train()`` (2026-11-27).

``train()`` runs its own thread at one intra-op thread; before the fix the gene term
``E W1g^T + b`` (and its backward, ~25% of the step's FLOPs) then also ran on one thread,
because ``gene_term()`` sized its worker split from the calling thread's thread count.
"before" restores that behaviour by dropping the ``workers`` argument; "after" is the
current code.  Rounds alternate before/after on the same data (TCGA shape, defaults),
40 timed steps after 10 warm-up steps each; prints it/s per round and the ratios.
"""

from __future__ import annotations

import statistics

import torch

from _common import Tee, machine_line, out_path, parser, tcga_like

import factembed.model as fe_model
from factembed.train import train


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    shape = (64, 2048) if args.quick else (10_344, 19_962)
    warm, timed = (2, 3) if args.quick else (10, 40)
    X = torch.from_numpy(tcga_like(*shape))
    current = fe_model.FactorizedEmbeddingNet.gene_term

    def before(self, gene_index=None, workers=None):
        return current(self, gene_index)

    res: dict[str, list[float]] = {"before": [], "after": []}
    try:
        for _ in range(1 if args.quick else args.rounds):
            for name in ("before", "after"):
                fe_model.FactorizedEmbeddingNet.gene_term = before if name == "before" else current
                gen = torch.Generator().manual_seed(0)
                net = fe_model.FactorizedEmbeddingNet(*X.shape, 2, 100, (100, 50, 50), generator=gen)
                h, _, _ = train(net, X, n_steps=warm + timed, lr=5e-3, l2=1e-7, batch_samples=4, generator=gen,
                                device=torch.device("cpu"), progress=False)
                res[name].append(timed / (h.seconds[-1] - h.seconds[warm - 1]))
    finally:
        fe_model.FactorizedEmbeddingNet.gene_term = current
    ratios = [a / b for a, b in zip(res["after"], res["before"])]
    for name, vals in res.items():
        out(f"{name:6s}: " + ", ".join(f"{v:.2f}" for v in vals) + f" it/s; median {statistics.median(vals):.2f}")
    out("after/before per round: " + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {statistics.median(ratios):.2f}")
    out.save(out_path(args, "ab_gene_term.txt"))


if __name__ == "__main__":
    main()
