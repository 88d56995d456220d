"""The shared shape of embedding-level methods: identity loss + weight * a loss on embeddings.

FitNet, RKD, SP, CC, DarkRank, EKD and triplet distillation all train a fresh student with a
margin head and add one term that compares the student's batch of embeddings with the
teacher's. Each of those methods is a `FeatureDistiller` subclass that only names its loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from facekd.distill.common import build_margin_head, build_student, embedding_size
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.options import option
from facekd.distill.teacher import EMBEDDING, Teacher, TeacherOutputs


@dataclass(frozen=True)
class FeatureOptions:
    weight: float = option(1.0, "weight of the distillation term (1, as TFace's KD baselines)", low=0)
    identity_weight: float = option(1.0, "weight of the margin-softmax identity loss (1, as TFace)", low=0)


class FeatureDistiller(Distiller):
    """Student + margin head, trained with `identity_weight * CE + weight * loss(e_s, e_t, y)`."""

    teacher_needs = frozenset({EMBEDDING})
    Options: ClassVar[type] = FeatureOptions

    def __init__(self, student: nn.Module, head: nn.Module, loss: nn.Module, teacher: Teacher, *,
                 options: Any, input_size: int) -> None:
        spec = student.spec
        super().__init__(student, teacher, backbone_spec=(spec.name, dict(spec.kwargs)), input_size=input_size)
        self.head = head
        self.distill_loss = loss
        self.options = options

    @classmethod
    def make_loss(cls, options: Any, student_size: int, teacher_size: int) -> nn.Module:
        raise NotImplementedError(f"{cls.__qualname__} must implement make_loss")

    @classmethod
    def create(cls, setup: DistillSetup) -> "FeatureDistiller":
        options = setup.options
        student = build_student(setup)
        size = embedding_size(student)
        teacher_size = setup.teacher.embedding_size
        loss = cls.make_loss(options, size, teacher_size)
        return cls(student, build_margin_head(setup, size), loss, setup.teacher,
                   options=options, input_size=setup.student.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        embedding = self.backbone(images).float()
        identity = self.head(embedding, labels)["loss"]
        term = self.distill_loss(embedding, teacher.embedding, labels)
        return {"loss_cls": self.options.identity_weight * identity, "loss_kd": self.options.weight * term}
