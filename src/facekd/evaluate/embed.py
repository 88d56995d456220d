"""Run a backbone over uint8 face images and return raw flip-summed embeddings.

Images arrive as a sequence of uint8 HxWx3 RGB arrays (e.g. the lazily decoding images of
`facekd.data.load_pairs_bin`); only one batch is decoded at a time. Each batch is normalised as
insightface does, `(x/255 - 0.5)/0.5`, resized (bilinear, antialiased) to the model's input size
when that differs from the stored size, and embedded together with its horizontal mirror. The
result is raw(orig) + raw(flip), the un-normalised sum that insightface's evaluators L2-normalise.

The model is an `nn.Module` (put in `eval()` for the run and restored afterwards, so the
training engine can call this mid-training) or any callable with the same contract: it takes a
float32 N x 3 x H x W tensor in [-1, 1] on `device` and returns an (N, D) tensor or array, e.g. an
ONNX Runtime session wrapper.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from facekd.data import load_pairs_bin, transforms
from facekd.errors import DataError
from facekd.evaluate import verification
from facekd.runtime import module_device

Embedder = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def embed_views(
    model: Embedder,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    input_size: int | None = None,
    flip: bool = True,
    progress: bool = True,
    description: str = "embedding",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw float32 embeddings of the images and, when `flip`, of their mirrors: (orig, flipped)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = _input_device(model, device)
    orig: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    with _eval_mode(model), torch.inference_mode(), tqdm(
        total=len(images), desc=description, unit="img", disable=not progress
    ) as bar:
        for batch in _uint8_batches(images, batch_size):
            batch = batch.to(device, non_blocking=True)
            orig.append(_run(model, transforms.network_input(batch, input_size)))
            if flip:
                mirrored.append(_run(model, transforms.network_input(batch.flip(-1), input_size)))
            bar.update(batch.shape[0])
    if not orig:
        raise DataError("images: found an empty sequence, expected at least one image to embed")
    return np.concatenate(orig), (np.concatenate(mirrored) if flip else None)


def embed_images(
    model: Embedder,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    input_size: int | None = None,
    flip: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """raw(orig) + raw(flip) as float32 (N, D); raw(orig) alone when `flip` is False."""
    orig, mirrored = embed_views(
        model, images, batch_size=batch_size, device=device, input_size=input_size, flip=flip, progress=progress
    )
    return orig if mirrored is None else orig + mirrored


def evaluate_bin(
    model: Embedder,
    bin_path: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    input_size: int | None = None,
    nfolds: int = 10,
    progress: bool = True,
) -> verification.VerificationResult:
    """Embed a verification `.bin` and score it as arcface_torch's callback (Accuracy-Flip, XNorm)."""
    images, issame = load_pairs_bin(bin_path)
    orig, mirrored = embed_views(
        model, images, batch_size=batch_size, device=device, input_size=input_size,
        progress=progress, description=os.path.basename(os.fspath(bin_path)),
    )
    # insightface sums the two float32 outputs in float64 arrays before normalising.
    summed = orig.astype(np.float64) + mirrored.astype(np.float64)
    result = verification.evaluate(summed, issame, nfolds=nfolds)
    return replace(result, xnorm=verification.xnorm(orig, mirrored))


def _input_device(model: Embedder, device: torch.device | str | None) -> torch.device:
    """The given device, else the device of the module's parameters, else CPU."""
    return torch.device(device) if device is not None else module_device(model)


@contextlib.contextmanager
def _eval_mode(model: Embedder) -> Iterator[None]:
    """Put a module in eval() for the duration and restore its previous mode afterwards."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _uint8_batches(images: Sequence[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """Decode `batch_size` images at a time into a uint8 N x 3 x H x W tensor."""
    for start in range(0, len(images), batch_size):
        chunk = [transforms.to_chw_tensor(images[i]) for i in range(start, min(start + batch_size, len(images)))]
        shapes = {tuple(image.shape) for image in chunk}
        if len(shapes) > 1:
            raise DataError(
                f"images {start}..{start + len(chunk) - 1}: found sizes {sorted(shapes)}, "
                "expected every image of a set to have the same size"
            )
        yield torch.stack(chunk)


def _run(model: Embedder, x: torch.Tensor) -> np.ndarray:
    output = model(x)
    if isinstance(output, torch.Tensor):
        output = output.detach().float().cpu().numpy()
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 2 or output.shape[0] != x.shape[0]:
        raise DataError(f"model output: found shape {output.shape}, expected ({x.shape[0]}, D) embeddings")
    return output
