"""Classic and later embedding/logit methods: each loss against a plain hand computation,
and a few optimisation steps of each distiller lower its loss."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekd.distill.common import EmbeddingDistance
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.losses import HintonKDLoss
from facekd.distill.methods.cc import CorrelationCongruenceLoss
from facekd.distill.methods.darkrank import HardDarkRankLoss
from facekd.distill.methods.ekd import EKDLoss
from facekd.distill.methods.gkd import GKDLoss
from facekd.distill.methods.rkd import RKDLoss
from facekd.distill.methods.sp import SimilarityPreservingLoss
from facekd.distill.methods.triplet import TripletDistillationLoss
from facekd.distill.registry import distiller_class
from facekd.distill.registry import method_options
from facekd.distill.teacher import Teacher
from facekd.errors import ConfigError
from facekd.models import build_backbone


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=g, dtype=torch.float64)
    teacher = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1])
    return student, teacher, labels


def test_fitnet_is_mean_squared_error(pair):
    s, t, y = pair
    expected = sum((s[i, j] - t[i, j]).item() ** 2 for i in range(5) for j in range(4)) / 20
    assert EmbeddingDistance("mse", 4, 4)(s, t, y).item() == pytest.approx(expected, rel=1e-12)


def test_rkd_distance_and_angle_terms(pair):
    s, t = pair[0].numpy(), pair[1].numpy()
    n = len(s)

    def distances(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def angles(e):
        out = []
        for j in range(n):  # vertex
            for i in range(n):
                for k in range(n):
                    a, b = e[i] - e[j], e[k] - e[j]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out.append(0.0 if na == 0 or nb == 0 else a @ b / (na * nb))
        return np.array(out)

    ds, dt = distances(s), distances(t)
    as_, at = angles(s), angles(t)
    loss_d = np.mean([huber(a, b) for a, b in zip(ds.ravel(), dt.ravel())])
    loss_a = np.mean([huber(a, b) for a, b in zip(as_, at)])
    got = RKDLoss(25.0, 50.0)(*pair).item()
    assert got == pytest.approx(25 * loss_d + 50 * loss_a, rel=1e-9)


def test_rkd_gradient_is_finite_on_the_diagonal(pair):
    s = pair[0].clone().requires_grad_(True)
    RKDLoss()(s, pair[1], pair[2]).backward()
    assert torch.isfinite(s.grad).all()


def test_similarity_preserving(pair):
    s, t = pair[0].numpy(), pair[1].numpy()
    n = len(s)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += (unit(s[i]) @ unit(s[j]) - unit(t[i]) @ unit(t[j])) ** 2
    assert SimilarityPreservingLoss()(*pair).item() == pytest.approx(total / n**2, rel=1e-9)


def test_correlation_congruence(pair):
    s, t = pair[0].numpy(), pair[1].numpy()
    gamma, n = 0.4, len(s)

    def kernel(e, i, j):
        c = unit(e[i]) @ unit(e[j])
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c**p for p in range(3))

    total = sum((kernel(s, i, j) - kernel(t, i, j)) ** 2 for i in range(n) for j in range(n))
    assert CorrelationCongruenceLoss(gamma, 2)(*pair).item() == pytest.approx(total / n**2, rel=1e-9)


def test_hard_darkrank_plackett_luce(pair):
    s, t = pair[0].numpy(), pair[1].numpy()
    alpha, beta, length, n = 3.0, 3.0, 3, len(s)

    def score(e, i, j):
        return -alpha * np.linalg.norm(unit(e[i]) - unit(e[j])) ** beta

    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -score(t, i, j))[:length]
        scores = [score(s, i, j) for j in others]
        total -= sum(scores[k] - math.log(sum(math.exp(v) for v in scores[k:])) for k in range(length))
    got = HardDarkRankLoss(alpha, beta, length)(*pair).item()
    assert got == pytest.approx(total / n, rel=1e-7)


def test_ekd_rank_loss_and_threshold_update(pair):
    s, t, y = pair
    loss_module = EKDLoss(fpr_denominators=(2, 4), tau=0.1, momentum=0.5, top_k=3).double().train()
    got = loss_module(s, t, y).item()
    sn, tn, labels = F.normalize(s, dim=1).numpy(), F.normalize(t, dim=1).numpy(), y.numpy()
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    pos = [(i, j) for i, j in pairs if labels[i] == labels[j]]
    neg = [(i, j) for i, j in pairs if labels[i] != labels[j]]
    s_sim = {p: sn[p[0]] @ sn[p[1]] for p in pairs}
    t_sim = {p: tn[p[0]] @ tn[p[1]] for p in pairs}
    s_neg_sorted = sorted((s_sim[p] for p in neg), reverse=True)
    t_neg_sorted = sorted((t_sim[p] for p in neg), reverse=True)
    s_thr = [0.5 * s_neg_sorted[len(neg) // a] for a in (2, 4)]  # EMA from zero, momentum 0.5
    t_thr = [0.5 * t_neg_sorted[len(neg) // a] for a in (2, 4)]

    def rank(v, thresholds):
        return sum(1 / (1 + math.exp(-max(min((v - th) / 0.1, 50), -50))) for th in thresholds)

    def mse(group):
        return np.mean([(rank(s_sim[p], s_thr) - rank(t_sim[p], t_thr)) ** 2 for p in group])

    hardest = sorted(neg, key=lambda p: -s_sim[p])[:3]
    expected = 0.02 * mse(pos) + 0.01 * mse(hardest)
    assert got == pytest.approx(expected, rel=1e-9)
    assert loss_module.student_thresholds.tolist() == pytest.approx(s_thr, rel=1e-12)


@pytest.mark.parametrize("distance", ["l2", "cos"])
def test_triplet_distillation_adaptive_margin(pair, distance):
    s, t, y = pair
    sn, tn, labels = F.normalize(s, dim=1).numpy(), F.normalize(t, dim=1).numpy(), y.numpy()

    def dist(e, i, j):
        c = float(np.clip(e[i] @ e[j], -1, 1))
        return 2 - 2 * c if distance == "l2" else math.acos(min(max(c, -1 + 1e-6), 1 - 1e-6))

    triplets = [(a, p, n) for a, p, n in itertools.product(range(5), repeat=3)
                if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
    gaps = [max(dist(tn, a, n) - dist(tn, a, p), 0.0) for a, p, n in triplets]
    d_max = max(gaps)
    losses = [max(dist(sn, a, p) - dist(sn, a, n) + (0.3 / d_max * g + 0.2), 0.0)
              for (a, p, n), g in zip(triplets, gaps)]
    got = TripletDistillationLoss(distance, 0.5, 0.2)(s, t, y).item()
    assert got == pytest.approx(np.mean(losses), rel=1e-6)


def test_hinton_kd(pair):
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    temperature = 4.0
    total = 0.0
    for i in range(3):
        ps = np.exp(zs[i].numpy() / temperature) / np.exp(zs[i].numpy() / temperature).sum()
        pt = np.exp(zt[i].numpy() / temperature) / np.exp(zt[i].numpy() / temperature).sum()
        total += (pt * np.log(pt / ps)).sum()
    assert HintonKDLoss(temperature)(zs, zt).item() == pytest.approx(total / 3 * 16, rel=1e-9)


def test_gkd_groups_binary_and_primary_terms():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3, torch.randn(4, 5, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 3, 1])
    temperature = 2.0
    # tau tiny: K = 1, so the primary group is exactly the ground-truth class.
    loss = GKDLoss(temperature=temperature, tau=1e-6, binary_weight=1.0, primary_weight=4.0,
                   secondary_weight=0.5).double()
    got = loss(zs, zt, y).item()

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    def kl(p, q):
        return float(sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0))

    total = 0.0
    for i in range(4):
        ps, pt = softmax(zs[i].numpy() / temperature), softmax(zt[i].numpy() / temperature)
        gt = int(y[i])
        rest = [c for c in range(5) if c != gt]
        binary = kl([pt[gt], pt[rest].sum()], [ps[gt], ps[rest].sum()])
        primary = 0.0  # one class renormalised over itself: both distributions are [1]
        secondary = kl(softmax(zt[i].numpy()[rest] / temperature), softmax(zs[i].numpy()[rest] / temperature))
        total += binary + 4.0 * primary + 0.5 * secondary
    assert got == pytest.approx(total * temperature**2 / 4, rel=1e-6)


def test_gkd_primary_size_steps_by_hundred():
    from facekd.distill.methods.gkd import primary_size

    logits = torch.zeros(2, 350)
    logits[:, :150] = 10.0  # the mass sits on 150 classes: K = 201 is the first step past 93%
    assert primary_size(logits, 0.93) == 201
    assert primary_size(torch.zeros(2, 50), 0.93) == 50  # never reached below C: all classes


def tiny_setup(tmp_path: Path, method: str, options: dict | None = None) -> tuple[DistillSetup, dict]:
    torch.manual_seed(0)
    network = build_backbone("r18", width=0.125, depth=0.25, fcn=True, num_features=32, input_size=16)
    centres = torch.randn(4, 32)
    teacher = Teacher(network, input_size=16, centres=centres, source="tiny")
    setup = DistillSetup(
        teacher=teacher,
        student=StudentSpec("r18", {"width": 0.125, "depth": 0.25, "fcn": True, "num_features": 32}, 16),
        num_classes=4, margin=(16.0, 1.0, 0.2, 0.0), options=method_options(method, options), out_dir=tmp_path,
    )
    g = torch.Generator().manual_seed(3)
    batch = {
        "image": torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g),
        "label": torch.arange(16) % 4,
        "index": torch.arange(16),
        "flipped": torch.zeros(16, dtype=torch.bool),
    }
    return setup, batch


@pytest.mark.parametrize("method", ["fitnet", "rkd", "sp", "cc", "darkrank", "ekd", "triplet", "kd", "gkd"])
def test_a_few_steps_lower_the_loss(tmp_path, method):
    setup, batch = tiny_setup(tmp_path, method, {"identity_weight": 0.0})
    distiller = distiller_class(method).create(setup).train()
    teacher_before = [p.clone() for p in setup.teacher.network.parameters()]
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        out = distiller(batch)
        loss = out["loss_kd"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    assert not setup.teacher.network.training
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, setup.teacher.network.parameters()))
    assert not any(k.startswith("teacher") for k in distiller.state_dict())


def test_gkd_ramps_the_kd_weight_over_warmup_epochs(tmp_path):
    setup, _ = tiny_setup(tmp_path, "gkd", {"warmup_epochs": 1.5})
    setup.batches_per_epoch = 4
    ramped = distiller_class("gkd").create(setup).distill_loss.train()
    assert ramped.warmup_steps == 6  # 1.5 epochs x 4 forward passes
    flat = GKDLoss(temperature=4.0).train()
    g = torch.Generator().manual_seed(5)
    zs, zt, y = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g), torch.tensor([0, 1, 2, 3])
    for step in (1, 2, 3):
        assert ramped(zs, zt, y).item() == pytest.approx(step / 6 * flat(zs, zt, y).item(), rel=1e-5)

    setup.batches_per_epoch = 0
    with pytest.raises(ConfigError, match="warmup_epochs needs the epoch length"):
        distiller_class("gkd").create(setup)
