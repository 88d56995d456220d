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
from facekd.fileio import atomic_write_text, read_utf8

LANDMARK_COLUMNS = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)  # fmt: skip


MAX_COORDINATE = 1e5  # pixels; CelebA's in-the-wild images are a few thousand wide
MAX_ID_DIGITS = 18  # fits int64


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


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines."""
    text = read_utf8(path, "a text file")
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


@dataclass(frozen=True)
class _Table:
    """Image names and their value fields (a str array, one row per image), with line numbers."""

    path: Path
    names: list[str]
    cells: np.ndarray
    line_numbers: list[int]
    columns: list[str]

    def refuse(self, bad: np.ndarray, expected: str) -> None:
        """One-line error for the first True cell of `bad`, naming its line and column."""
        row, column = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{self.path}:{self.line_numbers[row]}: {self.columns[column]} is "
                        f"{str(self.cells[row, column])!r}, expected {expected}")


def _table(path: Path, lines: list[tuple[int, str]], columns: list[str]) -> _Table:
    rows = [line.split() for _, line in lines]
    for (number, _), row in zip(lines, rows):
        if len(row) != len(columns) + 1:
            raise DataError(f"{path}:{number}: {len(row) - 1} values after the image name, expected {len(columns)}")
    cells = np.array([row[1:] for row in rows], dtype=str).reshape(len(rows), len(columns))
    return _Table(path, [row[0] for row in rows], cells, [number for number, _ in lines], columns)


def _read_counted_table(path: Path, what: str, columns: list[str] | None = None) -> _Table:
    """A file with a count line and a header line (`columns` if given: the header must have as
    many names; else the header's names are the columns)."""
    lines = _read_lines(path)
    if len(lines) < 2:
        raise DataError(f"{path}: {len(lines)} non-empty lines, expected a count line and a {what} line")
    number, text = lines[0]
    if not text.strip().isdigit():
        raise DataError(f"{path}:{number}: found {text.strip()!r}, expected the number of images")
    header = lines[1][1].split()
    if columns is not None and len(header) != len(columns):
        raise DataError(f"{path}:{lines[1][0]}: {len(header)} column names, expected the {len(columns)} of a {what}")
    table = _table(path, lines[2:], columns or header)
    if len(table.names) != int(text):
        raise DataError(f"{path}: {len(table.names)} rows, expected {int(text)} as its first line says")
    return table


def _floats(table: _Table) -> np.ndarray:
    try:
        return table.cells.astype(np.float64)
    except ValueError:
        for cell in table.cells.flat:
            try:
                float(cell)
            except ValueError:
                table.refuse(table.cells == cell, "a number")
        raise


def read_landmarks(path: str | os.PathLike) -> Landmarks:
    """Read `list_landmarks_align_celeba.txt` (or `list_landmarks_celeba.txt`)."""
    path = Path(path)
    table = _read_counted_table(path, "landmark header", list(LANDMARK_COLUMNS))
    values = _floats(table)
    outside = ~(np.abs(values) <= MAX_COORDINATE)  # nan and inf included
    if outside.any():
        table.refuse(outside, f"a finite pixel coordinate within +-{MAX_COORDINATE:g}")
    return Landmarks(table.names, values.astype(np.float32).reshape(-1, 5, 2))


def read_attributes(path: str | os.PathLike) -> Attributes:
    """Read `list_attr_celeba.txt`."""
    path = Path(path)
    table = _read_counted_table(path, "attribute names")
    bad = (table.cells != "1") & (table.cells != "-1")
    if bad.any():
        table.refuse(bad, "1 or -1")
    return Attributes(table.names, table.columns, np.where(table.cells == "1", 1, -1).astype(np.int8))


def read_identities(path: str | os.PathLike) -> Identities:
    """Read `identity_CelebA.txt`."""
    path = Path(path)
    table = _table(path, _read_lines(path), ["identity"])
    if not table.names:
        raise DataError(f"{path}: no entries, expected lines 'image identity'")
    bad = ~np.char.isdigit(table.cells) | (np.char.str_len(table.cells) > MAX_ID_DIGITS)
    if bad.any():
        table.refuse(bad, f"a non-negative integer of at most {MAX_ID_DIGITS} digits")
    return Identities(table.names, table.cells.astype(np.int64).ravel())


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
