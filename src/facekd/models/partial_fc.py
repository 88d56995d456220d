"""Partial FC (An et al., arcface_torch's PartialFC_V2): class centres sharded across processes.

Each rank holds a contiguous range of class centres (the first `num_classes % world_size`
ranks hold one extra). Every step, embeddings and labels are all-gathered, each rank scores
the whole global batch against its own centres (optionally a sample of them: all positives
plus random negatives), and the softmax cross-entropy is computed across the shards.

Gradient convention (as arcface_torch): the loss is the mean over the global batch, and
the gradient reaching this rank's embeddings is `world_size * d loss / d embeddings`, so that
after DDP averages the backbone's gradients over ranks they equal `d loss / d theta`.
Class-centre gradients are exact per shard; DDP must not sync the centres.

Without a process group (or with world_size 1) this is the full margin classifier.

`ClassShard` is the same split and global batch without centres of its own: the distillers'
frozen or EMA class centres use it under Partial FC (facekd.distill).

Checkpoints: `state_dict()` holds the local shard and its layout (`_extra_state`). To resume
on another number of processes, gather the full matrix with `full_centres()` (collective)
or `full_centres_from_shards(...)`, then give each rank `shard_state(full, rank, world_size)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.errors import CheckpointError, ConfigError
from facekd.train import distributed as world_ops
from facekd.models.heads import CENTRE_INIT_STD, CombinedMargin, normalized_cosine


@dataclass(frozen=True)
class ShardLayout:
    num_classes: int
    world_size: int
    rank: int
    class_start: int
    num_local: int

    @classmethod
    def of(cls, num_classes: int, rank: int, world_size: int) -> "ShardLayout":
        base, extra = divmod(num_classes, world_size)
        return cls(num_classes, world_size, rank, base * rank + min(rank, extra), base + int(rank < extra))


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient (see the module's gradient convention)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(tensor: Tensor, factor: float) -> Tensor:
    """`tensor` unchanged, its gradient multiplied by `factor`."""
    return _ScaleGradient.apply(tensor, float(factor))


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over logits whose classes are split across ranks.

    `labels` index the local columns, -1 where the target lives on another rank.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, distributed: bool) -> Tensor:
        max_logits = logits.max(dim=1, keepdim=True).values
        if distributed:
            world_ops.all_reduce(max_logits, dist.ReduceOp.MAX)
        probs = (logits - max_logits).exp_()
        sums = probs.sum(dim=1, keepdim=True)
        rows = torch.nonzero(labels != -1).squeeze(1)
        target_logits = torch.zeros(logits.size(0), device=logits.device, dtype=logits.dtype)
        target_logits[rows] = logits[rows, labels[rows]]
        if distributed:
            world_ops.all_reduce(sums)
            world_ops.all_reduce(target_logits)
        probs.div_(sums)
        ctx.save_for_backward(probs, rows, labels)
        # log-sum-exp form: exact even where arcface_torch's clamp of p at 1e-30 would bite
        # (it reports at most 69.08 per sample early in training); the gradient is the same.
        return (sums.squeeze(1).log() + max_logits.squeeze(1) - target_logits).mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        probs, rows, labels = ctx.saved_tensors
        # (softmax - one_hot) / N, built in the saved buffer: the graph cannot be replayed.
        probs[rows, labels[rows]] -= 1.0
        probs.mul_(grad / probs.size(0))
        return probs, None, None


class ClassShard:
    """A process's contiguous class range and the global batch it scores (PartialFC's split).

    `of_process_group(C)`: this rank's range under torch.distributed (all classes in one process).
    `whole(C)`: every class, batch not gathered: the single-classifier form, also under DDP.
    """

    def __init__(self, layout: ShardLayout) -> None:
        self.layout = layout

    @classmethod
    def of_process_group(cls, num_classes: int) -> "ClassShard":
        rank, world_size = _distributed()
        if num_classes < world_size:
            raise ConfigError(f"partial FC: {num_classes} classes cannot be split over {world_size} ranks")
        return cls(ShardLayout.of(num_classes, rank, world_size))

    @classmethod
    def whole(cls, num_classes: int) -> "ClassShard":
        return cls(ShardLayout.of(num_classes, 0, 1))

    @property
    def distributed(self) -> bool:
        return self.layout.world_size > 1

    def rows(self, full: Tensor) -> Tensor:
        """This shard's rows of a per-class tensor."""
        return full[self.layout.class_start: self.layout.class_start + self.layout.num_local]

    def gather_embeddings(self, embeddings: Tensor) -> Tensor:
        """The global batch's embeddings, with the gradient convention of the module docstring."""
        if not self.distributed:
            return embeddings
        embeddings = _ScaleGradient.apply(embeddings, float(self.layout.world_size))
        return torch.cat(world_ops.all_gather_with_grad(embeddings))

    def gather(self, tensor: Tensor) -> Tensor:
        """The global batch's rows of a per-sample tensor (no gradient), in rank order."""
        return torch.cat(world_ops.all_gather(tensor)) if self.distributed else tensor

    def gather_rows(self, local: Tensor) -> Tensor:
        """Every shard's rows of a per-class tensor, concatenated in class order (no gradient)."""
        if not self.distributed:
            return local
        counts = [ShardLayout.of(self.layout.num_classes, r, self.layout.world_size).num_local
                  for r in range(self.layout.world_size)]
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: local.size(0)] = local
        return torch.cat([piece[:n] for piece, n in zip(world_ops.all_gather(padded), counts)])

    def local_labels(self, labels: Tensor) -> Tensor:
        """Labels as local column indices; -1 where the class lives on another shard."""
        start, count = self.layout.class_start, self.layout.num_local
        local = (labels >= start) & (labels < start + count)
        return torch.where(local, labels - start, torch.full_like(labels, -1))

    def cross_entropy(self, logits: Tensor, local_labels: Tensor) -> Tensor:
        """Mean softmax cross-entropy over the global batch and every shard's classes."""
        if self.distributed:
            return _ShardedCrossEntropy.apply(logits, local_labels, True)
        return F.cross_entropy(logits, local_labels, ignore_index=-1)


class PartialFC(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, margin: CombinedMargin | None = None,
                 *, sample_rate: float = 1.0, fp16: bool = False) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"partial FC sample_rate: found {sample_rate}, expected 0 < rate <= 1")
        self.shard = ClassShard.of_process_group(num_classes)
        self.layout = self.shard.layout
        self.margin = margin if margin is not None else CombinedMargin()
        self.sample_rate = sample_rate
        self.fp16 = fp16
        self.embedding_size = embedding_size
        self.num_sample = int(sample_rate * self.layout.num_local)
        self.weight = nn.Parameter(
            torch.normal(0.0, CENTRE_INIT_STD, (self.layout.num_local, embedding_size))
        )

    def extra_repr(self) -> str:
        layout = self.layout
        return (f"classes [{layout.class_start}, {layout.class_start + layout.num_local}) of "
                f"{layout.num_classes}, rank {layout.rank}/{layout.world_size}, "
                f"sample_rate={self.sample_rate}")

    def get_extra_state(self) -> dict[str, int]:
        return asdict(self.layout)

    def set_extra_state(self, state: Any) -> None:
        saved = ShardLayout(**state)
        if saved != self.layout:
            raise CheckpointError(
                f"partial FC shard: saved {_describe(saved)}, this process holds {_describe(self.layout)}; "
                f"re-shard with full_centres_from_shards() and shard_state()"
            )

    @property
    def distributed(self) -> bool:
        return self.layout.world_size > 1

    def forward(self, embeddings: Tensor, labels: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """`embeddings` (B, E) and `labels` (B,) of this rank; every rank must pass the same B.

        `generator` drives the negative sampling when sample_rate < 1 (default: torch's).
        """
        labels = labels.reshape(-1).long()
        embeddings = self.shard.gather_embeddings(embeddings)
        local_labels = self.shard.local_labels(self.shard.gather(labels))
        local = local_labels != -1
        count = self.layout.num_local
        centres = self.weight
        if self.num_sample < count:
            index = self._sample(local_labels[local], generator)
            local_labels[local] = torch.searchsorted(index, local_labels[local])
            centres = self.weight[index]

        cosine = normalized_cosine(embeddings, centres, self.fp16)
        logits = self.margin(cosine, local_labels)
        loss = _ShardedCrossEntropy.apply(logits, local_labels, self.distributed)
        # Rows: the global batch; columns: this shard's (sampled) classes; labels index those columns.
        return {"loss": loss, "logits": logits, "cosine": cosine, "labels": local_labels}

    def row_shards(self) -> dict[str, ShardLayout]:
        """Row-sharded tensors of this module (for DDP and checkpoints): the centres."""
        return {"weight": self.layout}

    def _sample(self, positives: Tensor, generator: torch.Generator | None) -> Tensor:
        """Sorted local indices: every positive class plus random negatives, `num_sample` in all."""
        with torch.no_grad():
            positives = torch.unique(positives, sorted=True)
            if positives.numel() >= self.num_sample:
                return positives
            scores = torch.rand(self.layout.num_local, generator=generator,
                                device=self.weight.device)
            scores[positives] = 2.0  # above any random score: always chosen
            return torch.topk(scores, self.num_sample).indices.sort().values

    def full_centres(self) -> Tensor:
        """All class centres (num_classes, E) on every rank; a collective under torch.distributed."""
        return self.gather_shard_rows(self.weight.detach())

    def gather_shard_rows(self, local: Tensor) -> Tensor:
        """Concatenate a per-class tensor sharded like the centres (e.g. optimiser momentum)."""
        return self.shard.gather_rows(local) if self.distributed else local.clone()

    def load_full_centres(self, full: Tensor) -> None:
        """Take this rank's rows of a full (num_classes, E) centre matrix."""
        self.load_state_dict(shard_state(full, self.layout.rank, self.layout.world_size))


def _describe(layout: ShardLayout) -> str:
    end = layout.class_start + layout.num_local
    return (f"classes [{layout.class_start}, {end}) of {layout.num_classes} "
            f"on rank {layout.rank}/{layout.world_size}")


def shard_rows(full: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous slice of a per-class tensor (centres or their optimiser state)."""
    layout = ShardLayout.of(full.size(0), rank, world_size)
    return full[layout.class_start: layout.class_start + layout.num_local].clone()


def shard_state(full_weight: Tensor, rank: int, world_size: int) -> dict[str, Any]:
    """A PartialFC state_dict for `rank` of `world_size`, cut from the full centre matrix."""
    layout = ShardLayout.of(full_weight.size(0), rank, world_size)
    return {"weight": shard_rows(full_weight, rank, world_size), "_extra_state": asdict(layout)}


def full_centres_from_shards(shard_states: Sequence[Mapping[str, Any]]) -> Tensor:
    """Reassemble the (num_classes, E) centres from every rank's PartialFC state_dict."""
    layouts = [ShardLayout(**state["_extra_state"]) for state in shard_states]
    layouts_and_weights = sorted(zip(layouts, (s["weight"] for s in shard_states)),
                                 key=lambda pair: pair[0].rank)
    if not layouts:
        raise CheckpointError("partial FC: no shards given")
    num_classes, world_size = layouts[0].num_classes, layouts[0].world_size
    ranks = [layout.rank for layout, _ in layouts_and_weights]
    if ranks != list(range(world_size)) or any(
        layout != ShardLayout.of(num_classes, layout.rank, world_size) for layout in layouts
    ):
        raise CheckpointError(
            f"partial FC: shards of ranks {ranks} do not make up one {world_size}-way split "
            f"of {num_classes} classes"
        )
    for layout, weight in layouts_and_weights:
        if weight.size(0) != layout.num_local:
            raise CheckpointError(
                f"partial FC shard of rank {layout.rank}: weight has {weight.size(0)} rows, "
                f"its layout says {layout.num_local}"
            )
    return torch.cat([weight for _, weight in layouts_and_weights])
