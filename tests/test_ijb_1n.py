"""IJB 1:N identification on a hand-written IJB folder whose rank and TPIR figures are worked out
by hand below, plus the CLI end to end on saved embeddings and the one-line protocol errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facekd.cli import main
from facekd.errors import DataError
from facekd.evaluate import ijb, ijb_1n

# Features are 2-d, so every score is the cosine of the angle between two directions (degrees).
# Gallery: subject s (1..8) has one template, 100 + s, at 45 * (s - 1) degrees; subjects 1-4 are
# in the first gallery file, 5-8 in the second.
GALLERY_ANGLES = {s: 45.0 * (s - 1) for s in range(1, 9)}
# Probes: (subject, angle); template 200 + position. Per probe: the mate's angular distance, the
# gallery entries closer than the mate (-> rank) and the closest non-mate distance.
PROBES = [
    (1, 5),  # mate 5,   none closer          -> rank 1, nearest non-mate 40 (45)
    (2, 50),  # mate 5,  none                 -> rank 1, 40 (90); the video template, see below
    (3, 95),  # mate 5,  none                 -> rank 1, 40
    (4, 140),  # mate 5, none                 -> rank 1, 40
    (5, 190),  # mate 10, none                -> rank 1, 35 (225)
    (6, 245),  # mate 20, none                -> rank 1, 25 (270)
    (7, 300),  # mate 30, 315 (15)            -> rank 2, 15
    (8, 340),  # mate 25, 0 (20)              -> rank 2, 20
    (1, 62),  # mate 62, 45 (17) 90 (28)      -> rank 3, 17
    (2, 160),  # mate 115, 180 135 225 90 270 -> rank 6, 20
    (3, 200),  # mate 110, 180 225 135 270    -> rank 5, 20
    (4, 7),  # mate 128, 0 45 315 90 270      -> rank 6, 7
]
# rank-1: probes 1-6 -> 6/12; rank-5: all but the two rank-6 probes -> 10/12; rank-10: 12/12.
# 12 probes: FPIR 0.01 -> k = ceil(0.12) = 1, the largest non-mate score, cos 7 (probe 12);
# FPIR 0.1 -> k = ceil(1.2) = 2, the second largest, cos 15 (probe 7).
# TPIR 0.01: mates closer than 7 degrees: probes 1-4 -> 4/12; TPIR 0.1: closer than 15: 1-5 -> 5/12.
WANT_RANKS = {1: 6 / 12, 5: 10 / 12, 10: 1.0}
WANT_TPIR = {0.01: 4 / 12, 0.1: 5 / 12}
VIDEO_TEMPLATE = 202
GALLERY_FILES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


def unit(degrees: float) -> np.ndarray:
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])


def video_images(angle: float) -> list[tuple[int, np.ndarray, float]]:
    """(media, raw feature, faceness) of a template aggregating to exactly `angle` only if its two
    video frames are averaged (media mean), the still is weighted by its faceness (D1) and the
    media are summed with their norms (N1): frames 2u(a-50) +- 3u(a+40), mean 2u(a-50); the still
    2(u(a) - 2u(a-50)) at faceness 0.5. mean + still = u(a); summing the frames instead gives
    2u(a-50) + u(a), 16 degrees for a = 50, and the probe would rank subject 1 (0 degrees) first."""
    mean = 2 * unit(angle - 50)
    spread = 3 * unit(angle + 40)
    still = unit(angle) - mean
    return [(9000, mean + spread, 1.0), (9001, 2 * still, 0.5), (9000, mean - spread, 1.0)]


def build_images() -> list[tuple[str, int, int, np.ndarray, float]]:
    """(name, template, media, raw feature, faceness) in file order."""
    images = []
    video = []

    def add(template, media, feature, faceness=1.0):
        images.append((f"{template}_{len(images)}.jpg", template, media, feature, faceness))

    for subject, angle in GALLERY_ANGLES.items():
        if subject == 1:  # two stills, +-20 degrees: they sum to 0 degrees
            add(101, 1010, 3 * unit(angle + 20))
            add(101, 1011, 3 * unit(angle - 20))
        else:
            add(100 + subject, 1000 + subject, 2 * unit(angle))
    for position, (_, angle) in enumerate(PROBES, start=1):
        if 200 + position == VIDEO_TEMPLATE:
            video = video_images(angle)
            media, feature, faceness = video[0]
            add(VIDEO_TEMPLATE, media, feature, faceness)
        else:
            add(200 + position, 2000 + position, 1.5 * unit(angle))
    for media, feature, faceness in video[1:]:  # the second frame far from the first, in file order
        add(VIDEO_TEMPLATE, media, feature, faceness)
    add(999, 9999, unit(33))  # a template of the 1:1 pairs only
    return images


def write_ijb(root, target="IJBC", images=None):
    """The meta folder of `target`, written as plain text, and the per-image embeddings."""
    images = build_images() if images is None else images
    meta = root / target / "meta"
    meta.mkdir(parents=True)
    prefix = target.lower()
    (meta / f"{prefix}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, _, _ in images))
    points = " ".join(["50.0"] * 10)
    (meta / f"{prefix}_name_5pts_score.txt").write_text("".join(f"{n} {points} {s}\n" for n, _, _, _, s in images))
    (meta / f"{prefix}_template_pair_label.txt").write_text("101 201 1\n102 201 0\n999 203 0\n103 203 1\n")
    first, second = GALLERY_FILES[target]
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    rows = {"gallery_1": [], "gallery_2": [], "probe": []}
    subject_of = {100 + s: s for s in GALLERY_ANGLES} | {200 + i: s for i, (s, _) in enumerate(PROBES, start=1)}
    for name, template, _, _, _ in images:
        if template in subject_of:
            side = "probe" if template > 200 else "gallery_1" if subject_of[template] <= 4 else "gallery_2"
            rows[side].append(f"{template},{subject_of[template]},img/{name}\n")
    (meta / f"{prefix}_1N_gallery_{first}.csv").write_text(header + "".join(rows["gallery_1"]))
    (meta / f"{prefix}_1N_gallery_{second}.csv").write_text(header + "".join(rows["gallery_2"]))
    (meta / f"{prefix}_1N_probe_mixed.csv").write_text(header + "".join(rows["probe"]))
    return meta, np.array([feature for _, _, _, feature, _ in images], dtype=np.float32)


def evaluate(root, target="IJBC"):
    _, features = write_ijb(root, target)
    meta = ijb.read_ijb_meta(root, target, with_pairs=False)
    return ijb_1n.evaluate_ijb_1n(features, meta, ijb_1n.read_ijb_1n_protocol(root, meta))


@pytest.mark.parametrize("target", ["IJBC", "IJBB"])
def test_rates_match_hand_computation(tmp_path, target):
    result = evaluate(tmp_path, target)
    assert result.rank_rates == pytest.approx(WANT_RANKS, abs=1e-12)
    assert result.tpir_at_fpir == pytest.approx(WANT_TPIR, abs=1e-12)
    assert result.fpir_thresholds == pytest.approx({0.01: np.cos(np.radians(7)), 0.1: np.cos(np.radians(15))})
    assert result.num_probes == 12 and result.num_gallery == 8 and result.num_distractors == 0


def test_protocol_reads_distinct_templates_in_gallery_file_order(tmp_path):
    write_ijb(tmp_path)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC", with_pairs=False)
    protocol = ijb_1n.read_ijb_1n_protocol(tmp_path, meta)
    np.testing.assert_array_equal(protocol.gallery.templates, np.arange(101, 109))
    np.testing.assert_array_equal(protocol.gallery.subjects, np.arange(1, 9))
    np.testing.assert_array_equal(protocol.probes.templates, np.arange(201, 213))
    np.testing.assert_array_equal(protocol.probes.subjects, [s for s, _ in PROBES])
    # template 101 spans lines 2 and 3 of G1 (one row per image); 105 is line 2 of G2
    assert protocol.gallery.origin(0).endswith("ijbc_1N_gallery_G1.csv: line 2")
    assert protocol.gallery.origin(1).endswith("ijbc_1N_gallery_G1.csv: line 4")
    assert protocol.gallery.origin(4).endswith("ijbc_1N_gallery_G2.csv: line 2")
    image_templates = np.unique(meta.templates)
    np.testing.assert_array_equal(image_templates[protocol.probe_rows], protocol.probes.templates)


def test_video_template_is_media_mean_then_sum(tmp_path):
    _, features = write_ijb(tmp_path)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC")
    feats, templates = ijb.meta_template_features(features, meta)
    row = int(np.flatnonzero(templates == VIDEO_TEMPLATE)[0])
    assert np.sum(meta.templates == VIDEO_TEMPLATE) == 3
    np.testing.assert_allclose(feats[row], unit(PROBES[VIDEO_TEMPLATE - 201][1]), atol=1e-6)
    np.testing.assert_allclose(feats[0], unit(0), atol=1e-6)  # template 101: two stills at +-20


def test_cli_both_protocols_from_saved_embeddings(tmp_path, capsys):
    _, features = write_ijb(tmp_path / "ijb")
    np.save(tmp_path / "emb.npy", features)
    out = tmp_path / "out"
    code = main(["eval", "--embeddings", str(tmp_path / "emb.npy"), "--ijb", str(tmp_path / "ijb"),
                 "--ijb-protocol", "both", "--out", str(out), "--name", "student"])
    assert code == 0
    saved = json.loads((out / "ijbc_1n.json").read_text())
    assert saved["model"] == "student" and saved["target"] == "IJBC"
    assert saved["rank_rates"] == pytest.approx({f"rank-{k}": v for k, v in WANT_RANKS.items()}, abs=1e-12)
    assert saved["tpir_at_fpir"] == pytest.approx({"0.01": WANT_TPIR[0.01], "0.1": WANT_TPIR[0.1]}, abs=1e-12)
    assert "| rank_rates rank-1 | 0.50000 |" in (out / "ijbc_1n.md").read_text()
    assert (out / "ijbc_1n_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "ijbc.json").read_text())["num_pairs"] == 4  # the 1:1 report as well
    assert np.load(out / "ijbc.npy").shape == (4,)
    printed = capsys.readouterr().out
    # One unit everywhere: fractions with 5 decimals, on stdout as in the .md and the JSON.
    assert "[IJBC 1:N] rank-1: 0.50000" in printed and "TPIR@FPIR=0.1: 0.41667" in printed


def test_cli_1n_alone_needs_no_pair_file(tmp_path):
    meta, features = write_ijb(tmp_path / "ijb", "IJBB")
    (meta / "ijbb_template_pair_label.txt").unlink()
    np.save(tmp_path / "emb.npy", features)
    out = tmp_path / "out"
    code = main(["eval", "--embeddings", str(tmp_path / "emb.npy"), "--ijb", str(tmp_path / "ijb"),
                 "--ijb-target", "IJBB", "--ijb-protocol", "1n", "--out", str(out)])
    assert code == 0
    assert json.loads((out / "ijbb_1n.json").read_text())["rank_rates"]["rank-5"] == pytest.approx(10 / 12)
    assert not (out / "ijbb.json").exists()


def test_cli_protocol_without_ijb_rejected(tmp_path, capsys):
    np.save(tmp_path / "emb.npy", np.ones((2, 2)))
    code = main(["eval", "--embeddings", str(tmp_path / "emb.npy"), "--bin", str(tmp_path / "x.bin"),
                 "--ijb-protocol", "1n", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--ijb-protocol 1n: found without --ijb" in err and err.count("\n") == 1


def edit_line(path, line, text):
    """Replace 1-based `line` of `path` (None appends `text` as a new last line)."""
    lines = path.read_text().splitlines()
    if line is None:
        lines.append(text)
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "file, line, text, message",
    [
        ("ijbc_1N_probe_mixed.csv", None, "777,1,img/x.jpg",
         r"ijbc_1N_probe_mixed.csv: line 16: template 777 has no images in ijbc_face_tid_mid.txt"),
        ("ijbc_1N_gallery_G2.csv", None, "201,3,img/x.jpg",  # a probe template enrolled for subject 3 too
         (r"ijbc_1N_gallery_G2.csv: line 6: subject 3 has a second gallery template 201 "
          r"\(template 103 at .*ijbc_1N_gallery_G1.csv: line 5\)")),
        ("ijbc_1N_gallery_G1.csv", 5, "103,9,img/x.jpg",  # subject 3 has no gallery template any more
         (r"ijbc_1N_probe_mixed.csv: line 4: probe template 203 has subject 3, which has no template in "
          r"ijbc_1N_gallery_G1.csv or ijbc_1N_gallery_G2.csv")),
        ("ijbc_1N_gallery_G1.csv", 3, "101,2,img/x.jpg",
         (r"ijbc_1N_gallery_G1.csv: line 3 gives template 101 subject 2, but .*ijbc_1N_gallery_G1.csv: line 2 "
          r"gave it subject 1")),
        ("ijbc_1N_probe_mixed.csv", 3, "202,two,img/x.jpg",
         r"ijbc_1N_probe_mixed.csv: line 3 subject_id: found 'two', expected an integer"),
        ("ijbc_1N_probe_mixed.csv", 7, "206", r"ijbc_1N_probe_mixed.csv: line 7 has 1 field, expected at least 2"),
        ("ijbc_1N_gallery_G2.csv", 1, "105,5,img/x.jpg",
         r"ijbc_1N_gallery_G2.csv: line 1 is a data row \(105,5\), expected a header row"),
    ],
)
def test_protocol_errors_are_one_line_naming_file_and_line(tmp_path, file, line, text, message):
    meta_dir, _ = write_ijb(tmp_path)
    edit_line(meta_dir / file, line, text)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC", with_pairs=False)
    with pytest.raises(DataError, match=message) as info:
        ijb_1n.read_ijb_1n_protocol(tmp_path, meta)
    assert "\n" not in str(info.value)


def test_missing_protocol_file_is_reported_by_the_cli(tmp_path, capsys):
    meta_dir, features = write_ijb(tmp_path / "ijb")
    (meta_dir / "ijbc_1N_gallery_G2.csv").unlink()
    np.save(tmp_path / "emb.npy", features)
    code = main(["eval", "--embeddings", str(tmp_path / "emb.npy"), "--ijb", str(tmp_path / "ijb"),
                 "--ijb-protocol", "1n", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "ijbc_1N_gallery_G2.csv: file not found" in err
