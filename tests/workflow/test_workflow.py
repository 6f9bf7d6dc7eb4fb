"""The fit workflow: in-memory, backed and data-parallel fits set up in one place.

Each path checkpoints and resumes the same way, validates its input before anything is
launched, and preprocesses the same way.  Most tests call :mod:`factembed.workflow`
in-process; the kill -9 tests run the command line in a subprocess of their own session
(so the whole process group, torchrun's ranks included, can be killed).
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import planted
from factembed.cli import main
from factembed.workflow import (CheckpointOptions, FitRequest, PreprocessingOptions, ReadOptions, fit,
                                prepare_backed, prepare_in_memory)
from factembed import FEConfig

TINY = dict(gene_dim=8, hidden=(16, 8), random_state=0, verbose=False, device="cpu")
FAST = ["--gene-dim", "8", "--hidden", "16,8", "--seed", "0", "--quiet"]


def _raw_matrix(n=120, m=80, seed=0):
    X, labels = planted(n=n, m=m, seed=seed)
    return np.expm1(np.abs(X)).astype(np.float32), labels


def _write_h5(path, X, *, biotypes=None, labels=None):
    with h5py.File(path, "w") as f:
        f["data"] = X
        f["samples"] = np.array([f"s{i}" for i in range(len(X))]).astype("S")
        f["genes"] = np.array([f"g{j}" for j in range(X.shape[1])]).astype("S")
        if biotypes is not None:
            f["biotypes"] = np.asarray(biotypes).astype("S")
        if labels is not None:
            f["labels"] = np.asarray([f"c{v}" for v in labels]).astype("S")


def _cli_process(args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "factembed", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _kill_when(proc, ready, timeout=180):
    """SIGKILL ``proc``'s whole process group once ``ready()`` is true."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed:\n" + proc.stderr.read()[-2000:])
        time.sleep(0.05)
    else:
        pytest.fail("no checkpoint appeared in time")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _steps(directory):
    return sorted(int(p.name[5:14]) for p in directory.glob("step-*.json")) if directory.exists() else []


# --------------------------------------------------------------------------------------
# in process
# --------------------------------------------------------------------------------------

def _has_bokeh() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


def test_in_memory_fit_in_process(tmp_path):
    X, labels = _raw_matrix()
    _write_h5(tmp_path / "x.h5", X, labels=labels)
    req = FitRequest(data=str(tmp_path / "x.h5"), output=str(tmp_path / "m"), config=FEConfig(n_steps=40, **TINY),
                     checkpoints=CheckpointOptions(every=20))
    res = fit(req, echo=lambda msg: None)
    assert res.mode == "memory" and res.resumed_from is None
    assert res.estimator.embedding_.shape == (120, 2) and res.n_genes == 80
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "checkpoints", "embedding.csv", *(["embedding.html"] if _has_bokeh() else []), "embedding.png",
        "history.csv", "model.json", "training.png", "weights.safetensors"]
    assert _steps(tmp_path / "m" / "checkpoints") == [20, 40]
    res2 = fit(FitRequest(**{**req.__dict__, "checkpoints": CheckpointOptions(every=20, resume=True)}),
               echo=lambda msg: None)
    assert res2.resumed_from == 40            # already finished: says so, trains nothing more


def test_backed_selects_the_same_genes_as_in_memory(tmp_path):
    """Backed fits filter genes from statistics gathered over row blocks: protein-coding,
    constant and top-k-variable genes as in memory, with the same training means."""
    X, _ = _raw_matrix()
    X[:, 3] = 7.0                                   # a constant gene
    X[:, 10] = 0.0                                  # another
    biotypes = np.where(np.arange(80) % 7 == 0, "lncRNA", "protein_coding")
    _write_h5(tmp_path / "x.h5", X, biotypes=biotypes)
    for top in (None, 25):
        req = FitRequest(data=str(tmp_path / "x.h5"), output=str(tmp_path / "m"), backed=True,
                         preprocessing=PreprocessingOptions(top_variable=top))
        mem, _ = prepare_in_memory(req)
        source, backed, columns, _ = prepare_backed(req)
        source.close()
        np.testing.assert_array_equal(backed.genes, mem.genes)
        assert 3 not in columns and 10 not in columns and not any(c % 7 == 0 for c in columns)
        assert len(backed.genes) == (25 if top else 80 - 12 - 2)     # 12 non-coding, 2 constant
        np.testing.assert_allclose(backed.means, mem.means, rtol=1e-6)
        np.testing.assert_allclose(backed.variances, mem.variances, rtol=1e-5)


def test_backed_fit_trains_on_the_kept_genes_only(tmp_path):
    X, _ = _raw_matrix()
    X[:, 5] = 0.0
    _write_h5(tmp_path / "x.h5", X)
    res = fit(FitRequest(data=str(tmp_path / "x.h5"), output=str(tmp_path / "m"), backed=True,
                         config=FEConfig(n_steps=30, **TINY)), echo=lambda msg: None)
    assert res.mode == "backed" and res.n_genes == 79
    assert "g5" not in list(res.estimator.feature_names_in_)
    # the kept genes are streamed in file order, log10(x + 1) per block
    from factembed.sources import H5Source
    with H5Source(tmp_path / "x.h5", log10p1=True) as src:
        kept = src.select_genes([j for j in range(80) if j != 5])
        np.testing.assert_allclose(kept.read_rows(0, 4), np.log10(np.delete(X[:4], 5, axis=1).astype(np.float64) + 1),
                                   rtol=1e-6, atol=1e-7)


def test_backed_constant_samples_are_named_in_a_warning(tmp_path):
    X, _ = _raw_matrix()
    X[7] = 0.0
    np.save(tmp_path / "x.npy", X)
    req = FitRequest(data=str(tmp_path / "x.npy"), output=str(tmp_path / "m"), backed=True)
    with pytest.warns(UserWarning, match=r"1 sample\(s\) have a constant .*backed training keeps them \(first: row 7\)"):
        prepare_backed(req)[0].close()


def test_backed_cli_writes_checkpoints(tmp_path):
    """``fit --backed --checkpoint-every`` checkpoints (it used to train to the end and write none)."""
    X, _ = _raw_matrix()
    np.save(tmp_path / "x.npy", X)
    assert main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m"), "--backed", "--steps", "60",
                 "--checkpoint-every", "30", "--keep-checkpoints", *FAST]) == 0
    assert _steps(tmp_path / "m" / "checkpoints") == [30, 60]


def test_distributed_bad_input_is_one_line_like_in_memory(tmp_path, capfd):
    """Checked before torchrun is launched: the same one-line error and exit status."""
    X, _ = _raw_matrix()
    X[4, 6] = -1.0                                   # negative without --no-log
    np.save(tmp_path / "x.npy", X)
    errors = []
    for extra in ([], ["--distributed", "2"], ["--distributed", "2", "--backed"], ["--backed"]):
        rc = main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m"), "--steps", "5", *FAST, *extra])
        err = capfd.readouterr().err
        assert rc == 1, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        bad = [ln for ln in lines if ln.startswith("factembed: error:")]
        assert len(bad) == 1 and lines[-1] == bad[0], err       # one error line, last; progress lines before
        assert "Traceback" not in err and "ChildFailedError" not in err and "torchrun" not in err
        errors.append(bad[0])
    assert errors[0] == errors[1], errors                  # in memory == distributed
    assert errors[2] == errors[3], errors                  # backed == distributed backed
    for e in errors:
        assert "row 4" in e or "'sample_4'" in e or "sample_4" in e, e
    assert not (tmp_path / "m" / "model.json").exists()


# --------------------------------------------------------------------------------------
# data-parallel (torchrun, 2 local processes)
# --------------------------------------------------------------------------------------

def test_distributed_leaves_out_constant_samples_with_the_same_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    X, _ = _raw_matrix(n=60, m=40)
    X[9] = 0.0
    _write_h5(tmp_path / "x.h5", X)
    req = FitRequest(data=str(tmp_path / "x.h5"), output=str(tmp_path / "m"), processes=2,
                     config=FEConfig(n_steps=6, **TINY))
    with pytest.warns(UserWarning, match=r"1 sample\(s\) have a constant .*left out of training \(first: s9\)"):
        res = fit(req, echo=lambda msg: None)
    assert res.mode == "distributed" and res.estimator.embedding_.shape == (59, 2)
    assert "s9" not in list(res.estimator.sample_names_)
    assert not (tmp_path / "m" / ".factembed-prepared").exists()


@pytest.mark.parametrize("backed", [False, True])
def test_distributed_kill9_then_resume_holds_every_sample_once(tmp_path, backed, capfd, monkeypatch):
    X, _ = _raw_matrix(n=64, m=40)
    _write_h5(tmp_path / "x.h5", X)
    out = tmp_path / "m"
    args = ["fit", tmp_path / "x.h5", "-o", out, "--distributed", "2", "--steps", "1500", "--checkpoint-every",
            "50", *FAST] + (["--backed"] if backed else [])
    victim = _cli_process(args)
    ck = out / "checkpoints"
    _kill_when(victim, lambda: all(_steps(ck / f"rank-{r}-of-2") and max(_steps(ck / f"rank-{r}-of-2")) >= 100
                                   for r in range(2)))
    assert not (out / "model.json").exists()
    common = max(set(_steps(ck / "rank-0-of-2")) & set(_steps(ck / "rank-1-of-2")))
    assert 100 <= common < 1500
    capfd.readouterr()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main([str(a) for a in args] + ["--resume"]) == 0
    printed = capfd.readouterr().out
    assert f"resumed from the checkpoint of step {common:,}" in printed, printed
    from factembed import FactorizedEmbeddings
    fe = FactorizedEmbeddings.load(out)
    assert fe.embedding_.shape == (64, 2) and fe.n_steps_ == 1500
    assert list(fe.sample_names_) == [f"s{i}" for i in range(64)]        # every sample once, in order
    assert fe.history_["step"] == list(range(1, 1501))
    assert fe.extra_["distributed"]["resumed_from"] >= common


def test_backed_kill9_then_resume_is_bitwise_the_uninterrupted_fit(tmp_path):
    X, _ = _raw_matrix(n=200, m=120)
    np.save(tmp_path / "x.npy", X)
    base = ["fit", tmp_path / "x.npy", "--backed", "--steps", "1500", "--checkpoint-every", "50", *FAST]
    victim = _cli_process(base + ["-o", tmp_path / "killed"])
    ck = tmp_path / "killed" / "checkpoints"
    _kill_when(victim, lambda: bool(_steps(ck)) and max(_steps(ck)) >= 200)
    killed_at = max(_steps(ck))
    assert killed_at < 1500 and not (tmp_path / "killed" / "model.json").exists()
    resumed = _cli_process(base + ["-o", tmp_path / "killed", "--resume"])
    straight = _cli_process(base + ["-o", tmp_path / "straight"])
    out_r, err_r = resumed.communicate(timeout=600)
    out_s, err_s = straight.communicate(timeout=600)
    assert resumed.returncode == 0 and straight.returncode == 0, err_r[-2000:] + err_s[-2000:]
    assert f"resumed from the checkpoint of step {killed_at:,}" in out_r, out_r
    assert "resumed" not in out_s
    a = load_file(tmp_path / "killed" / "weights.safetensors")
    b = load_file(tmp_path / "straight" / "weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k                 # bitwise on CPU, same seed
    ha = json.loads((tmp_path / "killed" / "model.json").read_text())["history"]
    hb = json.loads((tmp_path / "straight" / "model.json").read_text())["history"]
    assert ha["loss"] == hb["loss"]
