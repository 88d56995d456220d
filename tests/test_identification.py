"""facekd.evaluate.identification against hand-computed ranks and insightface's ijb_1n loops."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from facekd.errors import DataError
from facekd.evaluate import identification


def unit(angles_deg):
    a = np.radians(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ranks_by_hand():
    # gallery subjects 10, 20, 30 at 0, 90, 180 degrees; one distractor at 40 degrees
    gallery, gallery_ids = unit([0, 90, 180]), np.array([10, 20, 30])
    distractors = unit([40])
    # probe of 10 at 30 deg: distractor (10 deg away) beats the mate (30 deg)  -> rank 2
    # probe of 20 at 80 deg: mate 10 deg away is best                             -> rank 1
    # probe of 30 at 100 deg: 20 (10 deg) and distractor (60) beat 30 (80 deg)    -> rank 3
    probes, probe_ids = unit([30, 80, 100]), np.array([10, 20, 30])
    result = identification.identify(
        probes, probe_ids, gallery, gallery_ids, distractor_feats=distractors, ranks=(1, 2, 3)
    )
    assert result.rank_rates == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    np.testing.assert_allclose(result.cmc, [1 / 3, 2 / 3, 1.0])
    # non-mate angles: probe 30 -> 60, 150, 10 (distractor); probe 80 -> 80, 100, 40; probe 100 -> 100, 10, 60
    # FPIR 1/3 -> k = 1 -> threshold cos 10: no mate score (cos30, cos10, cos80) is strictly above it.
    # FPIR 1   -> k = 3 -> third largest non-mate score, cos 40: the cos 30 and cos 10 mates are above.
    negatives = sorted([np.cos(np.radians(d)) for d in (60, 150, 10, 80, 100, 40, 100, 10, 60)], reverse=True)
    assert negatives[0] == pytest.approx(np.cos(np.radians(10)))
    result = identification.identify(
        probes, probe_ids, gallery, gallery_ids, distractor_feats=distractors, fpirs=(1 / 3, 1.0)
    )
    mates = np.cos(np.radians([30, 10, 80]))
    assert result.fpir_thresholds[1 / 3] == pytest.approx(negatives[0])
    assert result.tpir_at_fpir[1 / 3] == 0.0
    assert result.fpir_thresholds[1.0] == pytest.approx(negatives[2])
    assert result.tpir_at_fpir[1.0] == pytest.approx(np.mean(mates > negatives[2])) == pytest.approx(2 / 3)


def ref_ijb_1n(probes, probe_ids, gallery, gallery_ids, fars):
    """insightface ijb_1n `evaluation`, with a stable argsort so ties have one answer."""
    mask = [list(gallery_ids).index(p) for p in probe_ids]
    similarity = np.dot(probes, gallery.T)
    top = np.argsort(-similarity, kind="stable")
    rates = {k: sum(mask[i] in top[i, :k] for i in range(len(probes))) / len(probes) for k in (1, 5, 10)}
    required = [math.ceil(len(probes) * f) for f in fars]
    sims = similarity.copy()
    pos = []
    for i in range(len(probes)):
        pos.append(sims[i, mask[i]])
        sims[i, mask[i]] = -2.0
    pos = np.array(pos)
    neg = heapq.nlargest(max(required), sims[np.where(sims > -2.0)])
    tpir = {f: np.sum(pos > neg[k - 1]) / len(probes) for f, k in zip(fars, required)}
    return rates, tpir


def test_matches_insightface_loops_with_distractors_and_small_chunks(monkeypatch):
    rng = np.random.default_rng(5)
    subjects = 60
    centres = unit_rows(rng.normal(size=(subjects, 24)))
    gallery = unit_rows(centres + 0.6 * rng.normal(size=centres.shape))
    probe_subjects = rng.integers(0, subjects, 300)
    probes = unit_rows(centres[probe_subjects] + 0.6 * rng.normal(size=(300, 24)))
    distractors = unit_rows(rng.normal(size=(500, 24)))
    gallery_ids = np.arange(subjects) * 7 + 3
    order = rng.permutation(subjects)  # gallery not sorted by id
    monkeypatch.setattr(identification, "CHUNK_SCORES", 2000)  # several probe chunks
    got = identification.identify(
        probes, gallery_ids[probe_subjects], gallery[order], gallery_ids[order], distractor_feats=distractors
    )
    want_rates, want_tpir = ref_ijb_1n(
        probes, gallery_ids[probe_subjects], np.concatenate([gallery[order], distractors]),
        np.concatenate([gallery_ids[order], -1 - np.arange(500)]), (0.01, 0.1),
    )
    assert got.rank_rates == want_rates
    assert got.tpir_at_fpir == want_tpir
    assert 0 < got.rank_rates[1] < got.rank_rates[10] < 1


def test_subject_templates_sum_then_normalise():
    feats = np.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    templates, ids = identification.subject_templates(feats, np.array([5, 5, 2]))
    np.testing.assert_array_equal(ids, [2, 5])
    np.testing.assert_allclose(templates, [[2**-0.5, 2**-0.5], [0.6, 0.8]])


def test_probe_without_mate_rejected():
    with pytest.raises(DataError, match="subject 9 is not in the gallery"):
        identification.identify(unit([0]), [9], unit([0, 90]), [1, 2])


def test_duplicate_gallery_subject_rejected():
    with pytest.raises(DataError, match="subject 1 has 2 entries"):
        identification.identify(unit([0]), [1], unit([0, 90]), [1, 1])


def test_scores_are_cosines_whatever_the_feature_scale():
    probes, gallery = unit([30, 80, 100]), unit([0, 90, 180])
    ids = np.array([10, 20, 30])
    plain = identification.identify(probes, ids, gallery, ids, distractor_feats=unit([40]))
    scaled = identification.identify(3 * probes, ids, 0.5 * gallery, ids, distractor_feats=7 * unit([40]))
    assert scaled.rank_rates == plain.rank_rates
    assert scaled.tpir_at_fpir == plain.tpir_at_fpir


def test_zero_feature_rejected():
    with pytest.raises(DataError, match="probe features: row 0 has L2 norm 0"):
        identification.identify(np.zeros((1, 2)), [1], unit([0, 90]), [1, 2])
