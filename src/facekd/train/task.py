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
from facekd.models.partial_fc import PartialFC


class Task(nn.Module):
    """Base class. Subclasses set `backbone` and `backbone_spec` and implement `forward`."""

    backbone: nn.Module
    backbone_spec: tuple[str, dict[str, Any]]  # (name, kwargs) for facekd.models.build_backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def ddp_ignored(self) -> list[str]:
        """Fully-qualified parameter/buffer names DDP must not synchronise (sharded state)."""
        return []

    def shard_layout(self) -> dict[str, dict[str, int]]:
        """Parameters split by rows across processes: name -> {"offset", "rows", "total"}.

        The checkpoint gathers these into full matrices so a run can resume on any world size.
        """
        return {}


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

    def ddp_ignored(self) -> list[str]:
        return ["head.weight"] if isinstance(self.head, PartialFC) and self.head.distributed else []

    def shard_layout(self) -> dict[str, dict[str, int]]:
        if not isinstance(self.head, PartialFC):
            return {}
        layout = self.head.layout
        return {"head.weight": {"offset": layout.class_start, "rows": layout.num_local, "total": layout.num_classes}}
