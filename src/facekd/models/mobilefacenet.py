"""MobileFaceNet (mbf, mbf_large) with arcface_torch's module names, shapes, init and forward.

Layout and keys: formats.md 3.5. The four stages are `layers.0-1`, `2-3`, `4-5`, `6-7`
(56/28/14/7 px at 112 input); the stem is the identity (stage 1 starts with the first
strided conv), and the head is `conv_sep` plus `features` (the GDC embedding).

FCN variant: the GDC's 7x7 depthwise convolution only fits one map size, so `fcn=True`
replaces it with global average pooling, keeping the BatchNorm2d that followed it (at
`features.layers.0.layers.1`, the same key as in the GDC). The BN's per-channel affine
stands in for the per-channel scale a depthwise conv learns, and every parameter shape
is independent of the input resolution.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

from torch import Tensor, nn

from facekd.errors import ConfigError
from facekd.models.backbone import (
    Backbone,
    final_map_size,
    scaled_blocks,
    scaled_channels,
)
from facekd.models.registry import BACKBONES


class ConvBNPReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ConvBN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, 1, 0, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Bottleneck(nn.Module):
    """1x1 expand to `expansion` channels, 3x3 depthwise (stride), linear 1x1 project; optional residual."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int,
                 residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNPReLU(in_channels, expansion),
            ConvBNPReLU(expansion, expansion, 3, stride, 1, groups=expansion),
            ConvBN(expansion, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStack(nn.Module):
    def __init__(self, channels: int, blocks: int, expansion: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[Bottleneck(channels, channels, expansion, 1, residual=True) for _ in range(blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GlobalAveragePoolBN(nn.Module):
    """FCN replacement for the GDC conv: average pooling, then the GDC's BatchNorm2d."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class EmbeddingHead(nn.Module):
    """GDC (or global pooling), flatten, Linear without bias, BatchNorm1d."""

    def __init__(self, channels: int, num_features: int, map_size: int, fcn: bool,
                 dropout: float) -> None:
        super().__init__()
        pool = GlobalAveragePoolBN(channels) if fcn else ConvBN(channels, channels, map_size, groups=channels)
        self.layers = nn.Sequential(
            pool, nn.Flatten(), nn.Linear(channels, num_features, bias=False), nn.BatchNorm1d(num_features)
        )
        # Outside `layers` so the indices (and state_dict keys) stay as in arcface_torch.
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pool, flatten, linear, norm = self.layers
        pooled = flatten(pool(x))
        return pooled, norm(linear(self.dropout(pooled)))


class MobileFaceNet(Backbone):
    def __init__(self, blocks: Sequence[int], scale: int, *, num_features: int = 512,
                 width: float = 1.0, depth: float = 1.0, fcn: bool = False, input_size: int = 112,
                 dropout: float = 0.0, fp16: bool = False) -> None:
        def c(channels: int) -> int:
            return scaled_channels(channels, width)

        low, high, embed = c(64 * scale), c(128 * scale), c(512)
        super().__init__((low, low, high, high), fp16)
        counts = [scaled_blocks(n, depth) for n in blocks]
        self.fcn = fcn
        self.final_map = final_map_size(input_size)

        if counts[0] == 1:
            # Grouped, not depthwise: arcface_torch fixes 64 groups whatever the scale.
            second = ConvBNPReLU(low, low, 3, 1, 1, groups=math.gcd(low, c(64)))
        else:
            second = ResidualStack(low, counts[0], c(128))
        self.layers = nn.ModuleList([
            ConvBNPReLU(3, low, 3, 2, 1),
            second,
            Bottleneck(low, low, c(128), stride=2, residual=False),
            ResidualStack(low, counts[1], c(128)),
            Bottleneck(low, high, c(256), stride=2, residual=False),
            ResidualStack(high, counts[2], c(256)),
            Bottleneck(high, high, c(512), stride=2, residual=False),
            ResidualStack(high, counts[3], c(256)),
        ])
        self.conv_sep = ConvBNPReLU(high, embed)
        self.features = EmbeddingHead(embed, num_features, self.final_map, fcn, dropout)
        self._initialize()

    def _initialize(self) -> None:
        if self.conv_sep.layers[0].weight.is_meta:  # a shapes-only build (manifests): nothing to fill
            return
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _run_layers(self, start: int, x: Tensor) -> Tensor:
        return self.layers[start + 1](self.layers[start](x))

    def stem(self, x: Tensor) -> Tensor:
        return x

    def stages(self) -> Sequence[Callable[[Tensor], Tensor]]:
        return tuple(partial(self._run_layers, start) for start in (0, 2, 4, 6))

    def head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.fcn and tuple(x.shape[-2:]) != (self.final_map, self.final_map):
            raise ConfigError(
                f"mobilefacenet built for a {self.final_map}x{self.final_map} final map got "
                f"{x.shape[-2]}x{x.shape[-1]}: build it with the matching input_size, or fcn=True"
            )
        # arcface_torch runs conv_sep and the embedding head in float32.
        return self.features(self.conv_sep(x.float() if self.fp16 else x))


@BACKBONES.register("mbf")
def mbf(**options) -> MobileFaceNet:
    return MobileFaceNet((1, 4, 6, 2), scale=2, **options)


@BACKBONES.register("mbf_large")
def mbf_large(**options) -> MobileFaceNet:
    return MobileFaceNet((2, 8, 12, 4), scale=4, **options)
