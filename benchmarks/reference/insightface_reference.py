"""The peers' evaluation and margin rules, run in the peers' pinned environment; never imports facekd.

compare_insightface.py builds the side venv (numpy 1.23.5, scipy 1.9.2, scikit-learn 1.2.2,
torch 2.13) and runs this file there as `python insightface_reference.py CASE_DIR`. Each function
follows, step for step, the logic of the published file it names (deepinsight/insightface):

- `verification_test`: recognition/arcface_torch/eval/verification.py, `test` from the sklearn
  normalisation on, then `evaluate` -> `calculate_roc`, `calculate_val` with their helpers. The
  FAR curve is inverted with this environment's `scipy.interpolate.interp1d(kind='slinear')`,
  which accepts the repeated FAR values.
- `combined_margin_loss`: recognition/arcface_torch/losses.py, `CombinedMarginLoss.forward`,
  in torch, with the same in-place, no_grad angle shift. With `--arcface-torch-losses` (and
  arcface_torch's folder on PYTHONPATH) the margin cases run the peer's `CombinedMarginLoss`
  itself instead (its other files import mxnet, so only losses.py runs from source).
- `ijb_11_tar`: recognition/_evaluation_/ijb/ijb_11.py, the TAR table under the ROC plot.
- `ijb_1n_evaluation`: recognition/_evaluation_/ijb/ijb_1n.py, `gen_mask` and `evaluation`
  (after the last step of its `image2template_feature`, the L2 normalisation of the templates).

CASE_DIR/manifest.json lists the cases ({"name", "kind", "params"}); each case's inputs are
CASE_DIR/<name>/<input>.npy and the results go to CASE_DIR/<name>/reference_<output>.npy.
CASE_DIR/environment.json records the versions that ran.
"""

from __future__ import annotations

import heapq
import json
import math
import sys
from pathlib import Path

import numpy as np
import scipy
import sklearn
import sklearn.preprocessing
import torch
from scipy import interpolate
from sklearn.metrics import auc, roc_curve
from sklearn.model_selection import KFold

IJB_FAR_LABELS = [10**-6, 10**-5, 10**-4, 10**-3, 10**-2, 10**-1]
IJB_1N_FARS = [0.01, 0.1]


# ---- eval/verification.py ----


def _folds(n_splits, indices):
    # LFold: KFold without shuffling; one split means train = test = everything
    if n_splits > 1:
        return KFold(n_splits=n_splits, shuffle=False).split(indices)
    return [(indices, indices)]


def _accuracy(threshold, dist, issame):
    accepted = np.less(dist, threshold)
    tp = np.sum(np.logical_and(accepted, issame))
    fp = np.sum(np.logical_and(accepted, np.logical_not(issame)))
    tn = np.sum(np.logical_and(np.logical_not(accepted), np.logical_not(issame)))
    fn = np.sum(np.logical_and(np.logical_not(accepted), issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _val_far(threshold, dist, issame):
    accepted = np.less(dist, threshold)
    true_accepts = np.sum(np.logical_and(accepted, issame))
    false_accepts = np.sum(np.logical_and(accepted, np.logical_not(issame)))
    return float(true_accepts) / float(np.sum(issame)), float(false_accepts) / float(np.sum(np.logical_not(issame)))


def _roc(thresholds, first, second, issame, nfolds):
    npairs = min(len(issame), first.shape[0])
    tprs = np.zeros((nfolds, len(thresholds)))
    fprs = np.zeros((nfolds, len(thresholds)))
    accuracy = np.zeros(nfolds)
    dist = np.sum(np.square(np.subtract(first, second)), 1)
    for fold, (train, test) in enumerate(_folds(nfolds, np.arange(npairs))):
        acc_train = np.zeros(len(thresholds))
        for i, threshold in enumerate(thresholds):
            _, _, acc_train[i] = _accuracy(threshold, dist[train], issame[train])
        best = np.argmax(acc_train)
        for i, threshold in enumerate(thresholds):
            tprs[fold, i], fprs[fold, i], _ = _accuracy(threshold, dist[test], issame[test])
        _, _, accuracy[fold] = _accuracy(thresholds[best], dist[test], issame[test])
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy


def _val(thresholds, first, second, issame, far_target, nfolds):
    npairs = min(len(issame), first.shape[0])
    val = np.zeros(nfolds)
    far = np.zeros(nfolds)
    dist = np.sum(np.square(np.subtract(first, second)), 1)
    for fold, (train, test) in enumerate(_folds(nfolds, np.arange(npairs))):
        far_train = np.zeros(len(thresholds))
        for i, threshold in enumerate(thresholds):
            _, far_train[i] = _val_far(threshold, dist[train], issame[train])
        if np.max(far_train) >= far_target:
            threshold = interpolate.interp1d(far_train, thresholds, kind="slinear")(far_target)
        else:
            threshold = 0.0
        val[fold], far[fold] = _val_far(threshold, dist[test], issame[test])
    return np.mean(val), np.std(val), np.mean(far)


def verification_test(embeddings, issame, nfolds):
    embeddings = sklearn.preprocessing.normalize(embeddings)
    issame = np.asarray(issame)
    tpr, fpr, accuracy = _roc(np.arange(0, 4, 0.01), embeddings[0::2], embeddings[1::2], issame, nfolds)
    val, val_std, far = _val(np.arange(0, 4, 0.001), embeddings[0::2], embeddings[1::2], issame, 1e-3, nfolds)
    return {
        "tpr": tpr, "fpr": fpr, "fold_accuracies": accuracy, "accuracy": np.mean(accuracy),
        "std": np.std(accuracy), "val": val, "val_std": val_std, "far": far,
    }


# ---- losses.py ----


def combined_margin_loss(logits, labels, s, m1, m2, m3, interclass_filtering_threshold=0.0):
    """CombinedMarginLoss.forward; `labels` (N, 1) as partial_fc_v2 passes them, -1 = no target."""
    positive = torch.where(labels != -1)[0]
    if interclass_filtering_threshold > 0:
        with torch.no_grad():
            dirty = (logits > interclass_filtering_threshold).float()
            mask = torch.ones([positive.size(0), logits.size(1)], device=logits.device)
            mask.scatter_(1, labels[positive], 0)
            dirty[positive] *= mask
            keep = 1 - dirty
        logits = keep * logits
    target = logits[positive, labels[positive].view(-1)]
    if m1 == 1.0 and m3 == 0.0:
        with torch.no_grad():
            target.arccos_()
            logits.arccos_()
            logits[positive, labels[positive].view(-1)] = target + m2
            logits.cos_()
        return logits * s
    if m3 > 0:
        logits[positive, labels[positive].view(-1)] = target - m3
        return logits * s
    raise ValueError(f"CombinedMarginLoss has no rule for m1={m1}, m2={m2}, m3={m3}")


def arcface_torch_margin_loss(logits, labels, s, m1, m2, m3, interclass_filtering_threshold=0.0):
    """arcface_torch's own CombinedMarginLoss, imported from its folder on PYTHONPATH."""
    from losses import CombinedMarginLoss

    return CombinedMarginLoss(s, m1, m2, m3, interclass_filtering_threshold)(logits, labels)


def margin_case(cosine, labels, params, rule=combined_margin_loss):
    """Logits, and the gradient of sum(logits * upstream) with respect to the cosines."""
    dtype = getattr(torch, params["dtype"])
    leaf = torch.tensor(cosine, dtype=dtype, requires_grad=True)
    upstream = torch.tensor(params["upstream"], dtype=dtype)
    # a non-leaf input, as the output of the linear layer is in training
    logits = rule(leaf * 1.0, torch.tensor(labels).view(-1, 1), params["s"], params["m1"],
                  params["m2"], params["m3"], params.get("interclass_filtering_threshold", 0.0))
    (logits * upstream).sum().backward()
    return {"logits": logits.detach().double().numpy(), "grad": leaf.grad.double().numpy()}


# ---- ijb_11.py ----


def ijb_11_tar(labels, scores):
    fpr, tpr, _ = roc_curve(labels, scores)
    area = auc(fpr, tpr)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    tar = []
    for far in IJB_FAR_LABELS:
        _, index = min(list(zip(abs(fpr - far), range(len(fpr)))))
        tar.append(tpr[index])
    return {"tar": np.array(tar), "auc": np.array(area)}


# ---- ijb_1n.py ----


def _gen_mask(query_ids, gallery_ids):
    mask = []
    for query_id in query_ids:
        positions = [i for i, x in enumerate(gallery_ids) if query_id == x]
        if len(positions) != 1:
            raise RuntimeError(f"gallery id {query_id} appears {len(positions)} times")
        mask.append(positions[0])
    return mask


def _top_k(top_inds, mask, k):
    return sum(1 for i in range(len(mask)) if mask[i] in top_inds[i, 0:k]) / len(mask)


def ijb_1n_evaluation(query_feats, query_ids, gallery_feats, gallery_ids):
    query_feats = query_feats / np.sqrt(np.sum(query_feats**2, -1, keepdims=True))
    gallery_feats = gallery_feats / np.sqrt(np.sum(gallery_feats**2, -1, keepdims=True))
    mask = _gen_mask(query_ids, gallery_ids)
    query_num = query_feats.shape[0]
    similarity = np.dot(query_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    top1 = sum(1 for i in range(query_num) if top_inds[i, 0] == mask[i]) / query_num
    rows = np.arange(query_num)
    # A tie with the mate's score makes the rank argsort's (unstable) choice: mark those probes.
    # "Tie" up to 1e-12: the BLAS builds of the two environments round the products differently.
    tied = np.sum(np.abs(similarity - similarity[rows, mask][:, None]) <= 1e-12, 1) > 1
    hits = np.array([[mask[i] in top_inds[i, 0:k] for i in rows] for k in (1, 5, 10)])
    required_topk = [math.ceil(query_num * x) for x in IJB_1N_FARS]
    top_sims = similarity
    pos_sims = []
    for i in range(query_num):
        pos_sims.append(top_sims[i, mask[i]])
        top_sims[i, mask[i]] = -2.0
    pos_sims = np.array(pos_sims)
    neg_sims = top_sims[np.where(top_sims > -2.0)]
    neg_sims = heapq.nlargest(max(required_topk), neg_sims)
    thresholds, tpir = [], []
    for pos in required_topk:
        thresholds.append(neg_sims[pos - 1])
        tpir.append(np.sum(pos_sims > neg_sims[pos - 1]) / query_num)
    return {
        "rank": np.array([top1, _top_k(top_inds, mask, 5), _top_k(top_inds, mask, 10)]),
        "tpir": np.array(tpir), "thresholds": np.array(thresholds), "hits": hits, "tied": tied,
    }


# ---- driver ----


def run_case(case_dir: Path, kind: str, params: dict, margin_rule) -> dict:
    def load(name):
        return np.load(case_dir / f"{name}.npy")

    if kind == "verification":
        return verification_test(load("embeddings"), load("issame"), params["nfolds"])
    if kind == "margin":
        return margin_case(load("cosine"), load("labels"), params, margin_rule)
    if kind == "ijb_11":
        return ijb_11_tar(load("labels"), load("scores"))
    if kind == "ijb_1n":
        return ijb_1n_evaluation(load("probe_feats"), load("probe_ids"), load("gallery_feats"), load("gallery_ids"))
    raise ValueError(f"unknown case kind {kind}")


def main(case_root: str, from_source: bool) -> None:
    root = Path(case_root)
    margin_rule = arcface_torch_margin_loss if from_source else combined_margin_loss
    for case in json.loads((root / "manifest.json").read_text()):
        for name, value in run_case(root / case["name"], case["kind"], case["params"], margin_rule).items():
            np.save(root / case["name"] / f"reference_{name}.npy", np.asarray(value))
    versions = {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
                "torch": torch.__version__, "python": sys.version.split()[0],
                "margin rule": "arcface_torch losses.py" if from_source else "transcription of losses.py"}
    (root / "environment.json").write_text(json.dumps(versions))


if __name__ == "__main__":
    main(sys.argv[1], "--arcface-torch-losses" in sys.argv[2:])
