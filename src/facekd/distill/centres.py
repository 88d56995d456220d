"""Class centres derived from the teacher's embeddings, for teachers released without a classifier.

insightface's model zoo and arcface_torch release backbones only. The methods that need the
teacher's class centres (margin, arcdistill, kd, gkd, ...) can then use the normalised mean teacher
embedding of each training identity: every image is embedded as evaluation does (the image plus its
mirror, summed), L2-normalised, averaged per identity, and normalised again. With s_c the sum of
identity c's unit embeddings, the centre is s_c / ||s_c||, and the mean cosine of an image to its
own centre is sum_c ||s_c|| / N (no second pass).

The centres are computed once per teacher and training set, kept beside the teacher cache as
`centres-<digest>.npy`, and reported (count, mean intra-class cosine).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from facekd.data.transforms import network_input
from facekd.distill.teacher import Teacher
from facekd.fileio import atomic_open

logger = logging.getLogger(__name__)
CENTRE_MODES = ("", "auto", "derived")  # the file's; the file's else derived; always derived


@dataclass(frozen=True)
class DerivedCentres:
    centres: torch.Tensor  # C x D, unit rows
    images: int
    mean_intra_cosine: float  # mean cosine of an image's embedding to its identity's centre


@torch.no_grad()
def derive_centres(teacher: Teacher, samples, num_classes: int, *, batch_size: int = 128,
                   device: torch.device | None = None) -> DerivedCentres:
    """The normalised mean flip-summed teacher embedding of every identity (module docstring)."""
    device = device or torch.device("cpu")
    sums = None
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=0)
    count = 0
    for batch in loader:
        images = batch["image"].to(device)
        labels = torch.as_tensor(batch["label"], device=device)
        embedded = sum(teacher.network(network_input(view, teacher.input_size)).float()
                       for view in (images, images.flip(-1)))
        unit = F.normalize(embedded, dim=1)
        if sums is None:
            sums = torch.zeros(num_classes, unit.shape[1], dtype=torch.float64, device=device)
        sums.index_add_(0, labels, unit.double())
        count += len(labels)
    lengths = sums.norm(dim=1)
    return DerivedCentres(F.normalize(sums, dim=1).float().cpu(), count, float(lengths.sum() / count))


def centres_file(cache_root: Path, fingerprint: dict) -> Path:
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root / f"centres-{digest}.npy"


def cached_derived_centres(teacher: Teacher, samples, num_classes: int, path: Path,
                           device: torch.device) -> torch.Tensor:
    """`derive_centres`, read from `path` when an earlier run wrote it for this teacher and data."""
    if path.is_file():
        centres = torch.from_numpy(np.load(path, allow_pickle=False))
        if centres.shape[0] == num_classes:
            logger.info("teacher %s: %d class centres derived earlier, read from %s", teacher.source,
                        num_classes, path)
            return centres
    derived = derive_centres(teacher, samples, num_classes, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        np.save(handle, derived.centres.numpy())
    logger.info("teacher %s: derived %d class centres from %d images (image + mirror); mean cosine of an "
                "image to its own centre %.4f; saved to %s", teacher.source, num_classes, derived.images,
                derived.mean_intra_cosine, path)
    return derived.centres
