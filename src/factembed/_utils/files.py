"""Atomic file output and file checksums, for the whole package.

Every file factembed writes goes through :func:`atomic_output`: the content is
written to a temporary file in the destination directory, which is ``fsync``-ed and
``os.replace``-d onto the target; on any error the temporary file is removed.  A
reader therefore sees either the old file or the complete new one, never a partial
file, and an interrupted writer leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from typing import Iterator

from ..errors import FEInputError

__all__ = ["atomic_output", "write_bytes_atomic", "write_text_atomic", "sha256_file"]


def _fsync_path(p: str) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success fsync + os.replace it
    onto ``path``; on error remove it (no partial output is left).

    The body must create the file at the yielded path.  Raises
    :class:`~factembed.errors.FEInputError` when the destination directory does
    not exist or ``path`` is a directory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FEInputError("output directory does not exist", path)
    if os.path.isdir(path):
        raise FEInputError("output path is a directory", path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"writer produced no file for {path}")
        _fsync_path(tmp)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # directory fsync is not supported everywhere
            _fsync_path(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, OSError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename)."""
    write_bytes_atomic(path, text.encode(encoding))


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks of ``chunk_bytes``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()
