"""ShrinkTeaNet (Duong, Luu, Quach, Le, arXiv 1905.10620): angular distillation at every stage.

Formula (n = 4 stages, e_t = teacher embedding, n(v) = v / ||v||, d = the distance below):

    L = L_id(student) + lambda_4 * d(A(e_s), e_t) + sum_{i in stages} lambda_i * d(T_{i+1..4}(H_i(F^s_i)), e_t)
    lambda_i = lambda_{i+1} * stage_decay   -> (1/8, 1/4, 1/2, 1) with lambda_4 = 1, stage_decay = 1/2

- F^s_i is the student's stage-i map; H_i is a 1x1 conv (student channels -> teacher channels, no
  bias) + BatchNorm2d; T_{i+1..4} is the frozen teacher from stage i+1 on, including its head
  (`teacher.forward_from(i, .)`). Gradients flow through the frozen teacher into H_i and the student,
  never into the teacher. The routed target `T_{i+1..4}(F^t_i)` is the teacher embedding itself.
- A is the identity when the embedding sizes agree, else a bias-free Linear (student -> teacher size).
- L_id is the margin softmax of the config (`DistillSetup.margin`) on the student's own classifier.
- d ("loss" option): "(1-cos)^2" (default), "1-cos", "normalized_l2" = ||n(a) - n(b)||^2 = 2(1 - cos),
  and "l2" = ||a - b||^2, the paper's "Student-1" ablation. Every d is averaged over the batch.

Silent or ambiguous points, and the reading chosen here:
- Eq. 4 writes `|| 1 - n(a) * n(b) ||^2`; `*` is read as the inner product, so d = (1 - cos)^2.
- Eq. 4 compares G^s_n(F^s_n) with the teacher's block-n output; like the later re-implementations
  (MarginDistillation's code, TFace), the last-stage term here compares the final embeddings.
- The paper gives lambda_4 = 0.001 for the l2 variant "because the l2 loss is large"; with
  loss="l2" every lambda is multiplied by `l2_scale` (0.001), keeping the halving per stage.
- The margin loss used for L_id is not given; the config's margin (ArcFace by default) is used.
- Student and teacher stage maps must have the same spatial size (the paper's MobileFaceNet-R);
  this is checked once in `create` and refused with a ConfigError otherwise.

Teacher outputs: only the teacher embedding is read per sample, so the method can use the teacher
cache; the routing runs the (frozen) teacher network on the student's adapted maps every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from facekd.distill.common import EmbeddingDistance, build_margin_head, build_student, probe_features
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import EMBEDDING, STAGES, Teacher, TeacherOutputs
from facekd.errors import ConfigError

DISTANCES = ("(1-cos)^2", "1-cos", "normalized_l2", "l2")


def stage_adapter(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """H_i: 1x1 conv + BN mapping a student stage map to the teacher's channel count."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(teacher_channels),
    )


def check_stage_sizes(student: list[Tensor], teacher: list[Tensor], stages: tuple[int, ...]) -> None:
    for stage in stages:
        s_size, t_size = tuple(student[stage - 1].shape[-2:]), tuple(teacher[stage - 1].shape[-2:])
        if s_size != t_size:
            raise ConfigError(
                f"shrinkteanet stage {stage}: student map is {tuple(student[stage - 1].shape[1:])}, teacher map "
                f"is {tuple(teacher[stage - 1].shape[1:])}; their spatial sizes must match (same input size and strides)"
            )


@register_distiller
class ShrinkTeaNet(Distiller):
    name = "shrinkteanet"
    teacher_needs = frozenset({EMBEDDING})
    teacher_extras = frozenset({"stage network"})

    @dataclass(frozen=True)
    class Options:
        loss: str = option("(1-cos)^2", "distance d: Eq. 4 read as (1-cos)^2 (paper), or 1-cos, normalized_l2, l2",
                           choices=DISTANCES)
        lambda_final: float = option(1.0, "lambda_4, the weight of the final-embedding term (1, paper Eq. 7)", low=0)
        stage_decay: float = option(0.5, "lambda_i = lambda_{i+1} * stage_decay (1/2, paper Eq. 7)", low=0)
        stages: tuple[int, ...] = option((1, 2, 3), "stages routed through the teacher; [] turns them off "
                                         "(1, 2, 3: paper)", choices=(1, 2, 3))
        l2_scale: float = option(0.001, "multiplies every lambda when loss is l2 (0.001, paper)", low=0)

        def problem(self):
            if len(set(self.stages)) != len(self.stages):
                return "stages", list(self.stages), "distinct stage numbers among 1, 2, 3"
            return None

    def __init__(
        self,
        student: nn.Module,
        head: nn.Module,
        teacher: Teacher,
        *,
        options: "ShrinkTeaNet.Options",
        stage_adapters: nn.ModuleDict,
        final_adapter: nn.Module,
        backbone_spec,
        input_size: int,
    ) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.head = head
        self.stage_adapters = stage_adapters
        self.final_adapter = final_adapter
        self.distance = EmbeddingDistance(options.loss)
        scale = options.l2_scale if options.loss == "l2" else 1.0
        self.lambda_final = options.lambda_final * scale
        self.stage_lambdas = {
            stage: options.lambda_final * scale * options.stage_decay ** (4 - stage) for stage in sorted(options.stages)
        }

    @classmethod
    def create(cls, setup: DistillSetup) -> "ShrinkTeaNet":
        options = setup.options
        teacher = setup.teacher
        teacher.require(EMBEDDING)
        student = build_student(setup)
        student_features = probe_features(student, setup.student.input_size)
        adapters = nn.ModuleDict()
        if options.stages:
            teacher.require(STAGES)
            teacher_features = probe_features(teacher.network, teacher.input_size)
            check_stage_sizes(student_features["stages"], teacher_features["stages"], sorted(options.stages))
            for stage in sorted(options.stages):
                adapters[str(stage)] = stage_adapter(
                    student.stage_channels[stage - 1], teacher.stage_channels[stage - 1]
                )
        teacher_size = teacher.embedding_size
        student_size = student_features["embedding"].shape[1]
        final_adapter = (
            nn.Identity() if student_size == teacher_size else nn.Linear(student_size, teacher_size, bias=False)
        )
        head = build_margin_head(setup, student_size)
        return cls(
            student,
            head,
            teacher,
            options=options,
            stage_adapters=adapters,
            final_adapter=final_adapter,
            backbone_spec=(setup.student.name, dict(setup.student.kwargs)),
            input_size=setup.student.input_size,
        )

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        features = self.backbone.forward_features(images)
        embedding = features["embedding"]
        target = teacher.embedding.float()
        losses = {
            "loss_cls": self.head(embedding.float(), labels)["loss"],
            "loss_kd": self.lambda_final * self.distance(self.final_adapter(embedding.float()), target),
        }
        for stage, weight in self.stage_lambdas.items():
            adapted = self.stage_adapters[str(stage)](features["stages"][stage - 1])
            routed = self.teacher.forward_from(stage, adapted)
            losses[f"loss_stage{stage}"] = weight * self.distance(routed, target)
        return losses
