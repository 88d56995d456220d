"""The `.idx` checked against the `.rec` it indexes, and rebuilt from it.

An `.idx` with a duplicated, rewritten or deleted line still opens record by record, but images
then change identity or vanish without a word. So a dataset is accepted only when its indexed
records tile the `.rec` exactly: sorted by offset, each record ends where the next begins, the first
starts at byte 0 and the last ends at the end of the file. In the MS1M layout the keys must also
be the meta record's range: 0 (meta), 1.. (images), then the identity records up to `id_end`.
`rebuild_index` writes the `.idx` again from a walk over the `.rec`, keyed by each record's
IRHeader id (as MXNet's im2rec and insightface's packers write it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facekd.data.recordio import IndexedRecordFile, unpack_payload
from facekd.errors import DataError
from facekd.fileio import atomic_write_text

META_FLAG = 2  # the MS1M meta record: label [id_start, id_end]
_READ_AHEAD = 1 << 16


def _advice(records: IndexedRecordFile) -> str:
    return f"rebuild it from the .rec with `facekd pack rec --rebuild-index {records.rec_path.parent}`"


def check_index(records: IndexedRecordFile, extents: np.ndarray, flags: np.ndarray) -> None:
    """Raise DataError unless the indexed records tile the .rec and cover the MS1M key ranges."""
    idx, size = records.idx_path, records.file_size
    if len(records) == 0:
        raise DataError(f"{idx}: empty index, but {records.rec_path} holds {size} bytes of records; {_advice(records)}")
    order = np.argsort(records.offsets, kind="stable")
    offsets = records.offsets[order]
    ends = offsets + extents[order]
    repeated = np.flatnonzero(offsets[1:] == offsets[:-1])
    if len(repeated):
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise DataError(
            f"{idx}: keys {int(records.keys[first])} and {int(records.keys[second])} both point at offset "
            f"{int(offsets[repeated[0]])}, expected each offset to start a distinct record; {_advice(records)}")
    starts = np.append(offsets, size)
    gaps = np.flatnonzero(np.append(0, ends) != starts)
    if len(gaps):
        at = int(gaps[0])
        begin = 0 if at == 0 else int(ends[at - 1])
        raise DataError(
            f"{idx}: bytes {begin}..{int(starts[at])} of {records.rec_path} are in no indexed record "
            f"({len(records)} records indexed), expected the index to cover every record; {_advice(records)}")
    _check_ms1m_keys(records, flags)


def _check_ms1m_keys(records: IndexedRecordFile, flags: np.ndarray) -> None:
    meta = np.flatnonzero(records.keys == 0)
    if not len(meta) or flags[meta[0]] != META_FLAG:
        return  # the shuffled layout: no key ranges to check
    header, _ = unpack_payload(records.read_payload(int(meta[0])), records.describe(int(meta[0])))
    id_start, id_end = (float(v) for v in np.atleast_1d(header.label)[:2])
    # The ranges are float32 (imprecise above 2**24): compare the keys as float32 too.
    keys = np.sort(records.keys)
    expected_last = np.float32(id_end - 1)
    if np.float32(keys[-1]) != expected_last or abs(len(keys) - id_end) > np.spacing(np.float32(id_end)):
        raise DataError(
            f"{records.idx_path}: {len(keys)} keys up to {int(keys[-1])}, but the meta record says keys 0..{int(id_end) - 1} "
            f"(images 1..{int(id_start) - 1}, identities {int(id_start)}..{int(id_end) - 1}); {_advice(records)}")


def rebuild_index(rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> int:
    """Write `idx_path` from a walk over `rec_path` (key = IRHeader id); returns the record count."""
    rec_path, idx_path = Path(rec_path), Path(idx_path)
    records = IndexedRecordFile.unindexed(rec_path)
    lines, ids = [], set()
    offset = 0
    while offset < records.file_size:
        source = f"{rec_path} record at offset {offset}"
        payload, extent = records.read_framed_at(offset, _READ_AHEAD, source)
        header, _ = unpack_payload(payload, source)
        if header.id in ids:
            raise DataError(f"{source}: IRHeader id {header.id} repeats, so the ids cannot serve as keys; "
                            "expected one id per record")
        ids.add(header.id)
        lines.append(f"{header.id}\t{offset}\n")
        offset += extent
    records.close()
    atomic_write_text(idx_path, "".join(lines))
    return len(lines)
