"""Process-group setup for `torchrun`, DDP wrapping and the global-batch sampler.

One process is the ordinary case: nothing is initialised and every collective is a no-op.
Under `torchrun` (WORLD_SIZE > 1) a CUDA run creates the group as `cpu:gloo,cuda:nccl`, so
CUDA tensors go through NCCL and the small CPU tensors of bookkeeping (stop flags, shard row
counts) through gloo; a CPU run uses gloo. Every tensor collective in facekd goes through the
functions here, which check first that the group's backends serve the tensor's device (NCCL
alone serves CUDA only), so a wrong device fails in one line instead of deep inside NCCL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.all_gather)
from torch import Tensor, nn
from torch.utils.data import Sampler

from facekd.errors import ConfigError, DistributedError
from facekd.runtime import pick_device
from facekd.train.balanced import IdentityGroups


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device_name: str = "auto") -> World:
    """Join the torchrun process group if there is one; pick this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_name)
    if size == 1:
        return World(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(process_group_backend(device))
    return World(rank, size, device)


def process_group_backend(device: torch.device) -> str:
    """NCCL for CUDA tensors plus gloo for the CPU ones; gloo alone on CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def served_devices(group=None) -> frozenset[str]:
    """Device types the group's backends serve: `cpu:gloo,cuda:nccl` -> {cpu, cuda}."""
    config = str(torch.distributed.get_backend_config(group))
    return frozenset(part.split(":")[0] for part in config.split(",") if ":" in part)


def check_device(tensor: Tensor, op: str, group=None) -> None:
    """Refuse a tensor whose device no backend of the group serves (e.g. CPU under NCCL alone)."""
    served = served_devices(group)
    if tensor.device.type not in served:
        raise DistributedError(
            f"{op}: found a {tensor.device.type} tensor, but the process group's backends "
            f"({torch.distributed.get_backend_config(group)}) serve {sorted(served)} tensors only")


def collective_device(group=None) -> torch.device:
    """Where to put a small bookkeeping tensor: the CPU when a backend serves it, else this GPU."""
    if "cpu" in served_devices(group):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce(tensor: Tensor, op=torch.distributed.ReduceOp.SUM, group=None) -> Tensor:
    """In-place all-reduce of `tensor` (no-op in one process)."""
    if is_distributed():
        check_device(tensor, "all_reduce", group)
        torch.distributed.all_reduce(tensor, op=op, group=group)
    return tensor


def all_reduce_with_grad(tensor: Tensor, group=None) -> Tensor:
    """Sum of `tensor` over ranks, differentiable: the backward pass sums the ranks' gradients.

    For a loss computed identically on every rank from such sums, scale its gradient by
    1 / world_size (each rank's backward contributes one copy)."""
    if not is_distributed():
        return tensor
    check_device(tensor, "all_reduce", group)
    return torch.distributed.nn.functional.all_reduce(tensor, group=group)


def all_gather(tensor: Tensor, group=None) -> list[Tensor]:
    """Every rank's `tensor` (same shape on every rank), in rank order; not differentiable."""
    if not is_distributed():
        return [tensor]
    check_device(tensor, "all_gather", group)
    pieces = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(pieces, tensor.contiguous(), group=group)
    return pieces


def all_gather_with_grad(tensor: Tensor, group=None) -> list[Tensor]:
    """As `all_gather`, with the gradient flowing back to every rank's input."""
    if not is_distributed():
        return [tensor]
    check_device(tensor, "all_gather", group)
    return list(torch.distributed.nn.all_gather(tensor, group=group))


def barrier(group=None) -> None:
    if is_distributed():
        torch.distributed.barrier(group=group)


def close_world(world: World) -> None:
    if world.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_gather_objects(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks stop at the same step)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(obj):
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def wrap(task: nn.Module, world: World) -> nn.Module:
    """DDP around the task, leaving its sharded state (`task.ddp_ignored()`) unsynchronised."""
    if world.size == 1:
        return task
    ignored = list(task.ddp_ignored())
    names = {n for n, _ in task.named_parameters()} | {n for n, _ in task.named_buffers()}
    unknown = sorted(set(ignored) - names)
    if unknown:
        raise ConfigError(f"task.ddp_ignored() names {unknown}, which are not parameters or buffers of the task")
    if ignored:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(task, ignored)
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    # Buffers (BatchNorm statistics) stay per-rank during training, as in arcface_torch.
    return nn.parallel.DistributedDataParallel(task, device_ids=device_ids, forward_sync_buffers=False)


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch of a seeded per-epoch permutation.

    Global batch k is `perm[k*G:(k+1)*G]` with G = batch_size x world_size, and rank r takes rows
    `[r*batch_size, (r+1)*batch_size)` of it, so the samples of a step do not depend on the number
    of processes. Incomplete global batches are dropped. `start` skips batches already consumed
    (mid-epoch resume).

    With `groups`, every batch also ends with an identity-balanced part: the global batch draws
    `balanced_identities x world_size` identities of `balanced_images` images each, from a
    generator seeded by (seed, epoch, k), and rank r takes identities
    `[r*balanced_identities, (r+1)*balanced_identities)`.
    """

    def __init__(self, num_samples: int, batch_size: int, *, world: World, seed: int, batches: int,
                 groups: IdentityGroups | None = None, balanced_identities: int = 0,
                 balanced_images: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = world.rank
        self.world_size = world.size
        self.seed = seed
        self.batches = batches
        self.groups = groups
        self.balanced_identities = balanced_identities
        self.balanced_images = balanced_images
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return self.batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        epoch_seed = self.seed * 1_000_003 + self.epoch
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed))
        global_batch = self.batch_size * self.world_size
        for k in range(self.start, self.batches):
            first = k * global_batch + self.rank * self.batch_size
            indices = order[first: first + self.batch_size].tolist()
            if self.groups is not None:
                generator = torch.Generator().manual_seed((epoch_seed * 1_000_003 + k) % 2**63)
                drawn = self.groups.draw(self.balanced_identities * self.world_size, self.balanced_images, generator)
                share = self.balanced_identities * self.balanced_images
                indices += drawn[self.rank * share: (self.rank + 1) * share]
            yield indices
