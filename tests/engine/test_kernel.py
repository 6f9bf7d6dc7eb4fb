"""The fused kernel (kernel.py): loss and gradients against a plain concatenation MLP
and the chain rule; its CPU worker threads (exact, reproducible, thread settings
restored); the TorchScript-compiled block pass; the row-split gene term and the
forward-only blocked decode."""
import pytest
import torch

import factembed.engine.kernel as fe_kernel
from _plain_mlp import grads, make, plain_concat_mlp
from factembed.engine.kernel import FusedProfileLoss
from factembed.engine.network import FactorizedEmbeddingNet


# -- loss and gradients against the plain model --------------------------------------------

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


# -- CPU worker threads ---------------------------------------------------------------------


def setup(dtype=torch.float32, m=997, gene_layer=False):
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(6, m, 2, 9, (16, 8, 8)).to(dtype)
    idx = torch.tensor([0, 2, 5])
    X = torch.randn(3, m, dtype=dtype)
    S = net.sample_term(net.sample_embedding[idx]).detach()
    G = fe_kernel.GeneLayer(*(t.detach() for t in net.gene_layer())) if gene_layer else net.gene_term().detach()
    layers = [(w.detach(), b.detach()) for w, b in net.decoder_weights()]
    return S, G, X, layers


def run(fused, S, G, X, layers, weight_grads=True):
    loss, dS, dG, dW = fused.evaluate(S, G, X, layers, weight_grads, None)
    flat = [loss.reshape(1), dS.flatten(), *(t.flatten() for t in dG), fused.last_stats]
    if dW is not None:
        flat += [t.flatten() for wb in dW for t in wb]
    return torch.cat(flat)


@pytest.mark.parametrize("gene_layer", [False, True])
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_agree_with_one_worker_fp64(workers, gene_layer):
    args = setup(torch.float64, gene_layer=gene_layer)
    one = run(FusedProfileLoss(gene_chunk=50, compute_dtype=torch.float64, workers=1), *args)
    many = run(FusedProfileLoss(gene_chunk=50, compute_dtype=torch.float64, workers=workers), *args)
    assert torch.allclose(one, many, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("gene_layer", [False, True])
def test_workers_are_bit_reproducible_and_keep_thread_settings(gene_layer):
    args = setup(gene_layer=gene_layer)
    before = torch.get_num_threads()
    fused = FusedProfileLoss(gene_chunk=64, workers=2)
    a = run(fused, *args)
    b = run(FusedProfileLoss(gene_chunk=64, workers=2), *args)
    c = run(fused, *args)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.get_num_threads() == before


def test_inference_mode_and_default_workers_from_the_environment(monkeypatch):
    args = setup()
    ref = run(FusedProfileLoss(gene_chunk=100, workers=1), *args, weight_grads=False)
    monkeypatch.setenv("FACTEMBED_CPU_WORKERS", "2")
    got = run(FusedProfileLoss(gene_chunk=100), *args, weight_grads=False)
    assert torch.allclose(ref, got, rtol=1e-5, atol=1e-7)


def test_plan_evens_out_blocks_over_workers():
    fused = FusedProfileLoss(workers=2)
    chunk, workers = fused.plan(4, 100, 19962, torch.device("cpu"))
    blocks = -(-19962 // chunk)
    assert workers == 2 and blocks % 2 == 0
    assert FusedProfileLoss(workers=4).plan(4, 100, 3, torch.device("cpu"))[1] <= 3


@pytest.mark.parametrize("gene_layer", [False, True])
def test_bf16_compute_runs_and_is_close(gene_layer):
    S, G, X, layers = setup(gene_layer=gene_layer)
    ref = run(FusedProfileLoss(gene_chunk=128, workers=1), S, G, X, layers)
    got = run(FusedProfileLoss(gene_chunk=128, workers=2, compute_dtype=torch.bfloat16), S, G, X, layers)
    assert got.dtype == torch.float32
    assert torch.allclose(ref[:1], got[:1], rtol=5e-2)


def test_gene_term_split_over_workers_matches_linear(monkeypatch):
    monkeypatch.setattr(fe_kernel, "_SPLIT_MIN_MACS", 1)
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(5, 1500, 2, 7, (12, 6)).double()
    G = net.gene_term(workers=2)
    assert G.grad_fn is not None and "RowSplit" in type(G.grad_fn).__name__
    w = torch.randn_like(G)
    (G * w).sum().backward()
    got = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    ref = net.first_gene(net.gene_embedding)
    assert torch.allclose(G, ref, rtol=1e-12, atol=1e-14)
    (ref * w).sum().backward()
    for n, p in net.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, rtol=1e-12, atol=1e-14), n


@pytest.mark.parametrize("workers", [1, 2])
def test_blocked_decode_without_grad_matches_plain(monkeypatch, workers):
    monkeypatch.setattr(fe_kernel, "_DECODE_ROWS", 64)
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(9, 301, 2, 7, (16, 8, 8)).double()
    z = net.sample_embedding[[0, 4, 8]].detach()
    ref = net.decode(z.clone().requires_grad_(True)).detach()      # autograd path
    with torch.no_grad():
        got = net.decode(z, workers=workers)
        sub = net.decode(z, gene_index=torch.tensor([5, 0, 300]), workers=workers)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(sub, ref[:, [5, 0, 300]], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("gene_layer", [False, True])
@pytest.mark.parametrize("weight_grads", [True, False])
def test_scripted_block_pass_is_available_and_identical_to_plain_python(gene_layer, weight_grads, dtype):
    """The block pass runs TorchScript-compiled (no GIL between operations); the compiled
    and the plain Python function are the same code and must give bit-identical results."""
    assert isinstance(fe_kernel._compiled_block_pass(), torch.jit.ScriptFunction)
    args = setup(torch.float64 if dtype == torch.float64 else torch.float32, gene_layer=gene_layer)
    compiled = run(FusedProfileLoss(gene_chunk=64, compute_dtype=dtype, workers=2), *args,
                   weight_grads=weight_grads)
    plain = run(FusedProfileLoss(gene_chunk=64, compute_dtype=dtype, workers=2, compiled=False), *args,
                weight_grads=weight_grads)
    assert torch.equal(compiled, plain)


@pytest.mark.parametrize("weight_grads", [True, False])
@pytest.mark.parametrize("row_weights", [False, True])
def test_gene_layer_gradients_are_the_chain_rule_of_the_gene_term_fp64(weight_grads, row_weights):
    """With a GeneLayer the kernel returns d(embedding), d(weight), d(bias) = the chain rule
    through G = E W^T + b of the gradient it returns for a precomputed G; ``gene_grad=False``
    returns none of them."""
    torch.manual_seed(1)
    net = FactorizedEmbeddingNet(6, 301, 2, 9, (16, 8)).double()
    S = net.sample_term(net.sample_embedding[[0, 2, 5]]).detach()
    X = torch.randn(3, 301, dtype=torch.float64)
    E, W, b = (t.detach() for t in net.gene_layer())
    G = E @ W.T + b
    layers = [(w.detach(), bb.detach()) for w, bb in net.decoder_weights()]
    rw = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64) if row_weights else None
    fused = FusedProfileLoss(gene_chunk=40, compute_dtype=torch.float64, workers=2)
    loss_g, dS_g, (dG,), dW_g = fused.evaluate(S, G, X, layers, weight_grads, rw)
    loss_l, dS_l, (dE, dWg, dbg), dW_l = fused.evaluate(S, fe_kernel.GeneLayer(E, W, b), X, layers,
                                                         weight_grads, rw)
    close = dict(rtol=1e-10, atol=1e-14)
    assert torch.allclose(loss_l, loss_g, **close) and torch.allclose(dS_l, dS_g, **close)
    assert torch.allclose(dE, dG @ W, **close)
    assert torch.allclose(dWg, dG.T @ E, **close)
    assert torch.allclose(dbg, dG.sum(0), **close)
    assert (dW_l is None) == (dW_g is None) == (not weight_grads)
    _, _, none, _ = fused.evaluate(S, fe_kernel.GeneLayer(E, W, b), X, layers, weight_grads, rw, gene_grad=False)
    assert none is None


def test_bf16_gene_layer_gradients_are_close_to_fp32():
    S, GL, X, layers = setup(gene_layer=True)
    ref = run(FusedProfileLoss(gene_chunk=128, workers=2), S, GL, X, layers)
    got = run(FusedProfileLoss(gene_chunk=128, workers=2, compute_dtype=torch.bfloat16), S, GL, X, layers)
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)
