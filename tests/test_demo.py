"""The main job's whole pipeline on a tiny plan: every seed method trains, evaluates and is reported."""

from __future__ import annotations

import json

from facekd.data.synthetic import SynthConfig
from facekd.demo import DemoPlan, Network, StudentRun, demo_plan, run_demo
from facekd.runtime import pick_device


def tiny_plan() -> DemoPlan:
    small = {"width": 0.125, "depth": 0.25, "fcn": True, "num_features": 32}
    teacher = Network("r18", {**small, "width": 0.25}, 32)
    student = Network("r18", small, 32)
    low_res = Network("r18", {**small, "width": 0.25}, 16)
    students = tuple(StudentRun(name, folder, network, method, options) for name, folder, network, method, options in [
        ("baseline", "baseline", student, "", {}),
        ("resolution", "resolution", low_res, "resolution", {"mode": "kt+kd"}),
        ("transfer", "transfer", student, "transfer", {}),
        ("neurons", "neurons", student, "neurons", {"top_k": 8}),
        ("shrinkteanet", "shrinkteanet", student, "shrinkteanet", {}),
        ("margin", "margin", student, "margin", {}),
    ])
    synth = SynthConfig(identities=8, images_per_identity=8, size=32, verify_identities=10, verify_pairs=40,
                        gallery_identities=6, probes_per_identity=1, distractors=6,
                        celeba_identities=12, celeba_images_per_identity=8)
    return DemoPlan(synth, teacher, teacher_epochs=1, student_epochs=1, batch_size=16, lr=0.05,
                    margin_s=16.0, students=students)


def test_demo_runs_every_seed_method_and_reports(tmp_path):
    plan = tiny_plan()
    report = run_demo(tmp_path, plan, device=pick_device("cpu"), synth_workers=1)
    text = report.read_text()
    for run in plan.students:
        assert f"| {run.name} |" in text
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_flops.png").stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())["models"]
    assert [m["name"] for m in results] == ["teacher"] + [run.name for run in plan.students]
    for model in results:
        assert 0.0 <= model["accuracy"] <= 1.0 and model["flops"] > 0
    # A second run reuses every trained network and only re-evaluates.
    run_demo(tmp_path, plan, device=pick_device("cpu"), synth_workers=1)
    again = json.loads((tmp_path / "results.json").read_text())["models"]
    assert all(m["train_seconds"] == 0.0 for m in again)
    assert [m["accuracy"] for m in again] == [m["accuracy"] for m in results]


def test_default_plans_cover_the_seed_methods():
    for quick in (False, True):
        methods = {run.method for run in demo_plan(quick).students}
        assert methods == {"", "resolution", "transfer", "neurons", "shrinkteanet", "margin"}
