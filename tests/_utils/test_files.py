"""Tests of factembed._utils.files: the package's one atomic writer."""

from __future__ import annotations

import hashlib

import pytest

import factembed.io as fio
from factembed._utils import files as _files
from factembed._utils.files import atomic_output, sha256_file, write_bytes_atomic, write_text_atomic
from factembed.errors import FEInputError


def test_atomic_output_replaces_the_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target) as tmp:
        assert not str(tmp).endswith("out.txt")
        with open(tmp, "w") as fh:
            fh.write("new")
        assert target.read_text() == "old"  # not replaced before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_output_error_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(RuntimeError, match="writer produced no file"):
        with atomic_output(tmp_path / "never.txt"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_output_rejects_bad_destinations(tmp_path):
    with pytest.raises(FEInputError, match="output directory does not exist"):
        write_bytes_atomic(tmp_path / "nodir" / "x.bin", b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(FEInputError, match="output path is a directory"):
        write_bytes_atomic(tmp_path / "d", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_write_helpers_and_checksum(tmp_path):
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "t.md", "mean ± sd\n")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.md").read_bytes() == "mean ± sd\n".encode("utf-8")
    blob = bytes(range(256)) * 5000
    (tmp_path / "big").write_bytes(blob)
    assert sha256_file(tmp_path / "big", chunk_bytes=4096) == hashlib.sha256(blob).hexdigest()


def test_compatibility_names_in_factembed_io():
    assert fio.write_bytes_atomic is _files.write_bytes_atomic
