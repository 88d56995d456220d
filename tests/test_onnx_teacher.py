"""OnnxEmbedder: graph pruning, declared preprocessing, fixed-batch models, and a real SFace model."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facekd.deploy.onnx_teacher import OnnxEmbedder, load_pruned_model
from facekd.errors import CheckpointError, ConfigError


def _tiny_model(path, batch: int | str) -> np.ndarray:
    """A 4x4-px model: per-channel mean then a 3x2 matrix. It lists an input no node reads and an
    initializer among its inputs, as converted models often do. Returns the matrix."""
    weight = np.array([[1.0, 0.5], [-2.0, 0.25], [0.5, 3.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weight"], ["fc1"]),
        ],
        "tiny",
        inputs=[
            helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 4, 4]),
            helper.make_tensor_value_info("unused_weight", TensorProto.FLOAT, [8, 3]),
            helper.make_tensor_value_info("weight", TensorProto.FLOAT, [3, 2]),
        ],
        outputs=[helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, 2])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weight


def test_pruning_drops_unread_inputs_and_initializer_inputs(tmp_path):
    path = tmp_path / "tiny.onnx"
    _tiny_model(path, 1)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["data", "unused_weight", "weight"]
    assert [i.name for i in load_pruned_model(path).graph.input] == ["data"]


@pytest.mark.parametrize("batch", [1, "N"])
def test_preprocessing_and_batching_match_a_hand_computation(tmp_path, batch):
    path = tmp_path / "tiny.onnx"
    weight = _tiny_model(path, batch)
    embedder = OnnxEmbedder(path, pixel_mean=10.0, pixel_std=2.0, channel_order="BGR")
    assert (embedder.input_size, embedder.embedding_size) == (4, 2)
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = embedder(images)
    # By hand: back to 0..255 pixels, (p - mean) / std, channels reversed, mean over pixels, @ weight.
    pixels = images.double().numpy() * 127.5 + 127.5
    expected = (((pixels - 10.0) / 2.0)[:, ::-1].mean(axis=(2, 3))) @ weight
    assert got.shape == (3, 2) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_insightface_defaults_feed_the_tensor_unchanged(tmp_path):
    path = tmp_path / "tiny.onnx"
    weight = _tiny_model(path, "N")
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = OnnxEmbedder(path)(images).numpy()
    np.testing.assert_allclose(got, images.numpy().mean(axis=(2, 3)) @ weight, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_one_line_errors(tmp_path):
    path = tmp_path / "tiny.onnx"
    _tiny_model(path, "N")
    with pytest.raises(ConfigError, match="channel_order"):
        OnnxEmbedder(path, channel_order="GBR")
    with pytest.raises(ConfigError, match="expected 4x4"):
        OnnxEmbedder(path)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(CheckpointError, match="file not found"):
        OnnxEmbedder(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(CheckpointError, match="junk.onnx"):
        OnnxEmbedder(tmp_path / "junk.onnx")


@pytest.fixture(scope="module")
def aligned_faces():
    from facekd.deploy.samples import synthetic_aligned_faces

    return synthetic_aligned_faces(4, seed=3)


def test_sface_needs_pruning_and_embeds_aligned_faces(sface_path, aligned_faces, tmp_path):
    from facekd.deploy.samples import model_inputs

    raw = onnx.load(sface_path).graph
    read = {name for node in raw.node for name in node.input}
    assert any(i.name not in read for i in raw.input), "the file should list graph inputs no node reads"

    embedder = OnnxEmbedder(sface_path, pixel_mean=0.0, pixel_std=1.0)
    assert (embedder.input_size, embedder.embedding_size, embedder.fixed_batch) == (112, 128, 1)
    inputs = model_inputs(aligned_faces, 112)
    batch = embedder(inputs)
    assert batch.shape == (4, 128) and torch.isfinite(batch).all()
    one_by_one = torch.cat([embedder(inputs[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, one_by_one, rtol=0, atol=1e-5)
    repeated = embedder(torch.cat([inputs[:1], inputs[:1]]))
    torch.testing.assert_close(repeated[0], repeated[1], rtol=0, atol=0)

    unit = torch.nn.functional.normalize(batch, dim=1)
    flipped = torch.nn.functional.normalize(embedder(inputs.flip(3)), dim=1)
    flip_cosine = (unit * flipped).sum(1)
    other_cosine = unit @ unit.T
    other_cosine = other_cosine[~torch.eye(4, dtype=torch.bool)]
    assert flip_cosine.min() > other_cosine.max(), "a face and its mirror image should be closer than two people"


def test_sface_matches_opencvs_own_recognizer(sface_path, aligned_faces, tmp_path):
    """OpenCV's FaceRecognizerSF preprocesses by itself (BGR in, swapRB, raw 0..255): an
    independent check of the declared preprocessing. OpenCV, too, needs the pruned graph."""
    import cv2

    from facekd.deploy.samples import model_inputs

    pruned = tmp_path / "sface_pruned.onnx"
    onnx.save(load_pruned_model(sface_path), str(pruned))
    recognizer = cv2.FaceRecognizerSF.create(str(pruned), "")
    reference = np.concatenate([recognizer.feature(cv2.cvtColor(face, cv2.COLOR_RGB2BGR)) for face in aligned_faces])
    inputs = model_inputs(aligned_faces, 112)
    declared = OnnxEmbedder(sface_path, pixel_mean=0.0, pixel_std=1.0)(inputs).numpy()
    np.testing.assert_allclose(declared, reference, atol=1e-4 * np.abs(reference).max())
    forced = OnnxEmbedder(sface_path, pixel_mean=127.5, pixel_std=127.5)(inputs).numpy()
    assert np.abs(forced - reference).max() > 0.1, "insightface defaults must not fit SFace"
    detected = OnnxEmbedder(sface_path)
    assert (detected.pixel_mean, detected.pixel_std, detected.channel_order) == (0.0, 1.0, "RGB")
    np.testing.assert_allclose(detected(inputs).numpy(), declared, rtol=0, atol=0)


def test_convention_from_graph_metadata_or_insightface_default(tmp_path):
    from facekd.deploy.onnx_teacher import detect_convention

    _tiny_model(tmp_path / "plain.onnx", 1)  # no normalisation before its first layer
    plain = load_pruned_model(tmp_path / "plain.onnx")
    assert (detect_convention(plain).pixel_mean, detect_convention(plain).pixel_std) == (127.5, 127.5)
    # The same model behind an in-graph (x - 127.5) * (1/128), as mxnet-converted models are.
    graph = plain.graph
    first = graph.node[0]
    first.input[0] = "scaled"
    graph.node.insert(0, helper.make_node("Mul", ["centred", "scale"], ["scaled"]))
    graph.node.insert(0, helper.make_node("Sub", ["data", "mean"], ["centred"]))
    graph.initializer.extend([numpy_helper.from_array(np.float32(127.5), "mean"),
                              numpy_helper.from_array(np.float32(1 / 128), "scale")])
    onnx.save(plain, str(tmp_path / "normalising.onnx"))
    inside = detect_convention(load_pruned_model(tmp_path / "normalising.onnx"))
    assert (inside.pixel_mean, inside.pixel_std) == (0.0, 1.0) and "inside the graph" in inside.source
    # facekd's own metadata wins over the graph.
    for key, value in {"facekd.pixel_mean": "10", "facekd.pixel_std": "2", "facekd.channel_order": "BGR"}.items():
        prop = plain.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(plain, str(tmp_path / "tagged.onnx"))
    tagged = OnnxEmbedder(tmp_path / "tagged.onnx")
    assert (tagged.pixel_mean, tagged.pixel_std, tagged.channel_order) == (10.0, 2.0, "BGR")
    assert tagged.convention.source == "facekd metadata"


class _Samples:
    """The two things the check reads of training samples: labels and uint8 CHW images."""

    def __init__(self, count: int) -> None:
        rng = np.random.default_rng(0)
        self.labels = np.arange(count) // 2
        self.images = rng.integers(0, 256, (count, 3, 4, 4), dtype=np.uint8)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.from_numpy(self.images[index]), "label": int(self.labels[index])}


def test_a_collapsed_teacher_is_refused_in_one_line(tmp_path):
    from facekd.distill.loading import check_teacher_separates
    from facekd.distill.teacher import Teacher

    weight = _tiny_model(tmp_path / "tiny.onnx", "N")
    samples = _Samples(16)  # 8 identities
    # Declared as 0..255 pixels, this model's outputs are dominated by the mean pixel: every image
    # points the same way (cosine near 1).
    collapsed = OnnxEmbedder(tmp_path / "tiny.onnx", pixel_mean=0.0, pixel_std=1.0, channel_order="RGB")
    with pytest.raises(ConfigError, match=r"mean cosine 0\.9\d+ between 8 different identities, expected at most "
                                          r"0\.8 \(a collapsed teacher\); input \(pixel - 0\) / 1, RGB \[as given\]"):
        check_teacher_separates(Teacher(collapsed, input_size=4, source="tiny.onnx"), samples,
                                collapsed.convention.describe())
    # Centred inputs spread the same images out; the check passes and returns the mean cosine.
    spread = OnnxEmbedder(tmp_path / "tiny.onnx")
    teacher = Teacher(spread, input_size=4, source="tiny.onnx")
    unit = torch.nn.functional.normalize(
        torch.from_numpy(((samples.images[::2].astype(np.float32) - 127.5) / 127.5).mean(axis=(2, 3)) @ weight), dim=1)
    cosine = unit @ unit.T
    expected = float((cosine.sum() - cosine.diagonal().sum()) / (8 * 7))
    assert check_teacher_separates(teacher, samples, spread.convention.describe()) == pytest.approx(expected, abs=1e-5)


def test_pooled_features_are_the_embedding_layers_input(tmp_path):
    from facekd.distill.teacher import POOLED, STAGES, Teacher

    weight = _tiny_model(tmp_path / "tiny.onnx", "N")
    embedder = OnnxEmbedder(tmp_path / "tiny.onnx")
    # GlobalAveragePool -> Flatten -> MatMul(weight): the pooled vector is the Flatten output of a 3x1x1 map
    assert (embedder.pooled.name, embedder.pooled.size, embedder.pooled.map_shape) == ("flat", 3, (3, 1, 1))
    assert embedder.fcn
    images = torch.rand(5, 3, 4, 4) * 2 - 1
    features = embedder.forward_features(images)
    mean = images.mean(dim=(2, 3))  # insightface's 127.5/127.5 convention feeds [-1, 1] unchanged
    torch.testing.assert_close(features["pooled"], mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(features["embedding"], mean @ torch.from_numpy(weight), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features["embedding"], embedder(images))
    teacher = Teacher(embedder, input_size=4, source="tiny.onnx")
    teacher.require(POOLED)
    assert teacher.pooled_size == 3
    with pytest.raises(ConfigError, match="stage feature maps .* which an ONNX model does not give"):
        teacher.require(STAGES)


def test_a_graph_without_an_embedding_layer_has_no_pooled_features(tmp_path):
    from facekd.distill.teacher import POOLED, Teacher

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["out"])],
        "no_fc", inputs=[helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 4, 4])],
        outputs=[helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "no_fc.onnx"))
    embedder = OnnxEmbedder(tmp_path / "no_fc.onnx")
    assert embedder.pooled is None
    with pytest.raises(ConfigError, match="no embedding layer"):
        embedder.forward_features(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ConfigError, match="needs its pooled features, but no embedding layer"):
        Teacher(embedder, input_size=4, source="no_fc.onnx").require(POOLED)
