"""Compare distillation methods under one protocol, over several seeds.

Generates the plan's synthetic benchmark, trains one teacher, then trains every run (a method, or
the no-teacher baseline, on a student network) once per seed with the same student, data, budget
and evaluation, and writes OUT/compare.md, OUT/compare.json and OUT/compare.png: mean ± std over
seeds of accuracy, TAR@FAR and rank-1, FLOPs and latency, and each method's paired difference to the
baseline of its network with a 95 % interval. Finished runs are reused: rerun the same command to
continue a killed compare.

Runs are named METHOD[:option=value...][@NETWORK]: e.g. margin, neurons:lam=0,
resolution:mode=kt@low_res; `baseline` trains the student without a teacher.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train several methods x seeds under one protocol; table with paired intervals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=None, metavar="RUN",
                        help="runs, comma- or space-separated (default: the plan's methods); every method "
                             "`facekd distill --list-methods` shows, plus baseline")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default: 0 1 2)")
    parser.add_argument("--plan", default="default",
                        help="quick (a smoke run, ~3 min per seed), default (the calibrated benchmark) or a plan "
                             "YAML file (see facekd/presets/compare_default.yaml)")
    parser.add_argument("--out", type=Path, default=Path("facekd-compare"), help="output folder (default: facekd-compare)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def say(message: str) -> None:
    print(f"[facekd compare] {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    from facekd.compare.plan import load_plan
    from facekd.compare.runner import run_compare
    from facekd.runtime import pick_device

    plan = load_plan(args.plan)
    entries = [e for item in (args.methods or plan.methods) for e in item.split(",") if e.strip()]
    runs = plan.runs(entries)
    comparison = run_compare(args.out, plan, runs, list(args.seeds), device=pick_device(args.device), say=say)
    print(comparison.markdown())
    print(f"report: {args.out / 'compare.md'}")
    return 0
