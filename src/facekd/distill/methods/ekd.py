"""Evaluation-oriented KD (Huang et al., CVPR 2022), after TFace's official code.

All pairs of the batch's upper triangle are split into positive (same label) and negative pairs.
Thresholds at FPR 1/a, a in {10, ..., 1e6}, are the negatives' similarities at index
floor(len/a) in descending order, for student and teacher separately, kept as EMA buffers
(t <- 0.01 t_batch + 0.99 t). A pair's soft rank r(s) = sum_k sigmoid((s - t_k)/tau), tau = 0.01,
with the exponent clamped to +-50. loss = 0.02 MSE(r_s, r_t) over positives
+ 0.01 MSE(r_s, r_t) over the `top_k` hardest negatives by student similarity.

Where the official code differs by batch layout: it all-gathers features across GPUs and uses an
identity-balanced half batch so that positives exist; under torch.distributed this loss gathers
the batch the same way, and with the engine's random batches positives are those that occur.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.registry import register_distiller
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.options import option
from facekd.train import distributed as world_ops


def soft_rank(similarity: Tensor, thresholds: Tensor, tau: float) -> Tensor:
    exponent = ((similarity.unsqueeze(1) - thresholds.unsqueeze(0)) / tau).clamp(-50.0, 50.0)
    return torch.sigmoid(exponent).sum(dim=1)


class EKDLoss(nn.Module):
    def __init__(self, fpr_denominators: tuple[int, ...] = (10, 100, 1000, 10000, 100000, 1000000),
                 tau: float = 0.01, momentum: float = 0.01, top_k: int = 2000,
                 positive_weight: float = 0.02, negative_weight: float = 0.01) -> None:
        super().__init__()
        self.fpr_denominators = fpr_denominators
        self.tau, self.momentum, self.top_k = tau, momentum, top_k
        self.positive_weight, self.negative_weight = positive_weight, negative_weight
        self.register_buffer("student_thresholds", torch.zeros(len(fpr_denominators)))
        self.register_buffer("teacher_thresholds", torch.zeros(len(fpr_denominators)))

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        student, teacher, labels = gather_batch(student, teacher, labels)
        upper = torch.triu(torch.ones(len(labels), len(labels), dtype=torch.bool, device=labels.device), 1)
        same = (labels.view(-1, 1) == labels.view(1, -1))[upper]
        s_student = (F.normalize(student) @ F.normalize(student).t())[upper]
        with torch.no_grad():
            s_teacher = (F.normalize(teacher) @ F.normalize(teacher).t())[upper]
        neg_student, neg_teacher = s_student[~same], s_teacher[~same]
        order = neg_student.argsort(descending=True)
        if self.training and len(order) > 0:
            with torch.no_grad():
                index = torch.tensor([len(order) // a for a in self.fpr_denominators], device=order.device)
                index = index.clamp(max=len(order) - 1)
                batch_student = neg_student[order][index]
                batch_teacher = neg_teacher.sort(descending=True).values[index]
                self.student_thresholds.mul_(1 - self.momentum).add_(self.momentum * batch_student)
                self.teacher_thresholds.mul_(1 - self.momentum).add_(self.momentum * batch_teacher)
        loss = student.new_zeros(())
        if same.any():
            loss = loss + self.positive_weight * self.rank_mse(s_student[same], s_teacher[same])
        hard = order[: self.top_k]
        if len(hard) > 0:
            loss = loss + self.negative_weight * self.rank_mse(neg_student[hard], neg_teacher[hard])
        return loss

    def rank_mse(self, s_student: Tensor, s_teacher: Tensor) -> Tensor:
        return F.mse_loss(soft_rank(s_student, self.student_thresholds, self.tau),
                          soft_rank(s_teacher, self.teacher_thresholds, self.tau))


def gather_batch(student: Tensor, teacher: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The whole global batch on every rank (gradients flow to this rank's student rows)."""
    if not world_ops.is_distributed():
        return student, teacher, labels
    return (torch.cat(world_ops.all_gather_with_grad(student)),
            torch.cat(world_ops.all_gather(teacher.detach())), torch.cat(world_ops.all_gather(labels)))


@dataclass(frozen=True)
class EKDOptions(FeatureOptions):
    tau: float = option(0.01, "temperature of the rank weights (0.01, TFace's EKD)", above=0)
    momentum: float = option(0.01, "momentum of the running thresholds (0.01, TFace's EKD)", low=0, high=1)
    top_k: int = option(2000, "hardest negative pairs (by student similarity) kept per batch (2000, TFace's EKD)", low=1)


@register_distiller
class EKD(FeatureDistiller):
    name = "ekd"
    Options = EKDOptions

    @classmethod
    def make_loss(cls, options: EKDOptions, student_size: int, teacher_size: int) -> nn.Module:
        return EKDLoss(tau=options.tau, momentum=options.momentum, top_k=options.top_k)
