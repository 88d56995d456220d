"""The shared shape of logit-level methods (Hinton KD, GKD): identity loss + weight * a loss on logits.

Both networks' logits are scaled cosines to their own class centres: the student's from its
margin head, the teacher's from its frozen centres. `margin_logits` chooses whether the
margin is applied to the target logit before distilling (GKD does, on both; classic KD does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from facekd.distill.common import build_margin_head, build_student, embedding_size
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.options import option
from facekd.distill.teacher import COSINE, Teacher, TeacherOutputs


@dataclass(frozen=True)
class LogitOptions:
    weight: float = option(1.0, "weight of the distillation term (1, as TFace's KD baseline)", low=0)
    identity_weight: float = option(1.0, "weight of the margin-softmax identity loss (1, as TFace)", low=0)
    temperature: float = option(4.0, "softmax temperature T (4: TFace and FaceX-Zoo defaults)", above=0)
    margin_logits: bool = option(False, "distil margin-applied logits instead of plain s*cos (GKD does)")


class LogitDistiller(Distiller):
    teacher_needs = frozenset({COSINE})
    teacher_extras = frozenset({"class centres"})
    Options: ClassVar[type] = LogitOptions

    def __init__(self, student: nn.Module, head: nn.Module, loss: nn.Module, teacher: Teacher, *,
                 options: Any, input_size: int) -> None:
        spec = student.spec
        super().__init__(student, teacher, backbone_spec=(spec.name, dict(spec.kwargs)), input_size=input_size)
        teacher.centres_for(head.weight.shape[0], self.name)
        self.head = head
        self.distill_loss = loss
        self.options = options

    @classmethod
    def make_loss(cls, options: Any, setup: DistillSetup) -> nn.Module:
        raise NotImplementedError(f"{cls.__qualname__} must implement make_loss")

    @classmethod
    def create(cls, setup: DistillSetup) -> "LogitDistiller":
        options = setup.options
        student = build_student(setup)
        head = build_margin_head(setup, embedding_size(student))
        return cls(student, head, cls.make_loss(options, setup), setup.teacher, options=options,
                   input_size=setup.student.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        out = self.head(self.backbone(images).float(), labels)
        margin = self.head.margin
        if self.options.margin_logits:
            student_logits = out["logits"]
            with torch.no_grad():
                teacher_logits = margin(teacher.cosine, labels)
        else:
            student_logits = out["cosine"] * margin.s
            teacher_logits = teacher.cosine * margin.s
        term = self.distill_loss(student_logits, teacher_logits, labels)
        return {"loss_cls": self.options.identity_weight * out["loss"], "loss_kd": self.options.weight * term}
