"""MarginDistillation: the margin schedule m_i and the loss by hand, frozen centres, a few training steps."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.methods.margin import AdaptiveMarginLoss, MarginDistillation
from facekd.distill.registry import method_options
from facekd.distill.teacher import Teacher
from facekd.errors import ConfigError
from facekd.models import build_backbone

SIZE = 32
NUM_CLASSES = 4
EMBEDDING = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_teacher() -> Teacher:
    torch.manual_seed(0)
    network = build_backbone("mbf", width=0.25, fcn=True, num_features=EMBEDDING, input_size=SIZE)
    return Teacher(network, input_size=SIZE, centres=torch.randn(NUM_CLASSES, EMBEDDING))


def make_setup(tmp_path, teacher: Teacher, *, num_features: int = EMBEDDING, num_classes: int = NUM_CLASSES) -> DistillSetup:
    student = StudentSpec("r18", {"width": 0.125, "fcn": True, "num_features": num_features, "input_size": SIZE}, SIZE)
    return DistillSetup(teacher=teacher, student=student, num_classes=num_classes, margin=(64.0, 1.0, 0.5, 0.0),
                        options=method_options("margin", {}), out_dir=tmp_path)


def test_margin_schedule_by_hand():
    loss = AdaptiveMarginLoss(torch.eye(3), s=64.0, m_max=0.5, m_min=0.2)
    c = [0.8, 0.4, -0.2]
    d_max = 0.8
    expected = [(0.5 - 0.2) / d_max * ci + 0.2 for ci in c]  # 0.5, 0.35, 0.125
    assert loss.margins(torch.tensor(c)).tolist() == pytest.approx(expected, rel=1e-6)


def test_loss_by_hand():
    # Two classes with centres along x and y (given unnormalised: the module normalises them).
    centres = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    loss = AdaptiveMarginLoss(centres, s=10.0, m_max=0.5, m_min=0.2)
    angles = [0.3, 1.2]  # student embeddings at these angles from the x axis
    embeddings = torch.tensor([[5 * math.cos(a), 5 * math.sin(a)] for a in angles])
    labels = torch.tensor([0, 1])
    c = [0.9, 0.45]  # the teacher's cosine to its own centre
    out = loss(embeddings, labels, torch.tensor(c))
    total = 0.0
    for angle, label, ci in zip(angles, [0, 1], c):
        m = 0.3 / 0.9 * ci + 0.2
        cosines = [math.cos(angle), math.sin(angle)]  # to centre 0 (x) and centre 1 (y)
        theta = math.acos(cosines[label])
        logits = [10.0 * v for v in cosines]
        logits[label] = 10.0 * math.cos(theta + m)
        total += math.log(sum(math.exp(v) for v in logits)) - logits[label]
    assert out["loss"].item() == pytest.approx(total / 2, rel=1e-5)
    assert out["margins"].tolist() == pytest.approx([0.5, 0.3 / 0.9 * 0.45 + 0.2], rel=1e-6)


def test_no_easy_margin_trick_past_pi():
    # theta = 3.0 and m = 0.5: theta + m > pi, the logit is still s * cos(theta + m).
    loss = AdaptiveMarginLoss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), s=1.0, m_max=0.5, m_min=0.2)
    embedding = torch.tensor([[math.cos(3.0), math.sin(3.0)]])
    out = loss(embedding, torch.tensor([0]), torch.tensor([1.0]))
    logits = [math.cos(3.0 + 0.5), math.sin(3.0)]
    expected = math.log(sum(math.exp(v) for v in logits)) - logits[0]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_centres_are_a_frozen_buffer_outside_the_checkpoint(tmp_path):
    teacher = tiny_teacher()
    distiller = MarginDistillation.create(make_setup(tmp_path, teacher))
    names = [name for name, _ in distiller.named_parameters()]
    assert not any("centres" in name for name in names)
    assert torch.allclose(distiller.margin_loss.centres, teacher.centres)
    assert "margin_loss.centres" not in distiller.state_dict()
    assert distiller.teacher_needs == frozenset({"centre_cosine"})


def test_embedding_and_class_mismatches_are_refused(tmp_path):
    teacher = tiny_teacher()
    with pytest.raises(ConfigError, match="32-d embedding.*16-d"):
        MarginDistillation.create(make_setup(tmp_path, teacher, num_features=32))
    with pytest.raises(ConfigError, match="4 classes, the training set 5"):
        MarginDistillation.create(make_setup(tmp_path, teacher, num_classes=5))


def test_a_few_steps_lower_the_loss_and_keep_the_teacher_frozen(tmp_path):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    distiller = MarginDistillation.create(make_setup(tmp_path, teacher))
    distiller.train()
    assert not teacher.network.training
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator),
             "label": torch.arange(8) % NUM_CLASSES}
    optimizer = torch.optim.Adam(distiller.parameters(), lr=3e-3)
    totals = []
    for _ in range(12):
        out = distiller(batch)
        totals.append(out["loss_cls"].item())
        optimizer.zero_grad()
        out["loss_cls"].backward()
        optimizer.step()
    assert totals[-1] < 0.8 * totals[0]
    assert out["margin_mean"].item() <= 0.5 + 1e-6  # c_i <= D_max, so m_i <= M_max
    assert not teacher.network.training
    for key, value in teacher.network.state_dict().items():
        assert torch.equal(value, before[key]), key
