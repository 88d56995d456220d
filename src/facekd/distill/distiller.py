"""The `Distiller` base class, what its `create` receives, and the protocol of multi-stage methods.

A Distiller is a training `Task`: the engine calls `forward(batch)` and sums the returned
losses. The teacher is deliberately *not* a registered submodule, so it never enters the
state_dict, the optimiser or DDP, and `train()` can never switch it out of `eval()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import Tensor, nn

from facekd.data.transforms import network_input
from facekd.distill.teacher import CENTRE_COSINE, COSINE, EMBEDDING, POOLED, STAGES, Teacher, TeacherOutputs
from facekd.errors import ConfigError
from facekd.train.task import Task

NEED_WORDS = {
    EMBEDDING: "embeddings", POOLED: "pooled features", STAGES: "stage maps",
    COSINE: "logits (cosines to its class centres)", CENTRE_COSINE: "cosine to its own class centre",
}
# Read once rather than per sample: the class centres (its head), its weights (to initialise the
# student) and its stage network (to route student maps through).
TEACHER_EXTRAS = frozenset({"class centres", "weights", "stage network"})


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


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
    options: Any  # the method's own `Options`, parsed from distill.options (facekd.distill.options)
    out_dir: Path  # where a method writes artefacts (selected neurons, stage checkpoints, ...)
    extra_data: dict[str, Path] = dataclasses.field(default_factory=dict)  # e.g. {"attributes": celeba folder}
    batches_per_epoch: int = 0  # training forward passes per epoch, for options counted in epochs (0: unknown)
    partial_fc: bool = False  # head.partial_fc: class centres sharded across processes (facekd.models.partial_fc)
    sample_rate: float = 1.0  # head.sample_rate, for methods whose identity head is a plain Partial FC


class Distiller(Task):
    """Base of every method: owns the student, its head and adapters; borrows a frozen teacher.

    Subclasses set `name`, `teacher_needs` and `Options` (a frozen dataclass of `option` fields),
    implement `create(setup)` (build the student, head and adapters; run any preparation such as
    neuron selection) and `forward_train`, which receives the student's input (normalised, at the
    student's resolution), the labels and the teacher outputs.
    """

    name: ClassVar[str] = ""
    teacher_needs: ClassVar[frozenset[str]] = frozenset({EMBEDDING})
    # What else the method reads from the teacher once, not per sample: a subset of TEACHER_EXTRAS.
    teacher_extras: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type] = NoOptions
    # False for methods whose teacher outputs depend on anything but (image, flip, label).
    cacheable: ClassVar[bool] = True
    # Why the method cannot run with head.partial_fc, and what to use instead ("" when it can).
    partial_fc_refusal: ClassVar[str] = ""

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

    @classmethod
    def teacher_summary(cls) -> str:
        """What the method needs from the teacher, in words (for --list-methods)."""
        needs = [NEED_WORDS[need] for need in sorted(cls.teacher_needs)] + sorted(cls.teacher_extras)
        return ", ".join(needs) if needs else "nothing"

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


# fit(task, samples, stage) trains `task` on `samples` with the engine under OUT/stage and returns it.
FitStage = Callable[[nn.Module, Any, str], nn.Module]


class PipelineMethod(Distiller):
    """A method that trains several students in stages (each stage a Task fitted by the engine).

    The protocol: `run_pipeline(setup, fit, train_samples)` runs every stage through
    `fit(task, samples, stage)`, which trains under `setup.out_dir / stage` (and loads a stage a
    previous run finished), and returns the path of the final student's checkpoint. The runner,
    `compare` and the demo use that path and know nothing else of the stages.
    """

    @classmethod
    def run_pipeline(cls, setup: DistillSetup, fit: FitStage, train_samples) -> Path:
        raise NotImplementedError(f"{cls.__qualname__} must implement run_pipeline")
