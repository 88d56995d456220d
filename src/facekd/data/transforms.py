"""Batch transforms on image tensors: uint8 conversion, insightface normalisation, resize, flip.

Augmentation runs on whole batches with an explicit generator (docs/design.md), so a run that
resumes at step s draws the same flips whatever the number of DataLoader workers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from facekd.data.codec import check_rgb_image


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """A uint8 HxWx3 numpy image as a contiguous uint8 3xHxW tensor."""
    check_rgb_image(image, "image")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (or CHW) in [0, 255] -> float32 in [-1, 1]: (x/255 - 0.5)/0.5, as insightface."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 tensor, got {images.dtype}")
    return (images.float() / 255.0 - 0.5) / 0.5


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of NCHW images with antialiasing; uint8 input is rounded back to uint8."""
    if images.dim() != 4:
        raise ValueError(f"resize expects NCHW images, got shape {tuple(images.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    if images.dtype == torch.uint8:
        return resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized.to(images.dtype)


def network_input(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 NCHW -> a network's float input in [-1, 1], resized to `size` x `size` when it differs.

    The one input rule of training, distillation and evaluation (None keeps the images' size)."""
    x = normalize(images)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = resize(x, size)
    return x


def random_flip(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each NCHW image horizontally with probability 1/2.

    Returns the images and the bool mask of flipped ones. The coin flips are drawn on the
    generator's device (CPU by default) and then moved to the images' device.
    """
    flipped = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    flipped = flipped.to(images.device)
    return torch.where(flipped[:, None, None, None], images.flip(-1), images), flipped
