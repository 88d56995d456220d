import numpy as np
import pytest
from skimage import data

from facekd.data.align import ARCFACE_DST, align_face, similarity_matrix
from facekd.data.detect import SCRFD_ANCHORS, SCRFD_STRIDES, YuNetDetector, decode_scrfd, pick_face


def astronaut_eye_residual():
    """Eye distance (px) from the template after norm_crop's 5-point least-squares fit, on YuNet's landmarks."""
    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    faces = YuNetDetector().detect(image)
    assert len(faces) == 1
    assert align_face(image, faces[0].landmarks).shape == (112, 112, 3)
    matrix = similarity_matrix(faces[0].landmarks)
    mapped = faces[0].landmarks @ matrix[:, :2].T + matrix[:, 2]
    return np.linalg.norm(mapped[:2] - ARCFACE_DST[:2], axis=1)


def test_astronaut_has_one_face_and_its_fit_residual_is_the_measured_one():
    # Measured 3.62 / 3.49 px: the astronaut's eyes are wider and mouth narrower than the
    # template, so a similarity fit to all 5 points cannot place the eyes closer.
    assert astronaut_eye_residual().max() < 4.0


@pytest.mark.xfail(strict=True, reason="5-point fit residual at the eyes is 3.6 px on the astronaut, not under 2 px")
def test_astronaut_eyes_within_2px_of_the_template():
    assert astronaut_eye_residual().max() < 2.0


def test_scrfd_decoder_recovers_a_hand_placed_face():
    size = 64
    outputs = [[], [], []]
    for stride in SCRFD_STRIDES:
        cells = (size // stride) ** 2 * SCRFD_ANCHORS
        outputs[0].append(np.zeros((cells, 1), np.float32))
        outputs[1].append(np.zeros((cells, 4), np.float32))
        outputs[2].append(np.zeros((cells, 10), np.float32))
    # stride 16, cell (x=2, y=1), anchor 1: centre (32, 16); row index (1*4+2)*2+1 = 13
    outputs[0][1][13] = 0.9
    outputs[1][1][13] = [1, 0.5, 2, 1.5]  # distances in strides: left, top, right, bottom
    outputs[2][1][13] = [-0.5, -0.25, 0.5, -0.25, 0, 0.25, -0.25, 0.5, 0.25, 0.5]
    faces = decode_scrfd(outputs[0] + outputs[1] + outputs[2], (size, size))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, [16, 8, 64, 40])
    np.testing.assert_allclose(faces[0].landmarks[:2], [[24, 12], [40, 12]])
    assert faces[0].score == pytest.approx(0.9)


def test_pick_face_prefers_the_larger_face():
    from facekd.data.detect import Face

    small = Face(np.array([0, 0, 10, 10.0]), np.zeros((5, 2)), 0.9)
    large = Face(np.array([40, 40, 80, 80.0]), np.zeros((5, 2)), 0.8)
    assert pick_face([small, large], (100, 100, 3)) is large
    assert pick_face([], (100, 100, 3)) is None


def test_align_command_writes_crops_and_lists_the_photo_without_a_face(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    person = tmp_path / "src" / "astronaut"
    person.mkdir(parents=True)
    bgr = data.astronaut()[:, :, ::-1]
    cv2.imwrite(str(person / "a.jpg"), bgr)
    cv2.imwrite(str(person / "flipped.jpg"), bgr[:, ::-1])
    cv2.imwrite(str(person / "blank.jpg"), bgr * 0)
    src_dir = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-m", "facekd", "align", str(tmp_path / "src"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src_dir}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "astronaut").iterdir()) == ["a.jpg", "flipped.jpg"]
    assert cv2.imread(str(tmp_path / "out" / "astronaut" / "a.jpg")).shape == (112, 112, 3)
    assert "skipped (no face):" in result.stdout and "blank.jpg" in result.stdout
    assert "skipped 1 without a face" in result.stdout


def test_pack_rec_detect_writes_a_rec_from_the_astronaut_and_its_mirror(tmp_path):
    import cv2

    from facekd.cli import main
    from facekd.data.face_rec import RecordIODataset

    person = tmp_path / "photos" / "astronaut"
    person.mkdir(parents=True)
    bgr = data.astronaut()[:, :, ::-1]
    cv2.imwrite(str(person / "a.png"), bgr)
    cv2.imwrite(str(person / "flipped.png"), bgr[:, ::-1])
    assert main(["pack", "rec", str(tmp_path / "photos"), "--detect", "--out", str(tmp_path / "rec")]) == 0
    dataset = RecordIODataset(tmp_path / "rec" / "train.rec")
    assert len(dataset) == 2
    image, label = dataset[0]
    assert np.asarray(image).shape[:2] == (112, 112) and label == 0
