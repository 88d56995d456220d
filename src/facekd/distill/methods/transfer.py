"""Wang, Lan, Zhang 2017 (arXiv 1709.02929): distil classification, then transfer to alignment and verification.

Stage 1, classification (`facekd distill --method transfer`): Hinton KD,

    L = CE_margin(y, z_s) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),

with teacher logits z_t = s * cos(e_t, teacher centres) and student logits z_s = s * cos(e_s,
student centres) of the student's own MarginClassifier, s = the configured margin scale. The CE
term is the student's usual margin softmax (the margin applies there only; the soft targets use
plain scaled cosines) and is *not* weighted by (1 - alpha): this is the form of the method spec
and of the KD baselines in TFace/FaceX-Zoo; alpha alone sets the balance.

The "initialisation trick": the student (the teacher's architecture at a smaller width/depth)
starts from the teacher, tensor by tensor, copied where shapes match and compressed by channel
L1-norm ranking where they do not (`facekd.distill.width_init`); its classifier starts from the
teacher's centres. `student_init.json` lists what was copied, compressed or left random.

Stage 2, alignment: a landmark head on the classification student regresses the 5 CelebA points
against the ground truth and the teacher's predictions (`facekd.distill.alignment`); NME is written
to `alignment/metrics.json`. Stage 3, verification: the classification student (backbone and
classifier) keeps training with its identity loss plus a feature loss to the teacher's embedding.

`TransferDistiller.run_pipeline(setup, fit, train_samples)` runs all stages in order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.alignment import (
    LANDMARK_FEATURES,
    AlignmentStudent,
    LandmarkHead,
    LandmarkSamples,
    fit_teacher_head,
    landmark_nme,
    mean_shape_predictor,
    split_rows,
    student_features,
    student_predictor,
    teacher_predictor,
)
from facekd.distill.base import (
    COSINE,
    EMBEDDING,
    Distiller,
    DistillSetup,
    StudentSpec,
    Teacher,
    TeacherOutputs,
    parse_options,
    register_distiller,
)
from facekd.distill.celeba_faces import CelebAFaces
from facekd.distill.feature_kd import build_student
from facekd.distill.methods.kd import HintonKDLoss
from facekd.distill.width_init import ChannelRanking, init_from_teacher, shrink
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier

STAGES = ("classification", "alignment", "verification")
FEATURE_LOSSES = ("cosine", "l2")
CELEBA_KEY = "attributes"  # DistillSetup.extra_data key of the CelebA-format folder (distill.attributes)
# fit(task, samples, stage) trains `task` on `samples` with the engine, writing checkpoints and logs
# under setup.out_dir / stage, and returns the trained task.
FitStage = Callable[[nn.Module, Any, str], nn.Module]

log = logging.getLogger(__name__)


class FeatureLoss(nn.Module):
    """weight * (1 - cos(P e_s, e_t)) or weight * mean squared error, averaged over the batch.

    P is a bias-free linear map when the student's embedding size differs from the teacher's,
    the identity otherwise.
    """

    def __init__(self, kind: str, weight: float, student_size: int, teacher_size: int) -> None:
        super().__init__()
        if kind not in FEATURE_LOSSES:
            raise ConfigError(f"transfer.feature_loss: found {kind!r}, expected one of {list(FEATURE_LOSSES)}")
        self.kind = kind
        self.weight = weight
        self.project = nn.Identity() if student_size == teacher_size else nn.Linear(student_size, teacher_size, bias=False)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        projected = self.project(student.float())
        if self.kind == "cosine":
            return self.weight * (1.0 - F.cosine_similarity(projected, teacher.float(), dim=1)).mean()
        return self.weight * F.mse_loss(projected, teacher.float())


def _teacher_width(teacher: Teacher) -> float:
    spec = getattr(teacher.network, "spec", None)
    return float(getattr(spec, "kwargs", {}).get("width", 1.0))


def _embedding_size(backbone: nn.Module, input_size: int, features: str = EMBEDDING) -> int:
    """Width of the embedding (or pooled vector) of `backbone`, from one pass on a blank image."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        blank = torch.zeros(1, 3, input_size, input_size, device=_device_of(backbone))
        size = student_features(backbone, blank, features).shape[1]
    backbone.train(was_training)
    return int(size)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _clone_backbone(spec: tuple[str, dict[str, Any]], trained: nn.Module) -> nn.Module:
    """A fresh backbone with the trained one's weights, on the trained one's device."""
    name, kwargs = spec
    backbone = build_backbone(name, **kwargs)
    backbone.load_state_dict(trained.state_dict())
    return backbone.to(_device_of(trained))


@register_distiller
class TransferDistiller(Distiller):
    """Stage 1: Hinton KD on classification, student initialised from the teacher."""

    name = "transfer"
    # The teacher's logits are s * cos(embedding, centres), computed here from the embedding, so the
    # teacher cache (which stores embeddings) serves this method; the centres are still required.
    teacher_needs = frozenset({EMBEDDING})

    @dataclass
    class Options:
        temperature: float = 4.0
        alpha: float = 1.0  # weight of the KD term; the margin CE keeps weight 1
        init: str = "teacher"  # teacher (copy/compress the teacher's tensors) | none
        # Student width relative to the teacher's; empty = the student as configured. More than one
        # rate runs the whole pipeline once per rate, under out_dir/width<rate>/.
        width_rates: tuple = ()
        stages: tuple = STAGES  # classification always runs first; the others start from its student
        beta: float = 1.0  # alignment: weight of ||y_s - y_teacher||^2
        landmark_features: str = EMBEDDING  # embedding | pooled: what the landmark heads read
        ridge: float = 1.0  # alignment: L2 penalty of the teacher's landmark-head fit
        holdout: float = 0.1  # alignment: last fraction of the landmark images, for NME
        feature_loss: str = "cosine"  # verification: cosine | l2 to the teacher's embedding
        feature_weight: float = 1.0
        identity_weight: float = 1.0  # verification: weight of the margin CE
        batch_size: int = 128  # teacher passes outside the engine (landmark-head fit, NME)

    def __init__(self, student: nn.Module, teacher: Teacher, *, head: MarginClassifier, temperature: float,
                 alpha: float, backbone_spec: tuple[str, dict[str, Any]], input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        teacher.require(COSINE)
        self.head = head
        self.kd = HintonKDLoss(temperature)
        self.alpha = alpha

    @classmethod
    def options(cls, setup: DistillSetup) -> "TransferDistiller.Options":
        options = parse_options(cls.Options, setup.options, "transfer")
        if options.temperature <= 0 or options.alpha < 0:
            raise ConfigError(f"transfer: found temperature={options.temperature}, alpha={options.alpha}; expected T > 0, alpha >= 0")
        if options.init not in ("teacher", "none"):
            raise ConfigError(f"transfer.init: found {options.init!r}, expected teacher or none")
        if not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in options.width_rates):
            raise ConfigError(f"transfer.width_rates: found {list(options.width_rates)}, expected numbers in (0, 1]")
        unknown = [s for s in options.stages if s not in STAGES]
        if unknown or not options.stages or options.stages[0] != "classification":
            raise ConfigError(
                f"transfer.stages: found {list(options.stages)}, expected 'classification' first, then any of {list(STAGES[1:])}"
            )
        if options.landmark_features not in LANDMARK_FEATURES:
            raise ConfigError(
                f"transfer.landmark_features: found {options.landmark_features!r}, expected one of {list(LANDMARK_FEATURES)}"
            )
        if options.feature_loss not in FEATURE_LOSSES:
            raise ConfigError(f"transfer.feature_loss: found {options.feature_loss!r}, expected one of {list(FEATURE_LOSSES)}")
        return options

    @classmethod
    def create(cls, setup: DistillSetup) -> "TransferDistiller":
        options = cls.options(setup)
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
        embedding_size = _embedding_size(student, setup.student.input_size)
        head = MarginClassifier(embedding_size, setup.num_classes, CombinedMargin(*setup.margin))
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

    # -- the three-stage pipeline ----------------------------------------------------------------

    @classmethod
    def run_pipeline(cls, setup: DistillSetup, fit: FitStage, train_samples) -> dict[str, Any]:
        """Run classification, then alignment and verification, for each width rate.

        `fit(task, samples, stage)` must train `task` on `samples` with the training engine, write its
        checkpoints under `setup.out_dir / stage` (stage is a relative path such as "classification"
        or "width0.5/alignment"), and return the trained task. Alignment samples carry a `landmarks`
        entry; the engine passes it through and its flips reach the task as `batch["flipped"]`.
        Returns the summary also written to `setup.out_dir / "transfer.json"`.
        """
        options = cls.options(setup)
        rates = options.width_rates or (None,)
        results = {}
        for rate in rates:
            prefix = "" if len(rates) == 1 else f"width{rate:g}/"
            stage_setup = setup if rate is None else _with_width(setup, rate)
            stage_setup = dataclasses.replace(
                stage_setup, options={**setup.options, "width_rates": ()}, out_dir=setup.out_dir / prefix
            )
            results[prefix.rstrip("/") or "student"] = cls._run_stages(stage_setup, options, fit, train_samples, prefix)
        atomic_write_text(setup.out_dir / "transfer.json", json.dumps(results, indent=1))
        return results

    @classmethod
    def _run_stages(cls, setup: DistillSetup, options, fit: FitStage, train_samples, prefix: str) -> dict[str, Any]:
        classification = fit(cls.create(setup), train_samples, prefix + "classification")
        result: dict[str, Any] = {"student": {"name": setup.student.name, "kwargs": setup.student.kwargs}}
        if "alignment" in options.stages:
            result["alignment"] = _run_alignment(setup, options, classification, fit, prefix)
        if "verification" in options.stages:
            task = VerificationStudent.from_classification(classification, setup, options)
            fit(task, train_samples, prefix + "verification")
            result["verification"] = {"checkpoint_dir": str(setup.out_dir / "verification")}
        return result


class VerificationStudent(Distiller):
    """Stage 3: identity loss plus a feature loss to the teacher's embedding, from the classification student."""

    name = "transfer-verification"
    teacher_needs = frozenset({EMBEDDING})

    def __init__(self, student: nn.Module, teacher: Teacher, *, head: MarginClassifier, feature_loss: FeatureLoss,
                 identity_weight: float, backbone_spec: tuple[str, dict[str, Any]], input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.head = head
        self.feature_loss = feature_loss
        self.identity_weight = identity_weight

    @classmethod
    def from_classification(cls, trained: TransferDistiller, setup: DistillSetup, options) -> "VerificationStudent":
        backbone = _clone_backbone(trained.backbone_spec, trained.backbone)
        head = copy.deepcopy(trained.head)
        student_size = head.weight.shape[1]
        teacher_size = setup.teacher.embedding_size
        loss = FeatureLoss(options.feature_loss, options.feature_weight, student_size, teacher_size).to(_device_of(backbone))
        return cls(backbone, setup.teacher, head=head, feature_loss=loss, identity_weight=options.identity_weight,
                   backbone_spec=trained.backbone_spec, input_size=trained.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        embeddings = self.backbone(images).float()
        identity = self.head(embeddings, labels)["loss"]
        return {"loss_cls": self.identity_weight * identity, "loss_feature": self.feature_loss(embeddings, teacher.embedding)}


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


def _run_alignment(setup: DistillSetup, options, classification: TransferDistiller, fit: FitStage,
                   prefix: str) -> dict[str, Any]:
    folder = setup.extra_data.get(CELEBA_KEY)
    if folder is None:
        raise ConfigError(
            f"transfer: the alignment stage needs a CelebA-format landmark folder (extra_data.{CELEBA_KEY}); "
            "give one, or drop 'alignment' from transfer.stages"
        )
    faces = CelebAFaces(folder, landmarks=True)
    train_rows, held_rows = split_rows(len(faces), options.holdout)
    train, held = LandmarkSamples(faces, train_rows), LandmarkSamples(faces, held_rows)
    teacher = setup.teacher
    device = _device_of(classification)
    teacher.to(device)
    kind = options.landmark_features
    teacher_head = fit_teacher_head(teacher, train, kind, ridge=options.ridge, batch_size=options.batch_size,
                                    device=device).to(device)
    backbone = _clone_backbone(classification.backbone_spec, classification.backbone)
    mean_shape = train.mean_shape()
    head = LandmarkHead(_embedding_size(backbone, classification.input_size, kind), mean_shape).to(device)
    task = AlignmentStudent(backbone, teacher, head=head, teacher_head=teacher_head, features=kind, beta=options.beta,
                            backbone_spec=classification.backbone_spec, input_size=classification.input_size)
    task = fit(task, train, prefix + "alignment")
    task.eval()
    batch = options.batch_size
    metrics = {
        "nme_student": landmark_nme(student_predictor(task), held, batch_size=batch, device=device),
        "nme_teacher": landmark_nme(teacher_predictor(teacher, teacher_head, kind), held, batch_size=batch, device=device),
        "nme_mean_shape": landmark_nme(mean_shape_predictor(mean_shape), held, batch_size=batch, device=device),
        "normalisation": "distance between the two ground-truth eye centres",
        "train_images": len(train),
        "heldout_images": len(held),
    }
    task.train()
    out = setup.out_dir / "alignment"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    log.info(
        "transfer alignment: NME student %.4f, teacher %.4f, mean shape %.4f on %d held-out images",
        metrics["nme_student"], metrics["nme_teacher"], metrics["nme_mean_shape"], len(held),
    )
    return metrics
