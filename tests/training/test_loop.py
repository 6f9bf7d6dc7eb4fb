"""Training: quality on planted structure, determinism, exactness of the L2 term, and
the kernel and its CPU workers as arguments of train()."""
import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import factembed.engine.kernel as fe_kernel
from _plain_mlp import plain_concat_mlp
from factembed import FactorizedEmbeddings, auto_n_steps
from factembed.engine.kernel import FusedProfileLoss
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.loop import BatchSampler, train


def test_planted_clusters_are_separated_and_reconstructed(fitted_small):
    fe, X, labels = fitted_small
    Z = fe.embedding_
    acc = cross_val_score(KNeighborsClassifier(5), Z, labels, cv=5).mean()
    assert acc > 0.9, acc                           # chance is 0.25
    assert np.mean(fe.history_["pearson_r"][-100:]) > 0.9
    rec = fe.inverse_transform(Z)
    r = np.corrcoef(rec.ravel(), X.ravel())[0, 1]
    assert r > 0.9, r


def test_history_is_per_step_and_monotone_in_time(fitted_small):
    fe, _, _ = fitted_small
    h = fe.history_
    assert h["step"] == list(range(1, fe.n_steps_ + 1))
    assert len(h["loss"]) == len(h["pearson_r"]) == len(h["seconds"]) == fe.n_steps_
    assert np.all(np.diff(h["seconds"]) >= 0)
    assert np.mean(h["loss"][-100:]) < 0.5 * np.mean(h["loss"][:100])


def test_same_seed_same_result_on_cpu(planted_data):
    X, _ = planted_data
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=60, random_state=3, verbose=False, device="cpu")
    a = FactorizedEmbeddings(**kw).fit(X)
    b = FactorizedEmbeddings(**kw).fit(X)
    c = FactorizedEmbeddings(**{**kw, "random_state": 4}).fit(X)
    assert np.array_equal(a.embedding_, b.embedding_)
    assert np.array_equal(a.gene_embedding_, b.gene_embedding_)
    assert a.history_["loss"] == b.history_["loss"]
    assert not np.array_equal(a.embedding_, c.embedding_)


def test_trainer_equals_plain_adam_on_mse_plus_l2():
    """Our trainer (fused kernel, L2 through Adam's weight_decay = 2*l2) against plain
    autograd on MSE + l2 * sum(p^2) with an independent copy of the network."""
    torch.manual_seed(0)
    n, m, l2, lr, steps = 10, 53, 1e-3, 1e-2, 5
    X = torch.randn(n, m, dtype=torch.float64)
    net = FactorizedEmbeddingNet(n, m, 2, 5, (8, 4)).double()
    ref = FactorizedEmbeddingNet(n, m, 2, 5, (8, 4)).double()
    ref.load_state_dict(net.state_dict())
    train(net, X, n_steps=steps, lr=lr, l2=l2, batch_samples=3, generator=torch.Generator().manual_seed(1),
          device=torch.device("cpu"), compute_dtype=torch.float64, gene_chunk=20, progress=False)
    sampler = BatchSampler(n, 3, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    for _ in range(steps):
        idx = sampler.next()
        opt.zero_grad()
        loss = ((plain_concat_mlp(ref, idx) - X[idx]) ** 2).mean()
        loss = loss + l2 * sum((p ** 2).sum() for p in ref.parameters())
        loss.backward()
        opt.step()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), name


def test_batches_are_permutations_of_the_samples():
    s = BatchSampler(10, 3, torch.Generator().manual_seed(0))
    first_pass = torch.cat([s.next() for _ in range(3)])
    assert len(set(first_pass.tolist())) == 9             # distinct within a pass
    s2 = BatchSampler(2, 4, torch.Generator().manual_seed(0))
    assert len(s2.next()) == 2                            # batch never exceeds n


def test_larger_l2_shrinks_the_embedding(planted_data):
    X, _ = planted_data
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=600, random_state=0, verbose=False)
    small = FactorizedEmbeddings(l2=0.0, **kw).fit(X)
    large = FactorizedEmbeddings(l2=1e-2, **kw).fit(X)
    assert np.linalg.norm(large.embedding_) < 0.5 * np.linalg.norm(small.embedding_)


def test_auto_n_steps_rule():
    assert auto_n_steps(10_344, 4) == 100_000          # the reference configuration
    assert auto_n_steps(271, 4) == 2_710
    assert auto_n_steps(10, 4) == 2_000
    assert auto_n_steps(10**6, 4) == 100_000


def test_divergence_stops_with_clear_message(planted_data):
    X, _ = planted_data
    fe = FactorizedEmbeddings(gene_dim=4, hidden=(8,), n_steps=50, random_state=0, verbose=False)
    with pytest.raises(FloatingPointError, match="diverged at step"):
        fe.fit(X * 1e25)                                 # squared errors overflow float32


def test_train_runs_the_whole_step_on_the_kernel_workers(monkeypatch):
    """train() runs its own thread at 1 intra-op thread; the step's products, the gene
    term's included, must still be shared out to the kernel's workers (regression: the
    gene term once ran on one thread, ~11% of the step time lost).  The gene term is
    computed inside the block pass (no all-gene product), block by block on the workers."""
    sizes, layer_inputs = [], []
    real_pool, real_eval = fe_kernel.worker_pool, FusedProfileLoss.evaluate
    monkeypatch.setattr(fe_kernel, "worker_pool", lambda size, intra: sizes.append(size) or real_pool(size, intra))
    monkeypatch.setattr(FusedProfileLoss, "evaluate",
                        lambda self, S, G, *a, **k: layer_inputs.append(isinstance(G, fe_kernel.GeneLayer))
                        or real_eval(self, S, G, *a, **k))
    monkeypatch.setattr(FactorizedEmbeddingNet, "gene_term", lambda *a, **k: pytest.fail("all-gene product"))
    monkeypatch.delenv("FACTEMBED_CPU_WORKERS", raising=False)
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



def test_train_takes_the_kernel_and_its_workers_as_arguments(monkeypatch):
    """``kernel`` is called with FusedProfileLoss's constructor arguments, ``workers``
    reaches it and sizes the worker pool; the result is that of the default kernel with
    the same workers, bit for bit."""
    made, sizes = [], []
    real_pool = fe_kernel.worker_pool
    monkeypatch.setattr(fe_kernel, "worker_pool", lambda size, intra: sizes.append(size) or real_pool(size, intra))

    def kernel(**kw):
        made.append(kw)
        return FusedProfileLoss(**kw)

    def fit(**kw):
        gen = torch.Generator().manual_seed(0)
        net = FactorizedEmbeddingNet(8, 600, 2, 8, (16, 8), generator=gen)
        hist, _, _ = train(net, torch.rand(8, 600, generator=gen), n_steps=3, lr=1e-3, l2=1e-4, batch_samples=2,
                           generator=gen, device=torch.device("cpu"), progress=False, gene_chunk=100, **kw)
        return hist, net

    h_ref, net_ref = fit(workers=3)
    h, net = fit(kernel=kernel, workers=3)
    assert made == [dict(gene_chunk=100, compute_dtype=torch.float32, workers=3)]
    assert sizes and set(sizes) == {3}
    assert h.loss == h_ref.loss
    for (name, p), q in zip(net.named_parameters(), net_ref.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="workers"):
        fit(workers=0)
