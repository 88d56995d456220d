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

Teachers that are not fully convolutional (a stock insightface r100 flattens a fixed 7 x 7 map)
work for the kd mode: the student is the same network built for r_s, whose embedding layer reads
its own smaller map, and an adaptive-pool adapter average-pools the teacher's flattened C x 7 x 7
pooled features to the student's map before d compares them (`PooledMapAdapter`; no parameters).
KT is refused for them: the teacher's embedding layer was trained on a 7 x 7 map and does not fit
the student's.

`create` measures the FLOPs of the teacher at r_t and of the student at r_s with
`torch.utils.flop_counter` and writes them with their ratio to `<out_dir>/resolution.json`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.deploy.profile import count_flops
from facekd.distill.common import EmbeddingDistance, build_margin_head, build_student, probe_features
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import EMBEDDING, POOLED, Teacher, TeacherOutputs
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text

log = logging.getLogger(__name__)

MODES = ("kt", "kd", "kt+kd")
TARGETS = {"pooled": POOLED, "embedding": EMBEDDING}
REPORT_NAME = "resolution.json"


class PooledMapAdapter(nn.Module):
    """Average-pools flattened C x h_t x w_t pooled features to the student's C x h_s x w_s grid."""

    def __init__(self, channels: int, teacher_side: int, student_side: int) -> None:
        super().__init__()
        self.channels, self.teacher_side, self.student_side = channels, teacher_side, student_side

    def forward(self, pooled: Tensor) -> Tensor:
        grid = pooled.reshape(pooled.shape[0], self.channels, self.teacher_side, self.teacher_side)
        return F.adaptive_avg_pool2d(grid.float(), self.student_side).flatten(1)


def map_side(pooled_size: int, channels: int, who: str) -> int:
    """The side of the square map a pooled vector of `pooled_size` values was flattened from."""
    side = math.isqrt(pooled_size // channels)
    if side * side * channels != pooled_size:
        raise ConfigError(f"resolution: the {who}'s pooled features ({pooled_size} values) are not a square map of "
                          f"{channels} channels; use target: embedding")
    return side


def check_same_architecture(student: nn.Module, teacher: nn.Module, *, except_keys: frozenset[str] = frozenset()) -> None:
    """Refuse a student whose parameters differ in name or shape from the teacher's (but `except_keys`' shapes)."""
    s_state, t_state = student.state_dict(), teacher.state_dict()
    missing = sorted(set(t_state) - set(s_state))
    extra = sorted(set(s_state) - set(t_state))
    if missing or extra:
        raise ConfigError(
            f"resolution: the student must be the teacher's architecture; student lacks {missing[:3]} and has "
            f"extra {extra[:3]} ({len(missing)} missing, {len(extra)} extra); use the teacher's backbone name and options"
        )
    for key, value in t_state.items():
        if s_state[key].shape != value.shape and key not in except_keys:
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


def pooled_adapter(student_pooled: int, teacher: Teacher, channels: int) -> PooledMapAdapter:
    adapter = PooledMapAdapter(channels, map_side(teacher.pooled_size, channels, "teacher"),
                               map_side(student_pooled, channels, "student"))
    log.info("resolution: teacher %s is not fully convolutional; its %dx%d pooled map is average-pooled to the "
             "student's %dx%d (adaptive-pool adapter) for the kd term", teacher.source, adapter.teacher_side,
             adapter.teacher_side, adapter.student_side, adapter.student_side)
    return adapter


@register_distiller
class ResolutionDistiller(Distiller):
    name = "resolution"
    # The default mode (kt+kd with the pooled target); `create` narrows it per instance.
    teacher_needs = frozenset({POOLED})
    teacher_extras = frozenset({"weights"})

    @dataclass(frozen=True)
    class Options:
        mode: str = option("kt+kd", "kt (init from the teacher), kd (regress its features) or kt+kd (paper's best)",
                           choices=MODES)
        target: str = option("pooled", "what kd regresses: pooled (the paper's last pooled features) or embedding",
                             choices=tuple(TARGETS))
        distance: str = option("1-cos", "kd distance; the paper's form is unknown, 1-cos is scale-free "
                               "(1-cos, l2, normalized_l2, (1-cos)^2)", choices=("1-cos", "l2", "normalized_l2", "(1-cos)^2"))
        weight: float = option(1.0, "weight of the kd term (unknown in the paper; 1)", low=0)

    def __init__(self, student: nn.Module, head: nn.Module, teacher: Teacher, *, options: "ResolutionDistiller.Options",
                 backbone_spec, input_size: int, target_adapter: nn.Module | None = None) -> None:
        # The mode decides what the teacher must give: nothing for kt, one vector for kd.
        self.teacher_needs = frozenset() if options.mode == "kt" else frozenset({TARGETS[options.target]})
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.head = head
        self.distance = EmbeddingDistance(options.distance) if options.mode != "kt" else None
        self.target = options.target
        self.target_adapter = target_adapter or nn.Identity()
        self.weight = options.weight
        self.flops: dict[str, float] = {}

    @classmethod
    def create(cls, setup: DistillSetup) -> "ResolutionDistiller":
        options = setup.options
        teacher = setup.teacher
        transfer = "kt" in options.mode
        student = build_student(setup)
        flattening = getattr(teacher.network, "fcn", True) is False  # a backbone's flag, or OnnxEmbedder's
        if flattening and transfer:
            raise ConfigError(
                f"resolution.mode {options.mode!r}: teacher {teacher.source} is not fully convolutional (it flattens "
                "a fixed map), so its embedding layer cannot take the student's smaller map; use mode kd (its pooled "
                "features are average-pooled to the student's map) or a teacher trained with fcn: true"
            )
        if isinstance(teacher.network, nn.Module):
            check_same_architecture(student, teacher.network, except_keys=frozenset({"fc.weight"}) if flattening
                                    else frozenset())
        elif transfer:
            raise ConfigError(
                f"resolution.mode {options.mode!r}: teacher {teacher.source} is an ONNX model, so its weights "
                "cannot initialise the student; use its PyTorch weights or mode kd"
            )
        if transfer:
            student.load_state_dict(teacher.network.state_dict(), strict=True)
        flops = flops_report(student, setup.student.input_size, teacher)
        setup.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(setup.out_dir / REPORT_NAME, json.dumps(flops, indent=2))
        if "flops_ratio" in flops:
            log.info("resolution: student at %dpx costs %.3f of the teacher's FLOPs at %dpx",
                     setup.student.input_size, flops["flops_ratio"], teacher.input_size)
        student_features = probe_features(student, setup.student.input_size)
        head = build_margin_head(setup, student_features["embedding"].shape[1])
        adapter = None
        if flattening and options.target == "pooled":
            adapter = pooled_adapter(student_features["pooled"].shape[1], teacher, student.stage_channels[-1])
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
                        input_size=setup.student.input_size, target_adapter=adapter)
        distiller.flops = flops
        return distiller

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        if self.distance is None:
            return {"loss_cls": self.head(self.backbone(images).float(), labels)["loss"]}
        features = self.backbone.forward_features(images)
        target = self.target_adapter(teacher.pooled) if self.target == "pooled" else teacher.embedding
        return {
            "loss_cls": self.head(features["embedding"].float(), labels)["loss"],
            "loss_kd": self.weight * self.distance(features[self.target], target),
        }
