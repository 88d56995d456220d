"""AdaDistill (Boutros, Struc, Damer, ECCV 2024): margin softmax against class centres distilled from the teacher.

Formula (per step, n(v) = v / ||v||, f_s / f_t = n(student / teacher embedding), w_y = centre of class y):

    alpha'_i = clamp(cos(f_s,i, f_t,i) * clamp(cos(w_{y_i}, f_t,i), 1e-6, 1), 1e-6, 1)   ("alpha_prime", default)
    alpha_i  = clamp(cos(f_s,i, f_t,i), 1e-6, 1)                            ("alpha", the simpler variant)
    w_{y_i}  <- alpha_i * w_{y_i} + (1 - alpha_i) * f_t,i                   (under no_grad, before the loss)
    L        = cross-entropy(CombinedMargin(s, m1, m2, m3)(<f_s, n(w_j)>, y), y)

ArcFace s = 64, m = 0.45 by default (the paper's best); CosFace m = 0.35 with `loss: cosface`.
Early on the student disagrees with the teacher, alpha is small and a centre is about the current
teacher embedding (sample-to-sample knowledge); later alpha grows and the centre accumulates the
class's teacher embeddings. There is no distillation weight to tune.

The centres are a persistent buffer (C x D, initialised N(0, 0.01) like the official `kernel`, kept
un-normalised; only their direction is used). They are never optimised: the EMA runs under
no_grad with the *pre-update* centre in alpha', exactly as the official code.

Silent points, and the reading chosen here:
- The official code writes `kernel[:, label] = ...`, so when a class appears twice in a batch
  the last sample wins (and on CUDA the winner is unspecified). Here the last occurrence in the
  batch wins, deterministically on every device.
- The official code updates each GPU's centres from its own batch only, so the ranks' centres drift
  apart. Here, when torch.distributed is initialised, (f_s, f_t, y) are all-gathered (rank order)
  before the update, so every rank applies the same update to the same centres. As the engine's
  sampler gives rank r rows [r*B, (r+1)*B) of each global batch, the gathered batch is the global
  batch in order, and the update does not depend on the number of processes. All ranks must use
  the same per-rank batch size (the engine drops incomplete global batches).
- Under Partial FC (head.partial_fc) each process holds its rows of the centres, updates only
  those (from the gathered global batch) and scores the global batch against them; alpha' takes
  each sample's centre term from the shard that holds it (an all-reduce).
- alpha' clamps the centre term to [1e-6, 1] before the product, as the official code does (the
  poster clamps only the product; the two differ when both cosines are negative).
- The official "alpha" branch subtracts an undefined `t_alpha`; the paper's alpha = cos(f_s, f_t)
  is used, clamped like alpha'.

Teacher outputs: the teacher embedding only, which the teacher cache can store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.common import build_student_with_embedding, class_shard
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.losses import MARGIN_LOSSES, ShardedCentres, centre_cosine_matrix, margin_from_options
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import EMBEDDING, Teacher, TeacherOutputs
from facekd.errors import ConfigError
from facekd.models.heads import CombinedMargin
from facekd.models.partial_fc import ClassShard
from facekd.train import distributed as world_ops

ALPHAS = ("alpha_prime", "alpha")
ALPHA_FLOOR = 1e-6


def gather_from_ranks(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank in rank order (itself when not distributed)."""
    return torch.cat(world_ops.all_gather(tensor))


def last_occurrence(labels: Tensor) -> Tensor:
    """Indices of the last sample of each distinct label (so a repeated class is updated once)."""
    unique, inverse = torch.unique(labels, return_inverse=True)
    positions = torch.arange(labels.numel(), device=labels.device)
    last = torch.full((unique.numel(),), -1, dtype=torch.long, device=labels.device)
    return last.scatter_reduce(0, inverse, positions, reduce="amax")


class AdaptiveCentreLoss(ShardedCentres):
    """Margin softmax against class centres that follow the teacher's embeddings by adaptive EMA."""

    def __init__(self, num_classes: int, embedding_size: int, margin: CombinedMargin, *,
                 alpha: str = "alpha_prime", init_std: float = 0.01, shard: ClassShard | None = None) -> None:
        if alpha not in ALPHAS:
            raise ConfigError(f"adadistill.alpha: found {alpha!r}, expected one of {list(ALPHAS)}")
        super().__init__(num_classes, shard)
        # Drawn whole, then cut: a shard starts from the same rows as the one-classifier form.
        self.register_buffer("centres", self.classes.rows(torch.randn(num_classes, embedding_size) * init_std).clone())
        self.margin = margin
        self.alpha = alpha

    @torch.no_grad()
    def update(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """EMA step of the centres of `labels`; returns the per-sample alpha (before de-duplication)."""
        f_s = F.normalize(student.float(), dim=1)
        f_t = F.normalize(teacher.float(), dim=1)
        f_s, f_t, labels = gather_from_ranks(f_s), gather_from_ranks(f_t), gather_from_ranks(labels)
        local = self.classes.local_labels(labels)
        mine = local != -1  # samples whose class centre this process holds
        alpha = (f_s * f_t).sum(1)
        if self.alpha == "alpha_prime":
            agreement = torch.zeros_like(alpha)
            agreement[mine] = F.cosine_similarity(self.centres[local[mine]], f_t[mine], dim=1).clamp(ALPHA_FLOOR, 1.0)
            if self.classes.distributed:  # each sample's centre lives on exactly one shard
                world_ops.all_reduce(agreement)
            alpha = alpha * agreement
        alpha = alpha.clamp(ALPHA_FLOOR, 1.0)
        keep = last_occurrence(labels)
        keep = keep[mine[keep]]
        rows = local[keep]
        weight = alpha[keep].unsqueeze(1)
        self.centres[rows] = weight * self.centres[rows] + (1.0 - weight) * f_t[keep]
        return alpha

    def forward(self, embeddings: Tensor, teacher_embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
        alpha = self.update(embeddings.detach(), teacher_embeddings, labels)
        classes = self.classes
        local = classes.local_labels(classes.gather(labels))
        logits = self.margin(centre_cosine_matrix(classes.gather_embeddings(embeddings), self.centres), local)
        return {"loss": classes.cross_entropy(logits, local), "alpha": alpha}


@register_distiller
class AdaDistill(Distiller):
    name = "adadistill"
    teacher_needs = frozenset({EMBEDDING})

    @dataclass(frozen=True)
    class Options:
        alpha: str = option("alpha_prime", "EMA weight: alpha_prime (cos weighted by the centre's agreement) or "
                            "alpha (alpha_prime, AdaDistill's best)", choices=ALPHAS)
        loss: str = option("arcface", "margin softmax: arcface or cosface (arcface, AdaDistill's ArcDistill setting)",
                           choices=MARGIN_LOSSES)
        s: float = option(64.0, "logit scale (64, as ArcFace and AdaDistill)", above=0)
        m_arcface: float = option(0.45, "ArcFace angular margin (0.45, AdaDistill's official code)", low=0)
        m_cosface: float = option(0.35, "CosFace additive margin (0.35, AdaDistill's official code)", low=0)

    def __init__(self, student: nn.Module, loss: AdaptiveCentreLoss, teacher: Teacher, *, backbone_spec,
                 input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.centre_loss = loss

    @classmethod
    def create(cls, setup: DistillSetup) -> "AdaDistill":
        options = setup.options
        margin = margin_from_options("adadistill", options.loss, options.s, options.m_arcface, options.m_cosface)
        teacher = setup.teacher
        teacher.require(EMBEDDING)
        size = teacher.embedding_size
        student = build_student_with_embedding(setup, "adadistill", size)
        loss = AdaptiveCentreLoss(setup.num_classes, size, margin, alpha=options.alpha,
                                  shard=class_shard(setup, "adadistill"))
        return cls(student, loss, teacher, backbone_spec=(setup.student.name, dict(setup.student.kwargs)),
                   input_size=setup.student.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        out = self.centre_loss(self.backbone(images), teacher.embedding, labels)
        return {"loss_cls": out["loss"], "alpha_mean": out["alpha"].mean()}
