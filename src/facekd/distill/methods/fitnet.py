"""FitNet (Romero et al. 2015) on face embeddings, as in the EKD/GKD comparison tables.

loss_kd = MSE(r(e_s), e_t): mean over batch and dimensions of the squared difference between
the student's raw embedding and the teacher's. r is the identity when the sizes match
(TFace's `fitnet.py`), otherwise a learned linear regressor from student to teacher size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.base import register_distiller
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions


class FitNetLoss(nn.Module):
    def __init__(self, student_size: int, teacher_size: int) -> None:
        super().__init__()
        self.regressor = (nn.Identity() if student_size == teacher_size
                          else nn.Linear(student_size, teacher_size, bias=False))

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(self.regressor(student), teacher)


@register_distiller
class FitNet(FeatureDistiller):
    name = "fitnet"
    Options = FeatureOptions

    @classmethod
    def make_loss(cls, options: FeatureOptions, student_size: int, teacher_size: int) -> nn.Module:
        return FitNetLoss(student_size, teacher_size)
