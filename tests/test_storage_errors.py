"""A full or failing disk is one line naming the file and the free space, the previous file survives,
and a killed write's temporary file is removed by the next run."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from facekd import fileio
from facekd.cli import main
from facekd.errors import StorageError
from facekd.train import checkpoint as ckpt


class FillsUp:
    """A file handle whose disk fills after `room` bytes."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.fixture
def disk_with_room(monkeypatch):
    real = os.fdopen

    def fill_after(room: int) -> None:
        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: FillsUp(real(fd, mode), room))

    return fill_after


def test_a_full_disk_during_torch_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, disk_with_room):
    path = tmp_path / "checkpoint.pt"
    ckpt.save(path, {"step": 1, "weights": torch.ones(10)})
    disk_with_room(1000)  # torch.save of 1 MB runs out: torch raises "unexpected pos" with ENOSPC chained
    with pytest.raises(StorageError) as excinfo:
        ckpt.save(path, {"step": 2, "weights": torch.ones(250_000)})
    message = str(excinfo.value)
    assert message.startswith(f"{path}: cannot write (No space left on device, ")
    assert "bytes free in" in message and "previous checkpoint.pt is kept" in message and "\n" not in message
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_other_errors_inside_the_write_pass_unchanged(tmp_path):
    with pytest.raises(ValueError, match="not a disk problem"):
        with fileio.atomic_open(tmp_path / "x", "w"):
            raise ValueError("not a disk problem")
    assert list(tmp_path.iterdir()) == []


def test_export_to_an_unwritable_folder_is_one_line(tmp_path):
    with pytest.raises(StorageError, match=r"/proc/nope/x.onnx: cannot write \("):
        fileio.atomic_write_bytes("/proc/nope/x.onnx", b"onnx")


def test_orphan_temporaries_are_removed_at_the_next_run(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "keep.txt").write_text("user file")
    removed = fileio.remove_orphan_temporaries(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_train_into_a_full_disk_is_one_line(tmp_path, disk_with_room, capsys):
    """`facekd synth` through the CLI with the disk full: one line, exit 2, no traceback."""
    disk_with_room(0)
    code = main(["synth", "--out", str(tmp_path / "s"), "--identities", "2", "--images-per-identity", "2",
                 "--verify-identities", "2", "--verify-pairs", "20", "--gallery-identities", "2",
                 "--probes-per-identity", "1", "--distractors", "1", "--celeba-identities", "1",
                 "--celeba-images-per-identity", "1", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err


def test_a_full_disk_under_the_run_log_is_one_line(tmp_path, monkeypatch):
    from facekd.train.runlog import RunLog

    log = RunLog(tmp_path, tensorboard=False)
    log._file = FillsUp(log._file, 10)
    with pytest.raises(StorageError, match=r"log.jsonl: cannot write \(No space left on device"):
        log.write({"step": 1, "loss": 0.5})
