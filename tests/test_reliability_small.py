"""Issue-14 small holes: workers >= 0, data.skip_bad reaching the reader, empty inputs named by file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from facekd.cli import main
from facekd.data import load_pairs_bin
from facekd.data.celeba import read_identities
from facekd.data.face_rec import write_face_rec
from facekd.errors import ConfigError, DataError
from facekd.evaluate.ijb import read_ijb_meta
from facekd.train.build import open_face_dataset
from facekd.train.config import DataConfig, load_config


def test_negative_workers_are_refused_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {workers: -1}\n")
    with pytest.raises(ConfigError, match=r"train.workers is -1, expected 0 or more"):
        load_config(path, check_paths=False)


def _corrupt_rec(tmp_path):
    rng = np.random.default_rng(0)
    write_face_rec(tmp_path / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 3) for k in range(6)])
    rec = tmp_path / "train" / "train.rec"
    data = bytearray(rec.read_bytes())
    data[-40:-30] = b"\xff" * 10  # break the last record's framing or image bytes
    rec.write_bytes(bytes(data))
    return tmp_path / "train"


def test_skip_bad_reaches_the_reader_and_only_applies_to_recordio(tmp_path):
    folder = _corrupt_rec(tmp_path)
    strict = DataConfig(train=str(folder))
    lenient = DataConfig(train=str(folder), skip_bad=True)
    try:
        dataset = open_face_dataset(strict)
        with pytest.raises(DataError):
            [dataset[i] for i in range(len(dataset))]
    except DataError as error:
        assert "data.skip_bad" in str(error)
    dataset = open_face_dataset(lenient)
    assert dataset.skip_bad and all(dataset[i][0].shape == (16, 16, 3) for i in range(len(dataset)))
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    with pytest.raises(ConfigError, match="only RecordIO data can skip"):
        open_face_dataset(DataConfig(train=str(tmp_path / "images"), skip_bad=True))


def test_skip_bad_flag_sets_the_config_key(tmp_path, capsys):
    # --skip-bad turns into data.skip_bad; an image folder then refuses it in one line, naming the key.
    (tmp_path / "images" / "a").mkdir(parents=True)
    assert main(["train", "--config", "configs/train/synth_teacher.yaml", "--skip-bad", "--out", str(tmp_path / "o"),
                 "--set", f"data.train={tmp_path / 'images'}", "--set", "data.val_bins=[]"]) == 2
    assert "data.skip_bad: true" in capsys.readouterr().err


def test_empty_inputs_are_named_by_file(tmp_path):
    empty_bin = tmp_path / "e.bin"
    empty_bin.write_bytes(pickle.dumps(([], []), protocol=4))
    with pytest.raises(DataError, match=r"e\.bin: no images"):
        load_pairs_bin(empty_bin)
    identities = tmp_path / "identity_CelebA.txt"
    identities.write_text("")
    with pytest.raises(DataError, match=r"identity_CelebA\.txt: no entries"):
        read_identities(identities)
    meta = tmp_path / "IJBC" / "meta"
    meta.mkdir(parents=True)
    for name in ("ijbc_face_tid_mid.txt", "ijbc_template_pair_label.txt", "ijbc_name_5pts_score.txt"):
        (meta / name).write_text("")
    with pytest.raises(DataError, match=r"ijbc_\w+\.txt: no rows, expected lines of \d space-separated columns"):
        read_ijb_meta(tmp_path, "IJBC")


def test_profile_rejects_an_unknown_architecture_before_any_timing(monkeypatch, capsys):
    import facekd.deploy.profile as profile

    timed = []
    monkeypatch.setattr(profile, "profile_model", lambda *args, **kwargs: timed.append(args))
    assert main(["profile", "--arch", "r999", "--fast"]) == 2
    assert "r999" in capsys.readouterr().err and timed == []  # not even the r100 reference was timed


def test_a_jpeg_header_asking_for_gigapixels_is_refused_before_decoding():
    from facekd.data.codec import decode_image, encode_jpeg

    data = bytearray(encode_jpeg(np.zeros((12, 12, 3), dtype=np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = b"\xfd\xa0\xb1\x0c"  # height 64928, width 45324: 2.9 gigapixels (found by fuzzing)
    with pytest.raises(DataError, match="45324x64928 pixels"):
        decode_image(bytes(data), "train.rec record 8")


def test_fuzz_finds_stay_fixed(tmp_path):
    from facekd.data.folders import ListFileDataset
    from facekd.distill.config import DistillExperimentConfig

    config = tmp_path / "c.yaml"
    config.write_text("distill: {method: margin, options: {0.5: 1}}\n")  # a number as an option name
    with pytest.raises(ConfigError, match="margin has no option.s. 0.5"):
        load_config(config, schema=DistillExperimentConfig, check_paths=False)
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a/0.jpg 0\na/\x001.jpg 0\n")
    with pytest.raises(DataError, match=r"list.txt:2: the path holds a NUL byte"):
        ListFileDataset(listing)


def test_small_pair_sets_say_what_they_cannot_measure():
    from facekd.evaluate.verification import small_set_warnings

    assert small_set_warnings(6000, 3000, 10) == []  # LFW: 2,700 impostors in the training folds
    notes = small_set_warnings(40, 20, 10)
    assert any("4 per fold" in note for note in notes)
    assert any(note.startswith("VAL@FAR=0.001 not resolvable: 18 impostor pairs") for note in notes)
