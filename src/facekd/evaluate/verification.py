"""Pair verification accuracy exactly as insightface arcface_torch computes it (formats.md 3.2).

The input is the 2N flip-summed raw embeddings of a `.bin` (pair i = rows 2i and 2i+1). They are
L2-normalised with sklearn, compared by squared Euclidean distance, and each of 10 contiguous folds
picks the first threshold of `arange(0, 4, 0.01)` that maximises accuracy on the other nine.

The threshold sweep is vectorised: "dist < t" for every threshold is a `searchsorted` count on the
sorted distances, so every true/false positive count, and therefore every accuracy, TPR and FAR,
is the same integer-over-integer division as in insightface's per-threshold loop.

VAL@FAR: insightface inverts the training-fold FAR curve with
`interp1d(far_train, thresholds, kind='slinear')`. FAR is a step function of the threshold, so
`far_train` repeats values; current scipy refuses that ("Expect x to not have duplicates"), while
the scipy of insightface's environment (1.9) builds a degree-1 B-spline with knots
`[x0, x0, x1, ..., xn, xn]` straight from the repeated values. `far_threshold` evaluates that
spline as scipy 1.9 does (de Boor, degree 1): the target falls in the interval that starts at the
*last* point whose FAR is <= the target and ends at the next point, so across a plateau it
interpolates from the plateau's last threshold to the next value's first. A target equal to the
largest FAR lands in the final interval, which is empty when the curve ends on a plateau, and the
spline gives 0 there. When the training folds never reach the target FAR the threshold is 0.0, as
in insightface. A fold without genuine (or impostor) pairs has no defined VAL (or FAR);
insightface divides by zero there, we report NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facekd.errors import DataError

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
VAL_FAR_TARGET = 1e-3


@dataclass(frozen=True)
class VerificationResult:
    """Accuracy-Flip and VAL@FAR of one pair set, plus the mean ROC over the test folds."""

    accuracy: float  # mean of the fold accuracies
    std: float  # population std (ddof=0) of the fold accuracies
    fold_accuracies: np.ndarray  # (nfolds,)
    thresholds: np.ndarray  # (nfolds,) best squared-distance threshold of each fold
    val: float  # mean TAR at FAR=1e-3 over the folds
    val_std: float
    far: float  # mean FAR actually reached on the test folds
    roc_thresholds: np.ndarray  # (400,) arange(0, 4, 0.01)
    tpr: np.ndarray  # (400,) test-fold TPR averaged over folds, per threshold
    fpr: np.ndarray  # (400,)
    num_pairs: int
    num_impostors: int  # pairs of different identities
    auc: float  # area under the pooled ROC
    pooled_fpr: np.ndarray  # the ROC of all pairs at once (sklearn roc_curve): what reports plot
    pooled_tpr: np.ndarray
    xnorm: float | None = None  # mean L2 norm of the raw (un-summed) embeddings, when known

    @property
    def threshold_free(self) -> bool:
        """nfolds 1: no threshold is chosen, so there is no accuracy or VAL, only the ROC and AUC."""
        return len(self.fold_accuracies) == 0


def xnorm(*raw_embeddings: np.ndarray) -> float:
    """Mean L2 norm over every row of the raw embedding sets (insightface logs orig and flip)."""
    norms = np.concatenate([np.linalg.norm(np.asarray(e, dtype=np.float64), axis=1) for e in raw_embeddings])
    return float(norms.mean())


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair after sklearn L2 normalisation (rows 2i and 2i+1)."""
    unit = normalize(np.asarray(embeddings, dtype=np.float64))
    diff = np.subtract(unit[0::2], unit[1::2])
    return np.sum(np.square(diff), 1)


def evaluate(embeddings: np.ndarray, issame, nfolds: int = 10) -> VerificationResult:
    """insightface `verification.evaluate` + `test`: fold accuracies, VAL@FAR=1e-3 and the ROC.

    `nfolds` 1 is threshold-free: the ROC and AUC of all pairs, with NaN accuracy and VAL (a threshold
    chosen and scored on the same pairs would flatter the model)."""
    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame)
    _check_inputs(embeddings, issame, nfolds)
    issame = issame.astype(bool)
    dist = pair_distances(embeddings)
    area, pooled_fpr, pooled_tpr = pooled_roc(dist, issame)
    pooled = dict(num_pairs=len(dist), num_impostors=int((~issame).sum()), auc=area, pooled_fpr=pooled_fpr,
                  pooled_tpr=pooled_tpr)
    if nfolds == 1:
        tp, fp, tn, fn = _confusion(dist, issame, ACCURACY_THRESHOLDS)
        nan, empty = float("nan"), np.zeros(0)
        return VerificationResult(accuracy=nan, std=nan, fold_accuracies=empty, thresholds=empty, val=nan,
                                  val_std=nan, far=nan, roc_thresholds=ACCURACY_THRESHOLDS.copy(),
                                  tpr=_rate(tp, tp + fn), fpr=_rate(fp, fp + tn), **pooled)
    folds = list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))))

    fold_accuracies, best_thresholds, tpr, fpr = _accuracy_folds(dist, issame, folds)
    vals, fars = _val_folds(dist, issame, folds)
    return VerificationResult(
        accuracy=float(np.mean(fold_accuracies)),
        std=float(np.std(fold_accuracies)),
        fold_accuracies=fold_accuracies,
        thresholds=best_thresholds,
        val=float(np.mean(vals)),
        val_std=float(np.std(vals)),
        far=float(np.mean(fars)),
        roc_thresholds=ACCURACY_THRESHOLDS.copy(),
        tpr=tpr,
        fpr=fpr,
        **pooled,
    )


def pooled_roc(dist: np.ndarray, issame: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC, FPR and TPR of all pairs at once, a smaller distance meaning the same identity. A fold
    mean of per-fold ROCs (insightface's `tpr`, `fpr`) is flat where a fold holds one class only."""
    if issame.all() or not issame.any():
        return float("nan"), np.zeros(0), np.zeros(0)
    fpr, tpr, _ = roc_curve(issame.astype(int), -dist)
    return float(auc(fpr, tpr)), fpr, tpr


def small_set_warnings(num_pairs: int, num_impostors: int, nfolds: int, far: float = VAL_FAR_TARGET) -> list[str]:
    """What a small pair set cannot measure: too few pairs per fold, or too few impostor pairs in the
    training folds for VAL@FAR (its threshold would rest on less than one false accept)."""
    notes = []
    if nfolds == 1:
        return notes  # no threshold, no fold, no VAL
    per_fold = num_pairs / nfolds
    if per_fold < 30:
        notes.append(f"{num_pairs} pairs give {per_fold:.0f} per fold over {nfolds} folds; the fold std is "
                     "not a reliable error bar (use more pairs)")
    impostors = int(num_impostors * (nfolds - 1) / nfolds)
    if impostors * far < 1:
        notes.append(f"VAL@FAR={far:g} not resolvable: {impostors} impostor pairs in the training folds, "
                     f"expected at least {round(1 / far)}")
    return notes


def _check_inputs(embeddings: np.ndarray, issame: np.ndarray, nfolds: int) -> None:
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise DataError(
            f"embeddings: found shape {embeddings.shape}, expected 2-D with an even number of rows (2 per pair)"
        )
    if issame.ndim != 1 or len(issame) != embeddings.shape[0] // 2:
        raise DataError(
            f"issame: found {issame.shape} labels for {embeddings.shape[0]} embeddings, "
            f"expected one label per pair ({embeddings.shape[0] // 2})"
        )
    if not np.all(np.isfinite(embeddings)):
        raise DataError("embeddings: found NaN or infinite values, expected finite numbers")
    if nfolds < 1 or nfolds > len(issame):
        raise DataError(f"nfolds: found {nfolds}, expected 1 (threshold-free ROC) up to the number of pairs "
                        f"({len(issame)})")


def _counts_below(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many values satisfy `value < t` (insightface's `np.less`)."""
    return np.searchsorted(np.sort(values), thresholds, side="left")


def _confusion(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray):
    """TP, FP, TN, FN counts (int arrays over thresholds) of the rule `dist < threshold`."""
    tp = _counts_below(dist[issame], thresholds)
    fp = _counts_below(dist[~issame], thresholds)
    n_same = int(issame.sum())
    n_diff = len(issame) - n_same
    return tp, fp, n_diff - fp, n_same - tp


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, 0 where the denominator is 0 (insightface's tpr/fpr)."""
    safe = np.where(denominator == 0, 1, denominator)
    return np.where(denominator == 0, 0.0, numerator.astype(np.float64) / safe.astype(np.float64))


def _accuracy_folds(dist, issame, folds):
    nfolds, nthr = len(folds), len(ACCURACY_THRESHOLDS)
    tprs = np.zeros((nfolds, nthr))
    fprs = np.zeros((nfolds, nthr))
    accuracies = np.zeros(nfolds)
    best = np.zeros(nfolds)
    for k, (train, test) in enumerate(folds):
        tp, _, tn, _ = _confusion(dist[train], issame[train], ACCURACY_THRESHOLDS)
        acc_train = (tp + tn).astype(np.float64) / len(train)
        best_index = int(np.argmax(acc_train))  # first maximum, as insightface
        tp, fp, tn, fn = _confusion(dist[test], issame[test], ACCURACY_THRESHOLDS)
        tprs[k] = _rate(tp, tp + fn)
        fprs[k] = _rate(fp, fp + tn)
        accuracies[k] = float(tp[best_index] + tn[best_index]) / len(test)
        best[k] = ACCURACY_THRESHOLDS[best_index]
    return accuracies, best, np.mean(tprs, 0), np.mean(fprs, 0)


def _val_far(dist: np.ndarray, issame: np.ndarray, threshold: float) -> tuple[float, float]:
    """insightface `calculate_val_far` for one threshold; NaN when a class is absent."""
    predict = np.less(dist, threshold)
    n_same = int(np.sum(issame))
    n_diff = int(np.sum(~issame))
    true_accept = int(np.sum(predict & issame))
    false_accept = int(np.sum(predict & ~issame))
    val = float(true_accept) / float(n_same) if n_same else float("nan")
    far = float(false_accept) / float(n_diff) if n_diff else float("nan")
    return val, far


def far_threshold(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """The threshold at which the training FAR curve reaches `far_target` (see the module doc)."""
    if not np.max(far_train) >= far_target:
        return 0.0
    if far_target < far_train[0]:
        raise DataError(f"far_target: found {far_target}, expected at least the curve's first FAR {far_train[0]}")
    # Interval [far_train[lower], far_train[lower + 1]]: scipy 1.9's find_interval picks the last
    # knot <= the target and never the one past the end.
    lower = min(int(np.searchsorted(far_train, far_target, side="right")), len(far_train) - 1) - 1
    start, end = far_train[lower], far_train[lower + 1]
    if start == end:  # an empty interval: de Boor gives both basis functions weight 0
        return 0.0
    weight = 1.0 / (end - start)
    below, above = thresholds[lower], thresholds[lower + 1]
    return float(below * (weight * (end - far_target)) + above * (weight * (far_target - start)))


def _val_folds(dist, issame, folds):
    vals = np.zeros(len(folds))
    fars = np.zeros(len(folds))
    for k, (train, test) in enumerate(folds):
        _, fp, tn, _ = _confusion(dist[train], issame[train], VAL_THRESHOLDS)
        n_diff = int(fp[0] + tn[0])
        if n_diff == 0:  # no impostor pairs to set a FAR on: VAL undefined for this fold
            vals[k] = fars[k] = np.nan
            continue
        threshold = far_threshold(fp.astype(np.float64) / float(n_diff), VAL_THRESHOLDS, VAL_FAR_TARGET)
        vals[k], fars[k] = _val_far(dist[test], issame[test], threshold)
    return vals, fars
