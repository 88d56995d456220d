"""A CelebA-format folder as a face dataset with landmarks and attributes.

Layout: `images/` (the synthetic benchmark) or `img_align_celeba/` (the CelebA release) holding
the images, next to `list_landmarks_align_celeba.txt`, `list_attr_celeba.txt` and, optionally,
`identity_CelebA.txt`. `ds[i] -> (uint8 HxWx3 RGB image, int label)` like every facekd face
dataset; the label is the identity remapped to 0..C-1, or 0 when no identity file exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facekd.data.celeba import read_attributes, read_identities, read_landmarks
from facekd.data.codec import decode_image
from facekd.errors import DataError

IMAGE_FOLDERS = ("images", "img_align_celeba")
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
IDENTITIES_FILE = "identity_CelebA.txt"


def _aligned(source: Path, names: list[str], order: dict[str, int], wanted: list[str]) -> np.ndarray:
    """Row positions in an annotation file of every name in `wanted`, refusing missing ones."""
    rows = [order.get(name, -1) for name in wanted]
    if -1 in rows:
        missing = wanted[rows.index(-1)]
        raise DataError(f"{source}: no row for image {missing!r}, expected one row per image of the set")
    return np.asarray(rows, dtype=np.int64)


class CelebAFaces:
    """The images named by the annotation file(s) asked for; `landmarks`/`attributes` align with `names`."""

    def __init__(self, root: str | os.PathLike, *, landmarks: bool = False, attributes: bool = False) -> None:
        root = Path(root)
        folders = [root / name for name in IMAGE_FOLDERS if (root / name).is_dir()]
        if not folders:
            raise DataError(f"{root}: no image folder, expected one of {list(IMAGE_FOLDERS)} (CelebA layout)")
        self.root = root
        self.image_folder = folders[0]
        self.landmarks: np.ndarray | None = None  # (N, 5, 2) float32 pixels: eyes, nose, mouth corners
        self.attributes: np.ndarray | None = None  # (N, A) int8 of +1/-1
        self.attribute_names: list[str] = []
        names: list[str] | None = None
        if landmarks:
            table = read_landmarks(root / LANDMARKS_FILE)
            names = table.names
            self.landmarks = table.points
        if attributes:
            table = read_attributes(root / ATTRIBUTES_FILE)
            self.attribute_names = table.attribute_names
            if names is None:
                names = table.names
                self.attributes = table.values
            else:
                rows = _aligned(root / ATTRIBUTES_FILE, table.names, {n: i for i, n in enumerate(table.names)}, names)
                self.attributes = table.values[rows]
        if names is None:
            raise ValueError("CelebAFaces needs landmarks=True or attributes=True")
        if not names:
            raise DataError(f"{root}: the annotation files list no image")
        self.names = names
        identities_path = root / IDENTITIES_FILE
        if identities_path.is_file():
            table = read_identities(identities_path)
            rows = _aligned(identities_path, table.names, {n: i for i, n in enumerate(table.names)}, names)
            _, self.labels = np.unique(table.ids[rows], return_inverse=True)
            self.labels = self.labels.astype(np.int64)
        else:
            self.labels = np.zeros(len(names), dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.image_folder / self.names[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc.strerror})") from None
        return decode_image(data, str(path)), int(self.labels[index])
