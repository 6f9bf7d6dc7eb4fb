"""Tests of factembed.io: ExpressionData, readers, atomic writers (preprocessing: test_preprocessing.py)."""

from __future__ import annotations

import string
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factembed.io import formats
from factembed.errors import FEInputError
from factembed.io import (
    ExpressionData,
    read_expression,
    read_sample_labels,
    write_embedding_h5ad,
    write_embedding_table,
    write_expression,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def make_data(n=6, m=5, seed=0, labels=True, biotypes=True) -> ExpressionData:
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 20.0, size=(n, m)).astype(np.float32)
    X[rng.random((n, m)) < 0.3] = 0.0
    return ExpressionData(
        X,
        [f"s{i}" for i in range(n)],
        [f"g{j}" for j in range(m)],
        labels=[["tumor", "normal", "24"][i % 3] for i in range(n)] if labels else None,
        biotypes=[("protein_coding" if j % 4 else "lncRNA") for j in range(m)] if biotypes else None,
    )


def assert_same(a: ExpressionData, b: ExpressionData, labels=True, biotypes=False):
    assert a.X.dtype == np.float32 and a.X.flags.c_contiguous
    np.testing.assert_array_equal(a.X, b.X)
    assert a.samples.tolist() == b.samples.tolist()
    assert a.genes.tolist() == b.genes.tolist()
    if labels:
        assert (a.labels is None) == (b.labels is None)
        if a.labels is not None:
            assert a.labels.tolist() == b.labels.tolist()
    if biotypes:
        assert a.biotypes.tolist() == b.biotypes.tolist()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------
# ExpressionData
# --------------------------------------------------------------------------


def test_expression_data_converts_and_validates():
    d = ExpressionData(np.arange(6, dtype=np.float64).reshape(2, 3).T, ["a", "b", "c"], [b"x", "y"],
                       labels=[0, 24.0, np.nan])
    assert d.X.dtype == np.float32 and d.X.flags.c_contiguous
    assert d.genes.tolist() == ["x", "y"]
    assert d.labels.tolist() == ["0", "24", "NA"]
    assert d.shape == (3, 2) and "3 samples x 2 genes" in repr(d)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=np.zeros((2, 3)), samples=["a", "b"], genes=["x", "y"]), "2 gene names for 3 columns"),
        (dict(X=np.zeros((2, 3)), samples=["a"], genes=["x", "y", "z"]), "1 sample names for 2 rows"),
        (dict(X=np.zeros((2, 2, 2)), samples=["a", "b"], genes=["x", "y"]), "2-D"),
        (dict(X=np.array([["1", "2"]]), samples=["a"], genes=["x", "y"]), "numeric"),
        (dict(X=np.zeros((3, 2)), samples=["a", "b", "a"], genes=["x", "y"]), "duplicated sample name 'a'"),
        (dict(X=np.zeros((1, 3)), samples=["a"], genes=["x", "y", "y"]), "duplicated gene name 'y'"),
        (dict(X=np.zeros((2, 2)), samples=["a", "b"], genes=["x", "y"], labels=["l"]), "1 labels for 2"),
    ],
)
def test_expression_data_rejects(kwargs, match):
    with pytest.raises(FEInputError, match=match):
        ExpressionData(**kwargs)


def test_subset_samples():
    d = make_data()
    s = d.subset_samples(["s3", "s1"])
    assert s.samples.tolist() == ["s3", "s1"]
    np.testing.assert_array_equal(s.X, d.X[[3, 1]])
    assert s.labels.tolist() == [d.labels[3], d.labels[1]]


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".h5", ".hdf5", ".h5ad", ".csv", ".tsv", ".csv.gz", ".tsv.gz", ".npz"])
def test_round_trip(tmp_path, ext):
    d = make_data()
    d.transform = "log10p1" if ext in (".h5", ".h5ad", ".npz") else None
    p = tmp_path / f"expr{ext}"
    write_expression(p, d)
    assert leftovers(tmp_path) == [p.name]
    e = read_expression(p)
    assert_same(e, d, biotypes=ext not in (".csv", ".tsv", ".csv.gz", ".tsv.gz"))
    assert e.source == str(p)
    if ext in (".h5", ".h5ad", ".npz"):
        assert e.transform == "log10p1"


@pytest.mark.parametrize("ext", [".h5", ".h5ad", ".npz", ".csv"])
def test_round_trip_without_labels_and_with_extremes(tmp_path, ext):
    X = np.array([[0.0, 1e-30, -2.5], [3.4028235e38, np.nan, 1 / 3]], dtype=np.float32)
    d = ExpressionData(X, ["a b", 'q"uote'], ["g,1", "g2", "g3"])
    p = tmp_path / f"x{ext}"
    write_expression(p, d)
    e = read_expression(p)
    np.testing.assert_array_equal(e.X, d.X)
    assert e.samples.tolist() == d.samples.tolist() and e.genes.tolist() == d.genes.tolist()
    assert e.labels is None


def test_round_trip_obs_var_annotations(tmp_path):
    d = make_data()
    d.obs = {"State": np.array(["1", "2", "1", "3", "2", "1"]), "depth": np.arange(6.0)}
    d.var = {"symbol": np.array([f"SYM{j}" for j in range(5)])}
    for ext in (".h5", ".h5ad", ".npz"):
        e = read_expression(_written(tmp_path / f"a{ext}", d))
        assert e.obs["State"].tolist() == d.obs["State"].tolist()
        np.testing.assert_array_equal(e.obs["depth"], d.obs["depth"])
        assert e.var["symbol"].tolist() == d.var["symbol"].tolist()


def _written(p, d):
    write_expression(p, d)
    return p


def test_npy_generates_names_and_transposes(tmp_path):
    X = np.arange(12, dtype=np.int64).reshape(3, 4)
    p = tmp_path / "m.npy"
    np.save(p, X)
    d = read_expression(p)
    assert d.shape == (3, 4) and d.X.dtype == np.float32
    assert d.samples.tolist() == ["sample_0", "sample_1", "sample_2"]
    assert d.genes.tolist()[-1] == "gene_3"
    t = read_expression(p, samples_as_rows=False)
    np.testing.assert_array_equal(t.X, X.T.astype(np.float32))


def test_npz_without_names(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, X=np.ones((2, 3)))
    d = read_expression(p)
    assert d.samples.tolist() == ["sample_0", "sample_1"] and d.genes.tolist() == ["gene_0", "gene_1", "gene_2"]


def _write_tcga_h5(path, data, samples, genes, **extra):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("samples", data=np.array(samples, dtype="S"))
        f.create_dataset("genes", data=np.array(genes, dtype=object), dtype=h5py.string_dtype())
        for k, v in extra.items():
            f.create_dataset(k, data=np.array(v, dtype="S"))


def test_transposed_hdf5_is_detected(tmp_path):
    d = make_data(n=4, m=7)
    p = tmp_path / "t.h5"
    _write_tcga_h5(p, d.X.T.astype(np.float64), d.samples, d.genes, labels=d.labels)
    e = read_expression(p, chunk_rows=2)
    assert_same(e, d)
    f = read_expression(p, samples_as_rows=False)
    assert_same(f, d)
    with pytest.raises(FEInputError, match="expected"):
        read_expression(p, samples_as_rows=True)


def test_square_hdf5_orientation_can_be_forced(tmp_path):
    X = np.arange(9, dtype=np.float32).reshape(3, 3)
    p = tmp_path / "sq.h5"
    _write_tcga_h5(p, X, ["a", "b", "c"], ["x", "y", "z"])
    np.testing.assert_array_equal(read_expression(p).X, X)
    np.testing.assert_array_equal(read_expression(p, samples_as_rows=False).X, X.T)


def test_hdf5_shape_mismatch_and_missing_dataset(tmp_path):
    p = tmp_path / "bad.h5"
    _write_tcga_h5(p, np.zeros((3, 4)), ["a", "b"], ["x", "y", "z"])
    with pytest.raises(FEInputError, match=r"bad\.h5: data has shape \(3, 4\)"):
        read_expression(p)
    q = tmp_path / "nogenes.h5"
    with h5py.File(q, "w") as f:
        f.create_dataset("data", data=np.zeros((2, 2)))
        f.create_dataset("samples", data=np.array(["a", "b"], dtype="S"))
    with pytest.raises(FEInputError, match=r"nogenes\.h5: missing dataset 'genes'"):
        read_expression(q)


@pytest.mark.parametrize("kind", ["csr", "csc"])
def test_h5ad_sparse_and_obs_label_column(tmp_path, kind):
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    d = make_data(n=9, m=11)
    obs = pd.DataFrame({"cell_type": pd.Categorical(["T", "B", "NK"] * 3), "n": np.arange(9)},
                       index=list(d.samples))
    ad = anndata.AnnData(X=getattr(sp, f"{kind}_matrix")(d.X), obs=obs,
                         var=pd.DataFrame(index=list(d.genes)))
    p = tmp_path / "s.h5ad"
    ad.write_h5ad(p)
    e = read_expression(p, label_column="cell_type", chunk_rows=2)
    np.testing.assert_array_equal(e.X, d.X)
    assert e.labels.tolist() == ["T", "B", "NK"] * 3
    np.testing.assert_array_equal(e.obs["n"], np.arange(9))
    with pytest.raises(FEInputError, match="obs has no column 'nope'"):
        read_expression(p, label_column="nope")


def test_csv_genes_as_rows_and_label_column(tmp_path):
    d = read_expression(FIXTURES / "genes_as_rows.tsv", samples_as_rows=False)
    assert d.samples.tolist() == ["s1", "s2", "s3"] and d.genes.tolist() == ["g1", "g2"]
    np.testing.assert_array_equal(d.X, [[1, 4], [2, 5], [3, 6]])
    p = tmp_path / "lab.csv"
    p.write_text("id,g1,Hours,g2\nc1,1.5,0,2\nc2,3,24,4\n")
    e = read_expression(p, label_column="Hours")
    assert e.genes.tolist() == ["g1", "g2"] and e.labels.tolist() == ["0", "24"]
    np.testing.assert_array_equal(e.X, [[1.5, 2], [3, 4]])
    with pytest.raises(FEInputError, match="no column 'Nope'"):
        read_expression(p, label_column="Nope")


def test_csv_r_style_header_quotes_and_missing_values(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text('"g1"\t"g2"\t"g3"\n"a"\t1\tNA\t3\n"b"\t\t5\t6\n')
    d = read_expression(p)
    assert d.genes.tolist() == ["g1", "g2", "g3"] and d.samples.tolist() == ["a", "b"]
    assert np.isnan(d.X[0, 1]) and np.isnan(d.X[1, 0]) and d.X[1, 2] == 6


def test_labels_path_aligned_by_sample_id(tmp_path):
    d = read_expression(FIXTURES / "genes_as_rows.tsv", samples_as_rows=False,
                        labels_path=FIXTURES / "pheno.csv", label_column="Hours")
    assert d.labels.tolist() == ["0", "24", "72"]
    assert read_sample_labels(FIXTURES / "pheno.csv", ["s2"], "State").tolist() == ["2"]
    with pytest.raises(FEInputError, match=r"pheno\.csv: 1 of 2 samples have no row .*'zz'"):
        read_sample_labels(FIXTURES / "pheno.csv", ["s1", "zz"], "Hours")
    with pytest.raises(FEInputError, match="no column 'Age'"):
        read_sample_labels(FIXTURES / "pheno.csv", ["s1"], "Age")


# --------------------------------------------------------------------------
# malformed input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, match",
    [
        ("ragged_short.csv", r"line 4 has 3 fields, expected 4"),
        ("ragged_long.csv", r"line 3 has 5 fields, expected 4"),
        ("non_numeric.csv", r"line 3 \(sample 's2'\), column 3 \(gene 'g2'\): non-numeric value 'five'"),
        ("duplicated_gene.csv", r"duplicated gene name 'g1'"),
        ("duplicated_sample.csv", r"duplicated sample name 's1' \(lines 2 and 4\)"),
        ("empty.csv", r"file is empty"),
    ],
)
def test_malformed_csv(name, match):
    path = FIXTURES / name
    with pytest.raises(FEInputError, match=match) as info:
        read_expression(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FEInputError, match="file not found") as info:
        read_expression(tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(info.value)
    p = tmp_path / "x.xlsx"
    p.write_text("a")
    with pytest.raises(FEInputError, match="unknown file extension '.xlsx'"):
        read_expression(p)
    with pytest.raises(FEInputError, match="unknown format"):
        read_expression(p, fmt="excel")


@pytest.mark.parametrize("content, match", [
    ("sample,g1\n", "no data rows"),
    ("\n\n", "file is empty"),
    ("sample,g1\na,1\n\nb,2\n", "line 3 is empty"),
    ("sample,g1\n,1\n", "line 2 has an empty id"),
    ("sample,g1,\na,1,2\n", "empty gene name"),
])
def test_malformed_csv_inline(tmp_path, content, match):
    p = tmp_path / "m.csv"
    p.write_text(content)
    with pytest.raises(FEInputError, match=match):
        read_expression(p)


def test_empty_binary_files(tmp_path):
    for ext in (".h5", ".h5ad", ".npz", ".npy"):
        p = tmp_path / f"empty{ext}"
        p.write_bytes(b"")
        with pytest.raises(FEInputError, match="file is empty"):
            read_expression(p)


@pytest.mark.parametrize("ext", [".h5", ".h5ad", ".npz", ".npy", ".csv.gz"])
def test_truncated_files(tmp_path, ext):
    d = make_data(n=50, m=40)
    p = tmp_path / f"full{ext}"
    if ext == ".npy":
        np.save(p, d.X)
    else:
        write_expression(p, d)
    raw = p.read_bytes()
    q = tmp_path / f"cut{ext}"
    q.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FEInputError) as info:
        read_expression(q)
    assert str(q) in str(info.value)


def test_garbage_hdf5(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(FEInputError, match=r"junk\.h5: not a readable HDF5 file"):
        read_expression(p)


def test_duplicated_names_in_hdf5(tmp_path):
    p = tmp_path / "dup.h5"
    _write_tcga_h5(p, np.zeros((2, 2)), ["a", "a"], ["x", "y"])
    with pytest.raises(FEInputError, match=r"dup\.h5: duplicated sample name 'a'"):
        read_expression(p)


def test_parquet_without_pyarrow_is_clear(tmp_path):
    pytest.importorskip("pandas")
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(FEInputError, match="needs the 'pyarrow' package"):
            read_expression(p)
    else:  # pragma: no cover - depends on the environment
        with pytest.raises(FEInputError):
            read_expression(p)


# --------------------------------------------------------------------------
# writers: atomicity and embedding outputs
# --------------------------------------------------------------------------


def test_failed_writer_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    d = make_data()
    target = tmp_path / "out.h5"
    target.write_bytes(b"old content")

    def broken(tmp, data):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setitem(formats.WRITERS, "h5", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_expression(target, d)
    assert leftovers(tmp_path) == ["out.h5"]
    assert target.read_bytes() == b"old content"


@pytest.mark.parametrize("ext", [".csv", ".h5ad", ".npz"])
def test_writer_error_midway_leaves_no_file(tmp_path, monkeypatch, ext):
    d = make_data()
    name = {".csv": "csv", ".h5ad": "h5ad", ".npz": "npz"}[ext]
    real = formats.WRITERS[name]

    def half(tmp, data, **kw):
        real(tmp, data, **kw)
        raise OSError("interrupted")

    monkeypatch.setitem(formats.WRITERS, name, half)
    with pytest.raises(OSError):
        write_expression(tmp_path / f"o{ext}", d)
    assert leftovers(tmp_path) == []


def test_writer_rejects_bad_input_without_output(tmp_path):
    d = ExpressionData(np.ones((2, 2)), ["a", "b"], ["label", "g"], labels=["x", "y"])
    with pytest.raises(FEInputError, match="clashes with the label column"):
        write_expression(tmp_path / "o.csv", d)
    with pytest.raises(FEInputError, match="cannot write extension"):
        write_expression(tmp_path / "o.parquet", d)
    with pytest.raises(FEInputError, match="4 sample names for 3 embedding rows"):
        write_embedding_table(tmp_path / "e.csv", np.zeros((3, 2)), ["a", "b", "c", "d"])
    with pytest.raises(FEInputError, match="embedding has shape"):
        write_embedding_h5ad(tmp_path / "e.h5ad", d, np.zeros((3, 2)))
    with pytest.raises(FEInputError, match="gene_embedding has shape"):
        write_embedding_h5ad(tmp_path / "e.h5ad", d, np.zeros((2, 2)), np.zeros((3, 4)))
    with pytest.raises(FEInputError, match="output directory does not exist"):
        write_expression(tmp_path / "nodir" / "o.h5", d)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ext, sep", [(".csv", ","), (".tsv", "\t")])
def test_write_embedding_table(tmp_path, ext, sep):
    import pandas as pd

    emb = np.array([[0.5, -1.25, 3.0], [1e-7, 2.0, -0.0]], dtype=np.float32)
    p = tmp_path / f"emb{ext}"
    write_embedding_table(p, emb, ["a", "b"], labels=["x", "y"])
    df = pd.read_csv(p, sep=sep)
    assert list(df.columns) == ["sample", "label", "FE1", "FE2", "FE3"]
    np.testing.assert_array_equal(df[["FE1", "FE2", "FE3"]].to_numpy(np.float32), emb)
    write_embedding_table(tmp_path / "noLab.csv", emb, ["a", "b"], prefix="Z")
    assert list(pd.read_csv(tmp_path / "noLab.csv").columns) == ["sample", "Z1", "Z2", "Z3"]


def test_write_embedding_h5ad(tmp_path):
    import anndata

    d = make_data()
    emb = np.arange(12, dtype=np.float32).reshape(6, 2)
    gemb = np.ones((5, 3), dtype=np.float32)
    p = tmp_path / "fe.h5ad"
    write_embedding_h5ad(p, d, emb, gemb)
    ad = anndata.read_h5ad(p)
    np.testing.assert_array_equal(ad.obsm["X_fe"], emb)
    np.testing.assert_array_equal(ad.varm["X_fe"], gemb)
    assert list(ad.obs["label"].astype(str)) == d.labels.tolist()
    back = read_expression(p)
    assert_same(back, d, biotypes=True)


# --------------------------------------------------------------------------
# property test: CSV/TSV round trip
# --------------------------------------------------------------------------

_name_chars = string.ascii_letters + string.digits + "_-. ,\"'#"
_names = st.text(alphabet=_name_chars, min_size=1, max_size=8).map(lambda s: s.strip()).filter(
    lambda s: s != "" and s != "label")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    data=st.data(),
    ext=st.sampled_from([".csv", ".tsv", ".csv.gz"]),
    with_labels=st.booleans(),
)
def test_csv_round_trip_property(tmp_path, shape, data, ext, with_labels):
    n, m = shape
    values = data.draw(st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=n * m, max_size=n * m))
    samples = data.draw(st.lists(_names, min_size=n, max_size=n, unique=True))
    genes = data.draw(st.lists(_names, min_size=m, max_size=m, unique=True))
    labels = data.draw(st.lists(st.sampled_from(["a", "tumor B", "0", "24", "x,y"]), min_size=n, max_size=n)) \
        if with_labels else None
    d = ExpressionData(np.array(values, dtype=np.float32).reshape(n, m), samples, genes, labels=labels)
    p = tmp_path / f"prop{ext}"
    write_expression(p, d)
    e = read_expression(p)
    np.testing.assert_array_equal(e.X, d.X)
    assert e.samples.tolist() == d.samples.tolist()
    assert e.genes.tolist() == d.genes.tolist()
    assert (None if e.labels is None else e.labels.tolist()) == labels
