"""Wang et al.'s initialisation trick on the synthetic benchmark: student from the teacher vs from scratch.

Trains a small teacher on DIR/train, then runs the whole `transfer` pipeline (classification ->
alignment -> verification) twice with the same budget, once with `init: teacher` (copy/compress)
and once with `init: none`, and prints the verification accuracy on DIR/verify/synth_lfw.bin after
each stage, the alignment NME, and the ratio init/none.

    facekd synth --out /tmp/synth --identities 40 --images-per-identity 12 --celeba-identities 60 \
        --celeba-images-per-identity 10
    python benchmarks/bench_transfer_init.py /tmp/synth --out /tmp/bench_transfer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from facekd.data.face_rec import RecordIODataset
from facekd.data.training import TrainSamples
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.methods.transfer import TransferDistiller
from facekd.distill.registry import method_options
from facekd.distill.teacher import Teacher
from facekd.evaluate.embed import evaluate_bin
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.train.config import ExperimentConfig
from facekd.train.engine import Trainer, seed_everything
from facekd.train.task import ClassificationTask

INPUT = 56
TEACHER = {"width": 0.5, "fcn": True, "num_features": 128, "input_size": INPUT}
MARGIN = (32.0, 1.0, 0.3, 0.0)


def config(out: Path, epochs: int, lr: float) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adamw", lr, 5e-4
    cfg.schedule.kind, cfg.schedule.warmup_steps = "cosine", 5
    cfg.train.epochs, cfg.train.batch_size, cfg.train.workers = epochs, 32, 0
    cfg.train.progress, cfg.train.log_interval, cfg.train.amp = False, 10, "off"
    cfg.train.out = str(out)
    return cfg


def accuracy(backbone: torch.nn.Module, bin_path: Path) -> float:
    return float(evaluate_bin(backbone, bin_path, batch_size=64, device="cpu", input_size=INPUT, progress=False).accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("synth", type=Path, help="a `facekd synth` folder")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"))
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--stage-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)
    bin_path = args.synth / "verify" / "synth_lfw.bin"
    samples = TrainSamples(RecordIODataset(args.synth / "train"))
    start = time.perf_counter()
    network = build_backbone("r18", **TEACHER)
    head = MarginClassifier(TEACHER["num_features"], samples.num_classes, CombinedMargin(*MARGIN))
    task = ClassificationTask(network, head, INPUT, backbone_spec=("r18", TEACHER))
    Trainer(task, samples, config(args.out / "teacher_network", args.teacher_epochs, 2e-3)).fit()
    teacher = Teacher(network, input_size=INPUT, centres=head.weight.detach(), source="bench-teacher")
    print(f"teacher r18 {TEACHER}: verification {accuracy(network, bin_path):.4f} ({time.perf_counter() - start:.0f} s)")
    results = {}

    for init in ("teacher", "none"):
        seed_everything(1)
        scores = {}

        def fit(stage_task, stage_samples, stage):
            Trainer(stage_task, stage_samples, config(args.out / f"init_{init}" / stage, args.stage_epochs, 1e-3)).fit()
            if stage != "alignment":
                scores[stage] = accuracy(stage_task.backbone, bin_path)
            return stage_task

        setup = DistillSetup(
            teacher=teacher, student=StudentSpec("r18", dict(TEACHER), INPUT), num_classes=samples.num_classes,
            margin=MARGIN, options=method_options("transfer", {"init": init, "width_rates": [0.5]}), out_dir=args.out / f"init_{init}",
            extra_data={"attributes": args.synth / "celeba"},
        )
        begin = time.perf_counter()
        summary = TransferDistiller.run_pipeline(setup, fit, samples)
        scores["alignment"] = summary["student"]["alignment"]
        scores["seconds"] = time.perf_counter() - begin
        results[init] = scores
        print(f"init={init}: {json.dumps(scores)}")

    for stage in ("classification", "verification"):
        ratio = results["teacher"][stage] / results["none"][stage]
        print(f"{stage}: verification accuracy init=teacher / init=none = {ratio:.3f}")
    nme = results["teacher"]["alignment"]["nme_student"] / results["none"]["alignment"]["nme_student"]
    print(f"alignment: NME init=teacher / init=none = {nme:.3f} (lower is better)")


if __name__ == "__main__":
    main()
