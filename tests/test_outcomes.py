"""Outcomes, not formulas: on a seeded tiny benchmark the teacher learns far above chance, and the
seed method with the clearest mechanism (KT+KD: the teacher's own weights at a lower resolution)
beats its same-resolution baseline on every seed. Minutes of CPU: behind the slow marker."""

from __future__ import annotations

import pytest

from facekd.compare.plan import plan_from_data
from facekd.compare.runner import run_compare
from facekd.runtime import pick_device
from facekd.train.config import load_yaml

PLAN = """
benchmark: {identities: 60, images_per_identity: 16, verify_identities: 60, verify_pairs: 600,
            gallery_identities: 20, probes_per_identity: 2, distractors: 20,
            celeba_identities: 12, celeba_images_per_identity: 8}
networks:
  teacher: {backbone: r18, input_size: 32, kwargs: {width: 0.25, num_features: 64, fcn: true}}
  low_res: {backbone: r18, input_size: 20, kwargs: {width: 0.25, num_features: 64, fcn: true}}
teacher: {network: teacher, epochs: 10}
student: {network: low_res, epochs: 2}
recipe: {batch_size: 32, lr: 0.1, margin_s: 32.0}
method_options: {resolution: {mode: kt+kd}}
methods: [resolution]
"""


@pytest.mark.slow
def test_teacher_learns_and_kt_kd_beats_its_baseline(tmp_path):
    plan = plan_from_data(load_yaml(PLAN), "outcome plan")
    comparison = run_compare(tmp_path, plan, plan.runs(["resolution"]), [0, 1], device=pick_device("cpu"),
                             say=lambda message: None, synth_workers=2)
    assert comparison.teacher.accuracy > 0.75  # chance is 0.5
    by_label = {result.run.label: result for result in comparison.results}
    kt_kd, baseline = by_label["resolution"], by_label["baseline"]
    for ours, theirs in zip(kt_kd.scores, baseline.scores):
        assert ours.accuracy > theirs.accuracy + 0.02
