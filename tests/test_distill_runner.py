"""`facekd distill` end to end on a tiny RecordIO set, the teacher cache, and teacher-loading errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.data import RecordIODataset
from facekd.data.face_rec import write_face_rec
from facekd.data.training import TrainSamples
from facekd.distill.cache import TeacherCache
from facekd.distill.teacher import CENTRE_COSINE, EMBEDDING, Teacher
from facekd.models import build_backbone

TINY = {"width": 0.125, "depth": 0.25, "fcn": True, "num_features": 16, "input_size": 16}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), label) for label in range(4) for _ in range(6)]
    write_face_rec(root / "train", samples)
    torch.manual_seed(0)
    network = build_backbone("r18", **TINY)
    checkpoint = {
        "facekd": 1, "backbone_name": "r18", "backbone_kwargs": dict(network.spec.kwargs),
        "backbone": network.state_dict(), "task": {"head.weight": torch.randn(4, 16)},
    }
    torch.save(checkpoint, root / "teacher.pt")
    return root


def distill_args(root, method, out, *extra):
    return ["distill", "--method", method, "--teacher", str(root / "teacher.pt"), "--student", "r18",
            "--input-size", "16", "--data", str(root / "train"), "--out", str(out),
            "--set", "model.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 16}",
            "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.workers=0",
            "--set", "train.progress=false", "--set", "train.log_interval=1", "--set", "head.s=16.0",
            "--set", f"distill.cache_dir={root / 'cache'}", "--set", "distill.cache_dtype=float32", *extra]


def test_margin_distillation_runs_and_reuses_its_teacher_cache(tiny_data, tmp_path):
    assert main(distill_args(tiny_data, "margin", tmp_path / "a")) == 0
    metas = list((tiny_data / "cache").glob("*/meta.json"))
    assert len(metas) == 1
    # One teacher pass stores what any method may want: the embedding rides along.
    assert json.loads(metas[0].read_text())["fields"] == sorted([CENTRE_COSINE, EMBEDDING])
    built = metas[0].stat().st_mtime_ns
    assert main(distill_args(tiny_data, "margin", tmp_path / "b")) == 0
    assert main(distill_args(tiny_data, "fitnet", tmp_path / "c")) == 0  # needs only the embedding
    assert list((tiny_data / "cache").glob("*/meta.json")) == metas
    assert metas[0].stat().st_mtime_ns == built  # opened, not rebuilt
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "loss" in entry]
    assert steps and all(np.isfinite(entry["loss"]) for entry in steps)
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert not any(key.startswith("teacher") for key in checkpoint["task"])


def test_cache_lookup_equals_the_live_teacher(tiny_data, tmp_path):
    torch.manual_seed(1)
    network = build_backbone("r18", **TINY)
    teacher = Teacher(network, input_size=16, centres=torch.randn(4, 16))
    samples = TrainSamples(RecordIODataset(tiny_data / "train"))
    needs = frozenset({EMBEDDING, CENTRE_COSINE})
    cache = TeacherCache.build(tmp_path / "c", teacher, samples, needs, {"id": 1}, batch_size=5,
                               dtype="float32", progress=False)
    index = torch.tensor([3, 0, 17, 9])
    flipped = torch.tensor([True, False, True, False])
    images = torch.stack([samples[int(i)]["image"] for i in index])
    images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
    labels = torch.tensor([samples[int(i)]["label"] for i in index])
    live = teacher.outputs(images, labels, needs)
    cached = cache.lookup(index, flipped, needs, torch.device("cpu"))
    torch.testing.assert_close(cached.embedding, live.embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached.centre_cosine, live.centre_cosine, rtol=1e-5, atol=1e-5)
    assert TeacherCache.open(tmp_path / "c", {"id": 2}) is None  # another fingerprint: stale


def test_a_missing_teacher_stops_the_run(tiny_data, tmp_path, capsys):
    args = distill_args(tiny_data, "fitnet", tmp_path / "x")
    args[args.index("--teacher") + 1] = str(tmp_path / "nope.pt")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0]


def test_a_corrupt_teacher_stops_the_run(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    args = distill_args(tiny_data, "fitnet", tmp_path / "x")
    args[args.index("--teacher") + 1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt" in err[0]


def test_unknown_method_is_one_line(tiny_data, tmp_path, capsys):
    assert main(distill_args(tiny_data, "nosuch", tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "margin" in err


@pytest.mark.parametrize("method, settings, expected", [
    ("transfer", ["head.partial_fc=true"], "use kd"),
    ("margin", ["head.partial_fc=true", "head.sample_rate=0.5"], "expected 1.0"),
    ("fitnet", ["head.sample_rate=0.5"], "needs head.partial_fc: true"),
])
def test_partial_fc_settings_a_method_cannot_honour_stop_in_one_line(tiny_data, tmp_path, capsys, method,
                                                                     settings, expected):
    extra = [arg for setting in settings for arg in ("--set", setting)]
    assert main(distill_args(tiny_data, method, tmp_path / "x", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_a_finished_run_is_recognised_across_added_config_fields(tmp_path):
    from facekd.distill.runner import is_finished
    from facekd.train import checkpoint as ckpt
    from facekd.train.engine import Trainer
    from train_helpers import TinyTask, samples, tiny_config

    config = tiny_config(tmp_path, epochs=1)
    Trainer(TinyTask(), samples(32), config).fit()
    assert is_finished(tmp_path, config)
    state = ckpt.load(tmp_path / "checkpoint.pt")
    # As written by a facekd from before train.balanced_identities existed:
    del state["config"]["train"]["balanced_identities"]
    torch.save(state, tmp_path / "checkpoint.pt")
    assert is_finished(tmp_path, config)
    config.train.balanced_identities = 2  # a real difference is still one
    assert not is_finished(tmp_path, config)
    state["config"]["train"]["from_the_future"] = 1
    torch.save(state, tmp_path / "checkpoint.pt")
    config.train.balanced_identities = 0
    assert not is_finished(tmp_path, config)
