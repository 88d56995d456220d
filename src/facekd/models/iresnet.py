"""IResNet (r18 .. r200) with arcface_torch's module names, shapes, init and forward.

With default options a public arcface_torch `backbone.pth` loads with `strict=True`
(docs: formats.md 3.4). `width` and `depth` shrink the network for students; `fcn`
swaps the fixed 7x7 flatten for global average pooling so one set of weights runs at
any input resolution.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from facekd.errors import ConfigError
from facekd.models.backbone import (
    Backbone,
    final_map_size,
    scaled_blocks,
    scaled_channels,
    trunk_precision,
)
from facekd.models.registry import BACKBONES

STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5


class IRBlock(nn.Module):
    """Pre-activation residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        out += shortcut  # in place: bn3's output is not needed by autograd, saves one map per block
        return out


def _make_stage(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
    # Every stage, layer1 included, halves the resolution in its first block.
    layers = [IRBlock(in_channels, channels, stride=2)]
    layers += [IRBlock(channels, channels, stride=1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class IResNet(Backbone):
    def __init__(self, blocks_per_stage: Sequence[int], *, num_features: int = 512,
                 width: float = 1.0, depth: float = 1.0, fcn: bool = False, input_size: int = 112,
                 dropout: float = 0.0, fp16: bool = False) -> None:
        widths = [scaled_channels(c, width) for c in STAGE_WIDTHS]
        super().__init__(widths, fp16)
        blocks = [scaled_blocks(n, depth) for n in blocks_per_stage]
        self.fcn = fcn
        self.final_map = final_map_size(input_size)

        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        in_channels = [widths[0]] + widths[:-1]
        self.layer1 = _make_stage(in_channels[0], widths[0], blocks[0])
        self.layer2 = _make_stage(in_channels[1], widths[1], blocks[1])
        self.layer3 = _make_stage(in_channels[2], widths[2], blocks[2])
        self.layer4 = _make_stage(in_channels[3], widths[3], blocks[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=BN_EPS)
        # Not in place (unlike arcface_torch) so forward_features can return the pooled vector.
        self.dropout = nn.Dropout(p=dropout)
        pooled_size = widths[3] if fcn else widths[3] * self.final_map ** 2
        self.fc = nn.Linear(pooled_size, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        self._initialize()

    def _initialize(self) -> None:
        # arcface_torch: N(0, 0.1) convs, unit/zero BN, default Linear init, frozen unit BN1d scale.
        if self.conv1.weight.is_meta:  # a shapes-only build (manifests): nothing to fill
            self.features.weight.requires_grad = False
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def stem(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn1(self.conv1(x)))

    def stages(self) -> Sequence[nn.Module]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.fcn and tuple(x.shape[-2:]) != (self.final_map, self.final_map):
            raise ConfigError(
                f"iresnet built for a {self.final_map}x{self.final_map} final map got "
                f"{x.shape[-2]}x{x.shape[-1]}: build it with the matching input_size, or fcn=True"
            )
        with trunk_precision(self.fp16, x):
            x = self.bn2(x)
            pooled = x.mean(dim=(2, 3)) if self.fcn else x.flatten(1)
            x = self.dropout(pooled)
        embedding = self.features(self.fc(x.float() if self.fp16 else x))
        return pooled, embedding


def _register(name: str, blocks: tuple[int, int, int, int]) -> None:
    @BACKBONES.register(name)
    def build(**options) -> IResNet:
        return IResNet(blocks, **options)


_register("r18", (2, 2, 2, 2))
_register("r34", (3, 4, 6, 3))
_register("r50", (3, 4, 14, 3))
_register("r100", (3, 13, 30, 3))
_register("r200", (6, 26, 60, 6))
