"""RecordIO reader and writer, checked against bytes built here from the spec (formats.md 3.1) with struct."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data import RecordIODataset, write_face_rec
from facekd.data.recordio import frame_record
from facekd.data.training import TrainSamples
from facekd.errors import DataError

MAGIC = 0xCED7230A
OLD_MAGIC = 0x3ED7230A
SIZE = 16


def colour(label: int) -> tuple[int, int, int]:
    return (20 + 40 * label, 230 - 40 * label, 90 + 10 * label)


def jpeg(label: int) -> bytes:
    """A flat-coloured JPEG made with Pillow, so the readers are not checked against our own encoder."""
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour(label)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def part(payload: bytes, cflag: int = 0, magic: int = MAGIC, length_bits: int = 29) -> bytes:
    return struct.pack("<II", magic, (cflag << length_bits) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def scalar_header(label: float, id_: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", 0, label, id_, id2)


def vector_header(labels: list[float], id_: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", len(labels), 0.0, id_, id2) + struct.pack(f"<{len(labels)}f", *labels)


def write_rec(folder: Path, records: list[tuple[int, bytes]], prop: str | None = None) -> Path:
    """Concatenate framed records into train.rec and list their offsets in train.idx."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, offset, blob = [], 0, b""
    for key, framed in records:
        lines.append(f"{key}\t{offset}\n")
        blob += framed
        offset += len(framed)
    (folder / "train.rec").write_bytes(blob)
    (folder / "train.idx").write_text("".join(lines))
    if prop is not None:
        (folder / "property").write_text(prop)
    return folder


def assert_colour(image: np.ndarray, label: int) -> None:
    assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
    assert np.abs(image.reshape(-1, 3).mean(axis=0) - colour(label)).max() < 3


def ms1m_records() -> list[tuple[int, bytes]]:
    """Meta record, three images of classes 0, 0, 1, two identity records (formats.md 3.1)."""
    return [
        (0, part(vector_header([4.0, 6.0], 0, 1))),
        (1, part(scalar_header(0.0, 1) + jpeg(0))),
        (2, part(scalar_header(0.0, 2) + jpeg(0))),
        (3, part(scalar_header(1.0, 3) + jpeg(1))),
        (4, part(vector_header([1.0, 3.0], 4))),
        (5, part(vector_header([3.0, 4.0], 5))),
    ]


def test_ms1m_layout(tmp_path):
    ds = RecordIODataset(write_rec(tmp_path, ms1m_records(), prop="2,16,16"))
    assert len(ds) == 3
    assert ds.labels.tolist() == [0, 0, 1] and ds.labels.dtype == np.int64
    assert ds.num_classes == 2 and ds.image_size == (16, 16)
    assert ds.keys.tolist() == [1, 2, 3]
    image, label = ds[2]
    assert label == 1 and isinstance(label, int)
    assert_colour(image, 1)
    assert_colour(ds[0][0], 0)


def test_shuffled_layout_with_vector_labels_and_no_property(tmp_path):
    records = [
        (0, part(scalar_header(2.0) + jpeg(2))),
        (1, part(vector_header([0.0, 7.5]) + jpeg(0))),
        (2, part(scalar_header(1.0) + jpeg(1))),
        (3, part(vector_header([4.0, 1.0, 2.0]) + jpeg(4))),
    ]
    ds = RecordIODataset(write_rec(tmp_path, records))
    assert ds.labels.tolist() == [2, 0, 1, 4]
    assert ds.num_classes == 5
    for index, label in enumerate([2, 0, 1, 4]):
        image, got = ds[index]
        assert got == label
        assert_colour(image, label)


def test_idx_order_differs_from_rec_order(tmp_path):
    """MXNet's writer lets a key be written at any offset; only .idx says where."""
    first, second = part(scalar_header(1.0) + jpeg(1)), part(scalar_header(0.0) + jpeg(0))
    (tmp_path / "train.rec").write_bytes(first + second)
    (tmp_path / "train.idx").write_text(f"0\t{len(first)}\n1\t0\n")
    ds = RecordIODataset(tmp_path)
    assert ds.labels.tolist() == [0, 1]
    assert_colour(ds[0][0], 0)


def split_record(label: float) -> tuple[bytes, bytes]:
    """A payload with the magic word at 4-aligned offsets 8 (in id) and 20 (in id2), and its dmlc framing."""
    payload = struct.pack("<IfQQ", 0, label, MAGIC, MAGIC << 32) + jpeg(int(label))
    assert payload[8:12] == payload[20:24] == struct.pack("<I", MAGIC)
    framed = part(payload[:8], cflag=1) + part(payload[12:20], cflag=2) + part(payload[24:], cflag=3)
    return payload, framed


def test_split_record_is_reassembled(tmp_path):
    _, framed = split_record(3.0)
    ds = RecordIODataset(write_rec(tmp_path, [(0, part(scalar_header(1.0) + jpeg(1))), (1, framed)]))
    assert ds.labels.tolist() == [1, 3]
    header, image = ds.records.read(1)
    assert header.id == MAGIC and header.id2 == MAGIC << 32
    assert_colour(ds[1][0], 3)


def test_writer_splits_like_dmlc():
    payload, framed = split_record(2.0)
    assert frame_record(payload) == framed
    assert frame_record(b"abcde") == struct.pack("<II", MAGIC, 5) + b"abcde\0\0\0"


def test_old_dmlc_magic_with_30_bit_length(tmp_path):
    records = [
        (0, part(scalar_header(0.0) + jpeg(0), magic=OLD_MAGIC, length_bits=30)),
        (1, part(scalar_header(1.0) + jpeg(1), magic=OLD_MAGIC, length_bits=30)),
    ]
    ds = RecordIODataset(write_rec(tmp_path, records))
    assert ds.labels.tolist() == [0, 1]
    assert_colour(ds[1][0], 1)


def parse_rec_like_dmlc(data: bytes, offset: int) -> bytes:
    """dmlc's RecordIOReader::NextRecord, written out here to check our writer."""
    parts = []
    while True:
        magic, lrec = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        parts.append(data[offset + 8 : offset + 8 + length])
        offset += 8 + length + (-length % 4)
        if cflag in (0, 3):
            return struct.pack("<I", MAGIC).join(parts)


def test_write_face_rec_ms1m_bytes(tmp_path):
    rgb = [np.full((SIZE, SIZE, 3), colour(label), np.uint8) for label in (0, 0, 1, 2)]
    info = write_face_rec(tmp_path, zip(rgb, [0, 0, 1, 2]))
    assert (info.num_images, info.num_classes, info.image_size) == (4, 3, (16, 16))
    assert (tmp_path / "property").read_text() == "3,16,16"
    data = (tmp_path / "train.rec").read_bytes()
    offsets = {int(k): int(v) for k, v in (line.split("\t") for line in (tmp_path / "train.idx").read_text().splitlines())}
    assert sorted(offsets) == list(range(8))
    meta = parse_rec_like_dmlc(data, offsets[0])
    assert struct.unpack("<IfQQ2f", meta) == (2, 0.0, 0, 1, 5.0, 8.0)
    ranges = [struct.unpack("<IfQQ2f", parse_rec_like_dmlc(data, offsets[k]))[4:] for k in (5, 6, 7)]
    assert ranges == [(1.0, 3.0), (3.0, 4.0), (4.0, 5.0)]
    image_payload = parse_rec_like_dmlc(data, offsets[3])
    flag, label, _, _ = struct.unpack_from("<IfQQ", image_payload)
    assert (flag, label) == (0, 1.0)
    decoded = np.asarray(Image.open(io.BytesIO(image_payload[24:])).convert("RGB"))
    assert_colour(decoded, 1)
    ds = RecordIODataset(tmp_path)
    assert ds.labels.tolist() == [0, 0, 1, 2] and ds.num_classes == 3


def test_write_face_rec_shuffled_and_class_order_check(tmp_path):
    samples = [(jpeg(2), 2), (jpeg(0), 0), (jpeg(2), 2)]
    write_face_rec(tmp_path / "shuffled", samples, layout="shuffled")
    ds = RecordIODataset(tmp_path / "shuffled")
    assert ds.keys.tolist() == [0, 1, 2] and ds.labels.tolist() == [2, 0, 2]
    with pytest.raises(DataError, match="class 2 appears again"):
        write_face_rec(tmp_path / "ms1m", samples)
    with pytest.raises(DataError, match="class 1 has no images"):
        write_face_rec(tmp_path / "ms1m", samples[1:])
    with pytest.raises(DataError, match="num_classes 2, but labels go up to 2"):
        write_face_rec(tmp_path / "ms1m", samples, layout="shuffled", num_classes=2)
    assert not (tmp_path / "ms1m").exists() or not any((tmp_path / "ms1m").iterdir())


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_bad_magic_is_reported_or_dropped(tmp_path, caplog):
    records = ms1m_records()
    records[2] = (2, struct.pack("<I", 0xDEADBEEF) + records[2][1][4:])
    folder = write_rec(tmp_path, records)
    with pytest.raises(DataError) as excinfo:
        RecordIODataset(folder)
    message = one_line_error(excinfo)
    assert "train.rec" in message and "key 2" in message and "0xDEADBEEF" in message and "0xCED7230A" in message
    ds = RecordIODataset(folder, skip_bad=True)
    assert ds.keys.tolist() == [1, 3] and ds.labels.tolist() == [0, 1]
    assert "key 2" in caplog.text


def test_truncated_rec(tmp_path):
    folder = write_rec(tmp_path, ms1m_records()[:4])
    data = (folder / "train.rec").read_bytes()
    (folder / "train.rec").write_bytes(data[:-30])
    with pytest.raises(DataError, match="key 3.*truncated") as excinfo:
        RecordIODataset(folder)
    one_line_error(excinfo)


def test_idx_offset_past_end_of_file(tmp_path):
    folder = write_rec(tmp_path, ms1m_records()[:3])
    with open(folder / "train.idx", "a") as idx:
        idx.write("3\t999999\n")
    with pytest.raises(DataError, match="key 3.*past the end") as excinfo:
        RecordIODataset(folder)
    one_line_error(excinfo)
    assert len(RecordIODataset(folder, skip_bad=True)) == 2


def test_file_that_is_not_recordio(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"GIF89a" + bytes(40))
    (tmp_path / "train.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match="expected a RecordIO magic"):
        RecordIODataset(tmp_path)


def test_missing_files_and_bad_idx(tmp_path):
    with pytest.raises(DataError, match="not found"):
        RecordIODataset(tmp_path / "nowhere")
    folder = write_rec(tmp_path / "a", ms1m_records())
    (folder / "train.idx").unlink()
    with pytest.raises(DataError, match=r"train\.idx: file not found"):
        RecordIODataset(folder)
    (folder / "train.idx").write_text("0 0\n")
    with pytest.raises(DataError, match=r"train\.idx:1: .*expected 'key<TAB>offset'"):
        RecordIODataset(folder)


def test_property_smaller_than_labels(tmp_path):
    with pytest.raises(DataError, match="num_classes 1"):
        RecordIODataset(write_rec(tmp_path, ms1m_records(), prop="1,16,16"))


def undecodable_rec(folder: Path) -> Path:
    """Shuffled rec of 6 images whose key 2 holds bytes no decoder reads, and key 4 a broken JPEG."""
    records = [(key, part(scalar_header(float(key)) + jpeg(key))) for key in range(6)]
    records[2] = (2, part(scalar_header(2.0) + b"NOTANIMAGE" * 3))
    records[4] = (4, part(scalar_header(4.0) + jpeg(4)[:40] + b"\0" * 20))
    return write_rec(folder, records)


def test_undecodable_images(tmp_path, caplog):
    folder = undecodable_rec(tmp_path)
    ds = RecordIODataset(folder)
    assert len(ds) == 6
    with pytest.raises(DataError, match="key 2.*undecodable image") as excinfo:
        ds[2]
    one_line_error(excinfo)
    with pytest.raises(DataError, match="key 4.*corrupt JPEG"):
        ds[4]
    skipping = RecordIODataset(folder, skip_bad=True)
    image, label = skipping[2]
    assert label == 3
    assert_colour(image, 3)
    assert skipping[4][1] == 5
    skipping[2]
    assert caplog.text.count("key 2") == 1


def test_dataloader_workers_report_or_skip_bad_record(tmp_path):
    folder = undecodable_rec(tmp_path)
    loader = torch.utils.data.DataLoader(TrainSamples(RecordIODataset(folder)), batch_size=2, num_workers=2)
    with pytest.raises(DataError, match="key 2"):
        list(loader)
    skipping = TrainSamples(RecordIODataset(folder, skip_bad=True))
    batches = list(torch.utils.data.DataLoader(skipping, batch_size=2, num_workers=2))
    labels = torch.cat([batch["label"] for batch in batches]).tolist()
    assert labels == [0, 1, 3, 3, 5, 5]
    assert torch.cat([batch["index"] for batch in batches]).tolist() == list(range(6))
    assert batches[0]["image"].shape == (2, 3, SIZE, SIZE) and batches[0]["image"].dtype == torch.uint8


def test_dataset_pickles_without_its_file_handle(tmp_path):
    ds = RecordIODataset(write_rec(tmp_path, ms1m_records()))
    ds[0]
    assert ds.records._handle is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.records._handle is None
    assert_colour(copy[2][0], 1)


def ms1m_with_labels(labels: list[float], ranges: list[tuple[float, float]]) -> list[tuple[int, bytes]]:
    """MS1M records: images with the given header labels (keys 1..N), then identity records."""
    count = len(labels)
    records = [(0, part(vector_header([count + 1.0, count + 1.0 + len(ranges)], 0, 1)))]
    records += [(key, part(scalar_header(label, key) + jpeg(int(label) % 5))) for key, label in enumerate(labels, 1)]
    records += [(count + 1 + k, part(vector_header(list(r), count + 1 + k))) for k, r in enumerate(ranges)]
    return records


def test_a_label_changed_in_one_header_is_named_against_its_identity_range(tmp_path):
    # Class 0 is keys [1, 4), class 1 key 4; key 2's header says 1 (a flipped byte in RecordIO,
    # which has no checksum).
    records = ms1m_with_labels([0.0, 1.0, 0.0, 1.0], [(1.0, 4.0), (4.0, 5.0)])
    with pytest.raises(DataError, match=r"record key 2 .*class label 1, but the other images of identity "
                                        r"record .*record key 5 .*keys \[1, 4\)\) are class 0"):
        RecordIODataset(write_rec(tmp_path, records))


def test_a_one_image_class_relabelled_into_another_class_is_refused(tmp_path):
    records = ms1m_with_labels([0.0, 0.0, 0.0, 0.0], [(1.0, 4.0), (4.0, 5.0)])
    with pytest.raises(DataError, match=r"record key 5 .* and .*record key 6 .*two identity records whose "
                                        r"images are all class 0"):
        RecordIODataset(write_rec(tmp_path, records))


def test_identity_records_in_another_order_still_read(tmp_path):
    # The check trusts the ranges, not which class each identity record is.
    records = ms1m_with_labels([0.0, 0.0, 0.0, 1.0], [(4.0, 5.0), (1.0, 4.0)])
    assert RecordIODataset(write_rec(tmp_path, records)).labels.tolist() == [0, 0, 0, 1]
