"""transfer (Wang et al. 2017): Hinton KD, width-compressed init, landmarks, NME and the three-stage pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from distill_celeba_helpers import one_thread, tiny_teacher, write_celeba  # noqa: F401 (fixture)
from facekd.data.training import TrainSamples
from facekd.distill.celeba_faces import CelebAFaces
from facekd.distill.distiller import DistillSetup, StudentSpec
from facekd.distill.methods.transfer import TransferDistiller
from facekd.distill.methods.transfer.alignment import (
    AlignmentStudent,
    LandmarkHead,
    LandmarkSamples,
    fit_teacher_head,
    mirror_unit,
    mirror_where,
    nme_per_image,
    to_pixels,
    to_unit,
)
from facekd.distill.registry import method_options
from facekd.distill.width_init import COMPRESSED, COPIED, init_from_teacher
from facekd.errors import ConfigError
from facekd.models import build_backbone
from facekd.train.engine import Trainer
from train_helpers import ScaledEmbeddings, tiny_config

STUDENT = {"width": 0.125, "fcn": True, "num_features": 32, "input_size": 32}
pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_hinton_kd_matches_hand_computation(tmp_path):
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    t, alpha = 2.0, 0.7
    kl_rows = []
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        kl_rows.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    expected = alpha * t * t * sum(kl_rows) / len(kl_rows)
    task = TransferDistiller.create(_setup(tmp_path, tiny_teacher(), temperature=t, alpha=alpha, init="none"))
    found = task.distillation_loss(torch.tensor(student), torch.tensor(teacher))
    assert found.item() == pytest.approx(expected, rel=1e-6)


def _randomise(network: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine terms, so that channel mix-ups change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.startswith("features."):
                continue  # the final BN1d scale is frozen at 1, as arcface_torch
            elif tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3 + (1.0 if "weight" in name else 0.0))
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in))


def _embed_in_wider(student: torch.nn.Module, teacher: torch.nn.Module, seed: int) -> dict[int, np.ndarray]:
    """Write `student` into chosen channels of `teacher`, zeroing every other channel.

    Returns the chosen channels per teacher width. The dead channels have zero weights, so the teacher
    computes exactly the student's function and its live channels have the largest L1 norms.
    """
    rng = np.random.default_rng(seed)
    small, big = student.state_dict(), teacher.state_dict()
    chosen: dict[int, np.ndarray] = {}
    for t_size, s_size in zip(teacher.stage_channels, student.stage_channels):
        chosen[t_size] = np.sort(rng.choice(t_size, size=s_size, replace=False))
    with torch.no_grad():
        for key, value in small.items():
            target = big[key]
            if target.shape == value.shape:
                target.copy_(value)
                continue
            target.fill_(1.0 if key.endswith("running_var") else 0.0)
            index = []
            for t_size, s_size in zip(target.shape, value.shape):
                if t_size == s_size:
                    index.append(np.arange(t_size))
                elif t_size in chosen:
                    index.append(chosen[t_size])
                else:  # a flattened C x k map (iresnet's non-FCN fc)
                    channels = teacher.stage_channels[-1]
                    k = t_size // channels
                    index.append((chosen[channels][:, None] * k + np.arange(k)).ravel())
            target[np.ix_(*index)] = value
    return chosen


@pytest.mark.parametrize("fcn", [True, False])
def test_width_init_reproduces_a_teacher_whose_extra_channels_are_dead(fcn):
    options = {"fcn": fcn, "num_features": 32, "input_size": 32}
    reference = build_backbone("r18", width=0.125, **options)
    _randomise(reference, seed=1)
    teacher = build_backbone("r18", width=0.25, **options)
    chosen = _embed_in_wider(reference, teacher, seed=2)
    x = torch.randn(4, 3, 32, 32)
    reference.eval(), teacher.eval()
    with torch.no_grad():
        assert torch.allclose(teacher(x), reference(x), rtol=1e-4, atol=1e-4)  # the construction itself

    student = build_backbone("r18", width=0.125, **options)
    report = init_from_teacher(student, teacher)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student(x), reference(x), rtol=1e-4, atol=1e-4)
    # The kept channels are exactly the live ones, output and input side.
    c16, c32 = chosen[teacher.stage_channels[0]], chosen[teacher.stage_channels[1]]
    expected = teacher.state_dict()["layer2.0.conv1.weight"][c32][:, c16]
    assert torch.equal(student.state_dict()["layer2.0.conv1.weight"], expected)
    assert report.status["layer2.0.conv1.weight"] == COMPRESSED
    assert report.status["conv1.weight"] == COMPRESSED  # 3 input channels kept, outputs cut
    assert report.status["features.weight"] == COPIED


def test_width_init_leaves_wider_or_unknown_tensors_random():
    teacher = build_backbone("r18", width=0.125, fcn=True, num_features=32, input_size=32)
    student = build_backbone("r18", width=0.25, fcn=True, num_features=32, input_size=32)
    before = student.state_dict()["layer1.0.conv1.weight"].clone()
    report = init_from_teacher(student, teacher)
    assert report.status["layer1.0.conv1.weight"] == "random"
    assert torch.equal(student.state_dict()["layer1.0.conv1.weight"], before)
    assert report.status["features.weight"] == COPIED


def test_unit_landmarks_mirror_like_the_flipped_image():
    height, width = 7, 6
    points = np.array([[1, 2], [4, 2], [3, 3], [1, 5], [4, 5]], dtype=np.float32)
    image = torch.zeros(1, height, width)
    for value, (x, y) in enumerate(points.astype(int), start=1):
        image[0, y, x] = value  # 1 = left eye, 2 = right eye, 3 = nose, 4/5 = mouth corners
    flipped_image = image.flip(-1)
    unit = torch.from_numpy(to_unit(points, height, width))
    mirrored = to_pixels(mirror_unit(unit)[None].numpy(), np.array([[height, width]]))[0]
    # By hand: x -> W-1-x, then left/right swapped.
    assert np.allclose(mirrored, [[1, 2], [4, 2], [2, 3], [1, 5], [4, 5]])
    found = [int(flipped_image[0, int(round(y)), int(round(x))]) for x, y in mirrored]
    assert found == [2, 1, 3, 5, 4]  # the flipped image's left eye is the person's right eye
    both = torch.stack([unit, unit])
    mixed = mirror_where(both, torch.tensor([False, True]))
    assert torch.equal(mixed[0], unit) and torch.allclose(mixed[1], mirror_unit(unit))


def test_nme_hand_computation():
    truth = np.array([[[0, 0], [10, 0], [5, 5], [2, 8], [8, 8]], [[0, 0], [4, 0], [2, 2], [1, 3], [3, 3]]], float)
    predicted = truth.copy()
    predicted[0, 2] += [3, 4]  # error 5 on one point: mean 1, inter-ocular 10 -> 0.1
    predicted[1] += [0, 2]  # error 2 on every point, inter-ocular 4 -> 0.5
    assert np.allclose(nme_per_image(predicted, truth), [0.1, 0.5])


def _setup(tmp_path, teacher, **options) -> DistillSetup:
    return DistillSetup(
        teacher=teacher, student=StudentSpec("r18", dict(STUDENT), 32), num_classes=teacher.num_classes,
        margin=(16.0, 1.0, 0.3, 0.0), options=method_options("transfer", options), out_dir=tmp_path / "run",
        extra_data={"attributes": tmp_path / "celeba"},
    )


def _steps(task, batch: dict, count: int, lr: float = 3e-3, optimiser=None) -> list[float]:
    optimiser = optimiser or torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=lr)
    totals = []
    for _ in range(count):
        out = task(batch)
        loss = sum(v for k, v in out.items() if k.startswith("loss"))
        totals.append(loss.item())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return totals


def test_transfer_classification_steps_lower_the_loss(tmp_path):
    task = TransferDistiller.create(_setup(tmp_path, tiny_teacher(), temperature=4.0, alpha=1.0))
    init = json.loads((tmp_path / "run" / "classification" / "student_init.json").read_text())
    assert init["counts"]["compressed"] > 0 and init["tensors"]["head.weight"] == "copied"
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "label": torch.arange(8) % 4,
        "index": torch.arange(8),
        "flipped": torch.zeros(8, dtype=torch.bool),
    }
    out = task(batch)
    assert set(out) == {"loss_cls", "loss_kd"} and out["loss_kd"].item() > 0
    losses = _steps(task, batch, 6)
    assert losses[-1] < losses[0]


def test_transfer_refuses_a_teacher_without_centres(tmp_path):
    teacher = tiny_teacher()
    teacher.centres = None
    with pytest.raises(ConfigError, match="class centres"):
        TransferDistiller.create(_setup(tmp_path, teacher))


def test_alignment_steps_lower_the_loss(tmp_path):
    write_celeba(tmp_path, count=16)
    teacher = tiny_teacher()
    samples = LandmarkSamples(CelebAFaces(tmp_path / "celeba", landmarks=True), np.arange(16))
    teacher_head = fit_teacher_head(teacher, samples, "embedding", ridge=1.0, batch_size=8, device=torch.device("cpu"))
    student = build_backbone("r18", **STUDENT)
    task = AlignmentStudent(student, teacher, head=LandmarkHead(32, samples.mean_shape()), teacher_head=teacher_head,
                            features="embedding", beta=0.5, backbone_spec=("r18", STUDENT), input_size=32)
    items = [samples[i] for i in range(8)]
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
    batch["flipped"] = torch.tensor([False, True] * 4)
    batch["image"] = torch.where(batch["flipped"][:, None, None, None], batch["image"].flip(-1), batch["image"])
    out = task(batch)
    assert set(out) == {"loss_landmarks", "loss_teacher"}
    losses = _steps(task, batch, 8)
    assert losses[-1] < losses[0]


def test_alignment_head_is_stable_at_the_recipe_lr_whatever_the_embedding_norm(tmp_path):
    """SGD at lr 0.1 (the compare recipe's) on embeddings of norm ~1e3: the head reads normalised
    features, so the loss falls instead of exploding (it reached 1e8 with raw features)."""
    write_celeba(tmp_path, count=16)
    teacher = tiny_teacher()
    samples = LandmarkSamples(CelebAFaces(tmp_path / "celeba", landmarks=True), np.arange(16))
    teacher_head = fit_teacher_head(teacher, samples, "embedding", ridge=1.0, batch_size=8, device=torch.device("cpu"))
    torch.manual_seed(0)
    student = build_backbone("r18", **STUDENT)
    task = AlignmentStudent(ScaledEmbeddings(student, 1000.0), teacher, head=LandmarkHead(32, samples.mean_shape()),
                            teacher_head=teacher_head, features="embedding", beta=0.5,
                            backbone_spec=("r18", STUDENT), input_size=32)
    items = [samples[i] for i in range(8)]
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
    batch["flipped"] = torch.zeros(8, dtype=torch.bool)
    images = task.student_input(batch["image"])
    small = AlignmentStudent(student, teacher, head=task.head, teacher_head=teacher_head, features="embedding",
                             beta=0.5, backbone_spec=("r18", STUDENT), input_size=32)
    torch.testing.assert_close(task.predict(images), small.predict(images))  # scale-free
    losses = _steps(task, batch, 20, optimiser=torch.optim.SGD(task.head.parameters(), lr=0.1, momentum=0.9))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] and max(losses) < 10 * losses[0]


def test_pipeline_runs_three_stages_through_the_engine(tmp_path):
    folder = write_celeba(tmp_path, count=24)
    teacher = tiny_teacher()
    train = TrainSamples(CelebAFaces(folder, landmarks=True))
    stages = []

    def fit(task, samples, stage):
        config = tiny_config(tmp_path / "run" / stage, epochs=1)
        config.optim.name, config.optim.lr = "adamw", 1e-3
        Trainer(task, samples, config).fit()
        stages.append((stage, type(task).__name__, len(samples)))
        return task

    final = TransferDistiller.run_pipeline(_setup(tmp_path, teacher, holdout=0.25), fit, train)
    assert final == tmp_path / "run" / "verification" / "checkpoint.pt"  # the protocol: the final student
    summary = json.loads((tmp_path / "run" / "transfer.json").read_text())
    assert [s[:2] for s in stages] == [
        ("classification", "TransferDistiller"), ("alignment", "AlignmentStudent"),
        ("verification", "VerificationStudent"),
    ]
    assert stages[1][2] == 18  # 24 landmark images less the 6 held out
    metrics = json.loads((tmp_path / "run" / "alignment" / "metrics.json").read_text())
    assert metrics["heldout_images"] == 6 and all(
        np.isfinite(metrics[k]) and metrics[k] > 0 for k in ("nme_student", "nme_teacher", "nme_mean_shape")
    )
    assert summary["student"]["alignment"]["nme_student"] == metrics["nme_student"]
    for stage in ("classification", "alignment", "verification"):
        assert (tmp_path / "run" / stage / "checkpoint.pt").is_file()
