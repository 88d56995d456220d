"""Two-process gloo DDP: ranks stay in sync, equal a one-process run, and sharded rows checkpoint whole."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from facekd.models.heads import CombinedMargin
from facekd.models.partial_fc import PartialFC
from facekd.train import checkpoint as ckpt
from facekd.train.distributed import init_world, close_world
from facekd.train.engine import Trainer, seed_everything
from facekd.train.task import ClassificationTask
from train_helpers import TinyTask, samples, task_weights, tiny_config


class ShardedTask(TinyTask):
    """TinyTask plus a row-sharded matrix (as Partial FC centres): rank r holds rows of its shard."""

    def __init__(self, rank: int, world_size: int, rows: int = 5) -> None:
        super().__init__(batch_norm=False)
        per_rank = [rows // world_size + (r < rows % world_size) for r in range(world_size)]
        self.layout = {"offset": sum(per_rank[:rank]), "rows": per_rank[rank], "total": rows}
        generator = torch.Generator().manual_seed(100 + rank)
        # In a submodule, as in a real head (DDP cannot ignore top-level parameters by name).
        self.shard = nn.Module()
        self.shard.centres = nn.Parameter(torch.randn(per_rank[rank], 8, generator=generator))

    def forward(self, batch):
        out = super().forward(batch)
        embeddings = self.backbone(batch["image"].float() / 255)
        out["loss_shard"] = 0.01 * (embeddings @ self.shard.centres.t()).pow(2).mean()
        return out

    def ddp_ignored(self):
        return ["shard.centres"]

    def shard_layout(self):
        return {"shard.centres": self.layout}


def partial_fc_task() -> ClassificationTask:
    """A real ClassificationTask with Partial FC (5 classes: 3 rows on rank 0, 2 on rank 1)."""
    backbone = TinyTask(batch_norm=False).backbone
    return ClassificationTask(backbone, PartialFC(8, 5, CombinedMargin(16.0, 1.0, 0.2, 0.0)), 8,
                              backbone_spec=("tiny", {}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_rank(rank: int, world_size: int, port: int, root: str) -> None:
    """Both 2-process trainings in one spawn (starting processes costs more than training)."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    world = init_world("cpu")
    for name, make_task in (("plain", lambda: TinyTask(batch_norm=False)),
                            ("sharded", lambda: ShardedTask(rank, world_size)),
                            ("partial_fc", partial_fc_task)):
        seed_everything(3)
        task = make_task()
        out = f"{root}/{name}"
        Trainer(task, samples(64), tiny_config(out, batch_size=4, flip=False), world=world).fit()
        torch.save(task_weights(task), f"{out}/rank{rank}.pt")
    close_world(world)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(run_rank, args=(2, free_port(), str(root)), nprocs=2, join=True)
    return root


def rank_weights(out) -> list[dict[str, torch.Tensor]]:
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_equal_one_process_with_the_same_global_batch(ddp_runs, tmp_path):
    rank0, rank1 = rank_weights(ddp_runs / "plain")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"ranks out of sync in {name}"

    seed_everything(3)
    single = TinyTask(batch_norm=False)
    Trainer(single, samples(64), tiny_config(tmp_path, batch_size=8, flip=False)).fit()
    assert ckpt.load(ddp_runs / "plain" / "checkpoint.pt")["world_size"] == 2
    for name, value in task_weights(single).items():
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-5)


def test_sharded_rows_are_gathered_and_resume_on_one_process(ddp_runs):
    out = ddp_runs / "sharded"
    rank0, rank1 = rank_weights(out)
    saved = ckpt.load(out / "checkpoint.pt")
    assert saved["shards"] == {"shard.centres": {"rows": [3, 2], "total": 5}}
    full = torch.cat([rank0["shard.centres"], rank1["shard.centres"]])
    assert torch.equal(saved["task"]["shard.centres"], full)
    assert torch.equal(rank0["backbone.0.weight"], rank1["backbone.0.weight"])

    # One process holds all 5 rows: it resumes with the whole matrix and its whole momentum.
    task = ShardedTask(0, 1)
    trainer = Trainer(task, samples(64), tiny_config(out, batch_size=8, flip=False, epochs=3))
    trainer.resume(out / "checkpoint.pt")
    assert torch.equal(task.shard.centres.detach(), full)
    momentum = trainer.optimizer.state[task.shard.centres]["momentum_buffer"]
    assert momentum.shape == (5, 8) and momentum.abs().sum() > 0
    assert trainer.step == 16 and trainer.epoch == 2 and trainer.epoch_step == 0


def test_partial_fc_run_resumes_on_one_process(ddp_runs):
    out = ddp_runs / "partial_fc"
    rank0, rank1 = rank_weights(out)
    assert rank0["head.weight"].shape == (3, 8) and rank1["head.weight"].shape == (2, 8)
    assert torch.equal(rank0["backbone.0.weight"], rank1["backbone.0.weight"])
    saved = ckpt.load(out / "checkpoint.pt")
    assert saved["shards"] == {"head.weight": {"rows": [3, 2], "total": 5}}
    full = torch.cat([rank0["head.weight"], rank1["head.weight"]])
    assert torch.equal(saved["task"]["head.weight"], full)

    seed_everything(5)
    task = partial_fc_task()  # no process group: one shard of all 5 classes
    trainer = Trainer(task, samples(64), tiny_config(out, batch_size=8, flip=False, epochs=3))
    trainer.resume(out / "checkpoint.pt")
    assert torch.equal(task.head.weight.detach(), full)
    assert trainer.optimizer.state[task.head.weight]["momentum_buffer"].shape == (5, 8)
