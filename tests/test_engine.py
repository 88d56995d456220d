"""The training engine: exact resume, SIGTERM checkpoints, NaN errors, schedules, accumulation."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from facekd.train import checkpoint as ckpt
from facekd.train.config import ScheduleConfig
from facekd.train.engine import Trainer, TrainingDiverged, seed_everything
from facekd.train.schedule import make_schedule
from train_helpers import TinyTask, samples, task_weights, tiny_config


def read_log(out):
    with open(out / "log.jsonl") as handle:
        return [json.loads(line) for line in handle]


def step_losses(out):
    return {r["step"]: r["loss"] for r in read_log(out) if "loss" in r}


def sigterm_at(call):
    def hook(calls):
        if calls == call:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def test_resume_mid_epoch_continues_exactly(tmp_path):
    data = samples(64)
    # Reference: 2 epochs x 8 steps, uninterrupted, no DataLoader workers.
    seed_everything(1)
    reference = TinyTask(dropout=0.2)
    Trainer(reference, data, tiny_config(tmp_path / "a")).fit()

    # Same run, SIGTERM during step 5 (mid-epoch), with a worker process feeding the batches.
    seed_everything(1)
    stopped = TinyTask(dropout=0.2, on_call=sigterm_at(5))
    result = Trainer(stopped, data, tiny_config(tmp_path / "b", workers=1)).fit()
    assert result.interrupted and result.step == 5
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (5, 0, 5)
    assert set(ckpt.REQUIRED_KEYS) <= set(saved)

    # Resume in a fresh process state: different seed, different initial weights.
    seed_everything(999)
    resumed = TinyTask(dropout=0.2)
    result = Trainer(resumed, data, tiny_config(tmp_path / "b", resume=True)).fit()
    assert not result.interrupted and result.step == 16

    expected, got = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 17))
    assert got[6] == expected[6]  # the first step after the resume
    assert got == expected
    for name, value in task_weights(reference).items():
        assert torch.equal(value, task_weights(resumed)[name]), name


def test_checkpoint_holds_backbone_and_best_backbone_file(tmp_path):
    seed_everything(0)
    task = TinyTask()
    Trainer(task, samples(32), tiny_config(tmp_path, epochs=1)).fit()
    saved = ckpt.load(tmp_path / "checkpoint.pt")
    assert saved["backbone_name"] == "tiny" and saved["backbone_kwargs"] == {"batch_norm": True}
    assert saved["step"] == 4 and saved["epoch"] == 1 and saved["epoch_step"] == 0
    assert saved["config"]["train"]["batch_size"] == 8
    assert not (tmp_path / "backbone_best.pth").exists()  # no evaluator: nothing to select on
    backbone = torch.load(tmp_path / "backbone.pth", weights_only=True)
    for name, value in task.backbone.state_dict().items():
        assert torch.equal(backbone[name], value)
        assert torch.equal(saved["backbone"][name], value)


def test_nan_loss_stops_with_one_line_error(tmp_path):
    seed_everything(0)
    trainer = Trainer(TinyTask(poison_at=3), samples(64), tiny_config(tmp_path))
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("step 3: loss_cls is nan")
    # Step 3 is the first after the 2-step warm-up: lr is the base lr 0.05.
    assert "lr 0.05)" in message


def test_schedule_values_match_hand_computation():
    def schedule(**kwargs):
        return make_schedule(ScheduleConfig(**kwargs), base_lr=0.1, steps_per_epoch=10, epochs=10)

    poly = schedule(kind="poly", warmup_steps=10)
    assert poly.lr(0) == pytest.approx(0.01)
    assert poly.lr(9) == pytest.approx(0.1)
    assert poly.lr(10) == pytest.approx(0.1)
    assert poly.lr(55) == pytest.approx(0.1 * 0.5**2)  # (1 - 45/90)^2
    assert poly.lr(100) == pytest.approx(0.0)

    cosine = schedule(kind="cosine", warmup_epochs=1.0, min_lr=0.001)
    assert cosine.lr(4) == pytest.approx(0.05)
    assert cosine.lr(55) == pytest.approx(0.001 + 0.099 * 0.5)
    assert cosine.lr(100) == pytest.approx(0.001)

    multistep = schedule(kind="multistep", milestones=[2, 4.5], gamma=0.1)
    assert [multistep.lr(s) for s in (0, 19, 20, 44, 45)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_engine_applies_the_schedule_per_step(tmp_path):
    seed_everything(0)
    Trainer(TinyTask(), samples(64), tiny_config(tmp_path)).fit()
    lrs = {r["step"]: r["lr"] for r in read_log(tmp_path) if "lr" in r}
    # base 0.05, 2 warm-up steps, 16 steps in all, poly power 2 over the remaining 14.
    assert lrs[1] == pytest.approx(0.025)
    assert lrs[2] == pytest.approx(0.05)
    assert lrs[3] == pytest.approx(0.05)
    assert lrs[4] == pytest.approx(0.05 * (1 - 1 / 14) ** 2)
    assert lrs[16] == pytest.approx(0.05 * (1 / 14) ** 2)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    data = samples(64)
    results = []
    for name, batch_size, accum in (("whole", 8, 1), ("accum", 4, 2)):
        seed_everything(3)
        task = TinyTask(batch_norm=False)
        Trainer(task, data, tiny_config(tmp_path / name, batch_size=batch_size, grad_accum=accum, flip=False)).fit()
        results.append((task_weights(task), step_losses(tmp_path / name)))
    (whole, whole_losses), (accum, accum_losses) = results
    assert sorted(accum_losses) == sorted(whole_losses) == list(range(1, 17))
    for step, loss in whole_losses.items():
        assert accum_losses[step] == pytest.approx(loss, abs=1e-5)
    for name, value in whole.items():
        torch.testing.assert_close(accum[name], value, rtol=0, atol=1e-5)


def test_flips_follow_the_seed_and_reach_the_task(tmp_path):
    seen = []

    class Recording(TinyTask):
        def forward(self, batch):
            seen.append((batch["index"].clone(), batch["flipped"].clone()))
            return super().forward(batch)

    for _ in range(2):
        seed_everything(0)
        Trainer(Recording(), samples(64), tiny_config(tmp_path / str(len(seen)), epochs=1)).fit()
    first, second = seen[:8], seen[8:]
    for (index_a, flip_a), (index_b, flip_b) in zip(first, second):
        assert torch.equal(index_a, index_b) and torch.equal(flip_a, flip_b)
    flips = torch.cat([f for _, f in first])
    assert 0 < int(flips.sum()) < len(flips)  # some flipped, some not
    epoch_indices = torch.cat([i for i, _ in first])
    assert sorted(epoch_indices.tolist()) == list(range(64))  # a permutation of the epoch


def test_too_small_dataset_is_a_config_error(tmp_path):
    from facekd.errors import ConfigError

    with pytest.raises(ConfigError, match="train.batch_size"):
        Trainer(TinyTask(), samples(4), tiny_config(tmp_path))


def test_best_and_last_backbones_are_kept_apart(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.6])  # evaluations at steps 4, 8, 12, 16
    snapshots = {}

    def evaluator(backbone):
        snapshots[len(snapshots)] = {k: v.clone() for k, v in backbone.state_dict().items()}
        return {"synth": next(scores)}

    seed_everything(0)
    trainer = Trainer(TinyTask(), samples(64), tiny_config(tmp_path, eval_interval=4), evaluator=evaluator)
    result = trainer.fit()
    assert len(snapshots) == 4  # step 8 ends epoch 1 and is evaluated once
    assert result.best_score == 0.9
    best = torch.load(tmp_path / "backbone_best.pth", weights_only=True)
    last = torch.load(tmp_path / "backbone.pth", weights_only=True)
    for name, value in snapshots[1].items():
        assert torch.equal(best[name], value)
    for name, value in snapshots[3].items():
        assert torch.equal(last[name], value)
    assert any(not torch.equal(best[name], last[name]) for name in best)
    evals = [r for r in read_log(tmp_path) if "eval" in r]
    assert [(r["step"], r["eval"]["synth"], r["best"]) for r in evals] == [
        (4, 0.5, 0.5), (8, 0.9, 0.9), (12, 0.7, 0.9), (16, 0.6, 0.9)]


def test_resuming_into_another_model_is_a_checkpoint_error(tmp_path):
    from facekd.errors import CheckpointError

    seed_everything(0)
    Trainer(TinyTask(num_classes=4), samples(32), tiny_config(tmp_path, epochs=1)).fit()
    trainer = Trainer(TinyTask(num_classes=6), samples(32), tiny_config(tmp_path, epochs=2))
    with pytest.raises(CheckpointError) as error:
        trainer.resume(tmp_path / "checkpoint.pt")
    assert "classifier.weight" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        trainer.resume(tmp_path / "missing.pt")
