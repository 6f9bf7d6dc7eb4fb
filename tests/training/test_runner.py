"""The training runner: checkpoints, resume (in-process and after SIGKILL), divergence guard."""
import json

import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file

from factembed import FactorizedEmbeddings, FEInputError
from factembed.training.checkpoint import Checkpointer

KW = dict(gene_dim=8, hidden=(16, 8), random_state=0, verbose=False, device="cpu")


def test_resume_in_process_is_bitwise_identical(planted_data, tmp_path):
    X, _ = planted_data
    full = FactorizedEmbeddings(n_steps=120, **KW).fit(X)
    part = FactorizedEmbeddings(n_steps=80, **KW).fit(X, checkpoint_dir=tmp_path, checkpoint_every=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000000040.json", "step-000000040.safetensors", "step-000000080.json", "step-000000080.safetensors"]
    resumed = FactorizedEmbeddings(n_steps=120, **KW).fit(X, checkpoint_dir=tmp_path, checkpoint_every=40,
                                                          resume=True)
    for k, v in full.net_.state_dict().items():
        assert np.array_equal(v.numpy(), resumed.net_.state_dict()[k].numpy()), k
    assert resumed.history_["loss"] == full.history_["loss"]
    assert resumed.history_["step"] == list(range(1, 121))
    assert not np.array_equal(part.embedding_, full.embedding_)


def test_damaged_newest_checkpoint_falls_back_to_previous(planted_data, tmp_path):
    X, _ = planted_data
    FactorizedEmbeddings(n_steps=60, **KW).fit(X, checkpoint_dir=tmp_path, checkpoint_every=30)
    newest = tmp_path / "step-000000060.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    ck = Checkpointer(tmp_path)
    with pytest.warns(UserWarning, match="damaged checkpoint"):
        state = ck.latest()
    assert state.step == 30


def test_checkpoint_of_another_run_is_refused(planted_data, tmp_path):
    X, _ = planted_data
    FactorizedEmbeddings(n_steps=20, **KW).fit(X, checkpoint_dir=tmp_path, checkpoint_every=10)
    with pytest.raises(FEInputError, match="different run"):
        FactorizedEmbeddings(n_steps=40, **{**KW, "gene_dim": 9}).fit(
            X, checkpoint_dir=tmp_path, checkpoint_every=10, resume=True)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        FactorizedEmbeddings(n_steps=40, **KW).fit(X, resume=True)


def test_divergence_keeps_last_good_checkpoint(planted_data, tmp_path):
    X, _ = planted_data
    X = X.copy()
    with pytest.raises(FloatingPointError, match="diverged at step"):
        FactorizedEmbeddings(n_steps=200, lr=1e5, **KW).fit(X, checkpoint_dir=tmp_path, checkpoint_every=1)
    # nothing non-finite was ever written: every checkpoint left loads and is finite
    ck = Checkpointer(tmp_path)
    state = ck.latest()
    assert state is None or all(np.isfinite(v.numpy()).all() for v in state.net_state.values())


def test_divergence_retry_lowers_the_learning_rate(planted_data):
    X, _ = planted_data
    fe = FactorizedEmbeddings(n_steps=100, lr=1e5, **KW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fe.fit(X, divergence_retries=4)
    retries = [w for w in caught if "retrying from step" in str(w.message)]
    assert 1 <= len(retries) <= 4
    assert fe.lr_ < 1e5 and np.isfinite(fe.history_["loss"]).all()
    assert fe.history_["step"] == list(range(1, 101))


SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from factembed import FactorizedEmbeddings
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(200, 3)) @ rng.normal(size=(3, 2000))).astype(np.float32)
    out, ckpt, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    fe = FactorizedEmbeddings(gene_dim=32, hidden=(64, 32), n_steps=1500, random_state=7, verbose=False,
                              device="cpu")
    fe.fit(X, checkpoint_dir=None if ckpt == "-" else ckpt, checkpoint_every=50, resume=resume)
    fe.save(out)
""")


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], **kw)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    victim = _run([tmp_path / "killed", ckpt, 0])
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(p.name[5:14]) for p in ckpt.glob("step-*.json")] if ckpt.exists() else []
        if steps and max(steps) >= 300:
            break
        if victim.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists()
    killed_at = max(int(p.name[5:14]) for p in ckpt.glob("step-*.json"))
    assert killed_at < 1500
    resumed = _run([tmp_path / "resumed", ckpt, 1])
    straight = _run([tmp_path / "straight", "-", 0])
    assert resumed.wait(timeout=300) == 0 and straight.wait(timeout=300) == 0
    a = load_file(tmp_path / "resumed" / "weights.safetensors")
    b = load_file(tmp_path / "straight" / "weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k          # bitwise, same seed, same threads, CPU
    ha = json.loads((tmp_path / "resumed" / "model.json").read_text())["history"]
    hb = json.loads((tmp_path / "straight" / "model.json").read_text())["history"]
    assert ha["loss"] == hb["loss"]


def test_an_annealed_run_resumes_bitwise_and_refuses_another_length(planted_data, tmp_path):
    """A run of lr_schedule="anneal" killed in its descent resumes at the rates of its step."""
    X, _ = planted_data
    kw = dict(KW, n_steps=120, lr_schedule="anneal")
    full = FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "full", checkpoint_every=40)
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for p in (tmp_path / "cut").glob("step-000000120.*"):
        p.unlink()                                        # the run "died" after its step 80
    resumed = FactorizedEmbeddings(**kw).fit(X, checkpoint_dir=tmp_path / "cut", checkpoint_every=40,
                                            resume=True)
    assert resumed.resumed_from_ == 80
    for k, v in full.net_.state_dict().items():
        assert np.array_equal(v.numpy(), resumed.net_.state_dict()[k].numpy()), k
    assert resumed.history_["loss"] == full.history_["loss"]
    constant = FactorizedEmbeddings(**dict(KW, n_steps=120)).fit(X)
    assert not np.array_equal(constant.embedding_, full.embedding_)   # the schedule did change the run
    with pytest.raises(FEInputError, match="different run"):          # its rates follow its length
        FactorizedEmbeddings(**dict(kw, n_steps=200)).fit(X, checkpoint_dir=tmp_path / "cut",
                                                          checkpoint_every=40, resume=True)


def test_checkpoint_meta_tells_annealed_runs_apart_and_keeps_constant_runs_as_before():
    from factembed import FEConfig
    from factembed.training.runner import checkpoint_meta
    old = checkpoint_meta(FEConfig(n_steps=30), 10, 20)["config"]
    assert "lr_schedule" not in old and "n_steps" not in old          # as checkpoints before the schedule
    assert checkpoint_meta(FEConfig(n_steps=30, lr_schedule="constant"), 10, 20)["config"] == old
    fixed = checkpoint_meta(FEConfig(training="reference", lr_schedule="anneal"), 10, 20)["config"]
    auto = checkpoint_meta(FEConfig(training="reference", lr_schedule="anneal", n_steps="auto"), 10, 20)["config"]
    assert fixed["lr_schedule"] == auto["lr_schedule"] == "anneal" and fixed != auto   # 2,000 steps vs auto
    assert checkpoint_meta(FEConfig(lr_schedule="anneal"), 10, 20)["config"]["n_steps"] == "auto"
