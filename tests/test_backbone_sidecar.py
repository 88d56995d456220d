"""Every backbone.pth facekd writes describes itself (backbone.json): eval and export load a
non-default student (width 1/8, 128-d, 56 px) without flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.data.codec import encode_jpeg
from facekd.data.pairs_bin import write_pairs_bin
from facekd.errors import CheckpointError
from facekd.models import build_backbone
from facekd.models.backbone import backbone_spec
from facekd.models.loading import load_backbone, save_backbone, sidecar_path

KWARGS = {"width": 0.125, "num_features": 128, "input_size": 56}


@pytest.fixture
def student(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("r18", **KWARGS)
    path = tmp_path / "backbone.pth"
    save_backbone(path, model)
    return model, path


def test_the_sidecar_records_what_rebuilds_the_backbone(student):
    model, path = student
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["architecture"] == "r18" and sidecar["input_size"] == 56 and sidecar["embedding_size"] == 128
    loaded = load_backbone(path)
    assert backbone_spec(loaded) == backbone_spec(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_without_the_sidecar_the_keys_alone_cannot_tell(student):
    _, path = student
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="pass the name and options"):
        load_backbone(path)


def test_a_broken_sidecar_is_one_line(student):
    _, path = student
    sidecar_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="backbone.json: not JSON"):
        load_backbone(path)


def test_eval_and_export_take_the_student_without_flags(student, tmp_path):
    _, path = student
    rng = np.random.default_rng(0)
    images = [encode_jpeg(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(40)]
    write_pairs_bin(tmp_path / "pairs.bin", images, [k % 2 == 0 for k in range(20)])
    assert main(["eval", "--model", str(path), "--bin", str(tmp_path / "pairs.bin"), "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    assert main(["export", str(path), "--onnx", str(tmp_path / "student.onnx")]) == 0
    from facekd.deploy.onnx import inference_session

    session = inference_session(tmp_path / "student.onnx")
    assert session.get_inputs()[0].shape[1:] == [3, 56, 56]
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 56, 56), np.float32)})[0]
    assert out.shape == (2, 128)


def test_eval_scores_the_exported_onnx_as_its_pytorch_original(student, tmp_path, capsys):
    import json

    _, path = student
    rng = np.random.default_rng(1)
    images = [encode_jpeg(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(80)]
    write_pairs_bin(tmp_path / "pairs.bin", images, [k % 2 == 0 for k in range(40)])
    assert main(["export", str(path), "--onnx", str(tmp_path / "student.onnx")]) == 0
    reports = {}
    for name, model in (("torch", path), ("onnx", tmp_path / "student.onnx")):
        assert main(["eval", "--model", str(model), "--bin", str(tmp_path / "pairs.bin"), "--nfolds", "2",
                     "--out", str(tmp_path / name), "--no-progress"]) == 0
        reports[name] = json.loads((tmp_path / name / "pairs.json").read_text())
    assert "input (pixel - 127.5) / 127.5, RGB [facekd metadata]; 56 px, 128-d" in capsys.readouterr().out
    assert reports["onnx"]["accuracy"] == reports["torch"]["accuracy"]
    assert reports["onnx"]["xnorm"] == pytest.approx(reports["torch"]["xnorm"], rel=1e-4)


def test_a_56px_student_exports_at_112px_with_the_resize_in_the_graph(student, tmp_path):
    from facekd.data.transforms import network_input
    from facekd.deploy.onnx import inference_session
    from facekd.models.loading import load_backbone

    _, path = student
    assert main(["export", str(path), "--onnx", str(tmp_path / "s112.onnx"), "--graph-input-size", "112"]) == 0
    session = inference_session(tmp_path / "s112.onnx")
    assert session.get_inputs()[0].shape[1:] == [3, 112, 112]
    crops = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 3, 112, 112), dtype=np.uint8))
    got = session.run(None, {session.get_inputs()[0].name: network_input(crops, None).numpy()})[0]
    model = load_backbone(path).eval()
    with torch.inference_mode():
        expected = model(network_input(crops, 56)).numpy()  # evaluation's own 112 -> 56 px rule
    relative = np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert relative.max() < 1e-4
    assert main(["export", str(path), "--onnx", str(tmp_path / "x.onnx"), "--graph-input-size", "40"]) == 2


def test_a_foreign_file_loads_with_arch_and_kwargs(student, tmp_path, capsys):
    model, path = student
    sidecar_path(path).unlink()  # a file from elsewhere: no side-car
    rng = np.random.default_rng(2)
    images = [encode_jpeg(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(40)]
    write_pairs_bin(tmp_path / "pairs.bin", images, [k % 2 == 0 for k in range(20)])
    common = ["--bin", str(tmp_path / "pairs.bin"), "--nfolds", "2", "--no-progress"]
    assert main(["eval", "--model", str(path), *common, "--out", str(tmp_path / "a")]) == 2
    assert "no known backbone fits" in capsys.readouterr().err
    kwargs = "{width: 0.125, num_features: 128, input_size: 56}"
    assert main(["eval", "--model", str(path), "--arch", "r18", "--kwargs", kwargs, *common,
                 "--out", str(tmp_path / "b")]) == 0
    assert main(["export", str(path), "--arch", "r18", "--kwargs", kwargs, "--onnx", str(tmp_path / "f.onnx")]) == 0
    assert main(["eval", "--model", str(path), "--arch", "r18", "--kwargs", "[1, 2]", *common,
                 "--out", str(tmp_path / "c")]) == 2
    assert "--kwargs: found '[1, 2]', expected a YAML mapping" in capsys.readouterr().err
