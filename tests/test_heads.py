"""Margin heads against hand computations with the math module."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.errors import ConfigError
from facekd.models.heads import CombinedMargin, MarginClassifier, SoftmaxClassifier

COSINES = [[0.8, 0.1, -0.3], [-0.95, 0.2, 0.4], [0.25, 0.5, 0.9], [0.6, -0.2, 0.1]]
LABELS = [0, 0, 2, -1]


def run(margin: CombinedMargin) -> tuple[torch.Tensor, torch.Tensor]:
    cosine = torch.tensor(COSINES, dtype=torch.float64)
    before = cosine.clone()
    logits = margin(cosine, torch.tensor(LABELS))
    assert torch.equal(cosine, before), "the margin must not modify its input"
    return logits, cosine


def expected(target_fn, s: float) -> list[list[float]]:
    rows = []
    for row, label in zip(COSINES, LABELS):
        rows.append([s * (target_fn(c) if j == label else c) for j, c in enumerate(row)])
    return rows


def test_arcface_matches_hand_computation():
    m = 0.5
    logits, _ = run(CombinedMargin(s=64.0, m1=1.0, m2=m, m3=0.0))
    hand = expected(lambda c: math.cos(math.acos(c) + m), 64.0)
    torch.testing.assert_close(logits, torch.tensor(hand, dtype=torch.float64))


def test_arcface_past_pi_has_no_guard():
    # arcface_torch shifts every target angle: acos(-0.95) + 0.5 = 3.3240 > pi
    logits, _ = run(CombinedMargin(s=64.0, m2=0.5))
    assert logits[1, 0].item() == pytest.approx(64 * math.cos(math.acos(-0.95) + 0.5), abs=1e-12)
    guarded = 64 * (-0.95 - 0.5 * math.sin(math.pi - 0.5))  # -76.14, 13 logits lower
    assert abs(logits[1, 0].item() - guarded) > 10


def test_guard_past_pi_is_insightfaces_older_head():
    m = 0.5
    logits, _ = run(CombinedMargin(s=64.0, m2=m, guard_past_pi=True))
    # c = -0.95 <= cos(pi - m) = -0.8776: c - m*sin(pi - m); the others keep cos(theta + m)
    assert logits[1, 0].item() == pytest.approx(64 * (-0.95 - m * math.sin(math.pi - m)), abs=1e-12)
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.8) + m), abs=1e-12)


def test_easy_margin_and_guard_are_exclusive():
    with pytest.raises(ConfigError, match="easy_margin and guard_past_pi"):
        CombinedMargin(easy_margin=True, guard_past_pi=True)


def test_models_package_exports_the_heads():
    from facekd import models
    from facekd.models import heads, partial_fc

    assert models.CombinedMargin is heads.CombinedMargin
    assert models.MarginClassifier is heads.MarginClassifier
    assert models.PartialFC is partial_fc.PartialFC


def test_arcface_gradient_flows_through_the_margin():
    c = torch.tensor([[0.8, 0.1]], dtype=torch.float64, requires_grad=True)
    CombinedMargin(s=2.0, m2=0.5)(c, torch.tensor([0])).sum().backward()
    # d/dc [s * (c cos m - sqrt(1-c^2) sin m)] = s * (cos m + c sin m / sqrt(1-c^2))
    hand = 2.0 * (math.cos(0.5) + 0.8 * math.sin(0.5) / math.sqrt(1 - 0.64))
    torch.testing.assert_close(c.grad, torch.tensor([[hand, 2.0]], dtype=torch.float64))


def test_easy_margin_only_applies_to_positive_cosines():
    logits, _ = run(CombinedMargin(s=1.0, m2=0.3, easy_margin=True))
    assert logits[1, 0].item() == pytest.approx(-0.95)
    assert logits[0, 0].item() == pytest.approx(math.cos(math.acos(0.8) + 0.3))


def test_cosface_matches_hand_computation():
    logits, _ = run(CombinedMargin(s=30.0, m1=1.0, m2=0.0, m3=0.35))
    torch.testing.assert_close(logits, torch.tensor(expected(lambda c: c - 0.35, 30.0), dtype=torch.float64))


def test_normalised_softmax_is_scaled_cosine():
    logits, cosine = run(CombinedMargin(s=16.0, m1=1.0, m2=0.0, m3=0.0))
    torch.testing.assert_close(logits, 16.0 * cosine)


def test_general_combined_margin():
    m1, m2, m3 = 0.9, 0.2, 0.15
    logits, _ = run(CombinedMargin(s=8.0, m1=m1, m2=m2, m3=m3))
    hand = expected(lambda c: math.cos(m1 * math.acos(c) + m2) - m3, 8.0)
    torch.testing.assert_close(logits, torch.tensor(hand, dtype=torch.float64))


def test_unlabelled_rows_are_only_scaled():
    logits, cosine = run(CombinedMargin(s=64.0, m2=0.5))
    torch.testing.assert_close(logits[3], 64.0 * cosine[3])


def test_interclass_filtering_zeroes_close_negatives():
    logits, _ = run(CombinedMargin(s=1.0, m2=0.0, interclass_filtering_threshold=0.3))
    hand = [[0.8, 0.1, -0.3], [-0.95, 0.2, 0.0], [0.25, 0.0, 0.9], [0.0, -0.2, 0.1]]
    torch.testing.assert_close(logits, torch.tensor(hand, dtype=torch.float64))


def test_invalid_margins_raise():
    with pytest.raises(ConfigError, match="m2=-0.1"):
        CombinedMargin(m2=-0.1)


def test_margin_classifier_loss_matches_hand_cross_entropy():
    torch.manual_seed(0)
    head = MarginClassifier(4, 3, CombinedMargin(s=10.0, m2=0.4))
    embeddings = torch.randn(5, 4)
    labels = torch.tensor([0, 2, 1, 1, 0])
    out = head(embeddings, labels)
    assert set(out) == {"loss", "logits", "cosine"}
    weight = head.weight.detach()
    total = 0.0
    for i in range(5):
        e = embeddings[i] / embeddings[i].norm()
        cos = [float(e @ (w / w.norm())) for w in weight]
        z = [10.0 * (math.cos(math.acos(c) + 0.4) if j == labels[i] else c) for j, c in enumerate(cos)]
        total += math.log(sum(math.exp(v) for v in z)) - z[labels[i]]
        assert out["cosine"][i].tolist() == pytest.approx(cos, abs=1e-6)
    assert out["loss"].item() == pytest.approx(total / 5, rel=1e-5)


def test_softmax_classifier_is_plain_linear_cross_entropy():
    torch.manual_seed(1)
    head = SoftmaxClassifier(4, 3)
    embeddings = torch.randn(2, 4)
    labels = torch.tensor([2, 0])
    out = head(embeddings, labels)
    w, b = head.fc.weight.detach(), head.fc.bias.detach()
    for i in range(2):
        z = [float(embeddings[i] @ w[j] + b[j]) for j in range(3)]
        assert out["logits"][i].tolist() == pytest.approx(z, abs=1e-6)
        cos = [float(embeddings[i] @ w[j] / (embeddings[i].norm() * w[j].norm())) for j in range(3)]
        assert out["cosine"][i].tolist() == pytest.approx(cos, abs=1e-6)
    hand = sum(math.log(sum(math.exp(v) for v in out["logits"][i].tolist())) - out["logits"][i, labels[i]].item()
               for i in range(2)) / 2
    assert out["loss"].item() == pytest.approx(hand, rel=1e-5)
