"""The Factorized Embeddings network: pure math, no training loop.

A sample ``i`` has an embedding ``s_i`` (``sample_dim``), a gene ``j`` an embedding
``g_j`` (``gene_dim``).  A ReLU MLP reads ``[s_i, g_j]`` and predicts ``X[i, j]``.

The first layer is computed *factored*::

    W1 [s; g] + b1 = (W1_s s) + (W1_g g + b1)

so the gene term ``G = E W1_g^T + b1`` (``n_genes x hidden[0]``) is computed once per
step for every gene and broadcast over the step's samples, and the sample term
``S = Z W1_s^T`` once per sample.  No (sample, gene) index arrays exist anywhere: a
batch is a set of whole profiles.

:func:`fused_profile_loss` evaluates the MSE of a batch of whole profiles *and* all
its gradients in one sweep over blocks of genes, so the (pairs x hidden) activations
only ever exist for one block at a time (they stay in cache on a CPU) and are reused
from a workspace instead of being allocated every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

# Bytes of first-layer activations per gene block on CPU.  Blocks of ~3 MiB (measured best on a 2-core AVX2 machine) keep
# the whole forward/backward of a block in the L2/L3 caches.
_CPU_BLOCK_BYTES = 3 << 20


class FactorizedEmbeddingNet(nn.Module):
    """Sample and gene embedding tables plus the MLP decoder.

    Parameters are laid out so that the plain concatenation MLP of the paper is
    recovered exactly by ``W1 = [first_sample.weight, first_gene.weight]`` and
    ``b1 = first_gene.bias``.
    """

    def __init__(self, n_samples: int, n_genes: int, sample_dim: int = 2,
                 gene_dim: int = 100, hidden: tuple[int, ...] = (100, 50, 50),
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        self.n_samples, self.n_genes = int(n_samples), int(n_genes)
        self.sample_dim, self.gene_dim, self.hidden = int(sample_dim), int(gene_dim), hidden
        self.sample_embedding = nn.Parameter(torch.empty(n_samples, sample_dim))
        self.gene_embedding = nn.Parameter(torch.empty(n_genes, gene_dim))
        self.first_sample = nn.Linear(sample_dim, hidden[0], bias=False)
        self.first_gene = nn.Linear(gene_dim, hidden[0], bias=True)
        widths = list(hidden) + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Embeddings ~ N(0, 0.1^2); each linear layer uniform(+-1/sqrt(fan_in)) of the
        *whole* concatenated input, as a plain ``nn.Linear`` on ``[s, g]`` would be."""
        self.sample_embedding.normal_(0.0, 0.1, generator=generator)
        self.gene_embedding.normal_(0.0, 0.1, generator=generator)
        bound = 1.0 / math.sqrt(self.sample_dim + self.gene_dim)
        for p in (self.first_sample.weight, self.first_gene.weight, self.first_gene.bias):
            p.uniform_(-bound, bound, generator=generator)
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)

    # -- the two halves of the first layer -------------------------------------------
    def gene_term(self, gene_index: torch.Tensor | None = None) -> torch.Tensor:
        """``W1_g g_j + b1`` for all genes (or ``gene_index``): ``(genes, hidden[0])``."""
        emb = self.gene_embedding if gene_index is None else self.gene_embedding[gene_index]
        return self.first_gene(emb)

    def sample_term(self, z: torch.Tensor) -> torch.Tensor:
        """``W1_s s_i`` for sample embeddings ``z``: ``(samples, hidden[0])``."""
        return self.first_sample(z)

    def decoder_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.weight, layer.bias) for layer in self.layers]

    # -- plain evaluation ---------------------------------------------------------------
    def decode(self, z: torch.Tensor, gene_index: torch.Tensor | None = None,
               gene_chunk: int | None = None) -> torch.Tensor:
        """Profiles predicted from sample embeddings ``z`` (``(samples, genes)``).

        Differentiable, evaluated in blocks of genes so that memory stays bounded.
        """
        G = self.gene_term(gene_index)
        S = self.sample_term(z)
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

    def forward(self, sample_index: torch.Tensor) -> torch.Tensor:
        """Reconstructed profiles of training samples ``sample_index`` (all genes)."""
        return self.decode(self.sample_embedding[sample_index])

    def penalty(self) -> torch.Tensor:
        """Sum of squares of all parameters (the L2 term is ``l2 * penalty()``)."""
        return sum((p * p).sum() for p in self.parameters())


def default_gene_chunk(batch_samples: int, first_width: int, n_genes: int, device: torch.device) -> int:
    """Genes per fused block: ~3 MiB of first-layer activations on CPU, all genes on GPU."""
    if device.type != "cpu":
        return n_genes
    chunk = _CPU_BLOCK_BYTES // (4 * max(1, batch_samples) * max(1, first_width))
    return int(max(32, min(n_genes, chunk)))


@dataclass
class _Workspace:
    """Activation / gradient buffers reused across steps (allocation of large tensors
    costs page faults on every step otherwise)."""
    acts: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    key: tuple = ()

    def ensure(self, rows: int, widths: list[int], dtype: torch.dtype, device: torch.device) -> None:
        key = (rows, tuple(widths), dtype, device)
        if key != self.key:
            self.acts = [torch.empty(rows, w, dtype=dtype, device=device) for w in widths]
            self.grads = [torch.empty(rows, w, dtype=dtype, device=device) for w in widths]
            self.key = key


class FusedProfileLoss:
    """Mean squared error of whole profiles with hand-written, blocked gradients.

    Call :meth:`apply` with the sample term ``S`` (``B x h0``), the gene term ``G``
    (``m x h0``), the targets ``X`` (``B x m``) and the decoder layers; it returns the
    scalar MSE as an autograd node whose backward yields exact gradients for ``S``,
    ``G`` and every decoder weight.  Pass ``weight_grads=False`` for inference (only
    ``S`` and ``G`` gradients are computed).

    Each block of genes is run forward, the loss and its gradient are formed, and the
    block is run backward at once, so activations never exist for all pairs.
    """

    def __init__(self, gene_chunk: int | None = None, compute_dtype: torch.dtype = torch.float32) -> None:
        self.gene_chunk = gene_chunk
        self.compute_dtype = compute_dtype
        self.workspace = _Workspace()
        self.last_stats: torch.Tensor | None = None  # [sum y, sum y^2, sum x*y]

    def __call__(self, S: torch.Tensor, G: torch.Tensor, X: torch.Tensor,
                 layers: list[tuple[torch.Tensor, torch.Tensor]], weight_grads: bool = True,
                 row_weights: torch.Tensor | None = None) -> torch.Tensor:
        flat = [t for wb in layers for t in wb]
        return _FusedFn.apply(self, weight_grads, row_weights, S, G, X, *flat)

    def evaluate(self, S, G, X, layers, weight_grads, row_weights, gene_grad=True):
        """Loss, stats and gradients (no autograd).  ``row_weights`` (B,) scales the
        squared error of each profile (default: the plain mean over all pairs)."""
        B, h0 = S.shape
        m = G.shape[0]
        n_layers = len(layers)
        widths = [h0] + [w.shape[0] for w, _ in layers[:-1]]
        chunk = self.gene_chunk or default_gene_chunk(B, h0, m, S.device)
        chunk = min(chunk, m)
        cdt = self.compute_dtype
        self.workspace.ensure(B * chunk, widths, cdt, S.device)
        acts, grads = self.workspace.acts, self.workspace.grads
        Wc = [(w.detach().to(cdt), b.detach().to(cdt)) for w, b in layers]
        S_c, G_c = S.detach().to(cdt), G.detach().to(cdt)

        f32 = torch.promote_types(cdt, torch.float32)  # accumulation dtype
        dS = torch.zeros(B, h0, dtype=f32, device=S.device)
        dG = torch.empty(m, h0, dtype=f32, device=S.device) if gene_grad else None
        dW = [(torch.zeros_like(w, dtype=f32), torch.zeros_like(b, dtype=f32)) for w, b in layers] \
            if weight_grads else None
        stats = torch.zeros(4, dtype=f32, device=S.device)  # loss_sum, sum y, sum y^2, sum xy
        if row_weights is None:
            scale = torch.full((B, 1), 1.0 / (B * m), dtype=f32, device=S.device)
        else:
            scale = (row_weights.to(f32) / m).reshape(B, 1)

        for j0 in range(0, m, chunk):
            c = min(chunk, m - j0)
            P = B * c
            # ---- forward ----------------------------------------------------------
            a0 = acts[0][:P]
            torch.add(G_c[None, j0:j0 + c, :], S_c[:, None, :], out=a0.view(B, c, h0))
            a0.clamp_min_(0)
            a = a0
            for k in range(n_layers - 1):
                w, b = Wc[k]
                nxt = acts[k + 1][:P]
                torch.addmm(b, a, w.t(), out=nxt)
                nxt.clamp_min_(0)
                a = nxt
            w_out, b_out = Wc[-1]
            y = torch.addmm(b_out, a, w_out.t()).view(B, c).to(f32)
            x = X[:, j0:j0 + c]
            diff = y - x
            sq = diff * diff
            stats[0] += (sq * scale).sum()
            stats[1] += y.sum()
            stats[2] += (y * y).sum()
            stats[3] += (x * y).sum()
            # ---- backward ---------------------------------------------------------
            dy = (diff * (2.0 * scale)).reshape(P, 1)
            dy_c = dy.to(cdt)
            if weight_grads:
                dW[-1][0].add_((dy_c.t() @ a).to(f32))
                dW[-1][1].add_(dy.sum(0))
            g = grads[n_layers - 1][:P]
            torch.mm(dy_c, w_out, out=g)            # outer product dy * w_out
            for k in range(n_layers - 2, -1, -1):
                a_k1 = acts[k + 1][:P]
                torch.ops.aten.threshold_backward.grad_input(g, a_k1, 0, grad_input=g)
                a_k = acts[k][:P]
                w, _ = Wc[k]
                if weight_grads:
                    dW[k][0].add_((g.t() @ a_k).to(f32))
                    dW[k][1].add_(g.sum(0).to(f32))
                g_prev = grads[k][:P]
                torch.mm(g, w, out=g_prev)
                g = g_prev
            torch.ops.aten.threshold_backward.grad_input(g, a0, 0, grad_input=g)
            g3 = g.view(B, c, h0)
            dS.add_(g3.sum(1).to(f32))
            if dG is None:
                continue
            if cdt == f32:
                torch.sum(g3, 0, out=dG[j0:j0 + c])
            else:
                dG[j0:j0 + c].copy_(g3.sum(0))
        self.last_stats = stats[1:].clone()
        return stats[0], dS, dG, dW


class _FusedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fused: FusedProfileLoss, weight_grads: bool, row_weights, S, G, X, *flat):
        layers = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        loss, dS, dG, dW = fused.evaluate(S, G, X, layers, weight_grads, row_weights,
                                          gene_grad=G.requires_grad)
        ctx.dG = dG
        ctx.save_for_backward(dS)
        ctx.dW = dW
        ctx.n_flat = len(flat)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (dS,) = ctx.saved_tensors
        dG = None if ctx.dG is None else ctx.dG * grad_loss
        flat_grads: list = [None] * ctx.n_flat
        if ctx.dW is not None:
            flat_grads = [t * grad_loss for wb in ctx.dW for t in wb]
        ctx.dW = ctx.dG = None
        return (None, None, None, dS * grad_loss, dG, None, *flat_grads)
