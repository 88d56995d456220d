"""Score one trained network on the benchmark's test splits, and profile one network's cost.

The test splits are the held-out verification pairs (insightface's 10-fold accuracy; TAR at the
FARs that the impostor count can resolve, from the pooled ROC) and the 1:N split (rank-1 and rank-5
with distractors). Cost is a property of the architecture, not of the weights, so it is measured
once per network: FLOPs, parameters, and the batch-1 CPU latency as a median after warm-up, with its
spread.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from facekd.compare.plan import Network
from facekd.data import RecordIODataset, load_pairs_bin
from facekd.deploy.profile import count_flops, time_calls
from facekd.evaluate import verification
from facekd.evaluate.embed import embed_images
from facekd.evaluate.identification import identify
from facekd.evaluate.ijb import tar_at_far
from facekd.evaluate.runner import ImagesOf
from facekd.fileio import atomic_write_text
from facekd.models.backbone import build_backbone
from facekd.models.loading import load_backbone

FAR_TARGETS = (1e-3, 1e-2)
SCORES_VERSION = 1  # bump when what a scores.json holds changes
LATENCY_WARMUP, LATENCY_REPEATS = 10, 50


@dataclass(frozen=True)
class TestScores:
    """One trained network on the benchmark's test splits (fractions, not percent)."""

    accuracy: float
    fold_std: float
    tar: dict[str, float]  # str(far) -> TAR, only the FARs the impostor count resolves
    rank1: float
    rank5: float
    pairs: int
    impostors: int
    probes: int


def resolvable_fars(impostors: int) -> tuple[float, ...]:
    """The FAR targets at which the pooled ROC has at least one impostor above the threshold."""
    return tuple(far for far in FAR_TARGETS if impostors * far >= 1)


def score_checkpoint(checkpoint: Path, data: Path, device: torch.device) -> TestScores:
    model = load_backbone(checkpoint).to(device)
    input_size = int(model.spec.kwargs["input_size"])

    def embed(images) -> np.ndarray:
        return embed_images(model, images, batch_size=128, device=device, input_size=input_size, progress=False)

    images, issame = load_pairs_bin(data / "verify" / "synth_lfw.bin")
    pairs = embed(images)
    result = verification.evaluate(pairs, issame)
    unit = pairs / np.linalg.norm(pairs, axis=1, keepdims=True)
    fars = resolvable_fars(result.num_impostors)
    tar, _, _, _ = tar_at_far(issame.astype(int), np.sum(unit[0::2] * unit[1::2], axis=1), fars)
    sets = {part: RecordIODataset(data / "ident" / part) for part in ("gallery", "probe", "distractors")}
    features = {part: embed(ImagesOf(ds)) for part, ds in sets.items()}
    ident = identify(features["probe"], sets["probe"].labels, features["gallery"], sets["gallery"].labels,
                     distractor_feats=features["distractors"], ranks=(1, 5))
    return TestScores(result.accuracy, result.std, {f"{far:g}": value for far, value in tar.items()},
                      ident.rank_rates[1], ident.rank_rates[5], len(issame), result.num_impostors,
                      len(sets["probe"]))


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def cached_scores(checkpoint: Path, data: Path, device: torch.device) -> TestScores:
    """`score_checkpoint`, kept in scores.json beside the run so a resumed compare does not redo it;
    a retrained checkpoint (another size or time) is scored again."""
    record = checkpoint.parent / "scores.json"
    stamp = {"version": SCORES_VERSION, "checkpoint": checkpoint.name, "stamp": _stamp(checkpoint),
             "data": str(data.resolve())}
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored.get("key") == stamp:
            return TestScores(**stored["scores"])
    scores = score_checkpoint(checkpoint, data, device)
    atomic_write_text(record, json.dumps({"key": stamp, "scores": asdict(scores)}, indent=1) + "\n")
    return scores


@dataclass(frozen=True)
class NetworkCost:
    parameters: int
    flops: int
    latency_ms: float  # batch 1, CPU, one thread: median after warm-up
    latency_spread: float  # interquartile range / median
    latency_noisy: bool
    threads: int


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def network_cost(network: Network) -> NetworkCost:
    """FLOPs, parameters and batch-1 CPU latency of `network` with fresh weights (cost does not
    depend on them). One thread: on a shared machine it is the least disturbed figure."""
    model = build_backbone(network.backbone, input_size=network.input_size, **network.kwargs).eval()
    image = torch.rand(1, 3, network.input_size, network.input_size, generator=torch.Generator().manual_seed(0))

    def forward() -> object:
        with torch.inference_mode():
            return model(image)

    with torch_threads(1):
        timing = time_calls(forward, warmup=LATENCY_WARMUP, repeats=LATENCY_REPEATS)
    return NetworkCost(sum(p.numel() for p in model.parameters()), count_flops(model, network.input_size),
                       timing.median_ms, timing.spread, timing.noisy, 1)

