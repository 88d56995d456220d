"""Profile a backbone at one input resolution: size, FLOPs, CPU latency and peak memory.

What each figure means:

- `parameters`: the number of trainable and frozen parameters; `size_mb`: the bytes of all parameters
  and buffers (float32 unless the model says otherwise), in MiB, i.e. the size of the weights file.
- `flops`: per image, one forward pass, counted by `torch.utils.flop_counter.FlopCounterMode`. It
  counts convolutions and matrix products only, at 2 FLOPs per multiply-add (so GMACs = GFLOPs / 2);
  BatchNorm, PReLU and additions are not counted (they are under 1% of a face backbone's work).
- latencies: the median wall time of repeated forward passes on CPU after warm-up passes, at batch 1
  and at the large batch (64), in PyTorch (`torch.inference_mode`) and in onnxruntime (the model
  exported with `facekd.deploy.onnx`, CPU provider, the same thread count as PyTorch).
- `peak_memory_*_mb`: the highest net total of CPU memory that PyTorch allocates during one forward
  pass (activations and scratch buffers; the weights, already resident, are not included), taken from
  the allocation events of `torch.profiler` with `profile_memory=True`.

The fast mode measures PyTorch at batch 1 only, for quick reports such as the demo.

An ONNX model (`profile_onnx`) is measured in onnxruntime only: `parameters` are its initializers'
elements (the weights, plus small constants such as reduction axes), `size_mb` the file, and
`flops` are counted by onnx-tool, whose rule counts every operator (BatchNorm, PReLU, additions
too), 2-8 % above the rule above on facekd's backbones; the command counts its reference by the
same rule, so the ratio compares like with like.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from facekd.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class LatencySettings:
    """How many passes to time. The large batch gets its own, smaller counts: it is slow on CPU."""

    warmup: int = 3
    repeats: int = 10
    large_batch: int = 64
    large_batch_warmup: int = 1
    large_batch_repeats: int = 3
    fast: bool = False  # PyTorch at batch 1 only: no onnxruntime, no large batch


@dataclass(frozen=True)
class ModelProfile:
    """One model at one input resolution. Figures that the fast mode skips are None."""

    name: str
    resolution: int
    parameters: int
    size_mb: float
    flops: int
    embedding_size: int
    threads: int
    torch_b1_ms: float | None = None  # None for an ONNX model: it has no PyTorch form here
    peak_memory_b1_mb: float | None = None
    torch_large_ms: float | None = None
    ort_b1_ms: float | None = None
    ort_large_ms: float | None = None
    peak_memory_large_mb: float | None = None
    large_batch: int | None = None

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def ratios_to(self, reference: ModelProfile) -> dict[str, float | None]:
        """This model's figures divided by the reference's (the teacher's): 0.1 means ten times smaller."""

        def ratio(mine: float | None, theirs: float | None) -> float | None:
            return None if mine is None or not theirs else mine / theirs

        return {
            "parameters": ratio(self.parameters, reference.parameters),
            "flops": ratio(self.flops, reference.flops),
            "torch_b1_ms": ratio(self.torch_b1_ms, reference.torch_b1_ms),
            "torch_large_ms": ratio(self.torch_large_ms, reference.torch_large_ms),
            "ort_b1_ms": ratio(self.ort_b1_ms, reference.ort_b1_ms),
            "ort_large_ms": ratio(self.ort_large_ms, reference.ort_large_ms),
            "peak_memory_b1_mb": ratio(self.peak_memory_b1_mb, reference.peak_memory_b1_mb),
        }


def count_flops(model: nn.Module, resolution: int) -> int:
    """FLOPs (2 per multiply-add) of one image at `resolution`, by PyTorch's own flop counter.

    The model runs in eval mode on its own device; its training mode is restored afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    model.eval()
    try:
        with torch.inference_mode(), counter:
            model(torch.zeros(1, 3, resolution, resolution, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Timing:
    """Wall times of repeated calls after warm-up, in milliseconds."""

    times_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def spread(self) -> float:
        """Interquartile range over the median: how much the machine disturbed the timing."""
        if len(self.times_ms) < 4:
            return 0.0
        low, _, high = statistics.quantiles(self.times_ms, n=4)
        return (high - low) / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def noisy(self) -> bool:
        """More than 20 % interquartile spread: the median is a rough figure."""
        return self.spread > NOISY_SPREAD


NOISY_SPREAD = 0.2


def time_calls(run: Callable[[], object], *, warmup: int, repeats: int) -> Timing:
    """Time `repeats` calls of `run` after `warmup` untimed ones."""
    if repeats < 1:
        raise ConfigError(f"latency repeats: found {repeats}, expected at least 1")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(tuple(times))


def median_ms(run: Callable[[], object], *, warmup: int, repeats: int) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones, in milliseconds."""
    return time_calls(run, warmup=warmup, repeats=repeats).median_ms


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: Kineto prints a profiler_start/stop line per use from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_forward_memory_mb(model: nn.Module, batch: torch.Tensor) -> float:
    """Highest net CPU allocation during one forward pass, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), quiet_stderr(), profile(activities=[ProfilerActivity.CPU],
                                                         profile_memory=True) as prof:
        model(batch)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / MIB


def check_accepts_resolution(model: nn.Module, name: str, resolution: int) -> int:
    """Run one image at `resolution` and return the embedding size; refuse a model that cannot take it."""
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, resolution, resolution))
    except RuntimeError as exc:
        raise ConfigError(
            f"{name}: cannot run at {resolution} px ({str(exc).splitlines()[0]}); "
            "a non-FCN backbone runs only at the input size it was built for"
        ) from exc
    if out.ndim != 2 or out.shape[0] != 1:
        raise ConfigError(f"{name}: forward returned shape {tuple(out.shape)}, expected (1, embedding_size)")
    return int(out.shape[1])


def profile_model(
    model: nn.Module, name: str, resolution: int, settings: LatencySettings = LatencySettings(), proto=None
) -> ModelProfile:
    """Profile `model` (moved to CPU, put in eval mode) on `resolution` x `resolution` inputs;
    `proto` is its ONNX export at that size when the caller already holds one (else exported here)."""
    model = model.cpu().eval()
    embedding_size = check_accepts_resolution(model, name, resolution)
    parameters = sum(p.numel() for p in model.parameters())
    size_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    generator = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1

    def torch_forward(batch: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(batch)

        return run

    fields: dict = dict(
        name=name,
        resolution=resolution,
        parameters=parameters,
        size_mb=size_bytes / MIB,
        flops=count_flops(model, resolution),
        embedding_size=embedding_size,
        threads=torch.get_num_threads(),
        torch_b1_ms=median_ms(torch_forward(one), warmup=settings.warmup, repeats=settings.repeats),
        peak_memory_b1_mb=peak_forward_memory_mb(model, one),
    )
    if settings.fast:
        return ModelProfile(**fields)

    large = torch.rand(settings.large_batch, 3, resolution, resolution, generator=generator) * 2 - 1
    large_counts = dict(warmup=settings.large_batch_warmup, repeats=settings.large_batch_repeats)
    fields["large_batch"] = settings.large_batch
    fields["torch_large_ms"] = median_ms(torch_forward(large), **large_counts)
    fields["peak_memory_large_mb"] = peak_forward_memory_mb(model, large)

    if proto is None:
        from facekd.deploy.onnx import export_model_proto

        proto = export_model_proto(model, resolution)
    ort = ort_forward(proto)
    fields["ort_b1_ms"] = median_ms(ort(one), warmup=settings.warmup, repeats=settings.repeats)
    fields["ort_large_ms"] = median_ms(ort(large), **large_counts)
    return ModelProfile(**fields)


def ort_forward(proto) -> Callable[[torch.Tensor], Callable[[], object]]:
    """`run = ort_forward(proto)(batch)`: one onnxruntime pass of an exported model on `batch`."""
    from facekd.deploy.onnx import inference_session

    session = inference_session(proto, threads=torch.get_num_threads())
    input_name = session.get_inputs()[0].name

    def on(batch: torch.Tensor) -> Callable[[], object]:
        feed = {input_name: batch.numpy().astype(np.float32)}
        return lambda: session.run(None, feed)

    return on


def onnx_flops(model, resolution: int) -> tuple[int, int]:
    """(FLOPs at 2 per multiply-add, parameters) of one image, by onnx-tool's profiler, for an ONNX
    path or ModelProto; every operator is counted, not only convolutions and products."""
    import onnx_tool

    graph = onnx_tool.Model(model).graph
    graph.shape_infer({graph.input[0]: np.zeros((1, 3, resolution, resolution), np.float32)})
    graph.profile()
    return int(2 * graph.macs[0]), int(graph.params)


def profile_onnx(embedder, name: str, settings: LatencySettings = LatencySettings()) -> ModelProfile:
    """Profile an ONNX face model (a `facekd.deploy.onnx_teacher.OnnxEmbedder`) in onnxruntime, at
    the input size its graph declares; the large batch only when its batch dimension is free."""
    size = embedder.input_size
    flops, parameters = onnx_flops(str(embedder.path), size)
    generator = torch.Generator().manual_seed(0)
    feed = embedder.input_name

    def session_run(batch: int) -> Callable[[], object]:
        blob = (torch.rand(batch, 3, size, size, generator=generator) * 255).numpy().astype(np.float32)
        return lambda: embedder.session.run(None, {feed: blob})

    fields: dict = dict(name=name, resolution=size, parameters=parameters,
                        size_mb=embedder.path.stat().st_size / MIB, flops=flops,
                        embedding_size=embedder.embedding_size, threads=torch.get_num_threads(),
                        ort_b1_ms=median_ms(session_run(1), warmup=settings.warmup, repeats=settings.repeats))
    if not settings.fast and embedder.fixed_batch is None:
        fields["large_batch"] = settings.large_batch
        fields["ort_large_ms"] = median_ms(session_run(settings.large_batch), warmup=settings.large_batch_warmup,
                                           repeats=settings.large_batch_repeats)
    return ModelProfile(**fields)


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(profiles: list[ModelProfile], reference: ModelProfile) -> str:
    """A Markdown table of the profiles with FLOPs and latency ratios to `reference`."""
    large = next((p.large_batch for p in profiles if p.large_batch), 64)
    header = (
        f"| model | px | params (M) | size (MiB) | GFLOPs | FLOPs ratio | torch b1 (ms) | b1 ratio "
        f"| torch b{large} (ms) | b{large} ratio | ort b1 (ms) | ort b1 ratio | ort b{large} (ms) "
        f"| ort b{large} ratio | peak mem b1 (MiB) | peak mem b{large} (MiB) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for p in profiles:
        r = p.ratios_to(reference)
        lines.append(
            "| "
            + " | ".join(
                [
                    p.name,
                    str(p.resolution),
                    f"{p.parameters / 1e6:.2f}",
                    f"{p.size_mb:.1f}",
                    f"{p.gflops:.3f}",
                    _cell(r["flops"], ".4f"),
                    _cell(p.torch_b1_ms, ".1f"),
                    _cell(r["torch_b1_ms"], ".3f"),
                    _cell(p.torch_large_ms, ".0f"),
                    _cell(r["torch_large_ms"], ".3f"),
                    _cell(p.ort_b1_ms, ".1f"),
                    _cell(r["ort_b1_ms"], ".3f"),
                    _cell(p.ort_large_ms, ".0f"),
                    _cell(r["ort_large_ms"], ".3f"),
                    _cell(p.peak_memory_b1_mb, ".1f"),
                    _cell(p.peak_memory_large_mb, ".0f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
