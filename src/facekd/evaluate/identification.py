"""1:N identification as insightface's `_evaluation_/ijb/ijb_1n.py`, with a distractor gallery.

Every probe has exactly one mate in the gallery (one entry per subject). Distractors are extra
gallery entries that are nobody's mate (MegaFace style). Scores are cosine similarities: every
feature row is L2-normalised first (a no-op up to rounding for template features, which
`subject_templates` and the IJB aggregation already normalise).

- Rank-k rate: fraction of probes whose mate is among the k highest scores. insightface ranks
  with an unstable `argsort`; we count the entries scoring above the mate, plus the equal-scoring
  entries that come before it in gallery order (distractors last), i.e. a stable sort.
- TPIR at FPIR f: k = ceil(num_probes * f); the threshold is the k-th largest non-mate score
  over all probes (insightface's `heapq.nlargest`), and TPIR is the fraction of mate scores
  strictly above it. The full curve (every k up to num_probes) is kept for plotting.

Probes are processed in chunks, so the score matrix against a large distractor set is never
held whole; only the num_probes largest non-mate scores are carried between chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from facekd.errors import DataError
from facekd.evaluate.ijb import template_features

RANKS = (1, 5, 10)
FPIRS = (0.01, 0.1)
CHUNK_SCORES = 1 << 24  # score-matrix entries per probe chunk (128 MiB of float64)


@dataclass(frozen=True)
class IdentificationResult:
    rank_rates: dict[int, float]  # k -> rank-k identification rate
    tpir_at_fpir: dict[float, float]
    fpir_thresholds: dict[float, float]  # the score threshold used for each FPIR
    cmc: np.ndarray  # (max_rank,) identification rate at ranks 1..max_rank
    fpir: np.ndarray  # (num_probes,) k / num_probes for k = 1..num_probes
    tpir: np.ndarray  # (num_probes,) TPIR at the threshold of each fpir entry
    num_probes: int
    num_gallery: int
    num_distractors: int


def subject_templates(features: np.ndarray, subject_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One L2-normalised template per subject: the sum of its images' raw features.

    This is the IJB aggregation with every image its own media (N1, no detector score).
    """
    subject_ids = np.asarray(subject_ids)
    return template_features(np.asarray(features), subject_ids, np.arange(len(subject_ids)))


def mate_indices(probe_ids: np.ndarray, gallery_ids: np.ndarray) -> np.ndarray:
    """Gallery index of each probe's subject; each must appear exactly once (ijb_1n `gen_mask`)."""
    ids, first, counts = np.unique(gallery_ids, return_index=True, return_counts=True)
    if np.any(counts > 1):
        duplicate = ids[np.argmax(counts > 1)]
        raise DataError(
            f"gallery: subject {duplicate} has {counts.max()} entries, expected exactly one template per subject"
        )
    position = np.searchsorted(ids, probe_ids).clip(max=max(len(ids) - 1, 0))
    missing = np.flatnonzero((len(ids) == 0) | (ids[position] != probe_ids))
    if len(missing):
        raise DataError(
            f"probe {missing[0]}: subject {probe_ids[missing[0]]} is not in the gallery, expected every probe to have a mate"
        )
    return first[position]


def identify(
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    *,
    distractor_feats: np.ndarray | None = None,
    ranks: Sequence[int] = RANKS,
    fpirs: Sequence[float] = FPIRS,
) -> IdentificationResult:
    """Rank-k rates and TPIR@FPIR of probes against gallery (+ distractors), by cosine similarity."""
    probes = _unit_checked(probe_feats, "probe features")
    gallery = _unit_checked(gallery_feats, "gallery features")
    distractors = _unit_checked(
        np.zeros((0, gallery.shape[1])) if distractor_feats is None else distractor_feats, "distractor features"
    )
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    if len(probe_ids) != len(probes) or len(gallery_ids) != len(gallery):
        raise DataError(
            f"identification: {len(probes)} probe and {len(gallery)} gallery features for "
            f"{len(probe_ids)} and {len(gallery_ids)} ids, expected one id per feature"
        )
    if not probes.shape[1] == gallery.shape[1] == distractors.shape[1]:
        raise DataError(
            f"identification: feature sizes {probes.shape[1]}, {gallery.shape[1]}, {distractors.shape[1]} "
            "(probe, gallery, distractor), expected one size"
        )
    mates = mate_indices(probe_ids, gallery_ids)
    num_probes = len(probes)
    num_negatives = num_probes * (len(gallery) + len(distractors) - 1)
    if num_negatives < num_probes:
        raise DataError(
            f"identification: {num_negatives} non-mate scores, expected at least one per probe "
            "(add gallery subjects or distractors)"
        )

    mate_rank = np.zeros(num_probes, dtype=np.int64)
    mate_score = np.zeros(num_probes)
    top_negatives = np.zeros(0)
    chunk = max(1, CHUNK_SCORES // max(1, len(gallery) + len(distractors)))
    for start in range(0, num_probes, chunk):
        rows = slice(start, start + chunk)
        ranks_chunk, mate_chunk, negatives = _score_chunk(probes[rows], mates[rows], gallery, distractors)
        mate_rank[rows], mate_score[rows] = ranks_chunk, mate_chunk
        top_negatives = _largest(np.concatenate([top_negatives, negatives]), num_probes)

    max_rank = max(ranks)
    cmc = np.array([np.mean(mate_rank < k) for k in range(1, max_rank + 1)])
    negatives_desc = np.sort(top_negatives)[::-1]  # k-th largest non-mate score at [k-1]
    sorted_mates = np.sort(mate_score)
    tpir = (num_probes - np.searchsorted(sorted_mates, negatives_desc, side="right")) / num_probes
    fpir_curve = np.arange(1, num_probes + 1) / num_probes
    thresholds, tpir_at = {}, {}
    for fpir in fpirs:
        k = math.ceil(num_probes * fpir)
        if not 1 <= k <= num_probes:
            raise DataError(f"FPIR {fpir}: needs the {k}-th largest non-mate score, expected 1..{num_probes}")
        thresholds[float(fpir)] = float(negatives_desc[k - 1])
        tpir_at[float(fpir)] = float(np.sum(mate_score > negatives_desc[k - 1]) / num_probes)
    return IdentificationResult(
        rank_rates={int(k): float(cmc[k - 1]) for k in ranks},
        tpir_at_fpir=tpir_at,
        fpir_thresholds=thresholds,
        cmc=cmc,
        fpir=fpir_curve,
        tpir=tpir,
        num_probes=num_probes,
        num_gallery=len(gallery),
        num_distractors=len(distractors),
    )


def _unit_checked(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise DataError(f"{name}: found shape {features.shape}, expected (N, D)")
    norms = np.sqrt(np.sum(features**2, -1))
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if len(bad):
        raise DataError(f"{name}: row {bad[0]} has L2 norm {norms[bad[0]]:.4g}, expected a finite non-zero vector")
    return features / norms[:, None]


def _score_chunk(probes, mates, gallery, distractors):
    """Mate rank (0-based, stable ties), mate score and all non-mate scores of a probe chunk."""
    rows = np.arange(len(probes))
    gallery_scores = probes @ gallery.T
    distractor_scores = probes @ distractors.T
    mate_score = gallery_scores[rows, mates]
    above = np.sum(gallery_scores > mate_score[:, None], 1) + np.sum(distractor_scores > mate_score[:, None], 1)
    earlier_ties = np.sum((gallery_scores == mate_score[:, None]) & (np.arange(len(gallery)) < mates[:, None]), 1)
    is_mate = np.zeros(gallery_scores.shape, dtype=bool)
    is_mate[rows, mates] = True
    negatives = np.concatenate([gallery_scores[~is_mate], distractor_scores.ravel()])
    return above + earlier_ties, mate_score, negatives


def _largest(values: np.ndarray, count: int) -> np.ndarray:
    """The `count` largest values (any order), or all of them when there are fewer."""
    if len(values) <= count:
        return values
    return np.partition(values, len(values) - count)[len(values) - count :]
