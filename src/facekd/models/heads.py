"""Classification heads: the combined angular margin and the full (single-process) classifiers.

`CombinedMargin(s, m1, m2, m3)` turns cosines into logits `s * (cos(m1*theta + m2) - m3)` on
the target class. Its values equal current arcface_torch `CombinedMarginLoss`:

- ArcFace (m1 = 1, m3 = 0): `cos(theta + m2)` for every target, computed as
  `c*cos(m2) - sqrt(1-c^2)*sin(m2)`, also where theta + m2 passes pi (the logit then rises again).
  Two variants of insightface's older ArcFace head are options, both off by default:
  `easy_margin` applies the margin only when `c > 0`; `guard_past_pi` uses `c - m2*sin(pi - m2)`
  when `c <= cos(pi - m2)`, so that the logit keeps decreasing in theta.
- CosFace (m1 = 1, m2 = 0, m3 > 0): `c - m3`.
- normalised softmax (m1 = 1, m2 = 0, m3 = 0): `c`.

Other settings use `cos(m1*acos(c) + m2) - m3`, the combined margin of the InsightFace paper.
(arcface_torch's module instead ignores m2 whenever m3 > 0, and rejects m1 != 1.)

The gradient is the derivative of these formulas (ArcFace: `s*(cos m2 + c*sin m2/sqrt(1-c^2))`).
arcface_torch applies the angle shift in place under `no_grad`, so its gradient is `s` for every
logit, as if the margin were a constant; docs/methods.md compares the two.

Rows labelled -1 get no margin (under Partial FC their class lives on another shard).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.errors import ConfigError
from facekd.models.backbone import trunk_precision

CENTRE_INIT_STD = 0.01  # arcface_torch's class-centre init, N(0, 0.01)


class CombinedMargin(nn.Module):
    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, *,
                 interclass_filtering_threshold: float = 0.0, easy_margin: bool = False,
                 guard_past_pi: bool = False) -> None:
        super().__init__()
        if s <= 0 or m1 <= 0 or m2 < 0 or m3 < 0:
            raise ConfigError(
                f"margin: found s={s}, m1={m1}, m2={m2}, m3={m3}, expected s > 0, m1 > 0, m2 >= 0, m3 >= 0"
            )
        if easy_margin and guard_past_pi:
            raise ConfigError("margin: found easy_margin and guard_past_pi both set, expected at most one")
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold
        self.easy_margin = easy_margin
        self.guard_past_pi = guard_past_pi

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"

    def forward(self, cosine: Tensor, labels: Tensor) -> Tensor:
        """`cosine` (N, C) in [-1, 1], `labels` (N,) or (N, 1) with -1 for "no target here"."""
        labels = labels.reshape(-1)
        rows = torch.nonzero(labels != -1).squeeze(1)
        columns = labels[rows]
        logits = cosine
        if self.interclass_filtering_threshold > 0:
            # Zero the negatives that are suspiciously close (likely label noise), as arcface_torch.
            with torch.no_grad():
                too_close = cosine > self.interclass_filtering_threshold
                too_close[rows, columns] = False
                keep = (~too_close).to(cosine.dtype)
            logits = cosine * keep
        target = self._target_logit(logits[rows, columns])
        # index_put (not []=) returns a new tensor: the caller's cosines stay untouched.
        return logits.index_put((rows, columns), target) * self.s

    def _target_logit(self, c: Tensor) -> Tensor:
        m1, m2, m3 = self.m1, self.m2, self.m3
        if m1 == 1.0 and m2 == 0.0:
            return c - m3 if m3 > 0 else c
        if m1 == 1.0 and m3 == 0.0:
            sin = torch.sqrt(1.0 - torch.pow(c, 2))
            shifted = c * math.cos(m2) - sin * math.sin(m2)
            if self.easy_margin:
                return torch.where(c > 0, shifted, c)
            if self.guard_past_pi:
                return torch.where(c > math.cos(math.pi - m2), shifted, c - math.sin(math.pi - m2) * m2)
            return shifted
        return torch.cos(m1 * torch.acos(c.clamp(-1.0, 1.0)) + m2) - m3


def normalized_cosine(embeddings: Tensor, centres: Tensor, fp16: bool) -> Tensor:
    """Cosines between rows of `embeddings` and `centres`, float32, clamped to [-1, 1]."""
    with trunk_precision(fp16, embeddings):
        cosine = F.linear(F.normalize(embeddings), F.normalize(centres))
    return cosine.float().clamp(-1.0, 1.0)


class MarginClassifier(nn.Module):
    """Normalised class centres and a margin softmax over all classes, in one process."""

    def __init__(self, embedding_size: int, num_classes: int, margin: CombinedMargin | None = None,
                 *, fp16: bool = False) -> None:
        super().__init__()
        self.margin = margin if margin is not None else CombinedMargin()
        self.fp16 = fp16
        self.weight = nn.Parameter(torch.normal(0.0, CENTRE_INIT_STD, (num_classes, embedding_size)))

    def forward(self, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
        cosine = normalized_cosine(embeddings, self.weight, self.fp16)
        logits = self.margin(cosine, labels)
        loss = F.cross_entropy(logits, labels.reshape(-1), ignore_index=-1)
        return {"loss": loss, "logits": logits, "cosine": cosine}


class SoftmaxClassifier(nn.Module):
    """Plain linear softmax (unnormalised weights, with bias); `cosine` is reported alongside."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes)

    def forward(self, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
        products = F.linear(embeddings, self.fc.weight)
        logits = products + self.fc.bias
        norms = embeddings.norm(dim=1, keepdim=True) * self.fc.weight.norm(dim=1)
        cosine = (products / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
        loss = F.cross_entropy(logits, labels.reshape(-1), ignore_index=-1)
        return {"loss": loss, "logits": logits, "cosine": cosine}
