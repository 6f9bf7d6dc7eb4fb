#!/usr/bin/env python
"""Build the bundled demo data set ``src/factembed/data/hsmm_demo.npz``.

Source: the HSMMSingleCell Bioconductor package (Trapnell et al. 2014),
Artistic-2.0: 271 human skeletal-muscle myoblasts x 47,192 genes, FPKM.

Steps: read the FPKM matrix (cells as rows), apply log10(x + 1), drop genes
that are constant over the cells, keep the 5,000 genes with the largest
variance of the log values (in their original order), store the values as
float16 in a compressed npz together with the cell ids, Ensembl gene ids,
gene symbols, biotypes, the time labels ("0h", "24h", "48h", "72h") and the
pseudotime ``State``.

Usage::

    python scripts/make_demo_data.py [--data-dir /work/shared/data] [--out src/factembed/data/hsmm_demo.npz]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from factembed.io import Preprocessing, read_expression, read_sample_labels  # noqa: E402

N_TOP = 5000
MAX_BYTES = 3 * 1024 * 1024


def build(data_dir: str, out: str, n_top: int = N_TOP, dtype: str = "float16") -> dict:
    expr = read_expression(os.path.join(data_dir, "HSMM_expr.csv.gz"))
    pheno_path = os.path.join(data_dir, "HSMM_pheno.csv")
    hours = read_sample_labels(pheno_path, expr.samples, "Hours")
    state = read_sample_labels(pheno_path, expr.samples, "State")
    genes_tab = pd.read_csv(os.path.join(data_dir, "HSMM_genes.csv"), index_col=0, dtype=str, keep_default_na=False)
    missing = np.setdiff1d(expr.genes, genes_tab.index.to_numpy(dtype=str))
    if missing.size:
        raise SystemExit(f"{missing.size} genes of the matrix are missing from HSMM_genes.csv")
    # log10(x+1), drop constant genes, top-N most variable (by variance of the log values)
    prep = Preprocessing(log10p1=True, protein_coding_only=False, drop_constant=True, top_variable=n_top)
    fitted = prep.fit(expr)
    data = fitted.apply(expr)
    genes = data.genes
    annot = genes_tab.loc[genes]
    labels = np.array([f"{h}h" for h in hours], dtype=str)
    X = data.X.astype(dtype)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez_compressed(
        tmp,
        X=X,
        samples=data.samples.astype(str),
        genes=genes.astype(str),
        gene_symbols=annot["gene_short_name"].to_numpy(dtype=str),
        biotypes=annot["biotype"].to_numpy(dtype=str),
        labels=labels,
        State=np.asarray(state, dtype=str),
        transform=np.array("log10p1"),
    )
    os.replace(tmp, out)
    size = os.path.getsize(out)
    return {"shape": X.shape, "dtype": str(X.dtype), "bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(ROOT, "src", "factembed", "data", "hsmm_demo.npz"))
    ap.add_argument("--n-top", type=int, default=N_TOP)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    args = ap.parse_args(argv)
    info = build(args.data_dir, args.out, args.n_top, args.dtype)
    print(f"wrote {args.out}: {info['shape'][0]} cells x {info['shape'][1]} genes, {info['dtype']}, "
          f"{info['bytes'] / 1e6:.2f} MB")
    if info["bytes"] > MAX_BYTES:
        print(f"error: {info['bytes']} bytes exceeds the {MAX_BYTES} byte budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
