"""What several methods share: the embedding distance, building the student, probing a network.

Methods import from here (and from `losses.py`), never from one another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.distiller import DistillSetup
from facekd.errors import ConfigError
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.models.partial_fc import ClassShard, PartialFC
from facekd.runtime import module_device

# Per-sample distances, averaged over the batch. n(v) = v / ||v||.
#   (1-cos)^2      ShrinkTeaNet's angular loss      1-cos          cosine distance
#   normalized_l2  ||n(a) - n(b)||^2 = 2 (1 - cos)  l2             ||a - b||^2
#   mse            mean over the batch *and* the dimensions of (a - b)^2 (FitNet, torch's MSELoss)
DISTANCES = ("(1-cos)^2", "1-cos", "normalized_l2", "l2", "mse")


def _widened(x: Tensor) -> Tensor:
    """Half-precision features in float32 (AMP); float32 and float64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class EmbeddingDistance(nn.Module):
    """d(P a, b) between student and teacher features, flattened per sample.

    P (`project`) is the identity when the sizes agree or no sizes are given, else a bias-free
    Linear from the student's size to the teacher's (FitNet's regressor)."""

    def __init__(self, kind: str, student_size: int | None = None, teacher_size: int | None = None) -> None:
        super().__init__()
        if kind not in DISTANCES:
            raise ConfigError(f"distance: found {kind!r}, expected one of {', '.join(DISTANCES)}")
        self.kind = kind
        self.project = (nn.Identity() if student_size == teacher_size
                        else nn.Linear(student_size, teacher_size, bias=False))

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        student = self.project(_widened(student).flatten(1))
        teacher = _widened(teacher).flatten(1)
        if self.kind == "mse":
            return F.mse_loss(student, teacher)
        if self.kind == "l2":
            return (student - teacher).pow(2).sum(1).mean()
        if self.kind == "normalized_l2":
            return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()
        gap = 1.0 - F.cosine_similarity(student, teacher, dim=1)
        return gap.pow(2).mean() if self.kind == "(1-cos)^2" else gap.mean()


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


def build_student(setup: DistillSetup) -> nn.Module:
    kwargs = dict(setup.student.kwargs)
    kwargs.setdefault("input_size", setup.student.input_size)
    return build_backbone(setup.student.name, **kwargs)


def embedding_size(backbone: nn.Module) -> int:
    return int(backbone.spec.kwargs["num_features"])


def build_margin_head(setup: DistillSetup, size: int) -> MarginClassifier | PartialFC:
    """The student's own classifier with the config's identity-loss margin (sharded under Partial FC)."""
    margin = CombinedMargin(*setup.margin)
    if setup.partial_fc:
        return PartialFC(size, setup.num_classes, margin, sample_rate=setup.sample_rate)
    return MarginClassifier(size, setup.num_classes, margin)


def class_shard(setup: DistillSetup, method: str) -> ClassShard | None:
    """This process's class range when head.partial_fc is set (None: one full classifier).

    Methods whose classes are frozen or distilled score every class of their shard, so they
    refuse sampling."""
    if not setup.partial_fc:
        return None
    if setup.sample_rate != 1.0:
        raise ConfigError(f"head.sample_rate: found {setup.sample_rate}, but {method} scores every class of its "
                          "shard under Partial FC; expected 1.0")
    return ClassShard.of_process_group(setup.num_classes)


def build_student_with_embedding(setup: DistillSetup, method: str, size: int) -> nn.Module:
    """Build the student and check that its embedding has `size` dimensions (the teacher's)."""
    student = build_student(setup)
    found = probe_features(student, setup.student.input_size)["embedding"].shape[1]
    if found != size:
        raise ConfigError(
            f"{method}: student {setup.student.name} has a {found}-d embedding, the teacher's is {size}-d; "
            f"set the student's num_features to {size}"
        )
    return student
