"""Face images for parity checks and int8 calibration: from the user's data, or synthetic ones.

A source is a verification `.bin`, an insightface RecordIO folder (or its `.rec`), or nothing, in
which case procedurally drawn faces are aligned onto the ArcFace template exactly as real detections
would be. Images are taken evenly spaced through the source, so a `.bin`'s pairs and a `.rec`'s
identities are all represented.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from facekd.errors import ConfigError, DataError

SYNTHETIC_DIFFICULTY = 0.3


def synthetic_aligned_faces(count: int, seed: int = 0, size: int = 112) -> np.ndarray:
    """`count` aligned faces of distinct synthetic identities: uint8 (count, size, size, 3) RGB."""
    from facekd.data.align import align_face
    from facekd.data.synthetic_faces import FaceRenderer, sample_identity, sample_nuisance

    rng = np.random.default_rng(seed)
    renderer = FaceRenderer(size)
    faces = []
    for _ in range(count):
        image, landmarks = renderer.render(sample_identity(rng), sample_nuisance(rng, SYNTHETIC_DIFFICULTY), rng)
        faces.append(align_face(image, landmarks, size))
    return np.stack(faces)


def face_images(source: str | os.PathLike | None, count: int, seed: int = 0) -> np.ndarray:
    """`count` uint8 (count, H, W, 3) RGB faces from `source` (see the module docstring)."""
    if count < 1:
        raise ConfigError(f"image count: found {count}, expected at least 1")
    if source is None:
        return synthetic_aligned_faces(count, seed)
    path = Path(source)
    if path.suffix == ".bin":
        from facekd.data.pairs_bin import load_pairs_bin

        images, _ = load_pairs_bin(path)
        picked = [images[int(i)] for i in np.linspace(0, len(images) - 1, min(count, len(images)))]
    elif path.is_dir() or path.suffix == ".rec":
        from facekd.data.face_rec import RecordIODataset

        dataset = RecordIODataset(path)
        picked = [dataset[int(i)][0] for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset)))]
    else:
        raise DataError(f"{path}: expected a verification .bin, a RecordIO folder or a .rec file")
    if not picked:
        raise DataError(f"{path}: holds no images")
    shapes = {image.shape for image in picked}
    if len(shapes) != 1:
        raise DataError(f"{path}: images of several sizes {sorted(shapes)}, expected one size")
    return np.stack(picked)


def model_inputs(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 N x 3 x size x size in [-1, 1], as facekd feeds a backbone."""
    from facekd.data.transforms import normalize, resize

    batch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return normalize(resize(batch, size))
