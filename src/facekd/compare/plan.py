"""A comparison plan: the benchmark, the networks, the recipe every run shares, and the runs.

A plan is one YAML file (the packaged presets are `facekd/presets/compare_{quick,default}.yaml`)
with shallow, typed sections:

    benchmark:  SynthConfig fields (identities, difficulty, verify_pairs, ...)
    networks:   name -> {backbone, input_size, kwargs}
    teacher:    {network, epochs, seed}
    student:    {network, epochs}             the default student of every run
    recipe:     {batch_size, lr, margin_s, margin_m, warmup_epochs}
    method_networks: method -> network        a method whose student differs (resolution: low_res)
    method_options:  method -> options        a method's options in this plan
    variants:   label -> {method, network, options, teacher_centres}   named runs, usable in --methods
    methods:    the runs `compare` trains when --methods is not given
    extends:    a preset (quick, default) whose sections this file replaces one by one

A run is named on the command line as `METHOD[:option=value...][@NETWORK]`, e.g. `margin`,
`resolution:mode=kt@px24` or `baseline@low_res`; `baseline` trains the student with no teacher.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from facekd.data.synthetic import SynthConfig
from facekd.distill.centres import CENTRE_MODES
from facekd.distill.registry import available_methods, method_options
from facekd.errors import ConfigError
from facekd.fileio import read_utf8
from facekd.train.config import coerce, load_yaml, section_from_dict

BASELINE = "baseline"  # the student trained with its identity loss alone, no teacher
PRESETS = ("quick", "default")


@dataclass(frozen=True)
class Network:
    """A backbone as the configs name it: registry name, options and input resolution."""

    backbone: str
    input_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def model_section(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "kwargs": dict(self.kwargs), "input_size": self.input_size}

    def describe(self) -> str:
        options = ", ".join(f"{k} {v}" for k, v in self.kwargs.items())
        return f"{self.backbone} ({options}) at {self.input_size} px"


@dataclass(frozen=True)
class TeacherPlan:
    network: str
    epochs: int
    seed: int = 2048


@dataclass(frozen=True)
class StudentPlan:
    network: str
    epochs: int


@dataclass(frozen=True)
class Recipe:
    """What every network trains with: SGD with momentum, cosine schedule, ArcFace identity loss."""

    batch_size: int = 128
    lr: float = 0.1
    margin_s: float = 32.0
    margin_m: float = 0.5
    warmup_epochs: float = 0.5


@dataclass(frozen=True)
class Run:
    """One row of the comparison: a method (or the baseline) on one student network."""

    label: str
    method: str  # BASELINE or a registered distillation method
    network: str
    options: dict[str, Any] = field(default_factory=dict)
    teacher_centres: str = ""  # teacher.centres of the run: "" (the teacher's), auto or derived

    @property
    def is_baseline(self) -> bool:
        return self.method == BASELINE

    @property
    def folder(self) -> str:
        """A file-system-safe name, unique per label."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label)


@dataclass(frozen=True)
class ComparePlan:
    benchmark: SynthConfig
    networks: dict[str, Network]
    teacher: TeacherPlan
    student: StudentPlan
    recipe: Recipe
    method_networks: dict[str, str]
    method_options: dict[str, dict[str, Any]]
    variants: dict[str, Run]
    methods: tuple[str, ...]
    source: str

    def baseline_label(self, network: str) -> str:
        return BASELINE if network == self.student.network else f"{BASELINE}@{network}"

    def run(self, entry: str) -> Run:
        """The run that one --methods entry names (see the module docstring)."""
        entry = entry.strip()
        if entry in self.variants:
            return self.variants[entry]
        text, _, network = entry.partition("@")
        method, *assignments = text.split(":")
        if method != BASELINE and method not in available_methods():
            raise ConfigError(f"--methods: {entry!r}: unknown method {method!r}, expected {BASELINE}, one of "
                              f"{', '.join(available_methods())}, or a variant of {self.source} "
                              f"({', '.join(self.variants) or 'none'})")
        network = network or self.method_networks.get(method, self.student.network)
        if network not in self.networks:
            raise ConfigError(f"--methods: {entry!r}: unknown network {network!r}, expected one of "
                              f"{', '.join(self.networks)} (the networks of {self.source})")
        options = dict(self.method_options.get(method, {}))
        for assignment in assignments:
            name, sep, value = assignment.partition("=")
            if not sep or not name:
                raise ConfigError(f"--methods: {entry!r}: {assignment!r}, expected option=value")
            options[name] = load_yaml(value)
        if method == BASELINE:
            if options:
                raise ConfigError(f"--methods: {entry!r}: the baseline takes no options")
        else:
            method_options(method, options)  # refuse a bad option now, before any training
        label = entry if entry != method or network != self.student.network else method
        return Run(label, method, network, options)

    def runs(self, entries: list[str]) -> list[Run]:
        """The runs named by `entries`, in order, plus the baseline of every student network used
        (a paired difference needs it); duplicates refused."""
        runs = [self.run(entry) for entry in entries]
        labels = [run.label for run in runs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--methods: {', '.join(entries)}: a run is named twice")
        present = {run.network for run in runs if run.is_baseline}
        missing = [network for network in dict.fromkeys(run.network for run in runs) if network not in present]
        missing.sort(key=lambda network: network != self.student.network)  # the default student's first
        return [Run(self.baseline_label(network), BASELINE, network) for network in missing] + runs


def _mapping(raw: Any, where: str, source: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, found {raw!r}")
    return raw


def _typed(section: type, raw: Any, where: str, source: str) -> Any:
    """A frozen dataclass from a mapping, by the config loader's own rules."""
    return section_from_dict(_mapping(raw, where, source), section, where, source)


SECTIONS = ("benchmark", "networks", "teacher", "student", "recipe", "method_networks", "method_options",
            "variants", "methods", "extends")


def plan_from_data(raw: Any, source: str) -> ComparePlan:
    raw = _mapping(raw, "the plan", source)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}, expected one of {', '.join(SECTIONS)}")
    benchmark = _typed(SynthConfig, raw.get("benchmark"), "benchmark", source)
    try:
        benchmark.check()
    except ConfigError as exc:
        raise ConfigError(f"{source}: benchmark.{exc}") from None
    networks = {name: _typed(Network, body, f"networks.{name}", source)
                for name, body in _mapping(raw.get("networks"), "networks", source).items()}
    teacher = _typed(TeacherPlan, raw.get("teacher"), "teacher", source)
    student = _typed(StudentPlan, raw.get("student"), "student", source)
    for where, name in (("teacher.network", teacher.network), ("student.network", student.network)):
        if name not in networks:
            raise ConfigError(f"{source}: {where}: found {name!r}, expected one of {', '.join(networks) or '(none)'}")
    for where, epochs in (("teacher.epochs", teacher.epochs), ("student.epochs", student.epochs)):
        if epochs < 1:
            raise ConfigError(f"{source}: {where}: found {epochs}, expected at least 1")
    method_networks = {str(k): str(v) for k, v in _mapping(raw.get("method_networks"), "method_networks", source).items()}
    plan = ComparePlan(
        benchmark=benchmark, networks=networks, teacher=teacher, student=student,
        recipe=_typed(Recipe, raw.get("recipe"), "recipe", source),
        method_networks=method_networks,
        method_options={str(k): dict(_mapping(v, f"method_options.{k}", source))
                        for k, v in _mapping(raw.get("method_options"), "method_options", source).items()},
        variants={}, methods=tuple(coerce(raw.get("methods") or [], list[str], "methods", source)), source=source)
    variants = {}
    for label, body in _mapping(raw.get("variants"), "variants", source).items():
        body = _mapping(body, f"variants.{label}", source)
        unknown = sorted(set(body) - {"method", "network", "options", "teacher_centres"})
        if unknown or "method" not in body:
            raise ConfigError(f"{source}: variants.{label}: expected the fields method, network, options and "
                              f"teacher_centres (all but method optional), found {', '.join(sorted(body)) or 'none'}")
        centres = str(body.get("teacher_centres") or "")
        if centres not in CENTRE_MODES:
            raise ConfigError(f"{source}: variants.{label}.teacher_centres: found {centres!r}, expected auto or derived")
        entry = str(body["method"]) + (f"@{body['network']}" if body.get("network") else "")
        run = plan.run(entry)
        options = {**run.options, **_mapping(body.get("options"), f"variants.{label}.options", source)}
        if not run.is_baseline:
            method_options(run.method, options)
        variants[str(label)] = Run(str(label), run.method, run.network, options, centres)
    return dataclasses.replace(plan, variants=variants)


def _raw_plan(name: str) -> tuple[Any, str]:
    if name in PRESETS:
        text = resources.files("facekd").joinpath("presets", f"compare_{name}.yaml").read_text()
        source = f"the {name} plan"
    else:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--plan: found {name!r}, expected {' or '.join(PRESETS)} or a plan YAML file")
        text, source = read_utf8(path, "a compare plan (YAML)", ConfigError), str(path)
    try:
        return load_yaml(text), source
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None


def load_plan(name: str) -> ComparePlan:
    """A packaged preset (quick, default) or a plan file, which may extend a preset."""
    raw, source = _raw_plan(name)
    if isinstance(raw, dict) and "extends" in raw:
        base = str(raw.pop("extends"))
        if base not in PRESETS:
            raise ConfigError(f"{source}: extends: found {base!r}, expected one of {', '.join(PRESETS)}")
        raw = {**_raw_plan(base)[0], **raw}
    return plan_from_data(raw, source)
