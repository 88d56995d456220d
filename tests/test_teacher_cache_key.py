"""The teacher cache's key covers everything that changes the teacher's outputs: change one thing
at a time and the key changes (a rebuild); change nothing and it stays (a reuse)."""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.data.face_rec import write_face_rec
from facekd.distill.config import DistillExperimentConfig, TeacherConfig
from facekd.distill.runner import cache_fingerprint
from facekd.models import build_backbone

TINY = {"width": 0.125, "depth": 0.25, "fcn": True, "num_features": 16}


def same_size_same_mtime(path, content: bytes, like) -> None:
    """Write `content` to `path` with the size and modification time of `like` (a cheap key's blind spot)."""
    path.write_bytes(content)
    stat = like.stat()
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    write_face_rec(tmp_path / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 4) for k in range(16)])
    np.save(tmp_path / "centres_a.npy", np.ones((4, 16), np.float32))
    np.save(tmp_path / "centres_b.npy", np.full((4, 16), 2.0, np.float32))
    same_size_same_mtime(tmp_path / "centres_b.npy", (tmp_path / "centres_b.npy").read_bytes(), tmp_path / "centres_a.npy")
    (tmp_path / "teacher.pth").write_bytes(b"weights-1")
    return tmp_path


def key(config, labels, input_size=16) -> str:
    distiller = SimpleNamespace(teacher=SimpleNamespace(input_size=input_size))
    return json.dumps(cache_fingerprint(config, distiller, SimpleNamespace(labels=labels)), sort_keys=True)


def test_each_input_of_the_teacher_changes_the_key(files):
    config = DistillExperimentConfig()
    config.data.train = str(files / "train")
    config.teacher = TeacherConfig(path=str(files / "teacher.pth"), arch="r18", kwargs=dict(TINY),
                                   head=str(files / "centres_a.npy"))
    labels = np.arange(16) % 4
    base = key(config, labels)
    assert key(config, labels) == base  # nothing changed: the cache is reused

    def teacher_with(**change):
        return dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, **change))

    changed = {
        # Two centre files of the same size and time, different values: margin's centre_cosine differs.
        "centres": key(teacher_with(head=str(files / "centres_b.npy")), labels),
        "kwargs": key(teacher_with(kwargs={**TINY, "num_features": 32}), labels),
        "arch": key(teacher_with(arch="r34"), labels),
        "onnx mean": key(teacher_with(onnx_pixel_mean=0.0), labels),
        "onnx std": key(teacher_with(onnx_pixel_std=1.0), labels),
        "channel order": key(teacher_with(onnx_channel_order="BGR"), labels),
        "input size": key(config, labels, input_size=32),
        "labels": key(config, np.roll(labels, 1)),
        "dtype": key(dataclasses.replace(config, distill=dataclasses.replace(config.distill, cache_dtype="float32")), labels),
    }
    for what, value in changed.items():
        assert value != base, f"changing the {what} kept the cache key"

    same_size_same_mtime(files / "teacher.pth", b"weights-2", files / "teacher.pth")
    assert key(config, labels) != base, "rewritten teacher weights kept the cache key"
    (files / "train" / "train.rec").touch()
    os.utime(files / "train" / "train.rec", ns=(1, 1))
    assert key(config, labels) != base, "a rewritten train.rec kept the cache key"


def test_margin_rebuilds_the_cache_for_other_centres(tmp_path):
    """End to end: the stale-centre case of the issue. Same teacher, other centre file -> a rebuild."""
    rng = np.random.default_rng(0)
    write_face_rec(tmp_path / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 6) for k in range(24)])
    torch.manual_seed(0)
    torch.save(build_backbone("r18", input_size=16, **TINY).state_dict(), tmp_path / "backbone.pth")
    np.save(tmp_path / "a.npy", np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32))
    np.save(tmp_path / "b.npy", np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32))
    same_size_same_mtime(tmp_path / "b.npy", (tmp_path / "b.npy").read_bytes(), tmp_path / "a.npy")

    def run(head, out):
        return main(["distill", "--method", "margin", "--teacher", str(tmp_path / "backbone.pth"),
                     "--student", "r18", "--input-size", "16", "--data", str(tmp_path / "train"),
                     "--out", str(tmp_path / out),
                     "--set", "teacher.arch=r18", "--set", "teacher.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 16}",
                     "--set", f"teacher.head={tmp_path / head}", "--set", "teacher.input_size=16",
                     "--set", "model.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 16}",
                     "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.workers=0",
                     "--set", "train.progress=false", "--set", f"distill.cache_dir={tmp_path / 'cache'}",
                     "--set", "distill.cache_dtype=float32"])

    assert run("a.npy", "run_a") == 0
    assert run("a.npy", "run_a2") == 0
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1  # same centres: reused
    assert run("b.npy", "run_b") == 0
    caches = sorted((tmp_path / "cache").glob("*/part-0-of-1/centre_cosine.npy"))
    assert len(caches) == 2  # other centres: rebuilt, not the stale centre_cosine
    first, second = (np.load(path) for path in caches)
    assert not np.allclose(first, second)
