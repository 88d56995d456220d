"""The training loop shared by teacher, baseline and distillation training.

It knows nothing of any method: a `Task` turns a batch into named losses, the engine sums those
whose name starts with "loss" and takes care of optimisation, AMP, schedule, distribution,
logging, evaluation and checkpoints. Resume is exact: batches come from a seeded per-epoch
permutation, flips from a generator seeded by (seed, batch), and RNG states are checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facekd.data import transforms
from facekd.errors import ConfigError, FacekdError
from facekd.fileio import remove_orphan_temporaries
from facekd.models.loading import save_backbone
from facekd.train import checkpoint as ckpt
from facekd.train import distributed as dist
from facekd.train.balanced import IdentityGroups
from facekd.train.config import ExperimentConfig, TrainConfig, to_dict
from facekd.train.runlog import RunLog
from facekd.train.schedule import attach, make_schedule
from facekd.train.task import Task

logger = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], dict[str, float]]  # backbone -> {set name: accuracy}
CHECKPOINT_NAME = "checkpoint.pt"
# backbone.pth is always the latest weights (the last epoch once training ends), as arcface_torch
# saves its model; backbone_best.pth is the best on data.val_bins. Report test sets with the last one:
# selecting on the sets one reports inflates every number.
LAST_BACKBONE_NAME = "backbone.pth"
BEST_BACKBONE_NAME = "backbone_best.pth"


class TrainingDiverged(FacekdError):
    """A loss became NaN or infinite."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    interrupted: bool
    best_score: float | None
    checkpoint: Path

    def summary(self) -> str:
        """One line for the end of a run: how it ended, where, and the best accuracy if evaluated."""
        state = "stopped" if self.interrupted else "finished"
        best = "" if self.best_score is None else f", best mean verification accuracy {self.best_score:.4f}"
        return f"{state} at step {self.step} (epoch {self.epoch}){best}; checkpoint {self.checkpoint}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. `auto`: fp16 on CUDA, off on CPU
    (bf16 autocast is slower than fp32 on CPUs without AMX; see docs/benchmarks.md)."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp: fp16 needs a CUDA device, this run is on {device}; use bf16 or off")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def build_optimizer(task: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    params = [p for p in task.parameters() if p.requires_grad]
    optim = config.optim
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                               weight_decay=optim.weight_decay, nesterov=optim.nesterov)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


def batches_per_epoch(num_samples: int, train: TrainConfig, world_size: int) -> int:
    """Training forward passes (micro-batches) per epoch: a whole number of optimizer steps."""
    return num_samples // (train.images_per_batch * world_size) // train.grad_accum * train.grad_accum


def flip_seed(seed: int, batch: int, rank: int) -> int:
    return (seed * 1_000_003 + batch) * 1009 + rank


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which finishes its step and checkpoints
    (a terminal sends SIGINT to the whole process group, workers included)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopRequest:
    """SIGTERM or Ctrl-C: finish the current step, checkpoint, exit. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, task: Task, dataset: Dataset, config: ExperimentConfig, *,
                 world: dist.World | None = None, evaluator: Evaluator | None = None) -> None:
        self.config = config
        self.world = world or dist.World(0, 1, torch.device("cpu"))
        self.device = self.world.device
        self.task = task.to(self.device)
        self.model = dist.wrap(self.task, self.world)
        self.evaluator = evaluator
        self.out_dir = Path(config.train.out)
        train = config.train
        self.grad_accum = train.grad_accum
        self.batches_per_epoch = batches_per_epoch(len(dataset), train, self.world.size)
        self.steps_per_epoch = self.batches_per_epoch // self.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size: {len(dataset)} samples make no full step of {train.images_per_batch} x "
                f"{self.world.size} processes x {self.grad_accum} accumulation"
            )
        self.optimizer = build_optimizer(self.task, config)
        self.schedule = make_schedule(config.schedule, config.optim.lr, self.steps_per_epoch, train.epochs)
        self.scheduler = attach(self.optimizer, self.schedule)
        self.amp_dtype = resolve_amp(train.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16, growth_interval=100)
        groups = None
        if train.balanced_identities > 0:
            if getattr(dataset, "labels", None) is None:
                raise ConfigError(f"train.balanced_identities: the training set ({type(dataset).__name__}) has no "
                                  "`labels`, so identity-balanced batches cannot be drawn")
            groups = IdentityGroups(dataset.labels)
            groups.require(train.balanced_identities * self.world.size)
        self.sampler = dist.GlobalBatchSampler(
            len(dataset), train.batch_size, world=self.world, seed=train.seed, batches=self.batches_per_epoch,
            groups=groups, balanced_identities=train.balanced_identities, balanced_images=train.balanced_images)
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=train.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=train.workers > 0,
            worker_init_fn=ignore_interrupts,
            # Its own generator: starting an epoch must not draw from the global RNG (exact resume).
            generator=torch.Generator().manual_seed(train.seed))
        self.clip_params = [p for p in self.task.backbone.parameters() if p.requires_grad]
        self.step = 0
        self.epoch = 0
        self.epoch_step = 0
        self.best_score: float | None = None
        self.evaluated_step = -1

    # -- state ---------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        """Collective (gathers sharded rows and RNG states); rank 0 writes."""
        task_state, optim_state, shards = ckpt.training_state(self.task, self.optimizer)
        rng = dist.all_gather_objects(ckpt.capture_rng())
        if not self.world.is_main:
            return
        name, kwargs = self.task.backbone_spec
        ckpt.save(self.checkpoint_path, {
            "facekd": ckpt.FORMAT_VERSION,
            "backbone_name": name,
            "backbone_kwargs": dict(kwargs),
            "backbone": {k: v.detach().cpu() for k, v in self.task.backbone.state_dict().items()},
            "task": task_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "global_batch": self.config.train.images_per_batch * self.world.size * self.grad_accum,
            "rng": rng,
            "config": to_dict(self.config),
            "world_size": self.world.size,
            "shards": shards,
            "best": self.best_score,
        })

    def resume(self, path: Path) -> None:
        state = ckpt.load(path)
        ckpt.load_training_state(state, self.task, self.optimizer, str(path))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.best_score = state["step"], state["epoch"], state.get("best")
        global_batch = self.config.train.images_per_batch * self.world.size * self.grad_accum
        # A different global batch (e.g. another world size) resumes at the first unseen batch.
        consumed = state["epoch_step"] * state.get("global_batch", global_batch)
        self.epoch_step = min(consumed // global_batch, self.steps_per_epoch)
        if state["world_size"] == self.world.size:
            ckpt.restore_rng(state["rng"][self.world.rank])
        else:
            seed_everything(self.config.train.seed + self.world.rank + self.step)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        train = self.config.train
        if self.world.is_main:
            for orphan in remove_orphan_temporaries(self.out_dir):  # left by a killed write
                logger.warning("removed %s, the temporary file of an interrupted write", orphan)
        if train.resume:
            self.resume(self.checkpoint_path)
        log = RunLog(self.out_dir) if self.world.is_main else None
        interrupted = False
        try:
            with StopRequest() as stop:
                while self.epoch < train.epochs and not interrupted:
                    # A signal during the end-of-epoch evaluation: that checkpoint is already written.
                    interrupted = self._run_epoch(stop, log) or dist.any_rank(stop.requested)
        finally:
            if log is not None:
                log.close()
        return TrainResult(self.step, self.epoch, interrupted, self.best_score, self.checkpoint_path)

    def _run_epoch(self, stop: StopRequest, log: RunLog | None) -> bool:
        train = self.config.train
        self.model.train()
        self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.grad_accum)
        batches = iter(self.loader)
        bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {self.epoch + 1}/{train.epochs}",
                   disable=not (train.progress and self.world.is_main), dynamic_ncols=True, leave=False)
        images_per_step = train.images_per_batch * self.world.size * self.grad_accum
        window_start, window_steps, window_terms = time.perf_counter(), 0, {}
        try:
            while self.epoch_step < self.steps_per_epoch:
                lr = self.scheduler.get_last_lr()[0]
                terms = self._train_step(batches, lr)
                self.step += 1
                self.epoch_step += 1
                window_steps += 1
                for key, value in terms.items():
                    window_terms[key] = window_terms.get(key, 0.0) + value
                bar.update(1)
                if self.step % train.log_interval == 0:
                    elapsed = time.perf_counter() - window_start
                    means = {k: v / window_steps for k, v in window_terms.items()}
                    rate = window_steps * images_per_step / elapsed
                    bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{rate:.0f}")
                    if log is not None:
                        log.write({"step": self.step, "epoch": self.epoch, "lr": lr, "img_per_s": rate, **means})
                    window_start, window_steps, window_terms = time.perf_counter(), 0, {}
                if train.eval_interval and self.step % train.eval_interval == 0:
                    self._evaluate(log)
                stopping = dist.any_rank(stop.requested)
                if stopping or (train.ckpt_interval and self.step % train.ckpt_interval == 0):
                    self.save_checkpoint()
                if stopping:
                    return True
        finally:
            bar.close()
        self.epoch += 1
        self.epoch_step = 0
        self._evaluate(log)
        self.save_checkpoint()
        return False

    def _train_step(self, batches, lr: float) -> dict[str, float]:
        """One optimiser step over `grad_accum` micro-batches; returns the mean of each term."""
        totals: dict[str, float] = {}
        for micro in range(self.grad_accum):
            batch = self._next_batch(batches, micro)
            sync = micro == self.grad_accum - 1
            context = self.model.no_sync() if not sync and self.world.size > 1 else contextlib.nullcontext()
            with context:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    out = self.model(batch)
                loss, values = self._total_loss(out, lr)
                self.scaler.scale(loss / self.grad_accum).backward()
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value / self.grad_accum
        if self.config.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return totals

    def _next_batch(self, batches, micro: int) -> dict[str, torch.Tensor]:
        batch_number = self.epoch * self.batches_per_epoch + self.epoch_step * self.grad_accum + micro
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
        if self.config.train.flip:
            generator = torch.Generator().manual_seed(flip_seed(self.config.train.seed, batch_number, self.world.rank))
            batch["image"], batch["flipped"] = transforms.random_flip(batch["image"], generator)
        else:
            batch["flipped"] = torch.zeros(batch["image"].shape[0], dtype=torch.bool, device=self.device)
        return batch

    def _total_loss(self, out: dict[str, torch.Tensor], lr: float) -> tuple[torch.Tensor, dict[str, float]]:
        names = [k for k in out if k.startswith("loss")]
        if not names:
            raise ConfigError(f"the task returned {sorted(out)}, but no term whose name starts with 'loss'")
        loss = torch.stack([out[k].float() for k in names]).sum()
        # One host sync per micro-batch: the values are logged and checked for NaN/inf.
        numbers = torch.stack([loss.detach()] + [v.detach().float() for v in out.values()]).tolist()
        values = dict(zip(["loss", *out], numbers))
        for name, value in values.items():
            if not math.isfinite(value) and name != "loss":
                raise TrainingDiverged(f"step {self.step + 1}: {name} is {value} (lr {lr:.6g}); training stopped")
        return loss, values

    def _evaluate(self, log: RunLog | None) -> None:
        """Rank 0 writes backbone.pth and evaluates the backbone; a better mean accuracy writes
        backbone_best.pth."""
        if self.step == self.evaluated_step:  # an eval_interval step that also ends the epoch
            return
        self.evaluated_step = self.step
        if self.world.is_main:
            scores = {}
            if self.evaluator is not None:
                backbone = self.task.backbone
                backbone.eval()
                with torch.no_grad():
                    scores = self.evaluator(backbone)
                backbone.train()
            score = sum(scores.values()) / len(scores) if scores else None
            save_backbone(self.out_dir / LAST_BACKBONE_NAME, self.task.backbone)
            if score is not None and (self.best_score is None or score > self.best_score):
                self.best_score = score
                save_backbone(self.out_dir / BEST_BACKBONE_NAME, self.task.backbone)
            if log is not None and scores:
                log.write({"step": self.step, "epoch": self.epoch, "eval": scores, "best": self.best_score})
                tqdm.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        self.best_score = dist.broadcast_object(self.best_score)
