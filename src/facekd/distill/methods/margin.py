"""MarginDistillation (Svitov and Alyamkin, arXiv 2003.02586): a per-sample ArcFace margin set by the teacher.

Formula (from the official MXNet code, branch `margin_distillation`):

    W      = the teacher's class centres, L2-normalised and frozen: the student's classifier
    c_i    = <n(e_t,i), W_{y_i}>                       the teacher's cosine to its own centre
    D_max  = max_i c_i over the batch
    m_i    = (M_max - M_min) / D_max * c_i + M_min    M_max = 0.5, M_min = 0.2
    logit_ij = s * cos(theta_ij) for j != y_i,   logit_{i,y_i} = s * cos(theta_{i,y_i} + m_i),   s = 64
    L      = cross-entropy(logits, y)                  (no separate distillation term)

where cos(theta_ij) = <n(e_s,i), W_j>. Samples the teacher places close to their centre get a large
margin (about M_max), hard ones a small margin (about M_min).

Silent points, and the reading chosen here:
- The abstract speaks of angles; the code scales the cosine c_i, and so does this module.
- There is no easy-margin / threshold trick: cos(theta + m) is used even when theta + m > pi,
  as in the official branch.
- D_max is the maximum over the batch on one device in the official code. Here, when
  torch.distributed is initialised, it is the maximum over the global batch (an all-reduce with
  MAX), so the margin of a sample does not depend on how the batch was split across GPUs; set
  `global_dmax: false` for the per-device reading.
- D_max is floored at 1e-6 so a batch whose teacher cosines are all <= 0 cannot divide by zero;
  negative c_i then give margins below M_min, as in the official code.
- The student's embedding size must equal the teacher's (the centres are used as they are).
- Under Partial FC (head.partial_fc) each process holds its rows of the centres and scores the
  global batch against them, as arcface_torch's PartialFC_V2; the loss and gradients equal the
  one-classifier form (tests/test_sharded_distillers.py).

Teacher outputs: only c_i (`centre_cosine`), which the teacher cache can store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.common import build_student_with_embedding, class_shard
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.losses import ShardedCentres
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import CENTRE_COSINE, Teacher, TeacherOutputs
from facekd.models.partial_fc import ClassShard
from facekd.train import distributed as world_ops

# Keeps acos finite-gradient at cos = +-1.
COSINE_LIMIT = 1.0 - 1e-6
DMAX_FLOOR = 1e-6


class AdaptiveMarginLoss(ShardedCentres):
    """ArcFace against frozen centres with the per-sample margin m_i of MarginDistillation."""

    def __init__(self, centres: Tensor, *, s: float = 64.0, m_max: float = 0.5, m_min: float = 0.2,
                 global_dmax: bool = True, shard: ClassShard | None = None) -> None:
        super().__init__(centres.shape[0], shard)
        # Not persistent: the centres are the teacher's and are rebuilt from it, not checkpointed.
        self.register_buffer("centres", F.normalize(self.classes.rows(centres).detach().float(), dim=1),
                             persistent=False)
        self.s = s
        self.m_max = m_max
        self.m_min = m_min
        self.global_dmax = global_dmax

    @torch.no_grad()
    def margins(self, centre_cosine: Tensor) -> Tensor:
        """m_i = (M_max - M_min) / D_max * c_i + M_min."""
        centre_cosine = centre_cosine.float()
        d_max = centre_cosine.max()
        if self.global_dmax:
            world_ops.all_reduce(d_max, op=torch.distributed.ReduceOp.MAX)
        d_max = d_max.clamp_min(DMAX_FLOOR)
        return (self.m_max - self.m_min) / d_max * centre_cosine + self.m_min

    def forward(self, embeddings: Tensor, labels: Tensor, centre_cosine: Tensor) -> dict[str, Tensor]:
        classes = self.classes
        margins = classes.gather(self.margins(centre_cosine))  # from this rank's D_max, then gathered
        local = classes.local_labels(classes.gather(labels.reshape(-1)))
        embeddings = classes.gather_embeddings(embeddings)
        cosine = (F.normalize(embeddings.float(), dim=1) @ self.centres.t()).clamp(-COSINE_LIMIT, COSINE_LIMIT)
        rows = torch.nonzero(local != -1).squeeze(1)  # samples whose class is on this shard
        columns = local[rows]
        with_margin = torch.cos(torch.acos(cosine[rows, columns]) + margins[rows])
        logits = cosine.index_put((rows, columns), with_margin) * self.s
        return {"loss": classes.cross_entropy(logits, local), "margins": margins}


@register_distiller
class MarginDistillation(Distiller):
    name = "margin"
    teacher_needs = frozenset({CENTRE_COSINE})
    teacher_extras = frozenset({"class centres"})

    @dataclass(frozen=True)
    class Options:
        s: float = option(64.0, "logit scale (64, official margin_distillation branch)", above=0)
        m_max: float = option(0.5, "margin of the sample nearest its teacher centre (0.5, official code)", low=0)
        m_min: float = option(0.2, "margin floor (0.2, official code)", low=0)
        global_dmax: bool = option(True, "D_max over all ranks under torch.distributed (facekd; the official "
                                   "code takes it per device)")

        def problem(self):
            if self.m_min > self.m_max:
                return "m_min", self.m_min, f"m_min <= m_max ({self.m_max})"
            return None

    def __init__(self, student: nn.Module, loss: AdaptiveMarginLoss, teacher: Teacher, *, backbone_spec,
                 input_size: int) -> None:
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.margin_loss = loss

    @classmethod
    def create(cls, setup: DistillSetup) -> "MarginDistillation":
        options = setup.options
        teacher = setup.teacher
        centres = teacher.centres_for(setup.num_classes, "margin")
        student = build_student_with_embedding(setup, "margin", centres.shape[1])
        loss = AdaptiveMarginLoss(centres, s=options.s, m_max=options.m_max, m_min=options.m_min,
                                  global_dmax=options.global_dmax, shard=class_shard(setup, "margin"))
        return cls(student, loss, teacher, backbone_spec=(setup.student.name, dict(setup.student.kwargs)),
                   input_size=setup.student.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        out = self.margin_loss(self.backbone(images), labels, teacher.centre_cosine)
        return {"loss_cls": out["loss"], "margin_mean": out["margins"].mean()}
