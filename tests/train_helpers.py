"""Tiny stand-ins for the training tests: an in-memory face dataset and a small task."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.data.training import TrainSamples
from facekd.data.transforms import network_input
from facekd.train.config import ExperimentConfig
from facekd.train.task import Task


class ArrayFaces:
    """`ds[i] -> (uint8 HxWx3, label)` over random images, as every facekd face dataset."""

    def __init__(self, count: int = 64, size: int = 8, num_classes: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, num_classes, size=count).astype(np.int64)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


class TinyTask(Task):
    """conv -> (BN) -> pool -> linear embedding -> linear classifier with cross-entropy.

    `poison_at` makes the loss NaN from that forward call on; `on_call` runs a hook per call.
    """

    def __init__(self, num_classes: int = 4, batch_norm: bool = True, input_size: int = 8, dropout: float = 0.0,
                 poison_at: int | None = None, on_call=None) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 6, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(6))
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(24, 8)]
        self.backbone = nn.Sequential(*layers)
        self.backbone_spec = ("tiny", {"batch_norm": batch_norm})
        self.classifier = nn.Linear(8, num_classes)
        self.input_size = input_size
        self.poison_at = poison_at
        self.on_call = on_call
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        logits = self.classifier(self.backbone(network_input(batch["image"], self.input_size)))
        loss = F.cross_entropy(logits, batch["label"])
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * float("nan")
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        return {"loss_cls": loss, "accuracy": accuracy}


def tiny_config(out, **train) -> ExperimentConfig:
    config = ExperimentConfig()
    config.optim.lr = 0.05
    config.schedule.warmup_steps = 2
    config.train.epochs = 2
    config.train.batch_size = 8
    config.train.workers = 0
    config.train.log_interval = 1
    config.train.progress = False
    config.train.out = str(out)
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def samples(count: int = 64, **kwargs) -> TrainSamples:
    return TrainSamples(ArrayFaces(count, **kwargs))


def task_weights(task: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.state_dict().items() if torch.is_tensor(v)}


class ScaledEmbeddings(nn.Module):
    """A backbone whose embeddings are `factor` times larger (trained recognition nets have large norms)."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor
