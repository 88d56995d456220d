"""The teacher-output cache's speed-up, measured against the live teacher in the same run.

A compare plan's teacher and student distil with `margin` (which needs the teacher's cosine to
the ground-truth centre) for E epochs twice: once running the teacher every step (cache off),
once with the cache (its one-off build, teacher on the image and its mirror, is included).

    python benchmarks/bench_teacher_cache.py --out runs/bench_cache --epochs 3 [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from facekd.compare.plan import load_plan
from facekd.compare.training import ensure_data, ensure_trained, teacher_config, training_section
from facekd.distill.config import DistillExperimentConfig
from facekd.distill.runner import distill
from facekd.runtime import pick_device
from facekd.train.config import from_dict
from facekd.train.distributed import World
from facekd.train.engine import seed_everything


def timed_run(plan, data: Path, teacher: Path, out: Path, epochs: int, cache: str, world: World) -> float:
    student = plan.networks[plan.run("margin").network]
    raw = training_section(plan, data, student, epochs, out, seed=plan.teacher.seed)
    raw["teacher"] = {"path": str(teacher)}
    raw["distill"] = {"method": "margin", "cache": cache, "cache_dir": str(out / "cache"), "cache_dtype": "float16"}
    config = from_dict(raw, DistillExperimentConfig, source=f"bench cache={cache}")
    shutil.rmtree(out, ignore_errors=True)
    seed_everything(config.train.seed)
    start = time.perf_counter()
    distill(config, world)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cache"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    plan = load_plan("quick" if args.quick else "default")
    world = World(0, 1, pick_device("auto"))
    data = ensure_data(args.out, plan, workers=2, say=print)
    teacher_run = teacher_config(plan, data, args.out)
    ensure_trained(teacher_run, world)
    teacher = Path(teacher_run.train.out) / "checkpoint.pt"
    live = timed_run(plan, data, teacher, args.out / "live", args.epochs, "off", world)
    cached = timed_run(plan, data, teacher, args.out / "cached", args.epochs, "on", world)
    print(f"margin distillation, {args.epochs} epochs: live teacher {live:.1f} s, "
          f"cached teacher (build included) {cached:.1f} s, speed-up {live / cached:.2f}x")


if __name__ == "__main__":
    main()
