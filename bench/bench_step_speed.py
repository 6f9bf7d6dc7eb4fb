"""Steps per second of train() for the reference and the default (fast) recipes, at
TCGA shape, on any device and precision (the CPU figures of record come from
bench_throughput.py; this one exists so that a GPU machine can be measured in one go).

A window's rate is ``2 * steps`` over the difference between a ``train()`` call of ``3 * steps``
and one of ``steps`` steps, so the fixed cost of a call (on CUDA: the warm-up steps, the graph's
capture and its check) cancels out.  On CUDA each recipe is timed with its steps eager and replayed from a CUDA graph (the
default), with the launches and synchronisations per step counted by the profiler
(``cudaLaunchKernel`` / ``cudaGraphLaunch`` / copies; ``cudaStreamSynchronize`` /
``cudaDeviceSynchronize`` / blocking copies), and the user's path (``fit`` of a NumPy
array in host memory, its steps' time from two run lengths) is compared with the bench
path (the matrix put on the device by the bench).

    python bench/bench_step_speed.py --device cuda --precisions fp32,bf16
"""

from __future__ import annotations

import json
import time

from _common import (TCGA_GENES, TCGA_SAMPLES, RecipeTraining, Tee, machine_line, out_path, parser, scaled_batch,
                     tcga_like, write_text)

_LAUNCH = ("cudaLaunchKernel", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync", "cuLaunchKernel",
           "cudaLaunchKernelExC")
_SYNC = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def steps_per_second(X, training: str, device: str, precision: str, steps: int, windows: int,
                     graphs: bool | None = None, options: dict | None = None) -> dict:
    """``options``: more :class:`FEConfig` fields (a batch shape, for ``--pairs-scales``)."""
    from factembed import FEConfig

    fit = RecipeTraining(X, FEConfig(training=training, device=device, precision=precision, random_state=0,
                                     **(options or {})), graphs=graphs)
    plan = fit.plan
    rates = []
    for w in range(windows + 1):          # the first window warms up (allocation, compilation)
        # each train() call pays fixed costs (on CUDA: warm-up steps and the graph's capture and
        # check): a window's rate is 2 * steps over the difference of a 3 * steps and a steps call
        short = fit.advance(fit.done + steps)
        long = fit.advance(fit.done + 3 * steps)
        if w:
            rates.append(2 * steps / max(long - short, 1e-9))
    rates.sort()
    out = {"training": training, "precision": precision, "graphs": graphs, "plan": plan.describe(),
           "it_s_median": rates[len(rates) // 2], "it_s": rates, "pairs_per_step": fit.pairs_per_step,
           "hours_for_plan": plan.n_steps / rates[len(rates) // 2] / 3600}
    if device == "cuda":
        out.update(calls_per_step(fit, steps))
    return out


def calls_per_step(fit: RecipeTraining, steps: int) -> dict:
    """CUDA runtime launches and synchronisations per step over ``steps`` steady steps
    (one chunk drain included, as in a real run)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fit.advance(fit.done + steps)
    launches = syncs = kernels = 0
    for evt in prof.key_averages():
        if evt.key in _LAUNCH:
            launches += evt.count
        if evt.key in _SYNC:
            syncs += evt.count
    for evt in prof.events():
        if getattr(evt, "device_type", None) is not None and str(evt.device_type).endswith("CUDA"):
            kernels += 1
    return {"launches_per_step": launches / steps, "syncs_per_step": syncs / steps,
            "gpu_ops_per_step": kernels / steps}


def user_path(X, training: str, device: str, precision: str, steps: int) -> dict:
    """Seconds per step of ``FactorizedEmbeddings(device=...).fit(X)`` with ``X`` a NumPy
    array: the difference of two fits of ``steps`` and ``3 * steps`` steps, over ``2 * steps``
    (set-up, the copy to the device and the capture cancel out)."""
    import torch

    from factembed import FactorizedEmbeddings

    def fit(n):
        fe = FactorizedEmbeddings(n_steps=n, training=training, device=device, precision=precision,
                                  random_state=0, verbose=False)
        t0 = time.perf_counter()
        fe.fit(X)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    fit(steps)                                    # warm-up (CUDA context, TorchScript)
    short, long = fit(steps), fit(3 * steps)
    return {"training": training, "precision": precision, "user_s_per_step": (long - short) / (2 * steps),
            "user_fit_seconds": {steps: short, 3 * steps: long}}


def pairs_scaling(X, device: str, steps: int, windows: int, scales: list[float], say) -> list[dict]:
    """The default recipe's step with ``s`` times its pairs (``batch_samples`` and ``batch_genes``
    each x sqrt(s)): ms per step and per million pairs, against s = 1.  Where a step costs the
    same whatever it holds, more pairs per step are free, and a GPU recipe with bigger steps may
    reach the same quality sooner (bench_convergence --fast-options decides that, not this)."""
    rows, first = [], None
    for s in scales:
        shape = scaled_batch(*X.shape, s)
        b, bg = shape["batch_samples"], shape["batch_genes"]
        r = steps_per_second(X, "fast", device, "fp32", steps, windows, options=shape)
        r["pairs_scale"] = s
        ms = 1e3 / r["it_s_median"]
        first = first or ms
        rows.append(r)
        say(f"fast fp32 x{s:g} pairs ({b} profiles x {bg:,} genes = {r['pairs_per_step']:,} pairs): "
            f"{ms:.3f} ms/step ({ms / first:.2f}x the x{scales[0]:g} step), "
            f"{ms * 1e6 / r['pairs_per_step']:.3f} ms per million pairs")
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--steps", type=int, default=200, help="steps per timing window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--user-steps", type=int, default=500,
                   help="steps of the shorter user-path fit (CUDA only; 0 skips it)")
    p.add_argument("--pairs-scales", default=None,
                   help="also time the default recipe (fp32, the device's default step) with these multiples "
                        "of its pairs per step, both sides of the batch scaled by the square root, e.g. 1,4,16 "
                        "(default on CUDA: 1,4,16; elsewhere none): how a step's time grows with what it holds")
    args = p.parse_args()
    n, m = (64, 300) if args.quick else (TCGA_SAMPLES, TCGA_GENES)
    steps, windows = (3, 1) if args.quick else (args.steps, args.windows)
    X = tcga_like(n, m, seed=0)
    say = Tee()
    say(machine_line() + f"; device {args.device}")
    rows = []
    modes = (False, True) if args.device == "cuda" else (None,)
    for precision in [s.strip() for s in args.precisions.split(",") if s.strip()]:
        for training in ("reference", "fast"):
            for graphs in modes:
                r = steps_per_second(X, training, args.device, precision, steps, windows, graphs=graphs)
                rows.append(r)
                mode = {None: "", False: " eager  ", True: " graphed"}[graphs]
                calls = (f"; {r['launches_per_step']:.1f} launches, {r['syncs_per_step']:.2f} syncs, "
                         f"{r['gpu_ops_per_step']:.1f} GPU ops per step") if "launches_per_step" in r else ""
                say(f"{training:9s} {precision}{mode}: {r['it_s_median']:8.2f} it/s (median of {windows} windows: "
                    f"3 x {steps} minus {steps} steps), {r['pairs_per_step'] * r['it_s_median'] / 1e6:7.2f} M pairs/s; {r['plan']}; "
                    f"the plan's steps take {r['hours_for_plan'] * 60:.1f} min{calls}")
            if args.device == "cuda" and args.user_steps and not args.quick:
                u = user_path(X, training, args.device, precision, args.user_steps)
                bench = 1.0 / rows[-1]["it_s_median"]          # the graphed bench path just measured
                u["bench_s_per_step"] = bench
                rows.append(u)
                say(f"{training:9s} {precision} user path (NumPy array to fit): {u['user_s_per_step'] * 1e3:.3f} "
                    f"ms/step vs bench path {bench * 1e3:.3f} ms/step: ratio {u['user_s_per_step'] / bench:.2f} "
                    f"(target <= 1.2); fits of {args.user_steps} / {3 * args.user_steps} steps: "
                    + " / ".join(f"{v:.1f} s" for v in u["user_fit_seconds"].values()))
    scales = ([float(s) for s in args.pairs_scales.split(",") if s.strip()] if args.pairs_scales is not None
              else ([1.0, 4.0, 16.0] if args.device == "cuda" else []))
    if any(s != 1 for s in scales):
        rows += pairs_scaling(X, args.device, steps, windows, scales, say)
    stem = out_path(args, "step_speed")
    write_text(stem.with_suffix(".json"), json.dumps(rows, indent=1))
    say.save(stem.with_suffix(".txt"))


if __name__ == "__main__":
    main()
