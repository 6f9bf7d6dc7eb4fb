"""Inference seeds: how much one inference seed moves the excess MSE over the full-gene
optimum, for the automatic step and the old absolute one, on the quality models of
``bench_inference.py`` (``tcga_like`` 2,000 x 19,962, seed 1, 2,500 steps, random_state 0).

    python bench/bench_inference_seeds.py --training fast       (and --training reference)

The first 50 new samples; the optimum (Levenberg-Marquardt, ``factembed.estimator._inference_optimum``) is found
once from the precise setting; then each setting runs with inference seeds 1, 2, 3.
"""

from __future__ import annotations

import numpy as np
import torch

import factembed.estimator.inference as infer
from _common import Tee, machine_line, out_path, parser, tcga_like
from factembed.estimator._inference_optimum import excess_mse, full_gene_optimum, per_sample_mse

from factembed import FactorizedEmbeddings

SETTINGS = [("0.01", 0.01, 0.25), ("auto", "auto", 0.25), ("auto 0.35", "auto", 0.35)]   # label, infer_lr, AUTO_STEP


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--training", default="fast", choices=("fast", "reference"))
    args = p.parse_args()
    nq, mq, n_ref, steps = (64, 256, 8, 5) if args.quick else (2000, 19_962, 50, 2500)
    out = Tee()
    out(machine_line() + f"; models: training={args.training}")
    Xq = tcga_like(nq + 200 if not args.quick else nq + 16, mq, seed=1)
    fe = FactorizedEmbeddings(n_steps=steps, random_state=0, verbose=False, device="cpu",
                              training=args.training).fit(Xq[:nq])
    X = np.ascontiguousarray(Xq[nq:nq + n_ref])
    fe.set_params(infer_steps=200, infer_genes=2048, infer_lr=0.02)
    Z_ref, f_ref = full_gene_optimum(fe.net_, torch.from_numpy(fe.transform(X)), torch.from_numpy(X))
    Z_ref, f_ref = Z_ref.numpy(), f_ref.numpy()
    fe.set_params(infer_steps=0)
    f0 = per_sample_mse(fe, fe.transform(X), X)
    default_step = infer.AUTO_STEP
    try:
        for label, lr, step in SETTINGS:
            infer.AUTO_STEP = step
            ex = []
            for seed in (1, 2, 3):
                fe.set_params(infer_steps=50, infer_genes=512, infer_lr=lr, random_state=seed)
                ex.append(excess_mse(per_sample_mse(fe, fe.transform(X), X), f_ref, f0))
            out(f"{args.training} {label:10s} excess over seeds 1-3: " + " ".join(f"{e:6.1%}" for e in ex)
                + f"  mean {np.mean(ex):6.1%}")
    finally:
        infer.AUTO_STEP = default_step
    stem = "inference_seeds" if args.training == "fast" else f"inference_seeds_{args.training}"
    out.save(out_path(args, f"{stem}.txt"))


if __name__ == "__main__":
    main()
