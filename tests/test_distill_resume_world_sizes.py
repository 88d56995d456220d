"""Distillation under Partial FC resumes on another world size: 2 processes, stopped mid-epoch, then 1,
stopped in the next epoch, then 2, at a fixed global batch, ends with the weights of an uninterrupted
2-process run (kd: sharded student centres and
their momentum; adadistill: sharded EMA centres)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from facekd.distill.logit_kd import LogitOptions
from facekd.distill.losses import HintonKDLoss
from facekd.distill.methods.adadistill import AdaDistill, AdaptiveCentreLoss
from facekd.distill.methods.kd import HintonKD
from facekd.distill.teacher import Teacher
from facekd.models.backbone import BackboneSpec
from facekd.models.heads import CombinedMargin
from facekd.models.partial_fc import ClassShard, PartialFC
from facekd.train import checkpoint as ckpt
from facekd.train.distributed import close_world, init_world
from facekd.train.engine import Trainer, seed_everything
from test_collectives import free_port
from train_helpers import TinyTask, samples, tiny_config

CLASSES, EMBEDDING, GLOBAL_BATCH = 5, 8, 8


def tiny_network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    network = TinyTask(batch_norm=False).backbone  # no BatchNorm: its statistics depend on the split
    network.spec = BackboneSpec("tiny", {"num_features": EMBEDDING})
    return network


def distiller(method: str) -> nn.Module:
    """The method on this process's class shard (head.partial_fc), from fixed seeds."""
    seed_everything(3)
    teacher = Teacher(tiny_network(1), input_size=8, centres=torch.randn(CLASSES, EMBEDDING))
    shard = ClassShard.of_process_group(CLASSES)
    margin = CombinedMargin(16.0, 1.0, 0.3, 0.0)
    if method == "kd":
        torch.manual_seed(4)
        head = PartialFC(EMBEDDING, CLASSES, margin)
        head.load_full_centres(torch.randn(CLASSES, EMBEDDING))  # the same start on any world size
        return HintonKD(tiny_network(2), head, HintonKDLoss(2.0, sharded=True), teacher, options=LogitOptions(),
                        input_size=8, num_classes=CLASSES, shard=shard)
    torch.manual_seed(5)
    loss = AdaptiveCentreLoss(CLASSES, EMBEDDING, margin, shard=shard)
    return AdaDistill(tiny_network(2), loss, teacher, backbone_spec=("tiny", {}), input_size=8)


def train(method: str, out: Path, world_size: int, stop_after: int = 0) -> None:
    """3 epochs of 8 steps at a global batch of 8, resumed from `out` if it holds a checkpoint;
    with `stop_after`, a SIGTERM after that many steps stops it as a user would (checkpoint, exit)."""
    config = tiny_config(out, batch_size=GLOBAL_BATCH // world_size, flip=False, epochs=3,
                         resume=(out / "checkpoint.pt").is_file())
    world = init_world("cpu")  # before the distiller: its shards follow the process group
    task = distiller(method)
    if stop_after:
        calls = []

        def stop(module, inputs):
            calls.append(1)
            if len(calls) == stop_after:
                os.kill(os.getpid(), signal.SIGTERM)

        task.register_forward_pre_hook(stop)
    Trainer(task, samples(64, num_classes=CLASSES), config, world=world).fit()


def run_rank(rank: int, port: int, root: str, phase: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    for method in ("kd", "adadistill"):
        if phase == "first":
            train(method, Path(root) / method / "uninterrupted", 2)
            train(method, Path(root) / method / "resumed", 2, stop_after=5)
        else:
            train(method, Path(root) / method / "resumed", 2)
    close_world(init_world("cpu"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    mp.spawn(run_rank, args=(free_port(), str(root), "first"), nprocs=2, join=True)  # 2 processes: steps 1-5
    for method in ("kd", "adadistill"):  # 1 process: steps 6-13, across the end of epoch 1
        assert ckpt.load(root / method / "resumed" / "checkpoint.pt")["step"] == 5
        train(method, root / method / "resumed", 1, stop_after=8)
        state = ckpt.load(root / method / "resumed" / "checkpoint.pt")
        assert state["world_size"] == 1 and state["step"] == 13
    mp.spawn(run_rank, args=(free_port(), str(root), "last"), nprocs=2, join=True)  # 2 processes: to step 24
    return root


@pytest.mark.parametrize("method, sharded", [("kd", "head.weight"), ("adadistill", "centre_loss.centres")])
def test_two_one_two_processes_end_where_an_uninterrupted_run_does(runs, method, sharded):
    resumed = ckpt.load(runs / method / "resumed" / "checkpoint.pt")
    uninterrupted = ckpt.load(runs / method / "uninterrupted" / "checkpoint.pt")
    assert resumed["world_size"] == 2 and resumed["epoch"] == uninterrupted["epoch"] == 3
    assert resumed["step"] == uninterrupted["step"] == 24
    assert resumed["shards"] == {sharded: {"rows": [3, 2], "total": CLASSES}}
    assert resumed["task"][sharded].shape == (CLASSES, EMBEDDING)  # gathered whole
    for name, value in uninterrupted["task"].items():
        torch.testing.assert_close(resumed["task"][name], value, rtol=0, atol=1e-5, msg=name)
    start = distiller(method).state_dict()
    assert any(not torch.allclose(start[name], value) for name, value in uninterrupted["task"].items())
