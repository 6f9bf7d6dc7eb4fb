"""Run the ``factembed`` command (or a bench script) with one variant of the defaults, for
experiments that need no new option: the stop rule's patience, or the start point.

    FE_PATIENCE_MIN=300 python bench/variant.py evaluate DATA ...
    FE_START=no-bias python bench/variant.py evaluate DATA ...
    FE_START=no-bias FE_BENCH=bench/bench_convergence.py python bench/variant.py --datasets khan

``FE_PATIENCE_MIN`` / ``FE_PATIENCE_PASSES``: ``recipes.PATIENCE_MIN`` / ``PATIENCE_PASSES``.
``FE_START`` (the fast recipe's ``init="pca"`` start, replaced): ``no-bias`` (PCA scores, the
output bias left at its random draw), ``bias-only`` (random embedding, output bias at the
data's mean), ``whiten`` (PCA scores scaled to sd 0.1 on every axis, bias at the mean).
Figures: bench/NOTES.md, "Khan's 8-D held-out distance r and the start point".
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

import factembed.training.recipes as recipes  # noqa: E402
import factembed.training.warm_start as warm_start  # noqa: E402

STARTS = ("no-bias", "bias-only", "whiten")


def _start(mode: str):
    @torch.no_grad()
    def start(net, source, generator, block_rows=None):
        means, axes, level = warm_start.principal_axes(source, net.sample_dim, generator, block_rows=block_rows)
        if mode in ("no-bias", "whiten"):
            Z = warm_start.pca_scores(source, means, axes, block_rows=block_rows).double()
            sd = Z.std(0).clamp_min(1e-12) if mode == "whiten" else Z[:, 0].std().clamp_min(1e-12)
            net.sample_embedding[:, :Z.shape[1]] = (Z / sd * 0.1).to(net.sample_embedding.dtype)
        if mode != "no-bias":
            net.layers[-1].bias.fill_(level)
    return start


def main() -> int:
    if "FE_PATIENCE_MIN" in os.environ:
        recipes.PATIENCE_MIN = int(os.environ["FE_PATIENCE_MIN"])
    if "FE_PATIENCE_PASSES" in os.environ:
        recipes.PATIENCE_PASSES = float(os.environ["FE_PATIENCE_PASSES"])
    mode = os.environ.get("FE_START")
    if mode:
        if mode not in STARTS:
            raise SystemExit(f"FE_START must be one of {', '.join(STARTS)}, got {mode!r}")
        warm_start.pca_warm_start = _start(mode)
    script = os.environ.get("FE_BENCH")
    if script:
        sys.path.insert(0, str(Path(script).resolve().parent))
        sys.argv = [script] + sys.argv[1:]
        runpy.run_path(script, run_name="__main__")
        return 0
    from factembed.cli import main as cli
    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
