"""Correlation congruence (Peng et al., ICCV 2019), as used in the face-KD tables (CCKD).

K = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! * (n(E) n(E)^T)^p   (element-wise powers:
the Taylor expansion of a Gaussian RBF kernel on unit vectors), loss = MSE(K_s, K_t).
Defaults gamma = 0.4, P = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.registry import register_distiller
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.losses import cosine_matrix
from facekd.distill.options import option


class CorrelationCongruenceLoss(nn.Module):
    def __init__(self, gamma: float = 0.4, order: int = 2) -> None:
        super().__init__()
        self.coefficients = [math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) for p in range(order + 1)]

    def kernel(self, e: Tensor) -> Tensor:
        similarity = cosine_matrix(e)
        return sum(c * similarity.pow(p) for p, c in enumerate(self.coefficients))

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(self.kernel(student), self.kernel(teacher))


@dataclass(frozen=True)
class CCOptions(FeatureOptions):
    gamma: float = option(0.4, "gamma of the Gaussian-RBF kernel's Taylor expansion (0.4, Peng et al.)", above=0)
    order: int = option(2, "order P of the expansion (2, Peng et al.)", low=0)


@register_distiller
class CorrelationCongruence(FeatureDistiller):
    name = "cc"
    Options = CCOptions

    @classmethod
    def make_loss(cls, options: CCOptions, student_size: int, teacher_size: int) -> nn.Module:
        return CorrelationCongruenceLoss(options.gamma, options.order)
