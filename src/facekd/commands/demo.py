"""The main job on the embedded default data, with no arguments needed.

Generates the synthetic face benchmark, trains a teacher (or reuses the one an earlier demo left
in --out), distils one student with each seed method (resolution, transfer, neurons,
shrinkteanet, margin) plus a no-teacher baseline, evaluates all of them on the held-out pairs and
the 1:N split, and writes OUT/report.md, OUT/roc.png and OUT/accuracy_vs_flops.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "the whole story on the synthetic benchmark: teacher, one student per seed method, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("facekd-demo"), help="output folder (default: facekd-demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller benchmark and shorter training (about 3 min)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from facekd.demo import demo_plan, run_demo
    from facekd.runtime import pick_device

    report = run_demo(args.out, demo_plan(args.quick), device=pick_device(args.device))
    print(report.read_text())
    print(f"report: {report}")
    return 0
