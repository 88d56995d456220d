"""Stage 1 of `transfer`: Hinton KD on classification, the student initialised from the teacher; and the pipeline."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.common import build_margin_head, build_student
from facekd.distill.distiller import DistillSetup, FitStage, PipelineMethod, StudentSpec
from facekd.distill.losses import HintonKDLoss
from facekd.distill.methods.transfer.alignment import LANDMARK_FEATURES
from facekd.distill.methods.transfer.stages import (
    FEATURE_LOSSES,
    STAGES,
    VerificationStudent,
    embedding_width,
    run_alignment,
)
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import COSINE, EMBEDDING, Teacher, TeacherOutputs
from facekd.distill.width_init import ChannelRanking, init_from_teacher, shrink
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text
from facekd.models.heads import MarginClassifier

log = logging.getLogger(__name__)


@register_distiller
class TransferDistiller(PipelineMethod):
    """Stage 1: Hinton KD on classification, student initialised from the teacher."""

    name = "transfer"
    # The teacher's logits are s * cos(embedding, centres), computed here from the embedding, so the
    # teacher cache (which stores embeddings) serves this method; the centres are still required.
    teacher_needs = frozenset({EMBEDDING})
    teacher_extras = frozenset({"class centres", "weights"})
    partial_fc_refusal = ("its classification stage distils the teacher's logits over a full classifier "
                          "and its later stages read the whole head; use kd")

    @dataclass(frozen=True)
    class Options:
        temperature: float = option(4.0, "KD temperature T (not given in the paper; 4 as the KD baselines)", above=0)
        alpha: float = option(1.0, "weight of the KD term; the margin CE keeps weight 1 (method spec)", low=0)
        init: str = option("teacher", "teacher (copy/compress the teacher's tensors: the paper's trick) or none",
                           choices=("teacher", "none"))
        width_rates: tuple[float, ...] = option((), "student widths relative to the teacher's; [] = as configured; "
                                                "several run the pipeline once each under width<rate>/", above=0, high=1)
        stages: tuple[str, ...] = option(STAGES, "stages to run; classification first, then its student starts "
                                         "the others (paper: all three)", choices=STAGES)
        beta: float = option(1.0, "alignment: weight of ||y_s - y_teacher||^2 (not given; 1)", low=0)
        landmark_features: str = option(EMBEDDING, "what the landmark heads read: embedding or pooled",
                                        choices=LANDMARK_FEATURES)
        ridge: float = option(1.0, "alignment: L2 penalty of the teacher's landmark-head fit", low=0)
        holdout: float = option(0.1, "alignment: last fraction of the landmark images, for NME", above=0, high=1)
        feature_loss: str = option("cosine", "verification: cosine or l2 (mean squared) to the teacher's embedding",
                                   choices=tuple(FEATURE_LOSSES))
        feature_weight: float = option(1.0, "verification: weight of the feature loss (not given; 1)", low=0)
        identity_weight: float = option(1.0, "verification: weight of the margin CE", low=0)
        batch_size: int = option(128, "teacher passes outside the engine (landmark-head fit, NME)", low=1)

        def problem(self):
            if not self.stages or self.stages[0] != "classification":
                return "stages", list(self.stages), f"'classification' first, then any of {', '.join(STAGES[1:])}"
            return None

    def __init__(self, student: nn.Module, teacher: Teacher, *, head: MarginClassifier, temperature: float,
                 alpha: float, backbone_spec: tuple[str, dict[str, Any]], input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        teacher.require(COSINE)
        self.head = head
        self.kd = HintonKDLoss(temperature)
        self.alpha = alpha

    @classmethod
    def create(cls, setup: DistillSetup) -> "TransferDistiller":
        options = setup.options
        if len(options.width_rates) > 1:
            raise ConfigError(
                f"transfer.width_rates: {list(options.width_rates)} names several students; run the pipeline, "
                "which trains one per rate"
            )
        if options.width_rates:
            setup = _with_width(setup, options.width_rates[0])
        teacher = setup.teacher
        teacher.require(COSINE)
        teacher.centres_for(setup.num_classes, "transfer")
        student = build_student(setup)
        head = build_margin_head(setup, embedding_width(student, setup.student.input_size))
        if options.init == "teacher":
            _init_from_teacher(student, head, teacher, setup)
        return cls(student, teacher, head=head, temperature=options.temperature, alpha=options.alpha,
                   backbone_spec=(student.spec.name, dict(student.spec.kwargs)), input_size=setup.student.input_size)

    def distillation_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, mean over the batch."""
        return self.alpha * self.kd(student_logits.float(), teacher_logits.float())

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        out = self.head(self.backbone(images).float(), labels)
        scale = self.head.margin.s
        teacher_logits = scale * (F.normalize(teacher.embedding.float(), dim=1) @ self.teacher.centres.t())
        return {"loss_cls": out["loss"], "loss_kd": self.distillation_loss(scale * out["cosine"], teacher_logits)}

    @classmethod
    def run_pipeline(cls, setup: DistillSetup, fit: FitStage, train_samples) -> Path:
        """Classification, then alignment and verification, for each width rate.

        Writes a summary to `setup.out_dir / "transfer.json"` and returns the checkpoint of the last
        rate's final face student: its verification stage, else its classification stage.
        """
        options = setup.options
        rates = options.width_rates or (None,)
        results, final = {}, None
        for rate in rates:
            prefix = "" if len(rates) == 1 else f"width{rate:g}/"
            stage_setup = setup if rate is None else _with_width(setup, rate)
            stage_setup = dataclasses.replace(stage_setup, options=dataclasses.replace(options, width_rates=()),
                                              out_dir=setup.out_dir / prefix)
            results[prefix.rstrip("/") or "student"] = cls._run_stages(stage_setup, fit, train_samples, prefix)
            last_stage = "verification" if "verification" in options.stages else "classification"
            final = setup.out_dir / prefix / last_stage / "checkpoint.pt"
        atomic_write_text(setup.out_dir / "transfer.json", json.dumps(results, indent=1))
        return final

    @classmethod
    def _run_stages(cls, setup: DistillSetup, fit: FitStage, train_samples, prefix: str) -> dict[str, Any]:
        options = setup.options
        classification = fit(cls.create(setup), train_samples, prefix + "classification")
        result: dict[str, Any] = {"student": {"name": setup.student.name, "kwargs": setup.student.kwargs}}
        if "alignment" in options.stages:
            result["alignment"] = run_alignment(setup, classification, fit, prefix)
        if "verification" in options.stages:
            task = VerificationStudent.from_classification(classification, setup)
            fit(task, train_samples, prefix + "verification")
            result["verification"] = {"checkpoint_dir": str(setup.out_dir / "verification")}
        return result


def _teacher_width(teacher: Teacher) -> float:
    spec = getattr(teacher.network, "spec", None)
    return float(getattr(spec, "kwargs", {}).get("width", 1.0))


def _with_width(setup: DistillSetup, rate: float) -> DistillSetup:
    """The setup whose student is `rate` times the teacher's width."""
    kwargs = {**setup.student.kwargs, "width": rate * _teacher_width(setup.teacher)}
    return dataclasses.replace(setup, student=StudentSpec(setup.student.name, kwargs, setup.student.input_size))


def _init_from_teacher(student: nn.Module, head: MarginClassifier, teacher: Teacher, setup: DistillSetup) -> None:
    """Copy/compress the teacher's backbone into the student and its centres into the classifier."""
    if not isinstance(teacher.network, nn.Module):
        raise ConfigError(
            f"transfer.init: the teacher {teacher.source} is not a PyTorch network, so the student cannot be "
            "initialised from it; use a PyTorch teacher or set init: none"
        )
    ranking = ChannelRanking.from_state(teacher.network.state_dict())
    report = init_from_teacher(student, teacher.network, ranking)
    centres = shrink(ranking, teacher.centres.cpu(), head.weight.shape)
    with torch.no_grad():
        if centres is not None:
            head.weight.copy_(centres)
    report.status["head.weight"] = "random" if centres is None else (
        "copied" if centres.shape == teacher.centres.shape else "compressed")
    folder = setup.out_dir / "classification"
    folder.mkdir(parents=True, exist_ok=True)
    report.save(folder / "student_init.json")
    log.info("transfer: %s; details in %s", report.summary(), folder / "student_init.json")
