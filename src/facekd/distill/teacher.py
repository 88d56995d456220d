"""The frozen `Teacher`: a network (and optionally its class centres) that answers what methods ask.

The names below are what a method may ask of the teacher per sample (`Distiller.teacher_needs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.data.transforms import network_input
from facekd.errors import ConfigError
from facekd.runtime import module_device

# What a method may ask of the teacher.
EMBEDDING = "embedding"  # raw (un-normalised) embedding, N x D
POOLED = "pooled"  # the vector fed to the embedding layer (Karlekar's "last pooled features")
STAGES = "stages"  # the four stage feature maps; implies forward_from for routing
COSINE = "cosine"  # cosine of the teacher embedding to every class centre, N x C
CENTRE_COSINE = "centre_cosine"  # cosine to the ground-truth centre, N
TEACHER_OUTPUTS = frozenset({EMBEDDING, POOLED, STAGES, COSINE, CENTRE_COSINE})
# Outputs that are a fixed function of (image, label) and small enough to cache per sample.
CACHEABLE_OUTPUTS = frozenset({EMBEDDING, POOLED, CENTRE_COSINE})


@dataclass
class TeacherOutputs:
    embedding: Tensor | None = None
    pooled: Tensor | None = None
    stages: list[Tensor] | None = None
    cosine: Tensor | None = None
    centre_cosine: Tensor | None = None


class Teacher:
    """A frozen network (plus, optionally, its class centres) that answers what methods ask.

    `network` is a facekd/insightface backbone (with `forward_features` and `forward_from`), or
    a callable such as `OnnxEmbedder` (an ONNX model: embedding, and pooled features by `forward_features`).
    """

    def __init__(
        self,
        network: nn.Module | Callable[[Tensor], Tensor],
        *,
        input_size: int,
        centres: Tensor | None = None,
        source: str = "teacher",
    ) -> None:
        self.network = network
        self.input_size = int(input_size)
        self.source = source
        if isinstance(network, nn.Module):
            network.eval()
            network.requires_grad_(False)
        self.centres = None
        if centres is not None:
            self.use_centres(centres)

    def use_centres(self, centres: Tensor) -> None:
        """Class centres (C x D), kept L2-normalised, on the device they are given on."""
        self.centres = F.normalize(centres.detach().float(), dim=1)

    @property
    def has_stages(self) -> bool:
        return hasattr(self.network, "forward_features") and hasattr(self.network, "forward_from")

    @property
    def has_pooled(self) -> bool:
        """PyTorch backbones, and ONNX models whose embedding layer was found (`OnnxEmbedder.pooled`)."""
        return self.has_stages or getattr(self.network, "pooled", None) is not None

    @property
    def pooled_size(self) -> int:
        """Length of the pooled feature vector."""
        self.require(POOLED)
        if not self.has_stages:
            return int(self.network.pooled.size)
        zeros = torch.zeros(2, 3, self.input_size, self.input_size, device=module_device(self.network))
        with torch.no_grad():
            return int(self.network.forward_features(zeros)["pooled"].shape[1])

    @property
    def stage_channels(self) -> tuple[int, ...]:
        self.require(STAGES)
        return tuple(self.network.stage_channels)

    @property
    def embedding_size(self) -> int:
        spec = getattr(self.network, "spec", None)
        if spec is not None:
            return int(spec.kwargs["num_features"])
        size = getattr(self.network, "embedding_size", None)
        if size is None:
            raise ConfigError(f"teacher {self.source}: cannot tell its embedding size (no spec, no embedding_size)")
        return int(size)

    @property
    def num_classes(self) -> int | None:
        return None if self.centres is None else int(self.centres.shape[0])

    def require(self, *outputs: str) -> None:
        """Raise a one-line ConfigError when this teacher cannot provide an output."""
        for output in outputs:
            if output not in TEACHER_OUTPUTS:
                raise ConfigError(f"teacher output {output!r} is unknown; expected one of {sorted(TEACHER_OUTPUTS)}")
            if output == POOLED and not self.has_pooled:
                raise ConfigError(
                    f"teacher {self.source}: the method needs its pooled features, but no embedding layer (a Gemm "
                    "or MatMul with a constant weight) was found in it; use target embedding or a PyTorch teacher"
                )
            if output == STAGES and not self.has_stages:
                raise ConfigError(
                    f"teacher {self.source}: the method needs its stage feature maps and routing through its "
                    "blocks, which an ONNX model does not give; use its PyTorch weights (an insightface "
                    "backbone.pth or a facekd checkpoint)"
                )
            if output in (COSINE, CENTRE_COSINE) and self.centres is None:
                raise ConfigError(
                    f"teacher {self.source}: the method needs the teacher's class centres, but none were "
                    "loaded; pass the teacher's head (--teacher-head) or a facekd checkpoint with its head"
                )

    def centres_for(self, num_classes: int, method: str) -> Tensor:
        """The teacher's class centres, which must exist and cover exactly the training set's classes."""
        self.require(CENTRE_COSINE)
        if self.centres.shape[0] != num_classes:
            raise ConfigError(
                f"{method}: the teacher's head has {self.centres.shape[0]} classes, the training set {num_classes}; "
                f"{method} needs the teacher's own classes"
            )
        return self.centres

    def to(self, device: torch.device | str) -> "Teacher":
        if isinstance(self.network, nn.Module):
            self.network.to(device)
        elif hasattr(self.network, "to"):
            self.network.to(device)
        if self.centres is not None:
            self.centres = self.centres.to(device)
        return self

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> the teacher's float input at its own resolution."""
        return network_input(images, self.input_size)

    @torch.no_grad()
    def outputs(self, images: Tensor, labels: Tensor, needs: frozenset[str]) -> TeacherOutputs:
        """Run the teacher once on a uint8 batch and return only what `needs` names."""
        x = self.prepare(images)
        out = TeacherOutputs()
        if needs & {STAGES, POOLED}:
            features = self.network.forward_features(x)
            out.embedding = features["embedding"].float()
            out.pooled = features["pooled"].float() if POOLED in needs else None
            out.stages = features["stages"] if STAGES in needs else None
        else:
            out.embedding = self.network(x).float()
        if needs & {COSINE, CENTRE_COSINE}:
            cosine = F.normalize(out.embedding, dim=1) @ self.centres.t()
            out.cosine = cosine if COSINE in needs else None
            if CENTRE_COSINE in needs:
                out.centre_cosine = cosine.gather(1, labels.view(-1, 1)).squeeze(1)
        return out

    def forward_from(self, stage: int, feature: Tensor) -> Tensor:
        """Route a feature map through the frozen stages stage+1..4 and the head.

        Gradients flow to `feature` (ShrinkTeaNet's intermediate losses), never to the teacher.
        """
        self.require(STAGES)
        return self.network.forward_from(stage, feature)
