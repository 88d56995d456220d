"""Compare the seed methods on the synthetic benchmark: mean and std over student seeds.

One teacher (the demo's) is trained once; every student of the demo plan, plus `resolution`
(KT+KD) at three input resolutions, is trained once per seed with the same budget, and each is
scored on the held-out pairs and the 1:N split. The no-teacher baselines come from the same run,
so the printed differences are measured against a baseline of the same machine and moment.

    python benchmarks/bench_methods.py --out runs/bench_methods --seeds 0 1 2 [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from facekd.demo import Network, StudentRun, demo_plan, ensure_data, evaluate_network, train_student, train_teacher
from facekd.evaluate.paired import mean_and_std, paired_difference
from facekd.fileio import atomic_write_text
from facekd.runtime import pick_device
from facekd.train.distributed import World


def resolution_sweep(teacher: Network, sizes: list[int]) -> list[StudentRun]:
    return [StudentRun(f"resolution (kt+kd, {size} px)", f"resolution_{size}px",
                       dataclasses.replace(teacher, input_size=size), "resolution", {"mode": "kt+kd"})
            for size in sizes]


def mean_std(values: list[float]) -> str:
    mean, spread = mean_and_std(values)
    return f"{100 * mean:.2f} ± {100 * spread:.2f}"


def versus_baseline(values: list[float], baseline: list[float]) -> str:
    """Seed-paired difference in points with its 95 % t interval; '*' where it excludes zero."""
    diff = paired_difference(values, baseline)
    if diff.pairs < 2:
        return f"{100 * diff.mean:+.2f}"
    return f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]{' *' if diff.resolved else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_methods"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the demo's quick plan (a smoke run, not a result)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 28, 24],
                        help="student input sizes for resolution (kt+kd); the demo teacher runs at 40 px")
    args = parser.parse_args()

    plan = demo_plan(args.quick)
    sweep = resolution_sweep(plan.teacher, args.resolutions)
    students = [run for run in plan.students if run.method != "resolution"] + sweep
    device = pick_device("auto")
    world = World(0, 1, device)
    data = ensure_data(args.out, plan, workers=2)
    teacher, _ = train_teacher(args.out, plan, data, world)
    rows = {"teacher": [evaluate_network("teacher", teacher, data, device, 0.0)]}
    for seed in args.seeds:
        for run in students:
            folder = args.out / f"seed{seed}" / run.folder
            checkpoint, seconds = train_student(run, plan, data, teacher, folder, world,
                                                cache_dir=args.out / "teacher_cache", seed=seed)
            rows.setdefault(run.name, []).append(evaluate_network(run.name, checkpoint, data, device, seconds))

    lines = [f"Seeds {args.seeds}; teacher {plan.teacher.backbone} {plan.teacher.kwargs} at "
             f"{plan.teacher.input_size} px; {plan.student_epochs} student epochs.", "",
             "| model | accuracy (%) | rank-1 (%) | MFLOPs | FLOPs vs teacher | accuracy - baseline, paired (pts, 95 % CI) |",
             "|---|---|---|---|---|---|"]
    teacher_flops = rows["teacher"][0].flops
    baseline = [s.accuracy for s in rows["baseline"]]
    for name, scores in rows.items():
        accuracy = [s.accuracy for s in scores]
        paired = versus_baseline(accuracy, baseline) if len(accuracy) == len(baseline) else "-"
        lines.append(f"| {name} | {mean_std(accuracy)} | {mean_std([s.rank1 for s in scores])} | "
                     f"{scores[0].flops / 1e6:.1f} | {scores[0].flops / teacher_flops:.3f} | {paired} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "summary.md", table)
    atomic_write_text(args.out / "summary.json", json.dumps(
        {name: [{k: v for k, v in dataclasses.asdict(s).items() if k != "curve"} for s in scores]
         for name, scores in rows.items()}, indent=2, default=str))
    print(table)


if __name__ == "__main__":
    main()
