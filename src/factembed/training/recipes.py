"""Training recipes: what each step trains on, at which learning rates, for how long.

``training="reference"`` is the study's training exactly: 4 whole profiles per step
(all genes), Adam at a constant 5e-3 on every parameter, L2 on all parameters, and
``n_steps`` = 40 passes over the samples (clipped to 2,000..100,000).

``training="fast"`` (the default) reaches the same quality with fewer (sample, gene)
pairs (figures and how they were measured: ``bench/NOTES.md``, "Time to quality"):

* **Gene-subset batches.**  A step trains ``batch_samples`` profiles on ``batch_genes``
  genes (a walk through a random permutation of the genes, every gene once per cycle),
  keeping the reference's pairs per step (``4 x n_genes``).  The two sides are
  balanced: every sample embedding is updated ``pairs / (n_samples x batch_genes)`` times
  per pass over the pairs and every gene embedding ``pairs / (n_genes x batch_samples)``
  times, so ``batch_samples / batch_genes = n_samples / n_genes`` gives both tables the
  same number of updates (``batch_samples`` within 8..256, ``batch_genes`` >= 32).
* **A larger step for the sample table.**  A sample embedding only moves when its
  sample is in the batch and holds 2 numbers pinned down by hundreds of genes; the gene
  table and the decoder keep ``lr``.  From a random start (``init="random"``) the sample
  table's rate is ``10 x lr``.  From the PCA start (the default) the samples start where
  PCA puts them, and the rate follows how often a sample is in a step
  (:func:`sample_lr_scale`): Adam moves a row that has a gradient in a fraction ``p`` of
  the steps by about ``sqrt(p)`` of its rate per step, so ``scale = 1.4 / sqrt(p)``
  (exactly ``10 sqrt(203 / 10,344) / sqrt(p)``)
  (``p = batch_samples / n_samples``) within 3..10 keeps the sample table's movement per
  step at what 10x gives at TCGA's shape (10,344 samples, 203 per step), and stops a
  small cohort's samples from jittering out of the layout PCA gave them (khan, 16 of 63
  samples per step: 3x; the demo 4x; pbmc68k_reduced 5x; 500 x 20,000 4.7x).  Figures:
  ``bench/NOTES.md``, "The sample table's step from the PCA start".
* **Its own length: until converged** (``n_steps=None``, the default, or ``"auto"``).
  A seeded hash of (sample, gene) holds out 1.5-5% of the entries (at least ~4,000) as
  validation entries, left out of every step; their MSE is measured ten times per
  *patience* window; the first time it has not improved by 0.2% over the patience every
  learning rate is divided by 10 (``StopRule.decays = 1``), the second time training
  stops (never before one patience window twice, at most ``AUTO_MAX_STEPS`` = 25,000),
  keeping the last state (``lr_schedule=None`` or ``"constant"``).  With
  ``lr_schedule="anneal"`` (an option) the rates stay full until that MSE is flat or until
  half of a budget of :data:`ANNEAL_BUDGET_SHARE` (a third) of the study's own length for
  the shape (40 passes over the samples at 4 profiles per step, 2,000..100,000 steps),
  whichever comes first, at step ``S``; then they descend linearly in 50 stairs to 1/50 and
  training stops at ``2 S`` (:class:`~factembed.training.heldout.AnnealStop`): 0.28-0.30x the
  study's time at 500 x 20,000 and 100 x 12,000, but above the study's training MSE on khan,
  the demo and planted 100 x 12,000 at full size (``bench/NOTES.md``, "The anneal").
  The patience is 4 passes over the entries within 150..1,000
  steps (:func:`stop_patience`): 1,000 steps on large matrices (from ~2,000 x 20,000 up),
  150 on a cohort of ~60 x 2,000 (:mod:`factembed.training.heldout` says why the last and not
  the best).  An explicit
  ``n_steps=N`` trains exactly N steps without validation.  The pass-count rule this
  replaces (20 passes over the pairs, 500..25,000 steps) never looked at the data: it
  under-trained small cohorts (the 500-step floor) and over-trained TCGA-sized ones.

``training="reference"`` with ``n_steps="auto"`` stops the study's training the same way.

Explicit ``batch_samples``, ``batch_genes``, ``lr``, ``sample_lr_scale`` and ``n_steps``
override either recipe.  A fit of explicit length keeps its learning rates constant, or with
``lr_schedule="anneal"`` keeps them for the first half of its steps and lowers them linearly
towards 0 over the second (:func:`~factembed.training.schedule.anneal_factor`): the end state settles instead of
jittering at the full rate, so a short fit ends lower (figures: ``bench/NOTES.md``, "A fixed
length with an anneal").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import FEConfig, auto_n_steps
from .schedule import anneal_factor

#: the fast recipe's sample-table learning rate, as a multiple of ``lr``: from a random start,
#: and the most :func:`sample_lr_scale` gives from the PCA start
FAST_SAMPLE_LR_SCALE = 10.0
#: from the PCA start: ``SAMPLE_STEP / sqrt(batch_samples / n_samples)`` within
#: [PCA_SAMPLE_LR_MIN, FAST_SAMPLE_LR_SCALE]: 10 at TCGA's shape (203 of 10,344 samples
#: per step), where the 10x rate was chosen; 1.4009
SAMPLE_STEP = FAST_SAMPLE_LR_SCALE * math.sqrt(203 / 10_344)
PCA_SAMPLE_LR_MIN = 3.0
#: the most steps ``n_steps="auto"`` trains (it stops earlier when the validation MSE is flat)
AUTO_MAX_STEPS = 25_000
REFERENCE_BATCH_SAMPLES = 4
REFERENCE_LR = 5e-3
#: the stop rule's patience in passes over the matrix's entries, within
#: [PATIENCE_MIN, PATIENCE_MAX] steps (see :func:`stop_patience`)
PATIENCE_PASSES = 4.0
PATIENCE_MIN = 150
PATIENCE_MAX = 1000
#: validation measurements per patience window, at most every VAL_EVERY_MAX steps
VAL_PER_PATIENCE = 10
VAL_EVERY_MAX = 100
#: ``n_steps="auto"`` with ``lr_schedule="anneal"``: the budget of steps, as a share of the
#: study's own length for the shape (``auto_n_steps`` at 4 profiles per step: 40 passes over
#: the samples within 2,000..100,000 steps); the anneal starts by half of it at the latest
ANNEAL_BUDGET_SHARE = 1 / 3
#: the fast recipe's schedule when trained until converged (``lr_schedule=None``): the
#: anneal is an option, not the default (it missed the study's training MSE on khan, the demo
#: and planted 100 x 12,000 at full size: ``bench/NOTES.md``, "The anneal")
FAST_AUTO_SCHEDULE = "constant"


def stop_patience(n_samples: int, n_genes: int, pairs_per_step: int) -> tuple[int, int]:
    """``(patience, validation period)`` in steps of the auto stop for an ``n x m`` matrix
    trained ``pairs_per_step`` (sample, gene) pairs per step (all ranks together).

    The patience is :data:`PATIENCE_PASSES` passes over the entries, within
    [:data:`PATIENCE_MIN`, :data:`PATIENCE_MAX`] steps: a large matrix (TCGA's 10,344 x
    19,962 makes a pass in ~2,600 steps; 2,000 x 19,962 in ~500) keeps the fixed 1,000
    steps, a small cohort (63 x 2,308: a pass in ~16 steps) judges "flat" over 150, where
    1,000 steps twice were most of its run (500 x 20,000: 500 steps; 100 x 12,000: 150).
    Figures that chose 4 passes and 150 steps: ``bench/NOTES.md``, "Patience of
    four passes within 150..1,000 steps".  The validation MSE is measured
    :data:`VAL_PER_PATIENCE` times per window (every 100 steps for a 1,000-step window)."""
    per_pass = float(n_samples) * float(n_genes) / max(1, int(pairs_per_step))
    patience = int(min(PATIENCE_MAX, max(PATIENCE_MIN, round(PATIENCE_PASSES * per_pass))))
    every = max(10, min(VAL_EVERY_MAX, patience // VAL_PER_PATIENCE))
    patience = max(every, patience // every * every)
    return patience, every


def sample_lr_scale(batch_samples: int, n_samples: int) -> float:
    """The fast recipe's sample-table rate (a multiple of ``lr``) from the PCA start for
    ``batch_samples`` of ``n_samples`` samples per step (per rank): :data:`SAMPLE_STEP` /
    sqrt(batch_samples / n_samples) within [:data:`PCA_SAMPLE_LR_MIN`,
    :data:`FAST_SAMPLE_LR_SCALE`] (see the module's docstring)."""
    p = max(1, int(batch_samples)) / max(1, int(n_samples))
    return float(min(FAST_SAMPLE_LR_SCALE, max(PCA_SAMPLE_LR_MIN, SAMPLE_STEP / math.sqrt(min(1.0, p)))))


@dataclass(frozen=True)
class TrainingPlan:
    """The resolved training of one fit (per rank for a data-parallel fit)."""
    training: str
    batch_samples: int            # profiles per step (per rank)
    batch_genes: int | None       # genes per step; None: all genes
    lr: float                     # decoder and gene table
    sample_lr: float              # sample table
    n_steps: int                  # exactly these steps, or at most these with auto_stop
    auto_stop: bool = False       # n_steps="auto": stop when the validation MSE is flat
    patience: int = PATIENCE_MAX  # auto_stop: steps over which "flat" is judged (see stop_patience)
    val_every: int = VAL_EVERY_MAX  # auto_stop: steps between two validation measurements
    init: str = "random"          # the start point: "pca" or "random" (factembed.training.warm_start)
    lr_schedule: str = "constant"  # "constant" or "anneal" (anneal_factor; with auto_stop: AnnealStop)
    anneal_budget: int = 0        # auto_stop with "anneal": the anneal starts by half of it at the latest

    def describe(self) -> str:
        genes = "all genes" if self.batch_genes is None else f"{self.batch_genes:,} genes"
        steps = (f"until the validation MSE is flat over {self.patience:,} steps, at most {self.n_steps:,}"
                 if self.auto_stop else f"{self.n_steps:,}")
        if self.auto_stop and self.lr_schedule == "anneal":
            steps = (f"full rates until the validation MSE is flat over {self.patience:,} steps or until step "
                     f"{self.anneal_budget // 2:,}, then as many annealed;")
        anneal = ", annealed over the second half" if self.lr_schedule == "anneal" and not self.auto_stop else ""
        return (f"{self.training} training: {steps} steps of {self.batch_samples} profiles x {genes}, "
                f"lr {self.lr:g} (sample table {self.sample_lr:g}{anneal}), {self.init} start")

    def lr_factor(self):
        """The learning rates' multiplier of each (1-based) step of a fit of explicit length,
        or None (constant rates, or the anneal of an auto stop, decided on its curve)."""
        if self.lr_schedule != "anneal" or self.auto_stop:   # auto: the stop rule's anneal
            return None
        n = self.n_steps
        return lambda step: anneal_factor(step, n)


def trains_until_converged(cfg: FEConfig) -> bool:
    """Whether ``cfg`` trains until its validation MSE is flat (``n_steps="auto"``, or the
    fast recipe's default ``None``) rather than an explicit number of steps."""
    return cfg.n_steps == "auto" or (cfg.n_steps is None and cfg.training == "fast")


def resolved_lr_schedule(cfg: FEConfig) -> str:
    """``cfg.lr_schedule``, or the recipe's for ``None``: :data:`FAST_AUTO_SCHEDULE` for the
    fast recipe trained until converged, ``"constant"`` otherwise (the reference recipe is
    the study's training, and an explicit ``n_steps=N`` keeps its constant rates unless asked)."""
    if cfg.lr_schedule is not None:
        return cfg.lr_schedule
    return FAST_AUTO_SCHEDULE if cfg.training == "fast" and trains_until_converged(cfg) else "constant"


def plan_training(cfg: FEConfig, n_samples: int, n_genes: int, world: int = 1) -> TrainingPlan:
    """The :class:`TrainingPlan` of ``cfg`` for ``n_samples x n_genes`` data
    (``world`` ranks, each drawing ``batch_samples`` of its own shard per step)."""
    n, m, world = int(n_samples), int(n_genes), max(1, int(world))
    auto = trains_until_converged(cfg)
    explicit_steps = None if auto else cfg.n_steps
    lr = cfg.lr if cfg.lr is not None else REFERENCE_LR
    init = cfg.init or ("random" if cfg.training == "reference" else "pca")
    if cfg.training == "reference":
        b = cfg.batch_samples or REFERENCE_BATCH_SAMPLES
        bg = cfg.batch_genes
        scale = cfg.sample_lr_scale if cfg.sample_lr_scale is not None else 1.0
        b = min(b, max(1, n // world))
        bg = None if bg is None or bg >= m else int(bg)
        n_steps = explicit_steps or auto_n_steps(n, b * world)
    else:
        b, bg = fast_batch_shape(n // world, m, cfg.batch_samples, cfg.batch_genes)
        default_scale = sample_lr_scale(b, n // world) if init == "pca" else FAST_SAMPLE_LR_SCALE
        scale = cfg.sample_lr_scale if cfg.sample_lr_scale is not None else default_scale
        n_steps = explicit_steps or AUTO_MAX_STEPS
    if auto:
        n_steps = AUTO_MAX_STEPS
    schedule = resolved_lr_schedule(cfg)
    patience, every = stop_patience(n, m, b * world * (m if bg is None else bg))
    budget = 0
    if auto and schedule == "anneal":
        # the anneal's start is a validation step: half the budget on the validation grid
        # (and within the run's most steps, so that the anneal always ends)
        half = min(ANNEAL_BUDGET_SHARE * auto_n_steps(n, REFERENCE_BATCH_SAMPLES), n_steps) / 2
        budget = 2 * max(every, int(half) // every * every)
    return TrainingPlan(cfg.training, int(b), bg, float(lr), float(lr * scale), int(n_steps), auto,
                        patience, every, init, schedule, budget)


def fast_batch_shape(n: int, m: int, batch_samples: int | None = None,
                     batch_genes: int | None = None) -> tuple[int, int | None]:
    """``(batch_samples, batch_genes or None)`` of the fast recipe for ``n`` samples (per
    rank) x ``m`` genes: the reference's ``4 m`` pairs per step, split in the ratio ``n / m``."""
    pairs = REFERENCE_BATCH_SAMPLES * m
    if batch_samples is None and batch_genes is None:
        b = int(round(math.sqrt(pairs * n / m)))
        b = max(8, min(256, b))
        bg = pairs // b
    elif batch_genes is None:
        b = int(batch_samples)
        bg = max(1, pairs // b)
    elif batch_samples is None:
        bg = int(batch_genes)
        b = max(1, min(256, pairs // bg))
    else:
        b, bg = int(batch_samples), int(batch_genes)
    b = max(1, min(b, n))
    bg = max(min(32, m), min(bg, m))
    return b, (None if bg >= m else int(bg))
