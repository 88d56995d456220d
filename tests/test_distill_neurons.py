"""neurons (Luo et al. 2016): balanced accuracy, unary/pairwise terms, mean field, selection files, mimic training."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from distill_celeba_helpers import IDENTITY_ATTRIBUTES, one_thread, tiny_teacher, write_celeba  # noqa: F401 (fixture)
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.methods.neurons import NeuronDistiller
from facekd.distill.neuron_selection import (
    balanced_accuracy,
    choose_neurons,
    mean_field,
    pairwise_term,
    select_neurons,
    unary_term,
)
from facekd.distill.registry import method_options
from facekd.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_balanced_accuracy_matches_a_hand_count():
    # 6 images, 2 neurons, 2 attributes.
    activations = np.array([[5.0, 0.1], [4.0, 0.9], [3.0, 0.3], [2.0, 0.8], [1.0, 0.2], [0.0, 0.7]])
    attributes = np.array([[1, 1], [1, -1], [-1, 1], [1, -1], [-1, -1], [-1, 1]])
    expected = np.zeros((2, 2))
    for neuron in range(2):
        median = sorted(activations[:, neuron])[2:4]
        threshold = (median[0] + median[1]) / 2
        for attribute in range(2):
            tp = tn = pos = neg = 0
            for row in range(6):
                fires = activations[row, neuron] > threshold
                if attributes[row, attribute] == 1:
                    pos += 1
                    tp += fires
                else:
                    neg += 1
                    tn += not fires
            score = (tp / pos + tn / neg) / 2
            expected[neuron, attribute] = max(score, 1 - score)
    # Neuron 0 fires on rows 0-2: attribute 0 (+ on rows 0, 1, 3): TPR 2/3, TNR 2/3.
    assert expected[0, 0] == pytest.approx(2 / 3)
    assert np.allclose(balanced_accuracy(activations, attributes), expected)


def test_unary_and_pairwise_terms_by_hand():
    # 2 neurons x 4 attributes: IA = columns 0, 1; NA = columns 2, 3.
    x = np.array([[0.9, 0.5, 0.6, 0.6], [0.7, 0.6, 0.9, 0.5]])
    unary = unary_term(x, identity=[0, 1], unrelated=[2, 3])
    # neuron 0: NA max-mean = 0.6-0.6 = 0; IA 0.9-0.7 = 0.2 -> 0.  neuron 1: NA 0.9-0.7 = 0.2; IA 0.7-0.65 = 0.05 -> 4.
    assert unary == pytest.approx([0.0, 4.0])
    flat = unary_term(np.array([[0.6, 0.6, 0.9, 0.5]]), identity=[0, 1], unrelated=[2, 3])
    assert flat[0] > 1e5  # no identity selectivity: never preferred, no division by zero


def test_pairwise_kernel_uses_the_median_distance_as_bandwidth():
    # 3 neurons x 2 attributes: squared distances 0.01 (0-1), 0.04 (0-2), 0.01 + 0.04 = 0.05 (1-2).
    x = np.array([[0.5, 0.5], [0.6, 0.5], [0.5, 0.7]])
    psi, bandwidth = pairwise_term(x)
    assert bandwidth == pytest.approx(0.2)  # the median of 0.1, 0.2, sqrt(0.05)
    h2 = 2 * 0.2**2
    expected = np.array([[0.0, math.exp(-0.01 / h2), math.exp(-0.04 / h2)],
                         [math.exp(-0.01 / h2), 0.0, math.exp(-0.05 / h2)],
                         [math.exp(-0.04 / h2), math.exp(-0.05 / h2), 0.0]])
    assert psi == pytest.approx(expected)
    same, zero = pairwise_term(np.full((3, 4), 0.7))
    assert zero == 0.0 and same == pytest.approx(1.0 - np.eye(3))  # identical profiles: all redundant


def test_redundancy_term_drops_duplicated_neurons_at_positive_lambda():
    # A realistic table: balanced accuracies in [0.5, 0.65], where the unscaled kernel exp(-d^2/2)
    # is above 0.88 for every pair. The best neuron is duplicated 4 times.
    rng = np.random.default_rng(0)
    x = 0.5 + 0.15 * rng.random((40, 40))
    identity, unrelated = list(range(20)), list(range(20, 40))
    order = np.argsort(unary_term(x, identity, unrelated))
    group = [int(order[0]), *map(int, order[5:9])]
    x[group] = x[order[0]]
    unary = unary_term(x, identity, unrelated)
    psi, _ = pairwise_term(x)

    def chosen(lam):
        result = mean_field(unary, psi, lam=lam, phi0=1.0, damping=0.5, iterations=5000, tolerance=1e-12)
        assert result.converged
        return set(choose_neurons(result.q, 5).tolist())

    assert chosen(0.0) == set(group)  # without the pairwise term: the 5 copies of the best profile
    assert len(chosen(1.0) & set(group)) <= 1  # with it: the copies give way to distinct profiles


def test_mean_field_on_a_three_neuron_problem():
    # Neurons 0 and 1 are redundant (psi = 1), neuron 2 is independent (psi = 0).
    unary = np.array([0.0, 0.0, 2.5])
    psi = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    lam, phi0 = 4.0, 1.0
    result = mean_field(unary, psi, lam=lam, phi0=phi0, damping=0.5, iterations=500, tolerance=1e-12)
    # By symmetry q0 = q1 = q with q = sigmoid(phi0 - 0 - lam*q); q2 = sigmoid(phi0 - 2.5).
    q = brentq(lambda v: v - 1 / (1 + math.exp(-(phi0 - lam * v))), 0.0, 1.0, xtol=1e-14)
    assert result.converged
    assert result.q == pytest.approx([q, q, 1 / (1 + math.exp(1.5))], abs=1e-9)
    assert choose_neurons(result.q, 0).tolist() == [i for i in range(3) if result.q[i] > 0.5]
    assert choose_neurons(np.array([0.2, 0.9, 0.4]), 2).tolist() == [1, 2]


def test_selection_prefers_identity_selective_neurons():
    rng = np.random.default_rng(0)
    count = 400
    attributes = np.where(rng.random((count, 4)) < 0.5, 1, -1)  # IA: a, b; NA: c, d
    activations = np.stack([
        attributes[:, 0] + 0.1 * rng.standard_normal(count),  # tracks IA "a"
        attributes[:, 2] + 0.1 * rng.standard_normal(count),  # tracks NA "c"
        rng.standard_normal(count),  # noise
    ], axis=1)
    selection = select_neurons(activations, attributes, ["a", "b", "c", "d"], ["a", "b"], ["c", "d"], source="test",
                               lam=0.0, phi0=1.0, damping=0.5, iterations=100, top_k=0)
    assert 0 in selection.indices and 1 not in selection.indices
    assert selection.selectivity[0, 0] > 0.95 and selection.selectivity[1, 2] > 0.95
    with pytest.raises(ConfigError, match="identity_attributes"):
        select_neurons(activations, attributes, ["a", "b", "c", "d"], ["a", "zz"], ["c", "d"], source="test",
                       lam=0.0, phi0=1.0, damping=0.5, iterations=10, top_k=0)
    constant = attributes.copy()
    constant[:, 3] = 1  # "d" never varies: it is left out, and the NA group is one attribute short
    with pytest.raises(ConfigError, match="unrelated_attributes"):
        select_neurons(activations, constant, ["a", "b", "c", "d"], ["a", "b"], ["c", "d"], source="test",
                       lam=0.0, phi0=1.0, damping=0.5, iterations=10, top_k=0)
    # An attribute that never varies and is in neither group is dropped from the table only.
    extra = np.concatenate([attributes, np.ones((count, 1), dtype=attributes.dtype)], axis=1)
    kept = select_neurons(activations, extra, ["a", "b", "c", "d", "e"], ["a", "b"], ["c", "d"], source="test",
                          lam=0.0, phi0=1.0, damping=0.5, iterations=100, top_k=0)
    assert kept.attribute_names == ["a", "b", "c", "d"] and kept.selectivity.shape == (3, 4)
    np.testing.assert_array_equal(kept.indices, selection.indices)


def _setup(tmp_path, **options) -> DistillSetup:
    return DistillSetup(
        teacher=tiny_teacher(), student=StudentSpec("r18", {"width": 0.125, "fcn": True, "input_size": 32}, 32),
        num_classes=4, margin=(16.0, 1.0, 0.3, 0.0), options=method_options("neurons", options), out_dir=tmp_path / "run",
        extra_data={"attributes": tmp_path / "celeba"},
    )


def test_neurons_selects_saves_and_lowers_its_loss(tmp_path):
    write_celeba(tmp_path, count=24)
    task = NeuronDistiller.create(_setup(tmp_path, top_k=12, identity_weight=0.5, max_images=20))
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    indices = selection["indices"]
    assert len(indices) == 12 and selection["identity_attributes"] == IDENTITY_ATTRIBUTES  # meta.json defaults
    assert selection["images"] == 20
    with open(tmp_path / "run" / "selectivity.csv") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1 + 32 and rows[0][2:] == IDENTITY_ATTRIBUTES + ["Smiling", "Blurry"]
    assert sorted(int(r[0]) for r in rows[1:] if r[1] == "1") == indices
    assert "Selected 12 of 32" in (tmp_path / "run" / "selection.md").read_text()
    assert task.backbone_spec[1]["num_features"] == 12 and task.mimic.selected.tolist() == indices

    batch = {
        "image": torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
        "label": torch.arange(8) % 4,
        "index": torch.arange(8),
        "flipped": torch.zeros(8, dtype=torch.bool),
    }
    with torch.no_grad():
        target = task.teacher.outputs(batch["image"], batch["label"], frozenset({"embedding"})).embedding[:, indices]
        student = task.backbone(task.student_input(batch["image"]))
    out = task(batch)
    assert set(out) == {"loss_mimic", "loss_cls"}
    assert out["loss_mimic"].item() == pytest.approx(((student - target) ** 2).mean().item(), rel=1e-4)
    optimiser = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        loss = sum(task(batch).values())
        losses.append(loss.item())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert losses[-1] < losses[0]


def test_neurons_reuses_a_matching_selection_and_redoes_a_stale_one(tmp_path):
    write_celeba(tmp_path, count=24)
    NeuronDistiller.create(_setup(tmp_path, top_k=6))
    path = tmp_path / "run" / "selection.json"
    saved = json.loads(path.read_text())
    saved["indices"] = [0, 1, 2]  # a reused file is taken as it is
    path.write_text(json.dumps(saved))
    assert NeuronDistiller.create(_setup(tmp_path, top_k=6)).mimic.selected.tolist() == [0, 1, 2]
    assert len(NeuronDistiller.create(_setup(tmp_path, top_k=5)).mimic.selected) == 5  # other options: select again


def test_neurons_needs_attribute_names_without_meta(tmp_path):
    write_celeba(tmp_path, count=8, meta=False)
    with pytest.raises(ConfigError, match="identity_attributes and unrelated_attributes"):
        NeuronDistiller.create(_setup(tmp_path))
    with pytest.raises(ConfigError, match="not attributes of"):
        NeuronDistiller.create(_setup(tmp_path, identity_attributes=["Male", "Nope"], unrelated_attributes=["Smiling", "Blurry"]))
