"""CelebA annotation files: aligned landmarks, 40 attributes, identities.

Layouts, as released (whitespace-separated, columns padded with runs of spaces):

- `list_landmarks_align_celeba.txt`: a count line, a header line `lefteye_x lefteye_y ... rightmouth_y`,
  then rows `000001.jpg x1 y1 ... x5 y5`.
- `list_attr_celeba.txt`: a count line, a line of 40 attribute names, then rows `000001.jpg` + 40 values 1/-1.
- `identity_CelebA.txt`: rows `000001.jpg identity`, no header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.errors import DataError
from facekd.fileio import atomic_write_text

LANDMARK_COLUMNS = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)  # fmt: skip


@dataclass(frozen=True)
class Landmarks:
    """`points[i]` (5x2 float32, x then y) are the landmarks of image `names[i]`."""

    names: list[str]
    points: np.ndarray


@dataclass(frozen=True)
class Attributes:
    """`values[i, j]` (int8, 1 or -1) is attribute `attribute_names[j]` of image `names[i]`."""

    names: list[str]
    attribute_names: list[str]
    values: np.ndarray


@dataclass(frozen=True)
class Identities:
    """`ids[i]` (int64) is the identity of image `names[i]`."""

    names: list[str]
    ids: np.ndarray


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return [line for line in text.splitlines() if line.strip()]


def _read_counted_table(path: Path, what: str) -> tuple[list[str], list[str], list[list[str]]]:
    """(header fields, image names, value fields) of a file with a count line and a header line."""
    lines = _read_lines(path)
    if len(lines) < 2:
        raise DataError(f"{path}: {len(lines)} non-empty lines, expected a count line and a {what} line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{path}:1: found {lines[0].strip()!r}, expected the number of images") from None
    rows = [line.split() for line in lines[2:]]
    if len(rows) != count:
        raise DataError(f"{path}: {len(rows)} rows, expected {count} as its first line says")
    return lines[1].split(), [row[0] for row in rows], [row[1:] for row in rows]


def _to_array(path: Path, rows: list[list[str]], width: int, dtype, first_line: int) -> np.ndarray:
    for number, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}:{first_line + number}: {len(row)} values, expected {width}")
    try:
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width).astype(dtype)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value ({exc}), expected numbers after each image name") from None


def read_landmarks(path: str | os.PathLike) -> Landmarks:
    """Read `list_landmarks_align_celeba.txt` (or `list_landmarks_celeba.txt`)."""
    path = Path(path)
    header, names, rows = _read_counted_table(path, "landmark header")
    if len(header) != 10:
        raise DataError(f"{path}:2: {len(header)} column names, expected 10 (x, y of 5 landmarks)")
    points = _to_array(path, rows, 10, np.float32, first_line=3).reshape(-1, 5, 2)
    return Landmarks(names, points)


def read_attributes(path: str | os.PathLike) -> Attributes:
    """Read `list_attr_celeba.txt`."""
    path = Path(path)
    attribute_names, names, rows = _read_counted_table(path, "attribute names")
    values = _to_array(path, rows, len(attribute_names), np.int8, first_line=3)
    if not np.isin(values, (-1, 1)).all():
        raise DataError(f"{path}: attribute value {int(values[~np.isin(values, (-1, 1))][0])}, expected 1 or -1")
    return Attributes(names, attribute_names, values)


def read_identities(path: str | os.PathLike) -> Identities:
    """Read `identity_CelebA.txt`."""
    path = Path(path)
    rows = [line.split() for line in _read_lines(path)]
    ids = _to_array(path, [row[1:] for row in rows], 1, np.int64, first_line=1).ravel()
    return Identities([row[0] for row in rows], ids)


def write_landmarks(path: str | os.PathLike, names: list[str], points: np.ndarray) -> None:
    """Write `list_landmarks_align_celeba.txt`: `points` is (N, 5, 2) x, y per landmark."""
    points = np.asarray(points)
    if points.shape != (len(names), 5, 2):
        raise DataError(f"{path}: landmarks of shape {points.shape}, expected ({len(names)}, 5, 2)")
    # The released file has integer pixel coordinates; keep sub-pixel ones when given.
    integral = np.array_equal(points, np.round(points))

    def cell(value: float) -> str:
        return f"{int(value):4d}" if integral else f"{value:.3f}"

    rows = [f"{name} " + " ".join(cell(v) for v in row.ravel()) for name, row in zip(names, points)]
    atomic_write_text(path, f"{len(names)}\n{' '.join(LANDMARK_COLUMNS)}\n" + "".join(r + "\n" for r in rows))


def write_attributes(path: str | os.PathLike, names: list[str], attribute_names: list[str], values: np.ndarray) -> None:
    """Write `list_attr_celeba.txt`: `values` is (N, len(attribute_names)) of 1/-1."""
    values = np.asarray(values)
    if values.shape != (len(names), len(attribute_names)) or not np.isin(values, (-1, 1)).all():
        raise DataError(
            f"{path}: attribute values of shape {values.shape}, expected ({len(names)}, {len(attribute_names)}) of 1/-1"
        )
    rows = [f"{name} " + " ".join(f"{int(v):2d}" for v in row) for name, row in zip(names, values)]
    atomic_write_text(path, f"{len(names)}\n{' '.join(attribute_names)}\n" + "".join(r + "\n" for r in rows))


def write_identities(path: str | os.PathLike, names: list[str], ids: np.ndarray) -> None:
    """Write `identity_CelebA.txt`: one `name id` row per image."""
    ids = np.asarray(ids).ravel()
    if len(ids) != len(names):
        raise DataError(f"{path}: {len(ids)} identities for {len(names)} names, expected one per name")
    atomic_write_text(path, "".join(f"{name} {int(i)}\n" for name, i in zip(names, ids)))
