"""Initialise a student from its teacher: copy tensors whose shapes match, shrink the others by channels.

This is Wang et al. 2017's initialisation trick for a student that is the teacher's architecture
at a smaller width (and possibly depth). Tensors are matched by state_dict key. Rule for a tensor
present in both networks:

- same shape: copied;
- every dimension of the student <= the teacher's: *compressed*, i.e. the teacher tensor is
  indexed, dimension by dimension, with a channel subset:
  - a dimension of equal size is kept whole;
  - a dimension of teacher size C shrunk to c keeps the top-c channels of the ranking of size C.
    The ranking of size C orders channels by the summed L1 norm of every teacher filter with C
    output channels (each tensor's per-filter norms divided by their mean, so that every layer
    counts equally). One ranking per size makes the choice consistent wherever a channel space
    is shared: in iresnet and MobileFaceNet every tensor joined by a residual addition has the
    same width, so the output channels kept in a block are the input channels kept in the next
    one, and BatchNorm/PReLU vectors follow the same subset.
  - a dimension of size C*k shrunk to c*k that has no ranking of its own is a flattened C x k
    feature map (iresnet's non-FCN `fc` takes the 512 x 7 x 7 map); it keeps the k positions of
    each channel kept by the nearest preceding 1-D tensor (the `bn2` before the flatten).
- otherwise (a student dimension larger than the teacher's) or a key the teacher lacks: left at
  the student's random initialisation.

Grouped (not depthwise) convolutions are compressed along their output channels; the per-group
input slots keep the teacher's leading ones, which is exact only when the group size is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from facekd.fileio import atomic_write_text

COPIED, COMPRESSED, RANDOM = "copied", "compressed", "random"


@dataclass
class ChannelRanking:
    """For each teacher channel count C, the channel indices from most to least important."""

    orders: dict[int, Tensor]

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "ChannelRanking":
        scores: dict[int, Tensor] = {}
        for tensor in state.values():
            if not tensor.is_floating_point() or tensor.dim() < 2:
                continue
            norms = tensor.detach().float().abs().flatten(1).sum(dim=1)
            norms = norms / norms.mean().clamp_min(1e-12)
            size = tensor.shape[0]
            scores[size] = scores.get(size, torch.zeros(size)) + norms.cpu()
        # Stable sort: ties (e.g. a zero-initialised layer) keep the teacher's own channel order.
        return cls({size: torch.sort(score, descending=True, stable=True).indices for size, score in scores.items()})

    def keep(self, teacher_size: int, student_size: int) -> Tensor | None:
        """The `student_size` channels kept out of `teacher_size`, in ascending order, or None if unranked."""
        order = self.orders.get(teacher_size)
        if order is None:
            return None
        return torch.sort(order[:student_size]).values


def _dimension_subset(
    ranking: ChannelRanking, teacher_size: int, student_size: int, preceding: tuple[int, int] | None
) -> Tensor | None:
    if teacher_size == student_size:
        return torch.arange(teacher_size)
    if student_size > teacher_size:
        return None
    kept = ranking.keep(teacher_size, student_size)
    if kept is not None:
        return kept
    if preceding is not None:
        channels, student_channels = preceding
        if teacher_size % channels == 0 and student_size % student_channels == 0:
            positions = teacher_size // channels
            if student_size // student_channels == positions:
                kept_channels = ranking.keep(channels, student_channels)
                if kept_channels is not None:
                    return (kept_channels[:, None] * positions + torch.arange(positions)[None, :]).flatten()
    return None


def shrink(
    ranking: ChannelRanking, teacher: Tensor, student_shape: torch.Size, preceding: tuple[int, int] | None = None
) -> Tensor | None:
    """The teacher tensor cut down to `student_shape` by the rule above, or None if impossible."""
    if teacher.dim() != len(student_shape):
        return None
    result = teacher
    for dim, (t_size, s_size) in enumerate(zip(teacher.shape, student_shape)):
        subset = _dimension_subset(ranking, t_size, s_size, preceding)
        if subset is None:
            return None
        if t_size != s_size:
            result = result.index_select(dim, subset.to(result.device))
    return result


@dataclass
class InitReport:
    """Which student tensors were copied, compressed from the teacher, or left random."""

    status: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for value in self.status.values() if value == status)

    def summary(self) -> str:
        return (
            f"student init from teacher: {self.count(COPIED)} tensors copied, "
            f"{self.count(COMPRESSED)} compressed, {self.count(RANDOM)} left random"
        )

    def save(self, path: Path) -> None:
        counts = {status: self.count(status) for status in (COPIED, COMPRESSED, RANDOM)}
        atomic_write_text(path, json.dumps({"counts": counts, "tensors": self.status}, indent=1))


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, ranking: ChannelRanking | None = None) -> InitReport:
    """Overwrite the student's tensors from the teacher where the rule allows; return what happened."""
    teacher_state = teacher.state_dict()
    ranking = ranking or ChannelRanking.from_state(teacher_state)
    report = InitReport()
    preceding: tuple[int, int] | None = None
    for key, target in student.state_dict().items():
        source = teacher_state.get(key)
        status = RANDOM
        if source is not None:
            if source.shape == target.shape:
                target.copy_(source)
                status = COPIED
            else:
                value = shrink(ranking, source, target.shape, preceding)
                if value is not None:
                    target.copy_(value)
                    status = COMPRESSED
            if source.dim() == 1 and target.dim() == 1 and source.is_floating_point():
                preceding = (source.shape[0], target.shape[0])
        report.status[key] = status
    return report
