"""FitNet (Romero et al. 2015) on face embeddings, as in the EKD/GKD comparison tables.

loss_kd = MSE(r(e_s), e_t): mean over batch and dimensions of the squared difference between
the student's raw embedding and the teacher's. r is the identity when the sizes match
(TFace's `fitnet.py`), otherwise a learned linear regressor from student to teacher size.
"""

from __future__ import annotations

from torch import nn

from facekd.distill.common import EmbeddingDistance
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.registry import register_distiller


@register_distiller
class FitNet(FeatureDistiller):
    name = "fitnet"
    Options = FeatureOptions

    @classmethod
    def make_loss(cls, options: FeatureOptions, student_size: int, teacher_size: int) -> nn.Module:
        return EmbeddingDistance("mse", student_size, teacher_size)
