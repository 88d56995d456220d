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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.base import (
    EMBEDDING,
    STAGES,
    Distiller,
    DistillSetup,
    Teacher,
    TeacherOutputs,
    parse_options,
    register_distiller,
)
from facekd.errors import ConfigError
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier

DISTANCES = ("(1-cos)^2", "1-cos", "normalized_l2", "l2")


class FeatureDistance(nn.Module):
    """Batch mean of a per-sample distance between two feature tensors (flattened per sample)."""

    def __init__(self, mode: str = "(1-cos)^2") -> None:
        super().__init__()
        if mode not in DISTANCES:
            raise ConfigError(f"distance: found {mode!r}, expected one of {list(DISTANCES)}")
        self.mode = mode

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        student = student.float().flatten(1)
        teacher = teacher.float().flatten(1)
        if self.mode == "l2":
            return (student - teacher).pow(2).sum(1).mean()
        if self.mode == "normalized_l2":
            return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()
        gap = 1.0 - F.cosine_similarity(student, teacher, dim=1)
        return gap.pow(2).mean() if self.mode == "(1-cos)^2" else gap.mean()


def stage_adapter(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """H_i: 1x1 conv + BN mapping a student stage map to the teacher's channel count."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(teacher_channels),
    )


def module_device(network: object) -> torch.device:
    """The device of a module's first parameter; CPU for parameter-less or non-torch networks."""
    parameters = network.parameters() if isinstance(network, nn.Module) else iter(())
    parameter = next(parameters, None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def probe_features(network: nn.Module, input_size: int) -> dict:
    """`forward_features` of a zero batch at `input_size`, in eval mode (the mode is restored)."""
    was_training = network.training
    network.eval()
    try:
        zeros = torch.zeros(2, 3, input_size, input_size, device=module_device(network))
        return network.forward_features(zeros)
    finally:
        network.train(was_training)


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

    @dataclass
    class Options:
        loss: str = "(1-cos)^2"  # one of DISTANCES
        lambda_final: float = 1.0  # lambda_4, the weight of the final-embedding term
        stage_decay: float = 0.5  # lambda_i = lambda_{i+1} * stage_decay
        stages: tuple = (1, 2, 3)  # stages routed through the teacher; () turns them off
        l2_scale: float = 0.001  # multiplies every lambda when loss == "l2" (the paper's 0.001)

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
        self.distance = FeatureDistance(options.loss)
        scale = options.l2_scale if options.loss == "l2" else 1.0
        self.lambda_final = options.lambda_final * scale
        self.stage_lambdas = {
            stage: options.lambda_final * scale * options.stage_decay ** (4 - stage) for stage in options.stages
        }

    @classmethod
    def create(cls, setup: DistillSetup) -> "ShrinkTeaNet":
        options = parse_options(cls.Options, setup.options, "shrinkteanet")
        stages = tuple(options.stages)
        valid = all(type(s) is int and 1 <= s <= 3 for s in stages) and len(set(stages)) == len(stages)
        if not valid:
            raise ConfigError(f"shrinkteanet.stages: found {list(stages)}, expected distinct stage numbers among 1, 2, 3")
        options.stages = tuple(sorted(stages))
        FeatureDistance(options.loss)  # validates the name before anything is built
        teacher = setup.teacher
        teacher.require(EMBEDDING)
        student = build_backbone(setup.student.name, **setup.student.kwargs)
        student_features = probe_features(student, setup.student.input_size)
        adapters = nn.ModuleDict()
        if options.stages:
            teacher.require(STAGES)
            teacher_features = probe_features(teacher.network, teacher.input_size)
            check_stage_sizes(student_features["stages"], teacher_features["stages"], options.stages)
            for stage in options.stages:
                adapters[str(stage)] = stage_adapter(
                    student.stage_channels[stage - 1], teacher.stage_channels[stage - 1]
                )
        teacher_size = teacher.embedding_size
        student_size = student_features["embedding"].shape[1]
        final_adapter = (
            nn.Identity() if student_size == teacher_size else nn.Linear(student_size, teacher_size, bias=False)
        )
        head = MarginClassifier(student_size, setup.num_classes, CombinedMargin(*setup.margin))
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
