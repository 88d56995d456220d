"""Loss modules used by more than one method: Hinton KD, margin softmax against frozen centres."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.errors import ConfigError
from facekd.models.heads import CombinedMargin
from facekd.models.partial_fc import ClassShard, ShardLayout
from facekd.models.sharded_logits import sharded_kl_divergence

MARGIN_LOSSES = ("arcface", "cosface")


class HintonKDLoss(nn.Module):
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, mean over the batch.

    `sharded`: the logits are this process's class columns under Partial FC (row max and sum
    all-reduced, facekd.models.sharded_logits)."""

    def __init__(self, temperature: float = 4.0, *, sharded: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.sharded = sharded

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        t = self.temperature
        if self.sharded:
            return sharded_kl_divergence(student_logits, teacher_logits, t)
        log_student = F.log_softmax(student_logits / t, dim=1)
        teacher = F.softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_student, teacher, reduction="batchmean") * t * t


def cosine_matrix(e: Tensor) -> Tensor:
    """B x B cosines between the rows of `e`."""
    e = F.normalize(e, dim=1)
    return e @ e.t()


def margin_from_options(method: str, loss: str, s: float, m_arcface: float, m_cosface: float) -> CombinedMargin:
    """ArcFace is CombinedMargin(s, 1, m, 0); CosFace is CombinedMargin(s, 1, 0, m)."""
    if loss not in MARGIN_LOSSES:
        raise ConfigError(f"{method}.loss: found {loss!r}, expected one of {list(MARGIN_LOSSES)}")
    if s <= 0:
        raise ConfigError(f"{method}.s: found {s}, expected a scale > 0")
    if loss == "arcface":
        return CombinedMargin(s, 1.0, m_arcface, 0.0)
    return CombinedMargin(s, 1.0, 0.0, m_cosface)


def centre_cosine_matrix(embeddings: Tensor, centres: Tensor) -> Tensor:
    """cos(theta) of every embedding to every centre (rows need not be normalised), clamped to [-1, 1]."""
    return (F.normalize(embeddings.float(), dim=1) @ F.normalize(centres.float(), dim=1).t()).clamp(-1.0, 1.0)


class ShardedCentres(nn.Module):
    """Base of a loss whose `centres` buffer holds this process's rows of the class centres: every
    row without a `shard`, the shard's range under Partial FC. `classes` is the shard in use."""

    def __init__(self, num_classes: int, shard: ClassShard | None) -> None:
        super().__init__()
        self.shard = shard
        self.classes = shard or ClassShard.whole(num_classes)

    def row_shards(self) -> dict[str, ShardLayout]:
        return {"centres": self.shard.layout} if self.shard else {}


class FrozenCentreMarginLoss(ShardedCentres):
    """Margin softmax against fixed class centres; with a `shard`, this process's rows of them
    score the global batch (Partial FC)."""

    def __init__(self, centres: Tensor, margin: CombinedMargin, *, shard: ClassShard | None = None) -> None:
        super().__init__(centres.shape[0], shard)
        # Not persistent: the centres are the teacher's and are rebuilt from it, not checkpointed.
        self.register_buffer("centres", F.normalize(self.classes.rows(centres).detach().float(), dim=1),
                             persistent=False)
        self.margin = margin

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        classes = self.classes
        local = classes.local_labels(classes.gather(labels))
        logits = self.margin(centre_cosine_matrix(classes.gather_embeddings(embeddings), self.centres), local)
        return classes.cross_entropy(logits, local)
