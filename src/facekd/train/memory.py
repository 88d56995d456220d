"""A per-GPU memory model of (distillation) training with a sharded classifier.

Parts, in bytes, for one process of `world` processes:

- backbone: weights, gradients and SGD momentum, 3 x 4 bytes per parameter (fp32 master weights;
  AMP keeps them in fp32 too);
- activations: what autograd saves for the backward pass, `batch` x the bytes saved per image,
  measured once per (architecture, input size) with `saved_activation_bytes` (AMP saves most of
  them in fp16, about half);
- classifier shard: ceil(classes / world) centres x embedding x (weight, gradient, momentum) in fp32;
- logits: Partial FC gathers every process's embeddings, so each process holds
  (batch x world) x its shard of cosines, with the margin-adjusted copy and the softmax gradient
  (3 fp32 tensors of that size);
- teacher: its weights (fp16 on GPU under AMP, 2 bytes per parameter; fp32 4) and nothing for the
  backward pass (it runs under no_grad); with the teacher cache, zero.

Framework overhead (CUDA context ~0.3-0.5 GB, allocator fragmentation) is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

GIB = 1 << 30
OPTIMISER_STATES = 3  # weight, gradient, momentum
LOGIT_COPIES = 3  # cosines, margin-adjusted logits, softmax gradient


def saved_activation_bytes(model: nn.Module, input_size: int, batch: int = 2) -> int:
    """Bytes autograd saves for backward on one forward pass of `batch` images, per image.

    Counted exactly with saved-tensor hooks, each storage once (views share it)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, nn.Parameter):  # weights are counted with the parameters
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    images = torch.randn(batch, 3, input_size, input_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images).sum()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for pointer, size in seen.items() if pointer not in parameters and pointer != 0) // batch


@dataclass(frozen=True)
class MemoryModel:
    backbone_parameters: int
    activation_bytes_per_image: int  # fp32, from saved_activation_bytes
    embedding: int
    classes: int
    world: int
    batch: int  # images per process
    teacher_parameters: int = 0
    amp: bool = True
    teacher_cached: bool = False

    def parts(self) -> dict[str, float]:
        shard = math.ceil(self.classes / self.world)
        activation = self.batch * self.activation_bytes_per_image * (0.5 if self.amp else 1.0)
        teacher = 0 if self.teacher_cached else self.teacher_parameters * (2 if self.amp else 4)
        return {
            "backbone": self.backbone_parameters * 4.0 * OPTIMISER_STATES,
            "activations": float(activation),
            "classifier shard": shard * self.embedding * 4.0 * OPTIMISER_STATES,
            "logits": self.batch * self.world * shard * 4.0 * LOGIT_COPIES,
            "teacher": float(teacher),
        }

    def total(self) -> float:
        return sum(self.parts().values())
