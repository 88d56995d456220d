"""Hard DarkRank (Chen et al., AAAI 2018), as implemented for face KD in TFace.

Scores s_ij = -alpha * ||n(e_i) - n(e_j)||^beta. For every anchor i, the teacher's scores give
the order of its `list_length` nearest other samples; the loss is the negative log-likelihood of
that order under the student's scores (Plackett-Luce):
    -sum_k [ s_{i,pi_k} - logsumexp(s_{i,pi_k}, ..., s_{i,pi_L}) ],  averaged over anchors.
Defaults alpha = 3, beta = 3, list length 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.registry import register_distiller
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.options import option


def rank_scores(e: Tensor, alpha: float, beta: float) -> Tensor:
    e = F.normalize(e, dim=1)
    # Clamp before the power: d^beta has an infinite slope at 0 for beta < 1 and sqrt(0) has none.
    squared = (2.0 - 2.0 * (e @ e.t())).clamp_min(1e-12)
    return -alpha * squared.sqrt().pow(beta)


class HardDarkRankLoss(nn.Module):
    def __init__(self, alpha: float = 3.0, beta: float = 3.0, list_length: int = 3) -> None:
        super().__init__()
        self.alpha, self.beta, self.list_length = alpha, beta, list_length

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        length = min(self.list_length, student.shape[0] - 1)
        with torch.no_grad():
            teacher_scores = rank_scores(teacher, self.alpha, self.beta)
            teacher_scores.fill_diagonal_(float("-inf"))  # an anchor is not its own neighbour
            order = teacher_scores.topk(length, dim=1).indices
        ordered = rank_scores(student, self.alpha, self.beta).gather(1, order)
        # logsumexp over the suffix k..L of each list, for every k: a reversed cumulative logsumexp.
        suffix = torch.logcumsumexp(ordered.flip(1), dim=1).flip(1)
        return -(ordered - suffix).sum(dim=1).mean()


@dataclass(frozen=True)
class DarkRankOptions(FeatureOptions):
    alpha: float = option(3.0, "scale of the similarity score (3, TFace's DarkRank)", above=0)
    beta: float = option(3.0, "power of the distance in the score (3, TFace's DarkRank)", above=0)
    list_length: int = option(3, "length of the ranked list (3, TFace's DarkRank)", low=1)


@register_distiller
class DarkRank(FeatureDistiller):
    name = "darkrank"
    Options = DarkRankOptions

    @classmethod
    def make_loss(cls, options: DarkRankOptions, student_size: int, teacher_size: int) -> nn.Module:
        return HardDarkRankLoss(options.alpha, options.beta, options.list_length)
