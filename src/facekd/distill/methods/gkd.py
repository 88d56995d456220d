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
from facekd.errors import ConfigError

K_STEP = 100  # the official search steps K by 100 classes


def primary_size(student_logits: Tensor, tau: float) -> int:
    mass = F.softmax(student_logits, dim=1).sum(dim=0).sort(descending=True).values
    cumulative = mass.cumsum(0)
    candidates = torch.arange(1, len(mass), K_STEP, device=mass.device)
    reached = cumulative[candidates - 1] >= tau * student_logits.shape[0]
    return int(candidates[reached][0]) if reached.any() else len(mass)


def kl_sum(log_student: Tensor, teacher: Tensor) -> Tensor:
    return F.kl_div(log_student, teacher, reduction="sum")


class GKDLoss(nn.Module):
    def __init__(self, temperature: float = 4.0, tau: float = 0.93, binary_weight: float = 1.0,
                 primary_weight: float = 4.0, secondary_weight: float = 0.0, warmup_steps: int = 0) -> None:
        super().__init__()
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
        loss = loss * t * t / batch
        if self.training:
            self.steps += 1
        if self.warmup_steps > 0:
            loss = loss * min(float(self.steps) / self.warmup_steps, 1.0)
        return loss

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
    partial_fc_refusal = ("its primary group is each sample's top-K classes over the whole classifier, "
                          "which facekd does not shard; use kd")

    @classmethod
    def make_loss(cls, options: GKDOptions, setup: DistillSetup) -> nn.Module:
        if options.warmup_epochs < 0:
            raise ConfigError(f"distill.options (gkd): warmup_epochs is {options.warmup_epochs}, expected 0 or more")
        if options.warmup_epochs > 0 and setup.batches_per_epoch <= 0:
            raise ConfigError("distill.options (gkd): warmup_epochs needs the epoch length, "
                              "but the setup gives batches_per_epoch 0")
        warmup_steps = max(1, round(options.warmup_epochs * setup.batches_per_epoch)) if options.warmup_epochs else 0
        return GKDLoss(options.temperature, options.tau, options.binary_weight, options.primary_weight,
                       options.secondary_weight, warmup_steps)
