"""The ``factembed`` command: argparse in, :mod:`factembed.workflow` calls, printing out.

Subcommands: ``demo``, ``fit``, ``transform``, ``impute``, ``reconstruct``, ``info``, ``genes``,
``evaluate``, ``sweep``, ``plot``.  Errors are one line (``factembed: error: FILE: problem``)
with a non-zero exit status; ``--debug`` shows the traceback.  Warnings are one line too
(``factembed: warning: ...``).  Errors and warnings that advise a change name the
command-line flag (:meth:`FEInputError.cli_message`).  Nothing imports this module: the
work is done in :mod:`factembed.workflow` and the library below it.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from .options import (add_config_options, add_read_options, config_from_args, fit_request, float_list,
                          int_tuple, parse_processes, read_options)

def _print_fit(res, extra_line: str = "") -> None:
    from ..workflow import convergence_note, summary_line, validation_line

    fe = res.estimator
    if res.resumed_from is not None:
        print(f"resumed from the checkpoint of step {res.resumed_from:,}"
              + (" (training had already finished)" if res.resumed_from >= fe.n_steps_ else ""))
    where = {"memory": "", "backed": " (backed)",
             "distributed": f" on {res.details.get('world_size', '?')} process(es)"}[res.mode]
    trained = fe.n_steps_ - (res.resumed_from or 0)
    print(f"fitted {fe.n_steps_:,} steps{where} ({trained:,} in this run, {res.seconds:.1f} s); "
          f"{summary_line(fe.history_)}{extra_line}")
    held_out = validation_line(fe)
    if held_out:
        print(f"stopped: {held_out}")
    note = None if getattr(fe, "stop_reason_", None) else convergence_note(fe.history_)
    if note:
        print(f"note: {note}: try --steps {2 * fe.n_steps_:,}")
    for p in res.written:
        print(f"wrote {p}")


def cmd_fit(args: argparse.Namespace) -> int:
    from ..workflow import fit

    res = fit(fit_request(args))
    if res is not None:     # None on the ranks other than 0 of a data-parallel fit
        _print_fit(res)
        seed = res.estimator.random_state
        if args.random_state is None and not args.resume and seed is not None:
            print(f"random seed {seed} (drawn for this fit; --seed {seed} repeats it)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..workflow import fit, knn_accuracy

    t_all = time.perf_counter()
    res = fit(fit_request(args, data="demo"))
    extra = getattr(res.estimator, "extra_", None) or {}
    if "knn_accuracy" in extra:
        acc, chance = extra["knn_accuracy"], extra["knn_chance"]
    else:
        score = knn_accuracy(res.estimator.embedding_, res.labels)
        acc, chance = score.mean, score.chance
    print(f"demo: {res.n_samples} cells x {res.n_genes} genes, {res.estimator.n_steps_ / res.seconds:.0f} it/s")
    _print_fit(res)
    print(f"5-fold kNN accuracy of the time point (0/24/48/72 h) from the 2-D embedding: {acc:.3f} "
          f"(chance {chance:.3f})")
    print(f"total wall time {time.perf_counter() - t_all:.1f} s")
    return 0


def _add_unseen_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unseen", choices=("learn", "error"), default="learn",
                   help="a --covariate level the model never saw (a new batch): 'learn' (default) learns a "
                        "per-gene offset of its samples with their embeddings (>= 5 samples of the level in "
                        "the file), 'error' refuses it")


def cmd_transform(args: argparse.Namespace) -> int:
    from ..workflow import transform

    if args.html and args.distributed:
        raise ValueError("--html is not made under --distributed torchrun: draw it afterwards with "
                         "'factembed plot embedding MODEL OUTPUT -o page.html'")
    res = transform(args.model, args.data, args.output, read=read_options(args), fill_missing=args.fill_missing,
                    plot=args.plot, verbose=not args.quiet, distributed=args.distributed == "torchrun",
                    unseen=args.unseen,
                    html=args.html)
    if res is not None:
        fill = ""
        if res.fill == "decoder":
            fill = (f"; missing values ({res.absent_genes:,} genes absent from the file, {res.missing_values:,} "
                    "entries in all) left out: each sample embedded from its observed values only (decoder fill)")
        elif res.fill == "means" and res.absent_genes:
            fill = f"; {res.absent_genes:,} genes absent from the file filled with their training means"
        print(f"embedded {res.data.n_samples:,} samples{fill}; wrote {args.output}")
        for p in res.written[1:]:
            print(f"wrote {p}")
    return 0


def cmd_impute(args: argparse.Namespace) -> int:
    from ..workflow import impute

    res = impute(args.model, args.data, args.output, read=read_options(args), model_scale=args.model_scale,
                 empty_genes=args.impute_empty_genes, verbose=not args.quiet, unseen=args.unseen)
    d = res.data
    absent = (f", {len(res.absent_genes):,} of them genes absent from the file (first: "
              f"{', '.join(res.absent_genes[:3])})" if res.absent_genes else "")
    dropped = f"; {res.dropped_genes:,} genes of the file are not in the model and were left out" \
        if res.dropped_genes else ""
    print(f"imputed {res.imputed_values:,} missing values in {res.imputed_samples:,} of {d.n_samples:,} samples"
          f"{absent}{dropped}; {d.n_samples:,} samples x {d.n_genes:,} genes written on {res.scale}; "
          f"wrote {args.output}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..workflow import reconstruct

    levels = {}
    for item in args.as_levels or []:
        name, sep, level = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--as takes NAME=LEVEL, got {item!r}")
        levels[name] = level
    n, m, scale = reconstruct(args.model, args.embedding, args.output, as_levels=levels or None)
    print(f"reconstructed {n:,} profiles x {m:,} genes ({scale}); wrote {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..workflow import describe

    print("\n".join(describe(args.model)))
    return 0


def cmd_genes(args: argparse.Namespace) -> int:
    from ..workflow import export_genes, similar_genes

    if args.output is None and args.similar is None:
        raise ValueError("give -o FILE to export the gene embedding, or --similar GENE for its nearest genes")
    if args.output is not None:
        n, d = export_genes(args.model, args.output)
        print(f"wrote {args.output} ({n:,} genes x {d} dimensions)")
    if args.similar is not None:
        near = similar_genes(args.model, args.similar, k=args.k)
        print(f"genes nearest to {args.similar} (cosine similarity of the gene embeddings):")
        width = max([len(str(g)) for g in near.index] + [4])
        for gene, sim in near.items():
            print(f"  {str(gene):<{width}}  {sim:.4f}")
    return 0


def _experiment_data(args: argparse.Namespace):
    """DATA (or the bundled demo) and the preprocessing of evaluate/sweep (chosen on each training fold)."""
    from ..workflow import PreprocessingOptions, read_data

    data = read_data(args.data, read_options(args))
    pre = PreprocessingOptions(log10p1=False if args.no_log else None, protein_coding_only=False,
                               drop_constant=True, top_variable=args.top_genes)
    return data, pre.resolve(already_log=data.transform == "log10p1")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.comparison import MIXING_TASK, evaluate, interval_table, metric_by_dim_table

    cfg = config_from_args(args)
    tasks = list(args.task or [])
    annotations = None
    table_path = args.labels_path
    if tasks and args.labels_path and not args.label_column:
        # --labels holds the tasks' columns; read it whole (no single label column needed)
        from ..io import read_sample_table
        labels_path, args.labels_path = args.labels_path, None
        data, pre = _experiment_data(args)
        annotations = read_sample_table(labels_path, data.samples)
    else:
        data, pre = _experiment_data(args)
    if tasks and args.label_column:
        tasks.insert(0, "classification:label")  # --label-column: the short form of one classification task
    if args.covariate and annotations is None and table_path:
        from ..io import read_sample_table
        annotations = read_sample_table(table_path, data.samples)     # the covariates' columns
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    res = evaluate(data, methods=methods, dims=args.dims, n_folds=args.folds, fe_config=cfg, tasks=tasks or None,
                   annotations=annotations, preprocessing=pre, output=args.output, jobs=args.jobs,
                   seed=args.cv_seed, n_pairs=args.pairs, progress=cfg.verbose, figures=not args.no_figures,
                   title=args.title or ("HSMM demo" if args.data == "demo" else Path(args.data).name),
                   missing=args.missing, n_bootstrap=args.bootstrap, covariates=args.covariate)
    df = res["results"]
    print(f"{data.n_samples} samples x {data.n_genes} genes, {args.folds}-fold CV in {res['seconds']:.0f} s "
          f"(stratified by {res['tasks'][0].name}); mean ± sd over folds")
    shown = {"classification": ("knn_accuracy", "logreg_accuracy", "mlp_accuracy", "logreg_balanced_accuracy"),
             "regression": ("knn_r2", "ridge_r2", "ridge_spearman_r"), "survival": ("c_index",)}
    for t in res["tasks"]:
        extra = f", chance {res['chances'][t.name]:.3f}" if t.name in res["chances"] else ""
        print(f"\ntask {t.name} ({t.kind}; {int(t.known.sum())} samples, {t.n_missing} with a missing value "
              f"left out{extra})")
        if t.kind == "survival":
            print(f"c-index of the pooled test folds [bootstrap 95% interval]\n{interval_table(df, t.name).to_string()}")
        for metric in shown[t.kind]:
            print(f"\n{t.name}: {metric}\n{metric_by_dim_table(df[df.fold >= 0], metric, task=t.name).to_string()}")
    for task in sorted(t for t in set(df["task"]) if str(t).startswith(f"{MIXING_TASK}:")):
        for metric in ("batch_knn", "batch_chance"):
            print(f"\n{task} (within the groups of {res['tasks'][0].name}): {metric}\n"
                  f"{metric_by_dim_table(df, metric, task=task).to_string()}")
    for metric in ("distance_r", "recon_r"):
        if metric in set(df["metric"]):
            print(f"\n{metric}\n{metric_by_dim_table(df, metric).to_string()}")
    print()
    for p in res["written"]:
        print(f"wrote {p}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..evaluate.sweep import parse_shard, run_sweep

    cfg = config_from_args(args)
    data, pre = _experiment_data(args)
    res = run_sweep(data, l2s=args.l2_grid, gene_dims=args.gene_dims, output=args.output, config=cfg,
                    preprocessing=pre, shard=parse_shard(args.shard),
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
    from ..plot import figures as plot

    if args.new is not None and args.kind != "embedding":
        raise ValueError(f"factembed plot {args.kind} takes one input, got also {args.new!r}")
    if args.kind == "embedding":
        from ..workflow.pages import model_page
        written = [model_page(args.input, args.output or Path(args.input) / "embedding.html", args.new,
                              title=args.title)]
    elif args.kind == "evaluate":
        from ..evaluate.comparison import evaluation_figures
        written = evaluation_figures(args.input, title=args.title)
    elif args.kind == "sweep":
        from ..evaluate.sweep import sweep_outputs
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
    d.add_argument("-o", "--output", default="factembed_demo",
                   help="output directory (default %(default)s; a demo's output is replaced by the next demo)")
    add_config_options(d)
    for action in d._actions:
        if action.dest == "random_state":      # the demo is reproducible by default
            action.default, action.help = 0, "random seed (default %(default)s)"
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser("fit", help="train a model on a data file")
    f.add_argument("data", help="expression file (.h5 TCGA-style, .h5ad, .csv/.tsv[.gz], .npy, .npz, .parquet)")
    f.add_argument("-o", "--output", required=True, help="model directory to write")
    f.add_argument("--overwrite", action="store_true",
                   help="replace the model (and remove the checkpoints) already in OUTPUT")
    f.add_argument("--no-html", action="store_true",
                   help="do not write the interactive page OUTPUT/embedding.html (it needs bokeh: "
                        "pip install 'factembed[interactive]')")
    add_read_options(f)
    sc = f.add_argument_group("scaling (see docs/scaling.md)")
    sc.add_argument("--backed", action="store_true",
                    help="stream the matrix from disk in row blocks instead of loading it (.npy, .h5, .h5ad, "
                         ".zarr); genes are used as stored, log10(x + 1) is applied per block unless --no-log")
    sc.add_argument("--distributed", type=parse_processes, default=None, metavar="NPROC",
                    help="train with NPROC data-parallel processes on this machine (runs torchrun); "
                         "'torchrun': join the process group of a torchrun you started (several machines: "
                         "'torchrun ... -m factembed fit DATA -o MODEL --distributed torchrun' on each)")
    g = f.add_argument_group("preprocessing (recorded in the model and re-applied by transform)")
    g.add_argument("--no-log", action="store_true", help="do not apply log10(x + 1) (values already on log scale)")
    g.add_argument("--all-biotypes", action="store_true", help="keep all genes, not only protein-coding ones "
                                                               "(when biotypes are known)")
    g.add_argument("--keep-constant", action="store_true", help="keep genes that are constant across samples")
    g.add_argument("--top-genes", type=int, default=None, help="keep only the K most variable genes")
    g.add_argument("--missing", choices=("error", "ignore"), default="error",
                   help="NA values of the data: 'error' (default) names the first; 'ignore' leaves them out of "
                        "training (fill them afterwards with 'factembed impute')")
    f.add_argument("--covariate", action="append", default=None, metavar="COLUMN",
                   help="a known factor of the samples (batch, tissue, sex, age...) learned beside the "
                        "embedding: a column of --labels or of an .h5ad's obs (repeat for several; text "
                        "columns are categorical, numeric ones numeric; COLUMN:categorical for batches "
                        "numbered 1, 2, 3); 'factembed transform' then reads the same columns for the "
                        "new samples (from its --labels or obs)")
    c = f.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-dir", default=None,
                   help="where to write training checkpoints (default OUTPUT/checkpoints)")
    c.add_argument("--checkpoint-every", type=int, default=1000,
                   help="steps between checkpoints; 0 disables them (default %(default)s)")
    c.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint of an interrupted run")
    c.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the checkpoints after a successful fit (default: remove them, they are bigger than "
                        "the model; keep them to extend the run later with --resume --steps N)")
    c.add_argument("--divergence-retries", type=int, default=0,
                   help="on NaN/inf loss, divide lr by 10 and continue from the last checkpoint, "
                        "up to this many times (default %(default)s: stop with an error)")
    add_config_options(f)
    f.set_defaults(func=cmd_fit)

    t = sub.add_parser("transform", help="embed the samples of a file into a trained model")
    t.add_argument("model", help="model directory written by 'factembed fit'")
    t.add_argument("data", help="expression file with the new samples")
    t.add_argument("-o", "--output", required=True, help="embedding table (.csv/.tsv) or .h5ad to write")
    t.add_argument("--fill-missing", nargs="?", const="decoder", default=None, choices=("decoder", "means"),
                   help="allow genes missing from the file: 'decoder' (the default when given alone) embeds each "
                        "sample from its observed values only, so absent genes and NA values are left out (what "
                        "filling them with the decoder's values amounts to); 'means' fills absent genes with their "
                        "training means (NA values stay errors); warns either way")
    t.add_argument("--plot", default=None, help="also write a PNG of the new samples over the training embedding")
    t.add_argument("--html", default=None, metavar="PAGE.html",
                   help="also write the interactive page with the new samples over the training embedding "
                        "(needs bokeh: pip install 'factembed[interactive]')")
    _add_unseen_option(t)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--distributed", choices=("torchrun",), default=None,
                   help="'torchrun': run as one rank of a torchrun you started; the samples are split over "
                        "the ranks and rank 0 writes the output")
    add_read_options(t)
    t.set_defaults(func=cmd_transform)

    im = sub.add_parser("impute", help="fill the missing values of a file with the decoder (NA values and the "
                                       "model's genes the file lacks)")
    im.add_argument("model", help="model directory written by 'factembed fit'")
    im.add_argument("data", help="expression file with missing values (any format 'fit' reads; NA/empty cells "
                                 "are missing)")
    im.add_argument("-o", "--output", required=True,
                    help="filled matrix to write: .csv, .tsv, .txt (optionally .gz), .h5, .h5ad or .npz (same "
                         "format as the input where a writer exists). It holds the model's genes, in the model's "
                         "order; by default on the INPUT's scale: observed values exactly as read, imputed ones "
                         "back-transformed from the model's log10(x+1) scale (10^y - 1, clipped at 0)")
    im.add_argument("--model-scale", action="store_true",
                    help="write every value on the model's scale instead (log10(x+1) of the input, when the model "
                         "applies it), as 'reconstruct' does")
    im.add_argument("--impute-empty-genes", action="store_true",
                    help="also fill genes that the file has but observes in no sample (by default an error naming "
                         "the gene: such a column is more often broken than absent)")
    _add_unseen_option(im)
    im.add_argument("--quiet", action="store_true", help="no progress bars")
    add_read_options(im)
    im.set_defaults(func=cmd_impute)

    r = sub.add_parser("reconstruct", help="decode an embedding table into full profiles")
    r.add_argument("model", help="model directory")
    r.add_argument("embedding", help="embedding table (.csv/.tsv with columns sample, FE1, FE2, ...)")
    r.add_argument("-o", "--output", required=True, help="output matrix (.csv, .tsv, .h5, .h5ad or .npz)")
    r.add_argument("--as", dest="as_levels", action="append", default=None, metavar="NAME=LEVEL",
                   help="for a model with covariates: decode every profile with this covariate value "
                        "(repeat for each covariate), e.g. --as batch=run_1 for a batch-corrected matrix")
    r.set_defaults(func=cmd_reconstruct)

    i = sub.add_parser("info", help="print a model's hyper-parameters, data shape and final loss")
    i.add_argument("model", help="model directory")
    i.set_defaults(func=cmd_info)

    gn = sub.add_parser("genes", help="export the gene embedding, or list the genes nearest to a gene")
    gn.add_argument("model", help="model directory")
    gn.add_argument("-o", "--output", default=None, help="gene embedding table to write (.csv/.tsv[.gz]): "
                                                         "gene, GE1, GE2, ...")
    gn.add_argument("--similar", default=None, metavar="GENE",
                    help="print the genes nearest to GENE by cosine similarity of the gene embeddings")
    gn.add_argument("-k", type=int, default=10, help="how many neighbours --similar prints (default %(default)s)")
    gn.set_defaults(func=cmd_genes)

    e = sub.add_parser("evaluate", help="cross-validated FE vs PCA vs UMAP: accuracy, distance preservation")
    e.add_argument("data", help="expression file, or 'demo' for the bundled HSMM data")
    e.add_argument("--dims", type=int_tuple, default=(2, 4, 8, 16, 32, 64),
                   help="embedding dimensions, comma separated (default 2,4,8,16,32,64)")
    e.add_argument("--folds", type=int, default=5, help="stratified CV folds (default %(default)s)")
    e.add_argument("--covariate", action="append", default=None, metavar="COLUMN",
                   help="a known factor of the samples (a batch...; a column of --labels, the .h5ad obs or the "
                        "HDF5 file; repeatable): FE fits it as a covariate, methods combat_pca / harmony_pca "
                        "(pip install 'factembed[batch]') correct the first categorical one, and each method "
                        "gets its batch mixing within the groups of the first classification task "
                        "(batch_knn near its chance: mixed)")
    e.add_argument("--task", action="append", default=None, metavar="KIND:COLUMN",
                   help="what to predict from the embeddings (repeatable): classification:COLUMN, "
                        "regression:COLUMN (numeric), survival:TIME_COLUMN,EVENT_COLUMN (event 0/1; needs "
                        "factembed[survival]); columns of --labels, the .h5ad obs or the HDF5 file; folds are "
                        "stratified by the first task; --label-column is classification of that column")
    e.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the pooled c-index interval (default %(default)s)")
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
    e.add_argument("--missing", choices=("error", "ignore"), default="error",
                   help="NA values: 'ignore' leaves them out of FE's training and inference; PCA, UMAP and the "
                        "profile distances see them filled with the training fold's gene means (default error)")
    add_read_options(e)
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
    add_read_options(s)
    add_config_options(s)
    s.add_argument("--l2", dest="l2_grid", type=float_list, default=[0.0, 1e-8, 1e-7, 1e-6, 1e-5],
                   help="L2 values (grid columns), comma separated (default 0,1e-8,1e-7,1e-6,1e-5)")
    s.add_argument("--gene-dims", type=int_tuple, default=(10, 25, 50, 75, 100, 1000),
                   help="gene-embedding sizes (grid rows), comma separated (default 10,25,50,75,100,1000)")
    s.set_defaults(func=cmd_sweep)

    pl = sub.add_parser("plot", help="redraw figures: of an evaluate/sweep directory, a speed CSV, a history CSV; "
                                     "the interactive page of a model ('embedding')")
    pl.add_argument("kind", choices=("evaluate", "sweep", "speed", "history", "embedding"))
    pl.add_argument("input", help="evaluate/sweep output directory, speed CSV (gene_dim,it_per_s), history CSV "
                                  "or model directory (embedding)")
    pl.add_argument("new", nargs="?", default=None,
                    help="embedding: a table of new samples ('factembed transform' output) drawn over the model's")
    pl.add_argument("-o", "--output", default=None, help="figure path without extension (speed, history); "
                                                         "the page (embedding; default MODEL/embedding.html)")
    pl.add_argument("--title", default=None, help="figure title")
    pl.set_defaults(func=cmd_plot)
    return p


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one clean line, with the command-line spelling of their advice."""
    text = message.cli_message() if hasattr(message, "cli_message") else str(message)
    return f"factembed: warning: {' '.join(text.split())}\n"


def _error_text(exc: BaseException) -> str:
    text = exc.cli_message() if hasattr(exc, "cli_message") else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _format_warning     # only how printed warnings look; recording is untouched
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "command", None) == "fit" and getattr(args, "checkpoint_every", 0) > 0:
            hint = "; run the same command with --resume to continue from the last checkpoint"
        print(f"factembed: interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, KeyError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"factembed: error: {_error_text(exc)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
