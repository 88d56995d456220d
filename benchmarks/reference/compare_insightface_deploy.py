"""facekd's alignment, exports and SCRFD detector against insightface's own deployment code.

Run: python benchmarks/reference/compare_insightface_deploy.py
It builds (once) a side venv at benchmarks/reference/.venv-insightface (git-ignored) with the
`insightface` 2.1 wheel from PyPI and its dependencies pinned, writes the cases below, runs
`insightface_deploy_reference.py` there on them (a subprocess; arrays go both ways as .npy
files), and prints the largest difference of every compared quantity. Exit status 1 when one
passes its tolerance.

- norm_crop: facekd's `align_face` and `similarity_matrix` against `face_align.norm_crop` and
  `estimate_norm`, on the astronaut photo with YuNet's landmarks and 24 perturbed landmark sets,
  at 112, 128 and 224 px. Matrices within 1e-9; crops equal pixel for pixel.
- arcface_onnx: models written by facekd's exporter (a 112 px student; a 56 px student exported at
  112 px with the resize in the graph; the same with raw-pixel input) loaded by
  `model_zoo.get_model`: it must route them to ArcFaceONNX and pick the pixel convention facekd
  wrote; its `get_feat` on aligned crops must equal facekd's evaluation embeddings of the same
  crops (PyTorch, and `OnnxEmbedder` on the same file) to cosine >= 1 - 1e-6, relative error
  <= 1e-4. A 56 px export without the in-graph resize is shown not to be routed (informative).
- scrfd: facekd's `ScrfdDetector` against insightface's `SCRFD.detect(img, input_size=(640, 640))`
  on an SCRFD-layout ONNX with fixed random weights (9 outputs: scores, box distances and
  landmark offsets at strides 8, 16, 32, 2 anchors) over a square, a wide and a tall photo: the
  same detections after NMS, boxes and landmarks within 1e-3 px, scores within 1e-6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data as skdata
from torch import nn

from facekd.data.align import align_face, similarity_matrix, template_for
from facekd.data.detect import SCRFD_ANCHORS, SCRFD_STRIDES, ScrfdDetector, YuNetDetector
from facekd.deploy.onnx import RawPixelInput, ResizedInput, export_onnx
from facekd.deploy.onnx_teacher import OnnxEmbedder
from facekd.evaluate.embed import embed_views
from facekd.models import build_backbone
from side_venv import side_python

HERE = Path(__file__).resolve().parent
SIDE_VENV = HERE / ".venv-insightface"
PINS = ["insightface==2.1", "numpy==2.4.6", "onnxruntime==1.32.0", "opencv-python==5.1.0.95", "scikit-image==0.26.0"]
TOLERANCE = {"matrix": 1e-9, "crop_pixels": 0.0, "one_minus_cosine": 1e-6, "relative_error": 1e-4,
             "box_px": 1e-3, "landmark_px": 1e-3, "score": 1e-6, "count": 0.0}


# ---- cases ----


def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])


def landmark_sets(rng: np.random.Generator, landmarks: np.ndarray, count: int) -> np.ndarray:
    """YuNet's landmarks, then copies under random similarity transforms with per-point noise."""
    centre = landmarks.mean(axis=0)
    sets = [landmarks]
    for _ in range(count):
        angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.6, 1.4)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        moved = (landmarks - centre) @ rotation.T + centre + rng.uniform(-40, 40, 2)
        sets.append(moved + rng.normal(scale=3.0, size=moved.shape))
    return np.stack(sets).astype(np.float32)


class ScrfdLayout(nn.Module):
    """An SCRFD-shaped network with fixed random weights: per stride, a 1x1 convolution of the
    average-pooled image gives 2 anchors x (1 score, 4 distances, 10 landmark offsets)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.heads = nn.ModuleList(nn.Conv2d(3, SCRFD_ANCHORS * 15, 1) for _ in SCRFD_STRIDES)
        for head in self.heads:
            nn.init.normal_(head.weight, std=2.0, generator=generator)
            nn.init.normal_(head.bias, mean=-2.0, std=0.5, generator=generator)

    def forward(self, x: torch.Tensor):
        scores, boxes, points = [], [], []
        for stride, head in zip(SCRFD_STRIDES, self.heads):
            rows = head(nn.functional.avg_pool2d(x, stride)).permute(0, 2, 3, 1).reshape(-1, 15)
            scores.append(torch.sigmoid(rows[:, :1]))
            boxes.append(torch.exp(0.5 * rows[:, 1:5]) + 1.0)
            points.append(rows[:, 5:])
        return (*scores, *boxes, *points)


def export_scrfd(path: Path) -> None:
    program = torch.onnx.export(ScrfdLayout().eval(), (torch.zeros(1, 3, 640, 640),), dynamo=True, opset_version=18,
                                input_names=["input.1"], external_data=False, verbose=False)
    path.write_bytes(program.model_proto.SerializeToString())


def recognition_models(root: Path) -> list[tuple[str, nn.Module, int, Path]]:
    """(name, facekd model as evaluated, its network input size, exported ONNX file)."""
    torch.manual_seed(0)
    full = build_backbone("r18", width=0.125, num_features=128, fcn=True, input_size=112).eval()
    low = build_backbone("r18", width=0.125, num_features=128, fcn=True, input_size=56).eval()
    for model in (full, low):  # non-trivial BN statistics, so normalisation errors show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    models = [("r18_112", full, 112, full, 112), ("r18_56_at_112", low, 56, ResizedInput(low, 56).eval(), 112),
              ("r18_56_at_112_raw", low, 56, RawPixelInput(ResizedInput(low, 56)).eval(), 112),
              ("r18_56_unrouted", low, 56, low, 56)]
    out = []
    for name, model, size, graph, graph_size in models:
        path = root / f"{name}.onnx"
        export_onnx(graph, path, graph_size)
        out.append((name, model, size, path))
    return out


def write_case(root: Path, manifest: list, name: str, kind: str, params: dict, **arrays: np.ndarray) -> Path:
    case = root / name
    case.mkdir(parents=True)
    for key, value in arrays.items():
        np.save(case / f"{key}.npy", value)
    manifest.append({"name": name, "kind": kind, "params": params})
    return case


# ---- comparisons ----


def compare_norm_crop(case: Path, image: np.ndarray, landmarks: np.ndarray, size: int) -> dict:
    matrices = np.stack([similarity_matrix(points, template_for(size)) for points in landmarks])
    crops = np.stack([align_face(image, points, size) for points in landmarks])
    reference_crops = np.load(case / "reference_crops.npy").astype(np.int64)
    return {"matrix": float(np.abs(matrices - np.load(case / "reference_matrices.npy")).max()),
            "crop_pixels": float(np.abs(crops.astype(np.int64) - reference_crops).max())}


def embedding_differences(ours: np.ndarray, reference: np.ndarray) -> dict:
    cosine = np.sum(ours * reference, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    relative = np.linalg.norm(ours - reference, axis=1) / np.linalg.norm(ours, axis=1)
    return {"one_minus_cosine": float(1.0 - cosine.min()), "relative_error": float(relative.max())}


def compare_arcface(case: Path, model: nn.Module, size: int, path: Path, crops_rgb: list[np.ndarray]) -> dict:
    router = json.loads((case / "reference_router.json").read_text())
    if router["class"] != "ArcFaceONNX":
        return {"routed_to": router["class"], "routing_as_expected": size < 112 and path.stem.endswith("unrouted")}
    reference = np.load(case / "reference_embeddings.npy")
    torch_embeddings, _ = embed_views(model, crops_rgb, input_size=size, flip=False, progress=False)
    onnx_embeddings, _ = embed_views(OnnxEmbedder(path), crops_rgb, flip=False, progress=False)
    written = OnnxEmbedder(path).convention
    picked = (router["input_mean"], router["input_std"]) == (written.pixel_mean, written.pixel_std)
    out = {"routed_to": "ArcFaceONNX", "routing_as_expected": not path.stem.endswith("unrouted"),
           "convention": f"{router['input_mean']:g}/{router['input_std']:g}", "convention_agrees": picked}
    for label, ours in (("torch", torch_embeddings), ("onnx", onnx_embeddings)):
        out |= {f"{key}[{label}]": value for key, value in embedding_differences(ours, reference).items()}
    return out


def compare_scrfd(case: Path, model: Path, image: np.ndarray) -> dict:
    faces = ScrfdDetector(model).detect(image)
    det, kps = np.load(case / "reference_det.npy"), np.load(case / "reference_kps.npy")
    out = {"faces": len(faces), "count": float(abs(len(faces) - len(det)))}
    if len(faces) != len(det) or not faces:
        return out
    boxes = np.stack([f.box for f in faces])
    return out | {"box_px": float(np.abs(boxes - det[:, :4]).max()),
                  "landmark_px": float(np.abs(np.stack([f.landmarks for f in faces]) - kps).max()),
                  "score": float(np.abs(np.array([f.score for f in faces]) - det[:, 4]).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    python = side_python(SIDE_VENV, PINS)
    rng = np.random.default_rng(args.seed)
    image = astronaut_bgr()
    faces = YuNetDetector().detect(image)
    if len(faces) != 1:
        raise SystemExit(f"astronaut: YuNet found {len(faces)} faces, expected 1")
    landmarks = landmark_sets(rng, faces[0].landmarks, 24)
    crops_bgr = np.stack([align_face(image, points, 112) for points in landmarks])
    crops_rgb = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops_bgr]
    photos = {"square_512": image, "wide_333x500": cv2.resize(image[60:393], (500, 333)),
              "tall_500x300": cv2.resize(image[:, 100:400], (300, 500))}
    failures, checks = 0, []
    with tempfile.TemporaryDirectory(prefix="facekd-deploy-reference-") as tmp:
        root = Path(tmp)
        manifest: list[dict] = []
        for size in (112, 128, 224):
            case = write_case(root, manifest, f"norm_crop_{size}", "norm_crop", {"image_size": size},
                              image=image, landmarks=landmarks)
            checks.append((case.name, lambda case=case, size=size: compare_norm_crop(case, image, landmarks, size)))
        for name, model, size, path in recognition_models(root):
            case = write_case(root, manifest, f"arcface_{name}", "arcface_onnx", {"model": str(path)}, crops=crops_bgr)
            checks.append((case.name, lambda case=case, m=model, s=size, p=path: compare_arcface(case, m, s, p, crops_rgb)))
        scrfd = root / "scrfd_layout.onnx"
        export_scrfd(scrfd)
        for name, photo in photos.items():
            case = write_case(root, manifest, f"scrfd_{name}", "scrfd", {"model": str(scrfd)}, image=photo)
            checks.append((case.name, lambda case=case, photo=photo: compare_scrfd(case, scrfd, photo)))
        (root / "manifest.json").write_text(json.dumps(manifest))
        subprocess.run([python, HERE / "insightface_deploy_reference.py", root], check=True)
        environment = json.loads((root / "environment.json").read_text())
        print("reference environment:", ", ".join(f"{k} {v}" for k, v in environment.items()))
        for name, check in checks:
            diffs = check()
            flags = [key for key, value in diffs.items() if isinstance(value, float) and
                     value > TOLERANCE[key.split("[")[0]]]
            flags += [key for key in ("routing_as_expected", "convention_agrees") if diffs.get(key) is False]
            failures += len(flags)
            line = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in diffs.items())
            print(f"{name:<28s} {line}" + (f"  <-- {', '.join(flags)}" if flags else ""))
    print("RESULT:", "all within tolerance" if failures == 0 else f"{failures} differences above tolerance")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
