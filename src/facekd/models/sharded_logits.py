"""Softmax and KL divergence over class-sharded logits (Partial FC style, method-free).

Each rank holds the logits of its class range only; the row maximum and the row sum of
exponentials are all-reduced, so the result equals the full-width softmax. One process:
the collectives are no-ops and this is the ordinary full form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facekd.train.distributed import all_reduce, is_distributed


def _sharded_log_softmax(logits: Tensor) -> Tensor:
    """Row log-softmax of local logits against the classes of every rank (no gradient)."""
    row_max = logits.max(dim=1, keepdim=True).values
    if is_distributed():
        row_max = all_reduce(row_max, op=torch.distributed.ReduceOp.MAX)
    shifted = logits - row_max
    row_sum = shifted.exp().sum(dim=1, keepdim=True)
    if is_distributed():
        row_sum = all_reduce(row_sum)
    return shifted - row_sum.log()


class _ShardedKL(torch.autograd.Function):
    """Batch-mean KL(teacher || student) at temperature T, scaled by T^2 (Hinton)."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        log_ps = _sharded_log_softmax(student.detach() / temperature)
        log_pt = _sharded_log_softmax(teacher.detach() / temperature)
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
