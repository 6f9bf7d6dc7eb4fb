"""Hyper-parameter grid: L2 (columns) x gene-embedding size (rows), one model per cell.

Each cell ``(gene_dim, l2)`` is trained on the whole (preprocessed) data set and saved in
its own directory ``OUT/cells/gd<gene_dim>_l2<l2>/``:

* ``model.json`` + ``weights.safetensors`` (the model, :meth:`FactorizedEmbeddings.save`),
* ``embedding.npy`` (the training sample embedding),
* ``result.json`` (written last, atomically: the cell's "done" marker) with the
  training time, speed, final loss / Pearson r and, when labels are known, the
  5-fold cross-validated kNN accuracy on the 2-D training embedding.

A cell whose ``result.json`` (and the files it names) exist is skipped, so an
interrupted sweep resumes where it stopped; ``shard=(i, N)`` runs only the cells
``k`` with ``k % N == i`` (0-based), so N machines can split the grid.  After the
cells of the shard are done, the figures are drawn from every finished cell:
density grid, scatter grid (+ legend sheet), accuracy heat-map, speed by gene_dim.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .._utils.files import atomic_output, write_bytes_atomic, write_text_atomic
from ..config import FEConfig
from .tasks import knn_accuracy
from ..estimator.model_files import META_FILE, WEIGHTS_FILE

RESULT_FILE = "result.json"
EMBEDDING_FILE = "embedding.npy"


def cell_name(gene_dim: int, l2: float) -> str:
    return f"gd{int(gene_dim)}_l2{'0' if l2 == 0 else format(float(l2), 'g')}"


def grid_cells(gene_dims: Sequence[int], l2s: Sequence[float]) -> list[tuple[int, float]]:
    """All cells, row-major (gene_dim outer, l2 inner), in the order given."""
    return [(int(gd), float(l2)) for gd in gene_dims for l2 in l2s]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> (i, N); None -> (0, 1)."""
    if text is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return i, n


def shard_cells(cells: Sequence, shard: tuple[int, int]) -> list:
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i]


def load_cell(cell_dir: Path) -> dict | None:
    """The cell's result (with its embedding under ``"embedding"``) if it is finished."""
    res = cell_dir / RESULT_FILE
    if not res.is_file():
        return None
    try:
        result = json.loads(res.read_text())
        for name in result.get("files", []):
            if not (cell_dir / name).is_file():
                return None
        result["embedding"] = np.load(cell_dir / EMBEDDING_FILE, allow_pickle=False)
    except (ValueError, OSError):
        return None
    return result


def fit_cell(X: np.ndarray, gene_dim: int, l2: float, config: FEConfig, cell_dir: Path, *,
             labels: np.ndarray | None = None, cv_folds: int = 5, extra: dict | None = None) -> dict:
    """Train one cell and write its files (result.json last)."""
    from ..estimator.factorized_embeddings import FactorizedEmbeddings
    cfg = replace(config, gene_dim=int(gene_dim), l2=float(l2))
    fe = FactorizedEmbeddings.from_config(cfg)
    t0 = time.perf_counter()
    fe.fit(X)
    seconds = time.perf_counter() - t0
    cell_dir.mkdir(parents=True, exist_ok=True)
    fe.save(cell_dir, extra={**(extra or {}), "sweep_cell": {"gene_dim": int(gene_dim), "l2": float(l2)}})
    Z = fe.embedding_
    with atomic_output(cell_dir / EMBEDDING_FILE) as tmp, open(tmp, "wb") as fh:
        np.save(fh, Z, allow_pickle=False)
    hist = fe.history_
    k = max(1, len(hist.get("loss", [])) // 100)
    result = {"gene_dim": int(gene_dim), "l2": float(l2), "n_steps": int(fe.n_steps_), "fit_seconds": seconds,
              "it_per_s": fe.n_steps_ / seconds if seconds > 0 else float("nan"),
              "final_loss": float(np.nanmean(hist["loss"][-k:])) if hist.get("loss") else float("nan"),
              "final_pearson_r": float(np.nanmean(hist["pearson_r"][-k:])) if hist.get("pearson_r") else float("nan"),
              "embedding_sd": float(np.asarray(Z).std()),
              "config": cfg.to_dict(), "files": [META_FILE, WEIGHTS_FILE, EMBEDDING_FILE]}
    if labels is not None and Z.shape[0] >= 2 * cv_folds:
        acc, sd, _ = knn_accuracy(Z, labels, cv_folds, seed=cfg.random_state or 0)
        result.update(accuracy=acc, accuracy_sd=sd, cv_folds=cv_folds)
    write_bytes_atomic(cell_dir / RESULT_FILE, json.dumps(result, indent=1).encode())
    result["embedding"] = Z
    return result


def run_sweep(data, *, l2s: Sequence[float], gene_dims: Sequence[int], output: str | os.PathLike,
              config: FEConfig | None = None, preprocessing=None, shard: tuple[int, int] = (0, 1),
              cv_folds: int = 5, progress: bool = True, figures: bool = True,
              label_name: str = "label", title: str | None = None) -> dict:
    """Train the grid's cells of this shard that are not finished yet, then write
    ``sweep_results.csv``, ``gene_dim_speed.csv`` and the figures from all finished cells.

    Returns ``{"cells": [(gene_dim, l2), ...] of this shard, "trained": [...], "skipped": [...],
    "results": DataFrame of all finished cells, "written": paths}``."""
    from tqdm.auto import tqdm

    from ..preprocessing import Preprocessing

    if not l2s or not gene_dims:
        raise ValueError("the grid needs at least one L2 value and one gene_dim")
    if any(float(v) < 0 for v in l2s) or any(int(g) < 1 for g in gene_dims):
        raise ValueError("L2 values must be >= 0 and gene_dims positive integers")
    config = config or FEConfig()
    if config.sample_dim != 2:
        warnings.warn(f"sample_dim={config.sample_dim}: the grid figures show the first two dimensions",
                      stacklevel=2)
    if config.random_state is None:
        config = replace(config, random_state=0)
    config = replace(config, verbose=False) if progress else config
    preprocessing = preprocessing or Preprocessing(log10p1=False, protein_coding_only=False, drop_constant=True)
    fitted, pdata = preprocessing.fit_apply(data)
    labels = None if pdata.labels is None else np.asarray(pdata.labels).astype(str)
    out = Path(output)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells = grid_cells(gene_dims, l2s)
    mine = shard_cells(cells, shard)
    trained, skipped = [], []
    bar = tqdm(mine, desc=f"factembed sweep (shard {shard[0]}/{shard[1]})", unit="cell", disable=not progress)
    extra = {"preprocessing": fitted.to_dict(), "source": data.source}
    for gd, l2 in bar:
        cdir = out / "cells" / cell_name(gd, l2)
        bar.set_postfix_str(f"gene_dim={gd} l2={l2:g}", refresh=True)
        if load_cell(cdir) is not None:
            skipped.append((gd, l2))
            continue
        fit_cell(pdata.X, gd, l2, config, cdir, labels=labels, cv_folds=cv_folds, extra=extra)
        trained.append((gd, l2))
    bar.close()
    meta = {"l2s": [float(v) for v in l2s], "gene_dims": [int(g) for g in gene_dims], "source": str(data.source),
            "n_samples": pdata.n_samples, "n_genes": pdata.n_genes, "label_name": label_name, "title": title,
            "config": config.to_dict()}
    write_text_atomic(out / "sweep.json", json.dumps(meta, indent=1))
    if labels is not None:
        np.save(out / "labels.npy", labels.astype(str), allow_pickle=False)
    df, written = sweep_outputs(out, figures=figures)
    return {"cells": mine, "trained": trained, "skipped": skipped, "results": df, "written": written}


def collect(out: str | os.PathLike, gene_dims: Sequence[int], l2s: Sequence[float]):
    """(DataFrame of finished cells, {(gene_dim, l2): embedding})."""
    import pandas as pd
    out = Path(out)
    rows, embeddings = [], {}
    for gd, l2 in grid_cells(gene_dims, l2s):
        res = load_cell(out / "cells" / cell_name(gd, l2))
        if res is None:
            continue
        embeddings[(gd, l2)] = res.pop("embedding")
        res.pop("config", None)
        res.pop("files", None)
        rows.append(res)
    cols = ["gene_dim", "l2", "accuracy", "accuracy_sd", "n_steps", "fit_seconds", "it_per_s", "final_loss",
            "final_pearson_r", "embedding_sd"]
    df = pd.DataFrame(rows)
    df = df.reindex(columns=[c for c in cols if c in df.columns or not rows])
    return df, embeddings


def sweep_outputs(out: str | os.PathLike, figures: bool = True) -> tuple:
    """Tables and figures of a sweep directory from its finished cells."""
    from ..plot import figures as plot
    out = Path(out)
    meta = json.loads((out / "sweep.json").read_text())
    gene_dims, l2s = meta["gene_dims"], meta["l2s"]
    df, embeddings = collect(out, gene_dims, l2s)
    written = []
    with atomic_output(out / "sweep_results.csv") as tmp:
        df.to_csv(tmp, index=False)
    written.append(out / "sweep_results.csv")
    if len(df):
        df[["gene_dim", "it_per_s", "l2"]].to_csv(out / "gene_dim_speed.csv", index=False)
        written.append(out / "gene_dim_speed.csv")
    if not figures or not embeddings:
        return df, written
    labels = np.load(out / "labels.npy", allow_pickle=False) if (out / "labels.npy").is_file() else None
    suffix = f" - {meta['title']}" if meta.get("title") else ""
    limits = plot.sweep_axis_limits(embeddings)
    written += plot.plot_sweep_density_grid(embeddings, gene_dims, l2s, out / "density_grid", limits=limits,
                                            title="Density of the 2-D sample embedding (30 x 30 bins, common axes)"
                                                  + suffix)
    written += plot.plot_sweep_scatter_grid(embeddings, labels, gene_dims, l2s, out / "scatter_grid", limits=limits,
                                            label_name=meta.get("label_name") or "label",
                                            title="2-D sample embedding per cell, coloured by label" + suffix)
    if "accuracy" in df.columns and df["accuracy"].notna().any():
        written += plot.plot_sweep_heatmap(df, out / "accuracy_heatmap", value="accuracy",
                                           title="5-fold CV kNN accuracy on the 2-D training embedding" + suffix,
                                           cbar_label="accuracy")
    if len(df):
        written += plot.plot_speed_by_gene_dim(df[["gene_dim", "it_per_s"]], out / "speed_by_gene_dim",
                                               title="Training speed by gene-embedding size (this sweep)" + suffix)
    return df, written
