"""AdaDistill and ArcDistill: the EMA centre update and both margin losses by hand, a few training steps."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.losses import FrozenCentreMarginLoss, margin_from_options
from facekd.distill.methods.adadistill import AdaDistill, AdaptiveCentreLoss, last_occurrence
from facekd.distill.methods.arcdistill import ArcDistill
from facekd.distill.registry import method_options
from facekd.distill.teacher import Teacher
from facekd.errors import ConfigError
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin

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


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def cross_entropy(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_last_occurrence_of_each_label():
    # labels 1, 2, 3 last appear at positions 4, 3, 2
    assert last_occurrence(torch.tensor([3, 1, 3, 2, 1])).tolist() == [4, 3, 2]


@pytest.mark.parametrize("alpha_kind", ["alpha_prime", "alpha"])
def test_centre_update_by_hand(alpha_kind):
    loss = AdaptiveCentreLoss(3, 2, CombinedMargin(64.0, 1.0, 0.45, 0.0), alpha=alpha_kind)
    start = [[1.0, 1.0], [0.0, 2.0], [-1.0, 0.5]]
    loss.centres.copy_(torch.tensor(start))
    student = [[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]]
    teacher = [[1.0, 0.0], [1.0, 2.0], [1.0, 1.0]]
    labels = [0, 2, 0]  # class 0 twice: the last sample (index 2) wins; class 1 untouched
    alpha = loss.update(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels))
    expected_alpha = []
    for s, t, y in zip(student, teacher, labels):
        a = dot(unit(s), unit(t))
        if alpha_kind == "alpha_prime":
            a *= min(max(dot(unit(start[y]), unit(t)), 1e-6), 1.0)
        expected_alpha.append(min(max(a, 1e-6), 1.0))
    assert alpha.tolist() == pytest.approx(expected_alpha, rel=1e-5)
    expected = [row[:] for row in start]
    for i in (2, 1):  # the surviving sample of class 0, then the one of class 2
        y, a, t = labels[i], expected_alpha[i], unit(teacher[i])
        expected[y] = [a * w + (1 - a) * v for w, v in zip(start[y], t)]
    assert loss.centres.tolist() == [pytest.approx(row, rel=1e-5) for row in expected]


def test_adadistill_loss_uses_the_updated_centres_with_an_arcface_margin():
    loss = AdaptiveCentreLoss(2, 2, CombinedMargin(8.0, 1.0, 0.45, 0.0))
    start = [[1.0, 0.2], [0.1, 1.0]]
    loss.centres.copy_(torch.tensor(start))
    student, teacher = [0.8, 0.6], [1.0, 0.0]
    out = loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([0]))
    a = min(max(dot(unit(student), teacher) * dot(unit(start[0]), teacher), 1e-6), 1.0)
    centre0 = [a * w + (1 - a) * v for w, v in zip(start[0], teacher)]
    cosines = [dot(unit(student), unit(centre0)), dot(unit(student), unit(start[1]))]
    logits = [8.0 * math.cos(math.acos(cosines[0]) + 0.45), 8.0 * cosines[1]]  # theta + m < pi here
    assert out["loss"].item() == pytest.approx(cross_entropy(logits, 0), rel=1e-5)
    assert out["alpha"].item() == pytest.approx(a, rel=1e-5)


def test_centres_get_no_gradient_and_are_checkpointed():
    loss = AdaptiveCentreLoss(3, 4, CombinedMargin(64.0, 1.0, 0.45, 0.0))
    embeddings = torch.randn(5, 4, requires_grad=True)
    loss(embeddings, torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))["loss"].backward()
    assert embeddings.grad is not None
    assert not loss.centres.requires_grad and list(loss.parameters()) == []
    assert "centres" in loss.state_dict()


def test_frozen_centre_loss_with_cosface_by_hand():
    margin = margin_from_options("arcdistill", "cosface", 10.0, 0.45, 0.35)
    centres = [[3.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]
    loss = FrozenCentreMarginLoss(torch.tensor(centres), margin)
    embeddings = [[1.0, 2.0], [-2.0, 0.5]]
    labels = [1, 2]
    total = 0.0
    for e, y in zip(embeddings, labels):
        logits = [10.0 * dot(unit(e), unit(c)) for c in centres]
        logits[y] -= 10.0 * 0.35
        total += cross_entropy(logits, y)
    out = loss(torch.tensor(embeddings), torch.tensor(labels))
    assert out.item() == pytest.approx(total / 2, rel=1e-5)
    assert "centres" not in loss.state_dict()


def test_margin_options_are_checked():
    with pytest.raises(ConfigError, match="adadistill.loss"):
        margin_from_options("adadistill", "sphereface", 64.0, 0.45, 0.35)
    with pytest.raises(ConfigError, match="adadistill.alpha"):
        AdaptiveCentreLoss(2, 2, CombinedMargin(), alpha="beta")


def tiny_teacher() -> Teacher:
    torch.manual_seed(0)
    network = build_backbone("mbf", width=0.25, fcn=True, num_features=EMBEDDING, input_size=SIZE)
    return Teacher(network, input_size=SIZE, centres=torch.randn(NUM_CLASSES, EMBEDDING))


def make_setup(tmp_path, teacher: Teacher, options: dict | None = None, method: str = "adadistill") -> DistillSetup:
    student = StudentSpec("r18", {"width": 0.125, "fcn": True, "num_features": EMBEDDING, "input_size": SIZE}, SIZE)
    return DistillSetup(teacher=teacher, student=student, num_classes=NUM_CLASSES, margin=(64.0, 1.0, 0.5, 0.0),
                        options=method_options(method, options), out_dir=tmp_path)


def train_a_few_steps(distiller, steps: int = 10) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator),
             "label": torch.arange(8) % NUM_CLASSES}
    optimizer = torch.optim.Adam(distiller.parameters(), lr=3e-3)
    distiller.train()
    totals = []
    for _ in range(steps):
        loss = distiller(batch)["loss_cls"]
        totals.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return totals


@pytest.mark.parametrize("method", [AdaDistill, ArcDistill])
def test_a_few_steps_lower_the_loss_and_keep_the_teacher_frozen(tmp_path, method):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    distiller = method.create(make_setup(tmp_path, teacher, {"s": 16.0}))
    totals = train_a_few_steps(distiller)
    assert totals[-1] < 0.8 * totals[0]
    assert not teacher.network.training
    assert all(p.grad is None for p in teacher.network.parameters())
    for key, value in teacher.network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_arcdistill_never_runs_the_teacher(tmp_path):
    teacher = tiny_teacher()
    calls = []
    teacher.network.register_forward_hook(lambda *args: calls.append(1))
    distiller = ArcDistill.create(make_setup(tmp_path, teacher, method="arcdistill"))
    calls.clear()
    train_a_few_steps(distiller, steps=1)
    assert calls == []
    assert torch.allclose(distiller.margin_loss.centres, teacher.centres)


def test_arcdistill_needs_the_teacher_head(tmp_path):
    teacher = tiny_teacher()
    headless = Teacher(teacher.network, input_size=SIZE)
    with pytest.raises(ConfigError, match="class centres"):
        ArcDistill.create(make_setup(tmp_path, headless, method="arcdistill"))


def run_rank(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank of the 2-process check: rank r holds half of the batch."""
    import torch.distributed as dist

    from facekd.distill.methods.margin import AdaptiveMarginLoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        student, teacher, labels, start, centre_cosine = torch.load(f"{root}/inputs.pt", weights_only=True)
        half = slice(rank * 4, rank * 4 + 4)
        loss = AdaptiveCentreLoss(NUM_CLASSES, 2, CombinedMargin(64.0, 1.0, 0.45, 0.0))
        loss.centres.copy_(start)
        loss.update(student[half], teacher[half], labels[half])
        margins = AdaptiveMarginLoss(torch.eye(2)).margins(centre_cosine[half])
        torch.save({"centres": loss.centres, "margins": margins}, f"{root}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_with_one_process_on_the_whole_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(8, 2, generator=generator), torch.randn(8, 2, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 3, 0, 1, 2])  # repeated classes across the two halves
    start = torch.randn(NUM_CLASSES, 2, generator=generator)
    centre_cosine = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.6, 0.7])  # D_max = 0.9 lives on rank 1
    torch.save((student, teacher, labels, start, centre_cosine), tmp_path / "inputs.pt")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(run_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single = AdaptiveCentreLoss(NUM_CLASSES, 2, CombinedMargin(64.0, 1.0, 0.45, 0.0))
    single.centres.copy_(start)
    single.update(student, teacher, labels)
    expected_margins = 0.3 / 0.9 * centre_cosine + 0.2
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(out["centres"], single.centres, atol=1e-6)
        assert torch.allclose(out["margins"], expected_margins[rank * 4:rank * 4 + 4], atol=1e-6)
