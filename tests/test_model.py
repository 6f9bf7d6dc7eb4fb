"""The factored, fused network against a plain concatenation MLP written here."""
import pytest
import torch

from factembed.model import FactorizedEmbeddingNet, FusedProfileLoss


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


@pytest.mark.parametrize("hidden", [(16, 8, 8), (5,), (9, 4)])
def test_decode_equals_plain_forward(hidden):
    net = make(torch.float64, hidden)
    idx = torch.tensor([0, 3, 11])
    ref = plain_concat_mlp(net, idx)
    out = net.decode(net.sample_embedding[idx], gene_chunk=50)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gene_layer", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 64, 300, 301, 1000])
@pytest.mark.parametrize("hidden", [(16, 8, 8), (5,)])
def test_fused_loss_and_gradients_equal_plain_fp64(chunk, hidden, gene_layer):
    net = make(torch.float64, hidden)
    idx = torch.tensor([1, 4, 7, 9])
    X = torch.randn(4, net.n_genes, dtype=torch.float64)
    loss_ref = ((plain_concat_mlp(net, idx) - X) ** 2).mean()
    loss_ref.backward()
    ref = grads(net)
    net.zero_grad()
    fused = FusedProfileLoss(gene_chunk=chunk, compute_dtype=torch.float64)
    S = net.sample_term(net.sample_embedding[idx])
    loss = fused(S, net.gene_layer() if gene_layer else net.gene_term(), X, net.decoder_weights())
    loss.backward()
    assert abs(loss.item() - loss_ref.item()) <= 1e-12 * max(1.0, abs(loss_ref.item()))
    for name, g in grads(net).items():
        assert torch.allclose(g, ref[name], rtol=1e-10, atol=1e-13), name


def test_fused_fp32_tolerance_and_stats():
    """fp32: agreement within 1e-5 relative; the returned stats are sums over the batch."""
    net = make(torch.float32)
    idx = torch.tensor([2, 5])
    X = torch.randn(2, net.n_genes)
    pred = plain_concat_mlp(net, idx)
    loss_ref = ((pred - X) ** 2).mean()
    loss_ref.backward()
    ref = grads(net)
    net.zero_grad()
    fused = FusedProfileLoss(gene_chunk=37)
    loss = fused(net.sample_term(net.sample_embedding[idx]), net.gene_term(), X, net.decoder_weights())
    loss.backward()
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    for name, g in grads(net).items():
        scale = ref[name].abs().max().item()
        assert (g - ref[name]).abs().max().item() <= 1e-5 * scale + 1e-9, name
    y_sum, y_sq, xy = fused.last_stats.tolist()
    p = pred.detach()
    assert y_sum == pytest.approx(p.sum().item(), rel=1e-4, abs=1e-3)
    assert y_sq == pytest.approx((p * p).sum().item(), rel=1e-4)
    assert xy == pytest.approx((p * X).sum().item(), rel=1e-4, abs=1e-3)


def test_row_weights_and_inference_mode():
    """Row weights give sum over rows of each row's MSE; weight_grads=False leaves the
    decoder without gradients but the sample gradients unchanged."""
    net = make(torch.float64)
    idx = torch.tensor([0, 1, 2])
    X = torch.randn(3, net.n_genes, dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    z = net.sample_embedding[idx].detach().clone().requires_grad_(True)
    ref = (((net.decode(z) - X) ** 2).mean(1) * w).sum()
    (gz_ref,) = torch.autograd.grad(ref, z)
    z2 = z.detach().clone().requires_grad_(True)
    fused = FusedProfileLoss(gene_chunk=40, compute_dtype=torch.float64)
    layers = [(a.detach(), b.detach()) for a, b in net.decoder_weights()]
    with torch.no_grad():
        G = net.gene_term()
    loss = fused(z2 @ net.first_sample.weight.detach().T, G, X, layers, weight_grads=False, row_weights=w)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(z2.grad, gz_ref, rtol=1e-10, atol=1e-14)
    assert all(p.grad is None for p in net.parameters())


def test_penalty_is_sum_of_squares():
    net = make(torch.float64)
    expected = sum(float((p.detach() ** 2).sum()) for p in net.parameters())
    assert net.penalty().item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("gene_layer", [False, True])
def test_fused_gradients_follow_the_upstream_gradient(gene_layer):
    """backward() skips the scaling for the usual upstream gradient 1; any other is applied."""
    net = make(torch.float64)
    idx = torch.tensor([0, 5])
    X = torch.randn(2, net.n_genes, dtype=torch.float64)
    fused = FusedProfileLoss(gene_chunk=64, compute_dtype=torch.float64)

    def run(factor):
        net.zero_grad()
        G = net.gene_layer() if gene_layer else net.gene_term()
        (factor * fused(net.sample_term(net.sample_embedding[idx]), G, X, net.decoder_weights())).backward()
        return grads(net)

    one, three = run(1.0), run(-3.0)
    for name in one:
        assert torch.allclose(three[name], -3.0 * one[name], rtol=1e-12, atol=1e-15), name
