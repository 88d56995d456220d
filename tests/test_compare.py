"""`facekd compare` on a tiny plan: every seed method trains, is scored, paired and reported; a rerun
reuses everything; a lost run is retrained alone. Plus the plan grammar and the packaged presets."""

from __future__ import annotations

import json
import math
import shutil

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from facekd.cli import main
from facekd.compare.plan import load_plan, plan_from_data
from facekd.compare.runner import run_compare
from facekd.distill.registry import available_methods
from facekd.errors import ConfigError
from facekd.runtime import pick_device
from facekd.train.config import load_yaml

SEED_METHODS = ["resolution", "transfer", "neurons", "shrinkteanet", "margin"]
TINY_PLAN = """
benchmark: {identities: 8, images_per_identity: 8, size: 32, verify_identities: 10, verify_pairs: 40,
            gallery_identities: 6, probes_per_identity: 1, distractors: 6,
            celeba_identities: 12, celeba_images_per_identity: 8}
networks:
  teacher: {backbone: r18, input_size: 32, kwargs: {width: 0.25, depth: 0.25, num_features: 32, fcn: true}}
  small: {backbone: r18, input_size: 32, kwargs: {width: 0.125, depth: 0.25, num_features: 32, fcn: true}}
  low_res: {backbone: r18, input_size: 16, kwargs: {width: 0.25, depth: 0.25, num_features: 32, fcn: true}}
teacher: {network: teacher, epochs: 1}
student: {network: small, epochs: 1}
recipe: {batch_size: 16, lr: 0.05, margin_s: 16.0}
method_networks: {resolution: low_res}
method_options: {resolution: {mode: kt+kd}, neurons: {top_k: 8}}
variants:
  kd_only: {method: resolution, network: low_res, options: {mode: kd}}
methods: [resolution, transfer, neurons, shrinkteanet, margin]
"""


def tiny_plan():
    return plan_from_data(load_yaml(TINY_PLAN), "tiny plan")


def summaries(out):
    return {run["label"]: run for run in json.loads((out / "compare.json").read_text())["runs"]}


def quiet(message: str) -> None:
    pass


def test_compare_trains_scores_pairs_and_reports_every_seed_method(tmp_path):
    plan = tiny_plan()
    runs = plan.runs(SEED_METHODS)
    assert [r.label for r in runs] == ["baseline", "baseline@low_res", *SEED_METHODS]
    run_compare(tmp_path, plan, runs, [0, 1], device=pick_device("cpu"), say=quiet, synth_workers=1)

    text = (tmp_path / "compare.md").read_text()
    for label in ["teacher", "baseline", "baseline@low_res", *SEED_METHODS]:
        assert f"\n| {label} |" in text
    # 2 seeds: sqrt(1 / chi2(0.975, 1)) = 0.45 and sqrt(1 / chi2(0.025, 1)) = 31.9
    assert "A std over 2 seeds is itself uncertain: the true one lies between 0.45x and 31.91x" in text
    first = summaries(tmp_path)
    for label in SEED_METHODS:
        run, baseline = first[label], first[first[label]["baseline"]]
        assert baseline["label"] == ("baseline@low_res" if label == "resolution" else "baseline")
        ours = np.array([s["accuracy"] for s in run["scores"]])
        theirs = np.array([s["accuracy"] for s in baseline["scores"]])
        assert run["summary"]["accuracy"]["mean"] == pytest.approx(ours.mean())
        assert run["summary"]["accuracy"]["std"] == pytest.approx(ours.std(ddof=1))
        diff = ours - theirs
        half = stats.t.ppf(0.975, 1) * diff.std(ddof=1) / math.sqrt(2)
        paired = run["paired"]["accuracy"]
        assert (paired["mean"], paired["low"], paired["high"]) == pytest.approx(
            (diff.mean(), diff.mean() - half, diff.mean() + half))
        assert f"| {label} | {baseline['label']} | {100 * diff.mean():+.2f} [" in text
    figure = matplotlib.image.imread(tmp_path / "compare.png")
    assert figure.ndim == 3 and figure.shape[0] > 200 and figure.shape[1] > 200

    # A rerun reuses every trained network; a run whose checkpoint is lost is retrained alone.
    run_compare(tmp_path, plan, runs, [0, 1], device=pick_device("cpu"), say=quiet, synth_workers=1)
    again = summaries(tmp_path)
    assert all(all(run["reused"]) for run in again.values())
    assert {k: v["train_seconds"] for k, v in again.items()} == {k: v["train_seconds"] for k, v in first.items()}
    assert {k: v["scores"] for k, v in again.items()} == {k: v["scores"] for k, v in first.items()}
    shutil.rmtree(tmp_path / "runs" / "margin" / "seed1")
    run_compare(tmp_path, plan, runs, [0, 1], device=pick_device("cpu"), say=quiet, synth_workers=1)
    retrained = {(label, seed) for label, run in summaries(tmp_path).items()
                 for seed, reused in zip(run["seeds"], run["reused"]) if not reused}
    assert retrained == {("margin", 1)}


def test_compare_command_writes_the_three_files(tmp_path, capsys):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(TINY_PLAN)
    out = tmp_path / "out"
    assert main(["compare", "--plan", str(plan_file), "--methods", "kd_only,baseline", "--seeds", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert {"compare.md", "compare.json", "compare.png"} <= {p.name for p in out.iterdir()}
    printed = capsys.readouterr().out
    assert "| kd_only | baseline@low_res | " in printed
    row = next(line for line in printed.splitlines() if line.startswith("| kd_only | low_res |"))
    assert "±" not in row  # one seed: a mean, no spread
    runs = summaries(out)
    assert runs["kd_only"]["options"] == {"mode": "kd"} and runs["kd_only"]["seeds"] == [3]


def test_run_names_parse_to_method_network_and_options():
    plan = tiny_plan()
    run = plan.run("resolution:mode=kt@small")
    assert (run.label, run.method, run.network, run.options) == ("resolution:mode=kt@small", "resolution",
                                                                "small", {"mode": "kt"})
    assert plan.run("resolution").network == "low_res" and plan.run("resolution").options == {"mode": "kt+kd"}
    assert plan.run("neurons:lam=0.5").options == {"top_k": 8, "lam": 0.5}
    assert plan.run("kd_only").options == {"mode": "kd"}
    assert plan.run("baseline@low_res").label == "baseline@low_res"
    assert plan.run("margin").folder == "margin" and plan.run("resolution:mode=kt@small").folder == "resolution_mode_kt_small"


@pytest.mark.parametrize("entry, message", [
    ("magic", "unknown method 'magic'"),
    ("margin@huge", "unknown network 'huge'"),
    ("neurons:lam=abc", "neurons.lam: found 'abc', expected float"),
    ("neurons:lam", "'lam', expected option=value"),
    ("baseline:lr=1", "the baseline takes no options"),
])
def test_bad_run_names_are_refused_in_one_line(entry, message):
    with pytest.raises(ConfigError, match=message):
        tiny_plan().run(entry)


def test_every_distillation_method_is_a_run_name():
    plan = tiny_plan()
    for method in available_methods():
        assert plan.run(method).method == method


def test_a_run_named_twice_is_refused():
    with pytest.raises(ConfigError, match="named twice"):
        tiny_plan().runs(["margin", "margin"])


@pytest.mark.parametrize("edit, message", [
    ({"teacher": {"network": "nope", "epochs": 1}}, "teacher.network: found 'nope'"),
    ({"student": {"network": "small", "epochs": 0}}, "student.epochs: found 0, expected at least 1"),
    ({"recipe": {"lr": "fast"}}, "recipe.lr must be float"),
    ({"benchmark": {"verify_pairs": 33}}, "verify_pairs 33, expected a multiple of 20"),
    ({"extra": {}}, "unknown section 'extra'"),
    ({"variants": {"v": {"network": "small"}}}, "variants.v: expected the fields method"),
])
def test_bad_plans_are_refused_naming_the_field(edit, message):
    raw = load_yaml(TINY_PLAN) | edit
    with pytest.raises(ConfigError, match=message):
        plan_from_data(raw, "tiny plan")


def test_presets_load_and_their_methods_are_the_five_seed_methods():
    for name in ("quick", "default"):
        plan = load_plan(name)
        runs = plan.runs(list(plan.methods))
        assert {r.method for r in runs} == {"baseline", *SEED_METHODS}
        assert plan.networks[plan.teacher.network].input_size > plan.networks[plan.run("resolution").network].input_size


def test_an_unknown_plan_is_named():
    with pytest.raises(ConfigError, match="--plan: found 'nowhere.yaml', expected quick or default"):
        load_plan("nowhere.yaml")


def test_a_plan_file_extends_a_preset_and_its_variants_set_the_teacher_centres(tmp_path):
    from facekd.compare.training import student_config

    (tmp_path / "plan.yaml").write_text("extends: quick\nvariants:\n  margin_derived: {method: margin, "
                                        "teacher_centres: derived}\n")
    plan = load_plan(str(tmp_path / "plan.yaml"))
    assert plan.benchmark == load_plan("quick").benchmark and plan.source == str(tmp_path / "plan.yaml")
    run = plan.run("margin_derived")
    config = student_config(plan, run, 0, tmp_path, tmp_path / "teacher.pt", tmp_path / "out", tmp_path / "cache")
    assert config.teacher.centres == "derived" and config.distill.method == "margin"
    assert student_config(plan, plan.run("margin"), 0, tmp_path, tmp_path / "teacher.pt", tmp_path / "out",
                          tmp_path / "cache").teacher.centres == ""
    (tmp_path / "bad.yaml").write_text("extends: huge\n")
    with pytest.raises(ConfigError, match="extends: found 'huge', expected one of quick, default"):
        load_plan(str(tmp_path / "bad.yaml"))
