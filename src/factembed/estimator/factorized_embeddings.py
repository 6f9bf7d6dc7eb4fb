"""``FactorizedEmbeddings``: the scikit-learn-style public class, with save/load.

>>> fe = FactorizedEmbeddings(n_steps=2000, random_state=0)
>>> Z = fe.fit_transform(X)            # (n_samples, sample_dim) training embedding
>>> Z_new = fe.transform(X_new)        # new samples, by inference (model frozen)
>>> X_hat = fe.inverse_transform(Z)    # decoder: embeddings -> full profiles
>>> X_filled = fe.impute(X_nan)        # NaN entries -> the decoder's values
>>> fe.save("model_dir"); fe2 = FactorizedEmbeddings.load("model_dir")

Model files are a directory holding ``weights.safetensors`` (tensors only) and
``model.json`` (hyper-parameters, gene names, preprocessing, history, SHA-256 of the
weights).  Nothing is ever unpickled, so loading an untrusted model cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from ..config import FEConfig
from .covariate_terms import covariate_shift, fit_covariates, level_frames, record_codes
from ..covariates import CovariateSpec
from ..errors import FEInputError
from .genes import cosine_similarity, gene_position, rank_by_similarity
from .imputation import empty_gene_mask, fill_missing, frame_output, output_array
from .inputs import as_matrix, is_anndata, is_dataframe, is_row_source, on_model_genes, on_model_genes_missing, row_blocks
from .inference import ROW_BLOCK, NewLevels, embed_new_samples, embed_with_new_levels, reconstruct
from ..engine.network import FactorizedEmbeddingNet
from .model_files import META_FILE, WEIGHTS_FILE, read_model_files, write_model_files
from ..training.recipes import plan_training
from ..training.runner import checkpoint_meta, fit_network, make_checkpointer
from ..sources import BackedSource as BackedSourceBase
from ..training.loop import TensorRows, as_float32_tensor, resolve_device, resolve_precision
from .._utils.validation import _is_sparse, check_matrix, check_observed, observed_counts

#: ``transform`` / ``score`` draw a progress bar (when ``verbose``) only for at least this
#: many samples: short calls stay quiet, as scanpy and umap-learn users expect
PROGRESS_MIN_SAMPLES = 1000
#: values of the dense row blocks that sparse / backed input is embedded in (~64 MiB)
_BLOCK_ELEMENTS = 1 << 24


def _rows_per_block(n_genes: int) -> int:
    """Rows read at a time from a sparse or backed input of ``n_genes`` columns."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, int(n_genes)))
    return max(ROW_BLOCK, rows // ROW_BLOCK * ROW_BLOCK)


class FactorizedEmbeddings(TransformerMixin, BaseEstimator):
    """Factorized Embeddings of a (samples x genes) expression matrix.

    Every sample gets a ``sample_dim``-vector and every gene a ``gene_dim``-vector; an
    MLP with ``hidden`` ReLU layers reads both and predicts the expression value.
    Training minimises MSE + ``l2`` * (sum of squares of all parameters) with Adam.

    Parameters are those of :class:`factembed.config.FEConfig` (see there for every
    one): ``sample_dim=2, gene_dim=100, hidden=(100, 50, 50), l2=1e-7``, training
    ``training="fast"`` (or ``"reference"``, the study's exact training; see
    :mod:`factembed.training.recipes`) with ``lr``, ``batch_samples``, ``batch_genes``,
    ``sample_lr_scale``, ``n_steps`` = ``None`` (the recipe's choice; explicit values
    override it), ``lr_schedule=None`` (the recipe's: "constant"; or "anneal"),
    inference ``infer_steps=50, infer_lr="auto", infer_genes=512,
    init_genes=2048``, engine ``device="auto", precision="fp32", gene_chunk=None,
    random_state=None, verbose=True``.

    Fitted attributes
    -----------------
    embedding_ : (n_samples, sample_dim) ndarray — training sample embeddings.
    gene_embedding_ : (n_genes, gene_dim) ndarray.
    history_ : dict of lists ``step, loss, pearson_r, seconds``, one entry per step;
        with validation (``n_steps="auto"``) also ``val_step, val_loss``, the held-out
        entries' MSE every ``training_plan_.val_every`` steps (100 on large matrices).
    stop_reason_ : why training stopped (``n_steps="auto"``; None otherwise).
    validation_ : ``{"mse", "pearson_r", "entries", "fraction"}`` of the kept state on
        the held-out validation entries (``n_steps="auto"``; None otherwise).
    n_features_in_, n_steps_, feature_names_in_ (gene names, when known),
    sample_names_ (when known), net_ (the torch module).
    """

    def __init__(self, sample_dim: int = 2, gene_dim: int = 100, hidden: tuple[int, ...] = (100, 50, 50),
                 l2: float = 1e-7, lr: float | None = None, batch_samples: int | None = None,
                 n_steps: int | None = None, training: str = "fast", batch_genes: int | None = None,
                 sample_lr_scale: float | None = None, init: str | None = None, lr_schedule: str | None = None,
                 infer_steps: int = 50, infer_lr: float | str = "auto", infer_genes: int = 512,
                 init_genes: int = 2048, device: str = "auto", precision: str = "fp32",
                 gene_chunk: int | None = None, random_state: int | None = None, verbose: bool = True):
        self.sample_dim = sample_dim
        self.gene_dim = gene_dim
        self.hidden = hidden
        self.l2 = l2
        self.lr = lr
        self.batch_samples = batch_samples
        self.n_steps = n_steps
        self.training = training
        self.batch_genes = batch_genes
        self.sample_lr_scale = sample_lr_scale
        self.init = init
        self.lr_schedule = lr_schedule
        self.infer_steps = infer_steps
        self.infer_lr = infer_lr
        self.infer_genes = infer_genes
        self.init_genes = init_genes
        self.device = device
        self.precision = precision
        self.gene_chunk = gene_chunk
        self.random_state = random_state
        self.verbose = verbose

    # -- configuration --------------------------------------------------------------
    @property
    def config(self) -> FEConfig:
        """The hyper-parameters as a validated :class:`FEConfig`."""
        return FEConfig(**self.get_params())

    @classmethod
    def from_config(cls, config: FEConfig) -> "FactorizedEmbeddings":
        return cls(**{name: getattr(config, name) for name in FEConfig.field_names()})

    def _generator(self, salt: int = 0) -> torch.Generator:
        g = torch.Generator()
        if self.random_state is None:
            g.seed()
        else:
            g.manual_seed(int(self.random_state) * 1_000_003 + salt)
        return g

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            from sklearn.exceptions import NotFittedError
            raise NotFittedError("This FactorizedEmbeddings instance is not fitted yet; call fit first")

    def _align(self, X: Any, what: str) -> Any:
        """Validate ``X`` for a fitted model: a float32 array, or a row-block reader for
        sparse / backed input.  DataFrame columns and AnnData ``var_names`` are matched
        to the model's genes by name."""
        mat, _, genes = as_matrix(X, what=what)
        try:
            return self._align_matrix(mat, genes, what)
        except BaseException:
            _close_opened(mat)
            raise

    def _align_matrix(self, mat: Any, genes: np.ndarray | None, what: str) -> Any:
        """:meth:`_align` of a matrix already validated by :func:`~factembed.estimator.inputs.as_matrix`."""
        return on_model_genes(mat, genes, getattr(self, "feature_names_in_", None), self.n_features_in_, what,
                           type(self).__name__)

    def _align_missing(self, X: Any, what: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None,
                                                          np.ndarray | None]:
        """``_align`` for data with missing values (:func:`~factembed.estimator.inputs.on_model_genes_missing`)."""
        return on_model_genes_missing(X, getattr(self, "feature_names_in_", None), self.n_features_in_, what)

    # -- fitting --------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, sample_names: Any = None, gene_names: Any = None,
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
            resume: bool = False, divergence_retries: int = 0, kernel: Any = None,
            workers: int | None = None, missing: str = "error", covariates: Any = None,
            covariate_dims: dict | None = None) -> "FactorizedEmbeddings":
        """Learn sample embeddings, gene embeddings and the decoder from ``X``
        (samples x genes, already on the scale to model, e.g. log10(x + 1)).

        ``X`` may be an array, a DataFrame, a scipy sparse matrix (kept sparse: only the rows
        of each batch are made dense), an ``anndata.AnnData`` (its ``X``, dense or sparse, or
        read in row blocks when backed) or a backed row source (:mod:`factembed.sources`).
        Gene names come from DataFrame columns, ``var_names`` or ``gene_names``; when known,
        ``transform`` matches columns to them by name.  ``y`` is ignored.

        Checkpoints: with ``checkpoint_dir``, the full training state is written there
        atomically every ``checkpoint_every`` steps; ``resume=True`` continues from the
        newest valid checkpoint (on CPU with the same seed the result is bitwise that of
        an uninterrupted run).  If the loss becomes NaN/inf, training stops with a
        ``FloatingPointError`` (the last good checkpoint is kept); with
        ``divergence_retries=k`` it instead divides the learning rate by 10 and continues from
        the last good checkpoint (or from the start), up to ``k`` times.  The learning
        rate finally used is ``lr_``.  ``kernel`` and ``workers`` choose the loss kernel and
        the number of CPU worker threads (see :func:`factembed.training.loop.train`; the defaults
        are the tuned ones; benchmarks compare others).

        ``missing="error"`` (default): a NaN in ``X`` is an error naming its sample and
        gene.  ``missing="ignore"``: NaN entries of a dense ``X`` are missing values, left
        out of every training step's loss and gradients (as the validation entries of
        ``n_steps="auto"`` are); a sample with no observed value is an error.  Without
        any NaN both train the same model.  ``impute`` fills the missing values afterwards.

        ``covariates``: known factors of the samples (batch, tissue, sex, age...), learned
        beside the embeddings (:mod:`factembed.covariates`): a DataFrame or a dict of 1-D
        arrays, one row per sample in ``X``'s order, or the names of an AnnData's ``obs``
        columns; ``covariate_dims`` overrides a categorical covariate's embedding size.
        ``transform``, ``inverse_transform``, ``score`` and ``impute`` then need the same
        columns for their samples (a level unseen in training is an error)."""
        cfg = self.config
        if missing not in ("error", "ignore"):
            raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
        opened = None
        has_missing = False
        if missing == "ignore" and (_is_sparse(X) or (is_row_source(X) and not hasattr(X, "allow_nan"))
                                    or (is_anndata(X) and (getattr(X, "isbacked", False) or _is_sparse(X.X)))):
            raise FEInputError("missing='ignore' needs a dense matrix (an array, a DataFrame or an in-memory "
                               "AnnData with a dense X) or a backed source of factembed.sources: sparse input "
                               "cannot hold missing values")
        restore_nan = None
        if is_row_source(X) and missing == "ignore":
            # a backed source: NaN passes its block checks for this fit; every step is masked
            restore_nan, X.allow_nan, has_missing = X.allow_nan, True, True
        if is_row_source(X):
            # a backed (on-disk) source: validated block by block as it is read
            source, samples, genes = X, getattr(X, "samples", None), getattr(X, "genes", None)
            if source.shape[0] < 2 or source.shape[1] < 1:
                raise FEInputError(f"X has shape {tuple(source.shape)}; at least 2 samples and 1 gene are needed")
        else:
            mat, samples, genes = as_matrix(X, min_samples=2, allow_nan=missing == "ignore",
                                            nan_hint="fit(X, missing='ignore') leaves missing values out of training")
            if missing == "ignore":
                rows, _ = observed_counts(mat)
                check_observed(rows, samples=samples, what="X")
                has_missing = bool((rows < mat.shape[1]).any())
            source = as_float32_tensor(mat) if isinstance(mat, np.ndarray) else mat
            opened = mat
        n, m = source.shape
        samples = samples if sample_names is None else np.asarray(sample_names, dtype=object)
        genes = genes if gene_names is None else np.asarray(gene_names, dtype=object)
        for what, names, size in (("sample_names", samples, n), ("gene_names", genes, m)):
            if names is not None and len(names) != size:
                raise FEInputError(f"{what} has {len(names)} entries for {size} {what.split('_')[0]}s")
        device = resolve_device(cfg.device)
        dtype = resolve_precision(cfg.precision, device)
        gen = self._generator()
        if self.random_state is not None:
            torch.manual_seed(int(self.random_state))
        spec, codes = fit_covariates(covariates, covariate_dims, X, n, samples)
        net = FactorizedEmbeddingNet(n, m, cfg.sample_dim, cfg.gene_dim, cfg.hidden, generator=gen,
                                     covariates=() if spec is None else spec.shapes)
        if spec is not None:
            record_codes(net, *codes)
        plan = plan_training(cfg, n, m)
        if plan.init == "pca":
            from ..training.warm_start import pca_warm_start
            pca_warm_start(net, TensorRows(source) if isinstance(source, torch.Tensor) else source,
                           self._generator(salt=4), block_rows=_rows_per_block(m))
        net.to(device)
        gene_seed = int(torch.randint(0, 2**62, (1,), generator=self._generator(salt=2)))
        checkpointer = make_checkpointer(checkpoint_dir, checkpoint_every, checkpoint_meta(
            cfg, n, m, **({} if spec is None else {"covariates": spec.to_dict()})),
                                         resume=resume)
        self.training_plan_ = plan
        val_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator(salt=3))) \
            if plan.auto_stop else 0
        try:
            outcome, validation = fit_network(
                net, source, plan, l2=cfg.l2, gene_chunk=cfg.gene_chunk, n_total=n, generator=gen,
                gene_seed=gene_seed, val_seed=val_seed, device=device, compute_dtype=dtype,
                progress=cfg.verbose, checkpointer=checkpointer, resume=resume,
                divergence_retries=divergence_retries, kernel=kernel, workers=workers, missing=has_missing)
        finally:
            _close_opened(opened)     # a backed AnnData's file, opened here
            if restore_nan is not None:
                X.allow_nan = restore_nan
        n_steps = plan.n_steps
        history, lr = outcome.history, outcome.lr
        self.resumed_from_ = outcome.resumed_from
        self.lr_ = lr
        if plan.auto_stop and history.step:
            n_steps = history.step[-1]
        self._set_fitted(net, n_steps=n_steps, history=history.as_dict(), samples=samples, genes=genes)
        self.covariates_ = spec
        self.stop_reason_ = history.stop_reason
        self.validation_ = None if validation is None else dict(
            validation.scores(net), seconds=round(history.val_seconds, 3),
            share_of_training=round(history.val_seconds / max(1e-9, history.seconds[-1]), 4) if history.seconds else None)
        return self

    def _set_fitted(self, net: FactorizedEmbeddingNet, *, n_steps: int, history: dict,
                    samples: np.ndarray | None, genes: np.ndarray | None) -> None:
        self.net_ = net
        self.n_steps_ = int(n_steps)
        self.history_ = history
        self.n_features_in_ = net.n_genes
        if genes is not None:
            self.feature_names_in_ = np.asarray(genes, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.sample_names_ = None if samples is None else np.asarray(samples, dtype=object)

    @property
    def embedding_(self) -> np.ndarray:
        self._check_fitted()
        return self.net_.sample_embedding.detach().cpu().numpy().copy()

    @property
    def gene_embedding_(self) -> np.ndarray:
        self._check_fitted()
        return self.net_.gene_embedding.detach().cpu().numpy().copy()

    @property
    def covariate_embedding_(self) -> dict:
        """``{name: DataFrame (levels x dim)}`` of the categorical covariates' level vectors."""
        self._check_fitted()
        return level_frames(getattr(self, "covariates_", None), self.net_)

    def _covariate_shift(self, covariates: Any, X: Any, n: int, what: str = "X", unseen: str = "error"):
        return covariate_shift(getattr(self, "covariates_", None), self.net_, covariates, X, n, what, unseen)

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the training embedding ``embedding_``.

        FE is transductive at fit and inductive at transform: the training embedding is
        learned jointly with the model, while :meth:`transform` embeds samples into the
        frozen model by inference, so ``fit_transform(X)`` and ``fit(X).transform(X)``
        agree only up to the inference error (declared to scikit-learn's checks, see
        :func:`~factembed.estimator.sklearn_expected_failed_checks`)."""
        return self.fit(X).embedding_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True                       # CSR (other formats converted), kept sparse
        tags.transformer_tags.preserves_dtype = ["float32"]  # computed in float32 whatever the input
        return tags

    # -- using a fitted model -------------------------------------------------------
    def transform(self, X: Any, *, missing: str = "error", covariates: Any = None,
                  unseen: str = "learn") -> np.ndarray:
        """Embed the samples of ``X`` by inference; the fitted model is not modified.

        ``X``: as in :meth:`fit`; sparse and backed input is embedded in dense row blocks
        (each block gets the same random gene draws, so the result does not depend on the
        blocks).  A progress bar is drawn (when ``verbose``) only for at least
        :data:`PROGRESS_MIN_SAMPLES` samples.

        ``missing="error"`` (default): a NaN in ``X`` is an error naming its sample and
        gene.  ``missing="ignore"``: NaN entries are missing values, left out of each
        sample's inference (start-point search and loss use its observed genes only), and
        the model's genes that a DataFrame lacks (by name) count as missing in every
        sample; a sample with no observed value is an error naming it.  A gene observed
        in no sample then simply does not contribute.  Without any NaN both give the
        same embedding.  ``covariates``: the samples' covariates, for a model fitted with
        them (see :meth:`fit`).  ``unseen``: a categorical level the model never saw (a new
        batch) is learned with the samples' embeddings (``"learn"``, the default: the
        level's samples are decoded at the covariate's most frequent training level plus a
        per-gene offset of their measurements, estimated with their embeddings in
        :data:`~factembed.estimator.inference.NEW_LEVEL_ROUNDS` rounds, every model parameter
        frozen; it needs at least :data:`~factembed.estimator.inference.MIN_NEW_LEVEL_SAMPLES`
        samples of the level in the call, as an in-memory array) or refused (``"error"``)."""
        self._check_fitted()
        if missing not in ("error", "ignore"):
            raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
        if missing == "ignore":
            arr, _, samples, _ = self._align_missing(X, "X")
            rows, _ = observed_counts(arr)
            check_observed(rows, samples=samples, what="X")
            shift = self._covariate_shift(covariates, X, arr.shape[0], unseen=unseen)
            return self._embed(arr, missing=bool((rows < arr.shape[1]).any()), shift=shift)
        mat = self._align(X, "X")
        try:
            return self._embed(mat, shift=self._covariate_shift(covariates, X, mat.shape[0], unseen=unseen))
        finally:
            _close_opened(mat)

    def _block_rows(self) -> int:
        return _rows_per_block(self.n_features_in_)

    def _embed(self, mat: Any, missing: bool = False, shift: torch.Tensor | None = None) -> np.ndarray:
        """Embeddings of the rows of a float32 array or a row-block reader (``missing``:
        NaN entries are missing values, see :meth:`transform`)."""
        cfg = self.config
        device = self.net_.gene_embedding.device
        n = mat.shape[0]
        progress = bool(cfg.verbose) and n >= PROGRESS_MIN_SAMPLES
        gen = self._generator(salt=1)
        kw = dict(steps=cfg.infer_steps, lr=cfg.infer_lr, infer_genes=cfg.infer_genes, init_genes=cfg.init_genes,
                  compute_dtype=resolve_precision(cfg.precision, device), gene_chunk=cfg.gene_chunk,
                  missing=missing)
        if isinstance(shift, NewLevels):
            return self._embed_new_levels(mat, missing, shift)[0]
        if isinstance(mat, np.ndarray):
            return embed_new_samples(self.net_, torch.from_numpy(mat), generator=gen, progress=progress,
                                     shift=shift, **kw).numpy()
        start = gen.get_state()
        out = np.empty((n, self.net_.sample_dim), dtype=np.float32)
        from tqdm.auto import tqdm
        with tqdm(total=n, desc="factembed transform", unit="sample", mininterval=0.5, disable=not progress) as bar:
            for a, block in row_blocks(mat, self._block_rows()):
                gen.set_state(start)      # every block draws the same genes as one call would
                out[a:a + len(block)] = embed_new_samples(
                    self.net_, torch.from_numpy(block), generator=gen, progress=False,
                    shift=None if shift is None else shift[a:a + len(block)], **kw).numpy()
                bar.update(len(block))
        return out

    def _embed_new_levels(self, mat: Any, missing: bool, new: NewLevels):
        """``(embeddings, offsets of rows)`` of samples some of whose covariate levels are new
        (the second a function of row numbers, :meth:`NewLevels.row_offsets`)
        (:func:`~factembed.estimator.inference.embed_with_new_levels`)."""
        if not isinstance(mat, np.ndarray):
            raise FEInputError("learning a covariate level the model never saw needs the samples in memory "
                               "(a dense array or DataFrame), not a sparse or on-disk matrix",
                               hint="pass a dense array, or unseen='error' and a known level")
        Z, offsets = embed_with_new_levels(
            self.net_, torch.from_numpy(mat), new, generator=self._generator(salt=2),
            embed=lambda x, term: torch.from_numpy(self._embed(x.numpy(), missing, term)))
        return Z.numpy(), lambda rows: new.row_offsets(offsets, rows)

    def impute(self, X: Any, *, empty_genes: Any = "error", copy: bool = True, covariates: Any = None,
               unseen: str = "learn") -> Any:
        """``X`` with every NaN replaced by the decoder's value at the sample's embedding,
        inferred from its observed values only (as ``transform(X, missing="ignore")``
        does); observed values are returned unchanged, and samples without NaN are not
        embedded at all.

        ``X``: an array (returned as a numpy array of the same shape, in ``X``'s floating
        dtype: float32 for float32 input, float64 for float64 or integer input) or a
        DataFrame (returned as a DataFrame with the same index and the model's genes in
        the model's order, the genes it lacks, matched by name, imputed like NaN; its
        columns that the model does not know are left out, with a warning).  Imputed
        values are on the model's scale: the scale ``X`` must already be on (e.g.
        log10(x + 1)).

        ``empty_genes``: what to do with a gene present in ``X`` but observed in no
        sample (an all-NaN column is more often a broken column than a gene the data
        lack): ``"error"`` (default) raises naming it; ``"impute"`` fills it from the
        decoder alone; or a list of gene names (or column positions) allowed to be empty.
        Genes a DataFrame lacks are always imputed.  A sample with no observed value is
        an error naming it.  ``copy=False`` fills a float32 / float64 C-contiguous
        numpy array in place (other inputs are always copied).  ``covariates``, ``unseen``:
        as in :meth:`transform` (a new level is learned from all the samples of ``X``, their
        observed values, before their missing values are filled).
        """
        self._check_fitted()
        is_df = is_dataframe(X)
        arr, absent, samples, genes = self._align_missing(X, "X")
        n, m = arr.shape
        names = getattr(self, "feature_names_in_", None)
        out_names = names if names is not None else genes
        rows, cols = observed_counts(arr)
        empty_ok = empty_gene_mask(empty_genes, out_names, m, absent)
        check_observed(rows, cols, samples=samples, genes=out_names, empty_ok=empty_ok, what="X",
                       gene_hint="pass empty_genes='impute' to fill it from the decoder alone (genes a "
                                 "DataFrame lacks are imputed without asking)")
        if is_df:
            known = set() if names is None else set(map(str, names))
            extra = [] if names is None else [g for g in genes if g not in known]
            if extra:
                import warnings
                warnings.warn(f"X has {len(extra)} gene(s) the model does not know; they are left out of the "
                              f"imputed result (first: {', '.join(map(str, extra[:5]))})", stacklevel=2)
            out = frame_output(X, arr, absent, names)
        else:
            out = output_array(X, arr, copy)
        shift = self._covariate_shift(covariates, X, n, unseen=unseen)
        if isinstance(shift, NewLevels):         # new levels: offsets learned from every sample of X
            Z_all, offset_of = self._embed_new_levels(arr, True, shift)
            fill_missing(out, arr, rows, self.net_, shift=shift.term, embed=lambda block, idx: Z_all[idx],
                         row_offset=offset_of)
        else:
            fill_missing(out, arr, rows, self.net_, shift=shift, embed=lambda block, idx: self._embed(
                block, missing=True, shift=None if shift is None else shift[torch.from_numpy(idx)]))
        if is_df:
            import pandas as pd
            return pd.DataFrame(out, index=X.index.copy(), columns=list(out_names))
        return out

    def inverse_transform(self, Z: Any, *, covariates: Any = None) -> np.ndarray:
        """Decoder output: full (n, n_genes) profiles for sample embeddings ``Z``.

        For a model with covariates, ``covariates`` gives the samples' levels and values
        (as in :meth:`fit`), or one value per covariate for every sample:
        ``covariates={"batch": "run_1"}`` decodes each sample as if measured in ``run_1``
        (a batch-corrected matrix)."""
        self._check_fitted()
        z, _, _ = check_matrix(Z, what="Z")
        if z.shape[1] != self.net_.sample_dim:
            raise FEInputError(f"Z has {z.shape[1]} columns but sample_dim is {self.net_.sample_dim}")
        shift = self._covariate_shift(covariates, None, z.shape[0], "Z")
        return reconstruct(self.net_, torch.from_numpy(z), shift=shift).numpy()

    def score(self, X: Any, y: Any = None, *, covariates: Any = None, unseen: str = "learn") -> float:
        """Pearson r between ``X`` and its reconstruction through ``transform`` then
        ``inverse_transform`` (all entries pooled; higher is better).  Computed over row
        blocks: sparse input is never made dense whole."""
        self._check_fitted()
        mat = self._align(X, "X")
        try:
            cov = self._covariate_shift(covariates, X, mat.shape[0], unseen=unseen)
            offset_of = None
            if isinstance(cov, NewLevels):
                Z, offset_of = self._embed_new_levels(mat, False, cov)
                Z, cov = torch.from_numpy(Z), cov.term
            else:
                Z = torch.from_numpy(self._embed(mat, shift=cov))
            shift = None
            sums = np.zeros(5)           # sum a, sum b, sum a^2, sum b^2, sum ab (shifted values)
            count = 0
            for a, block in row_blocks(mat, self._block_rows()):
                rec = reconstruct(self.net_, Z[a:a + len(block)],
                                  shift=None if cov is None else cov[a:a + len(block)]).numpy().astype(np.float64)
                if offset_of is not None:
                    rec += offset_of(np.arange(a, a + len(block)))
                x = block.astype(np.float64)
                if shift is None:        # shifting by a first mean keeps the sums well conditioned
                    shift = (x.mean(), rec.mean())
                x -= shift[0]
                rec -= shift[1]
                sums += [x.sum(), rec.sum(), (x * x).sum(), (rec * rec).sum(), (x * rec).sum()]
                count += x.size
        finally:
            _close_opened(mat)
        sa, sb, saa, sbb, sab = sums
        cov = sab - sa * sb / count
        return float(cov / np.sqrt((saa - sa * sa / count) * (sbb - sb * sb / count)))

    # -- the gene side ----------------------------------------------------------------
    def similar_genes(self, gene: Any, k: int = 10):
        """The ``k`` genes nearest to ``gene`` by cosine similarity of their gene
        embeddings, as a pandas Series (gene -> similarity, most similar first; the gene
        itself excluded).  ``gene`` is a gene name, or a column number when the model
        has no gene names.  :class:`FEInputError` for an unknown gene."""
        import pandas as pd

        self._check_fitted()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        names = getattr(self, "feature_names_in_", None)
        m = self.n_features_in_
        j = gene_position(gene, names, m)
        sims = cosine_similarity(self.gene_embedding_, [j])[0]
        order = rank_by_similarity(sims)
        order = order[order != j][:min(int(k), m - 1)]
        index = np.asarray(names, dtype=object)[order] if names is not None else order
        return pd.Series(sims[order], index=pd.Index(index, name="gene"), name="cosine_similarity")

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """Write the fitted model to directory ``path`` (created if needed; the format:
        :mod:`factembed.estimator.model_files`).

        ``extra`` is stored in the JSON as-is (e.g. the preprocessing of the data)."""
        self._check_fitted()
        return write_model_files(path, self.net_.state_dict(), {
            "config": self.config.to_dict(),
            "n_samples": self.net_.n_samples, "n_genes": self.net_.n_genes, "n_steps": self.n_steps_,
            "gene_names": None if getattr(self, "feature_names_in_", None) is None
            else [str(g) for g in self.feature_names_in_],
            "sample_names": None if self.sample_names_ is None else [str(s) for s in self.sample_names_],
            "history": self.history_,
            "stop_reason": getattr(self, "stop_reason_", None),
            "validation": getattr(self, "validation_", None),
            "extra": extra if extra is not None else getattr(self, "extra_", None),
            **({} if getattr(self, "covariates_", None) is None else {"covariates": self.covariates_.to_dict()}),
        })

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> "FactorizedEmbeddings":
        """Load a model written by :meth:`save`.  Never unpickles.  Raises
        :class:`FEInputError` for a missing, truncated or tampered model."""
        meta, tensors = read_model_files(path)
        root = Path(path)
        meta_path, w_path = root / META_FILE, root / WEIGHTS_FILE
        cfg = FEConfig.from_dict(meta["config"])
        if device is not None:
            cfg.device = device
        est = cls.from_config(cfg)
        spec = CovariateSpec.from_dict(meta["covariates"]) if meta.get("covariates") else None
        net = FactorizedEmbeddingNet(int(meta["n_samples"]), int(meta["n_genes"]), cfg.sample_dim,
                                     cfg.gene_dim, cfg.hidden, covariates=() if spec is None else spec.shapes)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != got:
            diff = sorted(set(expected.items()) ^ set(got.items()))
            raise FEInputError(f"weights disagree with the recorded hyper-parameters (first mismatch: "
                               f"{diff[0]})", path=w_path)
        net.load_state_dict(tensors)
        net.to(resolve_device(cfg.device))
        genes = meta.get("gene_names")
        if genes is not None and len(genes) != net.n_genes:
            raise FEInputError(f"model.json lists {len(genes)} gene names for {net.n_genes} genes",
                               path=meta_path)
        samples = meta.get("sample_names")
        est._set_fitted(net, n_steps=int(meta.get("n_steps", 0)), history=meta.get("history") or {},
                        samples=None if samples is None else np.asarray(samples, dtype=object),
                        genes=None if genes is None else np.asarray(genes, dtype=object))
        est.covariates_ = spec
        est.extra_ = meta.get("extra")
        est.stop_reason_ = meta.get("stop_reason")
        est.validation_ = meta.get("validation")
        return est


def _close_opened(reader: Any) -> None:
    """Close the file that :func:`~factembed.estimator.inputs.as_matrix` opened for a backed
    AnnData (``reader`` is that source or a gene selection of it; anything else is left
    alone)."""
    root = reader
    while getattr(root, "_parent", None) is not None:
        root = root._parent
    if isinstance(root, BackedSourceBase):
        root.close()
