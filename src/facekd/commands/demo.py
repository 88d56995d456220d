"""The main job on the embedded default data, with no arguments needed.

A preset of `facekd compare`: generates the synthetic face benchmark, trains a teacher (or reuses
the one an earlier demo left in --out), distils one student with each seed method (resolution,
transfer, neurons, shrinkteanet, margin) plus the no-teacher baselines, evaluates all of them on
the held-out pairs and the 1:N split, and writes OUT/compare.md, OUT/compare.json and
OUT/compare.png. One seed: for differences with intervals, run `facekd compare` with several.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "the whole story on the synthetic benchmark: teacher, one student per seed method, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("facekd-demo"), help="output folder (default: facekd-demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller benchmark and shorter training (under 3 min)")
    parser.add_argument("--seed", type=int, default=0, help="the students' seed (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from facekd.commands.compare import say
    from facekd.compare.plan import load_plan
    from facekd.compare.runner import run_compare
    from facekd.runtime import pick_device

    plan = load_plan("quick" if args.quick else "default")
    comparison = run_compare(args.out, plan, plan.runs(list(plan.methods)), [args.seed],
                             device=pick_device(args.device), say=say)
    print(comparison.markdown())
    print(f"report: {args.out / 'compare.md'}")
    return 0
