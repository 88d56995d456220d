"""Time IJB-C 1:1 aggregation and scoring at full size with synthetic metadata and features.

Run: python benchmarks/bench_ijb.py
Size as IJB-C: 469,375 images, 23,124 templates (3,531 enrolment x 19,593 verification side),
15,658,489 template pairs (19,557 genuine), random 512-d float32 features. Baselines measured in
the same run: the raw matrix product of all enrolment against all verification templates, and
insightface's per-template loop and per-pair scoring loop on a slice, scaled to full size.
"""

from __future__ import annotations

import time

import numpy as np

from facekd.evaluate import ijb

IMAGES, TEMPLATES, ENROL, PAIRS, GENUINE, DIM = 469_375, 23_124, 3_531, 15_658_489, 19_557, 512


def synthetic(rng: np.random.Generator):
    templates = rng.integers(0, TEMPLATES, IMAGES) * 3 + 1  # sparse ids, as in IJB
    medias = templates * 8 + rng.integers(0, 6, IMAGES)  # a few media (stills or videos) per template
    features = rng.standard_normal((IMAGES, DIM), dtype=np.float32)
    faceness = rng.uniform(0.3, 1.0, IMAGES).astype(np.float32)
    pairs = np.stack([rng.integers(0, ENROL, PAIRS), rng.integers(ENROL, TEMPLATES, PAIRS)], 1) * 3 + 1
    labels = np.zeros(PAIRS, dtype=np.int64)
    labels[rng.choice(PAIRS, GENUINE, replace=False)] = 1
    return templates, medias, features, faceness, pairs, labels


def insightface_template_loop(features, templates, medias, count):
    """eval_ijbc.image2template_feature for the first `count` templates."""
    out = []
    for uqt in np.unique(templates)[:count]:
        (ind_t,) = np.where(templates == uqt)
        feats, face_medias = features[ind_t], medias[ind_t]
        media_feats = []
        for u, ct in zip(*np.unique(face_medias, return_counts=True)):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(feats[ind_m] if ct == 1 else np.mean(feats[ind_m], 0, keepdims=True))
        out.append(np.sum(np.array(media_feats), 0))
    return out


def timed(label, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    elapsed = time.perf_counter() - start
    print(f"  {label:<44s} {elapsed:8.2f} s")
    return value, elapsed


def main() -> None:
    rng = np.random.default_rng(0)
    templates, medias, features, faceness, pairs, labels = synthetic(rng)
    print(f"IJB-C size: {IMAGES} images, {len(np.unique(templates))} templates, {PAIRS} pairs, d={DIM}")

    print("facekd:")
    weighted, t_weight = timed("N1 D1 image features", ijb.image_features, features, faceness)
    (feats, ids), t_agg = timed("template aggregation", ijb.template_features, weighted, templates, medias)
    scores, t_score = timed("pair scores", ijb.pair_scores, feats, ids, pairs)
    _, t_tar = timed("ROC + TAR@FAR lookup", ijb.tar_at_far, labels, scores)
    total = t_weight + t_agg + t_score + t_tar
    print(f"  {'total':<44s} {total:8.2f} s")

    print("baselines (same run):")
    rows = np.searchsorted(ids, pairs)
    enrol, verify = np.unique(rows[:, 0]), np.unique(rows[:, 1])
    _, t_matmul = timed(
        f"raw product {len(enrol)}x{len(verify)} templates", lambda: feats[enrol] @ feats[verify].T
    )
    count = 200
    _, t_loop = timed(f"insightface template loop, {count} templates", insightface_template_loop,
                      weighted, templates, medias, count)
    loop_full = t_loop * len(ids) / count
    chunks = 10
    start = time.perf_counter()
    for c in range(chunks):
        s = slice(c * 100_000, (c + 1) * 100_000)
        np.sum(feats[rows[s, 0]] * feats[rows[s, 1]], -1)
    pair_loop_full = (time.perf_counter() - start) * PAIRS / (chunks * 100_000)
    print(f"  insightface pair scoring, {chunks} chunks of 100k, scaled   {pair_loop_full:8.2f} s (scaled)")

    print("ratios:")
    print(f"  facekd aggregation+scoring / raw matrix product      {(t_agg + t_score) / t_matmul:6.2f}")
    print(f"  insightface loop aggregation (scaled) / facekd        {loop_full / t_agg:6.1f}x  ({loop_full:.0f} s)")
    print(f"  insightface pair scoring (scaled) / facekd            {pair_loop_full / t_score:6.1f}x")
    print(f"  within 60 s budget: {'yes' if total <= 60 else 'NO'} ({total:.1f} s)")


if __name__ == "__main__":
    main()
