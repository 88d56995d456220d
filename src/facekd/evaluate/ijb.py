"""IJB-B / IJB-C 1:1 template verification as insightface's `eval_ijbc.py` (formats.md 3.3).

Layout: `<root>/<IJBC>/meta/ijbc_{face_tid_mid,template_pair_label,name_5pts_score}.txt` and the
images under `<root>/<IJBC>/loose_crop/`. Each image is aligned from its 5 landmarks, embedded with
its mirror (F1: raw(orig) + raw(flip)), kept un-normalised (N1), weighted by its faceness score
(D1); per template, the images of one media (video frames) are averaged, the media features summed
and the sum L2-normalised. A pair's score is the dot product of its two template features, and
TAR@FAR is read off sklearn's ROC exactly as insightface does (flipud, then argmin |fpr - target|).
The 1:N protocol (`ijb_1n.py`) reuses the same image and template features (`meta_template_features`).

insightface's switches keep their arcface_torch meaning: `use_norm_score=True` keeps the feature
norm as a quality weight (False L2-normalises each image feature first), `use_detector_score=True`
multiplies by the faceness score, `use_flip_test=True` adds the mirrored image's embedding.

Aggregation is vectorised: images are grouped by (template, media) and summed by a sparse 0/1
matrix product, which adds rows in file order like insightface's per-template loop, so the template
features are bit-identical to it. Pair scores are the same dot products computed as
matrix-product blocks when the pairs cover a dense part of the template grid (the IJB protocols do),
and in chunks of 100,000 as `np.sum(f1 * f2, -1)` otherwise; the two differ only in float rounding
order (~1e-16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from scipy import sparse
from sklearn.metrics import auc, roc_curve
from sklearn.preprocessing import normalize

from facekd.data.align import align_face
from facekd.errors import DataError

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_CHUNK = 100_000
# A dense Gram block costs ~1/200 of a gathered per-pair dot product (measured at d=512).
GRAM_DENSITY = 1 / 100
MAX_TABLE_ID = 1 << 26  # template ids below this are mapped through a lookup table
GRAM_BLOCK_ENTRIES = 1 << 27  # float64 entries per Gram block: 1 GiB (IJB-C fits in one)


@dataclass(frozen=True)
class IJBMeta:
    """The three meta files of one IJB release, in file order (one row per image or pair)."""

    target: str  # "IJBC" or "IJBB"
    image_dir: Path  # <root>/<target>/loose_crop
    image_names: np.ndarray  # (N,) str
    templates: np.ndarray  # (N,) int64
    medias: np.ndarray  # (N,) int64
    landmarks: np.ndarray  # (N, 5, 2) float32, x y in the loose crop
    faceness: np.ndarray  # (N,) float32 detector score
    pair_templates: np.ndarray  # (P, 2) int64
    pair_labels: np.ndarray  # (P,) int64, 1 genuine 0 impostor


@dataclass(frozen=True)
class IJBResult:
    """TAR at each target FAR, the ROC (flipped as insightface plots it) and the pair scores."""

    target: str
    tar_at_far: dict[float, float]  # FAR -> TAR in [0, 1]
    auc: float
    fpr: np.ndarray  # descending, as after np.flipud
    tpr: np.ndarray
    scores: np.ndarray  # (P,) float64 cosine per pair, in file order (insightface saves it as <target>.npy)
    num_pairs: int
    num_genuine: int
    num_templates: int


def meta_paths(root: str | os.PathLike, target: str) -> dict[str, Path]:
    """Where insightface looks for the meta files of `target` ("IJBC" or "IJBB") under `root`."""
    meta = Path(root) / target / "meta"
    prefix = target.lower()
    return {
        "face_tid_mid": meta / f"{prefix}_face_tid_mid.txt",
        "template_pair_label": meta / f"{prefix}_template_pair_label.txt",
        "name_5pts_score": meta / f"{prefix}_name_5pts_score.txt",
    }


def read_ijb_meta(root: str | os.PathLike, target: str = "IJBC", *, with_pairs: bool = True) -> IJBMeta:
    """Read and cross-check the meta files of an IJB release (see the module docstring).

    `with_pairs=False` skips the 1:1 pair file (1:N needs only the images), leaving no pairs.
    """
    if target not in ("IJBB", "IJBC"):
        raise DataError(f"IJB target: found {target!r}, expected IJBB or IJBC")
    paths = meta_paths(root, target)
    if not with_pairs:
        del paths["template_pair_label"]
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: file not found, expected the {target} meta file of the insightface IJB layout")

    names = _load_columns(paths["face_tid_mid"], 3, [0], str)[:, 0]
    ids = _load_columns(paths["face_tid_mid"], 3, [1, 2], np.int64)
    pairs = (
        _load_columns(paths["template_pair_label"], 3, [0, 1, 2], np.int64)
        if with_pairs
        else np.zeros((0, 3), dtype=np.int64)
    )
    lmk_names = _load_columns(paths["name_5pts_score"], 12, [0], str)[:, 0]
    points = _load_columns(paths["name_5pts_score"], 12, list(range(1, 12)), np.float32)

    if len(lmk_names) != len(names) or np.any(lmk_names != names):
        line = _first_difference(names, lmk_names)
        raise DataError(
            f"{paths['name_5pts_score']}: line {line + 1} names "
            f"{lmk_names[line] if line < len(lmk_names) else 'nothing'}, but {paths['face_tid_mid']} line "
            f"{line + 1} names {names[line] if line < len(names) else 'nothing'}; expected the same images in the same order"
        )
    bad_label = np.flatnonzero((pairs[:, 2] != 0) & (pairs[:, 2] != 1))
    if len(bad_label):
        raise DataError(
            f"{paths['template_pair_label']}: line {bad_label[0] + 1} has label {pairs[bad_label[0], 2]}, expected 0 or 1"
        )
    return IJBMeta(
        target=target,
        image_dir=Path(root) / target / "loose_crop",
        image_names=names,
        templates=ids[:, 0],
        medias=ids[:, 1],
        landmarks=points[:, :10].reshape(-1, 5, 2),
        faceness=points[:, 10],
        pair_templates=pairs[:, :2],
        pair_labels=pairs[:, 2],
    )


def _load_columns(path: Path, expected_columns: int, usecols: list[int], dtype) -> np.ndarray:
    """Columns of a space-separated, header-less text file, with one-line errors on bad rows."""
    with open(path, "rb") as handle:
        if not any(line.strip() for line in handle):
            raise DataError(f"{path}: no rows, expected lines of {expected_columns} space-separated columns")
    try:
        data = np.loadtxt(path, dtype=dtype, usecols=usecols, ndmin=2, comments=None)
    except ValueError as exc:
        raise DataError(f"{path}: {str(exc).splitlines()[0]}; expected {expected_columns} space-separated columns") from None
    with open(path, "rb") as handle:
        first = handle.readline().split()
    if len(first) != expected_columns:
        raise DataError(f"{path}: line 1 has {len(first)} columns, expected {expected_columns}")
    return data


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    common = min(len(a), len(b))
    differs = np.flatnonzero(a[:common] != b[:common])
    return int(differs[0]) if len(differs) else common


class AlignedIJBImages(Sequence):
    """The IJB loose crops, each read (BGR), aligned to 112x112 and returned as uint8 RGB on access."""

    def __init__(self, meta: IJBMeta, image_size: int = 112):
        self.meta = meta
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.meta.image_names)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        path = self.meta.image_dir / str(self.meta.image_names[index])
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{path}: missing or unreadable image, expected a loose crop listed in the meta files")
        aligned = align_face(image, self.meta.landmarks[index], self.image_size)
        return cv2.cvtColor(aligned, cv2.COLOR_BGR2RGB)


def image_features(
    flip_summed: np.ndarray,
    faceness: np.ndarray | None = None,
    *,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
) -> np.ndarray:
    """Per-image input to aggregation: optionally L2-normalised (N0), times faceness (D1)."""
    features = np.asarray(flip_summed)
    if not use_norm_score:
        features = features / np.sqrt(np.sum(features**2, -1, keepdims=True))
    if use_detector_score:
        if faceness is None or len(faceness) != len(features):
            raise DataError(
                f"faceness scores: found {None if faceness is None else len(faceness)}, "
                f"expected one per image ({len(features)}) when use_detector_score is on"
            )
        features = features * np.asarray(faceness)[:, np.newaxis]
    return features


def template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised template features (float64) and the sorted unique template ids.

    Media feature = mean of its images; template feature = sum of its media features.
    """
    if not len(features) == len(templates) == len(medias):
        raise DataError(
            f"image features: found {len(features)} rows for {len(templates)} template ids and "
            f"{len(medias)} media ids, expected one row per image"
        )
    unique_templates, template_index = np.unique(templates, return_inverse=True)
    _, media_index = np.unique(medias, return_inverse=True)
    key = template_index.astype(np.int64) * (int(media_index.max()) + 1) + media_index
    order = np.argsort(key, kind="stable")  # stable: a media's frames stay in file order
    sorted_key = key[order]
    media_start = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    media_count = np.diff(np.r_[media_start, len(key)])
    media_sum = _ordered_group_sums(features, order, media_start)
    # A single image divided by 1 is itself, as insightface's singleton case.
    media_feats = media_sum / media_count[:, None].astype(media_sum.dtype)
    media_template = template_index[order[media_start]]
    template_start = np.flatnonzero(np.r_[True, media_template[1:] != media_template[:-1]])
    summed = _ordered_group_sums(media_feats, np.arange(len(media_feats)), template_start)
    return normalize(summed.astype(np.float64)), unique_templates


def _ordered_group_sums(rows: np.ndarray, members: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum rows[members[starts[g]:starts[g+1]]] for each group g, adding left to right.

    A 0/1 CSR matrix product does this in C and accumulates each output row entry by entry in
    index order, so the float rounding equals insightface's `np.sum(..., axis=0)` over those rows.
    """
    ones = np.ones(len(members), dtype=rows.dtype)
    indptr = np.r_[starts, len(members)]
    selector = sparse.csr_matrix((ones, members, indptr), shape=(len(starts), len(rows)))
    return np.asarray(selector @ rows)


def pair_scores(
    template_feats: np.ndarray, unique_templates: np.ndarray, pair_templates: np.ndarray
) -> np.ndarray:
    """Cosine score of each (template_1, template_2) pair, in pair order."""
    rows = _template_rows(unique_templates, pair_templates)
    first, second = rows[:, 0], rows[:, 1]
    used_first, first_pos = _compact(first, len(unique_templates))
    used_second, second_pos = _compact(second, len(unique_templates))
    if len(used_first) * len(used_second) * GRAM_DENSITY <= len(rows):
        return _gram_scores(template_feats, used_first, first_pos, used_second, second_pos)
    scores = np.zeros(len(rows))
    for start in range(0, len(rows), PAIR_CHUNK):
        chunk = slice(start, start + PAIR_CHUNK)
        scores[chunk] = np.sum(template_feats[first[chunk]] * template_feats[second[chunk]], -1)
    return scores


def _template_rows(unique_templates: np.ndarray, pair_templates: np.ndarray) -> np.ndarray:
    """Row of each pair's templates in `unique_templates` (sorted), via an id -> row table as
    insightface's `template2id`; a binary search when ids are negative or too large for a table."""
    pair_templates = np.asarray(pair_templates)
    if unique_templates[0] >= 0 and unique_templates[-1] < MAX_TABLE_ID:
        table = np.full(int(unique_templates[-1]) + 1, -1, dtype=np.int64)
        table[unique_templates] = np.arange(len(unique_templates))
        inside = (pair_templates >= 0) & (pair_templates <= unique_templates[-1])
        rows = np.where(inside, table[np.where(inside, pair_templates, 0)], -1)
        missing = np.argwhere(rows < 0)
    else:
        rows = np.searchsorted(unique_templates, pair_templates).clip(max=len(unique_templates) - 1)
        missing = np.argwhere(unique_templates[rows] != pair_templates)
    if len(missing):
        pair, column = missing[0]
        raise DataError(
            f"template pairs: pair {pair + 1} names template {pair_templates[pair, column]}, "
            "which has no images; expected templates listed in face_tid_mid"
        )
    return rows


def _compact(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values among `rows` (all < size), sorted, and each row's position among them.

    A bincount over the template rows does this in linear time; np.unique would sort every pair.
    """
    used = np.flatnonzero(np.bincount(rows, minlength=size))
    position = np.zeros(size, dtype=np.int64)
    position[used] = np.arange(len(used))
    return used, position[rows]


def _gram_scores(feats, used_first, first_pos, used_second, second_pos) -> np.ndarray:
    """Dot products read off F[used_first] @ F[used_second].T, computed in row blocks."""
    right = np.ascontiguousarray(feats[used_second].T)
    block_rows = max(1, GRAM_BLOCK_ENTRIES // len(used_second))
    if block_rows >= len(used_first):
        return (feats[used_first] @ right)[first_pos, second_pos]
    num_blocks = -(-len(used_first) // block_rows)
    block = (first_pos // block_rows).astype(np.min_scalar_type(num_blocks))
    order = np.argsort(block, kind="stable")  # small integer keys: a linear-time radix sort
    bounds = np.searchsorted(block[order], np.arange(num_blocks + 1))
    scores = np.zeros(len(first_pos))
    for b in range(num_blocks):
        gram = feats[used_first[b * block_rows : (b + 1) * block_rows]] @ right
        pairs = order[bounds[b] : bounds[b + 1]]
        scores[pairs] = gram[first_pos[pairs] - b * block_rows, second_pos[pairs]]
    return scores


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FAR_TARGETS):
    """insightface's TAR lookup: (tar per far, auc, flipped fpr, flipped tpr)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    area = float(auc(fpr, tpr))
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)  # so the argmin's first hit is the largest TPR
    tar = {float(far): float(tpr[np.argmin(np.abs(fpr - far))]) for far in fars}
    return tar, area, fpr, tpr


def meta_template_features(
    flip_summed: np.ndarray,
    meta: IJBMeta,
    *,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Template features (and sorted ids) of every template in `meta` from per-image embeddings.

    The 1:1 and 1:N protocols share this step, so one embedding pass serves both.
    """
    flip_summed = np.asarray(flip_summed)
    if flip_summed.ndim != 2 or len(flip_summed) != len(meta.templates):
        raise DataError(
            f"IJB embeddings: found shape {flip_summed.shape}, expected ({len(meta.templates)}, D): "
            f"one row per image of {meta.target}"
        )
    features = image_features(
        flip_summed, meta.faceness, use_norm_score=use_norm_score, use_detector_score=use_detector_score
    )
    return template_features(features, meta.templates, meta.medias)


def evaluate_ijb(
    flip_summed: np.ndarray,
    meta: IJBMeta,
    *,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
) -> IJBResult:
    """IJB 1:1 from per-image embeddings (rows in `name_5pts_score` order)."""
    labels = meta.pair_labels
    if len(np.unique(labels)) != 2:
        raise DataError(
            f"{meta.target} template pairs: found labels {np.unique(labels).tolist()}, expected genuine (1) and impostor (0) pairs"
        )
    feats, unique_templates = meta_template_features(
        flip_summed, meta, use_norm_score=use_norm_score, use_detector_score=use_detector_score
    )
    scores = pair_scores(feats, unique_templates, meta.pair_templates)
    tar, area, fpr, tpr = tar_at_far(labels, scores)
    return IJBResult(
        target=meta.target,
        tar_at_far=tar,
        auc=area,
        fpr=fpr,
        tpr=tpr,
        scores=scores,
        num_pairs=len(labels),
        num_genuine=int(labels.sum()),
        num_templates=len(unique_templates),
    )

