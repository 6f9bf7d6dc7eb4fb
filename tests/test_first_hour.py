"""What a new user meets in the first hour with the command line: errors that name
flags, the label column remembered, genes-as-rows warned about, seeds, convergence
notes, existing models not overwritten, one-line warnings, gene neighbours."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from factembed.cli.commands import build_parser, main
from factembed.io import ExpressionData, write_expression

FAST = ["--steps", "60", "--gene-dim", "8", "--hidden", "16,8", "--infer-steps", "10", "--seed", "0", "--quiet"]


def _raw(n=60, m=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 5.0, (n, m)).astype(np.float32)
    return X, np.array([f"s{i}" for i in range(n)]), np.array([f"g{j}" for j in range(m)])


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "factembed", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


@pytest.fixture()
def table(tmp_path):
    """A CSV with a time column, as a user would write it."""
    X, samples, genes = _raw()
    df = pd.DataFrame(X, index=pd.Index(samples, name="sample"), columns=genes)
    df.insert(3, "time", [f"{24 * (i % 4)}h" for i in range(len(df))])
    df.to_csv(tmp_path / "train.csv")
    df.iloc[:12].to_csv(tmp_path / "new.csv")
    return tmp_path


# -- 1. errors name flags -----------------------------------------------------------------

def test_errors_name_the_flags_not_python_spellings(table, capsys):
    d = table
    X, samples, genes = _raw()
    X[4, 7] = -1.0
    write_expression(d / "neg.csv", ExpressionData(X=X, samples=samples, genes=genes))
    assert main(["fit", str(d / "neg.csv"), "-o", str(d / "m0"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "--no-log" in err and "Preprocessing(" not in err and "'s4'" in err and "'g7'" in err

    assert main(["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "tme", *FAST]) == 1
    err = capsys.readouterr().err
    assert "no column 'tme'" in err and "'time'" in err        # the columns that could be meant

    assert main(["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "time", *FAST]) == 0
    X2, s2, g2 = _raw(5, 40)
    write_expression(d / "part.csv", ExpressionData(X=X2[:, 2:], samples=s2, genes=g2[2:]))
    capsys.readouterr()
    assert main(["transform", str(d / "m"), str(d / "part.csv"), "-o", str(d / "o.csv"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--fill-missing" in err and "fill_missing=True" not in err


def test_python_callers_keep_the_python_spelling():
    from factembed.preprocessing import Preprocessing
    X, samples, genes = _raw()
    X[1, 2] = -3
    with pytest.raises(ValueError, match=r"Preprocessing\(log10p1=False\)") as info:
        Preprocessing().fit(ExpressionData(X=X, samples=samples, genes=genes))
    assert "--no-log" in info.value.cli_message()


# -- 2. the label column is remembered -------------------------------------------------------

def test_transform_knows_the_label_column_it_was_fitted_with(table):
    d = table
    assert main(["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "time", *FAST]) == 0
    assert main(["transform", str(d / "m"), str(d / "new.csv"), "-o", str(d / "new.csv.out.csv"),
                 "--plot", str(d / "new.png"), "--quiet"]) == 0
    from factembed import FactorizedEmbeddings
    extra = FactorizedEmbeddings.load(d / "m").extra_
    assert extra["label_column"] == "time" and 0 <= extra["knn_accuracy"] <= 1 and extra["knn_chance"] == 0.25
    out = pd.read_csv(d / "new.csv.out.csv")
    assert list(out.columns) == ["sample", "label", "FE1", "FE2"] and out["label"].iloc[1] == "24h"
    X, samples, genes = _raw(8, 40)                    # a new file without that column still works
    write_expression(d / "plain.csv", ExpressionData(X=X, samples=samples, genes=genes))
    assert main(["transform", str(d / "m"), str(d / "plain.csv"), "-o", str(d / "p.csv"), "--quiet"]) == 0


# -- 3. genes as rows -------------------------------------------------------------------------

def test_genes_as_rows_are_warned_about_naming_the_flag(tmp_path):
    X, samples, _ = _raw(300, 30)
    genes_as_rows = [f"ENSG{100000 + i:011d}" for i in range(300)]
    write_expression(tmp_path / "t.csv", ExpressionData(X=X, samples=genes_as_rows, genes=samples[:30]))
    proc = _run("fit", tmp_path / "t.csv", "-o", tmp_path / "m", *FAST)
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and warn[0].startswith("factembed: warning: ") and "--samples-as-columns" in warn[0]
    assert "gene ids" in warn[0] and "UserWarning" not in proc.stderr and ".py:" not in proc.stderr
    proc = _run("fit", tmp_path / "t.csv", "-o", tmp_path / "m2", "--samples-as-columns", *FAST)
    assert proc.returncode == 0 and "warning" not in proc.stderr   # said explicitly: no warning


def test_orientation_rules():
    from factembed.io.orientation import orientation_problem
    assert orientation_problem(["TP53", "ACTB", "x1"], ["s1", "s2"], (3, 2)) is not None
    assert orientation_problem(["c1", "c2"], ["Actb", "Gapdh"], (2, 2)) is None
    assert "only 200 genes for 1,000 samples" in orientation_problem(None, None, (1000, 200))
    assert orientation_problem(None, None, (80, 60)) is None
    assert "sample ids" in orientation_problem(["a", "b"], ["TCGA-AB-1234-01", "TCGA-AB-1235-01"], (2, 2))


# -- 4. seeds and convergence -----------------------------------------------------------------

def test_demo_is_seeded_and_fit_prints_the_seed_it_drew(table, capsys):
    args = build_parser().parse_args(["demo"])
    assert args.random_state == 0
    assert build_parser().parse_args(["fit", "x.csv", "-o", "m"]).random_state is None
    d = table
    no_seed = [a for a in FAST if a not in ("--seed", "0")]
    assert main(["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "time", *no_seed]) == 0
    out = capsys.readouterr().out
    seed = int(out.split("random seed ")[1].split()[0])
    from factembed import FactorizedEmbeddings
    assert FactorizedEmbeddings.load(d / "m").random_state == seed          # recorded in the model
    assert f"--seed {seed} repeats it" in out


def test_unconverged_fit_is_said_so():
    from factembed.training.runner import training_summary
    from factembed.workflow import convergence_note
    rng = np.random.default_rng(0)
    steps = np.arange(1, 3001)
    falling = {"step": steps, "loss": 0.5 * np.exp(-steps / 3000) + 0.01 * rng.normal(size=3000),
               "pearson_r": 0.5 + 0.1 * steps / 3000 + 0.01 * rng.normal(size=3000)}
    flat = {"step": steps, "loss": 0.3 + 0.01 * rng.normal(size=3000), "pearson_r": 0.6 + 0.01 * rng.normal(size=3000)}
    assert training_summary(falling)["still_improving"] is True
    assert "not converged" in convergence_note(falling)
    assert training_summary(flat)["still_improving"] is False and convergence_note(flat) is None
    assert training_summary({"loss": [1.0] * 50, "pearson_r": [0.1] * 50})["still_improving"] is None


# -- 6. existing models, checkpoints ----------------------------------------------------------

def test_existing_model_needs_overwrite_and_checkpoints_are_removed(table, capsys):
    d = table
    args = ["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "time", "--checkpoint-every", "20",
            *FAST]
    assert main(args) == 0
    assert (d / "m" / "model.json").is_file() and not (d / "m" / "checkpoints").exists()
    before = (d / "m" / "weights.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already holds a model" in err and "--overwrite" in err and "--resume" in err
    assert (d / "m" / "weights.safetensors").read_bytes() == before
    assert main(args + ["--resume"]) == 1                      # finished, no checkpoints left
    assert "--overwrite" in capsys.readouterr().err
    (d / "m" / "checkpoints").mkdir()
    (d / "m" / "checkpoints" / "notes.txt").write_text("mine")  # a file of the user's is never removed
    assert main(args + ["--overwrite", "--keep-checkpoints"]) == 0
    assert sorted(p.name for p in (d / "m" / "checkpoints").iterdir()) == [
        "notes.txt", "step-000000040.json", "step-000000040.safetensors", "step-000000060.json",
        "step-000000060.safetensors"]
    assert main(args + ["--resume", "--steps", "100"]) == 0    # kept checkpoints: the run can be extended
    assert "resumed from the checkpoint of step 60" in capsys.readouterr().out
    assert [p.name for p in (d / "m" / "checkpoints").iterdir()] == ["notes.txt"]


def test_interrupted_run_is_resumed_not_restarted(table, capsys):
    from factembed.workflow import CheckpointOptions, FitRequest, ReadOptions, fit
    from factembed import FEConfig
    d = table
    cfg = FEConfig(n_steps=40, gene_dim=8, hidden=(16, 8), random_state=0, verbose=False, device="cpu")
    req = FitRequest(data=str(d / "train.csv"), output=str(d / "m"), config=cfg,
                     read=ReadOptions(label_column="time"), checkpoints=CheckpointOptions(every=20))
    fit(req)
    (d / "m" / "model.json").unlink()                 # as if killed after its last checkpoint
    args = ["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "time", "--checkpoint-every", "20",
            "--steps", "40", "--gene-dim", "8", "--hidden", "16,8", "--seed", "0", "--quiet"]
    capsys.readouterr()
    assert main(args) == 1
    assert "interrupted run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert "resumed from the checkpoint of step 40" in capsys.readouterr().out


# -- 7. words, one-line warnings ----------------------------------------------------------------

def test_warnings_are_one_clean_line_and_preprocessing_is_in_words(tmp_path):
    X, samples, genes = _raw()
    X[5] = 0.0                           # a constant sample: left out with a warning
    write_expression(tmp_path / "z.csv", ExpressionData(X=X, samples=samples, genes=genes))
    proc = _run("fit", tmp_path / "z.csv", "-o", tmp_path / "m", *FAST)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    warn = [ln for ln in lines if "warning" in ln.lower()]
    assert warn == [ln for ln in lines if ln.startswith("factembed: warning: ")] and len(warn) == 1
    assert "s5" in warn[0] and "Preprocessing(" not in proc.stderr
    assert any(ln.startswith("training on 59 samples x 40 genes (log10(x+1), ") for ln in lines), lines


# -- the gene side ----------------------------------------------------------------------------

def test_genes_command_exports_and_lists_neighbours(table, capsys):
    d = table
    assert main(["fit", str(d / "train.csv"), "-o", str(d / "m"), "--label-column", "time", *FAST]) == 0
    capsys.readouterr()
    assert main(["genes", str(d / "m"), "-o", str(d / "genes.csv")]) == 0
    t = pd.read_csv(d / "genes.csv")
    assert list(t.columns) == ["gene"] + [f"GE{k}" for k in range(1, 9)] and len(t) == 40
    assert "wrote" in capsys.readouterr().out
    assert main(["genes", str(d / "m"), "--similar", "g3", "-k", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("genes nearest to g3") and len(out) == 5 and "g3 " not in "".join(out[1:])
    from factembed import FactorizedEmbeddings
    expect = FactorizedEmbeddings.load(d / "m").similar_genes("g3", k=4)
    assert [ln.split()[0] for ln in out[1:]] == list(expect.index)
    assert main(["genes", str(d / "m"), "--similar", "TP53"]) == 1
    assert "unknown gene 'TP53'" in capsys.readouterr().err
    assert main(["genes", str(d / "m")]) == 1
