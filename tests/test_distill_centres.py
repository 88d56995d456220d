"""Class centres derived from a teacher released without its classifier (`teacher.centres auto`):
the formula by hand, and margin distillation from a bare backbone.pth end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facekd.cli import main
from facekd.data.face_rec import write_face_rec
from facekd.distill.centres import derive_centres
from facekd.distill.teacher import Teacher
from facekd.models import build_backbone

TINY = {"width": 0.125, "depth": 0.25, "fcn": True, "num_features": 16}


class ColumnMeans(nn.Module):
    """Embedding = mean over rows of each of the 4 columns of channel 0 (so a mirror differs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].mean(dim=1) + 0.1


def test_centres_are_normalised_means_of_flip_summed_unit_embeddings():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 1, 2])
    samples = [{"image": torch.from_numpy(images[i]), "label": int(labels[i])} for i in range(6)]
    got = derive_centres(Teacher(ColumnMeans(), input_size=4), samples, 3, batch_size=4)

    pixels = images[:, 0].astype(np.float64) / 127.5 - 1.0  # facekd's [-1, 1] input, channel 0
    embedded = (pixels.mean(axis=1) + 0.1) + (pixels[:, :, ::-1].mean(axis=1) + 0.1)
    unit = embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
    sums = np.stack([unit[labels == c].sum(axis=0) for c in range(3)])
    centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    np.testing.assert_allclose(got.centres.numpy(), centres, rtol=1e-5, atol=1e-6)
    intra = np.mean([unit[i] @ centres[labels[i]] for i in range(6)])
    assert got.images == 6 and got.mean_intra_cosine == pytest.approx(intra, rel=1e-6)


def test_margin_from_a_bare_backbone_with_derived_centres(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_face_rec(tmp_path / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 6) for k in range(24)])
    torch.manual_seed(0)
    torch.save(build_backbone("r18", input_size=16, **TINY).state_dict(), tmp_path / "backbone.pth")

    def run(out, *extra):
        return main(["distill", "--method", "margin", "--teacher", str(tmp_path / "backbone.pth"), *extra,
                     "--student", "r18", "--input-size", "16", "--data", str(tmp_path / "train"),
                     "--out", str(tmp_path / out),
                     "--set", "teacher.arch=r18", "--set", "teacher.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 16}",
                     "--set", "teacher.input_size=16",
                     "--set", "model.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 16}",
                     "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.workers=0",
                     "--set", "train.progress=false", "--set", f"distill.cache_dir={tmp_path / 'cache'}"])

    assert run("no_centres") == 2
    assert "needs the teacher's class centres, but none were" in capsys.readouterr().err
    assert run("derived", "--teacher-centres", "auto") == 0
    log = (tmp_path / "derived" / "train.log").read_text()
    assert "derived 4 class centres from 24 images (image + mirror); mean cosine of an image to its own centre" in log
    (saved,) = (tmp_path / "cache").glob("centres-*.npy")
    centres = np.load(saved)
    assert centres.shape == (4, 16) and np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    assert run("again", "--teacher-centres", "auto") == 0  # read back, not recomputed
    assert "derived earlier, read from" in (tmp_path / "again" / "train.log").read_text()
