"""The kernel's CPU worker pool (_cpu_pool.py): worker counts, the environment default,
gene-block sizing and the thread settings of the pool."""
import pytest
import torch

from factembed.engine.cpu_pool import MAX_AUTO_WORKERS, WORKERS_ENV, cpu_workers, default_gene_chunk, worker_pool


def test_worker_count_default_argument_and_environment(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert cpu_workers(1 << 30) == min(torch.get_num_threads(), MAX_AUTO_WORKERS)
    assert cpu_workers(1 << 30, 3) == 3
    assert cpu_workers(2, 3) == 2                   # never more than the blocks
    assert cpu_workers(0, 3) == 1
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert cpu_workers(1 << 30) == 3 and cpu_workers(2) == 2
    assert cpu_workers(1 << 30, 1) == 1             # an argument wins over the environment
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=WORKERS_ENV):
            cpu_workers(10)


def test_default_gene_chunk_evens_out_blocks_and_takes_all_genes_off_cpu():
    cpu = torch.device("cpu")
    for workers in (1, 2, 3):
        chunk = default_gene_chunk(4, 100, 19962, cpu, workers=workers)
        assert (-(-19962 // chunk)) % workers == 0
        assert 4 * 4 * 100 * chunk <= 1.1 * (1 << 20)  # ~1 MiB of first-layer activations
    assert default_gene_chunk(4, 100, 19962, torch.device("cuda")) == 19962
    assert default_gene_chunk(4, 100, 10, cpu) == 10


def test_pool_workers_have_their_own_intra_op_threads_and_the_caller_keeps_its_own():
    before = torch.get_num_threads()
    pool = worker_pool(2, 1)
    assert torch.get_num_threads() == before
    assert [f.result() for f in [pool.submit(torch.get_num_threads) for _ in range(4)]] == [1] * 4
    assert worker_pool(2, 1) is pool                 # reused while the shape is the same


def test_flush_denormals_is_scoped_and_training_restores_the_callers_state():
    """Denormal floats slow x86 steps ~3x late in training; train() flushes them in its
    own thread for its duration and leaves the caller's setting as it found it."""
    import numpy as np

    from factembed.engine.cpu_pool import denormals_flushed, flush_denormals
    from factembed.engine.network import FactorizedEmbeddingNet
    from factembed.training.loop import train

    torch.set_flush_denormal(False)
    assert not denormals_flushed()
    with flush_denormals():
        assert denormals_flushed()
        assert float(torch.tensor([1e-40]) * 1.0) == 0.0
    assert not denormals_flushed()
    seen = []
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32))
    net = FactorizedEmbeddingNet(20, 30, 2, 4, (8,), generator=torch.Generator().manual_seed(0))
    train(net, X, n_steps=5, lr=1e-2, l2=0.0, batch_samples=4, generator=torch.Generator().manual_seed(0),
          device=torch.device("cpu"), progress=False, callback=lambda *a: seen.append(denormals_flushed()))
    assert seen and all(seen) and not denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        train(net, X, n_steps=2, lr=1e-2, l2=0.0, batch_samples=4, generator=torch.Generator().manual_seed(0),
              device=torch.device("cpu"), progress=False)
        assert denormals_flushed()                       # a caller's own choice is kept
    finally:
        torch.set_flush_denormal(False)
