"""From a distillation config to a trained student: teacher, method, cache, then the engine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from facekd.distill.cache import TeacherCache, dataset_fingerprint, teacher_fingerprint
from facekd.distill.centres import cached_derived_centres, centres_file
from facekd.distill.config import DistillExperimentConfig
from facekd.distill.distiller import Distiller, DistillSetup, PipelineMethod, StudentSpec
from facekd.distill.loading import check_teacher_separates, load_teacher
from facekd.distill.registry import distiller_class, method_options
from facekd.distill.teacher import CACHEABLE_OUTPUTS, CENTRE_COSINE, EMBEDDING, Teacher
from facekd.errors import ConfigError, DataError
from facekd.fileio import atomic_write_text
from facekd.models.loading import load_weights_into
from facekd.train import checkpoint as ckpt
from facekd.train.build import backbone_options, bin_evaluator, check_sampling, open_train_samples
from facekd.train.config import from_dict
from facekd.train.distributed import World, broadcast_object
from facekd.train.engine import Trainer, TrainResult, batches_per_epoch

CACHE_MODES = ("auto", "on", "off")
FINAL_NAME = "final.json"  # a pipeline's pointer to its final student's checkpoint


logger = logging.getLogger(__name__)

def build_setup(config: DistillExperimentConfig, samples, world: World) -> DistillSetup:
    head = config.head
    extra = {"attributes": Path(config.distill.attributes)} if config.distill.attributes else {}
    teacher = load_teacher(config.teacher).to(world.device)
    convention = getattr(teacher.network, "convention", None)
    if convention is not None:  # an ONNX teacher: its input convention may be wrong
        mean = check_teacher_separates(teacher, samples, convention.describe())
        logger.info("teacher %s: mean cosine %.3f between different identities", teacher.source, mean)
    mode = config.teacher.centres
    if mode == "derived" or (mode == "auto" and teacher.centres is None):
        # The mode itself does not change the centres: left out of their key.
        fingerprint = teacher_and_data(dataclasses.replace(config.teacher, centres=""), teacher, config, samples)
        path = centres_file(Path(config.distill.cache_dir or default_cache_dir()), fingerprint)
        teacher.use_centres(cached_derived_centres(teacher, samples, samples.num_classes, path, world.device))
        teacher.to(world.device)
    elif mode == "auto":
        logger.info("teacher %s: using its own class centres (teacher.centres auto)", teacher.source)
    return DistillSetup(
        teacher=teacher,
        student=StudentSpec(config.model.backbone, backbone_options(config), config.model.input_size),
        num_classes=samples.num_classes,
        margin=(head.s, head.m1, head.m2, head.m3),
        options=method_options(config.distill.method, config.distill.options),
        out_dir=Path(config.train.out),
        extra_data=extra,
        batches_per_epoch=batches_per_epoch(len(samples), config.train, world.size),
        partial_fc=head.partial_fc,
        sample_rate=head.sample_rate,
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facekd" / "teacher"


def teacher_and_data(teacher_config, teacher: Teacher, config: DistillExperimentConfig, samples) -> dict:
    """What fixes anything computed from the teacher over the training set: its config and input
    size, and the data."""
    return {"teacher": teacher_fingerprint(teacher_config, teacher.input_size),
            "data": dataset_fingerprint(config.data.train, np.asarray(samples.labels))}


def cache_fingerprint(config: DistillExperimentConfig, distiller: Distiller, samples) -> dict:
    """Everything that changes the cached teacher outputs (the fields are checked on open)."""
    return {**teacher_and_data(config.teacher, distiller.teacher, config, samples),
            "dtype": config.distill.cache_dtype}


def shared_fields(teacher: Teacher) -> set[str]:
    """Outputs worth caching for any later method: the embedding, and the centre cosine when known."""
    return {EMBEDDING} | ({CENTRE_COSINE} if teacher.centres is not None else set())


def attach_cache(distiller: Distiller, config: DistillExperimentConfig, samples, world: World) -> TeacherCache | None:
    """Serve teacher outputs from disk when the method allows it (or refuse when `on` is impossible)."""
    mode = config.distill.cache
    if mode not in CACHE_MODES:
        raise ConfigError(f"distill.cache: found {mode!r}, expected one of {', '.join(CACHE_MODES)}")
    if not distiller.teacher_needs:
        return None  # the method never runs the teacher (e.g. resolution kt, arcdistill)
    possible = distiller.cacheable and distiller.teacher_needs <= CACHEABLE_OUTPUTS
    if mode == "off" or (mode == "auto" and not possible):
        return None
    if not possible:
        raise ConfigError(
            f"distill.cache: on, but method {distiller.name!r} needs {sorted(distiller.teacher_needs)} "
            "from the live teacher (stage maps or full logits cannot be cached)"
        )
    fingerprint = cache_fingerprint(config, distiller, samples)
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(config.distill.cache_dir or default_cache_dir()) / digest
    # Rank 0's view decides, so that every rank joins the same (collective) build or none.
    cache = TeacherCache.open(root, fingerprint) if world.is_main else None
    known = broadcast_object(None if cache is None else cache.fields)
    if known is None or not distiller.teacher_needs <= set(known):
        # One pass serves every method: store the small outputs any method may want as well.
        fields = distiller.teacher_needs | shared_fields(distiller.teacher) | set(known or ())
        cache = TeacherCache.build(
            root, distiller.teacher, samples, frozenset(fields), fingerprint,
            batch_size=config.train.images_per_batch, num_workers=config.train.workers,
            dtype=config.distill.cache_dtype, device=world.device, progress=config.train.progress,
            rank=world.rank, world_size=world.size)
    elif not world.is_main:
        cache = TeacherCache.open(root, fingerprint)
        if cache is None:
            raise DataError(f"{root}: rank {world.rank} cannot open the teacher cache rank 0 opened; "
                            "distill.cache_dir must be on a file system every rank shares")
    distiller.use_cache(cache)
    return cache


def is_finished(out: Path, config: Any) -> bool:
    """True when `out` holds the checkpoint of a finished run of exactly this config.

    The stored config is read back into the current schema, so fields added since it was written
    compare at their defaults.
    """
    path = out / "checkpoint.pt"
    if not path.is_file():
        return False
    state = ckpt.load(path)
    try:
        stored = from_dict(state.get("config") or {}, type(config), source=str(path))
    except ConfigError:  # written with fields this facekd does not know: not this config
        return False
    return stored == config and state.get("epoch") == config.train.epochs


def final_checkpoint(out: Path) -> Path:
    """The checkpoint of the student a run in `out` produced: `out/checkpoint.pt`, or for a
    multi-stage method the final stage's, as recorded in `out/FINAL_NAME`."""
    pointer = out / FINAL_NAME
    if pointer.is_file():
        return out / json.loads(pointer.read_text())["checkpoint"]
    return out / "checkpoint.pt"


def distill(config: DistillExperimentConfig, world: World) -> TrainResult:
    """Train one student; for a multi-stage method (`PipelineMethod`), the result of its final stage."""
    method = distiller_class(config.distill.method)
    check_partial_fc(config, method)
    samples = open_train_samples(config.data)
    setup = build_setup(config, samples, world)
    evaluator = bin_evaluator(config, world.device) if world.is_main else None
    if issubclass(method, PipelineMethod):
        if config.model.init:
            raise ConfigError(f"model.init: method {method.name!r} initialises the student of each stage itself; "
                              "leave model.init empty")
        fitter = StageFitter(config, world, samples, evaluator)
        final = method.run_pipeline(setup, fitter, samples)
        if world.is_main:
            out = Path(config.train.out)
            atomic_write_text(out / FINAL_NAME, json.dumps({"checkpoint": str(final.relative_to(out))}))
        return fitter.results[final]
    distiller = method.create(setup)
    if config.model.init:  # after create: it replaces any initialisation the method made (resolution's KT)
        load_weights_into(config.model.init, distiller.backbone)
    attach_cache(distiller, config, samples, world)
    return Trainer(distiller, samples, config, world=world, evaluator=evaluator).fit()


def check_partial_fc(config: DistillExperimentConfig, method: type[Distiller]) -> None:
    """Refuse, before any work, a Partial FC setting the method cannot honour."""
    head = config.head
    if head.partial_fc and method.partial_fc_refusal:
        raise ConfigError(f"head.partial_fc: method {method.name!r} cannot shard its classes: "
                          f"{method.partial_fc_refusal} (or set head.partial_fc: false)")
    check_sampling(head)


class StageFitter:
    """`fit(task, samples, stage)` for pipelines: the engine, unchanged, under OUT/stage.

    A stage whose folder already holds a finished checkpoint of the same config is loaded, not
    retrained, so an interrupted pipeline resumes at its first unfinished stage. Under `--resume`,
    a stage that has no checkpoint yet while an earlier one is done (killed between stages) starts
    afresh; the first stage without a checkpoint is still an error, as for any run.
    """

    def __init__(self, config: DistillExperimentConfig, world: World, train_samples, evaluator) -> None:
        self.config, self.world, self.train_samples, self.evaluator = config, world, train_samples, evaluator
        self.results: dict[Path, TrainResult] = {}  # by checkpoint path

    def __call__(self, task, samples, stage: str):
        out = Path(self.config.train.out) / stage
        checkpoint = out / "checkpoint.pt"
        resume = self.config.train.resume and (checkpoint.is_file() or not self.results)
        train = dataclasses.replace(self.config.train, out=str(out), resume=resume)
        stage_config = dataclasses.replace(self.config, train=train)
        if is_finished(Path(train.out), stage_config):
            state = ckpt.load(checkpoint)
            task.load_state_dict(state["task"])
            self.results[checkpoint] = TrainResult(state["step"], state["epoch"], False, state.get("best"), checkpoint)
            return task.to(self.world.device)
        main_data = samples is self.train_samples
        if main_data and isinstance(task, Distiller):
            attach_cache(task, stage_config, samples, self.world)
        self.results[checkpoint] = Trainer(task, samples, stage_config, world=self.world,
                                           evaluator=self.evaluator if main_data else None).fit()
        return task
