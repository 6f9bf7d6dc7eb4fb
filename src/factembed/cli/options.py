"""The command line's options: one per :class:`FEConfig` field and their parsing, the input-file
options, and the :class:`~factembed.workflow.FitRequest` of ``factembed fit`` / ``demo``.

Part of the entry-point layer with :mod:`factembed.cli` (which alone imports it): nothing below
the entry points sees argparse.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import LR_SCHEDULES, TRAININGS, FEConfig

#: help text of every hyper-parameter option (FEConfig field -> text)
CONFIG_HELP = {
    "sample_dim": "size of each sample embedding (default %(default)s)",
    "gene_dim": "size of each gene embedding (default %(default)s)",
    "hidden": "widths of the decoder's ReLU hidden layers, comma separated (default 100,50,50)",
    "l2": "weight of the L2 penalty on all parameters (default %(default)s)",
    "training": "training recipe: 'fast' (gene-subset batches, PCA start, a 3-10x step for the sample table, trained until "
                "the held-out validation MSE is flat) or 'reference' (the study's: 4 whole profiles per step, "
                "lr 5e-3, 40 passes) (default %(default)s)",
    "lr": "Adam learning rate of the decoder and gene table (default 5e-3)",
    "batch_samples": "profiles per training step (default: the recipe's; reference 4)",
    "batch_genes": "genes per training step (default: the recipe's; reference: all)",
    "sample_lr_scale": "learning rate of the sample table as a multiple of --lr (default: fast 3-10 from the PCA start, following the share of the samples in a step; 10 from --init random; reference 1)",
    "n_steps": "training steps: 'auto' (until converged: the MSE of held-out entries is measured as it trains; "
               "see --lr-schedule for how the rates end; at most 25,000) or a number (exactly that many, no "
               "validation) (default: fast 'auto', reference 40 passes over the samples, clipped to 2,000..100,000)",
    "lr_schedule": "learning rates: 'constant' (with --steps auto: /10 at the first plateau of the held-out MSE, "
                   "stop at the second) or 'anneal' (full rates until the held-out MSE is flat or until half of a "
                   "budget of a third of the study's length, then lowered linearly towards 0 over as many steps "
                   "again; with --steps N: full for the first half, then lowered) (default: constant)",
    "init": "start point of training: 'pca' (sample embedding from the first principal components, output "
            "bias at the data's mean) or 'random' (the study's draw) (default: fast 'pca', reference 'random')",
    "infer_steps": "Adam steps when embedding new samples (default %(default)s)",
    "infer_lr": "Adam step when embedding new samples: 'auto' (a quarter of the distance from each sample's "
                "start point to its nearest training neighbour) or a number, the same for every sample "
                "(default %(default)s)",
    "infer_genes": "genes per inference step, walked through a random permutation (default %(default)s; all when fewer)",
    "init_genes": "genes used to pick the start point of new samples (default %(default)s)",
    "device": "auto, cpu, cuda or cuda:N (default %(default)s)",
    "precision": "fp32, bf16 or auto (bf16 only where the hardware runs it natively) (default %(default)s)",
    "gene_chunk": "genes per fused block (default: automatic)",
    "random_state": "random seed (default: one is drawn, printed and recorded in the model, so the fit can be "
                    "repeated)",
    "verbose": None,  # driven by --quiet
}
_OPTION_NAMES = {"random_state": "--seed", "n_steps": "--steps"}


def number_list(kind, what: str):
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


int_list = number_list(int, "integer")


def int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int_list(text))


float_list = number_list(float, "number")


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
            kind = int_tuple
        elif f.name == "infer_lr":
            kind = auto_or_float
        elif f.name == "n_steps":
            kind = auto_or_int
        elif isinstance(default, float) or f.name in ("lr", "sample_lr_scale"):
            kind = float
        elif isinstance(default, int) or f.name in ("n_steps", "gene_chunk", "random_state", "batch_samples",
                                                      "batch_genes"):
            kind = int
        else:
            kind = str
        extra = {"choices": TRAININGS} if f.name == "training" else {"choices": ("pca", "random")} \
            if f.name == "init" else {"choices": LR_SCHEDULES} if f.name == "lr_schedule" else {}
        group.add_argument(opt, dest=f.name, type=kind, default=default, help=CONFIG_HELP[f.name], **extra)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def auto_or_float(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def auto_or_int(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of steps, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> FEConfig:
    values = {f.name: getattr(args, f.name) for f in fields(FEConfig) if hasattr(args, f.name)}
    values["verbose"] = not getattr(args, "quiet", False)
    return FEConfig(**values)


def add_read_options(parser: argparse.ArgumentParser, labels: bool = True) -> None:
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


def read_options(args: argparse.Namespace):
    from ..workflow import ReadOptions
    return ReadOptions(fmt=getattr(args, "fmt", None),
                       samples_as_rows=False if getattr(args, "samples_as_columns", False) else None,
                       label_column=getattr(args, "label_column", None),
                       labels_path=getattr(args, "labels_path", None))


def parse_processes(text: str):
    """``--distributed``: a number of local processes, or ``torchrun`` (join the
    process group of a launcher you started)."""
    if text == "torchrun":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'torchrun', got {text!r}") from None


def fit_request(args: argparse.Namespace, data: str | None = None):
    """The :class:`~factembed.workflow.FitRequest` of ``factembed fit`` / ``demo``."""
    from ..workflow import CheckpointOptions, FitRequest, PreprocessingOptions

    ck = CheckpointOptions(every=getattr(args, "checkpoint_every", 0), directory=getattr(args, "checkpoint_dir", None),
                           resume=getattr(args, "resume", False),
                           divergence_retries=getattr(args, "divergence_retries", 0),
                           keep=getattr(args, "keep_checkpoints", False))
    pre = PreprocessingOptions(log10p1=False if getattr(args, "no_log", False) else None,
                               protein_coding_only=not getattr(args, "all_biotypes", False),
                               drop_constant=not getattr(args, "keep_constant", False),
                               top_variable=getattr(args, "top_genes", None))
    return FitRequest(data=data or args.data, output=args.output, config=config_from_args(args),
                      read=read_options(args), preprocessing=pre, checkpoints=ck,
                      backed=getattr(args, "backed", False), processes=getattr(args, "distributed", None),
                      title="FE of HSMM myoblasts (bundled demo)" if data == "demo" else None,
                      overwrite=getattr(args, "overwrite", False), missing=getattr(args, "missing", "error"),
                      html=not getattr(args, "no_html", False), covariates=list(getattr(args, "covariate", None) or []))
