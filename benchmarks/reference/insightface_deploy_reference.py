"""insightface's own deployment code, run in its own venv on facekd's cases; never imports facekd.

compare_insightface_deploy.py builds the side venv (the `insightface` 2.1 wheel from PyPI with
its dependencies pinned) and runs this file there as `python insightface_deploy_reference.py
CASE_DIR`. Nothing here re-implements insightface: each case calls the installed package.

- `norm_crop`: `insightface.utils.face_align.estimate_norm` and `norm_crop` on image.npy (BGR)
  for every landmark set in landmarks.npy (K x 5 x 2) -> reference_matrices, reference_crops.
- `arcface_onnx`: `insightface.model_zoo.get_model(model)`, the legacy shape router, then
  `get_feat` on crops.npy (N x S x S x 3, BGR) when it routed to ArcFaceONNX ->
  reference_embeddings, and reference_router.json (class, input_mean, input_std, input_size).
- `scrfd`: `model_zoo.get_model(model)` (routed to SCRFD), then `detect(image, input_size=(640,
  640))`, the classic `det_size` -> reference_det (N x 5: box, score), reference_kps (N x 5 x 2).

CASE_DIR/manifest.json lists the cases ({"name", "kind", "params"}); inputs and results are .npy
files in CASE_DIR/<name>/. CASE_DIR/environment.json records the versions that ran.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from insightface import model_zoo
from insightface.utils import face_align


def norm_crop_case(case_dir: Path, params: dict) -> None:
    image = np.load(case_dir / "image.npy")
    size = params["image_size"]
    landmarks = np.load(case_dir / "landmarks.npy")
    matrices = [face_align.estimate_norm(points, size) for points in landmarks]
    crops = [face_align.norm_crop(image, points, size) for points in landmarks]
    np.save(case_dir / "reference_matrices.npy", np.stack(matrices))
    np.save(case_dir / "reference_crops.npy", np.stack(crops))


def arcface_case(case_dir: Path, params: dict) -> None:
    model = model_zoo.get_model(params["model"])
    router = {"class": type(model).__name__ if model is not None else None}
    if model is not None and model.taskname == "recognition":
        router |= {"input_mean": model.input_mean, "input_std": model.input_std, "input_size": list(model.input_size)}
        crops = list(np.load(case_dir / "crops.npy"))
        np.save(case_dir / "reference_embeddings.npy", model.get_feat(crops))
    (case_dir / "reference_router.json").write_text(json.dumps(router))


def scrfd_case(case_dir: Path, params: dict) -> None:
    detector = model_zoo.get_model(params["model"])
    det, kps = detector.detect(np.load(case_dir / "image.npy"), input_size=(640, 640))
    np.save(case_dir / "reference_det.npy", det)
    np.save(case_dir / "reference_kps.npy", kps)
    (case_dir / "reference_router.json").write_text(json.dumps({"class": type(detector).__name__}))


CASES = {"norm_crop": norm_crop_case, "arcface_onnx": arcface_case, "scrfd": scrfd_case}


def main(case_root: str) -> None:
    root = Path(case_root)
    for case in json.loads((root / "manifest.json").read_text()):
        CASES[case["kind"]](root / case["name"], case["params"])
    packages = ["insightface", "numpy", "onnxruntime", "opencv-python", "scikit-image"]
    versions = {name: metadata.version(name) for name in packages} | {"python": sys.version.split()[0]}
    (root / "environment.json").write_text(json.dumps(versions))


if __name__ == "__main__":
    main(sys.argv[1])
