"""MXNet RecordIO without mxnet: the dmlc framing, the IRHeader payload, an indexed reader and a writer.

Byte layout (docs: formats.md section 3.1):

- `.idx`: text lines `key<TAB>offset`, the offset of the record's framing header in `.rec`.
- `.rec`: per part, uint32 LE magic, uint32 LE lrec (cflag in the top bits, length in the rest),
  `length` payload bytes, zero padding to 4 bytes. A payload holding the magic word at a 4-aligned
  offset is split there into parts with cflag 1 (first), 2 (middle), 3 (last); the reader re-inserts
  the magic between parts. MXNet writes magic 0xCED7230A with a 29-bit length; an old dmlc-core
  wrote 0x3ED7230A with a 30-bit length.
- payload: IRHeader `<IfQQ` (flag, label, id, id2); when flag > 0 a float32 label vector of `flag`
  values follows and `label` is 0; the rest is the encoded image.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from facekd.errors import DataError
from facekd.fileio import atomic_open


@dataclass(frozen=True)
class Framing:
    """One dmlc RecordIO dialect: its magic word and how many low lrec bits hold the length."""

    magic: int
    length_bits: int

    @functools.cached_property
    def magic_bytes(self) -> bytes:
        return struct.pack("<I", self.magic)

    def decode_lrec(self, lrec: int) -> tuple[int, int]:
        """Split lrec into (cflag, length)."""
        return lrec >> self.length_bits, lrec & ((1 << self.length_bits) - 1)

    def encode_lrec(self, cflag: int, length: int) -> int:
        return (cflag << self.length_bits) | length


MXNET_FRAMING = Framing(magic=0xCED7230A, length_bits=29)
OLD_DMLC_FRAMING = Framing(magic=0x3ED7230A, length_bits=30)
FRAMINGS = (MXNET_FRAMING, OLD_DMLC_FRAMING)

PART_HEADER = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")

# A single pread covers a whole record when the next offset is this close; beyond, read in steps.
_MAX_READ_AHEAD = 1 << 22


class IRHeader(NamedTuple):
    """The image-record header. `label` is a float for flag 0, else a float32 vector of `flag` values."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int

    @property
    def class_label(self) -> float:
        """The class as arcface_torch reads it: the scalar label or the first vector element."""
        if self.flag == 0:
            return float(self.label)
        return float(self.label[0])


def pack_payload(label: float | np.ndarray | list[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Build a record payload as `mxnet.recordio.pack`: IRHeader, label vector if any, image bytes.

    A scalar label is stored in the header (flag 0); a sequence is stored as a float32 vector
    after it (flag = its length, header label 0).
    """
    if np.ndim(label) == 0:
        return IR_HEADER.pack(0, float(label), id, id2) + bytes(image)
    vector = np.asarray(label, dtype="<f4").ravel()
    return IR_HEADER.pack(vector.size, 0.0, id, id2) + vector.tobytes() + bytes(image)


def unpack_payload(payload: bytes, source: str) -> tuple[IRHeader, memoryview]:
    """Split a payload into its IRHeader and the (possibly empty) image bytes."""
    view = memoryview(payload)
    if len(view) < IR_HEADER.size:
        raise DataError(f"{source}: payload of {len(view)} bytes, expected at least the 24-byte IRHeader")
    flag, label, id_, id2 = IR_HEADER.unpack_from(view)
    start = IR_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(view) < end:
            raise DataError(
                f"{source}: IRHeader flag {flag} needs a {4 * flag}-byte label vector, "
                f"payload has only {len(view) - start} bytes after the header"
            )
        label = np.frombuffer(view[start:end], dtype="<f4").astype(np.float32)
        start = end
    return IRHeader(flag, label, id_, id2), view[start:]


def frame_record(payload: bytes, framing: Framing = MXNET_FRAMING) -> bytes:
    """Frame one payload exactly as dmlc's RecordIOWriter::WriteRecord does, splitting at magic words."""
    limit = 1 << framing.length_bits
    if len(payload) >= limit:
        raise DataError(f"record payload of {len(payload)} bytes, RecordIO accepts less than {limit}")
    magic = framing.magic_bytes
    out = bytearray()
    start = 0
    # dmlc scans only 4-aligned offsets below the last full word.
    for pos in range(0, len(payload) - len(payload) % 4, 4):
        if payload[pos : pos + 4] == magic:
            out += PART_HEADER.pack(framing.magic, framing.encode_lrec(1 if start == 0 else 2, pos - start))
            out += payload[start:pos]
            start = pos + 4
    out += PART_HEADER.pack(framing.magic, framing.encode_lrec(3 if start else 0, len(payload) - start))
    out += payload[start:]
    out += bytes(-len(out) % 4)
    return bytes(out)


def read_idx(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a `.idx` file into (keys, offsets), both int64 arrays in file order."""
    try:
        text = idx_path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise DataError(f"{idx_path}: file not found, expected the RecordIO index next to the .rec") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{idx_path}: non-ASCII byte at {exc.start}, expected lines 'key<TAB>offset'") from None
    pairs = _parse_idx_fast(text)
    if pairs is None:
        pairs = _parse_idx_lines(text, idx_path)
    keys, offsets = pairs
    sorted_keys = np.sort(keys)
    repeated = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if len(repeated):
        raise DataError(f"{idx_path}: key {int(repeated[0])} is listed more than once, expected unique keys")
    return keys, offsets


def _parse_idx_fast(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised parse of a well-formed `.idx` (digits, one tab per line, no blank lines), else None."""
    if not text.endswith("\n"):
        text += "\n"
    raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    separators = np.flatnonzero((raw == 9) | (raw == 10))
    kinds = raw[separators]
    well_formed = (
        len(kinds) % 2 == 0
        and bool((kinds[0::2] == 9).all() and (kinds[1::2] == 10).all())  # key TAB offset NEWLINE
        and bool((np.diff(separators, prepend=-1) > 1).all())  # no empty field
        and int(np.count_nonzero((raw >= 48) & (raw <= 57))) + len(separators) == len(raw)  # digits only
    )
    if not well_formed:
        return None
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    return values[0::2].copy(), values[1::2].copy()


def _parse_idx_lines(text: str, idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Line by line, to name the line that breaks the format."""
    keys: list[int] = []
    offsets: list[int] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 2:
                raise ValueError
            keys.append(int(fields[0]))
            offsets.append(int(fields[1]))
        except ValueError:
            raise DataError(f"{idx_path}:{line_number}: found {line!r}, expected 'key<TAB>offset'") from None
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class IndexedRecordFile:
    """Random access to the records of a `.rec` file by the positions and keys of its `.idx`.

    The file is opened lazily in each process (a DataLoader worker gets its own handle, and
    pickling drops the handle), and read with `os.pread`, so reads need no shared seek position.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike,
                 index: tuple[np.ndarray, np.ndarray] | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        self._rec_name = str(self.rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: file not found, expected a RecordIO .rec file")
        keys, offsets = index if index is not None else read_idx(self.idx_path)
        # Records in key order, whatever the order of the .idx lines (writers emit them sorted).
        order = np.argsort(keys, kind="stable")
        self.keys, self.offsets = keys[order], offsets[order]
        self.file_size = self.rec_path.stat().st_size
        self.framing = self._detect_framing()
        self._extents = self._record_extents()
        self._key_order = np.argsort(self.keys)
        self._sorted_keys = self.keys[self._key_order]
        self._handle: IO[bytes] | None = None
        self._handle_pid: int | None = None

    @classmethod
    def unindexed(cls, rec_path: str | os.PathLike) -> "IndexedRecordFile":
        """The .rec without its index, for `read_framed_at` walks (e.g. rebuilding the index)."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(rec_path, Path(rec_path).with_suffix(".idx"), index=(empty, empty))

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._handle_pid = None

    def describe(self, position: int) -> str:
        """'file record key K (offset O)' for error messages."""
        return f"{self._rec_name} record key {self.keys[position]} (offset {self.offsets[position]})"

    def position_of(self, key: int) -> int:
        """The .idx position of a record key."""
        where = int(np.searchsorted(self._sorted_keys, key))
        if where == len(self._sorted_keys) or self._sorted_keys[where] != key:
            raise DataError(f"{self.idx_path}: no record with key {key}")
        return int(self._key_order[where])

    def read_payload(self, position: int) -> bytes:
        """The payload of the record at an .idx position, with split parts joined by the magic word."""
        return self.read_framed(position)[0]

    def read_framed(self, position: int) -> tuple[bytes, int]:
        """(payload, framed size) of the record at an .idx position (see `read_framed_at`)."""
        return self.read_framed_at(int(self.offsets[position]), int(self._extents[position]), self.describe(position))

    def read_framed_at(self, offset: int, read_ahead: int, source: str) -> tuple[bytes, int]:
        """(payload, framed size): the payload of the record starting at byte `offset`, split parts
        joined by the magic word, and its bytes in the file, parts and padding included."""
        if offset < 0 or offset + PART_HEADER.size > self.file_size:
            raise DataError(
                f"{source}: offset is past the end of the {self.file_size}-byte file, "
                "expected an offset of a record inside it"
            )
        buffer = self._pread(min(read_ahead, _MAX_READ_AHEAD), offset)
        parts: list[bytes] = []
        cursor = 0
        while True:
            buffer = self._ensure(buffer, offset, cursor + PART_HEADER.size, source)
            magic, lrec = PART_HEADER.unpack_from(buffer, cursor)
            if magic != self.framing.magic:
                raise DataError(
                    f"{source}: found magic 0x{magic:08X} at byte {offset + cursor}, "
                    f"expected 0x{self.framing.magic:08X}"
                )
            cflag, length = self.framing.decode_lrec(lrec)
            expected = (0, 1) if not parts else (2, 3)
            if cflag not in expected:
                raise DataError(f"{source}: part {len(parts)} has cflag {cflag}, expected one of {expected}")
            start = cursor + PART_HEADER.size
            buffer = self._ensure(buffer, offset, start + length, source)
            parts.append(buffer[start : start + length])
            cursor = start + length + (-length % 4)
            if cflag in (0, 3):
                return (parts[0] if cflag == 0 else self.framing.magic_bytes.join(parts)), cursor

    def read(self, position: int) -> tuple[IRHeader, memoryview]:
        """The IRHeader and image bytes of the record at an .idx position."""
        return unpack_payload(self.read_payload(position), self.describe(position))

    def _detect_framing(self) -> Framing:
        if self.file_size == 0:
            return MXNET_FRAMING
        with open(self.rec_path, "rb") as handle:
            head = handle.read(4)
        for framing in FRAMINGS:
            if head == framing.magic_bytes:
                return framing
        known = ", ".join(f"0x{f.magic:08X}" for f in FRAMINGS)
        raise DataError(f"{self.rec_path}: starts with bytes {head.hex()}, expected a RecordIO magic ({known})")

    def _record_extents(self) -> np.ndarray:
        """Bytes from each record's offset to the next higher offset (or end of file)."""
        if len(self.offsets) == 0:
            return np.zeros(0, dtype=np.int64)
        if np.all(self.offsets[1:] > self.offsets[:-1]):  # the usual, sequentially written file
            following = np.append(self.offsets[1:], self.file_size)
        else:
            ends = np.sort(np.append(self.offsets, self.file_size))
            following = ends[np.minimum(np.searchsorted(ends, self.offsets, side="right"), len(ends) - 1)]
        return np.maximum(following - self.offsets, PART_HEADER.size)

    def _pread(self, size: int, offset: int) -> bytes:
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            # After a fork (DataLoader workers) each process opens and reads through its own handle.
            self._handle = open(self.rec_path, "rb", buffering=0)
            self._handle_pid = pid
        return os.pread(self._handle.fileno(), size, offset)

    def _ensure(self, buffer: bytes, offset: int, needed: int, source: str) -> bytes:
        """Extend `buffer` (bytes from `offset`) to at least `needed` bytes, or report truncation."""
        if len(buffer) >= needed:
            return buffer
        buffer += self._pread(needed - len(buffer), offset + len(buffer))
        if len(buffer) < needed:
            raise DataError(
                f"{source}: truncated, the record needs {needed} bytes from its offset "
                f"but the file ends after {len(buffer)}"
            )
        return buffer


class RecordWriter:
    """Write `.rec` + `.idx` pairs that MXNet's MXIndexedRecordIO reads, atomically.

    Use as a context manager; both files appear only if the block finishes without error.
    The `.idx` lists keys in ascending order.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        self._entries: dict[int, int] = {}
        self._offset = 0
        self._stack: contextlib.ExitStack | None = None
        self._rec: IO[bytes] | None = None

    def __enter__(self) -> RecordWriter:
        self._stack = contextlib.ExitStack()
        self._rec = self._stack.enter_context(atomic_open(self.rec_path, "wb"))
        return self

    def write(self, key: int, payload: bytes) -> None:
        """Append one record under `key`."""
        if self._rec is None:
            raise RuntimeError("RecordWriter.write called outside its `with` block")
        if key in self._entries:
            raise DataError(f"{self.rec_path}: key {key} written twice, expected unique keys")
        framed = frame_record(payload)
        self._rec.write(framed)
        self._entries[key] = self._offset
        self._offset += len(framed)

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack, self._rec = self._stack, None, None
        assert stack is not None
        if exc_type is not None:
            stack.__exit__(exc_type, exc, tb)  # discards the partial .rec
            return
        with stack:  # the .rec is committed only if the .idx was
            lines = "".join(f"{key}\t{self._entries[key]}\n" for key in sorted(self._entries))
            with atomic_open(self.idx_path, "w") as idx:
                idx.write(lines)
