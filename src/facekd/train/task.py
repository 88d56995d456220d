"""What the engine trains: a `Task` maps a batch to named scalar losses and metrics.

The engine sums the entries whose name starts with "loss" and logs all of them. A Distiller is
a Task too; its teacher is kept outside the module tree, so it is never checkpointed, optimised
or wrapped in DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facekd.data import transforms
from facekd.models.partial_fc import ShardLayout


class Task(nn.Module):
    """Base class. Subclasses set `backbone` and `backbone_spec` and implement `forward`."""

    backbone: nn.Module
    backbone_spec: tuple[str, dict[str, Any]]  # (name, kwargs) for facekd.models.build_backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sharded_tensors(self) -> dict[str, ShardLayout]:
        """Every class-sharded tensor of the task and its modules (those with a `row_shards()`), by
        fully-qualified name: Partial FC centres, a distiller's frozen or EMA centres."""
        found = {}
        for prefix, module in self.named_modules():
            if hasattr(module, "row_shards"):
                found.update({f"{prefix}.{name}" if prefix else name: layout
                              for name, layout in module.row_shards().items()})
        return found

    def ddp_ignored(self) -> list[str]:
        """Fully-qualified parameter/buffer names DDP must not synchronise (sharded state)."""
        return [name for name, layout in self.sharded_tensors().items() if layout.world_size > 1]

    def shard_layout(self) -> dict[str, dict[str, int]]:
        """Checkpointed tensors split by rows across processes: name -> {"offset", "rows", "total"}.

        The checkpoint gathers these into full matrices so a run can resume on any world size.
        Non-persistent buffers (a teacher's frozen centres, rebuilt from the teacher) are left out.
        """
        saved = self.state_dict().keys()
        return {name: {"offset": layout.class_start, "rows": layout.num_local, "total": layout.num_classes}
                for name, layout in self.sharded_tensors().items() if name in saved}


class ClassificationTask(Task):
    """Backbone + margin head: trains a teacher or a baseline student."""

    def __init__(self, backbone: nn.Module, head: nn.Module, input_size: int, *,
                 backbone_spec: tuple[str, dict[str, Any]]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_size = input_size
        self.backbone_spec = backbone_spec

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeddings = self.backbone(transforms.network_input(batch["image"], self.input_size))
        out = self.head(embeddings.float(), batch["label"])
        return {"loss_cls": out["loss"]}
