"""The model directory written by :meth:`FactorizedEmbeddings.save`: ``weights.safetensors``
(tensors only) and ``model.json`` (hyper-parameters, names, history, the SHA-256 of the
weights).  Nothing is ever unpickled, so reading an untrusted model cannot run code;
every way a directory can be wrong (missing file, bad JSON, another format, a newer
version, a checksum that does not match, damaged safetensors) is an
:class:`~factembed.errors.FEInputError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._utils.files import write_bytes_atomic
from ..errors import FEInputError

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"


def write_model_files(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-serialisable) to directory ``path`` (created if
    needed), each file atomically; ``meta`` gains the format, its version and the checksum."""
    from safetensors.torch import save as st_save
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    write_bytes_atomic(out / WEIGHTS_FILE, blob)
    meta = {"format": "factembed", "format_version": FORMAT_VERSION, **meta,
            "weights_sha256": hashlib.sha256(blob).hexdigest()}
    write_bytes_atomic(out / META_FILE, json.dumps(meta, allow_nan=True).encode())
    return out


def read_model_files(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a model directory, checked as the module docstring says."""
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
    return meta, tensors
