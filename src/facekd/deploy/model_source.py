"""Which model a deployment command works on: a weights file, an architecture, or both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from facekd.errors import ConfigError

CALIBRATION_FACES = 8


def calibrate_batchnorm(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of `inputs`, then return the model in eval mode.

    A randomly initialised face backbone is degenerate: its activations grow to ~1e8 (iresnet) or
    shrink to ~1e-6 (mobilefacenet) through the stages. Statistics measured on faces give the scales
    a trained network has, so timings are not distorted by overflow or denormal numbers and parity
    checks compare meaningful values.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(inputs)
    for m, momentum in saved:
        m.momentum = momentum
    return model.eval()


@dataclass(frozen=True)
class ModelSource:
    """A facekd checkpoint / insightface `backbone.pth` (with an optional architecture name as a
    hint), or an architecture built without weights (for FLOPs and latency only)."""

    path: Path | None
    arch: str | None
    fcn: bool = False
    width: float = 1.0
    kwargs: dict = field(default_factory=dict)  # build_backbone options of a file without its side-car

    @classmethod
    def from_args(cls, path: str | None, arch: str | None, *, fcn: bool = False, width: float = 1.0,
                  kwargs: dict | None = None) -> ModelSource:
        if path is None and arch is None:
            raise ConfigError("MODEL: found neither a weights file nor --arch, expected one of them")
        return cls(Path(path) if path else None, arch, fcn, width, dict(kwargs or {}))

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.path.stem if self.path.stem not in ("backbone", "model") else self.path.parent.name or self.path.stem
        suffix = (" fcn" if self.fcn else "") + (f" x{self.width:g}" if self.width != 1.0 else "")
        return f"{self.arch}{suffix}"

    def build(self, input_size: int) -> nn.Module:
        """The model in eval mode on CPU. Built architectures take `input_size`; a loaded model keeps
        the input size it was trained for (an FCN one accepts any). A built architecture has random
        weights and BatchNorm statistics calibrated on synthetic faces (see `calibrate_batchnorm`)."""
        from facekd.models import build_backbone
        from facekd.models.loading import load_backbone

        if self.path is not None:
            # fp16 only changes autocast on GPU; the exported and profiled graph is float32.
            model = load_backbone(self.path, name=self.arch, **{**self.kwargs, "fp16": False})
        else:
            from facekd.deploy.samples import model_inputs, synthetic_aligned_faces

            model = build_backbone(self.arch, fcn=self.fcn, width=self.width, input_size=input_size)
            calibrate_batchnorm(model, model_inputs(synthetic_aligned_faces(CALIBRATION_FACES), input_size))
        return model.cpu().eval()
