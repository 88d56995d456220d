"""SIGKILL `facekd train` at random points (a step, or inside a checkpoint write), resume, and check
that every resumed run ends bit-identical to an uninterrupted one (CPU, one thread).

  python benchmarks/bench_kill.py --kills 20 --work /tmp/kill

The data is a tiny synthetic RecordIO set (24 images, 3 identities), the model a tiny FCN r18,
3 epochs of 6 steps with a checkpoint every 2 steps. Kill points are seeded (--seed). Prints each
kill point with its outcome and the count survived.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import numpy as np

from facekd import kill_points
from facekd.data.face_rec import write_face_rec

STEPS = 18  # 3 epochs x 6 steps


def prepare(work: Path) -> Path:
    rng = np.random.default_rng(0)
    write_face_rec(work / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 8) for k in range(24)])
    config = work / "train.yaml"
    config.write_text(
        f"data: {{train: {work / 'train'}}}\n"
        "model: {backbone: r18, input_size: 16, kwargs: {width: 0.125, depth: 0.25, fcn: true, num_features: 8}}\n"
        "head: {s: 16.0}\noptim: {lr: 0.05}\nschedule: {kind: cosine}\n"
        "train: {epochs: 3, batch_size: 4, workers: 0, log_interval: 1, ckpt_interval: 2, progress: false,\n"
        "        amp: 'off', device: cpu, seed: 7}\n")
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(__file__).resolve().parents[1] / "src"
    shutil.rmtree(args.work, ignore_errors=True)
    config = prepare(args.work)

    def train(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "facekd", "train", "--config", str(config), "--out", str(out), *extra]

    kill_points.run(train(args.work / "reference"), source)
    reference = kill_points.final_weights(args.work / "reference")
    rng = random.Random(args.seed)
    survived = 0
    for kill in range(args.kills):
        out = args.work / f"kill{kill}"
        if rng.random() < 0.5:
            step = rng.randint(1, STEPS - 1)
            point = f"after step {step}"
            killed = kill_points.kill_when(train(out), source, lambda: kill_points.steps_logged(out) >= step)
        else:
            point = "inside a checkpoint write (replacing the previous one)"
            killed = kill_points.kill_when(train(out), source, (out / "checkpoint.pt.paused").exists,
                                           pause="checkpoint.pt+")
        resume = ("--resume",) if (out / "checkpoint.pt").is_file() else ("--overwrite",)
        kill_points.run(train(out, *resume), source)
        differing = kill_points.differing_tensors(kill_points.final_weights(out), reference)
        survived += killed and not differing
        print(f"kill {kill:2d} {point}: {'not reached' if not killed else 'resumed'} "
              f"{'bit-identical' if not differing else f'DIFFERS in {differing[:3]}'}", flush=True)
    print(f"{survived} of {args.kills} kill points resumed bit-identical")
    return 0 if survived == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
