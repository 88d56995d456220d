"""Identity-balanced draws: P identities x K images each, for pair and triplet losses.

Random batches from a face dataset with many identities hold almost no two images of one person,
so losses built on positive pairs (EKD, triplet distillation) see none. The engine can append a
balanced part to every batch, as TFace's EKD (32 random + 8 x 4 balanced) and the triplet
distillation recipe (identities x 18 images) do.
"""

from __future__ import annotations

import numpy as np
import torch

from facekd.errors import ConfigError


class IdentityGroups:
    """Sample indices grouped by label, keeping identities with at least two images."""

    def __init__(self, labels) -> None:
        labels = np.asarray(labels).astype(np.int64, copy=False)
        order = np.argsort(labels, kind="stable")
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        eligible = counts >= 2
        if not eligible.any():
            raise ConfigError("train.balanced_identities: the training set has no identity with 2 or more images, "
                              "so identity-balanced batches can hold no positive pair")
        self.order = torch.from_numpy(order)
        self.starts = torch.from_numpy(starts[eligible])
        self.counts = torch.from_numpy(counts[eligible])

    def __len__(self) -> int:
        return len(self.counts)

    def require(self, identities: int) -> None:
        if identities > len(self):
            raise ConfigError(f"train.balanced_identities: a global batch needs {identities} identities with 2 "
                              f"or more images, but the training set has {len(self)}")

    def draw(self, identities: int, images: int, generator: torch.Generator) -> list[int]:
        """`identities` distinct identities, `images` sample indices of each, grouped by identity.

        An identity with fewer than `images` images is drawn with replacement (some repeat).
        """
        self.require(identities)
        chosen = torch.randperm(len(self), generator=generator)[:identities]
        picks = []
        for start, count in zip(self.starts[chosen].tolist(), self.counts[chosen].tolist()):
            if count >= images:
                offsets = torch.randperm(count, generator=generator)[:images]
            else:
                offsets = torch.randint(count, (images,), generator=generator)
            picks.append(self.order[start + offsets])
        return torch.cat(picks).tolist()
