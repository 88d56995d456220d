"""Every shipped distillation config loads, names a real method, and its options pass that method's parser.

Synthetic-benchmark configs are also built for real (`Distiller.create`) against a random-weight
teacher of the architecture the config's comment says to train, so a student that cannot meet its
method's constraints (same stage sizes, same embedding size, same architecture) fails here.
MS1MV2 configs are checked structurally: building r100 students and teachers is too slow for
the default suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facekd.distill.common import probe_features
from facekd.distill.config import DistillExperimentConfig
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.registry import distiller_class, method_options
from facekd.distill.teacher import Teacher
from facekd.models import build_backbone
from facekd.train.build import backbone_options
from facekd.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "distill").glob("*.yaml"))
SYNTH_CLASSES = 600  # `facekd synth` default identities

# The teachers the configs' comments tell users to train: checkpoint -> (train config, overrides).
FACEKD_TEACHERS = {
    "runs/synth_teacher/checkpoint.pt": ("configs/train/synth_teacher.yaml", []),
    "runs/synth_teacher_fcn/checkpoint.pt": (
        "configs/train/synth_teacher.yaml", ["model.kwargs={width: 0.25, num_features: 128, fcn: true}"]),
    "runs/ms1mv2_r100_fcn/checkpoint.pt": (
        "configs/train/ms1mv2_r100.yaml", ["model.kwargs={num_features: 512, fcn: true}"]),
}
MARGIN_OPTIONS = ("m_max", "m_min", "m_arcface", "m_cosface")


def load(path: Path) -> DistillExperimentConfig:
    return load_config(path, schema=DistillExperimentConfig, check_paths=False)


def teacher_spec(config: DistillExperimentConfig) -> tuple[str, dict, int]:
    """(architecture, build options, input size) of the config's teacher."""
    if config.teacher.path in FACEKD_TEACHERS:
        train_path, overrides = FACEKD_TEACHERS[config.teacher.path]
        trained = load_config(REPO / train_path, overrides, check_paths=False)
        return trained.model.backbone, backbone_options(trained), trained.model.input_size
    assert config.teacher.arch, f"{config.teacher.path}: a backbone.pth teacher needs teacher.arch"
    size = config.teacher.input_size or 112
    return config.teacher.arch, {**config.teacher.kwargs, "input_size": size}, size


def parsed_options(config: DistillExperimentConfig, tmp_path: Path):
    return method_options(config.distill.method, config.distill.options)


def test_every_method_file_has_configs():
    names = {path.name for path in CONFIGS}
    for method in ("resolution", "transfer", "neurons", "shrinkteanet", "margin"):
        assert f"synth_{method}.yaml" in names
        assert any(n.startswith("ms1mv2_") and n.endswith(f"_{method}.yaml") for n in names), method
    for method in ("ekd", "gkd", "adadistill", "arcdistill", "kd"):
        assert f"ms1mv2_r100_mbf_{method}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_valid_options(path: Path, tmp_path: Path):
    config = load(path)
    options = parsed_options(config, tmp_path)
    head = config.head
    assert 16.0 <= head.s <= 128.0, f"head.s {head.s}"
    assert head.m1 == 1.0 and 0.0 <= head.m2 < 1.0 and 0.0 <= head.m3 < 1.0, head
    assert head.m2 > 0 or head.m3 > 0, "an identity loss without margin"
    if hasattr(options, "s"):
        assert 16.0 <= options.s <= 128.0, f"options.s {options.s}"
    for name in MARGIN_OPTIONS:
        if hasattr(options, name):
            assert 0.0 <= getattr(options, name) < 1.0, f"options.{name} {getattr(options, name)}"
    if hasattr(options, "m_min"):
        assert options.m_min <= options.m_max
    if hasattr(options, "temperature"):
        assert 1.0 <= options.temperature <= 20.0
    schedule, train = config.schedule, config.train
    assert schedule.warmup_epochs < train.epochs
    assert list(schedule.milestones) == sorted(schedule.milestones)
    assert all(0 < m < train.epochs for m in schedule.milestones), (schedule.milestones, train.epochs)
    assert 0 < config.optim.lr <= 0.5 and 0 <= config.optim.weight_decay <= 1e-3
    assert train.out.startswith("runs/") and Path(train.out).name == path.stem


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("ms1mv2_")], ids=lambda p: p.stem)
def test_ms1mv2_config_matches_its_method_constraints(path: Path):
    config = load(path)
    method = config.distill.method
    assert config.data.train == "/data/ms1mv2" and len(config.data.val_bins) == 3
    arch, kwargs, size = teacher_spec(config)
    assert arch == "r100" and size == 112
    student = config.model.kwargs
    if method in ("margin", "arcdistill", "adadistill"):
        assert student.get("num_features", 512) == kwargs.get("num_features", 512)
    if method in ("margin", "arcdistill", "kd", "gkd", "transfer"):
        assert config.teacher.head or config.teacher.path.startswith("runs/"), "the method needs the centres"
    if method == "margin":
        assert config.train.flip is False and config.train.batch_size == 256
    if method == "resolution":
        assert kwargs.get("fcn") and student.get("fcn"), "resolution needs a fully convolutional teacher"
        assert config.model.input_size < size
        assert config.model.backbone == arch and {**student, "input_size": size} == kwargs
    if method == "shrinkteanet":
        # Stage map sizes depend only on the strides, not on width or depth: probe thin copies.
        thin = {"width": 0.0625, "depth": 0.1, "num_features": 8}
        s_maps = probe_features(build_backbone(config.model.backbone, **thin, input_size=config.model.input_size),
                                config.model.input_size)["stages"]
        t_maps = probe_features(build_backbone(arch, **thin, input_size=size), size)["stages"]
        assert [m.shape[-2:] for m in s_maps] == [m.shape[-2:] for m in t_maps]


def random_teacher(config: DistillExperimentConfig, num_classes: int) -> Teacher:
    arch, kwargs, size = teacher_spec(config)
    network = build_backbone(arch, **kwargs)
    centres = torch.randn(num_classes, network.spec.kwargs["num_features"])
    return Teacher(network, input_size=size, centres=centres, source=config.teacher.path)


# neurons needs the attribute images to select its neurons; its options are checked above.
SYNTH_BUILDABLE = [p for p in CONFIGS if p.name.startswith("synth_") and p.stem != "synth_neurons"]


@pytest.mark.parametrize("path", SYNTH_BUILDABLE, ids=lambda p: p.stem)
def test_synth_config_builds_its_distiller_and_backpropagates(path: Path, tmp_path: Path):
    torch.manual_seed(0)
    config = load(path)
    head = config.head
    setup = DistillSetup(
        teacher=random_teacher(config, SYNTH_CLASSES),
        student=StudentSpec(config.model.backbone, backbone_options(config), config.model.input_size),
        num_classes=SYNTH_CLASSES,
        margin=(head.s, head.m1, head.m2, head.m3),
        options=method_options(config.distill.method, config.distill.options),
        out_dir=tmp_path,
    )
    distiller = distiller_class(config.distill.method).create(setup)
    assert distiller.input_size == config.model.input_size
    batch = {
        "image": torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8),
        "label": torch.tensor([0, 1, 2, 3]),
        "index": torch.arange(4),
        "flipped": torch.zeros(4, dtype=torch.bool),
    }
    losses = {k: v for k, v in distiller(batch).items() if k.startswith("loss")}
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in distiller.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
