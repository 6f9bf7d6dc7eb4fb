"""Reference helpers shared by test_model.py and test_kernel.py: the paper's model written
independently of factembed (no factoring, no blocking), and a small network to test."""
import torch

from factembed.engine.network import FactorizedEmbeddingNet


def plain_concat_mlp(net, sample_idx):
    """The paper's model, written independently: gather s_i and g_j for every pair,
    concatenate, run a ReLU MLP; no factoring, no blocking."""
    n_s, m = len(sample_idx), net.n_genes
    s = net.sample_embedding[sample_idx].repeat_interleave(m, dim=0)      # (n_s*m, ds)
    g = net.gene_embedding.repeat(n_s, 1)                                 # (n_s*m, dg)
    h = torch.cat([s, g], dim=1)
    W1 = torch.cat([net.first_sample.weight, net.first_gene.weight], dim=1)
    h = torch.relu(h @ W1.T + net.first_gene.bias)
    for k, layer in enumerate(net.layers):
        h = h @ layer.weight.T + layer.bias
        if k < len(net.layers) - 1:
            h = torch.relu(h)
    return h.reshape(n_s, m)


def make(dtype, hidden=(16, 8, 8), m=301, seed=0):
    torch.manual_seed(seed)
    return FactorizedEmbeddingNet(12, m, 2, 7, hidden).to(dtype)


def grads(net):
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}
