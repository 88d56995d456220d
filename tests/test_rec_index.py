"""An .idx that no longer matches its .rec is refused (it used to change labels silently), and
`facekd pack rec --rebuild-index` writes it again. The edits are made on the .idx text by hand."""

from __future__ import annotations

import numpy as np
import pytest

from facekd.cli import main
from facekd.data import RecordIODataset
from facekd.data.face_rec import write_face_rec
from facekd.errors import DataError


@pytest.fixture
def dataset(tmp_path):
    """8 identities x 6 images, MS1M layout (keys 0 meta, 1..48 images, 49..56 identities)."""
    rng = np.random.default_rng(0)
    write_face_rec(tmp_path, [(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), k // 6) for k in range(48)])
    return tmp_path


def lines(folder) -> list[str]:
    return (folder / "train.idx").read_text().splitlines()


def write_lines(folder, new) -> None:
    (folder / "train.idx").write_text("".join(line + "\n" for line in new))


def offset_of(line: str) -> str:
    return line.split("\t")[1]


def test_the_intact_index_reads_eight_classes_of_six(dataset):
    assert np.bincount(RecordIODataset(dataset).labels).tolist() == [6] * 8


def duplicate_two_offsets(idx):  # the case: counts became [8 4 6 ...]
    idx[10] = f"{idx[10].split(chr(9))[0]}\t{offset_of(idx[3])}"
    idx[11] = f"{idx[11].split(chr(9))[0]}\t{offset_of(idx[4])}"
    return idx


def rewrite_to_another_record(idx):
    idx[20] = f"{idx[20].split(chr(9))[0]}\t{offset_of(idx[2])}"
    return idx


@pytest.mark.parametrize("edit, expected", [
    (duplicate_two_offsets, "both point at offset"),
    (rewrite_to_another_record, "both point at offset"),
    (lambda idx: idx[:7] + idx[8:], "are in no indexed record"),           # a deleted line
    (lambda idx: idx[:30], "are in no indexed record"),                     # a short index
    (lambda idx: [], "empty index"),
])
def test_an_index_that_does_not_tile_the_rec_is_refused(dataset, edit, expected):
    write_lines(dataset, edit(lines(dataset)))
    with pytest.raises(DataError, match=expected) as excinfo:
        RecordIODataset(dataset)
    message = str(excinfo.value)
    assert "train.idx" in message and "--rebuild-index" in message and "\n" not in message


def test_keys_outside_the_meta_records_range_are_refused(dataset):
    idx = lines(dataset)
    key, offset = idx[5].split("\t")
    idx[5] = f"9999\t{offset}"  # offsets intact, one key moved out of 0..56
    write_lines(dataset, idx)
    with pytest.raises(DataError, match="meta record says keys 0..56"):
        RecordIODataset(dataset)


def test_rebuild_index_restores_the_original(dataset, capsys):
    original = (dataset / "train.idx").read_text()
    write_lines(dataset, duplicate_two_offsets(lines(dataset))[:40])
    assert main(["pack", "rec", "--rebuild-index", str(dataset)]) == 0
    assert "57 records" in capsys.readouterr().out
    rebuilt = sorted(lines(dataset), key=lambda line: int(line.split("\t")[0]))
    assert rebuilt == sorted(original.splitlines(), key=lambda line: int(line.split("\t")[0]))
    assert np.bincount(RecordIODataset(dataset).labels).tolist() == [6] * 8


def test_rebuild_index_refuses_extra_arguments(dataset, capsys):
    assert main(["pack", "rec", "--rebuild-index", str(dataset), "--out", str(dataset)]) == 2
    assert "takes no SOURCE or --out" in capsys.readouterr().err
