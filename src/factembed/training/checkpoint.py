"""Training checkpoints: atomic, checksummed, never pickled.

A checkpoint at step ``k`` is two files in the checkpoint directory:

* ``step-0000000k.safetensors`` — every tensor: the network's parameters, Adam's
  moments and step counters, the batch sampler's permutation and random-generator
  state, and the per-step history;
* ``step-0000000k.json`` — written *after* the tensors, holding the step, the scalar
  state (optimizer hyper-parameters, sampler position), the model's shape and
  hyper-parameters, and the SHA-256 of the tensor file.

Both files are written to a temporary name, fsynced and renamed, so a crash at any
moment leaves either a complete checkpoint or none; a checkpoint whose JSON is missing
or whose checksum does not match is ignored (and reported) when resuming.  The newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import FEInputError
from .._utils.files import write_bytes_atomic

_NAME = re.compile(r"^step-(\d{9})\.json$")


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where it stopped."""
    step: int
    net_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    sampler_state: dict[str, Any]
    history: dict[str, list]
    meta: dict[str, Any]


class Checkpointer:
    """Writes and finds checkpoints in ``directory`` every ``every`` steps."""

    def __init__(self, directory: str | os.PathLike, every: int = 1000, keep: int = 2,
                 meta: dict[str, Any] | None = None) -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every}")
        self.dir = Path(directory)
        self.every = int(every)
        self.keep = max(1, int(keep))
        self.meta = dict(meta or {})

    # -- writing ------------------------------------------------------------------------
    def save(self, step: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
             sampler: Any, history: Any) -> Path:
        from safetensors.torch import save as st_save

        self.dir.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for k, v in net.state_dict().items():
            if not torch.isfinite(v).all():
                raise FloatingPointError(f"parameter {k} is not finite at step {step}; no checkpoint written")
            tensors[f"net/{k}"] = v.detach().cpu().contiguous()
        opt = optimizer.state_dict()
        for pid, st in opt["state"].items():
            for name, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"opt/{pid}/{name}"] = val.detach().cpu().contiguous().clone()
        scalar_opt_state = {str(pid): {name: val for name, val in st.items() if not isinstance(val, torch.Tensor)}
                            for pid, st in opt["state"].items()}
        samp = sampler.state_dict()
        samp_scalars = {}
        for k, v in samp.items():
            if isinstance(v, torch.Tensor):
                tensors[f"sampler/{k}"] = v.detach().cpu().contiguous().clone()
            else:
                samp_scalars[k] = v
        h = history.as_dict()
        tensors["history/step"] = torch.tensor(h["step"], dtype=torch.int64)
        for k in ("loss", "pearson_r", "seconds"):
            tensors[f"history/{k}"] = torch.tensor(h[k], dtype=torch.float64)
        if h.get("val_step"):     # the validation curve: the stop rule's whole state
            tensors["history/val_step"] = torch.tensor(h["val_step"], dtype=torch.int64)
            tensors["history/val_loss"] = torch.tensor(h["val_loss"], dtype=torch.float64)
        blob = st_save(tensors)
        stem = f"step-{step:09d}"
        write_bytes_atomic(self.dir / f"{stem}.safetensors", blob)
        meta = {
            "format": "factembed-checkpoint", "step": int(step),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "param_groups": opt["param_groups"], "optimizer_scalars": scalar_opt_state,
            "sampler_scalars": samp_scalars, "meta": self.meta,
        }
        write_bytes_atomic(self.dir / f"{stem}.json", json.dumps(meta).encode())
        self._prune()
        return self.dir / f"{stem}.json"

    def _steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _NAME.match(p.name)))

    def _prune(self) -> None:
        for step in self._steps()[:-self.keep]:
            for suffix in (".json", ".safetensors"):
                try:
                    (self.dir / f"step-{step:09d}{suffix}").unlink()
                except FileNotFoundError:
                    pass

    # -- reading ------------------------------------------------------------------------
    def latest(self) -> TrainingState | None:
        """The newest valid checkpoint, or ``None``; damaged ones are skipped with a warning."""
        for step in reversed(self._steps()):
            try:
                return self.load(step)
            except FEInputError as exc:
                warnings.warn(f"skipping damaged checkpoint: {exc}", stacklevel=2)
        return None

    def load(self, step: int) -> TrainingState:
        from safetensors.torch import load as st_load

        stem = self.dir / f"step-{step:09d}"
        jpath, tpath = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        try:
            meta = json.loads(jpath.read_text())
            blob = tpath.read_bytes()
        except (OSError, ValueError) as exc:
            raise FEInputError(f"unreadable checkpoint ({exc})", path=jpath) from None
        if meta.get("format") != "factembed-checkpoint" or hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise FEInputError("checkpoint tensors do not match their recorded checksum", path=tpath)
        tensors = st_load(blob)
        net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net/")}
        state: dict[int, dict] = {}
        for pid, scalars in meta["optimizer_scalars"].items():
            state[int(pid)] = dict(scalars)
        for k, v in tensors.items():
            if k.startswith("opt/"):
                _, pid, name = k.split("/", 2)
                state.setdefault(int(pid), {})[name] = v
        optimizer_state = {"state": state, "param_groups": meta["param_groups"]}
        sampler_state = dict(meta["sampler_scalars"])
        for k, v in tensors.items():
            if k.startswith("sampler/"):
                sampler_state[k[8:]] = v
        history = {"step": tensors["history/step"].tolist()}
        for k in ("loss", "pearson_r", "seconds"):
            history[k] = tensors[f"history/{k}"].tolist()
        for k in ("val_step", "val_loss"):
            if f"history/{k}" in tensors:
                history[k] = tensors[f"history/{k}"].tolist()
        return TrainingState(step=int(meta["step"]), net_state=net_state, optimizer_state=optimizer_state,
                             sampler_state=sampler_state, history=history, meta=meta.get("meta", {}))


# -- the checkpoint files of a directory (one run, or one per rank of a data-parallel run) --

_RANK_DIR = re.compile(r"^rank-\d+-of-\d+$")
_FILE = re.compile(r"^(step-\d{9}\.(json|safetensors)|\.step-\d{9}\.(json|safetensors)\..*\.tmp)$")


def _checkpoint_dirs(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        return []
    return [d] + sorted(p for p in d.iterdir() if p.is_dir() and _RANK_DIR.match(p.name))


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the checkpoints in ``directory`` and its ``rank-r-of-w`` folders."""
    return sorted({int(m.group(1)) for d in _checkpoint_dirs(directory) for p in d.iterdir()
                   if (m := _NAME.match(p.name))})


def checkpoint_meta_of(directory: str | os.PathLike) -> dict | None:
    """The ``meta`` (what a run must match to resume) of the newest readable checkpoint
    JSON in ``directory`` or its rank folders, or ``None``."""
    for d in _checkpoint_dirs(directory):
        for p in sorted((p for p in d.iterdir() if _NAME.match(p.name)), reverse=True):
            try:
                return json.loads(p.read_text()).get("meta")
            except (OSError, ValueError):
                continue
    return None


def remove_checkpoints(directory: str | os.PathLike) -> None:
    """Remove the checkpoint files (and leftover temporary files) from ``directory`` and
    its ``rank-r-of-w`` folders, then the folders themselves when nothing else is left in
    them.  Other files are never touched."""
    for d in reversed(_checkpoint_dirs(directory)):
        for p in d.iterdir():
            if p.is_file() and _FILE.match(p.name):
                p.unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:      # not empty: something of the user's is in it
            pass
