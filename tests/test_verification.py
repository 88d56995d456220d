"""facekd.evaluate.verification against hand computations and a plain re-implementation of
insightface's loops (benchmarks/reference/ runs insightface's own rules under scipy 1.9)."""

from __future__ import annotations

import numpy as np
import pytest

from facekd.errors import DataError
from facekd.evaluate import verification


# ---- reference: insightface eval/verification.py written out with per-fold, per-threshold loops ----


def ref_accuracy(threshold, dist, same):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, same))
    fp = np.sum(np.logical_and(predict, np.logical_not(same)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(same)))
    fn = np.sum(np.logical_and(np.logical_not(predict), same))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def ref_val_far(threshold, dist, same):
    predict = np.less(dist, threshold)
    ta = np.sum(np.logical_and(predict, same))
    fa = np.sum(np.logical_and(predict, np.logical_not(same)))
    return float(ta) / float(np.sum(same)), float(fa) / float(np.sum(np.logical_not(same)))


def ref_slinear_with_repeats(xs, ys, x):
    """scipy 1.9 `interp1d(xs, ys, kind='slinear')(x)` on non-decreasing xs with repeats: a degree-1
    B-spline on knots xs, so x falls in [xs[j], xs[j+1]] with the largest j having xs[j] <= x (the
    final interval when x is the last value); an empty interval evaluates to 0."""
    j = 0
    while j + 2 < len(xs) and xs[j + 1] <= x:
        j += 1
    if xs[j + 1] == xs[j]:
        return 0.0
    return ys[j] + (ys[j + 1] - ys[j]) * (x - xs[j]) / (xs[j + 1] - xs[j])


def ref_folds(n, nfolds):
    """Contiguous folds as sklearn KFold(shuffle=False): the first n % nfolds folds get one more."""
    sizes = [n // nfolds + (1 if k < n % nfolds else 0) for k in range(nfolds)]
    start, folds = 0, []
    for size in sizes:
        test = np.arange(start, start + size)
        train = np.array([i for i in range(n) if i < start or i >= start + size])
        folds.append((train, test))
        start += size
    return folds


def ref_evaluate(embeddings, issame, nfolds=10):
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    same = np.asarray(issame)
    folds = ref_folds(len(dist), nfolds)

    thresholds = np.arange(0, 4, 0.01)
    tprs = np.zeros((nfolds, len(thresholds)))
    fprs = np.zeros((nfolds, len(thresholds)))
    accuracy, best = np.zeros(nfolds), np.zeros(nfolds)
    for k, (train, test) in enumerate(folds):
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            _, _, acc_train[i] = ref_accuracy(t, dist[train], same[train])
        b = int(np.argmax(acc_train))
        for i, t in enumerate(thresholds):
            tprs[k, i], fprs[k, i], _ = ref_accuracy(t, dist[test], same[test])
        _, _, accuracy[k] = ref_accuracy(thresholds[b], dist[test], same[test])
        best[k] = thresholds[b]

    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(nfolds), np.zeros(nfolds)
    for k, (train, test) in enumerate(folds):
        far_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            _, far_train[i] = ref_val_far(t, dist[train], same[train])
        threshold = ref_slinear_with_repeats(far_train, thresholds, 1e-3) if np.max(far_train) >= 1e-3 else 0.0
        val[k], far[k] = ref_val_far(threshold, dist[test], same[test])
    return dict(
        accuracy=np.mean(accuracy), std=np.std(accuracy), fold_accuracies=accuracy, thresholds=best,
        tpr=np.mean(tprs, 0), fpr=np.mean(fprs, 0), val=np.mean(val), val_std=np.std(val), far=np.mean(far),
    )


# ---- embedding sets ----


def random_set(rng, n_pairs=600, dim=64):
    return rng.normal(size=(2 * n_pairs, dim)), rng.random(n_pairs) < 0.5


def separated_set(rng, n_pairs=600, dim=32):
    anchors = rng.normal(size=(n_pairs, dim))
    issame = np.arange(n_pairs) % 2 == 0
    partners = np.where(issame[:, None], anchors + 0.05 * rng.normal(size=anchors.shape), rng.normal(size=anchors.shape))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = anchors, partners
    return emb, issame


def tied_set(rng, n_pairs=605):
    """Few distinct distances shared by many pairs of both classes, landing on grid thresholds
    (0, 2 and 4 exactly), an uneven last fold split, and long accuracy plateaus."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    first = rng.integers(0, len(vectors), n_pairs)
    second = rng.integers(0, len(vectors), n_pairs)
    emb = np.empty((2 * n_pairs, 2))
    emb[0::2], emb[1::2] = vectors[first] * 3.0, vectors[second]
    return emb, rng.random(n_pairs) < 0.5


@pytest.mark.parametrize("make", [random_set, separated_set, tied_set])
def test_matches_insightface_loops(make):
    emb, issame = make(np.random.default_rng(7))
    got = verification.evaluate(emb, issame)
    want = ref_evaluate(emb, issame)
    np.testing.assert_array_equal(got.fold_accuracies, want["fold_accuracies"])
    np.testing.assert_array_equal(got.thresholds, want["thresholds"])
    np.testing.assert_array_equal(got.tpr, want["tpr"])
    np.testing.assert_array_equal(got.fpr, want["fpr"])
    assert got.accuracy == want["accuracy"]
    assert got.std == want["std"]
    assert got.val == want["val"]
    assert got.val_std == want["val_std"]
    assert got.far == want["far"]
    assert got.num_pairs == len(issame)


def test_separated_set_is_perfect_and_random_is_chance():
    rng = np.random.default_rng(3)
    assert verification.evaluate(*separated_set(rng)).accuracy == 1.0
    assert 0.4 < verification.evaluate(*random_set(rng)).accuracy < 0.6


THRESHOLDS = np.array([0.0, 0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize(
    "far_train, target, hand",
    [
        # across the FAR-0 plateau: from its last threshold 0.1 to 0.2, halfway (first-threshold rule: 0.1)
        ([0.0, 0.0, 0.002, 0.002, 0.004], 1e-3, 0.15),
        # exactly on a plateau value: that plateau's last threshold (first-threshold rule: 0.2)
        ([0.0, 0.0, 0.002, 0.002, 0.004], 0.002, 0.3),
        # a single impostor: FAR jumps 0 -> 1 between 0.2 and 0.3 (first-threshold rule: 0.0003)
        ([0.0, 0.0, 0.0, 1.0, 1.0], 1e-3, 0.2 + 0.1 * 1e-3),
        # the target is the largest FAR and the curve ends on its plateau: an empty interval, 0
        ([0.0, 0.0, 0.0, 0.001, 0.001], 1e-3, 0.0),
        # the target is the largest FAR, reached only at the last threshold
        ([0.0, 0.0, 0.002, 0.004, 0.006], 0.006, 0.4),
        # never reached: 0
        ([0.0, 0.0, 0.0, 0.0, 0.0], 1e-3, 0.0),
    ],
)
def test_far_threshold_follows_scipy_1_9_slinear_on_repeated_fars(far_train, target, hand):
    got = verification.far_threshold(np.array(far_train), THRESHOLDS, target)
    assert got == pytest.approx(hand, abs=1e-12)


def test_far_target_below_the_curve_is_rejected():
    with pytest.raises(DataError, match="far_target: found 0.1"):
        verification.far_threshold(np.array([0.5, 0.5, 1.0]), THRESHOLDS[:3], 0.1)


def test_val_across_a_far_plateau_by_hand():
    """Two folds of three genuine pairs (distance 0.8) and one impostor (orthogonal: distance 2.0).
    Each training FAR is 0 up to the threshold 2.0 and 1 from 2.001, so the threshold is
    2.0 + 0.001 * 1e-3: every test pair, the impostor included, is accepted: VAL 1, FAR 1.
    Interpolating from the plateau's first threshold (0.0) would give 0.002001: VAL 0, FAR 0."""
    genuine = [[1.0, 0.0], [0.6, 0.8]]
    impostor = [[1.0, 0.0], [0.0, 1.0]]
    embeddings = np.array((genuine * 3 + impostor) * 2)
    issame = np.array([True, True, True, False] * 2)
    result = verification.evaluate(embeddings, issame, nfolds=2)
    assert result.val == 1.0
    assert result.far == 1.0


def test_xnorm_is_mean_row_norm_over_both_sets():
    a = np.array([[3.0, 4.0], [0.0, 1.0]])
    b = np.array([[6.0, 8.0]])
    assert verification.xnorm(a, b) == pytest.approx((5.0 + 1.0 + 10.0) / 3)


def test_odd_rows_rejected():
    with pytest.raises(DataError, match="even number of rows"):
        verification.evaluate(np.ones((7, 4)), np.ones(3, bool))


def test_wrong_issame_length_rejected():
    with pytest.raises(DataError, match="one label per pair"):
        verification.evaluate(np.ones((8, 4)), np.ones(5, bool))


def _pairs_at_squared_distances(distances):
    """Unit 2-D embeddings: pair i is (e0, e0 rotated by theta_i), with 2 - 2 cos(theta_i) = d_i."""
    rows = []
    for d in distances:
        theta = np.arccos(1.0 - d / 2.0)
        rows += [[1.0, 0.0], [np.cos(theta), np.sin(theta)]]
    return np.array(rows)


def test_pooled_roc_auc_and_threshold_free_report_by_hand():
    # Genuine pairs at squared distances 0.1 and 0.5, impostors at 0.3 and 0.9: of the 4
    # (genuine, impostor) couples, 3 have the genuine pair closer, so AUC = 3/4.
    embeddings = _pairs_at_squared_distances([0.1, 0.3, 0.5, 0.9])
    issame = np.array([True, False, True, False])
    free = verification.evaluate(embeddings, issame, nfolds=1)
    assert free.threshold_free and np.isnan(free.accuracy) and np.isnan(free.val)
    assert free.auc == pytest.approx(0.75)
    # Pooled ROC points: thresholds between the sorted distances 0.1 < 0.3 < 0.5 < 0.9.
    points = set(zip(np.round(free.pooled_fpr, 6), np.round(free.pooled_tpr, 6)))
    assert {(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)} <= points
    assert verification.small_set_warnings(4, 2, nfolds=1) == []


def test_pooled_roc_is_not_flattened_by_single_class_folds():
    # Folds of 2 pairs that hold one class each: every fold's TPR (or FPR) is 0/0, which the fold
    # mean turns into a flat curve; the pooled ROC still separates the classes perfectly.
    embeddings = _pairs_at_squared_distances([0.1, 0.2, 1.5, 1.6])
    issame = np.array([True, True, False, False])
    result = verification.evaluate(embeddings, issame, nfolds=2)
    assert result.auc == pytest.approx(1.0)
    assert result.fpr.max() < 1.0 or result.tpr.max() < 1.0  # the fold mean cannot reach (1, 1)
