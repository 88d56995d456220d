"""Relational KD (Park et al., CVPR 2019) on embeddings, with the face-KD defaults w_d=25, w_a=50.

Distance term: pairwise Euclidean distances within the batch, each divided by the mean of the
non-zero distances, compared with Huber (smooth L1, beta 1). Angle term: for every triple
(i, j, k), the cosine of the angle at j between e_i - e_j and e_k - e_j, compared with Huber.
The teacher's relations carry no gradient. Sizes of student and teacher may differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.registry import register_distiller
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.options import option


def normalized_distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances divided by their mean over the off-diagonal positive entries."""
    distances = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")  # exact zero diagonal
    positive = distances[distances > 0]
    return distances / positive.mean()


def triplet_angles(e: Tensor) -> Tensor:
    """cos of the angle at j for every (i, j, k): <n(e_i - e_j), n(e_k - e_j)>, flattened."""
    differences = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(differences, differences.transpose(1, 2)).reshape(-1)


class RKDLoss(nn.Module):
    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_distances = normalized_distances(teacher)
            teacher_angles = triplet_angles(teacher)
        loss_distance = F.smooth_l1_loss(normalized_distances(student), teacher_distances)
        loss_angle = F.smooth_l1_loss(triplet_angles(student), teacher_angles)
        return self.distance_weight * loss_distance + self.angle_weight * loss_angle


@dataclass(frozen=True)
class RKDOptions(FeatureOptions):
    distance_weight: float = option(25.0, "weight of the distance-wise term (25, Park et al.)", low=0)
    angle_weight: float = option(50.0, "weight of the angle-wise term (50, Park et al.)", low=0)


@register_distiller
class RKD(FeatureDistiller):
    name = "rkd"
    Options = RKDOptions

    @classmethod
    def make_loss(cls, options: RKDOptions, student_size: int, teacher_size: int) -> nn.Module:
        return RKDLoss(options.distance_weight, options.angle_weight)
