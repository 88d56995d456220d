"""Key/shape manifests: which architecture a state_dict fits, and how it differs from another.

A manifest maps each state_dict key to its shape. Models are built on the meta device,
so a manifest of r200 costs no memory and a fraction of a second.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from facekd.models.backbone import build_backbone
from facekd.models.registry import BACKBONES

Manifest = dict[str, tuple[int, ...]]

# BatchNorm fills in a missing counter itself (state_dicts saved before PyTorch 0.4.1 lack it).
OPTIONAL_SUFFIX = "num_batches_tracked"


def manifest_of(state_dict: Mapping[str, Any]) -> Manifest:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def build_manifest(name: str, **kwargs: Any) -> Manifest:
    return dict(_cached_manifest(name, tuple(sorted(kwargs.items()))))


@functools.lru_cache(maxsize=64)
def _cached_manifest(name: str, options: tuple[tuple[str, Any], ...]) -> Manifest:
    # Built on the meta device: shapes only, no memory; cached since best_fit tries every name.
    with torch.device("meta"):
        return manifest_of(build_backbone(name, **dict(options)).state_dict())


@dataclass(frozen=True)
class ManifestDiff:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, file shape, model shape

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, shown: int = 3) -> str:
        def few(items: list[str]) -> str:
            more = ", ..." if len(items) > shown else ""
            return f" ({', '.join(items[:shown])}{more})" if items else ""

        shapes = [f"{key} {list(found)} vs {list(wanted)}" for key, found, wanted in self.mismatched]
        return (f"{len(self.missing)} missing{few(self.missing)}, "
                f"{len(self.unexpected)} unexpected{few(self.unexpected)}, "
                f"{len(self.mismatched)} shape mismatches{few(shapes)}")


def compare(found: Manifest, wanted: Manifest) -> ManifestDiff:
    missing = [k for k in wanted if k not in found and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in found if k not in wanted]
    mismatched = [(k, found[k], wanted[k]) for k in wanted if k in found and found[k] != wanted[k]]
    return ManifestDiff(missing, unexpected, mismatched)


def head_options(found: Manifest) -> dict[str, Any]:
    """Read `num_features`, `fcn` and `input_size` off the head's shapes (empty if unknown layout)."""
    if "fc.weight" in found and "bn2.weight" in found:  # iresnet
        num_features, pooled = found["fc.weight"]
        channels = found["bn2.weight"][0]
        if pooled == channels:
            return {"num_features": num_features, "fcn": True}
        side = math.isqrt(pooled // channels)
        if side * side * channels == pooled:
            return {"num_features": num_features, "fcn": False, "input_size": 16 * side}
        return {"num_features": num_features}
    if "features.layers.2.weight" in found:  # mobilefacenet
        options: dict[str, Any] = {"num_features": found["features.layers.2.weight"][0]}
        gdc = found.get("features.layers.0.layers.0.weight")
        if gdc is None:
            options["fcn"] = True
        elif len(gdc) == 4:
            options["input_size"] = 16 * gdc[-1]
        return options
    return {}


def best_fit(found: Manifest, **kwargs: Any) -> tuple[str, ManifestDiff]:
    """The registered architecture whose manifest differs least from `found`.

    Head options not given in `kwargs` are read off the shapes, so a 256-d or
    FCN state_dict is still recognised.
    """
    options = {**head_options(found), **kwargs}
    fits = []
    for name in BACKBONES.names():
        fits.append((name, compare(found, build_manifest(name, **options))))
    return min(fits, key=lambda fit: fit[1].count)
