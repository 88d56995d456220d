"""Similarity-preserving KD (Tung and Mori, ICCV 2019) on L2-normalised embeddings.

G = n(E) n(E)^T for student and teacher (B x B cosine matrices), loss = ||G_s - G_t||_F^2 / B^2.
"""

from __future__ import annotations

from torch import Tensor, nn

from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.losses import cosine_matrix
from facekd.distill.registry import register_distiller


class SimilarityPreservingLoss(nn.Module):
    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        batch = student.shape[0]
        return (cosine_matrix(student) - cosine_matrix(teacher)).pow(2).sum() / batch**2


@register_distiller
class SimilarityPreserving(FeatureDistiller):
    name = "sp"
    Options = FeatureOptions

    @classmethod
    def make_loss(cls, options: FeatureOptions, student_size: int, teacher_size: int) -> nn.Module:
        return SimilarityPreservingLoss()
