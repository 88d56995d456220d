"""`facekd export`: insightface-style ONNX graph, dynamic batch, parity on real faces, int8 copies."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from facekd.cli import main
from facekd.deploy.model_source import ModelSource
from facekd.deploy.onnx import PARITY_TOLERANCE, ParityError, check_parity, export_onnx, inference_session
from facekd.deploy.samples import model_inputs, synthetic_aligned_faces
from facekd.models.loading import load_backbone
from train_helpers import ScaledEmbeddings


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return synthetic_aligned_faces(6, seed=11)


@pytest.fixture(scope="module")
def exported_mbf(tmp_path_factory):
    """An mbf with face-calibrated BatchNorm saved as an insightface backbone.pth, exported by the CLI."""
    folder = tmp_path_factory.mktemp("mbf")
    torch.manual_seed(0)
    model = ModelSource.from_args(None, "mbf").build(112)
    torch.save(model.state_dict(), folder / "backbone.pth")
    onnx_path = folder / "mbf.onnx"
    code = main(["export", str(folder / "backbone.pth"), "--onnx", str(onnx_path), "--parity-images", "4"])
    assert code == 0
    return load_backbone(folder / "backbone.pth"), onnx_path


def test_graph_is_named_and_shaped_as_insightface_models(exported_mbf):
    _, onnx_path = exported_mbf
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["data"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value"), "batch must be symbolic"
    assert [d.dim_value for d in dims[1:]] == [3, 112, 112]
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert out_dims[1].dim_value == 512


def test_dynamic_batch_and_parity_on_real_faces(exported_mbf, faces):
    model, onnx_path = exported_mbf
    session = inference_session(onnx_path)
    inputs = model_inputs(faces[:3], 112)
    with torch.inference_mode():
        expected = model(inputs).numpy()
    assert np.abs(expected).max() > 0.1, "a degenerate model would make the parity check vacuous"
    for batch in (1, 3):
        got = session.run(None, {"data": inputs[:batch].numpy()})[0]
        assert got.shape == (batch, 512)
        relative = np.linalg.norm(got - expected[:batch], axis=1) / np.linalg.norm(expected[:batch], axis=1)
        assert relative.max() <= PARITY_TOLERANCE
    report = check_parity(model, session, model_inputs(faces, 112))
    assert report.images == 6 and report.max_relative_error <= PARITY_TOLERANCE and report.min_cosine > 1 - 1e-6


def test_parity_is_scale_free(exported_mbf, faces, tmp_path):
    model, _ = exported_mbf
    big = ScaledEmbeddings(model, 1e4).eval()  # norms near 10,000, like a briefly trained teacher's
    export_onnx(big, tmp_path / "big.onnx", 112)
    report = check_parity(big, inference_session(tmp_path / "big.onnx"), model_inputs(faces[:3], 112))
    assert report.max_relative_error <= PARITY_TOLERANCE and report.min_cosine > 1 - 1e-6
    with torch.inference_mode():
        norms = np.linalg.norm(big(model_inputs(faces[:3], 112)).numpy(), axis=1)
    # The absolute difference grows with the norm: reported, bounded by the relative error.
    assert report.max_abs_diff <= report.max_relative_error * norms.max() + 1e-6


def test_parity_check_fails_loudly_on_a_mismatch(exported_mbf, faces):
    model, onnx_path = exported_mbf
    tampered = copy.deepcopy(model)
    inputs = model_inputs(faces[:2], 112)
    with torch.inference_mode():
        norms = np.linalg.norm(model(inputs).numpy(), axis=1)
    with torch.no_grad():
        last_norm = [m for m in tampered.modules() if isinstance(m, torch.nn.BatchNorm1d)][-1]
        # Shifts embedding coordinate 7 by 1e-3 of the larger norm: relative errors near 1e-3.
        last_norm.bias[7] += 1e-3 * float(norms.max())
    with pytest.raises(ParityError, match=r"max \|\|onnx - torch\|\| / \|\|torch\|\| = [0-9.]+e-0[34] .* over 2 images"):
        check_parity(tampered, inference_session(onnx_path), model_inputs(faces[:2], 112), what="mbf.onnx")


def test_cli_refuses_a_non_checkpoint_with_a_one_line_error(tmp_path, capsys):
    """Exporting a file that is not a backbone is a user error with exit code 2, not a traceback."""
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "junk.pth"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "facekd export: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_dynamic_int8_keeps_verification_accuracy_report_honest(exported_mbf, faces, tmp_path):
    from facekd.data.pairs_bin import write_pairs_bin
    from facekd.deploy.quantize import compare_quantized, quantize_onnx
    from facekd.evaluate.verification import evaluate

    model, onnx_path = exported_mbf
    int8_path = tmp_path / "mbf_int8.onnx"
    quantize_onnx(onnx_path, int8_path, "dynamic")
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}, ops

    # 10 pairs (one per fold) of the faces and their mirror images / other faces.
    pair_images, issame = [], []
    for k in range(10):
        first = faces[k % 6]
        same = k % 2 == 0
        pair_images += [first, first[:, ::-1].copy() if same else faces[(k + 1) % 6]]
        issame.append(same)
    bin_path = tmp_path / "pairs.bin"
    write_pairs_bin(bin_path, pair_images, issame)

    report = compare_quantized(onnx_path, int8_path, "dynamic", bin_path, repeats=3)
    # The fp32 accuracy must be what the PyTorch model itself scores on the same decoded images.
    from facekd.data.pairs_bin import load_pairs_bin

    decoded, _ = load_pairs_bin(bin_path)
    inputs = model_inputs(np.stack([decoded[i] for i in range(len(decoded))]), 112)
    with torch.inference_mode():
        summed = (model(inputs) + model(inputs.flip(3))).numpy()
    assert report.pairs == 10
    assert report.accuracy_fp32 == pytest.approx(evaluate(summed, issame).accuracy)
    session = inference_session(int8_path)
    feed_name = session.get_inputs()[0].name
    int8_summed = sum(session.run(None, {feed_name: x.numpy()})[0] for x in (inputs, inputs.flip(3)))
    assert report.accuracy_int8 == pytest.approx(evaluate(int8_summed, issame).accuracy)
    assert report.size_int8_mb < report.size_fp32_mb / 2


@pytest.mark.slow
def test_static_int8_with_calibration_images(exported_mbf, faces, tmp_path):
    from facekd.deploy.quantize import quantize_onnx

    model, onnx_path = exported_mbf
    int8_path = tmp_path / "mbf_static.onnx"
    quantize_onnx(onnx_path, int8_path, "static", calibration_images=faces)
    ops = [node.op_type for node in onnx.load(str(int8_path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inputs = model_inputs(faces, 112)
    got = torch.from_numpy(inference_session(int8_path).run(None, {"data": inputs.numpy()})[0])
    with torch.inference_mode():
        expected = model(inputs)
    # int8 moves each embedding, but it must stay closest to its own face's fp32 embedding.
    cosine = torch.nn.functional.normalize(got, dim=1) @ torch.nn.functional.normalize(expected, dim=1).T
    assert torch.equal(cosine.argmax(dim=1), torch.arange(len(faces))), cosine


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["r50", "r18"])
def test_resnet_export_parity(arch, faces, tmp_path):
    torch.manual_seed(0)
    model = ModelSource.from_args(None, arch).build(112)
    export_onnx(model, tmp_path / f"{arch}.onnx", 112)
    report = check_parity(model, inference_session(tmp_path / f"{arch}.onnx"), model_inputs(faces[:4], 112))
    assert report.max_abs_diff <= PARITY_TOLERANCE


def test_raw_pixel_export_loads_in_opencvs_face_recognizer(exported_mbf, faces, tmp_path):
    """`--pixels raw`: OpenCV's FaceRecognizerSF (its own preprocessing: BGR in, swapRB, 0..255, no
    scaling) gives the PyTorch model's embeddings, and the graph carries the Sub/Mul nodes by which
    insightface's ArcFaceONNX (model_zoo/arcface_onnx.py: names of the first 8 nodes) picks mean 0, std 1."""
    import cv2

    from facekd.deploy.onnx_teacher import OnnxEmbedder

    model, _ = exported_mbf
    folder = tmp_path / "raw"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "backbone.pth")
    path = folder / "mbf_raw.onnx"
    assert main(["export", str(folder / "backbone.pth"), "--onnx", str(path), "--pixels", "raw",
                 "--parity-images", "4"]) == 0
    recognizer = cv2.FaceRecognizerSF.create(str(path), "")
    theirs = np.concatenate([recognizer.feature(cv2.cvtColor(face, cv2.COLOR_RGB2BGR)) for face in faces[:3]])
    with torch.inference_mode():
        ours = model(model_inputs(faces[:3], 112)).numpy()
    assert np.abs(ours).max() > 0.1
    relative = np.linalg.norm(theirs - ours, axis=1) / np.linalg.norm(ours, axis=1)
    assert relative.max() < 1e-4
    names = [node.name for node in onnx.load(str(path)).graph.node[:8]]
    assert any(n.startswith("Sub") for n in names) and any(n.startswith("Mul") for n in names)
    embedder = OnnxEmbedder(path)  # facekd reads the convention back: metadata, then the graph
    assert (embedder.pixel_mean, embedder.pixel_std, embedder.channel_order) == (0.0, 1.0, "RGB")
    np.testing.assert_allclose(embedder(model_inputs(faces[:3], 112)).numpy(), ours, rtol=0,
                               atol=1e-4 * np.abs(ours).max())


def test_pt2_program_loads_without_facekd_and_matches(exported_mbf, faces, tmp_path, capsys):
    model, _ = exported_mbf
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    assert main(["export", str(tmp_path / "backbone.pth"), "--onnx", str(tmp_path / "m.onnx"), "--pt2",
                 str(tmp_path / "m.pt2"), "--parity-images", "2"]) == 0
    assert "wrote " + str(tmp_path / "m.pt2") in capsys.readouterr().out
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()  # plain PyTorch, no facekd class needed
    inputs = model_inputs(faces[:3], 112)
    with torch.inference_mode():
        expected, got = model(inputs), loaded(inputs)
    assert got.shape == (3, 512)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
