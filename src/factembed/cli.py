"""The ``factembed`` command.

Subcommands: ``demo``, ``fit``, ``transform``, ``reconstruct``, ``info``.  Errors are
one line (``factembed: error: FILE: problem``) with a non-zero exit status; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from .config import FEConfig

#: help text of every hyper-parameter option (FEConfig field -> text)
CONFIG_HELP = {
    "sample_dim": "size of each sample embedding (default %(default)s)",
    "gene_dim": "size of each gene embedding (default %(default)s)",
    "hidden": "widths of the decoder's ReLU hidden layers, comma separated (default 100,50,50)",
    "l2": "weight of the L2 penalty on all parameters (default %(default)s)",
    "lr": "Adam learning rate for training (default %(default)s)",
    "batch_samples": "whole profiles per training step (default %(default)s)",
    "n_steps": "training steps (default: 40 passes over the samples, clipped to 2,000..100,000)",
    "infer_steps": "Adam steps when embedding new samples (default %(default)s)",
    "infer_lr": "Adam learning rate when embedding new samples (default %(default)s)",
    "infer_genes": "genes per inference step, walked through a random permutation (default %(default)s; all when fewer)",
    "init_genes": "genes used to pick the start point of new samples (default %(default)s)",
    "device": "auto, cpu, cuda or cuda:N (default %(default)s)",
    "precision": "fp32, bf16 or auto (bf16 only where the hardware runs it natively) (default %(default)s)",
    "gene_chunk": "genes per fused block (default: automatic)",
    "random_state": "random seed (default: none, i.e. not reproducible)",
    "verbose": None,  # driven by --quiet
}
_OPTION_NAMES = {"random_state": "--seed", "n_steps": "--steps"}


def _number_list(kind, what: str):
    """An argparse type: comma-separated values of ``kind`` (at least one)."""
    def parse(text: str):
        try:
            vals = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}s, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected at least one {what}")
        return vals
    return parse


_int_list = _number_list(int, "integer")


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(_int_list(text))


_float_list = _number_list(float, "number")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`FEConfig` field, named after it."""
    defaults = FEConfig()
    group = parser.add_argument_group("model and training hyper-parameters")
    for f in fields(FEConfig):
        if CONFIG_HELP.get(f.name) is None:
            continue
        opt = _OPTION_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        default = getattr(defaults, f.name)
        if f.name == "hidden":
            kind = _int_tuple
        elif isinstance(default, float):
            kind = float
        elif isinstance(default, int) or f.name in ("n_steps", "gene_chunk", "random_state"):
            kind = int
        else:
            kind = str
        group.add_argument(opt, dest=f.name, type=kind, default=default, help=CONFIG_HELP[f.name])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> FEConfig:
    values = {f.name: getattr(args, f.name) for f in fields(FEConfig) if hasattr(args, f.name)}
    values["verbose"] = not getattr(args, "quiet", False)
    return FEConfig(**values)


def _add_read_options(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    g = parser.add_argument_group("input file")
    g.add_argument("--format", dest="fmt", default=None,
                   help="force the input format: h5, h5ad, csv, tsv, txt, npy, npz, parquet "
                        "(default: from the extension)")
    g.add_argument("--samples-as-columns", action="store_true",
                   help="the table/HDF5 has genes as rows and samples as columns")
    if labels:
        g.add_argument("--label-column", default=None,
                       help="column holding the sample labels (in the table, the .h5ad obs, or --labels)")
        g.add_argument("--labels", dest="labels_path", default=None,
                       help="CSV/TSV of sample annotations (first column = sample id)")


def _read(args: argparse.Namespace, path: str):
    from .io import read_expression
    return read_expression(path, fmt=args.fmt, samples_as_rows=False if args.samples_as_columns else None,
                           label_column=getattr(args, "label_column", None),
                           labels_path=getattr(args, "labels_path", None))


def _summary_line(history: dict) -> str:
    loss = np.asarray(history.get("loss", []), dtype=float)
    r = np.asarray(history.get("pearson_r", []), dtype=float)
    if loss.size == 0:
        return "no training history recorded"
    k = max(1, loss.size // 100)
    return f"final loss {np.nanmean(loss[-k:]):.4g}, final Pearson r {np.nanmean(r[-k:]):.4f} (mean of last {k} steps)"


def _write_fit_outputs(fe, data, out: Path, extra: dict, title: str) -> list[Path]:
    """Model, embedding table, history table and the two figures, into ``out``."""
    import pandas as pd

    from .io import _atomic_output, write_embedding_table
    from .plot import plot_embedding, plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    fe.save(out, extra=extra)
    written = [out / "model.json", out / "weights.safetensors"]
    write_embedding_table(out / "embedding.csv", fe.embedding_, data.samples, data.labels)
    written.append(out / "embedding.csv")
    with _atomic_output(out / "history.csv") as tmp:
        pd.DataFrame(fe.history_).to_csv(tmp, index=False)
    written.append(out / "history.csv")
    written += plot_embedding(fe.embedding_, data.labels, out / "embedding.png", title=title,
                              label_name=extra.get("label_column") or "label")
    written += plot_training_curves(fe.history_, out / "training.png", title=title)
    return written


def _fit_data(data, cfg: FEConfig, preprocessing, out: Path, title: str, label_column: str | None,
              checkpoint: dict | None = None):
    from .estimator import FactorizedEmbeddings

    fitted, data = preprocessing.fit_apply(data, copy=False)   # one copy of the matrix in memory
    empty = ~np.any(data.X != data.X[:, :1], axis=1) if data.n_genes > 1 else np.zeros(data.n_samples, bool)
    if empty.any():
        import warnings
        warnings.warn(f"{data.source or 'data'}: {int(empty.sum())} sample(s) have a constant (e.g. all-zero) "
                      f"profile and were left out of training (first: {data.samples[empty][0]})", stacklevel=2)
        data = data.subset_samples(np.flatnonzero(~empty))
    print(f"training on {data.n_samples:,} samples x {data.n_genes:,} genes "
          f"({fitted.config})", file=sys.stderr)
    fe = FactorizedEmbeddings.from_config(cfg)
    t0 = time.perf_counter()
    fe.fit(data.X, sample_names=data.samples, gene_names=data.genes, **(checkpoint or {}))
    seconds = time.perf_counter() - t0
    extra = {"preprocessing": fitted.to_dict(), "label_column": label_column,
             "source": data.source, "fit_seconds": seconds}
    written = _write_fit_outputs(fe, data, out, extra, title)
    return fe, data, seconds, written


def cmd_fit(args: argparse.Namespace) -> int:
    from .io import Preprocessing

    if getattr(args, "distributed", None):
        from .distributed import launch_from_cli
        return launch_from_cli(args)
    if getattr(args, "backed", False):
        from .sources import cli_fit_backed
        return cli_fit_backed(args)
    cfg = config_from_args(args)
    data = _read(args, args.data)
    pre = Preprocessing(log10p1=not args.no_log and data.transform != "log10p1",
                        protein_coding_only=not args.all_biotypes,
                        drop_constant=not args.keep_constant, top_variable=args.top_genes)
    checkpoint = None
    if args.checkpoint_every > 0:
        checkpoint = {"checkpoint_dir": args.checkpoint_dir or str(Path(args.output) / "checkpoints"),
                      "checkpoint_every": args.checkpoint_every, "resume": args.resume,
                      "divergence_retries": args.divergence_retries}
    elif args.resume:
        raise ValueError("--resume needs checkpoints (--checkpoint-every > 0)")
    fe, data, seconds, written = _fit_data(data, cfg, pre, Path(args.output),
                                           f"FE of {Path(args.data).name}", args.label_column, checkpoint)
    print(f"fitted {fe.n_steps_:,} steps in {seconds:.1f} s; {_summary_line(fe.history_)}")
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from .datasets import load_demo
    from .io import Preprocessing

    cfg = config_from_args(args)
    t_all = time.perf_counter()
    data = load_demo()
    pre = Preprocessing(log10p1=False, protein_coding_only=False, drop_constant=True)
    fe, data, seconds, written = _fit_data(data, cfg, pre, Path(args.output),
                                           "FE of HSMM myoblasts (bundled demo)", "Hours")
    acc = cross_val_score(KNeighborsClassifier(5), fe.embedding_, data.labels, cv=5).mean()
    print(f"demo: {data.n_samples} cells x {data.n_genes} genes, {fe.n_steps_:,} steps in {seconds:.1f} s "
          f"({fe.n_steps_ / seconds:.0f} it/s); {_summary_line(fe.history_)}")
    print(f"5-fold kNN accuracy of the time point (0/24/48/72 h) from the 2-D embedding: {acc:.3f} "
          f"(chance {max(np.unique(data.labels, return_counts=True)[1]) / data.n_samples:.3f})")
    for p in written:
        print(f"wrote {p}")
    print(f"total wall time {time.perf_counter() - t_all:.1f} s")
    return 0


def _load_model(path: str):
    from .estimator import FactorizedEmbeddings
    from .io import FittedPreprocessing

    fe = FactorizedEmbeddings.load(path)
    pre = None
    extra = getattr(fe, "extra_", None) or {}
    if extra.get("preprocessing"):
        pre = FittedPreprocessing.from_dict(extra["preprocessing"])
    return fe, pre, extra


def read_for_model(args: argparse.Namespace, fe, pre):
    """``args.data`` read and brought to the model's genes: its recorded preprocessing
    re-applied (genes matched by name, ``--fill-missing``), or the gene count checked."""
    from .errors import FEInputError
    data = _read(args, args.data)
    if pre is not None:
        return pre.apply(data, fill_missing=args.fill_missing)
    if data.n_genes != fe.n_features_in_:
        raise FEInputError(f"{data.n_genes} genes but the model has {fe.n_features_in_}", data.source)
    return data


def cmd_transform(args: argparse.Namespace) -> int:
    from .io import write_embedding_h5ad, write_embedding_table

    fe, pre, _ = _load_model(args.model)
    if args.quiet:
        fe.set_params(verbose=False)
    data = read_for_model(args, fe, pre)
    Z = fe.transform(data.X)
    out = args.output
    if out.endswith(".h5ad"):
        write_embedding_h5ad(out, data, Z, fe.gene_embedding_)
    else:
        write_embedding_table(out, Z, data.samples, data.labels)
    print(f"embedded {data.n_samples:,} samples; wrote {out}")
    if args.plot:
        from .plot import draw_embedding, _plt, _save
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.5, 5))
        colors = draw_embedding(ax, fe.embedding_, None, size=6)
        colors = draw_embedding(ax, Z, data.labels, marker="^", size=30, hollow=True)
        ax.set_title("training samples (grey) and new samples (triangles)")
        ax.set_xlabel("FE1"); ax.set_ylabel("FE2")
        if colors:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        for p in _save(fig, args.plot, pdf=False):
            print(f"wrote {p}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import pandas as pd

    from .errors import FEInputError
    from .io import ExpressionData, write_expression

    fe, pre, _ = _load_model(args.model)
    path = args.embedding
    if not os.path.isfile(path):
        raise FEInputError("no such file", path)
    sep = "\t" if path.endswith((".tsv", ".tsv.gz", ".txt")) else ","
    try:
        table = pd.read_csv(path, sep=sep)
    except Exception as exc:
        raise FEInputError(f"cannot read the embedding table ({exc})", path) from None
    cols = [c for c in table.columns if str(c).startswith("FE")]
    if len(cols) != fe.net_.sample_dim:
        raise FEInputError(f"found {len(cols)} FE columns, the model has sample_dim={fe.net_.sample_dim}", path)
    try:
        Z = table[cols].to_numpy(dtype=np.float32)
    except ValueError:
        raise FEInputError("embedding columns are not numeric", path) from None
    samples = table["sample"].astype(str).to_numpy() if "sample" in table else \
        np.array([f"sample_{i}" for i in range(len(table))])
    X = fe.inverse_transform(Z)
    genes = fe.feature_names_in_ if getattr(fe, "feature_names_in_", None) is not None else \
        np.array([f"gene_{j}" for j in range(X.shape[1])])
    labels = table["label"].astype(str).to_numpy() if "label" in table else None
    write_expression(args.output, ExpressionData(X=X, samples=samples, genes=np.asarray(genes, dtype=str),
                                                 labels=labels,
                                                 transform="log10p1" if pre is not None and pre.log10p1 else None))
    print(f"reconstructed {len(samples):,} profiles x {X.shape[1]:,} genes "
          f"({'log10(x+1) scale' if pre is not None and pre.log10p1 else 'model scale'}); wrote {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    fe, pre, extra = _load_model(args.model)
    cfg = fe.config
    print(f"model: {args.model}")
    print(f"data: {fe.net_.n_samples:,} training samples x {fe.net_.n_genes:,} genes"
          + (f" (from {extra['source']})" if extra.get("source") else ""))
    for name in FEConfig.field_names():
        print(f"  {name} = {getattr(cfg, name)}")
    print(f"training: {fe.n_steps_:,} steps" + (f" in {extra['fit_seconds']:.1f} s" if extra.get("fit_seconds") else "")
          + f"; {_summary_line(fe.history_)}")
    if pre is not None:
        print(f"preprocessing: {pre.config}; {pre.n_genes:,} genes kept")
    return 0


def _read_or_demo(args: argparse.Namespace):
    """DATA, or the bundled HSMM demo (labels = time point) when DATA is ``demo``."""
    if args.data == "demo":
        from .datasets import load_demo
        return load_demo()
    return _read(args, args.data)


def _experiment_preprocessing(args: argparse.Namespace, data):
    from .io import Preprocessing
    return Preprocessing(log10p1=not args.no_log and data.transform != "log10p1",
                         protein_coding_only=False, drop_constant=True, top_variable=args.top_genes)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, metric_by_dim_table

    cfg = config_from_args(args)
    data = _read_or_demo(args)
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    res = evaluate(data, methods=methods, dims=args.dims, n_folds=args.folds, fe_config=cfg,
                   preprocessing=_experiment_preprocessing(args, data), output=args.output, jobs=args.jobs,
                   seed=args.cv_seed, n_pairs=args.pairs, progress=cfg.verbose, figures=not args.no_figures,
                   title=args.title or ("HSMM demo" if args.data == "demo" else Path(args.data).name))
    df = res["results"]
    print(f"{data.n_samples} samples x {data.n_genes} genes, {args.folds}-fold CV in {res['seconds']:.0f} s; "
          f"chance {res['chance']:.3f}; mean ± sd over folds")
    for metric in ("knn_accuracy", "logreg_accuracy", "mlp_accuracy", "distance_r", "recon_r"):
        if metric in set(df["metric"]):
            print(f"\n{metric}\n{metric_by_dim_table(df, metric).to_string()}")
    print()
    for p in res["written"]:
        print(f"wrote {p}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_shard, run_sweep

    cfg = config_from_args(args)
    data = _read_or_demo(args)
    res = run_sweep(data, l2s=args.l2_grid, gene_dims=args.gene_dims, output=args.output, config=cfg,
                    preprocessing=_experiment_preprocessing(args, data), shard=parse_shard(args.shard),
                    cv_folds=args.cv_folds, progress=cfg.verbose, figures=not args.no_figures,
                    label_name=args.label_column or ("Hours" if args.data == "demo" else "label"),
                    title=args.title or ("HSMM demo" if args.data == "demo" else Path(args.data).name))
    print(f"shard {args.shard or '0/1'}: {len(res['cells'])} cell(s), trained {len(res['trained'])}, "
          f"skipped {len(res['skipped'])} already finished")
    df = res["results"]
    if len(df):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for p in res["written"]:
        print(f"wrote {p}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plot

    if args.kind == "evaluate":
        from .evaluate import evaluation_figures
        written = evaluation_figures(args.input, title=args.title)
    elif args.kind == "sweep":
        from .sweep import sweep_outputs
        written = sweep_outputs(args.input)[1]
    elif args.kind == "speed":
        written = plot.plot_speed_by_gene_dim(args.input, args.output or Path(args.input).with_suffix(""),
                                              title=args.title or "Computing time by gene-embedding size")
    else:  # history
        import pandas as pd
        h = pd.read_csv(args.input)
        written = plot.plot_training_curves({k: h[k].to_numpy() for k in h.columns},
                                            args.output or Path(args.input).with_suffix(""),
                                            title=args.title or "Training", pdf=True)
    for p in written:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factembed", description="Factorized Embeddings of gene-expression data.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train on the bundled HSMM demo data and write the embedding and figures")
    d.add_argument("-o", "--output", default="factembed_demo", help="output directory (default %(default)s)")
    add_config_options(d)
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser("fit", help="train a model on a data file")
    f.add_argument("data", help="expression file (.h5 TCGA-style, .h5ad, .csv/.tsv[.gz], .npy, .npz, .parquet)")
    f.add_argument("-o", "--output", required=True, help="model directory to write")
    _add_read_options(f)
    sc = f.add_argument_group("scaling (see docs/scaling.md)")
    sc.add_argument("--backed", action="store_true",
                    help="stream the matrix from disk in row blocks instead of loading it (.npy, .h5, .h5ad, "
                         ".zarr); genes are used as stored, log10(x + 1) is applied per block unless --no-log")
    sc.add_argument("--distributed", type=int, default=None, metavar="NPROC",
                    help="train with NPROC data-parallel processes on this machine (runs torchrun); for "
                         "several machines run 'torchrun ... -m factembed.distributed fit' on each")
    g = f.add_argument_group("preprocessing (recorded in the model and re-applied by transform)")
    g.add_argument("--no-log", action="store_true", help="do not apply log10(x + 1) (values already on log scale)")
    g.add_argument("--all-biotypes", action="store_true", help="keep all genes, not only protein-coding ones "
                                                               "(when biotypes are known)")
    g.add_argument("--keep-constant", action="store_true", help="keep genes that are constant across samples")
    g.add_argument("--top-genes", type=int, default=None, help="keep only the K most variable genes")
    c = f.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-dir", default=None,
                   help="where to write training checkpoints (default OUTPUT/checkpoints)")
    c.add_argument("--checkpoint-every", type=int, default=1000,
                   help="steps between checkpoints; 0 disables them (default %(default)s)")
    c.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint of an interrupted run")
    c.add_argument("--divergence-retries", type=int, default=0,
                   help="on NaN/inf loss, divide lr by 10 and continue from the last checkpoint, "
                        "up to this many times (default %(default)s: stop with an error)")
    add_config_options(f)
    f.set_defaults(func=cmd_fit)

    t = sub.add_parser("transform", help="embed the samples of a file into a trained model")
    t.add_argument("model", help="model directory written by 'factembed fit'")
    t.add_argument("data", help="expression file with the new samples")
    t.add_argument("-o", "--output", required=True, help="embedding table (.csv/.tsv) or .h5ad to write")
    t.add_argument("--fill-missing", action="store_true",
                   help="fill genes missing from the file with their training mean (warns)")
    t.add_argument("--plot", default=None, help="also write a PNG of the new samples over the training embedding")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_read_options(t)
    t.set_defaults(func=cmd_transform)

    r = sub.add_parser("reconstruct", help="decode an embedding table into full profiles")
    r.add_argument("model", help="model directory")
    r.add_argument("embedding", help="embedding table (.csv/.tsv with columns sample, FE1, FE2, ...)")
    r.add_argument("-o", "--output", required=True, help="output matrix (.csv, .tsv, .h5, .h5ad or .npz)")
    r.set_defaults(func=cmd_reconstruct)

    i = sub.add_parser("info", help="print a model's hyper-parameters, data shape and final loss")
    i.add_argument("model", help="model directory")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("evaluate", help="cross-validated FE vs PCA vs UMAP: accuracy, distance preservation")
    e.add_argument("data", help="expression file, or 'demo' for the bundled HSMM data")
    e.add_argument("--dims", type=_int_tuple, default=(2, 4, 8, 16, 32, 64),
                   help="embedding dimensions, comma separated (default 2,4,8,16,32,64)")
    e.add_argument("--folds", type=int, default=5, help="stratified CV folds (default %(default)s)")
    e.add_argument("--methods", default="fe,pca,umap",
                   help="comma separated, from fe, pca, umap, full (whole profile) (default %(default)s)")
    e.add_argument("-o", "--output", default="factembed_evaluate", help="output directory (default %(default)s)")
    e.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each (default %(default)s)")
    e.add_argument("--pairs", type=int, default=2000, help="sampled test pairs for distance preservation "
                                                           "(default %(default)s)")
    e.add_argument("--cv-seed", type=int, default=0, help="seed of the fold split and pair sample "
                                                          "(default %(default)s)")
    e.add_argument("--title", default=None, help="data set name for titles")
    e.add_argument("--no-figures", action="store_true", help="tables only (draw later with 'factembed plot')")
    e.add_argument("--no-log", action="store_true", help="do not apply log10(x + 1) (values already on log scale)")
    e.add_argument("--top-genes", type=int, default=None,
                   help="keep the K most variable genes (chosen on each training fold)")
    _add_read_options(e)
    add_config_options(e)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sweep", conflict_handler="resolve",
                       help="grid of models over L2 x gene_dim: density/scatter grids, accuracy heat-map")
    s.add_argument("data", help="expression file, or 'demo' for the bundled HSMM data")
    s.add_argument("-o", "--output", default="factembed_sweep", help="output directory (default %(default)s)")
    s.add_argument("--shard", default=None, help="run only the cells k with k %% N == i (i/N, 0-based)")
    s.add_argument("--cv-folds", type=int, default=5, help="folds of the kNN accuracy (default %(default)s)")
    s.add_argument("--title", default=None, help="data set name for titles")
    s.add_argument("--no-figures", action="store_true", help="tables only (draw later with 'factembed plot')")
    s.add_argument("--no-log", action="store_true", help="do not apply log10(x + 1) (values already on log scale)")
    s.add_argument("--top-genes", type=int, default=None, help="keep only the K most variable genes")
    _add_read_options(s)
    add_config_options(s)
    s.add_argument("--l2", dest="l2_grid", type=_float_list, default=[0.0, 1e-8, 1e-7, 1e-6, 1e-5],
                   help="L2 values (grid columns), comma separated (default 0,1e-8,1e-7,1e-6,1e-5)")
    s.add_argument("--gene-dims", type=_int_tuple, default=(10, 25, 50, 75, 100, 1000),
                   help="gene-embedding sizes (grid rows), comma separated (default 10,25,50,75,100,1000)")
    s.set_defaults(func=cmd_sweep)

    pl = sub.add_parser("plot", help="redraw figures: of an evaluate/sweep directory, a speed CSV, a history CSV")
    pl.add_argument("kind", choices=("evaluate", "sweep", "speed", "history"))
    pl.add_argument("input", help="evaluate/sweep output directory, speed CSV (gene_dim,it_per_s) or history CSV")
    pl.add_argument("-o", "--output", default=None, help="figure path without extension (speed, history)")
    pl.add_argument("--title", default=None, help="figure title")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("factembed: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, KeyError) as exc:
        if args.debug:
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"factembed: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
