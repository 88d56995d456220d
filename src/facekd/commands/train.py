"""Train a face-recognition network (a teacher or a baseline student) with a margin softmax.

The data is an insightface RecordIO folder, an image folder (one sub-folder per identity) or a
list file of 'path label' lines. Every epoch (and on SIGTERM or Ctrl-C, after the current step)
OUT/checkpoint.pt is written; --resume continues from it exactly. OUT/backbone.pth is the best
backbone on the data.val_bins sets (or the latest without them), OUT/log.jsonl the run's log.
Several processes: `torchrun --nproc_per_node N -m facekd train --config ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train a teacher or a baseline student (ArcFace-style margin softmax, optional Partial FC)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML, e.g. configs/train/synth_teacher.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (overrides train.out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def run(args: argparse.Namespace) -> int:
    import yaml

    from facekd.fileio import atomic_write_text
    from facekd.train.build import bin_evaluator, build_classification_task, open_train_samples
    from facekd.train.config import load_config, to_dict
    from facekd.train.distributed import close_world, init_world
    from facekd.train.engine import Trainer, seed_everything

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"train.out={args.out}")
    if args.resume:
        overrides.append("train.resume=true")
    config = load_config(args.config, overrides)
    world = init_world(config.train.device)
    try:
        seed_everything(config.train.seed + world.rank)
        samples = open_train_samples(config.data)
        task = build_classification_task(config, samples.num_classes)
        evaluator = bin_evaluator(config, world.device) if world.is_main else None
        if world.is_main:
            atomic_write_text(Path(config.train.out) / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        result = Trainer(task, samples, config, world=world, evaluator=evaluator).fit()
    finally:
        close_world(world)
    if world.is_main:
        print(result.summary())
    return 0
