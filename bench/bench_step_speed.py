"""Steps per second of train() for the reference and the default (fast) recipes, at
TCGA shape, on any device and precision (the CPU figures of record come from
bench_throughput.py; this one exists so that a GPU machine can be measured in one go).

    python bench/bench_step_speed.py --device cuda --precisions fp32,bf16
"""

from __future__ import annotations

import json

from _common import (TCGA_GENES, TCGA_SAMPLES, RecipeTraining, Tee, machine_line, out_path, parser, tcga_like,
                     write_text)


def steps_per_second(X, training: str, device: str, precision: str, steps: int, windows: int) -> dict:
    from factembed import FEConfig

    fit = RecipeTraining(X, FEConfig(training=training, device=device, precision=precision, random_state=0))
    plan = fit.plan
    rates = []
    for w in range(windows + 1):          # the first window warms up (allocation, compilation)
        seconds = fit.advance(fit.done + steps)
        if w:
            rates.append(steps / seconds)
    rates.sort()
    return {"training": training, "precision": precision, "plan": plan.describe(),
            "it_s_median": rates[len(rates) // 2], "it_s": rates, "pairs_per_step": fit.pairs_per_step,
            "hours_for_plan": plan.n_steps / rates[len(rates) // 2] / 3600}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--steps", type=int, default=200, help="steps per timing window")
    p.add_argument("--windows", type=int, default=5)
    args = p.parse_args()
    n, m = (64, 300) if args.quick else (TCGA_SAMPLES, TCGA_GENES)
    steps, windows = (3, 1) if args.quick else (args.steps, args.windows)
    X = tcga_like(n, m, seed=0)
    say = Tee()
    say(machine_line() + f"; device {args.device}")
    rows = []
    for precision in [s.strip() for s in args.precisions.split(",") if s.strip()]:
        for training in ("reference", "fast"):
            r = steps_per_second(X, training, args.device, precision, steps, windows)
            rows.append(r)
            say(f"{training:9s} {precision}: {r['it_s_median']:8.2f} it/s (median of {windows} x {steps} steps), "
                  f"{r['pairs_per_step'] * r['it_s_median'] / 1e6:7.2f} M pairs/s; {r['plan']}; "
                  f"the plan's steps take {r['hours_for_plan'] * 60:.1f} min")
    stem = out_path(args, "step_speed")
    write_text(stem.with_suffix(".json"), json.dumps(rows, indent=1))
    say.save(stem.with_suffix(".txt"))


if __name__ == "__main__":
    main()
