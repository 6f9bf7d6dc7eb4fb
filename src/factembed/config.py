"""The one configuration object shared by the estimator and the command line.

:class:`FEConfig` lists every hyper-parameter of a Factorized Embeddings model and of
its training / inference.  :class:`factembed.FactorizedEmbeddings` takes the same names
as keyword arguments, and ``factembed fit`` builds an :class:`FEConfig` from its options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Training passes over the samples used by the automatic ``n_steps`` rule.  The
#: reference configuration (100,000 steps of 4 profiles over 10,344 TCGA samples)
#: makes ~39 passes.
AUTO_PASSES = 40
AUTO_MIN_STEPS = 2_000
AUTO_MAX_STEPS = 100_000
#: the training recipes (see :mod:`factembed.training.recipes`)
TRAININGS = ("fast", "reference")
#: the learning-rate schedules (``lr_schedule``; see :mod:`factembed.training.recipes`)
LR_SCHEDULES = ("constant", "anneal")


@dataclass
class FEConfig:
    """Hyper-parameters of a Factorized Embeddings model.

    Model: ``sample_dim`` (size of each sample embedding), ``gene_dim`` (size of each
    gene embedding), ``hidden`` (widths of the ReLU hidden layers of the decoder).

    Training: ``training`` ("fast", the default, or "reference": the study's exact
    training; see :mod:`factembed.training.recipes`), ``l2`` (weight of the sum of squares of
    *all* parameters added to the MSE), ``lr`` (Adam learning rate; ``None``: 5e-3),
    ``batch_samples`` (profiles per step), ``batch_genes`` (genes per step),
    ``sample_lr_scale`` (the sample table's learning rate as a multiple of ``lr``),
    ``n_steps``, ``lr_schedule``; each ``None`` means the recipe's choice.  ``lr_schedule``:
    "constant" (what ``None`` gives every recipe) or "anneal": a fit of explicit length (``n_steps=N``) keeps every
    learning rate for its first half and lowers them linearly towards 0 over its second
    half; a fit of ``n_steps="auto"`` keeps them until its validation MSE is flat or half
    of a budget of steps has passed, then anneals over as many steps again (see
    :class:`factembed.training.heldout.AnnealStop`).

    Start point: ``init`` ("pca": sample embedding from the first principal components,
    output bias at the data's mean level; "random": the study's draw; ``None``: the
    recipe's, fast "pca", reference "random"; see :mod:`factembed.training.warm_start`).

    Inference of new samples: ``infer_steps`` Adam steps at ``infer_lr`` (cosine decay
    to 0; ``"auto"``, the default: each sample's step is a quarter of the distance from its
    start point to the nearest other training sample, so that it follows the embedding's
    local scale; a number: that absolute step for every sample), each over ``infer_genes``
    genes taken in turn from a random permutation of the genes (all genes when the model has fewer); the start point is the training
    sample whose reconstruction is nearest to the new profile, measured on
    ``init_genes`` fixed random genes (among at most 4,096 training samples).  The
    defaults (50 steps x 512 genes) trade precision for speed; ``infer_steps=200,
    infer_genes=2048`` lands much closer to the full-gene optimum at many
    times the cost (time and distance of each setting: ``bench/NOTES.md``, measured by
    ``bench/bench_inference.py``).

    Engine: ``device`` ("auto", "cpu", "cuda", "cuda:1", ...), ``precision``
    ("fp32" or "bf16"; "auto" picks bf16 only where the hardware has native bf16
    matrix units and fp32 elsewhere), ``gene_chunk`` (genes per fused block),
    ``random_state`` (seed; ``None`` = fresh entropy), ``verbose`` (progress bars).
    """

    sample_dim: int = 2
    gene_dim: int = 100
    hidden: tuple[int, ...] = (100, 50, 50)
    l2: float = 1e-7
    lr: float | None = None
    batch_samples: int | None = None
    n_steps: int | str | None = None
    training: str = "fast"
    batch_genes: int | None = None
    sample_lr_scale: float | None = None
    init: str | None = None
    lr_schedule: str | None = None
    infer_steps: int = 50
    infer_lr: float | str = "auto"
    infer_genes: int = 512
    init_genes: int = 2048
    device: str = "auto"
    precision: str = "fp32"
    gene_chunk: int | None = None
    random_state: int | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid hyper-parameter."""
        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int,)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("sample_dim", "gene_dim", "infer_genes", "init_genes"):
            positive_int(name, getattr(self, name))
        if self.n_steps != "auto":
            positive_int("n_steps", self.n_steps, allow_none=True)
        for name in ("batch_samples", "batch_genes"):
            positive_int(name, getattr(self, name), allow_none=True)
        if self.training not in TRAININGS:
            raise ValueError(f"training must be 'fast' or 'reference', got {self.training!r}")
        if isinstance(self.infer_steps, bool) or not isinstance(self.infer_steps, int) or self.infer_steps < 0:
            raise ValueError(f"infer_steps must be a non-negative integer (0 = start point only), "
                             f"got {self.infer_steps!r}")
        positive_int("gene_chunk", self.gene_chunk, allow_none=True)
        if len(self.hidden) == 0:
            raise ValueError("hidden must name at least one hidden layer width")
        for h in self.hidden:
            positive_int("hidden", h)
        for name in ("l2", "lr", "infer_lr", "sample_lr_scale"):
            v = getattr(self, name)
            if (v is None and name in ("lr", "sample_lr_scale")) or (name == "infer_lr" and v == "auto"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
        if self.lr == 0 or self.infer_lr == 0 or self.sample_lr_scale == 0:
            raise ValueError("learning rates must be > 0")
        if self.init not in (None, "pca", "random"):
            raise ValueError(f"init must be 'pca', 'random' or None (the recipe's: fast 'pca', reference "
                             f"'random'), got {self.init!r}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be 'constant', 'anneal' or None (the recipe's), "
                             f"got {self.lr_schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def auto_n_steps(n_samples: int, batch_samples: int) -> int:
    """The automatic number of training steps.

    ``AUTO_PASSES`` (40) passes over the samples, the reference's ~39 passes, clipped to
    [2,000, 100,000] steps: ``clip(ceil(40 * n / batch_samples), 2000, 100000)``.
    For TCGA (10,344 samples, 4 per step) this gives 100,000 steps, the reference value.
    """
    steps = math.ceil(AUTO_PASSES * n_samples / max(1, batch_samples))
    return int(min(AUTO_MAX_STEPS, max(AUTO_MIN_STEPS, steps)))
