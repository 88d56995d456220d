"""Time IJB-C 1:N identification at full size with synthetic protocol files and features.

Run: python benchmarks/bench_ijb_1n.py
Size as IJB-C: 469,375 images over 23,124 templates, 3,531 gallery templates (one per subject,
split over G1 and G2) and 19,593 probe_mixed templates, 512-d float32 features drawn around a
centre per subject. The three CSVs (one row per image, as the NIST files) are written to a
temporary folder and read back. Baseline measured in the same run: insightface ijb_1n's
`evaluation` (full argsort, per-probe loops, heapq.nlargest) on the same template features.
"""

from __future__ import annotations

import heapq
import math
import tempfile
from pathlib import Path

import numpy as np

from facekd.evaluate import ijb, ijb_1n
from facekd.evaluate.identification import identify

from bench_ijb import timed  # benchmarks/ is the script's folder, so its siblings import

IMAGES, GALLERY, PROBES, DIM = 469_375, 3_531, 19_593, 512


def synthetic(rng: np.random.Generator, folder: Path) -> tuple[ijb.IJBMeta, np.ndarray]:
    """An in-memory IJBMeta, its per-image features, and the 1:N CSVs written under `folder`."""
    templates_total = GALLERY + PROBES
    template_ids = np.arange(templates_total) * 3 + 1  # sparse ids, as in IJB
    subject_of = np.r_[np.arange(GALLERY), rng.integers(0, GALLERY, PROBES)]
    image_template = np.sort(rng.integers(0, templates_total, IMAGES))
    medias = image_template * 8 + rng.integers(0, 6, IMAGES)  # a few media (stills or videos) per template
    centres = rng.standard_normal((GALLERY, DIM), dtype=np.float32)
    features = centres[subject_of[image_template]] + 7.0 * rng.standard_normal((IMAGES, DIM), dtype=np.float32)
    meta = ijb.IJBMeta(
        target="IJBC", image_dir=folder / "IJBC" / "loose_crop", image_names=np.array([]),
        templates=template_ids[image_template], medias=medias, landmarks=np.zeros((IMAGES, 5, 2), np.float32),
        faceness=rng.uniform(0.3, 1.0, IMAGES).astype(np.float32),
        pair_templates=np.zeros((0, 2), np.int64), pair_labels=np.zeros(0, np.int64),
    )
    meta_dir = folder / "IJBC" / "meta"
    meta_dir.mkdir(parents=True)
    side = np.where(image_template >= GALLERY, 2, (subject_of[image_template] >= GALLERY // 2).astype(int))
    for index, name in enumerate(["ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"]):
        rows = np.flatnonzero(side == index)
        lines = [f"{template_ids[image_template[i]]},{subject_of[image_template[i]]},img/{i}.jpg\n" for i in rows]
        (meta_dir / name).write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(lines))
    return meta, features


def insightface_evaluation(query_feats, gallery_feats, mask, fars=(0.01, 0.1)):
    """ijb_1n.evaluation: top-1/5/10 by a full argsort, TPIR from heapq.nlargest of non-mate scores."""
    similarity = np.dot(query_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    rates = {k: sum(mask[i] in top_inds[i, :k] for i in range(len(mask))) / len(mask) for k in (1, 5, 10)}
    required = [math.ceil(len(mask) * f) for f in fars]
    pos = []
    for i in range(len(mask)):
        pos.append(similarity[i, mask[i]])
        similarity[i, mask[i]] = -2.0
    pos = np.array(pos)
    neg = heapq.nlargest(max(required), similarity[np.where(similarity > -2.0)])
    return rates, {f: np.sum(pos > neg[k - 1]) / len(mask) for f, k in zip(fars, required)}


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        meta, features = synthetic(rng, Path(folder))
        print(f"IJB-C 1:N size: {IMAGES} images, {GALLERY} gallery and {PROBES} probe templates, d={DIM}")
        print("facekd:")
        protocol, t_read = timed("read and check the three CSVs", ijb_1n.read_ijb_1n_protocol, folder, meta)
    (feats, _), t_agg = timed("N1 D1 image features + template aggregation", ijb.meta_template_features,
                              features, meta)
    probes, gallery = feats[protocol.probe_rows], feats[protocol.gallery_rows]
    result, t_ident = timed("identify (rank-1/5/10, TPIR@FPIR)", identify, probes, protocol.probes.subjects,
                            gallery, protocol.gallery.subjects)
    total = t_read + t_agg + t_ident
    print(f"  {'total':<44s} {total:8.2f} s")
    print(f"  rank-1 {result.rank_rates[1]:.4f}  TPIR@FPIR=0.01 {result.tpir_at_fpir[0.01]:.4f}")

    print("baseline (same run):")
    mask = np.searchsorted(protocol.gallery.subjects, protocol.probes.subjects)  # gallery subjects are 0..G-1
    (rates, tpir), t_ref = timed("insightface ijb_1n evaluation", insightface_evaluation, probes, gallery, mask)
    same = rates == result.rank_rates and tpir == result.tpir_at_fpir
    print("ratio:")
    print(f"  insightface evaluation / facekd identify            {t_ref / t_ident:6.1f}x (same figures: {same})")


if __name__ == "__main__":
    main()
