"""SIGKILL evidence: `facekd train` and `facekd distill` killed mid-epoch, mid-checkpoint-write and
mid-teacher-cache-build, then resumed (or rerun), end bit-identical to an uninterrupted run on CPU.

Mid-write kills use the documented test hook FACEKD_TEST_PAUSE_BEFORE_RENAME (facekd.fileio): the
process stops with its temporary file complete and the rename not done, and is killed there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd import kill_points
from facekd.data.face_rec import write_face_rec
from facekd.kill_points import final_weights, steps_logged
from facekd.models import build_backbone

SRC = Path(__file__).resolve().parents[1] / "src"
KWARGS = "{width: 0.125, depth: 0.25, fcn: true, num_features: 8}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(0)
    write_face_rec(root / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 8) for k in range(24)])
    (root / "train.yaml").write_text(
        f"data: {{train: {root / 'train'}}}\n"
        f"model: {{backbone: r18, input_size: 16, kwargs: {KWARGS}}}\n"
        "head: {s: 16.0}\noptim: {lr: 0.05}\nschedule: {kind: cosine}\n"
        "train: {epochs: 3, batch_size: 4, workers: 0, log_interval: 1, ckpt_interval: 2, progress: false,\n"
        "        amp: 'off', device: cpu, seed: 7}\n")
    torch.manual_seed(0)
    network = build_backbone("r18", width=0.125, depth=0.25, fcn=True, num_features=8, input_size=16)
    torch.save({"facekd": 1, "backbone_name": "r18", "backbone_kwargs": dict(network.spec.kwargs),
                "backbone": network.state_dict(), "task": {"head.weight": torch.randn(3, 8)}}, root / "teacher.pt")
    return root


def command(tiny: Path, kind: str, out: Path, *extra: str) -> list[str]:
    if kind == "train":
        return [sys.executable, "-m", "facekd", "train", "--config", str(tiny / "train.yaml"), "--out", str(out), *extra]
    return [sys.executable, "-m", "facekd", "distill", "--config", str(tiny / "train.yaml"), "--method", "margin",
            "--teacher", str(tiny / "teacher.pt"), "--out", str(out), "--set", f"model.kwargs={KWARGS}",
            "--set", "train.epochs=2", "--set", "distill.cache_dtype=float32", *extra]


def run(args: list[str]) -> None:
    kill_points.run(args, SRC)


def kill_when(args: list[str], ready, pause: str = "") -> None:
    assert kill_points.kill_when(args, SRC, ready, pause), "the run finished before the kill point"


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert kill_points.differing_tensors(a, b) == []


@pytest.fixture(scope="module")
def uninterrupted_train(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "train"
    run(command(tiny, "train", out))
    return final_weights(out)


def test_train_killed_mid_epoch_resumes_bit_identical(tiny, uninterrupted_train, tmp_path):
    out = tmp_path / "run"
    kill_when(command(tiny, "train", out), lambda: steps_logged(out) >= 9)  # epoch 2 of 3, step 3 of 6
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 0 < state["step"] < 18
    run(command(tiny, "train", out, "--resume"))
    assert_identical(final_weights(out), uninterrupted_train)


def test_train_killed_mid_checkpoint_write_keeps_the_previous_one_and_resumes(tiny, uninterrupted_train, tmp_path):
    out = tmp_path / "run"
    marker = out / "checkpoint.pt.paused"
    kill_when(command(tiny, "train", out), marker.exists, pause="checkpoint.pt+")  # the second write
    orphans = list(out.glob(".checkpoint.pt.*.tmp"))
    assert len(orphans) == 1  # the complete, unrenamed new checkpoint
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2  # the previous one, intact
    marker.unlink()
    run(command(tiny, "train", out, "--resume"))
    assert not list(out.glob(".checkpoint.pt.*.tmp"))  # the run removed the orphan
    assert_identical(final_weights(out), uninterrupted_train)


def test_distill_killed_mid_cache_build_rebuilds_the_cache(tiny, tmp_path):
    reference = tmp_path / "reference"
    run(command(tiny, "distill", reference, "--set", f"distill.cache_dir={tmp_path / 'cache_a'}"))
    out, cache = tmp_path / "run", tmp_path / "cache_b"
    markers = lambda: list(cache.glob("*/meta.json.paused"))  # noqa: E731
    kill_when(command(tiny, "distill", out, "--set", f"distill.cache_dir={cache}"), lambda: bool(markers()),
              pause="meta.json")
    folder = markers()[0].parent
    assert not (folder / "meta.json").exists()  # the cache was never marked complete
    run(command(tiny, "distill", out, "--set", f"distill.cache_dir={cache}", "--overwrite"))
    assert json.loads((folder / "meta.json").read_text())["num_samples"] == 24
    assert_identical(final_weights(out), final_weights(reference))
