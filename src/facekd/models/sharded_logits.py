"""Softmax and KL divergence over class-sharded logits (Partial FC style, method-free).

Each rank holds the logits of its class range only; the row maximum and the row sum of
exponentials are all-reduced, so the result equals the full-width softmax. One process:
the collectives are no-ops and this is the ordinary full form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facekd.train.distributed import all_reduce, all_reduce_with_grad, is_distributed


def sharded_log_softmax(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Row log softmax(logits / T) of local logits against the classes of every rank (row max
    all-reduced; the row sum all-reduced with its gradient, see `all_reduce_with_grad`)."""
    scaled = logits / temperature
    row_max = scaled.detach().max(dim=1, keepdim=True).values
    all_reduce(row_max, op=torch.distributed.ReduceOp.MAX)
    shifted = scaled - row_max
    return shifted - all_reduce_with_grad(shifted.exp().sum(dim=1, keepdim=True)).log()


class _ShardedKL(torch.autograd.Function):
    """Batch-mean KL(teacher || student) at temperature T, scaled by T^2 (Hinton)."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        log_ps = sharded_log_softmax(student.detach(), temperature)
        log_pt = sharded_log_softmax(teacher.detach(), temperature)
        pt = log_pt.exp()
        partial = (pt * (log_pt - log_ps)).sum()
        if is_distributed():
            partial = all_reduce(partial)
        batch = student.shape[0]
        ctx.save_for_backward(log_ps.exp() - pt)
        ctx.scale = temperature / batch
        return partial * temperature ** 2 / batch

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (difference,) = ctx.saved_tensors
        return grad * difference * ctx.scale, None, None


def sharded_kl_divergence(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * mean over the batch of KL(softmax(teacher/T) || softmax(student/T)); the teacher
    gets no gradient. Logits are this rank's class shard; the loss is the same on every rank."""
    return _ShardedKL.apply(student, teacher, float(temperature))
