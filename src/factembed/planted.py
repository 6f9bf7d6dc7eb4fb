"""Planted expression matrices: data whose structure is known, for tests, benchmarks and demos.

:func:`make_planted` draws samples in labelled groups of a latent space and maps them to
genes, the way scikit-learn's ``make_blobs`` draws points in clusters.  It is the one
generator of the project: the test suite's small clustered matrices, the benchmarks'
TCGA-shaped matrices and their non-linear quality matrices are all calls of it (the
benchmarks' presets are in ``bench/_common.py``).

Two structures:

* ``"linear"``: ``X = base + U V + noise`` with ``U`` the samples' latent positions (group
  centre ~ N(0, 1) plus N(0, ``scatter``\\ :sup:`2`) scatter) and gene loadings
  ``V ~ N(0, loading_sd`` :sup:`2`\\ ``)``;
* ``"nonlinear"``: the latent positions go through a random tanh layer of
  :data:`NONLINEAR_UNITS` units, gene loadings scale with ``sqrt(base level)`` (expressed
  genes vary more), the noise is heteroscedastic (sd ``0.08 + 0.12 sqrt(base)``) and low
  entries drop out to 0 (an entry below 0.5 becomes 0 with probability
  ``exp(-4 x value)``), as in single-cell and low-depth RNA-seq.

``base="gamma"`` gives every gene a base level (``Gamma(2, 0.6)`` for ``"linear"``:
mean 1.2, as log10(TPM + 1) of TCGA; ``Gamma(1.5, 0.7)`` capped at 6 for
``"nonlinear"``); ``clip=True`` sets negative values to 0 (unexpressed).  The matrix is
built in row blocks, so the peak memory is about the float32 matrix itself.  The draws
are a fixed function of ``seed`` (NumPy's default generator), so figures made with a
preset can be made again.

:func:`plant_batches` measures any matrix (a planted one, or a real cohort taken as
batch-free) in several batches with known per-batch, per-gene shifts and scales, balanced
or confounded with the samples' groups: the truth a batch correction is judged by.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["make_planted", "PlantedMatrix", "NONLINEAR_UNITS", "plant_batches", "PlantedBatches"]

#: width of the random tanh layer of ``structure="nonlinear"``
NONLINEAR_UNITS = 16
STRUCTURES = ("linear", "nonlinear")
BLOCK_ROWS = 256


class PlantedMatrix(NamedTuple):
    """What :func:`make_planted` drew: the ``(n, m)`` float32 matrix ``X``, each sample's
    group (``labels``: ints 0..n_groups-1) and its latent position (``latent``,
    ``(n, latent_dim)`` float32)."""
    X: np.ndarray
    labels: np.ndarray
    latent: np.ndarray


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def make_planted(n_samples: int, n_genes: int, *, n_groups: int = 4, latent_dim: int = 4,
                 structure: str = "linear", scatter: float = 0.3, loading_sd: float = 0.15,
                 base: str | None = "gamma", noise: float = 0.25, clip: bool = True,
                 balanced: bool = False, seed: int = 0, out: np.ndarray | None = None) -> PlantedMatrix:
    """A planted ``n_samples x n_genes`` expression matrix (see the module's docstring).

    ``n_groups`` groups (drawn at random per sample, or ``balanced=True``: sample ``i`` in
    group ``i % n_groups``) with centres ~ N(0, 1) in ``latent_dim`` dimensions, each
    sample its centre plus N(0, ``scatter``:sup:`2`); ``structure`` ``"linear"`` or
    ``"nonlinear"``; ``loading_sd`` the sd of the gene loadings; ``base`` ``"gamma"`` or
    ``None`` (no per-gene base level); ``noise`` the sd of the measurement noise
    (``"linear"``; ``"nonlinear"``'s noise follows the base level); ``clip``: negative
    values become 0.  ``out``: an ``(n_samples, n_genes)`` float32 array to fill (e.g. a
    ``numpy.lib.format.open_memmap`` of a matrix larger than memory: it is written one
    block of rows at a time), returned as ``X``."""
    n, m = int(n_samples), int(n_genes)
    _positive("n_samples", n)
    _positive("n_genes", m)
    _positive("n_groups", n_groups)
    _positive("latent_dim", latent_dim)
    _positive("scatter", scatter, allow_zero=True)
    _positive("loading_sd", loading_sd, allow_zero=True)
    _positive("noise", noise, allow_zero=True)
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    if base not in (None, "gamma"):
        raise ValueError(f"base must be 'gamma' or None, got {base!r}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_groups if balanced else rng.integers(0, n_groups, n)
    centres = rng.normal(0.0, 1.0, (n_groups, latent_dim))
    positions = centres[labels] + rng.normal(0.0, scatter, (n, latent_dim))
    latent = positions.astype(np.float32)
    if structure == "linear":
        H = latent
        V = rng.normal(0.0, loading_sd, (latent_dim, m)).astype(np.float32)
        mu = rng.gamma(2.0, 0.6, m).astype(np.float32) if base == "gamma" else None
        sd = np.float32(noise)
    else:
        A = rng.normal(0.0, 1.0, (latent_dim, NONLINEAR_UNITS))
        a = rng.normal(0.0, 0.5, NONLINEAR_UNITS)
        H = np.tanh(positions @ A + a).astype(np.float32)
        mu = np.minimum(rng.gamma(1.5, 0.7, m), 6.0).astype(np.float32) if base == "gamma" else None
        level = np.ones(m, dtype=np.float32) if mu is None else mu
        V = (rng.normal(0.0, loading_sd, (NONLINEAR_UNITS, m)) * np.sqrt(level)).astype(np.float32)
        sd = (0.08 + 0.12 * np.sqrt(level)).astype(np.float32)
    if out is not None and (tuple(out.shape) != (n, m) or out.dtype != np.float32):
        raise ValueError(f"out must be a float32 array of shape ({n}, {m}), got {out.dtype} {tuple(out.shape)}")
    X = np.empty((n, m), dtype=np.float32) if out is None else out
    for i in range(0, n, BLOCK_ROWS):
        rows = np.empty((min(n, i + BLOCK_ROWS) - i, m), dtype=np.float32) if out is not None else X[i:i + BLOCK_ROWS]
        np.matmul(H[i:i + BLOCK_ROWS], V, out=rows)
        if mu is not None:
            rows += mu
        rows += rng.standard_normal(rows.shape, dtype=np.float32) * sd
        if structure == "nonlinear":
            low = rows < 0.5
            drop = low & (rng.random(rows.shape, dtype=np.float32) < np.exp(-4.0 * np.maximum(rows, 0.0)))
            rows[drop] = 0.0
        if clip:
            np.maximum(rows, 0.0, out=rows)
        if out is not None:
            X[i:i + BLOCK_ROWS] = rows
    return PlantedMatrix(X, labels, latent)


class PlantedBatches(NamedTuple):
    """What :func:`plant_batches` drew: the measured matrix ``X`` (float32), each sample's
    ``batch`` (ints 0..n_batches-1), the per-batch, per-gene ``shift`` and ``scale``
    (``(n_batches, n_genes)``), so that ``X = clean * scale[batch] + shift[batch]``."""
    X: np.ndarray
    batch: np.ndarray
    shift: np.ndarray
    scale: np.ndarray

    def as_batch(self, clean: np.ndarray, b: int) -> np.ndarray:
        """``clean`` as batch ``b`` measures it (the truth of a correction to batch ``b``)."""
        return (clean * self.scale[b] + self.shift[b]).astype(np.float32)


def plant_batches(clean: np.ndarray, n_batches: int = 2, *, groups: np.ndarray | None = None,
                  confounding: float = 0.0, shift_sd: float = 1.5, scale_sd: float = 0.2,
                  relative: bool = False, seed: int = 0) -> PlantedBatches:
    """``clean`` (samples x genes) measured in ``n_batches`` batches: batch ``b`` adds a
    per-gene shift ~ N(0, ``shift_sd`` squared) (times each gene's sd over the samples
    when ``relative``, for real matrices whose genes vary on different scales) and
    multiplies by a per-gene scale exp(N(0, ``scale_sd`` squared)).

    Batches are drawn uniformly per sample; with ``groups`` and ``confounding`` c in
    [0, 1), a sample of group ``g`` falls in batch ``g % n_batches`` with probability
    ``c + (1 - c) / n_batches`` and uniformly in the others otherwise (c = 0: balanced)."""
    X = np.asarray(clean, dtype=np.float32)
    n, m = X.shape
    _positive("n_batches", n_batches)
    if not 0.0 <= confounding < 1.0:
        raise ValueError(f"confounding must be in [0, 1), got {confounding!r}")
    if confounding and groups is None:
        raise ValueError("confounding needs the samples' groups")
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, n_batches, n)
    if confounding:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1]
        home = codes % n_batches
        stay = rng.random(n) < confounding + (1.0 - confounding) / n_batches
        other = (home + rng.integers(1, max(2, n_batches), n)) % n_batches if n_batches > 1 else home
        batch = np.where(stay, home, other)
    unit = X.std(0) if relative else np.ones(m, dtype=np.float32)
    shift = (rng.normal(0.0, shift_sd, (n_batches, m)) * unit).astype(np.float32)
    scale = np.exp(rng.normal(0.0, scale_sd, (n_batches, m))).astype(np.float32)
    return PlantedBatches((X * scale[batch] + shift[batch]).astype(np.float32), batch, shift, scale)
