"""The distillation experiment config: a training config plus `teacher:` and `distill:` sections.

The student is the `model:` section and its identity loss the `head:` section, exactly as in
`facekd train`, so a baseline and a distilled student differ only by these two sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from facekd.distill.centres import CENTRE_MODES
from facekd.errors import ConfigError
from facekd.train.config import PATH, ExperimentConfig


@dataclass
class TeacherConfig:
    # A facekd checkpoint, an insightface backbone.pth, or an ONNX model (embedding and pooled features).
    path: str = field(default="", metadata=PATH)
    arch: str = ""  # for a plain backbone.pth: the architecture (recognised from its keys if empty)
    kwargs: dict[str, Any] = field(default_factory=dict)  # build_backbone options of that architecture
    head: str = field(default="", metadata=PATH)  # class centres (C x D) for a backbone.pth teacher
    # "": the centres of the teacher file or `head`; "auto": those, else derived from the teacher's
    # embeddings (normalised mean per identity, facekd.distill.centres); "derived": always derived.
    centres: str = ""
    input_size: int = 0  # 0: as the checkpoint was trained (or the ONNX graph declares), else 112
    # ONNX teachers: how the model expects its pixels, (pixel - mean) / std in this channel order.
    # Unset (null / ""): read from the model (facekd metadata, or normalisation inside the graph as
    # insightface detects it; else insightface's 127.5 / 127.5 RGB). The choice is logged at start.
    onnx_pixel_mean: float | None = None
    onnx_pixel_std: float | None = None
    onnx_channel_order: str = ""


@dataclass
class DistillConfig:
    method: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # the method's own options, typed by it
    cache: str = "auto"  # auto: cache teacher outputs when the method allows | on | off
    cache_dir: str = ""  # default: $XDG_CACHE_HOME/facekd/teacher (~/.cache/facekd/teacher)
    cache_dtype: str = "float16"  # float16 halves the disk of an MS1MV2-size cache
    # Extra data some methods need: a CelebA-format folder (attributes, landmarks).
    attributes: str = field(default="", metadata=PATH)


@dataclass
class DistillExperimentConfig(ExperimentConfig):
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def check(self) -> None:
        """At load, before any data or teacher is touched: the method exists and its options parse."""
        from facekd.distill.registry import method_options  # the registry imports every method

        if self.distill.method:
            method_options(self.distill.method, self.distill.options)
        if self.teacher.centres not in CENTRE_MODES:
            raise ConfigError(f"teacher.centres: found {self.teacher.centres!r}, expected auto, derived or empty "
                              "(a centres file goes in teacher.head)")
