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

HELP = "distil a student from a frozen teacher (--method resolution|transfer|neurons|shrinkteanet|margin|...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="experiment YAML, e.g. configs/distill/synth_margin.yaml")
    parser.add_argument("--method", default=None, help="distillation method (see --list-methods)")
    parser.add_argument("--teacher", default=None, help="facekd checkpoint, insightface backbone.pth or .onnx")
    parser.add_argument("--teacher-head", default=None, help="class centres (C x D) for a backbone.pth teacher")
    parser.add_argument("--student", default=None, help="student architecture, e.g. mbf, r18")
    parser.add_argument("--input-size", type=int, default=None, help="student input resolution in pixels")
    parser.add_argument("--data", default=None, help="training data: RecordIO folder, image folder or list file")
    parser.add_argument("--val", action="append", default=[], help="verification .bin evaluated each epoch (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (overrides train.out)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 or --set \"distill.options={weight: 2}\" (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--list-methods", action="store_true", help="print the available methods and exit")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "distill.method": args.method, "teacher.path": args.teacher, "teacher.head": args.teacher_head,
        "model.backbone": args.student, "model.input_size": args.input_size, "data.train": args.data,
        "train.out": None if args.out is None else str(args.out),
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.val:
        overrides.append(f"data.val_bins=[{', '.join(args.val)}]")
    if args.resume:
        overrides.append("train.resume=true")
    return overrides + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    import tempfile

    import yaml

    from facekd.distill.base import available_methods
    from facekd.distill.config import DistillExperimentConfig
    from facekd.distill.runner import distill
    from facekd.fileio import atomic_write_text
    from facekd.train.config import load_config, to_dict
    from facekd.train.distributed import close_world, init_world
    from facekd.train.engine import seed_everything

    if args.list_methods:
        print("\n".join(available_methods()))
        return 0
    overrides = flag_overrides(args)
    if args.config is not None:
        config = load_config(args.config, overrides, schema=DistillExperimentConfig)
    else:
        with tempfile.TemporaryDirectory() as folder:
            empty = Path(folder) / "flags.yaml"
            empty.write_text("{}\n")
            config = load_config(empty, overrides, schema=DistillExperimentConfig)
    world = init_world(config.train.device)
    try:
        seed_everything(config.train.seed + world.rank)
        if world.is_main:
            atomic_write_text(Path(config.train.out) / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        result = distill(config, world)
    finally:
        close_world(world)
    if world.is_main:
        print(result.summary())
    return 0
