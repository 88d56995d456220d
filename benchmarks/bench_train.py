"""Training throughput on CPU: the facekd engine against a bare PyTorch loop of the same model.

Both loops train the same ClassificationTask (backbone + ArcFace head) on the same in-memory
112x112 uint8 images with the same DataLoader settings, batch flip, gradient clipping and SGD.
Runs alternate (engine then bare, bare then engine, ...) and the medians are compared, because the
machine is shared. Time is measured from the forward call after the warm-up steps to the last
one, so start-up and the end-of-epoch checkpoint are excluded (they are per epoch, not per step).
A second table measures the engine's fixed host cost per step directly: both loops train a
near-zero-cost task (a linear layer on 8x8 images, batches loaded in the main process so nothing
overlaps) for many steps, so the difference in step time is the engine's own work (schedule, loss
sync and NaN check, logging, progress bar, sampler). That cost does not grow with the model, so
dividing it by each model's bare step time bounds the engine's overhead far more tightly than the
wall-clock ratio, which the machine's noise blurs.
A third table compares bf16 autocast with fp32 inside the engine.

    python benchmarks/bench_train.py [--rounds 3] [--steps 8] [--batch 32] [--width 1.0] [--null-steps 400]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

from facekd.data import transforms
from facekd.data.training import TrainSamples
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.train.config import ExperimentConfig
from facekd.train.engine import Trainer, seed_everything
from facekd.train.task import ClassificationTask

WARMUP = 2
NUM_CLASSES = 1000
NULL_MODEL = "linear"  # the near-zero-cost task of the fixed-cost table
NULL_SIZE = 8


class RandomFaces:
    def __init__(self, count: int, size: int = 112) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, NUM_CLASSES, count).astype(np.int64)
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


class Timed(ClassificationTask):
    """Records the wall-clock and process CPU time of every forward call."""

    def forward(self, batch):
        self.stamps.append((time.perf_counter(), time.process_time()))
        return super().forward(batch)


def make_task(name: str, input_size: int, width: float) -> Timed:
    seed_everything(0)
    if name == NULL_MODEL:
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * input_size * input_size, 512))
        spec = (NULL_MODEL, {})
    else:
        backbone = build_backbone(name, input_size=input_size, width=width)
        spec = (name, backbone.spec.kwargs)
    head = MarginClassifier(512, NUM_CLASSES, CombinedMargin(64.0, 1.0, 0.5, 0.0))
    task = Timed(backbone, head, input_size, backbone_spec=spec)
    task.stamps = []
    return task


def images_per_second(stamps: list[tuple[float, float]], batch: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process).

    On a shared machine the CPU-time rate is the steadier measure of the work each loop does.
    """
    images = (len(stamps) - 1 - WARMUP) * batch
    return tuple(images / (stamps[-1][i] - stamps[WARMUP][i]) for i in (0, 1))


def run_engine(name: str, size: int, width: float, data: TrainSamples, batch: int, workers: int,
               amp: str = "off") -> tuple[float, float]:
    task = make_task(name, size, width)
    config = ExperimentConfig()
    config.schedule.warmup_steps = 2
    train = config.train
    train.epochs, train.batch_size, train.workers, train.amp = 1, batch, workers, amp
    train.log_interval, train.progress = 5, True
    with tempfile.TemporaryDirectory() as out:
        train.out = out
        Trainer(task, data, config).fit()
    return images_per_second(task.stamps, batch)


def run_bare(name: str, size: int, width: float, data: TrainSamples, batch: int,
             workers: int) -> tuple[float, float]:
    task = make_task(name, size, width)
    task.train()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    for step, batch_data in enumerate(loader):
        generator = torch.Generator().manual_seed(step)
        batch_data["image"], batch_data["flipped"] = transforms.random_flip(batch_data["image"], generator)
        loss = task(batch_data)["loss_cls"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.backbone.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return images_per_second(task.stamps, batch)


def alternate(rounds: int, first, second) -> tuple[list, list]:
    """Call `first` and `second` `rounds` times each, swapping their order every round, so a drift
    in the machine's load favours neither."""
    results: tuple[list, list] = ([], [])
    for round_number in range(rounds):
        order = [(results[0], first), (results[1], second)]
        for out, run in order[:: 1 if round_number % 2 == 0 else -1]:
            out.append(run())
    return results


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="steps per run, the first 2 untimed")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", default="mbf:112,r18:112,mbf:64,r18:64", help="name:input_size,...")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier of every model")
    parser.add_argument("--null-steps", type=int, default=400,
                        help="steps per run of the fixed-cost table (0 skips it)")
    parser.add_argument("--amp-models", default="mbf:112", help="models of the bf16-vs-fp32 table")
    args = parser.parse_args()
    data = TrainSamples(RandomFaces(args.batch * args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.steps} steps per run, {args.rounds} rounds, {args.workers} loader worker(s), width {args.width}")
    print(f"{'model':10} {'engine img/s':>13} {'bare img/s':>11} {'engine/bare':>12} {'(CPU time)':>11}")
    bare_step_seconds = {}
    for item in args.models.split(","):
        name, size = item.split(":")
        engine, bare = alternate(
            args.rounds,
            lambda: run_engine(name, int(size), args.width, data, args.batch, args.workers),
            lambda: run_bare(name, int(size), args.width, data, args.batch, args.workers))
        (engine_wall, engine_cpu), (bare_wall, bare_cpu) = medians(engine), medians(bare)
        bare_step_seconds[item] = args.batch / bare_wall
        print(f"{name + '@' + size:10} {engine_wall:13.1f} {bare_wall:11.1f} {engine_wall / bare_wall:12.3f} "
              f"{engine_cpu / bare_cpu:11.3f}", flush=True)

    if args.null_steps:
        null_data = TrainSamples(RandomFaces(args.batch * args.null_steps, NULL_SIZE))
        engine, bare = alternate(
            args.rounds,
            lambda: run_engine(NULL_MODEL, NULL_SIZE, 1.0, null_data, args.batch, workers=0),
            lambda: run_bare(NULL_MODEL, NULL_SIZE, 1.0, null_data, args.batch, workers=0))
        step_ms = [[1000 * args.batch / wall for wall, _ in runs] for runs in (engine, bare)]
        extra_ms = statistics.median(e - b for e, b in zip(*step_ms))
        print(f"\nfixed host cost per step ({NULL_MODEL} task on {NULL_SIZE}x{NULL_SIZE} images, "
              f"{args.null_steps} steps, {args.rounds} rounds): engine {statistics.median(step_ms[0]):.3f} ms, "
              f"bare {statistics.median(step_ms[1]):.3f} ms, engine extra {extra_ms:.3f} ms "
              f"(median of per-round differences; per round: "
              + ", ".join(f"{e - b:+.3f}" for e, b in zip(*step_ms)) + ")")
        print(f"{'model':10} {'bare step ms':>13} {'extra / step':>13}")
        for item, seconds in bare_step_seconds.items():
            name, size = item.split(":")
            print(f"{name + '@' + size:10} {1000 * seconds:13.1f} {extra_ms / (1000 * seconds):13.5f}")

    amp_models = [item for item in args.amp_models.split(",") if item]  # "" skips the bf16 table
    if amp_models:
        print(f"\n{'model':10} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10} {'(CPU time)':>11}")
    for item in amp_models:
        name, size = item.split(":")
        fp32, bf16 = alternate(
            args.rounds,
            lambda: run_engine(name, int(size), args.width, data, args.batch, args.workers, amp="off"),
            lambda: run_engine(name, int(size), args.width, data, args.batch, args.workers, amp="bf16"))
        (fp32_wall, fp32_cpu), (bf16_wall, bf16_cpu) = medians(fp32), medians(bf16)
        print(f"{name + '@' + size:10} {fp32_wall:11.1f} {bf16_wall:11.1f} {bf16_wall / fp32_wall:10.3f} "
              f"{bf16_cpu / fp32_cpu:11.3f}", flush=True)


if __name__ == "__main__":
    main()
