"""Resolution distillation: KT copies the teacher exactly, the KD term by hand, FLOPs, refusals, training steps."""

from __future__ import annotations

import json

import pytest
import torch

from facekd.data.transforms import normalize, resize
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.methods.resolution import REPORT_NAME, ResolutionDistiller, count_flops
from facekd.distill.registry import method_options
from facekd.distill.teacher import Teacher
from facekd.errors import ConfigError
from facekd.models import build_backbone

TEACHER_SIZE = 32
STUDENT_SIZE = 24
NUM_CLASSES = 4
ARCH = {"width": 0.125, "fcn": True, "num_features": 16, "input_size": TEACHER_SIZE}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_teacher(arch: dict = ARCH) -> Teacher:
    torch.manual_seed(0)
    network = build_backbone("r18", **arch)
    return Teacher(network, input_size=TEACHER_SIZE, centres=torch.randn(NUM_CLASSES, arch["num_features"]))


def make_setup(tmp_path, teacher: Teacher, options: dict, *, arch: dict = ARCH,
               student_size: int = STUDENT_SIZE) -> DistillSetup:
    return DistillSetup(teacher=teacher, student=StudentSpec("r18", dict(arch), student_size), num_classes=NUM_CLASSES,
                        margin=(16.0, 1.0, 0.2, 0.0), options=method_options("resolution", options), out_dir=tmp_path)


def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, TEACHER_SIZE, TEACHER_SIZE), dtype=torch.uint8, generator=generator)
    return {"image": images, "label": torch.arange(8) % NUM_CLASSES}


def test_kt_copies_every_teacher_tensor_and_the_centres(tmp_path):
    teacher = tiny_teacher()
    distiller = ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kt"}))
    student_state = distiller.backbone.state_dict()
    teacher_state = teacher.network.state_dict()
    assert student_state.keys() == teacher_state.keys()
    for key, value in teacher_state.items():
        assert torch.equal(student_state[key], value), key
        assert student_state[key].data_ptr() != value.data_ptr()  # a copy, not shared storage
    assert torch.equal(distiller.head.weight.data, teacher.centres)  # Teacher keeps its centres L2-normalised
    assert distiller.teacher_needs == frozenset()


def test_kt_never_runs_the_teacher_during_training(tmp_path):
    teacher = tiny_teacher()
    distiller = ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kt"}))
    calls = []
    teacher.network.register_forward_hook(lambda *args: calls.append(1))
    losses = distiller(tiny_batch())
    assert sorted(losses) == ["loss_cls"] and calls == []


@pytest.mark.parametrize("target", ["pooled", "embedding"])
def test_kd_term_by_hand(tmp_path, target):
    teacher = tiny_teacher()
    distiller = ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kd", "target": target,
                                                                          "weight": 2.0}))
    assert distiller.teacher_needs == frozenset({target})
    pairs = zip(distiller.backbone.parameters(), teacher.network.parameters())
    assert not all(torch.equal(s, t) for s, t in pairs)  # kd trains from scratch
    distiller.eval()
    batch = tiny_batch()
    losses = distiller(batch)
    with torch.no_grad():
        full = normalize(batch["image"])  # the teacher sees 32 px
        low = resize(full, STUDENT_SIZE)  # the student sees the same images at 24 px
        p_t = teacher.network.forward_features(full)[target]
        p_s = distiller.backbone.forward_features(low)[target]
        cos = (p_s * p_t).sum(1) / (p_s.norm(dim=1) * p_t.norm(dim=1))
    assert losses["loss_kd"].item() == pytest.approx(2.0 * (1 - cos).mean().item(), rel=1e-4)


def test_flops_by_hand_and_the_report(tmp_path):
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, 8) == 2 * (3 * 3 * 3) * 4 * (8 * 8)  # 2 * k*k*C_in * C_out * H*W
    teacher = tiny_teacher()
    distiller = ResolutionDistiller.create(make_setup(tmp_path, teacher, {}))
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report == distiller.flops
    assert report["teacher_flops"] == count_flops(teacher.network, TEACHER_SIZE)
    assert report["student_flops"] == count_flops(distiller.backbone, STUDENT_SIZE)
    assert report["flops_ratio"] == pytest.approx(report["student_flops"] / report["teacher_flops"])
    assert report["flops_ratio"] < 1.0


def test_a_different_architecture_is_refused(tmp_path):
    teacher = tiny_teacher()
    wider = dict(ARCH, width=0.25)
    with pytest.raises(ConfigError, match="the student must be the teacher's architecture"):
        ResolutionDistiller.create(make_setup(tmp_path, teacher, {}, arch=wider))


def test_a_non_fcn_student_at_lower_resolution_is_a_config_error(tmp_path):
    # Without global pooling the embedding layer expects the teacher's 2x2 final map; 16 px gives 1x1.
    arch = dict(ARCH, fcn=False)
    teacher = tiny_teacher(arch)
    with pytest.raises(ConfigError, match="fcn=True"):
        ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kd"}, arch=arch, student_size=16))


def test_bad_options_are_refused(tmp_path):
    teacher = tiny_teacher()
    with pytest.raises(ConfigError, match="resolution.mode"):
        ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kt-kd"}))
    with pytest.raises(ConfigError, match="resolution.target"):
        ResolutionDistiller.create(make_setup(tmp_path, teacher, {"target": "stages"}))


@pytest.mark.parametrize("mode", ["kd", "kt+kd"])
def test_a_few_steps_lower_the_loss_and_keep_the_teacher_frozen(tmp_path, mode):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    distiller = ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": mode}))
    distiller.train()
    assert not teacher.network.training
    optimizer = torch.optim.Adam(distiller.parameters(), lr=3e-3)
    batch = tiny_batch()
    totals = []
    for _ in range(10):
        losses = distiller(batch)
        total = losses["loss_cls"] + losses["loss_kd"]
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert totals[-1] < 0.8 * totals[0]
    assert all(p.grad is None for p in teacher.network.parameters())
    for key, value in teacher.network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_non_fcn_teacher_reaches_the_kd_term_through_an_adaptive_pool(tmp_path):
    # A stock teacher flattens its final map: 4x4 at 64 px; the student, built for 32 px, flattens 2x2.
    arch = {"width": 0.125, "fcn": False, "num_features": 16, "input_size": 64}
    torch.manual_seed(0)
    teacher = Teacher(build_backbone("r18", **arch), input_size=64, centres=torch.randn(NUM_CLASSES, 16))
    setup = make_setup(tmp_path, teacher, {"mode": "kd", "target": "pooled"}, arch=dict(arch, input_size=32),
                       student_size=32)
    distiller = ResolutionDistiller.create(setup)
    distiller.eval()
    batch = {"image": torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8), "label": torch.tensor([0, 1, 2]),
             "index": torch.arange(3), "flipped": torch.zeros(3, dtype=torch.bool)}
    losses = distiller(batch)
    with torch.no_grad():
        full = normalize(batch["image"])
        channels = teacher.network.stage_channels[-1]
        grid = teacher.network.forward_features(full)["pooled"].view(3, channels, 4, 4)
        # Each student cell is the mean of the 2x2 block of teacher cells it covers.
        p_t = torch.stack([grid[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3))
                           for i in range(2) for j in range(2)], dim=2).flatten(1)
        p_s = distiller.backbone.forward_features(resize(full, 32))["pooled"]
        cos = (p_s * p_t).sum(1) / (p_s.norm(dim=1) * p_t.norm(dim=1))
    assert p_s.shape == p_t.shape == (3, channels * 4)
    assert losses["loss_kd"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)


def test_kt_from_a_non_fcn_teacher_is_refused_in_one_line(tmp_path):
    arch = {"width": 0.125, "fcn": False, "num_features": 16, "input_size": 64}
    teacher = Teacher(build_backbone("r18", **arch), input_size=64, centres=torch.randn(NUM_CLASSES, 16))
    for mode in ("kt", "kt+kd"):
        with pytest.raises(ConfigError, match="not fully convolutional") as error:
            ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": mode}, arch=dict(arch, input_size=32),
                                                  student_size=32))
        assert "\n" not in str(error.value) and "mode kd" in str(error.value)


@pytest.mark.parametrize("fcn", [True, False])
def test_an_onnx_teacher_gives_kd_the_same_pooled_target_as_its_pytorch_original(tmp_path, fcn):
    from facekd.deploy.onnx import export_onnx
    from facekd.deploy.onnx_teacher import OnnxEmbedder

    arch = {"width": 0.125, "fcn": fcn, "num_features": 16, "input_size": 64}
    torch.manual_seed(0)
    network = build_backbone("r18", **arch).eval()
    export_onnx(network, tmp_path / "teacher.onnx", 64)
    student_arch = dict(arch, input_size=32 if not fcn else 64)
    results = []
    for teacher in (Teacher(network, input_size=64), Teacher(OnnxEmbedder(tmp_path / "teacher.onnx"), input_size=64)):
        torch.manual_seed(1)  # the same student initialisation for both teachers
        distiller = ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kd", "target": "pooled"},
                                                          arch=student_arch, student_size=32))
        distiller.eval()
        batch = {"image": torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator()
                                        .manual_seed(2)), "label": torch.tensor([0, 1, 2])}
        results.append(distiller(batch)["loss_kd"].item())
    assert results[1] == pytest.approx(results[0], rel=1e-4)
    with pytest.raises(ConfigError, match="is an ONNX model, so its weights cannot initialise the student"
                       if fcn else "not fully convolutional"):
        ResolutionDistiller.create(make_setup(tmp_path, teacher, {"mode": "kt+kd"}, arch=student_arch, student_size=32))
