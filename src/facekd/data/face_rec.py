"""insightface face datasets in RecordIO: `RecordIODataset` reads them, `write_face_rec` writes them.

A dataset folder holds `train.rec`, `train.idx` and optionally `property` (`num_classes,H,W`).
Two layouts exist (formats.md 3.1):

- MS1M: key 0 is a meta record (flag 2, label `[id_start, id_end]`, no image), keys 1..N are images,
  keys id_start..id_end-1 are identity records (label `[img_start, img_end)`, no image).
- shuffled: keys 0..N-1 are images, no meta or identity records.

The reader does not trust the meta record's float32 ranges (imprecise above 2^24): it takes the keys
from `.idx` and keeps every record that has a non-empty image payload, which covers both layouts.

Bad records. Opening the dataset scans every record's framing and IRHeader (a 36-byte gather per
record through a memory map, no image decode): a bad magic, a truncated record or an `.idx` offset
past the end of the file raises `DataError` naming the record, or with `skip_bad=True` drops the
record from the dataset with a warning. An image that fails to decode is found only when it is read:
`ds[i]` raises `DataError` naming it, or with `skip_bad=True` returns the next index that decodes
(i+1, i+2, ... wrapping around), which is deterministic, so every DataLoader worker makes the same choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.data.codec import check_rgb_image, decode_image, encode_jpeg
from facekd.data.rec_index import check_index
from facekd.data.recordio import IR_HEADER, PART_HEADER, IndexedRecordFile, RecordWriter, pack_payload, unpack_payload
from facekd.errors import DataError
from facekd.fileio import atomic_write_text

log = logging.getLogger(__name__)

# Framing (8 bytes) + IRHeader (24) + the first two label-vector elements (8).
_SCAN_WIDTH = PART_HEADER.size + IR_HEADER.size + 8
# float32 holds every integer below this exactly; identity ranges beyond it are not cross-checked.
_EXACT_FLOAT32 = 1 << 24
_SCAN_CHUNK = 1 << 16


@dataclass(frozen=True)
class HeaderScan:
    """Per .idx position: IRHeader flag, class label (scalar or first vector element), image bytes,
    and the record's framed size in the file (parts and padding included; -1 if unreadable).

    `problems` maps the positions of unreadable records to a one-line description.
    """

    flags: np.ndarray
    labels: np.ndarray
    image_sizes: np.ndarray
    extents: np.ndarray
    problems: dict[int, str]
    label_ends: np.ndarray  # the second label-vector element (an identity record's range end); NaN if none


def scan_headers(records: IndexedRecordFile) -> HeaderScan:
    """Read every record's framing and IRHeader without reading images.

    Gathers the first 36 bytes of each record through a read-only memory map in chunks, so the
    cost is one page touch per record; split records (cflag 1) are read whole.
    """
    count = len(records)
    flags = np.zeros(count, dtype=np.uint32)
    labels = np.zeros(count, dtype=np.float32)
    image_sizes = np.full(count, -1, dtype=np.int64)
    extents = np.full(count, -1, dtype=np.int64)
    label_ends = np.full(count, np.nan, dtype=np.float32)
    problems: dict[int, str] = {}
    size = records.file_size
    framing = records.framing
    if count == 0:
        return HeaderScan(flags, labels, image_sizes, extents, problems, label_ends)
    mapped = np.memmap(records.rec_path, dtype=np.uint8, mode="r") if size else np.zeros(1, np.uint8)
    columns = np.arange(_SCAN_WIDTH, dtype=np.int64)
    for start in range(0, count, _SCAN_CHUNK):
        offsets = records.offsets[start : start + _SCAN_CHUNK]
        rows = mapped[np.clip(offsets[:, None] + columns, 0, max(size - 1, 0))]
        words = rows.view("<u4")
        magic, lrec, flag = words[:, 0], words[:, 1], words[:, 2]
        cflag = lrec >> framing.length_bits
        length = (lrec & ((1 << framing.length_bits) - 1)).astype(np.int64)
        header_bytes = IR_HEADER.size + 4 * flag.astype(np.int64)
        complete = cflag == 0
        in_file = (offsets >= 0) & (offsets + PART_HEADER.size + IR_HEADER.size <= size)
        good = (
            in_file
            & (magic == framing.magic)
            & complete
            & (length >= header_bytes)
            & (offsets + PART_HEADER.size + length <= size)
        )
        block = slice(start, start + len(offsets))
        flags[block] = flag
        labels[block] = np.where(flag == 0, words[:, 3].view("<f4"), words[:, 8].view("<f4"))
        label_ends[block] = np.where(flag >= 2, words[:, 9].view("<f4"), np.nan)
        image_sizes[block] = np.where(good, length - header_bytes, -1)
        extents[block] = np.where(good, PART_HEADER.size + length + (-length % 4), -1)
        for row in np.flatnonzero(~good):
            position = start + int(row)
            if in_file[row] and magic[row] == framing.magic and cflag[row] == 1:
                _scan_split_record(records, position, flags, labels, image_sizes, extents, problems, label_ends)
            else:
                problems[position] = _describe_bad_header(
                    records, position, bool(in_file[row]), int(magic[row]), int(cflag[row]),
                    int(length[row]), int(header_bytes[row]),
                )
    return HeaderScan(flags, labels, image_sizes, extents, problems, label_ends)


def check_identity_ranges(records: IndexedRecordFile, scan: HeaderScan, positions: np.ndarray,
                          labels: np.ndarray) -> None:
    """MS1M layout: each identity record (label vector [start, end), no image) names the image keys
    of one class. Refuse a set where the images of one range carry different labels, or two ranges
    the same label: a label changed in a record header (RecordIO has no checksum) shows up here.

    Only the ranges are trusted, not which class a range is: that keeps real sets whose identity
    records are in another order readable. Ranges past 2^24 (inexact in float32) are not checked.
    """
    identity = np.flatnonzero((scan.flags == 2) & (scan.image_sizes == 0) & (records.keys != 0))
    if not len(identity) or not len(positions):
        return
    starts, ends = scan.labels[identity].astype(np.int64), scan.label_ends[identity]
    if not np.isfinite(ends).all() or ends.max() >= _EXACT_FLOAT32:
        return
    order = np.argsort(starts, kind="stable")
    identity, starts, ends = identity[order], starts[order], ends[order].astype(np.int64)
    keys = records.keys[positions]
    slot = np.searchsorted(starts, keys, side="right") - 1
    inside = np.flatnonzero((slot >= 0) & (keys < ends[np.maximum(slot, 0)]))
    if not len(inside):
        return
    slot, held = slot[inside], labels[inside]
    # The label most images of each range carry (ties: the larger), then every image that differs.
    pairs, counts = np.unique(np.stack([slot, held], axis=1), axis=0, return_counts=True)
    by_count = pairs[np.lexsort((counts, pairs[:, 0]))]
    best = by_count[np.r_[by_count[1:, 0] != by_count[:-1, 0], True]]  # (range, its label)
    majority = np.full(len(identity), -1, dtype=np.int64)
    majority[best[:, 0]] = best[:, 1]
    wrong = np.flatnonzero(held != majority[slot])
    if len(wrong):
        row, home = int(wrong[0]), int(slot[wrong[0]])
        raise DataError(
            f"{records.describe(int(positions[inside[row]]))}: class label {int(held[row])}, but the other images "
            f"of identity record {records.describe(int(identity[home]))} (keys [{starts[home]}, {ends[home]})) "
            f"are class {int(majority[home])}; a corrupted header ({len(wrong)} image(s) in total)")
    classes, uses = np.unique(best[:, 1], return_counts=True)
    if (uses > 1).any():
        shared = identity[best[best[:, 1] == classes[uses > 1][0], 0][:2]]
        raise DataError(f"{records.describe(int(shared[0]))} and {records.describe(int(shared[1]))}: two "
                        f"identity records whose images are all class {int(classes[uses > 1][0])}; "
                        "a corrupted header")


def _scan_split_record(
    records: IndexedRecordFile,
    position: int,
    flags: np.ndarray,
    labels: np.ndarray,
    image_sizes: np.ndarray,
    extents: np.ndarray,
    problems: dict[int, str],
    label_ends: np.ndarray,
) -> None:
    """Fill in one split record's scan row from a full read (split records are rare)."""
    try:
        payload, extents[position] = records.read_framed(position)
        header, image = unpack_payload(payload, records.describe(position))
    except DataError as exc:
        problems[position] = str(exc)
        return
    flags[position] = header.flag
    labels[position] = header.class_label
    if header.flag >= 2:
        label_ends[position] = header.label[1]
    image_sizes[position] = len(image)


def _describe_bad_header(
    records: IndexedRecordFile, position: int, in_file: bool, magic: int, cflag: int, length: int, header_bytes: int
) -> str:
    source = records.describe(position)
    offset = int(records.offsets[position])
    if not in_file:
        return (
            f"{source}: offset is past the end of the {records.file_size}-byte file or leaves no room "
            f"for a record header, expected an offset of a record inside the file"
        )
    if magic != records.framing.magic:
        return f"{source}: found magic 0x{magic:08X}, expected 0x{records.framing.magic:08X}"
    if cflag != 0:
        return f"{source}: record starts with cflag {cflag}, expected 0 (whole record) or 1 (first part)"
    if length < header_bytes:
        return f"{source}: payload of {length} bytes, expected at least {header_bytes} for its IRHeader and labels"
    return (
        f"{source}: truncated, the record needs {PART_HEADER.size + length} bytes "
        f"but the file ends after {records.file_size - offset}"
    )


def read_property(path: Path) -> tuple[int, int, int]:
    """Parse an insightface `property` file: `num_classes,H,W`."""
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        num_classes, height, width = (int(field) for field in text.split(","))
    except ValueError:
        raise DataError(f"{path}: found {text!r}, expected 'num_classes,height,width'") from None
    return num_classes, height, width


def _rec_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(rec, idx, property) for a dataset folder, or for a `.rec` file and its siblings."""
    path = Path(path)
    if path.suffix == ".rec":
        return path, path.with_suffix(".idx"), path.parent / "property"
    if not path.is_dir():
        raise DataError(f"{path}: not found, expected a folder holding train.rec and train.idx")
    return path / "train.rec", path / "train.idx", path / "property"


class RecordIODataset:
    """An insightface RecordIO face dataset: `ds[i] -> (image, label)`.

    `image` is uint8 HxWx3 RGB (or `transform(image)`), `label` an int. `labels` (int64) and
    `num_classes` (from `property` if present, else max label + 1) describe the whole set.
    `path` is the dataset folder (or its `.rec` file). See the module docstring for `skip_bad`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Callable[[np.ndarray], object] | None = None,
        skip_bad: bool = False,
    ):
        rec_path, idx_path, property_path = _rec_paths(path)
        self.records = IndexedRecordFile(rec_path, idx_path)
        self.transform = transform
        self.skip_bad = skip_bad
        scan = scan_headers(self.records)
        if scan.problems and not skip_bad:
            first = min(scan.problems)
            raise DataError(
                f"{scan.problems[first]} ({len(scan.problems)} bad record(s) in total; data.skip_bad: true or --skip-bad drops them)"
            )
        for position in sorted(scan.problems):
            log.warning("skipping bad record: %s", scan.problems[position])
        if not scan.problems:  # with bad records skipped, their extents are unknown
            check_index(self.records, scan.extents, scan.flags)
        self._positions = np.flatnonzero(scan.image_sizes > 0)
        self.labels = self._class_labels(scan.labels[self._positions])
        check_identity_ranges(self.records, scan, self._positions, self.labels)
        self.image_size: tuple[int, int] | None = None
        if property_path.is_file():
            self.num_classes, height, width = read_property(property_path)
            self.image_size = (height, width)
            if len(self.labels) and self.labels.max() >= self.num_classes:
                raise DataError(
                    f"{property_path}: num_classes {self.num_classes}, but {rec_path} has label "
                    f"{int(self.labels.max())}; expected labels below num_classes"
                )
        else:
            self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self._positions)

    @property
    def keys(self) -> np.ndarray:
        """Record keys of the images, in dataset order."""
        return self.records.keys[self._positions]

    def __getitem__(self, index: int) -> tuple[object, int]:
        count = len(self._positions)
        if not 0 <= index < count:
            raise IndexError(f"index {index} out of range for a dataset of {count} images")
        for step in range(count):
            item = (index + step) % count
            try:
                image = self._decode(int(self._positions[item]))
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._warn_once(int(self._positions[item]), exc)
                continue
            label = int(self.labels[item])
            return (self.transform(image) if self.transform else image), label
        raise DataError(f"{self.records.rec_path}: none of its {count} images decodes")

    def _decode(self, position: int) -> np.ndarray:
        source = self.records.describe(position)
        _, image = unpack_payload(self.records.read_payload(position), source)
        return decode_image(image, source)

    def _warn_once(self, position: int, exc: DataError) -> None:
        if position not in self._warned:
            self._warned.add(position)
            log.warning("skipping bad record: %s", exc)

    def _class_labels(self, labels: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero((labels < 0) | (labels != np.round(labels)) | ~np.isfinite(labels))
        if len(bad):
            position = int(self._positions[bad[0]])
            raise DataError(
                f"{self.records.describe(position)}: class label {float(labels[bad[0]])}, "
                "expected a non-negative integer"
            )
        return labels.astype(np.int64)


@dataclass(frozen=True)
class FaceRecInfo:
    """What `write_face_rec` wrote."""

    num_images: int
    num_classes: int
    image_size: tuple[int, int]


def write_face_rec(
    folder: str | os.PathLike,
    samples: Iterable[tuple[np.ndarray | bytes, int]],
    *,
    layout: str = "ms1m",
    num_classes: int | None = None,
    quality: int = 95,
) -> FaceRecInfo:
    """Write an insightface dataset: `folder/train.rec`, `folder/train.idx`, `folder/property`.

    samples: `(image, label)` pairs, `image` a uint8 HxWx3 RGB array (encoded as JPEG at
        `quality`, as insightface's cv2.imencode) or already-encoded image bytes; `label` an int class.
    layout: "ms1m" writes images as keys 1..N, one identity record per class (keys N+1..N+C,
        label `[img_start, img_end)`) and the meta record at key 0 (label `[N+1, N+1+C]`); each
        class's images must be consecutive and classes must be 0..C-1.
        "shuffled" writes images as keys 0..N-1 in the given order, with no meta or identity records.
    num_classes: written to `property`; defaults to max label + 1.

    Files are written atomically. The property's H,W is the first image's size.
    """
    if layout not in ("ms1m", "shuffled"):
        raise ValueError(f"layout must be 'ms1m' or 'shuffled', got {layout!r}")
    folder = Path(folder)
    first_key = 1 if layout == "ms1m" else 0
    ranges: dict[int, list[int]] = {}  # class -> [first key, last key + 1]
    previous_label: int | None = None
    image_size: tuple[int, int] | None = None
    key = first_key
    with RecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        for image, label in samples:
            label = int(label)
            if label < 0:
                raise DataError(f"sample {key - first_key}: label {label}, expected a non-negative class")
            if layout == "ms1m" and label != previous_label and label in ranges:
                raise DataError(
                    f"sample {key - first_key}: class {label} appears again after class {previous_label}; "
                    "the MS1M layout needs each class's images consecutive"
                )
            encoded = _encoded(image, quality, key - first_key)
            if image_size is None:
                image_size = decode_image(encoded, f"sample {key - first_key}").shape[:2]
            writer.write(key, pack_payload(float(label), encoded, id=key))
            ranges.setdefault(label, [key, key])[1] = key + 1
            previous_label = label
            key += 1
        num_images = key - first_key
        if num_images == 0:
            raise DataError(f"{folder}: no samples to write, expected at least one image")
        classes = max(ranges) + 1
        num_classes = classes if num_classes is None else num_classes
        if num_classes < classes:
            raise DataError(f"{folder}: num_classes {num_classes}, but labels go up to {classes - 1}")
        if layout == "ms1m":
            if len(ranges) != classes:
                present = np.sort(np.fromiter(ranges, dtype=np.int64))
                missing = int(np.flatnonzero(present != np.arange(len(present)))[0])  # the first gap
                raise DataError(
                    f"{folder}: class {missing} has no images; the MS1M layout needs classes 0..{classes - 1}"
                )
            id_start = num_images + 1
            for label in range(classes):
                writer.write(id_start + label, pack_payload(ranges[label], b"", id=id_start + label))
            writer.write(0, pack_payload([id_start, id_start + classes], b"", id=0, id2=1))
    assert image_size is not None
    atomic_write_text(folder / "property", f"{num_classes},{image_size[0]},{image_size[1]}")
    return FaceRecInfo(num_images, num_classes, image_size)


def _encoded(image: np.ndarray | bytes, quality: int, index: int) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    check_rgb_image(image, f"sample {index}")
    return encode_jpeg(image, quality)
