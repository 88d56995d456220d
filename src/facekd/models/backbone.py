"""What every backbone shares: the stage interface, the size rules and `build_backbone`.

A backbone is a stem, four stages and a head. The stage interface lets distillation
methods read intermediate maps (`forward_features`) and feed a student's map through the
teacher's later stages (`forward_from`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor, nn

from facekd.errors import ConfigError
from facekd.models.registry import BACKBONES

NUM_STAGES = 4


@dataclass(frozen=True)
class BackboneSpec:
    """Everything `build_backbone` needs to rebuild a backbone: its name and options."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def scaled_channels(channels: int, width: float) -> int:
    """`channels * width` rounded to a multiple of 8 (at least 8), never more than 10% below."""
    target = channels * width
    rounded = max(8, int(target + 4) // 8 * 8)
    if rounded < 0.9 * target:
        rounded += 8
    return rounded


def scaled_blocks(blocks: int, depth: float) -> int:
    """`blocks * depth` rounded, at least one block per stage."""
    return max(1, round(blocks * depth))


def final_map_size(input_size: int) -> int:
    """Side of the map after the four stride-2 steps (3x3, pad 1, or 1x1): ceil-halved 4 times."""
    side = input_size
    for _ in range(NUM_STAGES):
        side = math.ceil(side / 2)
    return side


def trunk_precision(enabled: bool, x: Tensor) -> ContextManager:
    """The reduced-precision region of `fp16` backbones.

    Autocast follows the input's device, so it means float16 on CUDA and bfloat16 on CPU.
    When disabled we enter no context at all, so a caller's own autocast still applies.
    """
    return torch.autocast(x.device.type) if enabled else contextlib.nullcontext()


class Backbone(nn.Module):
    """Stem, four stages, head. Subclasses define `stem`, `stages` and `head`."""

    def __init__(self, stage_channels: Sequence[int], fp16: bool) -> None:
        super().__init__()
        self.stage_channels: tuple[int, ...] = tuple(stage_channels)
        self.fp16 = fp16
        self.spec: BackboneSpec | None = None

    def stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def stages(self) -> Sequence[Callable[[Tensor], Tensor]]:
        """The four stages, in order, as callables (modules or slices of a module list)."""
        raise NotImplementedError

    def head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """From stage 4's output to `(pooled, embedding)`; manages its own precision."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        with trunk_precision(self.fp16, x):
            x = self.stem(x)
        return self.forward_from(0, x)

    def forward_from(self, index: int, feature: Tensor) -> Tensor:
        """Run stages `index+1 .. 4` and the head on stage `index`'s output (0 = the stem's)."""
        if not 0 <= index <= NUM_STAGES:
            raise ValueError(f"stage index must be in 0..{NUM_STAGES}, got {index}")
        x = feature
        with trunk_precision(self.fp16, x):
            for stage in self.stages()[index:]:
                x = stage(x)
        return self.head(x)[1]

    def forward_features(self, x: Tensor) -> dict[str, Any]:
        """`{"stages": [F1..F4], "pooled": P, "embedding": E}` in one pass."""
        outputs = []
        with trunk_precision(self.fp16, x):
            x = self.stem(x)
            for stage in self.stages():
                x = stage(x)
                outputs.append(x)
        pooled, embedding = self.head(x)
        return {"stages": outputs, "pooled": pooled, "embedding": embedding}


def _check_options(name: str, width: float, depth: float, input_size: int, dropout: float,
                   num_features: int) -> None:
    if width <= 0:
        raise ConfigError(f"backbone {name}: width: found {width}, expected a number > 0")
    if depth <= 0:
        raise ConfigError(f"backbone {name}: depth: found {depth}, expected a number > 0")
    if input_size < 16:
        raise ConfigError(f"backbone {name}: input_size: found {input_size}, expected >= 16")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"backbone {name}: dropout: found {dropout}, expected 0 <= p < 1")
    if num_features < 1:
        raise ConfigError(f"backbone {name}: num_features: found {num_features}, expected >= 1")


def build_backbone(name: str, *, num_features: int = 512, width: float = 1.0, depth: float = 1.0,
                   fcn: bool = False, input_size: int = 112, dropout: float = 0.0,
                   fp16: bool = False) -> Backbone:
    """Build a registered backbone; with default options its state_dict equals arcface_torch's."""
    builder = BACKBONES.get(name)
    _check_options(name, width, depth, input_size, dropout, num_features)
    options = dict(num_features=num_features, width=width, depth=depth, fcn=fcn,
                   input_size=input_size, dropout=dropout, fp16=fp16)
    model = builder(**options)
    model.spec = BackboneSpec(name, options)
    return model


def backbone_spec(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """`(name, kwargs)` such that `build_backbone(name, **kwargs)` rebuilds `model`."""
    model = getattr(model, "module", model)  # unwrap DDP
    spec = getattr(model, "spec", None)
    if not isinstance(spec, BackboneSpec):
        raise ConfigError(f"{type(model).__name__} was not made by build_backbone, so it has no spec")
    return spec.name, dict(spec.kwargs)
