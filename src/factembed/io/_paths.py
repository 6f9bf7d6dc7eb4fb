"""File-name and input-file helpers shared by the readers and writers."""

from __future__ import annotations

import os

from ..errors import FEInputError


def _split_ext(path: str) -> tuple[str, bool]:
    """``(extension, gzipped)`` of a file name: ``"x.CSV.gz"`` -> ``(".csv", True)``."""
    name = os.path.basename(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return os.path.splitext(name)[1], gz


def _is_gzip(path: str) -> bool:
    """True when the file starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _check_input_file(path: str) -> None:
    """FEInputError unless ``path`` is an existing, non-empty file."""
    if not os.path.exists(path):
        raise FEInputError("file not found", path)
    if os.path.isdir(path):
        raise FEInputError("is a directory, expected a file", path)
    if os.path.getsize(path) == 0:
        raise FEInputError("file is empty", path)
