"""Data-parallel training: 2 processes on localhost with gloo.

One 2-process run (torch.multiprocessing, a file-based rendezvous: no port to pick)
serves most tests; one test goes through ``factembed fit --distributed 2`` (torchrun).

Exact comparison with one process: the single-process run uses the same initial
values (same seed), the union of the two ranks' batches at every step (batch 2 x 3
profiles) and the gradient of that global batch's mean loss, which is what the
ranks compute (each rank's mean-loss gradient, averaged by the all-reduce; the
sample-embedding gradient divided by the world size).  Adam acts elementwise, so the
two runs differ only by the order of floating-point sums: after 30 steps the
parameters agree within 1e-5 (about 1e-6 in practice).
"""

import json

import numpy as np
import pytest
import torch

from conftest import planted

N, M, STEPS, B = 103, 50, 30, 3
CFG = dict(gene_dim=8, hidden=(16, 8), n_steps=STEPS, batch_samples=B, random_state=1, verbose=False,
           device="cpu", infer_steps=20)
TOL = 1e-5


def _worker(rank, world, store, out, npy):
    import torch.distributed as dist

    from factembed.distributed import fit_distributed, replicated_parameters, shard_bounds, transform_distributed
    from factembed.sources import NpySource

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    X, _ = planted(n=N, m=M)
    lo, hi = shard_bounds(N, world, rank)
    res = fit_distributed(X[lo:hi], config=CFG, n_total=N, lo=lo)
    rec = {"lo": lo, "hi": hi, "local": res.local_net.sample_embedding.detach().clone(),
           "replicated": torch.cat([p.detach().reshape(-1) for p in replicated_parameters(res.local_net)]),
           "full": res.estimator.net_.state_dict(), "spread": res.replica_spread, "history": res.history}
    if rank == 0:
        res.estimator.save(f"{out}/model")
    Xnew = planted(n=11, m=M, seed=5)[0]
    rec["Z_new"] = torch.from_numpy(transform_distributed(res.estimator, Xnew))
    # backed: each rank streams its shard of an on-disk .npy
    src = NpySource(npy).view(lo, hi)
    res_b = fit_distributed(src, config=dict(CFG, n_steps=12), n_total=N, lo=lo)
    rec["backed_local"] = res_b.local_net.sample_embedding.detach().clone()
    rec["backed_full"] = res_b.estimator.net_.state_dict()
    rec["backed_spread"] = res_b.replica_spread
    # n_steps="auto": the held-out entries' sums pooled over the ranks, so both stop together
    res_a = fit_distributed(X[lo:hi], config=dict(CFG, n_steps="auto"), n_total=N, lo=lo)
    rec["auto"] = {"history": res_a.history, "n_steps": res_a.estimator.n_steps_,
                   "stop_reason": res_a.estimator.stop_reason_, "validation": res_a.estimator.validation_}
    # covariates: the whole table on every rank, each rank's rows' codes, replicated level tables
    res_c = fit_distributed(X[lo:hi], config=CFG, n_total=N, lo=lo, covariates={"batch": _batches()})
    rec["cov_full"] = res_c.estimator.net_.state_dict()
    rec["cov_levels"] = res_c.estimator.covariates_.covariates[0].levels
    if rank == 0:
        res_c.estimator.save(f"{out}/model_cov")
    torch.save(rec, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _batches():
    return np.array(["run_a", "run_b", "run_c"])[np.arange(N) % 3]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp
    d = tmp_path_factory.mktemp("dist")
    X, _ = planted(n=N, m=M)
    np.save(d / "x.npy", X)
    mp.spawn(_worker, args=(2, str(d / "store"), str(d), str(d / "x.npy")), nprocs=2, join=True)
    return d, [torch.load(d / f"rank{r}.pt") for r in range(2)]


def test_gathered_model_has_every_sample_exactly_once(two_ranks):
    _, recs = two_ranks
    assert [(r["lo"], r["hi"]) for r in recs] == [(0, 51), (51, 103)]
    for key_full, key_local in (("full", "local"), ("backed_full", "backed_local")):
        table = recs[0][key_full]["sample_embedding"]
        assert table.shape == (N, 2)
        for r in recs:   # each rank's rows, at their global positions, bit for bit
            assert torch.equal(table[r["lo"]:r["hi"]], r[key_local])
        # both ranks assembled the same model
        for k, v in recs[0][key_full].items():
            assert torch.equal(v, recs[1][key_full][k]), k


def test_replicated_parameters_are_identical_on_all_ranks(two_ranks):
    _, recs = two_ranks
    assert torch.equal(recs[0]["replicated"], recs[1]["replicated"])
    assert recs[0]["spread"] == 0.0 and recs[0]["backed_spread"] == 0.0


def test_matches_single_process_with_the_union_batch(two_ranks):
    from factembed.distributed import single_process_equivalent
    _, recs = two_ranks
    torch.set_num_threads(1)
    X, _ = planted(n=N, m=M)
    net = single_process_equivalent(X, CFG, world=2)
    for k, v in net.state_dict().items():
        diff = (v - recs[0]["full"][k]).abs().max().item()
        assert diff < TOL, (k, diff)
    # and the sample embeddings moved (the comparison is not trivially at the start)
    from factembed.distributed import build_shard_net
    from factembed import FEConfig
    init = build_shard_net(N, M, FEConfig(**CFG), 1, 0, N).sample_embedding.detach()
    assert (init - recs[0]["full"]["sample_embedding"]).abs().max() > 1e-3
    # the loss decreases as in the single-process run
    loss = recs[0]["history"]["loss"]
    assert len(loss) == STEPS and np.mean(loss[-5:]) < np.mean(loss[:5])


def test_covariates_data_parallel_equal_the_single_process_run(two_ranks):
    from factembed import FactorizedEmbeddings
    from factembed.distributed import single_process_equivalent
    d, recs = two_ranks
    torch.set_num_threads(1)
    X, _ = planted(n=N, m=M)
    net = single_process_equivalent(X, CFG, world=2, covariates={"batch": _batches()})
    for k, v in net.state_dict().items():
        if v.dtype == torch.long:
            assert torch.equal(v, recs[0]["cov_full"][k]), k
        else:
            torch.testing.assert_close(v, recs[0]["cov_full"][k], rtol=0, atol=TOL, msg=k)
    assert recs[0]["cov_levels"] == recs[1]["cov_levels"] == ("run_a", "run_b", "run_c")
    np.testing.assert_array_equal(recs[0]["cov_full"]["covariate_levels"][:, 0].numpy(), np.arange(N) % 3)
    for k, v in recs[0]["cov_full"].items():          # both ranks assembled the same model
        assert torch.equal(v, recs[1]["cov_full"][k]), k
    # the level table trained (it is not the start) and the saved model uses it by name
    init = FactorizedEmbeddingNet_init_levels()
    assert (init - recs[0]["cov_full"]["covariate_embeddings.0"]).abs().max() > 1e-4
    fe = FactorizedEmbeddings.load(d / "model_cov")
    assert list(fe.covariate_embedding_["batch"].index) == ["run_a", "run_b", "run_c"]
    Z = fe.transform(X[:12], covariates={"batch": _batches()[:12]})
    assert Z.shape == (12, 2) and np.isfinite(Z).all()


def FactorizedEmbeddingNet_init_levels():
    from factembed import FEConfig
    from factembed.distributed import build_shard_net
    return build_shard_net(N, M, FEConfig(**CFG), 1, 0, N, ((3, 4),)).covariate_embeddings[0].detach()


def test_saved_model_is_a_single_process_model(two_ranks):
    from factembed import FactorizedEmbeddings
    d, recs = two_ranks
    fe = FactorizedEmbeddings.load(d / "model")
    assert fe.net_.n_samples == N
    for k, v in fe.net_.state_dict().items():
        assert torch.equal(v, recs[0]["full"][k]), k
    single = FactorizedEmbeddings(**dict(CFG, n_steps=2)).fit(planted(n=N, m=M)[0])
    single.save(d / "single")
    a = json.loads((d / "model" / "model.json").read_text())
    b = json.loads((d / "single" / "model.json").read_text())
    assert set(a) == set(b)
    assert {k: v.shape for k, v in single.net_.state_dict().items()} == \
        {k: v.shape for k, v in fe.net_.state_dict().items()}


def test_distributed_transform_equals_single_process(two_ranks):
    from factembed import FactorizedEmbeddings
    d, recs = two_ranks
    torch.set_num_threads(1)
    fe = FactorizedEmbeddings.load(d / "model")
    Z = fe.transform(planted(n=11, m=M, seed=5)[0])
    np.testing.assert_allclose(recs[0]["Z_new"].numpy(), Z, atol=1e-4)
    assert torch.equal(recs[0]["Z_new"], recs[1]["Z_new"])


def test_cli_fit_distributed_two_processes(tmp_path, capfd, monkeypatch):
    """``factembed fit --distributed 2`` runs torchrun, which runs factembed.cli.rank."""
    from factembed import FactorizedEmbeddings
    from factembed.cli import main
    X, _ = planted(n=60, m=40)
    np.save(tmp_path / "x.npy", np.abs(X))
    out = tmp_path / "model"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = main(["fit", str(tmp_path / "x.npy"), "-o", str(out), "--distributed", "2", "--backed", "--steps", "10",
               "--gene-dim", "4", "--hidden", "8", "--seed", "0", "--quiet", "--training", "reference"])
    captured = capfd.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "on 2 process(es)" in captured.out
    fe = FactorizedEmbeddings.load(out)
    assert fe.embedding_.shape == (60, 2)
    assert fe.extra_["distributed"]["world_size"] == 2 and fe.extra_["distributed"]["global_batch"] == 8
    assert fe.extra_["distributed"]["replica_spread"] == 0.0


def test_fit_request_round_trip():
    """The ranks receive exactly the request the command line built (JSON round trip)."""
    import json

    from factembed.cli.commands import build_parser, fit_request
    from factembed.workflow import FitRequest
    argv = ["fit", "d.h5", "-o", "m", "--backed", "--distributed", "3", "--steps", "7", "--hidden", "8,4",
            "--no-log", "--seed", "2", "--top-genes", "5", "--checkpoint-every", "4", "--resume"]
    req = fit_request(build_parser().parse_args(argv))
    again = FitRequest.from_dict(json.loads(json.dumps(req.to_dict())))
    assert again == req
    assert (again.processes, again.backed, again.config.n_steps, again.config.hidden, again.config.random_state) \
        == (3, True, 7, (8, 4), 2)
    assert (again.preprocessing.log10p1, again.preprocessing.top_variable) == (False, 5)
    assert (again.checkpoints.every, again.checkpoints.resume) == (4, True)


@pytest.mark.parametrize("device,local_world,n_gpus,backend,warns", [
    ("cpu", 2, 1, "gloo", False),
    ("auto", 2, 0, "gloo", False),         # no GPU: the CPU
    ("auto", 2, 2, "nccl", False),         # one GPU per process
    ("cuda", 1, 1, "nccl", False),
    ("auto", 2, 1, "gloo", True),          # two processes, one GPU: NCCL would refuse ("Duplicate GPU")
    ("cuda:0", 4, 2, "gloo", True),
])
def test_backend_needs_a_gpu_per_process_for_nccl(device, local_world, n_gpus, backend, warns):
    from factembed.distributed.group import choose_backend
    chosen, warning = choose_backend(device, local_world, n_gpus)
    assert chosen == backend
    assert (warning is not None) == warns
    if warns:
        assert f"{local_world} processes" in warning and "--nproc-per-node" in warning


def test_auto_steps_ranks_share_the_validation_curve_and_stop_together(two_ranks):
    _, recs = two_ranks
    a, b = recs[0]["auto"], recs[1]["auto"]
    assert a["history"]["val_loss"] and a["history"]["val_loss"] == b["history"]["val_loss"]
    assert a["n_steps"] == b["n_steps"] == a["history"]["step"][-1] < 25_000
    assert "stopped at step" in a["stop_reason"] and a["validation"] == b["validation"]
    # the pooled entries are those of the whole matrix
    assert a["validation"]["entries"] > 100


def test_validation_entries_of_shards_are_those_of_the_whole_matrix():
    from factembed.training.loop import TensorRows
    from factembed.training.heldout import ValidationSet

    X = torch.from_numpy(planted(n=N, m=M)[0])
    whole = ValidationSet(TensorRows(X), seed=11, fraction=0.05)
    entries = set()
    for lo, hi in ((0, 52), (52, N)):
        part = ValidationSet(TensorRows(X[lo:hi]), seed=11, fraction=0.05, offset=lo)
        entries |= set(zip((part.rows + lo).tolist(), part.genes.tolist()))
        assert torch.equal(part.mask(torch.arange(hi - lo), None), whole.mask(torch.arange(lo, hi), None))
    assert entries == set(zip(whole.rows.tolist(), whole.genes.tolist()))


def test_cli_fit_distributed_with_missing_values(tmp_path, capfd, monkeypatch):
    """``--distributed 2 --backed --missing ignore``: NaN entries pass the ranks' block checks and
    stay out of the loss (finite history), and the gathered model has every sample."""
    from factembed import FactorizedEmbeddings
    from factembed.cli import main
    X, _ = planted(n=60, m=40)
    X = np.abs(X)
    X[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
    np.save(tmp_path / "x.npy", X)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "model"), "--distributed", "2", "--backed",
            "--steps", "10", "--gene-dim", "4", "--hidden", "8", "--seed", "0", "--quiet", "--keep-constant"]
    assert main(args) != 0                       # NaN without --missing ignore: refused by the ranks
    capfd.readouterr()
    rc = main(args + ["--missing", "ignore"])
    captured = capfd.readouterr()
    assert rc == 0, captured.err[-3000:]
    fe = FactorizedEmbeddings.load(tmp_path / "model")
    assert fe.embedding_.shape == (60, 2) and np.isfinite(fe.history_["loss"]).all()


def test_rank_plan_is_the_random_start_plan():
    # the ranks start at random, so their sample table takes the random start's 10x rate,
    # not the rate the PCA start would get (3x for 64 samples)
    from factembed import FEConfig
    from factembed.distributed.fit import rank_plan
    from factembed.training.recipes import plan_training
    plan = rank_plan(FEConfig(), 64, 40, 2)
    assert plan.init == "random" and plan.sample_lr == pytest.approx(10 * plan.lr)
    assert plan_training(FEConfig(), 64, 40, 2).sample_lr == pytest.approx(3 * plan.lr)


def test_the_single_process_equivalent_follows_an_annealed_length():
    """single_process_equivalent trains the plan's schedule: with lr_schedule="anneal" its
    second half runs at the annealed rates, a different model from the constant one's (the
    two-rank comparison with fit_distributed is not run with the anneal)."""
    from factembed.distributed import single_process_equivalent
    X, _ = planted(n=N, m=M)
    constant = single_process_equivalent(X, CFG, world=2)
    annealed = single_process_equivalent(X, {**CFG, "lr_schedule": "anneal"}, world=2)
    half_c = single_process_equivalent(X, {**CFG, "n_steps": STEPS // 2}, world=2)
    half_a = single_process_equivalent(X, {**CFG, "n_steps": STEPS // 2, "lr_schedule": "anneal"}, world=2)
    assert not torch.equal(constant.sample_embedding, annealed.sample_embedding)
    # a run of half the length anneals its own second half: not the first half of the long one
    assert not torch.equal(half_c.sample_embedding, half_a.sample_embedding)
