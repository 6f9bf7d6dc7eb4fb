"""What :func:`factembed.evaluate.evaluate` writes and shows: the summary tables (mean ± sd
over folds; the pooled c-index with its bootstrap interval), ``summary.md``, ``run.json``,
the arrays of fold 0 and the figures (metric by dimension for every task, distance
preservation, 2-D train/test embeddings, Kaplan-Meier curves of survival tasks)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._utils.files import atomic_output, write_text_atomic
from .tasks import EMBEDDING_TASK, METRIC_ORDER, MIXING_TASK


def summarize(df) -> "Any":
    """Mean, sd (over folds, ddof=1) and count per (method, dim, [task,] metric)."""
    keys = ["method", "dim"] + (["task"] if "task" in df.columns else []) + ["metric"]
    g = df.groupby(keys, sort=False)["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    return out


def method_order(methods) -> list[str]:
    pref = ["fe", "pca", "umap", "full"]
    return sorted(methods, key=lambda m: (pref.index(m) if m in pref else len(pref), m))


def _only_task(df, task: str | None):
    return df if task is None or "task" not in df.columns else df[df["task"] == task]


def summary_table(df, metrics: Sequence[str] | None = None, fmt: str = "{:.3f} ± {:.3f}", task: str | None = None):
    """Wide table: one row per (method, dim), one column per metric, 'mean ± sd'
    (of one ``task`` when given; otherwise the metric columns are ``task/metric`` when
    there are several tasks)."""
    import pandas as pd
    df = _only_task(df, task)
    if "fold" in df.columns:
        df = df[df["fold"] >= 0]  # the pooled survival rows: interval_table
    s = summarize(df)
    if "task" in s.columns and task is None and s.loc[s["task"] != EMBEDDING_TASK, "task"].nunique() > 1:
        s["metric"] = [m if t == EMBEDDING_TASK else f"{t}/{m}" for t, m in zip(s["task"], s["metric"])]
        rank = {m: i for i, m in enumerate(METRIC_ORDER)}
        metrics = metrics or sorted(set(s["metric"]), key=lambda m: (rank.get(m.split("/")[-1], 99), m))
    metrics = [m for m in (metrics or METRIC_ORDER) if m in set(s["metric"])]
    s["text"] = [fmt.format(m, 0.0 if not np.isfinite(sd) else sd) for m, sd in zip(s["mean"], s["sd"])]
    wide = s.pivot_table(index=["method", "dim"], columns="metric", values="text", aggfunc="first")
    wide = wide.reindex(columns=metrics)
    order = method_order(wide.index.get_level_values(0).unique())
    wide = wide.reindex(pd.MultiIndex.from_tuples(
        sorted(wide.index, key=lambda t: (order.index(t[0]), t[1])), names=["method", "dim"]))
    return wide.fillna("-")


def metric_by_dim_table(df, metric: str, fmt: str = "{:.3f} ± {:.3f}", task: str | None = None):
    """Rows = method, columns = dim, cells 'mean ± sd' of one metric (of one ``task``)."""
    s = summarize(_only_task(df, task))
    s = s[s["metric"] == metric]
    s = s.assign(text=[fmt.format(m, 0.0 if not np.isfinite(sd) else sd) for m, sd in zip(s["mean"], s["sd"])])
    wide = s.pivot_table(index="method", columns="dim", values="text", aggfunc="first")
    wide = wide.reindex(method_order(wide.index))
    return wide.fillna("-")


def interval_table(df, task: str, fmt: str = "{:.3f} [{:.3f}, {:.3f}]"):
    """Rows = method, columns = dim: the pooled c-index of a survival task with its 95% interval."""
    s = df[(df["task"] == task) & (df["fold"] == -1)]
    s = s.pivot_table(index=["method", "dim"], columns="metric", values="value", aggfunc="first").reset_index()
    s["text"] = [fmt.format(a, b, c) for a, b, c in zip(s["c_index_pooled"], s["c_index_low"], s["c_index_high"])]
    wide = s.pivot_table(index="method", columns="dim", values="text", aggfunc="first")
    return wide.reindex(method_order(wide.index)).fillna("-")


def _to_markdown(table) -> str:
    cols = [str(c) for c in table.columns]
    idx_names = [str(n) for n in (table.index.names if table.index.names[0] is not None else [""])]
    lines = ["| " + " | ".join(idx_names + cols) + " |", "|" + "---|" * (len(idx_names) + len(cols))]
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([str(k) for k in key] + [str(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_outputs(output, result: dict, *, data, methods, dims, n_folds, jobs, seed, n_pairs, fe_config,
                  preprocessing, figures: bool, title: str | None) -> list[Path]:
    """``results.csv``, ``summary.csv``, ``summary.md``, ``run.json``, ``fold0_arrays.npz``,
    ``survival_km.npz`` (with survival tasks) and the figures."""
    df, extras, tasks, km = result["results"], result["extras"], result["tasks"], result["km"]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_output(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    written.append(out / "results.csv")
    with atomic_output(out / "summary.csv") as tmp:
        summarize(df).to_csv(tmp, index=False)
    written.append(out / "summary.csv")
    md = [f"# evaluate: {title or data.source or 'data'}", "",
          f"{data.n_samples} samples x {data.n_genes} genes, {n_folds}-fold CV stratified by the first task "
          f"({tasks[0].name}); mean ± sd over folds.", ""]
    for t in tasks:
        head = f"## task {t.name} ({t.kind}; {int(t.known.sum())} samples, {t.n_missing} left out: missing value)"
        md += [head, ""]
        if t.name in result["chances"]:
            md += [f"chance (majority class) {result['chances'][t.name]:.3f}", ""]
        if t.kind == "survival" and (df["fold"] == -1).any():
            md += ["### c-index of the pooled test folds [bootstrap 95% interval]", "",
                   _to_markdown(interval_table(df, t.name)), ""]
        sub = df[(df["task"] == t.name) & (df["fold"] >= 0)]
        for metric in [m for m in METRIC_ORDER if m in set(sub["metric"]) and m != "n_test"]:
            md += [f"### {metric}", "", _to_markdown(metric_by_dim_table(sub, metric)), ""]
    for task in sorted(t for t in set(df["task"]) if str(t).startswith(f"{MIXING_TASK}:")):
        md += [f"## {task}: batch mixing within the groups of {tasks[0].name}", "",
               "batch_knn: 5-NN accuracy of the batch among training samples of the same group; near "
               "batch_chance (the majority batch's share) = mixed.", ""]
        sub = df[df["task"] == task]
        for metric in ("batch_knn", "batch_chance"):
            md += [f"### {metric}", "", _to_markdown(metric_by_dim_table(sub, metric)), ""]
    emb = df[df["task"] == EMBEDDING_TASK]
    md += ["## embedding (task-independent)", ""]
    for metric in [m for m in METRIC_ORDER if m in set(emb["metric"])]:
        md += [f"### {metric}", "", _to_markdown(metric_by_dim_table(emb, metric)), ""]
    write_text_atomic(out / "summary.md", "\n".join(md))
    written.append(out / "summary.md")
    run = {"data": str(data.source), "n_samples": data.n_samples, "n_genes": data.n_genes,
           "tasks": [{"kind": t.kind, "name": t.name, "columns": list(t.columns), "n_used": int(t.known.sum()),
                      "n_missing": t.n_missing} for t in tasks],
           "chance": result["chance"], "chances": result["chances"], "folds": n_folds,
           "stratified_by": tasks[0].name, "methods": list(methods), "dims": list(dims),
           "jobs": jobs, "seed": seed, "n_pairs": n_pairs, "seconds": result["seconds"],
           "fe_config": fe_config.to_dict(), "preprocessing": preprocessing.to_dict()}
    write_text_atomic(out / "run.json", json.dumps(run, indent=1))
    written.append(out / "run.json")
    arrays = {f"{m}__{d}__{k}": v for (m, d), e in extras.items() for k, v in e.items()}
    np.savez_compressed(out / "fold0_arrays.npz", **arrays)
    written.append(out / "fold0_arrays.npz")
    if km:
        index = {t.name: i for i, t in enumerate(tasks)}
        np.savez_compressed(out / "survival_km.npz", **{f"{index[t]}__{m}__{d}__{k}": v
                                                        for (t, m, d), e in km.items() for k, v in e.items()})
        written.append(out / "survival_km.npz")
    if figures:
        written += evaluation_figures(out, df=df, extras=extras, km=km, run=run, title=title)
    return written


def plot_kaplan_meier(km: dict, path, *, title: str, pdf: bool = True) -> list[Path]:
    """Kaplan-Meier curves (scikit-survival) of the pooled test folds split at the
    training fold's median predicted risk; one panel per (method, dim), log-rank p in
    the title.  ``km``: (method, dim) -> {time, event, high}."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    from ..plot import figures as plot
    from .tasks import survival_y
    plt = plot._plt()
    methods = method_order({m for m, _ in km})
    dims = sorted({d for _, d in km})
    fig, axes = plt.subplots(len(methods), len(dims), figsize=(2.8 * len(dims) + 0.8, 2.5 * len(methods) + 0.8),
                             squeeze=False, sharex=True, sharey=True)
    for i, m in enumerate(methods):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            e = km.get((m, d))
            if e is None:
                ax.set_axis_off()
                continue
            time, event, high = np.asarray(e["time"]), np.asarray(e["event"], bool), np.asarray(e["high"], bool)
            for grp, color, name in ((~high, "tab:blue", "low risk"), (high, "tab:red", "high risk")):
                if grp.sum() == 0:
                    continue
                t, s = kaplan_meier_estimator(event[grp], time[grp])
                ax.step(t, s, where="post", color=color, label=f"{name} (n={int(grp.sum())})")
            p = float("nan")
            if 0 < high.sum() < len(high):
                p = float(compare_survival(survival_y(time, event), high.astype(int))[1])
            ax.set_title(f"{m.upper() if m != 'full' else 'full profile'} d={d}  log-rank p={p:.2g}", fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if i == len(methods) - 1:
                ax.set_xlabel("time")
            if j == 0:
                ax.set_ylabel("survival probability")
            ax.legend(fontsize=6, loc="lower left", frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plot._save(fig, path, pdf)


def _read_dir(out: Path, df, extras, km, run):
    import pandas as pd
    if df is None:
        df = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    if run is None and (out / "run.json").is_file():
        run = json.loads((out / "run.json").read_text())
    run = run or {}
    if extras is None:
        extras = {}
        p = out / "fold0_arrays.npz"
        if p.is_file():
            with np.load(p, allow_pickle=False) as z:
                for key in z.files:
                    m, d, k = key.split("__")
                    extras.setdefault((m, int(d)), {})[k] = z[key]
    if km is None:
        km = {}
        p = out / "survival_km.npz"
        names = [t["name"] for t in run.get("tasks", [])]
        if p.is_file() and names:
            with np.load(p, allow_pickle=False) as z:
                for key in z.files:
                    i, m, d, k = key.split("__")
                    km.setdefault((names[int(i)], m, int(d)), {})[k] = z[key]
    return df, extras, km, run


def evaluation_figures(out: str | os.PathLike, *, df=None, extras: dict | None = None, km: dict | None = None,
                       run: dict | None = None, chance: float | None = None, title: str | None = None) -> list[Path]:
    """The figures of an evaluation directory (``results.csv``, ``run.json``,
    ``fold0_arrays.npz`` and ``survival_km.npz`` are read for what is not given)."""
    from ..plot import figures as plot
    out = Path(out)
    df, extras, km, run = _read_dir(out, df, extras, km, run)
    if "task" not in df.columns:  # a directory written before tasks
        df = df.assign(task=["embedding" if m in ("distance_r", "recon_r") or m.endswith("seconds") else "label"
                             for m in df["metric"]])
        run.setdefault("tasks", [{"kind": "classification", "name": "label"}])
    tasks = run.get("tasks") or [{"kind": "classification", "name": n} for n in df["task"].unique()
                                 if n != EMBEDDING_TASK]
    chances = run.get("chances") or {}
    suffix = f" ({title})" if title else ""
    written: list[Path] = []
    first_cls = True
    for t in tasks:
        sub = df[(df["task"] == t["name"]) & (df["fold"] >= 0)]
        if sub.empty:
            continue
        if t["kind"] == "classification":
            name = "accuracy_by_dim" if first_cls else f"accuracy_by_dim_{_safe(t['name'])}"
            first_cls = False
            c = chance if chance is not None and name == "accuracy_by_dim" else chances.get(t["name"])
            written += plot.plot_accuracy_by_dim(sub, out / name, chance=c,
                                                 title=f"{t['name']}: accuracy by dimension, test folds embedded "
                                                       f"out of sample" + suffix)
        elif t["kind"] == "regression":
            written += plot.plot_accuracy_by_dim(
                sub, out / f"regression_by_dim_{_safe(t['name'])}",
                metrics=[m for m in ("knn_r2", "ridge_r2", "knn_spearman_r", "ridge_spearman_r")
                         if m in set(sub["metric"])], ylabel="test fold (mean ± sd over folds)",
                title=f"{t['name']}: regression by dimension, test folds embedded out of sample" + suffix)
        else:
            safe = _safe(t["name"].split(":", 1)[-1])
            written += plot.plot_accuracy_by_dim(sub, out / f"c_index_by_dim_{safe}", metrics=["c_index"],
                                                 chance=0.5, ylabel="Harrell's c-index (mean ± sd over folds)",
                                                 title=f"{t['name']}: Cox model on the embedding" + suffix)
            cells = {(m, d): e for (tn, m, d), e in km.items() if tn == t["name"]}
            if cells:
                written += plot_kaplan_meier(cells, out / f"kaplan_meier_{safe}",
                                             title=f"{t['name']}: pooled test folds split at the training fold's "
                                                   f"median predicted risk" + suffix)
    panels = []
    for (m, d), e in sorted(extras.items(), key=lambda kv: (method_order([kv[0][0], "fe", "pca", "umap", "full"])
                                                             .index(kv[0][0]), kv[0][1])):
        if m == "full" or "d_emb" not in e:
            continue
        panels.append({"method": m, "dim": d, "d_expr": e["d_expr"], "d_emb": e["d_emb"]})
    if panels:
        written += plot.plot_distance_scatter(panels, out / "distance_scatter",
                                              title="Distance preservation on test fold 0" + suffix)
    for (m, d), e in extras.items():
        if "Z_train" in e and "y_train" in e and d == 2:
            written += plot.plot_train_test_embedding(
                e["Z_train"], e["y_train"], e["Z_test"], e["y_test"], out / f"train_test_{m}_2d",
                title=f"{m.upper()} 2-D: training fold (dots) and test fold embedded out of sample "
                      f"(triangles){suffix}", axis_prefix=m.upper())
    return written
