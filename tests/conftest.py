import pytest


def planted(n=240, m=300, k=4, rank=3, noise=0.1, seed=0):
    """Low-rank matrix whose samples fall in k well-separated clusters (sample i in cluster
    i % k): the tests' preset of the project's one generator, ``factembed.planted``."""
    from factembed.planted import make_planted

    P = make_planted(n, m, n_groups=k, latent_dim=rank, structure="linear", scatter=0.15, loading_sd=1.0,
                     base=None, noise=noise, clip=False, balanced=True, seed=seed)
    return P.X, P.labels


@pytest.fixture(scope="session")
def planted_data():
    return planted()


@pytest.fixture(scope="session")
def fitted_small(planted_data):
    """A small model trained once for the whole session (tests must not modify it).  On the
    CPU also where a GPU is visible: tests compare its tensors with CPU references
    (tests/training/test_cuda.py covers CUDA)."""
    from factembed import FactorizedEmbeddings
    X, labels = planted_data
    fe = FactorizedEmbeddings(gene_dim=16, hidden=(32, 16), n_steps=4000, infer_steps=100,
                              random_state=0, verbose=False, device="cpu")
    fe.fit(X)
    return fe, X, labels


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tiny tests (on a shared 2-core machine multi-threaded torch
    spins on them); restored afterwards."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
