"""Stages 2 and 3 of `transfer`: landmark alignment and verification, each from the classification student."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from torch import Tensor, nn

from facekd.distill.celeba_faces import CelebAFaces
from facekd.distill.common import EmbeddingDistance, probe_features
from facekd.distill.distiller import Distiller, DistillSetup, FitStage
from facekd.distill.methods.transfer.alignment import (
    AlignmentStudent,
    LandmarkHead,
    LandmarkSamples,
    fit_teacher_head,
    landmark_nme,
    mean_shape_predictor,
    split_rows,
    student_predictor,
    teacher_predictor,
)
from facekd.distill.teacher import EMBEDDING, Teacher, TeacherOutputs
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text
from facekd.models import build_backbone
from facekd.models.heads import MarginClassifier
from facekd.runtime import module_device

STAGES = ("classification", "alignment", "verification")
# The verification stage's feature loss, by option name: the shared embedding distances.
FEATURE_LOSSES = {"cosine": "1-cos", "l2": "mse"}
CELEBA_KEY = "attributes"  # DistillSetup.extra_data key of the CelebA-format folder (distill.attributes)

log = logging.getLogger(__name__)


def embedding_width(backbone: nn.Module, input_size: int, features: str = EMBEDDING) -> int:
    """Width of the embedding (or pooled vector) of `backbone`."""
    return int(probe_features(backbone, input_size)[features].shape[1])


def clone_backbone(spec: tuple[str, dict[str, Any]], trained: nn.Module) -> nn.Module:
    """A fresh backbone with the trained one's weights, on the trained one's device."""
    name, kwargs = spec
    backbone = build_backbone(name, **kwargs)
    backbone.load_state_dict(trained.state_dict())
    return backbone.to(module_device(trained))


class VerificationStudent(Distiller):
    """Stage 3: identity loss plus a feature loss to the teacher's embedding, from the classification student.

    loss_feature = feature_weight * d(P e_s, e_t), d = 1 - cos (`cosine`) or the mean squared error
    (`l2`), P a bias-free linear map when the embedding sizes differ."""

    name = "transfer-verification"
    teacher_needs = frozenset({EMBEDDING})

    def __init__(self, student: nn.Module, teacher: Teacher, *, head: MarginClassifier,
                 feature_loss: EmbeddingDistance, feature_weight: float, identity_weight: float,
                 backbone_spec: tuple[str, dict[str, Any]], input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.head = head
        self.feature_loss = feature_loss
        self.feature_weight = feature_weight
        self.identity_weight = identity_weight

    @classmethod
    def from_classification(cls, trained: Distiller, setup: DistillSetup) -> "VerificationStudent":
        options = setup.options
        backbone = clone_backbone(trained.backbone_spec, trained.backbone)
        head = copy.deepcopy(trained.head)
        loss = EmbeddingDistance(FEATURE_LOSSES[options.feature_loss], head.weight.shape[1],
                                 setup.teacher.embedding_size).to(module_device(backbone))
        return cls(backbone, setup.teacher, head=head, feature_loss=loss, feature_weight=options.feature_weight,
                   identity_weight=options.identity_weight, backbone_spec=trained.backbone_spec,
                   input_size=trained.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        embeddings = self.backbone(images).float()
        identity = self.head(embeddings, labels)["loss"]
        return {"loss_cls": self.identity_weight * identity,
                "loss_feature": self.feature_weight * self.feature_loss(embeddings, teacher.embedding)}


def run_alignment(setup: DistillSetup, classification: Distiller, fit: FitStage, prefix: str) -> dict[str, Any]:
    """Fit the teacher's landmark head, train the student's, and write the held-out NME."""
    options = setup.options
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
    device = module_device(classification)
    teacher.to(device)
    kind = options.landmark_features
    teacher_head = fit_teacher_head(teacher, train, kind, ridge=options.ridge, batch_size=options.batch_size,
                                    device=device).to(device)
    backbone = clone_backbone(classification.backbone_spec, classification.backbone)
    mean_shape = train.mean_shape()
    head = LandmarkHead(embedding_width(backbone, classification.input_size, kind), mean_shape).to(device)
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
