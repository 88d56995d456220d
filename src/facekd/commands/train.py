"""Train a face-recognition network (a teacher or a baseline student) with a margin softmax.

The data is an insightface RecordIO folder, an image folder (one sub-folder per identity) or a
list file of 'path label' lines. Every epoch (and on SIGTERM or Ctrl-C, after the current step)
OUT/checkpoint.pt is written; --resume continues from it exactly. OUT/backbone.pth holds the
latest weights (the last epoch's at the end), OUT/backbone_best.pth the best on the data.val_bins
sets, OUT/log.jsonl the run's log. Report test sets with the last weights, or select on a
validation set that is not reported.
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
    parser.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a previous run")
    parser.add_argument("--skip-bad", action="store_true", help="drop RecordIO records that fail to read (data.skip_bad)")


def train(config, world):
    from facekd.train.build import bin_evaluator, build_classification_task, open_train_samples
    from facekd.train.engine import Trainer

    samples = open_train_samples(config.data)
    task = build_classification_task(config, samples.num_classes)
    evaluator = bin_evaluator(config, world.device) if world.is_main else None
    return Trainer(task, samples, config, world=world, evaluator=evaluator).fit()


def run_in_folder(config, args: argparse.Namespace, fit) -> int:
    """`fit(config, world)` in OUT: claim the folder, keep OUT/config.yaml and OUT/train.log, print the summary."""
    import contextlib

    import yaml

    from facekd.fileio import atomic_write_text
    from facekd.logs import run_log_file
    from facekd.train.config import to_dict
    from facekd.train.distributed import close_world, init_world
    from facekd.train.engine import seed_everything
    from facekd.train.run_folder import claim_run_folder

    out = Path(config.train.out)
    world = init_world(config.train.device)
    try:
        if world.is_main:
            claim_run_folder(out, resume=config.train.resume, overwrite=args.overwrite)
        seed_everything(config.train.seed + world.rank)
        with run_log_file(out) if world.is_main else contextlib.nullcontext():
            if world.is_main:
                atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
            result = fit(config, world)
    finally:
        close_world(world)
    if world.is_main:
        print(result.summary())
    return 0


def run_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of the flags `train` and `distill` share: --out, --resume, --skip-bad."""
    overrides = [] if args.out is None else [f"train.out={args.out}"]
    if args.resume:
        overrides.append("train.resume=true")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    return overrides


def run(args: argparse.Namespace) -> int:
    from facekd.train.config import load_config

    overrides = list(args.overrides) + run_flag_overrides(args)
    return run_in_folder(load_config(args.config, overrides), args, train)
