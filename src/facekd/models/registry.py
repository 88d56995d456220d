"""The backbone registry: `@BACKBONES.register("r50")` where each architecture is defined."""

from __future__ import annotations

from typing import Callable

from facekd.registry import Registry

BACKBONES: Registry[Callable] = Registry("backbone")
