"""Load a teacher from a facekd checkpoint, an insightface backbone.pth (+ head) or an ONNX file.

Any failure stops the run with a one-line error: a teacher that silently falls back to random
weights is the field's classic mistake.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facekd.data.transforms import network_input
from facekd.distill.teacher import Teacher
from facekd.distill.config import TeacherConfig
from facekd.errors import CheckpointError, ConfigError
from facekd.models.loading import read_weights_file

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 112


def load_centres(path: Path) -> Tensor:
    """Class centres from .npy or a .pt holding a C x D tensor or a state_dict with one `weight`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: teacher head file not found")
    try:
        if path.suffix == ".npy":
            content = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            content = read_weights_file(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one line naming it
        raise CheckpointError(f"{path}: cannot read teacher head ({type(exc).__name__}: {exc})") from None
    if isinstance(content, dict):
        weights = [v for k, v in content.items() if k.split(".")[-1] == "weight" and getattr(v, "ndim", 0) == 2]
        if len(weights) != 1:
            raise CheckpointError(f"{path}: expected one 2-D 'weight' tensor (class centres), found keys {sorted(content)[:6]}")
        content = weights[0]
    if not isinstance(content, Tensor) or content.ndim != 2:
        raise CheckpointError(f"{path}: expected a C x D tensor of class centres, found {type(content).__name__}")
    return content.float()


def load_teacher(config: TeacherConfig) -> Teacher:
    if not config.path:
        raise ConfigError("teacher.path: empty, expected a facekd checkpoint, a backbone.pth or an .onnx file")
    path = Path(config.path)
    if not path.is_file():
        raise CheckpointError(f"{path}: teacher file not found")
    if path.suffix == ".onnx":
        return _onnx_teacher(path, config)
    from facekd.models.loading import load_backbone

    network = load_backbone(path, config.arch or None, **config.kwargs)
    centres = load_centres(Path(config.head)) if config.head else _checkpoint_centres(path)
    if centres is not None and centres.shape[1] != network.spec.kwargs["num_features"]:
        raise CheckpointError(
            f"{config.head or path}: class centres are {centres.shape[1]}-d, the teacher's embedding is "
            f"{network.spec.kwargs['num_features']}-d"
        )
    input_size = config.input_size or int(network.spec.kwargs.get("input_size", DEFAULT_INPUT_SIZE))
    return Teacher(network, input_size=input_size, centres=centres, source=str(path))


def _checkpoint_centres(path: Path) -> Tensor | None:
    """The full class-centre matrix a facekd training checkpoint holds (None for other files)."""
    content = read_weights_file(path)
    task = content.get("task") if isinstance(content, dict) else None
    if not isinstance(task, dict):
        return None
    weight = task.get("head.weight")
    return weight.float() if isinstance(weight, Tensor) and weight.ndim == 2 else None


COLLAPSE_COSINE = 0.8  # mean cosine between different identities above which a teacher says nothing
COLLAPSE_IDENTITIES = 32


def check_teacher_separates(teacher: Teacher, samples, convention: str) -> float:
    """Embed one image of each of up to 32 identities; stop when their mean pairwise cosine is above
    0.8, the sign of a wrong input convention (every face maps to nearly the same embedding).
    Returns the mean cosine."""
    labels = np.asarray(samples.labels)
    _, first = np.unique(labels, return_index=True)
    chosen = np.sort(first)[:COLLAPSE_IDENTITIES]
    if len(chosen) < 2:
        return 0.0
    images = torch.stack([torch.as_tensor(samples[int(i)]["image"]) for i in chosen])
    with torch.inference_mode():
        embeddings = teacher.network(network_input(images, teacher.input_size)).float()
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    cosine = unit @ unit.T
    count = len(chosen)
    mean = float((cosine.sum() - cosine.diagonal().sum()) / (count * (count - 1)))
    if mean > COLLAPSE_COSINE:
        raise ConfigError(
            f"teacher {teacher.source}: mean cosine {mean:.3f} between {count} different identities, expected at "
            f"most {COLLAPSE_COSINE} (a collapsed teacher); {convention}: set teacher.onnx_pixel_mean, "
            "onnx_pixel_std and onnx_channel_order to what the model expects")
    return mean


def _onnx_teacher(path: Path, config: TeacherConfig) -> Teacher:
    from facekd.deploy.onnx_teacher import OnnxEmbedder

    if config.head:
        raise ConfigError(f"teacher.head: ONNX teachers are embedding-only; {config.head} cannot be attached")
    embedder = OnnxEmbedder(path, pixel_mean=config.onnx_pixel_mean, pixel_std=config.onnx_pixel_std,
                            channel_order=config.onnx_channel_order or None)
    logger.info("teacher %s: %s", path, embedder.convention.describe())
    if config.input_size and config.input_size != embedder.input_size:
        raise ConfigError(f"teacher.input_size: {config.input_size}, but {path} declares {embedder.input_size} px")
    return Teacher(embedder, input_size=embedder.input_size, source=str(path))
