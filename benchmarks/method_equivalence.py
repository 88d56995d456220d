"""Fingerprint every distillation method, to show a refactor changed no number.

Each method trains a tiny student for a few steps through the `facekd distill` command (one
thread, teacher cache off, fixed seed) on a tiny synthetic set; the fingerprint is the SHA-256
of the trained student's state and every logged loss. Run it on two checkouts and compare:

  PYTHONPATH=OLD/src python benchmarks/method_equivalence.py --work /tmp/eq --out old.json
  PYTHONPATH=NEW/src python benchmarks/method_equivalence.py --work /tmp/eq --out new.json
  python benchmarks/method_equivalence.py --compare old.json new.json

The data and the teacher are built once under --work and reused, so both runs see the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

# Student r18 at width 1/8, 128-d; the teacher is the same network family, wider and FCN, so every
# method's constraint (equal embedding size, stage routing, resolution's same architecture) holds.
TEACHER_KWARGS = "{width: 0.25, num_features: 128, fcn: true}"
STUDENT = ["--student", "r18", "--input-size", "32", "--set", "model.kwargs={width: 0.125, num_features: 128}"]
METHODS = {
    "resolution": ["--student", "r18", "--input-size", "24", "--set", f"model.kwargs={TEACHER_KWARGS}"],
    "transfer": STUDENT + ["--set", "distill.options={stages: [classification, alignment, verification]}"],
    "neurons": STUDENT + ["--set", "distill.options={identity_weight: 0.5}"],
}
ALL_METHODS = ("resolution", "transfer", "neurons", "shrinkteanet", "margin", "kd", "fitnet", "rkd", "sp", "cc",
               "darkrank", "ekd", "gkd", "adadistill", "arcdistill", "triplet")
COMMON = ["--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "train.workers=0",
          "--set", "train.progress=false", "--set", "distill.cache=off", "--set", "train.log_interval=1",
          "--set", "schedule.warmup_epochs=0"]
BALANCED = ["--set", "train.balanced_identities=4", "--set", "train.balanced_images=2"]


def facekd(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "facekd", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def prepare(work: Path) -> None:
    if not (work / "data" / "train").is_dir():
        facekd("synth", "--out", str(work / "data"), "--identities", "12", "--images-per-identity", "8",
               "--size", "48", "--verify-identities", "6", "--verify-pairs", "40", "--gallery-identities", "4",
               "--probes-per-identity", "2", "--distractors", "4", "--celeba-identities", "6",
               "--celeba-images-per-identity", "6", "--workers", "1")
    if not (work / "teacher" / "checkpoint.pt").is_file():
        facekd("train", "--config", "configs/train/synth_teacher.yaml", "--set", f"data.train={work / 'data' / 'train'}",
               "--out", str(work / "teacher"), "--set", "data.val_bins=[]", "--set", f"model.kwargs={TEACHER_KWARGS}",
               "--set", "model.backbone=r18", "--set", "model.input_size=32", "--set", "train.epochs=1", "--set", "train.batch_size=32",
               "--set", "train.workers=0", "--set", "train.progress=false")


def fingerprint(out: Path) -> dict:
    import torch

    digest = hashlib.sha256()
    for path in sorted(out.rglob("checkpoint.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)["task"]
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    losses = []
    for path in sorted(out.rglob("log.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            losses.append({k: v for k, v in record.items() if k.startswith("loss")})
    return {"weights_sha256": digest.hexdigest(), "losses": losses}


def run(work: Path, methods: list[str]) -> dict:
    prepare(work)
    results = {}
    for method in methods:
        out = work / "runs" / f"{method}-{os.getpid()}"
        extra = METHODS.get(method, STUDENT)
        if method in ("triplet", "darkrank", "rkd", "sp", "cc", "ekd"):
            extra = extra + BALANCED
        facekd("distill", "--method", method, "--teacher", str(work / "teacher" / "checkpoint.pt"),
               "--data", str(work / "data" / "train"), "--out", str(out), *COMMON, *extra,
               "--set", f"distill.attributes={work / 'data' / 'celeba'}" if method in ("neurons", "transfer")
               else "train.seed=2048")
        results[method] = fingerprint(out)
        print(f"{method}: {results[method]['weights_sha256'][:16]} ({len(results[method]['losses'])} loss records)")
    return results


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    different = [m for m in sorted(set(a) | set(b)) if a.get(m) != b.get(m)]
    for method in sorted(set(a) | set(b)):
        print(f"{method:12s} {'identical' if method not in different else 'DIFFERENT'}")
    print(f"{len(a) - len(different)} of {len(a)} methods bit-identical")
    return 1 if different else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the shared data and teacher")
    parser.add_argument("--out", type=Path, help="fingerprints JSON to write")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    results = run(args.work, args.methods.split(","))
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
