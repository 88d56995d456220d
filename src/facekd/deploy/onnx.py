"""Export a backbone to ONNX as insightface ships its models, and check the export against PyTorch.

The graph takes `data` (N x 3 x H x W, float32 RGB in [-1, 1], the name insightface's
`arcface_torch/torch2onnx.py` gives and its model zoo's `ArcFaceONNX` reads) with a dynamic batch
dimension, and returns `embedding` (N x D, the raw backbone output, before L2 normalisation).
So a user feeds (pixel - 127.5) / 127.5 in RGB, insightface's convention for its ONNX models; the
file says so in its metadata (`facekd.pixel_mean`, `facekd.pixel_std`, `facekd.channel_order`,
`facekd.input_size`), which `facekd eval --model X.onnx` and ONNX teachers read.

The exporter is PyTorch's `torch.export`-based one (`torch.onnx.export(..., dynamo=True)`), the
default since PyTorch 2.9; the TorchScript exporter is deprecated. It needs `onnxscript`, which is a
facekd dependency, and nothing from the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from facekd.data.transforms import resize
from facekd.errors import FacekdError
from facekd.fileio import atomic_write_bytes

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
BATCH_DIM = "batch"
OPSET = 18
# Parity is judged on scale-free figures: a teacher trained briefly can have embedding norms near
# 10,000, where float32 rounding alone gives absolute differences of 1e-3 (a relative 1e-7).
PARITY_TOLERANCE = 1e-4  # largest ||onnx - torch|| / ||torch|| over the embeddings
PARITY_MIN_COSINE = 1.0 - 1e-6  # smallest cosine between an ONNX embedding and PyTorch's


class ParityError(FacekdError):
    """The ONNX model's outputs differ from PyTorch's by more than the tolerance."""


class RawPixelInput(nn.Module):
    """The network behind an in-graph (x - 127.5) / 127.5: the graph takes RGB pixels in [0, 255].

    That is what OpenCV's `FaceRecognizerSF` feeds (`blobFromImage(img, 1, size, 0, swapRB=true)`),
    and what insightface's `ArcFaceONNX` feeds when it finds nodes named Sub and Mul among the
    graph's first 8 (then mean 0, std 1); `export_model_proto` names them so for this module.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - 127.5) * (1.0 / 127.5))


def _name_normalisation_nodes(proto) -> None:
    """Rename the first Sub and Mul nodes as insightface's ArcFaceONNX looks for them (by name)."""
    for op in ("Sub", "Mul"):
        node = next(n for n in proto.graph.node[:8] if n.op_type == op)
        node.name = f"{op}_pixel_normalisation"


def export_model_proto(model: nn.Module, input_size: int):
    """The model (moved to CPU, eval mode) as an `onnx.ModelProto` with a dynamic batch dimension.

    The graph takes RGB in [-1, 1] (insightface's convention for graphs without normalisation), or
    in [0, 255] when `model` is a `RawPixelInput`; the metadata says which.
    """
    raw = isinstance(model, RawPixelInput)
    model = model.cpu().eval()
    # Batch 2: torch.export specialises sizes 0 and 1, so a batch-1 example would pin the batch.
    example = torch.zeros(2, 3, input_size, input_size)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )
    proto = program.model_proto
    mean, std = ("0", "1") if raw else ("127.5", "127.5")
    if raw:
        _name_normalisation_nodes(proto)
    for key, value in {"facekd.pixel_mean": mean, "facekd.pixel_std": std, "facekd.channel_order": "RGB",
                       "facekd.input_size": str(input_size)}.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto


class ResizedInput(nn.Module):
    """A low-resolution network that takes larger crops: the graph resizes them first, with the
    antialiased bilinear resize facekd's evaluation uses (`data.transforms.resize`), so a 56 px
    student exported at 112 px takes the crops insightface's `norm_crop` makes."""

    def __init__(self, network: nn.Module, network_size: int) -> None:
        super().__init__()
        self.network = network
        self.network_size = network_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(resize(x, self.network_size))


def export_program(model: nn.Module, path: str | os.PathLike, input_size: int) -> None:
    """Write the model as a `torch.export` program (`.pt2`, dynamic batch), atomically: the form of
    PyTorch deployment without facekd or onnxruntime (TorchScript's `torch.jit.trace` is deprecated
    in PyTorch 2.13). Load with `torch.export.load(path).module()`."""
    import io

    model = model.cpu().eval()
    example = torch.zeros(2, 3, input_size, input_size)  # batch 2: sizes 0 and 1 are specialised
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: int) -> None:
    """Write the model as one self-contained `.onnx` file (atomically)."""
    atomic_write_bytes(path, export_model_proto(model, input_size).SerializeToString())


def inference_session(model, *, threads: int | None = None, providers: list[str] | None = None):
    """An onnxruntime session on a path, serialised bytes or a ModelProto; warnings are silenced."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = os.fspath(model)
    return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    max_relative_error: float
    min_cosine: float
    images: int
    batch_sizes: tuple[int, ...]
    tolerance: float


def check_parity(
    model: nn.Module,
    session,
    inputs: torch.Tensor,
    *,
    tolerance: float = PARITY_TOLERANCE,
    what: str = "ONNX model",
) -> ParityReport:
    """Compare PyTorch and onnxruntime on `inputs` (float N x 3 x H x W in [-1, 1]).

    The inputs run once as one batch and once image by image, which also checks that the batch
    dimension is dynamic. Raises ParityError when an embedding's relative error
    ||onnx - torch|| / ||torch|| exceeds `tolerance` or its cosine to PyTorch's is below
    PARITY_MIN_COSINE. The absolute difference is reported, never judged: it scales with the norm.
    """
    model = model.cpu().eval()
    inputs = inputs.detach().float().cpu()
    with torch.inference_mode():
        expected = model(inputs).numpy()
    input_name = session.get_inputs()[0].name
    whole = session.run(None, {input_name: inputs.numpy()})[0]
    single = np.concatenate([session.run(None, {input_name: inputs[i : i + 1].numpy()})[0] for i in range(len(inputs))])
    for got in (whole, single):
        if got.shape != expected.shape:
            raise ParityError(f"{what}: output shape {got.shape}, expected {expected.shape} as PyTorch gives")
    reference = expected.astype(np.float64)
    tiny = np.finfo(np.float32).tiny
    norms = np.maximum(np.linalg.norm(reference, axis=1), tiny)
    diff = relative = 0.0
    cosine = 1.0
    for got in (whole.astype(np.float64), single.astype(np.float64)):
        diff = max(diff, float(np.abs(got - reference).max()))
        relative = max(relative, float((np.linalg.norm(got - reference, axis=1) / norms).max()))
        got_norms = np.maximum(np.linalg.norm(got, axis=1), tiny)
        cosine = min(cosine, float((np.sum(got * reference, axis=1) / (got_norms * norms)).min()))
    if not (relative <= tolerance and cosine >= PARITY_MIN_COSINE):  # also catches NaN
        raise ParityError(
            f"{what}: max ||onnx - torch|| / ||torch|| = {relative:.2e} and min cosine {cosine:.9f} over "
            f"{len(inputs)} images (max |onnx - torch| {diff:.2e}), expected at most {tolerance:g} and at "
            f"least {PARITY_MIN_COSINE:.9f}"
        )
    return ParityReport(max_abs_diff=diff, max_relative_error=relative, min_cosine=cosine, images=len(inputs),
                        batch_sizes=(len(inputs), 1), tolerance=tolerance)


class _ProgramSession:
    """The part of an onnxruntime session that `check_parity` uses, over a saved torch.export program."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.module = torch.export.load(os.fspath(path)).module()

    def get_inputs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(name=INPUT_NAME)]

    def run(self, outputs, feed: dict) -> list:
        with torch.inference_mode():
            return [self.module(torch.from_numpy(feed[INPUT_NAME])).numpy()]


def check_program_parity(model: nn.Module, path: str | os.PathLike, inputs: torch.Tensor) -> ParityReport:
    """`check_parity` for a `.pt2` written by `export_program`, loaded back as a user would."""
    return check_parity(model, _ProgramSession(path), inputs, what=os.fspath(path))
