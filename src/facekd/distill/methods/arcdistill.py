"""ArcDistill / ProxylessKD (arXiv 2011.00265; AdaDistill's "ArcDistill" baseline): train against the teacher's head.

Formula:

    W        = the teacher's class centres, L2-normalised and frozen (a buffer, never optimised)
    cos_ij   = <n(e_s,i), W_j>
    L        = cross-entropy(CombinedMargin(s, m1, m2, m3)(cos, y), y)

There is no explicit distillation term: sharing the teacher's classifier forces the student's
embeddings into the teacher's space, so student embeddings can be matched against teacher ones.

Silent points, and the reading chosen here:
- The margin is the method's own option, not the config's identity-loss margin: ArcFace s = 64,
  m = 0.45 (AdaDistill's setting for ArcDistill), or CosFace m = 0.35 with `loss: cosface`.
- The margin follows `facekd.models.heads.CombinedMargin` (insightface's conventions).
- The student's embedding size must equal the teacher's, and its classes the teacher's.

Teacher outputs: none per sample (only the centres, read once), so the teacher never runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.base import (
    Distiller,
    DistillSetup,
    Teacher,
    TeacherOutputs,
    parse_options,
    register_distiller,
)
from facekd.distill.feature_kd import build_student
from facekd.distill.methods.shrinkteanet import probe_features
from facekd.errors import ConfigError
from facekd.models.heads import CombinedMargin

MARGIN_LOSSES = ("arcface", "cosface")


def margin_from_options(method: str, loss: str, s: float, m_arcface: float, m_cosface: float) -> CombinedMargin:
    """ArcFace is CombinedMargin(s, 1, m, 0); CosFace is CombinedMargin(s, 1, 0, m)."""
    if loss not in MARGIN_LOSSES:
        raise ConfigError(f"{method}.loss: found {loss!r}, expected one of {list(MARGIN_LOSSES)}")
    if s <= 0:
        raise ConfigError(f"{method}.s: found {s}, expected a scale > 0")
    if loss == "arcface":
        return CombinedMargin(s, 1.0, m_arcface, 0.0)
    return CombinedMargin(s, 1.0, 0.0, m_cosface)


def centre_cosine_matrix(embeddings: Tensor, centres: Tensor) -> Tensor:
    """cos(theta) of every embedding to every centre (rows need not be normalised), clamped to [-1, 1]."""
    return (F.normalize(embeddings.float(), dim=1) @ F.normalize(centres.float(), dim=1).t()).clamp(-1.0, 1.0)


def build_student_with_embedding(setup: DistillSetup, method: str, size: int) -> nn.Module:
    """Build the student and check that its embedding has `size` dimensions (the teacher's)."""
    student = build_student(setup)
    found = probe_features(student, setup.student.input_size)["embedding"].shape[1]
    if found != size:
        raise ConfigError(
            f"{method}: student {setup.student.name} has a {found}-d embedding, the teacher's is {size}-d; "
            f"set the student's num_features to {size}"
        )
    return student


class FrozenCentreMarginLoss(nn.Module):
    """Margin softmax against fixed class centres."""

    def __init__(self, centres: Tensor, margin: CombinedMargin) -> None:
        super().__init__()
        # Not persistent: the centres are the teacher's and are rebuilt from it, not checkpointed.
        self.register_buffer("centres", F.normalize(centres.detach().float(), dim=1), persistent=False)
        self.margin = margin

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        logits = self.margin(centre_cosine_matrix(embeddings, self.centres), labels)
        return F.cross_entropy(logits, labels)


@register_distiller
class ArcDistill(Distiller):
    name = "arcdistill"
    teacher_needs = frozenset()

    @dataclass
    class Options:
        loss: str = "arcface"  # or "cosface"
        s: float = 64.0
        m_arcface: float = 0.45
        m_cosface: float = 0.35

    def __init__(self, student: nn.Module, loss: FrozenCentreMarginLoss, teacher: Teacher, *, backbone_spec,
                 input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.margin_loss = loss

    @classmethod
    def create(cls, setup: DistillSetup) -> "ArcDistill":
        options = parse_options(cls.Options, setup.options, "arcdistill")
        margin = margin_from_options("arcdistill", options.loss, options.s, options.m_arcface, options.m_cosface)
        teacher = setup.teacher
        centres = teacher.centres_for(setup.num_classes, "arcdistill")
        student = build_student_with_embedding(setup, "arcdistill", centres.shape[1])
        return cls(student, FrozenCentreMarginLoss(centres, margin), teacher,
                   backbone_spec=(setup.student.name, dict(setup.student.kwargs)),
                   input_size=setup.student.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        return {"loss_cls": self.margin_loss(self.backbone(images), labels)}
