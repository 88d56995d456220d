"""Detect and align the faces of a photo folder (one sub-folder per person) onto the ArcFace
112x112 template, writing the same layout under --out. Photos without a face are listed by name
at the end, never dropped silently.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "detect and align the faces of a photo folder onto the ArcFace template"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="photo folder: one sub-folder per person")
    parser.add_argument("--out", required=True, help="folder for the aligned 112x112 crops (same layout)")
    parser.add_argument("--detector", default=None, help="SCRFD ONNX file (e.g. det_10g.onnx); default YuNet")
    parser.add_argument("--all-faces", action="store_true", help="keep every face, not only the largest, most central")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facekd.data.align import align_face
    from facekd.data.codec import decode_image, encode_jpeg
    from facekd.data.detect import faces_in, make_detector, pick_face
    from facekd.data.folders import IMAGE_SUFFIXES
    from facekd.errors import DataError
    from facekd.fileio import atomic_write_bytes

    src, out = Path(args.src), Path(args.out)
    photos = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise DataError(f"{src}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found, expected one sub-folder per person")
    detector = make_detector(args.detector)
    skipped, written = [], 0
    for photo in tqdm(photos, desc="align", unit="photo"):
        rgb = decode_image(photo.read_bytes(), str(photo))
        faces = faces_in(detector, rgb)
        chosen = faces if args.all_faces else [f for f in [pick_face(faces, rgb.shape)] if f is not None]
        if not chosen:
            skipped.append(photo)
            continue
        for index, face in enumerate(chosen):
            name = photo.stem if index == 0 else f"{photo.stem}_{index}"
            target = out / photo.parent.relative_to(src) / f"{name}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, encode_jpeg(align_face(rgb, face.landmarks)))
            written += 1
    for photo in skipped:
        print(f"skipped (no face): {photo}")
    print(f"aligned {written} faces from {len(photos) - len(skipped)} photos into {out}; skipped {len(skipped)} without a face")
    return 0
