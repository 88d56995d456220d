"""Face datasets stored as image files: a folder per identity, or a list file of `path label` lines."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facekd.data.codec import decode_image
from facekd.errors import DataError
from facekd.fileio import read_utf8

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class _ImageFiles:
    """Shared reading: `ds[i] -> (uint8 HxWx3 RGB image or transform(image), int label)`."""

    def __init__(self, paths: list[Path], labels: np.ndarray, num_classes: int, transform: Callable | None):
        self.paths = paths
        self.labels = labels
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[object, int]:
        path = self.paths[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc.strerror})") from None
        image = decode_image(data, str(path))
        return (self.transform(image) if self.transform else image), int(self.labels[index])


class ImageFolderDataset(_ImageFiles):
    """`root/<identity>/<image>`: identities sorted by folder name get labels 0..C-1.

    `class_names[label]` is the folder of that label.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder, expected root/<identity>/<image> folders")
        self.class_names = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.class_names):
            images = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += images
            labels += [label] * len(images)
        if not paths:
            raise DataError(f"{root}: no images found, expected root/<identity>/<image> with {sorted(IMAGE_SUFFIXES)}")
        super().__init__(paths, np.asarray(labels, dtype=np.int64), len(self.class_names), transform)


MAX_EMPTY_CLASSES = 1000


class ListFileDataset(_ImageFiles):
    """A list file of `path label` lines; relative paths are under `root` (default: the list's folder).

    `num_classes` is max label + 1. Labels need not be dense, but a list whose classifier would be
    mostly empty (more than MAX_EMPTY_CLASSES classes without images, and more empty classes than
    identities) is refused: it is almost always a typo, and it would allocate that many class centres.
    """

    def __init__(self, list_path: str | os.PathLike, root: str | os.PathLike | None = None,
                 transform: Callable | None = None):
        list_path = Path(list_path)
        base = Path(root) if root is not None else list_path.parent
        lines = read_utf8(list_path, "lines 'path label'").splitlines()
        paths: list[Path] = []
        labels: list[int] = []
        numbers: list[int] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)  # paths may contain spaces, labels do not
            try:
                if len(fields) != 2 or int(fields[1]) < 0:
                    raise ValueError
                labels.append(int(fields[1]))
            except ValueError:
                raise DataError(f"{list_path}:{number}: found {line!r}, expected 'path label' with label >= 0") from None
            if "\0" in fields[0]:
                raise DataError(f"{list_path}:{number}: the path holds a NUL byte, expected a file name")
            paths.append(base / fields[0].strip())
            numbers.append(number)
        if not paths:
            raise DataError(f"{list_path}: no entries, expected lines 'path label'")
        label_array = np.asarray(labels, dtype=np.int64)
        identities = len(np.unique(label_array))
        empty = int(label_array.max()) + 1 - identities
        if empty > MAX_EMPTY_CLASSES and empty > identities:
            top = int(np.argmax(label_array))
            raise DataError(
                f"{list_path}:{numbers[top]}: label {labels[top]} with only {identities} distinct identities "
                f"in the list, expected labels 0..{identities - 1} (or at most {MAX_EMPTY_CLASSES} unused)")
        super().__init__(paths, label_array, int(label_array.max()) + 1, transform)
