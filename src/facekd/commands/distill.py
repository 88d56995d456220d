"""Distil a student from a frozen teacher with one of facekd's methods.

The config is a training config (data, model = the student, head = its identity loss, optim,
schedule, train) plus `teacher:` and `distill:` sections; see configs/distill/. The flags below
set the common fields without a config file, e.g.

  facekd distill --method margin --teacher runs/teacher/checkpoint.pt --student mbf \\
      --data synth/train --set train.epochs=4

Teacher outputs are cached on disk when the method allows it (distill.cache: auto).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "distil a student from a frozen teacher with one of facekd's methods (see --list-methods)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="experiment YAML, e.g. configs/distill/synth_margin.yaml")
    parser.add_argument("--method", default=None, help="distillation method (see --list-methods)")
    parser.add_argument("--teacher", default=None, help="facekd checkpoint, insightface backbone.pth or .onnx")
    parser.add_argument("--teacher-head", default=None, help="class centres (C x D) for a backbone.pth teacher")
    parser.add_argument("--teacher-centres", default=None, metavar="auto|derived|PATH",
                        help="class centres: auto (the teacher's, else derived from its embeddings: the "
                             "normalised mean per identity), derived (always), or a C x D file (as --teacher-head)")
    parser.add_argument("--student", default=None, help="student architecture, e.g. mbf, r18")
    parser.add_argument("--input-size", type=int, default=None, help="student input resolution in pixels")
    parser.add_argument("--data", default=None, help="training data: RecordIO folder, image folder or list file")
    parser.add_argument("--val", action="append", default=[], help="verification .bin evaluated each epoch (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (overrides train.out)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value at any depth, e.g. --set train.epochs=2 or "
                             "--set distill.options.lam=0.5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a previous run")
    parser.add_argument("--skip-bad", action="store_true", help="drop RecordIO records that fail to read (data.skip_bad)")
    parser.add_argument("--list-methods", action="store_true",
                        help="print each method, what it needs from the teacher and its options, and exit")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    from facekd.commands.train import run_flag_overrides

    flags = {
        "distill.method": args.method, "teacher.path": args.teacher, "teacher.head": args.teacher_head,
        "model.backbone": args.student, "model.input_size": args.input_size, "data.train": args.data,
    }
    if args.teacher_centres in ("auto", "derived"):
        flags["teacher.centres"] = args.teacher_centres
    elif args.teacher_centres is not None:
        flags["teacher.head"] = args.teacher_centres
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.val:
        overrides.append(f"data.val_bins=[{', '.join(args.val)}]")
    return overrides + run_flag_overrides(args) + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from facekd.commands.train import run_in_folder
    from facekd.distill.config import DistillExperimentConfig
    from facekd.distill.registry import describe_methods
    from facekd.distill.runner import distill
    from facekd.train.config import config_from_data, load_config

    if args.list_methods:
        print(describe_methods())
        return 0
    overrides = flag_overrides(args)
    if args.config is not None:
        config = load_config(args.config, overrides, schema=DistillExperimentConfig)
    else:
        config = config_from_data({}, overrides, DistillExperimentConfig, source="facekd distill flags")
    return run_in_folder(config, args, distill)
