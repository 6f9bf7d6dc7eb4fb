"""Learning-rate schedules of a fit: :func:`anneal_factor`, the multiplier of every learning
rate at each step of ``lr_schedule="anneal"`` (a fit of explicit length, and the anneal
that ends a fit of ``n_steps="auto"`` under :class:`~factembed.training.heldout.AnnealStop`).
"""

from __future__ import annotations

import math

#: the share of the steps at the full rates, and the number of equal stairs of the linear
#: descent after it (stairs, not a ramp: a CUDA-graph step is captured again at every change
#: of a learning rate)
ANNEAL_HOLD = 0.5
ANNEAL_STAIRS = 50


def anneal_factor(step: int, n_steps: int, hold: float = ANNEAL_HOLD, stairs: int = ANNEAL_STAIRS) -> float:
    """The learning rates' multiplier at (1-based) ``step`` of ``n_steps`` under
    ``lr_schedule="anneal"``: 1 for the first ``hold`` share of the steps, then a linear
    descent over the rest in ``stairs`` equal stairs, from 1 (the first stair still at the
    full rates) to ``1 / stairs`` (never 0: no step is wasted at a zero rate).  A stair of
    a short fit can be a single step: a CUDA-graph step is then captured again at nearly
    every step of the descent."""
    n, stairs = max(1, int(n_steps)), max(1, int(stairs))
    start = int(math.floor(hold * n))
    if step <= start:
        return 1.0
    span = n - start
    k = min(stairs, ((int(step) - start) * stairs + span - 1) // span)   # stair 1..stairs
    return float(stairs - k + 1) / stairs
