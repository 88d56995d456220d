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

from torch import Tensor, nn

from facekd.distill.common import build_student_with_embedding, class_shard
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.losses import MARGIN_LOSSES, FrozenCentreMarginLoss, margin_from_options
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import Teacher, TeacherOutputs


@register_distiller
class ArcDistill(Distiller):
    name = "arcdistill"
    teacher_needs = frozenset()
    teacher_extras = frozenset({"class centres"})

    @dataclass(frozen=True)
    class Options:
        loss: str = option("arcface", "margin softmax: arcface or cosface (arcface, AdaDistill's ArcDistill setting)",
                           choices=MARGIN_LOSSES)
        s: float = option(64.0, "logit scale (64, as ArcFace and AdaDistill)", above=0)
        m_arcface: float = option(0.45, "ArcFace angular margin (0.45, AdaDistill's official code)", low=0)
        m_cosface: float = option(0.35, "CosFace additive margin (0.35, AdaDistill's official code)", low=0)

    def __init__(self, student: nn.Module, loss: FrozenCentreMarginLoss, teacher: Teacher, *, backbone_spec,
                 input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.margin_loss = loss

    @classmethod
    def create(cls, setup: DistillSetup) -> "ArcDistill":
        options = setup.options
        margin = margin_from_options("arcdistill", options.loss, options.s, options.m_arcface, options.m_cosface)
        teacher = setup.teacher
        centres = teacher.centres_for(setup.num_classes, "arcdistill")
        student = build_student_with_embedding(setup, "arcdistill", centres.shape[1])
        loss = FrozenCentreMarginLoss(centres, margin, shard=class_shard(setup, "arcdistill"))
        return cls(student, loss, teacher,
                   backbone_spec=(setup.student.name, dict(setup.student.kwargs)),
                   input_size=setup.student.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        return {"loss_cls": self.margin_loss(self.backbone(images), labels)}
