"""The chunked training loop (factembed.training.step) against a frozen copy of the loop of one
step at a time (tests/_reference_train.py): bitwise equal on the CPU, whatever the chunk
size and the feed, with both recipes (every gene / a gene walk), held-out entries with
the stop rule, missing values, checkpoints and resume, and a divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _reference_train import reference_train
from factembed.training.checkpoint import Checkpointer
from factembed.engine.network import FactorizedEmbeddingNet
from factembed.training.step import CHUNK_STEPS, chunk_schedule, graphs_wanted, make_feed
from factembed.training.loop import BatchPlan, BatchSampler, GeneWalk, TensorRows, make_optimizer, train
from factembed.training.heldout import StopRule, ValidationSet

CPU = torch.device("cpu")


def _matrix(n=48, m=36, missing=False, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 2))
    X = (np.tanh(Z @ rng.normal(size=(2, m))) + 0.1 * rng.normal(size=(n, m))).astype(np.float32)
    if missing:
        X[rng.random((n, m)) < 0.08] = np.nan
    return torch.from_numpy(X)


def _run(loop, X, *, n_steps, walk=None, validation=False, missing=False, lr=1e-2, stop=False,
         checkpointer=None, state=None, callback=None, **kw):
    """A fresh, identically seeded run of ``loop`` (``train`` or ``reference_train``)."""
    n, m = X.shape
    net = FactorizedEmbeddingNet(n, m, 2, 6, (12, 6), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(3)
    rows = BatchSampler(n, 8, gen)
    sampler = BatchPlan(rows, GeneWalk(m, walk, torch.Generator().manual_seed(4)) if walk else None)
    opt = make_optimizer(net, lr, 1e-4, CPU, sample_lr=3 * lr)
    start, history = 0, None
    if state is not None:
        from factembed.training.loop import History
        net.load_state_dict(state.net_state)
        opt.load_state_dict(state.optimizer_state)
        sampler.load_state_dict(state.sampler_state)
        start, history = state.step, History(**state.history)
    val = ValidationSet(TensorRows(X), seed=5, fraction=0.05, every=10) if validation else None
    rule = StopRule(patience=30, min_steps=20, tol=0.3) if stop else None
    hist, opt, sampler = loop(net, X, n_steps=n_steps, lr=lr, l2=1e-4, batch_samples=8, generator=gen,
                              device=CPU, progress=False, sampler=sampler, optimizer=opt, validation=val,
                              stop_rule=rule, missing=missing, checkpointer=checkpointer, start_step=start,
                              history=history, callback=callback, workers=2, **kw)
    return net, opt, sampler, hist


def _same(a, b, masked=False):
    """Bitwise the same run: history, parameters, Adam's state, the sampler's state.
    ``masked`` (held-out or missing entries): the frozen loop's batch Pearson r pooled the
    masked entries' predictions (the bug of issue 32), so r is compared only without masks;
    tests/training/test_batch_stats.py checks the masked r against an independent computation."""
    (net_a, opt_a, s_a, h_a), (net_b, opt_b, s_b, h_b) = a, b
    assert h_a.step == h_b.step
    assert h_a.loss == h_b.loss
    if not masked:
        assert np.array_equal(h_a.pearson_r, h_b.pearson_r, equal_nan=True)
    assert h_a.val_step == h_b.val_step and h_a.val_loss == h_b.val_loss
    assert h_a.stop_reason == h_b.stop_reason
    for (name, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(p, q), name
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
    for k in sa["state"]:
        for key in sa["state"][k]:
            assert torch.equal(torch.as_tensor(sa["state"][k][key]), torch.as_tensor(sb["state"][k][key])), (k, key)
    for (k, v), w in zip(s_a.state_dict().items(), s_b.state_dict().values()):
        assert (torch.equal(v, w) if torch.is_tensor(v) else v == w), k


def test_chunk_schedule_ends_at_every_boundary():
    assert list(chunk_schedule(0, 37, 16, [])) == [(1, 16), (17, 32), (33, 37)]
    assert list(chunk_schedule(0, 37, 16, [10])) == [(1, 10), (11, 20), (21, 30), (31, 37)]
    assert list(chunk_schedule(5, 30, 100, [10, 25, 0])) == [(6, 10), (11, 20), (21, 25), (26, 30)]
    assert list(chunk_schedule(20, 20, 16, [])) == []
    steps = [s for a, b in chunk_schedule(3, 101, 7, [9, 13]) for s in range(a, b + 1)]
    assert steps == list(range(4, 102))           # every step once, in order


@pytest.mark.parametrize("feed", ["lazy", "resident", "tiles"])
@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize("walk", [None, 10])
def test_chunked_loop_is_bitwise_the_one_step_loop(feed, chunk, walk):
    X = _matrix()
    want = _run(reference_train, X, n_steps=53, walk=walk)
    got = _run(train, X, n_steps=53, walk=walk, feed=feed, chunk_steps=chunk)
    _same(want, got)


@pytest.mark.parametrize("feed", ["lazy", "resident", "tiles"])
@pytest.mark.parametrize("walk", [None, 10])
def test_chunked_loop_with_validation_decay_and_stop(feed, walk):
    X = _matrix()
    want = _run(reference_train, X, n_steps=400, walk=walk, validation=True, stop=True, lr=3e-2)
    got = _run(train, X, n_steps=400, walk=walk, validation=True, stop=True, lr=3e-2, feed=feed, chunk_steps=16)
    assert want[3].step[-1] < 400                 # the rule stopped it, after a decay:
    assert want[1].param_groups[1]["lr"] == pytest.approx(3e-3)
    _same(want, got, masked=True)


@pytest.mark.parametrize("feed", ["lazy", "resident", "tiles"])
def test_chunked_loop_with_missing_values(feed):
    X = _matrix(missing=True)
    want = _run(reference_train, X, n_steps=45, walk=10, missing=True, validation=True)
    got = _run(train, X, n_steps=45, walk=10, missing=True, validation=True, feed=feed, chunk_steps=8)
    assert all(math.isfinite(v) for v in got[3].loss)
    _same(want, got, masked=True)


def test_callback_sees_every_step_in_order():
    X = _matrix()
    seen_a, seen_b = [], []
    _run(reference_train, X, n_steps=29, callback=lambda *a: seen_a.append(a))
    _run(train, X, n_steps=29, feed="tiles", chunk_steps=5, callback=lambda *a: seen_b.append(a))
    assert [s for s, _, _ in seen_b] == list(range(1, 30))
    assert seen_a == seen_b


def test_checkpoints_and_resume_are_those_of_the_one_step_loop(tmp_path):
    X = _matrix()
    ref = Checkpointer(tmp_path / "ref", every=10, meta={"t": 1})
    new = Checkpointer(tmp_path / "new", every=10, meta={"t": 1})
    want = _run(reference_train, X, n_steps=37, walk=10, validation=True, checkpointer=ref)
    got = _run(train, X, n_steps=37, walk=10, validation=True, checkpointer=new, chunk_steps=16, feed="resident")
    _same(want, got, masked=True)
    a, b = ref.latest(), new.latest()
    assert a.step == b.step == 30
    for k in a.net_state:
        assert torch.equal(a.net_state[k], b.net_state[k])
    assert a.history["loss"] == b.history["loss"] and a.history["val_loss"] == b.history["val_loss"]
    # resume the chunked loop from its step-20 checkpoint: the uninterrupted reference run
    resumed = _run(train, X, n_steps=37, walk=10, validation=True, state=new.load(20), chunk_steps=7)
    _same(want, resumed, masked=True)
    _same(got, resumed)                           # and bitwise the chunked loop's own run, r included


@pytest.mark.parametrize("feed", ["lazy", "tiles"])
def test_a_divergence_is_reported_at_the_same_step(feed):
    X = _matrix() * 1e20          # squares overflow float32 at once
    with pytest.raises(FloatingPointError) as want:
        _run(reference_train, X, n_steps=40)
    with pytest.raises(FloatingPointError) as got:
        _run(train, X, n_steps=40, feed=feed, chunk_steps=16)
    assert str(want.value) == str(got.value)
    assert "diverged at step" in str(got.value)


def test_feed_choice_and_graph_switch():
    X = _matrix()
    sampler = BatchPlan(BatchSampler(48, 8, torch.Generator().manual_seed(0)))
    assert type(make_feed(TensorRows(X), sampler, CPU)).__name__ == "LazyFeed"
    assert type(make_feed(TensorRows(X), sampler, CPU, feed="tiles")).__name__ == "TileFeed"
    with pytest.raises(ValueError, match="feed must be"):
        make_feed(TensorRows(X), sampler, CPU, feed="nope")
    assert not graphs_wanted(CPU, None, None)
    assert not graphs_wanted(torch.device("cuda"), lambda: None, None)   # data-parallel: eager
    assert graphs_wanted(torch.device("cuda"), None, None)
    assert CHUNK_STEPS["cpu"] == 16


def test_a_sparse_source_feeds_tiles_and_trains_bitwise():
    """A CSR matrix's rows (``CsrRows``, whose ``.X`` is no tensor) never go to the
    resident feed; on CUDA they feed tiles; the tile feed from it is the one-step loop."""
    import scipy.sparse as sp

    from factembed.estimator.inputs import CsrRows
    X = _matrix()
    X[X < 0.3] = 0.0
    rows = CsrRows(sp.csr_matrix(X.numpy()))
    sampler = BatchPlan(BatchSampler(48, 8, torch.Generator().manual_seed(0)))
    assert type(make_feed(rows, sampler, torch.device("cuda"))).__name__ == "TileFeed"   # no CUDA call made
    with pytest.raises(ValueError, match="dense tensor"):
        make_feed(rows, sampler, CPU, feed="resident")
    want = _run(reference_train, X, n_steps=21, walk=10)
    got = _run(train, rows, n_steps=21, walk=10, feed="tiles", chunk_steps=8)
    _same(want, got)


# -- GraphedStep's logic on the CPU: its CUDA calls replaced by a "graph" that replays by
# running the recorded body again (what a correct CUDA graph does, ops being deterministic) --

class _ReplayByRunning:
    def __init__(self, body, optimizer, mode, owner):
        self.body, self.optimizer, self.mode = body, optimizer, mode
        if mode == "runs-at-capture":      # a broken capture that executes the step
            body()
        if mode == "no-op":                # a graph that does nothing: its output buffer only
            owner.s_record = torch.zeros(7)

    def replay(self):
        if self.mode == "no-op":
            return
        self.optimizer.zero_grad(set_to_none=True)   # a graph writes fresh gradients each replay
        self.body()
        if self.mode == "off-by-a-bit":
            with torch.no_grad():
                for p in self.optimizer.param_groups[0]["params"]:
                    p.add_(1e-3)


def _cpu_graphed(monkeypatch, mode="faithful"):
    import contextlib

    import factembed.training.step as step_mod
    made = []

    class CpuGraphed(step_mod.GraphedStep):
        def _record(self, body):
            return _ReplayByRunning(body, self.eager.optimizer, mode, self)

        def _warmup_step(self, batch):
            return self.eager(batch)

        def _device_scope(self):
            return contextlib.nullcontext()

        def _synchronize(self):
            pass

    def make_step(net, fused, optimizer, *, device, masked, before_step=None, graphs=None):
        made.append(CpuGraphed(step_mod.EagerStep(net, fused, optimizer, masked, before_step)))
        return made[-1]
    monkeypatch.setattr(step_mod, "make_step", make_step)
    return made


@pytest.mark.parametrize("walk", [None, 10])
def test_graphed_step_logic_gives_the_one_step_loop(monkeypatch, walk):
    """Warm-up, capture, the capture check, replays through the static buffers and the
    second capture after the decay: with a faithful graph, bitwise the reference loop."""
    made = _cpu_graphed(monkeypatch)
    X = _matrix()
    want = _run(reference_train, X, n_steps=400, walk=walk, validation=True, stop=True, lr=3e-2)
    got = _run(train, X, n_steps=400, walk=walk, validation=True, stop=True, lr=3e-2, feed="resident", chunk_steps=16)
    (g,) = made
    assert g.failed is None and g.captures == 2           # the first capture, then after x0.1
    assert not any(grp["capturable"] for grp in got[1].param_groups)
    _same(want, got, masked=True)
    eager = _run(train, X, n_steps=400, walk=walk, validation=True, stop=True, lr=3e-2, feed="resident",
                 chunk_steps=16, graphs=False)
    _same(eager, got)                                     # r included: the eager chunked loop's


@pytest.mark.parametrize("mode,why", [("off-by-a-bit", "differs from the eager one"),
                                      ("no-op", "changed nothing"),
                                      ("runs-at-capture", "ran the step instead of recording it")])
def test_a_bad_capture_falls_back_to_eager_steps(monkeypatch, mode, why):
    made = _cpu_graphed(monkeypatch, mode)
    X = _matrix()
    want = _run(reference_train, X, n_steps=40, walk=10)
    with pytest.warns(RuntimeWarning, match=why):
        got = _run(train, X, n_steps=40, walk=10, feed="tiles", chunk_steps=16)
    (g,) = made
    assert g.failed and g.captures == 1
    _same(want, got)        # the check's state was restored: the run is the eager one
