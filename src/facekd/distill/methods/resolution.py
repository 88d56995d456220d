"""Resolution distillation (Karlekar, Feng, Wong, Pranata, arXiv 1906.00619): the teacher's FCN at a lower input size.

The student is the teacher's own fully convolutional architecture (global pooling before the
embedding layer), fed images downsized from r_t (e.g. 112) to r_s (e.g. 96, 80, 64, 48). Modes:

    kt      student <- teacher weights (strict, key for key; its classifier <- the teacher's centres
            when the teacher's head is loaded and has the same classes), then
            L = L_id(student(x at r_s))
    kd      student from scratch,
            L = L_id(student(x at r_s)) + weight * d(P_s(x at r_s), P_t(x at r_t))
    kt+kd   the kd objective from the kt initialisation (the default)

P is the teacher's "last pooled features" (`target: pooled`, the vector fed to the embedding layer)
or the embedding (`target: embedding`, which also works with an embedding-only teacher).
d is one of shrinkteanet's distances: "1-cos" (default), "l2" = ||a - b||^2, "normalized_l2",
"(1-cos)^2", averaged over the batch. L_id is the config's margin softmax.

Silent points (only the abstract and one line of third-party notes were available), and the
reading chosen here:
- The KD loss form and weight are unknown: the default is the cosine distance with weight 1,
  which is scale-free; the paper's literal "L2 on pooled features" is `distance: l2`.
- Whether the teacher's centres seed the student's classifier in KT is unknown; they do here when
  available, since the student is the same network and the classes are the same.
- The student's architecture must equal the teacher's (every parameter shape), as the notes say
  "the student does not change the teacher's architecture"; anything else is refused.

`create` measures the FLOPs of the teacher at r_t and of the student at r_s with
`torch.utils.flop_counter` and writes them with their ratio to `<out_dir>/resolution.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facekd.deploy.profile import count_flops
from facekd.distill.base import (
    EMBEDDING,
    POOLED,
    Distiller,
    DistillSetup,
    Teacher,
    TeacherOutputs,
    parse_options,
    register_distiller,
)
from facekd.distill.methods.shrinkteanet import (
    FeatureDistance,
    probe_features,
)
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier

log = logging.getLogger(__name__)

MODES = ("kt", "kd", "kt+kd")
TARGETS = {"pooled": POOLED, "embedding": EMBEDDING}
REPORT_NAME = "resolution.json"


def check_same_architecture(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a student whose parameters differ in name or shape from the teacher's."""
    s_state, t_state = student.state_dict(), teacher.state_dict()
    missing = sorted(set(t_state) - set(s_state))
    extra = sorted(set(s_state) - set(t_state))
    if missing or extra:
        raise ConfigError(
            f"resolution: the student must be the teacher's architecture; student lacks {missing[:3]} and has "
            f"extra {extra[:3]} ({len(missing)} missing, {len(extra)} extra); use the teacher's backbone name and options"
        )
    for key, value in t_state.items():
        if s_state[key].shape != value.shape:
            raise ConfigError(
                f"resolution: the student must be the teacher's architecture; {key} is {tuple(s_state[key].shape)} "
                f"in the student, {tuple(value.shape)} in the teacher (use fcn: true and the teacher's options)"
            )


def flops_report(student: nn.Module, student_size: int, teacher: Teacher) -> dict[str, float]:
    """Student FLOPs at r_s and, for a PyTorch teacher, teacher FLOPs at r_t and their ratio."""
    report: dict[str, float] = {
        "student_input_size": student_size,
        "student_flops": count_flops(student, student_size),
        "teacher_input_size": teacher.input_size,
    }
    if isinstance(teacher.network, nn.Module):
        report["teacher_flops"] = count_flops(teacher.network, teacher.input_size)
        report["flops_ratio"] = report["student_flops"] / report["teacher_flops"]
    return report


@register_distiller
class ResolutionDistiller(Distiller):
    name = "resolution"
    # The default mode (kt+kd with the pooled target); `create` narrows it per instance.
    teacher_needs = frozenset({POOLED})

    @dataclass
    class Options:
        mode: str = "kt+kd"  # kt | kd | kt+kd
        target: str = "pooled"  # pooled | embedding
        distance: str = "1-cos"  # 1-cos | l2 | normalized_l2 | (1-cos)^2
        weight: float = 1.0  # weight of the KD term

    def __init__(self, student: nn.Module, head: nn.Module, teacher: Teacher, *, options: "ResolutionDistiller.Options",
                 backbone_spec, input_size: int) -> None:
        # The mode decides what the teacher must give: nothing for kt, one vector for kd.
        self.teacher_needs = frozenset() if options.mode == "kt" else frozenset({TARGETS[options.target]})
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.head = head
        self.distance = FeatureDistance(options.distance) if options.mode != "kt" else None
        self.target = options.target
        self.weight = options.weight
        self.flops: dict[str, float] = {}

    @classmethod
    def create(cls, setup: DistillSetup) -> "ResolutionDistiller":
        options = parse_options(cls.Options, setup.options, "resolution")
        if options.mode not in MODES:
            raise ConfigError(f"resolution.mode: found {options.mode!r}, expected one of {list(MODES)}")
        if options.target not in TARGETS:
            raise ConfigError(f"resolution.target: found {options.target!r}, expected one of {sorted(TARGETS)}")
        if options.weight < 0:
            raise ConfigError(f"resolution.weight: found {options.weight}, expected a weight >= 0")
        FeatureDistance(options.distance)  # validates the name before anything is built
        teacher = setup.teacher
        transfer = "kt" in options.mode
        student = build_backbone(setup.student.name, **setup.student.kwargs)
        if isinstance(teacher.network, nn.Module):
            check_same_architecture(student, teacher.network)
        elif transfer:
            raise ConfigError(
                f"resolution.mode {options.mode!r}: teacher {teacher.source} is embedding-only, so its weights "
                "cannot initialise the student; use a PyTorch teacher checkpoint or mode kd"
            )
        if transfer:
            student.load_state_dict(teacher.network.state_dict(), strict=True)
        flops = flops_report(student, setup.student.input_size, teacher)
        setup.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(setup.out_dir / REPORT_NAME, json.dumps(flops, indent=2))
        if "flops_ratio" in flops:
            log.info("resolution: student at %dpx costs %.3f of the teacher's FLOPs at %dpx",
                     setup.student.input_size, flops["flops_ratio"], teacher.input_size)
        embedding_size = probe_features(student, setup.student.input_size)["embedding"].shape[1]
        head = MarginClassifier(embedding_size, setup.num_classes, CombinedMargin(*setup.margin))
        if transfer and teacher.centres is not None:
            if tuple(teacher.centres.shape) == tuple(head.weight.shape):
                with torch.no_grad():
                    head.weight.copy_(teacher.centres)
                log.info("resolution: student classifier initialised from the teacher's centres")
            else:
                log.warning("resolution: the teacher's centres are %s, the student's classifier %s; "
                            "the classifier starts from random centres",
                            tuple(teacher.centres.shape), tuple(head.weight.shape))
        distiller = cls(student, head, teacher, options=options,
                        backbone_spec=(setup.student.name, dict(setup.student.kwargs)),
                        input_size=setup.student.input_size)
        distiller.flops = flops
        return distiller

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        if self.distance is None:
            return {"loss_cls": self.head(self.backbone(images).float(), labels)["loss"]}
        features = self.backbone.forward_features(images)
        target = teacher.pooled if self.target == "pooled" else teacher.embedding
        return {
            "loss_cls": self.head(features["embedding"].float(), labels)["loss"],
            "loss_kd": self.weight * self.distance(features[self.target], target),
        }
