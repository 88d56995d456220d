"""Time facekd's vectorised verification against insightface's per-threshold loops on 6,000 pairs.

Run: python benchmarks/bench_verification.py
Both run in this process on the same embeddings; the printed ratio is loop time / facekd time.
The loop inverts each fold's FAR curve with `verification.far_threshold` (one call per fold): the
interp1d that insightface calls refuses repeated FARs under current scipy, and what it did under
scipy 1.9 is checked in benchmarks/reference/compare_insightface.py. What is timed here is the
per-threshold sweep, which is the cost.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facekd.evaluate import verification


def loop_accuracy(threshold, dist, same):
    predict = np.less(dist, threshold)
    tp = np.sum(predict & same)
    fp = np.sum(predict & ~same)
    tn = np.sum(~predict & ~same)
    fn = np.sum(~predict & same)
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def loop_val_far(threshold, dist, same):
    predict = np.less(dist, threshold)
    return float(np.sum(predict & same)) / float(np.sum(same)), float(np.sum(predict & ~same)) / float(np.sum(~same))


def loop_evaluate(embeddings, same, nfolds=10):
    """insightface's calculate_roc + calculate_val, loop for loop."""
    unit = normalize(embeddings)
    dist = np.sum(np.square(unit[0::2] - unit[1::2]), 1)
    folds = list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))))
    thresholds = np.arange(0, 4, 0.01)
    accuracy = np.zeros(nfolds)
    for k, (train, test) in enumerate(folds):
        acc_train = [loop_accuracy(t, dist[train], same[train])[2] for t in thresholds]
        for t in thresholds:
            loop_accuracy(t, dist[test], same[test])
        accuracy[k] = loop_accuracy(thresholds[int(np.argmax(acc_train))], dist[test], same[test])[2]
    thresholds = np.arange(0, 4, 0.001)
    val = np.zeros(nfolds)
    for k, (train, test) in enumerate(folds):
        far_train = np.array([loop_val_far(t, dist[train], same[train])[1] for t in thresholds])
        threshold = verification.far_threshold(far_train, thresholds, 1e-3)
        val[k] = loop_val_far(threshold, dist[test], same[test])[0]
    return np.mean(accuracy), np.mean(val)


def main() -> None:
    rng = np.random.default_rng(0)
    pairs, dim = 6000, 512
    anchors = rng.normal(size=(pairs, dim))
    same = np.arange(pairs) % 2 == 0
    partners = np.where(same[:, None], anchors + 8.0 * rng.normal(size=anchors.shape), rng.normal(size=anchors.shape))
    embeddings = np.empty((2 * pairs, dim))
    embeddings[0::2], embeddings[1::2] = anchors, partners

    start = time.perf_counter()
    ref_acc, ref_val = loop_evaluate(embeddings, same)
    loop_time = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = verification.evaluate(embeddings, same)
        times.append(time.perf_counter() - start)
    fast = min(times)
    assert result.accuracy == ref_acc and result.val == ref_val, "results differ from the loop implementation"
    print(f"pairs {pairs}, dim {dim}: accuracy {result.accuracy:.5f}, VAL@1e-3 {result.val:.5f} (identical in both)")
    print(f"insightface loops: {loop_time:.2f} s   facekd vectorised: {fast:.3f} s (best of 3)   ratio {loop_time / fast:.1f}x")


if __name__ == "__main__":
    main()
