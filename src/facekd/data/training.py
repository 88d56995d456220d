"""Adapt a face dataset (`ds[i] -> (uint8 HxWx3 image, int label)`) to the training engine's samples."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from facekd.data.transforms import to_chw_tensor


class FaceDataset(Protocol):
    """What every facekd face dataset offers."""

    num_classes: int
    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class TrainSamples(torch.utils.data.Dataset):
    """`samples[i] -> {"image": uint8 tensor 3xHxW, "label": int, "index": i}`.

    Images stay uint8: the engine batches them, moves them to the device and normalises there.
    """

    def __init__(self, dataset: FaceDataset):
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.labels = dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, label = self.dataset[index]
        return {"image": to_chw_tensor(image), "label": int(label), "index": int(index)}
