"""Held-out validation entries and the stop of n_steps="auto"."""

import numpy as np
import pytest
import torch

from factembed import FactorizedEmbeddings
from factembed.training.loop import BatchSampler, History, TensorRows, train
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.heldout import StopRule, ValidationSet, held_out


def _numpy_hash(s, g, seed, fraction):
    """An independent NumPy (uint64) copy of the hash, to check the torch one."""
    m32 = np.uint64((1 << 32) - 1)
    s = np.asarray(s, dtype=np.uint64)[:, None]
    g = np.asarray(g, dtype=np.uint64)[None, :]
    h = ((s * np.uint64(73856093)) ^ (g * np.uint64(19349663)) ^ np.uint64((seed % (1 << 31)) * 83492791)) & m32
    for _ in range(2):
        h = ((h ^ (h >> np.uint64(16))) * np.uint64(0x45D9F3B)) & m32
    h = h ^ (h >> np.uint64(16))
    return (h % np.uint64(1_000_000)) < np.uint64(round(fraction * 1_000_000))


def test_held_out_is_deterministic_matches_numpy_and_has_the_fraction():
    s, g = torch.arange(300), torch.arange(500)
    mask = held_out(s, None, 500, seed=7, fraction=0.02)
    assert torch.equal(mask, held_out(s, g, 500, seed=7, fraction=0.02))
    assert np.array_equal(mask.numpy(), _numpy_hash(s.numpy(), g.numpy(), 7, 0.02))
    assert 0.017 < mask.float().mean().item() < 0.023
    assert not torch.equal(mask, held_out(s, None, 500, seed=8, fraction=0.02))
    # a subset of rows and columns sees the same entries
    sub = held_out(torch.tensor([5, 17]), torch.tensor([3, 400, 9]), 500, 7, 0.02)
    assert torch.equal(sub, mask[[5, 17]][:, [3, 400, 9]])


def test_stop_rule_on_a_synthetic_curve():
    rule = StopRule(patience=300, tol=0.01, min_steps=200, decays=0)
    steps = list(range(100, 2100, 100))
    falling = [1.0 / s for s in steps]                  # still improving a lot: never stops
    assert not any(rule.should_stop(steps[:k], falling[:k]) for k in range(1, len(steps) + 1))
    flat = [1.0 / s if s <= 800 else 0.999 / 800 for s in steps]   # falls, then flat: stops 300 steps later
    first = next(k for k in range(1, len(steps) + 1) if rule.should_stop(steps[:k], flat[:k]))
    assert steps[first - 1] == 1100
    assert "stopped at step 1,100" in rule.reason(steps[:first], flat[:first], True)


class _SpyRows(TensorRows):
    pass


def test_validation_entries_never_reach_a_training_step_and_training_stops():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(40, 60)).astype(np.float32))
    net = FactorizedEmbeddingNet(40, 60, 2, 8, (16,), generator=torch.Generator().manual_seed(0))
    val = ValidationSet(TensorRows(X), seed=3, fraction=0.05, every=10)
    assert len(val) > 0 and torch.all(val.mask(val.rows, None)[torch.arange(len(val)), val.genes])
    seen = []

    def kernel(**kw):
        from factembed.engine.kernel import FusedProfileLoss
        inner = FusedProfileLoss(**kw)

        class Spy:
            def __call__(self, S, G, xb, layers, **k):
                seen.append(xb.clone())
                return inner(S, G, xb, layers, **k)

            @property
            def last_stats(self):
                return inner.last_stats
        return Spy()

    sampler = BatchSampler(40, 8, torch.Generator().manual_seed(1))
    order = []
    orig = sampler.next

    def next_():
        idx = orig()
        order.append(idx.clone())
        return idx
    sampler.next = next_
    hist, _, _ = train(net, X, n_steps=400, lr=1e-2, l2=0.0, batch_samples=8, generator=torch.Generator(),
                       device=torch.device("cpu"), progress=False, sampler=sampler, kernel=kernel,
                       validation=val, stop_rule=StopRule(patience=50, tol=0.5, min_steps=20, decays=0))
    assert hist.stop_reason and "stopped at step" in hist.stop_reason
    assert len(hist.step) < 400 and hist.val_step[-1] == hist.step[-1]
    for idx, xb in zip(order, seen):
        mask = val.mask(idx, None)
        assert torch.isnan(xb[mask]).all() and not torch.isnan(xb[~mask]).any()


def test_estimator_auto_steps_stops_and_reports(tmp_path):
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(60, 2))
    W = rng.normal(size=(2, 80))
    X = (np.tanh(Z @ W) + 0.05 * rng.normal(size=(60, 80))).astype(np.float32)
    fe = FactorizedEmbeddings(n_steps="auto", gene_dim=8, hidden=(16,), random_state=0, verbose=False).fit(X)
    assert fe.training_plan_.auto_stop
    assert fe.stop_reason_ is not None and fe.history_["val_step"]
    assert fe.n_steps_ == fe.history_["step"][-1] <= 25_000
    fe2 = FactorizedEmbeddings(n_steps="auto", gene_dim=8, hidden=(16,), random_state=0, verbose=False).fit(X)
    assert np.array_equal(fe.embedding_, fe2.embedding_)      # deterministic with a seed
    fe.save(tmp_path / "m")
    assert FactorizedEmbeddings.load(tmp_path / "m").history_["val_loss"] == fe.history_["val_loss"]


def _crashing_after(n_calls: int):
    """A kernel factory whose loss raises KeyboardInterrupt at its call ``n_calls + 1`` (a crash)."""
    from factembed.engine.kernel import FusedProfileLoss
    calls = []

    def crashing(**k):
        inner = FusedProfileLoss(**k)

        class Crash:
            last_stats = property(lambda self: inner.last_stats)

            def __call__(self, *a, **kk):
                calls.append(1)
                if len(calls) > n_calls:
                    raise KeyboardInterrupt
                return inner(*a, **kk)
        return Crash()
    return crashing


def test_auto_steps_resume_after_a_crash_is_bitwise_and_stops_at_the_same_step(tmp_path):
    """The stop rule's state is the validation curve in the checkpoint's history: a run
    killed mid-way and resumed ends where the uninterrupted run ends, bit for bit."""

    rng = np.random.default_rng(2)
    X = (np.tanh(rng.normal(size=(50, 2)) @ rng.normal(size=(2, 40))) + 0.05 * rng.normal(size=(50, 40)))
    X = X.astype(np.float32)
    kw = dict(n_steps="auto", gene_dim=8, hidden=(16,), random_state=0, verbose=False)
    full = FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "a", checkpoint_every=200)
    assert 700 < full.n_steps_ < 25_000
    decay = int(full.stop_reason_.split("x0.1 at step ")[1].split(")")[0].replace(",", ""))

    with pytest.raises(KeyboardInterrupt):
        FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "b", checkpoint_every=200,
                                       kernel=_crashing_after(450))
    resumed = FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "b", checkpoint_every=200, resume=True)
    assert resumed.resumed_from_ == 400 < decay              # the resumed run crosses the decay
    assert resumed.n_steps_ == full.n_steps_ and resumed.stop_reason_ == full.stop_reason_
    assert resumed.history_["val_loss"] == full.history_["val_loss"]
    assert np.array_equal(resumed.embedding_, full.embedding_)
    for k, v in full.net_.state_dict().items():
        assert torch.equal(v, resumed.net_.state_dict()[k]), k


def test_stop_rule_decays_the_learning_rate_on_a_plateau_then_stops():
    rule = StopRule(patience=300, tol=0.01, min_steps=200, decays=1, factor=0.1)
    steps = list(range(100, 3100, 100))
    # flat from step 800, a second drop after the decay at 1,100, flat again from 1,500
    values = [1.0 / s if s <= 800 else (0.999 / 800 if s <= 1100 else 0.9 / 800 if s < 1500 else 0.85 / 800)
              for s in steps]
    assert rule.events(steps, values) == [("decay", 1100), ("stop", 1800)]
    assert [rule.action(steps[:k], values[:k]) for k in range(1, len(steps) + 1)].count("decay") == 1
    assert rule.action(steps[:11], values[:11]) == "decay" and rule.should_stop(steps[:18], values[:18])
    assert not rule.should_stop(steps[:17], values[:17])
    assert "learning rates x0.1 at step 1,100" in rule.reason(steps[:18], values[:18], True)
    assert StopRule(patience=300, tol=0.01, min_steps=200, decays=0).events(steps, values) == [("stop", 1100)]


def test_train_multiplies_every_learning_rate_at_the_decay():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(40, 60)).astype(np.float32))
    net = FactorizedEmbeddingNet(40, 60, 2, 8, (16,), generator=torch.Generator().manual_seed(0))
    val = ValidationSet(TensorRows(X), seed=3, fraction=0.05, every=10)
    from factembed.training.loop import make_optimizer
    opt = make_optimizer(net, 1e-2, 0.0, torch.device("cpu"), sample_lr=1e-1)
    rule = StopRule(patience=50, tol=0.5, min_steps=20, decays=1)
    hist, opt, _ = train(net, X, n_steps=2000, lr=1e-2, l2=0.0, batch_samples=8, generator=torch.Generator(),
                         device=torch.device("cpu"), progress=False, optimizer=opt,
                         sampler=BatchSampler(40, 8, torch.Generator().manual_seed(1)),
                         validation=val, stop_rule=rule)
    (kind, at), (last, end) = rule.events(hist.val_step, hist.val_loss)
    assert kind == "decay" and last == "stop" and end == hist.step[-1] >= at + 50
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 1e-3])


def test_measured_entries_are_spread_over_many_samples_with_a_cap_per_sample():
    """A large matrix: the measured entries come from ``max_rows`` samples, at most
    ceil(max_entries / max_rows) each, all of them held-out entries, and the choice is
    deterministic (not the first samples' whole rows)."""
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(500, 400)).astype(np.float32))
    X[3, :200] = float("nan")
    kw = dict(seed=5, fraction=0.05, max_entries=2_000, max_rows=200)
    val = ValidationSet(TensorRows(X), **kw)
    assert 1_980 <= len(val) <= 2_000        # row 3 (half NaN) may hold fewer than 10
    rows, counts = torch.unique(val.rows, return_counts=True)
    assert len(rows) == 200 and int(counts.max()) <= 10          # 2,000 / 200 per sample
    order = torch.randperm(500, generator=torch.Generator().manual_seed(5))[:200]
    assert set(rows.tolist()) == set(order.tolist())
    assert torch.all(held_out(val.rows, None, 400, 5, 0.05)[torch.arange(len(val)), val.genes])
    assert torch.equal(val.targets, X[val.rows, val.genes]) and not torch.isnan(val.targets).any()
    again = ValidationSet(TensorRows(X), **kw)
    assert torch.equal(again.rows, val.rows) and torch.equal(again.genes, val.genes)
    # the kept entries of a sample are not simply its lowest gene indices
    first = val.genes[val.rows == rows[0]]
    every = held_out(rows[:1], None, 400, 5, 0.05)[0].nonzero().flatten()
    assert len(every) > len(first) and not torch.equal(first.sort().values, every[:len(first)])
    # a small matrix: every held-out entry is measured
    small = ValidationSet(TensorRows(X[:40]), seed=5, fraction=0.05)
    assert len(small) == int((held_out(torch.arange(40), None, 400, 5, 0.05) & ~torch.isnan(X[:40])).sum())


def test_stop_rule_events_incremental_scan_equals_a_fresh_replay():
    """The loop calls ``events`` at every point; the incremental scan must give what a
    fresh rule replaying the whole curve gives, also when a curve is not an extension."""
    rng = np.random.default_rng(1)
    for trial in range(20):
        steps = list(range(100, 6100, 100))
        values = list(np.exp(-np.arange(60) / rng.uniform(3, 30)) + rng.normal(0, 0.01, 60) + 1.0)
        rule = StopRule(patience=500, tol=0.01, min_steps=300, decays=int(trial % 3))
        for k in range(1, len(steps) + 1):
            assert rule.events(steps[:k], values[:k]) == StopRule(patience=500, tol=0.01, min_steps=300,
                                                                  decays=int(trial % 3)).events(steps[:k], values[:k])
        other = values[:30] + [v * 0.5 for v in values[30:]]          # same rule, a different curve
        assert rule.events(steps, other) == StopRule(patience=500, tol=0.01, min_steps=300,
                                                     decays=int(trial % 3)).events(steps, other)


def test_the_default_auto_fit_decays_the_learning_rates_once_then_stops():
    # the default rule (StopRule() inside fit): first plateau -> every learning rate x0.1,
    # second plateau -> stop; the summary names both steps
    from factembed import FactorizedEmbeddings
    assert StopRule().decays == 1 and StopRule().factor == 0.1
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(40, 3)) @ rng.normal(size=(3, 80)) + 0.3 * rng.normal(size=(40, 80))).astype(np.float32)
    fe = FactorizedEmbeddings(gene_dim=4, hidden=(8,), random_state=0, verbose=False).fit(X)
    reason = fe.stop_reason_
    assert "learning rates x0.1 at step" in reason and "stopped at step" in reason, reason
    decay_step = int(reason.split("learning rates x0.1 at step ")[1].split(")")[0].replace(",", ""))
    assert decay_step < fe.history_["step"][-1] < 25_000


def test_the_progress_bar_of_an_auto_fit_shows_no_total_and_the_held_out_mse(capsys):
    from factembed import FactorizedEmbeddings
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(30, 2)) @ rng.normal(size=(2, 60)) + 0.2 * rng.normal(size=(30, 60))).astype(np.float32)
    FactorizedEmbeddings(gene_dim=4, hidden=(8,), random_state=0, verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "held-out=" in err and "trend=" in err and "/150 steps" in err
    assert "25000" not in err and "25,000" not in err         # no total of the step cap, no ETA to it
    FactorizedEmbeddings(gene_dim=4, hidden=(8,), n_steps=40, random_state=0, verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "40/40" in err and "held-out" not in err          # a fixed length keeps its total


def test_anneal_stop_starts_at_the_first_flat_point_or_half_the_budget():
    from factembed.training.heldout import AnnealStop
    steps = list(range(100, 5100, 100))
    plateau = [1.0 / s if s <= 800 else 0.999 / 800 for s in steps]     # flat from step 800
    rule = AnnealStop(patience=300, tol=0.01, min_steps=200, budget=4000)
    # the test of "flat" is StopRule's: its first flat point starts the anneal
    first_flat = StopRule(patience=300, tol=0.01, min_steps=200, decays=0).events(steps, plateau)[0][1]
    assert first_flat == 1100
    assert rule.events(steps, plateau) == [("anneal", 1100), ("stop", 2200)]
    assert [rule.action(steps[:k], plateau[:k]) for k in range(1, len(steps) + 1)].count("anneal") == 1
    assert rule.should_stop(steps[:22], plateau[:22]) and not rule.should_stop(steps[:21], plateau[:21])
    falling = [1.0 / s for s in steps]                  # never flat: half the budget starts it
    assert rule.events(steps, falling) == [("anneal", 2000), ("stop", 4000)]
    assert rule.start(steps[:19], falling[:19]) is None
    assert "half of its budget of 4,000 steps" in rule.reason(steps[:40], falling[:40], True)
    assert "was flat" in rule.reason(steps[:22], plateau[:22], True)
    # the rates: full to the start, then anneal_factor over twice the start
    f = rule.lr_factor(steps[:25], falling[:25])
    assert rule.lr_factor(steps[:19], falling[:19]) is None
    assert [f(s) for s in (2000, 2001, 3960, 4000)] == pytest.approx([1.0, 1.0, 0.04, 0.02])
    # incremental calls (the loop's) agree with a fresh replay on every prefix
    inc = AnnealStop(patience=300, tol=0.01, min_steps=200, budget=4000)
    for k in range(1, len(steps) + 1):
        fresh = AnnealStop(patience=300, tol=0.01, min_steps=200, budget=4000)
        assert inc.events(steps[:k], plateau[:k]) == fresh.events(steps[:k], plateau[:k])
    assert inc.events(steps, falling) == [("anneal", 2000), ("stop", 4000)]   # another curve: rescanned


def test_an_annealed_auto_fit_stops_at_twice_its_start_and_resumes_bitwise(tmp_path):
    rng = np.random.default_rng(2)
    X = (np.tanh(rng.normal(size=(50, 2)) @ rng.normal(size=(2, 40))) + 0.05 * rng.normal(size=(50, 40)))
    X = X.astype(np.float32)
    kw = dict(lr_schedule="anneal", gene_dim=8, hidden=(16,), random_state=0, verbose=False)
    full = FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "a", checkpoint_every=150)
    plan = full.training_plan_
    assert (plan.anneal_budget, plan.val_every) == (660, 15)   # a third of the study's 2,000 steps
    start = int(full.stop_reason_.split("annealed from step ")[1].split(" ")[0].replace(",", ""))
    assert start <= 330 and full.n_steps_ == 2 * start
    with pytest.raises(KeyboardInterrupt):                 # dies inside the anneal
        FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "b", checkpoint_every=15,
                                       kernel=_crashing_after(start + 100))
    resumed = FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "b", checkpoint_every=15, resume=True)
    assert resumed.resumed_from_ > start
    assert resumed.n_steps_ == full.n_steps_ and resumed.stop_reason_ == full.stop_reason_
    for k, v in full.net_.state_dict().items():
        assert torch.equal(v, resumed.net_.state_dict()[k]), k
    constant = FactorizedEmbeddings(**dict(kw, lr_schedule="constant")).fit(X)
    assert "x0.1" in constant.stop_reason_ and not np.array_equal(constant.embedding_, full.embedding_)


def test_an_annealed_auto_fit_ends_at_the_lowest_rates():
    """With lr_schedule="anneal" the reason names the anneal's start, and the steps after it
    ran at the anneal's rates, the last at 1/50; the default stays the constant rule."""
    from factembed.training.recipes import FAST_AUTO_SCHEDULE, resolved_lr_schedule
    from factembed import FEConfig
    assert FAST_AUTO_SCHEDULE == "constant" == resolved_lr_schedule(FEConfig())
    assert resolved_lr_schedule(FEConfig(lr_schedule="anneal")) == "anneal"
    assert resolved_lr_schedule(FEConfig(n_steps=100)) == "constant"          # an explicit length
    assert resolved_lr_schedule(FEConfig(training="reference")) == "constant"  # the study's training
    assert resolved_lr_schedule(FEConfig(training="reference", n_steps="auto")) == "constant"
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(40, 3)) @ rng.normal(size=(3, 80)) + 0.3 * rng.normal(size=(40, 80))).astype(np.float32)
    seen = []
    import factembed.training.loop as loop
    real = loop.set_scheduled_lr

    def spy(opt, factor):
        seen.append(factor)
        real(opt, factor)
    try:
        loop.set_scheduled_lr = spy
        fe = FactorizedEmbeddings(gene_dim=4, hidden=(8,), random_state=0, verbose=False,
                                  lr_schedule="anneal").fit(X)
    finally:
        loop.set_scheduled_lr = real
    start = int(fe.stop_reason_.split("annealed from step ")[1].split(" ")[0].replace(",", ""))
    assert fe.n_steps_ == 2 * start and f"stopped at step {2 * start:,}" in fe.stop_reason_
    assert len(seen) == start and seen[0] == 1.0 and seen[-1] == pytest.approx(0.02)   # the anneal's steps
