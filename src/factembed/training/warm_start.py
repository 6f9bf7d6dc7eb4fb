"""The start point of a fit: ``init="pca"`` (the fast recipe's default) or ``"random"``.

``"random"`` is the study's: every embedding ~ N(0, 0.1^2), the decoder's layers uniform
(:meth:`~factembed.engine.network.FactorizedEmbeddingNet.reset_parameters`).  ``"pca"`` starts from
what a linear model already knows, as openTSNE and umap-learn start their layouts:

* the **sample embedding** is the samples' scores on the first ``sample_dim`` principal
  components of the (gene-centred) matrix, scaled so that the first coordinate has the
  random start's sd (0.1): the same scale, with the layout of PCA instead of noise;
* the decoder's **output bias** is the mean of the observed values, so that the first
  steps do not spend themselves moving the output from 0 to the data's level (log2
  microarray values sit at 5-14: Adam moves a bias by about ``lr`` per step).

The principal axes come from a seeded randomised range finder on at most ``max_rows``
rows (every row of a smaller matrix); the scores of every sample then take one pass over
the rows, in blocks, so an on-disk source is read once and never held in memory.  Missing
values (NaN) count as their gene's mean.  Figures (steps and held-out quality with and
without it): ``bench/NOTES.md``, "A cohort of a hundred samples in seconds".
"""

from __future__ import annotations

import torch

#: the rows the principal axes are estimated from (a seeded subset of a larger matrix; held
#: in memory as float32: 82 MB at 20,000 genes)
MAX_ROWS = 1024
#: rows read per block when the scores of every sample are computed
BLOCK_ROWS = 1024
INITS = ("pca", "random")


def _rows(source, index: torch.Tensor) -> torch.Tensor:
    return source.rows(index).to("cpu", torch.float32)


def covariate_design(net) -> torch.Tensor | None:
    """The design matrix of ``net``'s training covariates (``(n, p)`` float64: an
    intercept, one indicator per level of each categorical covariate but its first, each
    numeric value), or ``None`` for a model without covariates."""
    if not getattr(net, "has_covariates", False):
        return None
    n = net.n_samples
    cols = [torch.ones(n, 1, dtype=torch.float64)]
    levels, values = net.covariate_levels.cpu(), net.covariate_values.cpu().double()
    cat = 0
    for k, _ in net.covariate_shapes:
        if k > 0:
            cols.append(torch.nn.functional.one_hot(levels[:, cat], k)[:, 1:].double())
            cat += 1
    cols.append(values)
    return torch.cat(cols, 1)


def principal_axes(source, k: int, generator: torch.Generator, max_rows: int | None = None,
                   power_iterations: int = 4, block_rows: int | None = None,
                   design: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(gene means (m,), axes (m, k), mean of the observed values)`` of the rows of
    ``source`` (any object with ``shape`` and ``rows(index)``), from at most ``max_rows``
    of them (default :data:`MAX_ROWS`), read ``block_rows`` at a time (default
    :data:`BLOCK_ROWS`); float32 products, float64 sums.  ``k`` is cut to what the rows can hold.

    ``design`` (every row's covariates, :func:`covariate_design`): the axes are those of
    what the covariates do not explain (each gene's least-squares fit on the design taken
    out instead of its mean), and the first value returned is that fit's coefficients
    ``(p, m)`` instead of the gene means."""
    n, m = (int(v) for v in source.shape)
    max_rows = MAX_ROWS if max_rows is None else int(max_rows)
    block = BLOCK_ROWS if block_rows is None else max(1, int(block_rows))
    pick = torch.arange(n) if n <= max_rows else torch.randperm(n, generator=generator)[:max_rows].sort().values
    X = torch.cat([_rows(source, pick[i:i + block]) for i in range(0, len(pick), block)])
    seen = ~torch.isnan(X)
    counts = seen.sum(0)
    sums = X.nan_to_num(0.0).double().sum(0)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros((), dtype=torch.float64)).float()
    level = float(sums.sum() / counts.sum().clamp_min(1))
    if design is not None:
        D = design[pick]
        filled = torch.where(seen, X, means).double()
        means = torch.linalg.lstsq(D, filled, driver="gelsd").solution.float()     # (p, m)
        C = torch.where(seen, X - (D.float() @ means), torch.zeros(()))
    else:
        C = torch.where(seen, X - means, torch.zeros(()))
    k = max(1, min(int(k), C.shape[0] - 1, m))
    q = min(k + 8, min(C.shape))
    Q = torch.linalg.qr(C @ torch.randn(m, q, generator=generator)).Q
    for _ in range(power_iterations):
        Q = torch.linalg.qr(C @ torch.linalg.qr(C.T @ Q).Q).Q
    _, _, Vh = torch.linalg.svd((Q.T @ C).double(), full_matrices=False)
    return means, Vh[:k].T.float().contiguous(), level


def pca_scores(source, means: torch.Tensor, axes: torch.Tensor, block_rows: int | None = None,
               design: torch.Tensor | None = None) -> torch.Tensor:
    """Every sample's scores on ``axes`` (one pass over the rows, ``block_rows`` at a time;
    NaN counts as the gene's mean; with ``design``, ``means`` are the covariate fit's
    coefficients and each row's fit is taken out): ``(n, k)`` float32."""
    n = int(source.shape[0])
    block = BLOCK_ROWS if block_rows is None else max(1, int(block_rows))
    out = []
    for start in range(0, n, block):
        X = _rows(source, torch.arange(start, min(n, start + block)))
        centre = means if design is None else design[start:start + len(X)].float() @ means
        out.append(torch.nan_to_num(X - centre, nan=0.0) @ axes)
    return torch.cat(out)


@torch.no_grad()
def pca_warm_start(net, source, generator: torch.Generator, block_rows: int | None = None) -> None:
    """Set ``net``'s sample embedding to the PCA scores of ``source``'s rows (scaled to the
    random start's sd, 0.1, on the first axis) and its output bias to the data's mean level
    (see the module's docstring).  ``source`` holds exactly ``net``'s samples, in order; it is
    read ``block_rows`` rows at a time (a sparse or backed source is never made dense whole)."""
    if tuple(source.shape) != (net.n_samples, net.n_genes):
        raise ValueError(f"the warm start needs the {net.n_samples} x {net.n_genes} training matrix, "
                         f"got {tuple(source.shape)}")
    d = net.sample_dim
    design = covariate_design(net)      # with covariates: PCA of what they do not explain
    means, axes, level = principal_axes(source, d, generator, block_rows=block_rows, design=design)
    Z = pca_scores(source, means, axes, block_rows=block_rows, design=design)
    scale = float(Z[:, 0].double().std()) if Z.shape[0] > 1 else 0.0
    emb = net.sample_embedding
    if scale > 0:
        Z = Z * (0.1 / scale)
        emb[:, :Z.shape[1]] = Z.to(emb.dtype).to(emb.device)    # axes beyond the data's rank keep their draw
    net.layers[-1].bias.fill_(level)
