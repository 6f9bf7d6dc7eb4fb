"""``FactorizedEmbeddings``: the scikit-learn-style public class, with save/load.

>>> fe = FactorizedEmbeddings(n_steps=2000, random_state=0)
>>> Z = fe.fit_transform(X)            # (n_samples, sample_dim) training embedding
>>> Z_new = fe.transform(X_new)        # new samples, by inference (model frozen)
>>> X_hat = fe.inverse_transform(Z)    # decoder: embeddings -> full profiles
>>> fe.save("model_dir"); fe2 = FactorizedEmbeddings.load("model_dir")

Model files are a directory holding ``weights.safetensors`` (tensors only) and
``model.json`` (hyper-parameters, gene names, preprocessing, history, SHA-256 of the
weights).  Nothing is ever unpickled, so loading an untrusted model cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from .config import FEConfig
from .errors import FEInputError
from ._files import write_bytes_atomic
from .infer import embed_new_samples, reconstruct
from .model import FactorizedEmbeddingNet
from .recipes import plan_training
from .runner import batch_plan, make_checkpointer, run_training
from .train import BatchSampler, as_float32_tensor, resolve_device, resolve_precision
from ._validation import check_matrix

FORMAT_VERSION = 1
#: parameters that do not change the trained model (may differ on resume)
_RUNTIME_PARAMS = ("verbose", "device", "infer_steps", "infer_lr", "infer_genes", "init_genes")
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"


def checkpoint_meta(cfg: FEConfig, n_samples: int, n_genes: int, **more: Any) -> dict:
    """What a checkpoint must match to be resumed: the hyper-parameters that shape the
    trained model (not the run-time ones, nor ``n_steps``: a run may be extended) and
    the data shape (``more``: e.g. a data-parallel run's world size and rank)."""
    return {"config": {k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_PARAMS + ("n_steps",)},
            "n_samples": int(n_samples), "n_genes": int(n_genes), **more}


def _is_row_source(X: Any) -> bool:
    """True for backed sources (objects with ``rows(index)`` and ``shape``), which
    :meth:`FactorizedEmbeddings.fit` streams instead of loading."""
    return hasattr(X, "rows") and hasattr(X, "shape") and not isinstance(X, (np.ndarray, torch.Tensor))


class FactorizedEmbeddings(TransformerMixin, BaseEstimator):
    """Factorized Embeddings of a (samples x genes) expression matrix.

    Every sample gets a ``sample_dim``-vector and every gene a ``gene_dim``-vector; an
    MLP with ``hidden`` ReLU layers reads both and predicts the expression value.
    Training minimises MSE + ``l2`` * (sum of squares of all parameters) with Adam.

    Parameters are those of :class:`factembed.config.FEConfig` (see there for every
    one): ``sample_dim=2, gene_dim=100, hidden=(100, 50, 50), l2=1e-7``, training
    ``training="fast"`` (or ``"reference"``, the study's exact training; see
    :mod:`factembed.recipes`) with ``lr``, ``batch_samples``, ``batch_genes``,
    ``sample_lr_scale``, ``n_steps`` = ``None`` (the recipe's choice; explicit values
    override it), inference ``infer_steps=50, infer_lr=1e-2, infer_genes=512,
    init_genes=2048``, engine ``device="auto", precision="fp32", gene_chunk=None,
    random_state=None, verbose=True``.

    Fitted attributes
    -----------------
    embedding_ : (n_samples, sample_dim) ndarray — training sample embeddings.
    gene_embedding_ : (n_genes, gene_dim) ndarray.
    history_ : dict of lists ``step, loss, pearson_r, seconds``, one entry per step.
    n_features_in_, n_steps_, feature_names_in_ (gene names, when known),
    sample_names_ (when known), net_ (the torch module).
    """

    def __init__(self, sample_dim: int = 2, gene_dim: int = 100, hidden: tuple[int, ...] = (100, 50, 50),
                 l2: float = 1e-7, lr: float | None = None, batch_samples: int | None = None,
                 n_steps: int | None = None, training: str = "fast", batch_genes: int | None = None,
                 sample_lr_scale: float | None = None, infer_steps: int = 50, infer_lr: float = 1e-2, infer_genes: int = 512,
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

    def _align(self, X: Any, what: str) -> np.ndarray:
        """Validate ``X`` for a fitted model; DataFrame columns are matched by name."""
        arr, _, genes = check_matrix(X, what=what)
        names = getattr(self, "feature_names_in_", None)
        if genes is not None and names is not None and not np.array_equal(genes, names):
            pos = {g: k for k, g in enumerate(genes)}
            missing = [g for g in names if g not in pos]
            if missing:
                raise FEInputError(f"{what} lacks {len(missing)} of the model's {len(names)} genes "
                                   f"(first: {', '.join(map(str, missing[:5]))})")
            arr = np.ascontiguousarray(arr[:, [pos[g] for g in names]])
        if arr.shape[1] != self.n_features_in_:
            raise FEInputError(f"{what} has {arr.shape[1]} genes but the model was fitted on "
                               f"{self.n_features_in_}")
        return arr

    # -- fitting --------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, sample_names: Any = None, gene_names: Any = None,
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
            resume: bool = False, divergence_retries: int = 0) -> "FactorizedEmbeddings":
        """Learn sample embeddings, gene embeddings and the decoder from ``X``
        (samples x genes, already on the scale to model, e.g. log10(x + 1)).

        Gene names come from DataFrame columns or ``gene_names``; when known, ``transform``
        matches DataFrame columns to them by name.  ``y`` is ignored.

        Checkpoints: with ``checkpoint_dir``, the full training state is written there
        atomically every ``checkpoint_every`` steps; ``resume=True`` continues from the
        newest valid checkpoint (on CPU with the same seed the result is bitwise that of
        an uninterrupted run).  If the loss becomes NaN/inf, training stops with a
        ``FloatingPointError`` (the last good checkpoint is kept); with
        ``divergence_retries=k`` it instead divides the learning rate by 10 and continues from
        the last good checkpoint (or from the start), up to ``k`` times.  The learning
        rate finally used is ``lr_``."""
        cfg = self.config
        if _is_row_source(X):
            # a backed (on-disk) source: validated block by block as it is read
            source, samples, genes = X, getattr(X, "samples", None), getattr(X, "genes", None)
            if source.shape[0] < 2 or source.shape[1] < 1:
                raise FEInputError(f"X has shape {tuple(source.shape)}; at least 2 samples and 1 gene are needed")
        else:
            arr, samples, genes = check_matrix(X, min_samples=2)
            source = as_float32_tensor(arr)
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
        net = FactorizedEmbeddingNet(n, m, cfg.sample_dim, cfg.gene_dim, cfg.hidden, generator=gen)
        net.to(device)
        plan = plan_training(cfg, n, m)
        n_steps = plan.n_steps
        gene_seed = int(torch.randint(0, 2**62, (1,), generator=self._generator(salt=2)))

        def new_sampler():
            rows = source.make_sampler(plan.batch_samples, gen) if hasattr(source, "make_sampler") \
                else BatchSampler(n, plan.batch_samples, gen)
            return batch_plan(rows, m, plan, gene_seed)

        checkpointer = make_checkpointer(checkpoint_dir, checkpoint_every, checkpoint_meta(cfg, n, m),
                                         resume=resume)
        self.training_plan_ = plan
        outcome = run_training(net, source, n_steps=n_steps, lr=plan.lr, sample_lr=plan.sample_lr, l2=cfg.l2,
                               batch_samples=plan.batch_samples, generator=gen, new_sampler=new_sampler,
                               device=device, compute_dtype=dtype, gene_chunk=cfg.gene_chunk,
                               progress=cfg.verbose, checkpointer=checkpointer, resume=resume,
                               divergence_retries=divergence_retries)
        history, lr = outcome.history, outcome.lr
        self.resumed_from_ = outcome.resumed_from
        self.lr_ = lr
        self._set_fitted(net, n_steps=n_steps, history=history.as_dict(), samples=samples, genes=genes)
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

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the training embedding ``embedding_``."""
        return self.fit(X).embedding_

    # -- using a fitted model -------------------------------------------------------
    def transform(self, X: Any) -> np.ndarray:
        """Embed the samples of ``X`` by inference; the fitted model is not modified."""
        self._check_fitted()
        arr = self._align(X, "X")
        cfg = self.config
        device = self.net_.gene_embedding.device
        Z = embed_new_samples(self.net_, torch.from_numpy(arr), steps=cfg.infer_steps, lr=cfg.infer_lr,
                              infer_genes=cfg.infer_genes, init_genes=cfg.init_genes,
                              generator=self._generator(salt=1),
                              compute_dtype=resolve_precision(cfg.precision, device),
                              gene_chunk=cfg.gene_chunk, progress=cfg.verbose)
        return Z.numpy()

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Decoder output: full (n, n_genes) profiles for sample embeddings ``Z``."""
        self._check_fitted()
        z, _, _ = check_matrix(Z, what="Z")
        if z.shape[1] != self.net_.sample_dim:
            raise FEInputError(f"Z has {z.shape[1]} columns but sample_dim is {self.net_.sample_dim}")
        return reconstruct(self.net_, torch.from_numpy(z)).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Pearson r between ``X`` and its reconstruction through ``transform`` then
        ``inverse_transform`` (all entries pooled; higher is better)."""
        arr = self._align(X, "X")
        rec = self.inverse_transform(self.transform(arr))
        a = arr.astype(np.float64).ravel() - arr.mean(dtype=np.float64)
        b = rec.astype(np.float64).ravel() - rec.mean(dtype=np.float64)
        return float((a @ b) / np.sqrt((a @ a) * (b @ b)))

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """Write the fitted model to directory ``path`` (created if needed).

        ``extra`` is stored in the JSON as-is (e.g. the preprocessing of the data)."""
        from safetensors.torch import save as st_save
        self._check_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        blob = st_save(tensors)
        write_bytes_atomic(out / WEIGHTS_FILE, blob)
        meta = {
            "format": "factembed", "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "n_samples": self.net_.n_samples, "n_genes": self.net_.n_genes, "n_steps": self.n_steps_,
            "gene_names": None if getattr(self, "feature_names_in_", None) is None
            else [str(g) for g in self.feature_names_in_],
            "sample_names": None if self.sample_names_ is None else [str(s) for s in self.sample_names_],
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "history": self.history_,
            "extra": extra if extra is not None else getattr(self, "extra_", None),
        }
        write_bytes_atomic(out / META_FILE, json.dumps(meta, allow_nan=True).encode())
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> "FactorizedEmbeddings":
        """Load a model written by :meth:`save`.  Never unpickles.  Raises
        :class:`FEInputError` for a missing, truncated or tampered model."""
        from safetensors.torch import load as st_load
        root = Path(path)
        meta_path, w_path = root / META_FILE, root / WEIGHTS_FILE
        for p in (meta_path, w_path):
            if not p.is_file():
                raise FEInputError("not a factembed model directory (missing " + p.name + ")", path=root)
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise FEInputError(f"model metadata is not valid JSON ({exc})", path=meta_path) from None
        if not isinstance(meta, dict) or meta.get("format") != "factembed":
            raise FEInputError("not a factembed model file", path=meta_path)
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise FEInputError(f"model format version {meta.get('format_version')} is newer than this "
                               f"factembed supports ({FORMAT_VERSION})", path=meta_path)
        blob = w_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
            raise FEInputError("weights do not match the checksum recorded in model.json "
                               "(truncated or modified file)", path=w_path)
        try:
            tensors = st_load(blob)
        except Exception as exc:
            raise FEInputError(f"weights file is not valid safetensors ({exc})", path=w_path) from None
        cfg = FEConfig.from_dict(meta["config"])
        if device is not None:
            cfg.device = device
        est = cls.from_config(cfg)
        net = FactorizedEmbeddingNet(int(meta["n_samples"]), int(meta["n_genes"]), cfg.sample_dim,
                                     cfg.gene_dim, cfg.hidden)
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
        est.extra_ = meta.get("extra")
        return est
