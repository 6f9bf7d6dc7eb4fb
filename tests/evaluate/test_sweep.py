"""factembed.evaluate.sweep: one model per (gene_dim, l2) cell, resumable, shardable, figures."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import planted
from factembed import FactorizedEmbeddings
from factembed.evaluate import sweep as sw
from factembed.config import FEConfig
from factembed.io import ExpressionData, write_expression

CFG = FEConfig(hidden=(8,), n_steps=30, batch_samples=8, random_state=0, verbose=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=40, m=24, k=4):
    X, y = planted(n=n, m=m, k=k)
    return ExpressionData(X, [f"s{i}" for i in range(n)], [f"g{j}" for j in range(m)],
                          labels=np.array([f"type{v}" for v in y]))


@pytest.fixture
def fit_counter(monkeypatch):
    calls = []
    orig = FactorizedEmbeddings.fit

    def fit(self, X, *a, **k):
        calls.append((self.gene_dim, self.l2))
        if getattr(fit, "fail_at", None) == len(calls):
            raise KeyboardInterrupt("simulated interruption")
        return orig(self, X, *a, **k)
    monkeypatch.setattr(FactorizedEmbeddings, "fit", fit)
    fit.calls = calls
    return fit


def _run(data, out, **kw):
    kw.setdefault("l2s", [0.0, 1e-5])
    kw.setdefault("gene_dims", [2, 4])
    return sw.run_sweep(data, output=out, config=CFG, progress=False, **kw)


def test_resume_skips_finished_cells(tmp_path, fit_counter):
    data = _data()
    res = _run(data, tmp_path, figures=False)
    assert len(fit_counter.calls) == 4 and len(res["trained"]) == 4
    for gd, l2 in sw.grid_cells([2, 4], [0.0, 1e-5]):
        cdir = tmp_path / "cells" / sw.cell_name(gd, l2)
        assert {"model.json", "weights.safetensors", "embedding.npy", "result.json"} <= {p.name for p in cdir.iterdir()}
        r = json.loads((cdir / "result.json").read_text())
        assert r["gene_dim"] == gd and r["l2"] == l2 and 0 <= r["accuracy"] <= 1
        m = FactorizedEmbeddings.load(cdir)
        assert m.gene_dim == gd and m.l2 == l2
    res = _run(data, tmp_path, figures=False)
    assert len(fit_counter.calls) == 4, "finished cells were retrained"
    assert len(res["skipped"]) == 4 and not res["trained"]
    # a cell without its result file (killed after saving the model) is redone, alone
    (tmp_path / "cells" / sw.cell_name(4, 0.0) / "result.json").unlink()
    res = _run(data, tmp_path, figures=False)
    assert fit_counter.calls[4:] == [(4, 0.0)]
    assert len(res["results"]) == 4


def test_interrupted_sweep_resumes(tmp_path, fit_counter):
    data = _data()
    fit_counter.fail_at = 3
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path, figures=False)
    done = [p.parent.name for p in (tmp_path / "cells").glob("*/result.json")]
    assert sorted(done) == sorted([sw.cell_name(2, 0.0), sw.cell_name(2, 1e-5)])
    fit_counter.fail_at = None
    res = _run(data, tmp_path, figures=False)
    assert res["trained"] == [(4, 0.0), (4, 1e-5)] and len(res["skipped"]) == 2
    assert len(fit_counter.calls) == 5  # 2 finished + 1 interrupted + 2 resumed


def test_shards_partition_the_grid(tmp_path, fit_counter):
    cells = sw.grid_cells([10, 25, 50], [0, 1e-8, 1e-7])
    parts = [sw.shard_cells(cells, (i, 4)) for i in range(4)]
    assert sorted(c for p in parts for c in p) == sorted(cells)
    assert sum(len(p) for p in parts) == len(cells)
    assert sw.parse_shard("1/3") == (1, 3) and sw.parse_shard(None) == (0, 1)
    for bad in ("3/3", "-1/2", "a/b", "2"):
        with pytest.raises(ValueError):
            sw.parse_shard(bad)
    data = _data()
    r0 = _run(data, tmp_path, shard=(0, 2), figures=False)
    r1 = _run(data, tmp_path, shard=(1, 2), figures=False)
    assert not set(r0["trained"]) & set(r1["trained"])
    assert sorted(r0["trained"] + r1["trained"]) == sorted(sw.grid_cells([2, 4], [0.0, 1e-5]))
    assert len(fit_counter.calls) == 4
    assert len(r1["results"]) == 4  # the last shard's figures/tables cover every finished cell


def test_sweep_figures_and_tables(tmp_path):
    import matplotlib.image as mpimg
    data = _data(n=60, m=20, k=6)
    res = _run(data, tmp_path)
    df = pd.read_csv(tmp_path / "sweep_results.csv")
    assert len(df) == 4 and df["accuracy"].between(0, 1).all()
    speed = pd.read_csv(tmp_path / "gene_dim_speed.csv")
    assert {"gene_dim", "it_per_s"} <= set(speed.columns)
    for name in ("density_grid", "scatter_grid", "scatter_grid_legend", "accuracy_heatmap", "speed_by_gene_dim"):
        for ext in (".png", ".pdf"):
            p = tmp_path / f"{name}{ext}"
            assert p.is_file() and p.stat().st_size > 0, p
            assert p in res["written"]
        assert mpimg.imread(tmp_path / f"{name}.png").shape[0] > 50


def test_cli_sweep(tmp_path, capsys):
    from factembed.cli import main
    path = tmp_path / "d.npz"
    write_expression(path, _data())
    out = tmp_path / "sw"
    args = ["sweep", str(path), "--l2", "0,1e-6", "--gene-dims", "3", "--hidden", "8", "--steps", "20",
            "--no-log", "-o", str(out), "--quiet", "--no-figures"]
    assert main(args + ["--shard", "1/2"]) == 0
    assert "trained 1" in capsys.readouterr().out
    assert main(args) == 0
    assert "trained 1, skipped 1" in capsys.readouterr().out
    r = json.loads((out / "cells" / sw.cell_name(3, 1e-6) / "result.json").read_text())
    assert r["config"]["l2"] == 1e-6 and r["config"]["gene_dim"] == 3 and r["config"]["hidden"] == [8]
    assert main(args + ["--shard", "2/2"]) == 1
