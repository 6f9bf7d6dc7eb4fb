"""CUDA: the fused kernel, training, inference, checkpoints and save/load on a GPU,
checked against float64 CPU references and against the same run on the CPU.

Skipped where torch sees no CUDA device (CI, the dev machines); ``bench/gpu_check.sh``
runs the whole suite, these included, on a CUDA machine."""
import numpy as np
import pytest
import torch

from _plain_mlp import grads, make, plain_concat_mlp
from factembed import FactorizedEmbeddings
from factembed.engine.kernel import FusedProfileLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

KW = dict(gene_dim=8, hidden=(16, 8), random_state=0, verbose=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_fused_kernel_on_cuda_matches_float64_cpu_reference(subset, dtype, tol):
    """Loss and every gradient on the GPU (whole profiles, or a gene subset as the fast
    recipe trains) against the plain concatenation MLP in float64 on the CPU."""
    ref_net = make(torch.float64, m=301, seed=1)
    idx = torch.tensor([0, 3, 5, 8, 11])
    X = torch.randn(5, 301, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    genes = torch.randperm(301, generator=torch.Generator().manual_seed(3))[:97] if subset else torch.arange(301)
    pred = plain_concat_mlp(ref_net, idx)[:, genes]
    ((pred - X[:, genes]) ** 2).mean().backward()
    ref = grads(ref_net)
    loss_ref = float(((pred.detach() - X[:, genes]) ** 2).mean())

    net = make(torch.float32, m=301, seed=1).cuda()
    fused = FusedProfileLoss(compute_dtype=dtype)
    S = net.sample_term(net.sample_embedding[idx.cuda()])
    layer = net.gene_layer(genes.cuda()) if subset else net.gene_layer()
    loss = fused(S, layer, X[:, genes].float().cuda(), net.decoder_weights())
    loss.backward()
    assert loss.device.type == "cuda"
    assert abs(loss.item() - loss_ref) <= tol * loss_ref
    got = grads(net)
    for name, g in ref.items():
        if subset and name == "gene_embedding":          # only the subset's rows have a gradient
            assert torch.count_nonzero(got[name].cpu()[np.setdiff1d(np.arange(301), genes.numpy())]) == 0
            g, got[name] = g[genes], got[name][genes.cuda()]
        assert torch.isfinite(got[name]).all(), name
        assert _rel(got[name], g) <= tol, name


@pytest.mark.parametrize("training", ["reference", "fast"])
def test_fit_on_cuda_follows_the_cpu_run(planted_data, training):
    """Same seed, same batches (drawn on the CPU): the GPU run's losses and embedding
    agree with the CPU run's to rounding over the first steps."""
    X, _ = planted_data
    cpu = FactorizedEmbeddings(n_steps=25, training=training, device="cpu", **KW).fit(X)
    gpu = FactorizedEmbeddings(n_steps=25, training=training, device="cuda", **KW).fit(X)
    assert next(gpu.net_.parameters()).device.type == "cuda"
    np.testing.assert_allclose(gpu.history_["loss"], cpu.history_["loss"], rtol=1e-4)
    np.testing.assert_allclose(gpu.embedding_, cpu.embedding_, rtol=1e-3, atol=1e-5)


def test_cuda_fit_is_reproducible_and_learns(planted_data):
    X, labels = planted_data
    a = FactorizedEmbeddings(n_steps=600, device="cuda", **KW).fit(X)
    b = FactorizedEmbeddings(n_steps=600, device="cuda", **KW).fit(X)
    np.testing.assert_allclose(a.embedding_, b.embedding_, rtol=1e-5, atol=1e-6)
    assert a.history_["loss"][-1] < 0.5 * a.history_["loss"][0]
    assert a.score(X) > -0.5 * float(np.mean((X - X.mean(0)) ** 2))   # better than the gene means


def test_cuda_model_infers_saves_and_loads_on_cpu(planted_data, tmp_path):
    """transform / inverse_transform / impute run on the GPU; the saved model loads on the
    CPU and embeds new samples the same way (to rounding)."""
    X, _ = planted_data
    fe = FactorizedEmbeddings(n_steps=400, device="cuda", infer_steps=60, **KW).fit(X[:200])
    Z = fe.transform(X[200:])
    assert Z.shape == (40, 2) and np.isfinite(Z).all()
    rec = fe.inverse_transform(Z)
    assert rec.shape == (40, X.shape[1]) and np.isfinite(rec).all()
    holes = X[200:].copy()
    gone = np.random.default_rng(0).random(holes.shape) < 0.2
    holes[gone] = np.nan
    filled = fe.impute(holes)
    assert np.isfinite(filled).all() and np.array_equal(filled[~gone], holes[~gone])
    fe.save(tmp_path / "model")
    on_cpu = FactorizedEmbeddings.load(tmp_path / "model", device="cpu")
    assert next(on_cpu.net_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(on_cpu.embedding_, fe.embedding_, rtol=0, atol=0)
    np.testing.assert_allclose(on_cpu.transform(X[200:]), Z, rtol=1e-3, atol=1e-4)


def test_cuda_resume_from_checkpoint_matches_uninterrupted_run(planted_data, tmp_path):
    X, _ = planted_data
    full = FactorizedEmbeddings(n_steps=120, training="fast", device="cuda", **KW).fit(X)
    FactorizedEmbeddings(n_steps=80, training="fast", device="cuda", **KW).fit(
        X, checkpoint_dir=tmp_path, checkpoint_every=40)
    resumed = FactorizedEmbeddings(n_steps=120, training="fast", device="cuda", **KW).fit(
        X, checkpoint_dir=tmp_path, checkpoint_every=40, resume=True)
    assert resumed.history_["step"] == list(range(1, 121))
    np.testing.assert_allclose(resumed.history_["loss"], full.history_["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.embedding_, full.embedding_, rtol=1e-5, atol=1e-6)


def test_auto_precision_is_bf16_on_a_bf16_gpu(planted_data):
    from factembed.training.loop import resolve_precision
    assert resolve_precision("auto", torch.device("cuda")) == (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    X, _ = planted_data
    fe = FactorizedEmbeddings(n_steps=200, device="cuda", precision="bf16", **KW).fit(X)
    assert np.isfinite(fe.embedding_).all() and fe.history_["loss"][-1] < fe.history_["loss"][0]
