"""Per-step learning-rate schedules: linear warm-up, then poly, multistep or cosine decay.

`step` counts optimiser steps already taken, so the first update uses `lr_factor(0)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from facekd.train.config import ScheduleConfig


@dataclass(frozen=True)
class LRSchedule:
    kind: str
    base_lr: float
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int
    power: float = 2.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            # Step 0 already moves: (step + 1) / warmup, ending at exactly base_lr.
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "multistep":
            passed = sum(step >= round(m * self.steps_per_epoch) for m in self.milestones)
            return max(self.base_lr * self.gamma**passed, self.min_lr)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        if self.kind == "poly":
            decay = (1.0 - progress) ** self.power
        else:  # cosine
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.base_lr - self.min_lr) * decay

    def factor(self, step: int) -> float:
        """lr(step) / base_lr, the multiplier LambdaLR applies; 0 for a run with base lr 0."""
        return self.lr(step) / self.base_lr if self.base_lr else 0.0


def make_schedule(config: ScheduleConfig, base_lr: float, steps_per_epoch: int, epochs: int) -> LRSchedule:
    warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
    return LRSchedule(
        kind=config.kind, base_lr=base_lr, total_steps=steps_per_epoch * epochs, warmup_steps=warmup,
        steps_per_epoch=steps_per_epoch, power=config.power, milestones=tuple(config.milestones),
        gamma=config.gamma, min_lr=config.min_lr,
    )


def attach(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that applies `schedule` to every parameter group (its state is just the step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
