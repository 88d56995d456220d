"""Grouped KD (Zhao et al., AAAI 2023), after the official `gkd_adaptive.py` (student-based K).

With p = softmax(z / T) and both networks' margin-applied logits z (the paper uses CosFace):
- K: sum the student's softmax (T = 1) over the batch, sort it in descending order, and take the
  smallest K in 1, 101, 201, ... whose cumulative mass reaches tau * B (tau = 0.93); when none
  does, K is the number of classes. Primary group P = the student's top-K classes per sample,
  with the ground truth forced in; secondary group S = the rest.
- Binary-KD  = KL([p_t(P), p_t(S)] || [p_s(P), p_s(S)])
- Primary-KD = KL(softmax(z_t/T - 1000 * 1_S) || softmax(z_s/T - 1000 * 1_S))
- Secondary-KD, the same over S, has weight 0 in GKD (`secondary_weight`).
Each KL is summed over classes, multiplied by T^2 and divided by the batch size.
loss_kd = ramp * (alpha * Binary + beta * Primary + gamma * Secondary), ramp = min(step / warmup_steps, 1),
with warmup_steps = warmup_epochs x the epoch's forward passes; the paper ramps over 10 epochs.
Under Partial FC (head.partial_fc) each rank holds some classes' logits: the class masses that fix
K are gathered, each row's K-th largest logit is found from every rank's top K, and the softmax
sums are all-reduced, so the loss and gradients equal the one-classifier form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.distiller import DistillSetup
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.logit_kd import LogitDistiller, LogitOptions
from facekd.distill.common import class_shard
from facekd.errors import ConfigError
from facekd.models.partial_fc import ClassShard, scale_gradient
from facekd.models.sharded_logits import sharded_log_softmax
from facekd.train import distributed as world_ops

K_STEP = 100  # the official search steps K by 100 classes


def primary_size(student_logits: Tensor, tau: float) -> int:
    return size_from_mass(F.softmax(student_logits, dim=1).sum(dim=0), tau, student_logits.shape[0])


def size_from_mass(mass: Tensor, tau: float, batch: int) -> int:
    """K from each class's softmax mass summed over the batch (every class, in any order)."""
    mass = mass.sort(descending=True).values
    cumulative = mass.cumsum(0)
    candidates = torch.arange(1, len(mass), K_STEP, device=mass.device)
    reached = cumulative[candidates - 1] >= tau * batch
    return int(candidates[reached][0]) if reached.any() else len(mass)


def kl_sum(log_student: Tensor, teacher: Tensor) -> Tensor:
    return F.kl_div(log_student, teacher, reduction="sum")


class GKDLoss(nn.Module):
    """With a distributed `shard` (Partial FC), the logits are the global batch against this rank's
    classes: K, the top-K threshold of each row and every softmax sum are taken across ranks."""

    def __init__(self, temperature: float = 4.0, tau: float = 0.93, binary_weight: float = 1.0,
                 primary_weight: float = 4.0, secondary_weight: float = 0.0, warmup_steps: int = 0,
                 shard: ClassShard | None = None) -> None:
        super().__init__()
        self.shard = shard
        self.temperature, self.tau = temperature, tau
        self.binary_weight, self.primary_weight, self.secondary_weight = binary_weight, primary_weight, secondary_weight
        self.warmup_steps = warmup_steps
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def primary_mask(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        k = primary_size(student_logits.detach(), self.tau)
        forced = student_logits.detach().scatter(1, labels.view(-1, 1), float("inf"))
        top = forced.topk(k, dim=1).indices
        return torch.zeros_like(student_logits, dtype=torch.bool).scatter(1, top, True)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        if self.shard is not None and self.shard.distributed:
            return self.ramp(self.sharded_loss(student_logits, teacher_logits, labels))
        t = self.temperature
        batch = student_logits.shape[0]
        primary = self.primary_mask(student_logits, labels)
        secondary = ~primary
        p_s = F.softmax(student_logits / t, dim=1)
        p_t = F.softmax(teacher_logits / t, dim=1)
        binary_s = torch.stack([(p_s * primary).sum(1), (p_s * secondary).sum(1)], dim=1)
        binary_t = torch.stack([(p_t * primary).sum(1), (p_t * secondary).sum(1)], dim=1)
        binary = kl_sum(binary_s.clamp_min(1e-12).log(), binary_t)
        loss = self.binary_weight * binary + self.primary_weight * self.group_kl(
            student_logits, teacher_logits, secondary)
        if self.secondary_weight:
            loss = loss + self.secondary_weight * self.group_kl(student_logits, teacher_logits, primary)
        return self.ramp(loss * t * t / batch)

    def ramp(self, loss: Tensor) -> Tensor:
        if self.training:
            self.steps += 1
        if self.warmup_steps > 0:
            loss = loss * min(float(self.steps) / self.warmup_steps, 1.0)
        return loss

    @torch.no_grad()
    def sharded_primary_mask(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        """Each row's top-K classes over every shard (the ground truth forced in), as a local mask."""
        log_p = sharded_log_softmax(student_logits.detach(), 1.0)
        k = size_from_mass(self.shard.gather_rows(log_p.exp().sum(dim=0)), self.tau, student_logits.shape[0])
        forced = student_logits.detach().clone()
        rows = torch.nonzero(labels != -1).squeeze(1)
        forced[rows, labels[rows]] = float("inf")
        local = forced.topk(min(k, forced.shape[1]), dim=1).values
        padded = torch.full((forced.shape[0], k), float("-inf"), dtype=forced.dtype, device=forced.device)
        padded[:, : local.shape[1]] = local
        threshold = torch.cat(world_ops.all_gather(padded), dim=1).topk(k, dim=1).values[:, -1:]
        return forced >= threshold

    def sharded_loss(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        """The loss above over class-sharded logits. Every term is a sum over classes, taken as an
        all-reduce of this rank's part; the loss is the same on every rank, so its gradient is
        divided by the world size (each rank's backward adds one copy through the all-reduces)."""
        t = self.temperature
        batch = student_logits.shape[0]
        primary = self.sharded_primary_mask(student_logits, labels)
        secondary = ~primary
        log_s, log_t = sharded_log_softmax(student_logits, t), sharded_log_softmax(teacher_logits.detach(), t)
        p_s, p_t = log_s.exp(), log_t.exp()
        # Each row's (primary, secondary) probability mass over every rank's classes.
        binary_s = world_ops.all_reduce_with_grad(torch.stack([(p_s * primary).sum(1), (p_s * secondary).sum(1)], 1))
        binary_t = world_ops.all_reduce_with_grad(torch.stack([(p_t * primary).sum(1), (p_t * secondary).sum(1)], 1))
        binary = (torch.xlogy(binary_t, binary_t) - binary_t * binary_s.clamp_min(1e-12).log()).sum()
        loss = self.binary_weight * binary + self.primary_weight * self.sharded_group_kl(
            student_logits, teacher_logits, secondary)
        if self.secondary_weight:
            loss = loss + self.secondary_weight * self.sharded_group_kl(student_logits, teacher_logits, primary)
        return scale_gradient(loss * t * t / batch, 1.0 / self.shard.layout.world_size)

    def sharded_group_kl(self, student_logits: Tensor, teacher_logits: Tensor, excluded: Tensor) -> Tensor:
        shift = 1000.0 * excluded.to(student_logits.dtype)
        log_s = sharded_log_softmax(student_logits / self.temperature - shift, 1.0)
        log_t = sharded_log_softmax(teacher_logits.detach() / self.temperature - shift, 1.0)
        p_t = log_t.exp()
        return world_ops.all_reduce_with_grad((torch.xlogy(p_t, p_t) - p_t * log_s).sum())

    def group_kl(self, student_logits: Tensor, teacher_logits: Tensor, excluded: Tensor) -> Tensor:
        """KL between the two distributions renormalised over the classes not `excluded`."""
        t = self.temperature
        shift = 1000.0 * excluded.to(student_logits.dtype)
        return kl_sum(F.log_softmax(student_logits / t - shift, dim=1), F.softmax(teacher_logits / t - shift, dim=1))


@dataclass(frozen=True)
class GKDOptions(LogitOptions):
    margin_logits: bool = option(True, "distil margin-applied logits (True, official gkd_adaptive.py)")
    tau: float = option(0.93, "cumulative probability that closes the primary group (0.93, official code)", above=0, high=1)
    binary_weight: float = option(1.0, "weight of the primary/secondary binary term (1, official code)", low=0)
    primary_weight: float = option(4.0, "weight of the primary-group KL (4, official code)", low=0)
    secondary_weight: float = option(0.0, "weight of the secondary-group KL (0, official code)", low=0)
    warmup_epochs: float = option(0.0, "linear ramp of the KD weight in epochs (the paper uses 10)", low=0)


@register_distiller
class GKD(LogitDistiller):
    name = "gkd"
    Options = GKDOptions

    @classmethod
    def make_loss(cls, options: GKDOptions, setup: DistillSetup) -> nn.Module:
        if options.warmup_epochs < 0:
            raise ConfigError(f"distill.options (gkd): warmup_epochs is {options.warmup_epochs}, expected 0 or more")
        if options.warmup_epochs > 0 and setup.batches_per_epoch <= 0:
            raise ConfigError("distill.options (gkd): warmup_epochs needs the epoch length, "
                              "but the setup gives batches_per_epoch 0")
        warmup_steps = max(1, round(options.warmup_epochs * setup.batches_per_epoch)) if options.warmup_epochs else 0
        return GKDLoss(options.temperature, options.tau, options.binary_weight, options.primary_weight,
                       options.secondary_weight, warmup_steps, shard=class_shard(setup, "gkd"))
