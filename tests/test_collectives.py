"""Collectives go through one checking helper, so a tensor on a device the group's backend cannot
serve (a CPU tensor under NCCL alone) fails in one line. Exercised under 2-process gloo with a
simulated CUDA-only backend rule."""

from __future__ import annotations

import ast
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import facekd
from facekd.errors import DistributedError
from facekd.models.heads import CombinedMargin
from facekd.models.partial_fc import PartialFC
from facekd.train import checkpoint as ckpt
from facekd.train import distributed as world_ops

COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list",
               "reduce_scatter", "reduce", "gather", "scatter", "barrier", "all_to_all"}


def test_cuda_runs_get_nccl_for_cuda_and_gloo_for_cpu_tensors():
    assert world_ops.process_group_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert world_ops.process_group_backend(torch.device("cpu")) == "gloo"


def test_no_collective_outside_the_checking_helper():
    """Every torch.distributed collective in src/ is called from train/distributed.py only."""
    package = Path(facekd.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path == package / "train" / "distributed.py":
            continue
        tree = ast.parse(path.read_text())
        torch_names = {"torch.distributed", "torch.distributed.nn", "torch.distributed.nn.functional"}
        for node in ast.walk(tree):  # aliases of torch.distributed in this file
            if isinstance(node, ast.Import):
                torch_names |= {a.asname for a in node.names if a.asname and a.name.startswith("torch.distributed")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
                torch_names |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module == "torch":
                torch_names |= {a.asname or a.name for a in node.names if a.name == "distributed"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and ast.unparse(node.value) in torch_names:
                offenders.append(f"{path.relative_to(package)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expect_refusal(call, what: str) -> str:
    try:
        call()
    except DistributedError as exc:
        return str(exc)
    raise AssertionError(f"{what}: a CPU tensor passed the simulated CUDA-only rule")


def run_rank(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    world = world_ops.init_world("cpu")
    report = {"served": sorted(world_ops.served_devices())}
    # gloo really serves CPU tensors: the helpers work unpatched.
    report["sum"] = world_ops.all_reduce(torch.tensor([rank + 1.0])).item()
    report["gathered"] = [t.item() for t in world_ops.all_gather(torch.tensor([rank]))]
    report["any"] = world_ops.any_rank(rank == 1)

    # Simulate NCCL alone: only CUDA tensors are served. Every path must refuse the CPU tensor.
    world_ops.served_devices = lambda group=None: frozenset({"cuda"})
    head = PartialFC(8, 5, CombinedMargin(16.0, 1.0, 0.2, 0.0))
    messages = [
        expect_refusal(lambda: world_ops.all_reduce(torch.ones(2)), "all_reduce"),
        expect_refusal(lambda: world_ops.all_gather(torch.ones(2)), "all_gather"),
        expect_refusal(lambda: world_ops.all_gather_with_grad(torch.ones(2, requires_grad=True)), "all_gather_with_grad"),
        expect_refusal(lambda: head(torch.randn(4, 8), torch.tensor([0, 1, 2, 3])), "PartialFC"),
        expect_refusal(lambda: ckpt._gather_rows(torch.ones(3, 2), [3, 2]), "checkpoint rows"),
    ]
    report["messages"] = messages
    torch.cuda.current_device = lambda: 0  # no GPU here: only ask where the flag would live
    report["flag_device"] = str(world_ops.collective_device())
    Path(f"{root}/rank{rank}.json").write_text(json.dumps(report))
    world_ops.close_world(world)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("collectives")
    mp.spawn(run_rank, args=(free_port(), str(root)), nprocs=2, join=True)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def test_gloo_serves_cpu_tensors_through_the_helpers(reports):
    for report in reports:
        assert report["served"] == ["cpu", "cuda"]
        assert report["sum"] == 3.0
        assert report["gathered"] == [0, 1]
        assert report["any"] is True


def test_a_cuda_only_backend_refuses_every_cpu_collective_in_one_line(reports):
    for report in reports:
        assert len(report["messages"]) == 5
        for message in report["messages"]:
            assert "found a cpu tensor" in message and "['cuda']" in message and "\n" not in message
        assert report["flag_device"] == "cuda:0"
