"""An independent reference for inference quality (used by the tests and the inference
benchmarks; it was ``bench/_gn_reference.py``): the per-sample optimum of the
full-gene reconstruction loss, found by Levenberg-Marquardt (Gauss-Newton with
damping and step acceptance) over *all* genes.

It shares no code with :mod:`factembed.estimator.inference` (which runs Adam on random gene subsets):
the Jacobian of the decoder output with respect to the sample embedding is propagated
forward through the MLP (one tangent per embedding dimension, stacked with the values
into one matrix product per layer).  A ReLU MLP is piecewise linear in the embedding, so
the Gauss-Newton matrix J^T J is the exact Hessian of the squared error inside each
linear piece.  Cost per iteration: (1 + sample_dim) forward passes over all genes, so it
is meant for a few dozen samples, not for production use.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def loss_grad_gn(Z: torch.Tensor, X: torch.Tensor, G: torch.Tensor, W1s: torch.Tensor,
                 layers: list[tuple[torch.Tensor, torch.Tensor]], chunk: int = 256):
    """Mean squared error over the genes of each row of ``X`` (R,), its gradient with
    respect to ``Z`` (R, d) and the Gauss-Newton matrix (R, d, d), all float64.

    ``G`` is the gene term of the first layer (genes x h0, bias included), ``W1s`` the
    sample half of the first layer (h0 x d), ``layers`` the remaining (weight, bias) pairs.
    """
    R, d = Z.shape
    k = X.shape[1]
    S = Z.float() @ W1s.t()
    f = torch.zeros(R, dtype=torch.float64)
    g = torch.zeros(R, d, dtype=torch.float64)
    H = torch.zeros(R, d, d, dtype=torch.float64)
    tangents0 = W1s.t()[:, None, None, :]           # d(first layer)/dz_q, (d, 1, 1, h0)
    for j0 in range(0, k, chunk):
        Gc = G[j0:j0 + chunk]
        c, h0 = Gc.shape
        pre = S[:, None, :] + Gc[None]              # (R, c, h0)
        A = torch.empty(1 + d, R, c, h0)
        A[0] = pre.clamp_min(0)
        A[1:] = (pre > 0)[None] * tangents0         # tangents through the ReLU
        A = A.reshape(-1, h0)
        for w, b in layers[:-1]:
            A = (A @ w.t()).view(1 + d, R * c, -1)
            A[0] += b
            A = (A * (A[0] > 0)[None]).reshape(-1, w.shape[0])
        w, b = layers[-1]
        out = (A @ w.t()).view(1 + d, R, c)
        r = out[0] + b - X[:, j0:j0 + c]
        J = out[1:]
        f += (r * r).sum(1, dtype=torch.float64)
        g += torch.einsum("qrc,rc->rq", J, r).double()
        H += torch.einsum("qrc,prc->rqp", J, J).double()
    return f / k, 2 * g / k, 2 * H / k


@torch.no_grad()
def full_gene_optimum(net, Z0: torch.Tensor, X: torch.Tensor, *, max_iter: int = 60,
                      tol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt from ``Z0`` on the full-gene loss of each row of ``X``;
    returns (embeddings, their full-gene MSE).  ``net`` is a FactorizedEmbeddingNet."""
    G = net.first_gene(net.gene_embedding).detach()
    W1s = net.first_sample.weight.detach()
    layers = [(layer.weight.detach(), layer.bias.detach()) for layer in net.layers]
    X = X.float().contiguous()
    Z = Z0.double().clone()
    f, g, H = loss_grad_gn(Z, X, G, W1s, layers)
    lam = torch.full((Z.shape[0],), 1e-3, dtype=torch.float64)
    active = torch.ones(Z.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0:
            break
        D = torch.diagonal(H[idx], dim1=1, dim2=2).clamp_min(1e-12)
        delta = torch.linalg.solve(H[idx] + torch.diag_embed(lam[idx, None] * D), -g[idx])
        Zt = Z[idx] + delta
        ft, gt, Ht = loss_grad_gn(Zt, X[idx], G, W1s, layers)
        acc = ft < f[idx]
        gain = (f[idx] - ft) / f[idx].clamp_min(1e-30)
        keep = idx[acc]
        Z[keep], f[keep], g[keep], H[keep] = Zt[acc], ft[acc], gt[acc], Ht[acc]
        lam[idx] = torch.where(acc, lam[idx] / 3, lam[idx] * 4)
        done = (acc & (gain < tol)) | (lam[idx] > 1e10) | (delta.norm(dim=1) < 1e-8)
        active[idx[done]] = False
    return Z.float(), f


def per_sample_mse(fe, Z, X):
    """Full-gene MSE of each row of ``X`` reconstructed from embeddings ``Z`` (numpy)."""
    return ((fe.inverse_transform(Z) - X) ** 2).mean(1)


def excess_mse(f, f_ref, f_start) -> float:
    """Full-gene MSE above the optimum's (``f_ref``), as a share of the start point's excess."""
    return float((f - f_ref).sum() / max((f_start - f_ref).sum(), 1e-30))
