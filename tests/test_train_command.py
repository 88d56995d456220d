"""`facekd train` end to end on a tiny RecordIO set with a verification .bin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.data import write_face_rec, write_pairs_bin
from facekd.models.loading import load_backbone


def make_data(root):
    rng = np.random.default_rng(0)
    # 8 identities x 4 images, 40x40 (larger than the 32 px model input: the task resizes).
    base = rng.integers(0, 256, (8, 40, 40, 3))
    images = [np.clip(base[c] + rng.integers(-20, 21, (40, 40, 3)), 0, 255).astype(np.uint8)
              for c in range(8) for _ in range(4)]
    labels = [c for c in range(8) for _ in range(4)]
    write_face_rec(root / "train", zip(images, labels))
    pairs = [images[i] for i in range(20)]
    write_pairs_bin(root / "val.bin", pairs, [i % 2 == 0 for i in range(10)])


def test_train_writes_loadable_checkpoints_and_resumes(tmp_path, capsys):
    make_data(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"""
data: {{train: {tmp_path / 'train'}, val_bins: [{tmp_path / 'val.bin'}], val_batch_size: 8}}
model: {{backbone: r18, input_size: 32, kwargs: {{width: 0.125, num_features: 16}}}}
head: {{s: 16.0, m2: 0.2}}
optim: {{lr: 0.05, weight_decay: 5e-4}}
train: {{epochs: 1, batch_size: 8, workers: 0, log_interval: 1, progress: false, out: {tmp_path / 'run'}}}
""")
    assert main(["train", "--config", str(config)]) == 0
    assert "finished at step 4 (epoch 1)" in capsys.readouterr().out

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    evals = [r for r in records if "eval" in r]
    assert len(evals) == 1

    from_checkpoint = load_backbone(run / "checkpoint.pt")
    # The logged score is the end-of-epoch backbone's accuracy on val.bin, recomputed here.
    from facekd.data import load_pairs_bin
    from facekd.evaluate import verification
    from facekd.evaluate.embed import embed_images

    images, issame = load_pairs_bin(tmp_path / "val.bin")
    embeddings = embed_images(from_checkpoint.eval(), images, input_size=32, progress=False)
    assert evals[0]["eval"]["val"] == pytest.approx(verification.evaluate(embeddings, issame).accuracy)
    for name in ("backbone.pth", "backbone_best.pth"):  # one epoch: the last is also the best
        saved = load_backbone(run / name, "r18", width=0.125, num_features=16, input_size=32)
        for key, value in from_checkpoint.state_dict().items():
            assert torch.equal(value, saved.state_dict()[key])

    assert main(["train", "--config", str(config), "--resume", "--set", "train.epochs=2"]) == 0
    assert "finished at step 8 (epoch 2)" in capsys.readouterr().out
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 8 and saved["config"]["train"]["epochs"] == 2


def test_bad_config_is_a_one_line_cli_error(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("train: {epochs: two}\n")
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"facekd train: error: {config}: train.epochs must be int, found 'two'"
