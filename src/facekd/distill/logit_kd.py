"""The shared shape of logit-level methods (Hinton KD, GKD): identity loss + weight * a loss on logits.

Both networks' logits are scaled cosines to their own class centres: the student's from its
margin head, the teacher's from its frozen centres. `margin_logits` chooses whether the
margin is applied to the target logit before distilling (GKD does, on both; classic KD does not).
Under Partial FC (head.partial_fc) both networks' logits are the global batch against this
process's class rows, and the distillation loss must take class-sharded logits (kd's does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.common import build_margin_head, build_student, class_shard, embedding_size
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.options import option
from facekd.distill.teacher import COSINE, EMBEDDING, Teacher, TeacherOutputs
from facekd.models.partial_fc import ClassShard, ShardLayout


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
                 options: Any, input_size: int, num_classes: int, shard: ClassShard | None = None) -> None:
        spec = student.spec
        if shard is not None:
            # Under Partial FC the teacher's logits come from its embedding and this shard's rows
            # of its centres: the embedding can be cached, the full logits could not.
            self.teacher_needs = frozenset({EMBEDDING})
        super().__init__(student, teacher, backbone_spec=(spec.name, dict(spec.kwargs)), input_size=input_size)
        centres = teacher.centres_for(num_classes, self.name)
        self.head = head
        self.distill_loss = loss
        self.options = options
        self.shard = shard
        if shard is not None:
            self.register_buffer("teacher_centres", shard.rows(centres).clone(), persistent=False)

    def row_shards(self) -> dict[str, ShardLayout]:
        return {"teacher_centres": self.shard.layout} if self.shard else {}

    @classmethod
    def make_loss(cls, options: Any, setup: DistillSetup) -> nn.Module:
        raise NotImplementedError(f"{cls.__qualname__} must implement make_loss")

    @classmethod
    def create(cls, setup: DistillSetup) -> "LogitDistiller":
        options = setup.options
        student = build_student(setup)
        shard = class_shard(setup, cls.name)
        head = build_margin_head(setup, embedding_size(student))
        return cls(student, head, cls.make_loss(options, setup), setup.teacher, options=options,
                   input_size=setup.student.input_size, num_classes=setup.num_classes, shard=shard)

    def teacher_cosine(self, teacher: TeacherOutputs) -> Tensor:
        """The teacher's cosines to its centres, for the rows and columns the student head scored."""
        if self.shard is None:
            return teacher.cosine
        embeddings = self.shard.gather(teacher.embedding)
        return F.normalize(embeddings.float(), dim=1) @ self.teacher_centres.t()

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        out = self.head(self.backbone(images).float(), labels)
        margin = self.head.margin
        cosine = self.teacher_cosine(teacher)
        # Under Partial FC the head scored the global batch: its labels index this shard's columns.
        target = out.get("labels", labels)
        if self.options.margin_logits:
            student_logits = out["logits"]
            with torch.no_grad():
                teacher_logits = margin(cosine, target)
        else:
            student_logits = out["cosine"] * margin.s
            teacher_logits = cosine * margin.s
        term = self.distill_loss(student_logits, teacher_logits, target)
        return {"loss_cls": self.options.identity_weight * out["loss"], "loss_kd": self.options.weight * term}
