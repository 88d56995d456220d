"""facekd against the peers' own rules, run in the peers' pinned environment.

Run: python benchmarks/reference/compare_insightface.py
It builds (once) a side venv at benchmarks/reference/.venv (git-ignored) with numpy 1.23.5,
scipy 1.9.2 and scikit-learn 1.2.2 (insightface's verification.py needs a scipy whose
`interp1d(kind='slinear')` still accepts repeated x; current scipy refuses it) and torch 2.13
(`--torch`, by default the local CPU wheel when it exists). It then generates embedding sets,
cosine matrices and score sets, runs `insightface_reference.py` in the side venv on them (a
subprocess; arrays go both ways as .npy files) and facekd in this interpreter, and prints the
largest difference of every compared quantity. Exit status 1 when one passes its tolerance:
VAL and FAR 1e-9, margin logits 1e-5 (float64 cases), IJB figures 1e-12.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch

from facekd.evaluate import identification, ijb, verification
from facekd.models import CombinedMargin
from side_venv import side_python

HERE = Path(__file__).resolve().parent
SIDE_VENV = HERE / ".venv"
PINS = ["numpy==1.23.5", "scipy==1.9.2", "scikit-learn==1.2.2"]
LOCAL_TORCH = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
TOLERANCE = {"verification": 1e-9, "margin": 1e-5, "ijb_11": 1e-12, "ijb_1n": 1e-12}


# ---- the side venv ----


# ---- generated cases ----


def pairs_from(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    embeddings = np.empty((2 * len(first), first.shape[1]))
    embeddings[0::2], embeddings[1::2] = first, second
    return embeddings


def separated_set(rng, n_pairs, dim, noise):
    """Genuine partners are noisy copies; impostors are independent: a long FAR = 0 plateau."""
    anchors = rng.normal(size=(n_pairs, dim))
    issame = rng.random(n_pairs) < 0.5
    partners = np.where(issame[:, None], anchors + noise * rng.normal(size=anchors.shape), rng.normal(size=anchors.shape))
    return pairs_from(anchors, partners), issame


def random_set(rng, n_pairs, dim):
    return rng.normal(size=(2 * n_pairs, dim)), rng.random(n_pairs) < 0.5


def tied_set(rng, n_pairs):
    """Few distinct distances (0, 0.8, 2, 3.2 and 4 up to rounding), each shared by many pairs."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    first = vectors[rng.integers(0, len(vectors), n_pairs)] * 3.0
    second = vectors[rng.integers(0, len(vectors), n_pairs)]
    return pairs_from(first, second), rng.random(n_pairs) < 0.5


def antipodal_impostors(rng, n_pairs, dim, close_impostor_pairs):
    """Impostors at distance exactly 4 (never accepted below the threshold 4), except the pairs
    listed, which are ordinary impostors: folds whose training part lacks them never reach FAR 1e-3."""
    anchors = rng.normal(size=(n_pairs, dim))
    issame = np.arange(n_pairs) % 2 == 0
    issame[list(close_impostor_pairs)] = False
    partners = np.where(issame[:, None], anchors + 0.3 * rng.normal(size=anchors.shape), -anchors)
    for i in close_impostor_pairs:
        partners[i] = rng.normal(size=dim)
    return pairs_from(anchors, partners), issame


def exact_target_plateau(rng, final_plateau):
    """2200 pairs in 10 folds of 220; fold 0 holds 100 impostors and the other folds 1000, so fold
    0's training FAR moves in steps of exactly 1/1000 = 1e-3, the target. One impostor outside
    fold 0 lies well below the others; genuine distances spread across the plateau it makes.
    With `final_plateau`, every other impostor is antipodal, so 1e-3 is also the largest FAR."""
    n_pairs, dim = 2200, 64
    issame = np.zeros(n_pairs, dtype=bool)
    issame[:120] = True
    issame[220:] = rng.permutation(np.arange(n_pairs - 220) < 980)
    impostors = np.flatnonzero(~issame)
    anchors = rng.normal(size=(n_pairs, dim))
    partners = anchors + rng.uniform(0.3, 1.5, (n_pairs, 1)) * rng.normal(size=anchors.shape)
    partners[impostors] = -anchors[impostors] if final_plateau else rng.normal(size=(len(impostors), dim))
    closest = impostors[impostors >= 220][:1]
    partners[closest] = anchors[closest] + 0.9 * rng.normal(size=(1, dim))
    return pairs_from(anchors, partners), issame


def single_impostor_halves(rng, dim, n_pairs):
    """Two folds, one impostor in each: every training FAR curve jumps from 0 to 1."""
    anchors = rng.normal(size=(n_pairs, dim))
    issame = np.ones(n_pairs, dtype=bool)
    issame[[n_pairs // 4, 3 * n_pairs // 4]] = False
    partners = anchors + 0.5 * rng.normal(size=anchors.shape)
    partners[~issame] = rng.normal(size=(2, dim))
    return pairs_from(anchors, partners), issame


def verification_cases(rng):
    cases = []
    for noise in (0.3, 0.6, 1.0, 1.5, 2.5):
        cases.append((f"separated_512d_noise{noise}", *separated_set(rng, 600, 512, noise), 10))
    cases.append(("separated_6000_pairs", *separated_set(rng, 6000, 128, 1.2), 10))
    cases.append(("random_64d", *random_set(rng, 600, 64), 10))
    cases.append(("random_64d_607_pairs", *random_set(rng, 607, 64), 10))
    cases.append(("random_5_folds", *random_set(rng, 500, 32), 5))
    cases.append(("random_3_folds", *random_set(rng, 301, 16), 3))
    cases.append(("tied_605", *tied_set(rng, 605), 10))
    cases.append(("tied_1000", *tied_set(rng, 1000), 10))
    cases.append(("tied_4_folds", *tied_set(rng, 400), 4))
    cases.append(("never_reached_in_fold_3", *antipodal_impostors(rng, 600, 64, [181]), 10))
    cases.append(("never_reached_in_folds_0_and_7", *antipodal_impostors(rng, 600, 64, [1, 3, 421, 423]), 10))
    cases.append(("never_reached_anywhere", *antipodal_impostors(rng, 600, 64, []), 10))
    cases.append(("target_on_a_plateau", *exact_target_plateau(rng, final_plateau=False), 10))
    cases.append(("target_on_the_final_plateau", *exact_target_plateau(rng, final_plateau=True), 10))
    cases.append(("single_impostor_halves_40", *single_impostor_halves(rng, 32, 40), 2))
    cases.append(("single_impostor_halves_400", *single_impostor_halves(rng, 128, 400), 2))
    return [(name, "verification", {"nfolds": nfolds}, {"embeddings": emb, "issame": same})
            for name, emb, same, nfolds in cases]


def margin_cases(rng):
    """(s, m1, m2, m3, interclass filtering threshold): ArcFace, CosFace and normalised softmax."""
    settings = [(64.0, 1.0, m2, 0.0, 0.0) for m2 in (0.1, 0.2, 0.3, 0.45, 0.5, 0.7, 1.0, 1.5)]
    settings += [(s, 1.0, 0.5, 0.0, 0.0) for s in (1.0, 16.0, 32.0, 128.0)]
    settings += [(64.0, 1.0, 0.0, m3, 0.0) for m3 in (0.2, 0.35, 0.4)] + [(30.0, 1.0, 0.0, 0.35, 0.0)]
    settings += [(64.0, 1.0, 0.0, 0.0, 0.0), (16.0, 1.0, 0.0, 0.0, 0.0)]
    settings += [(64.0, 1.0, 0.5, 0.0, 0.4), (64.0, 1.0, 0.0, 0.35, 0.4), (64.0, 1.0, 0.0, 0.0, 0.3)]
    cases = []
    for dtype in ("float64", "float32"):
        for s, m1, m2, m3, filtering in settings:
            cosine, labels = margin_inputs(rng, m2)
            params = {"s": s, "m1": m1, "m2": m2, "m3": m3, "dtype": dtype, "interclass_filtering_threshold": filtering,
                      "upstream": rng.normal(size=cosine.shape).tolist()}
            name = f"margin_s{s:g}_m{m1:g}_{m2:g}_{m3:g}_filter{filtering:g}_{dtype}"
            cases.append((name, "margin", params, {"cosine": cosine, "labels": labels}))
    return cases


def margin_inputs(rng, m2):
    """Cosines over [-1, 1], the target column salted with theta + m2 > pi, 1, -1 and the edge."""
    rows, classes = 48, 12
    cosine = rng.uniform(-1.0, 1.0, (rows, classes))
    labels = rng.integers(0, classes, rows)
    labels[rng.random(rows) < 0.15] = -1  # Partial FC rows whose class lives elsewhere
    edge = math.cos(math.pi - m2)
    special = [-1.0, -0.999, -0.97, edge, np.nextafter(edge, 1.0), np.nextafter(edge, -1.0), 0.0, 1.0, 0.999]
    cosine[np.arange(len(special)), labels[: len(special)]] = special
    return cosine, labels


def ijb_11_cases(rng):
    cases = []
    for k in range(10):
        pairs = int(rng.integers(2_000, 60_000))
        labels = (rng.random(pairs) < rng.uniform(0.005, 0.2)).astype(np.int64)
        scores = rng.normal(size=pairs) * 0.15 + labels * rng.uniform(0.2, 0.6)
        if k % 2 == 0:  # coarse scores: many ties, across genuine and impostor pairs
            scores = np.round(scores, 2)
        if k == 9:
            scores = rng.integers(0, 5, pairs) / 4.0
        cases.append((f"ijb11_{k}_{pairs}_pairs", "ijb_11", {}, {"labels": labels, "scores": scores}))
    return cases


def ijb_1n_cases(rng):
    """(subjects, probes, dim, pool): with a pool, features are integer vectors drawn from a pool of
    that many per dimension, so scores tie; without, probes are their mate's feature plus noise."""
    cases = []
    sizes = [(12, 40, 8, 3), (16, 200, 8, 4), (60, 300, 16, 5), (200, 500, 32, 6), (300, 1000, 8, 2),
             (40, 100, 64, 0), (500, 2000, 64, 0), (1000, 1000, 128, 0)]
    for k, (subjects, probes, dim, distinct) in enumerate(sizes):
        gallery_ids = rng.permutation(subjects) * 7 + 3
        mates = rng.integers(0, subjects, probes)
        probe_ids = gallery_ids[mates]
        if distinct:
            pool = rng.integers(0, distinct, (distinct * 4, dim)).astype(np.float64) + np.eye(distinct * 4, dim)
            gallery = pool[rng.integers(0, len(pool), subjects)]
            probe_rows = pool[rng.integers(0, len(pool), probes)]
            copies = rng.random(probes) < 0.33  # a third of the probes are exact copies of their mate
            probe_rows[copies] = gallery[mates[copies]]
        else:
            gallery = rng.normal(size=(subjects, dim))
            probe_rows = gallery[mates] + rng.uniform(0.5, 2.0) * rng.normal(size=(probes, dim))
        cases.append((f"ijb1n_{k}_{subjects}x{probes}", "ijb_1n", {},
                      {"probe_feats": probe_rows, "probe_ids": probe_ids, "gallery_feats": gallery, "gallery_ids": gallery_ids}))
    return cases


# ---- facekd on the same inputs ----


def facekd_verification(inputs, params):
    result = verification.evaluate(inputs["embeddings"], inputs["issame"], nfolds=params["nfolds"])
    return {"tpr": result.tpr, "fpr": result.fpr, "fold_accuracies": result.fold_accuracies, "accuracy": result.accuracy,
            "std": result.std, "val": result.val, "val_std": result.val_std, "far": result.far}


def facekd_margin(inputs, params):
    dtype = getattr(torch, params["dtype"])
    cosine = torch.tensor(inputs["cosine"], dtype=dtype)
    before = cosine.clone()
    margin = CombinedMargin(params["s"], params["m1"], params["m2"], params["m3"],
                            interclass_filtering_threshold=params["interclass_filtering_threshold"])
    logits = margin(cosine, torch.tensor(inputs["labels"]))
    if not torch.equal(cosine, before):
        raise AssertionError("facekd's CombinedMargin modified its input")
    return {"logits": logits.double().numpy()}


def facekd_ijb_11(inputs, params):
    tar, area, _, _ = ijb.tar_at_far(inputs["labels"], inputs["scores"])
    return {"tar": np.array([tar[far] for far in ijb.FAR_TARGETS]), "auc": area}


def facekd_ijb_1n(inputs, params):
    probes, probe_ids = inputs["probe_feats"], inputs["probe_ids"]
    gallery, gallery_ids = inputs["gallery_feats"], inputs["gallery_ids"]
    result = identification.identify(probes, probe_ids, gallery, gallery_ids)
    # each probe alone, for its own rank-1/5/10 hits
    alone = [identification.identify(probes[i : i + 1], probe_ids[i : i + 1], gallery, gallery_ids).rank_rates
             for i in range(len(probes))]
    return {"rank": np.array([result.rank_rates[k] for k in (1, 5, 10)]),
            "tpir": np.array([result.tpir_at_fpir[f] for f in (0.01, 0.1)]),
            "thresholds": np.array([result.fpir_thresholds[f] for f in (0.01, 0.1)]),
            "hits": np.array([[rates[k] == 1.0 for rates in alone] for k in (1, 5, 10)])}


FACEKD = {"verification": facekd_verification, "margin": facekd_margin, "ijb_11": facekd_ijb_11, "ijb_1n": facekd_ijb_1n}


# ---- running and comparing ----


def write_cases(root: Path, cases) -> None:
    manifest = []
    for name, kind, params, inputs in cases:
        (root / name).mkdir()
        for key, value in inputs.items():
            np.save(root / name / f"{key}.npy", value)
        manifest.append({"name": name, "kind": kind, "params": params})
    (root / "manifest.json").write_text(json.dumps(manifest))


INFORMATIVE = {"rank", "tied_probes", "reference_grad_minus_s", "reference_val", "reference_far"}


def differences(root: Path, name, kind, params, inputs) -> dict[str, float]:
    """Largest absolute difference per output; the INFORMATIVE entries are reported, not judged."""
    ours = FACEKD[kind](inputs, params)
    out = {}
    if kind == "verification":
        out["reference_val"] = float(np.load(root / name / "reference_val.npy"))
        out["reference_far"] = float(np.load(root / name / "reference_far.npy"))
    for key, value in ours.items():
        reference = np.load(root / name / f"reference_{key}.npy")
        if key == "hits":  # rank-k hits of the probes without a tie at the mate's score
            tied = np.load(root / name / "reference_tied.npy")
            out["tied_probes"] = float(np.sum(tied))
            out["untied_hits"] = float(np.sum(value[:, ~tied] != reference[:, ~tied]))
            continue
        out[key] = float(np.max(np.abs(np.asarray(value, dtype=np.float64) - reference), initial=0.0))
    if kind == "margin" and params["dtype"] == "float64":
        # arcface_torch's gradient: s times the upstream gradient wherever the filter kept the logit
        grad = np.load(root / name / "reference_grad.npy")
        upstream = np.asarray(params["upstream"])
        kept = grad != 0
        out["reference_grad_minus_s"] = float(np.max(np.abs(grad[kept] - params["s"] * upstream[kept])))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default=str(LOCAL_TORCH) if LOCAL_TORCH.exists() else "torch==2.13.0",
                        help="pip requirement for torch in the side venv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arcface-torch", type=Path, help="insightface's recognition/arcface_torch folder: the "
                        "margin cases then run its own losses.py (else the reference's transcription of it)")
    args = parser.parse_args()
    python = side_python(SIDE_VENV, PINS, (args.torch,))
    rng = np.random.default_rng(args.seed)
    cases = verification_cases(rng) + margin_cases(rng) + ijb_11_cases(rng) + ijb_1n_cases(rng)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="facekd-reference-") as tmp:
        root = Path(tmp)
        write_cases(root, cases)
        if args.arcface_torch and not (args.arcface_torch / "losses.py").is_file():
            raise SystemExit(f"{args.arcface_torch}: no losses.py, expected insightface's recognition/arcface_torch")
        source = ["--arcface-torch-losses"] if args.arcface_torch else []
        env = dict(os.environ, PYTHONPATH=str(args.arcface_torch.resolve())) if args.arcface_torch else None
        subprocess.run([python, HERE / "insightface_reference.py", root, *source], check=True, env=env)
        environment = json.loads((root / "environment.json").read_text())
        print("reference environment:", ", ".join(f"{k} {v}" for k, v in environment.items()))
        print(f"facekd environment: numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, "
              f"torch {torch.__version__}, python {sys.version.split()[0]}")
        worst: dict[tuple[str, str], float] = {}
        counts: dict[str, int] = {}
        for name, kind, params, inputs in cases:
            diffs = differences(root, name, kind, params, inputs)
            counts[kind] = counts.get(kind, 0) + 1
            line = "  ".join(f"{k} {v:.4g}" for k, v in diffs.items())
            flag = ""
            bar_applies = kind != "margin" or params["dtype"] == "float64"
            for key, value in diffs.items():
                if key in ("reference_val", "reference_far"):
                    continue
                group = kind if bar_applies else f"{kind}_float32"
                worst[group, key] = max(worst.get((group, key), 0.0), value)
                if bar_applies and key not in INFORMATIVE and value > TOLERANCE[kind]:
                    flag, failures = "  <-- above tolerance", failures + 1
            print(f"{name:<48s} {line}{flag}")
    print("\nlargest difference over all cases (tolerance applies to all but the float32 margin cases):")
    for (group, key), value in sorted(worst.items()):
        print(f"  {group:<16s} {key:<24s} {value:.3g}")
    print("cases:", ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    print("RESULT:", "all within tolerance" if failures == 0 else f"{failures} differences above tolerance")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
