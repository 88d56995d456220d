"""Scaling on CPU: 1 against 2 gloo processes, for plain training (Partial FC) and for distillation
(kd under Partial FC, teacher served from the sharded cache), at one global batch.

Each configuration runs `--steps` optimiser steps after `--warmup`, and reports the median step:
- `ddp`: the engine's step as it runs (DDP overlaps the gradient all-reduce with the backward pass);
- the split of an instrumented step: `data` (the next batch), `compute` (forward and backward with
  DDP's sync off, Partial FC's own collectives included), `all-reduce` (the same gradients reduced in
  one flat buffer afterwards, as DDP's buckets would: the cost that overlap can hide at best).
Efficiency = global images/s of 2 processes / (2 x images/s of 1 process), both at one thread per
process; 1 process at 2 threads is the other baseline on this 2-core machine.

    python benchmarks/bench_scale.py [--work DIR] [--steps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from facekd.data import RecordIODataset
from facekd.data.training import TrainSamples
from facekd.distill.cache import TeacherCache
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.logit_kd import LogitOptions
from facekd.distill.methods.kd import HintonKD
from facekd.distill.teacher import EMBEDDING, Teacher
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin
from facekd.models.partial_fc import PartialFC
from facekd.train import distributed as dist
from facekd.train.task import ClassificationTask

SIZE = 40
STUDENT = {"width": 0.125, "num_features": 128, "fcn": True, "input_size": SIZE}
TEACHER = {"width": 0.25, "num_features": 128, "fcn": True, "input_size": SIZE}
FINGERPRINT = {"bench_scale": 1}


def build_task(mode: str, samples: TrainSamples, cache_root: Path, world: dist.World) -> torch.nn.Module:
    torch.manual_seed(0)
    margin = CombinedMargin(32.0, 1.0, 0.5, 0.0)
    if mode == "train":
        backbone = build_backbone("r18", **STUDENT)
        head = PartialFC(STUDENT["num_features"], samples.num_classes, margin)
        return ClassificationTask(backbone, head, SIZE, backbone_spec=("r18", STUDENT))
    teacher = Teacher(build_backbone("r18", **TEACHER), input_size=SIZE,
                      centres=torch.randn(samples.num_classes, TEACHER["num_features"]))
    setup = DistillSetup(teacher=teacher, student=StudentSpec("r18", dict(STUDENT), SIZE),
                         num_classes=samples.num_classes, margin=(32.0, 1.0, 0.5, 0.0), options=LogitOptions(),
                         out_dir=cache_root, partial_fc=True)
    task = HintonKD.create(setup)
    cache = TeacherCache.open(cache_root, FINGERPRINT)
    if cache is None:  # every rank builds its part (collective)
        cache = TeacherCache.build(cache_root, teacher, samples, frozenset({EMBEDDING}), FINGERPRINT,
                                   batch_size=128, progress=False, rank=world.rank, world_size=world.size)
    task.use_cache(cache)
    return task


def batches(samples: TrainSamples, per_rank: int, world: dist.World, steps: int):
    sampler = dist.GlobalBatchSampler(len(samples), per_rank, world=world, seed=0, batches=steps)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=sampler, num_workers=0)
    for batch in loader:
        batch["flipped"] = torch.zeros(len(batch["label"]), dtype=torch.bool)
        yield batch


def flat_all_reduce(task: torch.nn.Module, world: dist.World) -> None:
    """Average the synchronised gradients in one flat buffer (DDP's reduction, without overlap)."""
    ignored = set(task.ddp_ignored())
    grads = [p.grad for name, p in task.named_parameters() if p.grad is not None and name not in ignored]
    if world.size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def measure(mode: str, data: Path, cache_root: Path, global_batch: int, steps: int, warmup: int,
            world: dist.World) -> dict[str, float]:
    samples = TrainSamples(RecordIODataset(data))
    task = build_task(mode, samples, cache_root, world)
    model = dist.wrap(task, world)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.01, momentum=0.9)
    per_rank = global_batch // world.size
    timings: dict[str, list[float]] = {"ddp": [], "data": [], "compute": [], "all-reduce": []}
    for instrumented in (False, True):
        source = batches(samples, per_rank, world, warmup + steps)
        for step in range(warmup + steps):
            dist.barrier()
            start = time.perf_counter()
            batch = next(source)
            loaded = time.perf_counter()
            context = model.no_sync() if instrumented and world.size > 1 else contextlib.nullcontext()
            with context:
                losses = model(batch)
                sum(value for name, value in losses.items() if name.startswith("loss")).backward()
            computed = time.perf_counter()
            if instrumented:
                flat_all_reduce(task, world)
            reduced = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= warmup:
                if instrumented:
                    timings["data"].append(loaded - start)
                    timings["compute"].append(computed - loaded)
                    timings["all-reduce"].append(reduced - computed)
                else:
                    timings["ddp"].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in timings.items()}


def run_rank(rank: int, world_size: int, port: int, threads: int, args: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    world = dist.init_world("cpu")
    result = measure(world=world, **args)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.close_world(world)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configuration(mode: str, world_size: int, threads: int, args: dict, work: Path) -> dict[str, float]:
    out = work / f"{mode}-{world_size}x{threads}.json"
    if world_size == 1:
        torch.set_num_threads(threads)
        out.write_text(json.dumps(measure(world=dist.World(0, 1, torch.device("cpu")), **args)))
    else:
        mp.spawn(run_rank, args=(world_size, free_port(), threads, args, str(out)), nprocs=world_size, join=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the synthetic set and the cache")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=128)
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    data = work / "synth" / "train"
    if not (data / "train.rec").is_file():
        subprocess.run([sys.executable, "-m", "facekd", "synth", "--out", str(work / "synth"), "--identities", "400",
                        "--images-per-identity", "16", "--size", str(SIZE), "--verify-pairs", "20"],
                       check=True, stdout=subprocess.DEVNULL)
    print(f"bench_scale: r18 w0.125 {SIZE} px, 400 identities, global batch {options.global_batch}, "
          f"median of {options.steps} steps after {options.warmup}; work in {work}", flush=True)
    print("\n| run | processes x threads | step (ms) | img/s | efficiency | data (ms) | compute (ms) | all-reduce (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in ("train", "distill"):
        args = {"mode": mode, "data": data, "cache_root": work / "cache", "global_batch": options.global_batch,
                "steps": options.steps, "warmup": options.warmup}
        results = {setup: configuration(mode, *setup, args, work) for setup in ((1, 1), (1, 2), (2, 1))}
        single = options.global_batch / results[(1, 1)]["ddp"]
        for (world_size, threads), result in results.items():
            rate = options.global_batch / result["ddp"]
            efficiency = rate / (world_size * single) if threads == 1 else rate / (threads * single)
            label = "train (Partial FC)" if mode == "train" else "distill (kd, Partial FC, cached teacher)"
            print(f"| {label} | {world_size} x {threads} | {result['ddp'] * 1e3:.1f} | {rate:.0f} | {efficiency:.2f} | "
                  f"{result['data'] * 1e3:.1f} | {result['compute'] * 1e3:.1f} | {result['all-reduce'] * 1e3:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
