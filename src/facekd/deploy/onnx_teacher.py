"""An ONNX face-recognition model as a teacher (embedding and pooled features), run by onnxruntime.

`OnnxEmbedder(path)` is called like a facekd backbone: on a float N x 3 x H x W tensor, RGB in
[-1, 1] (facekd's `transforms.normalize`), it returns the raw N x D embedding as a float32 tensor on
the input's device. Models differ in what they expect, so the preprocessing is declared:

- `pixel_mean`, `pixel_std`: the model is fed `(pixel - mean) / std` with pixels in 0..255. The
  defaults, 127.5 and 127.5, are insightface's (`model_zoo/arcface_onnx.py`, e.g. `w600k_r50.onnx`).
  Models that normalise inside the graph take raw pixels: mean 0, std 1. OpenCV Zoo's SFace is one
  (`FaceRecognizerSF::feature` calls `blobFromImage(img, 1, (112, 112), 0, swapRB=true)`; the graph
  subtracts 127.5 and multiplies by 1/128 itself), as are insightface's models converted from mxnet.
- `channel_order`: "RGB" (insightface, SFace) or "BGR".

Left unset (None), the convention is read from the model (`detect_convention`): first the metadata
facekd's export writes (`facekd.pixel_mean`, `facekd.pixel_std`, `facekd.channel_order`); else the
graph itself, as insightface's `ArcFaceONNX` does: when the image input passes through a subtraction
and a multiplication before the first convolution, the graph normalises by itself (mean 0, std 1).
insightface looks for those nodes by name among the first 8; facekd follows the input's consumers,
which also finds them in quantised graphs whose first nodes dequantise weights (SFace's int8 file).
Otherwise insightface's 127.5 / 127.5.

Besides the embedding, `forward_features` gives the pooled features, the vector fed to the
graph's embedding layer (the data input of its last Gemm or MatMul with a constant weight), as an
extra graph output of a second session made on first use. That is what Karlekar's resolution KD,
`neurons` (layer pooled) and transfer's alignment stage read. Stage feature maps with routing
through the remaining blocks (ShrinkTeaNet) need the network in PyTorch: onnx2torch, the
maintained converter, requires torchvision, which facekd does not install.

The input size is read from the graph. A graph with a fixed batch size (SFace's is 1) is run in
chunks of that size. Graph inputs that no node reads are pruned before the session is created
(onnxruntime otherwise demands a value for each), and initializers listed as graph inputs are made
plain constants so onnxruntime can fold them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facekd.deploy.onnx import inference_session
from facekd.errors import CheckpointError, ConfigError

INSIGHTFACE_PIXEL_MEAN = 127.5
INSIGHTFACE_PIXEL_STD = 127.5
CHANNEL_ORDERS = ("RGB", "BGR")
METADATA_KEYS = {"pixel_mean": "facekd.pixel_mean", "pixel_std": "facekd.pixel_std",
                 "channel_order": "facekd.channel_order"}
LAYER_OPS = {"Conv", "Gemm", "MatMul", "ConvInteger", "QLinearConv"}


@dataclass(frozen=True)
class InputConvention:
    """How pixels (0..255) become the model's input: (pixel - mean) / std, in channel_order."""

    pixel_mean: float
    pixel_std: float
    channel_order: str
    source: str  # where it came from, for the start-up line

    def describe(self) -> str:
        return (f"input (pixel - {self.pixel_mean:g}) / {self.pixel_std:g}, {self.channel_order} "
                f"[{self.source}]")


def normalises_in_graph(model) -> bool:
    """True when the image input goes through Sub (or Add) and Mul (or Div) before the first layer."""
    graph = model.graph
    name, seen = graph.input[0].name, set()
    for _ in range(16):
        users = [node for node in graph.node if name in node.input]
        if len(users) != 1 or users[0].op_type in LAYER_OPS:
            break
        seen.add(users[0].op_type)
        name = users[0].output[0]
    return bool(seen & {"Sub", "Add"}) and bool(seen & {"Mul", "Div"})


def detect_convention(model) -> InputConvention:
    """The model's input convention from facekd's metadata, else its graph (module docstring)."""
    props = {prop.key: prop.value for prop in model.metadata_props}
    if all(key in props for key in METADATA_KEYS.values()):
        try:
            return InputConvention(float(props[METADATA_KEYS["pixel_mean"]]), float(props[METADATA_KEYS["pixel_std"]]),
                                   props[METADATA_KEYS["channel_order"]], "facekd metadata")
        except ValueError:
            pass  # unreadable metadata: fall back to the graph
    if normalises_in_graph(model):
        return InputConvention(0.0, 1.0, "RGB", "normalised inside the graph: Sub and Mul before the first layer")
    return InputConvention(INSIGHTFACE_PIXEL_MEAN, INSIGHTFACE_PIXEL_STD, "RGB",
                           "no normalisation in the graph: insightface's default")


def load_pruned_model(path: str | os.PathLike):
    """Load an ONNX model with unused graph inputs removed and initializers out of the inputs."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found, expected an ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others, with no common base
        raise CheckpointError(f"{path}: cannot be read as an ONNX model ({type(exc).__name__}: {exc})") from exc
    graph = model.graph
    consumed = {name for node in graph.node for name in node.input}
    consumed.update(output.name for output in graph.output)
    initializers = {init.name for init in graph.initializer}
    kept = [i for i in graph.input if i.name in consumed and i.name not in initializers]
    del graph.input[:]
    graph.input.extend(kept)
    if len(kept) != 1:
        raise CheckpointError(
            f"{path}: {len(kept)} graph inputs after pruning ({[i.name for i in kept]}), expected one image input"
        )
    if len(graph.output) != 1:
        raise CheckpointError(f"{path}: {len(graph.output)} graph outputs, expected one embedding")
    return model


def constant_tensors(graph) -> set[str]:
    """Names of the tensors that do not depend on the graph input: initializers, Constant outputs,
    and the outputs of nodes whose inputs are all constant (e.g. a transposed weight)."""
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(name in constants or not name for name in node.input)):
            constants.update(node.output)
    return constants


def embedding_layer_input(model) -> str | None:
    """The tensor fed to the embedding layer: the data input of the graph's last Gemm or MatMul whose
    other operand is a constant weight; None when the graph has no such layer."""
    constants = constant_tensors(model.graph)
    for node in reversed(model.graph.node):
        if node.op_type in ("Gemm", "MatMul"):
            data = [name for name in node.input[:2] if name not in constants]
            if len(data) == 1:
                return data[0]
    return None


@dataclass(frozen=True)
class PooledLayout:
    """The pooled tensor's name, size, and the C x h x w map it was flattened from (None if not known)."""

    name: str
    size: int
    map_shape: tuple[int, int, int] | None

    @property
    def fcn(self) -> bool:
        """False when the pooled vector is a flattened spatial map (a non-FCN head)."""
        return self.map_shape is None or self.map_shape[1:] == (1, 1)


def pooled_layout(model) -> PooledLayout | None:
    """Where the pooled features are in the graph, from ONNX shape inference; None when not found."""
    import onnx

    name = embedding_layer_input(model)
    if name is None:
        return None
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    dims = shapes.get(name, [])
    if len(dims) != 2 or dims[1] is None:
        return None
    producer = next((node for node in model.graph.node if name in node.output), None)
    map_dims = shapes.get(producer.input[0], []) if producer is not None and producer.op_type in ("Flatten", "Reshape") else []
    map_shape = tuple(map_dims[1:]) if len(map_dims) == 4 and None not in map_dims[1:] else None
    return PooledLayout(name, dims[1], map_shape)


def _dims(value_info) -> list[int | None]:
    """Static sizes of a graph input or output; None for a symbolic or unknown dimension."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


class OnnxEmbedder:
    """Embeddings from an ONNX face-recognition model; see the module docstring for the options."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        pixel_mean: float | None = None,
        pixel_std: float | None = None,
        channel_order: str | None = None,
        threads: int | None = None,
    ):
        if channel_order and channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order: found {channel_order!r}, expected one of {CHANNEL_ORDERS}")
        if pixel_std == 0:
            raise ConfigError("pixel_std: found 0, expected a non-zero scale")
        self.path = Path(path)
        model = load_pruned_model(self.path)
        detected = detect_convention(model)
        given = (pixel_mean, pixel_std, channel_order or None)
        self.convention = InputConvention(
            detected.pixel_mean if pixel_mean is None else pixel_mean,
            detected.pixel_std if pixel_std is None else pixel_std,
            channel_order or detected.channel_order,
            detected.source if all(v is None for v in given) else "as given" if None not in given
            else f"as given where set, else {detected.source}")
        input_dims = _dims(model.graph.input[0])
        output_dims = _dims(model.graph.output[0])
        if len(input_dims) != 4 or input_dims[1] != 3:
            raise CheckpointError(f"{self.path}: input shape {input_dims}, expected N x 3 x H x W")
        if input_dims[2] is None or input_dims[3] is None or input_dims[2] != input_dims[3]:
            raise CheckpointError(f"{self.path}: input shape {input_dims}, expected a fixed square H x W")
        if len(output_dims) != 2 or output_dims[1] is None:
            raise CheckpointError(f"{self.path}: output shape {output_dims}, expected N x D with a fixed D")
        self.input_size: int = input_dims[2]
        self.embedding_size: int = output_dims[1]
        self.fixed_batch: int | None = input_dims[0]
        self.pixel_mean = self.convention.pixel_mean
        self.pixel_std = self.convention.pixel_std
        self.channel_order = self.convention.channel_order
        self.session = inference_session(model, threads=threads, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self._session_options = {"threads": threads, "providers": providers}
        self._features_session = None

    def preprocess(self, images: torch.Tensor) -> np.ndarray:
        """From facekd's RGB [-1, 1] to what the model was declared to take, as float32 numpy."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"{self.path}: input of shape {tuple(images.shape)}, expected N x 3 x H x W")
        images = images.detach().float().cpu()
        if images.shape[-2:] != (self.input_size, self.input_size):
            raise ConfigError(
                f"{self.path}: input of {images.shape[-2]}x{images.shape[-1]} px, "
                f"expected {self.input_size}x{self.input_size} as the graph declares"
            )
        pixels = images * 127.5 + 127.5
        blob = (pixels - self.pixel_mean) / self.pixel_std
        if self.channel_order == "BGR":
            blob = blob.flip(1)
        return np.ascontiguousarray(blob.numpy(), dtype=np.float32)

    @functools.cached_property
    def pooled(self) -> PooledLayout | None:
        """Where the pooled features are (shape inference on the graph, done when first asked)."""
        return pooled_layout(load_pruned_model(self.path))

    @property
    def fcn(self) -> bool:
        return self.pooled is None or self.pooled.fcn

    def _run(self, session, images: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """Every output of `session` on the images, in chunks of the graph's fixed batch size."""
        blob = self.preprocess(images)
        chunk = self.fixed_batch or len(blob)
        runs = [session.run(None, {self.input_name: blob[start : start + chunk]})
                for start in range(0, len(blob), max(chunk, 1))]
        if not runs:
            return [torch.zeros((0, size), device=images.device) for size in sizes]
        return [torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False)).to(images.device)
                for parts in zip(*runs)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self.session, images, [self.embedding_size])[0]

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"embedding": E, "pooled": P}`: the pooled features come from a second session that also
        outputs the embedding layer's input (made on first use)."""
        if self.pooled is None:
            raise ConfigError(f"{self.path}: no embedding layer (a Gemm or MatMul with a constant weight) found, "
                              "so its pooled features cannot be read; use a method or target that needs the "
                              "embedding only")
        if self._features_session is None:
            import onnx

            model = load_pruned_model(self.path)
            model.graph.output.append(onnx.helper.make_tensor_value_info(self.pooled.name, onnx.TensorProto.FLOAT, None))
            self._features_session = inference_session(model, **self._session_options)
        embedding, pooled = self._run(self._features_session, images, [self.embedding_size, self.pooled.size])
        return {"embedding": embedding, "pooled": pooled}
