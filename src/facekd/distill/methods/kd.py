"""Hinton KD (Hinton et al. 2015) on face-classification logits.

loss_kd = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes and averaged over
the batch, with T = 4 (TFace and FaceX-Zoo defaults). By default z = s * cos(theta) without the
margin for both networks (the margin belongs to the identity loss), `margin_logits` distils the
margin-applied logits instead. Total: identity_weight * margin CE + weight * loss_kd.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.base import DistillSetup, register_distiller
from facekd.distill.logit_kd import LogitDistiller, LogitOptions


class HintonKDLoss(nn.Module):
    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        t = self.temperature
        log_student = F.log_softmax(student_logits / t, dim=1)
        teacher = F.softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_student, teacher, reduction="batchmean") * t * t


@register_distiller
class HintonKD(LogitDistiller):
    name = "kd"
    Options = LogitOptions

    @classmethod
    def make_loss(cls, options: LogitOptions, setup: DistillSetup) -> nn.Module:
        return HintonKDLoss(options.temperature)
