"""Experiment configs: YAML loading, overrides and one-line errors; the shipped configs load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from facekd.errors import ConfigError
from facekd.train.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_values_overrides_and_defaults(tmp_path):
    data = tmp_path / "rec"
    data.mkdir()
    path = write(tmp_path, f"""
data: {{train: {data}}}
model: {{backbone: r18, input_size: 64, kwargs: {{width: 0.25}}}}
optim: {{lr: 1, weight_decay: 5e-4}}
schedule: {{kind: multistep, milestones: [8, 12]}}
train: {{epochs: 20}}
""")
    config = load_config(path, ["train.epochs=2", "optim.name=adamw", "head.partial_fc=true"])
    assert isinstance(config, ExperimentConfig)
    assert config.train.epochs == 2 and config.optim.name == "adamw" and config.head.partial_fc is True
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.weight_decay == 5e-4  # YAML 1.1 reads 5e-4 as a string
    assert config.schedule.milestones == [8.0, 12.0]
    assert config.model.kwargs == {"width": 0.25}
    assert config.train.batch_size == 128  # untouched default


@pytest.mark.parametrize("text, overrides, expected", [
    ("trian: {epochs: 2}", [], "unknown section 'trian'"),
    ("train: {epoch: 2}", [], "unknown field train.epoch"),
    ("train: {epochs: two}", [], "train.epochs must be int, found 'two'"),
    ("train: {epochs: 2.5}", [], "train.epochs must be int"),
    ("train: {amp: true}", [], "train.amp must be str"),
    ("train: {resume: 1}", [], "train.resume must be bool"),
    ("schedule: {milestones: 8}", [], "schedule.milestones must be a list"),
    ("schedule: {kind: step}", [], "schedule.kind is 'step', expected one of poly, multistep, cosine"),
    ("train: {batch_size: 0}", [], "train.batch_size and train.balanced_identities are both 0"),
    ("train: {batch_size: -1}", [], "train.batch_size is -1, expected 0 or more"),
    ("optim: {lr: -0.1}", [], "optim.lr is -0.1, expected 0 or more"),
    ("train: {balanced_identities: 4, balanced_images: 1}", [], "train.balanced_images is 1, expected 2 or more"),
    ("data: {val_bins: [/nonexistent/lfw.bin]}", [], "data.val_bins: /nonexistent/lfw.bin does not exist"),
    ("train: {epochs: 2}", ["train.epochs"], "expected section.field=value"),
    ("train: {epochs: 2}", ["train.nope=1"], "unknown field train.nope"),
    ("- a list", [], "expected a mapping of sections"),
])
def test_errors_are_one_line_and_name_the_field(tmp_path, text, overrides, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    message = str(error.value)
    assert expected in message and "\n" not in message
    if not message.startswith("--set"):
        assert str(path) in message


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


@dataclass
class MethodSection:
    method: str = "none"
    weight: float = 1.0


@dataclass
class WithDistill(ExperimentConfig):
    distill: MethodSection = field(default_factory=MethodSection)


def test_extra_sections_come_from_a_subclass(tmp_path):
    path = write(tmp_path, "distill: {method: ekd, weight: 2}")
    config = load_config(path, ["train.epochs=3"], schema=WithDistill)
    assert config.distill.method == "ekd" and config.distill.weight == 2.0 and config.train.epochs == 3
    with pytest.raises(ConfigError, match="unknown section 'distill'"):
        load_config(path)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path, check_paths=False)
    assert config.model.backbone in ("r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large")
    assert config.train.epochs > 0


def test_yaml_12_scalars_off_stays_a_word_and_1e_3_is_a_float(tmp_path):
    from facekd.distill.config import DistillExperimentConfig

    path = tmp_path / "c.yaml"
    path.write_text("distill: {method: neurons, cache: off, options: {lam: 1e-3, layer: embedding}}\n"
                    "optim: {weight_decay: 5e-4}\n")
    config = load_config(path, ["distill.cache_dtype=float32", "distill.options={lam: 2E-2, layer: pooled}"],
                         schema=DistillExperimentConfig, check_paths=False)
    assert config.distill.cache == "off"  # YAML 1.1 would give False and fail the str field
    assert config.optim.weight_decay == 5e-4
    assert config.distill.options == {"lam": 0.02, "layer": "pooled"}
    assert type(load_config(path, [], schema=DistillExperimentConfig, check_paths=False).distill.options["lam"]) is float
    overridden = load_config(path, ["distill.cache=on"], schema=DistillExperimentConfig, check_paths=False)
    assert overridden.distill.cache == "on"
