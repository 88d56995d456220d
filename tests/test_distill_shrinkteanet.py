"""ShrinkTeaNet: the four distances by hand, the lambdas, routing through the frozen teacher, shape checks."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.data.transforms import normalize
from facekd.distill.common import EmbeddingDistance
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.methods.shrinkteanet import ShrinkTeaNet
from facekd.distill.registry import method_options
from facekd.distill.teacher import Teacher
from facekd.errors import ConfigError
from facekd.models import build_backbone

SIZE = 32
NUM_CLASSES = 4
MARGIN = (16.0, 1.0, 0.2, 0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_teacher() -> Teacher:
    torch.manual_seed(0)
    network = build_backbone("r18", width=0.125, fcn=True, num_features=32, input_size=SIZE)
    return Teacher(network, input_size=SIZE, centres=torch.randn(NUM_CLASSES, 32))


def make_setup(tmp_path, teacher: Teacher, *, student_size: int = SIZE, options: dict | None = None) -> DistillSetup:
    student = StudentSpec("mbf", {"width": 0.25, "fcn": True, "num_features": 16, "input_size": student_size}, student_size)
    return DistillSetup(teacher=teacher, student=student, num_classes=NUM_CLASSES, margin=MARGIN,
                        options=method_options("shrinkteanet", options), out_dir=tmp_path)


def tiny_batch(n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    return {"image": images, "label": torch.arange(n) % NUM_CLASSES}


def test_distances_against_hand_computation():
    # pair 1: a = (3, 4), b = (4, 3): cos = 24/25; pair 2: a = (1, 0), b = (0, 2): cos = 0.
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    cos1, cos2 = 24 / 25, 0.0
    # normalised: (0.6, 0.8) vs (0.8, 0.6) -> 0.04 + 0.04; (1, 0) vs (0, 1) -> 1 + 1
    expected = {
        "(1-cos)^2": ((1 - cos1) ** 2 + (1 - cos2) ** 2) / 2,
        "1-cos": ((1 - cos1) + (1 - cos2)) / 2,
        "normalized_l2": (0.08 + 2.0) / 2,
        "l2": ((1 + 1) + (1 + 4)) / 2,
    }
    for mode, value in expected.items():
        assert EmbeddingDistance(mode)(a, b).item() == pytest.approx(value, rel=1e-6), mode


def test_unknown_distance_is_a_config_error():
    with pytest.raises(ConfigError, match="distance"):
        EmbeddingDistance("cosine-ish")


def test_lambdas_halve_per_stage_and_l2_is_scaled(tmp_path):
    teacher = tiny_teacher()
    angular = ShrinkTeaNet.create(make_setup(tmp_path, teacher))
    assert angular.lambda_final == 1.0
    assert angular.stage_lambdas == {1: 1 / 8, 2: 1 / 4, 3: 1 / 2}
    l2 = ShrinkTeaNet.create(make_setup(tmp_path, teacher, options={"loss": "l2"}))
    assert l2.lambda_final == pytest.approx(0.001)
    assert l2.stage_lambdas == pytest.approx({1: 0.001 / 8, 2: 0.001 / 4, 3: 0.001 / 2})
    final_only = ShrinkTeaNet.create(make_setup(tmp_path, teacher, options={"stages": []}))
    assert final_only.stage_lambdas == {}
    assert sorted(final_only(tiny_batch())) == ["loss_cls", "loss_kd"]


def test_stage_loss_routes_the_adapted_student_map_through_the_teacher(tmp_path):
    teacher = tiny_teacher()
    distiller = ShrinkTeaNet.create(make_setup(tmp_path, teacher))
    distiller.eval()  # fixed BN statistics, so the recomputation below sees the same student
    batch = tiny_batch()
    losses = distiller(batch)
    assert sorted(losses) == ["loss_cls", "loss_kd", "loss_stage1", "loss_stage2", "loss_stage3"]
    x = normalize(batch["image"])
    with torch.no_grad():
        features = distiller.backbone.forward_features(x)
        e_t = teacher.network(x)
        for stage, weight in [(1, 1 / 8), (2, 1 / 4), (3, 1 / 2)]:
            adapted = distiller.stage_adapters[str(stage)](features["stages"][stage - 1])
            routed = teacher.network.forward_from(stage, adapted)
            cos = torch.nn.functional.cosine_similarity(routed, e_t, dim=1)
            expected = weight * ((1 - cos) ** 2).mean()
            assert losses[f"loss_stage{stage}"].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
        # 16-d student, 32-d teacher: the final term goes through the bias-free linear adapter
        projected = features["embedding"] @ distiller.final_adapter.weight.t()
        cos = torch.nn.functional.cosine_similarity(projected, e_t, dim=1)
        assert losses["loss_kd"].item() == pytest.approx(((1 - cos) ** 2).mean().item(), rel=1e-4, abs=1e-7)
    assert distiller.final_adapter.bias is None


def test_gradients_reach_adapters_and_student_but_never_the_teacher(tmp_path):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    distiller = ShrinkTeaNet.create(make_setup(tmp_path, teacher))
    distiller.train()
    assert not teacher.network.training
    assert all(not p.requires_grad for p in teacher.network.parameters())
    assert not any(name.startswith("teacher") for name in distiller.state_dict())
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        losses = distiller(tiny_batch())
        optimizer.zero_grad()
        losses["loss_stage1"].backward()
        optimizer.step()
    assert distiller.stage_adapters["1"][0].weight.grad.abs().sum() > 0
    student_grads = [p.grad for p in distiller.backbone.parameters() if p.grad is not None]
    assert student_grads and any(g.abs().sum() > 0 for g in student_grads)
    assert all(p.grad is None for p in teacher.network.parameters())
    for key, value in teacher.network.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not teacher.network.training


def test_spatial_mismatch_names_the_stage_and_both_shapes(tmp_path):
    teacher = tiny_teacher()
    with pytest.raises(ConfigError, match=r"shrinkteanet stage 1: student map is \(32, 12, 12\), teacher map is \(8, 16, 16\)"):
        ShrinkTeaNet.create(make_setup(tmp_path, teacher, student_size=24))


def test_bad_stage_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="shrinkteanet.stages"):
        ShrinkTeaNet.create(make_setup(tmp_path, tiny_teacher(), options={"stages": [4]}))


def test_a_few_steps_lower_the_loss(tmp_path):
    distiller = ShrinkTeaNet.create(make_setup(tmp_path, tiny_teacher()))
    distiller.train()
    optimizer = torch.optim.Adam(distiller.parameters(), lr=3e-3)
    batch = tiny_batch()
    totals = []
    for _ in range(12):
        losses = distiller(batch)
        total = sum(v for k, v in losses.items() if k.startswith("loss"))
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert all(math.isfinite(t) for t in totals)
    assert totals[-1] < 0.8 * totals[0]
