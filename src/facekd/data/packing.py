"""Turn image files into insightface RecordIO datasets and verification bins (`facekd pack`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facekd.data.align import align_face, landmarks_68_to_5
from facekd.data.codec import JPEG_MAGIC, decode_image, encode_jpeg
from facekd.data.face_rec import FaceRecInfo, write_face_rec
from facekd.data.folders import ImageFolderDataset, ListFileDataset
from facekd.data.pairs_bin import write_pairs_bin
from facekd.errors import DataError


def read_landmark_file(path: Path) -> dict[str, np.ndarray]:
    """Lines `path x1 y1 ... x5 y5` (or 136 numbers for 68 points) -> {path: 5x2 landmarks}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found, expected lines 'path x1 y1 ... x5 y5'") from None
    landmarks: dict[str, np.ndarray] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = np.asarray(fields[1:], dtype=np.float64)
        except ValueError:
            raise DataError(f"{path}:{number}: non-numeric landmark in {line!r}") from None
        if len(values) == 10:
            landmarks[fields[0]] = values.reshape(5, 2)
        elif len(values) == 136:
            landmarks[fields[0]] = landmarks_68_to_5(values.reshape(68, 2))
        else:
            raise DataError(f"{path}:{number}: {len(values)} numbers after the path, expected 10 (5 points) or 136 (68)")
    return landmarks


class ImageSource:
    """Reads image files as `size` crops: aligned by landmarks when given, else checked and kept."""

    def __init__(self, size: int = 112, landmarks_path: Path | None = None, detector=None):
        self.size = size
        self.detector = detector  # a facekd.data.detect detector: align on its largest, most central face
        self.landmarks_path = landmarks_path
        self.landmarks = read_landmark_file(landmarks_path) if landmarks_path is not None else None

    def crop(self, path: Path, base: Path) -> bytes:
        """JPEG bytes of the crop of the image file `path`; `base` is where landmark paths start."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc.strerror})") from None
        image = decode_image(data, str(path))
        if self.detector is not None:
            from facekd.data.detect import faces_in, pick_face

            face = pick_face(faces_in(self.detector, image), image.shape)
            if face is None:
                raise DataError(f"{path}: no face detected, expected one (run 'facekd align' to list and skip such photos)")
            return encode_jpeg(align_face(image, face.landmarks, self.size))
        if self.landmarks is not None:
            key = Path(os.path.relpath(path, base)).as_posix()
            if key not in self.landmarks:
                raise DataError(f"{self.landmarks_path}: no landmarks for {key!r}, expected a line for every image")
            return encode_jpeg(align_face(image, self.landmarks[key], self.size))
        if image.shape[:2] != (self.size, self.size):
            raise DataError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected {self.size}x{self.size} "
                "(give --landmarks to align, or --size)"
            )
        return data if data.startswith(JPEG_MAGIC) else encode_jpeg(image)

    def pack_rec(self, source: Path, out: Path, *, root: Path | None = None, layout: str = "ms1m") -> FaceRecInfo:
        """Pack an identity-folder tree or a `path label` list into `out/train.{rec,idx}` + property."""
        if source.is_dir():
            dataset: ImageFolderDataset | ListFileDataset = ImageFolderDataset(source)
            base = source
        else:
            dataset = ListFileDataset(source, root=root)
            base = root if root is not None else source.parent
        # The MS1M layout needs each class's images consecutive; a stable sort keeps list order within a class.
        order = np.argsort(dataset.labels, kind="stable") if layout == "ms1m" else np.arange(len(dataset))

        def samples() -> Iterator[tuple[bytes, int]]:
            for index in tqdm(order, desc=f"packing {out}", unit="img"):
                yield self.crop(dataset.paths[index], base), int(dataset.labels[index])

        return write_face_rec(out, samples(), layout=layout, num_classes=dataset.num_classes)

    def pack_pairs(self, pairs_list: Path, out: Path, *, root: Path | None = None) -> int:
        """Pack a `path1 path2 1|0` list into a verification `.bin`; returns the number of pairs."""
        base = root if root is not None else pairs_list.parent
        try:
            lines = pairs_list.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"{pairs_list}: file not found, expected lines 'path1 path2 1|0'") from None
        images: list[bytes] = []
        issame: list[bool] = []
        for number, line in enumerate(tqdm(lines, desc=f"packing {out}", unit="pair"), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise DataError(f"{pairs_list}:{number}: found {line!r}, expected 'path1 path2 1|0'")
            images += [self.crop(base / fields[0], base), self.crop(base / fields[1], base)]
            issame.append(fields[2] == "1")
        if not issame:
            raise DataError(f"{pairs_list}: no pairs, expected lines 'path1 path2 1|0'")
        write_pairs_bin(out, images, issame)
        return len(issame)
