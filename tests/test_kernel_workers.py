"""The fused kernel's CPU worker threads: exact, reproducible, thread settings restored."""
import pytest
import torch

import factembed.model as fe_model
from factembed.model import FactorizedEmbeddingNet, FusedProfileLoss


def setup(dtype=torch.float32, m=997, gene_layer=False):
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(6, m, 2, 9, (16, 8, 8)).to(dtype)
    idx = torch.tensor([0, 2, 5])
    X = torch.randn(3, m, dtype=dtype)
    S = net.sample_term(net.sample_embedding[idx]).detach()
    G = fe_model.GeneLayer(*(t.detach() for t in net.gene_layer())) if gene_layer else net.gene_term().detach()
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
def test_workers_agree_with_one_sweep_fp64(workers, gene_layer):
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


def test_inference_mode_and_module_default(monkeypatch):
    args = setup()
    ref = run(FusedProfileLoss(gene_chunk=100, workers=1), *args, weight_grads=False)
    monkeypatch.setattr(fe_model, "CPU_WORKERS", 2)
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
    monkeypatch.setattr(fe_model, "_SPLIT_MIN_MACS", 1)
    monkeypatch.setattr(fe_model, "CPU_WORKERS", 2)
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(5, 1500, 2, 7, (12, 6)).double()
    G = net.gene_term()
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
    monkeypatch.setattr(fe_model, "CPU_WORKERS", workers)
    monkeypatch.setattr(fe_model, "_DECODE_ROWS", 64)
    torch.manual_seed(0)
    net = FactorizedEmbeddingNet(9, 301, 2, 7, (16, 8, 8)).double()
    z = net.sample_embedding[[0, 4, 8]].detach()
    ref = net.decode(z.clone().requires_grad_(True)).detach()      # autograd path
    with torch.no_grad():
        got = net.decode(z)
        sub = net.decode(z, gene_index=torch.tensor([5, 0, 300]))
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(sub, ref[:, [5, 0, 300]], rtol=1e-12, atol=1e-14)


def test_train_runs_the_whole_step_on_the_kernel_workers(monkeypatch):
    """train() runs its own thread at 1 intra-op thread; the step's products, the gene
    term's included, must still be shared out to the kernel's workers (regression: the
    gene term once ran on one thread, ~11% of the step time lost).  The gene term is
    computed inside the sweep (no all-gene product), block by block on the workers."""
    from factembed.train import train
    sizes, layer_inputs = [], []
    real_pool, real_eval = fe_model._worker_pool, FusedProfileLoss.evaluate
    monkeypatch.setattr(fe_model, "_worker_pool", lambda size, intra: sizes.append(size) or real_pool(size, intra))
    monkeypatch.setattr(FusedProfileLoss, "evaluate",
                        lambda self, S, G, *a, **k: layer_inputs.append(isinstance(G, fe_model.GeneLayer))
                        or real_eval(self, S, G, *a, **k))
    monkeypatch.setattr(FactorizedEmbeddingNet, "gene_term", lambda *a, **k: pytest.fail("all-gene product"))
    monkeypatch.setattr(fe_model, "CPU_WORKERS", None)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        net = FactorizedEmbeddingNet(8, 1024, 2, 64, (64, 8), generator=gen)
        train(net, torch.rand(8, 1024), n_steps=3, lr=1e-3, l2=0.0, batch_samples=2, generator=gen,
              device=torch.device("cpu"), progress=False, gene_chunk=128)
    finally:
        torch.set_num_threads(n_threads)
    assert layer_inputs == [True, True, True]
    assert sizes and set(sizes) == {2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("gene_layer", [False, True])
@pytest.mark.parametrize("weight_grads", [True, False])
def test_scripted_sweep_is_available_and_identical_to_plain_python(gene_layer, weight_grads, dtype):
    """The sweep runs TorchScript-compiled (no GIL between operations); the compiled and
    the plain Python function are the same code and must give bit-identical results."""
    assert isinstance(fe_model._compiled_sweep(), torch.jit.ScriptFunction)
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
    loss_l, dS_l, (dE, dWg, dbg), dW_l = fused.evaluate(S, fe_model.GeneLayer(E, W, b), X, layers,
                                                         weight_grads, rw)
    close = dict(rtol=1e-10, atol=1e-14)
    assert torch.allclose(loss_l, loss_g, **close) and torch.allclose(dS_l, dS_g, **close)
    assert torch.allclose(dE, dG @ W, **close)
    assert torch.allclose(dWg, dG.T @ E, **close)
    assert torch.allclose(dbg, dG.sum(0), **close)
    assert (dW_l is None) == (dW_g is None) == (not weight_grads)
    _, _, none, _ = fused.evaluate(S, fe_model.GeneLayer(E, W, b), X, layers, weight_grads, rw, gene_grad=False)
    assert none is None


def test_bf16_gene_layer_gradients_are_close_to_fp32():
    S, GL, X, layers = setup(gene_layer=True)
    ref = run(FusedProfileLoss(gene_chunk=128, workers=2), S, GL, X, layers)
    got = run(FusedProfileLoss(gene_chunk=128, workers=2, compute_dtype=torch.bfloat16), S, GL, X, layers)
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)
