"""`facekd eval` end to end on saved embeddings and on a tiny model, plus the report files."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import torch

from facekd.cli import main
from facekd.data import write_pairs_bin
from facekd.evaluate import embed, verification
from facekd.evaluate.report import Curve, VERIFICATION_AXES, plot_roc


def test_eval_embeddings_writes_reports(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(40)]
    issame = np.arange(20) % 2 == 0
    issame[1] = True  # fold 0 (pairs 0 and 1) has no impostor pair: its FAR is undefined
    write_pairs_bin(tmp_path / "tiny.bin", images, issame)
    emb = rng.normal(size=(40, 8))
    np.save(tmp_path / "emb.npy", emb)
    code = main(["eval", "--embeddings", str(tmp_path / "emb.npy"), "--bin", str(tmp_path / "tiny.bin"),
                 "--out", str(tmp_path / "out"), "--name", "student"])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "tiny.json").read_text())
    want = verification.evaluate(emb, issame)
    assert saved["model"] == "student" and saved["accuracy"] == want.accuracy and saved["std"] == want.std
    assert saved["far"] is None  # NaN -> null
    assert saved["val_at_far_1e-3"] == want.val
    assert "| accuracy | " in (tmp_path / "out" / "tiny.md").read_text()
    assert (tmp_path / "out" / "tiny_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Accuracy-Flip" in capsys.readouterr().out


def test_eval_rejects_odd_embeddings(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_pairs_bin(tmp_path / "tiny.bin", [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(40)],
                    np.ones(20, bool))
    np.save(tmp_path / "emb.npy", np.ones((39, 4)))
    code = main(["eval", "--embeddings", str(tmp_path / "emb.npy"), "--bin", str(tmp_path / "tiny.bin"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "even number of rows" in err and err.count("\n") == 1


class MeanColour(torch.nn.Module):
    """Embedding = per-channel mean and the left-minus-right brightness: flips change it."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        half = x.shape[-1] // 2
        asym = x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))
        return torch.cat([x.mean((2, 3)), asym[:, None]], 1) * self.scale


def test_embed_images_flip_sum_resize_and_mode_restore():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (12, 12, 3), dtype=np.uint8) for _ in range(5)]
    model = MeanColour().train()
    got = embed.embed_images(model, images, batch_size=2, progress=False)
    assert model.training  # restored after evaluation
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    want = MeanColour()(x) + MeanColour()(x.flip(-1))
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-6)
    assert np.allclose(got[:, 3], 0, atol=1e-6)  # asymmetry cancels in the flip sum
    small = embed.embed_images(model, images, input_size=6, flip=False, progress=False)
    resized = torch.nn.functional.interpolate(x, size=(6, 6), mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(small, MeanColour()(resized).detach().numpy(), rtol=1e-5, atol=1e-6)
    onnx_like = embed.embed_images(lambda t: MeanColour()(t).detach().numpy(), images, progress=False)
    np.testing.assert_allclose(onnx_like, got, rtol=1e-6, atol=1e-6)


def test_roc_overlay_has_one_line_per_model(tmp_path):
    curves = {"teacher": Curve(np.array([0.001, 0.1, 1.0]), np.array([0.9, 0.99, 1.0])),
              "student": Curve(np.array([0.001, 0.1, 1.0]), np.array([0.7, 0.95, 1.0]))}
    plot_roc(curves, tmp_path / "overlay.png", title="LFW", axes=VERIFICATION_AXES)
    image = matplotlib.image.imread(tmp_path / "overlay.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    colours = {tuple(np.round(pixel[:3], 2)) for pixel in image.reshape(-1, image.shape[2])}
    assert len(colours) > 20  # axes, text and two curves, not a blank canvas
