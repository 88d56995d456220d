"""Atomic writes: all or nothing, and the file mode of a plain open()."""

from __future__ import annotations

import os

import pytest

from facekd.fileio import atomic_open, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as handle:
        handle.write("new, half written")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_written_files_get_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
