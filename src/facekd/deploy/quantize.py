"""int8 quantisation of an exported face model with onnxruntime, and what it costs and gains.

- dynamic: weights of Conv/MatMul/Gemm are stored as int8, activations are quantised at run time
  (`quantize_dynamic`); no data needed.
- static: weights and activations in int8 (QDQ format, per-channel weights), activation ranges
  calibrated (min/max) on face images drawn from the user's data (`quantize_static` after
  `quant_pre_process`).

`compare_quantized` reports insightface verification accuracy on a `.bin` before and after, and the
onnxruntime CPU latency of both models, from which the speed-up follows.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facekd.deploy.onnx import inference_session
from facekd.deploy.profile import median_ms
from facekd.deploy.samples import model_inputs
from facekd.errors import ConfigError
from facekd.fileio import atomic_write_bytes

QUANTIZE_MODES = ("dynamic", "static")
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def _calibration_reader(input_name: str, inputs: torch.Tensor, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class FaceCalibrationReader(CalibrationDataReader):
        """Feeds the calibration faces in batches, as `quantize_static` pulls them."""

        def __init__(self) -> None:
            self._batches = iter(inputs.split(batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch.numpy()}

    return FaceCalibrationReader()


def quantize_onnx(
    source: str | os.PathLike,
    output: str | os.PathLike,
    mode: str,
    calibration_images: np.ndarray | None = None,
    batch_size: int = 16,
) -> None:
    """Write an int8 copy of the ONNX model `source` to `output` (atomically)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize: found {mode!r}, expected one of {QUANTIZE_MODES}")
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "int8.onnx"
        if mode == "dynamic":
            quantize_dynamic(source, quantized, op_types_to_quantize=QUANTIZED_OPS, weight_type=QuantType.QInt8)
        else:
            if calibration_images is None or len(calibration_images) == 0:
                raise ConfigError("--quantize static: needs calibration images (--calib-data)")
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(source, prepared)
            session = inference_session(prepared)
            size = session.get_inputs()[0].shape[-1]
            reader = _calibration_reader(session.get_inputs()[0].name, model_inputs(calibration_images, size), batch_size)
            quantize_static(
                prepared,
                quantized,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
        atomic_write_bytes(output, quantized.read_bytes())


def onnx_embeddings(session, images, batch_size: int = 64, flip: bool = True) -> np.ndarray:
    """Raw embeddings of uint8 HxWx3 RGB images from an onnxruntime session, summed with the
    horizontally flipped image's when `flip` (insightface's flip test)."""
    input_name = session.get_inputs()[0].name
    size = session.get_inputs()[0].shape[-1]
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = model_inputs(np.stack([images[i] for i in range(start, min(start + batch_size, len(images)))]), size)
        embedding = session.run(None, {input_name: batch.numpy()})[0]
        if flip:
            embedding = embedding + session.run(None, {input_name: batch.flip(3).contiguous().numpy()})[0]
        chunks.append(embedding)
    return np.concatenate(chunks)


@dataclass(frozen=True)
class QuantizationReport:
    mode: str
    pairs: int
    accuracy_fp32: float
    accuracy_int8: float
    latency_fp32_ms: float
    latency_int8_ms: float
    batch: int
    size_fp32_mb: float
    size_int8_mb: float

    @property
    def speedup(self) -> float:
        return self.latency_fp32_ms / self.latency_int8_ms


def compare_quantized(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    mode: str,
    bin_path: str | os.PathLike,
    *,
    batch: int = 1,
    repeats: int = 20,
) -> QuantizationReport:
    """Verification accuracy on `bin_path` and the latency at `batch` of both models, on CPU."""
    from facekd.data.pairs_bin import load_pairs_bin
    from facekd.evaluate.verification import evaluate

    images, issame = load_pairs_bin(bin_path)
    sessions = {"fp32": inference_session(fp32_path), "int8": inference_session(int8_path)}
    accuracy, latency = {}, {}
    for kind, session in sessions.items():
        accuracy[kind] = evaluate(onnx_embeddings(session, images), issame).accuracy
        size = session.get_inputs()[0].shape[-1]
        timed = model_inputs(np.stack([images[i % len(images)] for i in range(batch)]), size)
        feed = {session.get_inputs()[0].name: timed.numpy()}
        latency[kind] = median_ms(lambda: session.run(None, feed), warmup=3, repeats=repeats)
    return QuantizationReport(
        mode=mode,
        pairs=len(issame),
        accuracy_fp32=accuracy["fp32"],
        accuracy_int8=accuracy["int8"],
        latency_fp32_ms=latency["fp32"],
        latency_int8_ms=latency["int8"],
        batch=batch,
        size_fp32_mb=Path(fp32_path).stat().st_size / (1 << 20),
        size_int8_mb=Path(int8_path).stat().st_size / (1 << 20),
    )
