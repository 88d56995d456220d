"""Pair and triplet distillation with random batches against identity-balanced ones.

EKD and triplet distillation learn from same-identity pairs, which random batches from many
identities hardly contain. On a compare plan's data and teacher, each method trains the plan's
student twice per seed with the same images per step: once from random batches (the baseline,
in the same run) and once with an identity-balanced part (`train.balanced_identities`).

    python benchmarks/bench_balanced.py --out facekd-compare --seeds 0 1

`--out` may be a folder where `facekd compare` (same plan) already ran: its data and teacher are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from facekd.compare.plan import load_plan
from facekd.compare.scoring import cached_scores
from facekd.compare.training import ensure_data, ensure_trained, student_config, teacher_config
from facekd.distill.runner import final_checkpoint
from facekd.runtime import pick_device
from facekd.train.distributed import World

# Per method: the balanced batch (random images, identities, images per identity), the same
# 128 images per step as the plan's random batches. Triplet's reference batches have no random part.
BALANCED = {"ekd": (64, 16, 4), "triplet": (0, 32, 4)}


def distill(method: str, batch: tuple[int, int, int] | None, plan, data: Path, teacher: Path, out: Path,
            world: World, seed: int) -> Path:
    folder = out / f"seed{seed}" / f"{method}_{'balanced' if batch else 'random'}"
    config = student_config(plan, plan.run(method), seed, data, teacher, folder, out / "teacher_cache")
    if batch:
        random, identities, images = batch
        train = dataclasses.replace(config.train, batch_size=random, balanced_identities=identities,
                                    balanced_images=images)
        config = dataclasses.replace(config, train=train)
    ensure_trained(config, world)
    return final_checkpoint(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_balanced"))
    parser.add_argument("--plan", default="default", help="a compare plan: quick, default or a YAML file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    plan = load_plan(args.plan)
    device = pick_device("auto")
    world = World(0, 1, device)
    data = ensure_data(args.out, plan, workers=2, say=print)
    teacher = teacher_config(plan, data, args.out)
    ensure_trained(teacher, world)
    teacher_checkpoint = Path(teacher.train.out) / "checkpoint.pt"
    print(f"{'method':8} {'batches':9} {'accuracy (%)':>14} {'TAR@FAR=1e-2':>13} {'rank-1':>7}   per seed")
    for method, balanced in BALANCED.items():
        means = []  # random, then balanced
        for batch in (None, balanced):
            scores = [cached_scores(distill(method, batch, plan, data, teacher_checkpoint, args.out, world, seed),
                                    data, device) for seed in args.seeds]
            accuracy = [100 * s.accuracy for s in scores]
            tar = statistics.fmean(100 * s.tar["0.01"] for s in scores)
            rank1 = statistics.fmean(100 * s.rank1 for s in scores)
            means.append(statistics.fmean(accuracy))
            label = "random" if batch is None else "{}+{}x{}".format(*batch)
            print(f"{method:8} {label:9} {means[-1]:14.2f} {tar:13.2f} {rank1:7.2f}   "
                  + ", ".join(f"{a:.2f}" for a in accuracy), flush=True)
        print(f"{method:8} balanced - random accuracy: {means[1] - means[0]:+.2f} points")


if __name__ == "__main__":
    main()
