"""The method API: typed options checked at load, --set at any depth, --list-methods, kept logs,
refused reruns, and the house rules (no method imports another, one registry)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.data.face_rec import write_face_rec
from facekd.distill.config import DistillExperimentConfig
from facekd.distill.registry import METHODS, available_methods, distiller_class
from facekd.errors import ConfigError
from facekd.models import build_backbone
from facekd.train.config import load_config

SRC = Path(__file__).resolve().parents[1] / "src" / "facekd"
METHODS_DIR = SRC / "distill" / "methods"


def load_distill(tmp_path: Path, text: str, overrides: list[str] = ()) -> DistillExperimentConfig:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, list(overrides), schema=DistillExperimentConfig, check_paths=False)


def test_options_are_typed_at_load_and_1e_3_is_a_float(tmp_path):
    config = load_distill(tmp_path, "distill: {method: neurons, options: {lam: 1e-3, top_k: 3}}\n")
    assert config.distill.options == {"lam": 0.001, "top_k": 3}
    options = distiller_class("neurons").Options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options().lam = 1.0


@pytest.mark.parametrize("options, words", [
    ("{lamda: 1e-3}", ["neurons", "lamda", "lam"]),  # a typo: the method, the name, what it has
    ("{lam: abc}", ["neurons.lam", "'abc'", "float"]),
    ("{lam: -1.0}", ["neurons.lam", "-1.0", ">= 0"]),
    ("{layer: top}", ["neurons.layer", "'top'", "embedding, pooled"]),
    ("{top_k: 2.5}", ["neurons.top_k", "2.5", "int"]),
])
def test_a_bad_option_fails_at_load_naming_method_field_found_and_expected(tmp_path, options, words):
    with pytest.raises(ConfigError) as error:
        load_distill(tmp_path, f"distill: {{method: neurons, options: {options}}}\n")
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_rules_across_fields_and_within_lists(tmp_path):
    with pytest.raises(ConfigError, match=r"margin\.m_min: found 0\.6, expected m_min <= m_max"):
        load_distill(tmp_path, "distill: {method: margin, options: {m_min: 0.6, m_max: 0.5}}\n")
    with pytest.raises(ConfigError, match=r"shrinkteanet\.stages: found \[1, 1\]"):
        load_distill(tmp_path, "distill: {method: shrinkteanet, options: {stages: [1, 1]}}\n")
    with pytest.raises(ConfigError, match=r"transfer\.stages: found \['alignment'\]"):
        load_distill(tmp_path, "distill: {method: transfer, options: {stages: [alignment]}}\n")
    with pytest.raises(ConfigError, match=r"--method: found 'marginn'"):
        load_distill(tmp_path, "distill: {method: marginn}\n")


def test_set_reaches_any_depth(tmp_path):
    config = load_distill(tmp_path, "distill: {method: neurons, options: {lam: 1e-3}}\n",
                          ["distill.options.lam=0.5", "distill.options.layer=pooled", "model.kwargs.width=0.5",
                           "model.kwargs.fcn=true"])
    assert config.distill.options == {"lam": 0.5, "layer": "pooled"}
    assert config.model.kwargs == {"width": 0.5, "fcn": True}
    with pytest.raises(ConfigError, match="distill.method is not a mapping"):
        load_distill(tmp_path, "distill: {method: neurons}\n", ["distill.method.x=1"])
    with pytest.raises(ConfigError, match="neurons has no option.s. lamb"):  # still checked after the override
        load_distill(tmp_path, "distill: {method: neurons}\n", ["distill.options.lamb=0.5"])


def test_every_method_declares_helped_frozen_options():
    for name in available_methods():
        method = distiller_class(name)
        assert dataclasses.is_dataclass(method.Options) and method.Options.__dataclass_params__.frozen, name
        method.Options()  # every field has a default
        for field in dataclasses.fields(method.Options):
            assert len(field.metadata.get("help", "")) > 10, f"{name}.{field.name} has no help"


def test_list_methods_prints_needs_and_options_with_defaults(capsys):
    assert main(["distill", "--list-methods"]) == 0
    out = capsys.readouterr().out
    for name in available_methods():
        assert f"\n{name}: " in "\n" + out, name
    margin = out[out.index("\nmargin: "):]
    margin = margin[:margin.index("\n", margin.index("needs from the teacher")) + 400]
    assert "cosine to its own class centre, class centres" in margin
    assert "m_max: float = 0.5" in margin and "m_min: float = 0.2" in margin
    assert "needs from the teacher: nothing, " not in out  # every method reads something of the teacher


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_method_imports_another_method():
    for path in METHODS_DIR.rglob("*.py"):
        relative = path.relative_to(METHODS_DIR)
        own = "facekd.distill.methods." + relative.parts[0].removesuffix(".py")
        for module in _imported_modules(path):
            if module.startswith("facekd.distill.methods."):
                assert module == own or module.startswith(own + "."), f"{relative} imports {module}"


def test_one_registry_mechanism():
    from facekd.models.registry import BACKBONES
    from facekd.registry import Registry

    assert isinstance(BACKBONES, Registry) and isinstance(METHODS, Registry)
    defined = [path.relative_to(SRC) for path in SRC.rglob("*.py") if "class Registry" in path.read_text()]
    assert defined == [Path("registry.py")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny RecordIO set and an FCN teacher checkpoint (resolution's student is the teacher at 16 px)."""
    root = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    write_face_rec(root / "train", [(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), label)
                                    for label in range(3) for _ in range(4)])
    torch.manual_seed(0)
    network = build_backbone("r18", width=0.125, depth=0.25, fcn=True, num_features=8, input_size=24)
    torch.save({"facekd": 1, "backbone_name": "r18", "backbone_kwargs": dict(network.spec.kwargs),
                "backbone": network.state_dict(), "task": {"head.weight": torch.randn(3, 8)}}, root / "teacher.pt")
    return root


def resolution_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--method", "resolution", "--teacher", str(root / "teacher.pt"), "--student", "r18",
            "--input-size", "16", "--data", str(root / "train"), "--out", str(out),
            "--set", "model.kwargs={width: 0.125, depth: 0.25, fcn: true, num_features: 8}",
            "--set", "train.epochs=1", "--set", "train.batch_size=6", "--set", "train.workers=0",
            "--set", "train.progress=false", "--set", "distill.cache=off", "--set", "train.log_interval=1", *extra]


def test_a_run_keeps_train_log_with_the_methods_diagnostics(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(resolution_args(tiny_run, out)) == 0
    log = (out / "train.log").read_text()
    assert "resolution: student at 16px costs" in log  # the method's FLOPs diagnostic, at INFO
    assert '"loss_kd"' in log  # the step records, at DEBUG
    assert "resolution: student at 16px costs" in capsys.readouterr().err  # and on the console


def test_a_rerun_into_a_used_folder_needs_resume_or_overwrite(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(resolution_args(tiny_run, out)) == 0
    first = (out / "log.jsonl").read_text()
    capsys.readouterr()
    assert main(resolution_args(tiny_run, out)) == 2
    error = capsys.readouterr().err.strip()
    assert "holds a previous run" in error and "--resume" in error and "--overwrite" in error
    assert len(error.splitlines()) == 1
    assert (out / "log.jsonl").read_text() == first  # nothing appended
    assert main(resolution_args(tiny_run, out, "--overwrite")) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == len(first.splitlines())  # started again, not appended
    assert main(resolution_args(tiny_run, out, "--resume")) == 0  # a finished run resumes to itself


def test_a_missing_teacher_names_the_flag_not_a_temporary_file(tiny_run, tmp_path, capsys):
    args = resolution_args(tiny_run, tmp_path / "run")
    args[args.index("--teacher") + 1] = str(tmp_path / "nope.pt")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "facekd distill flags" in error and "nope.pt" in error and "flags.yaml" not in error


def test_no_code_outside_the_methods_names_a_method():
    names = set(available_methods())
    for path in SRC.rglob("*.py"):
        if METHODS_DIR in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.relative_to(SRC)} names method {node.value!r}"


def test_ijb_protocols_come_from_the_registry(tmp_path):
    from facekd.evaluate.runner import IJB_PROTOCOLS, Evaluation

    assert sorted(IJB_PROTOCOLS.names()) == ["1n", "1v1"]
    evaluation = Evaluation(out=tmp_path, name="x", model=None, embeddings_path=None, device=torch.device("cpu"),
                            input_size=None, batch_size=1, nfolds=10, progress=False, norm_score=True,
                            detector_score=True, flip_test=True)
    with pytest.raises(ConfigError, match="IJB protocol: found '1x1', expected one of 1v1, 1n"):
        evaluation.ijb(tmp_path, "IJBC", ["1x1"])


def transfer_args(root: Path, out: Path, *extra: str) -> list[str]:
    args = resolution_args(root, out, "--set", "distill.options.stages=[classification, verification]",
                           "--set", "distill.options.init=none", *extra)
    args[args.index("--method") + 1] = "transfer"
    args[args.index("--input-size") + 1] = "24"
    return args


def steps(log: Path) -> list[dict]:
    """The step records of a run's log.jsonl, without their timing."""
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in log.read_text().splitlines()]


def test_a_pipeline_killed_between_stages_resumes_at_the_next_stage(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(transfer_args(tiny_run, out)) == 0
    first_stage = (out / "classification" / "log.jsonl").read_text()
    final = steps(out / "verification" / "log.jsonl")
    for path in (out / "verification").iterdir():  # killed after the first stage finished
        path.unlink()
    (out / "verification").rmdir()
    assert main(transfer_args(tiny_run, out, "--resume")) == 0
    assert (out / "classification" / "log.jsonl").read_text() == first_stage  # loaded, not retrained
    assert steps(out / "verification" / "log.jsonl") == final  # the same seeded stage again
    capsys.readouterr()
    assert main(transfer_args(tiny_run, tmp_path / "fresh", "--resume")) == 2  # nothing to resume: still refused
    assert "checkpoint not found" in capsys.readouterr().err
