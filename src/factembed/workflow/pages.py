"""The interactive embedding page of a model directory (``factembed plot embedding``,
``factembed transform --html``): reading the tables it is drawn from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FEInputError


def read_embedding_table(path: str | os.PathLike, sample_dim: int):
    """``(Z, sample names, annotations)`` of an embedding table (columns ``sample``,
    ``FE1`` ... ``FEk``; every other column an annotation), checked against ``sample_dim``."""
    import pandas as pd

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FEInputError("no such file", path)
    sep = "\t" if path.endswith((".tsv", ".tsv.gz", ".txt", ".tab")) else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype={"sample": str, "label": str}, keep_default_na=False)
    except Exception as exc:
        raise FEInputError(f"cannot read the embedding table ({exc})", path) from None
    cols = [c for c in table.columns if str(c).startswith("FE") and str(c)[2:].isdigit()]
    if len(cols) != sample_dim:
        raise FEInputError(f"found {len(cols)} FE columns, the model has sample_dim={sample_dim}", path)
    try:
        Z = table[cols].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise FEInputError(f"the FE columns must be numbers ({exc})", path) from None
    samples = table["sample"].astype(str).tolist() if "sample" in table else [str(i) for i in range(len(table))]
    ann = table.drop(columns=cols + (["sample"] if "sample" in table else []))
    return Z, samples, ann.reset_index(drop=True)


def _label_name(fe) -> str:
    extra = getattr(fe, "extra_", None) or {}
    return extra.get("label_column") or ("time point" if extra.get("source") == "demo" else "label")


def _training_annotations(model: str | os.PathLike, fe):
    """The training samples' annotation columns from the model's ``embedding.csv`` (its
    ``label`` column renamed to the label column of the fit), or ``None``."""
    path = Path(model) / "embedding.csv"
    if not path.is_file():
        return None
    try:
        _, samples, ann = read_embedding_table(path, fe.net_.sample_dim)
    except FEInputError:
        return None
    names = getattr(fe, "sample_names_", None)
    if len(samples) != fe.net_.n_samples or (names is not None and samples != [str(v) for v in names]):
        return None
    return ann.rename(columns={"label": _label_name(fe)})


def model_page(model: str | os.PathLike, output: str | os.PathLike, new_embedding: str | os.PathLike | None = None,
               *, title: str | None = None, fe=None, new: dict | None = None) -> Path:
    """Write the interactive page of the model directory ``model`` to ``output``: its
    training embedding (annotated from its ``embedding.csv``), its gene embedding and,
    from the table ``new_embedding`` (as ``factembed transform`` writes it) or ``new``
    (``{"Z", "samples", "annotations"}``), new samples."""
    from ..plot.page import embedding_page
    from .data import load_model

    if fe is None:
        fe, _, _ = load_model(os.fspath(model))
    if new_embedding is not None:
        Z, samples, ann = read_embedding_table(new_embedding, fe.net_.sample_dim)
        new = {"Z": Z, "samples": samples, "annotations": ann.rename(columns={"label": _label_name(fe)})}
    out = Path(output)
    if out.suffix.lower() not in (".html", ".htm"):
        raise FEInputError("the interactive page is an HTML file: give a name ending in .html", out)
    embedding_page(fe.embedding_, getattr(fe, "sample_names_", None), _training_annotations(model, fe),
                   gene_embedding=fe.gene_embedding_, genes=getattr(fe, "feature_names_in_", None), new=new,
                   title=title or f"FE model {Path(model).name}", path=out)
    return out
