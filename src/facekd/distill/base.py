"""The frozen `Teacher`, the `Distiller` base class and the method registry.

A Distiller is a training `Task`: the engine calls `forward(batch)` and sums the returned
losses. The teacher is deliberately *not* a registered submodule, so it never enters the
state_dict, the optimiser or DDP, and `train()` can never switch it out of `eval()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.data.transforms import normalize, resize
from facekd.errors import ConfigError
from facekd.train.task import Task

# What a method may ask of the teacher.
EMBEDDING = "embedding"  # raw (un-normalised) embedding, N x D
POOLED = "pooled"  # the vector fed to the embedding layer (Karlekar's "last pooled features")
STAGES = "stages"  # the four stage feature maps; implies forward_from for routing
COSINE = "cosine"  # cosine of the teacher embedding to every class centre, N x C
CENTRE_COSINE = "centre_cosine"  # cosine to the ground-truth centre, N
TEACHER_OUTPUTS = frozenset({EMBEDDING, POOLED, STAGES, COSINE, CENTRE_COSINE})
# Outputs that are a fixed function of (image, label) and small enough to cache per sample.
CACHEABLE_OUTPUTS = frozenset({EMBEDDING, POOLED, CENTRE_COSINE})


def network_input(images: Tensor, size: int) -> Tensor:
    """uint8 N x 3 x H x W -> float in [-1, 1] at exactly `size` x `size` (resized when it differs)."""
    x = normalize(images)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = resize(x, size)
    return x


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
    any embedding-only callable such as an ONNX session wrapper taking float NCHW in [-1, 1].
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
        self.centres = None if centres is None else F.normalize(centres.detach().float(), dim=1)

    @property
    def has_stages(self) -> bool:
        return hasattr(self.network, "forward_features") and hasattr(self.network, "forward_from")

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
            if output in (STAGES, POOLED) and not self.has_stages:
                raise ConfigError(
                    f"teacher {self.source}: the method needs its {output}, but it is embedding-only "
                    "(e.g. ONNX); use a PyTorch teacher checkpoint"
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


@dataclass
class StudentSpec:
    """The student network to build: a registry name, its keyword options and input resolution."""

    name: str
    kwargs: dict[str, Any]
    input_size: int


@dataclass
class DistillSetup:
    """Everything a method's `create` needs; built by `facekd distill` from the config."""

    teacher: Teacher
    student: StudentSpec
    num_classes: int
    margin: tuple[float, float, float, float]  # CombinedMargin (s, m1, m2, m3) for the identity loss
    options: dict[str, Any]  # method-specific, parsed by the method's own Options dataclass
    out_dir: Path  # where a method writes artefacts (selected neurons, stage checkpoints, ...)
    extra_data: dict[str, Path] = dataclasses.field(default_factory=dict)  # e.g. {"attributes": celeba folder}
    batches_per_epoch: int = 0  # training forward passes per epoch, for options counted in epochs (0: unknown)


class Distiller(Task):
    """Base of every method: owns the student, its head and adapters; borrows a frozen teacher.

    Subclasses set `name` and `teacher_needs`, implement `create(setup)` (build the student, head
    and adapters; run any preparation such as neuron selection) and `forward_train`, which receives
    the student's input (normalised, at the student's resolution), the labels and the teacher outputs.
    """

    name: ClassVar[str] = ""
    teacher_needs: ClassVar[frozenset[str]] = frozenset({EMBEDDING})
    # False for methods whose teacher outputs depend on anything but (image, flip, label).
    cacheable: ClassVar[bool] = True

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher,
        *,
        backbone_spec: tuple[str, dict[str, Any]],
        input_size: int,
    ) -> None:
        super().__init__()
        teacher.require(*self.teacher_needs)
        self.backbone = student
        self.backbone_spec = backbone_spec
        self.input_size = int(input_size)
        self.teacher = teacher  # a plain object: not registered, so not in state_dict/DDP/optimiser
        self.cache = None

    def use_cache(self, cache) -> None:
        """Serve teacher outputs from a `TeacherCache` instead of running the teacher."""
        missing = self.teacher_needs - set(cache.fields)
        if missing or not self.cacheable:
            raise ConfigError(
                f"method {self.name!r} cannot use the teacher cache at {cache.root}: "
                f"it needs {sorted(self.teacher_needs)}, the cache holds {sorted(cache.fields)}"
            )
        self.cache = cache

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if isinstance(self.teacher.network, nn.Module):
            self.teacher.network.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        # `.to(device)` on the distiller moves the unregistered teacher along with it.
        super()._apply(fn, recurse)
        if isinstance(self.teacher.network, nn.Module):
            self.teacher.network._apply(fn, recurse)
        if self.teacher.centres is not None:
            self.teacher.centres = fn(self.teacher.centres)
        return self

    def student_input(self, images: Tensor) -> Tensor:
        return network_input(images, self.input_size)

    def teacher_outputs(self, batch: dict[str, Tensor]) -> TeacherOutputs:
        if not self.teacher_needs:  # e.g. ArcDistill or resolution's kt mode: the teacher need not run
            return TeacherOutputs()
        if self.cache is not None:
            return self.cache.lookup(batch["index"], batch["flipped"], self.teacher_needs, batch["image"].device)
        return self.teacher.outputs(batch["image"], batch["label"], self.teacher_needs)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        teacher = self.teacher_outputs(batch)
        return self.forward_train(self.student_input(batch["image"]), batch["label"], teacher)

    @classmethod
    def create(cls, setup: DistillSetup) -> "Distiller":
        raise NotImplementedError(f"{cls.__qualname__} must implement create(setup)")

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__qualname__} must implement forward_train")


_DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a method selectable as `--method cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} must set `name` to be registered")
    if cls.name in _DISTILLERS:
        raise TypeError(f"distillation method {cls.name!r} is registered twice")
    unknown = cls.teacher_needs - TEACHER_OUTPUTS
    if unknown:
        raise TypeError(f"{cls.__qualname__}.teacher_needs has unknown outputs {sorted(unknown)}")
    _DISTILLERS[cls.name] = cls
    return cls


def distiller_class(name: str) -> type[Distiller]:
    from facekd.distill import methods  # noqa: F401  (importing registers every method)

    try:
        return _DISTILLERS[name]
    except KeyError:
        raise ConfigError(f"--method: found {name!r}, expected one of {sorted(_DISTILLERS)}") from None


def available_methods() -> list[str]:
    from facekd.distill import methods  # noqa: F401

    return sorted(_DISTILLERS)


def parse_options(options_type: type, values: dict[str, Any] | None, where: str):
    """Build a method's typed options dataclass, refusing unknown keys and wrong types in one line."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; expected some of {sorted(fields)}")
    defaults = options_type()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif expected is tuple and isinstance(value, list):
            values[key] = tuple(value)
        elif not isinstance(value, expected):
            raise ConfigError(
                f"{where}.{key}: found {value!r} ({type(value).__name__}), expected {expected.__name__}"
            )
    return options_type(**values)
