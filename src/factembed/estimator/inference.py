"""Embedding new samples into a frozen model.

The decoder and the gene embeddings stay fixed.  Every new sample starts at the
embedding of the training sample whose *reconstructed* profile is nearest (Euclidean)
to the new profile, and is then refined by Adam on its own profile only.  All new
samples are optimised together (in blocks of rows), not one by one; each sample's
loss (mean squared error over genes) depends only on its own embedding, so the result
for a sample does not depend on which other samples are embedded with it, except
through the shared random gene draws.

Missing values (``missing=True``): NaN entries of the new profiles are left out of
both the start-point search (distances over each sample's observed genes among the
search genes) and the refinement (each sample's loss is the mean squared error over
its observed genes among the step's genes).  Masks are made per block of rows, never
for the whole matrix.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..engine.kernel import FusedProfileLoss
from ..engine.network import FactorizedEmbeddingNet
from ..training.loop import GeneWalk, _Progress

#: rows of new samples per block (bounds the activations of one block)
ROW_BLOCK = 256
#: most training samples considered as start points (a fixed random subset of them when
#: the model has more): the start-point search decodes every candidate, so its cost must
#: not grow with the training set (1,000,000 cells would otherwise cost minutes per call)
INIT_CANDIDATES = 4096
#: the automatic inference step (``lr="auto"``): a new sample moves in Adam steps of this
#: many nearest-neighbour distances of its start point (among the start candidates), so
#: that the step follows the embedding's local scale, which differs by model and place
#: (figures: ``bench/NOTES.md``, "Automatic inference step")
AUTO_STEP = 0.25
#: ``lr="auto"`` for a model of one training sample (no neighbour to measure): the absolute step
AUTO_FALLBACK_LR = 1e-2


#: the fewest samples of a covariate level the model never saw from which ``transform``
#: learns that level's offsets (fewer: an error naming the level)
MIN_NEW_LEVEL_SAMPLES = 5
#: rounds of embedding and offset estimation for the samples of new levels
NEW_LEVEL_ROUNDS = 4
#: the offsets of a group of k samples are shrunk toward 0 by k / (k + NEW_LEVEL_SHRINK): few
#: samples give noisy offsets, which pull their embeddings (bench/NOTES.md, "Covariates against
#: ComBat and Harmony": with 5 or 10 new samples, 5 beat no shrinkage on every draw measured)
NEW_LEVEL_SHRINK = 5.0


class NewLevels:
    """New samples some of whose categorical levels the model never saw (a new batch).

    A new level cannot be a vector of the model's level table: with few training levels the
    table spans only the effects of those levels.  So the samples of a new level are
    decoded as the covariate's most frequent training level (its reference,
    :attr:`reference`) plus a per-gene offset of their measurements, one per group of
    samples that share their new levels (:attr:`group`, -1 for samples without one),
    learned with their embeddings by :func:`embed_with_new_levels`.  :attr:`term`: every
    sample's covariate term so."""

    def __init__(self, net: FactorizedEmbeddingNet, levels: torch.Tensor, values: torch.Tensor,
                 new_counts: list[int]):
        dev = net.gene_embedding.device
        known = torch.tensor([k for k, _ in net.covariate_shapes if k > 0], dtype=torch.long)
        counts = [torch.bincount(net.covariate_levels[:, c].cpu(), minlength=int(k)) for c, k in enumerate(known)]
        self.reference = torch.stack([c.argmax() for c in counts]) if counts else torch.zeros(0, dtype=torch.long)
        self.has_new = torch.tensor([bool(k) for k in new_counts], dtype=torch.bool)
        is_new = levels >= known                                   # (n, n_categorical)
        decoded = torch.where(is_new, self.reference.expand_as(levels), levels)
        with torch.no_grad():
            self.term = net.covariate_term(decoded.to(dev), values.to(dev)).detach()
        key = torch.where(is_new, levels, torch.full_like(levels, -1))
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        is_group = (uniq >= 0).any(1)                          # a combination holding a new level
        ids = torch.cumsum(is_group.long(), 0) - 1
        self.group = torch.where(is_group[inverse], ids[inverse], torch.full_like(inverse, -1))
        self.n_groups = int(is_group.sum())

    def row_offsets(self, offsets: torch.Tensor, rows) -> np.ndarray:
        """The per-gene offsets (``(n_groups, m)``, from :func:`embed_with_new_levels`) of
        samples ``rows``: their group's, 0 for a sample without a new level."""
        g = self.group[torch.as_tensor(rows)]
        return torch.where(g[:, None] >= 0, offsets[g.clamp(min=0)], torch.zeros(())).numpy()

    @torch.no_grad()
    def training_term(self, net: FactorizedEmbeddingNet, rows: torch.Tensor) -> torch.Tensor:
        """The covariate terms of training samples ``rows`` with the covariates that have new
        levels set to their reference (how the new levels' samples are decoded)."""
        levels = net.covariate_levels.index_select(0, rows)
        ref = self.reference.to(levels.device).expand_as(levels)
        levels = torch.where(self.has_new.to(levels.device).expand_as(levels), ref, levels)
        return net.covariate_term(levels, net.covariate_values.index_select(0, rows))


@torch.no_grad()
def _group_means(X: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per group, the mean of each column over its rows' observed (non-NaN) values (0 where none)."""
    out = torch.zeros(n_groups, X.shape[1])
    for g in range(n_groups):
        rows = X[group == g]
        seen = ~torch.isnan(rows)
        out[g] = torch.where(seen, rows, torch.zeros(())).sum(0) / seen.sum(0).clamp_min(1)
    return out


def embed_with_new_levels(net: FactorizedEmbeddingNet, X_new: torch.Tensor, new: NewLevels,
                          embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          rounds: int = NEW_LEVEL_ROUNDS, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings, offsets)`` of the rows of ``X_new`` given the :class:`NewLevels` of
    their covariates: ``embed(profiles, covariate terms)`` embeds rows as ``transform``
    does.  Each group's per-gene offset starts at the group's mean profile minus the
    training samples' mean reconstruction at the reference levels (as if the group held
    the training cohort's mix of samples) and is then, ``rounds - 1`` times, the group's mean
    residual after its rows are embedded with the offset taken off; while embedding, a group
    of ``k`` samples uses its offsets shrunk by ``k / (k + NEW_LEVEL_SHRINK)`` (few samples
    give noisy offsets that pull their embeddings).  The offsets returned, for decoding, are
    the last mean residuals, not shrunk.  Rows of no group are embedded once."""
    group = new.group
    in_group = group >= 0
    dev = net.gene_embedding.device
    C = _random_subset(net.n_samples, INIT_CANDIDATES, generator or torch.Generator().manual_seed(0))
    rows = torch.arange(net.n_samples, device=dev) if C is None else C.to(dev)
    with torch.no_grad():
        train_rec = reconstruct(net, net.sample_embedding.detach()[rows], shift=new.training_term(net, rows))
    sizes = torch.bincount(group[in_group], minlength=new.n_groups).to(torch.float32)[:, None]
    shrink = sizes / (sizes + NEW_LEVEL_SHRINK)
    offsets = (_group_means(X_new[in_group], group[in_group], new.n_groups) - train_rec.mean(0)) * shrink
    Z = embed(X_new, new.term) if not in_group.all() else None
    idx = torch.nonzero(in_group)[:, 0]
    sub, term, g = X_new[idx], new.term[idx.to(new.term.device)], group[idx]
    for _ in range(max(1, int(rounds))):
        Zg = embed(sub - offsets[g], term)
        mean_residual = _group_means(sub - reconstruct(net, Zg, shift=term), g, new.n_groups)
        offsets = mean_residual * shrink
    Z = Zg.clone() if Z is None else Z
    Z[idx] = Zg
    return Z, mean_residual


def _random_subset(m: int, k: int, generator: torch.Generator) -> torch.Tensor | None:
    if k >= m:
        return None
    return torch.randperm(m, generator=generator)[:k].sort().values


def _part(shift: torch.Tensor | None, i: int, block: int, dev) -> torch.Tensor | None:
    return None if shift is None else shift[i:i + block].to(dev)


@torch.no_grad()
def reconstruct(net: FactorizedEmbeddingNet, Z: torch.Tensor, gene_index: torch.Tensor | None = None,
                row_block: int = ROW_BLOCK, gene_chunk: int = 4096, workers: int | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder output for embeddings ``Z`` (rows x genes), in blocks of rows (on CPU on
    ``workers`` of the kernel's worker threads; default: automatic); ``shift``: the rows'
    covariate terms (:meth:`~factembed.engine.network.FactorizedEmbeddingNet.covariate_term`)."""
    dev = net.gene_embedding.device
    outs = [net.decode(Z[i:i + row_block].to(dev), gene_index=gene_index, gene_chunk=gene_chunk,
                       workers=workers, shift=_part(shift, i, row_block, dev)).cpu()
            for i in range(0, Z.shape[0], row_block)]
    m = net.n_genes if gene_index is None else len(gene_index)
    return torch.cat(outs) if outs else torch.empty(0, m)


@torch.no_grad()
def nearest_reconstruction_init(net: FactorizedEmbeddingNet, X_new: torch.Tensor, *, init_genes: int,
                                generator: torch.Generator, row_block: int = ROW_BLOCK,
                                workers: int | None = None, missing: bool = False) -> torch.Tensor:
    """Start points of ``X_new``'s rows (see :func:`start_points`)."""
    candidates, arg = start_points(net, X_new, init_genes=init_genes, generator=generator,
                                   row_block=row_block, workers=workers, missing=missing)
    return candidates[arg].clone()


@torch.no_grad()
def neighbour_scale(candidates: torch.Tensor, arg: torch.Tensor, block: int = 1024) -> torch.Tensor | None:
    """For each chosen start point ``candidates[arg]``: its distance to the nearest other
    candidate, floored at a tenth of the candidates' median (duplicates would otherwise
    pin a sample); ``None`` with fewer than 2 candidates."""
    c = candidates.float()
    if c.shape[0] < 2:
        return None
    nn = torch.empty(c.shape[0], device=c.device)
    for a in range(0, c.shape[0], block):
        d = torch.cdist(c[a:a + block], c)
        d[torch.arange(d.shape[0], device=c.device), torch.arange(a, a + d.shape[0], device=c.device)] = float("inf")
        nn[a:a + block] = d.min(1).values
    floor = 0.1 * float(nn.median())
    if not floor > 0:                    # (nearly) all candidates coincide
        floor = 1e-6 * (1.0 + float(c.abs().max()))
    return nn.clamp_min(floor)[arg]


@torch.no_grad()
def start_points(net: FactorizedEmbeddingNet, X_new: torch.Tensor, *, init_genes: int,
                 generator: torch.Generator, row_block: int = ROW_BLOCK,
                 workers: int | None = None, missing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(candidates, arg)``: the training embeddings offered as start points and, for each
    new profile, the position of the one whose reconstruction is nearest to it (squared
    Euclidean distance over ``init_genes`` fixed random genes, or over
    all genes when the model has no more than that).  Models with more than
    :data:`INIT_CANDIDATES` training samples offer a fixed random subset of that many.

    ``missing=True``: NaN entries of ``X_new`` are missing values; a sample's distance
    is taken over its observed genes among the search genes.  A sample with no observed
    value among them is searched again over genes it has observed (the union of those
    of all such samples, at most ``init_genes`` of them, drawn from ``generator``)."""
    dev = net.gene_embedding.device
    J = _random_subset(net.n_genes, init_genes, generator)
    C = _random_subset(net.n_samples, INIT_CANDIDATES, generator)
    Xj = (X_new if J is None else X_new[:, J]).to(dev, torch.float32)
    J_dev = None if J is None else J.to(dev)
    train_Z = net.sample_embedding.detach()
    if C is not None:
        train_Z = train_Z[C.to(dev)]
    # the candidates are decoded as the model reconstructs them: with their own covariates
    train_shift = net.row_covariate_term(torch.arange(net.n_samples, device=dev) if C is None else C.to(dev))
    train_shift = None if train_shift is None else train_shift.detach()
    if missing:
        arg, n_obs = _nearest_observed(net, Xj, J_dev, train_Z, row_block, workers, train_shift)
        left = torch.nonzero(n_obs == 0)[:, 0].cpu()
        while left.numel():
            rows = X_new[left]
            genes = torch.nonzero((~torch.isnan(rows)).any(0))[:, 0]
            if genes.numel() == 0:
                raise ValueError("a new sample has no observed value (all NaN); it cannot be embedded")
            if genes.numel() > init_genes:
                genes = genes[torch.randperm(genes.numel(), generator=generator)[:init_genes]].sort().values
            a2, n2 = _nearest_observed(net, rows[:, genes].to(dev, torch.float32), genes.to(dev), train_Z,
                                       row_block, workers, train_shift)
            served = (n2 > 0).cpu()
            arg[left[served].to(dev)] = a2[served.to(dev)]
            left = left[~served]
        return train_Z, arg
    x_sq = (Xj * Xj).sum(1, keepdim=True)
    best = torch.full((Xj.shape[0],), float("inf"), device=dev)
    arg = torch.zeros(Xj.shape[0], dtype=torch.long, device=dev)
    for i in range(0, train_Z.shape[0], row_block):
        R = net.decode(train_Z[i:i + row_block], gene_index=J_dev, gene_chunk=4096, workers=workers,
                       shift=_part(train_shift, i, row_block, dev))
        d = x_sq - 2.0 * Xj @ R.t() + (R * R).sum(1)[None, :]
        val, pos = d.min(1)
        better = val < best
        best = torch.where(better, val, best)
        arg = torch.where(better, pos + i, arg)
    return train_Z, arg


def _nearest_observed(net: FactorizedEmbeddingNet, Xj: torch.Tensor, J_dev: torch.Tensor | None,
                      train_Z: torch.Tensor, row_block: int, workers: int | None,
                      train_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``Xj`` (the new profiles at genes ``J_dev``, NaN = missing): the
    position in ``train_Z`` of the candidate whose reconstruction is nearest over the
    row's observed genes, and the number of those genes (rows with none get position 0).
    ``sum_obs (x - r)^2 = sum_obs x^2 - 2 x0 . r + obs . r^2`` with ``x0`` the row with
    its NaN set to 0 and ``obs`` its observed mask, made per block of rows."""
    dev = Xj.device
    n = Xj.shape[0]
    best = torch.full((n,), float("inf"), device=dev)
    arg = torch.zeros(n, dtype=torch.long, device=dev)
    n_obs = torch.zeros(n, dtype=torch.long, device=dev)
    for i in range(0, train_Z.shape[0], row_block):
        R = net.decode(train_Z[i:i + row_block], gene_index=J_dev, gene_chunk=4096, workers=workers,
                       shift=_part(train_shift, i, row_block, dev))
        R2 = R * R
        for a in range(0, n, row_block):
            xb = Xj[a:a + row_block]
            obs = ~torch.isnan(xb)
            x0 = torch.where(obs, xb, torch.zeros((), dtype=xb.dtype, device=dev))
            if i == 0:
                n_obs[a:a + row_block] = obs.sum(1)
            d = (x0 * x0).sum(1, keepdim=True) - 2.0 * x0 @ R.t() + obs.to(R.dtype) @ R2.t()
            val, pos = d.min(1)
            better = val < best[a:a + row_block]
            best[a:a + row_block] = torch.where(better, val, best[a:a + row_block])
            arg[a:a + row_block] = torch.where(better, pos + i, arg[a:a + row_block])
    return arg, n_obs


def embed_new_samples(net: FactorizedEmbeddingNet, X_new: torch.Tensor, *, steps: int, lr: float | str,
                      infer_genes: int, init_genes: int, generator: torch.Generator,
                      compute_dtype: torch.dtype = torch.float32, gene_chunk: int | None = None,
                      progress: bool = False, row_block: int = ROW_BLOCK,
                      workers: int | None = None, missing: bool = False,
                      shift: torch.Tensor | None = None) -> torch.Tensor:
    """Embeddings of the rows of ``X_new`` (float32, samples x genes) in ``net``'s space;
    ``shift``: their covariate terms (``(samples, hidden[0])``, for a model with
    covariates), fixed while their embeddings are learned.

    ``net`` is not modified (its parameters are only read).  Adam with cosine decay of
    the learning rate from ``lr`` to 0 over ``steps`` steps.  ``lr="auto"``: each sample's
    steps are :data:`AUTO_STEP` times the nearest-neighbour distance of its start point
    among the candidates (:func:`neighbour_scale`; Adam on ``u`` with ``z = z0 + scale * u``);
    a number: the same absolute step for every sample.  Each step uses all genes
    when ``infer_genes >= n_genes``, otherwise ``infer_genes`` genes drawn at random.
    ``workers``: the kernel's CPU worker threads (default: automatic, see
    :func:`factembed.engine.cpu_pool.cpu_workers`).

    ``missing=True``: NaN entries are missing values, left out of the start-point search
    and of the loss; each sample's loss at a step is the mean squared error over its
    observed genes among the step's genes (a sample with none among them is not moved
    by that step's gradient).  Every sample needs at least one observed value.  Without
    NaN in ``X_new`` the result is that of ``missing=False``, up to the order of
    floating-point sums.
    """
    dev = net.gene_embedding.device
    candidates, arg = start_points(net, X_new, init_genes=init_genes, generator=generator,
                                   row_block=row_block, workers=workers, missing=missing)
    Z0 = candidates[arg].clone()
    if steps <= 0:
        return Z0.cpu()
    scale = None
    if isinstance(lr, str):
        if lr != "auto":
            raise ValueError(f"lr must be a positive number or 'auto', got {lr!r}")
        scale = neighbour_scale(candidates, arg)
        lr = AUTO_STEP if scale is not None else AUTO_FALLBACK_LR
    if scale is None:
        Z = U = torch.nn.Parameter(Z0)
    else:
        scale = scale[:, None].to(Z0.dtype)
        U = torch.nn.Parameter(torch.zeros_like(Z0))
    opt = torch.optim.Adam([U], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps)))
    fused = FusedProfileLoss(gene_chunk=gene_chunk, compute_dtype=compute_dtype, workers=workers,
                             nan_targets=missing)
    layers = [(w.detach(), b.detach()) for w, b in net.decoder_weights()]
    W1s = net.first_sample.weight.detach()
    n_new = X_new.shape[0]
    bar = _Progress(steps, "factembed transform", progress)
    with torch.no_grad():
        G_all = net.gene_term(workers=workers)
    # the training's walk through the genes (every gene once per cycle), sorted per step
    genes = None if infer_genes >= net.n_genes else GeneWalk(net.n_genes, infer_genes, generator)
    try:
        for step in range(1, steps + 1):
            J = None if genes is None else genes.next().sort().values
            G = G_all if J is None else G_all[J.to(dev)]
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for i in range(0, n_new, row_block):
                xb = X_new[i:i + row_block]
                xb = (xb if J is None else xb[:, J]).to(dev, torch.float32)
                part = slice(i, i + row_block)
                z = Z[part] if scale is None else Z0[part] + scale[part] * U[part]
                S = z @ W1s.t()
                if shift is not None:
                    S = S + shift[part].to(dev, S.dtype)
                if missing:
                    # each row's squared errors averaged over its observed genes of this step
                    # (the kernel divides by the step's gene count); the mask is this block's
                    k = xb.shape[1]
                    n_obs = (~torch.isnan(xb)).sum(1).to(torch.float32)
                    rows = torch.where(n_obs > 0, k / n_obs.clamp_min(1.0), torch.zeros((), device=dev))
                else:
                    rows = torch.ones(S.shape[0], device=dev)
                # sum over rows of each row's mean squared error
                loss = fused(S, G, xb, layers, weight_grads=False, row_weights=rows)
                loss.backward()
                total += float(loss.detach())
            opt.step()
            sched.step()
            bar.update(step, total / max(1, n_new), float("nan"))
    finally:
        bar.close()
    return (Z if scale is None else Z0 + scale * U).detach().cpu()
