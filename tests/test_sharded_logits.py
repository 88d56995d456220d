import os

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from facekd.models.partial_fc import ShardLayout
from facekd.models.sharded_logits import sharded_kl_divergence
from facekd.train import distributed as world_ops
from test_collectives import free_port


def test_one_process_equals_full_kl_and_its_gradient():
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(5, 11, generator=gen) * 4).requires_grad_()
    teacher = torch.randn(5, 11, generator=gen) * 4
    temperature = 3.0
    loss = sharded_kl_divergence(student, teacher, temperature)
    loss.backward()
    reference_student = student.detach().clone().requires_grad_()
    reference = full_kl(reference_student, teacher, temperature)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-5
    assert torch.allclose(student.grad, reference_student.grad, atol=1e-6)
    assert loss.item() > 0


def full_kl(student, teacher, temperature):
    return F.kl_div(F.log_softmax(student / temperature, 1),
                    F.softmax(teacher / temperature, 1), reduction="batchmean") * temperature ** 2


def run_rank(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    world = world_ops.init_world("cpu")
    gen = torch.Generator().manual_seed(1)  # same full logits on both ranks
    student = torch.randn(6, 13, generator=gen) * 5
    teacher = torch.randn(6, 13, generator=gen) * 5
    layout = ShardLayout.of(13, rank, 2)
    columns = slice(layout.class_start, layout.class_start + layout.num_local)
    local = student[:, columns].clone().requires_grad_()
    loss = sharded_kl_divergence(local, teacher[:, columns], 2.5)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": local.grad, "start": layout.class_start},
               f"{root}/rank{rank}.pt")
    world_ops.close_world(world)


def test_two_processes_equal_the_full_form(tmp_path):
    mp.spawn(run_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    gen = torch.Generator().manual_seed(1)
    student = (torch.randn(6, 13, generator=gen) * 5).requires_grad_()
    teacher = torch.randn(6, 13, generator=gen) * 5
    reference = full_kl(student, teacher, 2.5)
    reference.backward()
    shards = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert shards[1]["start"] > 0  # both ranks really hold classes
    for shard in shards:
        assert abs(shard["loss"].item() - reference.item()) < 1e-5
    assert torch.allclose(torch.cat([s["grad"] for s in shards], 1), student.grad, atol=1e-5)
