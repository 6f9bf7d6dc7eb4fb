"""The `factembed` command end to end on tiny files."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from factembed.cli import main
from factembed.io import ExpressionData, read_expression, write_expression

FAST = ["--steps", "150", "--gene-dim", "8", "--hidden", "16,8", "--infer-steps", "20", "--seed", "0", "--quiet"]


@pytest.fixture()
def tiny_files(tmp_path, planted_data):
    X, labels = planted_data
    X = np.expm1(np.abs(X[:80, :60]) * 2.3).astype(np.float32)       # raw-scale values
    samples = np.array([f"s{i}" for i in range(80)])
    genes = np.array([f"g{j}" for j in range(60)])
    data = ExpressionData(X=X, samples=samples, genes=genes, labels=np.array([f"c{l}" for l in labels[:80]]))
    write_expression(tmp_path / "train.h5", data)
    # the new file has its genes in another order and as CSV
    order = np.random.default_rng(1).permutation(60)
    new = ExpressionData(X=X[:10, order], samples=samples[:10], genes=genes[order], labels=data.labels[:10])
    write_expression(tmp_path / "new.csv", new)
    return tmp_path, data


def test_fit_transform_reconstruct_info(tiny_files, capsys):
    d, data = tiny_files
    assert main(["fit", str(d / "train.h5"), "-o", str(d / "model"), "--checkpoint-every", "50", *FAST]) == 0
    for name in ("model.json", "weights.safetensors", "embedding.csv", "history.csv", "embedding.png",
                 "training.png"):
        assert (d / "model" / name).stat().st_size > 0, name
    assert not (d / "model" / "checkpoints").exists()      # removed after a successful fit
    emb = pd.read_csv(d / "model" / "embedding.csv")
    assert list(emb.columns) == ["sample", "label", "FE1", "FE2"] and len(emb) == 80

    assert main(["transform", str(d / "model"), str(d / "new.csv"), "-o", str(d / "new_emb.csv"),
                 "--plot", str(d / "new.png"), "--quiet"]) == 0
    new_emb = pd.read_csv(d / "new_emb.csv")
    assert list(new_emb["sample"]) == [f"s{i}" for i in range(10)]
    # reordered genes were aligned by name: same answer as embedding the training rows
    from factembed import FactorizedEmbeddings
    fe = FactorizedEmbeddings.load(d / "model")
    Xlog = np.log10(data.X[:10] + 1)
    np.testing.assert_allclose(new_emb[["FE1", "FE2"]].to_numpy(), fe.transform(Xlog), rtol=1e-5, atol=1e-6)
    assert (d / "new.png").stat().st_size > 0

    assert main(["reconstruct", str(d / "model"), str(d / "new_emb.csv"), "-o", str(d / "rec.csv")]) == 0
    rec = read_expression(d / "rec.csv")
    assert rec.X.shape == (10, 60) and list(rec.samples) == [f"s{i}" for i in range(10)]

    capsys.readouterr()
    assert main(["info", str(d / "model")]) == 0
    out = capsys.readouterr().out
    assert "80 training samples x 60 genes" in out and "gene_dim = 8" in out and "final Pearson r" in out


def test_resume_from_cli(tiny_files):
    d, _ = tiny_files
    args = ["fit", str(d / "train.h5"), "-o", str(d / "m"), "--checkpoint-every", "50", *FAST]
    assert main(args + ["--keep-checkpoints"]) == 0
    assert sorted(p.name for p in (d / "m" / "checkpoints").glob("*.json")) == [
        "step-000000100.json", "step-000000150.json"]
    assert main(args + ["--resume"]) == 0          # everything done: resumes at the last step


def test_missing_genes_error_and_fill(tiny_files, capsys):
    d, data = tiny_files
    assert main(["fit", str(d / "train.h5"), "-o", str(d / "model"), "--checkpoint-every", "0", *FAST]) == 0
    part = ExpressionData(X=data.X[:5, 3:], samples=data.samples[:5], genes=data.genes[3:])
    write_expression(d / "part.csv", part)
    capsys.readouterr()
    assert main(["transform", str(d / "model"), str(d / "part.csv"), "-o", str(d / "o.csv"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "3" in err and "g0" in err and not (d / "o.csv").exists()
    with pytest.warns(UserWarning):
        assert main(["transform", str(d / "model"), str(d / "part.csv"), "-o", str(d / "o.csv"),
                     "--fill-missing", "--quiet"]) == 0
    assert (d / "o.csv").exists()


@pytest.mark.parametrize("content,needle", [
    ("sample,g1,g2\ns1,1,2\ns2,3\n", "line 3"),
    ("sample,g1,g2\ns1,1,abc\ns2,3,4\n", "abc"),
    ("", "empty"),
])
def test_malformed_input_one_line_error_no_output(tmp_path, content, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "factembed", "fit", str(bad), "-o", str(tmp_path / "out"),
                           "--steps", "5", "--quiet"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("factembed: error:") and "bad.csv" in lines[0], proc.stderr
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_truncated_hdf5(tmp_path, tiny_files, capsys):
    d, _ = tiny_files
    blob = (d / "train.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(blob[: len(blob) // 3])
    assert main(["fit", str(tmp_path / "cut.h5"), "-o", str(tmp_path / "o"), *FAST]) == 1
    assert "cut.h5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "factembed", "--debug", "info", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_all_zero_sample_is_left_out_with_warning(tiny_files):
    d, data = tiny_files
    X = data.X.copy()
    X[5] = 0.0
    write_expression(d / "z.h5", ExpressionData(X=X, samples=data.samples, genes=data.genes, labels=data.labels))
    with pytest.warns(UserWarning, match="1 sample.*constant.*s5"):
        assert main(["fit", str(d / "z.h5"), "-o", str(d / "mz"), "--checkpoint-every", "0", *FAST]) == 0
    emb = pd.read_csv(d / "mz" / "embedding.csv")
    assert len(emb) == 79 and "s5" not in set(emb["sample"])
