"""The Factorized Embeddings network: pure math, no training loop.

A sample ``i`` has an embedding ``s_i`` (``sample_dim``), a gene ``j`` an embedding
``g_j`` (``gene_dim``).  A ReLU MLP reads ``[s_i, g_j]`` and predicts ``X[i, j]``.

The first layer is computed *factored*::

    W1 [s; g] + b1 = (W1_s s) + (W1_g g + b1)

so the gene term ``G = E W1_g^T + b1`` (``n_genes x hidden[0]``) is computed once per
step for every gene and broadcast over the step's samples, and the sample term
``S = Z W1_s^T`` once per sample.  No (sample, gene) index arrays exist anywhere: a
batch is a set of whole profiles.

Known covariates of the samples (batch, tissue, sex, age...) are factors of the same
model: a categorical covariate has an embedding table (levels x a small size), a numeric
one enters as its standardised value, and both join ``[s, g]`` at the first layer.  In
the factored layer they are one more per-sample term, ``W1_c c_i``, added to the sample
term (:meth:`FactorizedEmbeddingNet.covariate_term`): the kernel never sees them.  The
training samples' levels and values are buffers of the network (``covariate_levels``,
``covariate_values``), so a step finds them by the batch's row indices.

This module holds only the network (an ``nn.Module``: parameters, initialisation and
plain evaluation).  The fused, blocked loss and gradients that training and inference
use are in :mod:`factembed.engine.kernel`; on CPU, :meth:`FactorizedEmbeddingNet.gene_term`
and the forward-only :meth:`FactorizedEmbeddingNet.decode` hand their work to the
kernel's worker threads (imported when first needed, so that this module depends on
nothing but torch).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import GeneLayer


class FactorizedEmbeddingNet(nn.Module):
    """Sample and gene embedding tables plus the MLP decoder.

    Parameters are laid out so that the plain concatenation MLP of the paper is
    recovered exactly by ``W1 = [first_sample.weight, first_gene.weight]`` and
    ``b1 = first_gene.bias``.
    """

    def __init__(self, n_samples: int, n_genes: int, sample_dim: int = 2,
                 gene_dim: int = 100, hidden: tuple[int, ...] = (100, 50, 50),
                 generator: torch.Generator | None = None,
                 covariates: tuple[tuple[int, int], ...] = ()) -> None:
        """``covariates``: one ``(n_levels, dim)`` per covariate, in order: a categorical
        covariate of ``n_levels`` levels embedded in ``dim`` numbers, or ``(0, 1)`` for a
        numeric one."""
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        self.n_samples, self.n_genes = int(n_samples), int(n_genes)
        self.sample_dim, self.gene_dim, self.hidden = int(sample_dim), int(gene_dim), hidden
        self.covariate_shapes = tuple((int(k), int(d) if int(k) > 0 else 1) for k, d in covariates)
        for k, d in self.covariate_shapes:
            if k < 0 or d < 1:
                raise ValueError(f"a covariate needs n_levels >= 0 and dim >= 1, got ({k}, {d})")
        self.sample_embedding = nn.Parameter(torch.empty(n_samples, sample_dim))
        self.gene_embedding = nn.Parameter(torch.empty(n_genes, gene_dim))
        self.first_sample = nn.Linear(sample_dim, hidden[0], bias=False)
        self.first_gene = nn.Linear(gene_dim, hidden[0], bias=True)
        self.covariate_embeddings = nn.ParameterList(
            [nn.Parameter(torch.empty(k, d)) for k, d in self.covariate_shapes if k > 0])
        self.first_covariate = nn.ModuleList(nn.Linear(d, hidden[0], bias=False) for _, d in self.covariate_shapes)
        if self.covariate_shapes:      # (a model without covariates has the same state as before them)
            n_cat = sum(1 for k, _ in self.covariate_shapes if k > 0)
            self.register_buffer("covariate_levels", torch.zeros(self.n_samples, n_cat, dtype=torch.long))
            self.register_buffer("covariate_values", torch.zeros(self.n_samples, len(self.covariate_shapes) - n_cat))
        widths = list(hidden) + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Embeddings ~ N(0, 0.1^2); each linear layer uniform(+-1/sqrt(fan_in)) of the
        *whole* concatenated input, as a plain ``nn.Linear`` on ``[s, g]`` would be."""
        self.sample_embedding.normal_(0.0, 0.1, generator=generator)
        self.gene_embedding.normal_(0.0, 0.1, generator=generator)
        bound = 1.0 / math.sqrt(self.sample_dim + self.gene_dim + sum(d for _, d in self.covariate_shapes))
        for p in (self.first_sample.weight, self.first_gene.weight, self.first_gene.bias):
            p.uniform_(-bound, bound, generator=generator)
        # covariates draw after everything else, so a model without them is drawn as before
        for table in self.covariate_embeddings:
            table.normal_(0.0, 0.1, generator=generator)
        for layer in self.first_covariate:
            layer.weight.uniform_(-bound, bound, generator=generator)
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)

    # -- the two halves of the first layer -------------------------------------------
    def gene_term(self, gene_index: torch.Tensor | None = None, workers: int | None = None) -> torch.Tensor:
        """``W1_g g_j + b1`` for all genes (or ``gene_index``): ``(genes, hidden[0])``.

        On CPU a large product is split by rows over the kernel's worker threads:
        ``workers`` of them (default: :func:`factembed.engine.cpu_pool.cpu_workers`, which
        follows the calling thread's torch thread count, so a caller that drops to one
        intra-op thread must pass the count it wants); see
        :func:`factembed.engine.kernel.split_linear`."""
        emb = self.gene_embedding if gene_index is None else self.gene_embedding[gene_index]
        if emb.device.type == "cpu":
            from .kernel import split_linear
            return split_linear(emb, self.first_gene.weight, self.first_gene.bias, workers)
        return self.first_gene(emb)

    def gene_layer(self, gene_index: torch.Tensor | None = None) -> "GeneLayer":
        """The gene half of the first layer as parameters, for
        :class:`factembed.engine.kernel.FusedProfileLoss` to compute the gene term block by
        block inside its pass over gene blocks; with ``gene_index``, for those genes only
        (their embedding rows are gathered: gradients reach only those rows)."""
        from .kernel import GeneLayer
        emb = self.gene_embedding if gene_index is None else self.gene_embedding.index_select(0, gene_index)
        return GeneLayer(emb, self.first_gene.weight, self.first_gene.bias)

    @property
    def has_covariates(self) -> bool:
        return bool(self.covariate_shapes)

    def covariate_term(self, levels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``W1_c c_i`` for samples of categorical ``levels`` (``(samples, n_categorical)``
        level codes) and numeric ``values`` (``(samples, n_numeric)``, standardised):
        ``(samples, hidden[0])``."""
        out, cat, num = None, 0, 0
        for k, layer in zip(self.covariate_shapes, self.first_covariate):
            if k[0] > 0:
                part = layer(self.covariate_embeddings[cat].index_select(0, levels[:, cat]))
                cat += 1
            else:
                part = layer(values[:, num:num + 1].to(layer.weight.dtype))
                num += 1
            out = part if out is None else out + part
        return out

    def row_covariate_term(self, rows: torch.Tensor) -> torch.Tensor | None:
        """:meth:`covariate_term` of training samples ``rows`` (their recorded levels and
        values); ``None`` for a model without covariates."""
        if not self.covariate_shapes:
            return None
        return self.covariate_term(self.covariate_levels.index_select(0, rows),
                                   self.covariate_values.index_select(0, rows))

    def sample_term(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``W1_s s_i`` for sample embeddings ``z``: ``(samples, hidden[0])``; with ``rows``
        (the training samples they belong to) their covariate term is added."""
        S = self.first_sample(z)
        term = None if rows is None else self.row_covariate_term(rows)
        return S if term is None else S + term

    def decoder_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.weight, layer.bias) for layer in self.layers]

    # -- plain evaluation ---------------------------------------------------------------
    def decode(self, z: torch.Tensor, gene_index: torch.Tensor | None = None,
               gene_chunk: int | None = None, workers: int | None = None,
               shift: torch.Tensor | None = None) -> torch.Tensor:
        """Profiles predicted from sample embeddings ``z`` (``(samples, genes)``); ``shift``
        (``(samples, hidden[0])``) is added to their sample term: their covariate term
        (:meth:`covariate_term`), for a model with covariates.

        Differentiable, evaluated in blocks of genes so that memory stays bounded.  On CPU
        without autograd it runs forward-only on ``workers`` of the kernel's worker threads
        (default: :func:`factembed.engine.cpu_pool.cpu_workers`; see
        :func:`factembed.engine.kernel.blocked_decode`).
        """
        G = self.gene_term(gene_index, workers=workers)
        S = self.sample_term(z)
        if shift is not None:
            S = S + shift.to(S.dtype)
        if S.device.type == "cpu" and not (torch.is_grad_enabled() and (S.requires_grad or G.requires_grad)):
            from .kernel import blocked_decode
            return blocked_decode(S.detach(), G.detach(), self.decoder_weights(), workers)
        n_genes = G.shape[0]
        chunk = gene_chunk or n_genes
        outs = []
        for j0 in range(0, n_genes, chunk):
            A = torch.relu(S[:, None, :] + G[None, j0:j0 + chunk, :])
            for k, layer in enumerate(self.layers):
                A = layer(A)
                if k < len(self.layers) - 1:
                    A = torch.relu(A)
            outs.append(A[..., 0])
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def decode_pairs(self, sample_index: torch.Tensor, gene_index: torch.Tensor) -> torch.Tensor:
        """The predicted values of the (sample, gene) pairs ``zip(sample_index,
        gene_index)`` of training samples: a vector, one value per pair."""
        A = torch.relu(self.sample_term(self.sample_embedding[sample_index], rows=sample_index) + self.first_gene(
            self.gene_embedding[gene_index]))
        for k, layer in enumerate(self.layers):
            A = layer(A)
            if k < len(self.layers) - 1:
                A = torch.relu(A)
        return A[:, 0]

    def forward(self, sample_index: torch.Tensor) -> torch.Tensor:
        """Reconstructed profiles of training samples ``sample_index`` (all genes)."""
        return self.decode(self.sample_embedding[sample_index], shift=self.row_covariate_term(sample_index))

    def penalty(self) -> torch.Tensor:
        """Sum of squares of all parameters (the L2 term is ``l2 * penalty()``)."""
        return sum((p * p).sum() for p in self.parameters())
