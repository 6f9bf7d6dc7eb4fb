"""Tests of factembed.datasets: the bundled demo and the TCGA PanCanAtlas
fetcher, the latter on a tiny local fixture in the Xena format (no network)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from factembed import datasets
from factembed.datasets import data_dir, fetch_tcga_pancan, load_demo, read_xena_matrix
from factembed.errors import FEInputError
from factembed.preprocessing import Preprocessing

# --------------------------------------------------------------------------
# bundled demo
# --------------------------------------------------------------------------


def test_load_demo():
    d = load_demo()
    assert d.shape == (271, 5000)
    assert d.X.dtype == np.float32 and d.X.flags.c_contiguous
    assert set(d.labels.tolist()) == {"0h", "24h", "48h", "72h"}
    assert d.transform == "log10p1" and d.log_transformed
    assert d.genes[0].startswith("ENSG")
    assert len(d.biotypes) == 5000 and (d.biotypes == "protein_coding").sum() > 4000
    assert set(d.obs["State"].tolist()) == {"1", "2", "3"}
    assert d.var["gene_symbols"].shape == (5000,)
    assert 0.0 <= float(d.X.min()) and float(d.X.max()) < 6.0  # log10(FPKM+1)
    assert (d.X.var(axis=0) > 0).all()  # constant genes were dropped
    fitted = Preprocessing(log10p1=False, protein_coding_only=False).fit(d)
    assert fitted.n_genes == 5000


def test_demo_file_is_small():
    path = Path(datasets.__file__).parent / "data" / datasets.DEMO_FILE
    assert path.stat().st_size <= 3 * 1024 * 1024


# --------------------------------------------------------------------------
# TCGA PanCanAtlas on a local fixture
# --------------------------------------------------------------------------

SAMPLES = ["TCGA-AA-0001-01", "TCGA-AA-0002-01", "TCGA-BB-0003-11", "TCGA-CC-0004-01", "TCGA-ZZ-9999-01"]
GENES = ["TP53", "BRCA1", "EGFR", "SLC35E2", "GAPDH", "SLC35E2", "MYC"]
DISEASE = {
    "TCGA-AA-0001-01": ("breast invasive carcinoma", "Primary Tumor"),
    "TCGA-AA-0002-01": ("lung adenocarcinoma", "Primary Tumor"),
    "TCGA-BB-0003-11": ("breast invasive carcinoma", "Solid Tissue Normal"),
    "TCGA-CC-0004-01": ("glioblastoma multiforme", "Primary Tumor"),
    # TCGA-ZZ-9999-01 has no phenotype row; TCGA-XX-0000-01 is not in the matrix
    "TCGA-XX-0000-01": ("ovarian serous cystadenocarcinoma", "Primary Tumor"),
}


@pytest.fixture()
def xena_files(tmp_path):
    """A tiny gzip TSV matrix (genes x samples, log2(x+1) values, an NA cell,
    a duplicated gene) and a gzip phenotype TSV, in the Xena download format."""
    rng = np.random.default_rng(0)
    values = np.round(rng.uniform(0, 15, size=(len(GENES), len(SAMPLES))), 4)
    values[4, 1] = -0.0123  # the batch correction leaves small negatives
    src = tmp_path / "src"
    src.mkdir()
    expr = src / "EB++AdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.xena.gz"
    lines = ["sample\t" + "\t".join(SAMPLES)]
    for g, row in zip(GENES, values):
        cells = [f"{v:.4f}" for v in row]
        if g == "EGFR":
            cells[2] = "NA"
        lines.append(g + "\t" + "\t".join(cells))
    with gzip.open(expr, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    pheno = src / "TCGA_phenotype_denseDataOnlyDownload.tsv.gz"
    with gzip.open(pheno, "wt") as fh:
        fh.write("sample\tsample_type_id\tsample_type\t_primary_disease\n")
        for s, (dis, typ) in DISEASE.items():
            fh.write(f"{s}\t{'11' if 'Normal' in typ else '01'}\t{typ}\t{dis}\n")
    return expr, pheno, values


def _fetch(expr, pheno, cache, **kw):
    kw.setdefault("progress", False)
    return fetch_tcga_pancan(cache, expression_url=expr.as_uri(), phenotype_url=str(pheno), **kw)


def test_fetch_tcga_pancan_from_local_fixture(tmp_path, xena_files):
    expr, pheno, values = xena_files
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning) as rec:
        d = _fetch(expr, pheno, cache)
    msgs = " | ".join(str(w.message) for w in rec)
    assert "1 samples of the matrix have no phenotype row" in msgs
    assert "1 duplicated gene ids, 1 genes with missing values" in msgs
    # samples: the one without phenotype is dropped; order as in the file
    assert d.samples.tolist() == SAMPLES[:4]
    assert d.labels.tolist() == [DISEASE[s][0] for s in SAMPLES[:4]]
    assert d.obs["sample_type"].tolist() == [DISEASE[s][1] for s in SAMPLES[:4]]
    # genes: EGFR (NA) and the second SLC35E2 are dropped
    assert d.genes.tolist() == ["TP53", "BRCA1", "SLC35E2", "GAPDH", "MYC"]
    assert d.shape == (4, 5) and d.X.dtype == np.float32 and d.X.flags.c_contiguous
    rows = [0, 1, 3, 4, 6]
    want = values[rows][:, :4].T * math.log10(2.0)  # log2(x+1) -> log10(x+1)
    np.testing.assert_allclose(d.X, want, rtol=1e-5, atol=1e-6)
    assert d.transform == "log10p1"
    # the downloads and their hashes are cached
    reg = json.loads((cache / "factembed-hashes.json").read_text())
    assert set(reg) == {expr.name, pheno.name}
    assert (cache / expr.name).is_file() and (cache / pheno.name).is_file()
    assert list(cache.glob("tcga_pancan_*.h5"))


def test_fetch_tcga_uses_cache_and_checks_hashes(tmp_path, xena_files):
    expr, pheno, values = xena_files
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        first = _fetch(expr, pheno, cache)
    # the second call reads the parsed cache (no warnings, same data)
    second = _fetch(expr, pheno, cache)
    np.testing.assert_array_equal(first.X, second.X)
    assert second.labels.tolist() == first.labels.tolist()
    # a corrupted cached download is detected by its recorded hash and fetched again
    (cache / expr.name).write_bytes(b"garbage")
    for f in cache.glob("tcga_pancan_*.h5"):
        f.unlink()
    with pytest.warns(UserWarning):
        third = _fetch(expr, pheno, cache)
    np.testing.assert_array_equal(first.X, third.X)
    # a wrong pinned hash is an error
    with pytest.raises(FEInputError, match="checksum mismatch"):
        _fetch(expr, pheno, tmp_path / "other", known_hash="sha256:" + "0" * 64)


def test_fetch_tcga_options(tmp_path, xena_files):
    expr, pheno, values = xena_files
    with pytest.warns(UserWarning):
        d = _fetch(expr, pheno, tmp_path / "c", values="log2p1", sample_types=["Primary Tumor"],
                   drop_genes_with_missing=False, drop_unlabeled=False, cache_parsed=False)
    assert d.samples.tolist() == ["TCGA-AA-0001-01", "TCGA-AA-0002-01", "TCGA-CC-0004-01"]
    assert "EGFR" in d.genes.tolist() and np.isnan(d.X[:, d.genes.tolist().index("EGFR")]).sum() == 0
    np.testing.assert_allclose(d.X[:, 0], values[0, [0, 1, 3]], rtol=1e-6)
    assert d.transform == "log2p1"
    assert not list((tmp_path / "c").glob("tcga_pancan_*.h5"))
    with pytest.raises(ValueError, match="values must be"):
        _fetch(expr, pheno, tmp_path / "c", values="log")


def test_read_xena_matrix_and_bad_phenotype(tmp_path, xena_files):
    expr, pheno, values = xena_files
    with pytest.warns(UserWarning, match="kept 6 of 7 genes"):
        d = read_xena_matrix(expr, drop_genes_with_missing=False)
    assert d.shape == (5, 6) and np.isnan(d.X[2, 2])
    bad = tmp_path / "pheno.tsv"
    bad.write_text("sample\tdisease\nTCGA-AA-0001-01\tx\n")
    with pytest.raises(FEInputError, match=r"pheno\.tsv: phenotype table has no '_primary_disease' column"):
        _fetch(expr, bad, tmp_path / "c2")


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTEMBED_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("FACTEMBED_DATA")
    assert "factembed" in str(data_dir())


def test_default_urls_are_https_constants():
    assert datasets.TCGA_EXPRESSION_URL.startswith("https://")
    assert datasets.TCGA_EXPRESSION_URL.endswith("geneExp.xena.gz")
    assert datasets.TCGA_PHENOTYPE_URL.endswith("TCGA_phenotype_denseDataOnlyDownload.tsv.gz")
