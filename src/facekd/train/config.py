"""Typed experiment configs: YAML in, shallow dataclasses out, one-line ConfigErrors.

A config is a top-level dataclass whose fields are section dataclasses (`data`, `model`, ...).
The loader is driven by the dataclass fields, so a distillation config adds its `distill:`
section by subclassing `ExperimentConfig` and passing the subclass as `schema`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"

from facekd.errors import ConfigError
from facekd.fileio import read_utf8

PATH = {"path": True}  # field metadata: the value names a file or folder that must exist


@dataclass
class DataConfig:
    # A RecordIO folder (train.rec, train.idx, property), an image folder (one sub-folder per
    # identity) or a list file ("relative/path label" per line).
    train: str = field(default="", metadata=PATH)
    format: str = "auto"  # auto | rec | folder | list
    val_bins: list[str] = field(default_factory=list, metadata=PATH)
    val_batch_size: int = 128
    skip_bad: bool = False  # RecordIO: drop records that fail to frame or decode (counted, logged) instead of stopping


@dataclass
class ModelConfig:
    backbone: str = "r50"
    input_size: int = 112  # the task resizes larger images down to this
    kwargs: dict[str, Any] = field(default_factory=dict)  # forwarded to build_backbone
    # Start the backbone from these weights (facekd checkpoint or insightface backbone.pth), e.g. to
    # fine-tune; they must fit backbone + kwargs. A resumed run continues from its checkpoint instead.
    init: str = field(default="", metadata=PATH)


@dataclass
class HeadConfig:
    # CombinedMargin: cos(m1*theta + m2) - m3, scaled by s. ArcFace is (1.0, 0.5, 0.0).
    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0
    partial_fc: bool = False  # only takes effect when world_size > 1
    sample_rate: float = 1.0


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # for the whole global batch (batch_size x world_size x grad_accum)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    kind: str = "poly"  # poly | multistep | cosine
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # overrides warmup_epochs when > 0
    power: float = 2.0  # poly exponent; arcface_torch uses 2
    milestones: list[float] = field(default_factory=list)  # multistep, in epochs
    gamma: float = 0.1  # multistep decay factor
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128  # random images per process and batch
    # > 0 appends balanced_identities x balanced_images images of that many identities to every
    # batch (pair and triplet losses need positives); batch_size may then be 0.
    balanced_identities: int = 0
    balanced_images: int = 4
    grad_accum: int = 1
    grad_clip: float = 5.0  # max gradient norm of the backbone; 0 disables
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | off | bf16 | fp16
    seed: int = 2048
    flip: bool = True
    workers: int = 2
    log_interval: int = 50  # steps
    eval_interval: int = 0  # steps; 0 evaluates at the end of every epoch only
    ckpt_interval: int = 0  # steps; 0 checkpoints at the end of every epoch only
    out: str = "runs/train"
    resume: bool = False
    device: str = "auto"
    progress: bool = True

    @property
    def images_per_batch(self) -> int:
        """Images per process and batch: the random part plus the identity-balanced part."""
        return self.batch_size + self.balanced_identities * self.balanced_images


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


Config = TypeVar("Config")

CHOICES = {
    ("data", "format"): ("auto", "rec", "folder", "list"),
    ("optim", "name"): ("sgd", "adamw"),
    ("schedule", "kind"): ("poly", "multistep", "cosine"),
    ("train", "amp"): ("auto", "off", "bf16", "fp16"),
}
NON_NEGATIVE = {("train", "batch_size"), ("train", "balanced_identities"), ("optim", "lr"), ("train", "workers")}
POSITIVE = {("train", "epochs"), ("train", "grad_accum"),
            ("train", "log_interval"), ("model", "input_size"), ("data", "val_batch_size")}


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 scalars, as users expect: only true/false are booleans (`cache: off` stays the
    string "off") and `1e-3` is a float (YAML 1.1 reads it as a string: it has no dot)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rule) for tag, rule in rules if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(  # added after the int rule, so "5" stays an int
    _FLOAT_TAG,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse config text with YAML 1.2 booleans and floats (see `_Yaml12Loader`)."""
    return yaml.load(text, Loader=_Yaml12Loader)


def load_config(path: str | Path, overrides: list[str] = (), schema: type[Config] = ExperimentConfig,
                check_paths: bool = True) -> Config:
    """Read a YAML config, apply `section.field=value` overrides, validate and return it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = read_utf8(path, "a UTF-8 YAML file", ConfigError)
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    return config_from_data(raw, overrides, schema, source=str(path), check_paths=check_paths)


def config_from_data(raw: dict, overrides: list[str] = (), schema: type[Config] = ExperimentConfig, *,
                     source: str, check_paths: bool = True) -> Config:
    """A validated config from plain sections (`source` names them in errors), after the overrides."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(raw, item)
    config = from_dict(raw, schema, source=source)
    validate(config, source=source, check_paths=check_paths)
    check_more = getattr(config, "check", None)  # schema-specific rules, e.g. a method's options
    if check_more is not None:
        check_more()
    return config


def from_dict(raw: dict, schema: type[Config], source: str = "config") -> Config:
    """Build `schema` from nested plain data, rejecting unknown sections, fields and wrong types."""
    sections = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    values = {}
    for name, body in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section {name!r}, expected one of {', '.join(sections)}")
        section_type = hints[name]
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, found {type(body).__name__}")
        values[name] = section_from_dict(body, section_type, name, source)
    return schema(**values)


def section_from_dict(body: dict, section_type: type, section: str, source: str) -> Any:
    """One dataclass from a mapping: unknown fields, wrong types and missing required fields refused."""
    fields = {f.name for f in dataclasses.fields(section_type)}
    hints = typing.get_type_hints(section_type)
    values = {}
    for key, value in body.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown field {section}.{key}, expected one of {', '.join(sorted(fields))}")
        values[key] = coerce(value, hints[key], f"{section}.{key}", source)
    try:
        return section_type(**values)
    except TypeError as exc:  # a required field left out
        raise ConfigError(f"{source}: {section}: {exc}") from None


def coerce(value: Any, expected: Any, where: str, source: str = "config") -> Any:
    """`value` as the type hint `expected` (int, float, str, bool, list/tuple/dict of them, optional)."""
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list, found {value!r}")
        items = [coerce(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping, found {value!r}")
        return dict(value)
    if expected is Any:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads "5e-4" (no dot) as a string; accept plain numerals only.
        try:
            return float(value)
        except ValueError:
            pass
    if expected in (int, float) and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{source}: {where} must be {expected.__name__}, found {value!r}")
    return value


def _apply_override(raw: dict, item: str) -> None:
    """`a.b.c=value` sets raw["a"]["b"]["c"], creating the mappings on the way (any depth)."""
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. train.epochs=2 "
                          "or distill.options.lam=0.5")
    try:
        value = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML") from exc
    body = raw
    for depth, name in enumerate(path[:-1]):
        if body.get(name) is None:
            body[name] = {}
        body = body[name]
        if not isinstance(body, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(path[:depth + 1])} is not a mapping")
    body[path[-1]] = value


def validate(config: Any, source: str = "config", check_paths: bool = True) -> None:
    """Check choices, positive counts and that referenced files exist."""
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            where = (section_field.name, f.name)
            value = getattr(section, f.name)
            if where in CHOICES and value not in CHOICES[where]:
                raise ConfigError(f"{source}: {'.'.join(where)} is {value!r}, expected one of {', '.join(CHOICES[where])}")
            if where in POSITIVE and value <= 0:
                raise ConfigError(f"{source}: {'.'.join(where)} is {value}, expected a positive integer")
            if where in NON_NEGATIVE and value < 0:
                raise ConfigError(f"{source}: {'.'.join(where)} is {value}, expected 0 or more")
            if check_paths and f.metadata.get("path"):
                for entry in value if isinstance(value, list) else [value]:
                    if entry and not Path(entry).exists():
                        raise ConfigError(f"{source}: {'.'.join(where)}: {entry} does not exist")
    train = getattr(config, "train", None)
    if isinstance(train, TrainConfig):
        validate_batch(train, source)


def validate_batch(train: TrainConfig, source: str) -> None:
    if train.balanced_identities > 0 and train.balanced_images < 2:
        raise ConfigError(f"{source}: train.balanced_images is {train.balanced_images}, expected 2 or more "
                          "(an identity-balanced part needs positive pairs)")
    if train.images_per_batch == 0:
        raise ConfigError(f"{source}: train.batch_size and train.balanced_identities are both 0, "
                          "so a batch holds no images")


def to_dict(config: Any) -> dict:
    """Plain nested dict (for checkpoints and logs): loads with `torch.load(weights_only=True)`."""
    return dataclasses.asdict(config)
