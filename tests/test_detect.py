import numpy as np
import pytest
from skimage import data

from facekd.data.align import ARCFACE_DST, align_face, similarity_matrix
from facekd.data.detect import (SCRFD_ANCHORS, SCRFD_STRIDES, YuNetDetector, decode_scrfd, greedy_nms, letterbox,
                                pick_face)


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


def test_greedy_nms_counts_pixels_inclusively_and_keeps_equal_overlap():
    # [0,0,9,9] and [5,0,14,9]: areas (9+1)(9+1) = 100, intersection (9-5+1)(9-0+1) = 50,
    # overlap 50 / (100 + 100 - 50) = 1/3 (without the +1: 36 / 126 = 0.286)
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [40, 40, 49, 49]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert greedy_nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert greedy_nms(boxes, scores, 0.34).tolist() == [0, 1, 2]
    # [0,0,9,9] and [0,0,9,4]: intersection 50, union 100: overlap exactly 0.5 is kept
    assert greedy_nms(np.array([[0, 0, 9, 9], [0, 0, 9, 4.0]]), np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    # descending score, ties in input order
    assert greedy_nms(boxes[[2, 1]], np.array([0.5, 0.5]), 0.3).tolist() == [0, 1]


def test_letterbox_truncates_the_shorter_side_and_scales_by_height():
    canvas, scale = letterbox(np.full((333, 500, 3), 200, np.uint8), 640)
    # longer side 500 -> 640; shorter 640 * 333 / 500 = 426.24 -> 426; scale 426 / 333, not 640 / 500
    assert scale == 426 / 333
    assert canvas.shape == (640, 640, 3) and canvas[425, 639, 0] == 200 and canvas[426, 0, 0] == 0
    canvas, scale = letterbox(np.full((500, 300, 3), 200, np.uint8), 640)
    assert scale == 640 / 500 and canvas[639, 383, 0] == 200 and canvas[0, 384, 0] == 0  # int(640 / (5/3)) = 384


def test_pick_face_prefers_the_larger_face():
    from facekd.data.detect import Face

    small = Face(np.array([0, 0, 10, 10.0]), np.zeros((5, 2)), 0.9)
    large = Face(np.array([40, 40, 80, 80.0]), np.zeros((5, 2)), 0.8)
    assert pick_face([small, large], (100, 100, 3)) is large
    assert pick_face([], (100, 100, 3)) is None


def astronaut_folder(root, suffix: str):
    """root/astronaut/ holding the photo and its mirror image, as `suffix` files; returns the folder."""
    import cv2

    person = root / "astronaut"
    person.mkdir(parents=True)
    bgr = data.astronaut()[:, :, ::-1]
    cv2.imwrite(str(person / f"a{suffix}"), bgr)
    cv2.imwrite(str(person / f"flipped{suffix}"), bgr[:, ::-1])
    return person


def test_align_command_writes_crops_and_lists_the_photo_without_a_face(tmp_path, capsys):
    import cv2

    from facekd.cli import main

    person = astronaut_folder(tmp_path / "src", ".jpg")
    cv2.imwrite(str(person / "blank.jpg"), data.astronaut()[:, :, ::-1] * 0)
    assert main(["align", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "astronaut").iterdir()) == ["a.jpg", "flipped.jpg"]
    assert cv2.imread(str(tmp_path / "out" / "astronaut" / "a.jpg")).shape == (112, 112, 3)
    assert "skipped (no face):" in printed and "blank.jpg" in printed
    assert "skipped 1 without a face" in printed


def test_pack_rec_detect_writes_a_rec_from_the_astronaut_and_its_mirror(tmp_path):
    from facekd.cli import main
    from facekd.data.face_rec import RecordIODataset

    astronaut_folder(tmp_path / "photos", ".png")
    assert main(["pack", "rec", str(tmp_path / "photos"), "--detect", "--out", str(tmp_path / "rec")]) == 0
    dataset = RecordIODataset(tmp_path / "rec" / "train.rec")
    assert len(dataset) == 2
    image, label = dataset[0]
    assert np.asarray(image).shape[:2] == (112, 112) and label == 0


def constant_scrfd(path, rows: dict[int, tuple[float, list[float], list[float]]]) -> None:
    """An SCRFD-layout ONNX (640 px input, 9 outputs) whose outputs are constants: zero scores but
    at the stride-16 rows given, with their box distances and landmark offsets (in strides)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, outputs = [], []
    arrays = {}
    for stride in SCRFD_STRIDES:
        cells = (640 // stride) ** 2 * SCRFD_ANCHORS
        arrays[f"score{stride}"] = np.zeros((cells, 1), np.float32)
        arrays[f"bbox{stride}"] = np.ones((cells, 4), np.float32)
        arrays[f"kps{stride}"] = np.zeros((cells, 10), np.float32)
    for row, (score, distances, offsets) in rows.items():
        arrays["score16"][row], arrays["bbox16"][row], arrays["kps16"][row] = score, distances, offsets
    for kind in ("score", "bbox", "kps"):
        for stride in SCRFD_STRIDES:
            name = f"{kind}{stride}"
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arrays[name])))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arrays[name].shape)))
    graph = helper.make_graph(nodes, "scrfd_constant", [helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, [1, 3, 640, 640])], outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_scrfd_detector_maps_a_hand_placed_face_back_through_the_letterbox(tmp_path):
    from facekd.data.detect import ScrfdDetector

    # stride 16, cell (x=10, y=5), anchor 0: row (5*40 + 10)*2 = 420, centre (160, 80) at 640 px
    offsets = [-1, -0.5, 1, -0.5, 0, 0.5, -0.75, 1.25, 0.75, 1.25]
    constant_scrfd(tmp_path / "det.onnx", {420: (0.9, [2, 3, 4, 5], offsets)})
    faces = ScrfdDetector(tmp_path / "det.onnx").detect(np.zeros((333, 500, 3), np.uint8))
    assert len(faces) == 1
    scale = 426 / 333  # insightface's: 500 -> 640, 333 -> int(426.24) = 426
    np.testing.assert_allclose(faces[0].box, np.array([160 - 32, 80 - 48, 160 + 64, 80 + 80]) / scale, rtol=1e-6)
    expected = (np.tile([160.0, 80.0], 5) + 16 * np.array(offsets)).reshape(5, 2) / scale
    np.testing.assert_allclose(faces[0].landmarks, expected, rtol=1e-6)
    assert faces[0].landmarks.dtype == np.float32 and faces[0].score == pytest.approx(0.9)


def test_align_command_takes_an_scrfd_detector(tmp_path, capsys):
    import cv2

    from facekd.cli import main
    from facekd.data.align import ARCFACE_DST, similarity_matrix
    from facekd.data.codec import encode_jpeg

    # A face placed so its 5 landmarks are the ArcFace template scaled by 2 and moved to (200, 100):
    # stride 16, cell (x=20, y=10), anchor 1: row (10*40 + 20)*2 + 1 = 841, centre (320, 160) at 640 px
    # on a 500 x 500 photo (scale 640 / 500)
    scale = 640 / 500
    landmarks = ARCFACE_DST * 2 + [200, 100]
    offsets = ((landmarks * scale - [320, 160]) / 16).reshape(-1).tolist()
    constant_scrfd(tmp_path / "det.onnx", {841: (0.8, [6, 6, 6, 6], offsets)})
    person = tmp_path / "src" / "someone"
    person.mkdir(parents=True)
    photo = np.ascontiguousarray(data.astronaut()[:500, :500, ::-1])
    cv2.imwrite(str(person / "a.png"), photo)
    assert main(["align", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--detector",
                 str(tmp_path / "det.onnx")]) == 0
    written = (tmp_path / "out" / "someone" / "a.jpg").read_bytes()
    rgb = np.ascontiguousarray(photo[:, :, ::-1])

    def crop_bytes(points):
        matrix = similarity_matrix(points.astype(np.float32))
        return encode_jpeg(cv2.warpAffine(rgb, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0.0))

    # the detected landmarks are the placed ones, so the crop is the JPEG of the warp they define
    assert written == crop_bytes(landmarks)
    assert written != crop_bytes(landmarks + [1, 0])
