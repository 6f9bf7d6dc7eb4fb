"""Backed (out-of-core) row sources and the block sampler."""

import h5py
import numpy as np
import pytest
import torch

from factembed import FactorizedEmbeddings, FEInputError
from factembed.sources import (BlockSampler, H5adSource, H5Source, NpySource, ZarrSource, open_source,
                               plan_blocks)
from factembed.training.loop import TensorRows, train
from factembed.engine.network import FactorizedEmbeddingNet

from conftest import planted


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread (OpenMP threads only contend on a busy CI machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def matrix():
    rng = np.random.default_rng(3)
    return (rng.random((203, 37)) * 10).astype(np.float32)


def _write_all(tmp_path, X):
    """The same matrix as .npy, TCGA-style .h5, dense .h5ad, CSR .h5ad (and .zarr)."""
    n, m = X.shape
    samples = np.array([f"s{i}" for i in range(n)])
    genes = np.array([f"g{j}" for j in range(m)])
    paths = {}
    paths["npy"] = tmp_path / "x.npy"
    np.save(paths["npy"], X)
    paths["h5"] = tmp_path / "x.h5"
    with h5py.File(paths["h5"], "w") as f:
        f.create_dataset("data", data=X, chunks=(16, m))
        f.create_dataset("samples", data=samples.astype("S"))
        f.create_dataset("genes", data=genes.astype("S"))
    import anndata
    import scipy.sparse as sp
    paths["h5ad"] = tmp_path / "x.h5ad"
    anndata.AnnData(X=X.copy(), obs={"label": (np.arange(n) % 3).astype(str)},
                    var={"id": genes}).write_h5ad(paths["h5ad"])
    Xs = X.copy()
    Xs[Xs < 5] = 0
    paths["csr"] = tmp_path / "csr.h5ad"
    anndata.AnnData(X=sp.csr_matrix(Xs)).write_h5ad(paths["csr"])
    try:
        import zarr
        paths["zarr"] = tmp_path / "x.zarr"
        z = zarr.open_array(str(paths["zarr"]), mode="w", shape=X.shape, chunks=(32, m), dtype="f4")
        z[...] = X
    except ImportError:
        pass
    return paths, Xs


def test_rows_served_equal_the_in_memory_rows(tmp_path, matrix):
    paths, Xs = _write_all(tmp_path, matrix)
    idx = torch.tensor([5, 3, 3, 202, 0, 100, 101, 102])
    for kind, path in paths.items():
        src = open_source(path)
        ref = Xs if kind == "csr" else matrix
        assert src.shape == ref.shape, kind
        assert torch.equal(src.rows(idx), torch.from_numpy(ref[idx.numpy()])), kind
        np.testing.assert_array_equal(src.to_numpy(), ref)
        # the batches the block sampler hands out are the right rows
        sampler = src.make_sampler(4, torch.Generator().manual_seed(0), block_rows=10, blocks_per_window=3)
        for _ in range(80):
            i = sampler.next()
            assert torch.equal(src.rows(i), torch.from_numpy(ref[i.numpy()])), kind
        # a shard (view) serves its own rows
        v = src.view(50, 120)
        assert torch.equal(v.rows(torch.tensor([0, 69])), torch.from_numpy(ref[[50, 119]]))
        sampler.close()
        src.close()
    assert isinstance(open_source(paths["h5"]), H5Source)
    h5 = open_source(paths["h5"])
    assert h5.samples[7] == "s7" and h5.genes[3] == "g3"
    ad = open_source(paths["h5ad"])
    assert isinstance(ad, H5adSource) and ad.labels[4] == "1"


def test_zarr_source(tmp_path, matrix):
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("data", shape=matrix.shape, chunks=(50, matrix.shape[1]), dtype="f4")[...] = matrix
    src = open_source(tmp_path / "g.zarr")
    assert isinstance(src, ZarrSource)
    np.testing.assert_array_equal(src.to_numpy(), matrix)


def test_npy_is_read_with_pread_not_through_the_map(tmp_path, matrix):
    np.save(tmp_path / "x.npy", matrix)
    src = NpySource(tmp_path / "x.npy")
    assert src._fd is not None          # sequential pread, mapped pages never touched
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert NpySource(mm)._fd is not None
    sl = NpySource(mm[10:20])            # a slice of a map: plain slicing
    assert sl._fd is None
    np.testing.assert_array_equal(sl.to_numpy(), matrix[10:20])
    # other dtypes are converted per block
    np.save(tmp_path / "x64.npy", matrix.astype(np.float64))
    np.testing.assert_array_equal(NpySource(tmp_path / "x64.npy").to_numpy(), matrix)


@pytest.mark.parametrize("n,b", [(203, 1), (200, 4), (203, 7)])
def test_block_sampler_covers_every_row_once_per_pass(tmp_path, n, b):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    np.save(tmp_path / "x.npy", X)
    src = NpySource(tmp_path / "x.npy")
    s = BlockSampler(src, b, torch.Generator().manual_seed(1), block_rows=8, blocks_per_window=3)
    per_pass = n // b
    for p in range(3):
        seen = torch.cat([s.next() for _ in range(per_pass)])
        assert s.passes == p
        assert len(seen) == len(set(seen.tolist())) == per_pass * b     # no row twice in a pass
        if n % b == 0:
            assert sorted(seen.tolist()) == list(range(n))              # and every row once
    # reads stay sequential: the rows of a batch come from few blocks of contiguous rows
    assert s.windows_read >= 3 * (n // (8 * 3))


def test_block_sampler_state_dict_resumes_identically(tmp_path, matrix):
    np.save(tmp_path / "x.npy", matrix)
    src = NpySource(tmp_path / "x.npy")
    s = src.make_sampler(4, torch.Generator().manual_seed(2), block_rows=16, blocks_per_window=2)
    for _ in range(37):
        s.next()
    state = s.state_dict()
    ahead = [s.next() for _ in range(120)]          # crosses windows and a pass boundary
    s2 = src.make_sampler(4, torch.Generator().manual_seed(99), block_rows=16, blocks_per_window=2)
    s2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ahead, (s2.next() for _ in range(120))))
    # the state holds only tensors and plain ints (checkpoint format: safetensors + JSON)
    assert all(isinstance(v, (torch.Tensor, int)) for v in state.values())
    # prefetching does not change the sequence
    s3 = src.make_sampler(4, torch.Generator().manual_seed(2), block_rows=16, blocks_per_window=2, prefetch=0)
    s4 = src.make_sampler(4, torch.Generator().manual_seed(2), block_rows=16, blocks_per_window=2, prefetch=2)
    assert all(torch.equal(s3.next(), s4.next()) for _ in range(200))


def test_plan_blocks_respects_the_memory_budget():
    R, W = plan_blocks(200_000, 20_000, 4, memory_budget=256 << 20, prefetch=1)
    window_bytes = R * W * 20_000 * 4
    assert 3 * window_bytes <= 256 << 20            # current + previous + 1 prefetched
    assert R * 20_000 * 4 >= 4 << 20                # each block one read of >= 4 MiB
    assert 256 <= R * W <= 4096
    R, W = plan_blocks(50, 10, 4)
    assert R * W <= 50


def test_fit_on_memmap_equals_fit_on_array_with_the_same_batches(tmp_path):
    X, labels = planted(n=120, m=60)
    np.save(tmp_path / "x.npy", X)
    src = NpySource(tmp_path / "x.npy")
    kw = dict(n_steps=150, lr=5e-3, l2=0.0, batch_samples=4, device=torch.device("cpu"), progress=False)

    def net():
        return FactorizedEmbeddingNet(120, 60, 2, 8, (16, 8), generator=torch.Generator().manual_seed(0))

    sampler = src.make_sampler(4, torch.Generator().manual_seed(5), block_rows=8, blocks_per_window=4)
    drawn = []

    class Recorder:
        b = 4

        def next(self):
            i = sampler.next()
            drawn.append(i)
            return i

    a = net()
    train(a, src, sampler=Recorder(), generator=torch.Generator(), **kw)

    class Replay:
        b = 4
        it = iter(drawn)

        def next(self):
            return next(self.it)

    b = net()
    train(b, TensorRows(torch.from_numpy(X)), sampler=Replay(), generator=torch.Generator(), **kw)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), k


def test_estimator_fit_on_backed_source_is_like_fit_on_array(tmp_path):
    """Different batches (block shuffling), same kind of result."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    X, labels = planted(n=160, m=80)
    order = np.argsort(labels, kind="stable")     # stored sorted by cluster: the worst case for block shuffling
    X, labels = X[order], labels[order]
    np.save(tmp_path / "x.npy", X)
    kw = dict(gene_dim=8, hidden=(16, 8), n_steps=500, lr=1e-2, random_state=0, verbose=False)
    fa = FactorizedEmbeddings(**kw).fit(X)
    fb = FactorizedEmbeddings(**kw).fit(NpySource(tmp_path / "x.npy", block_rows=8))
    la, lb = np.mean(fa.history_["loss"][-100:]), np.mean(fb.history_["loss"][-100:])
    assert 0.5 < lb / la < 2.0, (la, lb)
    for fe in (fa, fb):
        acc = cross_val_score(KNeighborsClassifier(5), fe.embedding_, labels, cv=4).mean()
        assert acc > 0.8, acc


def test_nan_in_a_block_raises_naming_row_and_column(tmp_path, matrix):
    X = matrix.copy()
    X[150, 7] = np.nan
    np.save(tmp_path / "x.npy", X)
    src = NpySource(tmp_path / "x.npy")
    with pytest.raises(FEInputError, match=r"row 150, column 7: value is NaN"):
        src.read_rows(140, 160)
    # during training the error surfaces from the prefetch thread, with the same message
    with pytest.raises(FEInputError, match=r"row 150, column 7"):
        FactorizedEmbeddings(gene_dim=4, hidden=(8,), n_steps=500, random_state=0, verbose=False).fit(src)
    # names are used when the file has them
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.where(np.isnan(X), np.inf, X)
        f["samples"] = np.array([f"s{i}" for i in range(len(X))]).astype("S")
        f["genes"] = np.array([f"g{j}" for j in range(X.shape[1])]).astype("S")
    with pytest.raises(FEInputError, match=r"sample 's150' \(row 150\), gene 'g7' \(column 7\): value is inf"):
        open_source(tmp_path / "x.h5").to_numpy()
    # negative values cannot be log-transformed
    Y = matrix.copy()
    Y[3, 4] = -2.0
    np.save(tmp_path / "y.npy", Y)
    with pytest.raises(FEInputError, match=r"row 3, column 4: negative value -2"):
        NpySource(tmp_path / "y.npy", log10p1=True).to_numpy()


def test_log10p1_is_applied_per_block(tmp_path, matrix):
    np.save(tmp_path / "x.npy", matrix)
    src = NpySource(tmp_path / "x.npy", log10p1=True)
    np.testing.assert_allclose(src.to_numpy(), np.log10(matrix + 1.0), rtol=1e-6, atol=1e-6)
    s = src.make_sampler(4, torch.Generator().manual_seed(0), block_rows=8)
    i = s.next()
    np.testing.assert_allclose(src.rows(i).numpy(), np.log10(matrix[i.numpy()] + 1.0), rtol=1e-6, atol=1e-6)


def test_bad_files_raise_feinputerror(tmp_path):
    with pytest.raises(FEInputError, match="no such file"):
        open_source(tmp_path / "missing.npy")
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(FEInputError, match="2-D"):
        open_source(tmp_path / "v.npy")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(FEInputError, match="backed"):
        open_source(tmp_path / "x.csv")
    np.save(tmp_path / "t.npy", np.zeros((100, 50), np.float32))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FEInputError, match="truncated"):
        open_source(tmp_path / "t.npy")


def test_cli_fit_backed(tmp_path, matrix):
    from factembed.cli import main
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = matrix
        f["samples"] = np.array([f"s{i}" for i in range(len(matrix))]).astype("S")
        f["genes"] = np.array([f"g{j}" for j in range(matrix.shape[1])]).astype("S")
    out = tmp_path / "model"
    assert main(["fit", str(tmp_path / "x.h5"), "-o", str(out), "--backed", "--steps", "30",
                 "--gene-dim", "4", "--hidden", "8", "--seed", "0", "--quiet"]) == 0
    fe = FactorizedEmbeddings.load(out)
    assert fe.embedding_.shape == (len(matrix), 2)
    assert fe.extra_["backed"] and fe.extra_["preprocessing"]["log10p1"]
    np.testing.assert_allclose(fe.extra_["preprocessing"]["means"], np.log10(matrix + 1).mean(0), rtol=1e-5)
    assert list(fe.sample_names_[:2]) == ["s0", "s1"]


def test_backed_fit_resumes_from_a_checkpoint_bitwise(tmp_path, matrix):
    """The block sampler's state goes through the estimator's checkpoints."""
    np.save(tmp_path / "x.npy", matrix)
    kw = dict(gene_dim=4, hidden=(8,), random_state=0, verbose=False)

    def src():
        return NpySource(tmp_path / "x.npy", block_rows=8, blocks_per_window=3)

    full = FactorizedEmbeddings(n_steps=90, **kw).fit(src())
    FactorizedEmbeddings(n_steps=60, **kw).fit(src(), checkpoint_dir=tmp_path / "ck", checkpoint_every=30)
    resumed = FactorizedEmbeddings(n_steps=90, **kw).fit(src(), checkpoint_dir=tmp_path / "ck",
                                                         checkpoint_every=30, resume=True)
    for k, v in full.net_.state_dict().items():
        assert torch.equal(v, resumed.net_.state_dict()[k]), k
