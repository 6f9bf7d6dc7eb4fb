"""CUDA graphs and the chunked loop on a GPU (factembed.training.step): the graphed step against
the eager one, no host synchronisation in the steady loop, re-capture after the
learning-rate decay, the user's path feeding from device memory.

Skipped where torch sees no CUDA device (CI, the dev machines); ``bench/gpu_check.sh``
runs it on a CUDA machine.  The CPU side of the same loop is tests/training/test_step.py."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import factembed.training.step as step_mod
from factembed.engine.kernel import FusedProfileLoss
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.loop import BatchPlan, BatchSampler, GeneWalk, TensorRows, make_optimizer, train
from factembed.training.heldout import StopRule, ValidationSet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _plain_kernel(**kw):
    return FusedProfileLoss(compiled=False, **kw)   # the graph's kernel: same code both ways


def _matrix(n=300, m=500, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 2))
    return torch.from_numpy((np.tanh(Z @ rng.normal(size=(2, m))) + 0.1 * rng.normal(size=(n, m))).astype(np.float32))


def _run(X, *, n_steps, graphs, walk=64, dtype=torch.float32, validation=False, stop=False, lr=1e-2):
    n, m = X.shape
    net = FactorizedEmbeddingNet(n, m, 2, 8, (32, 16), generator=torch.Generator().manual_seed(1)).to(CUDA)
    gen = torch.Generator().manual_seed(3)
    sampler = BatchPlan(BatchSampler(n, 32, gen), GeneWalk(m, walk, torch.Generator().manual_seed(4)) if walk else None)
    opt = make_optimizer(net, lr, 1e-4, CUDA, sample_lr=3 * lr)
    val = ValidationSet(TensorRows(X), seed=5, fraction=0.05, every=50) if validation else None
    rule = StopRule(patience=100, min_steps=100, tol=0.3) if stop else None
    hist, opt, _ = train(net, X, n_steps=n_steps, lr=lr, l2=1e-4, batch_samples=32, generator=gen, device=CUDA,
                         compute_dtype=dtype, progress=False, sampler=sampler, optimizer=opt, graphs=graphs,
                         kernel=_plain_kernel, validation=val, stop_rule=rule)
    return net, hist


class _Spy:
    def __init__(self, monkeypatch):
        self.steps = []
        real = step_mod.GraphedStep.__init__

        def init(obj, *a, **k):
            real(obj, *a, **k)
            self.steps.append(obj)
        monkeypatch.setattr(step_mod.GraphedStep, "__init__", init)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("walk", [None, 64])
def test_graphed_steps_follow_eager_steps(monkeypatch, dtype, walk):
    spy = _Spy(monkeypatch)
    X = _matrix()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)      # no fallback to eager
        net_g, h_g = _run(X, n_steps=100, graphs=True, walk=walk, dtype=dtype)
    net_e, h_e = _run(X, n_steps=100, graphs=False, walk=walk, dtype=dtype)
    (g,) = spy.steps
    assert g.failed is None and g.captures == 1
    assert h_g.step == h_e.step == list(range(1, 101))
    np.testing.assert_allclose(h_g.loss, h_e.loss, rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(net_g.state_dict().items(), net_e.state_dict().values()):
        assert float((a.float() - b.float()).abs().max()) <= 1e-6 * max(1.0, float(b.float().abs().max())), name


def test_graph_is_captured_again_after_the_decay(monkeypatch):
    spy = _Spy(monkeypatch)
    X = _matrix()
    net_g, h_g = _run(X, n_steps=1500, graphs=True, validation=True, stop=True, lr=3e-2)
    net_e, h_e = _run(X, n_steps=1500, graphs=False, validation=True, stop=True, lr=3e-2)
    (g,) = spy.steps
    assert g.failed is None and g.captures == 2          # the first capture, then after x0.1
    assert h_g.step == h_e.step and h_g.step[-1] < 1500
    np.testing.assert_allclose(h_g.val_loss, h_e.val_loss, rtol=1e-5)


@pytest.mark.parametrize("graphs", [True, False])
def test_steady_loop_never_synchronises(graphs):
    X = _matrix()
    n, m = X.shape
    net = FactorizedEmbeddingNet(n, m, 2, 8, (32, 16), generator=torch.Generator().manual_seed(1)).to(CUDA)
    sampler = BatchPlan(BatchSampler(n, 32, torch.Generator().manual_seed(3)),
                        GeneWalk(m, 64, torch.Generator().manual_seed(4)))
    opt = make_optimizer(net, 1e-2, 1e-4, CUDA)
    fused = _plain_kernel()
    feed = step_mod.make_feed(TensorRows(X), sampler, CUDA)
    assert isinstance(feed, step_mod.ResidentFeed)
    step = step_mod.make_step(net, fused, opt, device=CUDA, masked=False, graphs=graphs)
    records = torch.empty((40, 7), device=CUDA)
    batch = feed.prepare(10)
    for j in range(10):                          # warm-up and capture (with its check) outside
        records[j].copy_(step(batch(j)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = feed.prepare(30)
        for j in range(30):
            records[j].copy_(step(batch(j)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(records[:30]).all()


def test_the_users_numpy_path_trains_from_device_memory(monkeypatch):
    from factembed import FactorizedEmbeddings
    feeds = []
    real = step_mod.make_feed
    monkeypatch.setattr(step_mod, "make_feed", lambda *a, **k: feeds.append(real(*a, **k)) or feeds[-1])
    X = _matrix().numpy()
    FactorizedEmbeddings(n_steps=50, device="cuda", gene_dim=8, hidden=(16, 8), random_state=0,
                         verbose=False).fit(X)
    assert feeds and isinstance(feeds[0], step_mod.ResidentFeed)
    monkeypatch.setenv("FACTEMBED_RESIDENT", "0")                  # a matrix that does not fit: tiles
    FactorizedEmbeddings(n_steps=50, device="cuda", gene_dim=8, hidden=(16, 8), random_state=0,
                         verbose=False).fit(X)
    assert isinstance(feeds[-1], step_mod.TileFeed)


def test_a_matrix_already_on_the_gpu_is_fed_from_there():
    X = _matrix().cuda()
    sampler = BatchPlan(BatchSampler(X.shape[0], 32, torch.Generator().manual_seed(3)))
    assert isinstance(step_mod.make_feed(TensorRows(X), sampler, torch.device("cuda")), step_mod.ResidentFeed)
    assert isinstance(step_mod.make_feed(TensorRows(X), sampler, torch.device("cuda", torch.cuda.current_device())),
                      step_mod.ResidentFeed)


def test_a_failed_capture_falls_back_to_eager_steps_with_one_warning(monkeypatch):
    spy = _Spy(monkeypatch)

    def broken(self, batch):
        raise RuntimeError("planted capture failure")
    monkeypatch.setattr(step_mod.GraphedStep, "_capture", broken)
    X = _matrix()
    with pytest.warns(RuntimeWarning, match="planted capture failure"):
        net_g, h_g = _run(X, n_steps=40, graphs=True)
    net_e, h_e = _run(X, n_steps=40, graphs=False)
    (g,) = spy.steps
    assert g.failed and g.graph is None
    np.testing.assert_allclose(h_g.loss, h_e.loss, rtol=1e-6, atol=1e-6)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


def test_adam_is_capturable_only_during_the_capture(monkeypatch):
    spy = _Spy(monkeypatch)
    _run(_matrix(), n_steps=20, graphs=True)
    (g,) = spy.steps
    assert g.captures == 1 and not any(grp["capturable"] for grp in g.eager.optimizer.param_groups)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_graphs_on_a_device_that_is_not_the_current_one(monkeypatch):
    spy = _Spy(monkeypatch)
    X = _matrix()
    n, m = X.shape
    dev = torch.device("cuda", 1)
    net = FactorizedEmbeddingNet(n, m, 2, 8, (32, 16), generator=torch.Generator().manual_seed(1)).to(dev)
    gen = torch.Generator().manual_seed(3)
    sampler = BatchPlan(BatchSampler(n, 32, gen), GeneWalk(m, 64, torch.Generator().manual_seed(4)))
    opt = make_optimizer(net, 1e-2, 1e-4, dev)
    h, _, _ = train(net, X, n_steps=60, lr=1e-2, l2=1e-4, batch_samples=32, generator=gen, device=dev,
                    progress=False, sampler=sampler, optimizer=opt, graphs=True, kernel=_plain_kernel)
    (g,) = spy.steps
    assert g.failed is None and g.captures == 1
    assert h.loss[-1] < h.loss[5]          # replays do train
