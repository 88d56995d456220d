"""Face alignment onto the ArcFace 112x112 template, as insightface's `face_align.norm_crop`.

A similarity transform (Umeyama least squares, via scikit-image) maps the 5 landmarks
(left eye, right eye, nose, left and right mouth corners) onto the template; OpenCV warps
the image with bilinear interpolation and a black border (formats.md 3.3).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from facekd.errors import DataError

ARCFACE_DST = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template_for(image_size: int) -> np.ndarray:
    """The ArcFace template for a square crop, scaled as insightface's `estimate_norm`.

    Sizes that are multiples of 112 scale the 112 template; multiples of 128 scale it by
    size/128 and shift it right by 8*size/128 (the 128-px template is the 112 one padded).
    """
    if image_size % 112 == 0:
        ratio, shift_x = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise DataError(f"alignment size {image_size}, expected a multiple of 112 or 128")
    template = ARCFACE_DST * ratio
    template[:, 0] += shift_x
    return template


def similarity_matrix(landmarks: np.ndarray, template: np.ndarray = ARCFACE_DST) -> np.ndarray:
    """The 2x3 similarity transform taking `landmarks` (5x2, x y) onto `template`.

    Float landmarks keep their dtype, as in norm_crop: scikit-image estimates in the inputs'
    precision, so float32 landmarks (SCRFD's, YuNet's) give insightface's float32-exact matrix.
    """
    landmarks = np.asarray(landmarks)
    if not np.issubdtype(landmarks.dtype, np.floating):
        landmarks = landmarks.astype(np.float64)
    if landmarks.shape != template.shape:
        raise DataError(f"landmarks of shape {landmarks.shape}, expected {template.shape}")
    transform = SimilarityTransform.from_estimate(landmarks, template)
    if not transform:
        raise DataError(f"landmarks {landmarks.tolist()} are degenerate, no similarity transform fits them")
    return transform.params[:2]


def align_face(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Crop an aligned `image_size` square face from `image` (HxWxC) given its 5 landmarks."""
    matrix = similarity_matrix(landmarks, template_for(image_size))
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def landmarks_68_to_5(landmarks: np.ndarray) -> np.ndarray:
    """Reduce 68 iBUG landmarks to the 5 ArcFace points: eye centres, nose tip, mouth corners."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise DataError(f"landmarks of shape {points.shape}, expected (68, 2)")
    return np.stack(
        [
            points[[36, 39]].mean(axis=0),
            points[[42, 45]].mean(axis=0),
            points[30],
            points[48],
            points[54],
        ]
    )
