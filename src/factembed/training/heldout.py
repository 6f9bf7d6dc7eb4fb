"""Held-out validation entries and the stopping rule of ``n_steps="auto"``.

* :func:`held_out` decides, from a hash of (sample index, gene index, seed) alone, whether
  an entry of the matrix is a validation entry: nothing of size ``n x m`` is stored, and
  the same entries are held out whatever the batch, the gene subset or the data source.
  Training steps set those targets to NaN, which the fused kernel leaves out of the loss
  and of every gradient (see ``FusedProfileLoss(nan_targets=True)``).
* :class:`ValidationSet` keeps a seeded subset of the held-out entries (at most
  ``max_entries``, spread over up to ``max_rows`` samples) with their targets, and
  measures the model's MSE on them at the samples' current embeddings.
* :class:`StopRule`: the first ``decays`` times (default 1) the validation MSE has not
  improved by a relative ``tol`` over ``patience`` steps, multiply every learning rate by
  ``factor``; the next time, stop (never before ``min_steps``).  Its state is a pure function of
  the validation curve kept in the history, so a resumed run replays it from the
  checkpoint's history and stops at the same step.
* :class:`AnnealStop`: the same test of "flat", or half of a step budget, starts a linear
  descent of the rates over as many steps again, and the stop comes at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

_M32 = (1 << 32) - 1
_MIX = 0x45D9F3B
_BINS = 1_000_000


def _hash_int64(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (every product stays below 2**63: no overflow in int64)."""
    for _ in range(2):
        h = ((h ^ (h >> 16)) * _MIX) & _M32
    return h ^ (h >> 16)


def _entry_hash(samples: torch.Tensor, genes: torch.Tensor | None, n_genes: int, seed: int) -> torch.Tensor:
    """32-bit hash of every (sample, gene) pair of ``samples x genes`` (int64)."""
    s = samples.to(torch.int64).reshape(-1, 1)
    g = (torch.arange(n_genes, dtype=torch.int64) if genes is None else genes.to(torch.int64)).reshape(1, -1)
    key = ((s * 73856093) ^ (g * 19349663) ^ (int(seed) % (1 << 31)) * 83492791) & _M32
    return _hash_int64(key)


def held_out(samples: torch.Tensor, genes: torch.Tensor | None, n_genes: int, seed: int,
             fraction: float) -> torch.Tensor:
    """Boolean ``(len(samples), len(genes))`` mask of the validation entries among rows
    ``samples`` and columns ``genes`` (``None``: all ``n_genes`` genes)."""
    return (_entry_hash(samples, genes, n_genes, seed) % _BINS) < int(round(float(fraction) * _BINS))


def default_fraction(n_samples: int, n_genes: int) -> float:
    """1.5% of the entries, more on a small matrix so that at least ~4,000 are held out
    (at most 5%)."""
    return float(min(0.05, max(0.015, 4000.0 / max(1, n_samples * n_genes))))


class ValidationSet:
    """The measured validation entries, with their observed targets (NaN targets are
    dropped): at most ``max_entries`` of them, spread over the first ``max_rows`` samples
    of a seeded permutation (every sample when there are fewer), at most
    ``ceil(max_entries / rows)`` per sample.

    Every held-out entry is left out of training (:meth:`mask`); only this subset is
    measured.  Spreading it over many samples matters on a large matrix: 50,000 entries
    taken whole-row from the first ~170 samples of a 10,344 x 19,962 matrix made the
    measured MSE jump by +-3% between consecutive points, as those few samples'
    embeddings moved (``bench/NOTES.md``).  Which entries of a sample are measured
    depends only on (global sample, gene, seed), so shards of a data-parallel fit measure
    those a single process would wherever the cap does not bind.

    A data-parallel rank holds rows ``offset:offset + len(source)`` of the matrix: the
    hash sees global sample indices (every rank holds out the entries a single process
    would), and ``reduce`` (an in-place sum over the ranks of a float64 tensor, e.g.
    ``torch.distributed.all_reduce``) pools the ranks' sums, so every rank sees the same
    validation MSE and stops at the same step."""

    def __init__(self, source, seed: int, fraction: float, max_entries: int = 50_000,
                 every: int = 100, offset: int = 0, reduce=None, max_rows: int = 5_000) -> None:
        n, m = (int(v) for v in source.shape)
        self.n_genes, self.seed, self.fraction, self.every = m, int(seed), float(fraction), int(every)
        self.offset, self.reduce = int(offset), reduce
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:max(1, int(max_rows))]
        per_row = -(-int(max_entries) // len(order))
        rows, genes, targets, count = [], [], [], 0
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            mask = held_out(idx + self.offset, None, m, self.seed, self.fraction)
            X = source.rows(idx).to("cpu", torch.float32)
            mask &= ~torch.isnan(X)
            r, c = mask.nonzero(as_tuple=True)
            if r.numel() and int(mask.sum(1).max()) > per_row:
                # keep the per_row entries of lowest second hash in each row (r is sorted)
                rank = _entry_hash(idx + self.offset, None, m, self.seed + 1)[r, c]
                o = torch.argsort(r * (_M32 + 1) + rank)
                r, c = r[o], c[o]
                first = torch.searchsorted(r, r, side="left")
                keep = (torch.arange(r.numel()) - first) < per_row
                r, c = r[keep], c[keep]
            rows.append(idx[r])
            genes.append(c)
            targets.append(X[r, c])
            count += int(r.numel())
            if count >= max_entries:
                break
        self.rows = torch.cat(rows)[:max_entries]
        self.genes = torch.cat(genes)[:max_entries]
        self.targets = torch.cat(targets)[:max_entries]
        self.total = int(self._sum(torch.tensor([float(self.rows.numel())], dtype=torch.float64))[0])
        if self.total == 0:
            raise ValueError("no validation entries could be drawn (too few observed values): "
                             "pass a larger fraction or turn validation off")

        self.best_state: dict | None = None
        self.best_step: int | None = None

    def __len__(self) -> int:
        return int(self.rows.numel())

    def keep_best(self, net, step: int) -> None:
        """Remember ``net``'s parameters as the best so far (a copy; small next to the data)."""
        self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.best_step = int(step)

    def restore_best(self, net, history) -> bool:
        """Load the best state into ``net`` if it is not the last one; True if loaded.
        A run resumed from a checkpoint written after its best point has no copy of it
        and keeps its last state."""
        if self.best_state is None or not history.val_step:
            return False
        best = int(np.argmin(history.val_loss))
        if history.val_step[best] != self.best_step or self.best_step == history.val_step[-1]:
            return False
        net.load_state_dict(self.best_state)
        return True

    def mask(self, samples: torch.Tensor, genes: torch.Tensor | None) -> torch.Tensor:
        """The validation entries among this source's rows ``samples`` and ``genes``."""
        return held_out(samples + self.offset, genes, self.n_genes, self.seed, self.fraction)

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (itself in a single process)."""
        if self.reduce is None:
            return values
        out = values.clone()
        self.reduce(out)
        return out

    @torch.no_grad()
    def predict(self, net, chunk: int = 8192) -> torch.Tensor:
        """The model's values of the validation entries at the samples' current
        embeddings (float32, on the CPU)."""
        dev = net.sample_embedding.device
        return torch.cat([net.decode_pairs(self.rows[i:i + chunk].to(dev), self.genes[i:i + chunk].to(dev))
                          .float().cpu() for i in range(0, len(self), chunk)])

    def mse(self, net) -> float:
        """MSE of the model's reconstruction on the validation entries (float64 sums,
        pooled over the ranks)."""
        diff = self.predict(net).double() - self.targets.double()
        total = self._sum(torch.stack([(diff * diff).sum(), torch.tensor(float(len(self)), dtype=torch.float64)]))
        return float(total[0]) / float(total[1])

    def scores(self, net) -> dict:
        """``{"mse", "pearson_r", "entries", "fraction"}`` of the model on the validation
        entries, pooled over the ranks (what ``factembed info`` shows as the held-out
        figures)."""
        p, t = self.predict(net).double(), self.targets.double()
        k, sp, st, spp, stt, spt, sdd = self._sum(torch.stack([
            torch.tensor(float(len(self)), dtype=torch.float64), p.sum(), t.sum(), (p * p).sum(), (t * t).sum(),
            (p * t).sum(), ((p - t) ** 2).sum()])).tolist()
        cov, vp, vt = spt - sp * st / k, spp - sp * sp / k, stt - st * st / k
        den = (vp * vt) ** 0.5
        return {"mse": sdd / k, "pearson_r": cov / den if den > 0 else float("nan"),
                "entries": int(k), "fraction": self.fraction}


@dataclass
class StopRule:
    """Stop when the best validation MSE of the last ``patience`` steps is not a relative
    ``tol`` below the best before them; never before ``min_steps``.

    ``keep``: which state the fit ends with, ``"last"`` (default) or ``"best"`` (the
    parameters at the lowest validation MSE).  The held-out entries measure how well
    the model predicts unseen values of training samples, which on a small cohort is
    limited by the gene side: each gene's ``gene_dim`` numbers are fitted to only
    ``n_samples`` values and start to memorise them, so the validation MSE turns up while
    the sample embedding is still improving (held-out kNN accuracy and distance
    correlation keep rising; figures in ``bench/NOTES.md``).  The last state is the
    better embedding; the flat validation curve says when more steps stop paying."""
    patience: int = 1000
    tol: float = 0.002
    min_steps: int = 500
    keep: str = "last"
    #: learning-rate decays on a plateau before the stop: the first ``decays`` times the
    #: curve is flat, every learning rate is multiplied by ``factor`` and the patience
    #: starts again from that step.  One decay is the default: on large matrices the
    #: validation MSE's point-to-point noise at the full rates hides a slow trend that the
    #: decayed rates follow much further (figures: ``bench/NOTES.md``, "One learning-rate
    #: decay before the stop")
    decays: int = 1
    factor: float = 0.1
    _scan: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.keep not in ("last", "best"):
            raise ValueError(f"keep must be 'last' or 'best', got {self.keep!r}")
        if self.decays < 0 or not 0 < self.factor < 1:
            raise ValueError("decays must be >= 0 and factor within (0, 1)")

    def _flat(self, steps: list[int], values: list[float], since: int) -> bool:
        if steps[-1] < max(self.min_steps, self.patience, since + self.patience):
            return False
        cut = steps[-1] - self.patience
        before = [v for s, v in zip(steps, values) if s <= cut]
        recent = [v for s, v in zip(steps, values) if s > cut]
        if not before or not recent:
            return False
        return min(recent) > (1.0 - self.tol) * min(before)

    def events(self, steps: list[int], values: list[float]) -> list[tuple[str, int]]:
        """``("decay" | "stop", step)`` of the curve, replayed from its start: a pure
        function of the curve, so a resumed run finds the same decays (its optimizer
        state holds the decayed rates) and the same stop.  The scan goes on from the
        last call's end when the curve only grew (the loop calls it at every point)."""
        k0, since, out = 0, 0, []
        if self._scan is not None:
            seen, s_since, s_out = self._scan
            if len(seen[0]) <= len(steps) and list(steps[:len(seen[0])]) == seen[0] \
                    and list(values[:len(seen[1])]) == seen[1]:
                k0, since, out = len(seen[0]), s_since, list(s_out)
        stopped = bool(out) and out[-1][0] == "stop"
        for k in range(k0 + 1, len(steps) + 1):
            if stopped:
                break
            if self._flat(steps[:k], values[:k], since):
                if len(out) < self.decays:
                    out.append(("decay", steps[k - 1]))
                    since = steps[k - 1]
                else:
                    out.append(("stop", steps[k - 1]))
                    stopped = True
        if not stopped:
            self._scan = ((list(steps), list(values)), since, list(out))
        return out

    def action(self, steps: list[int], values: list[float]) -> str | None:
        """What to do at the curve's last point: ``"decay"``, ``"stop"`` or None."""
        if not steps:
            return None
        ev = self.events(steps, values)
        return ev[-1][0] if ev and ev[-1][1] == steps[-1] else None

    def should_stop(self, steps: list[int], values: list[float]) -> bool:
        return self.action(steps, values) == "stop"

    def reason(self, steps: list[int], values: list[float], stopped: bool) -> str:
        if not steps:
            return "no validation"
        best = int(np.argmin(values))
        decayed = [s for kind, s in self.events(steps, values) if kind == "decay"]
        if stopped:
            return (f"validation MSE improved less than {self.tol:.1%} over the last {self.patience:,} steps "
                    f"(best {values[best]:.4g} at step {steps[best]:,}); stopped at step {steps[-1]:,}"
                    + (f" (learning rates x{self.factor:g} at step{'s' if len(decayed) > 1 else ''} "
                       f"{', '.join(f'{s:,}' for s in decayed)})" if decayed else ""))
        return f"reached the maximum of {steps[-1]:,} steps, validation MSE {values[-1]:.4g} (best {values[best]:.4g})"


@dataclass
class AnnealStop(StopRule):
    """The stop of ``n_steps="auto"`` with ``lr_schedule="anneal"``: full learning rates
    until the validation MSE is flat (the test of :class:`StopRule`) or until half of
    ``budget`` steps, whichever comes first, at step ``S``; then every rate descends
    linearly (:func:`~factembed.training.schedule.anneal_factor` over ``2 S`` steps) and
    training stops at step ``2 S``, keeping the last state.  Like :class:`StopRule`, a pure
    function of the validation curve (``S`` is a validation step), so a resumed run
    finds the same rates and the same stop."""
    budget: int = 0

    @property
    def half(self) -> int:
        """The latest step the anneal starts at: half the budget."""
        return max(1, int(self.budget) // 2)

    def start(self, steps: list[int], values: list[float]) -> int | None:
        """``S``, the step the anneal started at, or None while the rates are full."""
        half = self.half
        k0 = 0
        if self._scan is not None:         # the scan goes on from the last call's end
            seen_steps, seen_values, found = self._scan
            if len(seen_steps) <= len(steps) and list(steps[:len(seen_steps)]) == seen_steps \
                    and list(values[:len(seen_values)]) == seen_values:
                if found is not None:
                    return found
                k0 = len(seen_steps)
        found = None
        for k in range(k0 + 1, len(steps) + 1):
            if steps[k - 1] >= half or self._flat(steps[:k], values[:k], 0):
                found = int(steps[k - 1])
                steps, values = steps[:k], values[:k]
                break
        self._scan = (list(steps), list(values), found)
        return found

    def events(self, steps: list[int], values: list[float]) -> list[tuple[str, int]]:
        s = self.start(steps, values) if steps else None
        if s is None:
            return []
        out = [("anneal", s)]
        return out + [("stop", 2 * s)] if steps[-1] >= 2 * s else out

    def lr_factor(self, steps: list[int], values: list[float]):
        """The rates' multiplier of each step from the curve so far (None: full rates)."""
        from .schedule import anneal_factor

        s = self.start(steps, values) if steps else None
        return None if s is None else (lambda step: anneal_factor(step, 2 * s))

    def reason(self, steps: list[int], values: list[float], stopped: bool) -> str:
        s = self.start(steps, values) if steps else None
        if not (stopped and s is not None):
            return super().reason(steps, values, False)       # no validation, or the maximum reached
        best = int(np.argmin(values))
        why = "the validation MSE was flat" if s < self.half else f"half of its budget of {int(self.budget):,} steps"
        return (f"learning rates annealed from step {s:,} ({why}); stopped at step {2 * s:,} "
                f"(validation MSE {values[-1]:.4g}, best {values[best]:.4g} at step {steps[best]:,})")
