"""Tiny CelebA-format folders and teachers for the transfer and neurons tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data.celeba import write_attributes, write_identities, write_landmarks
from facekd.data.codec import encode_jpeg
from facekd.distill.teacher import Teacher
from facekd.models import build_backbone

IDENTITY_ATTRIBUTES = ["Male", "Big_Nose", "Blond_Hair"]
UNRELATED_ATTRIBUTES = ["Smiling", "Blurry"]


def write_celeba(root: Path, count: int = 24, size: int = 32, seed: int = 0, meta: bool = True) -> Path:
    """`root/celeba/` with images whose bright dots sit on their landmarks, plus attributes and identities.

    Landmarks jitter around a face-like mean shape so that they can be learnt from the pixels.
    """
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "images").mkdir(parents=True)
    base = np.array([[10, 12], [21, 12], [16, 17], [11, 23], [21, 23]], dtype=np.float64) * size / 32
    names, points = [], []
    for i in range(count):
        name = f"{i + 1:06d}.jpg"
        landmarks = np.round(base + rng.integers(-2, 3, size=(1, 2)))
        image = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
        for x, y in landmarks.astype(int):
            image[y - 1 : y + 2, x - 1 : x + 2] = 255
        (folder / "images" / name).write_bytes(encode_jpeg(image, quality=98))
        names.append(name)
        points.append(landmarks)
    write_landmarks(folder / "list_landmarks_align_celeba.txt", names, np.array(points))
    names_all = IDENTITY_ATTRIBUTES + UNRELATED_ATTRIBUTES
    values = np.where(rng.random((count, len(names_all))) < 0.5, 1, -1)
    values[0], values[1] = 1, -1  # both classes of every attribute
    write_attributes(folder / "list_attr_celeba.txt", names, names_all, values)
    write_identities(folder / "identity_CelebA.txt", names, np.arange(count) % 4 + 1)
    if meta:
        split = {"identity_related": IDENTITY_ATTRIBUTES, "identity_unrelated": UNRELATED_ATTRIBUTES}
        (root / "meta.json").write_text(json.dumps({"attributes": split}))  # as `facekd synth` writes it
    return folder


def tiny_teacher(num_classes: int = 4, seed: int = 0, input_size: int = 32) -> Teacher:
    torch.manual_seed(seed)
    network = build_backbone("r18", width=0.25, fcn=True, num_features=32, input_size=input_size)
    return Teacher(network, input_size=input_size, centres=torch.randn(num_classes, 32), source="tiny-teacher")


@pytest.fixture
def one_thread():
    """One intra-op thread: these tiny networks gain nothing from more, and the CI machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
