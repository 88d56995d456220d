"""`facekd compare`: train every (run, seed) under one protocol and write the comparison.

One benchmark, one teacher and one teacher-output cache serve every run; every student gets the
same data, budget and evaluation. Finished runs are reused, so a killed compare continues where it
stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from facekd.compare.plan import ComparePlan, Run
from facekd.compare.report import Comparison, RunResult
from facekd.compare.scoring import cached_scores, network_cost
from facekd.compare.training import ensure_data, is_done, student_config, teacher_config, train_config
from facekd.distill.runner import final_checkpoint
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text
from facekd.train.distributed import World


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Progress:
    """One line per run: which, how far, and the time left, estimated from the runs trained so far."""

    def __init__(self, total: int, say: Callable[[str], None]) -> None:
        self.total, self.say = total, say
        self.done = 0
        self.trained_seconds: list[float] = []
        self.started = time.perf_counter()

    def start(self, run: Run, seed: int, epochs: int, reused: bool) -> None:
        self.done += 1
        left = self.total - self.done + 1
        eta = ""
        if self.trained_seconds:
            eta = f", about {_minutes(left * sum(self.trained_seconds) / len(self.trained_seconds))} left"
        action = "reusing the finished run" if reused else f"training {epochs} epoch{'s' if epochs != 1 else ''}"
        self.say(f"[{self.done}/{self.total}] {run.label}, seed {seed}: {action} "
                 f"({_minutes(time.perf_counter() - self.started)} elapsed{eta})")

    def finished(self, seconds: float) -> None:
        if seconds > 0:
            self.trained_seconds.append(seconds)


def recorded_seconds(folder: Path, spent: float) -> float:
    """The wall seconds a run took to train: `spent` when it trained now (and kept in
    OUT/train_seconds.json), else what the run that made it recorded."""
    record = folder / "train_seconds.json"
    if spent > 0:
        atomic_write_text(record, json.dumps({"seconds": spent}) + "\n")
        return spent
    return float(json.loads(record.read_text())["seconds"]) if record.is_file() else 0.0


def run_compare(out: Path, plan: ComparePlan, runs: list[Run], seeds: list[int], *, device: torch.device,
                say: Callable[[str], None], synth_workers: int = 2) -> Comparison:
    if not seeds:
        raise ConfigError("--seeds: found none, expected at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: found {seeds}, expected distinct seeds")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = World(0, 1, device)
    data = ensure_data(out, plan, synth_workers, say)

    teacher = teacher_config(plan, data, out)
    teacher_done = is_done(teacher)
    say(f"teacher: {'reusing' if teacher_done else f'training {plan.teacher.epochs} epochs'} -> {teacher.train.out}")
    if not teacher_done:
        train_config(teacher, world)
    teacher_checkpoint = Path(teacher.train.out) / "checkpoint.pt"

    progress = Progress(len(runs) * len(seeds), say)
    results = []
    for run in runs:
        checkpoints, seconds, reused = [], [], []
        for seed in seeds:
            folder = out / "runs" / run.folder / f"seed{seed}"
            config = student_config(plan, run, seed, data, teacher_checkpoint, folder, out / "teacher_cache")
            reused.append(is_done(config))
            progress.start(run, seed, plan.student.epochs, reused[-1])
            spent = 0.0 if reused[-1] else train_config(config, world)
            progress.finished(spent)
            checkpoints.append(final_checkpoint(folder))
            seconds.append(recorded_seconds(folder, spent))
        results.append((run, checkpoints, seconds, reused))

    say("scoring every run on the held-out pairs and the 1:N split")
    teacher_scores = cached_scores(teacher_checkpoint, data, device)
    scored = [RunResult(run, tuple(seeds), tuple(cached_scores(c, data, device) for c in checkpoints),
                        tuple(seconds), tuple(reused)) for run, checkpoints, seconds, reused in results]
    say("measuring FLOPs and latency once per network")
    networks = dict.fromkeys([plan.teacher.network, *(run.network for run in runs)])
    costs = {name: network_cost(plan.networks[name]) for name in networks}
    comparison = Comparison(plan, scored, teacher_scores, costs, time.perf_counter() - started)
    comparison.write(out)
    return comparison
