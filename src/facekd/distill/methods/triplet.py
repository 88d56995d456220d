"""Triplet distillation (Feng et al., arXiv 1905.04457), after the MarginDistillation repository.

For a triplet (a, p, n) on L2-normalised embeddings, with D the squared L2 distance (`l2`) or
the angle arccos<.,.> (`cos`):
    d      = max(T(a,n) - T(a,p), 0)                  from the teacher's embeddings
    F(d)   = (M_max - M_min) / d_max * d + M_min       d_max = max over the batch's triplets
    loss   = mean over triplets of max(D_s(a,p) - D_s(a,n) + F(d), 0)
The official code feeds offline-mined triplets; here every (anchor, positive, negative) triple
of the batch with label(a) = label(p) != label(n) is used (batch-all), so the loss needs batches
with repeated identities. The reference fine-tunes an ArcFace student with this loss alone;
facekd adds the identity loss (`identity_weight`, set it to 0 for the reference recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.registry import register_distiller
from facekd.distill.feature_kd import FeatureDistiller, FeatureOptions
from facekd.distill.options import option
from facekd.errors import ConfigError

DISTANCES = ("l2", "cos")


def pair_distances(e: Tensor, distance: str) -> Tensor:
    e = F.normalize(e, dim=1)
    cosine = (e @ e.t()).clamp(-1.0, 1.0)
    if distance == "l2":
        return 2.0 - 2.0 * cosine  # squared L2 between unit vectors
    # Keep arccos away from +-1, where its derivative is infinite (anchor paired with itself).
    return torch.acos(cosine.clamp(-1.0 + 1e-6, 1.0 - 1e-6))


class TripletDistillationLoss(nn.Module):
    def __init__(self, distance: str = "l2", margin_max: float = 0.5, margin_min: float = 0.2) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(f"triplet distance: found {distance!r}, expected one of {DISTANCES}")
        self.distance, self.margin_max, self.margin_min = distance, margin_max, margin_min

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        same = labels.view(-1, 1) == labels.view(1, -1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        # valid[a, p, n]: p shares a's identity (p != a), n does not.
        valid = (same & ~eye).unsqueeze(2) & (~same).unsqueeze(1)
        if not valid.any():
            return student.new_zeros(())
        a, p, n = valid.nonzero(as_tuple=True)
        with torch.no_grad():
            t = pair_distances(teacher, self.distance)
            gap = (t[a, n] - t[a, p]).clamp_min(0.0)
            d_max = gap.max()
            scale = (self.margin_max - self.margin_min) / d_max if d_max > 0 else 0.0
            margin = scale * gap + self.margin_min
        s = pair_distances(student, self.distance)
        return (s[a, p] - s[a, n] + margin).clamp_min(0.0).mean()


@dataclass(frozen=True)
class TripletOptions(FeatureOptions):
    distance: str = option("l2", "pair distance: l2 (squared, unit vectors) or cos (the angle) (l2, MarginDistillation repository)",
                           choices=DISTANCES)
    margin_max: float = option(0.5, "margin of the most separated teacher triplet (0.5, MarginDistillation repository)", low=0)
    margin_min: float = option(0.2, "margin of the least separated teacher triplet (0.2, MarginDistillation repository)", low=0)


@register_distiller
class TripletDistillation(FeatureDistiller):
    name = "triplet"
    Options = TripletOptions

    @classmethod
    def make_loss(cls, options: TripletOptions, student_size: int, teacher_size: int) -> nn.Module:
        return TripletDistillationLoss(options.distance, options.margin_max, options.margin_min)
