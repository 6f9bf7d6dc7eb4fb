"""Training recipes: the gene walk, gene-subset steps against an independent reference,
the reference recipe as the study's training, the fast recipe's plan and its overrides."""
import copy
import math

import numpy as np
import pytest
import torch

from _plain_mlp import plain_concat_mlp
from factembed import FactorizedEmbeddings, FEConfig, auto_n_steps
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.recipes import AUTO_MAX_STEPS, fast_batch_shape, plan_training
from factembed.training.loop import BatchSampler, GeneWalk, make_optimizer, train


def test_gene_walk_visits_every_gene_once_per_cycle_with_fixed_size():
    walk = GeneWalk(103, 20, torch.Generator().manual_seed(0))
    steps_per_cycle = 6                                    # ceil(103 / 20)
    for _ in range(3):
        seen = torch.cat([walk.next() for _ in range(steps_per_cycle)])
        assert len(seen) == 120
        assert set(seen.tolist()) == set(range(103))       # every gene in each cycle
    for _ in range(10):
        idx = walk.next()
        assert len(idx) == 20 and len(set(idx.tolist())) == 20     # no repeat inside a step


def test_gene_walk_state_resumes_the_same_sequence():
    a = GeneWalk(50, 16, torch.Generator().manual_seed(4))
    for _ in range(5):
        a.next()
    b = GeneWalk(50, 16, torch.Generator().manual_seed(99))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for _ in range(12):                                    # across cycle boundaries
        assert torch.equal(a.next(), b.next())


def test_gene_subset_step_equals_the_plain_model_on_those_pairs():
    """One step on a gene subset: loss and every gradient equal autograd through the plain
    (unfactored) model restricted to the step's genes; other genes' rows get no gradient."""
    torch.manual_seed(0)
    n, m = 10, 70
    net = FactorizedEmbeddingNet(n, m, 2, 5, (12, 6)).double()
    ref = copy.deepcopy(net)
    X = torch.randn(n, m, dtype=torch.float64)
    rows = torch.tensor([1, 4, 7])
    genes = torch.tensor([3, 50, 8, 21, 66, 0, 13])

    from factembed.engine.kernel import FusedProfileLoss
    fused = FusedProfileLoss(compute_dtype=torch.float64, workers=1, gene_chunk=3)
    S = net.sample_term(net.sample_embedding[rows])
    loss = fused(S, net.gene_layer(genes), X[rows][:, genes], net.decoder_weights())
    loss.backward()

    pred = plain_concat_mlp(ref, rows)[:, genes]
    ref_loss = ((pred - X[rows][:, genes]) ** 2).mean()
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, rtol=1e-12)
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), name
    other = torch.ones(m, dtype=torch.bool)
    other[genes] = False
    assert torch.count_nonzero(net.gene_embedding.grad[other]) == 0


def test_reference_recipe_is_the_studys_training():
    cfg = FEConfig(training="reference")
    plan = plan_training(cfg, 10_344, 19_962)
    assert (plan.batch_samples, plan.batch_genes, plan.lr, plan.sample_lr) == (4, None, 5e-3, 5e-3)
    assert plan.n_steps == auto_n_steps(10_344, 4) == 100_000
    # a reference fit is exactly the plain loop: 4 whole profiles per step, one Adam group at 5e-3
    X = np.random.default_rng(0).normal(size=(40, 30)).astype(np.float32)
    fe = FactorizedEmbeddings(training="reference", gene_dim=4, hidden=(8,), n_steps=25, random_state=1,
                              verbose=False, device="cpu").fit(X)
    gen = torch.Generator().manual_seed(1 * 1_000_003)
    torch.manual_seed(1)
    net = FactorizedEmbeddingNet(40, 30, 2, 4, (8,), generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3, weight_decay=2e-7, fused=True)   # as make_optimizer
    train(net, torch.from_numpy(X), n_steps=25, lr=5e-3, l2=1e-7, batch_samples=4, generator=gen,
          device=torch.device("cpu"), progress=False, optimizer=opt, sampler=BatchSampler(40, 4, gen))
    for k, v in net.state_dict().items():
        assert torch.equal(v, fe.net_.state_dict()[k]), k


def test_fast_recipe_plan_and_overrides():
    # balanced: batch_samples / batch_genes ~ n / m at 4 m pairs per step
    b, bg = fast_batch_shape(10_344, 19_962)
    assert abs(b * bg - 4 * 19_962) <= b and 0.8 < (b / bg) / (10_344 / 19_962) < 1.25
    plan = plan_training(FEConfig(), 700, 765)
    assert plan.training == "fast" and plan.init == "pca"
    # the sample table's step from the PCA start: 1.4 / sqrt(share of the samples in a step),
    # within 3..10 (khan 3, pbmc 1.4 / sqrt(53 / 700) = 5.09, TCGA shape 10); 10 from a random start
    assert plan.batch_samples == 53
    assert plan.sample_lr == pytest.approx(10 * math.sqrt(203 / 10_344) / math.sqrt(53 / 700) * plan.lr)
    assert 5.09 < plan.sample_lr / plan.lr < 5.11
    assert plan_training(FEConfig(), 63, 2_308).sample_lr == pytest.approx(3 * plan.lr)
    assert plan_training(FEConfig(), 10_344, 19_962).sample_lr == pytest.approx(10 * plan.lr)
    assert plan_training(FEConfig(), 1_000_000, 20_000).sample_lr == pytest.approx(10 * plan.lr)
    assert plan_training(FEConfig(init="random"), 700, 765).sample_lr == pytest.approx(10 * plan.lr)
    assert plan_training(FEConfig(init="random", sample_lr_scale=2), 700, 765).sample_lr == pytest.approx(2 * plan.lr)
    assert plan_training(FEConfig(sample_lr_scale=10), 700, 765).sample_lr == pytest.approx(10 * plan.lr)
    # a data-parallel rank: the share of its own shard's samples
    assert plan_training(FEConfig(), 1_400, 765, world=2).sample_lr == pytest.approx(plan.sample_lr)
    # its length: until the validation MSE is flat, at most AUTO_MAX_STEPS, at every size
    for n, m in ((63, 2_308), (700, 765), (10_344, 19_962)):
        p = plan_training(FEConfig(), n, m)
        assert p.auto_stop and p.n_steps == AUTO_MAX_STEPS == 25_000
        assert plan_training(FEConfig(n_steps="auto"), n, m) == p
    # an explicit length: exactly that, no validation; the reference keeps its 40 passes
    exact = plan_training(FEConfig(n_steps=1234), 700, 765)
    assert not exact.auto_stop and exact.n_steps == 1234
    ref = plan_training(FEConfig(training="reference"), 700, 765)
    assert not ref.auto_stop and ref.n_steps == 7_000
    assert plan_training(FEConfig(training="reference", n_steps="auto"), 700, 765).auto_stop
    # explicit values override the recipe
    p = plan_training(FEConfig(batch_samples=16, batch_genes=100, lr=1e-3, sample_lr_scale=3, n_steps=77), 700, 765)
    assert (p.batch_samples, p.batch_genes, p.lr, p.sample_lr, p.n_steps) == (16, 100, 1e-3, 3e-3, 77)
    # all genes when the subset would cover them
    assert plan_training(FEConfig(batch_samples=2), 50, 40).batch_genes is None
    with pytest.raises(ValueError, match="training"):
        FEConfig(training="quick")


def test_sample_table_has_its_own_learning_rate():
    net = FactorizedEmbeddingNet(5, 6, 2, 3, (4,))
    opt = make_optimizer(net, 1e-3, 0.0, torch.device("cpu"), sample_lr=1e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]
    assert opt.param_groups[0]["params"] == [net.sample_embedding]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_fast_fit_trains_gene_subsets_and_reaches_the_planted_structure(planted_data):
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    X, labels = planted_data                                # 240 x 300, 4 planted clusters
    fe = FactorizedEmbeddings(gene_dim=16, hidden=(32, 16), random_state=0, verbose=False).fit(X)
    plan = fe.training_plan_
    assert plan.training == "fast" and plan.batch_genes is not None and plan.batch_genes < 300
    assert plan.auto_stop and fe.n_steps_ == fe.history_["step"][-1] < plan.n_steps   # stopped by the rule
    assert "stopped at step" in fe.stop_reason_
    acc = cross_val_score(KNeighborsClassifier(5), fe.embedding_, labels, cv=5).mean()
    assert acc > 0.9, acc
    rec = fe.inverse_transform(fe.embedding_)
    assert np.corrcoef(rec.ravel(), X.ravel())[0, 1] > 0.9


def test_adam_moves_an_intermittent_row_by_sqrt_of_its_share():
    """The premise of recipes.sample_lr_scale: a parameter with a gradient in a share p of
    the steps (a sample in p of the batches) moves about sqrt(p) x lr per step under Adam."""
    gen = torch.Generator().manual_seed(0)
    for p in (0.04, 0.25):
        w = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w], lr=1e-3)
        before, moves = 0.0, []
        for t in range(6000):
            opt.zero_grad()
            hit = float(torch.rand(1, generator=gen)) < p
            w.grad = torch.full((1,), -1.0 if hit else 0.0)
            opt.step()
            now = float(w.detach())
            if t >= 2000:
                moves.append(now - before)
            before = now
        assert abs(np.mean(moves) / 1e-3 - math.sqrt(p)) < 0.1 * math.sqrt(p), (p, np.mean(moves))


def test_anneal_factor_holds_then_descends_in_equal_stairs():
    from factembed.training.schedule import ANNEAL_STAIRS, anneal_factor
    n = 1000
    f = [anneal_factor(s, n) for s in range(1, n + 1)]
    assert f[:500] == [1.0] * 500                       # the first half at the full rates
    assert all(a >= b for a, b in zip(f, f[1:]))        # never up
    assert f[-1] == pytest.approx(1 / ANNEAL_STAIRS) and min(f) > 0
    assert sorted(set(f[500:]), reverse=True) == pytest.approx([(ANNEAL_STAIRS - k) / ANNEAL_STAIRS
                                                                for k in range(ANNEAL_STAIRS)])
    # the descent is linear: each stair holds (n / 2) / stairs steps
    assert np.bincount([round(v * ANNEAL_STAIRS) for v in f[500:]])[1:].tolist() == [10] * ANNEAL_STAIRS
    assert [anneal_factor(s, 10, stairs=5) for s in range(1, 11)] == [1.0] * 6 + [0.8, 0.6, 0.4, 0.2]


def test_the_plans_of_an_anneal():
    # a fit of explicit length: the schedule of its own steps
    plan = plan_training(FEConfig(n_steps=600, lr_schedule="anneal"), 63, 2_308)
    assert plan.lr_schedule == "anneal" and not plan.auto_stop and plan.lr_factor()(600) == pytest.approx(0.02)
    assert plan_training(FEConfig(n_steps=600), 63, 2_308).lr_factor() is None
    assert plan_training(FEConfig(training="reference", lr_schedule="anneal"), 63, 2_308).n_steps == 2_000
    # until converged: the stop rule anneals; its budget is a third of the study's length for
    # the shape, its half on the validation grid (khan: 2,000 / 3 -> 330 = 22 x 15)
    auto = plan_training(FEConfig(lr_schedule="anneal"), 63, 2_308)
    assert auto.auto_stop and auto.lr_factor() is None and (auto.val_every, auto.anneal_budget) == (15, 660)
    tcga = plan_training(FEConfig(lr_schedule="anneal"), 10_344, 19_962)
    # a third of TCGA's 100,000 is more than the run's most steps: the anneal ends by step 25,000
    assert tcga.n_steps == AUTO_MAX_STEPS and tcga.anneal_budget == AUTO_MAX_STEPS == 25_000
    assert plan_training(FEConfig(lr_schedule="anneal"), 5_000, 19_962).anneal_budget == 2 * (50_000 // 3 // 2 // 100 * 100)
    default = plan_training(FEConfig(), 63, 2_308)                   # the default: constant rates
    assert default.lr_schedule == "constant" and default.anneal_budget == 0
    assert plan_training(FEConfig(lr_schedule="constant"), 63, 2_308) == default
    assert FEConfig(n_steps="auto", lr_schedule="anneal").lr_schedule == "anneal"
    with pytest.raises(ValueError, match="lr_schedule"):
        FEConfig(lr_schedule="cosine")


def test_the_loop_applies_the_schedule_as_steps_at_those_rates():
    """``train(lr_factor=f)`` is, bitwise, one-step runs each at base x f(step) set by hand."""
    from factembed.training.schedule import anneal_factor
    X = torch.from_numpy(np.random.default_rng(3).normal(size=(24, 40)).astype(np.float32))

    def setup():
        net = FactorizedEmbeddingNet(24, 40, 2, 6, (8,), generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        opt = make_optimizer(net, 1e-2, 0.0, torch.device("cpu"), sample_lr=3e-2)
        return net, gen, opt, BatchSampler(24, 6, gen)

    n = 30
    net_a, gen_a, opt_a, samp_a = setup()
    train(net_a, X, n_steps=n, lr=1e-2, l2=0.0, batch_samples=6, generator=gen_a, device=torch.device("cpu"),
          progress=False, optimizer=opt_a, sampler=samp_a, lr_factor=lambda s: anneal_factor(s, n, stairs=5))
    net_b, gen_b, opt_b, samp_b = setup()
    history = None
    for step in range(1, n + 1):
        for group, base in zip(opt_b.param_groups, (3e-2, 1e-2)):
            group["lr"] = base * anneal_factor(step, n, stairs=5)
        history, _, _ = train(net_b, X, n_steps=step, lr=1e-2, l2=0.0, batch_samples=6, generator=gen_b,
                              device=torch.device("cpu"), progress=False, optimizer=opt_b, sampler=samp_b,
                              history=history, start_step=step - 1)
    for k, v in net_a.state_dict().items():
        assert torch.equal(v, net_b.state_dict()[k]), k
    assert [g["lr"] for g in opt_a.param_groups] == pytest.approx([3e-2 * 0.2, 1e-2 * 0.2])
    assert [g["initial_lr"] for g in opt_a.param_groups] == [3e-2, 1e-2]
